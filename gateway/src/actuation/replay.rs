//! The replay window: every command id this gateway has admitted, kept durably in
//! `<state_dir>/command-ids.sqlite` (mode 0600, WAL, `synchronous=FULL`) until its
//! `not_after` is well past, so that a command captured on the wire, or delivered twice by
//! the broker, runs at most once, across restarts and power cuts. An id is written (and
//! synced) *before* `admit` says yes: a crash after executing can never let it run again;
//! a crash between the write and the execution loses that command, which the platform
//! sees as a missing result.
//!
//! Ids are forgotten once `not_after + PRUNE_GRACE` is past (on open and every
//! `PRUNE_EVERY` admissions); by then `check` refuses the command as expired. The grace
//! covers a clock that runs ahead and is then stepped back (by up to `PRUNE_GRACE`).
//! Because `check` bounds `not_after` to 24 h ahead, the window holds at most two days of ids.
//!
//! A corrupt file is moved aside (`<path>.corrupt-<time>`) and a fresh, empty window is
//! started, logged at error level. Consequence: an id admitted before could be admitted once
//! more until its `not_after` (at most 24 h), for example if someone re-sends a captured
//! command. That is accepted because the alternative, refusing every command until a person
//! intervenes, is worse on a site that must be operable, and because the exposure is bounded.
//! Blocking I/O: call it from the actuation thread or `spawn_blocking`, never an async worker.

use std::path::{Path, PathBuf};

use anyhow::Context;
use chrono::{DateTime, Duration, SecondsFormat, Utc};
use rusqlite::{params, Connection, OptionalExtension};

use super::envelope::{reason, Refusal};
use crate::state_db::{open_or_move_aside, open_sqlite};

/// How long after its `not_after` an id is still remembered.
pub const PRUNE_GRACE: Duration = Duration::hours(24);

/// Admissions between two prunings.
pub const PRUNE_EVERY: u32 = 64;

/// `Refusal::reason` when the window cannot record an id (disk full, I/O error): the
/// command is refused, since it could not be guaranteed to run only once.
pub const REPLAY_WINDOW_FAILED: &str = "replay_window_failed";

/// The persisted set of admitted command ids.
pub struct ReplayWindow {
    conn: Connection,
    path: PathBuf,
    since_prune: u32,
}

impl ReplayWindow {
    /// Open (or create) the window at `path` and prune it; a corrupt file is moved aside
    /// and a fresh window started (see the module documentation for what that costs).
    pub fn open(path: &Path) -> anyhow::Result<ReplayWindow> {
        let conn = open_or_move_aside(
            path,
            "COMMAND REPLAY WINDOW IS CORRUPT",
            "command ids seen before are forgotten: a captured command could run once more until its \
             not_after (at most 24 h)",
            |p| {
                open_sqlite(
                    p,
                    0o600,
                    "CREATE TABLE IF NOT EXISTS seen (
                         id           TEXT PRIMARY KEY,
                         not_after_ms INTEGER NOT NULL,
                         seen_ms      INTEGER NOT NULL
                     );
                     CREATE INDEX IF NOT EXISTS seen_not_after ON seen (not_after_ms);",
                )
            },
        )?;
        let mut window = ReplayWindow { conn, path: path.to_path_buf(), since_prune: 0 };
        // chrono's clock feature is off in this tree; SystemTime is the same clock.
        window.prune(DateTime::<Utc>::from(std::time::SystemTime::now()))?;
        Ok(window)
    }

    /// Admit command `id` once: refused as `replayed` if it was admitted before, otherwise
    /// recorded durably before returning Ok. A storage failure refuses the command too.
    pub fn admit(&mut self, id: &str, not_after: DateTime<Utc>, now: DateTime<Utc>) -> Result<(), Refusal> {
        let inserted = self
            .conn
            .execute(
                "INSERT INTO seen (id, not_after_ms, seen_ms) VALUES (?1, ?2, ?3) ON CONFLICT (id) DO NOTHING",
                params![id, not_after.timestamp_millis(), now.timestamp_millis()],
            )
            .map_err(|e| self.failed(e.into()))?;
        if inserted == 0 {
            let seen: Option<i64> = self
                .conn
                .query_row("SELECT seen_ms FROM seen WHERE id = ?1", [id], |row| row.get(0))
                .optional()
                .map_err(|e| self.failed(e.into()))?;
            let when = seen
                .and_then(DateTime::from_timestamp_millis)
                .map_or_else(|| "before".to_string(), |t| t.to_rfc3339_opts(SecondsFormat::Secs, true));
            return Err(Refusal::new(
                reason::REPLAYED,
                format!("command id `{id}` was already received ({when}); a command runs at most once"),
            ));
        }
        self.since_prune += 1;
        if self.since_prune >= PRUNE_EVERY {
            // The id is recorded; a failed prune only leaves old ids a little longer.
            if let Err(error) = self.prune(now) {
                tracing::warn!(path = %self.path.display(), "replay window: pruning failed: {error:#}");
            }
        }
        Ok(())
    }

    /// Forget ids whose `not_after + PRUNE_GRACE` is before `now`; returns how many.
    pub fn prune(&mut self, now: DateTime<Utc>) -> anyhow::Result<usize> {
        self.since_prune = 0;
        let horizon = (now - PRUNE_GRACE).timestamp_millis();
        self.conn
            .execute("DELETE FROM seen WHERE not_after_ms < ?1", [horizon])
            .with_context(|| format!("pruning {}", self.path.display()))
    }

    /// How many ids are remembered.
    pub fn len(&self) -> anyhow::Result<u64> {
        let n: i64 = self.conn.query_row("SELECT count(*) FROM seen", [], |row| row.get(0))?;
        Ok(n.max(0) as u64)
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> anyhow::Result<bool> {
        Ok(self.len()? == 0)
    }

    fn failed(&self, error: anyhow::Error) -> Refusal {
        tracing::error!(path = %self.path.display(), "replay window: cannot record a command id: {error:#}");
        Refusal::new(
            REPLAY_WINDOW_FAILED,
            format!("the replay window {} cannot record the id ({error}); refused", self.path.display()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(minutes: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_772_366_400, 0).expect("fixed time") + Duration::minutes(minutes)
    }

    #[test]
    fn an_id_is_admitted_once_then_refused_as_replayed() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut window = ReplayWindow::open(&dir.path().join("ids.sqlite")).expect("open");
        window.admit("c-1", at(10), at(0)).expect("first time");
        let refusal = window.admit("c-1", at(10), at(1)).expect_err("second time");
        assert_eq!(refusal.reason, "replayed");
        assert!(refusal.message.contains("c-1"), "{refusal}");
        window.admit("c-2", at(10), at(1)).expect("another id");
    }

    #[test]
    fn admitted_ids_survive_a_restart() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("ids.sqlite");
        let now = || DateTime::<Utc>::from(std::time::SystemTime::now());
        let far = now() + Duration::hours(1);
        {
            let mut window = ReplayWindow::open(&path).expect("open");
            window.admit("c-1", far, now()).expect("first time");
        }
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).expect("file").permissions())
                & 0o777;
        assert_eq!(mode, 0o600);
        let mut window = ReplayWindow::open(&path).expect("reopen");
        assert_eq!(window.admit("c-1", far, now()).expect_err("after restart").reason, "replayed");
    }

    #[test]
    fn ids_are_forgotten_a_grace_period_after_not_after() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut window = ReplayWindow::open(&dir.path().join("ids.sqlite")).expect("open");
        window.admit("old", at(10), at(0)).expect("admit");
        window.admit("new", at(60 * 30), at(0)).expect("admit");
        assert_eq!(window.prune(at(10) + PRUNE_GRACE).expect("prune"), 0, "not yet past the grace");
        assert_eq!(window.prune(at(11) + PRUNE_GRACE).expect("prune"), 1);
        assert_eq!(window.len().expect("len"), 1);
        window.admit("old", at(10), at(11) + PRUNE_GRACE).expect("forgotten (check refuses it as expired)");
        assert_eq!(window.admit("new", at(60 * 30), at(12)).expect_err("kept").reason, "replayed");
    }

    #[test]
    fn admitting_prunes_every_so_often() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut window = ReplayWindow::open(&dir.path().join("ids.sqlite")).expect("open");
        window.admit("old", at(0), at(-1)).expect("admit");
        let later = at(1) + PRUNE_GRACE;
        for i in 0..PRUNE_EVERY {
            window.admit(&format!("c-{i}"), later + Duration::hours(1), later).expect("admit");
        }
        assert_eq!(window.len().expect("len"), u64::from(PRUNE_EVERY), "`old` pruned along the way");
    }

    #[test]
    fn a_corrupt_window_is_moved_aside_and_started_afresh() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("ids.sqlite");
        std::fs::write(&path, b"this is not a database, it is a log line\n".repeat(200)).expect("write");
        let mut window = ReplayWindow::open(&path).expect("fresh window");
        window.admit("c-1", at(10), at(0)).expect("works");
        let moved: Vec<_> = std::fs::read_dir(dir.path())
            .expect("dir")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("ids.sqlite.corrupt-"))
            .collect();
        assert_eq!(moved.len(), 1, "the damaged file is kept for inspection");
    }

    #[test]
    fn a_window_that_cannot_be_written_refuses() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("ids.sqlite");
        let mut window = ReplayWindow::open(&path).expect("open");
        window.conn.execute_batch("PRAGMA query_only = ON;").expect("make read-only");
        let refusal = window.admit("c-1", at(10), at(0)).expect_err("cannot record");
        assert_eq!(refusal.reason, REPLAY_WINDOW_FAILED);
    }
}
