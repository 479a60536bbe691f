//! Life under systemd: readiness (`READY=1` once the pipeline runs), stopping
//! notice, and watchdog pings that are sent only while the pipeline is really
//! alive — a stuck ingest loop or journal thread stops the pings and systemd
//! restarts berrygw. Outside systemd (no `NOTIFY_SOCKET`) all of it is a no-op.
//! Log routing (journald or stderr) is chosen in `main.rs`.

use std::time::Duration;

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

/// Proof of life of one loop: the watchdog asks, the loop answers when it next comes round
/// (any pass of it answers). An idle loop needs no timer of its own to prove it lives.
pub struct Heartbeat {
    asked: watch::Receiver<u64>,
    answered: watch::Sender<u64>,
}

/// The least time a loop is given to answer the watchdog.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(15);

impl Heartbeat {
    /// Resolves when the watchdog asks (never, once the watchdog is gone); the loop then
    /// calls [`Heartbeat::beat`].
    pub async fn asked(&mut self) {
        if self.asked.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// The loop is alive now: answers whatever the watchdog asked so far.
    pub fn beat(&self) {
        let asked = *self.asked.borrow();
        self.answered.send_if_modified(|answered| std::mem::replace(answered, asked) != asked);
    }
}

/// The parts whose life the watchdog checks.
#[derive(Default)]
pub struct Liveness {
    loops: Vec<(&'static str, watch::Sender<u64>, watch::Receiver<u64>)>,
    journals: Vec<(&'static str, Journal)>,
}

impl Liveness {
    /// A heartbeat for the loop called `name`.
    pub fn heartbeat(&mut self, name: &'static str) -> Heartbeat {
        let (ask, asked) = watch::channel(0);
        let (answered, answers) = watch::channel(0);
        self.loops.push((name, ask, answers));
        Heartbeat { asked, answered }
    }

    /// Probe this journal's owner thread (a ping, which writes nothing) at each check.
    pub fn journal(&mut self, name: &'static str, journal: Journal) {
        self.journals.push((name, journal));
    }

    /// Ok when every loop and every journal answered within `max_silence`.
    pub async fn check(&self, max_silence: Duration) -> Result<(), String> {
        for (name, ask, answers) in &self.loops {
            let mut answers = answers.clone();
            ask.send_modify(|n| *n += 1);
            let asked = *ask.borrow();
            let answer = tokio::time::timeout(max_silence, answers.wait_for(|a| *a >= asked)).await;
            match answer.map(|answered| answered.is_ok()) {
                Ok(true) => {}
                Ok(false) => return Err(format!("{name} has stopped")),
                Err(_) => return Err(format!("{name} did not answer within {max_silence:?}")),
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
    let max_silence = (period / 2).max(ANSWER_WITHIN);
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

    /// A loop that answers when asked, as the ingest does.
    fn answering(mut heartbeat: Heartbeat) {
        tokio::spawn(async move {
            loop {
                heartbeat.asked().await;
                heartbeat.beat();
            }
        });
    }

    #[tokio::test]
    async fn a_loop_that_does_not_answer_fails_the_check_and_names_itself() {
        let mut l = Liveness::default();
        answering(l.heartbeat("ingest"));
        let radio = l.heartbeat("radio");
        let err = l.check(Duration::from_millis(100)).await.expect_err("radio does not answer");
        assert!(err.starts_with("radio did not answer"), "{err}");
        // An answer to an earlier question is not an answer to the next one.
        radio.beat();
        let err =
            l.check(Duration::from_millis(100)).await.expect_err("radio answered only the last question");
        assert!(err.starts_with("radio did not answer"), "{err}");
        drop(radio);
        let err = l.check(Duration::from_secs(10)).await.expect_err("radio is gone");
        assert_eq!(err, "radio has stopped");
    }

    #[tokio::test]
    async fn loops_that_answer_pass_the_check_every_time() {
        let mut l = Liveness::default();
        answering(l.heartbeat("ingest"));
        answering(l.heartbeat("radio"));
        for _ in 0..3 {
            assert_eq!(l.check(Duration::from_secs(10)).await, Ok(()));
        }
    }
}
