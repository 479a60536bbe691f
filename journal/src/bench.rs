//! Backlog benchmark (ignored by default; prints numbers, asserts only correctness): fill a
//! journal with a large backlog, reopen it in the same process, drain it with
//! `read_after(…, 1000)` + `ack`, and report rates, resident memory and bytes written per
//! record (Linux `/proc/self/io`). Run one backend per process so the memory peak is its own:
//!
//! ```text
//! cargo test --release -p berrygw-journal bench::sqlite_backlog -- --ignored --nocapture
//! cargo test --release -p berrygw-journal bench::log_backlog -- --ignored --nocapture
//! ```
//!
//! `JOURNAL_BENCH_RECORDS` (default 1000000), `JOURNAL_BENCH_PAYLOAD` (default 120 bytes) and
//! `JOURNAL_BENCH_DIR` (default: a temporary directory; point it at the SD card) tune it.

use std::path::Path;
use std::time::Instant;

use super::{Backend, Journal, JournalConfig, NewRecord, Seq};

type BenchResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run by hand with --ignored --nocapture"]
async fn sqlite_backlog() -> BenchResult {
    backlog(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run by hand with --ignored --nocapture"]
async fn log_backlog() -> BenchResult {
    backlog(Backend::Log).await
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn disk_usage(path: &Path) -> u64 {
    match std::fs::read_dir(path) {
        Ok(entries) => entries.flatten().map(|entry| disk_usage(&entry.path())).sum(),
        Err(_) => std::fs::metadata(path).map_or(0, |m| m.len()),
    }
}

async fn backlog(backend: Backend) -> BenchResult {
    let records: u64 = env_or("JOURNAL_BENCH_RECORDS", 1_000_000);
    let payload_len: usize = env_or("JOURNAL_BENCH_PAYLOAD", 120);
    let scratch = match std::env::var_os("JOURNAL_BENCH_DIR") {
        Some(dir) => tempfile::tempdir_in(dir)?,
        None => tempfile::tempdir()?,
    };
    let config = JournalConfig::new(backend, scratch.path().join("bench"), u64::MAX);
    let per_record = |bytes: u64| bytes as f64 / records as f64;

    let written_before = berrygw_core::proc::self_field("io", "write_bytes:");
    let started = Instant::now();
    let journal = Journal::open("bench", config.clone())?;
    for i in 0..records {
        let payload = vec![(i % 251) as u8; payload_len];
        journal.append(NewRecord { kind: 1, received_at_ms: i as i64, payload }).await?;
    }
    journal.close().await?;
    let fill = started.elapsed();
    let written_fill = berrygw_core::proc::self_field("io", "write_bytes:") - written_before;
    println!(
        "{backend}: appended {records} x {payload_len} B in {fill:.2?} ({:.0}/s), {:.0} B written/record, \
         store {:.0} B/record, RSS {} kB",
        records as f64 / fill.as_secs_f64(),
        per_record(written_fill),
        per_record(disk_usage(&config.path)),
        berrygw_core::proc::self_field("status", "VmRSS:"),
    );

    let started = Instant::now();
    let journal = tokio::task::spawn_blocking({
        let config = config.clone();
        move || Journal::open("bench", config)
    })
    .await??;
    println!(
        "{backend}: reopened with {} records in {:.2?}, RSS {} kB",
        journal.watch().borrow().records,
        started.elapsed(),
        berrygw_core::proc::self_field("status", "VmRSS:")
    );

    let written_before = berrygw_core::proc::self_field("io", "write_bytes:");
    let started = Instant::now();
    let (mut after, mut drained) = (Seq::NONE, 0u64);
    loop {
        let batch = journal.read_after(after, 1000).await?;
        let Some(last) = batch.last() else { break };
        assert_eq!(batch[0].seq, Seq(after.0 + 1), "drain must be contiguous");
        drained += batch.len() as u64;
        after = last.seq;
        journal.ack(after);
    }
    let drain = started.elapsed();
    journal.flush().await?;
    journal.watch().wait_for(|stats| stats.records == 0).await?;
    assert_eq!(drained, records);
    println!(
        "{backend}: drained and acked {drained} in {drain:.2?} ({:.0}/s), {:.0} B written/record, \
         peak RSS {} kB, {} commits",
        drained as f64 / drain.as_secs_f64(),
        per_record(berrygw_core::proc::self_field("io", "write_bytes:") - written_before),
        berrygw_core::proc::self_field("status", "VmHWM:"),
        journal.watch().borrow().commits,
    );
    journal.close().await?;
    Ok(())
}
