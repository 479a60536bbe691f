//! The uplink pipeline of a running gateway: radio source → PHY parse and
//! filters → sequence number → sink journal(s) → sink. This module wires the
//! parts together, owns their shutdown order, and keeps the counters that the
//! periodic report and the gateway stats are made of.
//!
//! Invariant: once `Journal::append` has accepted a record, the journal owns
//! it until the sink acknowledges it; nothing here keeps a copy.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use berrygw_lora::filter::UplinkFilter;
use berrygw_lora::gwmp::{GwmpHandle, GwmpIngest};
use berrygw_lora::sim::SimRadio;
use berrygw_lora::{CrcStatus, DownlinkFrame, RadioIo, RadioSource, Taken, TxAck, TxStatus, UplinkFrame};
use berrygw_sx1302::{ConcentratorStatus, Sx1302Radio};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::actuation::engine::{Actuation, ActuationSettings};
use crate::config::{LoadedConfig, MqttSinkConfig, MqttSinkKind, RadioKind};
use crate::decode::engine::codec_limits;
use crate::decode::{Decoder, DecoderSettings};
use crate::journal::{Journal, JournalConfig, NewRecord};
use crate::seq::UplinkSeq;
use crate::service::{self, Heartbeat, Liveness};
use crate::sink::app::AppTopics;
use crate::sink::chirpstack::{self, RecordKind, StatsSnapshot, Topics};
use crate::sink::mqtt::{self, MqttSinkSettings, Protocol, SinkInbound, SinkRadioIo};
use crate::sink::semtech_udp;
use crate::sink::tls::{self, TlsFiles};

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
    rx_per_frequency: Mutex<HashMap<u32, u32>>,
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
    fn count_frame(&self, frame: &UplinkFrame) {
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

    fn reject(&self, reason: &'static str) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut m) = self.rejected_by_reason.lock() {
            *m.entry(reason).or_default() += 1;
        }
    }
}

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
    pub connected: AtomicBool,
    /// Seconds from publishing a record to the far side's acknowledgement (MQTT: PUBACK).
    pub publish_ack_latency: Histogram,
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
            // 5 ms .. about 20 s.
            publish_ack_latency: Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.005, 2.0, 13,
            )),
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
    pub rules: Option<crate::rules::run::Rules>,
}

/// One sink as seen from outside: its name, journal statistics and counters.
#[derive(Clone)]
pub struct SinkView {
    pub name: &'static str,
    pub journal: Journal,
    pub counters: Arc<SinkCounters>,
}

/// One sink of a running gateway: its journal, its counters, its task.
pub struct SinkRuntime {
    pub name: &'static str,
    pub journal: Journal,
    pub counters: Arc<SinkCounters>,
    task: JoinHandle<()>,
}

/// A running gateway: its tasks and the handles to stop them.
pub struct Gateway {
    pub counters: Arc<Counters>,
    /// Every configured sink; each gets a last chance to deliver before the journals are flushed.
    pub sinks: Vec<SinkRuntime>,
    decoder: Option<(Decoder, std::thread::JoinHandle<()>)>,
    view: GatewayView,
    /// Stops radio intake: the ingest closes the radio's uplink channel and drains it.
    intake_stop: watch::Sender<bool>,
    radio: JoinHandle<()>,
    ingest: JoinHandle<()>,
    /// Stops the sinks, stats, reports and watchdog.
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Gateway {
    /// Start every part described by `cfg`. Fails (and starts nothing) on any setup error:
    /// every step that can fail runs before the first sink, radio or task is spawned.
    pub async fn start(cfg: &LoadedConfig) -> anyhow::Result<Gateway> {
        let c = &cfg.config;
        let gateway_id = c.gateway.id.to_string();
        crate::state_db::create_private_dir(&c.gateway.state_dir)
            .with_context(|| format!("creating state directory {}", c.gateway.state_dir.display()))?;
        let state_dir = c.gateway.state_dir.clone();
        let seq = tokio::task::spawn_blocking(move || UplinkSeq::open(&state_dir))
            .await
            .context("sequence open task")?
            .context("opening the uplink sequence counter")?;
        let filter = UplinkFilter::new(c.filters.clone());

        // Files and settings first: none of this starts anything.
        let rule_set = match c.field.as_ref().and_then(|f| f.rules.as_ref()) {
            Some(path) => {
                let set = crate::rules::RuleSet::load(path.get_ref()).context("loading the rules")?;
                info!(rules = set.rules().len(), path = %path.get_ref().display(), "rules loaded");
                Some(set)
            }
            None => None,
        };
        let profiles = match &c.field {
            Some(field) => Some(field.check(cfg)?),
            None => None,
        };
        let chirpstack_settings = match &c.sinks.chirpstack {
            Some(sink_cfg) => {
                Some(mqtt_settings(cfg, MqttSinkKind::Chirpstack, sink_cfg, &gateway_id, false, false)?)
            }
            None => None,
        };
        // What the app sink accepts is known once decoding and actuation are set up (below).
        let mut app_settings = match &c.sinks.app {
            Some(sink_cfg) => {
                Some(mqtt_settings(cfg, MqttSinkKind::App, sink_cfg, &gateway_id, false, false)?)
            }
            None => None,
        };
        let chirpstack_journal = match &c.sinks.chirpstack {
            Some(_) => Some(open_journal(cfg, "chirpstack").await?),
            None => None,
        };
        let semtech_journal = match &c.sinks.semtech_udp {
            Some(_) => Some(open_journal(cfg, "semtech_udp").await?),
            None => None,
        };
        let app_journal = match &c.sinks.app {
            Some(_) => Some(open_journal(cfg, "app").await?),
            None => None,
        };
        let app_topics =
            c.sinks.app.as_ref().map(|a| AppTopics::new(a.topic_prefix(MqttSinkKind::App), &gateway_id));
        // The decoder thread ends by itself if a later step fails (its handles are dropped).
        let decoder = match &c.decode {
            Some(d) => {
                let settings = DecoderSettings {
                    gateway_id: gateway_id.clone(),
                    devices: d.devices.get_ref().clone(),
                    codec_dirs: d.codec_dirs.clone(),
                    limits: codec_limits(d.codec_time_limit_ms, d.codec_memory_limit_kib),
                    sessions: c.gateway.state_dir.join("sessions.sqlite"),
                    topics: app_topics.clone(),
                };
                let journal = app_journal.clone();
                Some(
                    tokio::task::block_in_place(|| Decoder::spawn(settings, journal))
                        .context("starting local decoding")?,
                )
            }
            None => None,
        };
        let decoder_handle = decoder.as_ref().map(|(d, _)| d.clone());
        let mut concentrator = None;
        let mut gwmp_handle = None;
        let radio: Box<dyn RadioSource> = match c.radio.kind.get_ref() {
            RadioKind::Sim => {
                let sim = c.radio.sim.clone().context("[radio.sim] missing")?;
                Box::new(SimRadio::new(sim).context("radio.sim")?)
            }
            RadioKind::Gwmp => {
                let gwmp = c.radio.gwmp.clone().unwrap_or_default();
                let ingest = GwmpIngest::new(gwmp).context("radio.gwmp")?;
                gwmp_handle = Some(ingest.handle());
                Box::new(ingest)
            }
            RadioKind::Sx1302 => {
                let sx = c.radio.sx1302.clone().context("[radio.sx1302] missing")?;
                // Reset, configuration and lgw_start block for about a second.
                let radio = tokio::task::spawn_blocking(move || Sx1302Radio::open(&sx))
                    .await
                    .context("concentrator start task")?
                    .context("starting the SX1302 concentrator")?;
                concentrator = Some(radio.status());
                Box::new(radio)
            }
        };
        // Last, as it starts the field pollers (dropped, so stopped, if it fails).
        let mut actuation = None;
        if let (Some(field), Some(profiles)) = (&c.field, &profiles) {
            let devices = field.spawn(profiles);
            let settings = ActuationSettings {
                gateway_id: gateway_id.clone(),
                topics: app_topics.clone(),
                state_dir: c.gateway.state_dir.clone(),
                state_interval: Duration::from_secs(field.state_interval_secs),
                keys: field.authorized_keys.as_ref().map(|k| k.get_ref().clone()),
                require_clock_sync: field.require_clock_sync,
                audit_max_bytes: field.audit_max_bytes,
                decoder: decoder_handle.clone(),
            };
            let (handle, field_tasks) = Actuation::start(devices, settings, app_journal.clone())
                .context("starting the actuation engine")?;
            actuation = Some((handle, field_tasks));
        }
        let actuation_handle = actuation.as_ref().map(|(a, _)| a.clone());

        // Nothing below fails: start everything.
        let started = Instant::now();
        let counters = Arc::new(Counters::default());
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (uplink_tx, uplink_rx) = mpsc::channel(1024);
        let (radio_down_tx, radio_down_rx) = mpsc::channel(64);
        let (radio_ack_tx, radio_ack_rx) = mpsc::channel(64);
        let mut router = DownlinkRouter::new(radio_down_tx);
        let mut sinks = Vec::new();
        if let (Some(settings), Some(journal)) = (chirpstack_settings, chirpstack_journal) {
            let sink_counters = Arc::new(SinkCounters::default());
            let task = tokio::spawn(mqtt::run(
                settings,
                journal.clone(),
                sink_counters.clone(),
                SinkInbound::Radio(router.attach()),
                shutdown_rx.clone(),
            ));
            sinks.push(SinkRuntime { name: "chirpstack", journal, counters: sink_counters, task });
        }
        if let (Some(sink_cfg), Some(journal)) = (&c.sinks.semtech_udp, semtech_journal) {
            let sink_counters = Arc::new(SinkCounters::default());
            let task = tokio::spawn(semtech_udp::run(
                sink_cfg.settings(c.gateway.id),
                journal.clone(),
                sink_counters.clone(),
                router.attach(),
                shutdown_rx.clone(),
            ));
            sinks.push(SinkRuntime { name: "semtech_udp", journal, counters: sink_counters, task });
        }
        // Uplinks and gateway stats go to the network server sinks; the app sink gets readings.
        let journals: Vec<Journal> = sinks.iter().map(|s| s.journal.clone()).collect();
        let stats_journals: Vec<(&'static str, Journal)> =
            sinks.iter().map(|s| (s.name, s.journal.clone())).collect();
        let mut rules = None;
        if let Some(set) = rule_set {
            let outputs = crate::rules::run::RulesOutputs {
                gateway_id: gateway_id.clone(),
                actuation: actuation_handle.clone(),
                topics: app_topics.clone(),
                app_journal: app_journal.clone(),
            };
            rules = Some(crate::rules::run::spawn(set, decoder_handle.as_ref(), outputs));
        }
        let rules_handle = rules.as_ref().map(|(r, _)| r.clone());
        if let (Some(_), Some(journal), Some(mut settings)) = (&c.sinks.app, app_journal, app_settings.take())
        {
            let accept_commands = actuation_handle.as_ref().is_some_and(Actuation::accepts_central);
            let accept_sessions = actuation_handle.as_ref().is_some_and(Actuation::accepts_sessions);
            if let Protocol::App { accept_sessions: sessions, accept_commands: commands, .. } =
                &mut settings.protocol
            {
                *sessions = accept_sessions;
                *commands = accept_commands;
            }
            let sink_counters = Arc::new(SinkCounters::default());
            // Signed commands and session keys go through the actuation engine's door.
            let actuation = actuation_handle.clone().filter(Actuation::accepts_central);
            let task = tokio::spawn(mqtt::run(
                settings,
                journal.clone(),
                sink_counters.clone(),
                SinkInbound::App { actuation },
                shutdown_rx.clone(),
            ));
            sinks.push(SinkRuntime { name: "app", journal, counters: sink_counters, task });
        }
        router.decoder = decoder_handle.clone();

        let mut tasks = Vec::new();
        let radio_kind = radio.kind();
        let (taken_tx, taken_rx) = watch::channel(Taken::default());
        let radio_task = radio.start(RadioIo {
            uplinks: uplink_tx,
            downlinks: radio_down_rx,
            tx_acks: radio_ack_tx,
            taken: Some(taken_rx),
        });
        let radio = tokio::spawn(async move {
            if let Err(e) = radio_task.await {
                error!("radio ({radio_kind}) stopped: {e}");
            }
        });
        tasks.push(tokio::spawn(router.run(radio_ack_rx, counters.clone())));
        let mut liveness = Liveness::default();
        for sink in &sinks {
            liveness.journal(sink.name, sink.journal.clone());
        }
        let ingest = Ingest {
            gateway_id: gateway_id.clone(),
            filter,
            seq,
            journals,
            counters: counters.clone(),
            decoder: decoder_handle.clone(),
            taken: taken_tx,
        };
        let (intake_stop, intake_stop_rx) = watch::channel(false);
        let ingest = tokio::spawn(ingest.run(uplink_rx, liveness.heartbeat("ingest"), intake_stop_rx));
        tasks.push(tokio::spawn(service::watchdog(liveness, shutdown_rx.clone())));
        tasks.push(tokio::spawn(stats_loop(
            gateway_id.clone(),
            Duration::from_secs(c.gateway.stats_interval_secs),
            stats_journals,
            concentrator.clone(),
            counters.clone(),
            shutdown_rx.clone(),
        )));
        tasks.push(tokio::spawn(report_loop(
            Duration::from_secs(c.gateway.report_interval_secs),
            sinks.iter().map(|s| (s.name, s.journal.clone(), s.counters.clone())).collect(),
            counters.clone(),
            shutdown_rx,
        )));

        for sink in &sinks {
            let stats = sink.journal.watch().borrow().clone();
            if let Some((moved_to, reason)) = &stats.quarantined {
                error!(
                    sink = sink.name,
                    "JOURNAL WAS CORRUPT: moved aside to {} ({reason}); started a fresh one. Records in the damaged file were not forwarded.",
                    moved_to.display()
                );
            }
            info!(sink = sink.name, backlog = stats.records, "sink ready");
        }
        info!(gateway_id = gateway_id.as_str(), radio = radio_kind, backend = ?c.journal.backend, "berrygw running");
        let view = GatewayView {
            gateway_id,
            radio_kind,
            started,
            counters: counters.clone(),
            sinks: sinks
                .iter()
                .map(|s| SinkView { name: s.name, journal: s.journal.clone(), counters: s.counters.clone() })
                .collect(),
            concentrator,
            gwmp: gwmp_handle,
            decoder: decoder_handle,
            actuation: actuation_handle,
            rules: rules_handle,
        };
        if let Some((_, field_tasks)) = actuation {
            tasks.extend(field_tasks);
        }
        if let Some((_, rule_tasks)) = rules {
            tasks.extend(rule_tasks);
        }
        Ok(Gateway { counters, sinks, decoder, view, intake_stop, radio, ingest, shutdown, tasks })
    }

    /// Read-only handles for the metrics endpoint and the status page.
    pub fn view(&self) -> GatewayView {
        self.view.clone()
    }

    /// The sink called `name`, if configured.
    pub fn sink(&self, name: &str) -> Option<&SinkRuntime> {
        self.sinks.iter().find(|s| s.name == name)
    }

    /// Re-read the device registry and codecs (SIGHUP, `berrygw reload`); on any
    /// error the registry in force stays and the error says what is wrong.
    pub async fn reload(&self) -> Result<Reloaded, String> {
        reload(&self.view).await
    }

    /// Stop in the order that loses nothing accepted: radio intake (every uplink the
    /// radio handed over reaches the journals), the decoder (its readings reach the
    /// app journal), the sinks (a last chance to deliver), then the journals are
    /// flushed, then the rest stops.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.intake_stop.send(true);
        let mut ingest = self.ingest;
        if tokio::time::timeout(Duration::from_secs(10), &mut ingest).await.is_err() {
            error!("ingest did not drain within 10 s; uplinks it still held are lost");
            ingest.abort();
        }
        // The radio ends once its uplink channel is closed.
        let mut radio = self.radio;
        if tokio::time::timeout(Duration::from_secs(5), &mut radio).await.is_err() {
            radio.abort();
        }
        // Readings still queued go to the app journal before it is flushed; sessions are written.
        if let Some((decoder, thread)) = self.decoder {
            decoder.stop().await;
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        let _ = self.shutdown.send(true);
        let mut result = Ok(());
        let mut sinks = self.sinks;
        for sink in &mut sinks {
            // A sink waits up to 2 s for outstanding acknowledgements: fewer duplicates after a restart.
            if tokio::time::timeout(Duration::from_secs(4), &mut sink.task).await.is_err() {
                sink.task.abort();
            }
        }
        for sink in sinks {
            if let Err(e) = sink.journal.flush().await {
                result = Err(e).with_context(|| format!("flushing the {} journal", sink.name));
            }
        }
        for t in self.tasks {
            t.abort();
        }
        result?;
        info!("berrygw stopped; journal flushed");
        Ok(())
    }
}

/// Open (creating its folder) the journal of sink `name`.
async fn open_journal(cfg: &LoadedConfig, name: &'static str) -> anyhow::Result<Journal> {
    let c = &cfg.config;
    let path = cfg.journal_path(name);
    if let Some(parent) = path.parent() {
        crate::state_db::create_private_dir(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let journal_cfg = JournalConfig {
        backend: c.journal.backend,
        path,
        stage_dir: c.journal.stage_dir(),
        max_bytes: c.journal.max_bytes,
        commit_interval: c.journal.commit_interval(),
        outage_commit_interval: c.journal.outage_commit_interval(),
        commit_max_records: c.journal.commit_max_records,
    };
    tokio::task::spawn_blocking(move || Journal::open(name, journal_cfg))
        .await
        .context("journal open task")?
        .with_context(|| format!("opening the {name} journal"))
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

/// An MQTT sink's settings, TLS files read and checked.
fn mqtt_settings(
    cfg: &LoadedConfig,
    kind: MqttSinkKind,
    sink_cfg: &MqttSinkConfig,
    gateway_id: &str,
    accept_commands: bool,
    accept_sessions: bool,
) -> anyhow::Result<MqttSinkSettings> {
    let name = kind.name();
    let tls = if sink_cfg.server.get_ref().tls {
        let files = TlsFiles {
            ca_file: sink_cfg.ca_file.as_ref().map(|f| f.get_ref().as_path()),
            client_cert_file: sink_cfg.client_cert_file.as_ref().map(|f| f.get_ref().as_path()),
            client_key_file: sink_cfg.client_key_file.as_ref().map(|f| f.get_ref().as_path()),
        };
        Some(tls::client_config(&files).with_context(|| format!("{}: sinks.{name}", cfg.path.display()))?)
    } else {
        None
    };
    let prefix = sink_cfg.topic_prefix(kind);
    let protocol = match kind {
        MqttSinkKind::Chirpstack => {
            Protocol::Chirpstack { topics: Topics::new(prefix, gateway_id), format: sink_cfg.format() }
        }
        MqttSinkKind::App => {
            Protocol::App { topics: AppTopics::new(prefix, gateway_id), accept_sessions, accept_commands }
        }
    };
    let default_client_id = match kind {
        MqttSinkKind::Chirpstack => format!("berrygw-{gateway_id}"),
        MqttSinkKind::App => format!("berrygw-{gateway_id}-app"),
    };
    Ok(MqttSinkSettings {
        name,
        protocol,
        server: sink_cfg.server.get_ref().clone(),
        tls,
        allow_plaintext: sink_cfg.allow_plaintext,
        client_id: sink_cfg.client_id.clone().unwrap_or(default_client_id),
        credentials: sink_cfg.username.clone().map(|u| (u, sink_cfg.password.clone().unwrap_or_default())),
        gateway_id: gateway_id.to_string(),
        keep_alive: Duration::from_secs(sink_cfg.keep_alive_secs),
        max_inflight: sink_cfg.max_inflight,
        reconnect_min: Duration::from_millis(sink_cfg.reconnect_min_ms),
        reconnect_max: Duration::from_millis(sink_cfg.reconnect_max_ms),
        pace: sink_cfg.pace(kind),
    })
}

/// Downlinks from every sink go to the one radio; each `TxAck` goes back to the
/// sink whose downlink it answers (by downlink id; the newest claim wins).
struct DownlinkRouter {
    to_radio: mpsc::Sender<DownlinkFrame>,
    from_sinks: mpsc::Sender<(usize, DownlinkFrame)>,
    from_sinks_rx: mpsc::Receiver<(usize, DownlinkFrame)>,
    to_sinks: Vec<mpsc::Sender<TxAck>>,
    forwarders: Vec<JoinHandle<()>>,
    /// Sees every downlink and TxAck (a transmitted JoinAccept starts a session).
    decoder: Option<Decoder>,
}

/// Downlink ids remembered for routing acks; older ones are forgotten.
const ROUTED_DOWNLINKS: usize = 1024;

impl DownlinkRouter {
    fn new(to_radio: mpsc::Sender<DownlinkFrame>) -> DownlinkRouter {
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
    fn attach(&mut self) -> SinkRadioIo {
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

    async fn run(mut self, mut acks: mpsc::Receiver<TxAck>, counters: Arc<Counters>) {
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

/// Turns radio frames into journal records.
struct Ingest {
    gateway_id: String,
    filter: UplinkFilter,
    seq: UplinkSeq,
    /// One journal per sink; each gets every accepted uplink.
    journals: Vec<Journal>,
    counters: Arc<Counters>,
    /// Gets every stored uplink after the journals have it.
    decoder: Option<Decoder>,
    /// Uplinks settled so far (journaled, refused or failed); the radio acknowledges by it.
    taken: watch::Sender<Taken>,
}

impl Ingest {
    /// Journal every uplink until the radio is gone, or until `stop`: then the
    /// uplink channel is closed (the radio takes no more) and what it holds is journaled.
    async fn run(
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

    async fn accept(&mut self, frame: UplinkFrame) -> anyhow::Result<()> {
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
            received_at_ms: chirpstack::unix_ms(frame.received_at),
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

/// Journal state of every sink for the stats metadata (`journal_<sink>_records`, ...).
fn journal_metadata(journals: &[(&'static str, Journal)]) -> HashMap<String, String> {
    let mut m = HashMap::from([("berrygw_version".to_string(), env!("CARGO_PKG_VERSION").to_string())]);
    for (name, journal) in journals {
        let j = journal.watch().borrow().clone();
        m.insert(format!("journal_{name}_records"), j.records.to_string());
        m.insert(format!("journal_{name}_bytes"), j.bytes.to_string());
        m.insert(format!("journal_{name}_evicted_total"), j.evicted_total.to_string());
        if let Some((path, reason)) = &j.quarantined {
            m.insert(format!("journal_{name}_quarantined"), format!("{} ({reason})", path.display()));
        }
    }
    m
}

/// Concentrator health for the stats metadata.
fn concentrator_metadata(s: &ConcentratorStatus) -> HashMap<String, String> {
    let mut m = HashMap::from([
        ("concentrator_running".to_string(), s.running.to_string()),
        ("concentrator_restarts".to_string(), s.restarts.to_string()),
    ]);
    if let Some(eui) = s.eui {
        m.insert("concentrator_eui".into(), eui.to_string());
    }
    if let Some(t) = s.temperature_c {
        m.insert("concentrator_temperature_c".into(), format!("{t:.1}"));
    }
    if let Some(e) = &s.last_error {
        m.insert("concentrator_last_error".into(), e.clone());
    }
    m
}

async fn stats_loop(
    gateway_id: String,
    every: Duration,
    journals: Vec<(&'static str, Journal)>,
    concentrator: Option<watch::Receiver<ConcentratorStatus>>,
    counters: Arc<Counters>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    let mut last = (0u64, 0u64);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let now =
            (counters.received.load(Ordering::Relaxed), counters.received_crc_ok.load(Ordering::Relaxed));
        let per_freq =
            counters.rx_per_frequency.lock().map(|mut m| std::mem::take(&mut *m)).unwrap_or_default();
        let mut metadata = journal_metadata(&journals);
        if let Some(status) = &concentrator {
            metadata.extend(concentrator_metadata(&status.borrow()));
        }
        let snapshot = StatsSnapshot {
            rx_received: (now.0 - last.0) as u32,
            rx_received_ok: (now.1 - last.1) as u32,
            rx_per_frequency: per_freq,
            metadata,
            ..Default::default()
        };
        last = now;
        let at = SystemTime::now();
        let msg = chirpstack::stats_message(&gateway_id, at, snapshot);
        let rec = NewRecord {
            kind: RecordKind::Stats as u8,
            received_at_ms: chirpstack::unix_ms(at),
            payload: msg.encode_to_vec(),
        };
        for (name, journal) in &journals {
            if let Err(e) = journal.append(rec.clone()).await {
                warn!(sink = name, "gateway stats not stored: {e}");
            }
        }
    }
}

/// One line per sink and interval for the operator: what came in, what waits, what left.
async fn report_loop(
    every: Duration,
    sinks: Vec<(&'static str, Journal, Arc<SinkCounters>)>,
    counters: Arc<Counters>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        for (name, journal, sink) in &sinks {
            let j = journal.watch().borrow().clone();
            let oldest_age =
                j.oldest_received_at_ms.map(|ms| (chirpstack::unix_ms(SystemTime::now()) - ms).max(0) / 1000);
            info!(
                sink = name,
                received = counters.received.load(Ordering::Relaxed),
                rejected = counters.rejected.load(Ordering::Relaxed),
                queued = counters.queued.load(Ordering::Relaxed),
                forwarded = sink.forwarded.load(Ordering::Relaxed),
                backlog = j.records,
                backlog_bytes = j.bytes,
                oldest_age_s = oldest_age.unwrap_or(0),
                committed_seq = j.last_seq.0,
                acked_seq = j.acked.0,
                evicted = j.evicted_total,
                connected = sink.connected.load(Ordering::Relaxed),
                "report"
            );
        }
    }
}

/// Run the daemon until SIGTERM/SIGINT; SIGHUP reloads the device registry.
pub async fn run_until_signal(cfg: &LoadedConfig) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let gw = Gateway::start(cfg).await?;
    let served = crate::status::http::serve(&cfg.config, gw.view()).await;
    service::notify_ready();
    let mut term = signal(SignalKind::terminate()).context("watching SIGTERM")?;
    let mut hup = signal(SignalKind::hangup()).context("watching SIGHUP")?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = hup.recv() => {
                service::notify_reloading();
                match gw.reload().await {
                    Ok(r) => info!("SIGHUP: reloaded: {r}"),
                    Err(e) => error!("SIGHUP: NOT reloaded, what was in force stays: {e}"),
                }
                service::notify_ready();
            }
        }
    }
    info!("stopping");
    service::notify_stopping();
    served.stop();
    gw.stop().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use berrygw_lora::phy::{build_data_uplink, AesKey, DataUplink, DevAddr};

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
