//! End to end over Semtech UDP (GWMP): a packet forwarder on the gateway feeds
//! berrygw (ingest), and berrygw forwards to a network server that speaks
//! GWMP (sink). Real UDP sockets on loopback, the real binary, real mosquitto.

mod support;

use std::time::Duration;

use berrygw_lora::phy::{build_data_uplink, AesKey, DataUplink, DevAddr};
use chirpstack_api::gw;
use prost::Message;
use rumqttc::{Client, MqttOptions, QoS};
use serde_json::json;
use support::gwmp::*;
use support::*;

const FORWARDER_EUI: [u8; 8] = [0x00, 0x16, 0xc0, 0x01, 0xff, 0x10, 0xa2, 0x35];

fn phy(fcnt: u32) -> Vec<u8> {
    let key = AesKey([9; 16]);
    let up = DataUplink {
        dev_addr: DevAddr::from_u32(0x2601_1bda),
        fcnt,
        confirmed: false,
        adr: false,
        f_port: 2,
        payload: &[0x01, 0x02, 0x03],
    };
    build_data_uplink(&up, &key, &key).expect("frame")
}

fn gwmp_radio(port: u16) -> String {
    format!("[radio]\nkind = \"gwmp\"\n\n[radio.gwmp]\nbind = \"127.0.0.1:{port}\"\n")
}

fn chirpstack_sink(broker: &Mosquitto) -> String {
    format!(
        "[sinks.chirpstack]\nserver = \"{}\"\nreconnect_min_ms = 200\nreconnect_max_ms = 1000\n",
        broker.url(false)
    )
}

/// berrygw with a GWMP radio and a ChirpStack sink, a broker with a subscriber
/// on `filter`, and a packet forwarder whose PULL_DATA berrygw has answered.
struct GwmpSite {
    _dir: tempfile::TempDir,
    broker: Mosquitto,
    sub: Subscriber,
    daemon: Berrygw,
    fwd: Peer,
    ingest: std::net::SocketAddr,
}

impl GwmpSite {
    fn start(filter: &str) -> GwmpSite {
        let dir = tempfile::tempdir().expect("tmp");
        let broker = Mosquitto::start(dir.path(), None);
        let sub = Subscriber::connect(broker.port, filter, None);
        let port = free_port();
        let text =
            config_with_radio(&dir.path().join("s"), "sqlite", &gwmp_radio(port), &chirpstack_sink(&broker));
        let daemon = Berrygw::start(dir.path(), &text);
        let fwd = Peer::bind();
        let ingest: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        wait_for_ingest(&fwd, ingest);
        GwmpSite { _dir: dir, broker, sub, daemon, fwd, ingest }
    }
}

/// Wait until berrygw's GWMP socket answers a PULL_DATA.
fn wait_for_ingest(fwd: &Peer, ingest: std::net::SocketAddr) {
    wait_for(Duration::from_secs(20), "berrygw's GWMP ingest to answer", || {
        fwd.send(ingest, &datagram(PULL_DATA, 7, Some(FORWARDER_EUI), None));
        fwd.recv_ident(PULL_ACK, Duration::from_millis(300)).map(|_| ())
    });
}

#[test]
fn packet_forwarder_uplinks_reach_chirpstack_with_their_radio_metadata() {
    let site = GwmpSite::start("eu868/gateway/+/event/up");
    let (sub, fwd, ingest) = (&site.sub, &site.fwd, site.ingest);

    let body = json!({ "rxpk": [
        rxpk(&phy(0), 868.1, "SF7BW125", -97, 7.5, 1_000_000),
        rxpk(&phy(1), 868.3, "SF12BW125", -118, -12.5, 2_000_000),
        rxpk(&phy(2), 867.5, "SF9BW125", -60, 9.0, 3_000_000),
    ]});
    fwd.send(ingest, &datagram(PUSH_DATA, 0xbeef, Some(FORWARDER_EUI), Some(&body)));
    let ack = fwd.recv_ident(PUSH_ACK, Duration::from_secs(5)).expect("PUSH_ACK");
    assert_eq!(ack.token, 0xbeef, "PUSH_ACK echoes the token");

    let ups = sub.wait_uplinks(3, Duration::from_secs(20));
    let expect = [(868_100_000, 7, -97, 7.5), (868_300_000, 12, -118, -12.5), (867_500_000, 9, -60, 9.0)];
    for (i, (seen, (freq, sf, rssi, snr))) in ups.iter().zip(expect).enumerate() {
        let up = seen.uplink();
        assert_eq!(up.phy_payload, phy(i as u32));
        let tx = up.tx_info.expect("tx_info");
        assert_eq!(tx.frequency, freq);
        match tx.modulation.and_then(|m| m.parameters) {
            Some(gw::modulation::Parameters::Lora(l)) => {
                assert_eq!((l.spreading_factor, l.bandwidth), (sf, 125_000))
            }
            other => panic!("LoRa expected, got {other:?}"),
        }
        let rx = up.rx_info.expect("rx_info");
        assert_eq!((rx.rssi, rx.snr), (rssi, snr as f32));
        assert_eq!(rx.crc_status(), gw::CrcStatus::CrcOk);
    }
}

#[test]
fn downlink_goes_to_the_packet_forwarder_and_its_tx_ack_error_comes_back() {
    let site = GwmpSite::start("eu868/gateway/+/event/ack");
    let (broker, sub, daemon, fwd, ingest) = (&site.broker, &site.sub, &site.daemon, &site.fwd, site.ingest);
    daemon.wait_log(Duration::from_secs(20), "chirpstack sink: connected");

    let (client, mut conn) = Client::new(MqttOptions::new("test-ns", "127.0.0.1", broker.port), 10);
    std::thread::spawn(move || for _ in conn.iter() {});
    let down = downlink_command(777);
    client
        .publish("eu868/gateway/0016c001ff10a235/command/down", QoS::AtLeastOnce, false, down.encode_to_vec())
        .expect("publish downlink");

    let resp = fwd.recv_ident(PULL_RESP, Duration::from_secs(10)).expect("PULL_RESP to the forwarder");
    let txpk = &resp.json.expect("PULL_RESP JSON")["txpk"];
    assert_eq!(txpk["imme"], true);
    assert!((txpk["freq"].as_f64().expect("freq") - 869.525).abs() < 1e-6, "{txpk}");
    assert_eq!(txpk["powe"], 14);
    assert_eq!(txpk["datr"], "SF9BW125");
    assert_eq!(txpk["ipol"], true);
    assert_eq!(b64_decode(txpk["data"].as_str().expect("data")), down.items[0].phy_payload);

    let tx_ack = json!({"txpk_ack": {"error": "TOO_LATE"}});
    fwd.send(ingest, &datagram(TX_ACK, resp.token, Some(FORWARDER_EUI), Some(&tx_ack)));
    let ack = wait_for(Duration::from_secs(10), "event/ack", || {
        sub.on_topic("/event/ack").first().and_then(|s| gw::DownlinkTxAck::decode(s.payload.as_slice()).ok())
    });
    assert_eq!(ack.downlink_id, 777);
    assert_eq!(ack.items[0].status(), gw::TxAckStatus::TooLate);
}

#[test]
fn garbage_datagrams_are_dropped_and_the_next_good_one_is_forwarded() {
    let site = GwmpSite::start("eu868/gateway/+/event/up");
    let (sub, fwd, ingest) = (&site.sub, &site.fwd, site.ingest);

    let garbage: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xff],
        vec![1, 0, 0, PUSH_DATA],           // wrong version
        vec![2, 0, 1, 0x42],                // unknown identifier
        datagram(PUSH_DATA, 1, None, None), // no EUI
        [datagram(PUSH_DATA, 2, Some(FORWARDER_EUI), None), b"{not json".to_vec()].concat(),
        datagram(
            PUSH_DATA,
            3,
            Some(FORWARDER_EUI),
            Some(&json!({"rxpk": [{"data": "!!!notbase64", "freq": 868.1}]})),
        ),
        datagram(PUSH_DATA, 4, Some(FORWARDER_EUI), Some(&json!({"rxpk": [{"freq": "x"}]}))),
        (0..600u32).map(|i| (i * 7919 % 251) as u8).collect(),
    ];
    for g in &garbage {
        fwd.send(ingest, g);
    }
    let body = json!({ "rxpk": [rxpk(&phy(5), 868.1, "SF7BW125", -90, 5.0, 42)] });
    fwd.send(ingest, &datagram(PUSH_DATA, 0x1234, Some(FORWARDER_EUI), Some(&body)));
    let ups = sub.wait_uplinks(1, Duration::from_secs(20));
    assert_eq!(ups[0].uplink().phy_payload, phy(5));
    assert_eq!(first_arrivals(&ups), vec![1], "nothing from the garbage was forwarded");
}

#[test]
fn semtech_udp_sink_forwards_in_order_and_retransmits_until_push_ack() {
    let dir = tempfile::tempdir().expect("tmp");
    let lns = Peer::bind();
    let devices = sim_device("d", "water_meter", "26011bda", 50, Some(5));
    let radio = format!("[radio]\nkind = \"sim\"\n\n[radio.sim]\nseed = 3\n\n{devices}\n");
    let sinks = format!("[sinks.semtech_udp]\nserver = \"{}\"\n", lns.addr());
    let _gw = Berrygw::start(dir.path(), &config_with_radio(&dir.path().join("s"), "sqlite", &radio, &sinks));

    // Withhold the first PUSH_ACK: the same data must come again.
    let first = lns.recv_ident(PUSH_DATA, Duration::from_secs(20)).expect("PUSH_DATA");
    assert_eq!(first.eui, Some(FORWARDER_EUI), "the gateway EUI is in the header");
    let first_data: Vec<String> = first.json.as_ref().expect("json")["rxpk"]
        .as_array()
        .expect("rxpk")
        .iter()
        .map(|p| p["data"].as_str().expect("data").to_string())
        .collect();
    let again = wait_for(Duration::from_secs(30), "a retransmission", || {
        let g = lns.recv_ident(PUSH_DATA, Duration::from_millis(500))?;
        let data: Vec<String> = g.json.as_ref()?["rxpk"]
            .as_array()?
            .iter()
            .filter_map(|p| p["data"].as_str().map(String::from))
            .collect();
        (data.first() == first_data.first()).then_some(g)
    });

    // Acknowledge everything from now on and collect the uplinks in arrival order.
    lns.send(again.from, &datagram(PUSH_ACK, again.token, None, None));
    let mut payloads: Vec<Vec<u8>> = Vec::new();
    for g in [&again] {
        for p in g.json.as_ref().expect("json")["rxpk"].as_array().expect("rxpk") {
            payloads.push(b64_decode(p["data"].as_str().expect("data")));
        }
    }
    wait_for(Duration::from_secs(30), "5 uplinks at the LNS", || {
        if let Some(g) = lns.recv(Duration::from_millis(200)) {
            if g.ident == PUSH_DATA {
                lns.send(g.from, &datagram(PUSH_ACK, g.token, None, None));
                for p in g.json.as_ref().and_then(|j| j["rxpk"].as_array().cloned()).unwrap_or_default() {
                    let data = b64_decode(p["data"].as_str().unwrap_or_default());
                    if !payloads.contains(&data) {
                        payloads.push(data);
                    }
                }
            }
        }
        (payloads.len() >= 5).then_some(())
    });
    let fcnts: Vec<u16> = payloads.iter().map(|p| u16::from_le_bytes([p[6], p[7]])).collect();
    assert_eq!(fcnts, vec![0, 1, 2, 3, 4], "uplinks reach the LNS in order, none missing");
}

/// `GET path` on berrygw's HTTP listener (port read from the daemon's config); the body.
#[test]
fn a_second_forwarder_and_oversized_frames_are_refused_counted_and_shown() {
    let dir = tempfile::tempdir().expect("tmp");
    let broker = Mosquitto::start(dir.path(), None);
    let port = free_port();
    let text =
        config_with_radio(&dir.path().join("s"), "sqlite", &gwmp_radio(port), &chirpstack_sink(&broker));
    let _daemon = Berrygw::start(dir.path(), &text);
    let fwd = Peer::bind();
    let ingest: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    wait_for_ingest(&fwd, ingest);

    // Another process on the host, same EUI, GWMP v1: it must get neither PULL_ACK nor downlinks.
    let thief = Peer::bind();
    let mut v1_pull = datagram(PULL_DATA, 9, Some(FORWARDER_EUI), None);
    v1_pull[0] = 1;
    thief.send(ingest, &v1_pull);
    thief.send(ingest, &datagram(PULL_DATA, 10, Some(FORWARDER_EUI), None));
    assert!(thief.recv(Duration::from_secs(1)).is_none(), "the intruder is not answered");

    // A 256-byte frame: one more than LoRa carries.
    let body = json!({ "rxpk": [rxpk(&[0x40; 256], 868.1, "SF7BW125", -90, 5.0, 42)] });
    fwd.send(ingest, &datagram(PUSH_DATA, 0x2222, Some(FORWARDER_EUI), Some(&body)));
    assert!(fwd.recv_ident(PUSH_ACK, Duration::from_secs(5)).is_some());

    let status = wait_for(Duration::from_secs(20), "status with the refusals", || {
        let s: serde_json::Value = serde_json::from_str(&http_get(&text, "/api/status")?).ok()?;
        let g = &s["radio"]["gwmp"];
        (g["rxpk_rejected"] == 1 && g["refused_sources"] == 2).then_some(s)
    });
    assert_eq!(status["radio"]["gwmp"]["forwarder_ip"], "127.0.0.1");
    assert_eq!(status["radio"]["gwmp"]["downlink_addr"], fwd.addr().to_string());
    let problems = status["problems"].to_string();
    assert!(problems.contains("other than the pinned packet forwarder"), "{problems}");
    assert!(problems.contains(&thief.addr().to_string()), "{problems}");

    let metrics = http_get(&text, "/metrics").expect("metrics");
    assert!(metrics.contains("berrygw_gwmp_rxpk_rejected_total 1\n"), "{metrics}");
    assert!(metrics.contains("berrygw_gwmp_dropped_total{reason=\"pull_data_refused\"} 2\n"), "{metrics}");
}
