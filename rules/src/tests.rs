//! Behaviour of the rule engine with fixed clocks: nothing sleeps, nothing is timed.

use std::path::Path;

use chrono::{DateTime, Duration, Utc};
use serde_json::json;

use super::*;

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).expect("test instant").with_timezone(&Utc)
}

fn rules(text: &str) -> RuleSet {
    RuleSet::parse(Path::new("rules.toml"), text).unwrap_or_else(|e| panic!("valid rules: {e}"))
}

fn engine(text: &str) -> RuleEngine {
    RuleEngine::new(rules(text))
}

const PROBE: Source<'static> = Source::Reading { device: "sonde-niveau-cher-pont" };
const DAM: Source<'static> = Source::Points { target: "barrage-cher-1" };

const FLOOD: &str = r#"
[[rule]]
name = "alerte-crue-cher"
when = { reading = "sonde-niveau-cher-pont", field = "level_cm", above = 250.0, clear_below = 230.0, hold_s = 60 }
then = { alarm = "crue", severity = "critical", message = "Le Cher dépasse 2,50 m au pont" }
"#;

fn level(cm: f64) -> serde_json::Value {
    json!({ "level_cm": cm, "battery_v": 3.6 })
}

fn raised(raised: bool) -> Action {
    Action::Alarm {
        rule: "alerte-crue-cher".into(),
        name: "crue".into(),
        severity: Severity::Critical,
        raised,
        message: "Le Cher dépasse 2,50 m au pont".into(),
    }
}

#[test]
fn threshold_fires_once_when_the_hold_has_elapsed() {
    let mut e = engine(FLOOD);
    let t0 = at("2025-02-01T08:00:00Z");
    assert_eq!(e.observe(PROBE, &level(262.0), t0), []);
    assert_eq!(e.next_due(t0), Some(t0 + Duration::seconds(60)), "the caller's timer must wake for the hold");
    assert_eq!(e.tick(t0 + Duration::seconds(59)), []);
    assert_eq!(e.tick(t0 + Duration::seconds(60)), [raised(true)], "fires with no new reading");
    assert_eq!(e.observe(PROBE, &level(270.0), t0 + Duration::seconds(600)), [], "once per rising edge");
    assert_eq!(e.tick(t0 + Duration::seconds(601)), []);
    let alarms = e.active_alarms();
    assert_eq!(alarms.len(), 1);
    assert_eq!(alarms[0].since, t0 + Duration::seconds(60));
    assert_eq!(alarms[0].severity, Severity::Critical);
}

#[test]
fn low_value_during_the_hold_cancels_it() {
    let mut e = engine(FLOOD);
    let t0 = at("2025-02-01T08:00:00Z");
    e.observe(PROBE, &level(262.0), t0);
    assert_eq!(e.observe(PROBE, &level(229.0), t0 + Duration::seconds(30)), []);
    assert_eq!(e.next_due(t0), None);
    assert_eq!(e.tick(t0 + Duration::seconds(60)), []);
    // A new rise starts a new hold from its own first value.
    let t1 = t0 + Duration::seconds(100);
    e.observe(PROBE, &level(255.0), t1);
    assert_eq!(e.tick(t1 + Duration::seconds(59)), []);
    assert_eq!(e.tick(t1 + Duration::seconds(60)), [raised(true)]);
}

#[test]
fn values_between_clear_and_threshold_keep_hold_and_alarm() {
    let mut e = engine(FLOOD);
    let t0 = at("2025-02-01T08:00:00Z");
    e.observe(PROBE, &level(251.0), t0);
    assert_eq!(
        e.observe(PROBE, &level(240.0), t0 + Duration::seconds(30)),
        [],
        "between bounds: hold goes on"
    );
    assert_eq!(e.tick(t0 + Duration::seconds(60)), [raised(true)]);
    assert_eq!(e.observe(PROBE, &level(230.0), t0 + Duration::seconds(90)), [], "230 is not below 230");
    assert_eq!(e.active_alarms().len(), 1);
    assert_eq!(e.observe(PROBE, &level(229.9), t0 + Duration::seconds(120)), [raised(false)]);
    assert!(e.active_alarms().is_empty());
    assert_eq!(e.observe(PROBE, &level(200.0), t0 + Duration::seconds(150)), [], "clears once");
}

#[test]
fn an_expired_hold_counts_before_a_late_low_value() {
    // No tick between the two readings (a busy or suspended caller): the condition held
    // for its 60 s, so the alarm is raised, then cleared by the low value.
    let mut e = engine(FLOOD);
    let t0 = at("2025-02-01T08:00:00Z");
    e.observe(PROBE, &level(262.0), t0);
    assert_eq!(e.observe(PROBE, &level(200.0), t0 + Duration::seconds(600)), [raised(true), raised(false)]);
}

#[test]
fn below_threshold_moves_the_dam_and_on_clear_moves_it_back() {
    let mut e = engine(
        r#"
[[rule]]
name = "fermeture-barrage-niveau-bas"
when = { target = "barrage-cher-1", point = "upstream_level_cm", below = 120.0, clear_above = 130.0, hold_s = 300 }
then = { command = "move_bay1", target = "barrage-cher-1", args = { position = 100 } }
on_clear = { command = "move_bay1", target = "barrage-cher-1", args = { position = 0 } }
"#,
    );
    let command = |position: i64| Action::Command {
        rule: "fermeture-barrage-niveau-bas".into(),
        target: "barrage-cher-1".into(),
        command: "move_bay1".into(),
        args: json!({ "position": position }),
    };
    let points = |cm: f64| json!({ "upstream_level_cm": cm, "bay1_position": 0, "mode": "remote" });
    let t0 = at("2025-08-01T14:00:00Z");
    assert_eq!(e.observe(DAM, &points(119.0), t0), []);
    assert_eq!(e.observe(DAM, &points(125.0), t0 + Duration::seconds(200)), []);
    assert_eq!(e.tick(t0 + Duration::seconds(300)), [command(100)]);
    assert_eq!(e.observe(DAM, &points(129.0), t0 + Duration::seconds(400)), []);
    assert_eq!(e.observe(DAM, &points(131.0), t0 + Duration::seconds(500)), [command(0)]);
    assert!(e.active_alarms().is_empty(), "commands raise no alarm");
    // The same points under another target, or a reading of that name, do nothing.
    let other = Source::Points { target: "barrage-cher-2" };
    assert_eq!(e.observe(other, &points(10.0), t0 + Duration::seconds(600)), []);
    let reading = Source::Reading { device: "barrage-cher-1" };
    assert_eq!(e.observe(reading, &points(10.0), t0 + Duration::seconds(600)), []);
    assert_eq!(e.next_due(t0), None);
}

#[test]
fn boolean_equals_with_hold_raises_and_clears() {
    let mut e = engine(
        r#"
[[rule]]
name = "porte-armoire"
when = { target = "armoire-ep-rue-haute", point = "door_open", equals = true, hold_s = 120 }
then = { alarm = "intrusion", message = "Porte de l'armoire ouverte" }
"#,
    );
    let cabinet = Source::Points { target: "armoire-ep-rue-haute" };
    let t0 = at("2025-03-01T22:00:00Z");
    assert_eq!(e.observe(cabinet, &json!({ "door_open": true }), t0), []);
    assert_eq!(
        e.observe(cabinet, &json!({ "door_open": 1 }), t0 + Duration::seconds(60)),
        [],
        "1 is not a bool"
    );
    let fired = e.tick(t0 + Duration::seconds(120));
    assert!(
        matches!(&fired[..], [Action::Alarm { name, severity: Severity::Warning, raised: true, .. }] if name == "intrusion"),
        "{fired:?}"
    );
    let cleared = e.observe(cabinet, &json!({ "door_open": false }), t0 + Duration::seconds(180));
    assert!(matches!(&cleared[..], [Action::Alarm { raised: false, .. }]), "{cleared:?}");
}

#[test]
fn missing_or_malformed_values_change_nothing() {
    let mut e = engine(FLOOD);
    let t0 = at("2025-02-01T08:00:00Z");
    e.observe(PROBE, &level(262.0), t0);
    for (i, values) in [
        json!({}),
        json!({ "level_cm": "haut" }),
        json!({ "level_cm": null }),
        json!({ "level_cm": [200] }),
        json!(null),
        json!("garbage"),
        json!(42),
    ]
    .iter()
    .enumerate()
    {
        let now = t0 + Duration::seconds(i as i64);
        assert_eq!(e.observe(PROBE, values, now), [], "{values}");
    }
    assert_eq!(e.tick(t0 + Duration::seconds(60)), [raised(true)], "the hold was not disturbed");
}

#[test]
fn dotted_fields_reach_into_nested_objects() {
    let mut e = engine(
        r#"
[[rule]]
name = "defaut-circuit-1"
when = { reading = "armoire-lora", field = "circuits.circuit_1.current_a", below = 0.5, clear_above = 1.0 }
then = { alarm = "circuit-1-eteint", severity = "info" }
"#,
    );
    let src = Source::Reading { device: "armoire-lora" };
    let t0 = at("2025-02-01T20:00:00Z");
    let fired = e.observe(src, &json!({ "circuits": { "circuit_1": { "current_a": 0.1 } } }), t0);
    assert!(matches!(&fired[..], [Action::Alarm { raised: true, .. }]), "hold 0 fires at once: {fired:?}");
    assert_eq!(e.active_alarms()[0].message, "circuit-1-eteint", "the message defaults to the alarm name");
}

/// Washington DC, where the U.S. Naval Observatory published sunset at 18:21 EST (23:21 UTC)
/// on 20 March 2002 (see `sun.rs`).
const DUSK_LIGHTS: &str = r#"
[site]
latitude = 38.9
longitude = -77.0

[[rule]]
name = "allumage-crepuscule"
when = { sun = "sunset", offset_min = -10 }
then = { command = "set_mode", target = "armoire-ep-rue-haute", args = { mode = "forced_on" } }
"#;

fn is_lights_on(actions: &[Action]) -> bool {
    matches!(actions, [Action::Command { command, args, .. }] if command == "set_mode" && args["mode"] == "forced_on")
}

#[test]
fn sunset_schedule_fires_at_sunset_plus_offset_once_then_next_day() {
    let mut e = engine(DUSK_LIGHTS);
    let start = at("2002-03-20T12:00:00Z");
    assert_eq!(e.next_due(start), Some(start), "not armed yet: tick now");
    assert_eq!(e.tick(start), []);
    let due = e.next_due(start).expect("armed");
    // Published sunset 23:21 UTC, minus 10 minutes.
    let expected = at("2002-03-20T23:11:00Z");
    assert!((due - expected).num_seconds().abs() <= 120, "due at {due}, almanac says {expected}");
    assert_eq!(e.tick(due - Duration::seconds(1)), []);
    assert!(is_lights_on(&e.tick(due)));
    assert_eq!(e.tick(due + Duration::seconds(1)), [], "not twice");
    assert_eq!(e.tick(due + Duration::minutes(30)), [], "not twice");
    let tomorrow = e.next_due(due).expect("rearmed");
    let gap = (tomorrow - due).num_minutes();
    assert!((1440..1443).contains(&gap), "next day's sunset is about a day later: {tomorrow}");
    assert!(is_lights_on(&e.tick(tomorrow)));
}

#[test]
fn schedules_never_fire_for_the_past_at_start() {
    let mut e = engine(DUSK_LIGHTS);
    // Started at 20:00 local (01:00 UTC the next day), after the 18:11 firing.
    let start = at("2002-03-21T01:00:00Z");
    assert_eq!(e.tick(start), []);
    let due = e.next_due(start).expect("armed");
    assert_eq!(due.date_naive().to_string(), "2002-03-21", "tomorrow's sunset: {due}");
    assert!(due > start + Duration::hours(20));
}

#[test]
fn a_long_gap_fires_once_within_grace_and_skips_older_instants() {
    let mut e = engine(
        r#"
[site]
timezone = "UTC"

[[rule]]
name = "releve-compteurs"
when = { cron = "*/10 * * * *" }
then = { command = "read_meters", target = "compteur-mairie" }
"#,
    );
    e.tick(at("2025-05-01T09:00:30Z"));
    assert_eq!(e.next_due(at("2025-05-01T09:00:30Z")), Some(at("2025-05-01T09:10:00Z")));
    // Suspended for an hour: 10:00 is 3 minutes old, fire it once.
    assert_eq!(e.tick(at("2025-05-01T10:03:00Z")).len(), 1);
    assert_eq!(e.next_due(at("2025-05-01T10:03:00Z")), Some(at("2025-05-01T10:10:00Z")));
    // Suspended again: the latest instant, 12:30, is 6 minutes old: skip.
    assert_eq!(e.tick(at("2025-05-01T12:36:00Z")), []);
    assert_eq!(e.next_due(at("2025-05-01T12:36:00Z")), Some(at("2025-05-01T12:40:00Z")));
    let fired = e.tick(at("2025-05-01T12:40:00Z"));
    assert!(
        matches!(&fired[..], [Action::Command { args, .. }] if *args == json!({})),
        "args default to an empty object: {fired:?}"
    );
}

#[test]
fn schedules_recover_when_the_clock_is_set_back() {
    let mut e = engine(DUSK_LIGHTS);
    // Booted with a clock a year ahead, then corrected: the sunset armed for 2003 must not
    // hold the lights back until then.
    let wrong = at("2003-03-20T12:00:00Z");
    e.tick(wrong);
    assert!(e.next_due(wrong).is_some_and(|d| d.date_naive().to_string() == "2003-03-20"));
    let right = at("2002-03-20T12:00:00Z");
    assert_eq!(e.tick(right), [], "re-armed from the corrected time, nothing fires for the past");
    let due = e.next_due(right).expect("armed");
    assert_eq!(due.date_naive().to_string(), "2002-03-20", "{due}");
    assert!(is_lights_on(&e.tick(due)));
    // A small step back (NTP) after firing does not fire it again.
    assert_eq!(e.tick(due - Duration::seconds(2)), []);
    assert_eq!(e.tick(due + Duration::seconds(1)), []);
}

#[test]
fn cron_follows_paris_civil_time_across_the_autumn_change() {
    let mut e = engine(
        r#"
[site]
timezone = "Europe/Paris"

[[rule]]
name = "extinction-nuit"
when = { cron = "30 23 * * *" }
then = { command = "set_mode", target = "armoire-ep-rue-haute", args = { mode = "auto" } }
"#,
    );
    let mut now = at("2025-10-24T12:00:00Z");
    e.tick(now);
    let mut fired_at = Vec::new();
    for _ in 0..3 {
        now = e.next_due(now).expect("scheduled");
        assert_eq!(e.tick(now).len(), 1);
        fired_at.push(now.to_rfc3339());
    }
    // 23:30 CEST is 21:30 UTC; on the 26th Paris is back on CET, 23:30 is 22:30 UTC.
    assert_eq!(
        fired_at,
        ["2025-10-24T21:30:00+00:00", "2025-10-25T21:30:00+00:00", "2025-10-26T22:30:00+00:00"]
    );
}

const TWO_RULES: &str = r#"
[[rule]]
name = "alerte-crue-cher"
when = { reading = "sonde-niveau-cher-pont", field = "level_cm", above = 250.0, clear_below = 230.0, hold_s = 60 }
then = { alarm = "crue", severity = "critical", message = "Le Cher dépasse 2,50 m au pont" }

[[rule]]
name = "batterie-sonde"
when = { reading = "sonde-niveau-cher-pont", field = "battery_v", below = 3.7, hold_s = 3600 }
then = { alarm = "batterie", severity = "info" }
"#;

#[test]
fn reload_keeps_state_of_unchanged_rules_and_clears_removed_ones() {
    let mut e = engine(TWO_RULES);
    let t0 = at("2025-02-01T08:00:00Z");
    e.observe(PROBE, &level(262.0), t0); // both conditions true (battery 3.6 V)
    assert_eq!(e.tick(t0 + Duration::seconds(60)), [raised(true)]);
    let t1 = t0 + Duration::seconds(120);
    // Same flood rule; the battery rule is gone.
    assert_eq!(e.reload(rules(FLOOD)), [], "the battery alarm was never raised: nothing to clear");
    assert_eq!(e.active_alarms().len(), 1, "the raised flood alarm survives the reload");
    assert_eq!(e.observe(PROBE, &level(240.0), t1), [], "still raised: no second raise");
    // The flood rule is removed: its alarm is cleared.
    assert_eq!(e.reload(rules("")), [raised(false)]);
    assert!(e.active_alarms().is_empty());
}

#[test]
fn reload_keeps_a_pending_hold_but_a_changed_trigger_starts_afresh() {
    let mut e = engine(TWO_RULES);
    let t0 = at("2025-02-01T08:00:00Z");
    e.observe(PROBE, &level(262.0), t0);
    e.reload(rules(TWO_RULES));
    assert_eq!(e.tick(t0 + Duration::seconds(60)), [raised(true)], "the hold kept running");
    let changed = TWO_RULES.replace("above = 250.0", "above = 260.0");
    assert_eq!(e.reload(rules(&changed)), [raised(false)], "a changed trigger clears its alarm");
    assert!(e.active_alarms().is_empty());
    // The unchanged battery rule kept its hold from t0 through both reloads.
    let fired = e.tick(t0 + Duration::seconds(3600));
    assert!(
        matches!(&fired[..], [Action::Alarm { name, raised: true, .. }] if name == "batterie"),
        "{fired:?}"
    );
    assert_eq!(
        e.observe(PROBE, &level(262.0), t0 + Duration::seconds(3700)),
        [],
        "the new flood hold starts"
    );
    assert!(
        matches!(&e.tick(t0 + Duration::seconds(3760))[..], [Action::Alarm { name, .. }] if name == "crue")
    );
}

#[test]
fn reload_redefines_a_raised_alarm() {
    let mut e = engine(FLOOD);
    let t0 = at("2025-02-01T08:00:00Z");
    e.observe(PROBE, &level(262.0), t0);
    e.tick(t0 + Duration::seconds(60));
    let reworded = FLOOD.replace("au pont\"", "au pont de Vierzon\"");
    let actions = e.reload(rules(&reworded));
    assert_eq!(actions.len(), 2, "{actions:?}");
    assert_eq!(actions[0], raised(false));
    assert!(
        matches!(&actions[1], Action::Alarm { raised: true, message, .. } if message.ends_with("Vierzon"))
    );
    assert_eq!(e.active_alarms()[0].since, t0 + Duration::seconds(60), "raised since the same instant");
}

/// The example in the module documentation, kept in step with it.
const EXAMPLE: &str = r#"
[site]
latitude = 47.222
longitude = 2.068
timezone = "Europe/Paris"

[[rule]]
name = "alerte-crue-cher"
when = { reading = "sonde-niveau-cher-pont", field = "level_cm", above = 250.0, clear_below = 230.0, hold_s = 60 }
then = { alarm = "crue", severity = "critical", message = "Le Cher dépasse 2,50 m au pont" }

[[rule]]
name = "fermeture-barrage-niveau-bas"
when = { target = "barrage-cher-1", point = "upstream_level_cm", below = 120.0, clear_above = 130.0, hold_s = 300 }
then = { command = "move_bay1", target = "barrage-cher-1", args = { position = 100 } }
on_clear = { command = "move_bay1", target = "barrage-cher-1", args = { position = 0 } }

[[rule]]
name = "allumage-crepuscule"
when = { sun = "sunset", offset_min = -10 }
then = { command = "set_mode", target = "armoire-ep-rue-haute", args = { mode = "forced_on" } }

[[rule]]
name = "extinction-nuit"
when = { cron = "30 23 * * *" }
then = { command = "set_mode", target = "armoire-ep-rue-haute", args = { mode = "auto" } }
"#;

#[test]
fn the_documented_example_parses() {
    let set = rules(EXAMPLE);
    let names: Vec<(&str, usize)> = set.rules().iter().map(|r| (r.name.as_str(), r.line)).collect();
    assert_eq!(
        names,
        [
            ("alerte-crue-cher", 8),
            ("fermeture-barrage-niveau-bas", 13),
            ("allumage-crepuscule", 19),
            ("extinction-nuit", 24)
        ]
    );
    assert!(matches!(&set.rules()[0].when, Trigger::Condition(c) if c.hold_s == 60
        && c.test == Test::Above { above: 250.0, clear_below: 230.0 }));
    assert!(matches!(set.rules()[2].when, Trigger::Sun { event: SunEvent::Sunset, offset_min: -10, .. }));
}

#[test]
fn config_errors_name_line_and_key() {
    let cases: Vec<(String, usize, &str, &str)> = vec![
        (EXAMPLE.replace("hold_s = 60", "hold_s = -5"), 9, "rule[0].when.hold_s", "seconds"),
        (EXAMPLE.replace("clear_below = 230.0", "clear_below = 260.0"), 9, "rule[0].when.clear_below", "exceed"),
        (EXAMPLE.replace("clear_above = 130.0", "clear_above = 110.0"), 14, "rule[1].when.clear_above", "under"),
        (EXAMPLE.replace("\"30 23 * * *\"", "\"30 25 * * *\""), 25, "rule[3].when.cron", "hour"),
        (EXAMPLE.replace("\"sunset\"", "\"moonrise\""), 20, "rule[2].when.sun", "unknown sun event"),
        (EXAMPLE.replace("offset_min = -10", "offset_min = -800"), 20, "rule[2].when.offset_min", "720"),
        (EXAMPLE.replace("extinction-nuit", "allumage-crepuscule"), 24, "rule[3].name", "rule[2]"),
        (
            EXAMPLE.replace("{ cron = \"30 23 * * *\" }", "{ cron = \"30 23 * * *\", sun = \"sunset\" }"),
            25,
            "rule[3].when",
            "one trigger",
        ),
        (
            EXAMPLE.replace("then = { command = \"set_mode\", target = \"armoire-ep-rue-haute\", args = { mode = \"auto\" } }", "then = { command = \"set_mode\" }"),
            26,
            "rule[3].then.target",
            "target",
        ),
        (EXAMPLE.replace("message = \"Le", "colour = \"red\", message = \"Le"), 10, "rule.then", "unknown field"),
        (EXAMPLE.replace("timezone = \"Europe/Paris\"", "timezone = \"Europe/Atlantis\""), 5, "site.timezone", "Atlantis"),
        (EXAMPLE.replace("latitude = 47.222", "latitude = 147.222"), 3, "site.latitude", "-90 to 90"),
        (EXAMPLE.replace("above = 250.0, ", "above = 250.0, below = 10.0, "), 9, "rule[0].when.above", "one test"),
        (EXAMPLE.replace("severity = \"critical\"", "severity = \"apocalyptic\""), 10, "rule.then", "variant"),
        (
            EXAMPLE.replace("\"Le Cher dépasse 2,50 m au pont\" }", "\"x\" }\non_clear = { alarm = \"y\" }"),
            11,
            "rule[0].on_clear",
            "takes a command",
        ),
        (
            EXAMPLE.replace("args = { mode = \"auto\" } }", "args = { mode = \"auto\" } }\non_clear = { command = \"x\", target = \"y\" }"),
            27,
            "rule[3].on_clear",
            "never clears",
        ),
        (
            EXAMPLE.replace("then = { command = \"set_mode\", target = \"armoire-ep-rue-haute\", args = { mode = \"auto\" } }", "then = { alarm = \"nuit\" }"),
            26,
            "rule[3].then",
            "needs a condition",
        ),
        (EXAMPLE.replace("field = \"level_cm\", ", ""), 9, "rule[0].when.field", "field"),
        (EXAMPLE.replace("point = \"upstream_level_cm\"", "field = \"upstream_level_cm\""), 14, "rule[1].when.field", "point"),
    ];
    for (text, line, key, says) in cases {
        let err = RuleSet::parse(Path::new("rules.toml"), &text).expect_err(key);
        assert_eq!((err.line, err.key.as_deref()), (Some(line), Some(key)), "{err}");
        assert!(err.message.contains(says), "{key}: {err}");
        assert!(err.to_string().starts_with("rules.toml:"), "{err}");
    }
}

#[test]
fn schedules_need_their_site_settings() {
    let no_site = EXAMPLE.replace("latitude = 47.222\nlongitude = 2.068\n", "");
    let err = RuleSet::parse(Path::new("rules.toml"), &no_site).expect_err("sun without coordinates");
    assert_eq!(err.key.as_deref(), Some("rule[2].when.sun"));
    assert!(err.message.contains("allumage-crepuscule") && err.message.contains("latitude"), "{err}");
    let no_tz = EXAMPLE.replace("timezone = \"Europe/Paris\"\n", "");
    let err = RuleSet::parse(Path::new("rules.toml"), &no_tz).expect_err("cron without timezone");
    assert_eq!(err.key.as_deref(), Some("rule[3].when.cron"));
    assert!(err.message.contains("extinction-nuit") && err.message.contains("timezone"), "{err}");
}

#[test]
fn unreadable_file_is_an_error_naming_it() {
    let err = RuleSet::load(Path::new("/nonexistent/rules.toml")).expect_err("missing file");
    assert_eq!(err.file, Path::new("/nonexistent/rules.toml"));
    assert!(err.message.contains("cannot read"), "{err}");
}

#[test]
fn truncated_or_mangled_files_never_panic() {
    let mut inputs: Vec<String> = (0..EXAMPLE.len())
        .filter(|&i| EXAMPLE.is_char_boundary(i))
        .map(|i| EXAMPLE[..i].to_string())
        .collect();
    inputs.push(EXAMPLE.replace("250.0", "nan"));
    inputs.push(EXAMPLE.replace("250.0", "inf"));
    inputs.push(EXAMPLE.replace("hold_s = 60", "hold_s = 9223372036854775807"));
    inputs.push(EXAMPLE.replace("offset_min = -10", "offset_min = -9223372036854775808"));
    inputs.push(EXAMPLE.replace("\"30 23 * * *\"", "\"\""));
    inputs.push(EXAMPLE.replace("position = 100", "position = 1979-05-27T07:32:00Z"));
    for text in inputs {
        let _ = RuleSet::parse(Path::new("rules.toml"), &text);
    }
}
