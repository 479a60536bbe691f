//! The journal: one durable FIFO per sink that holds every outbound record from "accepted"
//! until the far side acknowledges it, so nothing is lost while the backhaul is down.
//! It is the only owner of unacked records. It is not a queue between tasks (use a channel)
//! and not a general key-value store: records go in at the tail and leave at the head.
//!
//! Shape: a cheap, cloneable [`Journal`] handle talks over a bounded channel to one owner
//! thread per journal (`owner.rs`), which batches appends and acks into group commits on a
//! [`Store`] backend — SQLite (`sqlite.rs`) or sled (`sled.rs`). A store that is corrupt on
//! open is moved aside and replaced by a fresh one (`quarantine.rs`).

#[cfg(test)]
mod bench;
mod owner;
pub(crate) mod quarantine;
mod sled;
mod sqlite;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::{mpsc, oneshot, watch};

/// Default upper bound on how long an appended record waits before its durable write.
pub const DEFAULT_COMMIT_INTERVAL: Duration = Duration::from_millis(100);
/// Default number of pending records that triggers a durable write before the interval ends.
pub const DEFAULT_COMMIT_MAX_RECORDS: usize = 1000;
/// Bytes counted against `max_bytes` for each record on top of its payload (seq, kind, time, slack).
pub const RECORD_OVERHEAD_BYTES: u64 = 32;
/// Largest number of records one `read_after` returns, whatever `max` asks for.
pub const MAX_READ_RECORDS: usize = 10_000;

/// Per-journal sequence number; the first record is `Seq(1)`, `Seq(0)` means "nothing".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Seq(pub u64);

impl Seq {
    /// "No record": below every real sequence number.
    pub const NONE: Seq = Seq(0);
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A record offered to the journal; it gets its [`Seq`] when committed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewRecord {
    /// What the payload is, defined by the sink that reads it back.
    pub kind: u8,
    /// Original receive time, unix milliseconds.
    pub received_at_ms: i64,
    /// Encoded message, opaque to the journal.
    pub payload: Vec<u8>,
}

/// A committed record as read back from the journal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Position in the journal; strictly increasing, a stored record's never reused (seqs of
    /// records acknowledged before they were stored may be given out again after a crash).
    pub seq: Seq,
    /// What the payload is, defined by the sink that reads it back.
    pub kind: u8,
    /// Original receive time, unix milliseconds.
    pub received_at_ms: i64,
    /// Encoded message, opaque to the journal.
    pub payload: Vec<u8>,
}

/// Which storage engine backs a journal (config value `sqlite` or `sled`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// SQLite in WAL mode with `synchronous=FULL`; `path` is the database file.
    Sqlite,
    /// sled 0.34 with a small page cache; `path` is a directory.
    Sled,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Sqlite => "sqlite",
            Backend::Sled => "sled",
        })
    }
}

/// How one journal is stored and when it commits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalConfig {
    /// Storage engine.
    pub backend: Backend,
    /// SQLite: the database file. sled: a directory.
    pub path: PathBuf,
    /// Budget for stored records (payload + [`RECORD_OVERHEAD_BYTES`] each); oldest are evicted beyond it.
    pub max_bytes: u64,
    /// Longest time an appended record or an ack waits for its durable write.
    pub commit_interval: Duration,
    /// Pending records that trigger a durable write before `commit_interval` ends.
    pub commit_max_records: usize,
}

impl JournalConfig {
    /// A config with the default commit interval and batch size.
    pub fn new(backend: Backend, path: impl Into<PathBuf>, max_bytes: u64) -> JournalConfig {
        JournalConfig {
            backend,
            path: path.into(),
            max_bytes,
            commit_interval: DEFAULT_COMMIT_INTERVAL,
            commit_max_records: DEFAULT_COMMIT_MAX_RECORDS,
        }
    }
}

/// What a journal holds and has done; published after every commit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JournalStats {
    /// Records stored (committed, not yet deleted).
    pub records: u64,
    /// Bytes counted against `max_bytes` for those records.
    pub bytes: u64,
    /// Receive time of the oldest stored record.
    pub oldest_received_at_ms: Option<i64>,
    /// Highest committed sequence number (kept after its record is deleted).
    pub last_seq: Seq,
    /// Highest sequence number the far side acknowledged, durably.
    pub acked: Seq,
    /// Records removed without acknowledgement (over `max_bytes`, or unreadable), ever.
    pub evicted_total: u64,
    /// Durable writes since this journal was opened.
    pub commits: u64,
    /// Where a corrupt store was moved on open, and why; the journal started empty.
    pub quarantined: Option<(PathBuf, String)>,
}

/// Everything that can go wrong with a journal; each message names the store's path.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The config cannot work; fix the named field.
    #[error("journal {path}: invalid config: {reason}")]
    Config {
        /// Store path from the config.
        path: PathBuf,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// A file-system operation on the store failed.
    #[error("journal {path}: {action} failed: {source}")]
    Io {
        /// File or directory involved.
        path: PathBuf,
        /// What the journal was doing.
        action: &'static str,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// SQLite reported an error.
    #[error("sqlite journal {path}: {action} failed: {source}")]
    Sqlite {
        /// Database file.
        path: PathBuf,
        /// What the journal was doing.
        action: &'static str,
        /// Underlying error.
        #[source]
        source: rusqlite::Error,
    },
    /// sled reported an error.
    #[error("sled journal {path}: {action} failed: {source}")]
    Sled {
        /// Database directory.
        path: PathBuf,
        /// What the journal was doing.
        action: &'static str,
        /// Underlying error.
        #[source]
        source: ::sled::Error,
    },
    /// The store is unusable even after moving the corrupt one aside.
    #[error("journal {path}: store is corrupt: {reason}")]
    Corrupt {
        /// Store path.
        path: PathBuf,
        /// What was found.
        reason: String,
    },
    /// One stored record cannot be decoded; it is dropped and counted as evicted.
    #[error("journal {path}: record {seq} is unreadable: {reason}")]
    CorruptRecord {
        /// Store path.
        path: PathBuf,
        /// The record's sequence number.
        seq: Seq,
        /// What is wrong with it.
        reason: String,
    },
    /// Another journal in this process still owns the path.
    #[error(
        "journal {path}: still open by another journal in this process (waited {waited:?}); close it first"
    )]
    InUse {
        /// Store path.
        path: PathBuf,
        /// How long `open` waited for it to be released.
        waited: Duration,
    },
    /// A durable write failed; the records stay pending and the write is retried.
    #[error("journal {path}: commit failed, will retry: {reason}")]
    CommitFailed {
        /// Store path.
        path: PathBuf,
        /// The underlying error, as text.
        reason: String,
    },
    /// The journal's owner thread has stopped (closed, or failed: see the error log).
    #[error("journal {name}: closed; its owner thread has stopped (see earlier log lines if unexpected)")]
    Closed {
        /// Journal name given to `open`.
        name: String,
    },
}

/// Handle to one journal; cheap to clone; all methods usable from async code (they never block the async worker).
#[derive(Clone)]
pub struct Journal {
    name: Arc<str>,
    commands: mpsc::Sender<Command>,
    acks: Arc<AckSlot>,
    stats: watch::Receiver<JournalStats>,
    appended: watch::Receiver<Seq>,
}

impl fmt::Debug for Journal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Journal").field("name", &self.name).finish_non_exhaustive()
    }
}

impl Journal {
    /// Open (quarantining a corrupt store) and start the owner thread `journal-<name>`; blocks, so async callers use `spawn_blocking`.
    pub fn open(name: &str, config: JournalConfig) -> Result<Journal, JournalError> {
        owner::start(name, config)
    }

    /// Enqueue one record; durable within `commit_interval`. Waits only if the bounded queue is full (backpressure).
    pub async fn append(&self, record: NewRecord) -> Result<(), JournalError> {
        self.commands.send(Command::Append(record)).await.map_err(|_| self.closed())
    }

    /// Up to `max` (at most [`MAX_READ_RECORDS`]) unacknowledged records with seq > `after`, oldest
    /// first: committed ones, then those still waiting for their durable write (publishing does not
    /// wait for the fsync; deleting waits for the far side's acknowledgement).
    pub async fn read_after(&self, after: Seq, max: usize) -> Result<Vec<Record>, JournalError> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::Read { after, max, reply }).await.map_err(|_| self.closed())?;
        answer.await.map_err(|_| self.closed())?
    }

    /// The far side acknowledged everything up to `up_to`: those records may be deleted. Non-blocking, coalesced.
    pub fn ack(&self, up_to: Seq) {
        // Only appended records can have been read, so anything beyond the last append is a
        // caller bug; clamping keeps it from deleting records appended later.
        let last_seq = *self.appended.borrow();
        let up_to = if up_to > last_seq {
            tracing::warn!(journal = %self.name, %up_to, %last_seq, "ack beyond the last appended record; clamped");
            last_seq
        } else {
            up_to
        };
        if self.acks.up_to.fetch_max(up_to.0, Ordering::SeqCst) >= up_to.0 {
            return;
        }
        // One wake-up in flight is enough: the owner reads `up_to` after clearing the flag.
        // A full queue means the owner is busy and will look at `up_to` anyway.
        if !self.acks.wake_sent.swap(true, Ordering::SeqCst) {
            let _ = self.commands.try_send(Command::Wake);
        }
    }

    /// Watch stats; updated after every commit.
    pub fn watch(&self) -> watch::Receiver<JournalStats> {
        self.stats.clone()
    }

    /// Watch the highest appended seq (durable or not); changes as soon as a record is readable.
    pub fn watch_appended(&self) -> watch::Receiver<Seq> {
        self.appended.clone()
    }

    /// Wait until everything appended (and acked) before this call is durable (used on SIGTERM).
    pub async fn flush(&self) -> Result<(), JournalError> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::Flush(reply)).await.map_err(|_| self.closed())?;
        answer.await.map_err(|_| self.closed())?
    }

    /// Commit what is pending, stop the owner thread and release the store; other clones then get `Closed`.
    pub async fn close(self) -> Result<(), JournalError> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::Close(reply)).await.map_err(|_| self.closed())?;
        answer.await.map_err(|_| self.closed())?
    }

    fn closed(&self) -> JournalError {
        JournalError::Closed { name: self.name.to_string() }
    }
}

/// Requests from handles to the owner thread.
enum Command {
    Append(NewRecord),
    Read {
        after: Seq,
        max: usize,
        reply: oneshot::Sender<Result<Vec<Record>, JournalError>>,
    },
    Flush(oneshot::Sender<Result<(), JournalError>>),
    Close(oneshot::Sender<Result<(), JournalError>>),
    /// Look at `AckSlot::up_to`.
    Wake,
}

/// Acks travel outside the bounded queue so that `ack` never waits: handles raise the
/// requested seq, the owner picks up the highest one at its next commit.
#[derive(Debug, Default)]
struct AckSlot {
    up_to: AtomicU64,
    wake_sent: AtomicBool,
}

/// Counters a store keeps in memory (never the records themselves).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counters {
    records: u64,
    bytes: u64,
    first_seq: Option<Seq>,
    oldest_received_at_ms: Option<i64>,
    last_seq: Seq,
    acked: Seq,
    evicted_total: u64,
}

/// The work of one durable write.
struct Commit<'a> {
    /// Appended in order; they get seqs `last_seq + 1 ..`.
    records: &'a [NewRecord],
    /// Delete records up to here (never lowers the stored ack).
    ack_up_to: Seq,
    /// After appending, evict the oldest records until `bytes <= max_bytes`.
    max_bytes: u64,
    /// Records found undecodable by a read: delete them and count them as evicted.
    unreadable: &'a [Seq],
}

/// A storage engine for one journal: everything a backend must do, each call blocking.
trait Store: Send {
    /// Apply `commit` as one durable write; on error nothing of it counts as done.
    fn commit(&mut self, commit: &Commit<'_>) -> Result<(), JournalError>;
    /// Up to `max` stored records with seq > `after`, oldest first; `CorruptRecord` names the first bad one.
    fn read_after(&mut self, after: Seq, max: usize) -> Result<Vec<Record>, JournalError>;
    /// Current counters, as of the last successful commit.
    fn counters(&self) -> Counters;
}

/// Bytes a record counts against `max_bytes`.
fn record_bytes(payload_len: usize) -> u64 {
    // usize always fits in u64 on the targets we build for (≤ 64-bit).
    (payload_len as u64).saturating_add(RECORD_OVERHEAD_BYTES)
}
