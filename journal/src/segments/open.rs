//! Opening the segment log: the directory is listed (anything that is not a segment or the
//! `ack` file means the store is not ours), the `ack` file read, every segment read once to
//! build its index (damaged records marked dropped, a cut-short tail cut off), acknowledged
//! segments unlinked, and the last segment opened for appending.

use std::collections::VecDeque;
use std::fs::OpenOptions;
use std::io::Read;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::format::{parse_ack, parse_at, segment_name, Step, ACK_FILE, DROPPED_TAG, SEGMENT_MAGIC};
use super::{io_error, note_record, Segment, SegmentStore, SEGMENT_BYTES};
use crate::quarantine::OpenFailure;
use crate::{Counters, Seq};

pub(super) fn open_store(dir: &Path) -> Result<SegmentStore, OpenFailure> {
    if dir.is_file() {
        return Err(OpenFailure::Corrupt("the journal path is a file, not a segment log directory".into()));
    }
    berrygw_core::files::create_private_dir(dir).map_err(io_error(dir, "creating the journal directory"))?;
    let mut firsts = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_error(dir, "listing the journal directory"))? {
        let entry = entry.map_err(io_error(dir, "listing the journal directory"))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name == ACK_FILE || name.ends_with(".tmp") {
            continue;
        }
        let first = name
            .strip_prefix("seg-")
            .and_then(|rest| rest.strip_suffix(".log"))
            .and_then(|digits| digits.parse::<u64>().ok());
        match first {
            Some(first) => firsts.push(Seq(first)),
            None => return Err(OpenFailure::Corrupt(format!("{name:?} is not a journal segment"))),
        }
    }
    firsts.sort();

    let ack_path = dir.join(ACK_FILE);
    let mut ack_file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(berrygw_core::files::STATE_FILE_MODE)
        .open(&ack_path)
        .map_err(io_error(&ack_path, "opening the ack file"))?;
    let mut ack_bytes = Vec::new();
    ack_file.read_to_end(&mut ack_bytes).map_err(io_error(&ack_path, "reading the ack file"))?;
    let (mut acked, evicted_total, ack_last_seq, evicted_to) = parse_ack(&ack_bytes).unwrap_or_else(|| {
        if !ack_bytes.is_empty() {
            tracing::warn!(path = %ack_path.display(), "journal ack file is damaged; records may be sent again");
        }
        (Seq::NONE, 0, Seq::NONE, Seq::NONE)
    });

    let mut counters = Counters { evicted_total, ..Counters::default() };
    let mut segments = VecDeque::new();
    let count = firsts.len();
    for (i, first) in firsts.into_iter().enumerate() {
        let path = dir.join(segment_name(first));
        let is_last = i + 1 == count;
        let segment = scan_segment(first, path, is_last, &mut counters.evicted_total)?;
        segments.push_back(segment);
    }
    let stored_last = segments.iter().map(|s| s.last).max().unwrap_or(Seq::NONE);
    counters.last_seq = ack_last_seq.max(stored_last);
    acked = acked.min(counters.last_seq);
    counters.acked = acked;
    let evicted_to = evicted_to.min(counters.last_seq);
    let mut store = SegmentStore {
        dir: dir.to_path_buf(),
        segments,
        active: None,
        ack_file,
        counters,
        cursor: None,
        buf: Vec::new(),
        ack_synced: None,
        evicted_to,
        undo: None,
    };
    store.drop_acked_segments().map_err(OpenFailure::Failed)?;
    store.recount().map_err(OpenFailure::Failed)?;
    if let Some(last) = store.segments.back().filter(|s| s.len < SEGMENT_BYTES) {
        let file = OpenOptions::new()
            .append(true)
            .open(&last.path)
            .map_err(io_error(&last.path, "opening the active segment"))?;
        store.active = Some(file);
    }
    Ok(store)
}

/// Read a whole segment: its sound frames make the index; a damaged record is marked dropped
/// in place and counted in `evicted`; a cut-short tail of the last segment is cut off.
fn scan_segment(first: Seq, path: PathBuf, is_last: bool, evicted: &mut u64) -> Result<Segment, OpenFailure> {
    let bytes = std::fs::read(&path).map_err(io_error(&path, "reading a segment"))?;
    if bytes.len() < SEGMENT_MAGIC.len() {
        if is_last && SEGMENT_MAGIC.starts_with(&bytes) {
            // Created, its magic line never fully written: an empty segment.
            std::fs::write(&path, SEGMENT_MAGIC).map_err(io_error(&path, "rewriting an empty segment"))?;
            return Ok(Segment::empty(first, path));
        }
        return Err(OpenFailure::Corrupt(format!("{} is too short to be a segment", path.display())));
    }
    if &bytes[..SEGMENT_MAGIC.len()] != SEGMENT_MAGIC {
        return Err(OpenFailure::Corrupt(format!(
            "{} does not start like a journal segment",
            path.display()
        )));
    }
    let mut segment = Segment::empty(first, path);
    let mut offset = SEGMENT_MAGIC.len();
    let mut dropped = Vec::new();
    while offset < bytes.len() {
        match parse_at(&bytes[offset..]) {
            Step::Record(found_seq, len, _, payload_len) => {
                note_record(&mut segment, found_seq, offset as u64, payload_len);
                offset += len;
            }
            Step::Skip(len) => offset += len,
            Step::Damaged(seq, len) => {
                tracing::error!(path = %segment.path.display(), %seq, offset, "journal record fails its check; dropping it (counted in evicted_total)");
                dropped.push(offset as u64);
                *evicted = evicted.saturating_add(1);
                offset += len;
            }
            Step::End(why) => {
                if !is_last || why == "garbage" {
                    tracing::error!(
                        path = %segment.path.display(),
                        offset,
                        "journal segment is damaged from here on; the records after this point are lost"
                    );
                }
                break;
            }
        }
    }
    segment.len = offset as u64;
    let file = OpenOptions::new()
        .write(true)
        .open(&segment.path)
        .map_err(io_error(&segment.path, "opening a segment"))?;
    for at in dropped {
        file.write_at(&[DROPPED_TAG], at + 1).map_err(io_error(&segment.path, "marking a damaged record"))?;
    }
    if (offset as u64) < bytes.len() as u64 {
        // Only ever a write cut short (or damage past which nothing can be found): keep the
        // sound prefix so that appends continue from a frame boundary.
        file.set_len(offset as u64).map_err(io_error(&segment.path, "cutting off a damaged tail"))?;
        file.sync_data().map_err(io_error(&segment.path, "syncing a segment"))?;
    }
    Ok(segment)
}
