//! The shipped profiles against their simulators over loopback TCP: every point decodes,
//! commands are verified by read-back, and unsafe commands are refused.

mod common;

use std::time::Duration;

use berrygw_modbus::sim::{EnergyMeterSim, LightingCabinetSim, NeedleDamSim, Selector, SimDevice, SimServer};
use std::path::Path;

use berrygw_modbus::{CommandOutcome, Device, PointValue, Profile};
use common::*;
use serde_json::json;

#[tokio::test]
async fn every_shipped_profile_decodes_every_point_from_its_simulator() {
    for (name, device) in [
        ("needle-dam", SimDevice::NeedleDam),
        ("lighting-cabinet", SimDevice::LightingCabinet),
        ("energy-meter", SimDevice::EnergyMeter),
    ] {
        let sim = SimServer::start(any_port(), &[(1, device)]).await.unwrap();
        let profile = shipped(name);
        let dev =
            Device::spawn(profile.clone(), tcp_bus(sim.local_addr(), Duration::from_secs(2)), fast(name, 1));
        let state = wait_state(&mut dev.state(), "first poll", |s| s.online).await;
        for point in &profile.points {
            let value =
                state.points.get(&point.name).unwrap_or_else(|| panic!("{name}: {} not read", point.name));
            if let PointValue::Enum { label, raw } = value {
                assert!(label.is_some(), "{name}: {} has unlabelled raw value {raw}", point.name);
            }
        }
        assert_eq!(state.points.len(), profile.points.len(), "{name}");
    }
}

#[tokio::test]
async fn simulated_values_are_plausible_through_the_profiles() {
    let meter = EnergyMeterSim::start(any_port()).await.unwrap();
    let dev = Device::spawn(
        shipped("energy-meter"),
        tcp_bus(meter.local_addr(), Duration::from_secs(2)),
        fast("m", 1),
    );
    let s = wait_state(&mut dev.state(), "meter online", |s| s.online).await;
    let num = |n: &str| s.points[n].as_f64().unwrap();
    assert!((220.0..240.0).contains(&num("voltage")), "{:?}", s.points);
    assert!((49.5..50.5).contains(&num("frequency")));
    assert!(num("energy") > 8000.0);

    let dam = NeedleDamSim::start(any_port()).await.unwrap();
    let dev =
        Device::spawn(shipped("needle-dam"), tcp_bus(dam.local_addr(), Duration::from_secs(2)), fast("d", 1));
    let s = wait_state(&mut dev.state(), "dam online", |s| s.online).await;
    assert_eq!(s.points["bay2_position"], PointValue::Number(20.0));
    assert_eq!(s.points["selector"], PointValue::Enum { raw: 1, label: Some("remote".into()) });
    assert!((1.5..3.0).contains(&s.points["upstream_level"].as_f64().unwrap()));
}

async fn dam_with_device() -> (NeedleDamSim, Device) {
    let sim = NeedleDamSim::start(any_port()).await.unwrap();
    sim.set_speed(50.0);
    let dev = Device::spawn(
        shipped("needle-dam"),
        tcp_bus(sim.local_addr(), Duration::from_secs(2)),
        fast("weir", 1),
    );
    wait_state(&mut dev.state(), "dam online", |s| s.online).await;
    (sim, dev)
}

#[tokio::test]
async fn raising_bay_2_to_60_percent_is_verified_after_the_bay_moves() {
    let (sim, dev) = dam_with_device().await;
    assert_eq!(sim.bay_position(2), Some(20.0));
    let outcome = dev.execute("move_bay2", &json!({"position": 60})).await;
    assert!(matches!(outcome, CommandOutcome::Verified { .. }), "{outcome}");
    // Verified once the read-back is within the profile's 1 % tolerance; the bay then
    // finishes its move (it may still be a register step short when the call returns).
    wait_until("bay 2 at 60 %", || sim.bay_position(2).is_some_and(|p| (p - 60.0).abs() < 0.01)).await;
    assert_eq!(sim.bay_position(1), Some(20.0), "other bays untouched");
    let state = dev.state().borrow().clone();
    assert_eq!(state.points["bay2_target"], PointValue::Number(60.0));
}

#[tokio::test]
async fn remote_move_is_refused_while_the_selector_is_on_local() {
    let (sim, dev) = dam_with_device().await;
    sim.set_selector(Selector::Local);
    let outcome = dev.execute("move_bay2", &json!({"position": 60})).await;
    assert_eq!(outcome.reason(), "interlock", "{outcome}");
    assert!(outcome.to_string().contains("LOCAL"), "{outcome}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(sim.bay_position(2), Some(20.0), "nothing moved");
    assert_eq!(dev.state().borrow().points["bay2_target"], PointValue::Number(20.0), "nothing written");
}

#[tokio::test]
async fn remote_move_is_refused_while_a_motor_fault_is_active() {
    let (sim, dev) = dam_with_device().await;
    sim.set_motor_fault(true);
    let outcome = dev.execute("move_bay3", &json!({"position": 80})).await;
    assert_eq!(outcome.reason(), "interlock", "{outcome}");
    assert!(outcome.to_string().contains("motor fault"), "{outcome}");
    sim.set_motor_fault(false);
    let outcome = dev.execute("move_bay3", &json!({"position": 80})).await;
    assert_eq!(outcome.reason(), "verified", "fault cleared: {outcome}");
}

#[tokio::test]
async fn out_of_bounds_and_unknown_commands_are_refused_before_the_device_is_asked() {
    let (_sim, dev) = dam_with_device().await;
    assert_eq!(dev.execute("move_bay2", &json!({"position": 150})).await.reason(), "args_out_of_bounds");
    assert_eq!(dev.execute("move_bay2", &json!({"position": "high"})).await.reason(), "bad_args");
    assert_eq!(dev.execute("move_bay9", &json!({"position": 50})).await.reason(), "unknown_command");
}

#[tokio::test]
async fn a_second_move_within_the_minimum_interval_is_refused_too_soon() {
    let (_sim, dev) = dam_with_device().await;
    assert_eq!(dev.execute("move_bay1", &json!({"position": 30})).await.reason(), "verified");
    let outcome = dev.execute("move_bay1", &json!({"position": 40})).await;
    assert_eq!(outcome.reason(), "too_soon", "{outcome}");
    assert_eq!(dev.execute("move_bay4", &json!({"position": 40})).await.reason(), "verified", "per command");
}

#[tokio::test]
async fn stop_holds_a_moving_bay_and_cancels_its_pending_move() {
    let (sim, dev) = dam_with_device().await;
    sim.set_speed(2.0);
    let to_90 = json!({"position": 90});
    let (moved, stopped) = tokio::join!(dev.execute("move_bay1", &to_90), async {
        wait_until("bay 1 moving", || sim.bay_position(1).is_some_and(|p| p > 21.0)).await;
        dev.execute("stop_bay1", &json!({})).await
    });
    assert_eq!(stopped.reason(), "verified", "{stopped}");
    assert_eq!(moved.reason(), "cancelled", "{moved}");
    let held = sim.bay_position(1).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sim.bay_position(1), Some(held), "bay stays where it was stopped");
    assert!(held < 90.0);
}

#[tokio::test]
async fn a_move_that_never_arrives_fails_not_verified_at_the_deadline() {
    let sim = NeedleDamSim::start(any_port()).await.unwrap();
    sim.set_speed(0.0); // jammed
    let text = std::fs::read_to_string(&shipped("needle-dam").source).unwrap();
    let profile =
        Profile::parse(Path::new("short.toml"), &text.replace("deadline_s = 120", "deadline_s = 0.5"))
            .unwrap();
    let dev =
        Device::spawn(profile.into(), tcp_bus(sim.local_addr(), Duration::from_secs(2)), fast("weir", 1));
    let outcome = dev.execute("move_bay2", &json!({"position": 60})).await;
    assert_eq!(outcome.reason(), "not_verified", "{outcome}");
    assert!(outcome.to_string().contains("`bay2_position` read 20"), "{outcome}");
}

#[tokio::test]
async fn a_fault_during_a_move_ends_it_as_interlock_tripped() {
    let (sim, dev) = dam_with_device().await;
    // Motor fault after the interlock check: the bay cannot move. The trip is reported.
    sim.set_speed(0.0);
    let outcome = tokio::time::timeout(Duration::from_secs(200), async {
        let to_60 = json!({"position": 60});
        let (outcome, ()) = tokio::join!(dev.execute("move_bay2", &to_60), async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            sim.set_motor_fault(true);
        });
        outcome
    })
    .await
    .unwrap();
    assert_eq!(outcome.reason(), "interlock_tripped", "{outcome}");
}

#[tokio::test]
async fn lighting_circuit_switches_and_is_verified_by_its_contactor() {
    let sim = LightingCabinetSim::start(any_port()).await.unwrap();
    let dev = Device::spawn(
        shipped("lighting-cabinet"),
        tcp_bus(sim.local_addr(), Duration::from_secs(2)),
        fast("cab", 1),
    );
    wait_state(&mut dev.state(), "cabinet online", |s| s.online).await;
    assert_eq!(dev.execute("switch_circuit3", &json!({"on": true})).await.reason(), "verified");
    let s =
        wait_state(&mut dev.state(), "power drawn", |s| s.points["power"].as_f64().unwrap_or(0.0) > 1000.0)
            .await;
    assert_eq!(s.points["circuit3_contactor"], PointValue::Bool(true));

    assert_eq!(dev.execute("set_mode", &json!({"mode": "forced_off"})).await.reason(), "verified");
    let s = wait_state(&mut dev.state(), "all off", |s| {
        s.points["circuit3_contactor"] == PointValue::Bool(false)
    })
    .await;
    assert_eq!(s.points["mode"], PointValue::Enum { raw: 2, label: Some("forced_off".into()) });
    let refused = dev.execute("switch_circuit1", &json!({"on": true})).await;
    assert_eq!(refused.reason(), "interlock", "forced mode: {refused}");
    assert_eq!(dev.execute("set_mode", &json!({"mode": "sometimes"})).await.reason(), "args_out_of_bounds");

    sim.set_door_open(true);
    let refused = dev.execute("switch_circuit2", &json!({"on": false})).await;
    assert_eq!(refused.reason(), "interlock");
    assert!(refused.to_string().contains("door"), "{refused}");
}
