//! End to end: the real `berrygw` binary forwards simulated uplinks to a real
//! mosquitto over plain MQTT, TLS and mutual TLS; messages are decoded with
//! `chirpstack_api` and checked field by field.

mod support;

use std::time::Duration;

use berrygw_lora::phy::{self, MType, PhyFrame};
use chirpstack_api::gw;
use prost::Message;
use rumqttc::{Client, Event, MqttOptions, Packet, Transport};
use support::*;

const EU868: [u32; 8] =
    [868_100_000, 868_300_000, 868_500_000, 867_100_000, 867_300_000, 867_500_000, 867_700_000, 867_900_000];

#[test]
fn forwards_uplinks_over_plain_mqtt_field_by_field() {
    let dir = tempfile::tempdir().expect("tmp");
    let broker = Mosquitto::start(dir.path(), None);
    let sub = Subscriber::connect(broker.port, "eu868/gateway/0016c001ff10a235/#", None);
    let devices = sim_device("compteur-eau", "water_meter", "26011bda", 100, Some(5));
    let state = dir.path().join("state");
    let before = now_ms();
    let _gw = Berrygw::start(dir.path(), &config(&state, "sqlite", &broker.url(false), "", &devices));

    let ups = sub.wait_uplinks(5, Duration::from_secs(30));
    let after = now_ms();
    for (i, seen) in ups.iter().enumerate() {
        let up = seen.uplink();
        let rx = up.rx_info.clone().expect("rx_info");
        let tx = up.tx_info.clone().expect("tx_info");
        assert_eq!(rx.gateway_id, "0016c001ff10a235");
        assert_eq!(rx.crc_status(), gw::CrcStatus::CrcOk);
        assert!((-130..0).contains(&rx.rssi), "rssi {}", rx.rssi);
        assert!(EU868.contains(&tx.frequency), "frequency {}", tx.frequency);
        match tx.modulation.and_then(|m| m.parameters) {
            Some(gw::modulation::Parameters::Lora(l)) => {
                assert_eq!((l.spreading_factor, l.bandwidth), (7, 125_000));
                assert_eq!(l.code_rate(), gw::CodeRate::Cr45);
            }
            other => panic!("expected LoRa modulation, got {other:?}"),
        }
        assert_eq!(seen.seq(), i as u64 + 1, "per-gateway sequence numbers start at 1 and follow arrival");
        let received_ms: i64 = rx.metadata["berrygw_received_ms"].parse().expect("ms");
        assert!((before..=after).contains(&received_ms), "receive time {received_ms} not within the run");
        assert_eq!(rx.gw_time.map(|t| t.seconds), Some(received_ms / 1000));
        match phy::parse(&up.phy_payload).expect("PHYPayload parses") {
            PhyFrame::Data(d) => {
                assert_eq!(d.mtype, MType::UnconfirmedDataUp);
                assert_eq!(d.dev_addr.to_string(), "26011bda");
                assert_eq!(u32::from(d.fcnt), i as u32, "FCnt counts from 0");
                assert_eq!(d.f_port, Some(2));
            }
            other => panic!("expected a data frame, got {other:?}"),
        }
    }
    let state_msgs = sub.on_topic("/state/conn");
    let last = state_msgs.last().expect("state/conn published");
    let conn = gw::ConnState::decode(last.payload.as_slice()).expect("ConnState decodes");
    assert_eq!(conn.state(), gw::conn_state::State::Online);
}

#[test]
fn last_will_marks_gateway_offline_when_killed() {
    let dir = tempfile::tempdir().expect("tmp");
    let broker = Mosquitto::start(dir.path(), None);
    let sub = Subscriber::connect(broker.port, "eu868/gateway/+/state/conn", None);
    let devices = sim_device("d", "water_meter", "26011bda", 1000, Some(1));
    let mut gw = Berrygw::start(
        dir.path(),
        &config(&dir.path().join("s"), "sqlite", &broker.url(false), "", &devices),
    );
    wait_for(Duration::from_secs(20), "ONLINE state", || {
        sub.seen()
            .iter()
            .any(|s| {
                gw::ConnState::decode(s.payload.as_slice())
                    .map(|c| c.state() == gw::conn_state::State::Online)
                    .unwrap_or(false)
            })
            .then_some(())
    });
    gw.kill9();
    wait_for(Duration::from_secs(20), "OFFLINE last will", || {
        let last = sub.seen().last().cloned()?;
        let c = gw::ConnState::decode(last.payload.as_slice()).ok()?;
        (c.state() == gw::conn_state::State::Offline).then_some(())
    });
}

#[test]
fn json_format_publishes_chirpstack_json() {
    let dir = tempfile::tempdir().expect("tmp");
    let broker = Mosquitto::start(dir.path(), None);
    let sub = Subscriber::connect(broker.port, "eu868/gateway/+/event/up", None);
    let devices = sim_device("d", "river_level", "26011bdb", 100, Some(2));
    let _gw = Berrygw::start(
        dir.path(),
        &config(&dir.path().join("s"), "log", &broker.url(false), "format = \"json\"", &devices),
    );
    let ups = wait_for(Duration::from_secs(30), "2 JSON uplinks", || {
        let v = sub.seen();
        (v.len() >= 2).then_some(v)
    });
    for (i, s) in ups.iter().enumerate() {
        let frame: gw::UplinkFrame = serde_json::from_slice(&s.payload).expect("ChirpStack JSON UplinkFrame");
        let rx = frame.rx_info.expect("rx_info");
        assert_eq!(rx.gateway_id, "0016c001ff10a235");
        assert_eq!(rx.metadata["berrygw_seq"], (i + 1).to_string());
        assert!(!frame.phy_payload.is_empty());
    }
}

#[test]
fn forwards_over_tls_verified_against_configured_ca() {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = Certs::generate(dir.path(), "tls");
    let broker = tls_broker(dir.path(), &certs, false);
    let sub = Subscriber::connect(broker.port, "eu868/gateway/+/event/up", Some(client_tls(&certs, false)));
    let extra = format!("ca_file = \"{}\"", certs.ca.display());
    let _gw = gateway_over_tls(dir.path(), &broker, &extra);
    let ups = sub.wait_uplinks(3, Duration::from_secs(30));
    assert_eq!(first_arrivals(&ups), vec![1, 2, 3]);
}

#[test]
fn refuses_a_broker_whose_certificate_does_not_chain_to_the_ca() {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = Certs::generate(dir.path(), "real");
    let other = Certs::generate(dir.path(), "other");
    let broker = tls_broker(dir.path(), &certs, false);
    let sub = Subscriber::connect(broker.port, "eu868/gateway/+/event/up", Some(client_tls(&certs, false)));
    let extra = format!("ca_file = \"{}\"", other.ca.display());
    let gw = gateway_over_tls(dir.path(), &broker, &extra);
    let line = gw.wait_log(Duration::from_secs(30), "chirpstack sink:");
    assert!(line.contains("reconnecting"), "{line}");
    assert!(
        line.to_lowercase().contains("certificate") || line.contains("UnknownIssuer"),
        "TLS error should say why: {line}"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(sub.on_topic("/event/up").is_empty(), "nothing may reach an unverified broker");
}

#[test]
fn mutual_tls_client_certificate_is_required_and_used() {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = Certs::generate(dir.path(), "mtls");
    let broker = tls_broker(dir.path(), &certs, true);

    // A client without a certificate is refused by the broker.
    let mut opts = MqttOptions::new("no-cert", "127.0.0.1", broker.port);
    opts.set_transport(Transport::tls_with_config(client_tls(&certs, false)));
    let (_c, mut conn) = Client::new(opts, 10);
    let refused = (0..3).all(|_| !matches!(conn.recv(), Ok(Ok(Event::Incoming(Packet::ConnAck(_))))));
    assert!(refused, "a client without a certificate must not get a CONNACK");

    // berrygw with its client certificate gets through.
    let sub = Subscriber::connect(broker.port, "eu868/gateway/+/event/up", Some(client_tls(&certs, true)));
    let extra = format!(
        "ca_file = \"{}\"\nclient_cert_file = \"{}\"\nclient_key_file = \"{}\"",
        certs.ca.display(),
        certs.client_cert.display(),
        certs.client_key.display()
    );
    let _gw = gateway_over_tls(dir.path(), &broker, &extra);
    let ups = sub.wait_uplinks(3, Duration::from_secs(30));
    assert_eq!(first_arrivals(&ups), vec![1, 2, 3]);
}

#[test]
fn mutual_tls_without_client_certificate_delivers_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = Certs::generate(dir.path(), "mtls2");
    let broker = tls_broker(dir.path(), &certs, true);
    let sub = Subscriber::connect(broker.port, "eu868/gateway/+/event/up", Some(client_tls(&certs, true)));
    let extra = format!("ca_file = \"{}\"", certs.ca.display());
    let gw = gateway_over_tls(dir.path(), &broker, &extra);
    gw.wait_log(Duration::from_secs(30), "reconnecting in");
    assert!(sub.on_topic("/event/up").is_empty());
}

/// berrygw sending 3 uplinks to `broker` over TLS, with `extra` in its sink section.
fn gateway_over_tls(dir: &std::path::Path, broker: &Mosquitto, extra: &str) -> Berrygw {
    let devices = sim_device("d", "waste_fill", "26011bdc", 100, Some(3));
    Berrygw::start(dir, &config(&dir.join("s"), "sqlite", &broker.url(true), extra, &devices))
}

#[test]
fn gateway_stats_are_published_with_journal_state() {
    let dir = tempfile::tempdir().expect("tmp");
    let broker = Mosquitto::start(dir.path(), None);
    let sub = Subscriber::connect(broker.port, "eu868/gateway/+/event/stats", None);
    let devices = sim_device("d", "water_meter", "26011bda", 100, Some(10));
    let text = config(&dir.path().join("s"), "sqlite", &broker.url(false), "", &devices)
        .replace("stats_interval_secs = 3600", "stats_interval_secs = 1");
    let _gw = Berrygw::start(dir.path(), &text);
    let stats = wait_for(Duration::from_secs(30), "stats counting received uplinks", || {
        let all: Vec<gw::GatewayStats> =
            sub.seen().iter().filter_map(|s| gw::GatewayStats::decode(s.payload.as_slice()).ok()).collect();
        (all.iter().map(|s| s.rx_packets_received).sum::<u32>() >= 10).then_some(all)
    });
    let last = stats.last().expect("stats");
    assert_eq!(last.gateway_id, "0016c001ff10a235");
    assert!(last.metadata.contains_key("journal_chirpstack_records"), "{:?}", last.metadata);
    assert!(last.metadata.contains_key("journal_chirpstack_evicted_total"));
    assert_eq!(stats.iter().map(|s| s.rx_packets_received_ok).sum::<u32>(), 10);
}

#[test]
fn downlink_commands_reach_the_radio_and_are_acknowledged() {
    let dir = tempfile::tempdir().expect("tmp");
    let broker = Mosquitto::start(dir.path(), None);
    let sub = Subscriber::connect(broker.port, "eu868/gateway/+/event/#", None);
    let devices = sim_device("d", "water_meter", "26011bda", 200, Some(1));
    let daemon = Berrygw::start(
        dir.path(),
        &config(&dir.path().join("s"), "sqlite", &broker.url(false), "", &devices),
    );
    sub.wait_uplinks(1, Duration::from_secs(30));

    let (client, mut conn) = Client::new(MqttOptions::new("test-ns", "127.0.0.1", broker.port), 10);
    std::thread::spawn(move || for _ in conn.iter() {});
    let topic = "eu868/gateway/0016c001ff10a235/command/down";
    // A malformed command is rejected alone; the next good one still goes through.
    client.publish(topic, rumqttc::QoS::AtLeastOnce, false, vec![0xff, 0x00, 0x13]).expect("publish garbage");
    let down = downlink_command(4242);
    client.publish(topic, rumqttc::QoS::AtLeastOnce, false, down.encode_to_vec()).expect("publish downlink");
    let ack = wait_for(Duration::from_secs(20), "event/ack", || {
        sub.on_topic("/event/ack").first().and_then(|s| gw::DownlinkTxAck::decode(s.payload.as_slice()).ok())
    });
    assert_eq!(ack.downlink_id, 4242);
    assert_eq!(ack.gateway_id, "0016c001ff10a235");
    assert_eq!(ack.items.len(), 1);
    assert_eq!(ack.items[0].status(), gw::TxAckStatus::Ok);
    let rejected = daemon.wait_log(Duration::from_secs(5), "rejected command");
    assert!(rejected.contains("protobuf"), "the log says why: {rejected}");
}

/// At field rates a PUBACK waits for the sink's next publish (one wake-up per uplink, not
/// two), and a downlink still wakes the sink at once: the socket's low-water mark lets a
/// lone PUBACK wait and nothing else. When the downlink comes the uplinks have stopped and
/// the keep-alive tick is 25 s away, so only that mark can bring it in within the wait.
#[test]
fn acknowledgements_wait_for_the_next_uplink_and_a_downlink_still_wakes_the_sink() {
    let dir = tempfile::tempdir().expect("tmp");
    let broker = Mosquitto::start(dir.path(), None);
    let sub = Subscriber::connect(broker.port, "eu868/gateway/+/event/#", None);
    // 10 uplinks/s for 4 s, then nothing.
    let devices = sim_device("d", "water_meter", "26011bda", 100, Some(40));
    // The journal's window and the keep-alive as shipped (the suite's are shorter).
    let text = config(&dir.path().join("s"), "sqlite", &broker.url(false), "", &devices)
        .replace("commit_interval_ms = 50\n", "commit_interval_ms = 500\n")
        .replace("keep_alive_secs = 5\n", "keep_alive_secs = 30\n");
    assert!(text.contains("commit_interval_ms = 500\n") && text.contains("keep_alive_secs = 30\n"));
    let _daemon = Berrygw::start(dir.path(), &text);
    let late = "berrygw_sink_acks_read_late{sink=\"chirpstack\"} 1\n";
    wait_for(Duration::from_secs(30), "the sink reading PUBACKs with its next publish", || {
        http_get(&text, "/metrics").filter(|m| m.contains(late))
    });
    sub.wait_uplinks(40, Duration::from_secs(30));
    // Every PUBACK was read (the last one at its deadline, with no publish after it), and
    // the sink still reads late: nothing but the mark can wake it now.
    let metrics = wait_for(Duration::from_secs(10), "all 40 acknowledged", || {
        http_get(&text, "/metrics")
            .filter(|m| m.contains("berrygw_sink_forwarded_total{sink=\"chirpstack\"} 40\n"))
    });
    assert!(metrics.contains(late), "{metrics}");

    let (client, mut conn) = Client::new(MqttOptions::new("test-ns", "127.0.0.1", broker.port), 10);
    std::thread::spawn(move || for _ in conn.iter() {});
    let down = downlink_command(77);
    client
        .publish(
            "eu868/gateway/0016c001ff10a235/command/down",
            rumqttc::QoS::AtLeastOnce,
            false,
            down.encode_to_vec(),
        )
        .expect("publish downlink");
    let ack = wait_for(Duration::from_secs(5), "event/ack for the downlink", || {
        sub.on_topic("/event/ack").first().and_then(|s| gw::DownlinkTxAck::decode(s.payload.as_slice()).ok())
    });
    assert_eq!(ack.downlink_id, 77);
    assert_eq!(ack.items[0].status(), gw::TxAckStatus::Ok);
}
