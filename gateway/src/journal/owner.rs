//! The owner thread: one OS thread per journal owns its [`Store`], takes requests from the
//! handles' bounded channel and turns appends and acks into group commits (one durable write
//! per `commit_interval` or `commit_max_records`). Reads and flushes are served in channel
//! order, so a flush covers every append sent before it. Blocking storage work happens only
//! here, never on the async workers.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use super::{
    sled, sqlite, AckSlot, Backend, Command, Commit, Counters, Journal, JournalConfig, JournalError,
    JournalStats, NewRecord, Record, Seq, Store, MAX_READ_RECORDS,
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

/// Open the store, then hand it to a new owner thread and return the first handle.
pub(super) fn start(name: &str, config: JournalConfig) -> Result<Journal, JournalError> {
    validate(&config)?;
    let absolute = std::path::absolute(&config.path).map_err(|source| JournalError::Io {
        path: config.path.clone(),
        action: "resolving the store path",
        source,
    })?;
    let claim = PathClaim::acquire(absolute, CLAIM_WAIT)?;
    let (store, quarantined): (Box<dyn Store>, _) = match config.backend {
        Backend::Sqlite => {
            let (store, quarantined) = sqlite::SqliteStore::open(&config.path)?;
            (Box::new(store), quarantined)
        }
        Backend::Sled => {
            let (store, quarantined) = sled::SledStore::open(&config.path)?;
            (Box::new(store), quarantined)
        }
    };
    let counters = store.counters();
    let (stats_tx, stats_rx) = watch::channel(stats_from(&counters, 0, &quarantined));
    let (appended_tx, appended_rx) = watch::channel(counters.last_seq);
    let (commands_tx, commands_rx) = mpsc::channel(config.commit_max_records.clamp(64, 8192));
    let acks =
        Arc::new(AckSlot { up_to: AtomicU64::new(counters.acked.0), wake_sent: AtomicBool::new(false) });
    tracing::info!(
        journal = name,
        backend = %config.backend,
        path = %config.path.display(),
        records = counters.records,
        bytes = counters.bytes,
        last_seq = %counters.last_seq,
        acked = %counters.acked,
        "journal opened"
    );
    let owner = Owner {
        name: name.to_string(),
        store,
        commands: commands_rx,
        acks: Arc::clone(&acks),
        stats: stats_tx,
        appended: appended_tx,
        config: config.clone(),
        quarantined,
        commits: 0,
        pending: Vec::new(),
        flush_waiters: Vec::new(),
        deadline: None,
        retrying: false,
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
    Ok(Journal { name: Arc::from(name), commands: commands_tx, acks, stats: stats_rx, appended: appended_rx })
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

/// State of the owner thread; lives and dies on that thread.
struct Owner {
    name: String,
    store: Box<dyn Store>,
    commands: mpsc::Receiver<Command>,
    acks: Arc<AckSlot>,
    stats: watch::Sender<JournalStats>,
    /// Highest seq handed out, pending included.
    appended: watch::Sender<Seq>,
    config: JournalConfig,
    quarantined: Option<(PathBuf, String)>,
    commits: u64,
    /// Appended, not yet durable; at most `commit_max_records`. They hold seqs
    /// `last_seq + 1 ..` of the store, in order, and are readable already.
    pending: Vec<NewRecord>,
    flush_waiters: Vec<oneshot::Sender<Result<(), JournalError>>>,
    /// When the next durable write must happen (set by the first pending append or ack).
    deadline: Option<Instant>,
    /// The last durable write failed; wait for `deadline` before trying again.
    retrying: bool,
    failures: u32,
    evicted_unlogged: u64,
    last_eviction_log: Option<Instant>,
}

impl Owner {
    fn run(mut self, claim: PathClaim) {
        let name = self.name.clone();
        let outcome = catch_unwind(AssertUnwindSafe(move || {
            // Only for the commit timer: a current-thread runtime with no I/O driver.
            let close_reply = match tokio::runtime::Builder::new_current_thread().enable_time().build() {
                Ok(runtime) => self.serve(&runtime),
                Err(error) => {
                    tracing::error!(journal = %self.name, %error, "journal thread could not start its timer; closing the journal");
                    None
                }
            };
            let result = self.finish();
            // Release the store before answering, so a reopen right after `close` succeeds.
            drop(self);
            (close_reply, result)
        }));
        drop(claim);
        match outcome {
            Ok((Some(reply), result)) => {
                let _ = reply.send(result);
            }
            Ok((None, _)) => {}
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

    /// Serve requests until every handle is gone or one asks to close; returns that close's reply.
    fn serve(
        &mut self,
        runtime: &tokio::runtime::Runtime,
    ) -> Option<oneshot::Sender<Result<(), JournalError>>> {
        loop {
            self.notice_acks();
            if self.failures >= MAX_COMMIT_FAILURES {
                tracing::error!(
                    journal = %self.name,
                    failures = self.failures,
                    "journal store fails every commit; closing the journal (restart berrygw to check the store)"
                );
                return None;
            }
            if self.commit_due() {
                // A failure is logged and retried by `commit` itself, up to MAX_COMMIT_FAILURES.
                let _ = self.commit(&[]);
                continue;
            }
            let message = match self.deadline {
                // A failing store with a full batch: stop taking requests until the retry.
                Some(deadline) if self.retrying && self.batch_full() => {
                    std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
                    continue;
                }
                Some(deadline) => {
                    // The timer must be created inside the runtime it belongs to.
                    let commands = &mut self.commands;
                    let receive = async { tokio::time::timeout_at(deadline.into(), commands.recv()).await };
                    match runtime.block_on(receive) {
                        Ok(message) => message,
                        Err(_elapsed) => continue,
                    }
                }
                None => runtime.block_on(self.commands.recv()),
            };
            match message {
                None => return None,
                Some(Command::Close(reply)) => return Some(reply),
                Some(command) => self.handle(command),
            }
        }
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Append(record) => {
                self.deadline.get_or_insert_with(|| Instant::now() + self.config.commit_interval);
                self.pending.push(record);
                self.appended.send_replace(self.pending_seq(self.pending.len() - 1));
            }
            Command::Read { after, max, reply } => {
                let _ = reply.send(self.read(after, max));
            }
            Command::Flush(reply) => self.flush_waiters.push(reply),
            Command::Wake => {}
            // Only reachable while draining behind a first close: answer it like a flush.
            Command::Close(reply) => self.flush_waiters.push(reply),
        }
    }

    /// Take in requests already queued behind a close, then make everything durable.
    fn finish(&mut self) -> Result<(), JournalError> {
        self.commands.close();
        while let Ok(command) = self.commands.try_recv() {
            self.handle(command);
        }
        self.notice_acks();
        let mut result = Ok(());
        for attempt in 1..=FINAL_COMMIT_ATTEMPTS {
            result = self.commit(&[]);
            if result.is_ok() {
                break;
            }
            if attempt < FINAL_COMMIT_ATTEMPTS {
                std::thread::sleep(self.config.commit_interval.max(Duration::from_millis(100)));
            }
        }
        if result.is_err() {
            tracing::error!(
                journal = %self.name,
                lost = self.pending.len(),
                "journal closed with records that never became durable; they are lost"
            );
        }
        self.publish();
        result
    }

    /// If a handle acked past the durable ack, make sure a commit is scheduled.
    fn notice_acks(&mut self) {
        self.acks.wake_sent.store(false, Ordering::SeqCst);
        if self.requested_ack() > self.store.counters().acked {
            self.deadline.get_or_insert_with(|| Instant::now() + self.config.commit_interval);
        }
    }

    fn requested_ack(&self) -> Seq {
        Seq(self.acks.up_to.load(Ordering::SeqCst))
    }

    fn batch_full(&self) -> bool {
        self.pending.len() >= self.config.commit_max_records
    }

    fn commit_due(&self) -> bool {
        let deadline_passed = self.deadline.is_some_and(|d| Instant::now() >= d);
        if self.retrying {
            return deadline_passed;
        }
        deadline_passed || self.batch_full() || !self.flush_waiters.is_empty() || self.purge_left()
    }

    /// Acked records still stored (a backend may delete a large ack over several writes).
    fn purge_left(&self) -> bool {
        let counters = self.store.counters();
        counters.first_seq.is_some_and(|first| first <= counters.acked)
    }

    /// Whether a commit now would change anything on disk.
    fn has_writes(&self) -> bool {
        !self.pending.is_empty() || self.requested_ack() > self.store.counters().acked || self.purge_left()
    }

    /// One durable write of everything pending; answers flush waiters either way.
    fn commit(&mut self, unreadable: &[Seq]) -> Result<(), JournalError> {
        if unreadable.is_empty() && !self.has_writes() {
            // A flush with nothing pending: already durable, spare the medium a write.
            self.deadline = None;
            for waiter in self.flush_waiters.drain(..) {
                let _ = waiter.send(Ok(()));
            }
            return Ok(());
        }
        let evicted_before = self.store.counters().evicted_total;
        let commit = Commit {
            records: &self.pending,
            ack_up_to: self.requested_ack(),
            max_bytes: self.config.max_bytes,
            unreadable,
        };
        match self.store.commit(&commit) {
            Ok(()) => {
                self.commits += 1;
                self.pending.clear();
                self.deadline = None;
                self.retrying = false;
                self.failures = 0;
                let evicted = self.store.counters().evicted_total.saturating_sub(evicted_before);
                self.note_evictions(evicted.saturating_sub(unreadable.len() as u64));
                self.publish();
                for waiter in self.flush_waiters.drain(..) {
                    let _ = waiter.send(Ok(()));
                }
                Ok(())
            }
            Err(error) => {
                self.failures = self.failures.saturating_add(1);
                let delay = self
                    .config
                    .commit_interval
                    .max(Duration::from_millis(100))
                    .saturating_mul(1 << self.failures.min(6))
                    .min(MAX_RETRY_DELAY);
                tracing::error!(
                    journal = %self.name,
                    %error,
                    pending = self.pending.len(),
                    retry_in = ?delay,
                    "journal commit failed; records stay pending"
                );
                self.deadline = Some(Instant::now() + delay);
                self.retrying = true;
                let reason = error.to_string();
                for waiter in self.flush_waiters.drain(..) {
                    let _ = waiter.send(Err(JournalError::CommitFailed {
                        path: self.config.path.clone(),
                        reason: reason.clone(),
                    }));
                }
                Err(error)
            }
        }
    }

    /// The seq the pending record at `index` will be stored under.
    fn pending_seq(&self, index: usize) -> Seq {
        Seq(self.store.counters().last_seq.0 + 1 + index as u64)
    }

    /// Stored records after `after`, then pending ones, up to `max`.
    fn read(&mut self, after: Seq, max: usize) -> Result<Vec<Record>, JournalError> {
        let after = after.max(self.requested_ack());
        let max = max.min(MAX_READ_RECORDS);
        if max == 0 {
            return Ok(Vec::new());
        }
        let mut records = self.read_stored(after, max)?;
        // Fewer than asked means every stored record after `after` is in hand.
        for (index, record) in self.pending.iter().enumerate() {
            if records.len() >= max {
                break;
            }
            let seq = self.pending_seq(index);
            if seq > after {
                records.push(Record {
                    seq,
                    kind: record.kind,
                    received_at_ms: record.received_at_ms,
                    payload: record.payload.clone(),
                });
            }
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
                        journal = %self.name,
                        path = %path.display(),
                        %seq,
                        %reason,
                        "journal record is unreadable; dropping it (counted in evicted_total)"
                    );
                    self.commit(&[seq])?;
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
            journal = %self.name,
            evicted = self.evicted_unlogged,
            evicted_total = self.store.counters().evicted_total,
            max_bytes = self.config.max_bytes,
            "journal is over max_bytes: evicted the oldest unacknowledged records"
        );
        self.evicted_unlogged = 0;
        self.last_eviction_log = Some(now);
    }

    fn publish(&self) {
        self.stats.send_replace(stats_from(&self.store.counters(), self.commits, &self.quarantined));
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
