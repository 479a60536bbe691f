//! End to end: berrygw under a systemd-like supervisor. The test plays
//! systemd's notify socket: READY=1 once the pipeline runs, WATCHDOG=1 pings
//! at half the requested period, STOPPING=1 on SIGTERM.

mod support;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use support::*;

fn messages(sock: &UnixDatagram, until: Duration, stop: impl Fn(&[String]) -> bool) -> Vec<String> {
    let deadline = Instant::now() + until;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline && !stop(&seen) {
        if let Ok(n) = sock.recv(&mut buf) {
            seen.extend(String::from_utf8_lossy(&buf[..n]).lines().map(String::from));
        }
    }
    seen
}

#[test]
fn notifies_ready_pings_the_watchdog_and_says_stopping() {
    let dir = tempfile::tempdir().expect("tmp");
    let broker = Mosquitto::start(dir.path(), None);
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).expect("notify socket");
    sock.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
    let devices = sim_device("d", "water_meter", "26011bda", 100, Some(5));
    let text = config(&dir.path().join("s"), "sqlite", &broker.url(false), "", &devices);
    let socket = path.display().to_string();
    let mut gw = Berrygw::start_with_env(
        dir.path(),
        &text,
        &[("NOTIFY_SOCKET", &socket), ("WATCHDOG_USEC", "1000000")],
    );

    let seen = messages(&sock, Duration::from_secs(20), |m| {
        m.iter().filter(|l| l.as_str() == "WATCHDOG=1").count() >= 3
    });
    assert!(seen.iter().any(|l| l == "READY=1"), "READY=1 sent: {seen:?}");
    assert!(seen.iter().filter(|l| l.as_str() == "WATCHDOG=1").count() >= 3, "watchdog pinged: {seen:?}");

    gw.stop().expect("exits on SIGTERM");
    let after = messages(&sock, Duration::from_secs(2), |m| m.iter().any(|l| l == "STOPPING=1"));
    assert!(after.iter().any(|l| l == "STOPPING=1"), "STOPPING=1 sent: {after:?}");
}
