//! The MQTT sinks (ChirpStack network server, app data platform): one
//! connection to the broker at a time, fed from the sink's journal. Records are published at QoS 1 in
//! journal order and acknowledged to the journal only once the broker's
//! PUBACK for them (and for every older one) has arrived. The connection
//! (`conn.rs`, driven by this task; PUBACKs read late at field rates) keeps
//! nothing but packet ids: on any connection error it is dropped whole and the
//! next connection starts again from the journal's ack point.
//!
//! Also here: the retained state message with its offline last will, and
//! what comes back: ChirpStack's `command/down` downlinks go to the radio
//! (each answered on `event/ack`); the app sink's signed commands and session
//! keys go through the actuation engine's door (`actuation::gate`), which checks
//! their signature before anything is stored. `Protocol` is all that differs
//! between the two.

mod config;
mod conn;
#[cfg(test)]
mod tests;
mod window;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use berrygw_core::LogLimiter;
use berrygw_lora::{TxAck, TxStatus};
use rumqttc::{LastWill, Packet, QoS};
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
use conn::{Broken, Conn};
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
        counters.acks_read_late.store(false, Ordering::Relaxed);
        if reconnect.after(ended, &mut shutdown).await.is_break() {
            return;
        }
    }
}

/// Whether anything answered before the session failed: a broker that cannot be reached,
/// does not answer or drops the connection is tried again soon; one that refused us (or a
/// TLS handshake that failed) backs off.
fn failure_kind(e: &anyhow::Error) -> Failure {
    if e.chain().any(|c| c.downcast_ref::<Broken>().is_some()) {
        Failure::Unreachable
    } else {
        Failure::Refused
    }
}

/// The largest packet taken from the broker: a configuration bundle may be megabytes;
/// nothing else that comes in is more than 8 KiB.
fn max_incoming(s: &MqttSinkSettings) -> usize {
    match s.protocol {
        Protocol::App { accept_bundles: true, .. } => berrygw_proto::bundle::MAX_BUNDLE_BYTES + 1024,
        _ => 256 * 1024,
    }
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
    // A sink that takes commands keeps its session, so that commands published while
    // the gateway was away are delivered when it is back (and refused there if stale).
    let clean_session = !matches!(s.protocol, Protocol::App { accept_commands: true, .. });
    let will = LastWill::new(
        s.protocol.state_topic(),
        s.protocol.state_message(&s.gateway_id, false),
        QoS::AtLeastOnce,
        true,
    );
    let keep_alive = s.keep_alive.max(Duration::from_secs(5));
    let mut conn =
        Conn::open(s, keep_alive, clean_session, will, max_incoming(s), Duration::from_secs(15)).await?;
    counters.set_connected(true);
    journal.far_side(true);
    info!(server = %s.server, "{name} sink: connected");

    let mut flight = PubackWindow::default();
    send(
        &mut conn,
        &mut flight,
        &s.protocol.state_topic(),
        &s.protocol.state_message(&s.gateway_id, true),
        true,
    )?;
    for (topic, payload) in s.protocol.announcements(&s.gateway_id) {
        send(&mut conn, &mut flight, &topic, &payload, true)?;
    }
    if let (SinkInbound::App { health: Some(rx), .. }, Protocol::App { topics, .. }) =
        (&mut *inbound, &s.protocol)
    {
        if let Some(record) = rx.borrow_and_update().clone() {
            send(&mut conn, &mut flight, &topics.health(), &record, true)?;
        }
    }
    let subscriptions = s.protocol.subscriptions();
    let mut subscribing = match subscriptions.is_empty() {
        true => None,
        false => Some(conn.subscribe(&subscriptions)?),
    };

    let mut acked = journal.watch().borrow().acked;
    flight.resume_after(acked);
    let mut downlink_items: HashMap<u32, AckShape> = HashMap::new();
    let mut reader = ReadAhead::new(journal, acked);
    let mut pacer = Pacer::new(s.pace, s.protocol.sender_of());

    // Acknowledgements read late are read before the journal's commit window would write
    // their records; the keep-alive tick pings, and finds a broker that stopped answering.
    let ack_wait = journal.commit_interval() * 3 / 4;
    let mut pace = Spacing::default();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + keep_alive, keep_alive);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tick_due = false;
    let mut ping_out = false;
    // A new timer whenever the deadline moves: tokio keeps a timer reset to later in its
    // old slot and wakes there for nothing.
    let mut collect: Option<(tokio::time::Instant, Pin<Box<tokio::time::Sleep>>)> = None;
    let mut collect_due = false;

    loop {
        // What the broker sent while the sink was awake for something else: read before
        // publishing new records, at the deadline and at the keep-alive tick.
        let due = std::mem::take(&mut collect_due) || tick_due;
        if ping_out || (flight.in_flight() > 0 && (due || !reader.records.is_empty())) {
            conn.collect()?;
        }
        while let Some(packet) = conn.next_packet()? {
            match packet {
                Packet::PubAck(ack) => {
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
                Packet::Publish(p) => {
                    if let Some(refused) =
                        incoming(s, counters, inbound, &mut downlink_items, &p.topic, &p.payload)
                    {
                        answer_downlink(s, &mut conn, &mut flight, &mut downlink_items, &refused)?;
                    }
                }
                // Info: from here on the broker delivers what is published to us (commands,
                // downlinks); tests and operators wait for this line, not for "connected".
                Packet::SubAck(ack) if Some(ack.pkid) == subscribing => {
                    info!(codes = ?ack.return_codes, "{name} sink: subscribed");
                    subscribing = None;
                }
                Packet::PingResp => ping_out = false,
                _ => {}
            }
        }
        if std::mem::take(&mut tick_due) {
            if ping_out {
                return Err(Broken(format!(
                    "no PINGRESP from {} within {} s",
                    s.server,
                    keep_alive.as_secs()
                ))
                .into());
            }
            conn.ping();
            ping_out = true;
        }

        let mut wake = None;
        while flight.waiting() < window {
            pacer.fill(&mut reader.records);
            let now = tokio::time::Instant::now();
            match pacer.next(now, berrygw_core::unix_ms(std::time::SystemTime::now())) {
                Next::Ready(i) => {
                    if let Some(r) = pacer.take(i, now) {
                        publish_record(s, &mut conn, counters, &mut flight, warn, r);
                        pace.publish(now.into_std());
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

        // Read late once subscribed and while records come closer together than half the
        // wait (each publish then reads the one before's PUBACK); otherwise as they come: a
        // timer per record would cost more wake-ups than the PUBACK (tokio's wheel wakes on
        // the way to a timer hundreds of milliseconds out). A record unacknowledged at its
        // deadline (a slow broker) has its acknowledgements read as they come.
        let deadline = flight.oldest_sent_at().map(|at| tokio::time::Instant::from_std(at + ack_wait));
        let overdue = deadline.is_some_and(|at| at <= tokio::time::Instant::now());
        conn.read_late(subscribing.is_none() && !overdue && pace.close(ack_wait / 2));
        counters.acks_read_late.store(conn.reads_late(), Ordering::Relaxed);
        let deadline = deadline.filter(|_| conn.reads_late());
        if deadline != collect.as_ref().map(|(at, _)| *at) {
            collect = deadline.map(|at| (at, Box::pin(tokio::time::sleep_until(at))));
        }
        if conn.wants_flush() {
            tokio::time::timeout(keep_alive, conn.flush())
                .await
                .map_err(|_| Broken(format!("{} took nothing for {} s", s.server, keep_alive.as_secs())))??;
        }

        tokio::select! {
            ready = reader.ready() => ready?,
            () = tokio::time::sleep_until(wake.unwrap_or_else(tokio::time::Instant::now)), if wake.is_some() => {}
            () = async {
                match collect.as_mut() {
                    Some((_, timer)) => timer.as_mut().await,
                    None => std::future::pending().await,
                }
            } => {
                collect = None;
                collect_due = true;
            }
            read = conn.readable() => read?,
            _ = tick.tick() => tick_due = true,
            out = inbound.next_out() => match out {
                Besides::TxAck(ack) => {
                    counters.tx_acks.fetch_add(1, Ordering::Relaxed);
                    answer_downlink(s, &mut conn, &mut flight, &mut downlink_items, &ack)?;
                }
                Besides::Health(record) => {
                    if let Protocol::App { topics, .. } = &s.protocol {
                        send(&mut conn, &mut flight, &topics.health(), &record, true)?;
                    }
                }
            },
            _ = shutdown.changed() => {
                drain_before_shutdown(s, &mut conn, journal, &mut flight, &mut acked).await;
                return Ok(Stopped);
            }
        }
    }
}

/// How far apart records are published: a moving average of the gaps, so that one long
/// gap in busy traffic (or one short one in quiet traffic) does not flip the reading mode.
#[derive(Default)]
struct Spacing {
    last: Option<std::time::Instant>,
    /// Average gap, in microseconds; `None` until two records were published.
    gap_us: Option<u64>,
}

impl Spacing {
    fn publish(&mut self, now: std::time::Instant) {
        if let Some(last) = self.last.replace(now) {
            let gap = u64::try_from(now.saturating_duration_since(last).as_micros()).unwrap_or(u64::MAX);
            self.gap_us = Some(match self.gap_us {
                None => gap,
                Some(avg) => avg - avg / 8 + gap / 8,
            });
        }
    }

    /// Whether records come, on average, at most `gap` apart, and the last one came within
    /// four times that (traffic that stopped is not close).
    fn close(&self, gap: Duration) -> bool {
        let gap_us = u64::try_from(gap.as_micros()).unwrap_or(u64::MAX);
        match (self.gap_us, self.last) {
            (Some(avg), Some(last)) => avg <= gap_us && last.elapsed() <= gap * 4,
            _ => false,
        }
    }
}

/// Publish at QoS 1 something that is not a journal record (state, identity, health,
/// downlink answers).
fn send(
    conn: &mut Conn,
    flight: &mut PubackWindow,
    topic: &str,
    payload: &[u8],
    retain: bool,
) -> anyhow::Result<()> {
    let pkid = conn
        .publish(topic, payload, QoS::AtLeastOnce, retain)
        .with_context(|| format!("publishing on {topic}"))?;
    flight.sent(pkid, None);
    Ok(())
}

/// Answer a downlink on `event/ack` (ChirpStack) and forget it: the radio's
/// `TxAck`, or the sink's own refusal when the radio could not take it.
fn answer_downlink(
    s: &MqttSinkSettings,
    conn: &mut Conn,
    flight: &mut PubackWindow,
    downlink_items: &mut HashMap<u32, AckShape>,
    ack: &TxAck,
) -> anyhow::Result<()> {
    let shape = downlink_items.remove(&ack.downlink_id).unwrap_or(AckShape::ONE);
    if let Protocol::Chirpstack { topics, format } = &s.protocol {
        let payload = chirpstack::tx_ack_message(&s.gateway_id, ack, shape, *format);
        send(conn, flight, &topics.event("ack"), &payload, false)?;
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

/// Publish one journal record at QoS 1, or set it aside if it cannot be encoded or sent.
fn publish_record(
    s: &MqttSinkSettings,
    conn: &mut Conn,
    counters: &SinkCounters,
    flight: &mut PubackWindow,
    warn: &mut LogLimiter,
    r: Record,
) {
    let published = s.protocol.publication(&r).and_then(|(topic, payload, retain)| {
        conn.publish(&topic, &payload, QoS::AtLeastOnce, retain).map_err(|e| BadRecord::new("too large", e))
    });
    match published {
        Ok(pkid) => flight.sent(pkid, Some(r.seq.0)),
        Err(bad) => {
            set_aside(s.name, r.seq, &bad, counters, warn);
            flight.skipped(r.seq);
        }
    }
}

/// On shutdown: give in-flight publishes a moment to be acknowledged, then say goodbye.
async fn drain_before_shutdown(
    s: &MqttSinkSettings,
    conn: &mut Conn,
    journal: &Journal,
    flight: &mut PubackWindow,
    acked: &mut Seq,
) {
    let _ = conn.publish(
        &s.protocol.state_topic(),
        &s.protocol.state_message(&s.gateway_id, false),
        QoS::AtMostOnce,
        true,
    );
    conn.read_late(false);
    let draining = async {
        loop {
            conn.flush().await?;
            conn.collect()?;
            while let Some(packet) = conn.next_packet()? {
                if let Packet::PubAck(a) = packet {
                    if let Some(Acked { up_to, .. }) = flight.acked(a.pkid) {
                        if up_to > *acked {
                            *acked = up_to;
                            journal.ack(up_to);
                        }
                    }
                }
            }
            if flight.waiting() == 0 {
                return anyhow::Ok(());
            }
            conn.readable().await?;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), draining).await;
    conn.disconnect();
    let _ = tokio::time::timeout(Duration::from_millis(500), conn.flush()).await;
}
