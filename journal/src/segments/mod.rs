//! The segment log backend (config `backend = "log"`, the default): a directory of
//! append-only segment files `seg-<first seq>.log`, each a magic line then frames
//! (`frame.rs`), plus a small `ack` file. A group commit is one `write` of its frames at the
//! end of the active segment and one `fdatasync`; a new segment is started past
//! [`SEGMENT_BYTES`] (the directory is synced with it). Acknowledged and evicted records
//! leave by whole segments: a drained backlog is deleted by unlinking files, not by
//! rewriting pages. The `ack` file (acked seq, evicted total, last seq, evicted-up-to seq, CRC) is rewritten in
//! place, not synced: a stale one after a power cut can only resend records, never lose one.
//!
//! Opening reads every segment once: a cut-short tail of the last segment (a write the power
//! cut interrupted, never reported durable) is cut off; a record failing its check is marked
//! dropped in place and counted as evicted once; a segment without the magic line, or a file
//! that is not a segment, means the store is not ours or badly damaged and the directory is
//! moved aside (`quarantine.rs`).
//!
//! Files: `format.rs` (what is on the medium: the segment magic line, segment names, the
//! `ack` file, and one step of a frame scan), `open.rs` (opening: listing, reading every
//! segment once, cutting off a cut-short tail), `read.rs` (scanning a segment from an offset,
//! where the in-memory index and the read cursor let a read start, counting records and bytes
//! in a seq range, reads), `commit.rs` (a commit: appending its frames, the ack, the ack
//! file), `evict.rs` (records leaving other than by a read: unlinking acknowledged segments,
//! eviction over `max_bytes`, dropping unreadable records), `undo.rs` (taking back a failed
//! commit). This file holds the store, its in-memory index of segments, and the [`Store`]
//! implementation that ties them together.

mod commit;
mod evict;
mod format;
mod open;
mod read;
#[cfg(test)]
mod tests;
mod undo;

use std::collections::VecDeque;
use std::fs::File;
use std::path::{Path, PathBuf};

use format::SEGMENT_MAGIC;
use open::open_store;
use undo::Before;

use super::quarantine::open_or_quarantine;
use super::{record_bytes, Commit, Counters, JournalError, Record, Seq, Store};

/// A segment is closed and a new one started once it holds this many bytes.
pub(super) const SEGMENT_BYTES: u64 = 4 << 20;
/// Every this many records a segment's in-memory index keeps a mark.
const INDEX_EVERY: u64 = 32;

/// A point in a segment: the record `seq` starts at `offset`, after `records_before`
/// records counting `bytes_before` bytes.
#[derive(Clone, Copy, Debug)]
struct Mark {
    seq: Seq,
    offset: u64,
    records_before: u64,
    bytes_before: u64,
}

/// What is known of one segment file without reading it again.
#[derive(Debug)]
struct Segment {
    /// From the file name: no record in it is below this.
    first: Seq,
    path: PathBuf,
    /// Bytes in the file that hold sound frames (everything past is cut off or ignored).
    len: u64,
    /// Highest record seq in it (`Seq::NONE` while empty).
    last: Seq,
    /// Records in it, counted once.
    records: u64,
    /// Their bytes as counted against `max_bytes`.
    bytes: u64,
    /// A mark every [`INDEX_EVERY`] records, for reads that start mid-segment.
    index: Vec<Mark>,
}

impl Segment {
    /// A segment holding only its magic line.
    fn empty(first: Seq, path: PathBuf) -> Segment {
        Segment {
            first,
            path,
            len: SEGMENT_MAGIC.len() as u64,
            last: Seq::NONE,
            records: 0,
            bytes: 0,
            index: Vec::new(),
        }
    }
}

/// A journal stored as a segment log.
pub(super) struct SegmentStore {
    dir: PathBuf,
    segments: VecDeque<Segment>,
    /// The last segment, open for appending (`None`: the next commit starts a new one).
    active: Option<File>,
    ack_file: File,
    counters: Counters,
    /// Where the last read stopped: the next record after `seq` starts at `offset` in the
    /// segment whose first seq is `segment`.
    cursor: Option<(Seq, Seq, u64)>,
    buf: Vec<u8>,
    /// When the ack file was last synced.
    ack_synced: Option<std::time::Instant>,
    /// Records up to here were evicted (over `max_bytes`): gone, like acknowledged ones.
    evicted_to: Seq,
    /// A failed commit could not be undone: its undoing is tried again before anything else.
    undo: Option<Before>,
}

impl SegmentStore {
    /// Open or create the store directory `dir`, moving it aside first if it is not a sound
    /// segment log.
    pub(super) fn open(dir: &Path) -> Result<(SegmentStore, Option<(PathBuf, String)>), JournalError> {
        open_or_quarantine(dir, &[], open_store)
    }
}

fn io_error<'a>(path: &'a Path, action: &'static str) -> impl Fn(std::io::Error) -> JournalError + 'a {
    move |source| JournalError::Io { path: path.to_path_buf(), action, source }
}

fn note_record(segment: &mut Segment, seq: Seq, offset: u64, payload_len: usize) {
    if segment.records.is_multiple_of(INDEX_EVERY) {
        segment.index.push(Mark {
            seq,
            offset,
            records_before: segment.records,
            bytes_before: segment.bytes,
        });
    }
    segment.records += 1;
    segment.bytes = segment.bytes.saturating_add(record_bytes(payload_len));
    segment.last = seq;
}

impl SegmentStore {
    /// Records at or below this are gone: acknowledged or evicted.
    fn floor(&self) -> Seq {
        self.counters.acked.max(self.evicted_to)
    }
}

impl Store for SegmentStore {
    fn commit(&mut self, commit: &Commit<'_>) -> Result<(), JournalError> {
        self.finish_undo()?;
        let before = Before {
            counters: self.counters,
            evicted_to: self.evicted_to,
            tail: self.segments.back().map(|s| (s.first, s.len)),
        };
        let result = self.apply(commit);
        if result.is_err() {
            // Nothing of a failed commit counts, on the medium as in memory.
            self.undo = Some(before);
            if let Err(error) = self.finish_undo() {
                tracing::error!(path = %self.dir.display(), %error, "journal: undoing a failed commit failed; trying again before the next commit");
            }
        }
        result
    }

    fn read_after(&mut self, after: Seq, max: usize) -> Result<Vec<Record>, JournalError> {
        self.finish_undo()?;
        self.read_records(after, max)
    }

    fn counters(&self) -> Counters {
        self.counters
    }
}
