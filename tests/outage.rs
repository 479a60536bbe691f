//! End to end: backhaul outages and crashes. The broker goes away for 30 s
//! while the simulated radio keeps sending at 50 uplinks/s; berrygw is killed
//! with SIGKILL while draining a backlog. Nothing persisted may be lost, the
//! order holds, and every uplink keeps its original receive time.

mod support;

use std::time::Duration;

use support::*;

fn replays_backlog_in_order_after_outage(backend: &str) {
    let dir = tempfile::tempdir().expect("tmp");
    let mut broker = Mosquitto::start(dir.path(), None);
    let sub = Subscriber::connect(broker.port, "eu868/gateway/+/event/up", None);
    // 4 devices × one uplink every 80 ms = 50 uplinks/s, for 50 s.
    let per_device = 625;
    let total = 4 * per_device as usize;
    let devices = four_devices(80, Some(per_device));
    let _gw =
        Berrygw::start(dir.path(), &config(&dir.path().join("s"), backend, &broker.url(false), "", &devices));

    sub.wait_uplinks(200, Duration::from_secs(30));
    broker.stop();
    let down_from = now_ms();
    std::thread::sleep(Duration::from_secs(30));
    let down_to = now_ms();
    broker.restart();

    let ups = sub.wait_uplinks(total, Duration::from_secs(120));
    let order = first_arrivals(&ups);
    assert_eq!(order.len(), total, "every uplink arrives");
    let expected: Vec<u64> = (1..=total as u64).collect();
    assert_eq!(order, expected, "uplinks arrive in order, none missing");

    // Uplinks received during the outage carry their original receive time.
    let mut during = 0;
    let mut last_ms = 0;
    for s in &ups {
        let rx = s.uplink().rx_info.expect("rx_info");
        let ms: i64 = rx.metadata["berrygw_received_ms"].parse().expect("ms");
        if (down_from + 500..down_to - 500).contains(&ms) {
            during += 1;
            let delivered = s.at.duration_since(std::time::UNIX_EPOCH).expect("time").as_millis() as i64;
            assert!(
                delivered >= down_to - 1000,
                "an uplink received at {ms} during the outage was delivered at {delivered}"
            );
        }
        if s.seq() as usize == order.len() {
            last_ms = ms;
        }
    }
    assert!(during >= 1000, "about 1,500 uplinks were received during the 30 s outage, saw {during}");
    assert!(last_ms > down_to, "the radio kept running after the outage");
}

#[test]
fn replays_backlog_in_order_after_outage_sqlite() {
    replays_backlog_in_order_after_outage("sqlite");
}

#[test]
fn replays_backlog_in_order_after_outage_sled() {
    replays_backlog_in_order_after_outage("sled");
}

fn kill9_while_draining_loses_nothing_persisted(backend: &str) {
    let dir = tempfile::tempdir().expect("tmp");
    let mut broker = Mosquitto::start(dir.path(), None);
    let sub = Subscriber::connect(broker.port, "eu868/gateway/+/event/up", None);
    broker.stop();

    // Build a backlog of 8,000 uplinks with the broker down.
    let total = 8000u64;
    let devices = four_devices(2, Some(total / 4));
    let state = dir.path().join("s");
    let mut gw = Berrygw::start(
        dir.path(),
        &config(&state, backend, &broker.url(false), "max_inflight = 1", &devices),
    );
    gw.wait_log(Duration::from_secs(60), "all devices done");
    gw.wait_log(Duration::from_secs(30), &format!("committed_seq={total}"));

    // Broker back: kill berrygw in the middle of the drain.
    broker.restart();
    wait_for(Duration::from_secs(60), "drain to start", || {
        (!sub.on_topic("/event/up").is_empty()).then_some(())
    });
    gw.kill9();
    let delivered_before_kill = first_arrivals(&sub.on_topic("/event/up")).len() as u64;
    assert!(
        delivered_before_kill < total,
        "the kill must land mid-drain (delivered {delivered_before_kill})"
    );

    // Restart with a radio that sends nothing new: only the backlog drains.
    let idle = config(&state, backend, &broker.url(false), "", "devices = []");
    std::fs::write(&gw.config, idle).expect("rewrite config");
    gw.restart();

    let ups = sub.wait_uplinks(total as usize, Duration::from_secs(120));
    let order = first_arrivals(&ups);
    assert_eq!(order, (1..=total).collect::<Vec<_>>(), "every persisted uplink reaches the broker, in order");
    let duplicates = ups.len() - order.len();
    println!("{backend}: {duplicates} duplicates after SIGKILL (allowed: at-least-once)");
    assert!(duplicates <= 1000, "duplicates are bounded by what was in flight: {duplicates}");
}

#[test]
fn kill9_while_draining_loses_nothing_persisted_sqlite() {
    kill9_while_draining_loses_nothing_persisted("sqlite");
}

#[test]
fn kill9_while_draining_loses_nothing_persisted_sled() {
    kill9_while_draining_loses_nothing_persisted("sled");
}

#[test]
fn sigterm_makes_pending_uplinks_durable_before_exit() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut broker = Mosquitto::start(dir.path(), None);
    let sub = Subscriber::connect(broker.port, "eu868/gateway/+/event/up", None);
    broker.stop();
    // A group-commit window of a minute: only the SIGTERM flush can make these durable.
    let devices = sim_device("d", "water_meter", "26011bda", 10, Some(20));
    let state = dir.path().join("s");
    let text = config(&state, "sqlite", &broker.url(false), "", &devices)
        .replace("commit_interval_ms = 50", "commit_interval_ms = 60000");
    let mut gw = Berrygw::start(dir.path(), &text);
    gw.wait_log(Duration::from_secs(30), "all devices done");
    let status = gw.stop().expect("berrygw exits on SIGTERM");
    assert!(status.success(), "clean exit, got {status:?}");
    assert!(gw.log().iter().any(|l| l.contains("journal flushed")));

    broker.restart();
    let idle = config(&state, "sqlite", &broker.url(false), "", "devices = []");
    std::fs::write(&gw.config, idle).expect("rewrite config");
    gw.restart();
    let ups = sub.wait_uplinks(20, Duration::from_secs(30));
    assert_eq!(first_arrivals(&ups), (1..=20).collect::<Vec<_>>());
}
