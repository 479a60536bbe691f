//! End to end: local decoding with the real `berrygw` binary, a simulated
//! radio and a real mosquitto. Readings of registered devices reach the app
//! topic decoded by the shipped JavaScript codecs while every uplink still
//! reaches the network server; an OTAA device joins through the simulated
//! radio and a downlink; SIGHUP and `berrygw reload` swap the registry and a
//! bad one is refused; a registry readable by others stops the start;
//! `berrygw decode` works as a field tool.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use berrygw_lora::phy::{AesKey, DevAddr, Eui64};
use berrygw_lora::security::{build_join_accept, verify_join_request, JoinAccept};
use prost::Message;
use support::*;

const GW: &str = "0016c001ff10a235";
/// Keys of `support::sim_device`.
const NWK: &str = "2b7e151628aed2a6abf7158809cf4f3c";
const APP: &str = "000102030405060708090a0b0c0d0e0f";

fn codec_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/codecs/examples-js")
}

/// A registry entry for a `support::sim_device` (same keys).
fn abp_entry(name: &str, dev_eui: &str, dev_addr: &str, codec: &str) -> String {
    format!(
        "[[device]]\nname = \"{name}\"\ndev_eui = \"{dev_eui}\"\ntags = {{ commune = \"Vierzon\" }}\ncodec = \"{codec}\"\n\
         variables = {{ full_threshold = \"75\" }}\n\
         abp = {{ dev_addr = \"{dev_addr}\", nwk_s_key = \"{NWK}\", app_s_key = \"{APP}\" }}\n\n"
    )
}

fn write_registry(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write registry");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

/// Config with the chirpstack and app sinks on one broker and `[decode]`.
fn decode_config(dir: &Path, broker: &Mosquitto, devices: &str, registry: &Path) -> String {
    let radio = format!("[radio]\nkind = \"sim\"\n\n[radio.sim]\nseed = 7\n\n{devices}\n");
    let sinks = format!(
        "[sinks.chirpstack]\nserver = \"{url}\"\nreconnect_min_ms = 200\nreconnect_max_ms = 1000\n\n\
         [sinks.app]\nserver = \"{url}\"\nreconnect_min_ms = 200\nreconnect_max_ms = 1000\n\n\
         [decode]\ndevices = \"{}\"\ncodec_dirs = [\"{}\"]\n",
        registry.display(),
        codec_dir().display(),
        url = broker.url(false)
    );
    config_with_radio(&dir.join("s"), "sqlite", &radio, &sinks)
}

fn readings(sub: &Subscriber, dev_eui: &str) -> Vec<serde_json::Value> {
    sub.on_topic(&format!("/device/{dev_eui}/up"))
        .iter()
        .map(|s| serde_json::from_slice(&s.payload).expect("reading is JSON"))
        .collect()
}

fn wait_reading(sub: &Subscriber, dev_eui: &str) -> serde_json::Value {
    wait_for(Duration::from_secs(30), &format!("a reading of {dev_eui}"), || readings(sub, dev_eui).pop())
}

#[test]
fn readings_of_registered_devices_reach_the_app_topic_decoded_by_their_codecs() {
    let dir = tempfile::tempdir().expect("tmp");
    let broker = Mosquitto::start(dir.path(), None);
    // One subscriber for both sinks' topics (a second one would share its client id).
    let app = Subscriber::connect(broker.port, "#", None);
    let ns = &app;
    let registry = dir.path().join("devices.toml");
    write_registry(
        &registry,
        &[
            abp_entry("compteur-eau", "70b3d57ed0001001", "26011001", "water_meter.js"),
            abp_entry("sonde-niveau", "70b3d57ed0001002", "26011002", "river_level.js"),
            abp_entry("conteneur-verre", "70b3d57ed0001003", "26011003", "waste_fill.js"),
            abp_entry("armoire-ep", "70b3d57ed0001004", "26011004", "lighting_cabinet.js"),
        ]
        .concat(),
    );
    let devices = [
        four_devices(300, None),
        // Not in the registry: forwarded to the network server, never decoded.
        sim_device("inconnu", "water_meter", "26019999", 300, None),
    ]
    .join("\n");
    let _gw = Berrygw::start(dir.path(), &decode_config(dir.path(), &broker, &devices, &registry));

    let water = wait_reading(&app, "70b3d57ed0001001");
    assert_eq!(water["device_name"], "compteur-eau");
    assert_eq!(water["tags"]["commune"], "Vierzon");
    assert_eq!(water["codec"], "water_meter.js");
    assert!(water["object"]["index_l"].is_u64(), "{water}");
    assert!(water["errors"].as_array().is_some_and(Vec::is_empty), "{water}");
    assert_eq!(water["rx"]["frequency_hz"].as_u64().map(|f| f > 863_000_000), Some(true), "{water}");
    let river = wait_reading(&app, "70b3d57ed0001002");
    assert!(river["object"]["level_cm"].is_number(), "{river}");
    let waste = wait_reading(&app, "70b3d57ed0001003");
    assert!(waste["object"]["full"].is_boolean(), "ChirpStack codec with variables: {waste}");
    let light = wait_reading(&app, "70b3d57ed0001004");
    assert!(light["object"]["circuits"]["circuit_1"].is_boolean(), "legacy Decode(): {light}");

    // The network server still gets every uplink, the stranger's included, and
    // each reading names the same seq as its uplink.
    let ups = ns.wait_uplinks(10, Duration::from_secs(30));
    let stranger = ups.iter().any(|s| {
        let up = s.uplink();
        up.phy_payload.get(1..5) == Some(&DevAddr::from_u32(0x2601_9999).to_le_bytes()[..])
    });
    assert!(stranger, "frames of unknown devices are forwarded untouched");
    let seq = water["seq"].as_u64().expect("seq");
    wait_for(Duration::from_secs(30), "the uplink with the reading's seq", || {
        ns.on_topic("/event/up").iter().any(|s| s.seq() == seq).then_some(())
    });
    assert!(app.on_topic("/device/70b3d57ed0009999/up").is_empty());
}

#[test]
fn an_otaa_device_joins_through_the_radio_and_a_downlink_then_decodes() {
    let dir = tempfile::tempdir().expect("tmp");
    let broker = Mosquitto::start(dir.path(), None);
    let app = Subscriber::connect(broker.port, "#", None);
    let ns = &app;
    let app_key: AesKey = "8f0b6a1c2d3e4f5061728394a5b6c7d8".parse().expect("key");
    let dev_eui = "70b3d57ed0001005";
    let registry = dir.path().join("devices.toml");
    write_registry(
        &registry,
        &format!(
            "[[device]]\nname = \"sonde-otaa\"\ndev_eui = \"{dev_eui}\"\ncodec = \"river_level.js\"\n\
             otaa = {{ app_key = \"{}\" }}\n",
            app_key.to_hex()
        ),
    );
    let device = format!(
        "[[radio.sim.devices]]\nname = \"sonde-otaa\"\nkind = \"river_level\"\ninterval_ms = 1000\n\
         otaa = {{ dev_eui = \"{dev_eui}\", join_eui = \"70b3d57ed0000000\", app_key = \"{}\" }}\n",
        app_key.to_hex()
    );
    let daemon = Berrygw::start(dir.path(), &decode_config(dir.path(), &broker, &device, &registry));

    // The test plays the network server: it answers the JoinRequest with a JoinAccept.
    let request = wait_for(Duration::from_secs(30), "a JoinRequest", || {
        ns.on_topic("/event/up").iter().map(Seen::uplink).find(|u| u.phy_payload.first() == Some(&0x00))
    });
    let fields =
        verify_join_request(&request.phy_payload, &app_key).expect("JoinRequest MIC with the AppKey");
    assert_eq!(fields.dev_eui, dev_eui.parse::<Eui64>().expect("eui"));
    let accept = JoinAccept {
        join_nonce: 0x42,
        net_id: 0x13,
        dev_addr: DevAddr::from_u32(0x2700_1005),
        dl_settings: 0,
        rx_delay: 1,
        cf_list: None,
    };
    let mut down = downlink_command(777);
    down.items[0].phy_payload = build_join_accept(&accept, &app_key).expect("JoinAccept");
    let (client, mut conn) =
        rumqttc::Client::new(rumqttc::MqttOptions::new("test-ns", "127.0.0.1", broker.port), 10);
    std::thread::spawn(move || for _ in conn.iter() {});
    client
        .publish(
            format!("eu868/gateway/{GW}/command/down"),
            rumqttc::QoS::AtLeastOnce,
            false,
            down.encode_to_vec(),
        )
        .expect("publish JoinAccept");

    daemon.wait_log(Duration::from_secs(20), "device joined");
    let reading = wait_reading(&app, dev_eui);
    assert_eq!(reading["device_name"], "sonde-otaa");
    assert_eq!(reading["dev_addr"], "27001005");
    assert!(reading["object"]["level_cm"].is_number(), "{reading}");
}

#[test]
fn sighup_and_reload_swap_the_registry_and_a_bad_one_is_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    let broker = Mosquitto::start(dir.path(), None);
    let app = Subscriber::connect(broker.port, &format!("berrygw/{GW}/#"), None);
    let registry = dir.path().join("devices.toml");
    let river = abp_entry("sonde-niveau", "70b3d57ed0001002", "26011002", "river_level.js");
    let water = abp_entry("compteur-eau", "70b3d57ed0001001", "26011001", "hex");
    write_registry(&registry, &river);
    let devices = [
        sim_device("compteur-eau", "water_meter", "26011001", 200, None),
        sim_device("sonde-niveau", "river_level", "26011002", 200, None),
    ]
    .join("\n");
    let daemon = Berrygw::start(dir.path(), &decode_config(dir.path(), &broker, &devices, &registry));
    wait_reading(&app, "70b3d57ed0001002");
    assert!(readings(&app, "70b3d57ed0001001").is_empty(), "not registered yet");

    // A broken file: refused with file and line, the registry in force stays.
    write_registry(&registry, &format!("{river}{}", water.replace("dev_eui = ", "dev_eui = 12 #")));
    daemon.signal("HUP");
    let refused = daemon.wait_log(Duration::from_secs(10), "NOT reloaded");
    assert!(refused.contains("devices.toml:"), "names the file and line: {refused}");
    let before = readings(&app, "70b3d57ed0001002").len();
    wait_for(Duration::from_secs(20), "river readings go on", || {
        (readings(&app, "70b3d57ed0001002").len() > before + 2).then_some(())
    });

    // Readable by others: refused too, through the local API this time.
    let socket = dir.path().join("s/api.sock");
    write_registry(&registry, &format!("{river}{water}"));
    std::fs::set_permissions(&registry, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = berrygw_command().args(["reload", "--socket"]).arg(&socket).output().expect("berrygw reload");
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("chmod 600"));

    // A good file through `berrygw reload`: the water meter is decoded from now on.
    std::fs::set_permissions(&registry, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let out = berrygw_command().args(["reload", "--socket"]).arg(&socket).output().expect("berrygw reload");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("2 devices"));
    let w = wait_reading(&app, "70b3d57ed0001001");
    assert_eq!(w["codec"], "hex");
    assert_eq!(w["object"]["hex"].as_str().map(str::len), Some(14), "7-byte water meter payload: {w}");
}

#[test]
fn a_registry_readable_by_others_stops_the_start() {
    let dir = tempfile::tempdir().expect("tmp");
    let broker = Mosquitto::start(dir.path(), None);
    let registry = dir.path().join("devices.toml");
    write_registry(&registry, &abp_entry("sonde-niveau", "70b3d57ed0001002", "26011002", "river_level.js"));
    std::fs::set_permissions(&registry, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let config = dir.path().join("berrygw.toml");
    std::fs::write(&config, decode_config(dir.path(), &broker, "devices = []", &registry)).expect("config");
    for cmd in ["check-config", "run"] {
        let mut c = berrygw_command();
        match cmd {
            "run" => c.args(["run", "--config"]),
            _ => c.arg("check-config"),
        };
        let out = c.arg(&config).output().expect("berrygw");
        assert_eq!(out.status.code(), Some(2), "{cmd}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("devices.toml") && err.contains("chmod 600"), "{cmd}: {err}");
    }
}

#[test]
fn decode_command_runs_a_codec_and_verifies_a_whole_frame() {
    let dir = tempfile::tempdir().expect("tmp");
    // A river level payload: 142 cm, 11.5 °C, 3600 mV.
    let out = berrygw_command()
        .args(["decode", "--codec"])
        .arg(codec_dir().join("river_level.js"))
        .args(["--fport", "2", "008e0073 0e10".replace(' ', "").as_str()])
        .output()
        .expect("berrygw decode");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["data"]["level_cm"], 142);
    assert_eq!(v["data"]["battery_v"], 3.6);

    // A whole frame with the registry's keys.
    let broker = Mosquitto::start(dir.path(), None);
    let registry = dir.path().join("devices.toml");
    write_registry(&registry, &abp_entry("sonde-niveau", "70b3d57ed0001002", "26011002", "river_level.js"));
    let config = dir.path().join("berrygw.toml");
    std::fs::write(&config, decode_config(dir.path(), &broker, "devices = []", &registry)).expect("config");
    let phy = berrygw_lora::phy::build_data_uplink(
        &berrygw_lora::phy::DataUplink {
            dev_addr: DevAddr::from_u32(0x2601_1002),
            fcnt: 70_000,
            confirmed: false,
            adr: true,
            f_port: 2,
            payload: &[0x00, 0x8e, 0x00, 0x73, 0x0e, 0x10],
        },
        &NWK.parse().expect("key"),
        &APP.parse().expect("key"),
    )
    .expect("frame");
    let decode = |extra: &[&str]| {
        berrygw_command()
            .args(["decode", "--config"])
            .arg(&config)
            .args(["--device", "sonde-niveau"])
            .args(extra)
            .arg(hex::encode(&phy))
            .output()
            .expect("berrygw decode")
    };
    let out = decode(&["--fcnt", "70000"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!((v["f_cnt"].as_u64(), v["object"]["level_cm"].as_i64()), (Some(70_000), Some(142)), "{v}");
    // Without the full counter the MIC cannot check out: a clear error, not a guess.
    let out = decode(&[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("MIC"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn unsigned_session_keys_are_refused_even_from_a_peer_with_a_certificate_of_the_brokers_ca() {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = Certs::generate(dir.path(), "mtls");
    let broker = tls_broker(dir.path(), &certs, true);
    let app = Subscriber::connect(broker.port, "#", Some(client_tls(&certs, true)));
    let dev_eui = "70b3d57ed0001006";
    let registry = dir.path().join("devices.toml");
    write_registry(
        &registry,
        &format!(
            "[[device]]\nname = \"sonde-poussee\"\ndev_eui = \"{dev_eui}\"\ncodec = \"river_level.js\"\n\
             otaa = {{ app_key = \"00112233445566778899aabbccddeeff\" }}\n"
        ),
    );
    let keys = dir.path().join("authorized_keys");
    std::fs::write(&keys, "").expect("keys");
    // The device joined elsewhere: the sim plays it with its session keys.
    let devices = sim_device("sonde-poussee", "river_level", "26011006", 200, None);
    let radio = format!("[radio]\nkind = \"sim\"\n\n[radio.sim]\nseed = 7\n\n{devices}\n");
    let tls = format!(
        "ca_file = \"{}\"\nclient_cert_file = \"{}\"\nclient_key_file = \"{}\"\nreconnect_min_ms = 200\nreconnect_max_ms = 1000\n",
        certs.ca.display(),
        certs.client_cert.display(),
        certs.client_key.display()
    );
    let sinks = format!(
        "[sinks.chirpstack]\nserver = \"{url}\"\n{tls}\n[sinks.app]\nserver = \"{url}\"\n{tls}\n\
         [decode]\ndevices = \"{}\"\ncodec_dirs = [\"{}\"]\n\n\
         [field]\nauthorized_keys = \"{}\"\nrequire_clock_sync = false\n",
        registry.display(),
        codec_dir().display(),
        keys.display(),
        url = broker.url(true)
    );
    let daemon =
        Berrygw::start(dir.path(), &config_with_radio(&dir.path().join("s"), "sqlite", &radio, &sinks));
    app.wait_uplinks(3, Duration::from_secs(30));

    // Another client holding a certificate from the same CA (another gateway's) pushes keys.
    let mut opts = rumqttc::MqttOptions::new("another-gateway", "127.0.0.1", broker.port);
    opts.set_transport(rumqttc::Transport::tls_with_config(client_tls(&certs, true)));
    let (client, mut conn) = rumqttc::Client::new(opts, 10);
    std::thread::spawn(move || for _ in conn.iter() {});
    let push = format!(
        r#"{{"dev_eui":"{dev_eui}","dev_addr":"26011006","nwk_s_key":"{NWK}","app_s_key":"{APP}","f_cnt_up":0}}"#
    );
    client
        .publish(format!("berrygw/{GW}/session/set"), rumqttc::QoS::AtLeastOnce, false, push.into_bytes())
        .expect("publish");
    daemon.wait_log(Duration::from_secs(20), "refused before authentication");
    let before = app.wait_uplinks(1, Duration::from_secs(5)).len();
    app.wait_uplinks(before + 5, Duration::from_secs(30));
    assert!(readings(&app, dev_eui).is_empty(), "the unsigned keys were not installed");
    let audit = std::fs::read(dir.path().join("s/audit.sqlite")).unwrap_or_default();
    assert!(!String::from_utf8_lossy(&audit).contains(NWK), "nothing stored from the push");
}

#[test]
fn session_keys_in_a_signed_envelope_are_checked_and_installed() {
    use berrygw_proto::envelope::UnsignedCommand;
    let dir = tempfile::tempdir().expect("tmp");
    let broker = Mosquitto::start(dir.path(), None);
    let app = Subscriber::connect(broker.port, "#", None);
    let dev_eui = "70b3d57ed0001007";
    let registry = dir.path().join("devices.toml");
    write_registry(
        &registry,
        &format!(
            "[[device]]\nname = \"compteur-signe\"\ndev_eui = \"{dev_eui}\"\ncodec = \"water_meter.js\"\n\
             otaa = {{ app_key = \"00112233445566778899aabbccddeeff\" }}\n"
        ),
    );
    let key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
    let keys = dir.path().join("authorized_keys");
    use base64::Engine;
    std::fs::write(
        &keys,
        format!(
            "[[key]]\nid = \"lns\"\npublic_key = \"{}\"\ntargets = [\"70b3d57e*\"]\ncommands = [\"set_session\"]\n",
            base64::engine::general_purpose::STANDARD.encode(key.verifying_key().as_bytes())
        ),
    )
    .expect("keys");
    // The device joined through another gateway; the sim plays it with its session keys.
    let devices = sim_device("compteur-signe", "water_meter", "26011007", 200, None);
    let radio = format!("[radio]\nkind = \"sim\"\n\n[radio.sim]\nseed = 7\n\n{devices}\n");
    let sinks = format!(
        "[sinks.chirpstack]\nserver = \"{url}\"\nreconnect_min_ms = 200\nreconnect_max_ms = 1000\n\n\
         [sinks.app]\nserver = \"{url}\"\nreconnect_min_ms = 200\nreconnect_max_ms = 1000\n\n\
         [decode]\ndevices = \"{}\"\ncodec_dirs = [\"{}\"]\n\n\
         [field]\nauthorized_keys = \"{}\"\nrequire_clock_sync = false\n",
        registry.display(),
        codec_dir().display(),
        keys.display(),
        url = broker.url(false)
    );
    let daemon =
        Berrygw::start(dir.path(), &config_with_radio(&dir.path().join("s"), "sqlite", &radio, &sinks));
    app.wait_uplinks(2, Duration::from_secs(30));

    let (client, mut conn) =
        rumqttc::Client::new(rumqttc::MqttOptions::new("test-lns", "127.0.0.1", broker.port), 10);
    std::thread::spawn(move || for _ in conn.iter() {});
    let topic = format!("berrygw/{GW}/session/set");
    // Unsigned, on a broker without mutual TLS: refused.
    let plain = format!(
        r#"{{"dev_eui":"{dev_eui}","dev_addr":"26011007","nwk_s_key":"{NWK}","app_s_key":"{APP}","f_cnt_up":0}}"#
    );
    client.publish(&topic, rumqttc::QoS::AtLeastOnce, false, plain.into_bytes()).expect("publish");
    daemon.wait_log(Duration::from_secs(20), "refused before authentication");
    // The keys are sealed to the gateway's identity, as announced on the broker.
    let announced = wait_for(Duration::from_secs(30), "the identity announcement", || {
        app.on_topic(&format!("berrygw/{GW}/identity")).pop()
    });
    let (_, gateway_key) =
        berrygw_proto::identity::Announcement::parse(&announced.payload).expect("announcement");
    let keys = berrygw_proto::session::SessionKeys { nwk_s_key: NWK.into(), app_s_key: APP.into() };
    let push = |id: &str, args: serde_json::Value| {
        UnsignedCommand {
            id: id.into(),
            key_id: "lns".into(),
            gateway_id: GW.into(),
            target: dev_eui.into(),
            command: "set_session".into(),
            args,
            not_after: berrygw::actuation::engine::now_utc() + chrono::Duration::minutes(5),
            issued_at: Some(berrygw::actuation::engine::now_utc()),
        }
        .sign(&key)
        .expect("sign")
        .to_json()
    };
    // Signed, but with the keys in clear: refused, and the keys are not kept.
    let clear = push(
        "s-0",
        serde_json::json!({ "dev_addr": "26011007", "nwk_s_key": NWK, "app_s_key": APP, "f_cnt_up": 0 }),
    );
    client.publish(&topic, rumqttc::QoS::AtLeastOnce, false, clear.into_bytes()).expect("publish");
    let refused = wait_for(Duration::from_secs(20), "keys in clear refused", || {
        app.on_topic(&format!("berrygw/{GW}/event/command"))
            .into_iter()
            .map(|e| String::from_utf8_lossy(&e.payload).to_string())
            .find(|t| t.contains("s-0"))
    });
    assert!(refused.contains("keys_in_clear"), "{refused}");
    // No sealed keys, or something else than a base64 string: refused, nothing installed.
    for (id, args) in [
        ("s-no-keys", serde_json::json!({ "dev_addr": "26011007", "f_cnt_up": 0 })),
        ("s-not-text", serde_json::json!({ "dev_addr": "26011007", "f_cnt_up": 0, "sealed_keys": 5 })),
    ] {
        client
            .publish(&topic, rumqttc::QoS::AtLeastOnce, false, push(id, args).into_bytes())
            .expect("publish");
        let refused = wait_for(Duration::from_secs(20), id, || {
            app.on_topic(&format!("berrygw/{GW}/event/command"))
                .into_iter()
                .map(|e| String::from_utf8_lossy(&e.payload).to_string())
                .find(|t| t.contains(id))
        });
        assert!(refused.contains("refused") && refused.contains("bad_args"), "{refused}");
    }
    // Signed by the network server's key, keys sealed: installed, and the device decodes;
    // each push under its own id.
    let signed_push = |id: &str| {
        push(
            id,
            serde_json::json!({ "dev_addr": "26011007", "f_cnt_up": 0, "sealed_keys": keys.seal(&gateway_key) }),
        )
    };
    let signed = signed_push("s-1");
    client.publish(&topic, rumqttc::QoS::AtLeastOnce, false, signed.into_bytes()).expect("publish");
    let reading = wait_reading(&app, dev_eui);
    assert_eq!(reading["device_name"], "compteur-signe");
    assert!(reading["object"]["index_l"].is_u64(), "{reading}");
    // Audited and reported like a command, without the keys.
    let event = wait_for(Duration::from_secs(20), "the session event", || {
        app.on_topic(&format!("berrygw/{GW}/event/command")).pop()
    });
    let text = String::from_utf8_lossy(&event.payload).to_string();
    assert!(text.contains("set_session") && text.contains("verified"), "{text}");
    assert!(text.contains("had no session"), "{text}");
    // Pushed again (a new id): the audit says it replaced a session.
    let again = signed_push("s-2");
    client.publish(&topic, rumqttc::QoS::AtLeastOnce, false, again.into_bytes()).expect("publish");
    let replaced = wait_for(Duration::from_secs(20), "the second install", || {
        app.on_topic(&format!("berrygw/{GW}/event/command"))
            .into_iter()
            .map(|e| String::from_utf8_lossy(&e.payload).to_string())
            .find(|t| t.contains("s-2"))
    });
    assert!(replaced.contains("REPLACING its session from pushed"), "{replaced}");
    // The same from the centre's tool: the gateway's key taken from its announcement and
    // pinned; a push sealed to another key is refused by the gateway (exit 1).
    {
        use std::os::unix::fs::PermissionsExt;
        let key_file = dir.path().join("lns.key");
        std::fs::write(
            &key_file,
            format!("{}\n", base64::engine::general_purpose::STANDARD.encode(key.to_bytes())),
        )
        .expect("key");
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let keys_file = dir.path().join("session.json");
        std::fs::write(&keys_file, format!(r#"{{"nwk_s_key":"{NWK}","app_s_key":"{APP}"}}"#)).expect("keys");
        let pins = dir.path().join("known_gateways");
        let url = broker.url(false);
        let push = |extra: &[&str]| {
            berryctl_command()
                .args(["session", "push", "--json", "--broker", &url, "--key-id", "lns", "--gateway", GW])
                .args(["--dev-eui", dev_eui, "--dev-addr", "26011007", "--key"])
                .arg(&key_file)
                .arg("--keys-file")
                .arg(&keys_file)
                .arg("--known-gateways")
                .arg(&pins)
                .args(extra)
                .output()
                .expect("berryctl session push")
        };
        let out = push(&[]);
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(v["outcome"], "verified", "{v}");
        let pinned = std::fs::read_to_string(&pins).expect("pinned");
        assert_eq!(pinned.trim(), format!("{GW} {gateway_key}"));
        let stranger = berrygw_proto::sealed::Identity::generate().recipient().to_string();
        let out = push(&["--recipient", &stranger]);
        // The pin refuses another key for this gateway before anything is sent...
        assert_eq!(out.status.code(), Some(3), "{out:?}");
        // ...and a gateway given keys sealed to another key refuses them.
        let other_pins = dir.path().join("other_pins");
        let out = berryctl_command()
            .args(["session", "push", "--json", "--broker", &url, "--key-id", "lns", "--gateway", GW])
            .args(["--dev-eui", dev_eui, "--dev-addr", "26011007", "--recipient", &stranger, "--key"])
            .arg(&key_file)
            .arg("--keys-file")
            .arg(&keys_file)
            .arg("--known-gateways")
            .arg(&other_pins)
            .output()
            .expect("berryctl session push");
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(v["reason"], "sealed_keys_unreadable", "{v}");
    }
    // Keys never leave, nor stay in the audit log; sealed, they are not on the broker
    // either (only the test's own pushes in clear, on session/set, carry them).
    let sealed_or_not_a_push = |e: &&Seen| {
        !e.topic.ends_with("/session/set") || String::from_utf8_lossy(&e.payload).contains("sealed_keys")
    };
    for event in app.seen().iter().filter(sealed_or_not_a_push) {
        let text = String::from_utf8_lossy(&event.payload).to_lowercase();
        assert!(
            !text.contains(&NWK.to_lowercase()) && !text.contains(&APP.to_lowercase()),
            "a key in: {text}"
        );
    }
    for file in ["audit.sqlite", "audit.sqlite-wal"] {
        let bytes = std::fs::read(dir.path().join("s").join(file)).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes).to_lowercase();
        assert!(
            !text.contains(&NWK.to_lowercase()) && !text.contains(&APP.to_lowercase()),
            "a key in {file}"
        );
    }
}
