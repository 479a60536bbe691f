//! Field devices' states on `…/field/<device>/state`: one task per device publishes through
//! the app journal on any discrete change (online, a switch, a mode, a fault) and every
//! `state_interval` anyway.

use std::time::Duration;

use berrygw_core::unix_ms;
use berrygw_modbus::{DeviceState, PointValue};
use tracing::warn;

use super::Actuation;
use crate::events;

/// Whether two states differ in something worth telling at once: online, a
/// switch, a mode, a fault (numbers drift all the time and wait for the interval).
fn changed_discretely(a: &DeviceState, b: &DeviceState) -> bool {
    if a.online != b.online {
        return true;
    }
    b.points.iter().any(|(name, v)| match (a.points.get(name), v) {
        (Some(PointValue::Number(_)), PointValue::Number(_)) => false,
        (old, new) => old != Some(new),
    })
}

/// Publish a device's state on change of anything discrete, and every `interval` anyway.
pub(super) async fn publish_states(
    actuation: Actuation,
    name: String,
    mut state: tokio::sync::watch::Receiver<DeviceState>,
    interval: Duration,
) {
    let mut last_sent: Option<DeviceState> = None;
    let mut tick = tokio::time::interval(interval);
    loop {
        tokio::select! {
            changed = state.changed() => {
                if changed.is_err() {
                    return;
                }
                let now = state.borrow_and_update().clone();
                if last_sent.as_ref().is_some_and(|l| !changed_discretely(l, &now)) {
                    continue;
                }
                actuation.publish_state(&name, &now).await;
                last_sent = Some(now);
            }
            _ = tick.tick() => {
                let now = state.borrow().clone();
                actuation.publish_state(&name, &now).await;
                last_sent = Some(now);
            }
        }
    }
}

impl Actuation {
    async fn publish_state(&self, name: &str, state: &DeviceState) {
        let (Some(topics), Some(journal)) = (&self.inner.topics, &self.inner.app_journal) else { return };
        let profile = self.inner.devices.get(name).map(|d| d.profile.clone()).unwrap_or_default();
        let body = serde_json::json!({
            "gateway_id": self.inner.gateway_id,
            "device": name,
            "profile": profile,
            "at": berrygw_core::rfc3339_ms(std::time::SystemTime::now()),
            "state": state,
        });
        let Ok(body) = serde_json::to_vec(&body) else { return };
        let record = events::record(&topics.field_state(name), &body, unix_ms(std::time::SystemTime::now()));
        if let Err(e) = journal.append(record).await {
            warn!(device = name, "field state not stored in the app journal: {e}");
        }
    }
}
