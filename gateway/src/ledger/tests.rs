use std::path::Path;

use super::*;

const S: i64 = 1_000;

/// A clock under the test's hand: both clocks advance together unless told otherwise.
struct Clock {
    base: Instant,
    mono: Duration,
    ms: i64,
}

impl Clock {
    fn new(ms: i64) -> Clock {
        Clock { base: Instant::now(), mono: Duration::ZERO, ms }
    }
    fn now(&self) -> Now {
        Now { ms: self.ms, at: self.base + self.mono }
    }
    fn advance(&mut self, secs: i64) -> Now {
        self.mono += Duration::from_secs(secs as u64);
        self.ms += secs * S;
        self.now()
    }
    /// The wall clock steps by `secs`; the monotonic clock does not.
    fn step_wall(&mut self, secs: i64) {
        self.ms += secs * S;
    }
}

fn cfg() -> LedgerSection {
    LedgerSection { timezone: "Europe/Paris".into(), ..LedgerSection::default() }
}

fn open(dir: &Path, clock: &Clock) -> Ledger {
    Ledger::open(&cfg(), dir, "0016c001ff10a235", clock.now()).expect("ledger opens")
}

fn down(cause: &'static str) -> Seen {
    Seen::Down { cause, detail: String::new(), for_: Duration::ZERO }
}

fn sink(seen: Seen) -> Vec<(String, Seen)> {
    vec![("radio".into(), Seen::Up), ("sink:chirpstack".into(), seen)]
}

fn all(ledger: &Ledger, clock: &Clock) -> Vec<Incident> {
    ledger.report(None, clock.now()).unwrap().incidents
}

fn incidents_in(up: &[Upstream]) -> Vec<Incident> {
    up.iter()
        .filter(|u| u.topic == UpTopic::Incident)
        .map(|u| serde_json::from_slice::<IncidentEvent>(&u.body).unwrap().incident)
        .collect()
}

// 2026-11-10 09:00 UTC.
const T0: i64 = 1_794_301_200_000;

#[test]
fn a_sink_down_past_the_minimum_is_one_incident_from_when_it_went_down_and_goes_upstream_closed() {
    let dir = tempfile::tempdir().unwrap();
    let mut clock = Clock::new(T0);
    let ledger = open(dir.path(), &clock);
    ledger.tick(clock.advance(5), sink(Seen::Up));
    let went_down = clock.advance(5).ms;
    ledger.tick(clock.now(), sink(down("cannot_connect")));
    // Under the minimum (10 s): nothing recorded yet.
    ledger.tick(clock.advance(5), sink(down("cannot_connect")));
    assert!(all(&ledger, &clock).is_empty());
    ledger.tick(clock.advance(5), sink(down("cannot_connect")));
    let open = all(&ledger, &clock);
    assert_eq!(open.len(), 1);
    assert_eq!(
        (open[0].start_ms, open[0].end_ms, open[0].service.as_str()),
        (went_down, None, "sink:chirpstack")
    );
    let up = ledger.tick(clock.advance(20), sink(Seen::Up));
    let closed = incidents_in(&up);
    assert_eq!(closed.len(), 1, "{up:?}");
    assert_eq!(closed[0].end_ms, Some(went_down + 30 * S));
    assert_eq!(closed[0].ended.as_deref(), Some("recovered"));
    assert!(!closed[0].estimated);
    // A flap shorter than the minimum is no incident.
    ledger.tick(clock.advance(5), sink(down("cannot_connect")));
    let up = ledger.tick(clock.advance(5), sink(Seen::Up));
    assert!(incidents_in(&up).is_empty());
    assert_eq!(all(&ledger, &clock).len(), 1);
}

#[test]
fn a_silence_the_watcher_measured_starts_when_it_began() {
    let dir = tempfile::tempdir().unwrap();
    let mut clock = Clock::new(T0);
    let ledger = open(dir.path(), &clock);
    let now = clock.advance(120);
    let seen = vec![(
        "radio".to_string(),
        Seen::Down { cause: "forwarder_silent", detail: "quiet".into(), for_: Duration::from_secs(60) },
    )];
    ledger.tick(now, seen);
    let i = all(&ledger, &clock);
    assert_eq!((i[0].start_ms, i[0].cause.as_str()), (now.ms - 60 * S, "forwarder_silent"));
}

#[test]
fn a_crash_closes_what_was_open_at_the_last_heartbeat_and_is_a_gateway_incident_with_an_estimated_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut clock = Clock::new(T0);
    let ledger = open(dir.path(), &clock);
    let went_down = clock.advance(30).ms;
    ledger.tick(clock.now(), sink(down("cannot_connect")));
    ledger.tick(clock.advance(30), sink(down("cannot_connect")));
    // The next heartbeat (300 s) writes the open incident with it.
    let beat_at = clock.advance(250).ms;
    ledger.tick(clock.now(), sink(down("cannot_connect")));
    ledger.tick(clock.advance(30), sink(down("cannot_connect")));
    // Killed: no stop. 200 s later it starts again.
    drop(ledger);
    clock.advance(200);
    let ledger = open(dir.path(), &clock);
    let i = all(&ledger, &clock);
    let sink_incident = i.iter().find(|i| i.service == "sink:chirpstack").unwrap();
    assert_eq!(sink_incident.start_ms, went_down);
    // Open at the last heartbeat, the last sign of life: it lasted at least until then.
    assert_eq!((sink_incident.end_ms, sink_incident.estimated), (Some(beat_at), true), "{i:?}");
    assert_eq!(sink_incident.ended.as_deref(), Some("crash"));
    let gw = i.iter().find(|i| i.service == "gateway").unwrap();
    assert_eq!((gw.cause.as_str(), gw.start_ms, gw.end_ms), ("crash", beat_at, Some(clock.now().ms)));
    assert!(gw.estimated);
    // Both go upstream at the first tick.
    let up = ledger.tick(clock.advance(5), sink(Seen::Up));
    let mut sent: Vec<String> = incidents_in(&up).into_iter().map(|i| i.service).collect();
    sent.sort();
    assert_eq!(sent, vec!["gateway", "sink:chirpstack"], "{up:?}");
}

#[test]
fn what_happened_after_the_last_heartbeat_is_the_gateways_outage_and_its_ids_are_never_given_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut clock = Clock::new(T0);
    let ledger = open(dir.path(), &clock);
    ledger.tick(clock.advance(30), sink(down("cannot_connect")));
    ledger.tick(clock.advance(30), sink(down("cannot_connect")));
    let up = ledger.tick(clock.advance(30), sink(Seen::Up));
    // Closed and sent upstream, not yet written (no heartbeat since).
    let sent = incidents_in(&up);
    assert_eq!(sent.len(), 1);
    drop(ledger);
    clock.advance(60);
    let ledger = open(dir.path(), &clock);
    let i = all(&ledger, &clock);
    // Lost with the crash, but inside the gateway's outage, which starts at the last heartbeat.
    assert_eq!(i.iter().map(|i| i.service.as_str()).collect::<Vec<_>>(), vec!["gateway"], "{i:?}");
    assert_eq!(i[0].start_ms, T0);
    // The id that went upstream is not given to another incident.
    assert!(i[0].id > sent[0].id, "{} after {}", i[0].id, sent[0].id);
}

#[test]
fn a_clean_stop_ends_open_incidents_then_and_its_gap_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let mut clock = Clock::new(T0);
    let ledger = open(dir.path(), &clock);
    ledger.tick(clock.advance(30), sink(down("cannot_connect")));
    ledger.tick(clock.advance(30), sink(down("cannot_connect")));
    let stopped_at = clock.advance(10).ms;
    let up = ledger.stop(clock.now());
    let closed = incidents_in(&up);
    assert_eq!(
        (closed[0].end_ms, closed[0].ended.as_deref(), closed[0].estimated),
        (Some(stopped_at), Some("stopped"), false)
    );
    drop(ledger);
    clock.advance(600);
    let ledger = open(dir.path(), &clock);
    let gw: Vec<Incident> = all(&ledger, &clock).into_iter().filter(|i| i.service == "gateway").collect();
    assert_eq!(gw.len(), 1);
    assert_eq!((gw[0].cause.as_str(), gw[0].start_ms, gw[0].estimated), ("stopped", stopped_at, false));
    assert_eq!(gw[0].end_ms, Some(stopped_at + 600 * S));
}

#[test]
fn a_new_boot_without_a_clean_stop_is_a_power_cut() {
    let dir = tempfile::tempdir().unwrap();
    let mut clock = Clock::new(T0);
    let (mut hb, _) = heartbeat::Heartbeat::open(&dir.path().join(HEARTBEAT_FILE)).unwrap();
    // The previous run: started, beat, then nothing (another boot id).
    Store::open(&dir.path().join(STORE_FILE), 1000)
        .unwrap()
        .set_meta("observed_since_ms", T0 - 86_400_000)
        .unwrap();
    hb.beat("another-boot", T0, false).unwrap();
    drop(hb);
    clock.advance(3_600);
    let ledger = open(dir.path(), &clock);
    let gw = all(&ledger, &clock);
    assert_eq!(gw.len(), 1);
    assert_eq!((gw[0].cause.as_str(), gw[0].start_ms, gw[0].estimated), ("power_cut", T0, true));
    assert!(gw[0].detail.contains("power cut"), "{}", gw[0].detail);
    // And after a clean stop, a new boot is a reboot.
    ledger.stop(clock.advance(10));
    drop(ledger);
    let (mut hb, last) = heartbeat::Heartbeat::open(&dir.path().join(HEARTBEAT_FILE)).unwrap();
    let last = last.unwrap();
    hb.beat("yet-another-boot", last.at_ms, true).unwrap();
    drop(hb);
    clock.advance(120);
    let ledger = open(dir.path(), &clock);
    assert!(all(&ledger, &clock).iter().any(|i| i.cause == "reboot" && !i.estimated));
}

#[test]
fn a_clock_behind_the_last_heartbeat_at_start_waits_for_the_clock_and_then_counts_from_the_process_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut clock = Clock::new(T0);
    let ledger = open(dir.path(), &clock);
    drop(ledger);
    // Power back on a board without a clock: it starts a day in the past.
    clock.advance(600);
    clock.step_wall(-86_400);
    let ledger = open(dir.path(), &clock);
    assert!(all(&ledger, &clock).is_empty(), "nothing recorded on a wrong clock");
    ledger.tick(clock.advance(60), sink(Seen::Up));
    // NTP sets the clock: 660 s after the last heartbeat, the process started 60 s ago.
    clock.step_wall(86_400);
    ledger.tick(clock.advance(5), sink(Seen::Up));
    let gw = all(&ledger, &clock);
    assert_eq!(gw.len(), 1);
    assert_eq!((gw[0].start_ms, gw[0].end_ms), (T0, Some(T0 + 600 * S)));
}

#[test]
fn a_clock_step_during_an_incident_does_not_change_its_length() {
    let dir = tempfile::tempdir().unwrap();
    let mut clock = Clock::new(T0);
    let ledger = open(dir.path(), &clock);
    let start = clock.advance(5).ms;
    ledger.tick(clock.now(), sink(down("cannot_connect")));
    ledger.tick(clock.advance(20), sink(down("cannot_connect")));
    clock.step_wall(3_600);
    let up = ledger.tick(clock.advance(10), sink(Seen::Up));
    let closed = incidents_in(&up);
    assert_eq!(closed[0].end_ms.unwrap() - closed[0].start_ms, 30 * S);
    assert_eq!(closed[0].start_ms, start);
    // And backwards.
    let start = clock.advance(5).ms;
    ledger.tick(clock.now(), sink(down("cannot_connect")));
    ledger.tick(clock.advance(20), sink(down("cannot_connect")));
    clock.step_wall(-7_200);
    let up = ledger.tick(clock.advance(10), sink(Seen::Up));
    let closed = incidents_in(&up);
    assert_eq!((closed[0].start_ms, closed[0].end_ms), (start, Some(start + 30 * S)));
}

#[test]
fn maintenance_is_declared_once_at_a_time_and_a_removed_service_closes_its_incident() {
    let dir = tempfile::tempdir().unwrap();
    let mut clock = Clock::new(T0);
    let ledger = open(dir.path(), &clock);
    let m = ledger.start_maintenance("antenna", clock.advance(1)).unwrap();
    let e = ledger.start_maintenance("again", clock.advance(1)).unwrap_err();
    assert!(format!("{e}").contains("in progress"), "{e}");
    let done = ledger.stop_maintenance(clock.advance(60)).unwrap();
    assert_eq!((done.id, done.end_ms), (m.id, Some(T0 + 62 * S)));
    assert!(ledger.stop_maintenance(clock.advance(1)).is_err());
    let r = ledger.report(None, clock.now()).unwrap();
    assert_eq!(r.maintenance.len(), 1);

    ledger.tick(clock.advance(1), sink(down("cannot_connect")));
    ledger.tick(clock.advance(30), sink(down("cannot_connect")));
    // The sink is gone from the configuration: its incident ends.
    let up = ledger.tick(clock.advance(1), vec![("radio".into(), Seen::Up)]);
    assert_eq!(incidents_in(&up)[0].ended.as_deref(), Some("removed"));
}

#[test]
fn each_finished_local_day_goes_upstream_once_with_the_months_record_retained() {
    let dir = tempfile::tempdir().unwrap();
    // 2026-11-30 22:30 UTC = 23:30 in Paris.
    let mut clock = Clock::new(1_796_077_800_000);
    let ledger = open(dir.path(), &clock);
    let first = ledger.tick(clock.advance(1), sink(Seen::Up));
    // The month's record at the first tick, nothing for days before the ledger.
    assert_eq!(first.iter().map(|u| &u.topic).collect::<Vec<_>>(), vec![&UpTopic::Month("2026-11".into())]);
    // Midnight in Paris: November 30th is over.
    let up = ledger.tick(clock.advance(3_600), sink(Seen::Up));
    let topics: Vec<&UpTopic> = up.iter().map(|u| &u.topic).collect();
    assert_eq!(
        topics,
        vec![&UpTopic::Day, &UpTopic::Month("2026-11".into()), &UpTopic::Month("2026-12".into())]
    );
    let day: DayEvent = serde_json::from_slice(&up[0].body).unwrap();
    assert_eq!(day.day, "2026-11-30");
    let record: MonthRecord = serde_json::from_slice(&up[1].body).unwrap();
    assert_eq!((record.month.as_str(), record.timezone.as_str()), ("2026-11", "Europe/Paris"));
    // Once: the next tick has nothing new.
    assert!(ledger.tick(clock.advance(5), sink(Seen::Up)).is_empty());
}

#[test]
fn most_ticks_write_nothing_and_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let mut clock = Clock::new(T0);
    let ledger = open(dir.path(), &clock);
    // The first tick sends the month's record; after it, a tick only looks.
    assert!(ledger.io_due(clock.advance(1)));
    ledger.tick(clock.now(), sink(Seen::Up));
    assert!(!ledger.io_due(clock.advance(5)));
    // An incident opened and closed is written with the heartbeat, not at once.
    ledger.tick(clock.now(), sink(down("cannot_connect")));
    ledger.tick(clock.advance(30), sink(down("cannot_connect")));
    ledger.tick(clock.advance(30), sink(Seen::Up));
    assert!(!ledger.io_due(clock.advance(5)));
    // The heartbeat is due 300 s after the last.
    assert!(ledger.io_due(clock.advance(300)));
}

#[test]
fn a_zone_this_machine_cannot_read_leaves_the_ledger_in_utc_not_the_gateway_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::new(T0);
    let cfg = LedgerSection { timezone: "Mars/Olympus_Mons".into(), ..LedgerSection::default() };
    assert!(cfg.check().is_ok(), "written like a zone");
    let ledger = Ledger::open(&cfg, dir.path(), "0016c001ff10a235", clock.now()).expect("opens");
    assert_eq!(ledger.report(None, clock.now()).unwrap().timezone, "UTC");
}
