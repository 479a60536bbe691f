//! End to end: the journal's limits. A tiny `max_bytes` evicts the oldest
//! uplinks and counts them; a damaged journal file is moved aside and the
//! daemon keeps working with a fresh one.

mod support;

use std::time::Duration;

use support::*;

fn report_field(line: &str, field: &str) -> Option<u64> {
    line.split_whitespace().find_map(|w| w.strip_prefix(&format!("{field}=")).and_then(|v| v.parse().ok()))
}

fn evicts_oldest_when_full_and_counts(backend: &str) {
    let dir = tempfile::tempdir().expect("tmp");
    let mut broker = Mosquitto::start(dir.path(), None);
    let sub = Subscriber::connect(broker.port, "eu868/gateway/+/event/up", None);
    broker.stop();
    let total = 400u64;
    let devices = sim_device("d", "water_meter", "26011bda", 5, Some(total));
    let text = config(&dir.path().join("s"), backend, &broker.url(false), "", &devices)
        .replace("commit_interval_ms = 50", "commit_interval_ms = 50\nmax_bytes = 8192");
    let gw = Berrygw::start(dir.path(), &text);
    gw.wait_log(Duration::from_secs(60), "all devices done");
    let line = gw.wait_log(Duration::from_secs(30), &format!("committed_seq={total}"));
    std::thread::sleep(Duration::from_millis(1500));
    let line = gw.log().into_iter().rev().find(|l| l.contains("report")).unwrap_or(line);
    let evicted = report_field(&line, "evicted").expect("evicted in report");
    let backlog = report_field(&line, "backlog").expect("backlog in report");
    assert!(evicted > 0, "a tiny journal must evict: {line}");
    assert_eq!(evicted + backlog, total, "every uplink is either kept or counted as evicted: {line}");

    broker.restart();
    let ups = sub.wait_uplinks(backlog as usize, Duration::from_secs(60));
    let order = first_arrivals(&ups);
    let tail: Vec<u64> = (total - backlog + 1..=total).collect();
    assert_eq!(order, tail, "the newest uplinks survive, oldest first");
}

#[test]
fn evicts_oldest_when_full_and_counts_sqlite() {
    evicts_oldest_when_full_and_counts("sqlite");
}

#[test]
fn evicts_oldest_when_full_and_counts_log() {
    evicts_oldest_when_full_and_counts("log");
}

fn corrupt_store_is_quarantined_and_daemon_keeps_working(backend: &str) {
    let dir = tempfile::tempdir().expect("tmp");
    let broker = Mosquitto::start(dir.path(), None);
    let sub = Subscriber::connect(broker.port, "eu868/gateway/+/event/up", None);
    let state = dir.path().join("s");
    let journal_dir = state.join("journal");
    std::fs::create_dir_all(&journal_dir).expect("journal dir");
    let garbage: Vec<u8> = (0..64 * 1024u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let damaged = match backend {
        "sqlite" => {
            let p = journal_dir.join("chirpstack.sqlite");
            std::fs::write(&p, &garbage).expect("garbage");
            p
        }
        _ => {
            let p = journal_dir.join("chirpstack.log");
            std::fs::create_dir_all(&p).expect("log dir");
            std::fs::write(p.join("seg-00000000000000000001.log"), &garbage).expect("garbage segment");
            p
        }
    };
    let devices = sim_device("d", "water_meter", "26011bda", 50, Some(5));
    let gw = Berrygw::start(dir.path(), &config(&state, backend, &broker.url(false), "", &devices));
    let line = gw.wait_log(Duration::from_secs(30), "JOURNAL WAS CORRUPT");
    assert!(line.contains(".corrupt-"), "{line}");
    let moved: Vec<_> = std::fs::read_dir(&journal_dir)
        .expect("list")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains(".corrupt-"))
        .collect();
    assert_eq!(moved.len(), 1, "the damaged store is kept aside for inspection");
    assert!(damaged.exists(), "a fresh store took its place");
    let ups = sub.wait_uplinks(5, Duration::from_secs(30));
    assert_eq!(first_arrivals(&ups), vec![1, 2, 3, 4, 5]);
}

#[test]
fn corrupt_store_is_quarantined_and_daemon_keeps_working_sqlite() {
    corrupt_store_is_quarantined_and_daemon_keeps_working("sqlite");
}

#[test]
fn corrupt_store_is_quarantined_and_daemon_keeps_working_log() {
    corrupt_store_is_quarantined_and_daemon_keeps_working("log");
}

/// Every path under `dir` with its mode, sockets left out (the API socket is 0660 by design).
fn modes(dir: &std::path::Path, out: &mut Vec<(String, u32)>) {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let meta = entry.metadata().expect("metadata");
        if meta.file_type().is_socket() {
            continue;
        }
        out.push((entry.path().display().to_string(), meta.permissions().mode() & 0o777));
        if meta.is_dir() {
            modes(&entry.path(), out);
        }
    }
}

fn state_is_private_whatever_the_umask(backend: &str) {
    // What a shell typically has; the daemon inherits it.
    // SAFETY: umask only sets this process's file-creation mask.
    unsafe { libc::umask(0o022) };
    let dir = tempfile::tempdir().expect("tmp");
    let broker = Mosquitto::start(dir.path(), None);
    let state = dir.path().join("state");
    let devices = sim_device("d", "water_meter", "26011bda", 20, Some(5));
    let text = config(&state, backend, &broker.url(false), "", &devices);
    let gw = Berrygw::start(dir.path(), &text);
    gw.wait_log(Duration::from_secs(60), "all devices done");
    gw.wait_log(Duration::from_secs(30), "committed_seq=5");
    use std::os::unix::fs::PermissionsExt;
    let root = std::fs::metadata(&state).expect("state dir").permissions().mode() & 0o777;
    assert_eq!(root, 0o700, "state directory");
    let mut found = Vec::new();
    modes(&state, &mut found);
    assert!(found.iter().any(|(p, _)| p.contains("journal")), "{found:?}");
    let loose: Vec<_> = found.iter().filter(|(_, m)| m & 0o077 != 0).collect();
    assert!(loose.is_empty(), "readable by group or others: {loose:?}");
}

#[test]
fn state_is_private_whatever_the_umask_sqlite() {
    state_is_private_whatever_the_umask("sqlite");
}

#[test]
fn state_is_private_whatever_the_umask_log() {
    state_is_private_whatever_the_umask("log");
}
