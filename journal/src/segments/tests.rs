//! Tests of the segment log's undoing of failed commits: a failed append and a failed
//! commit that evicted leave nothing behind, in memory or on the medium.

use std::fs::{File, OpenOptions};

use super::format::ACK_FILE;
use super::*;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn record(seq: u64) -> Record {
    Record { seq: Seq(seq), kind: 1, received_at_ms: 1_700_000_000_000, payload: vec![seq as u8; 100] }
}

fn commit_of(records: &[Record], max_bytes: u64) -> Commit<'_> {
    Commit {
        records,
        last_seq: records.last().map_or(Seq::NONE, |r| r.seq),
        persist_counters: false,
        ack_up_to: Seq::NONE,
        max_bytes,
        unreadable: &[],
    }
}

fn seqs(store: &mut SegmentStore) -> Result<Vec<u64>, JournalError> {
    Ok(store.read_after(Seq::NONE, 100)?.iter().map(|r| r.seq.0).collect())
}

/// A commit whose append fails leaves nothing behind: the retry stores each record once,
/// and a reopen finds the same.
#[test]
fn a_failed_append_is_cut_off_and_its_retry_stores_each_record_once() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("journal");
    let (mut store, _) = SegmentStore::open(&path)?;
    store.commit(&commit_of(&[record(1), record(2)], u64::MAX))?;
    // The active segment's descriptor can no longer write: the next append fails.
    let active = store.segments.back().ok_or("a segment")?.path.clone();
    store.active = Some(File::open(&active)?);
    let batch = [record(3), record(4)];
    assert!(store.commit(&commit_of(&batch, u64::MAX)).is_err(), "the append fails");
    assert_eq!((store.counters().records, store.counters().last_seq), (2, Seq(2)));
    assert_eq!(seqs(&mut store)?, [1, 2]);

    store.commit(&commit_of(&batch, u64::MAX))?;
    assert_eq!(seqs(&mut store)?, [1, 2, 3, 4]);
    drop(store);
    let (mut reopened, quarantined) = SegmentStore::open(&path)?;
    assert!(quarantined.is_none());
    assert_eq!(seqs(&mut reopened)?, [1, 2, 3, 4]);
    assert_eq!(reopened.counters().records, 4);
    Ok(())
}

/// A commit that evicts and then fails evicts nothing: the eviction point goes back with
/// the counters, in memory and in the ack file, even when the undoing itself must wait.
#[test]
fn a_failed_commit_evicts_nothing() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("journal");
    let (mut store, _) = SegmentStore::open(&path)?;
    store.commit(&commit_of(&[record(1), record(2), record(3), record(4)], u64::MAX))?;
    // The ack file can no longer be written: a commit that evicts fails at its end, and
    // so does the first try to undo it.
    let ack_path = path.join(ACK_FILE);
    store.ack_file = File::open(&ack_path)?;
    let room_for_two = 2 * record_bytes(100);
    assert!(store.commit(&commit_of(&[record(5)], room_for_two)).is_err(), "the ack file write fails");
    assert!(store.undo.is_some(), "the undoing waits for a writable ack file");

    store.ack_file = OpenOptions::new().read(true).write(true).open(&ack_path)?;
    assert_eq!(seqs(&mut store)?, [1, 2, 3, 4], "nothing evicted, record 5 not stored");
    let c = store.counters();
    assert_eq!((c.records, c.evicted_total, c.last_seq), (4, 0, Seq(4)));
    assert!(store.undo.is_none());
    drop(store);
    let (mut reopened, _) = SegmentStore::open(&path)?;
    assert_eq!(seqs(&mut reopened)?, [1, 2, 3, 4]);

    // The retry evicts as it should.
    reopened.commit(&commit_of(&[record(5)], room_for_two))?;
    assert_eq!(seqs(&mut reopened)?, [4, 5]);
    assert_eq!(reopened.counters().evicted_total, 3);
    Ok(())
}
