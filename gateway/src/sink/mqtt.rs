//! The MQTT sinks (ChirpStack network server, app data platform): one
//! connection to the broker at a time, fed from the sink's journal. Records are published at QoS 1 in
//! journal order and acknowledged to the journal only once the broker's
//! PUBACK for them (and for every older one) has arrived. The MQTT client's
//! own queue is disposable: on any connection error the client is dropped
//! whole and the next connection starts again from the journal's ack point.
//!
//! Also here: the retained state message with its offline last will, and
//! what comes back: ChirpStack's `command/down` downlinks go to the radio
//! (each answered on `event/ack`); the app sink's signed commands and session
//! keys go through the actuation engine's door (`actuation::gate`), which checks
//! their signature before anything is stored. `Protocol` is all that differs
//! between the two.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use berrygw_core::LogLimiter;
use berrygw_lora::{TxAck, TxStatus};
use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS,
    TlsConfiguration, Transport,
};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::chirpstack::{self, AckShape, PayloadFormat, RecordKind, Topics};
use super::pace::{ack_point, Next, PaceSettings, Pacer, Sender};
use super::read_ahead::{set_aside, Backoff, BadRecord, Failure, ReadAhead};
use super::{SinkCounters, SinkRadioIo};
use crate::actuation::engine::Actuation;
use crate::actuation::gate::Arrival;
use crate::events::{self, AppTopics};
use crate::journal::{Journal, Record, Seq};
use serde::{Deserialize, Deserializer};
use std::fmt;
use std::net::IpAddr;

/// An MQTT broker address with its transport.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl BrokerUrl {
    /// Whether the host is this machine (plaintext is acceptable there).
    pub fn is_loopback(&self) -> bool {
        if self.host.eq_ignore_ascii_case("localhost") {
            return true;
        }
        self.host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        write!(f, "{scheme}://{}:{}", self.host, self.port)
    }
}

impl std::str::FromStr for BrokerUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| format!("`{s}` has no scheme; write mqtts://host:port or mqtt://host:port"))?;
        let (tls, default_port) = match scheme {
            "mqtts" | "ssl" | "tls" => (true, 8883),
            "mqtt" | "tcp" => (false, 1883),
            other => return Err(format!("unknown scheme `{other}`; use mqtts:// or mqtt://")),
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(':') && !p.contains(']') => {
                let port = p.parse::<u16>().map_err(|_| format!("bad port `{p}` in `{s}`"))?;
                (h, port)
            }
            _ => (rest, default_port),
        };
        if host.is_empty() || host.contains('/') {
            return Err(format!("bad host in `{s}`"));
        }
        Ok(BrokerUrl { tls, host: host.to_string(), port })
    }
}

impl<'de> Deserialize<'de> for BrokerUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Everything a sink needs, resolved from configuration.
pub struct MqttSinkSettings {
    /// `chirpstack` or `app`, in logs.
    pub name: &'static str,
    pub protocol: Protocol,
    pub server: BrokerUrl,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub allow_plaintext: bool,
    pub client_id: String,
    pub credentials: Option<(String, String)>,
    pub gateway_id: String,
    pub keep_alive: Duration,
    pub max_inflight: u16,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// How fast a backlog leaves (ChirpStack: per device, so that the server takes all of it).
    pub pace: PaceSettings,
}

/// What a sink speaks on its connection.
pub enum Protocol {
    /// ChirpStack v4 gateway topics; records are `gw` messages; downlinks come back.
    Chirpstack { topics: Topics, format: PayloadFormat },
    /// The data platform; records carry their topic and JSON; signed session keys and
    /// signed commands may come back.
    App { topics: AppTopics, accept_sessions: bool, accept_commands: bool },
}

impl Protocol {
    fn state_topic(&self) -> String {
        match self {
            Protocol::Chirpstack { topics, .. } => topics.conn_state(),
            Protocol::App { topics, .. } => topics.state(),
        }
    }

    fn state_message(&self, gateway_id: &str, online: bool) -> Vec<u8> {
        match self {
            Protocol::Chirpstack { format, .. } => chirpstack::conn_state(gateway_id, online, *format),
            Protocol::App { .. } => events::state_message(gateway_id, online),
        }
    }

    fn subscriptions(&self) -> Vec<String> {
        match self {
            Protocol::Chirpstack { topics, .. } => vec![topics.command_down()],
            Protocol::App { topics, accept_sessions, accept_commands } => {
                let mut subs = Vec::new();
                if *accept_sessions {
                    subs.push(topics.session_set());
                }
                if *accept_commands {
                    subs.push(topics.command());
                }
                subs
            }
        }
    }

    /// Topic and wire payload of a journal record.
    pub fn publication(&self, r: &Record) -> Result<(String, Vec<u8>), BadRecord> {
        match self {
            Protocol::Chirpstack { topics, format } => {
                let kind = RecordKind::from_u8(r.kind).ok_or_else(|| {
                    BadRecord::new("unknown kind", format_args!("unknown record kind {}", r.kind))
                })?;
                let payload = chirpstack::wire_payload(kind, &r.payload, *format)
                    .map_err(|e| BadRecord::new("undecodable", e))?;
                Ok((topics.event(kind.event()), payload))
            }
            Protocol::App { .. } => {
                let (topic, body) = events::open_record(r.kind, &r.payload)
                    .map_err(|e| BadRecord::new("malformed app record", e))?;
                Ok((topic.to_string(), body.to_vec()))
            }
        }
    }

    /// The pacing key of a record: uplinks to a network server are paced per device.
    fn sender_of(&self) -> fn(&Record) -> Option<Sender> {
        match self {
            Protocol::Chirpstack { .. } => chirpstack::uplink_sender,
            Protocol::App { .. } => |_| None,
        }
    }
}

/// What comes back over a sink's connection and where it goes.
pub enum SinkInbound {
    /// Downlinks to the radio and the radio's answers (ChirpStack, Semtech UDP).
    Radio(SinkRadioIo),
    /// What the app sink hears: signed commands and session keys, offered to the
    /// actuation engine's door as received (it checks them); `None` when nobody takes them.
    App { actuation: Option<Actuation> },
}

impl SinkInbound {
    async fn tx_ack(&mut self) -> Option<TxAck> {
        match self {
            SinkInbound::Radio(radio) => radio.tx_acks.recv().await,
            SinkInbound::App { .. } => std::future::pending().await,
        }
    }
}

/// How a connection ended when it did not fail.
enum SessionEnd {
    Shutdown,
}

/// The sink task: connect, drain, reconnect with backoff, until shutdown.
pub async fn run(
    settings: MqttSinkSettings,
    journal: Journal,
    counters: Arc<SinkCounters>,
    mut inbound: SinkInbound,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new(settings.reconnect_min, settings.reconnect_max);
    let mut warn = LogLimiter::default();
    loop {
        let started = Instant::now();
        match session(&settings, &journal, &counters, &mut inbound, &mut shutdown, &mut warn).await {
            Ok(SessionEnd::Shutdown) => return,
            Err(e) => {
                counters.connected.store(false, Ordering::Relaxed);
                // Nobody acknowledges now: the journal may take its longer commit window.
                journal.far_side(false);
                counters.reconnects.fetch_add(1, Ordering::Relaxed);
                let kind = failure_kind(&e);
                let delay = backoff.after_failure(started.elapsed(), kind);
                // While nothing answers, a try every second: one line per WARN_EVERY, not per try.
                let held = if kind == Failure::Unreachable { warn.allow("unreachable") } else { Some(0) };
                if let Some(held) = held {
                    warn!(
                        server = %settings.server,
                        "{} sink: {}; reconnecting in {:.1} s ({held} more failures like it since the last warning)",
                        settings.name,
                        error_chain(&e),
                        delay.as_secs_f32()
                    );
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    }
}

/// Whether anything answered before the session failed: a broker that is down is tried
/// again soon; one that refused us, or a session that broke, backs off.
fn failure_kind(e: &anyhow::Error) -> Failure {
    if e.downcast_ref::<Unanswered>().is_some() {
        return Failure::Unreachable;
    }
    match e.chain().find_map(|c| c.downcast_ref::<rumqttc::ConnectionError>()) {
        Some(rumqttc::ConnectionError::Io(_) | rumqttc::ConnectionError::NetworkTimeout) => {
            Failure::Unreachable
        }
        _ => Failure::Refused,
    }
}

/// A connection attempt nothing answered (no CONNACK in time, or no TCP connection at all).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Unanswered(String);

/// The error and its causes on one line, without the repeats some libraries add
/// (rumqttc's I/O errors print their source twice).
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain().map(|c| c.to_string()) {
        if !out.contains(&cause) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&cause);
        }
    }
    out
}

fn options(s: &MqttSinkSettings) -> MqttOptions {
    let mut o = MqttOptions::new(s.client_id.clone(), s.server.host.clone(), s.server.port);
    o.set_keep_alive(s.keep_alive.max(Duration::from_secs(5)));
    // A sink that takes commands keeps its session, so that commands published while
    // the gateway was away are delivered when it is back (and refused there if stale).
    o.set_clean_session(!matches!(s.protocol, Protocol::App { accept_commands: true, .. }));
    // Headroom over our window so state, ack and subscribe packets never collide.
    o.set_inflight(s.max_inflight.saturating_add(16));
    o.set_max_packet_size(256 * 1024, 256 * 1024);
    o.set_last_will(LastWill::new(
        s.protocol.state_topic(),
        s.protocol.state_message(&s.gateway_id, false),
        QoS::AtLeastOnce,
        true,
    ));
    if let Some((user, pass)) = &s.credentials {
        o.set_credentials(user.clone(), pass.clone());
    }
    if let Some(tls) = &s.tls {
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls.clone())));
    }
    o
}

/// Publishes of this connection that wait for their PUBACK.
#[derive(Default)]
struct InFlight {
    /// Journal seqs (or None for state/ack messages) in publish order, awaiting a packet id.
    unassigned: VecDeque<Option<u64>>,
    by_pkid: HashMap<u16, Option<u64>>,
    /// Journal seqs awaiting PUBACK, with when they were published.
    seqs: BTreeMap<u64, Instant>,
    highest_sent: u64,
}

/// A PUBACK that acknowledged a journal record.
#[derive(Debug, PartialEq)]
struct Acked {
    /// Everything up to here is acknowledged (the journal's new ack point if it moved).
    up_to: Seq,
    /// Publish to PUBACK of this record.
    latency: Duration,
}

impl InFlight {
    /// The oldest journal record awaiting its PUBACK.
    fn oldest(&self) -> Option<Seq> {
        self.seqs.first_key_value().map(|(seq, _)| Seq(*seq))
    }

    fn record_published(&mut self, tag: Option<u64>) {
        self.unassigned.push_back(tag);
        if let Some(seq) = tag {
            self.seqs.insert(seq, Instant::now());
            self.highest_sent = self.highest_sent.max(seq);
        }
    }

    fn assign(&mut self, pkid: u16) {
        if let Some(tag) = self.unassigned.pop_front() {
            self.by_pkid.insert(pkid, tag);
        }
    }

    /// PUBACK for `pkid`: if it acknowledged a journal record, the seq up to which
    /// everything is acknowledged and how long this one took.
    fn acked(&mut self, pkid: u16) -> Option<Acked> {
        let seq = self.by_pkid.remove(&pkid)??;
        let latency = self.seqs.remove(&seq).map(|at| at.elapsed()).unwrap_or_default();
        let up_to = match self.seqs.first_key_value() {
            Some((oldest, _)) => oldest - 1,
            None => self.highest_sent,
        };
        Some(Acked { up_to: Seq(up_to), latency })
    }
}

async fn session(
    s: &MqttSinkSettings,
    journal: &Journal,
    counters: &SinkCounters,
    inbound: &mut SinkInbound,
    shutdown: &mut watch::Receiver<bool>,
    warn: &mut LogLimiter,
) -> anyhow::Result<SessionEnd> {
    let name = s.name;
    if !s.server.tls && s.allow_plaintext && !s.server.is_loopback() {
        warn!(server = %s.server, "{name} sink: connecting WITHOUT TLS (allow_plaintext = true): data and credentials cross the network in clear");
    }
    let window = usize::from(s.max_inflight);
    let (client, mut eventloop) = AsyncClient::new(options(s), window + 64);
    connect(&mut eventloop, s).await?;
    counters.connected.store(true, Ordering::Relaxed);
    journal.far_side(true);
    info!(server = %s.server, "{name} sink: connected");

    let mut flight = InFlight::default();
    client
        .try_publish(
            s.protocol.state_topic(),
            QoS::AtLeastOnce,
            true,
            s.protocol.state_message(&s.gateway_id, true),
        )
        .context("queueing the state message")?;
    flight.record_published(None);
    for topic in s.protocol.subscriptions() {
        client.try_subscribe(topic, QoS::AtLeastOnce).context("queueing subscribe")?;
    }

    let mut acked = journal.watch().borrow().acked;
    flight.highest_sent = acked.0;
    let mut downlink_items: HashMap<u32, AckShape> = HashMap::new();
    let mut reader = ReadAhead::new(journal, acked);
    let mut pacer = Pacer::new(s.pace, s.protocol.sender_of());

    loop {
        let mut wake = None;
        while flight.seqs.len() < window {
            pacer.fill(&mut reader.records);
            let now = tokio::time::Instant::now();
            match pacer.next(now, berrygw_core::unix_ms(std::time::SystemTime::now())) {
                Next::Ready(i) => {
                    if let Some(r) = pacer.take(i, now) {
                        publish_record(s, &client, counters, &mut flight, warn, r)?;
                    }
                }
                Next::Wait(at) => {
                    wake = Some(at);
                    break;
                }
                Next::Empty => break,
            }
        }
        // Records skipped as unpublishable are acknowledged once nothing older is in flight or held.
        let point = ack_point(Seq(flight.highest_sent), flight.oldest(), pacer.unsent(&reader.records));
        if point > acked {
            acked = point;
            journal.ack(acked);
        }
        reader.refill();

        tokio::select! {
            ready = reader.ready() => ready?,
            () = tokio::time::sleep_until(wake.unwrap_or_else(tokio::time::Instant::now)), if wake.is_some() => {}
            event = eventloop.poll() => match event.context("connection")? {
                Event::Outgoing(Outgoing::Publish(pkid)) => flight.assign(pkid),
                Event::Incoming(Packet::PubAck(ack)) => {
                    if let Some(Acked { up_to, latency }) = flight.acked(ack.pkid) {
                        counters.forwarded.fetch_add(1, Ordering::Relaxed);
                        counters.publish_ack_latency.observe(latency.as_secs_f64());
                        let up_to = ack_point(up_to, None, pacer.unsent(&reader.records));
                        if up_to > acked {
                            acked = up_to;
                            journal.ack(acked);
                        }
                    }
                }
                Event::Incoming(Packet::Publish(p)) => {
                    if let Some(refused) = incoming(s, counters, inbound, &mut downlink_items, &p.topic, &p.payload) {
                        answer_downlink(s, &client, &mut flight, &mut downlink_items, &refused)?;
                    }
                }
                // Info: from here on the broker delivers what is published to us (commands,
                // downlinks); tests and operators wait for this line, not for "connected".
                Event::Incoming(Packet::SubAck(ack)) => info!(codes = ?ack.return_codes, "{name} sink: subscribed"),
                _ => {}
            },
            Some(ack) = inbound.tx_ack() => {
                counters.tx_acks.fetch_add(1, Ordering::Relaxed);
                answer_downlink(s, &client, &mut flight, &mut downlink_items, &ack)?;
            }
            _ = shutdown.changed() => {
                drain_before_shutdown(s, &client, &mut eventloop, journal, &mut flight, &mut acked).await;
                return Ok(SessionEnd::Shutdown);
            }
        }
    }
}

/// Answer a downlink on `event/ack` (ChirpStack) and forget it: the radio's
/// `TxAck`, or the sink's own refusal when the radio could not take it.
fn answer_downlink(
    s: &MqttSinkSettings,
    client: &AsyncClient,
    flight: &mut InFlight,
    downlink_items: &mut HashMap<u32, AckShape>,
    ack: &TxAck,
) -> anyhow::Result<()> {
    let shape = downlink_items.remove(&ack.downlink_id).unwrap_or(AckShape::ONE);
    if let Protocol::Chirpstack { topics, format } = &s.protocol {
        let payload = chirpstack::tx_ack_message(&s.gateway_id, ack, shape, *format);
        client.try_publish(topics.event("ack"), QoS::AtLeastOnce, false, payload).context("queueing ack")?;
        flight.record_published(None);
    }
    Ok(())
}

/// A message from the far side: a downlink for the radio, or a signed command or
/// session message for the actuation engine's door. Anything malformed is counted and
/// logged, never fatal. A downlink the radio cannot take comes back as its answer
/// (`QueueFull`, `InternalError`), to be published on `event/ack` like the radio's own.
fn incoming(
    s: &MqttSinkSettings,
    counters: &SinkCounters,
    inbound: &SinkInbound,
    downlink_items: &mut HashMap<u32, AckShape>,
    topic: &str,
    payload: &[u8],
) -> Option<TxAck> {
    let name = s.name;
    match (&s.protocol, inbound) {
        (Protocol::Chirpstack { format, .. }, SinkInbound::Radio(radio)) => {
            match chirpstack::decode_downlink(payload, *format) {
                Ok(cmd) => {
                    counters.downlinks_received.fetch_add(1, Ordering::Relaxed);
                    let downlink_id = cmd.frame.downlink_id;
                    downlink_items.insert(downlink_id, cmd.shape);
                    if let Err(e) = radio.downlinks.try_send(cmd.frame) {
                        let status = match e {
                            mpsc::error::TrySendError::Full(_) => TxStatus::QueueFull,
                            mpsc::error::TrySendError::Closed(_) => TxStatus::InternalError,
                        };
                        warn!(downlink_id, ?status, "{name} sink: the radio cannot take the downlink");
                        return Some(TxAck { downlink_id, status });
                    }
                }
                Err(e) => {
                    counters.bad_commands.fetch_add(1, Ordering::Relaxed);
                    warn!(%topic, "{name} sink: rejected command: {e}");
                    // Refused here (timing out of range, ...): answered like one the radio refused.
                    return e.refusal().map(|(ack, shape)| {
                        downlink_items.insert(ack.downlink_id, shape);
                        ack
                    });
                }
            }
        }
        // The door checks size, form and signature in memory before anything is copied or stored.
        (
            Protocol::App { topics, accept_commands: true, .. },
            SinkInbound::App { actuation: Some(actuation) },
        ) if topic == topics.command() => {
            actuation.offer(Arrival::Command, payload);
        }
        (
            Protocol::App { topics, accept_sessions: true, .. },
            SinkInbound::App { actuation: Some(actuation) },
        ) if topic == topics.session_set() => {
            actuation.offer(Arrival::Session, payload);
        }
        _ => {
            counters.bad_commands.fetch_add(1, Ordering::Relaxed);
            warn!(%topic, "{name} sink: unexpected message ignored");
        }
    }
    None
}

/// Publish one journal record at QoS 1, or set it aside if it cannot be encoded.
fn publish_record(
    s: &MqttSinkSettings,
    client: &AsyncClient,
    counters: &SinkCounters,
    flight: &mut InFlight,
    warn: &mut LogLimiter,
    r: Record,
) -> anyhow::Result<()> {
    match s.protocol.publication(&r) {
        Ok((topic, payload)) => {
            client.try_publish(topic, QoS::AtLeastOnce, false, payload).context("queueing publish")?;
            flight.record_published(Some(r.seq.0));
        }
        Err(bad) => {
            set_aside(s.name, r.seq, &bad, counters, warn);
            flight.highest_sent = flight.highest_sent.max(r.seq.0);
        }
    }
    Ok(())
}

/// Wait for the CONNACK; a refusal names its reason.
async fn connect(eventloop: &mut EventLoop, s: &MqttSinkSettings) -> anyhow::Result<()> {
    let wait = async {
        loop {
            match eventloop.poll().await.with_context(|| format!("connecting to {}", s.server))? {
                Event::Incoming(Packet::ConnAck(ack)) => {
                    return match ack.code {
                        ConnectReturnCode::Success => Ok(()),
                        code => Err(anyhow!("broker refused the connection: {code:?}")),
                    }
                }
                _ => continue,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(15), wait)
        .await
        .map_err(|_| anyhow::Error::new(Unanswered(format!("no CONNACK from {} within 15 s", s.server))))?
}

/// On shutdown: give in-flight publishes a moment to be acknowledged, then say goodbye.
async fn drain_before_shutdown(
    s: &MqttSinkSettings,
    client: &AsyncClient,
    eventloop: &mut EventLoop,
    journal: &Journal,
    flight: &mut InFlight,
    acked: &mut Seq,
) {
    let _ = client.try_publish(
        s.protocol.state_topic(),
        QoS::AtMostOnce,
        true,
        s.protocol.state_message(&s.gateway_id, false),
    );
    let deadline = tokio::time::sleep(Duration::from_secs(2));
    tokio::pin!(deadline);
    while !flight.seqs.is_empty() {
        tokio::select! {
            _ = &mut deadline => break,
            ev = eventloop.poll() => match ev {
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => flight.assign(pkid),
                Ok(Event::Incoming(Packet::PubAck(a))) => {
                    if let Some(Acked { up_to, .. }) = flight.acked(a.pkid) {
                        if up_to > *acked {
                            *acked = up_to;
                            journal.ack(up_to);
                        }
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_millis(500), eventloop.poll()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_chain_drops_repeated_causes() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused");
        let e = anyhow::Error::new(io).context("I/O: Connection refused").context("connecting to mqtt://x:1");
        assert_eq!(error_chain(&e), "connecting to mqtt://x:1: I/O: Connection refused");
    }

    fn chirpstack_settings() -> MqttSinkSettings {
        MqttSinkSettings {
            name: "chirpstack",
            protocol: Protocol::Chirpstack {
                topics: Topics::new("eu868", "0016c001ff10a235"),
                format: PayloadFormat::Protobuf,
            },
            server: "mqtt://127.0.0.1:1".parse().expect("url"),
            tls: None,
            allow_plaintext: true,
            client_id: "test".into(),
            credentials: None,
            gateway_id: "0016c001ff10a235".into(),
            keep_alive: Duration::from_secs(30),
            max_inflight: 8,
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(1),
            pace: PaceSettings::OFF,
        }
    }

    fn downlink_command(downlink_id: u32) -> Vec<u8> {
        use chirpstack_api::gw;
        use prost::Message;
        gw::DownlinkFrame {
            downlink_id,
            items: vec![gw::DownlinkFrameItem {
                phy_payload: vec![0x60, 1, 2],
                tx_info: Some(gw::DownlinkTxInfo {
                    frequency: 869_525_000,
                    power: 14,
                    modulation: Some(gw::Modulation {
                        parameters: Some(gw::modulation::Parameters::Lora(gw::LoraModulationInfo {
                            bandwidth: 125_000,
                            spreading_factor: 9,
                            code_rate: gw::CodeRate::Cr45.into(),
                            polarization_inversion: true,
                            ..Default::default()
                        })),
                    }),
                    timing: Some(gw::Timing {
                        parameters: Some(gw::timing::Parameters::Immediately(gw::ImmediatelyTimingInfo {})),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }
        .encode_to_vec()
    }

    #[tokio::test]
    async fn a_downlink_the_radio_cannot_take_is_answered_queue_full_and_forgotten() {
        let s = chirpstack_settings();
        let counters = SinkCounters::default();
        let (down_tx, mut down_rx) = mpsc::channel(1);
        let (_ack_tx, ack_rx) = mpsc::channel(1);
        let inbound = SinkInbound::Radio(SinkRadioIo { downlinks: down_tx, tx_acks: ack_rx });
        let mut items = HashMap::new();
        let topic = "eu868/gateway/0016c001ff10a235/command/down";

        let taken = incoming(&s, &counters, &inbound, &mut items, topic, &downlink_command(1));
        assert_eq!(taken, None, "the radio took the first downlink; its answer comes from the radio");
        let refused = incoming(&s, &counters, &inbound, &mut items, topic, &downlink_command(2))
            .expect("a downlink refused by a full radio queue is answered");
        assert_eq!(refused, TxAck { downlink_id: 2, status: TxStatus::QueueFull });

        // The answer goes out on event/ack and the downlink is forgotten.
        let (client, _eventloop) = AsyncClient::new(options(&s), 16);
        let mut flight = InFlight::default();
        answer_downlink(&s, &client, &mut flight, &mut items, &refused).expect("queued");
        assert_eq!(flight.unassigned.len(), 1, "the ack was published");
        assert!(!items.contains_key(&2), "no entry left behind for the refused downlink");
        assert!(items.contains_key(&1), "the accepted downlink waits for its TxAck");

        // A closed radio answers InternalError.
        drop(down_rx.recv().await);
        drop(down_rx);
        let closed = incoming(&s, &counters, &inbound, &mut items, topic, &downlink_command(3));
        assert_eq!(closed.map(|a| a.status), Some(TxStatus::InternalError));
    }

    #[test]
    fn ack_point_waits_for_the_oldest_publish() {
        let mut f = InFlight::default();
        f.record_published(None); // state/conn
        for seq in 1..=3 {
            f.record_published(Some(seq));
        }
        for pkid in 1..=4 {
            f.assign(pkid);
        }
        let mut up_to = |pkid| f.acked(pkid).map(|a| a.up_to);
        assert_eq!(up_to(1), None, "state message moves nothing");
        assert_eq!(up_to(3), Some(Seq(0)), "seq 2 acked but seq 1 still out");
        assert_eq!(up_to(2), Some(Seq(2)));
        assert_eq!(up_to(4), Some(Seq(3)));
        assert_eq!(up_to(4), None, "duplicate PUBACK ignored");
    }
}
