//! Life under systemd: readiness (`READY=1` once the pipeline runs), stopping
//! notice, and watchdog pings that are sent only while the pipeline is really
//! alive — a stuck ingest loop or journal thread stops the pings and systemd
//! restarts berrygw. Outside systemd (no `NOTIFY_SOCKET`) all of it is a no-op.
//! Log routing (journald or stderr) is chosen in `main.rs`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::journal::Journal;

/// Tell systemd the gateway is up.
pub fn notify_ready() {
    if let Err(e) = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status("forwarding uplinks")]) {
        warn!("could not notify systemd of readiness: {e}");
    }
}

/// Tell systemd a reload (SIGHUP) has begun; `notify_ready` ends it.
pub fn notify_reloading() {
    let _ = sd_notify::notify(&[NotifyState::Reloading]);
}

/// Tell systemd a clean stop has begun.
pub fn notify_stopping() {
    let _ = sd_notify::notify(&[NotifyState::Stopping]);
}

/// Proof of life of one loop: it beats at least every [`BEAT_EVERY`].
#[derive(Clone)]
pub struct Heartbeat {
    epoch: Instant,
    last_ms: Arc<AtomicU64>,
}

/// How often a live loop beats, even when idle.
pub const BEAT_EVERY: Duration = Duration::from_secs(5);

impl Heartbeat {
    /// Record that the loop is alive now.
    pub fn beat(&self) {
        self.last_ms.store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn silent_for(&self) -> Duration {
        let now = self.epoch.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// The parts whose life the watchdog checks.
pub struct Liveness {
    epoch: Instant,
    beats: Vec<(&'static str, Heartbeat)>,
    journals: Vec<(&'static str, Journal)>,
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness { epoch: Instant::now(), beats: Vec::new(), journals: Vec::new() }
    }
}

impl Liveness {
    /// A heartbeat for the loop called `name`.
    pub fn heartbeat(&mut self, name: &'static str) -> Heartbeat {
        let hb = Heartbeat { epoch: self.epoch, last_ms: Arc::default() };
        hb.beat();
        self.beats.push((name, hb.clone()));
        hb
    }

    /// Probe this journal's owner thread (a ping, which writes nothing) at each check.
    pub fn journal(&mut self, name: &'static str, journal: Journal) {
        self.journals.push((name, journal));
    }

    /// Ok when every loop beat within `max_silence` and every journal answered within it.
    pub async fn check(&self, max_silence: Duration) -> Result<(), String> {
        for (name, hb) in &self.beats {
            let silent = hb.silent_for();
            if silent > max_silence {
                return Err(format!("{name} silent for {:.1} s", silent.as_secs_f32()));
            }
        }
        for (name, journal) in &self.journals {
            match tokio::time::timeout(max_silence, journal.ping()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(format!("{name} journal: {e}")),
                Err(_) => return Err(format!("{name} journal did not answer within {max_silence:?}")),
            }
        }
        Ok(())
    }
}

/// Ping the systemd watchdog at half its period while `liveness` checks out.
pub async fn watchdog(liveness: Liveness, mut shutdown: watch::Receiver<bool>) {
    let Some(period) = sd_notify::watchdog_enabled() else {
        debug!("no systemd watchdog requested");
        return;
    };
    let every = (period / 2).max(Duration::from_millis(100));
    let max_silence = (period / 2).max(BEAT_EVERY * 3);
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        match liveness.check(max_silence).await {
            Ok(()) => {
                let _ = sd_notify::notify(&[NotifyState::Watchdog]);
            }
            Err(reason) => {
                warn!("watchdog: {reason}; withholding the ping so that systemd restarts berrygw");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_silent_loop_fails_the_check_and_names_itself() {
        let mut l = Liveness::default();
        let ingest = l.heartbeat("ingest");
        let _radio = l.heartbeat("radio");
        assert!(l.check(Duration::from_secs(3)).await.is_ok());
        std::thread::sleep(Duration::from_millis(50));
        ingest.beat();
        let err = l.check(Duration::from_millis(20)).await.expect_err("radio did not beat");
        assert!(err.starts_with("radio silent for"), "{err}");
    }
}
