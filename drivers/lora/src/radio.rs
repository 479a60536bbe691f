//! The contract between a radio and the pipeline: a radio source pushes every
//! received frame into `RadioIo::uplinks`, takes transmit requests from
//! `RadioIo::downlinks` and answers each with a `TxAck` on `RadioIo::tx_acks`.
//! Channels are bounded; a radio that cannot hand over a frame waits (the
//! concentrator has its own FIFO) rather than growing memory.

use std::future::Future;
use std::pin::Pin;

use tokio::sync::{mpsc, watch};

use crate::frame::{DownlinkFrame, TxAck, UplinkFrame};

/// The channels a radio source talks through.
pub struct RadioIo {
    pub uplinks: mpsc::Sender<UplinkFrame>,
    pub downlinks: mpsc::Receiver<DownlinkFrame>,
    pub tx_acks: mpsc::Sender<TxAck>,
    /// The pipeline's account of the frames handed to it. A radio that acknowledges frames
    /// to a sender (the GWMP ingest's PUSH_ACK) waits for it, so that an acknowledged frame
    /// is never only in a channel, and never one the pipeline failed to store. `None`:
    /// handing a frame over is enough (tests, tools).
    pub taken: Option<watch::Receiver<Taken>>,
}

/// How far the pipeline has got with the frames handed to it, counted from 1 in the order
/// they were handed over.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Taken {
    /// Frames settled so far: stored in every sink's journal, refused by a filter, or failed.
    pub handled: u64,
    /// The number of the last frame that could not be stored (a journal or the sequence
    /// file failed); 0 while none has failed. A sender must not be told such a frame is safe.
    pub last_failed: u64,
}

impl Taken {
    /// Whether frames `first..=last` (handed-over numbers) are all settled and none failed:
    /// `None` while some are not settled yet.
    pub fn stored(&self, first: u64, last: u64) -> Option<bool> {
        (self.handled >= last).then_some(self.last_failed < first)
    }
}

/// Why a radio source stopped.
#[derive(Debug, thiserror::Error)]
pub enum RadioError {
    #[error("radio start failed: {0}")]
    Start(String),
    #[error("radio failed: {0}")]
    Failed(String),
}

/// A future that runs a radio until the pipeline closes its channels.
pub type RadioTask = Pin<Box<dyn Future<Output = Result<(), RadioError>> + Send>>;

/// Something that receives LoRa frames and can transmit them.
pub trait RadioSource: Send {
    /// Short name for logs and status ("sim", "sx1302", "gwmp").
    fn kind(&self) -> &'static str;

    /// Start the radio. The returned future runs until the uplink channel is
    /// closed (pipeline shutdown) or the radio fails for good.
    fn start(self: Box<Self>, io: RadioIo) -> RadioTask;
}
