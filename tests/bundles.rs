//! End to end: signed configuration bundles with the real `berrygw` daemon, the real
//! `berryctl` and a real mosquitto. A bundle is built from a site folder, pushed, verified,
//! applied and kept; refused for a key without the scope, a file that fails the checks, an
//! old version, another target; a bad signature and junk refused at the door unanswered;
//! rolled back when its codec breaks
//! decoding; taken by a gateway that was off when it was pushed; key rotation by bundle;
//! a version that cannot start is rolled back at the next start; settings that break a
//! sink are rolled back across a restart of the pipeline; one bundle for three gateways
//! and a command round trip over TLS with per-client ACLs. No device key ever crosses
//! the broker in clear (every byte published is searched).

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use base64::Engine as _;
use support::*;

const GW: &str = "0016c001ff10a235";
/// Keys of `support::sim_device`.
const NWK: &str = "2b7e151628aed2a6abf7158809cf4f3c";
const APP: &str = "000102030405060708090a0b0c0d0e0f";
const DEV_EUI: &str = "70b3d57ed0001001";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn signing_key(seed: u8) -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[seed; 32])
}

/// `berryctl` key file of `seed`, 0600.
fn key_file(dir: &Path, name: &str, seed: u8) -> PathBuf {
    let path = dir.join(format!("{name}.key"));
    std::fs::write(&path, format!("{}\n", b64(&signing_key(seed).to_bytes()))).expect("key");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    path
}

/// An authorized_keys entry for bundles.
fn bundle_key(id: &str, seed: u8, kinds: &str) -> String {
    format!(
        "[[key]]\nid = \"{id}\"\npublic_key = \"{}\"\nbundles = {kinds}\n\n",
        b64(signing_key(seed).verifying_key().as_bytes())
    )
}

/// An authorized_keys entry for commands only.
fn command_key(id: &str, seed: u8) -> String {
    format!(
        "[[key]]\nid = \"{id}\"\npublic_key = \"{}\"\ntargets = [\"*\"]\ncommands = [\"*\"]\n\n",
        b64(signing_key(seed).verifying_key().as_bytes())
    )
}

/// The registry of the one simulated meter, with `codec`.
fn registry(codec: &str) -> String {
    format!(
        "[[device]]\nname = \"compteur\"\ndev_eui = \"{DEV_EUI}\"\ncodec = \"{codec}\"\n\
         abp = {{ dev_addr = \"26011001\", nwk_s_key = \"{NWK}\", app_s_key = \"{APP}\" }}\n"
    )
}

/// A codec that says which bundle it came in.
fn codec(version: u64) -> String {
    format!("function decodeUplink(input) {{ return {{ data: {{ bundle: {version}, bytes: input.bytes.length }} }}; }}\n")
}

const BROKEN_CODEC: &str = "function decodeUplink(input) { throw new Error(\"broken on purpose\"); }\n";

/// A site folder: `files` (path, content).
fn site(dir: &Path, name: &str, files: &[(&str, &str)]) -> PathBuf {
    let site = dir.join(name);
    std::fs::create_dir_all(site.join("codecs")).expect("site");
    for (path, content) in files {
        let path = site.join(path);
        std::fs::create_dir_all(path.parent().expect("in the site")).expect("site folder");
        std::fs::write(path, content).expect("site file");
    }
    site
}

struct Centre {
    dir: PathBuf,
    url: String,
    pins: PathBuf,
}

impl Centre {
    /// `berryctl bundle build` of `site` as `version` for `targets`, signed by `key`.
    fn build(&self, site: &Path, version: u64, key: (&str, &Path), targets: &[&str]) -> (Output, PathBuf) {
        let out = self.dir.join(format!("bundle-{version}-{}.json", rand_suffix()));
        let mut c = berryctl_command();
        c.args(["bundle", "build"]).arg(site).args(["--version", &version.to_string(), "--key-id", key.0]);
        c.arg("--key").arg(key.1).arg("--known-gateways").arg(&self.pins).arg("--out").arg(&out);

        for t in targets {
            c.args(["--target", t]);
        }
        (c.output().expect("berryctl bundle build"), out)
    }

    /// `berryctl pin` of this gateway (its announced identity key).
    fn pin(&self) {
        let out = berryctl_command()
            .args(["pin", "--json", "--gateway", GW, "--broker", &self.url, "--known-gateways"])
            .arg(&self.pins)
            .output()
            .expect("berryctl pin");
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        assert!(v[GW]["key"].is_string() && v[GW]["pinned"] == "now", "{v}");
    }

    /// Build, expecting success.
    fn built(&self, site: &Path, version: u64, key: (&str, &Path)) -> PathBuf {
        let (out, file) = self.build(site, version, key, &[GW]);
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        file
    }

    /// `berryctl bundle push FILE --json`: the exit code and this gateway's event.
    fn push(&self, file: &Path, extra: &[&str]) -> (Option<i32>, serde_json::Value) {
        let out = berryctl_command()
            .args(["bundle", "push", "--json", "--broker", &self.url])
            .arg(file)
            .args(extra)
            .output()
            .expect("berryctl bundle push");
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"));
        (out.status.code(), v["gateways"][GW].clone())
    }
}

fn rand_suffix() -> u32 {
    rand::random()
}

/// Gateway configuration: sim radio with the meter, both sinks, decoding, keys, bundles.
fn gateway_config(dir: &Path, broker: &Mosquitto, watch_secs: u64) -> String {
    let registry_path = dir.join("devices.toml");
    std::fs::write(&registry_path, registry("water_meter.js")).expect("registry");
    std::fs::set_permissions(&registry_path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let keys = dir.join("authorized_keys");
    let text = [
        bundle_key("config", 5, "[\"devices\", \"codecs\"]"),
        bundle_key("root", 6, "[\"authorized_keys\"]"),
        command_key("cmd", 7),
    ]
    .concat();
    std::fs::write(&keys, text).expect("keys");
    let devices = sim_device("compteur", "water_meter", "26011001", 250, None);
    let radio = format!("[radio]\nkind = \"sim\"\n\n[radio.sim]\nseed = 7\n\n{devices}\n");
    let sinks = format!(
        "[sinks.chirpstack]\nserver = \"{url}\"\nreconnect_min_ms = 200\nreconnect_max_ms = 1000\n\n\
         [sinks.app]\nserver = \"{url}\"\nreconnect_min_ms = 200\nreconnect_max_ms = 1000\n\n\
         [decode]\ndevices = \"{}\"\ncodec_dirs = [\"{}\"]\n\n\
         [field]\nauthorized_keys = \"{}\"\nrequire_clock_sync = false\n\n\
         [bundles]\nwatch_secs = {watch_secs}\n",
        registry_path.display(),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/codecs/examples-js").display(),
        keys.display(),
        url = broker.url(false)
    );
    config_with_radio(&dir.join("s"), "sqlite", &radio, &sinks)
}

/// Readings of the meter decoded by the codec of bundle `version`, seen after `after` messages.
fn wait_bundle_reading(sub: &Subscriber, version: u64, after: usize) -> serde_json::Value {
    wait_for(Duration::from_secs(30), &format!("a reading decoded by bundle {version}'s codec"), || {
        sub.on_topic(&format!("/device/{DEV_EUI}/up"))
            .into_iter()
            .skip(after)
            .map(|s| serde_json::from_slice::<serde_json::Value>(&s.payload).expect("json"))
            .find(|r| r["object"]["bundle"] == version)
    })
}

/// The bundle events of this gateway so far.
fn bundle_events(sub: &Subscriber) -> Vec<serde_json::Value> {
    sub.on_topic(&format!("{GW}/event/bundle"))
        .iter()
        .map(|s| serde_json::from_slice(&s.payload).expect("event json"))
        .collect()
}

fn wait_bundle_event(
    sub: &Subscriber,
    what: &str,
    f: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    wait_for(Duration::from_secs(60), what, || bundle_events(sub).into_iter().find(|e| f(e)))
}

/// The version in force, from `berrygw status --json`.
/// (Asked again while the daemon restarts its pipeline, which closes its API a moment.)
fn config_version(dir: &Path) -> serde_json::Value {
    wait_for(Duration::from_secs(30), "berrygw status to answer", || {
        let out = berrygw_command()
            .args(["status", "--json", "--config"])
            .arg(dir.join("berrygw.toml"))
            .output()
            .expect("status");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        Some(v["config_version"].clone())
    })
}

/// Neither device key in any message the broker carried.
fn assert_no_key_crossed(sub: &Subscriber) {
    let seen = sub.seen();
    assert!(seen.iter().any(|s| s.topic.ends_with("/bundle")), "bundles were published");
    for s in &seen {
        let text = String::from_utf8_lossy(&s.payload).to_lowercase();
        assert!(!text.contains(NWK) && !text.contains(APP), "a device key in clear on {}", s.topic);
    }
}

#[test]
fn bundles_are_applied_refused_and_rolled_back_and_no_device_key_crosses_the_broker() {
    let dir = tempfile::tempdir().expect("tmp");
    let broker = Mosquitto::start(dir.path(), None);
    let sub = Subscriber::connect(broker.port, "#", None);
    let daemon = Berrygw::start(dir.path(), &gateway_config(dir.path(), &broker, 3));
    let centre = Centre {
        dir: dir.path().to_path_buf(),
        url: broker.url(false),
        pins: dir.path().join("known_gateways"),
    };
    let config_key = key_file(dir.path(), "config", 5);
    let cmd_key = key_file(dir.path(), "cmd", 7);
    sub.wait_uplinks(1, Duration::from_secs(30));

    // Version 1: the registry and a codec of the site; applied, watched, kept.
    let v1 = site(
        dir.path(),
        "v1",
        &[("devices.toml", &registry("site_meter.js")), ("codecs/site_meter.js", &codec(1))],
    );
    centre.pin();
    assert!(
        std::fs::read_to_string(&centre.pins).expect("pinned").starts_with(GW),
        "identity fetched and pinned"
    );
    let file = centre.built(&v1, 1, ("config", &config_key));
    let (code, event) = centre.push(&file, &["--until", "kept"]);
    assert_eq!(code, Some(0), "{event}");
    assert_eq!(event["outcome"], "kept", "{event}");
    wait_bundle_reading(&sub, 1, 0);
    assert_eq!(config_version(dir.path()), 1);
    let applied = wait_bundle_event(&sub, "applied", |e| e["outcome"] == "applied" && e["version"] == 1);
    assert!(applied["message"].as_str().unwrap_or("").contains("devices.toml"), "{applied}");

    // A key without the bundles scope for these files: refused, nothing changes.
    let (code, event) = centre.push(&centre.built(&v1, 2, ("cmd", &cmd_key)), &[]);
    assert_eq!((code, event["event"]["reason"].as_str()), (Some(1), Some("out_of_scope")), "{event}");
    // A registry naming a codec the bundle does not carry: fails the check-config checks.
    let bad = site(dir.path(), "bad", &[("devices.toml", &registry("missing.js"))]);
    let (code, event) = centre.push(&centre.built(&bad, 2, ("config", &config_key)), &[]);
    assert_eq!((code, event["event"]["reason"].as_str()), (Some(1), Some("check_failed")), "{event}");
    assert!(event["event"]["message"].as_str().unwrap_or("").contains("missing.js"), "{event}");
    // Version 1 again, other content: not newer.
    let again = site(dir.path(), "again", &[("codecs/site_meter.js", &codec(9))]);
    let (code, event) = centre.push(&centre.built(&again, 1, ("config", &config_key)), &[]);
    assert_eq!((code, event["event"]["reason"].as_str()), (Some(1), Some("not_newer")), "{event}");
    assert_eq!(config_version(dir.path()), 1);

    // Published by hand: a forged manifest, a bundle for another gateway, junk.
    let (client, mut conn) =
        rumqttc::Client::new(rumqttc::MqttOptions::new("intruder", "127.0.0.1", broker.port), 10);
    std::thread::spawn(move || for _ in conn.iter() {});
    let topic = format!("berrygw/{GW}/bundle");
    let genuine: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).expect("read")).expect("json");
    let mut forged = genuine.clone();
    forged["manifest"] = serde_json::Value::String(
        genuine["manifest"].as_str().unwrap_or("").replace("\"version\":1", "\"version\":5"),
    );
    client.publish(&topic, rumqttc::QoS::AtLeastOnce, false, forged.to_string()).expect("publish");
    // Unauthenticated: refused at the door like an unsigned command, logged, never answered.
    daemon.wait_log(Duration::from_secs(30), "bundle: signature does not verify with key `config`");
    let other = "0016c001ff10a299";
    let stranger = berrygw_proto::sealed::Identity::generate().recipient();
    std::fs::write(dir.path().join("other_pins"), format!("{other} {stranger}\n")).expect("pins");
    let other_centre =
        Centre { dir: centre.dir.clone(), url: centre.url.clone(), pins: dir.path().join("other_pins") };
    let (out, elsewhere) = other_centre.build(&v1, 6, ("config", &config_key), &[other]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    client
        .publish(&topic, rumqttc::QoS::AtLeastOnce, false, std::fs::read(&elsewhere).expect("read"))
        .expect("publish");
    wait_bundle_event(&sub, "wrong target", |e| e["reason"] == "wrong_target" && e["version"] == 6);
    client
        .publish(&topic, rumqttc::QoS::AtLeastOnce, false, &b"{\"bundle\": 1, \"junk\": true}"[..])
        .expect("publish");
    daemon.wait_log(Duration::from_secs(30), "bundle: not a bundle");
    assert!(bundle_events(&sub).iter().all(|e| e["reason"] != "bad_signature" && e["reason"] != "malformed"));
    // A site folder with a file a bundle does not carry: refused by the tool (exit 3).
    let stray = site(dir.path(), "stray", &[("notes.txt", "to do\n")]);
    assert_eq!(centre.build(&stray, 7, ("config", &config_key), &[GW]).0.status.code(), Some(3));

    // Version 2 breaks decoding: applied, then rolled back by the gateway itself.
    let broken = site(dir.path(), "broken", &[("codecs/site_meter.js", BROKEN_CODEC)]);
    let file = centre.built(&broken, 2, ("config", &config_key));
    let (code, event) = centre.push(&file, &["--until", "kept"]);
    assert_eq!(code, Some(1), "{event}");
    assert_eq!(event["outcome"], "rolled_back", "{event}");
    assert!(event["event"]["message"].as_str().unwrap_or("").contains("decoder"), "{event}");
    assert_eq!(config_version(dir.path()), 1);
    let seen = sub.on_topic(&format!("/device/{DEV_EUI}/up")).len();
    wait_bundle_reading(&sub, 1, seen);
    // The same version once more: refused, never applied twice (no loop).
    let (code, event) = centre.push(&centre.built(&broken, 2, ("config", &config_key)), &[]);
    assert_eq!((code, event["event"]["reason"].as_str()), (Some(1), Some("not_newer")), "{event}");

    // Audited like commands.
    let audit = sub.on_topic(&format!("{GW}/event/command"));
    let audit: Vec<String> = audit.iter().map(|s| String::from_utf8_lossy(&s.payload).into_owned()).collect();
    assert!(audit.iter().any(|a| a.contains("apply_bundle") && a.contains("\"verified\"")), "{audit:?}");
    assert!(audit.iter().any(|a| a.contains("apply_bundle") && a.contains("rolled_back")), "{audit:?}");
    assert_no_key_crossed(&sub);
}

#[test]
fn a_gateway_off_when_pushed_takes_the_bundle_back_and_keys_rotate_by_bundle() {
    let dir = tempfile::tempdir().expect("tmp");
    let broker = Mosquitto::start(dir.path(), None);
    let sub = Subscriber::connect(broker.port, "#", None);
    // A long watch: the daemon is killed below while a version is still on probation.
    let mut daemon = Berrygw::start(dir.path(), &gateway_config(dir.path(), &broker, 12));
    let centre = Centre {
        dir: dir.path().to_path_buf(),
        url: broker.url(false),
        pins: dir.path().join("known_gateways"),
    };
    let config_key = key_file(dir.path(), "config", 5);
    let root_key = key_file(dir.path(), "root", 6);
    let new_key = key_file(dir.path(), "config2", 8);
    sub.wait_uplinks(1, Duration::from_secs(30));
    centre.pin();
    let v1 = site(
        dir.path(),
        "v1",
        &[("devices.toml", &registry("site_meter.js")), ("codecs/site_meter.js", &codec(1))],
    );
    let file = centre.built(&v1, 1, ("config", &config_key));

    // Off when pushed: no answer (exit 2); the retained bundle is taken at the next start.
    daemon.stop();
    let (code, _) = centre.push(&file, &["--wait", "3"]);
    assert_eq!(code, Some(2));
    let seen = sub.on_topic(&format!("/device/{DEV_EUI}/up")).len();
    daemon.restart();
    wait_bundle_event(&sub, "bundle 1 applied after the restart", |e| {
        e["outcome"] == "applied" && e["version"] == 1
    });
    wait_bundle_reading(&sub, 1, seen);

    // Rotation: the config key replaced by a new one. Only a key scoped for authorized_keys may.
    let rotated = [
        bundle_key("config2", 8, "[\"devices\", \"codecs\"]"),
        bundle_key("root", 6, "[\"authorized_keys\"]"),
    ]
    .concat();
    let rotation = site(dir.path(), "rotation", &[("authorized_keys", &rotated)]);
    let (code, event) = centre.push(&centre.built(&rotation, 2, ("config", &config_key)), &[]);
    assert_eq!((code, event["event"]["reason"].as_str()), (Some(1), Some("out_of_scope")), "{event}");
    let (code, event) = centre.push(&centre.built(&rotation, 2, ("root", &root_key)), &["--wait", "60"]);
    assert_eq!((code, event["outcome"].as_str()), (Some(0), Some("applied")), "{event}");
    // The old key is gone, the new one works.
    let v3 = site(dir.path(), "v3", &[("codecs/site_meter.js", &codec(3))]);
    // (Signed by a key it no longer knows: refused at the door, unanswered, so exit 2.)
    let (code, event) = centre.push(&centre.built(&v3, 3, ("config", &config_key)), &["--wait", "30"]);
    assert_eq!(code, Some(2), "{event}");
    daemon.wait_log(Duration::from_secs(30), "bundle: no key `config`");
    let seen = sub.on_topic(&format!("/device/{DEV_EUI}/up")).len();
    let (code, event) = centre.push(&centre.built(&v3, 3, ("config2", &new_key)), &["--wait", "60"]);
    assert_eq!((code, event["outcome"].as_str()), (Some(0), Some("applied")), "{event}");
    wait_bundle_reading(&sub, 3, seen);

    // Killed while version 3 is on probation, and its registry damaged on the card: the
    // next start rolls back to version 2 and says so.
    daemon.kill9();
    let current = dir.path().join("s/bundles/current/devices.toml");
    std::fs::write(&current, "this is not toml [[[").expect("damage");
    daemon.restart();
    let event = wait_bundle_event(&sub, "rolled back at start", |e| {
        e["outcome"] == "rolled_back" && e["version"] == 3
    });
    assert_eq!(event["reason"], "start_failed", "{event}");
    assert_eq!(event["in_force"], 2, "{event}");
    // (No reading to look at: the simulated meter restarts its frame counter with the
    // daemon, so the decoder rightly refuses its next frames as replays.)
    assert_eq!(config_version(dir.path()), 2);
    assert_no_key_crossed(&sub);
}

#[test]
fn a_bundle_whose_broker_settings_fail_is_rolled_back_by_the_gateway_and_good_ones_stay() {
    let dir = tempfile::tempdir().expect("tmp");
    let broker = Mosquitto::start(dir.path(), None);
    let sub = Subscriber::connect(broker.port, "#", None);
    let daemon = Berrygw::start(dir.path(), &gateway_config(dir.path(), &broker, 4));
    let centre = Centre {
        dir: dir.path().to_path_buf(),
        url: broker.url(false),
        pins: dir.path().join("known_gateways"),
    };
    let settings_key = key_file(dir.path(), "settings", 9);
    sub.wait_uplinks(1, Duration::from_secs(30));
    centre.pin();
    // The site's keys file gets a key for settings first (by the root key).
    let keys = [
        bundle_key("config", 5, "[\"devices\", \"codecs\"]"),
        bundle_key("root", 6, "[\"authorized_keys\"]"),
        bundle_key("settings", 9, "[\"settings\", \"profiles\"]"),
    ]
    .concat();
    let root_key = key_file(dir.path(), "root", 6);
    let rotation = site(dir.path(), "keys", &[("authorized_keys", &keys)]);
    let (code, event) = centre.push(&centre.built(&rotation, 1, ("root", &root_key)), &["--until", "kept"]);
    assert_eq!((code, event["outcome"].as_str()), (Some(0), Some("kept")), "{event}");

    // Settings a bundle may not change: refused before anything is staged.
    let identity =
        site(dir.path(), "identity", &[("berrygw.toml", "[gateway]\nid = \"0016c001ff10a299\"\n")]);
    let (code, event) = centre.push(&centre.built(&identity, 2, ("settings", &settings_key)), &[]);
    assert_eq!((code, event["event"]["reason"].as_str()), (Some(1), Some("check_failed")), "{event}");
    assert!(event["event"]["message"].as_str().unwrap_or("").contains("may not change remotely"), "{event}");

    // The network server's broker moved to a port where nobody listens: applied, the
    // pipeline restarts on it, the chirpstack sink never connects, rolled back, reconnected.
    let dead = free_port();
    let moved = format!(
        "[sinks.chirpstack]\nserver = \"mqtt://127.0.0.1:{dead}\"\nreconnect_min_ms = 200\nreconnect_max_ms = 1000\n"
    );
    let bad = site(dir.path(), "bad-broker", &[("berrygw.toml", &moved)]);
    let (code, event) =
        centre.push(&centre.built(&bad, 3, ("settings", &settings_key)), &["--until", "kept"]);
    assert_eq!((code, event["outcome"].as_str()), (Some(1), Some("rolled_back")), "{event}");
    assert!(event["event"]["message"].as_str().unwrap_or("").contains("chirpstack sink"), "{event}");
    daemon.wait_log(Duration::from_secs(30), "restarting the pipeline on the settings");
    assert_eq!(config_version(dir.path()), 1);
    // Back on the right broker: uplinks flow to the network server again.
    let before = sub.on_topic("/up").len();
    wait_for(Duration::from_secs(30), "uplinks after the roll-back", || {
        (sub.on_topic("/up").len() > before + 2).then_some(())
    });

    // A good change (the same broker, a shorter keep-alive): kept after its watch.
    let good = format!(
        "[sinks.chirpstack]\nserver = \"{}\"\nreconnect_min_ms = 200\nreconnect_max_ms = 1000\nkeep_alive_secs = 10\n",
        broker.url(false)
    );
    let good = site(dir.path(), "good-broker", &[("berrygw.toml", &good)]);
    let (code, event) =
        centre.push(&centre.built(&good, 4, ("settings", &settings_key)), &["--until", "kept"]);
    assert_eq!((code, event["outcome"].as_str()), (Some(0), Some("kept")), "{event}");
    assert_eq!(config_version(dir.path()), 4);

    // A Modbus profile of the site: checked as check-config checks, then the pipeline
    // restarts on it (profiles are read when the field devices start); kept. A broken one
    // is refused with the profile parser's own words.
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/profiles/energy-meter.toml");
    let meter = std::fs::read_to_string(shipped)
        .expect("profile")
        .replace("name = \"energy-meter\"", "name = \"site-meter\"");
    let profiles = site(dir.path(), "profiles", &[("profiles/site-meter.toml", &meter)]);
    let (code, event) =
        centre.push(&centre.built(&profiles, 5, ("settings", &settings_key)), &["--until", "kept"]);
    assert_eq!((code, event["outcome"].as_str()), (Some(0), Some("kept")), "{event}");
    assert!(dir.path().join("s/bundles/current/profiles/site-meter.toml").exists());
    let broken = site(
        dir.path(),
        "broken-profile",
        &[("profiles/site-meter.toml", "name = \"site-meter\"\n[[points]]\nkind = \"nonsense\"\n")],
    );
    let (code, event) = centre.push(&centre.built(&broken, 6, ("settings", &settings_key)), &[]);
    assert_eq!((code, event["event"]["reason"].as_str()), (Some(1), Some("check_failed")), "{event}");
    assert!(event["event"]["message"].as_str().unwrap_or("").contains("site-meter.toml"), "{event}");
    assert_eq!(config_version(dir.path()), 5);
    assert_no_key_crossed(&sub);
}

#[test]
fn over_tls_with_per_client_acls_one_bundle_reaches_three_gateways_and_a_command_comes_back() {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = Certs::generate(dir.path(), "bundles");
    let (central_cert, central_key) = certs.client("central");
    let broker = acl_broker(
        dir.path(),
        &certs,
        "user central\n\
         topic read berrygw/+/state\ntopic read berrygw/+/health\ntopic read berrygw/+/identity\n\
         topic read berrygw/+/event/#\ntopic write berrygw/+/command\ntopic write berrygw/+/session/set\n\
         topic readwrite berrygw/+/bundle\n\n\
         pattern readwrite berrygw/%u/#\npattern readwrite eu868/gateway/%u/#\n",
    );
    let url = broker.url(true);
    let ids = ["0016c001ff10b001", "0016c001ff10b002", "0016c001ff10b003"];
    let keys_text = [bundle_key("config", 5, "[\"devices\", \"codecs\"]"), command_key("cmd", 7)].concat();
    let mut daemons = Vec::new();
    for (n, id) in ids.iter().enumerate() {
        let gw_dir = dir.path().join(id);
        std::fs::create_dir_all(&gw_dir).expect("dir");
        let (cert, key) = certs.client(id);
        let registry_path = gw_dir.join("devices.toml");
        std::fs::write(&registry_path, registry("water_meter.js")).expect("registry");
        std::fs::set_permissions(&registry_path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let keys = gw_dir.join("authorized_keys");
        std::fs::write(&keys, &keys_text).expect("keys");
        let devices = sim_device("compteur", "water_meter", "26011001", 300 + 50 * n as u64, None);
        let radio = format!("[radio]\nkind = \"sim\"\n\n[radio.sim]\nseed = {n}\n\n{devices}\n");
        let sinks = format!(
            "{}\n{}\n[decode]\ndevices = \"{}\"\ncodec_dirs = [\"{}\"]\n\n\
             [field]\nauthorized_keys = \"{}\"\nrequire_clock_sync = false\n\n[bundles]\nwatch_secs = 3\n",
            tls_sink("chirpstack", &url, &certs, &cert, &key),
            tls_sink("app", &url, &certs, &cert, &key),
            registry_path.display(),
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/codecs/examples-js").display(),
            keys.display(),
        );
        let config = config_with_radio(&gw_dir.join("s"), "log", &radio, &sinks).replace(GW, id);
        daemons.push(Berrygw::start(&gw_dir, &config));
    }
    for d in &daemons {
        d.wait_log(Duration::from_secs(60), "app sink: connected");
    }
    let central = |c: &mut std::process::Command| {
        c.args(["--broker", &url, "--ca-file"])
            .arg(&certs.ca)
            .arg("--client-cert-file")
            .arg(&central_cert)
            .arg("--client-key-file")
            .arg(&central_key);
    };
    let pins = dir.path().join("known_gateways");
    let mut pin = berryctl_command();
    pin.arg("pin").arg("--known-gateways").arg(&pins);
    for id in ids {
        pin.args(["--gateway", id]);
    }
    central(&mut pin);
    let out = pin.output().expect("berryctl pin");
    assert_eq!(out.status.code(), Some(0), "{out:?}");

    // One bundle for the three: each gets its own copy, sealed to it, on its own topic.
    let v1 = site(
        dir.path(),
        "v1",
        &[("devices.toml", &registry("site_meter.js")), ("codecs/site_meter.js", &codec(1))],
    );
    let config_key = key_file(dir.path(), "config", 5);
    let file = dir.path().join("v1.bundle");
    let mut build = berryctl_command();
    build.args(["bundle", "build"]).arg(&v1).args(["--version", "1", "--key-id", "config", "--key"]);
    build.arg(&config_key).arg("--known-gateways").arg(&pins).arg("--out").arg(&file);
    for id in ids {
        build.args(["--target", id]);
    }
    let out = build.output().expect("build");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let mut push = berryctl_command();
    push.args(["bundle", "push", "--json", "--until", "kept"]).arg(&file);
    central(&mut push);
    let out = push.output().expect("push");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    for id in ids {
        assert_eq!(v["gateways"][id]["outcome"], "kept", "{v}");
    }

    // A command round trip through the same ACLs: refused by the gateway (no such
    // device there), so exit 1 with the gateway's reason.
    let cmd_key = key_file(dir.path(), "cmd", 7);
    let mut command = berryctl_command();
    command.args(["command", "--json", "--key-id", "cmd", "--gateway", ids[1], "--wait", "30", "--key"]);
    command.arg(&cmd_key);
    central(&mut command);
    command.args(["barrage-absent", "stop_bay"]);
    let out = command.output().expect("command");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        (v["outcome"].as_str(), v["reason"].as_str()),
        (Some("refused"), Some("unknown_target")),
        "{v}"
    );
}
