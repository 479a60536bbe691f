//! Local decoding, the transform between the radio and the app sink: uplinks
//! of the devices in the registry are verified (MIC), decrypted, counted
//! against replays and run through their codec; the reading goes to the app
//! journal and to in-process subscribers (rules, status page). Frames of other
//! devices are not touched here: they reach the network server as they came.
//!
//! Everything runs on one thread of its own (`berrygw-decode`): JavaScript
//! codecs are blocking, not `Send`, and may be slow or hostile; the uplink
//! path hands frames over without waiting for decoding. A full queue drops
//! the *reading* (counted), never the uplink. JoinAccepts and TxAcks are
//! never dropped: a lost one would lose an OTAA join (they come at the
//! radio's transmit rate, so they cannot grow the queue much).
//!
//! A reading leaves (app journal, subscribers) only once the counter that
//! admitted it is durable: the thread decodes what is queued (up to
//! `BATCH` frames), writes their counters in one transaction, then lets
//! their readings out. A crash can lose readings, never reopen a counter.
//!
//! Not here: the LoRaWAN crypto (`berrygw_lora::security`), the codecs
//! (`berrygw_codecs`), publishing (`sink::mqtt` reads the app journal).

pub mod engine;
pub mod reading;
pub mod registry;
pub mod sessions;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self as std_mpsc, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use berrygw_codecs::Limits;
use berrygw_core::LogLimiter;
use berrygw_lora::phy::MType;
use berrygw_lora::UplinkFrame;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use serde::Deserialize;
use tokio::sync::{broadcast, oneshot, watch};
use toml::Spanned;
use tracing::{error, info, warn};

pub use self::engine::Installed;
use self::engine::{Codecs, Engine, Outcome};
pub use self::reading::Reading;
use self::registry::Registry;
use self::sessions::SessionStore;
use crate::events::{AppTopics, PushedSession};
use crate::journal::{Journal, NewRecord};

/// Data frames waiting to be decoded; past this the newest readings are
/// dropped (counted). Joins, TxAcks, signed session pushes (authenticated
/// before they get here), reloads and the stop are not counted against it and
/// never dropped.
const QUEUE: usize = 4096;

/// Most frames decoded before their counters are written together and their
/// readings let out (one durable write per batch, as the journal's group commit).
const BATCH: usize = 64;

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
    /// Readings whose codec failed (also in `readings` and, by reason, in `errors`).
    pub codec_failures: AtomicU64,
    /// Uplinks of our devices whose MIC does not check with the registry's keys (also in
    /// `errors`): what wrong keys look like, unlike replays, which no registry causes.
    pub bad_mic: AtomicU64,
    /// Sessions started by a join this gateway relayed, or pushed.
    pub sessions_started: Family<[(&'static str, &'static str); 1], Counter>,
    /// Readings lost because the decoder's queue was full, or because the
    /// counters that admitted them could not be written (`session_store` errors too).
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
        for reason in ["mic", "replay", "fcnt_gap", "codec_errors", "codec_timeout", "session_store"] {
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
            codec_failures: AtomicU64::new(0),
            bad_mic: AtomicU64::new(0),
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
    /// Unbounded: the bound on frames is `queued` (see `QUEUE`).
    tx: Sender<Msg>,
    /// Data frames in `tx` not yet taken by the thread.
    queued: Arc<AtomicUsize>,
    pub counters: Arc<DecodeCounters>,
    latest: watch::Receiver<LatestReadings>,
    readings: broadcast::Sender<Arc<Reading>>,
}

impl Decoder {
    /// Open the sessions and start the decoder thread with `registry` (loaded from
    /// `settings.devices`, which a reload reads again). Fails (and starts nothing) if a
    /// codec is bad: the daemon refuses to start rather than decode with half a registry.
    pub fn spawn(
        settings: DecoderSettings,
        registry: Registry,
        app_journal: Option<Journal>,
    ) -> anyhow::Result<(Decoder, std::thread::JoinHandle<()>)> {
        let (store, sessions) = SessionStore::open(&settings.sessions)?;
        let (tx, rx) = std_mpsc::channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let counters = Arc::new(DecodeCounters::default());
        let (latest_tx, latest) = watch::channel(LatestReadings::new());
        let (readings, _) = broadcast::channel(256);
        let runtime =
            tokio::runtime::Handle::try_current().context("the decoder starts inside the runtime")?;
        let (started_tx, started_rx) = std_mpsc::sync_channel(1);
        let thread = {
            let counters = counters.clone();
            let readings = readings.clone();
            let queued = queued.clone();
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
                        queued,
                        latest: latest_tx,
                        readings,
                        app_journal,
                        runtime,
                        ready: Vec::new(),
                    };
                    worker.run(rx);
                })
                .context("starting the decoder thread")?
        };
        started_rx.recv().context("the decoder thread stopped while starting")??;
        let decoder = Decoder { tx, queued, counters, latest, readings };
        Ok((decoder, thread))
    }

    /// Queue a data frame unless `QUEUE` of them wait already (then counted, dropped).
    fn offer(&self, msg: Msg) {
        if self.queued.fetch_add(1, Ordering::Relaxed) >= QUEUE {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if self.tx.send(msg).is_err() {
            self.queued.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Queue a message that must not be dropped (join traffic, reload, stop).
    fn always(&self, msg: Msg) -> bool {
        self.tx.send(msg).is_ok()
    }

    /// Decode an accepted uplink (never waits; a full queue drops the reading,
    /// never a JoinRequest: it may start a session).
    pub fn uplink(&self, frame: UplinkFrame, seq: u64) {
        if is_join_request(&frame) {
            self.always(Msg::Uplink(Box::new(frame), seq));
        } else {
            self.offer(Msg::Uplink(Box::new(frame), seq));
        }
    }

    /// A downlink on its way to the radio (JoinAccepts start sessions).
    pub fn downlink(&self, downlink_id: u32, phy_payload: &[u8]) {
        // Only JoinAccepts matter; data downlinks are not copied.
        if phy_payload.first().is_some_and(|mhdr| MType::from_mhdr(*mhdr) == MType::JoinAccept) {
            self.always(Msg::Downlink(downlink_id, phy_payload.to_vec()));
        }
    }

    /// The radio's answer to a downlink (never dropped: it may complete a join).
    pub fn tx_ack(&self, downlink_id: u32, transmitted: bool) {
        self.always(Msg::TxAck(downlink_id, transmitted));
    }

    /// Install session keys pushed by the central side (authenticated by the caller): the
    /// device and the source of the session replaced, or why not. Never dropped: it waits its
    /// turn behind queued frames.
    pub async fn push(&self, session: PushedSession) -> Result<Installed, String> {
        let (reply, answer) = oneshot::channel();
        if !self.always(Msg::Push(session, reply)) {
            return Err("the decoder is not running".to_string());
        }
        answer.await.map_err(|_| "the decoder stopped before installing the session".to_string())?
    }

    /// Re-read the registry and its codecs; on any error the registry in force stays.
    pub async fn reload(&self) -> Result<ReloadReport, String> {
        let (reply, answer) = oneshot::channel();
        // A reload waits its turn behind queued frames rather than being dropped.
        if !self.always(Msg::Reload(reply)) {
            return Err("the decoder is not running".to_string());
        }
        answer.await.map_err(|_| "the decoder stopped during the reload".to_string())?
    }

    /// Decode what is queued, write sessions and counters, and stop the thread.
    pub async fn stop(&self) {
        let (reply, answer) = oneshot::channel();
        if self.always(Msg::Stop(reply)) {
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
    /// Shared with the handles: frames queued and not yet taken.
    queued: Arc<AtomicUsize>,
    latest: watch::Sender<LatestReadings>,
    readings: broadcast::Sender<Arc<Reading>>,
    app_journal: Option<Journal>,
    runtime: tokio::runtime::Handle,
    /// Readings of this batch, held until their counters are durable.
    ready: Vec<(Box<Reading>, Option<NewRecord>)>,
}

impl Worker {
    fn run(mut self, rx: std_mpsc::Receiver<Msg>) {
        let mut limiter = LogLimiter::new(Duration::from_secs(60));
        self.publish_sizes();
        // Every handle gone: the gateway is stopping without `stop`.
        while let Ok(first) = rx.recv() {
            // Decode what is queued (up to BATCH), then one durable write for all of it.
            let mut next = Some(first);
            let mut taken = 0;
            while let Some(msg) = next.take() {
                if let Msg::Stop(reply) = msg {
                    self.settle();
                    let _ = reply.send(());
                    return;
                }
                self.handle(msg, &mut limiter);
                taken += 1;
                if taken < BATCH {
                    next = rx.try_recv().ok();
                }
            }
            self.settle();
        }
        self.settle();
    }

    /// Write the counters of the batch, then let its readings out; readings whose
    /// counters could not be written are dropped (counted): a crash must never
    /// let their frames decode again.
    fn settle(&mut self) {
        let durable = self.engine.flush();
        let ready = std::mem::take(&mut self.ready);
        if !durable {
            if !ready.is_empty() {
                let lost = ready.len() as u64;
                self.counters.errors.get_or_create(&[("reason", "session_store")]).inc_by(lost);
                self.counters.dropped.fetch_add(lost, Ordering::Relaxed);
                error!(readings = lost, "decoder: readings dropped: their counters could not be written");
            }
            return;
        }
        for (reading, record) in ready {
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
    }

    fn publish_sizes(&self) {
        self.counters.devices.store(self.engine.registry().devices().len() as u64, Ordering::Relaxed);
        self.counters.sessions.store(self.engine.session_count() as u64, Ordering::Relaxed);
    }

    fn handle(&mut self, msg: Msg, limiter: &mut LogLimiter) {
        // What `offer` counted against QUEUE.
        let counted = match &msg {
            Msg::Uplink(frame, _) => !is_join_request(frame),
            _ => false,
        };
        if counted {
            self.queued.fetch_sub(1, Ordering::Relaxed);
        }
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
                    self.counters.codec_failures.fetch_add(1, Ordering::Relaxed);
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
                self.ready.push((reading, record));
            }
            Outcome::JoinRequest { device } => {
                tracing::debug!(device, "decoder: JoinRequest of a registered device");
            }
            Outcome::NotOurs => {
                self.counters.not_ours.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Refused { device, reason, detail } => {
                if reason == "mic" {
                    self.counters.bad_mic.fetch_add(1, Ordering::Relaxed);
                }
                self.counters.errors.get_or_create(&[("reason", reason)]).inc();
                if let Some(held) = limiter.allow(reason) {
                    warn!(device, reason, held_back = held, "decoder: uplink not decoded: {detail}");
                }
            }
        }
    }
}

/// Whether `frame` is a JoinRequest (never dropped by the decoder's queue).
fn is_join_request(frame: &UplinkFrame) -> bool {
    frame.phy_payload.first().is_some_and(|mhdr| MType::from_mhdr(*mhdr) == MType::JoinRequest)
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

/// `[decode]`: local decoding of the devices this gateway serves.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecodeSection {
    /// The device registry (keys and codecs), mode 0600.
    pub devices: Spanned<PathBuf>,
    /// Where codec files named in the registry are looked up, in order.
    #[serde(default = "default_codec_dirs")]
    pub codec_dirs: Vec<PathBuf>,
    /// Wall-clock limit of one JavaScript codec call.
    #[serde(default = "default_codec_time_limit_ms")]
    pub codec_time_limit_ms: u64,
    /// Heap limit of each JavaScript codec.
    #[serde(default = "default_codec_memory_limit_kib")]
    pub codec_memory_limit_kib: u64,
}

fn default_codec_dirs() -> Vec<PathBuf> {
    vec![PathBuf::from("/etc/berrygw/codecs"), PathBuf::from("/usr/share/berrygw/codecs")]
}

fn default_codec_time_limit_ms() -> u64 {
    50
}

fn default_codec_memory_limit_kib() -> u64 {
    8 * 1024
}

#[cfg(test)]
mod tests;
