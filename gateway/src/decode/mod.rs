//! Local decoding, the transform between the radio and the app sink: uplinks
//! of the devices in the registry are verified (MIC), decrypted, counted
//! against replays and run through their codec; the reading goes to the app
//! journal and to in-process subscribers (rules, status page). Frames of other
//! devices are not touched here: they reach the network server as they came.
//!
//! Everything runs on one thread of its own (`berrygw-decode`): JavaScript
//! codecs are blocking, not `Send`, and may be slow or hostile; the uplink
//! path hands frames over with `try_send` and never waits for decoding. A
//! full queue drops the *reading* (counted), never the uplink.
//!
//! Not here: the LoRaWAN crypto (`berrygw_lora::security`), the codecs
//! (`berrygw_codecs`), publishing (`sink::mqtt` reads the app journal).

pub mod cli;
pub mod engine;
pub mod reading;
pub mod registry;
pub mod sessions;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self as std_mpsc, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use berrygw_codecs::Limits;
use berrygw_lora::gwmp::LogLimiter;
use berrygw_lora::phy::MType;
use berrygw_lora::UplinkFrame;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use tokio::sync::{broadcast, oneshot, watch};
use tracing::{error, info, warn};

pub use self::engine::Installed;
use self::engine::{Codecs, Engine, Outcome};
pub use self::reading::Reading;
use self::registry::Registry;
use self::sessions::{SessionStore, FLUSH_EVERY};
use crate::journal::Journal;
use crate::sink::app::{AppTopics, PushedSession};

/// Frames waiting to be decoded; past this the newest readings are dropped (counted).
const QUEUE: usize = 4096;

/// Everything the decoder needs, resolved from configuration.
#[derive(Clone, Debug)]
pub struct DecoderSettings {
    pub gateway_id: String,
    pub devices: PathBuf,
    pub codec_dirs: Vec<PathBuf>,
    pub limits: Limits,
    /// `<state_dir>/sessions.sqlite`.
    pub sessions: PathBuf,
    /// Topics of the app sink; `None` when there is no app sink (readings stay local).
    pub topics: Option<AppTopics>,
}

/// Counters of the decoder, read by the metrics endpoint.
pub struct DecodeCounters {
    /// Readings made (whatever their codec said).
    pub readings: AtomicU64,
    /// Uplinks of our devices that made no reading, by reason (`mic`, `replay`, ...),
    /// and codec failures by reason (`codec_timeout`, ...).
    pub errors: Family<[(&'static str, &'static str); 1], Counter>,
    /// Frames of devices not in the registry (forwarded untouched).
    pub not_ours: AtomicU64,
    /// Sessions started by a join this gateway relayed, or pushed.
    pub sessions_started: Family<[(&'static str, &'static str); 1], Counter>,
    /// Readings lost because the decoder's queue was full.
    pub dropped: AtomicU64,
    pub devices: AtomicU64,
    pub sessions: AtomicU64,
    /// Registry reloads by result (`ok`, `failed`).
    pub reloads: Family<[(&'static str, &'static str); 1], Counter>,
    /// Time to verify, decrypt and decode one uplink, seconds.
    pub decode_seconds: Histogram,
}

impl Default for DecodeCounters {
    fn default() -> Self {
        // The usual labels exist from the start, so a rate() over them never starts from nothing.
        let errors = Family::default();
        for reason in ["mic", "replay", "fcnt_gap", "codec_errors", "codec_timeout"] {
            let _ = errors.get_or_create(&[("reason", reason)]);
        }
        let sessions_started = Family::default();
        for source in ["join", "pushed"] {
            let _ = sessions_started.get_or_create(&[("source", source)]);
        }
        let reloads = Family::default();
        for result in ["ok", "failed"] {
            let _ = reloads.get_or_create(&[("result", result)]);
        }
        DecodeCounters {
            readings: AtomicU64::new(0),
            errors,
            not_ours: AtomicU64::new(0),
            sessions_started,
            dropped: AtomicU64::new(0),
            devices: AtomicU64::new(0),
            sessions: AtomicU64::new(0),
            reloads,
            // 10 µs .. about 0.3 s (a codec at its time limit).
            decode_seconds: Histogram::new(exponential_buckets(0.000_01, 2.0, 15)),
        }
    }
}

/// The latest reading of each device, by device name (status page).
pub type LatestReadings = BTreeMap<String, Arc<Reading>>;

/// What a reload did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReloadReport {
    pub devices: usize,
    pub codecs: usize,
}

enum Msg {
    Uplink(Box<UplinkFrame>, u64),
    Downlink(u32, Vec<u8>),
    TxAck(u32, bool),
    Push(PushedSession, oneshot::Sender<Result<Installed, String>>),
    Reload(oneshot::Sender<Result<ReloadReport, String>>),
    /// Decode what is queued, write the sessions, end the thread.
    Stop(oneshot::Sender<()>),
}

/// The handle every other part holds; cheap to clone.
#[derive(Clone)]
pub struct Decoder {
    tx: SyncSender<Msg>,
    pub counters: Arc<DecodeCounters>,
    latest: watch::Receiver<LatestReadings>,
    readings: broadcast::Sender<Arc<Reading>>,
}

impl Decoder {
    /// Load the registry, open the sessions and start the decoder thread. Fails
    /// (and starts nothing) if the registry or a codec is bad: the daemon
    /// refuses to start rather than decode with half a registry.
    pub fn spawn(
        settings: DecoderSettings,
        app_journal: Option<Journal>,
    ) -> anyhow::Result<(Decoder, std::thread::JoinHandle<()>)> {
        let registry = Registry::load(&settings.devices, &settings.codec_dirs)?;
        let (store, sessions) = SessionStore::open(&settings.sessions)?;
        let (tx, rx) = std_mpsc::sync_channel(QUEUE);
        let counters = Arc::new(DecodeCounters::default());
        let (latest_tx, latest) = watch::channel(LatestReadings::new());
        let (readings, _) = broadcast::channel(256);
        let runtime =
            tokio::runtime::Handle::try_current().context("the decoder starts inside the runtime")?;
        let (started_tx, started_rx) = std_mpsc::sync_channel(1);
        let thread = {
            let counters = counters.clone();
            let readings = readings.clone();
            std::thread::Builder::new()
                .name("berrygw-decode".into())
                .spawn(move || {
                    // Codecs are not Send: they are compiled here and live here.
                    let codecs = match Codecs::build(&registry, &settings.limits) {
                        Ok(c) => c,
                        Err(e) => {
                            let _ = started_tx.send(Err(anyhow::Error::new(e)));
                            return;
                        }
                    };
                    let topics = settings.topics.clone();
                    let engine =
                        Engine::new(settings.gateway_id.clone(), topics, registry, codecs, store, sessions);
                    let _ = started_tx.send(Ok(()));
                    let worker = Worker {
                        engine,
                        settings,
                        counters,
                        latest: latest_tx,
                        readings,
                        app_journal,
                        runtime,
                    };
                    worker.run(rx);
                })
                .context("starting the decoder thread")?
        };
        started_rx.recv().context("the decoder thread stopped while starting")??;
        let decoder = Decoder { tx, counters, latest, readings };
        Ok((decoder, thread))
    }

    fn offer(&self, msg: Msg) {
        match self.tx.try_send(msg) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Decode an accepted uplink (never waits; a full queue drops the reading).
    pub fn uplink(&self, frame: UplinkFrame, seq: u64) {
        self.offer(Msg::Uplink(Box::new(frame), seq));
    }

    /// A downlink on its way to the radio (JoinAccepts start sessions).
    pub fn downlink(&self, downlink_id: u32, phy_payload: &[u8]) {
        // Only JoinAccepts matter; data downlinks are not copied.
        if phy_payload.first().is_some_and(|mhdr| MType::from_mhdr(*mhdr) == MType::JoinAccept) {
            self.offer(Msg::Downlink(downlink_id, phy_payload.to_vec()));
        }
    }

    /// The radio's answer to a downlink.
    pub fn tx_ack(&self, downlink_id: u32, transmitted: bool) {
        self.offer(Msg::TxAck(downlink_id, transmitted));
    }

    /// Install session keys pushed by the central side (authenticated by the caller): the
    /// device and the source of the session replaced, or why not. Never dropped: it waits its
    /// turn behind queued frames.
    pub async fn push(&self, session: PushedSession) -> Result<Installed, String> {
        let (reply, answer) = oneshot::channel();
        let tx = self.tx.clone();
        tokio::task::spawn_blocking(move || tx.send(Msg::Push(session, reply)))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|_| "the decoder is not running".to_string())?;
        answer.await.map_err(|_| "the decoder stopped before installing the session".to_string())?
    }

    /// Re-read the registry and its codecs; on any error the registry in force stays.
    pub async fn reload(&self) -> Result<ReloadReport, String> {
        let (reply, answer) = oneshot::channel();
        // A reload waits its turn behind queued frames rather than being dropped.
        let tx = self.tx.clone();
        tokio::task::spawn_blocking(move || tx.send(Msg::Reload(reply)))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|_| "the decoder is not running".to_string())?;
        answer.await.map_err(|_| "the decoder stopped during the reload".to_string())?
    }

    /// Decode what is queued, write sessions and counters, and stop the thread.
    pub async fn stop(&self) {
        let (reply, answer) = oneshot::channel();
        let tx = self.tx.clone();
        let sent = tokio::task::spawn_blocking(move || tx.send(Msg::Stop(reply)).is_ok()).await;
        if matches!(sent, Ok(true)) {
            let _ = answer.await;
        }
    }

    /// Every new reading, for in-process consumers (rules).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Reading>> {
        self.readings.subscribe()
    }

    /// The latest reading of each device.
    pub fn latest(&self) -> watch::Receiver<LatestReadings> {
        self.latest.clone()
    }
}

struct Worker {
    engine: Engine,
    settings: DecoderSettings,
    counters: Arc<DecodeCounters>,
    latest: watch::Sender<LatestReadings>,
    readings: broadcast::Sender<Arc<Reading>>,
    app_journal: Option<Journal>,
    runtime: tokio::runtime::Handle,
}

impl Worker {
    fn run(mut self, rx: std_mpsc::Receiver<Msg>) {
        let mut limiter = LogLimiter::new(Duration::from_secs(60));
        let mut last_flush = Instant::now();
        self.publish_sizes();
        loop {
            let wait = if self.engine.is_dirty() {
                FLUSH_EVERY.saturating_sub(last_flush.elapsed())
            } else {
                FLUSH_EVERY * 60
            };
            match rx.recv_timeout(wait) {
                Ok(Msg::Stop(reply)) => {
                    self.engine.flush();
                    let _ = reply.send(());
                    return;
                }
                Ok(msg) => self.handle(msg, &mut limiter),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.engine.flush();
                    return;
                }
            }
            if self.engine.is_dirty() && last_flush.elapsed() >= FLUSH_EVERY {
                self.engine.flush();
                last_flush = Instant::now();
            }
        }
    }

    fn publish_sizes(&self) {
        self.counters.devices.store(self.engine.registry().devices().len() as u64, Ordering::Relaxed);
        self.counters.sessions.store(self.engine.session_count() as u64, Ordering::Relaxed);
    }

    fn handle(&mut self, msg: Msg, limiter: &mut LogLimiter) {
        match msg {
            Msg::Uplink(frame, seq) => {
                let started = Instant::now();
                let outcome = self.engine.uplink(&frame, seq);
                self.counters.decode_seconds.observe(started.elapsed().as_secs_f64());
                self.outcome(outcome, limiter);
            }
            Msg::Downlink(id, phy) => {
                if let Some(device) = self.engine.downlink(id, &phy) {
                    info!(
                        device,
                        downlink_id = id,
                        "decoder: JoinAccept for a registered device on its way to the radio"
                    );
                }
            }
            Msg::TxAck(id, transmitted) => {
                if let Some((device, dev_addr)) = self.engine.tx_ack(id, transmitted) {
                    info!(device, %dev_addr, "decoder: device joined; session keys derived on this gateway");
                    self.counters.sessions_started.get_or_create(&[("source", "join")]).inc();
                    self.publish_sizes();
                }
            }
            Msg::Push(pushed, reply) => {
                let dev_eui = pushed.dev_eui;
                let result = self.engine.push(pushed);
                match &result {
                    Ok(installed) => {
                        info!(
                            device = installed.device,
                            replaced = installed.replaced.map(|s| s.label()),
                            "decoder: session keys pushed by the central side installed"
                        );
                        self.counters.sessions_started.get_or_create(&[("source", "pushed")]).inc();
                        self.publish_sizes();
                    }
                    Err(e) => warn!(%dev_eui, "decoder: pushed session refused: {e}"),
                }
                let _ = reply.send(result);
            }
            Msg::Reload(reply) => {
                let result = self.reload();
                let label = if result.is_ok() { "ok" } else { "failed" };
                self.counters.reloads.get_or_create(&[("result", label)]).inc();
                let _ = reply.send(result);
            }
            // Handled by `run` before it gets here.
            Msg::Stop(reply) => {
                let _ = reply.send(());
            }
        }
    }

    fn reload(&mut self) -> Result<ReloadReport, String> {
        let s = &self.settings;
        let registry = Registry::load(&s.devices, &s.codec_dirs).map_err(|e| e.to_string())?;
        let codecs = Codecs::build(&registry, &s.limits).map_err(|e| e.to_string())?;
        let report = ReloadReport { devices: registry.devices().len(), codecs: registry.codecs().count() };
        self.engine.reload(registry, codecs);
        self.engine.flush();
        self.publish_sizes();
        Ok(report)
    }

    fn outcome(&mut self, outcome: Outcome, limiter: &mut LogLimiter) {
        match outcome {
            Outcome::Reading { reading, record, codec_failure } => {
                self.counters.readings.fetch_add(1, Ordering::Relaxed);
                if let Some(label) = codec_failure {
                    self.counters.errors.get_or_create(&[("reason", codec_reason(label))]).inc();
                    if let Some(held) = limiter.allow("codec") {
                        warn!(
                            device = reading.device_name,
                            codec = reading.codec,
                            held_back = held,
                            "decoder: codec failed: {}",
                            reading.errors.join("; ")
                        );
                    }
                }
                if let (Some(record), Some(journal)) = (record, &self.app_journal) {
                    if let Err(e) = self.runtime.block_on(journal.append(record)) {
                        error!("decoder: reading not stored in the app journal: {e}");
                    }
                }
                let reading: Arc<Reading> = Arc::from(reading);
                self.latest.send_modify(|l| {
                    l.insert(reading.device_name.clone(), reading.clone());
                });
                let _ = self.readings.send(reading);
            }
            Outcome::JoinRequest { device } => {
                tracing::debug!(device, "decoder: JoinRequest of a registered device");
            }
            Outcome::NotOurs => {
                self.counters.not_ours.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Refused { device, reason, detail } => {
                self.counters.errors.get_or_create(&[("reason", reason)]).inc();
                if let Some(held) = limiter.allow(reason) {
                    warn!(device, reason, held_back = held, "decoder: uplink not decoded: {detail}");
                }
            }
        }
    }
}

/// The `reason` label of a codec failure: `codec_timeout`, `codec_threw`, ...
fn codec_reason(label: &'static str) -> &'static str {
    match label {
        "timeout" => "codec_timeout",
        "out_of_memory" => "codec_out_of_memory",
        "threw" => "codec_threw",
        "bad_return" => "codec_bad_return",
        "codec_errors" => "codec_errors",
        "malformed" => "codec_malformed",
        "output_too_large" => "codec_output_too_large",
        _ => "codec_other",
    }
}

#[cfg(test)]
mod tests;
