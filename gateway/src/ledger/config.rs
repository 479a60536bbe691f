//! `[ledger]` of `berrygw.toml`: the availability ledger (on unless `enabled = false`).

use std::time::Duration;

use serde::Deserialize;

use crate::rules::TimeZone;

/// `[ledger]`: what counts as an outage, how often the gateway notes it is alive, the
/// contract's guaranteed time to restore and the zone of its days.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerSection {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The heartbeat: a power cut or a crash takes at most this much from the record.
    #[serde(default = "default_heartbeat_secs")]
    pub heartbeat_secs: u64,
    /// A service down for less than this is not an incident (a reconnection, a restart).
    #[serde(default = "default_min_outage_secs")]
    pub min_outage_secs: u64,
    /// How often the services are looked at (in the uplinks' own wake-ups when they come).
    #[serde(default = "default_check_secs")]
    pub check_secs: u64,
    /// A sink connected but with records waiting and none acknowledged for this long is down
    /// (`no_ack`).
    #[serde(default = "default_no_ack_secs")]
    pub no_ack_secs: u64,
    /// No uplink at all for this long is a radio incident (`radio_silent`); 0: off. For a
    /// gateway whose devices are known to send (a water meter every 15 min: 60).
    #[serde(default)]
    pub radio_silence_minutes: u64,
    /// A `gwmp` radio whose packet forwarder sent nothing (not even PULL_DATA) for this
    /// long is down (`forwarder_silent`).
    #[serde(default = "default_forwarder_silence_secs")]
    pub forwarder_silence_secs: u64,
    /// The contract's guaranteed time to restore: incidents longer are counted apart.
    #[serde(default = "default_gtr_minutes")]
    pub gtr_minutes: u64,
    /// The zone of the contract's days and months.
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// At most this many incidents are kept; the oldest closed ones go first.
    #[serde(default = "default_max_incidents")]
    pub max_incidents: u64,
    /// The month's record is published again at most this often when it changed (and at
    /// the end of every day).
    #[serde(default = "default_publish_every_secs")]
    pub publish_every_secs: u64,
}

impl Default for LedgerSection {
    fn default() -> Self {
        LedgerSection {
            enabled: true,
            heartbeat_secs: default_heartbeat_secs(),
            min_outage_secs: default_min_outage_secs(),
            check_secs: default_check_secs(),
            no_ack_secs: default_no_ack_secs(),
            radio_silence_minutes: 0,
            forwarder_silence_secs: default_forwarder_silence_secs(),
            gtr_minutes: default_gtr_minutes(),
            timezone: default_timezone(),
            max_incidents: default_max_incidents(),
            publish_every_secs: default_publish_every_secs(),
        }
    }
}

impl LedgerSection {
    /// The checks serde cannot express; the message names the key.
    pub fn check(&self) -> Result<(), String> {
        if !self.enabled {
            return Ok(());
        }
        if self.heartbeat_secs == 0 || self.heartbeat_secs > 3600 {
            return Err(
                "ledger.heartbeat_secs must be 1 to 3600 (a power cut takes up to this much from the record)"
                    .into(),
            );
        }
        if self.check_secs == 0 || self.check_secs > 300 {
            return Err("ledger.check_secs must be 1 to 300".into());
        }
        if self.gtr_minutes == 0 {
            return Err("ledger.gtr_minutes must be at least 1".into());
        }
        if self.max_incidents < 100 {
            return Err("ledger.max_incidents must be at least 100".into());
        }
        if self.publish_every_secs == 0 {
            return Err("ledger.publish_every_secs must be at least 1".into());
        }
        // A zone file missing on this machine (no tzdata) does not stop the gateway: the
        // ledger then counts days in UTC and says so (Ledger::open).
        TimeZone::check_spec(&self.timezone).map_err(|e| format!("ledger.timezone: {e}"))
    }

    /// The zone of the days and months.
    pub fn zone(&self) -> Result<TimeZone, String> {
        TimeZone::from_config(&self.timezone)
    }

    pub fn gtr_ms(&self) -> i64 {
        (self.gtr_minutes * 60_000) as i64
    }

    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.heartbeat_secs)
    }

    pub fn min_outage(&self) -> Duration {
        Duration::from_secs(self.min_outage_secs)
    }
}

fn yes() -> bool {
    true
}
fn default_heartbeat_secs() -> u64 {
    300
}
fn default_min_outage_secs() -> u64 {
    10
}
fn default_check_secs() -> u64 {
    10
}
fn default_no_ack_secs() -> u64 {
    120
}
fn default_forwarder_silence_secs() -> u64 {
    60
}
fn default_gtr_minutes() -> u64 {
    240
}
fn default_timezone() -> String {
    "Europe/Paris".into()
}
fn default_max_incidents() -> u64 {
    super::store::DEFAULT_MAX_INCIDENTS
}
fn default_publish_every_secs() -> u64 {
    3600
}
