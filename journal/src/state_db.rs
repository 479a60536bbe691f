//! Small SQLite stores in the state directory (the decoder's sessions, the
//! command replay window, the audit log): opened for durable writes (WAL,
//! `synchronous=FULL`) with a given file mode and an integrity check, and a
//! damaged one moved aside (`<path>.corrupt-<time>`) for a fresh start, loudly.
//! The journal has its own, richer handling (`journal::quarantine`).

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use rusqlite::{Connection, ErrorCode};

/// The store's content does not pass SQLite's own check.
#[derive(Debug, thiserror::Error)]
#[error("integrity check failed: {0}")]
pub struct CorruptStore(String);

pub use berrygw_core::files::{
    create_private_dir, create_with_mode, make_private, STATE_DIR_MODE, STATE_FILE_MODE,
};

/// Open the SQLite file at `path` for durable writes (WAL, `synchronous=FULL`), give it
/// `mode`, check its integrity and run `schema`.
pub fn open_sqlite(path: &Path, mode: u32, schema: &str) -> anyhow::Result<Connection> {
    open_sqlite_paged(path, mode, None, schema)
}

/// [`open_sqlite`], with the page size a new file gets (a store of small rare rows writes
/// fewer bytes per commit with 1 KiB pages than with SQLite's 4 KiB).
pub fn open_sqlite_paged(
    path: &Path,
    mode: u32,
    page_size: Option<u32>,
    schema: &str,
) -> anyhow::Result<Connection> {
    // Before SQLite opens it: SQLite would create it 0644, and its -wal and -shm take its mode.
    create_with_mode(path, mode).with_context(|| format!("setting the mode of {}", path.display()))?;
    let conn = Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
    conn.busy_timeout(Duration::from_secs(5))?;
    if let Some(size) = page_size {
        // Only takes on a file without pages yet, before WAL is set.
        conn.execute_batch(&format!("PRAGMA page_size = {size};"))?;
    }
    conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;")
        .with_context(|| format!("preparing {}", path.display()))?;
    let check: String = conn
        .query_row("PRAGMA quick_check", [], |row| row.get(0))
        .with_context(|| format!("checking {}", path.display()))?;
    if check != "ok" {
        return Err(CorruptStore(check)).with_context(|| format!("checking {}", path.display()));
    }
    conn.execute_batch(schema).with_context(|| format!("preparing {}", path.display()))?;
    Ok(conn)
}

/// Run `open`; if the store is corrupt, move it (with its -wal and -shm) aside, log `alarm`
/// and `consequence` at error level, and open a fresh one.
pub fn open_or_move_aside<T>(
    path: &Path,
    alarm: &str,
    consequence: &str,
    open: impl Fn(&Path) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    match open(path) {
        Err(e) if is_corrupt(&e) => {
            let moved = crate::quarantine::move_aside(path, &["-wal", "-shm"])
                .with_context(|| format!("moving the corrupt {} aside", path.display()))?;
            tracing::error!(
                path = %path.display(),
                moved_to = %moved.display(),
                "{alarm} ({e:#}): moved aside and started afresh; {consequence}"
            );
            open(path)
        }
        other => other,
    }
}

/// Whether `e` says the SQLite file is damaged (rather than, say, unreadable or locked).
pub fn is_corrupt(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.is::<CorruptStore>()
            || matches!(
                c.downcast_ref::<rusqlite::Error>().and_then(rusqlite::Error::sqlite_error_code),
                Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
            )
    })
}
