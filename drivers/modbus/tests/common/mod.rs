//! Shared by the integration tests: shipped profiles, fast device settings, waiting on state.

#![allow(dead_code)] // each test file uses its own part

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use berrygw_modbus::{Bus, BusOptions, DeviceConfig, DeviceState, Link, Profile, ProfileSet};
use tokio::sync::watch;

/// Long enough for a slow CI machine under qemu; only bounds a wait, never asserts speed.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub fn shipped_profiles() -> ProfileSet {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../plugins/profiles");
    ProfileSet::load(&[&dir]).unwrap_or_else(|e| panic!("shipped profiles must load: {e}"))
}

pub fn shipped(name: &str) -> Arc<Profile> {
    shipped_profiles().get(name).unwrap_or_else(|| panic!("no shipped profile {name}"))
}

pub fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

pub fn tcp_bus(addr: SocketAddr, timeout: Duration) -> Bus {
    let options = BusOptions { timeout, connect_timeout: timeout, ..BusOptions::default() };
    Bus::spawn(Link::Tcp { address: addr.to_string() }, options)
}

/// Poll fast, back off to at most 400 ms, read back every 50 ms.
pub fn fast(name: &str, unit_id: u8) -> DeviceConfig {
    DeviceConfig {
        poll_interval: Duration::from_millis(100),
        max_backoff: Duration::from_millis(400),
        verify_interval: Duration::from_millis(50),
        ..DeviceConfig::new(name, unit_id)
    }
}

/// Wait until the published state satisfies `what`, or fail the test saying `why`.
pub async fn wait_state(
    rx: &mut watch::Receiver<DeviceState>,
    why: &str,
    what: impl Fn(&DeviceState) -> bool,
) -> DeviceState {
    let found = match tokio::time::timeout(PATIENCE, rx.wait_for(|s| what(s))).await {
        Ok(Ok(state)) => Some(state.clone()),
        _ => None,
    };
    found.unwrap_or_else(|| panic!("gave up waiting for: {why}; last state: {:?}", *rx.borrow()))
}

/// Wait until `what` holds (checked every 20 ms), or fail saying `why`.
pub async fn wait_until(why: &str, what: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !what() {
        assert!(tokio::time::Instant::now() < deadline, "gave up waiting for: {why}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
