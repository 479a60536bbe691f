//! The owner thread and the state it shares with the handles. Appends, reads of records not
//! yet durable and acks happen on the caller's task under one short lock ([`Shared`]): a
//! record goes to the RAM stage (one `write` to tmpfs) and to the in-memory `pending` queue.
//! The owner thread sleeps until the oldest pending record's commit window ends (or the batch
//! is full, a flush or a read of stored records waits, or stored records were acknowledged),
//! then makes the still-unacknowledged records durable in one group commit on the [`Store`],
//! deletes acknowledged ones, and serves reads of stored records. On a healthy link the far
//! side acknowledges records within the window, the owner finds nothing to keep, and the
//! medium sees nothing. Blocking storage work happens only on the owner thread.
//!
//! Files: `open.rs` (validating the config, opening the store and taking back what the RAM
//! stage held, starting the owner thread), `claim.rs` (one live journal per store path in
//! the process), `handle.rs` (what the handles' calls do on the caller's task: append, read of
//! records not yet durable, ack, close), `clock.rs` (the async task that times the commit
//! windows), `thread.rs` (the owner thread's loop: waiting for work, taking it, stopping),
//! `commit.rs` (the owner's group commit: retries, settling `pending`, eviction warnings,
//! publishing the stats), `read.rs` (the owner's reads of stored records). This file holds the
//! state they share.

mod claim;
mod clock;
mod commit;
mod handle;
mod open;
mod read;
mod thread;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::Instant;

use tokio::sync::{oneshot, watch, Notify};

use super::stage::Stage;
use super::{Counters, JournalConfig, JournalError, JournalStats, Record, Seq, Store};

pub(super) use open::start;

/// A record taken, not yet durable and not yet acknowledged.
struct Pending {
    at: Instant,
    record: Record,
}

/// Where the journal is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Life {
    Open,
    /// Close asked (or every handle gone): the owner commits what is pending and stops.
    Closing,
    /// The owner has stopped.
    Closed,
}

/// A read of stored records, served by the owner.
struct ReadRequest {
    after: Seq,
    max: usize,
    reply: oneshot::Sender<Result<Vec<Record>, JournalError>>,
}

/// What handles and the owner share under the lock.
struct Hot {
    life: Life,
    /// In seq order, contiguous: not durable, not acknowledged. Readable at once.
    pending: VecDeque<Pending>,
    /// Highest seq handed out.
    last_seq: Seq,
    /// Highest seq the far side acknowledged (durable or not).
    acked: Seq,
    /// Highest seq of a record in the store (0: none ever); reads beyond it come from `pending`.
    stored_last: Seq,
    /// First stored record not yet acknowledged (so to be deleted once acked).
    stored_first: Option<Seq>,
    stage: Option<Stage>,
    reads: Vec<ReadRequest>,
    flushes: Vec<oneshot::Sender<Result<(), JournalError>>>,
    /// Liveness probes: answered by the owner thread when it next loops, nothing written.
    pings: Vec<oneshot::Sender<()>>,
    close_reply: Option<oneshot::Sender<Result<(), JournalError>>>,
    /// The owner waits with no deadline: an append must wake it (when no clock task runs).
    owner_idle: bool,
    /// The clock task found a commit window ended: the owner commits.
    commit_due: bool,
    /// A far side is connected (the short commit window applies).
    far_side: bool,
    /// Stored records were acknowledged at this time; deleted within a commit window.
    ack_noticed: Option<Instant>,
}

/// The journal state every handle and the owner share.
pub(super) struct Shared {
    name: String,
    config: JournalConfig,
    hot: Mutex<Hot>,
    wake: Condvar,
    room: Notify,
    appended: watch::Sender<Seq>,
    stats: watch::Sender<JournalStats>,
    /// Appends wait while this many records are pending.
    limit: usize,
    /// Wakes the clock task (a window opened, closed, or changed).
    clock: Notify,
    /// The clock task runs: the owner thread keeps no timers of its own.
    clock_running: AtomicBool,
    /// To hand the clock task its own reference.
    this: Weak<Shared>,
}

/// What `start` hands to the first handle: the shared state and its two watches.
pub(super) type Started = (Arc<Shared>, watch::Receiver<JournalStats>, watch::Receiver<Seq>);

/// State of the owner thread; lives and dies on that thread.
struct Owner {
    shared: Arc<Shared>,
    store: Box<dyn Store>,
    quarantined: Option<(PathBuf, String)>,
    commits: u64,
    /// The last durable write failed; try again at this time.
    retry_at: Option<Instant>,
    failures: u32,
    evicted_unlogged: u64,
    last_eviction_log: Option<Instant>,
}

impl Shared {
    pub(super) fn name(&self) -> &str {
        &self.name
    }

    fn lock(&self) -> MutexGuard<'_, Hot> {
        // Every update under the lock leaves `Hot` consistent, so a panicked holder's
        // poisoning is ignored.
        self.hot.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn closed(&self) -> JournalError {
        JournalError::Closed { name: self.name.clone() }
    }
}

/// Pending records after `after`, up to `max`.
fn pending_after(pending: &VecDeque<Pending>, after: Seq, max: usize) -> Vec<Record> {
    let start = pending.partition_point(|p| p.record.seq <= after);
    pending.range(start..).take(max).map(|p| p.record.clone()).collect()
}
fn stats_from(counters: &Counters, commits: u64, quarantined: &Option<(PathBuf, String)>) -> JournalStats {
    JournalStats {
        records: counters.records,
        bytes: counters.bytes,
        oldest_received_at_ms: counters.oldest_received_at_ms,
        last_seq: counters.last_seq,
        acked: counters.acked,
        evicted_total: counters.evicted_total,
        commits,
        quarantined: quarantined.clone(),
    }
}
