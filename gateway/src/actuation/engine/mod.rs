//! The actuation engine: every command to field equipment, whatever its
//! source (a signed envelope from the central platform, a field agent's
//! `berrygw actuate`, a local rule), goes through `Actuation` and the same
//! checks, in the same order, and leaves one audit entry per outcome:
//!
//! 1. central only: at the door (`gate.rs`, in memory, nothing stored): envelope
//!    parsed, key known, signature; then, in arrival order on one task: gateway id,
//!    `not_after`, `issued_at`, scope, and the id admitted to the persisted replay window;
//! 2. the target exists; the profile's checks: command, argument types and
//!    bounds, minimum interval, a fresh read and its interlocks;
//! 3. the writes: `executed` is recorded and published the moment they went
//!    out; then `verified` when the read-back matches before the deadline, or
//!    `failed` with the reason.
//!
//! Authenticated central messages wait in a bounded queue ([`QUEUE`]); at most
//! [`RUNNING`] commands run at once. Signed `set_session` messages (OTAA keys) take the
//! same path and are installed in the decoder, audited without the keys.
//!
//! Every audit entry is also published on `<prefix>/<gateway>/event/command`
//! through the app journal (kept through outages), in the order it was recorded.
//! Arguments are redacted of secrets before either. Field devices' states go
//! out on `…/field/<device>/state`.
//!
//! Here: the handle (`Actuation`, its settings and counters, `start`), local and rule
//! commands, and what every command shares (execution, the audit record, its event).
//! `central` is the central path, from the door to execution or session install, and
//! `authorized_keys` reloads; `state` publishes the field devices' states.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use berrygw_core::unix_ms;
use berrygw_modbus::CommandOutcome;
use chrono::{DateTime, Utc};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::audit::{self, AuditEntry, AuditLog, Outcome, Source};
use super::field::FieldDevice;
use super::gate::{self, DoorState};
use super::replay::ReplayWindow;
use crate::decode::Decoder;
use crate::events::{self, AppTopics};
use crate::journal::Journal;
use berrygw_proto::audit::CommandEvent;
use berrygw_proto::keys::AuthorizedKeys;
use berrygw_proto::sealed::Identity;

mod central;
mod state;

use central::Authenticated;
pub use central::SET_SESSION;
use state::publish_states;

/// Authenticated central messages waiting for their turn.
pub const QUEUE: usize = 64;

/// Central commands running at once (each may wait seconds for its read-back).
pub const RUNNING: usize = 8;

/// What the engine needs besides its devices.
pub struct ActuationSettings {
    pub gateway_id: String,
    /// App sink topics; `None` without an app sink (events stay in the audit log).
    pub topics: Option<AppTopics>,
    /// `replay.sqlite` and `audit.sqlite` go here.
    pub state_dir: PathBuf,
    pub state_interval: Duration,
    /// `authorized_keys`: its path (read again on reload) and the keys loaded from it;
    /// `None`: central commands are not accepted.
    pub keys: Option<(PathBuf, AuthorizedKeys)>,
    /// Refuse central commands while the clock is not synchronized.
    pub require_clock_sync: bool,
    /// Bound on the audit log's entries, in bytes.
    pub audit_max_bytes: u64,
    /// Where signed `set_session` keys are installed; `None`: they are refused.
    pub decoder: Option<Decoder>,
    /// This gateway's identity: opens the session keys sealed to it.
    pub identity: Option<Identity>,
}

/// Commands by source and outcome, read by the metrics endpoint.
pub struct ActuationCounters {
    /// `source` (central, local, rule) × `outcome` (refused, executed, verified, failed).
    pub commands: Family<[(&'static str, &'static str); 2], Counter>,
    /// Refusals and failures by reason.
    pub reasons: Family<[(&'static str, String); 1], Counter>,
    /// Central messages refused at the door, before authentication, by reason (never audited).
    pub unauthenticated: Family<[(&'static str, &'static str); 1], Counter>,
}

impl ActuationCounters {
    /// Every source × outcome exists from the start, so a rate() over them never starts from nothing.
    fn new() -> ActuationCounters {
        let commands = Family::default();
        for source in [Source::Central, Source::Local, Source::Rule] {
            for outcome in [Outcome::Refused, Outcome::Executed, Outcome::Verified, Outcome::Failed] {
                let _ = commands.get_or_create(&[("source", source.as_str()), ("outcome", outcome.as_str())]);
            }
        }
        let unauthenticated = Family::default();
        for reason in gate::REASONS {
            let _ = unauthenticated.get_or_create(&[("reason", reason)]);
        }
        ActuationCounters { commands, reasons: Family::default(), unauthenticated }
    }

    fn unauthenticated_counts(&self) -> [u64; 4] {
        gate::REASONS.map(|reason| self.unauthenticated.get_or_create(&[("reason", reason)]).get())
    }
}

struct Inner {
    gateway_id: String,
    require_clock_sync: bool,
    devices: BTreeMap<String, Arc<FieldDevice>>,
    keys_path: Option<PathBuf>,
    keys: RwLock<Option<AuthorizedKeys>>,
    replay: Mutex<ReplayWindow>,
    audit: Mutex<AuditLog>,
    /// The latest entries, newest first, for the status page (which must not wait on the log).
    recent: tokio::sync::watch::Sender<Vec<AuditEntry>>,
    app_journal: Option<Journal>,
    topics: Option<AppTopics>,
    counters: ActuationCounters,
    door: Mutex<DoorState>,
    /// Authenticated central messages, to the dispatcher; `None` without `authorized_keys`.
    queue: Option<mpsc::Sender<Authenticated>>,
    decoder: Option<Decoder>,
    identity: Option<Identity>,
}

/// The handle every part holds (local API, app sink, rules); cheap to clone.
#[derive(Clone)]
pub struct Actuation {
    inner: Arc<Inner>,
}

/// One command as asked, before any check.
struct Ask {
    source: Source,
    actor: String,
    command_id: Option<String>,
    target: String,
    command: String,
    args: serde_json::Value,
}

impl Actuation {
    /// Open the replay window and audit log, and start publishing
    /// each device's state and, with keys, dispatching central messages. The devices
    /// are already polling.
    pub fn start(
        devices: BTreeMap<String, Arc<FieldDevice>>,
        settings: ActuationSettings,
        app_journal: Option<Journal>,
    ) -> anyhow::Result<(Actuation, Vec<JoinHandle<()>>)> {
        let replay =
            tokio::task::block_in_place(|| ReplayWindow::open(&settings.state_dir.join("replay.sqlite")))?;
        let audit = tokio::task::block_in_place(|| {
            AuditLog::open(&settings.state_dir.join("audit.sqlite"), settings.audit_max_bytes)
        })?;
        let (recent, _) = tokio::sync::watch::channel(audit.list(RECENT, None)?);
        let (keys_path, keys) = settings.keys.unzip();
        let (queue, queued) = match keys {
            Some(_) => {
                let (tx, rx) = mpsc::channel(QUEUE);
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        let inner = Arc::new(Inner {
            gateway_id: settings.gateway_id,
            require_clock_sync: settings.require_clock_sync,
            devices,
            keys_path,
            keys: RwLock::new(keys),
            replay: Mutex::new(replay),
            audit: Mutex::new(audit),
            recent,
            app_journal,
            topics: settings.topics,
            counters: ActuationCounters::new(),
            door: Mutex::new(DoorState::default()),
            queue,
            decoder: settings.decoder,
            identity: settings.identity,
        });
        let actuation = Actuation { inner };
        let mut tasks = Vec::new();
        if let Some(queued) = queued {
            tasks.push(tokio::spawn(actuation.clone().dispatch(queued)));
            tasks.push(tokio::spawn(actuation.clone().summarize_refusals()));
        }
        if actuation.inner.topics.is_some() && actuation.inner.app_journal.is_some() {
            for (name, device) in &actuation.inner.devices {
                tasks.push(tokio::spawn(publish_states(
                    actuation.clone(),
                    name.clone(),
                    device.device.state(),
                    settings.state_interval,
                )));
            }
        }
        Ok((actuation, tasks))
    }

    /// Whether central commands are accepted (an `authorized_keys` file is configured).
    pub fn accepts_central(&self) -> bool {
        self.inner.keys_path.is_some()
    }

    /// Whether signed session keys are accepted (central commands, and a decoder to take them).
    pub fn accepts_sessions(&self) -> bool {
        self.accepts_central() && self.inner.decoder.is_some()
    }

    /// The devices, by name.
    pub fn devices(&self) -> &BTreeMap<String, Arc<FieldDevice>> {
        &self.inner.devices
    }

    /// Counters for the metrics endpoint.
    pub fn counters(&self) -> &ActuationCounters {
        &self.inner.counters
    }

    /// A command typed by a field agent (local API); `uid` is the caller's, from the socket.
    pub async fn local(
        &self,
        uid: Option<u32>,
        target: &str,
        command: &str,
        args: serde_json::Value,
    ) -> AuditEntry {
        let actor = uid.map_or_else(|| "uid unknown".to_string(), |u| format!("uid {u}"));
        self.execute(Ask {
            source: Source::Local,
            actor,
            command_id: None,
            target: target.into(),
            command: command.into(),
            args,
        })
        .await
    }

    /// A local API caller who may not act: audited as refused, without the arguments.
    pub async fn refuse_local(
        &self,
        actor: String,
        target: &str,
        command: &str,
        message: String,
    ) -> AuditEntry {
        let ask = Ask {
            source: Source::Local,
            actor,
            command_id: None,
            target: target.into(),
            command: command.into(),
            args: serde_json::json!({}),
        };
        self.record(ask.refusal("not_an_operator", message)).await
    }

    /// A command from a local rule or schedule.
    pub async fn rule(&self, rule: &str, target: &str, command: &str, args: serde_json::Value) -> AuditEntry {
        self.execute(Ask {
            source: Source::Rule,
            actor: rule.into(),
            command_id: None,
            target: target.into(),
            command: command.into(),
            args,
        })
        .await
    }

    async fn execute(&self, ask: Ask) -> AuditEntry {
        let Some(device) = self.inner.devices.get(&ask.target).cloned() else {
            let message = format!("no field device named {:?}", ask.target);
            return self.record(ask.refusal("unknown_target", message)).await;
        };
        let (written_tx, written_rx) = oneshot::channel();
        let run = device.device.execute_reporting(&ask.command, &ask.args, written_tx);
        tokio::pin!(run);
        let outcome = tokio::select! {
            biased;
            outcome = &mut run => outcome,
            written = written_rx => {
                if let Ok(writes) = written {
                    let message = format!("written: {}", serde_json::to_string(&writes).unwrap_or_default());
                    self.record(ask.entry(Outcome::Executed, None, message)).await;
                }
                run.await
            }
        };
        match outcome {
            CommandOutcome::Verified { elapsed, .. } => {
                let message = format!("read back as commanded after {} ms", elapsed.as_millis());
                self.record(ask.entry(Outcome::Verified, None, message)).await
            }
            CommandOutcome::Refused(r) => {
                self.record(ask.refusal(r.reason.as_str(), r.message.clone())).await
            }
            CommandOutcome::Failed { reason, message } => {
                self.record(ask.entry(Outcome::Failed, Some(reason.to_string()), message)).await
            }
        }
    }

    /// Write the entry (secrets redacted) to the audit log, durably; count it, log it, and
    /// append it to the app journal before returning, so a command's events keep their order.
    async fn record(&self, new: AuditEntry) -> AuditEntry {
        let new = AuditEntry { args: audit::redact(&new.args), ..new };
        let stored = tokio::task::block_in_place(|| match self.inner.audit.lock() {
            Ok(mut audit) => audit.append(new.clone()),
            Err(_) => Err(anyhow::anyhow!("audit log unavailable")),
        });
        let entry = match stored {
            Ok(e) => e,
            Err(e) => {
                tracing::error!("audit log: entry NOT stored ({e:#}): {new:?}");
                // Still reported upstream and to the caller, with seq 0 (never a stored one).
                AuditEntry { seq: 0, ..new }
            }
        };
        self.inner.recent.send_modify(|recent| {
            recent.insert(0, entry.clone());
            recent.truncate(RECENT);
        });
        let c = &self.inner.counters;
        c.commands
            .get_or_create(&[("source", entry.source.as_str()), ("outcome", entry.outcome.as_str())])
            .inc();
        if let Some(reason) = &entry.reason {
            c.reasons.get_or_create(&[("reason", reason.clone())]).inc();
        }
        match entry.outcome {
            Outcome::Refused | Outcome::Failed => warn!(
                source = entry.source.as_str(),
                actor = entry.actor,
                target = entry.target,
                command = entry.command,
                reason = entry.reason.as_deref().unwrap_or(""),
                "command {}: {}",
                entry.outcome.as_str(),
                entry.message
            ),
            _ => info!(
                source = entry.source.as_str(),
                actor = entry.actor,
                target = entry.target,
                command = entry.command,
                "command {}: {}",
                entry.outcome.as_str(),
                entry.message
            ),
        }
        if let (Some(topics), Some(journal)) = (&self.inner.topics, &self.inner.app_journal) {
            let event = CommandEvent { gateway_id: self.inner.gateway_id.clone(), audit: entry.clone() };
            if let Ok(body) = serde_json::to_vec(&event) {
                let record =
                    events::record(&topics.event("command"), &body, unix_ms(std::time::SystemTime::now()));
                if let Err(e) = journal.append(record).await {
                    warn!("command result not stored in the app journal: {e}");
                }
            }
        }
        entry
    }

    /// The authorized keys in force (a copy), if central messages are accepted.
    pub fn keys(&self) -> Option<AuthorizedKeys> {
        self.inner.keys.read().ok().and_then(|k| k.clone())
    }

    /// Record an outcome decided outside the engine (a configuration bundle's): audited,
    /// counted and published on `event/command` like a command's.
    pub async fn record_outside(&self, entry: AuditEntry) -> AuditEntry {
        self.record(entry).await
    }

    /// The latest command attempts, newest first, without touching the audit log.
    pub fn recent(&self) -> Vec<AuditEntry> {
        self.inner.recent.borrow().clone()
    }

    /// The newest audit entries, newest first.
    pub fn audit(&self, limit: usize, before: Option<u64>) -> anyhow::Result<Vec<AuditEntry>> {
        let audit = self.inner.audit.lock().map_err(|_| anyhow::anyhow!("audit log unavailable"))?;
        tokio::task::block_in_place(|| audit.list(limit, before))
    }

    /// A device's points and commands, as `berrygw points` shows them.
    pub fn points(&self, target: &str) -> Option<serde_json::Value> {
        let d = self.inner.devices.get(target)?;
        let state = d.device.state().borrow().clone();
        let profile = d.device.profile();
        let commands: Vec<&str> = profile.commands.iter().map(|c| c.name.as_str()).collect();
        Some(serde_json::json!({
            "device": target,
            "profile": d.profile,
            "link": d.link,
            "state": state,
            "units": profile
                .points
                .iter()
                .filter(|p| !p.unit.is_empty())
                .map(|p| (p.name.clone(), p.unit.clone()))
                .collect::<BTreeMap<_, _>>(),
            "commands": commands,
        }))
    }
}

/// The time now (chrono's `clock` feature is off in this tree).
pub fn now_utc() -> DateTime<Utc> {
    DateTime::<Utc>::from(std::time::SystemTime::now())
}

/// How many of the latest attempts `recent` keeps.
const RECENT: usize = 10;

impl Ask {
    fn entry(&self, outcome: Outcome, reason: Option<String>, message: String) -> AuditEntry {
        AuditEntry {
            seq: 0,
            at: now_utc(),
            source: self.source,
            actor: self.actor.clone(),
            command_id: self.command_id.clone(),
            target: self.target.clone(),
            command: self.command.clone(),
            args: self.args.clone(),
            outcome,
            reason,
            message,
        }
    }

    fn refusal(&self, reason: &str, message: String) -> AuditEntry {
        self.entry(Outcome::Refused, Some(reason.to_string()), message)
    }
}
