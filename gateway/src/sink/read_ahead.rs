//! What every sink does between its journal and its connection: keep up to
//! [`PREFETCH`] records read ahead, run the next journal read beside the
//! connection's event loop (a journal busy with an fsync must never stall
//! acknowledgement handling), and wake on appends, not commits (publishing
//! does not wait for the durable write). Also what every sink does with a
//! record it cannot send ([`set_aside`]) and the reconnect backoff.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use anyhow::{bail, Context};
use berrygw_core::LogLimiter;
use tokio::sync::watch;
use tracing::warn;

use super::SinkCounters;
use crate::journal::{Journal, JournalError, Record, Seq};

/// Records read from the journal ahead of sending.
pub const PREFETCH: usize = 2000;

type Read = Pin<Box<dyn Future<Output = Result<Vec<Record>, JournalError>> + Send>>;

/// A sink's window onto its journal, from one seq on.
pub struct ReadAhead {
    journal: Journal,
    appended: watch::Receiver<Seq>,
    /// Records read and not yet taken, oldest first.
    pub records: VecDeque<Record>,
    read_upto: Seq,
    reading: Option<Read>,
    caught_up: bool,
}

impl ReadAhead {
    /// Read records after `from` (the journal's ack point when a session starts).
    pub fn new(journal: &Journal, from: Seq) -> ReadAhead {
        ReadAhead {
            journal: journal.clone(),
            appended: journal.watch_appended(),
            records: VecDeque::new(),
            read_upto: from,
            reading: None,
            caught_up: false,
        }
    }

    /// Start the next read when the buffer runs low; call once per turn of the loop.
    pub fn refill(&mut self) {
        if self.reading.is_none() && !self.caught_up && self.records.len() < PREFETCH / 2 {
            // Appends after this point wake `ready` even if the read misses them.
            self.appended.borrow_and_update();
            let journal = self.journal.clone();
            let after = self.read_upto;
            self.reading = Some(Box::pin(async move { journal.read_after(after, PREFETCH).await }));
        }
    }

    /// Resolves when a read has landed in `records` or, when caught up, a record
    /// was appended. Cancel-safe: use it as one branch of the sink's `select!`.
    pub async fn ready(&mut self) -> anyhow::Result<()> {
        match self.reading.as_mut() {
            Some(read) => {
                let records = read.await.context("reading journal");
                self.reading = None;
                let records = records?;
                match records.last() {
                    Some(last) => self.read_upto = last.seq,
                    None => self.caught_up = true,
                }
                self.records.extend(records);
            }
            None if self.caught_up => {
                if self.appended.changed().await.is_err() {
                    bail!("journal closed");
                }
                self.caught_up = false;
            }
            None => std::future::pending::<()>().await,
        }
        Ok(())
    }
}

/// A journal record that a sink cannot turn into a wire message, and why.
#[derive(Debug, thiserror::Error)]
#[error("{detail}")]
pub struct BadRecord {
    /// A fixed label for the log limiter ("undecodable", "time out of range", ...).
    pub cause: &'static str,
    pub detail: String,
}

impl BadRecord {
    pub fn new(cause: &'static str, detail: impl std::fmt::Display) -> BadRecord {
        BadRecord { cause, detail: detail.to_string() }
    }
}

/// What every sink does with a record it cannot send: count it in `bad_records`
/// and log it (once per cause per [`berrygw_core::log::WARN_EVERY`]). The caller
/// then acknowledges it out of the journal with the records around it, so a bad
/// record never stops the sink nor comes back after a restart.
pub fn set_aside(sink: &str, seq: Seq, bad: &BadRecord, counters: &SinkCounters, warn: &mut LogLimiter) {
    counters.bad_records.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if let Some(held) = warn.allow(bad.cause) {
        warn!(
            seq = seq.0,
            "{sink} sink: journal record set aside, it cannot be sent ({}): {bad}; {held} more like it since the last warning",
            bad.cause
        );
    }
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
