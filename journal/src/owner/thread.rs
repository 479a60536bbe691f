//! The owner thread's loop: it sleeps until something is due (a commit window ended, a batch
//! is full, a read of stored records or a flush waits, a retry is due), takes the work under
//! the lock, does it off the lock, and on close commits what is pending before it stops and
//! answers whoever still waits. A panic or a store that keeps failing closes the journal.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::claim::PathClaim;
use super::{Life, Owner, ReadRequest};
use crate::{JournalError, Record, Seq};

/// Consecutive failed commits (about 10 s of retries) after which the owner stops
/// retrying and closes the journal: a store that fails every write must not hold
/// appends, flushes and closes forever. The next start checks the store on open
/// (and moves it aside if it is damaged).
const MAX_COMMIT_FAILURES: u32 = 6;
/// Attempts at the last commit when the journal closes.
const FINAL_COMMIT_ATTEMPTS: u32 = 3;

/// What the owner found to do after waking.
#[derive(Default)]
struct Work {
    reads: Vec<ReadRequest>,
    flushes: Vec<oneshot::Sender<Result<(), JournalError>>>,
    /// Records to make durable (copies; they stay pending until the write succeeded).
    spill: Vec<Record>,
    last_seq: Seq,
    acked: Seq,
    commit: bool,
    closing: bool,
}

impl Owner {
    pub(super) fn run(mut self, claim: PathClaim) {
        let name = self.shared.name.clone();
        let shared = Arc::clone(&self.shared);
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            self.serve();
            self.finish()
        }));
        // Release the store before answering, so a reopen right after `close` succeeds.
        drop(self);
        drop(claim);
        let close_reply = {
            let mut hot = shared.lock();
            hot.life = Life::Closed;
            for waiter in hot.flushes.drain(..) {
                let _ = waiter.send(Err(shared.closed()));
            }
            for read in hot.reads.drain(..) {
                let _ = read.reply.send(Err(shared.closed()));
            }
            hot.close_reply.take()
        };
        shared.room.notify_waiters();
        match outcome {
            Ok(result) => {
                if let Some(reply) = close_reply {
                    let _ = reply.send(result);
                }
            }
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(journal = %name, panic = %message, "journal owner thread panicked; the journal is closed and pending records are lost");
            }
        }
    }

    /// Serve until the journal closes (asked, every handle gone, or the store keeps failing).
    fn serve(&mut self) {
        loop {
            if self.failures >= MAX_COMMIT_FAILURES {
                tracing::error!(
                    journal = %self.shared.name,
                    failures = self.failures,
                    "journal store fails every commit; closing the journal (restart berrygw to check the store)"
                );
                return;
            }
            let work = self.wait_for_work();
            if work.closing {
                // Reads and flushes queued behind the close are answered by `finish`.
                let mut hot = self.shared.lock();
                hot.reads.extend(work.reads);
                hot.flushes.extend(work.flushes);
                return;
            }
            self.do_work(work);
        }
    }

    /// Sleep until something is due, then take it.
    fn wait_for_work(&mut self) -> Work {
        let shared = Arc::clone(&self.shared);
        let mut hot = shared.lock();
        loop {
            let now = Instant::now();
            if hot.life != Life::Open {
                return Work {
                    closing: true,
                    reads: std::mem::take(&mut hot.reads),
                    flushes: std::mem::take(&mut hot.flushes),
                    ..Work::default()
                };
            }
            let mut deadline = None::<Instant>;
            for ping in hot.pings.drain(..) {
                let _ = ping.send(());
            }
            let mut due = !hot.reads.is_empty() || !hot.flushes.is_empty();
            if let Some(retry) = self.retry_at {
                // A failing store: nothing durable before the retry time (reads still served).
                due = due || now >= retry;
                deadline = Some(retry);
            } else {
                due = due || hot.commit_due || hot.pending.len() >= self.shared.config.commit_max_records;
                if !self.shared.clock_running.load(Ordering::Acquire) {
                    // No clock task (no async runtime has used this journal yet): time the
                    // windows here.
                    deadline = self.shared.next_deadline(&hot);
                    due = due || deadline.is_some_and(|at| now >= at);
                }
            }
            if due {
                let commit = self.retry_at.is_none_or(|retry| now >= retry)
                    && (!hot.pending.is_empty() || hot.ack_noticed.is_some() || !hot.flushes.is_empty());
                let spill =
                    if commit { hot.pending.iter().map(|p| p.record.clone()).collect() } else { Vec::new() };
                let work = Work {
                    reads: std::mem::take(&mut hot.reads),
                    flushes: if commit { std::mem::take(&mut hot.flushes) } else { Vec::new() },
                    spill,
                    last_seq: hot.last_seq,
                    acked: hot.acked,
                    commit,
                    closing: false,
                };
                if commit {
                    hot.ack_noticed = None;
                    hot.commit_due = false;
                }
                return work;
            }
            hot.owner_idle = deadline.is_none();
            hot = match deadline {
                Some(at) => {
                    shared
                        .wake
                        .wait_timeout(hot, at.saturating_duration_since(now))
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
                None => shared.wake.wait(hot).unwrap_or_else(|p| p.into_inner()),
            };
            hot.owner_idle = false;
        }
    }

    fn do_work(&mut self, work: Work) {
        if work.commit {
            let result = self.commit(&work.spill, work.last_seq, work.acked, false, &[]);
            for waiter in work.flushes {
                let _ =
                    waiter.send(result.as_ref().map(|_| ()).map_err(|error| JournalError::CommitFailed {
                        path: self.shared.config.path.clone(),
                        reason: error.to_string(),
                    }));
            }
        }
        for read in work.reads {
            let result = self.read(read.after, read.max);
            let _ = read.reply.send(result);
        }
    }

    /// Commit what is pending (and acked) before the owner stops.
    fn finish(&mut self) -> Result<(), JournalError> {
        let (spill, last_seq, acked, reads, flushes) = {
            let mut hot = self.shared.lock();
            let spill: Vec<Record> = hot.pending.iter().map(|p| p.record.clone()).collect();
            (spill, hot.last_seq, hot.acked, std::mem::take(&mut hot.reads), std::mem::take(&mut hot.flushes))
        };
        for read in reads {
            let result = self.read(read.after, read.max);
            let _ = read.reply.send(result);
        }
        let mut result = Ok(());
        for attempt in 1..=FINAL_COMMIT_ATTEMPTS {
            result = self.commit(&spill, last_seq, acked, true, &[]);
            if result.is_ok() {
                break;
            }
            if attempt < FINAL_COMMIT_ATTEMPTS {
                std::thread::sleep(self.shared.config.commit_interval.max(Duration::from_millis(100)));
            }
        }
        if result.is_err() {
            tracing::error!(
                journal = %self.shared.name,
                lost = spill.iter().filter(|r| r.seq > acked).count(),
                "journal closed with records that never became durable; they are lost"
            );
        }
        for waiter in flushes {
            let _ = waiter.send(result.as_ref().map(|_| ()).map_err(|error| JournalError::CommitFailed {
                path: self.shared.config.path.clone(),
                reason: error.to_string(),
            }));
        }
        result
    }
}
