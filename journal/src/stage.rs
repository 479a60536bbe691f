//! The RAM stage: every appended record is written to a file on a RAM file system (tmpfs,
//! `[journal] stage_dir`, `/run/berrygw/journal` under systemd) before `append` returns, so
//! a record the gateway accepted is in the kernel before the packet forwarder gets its
//! PUSH_ACK: a crash or `kill -9` of berrygw loses nothing, while the SD card sees only the
//! records that are still unacknowledged at their durability deadline (the segment log).
//! A power cut empties the stage too; what it can take is bounded by the commit window.
//!
//! The stage holds frames (`frame.rs`): records, and ack marks written when the far side
//! acknowledges something. Whenever nothing in it is waiting (every staged record
//! acknowledged or durable in the store) it starts over: an ack mark is written at offset 0
//! and the next record after it, over the old frames (no truncation: on tmpfs a truncate
//! frees the page and the next write allocates and zeroes a new one, which cost more than the
//! rest of the uplink's journal work). When an acknowledgement empties it (`start_over`), the
//! mark waits for the next record and goes out in the same write, so an uplink at the
//! field's rates costs one write here, not two: a crash in between gives back the records
//! acknowledged since the last write, which are sent again (at least once, never lost); a
//! clean close (the stage dropped) writes the mark. What lies after the live frames is older: seqs at or
//! below the mark, or bytes that do not parse, so reading stops there. When the live part
//! grows past [`REWRITE_BYTES`] the stage is rewritten with only the waiting records. On open,
//! what a previous process left is read back: records after the last ack mark go to the store
//! before anything else happens.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::frame::{self, Frame, Parsed};
use super::{Record, Seq};

/// A stage this large is rewritten with only its waiting records.
const REWRITE_BYTES: u64 = 4 << 20;

/// The stage file of one journal.
pub(super) struct Stage {
    path: PathBuf,
    file: File,
    /// End of the live frames: the next frame is written here.
    len: u64,
    buf: Vec<u8>,
    /// A start-over whose ack mark is not written yet: it goes in front of the next record.
    start_over: Option<Seq>,
    /// An ack mark not written yet (records still waiting after it): it goes in front of
    /// the next record, or out at a clean close.
    mark: Option<Seq>,
}

/// What a previous process left in the stage.
#[derive(Debug, Default)]
pub(super) struct Recovered {
    /// Staged records after the last ack mark, in seq order.
    pub records: Vec<Record>,
    /// The highest ack mark (everything up to it was acknowledged).
    pub acked: Seq,
    /// Why reading stopped early, if the file was damaged (the rest is ignored).
    pub damage: Option<String>,
}

/// The stage file for the journal stored at `journal_path`: one per journal, so two
/// journals (or two gateways on one machine) never share one.
pub(super) fn stage_path(stage_dir: &Path, name: &str, journal_path: &Path) -> PathBuf {
    let absolute = std::path::absolute(journal_path).unwrap_or_else(|_| journal_path.to_path_buf());
    let tag = frame::crc32c(0, absolute.as_os_str().as_encoded_bytes());
    let safe: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
        .collect();
    stage_dir.join(format!("{safe}-{tag:08x}.stage"))
}

impl Stage {
    /// Open (creating it and its directory, 0700/0600) the stage at `path` and read back
    /// what it holds.
    pub(super) fn open(path: &Path) -> std::io::Result<(Stage, Recovered)> {
        if let Some(parent) = path.parent() {
            berrygw_core::files::create_private_dir(parent)?;
        }
        let mut file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let recovered = recover(&bytes);
        let len = bytes.len() as u64;
        Ok((
            Stage { path: path.to_path_buf(), file, len, buf: Vec::new(), start_over: None, mark: None },
            recovered,
        ))
    }

    /// Where the stage lives.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Write one record; it is in the kernel when this returns.
    pub(super) fn append(&mut self, record: &Record) -> std::io::Result<()> {
        self.buf.clear();
        if let Some(acked) = self.start_over.take().or(self.mark.take()) {
            frame::encode_ack(&mut self.buf, acked);
        }
        frame::encode_record(&mut self.buf, record);
        self.write_buf()
    }

    /// Note that everything up to `up_to` was acknowledged; the mark goes out with the next
    /// record (or at a clean close), like a start-over's: a crash in between sends those
    /// records again, never loses one.
    pub(super) fn ack(&mut self, up_to: Seq) {
        self.mark = Some(up_to);
    }

    /// Nothing staged is waiting any more (everything up to `acked` acknowledged, the rest
    /// durable in the store): start over at offset 0 with an ack mark, written now.
    pub(super) fn clear(&mut self, acked: Seq) -> std::io::Result<()> {
        self.start_over = None;
        self.mark = None;
        self.len = 0;
        self.write_mark(acked)
    }

    /// Write an ack mark alone, at the end of the live frames.
    fn write_mark(&mut self, acked: Seq) -> std::io::Result<()> {
        self.buf.clear();
        frame::encode_ack(&mut self.buf, acked);
        self.write_buf()
    }

    /// Every staged record is acknowledged (up to `acked`): start over at offset 0, the ack
    /// mark written with the next record (or at a clean close). Only for acknowledgements:
    /// records made durable in the store need their mark at once (`clear`), or a crash
    /// would put them in the store twice.
    pub(super) fn start_over(&mut self, acked: Seq) {
        self.len = 0;
        self.mark = None;
        self.start_over = Some(acked);
    }

    /// Whether the stage has grown past [`REWRITE_BYTES`] and should be rewritten.
    pub(super) fn wants_rewrite(&self) -> bool {
        self.len > REWRITE_BYTES
    }

    /// Replace the stage by one holding only `waiting` (and the ack mark `acked`).
    pub(super) fn rewrite<'a>(
        &mut self,
        waiting: impl Iterator<Item = &'a Record>,
        acked: Seq,
    ) -> std::io::Result<()> {
        self.buf.clear();
        frame::encode_ack(&mut self.buf, acked);
        for record in waiting {
            frame::encode_record(&mut self.buf, record);
        }
        self.start_over = None;
        self.mark = None;
        let tmp = self.path.with_extension("stage.new");
        {
            let mut file =
                OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
            file.write_all(&self.buf)?;
        }
        std::fs::rename(&tmp, &self.path)?;
        self.file = OpenOptions::new().read(true).write(true).open(&self.path)?;
        self.len = self.buf.len() as u64;
        Ok(())
    }

    fn write_buf(&mut self) -> std::io::Result<()> {
        self.file.write_all_at(&self.buf, self.len)?;
        self.len += self.buf.len() as u64;
        Ok(())
    }
}

impl Drop for Stage {
    /// A clean close: the start-over's mark is written (best effort), so the next start
    /// sends nothing again.
    fn drop(&mut self) {
        if let Some(acked) = self.start_over.take() {
            let _ = self.clear(acked);
        } else if let Some(acked) = self.mark.take() {
            let _ = self.write_mark(acked);
        }
    }
}

/// Records after the last ack mark, in seq order, and the ack. Reading stops at the first
/// record whose seq does not grow (an older frame left behind by a start-over) or at bytes
/// that are no frame; only a frame that parses but fails its check is reported as damage.
fn recover(bytes: &[u8]) -> Recovered {
    let mut recovered = Recovered::default();
    let mut offset = 0;
    let mut last = Seq::NONE;
    while offset < bytes.len() {
        match frame::parse(&bytes[offset..]) {
            Parsed::Frame { frame, len } => {
                match frame {
                    Frame::Ack(seq) => recovered.acked = recovered.acked.max(seq),
                    Frame::Record(record) => {
                        if record.seq <= last {
                            break;
                        }
                        last = record.seq;
                        recovered.records.push(record);
                    }
                }
                offset += len;
            }
            Parsed::Damaged { seq, .. } if seq > last && seq > recovered.acked => {
                recovered.damage = Some(format!("record {seq} at byte {offset} fails its check"));
                break;
            }
            Parsed::Damaged { .. } | Parsed::Truncated | Parsed::Garbage => break,
        }
    }
    let acked = recovered.acked;
    recovered.records.retain(|record| record.seq > acked);
    recovered
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64) -> Record {
        Record { seq: Seq(seq), kind: 1, received_at_ms: seq as i64, payload: vec![seq as u8; 10] }
    }

    #[test]
    fn a_reopened_stage_gives_back_what_was_not_acknowledged() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = stage_path(dir.path(), "chirp stack", Path::new("/var/lib/berrygw/journal/x.log"));
        assert!(path.file_name().unwrap_or_default().to_string_lossy().starts_with("chirp_stack-"));
        let (mut stage, recovered) = Stage::open(&path)?;
        assert!(recovered.records.is_empty());
        for seq in 1..=5 {
            stage.append(&record(seq))?;
        }
        stage.ack(Seq(3));
        drop(stage);

        let (mut stage, recovered) = Stage::open(&path)?;
        assert_eq!(recovered.acked, Seq(3));
        assert_eq!(recovered.records, vec![record(4), record(5)]);
        assert_eq!(recovered.damage, None);

        stage.rewrite([record(5)].iter(), Seq(4))?;
        stage.append(&record(6))?;
        drop(stage);
        let (mut stage, recovered) = Stage::open(&path)?;
        assert_eq!(recovered.records, vec![record(5), record(6)]);
        stage.clear(Seq(6))?;
        drop(stage);
        let (mut stage, recovered) = Stage::open(&path)?;
        assert!(recovered.records.is_empty(), "the old frames after the mark are not taken back");
        // Starting over writes over the old frames; only the new ones come back.
        stage.clear(Seq(6))?;
        stage.append(&record(7))?;
        drop(stage);
        let (_, recovered) = Stage::open(&path)?;
        assert_eq!(recovered.records, vec![record(7)]);
        assert_eq!(recovered.damage, None);
        Ok(())
    }

    #[test]
    fn a_start_over_is_written_with_the_next_record_or_at_a_clean_close() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("s.stage");
        let (mut stage, _) = Stage::open(&path)?;
        stage.append(&record(1))?;
        stage.start_over(Seq(1));
        assert_eq!(std::fs::read(&path)?.len(), frame::HEADER_LEN + 10, "nothing written yet");
        stage.append(&record(2))?;
        assert_eq!(std::fs::read(&path)?.len(), 2 * frame::HEADER_LEN + 10, "the mark and record 2 at 0");
        // A crash (no drop) before the next record: what was acknowledged since the last write
        // comes back, to be sent again; nothing is lost.
        stage.start_over(Seq(2));
        std::mem::forget(stage);
        let (mut stage, recovered) = Stage::open(&path)?;
        assert_eq!((recovered.acked, recovered.records.clone()), (Seq(1), vec![record(2)]));
        // A clean close writes the mark: nothing comes back.
        stage.append(&record(3))?;
        stage.start_over(Seq(3));
        drop(stage);
        let (_, recovered) = Stage::open(&path)?;
        assert_eq!((recovered.acked, recovered.records), (Seq(3), vec![]));
        Ok(())
    }

    #[test]
    fn an_ack_mark_goes_out_with_the_next_record_or_at_a_clean_close() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("s.stage");
        let (mut stage, _) = Stage::open(&path)?;
        for seq in 1..=3 {
            stage.append(&record(seq))?;
        }
        let written = std::fs::read(&path)?.len();
        stage.ack(Seq(2));
        assert_eq!(std::fs::read(&path)?.len(), written, "nothing written for the ack alone");
        stage.append(&record(4))?;
        assert_eq!(
            std::fs::read(&path)?.len(),
            written + 2 * frame::HEADER_LEN + 10,
            "the mark and record 4"
        );
        // A crash before the next record: records acknowledged since come back (sent again).
        stage.ack(Seq(3));
        std::mem::forget(stage);
        let (mut stage, recovered) = Stage::open(&path)?;
        assert_eq!((recovered.acked, recovered.records), (Seq(2), vec![record(3), record(4)]));
        // A clean close writes the mark: nothing comes back.
        stage.ack(Seq(4));
        drop(stage);
        let (_, recovered) = Stage::open(&path)?;
        assert_eq!((recovered.acked, recovered.records), (Seq(4), vec![]));
        Ok(())
    }

    #[test]
    fn a_damaged_stage_gives_back_what_precedes_the_damage() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("s.stage");
        let (mut stage, _) = Stage::open(&path)?;
        for seq in 1..=3 {
            stage.append(&record(seq))?;
        }
        drop(stage);
        let mut bytes = std::fs::read(&path)?;
        let third = 2 * (frame::HEADER_LEN + 10);
        bytes[third + frame::HEADER_LEN] ^= 1;
        std::fs::write(&path, &bytes)?;
        let (_, recovered) = Stage::open(&path)?;
        assert_eq!(recovered.records, vec![record(1), record(2)]);
        assert!(recovered.damage.is_some_and(|d| d.contains("record 3")));
        Ok(())
    }
}
