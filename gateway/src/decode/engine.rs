//! The decoder's state and what it does with each event, with no thread and no
//! channel: an uplink becomes a reading (or a counted refusal), a JoinRequest
//! and the JoinAccept this gateway transmits become a session, a pushed
//! session replaces one. `decode::spawn` runs it on its own thread.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use berrygw_codecs::{Codec, Limits, UplinkInput};
use berrygw_core::rfc3339_ms as rfc3339;
use berrygw_core::unix_ms;
use berrygw_core::ConfigError;
use berrygw_lora::phy::{self, DevAddr, Eui64, MType, PhyFrame};
use berrygw_lora::security::{self, SessionKeys};
use berrygw_lora::UplinkFrame;

use super::reading::{Reading, RxInfo};
use super::registry::{Activation, CodecRef, Device, Registry, Target};
use super::sessions::{Session, SessionSource, SessionStore};
use crate::events::{self, AppTopics, PushedSession};

/// How long a JoinRequest waits for its JoinAccept (RX2 of the join is 6 s after it).
const JOIN_WINDOW: Duration = Duration::from_secs(30);
/// How long a transmitted JoinAccept waits for the radio's TxAck.
const ACCEPT_WINDOW: Duration = Duration::from_secs(30);

/// The compiled codecs of a registry, one per distinct codec.
pub struct Codecs(HashMap<CodecRef, Codec>);

impl Codecs {
    /// Compile every codec `registry` uses; the first that fails is reported with its file.
    pub fn build(registry: &Registry, limits: &Limits) -> Result<Codecs, ConfigError> {
        let mut codecs = HashMap::new();
        for r in registry.codecs() {
            codecs.insert(r.clone(), instantiate(r, limits)?);
        }
        Ok(Codecs(codecs))
    }
}

/// A ready codec for `r` (a JavaScript file is read and compiled).
pub fn instantiate(r: &CodecRef, limits: &Limits) -> Result<Codec, ConfigError> {
    Ok(match r {
        CodecRef::CayenneLpp => Codec::cayenne_lpp(),
        CodecRef::Hex => Codec::hex(),
        CodecRef::Js(path) => Codec::load_file(path, *limits).map_err(|e| ConfigError {
            file: path.clone(),
            line: None,
            key: None,
            message: e.to_string(),
        })?,
    })
}

/// What became of one uplink.
#[derive(Debug)]
pub enum Outcome {
    /// A reading; `record` is what goes to the app journal (none for local targets or without an app sink).
    Reading {
        reading: Box<Reading>,
        record: Option<crate::journal::NewRecord>,
        /// Why the codec failed (metrics label), when it did.
        codec_failure: Option<&'static str>,
    },
    /// A JoinRequest of a known OTAA device, remembered until its JoinAccept.
    JoinRequest { device: String },
    /// Not one of ours (or not a frame we decode): forwarded untouched, nothing else.
    NotOurs,
    /// Ours, but refused: `reason` is the metrics label.
    Refused { device: String, reason: &'static str, detail: String },
}

/// A JoinRequest waiting for its JoinAccept.
struct PendingJoin {
    dev_nonce: u16,
    at: Instant,
}

/// A transmitted JoinAccept waiting for the radio's TxAck.
struct PendingAccept {
    dev_eui: Eui64,
    keys: SessionKeys,
    at: Instant,
}

/// A pushed session that was installed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Installed {
    /// The device's name in the registry.
    pub device: String,
    /// Where the session it replaced came from (`None`: the device had none).
    pub replaced: Option<SessionSource>,
}

/// The decoder's whole state.
pub struct Engine {
    gateway_id: String,
    topics: Option<AppTopics>,
    registry: Registry,
    codecs: Codecs,
    sessions: HashMap<Eui64, Session>,
    by_addr: HashMap<DevAddr, Vec<Eui64>>,
    store: SessionStore,
    pending_joins: HashMap<Eui64, PendingJoin>,
    pending_accepts: HashMap<u32, PendingAccept>,
    no_variables: BTreeMap<String, String>,
}

impl Engine {
    /// An engine over `registry`, with the sessions read from `store`.
    pub fn new(
        gateway_id: String,
        topics: Option<AppTopics>,
        registry: Registry,
        codecs: Codecs,
        store: SessionStore,
        sessions: HashMap<Eui64, Session>,
    ) -> Engine {
        let mut engine = Engine {
            gateway_id,
            topics,
            registry,
            codecs,
            sessions,
            by_addr: HashMap::new(),
            store,
            pending_joins: HashMap::new(),
            pending_accepts: HashMap::new(),
            no_variables: BTreeMap::new(),
        };
        engine.sync_sessions();
        engine
    }

    /// Swap in a new registry and its codecs (sessions of devices still there are kept).
    pub fn reload(&mut self, registry: Registry, codecs: Codecs) {
        self.registry = registry;
        self.codecs = codecs;
        self.sync_sessions();
    }

    /// The registry in force.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Number of devices with a session (ABP ones always have one).
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Make sessions agree with the registry: ABP keys from the file (a key change
    /// starts a new counter), sessions of removed devices forgotten.
    fn sync_sessions(&mut self) {
        let mut changed = Vec::new();
        for d in self.registry.devices() {
            match &d.activation {
                Activation::Abp { dev_addr, nwk_s_key, app_s_key } => {
                    let keys =
                        SessionKeys { dev_addr: *dev_addr, nwk_s_key: *nwk_s_key, app_s_key: *app_s_key };
                    let same = self
                        .sessions
                        .get(&d.dev_eui)
                        .is_some_and(|s| s.source == SessionSource::Abp && s.keys == keys);
                    if !same {
                        self.sessions
                            .insert(d.dev_eui, Session { keys, source: SessionSource::Abp, last_fcnt: None });
                        changed.push(d.dev_eui);
                    }
                }
                Activation::Otaa { .. } => {
                    // An ABP session left from before the device became OTAA is not its session.
                    if self.sessions.get(&d.dev_eui).is_some_and(|s| s.source == SessionSource::Abp) {
                        self.sessions.remove(&d.dev_eui);
                        changed.push(d.dev_eui);
                    }
                }
            }
        }
        let gone: Vec<Eui64> =
            self.sessions.keys().filter(|eui| self.registry.by_eui(**eui).is_none()).copied().collect();
        for eui in gone {
            self.sessions.remove(&eui);
            changed.push(eui);
        }
        for eui in changed {
            self.store.mark(eui);
        }
        self.index();
    }

    fn index(&mut self) {
        self.by_addr.clear();
        for (eui, s) in &self.sessions {
            self.by_addr.entry(s.keys.dev_addr).or_default().push(*eui);
        }
    }

    /// Decode one uplink (already accepted by the filters and numbered `seq`).
    pub fn uplink(&mut self, frame: &UplinkFrame, seq: u64) -> Outcome {
        let Ok(parsed) = phy::parse(&frame.phy_payload) else { return Outcome::NotOurs };
        match parsed {
            PhyFrame::JoinRequest(join) => self.join_request(frame, join.dev_eui),
            PhyFrame::Data(data) if data.mtype.is_uplink() => self.data_uplink(frame, data.dev_addr, seq),
            _ => Outcome::NotOurs,
        }
    }

    fn join_request(&mut self, frame: &UplinkFrame, dev_eui: Eui64) -> Outcome {
        let Some(device) = self.registry.by_eui(dev_eui) else { return Outcome::NotOurs };
        let Activation::Otaa { app_key, .. } = &device.activation else {
            return Outcome::Refused {
                device: device.name.clone(),
                reason: "join_for_abp_device",
                detail: "JoinRequest from a device registered as ABP".into(),
            };
        };
        match security::verify_join_request(&frame.phy_payload, app_key) {
            Ok(fields) => {
                let name = device.name.clone();
                self.pending_joins
                    .insert(dev_eui, PendingJoin { dev_nonce: fields.dev_nonce, at: Instant::now() });
                Outcome::JoinRequest { device: name }
            }
            Err(e) => {
                Outcome::Refused { device: device.name.clone(), reason: e.label(), detail: e.to_string() }
            }
        }
    }

    fn data_uplink(&mut self, frame: &UplinkFrame, dev_addr: DevAddr, seq: u64) -> Outcome {
        let Some(candidates) = self.by_addr.get(&dev_addr) else { return Outcome::NotOurs };
        // Several devices may share a DevAddr; the MIC tells them apart.
        let mut refusal = None;
        let mut verified = None;
        for eui in candidates {
            let Some(session) = self.sessions.get(eui) else { continue };
            let relaxed = self.registry.by_eui(*eui).is_some_and(|d| d.relax_fcnt);
            let mut result = security::verify_uplink(&frame.phy_payload, &session.keys, session.last_fcnt);
            if relaxed && matches!(&result, Err(e) if matches!(e.label(), "replay" | "fcnt_gap")) {
                // The device may have restarted its count: take the counter as sent.
                result = security::verify_uplink(&frame.phy_payload, &session.keys, None);
                if result.is_ok() {
                    tracing::info!(dev_eui = %eui, "decoder: uplink counter went back; accepted (relax_fcnt)");
                }
            }
            match result {
                Ok(v) => {
                    verified = Some((*eui, v));
                    break;
                }
                Err(e) => {
                    // A MIC failure with one key says little; any other refusal is about this device.
                    if refusal.is_none() || e.label() != "mic" {
                        refusal = Some((*eui, e));
                    }
                }
            }
        }
        let Some((dev_eui, up)) = verified else {
            let Some((eui, e)) = refusal else { return Outcome::NotOurs };
            let device = self.registry.by_eui(eui).map(|d| d.name.clone()).unwrap_or_default();
            return Outcome::Refused { device, reason: e.label(), detail: e.to_string() };
        };
        if let Some(s) = self.sessions.get_mut(&dev_eui) {
            s.last_fcnt = Some(up.fcnt);
            self.store.mark(dev_eui);
        }
        let Some(device) = self.registry.by_eui(dev_eui) else { return Outcome::NotOurs };
        let Some(f_port) = up.f_port.filter(|p| *p > 0) else {
            return Outcome::Refused {
                device: device.name.clone(),
                reason: "mac_only",
                detail: "MAC commands only; nothing to decode".into(),
            };
        };
        let (reading, codec_failure) = decode_reading(
            &self.gateway_id,
            device,
            &mut self.codecs,
            &self.no_variables,
            frame,
            seq,
            dev_addr,
            &up,
            f_port,
        );
        let record = match (&self.topics, &device.target) {
            (_, Target::Local) | (None, _) => None,
            (Some(topics), target) => {
                let topic = match target {
                    Target::Topic(t) => t.clone(),
                    _ => topics.device_up(dev_eui),
                };
                serde_json::to_vec(&reading)
                    .ok()
                    .map(|body| events::record(&topic, &body, reading.received_at_ms))
            }
        };
        Outcome::Reading { reading: Box::new(reading), record, codec_failure }
    }

    /// A downlink on its way to the radio: a JoinAccept for a device we saw join is remembered.
    pub fn downlink(&mut self, downlink_id: u32, phy_payload: &[u8]) -> Option<String> {
        if phy_payload.first().map(|b| MType::from_mhdr(*b)) != Some(MType::JoinAccept) {
            return None;
        }
        self.pending_joins.retain(|_, p| p.at.elapsed() < JOIN_WINDOW);
        self.pending_accepts.retain(|_, p| p.at.elapsed() < ACCEPT_WINDOW);
        for (eui, pending) in &self.pending_joins {
            let Some(Activation::Otaa { app_key, .. }) = self.registry.by_eui(*eui).map(|d| &d.activation)
            else {
                continue;
            };
            if let Ok(accept) = security::open_join_accept(phy_payload, app_key) {
                let keys = security::derive_session_keys(app_key, &accept, pending.dev_nonce);
                self.pending_accepts
                    .insert(downlink_id, PendingAccept { dev_eui: *eui, keys, at: Instant::now() });
                return self.registry.by_eui(*eui).map(|d| d.name.clone());
            }
        }
        None
    }

    /// The radio's answer to a downlink: a transmitted JoinAccept starts the device's session.
    /// Returns the device name and its new DevAddr when a session started.
    pub fn tx_ack(&mut self, downlink_id: u32, transmitted: bool) -> Option<(String, DevAddr)> {
        let pending = self.pending_accepts.remove(&downlink_id)?;
        if !transmitted {
            return None;
        }
        self.pending_joins.remove(&pending.dev_eui);
        let name = self.registry.by_eui(pending.dev_eui)?.name.clone();
        let dev_addr = pending.keys.dev_addr;
        self.install(
            pending.dev_eui,
            Session { keys: pending.keys, source: SessionSource::Join, last_fcnt: None },
        );
        Some((name, dev_addr))
    }

    /// Session keys pushed by the central side (already authenticated and audited by the
    /// actuation engine); only for registered OTAA devices.
    pub fn push(&mut self, pushed: PushedSession) -> Result<Installed, String> {
        let device = self
            .registry
            .by_eui(pushed.dev_eui)
            .ok_or_else(|| format!("DevEUI {} is not in the device registry", pushed.dev_eui))?;
        if !matches!(device.activation, Activation::Otaa { .. }) {
            return Err(format!("{} is an ABP device; its keys come from the registry", device.name));
        }
        let name = device.name.clone();
        let replaced = self.sessions.get(&pushed.dev_eui).map(|s| s.source);
        let keys = SessionKeys {
            dev_addr: pushed.dev_addr,
            nwk_s_key: pushed.nwk_s_key,
            app_s_key: pushed.app_s_key,
        };
        self.install(
            pushed.dev_eui,
            Session { keys, source: SessionSource::Pushed, last_fcnt: pushed.f_cnt_up.checked_sub(1) },
        );
        Ok(Installed { device: name, replaced })
    }

    fn install(&mut self, dev_eui: Eui64, session: Session) {
        self.sessions.insert(dev_eui, session);
        self.store.mark(dev_eui);
        self.index();
        // Keys are worth an immediate write: a restart must not lose a join.
        self.flush();
    }

    /// Write changed sessions and counters; false (logged) when they could not be
    /// written (they stay to be written by the next flush).
    pub fn flush(&mut self) -> bool {
        match self.store.flush(&self.sessions) {
            Ok(_) => true,
            Err(e) => {
                tracing::error!("session store: cannot write sessions: {e:#}");
                false
            }
        }
    }

    /// Whether counters wait to be written.
    pub fn is_dirty(&self) -> bool {
        self.store.is_dirty()
    }
}

/// Run the device's codec over a verified uplink and make the reading.
#[allow(clippy::too_many_arguments)]
fn decode_reading(
    gateway_id: &str,
    device: &Device,
    codecs: &mut Codecs,
    no_variables: &BTreeMap<String, String>,
    frame: &UplinkFrame,
    seq: u64,
    dev_addr: DevAddr,
    up: &security::VerifiedUplink,
    f_port: u8,
) -> (Reading, Option<&'static str>) {
    let variables = if device.variables.is_empty() { no_variables } else { &device.variables };
    let input = UplinkInput {
        bytes: &up.payload,
        f_port,
        recv_time: frame.received_at,
        variables,
        device: &device.name,
    };
    let mut failure = None;
    let (codec, object, warnings, errors) = match codecs.0.get_mut(&device.codec) {
        Some(codec) => {
            let name = codec.name().to_string();
            match codec.decode(&input) {
                Ok(d) => (name, d.data, d.warnings, d.errors),
                Err(e) => {
                    failure = Some(e.label());
                    let errors = match e {
                        // The codec's own words, as it returned them.
                        berrygw_codecs::DecodeError::CodecErrors(errors) => errors,
                        e => vec![e.to_string()],
                    };
                    (name, serde_json::Value::Null, Vec::new(), errors)
                }
            }
        }
        None => {
            failure = Some("not_loaded");
            (codec_label(&device.codec), serde_json::Value::Null, Vec::new(), vec!["codec not loaded".into()])
        }
    };
    let reading = Reading {
        gateway_id: gateway_id.to_string(),
        seq,
        device_name: device.name.clone(),
        dev_eui: device.dev_eui,
        dev_addr,
        tags: device.tags.clone(),
        f_port,
        f_cnt: up.fcnt,
        confirmed: up.confirmed,
        received_at: rfc3339(frame.received_at),
        received_at_ms: unix_ms(frame.received_at),
        rx: RxInfo::of(frame),
        codec,
        object,
        payload_hex: hex::encode(&up.payload),
        warnings,
        errors,
    };
    (reading, failure)
}

fn codec_label(c: &CodecRef) -> String {
    match c {
        CodecRef::CayenneLpp => "cayenne_lpp".into(),
        CodecRef::Hex => "hex".into(),
        CodecRef::Js(p) => p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
    }
}

/// Codec limits from the `[decode]` settings (`berrygw decode` and the daemon alike).
pub fn codec_limits(time_limit_ms: u64, memory_limit_kib: u64) -> Limits {
    Limits {
        time: Duration::from_millis(time_limit_ms),
        memory_bytes: usize::try_from(memory_limit_kib.saturating_mul(1024)).unwrap_or(usize::MAX),
        ..Limits::default()
    }
}
