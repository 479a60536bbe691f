//! End to end: backhaul outages, crashes, shutdown and a failed start. The
//! broker goes away while the simulated radio keeps sending at 50 uplinks/s
//! (until 600 uplinks wait in the journal); berrygw is killed with SIGKILL
//! while draining a backlog, or right after a reading went out; SIGTERM lands
//! while a packet forwarder is sending. Nothing persisted or acknowledged may
//! be lost, the order holds, every uplink keeps its original receive time, a
//! replayed frame makes no second reading, and a start that fails connects
//! nothing.

mod support;

use std::time::Duration;

use support::gwmp;
use support::*;

fn replays_backlog_in_order_after_outage(backend: &str) {
    let dir = tempfile::tempdir().expect("tmp");
    let mut broker = Mosquitto::start(dir.path(), None);
    let sub = Subscriber::connect(broker.port, "eu868/gateway/+/event/up", None);
    // 4 devices × one uplink every 80 ms = 50 uplinks/s, for 50 s.
    let per_device = 625;
    let total = 4 * per_device as usize;
    let devices = four_devices(80, Some(per_device));
    let gw =
        Berrygw::start(dir.path(), &config(&dir.path().join("s"), backend, &broker.url(false), "", &devices));

    sub.wait_uplinks(200, Duration::from_secs(30));
    broker.stop();
    let before: std::collections::HashSet<u64> =
        first_arrivals(&sub.on_topic("/event/up")).into_iter().collect();
    // The outage lasts until 600 uplinks wait in the journal (at most 100 of them were
    // in flight when the broker went, so at least 500 were received during the outage).
    wait_for(Duration::from_secs(120), "a backlog of 600 uplinks", || {
        gw.log().iter().filter_map(|l| backlog(l)).any(|b| b >= 600).then_some(())
    });
    let back_at = now_ms();
    broker.restart();

    let ups = sub.wait_uplinks(total, Duration::from_secs(120));
    let order = first_arrivals(&ups);
    assert_eq!(order.len(), total, "every uplink arrives");
    let expected: Vec<u64> = (1..=total as u64).collect();
    assert_eq!(order, expected, "uplinks arrive in order, none missing");

    // Uplinks received during the outage carry their original receive time, not
    // their (later) forwarding time; receive times follow the sequence.
    let mut received_ms = std::collections::BTreeMap::new();
    let mut waited = 0;
    for s in &ups {
        let seq = s.seq();
        if received_ms.contains_key(&seq) {
            continue; // a duplicate
        }
        let rx = s.uplink().rx_info.expect("rx_info");
        let ms: i64 = rx.metadata["berrygw_received_ms"].parse().expect("ms");
        received_ms.insert(seq, ms);
        if !before.contains(&seq) && ms < back_at {
            waited += 1;
            let delivered = s.at.duration_since(std::time::UNIX_EPOCH).expect("time").as_millis() as i64;
            assert!(delivered >= back_at, "uplink {seq} was delivered while the broker was down");
        }
    }
    let times: Vec<i64> = received_ms.values().copied().collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "receive times follow the sequence");
    assert!(waited >= 500, "the backlog received during the outage was delivered: {waited}");
    assert!(times.iter().any(|ms| *ms > back_at), "the radio kept running after the outage");
}

/// The backlog of a `report` log line.
fn backlog(line: &str) -> Option<u64> {
    if !line.contains("report") {
        return None;
    }
    let rest = &line[line.find("backlog=")? + "backlog=".len()..];
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

#[test]
fn replays_backlog_in_order_after_outage_sqlite() {
    replays_backlog_in_order_after_outage("sqlite");
}

#[test]
fn replays_backlog_in_order_after_outage_log() {
    replays_backlog_in_order_after_outage("log");
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
fn kill9_while_draining_loses_nothing_persisted_log() {
    kill9_while_draining_loses_nothing_persisted("log");
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

/// Keys and address of the device in `replay_registry`.
const REPLAY_NWK: [u8; 16] = [0x2b; 16];
const REPLAY_APP: [u8; 16] = [0x7e; 16];
const REPLAY_EUI: &str = "70b3d57ed0001002";

fn replay_frame(fcnt: u32) -> Vec<u8> {
    use berrygw_lora::phy::{build_data_uplink, AesKey, DataUplink, DevAddr};
    let up = DataUplink {
        dev_addr: DevAddr::from_u32(0x2601_1002),
        fcnt,
        confirmed: false,
        adr: false,
        f_port: 1,
        // Cayenne LPP: temperature 27.2 °C.
        payload: &[0x01, 0x67, 0x01, 0x10],
    };
    build_data_uplink(&up, &AesKey(REPLAY_NWK), &AesKey(REPLAY_APP)).expect("frame")
}

/// A packet forwarder on loopback talking to berrygw's GWMP ingest.
struct Forwarder {
    peer: gwmp::Peer,
    ingest: std::net::SocketAddr,
    token: u16,
}

const FORWARDER_EUI: [u8; 8] = [0x00, 0x16, 0xc0, 0x01, 0xff, 0x10, 0xa2, 0x35];

impl Forwarder {
    fn new(port: u16) -> Forwarder {
        let ingest = format!("127.0.0.1:{port}").parse().expect("addr");
        Forwarder { peer: gwmp::Peer::bind(), ingest, token: 0 }
    }

    /// Wait until the ingest answers a PULL_DATA.
    fn wait_ready(&self) {
        wait_for(Duration::from_secs(20), "berrygw's GWMP ingest to answer", || {
            self.peer.send(self.ingest, &gwmp::datagram(gwmp::PULL_DATA, 7, Some(FORWARDER_EUI), None));
            self.peer.recv_ident(gwmp::PULL_ACK, Duration::from_millis(300)).map(|_| ())
        });
    }

    /// Send one frame; true when berrygw acknowledged it (PUSH_ACK with our token).
    fn push(&mut self, phy: &[u8], tmst: u32, wait: Duration) -> bool {
        self.token = self.token.wrapping_add(1);
        let body = serde_json::json!({ "rxpk": [gwmp::rxpk(phy, 868.1, "SF7BW125", -97, 7.5, tmst)] });
        self.peer.send(
            self.ingest,
            &gwmp::datagram(gwmp::PUSH_DATA, self.token, Some(FORWARDER_EUI), Some(&body)),
        );
        let deadline = std::time::Instant::now() + wait;
        while std::time::Instant::now() < deadline {
            match self
                .peer
                .recv_ident(gwmp::PUSH_ACK, deadline.saturating_duration_since(std::time::Instant::now()))
            {
                Some(ack) if ack.token == self.token => return true,
                Some(_) => continue,
                None => return false,
            }
        }
        false
    }
}

fn gwmp_radio(port: u16) -> String {
    format!("[radio]\nkind = \"gwmp\"\n\n[radio.gwmp]\nbind = \"127.0.0.1:{port}\"\n")
}

#[test]
fn a_frame_replayed_after_a_crash_is_refused_and_makes_no_second_reading() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tmp");
    let broker = Mosquitto::start(dir.path(), None);
    let sub = Subscriber::connect(broker.port, "berrygw/#", None);
    let registry = dir.path().join("devices.toml");
    std::fs::write(
        &registry,
        format!(
            "[[device]]\nname = \"sonde\"\ndev_eui = \"{REPLAY_EUI}\"\ncodec = \"cayenne_lpp\"\n\
             abp = {{ dev_addr = \"26011002\", nwk_s_key = \"{}\", app_s_key = \"{}\" }}\n",
            hex::encode(REPLAY_NWK),
            hex::encode(REPLAY_APP)
        ),
    )
    .expect("registry");
    std::fs::set_permissions(&registry, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let port = free_port();
    let sinks = format!(
        "[sinks.chirpstack]\nserver = \"{url}\"\nreconnect_min_ms = 200\nreconnect_max_ms = 1000\n\n\
         [sinks.app]\nserver = \"{url}\"\nreconnect_min_ms = 200\nreconnect_max_ms = 1000\n\n\
         [decode]\ndevices = \"{}\"\n",
        registry.display(),
        url = broker.url(false)
    );
    let mut gw = Berrygw::start(
        dir.path(),
        &config_with_radio(&dir.path().join("s"), "sqlite", &gwmp_radio(port), &sinks),
    );
    let mut fwd = Forwarder::new(port);
    fwd.wait_ready();

    let readings = |f_cnt: u64| -> Vec<serde_json::Value> {
        sub.on_topic(&format!("/device/{REPLAY_EUI}/up"))
            .iter()
            .map(|s| serde_json::from_slice::<serde_json::Value>(&s.payload).expect("reading is JSON"))
            .filter(|r| r["f_cnt"] == f_cnt)
            .collect()
    };
    assert!(fwd.push(&replay_frame(5), 1_000, Duration::from_secs(5)), "PUSH_ACK");
    wait_for(Duration::from_secs(30), "the reading of frame 5", || readings(5).pop());
    // A crash right after the reading went out (as a power cut).
    gw.kill9();

    gw.restart();
    fwd.wait_ready();
    // The same frame again (a replay), then a new one.
    assert!(fwd.push(&replay_frame(5), 2_000, Duration::from_secs(5)), "PUSH_ACK");
    assert!(fwd.push(&replay_frame(6), 3_000, Duration::from_secs(5)), "PUSH_ACK");
    wait_for(Duration::from_secs(30), "the reading of frame 6", || readings(6).pop());

    // Readings leave in order: had the replay been decoded, its reading would be here by now.
    // (The first reading may come twice with the same seq: the app journal is at-least-once.)
    let seqs: std::collections::BTreeSet<u64> =
        readings(5).iter().map(|r| r["seq"].as_u64().expect("seq")).collect();
    assert_eq!(seqs.len(), 1, "the replayed frame made no second reading: {seqs:?}");
    assert!(
        gw.log().iter().any(|l| l.contains("uplink not decoded") && l.contains("replay")),
        "the replay is refused as such"
    );
}

#[test]
fn sigterm_keeps_every_uplink_the_gwmp_ingest_acknowledged() {
    every_acknowledged_gwmp_uplink_survives(Stop::Sigterm, "sqlite");
}

/// kill -9 right after PUSH_ACKs, with a commit window (10 s) far longer than the test: what
/// the ingest acknowledged is in the journal's RAM stage only, and must all come back.
#[test]
fn kill9_loses_no_uplink_the_gwmp_ingest_acknowledged_log() {
    every_acknowledged_gwmp_uplink_survives(Stop::Kill9, "log");
}

#[test]
fn kill9_loses_no_uplink_the_gwmp_ingest_acknowledged_sqlite() {
    every_acknowledged_gwmp_uplink_survives(Stop::Kill9, "sqlite");
}

#[derive(Clone, Copy, PartialEq)]
enum Stop {
    Sigterm,
    Kill9,
}

fn every_acknowledged_gwmp_uplink_survives(how: Stop, backend: &str) {
    let dir = tempfile::tempdir().expect("tmp");
    let mut broker = Mosquitto::start(dir.path(), None);
    let sub = Subscriber::connect(broker.port, "eu868/gateway/+/event/up", None);
    // The backhaul is down: what the ingest acknowledged can only be in the journal.
    broker.stop();
    let port = free_port();
    let sink = format!(
        "[sinks.chirpstack]\nserver = \"{}\"\nreconnect_min_ms = 200\nreconnect_max_ms = 1000\n",
        broker.url(false)
    );
    let text = config_with_radio(&dir.path().join("s"), backend, &gwmp_radio(port), &sink).replace(
        "commit_interval_ms = 50\n",
        "commit_interval_ms = 10000\noutage_commit_interval_ms = 10000\n",
    );
    let mut gw = Berrygw::start(dir.path(), &text);
    let mut fwd = Forwarder::new(port);
    fwd.wait_ready();

    // A packet forwarder sending one frame after another, through SIGTERM and until berrygw is gone.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (acked_tx, acked_rx) = std::sync::mpsc::channel::<u32>();
    let sender = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut fcnt = 0u32;
            let mut silent = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && silent < 20 {
                fcnt += 1;
                if fwd.push(&replay_frame(fcnt), fcnt, Duration::from_millis(200)) {
                    let _ = acked_tx.send(fcnt);
                    silent = 0;
                } else {
                    silent += 1;
                }
            }
        })
    };
    let mut acked = Vec::new();
    wait_for(Duration::from_secs(30), "100 acknowledged uplinks", || {
        acked.extend(acked_rx.try_iter());
        (acked.len() >= 100).then_some(())
    });
    if how == Stop::Kill9 {
        gw.kill9();
    } else {
        let status = gw.stop().expect("berrygw exits on SIGTERM");
        assert!(status.success(), "clean exit, got {status:?}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sender.join().expect("sender");
    acked.extend(acked_rx.try_iter());

    // Broker back, berrygw restarted: every acknowledged uplink is delivered.
    broker.restart();
    gw.restart();
    let missing = || {
        let delivered: std::collections::BTreeSet<Vec<u8>> =
            sub.on_topic("/event/up").iter().map(|s| s.uplink().phy_payload).collect();
        acked.iter().copied().filter(|fcnt| !delivered.contains(&replay_frame(*fcnt))).collect::<Vec<u32>>()
    };
    let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_for(Duration::from_secs(60), "every acknowledged uplink to be delivered", || {
            missing().is_empty().then_some(())
        })
    }));
    let lost = missing();
    assert!(
        waited.is_ok(),
        "{} of {} acknowledged uplinks lost, from fcnt {:?}",
        lost.len(),
        acked.len(),
        lost.first()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_that_fails_late_connects_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let broker = Mosquitto::start(dir.path(), None);
    let sub = Subscriber::connect(broker.port, "#", None);
    // A codec that does not compile: refused when decoding starts (the decoder thread
    // compiles the codecs), after the journals are open.
    let (registry, codecs) = registry_with_a_broken_codec(dir.path());
    let sinks = format!(
        "[sinks.chirpstack]\nserver = \"{url}\"\nreconnect_min_ms = 200\nreconnect_max_ms = 1000\n\n\
         [sinks.app]\nserver = \"{url}\"\nreconnect_min_ms = 200\nreconnect_max_ms = 1000\n\n\
         [decode]\ndevices = \"{}\"\ncodec_dirs = [\"{}\"]\n",
        registry.display(),
        codecs.display(),
        url = broker.url(false)
    );
    let path = dir.path().join("berrygw.toml");
    std::fs::write(
        &path,
        config_with_radio(&dir.path().join("s"), "sqlite", &gwmp_radio(free_port()), &sinks),
    )
    .expect("config");
    let site = berrygw::config::Site::load(&path).expect("the files themselves are valid");

    let err = match berrygw::pipeline::Gateway::start(&site).await {
        Ok(_) => panic!("the start must fail on the registry"),
        Err(e) => e,
    };
    assert!(format!("{err:#}").contains("decoding"), "{err:#}");
    // A sink started anyway would connect and publish its retained online state within a
    // reconnect delay; give it many.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let seen: Vec<String> = sub.seen().into_iter().map(|s| s.topic).collect();
    assert!(seen.is_empty(), "nothing reached the broker after a failed start: {seen:?}");
}
