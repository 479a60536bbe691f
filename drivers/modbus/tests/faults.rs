//! A device that is down, slow, answers exceptions or garbage: the poller counts it, backs
//! off, survives, and picks the device up again by itself.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use berrygw_modbus::sim::{EnergyMeterSim, SimDevice, SimServer};
use berrygw_modbus::{Device, PollOutcome};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[tokio::test]
async fn device_down_is_backed_off_and_picked_up_again_on_the_same_port() {
    let sim = EnergyMeterSim::start(any_port()).await.unwrap();
    let dev = Device::spawn(
        shipped("energy-meter"),
        tcp_bus(sim.local_addr(), Duration::from_millis(300)),
        fast("m", 1),
    );
    let mut state = dev.state();
    wait_state(&mut state, "online", |s| s.online).await;

    sim.stop();
    let down = wait_state(&mut state, "several failures", |s| s.consecutive_failures >= 3).await;
    assert!(!down.online);
    assert!(down.last_error.is_some());
    assert!(!down.points.is_empty(), "last known values are kept while offline");
    let counters = dev.counters();
    let failed_before = counters.count(PollOutcome::IoError) + counters.count(PollOutcome::Timeout);
    // At a fixed 100 ms cadence two seconds would be ~20 attempts; backing off to 400 ms
    // makes at most about 7. (An upper bound: a slow machine only makes fewer.)
    tokio::time::sleep(Duration::from_secs(2)).await;
    let failed_after = counters.count(PollOutcome::IoError) + counters.count(PollOutcome::Timeout);
    assert!(
        failed_after - failed_before <= 10,
        "{} attempts in 2 s: no backoff",
        failed_after - failed_before
    );

    sim.restart().await.unwrap();
    let back = wait_state(&mut state, "back online by itself", |s| s.online).await;
    assert_eq!(back.consecutive_failures, 0);
    assert_eq!(back.last_error, None);
}

#[tokio::test]
async fn slow_answer_times_out_and_a_fresh_connection_serves_the_next_poll() {
    let sim = EnergyMeterSim::start(any_port()).await.unwrap();
    let bus = tcp_bus(sim.local_addr(), Duration::from_millis(200));
    let bus_counters = bus.counters();
    let dev = Device::spawn(shipped("energy-meter"), bus, fast("m", 1));
    let mut state = dev.state();
    wait_state(&mut state, "online", |s| s.online).await;
    assert_eq!(sim.stats().connections, 1);

    sim.set_delay(Duration::from_millis(600));
    wait_until("a timeout counted", || dev.counters().count(PollOutcome::Timeout) >= 1).await;
    sim.set_delay(Duration::ZERO);
    let ok_before = dev.counters().count(PollOutcome::Ok);
    wait_state(&mut state, "online again", |s| s.online && s.consecutive_failures == 0).await;
    wait_until("a poll succeeds", || dev.counters().count(PollOutcome::Ok) > ok_before).await;
    assert!(bus_counters.dropped.load(Ordering::Relaxed) >= 1, "the timed-out connection was dropped");
    assert!(sim.stats().connections >= 2, "a new connection was opened after the timeout");
}

#[tokio::test]
async fn exceptions_are_counted_and_keep_the_connection() {
    let sim = EnergyMeterSim::start(any_port()).await.unwrap();
    let bus = tcp_bus(sim.local_addr(), Duration::from_secs(2));
    let bus_counters = bus.counters();
    let dev = Device::spawn(shipped("energy-meter"), bus, fast("m", 1));
    let mut state = dev.state();
    wait_state(&mut state, "online", |s| s.online).await;

    sim.set_exception(Some(0x04));
    let s = wait_state(&mut state, "exception reported", |s| s.consecutive_failures >= 2).await;
    assert!(s.last_error.as_deref().unwrap_or("").contains("exception 0x04"), "{:?}", s.last_error);
    assert!(dev.counters().count(PollOutcome::Exception) >= 2);
    sim.set_exception(None);
    wait_state(&mut state, "online again", |s| s.online).await;
    assert_eq!(bus_counters.dropped.load(Ordering::Relaxed), 0);
    assert_eq!(sim.stats().connections, 1, "an exception is an answer: same connection");
}

#[tokio::test]
async fn garbled_replies_are_counted_and_the_poller_recovers() {
    let sim = EnergyMeterSim::start(any_port()).await.unwrap();
    let dev = Device::spawn(
        shipped("energy-meter"),
        tcp_bus(sim.local_addr(), Duration::from_millis(500)),
        fast("m", 1),
    );
    let mut state = dev.state();
    wait_state(&mut state, "online", |s| s.online).await;
    sim.set_garbage(true);
    wait_until("garbage counted", || dev.counters().count(PollOutcome::Garbage) >= 2).await;
    sim.set_garbage(false);
    wait_state(&mut state, "online again", |s| s.online).await;
}

/// Not Modbus at all: answers every request with a burst of junk, or closes at once.
async fn junk_server(listener: TcpListener) {
    let mut n = 0u32;
    loop {
        let Ok((mut stream, _)) = listener.accept().await else { return };
        n += 1;
        let close_at_once = n.is_multiple_of(3);
        tokio::spawn(async move {
            let mut buf = [0u8; 256];
            while let Ok(read) = stream.read(&mut buf).await {
                if read == 0 || close_at_once {
                    return;
                }
                // Enough bytes to complete any length the junk header claims.
                let junk: Vec<u8> =
                    (0..70_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
                if stream.write_all(&junk).await.is_err() {
                    return;
                }
            }
        });
    }
}

#[tokio::test]
async fn a_peer_answering_junk_is_survived_and_a_real_device_on_that_port_is_picked_up() {
    let listener = TcpListener::bind(any_port()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let junk = tokio::spawn(junk_server(listener));
    let dev = Device::spawn(shipped("energy-meter"), tcp_bus(addr, Duration::from_millis(300)), fast("m", 1));
    let counters = dev.counters();
    wait_until("junk and closes counted", || {
        counters.count(PollOutcome::Garbage) >= 2 && counters.count(PollOutcome::IoError) >= 1
    })
    .await;
    assert!(!dev.state().borrow().online);
    junk.abort();
    let _ = junk.await;

    let sim = SimServer::start(addr, &[(1, SimDevice::EnergyMeter)]).await.unwrap();
    wait_state(&mut dev.state(), "the real device is picked up", |s| s.online).await;
    drop(sim);
}

#[tokio::test]
async fn devices_sharing_a_bus_are_asked_one_request_at_a_time() {
    let sim = SimServer::start(any_port(), &[(1, SimDevice::EnergyMeter), (2, SimDevice::EnergyMeter)])
        .await
        .unwrap();
    sim.set_delay(Duration::from_millis(5));
    let bus = tcp_bus(sim.local_addr(), Duration::from_secs(2));
    let a = Device::spawn(shipped("energy-meter"), bus.clone(), fast("a", 1));
    let b = Device::spawn(shipped("energy-meter"), bus, fast("b", 2));
    wait_until("both polled several times", || {
        a.counters().count(PollOutcome::Ok) >= 5 && b.counters().count(PollOutcome::Ok) >= 5
    })
    .await;
    assert_eq!(sim.stats().max_in_flight, 1, "never two requests on the wire at once");
    assert_eq!(sim.stats().connections, 1, "one connection for the bus");
}

#[tokio::test]
async fn a_unit_id_the_gateway_does_not_serve_is_reported_without_disturbing_the_others() {
    let sim = SimServer::start(any_port(), &[(1, SimDevice::EnergyMeter)]).await.unwrap();
    let bus = tcp_bus(sim.local_addr(), Duration::from_secs(2));
    let good = Device::spawn(shipped("energy-meter"), bus.clone(), fast("good", 1));
    let ghost = Device::spawn(shipped("energy-meter"), bus, fast("ghost", 9));
    wait_until("ghost's exception counted", || ghost.counters().count(PollOutcome::Exception) >= 2).await;
    wait_until("good keeps polling", || good.counters().count(PollOutcome::Ok) >= 5).await;
    assert!(good.state().borrow().online);
}
