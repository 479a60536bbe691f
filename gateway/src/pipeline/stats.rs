//! The gateway stats sent to the network server (through every journal) and
//! the operator's periodic one-line report.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use berrygw_sx1302::ConcentratorStatus;
use prost::Message;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::journal::{Journal, NewRecord};
use crate::period::{Beat, Period};
use crate::sink::chirpstack::{self, RecordKind, StatsSnapshot};

use crate::sink::SinkCounters;
use crate::view::Counters;

/// Journal state of every sink for the stats metadata (`journal_<sink>_records`, ...).
pub(super) fn journal_metadata(journals: &[(&'static str, Journal)]) -> HashMap<String, String> {
    let mut m = HashMap::from([("berrygw_version".to_string(), env!("CARGO_PKG_VERSION").to_string())]);
    for (name, journal) in journals {
        let j = journal.watch().borrow().clone();
        m.insert(format!("journal_{name}_records"), j.records.to_string());
        m.insert(format!("journal_{name}_bytes"), j.bytes.to_string());
        m.insert(format!("journal_{name}_evicted_total"), j.evicted_total.to_string());
        if let Some((path, reason)) = &j.quarantined {
            m.insert(format!("journal_{name}_quarantined"), format!("{} ({reason})", path.display()));
        }
    }
    m
}

/// Concentrator health for the stats metadata.
pub(super) fn concentrator_metadata(s: &ConcentratorStatus) -> HashMap<String, String> {
    let mut m = HashMap::from([
        ("concentrator_running".to_string(), s.running.to_string()),
        ("concentrator_restarts".to_string(), s.restarts.to_string()),
    ]);
    if let Some(eui) = s.eui {
        m.insert("concentrator_eui".into(), eui.to_string());
    }
    if let Some(t) = s.temperature_c {
        m.insert("concentrator_temperature_c".into(), format!("{t:.1}"));
    }
    if let Some(e) = &s.last_error {
        m.insert("concentrator_last_error".into(), e.clone());
    }
    m
}

pub(super) async fn stats_loop(
    gateway_id: String,
    every: Duration,
    journals: Vec<(&'static str, Journal)>,
    concentrator: Option<watch::Receiver<ConcentratorStatus>>,
    counters: Arc<Counters>,
    beat: Beat,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut period = Period::new(every, &beat);
    let mut last = (0u64, 0u64);
    loop {
        tokio::select! {
            () = period.wait() => {}
            _ = shutdown.changed() => return,
        }
        let now =
            (counters.received.load(Ordering::Relaxed), counters.received_crc_ok.load(Ordering::Relaxed));
        let per_freq =
            counters.rx_per_frequency.lock().map(|mut m| std::mem::take(&mut *m)).unwrap_or_default();
        let mut metadata = journal_metadata(&journals);
        if let Some(status) = &concentrator {
            metadata.extend(concentrator_metadata(&status.borrow()));
        }
        let snapshot = StatsSnapshot {
            rx_received: (now.0 - last.0) as u32,
            rx_received_ok: (now.1 - last.1) as u32,
            rx_per_frequency: per_freq,
            metadata,
            ..Default::default()
        };
        last = now;
        let at = SystemTime::now();
        let msg = chirpstack::stats_message(&gateway_id, at, snapshot);
        let rec = NewRecord {
            kind: RecordKind::Stats as u8,
            received_at_ms: berrygw_core::unix_ms(at),
            payload: msg.encode_to_vec(),
        };
        for (name, journal) in &journals {
            if let Err(e) = journal.append(rec.clone()).await {
                warn!(sink = name, "gateway stats not stored: {e}");
            }
        }
    }
}

/// One line per sink and interval for the operator: what came in, what waits, what left.
pub(super) async fn report_loop(
    every: Duration,
    sinks: Vec<(&'static str, Journal, Arc<SinkCounters>)>,
    counters: Arc<Counters>,
    beat: Beat,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut period = Period::new(every, &beat);
    loop {
        tokio::select! {
            () = period.wait() => {}
            _ = shutdown.changed() => return,
        }
        for (name, journal, sink) in &sinks {
            let j = journal.watch().borrow().clone();
            let oldest_age = j
                .oldest_received_at_ms
                .map(|ms| (berrygw_core::unix_ms(SystemTime::now()) - ms).max(0) / 1000);
            info!(
                sink = name,
                received = counters.received.load(Ordering::Relaxed),
                rejected = counters.rejected.load(Ordering::Relaxed),
                queued = counters.queued.load(Ordering::Relaxed),
                forwarded = sink.forwarded.load(Ordering::Relaxed),
                backlog = j.records,
                backlog_bytes = j.bytes,
                oldest_age_s = oldest_age.unwrap_or(0),
                committed_seq = j.last_seq.0,
                acked_seq = j.acked.0,
                evicted = j.evicted_total,
                connected = sink.connected.load(Ordering::Relaxed),
                "report"
            );
        }
    }
}
