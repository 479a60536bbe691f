//! The audit log: every actuation attempt, from any source (authenticated central command,
//! local CLI, rule), with its outcome, in `<state_dir>/audit.sqlite` (mode 0640: no secrets;
//! the engine redacts key material from arguments before it gets here; WAL,
//! `synchronous=FULL`, so an entry is on disk before `append` returns; commands are rare,
//! the fsync is affordable). Messages that fail authentication never get here: the engine
//! counts them (see `engine/central.rs`). `berrygw audit` lists it; the same JSON
//! (`berrygw_proto::audit::AuditEntry`) is published through the journal as the command's
//! result event.
//!
//! Bounded twice: at most `MAX_ENTRIES` (100,000) entries, and at most `max_bytes` of entry
//! text (`[field] audit_max_bytes`, default [`DEFAULT_MAX_BYTES`]); the oldest entries are
//! deleted first, the newest one always kept. Sequence numbers only grow, even across
//! deletions. A row that does not read back is skipped with a warning; a corrupt file is
//! moved aside and a fresh log started (logged at error level; the old file is kept for
//! inspection). Blocking I/O: call it from `block_in_place` or `spawn_blocking`, never
//! straight from an async task.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde_json::Value;

pub use berrygw_proto::audit::{AuditEntry, Outcome, Source};

use crate::state_db::{open_or_move_aside, open_sqlite};

/// Most entries kept; older ones are deleted.
pub const MAX_ENTRIES: u64 = 100_000;

/// Default bound on the text of the kept entries, in bytes (SQLite's own overhead comes on top).
pub const DEFAULT_MAX_BYTES: u64 = 32 * 1024 * 1024;

/// The durable audit log.
pub struct AuditLog {
    conn: Connection,
    path: PathBuf,
    max_entries: u64,
    max_bytes: u64,
    /// The sum of the kept entries' `bytes`.
    bytes: u64,
}

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS audit (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    at         TEXT NOT NULL,
    source     TEXT NOT NULL,
    actor      TEXT NOT NULL,
    command_id TEXT,
    target     TEXT NOT NULL,
    command    TEXT NOT NULL,
    args       TEXT NOT NULL,
    outcome    TEXT NOT NULL,
    reason     TEXT,
    message    TEXT NOT NULL,
    bytes      INTEGER NOT NULL DEFAULT 0
);";

/// The size of a row's text, as counted against `max_bytes`.
const ROW_BYTES: &str = "length(at) + length(source) + length(actor) + coalesce(length(command_id), 0) \
    + length(target) + length(command) + length(args) + length(outcome) + coalesce(length(reason), 0) \
    + length(message)";

impl AuditLog {
    /// Open (or create) the log at `path`, keeping at most [`MAX_ENTRIES`] and `max_bytes`.
    pub fn open(path: &Path, max_bytes: u64) -> anyhow::Result<AuditLog> {
        AuditLog::open_with_limits(path, MAX_ENTRIES, max_bytes)
    }

    /// Open (or create) the log at `path`, keeping at most `max_entries` (at least 1) and
    /// `max_bytes` of entry text (the newest entry is kept whatever its size).
    pub fn open_with_limits(path: &Path, max_entries: u64, max_bytes: u64) -> anyhow::Result<AuditLog> {
        let conn = open_or_move_aside(
            path,
            "AUDIT LOG IS CORRUPT",
            "earlier entries are only in the moved file (and in the result events already forwarded)",
            |p| {
                let conn = open_sqlite(p, 0o640, SCHEMA)?;
                // A log written before entries were sized: add the column and size them.
                let sized: bool = conn
                    .query_row(
                        "SELECT count(*) FROM pragma_table_info('audit') WHERE name = 'bytes'",
                        [],
                        |r| r.get::<_, i64>(0),
                    )
                    .map(|n| n > 0)?;
                if !sized {
                    conn.execute_batch("ALTER TABLE audit ADD COLUMN bytes INTEGER NOT NULL DEFAULT 0;")?;
                }
                conn.execute(&format!("UPDATE audit SET bytes = {ROW_BYTES} WHERE bytes = 0"), [])?;
                Ok(conn)
            },
        )?;
        let bytes: i64 = conn.query_row("SELECT coalesce(sum(bytes), 0) FROM audit", [], |r| r.get(0))?;
        let mut log = AuditLog {
            conn,
            path: path.to_path_buf(),
            max_entries: max_entries.max(1),
            max_bytes,
            bytes: u64::try_from(bytes).unwrap_or(0),
        };
        log.trim()?;
        Ok(log)
    }

    /// Open an existing log without writing to it (`berrygw audit` beside a running daemon).
    pub fn open_read_only(path: &Path) -> anyhow::Result<AuditLog> {
        if !path.exists() {
            anyhow::bail!("no audit log at {} (no command was attempted yet?)", path.display());
        }
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(AuditLog {
            conn,
            path: path.to_path_buf(),
            max_entries: MAX_ENTRIES,
            max_bytes: u64::MAX,
            bytes: 0,
        })
    }

    /// Record `entry` durably (synced before returning), drop the oldest beyond the limit,
    /// and return it numbered (whatever `seq` it came with). `at` is kept to the millisecond.
    pub fn append(&mut self, entry: AuditEntry) -> anyhow::Result<AuditEntry> {
        let at = DateTime::from_timestamp_millis(entry.at.timestamp_millis()).unwrap_or(entry.at);
        let at_text = at.to_rfc3339_opts(SecondsFormat::Millis, true);
        let args = serde_json::to_string(&entry.args).context("encoding the arguments")?;
        let tx = self.conn.transaction().with_context(|| format!("writing {}", self.path.display()))?;
        tx.execute(
            "INSERT INTO audit (at, source, actor, command_id, target, command, args, outcome, reason, message)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                at_text,
                entry.source.as_str(),
                entry.actor,
                entry.command_id,
                entry.target,
                entry.command,
                args,
                entry.outcome.as_str(),
                entry.reason,
                entry.message
            ],
        )?;
        let seq = tx.last_insert_rowid();
        let bytes: i64 = tx.query_row(
            &format!("UPDATE audit SET bytes = {ROW_BYTES} WHERE seq = ?1 RETURNING bytes"),
            [seq],
            |r| r.get(0),
        )?;
        let limit = i64::try_from(self.max_entries).unwrap_or(i64::MAX);
        tx.execute("DELETE FROM audit WHERE seq <= ?1", [seq.saturating_sub(limit)])?;
        tx.commit().with_context(|| format!("writing {}", self.path.display()))?;
        self.bytes = self.bytes.saturating_add(u64::try_from(bytes).unwrap_or(0));
        if let Err(e) = self.trim() {
            // The entry is stored; the log is only larger than asked until the next append.
            tracing::warn!(path = %self.path.display(), "audit log: cannot delete old entries: {e:#}");
        }
        Ok(AuditEntry { seq: u64::try_from(seq).unwrap_or(0), at, ..entry })
    }

    /// Delete the oldest entries until the rest fit in `max_bytes` (the newest always stays).
    fn trim(&mut self) -> anyhow::Result<()> {
        if self.bytes <= self.max_bytes {
            return Ok(());
        }
        let max = i64::try_from(self.max_bytes).unwrap_or(i64::MAX);
        // The newest entry whose suffix (it and everything newer) no longer fits: it and older go.
        let cut: Option<i64> = self
            .conn
            .query_row(
                "SELECT seq FROM (SELECT seq, sum(bytes) OVER (ORDER BY seq DESC) AS kept FROM audit)
                 WHERE kept > ?1 ORDER BY seq DESC LIMIT 1",
                [max],
                |r| r.get(0),
            )
            .optional()?;
        let newest: Option<i64> = self.conn.query_row("SELECT max(seq) FROM audit", [], |r| r.get(0))?;
        if let (Some(cut), Some(newest)) = (cut, newest) {
            self.conn.execute("DELETE FROM audit WHERE seq <= ?1", [cut.min(newest - 1)])?;
        }
        let bytes: i64 =
            self.conn.query_row("SELECT coalesce(sum(bytes), 0) FROM audit", [], |r| r.get(0))?;
        self.bytes = u64::try_from(bytes).unwrap_or(0);
        Ok(())
    }

    /// The text of the kept entries, in bytes (what `max_bytes` bounds).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Up to `limit` entries, newest first, older than `before_seq` when given.
    pub fn list(&self, limit: usize, before_seq: Option<u64>) -> anyhow::Result<Vec<AuditEntry>> {
        let before = before_seq.map_or(i64::MAX, |s| i64::try_from(s).unwrap_or(i64::MAX));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut stmt = self.conn.prepare(
            "SELECT seq, at, source, actor, command_id, target, command, args, outcome, reason, message
             FROM audit WHERE seq < ?1 ORDER BY seq DESC LIMIT ?2",
        )?;
        let mut rows = stmt.query(params![before, limit])?;
        let mut entries = Vec::new();
        while let Some(row) = rows.next().with_context(|| format!("reading {}", self.path.display()))? {
            match read_row(row) {
                Some(entry) => entries.push(entry),
                None => tracing::warn!(
                    path = %self.path.display(),
                    seq = row.get::<_, i64>(0).ok(),
                    "audit log: unreadable entry skipped"
                ),
            }
        }
        Ok(entries)
    }

    /// How many entries are kept.
    pub fn len(&self) -> anyhow::Result<u64> {
        let n: i64 = self.conn.query_row("SELECT count(*) FROM audit", [], |row| row.get(0))?;
        Ok(n.max(0) as u64)
    }

    /// Whether the log holds no entry.
    pub fn is_empty(&self) -> anyhow::Result<bool> {
        Ok(self.len()? == 0)
    }
}

/// One row, or None if any column does not read back as it was written.
fn read_row(row: &rusqlite::Row<'_>) -> Option<AuditEntry> {
    let text = |i: usize| row.get::<_, String>(i).ok();
    let optional = |i: usize| row.get::<_, Option<String>>(i).ok();
    Some(AuditEntry {
        seq: u64::try_from(row.get::<_, i64>(0).ok()?).ok()?,
        at: DateTime::parse_from_rfc3339(&text(1)?).ok()?.with_timezone(&Utc),
        source: Source::from_label(&text(2)?)?,
        actor: text(3)?,
        command_id: optional(4)?,
        target: text(5)?,
        command: text(6)?,
        args: serde_json::from_str(&text(7)?).ok()?,
        outcome: Outcome::from_label(&text(8)?)?,
        reason: optional(9)?,
        message: text(10)?,
    })
}

/// What stands in for a secret in arguments.
pub const REDACTED: &str = "<redacted>";

/// `args` with every secret-looking member, at any depth, replaced by [`REDACTED`]: a name
/// ending in `key` or `keys` (`nwk_s_key`, `app_s_key`, `app_key`), or holding `secret`,
/// `password` or `token`. Every entry goes through this before it is stored or published,
/// whatever path it came by.
pub fn redact(args: &Value) -> Value {
    match args {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(name, value)| {
                    let lower = name.to_ascii_lowercase();
                    let secret = lower.ends_with("key")
                        || lower.ends_with("keys")
                        || ["secret", "password", "token"].iter().any(|w| lower.contains(w));
                    let value = if secret { Value::String(REDACTED.into()) } else { redact(value) };
                    (name.clone(), value)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(redact).collect()),
        other => other.clone(),
    }
}

/// A compact table for `berrygw audit`: one line per entry, in the order given.
pub fn render(entries: &[AuditEntry]) -> String {
    if entries.is_empty() {
        return "no audit entries\n".to_string();
    }
    const WIDEST: usize = 40;
    let header = ["SEQ", "TIME (UTC)", "SOURCE", "ACTOR", "TARGET", "COMMAND", "OUTCOME", "REASON"];
    let rows: Vec<[String; 8]> = entries
        .iter()
        .map(|e| {
            [
                e.seq.to_string(),
                e.at.format("%Y-%m-%d %H:%M:%S").to_string(),
                e.source.as_str().to_string(),
                cell(&e.actor, WIDEST),
                cell(&e.target, WIDEST),
                cell(&e.command, WIDEST),
                e.outcome.as_str().to_string(),
                cell(e.reason.as_deref().unwrap_or("-"), WIDEST),
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &rows {
        for (width, text) in widths.iter_mut().zip(row) {
            *width = (*width).max(text.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, (cell, width)) in cells.zip(widths).enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            // Writing to a String cannot fail.
            let _ = write!(text, "{cell:<width$}");
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in &rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

/// `text` on one line, cut to `widest` characters.
fn cell(text: &str, widest: usize) -> String {
    let flat: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if flat.chars().count() <= widest {
        flat
    } else {
        let mut cut: String = flat.chars().take(widest - 1).collect();
        cut.push('…');
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::os::unix::fs::PermissionsExt;

    fn attempt(n: u32, outcome: Outcome) -> AuditEntry {
        AuditEntry {
            seq: 0,
            at: DateTime::from_timestamp(1_772_366_400 + i64::from(n), 123_456_789).expect("time"),
            source: Source::Central,
            actor: "central-2026".into(),
            command_id: Some(format!("c-{n}")),
            target: "barrage-cher-1".into(),
            command: "move_bay".into(),
            args: json!({ "bay": 1, "position_pct": 40.5 }),
            outcome,
            reason: (outcome == Outcome::Refused).then(|| "interlock".to_string()),
            message: format!("attempt {n}"),
        }
    }

    #[test]
    fn entries_are_numbered_and_listed_newest_first() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut log = AuditLog::open(&dir.path().join("audit.sqlite"), DEFAULT_MAX_BYTES).expect("open");
        let first = log.append(attempt(1, Outcome::Refused)).expect("append");
        let second = log.append(attempt(2, Outcome::Verified)).expect("append");
        assert_eq!((first.seq, second.seq), (1, 2));
        assert_eq!(first.at.timestamp_subsec_millis(), 123, "kept to the millisecond");
        let listed = log.list(10, None).expect("list");
        assert_eq!(listed, vec![second.clone(), first.clone()]);
        assert_eq!(log.list(1, None).expect("list"), vec![second]);
        assert_eq!(log.list(10, Some(2)).expect("list"), vec![first]);
        assert_eq!(log.len().expect("len"), 2);
    }

    #[test]
    fn entries_survive_a_restart() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("audit.sqlite");
        let written = AuditLog::open(&path, DEFAULT_MAX_BYTES)
            .expect("open")
            .append(attempt(1, Outcome::Executed))
            .expect("append");
        let mode = std::fs::metadata(&path).expect("file").permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        let mut log = AuditLog::open(&path, DEFAULT_MAX_BYTES).expect("reopen");
        assert_eq!(log.list(10, None).expect("list"), vec![written]);
        assert_eq!(log.append(attempt(2, Outcome::Failed)).expect("append").seq, 2, "numbering goes on");
        let reader = AuditLog::open_read_only(&path).expect("read-only");
        assert_eq!(reader.len().expect("len"), 2);
    }

    #[test]
    fn the_oldest_entries_go_beyond_the_limit() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut log =
            AuditLog::open_with_limits(&dir.path().join("audit.sqlite"), 3, DEFAULT_MAX_BYTES).expect("open");
        for n in 1..=5 {
            log.append(attempt(n, Outcome::Verified)).expect("append");
        }
        let seqs: Vec<u64> = log.list(10, None).expect("list").iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![5, 4, 3]);
        assert_eq!(log.len().expect("len"), 3);
    }

    #[test]
    fn the_oldest_entries_go_beyond_the_byte_bound_and_the_newest_stays() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("audit.sqlite");
        let mut log = AuditLog::open_with_limits(&path, MAX_ENTRIES, 4096).expect("open");
        for n in 1..=100 {
            log.append(attempt(n, Outcome::Verified)).expect("append");
            assert!(log.bytes() <= 4096, "{} bytes after {n}", log.bytes());
        }
        let kept = log.list(1000, None).expect("list");
        assert!(kept.len() > 5 && kept.len() < 100, "{} kept", kept.len());
        assert_eq!(kept.first().map(|e| e.seq), Some(100), "the newest stays");
        let seqs: Vec<u64> = kept.iter().map(|e| e.seq).collect();
        assert!(seqs.windows(2).all(|w| w[0] == w[1] + 1), "the oldest went first: {seqs:?}");
        // One entry larger than the bound is still kept, alone.
        let mut big = attempt(101, Outcome::Refused);
        big.message = "x".repeat(5000);
        log.append(big).expect("append");
        assert_eq!(log.len().expect("len"), 1);
        // Reopened with a smaller bound, it is trimmed at once.
        drop(log);
        let log = AuditLog::open_with_limits(&path, MAX_ENTRIES, 100).expect("reopen");
        assert_eq!(log.len().expect("len"), 1);
    }

    #[test]
    fn a_log_from_before_the_byte_bound_is_sized_when_opened() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("audit.sqlite");
        {
            let conn = Connection::open(&path).expect("old log");
            conn.execute_batch(&SCHEMA.replace(",\n    bytes      INTEGER NOT NULL DEFAULT 0", ""))
                .expect("old schema");
            conn.execute(
                "INSERT INTO audit (at, source, actor, target, command, args, outcome, message)
                 VALUES ('2026-03-01T12:00:00.000Z', 'local', 'uid 0', 't', 'c', '{}', 'verified', 'm')",
                [],
            )
            .expect("old entry");
        }
        let mut log = AuditLog::open(&path, DEFAULT_MAX_BYTES).expect("open");
        assert!(log.bytes() > 40, "{}", log.bytes());
        assert_eq!(log.append(attempt(2, Outcome::Verified)).expect("append").seq, 2);
        assert_eq!(log.list(10, None).expect("list").len(), 2);
    }

    #[test]
    fn secrets_are_redacted_at_any_depth_and_the_rest_kept() {
        let args = json!({
            "dev_addr": "26011007", "nwk_s_key": "00112233", "AppSKey": "44", "app_key": "55",
            "nested": [{ "password": "x", "position": 40 }], "api_token": "t", "keypad": 3
        });
        assert_eq!(
            redact(&args),
            json!({
                "dev_addr": "26011007", "nwk_s_key": REDACTED, "AppSKey": REDACTED, "app_key": REDACTED,
                "nested": [{ "password": REDACTED, "position": 40 }], "api_token": REDACTED, "keypad": 3
            })
        );
    }

    #[test]
    fn the_json_is_the_result_event_shape() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut log = AuditLog::open(&dir.path().join("audit.sqlite"), DEFAULT_MAX_BYTES).expect("open");
        let entry = log.append(attempt(1, Outcome::Refused)).expect("append");
        let json = serde_json::to_value(&entry).expect("serialize");
        assert_eq!(
            json,
            json!({
                "seq": 1,
                "at": "2026-03-01T12:00:01.123Z",
                "source": "central",
                "actor": "central-2026",
                "command_id": "c-1",
                "target": "barrage-cher-1",
                "command": "move_bay",
                "args": { "bay": 1, "position_pct": 40.5 },
                "outcome": "refused",
                "reason": "interlock",
                "message": "attempt 1"
            })
        );
        let back: AuditEntry = serde_json::from_value(json).expect("deserialize");
        assert_eq!(back, entry);
    }

    #[test]
    fn an_unreadable_row_is_skipped_not_fatal() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut log = AuditLog::open(&dir.path().join("audit.sqlite"), DEFAULT_MAX_BYTES).expect("open");
        log.append(attempt(1, Outcome::Verified)).expect("append");
        log.append(attempt(2, Outcome::Verified)).expect("append");
        log.conn
            .execute("UPDATE audit SET outcome = 'exploded', args = 'not json' WHERE seq = 1", [])
            .expect("damage");
        let listed = log.list(10, None).expect("list");
        assert_eq!(listed.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![2]);
    }

    #[test]
    fn a_corrupt_log_is_moved_aside_and_started_afresh() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("audit.sqlite");
        std::fs::write(&path, vec![0x5a; 8192]).expect("write");
        let mut log = AuditLog::open(&path, DEFAULT_MAX_BYTES).expect("fresh log");
        assert_eq!(log.append(attempt(1, Outcome::Verified)).expect("append").seq, 1);
        let moved = std::fs::read_dir(dir.path())
            .expect("dir")
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().starts_with("audit.sqlite.corrupt-"));
        assert!(moved, "the damaged file is kept for inspection");
    }

    #[test]
    fn the_table_has_one_line_per_entry_with_outcome_and_reason() {
        let mut refused = attempt(1, Outcome::Refused);
        refused.actor = "uid 1000\nforged line".into();
        let entries = vec![
            AuditEntry {
                seq: 2,
                at: DateTime::from_timestamp(1_772_366_402, 0).expect("time"),
                source: Source::Rule,
                actor: "crue-fermeture".into(),
                command_id: None,
                target: "barrage-cher-1".into(),
                command: "stop_bay".into(),
                args: json!({}),
                outcome: Outcome::Verified,
                reason: None,
                message: "ok".into(),
            },
            AuditEntry { seq: 1, source: Source::Local, ..refused },
        ];
        let table = render(&entries);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(lines[0].starts_with("SEQ") && lines[0].contains("OUTCOME"), "{table}");
        assert!(lines[1].contains("2026-03-01 12:00:02") && lines[1].contains("verified"), "{table}");
        assert!(lines[2].contains("uid 1000 forged line") && lines[2].contains("interlock"), "{table}");
        assert_eq!(render(&[]), "no audit entries\n");
    }
}
