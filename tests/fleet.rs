//! End to end: the fleet side of a gateway (issue 14) with the real `berrygw` binary
//! and a real mosquitto: its identity key announced (retained) on the app broker, the
//! same key `berrygw identity show` prints.

mod support;

use std::time::Duration;

use berrygw_proto::identity::Announcement;
use support::*;

const GW: &str = "0016c001ff10a235";

#[test]
fn a_gateway_announces_the_identity_key_it_was_installed_with() {
    let dir = tempfile::tempdir().expect("tmp");
    let state = dir.path().join("s");
    // As the package's postinst does, before the first start.
    let init = berrygw_command()
        .args(["identity", "init", "--state-dir"])
        .arg(&state)
        .output()
        .expect("berrygw identity init");
    assert!(init.status.success(), "{init:?}");
    let installed = String::from_utf8(init.stdout).expect("utf-8").trim().to_string();

    let broker = Mosquitto::start(dir.path(), None);
    let url = broker.url(false);
    let sinks = format!(
        "[sinks.chirpstack]\nserver = \"{url}\"\nreconnect_min_ms = 200\nreconnect_max_ms = 1000\n\n\
         [sinks.app]\nserver = \"{url}\"\nreconnect_min_ms = 200\nreconnect_max_ms = 1000\n"
    );
    let radio = "[radio]\nkind = \"sim\"\n\n[radio.sim]\ndevices = []\n";
    let config = config_with_radio(&state, "log", radio, &sinks);
    let mut gw = Berrygw::start(dir.path(), &config);
    gw.wait_log(Duration::from_secs(60), "app sink: connected");

    // A subscriber that comes later still gets it: it is retained.
    let sub = Subscriber::connect(broker.port, &format!("berrygw/{GW}/identity"), None);
    let seen = wait_for(Duration::from_secs(30), "the identity announcement", || sub.seen().pop());
    assert!(seen.retain, "retained, so the centre learns it whenever it subscribes");
    let (announcement, key) = Announcement::parse(&seen.payload).expect("a well-formed announcement");
    assert_eq!(announcement.gateway_id, GW);
    assert_eq!(key.to_string(), installed, "the key made at install, not another");

    let show = berrygw_command()
        .args(["identity", "show", "--json", "--config"])
        .arg(&gw.config)
        .output()
        .expect("berrygw identity show");
    assert!(show.status.success(), "{show:?}");
    let shown = Announcement::parse(&show.stdout).expect("show --json prints the announcement");
    assert_eq!(shown.0, announcement, "`identity show --json` prints what is announced");

    // A restart keeps the key.
    gw.stop();
    gw.restart();
    gw.wait_log(Duration::from_secs(60), "app sink: connected");
    let show =
        berrygw_command().args(["identity", "show", "--config"]).arg(&gw.config).output().expect("show");
    assert_eq!(String::from_utf8_lossy(&show.stdout).trim(), installed);
}
