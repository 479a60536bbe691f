//! One behaviour suite for both backends: each test is a generic async fn over a
//! [`Backend`], instantiated for the segment log and SQLite by `for_both_backends!`. No test asserts on
//! timing; waits on the stats watch are guarded only against hanging forever.

use std::error::Error;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tempfile::TempDir;

use super::{
    Backend, Journal, JournalConfig, JournalError, JournalStats, NewRecord, Record, Seq,
    RECORD_OVERHEAD_BYTES,
};

type TestResult = Result<(), Box<dyn Error + Send + Sync>>;

/// Guard against a hung test, not a performance bound.
const HANG_GUARD: Duration = Duration::from_secs(120);

macro_rules! for_both_backends {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() -> super::TestResult {
                    super::$name(super::Backend::Sqlite).await
                }
            )*
        }
        mod on_log {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() -> super::TestResult {
                    super::$name(super::Backend::Log).await
                }
            )*
        }
    };
}

for_both_backends!(
    append_then_read_in_order,
    survives_reopen_and_continues_seq,
    ack_deletes_and_is_durable,
    ack_alone_is_committed_when_idle,
    large_ack_is_fully_deleted,
    seq_never_reused_after_full_ack,
    evicts_oldest_when_over_max_bytes_and_counts,
    read_after_skips_evicted,
    corrupt_store_is_quarantined_and_fresh_store_works,
    unreadable_record_is_dropped_and_counted,
    group_commit_batches_many_appends_into_few_commits,
    appends_become_readable_without_flush,
    pending_records_are_readable_before_their_durable_write,
    records_acked_before_their_durable_write_are_never_replayed,
    flush_makes_appends_durable,
    a_ping_is_answered_and_writes_nothing,
    concurrent_reader_while_appending,
    rejects_invalid_config,
);

fn store_path(backend: Backend, dir: &TempDir) -> PathBuf {
    match backend {
        Backend::Sqlite => dir.path().join("uplinks.db"),
        Backend::Log => dir.path().join("uplinks.log"),
    }
}

fn config(backend: Backend, dir: &TempDir) -> JournalConfig {
    JournalConfig {
        commit_interval: Duration::from_millis(5),
        ..JournalConfig::new(backend, store_path(backend, dir), 64 * 1024 * 1024)
    }
}

fn uplink(i: u64) -> NewRecord {
    NewRecord {
        kind: (i % 7) as u8,
        received_at_ms: 1_700_000_000_000 + i as i64,
        payload: format!("uplink number {i}").into_bytes(),
    }
}

fn sized_uplink(i: u64, payload_len: usize) -> NewRecord {
    NewRecord { payload: vec![(i % 251) as u8; payload_len], ..uplink(i) }
}

/// `uplink(i)` as it reads back with seq `i` (tests append uplink(1), uplink(2), ...).
fn expected(i: u64) -> Record {
    let new = uplink(i);
    Record { seq: Seq(i), kind: new.kind, received_at_ms: new.received_at_ms, payload: new.payload }
}

fn seqs(records: &[Record]) -> Vec<u64> {
    records.iter().map(|r| r.seq.0).collect()
}

async fn open(config: &JournalConfig) -> Result<Journal, JournalError> {
    // Show the journal's log lines in failing tests' output; a second init is a no-op.
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let config = config.clone();
    tokio::task::spawn_blocking(move || Journal::open("test", config))
        .await
        .map_err(|join| JournalError::Closed { name: format!("open task failed: {join}") })?
}

async fn append_range(journal: &Journal, range: std::ops::RangeInclusive<u64>) -> TestResult {
    for i in range {
        journal.append(uplink(i)).await?;
    }
    Ok(())
}

/// Wait until the published stats satisfy `done`.
async fn wait_for(journal: &Journal, done: impl Fn(&JournalStats) -> bool) -> TestResult {
    let mut watch = journal.watch();
    tokio::time::timeout(HANG_GUARD, watch.wait_for(|stats| done(stats))).await??;
    Ok(())
}

async fn append_then_read_in_order(backend: Backend) -> TestResult {
    let dir = tempfile::tempdir()?;
    let journal = open(&config(backend, &dir)).await?;
    append_range(&journal, 1..=10).await?;
    journal.flush().await?;

    let all = journal.read_after(Seq::NONE, 100).await?;
    assert_eq!(all, (1..=10).map(expected).collect::<Vec<_>>());
    assert_eq!(seqs(&journal.read_after(Seq(4), 3).await?), [5, 6, 7]);
    assert!(journal.read_after(Seq(10), 100).await?.is_empty());

    let stats = journal.watch().borrow().clone();
    assert_eq!(stats.records, 10);
    assert_eq!(stats.last_seq, Seq(10));
    let payload_bytes: u64 = (1..=10).map(|i| uplink(i).payload.len() as u64).sum();
    assert_eq!(stats.bytes, payload_bytes + 10 * RECORD_OVERHEAD_BYTES);
    assert_eq!(stats.oldest_received_at_ms, Some(uplink(1).received_at_ms));
    assert_eq!(stats.quarantined, None);
    journal.close().await?;
    Ok(())
}

async fn survives_reopen_and_continues_seq(backend: Backend) -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = config(backend, &dir);
    let journal = open(&config).await?;
    append_range(&journal, 1..=5).await?;
    journal.close().await?;

    let journal = open(&config).await?;
    assert_eq!(journal.watch().borrow().records, 5);
    assert_eq!(journal.read_after(Seq::NONE, 100).await?, (1..=5).map(expected).collect::<Vec<_>>());
    journal.append(uplink(6)).await?;
    journal.flush().await?;
    assert_eq!(journal.read_after(Seq(5), 100).await?, [expected(6)]);
    journal.close().await?;
    Ok(())
}

async fn ack_deletes_and_is_durable(backend: Backend) -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = config(backend, &dir);
    let journal = open(&config).await?;
    append_range(&journal, 1..=10).await?;
    journal.flush().await?;
    journal.ack(Seq(4));
    journal.flush().await?;

    let stats = journal.watch().borrow().clone();
    assert_eq!((stats.records, stats.acked), (6, Seq(4)));
    assert_eq!(stats.oldest_received_at_ms, Some(uplink(5).received_at_ms));
    assert_eq!(seqs(&journal.read_after(Seq::NONE, 100).await?), [5, 6, 7, 8, 9, 10]);
    journal.close().await?;

    let journal = open(&config).await?;
    let stats = journal.watch().borrow().clone();
    assert_eq!((stats.records, stats.acked, stats.last_seq), (6, Seq(4), Seq(10)));
    assert_eq!(seqs(&journal.read_after(Seq::NONE, 100).await?), [5, 6, 7, 8, 9, 10]);
    journal.close().await?;
    Ok(())
}

async fn ack_alone_is_committed_when_idle(backend: Backend) -> TestResult {
    let dir = tempfile::tempdir()?;
    let journal = open(&config(backend, &dir)).await?;
    append_range(&journal, 1..=5).await?;
    journal.flush().await?;
    journal.ack(Seq(5));
    // Published at once; the stored records leave within a commit window, with no flush.
    assert_eq!(journal.watch().borrow().acked, Seq(5));
    wait_for(&journal, |stats| stats.records == 0 && stats.commits >= 2).await?;
    journal.close().await?;
    Ok(())
}

async fn large_ack_is_fully_deleted(backend: Backend) -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = JournalConfig { commit_max_records: 5000, ..config(backend, &dir) };
    let journal = open(&config).await?;
    append_range(&journal, 1..=20_000).await?;
    journal.flush().await?;
    journal.ack(Seq(19_999));
    wait_for(&journal, |stats| stats.records == 1).await?;
    assert_eq!(journal.read_after(Seq::NONE, 10).await?, [expected(20_000)]);
    journal.close().await?;

    let journal = open(&config).await?;
    let stats = journal.watch().borrow().clone();
    assert_eq!((stats.records, stats.acked), (1, Seq(19_999)));
    journal.close().await?;
    Ok(())
}

async fn seq_never_reused_after_full_ack(backend: Backend) -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = config(backend, &dir);
    let journal = open(&config).await?;
    append_range(&journal, 1..=3).await?;
    journal.flush().await?;
    journal.ack(Seq(3));
    journal.flush().await?;
    assert_eq!(journal.watch().borrow().records, 0);
    journal.close().await?;

    let journal = open(&config).await?;
    assert_eq!(journal.watch().borrow().last_seq, Seq(3));
    journal.append(uplink(4)).await?;
    journal.flush().await?;
    assert_eq!(journal.read_after(Seq::NONE, 10).await?, [expected(4)]);
    journal.close().await?;
    Ok(())
}

/// 20 records of 100-byte payloads into a budget that holds 7 of them.
async fn fill_past_budget(backend: Backend, dir: &TempDir) -> Result<Journal, JournalError> {
    let config = JournalConfig { max_bytes: 7 * (100 + RECORD_OVERHEAD_BYTES) + 50, ..config(backend, dir) };
    let journal = open(&config).await?;
    for i in 1..=20 {
        journal.append(sized_uplink(i, 100)).await?;
    }
    journal.flush().await?;
    Ok(journal)
}

async fn evicts_oldest_when_over_max_bytes_and_counts(backend: Backend) -> TestResult {
    let dir = tempfile::tempdir()?;
    let journal = fill_past_budget(backend, &dir).await?;
    let stats = journal.watch().borrow().clone();
    assert_eq!((stats.records, stats.evicted_total), (7, 13));
    assert_eq!(stats.bytes, 7 * (100 + RECORD_OVERHEAD_BYTES));
    assert_eq!(stats.oldest_received_at_ms, Some(uplink(14).received_at_ms));
    let kept = journal.read_after(Seq::NONE, 100).await?;
    assert_eq!(seqs(&kept), (14..=20).collect::<Vec<_>>());
    assert_eq!(kept[0].payload, sized_uplink(14, 100).payload);
    journal.close().await?;

    // The count survives a restart.
    let journal = open(&config(backend, &dir)).await?;
    assert_eq!(journal.watch().borrow().evicted_total, 13);
    journal.close().await?;
    Ok(())
}

async fn read_after_skips_evicted(backend: Backend) -> TestResult {
    let dir = tempfile::tempdir()?;
    let journal = fill_past_budget(backend, &dir).await?;
    assert_eq!(seqs(&journal.read_after(Seq(2), 3).await?), [14, 15, 16]);
    assert_eq!(seqs(&journal.read_after(Seq(15), 100).await?), [16, 17, 18, 19, 20]);
    journal.close().await?;
    Ok(())
}

/// Bytes that are no valid SQLite page nor journal segment.
fn garbage(len: usize) -> Vec<u8> {
    let mut state: u32 = 0x2545_f491;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state >> 24) as u8
        })
        .collect()
}

/// Overwrite every file under `path` (or `path` itself) with garbage.
fn scribble_over(path: &Path) -> TestResult {
    if path.is_dir() {
        for entry in std::fs::read_dir(path)? {
            scribble_over(&entry?.path())?;
        }
    } else {
        let len = std::fs::metadata(path).map(|m| m.len() as usize).unwrap_or(0);
        std::fs::write(path, garbage(len.max(8192)))?;
    }
    Ok(())
}

async fn corrupt_store_is_quarantined_and_fresh_store_works(backend: Backend) -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = config(backend, &dir);
    let journal = open(&config).await?;
    append_range(&journal, 1..=100).await?;
    journal.close().await?;
    scribble_over(&config.path)?;

    let journal = open(&config).await?;
    let stats = journal.watch().borrow().clone();
    let Some((moved_to, reason)) = stats.quarantined else {
        return Err("corrupt store was not quarantined".into());
    };
    assert!(!reason.is_empty());
    assert!(moved_to.exists(), "{} should hold the old store", moved_to.display());
    let moved_name = moved_to.file_name().unwrap_or_default().to_string_lossy();
    let original_name = config.path.file_name().unwrap_or_default().to_string_lossy();
    assert!(moved_name.starts_with(&format!("{original_name}.corrupt-")), "moved to {moved_name}");
    assert_eq!((stats.records, stats.last_seq), (0, Seq::NONE));

    journal.append(uplink(1)).await?;
    journal.flush().await?;
    assert_eq!(journal.read_after(Seq::NONE, 10).await?, [expected(1)]);
    journal.close().await?;

    // The fresh store is sound: it opens again without another quarantine.
    let journal = open(&config).await?;
    assert_eq!(journal.watch().borrow().quarantined, None);
    assert_eq!(journal.read_after(Seq::NONE, 10).await?, [expected(1)]);
    journal.close().await?;
    Ok(())
}

/// Damage record `seq` in place, behind the journal's back.
fn damage_record(backend: Backend, path: &Path, seq: Seq) -> TestResult {
    match backend {
        Backend::Sqlite => {
            let conn = rusqlite::Connection::open(path)?;
            conn.execute("UPDATE records SET kind = 999 WHERE seq = ?1", [seq.0 as i64])?;
        }
        Backend::Log => {
            // Flip a payload byte of record `seq` in the first segment (a magic line, then
            // frames of a 27-byte header and the payload).
            let segment = path.join("seg-00000000000000000001.log");
            let mut bytes = std::fs::read(&segment)?;
            let mut offset = 8;
            for i in 1..seq.0 {
                offset += 27 + uplink(i).payload.len();
            }
            bytes[offset + 27 + 1] ^= 0x20;
            std::fs::write(&segment, bytes)?;
        }
    }
    Ok(())
}

async fn unreadable_record_is_dropped_and_counted(backend: Backend) -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = config(backend, &dir);
    let journal = open(&config).await?;
    append_range(&journal, 1..=3).await?;
    journal.close().await?;
    damage_record(backend, &config.path, Seq(2))?;

    let journal = open(&config).await?;
    assert_eq!(journal.read_after(Seq::NONE, 10).await?, [expected(1), expected(3)]);
    let stats = journal.watch().borrow().clone();
    assert_eq!((stats.records, stats.evicted_total), (2, 1));
    journal.close().await?;
    Ok(())
}

async fn group_commit_batches_many_appends_into_few_commits(backend: Backend) -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = JournalConfig {
        // Only the batch size triggers commits here.
        commit_interval: Duration::from_secs(3600),
        commit_max_records: 100,
        ..config(backend, &dir)
    };
    let journal = open(&config).await?;
    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let journal = journal.clone();
            tokio::spawn(async move {
                for i in 0..250 {
                    journal.append(uplink(w * 1000 + i)).await?;
                }
                Ok::<_, JournalError>(())
            })
        })
        .collect();
    for writer in writers {
        writer.await??;
    }
    journal.flush().await?;
    let stats = journal.watch().borrow().clone();
    assert_eq!(stats.records, 1000);
    assert!(stats.commits <= 20, "1000 appends took {} commits", stats.commits);
    journal.close().await?;
    Ok(())
}

async fn appends_become_readable_without_flush(backend: Backend) -> TestResult {
    let dir = tempfile::tempdir()?;
    let journal = open(&config(backend, &dir)).await?;
    append_range(&journal, 1..=3).await?;
    wait_for(&journal, |stats| stats.last_seq == Seq(3)).await?;
    assert_eq!(seqs(&journal.read_after(Seq::NONE, 10).await?), [1, 2, 3]);
    journal.close().await?;
    Ok(())
}

async fn pending_records_are_readable_before_their_durable_write(backend: Backend) -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = JournalConfig { commit_interval: Duration::from_secs(3600), ..config(backend, &dir) };
    let journal = open(&config).await?;
    let mut appended = journal.watch_appended();
    append_range(&journal, 1..=3).await?;
    tokio::time::timeout(HANG_GUARD, appended.wait_for(|s| *s == Seq(3))).await??;
    assert_eq!(journal.read_after(Seq::NONE, 10).await?, (1..=3).map(expected).collect::<Vec<_>>());
    assert_eq!(journal.read_after(Seq(2), 10).await?, vec![expected(3)]);
    assert_eq!(journal.watch().borrow().last_seq, Seq::NONE, "nothing committed yet");
    journal.flush().await?;
    assert_eq!(journal.watch().borrow().last_seq, Seq(3));
    assert_eq!(journal.read_after(Seq::NONE, 10).await?, (1..=3).map(expected).collect::<Vec<_>>());
    journal.close().await?;
    Ok(())
}

async fn records_acked_before_their_durable_write_are_never_replayed(backend: Backend) -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = JournalConfig { commit_interval: Duration::from_secs(3600), ..config(backend, &dir) };
    let journal = open(&config).await?;
    append_range(&journal, 1..=5).await?;
    assert_eq!(journal.read_after(Seq::NONE, 10).await?.len(), 5);
    journal.ack(Seq(3));
    journal.flush().await?;
    let stats = journal.watch().borrow().clone();
    assert_eq!((stats.last_seq, stats.acked, stats.records), (Seq(5), Seq(3), 2));
    drop(journal);

    let journal = open(&config).await?;
    assert_eq!(journal.read_after(Seq::NONE, 10).await?, vec![expected(4), expected(5)]);
    append_range(&journal, 6..=6).await?;
    journal.flush().await?;
    assert_eq!(seqs(&journal.read_after(Seq(5), 10).await?), [6], "seqs continue after the skipped ones");
    journal.close().await?;
    Ok(())
}

/// The watchdog's probe proves the owner thread loops without forcing a durable write, so a
/// healthy link still writes nothing between probes.
async fn a_ping_is_answered_and_writes_nothing(backend: Backend) -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = JournalConfig { commit_interval: Duration::from_secs(3600), ..config(backend, &dir) };
    let journal = open(&config).await?;
    append_range(&journal, 1..=2).await?;
    tokio::time::timeout(HANG_GUARD, journal.ping()).await??;
    let stats = journal.watch().borrow().clone();
    assert_eq!((stats.commits, stats.records, stats.last_seq), (0, 0, Seq::NONE), "nothing made durable");
    journal.ack(Seq(2));
    journal.close().await?;
    Ok(())
}

async fn flush_makes_appends_durable(backend: Backend) -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = JournalConfig { commit_interval: Duration::from_secs(3600), ..config(backend, &dir) };
    let journal = open(&config).await?;
    append_range(&journal, 1..=50).await?;
    journal.flush().await?;
    // Dropping the last handle stops the owner thread; `open` waits for it to let go.
    drop(journal);

    let journal = open(&config).await?;
    assert_eq!(journal.read_after(Seq::NONE, 100).await?, (1..=50).map(expected).collect::<Vec<_>>());
    journal.close().await?;
    Ok(())
}

async fn concurrent_reader_while_appending(backend: Backend) -> TestResult {
    const TOTAL: u64 = 5000;
    let dir = tempfile::tempdir()?;
    let config = JournalConfig { commit_max_records: 200, ..config(backend, &dir) };
    let journal = open(&config).await?;
    let writer = {
        let journal = journal.clone();
        tokio::spawn(async move {
            for i in 1..=TOTAL {
                journal.append(uplink(i)).await?;
            }
            Ok::<_, JournalError>(())
        })
    };
    let reader = {
        let journal = journal.clone();
        tokio::spawn(async move {
            let mut watch = journal.watch();
            let mut last = Seq::NONE;
            while last.0 < TOTAL {
                watch.borrow_and_update();
                let batch = journal.read_after(last, 300).await?;
                if batch.is_empty() {
                    if watch.changed().await.is_err() {
                        break;
                    }
                    continue;
                }
                for record in &batch {
                    assert_eq!(record, &expected(last.0 + 1));
                    last = record.seq;
                }
                journal.ack(last);
            }
            Ok::<_, JournalError>(last)
        })
    };
    writer.await??;
    let last = tokio::time::timeout(HANG_GUARD, reader).await???;
    assert_eq!(last, Seq(TOTAL));
    journal.flush().await?;
    let stats = journal.watch().borrow().clone();
    assert_eq!((stats.acked, stats.records), (Seq(TOTAL), 0));
    journal.close().await?;
    Ok(())
}

async fn rejects_invalid_config(backend: Backend) -> TestResult {
    let dir = tempfile::tempdir()?;
    let no_batch = JournalConfig { commit_max_records: 0, ..config(backend, &dir) };
    assert!(matches!(open(&no_batch).await, Err(JournalError::Config { .. })));
    let no_budget = JournalConfig { max_bytes: 0, ..config(backend, &dir) };
    assert!(matches!(open(&no_budget).await, Err(JournalError::Config { .. })));
    Ok(())
}

/// The segment log keeps a cut-short tail out (a write a power cut interrupted) and
/// appends after it; a later reopen finds every record.
#[tokio::test]
async fn log_store_cuts_off_a_torn_tail_and_keeps_appending() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = config(Backend::Log, &dir);
    let journal = open(&config).await?;
    append_range(&journal, 1..=3).await?;
    journal.close().await?;
    let segment = config.path.join("seg-00000000000000000001.log");
    let mut bytes = std::fs::read(&segment)?;
    // Half of a fourth frame: what a power cut leaves of a write that never returned.
    let mut torn = Vec::new();
    super::frame::encode_record(&mut torn, &expected(4));
    bytes.extend_from_slice(&torn[..torn.len() / 2]);
    std::fs::write(&segment, bytes)?;

    let journal = open(&config).await?;
    let stats = journal.watch().borrow().clone();
    assert_eq!((stats.records, stats.last_seq, stats.evicted_total), (3, Seq(3), 0));
    append_range(&journal, 4..=5).await?;
    journal.flush().await?;
    journal.close().await?;
    let journal = open(&config).await?;
    assert_eq!(journal.read_after(Seq::NONE, 10).await?, (1..=5).map(expected).collect::<Vec<_>>());
    journal.close().await?;
    Ok(())
}

/// A drained backlog leaves by whole segments: a large ack unlinks the full segments.
#[tokio::test]
async fn log_store_deletes_acknowledged_segments_whole() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = JournalConfig { commit_max_records: 5000, ..config(Backend::Log, &dir) };
    let journal = open(&config).await?;
    // 4 KiB payloads: 4 MiB segments hold about a thousand each.
    for i in 1..=3000 {
        journal.append(sized_uplink(i, 4096)).await?;
    }
    journal.flush().await?;
    let segments = |dir: &Path| -> std::io::Result<usize> {
        Ok(std::fs::read_dir(dir)?
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("seg-"))
            .count())
    };
    let before = segments(&config.path)?;
    assert!(before >= 3, "{before} segments for 12 MiB");
    journal.ack(Seq(2999));
    wait_for(&journal, |stats| stats.records == 1).await?;
    assert_eq!(segments(&config.path)?, 1, "only the segment holding the last record is left");
    assert_eq!(seqs(&journal.read_after(Seq::NONE, 10).await?), [3000]);
    journal.close().await?;
    Ok(())
}

/// What a crash leaves in the RAM stage is taken back on open: nothing accepted is lost,
/// nothing acknowledged comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_in_the_stage_survive_a_crash_and_acked_ones_do_not_come_back() -> TestResult {
    for backend in [Backend::Log, Backend::Sqlite] {
        let dir = tempfile::tempdir()?;
        let stage = tempfile::tempdir()?;
        let config = JournalConfig {
            commit_interval: Duration::from_secs(3600),
            outage_commit_interval: Duration::from_secs(3600),
            stage_dir: Some(stage.path().to_path_buf()),
            ..config(backend, &dir)
        };
        let journal = open(&config).await?;
        append_range(&journal, 1..=5).await?;
        journal.ack(Seq(2));
        // The ack's mark goes out with the next record (a crash before it would send 1 and 2 again).
        append_range(&journal, 6..=6).await?;
        // A crash: the owner never commits (the window is an hour) and never closes.
        std::mem::forget(journal);
        let staged: Vec<_> = std::fs::read_dir(stage.path())?.flatten().collect();
        assert_eq!(staged.len(), 1, "one stage file");
        assert!(staged[0].metadata()?.len() > 0);

        // A second process would open the same files; here the path claim of the forgotten
        // journal is still held, so open a copy of the store and stage.
        let copy = tempfile::tempdir()?;
        let copied_store = copy.path().join(config.path.file_name().unwrap_or_default());
        copy_tree(&config.path, &copied_store)?;
        let copy_stage = tempfile::tempdir()?;
        let stage_name = super::stage::stage_path(copy_stage.path(), "test", &copied_store);
        std::fs::copy(staged[0].path(), &stage_name)?;
        let reopened = JournalConfig {
            path: copied_store,
            stage_dir: Some(copy_stage.path().to_path_buf()),
            ..config.clone()
        };
        let journal = open(&reopened).await?;
        assert_eq!(
            journal.read_after(Seq::NONE, 10).await?,
            (3..=6).map(expected).collect::<Vec<_>>(),
            "{backend}"
        );
        let stats = journal.watch().borrow().clone();
        assert_eq!((stats.records, stats.acked, stats.last_seq), (4, Seq(2), Seq(6)), "{backend}");
        journal.append(uplink(7)).await?;
        assert_eq!(seqs(&journal.read_after(Seq(6), 10).await?), [7], "{backend}: seqs continue");
        journal.close().await?;
    }
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    if from.is_dir() {
        std::fs::create_dir_all(to)?;
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
    } else if from.exists() {
        std::fs::copy(from, to)?;
    }
    for suffix in ["-wal", "-shm"] {
        let mut companion = from.as_os_str().to_owned();
        companion.push(suffix);
        let companion = PathBuf::from(companion);
        if companion.exists() {
            let mut target = to.as_os_str().to_owned();
            target.push(suffix);
            std::fs::copy(&companion, PathBuf::from(target))?;
        }
    }
    Ok(())
}

/// Rebuild the `meta` table without its PRIMARY KEY: the file stays sound to
/// `quick_check`, but every commit's `ON CONFLICT (key)` upsert fails.
#[tokio::test]
async fn sqlite_writes_nothing_at_all_for_a_batch_acknowledged_before_its_commit() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config =
        JournalConfig { commit_interval: Duration::from_secs(3600), ..config(Backend::Sqlite, &dir) };
    let journal = open(&config).await?;
    append_range(&journal, 1..=2).await?;
    journal.flush().await?;
    journal.ack(Seq(2));
    journal.flush().await?;
    let files = |dir: &TempDir| -> std::io::Result<Vec<Vec<u8>>> {
        ["uplinks.db", "uplinks.db-wal"].iter().map(|f| std::fs::read(dir.path().join(f))).collect()
    };
    let before = files(&dir)?;
    // A healthy link: read, published and acknowledged within the commit window.
    append_range(&journal, 3..=5).await?;
    assert_eq!(seqs(&journal.read_after(Seq(2), 10).await?), [3, 4, 5]);
    journal.ack(Seq(5));
    journal.flush().await?;
    assert!(files(&dir)? == before, "not a record, not the meta row: nothing written");
    let stats = journal.watch().borrow().clone();
    assert_eq!((stats.last_seq, stats.acked, stats.records), (Seq(5), Seq(5), 0));
    // The next record to keep is stored under the next seq, and survives a restart.
    append_range(&journal, 6..=6).await?;
    journal.flush().await?;
    assert!(files(&dir)? != before, "a record to keep is written");
    journal.close().await?;
    let journal = open(&config).await?;
    assert_eq!(journal.read_after(Seq::NONE, 10).await?, [expected(6)]);
    journal.close().await?;
    Ok(())
}

fn drop_meta_primary_key(path: &Path) -> TestResult {
    let conn = rusqlite::Connection::open(path)?;
    conn.execute_batch(
        "BEGIN;
         CREATE TABLE meta_copy (key TEXT, value INTEGER NOT NULL);
         INSERT INTO meta_copy SELECT key, value FROM meta;
         DROP TABLE meta;
         ALTER TABLE meta_copy RENAME TO meta;
         COMMIT;",
    )?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_store_with_a_damaged_schema_is_quarantined_and_flush_and_close_return() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = config(Backend::Sqlite, &dir);
    let journal = open(&config).await?;
    append_range(&journal, 1..=10).await?;
    journal.close().await?;
    drop_meta_primary_key(&config.path)?;

    let journal = open(&config).await?;
    let quarantined = journal.watch().borrow().quarantined.clone();
    let Some((moved_to, reason)) = quarantined else {
        return Err("a store with a damaged schema was not quarantined".into());
    };
    assert!(reason.contains("meta"), "reason names the table: {reason}");
    assert!(moved_to.exists(), "{} should hold the old store", moved_to.display());
    journal.append(uplink(1)).await?;
    tokio::time::timeout(HANG_GUARD, journal.flush()).await??;
    assert_eq!(journal.read_after(Seq::NONE, 10).await?, [expected(1)]);
    tokio::time::timeout(HANG_GUARD, journal.close()).await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_store_failing_every_commit_is_closed_and_flush_and_close_return() -> TestResult {
    let dir = tempfile::tempdir()?;
    // A small batch: a failing store with a full batch used to stop reading its queue.
    let config = JournalConfig { commit_max_records: 4, ..config(Backend::Sqlite, &dir) };
    let journal = open(&config).await?;
    append_range(&journal, 1..=2).await?;
    journal.flush().await?;
    // Damaged behind the open journal's back: every later commit fails.
    drop_meta_primary_key(&config.path)?;
    journal.append(uplink(3)).await?;
    let appending = {
        let journal = journal.clone();
        tokio::spawn(async move {
            for i in 4..=200 {
                if journal.append(uplink(i)).await.is_err() {
                    return i;
                }
            }
            200
        })
    };
    let flushed = tokio::time::timeout(HANG_GUARD, journal.flush()).await?;
    assert!(flushed.is_err(), "a flush on a failing store reports the failure");
    let stopped_at = tokio::time::timeout(HANG_GUARD, appending).await??;
    assert!(stopped_at < 200, "appends are refused once the journal gave up, not held forever");
    let closed = tokio::time::timeout(HANG_GUARD, journal.close()).await?;
    assert!(closed.is_err(), "the journal was closed by its owner");
    Ok(())
}
