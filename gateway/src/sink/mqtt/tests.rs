use super::*;
use std::collections::HashMap;
use std::time::Duration;

use berrygw_lora::{TxAck, TxStatus};
use tokio::sync::mpsc;

use crate::journal::Seq;
use crate::sink::chirpstack::{PayloadFormat, Topics};
use crate::sink::pace::PaceSettings;
use crate::sink::{SinkCounters, SinkRadioIo};

use super::config::*;
use super::window::*;

fn chirpstack_settings() -> MqttSinkSettings {
    MqttSinkSettings {
        name: "chirpstack",
        protocol: Protocol::Chirpstack {
            topics: Topics::new("eu868", "0016c001ff10a235"),
            format: PayloadFormat::Protobuf,
        },
        server: "mqtt://127.0.0.1:1".parse().expect("url"),
        tls: None,
        allow_plaintext: true,
        client_id: "test".into(),
        credentials: None,
        gateway_id: "0016c001ff10a235".into(),
        keep_alive: Duration::from_secs(30),
        max_inflight: 8,
        reconnect_min: Duration::from_millis(100),
        reconnect_max: Duration::from_secs(1),
        pace: PaceSettings::OFF,
    }
}

fn downlink_command(downlink_id: u32) -> Vec<u8> {
    use chirpstack_api::gw;
    use prost::Message;
    gw::DownlinkFrame {
        downlink_id,
        items: vec![gw::DownlinkFrameItem {
            phy_payload: vec![0x60, 1, 2],
            tx_info: Some(gw::DownlinkTxInfo {
                frequency: 869_525_000,
                power: 14,
                modulation: Some(gw::Modulation {
                    parameters: Some(gw::modulation::Parameters::Lora(gw::LoraModulationInfo {
                        bandwidth: 125_000,
                        spreading_factor: 9,
                        code_rate: gw::CodeRate::Cr45.into(),
                        polarization_inversion: true,
                        ..Default::default()
                    })),
                }),
                timing: Some(gw::Timing {
                    parameters: Some(gw::timing::Parameters::Immediately(gw::ImmediatelyTimingInfo {})),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
    .encode_to_vec()
}

#[tokio::test]
async fn a_downlink_the_radio_cannot_take_is_answered_queue_full_and_forgotten() {
    let s = chirpstack_settings();
    let counters = SinkCounters::default();
    let (down_tx, mut down_rx) = mpsc::channel(1);
    let (_ack_tx, ack_rx) = mpsc::channel(1);
    let inbound = SinkInbound::Radio(SinkRadioIo { downlinks: down_tx, tx_acks: ack_rx });
    let mut items = HashMap::new();
    let topic = "eu868/gateway/0016c001ff10a235/command/down";

    let taken = incoming(&s, &counters, &inbound, &mut items, topic, &downlink_command(1));
    assert_eq!(taken, None, "the radio took the first downlink; its answer comes from the radio");
    let refused = incoming(&s, &counters, &inbound, &mut items, topic, &downlink_command(2))
        .expect("a downlink refused by a full radio queue is answered");
    assert_eq!(refused, TxAck { downlink_id: 2, status: TxStatus::QueueFull });

    // The answer goes out on event/ack and the downlink is forgotten.
    let mut conn = conn::Conn::loopback().await;
    let mut flight = PubackWindow::default();
    answer_downlink(&s, &mut conn, &mut flight, &mut items, &refused).expect("queued");
    assert_eq!(flight.in_flight(), 1, "the ack was published");
    assert!(!items.contains_key(&2), "no entry left behind for the refused downlink");
    assert!(items.contains_key(&1), "the accepted downlink waits for its TxAck");

    // A closed radio answers InternalError.
    drop(down_rx.recv().await);
    drop(down_rx);
    let closed = incoming(&s, &counters, &inbound, &mut items, topic, &downlink_command(3));
    assert_eq!(closed.map(|a| a.status), Some(TxStatus::InternalError));
}

#[test]
fn ack_point_waits_for_the_oldest_publish() {
    let mut f = PubackWindow::default();
    f.sent(1, None); // state/conn
    for seq in 1..=3 {
        f.sent(seq as u16 + 1, Some(seq));
    }
    assert_eq!(f.in_flight(), 4);
    let mut up_to = |pkid| f.acked(pkid).map(|a| a.up_to);
    assert_eq!(up_to(1), None, "state message moves nothing");
    assert_eq!(up_to(3), Some(Seq(0)), "seq 2 acked but seq 1 still out");
    assert_eq!(up_to(2), Some(Seq(2)));
    assert_eq!(up_to(4), Some(Seq(3)));
    assert_eq!(up_to(4), None, "duplicate PUBACK ignored");
}

/// A fake broker on loopback: it answers the CONNECT with `connack`, then sends `after`
/// and closes the connection.
async fn fake_broker(connack: [u8; 4], after: &'static [u8]) -> MqttSinkSettings {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.expect("accept");
        let mut buf = [0u8; 512];
        let _ = tcp.read(&mut buf).await;
        tcp.write_all(&connack).await.expect("connack");
        tcp.write_all(after).await.expect("after");
    });
    MqttSinkSettings {
        server: format!("mqtt://127.0.0.1:{port}").parse().expect("url"),
        ..chirpstack_settings()
    }
}

async fn open(s: &MqttSinkSettings) -> anyhow::Result<conn::Conn> {
    let will = rumqttc::LastWill::new("t", "offline", rumqttc::QoS::AtLeastOnce, true);
    conn::Conn::open(s, Duration::from_secs(5), true, will, 1024, Duration::from_secs(5)).await
}

/// Read until the connection fails; no packet is expected before.
async fn first_error(conn: &mut conn::Conn) -> anyhow::Error {
    loop {
        conn.readable().await.expect("readable");
        match conn.next_packet() {
            Ok(None) => continue,
            Ok(Some(p)) => panic!("no packet expected, got {p:?}"),
            Err(e) => return e,
        }
    }
}

/// What a hostile or broken broker can send is an error of the session (the sink reconnects),
/// never a panic: a refusal backs off, a malformed packet or a connection closed in the middle
/// of a packet ends the session.
#[tokio::test]
async fn a_refusal_a_malformed_packet_and_a_cut_packet_end_the_session() {
    let refused = open(&fake_broker([0x20, 2, 0, 5], b"").await).await.err().expect("refused");
    assert!(refused.to_string().contains("refused"), "{refused}");
    assert!(matches!(failure_kind(&refused), Failure::Refused), "a refusal backs off");

    // A reserved packet type (0) after the CONNACK.
    let mut conn = open(&fake_broker([0x20, 2, 0, 0], &[0x00, 0x00]).await).await.expect("connected");
    let malformed = first_error(&mut conn).await;
    assert!(malformed.to_string().contains("malformed"), "{malformed}");

    // Half a PUBACK, then the connection closed: the broker is tried again soon.
    let mut conn = open(&fake_broker([0x20, 2, 0, 0], &[0x40, 0x02, 0x00]).await).await.expect("connected");
    let cut = first_error(&mut conn).await;
    assert!(cut.to_string().contains("closed"), "{cut}");
    assert!(matches!(failure_kind(&cut), Failure::Unreachable), "a dropped connection is retried soon");
}
