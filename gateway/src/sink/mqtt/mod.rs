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

mod config;
#[cfg(test)]
mod tests;
mod window;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use berrygw_core::LogLimiter;
use berrygw_lora::{TxAck, TxStatus};
use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS,
    TlsConfiguration, Transport,
};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::actuation::engine::Actuation;
use crate::actuation::gate::Arrival;
use crate::events::{self, AppTopics};
use crate::journal::{Journal, Record, Seq};
use crate::sink::chirpstack::{self, AckShape, PayloadFormat, RecordKind, Topics};
use crate::sink::pace::{ack_point, Next, Pacer, Sender};
use crate::sink::read_ahead::{set_aside, BadRecord, ReadAhead};
use crate::sink::reconnect::{Backoff, Failure, Reconnect, Sink, Stopped};
use crate::sink::{SinkCounters, SinkRadioIo};

use berrygw_proto::identity::Announcement;
use berrygw_proto::sealed::Recipient;

pub use config::{BrokerUrl, MqttSinkConfig, MqttSinkKind, MqttSinkSettings};
use window::{Acked, PubackWindow};

/// What a sink speaks on its connection.
pub enum Protocol {
    /// ChirpStack v4 gateway topics; records are `gw` messages; downlinks come back.
    Chirpstack { topics: Topics, format: PayloadFormat },
    /// The data platform; records carry their topic and JSON; signed session keys and
    /// signed commands may come back. `identity`: this gateway's public key, announced
    /// (retained) at every connection.
    App {
        topics: AppTopics,
        accept_sessions: bool,
        accept_commands: bool,
        /// Signed configuration bundles (`crate::bundle`), retained on `…/bundle`.
        accept_bundles: bool,
        identity: Option<Recipient>,
    },
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

    /// Retained messages published at every connection besides the state: the
    /// identity announcement of the app sink.
    fn announcements(&self, gateway_id: &str) -> Vec<(String, Vec<u8>)> {
        match self {
            Protocol::App { topics, identity: Some(key), .. } => {
                vec![(topics.identity(), Announcement::new(gateway_id, key).to_json())]
            }
            _ => Vec::new(),
        }
    }

    fn subscriptions(&self) -> Vec<String> {
        match self {
            Protocol::Chirpstack { topics, .. } => vec![topics.command_down()],
            Protocol::App { topics, accept_sessions, accept_commands, accept_bundles, .. } => {
                let mut subs = Vec::new();
                if *accept_bundles {
                    subs.push(topics.bundle());
                }
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

    /// Topic and wire payload of a journal record, and whether the broker keeps it.
    pub fn publication(&self, r: &Record) -> Result<(String, Vec<u8>, bool), BadRecord> {
        match self {
            Protocol::Chirpstack { topics, format } => {
                let kind = RecordKind::from_u8(r.kind).ok_or_else(|| {
                    BadRecord::new("unknown kind", format_args!("unknown record kind {}", r.kind))
                })?;
                let payload = chirpstack::wire_payload(kind, &r.payload, *format)
                    .map_err(|e| BadRecord::new("undecodable", e))?;
                Ok((topics.event(kind.event()), payload, false))
            }
            Protocol::App { .. } => {
                let (topic, body) = events::open_record(r.kind, &r.payload)
                    .map_err(|e| BadRecord::new("malformed app record", e))?;
                Ok((topic.to_string(), body.to_vec(), r.kind == events::RETAINED_RECORD_KIND))
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
    /// And what it says: the latest health record (`crate::health`), published retained
    /// at every connection and whenever it changes.
    /// And signed configuration bundles, handed to the bundle task as received (the latest
    /// only; it checks them).
    App {
        actuation: Option<Actuation>,
        health: Option<watch::Receiver<Option<Vec<u8>>>>,
        bundles: Option<watch::Sender<Option<Arc<Vec<u8>>>>>,
    },
}

/// Something to send that did not come from the journal.
enum Besides {
    /// The radio's answer to a downlink of this sink.
    TxAck(TxAck),
    /// A new health record of this gateway (app sink).
    Health(Vec<u8>),
}

impl SinkInbound {
    /// The next thing to send besides the journal's records: a TxAck (network server
    /// sinks), a health record (app sink). Never ready when there is none to come.
    async fn next_out(&mut self) -> Besides {
        match self {
            SinkInbound::Radio(radio) => match radio.tx_acks.recv().await {
                Some(ack) => Besides::TxAck(ack),
                None => std::future::pending().await,
            },
            SinkInbound::App { health: Some(rx), .. } => {
                if rx.changed().await.is_err() {
                    // The health task ended (shutdown): nothing more to publish.
                    std::future::pending::<()>().await;
                }
                let latest = rx.borrow_and_update().clone();
                match latest {
                    Some(record) => Besides::Health(record),
                    None => std::future::pending().await,
                }
            }
            SinkInbound::App { health: None, .. } => std::future::pending().await,
        }
    }
}

/// The sink task: connect, drain, reconnect with backoff, until shutdown.
pub async fn run(
    settings: MqttSinkSettings,
    journal: Journal,
    counters: Arc<SinkCounters>,
    mut inbound: SinkInbound,
    mut shutdown: watch::Receiver<bool>,
) {
    let sink = Sink { name: settings.name, server: &settings.server, counters: &counters, journal: &journal };
    let backoff = Backoff::new(settings.reconnect_min, settings.reconnect_max);
    let mut reconnect = Reconnect::new(sink, backoff, failure_kind);
    let mut warn = LogLimiter::default();
    loop {
        let ended = session(&settings, &journal, &counters, &mut inbound, &mut shutdown, &mut warn).await;
        if reconnect.after(ended, &mut shutdown).await.is_break() {
            return;
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

fn options(s: &MqttSinkSettings) -> MqttOptions {
    let mut o = MqttOptions::new(s.client_id.clone(), s.server.host.clone(), s.server.port);
    o.set_keep_alive(s.keep_alive.max(Duration::from_secs(5)));
    // A sink that takes commands keeps its session, so that commands published while
    // the gateway was away are delivered when it is back (and refused there if stale).
    o.set_clean_session(!matches!(s.protocol, Protocol::App { accept_commands: true, .. }));
    // Headroom over our window so state, ack and subscribe packets never collide.
    o.set_inflight(s.max_inflight.saturating_add(16));
    // A configuration bundle may be megabytes; nothing else that comes in is more than 8 KiB.
    let incoming = match s.protocol {
        Protocol::App { accept_bundles: true, .. } => berrygw_proto::bundle::MAX_BUNDLE_BYTES + 1024,
        _ => 256 * 1024,
    };
    o.set_max_packet_size(incoming, 256 * 1024);
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

async fn session(
    s: &MqttSinkSettings,
    journal: &Journal,
    counters: &SinkCounters,
    inbound: &mut SinkInbound,
    shutdown: &mut watch::Receiver<bool>,
    warn: &mut LogLimiter,
) -> anyhow::Result<Stopped> {
    let name = s.name;
    if !s.server.tls && s.allow_plaintext && !s.server.is_loopback() {
        warn!(server = %s.server, "{name} sink: connecting WITHOUT TLS (allow_plaintext = true): data and credentials cross the network in clear");
    }
    let window = usize::from(s.max_inflight);
    let (client, mut eventloop) = AsyncClient::new(options(s), window + 64);
    connect(&mut eventloop, s).await?;
    counters.set_connected(true);
    journal.far_side(true);
    info!(server = %s.server, "{name} sink: connected");

    let mut flight = PubackWindow::default();
    client
        .try_publish(
            s.protocol.state_topic(),
            QoS::AtLeastOnce,
            true,
            s.protocol.state_message(&s.gateway_id, true),
        )
        .context("queueing the state message")?;
    flight.record_published(None);
    for (topic, payload) in s.protocol.announcements(&s.gateway_id) {
        client.try_publish(topic, QoS::AtLeastOnce, true, payload).context("queueing an announcement")?;
        flight.record_published(None);
    }
    if let (SinkInbound::App { health: Some(rx), .. }, Protocol::App { topics, .. }) =
        (&mut *inbound, &s.protocol)
    {
        if let Some(record) = rx.borrow_and_update().clone() {
            client.try_publish(topics.health(), QoS::AtLeastOnce, true, record).context("queueing health")?;
            flight.record_published(None);
        }
    }
    for topic in s.protocol.subscriptions() {
        client.try_subscribe(topic, QoS::AtLeastOnce).context("queueing subscribe")?;
    }

    let mut acked = journal.watch().borrow().acked;
    flight.resume_after(acked);
    let mut downlink_items: HashMap<u32, AckShape> = HashMap::new();
    let mut reader = ReadAhead::new(journal, acked);
    let mut pacer = Pacer::new(s.pace, s.protocol.sender_of());

    loop {
        let mut wake = None;
        while flight.waiting() < window {
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
        let point = flight.ack_point(pacer.unsent(&reader.records));
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
            out = inbound.next_out() => match out {
                Besides::TxAck(ack) => {
                    counters.tx_acks.fetch_add(1, Ordering::Relaxed);
                    answer_downlink(s, &client, &mut flight, &mut downlink_items, &ack)?;
                }
                Besides::Health(record) => {
                    if let Protocol::App { topics, .. } = &s.protocol {
                        client.try_publish(topics.health(), QoS::AtLeastOnce, true, record).context("queueing health")?;
                        flight.record_published(None);
                    }
                }
            },
            _ = shutdown.changed() => {
                drain_before_shutdown(s, &client, &mut eventloop, journal, &mut flight, &mut acked).await;
                return Ok(Stopped);
            }
        }
    }
}

/// Answer a downlink on `event/ack` (ChirpStack) and forget it: the radio's
/// `TxAck`, or the sink's own refusal when the radio could not take it.
fn answer_downlink(
    s: &MqttSinkSettings,
    client: &AsyncClient,
    flight: &mut PubackWindow,
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
            SinkInbound::App { actuation: Some(actuation), .. },
        ) if topic == topics.command() => {
            actuation.offer(Arrival::Command, payload);
        }
        (
            Protocol::App { topics, accept_sessions: true, .. },
            SinkInbound::App { actuation: Some(actuation), .. },
        ) if topic == topics.session_set() => {
            actuation.offer(Arrival::Session, payload);
        }
        // Checked by the bundle task, in memory, before anything is written.
        (
            Protocol::App { topics, accept_bundles: true, .. },
            SinkInbound::App { bundles: Some(inbox), .. },
        ) if topic == topics.bundle() => {
            inbox.send_replace(Some(Arc::new(payload.to_vec())));
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
    flight: &mut PubackWindow,
    warn: &mut LogLimiter,
    r: Record,
) -> anyhow::Result<()> {
    match s.protocol.publication(&r) {
        Ok((topic, payload, retain)) => {
            client.try_publish(topic, QoS::AtLeastOnce, retain, payload).context("queueing publish")?;
            flight.record_published(Some(r.seq.0));
        }
        Err(bad) => {
            set_aside(s.name, r.seq, &bad, counters, warn);
            flight.skipped(r.seq);
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
    flight: &mut PubackWindow,
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
    while flight.waiting() > 0 {
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
