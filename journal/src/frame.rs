//! The one on-disk form of a journal record, shared by the segment log (`segments/`) and
//! the RAM stage (`stage.rs`): a fixed header, then the payload, checked by a CRC-32C over
//! everything after the CRC field. A frame is either a record or an ack mark (stage only).
//!
//! ```text
//! magic u8 = 0xB7 | tag u8 | len u32 LE | crc u32 LE | seq u64 LE | kind u8 | received_at_ms i64 LE | payload[len]
//! ```

use super::{Record, Seq};

/// Bytes before the payload.
pub(super) const HEADER_LEN: usize = 27;
/// First byte of every frame: a zeroed or shifted region never parses as one.
const MAGIC: u8 = 0xB7;
/// Largest payload a frame may declare; beyond it the length field is damage, not data.
pub(super) const MAX_PAYLOAD: usize = 1 << 20;

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Tag {
    /// A journal record.
    Record = 1,
    /// Stage only: everything up to `seq` was acknowledged.
    Ack = 2,
}

/// One decoded frame.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Frame {
    Record(Record),
    Ack(Seq),
}

/// What the bytes at an offset hold.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Parsed {
    /// A sound frame of `len` bytes.
    Frame { frame: Frame, len: usize },
    /// A well-formed header whose CRC does not match: `len` bytes can be skipped, `seq` is
    /// what the header says (not trusted beyond naming the loss).
    Damaged { seq: Seq, len: usize },
    /// Fewer bytes than the header announces: a write cut short (the tail of a file).
    Truncated,
    /// Not a frame header at all: nothing after this point can be located.
    Garbage,
}

/// Append the frame of `record` to `out`.
pub(super) fn encode_record(out: &mut Vec<u8>, record: &Record) {
    encode(out, Tag::Record, record.seq, record.kind, record.received_at_ms, &record.payload);
}

/// Append an ack mark to `out`.
pub(super) fn encode_ack(out: &mut Vec<u8>, up_to: Seq) {
    encode(out, Tag::Ack, up_to, 0, 0, &[]);
}

fn encode(out: &mut Vec<u8>, tag: Tag, seq: Seq, kind: u8, received_at_ms: i64, payload: &[u8]) {
    let start = out.len();
    out.push(MAGIC);
    out.push(tag as u8);
    // Payloads are bounded far below 4 GiB by every producer; a larger one is cut to the
    // bound here so that the reader reports it as damaged instead of misreading the stream.
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    let crc_at = out.len();
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&seq.0.to_le_bytes());
    out.push(kind);
    out.extend_from_slice(&received_at_ms.to_le_bytes());
    out.extend_from_slice(payload);
    let mut crc = crc32c(0, &out[start..crc_at]);
    crc = crc32c(crc, &out[crc_at + 4..]);
    out[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Parse the frame at the start of `bytes`.
pub(super) fn parse(bytes: &[u8]) -> Parsed {
    if bytes.len() < HEADER_LEN {
        // A short tail that is all zeroes is a preallocated or cut region, not a frame.
        return if bytes.is_empty() || bytes[0] == MAGIC { Parsed::Truncated } else { Parsed::Garbage };
    }
    let tag = match (bytes[0], bytes[1]) {
        (MAGIC, 1) => Tag::Record,
        (MAGIC, 2) => Tag::Ack,
        _ => return Parsed::Garbage,
    };
    let len = u32::from_le_bytes([bytes[2], bytes[3], bytes[4], bytes[5]]) as usize;
    if len > MAX_PAYLOAD {
        return Parsed::Garbage;
    }
    let total = HEADER_LEN + len;
    let seq = Seq(u64::from_le_bytes(bytes[10..18].try_into().unwrap_or_default()));
    if bytes.len() < total {
        return Parsed::Truncated;
    }
    let stored_crc = u32::from_le_bytes([bytes[6], bytes[7], bytes[8], bytes[9]]);
    let crc = crc32c(crc32c(0, &bytes[..6]), &bytes[10..total]);
    if crc != stored_crc {
        return Parsed::Damaged { seq, len: total };
    }
    let frame = match tag {
        Tag::Ack => Frame::Ack(seq),
        Tag::Record => Frame::Record(Record {
            seq,
            kind: bytes[18],
            received_at_ms: i64::from_le_bytes(bytes[19..27].try_into().unwrap_or_default()),
            payload: bytes[HEADER_LEN..total].to_vec(),
        }),
    };
    Parsed::Frame { frame, len: total }
}

/// CRC-32C (Castagnoli), continuing from `crc` (0 to start).
pub fn crc32c(crc: u32, bytes: &[u8]) -> u32 {
    let mut crc = !crc;
    for &byte in bytes {
        crc = CRC_TABLE[((crc ^ u32::from(byte)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

const CRC_TABLE: [u32; 256] = crc_table();

const fn crc_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64, payload: &[u8]) -> Record {
        Record { seq: Seq(seq), kind: 3, received_at_ms: -5, payload: payload.to_vec() }
    }

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        // RFC 3720 B.4 / the CRC catalogue's check value for "123456789".
        assert_eq!(crc32c(0, b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(crc32c(0, b"1234"), b"56789"), 0xE306_9283);
    }

    #[test]
    fn frames_round_trip_and_damage_is_told_apart_from_a_cut_tail() {
        let mut bytes = Vec::new();
        encode_record(&mut bytes, &record(7, b"hello"));
        encode_ack(&mut bytes, Seq(9));
        let first_len = HEADER_LEN + 5;
        assert_eq!(
            parse(&bytes),
            Parsed::Frame { frame: Frame::Record(record(7, b"hello")), len: first_len }
        );
        assert_eq!(parse(&bytes[first_len..]), Parsed::Frame { frame: Frame::Ack(Seq(9)), len: HEADER_LEN });
        assert_eq!(parse(&bytes[..first_len - 1]), Parsed::Truncated);
        assert_eq!(parse(&[]), Parsed::Truncated);
        assert_eq!(parse(&[0; 40]), Parsed::Garbage);

        let mut damaged = bytes.clone();
        damaged[HEADER_LEN + 1] ^= 0x40;
        assert_eq!(parse(&damaged), Parsed::Damaged { seq: Seq(7), len: first_len });
        let mut huge = bytes.clone();
        huge[2..6].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(parse(&huge), Parsed::Garbage);
    }
}
