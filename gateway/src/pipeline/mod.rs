//! The uplink pipeline of a running gateway: radio source → PHY parse and
//! filters → sequence number → sink journal(s) → sink. This module wires the
//! parts together and owns their shutdown order; `ingest` journals what the
//! radio hands over, `downlink` routes the sinks' downlinks to the one radio,
//! `stats` makes the gateway stats and the periodic report. What the metrics
//! endpoint and the status page read of it is `crate::view`.
//!
//! Invariant: once `Journal::append` has accepted a record, the journal owns
//! it until the sink acknowledges it; nothing here keeps a copy.

mod downlink;
mod ingest;
mod stats;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use berrygw_lora::filter::UplinkFilter;
use berrygw_lora::gwmp::GwmpIngest;
use berrygw_lora::sim::SimRadio;
use berrygw_lora::{RadioIo, RadioSource, Taken};
use berrygw_sx1302::Sx1302Radio;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::actuation::engine::{Actuation, ActuationSettings};
use crate::config::{LoadedConfig, RadioKind, Site};
use crate::decode::engine::codec_limits;
use crate::decode::{Decoder, DecoderSettings};
use crate::events::AppTopics;
use crate::journal::{Journal, JournalConfig};
use crate::seq::UplinkSeq;
use crate::service::{self, Liveness};
use crate::sink::basic_station::{self, config::ChannelPlanFrom};
use crate::sink::mqtt::MqttSinkKind;
use crate::sink::mqtt::{self, Protocol, SinkInbound};
use crate::sink::semtech_udp;

use crate::sink::SinkCounters;
use crate::view::{reload, Counters, GatewayView, Reloaded, SinkView};
use downlink::DownlinkRouter;
use ingest::Ingest;
use stats::{report_loop, stats_loop};

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
    /// Set when a configuration bundle changed settings: the daemon restarts the pipeline.
    restart: watch::Receiver<bool>,
}

impl Gateway {
    /// Start every part of a resolved site. Fails (and starts nothing) on any setup error:
    /// every step that can fail runs before the first sink, radio or task is spawned.
    pub async fn start(site: &Site) -> anyhow::Result<Gateway> {
        let cfg = &site.loaded;
        let c = &cfg.config;
        let gateway_id = c.gateway.id.to_string();
        berrygw_core::files::create_private_dir(&c.gateway.state_dir)
            .with_context(|| format!("creating state directory {}", c.gateway.state_dir.display()))?;
        let state_dir = c.gateway.state_dir.clone();
        let seq = tokio::task::spawn_blocking(move || UplinkSeq::open(&state_dir))
            .await
            .context("sequence open task")?
            .context("opening the uplink sequence counter")?;
        let filter = UplinkFilter::new(c.filters.clone());
        let state_dir = c.gateway.state_dir.clone();
        let (identity, made) =
            tokio::task::spawn_blocking(move || crate::identity::load_or_create(&state_dir))
                .await
                .context("identity task")?
                .context("this gateway's identity key")?;
        if made {
            info!(public_key = %identity.recipient(), "identity key made (it was not made at install)");
        }

        // Files and settings first: none of this starts anything.
        let chirpstack_settings = match &c.sinks.chirpstack {
            Some(sink_cfg) => {
                Some(sink_cfg.settings(MqttSinkKind::Chirpstack, &cfg.path, &gateway_id, false, false)?)
            }
            None => None,
        };
        // What the app sink accepts is known once decoding and actuation are set up (below).
        let mut app_settings = match &c.sinks.app {
            Some(sink_cfg) => {
                Some(sink_cfg.settings(MqttSinkKind::App, &cfg.path, &gateway_id, false, false)?)
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
        // The LNS's files are read (and their faults reported) before anything starts.
        let mut station_settings = match &c.sinks.basic_station {
            Some(station) => {
                let mut settings =
                    station.settings(c.gateway.id, &c.gateway.state_dir).context("sinks.basic_station")?;
                settings.radio_channels = radio_channels(&c.radio);
                Some(settings)
            }
            None => None,
        };
        let station_journal = match &c.sinks.basic_station {
            Some(_) => Some(open_journal(cfg, "basic_station").await?),
            None => None,
        };
        let app_journal = match &c.sinks.app {
            Some(_) => Some(open_journal(cfg, "app").await?),
            None => None,
        };
        let app_topics =
            c.sinks.app.as_ref().map(|a| AppTopics::new(a.topic_prefix(MqttSinkKind::App), &gateway_id));
        // The decoder thread ends by itself if a later step fails (its handles are dropped).
        let decoder = match (&c.decode, &site.registry) {
            (Some(d), Some(registry)) => {
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
                    tokio::task::block_in_place(|| Decoder::spawn(settings, registry.clone(), journal))
                        .context("starting local decoding")?,
                )
            }
            _ => None,
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
                // The LNS's plan, where the Basics Station sink sets it: the one it set
                // last, until it says it again.
                let tuned = c.sinks.basic_station.as_ref().filter(|b| b.channel_plan == ChannelPlanFrom::Lns);
                let kept =
                    tuned.and_then(|_| basic_station::plan::kept(&c.gateway.state_dir.join("basic_station")));
                let kept = kept.filter(|plan| match plan.setup(&sx) {
                    Ok(_) => true,
                    Err(e) => {
                        warn!("the kept LNS channel plan does not fit [radio.sx1302] ({e}); starting on its channels");
                        false
                    }
                });
                // Reset, configuration and lgw_start block for about a second.
                let radio = tokio::task::spawn_blocking(move || {
                    let plan = kept.as_ref().map(|p| (p, basic_station::plan::FROM_KEPT));
                    Sx1302Radio::open_on_plan(&sx, plan, Box::new(berrygw_sx1302::CdevGpio::new()))
                })
                .await
                .context("concentrator start task")?
                .context("starting the SX1302 concentrator")?;
                concentrator = Some(radio.status());
                if let (Some(settings), Some(_)) = (station_settings.as_mut(), tuned) {
                    settings.tuner = Some(radio.tuner());
                }
                Box::new(radio)
            }
        };
        // Last, as it starts the field pollers (dropped, so stopped, if it fails).
        let mut actuation = None;
        if let (Some(field), Some(profiles)) = (&c.field, &site.profiles) {
            let devices = field.spawn(profiles);
            let settings = ActuationSettings {
                gateway_id: gateway_id.clone(),
                topics: app_topics.clone(),
                state_dir: c.gateway.state_dir.clone(),
                state_interval: Duration::from_secs(field.state_interval_secs),
                keys: field.authorized_keys.as_ref().map(|k| k.get_ref().clone()).zip(site.keys.clone()),
                require_clock_sync: field.require_clock_sync,
                audit_max_bytes: field.audit_max_bytes,
                decoder: decoder_handle.clone(),
                identity: Some(identity.clone()),
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
        // The health record for the app sink (crate::health), made once the view exists;
        // `news` tells it when a sink connects or loses its far side.
        let (health_tx, health_rx) = watch::channel(None);
        let news = Arc::new(tokio::sync::Notify::new());
        let (radio_down_tx, radio_down_rx) = mpsc::channel(64);
        let (radio_ack_tx, radio_ack_rx) = mpsc::channel(64);
        let mut router = DownlinkRouter::new(radio_down_tx);
        let mut sinks = Vec::new();
        if let (Some(settings), Some(journal)) = (chirpstack_settings, chirpstack_journal) {
            let sink_counters = Arc::new(SinkCounters::telling(&news));
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
            let sink_counters = Arc::new(SinkCounters::telling(&news));
            let task = tokio::spawn(semtech_udp::run(
                sink_cfg.settings(c.gateway.id),
                journal.clone(),
                sink_counters.clone(),
                router.attach(),
                shutdown_rx.clone(),
            ));
            sinks.push(SinkRuntime { name: "semtech_udp", journal, counters: sink_counters, task });
        }
        if let (Some(settings), Some(journal)) = (station_settings, station_journal) {
            let sink_counters = Arc::new(SinkCounters::telling(&news));
            let task = tokio::spawn(basic_station::run(
                settings,
                journal.clone(),
                sink_counters.clone(),
                router.attach(),
                shutdown_rx.clone(),
            ));
            sinks.push(SinkRuntime { name: "basic_station", journal, counters: sink_counters, task });
        }
        // Uplinks and gateway stats go to the network server sinks; the app sink gets readings.
        let journals: Vec<Journal> = sinks.iter().map(|s| s.journal.clone()).collect();
        let stats_journals: Vec<(&'static str, Journal)> =
            sinks.iter().map(|s| (s.name, s.journal.clone())).collect();
        let mut rules = None;
        if let Some(set) = site.rules.clone() {
            let outputs = crate::automation::RulesOutputs {
                gateway_id: gateway_id.clone(),
                actuation: actuation_handle.clone(),
                topics: app_topics.clone(),
                app_journal: app_journal.clone(),
            };
            rules = Some(crate::automation::spawn(set, decoder_handle.as_ref(), outputs));
        }
        let rules_handle = rules.as_ref().map(|(r, _)| r.clone());
        // Bundles need the keys of the actuation engine (checked by `config`).
        let bundle_actuation =
            actuation_handle.clone().filter(Actuation::accepts_central).filter(|_| c.bundles.is_some());
        let (bundle_tx, bundle_rx) = watch::channel(None);
        let (config_version_tx, config_version_rx) = watch::channel(None);
        let (restart_tx, restart) = watch::channel(false);
        if let (Some(_), Some(journal), Some(mut settings)) = (&c.sinks.app, app_journal, app_settings.take())
        {
            let accept_commands = actuation_handle.as_ref().is_some_and(Actuation::accepts_central);
            let accept_sessions = actuation_handle.as_ref().is_some_and(Actuation::accepts_sessions);
            if let Protocol::App {
                accept_sessions: sessions,
                accept_commands: commands,
                accept_bundles: bundles,
                identity: key,
                ..
            } = &mut settings.protocol
            {
                *sessions = accept_sessions;
                *commands = accept_commands;
                *bundles = bundle_actuation.is_some();
                *key = Some(identity.recipient());
            }
            let sink_counters = Arc::new(SinkCounters::telling(&news));
            // Signed commands and session keys go through the actuation engine's door.
            let actuation = actuation_handle.clone().filter(Actuation::accepts_central);
            let task = tokio::spawn(mqtt::run(
                settings,
                journal.clone(),
                sink_counters.clone(),
                SinkInbound::App {
                    actuation,
                    health: Some(health_rx.clone()),
                    bundles: bundle_actuation.as_ref().map(|_| bundle_tx),
                },
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
        let beat = crate::period::Beat::default();
        let ingest = Ingest {
            gateway_id: gateway_id.clone(),
            filter,
            seq,
            journals,
            counters: counters.clone(),
            decoder: decoder_handle.clone(),
            taken: taken_tx,
            beat: beat.clone(),
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
            beat.clone(),
            shutdown_rx.clone(),
        )));
        tasks.push(tokio::spawn(report_loop(
            Duration::from_secs(c.gateway.report_interval_secs),
            sinks.iter().map(|s| (s.name, s.journal.clone(), s.counters.clone())).collect(),
            counters.clone(),
            beat.clone(),
            shutdown_rx.clone(),
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
            config_version: c.bundles.as_ref().map(|_| config_version_rx),
            app_topics: app_topics.clone(),
            beat,
        };
        if let (Some(actuation), Some(section), Some(journal), Some(topics)) =
            (bundle_actuation, &c.bundles, sinks.iter().find(|s| s.name == "app"), &app_topics)
        {
            let runtime = crate::bundle::BundleRuntime {
                gateway_id: view.gateway_id.clone(),
                identity: identity.clone(),
                store: crate::config::bundles::Store::new(&c.gateway.state_dir),
                watch: Duration::from_secs(section.watch_secs),
                config_path: cfg.path.clone(),
                // The file's own text: a staged version's settings are merged into it.
                config_source: cfg.base_source.clone().unwrap_or_else(|| cfg.source.clone()),
                actuation,
                view: view.clone(),
                app: (journal.journal.clone(), topics.clone()),
                version: config_version_tx,
                restart: restart_tx,
            };
            tasks.push(tokio::spawn(runtime.run(bundle_rx, shutdown_rx.clone())));
        }
        if c.sinks.app.is_some() {
            let state_dir = c.gateway.state_dir.clone();
            tasks.push(tokio::spawn(crate::health::run(
                view.clone(),
                state_dir,
                news,
                health_tx,
                shutdown_rx,
            )));
        }
        if let Some((_, field_tasks)) = actuation {
            tasks.extend(field_tasks);
        }
        if let Some((_, rule_tasks)) = rules {
            tasks.extend(rule_tasks);
        }
        Ok(Gateway { counters, sinks, decoder, view, intake_stop, radio, ingest, shutdown, tasks, restart })
    }

    /// Ready once the pipeline must be restarted on new settings (a configuration bundle);
    /// never ready otherwise.
    pub async fn restart_requested(&mut self) {
        if self.restart.wait_for(|r| *r).await.is_err() {
            std::future::pending::<()>().await;
        }
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
/// The LoRa uplink channels the radio listens on, where berrygw sets them: the sim's
/// `frequencies`; the concentrator's multi-SF channels and LoRa service channel
/// (configured, else its region's). A packet forwarder's are its own (`None`).
fn radio_channels(radio: &crate::config::RadioConfig) -> Option<basic_station::RadioChannels> {
    let (source, mut hz) = match radio.kind.get_ref() {
        RadioKind::Sim => ("[radio.sim] frequencies", radio.sim.as_ref()?.frequencies.clone()),
        RadioKind::Gwmp => return None,
        RadioKind::Sx1302 => {
            let setup = berrygw_sx1302::ConcentratorSetup::resolve(radio.sx1302.as_ref()?).ok()?;
            ("[radio.sx1302] multi_sf_channels and lora_service", setup.lora_channels())
        }
    };
    hz.sort_unstable();
    hz.dedup();
    Some(basic_station::RadioChannels { source, hz })
}

async fn open_journal(cfg: &LoadedConfig, name: &'static str) -> anyhow::Result<Journal> {
    let c = &cfg.config;
    let path = cfg.journal_path(name);
    if let Some(parent) = path.parent() {
        berrygw_core::files::create_private_dir(parent)
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
