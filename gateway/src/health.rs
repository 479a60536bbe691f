//! What this gateway tells the centre about itself: the compact health record
//! (`berrygw_proto::health`), made from the same status `berrygw status` shows, every
//! [`SAMPLE`] and as soon as a sink connects or loses its far side, and handed to the app sink (which publishes it retained on `…/health`)
//! when it says something new or [`EVERY`] has passed since the last one. Latest value
//! only: a record is never queued in the journal, a gateway back from an outage
//! publishes its current health, not the history of it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use berrygw_proto::health::{Health, RadioHealth, SinkHealth};
use std::sync::Arc;

use tokio::sync::{watch, Notify};

use crate::clock::ClockSync;
use crate::status::{History, Status};
use crate::view::GatewayView;

/// How often the status is looked at.
pub const SAMPLE: Duration = Duration::from_secs(10);
/// The longest between two records, news or not.
pub const EVERY: Duration = Duration::from_secs(300);
/// After a sink's connection changed, how long to let the others follow before looking.
const NEWS_SETTLE: Duration = Duration::from_millis(200);

/// The record of `view` now; `last_uplink` is when the radio's count last moved.
pub fn record(view: &GatewayView, state_dir: &Path, last_uplink: Option<Instant>) -> Health {
    let s = Status::collect(view, &History::default());
    Health {
        gateway_id: s.gateway_id.clone(),
        at_ms: berrygw_core::unix_ms(SystemTime::now()),
        every_secs: EVERY.as_secs(),
        version: s.version.clone(),
        config_version: view.config_version.as_ref().and_then(|v| *v.borrow()),
        uptime_secs: s.uptime_secs,
        healthy: s.healthy,
        problems: s.problems.clone(),
        radio: RadioHealth {
            kind: s.radio.kind.clone(),
            running: s.radio.concentrator.as_ref().is_none_or(|c| c.running),
            received: s.radio.received,
        },
        sinks: s
            .sinks
            .iter()
            .map(|k| SinkHealth {
                name: k.name.clone(),
                connected: k.connected,
                backlog: k.backlog.records,
                oldest_waiting_secs: k.backlog.oldest_age_secs,
            })
            .collect(),
        disk_free_bytes: disk_free(state_dir),
        clock_synced: match s.clock {
            ClockSync::Synchronized => Some(true),
            ClockSync::Unsynchronized => Some(false),
            ClockSync::Unknown(_) => None,
        },
        last_uplink_age_secs: last_uplink.map(|t| t.elapsed().as_secs()),
        alarms_open: u32::try_from(s.alarms.len()).unwrap_or(u32::MAX),
    }
}

/// Free bytes for an unprivileged user on the filesystem holding `dir`.
pub fn disk_free(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid C string and `st` a valid out-parameter for statvfs.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return None;
    }
    // 32-bit fields on armv7, 64-bit on aarch64 and x86_64.
    #[allow(clippy::useless_conversion)]
    let (blocks, size) = (u64::from(st.f_bavail), u64::from(st.f_frsize));
    Some(blocks.saturating_mul(size))
}

/// Keep `out` holding the latest record worth publishing, until `shutdown`.
pub async fn run(
    view: GatewayView,
    state_dir: PathBuf,
    news: Arc<Notify>,
    out: watch::Sender<Option<Vec<u8>>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut last: Option<(Health, Instant)> = None;
    let mut received = 0;
    let mut last_uplink = None;
    let mut tick = tokio::time::interval(SAMPLE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            // A sink connected or lost its far side: look now (once the others settle).
            _ = news.notified() => tokio::time::sleep(NEWS_SETTLE).await,
            _ = shutdown.changed() => return,
        }
        let now_received = view.counters.received.load(std::sync::atomic::Ordering::Relaxed);
        if now_received != received {
            received = now_received;
            last_uplink = Some(Instant::now());
        }
        let health = tokio::task::block_in_place(|| record(&view, &state_dir, last_uplink));
        let due = match &last {
            None => true,
            Some((before, at)) => before.news_since(&health) || at.elapsed() >= EVERY,
        };
        if due {
            out.send_replace(Some(health.to_json()));
            last = Some((health, Instant::now()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_free_reads_the_filesystem_of_a_directory() {
        let dir = tempfile::tempdir().expect("tmp");
        assert!(disk_free(dir.path()).is_some_and(|b| b > 0));
        assert_eq!(disk_free(&dir.path().join("gone")), None);
    }
}
