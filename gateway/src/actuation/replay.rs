//! The replay window: every command id this gateway has admitted, by the key that signed
//! it, kept durably in `<state_dir>/replay.sqlite` (mode 0600, WAL, `synchronous=FULL`)
//! until its `not_after` is well past, so that a command captured on the wire, or
//! delivered twice by the broker, runs at most once, across restarts and power cuts. An id
//! is written (and synced) *before* `admit` says yes: a crash after executing can never let
//! it run again; a crash between the write and the execution loses that command, which the
//! platform sees as a missing result. Ids are kept per key: one key cannot spend an id that
//! another key's command will use.
//!
//! Two times make the window hold even when the wall clock or the file cannot be trusted:
//!
//! - **The high-water mark**: the latest time the window has seen (the wall clock at each
//!   admission, and each admitted `issued_at`), persisted with the id. A `not_after` before it
//!   is refused as expired, and ids are forgotten only once `not_after + PRUNE_GRACE` is
//!   before it: a clock stepped back cannot make a forgotten id's command fresh again.
//! - **The creation time**: when this window was started. An envelope issued before it is
//!   refused (`issued_before_window`), since the window cannot know whether it ran. A missing
//!   `issued_at` counts as `not_after - MAX_VALIDITY`, the earliest the envelope could have
//!   been accepted.
//!
//! The trade-off: a window that is lost (file deleted, corrupt and moved aside, package
//! purged and reinstalled) refuses every envelope issued before it was started; the central
//! platform re-signs those commands (with a fresh `issued_at` they are accepted at once;
//! without one, only a day later). Running a command twice is worse than refusing it.
//! A clock set far ahead once (then corrected) makes commands look expired until real time
//! catches up with the mark, or until the window is deleted.
//!
//! Blocking I/O: call it from `block_in_place` or `spawn_blocking`, never straight from an
//! async task.

use std::path::{Path, PathBuf};

use anyhow::Context;
use chrono::{DateTime, Duration, SecondsFormat, Utc};
use rusqlite::{params, Connection, OptionalExtension};

use crate::state_db::{open_or_move_aside, open_sqlite};
use berrygw_proto::envelope::{reason, Refusal, MAX_VALIDITY};

/// How long after its `not_after` an id is still remembered.
pub const PRUNE_GRACE: Duration = Duration::hours(24);

/// Admissions between two prunings.
pub const PRUNE_EVERY: u32 = 64;

/// `Refusal::reason` when the window cannot record an id (disk full, I/O error): the
/// command is refused, since it could not be guaranteed to run only once.
pub const REPLAY_WINDOW_FAILED: &str = "replay_window_failed";

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS admitted (
         key_id       TEXT NOT NULL,
         id           TEXT NOT NULL,
         not_after_ms INTEGER NOT NULL,
         seen_ms      INTEGER NOT NULL,
         PRIMARY KEY (key_id, id)
     );
     CREATE INDEX IF NOT EXISTS admitted_not_after ON admitted (not_after_ms);
     CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
     DROP TABLE IF EXISTS seen;";

/// What an envelope brings to the window.
#[derive(Clone, Copy, Debug)]
pub struct Admission<'a> {
    pub key_id: &'a str,
    pub id: &'a str,
    pub not_after: DateTime<Utc>,
    pub issued_at: Option<DateTime<Utc>>,
}

/// The persisted set of admitted command ids.
pub struct ReplayWindow {
    conn: Connection,
    path: PathBuf,
    since_prune: u32,
    created: DateTime<Utc>,
    high_water: DateTime<Utc>,
}

impl ReplayWindow {
    /// Open (or create) the window at `path` and prune it; a corrupt file is moved aside
    /// and a fresh window started (see the module documentation for what that costs). A
    /// window written by a version without a creation time starts afresh too.
    pub fn open(path: &Path) -> anyhow::Result<ReplayWindow> {
        // chrono's clock feature is off in this tree; SystemTime is the same clock.
        ReplayWindow::open_at(path, DateTime::<Utc>::from(std::time::SystemTime::now()))
    }

    /// [`open`](Self::open) with the wall clock reading `now`.
    pub fn open_at(path: &Path, now: DateTime<Utc>) -> anyhow::Result<ReplayWindow> {
        let conn = open_or_move_aside(
            path,
            "COMMAND REPLAY WINDOW IS CORRUPT",
            "a fresh window is started: central commands issued before now are refused (the \
             platform must re-sign them), since the window cannot tell whether they ran",
            |p| open_sqlite(p, 0o600, SCHEMA),
        )?;
        let read = |name: &str| -> anyhow::Result<Option<i64>> {
            Ok(conn.query_row("SELECT value FROM meta WHERE name = ?1", [name], |r| r.get(0)).optional()?)
        };
        let created = match read("created_ms")?.and_then(DateTime::from_timestamp_millis) {
            Some(t) => t,
            None => {
                conn.execute(
                    "INSERT OR REPLACE INTO meta (name, value) VALUES ('created_ms', ?1)",
                    [now.timestamp_millis()],
                )
                .with_context(|| format!("writing {}", path.display()))?;
                tracing::warn!(
                    path = %path.display(),
                    "replay window started: central commands issued before now are refused"
                );
                now
            }
        };
        let high_water = read("high_water_ms")?.and_then(DateTime::from_timestamp_millis).unwrap_or(created);
        let mut window = ReplayWindow { conn, path: path.to_path_buf(), since_prune: 0, created, high_water };
        window.prune(now)?;
        Ok(window)
    }

    /// When this window was started: envelopes issued before are refused.
    pub fn created(&self) -> DateTime<Utc> {
        self.created
    }

    /// The latest time this window has seen.
    pub fn high_water(&self) -> DateTime<Utc> {
        self.high_water
    }

    /// Admit an envelope once: refused if it is older than the window or the high-water
    /// mark, or as `replayed` if its key admitted its id before; otherwise recorded durably
    /// (with the new high-water mark) before returning Ok. A storage failure refuses it too.
    pub fn admit(&mut self, a: Admission<'_>, now: DateTime<Utc>) -> Result<(), Refusal> {
        if a.not_after < self.high_water {
            return Err(Refusal::new(
                reason::EXPIRED,
                format!(
                    "not_after {} is before {}, the latest time this gateway has seen (was its clock set back?)",
                    rfc3339(a.not_after),
                    rfc3339(self.high_water)
                ),
            ));
        }
        let issued = a.issued_at.unwrap_or(a.not_after - MAX_VALIDITY);
        if issued < self.created {
            let what = if a.issued_at.is_some() { "issued" } else { "without issued_at, possibly accepted" };
            return Err(Refusal::new(
                reason::ISSUED_BEFORE_WINDOW,
                format!(
                    "{what} at {}, before this gateway's replay window was started ({}); re-sign it{}",
                    rfc3339(issued),
                    rfc3339(self.created),
                    if a.issued_at.is_some() { "" } else { " with a current issued_at" }
                ),
            ));
        }
        let high_water = self.high_water.max(now).max(a.issued_at.unwrap_or(now));
        let inserted = self.record(a, now, high_water).map_err(|e| self.failed(e))?;
        if !inserted {
            let seen: Option<i64> = self
                .conn
                .query_row(
                    "SELECT seen_ms FROM admitted WHERE key_id = ?1 AND id = ?2",
                    [a.key_id, a.id],
                    |row| row.get(0),
                )
                .optional()
                .map_err(|e| self.failed(e.into()))?;
            let when =
                seen.and_then(DateTime::from_timestamp_millis).map_or_else(|| "before".to_string(), rfc3339);
            return Err(Refusal::new(
                reason::REPLAYED,
                format!("command id `{}` was already received ({when}); a command runs at most once", a.id),
            ));
        }
        self.high_water = high_water;
        self.since_prune += 1;
        if self.since_prune >= PRUNE_EVERY {
            // The id is recorded; a failed prune only leaves old ids a little longer.
            if let Err(error) = self.prune(now) {
                tracing::warn!(path = %self.path.display(), "replay window: pruning failed: {error:#}");
            }
        }
        Ok(())
    }

    /// Insert the id and move the mark in one transaction; false if the id was there.
    fn record(
        &mut self,
        a: Admission<'_>,
        now: DateTime<Utc>,
        high_water: DateTime<Utc>,
    ) -> anyhow::Result<bool> {
        let tx = self.conn.transaction()?;
        let inserted = tx.execute(
            "INSERT INTO admitted (key_id, id, not_after_ms, seen_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (key_id, id) DO NOTHING",
            params![a.key_id, a.id, a.not_after.timestamp_millis(), now.timestamp_millis()],
        )?;
        if inserted == 0 {
            return Ok(false);
        }
        tx.execute(
            "INSERT OR REPLACE INTO meta (name, value) VALUES ('high_water_ms', ?1)",
            [high_water.timestamp_millis()],
        )?;
        tx.commit()?;
        Ok(true)
    }

    /// Forget ids whose `not_after + PRUNE_GRACE` is before both `now` and the high-water
    /// mark; returns how many.
    pub fn prune(&mut self, now: DateTime<Utc>) -> anyhow::Result<usize> {
        self.since_prune = 0;
        let horizon = (now.min(self.high_water.max(self.created)) - PRUNE_GRACE).timestamp_millis();
        self.conn
            .execute("DELETE FROM admitted WHERE not_after_ms < ?1", [horizon])
            .with_context(|| format!("pruning {}", self.path.display()))
    }

    /// How many ids are remembered.
    pub fn len(&self) -> anyhow::Result<u64> {
        let n: i64 = self.conn.query_row("SELECT count(*) FROM admitted", [], |row| row.get(0))?;
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

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(minutes: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_772_366_400, 0).expect("fixed time") + Duration::minutes(minutes)
    }

    /// Envelope `id` of key `central`, valid until `not_after`, issued at `issued` minutes.
    fn env(id: &str, not_after: DateTime<Utc>, issued: i64) -> Admission<'_> {
        Admission { key_id: "central", id, not_after, issued_at: Some(at(issued)) }
    }

    /// A window started an hour before `at(0)`.
    fn window(path: &Path) -> ReplayWindow {
        ReplayWindow::open_at(path, at(-60)).expect("open")
    }

    #[test]
    fn an_id_is_admitted_once_then_refused_as_replayed() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut window = window(&dir.path().join("ids.sqlite"));
        window.admit(env("c-1", at(10), 0), at(0)).expect("first time");
        let refusal = window.admit(env("c-1", at(10), 0), at(1)).expect_err("second time");
        assert_eq!(refusal.reason, "replayed");
        assert!(refusal.message.contains("c-1"), "{refusal}");
        window.admit(env("c-2", at(10), 0), at(1)).expect("another id");
    }

    #[test]
    fn ids_are_kept_per_key_so_one_key_cannot_spend_anothers() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut window = window(&dir.path().join("ids.sqlite"));
        let low = Admission { key_id: "eclairage", ..env("c-1", at(10), 0) };
        window.admit(low, at(0)).expect("the low-scope key's c-1");
        window.admit(env("c-1", at(10), 0), at(0)).expect("central's c-1 is another command");
        assert_eq!(window.admit(low, at(1)).expect_err("again").reason, "replayed");
    }

    #[test]
    fn admitted_ids_survive_a_restart() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("ids.sqlite");
        window(&path).admit(env("c-1", at(60), 0), at(0)).expect("first time");
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).expect("file").permissions())
                & 0o777;
        assert_eq!(mode, 0o600);
        let mut window = ReplayWindow::open_at(&path, at(1)).expect("reopen");
        assert_eq!(window.created(), at(-60), "the creation time is kept");
        assert_eq!(window.admit(env("c-1", at(60), 0), at(1)).expect_err("after restart").reason, "replayed");
    }

    #[test]
    fn ids_are_forgotten_a_grace_period_after_not_after() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut window = window(&dir.path().join("ids.sqlite"));
        window.admit(env("old", at(10), 0), at(0)).expect("admit");
        window.admit(env("new", at(60 * 30), 0), at(0)).expect("admit");
        let later = at(11) + PRUNE_GRACE;
        window.admit(env("moves-the-mark", later + Duration::hours(1), 0), later).expect("admit");
        assert_eq!(window.prune(at(10) + PRUNE_GRACE).expect("prune"), 0, "not yet past the grace");
        assert_eq!(window.prune(later).expect("prune"), 1);
        assert_eq!(window.len().expect("len"), 2);
        assert_eq!(window.admit(env("new", at(60 * 30), 0), later).expect_err("kept").reason, "replayed");
    }

    #[test]
    fn a_clock_stepped_back_cannot_revive_a_forgotten_id() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("ids.sqlite");
        let mut window = window(&path);
        window.admit(env("captured", at(10), 0), at(0)).expect("runs once");
        // Two days later the id is forgotten...
        let later = at(0) + Duration::days(2);
        window.admit(env("other", later + Duration::minutes(5), 2 * 24 * 60), later).expect("admit");
        window.prune(later).expect("prune");
        // ...then the clock is stepped back to before its not_after (even across a restart).
        let mut window = ReplayWindow::open_at(&path, at(1)).expect("reopen");
        let refusal = window.admit(env("captured", at(10), 0), at(1)).expect_err("not again");
        assert_eq!(refusal.reason, "expired", "{refusal}");
        assert!(refusal.message.contains("set back"), "{refusal}");
    }

    #[test]
    fn a_fresh_window_refuses_what_was_issued_before_it() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut window = window(&dir.path().join("ids.sqlite"));
        let refusal = window.admit(env("c-1", at(10), -61), at(0)).expect_err("issued before");
        assert_eq!(refusal.reason, "issued_before_window");
        window.admit(env("c-2", at(10), -59), at(0)).expect("issued after the start");
        // Without issued_at: judged by the earliest it could have been accepted.
        let bare = |id, not_after| Admission { key_id: "central", id, not_after, issued_at: None };
        let refusal = window.admit(bare("c-3", at(10)), at(0)).expect_err("could be older");
        assert_eq!(refusal.reason, "issued_before_window");
        assert!(refusal.message.contains("issued_at"), "says how to fix it: {refusal}");
        window.admit(bare("c-4", at(-60) + MAX_VALIDITY), at(0)).expect("cannot predate the window");
    }

    #[test]
    fn a_deleted_window_does_not_let_a_captured_command_run_again() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("ids.sqlite");
        window(&path).admit(env("captured", at(10), 0), at(0)).expect("runs once");
        std::fs::remove_file(&path).expect("delete");
        let mut window = ReplayWindow::open_at(&path, at(1)).expect("fresh");
        assert_eq!(window.created(), at(1));
        let refusal = window.admit(env("captured", at(10), 0), at(2)).expect_err("not again");
        assert_eq!(refusal.reason, "issued_before_window");
    }

    #[test]
    fn admitting_prunes_every_so_often() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut window = window(&dir.path().join("ids.sqlite"));
        window.admit(env("old", at(0), -1), at(-1)).expect("admit");
        let later = at(1) + PRUNE_GRACE;
        for i in 0..PRUNE_EVERY {
            window.admit(env(&format!("c-{i}"), later + Duration::hours(1), 0), later).expect("admit");
        }
        assert_eq!(window.len().expect("len"), u64::from(PRUNE_EVERY), "`old` pruned along the way");
    }

    #[test]
    fn a_corrupt_window_is_moved_aside_and_started_afresh() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("ids.sqlite");
        std::fs::write(&path, b"this is not a database, it is a log line\n".repeat(200)).expect("write");
        let mut window = window(&path);
        window.admit(env("c-1", at(10), 0), at(0)).expect("works");
        assert_eq!(
            window.admit(env("c-0", at(10), -61), at(0)).expect_err("older").reason,
            "issued_before_window"
        );
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
        let mut window = window(&path);
        window.conn.execute_batch("PRAGMA query_only = ON;").expect("make read-only");
        let refusal = window.admit(env("c-1", at(10), 0), at(0)).expect_err("cannot record");
        assert_eq!(refusal.reason, REPLAY_WINDOW_FAILED);
    }
}
