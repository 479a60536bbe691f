//! The owner's reads of stored records (followed by pending ones): a record the store finds
//! unreadable is dropped (counted as evicted) and the read tried again, a few times at most.

use super::{pending_after, Owner};
use crate::{JournalError, Record, Seq};

/// Unreadable records one read may drop before it gives up and reports the error.
const MAX_UNREADABLE_PER_READ: usize = 16;

impl Owner {
    /// Stored records after `after`, then pending ones, up to `max`.
    pub(super) fn read(&mut self, after: Seq, max: usize) -> Result<Vec<Record>, JournalError> {
        let mut records = self.read_stored(after, max)?;
        let from = records.last().map_or(after, |r| r.seq);
        if records.len() < max {
            let hot = self.shared.lock();
            records.extend(pending_after(&hot.pending, from.max(hot.acked), max - records.len()));
        }
        Ok(records)
    }

    fn read_stored(&mut self, after: Seq, max: usize) -> Result<Vec<Record>, JournalError> {
        let mut dropped = 0;
        loop {
            match self.store.read_after(after, max) {
                Err(JournalError::CorruptRecord { path, seq, reason })
                    if dropped < MAX_UNREADABLE_PER_READ =>
                {
                    tracing::error!(
                        journal = %self.shared.name,
                        path = %path.display(),
                        %seq,
                        %reason,
                        "journal record is unreadable; dropping it (counted in evicted_total)"
                    );
                    let counters = self.store.counters();
                    self.commit(&[], counters.last_seq, counters.acked, false, &[seq])?;
                    dropped += 1;
                }
                other => return other,
            }
        }
    }
}
