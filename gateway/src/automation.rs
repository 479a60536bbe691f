//! The rules on a live gateway: one task feeds the engine the decoder's
//! readings, the field devices' points and the clock; commands go to the
//! actuation engine (every safety check, source `rule`, audited), alarms are
//! published on `<prefix>/<gateway>/event/alarm` through the app journal and
//! shown on the status page. None of it needs the backhaul: the lights switch
//! at dusk and the flood alarm is raised with fibre and 4G down (the alarm
//! event then waits in the journal).

use std::time::Duration;

use berrygw_core::unix_ms;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::actuation::engine::{now_utc, Actuation};
use crate::decode::Decoder;
use crate::events::{self, AppTopics};
use crate::journal::Journal;
use crate::rules::{Action, AlarmView, RuleEngine, RuleSet, Source};

/// Longest sleep between two looks at the clock (schedules are re-planned after it).
const MAX_SLEEP: Duration = Duration::from_secs(30);

/// Handle to the running rules.
#[derive(Clone)]
pub struct Rules {
    alarms: watch::Receiver<Vec<AlarmView>>,
    reload: mpsc::Sender<(RuleSet, oneshot::Sender<usize>)>,
    path: std::path::PathBuf,
}

impl Rules {
    /// Alarms raised and not cleared.
    pub fn alarms(&self) -> watch::Receiver<Vec<AlarmView>> {
        self.alarms.clone()
    }

    /// Re-read the rules file and swap it in (state of unchanged rules kept); returns how
    /// many rules are in force. A bad file is refused and the running rules stay.
    pub async fn reload(&self) -> Result<usize, String> {
        let rules = RuleSet::load(&self.path).map_err(|e| e.to_string())?;
        let (reply, answer) = oneshot::channel();
        self.reload.send((rules, reply)).await.map_err(|_| "the rules task is not running".to_string())?;
        answer.await.map_err(|_| "the rules task stopped during the reload".to_string())
    }
}

/// Where the rules' outputs go.
pub struct RulesOutputs {
    pub gateway_id: String,
    pub actuation: Option<Actuation>,
    pub topics: Option<AppTopics>,
    pub app_journal: Option<Journal>,
}

/// Start the rules task over `rules`.
pub fn spawn(
    rules: RuleSet,
    decoder: Option<&Decoder>,
    outputs: RulesOutputs,
) -> (Rules, Vec<JoinHandle<()>>) {
    let path = rules.path().to_path_buf();
    let (alarms_tx, alarms) = watch::channel(Vec::new());
    let (reload, reload_rx) = mpsc::channel(4);
    let (points_tx, points_rx) = mpsc::channel(64);
    let mut tasks = Vec::new();
    if let Some(actuation) = &outputs.actuation {
        for (name, device) in actuation.devices() {
            tasks.push(tokio::spawn(forward_points(name.clone(), device.device.state(), points_tx.clone())));
        }
    }
    let readings = decoder.map(Decoder::subscribe);
    let mut engine = RuleEngine::new(rules);
    // Arms the schedules from now on: nothing fires for the past.
    let first = engine.tick(now_utc());
    tasks.push(tokio::spawn(run(engine, first, readings, points_rx, reload_rx, alarms_tx, outputs)));
    (Rules { alarms, reload, path }, tasks)
}

/// A device's points, each time they change, as a JSON object.
async fn forward_points(
    name: String,
    mut state: watch::Receiver<berrygw_modbus::DeviceState>,
    to_rules: mpsc::Sender<(String, serde_json::Value)>,
) {
    let mut last = None;
    while state.changed().await.is_ok() {
        let points = serde_json::to_value(&state.borrow_and_update().points).unwrap_or_default();
        if last.as_ref() == Some(&points) {
            continue;
        }
        last = Some(points.clone());
        if to_rules.send((name.clone(), points)).await.is_err() {
            return;
        }
    }
}

async fn next_reading(
    readings: &mut Option<broadcast::Receiver<std::sync::Arc<crate::decode::Reading>>>,
) -> Option<std::sync::Arc<crate::decode::Reading>> {
    let Some(rx) = readings else { return std::future::pending().await };
    loop {
        match rx.recv().await {
            Ok(r) => return Some(r),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                warn!("rules: {n} readings were not looked at (too many at once)");
            }
            Err(broadcast::error::RecvError::Closed) => return std::future::pending().await,
        }
    }
}

async fn run(
    mut engine: RuleEngine,
    first: Vec<Action>,
    mut readings: Option<broadcast::Receiver<std::sync::Arc<crate::decode::Reading>>>,
    mut points: mpsc::Receiver<(String, serde_json::Value)>,
    mut reload: mpsc::Receiver<(RuleSet, oneshot::Sender<usize>)>,
    alarms: watch::Sender<Vec<AlarmView>>,
    outputs: RulesOutputs,
) {
    for action in first {
        act(action, &outputs).await;
    }
    loop {
        let now = now_utc();
        let sleep = engine
            .next_due(now)
            .and_then(|due| (due - now).to_std().ok())
            .unwrap_or(MAX_SLEEP)
            .min(MAX_SLEEP);
        let actions = tokio::select! {
            reading = next_reading(&mut readings) => match reading {
                Some(r) => engine.observe(Source::Reading { device: &r.device_name }, &r.object, now_utc()),
                None => Vec::new(),
            },
            Some((name, values)) = points.recv() => {
                engine.observe(Source::Points { target: &name }, &values, now_utc())
            }
            Some((rules, reply)) = reload.recv() => {
                let n = rules.rules().len();
                let actions = engine.reload(rules);
                let _ = reply.send(n);
                actions
            }
            () = tokio::time::sleep(sleep) => engine.tick(now_utc()),
        };
        if actions.is_empty() {
            continue;
        }
        for action in actions {
            act(action, &outputs).await;
        }
        let active: Vec<AlarmView> = engine
            .active_alarms()
            .into_iter()
            .map(|a| AlarmView {
                rule: a.rule,
                name: a.name,
                severity: a.severity.to_string(),
                since: a.since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                message: a.message,
            })
            .collect();
        alarms.send_replace(active);
    }
}

/// Carry out one action: a command through the actuation engine, or an alarm event.
async fn act(action: Action, outputs: &RulesOutputs) {
    match action {
        Action::Command { rule, target, command, args } => {
            let Some(actuation) = outputs.actuation.clone() else {
                warn!(rule, target, command, "rule fired a command, but no [field] devices are configured");
                return;
            };
            info!(rule, target, command, "rule: command");
            // The read-back may take minutes; the rules keep running meanwhile.
            tokio::spawn(async move {
                actuation.rule(&rule, &target, &command, args).await;
            });
        }
        Action::Alarm { rule, name, severity, raised, message } => {
            if raised {
                warn!(rule, alarm = name, severity = %severity, "ALARM raised: {message}");
            } else {
                info!(rule, alarm = name, "alarm cleared");
            }
            let (Some(topics), Some(journal)) = (&outputs.topics, &outputs.app_journal) else { return };
            let body = serde_json::json!({
                "gateway_id": outputs.gateway_id,
                "rule": rule,
                "alarm": name,
                "severity": severity.to_string(),
                "raised": raised,
                "message": message,
                "at": berrygw_core::rfc3339_ms(std::time::SystemTime::now()),
            });
            let Ok(body) = serde_json::to_vec(&body) else { return };
            let record = events::record(&topics.event("alarm"), &body, unix_ms(std::time::SystemTime::now()));
            if let Err(e) = journal.append(record).await {
                warn!("alarm event not stored in the app journal: {e}");
            }
        }
    }
}
