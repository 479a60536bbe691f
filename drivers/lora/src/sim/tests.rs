//! Tests of the simulated radio: its frames parse, pass the filter and decrypt to the
//! payloads the device model generates; counts, rates and catching up after a stall;
//! reproducibility from the seed; downlinks answered (too late when their time has
//! passed); OTAA devices joining only on a JoinAccept their key opens; plausible
//! readings for each kind; and the configuration read from TOML and refused with errors
//! that name the device and the fix.

use super::*;
use crate::filter::UplinkFilter;
use crate::frame::TxTiming;
use crate::phy::{self, AesKey, CryptoError, DevAddr, Eui64, PhyFrame};
use crate::security::{
    build_join_accept, derive_session_keys, verify_join_request, verify_uplink, JoinAccept,
    JoinRequestFields, SessionKeys,
};
use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::field::{Field, Visit};

struct Harness {
    uplinks: mpsc::Receiver<UplinkFrame>,
    downlinks: mpsc::Sender<DownlinkFrame>,
    tx_acks: mpsc::Receiver<TxAck>,
    task: JoinHandle<Result<(), RadioError>>,
}

fn start(config: SimConfig, capacity: usize) -> Harness {
    let (up_tx, uplinks) = mpsc::channel(capacity);
    let (downlinks, down_rx) = mpsc::channel(8);
    let (ack_tx, tx_acks) = mpsc::channel(8);
    let radio = Box::new(SimRadio::new(config).unwrap());
    assert_eq!(radio.kind(), "sim");
    let task = tokio::spawn(radio.start(RadioIo {
        uplinks: up_tx,
        downlinks: down_rx,
        tx_acks: ack_tx,
        taken: None,
    }));
    Harness { uplinks, downlinks, tx_acks, task }
}

fn one_device(interval_ms: u64, count: Option<u64>) -> SimConfig {
    let mut device = example_devices().remove(0);
    device.interval_ms = interval_ms;
    device.count = count;
    SimConfig { devices: vec![device], frequencies: default_frequencies(), seed: Some(7) }
}

/// The session of an ABP device.
fn abp_keys(d: &SimDevice) -> SessionKeys {
    match d.activation() {
        Ok(Activation::Abp(keys)) => keys,
        other => panic!("{} is not a valid ABP device: {other:?}", d.name),
    }
}

/// What device `index` of a radio seeded with `seed` sends, in clear.
fn expected_payloads(seed: u64, index: usize, kind: DeviceKind, n: usize) -> Vec<Vec<u8>> {
    let mut rng = StdRng::seed_from_u64(device_seed(seed, index));
    let mut t = Telemetry::new(kind, &mut rng);
    (0..n).map(|_| t.next_payload(&mut rng)).collect()
}

fn downlink(id: u32) -> DownlinkFrame {
    downlink_carrying(id, vec![0x60, 1, 2, 3, 4, 0, 0, 0, 9, 9, 9, 9])
}

fn downlink_carrying(id: u32, phy_payload: Vec<u8>) -> DownlinkFrame {
    DownlinkFrame {
        downlink_id: id,
        phy_payload,
        frequency: Frequency(869_525_000),
        modulation: Modulation::Lora { spreading_factor: 12, bandwidth: 125_000, code_rate: CodeRate::Cr4_5 },
        power_dbm: 14,
        timing: TxTiming::Immediately,
        invert_iq: true,
        board: 0,
        antenna: 0,
    }
}

/// Collects the message of every event logged on this thread.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<String>>>);

struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

impl tracing::Subscriber for Logs {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut m = Message(String::new());
        event.record(&mut m);
        self.0.lock().unwrap().push(m.0);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[tokio::test(start_paused = true)]
async fn sim_frames_parse_pass_the_filter_and_decrypt_to_the_generated_payloads() {
    let mut devices = example_devices();
    for d in &mut devices {
        d.count = Some(6);
        d.interval_ms = 50;
    }
    // Crosses the 16-bit boundary: on air 65534, 65535, 0, 1, ...
    devices[1].first_fcnt = 65_534;
    devices[3].confirmed = true;
    let config = SimConfig { devices: devices.clone(), frequencies: default_frequencies(), seed: Some(42) };
    let mut h = start(config, 64);
    let filter = UplinkFilter::new(toml::from_str("dev_addr_prefixes = [\"26000000/7\"]").unwrap());
    let mut seen: HashMap<usize, Vec<u32>> = HashMap::new();
    for _ in 0..24 {
        let frame = h.uplinks.recv().await.unwrap();
        let phy = filter.check(&frame).unwrap();
        let PhyFrame::Data(data) = phy else { panic!("not a data frame: {phy:?}") };
        let i = devices.iter().position(|d| d.dev_addr == Some(data.dev_addr)).unwrap();
        let d = &devices[i];
        let keys = abp_keys(d);
        assert!(data.mtype.is_uplink());
        assert_eq!(data.f_port, Some(2));
        assert_eq!(
            data.mtype,
            if d.confirmed { phy::MType::ConfirmedDataUp } else { phy::MType::UnconfirmedDataUp }
        );
        assert_eq!(
            frame.modulation,
            Modulation::Lora {
                spreading_factor: d.spreading_factor,
                bandwidth: 125_000,
                code_rate: CodeRate::Cr4_5
            }
        );
        assert_eq!(default_frequencies()[usize::from(frame.channel)], frame.frequency.0);
        assert!((-115..=-60).contains(&frame.rssi), "rssi {}", frame.rssi);
        assert!((-5.0..=10.0).contains(&frame.snr), "snr {}", frame.snr);

        let n = seen.entry(i).or_default();
        let fcnt = d.first_fcnt.wrapping_add(n.len() as u32);
        assert_eq!(u32::from(data.fcnt), fcnt & 0xffff);
        let clear =
            phy::verify_and_decrypt(&frame.phy_payload, &keys.nwk_s_key, &keys.app_s_key, fcnt).unwrap();
        let expected = expected_payloads(42, i, d.kind, n.len() + 1);
        assert_eq!(Some(&clear), expected.last());
        assert_eq!(
            phy::verify_and_decrypt(&frame.phy_payload, &keys.app_s_key, &keys.app_s_key, fcnt),
            Err(CryptoError::MicMismatch),
            "the AppSKey is not the NwkSKey"
        );
        n.push(fcnt);
    }
    assert_eq!(seen.len(), 4);
    assert_eq!(seen[&1], vec![65_534, 65_535, 65_536, 65_537, 65_538, 65_539]);
    drop(h.uplinks);
    assert!(h.task.await.unwrap().is_ok());
}

#[tokio::test(start_paused = true)]
async fn sim_with_count_sends_exactly_that_many_then_reports_done_and_ends_when_channels_close() {
    let logs = Logs::default();
    let _guard = tracing::subscriber::set_default(logs.clone());
    let mut h = start(one_device(1_000, Some(3)), 8);
    for _ in 0..3 {
        assert!(h.uplinks.recv().await.is_some());
    }
    let more = tokio::time::timeout(Duration::from_secs(3_600), h.uplinks.recv()).await;
    assert!(more.is_err(), "a 4th frame arrived: {more:?}");
    // Still a transmitter after the devices are done.
    h.downlinks.send(downlink(77)).await.unwrap();
    assert_eq!(h.tx_acks.recv().await, Some(TxAck { downlink_id: 77, status: TxStatus::Ok }));
    drop(h.downlinks);
    assert!(h.task.await.unwrap().is_ok());
    let logs = logs.0.lock().unwrap();
    let done: Vec<_> = logs.iter().filter(|m| m.contains("all devices done")).collect();
    assert_eq!(done, vec!["sim radio: all devices done (3 uplinks)"]);
}

#[tokio::test]
async fn a_downlink_whose_counter_time_has_passed_is_answered_too_late() {
    let mut h = start(one_device(60_000, None), 8);
    let mut stale = downlink(41);
    // An answer to an uplink heard before this radio started: its time has passed.
    stale.timing = TxTiming::Counter(u32::MAX - 10);
    h.downlinks.send(stale).await.unwrap();
    assert_eq!(h.tx_acks.recv().await, Some(TxAck { downlink_id: 41, status: TxStatus::TooLate }));
    let mut ahead = downlink(42);
    ahead.timing = TxTiming::Counter(30_000_000);
    h.downlinks.send(ahead).await.unwrap();
    assert_eq!(h.tx_acks.recv().await, Some(TxAck { downlink_id: 42, status: TxStatus::Ok }));
}

#[tokio::test(start_paused = true)]
async fn sim_answers_every_downlink_with_an_ok_ack_and_stops_when_uplinks_close() {
    let mut h = start(one_device(10_000, None), 8);
    for id in 1..=5 {
        h.downlinks.send(downlink(id)).await.unwrap();
        let ack = h.tx_acks.recv().await.unwrap();
        assert_eq!((ack.downlink_id, ack.status), (id, TxStatus::Ok));
    }
    drop(h.uplinks);
    assert!(h.task.await.unwrap().is_ok());
}

#[tokio::test(start_paused = true)]
async fn sim_sends_50_frames_per_second_at_a_20_ms_interval() {
    let mut h = start(one_device(20, None), 1_000);
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let mut n = 0;
    while h.uplinks.try_recv().is_ok() {
        n += 1;
    }
    assert!((49..=51).contains(&n), "{n} frames in one second");
}

#[tokio::test(start_paused = true)]
async fn sim_catches_up_after_the_pipeline_stalls() {
    let mut h = start(one_device(20, None), 1);
    let deadline = Instant::now() + Duration::from_millis(1_000);
    // The pipeline does not read for half a second...
    tokio::time::sleep(Duration::from_millis(500)).await;
    // ...then drains as fast as frames come.
    let mut n = 0;
    loop {
        tokio::select! {
            biased;
            f = h.uplinks.recv() => { f.unwrap(); n += 1; }
            () = tokio::time::sleep_until(deadline) => break,
        }
    }
    assert!((49..=51).contains(&n), "{n} frames in one second");
}

#[tokio::test(start_paused = true)]
async fn same_seed_gives_the_same_frames() {
    let mut config = one_device(100, Some(10));
    config.devices.push(example_devices().remove(2));
    // Its DevNonces come from the seed too.
    config.devices.push(otaa_device("joiner", AesKey([0x42; 16]), None));
    let mut runs = Vec::new();
    for _ in 0..2 {
        let mut h = start(config.clone(), 32);
        let mut frames = Vec::new();
        for _ in 0..12 {
            let f = h.uplinks.recv().await.unwrap();
            frames.push((f.phy_payload, f.frequency, f.rssi, f.snr.to_bits()));
        }
        runs.push(frames);
    }
    assert_eq!(runs[0], runs[1]);
}

const JOIN_EUI: Eui64 = Eui64([0x70, 0xb3, 0xd5, 0x7e, 0xd0, 0x00, 0x00, 0x00]);

/// An OTAA river level probe, DevEUI from its AppKey's first byte.
fn otaa_device(name: &str, app_key: AesKey, first_dev_nonce: Option<u16>) -> SimDevice {
    SimDevice {
        name: name.to_owned(),
        kind: DeviceKind::RiverLevel,
        dev_addr: None,
        nwk_s_key: None,
        app_s_key: None,
        otaa: Some(SimOtaa {
            dev_eui: Eui64::from_u64(0x0004_a30b_0000_0000 | u64::from(app_key.0[0])),
            join_eui: JOIN_EUI,
            app_key,
            first_dev_nonce,
        }),
        f_port: 2,
        interval_ms: 1_000,
        count: None,
        first_fcnt: 0,
        spreading_factor: 9,
        confirmed: false,
    }
}

fn join_accept(dev_addr: u32) -> JoinAccept {
    JoinAccept {
        join_nonce: 0x00_0a01,
        net_id: 0x00_0013,
        dev_addr: DevAddr::from_u32(dev_addr),
        dl_settings: 0,
        rx_delay: 1,
        cf_list: None,
    }
}

#[tokio::test(start_paused = true)]
async fn otaa_device_joins_on_its_join_accept_and_sends_data_that_verifies() {
    let logs = Logs::default();
    let _guard = tracing::subscriber::set_default(logs.clone());
    let app_key = AesKey([0x42; 16]);
    let mut device = otaa_device("sonde-otaa", app_key, Some(0x0100));
    device.count = Some(3);
    let dev_eui = device.otaa.unwrap().dev_eui;
    let mut h =
        start(SimConfig { devices: vec![device], frequencies: default_frequencies(), seed: Some(11) }, 8);

    // Unanswered, it keeps asking, one DevNonce up each time.
    for dev_nonce in [0x0100, 0x0101] {
        let f = h.uplinks.recv().await.unwrap();
        assert_eq!(
            verify_join_request(&f.phy_payload, &app_key).unwrap(),
            JoinRequestFields { join_eui: JOIN_EUI, dev_eui, dev_nonce }
        );
    }
    let accept = join_accept(0x260b_1a10);
    let phy = build_join_accept(&accept, &app_key).unwrap();
    h.downlinks.send(downlink_carrying(5, phy)).await.unwrap();
    assert_eq!(h.tx_acks.recv().await, Some(TxAck { downlink_id: 5, status: TxStatus::Ok }));

    // The network server derives the session from the last JoinRequest.
    let keys = derive_session_keys(&app_key, &accept, 0x0101);
    let expected = expected_payloads(11, 0, DeviceKind::RiverLevel, 3);
    let mut last = None;
    for payload in &expected {
        let f = h.uplinks.recv().await.unwrap();
        let up = verify_uplink(&f.phy_payload, &keys, last).unwrap();
        assert_eq!((up.fcnt, up.f_port), (last.map_or(0, |l| l + 1), Some(2)));
        assert_eq!(&up.payload, payload);
        last = Some(up.fcnt);
    }
    assert!(tokio::time::timeout(Duration::from_secs(60), h.uplinks.recv()).await.is_err(), "count is 3");
    drop(h.uplinks);
    assert!(h.task.await.unwrap().is_ok());
    let logs = logs.0.lock().unwrap();
    assert_eq!(logs.iter().filter(|m| *m == "sim radio: device joined").count(), 1);
    assert!(logs.iter().any(|m| m == "sim radio: all devices done (5 uplinks)"), "{logs:?}");
}

#[tokio::test(start_paused = true)]
async fn join_accepts_for_other_keys_and_other_downlinks_are_acked_but_ignored() {
    let app_key = AesKey([0x42; 16]);
    let mut h = start(
        SimConfig {
            devices: vec![otaa_device("sonde-otaa", app_key, Some(7))],
            frequencies: default_frequencies(),
            seed: Some(3),
        },
        8,
    );
    let f = h.uplinks.recv().await.unwrap();
    assert_eq!(verify_join_request(&f.phy_payload, &app_key).unwrap().dev_nonce, 7);
    let foreign = build_join_accept(&join_accept(0x260b_1a11), &AesKey([0x43; 16])).unwrap();
    h.downlinks.send(downlink_carrying(1, foreign)).await.unwrap();
    h.downlinks.send(downlink(2)).await.unwrap();
    for id in [1, 2] {
        assert_eq!(h.tx_acks.recv().await, Some(TxAck { downlink_id: id, status: TxStatus::Ok }));
    }
    for dev_nonce in [8, 9] {
        let f = h.uplinks.recv().await.unwrap();
        let parsed = phy::parse(&f.phy_payload).unwrap();
        assert_eq!(parsed.mtype(), phy::MType::JoinRequest, "still joining");
        assert_eq!(verify_join_request(&f.phy_payload, &app_key).unwrap().dev_nonce, dev_nonce);
    }
}

#[tokio::test(start_paused = true)]
async fn a_join_accept_joins_only_the_device_whose_key_opens_it() {
    let (key_a, key_b) = (AesKey([0xa0; 16]), AesKey([0xb0; 16]));
    let mut h = start(
        SimConfig {
            devices: vec![otaa_device("a", key_a, Some(1)), otaa_device("b", key_b, Some(1))],
            frequencies: default_frequencies(),
            seed: Some(5),
        },
        8,
    );
    // Both have asked once.
    for _ in 0..2 {
        assert_eq!(
            phy::parse(&h.uplinks.recv().await.unwrap().phy_payload).unwrap().mtype(),
            phy::MType::JoinRequest
        );
    }
    let accept = join_accept(0x260b_1a0b);
    h.downlinks.send(downlink_carrying(9, build_join_accept(&accept, &key_b).unwrap())).await.unwrap();
    assert_eq!(h.tx_acks.recv().await.map(|a| a.status), Some(TxStatus::Ok));
    let keys_b = derive_session_keys(&key_b, &accept, 1);
    let (mut joins_a, mut data_b) = (0, 0u32);
    for _ in 0..6 {
        let f = h.uplinks.recv().await.unwrap();
        match phy::parse(&f.phy_payload).unwrap() {
            PhyFrame::JoinRequest(j) => {
                assert_eq!(verify_join_request(&f.phy_payload, &key_a).unwrap().dev_nonce, j.dev_nonce);
                joins_a += 1;
            }
            PhyFrame::Data(_) => {
                let up = verify_uplink(&f.phy_payload, &keys_b, data_b.checked_sub(1)).unwrap();
                assert_eq!(up.fcnt, data_b);
                data_b += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((joins_a, data_b), (3, 3));
}

/// Big-endian helpers for reading payloads back by their documented layout.
fn be16(p: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([p[at], p[at + 1]])
}

#[test]
fn each_kind_produces_plausible_evolving_readings() {
    let n = 2_000;
    let water = expected_payloads(1, 0, DeviceKind::WaterMeter, n);
    let mut last = 0u32;
    for p in &water {
        assert_eq!(p.len(), 7);
        let index = u32::from_be_bytes([p[0], p[1], p[2], p[3]]);
        assert!(index >= last && (50_000..=1_000_000).contains(&index));
        assert!((2800..=3650).contains(&be16(p, 4)));
        assert_eq!(p[6] & !0x03, 0, "only flag bits 0 and 1 are used");
        last = index;
    }
    let river = expected_payloads(1, 1, DeviceKind::RiverLevel, n);
    for p in &river {
        assert_eq!(p.len(), 6);
        assert!((0..=800).contains(&(be16(p, 0) as i16)));
        assert!((-20..=300).contains(&(be16(p, 2) as i16)));
    }
    assert!(river.windows(2).any(|w| w[0][..2] != w[1][..2]), "the level moves");
    let waste = expected_payloads(1, 2, DeviceKind::WasteFill, n);
    for p in &waste {
        assert_eq!(p.len(), 4);
        assert!(p[0] <= 100);
        assert!((-15..=50).contains(&(p[1] as i8)));
    }
    assert!(waste.windows(2).any(|w| w[1][0] < w[0][0]), "the container gets emptied");
    let light = expected_payloads(1, 3, DeviceKind::LightingCabinet, n);
    let mut last = 0u32;
    for p in &light {
        assert_eq!(p.len(), 8);
        assert_eq!(p[0] & 0xf0, 0, "4 circuits");
        assert!(p[1] <= 3);
        let energy = u32::from_be_bytes([p[2], p[3], p[4], p[5]]);
        assert!(energy >= last);
        assert!((2240..=2360).contains(&be16(p, 6)));
        last = energy;
    }
    assert!(light.iter().any(|p| p[0] == 0x0f) && light.iter().any(|p| p[0] == 0));
}

#[test]
fn config_reads_from_toml_with_defaults() {
    let config: SimConfig = toml::from_str(
        r#"
        [[devices]]
        name = "compteur"
        kind = "water_meter"
        dev_addr = "26011BDA"
        nwk_s_key = "2b7e151628aed2a6abf7158809cf4f3c"
        app_s_key = "00112233445566778899aabbccddeeff"
        interval_ms = 20
        "#,
    )
    .unwrap();
    assert_eq!(config.frequencies.len(), 8);
    assert_eq!(config.seed, None);
    let d = &config.devices[0];
    assert_eq!((d.f_port, d.spreading_factor, d.first_fcnt), (2, 7, 0));
    assert_eq!((d.count, d.confirmed), (None, false));
    assert!(SimRadio::new(config).is_ok());
}

#[test]
fn otaa_config_reads_from_toml_and_abp_keys_stay_optional() {
    let config: SimConfig = toml::from_str(
        r#"
        [[devices]]
        name = "sonde"
        kind = "river_level"
        otaa = { dev_eui = "0004A30B001C0530", join_eui = "70b3d57ed0000000", app_key = "2b7e151628aed2a6abf7158809cf4f3c" }
        interval_ms = 60000
        "#,
    )
    .unwrap();
    let d = &config.devices[0];
    assert_eq!((d.dev_addr, d.nwk_s_key, d.app_s_key), (None, None, None));
    let otaa = d.otaa.unwrap();
    assert_eq!(otaa.dev_eui.to_string(), "0004a30b001c0530");
    assert_eq!(otaa.first_dev_nonce, None);
    assert!(SimRadio::new(config.clone()).is_ok());
    // It writes back without the absent ABP keys, and reads the same.
    let text = toml::to_string(&config).unwrap();
    assert!(!text.contains("dev_addr"), "{text}");
    assert_eq!(toml::from_str::<SimConfig>(&text).unwrap(), config);

    let unknown = toml::from_str::<SimConfig>(
        "[[devices]]\nname = \"x\"\nkind = \"river_level\"\ninterval_ms = 1000\n\
         otaa = { dev_eui = \"0004a30b001c0530\", join_eui = \"70b3d57ed0000000\", \
         app_key = \"2b7e151628aed2a6abf7158809cf4f3c\", nwk_key = \"00\" }\n",
    )
    .unwrap_err()
    .to_string();
    assert!(unknown.contains("unknown field `nwk_key`"), "{unknown}");
}

#[test]
fn config_refuses_mixed_or_missing_activation() {
    let bad = |d: SimDevice| {
        SimRadio::new(SimConfig { devices: vec![d], frequencies: default_frequencies(), seed: None })
            .unwrap_err()
            .to_string()
    };
    let otaa = otaa_device("sonde", AesKey([1; 16]), None);
    let abp = example_devices().remove(0);
    assert_eq!(
        bad(SimDevice { dev_addr: abp.dev_addr, app_s_key: abp.app_s_key, ..otaa.clone() }),
        "sim device \"sonde\": has both `otaa` and ABP keys (dev_addr, app_s_key); an OTAA device gets its \
         DevAddr and session keys from the join, so remove them, or remove `otaa` to use ABP"
    );
    assert_eq!(
        bad(SimDevice { nwk_s_key: None, app_s_key: None, ..abp.clone() }),
        "sim device \"compteur-eau-mairie\": no activation; ABP needs dev_addr, nwk_s_key and app_s_key \
         (missing: nwk_s_key, app_s_key), OTAA needs otaa = { dev_eui = \"...\", join_eui = \"...\", app_key = \"...\" }"
    );
    assert!(bad(SimDevice { otaa: None, ..otaa.clone() }).contains("missing: dev_addr, nwk_s_key, app_s_key"));
    assert_eq!(
        bad(SimDevice { first_fcnt: 10, ..otaa }),
        "sim device \"sonde\": first_fcnt is for ABP devices; an OTAA session always starts at frame counter 0"
    );
    // An ABP device written the old way still reads (config_reads_from_toml_with_defaults).
    let missing = toml::from_str::<SimConfig>(
        "[[devices]]\nname = \"x\"\nkind = \"water_meter\"\ndev_addr = \"26011bda\"\ninterval_ms = 1000\n",
    )
    .unwrap();
    assert!(SimRadio::new(missing).unwrap_err().to_string().contains("missing: nwk_s_key, app_s_key"));
}

#[test]
fn config_errors_name_the_device_and_the_fix() {
    let bad = |f: &dyn Fn(&mut SimConfig)| {
        let mut c = one_device(1_000, None);
        f(&mut c);
        SimRadio::new(c).unwrap_err().to_string()
    };
    assert_eq!(
        bad(&|c| c.devices[0].interval_ms = 0),
        "sim device \"compteur-eau-mairie\": interval_ms must be at least 1"
    );
    assert_eq!(
        bad(&|c| c.devices[0].spreading_factor = 13),
        "sim device \"compteur-eau-mairie\": spreading_factor 13 is not supported; use 7 to 12"
    );
    assert!(bad(&|c| c.devices[0].spreading_factor = 6).contains("use 7 to 12"));
    assert!(bad(&|c| c.devices[0].f_port = 0).contains("f_port 0 is not an application port"));
    assert!(bad(&|c| c.frequencies.clear()).contains("`frequencies` is empty"));
    assert_eq!(
        bad(&|c| c.devices.push(c.devices[0].clone())),
        "two sim devices are named \"compteur-eau-mairie\"; device names must be unique"
    );
    let unknown =
        toml::from_str::<SimConfig>("devices = []\nfrequency = [868100000]").unwrap_err().to_string();
    assert!(unknown.contains("unknown field `frequency`"), "{unknown}");
    let kind = toml::from_str::<SimConfig>(
        "[[devices]]\nname = \"x\"\nkind = \"gas_meter\"\ndev_addr = \"26011bda\"\n\
         nwk_s_key = \"00112233445566778899aabbccddeeff\"\n\
         app_s_key = \"00112233445566778899aabbccddeeff\"\ninterval_ms = 1000\n",
    )
    .unwrap_err()
    .to_string();
    assert!(kind.contains("unknown variant `gas_meter`"), "{kind}");
}

#[test]
fn example_devices_are_valid_and_inside_the_demo_prefix() {
    let devices = example_devices();
    let prefix: crate::filter::DevAddrPrefix = "26000000/7".parse().unwrap();
    let kinds: HashSet<_> = devices.iter().map(|d| d.kind).collect();
    assert_eq!(kinds.len(), 4);
    for d in &devices {
        let keys = abp_keys(d);
        assert!(prefix.matches(keys.dev_addr), "{}", keys.dev_addr);
        assert!((1_000..=5_000).contains(&d.interval_ms));
        assert_ne!(keys.nwk_s_key, keys.app_s_key);
    }
    assert!(SimRadio::new(SimConfig { devices, frequencies: default_frequencies(), seed: None }).is_ok());
}
