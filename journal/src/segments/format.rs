//! What the segment log looks like on the medium: the magic line every segment starts with,
//! the segment file names, the `ack` file (read on open, rewritten in place), and one step
//! of a scan over frames, which passes over frames marked dropped.

use std::os::unix::fs::FileExt;

use super::{io_error, SegmentStore};
use crate::frame::{self, Frame, Parsed, HEADER_LEN};
use crate::{JournalError, Seq};

/// First bytes of every segment file.
pub(super) const SEGMENT_MAGIC: &[u8; 8] = b"BGWSEG1\n";
/// The ack file's name inside the store directory.
pub(super) const ACK_FILE: &str = "ack";
/// Bytes of the ack file: acked, evicted_total, last_seq, evicted_to (u64 LE each), CRC-32C.
pub(super) const ACK_LEN: usize = 36;
/// The tag byte written over a damaged frame's tag so that it is skipped, not counted again.
pub(super) const DROPPED_TAG: u8 = 0xD0;

pub(super) fn segment_name(first: Seq) -> String {
    format!("seg-{:020}.log", first.0)
}

pub(super) fn parse_ack(bytes: &[u8]) -> Option<(Seq, u64, Seq, Seq)> {
    if bytes.len() < ACK_LEN {
        return None;
    }
    let word = |i: usize| u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().unwrap_or_default());
    let crc = u32::from_le_bytes(bytes[32..36].try_into().unwrap_or_default());
    (frame::crc32c(0, &bytes[..32]) == crc).then(|| (Seq(word(0)), word(1), Seq(word(2)), Seq(word(3))))
}

impl SegmentStore {
    pub(super) fn write_ack_file(&mut self) -> Result<(), JournalError> {
        let mut bytes = [0u8; ACK_LEN];
        bytes[0..8].copy_from_slice(&self.counters.acked.0.to_le_bytes());
        bytes[8..16].copy_from_slice(&self.counters.evicted_total.to_le_bytes());
        bytes[16..24].copy_from_slice(&self.counters.last_seq.0.to_le_bytes());
        bytes[24..32].copy_from_slice(&self.evicted_to.0.to_le_bytes());
        let crc = frame::crc32c(0, &bytes[..32]);
        bytes[32..36].copy_from_slice(&crc.to_le_bytes());
        let path = self.dir.join(ACK_FILE);
        self.ack_file.write_all_at(&bytes, 0).map_err(io_error(&path, "writing the ack file"))
    }
}

/// One step of a scan.
pub(super) enum Step {
    /// A sound record: seq, frame length, received_at_ms, payload length.
    Record(Seq, usize, i64, usize),
    /// A frame to pass over silently (dropped, or a stage ack mark).
    Skip(usize),
    /// A record that fails its check.
    Damaged(Seq, usize),
    /// Nothing more can be read: "truncated" or "garbage".
    End(&'static str),
}

pub(super) fn parse_at(bytes: &[u8]) -> Step {
    if bytes.len() >= HEADER_LEN && bytes[1] == DROPPED_TAG {
        let len = u32::from_le_bytes([bytes[2], bytes[3], bytes[4], bytes[5]]) as usize;
        if len <= frame::MAX_PAYLOAD {
            return Step::Skip(HEADER_LEN + len);
        }
    }
    match frame::parse(bytes) {
        Parsed::Frame { frame: Frame::Record(record), len } => {
            Step::Record(record.seq, len, record.received_at_ms, record.payload.len())
        }
        Parsed::Frame { frame: Frame::Ack(_), len } => Step::Skip(len),
        Parsed::Damaged { seq, len } => Step::Damaged(seq, len),
        Parsed::Truncated => Step::End("truncated"),
        Parsed::Garbage => Step::End("garbage"),
    }
}

pub(super) fn frame_len_at(bytes: &[u8]) -> Option<usize> {
    if bytes.len() < 6 {
        return None;
    }
    let len = u32::from_le_bytes([bytes[2], bytes[3], bytes[4], bytes[5]]) as usize;
    (len <= frame::MAX_PAYLOAD).then_some(HEADER_LEN + len)
}
