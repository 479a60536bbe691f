//! End to end: a backlog replayed after an outage is accepted by the network server,
//! not only delivered to the broker. The network server here is a double that applies
//! ChirpStack v4's rules to what reaches the broker, as ChirpStack's source documents
//! them (chirpstack/src/uplink/mod.rs, storage/device.rs): each uplink is handled in its
//! own task after a 200 ms deduplication wait; the device's frame counter is then
//! checked and raised in one statement, so of two uplinks of one device arriving close
//! together the later may commit first and the earlier is refused ("FCntUp already
//! updated", or a counter reset); a deduplication key expires after 400 ms, so a burst
//! larger than the server can collect in that time loses uplinks ("Zero items in collect
//! set"). The double takes the worst case of each race, so what it accepts, ChirpStack
//! accepts. The real ChirpStack runs from `scripts/interop-chirpstack` (BENCHMARKS.md).
//!
//! Also: the network server's answers to replayed uplinks (ACKs, MAC commands) are
//! refused TOO_LATE at the gateway, never sent on air.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, SystemTime};

use chirpstack_api::gw;
use prost::Message;
use rumqttc::{Client, MqttOptions, QoS};
use support::*;

/// Two uplinks of one device arriving closer together than this race in ChirpStack: both
/// wait out the 200 ms deduplication delay, then the one whose task reaches the counter
/// `UPDATE` first wins. The race lasts as long as that stretch of work (milliseconds on an
/// idle server, tens under load); 100 ms is generous, yet leaves room for a test machine
/// (qemu) that delays one delivery to the subscriber and bunches it with the next.
const RACE: Duration = Duration::from_millis(100);
/// Its deduplication keys live twice the delay; past this many uplinks arriving within
/// that time the double says the server cannot keep up (deliberately generous).
const BURST_WINDOW: Duration = Duration::from_millis(400);
const BURST_CAPACITY: usize = 100;

#[derive(Debug, Default)]
struct Verdicts {
    accepted: BTreeMap<u32, Vec<u32>>,
    /// (DevAddr, FCnt, why)
    refused: Vec<(u32, u32, &'static str)>,
}

/// DevAddr and 16-bit FCnt of a data uplink's PHYPayload.
fn dev_addr_fcnt(phy: &[u8]) -> (u32, u32) {
    let addr = u32::from_le_bytes(phy[1..5].try_into().expect("DevAddr"));
    let fcnt = u32::from(u16::from_le_bytes(phy[6..8].try_into().expect("FCnt")));
    (addr, fcnt)
}

/// What ChirpStack would accept of the uplinks as they reached the broker (first copy of
/// each; a redelivered copy is deduplicated away).
fn network_server_double(ups: &[Seen]) -> Verdicts {
    let mut seen = HashSet::new();
    let arrivals: Vec<(SystemTime, u32, u32)> = ups
        .iter()
        .filter(|s| seen.insert(s.seq()))
        .map(|s| {
            let (addr, fcnt) = dev_addr_fcnt(&s.uplink().phy_payload);
            (s.at, addr, fcnt)
        })
        .collect();
    let mut v = Verdicts::default();
    let mut next_fcnt: HashMap<u32, u32> = HashMap::new();
    for (i, &(at, addr, fcnt)) in arrivals.iter().enumerate() {
        let window_start = at.checked_sub(BURST_WINDOW).expect("time");
        let burst = arrivals[..i].iter().filter(|(t, ..)| *t > window_start).count();
        if burst >= BURST_CAPACITY {
            v.refused.push((addr, fcnt, "zero items in collect set"));
            continue;
        }
        // A later uplink of the same device arriving within the race overtakes this one.
        let overtaken = arrivals[i + 1..]
            .iter()
            .take_while(|(t, ..)| t.duration_since(at).unwrap_or_default() < RACE)
            .any(|(_, a, _)| *a == addr);
        if overtaken {
            v.refused.push((addr, fcnt, "FCntUp already updated"));
            continue;
        }
        let next = next_fcnt.entry(addr).or_insert(0);
        if fcnt < *next {
            v.refused.push((addr, fcnt, "frame-counter reset"));
            continue;
        }
        *next = fcnt + 1;
        v.accepted.entry(addr).or_default().push(fcnt);
    }
    v
}

const DEVICES: [&str; 3] = ["26011001", "26011002", "26011003"];
/// One uplink a second per device (real devices are further apart still), 18 each.
const INTERVAL_MS: u64 = 1000;
const COUNT: u64 = 18;

/// Three devices; the broker goes away for 8 s after the first uplinks and comes back.
/// Returns the subscriber's log and the seqs received while the broker was away.
fn outage_run(dir: &std::path::Path, pacing: &str) -> (Subscriber, Berrygw, Mosquitto, i64) {
    let mut broker = Mosquitto::start(dir, None);
    let sub = Subscriber::connect(broker.port, "eu868/gateway/+/event/#", None);
    let devices: Vec<String> = DEVICES
        .iter()
        .enumerate()
        .map(|(i, a)| sim_device(&format!("d{i}"), "water_meter", a, INTERVAL_MS, Some(COUNT)))
        .collect();
    let radio = format!("[radio]\nkind = \"sim\"\n\n[radio.sim]\nseed = 7\n\n{}\n", devices.join("\n"));
    let sinks = format!(
        "[sinks.chirpstack]\nserver = \"{}\"\nreconnect_min_ms = 200\nreconnect_max_ms = 1000\nkeep_alive_secs = 5\n{pacing}\n",
        broker.url(false)
    );
    let gw = Berrygw::start(dir, &config_with_radio(&dir.join("s"), "sqlite", &radio, &sinks));
    sub.wait_uplinks(3, Duration::from_secs(30));
    broker.stop();
    std::thread::sleep(Duration::from_secs(8));
    let back_at = now_ms();
    broker.restart();
    sub.wait_uplinks(DEVICES.len() * COUNT as usize, Duration::from_secs(120));
    (sub, gw, broker, back_at)
}

#[test]
fn a_replayed_backlog_is_accepted_whole_by_the_network_server_in_order_per_device() {
    let dir = tempfile::tempdir().expect("tmp");
    // The shipped defaults: no replay_gap_ms or replay_rate in the config.
    let (sub, _gw, broker, back_at) = outage_run(dir.path(), "");
    let ups = sub.on_topic("/event/up");
    let backlog = ups.iter().filter(|s| {
        let ms: i64 = s.uplink().rx_info.expect("rx").metadata["berrygw_received_ms"].parse().expect("ms");
        ms < back_at - 1000 && s.at > SystemTime::UNIX_EPOCH + Duration::from_millis(back_at as u64)
    });
    assert!(backlog.count() >= 12, "a backlog was replayed after the outage");

    let v = network_server_double(&ups);
    assert!(v.refused.is_empty(), "refused by the network server: {:?}", v.refused);
    for (addr, fcnts) in &v.accepted {
        let expected: Vec<u32> = (0..COUNT as u32).collect();
        assert_eq!(fcnts, &expected, "device {addr:08x}: every uplink, in order");
    }
    assert_eq!(v.accepted.len(), DEVICES.len());

    // The network server answers a replayed uplink (an ACK, say) in its RX1 window, which
    // closed seconds ago: refused TOO_LATE, never transmitted.
    let old = ups
        .iter()
        .map(Seen::uplink)
        .find(|u| {
            u.rx_info.as_ref().expect("rx").metadata["berrygw_received_ms"].parse::<i64>().expect("ms")
                < back_at - 2000
        })
        .expect("a replayed uplink");
    let mut down = downlink_command(7001);
    let tx = down.items[0].tx_info.as_mut().expect("tx_info");
    tx.timing = Some(gw::Timing {
        parameters: Some(gw::timing::Parameters::Delay(gw::DelayTimingInfo {
            delay: Some(chirpstack_api::pbjson_types::Duration { seconds: 1, nanos: 0 }),
        })),
    });
    tx.context = old.rx_info.expect("rx").context;
    let (client, mut conn) = Client::new(MqttOptions::new("test-ns", "127.0.0.1", broker.port), 10);
    std::thread::spawn(move || for _ in conn.iter() {});
    client
        .publish("eu868/gateway/0016c001ff10a235/command/down", QoS::AtLeastOnce, false, down.encode_to_vec())
        .expect("publish");
    let ack = wait_for(Duration::from_secs(20), "event/ack", || {
        sub.on_topic("/event/ack")
            .iter()
            .filter_map(|s| gw::DownlinkTxAck::decode(s.payload.as_slice()).ok())
            .find(|a| a.downlink_id == 7001)
    });
    assert_eq!(ack.items[0].status(), gw::TxAckStatus::TooLate, "{ack:?}");
}

#[test]
fn without_pacing_the_same_backlog_is_mostly_refused() {
    // What berrygw did before pacing, and what the double is for: the backlog goes out
    // in one burst and the network server refuses most of each device's part of it.
    let dir = tempfile::tempdir().expect("tmp");
    let (sub, ..) = outage_run(dir.path(), "replay_gap_ms = 0\nreplay_rate = 0\n");
    let v = network_server_double(&sub.on_topic("/event/up"));
    assert!(
        v.refused.len() >= 9,
        "a burst of each device's backlog races in the network server: refused {:?}",
        v.refused
    );
}
