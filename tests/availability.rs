//! End to end: the availability ledger (issue 15) with the real binary, a real mosquitto
//! and the command-line tools. A broker cut is one backhaul incident per sink of about its
//! length, sent upstream after the outage, once, in order; SIGKILL and restart is a gateway
//! incident whose start is estimated from the last heartbeat; declared maintenance is
//! excluded from the figures; a corrupt ledger is moved aside and the gateway forwards on;
//! the month record is retained on the broker and the fleet report of three daemons
//! (`berryctl availability`) matches their own ledgers.

mod support;

use std::path::Path;
use std::time::Duration;

use support::*;

/// What every test's gateway adds: an app sink beside the ChirpStack one, and a ledger
/// quick enough for a test (1 s checks, 2 s minimum outage, 1 s heartbeat).
fn text(state: &Path, url: &str) -> String {
    let sinks_extra = format!(
        "\n[sinks.app]\nserver = \"{url}\"\nreconnect_min_ms = 200\nreconnect_max_ms = 1000\nkeep_alive_secs = 5\n\n\
         [ledger]\ncheck_secs = 1\nmin_outage_secs = 2\nheartbeat_secs = 1\npublish_every_secs = 1\n"
    );
    let mut t = config(state, "log", url, "", &four_devices(500, None));
    t.push_str(&sinks_extra);
    t
}

fn availability(socket: &Path, extra: &[&str]) -> serde_json::Value {
    let out = berrygw_command()
        .args(["availability", "--json", "--socket"])
        .arg(socket)
        .args(extra)
        .output()
        .expect("run berrygw availability");
    assert!(out.status.success(), "berrygw availability: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("availability JSON")
}

fn incidents(report: &serde_json::Value, service: &str) -> Vec<serde_json::Value> {
    report["incidents"].as_array().unwrap().iter().filter(|i| i["service"] == service).cloned().collect()
}

fn figures(report: &serde_json::Value, service: &str) -> serde_json::Value {
    report["figures"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["service"] == service)
        .cloned()
        .unwrap_or_default()
}

fn length_s(i: &serde_json::Value) -> f64 {
    (i["end_ms"].as_i64().expect("closed") - i["start_ms"].as_i64().unwrap()) as f64 / 1000.0
}

#[test]
fn a_broker_cut_is_one_backhaul_incident_per_sink_sent_upstream_once_after_it() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut broker = Mosquitto::start(dir.path(), None);
    let state = dir.path().join("s");
    let gw = Berrygw::start(dir.path(), &text(&state, &broker.url(false)));
    gw.wait_log(Duration::from_secs(30), "app sink: connected");
    gw.wait_log(Duration::from_secs(30), "chirpstack sink: connected");
    let events = Subscriber::connect(broker.port, "berrygw/+/event/#", None);

    let cut_s = 8;
    let cut_at = now_ms();
    broker.stop();
    std::thread::sleep(Duration::from_secs(cut_s));
    broker.restart();
    let back_at = now_ms();

    // Both sinks' incidents, closed, reach the centre after the outage.
    wait_for(Duration::from_secs(60), "both incidents on event/incident", || {
        (events.on_topic("/event/incident").len() >= 2).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    let seen = events.on_topic("/event/incident");
    let parsed: Vec<serde_json::Value> =
        seen.iter().map(|s| serde_json::from_slice(&s.payload).expect("incident JSON")).collect();
    let mut ids: Vec<u64> = parsed.iter().map(|p| p["id"].as_u64().unwrap()).collect();
    let sorted = {
        let mut s = ids.clone();
        s.sort();
        s
    };
    assert_eq!(ids, sorted, "in order: {parsed:?}");
    ids.dedup();
    assert_eq!(ids.len(), parsed.len(), "once each: {parsed:?}");
    for service in ["sink:chirpstack", "sink:app"] {
        let i = parsed
            .iter()
            .find(|p| p["service"] == service)
            .unwrap_or_else(|| panic!("{service}: {parsed:?}"));
        assert_eq!(i["cause"], "cannot_connect", "{i}");
        assert_eq!(i["ended"], "recovered", "{i}");
        assert_eq!(i["gateway_id"], "0016c001ff10a235");
        let len = length_s(i);
        // The sink notices within a keep-alive and reconnects within its backoff: bounds, not timing.
        assert!(
            len > (cut_s as f64) - 6.0 && len < (cut_s as f64) + 12.0,
            "{service}: {len} s for an {cut_s} s cut"
        );
        let start = i["start_ms"].as_i64().unwrap();
        assert!(start >= cut_at - 1_000 && start <= back_at, "{service}: starts in the cut: {i}");
    }
    // Every incident message was published after the broker came back.
    assert!(seen
        .iter()
        .all(|s| s.at.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64 >= back_at));

    // The same from the command line, with the figures.
    let report = availability(&state.join("api.sock"), &[]);
    let chirp = figures(&report, "sink:chirpstack");
    assert_eq!(chirp["incidents"], 1, "{chirp}");
    let down = chirp["down_ms"].as_i64().unwrap() as f64 / 1000.0;
    assert!(down > 1.0 && down < (cut_s as f64) + 12.0, "{chirp}");
    assert!(chirp["availability"].as_f64().unwrap() < 1.0);
    assert_eq!(figures(&report, "overall")["incidents"], 1, "the two sinks' outages are one for the gateway");
    assert_eq!(figures(&report, "radio")["incidents"], 0);
    // The text and CSV forms.
    let out = berrygw_command()
        .args(["availability", "--csv", "--socket"])
        .arg(state.join("api.sock"))
        .output()
        .expect("csv");
    let csv = String::from_utf8_lossy(&out.stdout);
    assert!(csv.starts_with("gateway_id,period,service,"), "{csv}");
    let month_name = report["month"].as_str().unwrap();
    assert!(csv.lines().any(|l| l.contains(&format!(",{month_name},sink:chirpstack,"))), "{csv}");
    // And the day of the cut, per service.
    let today = &report["days"].as_array().unwrap().last().unwrap()["day"];
    assert!(
        csv.lines().any(|l| l.contains(&format!(",{},sink:chirpstack,", today.as_str().unwrap()))),
        "{csv}"
    );
    let out = berrygw_command()
        .args(["availability", "--socket"])
        .arg(state.join("api.sock"))
        .output()
        .expect("text");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("cannot_connect") && text.contains("sink:chirpstack"), "{text}");
    // The month's record is retained on the broker.
    let month = report["month"].as_str().unwrap().to_string();
    let retained = Subscriber::connect(broker.port, &format!("berrygw/+/availability/{month}"), None);
    let record = wait_for(Duration::from_secs(30), "the retained month record", || {
        retained.seen().into_iter().rev().find(|s| s.retain)
    });
    let record: serde_json::Value = serde_json::from_slice(&record.payload).expect("month record");
    assert_eq!(record["month"], month);
    assert!(record["incidents"].as_array().unwrap().len() >= 2, "{record}");
    drop(gw);
}

#[test]
fn sigkill_and_restart_is_a_gateway_incident_estimated_from_the_last_heartbeat() {
    let dir = tempfile::tempdir().expect("tmp");
    let broker = Mosquitto::start(dir.path(), None);
    let state = dir.path().join("s");
    let mut gw = Berrygw::start(dir.path(), &text(&state, &broker.url(false)));
    gw.wait_log(Duration::from_secs(30), "chirpstack sink: connected");
    std::thread::sleep(Duration::from_secs(3));
    let killed_at = now_ms();
    gw.kill9();
    std::thread::sleep(Duration::from_secs(4));
    let restarted_at = now_ms();
    gw.restart();
    gw.wait_log(Duration::from_secs(30), "ledger: berrygw was away");
    let report =
        wait_for(Duration::from_secs(30), "the local API", || availability_report(&state.join("api.sock")));
    let gws = incidents(&report, "gateway");
    assert_eq!(gws.len(), 1, "{report}");
    let i = &gws[0];
    assert_eq!(i["cause"], "crash", "same boot, no clean stop: {i}");
    assert_eq!(i["estimated"], true);
    let start = i["start_ms"].as_i64().unwrap();
    let end = i["end_ms"].as_i64().unwrap();
    // The heartbeat is 1 s: the start is within a beat and the check's second of the kill
    // (and an fsync's latency: qemu-user runs this too).
    assert!(start <= killed_at && start >= killed_at - 4_000, "start {start}, killed {killed_at}");
    assert!(end >= restarted_at && end <= now_ms(), "end {end}, restarted {restarted_at}");

    // A clean stop and start: `stopped`, its start exact.
    let stopped_before = now_ms();
    gw.stop();
    let stopped_after = now_ms();
    std::thread::sleep(Duration::from_secs(3));
    gw.restart();
    gw.wait_log(Duration::from_secs(30), "ledger: berrygw was away");
    let report =
        wait_for(Duration::from_secs(30), "the local API", || availability_report(&state.join("api.sock")));
    let stopped =
        incidents(&report, "gateway").into_iter().find(|i| i["cause"] == "stopped").expect("stopped");
    assert!(stopped["estimated"].is_null() || stopped["estimated"] == false, "{stopped}");
    let start = stopped["start_ms"].as_i64().unwrap();
    assert!(start >= stopped_before && start <= stopped_after, "{stopped}");
}

#[test]
fn declared_maintenance_is_excluded_and_only_operators_may_declare_it() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut broker = Mosquitto::start(dir.path(), None);
    let state = dir.path().join("s");
    let gw = Berrygw::start(dir.path(), &text(&state, &broker.url(false)));
    gw.wait_log(Duration::from_secs(30), "chirpstack sink: connected");
    let socket = state.join("api.sock");
    let run = |args: &[&str]| {
        berrygw_command().args(args).arg("--socket").arg(&socket).output().expect("run berrygw")
    };
    let out = run(&["maintenance", "start", "--reason", "antenna replaced"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("started"));
    // A second start is refused while one is in progress.
    let again = run(&["maintenance", "start", "--reason", "again"]);
    assert_eq!(again.status.code(), Some(1), "{}", String::from_utf8_lossy(&again.stderr));
    assert!(String::from_utf8_lossy(&again.stderr).contains("in progress"));
    // A reason is required (clap) and an empty one is refused by the daemon.
    assert!(!run(&["maintenance", "start"]).status.success());
    assert_eq!(run(&["maintenance", "start", "--reason", " "]).status.code(), Some(1));

    broker.stop();
    std::thread::sleep(Duration::from_secs(5));
    broker.restart();
    wait_for(Duration::from_secs(30), "both sinks' incidents closed", || {
        (gw.log().iter().filter(|l| l.contains("ledger: incident closed")).count() >= 2).then_some(())
    });
    let out = run(&["maintenance", "stop"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(run(&["maintenance", "stop"]).status.code(), Some(1), "nothing left to stop");

    let report = availability(&socket, &[]);
    assert_eq!(report["maintenance"].as_array().unwrap().len(), 1, "{report}");
    let chirp = figures(&report, "sink:chirpstack");
    // The incident is in the ledger, but neither counted nor down time: it was all maintenance.
    assert_eq!(incidents(&report, "sink:chirpstack").len(), 1, "{report}");
    assert_eq!((chirp["incidents"].as_u64(), chirp["down_ms"].as_i64()), (Some(0), Some(0)), "{chirp}");
    assert_eq!(chirp["availability"].as_f64(), Some(1.0), "{chirp}");
    // What the CLI never sends, straight on the socket: refused with why, nothing declared.
    let post = |body: &str| {
        let req = format!(
            "POST /api/maintenance HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        local_api(&socket, req.as_bytes(), false).expect("an answer")
    };
    for (body, why) in [
        ("{nope", "expected"),
        (r#"{"action":"pause"}"#, "pause"),
        (r#"{"action":"start","reason":"x","extra":1}"#, "expected"),
        (&format!(r#"{{"action":"start","reason":"{}"}}"#, "r".repeat(501)), "reason"),
    ] {
        let (code, answer) = post(body);
        assert_eq!(code, 400, "{body}: {answer}");
        assert!(answer.contains(why), "{body}: {answer}");
    }
    let get = local_api(
        &socket,
        b"GET /api/availability?month=2026-13 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        false,
    );
    assert_eq!(get.map(|(c, b)| (c, b.contains("YYYY-MM"))), Some((400, true)));
    assert_eq!(availability_report(&socket).unwrap()["maintenance"].as_array().unwrap().len(), 1);
    // A bad month is a clear error.
    let bad = berrygw_command()
        .args(["availability", "--month", "2026-13", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("YYYY-MM"));
}

#[test]
fn a_corrupt_ledger_is_moved_aside_and_the_gateway_forwards_on() {
    let dir = tempfile::tempdir().expect("tmp");
    let broker = Mosquitto::start(dir.path(), None);
    let state = dir.path().join("s");
    std::fs::create_dir_all(&state).expect("state dir");
    std::fs::write(state.join("ledger.sqlite"), vec![0x42u8; 16384]).expect("junk");
    std::fs::write(state.join("ledger.heartbeat"), b"not a heartbeat at all").expect("junk");
    let sub = Subscriber::connect(broker.port, "eu868/gateway/+/event/up", None);
    let gw = Berrygw::start(dir.path(), &text(&state, &broker.url(false)));
    gw.wait_log(Duration::from_secs(30), "AVAILABILITY LEDGER IS CORRUPT");
    sub.wait_uplinks(8, Duration::from_secs(30));
    let moved = std::fs::read_dir(&state)
        .expect("state")
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with("ledger.sqlite.corrupt-"));
    assert!(moved, "the damaged ledger is kept aside");
    let report = availability(&state.join("api.sock"), &[]);
    assert_eq!(report["incidents"].as_array().unwrap().len(), 0, "{report}");
}

#[test]
fn the_fleet_report_of_three_daemons_matches_their_ledgers() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut broker = Mosquitto::start(dir.path(), None);
    let ids = ["0016c001ff10a301", "0016c001ff10a302", "0016c001ff10a303"];
    let gws: Vec<(Berrygw, std::path::PathBuf)> = ids
        .iter()
        .map(|id| {
            let home = dir.path().join(id);
            std::fs::create_dir_all(&home).expect("home");
            let state = home.join("s");
            let t = text(&state, &broker.url(false)).replace("0016c001ff10a235", id);
            (Berrygw::start(&home, &t), state)
        })
        .collect();
    for (gw, _) in &gws {
        gw.wait_log(Duration::from_secs(30), "app sink: connected");
    }
    broker.stop();
    std::thread::sleep(Duration::from_secs(5));
    broker.restart();
    // Each gateway's incidents closed and its month record retained with them.
    let month = availability(&gws[0].1.join("api.sock"), &[])["month"].as_str().unwrap().to_string();
    let retained = Subscriber::connect(broker.port, &format!("berrygw/+/availability/{month}"), None);
    wait_for(Duration::from_secs(60), "three month records with their incidents", || {
        let mut latest = std::collections::BTreeMap::new();
        for s in retained.seen() {
            let v: serde_json::Value = serde_json::from_slice(&s.payload).unwrap_or_default();
            latest.insert(s.topic.clone(), v["incidents"].as_array().map_or(0, Vec::len));
        }
        (latest.len() == 3 && latest.values().all(|n| *n >= 2)).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));

    let html = dir.path().join("report.html");
    let out = berryctl_command()
        .args([
            "availability",
            "--broker",
            &broker.url(false),
            "--month",
            &month,
            "--wait",
            "2",
            "--json",
            "--html",
        ])
        .arg(&html)
        .output()
        .expect("run berryctl availability");
    assert!(out.status.success(), "berryctl: {}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("report JSON");
    let gateways = report["gateways"].as_array().expect("gateways");
    assert_eq!(gateways.len(), 3, "{report}");
    let mut fleet_incidents = 0;
    for (_, state) in &gws {
        let own = availability(&state.join("api.sock"), &["--month", &month]);
        let id = own["gateway_id"].as_str().unwrap();
        let central =
            gateways.iter().find(|g| g["gateway_id"] == id).unwrap_or_else(|| panic!("{id} in the report"));
        for service in ["overall", "sink:chirpstack", "sink:app", "radio", "gateway"] {
            let (a, b) = (figures(&own, service), {
                let f = central["figures"].as_array().unwrap().iter().find(|f| f["service"] == service);
                f.cloned().unwrap_or_default()
            });
            // Every incident is closed: the same down time and counts on both sides (observed
            // time differs by when each was computed).
            for key in ["down_ms", "incidents", "open", "mean_restore_ms", "longest_ms", "over_gtr"] {
                assert_eq!(a[key], b[key], "{id} {service} {key}: gateway {a} / centre {b}");
            }
        }
        fleet_incidents += figures(&own, "overall")["incidents"].as_u64().unwrap();
    }
    let fleet = report["fleet"].as_array().unwrap().iter().find(|f| f["service"] == "overall").unwrap();
    assert_eq!(fleet["incidents"].as_u64(), Some(fleet_incidents), "{fleet}");
    let page = std::fs::read_to_string(&html).expect("html");
    assert_eq!(page.matches("<svg").count(), 3, "a timeline per gateway");
    // CSV: every gateway and the fleet.
    let out = berryctl_command()
        .args(["availability", "--broker", &broker.url(false), "--month", &month, "--wait", "2", "--csv"])
        .output()
        .expect("csv");
    let csv = String::from_utf8_lossy(&out.stdout);
    for id in ids.iter().chain(&["fleet"]) {
        assert!(csv.lines().any(|l| l.contains(&format!(",{id},overall,"))), "{id}: {csv}");
    }
    // A bad month, and a month nobody reported.
    let bad = berryctl_command()
        .args(["availability", "--broker", &broker.url(false), "--month", "2026-1", "--wait", "1"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(3));
    let none = berryctl_command()
        .args(["availability", "--broker", &broker.url(false), "--month", "2001-01", "--wait", "1"])
        .output()
        .unwrap();
    assert_eq!(none.status.code(), Some(2), "{}", String::from_utf8_lossy(&none.stderr));
}

#[test]
fn a_silent_packet_forwarder_and_a_field_device_that_does_not_answer_are_incidents() {
    let dir = tempfile::tempdir().expect("tmp");
    let broker = Mosquitto::start(dir.path(), None);
    let state = dir.path().join("s");
    let url = broker.url(false);
    // A GWMP radio that no packet forwarder ever talks to, and a needle dam at an address
    // where nothing listens.
    let radio = format!("[radio]\nkind = \"gwmp\"\n\n[radio.gwmp]\nbind = \"127.0.0.1:{}\"\n", free_port());
    let profiles = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/profiles");
    let sinks = format!(
        "[sinks.chirpstack]\nserver = \"{url}\"\nreconnect_min_ms = 200\nreconnect_max_ms = 1000\n\n\
         [field]\nprofile_dirs = [\"{}\"]\nrequire_clock_sync = false\n\n\
         [[field.device]]\nname = \"barrage-test\"\nprofile = \"needle-dam\"\npoll_interval_ms = 200\ntimeout_ms = 200\n\
         link = {{ transport = \"tcp\", address = \"127.0.0.1:{}\" }}\n\n\
         [ledger]\ncheck_secs = 1\nmin_outage_secs = 2\nheartbeat_secs = 1\nforwarder_silence_secs = 2\n",
        profiles.display(),
        free_port()
    );
    let gw = Berrygw::start(dir.path(), &config_with_radio(&state, "log", &radio, &sinks));
    gw.wait_log(Duration::from_secs(30), "chirpstack sink: connected");
    let socket = state.join("api.sock");
    let report = wait_for(Duration::from_secs(30), "both incidents open", || {
        let r = availability_report(&socket)?;
        (!incidents(&r, "radio").is_empty() && !incidents(&r, "field:barrage-test").is_empty()).then_some(r)
    });
    let radio = &incidents(&report, "radio")[0];
    assert_eq!(
        (radio["cause"].as_str(), radio["end_ms"].as_i64()),
        (Some("forwarder_silent"), None),
        "{radio}"
    );
    let field = &incidents(&report, "field:barrage-test")[0];
    assert_eq!(field["cause"], "not_answering", "{field}");
    // Both count against their service; the field device not against the gateway's overall.
    assert_eq!(figures(&report, "radio")["open"], 1);
    assert_eq!(figures(&report, "field:barrage-test")["open"], 1);
    assert_eq!(figures(&report, "overall")["open"], 1, "the radio's outage is the gateway's");
    // The status page's view and the metrics say the same.
    let status: serde_json::Value = serde_json::from_slice(
        &berrygw_command()
            .args(["status", "--json", "--socket"])
            .arg(&socket)
            .output()
            .expect("status")
            .stdout,
    )
    .expect("status JSON");
    let open = status["availability"]["open"].as_array().expect("open incidents");
    assert!(open.iter().any(|i| i["service"] == "field:barrage-test"), "{status}");
}
