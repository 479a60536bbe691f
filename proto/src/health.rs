//! The compact health record each gateway keeps retained on
//! `<prefix>/<gateway_id>/health`: published when something a person at the centre
//! must know changes (health, a sink's connection, the radio, the clock, alarms) and at
//! least every `every_secs`, so that `berryctl fleet` sees the whole network at once,
//! gateways behind NAT on 4G included, and tells a stale record from a fresh one.
//! Readers ignore members they do not know (a newer gateway may add some).

use serde::{Deserialize, Serialize};

/// One gateway's health, as of `at_ms`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Health {
    pub gateway_id: String,
    /// Unix milliseconds when it was made.
    pub at_ms: i64,
    /// The longest the gateway waits before publishing the next one.
    pub every_secs: u64,
    /// berrygw's version.
    pub version: String,
    /// The configuration bundle in force, when one is.
    #[serde(default)]
    pub config_version: Option<u64>,
    pub uptime_secs: u64,
    /// False when any of `problems` holds.
    pub healthy: bool,
    #[serde(default)]
    pub problems: Vec<String>,
    pub radio: RadioHealth,
    pub sinks: Vec<SinkHealth>,
    /// Free bytes on the state directory's filesystem.
    #[serde(default)]
    pub disk_free_bytes: Option<u64>,
    /// Whether the kernel says the clock is NTP-synchronized (`None`: it could not tell).
    #[serde(default)]
    pub clock_synced: Option<bool>,
    /// Seconds since the radio last handed over a frame (`None`: none since start).
    #[serde(default)]
    pub last_uplink_age_secs: Option<u64>,
    #[serde(default)]
    pub alarms_open: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RadioHealth {
    /// `sx1302`, `gwmp` or `sim`.
    pub kind: String,
    /// False when the concentrator is down (restarting).
    pub running: bool,
    /// Frames received since start.
    pub received: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkHealth {
    pub name: String,
    pub connected: bool,
    /// Records waiting in its journal.
    pub backlog: u64,
    /// Age of the oldest of them.
    #[serde(default)]
    pub oldest_waiting_secs: Option<u64>,
}

impl Health {
    /// Whether `other` says something new to a person watching the fleet (not only
    /// counters and ages moving on).
    pub fn news_since(&self, other: &Health) -> bool {
        let state = |h: &Health| {
            (
                h.healthy,
                h.problems.clone(),
                h.radio.running,
                h.sinks.iter().map(|s| (s.name.clone(), s.connected)).collect::<Vec<_>>(),
                h.clock_synced,
                h.alarms_open,
                h.config_version,
            )
        };
        state(self) != state(other)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health() -> Health {
        Health {
            gateway_id: "0016c001ff10a235".into(),
            at_ms: 1,
            every_secs: 300,
            version: "0.1.0".into(),
            config_version: None,
            uptime_secs: 10,
            healthy: true,
            problems: vec![],
            radio: RadioHealth { kind: "sim".into(), running: true, received: 3 },
            sinks: vec![SinkHealth {
                name: "app".into(),
                connected: true,
                backlog: 0,
                oldest_waiting_secs: None,
            }],
            disk_free_bytes: Some(1 << 30),
            clock_synced: Some(true),
            last_uplink_age_secs: Some(1),
            alarms_open: 0,
        }
    }

    #[test]
    fn only_a_change_of_state_is_news_and_readers_take_newer_records() {
        let a = health();
        let mut b = a.clone();
        b.at_ms = 99;
        b.uptime_secs = 99;
        b.radio.received = 99;
        b.sinks[0].backlog = 5;
        assert!(!a.news_since(&b), "counters and ages moving on are not news");
        b.sinks[0].connected = false;
        assert!(a.news_since(&b));
        let mut json: serde_json::Value = serde_json::from_slice(&a.to_json()).expect("json");
        json["added_by_a_newer_gateway"] = serde_json::json!(1);
        let read: Health = serde_json::from_value(json).expect("unknown members ignored");
        assert_eq!(read, a);
    }
}
