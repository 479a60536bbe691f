//! The task that watches a running pipeline for the ledger: every `check_secs` (in the
//! uplinks' own wake-ups when they come, `crate::period`) it looks at the radio, each sink
//! and each field device, hands what it sees to [`Ledger::tick`] and puts what the ledger
//! sends upstream into the app sink's journal (kept through outages, so the record of an
//! outage reaches the centre after it).
//!
//! What "down" means here, per service:
//! - `radio`: the concentrator not running (`concentrator_down`); a `gwmp` packet forwarder
//!   that sent nothing, not even its PULL_DATA keepalive, for `forwarder_silence_secs`
//!   (`forwarder_silent`); no uplink at all for `radio_silence_minutes` when set
//!   (`radio_silent`).
//! - `sink:<name>`: not connected to its server (`cannot_connect`); connected with records
//!   waiting and none acknowledged for `no_ack_secs` (`no_ack`).
//! - `field:<device>`: the Modbus device does not answer its polls (`not_answering`).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::warn;

use super::{Ledger, LedgerSection, Now, Seen, UpTopic, Upstream};
use crate::events;
use crate::journal::Journal;
use crate::period::Period;
use crate::view::GatewayView;

/// A counter and when it last moved.
#[derive(Clone, Copy)]
struct Moved {
    value: u64,
    at: Instant,
}

impl Moved {
    fn new(value: u64, at: Instant) -> Moved {
        Moved { value, at }
    }

    /// How long the counter has stood still, once it reads `value` at `now`.
    fn still_for(&mut self, value: u64, now: Instant) -> Duration {
        if value != self.value {
            *self = Moved::new(value, now);
        }
        now.saturating_duration_since(self.at)
    }
}

/// A down state is dated back at most this far (a wall clock stepped since is not believed).
const MAX_BACKDATE: Duration = Duration::from_secs(3600);

/// The time since `ms` (Unix ms), at most [`MAX_BACKDATE`].
fn since_ms(ms: i64) -> Duration {
    let now = berrygw_core::unix_ms(std::time::SystemTime::now());
    Duration::from_millis(now.saturating_sub(ms).clamp(0, MAX_BACKDATE.as_millis() as i64) as u64)
}

/// What the watcher remembers between looks: which counters moved when.
pub struct Observer {
    started: Instant,
    datagrams: Moved,
    received: Moved,
    forwarded: HashMap<&'static str, Moved>,
}

impl Observer {
    /// Counters are taken as moving at `now` (the pipeline just started).
    pub fn new(view: &GatewayView, now: Instant) -> Observer {
        let datagrams = view.gwmp.as_ref().map_or(0, |g| g.stats().datagrams.load(Ordering::Relaxed));
        Observer {
            started: now,
            datagrams: Moved::new(datagrams, now),
            received: Moved::new(view.counters.received.load(Ordering::Relaxed), now),
            forwarded: view
                .sinks
                .iter()
                .map(|s| (s.name, Moved::new(s.counters.forwarded.load(Ordering::Relaxed), now)))
                .collect(),
        }
    }

    /// Every service of `view` as it looks at `now`.
    pub fn look(&mut self, view: &GatewayView, cfg: &LedgerSection, now: Instant) -> Vec<(String, Seen)> {
        let mut seen = Vec::new();
        seen.push((berrygw_proto::availability::RADIO.to_string(), self.radio(view, cfg, now)));
        for sink in &view.sinks {
            let connected = sink.counters.connected.load(Ordering::Relaxed);
            let forwarded = sink.counters.forwarded.load(Ordering::Relaxed);
            let waiting = waiting(&sink.journal);
            let moved = self.forwarded.entry(sink.name).or_insert_with(|| Moved::new(forwarded, now));
            let still = moved.still_for(forwarded, now);
            if waiting == 0 {
                // Nothing to acknowledge is no silence: the clock starts at the next record.
                *moved = Moved::new(forwarded, now);
            }
            let s = if !connected {
                // Since the sink lost its server (never: since the pipeline started).
                let changed = sink.counters.connected_changed_ms.load(Ordering::Relaxed);
                let for_ =
                    if changed > 0 { since_ms(changed) } else { now.saturating_duration_since(self.started) };
                Seen::Down { cause: "cannot_connect", detail: "not connected to its server".into(), for_ }
            } else if waiting > 0 && still >= Duration::from_secs(cfg.no_ack_secs) {
                Seen::Down {
                    cause: "no_ack",
                    detail: format!(
                        "connected, {waiting} records waiting, none acknowledged for {} s",
                        still.as_secs()
                    ),
                    for_: still,
                }
            } else {
                Seen::Up
            };
            seen.push((format!("sink:{}", sink.name), s));
        }
        if let Some(a) = &view.actuation {
            for (name, d) in a.devices() {
                let st = d.device.state().borrow().clone();
                let s = if st.online {
                    Seen::Up
                } else {
                    // Since its last good answer (never: since the pipeline started).
                    let for_ = st
                        .last_ok
                        .and_then(|t| t.elapsed().ok())
                        .unwrap_or_else(|| now.saturating_duration_since(self.started));
                    Seen::Down {
                        cause: "not_answering",
                        detail: st.last_error.unwrap_or_else(|| "not answering its polls".into()),
                        for_: for_.min(MAX_BACKDATE),
                    }
                };
                seen.push((format!("field:{name}"), s));
            }
        }
        seen
    }

    fn radio(&mut self, view: &GatewayView, cfg: &LedgerSection, now: Instant) -> Seen {
        if let Some(c) = &view.concentrator {
            let s = c.borrow();
            if !s.running {
                return Seen::Down {
                    cause: "concentrator_down",
                    detail: s.last_error.clone().unwrap_or_else(|| "the concentrator is not running".into()),
                    for_: Duration::ZERO,
                };
            }
        }
        if let Some(g) = &view.gwmp {
            let still = self.datagrams.still_for(g.stats().datagrams.load(Ordering::Relaxed), now);
            if still >= Duration::from_secs(cfg.forwarder_silence_secs) {
                return Seen::Down {
                    cause: "forwarder_silent",
                    detail: format!("nothing from the packet forwarder for {} s", still.as_secs()),
                    for_: still,
                };
            }
        }
        let silent = self.received.still_for(view.counters.received.load(Ordering::Relaxed), now);
        if cfg.radio_silence_minutes > 0 && silent >= Duration::from_secs(cfg.radio_silence_minutes * 60) {
            return Seen::Down {
                cause: "radio_silent",
                detail: format!("no uplink heard for {} min", silent.as_secs() / 60),
                for_: silent,
            };
        }
        Seen::Up
    }
}

/// Records appended and not yet acknowledged by the far side.
fn waiting(journal: &Journal) -> u64 {
    let appended = journal.watch_appended().borrow().0;
    appended.saturating_sub(journal.watch().borrow().acked.0)
}

/// Watch `view` for `ledger` until `stop` says so; then hand the app journal what is left.
pub async fn run(ledger: Ledger, cfg: LedgerSection, view: GatewayView, mut stop: watch::Receiver<bool>) {
    let mut period = Period::new(Duration::from_secs(cfg.check_secs), &view.beat);
    let mut observer = Observer::new(&view, Instant::now());
    let app = app_of(&view);
    loop {
        tokio::select! {
            () = period.wait() => {}
            _ = stop.changed() => return,
        }
        let now = Now::current();
        let seen = observer.look(&view, &cfg, now.at);
        // block_in_place hands the worker's core to another thread (wake-ups): only when the
        // tick writes (a heartbeat every 300 s, a day's end, the month's record).
        let up = if ledger.io_due(now) {
            tokio::task::block_in_place(|| ledger.tick(now, seen))
        } else {
            ledger.tick(now, seen)
        };
        send(app.as_ref(), up).await;
    }
}

/// The app sink's journal and topics, when there is an app sink.
pub fn app_of(view: &GatewayView) -> Option<(Journal, events::AppTopics)> {
    view.sinks.iter().find(|s| s.name == "app").map(|s| s.journal.clone()).zip(view.app_topics.clone())
}

/// Put `up` into the app journal, in order; without an app sink it goes nowhere.
pub async fn send(app: Option<&(Journal, events::AppTopics)>, up: Vec<Upstream>) {
    let Some((journal, topics)) = app else { return };
    for u in up {
        let (topic, retained) = match &u.topic {
            UpTopic::Incident => (topics.event("incident"), false),
            UpTopic::Day => (topics.event("availability"), false),
            UpTopic::Month(month) => (topics.availability(month), true),
        };
        let at = berrygw_core::unix_ms(std::time::SystemTime::now());
        let record = if retained {
            events::retained_record(&topic, &u.body, at)
        } else {
            events::record(&topic, &u.body, at)
        };
        if let Err(e) = journal.append(record).await {
            warn!(topic, "ledger: not queued for the app sink: {e}");
        }
    }
}
