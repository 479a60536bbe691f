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

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::frame::{self, Frame, Parsed, HEADER_LEN};
use super::quarantine::{open_or_quarantine, OpenFailure};
use super::{record_bytes, Commit, Counters, JournalError, Record, Seq, Store};

/// First bytes of every segment file.
const SEGMENT_MAGIC: &[u8; 8] = b"BGWSEG1\n";
/// A segment is closed and a new one started once it holds this many bytes.
pub(super) const SEGMENT_BYTES: u64 = 4 << 20;
/// Every this many records a segment's in-memory index keeps a mark.
const INDEX_EVERY: u64 = 32;
/// The ack file's name inside the store directory.
const ACK_FILE: &str = "ack";
/// Bytes of the ack file: acked, evicted_total, last_seq, evicted_to (u64 LE each), CRC-32C.
const ACK_LEN: usize = 36;
/// The tag byte written over a damaged frame's tag so that it is skipped, not counted again.
const DROPPED_TAG: u8 = 0xD0;
/// The ack file is synced at most this often (and on close): a stale one after a power cut
/// only resends records acknowledged in the last few seconds.
const ACK_SYNC_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);
/// Bytes read from a segment at a time.
const READ_CHUNK: usize = 256 * 1024;

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

/// What a commit must be undone to when it fails.
#[derive(Clone, Copy, Debug)]
struct Before {
    counters: Counters,
    evicted_to: Seq,
    /// The last segment then (its first seq and length): records appended to it are cut off,
    /// segments started after it are removed.
    tail: Option<(Seq, u64)>,
}

/// One record found by a scan, without its payload.
struct Found {
    seq: Seq,
    offset: u64,
    len: u64,
    received_at_ms: i64,
    payload_len: usize,
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

fn segment_name(first: Seq) -> String {
    format!("seg-{:020}.log", first.0)
}

fn open_store(dir: &Path) -> Result<SegmentStore, OpenFailure> {
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

fn parse_ack(bytes: &[u8]) -> Option<(Seq, u64, Seq, Seq)> {
    if bytes.len() < ACK_LEN {
        return None;
    }
    let word = |i: usize| u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().unwrap_or_default());
    let crc = u32::from_le_bytes(bytes[32..36].try_into().unwrap_or_default());
    (frame::crc32c(0, &bytes[..32]) == crc).then(|| (Seq(word(0)), word(1), Seq(word(2)), Seq(word(3))))
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

/// One step of a scan.
enum Step {
    /// A sound record: seq, frame length, received_at_ms, payload length.
    Record(Seq, usize, i64, usize),
    /// A frame to pass over silently (dropped, or a stage ack mark).
    Skip(usize),
    /// A record that fails its check.
    Damaged(Seq, usize),
    /// Nothing more can be read: "truncated" or "garbage".
    End(&'static str),
}

fn parse_at(bytes: &[u8]) -> Step {
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

impl SegmentStore {
    /// Visit the sound records of `segment` from byte `from`, in order, until `visit` says stop.
    fn scan_from(
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
    fn start_offset(&self, segment: &Segment, after: Seq) -> u64 {
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
    fn totals_upto(&self, segment: &Segment, x: Seq) -> Result<(u64, u64), JournalError> {
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
    fn range_totals(&self, from: Seq, to: Seq) -> Result<(u64, u64), JournalError> {
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
    fn recount(&mut self) -> Result<(), JournalError> {
        let acked = self.floor();
        let (records, bytes) = self.range_totals(acked, Seq(u64::MAX))?;
        self.counters.records = records;
        self.counters.bytes = bytes;
        self.refresh_oldest()
    }

    fn refresh_oldest(&mut self) -> Result<(), JournalError> {
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

    /// Unlink every segment whose records are all acknowledged; the active one only once full
    /// (so a slow far side does not make every commit create and delete a file).
    fn drop_acked_segments(&mut self) -> Result<(), JournalError> {
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

    /// Records at or below this are gone: acknowledged or evicted.
    fn floor(&self) -> Seq {
        self.counters.acked.max(self.evicted_to)
    }

    /// Evict the oldest records until the stored bytes fit `max_bytes`: the eviction point
    /// moves past them (whole segments below it are unlinked).
    fn evict(&mut self, max_bytes: u64) -> Result<(), JournalError> {
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

    fn write_ack_file(&mut self) -> Result<(), JournalError> {
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

    /// Start a new segment for records from `first` on; the directory is synced by the caller.
    fn start_segment(&mut self, first: Seq) -> Result<(), JournalError> {
        let path = self.dir.join(segment_name(first));
        let mut file = OpenOptions::new()
            .append(true)
            .create(true)
            .truncate(false)
            .mode(berrygw_core::files::STATE_FILE_MODE)
            .open(&path)
            .map_err(io_error(&path, "creating a segment"))?;
        file.write_all(SEGMENT_MAGIC).map_err(io_error(&path, "creating a segment"))?;
        self.segments.push_back(Segment::empty(first, path));
        self.active = Some(file);
        Ok(())
    }

    /// Write `self.buf` at the end of the active segment.
    fn write_out(&mut self) -> Result<(), JournalError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let Some(segment) = self.segments.back_mut() else { return Ok(()) };
        let Some(file) = self.active.as_mut() else { return Ok(()) };
        file.write_all(&self.buf).map_err(io_error(&segment.path, "appending to a segment"))?;
        segment.len += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    fn sync_active(&mut self) -> Result<(), JournalError> {
        if let (Some(file), Some(segment)) = (self.active.as_ref(), self.segments.back()) {
            file.sync_data().map_err(io_error(&segment.path, "syncing a segment"))?;
        }
        Ok(())
    }
}

fn frame_len_at(bytes: &[u8]) -> Option<usize> {
    if bytes.len() < 6 {
        return None;
    }
    let len = u32::from_le_bytes([bytes[2], bytes[3], bytes[4], bytes[5]]) as usize;
    (len <= frame::MAX_PAYLOAD).then_some(HEADER_LEN + len)
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

    fn counters(&self) -> Counters {
        self.counters
    }
}

impl SegmentStore {
    /// Undo a failed commit if one waits: segments it started are removed, the one it appended
    /// to is cut back to its length before, the ack file says what it said before (the
    /// acknowledgements it knew stay: the far side has those records either way), and the
    /// index is read again from the medium, as a restart would.
    fn finish_undo(&mut self) -> Result<(), JournalError> {
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

    fn apply(&mut self, commit: &Commit<'_>) -> Result<(), JournalError> {
        let mut new_segment = false;
        let mut wrote = false;
        for record in commit.records {
            if record.seq <= commit.ack_up_to || record.seq <= self.counters.last_seq {
                // Acknowledged before its durable write: the far side has it already.
                continue;
            }
            let full = self.segments.back().is_none_or(|s| s.len + self.buf.len() as u64 >= SEGMENT_BYTES);
            if self.active.is_none() || full {
                self.write_out()?;
                self.sync_active()?;
                self.start_segment(record.seq)?;
                new_segment = true;
            }
            let offset = self.segments.back().map_or(0, |s| s.len) + self.buf.len() as u64;
            frame::encode_record(&mut self.buf, record);
            if let Some(segment) = self.segments.back_mut() {
                note_record(segment, record.seq, offset, record.payload.len());
            }
            self.counters.last_seq = record.seq;
            self.counters.first_seq.get_or_insert(record.seq);
            self.counters.oldest_received_at_ms.get_or_insert(record.received_at_ms);
            self.counters.records += 1;
            self.counters.bytes = self.counters.bytes.saturating_add(record_bytes(record.payload.len()));
            wrote = true;
        }
        if wrote {
            self.write_out()?;
            self.sync_active()?;
            if new_segment {
                File::open(&self.dir)
                    .and_then(|d| d.sync_all())
                    .map_err(io_error(&self.dir, "syncing the journal directory"))?;
            }
        }
        self.counters.last_seq = self.counters.last_seq.max(commit.last_seq);

        for &seq in commit.unreadable {
            self.drop_record(seq)?;
        }

        let acked = commit.ack_up_to.max(self.counters.acked).min(self.counters.last_seq);
        // The ack file changes only when what it says changes for stored records: records
        // written during an outage do not touch it.
        let mut changed = !commit.unreadable.is_empty() || commit.persist_counters;
        if acked > self.counters.acked {
            let (count, bytes) = self.range_totals(self.floor(), acked.max(self.floor()))?;
            self.counters.records = self.counters.records.saturating_sub(count);
            self.counters.bytes = self.counters.bytes.saturating_sub(bytes);
            let stored_acked = count > 0;
            self.counters.acked = acked;
            self.drop_acked_segments()?;
            if stored_acked {
                self.refresh_oldest()?;
                changed = true;
            }
        }
        if self.counters.bytes > commit.max_bytes {
            self.evict(commit.max_bytes)?;
            self.refresh_oldest()?;
            changed = true;
        }
        if self.counters.records == 0 {
            self.counters.first_seq = None;
            self.counters.oldest_received_at_ms = None;
        }
        if changed {
            self.write_ack_file()?;
            let due = self.ack_synced.is_none_or(|at| at.elapsed() >= ACK_SYNC_INTERVAL);
            // A drained backlog's last ack is synced at once: no later commit may come to do
            // it, and a power cut would then send the whole last stretch again.
            let drained = self.counters.records == 0;
            if commit.persist_counters || due || drained {
                let path = self.dir.join(ACK_FILE);
                self.ack_file.sync_data().map_err(io_error(&path, "syncing the ack file"))?;
                self.ack_synced = Some(std::time::Instant::now());
            }
        }
        Ok(())
    }

    /// A record a read found unreadable: mark it dropped and count it as evicted.
    fn drop_record(&mut self, seq: Seq) -> Result<(), JournalError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn record(seq: u64) -> Record {
        Record { seq: Seq(seq), kind: 1, received_at_ms: 1_700_000_000_000, payload: vec![seq as u8; 100] }
    }

    fn commit_of(records: &[Record], max_bytes: u64) -> Commit<'_> {
        Commit {
            records,
            last_seq: records.last().map_or(Seq::NONE, |r| r.seq),
            persist_counters: false,
            ack_up_to: Seq::NONE,
            max_bytes,
            unreadable: &[],
        }
    }

    fn seqs(store: &mut SegmentStore) -> Result<Vec<u64>, JournalError> {
        Ok(store.read_after(Seq::NONE, 100)?.iter().map(|r| r.seq.0).collect())
    }

    /// A commit whose append fails leaves nothing behind: the retry stores each record once,
    /// and a reopen finds the same.
    #[test]
    fn a_failed_append_is_cut_off_and_its_retry_stores_each_record_once() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("journal");
        let (mut store, _) = SegmentStore::open(&path)?;
        store.commit(&commit_of(&[record(1), record(2)], u64::MAX))?;
        // The active segment's descriptor can no longer write: the next append fails.
        let active = store.segments.back().ok_or("a segment")?.path.clone();
        store.active = Some(File::open(&active)?);
        let batch = [record(3), record(4)];
        assert!(store.commit(&commit_of(&batch, u64::MAX)).is_err(), "the append fails");
        assert_eq!((store.counters().records, store.counters().last_seq), (2, Seq(2)));
        assert_eq!(seqs(&mut store)?, [1, 2]);

        store.commit(&commit_of(&batch, u64::MAX))?;
        assert_eq!(seqs(&mut store)?, [1, 2, 3, 4]);
        drop(store);
        let (mut reopened, quarantined) = SegmentStore::open(&path)?;
        assert!(quarantined.is_none());
        assert_eq!(seqs(&mut reopened)?, [1, 2, 3, 4]);
        assert_eq!(reopened.counters().records, 4);
        Ok(())
    }

    /// A commit that evicts and then fails evicts nothing: the eviction point goes back with
    /// the counters, in memory and in the ack file, even when the undoing itself must wait.
    #[test]
    fn a_failed_commit_evicts_nothing() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("journal");
        let (mut store, _) = SegmentStore::open(&path)?;
        store.commit(&commit_of(&[record(1), record(2), record(3), record(4)], u64::MAX))?;
        // The ack file can no longer be written: a commit that evicts fails at its end, and
        // so does the first try to undo it.
        let ack_path = path.join(ACK_FILE);
        store.ack_file = File::open(&ack_path)?;
        let room_for_two = 2 * record_bytes(100);
        assert!(store.commit(&commit_of(&[record(5)], room_for_two)).is_err(), "the ack file write fails");
        assert!(store.undo.is_some(), "the undoing waits for a writable ack file");

        store.ack_file = OpenOptions::new().read(true).write(true).open(&ack_path)?;
        assert_eq!(seqs(&mut store)?, [1, 2, 3, 4], "nothing evicted, record 5 not stored");
        let c = store.counters();
        assert_eq!((c.records, c.evicted_total, c.last_seq), (4, 0, Seq(4)));
        assert!(store.undo.is_none());
        drop(store);
        let (mut reopened, _) = SegmentStore::open(&path)?;
        assert_eq!(seqs(&mut reopened)?, [1, 2, 3, 4]);

        // The retry evicts as it should.
        reopened.commit(&commit_of(&[record(5)], room_for_two))?;
        assert_eq!(seqs(&mut reopened)?, [4, 5]);
        assert_eq!(reopened.counters().evicted_total, 3);
        Ok(())
    }
}
