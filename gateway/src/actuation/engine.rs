//! The actuation engine: every command to field equipment, whatever its
//! source (a signed envelope from the central platform, a field agent's
//! `berrygw actuate`, a local rule), goes through `Actuation` and the same
//! checks, in the same order, and leaves one audit entry per outcome:
//!
//! 1. central only: envelope parsed, key known, signature, gateway id,
//!    `not_after`, scope, then the id admitted to the persisted replay window;
//! 2. the target exists; the profile's checks: command, argument types and
//!    bounds, minimum interval, a fresh read and its interlocks;
//! 3. the writes: `executed` is recorded and published the moment they went
//!    out; then `verified` when the read-back matches before the deadline, or
//!    `failed` with the reason.
//!
//! Every audit entry is also published on `<prefix>/<gateway>/event/command`
//! through the app journal (kept through outages). Field devices' states go
//! out on `…/field/<device>/state`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use berrygw_modbus::{CommandOutcome, DeviceState, PointValue};
use chrono::{DateTime, Utc};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::audit::{AuditEntry, AuditLog, NewAuditEntry, Outcome, Source};
use super::envelope::{self, CommandEnvelope};
use super::field::FieldDevice;
use super::keys::AuthorizedKeys;
use super::replay::ReplayWindow;
use crate::clock::ClockSync;
use crate::journal::Journal;
use crate::sink::app::{self, AppTopics};
use crate::sink::chirpstack::unix_ms;

/// What the engine needs besides its devices.
pub struct ActuationSettings {
    pub gateway_id: String,
    /// App sink topics; `None` without an app sink (events stay in the audit log).
    pub topics: Option<AppTopics>,
    /// `replay.sqlite` and `audit.sqlite` go here.
    pub state_dir: PathBuf,
    pub state_interval: Duration,
    /// `authorized_keys`; `None`: central commands are not accepted.
    pub keys: Option<PathBuf>,
    /// Refuse central commands while the clock is not synchronized.
    pub require_clock_sync: bool,
}

/// Commands by source and outcome, read by the metrics endpoint.
pub struct ActuationCounters {
    /// `source` (central, local, rule) × `outcome` (refused, executed, verified, failed).
    pub commands: Family<[(&'static str, &'static str); 2], Counter>,
    /// Refusals and failures by reason.
    pub reasons: Family<[(&'static str, String); 1], Counter>,
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
        ActuationCounters { commands, reasons: Family::default() }
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
    /// Open the replay window and audit log, load the keys, and start publishing
    /// each device's state. The devices are already polling.
    pub fn start(
        devices: BTreeMap<String, Arc<FieldDevice>>,
        settings: ActuationSettings,
        app_journal: Option<Journal>,
    ) -> anyhow::Result<(Actuation, Vec<JoinHandle<()>>)> {
        let keys = match &settings.keys {
            Some(path) => Some(AuthorizedKeys::load(path)?),
            None => None,
        };
        let replay =
            tokio::task::block_in_place(|| ReplayWindow::open(&settings.state_dir.join("replay.sqlite")))?;
        let audit = tokio::task::block_in_place(|| AuditLog::open(&settings.state_dir.join("audit.sqlite")))?;
        let (recent, _) = tokio::sync::watch::channel(audit.list(RECENT, None)?);
        let inner = Arc::new(Inner {
            gateway_id: settings.gateway_id,
            require_clock_sync: settings.require_clock_sync,
            devices,
            keys_path: settings.keys,
            keys: RwLock::new(keys),
            replay: Mutex::new(replay),
            audit: Mutex::new(audit),
            recent,
            app_journal,
            topics: settings.topics,
            counters: ActuationCounters::new(),
        });
        let actuation = Actuation { inner };
        let mut tasks = Vec::new();
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

    /// The devices, by name.
    pub fn devices(&self) -> &BTreeMap<String, Arc<FieldDevice>> {
        &self.inner.devices
    }

    /// Counters for the metrics endpoint.
    pub fn counters(&self) -> &ActuationCounters {
        &self.inner.counters
    }

    /// Re-read `authorized_keys` (SIGHUP); on error the keys in force stay.
    pub fn reload_keys(&self) -> Result<usize, String> {
        let Some(path) = &self.inner.keys_path else { return Ok(0) };
        let keys = AuthorizedKeys::load(path).map_err(|e| e.to_string())?;
        let n = keys.keys().len();
        if let Ok(mut k) = self.inner.keys.write() {
            *k = Some(keys);
        }
        Ok(n)
    }

    /// Session keys of an OTAA device in a signed envelope (`command` =
    /// `set_session`, `target` = the DevEUI, `args` = `dev_addr`, `nwk_s_key`,
    /// `app_s_key`, `f_cnt_up`): the same checks as a command (key, signature,
    /// gateway, expiry, scope, replay), audited. The keys when it passes.
    pub async fn session(&self, payload: &[u8]) -> Option<crate::sink::app::PushedSession> {
        let now = now_utc();
        let env = match CommandEnvelope::parse(payload) {
            Ok(env) => env,
            Err(r) => {
                let ask = Ask::session("unknown".into(), None);
                self.record(ask.refusal(r.reason, r.message));
                return None;
            }
        };
        let ask = Ask::session(env.key_id().to_string(), Some(&env));
        if env.command() != SET_SESSION {
            let message = format!("a session message must carry command {SET_SESSION:?}");
            self.record(ask.refusal("malformed", message));
            return None;
        }
        let key_id = match self.admit(&env, now) {
            Ok(k) => k,
            Err(r) => {
                self.record(ask.refusal(r.reason, r.message));
                return None;
            }
        };
        let ask = Ask { actor: key_id, ..ask };
        let mut fields = env.args().clone();
        fields.insert("dev_eui".into(), serde_json::Value::String(env.target().to_string()));
        match crate::sink::app::parse_session_push(serde_json::Value::Object(fields).to_string().as_bytes()) {
            Ok(session) => {
                // Keys never go to the audit log or the result event.
                let ask =
                    Ask { args: serde_json::json!({ "dev_addr": session.dev_addr.to_string() }), ..ask };
                self.record(ask.entry(Outcome::Verified, None, "session keys handed to the decoder".into()));
                Some(session)
            }
            Err(e) => {
                let ask = Ask { args: serde_json::Value::Null, ..ask };
                self.record(ask.refusal("bad_args", e));
                None
            }
        }
    }

    /// Clock, key, signature, gateway, expiry, scope, then the replay window: the key id when admitted.
    fn admit(&self, env: &CommandEnvelope, now: DateTime<Utc>) -> Result<String, envelope::Refusal> {
        if self.inner.require_clock_sync {
            match crate::clock::clock_sync() {
                ClockSync::Synchronized => {}
                ClockSync::Unsynchronized => {
                    return Err(envelope::Refusal::new(
                        "clock_not_synchronized",
                        "this gateway's clock is not synchronized (NTP), so not_after cannot be trusted; \
                         check chrony/systemd-timesyncd, or set [field] require_clock_sync = false",
                    ))
                }
                ClockSync::Unknown(e) => return Err(envelope::Refusal::new("clock_state_unknown", e)),
            }
        }
        let key_id = {
            let keys = self.inner.keys.read().ok();
            match keys.as_deref().and_then(Option::as_ref) {
                Some(keys) => envelope::check(env, keys, &self.inner.gateway_id, now).map(|k| k.id.clone()),
                None => Err(envelope::Refusal::new(
                    envelope::reason::UNKNOWN_KEY,
                    "no authorized_keys configured on this gateway",
                )),
            }
        }?;
        tokio::task::block_in_place(|| {
            self.inner
                .replay
                .lock()
                .map_err(|_| envelope::Refusal::new("internal", "replay window unavailable"))
                .and_then(|mut w| w.admit(env.id(), env.not_after(), now))
        })?;
        Ok(key_id)
    }

    /// A command envelope from the central platform, as received.
    pub async fn central(&self, payload: &[u8]) -> AuditEntry {
        let now = now_utc();
        let env = match CommandEnvelope::parse(payload) {
            Ok(env) => env,
            Err(r) => return self.record(Ask::central("unknown".into(), None).refusal(r.reason, r.message)),
        };
        let ask = Ask::central(env.key_id().to_string(), Some(&env));
        match self.admit(&env, now) {
            Ok(key_id) => self.execute(Ask { actor: key_id, ..ask }).await,
            Err(r) => self.record(ask.refusal(r.reason, r.message)),
        }
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
    pub fn refuse_local(&self, actor: String, target: &str, command: &str, message: String) -> AuditEntry {
        let ask = Ask {
            source: Source::Local,
            actor,
            command_id: None,
            target: target.into(),
            command: command.into(),
            args: serde_json::json!({}),
        };
        self.record(ask.refusal("not_an_operator", message))
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
            return self.record(ask.refusal("unknown_target", message));
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
                    self.record(ask.entry(Outcome::Executed, None, message));
                }
                run.await
            }
        };
        match outcome {
            CommandOutcome::Verified { elapsed, .. } => {
                let message = format!("read back as commanded after {} ms", elapsed.as_millis());
                self.record(ask.entry(Outcome::Verified, None, message))
            }
            CommandOutcome::Refused(r) => self.record(ask.refusal(r.reason.as_str(), r.message.clone())),
            CommandOutcome::Failed { reason, message } => {
                self.record(ask.entry(Outcome::Failed, Some(reason.to_string()), message))
            }
        }
    }

    /// Write the entry to the audit log (durably), count it, publish it, log it.
    fn record(&self, new: NewAuditEntry) -> AuditEntry {
        let stored = tokio::task::block_in_place(|| match self.inner.audit.lock() {
            Ok(mut audit) => audit.append(new.clone()),
            Err(_) => Err(anyhow::anyhow!("audit log unavailable")),
        });
        let entry = match stored {
            Ok(e) => e,
            Err(e) => {
                tracing::error!("audit log: entry NOT stored ({e:#}): {new:?}");
                // Still reported upstream and to the caller, with seq 0 (never a stored one).
                new.numbered(0)
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
            if let Ok(body) = serde_json::to_vec(&serde_json::json!({
                "gateway_id": self.inner.gateway_id,
                "audit": entry,
            })) {
                let record =
                    app::record(&topics.event("command"), &body, unix_ms(std::time::SystemTime::now()));
                let journal = journal.clone();
                tokio::spawn(async move {
                    if let Err(e) = journal.append(record).await {
                        warn!("command result not stored in the app journal: {e}");
                    }
                });
            }
        }
        entry
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

/// The `command` of a signed session message.
pub const SET_SESSION: &str = "set_session";

impl Ask {
    /// A central command as its envelope (when it parsed) says, signed by `actor`.
    fn central(actor: String, env: Option<&CommandEnvelope>) -> Ask {
        Ask {
            source: Source::Central,
            actor,
            command_id: env.map(|e| e.id().to_string()),
            target: env.map(|e| e.target().to_string()).unwrap_or_default(),
            command: env.map(|e| e.command().to_string()).unwrap_or_default(),
            args: env.map_or(serde_json::Value::Null, |e| serde_json::Value::Object(e.args().clone())),
        }
    }

    /// A session message: a central command whose arguments (the keys) stay out of the audit log.
    fn session(actor: String, env: Option<&CommandEnvelope>) -> Ask {
        Ask { command: SET_SESSION.into(), args: serde_json::Value::Null, ..Ask::central(actor, env) }
    }

    fn entry(&self, outcome: Outcome, reason: Option<String>, message: String) -> NewAuditEntry {
        NewAuditEntry {
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

    fn refusal(&self, reason: &str, message: String) -> NewAuditEntry {
        self.entry(Outcome::Refused, Some(reason.to_string()), message)
    }
}

/// Whether two states differ in something worth telling at once: online, a
/// switch, a mode, a fault (numbers drift all the time and wait for the interval).
fn changed_discretely(a: &DeviceState, b: &DeviceState) -> bool {
    if a.online != b.online {
        return true;
    }
    b.points.iter().any(|(name, v)| match (a.points.get(name), v) {
        (Some(PointValue::Number(_)), PointValue::Number(_)) => false,
        (old, new) => old != Some(new),
    })
}

/// Publish a device's state on change of anything discrete, and every `interval` anyway.
async fn publish_states(
    actuation: Actuation,
    name: String,
    mut state: tokio::sync::watch::Receiver<DeviceState>,
    interval: Duration,
) {
    let mut last_sent: Option<DeviceState> = None;
    let mut tick = tokio::time::interval(interval);
    loop {
        tokio::select! {
            changed = state.changed() => {
                if changed.is_err() {
                    return;
                }
                let now = state.borrow_and_update().clone();
                if last_sent.as_ref().is_some_and(|l| !changed_discretely(l, &now)) {
                    continue;
                }
                actuation.publish_state(&name, &now).await;
                last_sent = Some(now);
            }
            _ = tick.tick() => {
                let now = state.borrow().clone();
                actuation.publish_state(&name, &now).await;
                last_sent = Some(now);
            }
        }
    }
}

impl Actuation {
    async fn publish_state(&self, name: &str, state: &DeviceState) {
        let (Some(topics), Some(journal)) = (&self.inner.topics, &self.inner.app_journal) else { return };
        let profile = self.inner.devices.get(name).map(|d| d.profile.clone()).unwrap_or_default();
        let body = serde_json::json!({
            "gateway_id": self.inner.gateway_id,
            "device": name,
            "profile": profile,
            "at": crate::decode::reading::rfc3339(std::time::SystemTime::now()),
            "state": state,
        });
        let Ok(body) = serde_json::to_vec(&body) else { return };
        let record = app::record(&topics.field_state(name), &body, unix_ms(std::time::SystemTime::now()));
        if let Err(e) = journal.append(record).await {
            warn!(device = name, "field state not stored in the app journal: {e}");
        }
    }
}
