//! The claim on a store path: one live journal per path in this process, and a journal
//! opened while a previous one on the same path is still closing waits for it to let go.

use std::path::PathBuf;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::JournalError;

/// Paths owned by a live journal in this process. A path may have one owner at a time: a
/// second store on the same files would break FIFO order (sqlite) or fail to lock (sled).
/// Process-wide by nature, so a static; nothing else is shared between journals.
static CLAIMED_PATHS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static PATH_RELEASED: Condvar = Condvar::new();

/// Ownership of one store path; released when the owner thread is done with the store.
pub(super) struct PathClaim(PathBuf);

impl PathClaim {
    /// Claim `path`, waiting up to `wait` for a journal that is still closing to let go of it.
    pub(super) fn acquire(path: PathBuf, wait: Duration) -> Result<PathClaim, JournalError> {
        let started = Instant::now();
        // The list stays consistent even if a holder panicked, so poisoning is ignored.
        let mut claimed = CLAIMED_PATHS.lock().unwrap_or_else(|p| p.into_inner());
        while claimed.contains(&path) {
            let left = wait.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Err(JournalError::InUse { path, waited: wait });
            }
            claimed = match PATH_RELEASED.wait_timeout(claimed, left) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        claimed.push(path.clone());
        Ok(PathClaim(path))
    }
}

impl Drop for PathClaim {
    fn drop(&mut self) {
        let mut claimed = CLAIMED_PATHS.lock().unwrap_or_else(|p| p.into_inner());
        claimed.retain(|p| p != &self.0);
        PATH_RELEASED.notify_all();
    }
}
