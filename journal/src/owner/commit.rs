//! The owner's group commit: one durable write of the records still pending (and of the
//! ack, and of evictions over `max_bytes`), retried with a growing pause while it fails;
//! after it, what became durable leaves `pending` and the stage, and the stats are published.

use std::time::{Duration, Instant};

use super::{stats_from, Owner};
use crate::{Commit, JournalError, Record, Seq};

/// Longest pause between retries of a failing durable write.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);
/// Eviction warnings are summarised at most this often.
const EVICTION_LOG_INTERVAL: Duration = Duration::from_secs(60);

impl Owner {
    /// One durable write: `spill` (if not acknowledged meanwhile), the ack, evictions.
    pub(super) fn commit(
        &mut self,
        spill: &[Record],
        last_seq: Seq,
        acked: Seq,
        persist_counters: bool,
        unreadable: &[Seq],
    ) -> Result<(), JournalError> {
        let counters = self.store.counters();
        let evicted_before = counters.evicted_total;
        let commit = Commit {
            records: spill,
            last_seq,
            persist_counters,
            ack_up_to: acked,
            max_bytes: self.shared.config.max_bytes,
            unreadable,
        };
        let result = self.store.commit(&commit);
        match &result {
            Ok(()) => {
                self.commits += 1;
                self.retry_at = None;
                self.failures = 0;
                let evicted = self.store.counters().evicted_total.saturating_sub(evicted_before);
                self.note_evictions(evicted.saturating_sub(unreadable.len() as u64));
            }
            Err(error) => {
                self.failures = self.failures.saturating_add(1);
                let delay = self
                    .shared
                    .config
                    .commit_interval
                    .max(Duration::from_millis(100))
                    .saturating_mul(1 << self.failures.min(6))
                    .min(MAX_RETRY_DELAY);
                tracing::error!(
                    journal = %self.shared.name,
                    %error,
                    pending = spill.len(),
                    retry_in = ?delay,
                    "journal commit failed; records stay pending"
                );
                self.retry_at = Some(Instant::now() + delay);
            }
        }
        let settled = result.as_ref().map(|_| ()).map_err(|_| ());
        self.settle(spill, settled);
        result
    }

    /// After a commit: drop what it made durable from `pending` (and the stage), publish.
    fn settle(&mut self, spill: &[Record], result: Result<(), ()>) {
        let counters = self.store.counters();
        let acked = {
            let mut hot = self.shared.lock();
            if result.is_ok() {
                if let Some(last) = spill.last() {
                    let full = hot.pending.len() >= self.shared.limit;
                    while hot.pending.front().is_some_and(|p| p.record.seq <= last.seq) {
                        hot.pending.pop_front();
                    }
                    if full {
                        self.shared.room.notify_waiters();
                    }
                }
                let spilled_last = spill.last().map_or(Seq::NONE, |r| r.seq);
                hot.stored_last =
                    if counters.records > 0 { hot.stored_last.max(spilled_last) } else { Seq::NONE };
                hot.stored_first = counters.first_seq;
                if hot.stored_first.is_some_and(|first| first <= hot.acked) && hot.ack_noticed.is_none() {
                    hot.ack_noticed = Some(Instant::now());
                }
                if hot.pending.is_empty() {
                    let acked = hot.acked;
                    let failed = hot.stage.as_mut().map(|stage| stage.clear(acked));
                    if let Some(Err(error)) = failed {
                        tracing::error!(journal = %self.shared.name, %error, "journal RAM stage cannot be emptied; running without it from now on");
                        hot.stage = None;
                    }
                }
            }
            hot.acked
        };
        // The windows moved: the clock times the next one.
        self.shared.clock.notify_one();
        self.publish(acked);
    }

    fn note_evictions(&mut self, evicted: u64) {
        self.evicted_unlogged = self.evicted_unlogged.saturating_add(evicted);
        if self.evicted_unlogged == 0 {
            return;
        }
        let now = Instant::now();
        if self.last_eviction_log.is_some_and(|last| now.duration_since(last) < EVICTION_LOG_INTERVAL) {
            return;
        }
        tracing::warn!(
            journal = %self.shared.name,
            evicted = self.evicted_unlogged,
            evicted_total = self.store.counters().evicted_total,
            max_bytes = self.shared.config.max_bytes,
            "journal is over max_bytes: evicted the oldest unacknowledged records"
        );
        self.evicted_unlogged = 0;
        self.last_eviction_log = Some(now);
    }

    /// Publish the store's counters, with the ack as the far side gave it (durable or not).
    fn publish(&self, acked: Seq) {
        let mut stats = stats_from(&self.store.counters(), self.commits, &self.quarantined);
        stats.acked = stats.acked.max(acked);
        stats.last_seq = stats.last_seq.max(acked);
        self.shared.stats.send_replace(stats);
    }
}
