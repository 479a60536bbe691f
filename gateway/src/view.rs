//! What the metrics endpoint and the status page read of a running gateway:
//! the radio side's counters, each sink's journal and counters, the decoder,
//! actuation and rules handles (shared handles, never owners), and `reload`,
//! which re-reads the files a running gateway may take again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use berrygw_lora::gwmp::GwmpHandle;
use berrygw_lora::{CrcStatus, TxStatus, UplinkFrame};
use berrygw_sx1302::ConcentratorStatus;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::watch;

use crate::actuation::engine::Actuation;
use crate::decode::Decoder;
use crate::journal::Journal;

use crate::sink::SinkCounters;

/// Labels of a received frame: CRC status, channel (frequency in Hz) and data rate.
pub type FrameLabels = [(&'static str, String); 3];

/// Counters of the radio side: what came in and what the filters made of it.
/// The metrics endpoint reads these at scrape time; nothing counts twice.
pub struct Counters {
    pub received: AtomicU64,
    pub received_crc_ok: AtomicU64,
    pub rejected: AtomicU64,
    pub queued: AtomicU64,
    /// Rejections by reason label; touched only when a frame is rejected.
    pub rejected_by_reason: Mutex<HashMap<&'static str, u64>>,
    /// Received frames by frequency since the last stats message.
    pub(crate) rx_per_frequency: Mutex<HashMap<u32, u32>>,
    /// Received frames by CRC status, channel and data rate, since start.
    pub frames: Family<FrameLabels, Counter>,
    /// RSSI of received frames (dBm).
    pub rssi: Histogram,
    /// SNR of received frames (dB).
    pub snr: Histogram,
    /// Transmissions by the radio's answer (`TxAck` status), every sink together.
    pub tx_by_status: Family<[(&'static str, &'static str); 1], Counter>,
}

impl Default for Counters {
    fn default() -> Self {
        let tx_by_status = Family::default();
        // Every status exists from the start, so a rate() over it never starts from nothing.
        for status in TX_STATUSES {
            let _ = tx_by_status.get_or_create(&[("status", tx_status_label(status))]);
        }
        Counters {
            received: AtomicU64::new(0),
            received_crc_ok: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            rejected_by_reason: Mutex::default(),
            rx_per_frequency: Mutex::default(),
            frames: Family::default(),
            // -130 .. -30 dBm in 10 dB steps.
            rssi: Histogram::new((0..11).map(|i| -130.0 + 10.0 * f64::from(i))),
            // -20 .. +10 dB in 2.5 dB steps (LoRa demodulates well below 0 dB).
            snr: Histogram::new((0..13).map(|i| -20.0 + 2.5 * f64::from(i))),
            tx_by_status,
        }
    }
}

const TX_STATUSES: [TxStatus; 12] = [
    TxStatus::Ok,
    TxStatus::TooLate,
    TxStatus::TooEarly,
    TxStatus::CollisionPacket,
    TxStatus::CollisionBeacon,
    TxStatus::TxFrequency,
    TxStatus::TxPower,
    TxStatus::GpsUnlocked,
    TxStatus::QueueFull,
    TxStatus::InternalError,
    TxStatus::DutyCycleOverflow,
    TxStatus::Unconfirmed,
];

/// The `status` label of a transmission.
pub fn tx_status_label(status: TxStatus) -> &'static str {
    match status {
        TxStatus::Ok => "ok",
        TxStatus::TooLate => "too_late",
        TxStatus::TooEarly => "too_early",
        TxStatus::CollisionPacket => "collision_packet",
        TxStatus::CollisionBeacon => "collision_beacon",
        TxStatus::TxFrequency => "tx_frequency",
        TxStatus::TxPower => "tx_power",
        TxStatus::GpsUnlocked => "gps_unlocked",
        TxStatus::QueueFull => "queue_full",
        TxStatus::InternalError => "internal_error",
        TxStatus::DutyCycleOverflow => "duty_cycle_overflow",
        TxStatus::Unconfirmed => "unconfirmed",
    }
}

impl Counters {
    pub(crate) fn count_frame(&self, frame: &UplinkFrame) {
        let crc = match frame.crc {
            CrcStatus::Ok => "ok",
            CrcStatus::Bad => "bad",
            CrcStatus::Missing => "missing",
        };
        self.frames
            .get_or_create(&[
                ("crc", crc.to_string()),
                ("frequency_hz", frame.frequency.0.to_string()),
                ("data_rate", crate::decode::reading::data_rate(&frame.modulation)),
            ])
            .inc();
        self.rssi.observe(f64::from(frame.rssi));
        self.snr.observe(f64::from(frame.snr));
    }

    pub(crate) fn reject(&self, reason: &'static str) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut m) = self.rejected_by_reason.lock() {
            *m.entry(reason).or_default() += 1;
        }
    }
}

/// What the metrics endpoint and the status page read: shared handles, never owners.
#[derive(Clone)]
pub struct GatewayView {
    pub gateway_id: String,
    /// `sim`, `gwmp` or `sx1302`.
    pub radio_kind: &'static str,
    pub started: Instant,
    pub counters: Arc<Counters>,
    pub sinks: Vec<SinkView>,
    /// The concentrator's health, when the radio is an sx1302.
    pub concentrator: Option<watch::Receiver<ConcentratorStatus>>,
    /// The packet-forwarder ingest's counters, when the radio is `gwmp`.
    pub gwmp: Option<GwmpHandle>,
    /// The local decoder, when `[decode]` is configured.
    pub decoder: Option<Decoder>,
    /// The actuation engine, when `[field]` is configured.
    pub actuation: Option<Actuation>,
    /// The running rules (their alarms, their reload), when rules are configured.
    pub rules: Option<crate::automation::Rules>,
    /// The configuration bundle in force (`crate::bundle`), when `[bundles]` is on.
    pub config_version: Option<watch::Receiver<Option<u64>>>,
    /// The app sink's topics, when `[sinks.app]` is on.
    pub app_topics: Option<crate::events::AppTopics>,
    /// The uplinks' wake-ups, which periodic duties ride on (`crate::period`).
    pub beat: crate::period::Beat,
}

/// One sink as seen from outside: its name, journal statistics and counters.
#[derive(Clone)]
pub struct SinkView {
    pub name: &'static str,
    pub journal: Journal,
    pub counters: Arc<SinkCounters>,
}

/// What a reload re-read: counts of what is now in force.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reloaded {
    pub devices: Option<usize>,
    pub codecs: Option<usize>,
    pub keys: Option<usize>,
    pub rules: Option<usize>,
}

impl std::fmt::Display for Reloaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if let (Some(d), Some(c)) = (self.devices, self.codecs) {
            parts.push(format!("{d} devices, {c} codecs"));
        }
        if let Some(k) = self.keys {
            parts.push(format!("{k} authorized keys"));
        }
        if let Some(r) = self.rules {
            parts.push(format!("{r} rules"));
        }
        write!(f, "{}", parts.join("; "))
    }
}

/// Re-read the device registry and codecs, the authorized keys and the rules
/// (each file on its own: a bad one is refused and stays as it was, the good
/// ones are swapped in); the error lists what was refused.
pub async fn reload(view: &GatewayView) -> Result<Reloaded, String> {
    let mut done = Reloaded::default();
    let mut errors = Vec::new();
    if let Some(decoder) = &view.decoder {
        match decoder.reload().await {
            Ok(r) => {
                done.devices = Some(r.devices);
                done.codecs = Some(r.codecs);
            }
            Err(e) => errors.push(format!("device registry: {e}")),
        }
    }
    if let Some(actuation) = &view.actuation {
        if actuation.accepts_central() {
            match actuation.reload_keys() {
                Ok(n) => done.keys = Some(n),
                Err(e) => errors.push(format!("authorized keys: {e}")),
            }
        }
    }
    if let Some(rules) = &view.rules {
        match rules.reload().await {
            Ok(n) => done.rules = Some(n),
            Err(e) => errors.push(format!("rules: {e}")),
        }
    }
    if view.decoder.is_none() && view.actuation.is_none() {
        errors.push("nothing to reload: neither [decode] nor [field] is configured".into());
    }
    if errors.is_empty() {
        Ok(done)
    } else {
        Err(errors.join("; "))
    }
}
