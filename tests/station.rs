//! End to end over LoRa Basics Station's LNS protocol: the real `berrygw` with the sim
//! radio and the `basic_station` sink against an LNS in Python on python3-websockets
//! (`support/station_lns.py`: router-info and muxs written from Semtech's description,
//! someone else's WebSocket). Uplinks arrive with their seq, downlinks go out and come
//! back as `dntxed`, outages lose nothing, bad input from the LNS changes nothing.

mod support;

use std::time::Duration;

use serde_json::json;
use support::station::{StationCups, StationLns};
use support::*;

fn station_sink(lns: &StationLns, extra: &str) -> String {
    format!(
        "[sinks.basic_station]\ntc_uri = \"{}\"\nreconnect_min_ms = 200\nreconnect_max_ms = 1000\n{extra}\n",
        lns.uri()
    )
}

fn sim_radio(devices: &str) -> String {
    format!("[radio]\nkind = \"sim\"\n\n[radio.sim]\nseed = 7\n\n{devices}\n")
}

/// The value of `family{sink="basic_station"}` on the daemon's /metrics (`config`: its text).
fn station_metric(config: &str, family: &str) -> Option<f64> {
    use std::io::{Read, Write};
    let listen = config.lines().find_map(|l| l.strip_prefix("listen = \""))?.trim_end_matches('"');
    let mut s = std::net::TcpStream::connect(listen).ok()?;
    write!(s, "GET /metrics HTTP/1.1\r\nHost: {listen}\r\nConnection: close\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.lines()
        .find(|l| l.starts_with(&format!("{family}{{")) && l.contains("sink=\"basic_station\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Each seq's first arrival, in arrival order.
fn first_arrivals(seqs: &[u64]) -> Vec<u64> {
    let mut seen = std::collections::HashSet::new();
    seqs.iter().copied().filter(|s| seen.insert(*s)).collect()
}

#[test]
fn uplinks_reach_the_lns_and_downlinks_come_back_as_dntxed() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut lns = StationLns::start(dir.path(), &[]);
    let devices = sim_device("sonde-niveau", "river_level", "26011002", 200, None);
    let text =
        config_with_radio(&dir.path().join("state"), "log", &sim_radio(&devices), &station_sink(&lns, ""));
    let _daemon = Berrygw::start(dir.path(), &text);

    let seqs = lns.wait_uplinks(5, Duration::from_secs(20));
    assert_eq!(first_arrivals(&seqs), seqs, "once each, in order");
    let info = lns.entries().into_iter().find(|e| e["path"] == "/router-info" && e.get("msg").is_some());
    assert_eq!(info.expect("router-info asked")["msg"]["router"], "00-16-C0-01-FF-10-A2-35");
    let version = &lns.messages("version")[0];
    assert!(version["station"].as_str().unwrap_or_default().starts_with("berrygw"), "{version}");
    let up = lns.messages("updf").pop().expect("an updf");
    assert_eq!(up["DevAddr"], json!(0x2601_1002), "{up}");
    assert_eq!(up["DR"], json!(5), "SF7/125 kHz is DR5 in the plan: {up}");
    let rxtime = up["upinfo"]["rxtime"].as_f64().expect("rxtime");
    assert!((rxtime - now_ms() as f64 / 1000.0).abs() < 10.0, "{up}");
    assert!(up["RefTime"].as_f64().unwrap_or(0.0) > 1.0e9, "RefTime on the LNS's clock: {up}");
    assert!(!lns.messages("timesync").is_empty(), "records are proven by timesync");
    // Shown like every sink: connected, forwarding.
    assert_eq!(station_metric(&text, "berrygw_sink_connected"), Some(1.0));
    assert!(station_metric(&text, "berrygw_sink_forwarded_total").unwrap_or(0.0) >= 1.0);
    // ... and in `berrygw status`, as JSON and as text.
    let status = |json: bool| status_of(dir.path(), json);
    let v: serde_json::Value = serde_json::from_str(&status(true)).expect("status --json");
    let sink = v["sinks"].as_array().and_then(|s| s.iter().find(|s| s["name"] == "basic_station").cloned());
    let sink = sink.unwrap_or_else(|| panic!("the sink in berrygw status: {v}"));
    assert_eq!(sink["connected"], true, "{sink}");
    assert!(status(false).contains("sink basic_station: connected"), "{}", status(false));

    // Class C: at once, in RX2.
    lns.send(
        &json!({"msgtype": "dnmsg", "DevEui": "00-00-00-00-00-00-00-01", "dC": 2, "diid": 77,
                "pdu": "600210012600010001a1b2c3d4", "RxDelay": 1, "RX2DR": 0, "RX2Freq": 869525000,
                "priority": 0})
        .to_string(),
    );
    let sent = wait_for(Duration::from_secs(10), "dntxed for diid 77", || {
        lns.messages("dntxed").into_iter().find(|m| m["diid"] == 77)
    });
    assert_eq!(sent["DevEui"], "00-00-00-00-00-00-00-01");

    // Class A: RX1 one second after the latest uplink, from its xtime.
    let up = lns.messages("updf").pop().expect("an updf");
    lns.send(
        &json!({"msgtype": "dnmsg", "DevEui": "00-00-00-00-00-00-00-02", "dC": 0, "diid": 78,
                "pdu": "600210012600010001a1b2c3d4", "RxDelay": 1, "RX1DR": 5, "RX1Freq": 868100000,
                "RX2DR": 0, "RX2Freq": 869525000, "xtime": up["upinfo"]["xtime"], "rctx": 0, "priority": 0})
        .to_string(),
    );
    let sent = wait_for(Duration::from_secs(10), "dntxed for diid 78", || {
        lns.messages("dntxed").into_iter().find(|m| m["diid"] == 78)
    });
    assert_eq!(sent["xtime"], up["upinfo"]["xtime"]);
}

#[test]
fn an_lns_outage_under_load_and_a_kill_mid_drain_lose_nothing_and_keep_order() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut lns = StationLns::start(dir.path(), &[]);
    // 50 uplinks/s for 32 s: the radio has heard all 1,600 when the gateway is killed.
    const HEARD: u64 = 1_600;
    let devices = sim_device("compteur-eau", "water_meter", "26011001", 20, Some(HEARD));
    let text =
        config_with_radio(&dir.path().join("state"), "log", &sim_radio(&devices), &station_sink(&lns, ""));
    let started = std::time::Instant::now();
    let mut daemon = Berrygw::start(dir.path(), &text);
    lns.wait_uplinks(50, Duration::from_secs(20));

    // The LNS is gone for 30 s; the gateway keeps hearing 50 uplinks/s. It comes back
    // slow (5 ms per message), so that the drain takes seconds and can be cut.
    lns.stop();
    std::thread::sleep(Duration::from_secs(30));
    lns.set_args(&["--read-delay-ms", "5"]);
    lns.restart();
    // Killed mid-drain (after the radio's last uplink), started again.
    lns.wait_uplinks(lns.uplink_seqs().len() + 200, Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(34).saturating_sub(started.elapsed()));
    let delivered_before_kill = first_arrivals(&lns.uplink_seqs()).len() as u64;
    assert!(delivered_before_kill < HEARD, "killed mid-drain ({delivered_before_kill} of {HEARD} delivered)");
    daemon.kill9();
    daemon.restart();
    // Everything heard before the kill arrives, in order; then what the restarted
    // radio hears (its seqs from the next reserved block).
    let firsts = wait_for(Duration::from_secs(90), "the backlog drained", || {
        let firsts = first_arrivals(&lns.uplink_seqs());
        (firsts.iter().filter(|s| **s <= HEARD).count() as u64 == HEARD && firsts.iter().any(|s| *s > HEARD))
            .then_some(firsts)
    });
    let mut sorted = firsts.clone();
    sorted.sort_unstable();
    assert_eq!(firsts, sorted, "first arrivals in seq order");
    assert_eq!(firsts[..HEARD as usize].to_vec(), (1..=HEARD).collect::<Vec<_>>(), "none lost");
}

#[test]
fn records_sent_on_a_socket_that_dies_before_their_proof_are_sent_again() {
    let dir = tempfile::tempdir().expect("tmp");
    // This LNS reads everything and answers no timesync: nothing is ever proven.
    let mut lns = StationLns::start(dir.path(), &["--mode", "mute"]);
    let devices = sim_device("conteneur-verre", "waste_fill", "26011003", 50, Some(20));
    let text =
        config_with_radio(&dir.path().join("state"), "log", &sim_radio(&devices), &station_sink(&lns, ""));
    let _daemon = Berrygw::start(dir.path(), &text);
    let seqs = lns.wait_uplinks(20, Duration::from_secs(20));
    assert_eq!(first_arrivals(&seqs), (1..=20).collect::<Vec<_>>());
    lns.stop();
    lns.set_args(&[]);
    lns.restart();
    let seqs = wait_for(Duration::from_secs(30), "the 20 uplinks sent again", || {
        let seqs = lns.uplink_seqs();
        (seqs.len() >= 40).then_some(seqs)
    });
    assert_eq!(seqs[20..40].to_vec(), (1..=20).collect::<Vec<_>>(), "sent again, in order");
}

#[test]
fn bad_input_from_the_lns_is_refused_with_why_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut lns = StationLns::start(dir.path(), &[]);
    let devices = sim_device("armoire-ep", "lighting_cabinet", "26011004", 100, None);
    let text =
        config_with_radio(&dir.path().join("state"), "log", &sim_radio(&devices), &station_sink(&lns, ""));
    let daemon = Berrygw::start(dir.path(), &text);
    lns.wait_uplinks(3, Duration::from_secs(20));
    for bad in [
        "this is not json".to_string(),
        json!({"msgtype": "launch_missiles"}).to_string(),
        json!({"msgtype": "runcmd", "command": "rm", "arguments": ["-rf", "/"]}).to_string(),
        json!({"msgtype": "rmtsh", "user": "root"}).to_string(),
        json!({"msgtype": "router_config", "region": "US915"}).to_string(),
        // 915 MHz is not in EU868.
        json!({"msgtype": "dnmsg", "DevEui": "00-00-00-00-00-00-00-03", "dC": 2, "diid": 90,
               "pdu": "600210012600010001a1b2c3d4", "RX2DR": 0, "RX2Freq": 915000000})
        .to_string(),
        // DR12 is not in the plan.
        json!({"msgtype": "dnmsg", "DevEui": "00-00-00-00-00-00-00-03", "dC": 2, "diid": 91,
               "pdu": "600210012600010001a1b2c3d4", "RX2DR": 12, "RX2Freq": 869525000})
        .to_string(),
        // Station's protocol is text; a binary message is refused.
        "BINARY:\u{1}\u{2}\u{3}".to_string(),
    ] {
        lns.send(&bad);
    }
    daemon.wait_log(Duration::from_secs(10), "launch_missiles");
    daemon.wait_log(Duration::from_secs(10), "Runcmd; refused");
    daemon.wait_log(Duration::from_secs(10), "915000000");
    daemon.wait_log(Duration::from_secs(10), "a binary message from the LNS refused");
    // Still connected on the same socket (one connection to the muxs), still sending.
    let before = lns.uplink_seqs().len();
    lns.wait_uplinks(before + 10, Duration::from_secs(20));
    let connects =
        lns.entries().into_iter().filter(|e| e["event"] == "connect" && e["path"] != "/router-info").count();
    assert_eq!(connects, 1, "the bad messages did not cost the connection");
    assert!(lns.messages("dntxed").is_empty(), "nothing refused was transmitted");
    // Each of the eight counted.
    assert_eq!(station_metric(&text, "berrygw_sink_bad_commands_total"), Some(8.0));
    // A good downlink after them still goes out.
    lns.send(
        &json!({"msgtype": "dnmsg", "DevEui": "00-00-00-00-00-00-00-03", "dC": 2, "diid": 92,
                "pdu": "600210012600010001a1b2c3d4", "RX2DR": 0, "RX2Freq": 869525000})
        .to_string(),
    );
    wait_for(Duration::from_secs(10), "dntxed for diid 92", || {
        lns.messages("dntxed").into_iter().find(|m| m["diid"] == 92)
    });
}

#[test]
fn wss_with_a_client_certificate_and_stations_file_layout_with_a_token() {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = Certs::generate(dir.path(), "lns");
    let (crt, key) = certs.client("0016c001ff10a235");
    let (server_crt, server_key) = (certs.server_cert.to_str().unwrap(), certs.server_key.to_str().unwrap());
    let lns = StationLns::start(
        dir.path(),
        &["--tls", server_crt, server_key, "--client-ca", certs.ca.to_str().unwrap()],
    );
    let extra = format!("tc_trust = {:?}\ntc_crt = {crt:?}\ntc_key = {key:?}", certs.ca);
    let devices = sim_device("sonde-niveau", "river_level", "26011002", 100, None);
    let text = config_with_radio(
        &dir.path().join("state"),
        "log",
        &sim_radio(&devices),
        &station_sink(&lns, &extra),
    );
    let mut daemon = Berrygw::start(dir.path(), &text);
    lns.wait_uplinks(3, Duration::from_secs(20));
    daemon.stop();

    // Station's own layout: tc.uri, tc.trust, and a tc.key holding a token header.
    let station = dir.path().join("station");
    std::fs::create_dir_all(&station).unwrap();
    std::fs::write(station.join("tc.uri"), format!("{}\n", lns.uri())).unwrap();
    std::fs::copy(&certs.ca, station.join("tc.trust")).unwrap();
    std::fs::write(station.join("tc.key"), "Authorization: Bearer NNSXS.TESTTOKEN\r\n").unwrap();
    // A secret: refused if others may read it.
    std::fs::set_permissions(station.join("tc.key"), std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .unwrap();
    let plain = StationLns::start(dir.path(), &[]);
    std::fs::write(station.join("tc.uri"), format!("{}\n", plain.uri())).unwrap();
    let sink = format!("[sinks.basic_station]\nstation_dir = {station:?}\nreconnect_min_ms = 200\n");
    let text = config_with_radio(&dir.path().join("state2"), "log", &sim_radio(&devices), &sink);
    let _daemon = Berrygw::start(dir.path(), &text);
    plain.wait_uplinks(3, Duration::from_secs(20));
    let connect = plain.entries().into_iter().find(|e| e["event"] == "connect").expect("a connection");
    // python3-websockets gives the header names in lower case.
    assert_eq!(connect["headers"]["authorization"], "Bearer NNSXS.TESTTOKEN", "{connect}");
}

/// The value of a counter on /metrics for the sink (0 when absent).
fn bad_commands(config: &str) -> f64 {
    station_metric(config, "berrygw_sink_bad_commands_total").unwrap_or(0.0)
}

/// CUPS against the Python CUPS server (`support/station_cups.py`, aiohttp, signatures by
/// python3-cryptography): the LNS set comes from CUPS over https with a token; a signed
/// update is kept and a tampered or foreign one refused; CUPS's own token is rotated; an
/// LNS set that does not work is dropped for the one in use; one that works is kept and
/// is what the gateway reports after a restart.
#[test]
fn cups_hands_over_the_lns_rotates_credentials_and_keeps_only_signed_updates() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let certs = Certs::generate(d, "pki");
    let (server_crt, server_key) = (certs.server_cert.as_path(), certs.server_key.as_path());
    let lns_b = StationLns::start(
        d,
        &[
            "--tls",
            server_crt.to_str().unwrap(),
            server_key.to_str().unwrap(),
            "--require",
            "Authorization: Bearer LNS-B",
        ],
    );
    let lns_c = StationLns::start(d, &["--require", "Authorization: Bearer LNS-C"]);
    let station = d.join("station");
    std::fs::create_dir_all(&station).unwrap();
    StationCups::make_sig_key(&d.join("sig-0.pem"), &station.join("sig-0.key"));
    StationCups::make_sig_key(&d.join("foreign.pem"), &d.join("foreign.key"));
    let update_v2 = d.join("v2.bin");
    std::fs::write(&update_v2, b"berrygw 9.9.9 package, as CUPS would hand it over".repeat(100)).unwrap();
    let ca = certs.ca.to_str().unwrap();
    let tc_b = json!({"uri": lns_b.uri(), "trust": ca, "token": "Authorization: Bearer LNS-B"});
    let state = |tc: &serde_json::Value,
                 cups: serde_json::Value,
                 require: serde_json::Value,
                 update: serde_json::Value| {
        json!({"require": require, "tc": tc, "cups": cups, "update": update})
    };
    let signed = json!({"file": update_v2, "version": "9.9.9", "sign_with": d.join("sig-0.pem")});
    let cups = StationCups::start(
        d,
        Some((server_crt, server_key)),
        &state(&tc_b, json!(null), json!("Authorization: Bearer CUPS-1"), signed),
    );
    std::fs::write(station.join("cups.uri"), format!("{}\n", cups.uri())).unwrap();
    std::fs::copy(&certs.ca, station.join("cups.trust")).unwrap();
    std::fs::write(station.join("cups.key"), "Authorization: Bearer CUPS-1\n").unwrap();
    std::fs::set_permissions(station.join("cups.key"), std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .unwrap();
    let sink = format!(
        "[sinks.basic_station]\nstation_dir = {station:?}\ncups_interval_s = 2\nreconnect_min_ms = 200\n\
         reconnect_max_ms = 1000\n"
    );
    let devices = sim_device("sonde-niveau", "river_level", "26011002", 200, None);
    let state_dir = d.join("state");
    let text = config_with_radio(&state_dir, "log", &sim_radio(&devices), &sink);
    let mut daemon = Berrygw::start(d, &text);

    // The LNS set from CUPS (wss, a trust in DER, a token) works; the signed update is kept.
    lns_b.wait_uplinks(3, Duration::from_secs(30));
    let first = cups.requests().into_iter().next().expect("CUPS asked");
    assert_eq!(first["req"]["router"], "00-16-C0-01-FF-10-A2-35", "{first}");
    assert_eq!(first["req"]["tcCredCrc"], 0, "no LNS set yet: {first}");
    assert_eq!(first["req"]["keys"].as_array().map(Vec::len), Some(1), "{first}");
    assert_eq!(first["headers"]["Authorization"], "Bearer CUPS-1", "{first}");
    let kept = state_dir.join("basic_station");
    wait_for(Duration::from_secs(10), "the LNS set kept", || kept.join("tc.set").exists().then_some(()));
    assert_eq!(std::fs::read(kept.join("update.bin")).unwrap(), std::fs::read(&update_v2).unwrap());
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(kept.join("update.json")).unwrap()).unwrap();
    assert!(meta["signing_key"].as_str().unwrap().ends_with("sig-0.key"), "{meta}");
    let refused_before = bad_commands(&text);

    // Updates that do not verify are refused and counted; the kept one stays.
    let update_v3 = d.join("v3.bin");
    std::fs::write(&update_v3, b"another package").unwrap();
    for bad in [
        json!({"file": update_v3, "version": "9.9.10", "sign_with": d.join("sig-0.pem"), "tamper": true}),
        json!({"file": update_v3, "version": "9.9.10", "sign_with": d.join("foreign.pem")}),
        json!({"file": update_v3, "version": "9.9.10"}),
    ] {
        let asked = cups.requests().len();
        cups.set(&state(&tc_b, json!(null), json!("Authorization: Bearer CUPS-1"), bad.clone()));
        wait_for(Duration::from_secs(15), "CUPS asked twice more", || {
            (cups.requests().len() >= asked + 2).then_some(())
        });
    }
    wait_for(Duration::from_secs(10), "3 updates refused", || {
        (bad_commands(&text) >= refused_before + 3.0).then_some(())
    });
    assert_eq!(std::fs::read(kept.join("update.bin")).unwrap(), std::fs::read(&update_v2).unwrap());

    // CUPS's own token rotated: tried at once, kept, used from then on.
    cups.set(&state(
        &tc_b,
        json!({"uri": cups.uri(), "trust": ca, "token": "Authorization: Bearer CUPS-2"}),
        json!(["Authorization: Bearer CUPS-1", "Authorization: Bearer CUPS-2"]),
        json!(null),
    ));
    wait_for(Duration::from_secs(15), "the CUPS set kept", || kept.join("cups.set").exists().then_some(()));
    cups.set(&state(&tc_b, json!(null), json!("Authorization: Bearer CUPS-2"), json!(null)));
    let asked = cups.requests().len();
    let later = wait_for(Duration::from_secs(15), "a request on the new token", || {
        cups.requests().get(asked).cloned()
    });
    assert_eq!(later["headers"]["Authorization"], "Bearer CUPS-2", "{later}");
    assert!(later.get("refused").is_none(), "{later}");

    // An LNS set that does not work (a wrong token) is tried, dropped, and the set in use
    // goes on: uplinks still reach B, tc.set still names B.
    let cups_2 = json!("Authorization: Bearer CUPS-2");
    let wrong = json!({"uri": lns_c.uri(), "token": "Authorization: Bearer WRONG"});
    let tc_set_b = std::fs::read(kept.join("tc.set")).unwrap();
    cups.set(&state(&wrong, json!(null), cups_2.clone(), json!(null)));
    wait_for(Duration::from_secs(15), "C refusing the wrong token", || {
        lns_c.entries().into_iter().find(|e| e["event"] == "refused")
    });
    let at_b = lns_b.uplink_seqs().len();
    lns_b.wait_uplinks(at_b + 3, Duration::from_secs(20));
    assert_eq!(std::fs::read(kept.join("tc.set")).unwrap(), tc_set_b, "the set in use is kept");

    // A set that works is kept: C from now on, and after a restart too.
    let tc_c = json!({"uri": lns_c.uri(), "token": "Authorization: Bearer LNS-C"});
    cups.set(&state(&tc_c, json!(null), cups_2.clone(), json!(null)));
    lns_c.wait_uplinks(3, Duration::from_secs(30));
    wait_for(Duration::from_secs(10), "tc.set naming C", || {
        (std::fs::read(kept.join("tc.set")).unwrap() != tc_set_b).then_some(())
    });
    daemon.stop();
    let asked = cups.requests().len();
    let mut daemon = Berrygw::start(d, &text);
    let after = wait_for(Duration::from_secs(15), "CUPS asked after the restart", || {
        cups.requests().get(asked).cloned()
    });
    assert_eq!(after["req"]["tcUri"], lns_c.uri(), "{after}");
    assert_ne!(after["req"]["tcCredCrc"], 0, "{after}");
    assert!(after["sent"].as_array().unwrap().is_empty(), "nothing new to hand over: {after}");
    let at_c = lns_c.uplink_seqs().len();
    lns_c.wait_uplinks(at_c + 3, Duration::from_secs(20));
    daemon.stop();
}

/// router-info is the LNS's word on where traffic goes, and it may be wrong or hostile:
/// a `ws://` muxs on another host (uplinks and token in clear) and a `ws://` muxs from a
/// `wss://` router-info (TLS dropped) are refused with why, and nothing connects there.
#[test]
fn a_router_info_that_would_send_traffic_in_clear_is_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = Certs::generate(dir.path(), "lns");
    let devices = sim_device("sonde-niveau", "river_level", "26011002", 200, None);
    let plain = StationLns::start(dir.path(), &[]);
    let cases = [
        (
            StationLns::start(dir.path(), &["--muxs-uri", "ws://lns.example.org:6090/traffic/x"]),
            "is ws:// to another host; refused without allow_plaintext",
        ),
        (
            StationLns::start(
                dir.path(),
                &[
                    "--tls",
                    certs.server_cert.to_str().unwrap(),
                    certs.server_key.to_str().unwrap(),
                    "--muxs-uri",
                    &format!("{}/traffic/x", plain.uri()),
                ],
            ),
            "would drop the TLS of",
        ),
    ];
    for (i, (lns, why)) in cases.iter().enumerate() {
        let extra = format!("tc_trust = {:?}", certs.ca);
        let text = config_with_radio(
            &dir.path().join(format!("state{i}")),
            "log",
            &sim_radio(&devices),
            &station_sink(lns, &extra),
        );
        let mut daemon = Berrygw::start(dir.path(), &text);
        daemon.wait_log(Duration::from_secs(15), why);
        assert_eq!(station_metric(&text, "berrygw_sink_connected"), Some(0.0));
        daemon.stop();
    }
    assert!(
        plain.entries().is_empty(),
        "nothing connected to the muxs router-info named: {:?}",
        plain.entries()
    );
}

/// An LNS whose channel plan is not the radio's: refused with the difference (devices would
/// be sent where the radio does not listen), nothing forwarded, the uplinks kept; with the
/// radio set to the LNS's plan, the same LNS is used and the kept uplinks arrive.
#[test]
fn an_lns_channel_plan_that_is_not_the_radios_is_refused_with_the_difference() {
    let dir = tempfile::tempdir().expect("tmp");
    let six = "868100000,868300000,868500000,868850000,869050000,869525000";
    let lns = StationLns::start(dir.path(), &["--upchannels", six]);
    let devices = sim_device("sonde-niveau", "river_level", "26011002", 200, None);
    let state = dir.path().join("state");
    // The sim radio's default plan: ChirpStack's eight EU868 channels.
    let text = config_with_radio(&state, "log", &sim_radio(&devices), &station_sink(&lns, ""));
    let mut daemon = Berrygw::start(dir.path(), &text);
    let line = daemon.wait_log(Duration::from_secs(15), "uplink channels are not the radio's");
    assert!(line.contains("868.850, 869.050, 869.525 MHz, which the radio does not listen on"), "{line}");
    assert!(line.contains("[radio.sim] frequencies"), "{line}");
    std::thread::sleep(Duration::from_secs(2));
    assert!(lns.uplink_seqs().is_empty(), "nothing forwarded on a plan that differs");
    assert_eq!(station_metric(&text, "berrygw_sink_connected"), Some(0.0));
    daemon.stop();

    let radio =
        format!("[radio]\nkind = \"sim\"\n\n[radio.sim]\nseed = 7\nfrequencies = [{six}]\n\n{devices}\n");
    let text = config_with_radio(&state, "log", &radio, &station_sink(&lns, ""));
    let restarted_s = now_ms() as f64 / 1000.0;
    let _daemon = Berrygw::start(dir.path(), &text);
    let seqs = lns.wait_uplinks(5, Duration::from_secs(30));
    assert!(seqs[0] <= 1, "the uplinks kept while refused arrive first: {seqs:?}");
    // Those were heard on the old plan; the ones heard since, on the LNS's.
    let recent = wait_for(Duration::from_secs(30), "5 uplinks heard after the restart", || {
        let freqs: Vec<u64> = lns
            .messages("updf")
            .iter()
            .filter(|m| m["upinfo"]["rxtime"].as_f64().unwrap_or(0.0) > restarted_s)
            .filter_map(|m| m["Freq"].as_u64())
            .collect();
        (freqs.len() >= 5).then_some(freqs)
    });
    assert!(recent.iter().all(|f| six.contains(&f.to_string())), "{recent:?}");
}

/// What a CUPS server (or anyone on an http:// path to it) may send wrong: an LNS set or a
/// CUPS set whose credentials do not parse, an answer that is not CUPS's segments, a
/// refusal (401); and a kept set damaged on disk. Each is refused with why (the sets
/// counted), and the LNS set in use goes on.
#[test]
fn what_cups_sends_wrong_is_refused_and_the_lns_in_use_goes_on() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let lns = StationLns::start(d, &[]);
    let good = json!({"tc": {"uri": lns.uri(), "token": "Authorization: Bearer A"}});
    let cups = StationCups::start(d, None, &good);
    let station = d.join("station");
    std::fs::create_dir_all(&station).unwrap();
    std::fs::write(station.join("cups.uri"), format!("{}\n", cups.uri())).unwrap();
    let sink = format!(
        "[sinks.basic_station]\nstation_dir = {station:?}\ncups_interval_s = 1\nreconnect_min_ms = 200\n\
         reconnect_max_ms = 1000\n"
    );
    let devices = sim_device("sonde-niveau", "river_level", "26011002", 200, None);
    let state_dir = d.join("state");
    let text = config_with_radio(&state_dir, "log", &sim_radio(&devices), &sink);
    let mut daemon = Berrygw::start(d, &text);
    lns.wait_uplinks(3, Duration::from_secs(30));
    let tc_set = state_dir.join("basic_station").join("tc.set");
    wait_for(Duration::from_secs(10), "the LNS set kept", || tc_set.exists().then_some(()));

    let goes_on = |daemon: &Berrygw, needle: &str| {
        daemon.wait_log(Duration::from_secs(15), needle);
        let at = lns.uplink_seqs().len();
        lns.wait_uplinks(at + 3, Duration::from_secs(20));
    };
    // An LNS set whose credentials are four bytes of nothing in particular.
    cups.set(&json!({"tc": {"uri": lns.uri(), "raw": "deadbeef"}}));
    goes_on(&daemon, "CUPS handed over an unusable LNS set; refused");
    // A CUPS set likewise.
    cups.set(&json!({"tc": good["tc"], "cups": {"uri": cups.uri(), "raw": "3005"}}));
    goes_on(&daemon, "CUPS handed over an unusable CUPS set; refused");
    assert!(station_metric(&text, "berrygw_sink_bad_commands_total").unwrap_or(0.0) >= 2.0);
    // Not CUPS's segments at all; then a refusal.
    cups.set(&json!({"garbage": "05"}));
    goes_on(&daemon, "update-info: the answer is cut short");
    cups.set(&json!({"require": "Authorization: Bearer nobody-has-this"}));
    goes_on(&daemon, "update-info refused: HTTP/1.1 401");
    daemon.stop();

    // The kept set damaged on disk: said, and CUPS is asked for one again.
    std::fs::write(&tc_set, [9u8, 9, 9]).unwrap();
    cups.set(&good);
    let daemon = Berrygw::start(d, &text);
    daemon.wait_log(Duration::from_secs(15), "the configured set is used");
    let at = lns.uplink_seqs().len();
    lns.wait_uplinks(at + 3, Duration::from_secs(30));
}

/// `berrygw status` of the daemon whose configuration is in `dir`: JSON, or text.
fn status_of(dir: &std::path::Path, json: bool) -> String {
    let mut c = berrygw_command();
    c.arg("status");
    if json {
        c.arg("--json");
    }
    let out = c.arg("--config").arg(dir.join("berrygw.toml")).output().expect("berrygw status");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The concentrator in `berrygw status --json`, once it shows `ok`.
#[cfg(feature = "hal-double")]
fn concentrator_when(
    dir: &std::path::Path,
    what: &str,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    wait_for(Duration::from_secs(30), what, || {
        let v: serde_json::Value = serde_json::from_str(&status_of(dir, true)).ok()?;
        ok(&v).then(|| v["radio"]["concentrator"].clone())
    })
}

/// With an SX1302 (Semtech's HAL replaced by berrygw's C double: this test needs a
/// berrygw built with `--features hal-double`, as scripts/test runs it), the LNS's
/// `router_config` sets the concentrator's channels, as Station does; the plan is kept
/// and a restart during an outage starts on it; a plan the SX1302 cannot take is refused
/// with why and the concentrator stays on the one it had.
#[cfg(feature = "hal-double")]
#[test]
fn the_concentrator_takes_the_lns_channel_plan_and_keeps_it_across_a_restart() {
    let dir = tempfile::tempdir().expect("tmp");
    let six = [868_100_000u32, 868_300_000, 868_500_000, 868_850_000, 869_050_000, 869_525_000];
    let six_text = six.map(|f| f.to_string()).join(",");
    let lns = StationLns::start(dir.path(), &["--upchannels", &six_text]);
    let state = dir.path().join("state");
    let radio = "[radio]\nkind = \"sx1302\"\n\n[radio.sx1302]\nboard = \"rak2287\"\n\n[radio.sx1302.gpio]\nreset = \"none\"\n";
    let text = config_with_radio(&state, "log", radio, &station_sink(&lns, ""));
    let mut daemon = Berrygw::start(dir.path(), &text);
    let c = concentrator_when(dir.path(), "the LNS's plan on the concentrator, the sink connected", |v| {
        v["radio"]["concentrator"]["channels_hz"] == json!(six)
            && v["sinks"].as_array().is_some_and(|s| s.iter().any(|s| s["connected"] == true))
    });
    assert_eq!(c["plan_from"], "the Basics Station LNS's router_config", "{c}");
    assert_eq!(c["running"], true, "{c}");
    daemon.wait_log(Duration::from_secs(5), "now listens on the LNS's channel plan");
    let text_status = status_of(dir.path(), false);
    assert!(
        text_status.contains(
            "channels 868.100, 868.300, 868.500, 868.850, 869.050, 869.525 MHz, from the Basics Station LNS's router_config"
        ),
        "{text_status}"
    );
    let kept: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("basic_station/plan.json")).expect("plan.json"))
            .expect("plan.json is JSON");
    assert_eq!(kept["multi_sf"], json!(six), "{kept}");
    daemon.stop();

    // Restarted while the LNS is unreachable: on the kept plan from the start.
    drop(lns);
    let mut daemon = Berrygw::start(dir.path(), &text);
    let c = concentrator_when(dir.path(), "the kept plan", |v| v["radio"]["concentrator"]["running"] == true);
    assert_eq!(c["channels_hz"], json!(six), "{c}");
    assert!(c["plan_from"].as_str().unwrap_or_default().contains("kept from before a restart"), "{c}");
    daemon.stop();

    // A kept plan this board cannot run (nine channels): said, and the configuration's used.
    let plan_file = state.join("basic_station/plan.json");
    let kept_text = std::fs::read(&plan_file).expect("plan.json");
    let nine: Vec<u32> = (0..9).map(|i| 867_100_000 + i * 100_000).collect();
    std::fs::write(&plan_file, json!({"multi_sf": nine, "lora_service": null, "fsk": null}).to_string())
        .expect("write plan.json");
    let mut daemon = Berrygw::start(dir.path(), &text);
    daemon.wait_log(Duration::from_secs(10), "the kept LNS channel plan does not fit [radio.sx1302]");
    let c = concentrator_when(dir.path(), "the configuration's plan", |v| {
        v["radio"]["concentrator"]["running"] == true
    });
    assert_eq!(c["plan_from"], json!(null), "{c}");
    daemon.stop();
    std::fs::write(&plan_file, kept_text).expect("restore plan.json");

    // An LNS whose plan no SX1302 can hear (863.1 to 869.9 MHz): refused with why, the
    // concentrator still on the plan it had, the sink not connected.
    let wide = StationLns::start(dir.path(), &["--upchannels", "863100000,866100000,869900000"]);
    let text = config_with_radio(&state, "log", radio, &station_sink(&wide, ""));
    let daemon = Berrygw::start(dir.path(), &text);
    let line = daemon.wait_log(Duration::from_secs(20), "cannot take the LNS's channel plan");
    assert!(line.contains("the plan spans 863.038–869.96"), "{line}");
    let v: serde_json::Value = serde_json::from_str(&status_of(dir.path(), true)).expect("status --json");
    assert_eq!(v["radio"]["concentrator"]["channels_hz"], json!(six), "{v}");
    assert!(v["sinks"].as_array().is_some_and(|s| s.iter().all(|s| s["connected"] == false)), "{v}");
}
