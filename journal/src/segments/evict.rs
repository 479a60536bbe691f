//! Records leaving the segment log other than by a read: segments whose records are all
//! acknowledged (or evicted) are unlinked whole, the oldest records are evicted when the log
//! is over `max_bytes` (the eviction point moves past them), and a record a read found
//! unreadable is marked dropped in place and counted as evicted.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;

use super::format::{frame_len_at, DROPPED_TAG};
use super::{io_error, Segment, SegmentStore, SEGMENT_BYTES};
use crate::frame::HEADER_LEN;
use crate::{record_bytes, JournalError, Seq};

impl SegmentStore {
    /// Unlink every segment whose records are all acknowledged; the active one only once full
    /// (so a slow far side does not make every commit create and delete a file).
    pub(super) fn drop_acked_segments(&mut self) -> Result<(), JournalError> {
        let acked = self.floor();
        while let Some(front) = self.segments.front() {
            let is_active = self.segments.len() == 1;
            if front.last > acked || (is_active && (front.last == Seq::NONE || front.len < SEGMENT_BYTES)) {
                break;
            }
            if is_active {
                self.active = None;
            }
            let segment = self.segments.pop_front().unwrap_or_else(|| unreachable!());
            self.remove_segment(&segment)?;
        }
        Ok(())
    }

    fn remove_segment(&mut self, segment: &Segment) -> Result<(), JournalError> {
        if self.cursor.is_some_and(|(_, first, _)| first == segment.first) {
            self.cursor = None;
        }
        match std::fs::remove_file(&segment.path) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(io_error(&segment.path, "deleting a segment")(error)),
        }
    }

    /// Evict the oldest records until the stored bytes fit `max_bytes`: the eviction point
    /// moves past them (whole segments below it are unlinked).
    pub(super) fn evict(&mut self, max_bytes: u64) -> Result<(), JournalError> {
        let needed = self.counters.bytes.saturating_sub(max_bytes);
        if needed == 0 {
            return Ok(());
        }
        let floor = self.floor();
        let mut freed = 0u64;
        let mut cutoff = floor;
        for segment in self.segments.iter().filter(|s| s.records > 0 && s.last > floor) {
            let (c_from, b_from) =
                if floor < segment.first { (0, 0) } else { self.totals_upto(segment, floor)? };
            let rest = segment.bytes.saturating_sub(b_from);
            if freed + rest < needed && segment.records > c_from {
                freed += rest;
                cutoff = segment.last;
                continue;
            }
            let start = self.start_offset(segment, floor);
            self.scan_from(segment, start, |found, _| {
                if found.seq <= floor {
                    return true;
                }
                freed = freed.saturating_add(record_bytes(found.payload_len));
                cutoff = found.seq;
                freed < needed
            })?;
            break;
        }
        let (count, bytes) = self.range_totals(floor, cutoff)?;
        self.evicted_to = cutoff;
        self.counters.records = self.counters.records.saturating_sub(count);
        self.counters.bytes = self.counters.bytes.saturating_sub(bytes);
        self.counters.evicted_total = self.counters.evicted_total.saturating_add(count);
        self.drop_acked_segments()
    }

    /// A record a read found unreadable: mark it dropped and count it as evicted.
    pub(super) fn drop_record(&mut self, seq: Seq) -> Result<(), JournalError> {
        let Some(index) = self.segments.iter().position(|s| s.first <= seq && seq <= s.last) else {
            return Ok(());
        };
        let segment = &self.segments[index];
        let mut at = None;
        let start = self.start_offset(segment, Seq(seq.0.saturating_sub(1)));
        let file = File::open(&segment.path).map_err(io_error(&segment.path, "opening a segment"))?;
        let mut offset = start;
        let mut header = [0u8; HEADER_LEN];
        while offset < segment.len {
            if file.read_at(&mut header, offset).map_err(io_error(&segment.path, "reading a segment"))?
                < HEADER_LEN
            {
                break;
            }
            let found = Seq(u64::from_le_bytes(header[10..18].try_into().unwrap_or_default()));
            let Some(len) = frame_len_at(&header) else { break };
            if found == seq {
                at = Some(offset);
                break;
            }
            offset += len as u64;
        }
        let Some(at) = at else { return Ok(()) };
        let path = segment.path.clone();
        let payload_len = frame_len_at(&header).unwrap_or(HEADER_LEN) - HEADER_LEN;
        OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| f.write_all_at(&[DROPPED_TAG], at + 1))
            .map_err(io_error(&path, "marking a damaged record"))?;
        self.counters.records = self.counters.records.saturating_sub(1);
        self.counters.bytes = self.counters.bytes.saturating_sub(record_bytes(payload_len));
        self.counters.evicted_total = self.counters.evicted_total.saturating_add(1);
        self.cursor = None;
        self.refresh_oldest()
    }
}
