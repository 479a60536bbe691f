//! Sinks: where records go after the journal. Each sink reads its own
//! journal and acknowledges records only when the far side has them.
//! One folder per sink: `mqtt/` the MQTT connection of the ChirpStack and app
//! sinks, `semtech_udp/` the GWMP client; each holds its config section
//! (`config.rs`), its session (`mod.rs`), its in-order ack window (`window.rs`)
//! and its tests. `chirpstack` is the ChirpStack protocol the MQTT sink speaks
//! (topics and messages; the app sink's is `crate::events`). What every sink
//! shares: `read_ahead` the journal window, `reconnect` the reconnect loop and
//! its backoff, `pace` the per-device pacing of a replayed backlog (TLS and the
//! broker URL are `berrygw_proto`'s: the central tool connects the same way).

pub mod basic_station;
pub mod chirpstack;
pub mod mqtt;
pub mod pace;
pub mod read_ahead;
pub mod reconnect;
pub mod semtech_udp;

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use berrygw_lora::{DownlinkFrame, TxAck};
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::{mpsc, Notify};

/// Counters of one sink, written by its task only.
pub struct SinkCounters {
    /// Records the far side acknowledged.
    pub forwarded: AtomicU64,
    /// Journal records the sink could not turn into a wire message: set aside
    /// (acknowledged out of the journal) and counted, never retried.
    pub bad_records: AtomicU64,
    pub reconnects: AtomicU64,
    pub downlinks_received: AtomicU64,
    pub tx_acks: AtomicU64,
    /// Malformed commands or datagrams from the far side.
    pub bad_commands: AtomicU64,
    /// Whether the far side answers; set through [`SinkCounters::set_connected`].
    pub connected: AtomicBool,
    /// When `connected` last changed (Unix ms; 0: never): the availability ledger dates a
    /// backhaul incident from it.
    pub connected_changed_ms: AtomicI64,
    /// Told when `connected` changes (the health record's news; shared by every sink).
    pub news: Arc<Notify>,
    /// Seconds from publishing a record to the far side's acknowledgement (MQTT: PUBACK,
    /// as read: late while `acks_read_late`).
    pub publish_ack_latency: Histogram,
    /// MQTT: whether PUBACKs wait for the sink's next publish (README "Journal").
    pub acks_read_late: AtomicBool,
}

impl Default for SinkCounters {
    fn default() -> Self {
        SinkCounters {
            forwarded: AtomicU64::new(0),
            bad_records: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            downlinks_received: AtomicU64::new(0),
            tx_acks: AtomicU64::new(0),
            bad_commands: AtomicU64::new(0),
            connected: AtomicBool::new(false),
            connected_changed_ms: AtomicI64::new(0),
            acks_read_late: AtomicBool::new(false),
            news: Arc::new(Notify::new()),
            // 5 ms .. about 20 s.
            publish_ack_latency: Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.005, 2.0, 13,
            )),
        }
    }
}

impl SinkCounters {
    /// Counters whose connection changes are told to `news`.
    pub fn telling(news: &Arc<Notify>) -> SinkCounters {
        SinkCounters { news: news.clone(), ..SinkCounters::default() }
    }

    /// The far side answers (or stopped answering); `news` is told of a change.
    pub fn set_connected(&self, connected: bool) {
        if self.connected.swap(connected, Ordering::Relaxed) != connected {
            self.connected_changed_ms
                .store(berrygw_core::unix_ms(std::time::SystemTime::now()), Ordering::Relaxed);
            self.news.notify_one();
        }
    }
}

/// The channels between a network server sink and the radio: its downlinks out, the
/// radio's answers (`TxAck`) back.
pub struct SinkRadioIo {
    pub downlinks: mpsc::Sender<DownlinkFrame>,
    pub tx_acks: mpsc::Receiver<TxAck>,
}
