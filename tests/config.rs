//! End to end: configuration mistakes stop `berrygw check-config` and
//! `berrygw run` with a message that names the file, the line and the key.

mod support;

use support::*;

fn check_config(text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("berrygw.toml");
    std::fs::write(&path, text).expect("write");
    let out = berrygw_command().arg("check-config").arg(&path).output().expect("run berrygw");
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text.replace(&path.display().to_string(), "FILE"))
}

fn valid() -> String {
    config(
        std::path::Path::new("/tmp/berrygw-test-state"),
        "sqlite",
        "mqtt://127.0.0.1:1883",
        "",
        "devices = []",
    )
}

#[test]
fn shipped_example_config_passes_check_config() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/berrygw.toml");
    let out = berrygw_command().arg("check-config").arg(example).output().expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn valid_config_passes() {
    let (ok, out) = check_config(&valid());
    assert!(ok, "{out}");
    assert!(out.contains("OK"), "{out}");
}

#[test]
fn unknown_key_names_file_line_and_key() {
    let text = valid().replace("[journal]\n", "[journal]\nmax_megabytes = 12\n");
    let line = text.lines().position(|l| l.starts_with("max_megabytes")).expect("inserted") + 1;
    let (ok, out) = check_config(&text);
    assert!(!ok);
    assert!(out.contains(&format!("FILE:{line}: key `journal.max_megabytes`")), "{out}");
    assert!(out.contains("unknown field"), "{out}");
}

#[test]
fn bad_values_are_named() {
    for (from, to, key) in [
        ("backend = \"sqlite\"", "backend = \"postgres\"", "journal.backend"),
        ("id = \"0016c001ff10a235\"", "id = \"0016c001\"", "gateway.id"),
        ("server = \"mqtt://127.0.0.1:1883\"", "server = \"http://x\"", "sinks.chirpstack.server"),
    ] {
        let (ok, out) = check_config(&valid().replace(from, to));
        assert!(!ok, "{to} must be refused");
        assert!(out.contains(&format!("key `{key}`")), "{to}: {out}");
    }
}

#[test]
fn missing_certificate_file_is_refused_with_its_path() {
    let text = valid()
        .replace("mqtt://127.0.0.1:1883", "mqtts://127.0.0.1:8883")
        .replace("keep_alive_secs = 5", "keep_alive_secs = 5\nca_file = \"/nonexistent/ca.pem\"");
    let (ok, out) = check_config(&text);
    assert!(!ok);
    assert!(out.contains("key `sinks.chirpstack.ca_file`") && out.contains("/nonexistent/ca.pem"), "{out}");
}

#[test]
fn garbage_certificate_file_stops_run_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("tmp");
    let bad = dir.path().join("ca.pem");
    std::fs::write(&bad, "this is not PEM").expect("write");
    let text = config(
        &dir.path().join("s"),
        "sqlite",
        "mqtts://127.0.0.1:8883",
        &format!("ca_file = \"{}\"", bad.display()),
        "devices = []",
    );
    let path = dir.path().join("berrygw.toml");
    std::fs::write(&path, text).expect("write");
    let out = berrygw_command().args(["run", "--config"]).arg(&path).output().expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ca_file") && err.contains("no PEM certificate"), "{err}");
}

#[test]
fn plaintext_to_a_remote_broker_is_refused() {
    let (ok, out) = check_config(&valid().replace("127.0.0.1:1883", "broker.example.org:1883"));
    assert!(!ok);
    assert!(out.contains("allow_plaintext"), "{out}");
}

#[test]
fn run_refuses_to_start_on_a_bad_config() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("berrygw.toml");
    std::fs::write(&path, valid().replace("[gateway]", "[gateway]\ncolour = \"blue\"")).expect("write");
    let out = berrygw_command().args(["run", "--config"]).arg(&path).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refusing to start") && err.contains("gateway.colour"), "{err}");
}

#[test]
fn a_codec_that_does_not_compile_is_refused_by_check_config_and_run_alike() {
    let dir = tempfile::tempdir().expect("tmp");
    let (registry, codecs) = registry_with_a_broken_codec(dir.path());
    let text = format!(
        "{}\n[decode]\ndevices = \"{}\"\ncodec_dirs = [\"{}\"]\n",
        config(&dir.path().join("state"), "sqlite", "mqtt://127.0.0.1:1", "", "devices = []"),
        registry.display(),
        codecs.display()
    );
    let path = dir.path().join("berrygw.toml");
    std::fs::write(&path, text).expect("write");
    let checked = berrygw_command().arg("check-config").arg(&path).output().expect("check-config");
    assert_eq!(checked.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&checked.stderr).contains("broken.js"), "{checked:?}");
    // The daemon compiles each codec once, on its decoder thread; the same file is refused
    // there with the same exit status.
    let out = berrygw_command().args(["run", "--config"]).arg(&path).output().expect("run");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refusing to start") && err.contains("broken.js"), "{err}");
}

#[test]
fn check_config_refuses_a_world_readable_file_holding_a_password() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("berrygw.toml");
    std::fs::write(
        &path,
        valid().replace("[sinks.chirpstack]\n", "[sinks.chirpstack]\npassword = \"s3cret\"\n"),
    )
    .expect("write");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = berrygw_command().arg("check-config").arg(&path).output().expect("run berrygw");
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "{text}");
    assert!(text.contains(&format!("run: chmod 0640 {}", path.display())), "{text}");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let out = berrygw_command().arg("check-config").arg(&path).output().expect("run berrygw");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_bad_ledger_section_is_named() {
    for (lines, key) in [
        ("timezone = \"../../etc/passwd\"", "ledger.timezone"),
        ("heartbeat_secs = 0", "ledger.heartbeat_secs"),
        ("check_secs = 0", "ledger.check_secs"),
        ("gtr_minutes = 0", "ledger.gtr_minutes"),
        ("max_incidents = 10", "ledger.max_incidents"),
        ("heartbeats = 3", "ledger.heartbeats"),
    ] {
        let (ok, out) = check_config(&format!("{}\n[ledger]\n{lines}\n", valid()));
        assert!(!ok, "{lines} must be refused");
        assert!(out.contains(key), "{lines}: {out}");
    }
    let (ok, out) = check_config(&format!("{}\n[ledger]\nenabled = false\nheartbeat_secs = 0\n", valid()));
    assert!(ok, "a ledger that is off is not checked: {out}");
    // A zone this machine has no file for is the machine's matter (tzdata), not the file's:
    // the gateway starts and the ledger counts in UTC, saying so.
    let (ok, out) = check_config(&format!("{}\n[ledger]\ntimezone = \"Mars/Olympus_Mons\"\n", valid()));
    assert!(ok, "{out}");
}
