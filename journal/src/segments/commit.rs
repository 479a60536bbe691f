//! Applying a commit to the segment log: its records' frames go out in one write at the end
//! of the active segment (a new segment is started past `SEGMENT_BYTES`) and one
//! `fdatasync`, then unreadable records are dropped, the ack moves (acknowledged segments are
//! unlinked), records over `max_bytes` are evicted, and the `ack` file is rewritten when what
//! it says changed (synced at most every few seconds; at once when drained, and when the
//! commit asks to persist the counters: on close, and when the stage is taken back).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

use super::format::{segment_name, ACK_FILE, SEGMENT_MAGIC};
use super::{io_error, note_record, Segment, SegmentStore, SEGMENT_BYTES};
use crate::{frame, record_bytes, Commit, JournalError, Seq};

/// The ack file is synced at most this often (and on close): a stale one after a power cut
/// only resends records acknowledged in the last few seconds.
const ACK_SYNC_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

impl SegmentStore {
    pub(super) fn apply(&mut self, commit: &Commit<'_>) -> Result<(), JournalError> {
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
