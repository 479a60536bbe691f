use super::*;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use berrygw_lora::{
    CodeRate, CrcStatus, Eui64, Frequency, Modulation, TxAck, TxStatus, TxTiming, UplinkFrame,
};
use chirpstack_api::pbjson_types::Timestamp;
use prost::Message;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::time::Instant;

use super::translate::*;
use super::window::*;
use crate::journal::{Backend, Journal, JournalConfig, NewRecord, Record, Seq};
use crate::sink::chirpstack::{self, RecordKind, StatsSnapshot};
use crate::sink::pace::PaceSettings;
use crate::sink::{SinkCounters, SinkRadioIo};
use berrygw_lora::DownlinkFrame;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Guard against a hung test, not a performance bound.
const HANG_GUARD: Duration = Duration::from_secs(30);
const GATEWAY: Eui64 = Eui64([0x00, 0x16, 0xc0, 0x01, 0xff, 0x10, 0xa2, 0x35]);
const PUSH_DATA: u8 = 0;
const PULL_DATA: u8 = 2;
const TX_ACK: u8 = 5;

/// A datagram as the fake network server sees it, split by hand (not by our codec).
#[derive(Debug)]
struct Seen {
    token: u16,
    ident: u8,
    eui: Option<[u8; 8]>,
    json: Option<Value>,
    raw: Vec<u8>,
}

struct Harness {
    _dir: tempfile::TempDir,
    journal: Journal,
    counters: Arc<SinkCounters>,
    /// Plays the network server.
    lns: UdpSocket,
    /// The sink's address, learnt from its first datagram.
    sink: Option<SocketAddr>,
    downlinks: mpsc::Receiver<DownlinkFrame>,
    tx_acks: mpsc::Sender<TxAck>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
    next_token: u16,
}

async fn start(tweak: impl FnOnce(&mut SemtechUdpSettings)) -> Harness {
    let dir = tempfile::tempdir().expect("tmp");
    let journal = Journal::open(
        "test",
        JournalConfig {
            commit_interval: Duration::from_millis(10),
            commit_max_records: 100,
            ..JournalConfig::new(Backend::Log, dir.path().join("j.log"), 1 << 20)
        },
    )
    .expect("journal");
    let lns = UdpSocket::bind("127.0.0.1:0").await.expect("lns socket");
    let port = lns.local_addr().expect("addr").port();
    let mut settings =
        SemtechUdpSinkConfig::new(LnsAddress { host: "127.0.0.1".into(), port }).settings(GATEWAY);
    settings.push_timeout = Duration::from_millis(100);
    tweak(&mut settings);
    let counters = Arc::new(SinkCounters::default());
    let (down_tx, downlinks) = mpsc::channel(8);
    let (tx_acks, ack_rx) = mpsc::channel(8);
    let (shutdown, shutdown_rx) = watch::channel(false);
    let task = tokio::spawn(run(
        settings,
        journal.clone(),
        counters.clone(),
        SinkRadioIo { downlinks: down_tx, tx_acks: ack_rx },
        shutdown_rx,
    ));
    Harness {
        _dir: dir,
        journal,
        counters,
        lns,
        sink: None,
        downlinks,
        tx_acks,
        shutdown,
        task,
        next_token: 0x7000,
    }
}

fn uplink(payload: &[u8], counter_us: u32, received_at: SystemTime) -> UplinkFrame {
    let mut f = UplinkFrame::example(payload.to_vec(), CrcStatus::Ok);
    (f.counter_us, f.received_at) = (counter_us, received_at);
    f
}

impl Harness {
    async fn append_uplink(&self, f: &UplinkFrame) {
        let msg = chirpstack::uplink_message(&GATEWAY.to_string(), f, 1, 1);
        let record = NewRecord {
            kind: RecordKind::Uplink as u8,
            received_at_ms: berrygw_core::unix_ms(f.received_at),
            payload: msg.encode_to_vec(),
        };
        self.journal.append(record).await.expect("append");
    }

    async fn recv(&mut self) -> Seen {
        let mut buf = vec![0; 65_536];
        let (len, from) = tokio::time::timeout(HANG_GUARD, self.lns.recv_from(&mut buf))
            .await
            .expect("a datagram in time")
            .expect("recv");
        self.sink = Some(from);
        let raw = buf[..len].to_vec();
        assert!(len >= 4 && raw[0] == 2, "GWMP v2 datagram expected: {raw:?}");
        let ident = raw[3];
        let (eui, rest) = match ident {
            PUSH_DATA | PULL_DATA | TX_ACK => {
                let eui: [u8; 8] = raw[4..12].try_into().expect("EUI");
                (Some(eui), &raw[12..])
            }
            _ => (None, &raw[4..]),
        };
        let json = (!rest.is_empty()).then(|| serde_json::from_slice(rest).expect("JSON body"));
        Seen { token: u16::from_be_bytes([raw[1], raw[2]]), ident, eui, json, raw }
    }

    /// The next PUSH_DATA; keepalives are skipped.
    async fn recv_push(&mut self) -> Seen {
        loop {
            let seen = self.recv().await;
            if seen.ident == PUSH_DATA {
                assert_eq!(seen.eui, Some(GATEWAY.0), "our EUI is in the header");
                return seen;
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        if self.sink.is_none() {
            self.recv().await; // the first PULL_DATA says where the sink is
        }
        let to = self.sink.expect("sink address");
        self.lns.send_to(bytes, to).await.expect("send");
    }

    async fn push_ack(&mut self, token: u16) {
        self.send(&[2, (token >> 8) as u8, token as u8, 1]).await;
    }

    async fn pull_resp(&mut self, token: u16, txpk: &Value) {
        let mut d = vec![2, (token >> 8) as u8, token as u8, 3];
        d.extend_from_slice(json!({ "txpk": txpk }).to_string().as_bytes());
        self.send(&d).await;
    }

    async fn downlink(&mut self) -> DownlinkFrame {
        tokio::time::timeout(HANG_GUARD, self.downlinks.recv())
            .await
            .expect("downlink in time")
            .expect("open")
    }

    /// Returns once the sink has handled everything sent to it before (it handles
    /// datagrams in order): a PULL_RESP goes through and its downlink comes out.
    async fn sync(&mut self) {
        self.next_token += 1;
        let token = self.next_token;
        self.pull_resp(token, &txpk()).await;
        self.downlink().await;
    }

    async fn wait_acked(&self, seq: u64) {
        let mut stats = self.journal.watch();
        tokio::time::timeout(HANG_GUARD, stats.wait_for(|s| s.acked >= Seq(seq)))
            .await
            .expect("acked in time")
            .expect("journal open");
    }

    /// The journal's durable ack point once every ack requested so far is committed.
    async fn durable_ack(&self) -> Seq {
        self.journal.flush().await.expect("flush");
        self.journal.watch().borrow().acked
    }

    fn counter(&self, c: fn(&SinkCounters) -> &std::sync::atomic::AtomicU64) -> u64 {
        c(&self.counters).load(Ordering::Relaxed)
    }
}

fn txpk() -> Value {
    json!({"imme": false, "tmst": 1_234_567, "freq": 869.525, "rfch": 0, "powe": 14, "modu": "LORA",
           "datr": "SF9BW125", "codr": "4/5", "ipol": true, "size": 4, "data": "YAECAw=="})
}

fn rxpk_data(seen: &Seen) -> Vec<String> {
    seen.json
        .as_ref()
        .and_then(|j| j["rxpk"].as_array())
        .map_or_else(Vec::new, |a| a.iter().map(|p| p["data"].as_str().expect("data").to_string()).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_is_paced_per_device_one_device_passing_another_s_held_uplink() {
    let mut h = start(|s| s.pace = PaceSettings { device_gap: Duration::from_millis(300), rate: 0 }).await;
    let t = SystemTime::now() - Duration::from_secs(600);
    let data_up = |dev: u8, fcnt: u8| [0x40, dev, 0, 0, 0x26, 0, fcnt, 0, 2, 9, 9, 9, 9];
    // A backlog: device 1's two uplinks (300 ms apart when they leave), device 2's after them.
    h.append_uplink(&uplink(&data_up(1, 0), 1, t)).await;
    h.append_uplink(&uplink(&data_up(1, 1), 2, t + Duration::from_millis(300))).await;
    h.append_uplink(&uplink(&data_up(2, 0), 3, t + Duration::from_millis(600))).await;
    // Base64 of data_up(1, 0), data_up(2, 0), data_up(1, 1).
    let (d1f0, d2f0, d1f1) = ("QAEAACYAAAACCQkJCQ==", "QAIAACYAAAACCQkJCQ==", "QAEAACYAAQACCQkJCQ==");
    let mut sent = Vec::new();
    while sent.len() < 3 {
        let seen = h.recv_push().await;
        sent.extend(rxpk_data(&seen));
        h.push_ack(seen.token).await;
    }
    assert_eq!(sent, [d1f0, d2f0, d1f1], "device 2 passes device 1's held uplink; each device in order");
    h.wait_acked(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uplinks_go_out_as_push_data_in_seq_order_with_their_radio_fields() {
    let mut h = start(|_| {}).await;
    let long_ago = UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
    let mut frames: Vec<UplinkFrame> =
        (0u8..3).map(|i| uplink(&[0x40, i, i, i], 1_000_000 * u32::from(i) + 7, long_ago)).collect();
    frames[1].modulation =
        Modulation::Lora { spreading_factor: 12, bandwidth: 125_000, code_rate: CodeRate::Cr4_6 };
    (frames[1].rssi, frames[1].snr, frames[1].channel, frames[1].rf_chain) = (-119, -15.25, 6, 1);
    frames[1].frequency = Frequency(867_700_000);
    frames[2].crc = CrcStatus::Bad;
    for f in &frames {
        h.append_uplink(f).await;
    }

    let mut rxpk: Vec<Value> = Vec::new();
    while rxpk.len() < 3 {
        let seen = h.recv_push().await;
        rxpk.extend(seen.json.as_ref().expect("json")["rxpk"].as_array().expect("rxpk").iter().cloned());
        h.push_ack(seen.token).await;
    }
    let data: Vec<&str> = rxpk.iter().map(|p| p["data"].as_str().expect("data")).collect();
    assert_eq!(data, ["QAAAAA==", "QAEBAQ==", "QAICAg=="], "journal order");
    let p = &rxpk[1];
    assert_eq!(p["time"], "2023-11-14T22:13:20.123456Z", "the original receive time");
    assert_eq!(p["tmst"], 1_000_007);
    assert_eq!(p["freq"], 867.7);
    assert_eq!((&p["modu"], &p["datr"], &p["codr"]), (&json!("LORA"), &json!("SF12BW125"), &json!("4/6")));
    assert_eq!(
        (&p["rssi"], &p["lsnr"], &p["chan"], &p["rfch"]),
        (&json!(-119), &json!(-15.25), &json!(6), &json!(1))
    );
    assert_eq!((&p["stat"], &p["size"]), (&json!(1), &json!(4)));
    assert_eq!(rxpk[2]["stat"], -1);
    h.wait_acked(3).await;
    assert_eq!(h.counter(|c| &c.forwarded), 3);
    assert_eq!(h.counter(|c| &c.bad_records), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_push_data_is_sent_again_and_stays_in_the_journal_until_acked() {
    let mut h = start(|_| {}).await;
    h.append_uplink(&uplink(&[0x40, 1], 1, SystemTime::now())).await;
    let first = h.recv_push().await;
    let again = h.recv_push().await;
    assert_eq!(again.raw, first.raw, "the same datagram, same token");
    let third = h.recv_push().await;
    assert_eq!(third.raw, first.raw);
    assert_eq!(h.durable_ack().await, Seq::NONE, "nothing acknowledged without a PUSH_ACK");
    assert_eq!(h.journal.watch().borrow().records, 1);

    h.push_ack(first.token).await;
    h.wait_acked(1).await;
    assert_eq!(h.durable_ack().await, Seq(1), "the ack is made durable, the record deleted");
    assert_eq!(h.journal.watch().borrow().records, 0);
    assert_eq!(h.counter(|c| &c.forwarded), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_is_acked_only_up_to_the_oldest_unacknowledged_datagram() {
    let mut h = start(|s| {
        s.max_inflight = 3;
        s.max_rxpk_per_datagram = 1;
        s.push_timeout = Duration::from_secs(30); // no retransmission in this test
    })
    .await;
    for i in 0u8..3 {
        h.append_uplink(&uplink(&[0x40, i], 1, SystemTime::now())).await;
    }
    let mut sent = Vec::new();
    while sent.len() < 3 {
        sent.push(h.recv_push().await);
    }
    let data: Vec<Vec<String>> = sent.iter().map(rxpk_data).collect();
    assert_eq!(data, [vec!["QAA=".to_string()], vec!["QAE=".to_string()], vec!["QAI=".to_string()]]);

    h.push_ack(sent[2].token).await;
    h.push_ack(sent[1].token).await;
    h.sync().await;
    assert_eq!(h.durable_ack().await, Seq::NONE, "seq 1 is still out: nothing may leave");
    assert_eq!(h.counter(|c| &c.forwarded), 2);

    h.push_ack(sent[0].token).await;
    h.wait_acked(3).await;
    assert_eq!(h.counter(|c| &c.forwarded), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_stats_go_out_as_stat() {
    let mut h = start(|_| {}).await;
    let at = UNIX_EPOCH + Duration::from_secs(1_389_517_168);
    let snapshot = StatsSnapshot {
        rx_received: 5,
        rx_received_ok: 4,
        tx_received: 2,
        tx_emitted: 1,
        ..Default::default()
    };
    let msg = chirpstack::stats_message(&GATEWAY.to_string(), at, snapshot);
    let record = NewRecord {
        kind: RecordKind::Stats as u8,
        received_at_ms: berrygw_core::unix_ms(at),
        payload: msg.encode_to_vec(),
    };
    h.journal.append(record).await.expect("append");
    let seen = h.recv_push().await;
    let stat = &seen.json.as_ref().expect("json")["stat"];
    assert_eq!(stat["time"], "2014-01-12 08:59:28 GMT");
    assert_eq!((&stat["rxnb"], &stat["rxok"], &stat["rxfw"]), (&json!(5), &json!(4), &json!(4)));
    assert_eq!((&stat["dwnb"], &stat["txnb"]), (&json!(2), &json!(1)));
    assert!(stat["ackr"].is_number(), "{stat}");
    assert!(seen.json.as_ref().expect("json").get("rxpk").is_none());
    h.push_ack(seen.token).await;
    h.wait_acked(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_resp_goes_to_the_radio_and_its_tx_ack_goes_back() {
    let mut h = start(|_| {}).await;
    let pull = h.recv().await;
    assert_eq!((pull.ident, pull.eui), (PULL_DATA, Some(GATEWAY.0)), "keepalive first");
    h.send(&[2, pull.raw[1], pull.raw[2], 4]).await; // PULL_ACK
    h.pull_resp(0x4242, &txpk()).await;
    let d = h.downlink().await;
    assert_eq!(d.phy_payload, vec![0x60, 1, 2, 3]);
    assert_eq!(d.frequency, Frequency(869_525_000));
    assert_eq!(
        d.modulation,
        Modulation::Lora { spreading_factor: 9, bandwidth: 125_000, code_rate: CodeRate::Cr4_5 }
    );
    assert_eq!((d.power_dbm, d.timing, d.invert_iq), (14, TxTiming::Counter(1_234_567), true));
    assert!(h.counters.connected.load(Ordering::Relaxed), "PULL_ACK means the server answers");

    h.tx_acks.send(TxAck { downlink_id: d.downlink_id, status: TxStatus::TooLate }).await.expect("ack");
    let ack = loop {
        let seen = h.recv().await;
        if seen.ident == TX_ACK {
            break seen;
        }
    };
    assert_eq!((ack.token, ack.eui), (0x4242, Some(GATEWAY.0)), "TX_ACK answers the PULL_RESP's token");
    assert_eq!(ack.json, Some(json!({"txpk_ack": {"error": "TOO_LATE"}})));
    assert_eq!(h.counter(|c| &c.downlinks_received), 1);
    assert_eq!(h.counter(|c| &c.tx_acks), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_answer_to_a_replayed_uplink_is_refused_too_late_not_sent_to_the_radio() {
    let mut h = start(|_| {}).await;
    // An uplink received 80 minutes ago: its counter has turned since, the radio could not tell.
    let replayed = uplink(
        &[0x80, 1, 0, 0, 0x26, 0, 0, 0, 2, 9, 9, 9, 9],
        1_000_000,
        SystemTime::now() - Duration::from_secs(4800),
    );
    h.append_uplink(&replayed).await;
    let push = h.recv_push().await;
    h.push_ack(push.token).await;
    // The network server's ACK for it, in its RX1 window (tmst + 1 s).
    let mut ack_txpk = txpk();
    ack_txpk["tmst"] = json!(2_000_000);
    h.pull_resp(0x5151, &ack_txpk).await;
    let ack = loop {
        let seen = h.recv().await;
        if seen.ident == TX_ACK {
            break seen;
        }
    };
    assert_eq!(ack.token, 0x5151);
    assert_eq!(ack.json, Some(json!({"txpk_ack": {"error": "TOO_LATE"}})));
    assert!(h.downlinks.try_recv().is_err(), "nothing reached the radio");
    // A downlink answering no uplink we sent (Class C at a counter): the radio judges it.
    let mut other = txpk();
    other["tmst"] = json!(900_000_000);
    h.pull_resp(0x5252, &other).await;
    assert_eq!(h.downlink().await.timing, TxTiming::Counter(900_000_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_the_network_server_is_counted_and_ignored() {
    let mut h = start(|_| {}).await;
    let mut bad_txpk = txpk();
    bad_txpk["data"] = json!("!!not base64!!");
    let mut bad_pull_resp = vec![2, 0, 9, 3];
    bad_pull_resp.extend_from_slice(json!({ "txpk": bad_txpk }).to_string().as_bytes());
    let mut push_data = vec![2, 0, 1, 0];
    push_data.extend_from_slice(&GATEWAY.0);
    push_data.extend_from_slice(b"{}");
    let garbage: Vec<Vec<u8>> = vec![
        (0..300u32).map(|i| (i * 7919 % 251) as u8).collect(),
        vec![9, 0, 1, 1],             // wrong version
        vec![2, 0],                   // truncated header
        vec![2, 0, 1, 3, b'{', b'"'], // PULL_RESP, bad JSON
        bad_pull_resp,                // PULL_RESP, bad base64
        vec![2, 0, 1, 0x42],          // unknown identifier
        push_data,                    // forwarders send those, servers do not
    ];
    for g in &garbage {
        h.send(g).await;
    }
    h.push_ack(0x0bad).await; // a PUSH_ACK for nothing is ignored, not counted
    h.sync().await;
    assert_eq!(h.counter(|c| &c.bad_commands), garbage.len() as u64);
    assert_eq!(h.counter(|c| &c.downlinks_received), 1, "only the good PULL_RESP");
    assert!(h.downlinks.try_recv().is_err());

    h.append_uplink(&uplink(&[0x40, 7], 1, SystemTime::now())).await;
    let seen = h.recv_push().await;
    h.push_ack(seen.token).await;
    h.wait_acked(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_record_is_set_aside_and_leaves_the_journal_in_order() {
    let mut h = start(|_| {}).await;
    let junk = NewRecord { kind: RecordKind::Uplink as u8, received_at_ms: 0, payload: vec![0xff; 9] };
    h.journal.append(junk).await.expect("append");
    h.append_uplink(&uplink(&[0x40, 9], 1, SystemTime::now())).await;
    let seen = h.recv_push().await;
    assert_eq!(rxpk_data(&seen), ["QAk="]);
    h.push_ack(seen.token).await;
    h.wait_acked(2).await;
    assert_eq!(h.counter(|c| &c.bad_records), 1);
}

/// Stored records whose time GWMP cannot write (chrono used to panic on them,
/// killing the sink; the record then stayed in the journal to kill it again).
fn records_with_unwritable_times() -> Vec<NewRecord> {
    let far = Timestamp { seconds: 10_000_000_000_000, nanos: 0 };
    let mut no_time =
        chirpstack::uplink_message(&GATEWAY.to_string(), &uplink(&[0x40, 1], 1, SystemTime::now()), 1, 1);
    no_time.rx_info.as_mut().expect("rx_info").gw_time = None;
    let mut far_time = no_time.clone();
    far_time.rx_info.as_mut().expect("rx_info").gw_time = Some(far);
    let mut stats =
        chirpstack::stats_message(&GATEWAY.to_string(), SystemTime::now(), StatsSnapshot::default());
    stats.time = Some(far);
    let record = |kind: RecordKind, received_at_ms: i64, payload: Vec<u8>| NewRecord {
        kind: kind as u8,
        received_at_ms,
        payload,
    };
    vec![
        record(RecordKind::Uplink, 10_000_000_000_000_000, no_time.encode_to_vec()),
        record(RecordKind::Uplink, 10_000_000_000_000_000, far_time.encode_to_vec()),
        record(RecordKind::Stats, 10_000_000_000_000_000, stats.encode_to_vec()),
    ]
}

#[test]
fn records_with_unwritable_times_are_bad_records_not_panics() {
    for (i, r) in records_with_unwritable_times().into_iter().enumerate() {
        let r = Record {
            seq: Seq(i as u64 + 1),
            kind: r.kind,
            received_at_ms: r.received_at_ms,
            payload: r.payload,
        };
        let bad = wire_object(&r, 0.0).expect_err("no writable time");
        assert_eq!(bad.cause, "time out of range");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_with_unwritable_times_are_set_aside_and_counted_and_the_sink_goes_on() {
    let mut h = start(|_| {}).await;
    for r in records_with_unwritable_times() {
        h.journal.append(r).await.expect("append");
    }
    h.append_uplink(&uplink(&[0x40, 9], 1, SystemTime::now())).await;
    let seen = h.recv_push().await;
    assert_eq!(rxpk_data(&seen), ["QAk="]);
    h.push_ack(seen.token).await;
    h.wait_acked(4).await;
    assert_eq!(h.counter(|c| &c.bad_records), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_server_port_makes_the_sink_start_over() {
    let h = start(|s| {
        s.reconnect_min = Duration::from_millis(20);
        s.keepalive = Duration::from_millis(50);
    })
    .await;
    // Every PULL_DATA to the closed port comes back as an ICMP "port unreachable".
    drop(h.lns);
    tokio::time::timeout(HANG_GUARD, async {
        while h.counters.reconnects.load(Ordering::Relaxed) < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("restarted after refusals");
    assert!(!h.counters.connected.load(Ordering::Relaxed));
    let _ = h.shutdown.send(true);
    tokio::time::timeout(HANG_GUARD, h.task).await.expect("stopped in time").expect("joined");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_briefly_for_outstanding_push_acks() {
    let mut h = start(|s| s.push_timeout = Duration::from_secs(30)).await;
    h.append_uplink(&uplink(&[0x40, 3], 1, SystemTime::now())).await;
    let seen = h.recv_push().await;
    let _ = h.shutdown.send(true);
    h.push_ack(seen.token).await;
    tokio::time::timeout(HANG_GUARD, &mut h.task).await.expect("stopped in time").expect("joined");
    assert_eq!(h.durable_ack().await, Seq(1), "the late PUSH_ACK still counted");
}

#[test]
fn window_acks_the_journal_only_past_a_fully_acknowledged_prefix() {
    let mut w = PushWindow::default();
    let now = Instant::now();
    w.push(Some(1), vec![1], (Seq(1), Seq(2)), 2, now);
    w.push(None, Vec::new(), (Seq(3), Seq(3)), 0, now); // a skipped record
    w.push(Some(2), vec![2], (Seq(4), Seq(5)), 2, now);
    assert_eq!(w.ack(2), Some(2));
    assert_eq!(w.take_ack_point(None), Seq(0), "the first datagram is still out");
    assert_eq!(w.ack(2), None, "duplicate PUSH_ACK ignored");
    assert_eq!(w.ack(1), Some(2));
    assert_eq!(w.take_ack_point(None), Seq(5));
    assert!(w.is_empty());
}

#[test]
fn with_pacing_the_ack_point_stays_below_a_held_or_waiting_older_record() {
    let mut w = PushWindow::default();
    let now = Instant::now();
    // Device A's seq 2 is held by the pacer while seqs 1 and 3 (other devices) go.
    w.push(Some(1), vec![1], (Seq(1), Seq(3)), 2, now);
    w.ack(1);
    assert_eq!(w.take_ack_point(Some(Seq(2))), Seq(1), "not past the held seq 2");
    // Seq 2 goes, seq 4 after it; seq 4's datagram is acknowledged first.
    w.push(Some(2), vec![2], (Seq(2), Seq(2)), 1, now);
    w.push(Some(3), vec![3], (Seq(4), Seq(4)), 1, now);
    w.ack(3);
    assert_eq!(w.take_ack_point(None), Seq(1), "seq 2 still waits for its PUSH_ACK");
    w.ack(2);
    assert_eq!(w.take_ack_point(None), Seq(4));
}

#[test]
fn retransmissions_back_off_up_to_the_maximum() {
    let mut w = PushWindow::default();
    let t0 = Instant::now();
    w.push(Some(1), vec![7], (Seq(1), Seq(1)), 1, t0);
    let (first, max) = (Duration::from_secs(1), Duration::from_secs(5));
    let mut at = t0;
    let mut waits = Vec::new();
    for _ in 0..5 {
        assert_eq!(w.due(at, first, max), vec![vec![7]]);
        let next = w.next_retry().expect("waiting");
        waits.push(next - at);
        at = next;
    }
    assert_eq!(waits, [2, 4, 5, 5, 5].map(Duration::from_secs));
    assert!(w.due(at - Duration::from_millis(1), first, max).is_empty(), "not yet due");
}

#[test]
fn config_parses_with_defaults_and_refuses_nonsense() {
    let c: SemtechUdpSinkConfig =
        toml::from_str("server = \"eu1.cloud.thethings.network:1700\"").expect("parse");
    assert_eq!(
        c,
        SemtechUdpSinkConfig::new(LnsAddress { host: "eu1.cloud.thethings.network".into(), port: 1700 })
    );
    assert_eq!(c.check(), Ok(()));
    let s = c.settings(GATEWAY);
    assert_eq!((s.keepalive, s.max_inflight, s.max_datagram_bytes), (Duration::from_secs(10), 1, 1400));
    let v6: SemtechUdpSinkConfig = toml::from_str("server = \"[2001:db8::1]:1700\"").expect("v6");
    assert_eq!(v6.server.to_string(), "[2001:db8::1]:1700");
    for bad in ["lns.example.org", "lns.example.org:0", ":1700", "2001:db8::1:1700", "a b:1700"] {
        assert!(toml::from_str::<SemtechUdpSinkConfig>(&format!("server = \"{bad}\"")).is_err(), "{bad}");
    }
    assert!(toml::from_str::<SemtechUdpSinkConfig>("server = \"a:1\"\nretries = 3").is_err(), "unknown key");
    let c = SemtechUdpSinkConfig { dead_after_secs: 5, ..c };
    assert!(c.check().expect_err("dead_after ≤ keepalive").contains("dead_after_secs"));
}
