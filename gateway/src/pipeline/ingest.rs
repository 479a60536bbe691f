//! The ingest: every frame the radio hands over is filtered, numbered and
//! appended to every sink's journal (and given to the decoder), then settled
//! back to the radio (`RadioIo::taken`) so that it acknowledges only what is stored.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::Context;
use berrygw_lora::filter::UplinkFilter;
use berrygw_lora::{CrcStatus, Taken, UplinkFrame};
use prost::Message;
use tokio::sync::{mpsc, watch};
use tracing::error;

use crate::decode::Decoder;
use crate::journal::{Journal, NewRecord};
use crate::period::Beat;
use crate::seq::UplinkSeq;
use crate::service::Heartbeat;
use crate::sink::chirpstack::{self, RecordKind};

use crate::view::Counters;

/// Turns radio frames into journal records.
pub(super) struct Ingest {
    pub(super) gateway_id: String,
    pub(super) filter: UplinkFilter,
    pub(super) seq: UplinkSeq,
    /// One journal per sink; each gets every accepted uplink.
    pub(super) journals: Vec<Journal>,
    pub(super) counters: Arc<Counters>,
    /// Gets every stored uplink after the journals have it.
    pub(super) decoder: Option<Decoder>,
    /// Uplinks settled so far (journaled, refused or failed); the radio acknowledges by it.
    pub(super) taken: watch::Sender<Taken>,
    /// Told of every frame, so that periodic duties run in its wake-up when due.
    pub(super) beat: Beat,
}

impl Ingest {
    /// Journal every uplink until the radio is gone, or until `stop`: then the
    /// uplink channel is closed (the radio takes no more) and what it holds is journaled.
    pub(super) async fn run(
        mut self,
        mut uplinks: mpsc::Receiver<UplinkFrame>,
        mut heartbeat: Heartbeat,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut stopping = false;
        loop {
            tokio::select! {
                frame = uplinks.recv() => {
                    let Some(frame) = frame else { return };
                    let stored = self.accept(frame).await;
                    if let Err(e) = &stored {
                        // Only the journal or the sequence file can fail here: both mean the
                        // gateway can no longer keep uplinks safe. Say so, keep trying, and let
                        // the radio know (no PUSH_ACK for it).
                        error!("uplink not stored: {e:#}");
                    }
                    self.taken.send_modify(|t| {
                        t.handled += 1;
                        if stored.is_err() {
                            t.last_failed = t.handled;
                        }
                    });
                    self.beat.tick();
                }
                _ = stop.changed(), if !stopping => {
                    stopping = true;
                    uplinks.close();
                }
                () = heartbeat.asked() => {}
            }
            heartbeat.beat();
        }
    }

    pub(super) async fn accept(&mut self, frame: UplinkFrame) -> anyhow::Result<()> {
        let c = &self.counters;
        c.received.fetch_add(1, Ordering::Relaxed);
        if frame.crc == CrcStatus::Ok {
            c.received_crc_ok.fetch_add(1, Ordering::Relaxed);
        }
        c.count_frame(&frame);
        if let Ok(mut m) = c.rx_per_frequency.lock() {
            *m.entry(frame.frequency.0).or_default() += 1;
        }
        if let Err(rejection) = self.filter.check(&frame) {
            c.reject(rejection.reason());
            tracing::debug!("uplink dropped: {rejection:?}");
            return Ok(());
        }
        let seq = match self.seq.try_next() {
            Some(n) => n,
            None => {
                // One small fsync per 10,000 uplinks; block_in_place keeps the other workers free.
                tokio::task::block_in_place(|| self.seq.reserve())
                    .context("reserving uplink sequence numbers")?;
                self.seq.try_next().context("no sequence number after reserving")?
            }
        };
        let msg = chirpstack::uplink_message(&self.gateway_id, &frame, seq, rand::random());
        let record = NewRecord {
            kind: RecordKind::Uplink as u8,
            received_at_ms: berrygw_core::unix_ms(frame.received_at),
            payload: msg.encode_to_vec(),
        };
        // Every sink but the last gets a copy; the last takes the record itself.
        if let Some((last, others)) = self.journals.split_last() {
            for journal in others {
                journal.append(record.clone()).await.context("journal append")?;
            }
            last.append(record).await.context("journal append")?;
        }
        c.queued.fetch_add(1, Ordering::Relaxed);
        if let Some(decoder) = &self.decoder {
            decoder.uplink(frame, seq);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::JournalConfig;
    use crate::service::Liveness;
    use berrygw_lora::phy::{build_data_uplink, AesKey, DataUplink, DevAddr};
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn malformed_and_filtered_frames_are_counted_and_dropped() {
        let dir = tempfile::tempdir().expect("tmp");
        let journal = Journal::open(
            "test",
            JournalConfig {
                commit_interval: Duration::from_millis(10),
                commit_max_records: 100,
                ..JournalConfig::new(crate::journal::Backend::Log, dir.path().join("j.log"), 1 << 20)
            },
        )
        .expect("journal");
        let counters = Arc::new(Counters::default());
        let ingest = Ingest {
            gateway_id: "0016c001ff10a235".into(),
            filter: UplinkFilter::new(Default::default()),
            seq: UplinkSeq::open(dir.path()).expect("seq"),
            journals: vec![journal.clone()],
            counters: counters.clone(),
            decoder: None,
            taken: watch::channel(Taken::default()).0,
            beat: Beat::default(),
        };
        let key = AesKey([7; 16]);
        let good = build_data_uplink(
            &DataUplink {
                dev_addr: DevAddr::from_u32(0x2601_1bda),
                fcnt: 1,
                confirmed: false,
                adr: false,
                f_port: 2,
                payload: &[1, 2, 3],
            },
            &key,
            &key,
        )
        .expect("frame");
        let (tx, rx) = mpsc::channel(16);
        let (_stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(ingest.run(rx, Liveness::default().heartbeat("ingest"), stop_rx));
        for f in [
            UplinkFrame::example(good.clone(), CrcStatus::Ok),
            UplinkFrame::example(vec![], CrcStatus::Ok),
            UplinkFrame::example(vec![0x40, 1, 2], CrcStatus::Ok),
            UplinkFrame::example(vec![0xff; 40], CrcStatus::Ok),
            UplinkFrame::example(good.clone(), CrcStatus::Bad),
            UplinkFrame::example(vec![0x20; 17], CrcStatus::Ok), // JoinAccept heard over the air
            UplinkFrame::example(good.clone(), CrcStatus::Ok),
        ] {
            tx.send(f).await.expect("send");
        }
        drop(tx);
        task.await.expect("ingest ends when the radio closes");
        journal.flush().await.expect("flush");
        let stored = journal.read_after(crate::journal::Seq(0), 100).await.expect("read");
        assert_eq!(stored.len(), 2, "only the two good frames are kept");
        assert_eq!(counters.received.load(Ordering::Relaxed), 7);
        assert_eq!(counters.rejected.load(Ordering::Relaxed), 5);
        let reasons = counters.rejected_by_reason.lock().expect("lock").clone();
        assert_eq!(reasons.get("crc_bad"), Some(&1), "{reasons:?}");
        assert_eq!(reasons.get("malformed"), Some(&3), "{reasons:?}");
        assert_eq!(reasons.values().sum::<u64>(), 5, "{reasons:?}");
    }
}
