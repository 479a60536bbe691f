//! `ledger`: what the availability ledger writes to the SD card in a day, on a gateway whose
//! backhaul flaps (`--flaps-per-hour`, 60: an outage a minute, 20 s each, both sinks down)
//! and on a quiet one. The ledger runs as in the daemon (its defaults: a heartbeat every
//! 300 s, checks every 5 s, 10 s minimum outage), on simulated time, with real files and
//! real fsyncs in `--dir`; bytes written are the process's `write_bytes`.

use std::time::{Duration, Instant};

use crate::ledger::{Ledger, LedgerSection, Now, Seen};

use super::{sample, BenchArgs};

/// Seconds an outage lasts in each flap.
const DOWN_SECS: u64 = 20;

/// One simulated `days` run; (bytes written, incidents opened, heartbeats).
fn day(args: &BenchArgs, flaps_per_hour: u64, dir: &std::path::Path) -> anyhow::Result<(u64, u64, u64)> {
    let cfg = LedgerSection::default();
    let base = Instant::now();
    // 2026-11-10 00:00 UTC: a day without a clock change.
    let wall0: i64 = 1_794_268_800_000;
    let at = |secs: u64| Now { ms: wall0 + (secs * 1000) as i64, at: base + Duration::from_secs(secs) };
    std::fs::create_dir_all(dir)?;
    let ledger = Ledger::open(&cfg, dir, "0016c001ffbe0001", at(0))?;
    let period = 3600u64.checked_div(flaps_per_hour).unwrap_or(u64::MAX);
    let before = sample();
    let mut t = 0;
    let end = args.days * 86_400;
    while t < end {
        t += cfg.check_secs;
        let down = period != u64::MAX && t % period < DOWN_SECS;
        let sink = || {
            if down {
                Seen::Down { cause: "cannot_connect", detail: String::new(), for_: Duration::ZERO }
            } else {
                Seen::Up
            }
        };
        let seen = vec![
            ("radio".to_string(), Seen::Up),
            ("sink:chirpstack".into(), sink()),
            ("sink:app".into(), sink()),
        ];
        ledger.tick(at(t), seen);
    }
    let written = sample().write_bytes - before.write_bytes;
    let report = ledger.report(None, at(t))?;
    Ok((written, report.incidents.len() as u64, end / cfg.heartbeat_secs))
}

pub(super) fn ledger(args: &BenchArgs) -> anyhow::Result<serde_json::Value> {
    let started = Instant::now();
    let (flapping, incidents, beats) = day(args, args.flaps_per_hour, &args.dir.join("flapping"))?;
    let (quiet, _, _) = day(args, 0, &args.dir.join("quiet"))?;
    let days = args.days.max(1);
    Ok(serde_json::json!({
        "phase": "ledger",
        "days": days,
        "flaps_per_hour": args.flaps_per_hour,
        "incidents": incidents,
        "heartbeats": beats,
        "flapping_bytes_per_day": flapping / days,
        "bytes_per_incident": flapping.saturating_sub(quiet).checked_div(incidents).unwrap_or(0),
        "quiet_bytes_per_day": quiet / days,
        "seconds": (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
    }))
}
