//! Reading the segment log: visiting the sound records of a segment from a byte offset,
//! finding where to start (the read cursor, else the segment's index), counting the records
//! and bytes in a seq range, the oldest record still stored, and reads of records.

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::format::{frame_len_at, parse_at, Step, SEGMENT_MAGIC};
use super::{io_error, Segment, SegmentStore};
use crate::frame::{self, Frame, Parsed, HEADER_LEN};
use crate::{record_bytes, JournalError, Record, Seq};

/// Bytes read from a segment at a time.
const READ_CHUNK: usize = 256 * 1024;

/// One record found by a scan, without its payload.
pub(super) struct Found {
    pub(super) seq: Seq,
    pub(super) offset: u64,
    pub(super) len: u64,
    pub(super) received_at_ms: i64,
    pub(super) payload_len: usize,
}

impl SegmentStore {
    /// Visit the sound records of `segment` from byte `from`, in order, until `visit` says stop.
    pub(super) fn scan_from(
        &self,
        segment: &Segment,
        from: u64,
        mut visit: impl FnMut(&Found, &[u8]) -> bool,
    ) -> Result<(), JournalError> {
        let file = File::open(&segment.path).map_err(io_error(&segment.path, "opening a segment"))?;
        let mut offset = from;
        let mut chunk = Vec::new();
        while offset < segment.len {
            let want = (segment.len - offset).min(READ_CHUNK as u64) as usize;
            chunk.resize(want.max(HEADER_LEN), 0);
            let got = file
                .read_at(&mut chunk[..want], offset)
                .map_err(io_error(&segment.path, "reading a segment"))?;
            if got == 0 {
                break;
            }
            let mut at = 0;
            while at < got {
                let step = parse_at(&chunk[at..got]);
                let frame_len = match step {
                    Step::Record(seq, len, received_at_ms, payload_len) => {
                        let found = Found {
                            seq,
                            offset: offset + at as u64,
                            len: len as u64,
                            received_at_ms,
                            payload_len,
                        };
                        if !visit(&found, &chunk[at..at + len]) {
                            return Ok(());
                        }
                        len
                    }
                    Step::Skip(len) | Step::Damaged(_, len) => len,
                    Step::End(_) => {
                        if at == 0 {
                            // A frame larger than the chunk: read it whole.
                            let Some(len) = frame_len_at(&chunk[..got]) else { return Ok(()) };
                            chunk.resize(len, 0);
                            let n = file
                                .read_at(&mut chunk[..len], offset)
                                .map_err(io_error(&segment.path, "reading a segment"))?;
                            if n < len {
                                return Ok(());
                            }
                            if let Step::Record(seq, len, received_at_ms, payload_len) =
                                parse_at(&chunk[..len])
                            {
                                let found =
                                    Found { seq, offset, len: len as u64, received_at_ms, payload_len };
                                if !visit(&found, &chunk[..len]) {
                                    return Ok(());
                                }
                            }
                            at = len;
                        }
                        break;
                    }
                };
                at += frame_len;
            }
            offset += at as u64;
        }
        Ok(())
    }

    /// Where to start reading `segment` for records after `after`.
    pub(super) fn start_offset(&self, segment: &Segment, after: Seq) -> u64 {
        if let Some((seq, first, offset)) = self.cursor {
            if first == segment.first && seq == after {
                return offset;
            }
        }
        let i = segment.index.partition_point(|mark| mark.seq <= after);
        if i == 0 {
            SEGMENT_MAGIC.len() as u64
        } else {
            segment.index[i - 1].offset
        }
    }

    /// Count and bytes of the records of `segment` with seq <= `x`: from the index, then at
    /// most [`INDEX_EVERY`] frames read.
    pub(super) fn totals_upto(&self, segment: &Segment, x: Seq) -> Result<(u64, u64), JournalError> {
        if x >= segment.last {
            return Ok((segment.records, segment.bytes));
        }
        let i = segment.index.partition_point(|mark| mark.seq <= x);
        let Some(mark) = i.checked_sub(1).map(|i| segment.index[i]) else { return Ok((0, 0)) };
        let (mut count, mut bytes) = (mark.records_before, mark.bytes_before);
        self.scan_from(segment, mark.offset, |found, _| {
            if found.seq > x {
                return false;
            }
            count += 1;
            bytes = bytes.saturating_add(record_bytes(found.payload_len));
            true
        })?;
        Ok((count, bytes))
    }

    /// Count and bytes of the stored records with seq in `(from, to]`.
    pub(super) fn range_totals(&self, from: Seq, to: Seq) -> Result<(u64, u64), JournalError> {
        let mut count = 0u64;
        let mut bytes = 0u64;
        for segment in self.segments.iter().filter(|s| s.records > 0 && s.last > from && s.first <= to) {
            let (c_to, b_to) = self.totals_upto(segment, to)?;
            let (c_from, b_from) =
                if from < segment.first { (0, 0) } else { self.totals_upto(segment, from)? };
            count += c_to.saturating_sub(c_from);
            bytes = bytes.saturating_add(b_to.saturating_sub(b_from));
        }
        Ok((count, bytes))
    }

    /// Records, bytes, first seq and oldest time of everything stored after the ack.
    pub(super) fn recount(&mut self) -> Result<(), JournalError> {
        let acked = self.floor();
        let (records, bytes) = self.range_totals(acked, Seq(u64::MAX))?;
        self.counters.records = records;
        self.counters.bytes = bytes;
        self.refresh_oldest()
    }

    pub(super) fn refresh_oldest(&mut self) -> Result<(), JournalError> {
        let acked = self.floor();
        let mut first = None;
        for segment in self.segments.iter().filter(|s| s.last > acked) {
            let start = self.start_offset(segment, acked);
            self.scan_from(segment, start, |found, _| {
                if found.seq > acked {
                    first = Some((found.seq, found.received_at_ms));
                    return false;
                }
                true
            })?;
            if first.is_some() {
                break;
            }
        }
        self.counters.first_seq = first.map(|(seq, _)| seq);
        self.counters.oldest_received_at_ms = first.map(|(_, at)| at);
        Ok(())
    }

    /// Stored records after `after` (at least after the floor), up to `max`; the cursor moves
    /// to where the read stopped.
    pub(super) fn read_records(&mut self, after: Seq, max: usize) -> Result<Vec<Record>, JournalError> {
        let after = after.max(self.floor());
        let mut records = Vec::new();
        let mut cursor = None;
        for segment in self.segments.iter().filter(|s| s.last > after) {
            if records.len() >= max {
                break;
            }
            let start = self.start_offset(segment, after);
            let mut failed = None;
            self.scan_from(segment, start, |found, bytes| {
                if found.seq <= after {
                    return true;
                }
                match frame::parse(bytes) {
                    Parsed::Frame { frame: Frame::Record(record), .. } => records.push(record),
                    _ => {
                        failed = Some(found.seq);
                        return false;
                    }
                }
                cursor = Some((found.seq, segment.first, found.offset + found.len));
                records.len() < max
            })?;
            if let Some(seq) = failed {
                return Err(JournalError::CorruptRecord {
                    path: segment.path.clone(),
                    seq,
                    reason: "the record changed on the medium since the journal was opened".into(),
                });
            }
        }
        if cursor.is_some() {
            self.cursor = cursor;
        }
        Ok(records)
    }
}
