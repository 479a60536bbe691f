//! `<state_dir>/ledger.sqlite` (0600, like the rest of the state): the incidents and
//! maintenance windows of this gateway (`berrygw_proto::availability`). WAL and
//! `synchronous=FULL` like the audit log: what a transaction wrote is on disk when it
//! returns (the ledger batches its incidents into one transaction per heartbeat, see
//! `ledger/mod.rs`). A corrupt file is moved aside and a fresh ledger started, loudly.
//! Small pages (1 KiB) and no AUTOINCREMENT table: a transaction writes few pages.
//!
//! Bounded: at most `max_incidents` incidents; the oldest closed ones are deleted first.
//! Ids only grow (the newest row is never deleted). Blocking I/O: call it from
//! `block_in_place` or `spawn_blocking`.

use std::path::Path;

use berrygw_proto::availability::{Incident, Maintenance, Span};
use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::state_db::{open_or_move_aside, open_sqlite_paged};

/// Default bound on the incidents kept (about 10 MB; a month of an incident a minute).
pub const DEFAULT_MAX_INCIDENTS: u64 = 50_000;

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS incident (
    id        INTEGER PRIMARY KEY,
    service   TEXT NOT NULL,
    cause     TEXT NOT NULL,
    start_ms  INTEGER NOT NULL,
    end_ms    INTEGER,
    ended     TEXT,
    estimated INTEGER NOT NULL DEFAULT 0,
    detail    TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS maintenance (
    id       INTEGER PRIMARY KEY,
    start_ms INTEGER NOT NULL,
    end_ms   INTEGER,
    reason   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;";

/// The ledger's file.
pub struct Store {
    conn: Connection,
    max_incidents: u64,
}

fn incident(row: &Row<'_>) -> rusqlite::Result<Incident> {
    Ok(Incident {
        id: row.get::<_, i64>(0)? as u64,
        service: row.get(1)?,
        cause: row.get(2)?,
        start_ms: row.get(3)?,
        end_ms: row.get(4)?,
        ended: row.get(5)?,
        estimated: row.get::<_, i64>(6)? != 0,
        detail: row.get(7)?,
    })
}

fn maintenance(row: &Row<'_>) -> rusqlite::Result<Maintenance> {
    Ok(Maintenance {
        id: row.get::<_, i64>(0)? as u64,
        start_ms: row.get(1)?,
        end_ms: row.get(2)?,
        reason: row.get(3)?,
    })
}

const INCIDENT: &str = "SELECT id, service, cause, start_ms, end_ms, ended, estimated, detail FROM incident";

impl Store {
    /// Open (or create) the ledger at `path`; a corrupt one is moved aside and started afresh.
    pub fn open(path: &Path, max_incidents: u64) -> anyhow::Result<Store> {
        let conn = open_or_move_aside(
            path,
            "AVAILABILITY LEDGER IS CORRUPT",
            "earlier incidents are only in the moved file (and in the incident events and month records already forwarded)",
            |p| open_sqlite_paged(p, 0o600, Some(1024), SCHEMA),
        )?;
        Ok(Store { conn, max_incidents: max_incidents.max(1) })
    }

    /// A number kept beside the incidents (`observed_since_ms`, `day_sent`...).
    pub fn meta(&self, key: &str) -> anyhow::Result<Option<i64>> {
        Ok(self.conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0)).optional()?)
    }

    pub fn set_meta(&self, key: &str, value: i64) -> anyhow::Result<()> {
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }

    /// Write `rows` in one transaction (each a new incident, or the new state of one: its
    /// end), then keep the ledger within its bound.
    pub fn upsert(&mut self, rows: &[Incident]) -> anyhow::Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut st = tx.prepare_cached(
                "INSERT INTO incident (id, service, cause, start_ms, end_ms, ended, estimated, detail) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
                 ON CONFLICT(id) DO UPDATE SET end_ms = excluded.end_ms, ended = excluded.ended, \
                 estimated = excluded.estimated",
            )?;
            for i in rows {
                st.execute(params![
                    i.id as i64,
                    i.service,
                    i.cause,
                    i.start_ms,
                    i.end_ms.map(|e| e.max(i.start_ms)),
                    i.ended,
                    i.estimated as i64,
                    i.detail
                ])?;
            }
        }
        let newest = rows.iter().map(|i| i.id).max().unwrap_or(0) as i64;
        let n: i64 = tx.query_row("SELECT count(*) FROM incident", [], |r| r.get(0))?;
        if n as u64 > self.max_incidents {
            tx.execute(
                "DELETE FROM incident WHERE id IN (SELECT id FROM incident WHERE end_ms IS NOT NULL AND id != ?1 \
                 ORDER BY id LIMIT ?2)",
                params![newest, n - self.max_incidents as i64],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The highest incident id ever kept (the newest row is never deleted).
    pub fn max_id(&self) -> anyhow::Result<u64> {
        Ok(self.conn.query_row("SELECT coalesce(max(id), 0) FROM incident", [], |r| r.get::<_, i64>(0))?
            as u64)
    }

    /// Close incident `id`; `estimated` marks the end as a bound, not an observation.
    pub fn close(&self, id: u64, end_ms: i64, ended: &str, estimated: bool) -> anyhow::Result<()> {
        self.conn.execute(
            "UPDATE incident SET end_ms = max(?2, start_ms), ended = ?3, estimated = estimated OR ?4 \
             WHERE id = ?1 AND end_ms IS NULL",
            params![id as i64, end_ms, ended, estimated as i64],
        )?;
        Ok(())
    }

    /// The incidents still open (left by the previous run, or of this one).
    pub fn open_incidents(&self) -> anyhow::Result<Vec<Incident>> {
        let mut st = self.conn.prepare(&format!("{INCIDENT} WHERE end_ms IS NULL ORDER BY id"))?;
        let rows = st.query_map([], incident)?;
        Ok(rows.filter_map(Result::ok).collect())
    }

    /// One incident.
    pub fn incident(&self, id: u64) -> anyhow::Result<Option<Incident>> {
        Ok(self.conn.query_row(&format!("{INCIDENT} WHERE id = ?1"), [id as i64], incident).optional()?)
    }

    /// The closed incidents with an id above `after`, oldest first (those not yet handed upstream).
    pub fn closed_after(&self, after: u64, limit: usize) -> anyhow::Result<Vec<Incident>> {
        let mut st = self
            .conn
            .prepare(&format!("{INCIDENT} WHERE id > ?1 AND end_ms IS NOT NULL ORDER BY id LIMIT ?2"))?;
        let rows = st.query_map(params![after as i64, limit as i64], incident)?;
        Ok(rows.filter_map(Result::ok).collect())
    }

    /// The incidents and maintenance windows that overlap `span` (open ones included).
    pub fn overlapping(&self, span: Span) -> anyhow::Result<(Vec<Incident>, Vec<Maintenance>)> {
        let mut st = self.conn.prepare(&format!(
            "{INCIDENT} WHERE start_ms < ?2 AND (end_ms IS NULL OR end_ms > ?1) ORDER BY id"
        ))?;
        let incidents =
            st.query_map(params![span.start_ms, span.end_ms], incident)?.filter_map(Result::ok).collect();
        let mut st = self.conn.prepare(
            "SELECT id, start_ms, end_ms, reason FROM maintenance \
             WHERE start_ms < ?2 AND (end_ms IS NULL OR end_ms > ?1) ORDER BY id",
        )?;
        let windows =
            st.query_map(params![span.start_ms, span.end_ms], maintenance)?.filter_map(Result::ok).collect();
        Ok((incidents, windows))
    }

    /// The maintenance window in progress, if any.
    pub fn open_maintenance(&self) -> anyhow::Result<Option<Maintenance>> {
        Ok(self
            .conn
            .query_row(
                "SELECT id, start_ms, end_ms, reason FROM maintenance WHERE end_ms IS NULL ORDER BY id DESC LIMIT 1",
                [],
                maintenance,
            )
            .optional()?)
    }

    /// Start a maintenance window; its id.
    pub fn start_maintenance(&self, start_ms: i64, reason: &str) -> anyhow::Result<u64> {
        let id: i64 =
            self.conn.query_row("SELECT coalesce(max(id), 0) + 1 FROM maintenance", [], |r| r.get(0))?;
        self.conn.execute(
            "INSERT INTO maintenance (id, start_ms, end_ms, reason) VALUES (?1, ?2, NULL, ?3)",
            params![id, start_ms, reason],
        )?;
        Ok(id as u64)
    }

    /// End the maintenance window in progress.
    pub fn stop_maintenance(&self, id: u64, end_ms: i64) -> anyhow::Result<()> {
        self.conn.execute(
            "UPDATE maintenance SET end_ms = max(?2, start_ms) WHERE id = ?1 AND end_ms IS NULL",
            params![id as i64, end_ms],
        )?;
        Ok(())
    }

    /// The latest instant the ledger itself recorded (a start or an end): berrygw was alive then.
    pub fn latest_ms(&self) -> anyhow::Result<Option<i64>> {
        Ok(self.conn.query_row(
            "SELECT max(coalesce((SELECT max(max(start_ms, coalesce(end_ms, start_ms))) FROM incident), -1), \
                        coalesce((SELECT max(max(start_ms, coalesce(end_ms, start_ms))) FROM maintenance), -1))",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map(|ms| (ms >= 0).then_some(ms))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(service: &str, start_ms: i64) -> Incident {
        Incident {
            id: 0,
            service: service.into(),
            cause: "cannot_connect".into(),
            start_ms,
            end_ms: None,
            ended: None,
            estimated: false,
            detail: String::new(),
        }
    }

    /// A new incident with the next id, as the ledger writes one; its id.
    fn insert(s: &mut Store, i: &Incident) -> anyhow::Result<u64> {
        let id = s.max_id()? + 1;
        s.upsert(&[Incident { id, ..i.clone() }])?;
        Ok(id)
    }

    fn count(s: &Store) -> anyhow::Result<u64> {
        Ok(s.conn.query_row("SELECT count(*) FROM incident", [], |r| r.get::<_, i64>(0))? as u64)
    }

    #[test]
    fn incidents_are_opened_closed_and_read_back_by_span() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("ledger.sqlite");
        let mut s = Store::open(&path, 100)?;
        let a = insert(&mut s, &open("sink:chirpstack", 1_000))?;
        let b = insert(&mut s, &open("radio", 5_000))?;
        assert_eq!((a, b), (1, 2));
        s.close(a, 3_000, "recovered", false)?;
        // Closing twice changes nothing; an end before the start is the start.
        s.close(a, 9_000, "recovered", false)?;
        s.close(b, 4_000, "power_cut", true)?;
        let back = s.incident(b)?.unwrap();
        assert_eq!(
            (back.end_ms, back.estimated, back.ended.as_deref()),
            (Some(5_000), true, Some("power_cut"))
        );
        assert_eq!(s.incident(a)?.unwrap().end_ms, Some(3_000));
        let (i, _) = s.overlapping(Span { start_ms: 3_500, end_ms: 10_000 })?;
        assert_eq!(i.iter().map(|i| i.id).collect::<Vec<_>>(), vec![b]);
        assert_eq!(s.closed_after(1, 10)?.iter().map(|i| i.id).collect::<Vec<_>>(), vec![b]);
        drop(s);
        // Read back after a reopen.
        let s = Store::open(&path, 100)?;
        assert_eq!(count(&s)?, 2);
        Ok(())
    }

    #[test]
    fn the_ledger_is_bounded_oldest_closed_first_and_ids_keep_growing() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let mut s = Store::open(&dir.path().join("ledger.sqlite"), 3)?;
        let long_open = insert(&mut s, &open("field:dam", 0))?;
        for n in 1..=5 {
            let id = insert(&mut s, &open("sink:app", n * 10))?;
            s.close(id, n * 10 + 5, "recovered", false)?;
        }
        assert_eq!(count(&s)?, 3);
        let kept: Vec<u64> =
            s.overlapping(Span { start_ms: 0, end_ms: 1_000 })?.0.iter().map(|i| i.id).collect();
        // The open one is kept, the newest closed ones with it.
        assert_eq!(kept, vec![long_open, 5, 6]);
        assert_eq!(insert(&mut s, &open("radio", 100))?, 7);
        let page: i64 = s.conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        assert_eq!(page, 1024);
        Ok(())
    }

    #[test]
    fn a_corrupt_ledger_is_moved_aside_and_a_fresh_one_started() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("ledger.sqlite");
        std::fs::write(&path, vec![0x5a; 8192])?;
        let mut s = Store::open(&path, 10)?;
        assert_eq!(insert(&mut s, &open("radio", 1))?, 1);
        let moved = std::fs::read_dir(dir.path())?
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().starts_with("ledger.sqlite.corrupt-"));
        assert!(moved, "the damaged file is kept aside");
        Ok(())
    }

    #[test]
    fn maintenance_windows_start_and_stop() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let s = Store::open(&dir.path().join("ledger.sqlite"), 10)?;
        assert!(s.open_maintenance()?.is_none());
        let id = s.start_maintenance(1_000, "antenna")?;
        assert_eq!(s.open_maintenance()?.map(|m| m.reason), Some("antenna".into()));
        s.stop_maintenance(id, 2_000)?;
        assert!(s.open_maintenance()?.is_none());
        let (_, m) = s.overlapping(Span { start_ms: 0, end_ms: 5_000 })?;
        assert_eq!(m[0].end_ms, Some(2_000));
        Ok(())
    }
}
