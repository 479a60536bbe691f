//! Central messages, from the door to the engine: `offer` parses and authenticates each
//! message in memory (refusals counted and rate-limited, nothing stored, see `gate.rs`) and
//! queues the authenticated ones; `dispatch` takes them in arrival order, runs the clock,
//! gateway, expiry, `issued_at` and scope checks and the replay window, then executes a
//! command or installs a signed session; the door's refusal summary; `authorized_keys`
//! reloads (SIGHUP).

use std::sync::Arc;

use berrygw_core::unix_ms;
use tokio::sync::{mpsc, Semaphore};
use tracing::{error, warn};

use super::super::audit::{Outcome, Source};
use super::super::gate::{self, Arrival};
use super::super::replay::{Admission, REPLAY_WINDOW_FAILED};
use super::{now_utc, Actuation, Ask, QUEUE, RUNNING};
use crate::clock::ClockSync;
use crate::events;
use berrygw_proto::envelope::{self, CommandEnvelope};
use berrygw_proto::keys::{AuthorizedKey, AuthorizedKeys};
use berrygw_proto::session::{SessionKeys, SEALED_KEYS};

/// The `command` of a signed session message.
pub const SET_SESSION: &str = "set_session";

/// `reason` of a central command refused because the clock is not synchronized.
const CLOCK_NOT_SYNCHRONIZED: &str = "clock_not_synchronized";
/// `reason` of a central command refused because the clock state could not be read.
const CLOCK_STATE_UNKNOWN: &str = "clock_state_unknown";

/// A central message whose signature holds, with the key that made it.
pub(super) struct Authenticated {
    envelope: CommandEnvelope,
    key: AuthorizedKey,
    arrival: Arrival,
}

impl Actuation {
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

    /// A message from the central platform, as received on the app sink (the door, see
    /// `gate.rs`): parsed and its signature checked here, in memory, without waiting.
    /// Refused: counted, maybe logged, nothing stored. Authenticated: queued for
    /// [`dispatch`](Self::dispatch), which audits it from there on.
    pub fn offer(&self, arrival: Arrival, payload: &[u8]) {
        let Some(queue) = &self.inner.queue else { return };
        let envelope = match CommandEnvelope::parse(payload) {
            Ok(e) => e,
            Err(r) => return self.unauthenticated(r.reason, None, &r.message),
        };
        let key = {
            let keys = self.inner.keys.read().ok();
            match keys.as_deref().and_then(Option::as_ref) {
                Some(keys) => envelope::authenticate(&envelope, keys).cloned(),
                None => {
                    Err(envelope::Refusal::new(envelope::reason::UNKNOWN_KEY, "no authorized_keys loaded"))
                }
            }
        };
        let key = match key {
            Ok(k) => k,
            Err(r) => return self.unauthenticated(r.reason, Some(&envelope), &r.message),
        };
        let fresh = self.inner.door.lock().map(|mut d| d.remember(&key.id, envelope.id())).unwrap_or(true);
        if !fresh {
            let message = "a copy of an envelope already received (redelivered, or replayed by someone)";
            return self.unauthenticated(gate::DUPLICATE, Some(&envelope), message);
        }
        let (key_id, id) = (key.id.clone(), envelope.id().to_string());
        match queue.try_send(Authenticated { envelope, key, arrival }) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                if let Ok(mut door) = self.inner.door.lock() {
                    door.forget(&key_id, &id);
                }
                self.inner.counters.reasons.get_or_create(&[("reason", "queue_full".to_string())]).inc();
                error!(
                    key = key_id,
                    id,
                    "central message dropped: {QUEUE} authenticated messages already wait (the platform may resend it)"
                );
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// A configuration bundle that failed authentication (`crate::bundle`): refused at the
    /// same door as commands, counted and logged the same way, never audited.
    pub fn unauthenticated_bundle(&self, reason: &'static str, message: &str) {
        self.unauthenticated(reason, None, message);
    }

    /// A refusal at the door: counted, logged at most once per reason every few seconds.
    fn unauthenticated(&self, reason: &'static str, envelope: Option<&CommandEnvelope>, message: &str) {
        self.inner.counters.unauthenticated.get_or_create(&[("reason", reason)]).inc();
        let held = self.inner.door.lock().ok().and_then(|mut d| d.log.allow(reason));
        if let Some(held) = held {
            warn!(
                reason,
                claimed_key = envelope.map(CommandEnvelope::key_id),
                id = envelope.map(CommandEnvelope::id),
                held_back = held,
                "central message refused before authentication, nothing stored: {message}"
            );
        }
    }

    /// Publish how many messages the door refused, at most every `SUMMARY_EVERY`.
    pub(super) async fn summarize_refusals(self) {
        let mut last = self.inner.counters.unauthenticated_counts();
        let mut tick = tokio::time::interval(gate::SUMMARY_EVERY);
        tick.tick().await;
        loop {
            tick.tick().await;
            let now = self.inner.counters.unauthenticated_counts();
            let body = gate::summary(&self.inner.gateway_id, &last, &now, gate::SUMMARY_EVERY);
            last = now;
            let (Some(body), Some(topics), Some(journal)) =
                (body, &self.inner.topics, &self.inner.app_journal)
            else {
                continue;
            };
            let record = events::record(
                &topics.event("unauthenticated"),
                body.to_string().as_bytes(),
                unix_ms(std::time::SystemTime::now()),
            );
            if let Err(e) = journal.append(record).await {
                warn!("refusal summary not stored in the app journal: {e}");
            }
        }
    }

    /// Authenticated central messages in arrival order: the rest of the checks and the
    /// replay window here, one at a time; then each command runs on its own (at most
    /// `RUNNING` at once, so a long read-back does not hold up the next one).
    pub(super) async fn dispatch(self, mut queued: mpsc::Receiver<Authenticated>) {
        let running = Arc::new(Semaphore::new(RUNNING));
        while let Some(message) = queued.recv().await {
            match message.arrival {
                Arrival::Session => self.install_session(message).await,
                Arrival::Command => {
                    let Some(ask) = self.admit(message).await else { continue };
                    let Ok(permit) = running.clone().acquire_owned().await else { return };
                    let actuation = self.clone();
                    tokio::spawn(async move {
                        actuation.execute(ask).await;
                        drop(permit);
                    });
                }
            }
        }
    }

    /// Clock, gateway, expiry, scope, then the replay window: the command to execute, or
    /// None when refused (recorded).
    async fn admit(&self, message: Authenticated) -> Option<Ask> {
        let Authenticated { envelope: env, key, arrival } = message;
        let ask = Ask::central(&key, &env);
        let refused = if arrival == Arrival::Command && env.command() == SET_SESSION {
            Err(envelope::Refusal::new(
                "wrong_topic",
                "set_session carries keys and is taken only on the session/set topic; refused here",
            ))
        } else {
            self.authorize(&env, &key)
        };
        match refused {
            Ok(()) => Some(ask),
            Err(r) => {
                self.record(ask.refusal(r.reason, r.message)).await;
                None
            }
        }
    }

    /// The checks after the signature. A refusal that may pass later (clock not yet
    /// synchronized, the window not writable) lets the door take the same envelope again;
    /// any other keeps it remembered there, so copies of it are not audited over and over.
    fn authorize(&self, env: &CommandEnvelope, key: &AuthorizedKey) -> Result<(), envelope::Refusal> {
        let result = self.authorize_once(env, key);
        if let Err(r) = &result {
            if [CLOCK_NOT_SYNCHRONIZED, CLOCK_STATE_UNKNOWN, REPLAY_WINDOW_FAILED, "internal"]
                .contains(&r.reason)
            {
                if let Ok(mut door) = self.inner.door.lock() {
                    door.forget(&key.id, env.id());
                }
            }
        }
        result
    }

    fn authorize_once(&self, env: &CommandEnvelope, key: &AuthorizedKey) -> Result<(), envelope::Refusal> {
        if self.inner.require_clock_sync {
            match crate::clock::clock_sync() {
                ClockSync::Synchronized => {}
                ClockSync::Unsynchronized => {
                    return Err(envelope::Refusal::new(
                        CLOCK_NOT_SYNCHRONIZED,
                        "this gateway's clock is not synchronized (NTP), so not_after cannot be trusted; \
                         check chrony/systemd-timesyncd, or set [field] require_clock_sync = false",
                    ))
                }
                ClockSync::Unknown(e) => return Err(envelope::Refusal::new(CLOCK_STATE_UNKNOWN, e)),
            }
        }
        let now = now_utc();
        envelope::authorize(env, key, &self.inner.gateway_id, now)?;
        let admission = Admission {
            key_id: &key.id,
            id: env.id(),
            not_after: env.not_after(),
            issued_at: env.issued_at(),
        };
        tokio::task::block_in_place(|| {
            self.inner
                .replay
                .lock()
                .map_err(|_| envelope::Refusal::new("internal", "replay window unavailable"))
                .and_then(|mut w| w.admit(admission, now))
        })
    }

    /// Session keys of an OTAA device in a signed envelope (`command` = `set_session`,
    /// `target` = the DevEUI, `args` = `dev_addr`, `f_cnt_up` and `sealed_keys`, the keys
    /// sealed to this gateway's identity: `berrygw_proto::session`): the same checks as a
    /// command, then opened and installed in the decoder; audited without the keys, saying
    /// whether it replaced a session. Keys sent in clear are refused (`keys_in_clear`).
    async fn install_session(&self, message: Authenticated) {
        let Authenticated { envelope: env, key, .. } = message;
        let mut ask = Ask::central(&key, &env);
        let checked = if env.command() != SET_SESSION {
            Err(envelope::Refusal::new(
                "wrong_topic",
                format!(
                    "a session message must carry command {SET_SESSION:?}; commands go to the command topic"
                ),
            ))
        } else {
            self.authorize(&env, &key)
        };
        if let Err(r) = checked {
            self.record(ask.refusal(r.reason, r.message)).await;
            return;
        }
        let mut fields = env.args().clone();
        if fields.contains_key("nwk_s_key") || fields.contains_key("app_s_key") {
            let message = "session keys in clear crossed the broker; they must be sealed to this \
                           gateway's identity (`sealed_keys`, as `berryctl session push` does)";
            // What was sent is not repeated in the audit log.
            ask.args = serde_json::json!({});
            self.record(ask.refusal("keys_in_clear", message.into())).await;
            return;
        }
        let opened = match (fields.remove(SEALED_KEYS), &self.inner.identity) {
            (Some(serde_json::Value::String(sealed)), Some(identity)) => SessionKeys::open(&sealed, identity)
                .map_err(|e| {
                    ("sealed_keys_unreadable", format!("{e} (sealed to another key than this gateway's?)"))
                }),
            (Some(_), _) => Err(("bad_args", format!("`{SEALED_KEYS}` must be a base64 string"))),
            (None, _) => {
                Err(("bad_args", format!("no `{SEALED_KEYS}`: the session keys, sealed to this gateway")))
            }
        };
        let keys = match opened {
            Ok(keys) => keys,
            Err((reason, message)) => {
                ask.args = serde_json::Value::Object(fields);
                self.record(ask.refusal(reason, message)).await;
                return;
            }
        };
        fields.insert("nwk_s_key".into(), serde_json::Value::String(keys.nwk_s_key));
        fields.insert("app_s_key".into(), serde_json::Value::String(keys.app_s_key));
        fields.insert("dev_eui".into(), serde_json::Value::String(env.target().to_string()));
        let session =
            match events::parse_session_push(serde_json::Value::Object(fields).to_string().as_bytes()) {
                Ok(s) => s,
                Err(e) => {
                    self.record(ask.refusal("bad_args", e)).await;
                    return;
                }
            };
        ask.args =
            serde_json::json!({ "dev_addr": session.dev_addr.to_string(), "f_cnt_up": session.f_cnt_up });
        let Some(decoder) = &self.inner.decoder else {
            self.record(ask.refusal("no_decoder", "no [decode] on this gateway".into())).await;
            return;
        };
        match decoder.push(session).await {
            Ok(installed) => {
                let message = match installed.replaced {
                    Some(source) => format!(
                        "session keys installed for {}, REPLACING its session from {}",
                        installed.device,
                        source.label()
                    ),
                    None => format!("session keys installed for {} (it had no session)", installed.device),
                };
                self.record(ask.entry(Outcome::Verified, None, message)).await;
            }
            Err(e) => {
                self.record(ask.refusal("session_refused", e)).await;
            }
        }
    }
}

impl Ask {
    /// An authenticated central message, as its envelope says, signed by `key`.
    fn central(key: &AuthorizedKey, env: &CommandEnvelope) -> Ask {
        Ask {
            source: Source::Central,
            actor: key.id.clone(),
            command_id: Some(env.id().to_string()),
            target: env.target().to_string(),
            command: env.command().to_string(),
            args: serde_json::Value::Object(env.args().clone()),
        }
    }
}
