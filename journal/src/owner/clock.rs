//! The clock: the async task that times the commit windows (and the deletion of acknowledged
//! stored records), started on the first tokio runtime that uses the journal, and the
//! deadline it (or, without it, the owner thread) waits for.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::{Hot, Life, Shared};

impl Shared {
    /// Start the clock task on the current tokio runtime if it is not running; whether it runs.
    pub(super) fn ensure_clock(&self) -> bool {
        if self.clock_running.load(Ordering::Acquire) {
            return true;
        }
        let (Ok(runtime), Some(this)) = (tokio::runtime::Handle::try_current(), self.this.upgrade()) else {
            return false;
        };
        if self.clock_running.swap(true, Ordering::AcqRel) {
            return true;
        }
        runtime.spawn(clock(this));
        // The owner may be sleeping on a deadline of its own: from now on the clock times it.
        self.wake.notify_one();
        true
    }

    /// The commit window while a far side is connected.
    pub(crate) fn commit_interval(&self) -> std::time::Duration {
        self.config.commit_interval
    }

    /// When the open commit window (or the deletion of acknowledged stored records) is due.
    pub(super) fn next_deadline(&self, hot: &Hot) -> Option<Instant> {
        let window = if hot.far_side {
            self.config.commit_interval
        } else {
            self.config.outage_commit_interval.max(self.config.commit_interval)
        };
        let spill = hot.pending.front().map(|front| front.at + window);
        let delete = hot.ack_noticed.map(|noticed| noticed + self.config.commit_interval);
        match (spill, delete) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// The clock task: times the commit windows on the async runtime, where starting, moving and
/// cancelling a timer wakes no thread, and wakes the owner thread only when a window ends
/// with something to keep. On a healthy link (every record acknowledged within its window)
/// the owner thread never wakes at all.
async fn clock(shared: Arc<Shared>) {
    loop {
        let notified = shared.clock.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let next = {
            let mut hot = shared.lock();
            if hot.life != Life::Open {
                break;
            }
            let next = shared.next_deadline(&hot);
            if next.is_some_and(|at| at <= Instant::now()) {
                if !hot.commit_due {
                    hot.commit_due = true;
                    drop(hot);
                    shared.wake.notify_one();
                }
                // The owner tells the clock when it has committed.
                None
            } else {
                next
            }
        };
        match next {
            Some(at) => {
                tokio::select! {
                    () = tokio::time::sleep_until(at.into()) => {}
                    () = &mut notified => {}
                }
            }
            None => notified.await,
        }
    }
    shared.clock_running.store(false, Ordering::Release);
}
