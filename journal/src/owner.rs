//! The owner thread and the state it shares with the handles. Appends, reads of records not
//! yet durable and acks happen on the caller's task under one short lock ([`Shared`]): a
//! record goes to the RAM stage (one `write` to tmpfs) and to the in-memory `pending` queue.
//! The owner thread sleeps until the oldest pending record's commit window ends (or the batch
//! is full, a flush or a read of stored records waits, or stored records were acknowledged),
//! then makes the still-unacknowledged records durable in one group commit on the [`Store`],
//! deletes acknowledged ones, and serves reads of stored records. On a healthy link the far
//! side acknowledges records within the window, the owner finds nothing to keep, and the
//! medium sees nothing. Blocking storage work happens only on the owner thread.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch, Notify};

use super::stage::{stage_path, Stage};
use super::{
    segments, sqlite, Backend, Commit, Counters, JournalConfig, JournalError, JournalStats, NewRecord,
    Record, Seq, Store, MAX_READ_RECORDS,
};

/// How long `open` waits for a previous journal on the same path (in this process) to finish.
const CLAIM_WAIT: Duration = Duration::from_secs(10);
/// Longest pause between retries of a failing durable write.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);
/// Consecutive failed commits (about 10 s of retries) after which the owner stops
/// retrying and closes the journal: a store that fails every write must not hold
/// appends, flushes and closes forever. The next start checks the store on open
/// (and moves it aside if it is damaged).
const MAX_COMMIT_FAILURES: u32 = 6;
/// Attempts at the last commit when the journal closes.
const FINAL_COMMIT_ATTEMPTS: u32 = 3;
/// Unreadable records one read may drop before it gives up and reports the error.
const MAX_UNREADABLE_PER_READ: usize = 16;
/// Eviction warnings are summarised at most this often.
const EVICTION_LOG_INTERVAL: Duration = Duration::from_secs(60);

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

/// Open the store and the stage, take back what the stage holds, then start the owner.
pub(super) fn start(name: &str, config: JournalConfig) -> Result<Started, JournalError> {
    validate(&config)?;
    let absolute = std::path::absolute(&config.path).map_err(|source| JournalError::Io {
        path: config.path.clone(),
        action: "resolving the store path",
        source,
    })?;
    let claim = PathClaim::acquire(absolute, CLAIM_WAIT)?;
    let (mut store, quarantined): (Box<dyn Store>, _) = match config.backend {
        Backend::Log => {
            let (store, quarantined) = segments::SegmentStore::open(&config.path)?;
            (Box::new(store), quarantined)
        }
        Backend::Sqlite => {
            let (store, quarantined) = sqlite::SqliteStore::open(&config.path)?;
            (Box::new(store), quarantined)
        }
    };

    let mut stage = None;
    if let Some(dir) = &config.stage_dir {
        let path = stage_path(dir, name, &config.path);
        match Stage::open(&path) {
            Ok((mut opened, recovered)) => {
                if let Some(damage) = &recovered.damage {
                    tracing::warn!(journal = name, path = %path.display(), %damage, "journal stage is damaged; taking back what precedes the damage");
                }
                let counters = store.counters();
                let records: Vec<Record> =
                    recovered.records.into_iter().filter(|r| r.seq > counters.last_seq).collect();
                let acked = recovered.acked.max(counters.acked);
                let last_seq =
                    records.last().map_or(counters.last_seq, |r| r.seq).max(acked).max(counters.last_seq);
                if !records.is_empty() || last_seq > counters.last_seq {
                    tracing::info!(journal = name, records = records.len(), %acked, "journal takes back records its RAM stage held (berrygw stopped without a clean shutdown)");
                    let commit = Commit {
                        records: &records,
                        last_seq,
                        persist_counters: true,
                        ack_up_to: acked,
                        max_bytes: config.max_bytes,
                        unreadable: &[],
                    };
                    store.commit(&commit)?;
                }
                if let Err(error) = opened.clear(acked) {
                    tracing::warn!(journal = name, path = %path.display(), %error, "journal stage cannot be emptied; running without it");
                } else {
                    stage = Some(opened);
                }
            }
            Err(error) => {
                tracing::warn!(
                    journal = name,
                    path = %path.display(),
                    %error,
                    "journal RAM stage cannot be opened; running without it: a crash of berrygw can lose the records of one commit window"
                );
            }
        }
    }

    let counters = store.counters();
    let (stats_tx, stats_rx) = watch::channel(stats_from(&counters, 0, &quarantined));
    let (appended_tx, appended_rx) = watch::channel(counters.last_seq);
    tracing::info!(
        journal = name,
        backend = %config.backend,
        path = %config.path.display(),
        stage = %stage.as_ref().map(|s: &Stage| s.path().display().to_string()).unwrap_or_else(|| "none".into()),
        records = counters.records,
        bytes = counters.bytes,
        last_seq = %counters.last_seq,
        acked = %counters.acked,
        "journal opened"
    );
    let shared = Arc::new_cyclic(|this| Shared {
        this: this.clone(),
        clock: Notify::new(),
        clock_running: AtomicBool::new(false),
        name: name.to_string(),
        limit: config.commit_max_records.saturating_mul(4).clamp(64, 65_536),
        config: config.clone(),
        hot: Mutex::new(Hot {
            life: Life::Open,
            pending: VecDeque::new(),
            last_seq: counters.last_seq,
            acked: counters.acked,
            stored_last: if counters.records > 0 { counters.last_seq } else { Seq::NONE },
            stored_first: counters.first_seq,
            stage,
            reads: Vec::new(),
            flushes: Vec::new(),
            pings: Vec::new(),
            close_reply: None,
            owner_idle: false,
            commit_due: false,
            far_side: true,
            ack_noticed: None,
        }),
        wake: Condvar::new(),
        room: Notify::new(),
        appended: appended_tx,
        stats: stats_tx,
    });
    let owner = Owner {
        shared: Arc::clone(&shared),
        store,
        quarantined,
        commits: 0,
        retry_at: None,
        failures: 0,
        evicted_unlogged: 0,
        last_eviction_log: None,
    };
    std::thread::Builder::new().name(format!("journal-{name}")).spawn(move || owner.run(claim)).map_err(
        |source| JournalError::Io {
            path: config.path.clone(),
            action: "starting the journal thread",
            source,
        },
    )?;
    Ok((shared, stats_rx, appended_rx))
}

fn validate(config: &JournalConfig) -> Result<(), JournalError> {
    let reason = if config.path.as_os_str().is_empty() {
        "path is empty"
    } else if config.max_bytes == 0 {
        "max_bytes must be greater than 0"
    } else if config.commit_max_records == 0 {
        "commit_max_records must be at least 1"
    } else {
        return Ok(());
    };
    Err(JournalError::Config { path: config.path.clone(), reason: reason.to_string() })
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

    pub(super) async fn append(&self, record: NewRecord) -> Result<(), JournalError> {
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

    pub(super) async fn read_after(&self, after: Seq, max: usize) -> Result<Vec<Record>, JournalError> {
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

    pub(super) fn ack(&self, up_to: Seq) {
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
                stage.clear(up_to)
            } else if stage.wants_rewrite() {
                stage.rewrite(pending.iter().map(|p| &p.record), up_to)
            } else {
                stage.ack(up_to)
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
        let mut tell_clock = freed > 0 && hot.pending.is_empty();
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

    /// Start the clock task on the current tokio runtime if it is not running; whether it runs.
    fn ensure_clock(&self) -> bool {
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

    /// When the open commit window (or the deletion of acknowledged stored records) is due.
    fn next_deadline(&self, hot: &Hot) -> Option<Instant> {
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

    pub(super) fn far_side(&self, connected: bool) {
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
    pub(super) async fn ping(&self) -> Result<(), JournalError> {
        let answer = self.ask(|hot| &mut hot.pings)?;
        answer.await.map_err(|_| self.closed())
    }

    pub(super) async fn flush(&self) -> Result<(), JournalError> {
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

    pub(super) async fn close(&self) -> Result<(), JournalError> {
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
    pub(super) fn handles_gone(&self) {
        let mut hot = self.lock();
        if hot.life == Life::Open {
            hot.life = Life::Closing;
        }
        drop(hot);
        self.wake.notify_one();
        self.clock.notify_one();
    }
}

/// Pending records after `after`, up to `max`.
fn pending_after(pending: &VecDeque<Pending>, after: Seq, max: usize) -> Vec<Record> {
    let start = pending.partition_point(|p| p.record.seq <= after);
    pending.range(start..).take(max).map(|p| p.record.clone()).collect()
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

impl Owner {
    fn run(mut self, claim: PathClaim) {
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

    /// One durable write: `spill` (if not acknowledged meanwhile), the ack, evictions.
    fn commit(
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

    /// Stored records after `after`, then pending ones, up to `max`.
    fn read(&mut self, after: Seq, max: usize) -> Result<Vec<Record>, JournalError> {
        let mut records = self.read_stored(after, max)?;
        let from = records.last().map_or(after, |r| r.seq);
        if records.len() < max {
            let hot = self.shared.lock();
            records.extend(pending_after(&hot.pending, from.max(hot.acked), max - records.len()));
        }
        Ok(records)
    }

    fn read_stored(&mut self, after: Seq, max: usize) -> Result<Vec<Record>, JournalError> {
        let mut dropped = 0;
        loop {
            match self.store.read_after(after, max) {
                Err(JournalError::CorruptRecord { path, seq, reason })
                    if dropped < MAX_UNREADABLE_PER_READ =>
                {
                    tracing::error!(
                        journal = %self.shared.name,
                        path = %path.display(),
                        %seq,
                        %reason,
                        "journal record is unreadable; dropping it (counted in evicted_total)"
                    );
                    let counters = self.store.counters();
                    self.commit(&[], counters.last_seq, counters.acked, false, &[seq])?;
                    dropped += 1;
                }
                other => return other,
            }
        }
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

/// Paths owned by a live journal in this process. A path may have one owner at a time: a
/// second store on the same files would break FIFO order (sqlite) or fail to lock (sled).
/// Process-wide by nature, so a static; nothing else is shared between journals.
static CLAIMED_PATHS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static PATH_RELEASED: Condvar = Condvar::new();

/// Ownership of one store path; released when the owner thread is done with the store.
struct PathClaim(PathBuf);

impl PathClaim {
    /// Claim `path`, waiting up to `wait` for a journal that is still closing to let go of it.
    fn acquire(path: PathBuf, wait: Duration) -> Result<PathClaim, JournalError> {
        let started = Instant::now();
        // The list stays consistent even if a holder panicked, so poisoning is ignored.
        let mut claimed = CLAIMED_PATHS.lock().unwrap_or_else(|p| p.into_inner());
        while claimed.contains(&path) {
            let left = wait.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Err(JournalError::InUse { path, waited: wait });
            }
            claimed = match PATH_RELEASED.wait_timeout(claimed, left) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        claimed.push(path.clone());
        Ok(PathClaim(path))
    }
}

impl Drop for PathClaim {
    fn drop(&mut self) {
        let mut claimed = CLAIMED_PATHS.lock().unwrap_or_else(|p| p.into_inner());
        claimed.retain(|p| p != &self.0);
        PATH_RELEASED.notify_all();
    }
}
