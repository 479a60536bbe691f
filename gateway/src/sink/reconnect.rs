//! The reconnect loop every sink runs ([`Reconnect`]): one session with its far side at a time,
//! until shutdown. When a session fails, the sink is marked down (its `connected`
//! counter, and its journal's far side, so that the journal may take its longer
//! commit window), the failure is logged (while nothing answers, one line per
//! `WARN_EVERY` rather than per try), and the next session starts after a delay
//! from [`Backoff`].

use std::fmt;
use std::ops::ControlFlow;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use berrygw_core::LogLimiter;
use tokio::sync::watch;
use tracing::warn;

use super::SinkCounters;
use crate::journal::Journal;

/// The sink a reconnect loop keeps connected.
pub struct Sink<'a> {
    /// `chirpstack`, `app`, `semtech_udp`: in logs.
    pub name: &'static str,
    pub server: &'a (dyn fmt::Display + Sync),
    pub counters: &'a SinkCounters,
    pub journal: &'a Journal,
}

/// How a session ended when it did not fail: the sink was told to stop.
pub struct Stopped;

/// What a sink's task does between sessions:
/// `loop { let ended = session(..).await; if reconnect.after(ended, &mut shutdown).await.is_break() { return } }`.
pub struct Reconnect<'a> {
    sink: Sink<'a>,
    backoff: Backoff,
    /// Tells a far side that did not answer from one that refused (see [`Failure`]).
    classify: fn(&anyhow::Error) -> Failure,
    warn: LogLimiter,
    /// When the current session started.
    started: Instant,
}

impl<'a> Reconnect<'a> {
    /// Before the first session.
    pub fn new(sink: Sink<'a>, backoff: Backoff, classify: fn(&anyhow::Error) -> Failure) -> Reconnect<'a> {
        Reconnect { sink, backoff, classify, warn: LogLimiter::default(), started: Instant::now() }
    }

    /// A session ended on purpose, to be opened again at once (Basics Station's sink
    /// closes its LNS link while CUPS is asked): nobody acknowledges for now, no backoff.
    pub fn paused(&mut self) {
        self.sink.counters.set_connected(false);
        self.sink.journal.far_side(false);
    }

    /// After a session ended: `Break` when the sink stops (the session was told to, or
    /// shutdown came while waiting), `Continue` when the next session may start.
    pub async fn after(
        &mut self,
        ended: anyhow::Result<Stopped>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> ControlFlow<()> {
        let sink = &self.sink;
        sink.counters.set_connected(false);
        let e = match ended {
            Ok(Stopped) => return ControlFlow::Break(()),
            Err(e) => e,
        };
        // Nobody acknowledges now: the journal may take its longer commit window.
        sink.journal.far_side(false);
        sink.counters.reconnects.fetch_add(1, Ordering::Relaxed);
        let kind = (self.classify)(&e);
        let delay = self.backoff.after_failure(self.started.elapsed(), kind);
        let held = if kind == Failure::Unreachable { self.warn.allow("unreachable") } else { Some(0) };
        if let Some(held) = held {
            warn!(
                server = %sink.server,
                "{} sink: {}; reconnecting in {:.1} s ({held} more failures like it since the last warning)",
                sink.name,
                error_chain(&e),
                delay.as_secs_f32()
            );
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => return ControlFlow::Break(()),
        }
        self.started = Instant::now();
        ControlFlow::Continue(())
    }
}

/// The error and its causes on one line, without the repeats some libraries add
/// (some libraries' I/O errors print their source twice).
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain().map(|c| c.to_string()) {
        if !out.contains(&cause) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&cause);
        }
    }
    out
}

/// How a connection attempt or session ended, for the reconnect delay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Nothing answered (connection refused, unreachable, timed out, name not resolved):
    /// the far side or the backhaul is down. Trying again costs a SYN; try soon, so that
    /// the first publish follows the broker's return within about `min`.
    Unreachable,
    /// The far side answered and refused (bad credentials, TLS), or the session broke
    /// after it began: back off, doubling.
    Refused,
}

/// Reconnect delays: `min` (+0–25 % jitter) while nothing answers; doubling from `min`
/// to `max` after refusals. The jitter keeps a fleet from reconnecting in lockstep after
/// a broker restart; `max` is a real cap, jitter included.
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff { min, max, next: min }
    }

    /// The delay before the next attempt, after a session that lasted `lived` and ended
    /// by `failure`. A session that lived longer than `max` was healthy: back off afresh.
    pub fn after_failure(&mut self, lived: Duration, failure: Failure) -> Duration {
        if lived > self.max {
            self.next = self.min;
        }
        let delay = match failure {
            Failure::Unreachable => self.min,
            Failure::Refused => {
                let delay = self.next;
                self.next = (self.next * 2).min(self.max);
                delay
            }
        };
        (delay + delay.mul_f64(rand::random::<f64>() * 0.25)).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_chain_drops_repeated_causes() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused");
        let e = anyhow::Error::new(io).context("I/O: Connection refused").context("connecting to mqtt://x:1");
        assert_eq!(error_chain(&e), "connecting to mqtt://x:1: I/O: Connection refused");
    }

    #[test]
    fn backoff_doubles_to_max_after_refusals_and_resets_after_a_healthy_session() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(4));
        let base = |d: Duration| d.as_secs();
        let refused = Failure::Refused;
        assert_eq!(base(b.after_failure(Duration::ZERO, refused)), 1);
        assert_eq!(base(b.after_failure(Duration::ZERO, refused)), 2);
        for _ in 0..20 {
            assert!(
                b.after_failure(Duration::ZERO, refused) <= Duration::from_secs(4),
                "the cap holds, jitter included"
            );
        }
        assert_eq!(base(b.after_failure(Duration::from_secs(60), refused)), 1);
    }

    #[test]
    fn while_nothing_answers_the_next_try_comes_after_min_however_long_the_outage() {
        let mut b = Backoff::new(Duration::from_millis(1000), Duration::from_secs(60));
        for _ in 0..100 {
            let d = b.after_failure(Duration::ZERO, Failure::Unreachable);
            assert!(d >= Duration::from_millis(1000) && d <= Duration::from_millis(1250), "{d:?}");
        }
    }
}
