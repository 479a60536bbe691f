//! The door of the central channel: what every message on the app sink's command and
//! session topics goes through *before* anything is stored. Parse and signature check run
//! in memory, on the sink's task, so a flood of junk costs CPU only: no audit entry, no
//! event, no queue slot. A refusal here is counted by reason
//! (`berrygw_commands_unauthenticated_total{reason}`), logged at most once per reason every
//! [`LOG_EVERY`], and summed up in one `event/unauthenticated` message at most every
//! [`SUMMARY_EVERY`]; the key an envelope names is only "claimed" in those, since the
//! signature did not hold. Only authenticated envelopes reach the bounded queue of the
//! actuation engine (`engine/`), which audits everything from there on.
//!
//! A copy of an envelope that already passed the door (a broker redelivery, or a captured
//! envelope replayed by someone else) is refused here too, as `duplicate`: its signature
//! proves what the platform once said, not that anyone said it again. The durable replay
//! window still decides for the first copy after a restart.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use berrygw_core::LogLimiter;

/// Refusal reasons counted at the door (the `reason` label), in a fixed order.
pub const REASONS: [&str; 4] = [
    berrygw_proto::envelope::reason::MALFORMED,
    berrygw_proto::envelope::reason::UNKNOWN_KEY,
    berrygw_proto::envelope::reason::BAD_SIGNATURE,
    DUPLICATE,
];

/// A copy of an envelope that already passed the door.
pub const DUPLICATE: &str = "duplicate";

/// At most one log line per reason this often (the count of those held back follows).
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// At most one `event/unauthenticated` message this often, and only when something was refused.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// How many envelopes (key id, id) the door remembers having let through.
pub const REMEMBERED: usize = 4096;

/// Where a message arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// `…/command`: commands for field devices.
    Command,
    /// `…/session/set`: OTAA session keys (`set_session`).
    Session,
}

/// The door's memory: envelopes let through lately, and the log limiter.
pub struct DoorState {
    seen: HashSet<(String, String)>,
    order: VecDeque<(String, String)>,
    pub log: LogLimiter,
}

impl Default for DoorState {
    fn default() -> DoorState {
        DoorState { seen: HashSet::new(), order: VecDeque::new(), log: LogLimiter::new(LOG_EVERY) }
    }
}

impl DoorState {
    /// Remember `(key_id, id)`: false if it was let through before (a duplicate).
    pub fn remember(&mut self, key_id: &str, id: &str) -> bool {
        let entry = (key_id.to_string(), id.to_string());
        if !self.seen.insert(entry.clone()) {
            return false;
        }
        self.order.push_back(entry);
        while self.order.len() > REMEMBERED {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        true
    }

    /// Forget `(key_id, id)` (it could not be queued: a resend must get through).
    pub fn forget(&mut self, key_id: &str, id: &str) {
        let entry = (key_id.to_string(), id.to_string());
        if self.seen.remove(&entry) {
            self.order.retain(|e| *e != entry);
        }
    }
}

/// The body of an `event/unauthenticated` message: refusals by reason since the last one
/// (`None` when there were none).
pub fn summary(
    gateway_id: &str,
    since: &[u64; 4],
    now: &[u64; 4],
    window: Duration,
) -> Option<serde_json::Value> {
    let counts: serde_json::Map<String, serde_json::Value> = REASONS
        .iter()
        .zip(since.iter().zip(now))
        .filter(|(_, (a, b))| b > a)
        .map(|(reason, (a, b))| (reason.to_string(), serde_json::Value::from(b - a)))
        .collect();
    if counts.is_empty() {
        return None;
    }
    Some(serde_json::json!({
        "gateway_id": gateway_id,
        "at": berrygw_core::rfc3339_ms(std::time::SystemTime::now()),
        "window_secs": window.as_secs(),
        "refused": counts,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_envelope_is_let_through_once_and_forgotten_when_memory_is_full() {
        let mut door = DoorState::default();
        assert!(door.remember("central", "c-1"));
        assert!(!door.remember("central", "c-1"), "a copy");
        assert!(door.remember("eclairage", "c-1"), "another key's id");
        door.forget("central", "c-1");
        assert!(door.remember("central", "c-1"), "forgotten: let through again");
        for i in 0..REMEMBERED {
            door.remember("central", &format!("x-{i}"));
        }
        assert!(door.seen.len() <= REMEMBERED);
        assert!(door.remember("eclairage", "c-1"), "the oldest went first");
    }

    #[test]
    fn the_summary_counts_only_what_is_new() {
        assert_eq!(summary("gw", &[1, 2, 3, 4], &[1, 2, 3, 4], SUMMARY_EVERY), None);
        let body = summary("gw", &[1, 2, 3, 4], &[1, 2, 3003, 4], SUMMARY_EVERY).expect("something new");
        assert_eq!(body["refused"], serde_json::json!({ "bad_signature": 3000 }));
        assert_eq!(body["window_secs"], 60);
    }
}
