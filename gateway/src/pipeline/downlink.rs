//! Downlinks from every sink go to the one radio; each `TxAck` goes back to the
//! sink whose downlink it answers.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use berrygw_lora::{DownlinkFrame, TxAck, TxStatus};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::decode::Decoder;
use crate::sink::SinkRadioIo;
use crate::view::{tx_status_label, Counters};

/// Downlinks from every sink go to the one radio; each `TxAck` goes back to the
/// sink whose downlink it answers (by downlink id; the newest claim wins).
pub(super) struct DownlinkRouter {
    pub(super) to_radio: mpsc::Sender<DownlinkFrame>,
    pub(super) from_sinks: mpsc::Sender<(usize, DownlinkFrame)>,
    pub(super) from_sinks_rx: mpsc::Receiver<(usize, DownlinkFrame)>,
    pub(super) to_sinks: Vec<mpsc::Sender<TxAck>>,
    pub(super) forwarders: Vec<JoinHandle<()>>,
    /// Sees every downlink and TxAck (a transmitted JoinAccept starts a session).
    pub(super) decoder: Option<Decoder>,
}

/// Downlink ids remembered for routing acks; older ones are forgotten.
pub(super) const ROUTED_DOWNLINKS: usize = 1024;

impl DownlinkRouter {
    pub(super) fn new(to_radio: mpsc::Sender<DownlinkFrame>) -> DownlinkRouter {
        let (from_sinks, from_sinks_rx) = mpsc::channel(64);
        DownlinkRouter {
            to_radio,
            from_sinks,
            from_sinks_rx,
            to_sinks: Vec::new(),
            forwarders: Vec::new(),
            decoder: None,
        }
    }

    /// Channels for one more sink.
    pub(super) fn attach(&mut self) -> SinkRadioIo {
        let index = self.to_sinks.len();
        let (down_tx, mut down_rx) = mpsc::channel::<DownlinkFrame>(64);
        let (ack_tx, ack_rx) = mpsc::channel(64);
        self.to_sinks.push(ack_tx);
        let tagged = self.from_sinks.clone();
        self.forwarders.push(tokio::spawn(async move {
            while let Some(frame) = down_rx.recv().await {
                if tagged.send((index, frame)).await.is_err() {
                    return;
                }
            }
        }));
        SinkRadioIo { downlinks: down_tx, tx_acks: ack_rx }
    }

    pub(super) async fn run(mut self, mut acks: mpsc::Receiver<TxAck>, counters: Arc<Counters>) {
        drop(self.from_sinks);
        let mut owner: HashMap<u32, usize> = HashMap::new();
        let mut order: VecDeque<u32> = VecDeque::new();
        loop {
            tokio::select! {
                Some((index, frame)) = self.from_sinks_rx.recv() => {
                    if owner.insert(frame.downlink_id, index).is_none() {
                        order.push_back(frame.downlink_id);
                        if order.len() > ROUTED_DOWNLINKS {
                            if let Some(old) = order.pop_front() {
                                owner.remove(&old);
                            }
                        }
                    }
                    if let Some(decoder) = &self.decoder {
                        decoder.downlink(frame.downlink_id, &frame.phy_payload);
                    }
                    if self.to_radio.send(frame).await.is_err() {
                        return;
                    }
                }
                ack = acks.recv() => {
                    let Some(ack) = ack else { return };
                    counters.tx_by_status.get_or_create(&[("status", tx_status_label(ack.status))]).inc();
                    if let Some(decoder) = &self.decoder {
                        // A JoinAccept handed to a forwarder that cannot confirm (GWMP v1) was
                        // most likely sent: the device's next frame proves it either way.
                        decoder.tx_ack(ack.downlink_id, matches!(ack.status, TxStatus::Ok | TxStatus::Unconfirmed));
                    }
                    match owner.remove(&ack.downlink_id).and_then(|i| self.to_sinks.get(i)) {
                        Some(sink) => {
                            let _ = sink.send(ack).await;
                        }
                        None => tracing::debug!(downlink_id = ack.downlink_id, "TxAck for an unknown downlink dropped"),
                    }
                }
            }
        }
    }
}
