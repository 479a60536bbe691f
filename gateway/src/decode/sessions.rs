//! Session state of the devices this gateway decodes, kept in
//! `<state_dir>/sessions.sqlite` (mode 0600, it holds keys): the keys of OTAA
//! sessions (derived from a join this gateway relayed, or pushed by the
//! central side), the keys an ABP device was last seen with, and the last
//! accepted uplink counter of every device, so replays stay refused across
//! restarts.
//!
//! A counter is durable before the reading it admitted leaves the decoder
//! (the decoder thread writes the counters of a batch of frames in one
//! transaction, then lets their readings out), so a crash never reopens a
//! counter: a frame replayed after a restart is refused. Keys (joins, pushes)
//! are written at once.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::SystemTime;

use anyhow::Context;
use berrygw_lora::phy::{AesKey, DevAddr, Eui64};
use berrygw_lora::security::SessionKeys;
use rusqlite::{params, Connection};

use crate::state_db::{open_or_move_aside, open_sqlite};

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS session (
    dev_eui    INTEGER PRIMARY KEY,
    dev_addr   INTEGER NOT NULL,
    nwk_s_key  BLOB NOT NULL,
    app_s_key  BLOB NOT NULL,
    source     TEXT NOT NULL,
    last_fcnt  INTEGER,
    updated_ms INTEGER NOT NULL
);";

/// Where a session's keys came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionSource {
    /// Written in the registry.
    Abp,
    /// Derived from a JoinRequest and the JoinAccept this gateway transmitted.
    Join,
    /// Pushed by the central side over the app sink.
    Pushed,
}

impl SessionSource {
    /// The label in the store, logs and readings.
    pub fn label(self) -> &'static str {
        match self {
            SessionSource::Abp => "abp",
            SessionSource::Join => "join",
            SessionSource::Pushed => "pushed",
        }
    }

    fn from_label(s: &str) -> Option<SessionSource> {
        match s {
            "abp" => Some(SessionSource::Abp),
            "join" => Some(SessionSource::Join),
            "pushed" => Some(SessionSource::Pushed),
            _ => None,
        }
    }
}

/// One device's session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub keys: SessionKeys,
    pub source: SessionSource,
    /// The last uplink counter accepted in this session.
    pub last_fcnt: Option<u32>,
}

/// The durable copy of every session; the decoder keeps the live one in memory.
pub struct SessionStore {
    conn: Connection,
    dirty: HashSet<Eui64>,
}

impl SessionStore {
    /// Open (or create) the store and read every session. A damaged file is moved
    /// aside (`<path>.corrupt-<time>`) and a fresh one started: devices then
    /// rejoin or are pushed again, and ABP counters start over.
    pub fn open(path: &Path) -> anyhow::Result<(SessionStore, HashMap<Eui64, Session>)> {
        open_or_move_aside(
            path,
            "SESSION STORE IS CORRUPT",
            "OTAA devices must rejoin or be pushed again, ABP counters start over",
            |p| {
                let conn = open_sqlite(p, 0o600, SCHEMA)?;
                let sessions = read_sessions(&conn)?;
                Ok((SessionStore { conn, dirty: HashSet::new() }, sessions))
            },
        )
    }

    /// The sessions in the store at `path`, read without changing anything
    /// (for `berrygw decode` beside a running daemon); empty when there is no store.
    pub fn peek(path: &Path) -> anyhow::Result<HashMap<Eui64, Session>> {
        if !path.exists() {
            return Ok(HashMap::new());
        }
        let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .with_context(|| format!("opening {}", path.display()))?;
        read_sessions(&conn).with_context(|| format!("reading {}", path.display()))
    }
}

/// Every session row of the store; rows that do not read back are skipped (and logged), never trusted.
fn read_sessions(conn: &Connection) -> anyhow::Result<HashMap<Eui64, Session>> {
    let mut sessions = HashMap::new();
    let mut stmt =
        conn.prepare("SELECT dev_eui, dev_addr, nwk_s_key, app_s_key, source, last_fcnt FROM session")?;
    let rows = stmt.query_map([], |row| {
        Ok((
            row.get::<_, i64>(0)?,
            row.get::<_, i64>(1)?,
            row.get::<_, Vec<u8>>(2)?,
            row.get::<_, Vec<u8>>(3)?,
            row.get::<_, String>(4)?,
            row.get::<_, Option<i64>>(5)?,
        ))
    })?;
    for row in rows {
        let (eui, addr, nwk, app, source, last) = row?;
        let parsed = (|| {
            Some((
                Eui64::from_u64(eui as u64),
                Session {
                    keys: SessionKeys {
                        dev_addr: DevAddr::from_u32(u32::try_from(addr).ok()?),
                        nwk_s_key: AesKey(nwk.try_into().ok()?),
                        app_s_key: AesKey(app.try_into().ok()?),
                    },
                    source: SessionSource::from_label(&source)?,
                    last_fcnt: match last {
                        Some(n) => Some(u32::try_from(n).ok()?),
                        None => None,
                    },
                },
            ))
        })();
        match parsed {
            Some((eui, session)) => {
                sessions.insert(eui, session);
            }
            None => tracing::warn!(dev_eui = eui, "session store: unreadable session row skipped"),
        }
    }
    Ok(sessions)
}

impl SessionStore {
    /// Remember that `dev_eui`'s session changed; written by the next `flush`.
    pub fn mark(&mut self, dev_eui: Eui64) {
        self.dirty.insert(dev_eui);
    }

    /// Whether changes wait to be written.
    pub fn is_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Write every changed session (taken from `sessions`; a device no longer
    /// there is deleted) in one durable transaction. On error nothing is
    /// forgotten: the changes stay marked for the next flush.
    pub fn flush(&mut self, sessions: &HashMap<Eui64, Session>) -> anyhow::Result<usize> {
        if self.dirty.is_empty() {
            return Ok(0);
        }
        let now = berrygw_core::unix_ms(SystemTime::now());
        let tx = self.conn.transaction()?;
        let written = self.dirty.len();
        for &eui in &self.dirty {
            let key = eui.to_u64() as i64;
            match sessions.get(&eui) {
                Some(s) => {
                    tx.execute(
                        "INSERT OR REPLACE INTO session
                             (dev_eui, dev_addr, nwk_s_key, app_s_key, source, last_fcnt, updated_ms)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                        params![
                            key,
                            i64::from(s.keys.dev_addr.to_u32()),
                            &s.keys.nwk_s_key.0[..],
                            &s.keys.app_s_key.0[..],
                            s.source.label(),
                            s.last_fcnt.map(i64::from),
                            now
                        ],
                    )?;
                }
                None => {
                    tx.execute("DELETE FROM session WHERE dev_eui = ?1", params![key])?;
                }
            }
        }
        tx.commit()?;
        self.dirty.clear();
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(last: Option<u32>) -> Session {
        Session {
            keys: SessionKeys {
                dev_addr: DevAddr::from_u32(0x260b_1a05),
                nwk_s_key: AesKey([1; 16]),
                app_s_key: AesKey([2; 16]),
            },
            source: SessionSource::Join,
            last_fcnt: last,
        }
    }

    #[test]
    fn sessions_and_counters_survive_a_restart() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("sessions.sqlite");
        let eui = Eui64::from_u64(0x70b3_d57e_d005_1a05);
        {
            let (mut store, loaded) = SessionStore::open(&path).expect("open");
            assert!(loaded.is_empty());
            let mut live = HashMap::from([(eui, session(Some(41)))]);
            store.mark(eui);
            assert_eq!(store.flush(&live).expect("flush"), 1);
            live.insert(eui, session(Some(0xffff_0001)));
            store.mark(eui);
            store.flush(&live).expect("flush");
        }
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).expect("meta").permissions())
                & 0o777;
        assert_eq!(mode, 0o600, "the store holds keys");
        let (mut store, loaded) = SessionStore::open(&path).expect("reopen");
        assert_eq!(loaded.get(&eui), Some(&session(Some(0xffff_0001))));
        store.mark(eui);
        store.flush(&HashMap::new()).expect("delete");
        let (_, loaded) = SessionStore::open(&path).expect("reopen");
        assert!(loaded.is_empty(), "forgotten sessions are deleted");
    }

    #[test]
    fn a_damaged_store_is_moved_aside_and_replaced() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("sessions.sqlite");
        std::fs::write(&path, vec![0x5a; 8192]).expect("garbage");
        let (_, loaded) = SessionStore::open(&path).expect("opened fresh");
        assert!(loaded.is_empty());
        let moved = std::fs::read_dir(dir.path())
            .expect("ls")
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().contains(".corrupt-"));
        assert!(moved, "the damaged file is kept for inspection");
    }
}
