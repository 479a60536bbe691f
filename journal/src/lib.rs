//! The journal: one durable FIFO per sink that holds every outbound record from "accepted"
//! until the far side acknowledges it, so nothing is lost while the backhaul is down.
//! It is the only owner of unacked records. It is not a queue between tasks (use a channel)
//! and not a general key-value store: records go in at the tail and leave at the head.
//!
//! Shape: a cheap, cloneable [`Journal`] handle shares with one owner thread per journal
//! (`owner/`) the records not yet durable, in memory and in the RAM stage (`stage.rs`):
//! appends, reads of those records and acks never leave the caller's task. The owner makes
//! records durable on a [`Store`] backend — the segment log (`segments/`, the default) or
//! SQLite (`sqlite.rs`) — only when they are still unacknowledged at the end of the commit
//! window, deletes acknowledged ones, and serves reads of stored records. A store that is
//! corrupt on open is moved aside and replaced by a fresh one (`quarantine.rs`).
//!
//! Beside the journal, the crate holds the gateway's other durable stores: `seq` (uplink
//! sequence numbers, reserved by blocks) and `state_db` (the small SQLite stores of the state
//! directory: decoder sessions, command replay window, audit log).

#[cfg(test)]
mod bench;
mod frame;
mod owner;
pub mod quarantine;
mod section;
mod segments;
pub mod seq;
mod sqlite;
mod stage;
pub mod state_db;
#[cfg(test)]
mod tests;

/// The CRC of the record frame, for the small files beside the journal (the ledger's heartbeat).
pub use frame::crc32c;
pub use section::JournalSection;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::watch;

/// Default upper bound on how long an appended record waits before its durable write.
pub const DEFAULT_COMMIT_INTERVAL: Duration = Duration::from_millis(100);
/// Default commit window while no far side is connected (records cannot leave soon).
pub const DEFAULT_OUTAGE_COMMIT_INTERVAL: Duration = Duration::from_millis(1500);
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

/// Which storage engine backs a journal (config value `log` or `sqlite`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Append-only segment files, one `fdatasync` per commit, deleted whole; `path` is a directory.
    Log,
    /// SQLite in WAL mode with `synchronous=FULL`; `path` is the database file.
    Sqlite,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Log => "log",
            Backend::Sqlite => "sqlite",
        })
    }
}

/// How one journal is stored and when it commits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalConfig {
    /// Storage engine.
    pub backend: Backend,
    /// log: a directory. SQLite: the database file.
    pub path: PathBuf,
    /// The RAM stage's directory (tmpfs); `None`: no stage, a crash loses the commit window.
    pub stage_dir: Option<PathBuf>,
    /// Budget for stored records (payload + [`RECORD_OVERHEAD_BYTES`] each); oldest are evicted beyond it.
    pub max_bytes: u64,
    /// Longest time an appended record or an ack waits for its durable write.
    pub commit_interval: Duration,
    /// The same while no far side is connected ([`Journal::far_side`]).
    pub outage_commit_interval: Duration,
    /// Pending records that trigger a durable write before `commit_interval` ends.
    pub commit_max_records: usize,
}

impl JournalConfig {
    /// A config with the default commit interval and batch size.
    pub fn new(backend: Backend, path: impl Into<PathBuf>, max_bytes: u64) -> JournalConfig {
        JournalConfig {
            backend,
            path: path.into(),
            stage_dir: None,
            max_bytes,
            commit_interval: DEFAULT_COMMIT_INTERVAL,
            outage_commit_interval: DEFAULT_OUTAGE_COMMIT_INTERVAL,
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
    /// Highest settled sequence number: durable, or acknowledged before it needed to be.
    pub last_seq: Seq,
    /// Highest sequence number the far side acknowledged (durable within a commit window).
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

/// Handle to one journal; cheap to clone; all methods usable from async code (they never
/// block the async worker on the SD card: appends, reads of records not yet durable and acks
/// are served in memory and the RAM stage, durable work on the owner thread).
#[derive(Clone)]
pub struct Journal {
    handle: Arc<Handle>,
}

/// What every clone of a [`Journal`] shares; dropping the last one stops the owner.
struct Handle {
    shared: Arc<owner::Shared>,
    stats: watch::Receiver<JournalStats>,
    appended: watch::Receiver<Seq>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.handles_gone();
    }
}

impl fmt::Debug for Journal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Journal").field("name", &self.handle.shared.name()).finish_non_exhaustive()
    }
}

impl Journal {
    /// Open (quarantining a corrupt store, taking back what the RAM stage holds) and start the
    /// owner thread `journal-<name>`; blocks, so async callers use `spawn_blocking`.
    pub fn open(name: &str, config: JournalConfig) -> Result<Journal, JournalError> {
        let (shared, stats, appended) = owner::start(name, config)?;
        Ok(Journal { handle: Arc::new(Handle { shared, stats, appended }) })
    }

    /// Take one record: it is readable at once and in the RAM stage (so a crash of this
    /// process cannot lose it) when this returns; durable on the medium within the commit
    /// window unless the far side acknowledges it first. Waits only while the owner is behind
    /// by many records (backpressure).
    pub async fn append(&self, record: NewRecord) -> Result<(), JournalError> {
        self.handle.shared.append(record).await
    }

    /// Up to `max` (at most [`MAX_READ_RECORDS`]) unacknowledged records with seq > `after`, oldest
    /// first: durable ones, then those still waiting for their durable write (publishing does not
    /// wait for the fsync; deleting waits for the far side's acknowledgement).
    pub async fn read_after(&self, after: Seq, max: usize) -> Result<Vec<Record>, JournalError> {
        self.handle.shared.read_after(after, max).await
    }

    /// The far side acknowledged everything up to `up_to`: those records may be deleted. Never waits.
    pub fn ack(&self, up_to: Seq) {
        self.handle.shared.ack(up_to);
    }

    /// How long a record the far side has not acknowledged waits before it is written while a
    /// far side is connected: a sink that reads acknowledgements late reads them before this.
    pub fn commit_interval(&self) -> Duration {
        self.handle.shared.commit_interval()
    }

    /// Whether a far side is connected and acknowledging: while none is, records cannot leave
    /// soon, and the commit window grows to `outage_commit_interval` (fewer, larger writes).
    pub fn far_side(&self, connected: bool) {
        self.handle.shared.far_side(connected);
    }

    /// Watch stats; updated after every durable write.
    pub fn watch(&self) -> watch::Receiver<JournalStats> {
        self.handle.stats.clone()
    }

    /// Watch the highest appended seq (durable or not); changes as soon as a record is readable.
    pub fn watch_appended(&self) -> watch::Receiver<Seq> {
        self.handle.appended.clone()
    }

    /// Whether the owner thread still answers (the watchdog's probe); makes nothing durable,
    /// so a healthy link still writes nothing.
    pub async fn ping(&self) -> Result<(), JournalError> {
        self.handle.shared.ping().await
    }

    /// Wait until everything appended (and acked) before this call is durable (used on SIGTERM).
    pub async fn flush(&self) -> Result<(), JournalError> {
        self.handle.shared.flush().await
    }

    /// Commit what is pending, stop the owner thread and release the store; other clones then get `Closed`.
    pub async fn close(self) -> Result<(), JournalError> {
        self.handle.shared.close().await
    }
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
    /// Records to make durable, in seq order, each above the store's `last_seq`; those at or
    /// below `ack_up_to` are skipped (the far side has them already).
    records: &'a [Record],
    /// Every seq up to here was handed out: the store's `last_seq` becomes at least this.
    last_seq: Seq,
    /// Write the counters (last seq, ack) durably even if nothing else changes (on close).
    persist_counters: bool,
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
