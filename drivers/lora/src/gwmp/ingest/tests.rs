//! Tests of the GWMP ingest over real UDP sockets on the loopback: PUSH_DATA to
//! uplinks and PUSH_ACK only once stored, downlinks as PULL_RESP and their TX_ACKs,
//! the pinned forwarder and the datagrams refused for their source or form, and
//! the configuration's checks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::*;
use crate::frame::{
    CodeRate, CrcStatus, DownlinkFrame, Frequency, Modulation, TxAck, TxStatus, TxTiming, UplinkFrame,
};
use crate::phy::Eui64;
use crate::radio::Taken;
use tokio::net::UdpSocket;

/// Guard against a hung test, not a performance bound.
const HANG_GUARD: Duration = Duration::from_secs(20);
const FORWARDER_EUI: [u8; 8] = [0xaa, 0x55, 0x5a, 0, 0, 0, 0, 0x01];

struct Harness {
    uplinks: mpsc::Receiver<UplinkFrame>,
    downlinks: mpsc::Sender<DownlinkFrame>,
    tx_acks: mpsc::Receiver<TxAck>,
    handle: GwmpHandle,
    task: JoinHandle<Result<(), RadioError>>,
    /// Plays the packet forwarder.
    forwarder: UdpSocket,
}

async fn start(config: GwmpConfig) -> Harness {
    start_with_room(config, 64).await
}

/// As `start`, with room for `room` uplinks between the ingest and the pipeline.
async fn start_with_room(config: GwmpConfig, room: usize) -> Harness {
    start_with(config, room, None).await
}

/// As `start_with_room`, with the pipeline's account of stored frames when `taken` is set.
async fn start_with(config: GwmpConfig, room: usize, taken: Option<watch::Receiver<Taken>>) -> Harness {
    let (up_tx, uplinks) = mpsc::channel(room);
    let (downlinks, down_rx) = mpsc::channel(8);
    let (ack_tx, tx_acks) = mpsc::channel(8);
    let ingest = Box::new(
        GwmpIngest::new(GwmpConfig { bind: "127.0.0.1:0".parse().expect("addr"), ..config }).expect("config"),
    );
    assert_eq!(ingest.kind(), "gwmp");
    let mut handle = ingest.handle();
    let task =
        tokio::spawn(ingest.start(RadioIo { uplinks: up_tx, downlinks: down_rx, tx_acks: ack_tx, taken }));
    let server =
        tokio::time::timeout(HANG_GUARD, handle.local_addr()).await.expect("bound in time").expect("bound");
    let forwarder = UdpSocket::bind("127.0.0.1:0").await.expect("client socket");
    forwarder.connect(server).await.expect("connect");
    Harness { uplinks, downlinks, tx_acks, handle, task, forwarder }
}

impl Harness {
    async fn send(&self, bytes: &[u8]) {
        self.forwarder.send(bytes).await.expect("send");
    }

    async fn recv(&self) -> Vec<u8> {
        let mut buf = vec![0; 65_536];
        let len = tokio::time::timeout(HANG_GUARD, self.forwarder.recv(&mut buf))
            .await
            .expect("an answer in time")
            .expect("recv");
        buf.truncate(len);
        buf
    }

    async fn uplink(&mut self) -> UplinkFrame {
        tokio::time::timeout(HANG_GUARD, self.uplinks.recv()).await.expect("uplink in time").expect("open")
    }

    async fn tx_ack(&mut self) -> TxAck {
        tokio::time::timeout(HANG_GUARD, self.tx_acks.recv()).await.expect("tx ack in time").expect("open")
    }

    async fn pull(&self, version: u8, token: u16) {
        let mut d = vec![version, (token >> 8) as u8, token as u8, 2];
        d.extend_from_slice(&FORWARDER_EUI);
        self.send(&d).await;
        assert_eq!(self.recv().await, vec![version, (token >> 8) as u8, token as u8, 4], "PULL_ACK");
    }

    fn stat(&self, counter: fn(&GwmpStats) -> &AtomicU64) -> u64 {
        counter(self.handle.stats()).load(Ordering::Relaxed)
    }
}

fn push_data(token: u16, eui: [u8; 8], json: &str) -> Vec<u8> {
    let mut d = vec![2, (token >> 8) as u8, token as u8, 0];
    d.extend_from_slice(&eui);
    d.extend_from_slice(json.as_bytes());
    d
}

/// A PUSH_ACK tells the forwarder its frames are safe: it goes out only once the pipeline
/// has stored them, and never for a datagram one of whose frames it failed to store.
#[tokio::test]
async fn a_push_data_is_acknowledged_only_once_the_pipeline_stored_its_frames() {
    let (pipeline, taken) = watch::channel(Taken::default());
    let mut h = start_with(GwmpConfig::default(), 64, Some(taken)).await;
    let two = format!(r#"{{"rxpk":[{},{}]}}"#, rxpk("AQID"), rxpk("AQID"));

    h.send(&push_data(1, FORWARDER_EUI, &two)).await;
    h.uplink().await;
    h.uplink().await;
    pipeline.send_modify(|t| t.handled = 1);
    // Not yet: the second frame is not settled. Settling it releases the PUSH_ACK.
    pipeline.send_modify(|t| t.handled = 2);
    assert_eq!(h.recv().await, vec![2, 0, 1, 1], "both frames stored: PUSH_ACK");

    h.send(&push_data(2, FORWARDER_EUI, &two)).await;
    h.uplink().await;
    h.uplink().await;
    pipeline.send_modify(|t| {
        t.handled = 3;
        t.last_failed = 3;
    });
    pipeline.send_modify(|t| t.handled = 4);

    h.send(&push_data(3, FORWARDER_EUI, &one_rxpk("AQID"))).await;
    h.uplink().await;
    pipeline.send_modify(|t| t.handled = 5);
    assert_eq!(
        h.recv().await,
        vec![2, 0, 3, 1],
        "the next answer is datagram 3's: datagram 2's PUSH_ACK is withheld, one of its frames was not stored"
    );
}

fn one_rxpk(data: &str) -> String {
    format!(r#"{{"rxpk":[{}]}}"#, rxpk(data))
}

fn rxpk(data: &str) -> String {
    format!(
        r#"{{"tmst":42,"chan":0,"rfch":0,"freq":868.1,"stat":1,"modu":"LORA","datr":"SF7BW125","codr":"4/5","rssi":-60,"lsnr":9.0,"size":3,"data":"{data}"}}"#
    )
}

fn downlink(id: u32, timing: TxTiming) -> DownlinkFrame {
    DownlinkFrame {
        downlink_id: id,
        phy_payload: vec![0x20, 1, 2, 3, 4],
        frequency: Frequency(869_525_000),
        modulation: Modulation::Lora { spreading_factor: 12, bandwidth: 125_000, code_rate: CodeRate::Cr4_5 },
        power_dbm: 27,
        timing,
        invert_iq: true,
        board: 0,
        antenna: 0,
    }
}

#[tokio::test]
async fn push_ack_comes_only_once_the_frames_are_in_the_pipelines_hands() {
    let mut h = start_with_room(GwmpConfig::default(), 1).await;
    h.send(&push_data(1, FORWARDER_EUI, &one_rxpk("AQID"))).await;
    assert_eq!(h.recv().await, vec![2, 0, 1, 1], "the first frame fits: PUSH_ACK");
    // The pipeline is full: the second frame waits, and so does its PUSH_ACK.
    h.send(&push_data(2, FORWARDER_EUI, &one_rxpk("AQID"))).await;
    let mut buf = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_millis(300), h.forwarder.recv(&mut buf)).await;
    assert!(
        early.is_err(),
        "no PUSH_ACK for a frame not yet handed over: {:?}",
        early.map(|r| buf[..r.unwrap_or(0)].to_vec())
    );
    h.uplink().await;
    assert_eq!(h.recv().await, vec![2, 0, 2, 1], "PUSH_ACK once the pipeline took it");
    h.uplink().await;
}

#[tokio::test]
async fn a_downlink_whose_counter_time_has_passed_is_refused_too_late_before_the_forwarder() {
    let mut h = start(GwmpConfig::default()).await;
    h.pull(2, 0x0102).await;
    h.send(&push_data(1, FORWARDER_EUI, &one_rxpk("AQID"))).await; // tmst 42
    h.uplink().await;
    assert_eq!(h.recv().await, vec![2, 0, 1, 1], "PUSH_ACK");
    // The answer to an uplink heard a second before the latest one: its time has passed.
    h.downlinks.send(downlink(601, TxTiming::Counter(42u32.wrapping_sub(1_000_000)))).await.expect("send");
    assert_eq!(h.tx_ack().await, TxAck { downlink_id: 601, status: TxStatus::TooLate });
    assert_eq!(h.stat(|s| &s.downlinks_too_late), 1);
    // RX2 of the latest uplink is still ahead: it goes to the forwarder.
    h.downlinks.send(downlink(602, TxTiming::Counter(42 + 2_000_000))).await.expect("send");
    let resp = h.recv().await;
    assert_eq!((resp[0], resp[3]), (2, 3), "PULL_RESP");
    assert_eq!(h.stat(|s| &s.downlinks_sent), 1, "only the one on time was sent");
}

#[tokio::test]
async fn push_data_rxpks_become_uplinks_and_are_acknowledged_with_the_token() {
    let mut h = start(GwmpConfig::default()).await;
    let json = r#"{"rxpk":[
        {"time":"2030-01-02T03:04:05.678901Z","tmst":3512348611,"chan":2,"rfch":0,"freq":866.349812,"stat":1,"modu":"LORA","datr":"SF7BW125","codr":"4/6","rssi":-35,"lsnr":5.1,"size":4,"data":"QAECAw=="},
        {"tmst":100,"chan":7,"rfch":1,"freq":867.9,"stat":-1,"modu":"LORA","datr":"SF12BW125","codr":"4/5","rssi":-120,"rssis":-125,"lsnr":-17.5,"size":1,"data":"/w=="},
        {"tmst":200,"chan":8,"rfch":1,"freq":868.8,"stat":0,"modu":"FSK","datr":50000,"rssi":-75,"size":2,"data":"AAE="}
    ],"stat":{"time":"2014-01-12 08:59:28 GMT","rxnb":2,"rxok":2,"rxfw":2,"ackr":100.0,"dwnb":2,"txnb":2}}"#;
    let before = SystemTime::now();
    h.send(&push_data(0xbeef, FORWARDER_EUI, json)).await;
    assert_eq!(h.recv().await, vec![2, 0xbe, 0xef, 1], "PUSH_ACK echoes the token");

    let a = h.uplink().await;
    assert_eq!(a.phy_payload, vec![0x40, 1, 2, 3]);
    assert_eq!(a.frequency, Frequency(866_349_812));
    assert_eq!(
        a.modulation,
        Modulation::Lora { spreading_factor: 7, bandwidth: 125_000, code_rate: CodeRate::Cr4_6 }
    );
    assert_eq!(
        (a.rssi, a.snr, a.crc, a.channel, a.rf_chain, a.counter_us),
        (-35, 5.1, CrcStatus::Ok, 2, 0, 3_512_348_611)
    );
    // 2030 is more than a day from now: replaced by our clock, and counted.
    assert!(a.received_at >= before);

    let b = h.uplink().await;
    assert_eq!(
        (b.rssi, b.snr, b.crc, b.channel, b.rf_chain, b.counter_us),
        (-120, -17.5, CrcStatus::Bad, 7, 1, 100)
    );
    assert_eq!(b.phy_payload, vec![0xff]);
    assert!(b.received_at >= before, "no time: received now");

    let c = h.uplink().await;
    assert_eq!(c.modulation, Modulation::Fsk { datarate: 50_000, frequency_deviation: 0 });
    assert_eq!((c.crc, c.frequency), (CrcStatus::Missing, Frequency(868_800_000)));

    assert_eq!(h.stat(|s| &s.uplinks), 3);
    assert_eq!(h.stat(|s| &s.push_data), 1);
    assert_eq!(h.stat(|s| &s.time_replaced), 1);
}

#[tokio::test]
async fn reported_receive_time_is_kept() {
    let mut h = start(GwmpConfig::default()).await;
    let t = SystemTime::now() - Duration::from_secs(90);
    let json = format!(
        r#"{{"rxpk":[{{"time":"{}","tmst":1,"freq":868.1,"stat":1,"modu":"LORA","datr":"SF7BW125","codr":"4/5","rssi":-60,"lsnr":9.0,"size":1,"data":"QA=="}}]}}"#,
        crate::gwmp::codec::rfc3339_micros(t).expect("writable")
    );
    h.send(&push_data(1, FORWARDER_EUI, &json)).await;
    let f = h.uplink().await;
    let skew = f.received_at.duration_since(t).unwrap_or_else(|e| e.duration());
    assert!(skew < Duration::from_millis(1), "µs precision: {skew:?}");
}

#[tokio::test]
async fn downlink_goes_out_as_pull_resp_and_the_tx_ack_error_comes_back() {
    let mut h = start(GwmpConfig::default()).await;
    h.pull(2, 0x0102).await;
    // The uplink was at counter 4_294_000_000; RX window 5 s later wraps the 32-bit counter.
    h.downlinks
        .send(downlink(501, TxTiming::Counter(4_294_000_000u32.wrapping_add(5_000_000))))
        .await
        .expect("send");
    let resp = h.recv().await;
    assert_eq!((resp[0], resp[3]), (2, 3), "PULL_RESP");
    let txpk: serde_json::Value = serde_json::from_slice(&resp[4..]).expect("json");
    let txpk = &txpk["txpk"];
    assert_eq!(txpk["imme"], false);
    assert_eq!(txpk["tmst"], 4_032_704);
    assert_eq!(txpk["freq"], 869.525);
    assert_eq!(txpk["powe"], 27);
    assert_eq!(txpk["modu"], "LORA");
    assert_eq!(txpk["datr"], "SF12BW125");
    assert_eq!(txpk["codr"], "4/5");
    assert_eq!(txpk["ipol"], true);
    assert_eq!(txpk["size"], 5);
    assert_eq!(txpk["data"], "IAECAwQ=");
    assert_eq!(txpk["rfch"], 0);

    let mut ack = vec![2, resp[1], resp[2], 5];
    ack.extend_from_slice(&FORWARDER_EUI);
    ack.extend_from_slice(br#"{"txpk_ack":{"error":"TOO_LATE"}}"#);
    h.send(&ack).await;
    assert_eq!(h.tx_ack().await, TxAck { downlink_id: 501, status: TxStatus::TooLate });

    // GPS-timed and immediate downlinks, and a TX_ACK without error.
    h.downlinks.send(downlink(502, TxTiming::GpsEpoch(1_400_000_000_250_000))).await.expect("send");
    let resp = h.recv().await;
    let v: serde_json::Value = serde_json::from_slice(&resp[4..]).expect("json");
    assert_eq!(
        (&v["txpk"]["tmms"], &v["txpk"]["imme"]),
        (&serde_json::json!(1_400_000_000_250u64), &serde_json::json!(false))
    );
    let mut ack = vec![2, resp[1], resp[2], 5];
    ack.extend_from_slice(&FORWARDER_EUI);
    ack.extend_from_slice(br#"{"txpk_ack":{"error":"NONE"}}"#);
    h.send(&ack).await;
    assert_eq!(h.tx_ack().await, TxAck { downlink_id: 502, status: TxStatus::Ok });

    h.downlinks.send(downlink(503, TxTiming::Immediately)).await.expect("send");
    let resp = h.recv().await;
    let v: serde_json::Value = serde_json::from_slice(&resp[4..]).expect("json");
    assert_eq!(v["txpk"]["imme"], true);
    let mut ack = vec![2, resp[1], resp[2], 5];
    ack.extend_from_slice(&FORWARDER_EUI);
    ack.extend_from_slice(br#"{"txpk_ack":{"error":"GPS_UNLOCKED"}}"#);
    h.send(&ack).await;
    assert_eq!(h.tx_ack().await, TxAck { downlink_id: 503, status: TxStatus::GpsUnlocked });
    assert_eq!(h.stat(|s| &s.tx_acks), 3);
}

#[tokio::test]
async fn downlink_without_a_forwarder_is_refused_at_once() {
    let mut h = start(GwmpConfig::default()).await;
    h.downlinks.send(downlink(7, TxTiming::Immediately)).await.expect("send");
    assert_eq!(h.tx_ack().await, TxAck { downlink_id: 7, status: TxStatus::InternalError });
    assert_eq!(h.stat(|s| &s.downlinks_without_forwarder), 1);
}

#[tokio::test]
async fn silent_forwarder_downlink_is_reported_failed() {
    let mut h = start(GwmpConfig { tx_ack_timeout_ms: 50, ..GwmpConfig::default() }).await;
    h.pull(2, 1).await;
    h.downlinks.send(downlink(8, TxTiming::Immediately)).await.expect("send");
    let resp = h.recv().await;
    assert_eq!(resp[3], 3, "PULL_RESP sent");
    assert_eq!(h.tx_ack().await, TxAck { downlink_id: 8, status: TxStatus::InternalError });
    assert_eq!(h.stat(|s| &s.tx_ack_timeouts), 1);
    // A TX_ACK arriving after that is counted and ignored.
    let mut ack = vec![2, resp[1], resp[2], 5];
    ack.extend_from_slice(&FORWARDER_EUI);
    h.send(&ack).await;
    h.send(&push_data(9, FORWARDER_EUI, &one_rxpk("AQID"))).await;
    assert_eq!(h.recv().await, vec![2, 0, 9, 1]);
    assert_eq!(h.stat(|s| &s.unknown_tx_acks), 1);
}

#[tokio::test]
async fn version_1_forwarder_downlinks_are_reported_unconfirmed_never_ok() {
    let mut h = start(GwmpConfig::default()).await;
    h.pull(1, 0x0a0b).await;
    h.downlinks.send(downlink(9, TxTiming::Counter(1000))).await.expect("send");
    let resp = h.recv().await;
    assert_eq!((resp[0], resp[3]), (1, 3), "PULL_RESP in version 1");
    assert_eq!(h.tx_ack().await, TxAck { downlink_id: 9, status: TxStatus::Unconfirmed });
}

/// A second socket on the same host, playing another process.
async fn intruder(h: &Harness) -> UdpSocket {
    let server = h.forwarder.peer_addr().expect("peer");
    let s = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    s.connect(server).await.expect("connect");
    s
}

async fn recv_on(s: &UdpSocket) -> Vec<u8> {
    let mut buf = vec![0; 65_536];
    let len = tokio::time::timeout(HANG_GUARD, s.recv(&mut buf)).await.expect("in time").expect("recv");
    buf.truncate(len);
    buf
}

fn pull_data(version: u8, token: u16, eui: [u8; 8]) -> Vec<u8> {
    let mut d = vec![version, (token >> 8) as u8, token as u8, 2];
    d.extend_from_slice(&eui);
    d
}

#[tokio::test]
async fn another_process_cannot_take_the_downlinks_of_a_live_forwarder() {
    let mut h = start(GwmpConfig::default()).await;
    h.pull(2, 1).await;
    let thief = intruder(&h).await;
    // Same IP, same EUI, version 1 (which would turn every downlink into a fake OK).
    thief.send(&pull_data(1, 2, FORWARDER_EUI)).await.expect("send");
    // Its TX_ACK for a token it guessed is refused too.
    let mut ack = vec![2, 0, 0, 5];
    ack.extend_from_slice(&FORWARDER_EUI);
    thief.send(&ack).await.expect("send");
    h.send(&push_data(3, FORWARDER_EUI, &one_rxpk("AQID"))).await;
    assert_eq!(h.recv().await, vec![2, 0, 3, 1]);

    h.downlinks.send(downlink(11, TxTiming::Immediately)).await.expect("send");
    let resp = h.recv().await;
    assert_eq!((resp[0], resp[3]), (2, 3), "the PULL_RESP went to the pinned forwarder, in version 2");
    let mut thief_ack = vec![2, resp[1], resp[2], 5];
    thief_ack.extend_from_slice(&FORWARDER_EUI);
    thief.send(&thief_ack).await.expect("send");
    let mut ack = vec![2, resp[1], resp[2], 5];
    ack.extend_from_slice(&FORWARDER_EUI);
    ack.extend_from_slice(br#"{"txpk_ack":{"error":"TOO_LATE"}}"#);
    h.send(&ack).await;
    assert_eq!(
        h.tx_ack().await,
        TxAck { downlink_id: 11, status: TxStatus::TooLate },
        "only the forwarder's TX_ACK counts"
    );
    assert_eq!(h.stat(|s| &s.pull_data_refused), 1);
    assert_eq!(h.stat(|s| &s.tx_ack_refused), 2);
    let refused = h.handle.stats().last_refused().expect("remembered");
    assert_eq!((refused.from, refused.reason), (thief.local_addr().expect("addr"), "tx_ack_refused"));
    let view = h.handle.stats().forwarder().expect("pinned");
    assert_eq!(view.downlink_addr, Some(h.forwarder.local_addr().expect("addr")));
    assert_eq!(view.version, Some(2));
    let mut buf = [0u8; 64];
    assert!(thief.try_recv(&mut buf).is_err(), "the intruder got no PULL_ACK and no downlink");
}

#[tokio::test]
async fn a_restarted_forwarder_gets_the_downlinks_once_its_old_port_is_silent() {
    let h = start(GwmpConfig { forwarder_timeout_ms: 1000, ..GwmpConfig::default() }).await;
    h.pull(2, 1).await;
    let restarted = intruder(&h).await;
    // Keep trying from the new port, as lora_pkt_fwd does every keepalive.
    let answer = loop {
        restarted.send(&pull_data(2, 7, FORWARDER_EUI)).await.expect("send");
        let mut buf = vec![0; 64];
        match tokio::time::timeout(Duration::from_millis(200), restarted.recv(&mut buf)).await {
            Ok(Ok(len)) => break buf[..len].to_vec(),
            _ => continue,
        }
    };
    assert_eq!(answer, vec![2, 0, 7, 4], "PULL_ACK once the old port went silent");
    h.downlinks.send(downlink(12, TxTiming::Immediately)).await.expect("send");
    assert_eq!(recv_on(&restarted).await[3], 3, "PULL_RESP to the new port");
    assert_eq!(h.stat(|s| &s.forwarder_moves), 1);
    assert!(h.stat(|s| &s.pull_data_refused) >= 1);
}

#[tokio::test]
async fn first_forwarder_heard_is_pinned_and_others_are_dropped() {
    let mut h = start(GwmpConfig::default()).await;
    h.send(&push_data(1, FORWARDER_EUI, &one_rxpk("AQID"))).await;
    assert_eq!(h.recv().await, vec![2, 0, 1, 1]);
    assert_eq!(h.uplink().await.phy_payload, vec![1, 2, 3]);
    // Another EUI, even from the same address, is not the forwarder.
    h.send(&push_data(2, [9; 8], &one_rxpk("BAUG"))).await;
    h.send(&pull_data(2, 3, [9; 8])).await;
    h.send(&push_data(4, FORWARDER_EUI, &one_rxpk("BwgJ"))).await;
    assert_eq!(h.recv().await, vec![2, 0, 4, 1], "only the pinned gateway is answered");
    assert_eq!(h.uplink().await.phy_payload, vec![7, 8, 9]);
    assert_eq!(h.stat(|s| &s.foreign_gateway), 2);
    let view = h.handle.stats().forwarder().expect("pinned");
    assert_eq!((view.ip, view.gateway_id), ("127.0.0.1".parse().expect("ip"), Some(Eui64(FORWARDER_EUI))));
}

#[tokio::test]
async fn datagrams_from_another_address_than_the_configured_forwarder_are_dropped() {
    let mut h =
        start(GwmpConfig { forwarder: Some("192.0.2.1".parse().expect("ip")), ..GwmpConfig::default() })
            .await;
    h.send(&push_data(1, FORWARDER_EUI, &one_rxpk("AQID"))).await;
    h.send(&pull_data(2, 2, FORWARDER_EUI)).await;
    tokio::time::timeout(HANG_GUARD, async {
        while h.stat(|s| &s.foreign_source) < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("both refused");
    assert!(h.uplinks.try_recv().is_err());
    assert_eq!(h.handle.stats().last_refused().map(|r| r.reason), Some("foreign_source"));
}

#[tokio::test]
async fn garbage_datagrams_are_counted_and_dropped_and_the_next_good_one_works() {
    let mut h = start(GwmpConfig::default()).await;
    let mut noise = [0u8; 97];
    noise.iter_mut().enumerate().for_each(|(i, b)| *b = (i as u8).wrapping_mul(151).wrapping_add(7));
    let mut wrong_version = push_data(1, FORWARDER_EUI, &one_rxpk("AQID"));
    wrong_version[0] = 3;
    let garbage: [&[u8]; 7] = [
        &noise,
        &wrong_version,
        &[2, 0],                                               // truncated header
        &[2, 0, 1, 0, 0xaa, 0x55],                             // truncated EUI
        &push_data(2, FORWARDER_EUI, "{\"rxpk\":[{\"tmst\":"), // bad JSON
        &[2, 0, 3, 9, 1, 2, 3, 4, 5, 6, 7, 8],                 // unknown identifier
        &[2, 0, 4, 1],                                         // PUSH_ACK: servers send those
    ];
    for g in garbage {
        h.send(g).await;
    }
    // Bad base64 and absurd values spoil only their rxpk: the datagram is acknowledged.
    h.send(&push_data(0x0505, FORWARDER_EUI, &one_rxpk("!!not base64!!"))).await;
    assert_eq!(h.recv().await, vec![2, 5, 5, 1]);
    h.send(&push_data(0x0606, FORWARDER_EUI, &one_rxpk("AQID").replace("868.1", "1e9"))).await;
    assert_eq!(h.recv().await, vec![2, 6, 6, 1]);

    h.send(&push_data(0x0707, FORWARDER_EUI, &one_rxpk("AQID"))).await;
    assert_eq!(h.recv().await, vec![2, 7, 7, 1], "only the good datagrams were answered");
    assert_eq!(h.uplink().await.phy_payload, vec![1, 2, 3]);
    assert_eq!(h.stat(|s| &s.malformed), garbage.len() as u64);
    assert_eq!(h.stat(|s| &s.rxpk_rejected), 2);
    assert_eq!(h.stat(|s| &s.uplinks), 1);
    assert!(h.uplinks.try_recv().is_err(), "nothing else reached the pipeline");
}

#[tokio::test]
async fn datagrams_from_another_gateway_are_dropped_when_filtered() {
    let mut h = start(GwmpConfig { gateway_id: Some(Eui64(FORWARDER_EUI)), ..GwmpConfig::default() }).await;
    h.send(&push_data(1, [9; 8], &one_rxpk("AQID"))).await;
    h.send(&push_data(2, FORWARDER_EUI, &one_rxpk("BAUG"))).await;
    assert_eq!(h.recv().await, vec![2, 0, 2, 1], "only our gateway is answered");
    assert_eq!(h.uplink().await.phy_payload, vec![4, 5, 6]);
    assert_eq!(h.stat(|s| &s.foreign_gateway), 1);
}

#[tokio::test]
async fn bind_failure_is_a_start_error() {
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let config = GwmpConfig { bind: taken.local_addr().expect("addr"), ..GwmpConfig::default() };
    let (up_tx, _up_rx) = mpsc::channel(1);
    let (_down_tx, down_rx) = mpsc::channel(1);
    let (ack_tx, _ack_rx) = mpsc::channel(1);
    let ingest = Box::new(GwmpIngest::new(config).expect("config"));
    let mut handle = ingest.handle();
    let err =
        ingest.start(RadioIo { uplinks: up_tx, downlinks: down_rx, tx_acks: ack_tx, taken: None }).await;
    assert!(matches!(err, Err(RadioError::Start(ref m)) if m.contains("cannot listen")), "{err:?}");
    assert_eq!(handle.local_addr().await, None);
}

#[tokio::test]
async fn stops_when_the_pipeline_closes() {
    let h = start(GwmpConfig::default()).await;
    drop(h.uplinks);
    let r = tokio::time::timeout(HANG_GUARD, h.task).await.expect("stopped in time").expect("joined");
    assert!(r.is_ok());
}

#[test]
fn config_defaults_and_checks() {
    let c: GwmpConfig = toml::from_str("").expect("empty is fine");
    assert_eq!(c, GwmpConfig::default());
    assert_eq!(c.bind, "127.0.0.1:1700".parse().expect("addr"));
    let c: GwmpConfig =
        toml::from_str("bind = \"0.0.0.0:1700\"\ngateway_id = \"aa555a0000000001\"").expect("parse");
    assert_eq!(c.gateway_id, Some(Eui64(FORWARDER_EUI)));
    assert!(toml::from_str::<GwmpConfig>("port = 1700").is_err(), "unknown keys refused");
    assert_eq!(
        GwmpIngest::new(GwmpConfig { tx_ack_timeout_ms: 0, ..c }).expect_err("zero"),
        GwmpError::TxAckTimeout(0)
    );
    assert_eq!(
        GwmpIngest::new(GwmpConfig { forwarder_timeout_ms: 10, ..c }).expect_err("too short"),
        GwmpError::ForwarderTimeout(10)
    );
    let c: GwmpConfig = toml::from_str("forwarder = \"10.0.0.2\"").expect("parse");
    assert_eq!(c.forwarder, Some("10.0.0.2".parse().expect("ip")));
}
