//! What a person on site (or `berrygw status`) is told about a running
//! gateway: overall health with its reasons, the radio, each sink and its
//! backlog with an estimate of when it will be drained. `Status` is the JSON
//! of `GET /api/status` and what the status page (`page.html`, [`PAGE`]) shows;
//! `text` renders it for `berrygw status`. `crate::api` serves it.
//!
//! Nothing here counts or owns pipeline state: it reads `GatewayView`.

pub mod text;

/// The status page: one HTML file that reads `/api/status`.
pub const PAGE: &str = include_str!("page.html");

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::clock::{self, ClockSync};
use crate::period::{Period, WHEEL_SLACK};
pub use crate::rules::AlarmView;
use crate::view::GatewayView;

/// The answer of `GET /api/status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub gateway_id: String,
    /// The configuration bundle in force (`[bundles]`; 0: the files berrygw.toml names).
    #[serde(default)]
    pub config_version: Option<u64>,
    pub uptime_secs: u64,
    /// False when any of `problems` holds.
    pub healthy: bool,
    /// Why the gateway is not healthy, one sentence each; empty when healthy.
    pub problems: Vec<String>,
    pub radio: RadioStatus,
    pub sinks: Vec<SinkStatus>,
    /// The latest reading of each registered device (empty without `[decode]`).
    #[serde(default)]
    pub readings: Vec<ReadingView>,
    /// Modbus field devices (empty without `[field]`).
    #[serde(default)]
    pub field_devices: Vec<FieldDeviceView>,
    /// Alarms raised by local rules and not cleared.
    #[serde(default)]
    pub alarms: Vec<AlarmView>,
    /// The latest command attempts, newest first.
    #[serde(default)]
    pub recent_commands: Vec<CommandView>,
    /// Whether the kernel says the clock is NTP-synchronized (central
    /// commands are refused while it is not, unless the site opts out).
    pub clock: ClockSync,
    /// The availability ledger: the last 30 days and the open incidents (`[ledger]`).
    #[serde(default)]
    pub availability: Option<crate::ledger::Recent>,
}

/// A field device as polled.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FieldDeviceView {
    pub name: String,
    pub profile: String,
    pub link: String,
    pub online: bool,
    /// Seconds since the last successful poll.
    pub last_ok_age_secs: Option<u64>,
    pub last_error: Option<String>,
    /// Point values, compact JSON.
    pub points: String,
}

/// One command attempt.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CommandView {
    pub at: String,
    pub source: String,
    pub actor: String,
    pub target: String,
    pub command: String,
    pub outcome: String,
    pub reason: Option<String>,
}

/// One device's latest reading, for a person on site.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReadingView {
    pub device: String,
    pub dev_eui: String,
    pub received_at: String,
    pub age_secs: u64,
    pub f_cnt: u32,
    pub rssi: i16,
    pub snr: f32,
    /// The decoded object, compact JSON.
    pub object: String,
    pub errors: Vec<String>,
}

/// The radio side.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RadioStatus {
    /// `sim`, `gwmp` or `sx1302`.
    pub kind: String,
    pub received: u64,
    pub received_crc_ok: u64,
    pub rejected: u64,
    /// Accepted and stored for every sink.
    pub queued: u64,
    /// Present when the radio is an SX1302 concentrator.
    pub concentrator: Option<ConcentratorView>,
    /// Present when the radio is a packet forwarder (`gwmp`).
    #[serde(default)]
    pub gwmp: Option<GwmpView>,
}

/// The packet forwarder feeding a `gwmp` radio.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GwmpView {
    /// The pinned forwarder's IP address, once one was heard.
    pub forwarder_ip: Option<String>,
    pub forwarder_gateway_id: Option<String>,
    /// Where downlinks go (the forwarder's PULL_DATA socket).
    pub downlink_addr: Option<String>,
    /// GWMP version of its PULL_DATA (1: downlinks are reported unconfirmed).
    pub version: Option<u8>,
    /// Frames (rxpk) refused: bad base64, oversized, missing or implausible field.
    pub rxpk_rejected: u64,
    /// Datagrams dropped as malformed.
    pub malformed: u64,
    /// Datagrams dropped for their source (another address, EUI, or port of the forwarder).
    pub refused_sources: u64,
    /// The latest refused source: `addr (reason, N s ago)`.
    pub last_refused: Option<String>,
}

/// A refused source is a problem on the status page for this long after it was seen.
const REFUSED_SOURCE_ALARM: Duration = Duration::from_secs(600);

/// The concentrator's health.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConcentratorView {
    pub running: bool,
    pub board: String,
    pub temperature_c: Option<f32>,
    pub restarts: u64,
    pub last_error: Option<String>,
    /// The LoRa uplink channels it listens on, Hz.
    #[serde(default)]
    pub channels_hz: Vec<u32>,
    /// Who set them when not `[radio.sx1302]` (a Basics Station LNS).
    #[serde(default)]
    pub plan_from: Option<String>,
}

/// One sink: its connection and its backlog.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SinkStatus {
    pub name: String,
    pub connected: bool,
    pub forwarded: u64,
    pub reconnects: u64,
    /// Journal records set aside because they could not be sent (see `SinkCounters::bad_records`).
    #[serde(default)]
    pub bad_records: u64,
    pub backlog: Backlog,
}

/// The records waiting in a sink's journal.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Backlog {
    pub records: u64,
    pub bytes: u64,
    /// Age of the oldest waiting record; `None` when empty.
    pub oldest_age_secs: Option<u64>,
    pub evicted_total: u64,
    /// Where a corrupt journal was moved at start, and why.
    pub quarantined: Option<String>,
    /// Records acknowledged per second over the last minute (or since start).
    pub drain_per_sec: Option<f64>,
    /// Change of the backlog per second over the same window (negative: shrinking).
    pub growth_per_sec: Option<f64>,
    /// At the recent net rate, seconds until the backlog is empty; `None` when
    /// it is empty, not shrinking, or there is no history yet.
    pub drained_in_secs: Option<u64>,
}

/// A backlog older than this is a problem even when it drains.
const STALE_BACKLOG: Duration = Duration::from_secs(120);

/// How the sampler remembers a sink: a sample at the first uplink `SAMPLE_EVERY` or more after
/// the last one (`crate::period`: it runs in that uplink's wake-up, so under traffic it never
/// wakes the gateway itself; a 5 s timer cost 0.02 context switches per uplink at 10/s,
/// BENCHMARKS.md "Field rates"). Without uplinks (a backlog draining after an outage) at the
/// first journal change `WHEEL_SLACK` after that; none while all are still (nothing to learn).
/// The samples of the last `WINDOW` are kept, and the last one before it as the baseline.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
const WINDOW: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug)]
struct Sample {
    at: Instant,
    records: u64,
    forwarded: u64,
    evicted: u64,
}

/// Recent samples of every sink (same order as `GatewayView::sinks`), oldest first.
#[derive(Clone, Debug, Default)]
pub struct History(Vec<VecDeque<Sample>>);

/// Rates of one sink over its remembered window.
#[derive(Debug, PartialEq)]
struct Trend {
    drain_per_sec: f64,
    growth_per_sec: f64,
    evicting: bool,
}

impl History {
    /// Remember `sample` of sink `sink`, forgetting what the window no longer needs.
    fn push(&mut self, sink: usize, sample: Sample) {
        let Some(window) = self.0.get_mut(sink) else { return };
        window.push_back(sample);
        if let Some(cutoff) = sample.at.checked_sub(WINDOW) {
            while window.get(1).is_some_and(|second| second.at <= cutoff) {
                window.pop_front();
            }
        }
    }

    fn trend(&self, sink: usize, now: Sample) -> Option<Trend> {
        let first = self.0.get(sink)?.front()?;
        let secs = now.at.saturating_duration_since(first.at).as_secs_f64();
        if secs < 1.0 {
            return None;
        }
        Some(Trend {
            drain_per_sec: now.forwarded.saturating_sub(first.forwarded) as f64 / secs,
            growth_per_sec: (now.records as f64 - first.records as f64) / secs,
            evicting: now.evicted > first.evicted,
        })
    }
}

/// Keeps `History` of every sink, for drain estimates; runs until aborted or a journal closes.
pub async fn sample_history(view: GatewayView, history: watch::Sender<History>) {
    let mut journals: Vec<_> = view.sinks.iter().map(|sink| sink.journal.watch()).collect();
    let mut period = Period::new(SAMPLE_EVERY, &view.beat).with_slack(WHEEL_SLACK);
    loop {
        for journal in &mut journals {
            journal.borrow_and_update();
        }
        history.send_modify(|h| {
            h.0.resize_with(view.sinks.len(), VecDeque::new);
            for (i, sink) in view.sinks.iter().enumerate() {
                h.push(i, sample(sink));
            }
        });
        period.wait().await;
        let changed = journals.iter().any(|j| j.has_changed().unwrap_or(true));
        if !changed && !any_changed(&mut journals).await {
            return;
        }
    }
}

/// Resolves when one of the journals has changed since it was last seen: true, or false when
/// one is closed. Never resolves for no journals.
async fn any_changed(journals: &mut [watch::Receiver<crate::journal::JournalStats>]) -> bool {
    let mut waits: Vec<_> = journals.iter_mut().map(|j| Box::pin(j.changed())).collect();
    std::future::poll_fn(|cx| {
        for wait in &mut waits {
            if let std::task::Poll::Ready(result) = std::future::Future::poll(wait.as_mut(), cx) {
                return std::task::Poll::Ready(result.is_ok());
            }
        }
        std::task::Poll::Pending
    })
    .await
}

fn sample(sink: &crate::view::SinkView) -> Sample {
    let j = sink.journal.watch().borrow().clone();
    Sample {
        at: Instant::now(),
        records: j.records,
        forwarded: sink.counters.forwarded.load(Ordering::Relaxed),
        evicted: j.evicted_total,
    }
}

/// The packet forwarder's view; a recently refused source is a problem (someone else on the
/// host or LAN is talking GWMP to us).
fn gwmp_view(g: &berrygw_lora::gwmp::GwmpStats, problems: &mut Vec<String>) -> GwmpView {
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let forwarder = g.forwarder();
    let refused_sources = load(&g.foreign_source)
        + load(&g.foreign_gateway)
        + load(&g.pull_data_refused)
        + load(&g.tx_ack_refused);
    let last = g.last_refused();
    let last_refused = last.as_ref().map(|r| {
        let ago = SystemTime::now().duration_since(r.at).unwrap_or_default();
        if ago < REFUSED_SOURCE_ALARM {
            problems.push(format!(
                "gwmp: {refused_sources} datagrams from a source other than the pinned packet forwarder \
                 ({} {}) were dropped; latest from {} as {} ({}, {} ago)",
                forwarder.as_ref().map_or("none".to_string(), |f| f.ip.to_string()),
                forwarder.as_ref().and_then(|f| f.gateway_id).map_or("?".to_string(), |e| e.to_string()),
                r.from,
                r.gateway_id,
                r.reason,
                human_duration(ago.as_secs())
            ));
        }
        format!("{} ({}, {} s ago)", r.from, r.reason, ago.as_secs())
    });
    GwmpView {
        forwarder_ip: forwarder.as_ref().map(|f| f.ip.to_string()),
        forwarder_gateway_id: forwarder.as_ref().and_then(|f| f.gateway_id).map(|e| e.to_string()),
        downlink_addr: forwarder.as_ref().and_then(|f| f.downlink_addr).map(|a| a.to_string()),
        version: forwarder.as_ref().and_then(|f| f.version),
        rxpk_rejected: load(&g.rxpk_rejected),
        malformed: load(&g.malformed),
        refused_sources,
        last_refused,
    }
}

impl Status {
    /// The status now, from live counters and the sampled `history`.
    pub fn collect(view: &GatewayView, history: &History) -> Status {
        let c = &view.counters;
        let mut problems = Vec::new();
        let concentrator = view.concentrator.as_ref().map(|rx| {
            let s = rx.borrow().clone();
            ConcentratorView {
                running: s.running,
                board: s.board,
                temperature_c: s.temperature_c,
                restarts: s.restarts,
                last_error: s.last_error,
                channels_hz: s.channels_hz,
                plan_from: s.plan_from,
            }
        });
        if let Some(con) = &concentrator {
            if !con.running {
                problems.push(format!(
                    "concentrator not running (restarting; {} restarts so far){}",
                    con.restarts,
                    con.last_error.as_ref().map(|e| format!(": {e}")).unwrap_or_default()
                ));
            }
        }
        let gwmp = view.gwmp.as_ref().map(|h| gwmp_view(h.stats(), &mut problems));
        let now_ms = berrygw_core::unix_ms(SystemTime::now());
        let mut sinks = Vec::new();
        for (i, sink) in view.sinks.iter().enumerate() {
            let j = sink.journal.watch().borrow().clone();
            let now = sample(sink);
            let trend = history.trend(i, now);
            let connected = sink.counters.connected.load(Ordering::Relaxed);
            let oldest_age_secs = j.oldest_received_at_ms.map(|ms| ((now_ms - ms).max(0) / 1000) as u64);
            let drained_in_secs = trend.as_ref().and_then(|t| {
                (j.records > 0 && t.growth_per_sec < 0.0)
                    .then(|| (j.records as f64 / -t.growth_per_sec).ceil() as u64)
            });
            if !connected {
                problems.push(format!("sink {}: not connected to its server", sink.name));
            }
            if let Some((path, reason)) = &j.quarantined {
                problems.push(format!(
                    "sink {}: journal was corrupt and moved aside to {} ({reason}); its records were not forwarded",
                    sink.name,
                    path.display()
                ));
            }
            if trend.as_ref().is_some_and(|t| t.evicting) {
                problems.push(format!("sink {}: journal full, oldest records are being dropped", sink.name));
            }
            if let Some(age) = oldest_age_secs.filter(|a| *a >= STALE_BACKLOG.as_secs()) {
                let direction = match (&trend, drained_in_secs) {
                    (_, Some(eta)) => format!("draining, about {} left", human_duration(eta)),
                    (Some(t), None) if t.growth_per_sec > 0.0 => "growing".to_string(),
                    _ => "not draining".to_string(),
                };
                problems.push(format!(
                    "sink {}: backlog of {} records, oldest {} old, {direction}",
                    sink.name,
                    j.records,
                    human_duration(age)
                ));
            }
            sinks.push(SinkStatus {
                name: sink.name.to_string(),
                connected,
                forwarded: now.forwarded,
                reconnects: sink.counters.reconnects.load(Ordering::Relaxed),
                bad_records: sink.counters.bad_records.load(Ordering::Relaxed),
                backlog: Backlog {
                    records: j.records,
                    bytes: j.bytes,
                    oldest_age_secs,
                    evicted_total: j.evicted_total,
                    quarantined: j.quarantined.as_ref().map(|(p, r)| format!("{} ({r})", p.display())),
                    drain_per_sec: trend.as_ref().map(|t| t.drain_per_sec),
                    growth_per_sec: trend.as_ref().map(|t| t.growth_per_sec),
                    drained_in_secs,
                },
            });
        }
        let readings = view
            .decoder
            .as_ref()
            .map(|d| {
                d.latest()
                    .borrow()
                    .values()
                    .map(|r| ReadingView {
                        device: r.device_name.clone(),
                        dev_eui: r.dev_eui.to_string(),
                        received_at: r.received_at.clone(),
                        age_secs: ((now_ms - r.received_at_ms).max(0) / 1000) as u64,
                        f_cnt: r.f_cnt,
                        rssi: r.rx.rssi,
                        snr: r.rx.snr,
                        object: r.object.to_string(),
                        errors: r.errors.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut field_devices = Vec::new();
        let mut recent_commands = Vec::new();
        if let Some(a) = &view.actuation {
            for (name, d) in a.devices() {
                let st = d.device.state().borrow().clone();
                if !st.online {
                    problems.push(format!(
                        "field device {name}: not answering{}",
                        st.last_error.as_ref().map(|e| format!(" ({e})")).unwrap_or_default()
                    ));
                }
                field_devices.push(FieldDeviceView {
                    name: name.clone(),
                    profile: d.profile.clone(),
                    link: d.link.clone(),
                    online: st.online,
                    last_ok_age_secs: st.last_ok.and_then(|t| t.elapsed().ok()).map(|e| e.as_secs()),
                    last_error: st.last_error.clone(),
                    points: serde_json::to_string(&st.points).unwrap_or_default(),
                });
            }
            recent_commands = a
                .recent()
                .into_iter()
                .map(|e| CommandView {
                    at: e.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    source: e.source.as_str().to_string(),
                    actor: e.actor,
                    target: e.target,
                    command: e.command,
                    outcome: e.outcome.as_str().to_string(),
                    reason: e.reason,
                })
                .collect();
        }
        let alarms: Vec<AlarmView> =
            view.rules.as_ref().map(|r| r.alarms().borrow().clone()).unwrap_or_default();
        for alarm in &alarms {
            problems.push(format!("alarm {} ({}): {}", alarm.name, alarm.severity, alarm.message));
        }
        let clock = clock::clock_sync();
        if let ClockSync::Unknown(e) = &clock {
            problems.push(format!("clock state unknown: {e}"));
        }
        Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            gateway_id: view.gateway_id.clone(),
            config_version: view.config_version.as_ref().and_then(|v| *v.borrow()),
            uptime_secs: view.started.elapsed().as_secs(),
            healthy: problems.is_empty(),
            problems,
            radio: RadioStatus {
                kind: view.radio_kind.to_string(),
                received: c.received.load(Ordering::Relaxed),
                received_crc_ok: c.received_crc_ok.load(Ordering::Relaxed),
                rejected: c.rejected.load(Ordering::Relaxed),
                queued: c.queued.load(Ordering::Relaxed),
                concentrator,
                gwmp,
            },
            sinks,
            readings,
            field_devices,
            alarms,
            recent_commands,
            clock,
            availability: None,
        }
    }
}

/// `95 s`, `12 min`, `3.5 h`, as a person reads a duration.
pub fn human_duration(secs: u64) -> String {
    match secs {
        0..=119 => format!("{secs} s"),
        120..=7199 => format!("{} min", secs / 60),
        _ => format!("{:.1} h", secs as f64 / 3600.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, secs: u64, records: u64, forwarded: u64) -> Sample {
        Sample { at: base + Duration::from_secs(secs), records, forwarded, evicted: 0 }
    }

    #[test]
    fn trend_measures_drain_and_growth_over_the_window() {
        let base = Instant::now();
        let history = History(vec![VecDeque::from([at(base, 0, 1000, 0), at(base, 30, 700, 400)])]);
        let t = history.trend(0, at(base, 60, 400, 800)).expect("a minute of history");
        assert_eq!(t.drain_per_sec, 800.0 / 60.0);
        assert_eq!(t.growth_per_sec, -10.0, "600 fewer records in 60 s");
        assert!(!t.evicting);
    }

    #[test]
    fn the_window_keeps_the_last_sample_before_it_as_the_baseline() {
        let base = Instant::now();
        let mut h = History(vec![VecDeque::new()]);
        for secs in [0, 5, 10, 100, 105] {
            h.push(0, at(base, secs, 100, secs));
        }
        let kept: Vec<u64> = h.0[0].iter().map(|s| (s.at - base).as_secs()).collect();
        assert_eq!(kept, [10, 100, 105], "105 s - 60 s = 45 s: the sample at 10 s is the baseline");
        // Nothing sampled for a long while: nothing changed, the rates are those since then.
        let t = h.trend(0, at(base, 310, 100, 105)).expect("a baseline");
        assert_eq!((t.growth_per_sec, t.drain_per_sec), (0.0, 95.0 / 300.0));
    }

    #[test]
    fn no_trend_without_history() {
        let base = Instant::now();
        assert_eq!(History::default().trend(0, at(base, 0, 5, 0)), None);
        let history = History(vec![VecDeque::from([at(base, 0, 5, 0)])]);
        assert_eq!(history.trend(0, at(base, 0, 5, 0)), None, "no time has passed");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human_duration(42), "42 s");
        assert_eq!(human_duration(600), "10 min");
        assert_eq!(human_duration(5400), "90 min");
        assert_eq!(human_duration(9000), "2.5 h");
    }
}
