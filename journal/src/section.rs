//! The `[journal]` section of the gateway's configuration: backend, size bound, commit
//! windows, RAM stage; its defaults and the checks serde cannot express.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::Backend;

/// `[journal]` of `berrygw.toml`: the durable queue in front of every sink.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalSection {
    #[serde(default = "default_backend")]
    pub backend: Backend,
    /// Upper bound of each sink's journal; the oldest records are evicted past it.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// Group commit window: appends within it share one durable write.
    #[serde(default = "default_commit_interval_ms")]
    pub commit_interval_ms: u64,
    /// The window while a sink's far side is disconnected (records cannot leave soon).
    #[serde(default = "default_outage_commit_interval_ms")]
    pub outage_commit_interval_ms: u64,
    /// The RAM stage (a tmpfs directory): records are there before they are accepted, so a
    /// crash of berrygw loses none. Empty: no stage.
    #[serde(default = "default_stage_dir")]
    pub stage_dir: PathBuf,
    /// Group commit size: a batch this large is written without waiting.
    #[serde(default = "default_commit_max_records")]
    pub commit_max_records: usize,
}

impl Default for JournalSection {
    fn default() -> Self {
        JournalSection {
            backend: default_backend(),
            max_bytes: default_max_bytes(),
            commit_interval_ms: default_commit_interval_ms(),
            outage_commit_interval_ms: default_outage_commit_interval_ms(),
            stage_dir: default_stage_dir(),
            commit_max_records: default_commit_max_records(),
        }
    }
}

impl JournalSection {
    /// Group commit window as a duration.
    pub fn commit_interval(&self) -> Duration {
        Duration::from_millis(self.commit_interval_ms)
    }

    /// The commit window while no far side is connected.
    pub fn outage_commit_interval(&self) -> Duration {
        Duration::from_millis(self.outage_commit_interval_ms)
    }

    /// The RAM stage's directory, if there is one.
    pub fn stage_dir(&self) -> Option<PathBuf> {
        (!self.stage_dir.as_os_str().is_empty()).then(|| self.stage_dir.clone())
    }
}

impl JournalSection {
    /// The checks serde cannot express; the message names the key.
    pub fn check(&self) -> Result<(), String> {
        if self.max_bytes < 4096 {
            return Err("journal.max_bytes must be at least 4096".into());
        }
        if self.outage_commit_interval_ms > 60_000 {
            return Err("journal.outage_commit_interval_ms must be at most 60000: a power cut during an outage loses up to this window".into());
        }
        if self.commit_max_records == 0 || self.commit_interval_ms == 0 {
            return Err("journal.commit_interval_ms and journal.commit_max_records must be at least 1".into());
        }
        Ok(())
    }
}

fn default_backend() -> Backend {
    Backend::Log
}
fn default_outage_commit_interval_ms() -> u64 {
    // At 10 uplinks/s a 1 s window writes ~615 bytes per uplink (each commit re-dirties
    // the segment's last 4 KiB page); 1.5 s keeps it under 500 (BENCHMARKS.md "Field rates").
    1500
}
fn default_stage_dir() -> PathBuf {
    // systemd's RuntimeDirectory=berrygw (kept across restarts by RuntimeDirectoryPreserve=).
    PathBuf::from("/run/berrygw/journal")
}
fn default_max_bytes() -> u64 {
    256 * 1024 * 1024
}
fn default_commit_interval_ms() -> u64 {
    // Long enough that at 5 uplinks/s and more each publish reads the one before's PUBACK
    // (the sink reads acknowledgements late, 3/4 into the window: one wake-up per uplink,
    // not two), and that a broker a slow 4G link away acknowledges before anything is
    // written. A power cut while the broker is up but not acknowledging takes at most this.
    500
}
fn default_commit_max_records() -> usize {
    1000
}
