//! The audit log: every actuation attempt, from any source (signed central command, local
//! CLI, rule), with its outcome, in `<state_dir>/audit.sqlite` (mode 0640: no secrets;
//! WAL, `synchronous=FULL`, so an entry is on disk before `append` returns; commands are
//! rare, the fsync is affordable). `berrygw audit` lists it; the same JSON is published
//! through the journal as the command's result event.
//!
//! Bounded: at most `MAX_ENTRIES` (100,000) entries are kept, the oldest deleted as new ones
//! come. An entry is a few hundred bytes (arguments at most a few KiB), so the file stays
//! around tens of megabytes. Sequence numbers only grow, even across deletions.
//! A row that does not read back is skipped with a warning; a corrupt file is moved aside
//! and a fresh log started (logged at error level; the old file is kept for inspection).
//! Blocking I/O: call it from the actuation thread or `spawn_blocking`, never an async worker.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{params, Connection, OpenFlags};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::state_db::{open_or_move_aside, open_sqlite};

/// Most entries kept; older ones are deleted.
pub const MAX_ENTRIES: u64 = 100_000;

/// Where a command came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A signed envelope from the central platform.
    Central,
    /// The local API (`berrygw actuate`).
    Local,
    /// A rule or schedule on the gateway.
    Rule,
}

/// What became of an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Not attempted; `reason` says why.
    Refused,
    /// Written to the device.
    Executed,
    /// Written, and the read-back shows the expected state.
    Verified,
    /// Attempted, but the write or the verification failed; `reason` says why.
    Failed,
}

impl Source {
    /// The snake_case label (as in the JSON).
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Central => "central",
            Source::Local => "local",
            Source::Rule => "rule",
        }
    }

    fn from_label(label: &str) -> Option<Source> {
        [Source::Central, Source::Local, Source::Rule].into_iter().find(|s| s.as_str() == label)
    }
}

impl Outcome {
    /// The snake_case label (as in the JSON).
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Refused => "refused",
            Outcome::Executed => "executed",
            Outcome::Verified => "verified",
            Outcome::Failed => "failed",
        }
    }

    fn from_label(label: &str) -> Option<Outcome> {
        [Outcome::Refused, Outcome::Executed, Outcome::Verified, Outcome::Failed]
            .into_iter()
            .find(|o| o.as_str() == label)
    }
}

/// An attempt to record (an [`AuditEntry`] before the log numbers it).
#[derive(Clone, Debug, PartialEq)]
pub struct NewAuditEntry {
    pub at: DateTime<Utc>,
    pub source: Source,
    /// Who: the key id, `uid 1000`, the rule's name.
    pub actor: String,
    /// The envelope's id, for central commands.
    pub command_id: Option<String>,
    pub target: String,
    pub command: String,
    pub args: Value,
    pub outcome: Outcome,
    /// Stable snake_case cause, for `refused` and `failed`.
    pub reason: Option<String>,
    /// For people, one line.
    pub message: String,
}

impl NewAuditEntry {
    /// The entry once the log gave it `seq` (0: not stored).
    pub fn numbered(self, seq: u64) -> AuditEntry {
        AuditEntry {
            seq,
            at: self.at,
            source: self.source,
            actor: self.actor,
            command_id: self.command_id,
            target: self.target,
            command: self.command,
            args: self.args,
            outcome: self.outcome,
            reason: self.reason,
            message: self.message,
        }
    }
}

/// One recorded attempt. Its JSON is the result event and `berrygw audit --json`'s output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEntry {
    /// Grows by one per entry, never reused.
    pub seq: u64,
    /// RFC 3339, UTC, milliseconds.
    #[serde(with = "rfc3339_millis")]
    pub at: DateTime<Utc>,
    pub source: Source,
    pub actor: String,
    pub command_id: Option<String>,
    pub target: String,
    pub command: String,
    pub args: Value,
    pub outcome: Outcome,
    pub reason: Option<String>,
    pub message: String,
}

mod rfc3339_millis {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&at.to_rfc3339_opts(SecondsFormat::Millis, true))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| serde::de::Error::custom(format!("`at` {text:?}: {e}")))
    }
}

/// The durable audit log.
pub struct AuditLog {
    conn: Connection,
    path: PathBuf,
    max_entries: u64,
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
    message    TEXT NOT NULL
);";

impl AuditLog {
    /// Open (or create) the log at `path`, keeping at most [`MAX_ENTRIES`].
    pub fn open(path: &Path) -> anyhow::Result<AuditLog> {
        AuditLog::open_with_limit(path, MAX_ENTRIES)
    }

    /// Open (or create) the log at `path`, keeping at most `max_entries` (at least 1).
    pub fn open_with_limit(path: &Path, max_entries: u64) -> anyhow::Result<AuditLog> {
        let conn = open_or_move_aside(
            path,
            "AUDIT LOG IS CORRUPT",
            "earlier entries are only in the moved file (and in the result events already forwarded)",
            |p| open_sqlite(p, 0o640, SCHEMA),
        )?;
        Ok(AuditLog { conn, path: path.to_path_buf(), max_entries: max_entries.max(1) })
    }

    /// Open an existing log without writing to it (`berrygw audit` beside a running daemon).
    pub fn open_read_only(path: &Path) -> anyhow::Result<AuditLog> {
        if !path.exists() {
            anyhow::bail!("no audit log at {} (no command was attempted yet?)", path.display());
        }
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(AuditLog { conn, path: path.to_path_buf(), max_entries: MAX_ENTRIES })
    }

    /// Record `entry` durably (synced before returning), drop the oldest beyond the limit,
    /// and return it numbered. `at` is kept to the millisecond.
    pub fn append(&mut self, entry: NewAuditEntry) -> anyhow::Result<AuditEntry> {
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
        let limit = i64::try_from(self.max_entries).unwrap_or(i64::MAX);
        tx.execute("DELETE FROM audit WHERE seq <= ?1", [seq.saturating_sub(limit)])?;
        tx.commit().with_context(|| format!("writing {}", self.path.display()))?;
        Ok(NewAuditEntry { at, ..entry }.numbered(u64::try_from(seq).unwrap_or(0)))
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

    fn attempt(n: u32, outcome: Outcome) -> NewAuditEntry {
        NewAuditEntry {
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
        let mut log = AuditLog::open(&dir.path().join("audit.sqlite")).expect("open");
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
        let written =
            AuditLog::open(&path).expect("open").append(attempt(1, Outcome::Executed)).expect("append");
        let mode = std::fs::metadata(&path).expect("file").permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        let mut log = AuditLog::open(&path).expect("reopen");
        assert_eq!(log.list(10, None).expect("list"), vec![written]);
        assert_eq!(log.append(attempt(2, Outcome::Failed)).expect("append").seq, 2, "numbering goes on");
        let reader = AuditLog::open_read_only(&path).expect("read-only");
        assert_eq!(reader.len().expect("len"), 2);
    }

    #[test]
    fn the_oldest_entries_go_beyond_the_limit() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut log = AuditLog::open_with_limit(&dir.path().join("audit.sqlite"), 3).expect("open");
        for n in 1..=5 {
            log.append(attempt(n, Outcome::Verified)).expect("append");
        }
        let seqs: Vec<u64> = log.list(10, None).expect("list").iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![5, 4, 3]);
        assert_eq!(log.len().expect("len"), 3);
    }

    #[test]
    fn the_json_is_the_result_event_shape() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut log = AuditLog::open(&dir.path().join("audit.sqlite")).expect("open");
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
        let mut log = AuditLog::open(&dir.path().join("audit.sqlite")).expect("open");
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
        let mut log = AuditLog::open(&path).expect("fresh log");
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
            AuditEntry {
                seq: 1,
                at: refused.at,
                source: Source::Local,
                actor: refused.actor,
                command_id: refused.command_id,
                target: refused.target,
                command: refused.command,
                args: refused.args,
                outcome: refused.outcome,
                reason: refused.reason,
                message: refused.message,
            },
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
