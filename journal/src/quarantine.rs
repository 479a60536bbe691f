//! Moving a corrupt store aside: when a backend finds its files unreadable on open, the
//! files are renamed to `<path>.corrupt-<unix-seconds>` (kept for a human to inspect, never
//! deleted), a fresh empty store is opened in their place, and the move is logged loudly.
//! Errors that are not corruption (permissions, locks, a full disk) are returned instead.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::JournalError;

/// Why a backend could not open its store.
#[derive(Debug)]
pub(super) enum OpenFailure {
    /// The store's contents are damaged; moving it aside and starting fresh is the remedy.
    Corrupt(String),
    /// Anything else; moving files would not help, so the caller gets the error.
    Failed(JournalError),
}

impl From<JournalError> for OpenFailure {
    fn from(error: JournalError) -> Self {
        OpenFailure::Failed(error)
    }
}

/// Open the store at `path`; if it is corrupt, move it (and files named `<path><suffix>` for
/// each of `companions`) aside and open a fresh one. Returns where the old one went, and why.
pub(super) fn open_or_quarantine<S>(
    path: &Path,
    companions: &[&str],
    open: impl Fn(&Path) -> Result<S, OpenFailure>,
) -> Result<(S, Option<(PathBuf, String)>), JournalError> {
    let reason = match open(path) {
        Ok(store) => return Ok((store, None)),
        Err(OpenFailure::Failed(error)) => return Err(error),
        Err(OpenFailure::Corrupt(reason)) => reason,
    };
    let moved_to = move_aside(path, companions)?;
    tracing::error!(
        path = %path.display(),
        moved_to = %moved_to.display(),
        %reason,
        "JOURNAL STORE IS CORRUPT: moved it aside and started a fresh, empty journal; \
         records in the old store will not be sent (inspect the moved files by hand)"
    );
    match open(path) {
        Ok(store) => Ok((store, Some((moved_to, reason)))),
        Err(OpenFailure::Failed(error)) => Err(error),
        Err(OpenFailure::Corrupt(again)) => Err(JournalError::Corrupt {
            path: path.to_path_buf(),
            reason: format!(
                "a freshly created store is unreadable too ({again}); the storage medium may be failing"
            ),
        }),
    }
}

/// Rename `path` (and its companions) to a free `<path>.corrupt-<unix-seconds>[-n]` name.
pub fn move_aside(path: &Path, companions: &[&str]) -> Result<PathBuf, JournalError> {
    let seconds = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs());
    let mut attempt = 0u32;
    let target = loop {
        let mut name = OsString::from(path.as_os_str());
        name.push(format!(".corrupt-{seconds}"));
        if attempt > 0 {
            name.push(format!("-{attempt}"));
        }
        let candidate = PathBuf::from(name);
        if !candidate.exists() {
            break candidate;
        }
        attempt += 1;
    };
    rename(path, &target)?;
    for suffix in companions {
        let from = with_suffix(path, suffix);
        if from.exists() {
            rename(&from, &with_suffix(&target, suffix))?;
        }
    }
    // Make the renames themselves durable, so a power cut does not resurrect the corrupt store.
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if let Err(error) = std::fs::File::open(parent).and_then(|dir| dir.sync_all()) {
            tracing::warn!(dir = %parent.display(), %error, "could not sync directory after moving a corrupt journal aside");
        }
    }
    Ok(target)
}

fn rename(from: &Path, to: &Path) -> Result<(), JournalError> {
    std::fs::rename(from, to).map_err(|source| JournalError::Io {
        path: from.to_path_buf(),
        action: "moving the corrupt store aside",
        source,
    })
}

/// `path` with `suffix` appended to its last component (`journal.db` + `-wal`).
pub(super) fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(suffix);
    PathBuf::from(name)
}
