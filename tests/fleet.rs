//! End to end: the fleet side of a gateway (issue 14) with the real `berrygw` binary
//! and a real mosquitto: its identity key announced (retained) on the app broker, the
//! same key `berrygw identity show` prints.

mod support;

use std::time::Duration;

use berrygw_proto::identity::Announcement;
use support::*;

const GW: &str = "0016c001ff10a235";

#[test]
fn a_gateway_announces_the_identity_key_it_was_installed_with() {
    let dir = tempfile::tempdir().expect("tmp");
    let state = dir.path().join("s");
    // As the package's postinst does, before the first start.
    let init = berrygw_command()
        .args(["identity", "init", "--state-dir"])
        .arg(&state)
        .output()
        .expect("berrygw identity init");
    assert!(init.status.success(), "{init:?}");
    let installed = String::from_utf8(init.stdout).expect("utf-8").trim().to_string();

    let broker = Mosquitto::start(dir.path(), None);
    let url = broker.url(false);
    let sinks = format!(
        "[sinks.chirpstack]\nserver = \"{url}\"\nreconnect_min_ms = 200\nreconnect_max_ms = 1000\n\n\
         [sinks.app]\nserver = \"{url}\"\nreconnect_min_ms = 200\nreconnect_max_ms = 1000\n"
    );
    let radio = "[radio]\nkind = \"sim\"\n\n[radio.sim]\ndevices = []\n";
    let config = config_with_radio(&state, "log", radio, &sinks);
    let mut gw = Berrygw::start(dir.path(), &config);
    gw.wait_log(Duration::from_secs(60), "app sink: connected");

    // A subscriber that comes later still gets it: it is retained. ("app sink: connected" is
    // logged before the announcement is out: a subscriber that comes first gets the live
    // copy, not flagged retained, so each try subscribes afresh until the retained one.)
    let seen = wait_for(Duration::from_secs(30), "the retained identity announcement", || {
        let sub = Subscriber::connect(broker.port, &format!("berrygw/{GW}/identity"), None);
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while std::time::Instant::now() < deadline {
            if let Some(retained) = sub.seen().into_iter().find(|s| s.retain) {
                return Some(retained);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    });
    assert!(seen.retain, "retained, so the centre learns it whenever it subscribes");
    let (announcement, key) = Announcement::parse(&seen.payload).expect("a well-formed announcement");
    assert_eq!(announcement.gateway_id, GW);
    assert_eq!(key.to_string(), installed, "the key made at install, not another");

    let show = berrygw_command()
        .args(["identity", "show", "--json", "--config"])
        .arg(&gw.config)
        .output()
        .expect("berrygw identity show");
    assert!(show.status.success(), "{show:?}");
    let shown = Announcement::parse(&show.stdout).expect("show --json prints the announcement");
    assert_eq!(shown.0, announcement, "`identity show --json` prints what is announced");

    // A restart keeps the key.
    gw.stop();
    gw.restart();
    gw.wait_log(Duration::from_secs(60), "app sink: connected");
    let show =
        berrygw_command().args(["identity", "show", "--config"]).arg(&gw.config).output().expect("show");
    assert_eq!(String::from_utf8_lossy(&show.stdout).trim(), installed);
}

/// Three gateways on one broker: `berryctl fleet` lists them from their retained state
/// and health records; one killed (its last will says offline) shows as offline and
/// makes the exit code 1.
#[test]
fn berryctl_fleet_shows_every_gateway_and_one_killed_as_offline() {
    let dir = tempfile::tempdir().expect("tmp");
    let broker = Mosquitto::start(dir.path(), None);
    let url = broker.url(false);
    let ids = ["0016c001ff10a001", "0016c001ff10a002", "0016c001ff10a003"];
    let mut gateways: Vec<Berrygw> = ids
        .iter()
        .map(|id| {
            let gw_dir = dir.path().join(id);
            std::fs::create_dir_all(&gw_dir).expect("dir");
            let sinks = format!(
                "[sinks.chirpstack]\nserver = \"{url}\"\nreconnect_min_ms = 200\nreconnect_max_ms = 1000\n\n\
                 [sinks.app]\nserver = \"{url}\"\nreconnect_min_ms = 200\nreconnect_max_ms = 1000\n"
            );
            let radio = "[radio]\nkind = \"sim\"\n\n[radio.sim]\ndevices = []\n";
            let config = config_with_radio(&gw_dir.join("s"), "log", radio, &sinks).replace(GW, id);
            Berrygw::start(&gw_dir, &config)
        })
        .collect();
    // Junk that anyone able to publish could leave retained: ignored, nothing else lost.
    {
        let (client, mut conn) =
            rumqttc::Client::new(rumqttc::MqttOptions::new("test-junk", "127.0.0.1", broker.port), 10);
        for (topic, payload) in [
            ("berrygw/0016c001ff10aaaa/health", &b"not json"[..]),
            ("berrygw/0016c001ff10aaab/health", br#"{"gateway_id": 1}"#),
            ("berrygw/0016c001ff10aaac/state", b"\xff\xfe"),
            ("berrygw/deep/er/health", b"{}"),
        ] {
            client.publish(topic, rumqttc::QoS::AtLeastOnce, true, payload.to_vec()).expect("publish");
        }
        let mut acked = 0;
        for event in conn.iter() {
            if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) = event {
                acked += 1;
                if acked == 4 {
                    break;
                }
            }
        }
    }
    let fleet = || {
        let out = berryctl_command()
            .args(["fleet", "--json", "--wait", "2", "--broker", &url])
            .output()
            .expect("berryctl fleet");
        let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        (out.status.code(), rows)
    };
    let (code, rows) = wait_for(Duration::from_secs(60), "three gateways online and healthy", || {
        let (code, rows) = fleet();
        let healthy = |r: &serde_json::Value| r["status"] == "online" && r["health"]["healthy"] == true;
        (rows.len() == 3 && rows.iter().all(healthy)).then_some((code, rows))
    });
    assert_eq!(code, Some(0), "{rows:?}");
    for (row, id) in rows.iter().zip(ids) {
        assert_eq!(row["gateway_id"], id);
        let h = &row["health"];
        assert_eq!(h["gateway_id"], id);
        assert_eq!(h["healthy"], true, "{h}");
        assert!(h["sinks"].as_array().is_some_and(|s| s.len() == 2), "{h}");
        assert!(h["disk_free_bytes"].as_u64().is_some_and(|b| b > 0), "{h}");
    }

    // The exporter serves the same, as metrics, checked against each gateway's own.
    let exporter_port = free_port();
    let exporter = KillOnDrop(
        berryctl_command()
            .args(["exporter", "--broker", &url, "--listen", &format!("127.0.0.1:{exporter_port}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("berryctl exporter"),
    );
    let scrape = |port: u16| http_get(port, "/metrics");
    let fleet_metrics = wait_for(Duration::from_secs(30), "the exporter's three gateways", || {
        scrape(exporter_port).filter(|m| {
            m.contains("berrygw_fleet_gateways 3") && m.matches("berrygw_fleet_healthy{").count() == 3
        })
    });
    assert_eq!(http_get(exporter_port, "/"), None, "only /metrics is served");
    for (gw, id) in gateways.iter().zip(ids) {
        let text = std::fs::read_to_string(&gw.config).expect("config");
        let port: u16 = text
            .lines()
            .find_map(|l| l.strip_prefix("listen = \"127.0.0.1:"))
            .and_then(|p| p.trim_end_matches('"').parse().ok())
            .expect("the gateway's http port");
        let own = scrape(port).expect("the gateway's /metrics");
        for sink in ["chirpstack", "app"] {
            let theirs = value(&own, &format!("berrygw_sink_connected{{sink=\"{sink}\"}}"));
            let ours = value(
                &fleet_metrics,
                &format!("berrygw_fleet_sink_connected{{gateway=\"{id}\",sink=\"{sink}\"}}"),
            );
            assert_eq!((theirs, ours), (Some(1.0), Some(1.0)), "{id} {sink}");
            let theirs = value(&own, &format!("berrygw_journal_records{{sink=\"{sink}\"}}"));
            let ours = value(
                &fleet_metrics,
                &format!("berrygw_fleet_sink_backlog_records{{gateway=\"{id}\",sink=\"{sink}\"}}"),
            );
            assert_eq!(theirs, ours, "{id} {sink} backlog");
        }
        assert_eq!(
            value(&fleet_metrics, &format!("berrygw_fleet_gateway_up{{gateway=\"{id}\"}}")),
            Some(1.0)
        );
    }

    // The fleet dashboard shipped for Grafana asks only for families the exporter serves.
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/grafana-fleet-dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("fleet dashboard")).expect("JSON");
    let mut used = std::collections::BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let mut rest = target["expr"].as_str().expect("expr");
            while let Some(i) = rest.find("berrygw_") {
                let name: String =
                    rest[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                rest = &rest[i + name.len()..];
                used.insert(name);
            }
        }
    }
    assert!(used.len() >= 12, "the dashboard covers the families: {used:?}");
    for name in used {
        assert!(
            fleet_metrics.contains(&format!("# TYPE {name} ")),
            "the dashboard uses {name}, not exported"
        );
    }

    gateways[1].kill9();
    let (code, rows) = wait_for(Duration::from_secs(60), "the killed gateway offline", || {
        let (code, rows) = fleet();
        rows.iter().any(|r| r["gateway_id"] == ids[1] && r["status"] == "offline").then_some((code, rows))
    });
    assert_eq!(code, Some(1), "one gateway is offline: {rows:?}");
    let others: Vec<&serde_json::Value> = rows.iter().filter(|r| r["gateway_id"] != ids[1]).collect();
    assert!(others.iter().all(|r| r["status"] == "online"), "{rows:?}");
    wait_for(Duration::from_secs(30), "the exporter sees it down", || {
        scrape(exporter_port)
            .filter(|m| value(m, &format!("berrygw_fleet_gateway_up{{gateway=\"{}\"}}", ids[1])) == Some(0.0))
    });
    drop(exporter);
    // Its last record is still there: when it was last seen, and what it said then.
    let killed = rows.iter().find(|r| r["gateway_id"] == ids[1]).expect("row");
    assert!(killed["health"]["uptime_secs"].is_u64(), "{killed}");

    // The table for people names all three.
    let out = berryctl_command().args(["fleet", "--broker", &url]).output().expect("berryctl fleet");
    let text = String::from_utf8_lossy(&out.stdout);
    for id in ids {
        assert!(text.contains(id), "{text}");
    }
    assert!(text.contains("offline"), "{text}");
    drop(gateways);
}

/// The body of `GET path` on a loopback HTTP port.
fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

/// The value of the sample `name{labels}` in a Prometheus text.
fn value(text: &str, sample: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(sample).and_then(|v| v.trim().parse().ok()))
}

/// A child process killed (and reaped) when the test ends, even by a failed assertion.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The broker as a network would run it: TLS, a certificate per client, and an ACL that
/// lets each gateway write only its own topics and the centre only commands. berryctl
/// reaches it with its own certificate; a client that is not the gateway cannot replace
/// the gateway's retained identity or health (the broker drops it), so the centre reads
/// the gateway's own.
#[test]
fn over_tls_with_per_client_acls_the_centre_reads_what_the_gateway_itself_published() {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = Certs::generate(dir.path(), "fleet");
    let (gw_cert, gw_key) = certs.client(GW);
    let (central_cert, central_key) = certs.client("central");
    let (intruder_cert, intruder_key) = certs.client("intruder");
    let broker = acl_broker(
        dir.path(),
        &certs,
        "user central\n\
         topic read berrygw/+/state\ntopic read berrygw/+/health\ntopic read berrygw/+/identity\n\
         topic read berrygw/+/event/#\ntopic write berrygw/+/command\ntopic write berrygw/+/session/set\n\n\
         pattern readwrite berrygw/%u/#\npattern readwrite eu868/gateway/%u/#\n",
    );
    let url = broker.url(true);
    let sink = |name: &str| tls_sink(name, &url, &certs, &gw_cert, &gw_key);
    let radio = "[radio]\nkind = \"sim\"\n\n[radio.sim]\ndevices = []\n";
    let state = dir.path().join("s");
    let gw = Berrygw::start(
        dir.path(),
        &config_with_radio(&state, "log", radio, &format!("{}\n{}", sink("chirpstack"), sink("app"))),
    );
    gw.wait_log(Duration::from_secs(60), "app sink: connected");
    let own_key =
        berrygw_command().args(["identity", "show", "--state-dir"]).arg(&state).output().expect("show");
    let own_key = String::from_utf8_lossy(&own_key.stdout).trim().to_string();

    // The intruder holds a certificate of the same CA, but the ACL gives it only its own topics.
    let impostor = berrygw_proto::identity::Announcement::new(
        GW,
        &berrygw_proto::sealed::Identity::generate().recipient(),
    );
    for (topic, payload) in [
        (format!("berrygw/{GW}/identity"), impostor.to_json()),
        (format!("berrygw/{GW}/health"), b"{}".to_vec()),
        (format!("berrygw/{GW}/state"), br#"{"online":false}"#.to_vec()),
    ] {
        // mosquitto answers a denied publish by closing the connection; either way, nothing
        // of it may be kept (checked below).
        let mut o = rumqttc::MqttOptions::new("intruder", "127.0.0.1", broker.port);
        o.set_transport(tls_as(&certs, &intruder_cert, &intruder_key));
        let (client, mut conn) = rumqttc::Client::new(o, 10);
        client.publish(topic, rumqttc::QoS::AtLeastOnce, true, payload).expect("publish");
        for event in conn.iter() {
            match event {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) | Err(_) => break,
                _ => {}
            }
        }
    }

    let berryctl = |args: &[&str]| {
        berryctl_command()
            .args(args)
            .args(["--broker", &url, "--ca-file"])
            .arg(&certs.ca)
            .arg("--client-cert-file")
            .arg(&central_cert)
            .arg("--client-key-file")
            .arg(&central_key)
            .output()
            .expect("berryctl")
    };
    let rows = wait_for(Duration::from_secs(60), "the gateway online and healthy, over TLS", || {
        let out = berryctl(&["fleet", "--json", "--wait", "2"]);
        let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        rows.iter()
            .any(|r| r["gateway_id"] == GW && r["status"] == "online" && r["health"]["healthy"] == true)
            .then_some(rows)
    });
    assert_eq!(rows.len(), 1, "only the gateway itself: {rows:?}");

    // The retained identity is the gateway's own: what a session push would seal to.
    let sub = {
        let mut o = rumqttc::MqttOptions::new("central-reader", "127.0.0.1", broker.port);
        o.set_transport(tls_as(&certs, &central_cert, &central_key));
        let (client, mut conn) = rumqttc::Client::new(o, 10);
        client.subscribe(format!("berrygw/{GW}/identity"), rumqttc::QoS::AtLeastOnce).expect("subscribe");
        let mut payload = None;
        for event in conn.iter() {
            if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) = event {
                payload = Some(p.payload.to_vec());
                break;
            }
        }
        payload.expect("the retained identity")
    };
    let (_, key) = berrygw_proto::identity::Announcement::parse(&sub).expect("announcement");
    assert_eq!(key.to_string(), own_key, "the gateway's own key, not the intruder's");

    // Without a client certificate the broker does not let berryctl in: no answer, exit 2.
    let out = berryctl_command()
        .args(["fleet", "--wait", "2", "--broker", &url, "--ca-file"])
        .arg(&certs.ca)
        .output()
        .expect("berryctl");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

/// rumqttc's TLS transport for a client with its own certificate of `certs`' CA.
fn tls_as(certs: &Certs, cert: &std::path::Path, key: &std::path::Path) -> rumqttc::Transport {
    let files = berrygw_proto::tls::TlsFiles {
        ca_file: Some(&certs.ca),
        client_cert_file: Some(cert),
        client_key_file: Some(key),
    };
    rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(
        berrygw_proto::tls::client_config(&files).expect("tls"),
    ))
}
