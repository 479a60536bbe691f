//! The SQLite backend: one database file per journal, WAL mode with `synchronous=FULL` and a
//! 512 KiB page cache. Records live in a rowid table keyed by seq (no other index), counters
//! in a small `meta` table; each group commit is one transaction, acked and evicted records
//! are deleted as seq ranges. Not for anything but the journal's own files.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, ErrorCode, OptionalExtension, Transaction};

use super::quarantine::{open_or_quarantine, OpenFailure};
use super::{record_bytes, Commit, Counters, JournalError, Record, Seq, Store};

/// Format of the tables below, kept in `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS records (
        seq            INTEGER PRIMARY KEY,
        kind           INTEGER NOT NULL,
        received_at_ms INTEGER NOT NULL,
        payload        BLOB    NOT NULL
    );
    CREATE TABLE IF NOT EXISTS meta (
        key   TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    ) WITHOUT ROWID;
    PRAGMA user_version = 1;
";

/// Files SQLite keeps beside the database; they move with it when it is quarantined.
const COMPANION_SUFFIXES: &[&str] = &["-wal", "-shm", "-journal"];

/// A journal stored in one SQLite database file.
pub(super) struct SqliteStore {
    path: PathBuf,
    conn: Connection,
    counters: Counters,
}

impl SqliteStore {
    /// Open or create the database at `path`, moving it aside first if it is corrupt.
    pub(super) fn open(path: &Path) -> Result<(SqliteStore, Option<(PathBuf, String)>), JournalError> {
        open_or_quarantine(path, COMPANION_SUFFIXES, open_store)
    }
}

fn open_store(path: &Path) -> Result<SqliteStore, OpenFailure> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        berrygw_core::files::create_private_dir(parent).map_err(|source| JournalError::Io {
            path: parent.to_path_buf(),
            action: "creating the journal directory",
            source,
        })?;
    }
    // Created (or kept) 0600 before SQLite opens it; its -wal and -shm take the same mode.
    berrygw_core::files::create_with_mode(path, berrygw_core::files::STATE_FILE_MODE).map_err(|source| {
        JournalError::Io { path: path.to_path_buf(), action: "setting the journal's mode", source }
    })?;
    let conn = Connection::open(path).map_err(open_failure(path, "opening the database"))?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(open_failure(path, "setting busy_timeout"))?;

    let problems = quick_check(&conn).map_err(open_failure(path, "PRAGMA quick_check"))?;
    if problems != ["ok"] {
        return Err(OpenFailure::Corrupt(format!("PRAGMA quick_check reported: {}", problems.join("; "))));
    }
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(open_failure(path, "switching to WAL mode"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(OpenFailure::Failed(JournalError::Config {
            path: path.to_path_buf(),
            reason: format!("SQLite refused WAL mode (got {mode:?}); put the journal on a local file system"),
        }));
    }
    // FULL: a commit is on the medium when it returns. Small cache: records are read once.
    // The WAL is cut back after checkpoints so one large delete does not pin its size.
    conn.execute_batch(
        "PRAGMA synchronous = FULL;
         PRAGMA cache_size = -512;
         PRAGMA journal_size_limit = 4194304;",
    )
    .map_err(open_failure(path, "setting pragmas"))?;

    let version: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(open_failure(path, "reading the schema version"))?;
    if version > SCHEMA_VERSION {
        return Err(OpenFailure::Failed(JournalError::Config {
            path: path.to_path_buf(),
            reason: format!(
                "the store has format {version}, newer than this berrygw understands ({SCHEMA_VERSION}); \
                 run a newer berrygw or move the file away"
            ),
        }));
    }
    if let Some(reason) = check_schema(&conn).map_err(open_failure(path, "reading the schema"))? {
        return Err(OpenFailure::Corrupt(reason));
    }
    conn.execute_batch(SCHEMA).map_err(open_failure(path, "creating tables"))?;
    let counters = load_counters(path, &conn)?;
    Ok(SqliteStore { path: path.to_path_buf(), conn, counters })
}

/// A column as `PRAGMA table_info` lists it: name, type, NOT NULL, part of the primary key.
type Column<'a> = (&'a str, &'a str, bool, bool);

/// The columns of each table [`SCHEMA`] creates.
const EXPECTED_COLUMNS: &[(&str, &[Column<'static>])] = &[
    (
        "records",
        &[
            ("seq", "INTEGER", false, true),
            ("kind", "INTEGER", true, false),
            ("received_at_ms", "INTEGER", true, false),
            ("payload", "BLOB", true, false),
        ],
    ),
    ("meta", &[("key", "TEXT", false, true), ("value", "INTEGER", true, false)]),
];

/// Why the existing tables differ from [`SCHEMA`], if they do. A file can pass
/// `quick_check` with a damaged schema (a `meta` without its primary key makes every
/// commit's upsert fail), so the tables are compared column by column; a missing table
/// is fine (a new store), a different one means the store is moved aside.
fn check_schema(conn: &Connection) -> rusqlite::Result<Option<String>> {
    for (table, expected) in EXPECTED_COLUMNS {
        let mut statement = conn.prepare(&format!("PRAGMA table_info({table})"))?;
        let columns = statement
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, bool>(3)?,
                    row.get::<_, i64>(5)? > 0,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        if columns.is_empty() {
            continue;
        }
        // NOT NULL is compared on ordinary columns only: SQLite reports it for a
        // WITHOUT ROWID table's primary key whether or not it was written.
        let matches = columns.len() == expected.len()
            && columns.iter().zip(expected.iter()).all(
                |((name, ty, not_null, pk), (e_name, e_ty, e_nn, e_pk))| {
                    name == e_name && ty.eq_ignore_ascii_case(e_ty) && pk == e_pk && (*pk || not_null == e_nn)
                },
            );
        if !matches {
            return Ok(Some(format!(
                "table {table} does not have the journal's columns (found {columns:?})"
            )));
        }
    }
    Ok(None)
}

/// The rows of `PRAGMA quick_check` (a single "ok" when the file is sound).
fn quick_check(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut statement = conn.prepare("PRAGMA quick_check(20)")?;
    let rows = statement.query_map([], |row| row.get::<_, String>(0))?;
    rows.collect()
}

/// Counters as stored: meta values, reconciled with what the records table holds.
fn load_counters(path: &Path, conn: &Connection) -> Result<Counters, OpenFailure> {
    let mut counters = Counters::default();
    let mut meta_last_seq = 0;
    let mut statement =
        conn.prepare("SELECT key, value FROM meta").map_err(open_failure(path, "reading meta"))?;
    let mut rows = statement.query([]).map_err(open_failure(path, "reading meta"))?;
    while let Some(row) = rows.next().map_err(open_failure(path, "reading meta"))? {
        let key: String = row.get(0).map_err(open_failure(path, "reading meta"))?;
        let value: i64 = row.get(1).map_err(open_failure(path, "reading meta"))?;
        let value = u64::try_from(value)
            .map_err(|_| OpenFailure::Corrupt(format!("meta {key} is negative ({value})")))?;
        match key.as_str() {
            "last_seq" => meta_last_seq = value,
            "acked" => counters.acked = Seq(value),
            "evicted_total" => counters.evicted_total = value,
            _ => {}
        }
    }
    let (records, payload_bytes, max_seq): (i64, i64, Option<i64>) = conn
        .query_row("SELECT count(*), coalesce(sum(length(payload)), 0), max(seq) FROM records", [], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })
        .map_err(open_failure(path, "counting records"))?;
    let max_seq = u64::try_from(max_seq.unwrap_or(0))
        .map_err(|_| OpenFailure::Corrupt("a record has a negative seq".to_string()))?;
    counters.records = u64::try_from(records).unwrap_or(0);
    counters.bytes = u64::try_from(payload_bytes)
        .unwrap_or(0)
        .saturating_add(counters.records.saturating_mul(record_bytes(0)));
    // Seqs are never reused: the highest ever issued wins, whichever place remembers it.
    counters.last_seq = Seq(meta_last_seq.max(max_seq));
    counters.acked = counters.acked.min(counters.last_seq);
    refresh_oldest(conn, &mut counters).map_err(open_failure(path, "finding the oldest record"))?;
    Ok(counters)
}

/// Set `first_seq` and `oldest_received_at_ms` from the first stored record.
fn refresh_oldest(conn: &Connection, counters: &mut Counters) -> rusqlite::Result<()> {
    let oldest = conn
        .prepare_cached("SELECT seq, received_at_ms FROM records ORDER BY seq LIMIT 1")?
        .query_row([], |row| {
            // A mistyped time is reported by `read_after`, not here.
            Ok((row.get::<_, i64>(0)?, row.get_ref(1)?.as_i64().ok()))
        })
        .optional()?;
    counters.first_seq = oldest.map(|(seq, _)| Seq(u64::try_from(seq).unwrap_or(0)));
    counters.oldest_received_at_ms = oldest.and_then(|(_, at)| at);
    Ok(())
}

/// Corruption codes mean "move it aside"; everything else is reported as is.
fn open_failure<'a>(path: &'a Path, action: &'static str) -> impl Fn(rusqlite::Error) -> OpenFailure + 'a {
    move |error| match error.sqlite_error_code() {
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => {
            OpenFailure::Corrupt(format!("{action}: {error}"))
        }
        _ => OpenFailure::Failed(sql_error(path, action)(error)),
    }
}

fn sql_error<'a>(path: &'a Path, action: &'static str) -> impl Fn(rusqlite::Error) -> JournalError + 'a {
    move |source| JournalError::Sqlite { path: path.to_path_buf(), action, source }
}

/// Seqs are u64 in the API and INTEGER (i64) in SQLite; 2^63 records will not happen.
fn sql_seq(path: &Path, seq: Seq) -> Result<i64, JournalError> {
    i64::try_from(seq.0).map_err(|_| JournalError::Corrupt {
        path: path.to_path_buf(),
        reason: format!("sequence number {seq} does not fit SQLite's INTEGER"),
    })
}

/// Count and counted bytes of the records with seq <= `up_to`.
fn range_totals(tx: &Transaction<'_>, up_to: i64) -> rusqlite::Result<(u64, u64)> {
    let (count, payload_bytes): (i64, i64) = tx
        .prepare_cached("SELECT count(*), coalesce(sum(length(payload)), 0) FROM records WHERE seq <= ?1")?
        .query_row([up_to], |row| Ok((row.get(0)?, row.get(1)?)))?;
    let count = u64::try_from(count).unwrap_or(0);
    let bytes =
        u64::try_from(payload_bytes).unwrap_or(0).saturating_add(count.saturating_mul(record_bytes(0)));
    Ok((count, bytes))
}

/// The seq up to which the oldest records must go to free `needed` bytes.
fn eviction_cutoff(tx: &Transaction<'_>, needed: u64) -> rusqlite::Result<Option<i64>> {
    let mut statement = tx.prepare_cached("SELECT seq, length(payload) FROM records ORDER BY seq")?;
    let mut rows = statement.query([])?;
    let mut freed = 0u64;
    let mut cutoff = None;
    while freed < needed {
        let Some(row) = rows.next()? else { break };
        let length: Option<i64> = row.get(1)?;
        let length = usize::try_from(length.unwrap_or(0)).unwrap_or(0);
        freed = freed.saturating_add(record_bytes(length));
        cutoff = Some(row.get(0)?);
    }
    Ok(cutoff)
}

impl Store for SqliteStore {
    fn commit(&mut self, commit: &Commit<'_>) -> Result<(), JournalError> {
        let path = self.path.as_path();
        let mut next = self.counters;
        // Nothing to keep: every record of the batch was acknowledged before its durable
        // write, nothing stored waits for deletion, nothing unreadable. No transaction at all,
        // not even the meta row: on a healthy link the SD card sees nothing. The seqs given
        // out stay counted in memory; a crash before the next real write can only hand such
        // never-stored seqs out again, never the seq of a stored record.
        let batch_end = commit.records.last().map_or(Seq::NONE, |r| r.seq).max(commit.last_seq);
        let keeps = commit.records.iter().any(|r| r.seq > commit.ack_up_to && r.seq > next.last_seq);
        if !keeps
            && !commit.persist_counters
            && commit.unreadable.is_empty()
            && next.first_seq.is_none_or(|first| first > commit.ack_up_to)
            && next.bytes <= commit.max_bytes
        {
            next.last_seq = next.last_seq.max(batch_end);
            next.acked = commit.ack_up_to.max(next.acked).min(next.last_seq);
            self.counters = next;
            return Ok(());
        }
        let tx = self.conn.transaction().map_err(sql_error(path, "starting a commit"))?;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO records (seq, kind, received_at_ms, payload) VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(sql_error(path, "preparing an insert"))?;
            for record in commit.records {
                if record.seq <= commit.ack_up_to || record.seq <= next.last_seq {
                    // Published and acknowledged before its durable write: the far side has
                    // it, so it never needs to touch the SD card.
                    continue;
                }
                insert
                    .execute(params![
                        sql_seq(path, record.seq)?,
                        record.kind,
                        record.received_at_ms,
                        record.payload
                    ])
                    .map_err(sql_error(path, "appending a record"))?;
                next.last_seq = record.seq;
                next.first_seq.get_or_insert(record.seq);
                next.records += 1;
                next.bytes = next.bytes.saturating_add(record_bytes(record.payload.len()));
            }
        }
        next.last_seq = next.last_seq.max(batch_end);

        for &seq in commit.unreadable {
            let seq = sql_seq(path, seq)?;
            let length: Option<Option<i64>> = tx
                .prepare_cached("SELECT length(payload) FROM records WHERE seq = ?1")
                .and_then(|mut statement| statement.query_row([seq], |row| row.get(0)).optional())
                .map_err(sql_error(path, "measuring an unreadable record"))?;
            let Some(length) = length else { continue };
            tx.execute("DELETE FROM records WHERE seq = ?1", [seq])
                .map_err(sql_error(path, "deleting an unreadable record"))?;
            let length = usize::try_from(length.unwrap_or(0)).unwrap_or(0);
            next.records = next.records.saturating_sub(1);
            next.bytes = next.bytes.saturating_sub(record_bytes(length));
            next.evicted_total = next.evicted_total.saturating_add(1);
        }

        // Acks never go backwards and never pass the last record appended.
        next.acked = commit.ack_up_to.max(next.acked).min(next.last_seq);
        if next.first_seq.is_some_and(|first| first <= next.acked) {
            let up_to = sql_seq(path, next.acked)?;
            let (count, bytes) =
                range_totals(&tx, up_to).map_err(sql_error(path, "measuring acked records"))?;
            if count > 0 {
                tx.execute("DELETE FROM records WHERE seq <= ?1", [up_to])
                    .map_err(sql_error(path, "deleting acked records"))?;
                next.records = next.records.saturating_sub(count);
                next.bytes = next.bytes.saturating_sub(bytes);
            }
        }

        if next.bytes > commit.max_bytes {
            let cutoff = eviction_cutoff(&tx, next.bytes - commit.max_bytes)
                .map_err(sql_error(path, "choosing records to evict"))?;
            if let Some(cutoff) = cutoff {
                let (count, bytes) =
                    range_totals(&tx, cutoff).map_err(sql_error(path, "measuring records to evict"))?;
                tx.execute("DELETE FROM records WHERE seq <= ?1", [cutoff])
                    .map_err(sql_error(path, "evicting records"))?;
                next.records = next.records.saturating_sub(count);
                next.bytes = next.bytes.saturating_sub(bytes);
                next.evicted_total = next.evicted_total.saturating_add(count);
            }
        }

        refresh_oldest(&tx, &mut next).map_err(sql_error(path, "finding the oldest record"))?;
        tx.prepare_cached(
            "INSERT INTO meta (key, value) VALUES ('last_seq', ?1), ('acked', ?2), ('evicted_total', ?3)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .and_then(|mut statement| {
            statement.execute(params![
                i64::try_from(next.last_seq.0).unwrap_or(i64::MAX),
                i64::try_from(next.acked.0).unwrap_or(i64::MAX),
                i64::try_from(next.evicted_total).unwrap_or(i64::MAX),
            ])
        })
        .map_err(sql_error(path, "updating meta"))?;
        tx.commit().map_err(sql_error(path, "committing"))?;
        self.counters = next;
        Ok(())
    }

    fn read_after(&mut self, after: Seq, max: usize) -> Result<Vec<Record>, JournalError> {
        let path = self.path.as_path();
        let after = i64::try_from(after.0).unwrap_or(i64::MAX);
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT seq, kind, received_at_ms, payload FROM records WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )
            .map_err(sql_error(path, "preparing a read"))?;
        let mut rows = statement.query([after, limit]).map_err(sql_error(path, "reading records"))?;
        let mut records = Vec::with_capacity(max.min(1024));
        while let Some(row) = rows.next().map_err(sql_error(path, "reading records"))? {
            let seq: i64 = row.get(0).map_err(sql_error(path, "reading a seq"))?;
            let seq = Seq(u64::try_from(seq).unwrap_or(0));
            let unreadable = |error: rusqlite::Error| match error {
                rusqlite::Error::FromSqlConversionFailure(..)
                | rusqlite::Error::IntegralValueOutOfRange(..)
                | rusqlite::Error::InvalidColumnType(..) => {
                    JournalError::CorruptRecord { path: path.to_path_buf(), seq, reason: error.to_string() }
                }
                other => sql_error(path, "reading a record")(other),
            };
            records.push(Record {
                seq,
                kind: row.get(1).map_err(unreadable)?,
                received_at_ms: row.get(2).map_err(unreadable)?,
                payload: row.get(3).map_err(unreadable)?,
            });
        }
        Ok(records)
    }

    fn counters(&self) -> Counters {
        self.counters
    }
}
