//! The availability ledger (issue 15): every outage of each of this gateway's services,
//! kept durably, so that the contract's figures (availability, time to restore) come from
//! the gateway's own record, the same on site and at the centre.
//!
//! - `store.rs`: `<state_dir>/ledger.sqlite`, the incidents and maintenance windows.
//! - `heartbeat.rs`: `<state_dir>/ledger.heartbeat`, when the daemon was last alive and
//!   whether it stopped cleanly. At start it tells what happened while berrygw was not
//!   running: stopped, the machine rebooted, berrygw crashed (same boot, no clean stop), or
//!   a power cut (new boot, no clean stop). An incident still open then is closed at the
//!   last heartbeat, marked estimated.
//! - `watch.rs`: the task that looks at a running pipeline (radio, sinks, field devices)
//!   every `check_secs` and hands what it sees to [`Ledger::tick`].
//! - This file: the state machine from what is seen to incidents, the heartbeat, planned
//!   maintenance, and what goes upstream (closed incidents, each day's figures, the month's
//!   record, retained). The figures themselves are `berrygw_proto::availability`'s, which the
//!   centre uses too.
//!
//! Incidents opened and closed are written together at the next heartbeat (one
//! transaction, then the heartbeat, both synced), at a clean stop and with a maintenance
//! change: a backhaul that flaps every minute then costs a few MB a day, not tens
//! (BENCHMARKS.md "Availability ledger"). What a power cut takes is what happened after
//! the last heartbeat, and the gateway's own incident covers exactly that time.
//!
//! Times are wall-clock Unix milliseconds as the incidents are read by people and joined
//! across gateways; an incident's length is measured on the monotonic clock, so a clock
//! step while it is open (NTP setting a clock that started wrong) does not change it.

pub mod config;
mod heartbeat;
mod store;
pub mod watch;

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use berrygw_proto::availability::{
    self as av, DayEvent, Figures, Incident, IncidentEvent, Maintenance, MonthRecord, Span,
};
use chrono::{Datelike, NaiveDate};
use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

pub use config::LedgerSection;
pub use heartbeat::boot_id;
pub use store::Store;

use crate::rules::TimeZone;

/// The ledger's files in the state directory.
pub const STORE_FILE: &str = "ledger.sqlite";
pub const HEARTBEAT_FILE: &str = "ledger.heartbeat";

/// A month record carries at most this many incidents (the latest); past it the centre reads
/// the gateway's own figures and is told how many were left out.
pub const MONTH_RECORD_MAX_INCIDENTS: usize = 2_000;

/// What goes upstream and waits for the app sink, at most this many (the oldest dropped).
const UPSTREAM_MAX: usize = 1_000;

/// An instant, on both clocks.
#[derive(Clone, Copy, Debug)]
pub struct Now {
    /// Wall clock, Unix milliseconds.
    pub ms: i64,
    pub at: Instant,
}

impl Now {
    pub fn current() -> Now {
        Now { ms: berrygw_core::unix_ms(SystemTime::now()), at: Instant::now() }
    }
}

/// How a service looks now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    Up,
    /// Down for `cause`; `for_` is how long the watcher already knows it to be (a silence it
    /// measured), zero when it only sees it now.
    Down {
        cause: &'static str,
        detail: String,
        for_: Duration,
    },
}

/// A message for the app sink: which topic, its body, whether the broker keeps it.
#[derive(Clone, Debug, PartialEq)]
pub struct Upstream {
    pub topic: UpTopic,
    pub body: Vec<u8>,
}

/// Where an [`Upstream`] message goes under the gateway's topics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpTopic {
    /// `…/event/incident`: a closed incident.
    Incident,
    /// `…/event/availability`: a local day's figures.
    Day,
    /// `…/availability/<YYYY-MM>`, retained: the month's record.
    Month(String),
}

/// A service that is down now.
#[derive(Clone, Debug)]
struct Down {
    since_ms: i64,
    since: Instant,
    cause: &'static str,
    detail: String,
    /// Once down for `min_outage_secs`: the incident recorded for it.
    incident: Option<u64>,
}

/// The gateway's own outage found at start, waiting for the clock to pass the last heartbeat.
#[derive(Clone, Debug)]
struct Gap {
    start_ms: i64,
    cause: &'static str,
    estimated: bool,
    detail: String,
}

/// The answer of `GET /api/availability` and `berrygw availability`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub gateway_id: String,
    pub month: String,
    pub timezone: String,
    pub gtr_ms: i64,
    pub observed_since_ms: i64,
    pub now_ms: i64,
    /// `overall` first, then each service.
    pub figures: Vec<Figures>,
    /// Every local day of the month so far, each service and `overall`.
    pub days: Vec<DayFigures>,
    pub incidents: Vec<Incident>,
    pub maintenance: Vec<Maintenance>,
}

/// One local day's figures.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DayFigures {
    /// `YYYY-MM-DD`.
    pub day: String,
    pub figures: Vec<Figures>,
}

/// What the status page and the metrics show: the services down now and the last 30 days.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Recent {
    /// `overall` first, then each service, over the last 30 days.
    pub figures: Vec<Figures>,
    pub open: Vec<Incident>,
    pub maintenance: Option<Maintenance>,
    /// Incidents opened since the daemon started, per (service, cause).
    #[serde(default)]
    pub opened: Vec<(String, String, u64)>,
}

/// The ledger of this gateway; cheap to clone. Blocking (SQLite, fsync): call it from
/// `block_in_place` or `spawn_blocking`.
#[derive(Clone)]
pub struct Ledger {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    store: Store,
    /// Incidents opened or closed since the last heartbeat, by id: written with the next one.
    pending: BTreeMap<u64, Incident>,
    next_id: u64,
    /// The last local day sent upstream (days from the common era), as in `day_sent`.
    day_sent: Option<i64>,
    /// Ids up to this one are reserved on disk (`id_reserved`): one not yet written when the
    /// power went may have gone upstream, so the next run starts above it.
    reserved_id: u64,
    heartbeat: heartbeat::Heartbeat,
    boot_id: String,
    cfg: LedgerSection,
    tz: TimeZone,
    gateway_id: String,
    observed_since_ms: i64,
    /// Started: the process's start on both clocks.
    started: Now,
    down: BTreeMap<String, Down>,
    last_beat: Option<(Instant, i64)>,
    gap: Option<Gap>,
    /// The previous tick, to notice the wall clock stepping.
    last_tick: Option<Now>,
    upstream: VecDeque<Upstream>,
    /// The month record changed since it was last published; when it was.
    dirty: bool,
    month_published: Option<Instant>,
    opened: BTreeMap<(String, &'static str), u64>,
    recent: Option<(Instant, Recent)>,
    warned_clock_behind: bool,
}

/// Unix milliseconds as people read them.
pub fn rfc3339(ms: i64) -> String {
    berrygw_core::rfc3339_ms(std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64))
}

/// Ids are reserved on disk by blocks of this many (one write per block).
const ID_BLOCK: u64 = 1_000;

/// The next incident id, reserving a new block on disk when the last one is used up.
fn new_id(store: &Store, next: &mut u64, reserved: &mut u64) -> anyhow::Result<u64> {
    if *next > *reserved {
        let up_to = *next + ID_BLOCK - 1;
        store.set_meta("id_reserved", up_to as i64)?;
        *reserved = up_to;
    }
    let id = *next;
    *next += 1;
    Ok(id)
}

/// The four ways berrygw can have been away, from the last heartbeat and the boot id.
fn gap_cause(stopped: bool, same_boot: bool) -> (&'static str, &'static str) {
    match (stopped, same_boot) {
        (true, true) => ("stopped", "berrygw was stopped"),
        (true, false) => ("reboot", "the machine restarted after a clean stop of berrygw"),
        (false, true) => (
            "crash",
            "berrygw ended without a clean stop (crash or kill); the start is the last heartbeat",
        ),
        (false, false) => (
            "power_cut",
            "the machine restarted without a clean stop (power cut or hard reset); the start is the last heartbeat",
        ),
    }
}

impl Ledger {
    /// Open the ledger in `state_dir` at start: what happened while berrygw was not running
    /// is recorded (see the module), and a first heartbeat written.
    pub fn open(cfg: &LedgerSection, state_dir: &Path, gateway_id: &str, now: Now) -> anyhow::Result<Ledger> {
        let tz = cfg.zone().unwrap_or_else(|e| {
            error!("ledger.timezone: {e}; the ledger's days and months are UTC until it can be read");
            TimeZone::utc()
        });
        crate::state_db::create_private_dir(state_dir)
            .with_context(|| format!("creating the state directory {}", state_dir.display()))?;
        let store = Store::open(&state_dir.join(STORE_FILE), cfg.max_incidents)?;
        let (heartbeat, last) = heartbeat::Heartbeat::open(&state_dir.join(HEARTBEAT_FILE))?;
        let first_start = store.meta("observed_since_ms")?.is_none();
        let observed_since_ms = match store.meta("observed_since_ms")? {
            Some(ms) => ms,
            None => {
                store.set_meta("observed_since_ms", now.ms)?;
                now.ms
            }
        };
        let reserved_id = store.meta("id_reserved")?.map_or(0, |n| n.max(0) as u64);
        let next_id = store.max_id()?.max(reserved_id) + 1;
        let mut inner = Inner {
            store,
            pending: BTreeMap::new(),
            next_id,
            reserved_id,
            day_sent: None,
            heartbeat,
            boot_id: boot_id(),
            cfg: cfg.clone(),
            tz,
            gateway_id: gateway_id.to_string(),
            observed_since_ms,
            started: now,
            down: BTreeMap::new(),
            last_beat: None,
            gap: None,
            last_tick: None,
            upstream: VecDeque::new(),
            dirty: true,
            month_published: None,
            opened: BTreeMap::new(),
            recent: None,
            warned_clock_behind: false,
        };
        inner.day_sent = inner.store.meta("day_sent")?;
        // The first block of ids now, so that the first incident writes nothing.
        let (mut next, mut reserved) = (inner.next_id, inner.reserved_id);
        if next > reserved {
            new_id(&inner.store, &mut next, &mut reserved)?;
            inner.reserved_id = reserved;
        }
        inner.reconcile(last, first_start, now)?;
        inner.beat(now, true);
        Ok(Ledger { inner: Arc::new(Mutex::new(inner)) })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// What the watcher saw: incidents opened and closed, the heartbeat, the day's end; the
    /// messages to hand to the app sink.
    pub fn tick(&self, now: Now, seen: Vec<(String, Seen)>) -> Vec<Upstream> {
        let mut inner = self.lock();
        inner.clock_check(now);
        inner.settle_gap(now);
        if let Err(e) = inner.observe(now, seen) {
            error!("ledger: recording an incident failed: {e:#}");
        }
        inner.beat(now, false);
        if let Err(e) = inner.publish(now) {
            warn!("ledger: preparing the day's and month's records failed: {e:#}");
        }
        inner.upstream.drain(..).collect()
    }

    /// Whether the next [`Ledger::tick`] at `now` writes to disk (a heartbeat, a day's end,
    /// the month's record): the watcher then runs it off the async worker. Most ticks only
    /// look, in memory.
    pub fn io_due(&self, now: Now) -> bool {
        self.lock().io_due(now)
    }

    /// A clean stop: open incidents end now (`stopped`), and the heartbeat says so.
    pub fn stop(&self, now: Now) -> Vec<Upstream> {
        let mut inner = self.lock();
        let open: Vec<(String, Down)> = std::mem::take(&mut inner.down).into_iter().collect();
        for (service, d) in open {
            if let Some(id) = d.incident {
                inner.close(&service, id, &d, now, "stopped");
            }
        }
        inner.flush();
        inner.last_beat = None;
        let boot = inner.boot_id.clone();
        if let Err(e) = inner.heartbeat.beat(&boot, now.ms, true) {
            error!(
                "ledger: the clean-stop heartbeat was not written ({e:#}); the next start will count a crash"
            );
        }
        inner.upstream.drain(..).collect()
    }

    /// Start a planned maintenance window; refused while one is in progress.
    pub fn start_maintenance(&self, reason: &str, now: Now) -> anyhow::Result<Maintenance> {
        let mut inner = self.lock();
        inner.flush();
        if let Some(m) = inner.store.open_maintenance()? {
            anyhow::bail!("maintenance {} is in progress since {} ({})", m.id, rfc3339(m.start_ms), m.reason);
        }
        let id = inner.store.start_maintenance(now.ms, reason)?;
        inner.dirty = true;
        inner.recent = None;
        info!(id, reason, "ledger: planned maintenance started");
        Ok(Maintenance { id, start_ms: now.ms, end_ms: None, reason: reason.to_string() })
    }

    /// End the maintenance window in progress.
    pub fn stop_maintenance(&self, now: Now) -> anyhow::Result<Maintenance> {
        let mut inner = self.lock();
        inner.flush();
        let Some(m) = inner.store.open_maintenance()? else {
            anyhow::bail!("no maintenance is in progress");
        };
        inner.store.stop_maintenance(m.id, now.ms)?;
        inner.dirty = true;
        inner.recent = None;
        info!(id = m.id, reason = m.reason, "ledger: planned maintenance stopped");
        Ok(Maintenance { end_ms: Some(now.ms.max(m.start_ms)), ..m })
    }

    /// The month `month` (`None`: the current one) as figures, days and records.
    pub fn report(&self, month: Option<(i32, u32)>, now: Now) -> anyhow::Result<Report> {
        self.lock().report(month, now)
    }

    /// The last 30 days and what is down now (recomputed at most every 10 s).
    pub fn recent(&self, now: Now) -> Recent {
        let mut inner = self.lock();
        if let Some((at, r)) = &inner.recent {
            if now.at.saturating_duration_since(*at) < Duration::from_secs(10) {
                return r.clone();
            }
        }
        let r = inner.compute_recent(now).unwrap_or_else(|e| {
            warn!("ledger: reading the last 30 days failed: {e:#}");
            Recent::default()
        });
        inner.recent = Some((now.at, r.clone()));
        r
    }
}

impl Inner {
    fn reconcile(
        &mut self,
        last: Option<heartbeat::Beat>,
        first_start: bool,
        now: Now,
    ) -> anyhow::Result<()> {
        let open = self.store.open_incidents()?;
        let Some(last) = last else {
            if !first_start {
                warn!(
                    "ledger: no heartbeat reads back ({}); how long berrygw was away is unknown and not recorded",
                    HEARTBEAT_FILE
                );
            }
            for i in open {
                self.store.close(i.id, i.start_ms, "unknown", true)?;
                self.closed_upstream(i.id);
            }
            return Ok(());
        };
        let same_boot = last.boot_id == self.boot_id && self.boot_id != "unknown";
        let (cause, detail) = gap_cause(last.stopped, same_boot);
        let estimated = !last.stopped;
        // berrygw was alive at its last heartbeat, and when it last wrote to the ledger.
        let alive_ms = if last.stopped {
            last.at_ms
        } else {
            last.at_ms.max(self.store.latest_ms()?.unwrap_or(i64::MIN))
        };
        for i in open {
            // Open when berrygw was last known alive: it lasted at least until then.
            self.store.close(i.id, alive_ms, cause, true)?;
            self.closed_upstream(i.id);
        }
        self.gap = Some(Gap { start_ms: alive_ms, cause, estimated, detail: detail.to_string() });
        self.settle_gap(now);
        if self.gap.is_some() {
            warn!(
                now = %rfc3339(now.ms),
                last_heartbeat = %rfc3339(last.at_ms),
                "ledger: the clock is behind the last heartbeat; the gateway's outage is recorded once the clock is set (NTP)"
            );
        }
        Ok(())
    }

    /// Record the start's gap once the clock is past its start: it ended when this process
    /// started (now, less the monotonic time since).
    fn settle_gap(&mut self, now: Now) {
        let Some(gap) = &self.gap else { return };
        let since_start =
            i64::try_from(now.at.saturating_duration_since(self.started.at).as_millis()).unwrap_or(0);
        let end_ms = now.ms - since_start;
        if end_ms < gap.start_ms {
            return;
        }
        let gap = self.gap.take().expect("checked above");
        if end_ms - gap.start_ms < self.min_outage_ms() {
            return;
        }
        let id = match self.new_id() {
            Ok(id) => id,
            Err(e) => {
                error!("ledger: recording the gateway's outage failed: {e:#}");
                return;
            }
        };
        let incident = Incident {
            id,
            service: av::GATEWAY.into(),
            cause: gap.cause.into(),
            start_ms: gap.start_ms,
            end_ms: Some(end_ms),
            ended: Some("restarted".into()),
            estimated: gap.estimated,
            detail: gap.detail,
        };
        // Rare and the first thing a start records: written at once.
        match self.store.upsert(std::slice::from_ref(&incident)) {
            Ok(()) => {
                *self.opened.entry((av::GATEWAY.into(), gap.cause)).or_default() += 1;
                info!(
                    id,
                    cause = gap.cause,
                    secs = (end_ms - gap.start_ms) / 1000,
                    estimated = gap.estimated,
                    "ledger: berrygw was away"
                );
                self.send_closed(incident);
            }
            Err(e) => error!("ledger: recording the gateway's outage failed: {e:#}"),
        }
    }

    fn new_id(&mut self) -> anyhow::Result<u64> {
        new_id(&self.store, &mut self.next_id, &mut self.reserved_id)
    }

    fn min_outage_ms(&self) -> i64 {
        (self.cfg.min_outage_secs * 1000) as i64
    }

    /// The wall clock against the monotonic one since the last tick: a step is logged (the
    /// open incidents keep their start; their length comes from the monotonic clock).
    fn clock_check(&mut self, now: Now) {
        if let Some(last) = self.last_tick {
            let mono = i64::try_from(now.at.saturating_duration_since(last.at).as_millis()).unwrap_or(0);
            let step = (now.ms - last.ms) - mono;
            if step.abs() > 5_000 {
                warn!(
                    step_secs = step / 1000,
                    "ledger: the wall clock stepped; open incidents keep their start and are measured on the monotonic clock"
                );
                // The heartbeat follows the new clock at once.
                self.last_beat = None;
            }
        }
        self.last_tick = Some(now);
    }

    fn observe(&mut self, now: Now, seen: Vec<(String, Seen)>) -> anyhow::Result<()> {
        let present: Vec<String> = seen.iter().map(|(s, _)| s.clone()).collect();
        for (service, s) in seen {
            match s {
                Seen::Up => {
                    if let Some(d) = self.down.remove(&service) {
                        if let Some(id) = d.incident {
                            self.close(&service, id, &d, now, "recovered");
                        }
                    }
                }
                Seen::Down { cause, detail, for_ } => {
                    let min = self.cfg.min_outage();
                    let d = self.down.entry(service.clone()).or_insert_with(|| {
                        let for_ms = i64::try_from(for_.as_millis()).unwrap_or(0);
                        Down {
                            since_ms: now.ms - for_ms,
                            since: now.at.checked_sub(for_).unwrap_or(now.at),
                            cause,
                            detail: detail.clone(),
                            incident: None,
                        }
                    });
                    if d.incident.is_none() && now.at.saturating_duration_since(d.since) >= min {
                        let id = new_id(&self.store, &mut self.next_id, &mut self.reserved_id)?;
                        let incident = Incident {
                            id,
                            service: service.clone(),
                            cause: d.cause.into(),
                            start_ms: d.since_ms,
                            end_ms: None,
                            ended: None,
                            estimated: false,
                            detail: d.detail.clone(),
                        };
                        self.pending.insert(id, incident);
                        d.incident = Some(id);
                        *self.opened.entry((service.clone(), d.cause)).or_default() += 1;
                        self.dirty = true;
                        self.recent = None;
                        warn!(id, service, cause = d.cause, detail = d.detail, "ledger: incident opened");
                    }
                }
            }
        }
        // A service no longer watched (a sink or a device removed by a configuration change).
        let gone: Vec<String> = self.down.keys().filter(|s| !present.contains(s)).cloned().collect();
        for service in gone {
            if let Some(d) = self.down.remove(&service) {
                if let Some(id) = d.incident {
                    self.close(&service, id, &d, now, "removed");
                }
            }
        }
        Ok(())
    }

    /// Close incident `id` of `service` (`d`): its end is its start plus the monotonic time
    /// it lasted. Written with the next heartbeat; sent upstream now.
    fn close(&mut self, service: &str, id: u64, d: &Down, now: Now, ended: &str) {
        let lasted = i64::try_from(now.at.saturating_duration_since(d.since).as_millis()).unwrap_or(0);
        let incident = Incident {
            id,
            service: service.to_string(),
            cause: d.cause.into(),
            start_ms: d.since_ms,
            end_ms: Some(d.since_ms + lasted),
            ended: Some(ended.into()),
            estimated: false,
            detail: d.detail.clone(),
        };
        info!(id, service, cause = d.cause, ended, secs = lasted / 1000, "ledger: incident closed");
        self.pending.insert(id, incident.clone());
        self.send_closed(incident);
    }

    /// Write what changed since the last heartbeat, in one transaction.
    fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let rows: Vec<Incident> = self.pending.values().cloned().collect();
        match self.store.upsert(&rows) {
            Ok(()) => self.pending.clear(),
            Err(e) => {
                error!(rows = rows.len(), "ledger: writing incidents failed (kept for the next try): {e:#}")
            }
        }
    }

    /// Queue the closed incident `id` (as stored) for the app sink.
    fn closed_upstream(&mut self, id: u64) {
        match self.store.incident(id) {
            Ok(Some(incident)) => self.send_closed(incident),
            Ok(None) => {}
            Err(e) => warn!(id, "ledger: reading a closed incident back failed: {e:#}"),
        }
    }

    /// Queue a closed incident for the app sink.
    fn send_closed(&mut self, incident: Incident) {
        self.dirty = true;
        self.recent = None;
        let event = IncidentEvent { gateway_id: self.gateway_id.clone(), incident };
        if let Ok(body) = serde_json::to_vec(&event) {
            self.push(Upstream { topic: UpTopic::Incident, body });
        }
    }

    /// The incidents and maintenance windows overlapping `span`, what is not written yet included.
    fn overlapping(&self, span: Span) -> anyhow::Result<(Vec<Incident>, Vec<Maintenance>)> {
        let (stored, maintenance) = self.store.overlapping(span)?;
        let mut by_id: BTreeMap<u64, Incident> = stored.into_iter().map(|i| (i.id, i)).collect();
        for (id, i) in &self.pending {
            if i.start_ms < span.end_ms && i.end_ms.is_none_or(|e| e > span.start_ms) {
                by_id.insert(*id, i.clone());
            } else {
                by_id.remove(id);
            }
        }
        Ok((by_id.into_values().collect(), maintenance))
    }

    /// The incidents open now, what is not written yet included.
    fn open_incidents(&self) -> anyhow::Result<Vec<Incident>> {
        let mut by_id: BTreeMap<u64, Incident> =
            self.store.open_incidents()?.into_iter().map(|i| (i.id, i)).collect();
        for (id, i) in &self.pending {
            if i.end_ms.is_none() {
                by_id.insert(*id, i.clone());
            } else {
                by_id.remove(id);
            }
        }
        Ok(by_id.into_values().collect())
    }

    fn push(&mut self, up: Upstream) {
        if self.upstream.len() >= UPSTREAM_MAX {
            self.upstream.pop_front();
        }
        self.upstream.push_back(up);
    }

    fn io_due(&self, now: Now) -> bool {
        let beat =
            self.last_beat.is_none_or(|(at, _)| now.at.saturating_duration_since(at) >= self.cfg.heartbeat());
        let today = av::local_date(&self.tz, now.ms).map(|d| i64::from(d.num_days_from_ce()));
        let new_day = match (self.day_sent, today) {
            (Some(sent), Some(t)) => sent < t - 1,
            (None, _) => true,
            (Some(_), None) => false,
        };
        let month = self.dirty
            && self.month_published.is_none_or(|at| {
                now.at.saturating_duration_since(at) >= Duration::from_secs(self.cfg.publish_every_secs)
            });
        beat || new_day || month || self.gap.is_some() || self.next_id > self.reserved_id
    }

    /// Write a heartbeat when one is due (or `force`); never one behind the last written,
    /// so a clock that starts wrong does not move the record back.
    fn beat(&mut self, now: Now, force: bool) {
        let due = force
            || self
                .last_beat
                .is_none_or(|(at, _)| now.at.saturating_duration_since(at) >= self.cfg.heartbeat());
        if !due {
            return;
        }
        if let Some((_, ms)) = self.last_beat {
            if now.ms < ms {
                if !self.warned_clock_behind {
                    warn!("ledger: the clock went back; no heartbeat until it passes the last one");
                    self.warned_clock_behind = true;
                }
                return;
            }
        }
        if self.gap.is_some() {
            // The clock is behind the last heartbeat of the previous run.
            return;
        }
        // What changed since the last beat first: the beat says everything before it is on disk.
        self.flush();
        let boot = self.boot_id.clone();
        match self.heartbeat.beat(&boot, now.ms, false) {
            Ok(()) => {
                self.last_beat = Some((now.at, now.ms));
                self.warned_clock_behind = false;
            }
            Err(e) => error!("ledger: heartbeat not written: {e:#}"),
        }
    }

    /// At a new local day, each finished day's figures and the month's record; the month's
    /// record again when it changed and `publish_every_secs` passed.
    fn publish(&mut self, now: Now) -> anyhow::Result<()> {
        if self.gap.is_some() {
            return Ok(());
        }
        let Some(today) = av::local_date(&self.tz, now.ms) else { return Ok(()) };
        let today_n = i64::from(today.num_days_from_ce());
        let sent = match self.day_sent {
            Some(n) => n,
            None => {
                self.store.set_meta("day_sent", today_n - 1)?;
                self.day_sent = Some(today_n - 1);
                today_n - 1
            }
        };
        if sent < today_n - 1 {
            let mut months = Vec::new();
            for n in (sent + 1).max(today_n - 31)..today_n {
                let Some(day) = NaiveDate::from_num_days_from_ce_opt(n as i32) else { continue };
                let span = av::day_span(&self.tz, day);
                let (incidents, maintenance) = self.overlapping(span)?;
                let ledger = self.view(&incidents, &maintenance, now);
                let event = DayEvent {
                    gateway_id: self.gateway_id.clone(),
                    day: day.format("%Y-%m-%d").to_string(),
                    timezone: self.tz.name().to_string(),
                    figures: ledger.all_figures(span),
                };
                self.push(Upstream { topic: UpTopic::Day, body: serde_json::to_vec(&event)? });
                if !months.contains(&(day.year(), day.month())) {
                    months.push((day.year(), day.month()));
                }
            }
            for (y, m) in months {
                self.push_month(y, m, now)?;
            }
            self.store.set_meta("day_sent", today_n - 1)?;
            self.day_sent = Some(today_n - 1);
            self.dirty = true;
        }
        let due = self.month_published.is_none_or(|at| {
            now.at.saturating_duration_since(at) >= Duration::from_secs(self.cfg.publish_every_secs)
        });
        if self.dirty && due {
            self.push_month(today.year(), today.month(), now)?;
            self.dirty = false;
            self.month_published = Some(now.at);
        }
        Ok(())
    }

    fn push_month(&mut self, year: i32, month: u32, now: Now) -> anyhow::Result<()> {
        let record = self.month_record(year, month, now)?;
        let topic = UpTopic::Month(record.month.clone());
        self.push(Upstream { topic, body: serde_json::to_vec(&record)? });
        Ok(())
    }

    fn view<'a>(
        &self,
        incidents: &'a [Incident],
        maintenance: &'a [Maintenance],
        now: Now,
    ) -> av::Ledger<'a> {
        av::Ledger {
            incidents,
            maintenance,
            observed_since_ms: self.observed_since_ms,
            now_ms: now.ms,
            gtr_ms: self.cfg.gtr_ms(),
        }
    }

    fn month_record(&self, year: i32, month: u32, now: Now) -> anyhow::Result<MonthRecord> {
        let span = av::month_span(&self.tz, year, month);
        let (mut incidents, maintenance) = self.overlapping(span)?;
        let figures = self.view(&incidents, &maintenance, now).all_figures(span);
        let omitted = incidents.len().saturating_sub(MONTH_RECORD_MAX_INCIDENTS);
        incidents.drain(..omitted);
        Ok(MonthRecord {
            gateway_id: self.gateway_id.clone(),
            month: format!("{year:04}-{month:02}"),
            timezone: self.tz.name().to_string(),
            made_ms: now.ms,
            observed_since_ms: self.observed_since_ms,
            gtr_ms: self.cfg.gtr_ms(),
            incidents,
            incidents_omitted: omitted as u64,
            maintenance,
            figures,
        })
    }

    fn report(&self, month: Option<(i32, u32)>, now: Now) -> anyhow::Result<Report> {
        let (year, month) = match month {
            Some(m) => m,
            None => {
                let today = av::local_date(&self.tz, now.ms).context("the clock is out of range")?;
                (today.year(), today.month())
            }
        };
        let span = av::month_span(&self.tz, year, month);
        let (incidents, maintenance) = self.overlapping(span)?;
        let ledger = self.view(&incidents, &maintenance, now);
        let mut days = Vec::new();
        let mut day = NaiveDate::from_ymd_opt(year, month, 1).context("no such month")?;
        while day.month() == month {
            let d = av::day_span(&self.tz, day);
            if d.start_ms > now.ms {
                break;
            }
            days.push(DayFigures { day: day.format("%Y-%m-%d").to_string(), figures: ledger.all_figures(d) });
            day = day.succ_opt().context("calendar overflow")?;
        }
        Ok(Report {
            gateway_id: self.gateway_id.clone(),
            month: format!("{year:04}-{month:02}"),
            timezone: self.tz.name().to_string(),
            gtr_ms: self.cfg.gtr_ms(),
            observed_since_ms: self.observed_since_ms,
            now_ms: now.ms,
            figures: ledger.all_figures(span),
            days,
            incidents: incidents.clone(),
            maintenance: maintenance.clone(),
        })
    }

    fn compute_recent(&self, now: Now) -> anyhow::Result<Recent> {
        let span = Span { start_ms: now.ms - 30 * 86_400_000, end_ms: now.ms };
        let (incidents, maintenance) = self.overlapping(span)?;
        let figures = self.view(&incidents, &maintenance, now).all_figures(span);
        Ok(Recent {
            figures,
            open: self.open_incidents()?,
            maintenance: self.store.open_maintenance()?,
            opened: self.opened.iter().map(|((s, c), n)| (s.clone(), c.to_string(), *n)).collect(),
        })
    }
}

#[cfg(test)]
mod tests;
