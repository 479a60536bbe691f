//! The decoder's behaviour without threads: readings, refusals, joins,
//! pushed sessions, reloads and counters kept across restarts; then the
//! decoder thread's queue (`Decoder`).

use std::path::Path;

use berrygw_lora::phy::{build_data_uplink, AesKey, DataUplink, DevAddr, Eui64};
use berrygw_lora::security::{
    build_join_accept, build_join_request, derive_session_keys, JoinAccept, SessionKeys,
};
use berrygw_lora::{CrcStatus, UplinkFrame};

use super::engine::{codec_limits, Codecs, Engine, Outcome};
use super::registry::Registry;
use super::sessions::{SessionSource, SessionStore};
use crate::events::{self, AppTopics, PushedSession};

const NWK: [u8; 16] =
    [0x96, 0x08, 0xa1, 0x55, 0x1e, 0x4e, 0x78, 0xdd, 0x91, 0xef, 0x99, 0xac, 0x74, 0x2f, 0xeb, 0xb2];
const APP: [u8; 16] =
    [0x29, 0x62, 0x86, 0x82, 0x4a, 0x03, 0x35, 0x36, 0x15, 0x0f, 0x6e, 0xe5, 0x2d, 0x24, 0xa4, 0x57];
const APP_KEY: [u8; 16] = [0x0a; 16];
const ABP_ADDR: u32 = 0x260b_1a02;
const ABP_EUI: u64 = 0x70b3_d57e_d005_1a02;
const OTAA_EUI: u64 = 0x70b3_d57e_d005_1a05;

fn registry_text() -> String {
    format!(
        r#"
[[device]]
name = "sonde-niveau-cher-pont"
dev_eui = "{ABP_EUI:016x}"
tags = {{ site = "pont du Cher" }}
codec = "cayenne_lpp"
abp = {{ dev_addr = "{ABP_ADDR:08x}", nwk_s_key = "{}", app_s_key = "{}" }}

[[device]]
name = "compteur-otaa"
dev_eui = "{OTAA_EUI:016x}"
otaa = {{ app_key = "{}" }}
"#,
        hex::encode(NWK),
        hex::encode(APP),
        hex::encode(APP_KEY)
    )
}

fn engine(dir: &Path, registry: &str) -> Engine {
    let registry = Registry::parse(Path::new("devices.toml"), registry, &[]).expect("registry");
    let codecs = Codecs::build(&registry, &codec_limits(50, 8192)).expect("codecs");
    let (store, sessions) = SessionStore::open(&dir.join("sessions.sqlite")).expect("store");
    Engine::new(
        "0016c001ff10a235".into(),
        Some(AppTopics::new("berrygw", "0016c001ff10a235")),
        registry,
        codecs,
        store,
        sessions,
    )
}

fn data_frame(keys: &SessionKeys, fcnt: u32, payload: &[u8]) -> UplinkFrame {
    let phy = build_data_uplink(
        &DataUplink { dev_addr: keys.dev_addr, fcnt, confirmed: false, adr: true, f_port: 3, payload },
        &keys.nwk_s_key,
        &keys.app_s_key,
    )
    .expect("frame");
    UplinkFrame::example(phy, CrcStatus::Ok)
}

fn abp_keys() -> SessionKeys {
    SessionKeys { dev_addr: DevAddr::from_u32(ABP_ADDR), nwk_s_key: AesKey(NWK), app_s_key: AesKey(APP) }
}

/// Cayenne LPP: channel 1 temperature 27.2 °C.
const LPP: [u8; 4] = [0x01, 0x67, 0x01, 0x10];

fn refusal(o: &Outcome) -> Option<&'static str> {
    match o {
        Outcome::Refused { reason, .. } => Some(reason),
        _ => None,
    }
}

#[test]
fn abp_uplink_becomes_a_reading_on_the_device_topic() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut e = engine(dir.path(), &registry_text());
    let Outcome::Reading { reading, record, codec_failure } = e.uplink(&data_frame(&abp_keys(), 7, &LPP), 42)
    else {
        panic!("a reading");
    };
    assert_eq!(codec_failure, None);
    assert_eq!(reading.device_name, "sonde-niveau-cher-pont");
    assert_eq!((reading.f_cnt, reading.f_port, reading.seq), (7, 3, 42));
    assert_eq!(reading.object["temperature_1"], serde_json::json!(27.2));
    assert_eq!(reading.tags["site"], "pont du Cher");
    let record = record.expect("published");
    let (topic, body) = events::open_record(record.kind, &record.payload).expect("app record");
    assert_eq!(topic, format!("berrygw/0016c001ff10a235/device/{ABP_EUI:016x}/up"));
    let json: serde_json::Value = serde_json::from_slice(body).expect("json");
    assert_eq!(json["object"]["temperature_1"], serde_json::json!(27.2));
    assert_eq!(json["rx"]["data_rate"], "SF7BW125");
}

#[test]
fn replays_tampering_and_strangers_make_no_reading() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut e = engine(dir.path(), &registry_text());
    let frame = data_frame(&abp_keys(), 10, &LPP);
    assert!(matches!(e.uplink(&frame, 1), Outcome::Reading { .. }));
    assert_eq!(refusal(&e.uplink(&frame, 2)), Some("replay"), "same counter twice");
    assert_eq!(refusal(&e.uplink(&data_frame(&abp_keys(), 9, &LPP), 3)), Some("replay"), "older counter");
    let mut tampered = data_frame(&abp_keys(), 11, &LPP);
    let n = tampered.phy_payload.len();
    tampered.phy_payload[n - 6] ^= 0x01;
    assert_eq!(refusal(&e.uplink(&tampered, 4)), Some("mic"));
    let wrong_key = SessionKeys { nwk_s_key: AesKey([0x55; 16]), ..abp_keys() };
    assert_eq!(refusal(&e.uplink(&data_frame(&wrong_key, 12, &LPP), 5)), Some("mic"));
    let stranger = SessionKeys { dev_addr: DevAddr::from_u32(0x2601_0001), ..abp_keys() };
    assert!(matches!(e.uplink(&data_frame(&stranger, 1, &LPP), 6), Outcome::NotOurs));
    assert!(matches!(e.uplink(&UplinkFrame::example(vec![0x40, 1, 2], CrcStatus::Ok), 7), Outcome::NotOurs));
    // A jump too far is refused (a replay of an old frame from before a 16-bit wrap looks like this).
    assert_eq!(refusal(&e.uplink(&data_frame(&abp_keys(), 20_000, &LPP), 8)), Some("fcnt_gap"));
}

#[test]
fn counter_rollover_past_16_bits_is_followed() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut e = engine(dir.path(), &registry_text());
    assert!(matches!(e.uplink(&data_frame(&abp_keys(), 0xfffe, &LPP), 1), Outcome::Reading { .. }));
    let Outcome::Reading { reading, .. } = e.uplink(&data_frame(&abp_keys(), 0x1_0001, &LPP), 2) else {
        panic!("rollover decoded");
    };
    assert_eq!(reading.f_cnt, 0x1_0001, "the 32-bit counter is rebuilt from its 16 bits on air");
}

#[test]
fn counters_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tmp");
    let frame = data_frame(&abp_keys(), 500, &LPP);
    {
        let mut e = engine(dir.path(), &registry_text());
        assert!(matches!(e.uplink(&frame, 1), Outcome::Reading { .. }));
        e.flush();
    }
    let mut e = engine(dir.path(), &registry_text());
    assert_eq!(refusal(&e.uplink(&frame, 2)), Some("replay"), "a frame replayed after a restart is refused");
    assert!(matches!(e.uplink(&data_frame(&abp_keys(), 501, &LPP), 3), Outcome::Reading { .. }));
}

fn accept() -> JoinAccept {
    JoinAccept {
        join_nonce: 0x00a1b2,
        net_id: 0x000013,
        dev_addr: DevAddr::from_u32(0x2700_0a05),
        dl_settings: 0,
        rx_delay: 1,
        cf_list: None,
    }
}

#[test]
fn a_relayed_join_starts_a_session_that_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tmp");
    let app_key = AesKey(APP_KEY);
    let dev_eui = Eui64::from_u64(OTAA_EUI);
    let keys = derive_session_keys(&app_key, &accept(), 0x0102);
    {
        let mut e = engine(dir.path(), &registry_text());
        // Before the join its frames are strangers.
        assert!(matches!(e.uplink(&data_frame(&keys, 0, &[1]), 1), Outcome::NotOurs));
        let request = build_join_request(Eui64::from_u64(1), dev_eui, 0x0102, &app_key);
        assert!(matches!(
            e.uplink(&UplinkFrame::example(request, CrcStatus::Ok), 2),
            Outcome::JoinRequest { .. }
        ));
        let accept_phy = build_join_accept(&accept(), &app_key).expect("accept");
        assert_eq!(e.downlink(77, &accept_phy).as_deref(), Some("compteur-otaa"));
        assert_eq!(e.tx_ack(77, true), Some(("compteur-otaa".to_string(), accept().dev_addr)));
        let Outcome::Reading { reading, .. } = e.uplink(&data_frame(&keys, 0, &[0xab]), 3) else {
            panic!("decoded with the derived keys");
        };
        assert_eq!(reading.object, serde_json::json!({ "hex": "ab" }));
    }
    let mut e = engine(dir.path(), &registry_text());
    assert!(matches!(e.uplink(&data_frame(&keys, 1, &[0xac]), 4), Outcome::Reading { .. }), "session kept");
}

#[test]
fn a_join_accept_that_was_not_transmitted_starts_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let app_key = AesKey(APP_KEY);
    let mut e = engine(dir.path(), &registry_text());
    let request = build_join_request(Eui64::from_u64(1), Eui64::from_u64(OTAA_EUI), 7, &app_key);
    e.uplink(&UplinkFrame::example(request, CrcStatus::Ok), 1);
    let accept_phy = build_join_accept(&accept(), &app_key).expect("accept");
    e.downlink(5, &accept_phy);
    assert_eq!(e.tx_ack(5, false), None, "too late for the RX window: no session");
    let keys = derive_session_keys(&app_key, &accept(), 7);
    assert!(matches!(e.uplink(&data_frame(&keys, 0, &[1]), 2), Outcome::NotOurs));
    // A JoinAccept made with another AppKey is not ours either.
    let other = build_join_accept(&accept(), &AesKey([0x77; 16])).expect("accept");
    assert_eq!(e.downlink(6, &other), None);
    // A JoinRequest with a bad MIC is refused.
    let forged = build_join_request(Eui64::from_u64(1), Eui64::from_u64(OTAA_EUI), 8, &AesKey([0x77; 16]));
    assert_eq!(refusal(&e.uplink(&UplinkFrame::example(forged, CrcStatus::Ok), 3)), Some("mic"));
}

#[test]
fn pushed_sessions_are_taken_for_registered_otaa_devices_only() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut e = engine(dir.path(), &registry_text());
    let keys = SessionKeys {
        dev_addr: DevAddr::from_u32(0x2700_0b05),
        nwk_s_key: AesKey([3; 16]),
        app_s_key: AesKey([4; 16]),
    };
    let push = |dev_eui: u64, f_cnt_up| PushedSession {
        dev_eui: Eui64::from_u64(dev_eui),
        dev_addr: keys.dev_addr,
        nwk_s_key: keys.nwk_s_key,
        app_s_key: keys.app_s_key,
        f_cnt_up,
    };
    assert!(e.push(push(ABP_EUI, 0)).is_err(), "ABP keys come from the registry");
    assert!(e.push(push(0x1234, 0)).is_err(), "unknown device");
    let installed = e.push(push(OTAA_EUI, 20)).expect("accepted");
    assert_eq!(installed.replaced, None, "the device had no session");
    let again = e.push(push(OTAA_EUI, 20)).expect("accepted");
    assert_eq!(again.replaced, Some(SessionSource::Pushed), "an install over a session says so");
    assert_eq!(refusal(&e.uplink(&data_frame(&keys, 19, &[1]), 1)), Some("replay"), "counter 19 was used");
    assert!(matches!(e.uplink(&data_frame(&keys, 20, &[1]), 2), Outcome::Reading { .. }));
}

#[test]
fn reload_forgets_removed_devices_and_keeps_the_others_counters() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut e = engine(dir.path(), &registry_text());
    assert!(matches!(e.uplink(&data_frame(&abp_keys(), 30, &LPP), 1), Outcome::Reading { .. }));
    // Same file again: the counter stays.
    let same = Registry::parse(Path::new("devices.toml"), &registry_text(), &[]).expect("registry");
    let codecs = Codecs::build(&same, &codec_limits(50, 8192)).expect("codecs");
    e.reload(same, codecs);
    assert_eq!(refusal(&e.uplink(&data_frame(&abp_keys(), 30, &LPP), 2)), Some("replay"));
    // The device removed: its frames are forwarded untouched, not decoded.
    let empty = Registry::parse(Path::new("devices.toml"), "", &[]).expect("registry");
    let codecs = Codecs::build(&empty, &codec_limits(50, 8192)).expect("codecs");
    e.reload(empty, codecs);
    assert!(matches!(e.uplink(&data_frame(&abp_keys(), 31, &LPP), 3), Outcome::NotOurs));
}

#[test]
fn a_failing_codec_still_publishes_the_reading_with_its_error() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut e = engine(dir.path(), &registry_text());
    // An LPP type that does not exist.
    let Outcome::Reading { reading, codec_failure, .. } =
        e.uplink(&data_frame(&abp_keys(), 1, &[0x01, 0xee, 0x00]), 1)
    else {
        panic!("a reading");
    };
    assert_eq!(codec_failure, Some("malformed"));
    assert!(reading.object.is_null());
    assert_eq!(reading.errors.len(), 1, "{:?}", reading.errors);
    assert_eq!(reading.payload_hex, "01ee00", "the payload travels so the platform can decode it later");
}

#[test]
fn a_device_with_relax_fcnt_is_decoded_after_its_counter_restarts() {
    let dir = tempfile::tempdir().expect("tmp");
    let strict = registry_text();
    let relaxed = strict.replace("codec = \"cayenne_lpp\"", "codec = \"cayenne_lpp\"\nrelax_fcnt = true");
    let mut e = engine(dir.path(), &strict);
    assert!(matches!(e.uplink(&data_frame(&abp_keys(), 40_000, &LPP), 1), Outcome::Reading { .. }));
    assert!(
        refusal(&e.uplink(&data_frame(&abp_keys(), 3, &LPP), 2)).is_some(),
        "strict: a restarted count is refused"
    );
    let dir = tempfile::tempdir().expect("tmp");
    let mut e = engine(dir.path(), &relaxed);
    assert!(matches!(e.uplink(&data_frame(&abp_keys(), 40_000, &LPP), 1), Outcome::Reading { .. }));
    let Outcome::Reading { reading, .. } = e.uplink(&data_frame(&abp_keys(), 3, &LPP), 2) else {
        panic!("relaxed: the restarted device is decoded");
    };
    assert_eq!(reading.f_cnt, 3);
    assert!(
        matches!(e.uplink(&data_frame(&abp_keys(), 4, &LPP), 3), Outcome::Reading { .. }),
        "and counts on from there"
    );
    // The MIC still has to check: a forged frame is refused whatever the counter.
    let forged = SessionKeys { nwk_s_key: AesKey([0x44; 16]), ..abp_keys() };
    assert_eq!(refusal(&e.uplink(&data_frame(&forged, 2, &LPP), 4)), Some("mic"));
}

/// A codec that never returns: each frame of its device holds the decoder for the codec time limit.
const STUCK_JS: &str = "function decodeUplink(input) { while (true) {} }\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_decoder_drops_readings_but_never_a_join() {
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};

    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("stuck.js"), STUCK_JS).expect("codec");
    let registry = registry_text().replace("codec = \"cayenne_lpp\"", "codec = \"stuck.js\"");
    let devices = dir.path().join("devices.toml");
    std::fs::write(&devices, registry).expect("registry");
    std::fs::set_permissions(&devices, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let settings = super::DecoderSettings {
        gateway_id: "0016c001ff10a235".into(),
        devices,
        codec_dirs: vec![dir.path().to_path_buf()],
        limits: codec_limits(1000, 8192),
        sessions: dir.path().join("sessions.sqlite"),
        topics: None,
    };
    let registry = Registry::load(&settings.devices, &settings.codec_dirs).expect("registry");
    let (decoder, thread) = super::Decoder::spawn(settings, registry, None).expect("decoder");

    // The first frame holds the decoder in its codec for a second; the queue fills behind it.
    let frame = data_frame(&abp_keys(), 1, &LPP);
    for seq in 0..=super::QUEUE as u64 + 100 {
        decoder.uplink(frame.clone(), seq);
    }
    assert!(decoder.counters.dropped.load(Ordering::Relaxed) > 0, "the queue is full");

    // An OTAA join meanwhile: JoinRequest, the JoinAccept on its way to the radio, the TxAck.
    let app_key = AesKey(APP_KEY);
    let request = build_join_request(Eui64::from_u64(1), Eui64::from_u64(OTAA_EUI), 0x0102, &app_key);
    decoder.uplink(UplinkFrame::example(request, CrcStatus::Ok), 9_000);
    decoder.downlink(77, &build_join_accept(&accept(), &app_key).expect("accept"));
    decoder.tx_ack(77, true);

    let joined = || decoder.counters.sessions_started.get_or_create(&[("source", "join")]).get();
    let deadline = Instant::now() + Duration::from_secs(60);
    while joined() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(joined(), 1, "the join went through a full queue");
    decoder.stop().await;
    tokio::task::spawn_blocking(move || thread.join()).await.expect("join").expect("decoder thread");
}
