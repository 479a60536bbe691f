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

use crate::journal::{Journal, NewRecord, Seq};
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
    mut shutdown: watch::Receiver<bool>,
) {
    let mut period = Period::new(every, journals.first().map(|(_, j)| j.watch_appended()));
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
    mut shutdown: watch::Receiver<bool>,
) {
    let mut period = Period::new(every, sinks.first().map(|(_, j, _)| j.watch_appended()));
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

/// A periodic duty that rides on the uplinks' own wake-ups instead of waking the gateway for
/// itself. It is due `every` after it last ran, and runs in the first wake-up after that in
/// which a record is appended (an uplink came in: the thread is awake anyway). With no
/// traffic a timer runs it `quiet_slack` later.
///
/// Why not a plain interval: tokio's timer wheel keeps a 30 s timer in 4.096 s slots and moves
/// it down a level at the start of its slot, then again 64 ms before it fires. Each move and
/// the firing are a wake-up of their own, about three per period, at a field's 10 uplinks/s
/// 0.01 context switches per uplink for each such duty (BENCHMARKS.md "Field rates"). Here the
/// quiet timer is at least one such slot past the due time, so under traffic it is dropped
/// before the wheel ever reaches it.
pub(super) struct Period {
    every: Duration,
    due: tokio::time::Instant,
    traffic: Option<watch::Receiver<Seq>>,
}

impl Period {
    /// Due `every` from now; `traffic` changes at each append (`Journal::watch_appended`).
    pub(super) fn new(every: Duration, traffic: Option<watch::Receiver<Seq>>) -> Period {
        Period { every, due: tokio::time::Instant::now() + every, traffic }
    }

    /// How long past its due time a duty waits for traffic: one 4.096 s slot of the wheel
    /// and a little, or a quarter of a short period.
    fn quiet_slack(&self) -> Duration {
        Duration::from_millis(4_200).min(self.every / 4)
    }

    /// Resolves when the duty should run, and counts the next period from then.
    pub(super) async fn wait(&mut self) {
        let quiet = tokio::time::sleep_until(self.due + self.quiet_slack());
        tokio::pin!(quiet);
        loop {
            tokio::select! {
                () = &mut quiet => break,
                appended = appended(&mut self.traffic) => {
                    if !appended {
                        self.traffic = None;
                    } else if tokio::time::Instant::now() >= self.due {
                        break;
                    }
                }
            }
        }
        self.due = tokio::time::Instant::now() + self.every;
    }
}

/// Resolves at the next append: true, or false once the journal is gone. Never without one.
async fn appended(traffic: &mut Option<watch::Receiver<Seq>>) -> bool {
    match traffic {
        Some(rx) => rx.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_period_runs_at_the_first_append_once_due_and_on_its_own_when_quiet() {
        let every = Duration::from_secs(30);
        let (tx, rx) = watch::channel(Seq(0));
        let mut period = Period::new(every, Some(rx));
        let start = tokio::time::Instant::now();
        // Appends before the due time do not run it.
        let waiting = tokio::spawn(async move {
            period.wait().await;
            let first = tokio::time::Instant::now();
            period.wait().await;
            (first, tokio::time::Instant::now())
        });
        for n in 1..=5 {
            tokio::time::sleep(Duration::from_secs(5)).await;
            tx.send_replace(Seq(n));
        }
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert!(!waiting.is_finished(), "ran before it was due");
        tx.send_replace(Seq(6));
        // Then nothing more is appended: the second period ends on the quiet timer.
        let (first, second) = waiting.await.unwrap();
        assert_eq!(first - start, Duration::from_secs(31));
        assert_eq!(second - first, every + Duration::from_millis(4_200));
    }

    #[tokio::test(start_paused = true)]
    async fn a_period_without_a_journal_is_a_timer() {
        let mut period = Period::new(Duration::from_secs(2), None);
        let start = tokio::time::Instant::now();
        period.wait().await;
        assert_eq!(tokio::time::Instant::now() - start, Duration::from_millis(2_500));
    }
}
