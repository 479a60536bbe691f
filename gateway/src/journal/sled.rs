//! The sled backend (pinned 0.34.7): one sled directory per journal with a 1 MiB page cache
//! and no background flusher — each group commit is one `Batch` per tree followed by one
//! explicit flush. Tree `records`: key = seq as u64 big-endian, value = kind byte +
//! received_at_ms i64 big-endian + payload. Tree `meta`: counters that must outlive the
//! records. sled can panic on a damaged store, so opening runs under `catch_unwind`; it can
//! also silently recover a damaged log to an earlier point, which `meta` is used to notice.

use std::collections::BTreeSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ::sled::{Batch, Config, Db, IVec, Mode, Tree};

use super::quarantine::{open_or_quarantine, OpenFailure};
use super::{record_bytes, Commit, Counters, JournalError, NewRecord, Record, Seq, Store};

/// sled's page cache; records are read once, so a large cache buys nothing.
const CACHE_CAPACITY: u64 = 1024 * 1024;
/// sled has no range delete, and a `Batch` holds every key in memory: a large ack is
/// deleted this many records per durable write.
const PURGE_CHUNK: usize = 8192;
/// How long to wait for another holder of the store's lock file to let go.
const LOCK_WAIT: Duration = Duration::from_secs(10);
const LOCK_RETRY: Duration = Duration::from_millis(20);
/// Value bytes before the payload: kind (1) + received_at_ms (8).
const HEADER_LEN: usize = 9;
/// Version of the layout above, kept in meta `format`.
const FORMAT: u64 = 1;

const RECORDS_TREE: &str = "records";
const META_TREE: &str = "meta";
const META_FORMAT: &str = "format";
const META_LAST_SEQ: &str = "last_seq";
const META_ACKED: &str = "acked";
const META_EVICTED_TOTAL: &str = "evicted_total";
/// Records stored as of the last commit: sled recovers a damaged log to an earlier point
/// without saying so, and this is how such a loss is noticed.
const META_RECORDS: &str = "records";

/// A journal stored in one sled directory.
pub(super) struct SledStore {
    path: PathBuf,
    db: Db,
    records: Tree,
    meta: Tree,
    counters: Counters,
    /// Set when a batch was applied but its flush failed: sled's state then differs from
    /// `counters` and a retry could duplicate records, so the store refuses further writes.
    poisoned: Option<String>,
}

impl SledStore {
    /// Open or create the sled directory at `path`, moving it aside first if it is corrupt.
    pub(super) fn open(path: &Path) -> Result<(SledStore, Option<(PathBuf, String)>), JournalError> {
        open_or_quarantine(path, &[], |path| {
            let started = Instant::now();
            loop {
                match catch_unwind(AssertUnwindSafe(|| open_store(path))) {
                    Ok(Err(failure)) if is_lock_held(&failure) && started.elapsed() < LOCK_WAIT => {
                        std::thread::sleep(LOCK_RETRY);
                    }
                    Ok(result) => return result,
                    Err(panic) => {
                        return Err(OpenFailure::Corrupt(format!(
                            "sled panicked while opening the store: {}",
                            panic_message(panic.as_ref())
                        )))
                    }
                }
            }
        })
    }
}

/// sled releases its file lock only when its last internal reference goes, which can be a
/// little after the previous owner dropped the `Db`; so a held lock is retried for a while.
fn is_lock_held(failure: &OpenFailure) -> bool {
    match failure {
        OpenFailure::Failed(JournalError::Sled { source: ::sled::Error::Io(io), .. }) => {
            io.to_string().contains("could not acquire lock")
        }
        _ => false,
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_string())
}

fn open_store(path: &Path) -> Result<SledStore, OpenFailure> {
    let existed = path.join("db").is_file();
    // sled makes its files with the umask's mode; a 0700 folder keeps them to us.
    crate::state_db::create_private_dir(path).map_err(|source| {
        OpenFailure::Failed(JournalError::Io {
            path: path.to_path_buf(),
            action: "creating the journal directory",
            source,
        })
    })?;
    let db = Config::new()
        .path(path)
        .cache_capacity(CACHE_CAPACITY)
        // What the design asks for; sled 0.34.7 stores but never reads this setting.
        .mode(Mode::LowSpace)
        .flush_every_ms(None)
        .open()
        .map_err(open_failure(path, "opening the database"))?;
    // sled made its files with the umask's mode: make them ours alone.
    crate::state_db::make_private(path).map_err(|source| {
        OpenFailure::Failed(JournalError::Io {
            path: path.to_path_buf(),
            action: "setting the journal's mode",
            source,
        })
    })?;
    let records = db.open_tree(RECORDS_TREE).map_err(open_failure(path, "opening the records tree"))?;
    let meta = db.open_tree(META_TREE).map_err(open_failure(path, "opening the meta tree"))?;

    let read_meta = |key: &str| -> Result<u64, OpenFailure> {
        let value = meta.get(key).map_err(open_failure(path, "reading meta"))?;
        match value {
            None => Ok(0),
            Some(bytes) => decode_u64(&bytes)
                .ok_or_else(|| OpenFailure::Corrupt(format!("meta {key} has {} bytes, not 8", bytes.len()))),
        }
    };
    let format = read_meta(META_FORMAT)?;
    if format == 0 {
        if existed {
            // Every store gets its format mark when created, so sled has silently recovered
            // an existing log to nothing: the files are damaged.
            return Err(OpenFailure::Corrupt(
                "sled recovered an existing store as empty (no format mark): its log is damaged".to_string(),
            ));
        }
        meta.insert(META_FORMAT, &FORMAT.to_be_bytes()).map_err(open_failure(path, "marking a new store"))?;
        db.flush().map_err(open_failure(path, "marking a new store"))?;
    } else if format > FORMAT {
        return Err(OpenFailure::Failed(JournalError::Config {
            path: path.to_path_buf(),
            reason: format!(
                "the store has format {format}, newer than this berrygw understands ({FORMAT}); \
                 run a newer berrygw or move the directory away"
            ),
        }));
    }
    let mut counters = Counters {
        acked: Seq(read_meta(META_ACKED)?),
        evicted_total: read_meta(META_EVICTED_TOTAL)?,
        ..Counters::default()
    };
    let meta_last_seq = read_meta(META_LAST_SEQ)?;
    let meta_records = read_meta(META_RECORDS)?;

    // Count what is stored; nothing but the counters is kept.
    let mut max_seq = 0;
    for item in records.iter() {
        let (key, value) = item.map_err(open_failure(path, "counting records"))?;
        let seq = decode_key(&key).ok_or_else(|| {
            OpenFailure::Corrupt(format!("records tree holds a {}-byte key, not 8", key.len()))
        })?;
        if counters.first_seq.is_none() {
            counters.first_seq = Some(seq);
            counters.oldest_received_at_ms = decode_header(&value).map(|(_, at)| at);
        }
        max_seq = seq.0;
        counters.records += 1;
        counters.bytes = counters.bytes.saturating_add(record_bytes(value.len().saturating_sub(HEADER_LEN)));
    }
    // Seqs are never reused: the highest ever issued wins, whichever place remembers it.
    counters.last_seq = Seq(meta_last_seq.max(max_seq));
    counters.acked = counters.acked.min(counters.last_seq);

    let lost = meta_records.saturating_sub(counters.records);
    if lost > 0 {
        tracing::error!(
            path = %path.display(),
            lost,
            "JOURNAL LOST RECORDS: sled recovered its log to an earlier point (damaged file or \
             storage); the missing records are counted as evicted"
        );
        counters.evicted_total = counters.evicted_total.saturating_add(lost);
        // Record the loss now, so a restart before the next commit does not count it twice.
        let mut fix = Batch::default();
        fix.insert(META_RECORDS, &counters.records.to_be_bytes());
        fix.insert(META_EVICTED_TOTAL, &counters.evicted_total.to_be_bytes());
        meta.apply_batch(fix).map_err(open_failure(path, "recording lost records"))?;
        db.flush().map_err(open_failure(path, "recording lost records"))?;
    }
    Ok(SledStore { path: path.to_path_buf(), db, records, meta, counters, poisoned: None })
}

/// Corruption (and sled's "this is a bug" errors, which damaged files produce) means "move
/// it aside"; everything else — permissions, a held lock — is reported as is.
fn open_failure<'a>(path: &'a Path, action: &'static str) -> impl Fn(::sled::Error) -> OpenFailure + 'a {
    move |error| {
        let corrupt = match &error {
            ::sled::Error::Corruption { .. }
            | ::sled::Error::ReportableBug(_)
            | ::sled::Error::Unsupported(_) => true,
            ::sled::Error::Io(io) => {
                matches!(io.kind(), std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData)
            }
            _ => false,
        };
        if corrupt {
            OpenFailure::Corrupt(format!("{action}: {error}"))
        } else {
            OpenFailure::Failed(sled_error(path, action)(error))
        }
    }
}

fn sled_error<'a>(path: &'a Path, action: &'static str) -> impl Fn(::sled::Error) -> JournalError + 'a {
    move |source| JournalError::Sled { path: path.to_path_buf(), action, source }
}

fn key(seq: Seq) -> [u8; 8] {
    seq.0.to_be_bytes()
}

fn decode_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

fn decode_key(bytes: &[u8]) -> Option<Seq> {
    decode_u64(bytes).map(Seq)
}

fn encode_value(record: &NewRecord) -> Vec<u8> {
    let mut value = Vec::with_capacity(HEADER_LEN + record.payload.len());
    value.push(record.kind);
    value.extend_from_slice(&record.received_at_ms.to_be_bytes());
    value.extend_from_slice(&record.payload);
    value
}

/// Kind and receive time, if the value is long enough to hold them.
fn decode_header(value: &[u8]) -> Option<(u8, i64)> {
    let (&kind, rest) = value.split_first()?;
    let at = rest.get(..8)?.try_into().ok()?;
    Some((kind, i64::from_be_bytes(at)))
}

/// The next-oldest record while walking the journal from its head.
struct Candidate {
    seq: Seq,
    value_len: usize,
    received_at_ms: Option<i64>,
}

impl SledStore {
    fn corrupt_key(&self, key: &IVec) -> JournalError {
        JournalError::Corrupt {
            path: self.path.clone(),
            reason: format!("records tree holds a {}-byte key, not 8", key.len()),
        }
    }
}

impl Store for SledStore {
    fn commit(&mut self, commit: &Commit<'_>) -> Result<(), JournalError> {
        if let Some(reason) = &self.poisoned {
            return Err(JournalError::CommitFailed {
                path: self.path.clone(),
                reason: format!("an earlier flush failed ({reason}); restart berrygw to recover"),
            });
        }
        let path = self.path.as_path();
        let mut next = self.counters;
        let mut batch = Batch::default();

        let first_new = Seq(next.last_seq.0.saturating_add(1));
        for record in commit.records {
            let seq = Seq(next.last_seq.0.saturating_add(1));
            batch.insert(&key(seq), encode_value(record));
            next.last_seq = seq;
            next.records += 1;
            next.bytes = next.bytes.saturating_add(record_bytes(record.payload.len()));
        }

        let mut removed = BTreeSet::new();
        for &seq in commit.unreadable {
            let value =
                self.records.get(key(seq)).map_err(sled_error(path, "measuring an unreadable record"))?;
            if let Some(value) = value {
                batch.remove(&key(seq));
                removed.insert(seq);
                next.records = next.records.saturating_sub(1);
                next.bytes = next.bytes.saturating_sub(record_bytes(value.len().saturating_sub(HEADER_LEN)));
                next.evicted_total = next.evicted_total.saturating_add(1);
            }
        }

        // Walk from the head: delete acked records (a chunk at a time), then the oldest while
        // over budget — stored ones first, then this batch's own. The first kept one is the head.
        // Acks never go backwards and never pass the last record appended; they may cover
        // this batch's records (published before their durable write), which are then dropped.
        next.acked = commit.ack_up_to.max(next.acked).min(next.last_seq);
        let mut stored = self.records.iter();
        let mut fresh = commit.records.iter().zip(first_new.0..);
        let mut purged = 0;
        next.first_seq = None;
        next.oldest_received_at_ms = None;
        loop {
            let candidate = match stored.next() {
                Some(item) => {
                    let (k, v) = item.map_err(sled_error(path, "walking the records"))?;
                    let seq = decode_key(&k).ok_or_else(|| self.corrupt_key(&k))?;
                    if removed.contains(&seq) {
                        continue;
                    }
                    Candidate { seq, value_len: v.len(), received_at_ms: decode_header(&v).map(|(_, at)| at) }
                }
                None => match fresh.next() {
                    Some((record, seq)) => Candidate {
                        seq: Seq(seq),
                        value_len: HEADER_LEN + record.payload.len(),
                        received_at_ms: Some(record.received_at_ms),
                    },
                    None => break,
                },
            };
            let acked = candidate.seq <= next.acked;
            let over_budget = next.bytes > commit.max_bytes;
            if !(over_budget || (acked && purged < PURGE_CHUNK)) {
                next.first_seq = Some(candidate.seq);
                next.oldest_received_at_ms = candidate.received_at_ms;
                break;
            }
            batch.remove(&key(candidate.seq));
            next.records = next.records.saturating_sub(1);
            next.bytes =
                next.bytes.saturating_sub(record_bytes(candidate.value_len.saturating_sub(HEADER_LEN)));
            if acked {
                purged += 1;
            } else {
                next.evicted_total = next.evicted_total.saturating_add(1);
            }
        }
        drop(stored);

        // Meta goes first: if only it survives a crash, seqs still never repeat and records
        // at or below `acked` are purged on the next open.
        let mut meta = Batch::default();
        meta.insert(META_FORMAT, &FORMAT.to_be_bytes());
        meta.insert(META_LAST_SEQ, &next.last_seq.0.to_be_bytes());
        meta.insert(META_ACKED, &next.acked.0.to_be_bytes());
        meta.insert(META_EVICTED_TOTAL, &next.evicted_total.to_be_bytes());
        meta.insert(META_RECORDS, &next.records.to_be_bytes());
        self.meta.apply_batch(meta).map_err(sled_error(path, "updating meta"))?;
        self.records.apply_batch(batch).map_err(sled_error(path, "writing records"))?;
        if let Err(error) = self.db.flush() {
            self.poisoned = Some(error.to_string());
            return Err(sled_error(path, "flushing to disk")(error));
        }
        self.counters = next;
        Ok(())
    }

    fn read_after(&mut self, after: Seq, max: usize) -> Result<Vec<Record>, JournalError> {
        let Some(start) = after.0.checked_add(1) else {
            return Ok(Vec::new());
        };
        let path = self.path.as_path();
        let mut records = Vec::with_capacity(max.min(1024));
        for item in self.records.range(key(Seq(start))..).take(max) {
            let (k, v) = item.map_err(sled_error(path, "reading records"))?;
            let seq = decode_key(&k).ok_or_else(|| self.corrupt_key(&k))?;
            let (kind, received_at_ms) = decode_header(&v).ok_or_else(|| JournalError::CorruptRecord {
                path: self.path.clone(),
                seq,
                reason: format!("value has {} bytes, shorter than the {HEADER_LEN}-byte header", v.len()),
            })?;
            records.push(Record {
                seq,
                kind,
                received_at_ms,
                payload: v.get(HEADER_LEN..).unwrap_or_default().to_vec(),
            });
        }
        Ok(records)
    }

    fn counters(&self) -> Counters {
        self.counters
    }
}
