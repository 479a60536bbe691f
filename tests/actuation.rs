//! End to end: actuation with the real `berrygw` binary, a real mosquitto and
//! the needle dam and lighting cabinet simulators on loopback Modbus TCP.
//! A command signed by the central platform is executed, read back, verified
//! and reported on the app topic; every refusal reason is asserted; a command
//! that goes stale while the gateway is away is refused when it comes back;
//! a field agent's `berrygw actuate`, `points` and `audit` go through the
//! local API with the same checks.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use berrygw::actuation::engine::now_utc;
use berrygw_modbus::sim::{LightingCabinetSim, NeedleDamSim, Selector};
use berrygw_proto::envelope::UnsignedCommand;
use chrono::Utc;
use ed25519_dalek::SigningKey;
use support::*;

const GW: &str = "0016c001ff10a235";

/// The central platform's key (fixed seed: reproducible) and a key of another service.
fn central_key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}
fn lighting_key() -> SigningKey {
    SigningKey::from_bytes(&[9; 32])
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn profiles_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/profiles")
}

/// A gateway beside a weir and a lighting cabinet, both simulated.
struct Site {
    dir: tempfile::TempDir,
    _rt: tokio::runtime::Runtime,
    dam: NeedleDamSim,
    _cabinet: LightingCabinetSim,
    broker: Mosquitto,
    sub: Subscriber,
    gw: Berrygw,
    socket: PathBuf,
}

fn start_site() -> Site {
    start_site_with_rules(None)
}

/// A site whose gateway also runs `rules` (the text of rules.toml).
fn start_site_with_rules(rules: Option<&str>) -> Site {
    let dir = tempfile::tempdir().expect("tmp");
    let rules_line = match rules {
        Some(text) => {
            let path = dir.path().join("rules.toml");
            std::fs::write(&path, text).expect("rules");
            format!("rules = \"{}\"\n", path.display())
        }
        None => String::new(),
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let any = "127.0.0.1:0".parse().expect("addr");
    let dam = rt.block_on(NeedleDamSim::start(any)).expect("dam simulator");
    dam.set_speed(50.0); // a bay crosses its range in two seconds
    let cabinet = rt.block_on(LightingCabinetSim::start(any)).expect("cabinet simulator");
    let broker = Mosquitto::start(dir.path(), None);
    let sub = Subscriber::connect(broker.port, "#", None);
    let keys = dir.path().join("authorized_keys");
    std::fs::write(
        &keys,
        format!(
            "[[key]]\nid = \"central-2026\"\npublic_key = \"{}\"\ntargets = [\"barrage-*\"]\ncommands = [\"move_bay*\", \"stop_bay*\"]\n\n\
             [[key]]\nid = \"eclairage\"\npublic_key = \"{}\"\ntargets = [\"armoire-*\"]\ncommands = [\"*\"]\n",
            b64(central_key().verifying_key().as_bytes()),
            b64(lighting_key().verifying_key().as_bytes())
        ),
    )
    .expect("keys");
    let radio = "[radio]\nkind = \"sim\"\n\n[radio.sim]\ndevices = []\n";
    let sinks = format!(
        "[sinks.chirpstack]\nserver = \"{url}\"\nreconnect_min_ms = 200\nreconnect_max_ms = 1000\n\n\
         [sinks.app]\nserver = \"{url}\"\nreconnect_min_ms = 200\nreconnect_max_ms = 1000\n\n\
         [field]\nprofile_dirs = [\"{}\"]\nauthorized_keys = \"{}\"\n\
         # The test machine's clock may not be NTP-synchronized.\nrequire_clock_sync = false\n{rules_line}\n\
         [[field.device]]\nname = \"barrage-cher-1\"\nprofile = \"needle-dam\"\npoll_interval_ms = 200\n\
         link = {{ transport = \"tcp\", address = \"{}\" }}\n\n\
         [[field.device]]\nname = \"armoire-ep-rue-haute\"\nprofile = \"lighting-cabinet\"\npoll_interval_ms = 200\n\
         link = {{ transport = \"tcp\", address = \"{}\" }}\n",
        profiles_dir().display(),
        keys.display(),
        dam.local_addr(),
        cabinet.local_addr(),
        url = broker.url(false)
    );
    let state = dir.path().join("s");
    let gw = Berrygw::start(dir.path(), &config_with_radio(&state, "sqlite", radio, &sinks));
    let socket = state.join("api.sock");
    let site = Site { dir, _rt: rt, dam, _cabinet: cabinet, broker, sub, gw, socket };
    wait_for(Duration::from_secs(30), "the dam online in `berrygw points`", || {
        site.cli(&["points", "barrage-cher-1"]).filter(|o| o.contains("online")).map(drop)
    });
    // A command published before the app sink's SUBACK is not delivered to it (no session
    // yet): under qemu the dam can be online first.
    site.gw.wait_log(Duration::from_secs(60), "app sink: subscribed");
    site
}

impl Site {
    fn cli(&self, args: &[&str]) -> Option<String> {
        let out = berrygw_command().args(args).arg("--socket").arg(&self.socket).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Publish a command envelope as the central platform would.
    fn publish(&self, payload: String) {
        let mut opts = rumqttc::MqttOptions::new("test-central", "127.0.0.1", self.broker.port);
        // Room for the oversized command test (the client's default limit is 10 KiB).
        opts.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut conn) = rumqttc::Client::new(opts, 10);
        client
            .publish(format!("berrygw/{GW}/command"), rumqttc::QoS::AtLeastOnce, false, payload.into_bytes())
            .expect("publish");
        // Drive the connection until the PUBACK.
        for event in conn.iter() {
            if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) = event {
                break;
            }
        }
    }

    /// `berrygw_commands_unauthenticated_total{reason}` from /metrics on the API socket.
    fn unauthenticated(&self, reason: &str) -> u64 {
        use std::io::{Read, Write};
        let Ok(mut stream) = std::os::unix::net::UnixStream::connect(&self.socket) else { return 0 };
        let _ = stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        let mut body = String::new();
        let _ = stream.read_to_string(&mut body);
        let needle = format!("berrygw_commands_unauthenticated_total{{reason=\"{reason}\"}} ");
        body.lines()
            .find_map(|l| l.strip_prefix(needle.as_str()))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Result events for command `id`, in arrival order.
    fn results(&self, id: &str) -> Vec<serde_json::Value> {
        self.sub
            .on_topic(&format!("berrygw/{GW}/event/command"))
            .iter()
            .filter_map(|s| serde_json::from_slice::<serde_json::Value>(&s.payload).ok())
            .map(|v| v["audit"].clone())
            .filter(|a| a["command_id"] == id)
            .collect()
    }

    /// Wait for the final result (refused, verified or failed) of command `id`.
    fn outcome(&self, id: &str) -> serde_json::Value {
        wait_for(Duration::from_secs(60), &format!("a final result for {id}"), || {
            self.results(id).into_iter().find(|a| a["outcome"] != "executed")
        })
    }
}

fn signed(
    id: &str,
    key_id: &str,
    key: &SigningKey,
    target: &str,
    command: &str,
    args: serde_json::Value,
) -> String {
    command_with(id, key_id, key, GW, target, command, args, now_utc() + chrono::Duration::minutes(5))
}

#[allow(clippy::too_many_arguments)]
fn command_with(
    id: &str,
    key_id: &str,
    key: &SigningKey,
    gateway_id: &str,
    target: &str,
    command: &str,
    args: serde_json::Value,
    not_after: chrono::DateTime<Utc>,
) -> String {
    UnsignedCommand {
        id: id.into(),
        key_id: key_id.into(),
        gateway_id: gateway_id.into(),
        target: target.into(),
        command: command.into(),
        args,
        not_after,
        issued_at: Some(now_utc()),
    }
    .sign(key)
    .expect("sign")
    .to_json()
}

#[test]
fn signed_command_is_executed_read_back_verified_and_reported() {
    let mut site = start_site();
    let move2 = signed(
        "c-1",
        "central-2026",
        &central_key(),
        "barrage-cher-1",
        "move_bay2",
        serde_json::json!({"position": 60}),
    );
    site.publish(move2.clone());
    let verified = site.outcome("c-1");
    assert_eq!(verified["outcome"], "verified", "{verified}");
    assert_eq!(verified["source"], "central");
    assert_eq!(verified["actor"], "central-2026");
    let all = site.results("c-1");
    assert_eq!(all.first().map(|a| a["outcome"].clone()), Some("executed".into()), "executed first: {all:?}");
    // Verified within the profile's 1 % tolerance; the bay then finishes its move.
    wait_for(Duration::from_secs(10), "bay 2 at 60 %", || {
        site.dam.bay_position(2).filter(|p| (p - 60.0).abs() < 0.01)
    });

    // The same envelope again: a copy, refused at the door (counted, not audited again)...
    site.publish(move2.clone());
    wait_for(Duration::from_secs(20), "the copy refused", || {
        (site.unauthenticated("duplicate") == 1).then_some(())
    });
    // ...and after a restart, by the durable replay window (audited).
    site.gw.stop();
    site.gw.restart();
    site.publish(move2);
    wait_for(Duration::from_secs(20), "the replay refused", || {
        site.results("c-1").into_iter().find(|a| a["reason"] == "replayed")
    });
    // The field state is published too.
    wait_for(Duration::from_secs(20), "field state on the app topic", || {
        site.sub.on_topic(&format!("berrygw/{GW}/field/barrage-cher-1/state")).pop()
    });
}

/// `berryctl command` at the centre: signs, publishes through the broker, waits for the
/// gateway's outcome; its exit code says verified (0), refused (1) or no answer (2).
#[test]
fn berryctl_command_signs_publishes_and_reports_the_outcome_with_its_exit_code() {
    use std::os::unix::fs::PermissionsExt;
    let site = start_site();
    let key = site.dir.path().join("central.key");
    std::fs::write(&key, format!("{}\n", b64(&central_key().to_bytes()))).expect("key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let url = site.broker.url(false);
    let berryctl = |key_id: &str, target: &str, command: &str, args: &[&str], wait: &str| {
        let out = berryctl_command()
            .args(["command", "--json", "--broker", &url, "--key"])
            .arg(&key)
            .args(["--key-id", key_id, "--gateway", GW, "--wait", wait, target, command])
            .args(args)
            .output()
            .expect("berryctl");
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        (out.status.code(), json, String::from_utf8_lossy(&out.stderr).into_owned())
    };

    let (code, outcome, err) =
        berryctl("central-2026", "barrage-cher-1", "move_bay2", &["position=40"], "60");
    assert_eq!(code, Some(0), "{outcome} {err}");
    assert_eq!(outcome["outcome"], "verified", "{outcome}");
    assert_eq!(outcome["actor"], "central-2026");
    assert_eq!(site.dam.bay_position(2).map(|p| (p - 40.0).abs() < 1.0), Some(true));

    // Out of the key's scope: refused by the gateway, audited, exit 1 with the reason.
    let (code, outcome, err) = berryctl("central-2026", "armoire-ep-rue-haute", "switch_on", &[], "60");
    assert_eq!(code, Some(1), "{outcome} {err}");
    assert_eq!(outcome["outcome"], "refused", "{outcome}");
    assert!(outcome["reason"].is_string(), "{outcome}");

    // A key the gateway does not know: dropped unanswered (only counted), exit 2.
    let (code, outcome, err) = berryctl("nobody", "barrage-cher-1", "move_bay2", &["position=50"], "3");
    assert_eq!(code, Some(2), "{outcome} {err}");
    assert!(outcome["outcome"].is_null() && err.contains("authorized_keys"), "{outcome} {err}");
    wait_for(Duration::from_secs(20), "the unknown key counted", || {
        (site.unauthenticated("unknown_key") >= 1).then_some(())
    });

    // Bad arguments and a key others may read: exit 3, nothing published.
    let (code, _, err) = berryctl("central-2026", "barrage-cher-1", "move_bay2", &["position"], "3");
    assert_eq!(code, Some(3), "{err}");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let (code, _, err) = berryctl("central-2026", "barrage-cher-1", "move_bay2", &["position=50"], "3");
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("chmod 600"), "{err}");
}

#[test]
fn every_refusal_reason_is_reported_and_nothing_moves() {
    let site = start_site();
    let (bay1, bay3) = (site.dam.bay_position(1), site.dam.bay_position(3));
    let dam = |id: &str, command: &str, args| {
        signed(id, "central-2026", &central_key(), "barrage-cher-1", command, args)
    };
    let pos = |p: f64| serde_json::json!({ "position": p });

    // Tampered after signing: the position changed on the way.
    let mut tampered: serde_json::Value =
        serde_json::from_str(&dam("r-sig", "move_bay1", pos(20.0))).expect("envelope JSON");
    tampered["args"]["position"] = serde_json::json!(95.0);
    let tampered = tampered.to_string();
    // Signed by a key this gateway does not know.
    let stranger = signed(
        "r-key",
        "intrus",
        &SigningKey::from_bytes(&[1; 32]),
        "barrage-cher-1",
        "move_bay1",
        pos(20.0),
    );
    // A key whose scope is lighting only.
    let scope = signed("r-scope", "eclairage", &lighting_key(), "barrage-cher-1", "move_bay1", pos(20.0));
    let other_gw = command_with(
        "r-gw",
        "central-2026",
        &central_key(),
        "0016c001ff10ffff",
        "barrage-cher-1",
        "move_bay1",
        pos(20.0),
        now_utc() + chrono::Duration::minutes(5),
    );
    let expired = command_with(
        "r-exp",
        "central-2026",
        &central_key(),
        GW,
        "barrage-cher-1",
        "move_bay1",
        pos(20.0),
        now_utc() - chrono::Duration::seconds(5),
    );
    let bounds = dam("r-bounds", "move_bay1", pos(150.0));
    // Refused at the door, before authentication: counted, never audited nor reported one by one.
    for (payload, reason) in
        [(tampered, "bad_signature"), (stranger, "unknown_key"), ("{not json".to_string(), "malformed")]
    {
        site.publish(payload);
        wait_for(Duration::from_secs(20), &format!("{reason} counted"), || {
            (site.unauthenticated(reason) == 1).then_some(())
        });
    }
    let forged = site.gw.wait_log(Duration::from_secs(5), "claimed_key=\"central-2026\"");
    assert!(forged.contains("bad_signature") && forged.contains("claimed key"), "{forged}");
    // Signed by a known key: refused with a reason, audited and reported.
    let cases = [
        (scope, "r-scope", "out_of_scope"),
        (other_gw, "r-gw", "wrong_gateway"),
        (expired, "r-exp", "expired"),
        (bounds, "r-bounds", "args_out_of_bounds"),
    ];
    for (payload, id, reason) in &cases {
        site.publish(payload.clone());
        let result = site.outcome(id);
        assert_eq!(result["outcome"], "refused", "{id}: {result}");
        assert_eq!(result["reason"], *reason, "{id}: {result}");
    }
    assert!(
        site.results("r-sig").is_empty() && site.results("r-key").is_empty(),
        "forgeries are not reported"
    );
    let audit = site.cli(&["audit", "--json"]).expect("audit");
    assert!(!audit.contains("r-sig") && !audit.contains("r-key") && !audit.contains("intrus"), "{audit}");

    // Interlocks: the selector on local, then a motor fault.
    site.dam.set_selector(Selector::Local);
    site.publish(dam("r-local", "move_bay3", pos(40.0)));
    let r = site.outcome("r-local");
    assert_eq!((r["outcome"].as_str(), r["reason"].as_str()), (Some("refused"), Some("interlock")), "{r}");
    assert!(r["message"].as_str().is_some_and(|m| m.contains("LOCAL")), "says why: {r}");
    site.dam.set_selector(Selector::Remote);
    site.dam.set_motor_fault(true);
    site.publish(dam("r-fault", "move_bay3", pos(40.0)));
    let r = site.outcome("r-fault");
    assert_eq!(r["reason"], "interlock", "{r}");
    assert!(r["message"].as_str().is_some_and(|m| m.contains("fault")), "says why: {r}");
    assert_eq!(site.dam.bay_position(1), bay1, "no refused command moved bay 1");
    assert_eq!(site.dam.bay_position(3), bay3, "no refused command moved bay 3");
}

#[test]
fn a_command_that_expires_while_the_gateway_is_away_is_refused_when_it_is_back() {
    let mut site = start_site();
    let bay4 = site.dam.bay_position(4);
    site.gw.stop();
    let stale = command_with(
        "late-1",
        "central-2026",
        &central_key(),
        GW,
        "barrage-cher-1",
        "move_bay4",
        serde_json::json!({"position": 80}),
        now_utc() + chrono::Duration::seconds(2),
    );
    // Published during the outage: the broker keeps it for the gateway's session.
    site.publish(stale);
    std::thread::sleep(Duration::from_secs(3));
    site.gw.restart();
    let r = site.outcome("late-1");
    assert_eq!((r["outcome"].as_str(), r["reason"].as_str()), (Some("refused"), Some("expired")), "{r}");
    assert_eq!(site.dam.bay_position(4), bay4, "a stale command never runs");
}

#[test]
fn field_agent_commands_go_through_the_same_checks_and_the_audit_log() {
    let site = start_site();
    let out = berrygw_command()
        .args(["actuate", "barrage-cher-1", "move_bay1", "position=30", "--socket"])
        .arg(&site.socket)
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout} {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.starts_with("verified"), "{stdout}");
    // Too soon for the same bay (min_interval_s = 10 in the profile): refused, exit 1.
    let out = berrygw_command()
        .args(["actuate", "barrage-cher-1", "move_bay1", "position=35", "--socket"])
        .arg(&site.socket)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("too_soon"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // An enumeration argument by its label.
    let out = site.cli(&["actuate", "armoire-ep-rue-haute", "set_mode", "mode=forced_on"]);
    assert!(out.as_deref().is_some_and(|o| o.starts_with("verified")), "{out:?}");

    let points = site.cli(&["points", "barrage-cher-1"]).expect("points");
    assert!(points.contains("bay1_position") && points.contains("move_bay1"), "{points}");
    let audit = site.cli(&["audit", "--json"]).expect("audit");
    let entries: Vec<serde_json::Value> = serde_json::from_str(&audit).expect("JSON");
    let me = format!("uid {}", my_uid());
    assert!(
        entries.iter().any(|e| e["source"] == "local" && e["actor"] == me && e["outcome"] == "verified"),
        "{audit}"
    );
    assert!(entries.iter().any(|e| e["reason"] == "too_soon"), "{audit}");
    let table = site.cli(&["audit"]).expect("audit table");
    assert!(table.contains("move_bay1"), "{table}");
    // Commands typed on site are reported to the platform like the others.
    wait_for(Duration::from_secs(20), "local commands reported as events too", || {
        site.sub
            .on_topic(&format!("berrygw/{GW}/event/command"))
            .into_iter()
            .find(|s| String::from_utf8_lossy(&s.payload).contains("\"local\""))
    });
    let _ = &site.dir;
}

/// This process's uid (what the daemon sees on its socket).
fn my_uid() -> u32 {
    std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m)).unwrap_or(0)
}

const RULES: &str = r#"
[site]
latitude = 47.222
longitude = 2.068
timezone = "Europe/Paris"

[[rule]]
name = "defaut-moteur"
when = { target = "barrage-cher-1", point = "motor_fault", equals = true }
then = { alarm = "defaut-moteur-barrage", severity = "critical", message = "Défaut moteur au barrage du Cher" }

[[rule]]
name = "arret-si-local"
when = { target = "barrage-cher-1", point = "selector", equals = "local" }
then = { command = "stop_bay1", target = "barrage-cher-1" }

[[rule]]
name = "extinction-nuit"
when = { cron = "30 23 * * *" }
then = { command = "set_mode", target = "armoire-ep-rue-haute", args = { mode = "auto" } }
"#;

#[test]
fn rules_raise_alarms_and_send_commands_with_the_backhaul_down() {
    let mut site = start_site_with_rules(Some(RULES));
    site.broker.stop();
    let status = |site: &Site| -> serde_json::Value {
        let out = berrygw_command()
            .args(["status", "--json", "--socket"])
            .arg(&site.socket)
            .output()
            .expect("status");
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    };

    // A motor fault raises the alarm: on the status page and in `berrygw status`.
    site.dam.set_motor_fault(true);
    let alarm = wait_for(Duration::from_secs(20), "the alarm in /api/status", || {
        status(&site)["alarms"].as_array().and_then(|a| a.first().cloned())
    });
    assert_eq!(alarm["name"], "defaut-moteur-barrage", "{alarm}");
    assert_eq!(alarm["severity"], "critical");
    assert!(status(&site)["problems"].to_string().contains("Défaut moteur"), "the alarm makes it unhealthy");

    // The selector turned to local: the rule stops bay 1, through every check, audited as a rule.
    site.dam.set_selector(Selector::Local);
    let stopped = wait_for(Duration::from_secs(30), "the rule's command in the audit log", || {
        let audit = site.cli(&["audit", "--json"])?;
        let entries: Vec<serde_json::Value> = serde_json::from_str(&audit).ok()?;
        entries.into_iter().find(|e| e["source"] == "rule" && e["outcome"] != "executed")
    });
    assert_eq!(stopped["actor"], "arret-si-local", "{stopped}");
    assert_eq!(stopped["command"], "stop_bay1");
    assert_eq!(stopped["outcome"], "verified", "{stopped}");

    // Fault cleared: alarm cleared. Backhaul back: the alarm events come out of the journal.
    site.dam.set_motor_fault(false);
    wait_for(Duration::from_secs(20), "the alarm cleared", || {
        status(&site)["alarms"].as_array().is_some_and(Vec::is_empty).then_some(())
    });
    site.broker.restart();
    let events = wait_for(Duration::from_secs(30), "raise and clear events after the outage", || {
        let events: Vec<serde_json::Value> = site
            .sub
            .on_topic(&format!("berrygw/{GW}/event/alarm"))
            .iter()
            .filter_map(|s| serde_json::from_slice(&s.payload).ok())
            .collect();
        (events.len() >= 2).then_some(events)
    });
    assert_eq!((events[0]["raised"].as_bool(), events[1]["raised"].as_bool()), (Some(true), Some(false)));

    // Rules reload with the registry and keys: a rule removed, the count follows.
    let fewer =
        RULES.replace("[[rule]]\nname = \"extinction-nuit\"", "[[rule]]\nname = \"extinction-nuit-bis\"");
    std::fs::write(site.dir.path().join("rules.toml"), fewer).expect("rules");
    let out = site.cli(&["reload"]).expect("reload");
    assert!(out.contains("3 rules") && out.contains("authorized keys"), "{out}");
    std::fs::write(site.dir.path().join("rules.toml"), "[[rule]]\nname = \"broken\"\n").expect("rules");
    assert!(site.cli(&["reload"]).is_none(), "a broken rules file is refused");
}

#[test]
fn actuate_arguments_that_do_not_parse_are_refused_before_asking_the_daemon() {
    for bad in [&["position"][..], &["{not json"][..]] {
        let out = berrygw_command()
            .args(["actuate", "barrage-cher-1", "move_bay1"])
            .args(bad)
            .args(["--socket", "/nonexistent/api.sock"])
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn an_oversized_command_is_refused_by_the_app_sink_and_the_next_one_runs() {
    let site = start_site();
    site.publish("x".repeat(20 * 1024));
    site.gw.wait_log(Duration::from_secs(20), "at most 8192 are accepted");
    site.publish(signed(
        "ok-1",
        "central-2026",
        &central_key(),
        "barrage-cher-1",
        "stop_bay3",
        serde_json::json!({}),
    ));
    assert_eq!(site.outcome("ok-1")["outcome"], "verified");
}

/// `berrygw <args> --socket <socket>` run as another user (uid = gid = `uid`).
fn cli_as(site: &Site, uid: u32, args: &[&str]) -> std::process::Output {
    use std::os::unix::process::CommandExt;
    berrygw_command().args(args).arg("--socket").arg(&site.socket).uid(uid).gid(uid).output().expect("run")
}

#[test]
fn only_listed_operators_may_act_on_the_local_api_and_refusals_are_audited() {
    use std::os::unix::fs::PermissionsExt;
    let mut site = start_site();
    // uid 1001 may move the weir's bays, nothing else; anyone reaching the socket may read.
    let config = site.dir.path().join("berrygw.toml");
    let text = std::fs::read_to_string(&config).expect("config");
    let text = text.replacen(
        "[api]\n",
        "[api]\noperators = [{ uid = 1001, targets = [\"barrage-*\"], commands = [\"move_bay*\"] }]\n",
        1,
    );
    site.gw.stop();
    std::fs::write(&config, text).expect("config");
    site.gw.restart();
    wait_for(Duration::from_secs(30), "the dam online again", || {
        site.cli(&["points", "barrage-cher-1"]).filter(|o| o.contains("online")).map(drop)
    });
    // Let other users reach the socket, as its group would.
    for dir in [site.dir.path().to_path_buf(), site.socket.parent().expect("dir").to_path_buf()] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711)).expect("chmod dir");
    }
    std::fs::set_permissions(&site.socket, std::fs::Permissions::from_mode(0o666)).expect("chmod socket");
    let bay1 = site.dam.bay_position(1);

    let reader = cli_as(&site, 1002, &["status", "--json"]);
    assert!(
        reader.status.success(),
        "reading needs no allow-list: {}",
        String::from_utf8_lossy(&reader.stderr)
    );
    for (uid, args) in [
        (1002, &["actuate", "barrage-cher-1", "move_bay1", "position=30"][..]),
        (1002, &["reload"][..]),
        (1001, &["actuate", "barrage-cher-1", "stop_bay1"][..]),
        (1001, &["actuate", "armoire-ep-rue-haute", "set_mode", "mode=forced_on"][..]),
        (1001, &["reload"][..]),
    ] {
        let out = cli_as(&site, uid, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "uid {uid} {args:?}: {stderr}");
        assert!(stderr.contains("not an operator"), "uid {uid} {args:?}: {stderr}");
    }
    assert_eq!(site.dam.bay_position(1), bay1, "nothing moved");

    let allowed = cli_as(&site, 1001, &["actuate", "barrage-cher-1", "move_bay1", "position=30"]);
    let stdout = String::from_utf8_lossy(&allowed.stdout);
    assert!(stdout.starts_with("verified"), "{stdout} {}", String::from_utf8_lossy(&allowed.stderr));

    let audit = site.cli(&["audit", "--json"]).expect("audit");
    let entries: Vec<serde_json::Value> = serde_json::from_str(&audit).expect("JSON");
    let refused: Vec<&serde_json::Value> =
        entries.iter().filter(|e| e["reason"] == "not_an_operator").collect();
    assert_eq!(refused.len(), 5, "{audit}");
    assert!(refused.iter().all(|e| e["source"] == "local" && e["outcome"] == "refused"), "{audit}");
    assert!(refused.iter().any(|e| e["actor"] == "uid 1002" && e["command"] == "move_bay1"), "{audit}");
    assert!(refused.iter().any(|e| e["actor"] == "uid 1001" && e["command"] == "reload"), "{audit}");
    assert!(
        refused.iter().all(|e| e["args"] == serde_json::json!({})),
        "a refusal keeps no arguments: {audit}"
    );
    assert!(entries.iter().any(|e| e["actor"] == "uid 1001" && e["outcome"] == "verified"), "{audit}");
}

#[test]
fn a_flood_of_junk_costs_no_audit_entry_and_the_signed_command_in_the_middle_runs() {
    let site = start_site();
    let (client, mut conn) =
        rumqttc::Client::new(rumqttc::MqttOptions::new("test-flood", "127.0.0.1", site.broker.port), 100);
    std::thread::spawn(move || {
        for event in conn.iter() {
            if event.is_err() {
                break;
            }
        }
    });
    let topic = format!("berrygw/{GW}/command");
    // Big, well-formed envelopes with bad signatures (as costly as junk can be), unknown
    // keys, and plain garbage, claiming the central key and real targets.
    let big = serde_json::json!({ "position": 40, "note": "n".repeat(6000) });
    let forged = {
        let mut v: serde_json::Value = serde_json::from_str(&signed(
            "junk",
            "central-2026",
            &SigningKey::from_bytes(&[1; 32]),
            "barrage-cher-1",
            "move_bay1",
            big.clone(),
        ))
        .expect("JSON");
        v["id"] = serde_json::json!("junk-forged");
        v.to_string()
    };
    let unknown =
        signed("junk-key", "intrus", &SigningKey::from_bytes(&[1; 32]), "barrage-cher-1", "move_bay1", big);
    let valid = signed(
        "flood-ok",
        "central-2026",
        &central_key(),
        "barrage-cher-1",
        "move_bay1",
        serde_json::json!({"position": 30}),
    );
    const JUNK: usize = 3000;
    for i in 0..JUNK {
        if i == JUNK / 2 {
            client
                .publish(&topic, rumqttc::QoS::AtLeastOnce, false, valid.clone().into_bytes())
                .expect("publish");
        }
        let payload = match i % 3 {
            0 => forged.clone().into_bytes(),
            1 => unknown.clone().into_bytes(),
            _ => format!("{{junk {i}").into_bytes(),
        };
        client.publish(&topic, rumqttc::QoS::AtLeastOnce, false, payload).expect("publish");
    }
    let result = site.outcome("flood-ok");
    assert_eq!(result["outcome"], "verified", "{result}");
    wait_for(Duration::from_secs(60), "the whole flood counted at the door", || {
        let n: u64 =
            ["bad_signature", "unknown_key", "malformed"].iter().map(|r| site.unauthenticated(r)).sum();
        (n == JUNK as u64).then_some(())
    });
    // The audit log and the result events hold the signed command only.
    let audit = site.cli(&["audit", "--json"]).expect("audit");
    let entries: Vec<serde_json::Value> = serde_json::from_str(&audit).expect("JSON");
    assert!(
        entries.iter().all(|e| e["command_id"] == "flood-ok"),
        "only the signed command is audited: {} entries",
        entries.len()
    );
    assert_eq!(entries.len(), 2, "executed and verified: {audit}");
    let events = site.sub.on_topic(&format!("berrygw/{GW}/event/command"));
    assert!(
        events.iter().all(|e| String::from_utf8_lossy(&e.payload).contains("flood-ok")),
        "{} events",
        events.len()
    );
    let db = std::fs::read(site.dir.path().join("s/audit.sqlite")).expect("audit file");
    assert!(db.len() < 200_000, "the audit file stays small: {} bytes", db.len());
    let _ = client.disconnect();
}

#[test]
fn session_keys_sent_on_the_command_topic_are_refused_and_never_stored_nor_published() {
    let site = start_site();
    let nwk = "4e57b5d9a1c6e2f0837a6b1c9d2e3f40";
    let app = "a9bc1d2e3f405162738495a6b7c8d9e0";
    // Signed by a known key whose scope is wide enough: refused by where it came.
    let envelope = signed(
        "keys-1",
        "eclairage",
        &lighting_key(),
        "armoire-70b3d57ed0001007",
        "set_session",
        serde_json::json!({ "dev_addr": "26011007", "nwk_s_key": nwk, "app_s_key": app, "f_cnt_up": 0 }),
    );
    site.publish(envelope);
    let result = site.outcome("keys-1");
    assert_eq!(
        (result["outcome"].as_str(), result["reason"].as_str()),
        (Some("refused"), Some("wrong_topic")),
        "{result}"
    );
    assert_eq!(result["args"]["nwk_s_key"], "<redacted>", "{result}");
    // Everything the gateway published (the envelope itself went out on the command topic).
    for event in site.sub.seen().iter().filter(|e| !e.topic.ends_with("/command")) {
        let text = String::from_utf8_lossy(&event.payload).to_lowercase();
        assert!(!text.contains(nwk) && !text.contains(app), "a key left on {}: {text}", event.topic);
    }
    let state = site.dir.path().join("s");
    for file in ["audit.sqlite", "audit.sqlite-wal"] {
        let bytes = std::fs::read(state.join(file)).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes).to_lowercase();
        assert!(!text.contains(nwk) && !text.contains(app), "a key left in {file}");
    }
}

#[test]
fn a_captured_command_does_not_run_again_after_the_replay_window_is_lost() {
    let mut site = start_site();
    let captured = signed(
        "cap-1",
        "central-2026",
        &central_key(),
        "barrage-cher-1",
        "move_bay2",
        serde_json::json!({"position": 20}),
    );
    site.publish(captured.clone());
    assert_eq!(site.outcome("cap-1")["outcome"], "verified");
    // The window is damaged (or deleted) while the gateway is down.
    site.gw.stop();
    let window = site.dir.path().join("s/replay.sqlite");
    std::fs::write(&window, b"garbage, not a database".repeat(500)).expect("corrupt");
    for extra in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{extra}", window.display()));
    }
    site.gw.restart();
    site.publish(captured);
    let again = wait_for(Duration::from_secs(30), "the replay refused", || {
        site.results("cap-1").into_iter().find(|a| a["outcome"] == "refused")
    });
    assert_eq!(again["reason"], "issued_before_window", "{again}");
    // A command the platform signs now still runs.
    site.publish(signed(
        "cap-2",
        "central-2026",
        &central_key(),
        "barrage-cher-1",
        "stop_bay3",
        serde_json::json!({}),
    ));
    assert_eq!(site.outcome("cap-2")["outcome"], "verified");
}
