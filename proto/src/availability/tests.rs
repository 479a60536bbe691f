use super::*;

const H: i64 = 3_600_000;
const MIN: i64 = 60_000;

fn paris() -> TimeZone {
    TimeZone::from_config("Europe/Paris")
        .unwrap_or_else(|e| panic!("these tests need /usr/share/zoneinfo/Europe/Paris (tzdata): {e}"))
}

fn ms(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> i64 {
    NaiveDate::from_ymd_opt(y, mo, d).unwrap().and_hms_opt(h, mi, 0).unwrap().and_utc().timestamp_millis()
}

fn incident(id: u64, service: &str, start_ms: i64, end_ms: Option<i64>) -> Incident {
    Incident {
        id,
        service: service.into(),
        cause: "cannot_connect".into(),
        start_ms,
        end_ms,
        ended: end_ms.map(|_| "recovered".into()),
        estimated: false,
        detail: String::new(),
    }
}

#[test]
fn months_and_days_follow_paris_civil_time_across_the_clock_changes() {
    let tz = paris();
    // November 2026: CET all month, from 2026-10-31T23:00Z to 2026-11-30T23:00Z.
    let nov = month_span(&tz, 2026, 11);
    assert_eq!(nov, Span { start_ms: ms(2026, 10, 31, 23, 0), end_ms: ms(2026, 11, 30, 23, 0) });
    assert_eq!(nov.len(), 30 * 24 * H);
    // October 2026 holds the 25-hour day (clocks back on the 25th): 31 days + 1 hour.
    let oct = month_span(&tz, 2026, 10);
    assert_eq!(oct.start_ms, ms(2026, 9, 30, 22, 0));
    assert_eq!(oct.len(), 31 * 24 * H + H);
    assert_eq!(day_span(&tz, NaiveDate::from_ymd_opt(2026, 10, 25).unwrap()).len(), 25 * H);
    // March 2026 the 23-hour day (clocks forward on the 29th).
    assert_eq!(day_span(&tz, NaiveDate::from_ymd_opt(2026, 3, 29).unwrap()).len(), 23 * H);
    assert_eq!(month_span(&tz, 2026, 3).len(), 31 * 24 * H - H);
    // December runs into the next year.
    assert_eq!(month_span(&tz, 2026, 12).end_ms, ms(2026, 12, 31, 23, 0));
    // 23:30 UTC on October 31st is already November in Paris.
    assert_eq!(month_of(&tz, ms(2026, 10, 31, 23, 30)).as_deref(), Some("2026-11"));
    assert_eq!(month_of(&tz, ms(2026, 10, 31, 22, 30)).as_deref(), Some("2026-10"));
}

#[test]
fn months_are_written_yyyy_mm() {
    assert_eq!(parse_month("2026-11"), Ok((2026, 11)));
    for bad in ["2026-13", "2026-1", "26-11", "2026/11", "", "2026-00", "abcd-ef"] {
        let e = parse_month(bad).unwrap_err();
        assert!(e.contains("YYYY-MM"), "{bad}: {e}");
    }
}

#[test]
fn a_backhaul_outage_is_down_time_and_one_incident_restored_in_its_length() {
    let tz = paris();
    let nov = month_span(&tz, 2026, 11);
    let incidents = [incident(1, "sink:chirpstack", ms(2026, 11, 10, 8, 0), Some(ms(2026, 11, 10, 9, 30)))];
    let ledger = Ledger {
        incidents: &incidents,
        maintenance: &[],
        observed_since_ms: ms(2026, 1, 1, 0, 0),
        now_ms: ms(2026, 12, 15, 0, 0),
        gtr_ms: 4 * H,
    };
    let f = ledger.figures("sink:chirpstack", nov);
    assert_eq!(f.observed_ms, nov.len());
    assert_eq!(f.down_ms, 90 * MIN);
    assert_eq!((f.incidents, f.open, f.over_gtr), (1, 0, 0));
    assert_eq!(f.mean_restore_ms, Some(90 * MIN));
    assert_eq!(f.longest_ms, Some(90 * MIN));
    let a = f.availability.unwrap();
    assert!((a - (1.0 - 1.5 / 720.0)).abs() < 1e-12, "{a}");
    // The sink's outage is the gateway's overall outage too; the radio saw none.
    assert_eq!(ledger.figures(OVERALL, nov).down_ms, 90 * MIN);
    assert_eq!(ledger.figures(RADIO, nov).down_ms, 0);
    assert_eq!(ledger.figures(RADIO, nov).availability, Some(1.0));
}

#[test]
fn declared_maintenance_is_neither_observed_nor_down_nor_an_incident() {
    let tz = paris();
    let nov = month_span(&tz, 2026, 11);
    // The backhaul goes down inside a maintenance window and stays down an hour after it.
    let incidents = [
        incident(1, "sink:chirpstack", ms(2026, 11, 10, 8, 30), Some(ms(2026, 11, 10, 11, 0))),
        incident(2, "sink:chirpstack", ms(2026, 11, 20, 8, 0), Some(ms(2026, 11, 20, 8, 10))),
    ];
    let maintenance = [Maintenance {
        id: 1,
        start_ms: ms(2026, 11, 10, 8, 0),
        end_ms: Some(ms(2026, 11, 10, 10, 0)),
        reason: "antenna".into(),
    }];
    let ledger = Ledger {
        incidents: &incidents,
        maintenance: &maintenance,
        observed_since_ms: 0,
        now_ms: ms(2026, 12, 1, 0, 0),
        gtr_ms: 4 * H,
    };
    let f = ledger.figures("sink:chirpstack", nov);
    assert_eq!(f.observed_ms, nov.len() - 2 * H);
    assert_eq!(f.down_ms, H + 10 * MIN);
    // The first one started in maintenance: not counted against the contract.
    assert_eq!(f.incidents, 1);
    assert_eq!(f.mean_restore_ms, Some(10 * MIN));
}

#[test]
fn while_the_gateway_is_down_its_services_are_not_observed_but_overall_is_down() {
    let tz = paris();
    let nov = month_span(&tz, 2026, 11);
    let mut cut = incident(1, GATEWAY, ms(2026, 11, 3, 2, 0), Some(ms(2026, 11, 3, 7, 0)));
    cut.cause = "power_cut".into();
    cut.estimated = true;
    let incidents = [cut, incident(2, "sink:chirpstack", ms(2026, 11, 3, 7, 0), Some(ms(2026, 11, 3, 7, 1)))];
    let ledger = Ledger {
        incidents: &incidents,
        maintenance: &[],
        observed_since_ms: 0,
        now_ms: ms(2026, 12, 1, 0, 0),
        gtr_ms: 4 * H,
    };
    let gw = ledger.figures(GATEWAY, nov);
    assert_eq!((gw.down_ms, gw.incidents, gw.over_gtr), (5 * H, 1, 1));
    let sink = ledger.figures("sink:chirpstack", nov);
    assert_eq!(sink.observed_ms, nov.len() - 5 * H);
    assert_eq!(sink.down_ms, MIN);
    // Overall: one outage of 5 h 1 min (the two touch), once over the GTR.
    let all = ledger.figures(OVERALL, nov);
    assert_eq!((all.down_ms, all.incidents, all.over_gtr), (5 * H + MIN, 1, 1));
}

#[test]
fn an_incident_across_the_month_boundary_is_down_time_in_both_and_counted_where_it_began() {
    let tz = paris();
    let (oct, nov) = (month_span(&tz, 2026, 10), month_span(&tz, 2026, 11));
    // From 23:00 Paris on October 31st to 01:00 on November 1st.
    let incidents = [incident(1, RADIO, oct.end_ms - H, Some(oct.end_ms + H))];
    let ledger = Ledger {
        incidents: &incidents,
        maintenance: &[],
        observed_since_ms: 0,
        now_ms: nov.end_ms,
        gtr_ms: 4 * H,
    };
    let (a, b) = (ledger.figures(RADIO, oct), ledger.figures(RADIO, nov));
    assert_eq!((a.down_ms, a.incidents, a.longest_ms), (H, 1, Some(2 * H)));
    assert_eq!((b.down_ms, b.incidents, b.longest_ms), (H, 0, None));
}

#[test]
fn an_open_incident_runs_to_now_and_a_month_before_the_ledger_is_not_observed() {
    let tz = paris();
    let nov = month_span(&tz, 2026, 11);
    let since = ms(2026, 11, 15, 0, 0);
    let now = ms(2026, 11, 20, 0, 0);
    let incidents = [incident(1, "field:dam", ms(2026, 11, 19, 0, 0), None)];
    let ledger = Ledger {
        incidents: &incidents,
        maintenance: &[],
        observed_since_ms: since,
        now_ms: now,
        gtr_ms: 4 * H,
    };
    let f = ledger.figures("field:dam", nov);
    assert_eq!(f.observed_ms, now - since);
    assert_eq!(f.down_ms, 24 * H);
    assert_eq!((f.incidents, f.open, f.over_gtr, f.mean_restore_ms), (1, 1, 1, None));
    // Field devices are not in the gateway's overall figure.
    assert_eq!(ledger.figures(OVERALL, nov).down_ms, 0);
    let oct = month_span(&tz, 2026, 10);
    assert_eq!(ledger.figures("field:dam", oct).availability, None);
}

#[test]
fn the_fleet_figures_weigh_each_gateway_by_its_observed_time() {
    let tz = paris();
    let nov = month_span(&tz, 2026, 11);
    let record = |gw: &str, incidents: Vec<Incident>| MonthRecord {
        gateway_id: gw.into(),
        month: "2026-11".into(),
        timezone: "Europe/Paris".into(),
        made_ms: nov.end_ms + H,
        observed_since_ms: 0,
        gtr_ms: 4 * H,
        incidents,
        incidents_omitted: 0,
        maintenance: vec![],
        figures: vec![],
    };
    let records = [
        record("a", vec![incident(1, "sink:chirpstack", nov.start_ms + H, Some(nov.start_ms + 3 * H))]),
        record("b", vec![incident(1, "sink:chirpstack", nov.start_ms + H, Some(nov.start_ms + 2 * H))]),
        record("c", vec![]),
    ];
    let fleet = fleet_figures(&records, 4 * H, &tz, 2026, 11);
    let overall = fleet.iter().find(|f| f.service == OVERALL).unwrap();
    assert_eq!(overall.observed_ms, 3 * nov.len());
    assert_eq!(overall.down_ms, 3 * H);
    assert_eq!(
        (overall.incidents, overall.mean_restore_ms, overall.longest_ms),
        (2, Some(90 * MIN), Some(2 * H))
    );
    let a = overall.availability.unwrap();
    assert!((a - (1.0 - 3.0 / (3.0 * 720.0))).abs() < 1e-12, "{a}");
}

#[test]
fn records_read_back_as_written() {
    let mut i = incident(7, GATEWAY, 1, Some(2));
    i.estimated = true;
    i.detail = "last heartbeat".into();
    let json =
        serde_json::to_string(&IncidentEvent { gateway_id: "gw".into(), incident: i.clone() }).unwrap();
    assert!(json.contains("\"estimated\":true"), "{json}");
    let back: IncidentEvent = serde_json::from_str(&json).unwrap();
    assert_eq!(back.incident, i);
    let open = incident(8, RADIO, 5, None);
    let json = serde_json::to_string(&open).unwrap();
    assert!(!json.contains("end_ms") && !json.contains("estimated"), "{json}");
}
