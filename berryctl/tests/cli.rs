//! `berryctl` as a script sees it, without a broker: the keys it makes (0600, never over
//! another file, an entry the gateways' own parser accepts) and the exit code of a
//! command that cannot be sent (3: bad arguments or local files; never 2, which means
//! "no answer"). The round trip through a broker and a gateway is in the workspace's
//! tests/actuation.rs (`berryctl_command_…`).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

fn berryctl() -> Command {
    let runner = std::env::var("BERRYGW_TEST_RUNNER").unwrap_or_default();
    let mut words = runner.split_whitespace();
    match words.next() {
        Some(program) => {
            let mut c = Command::new(program);
            c.args(words).arg(env!("CARGO_BIN_EXE_berryctl"));
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_berryctl")),
    }
}

#[test]
fn keygen_writes_a_private_key_once_and_an_entry_gateways_accept() {
    let dir = tempfile::tempdir().expect("tmp");
    let key = dir.path().join("central.key");
    let out = berryctl()
        .args([
            "keygen",
            "--json",
            "--id",
            "central-2027",
            "--targets",
            "barrage-*",
            "--commands",
            "move_bay*,stop_bay*",
            "--out",
        ])
        .arg(&key)
        .output()
        .expect("berryctl keygen");
    assert!(out.status.success(), "{out:?}");
    let mode = std::fs::metadata(&key).expect("key file").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let entry = v["authorized_keys"].as_str().expect("entry");
    let keys =
        berrygw_proto::keys::AuthorizedKeys::parse(Path::new("authorized_keys"), entry).expect("accepted");
    let k = &keys.keys()[0];
    assert_eq!(k.id, "central-2027");
    assert!(k.allows("barrage-cher-1", "move_bay2") && !k.allows("armoire-1", "move_bay2"));
    assert_eq!(v["public_key"], entry.lines().nth(2).and_then(|l| l.split('"').nth(1)).unwrap_or_default());

    let again = berryctl().args(["keygen", "--id", "x", "--out"]).arg(&key).output().expect("again");
    assert_eq!(again.status.code(), Some(3), "never over an existing key: {again:?}");
}

#[test]
fn keygen_for_bundles_gives_no_command_scope_and_unknown_kinds_are_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    let key = dir.path().join("config.key");
    let out = berryctl()
        .args(["keygen", "--json", "--id", "central-config", "--bundles", "devices,codecs", "--out"])
        .arg(&key)
        .output()
        .expect("berryctl keygen");
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let entry = v["authorized_keys"].as_str().expect("entry");
    let keys =
        berrygw_proto::keys::AuthorizedKeys::parse(Path::new("authorized_keys"), entry).expect("accepted");
    let k = &keys.keys()[0];
    assert!(k.targets.is_empty() && !k.allows("barrage-cher-1", "move_bay2"), "{entry}");
    assert_eq!(k.bundles.len(), 2);
    let bad = dir.path().join("bad.key");
    let out = berryctl()
        .args(["keygen", "--id", "b", "--bundles", "firmware", "--out"])
        .arg(&bad)
        .output()
        .expect("keygen");
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(!bad.exists(), "no key left behind for a refused entry");
}

#[test]
fn bundle_build_refuses_a_stray_file_an_unpinned_target_and_a_missing_folder() {
    let dir = tempfile::tempdir().expect("tmp");
    let key = dir.path().join("k");
    let made = berryctl()
        .args(["keygen", "--id", "k", "--bundles", "rules", "--out"])
        .arg(&key)
        .output()
        .expect("keygen");
    assert!(made.status.success(), "{made:?}");
    let site = dir.path().join("site");
    std::fs::create_dir_all(&site).expect("site");
    std::fs::write(site.join("rules.toml"), "").expect("rules");
    let pins = dir.path().join("known_gateways");
    let build = |extra: &[&str]| {
        berryctl()
            .args(["bundle", "build"])
            .arg(&site)
            .args(["--version", "1", "--target", "0016c001ff10a235", "--key-id", "k", "--key"])
            .arg(&key)
            .arg("--known-gateways")
            .arg(&pins)
            .arg("--out")
            .arg(dir.path().join("out.json"))
            .args(extra)
            .output()
            .expect("berryctl bundle build")
    };
    // Not pinned: building needs no broker, so it says how to pin.
    let out = build(&[]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("berryctl pin"), "{out:?}");
    // Pinned: built.
    let gateway = berrygw_proto::sealed::Identity::generate().recipient();
    std::fs::write(&pins, format!("0016c001ff10a235 {gateway}\n")).expect("pins");
    let out = build(&["--json"]);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!((v["version"].as_u64(), v["files"].as_u64()), (Some(1), Some(1)), "{v}");
    // The same target through a group file (a comment, a blank line).
    let group = dir.path().join("vallee-du-cher");
    std::fs::write(&group, "# vallée du Cher\n\n0016c001ff10a235  # Vierzon\n").expect("group");
    let out = berryctl()
        .args(["bundle", "build"])
        .arg(&site)
        .args(["--version", "2", "--key-id", "k", "--json", "--key"])
        .arg(&key)
        .arg("--group")
        .arg(&group)
        .arg("--known-gateways")
        .arg(&pins)
        .arg("--out")
        .arg(dir.path().join("group.json"))
        .output()
        .expect("build for a group");
    assert!(out.status.success(), "{out:?}");
    let built: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("group.json")).expect("bundle")).expect("json");
    let manifest: serde_json::Value =
        serde_json::from_str(built["manifest"].as_str().unwrap_or("")).expect("manifest");
    assert_eq!(manifest["targets"], serde_json::json!(["0016c001ff10a235"]));
    // A group file that names nobody: no target, exit 3.
    let empty = dir.path().join("empty-group");
    std::fs::write(&empty, "# nobody yet\n").expect("group");
    let out = berryctl()
        .args(["bundle", "build"])
        .arg(&site)
        .args(["--version", "3", "--key-id", "k", "--key"])
        .arg(&key)
        .arg("--group")
        .arg(&empty)
        .arg("--known-gateways")
        .arg(&pins)
        .arg("--out")
        .arg(dir.path().join("none.json"))
        .output()
        .expect("build for an empty group");
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    // A file a bundle does not carry.
    std::fs::write(site.join("README"), "notes").expect("stray");
    assert_eq!(build(&[]).status.code(), Some(3));
    let out = berryctl()
        .args(["bundle", "push", "--broker", "mqtt://127.0.0.1:1"])
        .arg(dir.path().join("none.json"))
        .output()
        .expect("push");
    assert_eq!(out.status.code(), Some(3), "{out:?}");
}

#[test]
fn a_command_that_cannot_be_sent_exits_3_and_unknown_options_too() {
    let dir = tempfile::tempdir().expect("tmp");
    let missing = dir.path().join("none.key");
    let out = berryctl()
        .args(["command", "--broker", "mqtt://127.0.0.1:1", "--key"])
        .arg(&missing)
        .args(["--key-id", "k", "--gateway", "0016c001ff10a235", "barrage-cher-1", "move_bay2", "position=1"])
        .output()
        .expect("berryctl command");
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let out = berryctl().args(["command", "--no-such-option"]).output().expect("berryctl");
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let out = berryctl().arg("--version").output().expect("berryctl --version");
    assert!(out.status.success());
}

#[test]
fn a_broker_that_does_not_answer_is_no_answer_exit_2() {
    let dir = tempfile::tempdir().expect("tmp");
    let key = dir.path().join("k");
    let made = berryctl().args(["keygen", "--id", "k", "--out"]).arg(&key).output().expect("keygen");
    assert!(made.status.success());
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let out = berryctl()
        .args(["command", "--json", "--wait", "2", "--broker", &format!("mqtt://127.0.0.1:{port}"), "--key"])
        .arg(&key)
        .args(["--key-id", "k", "--gateway", "0016c001ff10a235", "barrage-cher-1", "move_bay2", "position=1"])
        .output()
        .expect("berryctl command");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(v["outcome"].is_null(), "{v}");
}

#[test]
fn a_session_push_with_keys_that_do_not_read_exits_3_before_any_connection() {
    let dir = tempfile::tempdir().expect("tmp");
    let key = dir.path().join("k");
    assert!(berryctl()
        .args(["keygen", "--id", "k", "--out"])
        .arg(&key)
        .output()
        .expect("keygen")
        .status
        .success());
    let keys = dir.path().join("keys.json");
    for junk in ["not json", r#"{"nwk_s_key": "00"}"#, r#"{"nwk_s_key": "00", "app_s_key": "11", "x": 1}"#] {
        std::fs::write(&keys, junk).expect("write");
        let out = berryctl()
            .args(["session", "push", "--broker", "mqtt://127.0.0.1:1", "--key-id", "k", "--gateway", "g"])
            .args(["--dev-eui", "70b3d57ed0001007", "--dev-addr", "26011007", "--key"])
            .arg(&key)
            .arg("--keys-file")
            .arg(&keys)
            .output()
            .expect("berryctl session push");
        assert_eq!(out.status.code(), Some(3), "{junk}: {out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("--keys-file"), "{out:?}");
    }
}
