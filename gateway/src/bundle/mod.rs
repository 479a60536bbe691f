//! Signed configuration bundles on the gateway (`[bundles]`): a bundle from the centre
//! (`berrygw_proto::bundle`, retained on `<prefix>/<gateway_id>/bundle`) is verified,
//! staged, checked as `check-config` checks, put in force by one rename, reloaded, then
//! watched; if the gateway's health falls during the watch, it rolls back by itself.
//!
//! The order, for one bundle:
//! 1. in memory: size, form, signature by a key of the `authorized_keys` in force,
//!    `bundles` scope for every kind carried, this gateway among the targets, a version
//!    newer than every version ever put in force here, every file matching its hash,
//!    the device registry opened with this gateway's identity. A bundle refused here
//!    leaves nothing on disk;
//! 2. every kind it carries must be configured in berrygw.toml (a bundle cannot turn on
//!    a part the gateway was not set up to run);
//! 3. staged in `bundles/.stage-<v>` (the version in force's other files copied in) and
//!    resolved exactly as `check-config` resolves a site (registry, codecs compiled,
//!    rules against the profiles, keys);
//! 4. put in force (`config::bundles::Store::commit`: one rename of `current`) and reloaded, as
//!    SIGHUP reloads: the radio, the journals and the sinks never stop;
//! 5. watched for `watch_secs`: rolled back at once if the decoder fails every uplink it
//!    is given (at least [`EVIDENCE`] of them, none decoded: codecs that fail, MICs that
//!    do not check with the registry's keys; replays are no registry's fault), and at the
//!    end if a sink
//!    that was connected is not, or the concentrator that was running is not.
//!
//! A bundle that fails authentication (malformed, unknown key, bad signature) is refused
//! at the door as an unsigned command is: counted (`berrygw_commands_unauthenticated_total`)
//! and logged, never audited nor answered. Each outcome of an authenticated bundle
//! (`applied`, `refused`, `rolled_back`, `kept`) is an audit entry (command
//! `apply_bundle`, target `bundle`) and an event on `<prefix>/<gateway_id>/event/bundle`,
//! both through the app journal (kept through outages). A daemon that cannot start on the
//! version on probation rolls back before its next start ([`recover`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use berrygw_core::unix_ms;
use berrygw_proto::audit::{AuditEntry, Outcome, Source};
use berrygw_proto::bundle::{self as wire, reason, BundleEvent, BundleOutcome, Claimed, Opened};
use berrygw_proto::envelope::Refusal;
use berrygw_proto::sealed::Identity;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::actuation::engine::Actuation;
use crate::config::bundles::{self as store, Store};
use crate::config::{self, LoadedConfig, Site};
use crate::events::{self, AppTopics};
use crate::journal::Journal;
use crate::view::GatewayView;

/// Uplinks the decoder must fail, with none decoded, before a bundle is judged to break it.
pub const EVIDENCE: u64 = 3;

/// Before the daemon resolves its site: with `[bundles]`, the store is seeded with the
/// files berrygw.toml names (first start only), so that the site is read through it.
pub fn prepare(loaded: &LoadedConfig) -> anyhow::Result<()> {
    if loaded.config.bundles.is_some() {
        Store::new(&loaded.config.gateway.state_dir).seed(&loaded.config)?;
    }
    Ok(())
}

/// The daemon could not resolve its site: if a version is on probation, roll back to the
/// one before (said in the log, and published once running) and say so; `None` if there
/// was nothing to roll back.
pub fn recover(loaded: &LoadedConfig, why: &str) -> Option<u64> {
    loaded.config.bundles.as_ref()?;
    let store = Store::new(&loaded.config.gateway.state_dir);
    let p = store.roll_back().ok()?;
    error!(
        version = p.version,
        back_to = p.previous,
        "bundle {} does not start ({why}): rolled back",
        p.version
    );
    let event = pending_event(&p, format!("the daemon could not start on it: {why}"));
    if let Err(e) = std::fs::write(store.dir().join(PENDING), serde_json::to_vec(&event).unwrap_or_default())
    {
        warn!("bundles: the roll-back will not be published: {e}");
    }
    Some(p.previous)
}

/// An outcome decided before the daemon ran (a roll-back at start), published once it runs.
const PENDING: &str = "pending-event.json";

fn pending_event(p: &store::Probation, message: String) -> BundleEvent {
    BundleEvent {
        gateway_id: String::new(),
        version: Some(p.version),
        in_force: p.previous,
        key_id: Some(p.key_id.clone()),
        outcome: BundleOutcome::RolledBack,
        reason: Some("start_failed".into()),
        message,
        at_ms: unix_ms(SystemTime::now()),
    }
}

/// Everything the bundle task needs from the running gateway.
pub struct BundleRuntime {
    pub gateway_id: String,
    pub identity: Identity,
    pub store: Store,
    pub watch: Duration,
    /// berrygw.toml as read at start: staged versions are checked against it.
    pub config_path: PathBuf,
    pub config_source: String,
    pub actuation: Actuation,
    pub view: GatewayView,
    pub app: (Journal, AppTopics),
    /// The version in force, for the status and health records.
    pub version: watch::Sender<Option<u64>>,
    /// Asks the daemon to restart the pipeline (a version that changes settings).
    pub restart: watch::Sender<bool>,
}

/// Bundles as received by the app sink: the latest payload (a retained message comes again
/// at each connection; only the newest matters).
pub type Inbox = watch::Receiver<Option<Arc<Vec<u8>>>>;

impl BundleRuntime {
    /// Take bundles until shutdown.
    pub async fn run(self, mut inbox: Inbox, mut shutdown: watch::Receiver<bool>) {
        if let Ok(in_force) = self.store.in_force() {
            self.version.send_replace(in_force);
        }
        self.publish_pending().await;
        // A daemon restarted during a watch (crash, power cut) watches the version again.
        if let Ok(Some(p)) = self.store.probation() {
            info!(version = p.version, "bundle {} is still on probation: watching it again", p.version);
            self.watch_and_settle(&p, &mut shutdown).await;
            if *self.restart.borrow() {
                return;
            }
        }
        let mut last: Option<Arc<Vec<u8>>> = None;
        loop {
            tokio::select! {
                changed = inbox.changed() => if changed.is_err() { return },
                _ = shutdown.changed() => return,
            }
            let Some(payload) = inbox.borrow_and_update().clone() else { continue };
            // The same message again (a reconnection brings the retained copy back).
            if last.as_ref().is_some_and(|l| l.as_slice() == payload.as_slice()) {
                continue;
            }
            last = Some(payload.clone());
            if let Some(p) = self.take(&payload).await {
                self.watch_and_settle(&p, &mut shutdown).await;
            }
            if *self.restart.borrow() {
                // The daemon stops this pipeline and starts one on the new settings.
                return;
            }
        }
    }

    /// Verify, stage, check and apply one bundle: the version on probation, to watch; or
    /// `None` if it was refused, is the version already in force, or changes settings (the
    /// pipeline then restarts, and the next one watches it).
    async fn take(&self, payload: &[u8]) -> Option<store::Probation> {
        let received = std::time::Instant::now();
        let in_force = self.store.in_force().ok().flatten().unwrap_or(0);
        let highest = match self.store.highest() {
            Ok(h) => h,
            Err(e) => {
                self.refused(
                    Refusal::new(reason::APPLY_FAILED, format!("{e:#}")),
                    Claimed::default(),
                    in_force,
                )
                .await;
                return None;
            }
        };
        let Some(keys) = self.actuation.keys() else {
            let r = Refusal::new(reason::UNKNOWN_KEY, "no authorized_keys loaded");
            self.refused(r, Claimed::default(), in_force).await;
            return None;
        };
        let digest = wire::sha256_hex(payload);
        let opened = match wire::open(payload, &self.gateway_id, highest, &keys, &self.identity) {
            Ok(o) => o,
            Err((r, Claimed { version: Some(v), .. }))
                if r.reason == reason::NOT_NEWER && self.store.received(v, &digest) =>
            {
                // The retained copy of a bundle taken before (in force, or rolled back): said already.
                return None;
            }
            // Unauthenticated: counted and logged at the door, never audited nor answered,
            // so that unsigned traffic cannot fill the audit log (as for commands).
            Err((r, _))
                if [reason::MALFORMED, reason::UNKNOWN_KEY, reason::BAD_SIGNATURE].contains(&r.reason) =>
            {
                self.actuation.unauthenticated_bundle(r.reason, &format!("bundle: {}", r.message));
                return None;
            }
            Err((r, claimed)) => {
                self.refused(r, claimed, in_force).await;
                return None;
            }
        };
        let version = opened.manifest.version;
        let verified = received.elapsed();
        let claimed = Claimed { version: Some(version), key_id: Some(opened.key_id.clone()) };
        let (store, path, source) =
            (self.store.clone(), self.config_path.clone(), self.config_source.clone());
        let key_id = opened.key_id.clone();
        let files: Vec<&str> = opened.files.iter().map(|(p, _)| p.as_str()).collect();
        let summary = files.join(", ");
        let connected_before = connected_sinks(&self.view);
        let staged = tokio::task::spawn_blocking(move || {
            stage_and_check(&store, &path, source, &opened, &digest, connected_before)
        })
        .await
        .unwrap_or_else(|e| Err(Refusal::new(reason::APPLY_FAILED, e.to_string())));
        let (probation, restart) = match staged {
            Ok(committed) => committed,
            Err(r) => {
                self.refused(r, claimed, in_force).await;
                return None;
            }
        };
        if restart {
            self.version.send_replace(Some(version));
            let message = format!(
                "in force: {summary}; it changes settings, so the pipeline restarts on them, then it is watched for {} s",
                self.watch.as_secs()
            );
            self.outcome(version, in_force, &key_id, BundleOutcome::Applied, None, message).await;
            self.restart.send_replace(true);
            return None;
        }
        let checked = received.elapsed();
        match crate::view::reload(&self.view).await {
            Ok(r) => {
                // The decoder dropped the codecs it replaced.
                release_freed_memory();
                info!(
                    version,
                    bytes = payload.len(),
                    verify_ms = verified.as_millis() as u64,
                    stage_check_commit_ms = (checked - verified).as_millis() as u64,
                    reload_ms = (received.elapsed() - checked).as_millis() as u64,
                    "bundle {version} applied"
                );
                self.version.send_replace(Some(version));
                let message = format!("in force, watched for {} s: {summary} ({r})", self.watch.as_secs());
                self.outcome(version, in_force, &key_id, BundleOutcome::Applied, None, message).await;
                Some(probation)
            }
            Err(e) => {
                // Checked, yet not taken by the running parts: back at once.
                self.roll_back(version, &key_id, format!("reload refused it: {e}")).await;
                None
            }
        }
    }

    /// Watch the version on probation; keep it or roll it back.
    async fn watch_and_settle(&self, p: &store::Probation, shutdown: &mut watch::Receiver<bool>) {
        let (version, key_id) = (p.version, p.key_id.as_str());
        let before = Health::of(&self.view);
        let deadline = tokio::time::Instant::now() + self.watch;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                // Still on probation after a restart: the next start watches again.
                _ = shutdown.changed() => return,
            }
            let now = Health::of(&self.view);
            if let Some(why) = now.decoder_broken_since(&before) {
                return self.roll_back(version, key_id, why).await;
            }
            if tokio::time::Instant::now() >= deadline {
                if let Some(why) = now.fell_since(&before, &p.connected_before) {
                    return self.roll_back(version, key_id, why).await;
                }
                if let Err(e) = self.store.keep() {
                    error!("bundles: could not end the probation of version {version}: {e:#}");
                }
                let message = format!("healthy for {} s: kept", self.watch.as_secs());
                let in_force = version;
                return self.outcome(version, in_force, key_id, BundleOutcome::Kept, None, message).await;
            }
        }
    }

    async fn roll_back(&self, version: u64, key_id: &str, why: String) {
        let back = tokio::task::block_in_place(|| self.store.roll_back());
        let in_force = match back {
            Ok(p) => p.previous,
            Err(e) => {
                error!("bundles: ROLL-BACK OF VERSION {version} FAILED: {e:#}; it stays in force");
                return;
            }
        };
        let restart = self.store.restart_needed(version, in_force);
        if !restart {
            if let Err(e) = crate::view::reload(&self.view).await {
                error!("bundles: after rolling back to version {in_force}, the reload refused: {e}");
            }
        }
        self.version.send_replace(Some(in_force));
        let message = format!("{why}; back to version {in_force}");
        self.outcome(
            version,
            in_force,
            key_id,
            BundleOutcome::RolledBack,
            Some("health_fell".into()),
            message,
        )
        .await;
        if restart {
            self.restart.send_replace(true);
        }
    }

    async fn refused(&self, r: Refusal, claimed: Claimed, in_force: u64) {
        let event = BundleEvent {
            gateway_id: self.gateway_id.clone(),
            version: claimed.version,
            in_force,
            key_id: claimed.key_id,
            outcome: BundleOutcome::Refused,
            reason: Some(r.reason.to_string()),
            message: r.message,
            at_ms: unix_ms(SystemTime::now()),
        };
        self.publish(event).await;
    }

    async fn outcome(
        &self,
        version: u64,
        in_force: u64,
        key_id: &str,
        outcome: BundleOutcome,
        reason: Option<String>,
        message: String,
    ) {
        let event = BundleEvent {
            gateway_id: self.gateway_id.clone(),
            version: Some(version),
            in_force,
            key_id: Some(key_id.to_string()),
            outcome,
            reason,
            message,
            at_ms: unix_ms(SystemTime::now()),
        };
        self.publish(event).await;
    }

    /// The outcome in the audit log (and so on `event/command`), then on `event/bundle`.
    async fn publish(&self, event: BundleEvent) {
        let outcome = match event.outcome {
            BundleOutcome::Applied => Outcome::Executed,
            BundleOutcome::Kept => Outcome::Verified,
            BundleOutcome::Refused => Outcome::Refused,
            BundleOutcome::RolledBack => Outcome::Failed,
        };
        let reason = match event.outcome {
            BundleOutcome::RolledBack => Some("rolled_back".to_string()),
            _ => event.reason.clone(),
        };
        let entry = AuditEntry {
            seq: 0,
            at: crate::actuation::engine::now_utc(),
            source: Source::Central,
            actor: event.key_id.clone().unwrap_or_else(|| "unknown".into()),
            command_id: event.version.map(|v| format!("bundle-{v}")),
            target: "bundle".into(),
            command: "apply_bundle".into(),
            args: serde_json::json!({ "version": event.version, "in_force": event.in_force }),
            outcome,
            reason,
            message: format!("bundle {}: {}", event.outcome.as_str(), event.message),
        };
        self.actuation.record_outside(entry).await;
        let (journal, topics) = &self.app;
        let body = serde_json::to_vec(&event).unwrap_or_default();
        let record = events::record(&topics.event("bundle"), &body, event.at_ms);
        if let Err(e) = journal.append(record).await {
            warn!("bundle outcome not stored in the app journal: {e}");
        }
    }

    async fn publish_pending(&self) {
        let path = self.store.dir().join(PENDING);
        let Ok(bytes) = std::fs::read(&path) else { return };
        if let Ok(event) = serde_json::from_slice::<BundleEvent>(&bytes) {
            self.publish(BundleEvent { gateway_id: self.gateway_id.clone(), ..event }).await;
        }
        let _ = std::fs::remove_file(&path);
    }
}

/// Stage the opened bundle, check it as `check-config` would, put it in force.
fn stage_and_check(
    store: &Store,
    config_path: &Path,
    source: String,
    opened: &Opened,
    payload_sha256: &str,
    connected_before: Vec<String>,
) -> Result<(store::Probation, bool), Refusal> {
    let version = opened.manifest.version;
    let check = |m: String| Refusal::new(reason::CHECK_FAILED, m);
    let mut loaded = config::parse(config_path, source.clone()).map_err(|e| check(e.to_string()))?;
    if let Some(kind) = opened.manifest.kinds().into_iter().find(|k| !store::accepts(&loaded.config, *k)) {
        return Err(check(format!(
            "it carries {} files, but berrygw.toml does not configure the part that reads them",
            kind.as_str()
        )));
    }
    let apply = |e: anyhow::Error| Refusal::new(reason::APPLY_FAILED, format!("{e:#}"));
    let staged = store.stage(version, &opened.files).map_err(apply)?;
    let settings = staged.join("berrygw.toml");
    if let Ok(text) = std::fs::read_to_string(&settings) {
        loaded = config::merged(config_path, source, &settings, &text).map_err(|e| check(e.to_string()))?;
    }
    store::overlay(&mut loaded.config, &staged);
    let checked = Site::resolve_as_is(loaded).and_then(|site| site.compile_codecs());
    // The checked site and its compiled codecs are gone: give their pages back.
    release_freed_memory();
    if let Err(e) = checked {
        let _ = std::fs::remove_dir_all(&staged);
        return Err(check(e.to_string()));
    }
    let probation =
        store.commit(&staged, version, &opened.key_id, payload_sha256, connected_before).map_err(apply)?;
    info!(version, key = opened.key_id, "bundle {version} staged, checked and put in force");
    let restart = store.restart_needed(probation.previous, version);
    Ok((probation, restart))
}

/// Return freed heap pages to the system. The check compiles every codec once more beside
/// the decoder's set (50 codecs: about 30 MiB); without this glibc keeps those pages in the
/// arena of the thread that freed them (BENCHMARKS.md, "The fleet").
fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free memory at the top of glibc's heaps; it takes
    // and returns plain values.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The names of the sinks connected now.
fn connected_sinks(view: &GatewayView) -> Vec<String> {
    view.sinks
        .iter()
        .filter(|s| s.counters.connected.load(Ordering::Relaxed))
        .map(|s| s.name.to_string())
        .collect()
}

/// What the watch compares: before the new version, and each second after.
struct Health {
    connected: Vec<(&'static str, bool)>,
    radio_running: Option<bool>,
    decoded: u64,
    failed: u64,
}

impl Health {
    fn of(view: &GatewayView) -> Health {
        let connected =
            view.sinks.iter().map(|s| (s.name, s.counters.connected.load(Ordering::Relaxed))).collect();
        let radio_running = view.concentrator.as_ref().map(|c| c.borrow().running);
        let (decoded, failed) = view.decoder.as_ref().map_or((0, 0), |d| {
            let c = &d.counters;
            let codec_failures = c.codec_failures.load(Ordering::Relaxed);
            let readings = c.readings.load(Ordering::Relaxed);
            (readings.saturating_sub(codec_failures), codec_failures + c.bad_mic.load(Ordering::Relaxed))
        });
        Health { connected, radio_running, decoded, failed }
    }

    fn decoder_broken_since(&self, before: &Health) -> Option<String> {
        let failed = self.failed.saturating_sub(before.failed);
        let decoded = self.decoded.saturating_sub(before.decoded);
        (decoded == 0 && failed >= EVIDENCE).then(|| {
            format!("the decoder failed all {failed} uplinks it was given (codec failures, MICs that do not check), decoding none")
        })
    }

    /// Health fell: a sink connected before the new version (`connected_before`) is not now,
    /// or the concentrator running at the start of the watch is not.
    fn fell_since(&self, before: &Health, connected_before: &[String]) -> Option<String> {
        for (name, is) in &self.connected {
            if connected_before.iter().any(|n| n == name) && !is {
                return Some(format!("the {name} sink was connected before this version and is not"));
            }
        }
        if before.radio_running == Some(true) && self.radio_running == Some(false) {
            return Some("the concentrator was running and is not".into());
        }
        None
    }
}
