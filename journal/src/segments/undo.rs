//! Taking back a failed commit: what the store was before it (counters, eviction point, the
//! last segment's length) is kept while it runs, and on failure the segments it started are
//! removed, the one it appended to is cut back, the `ack` file restored and the index read
//! again. An undoing that fails itself is tried again before the next commit or read.

use std::fs::{File, OpenOptions};

use super::format::{segment_name, ACK_FILE};
use super::open::open_store;
use super::{io_error, SegmentStore};
use crate::quarantine::OpenFailure;
use crate::{Counters, JournalError, Seq};

/// What a commit must be undone to when it fails.
#[derive(Clone, Copy, Debug)]
pub(super) struct Before {
    pub(super) counters: Counters,
    pub(super) evicted_to: Seq,
    /// The last segment then (its first seq and length): records appended to it are cut off,
    /// segments started after it are removed.
    pub(super) tail: Option<(Seq, u64)>,
}

impl SegmentStore {
    /// Undo a failed commit if one waits: segments it started are removed, the one it appended
    /// to is cut back to its length before, the ack file says what it said before (the
    /// acknowledgements it knew stay: the far side has those records either way), and the
    /// index is read again from the medium, as a restart would.
    pub(super) fn finish_undo(&mut self) -> Result<(), JournalError> {
        let Some(before) = self.undo else { return Ok(()) };
        self.active = None;
        self.buf.clear();
        self.cursor = None;
        for segment in &self.segments {
            if before.tail.is_some_and(|(first, _)| segment.first <= first) {
                continue;
            }
            match std::fs::remove_file(&segment.path) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                    return Err(io_error(&segment.path, "removing a segment of a failed commit")(error));
                }
                _ => {}
            }
        }
        if let Some((first, len)) = before.tail {
            let path = self.dir.join(segment_name(first));
            match OpenOptions::new().write(true).open(&path) {
                Ok(file) => file
                    .set_len(len)
                    .and_then(|()| file.sync_data())
                    .map_err(io_error(&path, "cutting off a failed commit"))?,
                // Acknowledged meanwhile and unlinked: nothing to cut.
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => return Err(io_error(&path, "cutting off a failed commit")(error)),
            }
        }
        self.counters = before.counters;
        self.evicted_to = before.evicted_to;
        self.write_ack_file()?;
        let ack_path = self.dir.join(ACK_FILE);
        self.ack_file.sync_data().map_err(io_error(&ack_path, "syncing the ack file"))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_error(&self.dir, "syncing the journal directory"))?;
        let reread = open_store(&self.dir).map_err(|failure| match failure {
            OpenFailure::Failed(error) => error,
            OpenFailure::Corrupt(reason) => JournalError::Corrupt { path: self.dir.clone(), reason },
        })?;
        *self = reread;
        Ok(())
    }
}
