use super::*;

const MINIMAL: &str = r#"
[gateway]
id = "0016c001ff10a235"

[radio]
kind = "sim"
[radio.sim]
devices = []

[sinks.chirpstack]
server = "mqtt://127.0.0.1:1883"
"#;

fn parse_str(text: &str) -> Result<LoadedConfig, ConfigError> {
    parse(Path::new("berrygw.toml"), text.to_string())
}

/// Parsed, then the files it names loaded: what `check-config` and `run` do.
fn resolve_str(text: &str) -> Result<Site, ConfigError> {
    Site::resolve(parse_str(text)?)
}

#[test]
fn minimal_config_takes_defaults() {
    let c = parse_str(MINIMAL).expect("minimal config parses").config;
    assert_eq!(c.journal.backend, Backend::Log);
    assert_eq!(c.journal.max_bytes, 256 * 1024 * 1024);
    let cs = c.sinks.chirpstack.expect("sink");
    assert_eq!(cs.topic_prefix(MqttSinkKind::Chirpstack), "eu868");
    assert_eq!(cs.format(), PayloadFormat::Protobuf);
    assert_eq!(c.http.listen.to_string(), "127.0.0.1:9101", "loopback unless asked");
    assert_eq!(c.api.socket, Path::new("/run/berrygw/api.sock"));
}

#[test]
fn a_retired_backend_and_an_outage_window_past_a_minute_are_refused() {
    let sled = MINIMAL.replace("[sinks.chirpstack]", "[journal]\nbackend = \"sled\"\n\n[sinks.chirpstack]");
    let err = parse_str(&sled).expect_err("sled was retired");
    assert!(err.message.contains("sled") && err.message.contains("`log`"), "{err}");
    let long = MINIMAL
        .replace("[sinks.chirpstack]", "[journal]\noutage_commit_interval_ms = 60001\n\n[sinks.chirpstack]");
    let err = parse_str(&long).expect_err("window too long");
    assert!(err.message.contains("outage_commit_interval_ms must be at most 60000"), "{err}");
    let off = MINIMAL.replace("[sinks.chirpstack]", "[journal]\nstage_dir = \"\"\n\n[sinks.chirpstack]");
    assert_eq!(parse_str(&off).expect("no stage").config.journal.stage_dir(), None);
}

/// MINIMAL with a `[field]` section over the shipped profiles, then `extra`.
fn with_field(devices: &str, extra: &str) -> String {
    let profiles = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/profiles");
    format!("{MINIMAL}\n[field]\nprofile_dirs = [\"{}\"]\n{extra}\n{devices}", profiles.display())
}

const DAM: &str = "[[field.device]]\nname = \"barrage-cher-1\"\nprofile = \"needle-dam\"\n\
                   link = { transport = \"tcp\", address = \"127.0.0.1:502\" }\n";

fn write_mode(path: &Path, text: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[test]
fn a_config_holding_a_password_must_not_be_readable_by_others() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("berrygw.toml");
    let with_password = MINIMAL.replace("server = ", "password = \"s3cret\"\nserver = ");
    write_mode(&path, &with_password, 0o644);
    let err = load(&path).expect_err("world-readable password");
    assert!(err.message.contains("holds an MQTT password"), "{err}");
    assert!(err.message.contains(&format!("chmod 0640 {}", path.display())), "{err}");
    for mode in [0o640, 0o600] {
        write_mode(&path, &with_password, mode);
        load(&path).unwrap_or_else(|e| panic!("{mode:o}: {e}"));
    }
    write_mode(&path, MINIMAL, 0o644);
    load(&path).expect("no secret, any mode");
}

#[test]
fn a_tls_private_key_must_not_be_readable_by_others() {
    let dir = tempfile::tempdir().expect("tmp");
    let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    write_mode(&cert, "cert", 0o644);
    write_mode(&key, "key", 0o644);
    let path = dir.path().join("berrygw.toml");
    let text = MINIMAL.replace(
        "server = \"mqtt://127.0.0.1:1883\"",
        &format!(
            "server = \"mqtts://127.0.0.1:8883\"\nclient_cert_file = \"{}\"\nclient_key_file = \"{}\"",
            cert.display(),
            key.display()
        ),
    );
    write_mode(&path, &text, 0o644);
    let err = load(&path).expect_err("world-readable key");
    assert_eq!(err.key.as_deref(), Some("sinks.chirpstack.client_key_file"), "{err}");
    assert!(err.message.contains(&format!("chmod 0640 {}", key.display())), "{err}");
    write_mode(&key, "key", 0o600);
    load(&path).expect("a private key");
}

#[test]
fn the_lns_key_or_token_must_not_be_readable_by_others() {
    let dir = tempfile::tempdir().expect("tmp");
    let station = dir.path().join("station");
    std::fs::create_dir(&station).expect("dir");
    write_mode(&station.join("tc.uri"), "ws://127.0.0.1:6090", 0o644);
    write_mode(&station.join("tc.key"), "Authorization: Bearer NNSXS.X\n", 0o644);
    let path = dir.path().join("berrygw.toml");
    let text = MINIMAL.replace(
        "[sinks.chirpstack]\nserver = \"mqtt://127.0.0.1:1883\"",
        &format!("[sinks.basic_station]\nstation_dir = {:?}", station.display().to_string()),
    );
    write_mode(&path, &text, 0o640);
    let err = load(&path).expect_err("a world-readable token");
    assert_eq!(err.key.as_deref(), Some("sinks.basic_station.tc_key"), "{err}");
    assert!(err.message.contains("tc.key"), "{err}");
    write_mode(&station.join("tc.key"), "Authorization: Bearer NNSXS.X\n", 0o640);
    load(&path).expect("a private token");
}

#[test]
fn field_devices_are_checked_against_their_profiles() {
    resolve_str(&with_field(DAM, "")).expect("a dam on the shipped profile");
    let cases = [
        (DAM.replace("needle-dam", "nedle-dam"), "field.device.profile", "no profile"),
        (DAM.replace("barrage-cher-1", "barrage/1"), "field.device.name", "letters, digits"),
        (format!("{DAM}\n{DAM}"), "field.device.name", "two field devices"),
        (
            DAM.replace("transport = \"tcp\"", "transport = \"carrier-pigeon\""),
            "field.device.link",
            "unknown variant",
        ),
    ];
    for (devices, key, says) in cases {
        let err = resolve_str(&with_field(&devices, "")).expect_err(key);
        assert_eq!(err.key.as_deref(), Some(key), "{err}");
        assert!(err.message.contains(says), "{err}");
    }
    let err =
        resolve_str(&with_field(&DAM.replace("link", "poll_interval_ms = 10\nlink"), "")).expect_err("poll");
    assert!(err.message.contains("poll_interval_ms"), "{err}");
    let err = resolve_str(&with_field(DAM, "state_interval_secs = 0")).expect_err("interval");
    assert_eq!(err.key.as_deref(), Some("field.state_interval_secs"), "{err}");
    let keys = tempfile::NamedTempFile::new().expect("tmp");
    let err = resolve_str(&with_field(DAM, &format!("authorized_keys = \"{}\"", keys.path().display())))
        .expect_err("commands need the app sink");
    assert!(err.message.contains("[sinks.app]"), "{err}");
}

#[test]
fn rule_commands_must_name_a_device_and_a_command_of_its_profile() {
    let rules = tempfile::NamedTempFile::new().expect("tmp");
    let text = |target: &str, command: &str| {
        format!(
            "[[rule]]\nname = \"r\"\nwhen = {{ target = \"barrage-cher-1\", point = \"motor_fault\", equals = true }}\n\
             then = {{ command = \"{command}\", target = \"{target}\" }}\n"
        )
    };
    let config = with_field(DAM, &format!("rules = \"{}\"", rules.path().display()));
    std::fs::write(rules.path(), text("barrage-cher-1", "stop_bay1")).expect("rules");
    resolve_str(&config).expect("a known command");
    for (target, command, says) in [
        ("barrage-cher-2", "stop_bay1", "no [[field.device]]"),
        ("barrage-cher-1", "open_sesame", "has no command"),
    ] {
        std::fs::write(rules.path(), text(target, command)).expect("rules");
        let err = resolve_str(&config).expect_err(command);
        assert_eq!((err.file.as_path(), err.line), (rules.path(), Some(2)), "{err}");
        assert!(err.message.contains(says), "{err}");
    }
}

#[test]
fn decode_limits_must_leave_codecs_room_to_run() {
    for limits in ["codec_time_limit_ms = 0", "codec_memory_limit_kib = 16"] {
        let text = format!("{MINIMAL}\n[decode]\ndevices = \"/etc/berrygw/devices.toml\"\n{limits}\n");
        let err = parse_str(&text).expect_err(limits);
        assert!(err.message.contains("decode.codec_time_limit_ms"), "{err}");
    }
}

#[test]
fn app_sink_refuses_chirpstack_keys_and_unauthenticated_session_push() {
    let text = format!("{MINIMAL}\n[sinks.app]\nserver = \"mqtt://127.0.0.1:1884\"\nformat = \"json\"\n");
    let err = parse_str(&text).expect_err("format is a ChirpStack key");
    assert_eq!(err.key.as_deref(), Some("sinks.app.format"), "{err}");
    for value in ["true", "false"] {
        let text = format!(
            "{MINIMAL}\n[sinks.app]\nserver = \"mqtts://127.0.0.1:1884\"\nclient_cert_file = \"/c.pem\"\n\
             client_key_file = \"/c.key\"\naccept_session_push = {value}\n"
        );
        let err = parse_str(&text).expect_err("unsigned session push, even over mutual TLS");
        assert_eq!(err.key.as_deref(), Some("sinks.app.accept_session_push"), "{err}");
        assert!(err.message.contains("removed") && err.message.contains("set_session"), "{err}");
    }
    let text = format!("{MINIMAL}\n[sinks.app]\nserver = \"mqtt://127.0.0.1:1884\"\n");
    let c = parse_str(&text).expect("plain app sink on loopback").config;
    assert_eq!(c.sinks.app.expect("app").topic_prefix(MqttSinkKind::App), "berrygw");
}

#[test]
fn bad_http_listen_address_names_the_key() {
    let text = format!("{MINIMAL}\n[http]\nlisten = \"localhost\"\n");
    let err = parse_str(&text).expect_err("address without port refused");
    assert_eq!(err.key.as_deref(), Some("http.listen"), "{err}");
}

#[test]
fn unknown_key_is_reported_with_line_and_key() {
    let text = MINIMAL.replace("[radio]", "[radio]\nfrobnicate = 3");
    let err = parse_str(&text).expect_err("unknown key refused");
    assert_eq!(err.line, Some(6), "{err}");
    assert_eq!(err.key.as_deref(), Some("radio.frobnicate"), "{err}");
    assert!(err.message.contains("frobnicate"), "{err}");
    assert!(err.to_string().starts_with("berrygw.toml:6: key `radio.frobnicate`"), "{err}");
}

#[test]
fn bad_gateway_id_names_the_key() {
    let text = MINIMAL.replace("0016c001ff10a235", "00zz");
    let err = parse_str(&text).expect_err("bad id refused");
    assert_eq!(err.line, Some(3));
    assert_eq!(err.key.as_deref(), Some("gateway.id"));
}

#[test]
fn plaintext_to_remote_host_is_refused_unless_allowed() {
    let text = MINIMAL.replace("127.0.0.1", "broker.example.org");
    let err = parse_str(&text).expect_err("plaintext refused");
    assert_eq!(err.key.as_deref(), Some("sinks.chirpstack.server"));
    assert!(err.message.contains("allow_plaintext"), "{err}");
    let allowed = format!("{text}allow_plaintext = true\n");
    parse_str(&allowed).expect("explicitly allowed");
}

#[test]
fn missing_certificate_file_is_reported_with_its_line() {
    let text = MINIMAL.replace("mqtt://127.0.0.1:1883", "mqtts://127.0.0.1:8883")
        + "ca_file = \"/nonexistent/ca.pem\"\n";
    let err = parse_str(&text).expect_err("missing CA refused");
    assert_eq!(err.key.as_deref(), Some("sinks.chirpstack.ca_file"));
    assert!(err.message.contains("/nonexistent/ca.pem"), "{err}");
}

#[test]
fn client_cert_without_key_is_refused() {
    let text = MINIMAL.replace("mqtt://127.0.0.1:1883", "mqtts://127.0.0.1:8883")
        + "client_cert_file = \"/etc/hostname\"\n";
    let err = parse_str(&text).expect_err("cert without key");
    assert!(err.message.contains("client_key_file"), "{err}");
}

#[test]
fn broker_urls_parse() {
    let u: BrokerUrl = "mqtts://gw.example.org".parse().expect("url");
    assert_eq!((u.tls, u.host.as_str(), u.port), (true, "gw.example.org", 8883));
    let u: BrokerUrl = "tcp://[::1]:1884".parse().expect("url");
    assert!(u.is_loopback() && !u.tls && u.port == 1884);
    assert!("http://x".parse::<BrokerUrl>().is_err());
    assert!("mqtt://x:99999".parse::<BrokerUrl>().is_err());
    assert!("broker:1883".parse::<BrokerUrl>().is_err());
}

#[test]
fn missing_sink_is_refused() {
    let text = MINIMAL.replace("[sinks.chirpstack]\nserver = \"mqtt://127.0.0.1:1883\"", "[sinks]");
    let err = parse_str(&text).expect_err("no sink");
    assert!(err.message.contains("no network server sink"), "{err}");
}

#[test]
fn the_command_keys_are_loaded_when_the_site_is_resolved() {
    // check-config and run refuse a keys file others may write alike (it used to pass
    // check-config and stop only the daemon's start).
    let dir = tempfile::tempdir().expect("tmp");
    let keys = dir.path().join("authorized_keys");
    write_mode(&keys, "", 0o666);
    let app = "[sinks.app]\nserver = \"mqtt://127.0.0.1:1884\"\n";
    let text = format!("{}\n{app}", with_field(DAM, &format!("authorized_keys = \"{}\"", keys.display())));
    parse_str(&text).expect("the file itself is valid");
    let err = resolve_str(&text).expect_err("keys writable by others");
    assert_eq!(err.file, keys, "{err}");
    std::fs::set_permissions(&keys, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
    let site = resolve_str(&text).expect("an empty keys file is valid");
    assert!(site.keys.is_some());
}

#[test]
fn bundles_need_the_app_sink_and_authorized_keys_and_a_sane_watch() {
    let no_app = format!("{MINIMAL}\n[bundles]\n");
    let err = parse_str(&no_app).expect_err("no app sink").to_string();
    assert!(err.contains("[sinks.app]"), "{err}");
    let no_keys = format!("{MINIMAL}\n[sinks.app]\nserver = \"mqtt://127.0.0.1:1883\"\n\n[bundles]\n");
    let err = parse_str(&no_keys).expect_err("no keys").to_string();
    assert!(err.contains("authorized_keys"), "{err}");
    let zero =
        format!("{MINIMAL}\n[sinks.app]\nserver = \"mqtt://127.0.0.1:1883\"\n\n[bundles]\nwatch_secs = 0\n");
    let err = parse_str(&zero).expect_err("no watch").to_string();
    assert!(err.contains("watch_secs"), "{err}");
}
