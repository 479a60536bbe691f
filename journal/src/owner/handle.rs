//! What a [`Journal`](crate::Journal) handle's calls do on the caller's task, under the short
//! lock on [`Hot`]: append (to the RAM stage and `pending`, waiting only while `pending` is
//! full), reads served from `pending` (reads of stored records are queued for the owner),
//! acks (which free `pending` and the stage at once), the far side's state, and the requests
//! the owner answers: ping, flush, close.

use std::time::Instant;

use tokio::sync::oneshot;

use super::{pending_after, Hot, Life, Pending, ReadRequest, Shared};
use crate::{JournalError, NewRecord, Record, Seq, MAX_READ_RECORDS};

impl Shared {
    pub(crate) async fn append(&self, record: NewRecord) -> Result<(), JournalError> {
        let mut record = Some(record);
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            {
                let mut hot = self.lock();
                if hot.life != Life::Open {
                    return Err(self.closed());
                }
                if hot.pending.len() < self.limit {
                    let Some(new) = record.take() else { return Ok(()) };
                    let seq = Seq(hot.last_seq.0 + 1);
                    let record = Record {
                        seq,
                        kind: new.kind,
                        received_at_ms: new.received_at_ms,
                        payload: new.payload,
                    };
                    if let Some(stage) = hot.stage.as_mut() {
                        if let Err(error) = stage.append(&record) {
                            tracing::error!(journal = %self.name, path = %stage.path().display(), %error, "journal RAM stage write failed; running without it from now on");
                            hot.stage = None;
                        }
                    }
                    hot.last_seq = seq;
                    let was_empty = hot.pending.is_empty();
                    hot.pending.push_back(Pending { at: Instant::now(), record });
                    let full = hot.pending.len() == self.config.commit_max_records;
                    let owner_idle = hot.owner_idle;
                    self.appended.send_replace(seq);
                    drop(hot);
                    let clock = was_empty && self.ensure_clock();
                    if clock {
                        // A window opens: the clock task (on this runtime, no thread woken) times it.
                        self.clock.notify_one();
                    }
                    if full || (was_empty && owner_idle && !clock) {
                        self.wake.notify_one();
                    }
                    return Ok(());
                }
            }
            room.await;
        }
    }

    pub(crate) async fn read_after(&self, after: Seq, max: usize) -> Result<Vec<Record>, JournalError> {
        let max = max.min(MAX_READ_RECORDS);
        let answer = {
            let mut hot = self.lock();
            if hot.life == Life::Closed {
                return Err(self.closed());
            }
            let after = after.max(hot.acked);
            if max == 0 {
                return Ok(Vec::new());
            }
            if hot.stored_last <= after || hot.stored_first.is_none() {
                return Ok(pending_after(&hot.pending, after, max));
            }
            let (reply, answer) = oneshot::channel();
            hot.reads.push(ReadRequest { after, max, reply });
            answer
        };
        self.wake.notify_one();
        answer.await.map_err(|_| self.closed())?
    }

    pub(crate) fn ack(&self, up_to: Seq) {
        let mut hot = self.lock();
        // Only appended records can have been read, so anything beyond the last append is a
        // caller bug; clamping keeps it from deleting records appended later.
        let up_to = if up_to > hot.last_seq {
            tracing::warn!(journal = %self.name, %up_to, last_seq = %hot.last_seq, "ack beyond the last appended record; clamped");
            hot.last_seq
        } else {
            up_to
        };
        if up_to <= hot.acked {
            return;
        }
        hot.acked = up_to;
        let full = hot.pending.len() >= self.limit;
        let mut freed = 0;
        while hot.pending.front().is_some_and(|p| p.record.seq <= up_to) {
            hot.pending.pop_front();
            freed += 1;
        }
        let Hot { stage, pending, .. } = &mut *hot;
        if let Some(stage) = stage.as_mut() {
            let result = if pending.is_empty() {
                stage.start_over(up_to);
                Ok(())
            } else if stage.wants_rewrite() {
                stage.rewrite(pending.iter().map(|p| &p.record), up_to)
            } else {
                stage.ack(up_to);
                Ok(())
            };
            if let Err(error) = result {
                tracing::error!(journal = %self.name, path = %stage.path().display(), %error, "journal RAM stage write failed; running without it from now on");
                hot.stage = None;
            }
        }
        // Published at once: an acknowledged record is settled (it needs no durable write),
        // so the highest settled seq rises with it.
        self.stats.send_if_modified(|stats| {
            let raise = stats.acked < up_to;
            stats.acked = stats.acked.max(up_to);
            stats.last_seq = stats.last_seq.max(up_to);
            raise
        });
        let mut wake = false;
        // The window's oldest record changed: the clock moves its deadline now (a task poll
        // on this wake-up), rather than waking at the old one to find it acknowledged.
        let mut tell_clock = freed > 0;
        if hot.stored_first.is_some_and(|first| first <= up_to) && hot.ack_noticed.is_none() {
            hot.ack_noticed = Some(Instant::now());
            wake = hot.owner_idle;
            tell_clock = true;
        }
        drop(hot);
        if full && freed > 0 {
            self.room.notify_waiters();
        }
        let clock = tell_clock && self.ensure_clock();
        if clock {
            self.clock.notify_one();
        }
        if wake && !clock {
            self.wake.notify_one();
        }
    }

    pub(crate) fn far_side(&self, connected: bool) {
        let mut hot = self.lock();
        if hot.far_side != connected {
            hot.far_side = connected;
            drop(hot);
            // The window changed: whoever times it recomputes its deadline.
            self.clock.notify_one();
            self.wake.notify_one();
        }
    }

    /// Whether the owner thread still loops (answers within the caller's timeout); writes nothing.
    pub(crate) async fn ping(&self) -> Result<(), JournalError> {
        let answer = self.ask(|hot| &mut hot.pings)?;
        answer.await.map_err(|_| self.closed())
    }

    pub(crate) async fn flush(&self) -> Result<(), JournalError> {
        let answer = self.ask(|hot| &mut hot.flushes)?;
        answer.await.map_err(|_| self.closed())?
    }

    /// Queue a request for the owner in the list `queue` picks, and wake the owner.
    fn ask<T>(
        &self,
        queue: impl FnOnce(&mut Hot) -> &mut Vec<oneshot::Sender<T>>,
    ) -> Result<oneshot::Receiver<T>, JournalError> {
        let answer = {
            let mut hot = self.lock();
            if hot.life == Life::Closed {
                return Err(self.closed());
            }
            let (reply, answer) = oneshot::channel();
            queue(&mut hot).push(reply);
            answer
        };
        self.wake.notify_one();
        Ok(answer)
    }

    pub(crate) async fn close(&self) -> Result<(), JournalError> {
        let answer = {
            let mut hot = self.lock();
            if hot.life == Life::Closed {
                return Err(self.closed());
            }
            let (reply, answer) = oneshot::channel();
            if hot.life == Life::Open {
                hot.life = Life::Closing;
                hot.close_reply = Some(reply);
            } else {
                // A second close behind the first: answered like a flush.
                hot.flushes.push(reply);
            }
            answer
        };
        self.wake.notify_one();
        self.clock.notify_one();
        self.room.notify_waiters();
        answer.await.map_err(|_| self.closed())?
    }

    /// The last handle is gone: stop like a close nobody waits for.
    pub(crate) fn handles_gone(&self) {
        let mut hot = self.lock();
        if hot.life == Life::Open {
            hot.life = Life::Closing;
        }
        drop(hot);
        self.wake.notify_one();
        self.clock.notify_one();
    }
}
