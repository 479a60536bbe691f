//! The Semtech UDP sink: berrygw as the packet forwarder of a remote network
//! server that speaks GWMP (Semtech's UDP protocol). Journal records go out as
//! PUSH_DATA (`rxpk` for uplinks, `stat` for gateway stats), several per
//! datagram, in journal order; a datagram without its PUSH_ACK is sent again
//! with growing delays, and records leave the journal only once the PUSH_ACK of
//! their datagram and of every older one has arrived. PULL_DATA keeps the
//! downlink path open; PULL_RESP downlinks go to the radio and the radio's
//! answer goes back as TX_ACK.
//!
//! The socket is disposable like the MQTT client's queue: on a socket error, or
//! when the server has answered nothing for `dead_after`, the sink drops it,
//! resolves the server name again and resumes from the journal's ack point.
//! The wire format is `berrygw_lora::gwmp::codec`, shared with the GWMP ingest.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use berrygw_core::LogLimiter;
use berrygw_lora::gwmp::codec::{
    self, Datagram, Packet, RxPk, Stat, TxPk, TxPkAck, PROTOCOL_V1, PROTOCOL_V2,
};
use berrygw_lora::{
    CodeRate, CrcStatus, Eui64, Frequency, Modulation, TxAck, TxStatus, TxTiming, UplinkFrame,
};
use chirpstack_api::gw;
use chirpstack_api::pbjson_types::Timestamp;
use prost::Message;
use serde::{Deserialize, Deserializer};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::chirpstack::{self, RecordKind};
use super::pace::{ack_point, Next, PaceSettings, Pacer};
use super::read_ahead::{set_aside, Backoff, BadRecord, Failure, ReadAhead};
use super::SinkCounters;
use super::SinkRadioIo;
use crate::journal::{Journal, Record, Seq};

/// A network server's UDP address as configured, `host:port`; the name is resolved
/// again at every reconnection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LnsAddress {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for LnsAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for LnsAddress {
    type Err = String;

    fn from_str(s: &str) -> Result<LnsAddress, String> {
        let (host, port) = s.rsplit_once(':').ok_or_else(|| {
            format!("`{s}` has no port; write host:port, e.g. eu1.cloud.thethings.network:1700")
        })?;
        let port =
            port.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| format!("bad port in `{s}`"))?;
        let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(v6) if v6.parse::<Ipv6Addr>().is_ok() => v6,
            Some(_) => return Err(format!("`{s}`: bad IPv6 address in brackets")),
            None if host.contains(':') => {
                return Err(format!("`{s}`: an IPv6 address goes in brackets, e.g. [2001:db8::1]:1700"))
            }
            None => host,
        };
        if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '/' || c == '[' || c == ']') {
            return Err(format!("bad host in `{s}`"));
        }
        Ok(LnsAddress { host: host.to_string(), port })
    }
}

impl<'de> Deserialize<'de> for LnsAddress {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// `[sinks.semtech_udp]`: GWMP to a network server.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SemtechUdpSinkConfig {
    /// Network server, `host:port` (usually port 1700).
    pub server: LnsAddress,
    /// Seconds between PULL_DATA keepalives (the downlink path through NAT).
    #[serde(default = "default_keepalive_secs")]
    pub keepalive_secs: u64,
    /// Wait for a PUSH_ACK before the first retransmission; doubles per retry.
    #[serde(default = "default_push_timeout_ms")]
    pub push_timeout_ms: u64,
    /// Longest wait between two retransmissions of a datagram.
    #[serde(default = "default_push_timeout_max_ms")]
    pub push_timeout_max_ms: u64,
    /// With no PUSH_ACK or PULL_ACK for this long, drop the socket, resolve the name again, start over.
    #[serde(default = "default_dead_after_secs")]
    pub dead_after_secs: u64,
    /// PUSH_DATA datagrams awaiting their PUSH_ACK at once. 1 keeps the network server's
    /// view in journal order even under loss (a server may drop a device's older frame
    /// that arrives after a newer one); more drains a backlog faster over a slow link.
    #[serde(default = "default_max_inflight")]
    pub max_inflight: u16,
    /// Upper bound of a PUSH_DATA datagram (a lone record may exceed it); keeps clear of IP fragmentation.
    #[serde(default = "default_max_datagram_bytes")]
    pub max_datagram_bytes: usize,
    /// Upper bound of `rxpk` objects in one PUSH_DATA.
    #[serde(default = "default_max_rxpk_per_datagram")]
    pub max_rxpk_per_datagram: usize,
    /// First delay before reconnecting after a failure; doubles up to `reconnect_max_ms`.
    #[serde(default = "default_reconnect_min_ms")]
    pub reconnect_min_ms: u64,
    #[serde(default = "default_reconnect_max_ms")]
    pub reconnect_max_ms: u64,
    /// Least time between two uplinks of one device when a backlog leaves (0: none); see `sink::pace`.
    #[serde(default = "default_replay_gap_ms")]
    pub replay_gap_ms: u64,
    /// Most uplinks per second when a backlog leaves (0: no limit).
    #[serde(default = "default_replay_rate")]
    pub replay_rate: u32,
}

fn default_replay_gap_ms() -> u64 {
    super::pace::DEFAULT_REPLAY_GAP_MS
}
fn default_replay_rate() -> u32 {
    super::pace::DEFAULT_REPLAY_RATE
}
fn default_keepalive_secs() -> u64 {
    10
}
fn default_push_timeout_ms() -> u64 {
    1000
}
fn default_push_timeout_max_ms() -> u64 {
    30_000
}
fn default_dead_after_secs() -> u64 {
    60
}
fn default_max_inflight() -> u16 {
    1
}
fn default_max_datagram_bytes() -> usize {
    1400
}
fn default_max_rxpk_per_datagram() -> usize {
    8
}
fn default_reconnect_min_ms() -> u64 {
    1000
}
fn default_reconnect_max_ms() -> u64 {
    60_000
}

impl SemtechUdpSinkConfig {
    /// A configuration with every default, sending to `server`.
    pub fn new(server: LnsAddress) -> SemtechUdpSinkConfig {
        SemtechUdpSinkConfig {
            server,
            keepalive_secs: default_keepalive_secs(),
            push_timeout_ms: default_push_timeout_ms(),
            push_timeout_max_ms: default_push_timeout_max_ms(),
            dead_after_secs: default_dead_after_secs(),
            max_inflight: default_max_inflight(),
            max_datagram_bytes: default_max_datagram_bytes(),
            max_rxpk_per_datagram: default_max_rxpk_per_datagram(),
            reconnect_min_ms: default_reconnect_min_ms(),
            reconnect_max_ms: default_reconnect_max_ms(),
            replay_gap_ms: default_replay_gap_ms(),
            replay_rate: default_replay_rate(),
        }
    }

    /// The checks serde cannot express; the message names the key under `sinks.semtech_udp`.
    pub fn check(&self) -> Result<(), String> {
        let key = "sinks.semtech_udp";
        if self.keepalive_secs == 0 {
            return Err(format!("{key}.keepalive_secs must be at least 1"));
        }
        if self.push_timeout_ms == 0 || self.push_timeout_max_ms < self.push_timeout_ms {
            return Err(format!("{key}.push_timeout_ms must be ≥ 1 and ≤ push_timeout_max_ms"));
        }
        if self.dead_after_secs <= self.keepalive_secs {
            return Err(format!(
                "{key}.dead_after_secs must be longer than keepalive_secs, or a quiet server looks dead"
            ));
        }
        if self.max_inflight == 0 || self.max_rxpk_per_datagram == 0 {
            return Err(format!("{key}.max_inflight and max_rxpk_per_datagram must be at least 1"));
        }
        if !(512..=codec::MAX_DATAGRAM_BYTES).contains(&self.max_datagram_bytes) {
            return Err(format!(
                "{key}.max_datagram_bytes must be between 512 and {}",
                codec::MAX_DATAGRAM_BYTES
            ));
        }
        if self.reconnect_min_ms == 0 || self.reconnect_max_ms < self.reconnect_min_ms {
            return Err(format!("{key}.reconnect_min_ms must be ≥ 1 and ≤ reconnect_max_ms"));
        }
        if self.replay_gap_ms > 60_000 {
            return Err(format!("{key}.replay_gap_ms is at most 60000 (one minute per device)"));
        }
        Ok(())
    }

    /// Settings for the sink of gateway `gateway_id` (the EUI in every datagram header).
    pub fn settings(&self, gateway_id: Eui64) -> SemtechUdpSettings {
        SemtechUdpSettings {
            server: self.server.clone(),
            gateway_id,
            keepalive: Duration::from_secs(self.keepalive_secs),
            push_timeout: Duration::from_millis(self.push_timeout_ms),
            push_timeout_max: Duration::from_millis(self.push_timeout_max_ms),
            dead_after: Duration::from_secs(self.dead_after_secs),
            max_inflight: usize::from(self.max_inflight),
            max_datagram_bytes: self.max_datagram_bytes,
            max_rxpk_per_datagram: self.max_rxpk_per_datagram,
            reconnect_min: Duration::from_millis(self.reconnect_min_ms),
            reconnect_max: Duration::from_millis(self.reconnect_max_ms),
            pace: PaceSettings {
                device_gap: Duration::from_millis(self.replay_gap_ms),
                rate: self.replay_rate,
            },
        }
    }
}

/// Everything the sink needs, resolved from configuration (see [`SemtechUdpSinkConfig`]).
#[derive(Clone, Debug)]
pub struct SemtechUdpSettings {
    pub server: LnsAddress,
    pub gateway_id: Eui64,
    pub keepalive: Duration,
    pub push_timeout: Duration,
    pub push_timeout_max: Duration,
    pub dead_after: Duration,
    pub max_inflight: usize,
    pub max_datagram_bytes: usize,
    pub max_rxpk_per_datagram: usize,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    pub pace: PaceSettings,
}

/// How a session ended when it did not fail.
enum SessionEnd {
    Shutdown,
}

/// State that outlives one socket.
struct Carry {
    /// Highest seq acknowledged to the journal by this task (the durable ack may lag).
    acked: Seq,
    /// Downlinks on the radio, by the id we gave them: where their TX_ACK goes.
    downlinks: HashMap<u32, DownlinkOrigin>,
    /// PUSH_DATA sent and acknowledged, for `stat.ackr`.
    datagrams_sent: u64,
    datagrams_acked: u64,
    /// The same two counts when the last `stat` was packed.
    at_last_stat: (u64, u64),
    /// Sessions started: picks which of the server's addresses to use.
    sessions: usize,
    /// The concentrator counter and receive time of the uplinks sent lately, newest last:
    /// what tells the answer to a replayed uplink (its `tmst` + a delay) from a live one's.
    sent_uplinks: VecDeque<(u32, i64)>,
    warn: LogLimiter,
}

/// Uplinks remembered in `Carry::sent_uplinks`.
const SENT_UPLINKS_KEPT: usize = 4096;
/// The latest a Class A answer comes after its uplink (RX1 delay up to 15 s, RX2 a second later).
const RX_WINDOWS_US: u32 = 16_000_000;

impl Carry {
    fn sent_uplink(&mut self, counter_us: u32, received_ms: i64) {
        if self.sent_uplinks.len() >= SENT_UPLINKS_KEPT {
            self.sent_uplinks.pop_front();
        }
        self.sent_uplinks.push_back((counter_us, received_ms));
    }

    /// Whether a downlink at counter `at` can only answer uplinks whose windows have closed
    /// by `now_ms`: every uplink sent lately within an RX window before `at` was received
    /// too long ago. `false` when it answers none of them (the radio then judges it).
    fn answers_only_stale_uplinks(&self, at: u32, now_ms: i64) -> bool {
        let mut answers = self
            .sent_uplinks
            .iter()
            .map(|&(counter, received_ms)| (at.wrapping_sub(counter), received_ms))
            .filter(|&(delay_us, _)| delay_us <= RX_WINDOWS_US)
            .peekable();
        answers.peek().is_some()
            && answers.all(|(delay_us, received_ms)| received_ms + i64::from(delay_us / 1000) < now_ms)
    }
}

/// The PULL_RESP a downlink came from.
struct DownlinkOrigin {
    version: u8,
    token: u16,
    at: Instant,
}

/// Downlink origins older than this are forgotten (the radio answers within seconds).
const DOWNLINK_MEMORY: Duration = Duration::from_secs(120);

/// The sink task: send, retransmit, reconnect with backoff, until shutdown.
pub async fn run(
    settings: SemtechUdpSettings,
    journal: Journal,
    counters: Arc<SinkCounters>,
    mut radio: SinkRadioIo,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut carry = Carry {
        acked: journal.watch().borrow().acked,
        downlinks: HashMap::new(),
        datagrams_sent: 0,
        datagrams_acked: 0,
        at_last_stat: (0, 0),
        sessions: 0,
        sent_uplinks: VecDeque::new(),
        warn: LogLimiter::default(),
    };
    let mut backoff = Backoff::new(settings.reconnect_min, settings.reconnect_max);
    loop {
        let started = Instant::now();
        match session(&settings, &journal, &counters, &mut radio, &mut shutdown, &mut carry).await {
            Ok(SessionEnd::Shutdown) => {
                counters.connected.store(false, Ordering::Relaxed);
                return;
            }
            Err(e) => {
                counters.connected.store(false, Ordering::Relaxed);
                counters.reconnects.fetch_add(1, Ordering::Relaxed);
                // UDP has no refusal to tell from silence: a dead server is tried again soon.
                let delay = backoff.after_failure(started.elapsed(), Failure::Unreachable);
                warn!(
                    server = %settings.server,
                    "semtech udp sink: {e:#}; starting over in {:.1} s",
                    delay.as_secs_f32()
                );
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    }
}

/// One socket's life: resolve, send from the journal, serve downlinks.
async fn session(
    s: &SemtechUdpSettings,
    journal: &Journal,
    counters: &SinkCounters,
    radio: &mut SinkRadioIo,
    shutdown: &mut watch::Receiver<bool>,
    carry: &mut Carry,
) -> anyhow::Result<SessionEnd> {
    let addrs = resolve(&s.server).await?;
    // A name with several addresses (IPv6 and IPv4, say): each new session tries the next.
    // `resolve` never returns an empty list, so the index is in range.
    let addr = addrs[carry.sessions % addrs.len()];
    carry.sessions = carry.sessions.wrapping_add(1);
    let local: SocketAddr =
        if addr.is_ipv4() { (Ipv4Addr::UNSPECIFIED, 0).into() } else { (Ipv6Addr::UNSPECIFIED, 0).into() };
    let socket = UdpSocket::bind(local).await.context("opening a UDP socket")?;
    // Connected: the kernel drops datagrams from anyone but the server, and reports ICMP errors.
    socket.connect(addr).await.with_context(|| format!("addressing {addr}"))?;
    info!(server = %s.server, %addr, "semtech udp sink: sending to the network server");

    let mut link = Link { socket, s, counters, heard: false, last_heard: Instant::now(), pull_token: None };
    let mut window = PushWindow::default();
    let mut reader = ReadAhead::new(journal, carry.acked);
    let mut pacer = Pacer::new(s.pace, chirpstack::uplink_sender);
    let mut keepalive = tokio::time::interval(s.keepalive);
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = vec![0u8; codec::MAX_DATAGRAM_BYTES + 1];

    loop {
        let mut wake = None;
        while window.len() < s.max_inflight {
            pacer.fill(&mut reader.records);
            match pacer.next(Instant::now(), berrygw_core::unix_ms(SystemTime::now())) {
                Next::Ready(_) => {}
                Next::Wait(at) => {
                    wake = Some(at);
                    break;
                }
                Next::Empty => break,
            }
            let packed = pack(s, &mut pacer, &mut reader.records, counters, carry);
            match packed.datagram {
                Some((rxpk, stat)) => {
                    let token = window.fresh_token();
                    let dg = Datagram {
                        version: PROTOCOL_V2,
                        token,
                        packet: Packet::PushData { gateway_id: s.gateway_id, rxpk, stat },
                    };
                    let bytes = dg.encode().context("encoding PUSH_DATA")?;
                    link.socket.send(&bytes).await.context("sending PUSH_DATA")?;
                    carry.datagrams_sent += 1;
                    debug!(token, up_to = %packed.seqs.1, records = packed.records, "semtech udp sink: PUSH_DATA sent");
                    window.push(
                        Some(token),
                        bytes,
                        packed.seqs,
                        packed.records,
                        Instant::now() + s.push_timeout,
                    );
                }
                // Only unsendable records: they leave the journal once everything older has.
                None => window.push(None, Vec::new(), packed.seqs, 0, Instant::now()),
            }
        }
        let up_to = window.take_ack_point(pacer.unsent(&reader.records));
        if up_to > carry.acked {
            carry.acked = up_to;
            journal.ack(up_to);
        }
        reader.refill();
        let next_retry = window.next_retry();

        tokio::select! {
            ready = reader.ready() => ready?,
            () = tokio::time::sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() => {}
            received = link.socket.recv(&mut buf) => {
                // ECONNREFUSED here: the server's port is closed (ICMP). Start over.
                let len = received.context("receiving")?;
                link.on_datagram(&buf[..len], &mut window, radio, carry).await?;
            }
            () = tokio::time::sleep_until(next_retry.unwrap_or_else(Instant::now)), if next_retry.is_some() => {
                for bytes in window.due(Instant::now(), s.push_timeout, s.push_timeout_max) {
                    link.socket.send(&bytes).await.context("retransmitting PUSH_DATA")?;
                }
            }
            _ = keepalive.tick() => {
                if link.last_heard.elapsed() > s.dead_after {
                    bail!("no PUSH_ACK or PULL_ACK from {addr} for {} s", s.dead_after.as_secs());
                }
                link.pull().await?;
            }
            Some(ack) = radio.tx_acks.recv() => link.tx_ack(ack, carry).await?,
            _ = shutdown.changed() => {
                link.drain_before_shutdown(&mut window, pacer.unsent(&reader.records), &mut buf, radio, journal, carry).await;
                return Ok(SessionEnd::Shutdown);
            }
        }
    }
}

/// Resolve the server name (again): its addresses, at least one.
async fn resolve(server: &LnsAddress) -> anyhow::Result<Vec<SocketAddr>> {
    let lookup = tokio::net::lookup_host((server.host.as_str(), server.port));
    let addrs: Vec<SocketAddr> = tokio::time::timeout(Duration::from_secs(15), lookup)
        .await
        .map_err(|_| anyhow!("resolving {server}: no answer within 15 s"))?
        .with_context(|| format!("resolving {server}"))?
        .collect();
    if addrs.is_empty() {
        bail!("resolving {server}: no address");
    }
    Ok(addrs)
}

/// The socket to the server and what we know about the server's liveness.
struct Link<'a> {
    socket: UdpSocket,
    s: &'a SemtechUdpSettings,
    counters: &'a SinkCounters,
    heard: bool,
    last_heard: Instant,
    pull_token: Option<u16>,
}

impl Link<'_> {
    fn heard_from_server(&mut self) {
        self.last_heard = Instant::now();
        if !self.heard {
            self.heard = true;
            self.counters.connected.store(true, Ordering::Relaxed);
            info!(server = %self.s.server, "semtech udp sink: the network server answers");
        }
    }

    async fn pull(&mut self) -> anyhow::Result<()> {
        let token = rand::random();
        let dg = Datagram {
            version: PROTOCOL_V2,
            token,
            packet: Packet::PullData { gateway_id: self.s.gateway_id },
        };
        self.socket.send(&dg.encode().context("encoding PULL_DATA")?).await.context("sending PULL_DATA")?;
        self.pull_token = Some(token);
        Ok(())
    }

    /// One datagram from the server. Only socket errors fail the session; bad input is counted.
    async fn on_datagram(
        &mut self,
        bytes: &[u8],
        window: &mut PushWindow,
        radio: &mut SinkRadioIo,
        carry: &mut Carry,
    ) -> anyhow::Result<()> {
        let dg = match Datagram::parse(bytes) {
            Ok(dg) => dg,
            Err(e) => {
                self.bad(carry, e.cause(), &e);
                return Ok(());
            }
        };
        match dg.packet {
            Packet::PushAck => {
                self.heard_from_server();
                match window.ack(dg.token) {
                    Some(records) => {
                        carry.datagrams_acked += 1;
                        self.counters.forwarded.fetch_add(records, Ordering::Relaxed);
                    }
                    None => debug!(
                        token = dg.token,
                        "semtech udp sink: PUSH_ACK for no waiting datagram (late or duplicate)"
                    ),
                }
            }
            Packet::PullAck => {
                if self.pull_token == Some(dg.token) {
                    self.heard_from_server();
                } else {
                    debug!(token = dg.token, "semtech udp sink: PULL_ACK with a stale token");
                }
            }
            Packet::PullResp { txpk } => {
                self.heard_from_server();
                self.on_pull_resp(dg.version, dg.token, &txpk, radio, carry).await?;
            }
            other @ (Packet::PushData { .. } | Packet::PullData { .. } | Packet::TxAck { .. }) => {
                let name = other.identifier().name();
                self.bad(
                    carry,
                    "unexpected",
                    &format_args!("{name} is sent by packet forwarders, not to them"),
                );
            }
        }
        Ok(())
    }

    fn bad(&self, carry: &mut Carry, cause: &'static str, what: &dyn fmt::Display) {
        self.counters.bad_commands.fetch_add(1, Ordering::Relaxed);
        if let Some(held) = carry.warn.allow(cause) {
            warn!(server = %self.s.server, held_back = held, "semtech udp sink: datagram from the network server dropped: {what}");
        }
    }

    async fn on_pull_resp(
        &mut self,
        version: u8,
        token: u16,
        txpk: &TxPk,
        radio: &mut SinkRadioIo,
        carry: &mut Carry,
    ) -> anyhow::Result<()> {
        carry.downlinks.retain(|_, o| o.at.elapsed() < DOWNLINK_MEMORY);
        let id = loop {
            let id: u32 = rand::random();
            if !carry.downlinks.contains_key(&id) {
                break id;
            }
        };
        let frame = match txpk.to_downlink(id) {
            Ok(frame) => frame,
            Err(e) => {
                // Like Semtech's forwarder with a txpk it cannot use: no transmission, no TX_ACK.
                self.bad(carry, "txpk", &format_args!("PULL_RESP refused: {e}"));
                return Ok(());
            }
        };
        self.counters.downlinks_received.fetch_add(1, Ordering::Relaxed);
        carry.downlinks.insert(id, DownlinkOrigin { version, token, at: Instant::now() });
        // The answer to a replayed uplink: its counter may have turned since (71 minutes), so
        // the radio could not tell it is late. Never sent on air.
        if let TxTiming::Counter(at) = frame.timing {
            if carry.answers_only_stale_uplinks(at, berrygw_core::unix_ms(SystemTime::now())) {
                debug!(
                    downlink_id = id,
                    tmst = at,
                    "semtech udp sink: downlink answers a replayed uplink; refused TOO_LATE"
                );
                return self.tx_ack(TxAck { downlink_id: id, status: TxStatus::TooLate }, carry).await;
            }
        }
        if let Err(e) = radio.downlinks.try_send(frame) {
            let status = match e {
                tokio::sync::mpsc::error::TrySendError::Full(_) => TxStatus::QueueFull,
                tokio::sync::mpsc::error::TrySendError::Closed(_) => TxStatus::InternalError,
            };
            warn!(downlink_id = id, ?status, "semtech udp sink: the radio cannot take the downlink");
            self.tx_ack(TxAck { downlink_id: id, status }, carry).await?;
        }
        Ok(())
    }

    /// The radio's answer, as TX_ACK to the PULL_RESP it answers.
    async fn tx_ack(&mut self, ack: TxAck, carry: &mut Carry) -> anyhow::Result<()> {
        let Some(origin) = carry.downlinks.remove(&ack.downlink_id) else {
            debug!(downlink_id = ack.downlink_id, "semtech udp sink: TxAck for a downlink we do not know");
            return Ok(());
        };
        self.counters.tx_acks.fetch_add(1, Ordering::Relaxed);
        if origin.version == PROTOCOL_V1 {
            return Ok(()); // GWMP v1 has no TX_ACK.
        }
        let dg = Datagram {
            version: origin.version,
            token: origin.token,
            packet: Packet::TxAck { gateway_id: self.s.gateway_id, ack: TxPkAck::from_status(ack.status) },
        };
        self.socket.send(&dg.encode().context("encoding TX_ACK")?).await.context("sending TX_ACK")?;
        Ok(())
    }

    /// On shutdown: give the datagrams in flight a moment to be acknowledged.
    async fn drain_before_shutdown(
        &mut self,
        window: &mut PushWindow,
        unsent: Option<Seq>,
        buf: &mut [u8],
        radio: &mut SinkRadioIo,
        journal: &Journal,
        carry: &mut Carry,
    ) {
        let deadline = tokio::time::sleep(Duration::from_secs(2));
        tokio::pin!(deadline);
        while !window.is_empty() {
            tokio::select! {
                _ = &mut deadline => break,
                received = self.socket.recv(buf) => {
                    let Ok(len) = received else { break };
                    if self.on_datagram(&buf[..len], window, radio, carry).await.is_err() {
                        break;
                    }
                    let up_to = window.take_ack_point(unsent);
                    if up_to > carry.acked {
                        carry.acked = up_to;
                        journal.ack(up_to);
                    }
                }
            }
        }
    }
}

/// What one PUSH_DATA carries, taken from the front of the prefetched records.
struct Packed {
    /// `None` when every record taken was unsendable.
    datagram: Option<(Vec<RxPk>, Option<Stat>)>,
    /// Lowest and highest seq taken (sent or skipped); with pacing, not every seq between.
    seqs: (Seq, Seq),
    /// Records sent.
    records: u64,
}

/// JSON around the objects of a PUSH_DATA body, with room to spare.
const BODY_OVERHEAD: usize = 12 + 32;

/// Take the records the pacer lets go now (refilled from `from`) into one PUSH_DATA: as
/// many `rxpk` as fit `max_datagram_bytes` and `max_rxpk_per_datagram`, and at most one
/// `stat`. Unsendable records are set aside (counted in `bad_records`) and taken along.
fn pack(
    s: &SemtechUdpSettings,
    pacer: &mut Pacer,
    from: &mut VecDeque<Record>,
    counters: &SinkCounters,
    carry: &mut Carry,
) -> Packed {
    let mut rxpk: Vec<RxPk> = Vec::new();
    let mut stat: Option<Stat> = None;
    let mut size = BODY_OVERHEAD;
    let mut seqs: Option<(Seq, Seq)> = None;
    let mut records = 0;
    loop {
        pacer.fill(from);
        let now = Instant::now();
        let Next::Ready(i) = pacer.next(now, berrygw_core::unix_ms(SystemTime::now())) else { break };
        let Some(r) = pacer.peek(i) else { break };
        let empty = rxpk.is_empty() && stat.is_none();
        let (sent, acked) =
            (carry.datagrams_sent - carry.at_last_stat.0, carry.datagrams_acked - carry.at_last_stat.1);
        // Semtech's forwarder reports 0 when it sent nothing in the interval.
        let ackr = if sent == 0 { 0.0 } else { (100.0 * acked as f64 / sent as f64).min(100.0) };
        match wire_object(r, ackr) {
            Err(bad) => set_aside("semtech udp", r.seq, &bad, counters, &mut carry.warn),
            Ok(WireObject::Rxpk(p)) => {
                let len = serde_json::to_vec(&p).map_or(usize::MAX / 2, |j| j.len() + 1);
                if !empty && (rxpk.len() >= s.max_rxpk_per_datagram || size + len > s.max_datagram_bytes) {
                    break;
                }
                carry.sent_uplink(p.tmst, r.received_at_ms);
                size += len;
                rxpk.push(p);
                records += 1;
            }
            Ok(WireObject::Stat(st)) => {
                let len = serde_json::to_vec(&st).map_or(usize::MAX / 2, |j| j.len() + 8);
                if stat.is_some() || (!empty && size + len > s.max_datagram_bytes) {
                    break;
                }
                size += len;
                stat = Some(st);
                carry.at_last_stat = (carry.datagrams_sent, carry.datagrams_acked);
                records += 1;
            }
        }
        let seq = r.seq;
        seqs = Some(seqs.map_or((seq, seq), |(lo, hi)| (lo.min(seq), hi.max(seq))));
        pacer.take(i, now);
    }
    let datagram = (!rxpk.is_empty() || stat.is_some()).then_some((rxpk, stat));
    Packed { datagram, seqs: seqs.unwrap_or((Seq::NONE, Seq::NONE)), records }
}

/// What one journal record becomes in a PUSH_DATA.
#[derive(Debug)]
pub enum WireObject {
    Rxpk(RxPk),
    Stat(Stat),
}

/// The GWMP object of one journal record; `ackr` goes into a `stat`.
pub fn wire_object(r: &Record, ackr: f64) -> Result<WireObject, BadRecord> {
    match RecordKind::from_u8(r.kind) {
        Some(RecordKind::Uplink) => {
            let msg = gw::UplinkFrame::decode(r.payload.as_slice())
                .map_err(|e| BadRecord::new("undecodable", format_args!("undecodable uplink: {e}")))?;
            Ok(WireObject::Rxpk(RxPk::from_uplink(&uplink_frame(msg, r.received_at_ms)?)))
        }
        Some(RecordKind::Stats) => {
            let msg = gw::GatewayStats::decode(r.payload.as_slice())
                .map_err(|e| BadRecord::new("undecodable", format_args!("undecodable stats: {e}")))?;
            Ok(WireObject::Stat(stat(&msg, r.received_at_ms, ackr)?))
        }
        None => Err(BadRecord::new("unknown kind", format_args!("unknown record kind {}", r.kind))),
    }
}

/// A stored time GWMP can write (see `codec::writable_time`), else `None`.
fn system_time(t: &Timestamp) -> Option<SystemTime> {
    let secs = u64::try_from(t.seconds).ok()?;
    let nanos = u32::try_from(t.nanos).ok().filter(|n| *n < 1_000_000_000)?;
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos)).filter(|t| codec::writable_time(*t).is_some())
}

/// The record's receive time in unix ms, if GWMP can write it.
fn unix_ms_time(ms: i64) -> Option<SystemTime> {
    let ms = u64::try_from(ms).ok()?;
    UNIX_EPOCH.checked_add(Duration::from_millis(ms)).filter(|t| codec::writable_time(*t).is_some())
}

/// The time a record carries (`stored`), else its journal receive time; a
/// record with neither in range cannot be sent.
fn record_time(stored: Option<&Timestamp>, received_at_ms: i64) -> Result<SystemTime, BadRecord> {
    stored.and_then(system_time).or_else(|| unix_ms_time(received_at_ms)).ok_or_else(|| {
        BadRecord::new(
            "time out of range",
            format_args!("time {stored:?} and receive time {received_at_ms} ms are both out of range"),
        )
    })
}

/// Our uplink back from the stored ChirpStack message (the inverse of
/// `chirpstack::uplink_message`); `received_at_ms` stands in for a missing `gw_time`.
fn uplink_frame(msg: gw::UplinkFrame, received_at_ms: i64) -> Result<UplinkFrame, BadRecord> {
    let tx = msg.tx_info.unwrap_or_default();
    let rx = msg.rx_info.unwrap_or_default();
    let modulation = match tx.modulation.and_then(|m| m.parameters) {
        Some(gw::modulation::Parameters::Lora(l)) => Modulation::Lora {
            spreading_factor: u8::try_from(l.spreading_factor)
                .ok()
                .filter(|sf| (5..=12).contains(sf))
                .ok_or_else(|| {
                    BadRecord::new(
                        "no GWMP form",
                        format_args!("spreading factor {} out of range", l.spreading_factor),
                    )
                })?,
            bandwidth: l.bandwidth,
            code_rate: match gw::CodeRate::try_from(l.code_rate).unwrap_or(gw::CodeRate::CrUndefined) {
                gw::CodeRate::Cr45 => CodeRate::Cr4_5,
                gw::CodeRate::Cr46 => CodeRate::Cr4_6,
                gw::CodeRate::Cr47 => CodeRate::Cr4_7,
                gw::CodeRate::Cr48 => CodeRate::Cr4_8,
                other => {
                    return Err(BadRecord::new(
                        "no GWMP form",
                        format_args!("code rate {other:?} has no GWMP name"),
                    ))
                }
            },
        },
        Some(gw::modulation::Parameters::Fsk(f)) => {
            Modulation::Fsk { datarate: f.datarate, frequency_deviation: f.frequency_deviation }
        }
        Some(gw::modulation::Parameters::LrFhss(_)) => {
            return Err(BadRecord::new("no GWMP form", "LR-FHSS uplinks have no GWMP form"))
        }
        None => return Err(BadRecord::new("no GWMP form", "uplink without modulation")),
    };
    let received_at = record_time(rx.gw_time.as_ref(), received_at_ms)?;
    let counter_us =
        rx.context.get(..4).and_then(|c| <[u8; 4]>::try_from(c).ok()).map(u32::from_be_bytes).unwrap_or(0);
    let crc = match gw::CrcStatus::try_from(rx.crc_status).unwrap_or(gw::CrcStatus::NoCrc) {
        gw::CrcStatus::CrcOk => CrcStatus::Ok,
        gw::CrcStatus::BadCrc => CrcStatus::Bad,
        gw::CrcStatus::NoCrc => CrcStatus::Missing,
    };
    Ok(UplinkFrame {
        phy_payload: msg.phy_payload,
        frequency: Frequency(tx.frequency),
        modulation,
        rssi: i16::try_from(rx.rssi.clamp(i16::MIN.into(), i16::MAX.into())).unwrap_or(i16::MIN),
        snr: rx.snr,
        crc,
        channel: u8::try_from(rx.channel).unwrap_or(u8::MAX),
        rf_chain: u8::try_from(rx.rf_chain).unwrap_or(u8::MAX),
        board: u8::try_from(rx.board).unwrap_or(u8::MAX),
        counter_us,
        received_at,
    })
}

/// The `stat` of a stored `GatewayStats`. GWMP has no field for rejected frames, so
/// `rxfw` (forwarded) is the CRC-ok count, which is what berrygw forwards at most.
fn stat(msg: &gw::GatewayStats, received_at_ms: i64, ackr: f64) -> Result<Stat, BadRecord> {
    let at = record_time(msg.time.as_ref(), received_at_ms)?;
    let location = msg.location.as_ref().filter(|l| l.latitude != 0.0 || l.longitude != 0.0);
    Ok(Stat {
        time: codec::stat_time(at),
        lati: location.map(|l| l.latitude),
        long: location.map(|l| l.longitude),
        alti: location.map(|l| l.altitude.round() as i64),
        rxnb: msg.rx_packets_received.into(),
        rxok: msg.rx_packets_received_ok.into(),
        rxfw: msg.rx_packets_received_ok.into(),
        ackr,
        dwnb: msg.tx_packets_received.into(),
        txnb: msg.tx_packets_emitted.into(),
        temp: None,
    })
}

/// PUSH_DATA datagrams of this socket that wait for their PUSH_ACK, in send
/// (= journal) order. The journal may be acknowledged up to the last record of
/// the longest fully acknowledged prefix, never past an unacknowledged datagram.
#[derive(Default)]
struct PushWindow {
    entries: VecDeque<InFlight>,
    /// Highest seq taken into any datagram of this session.
    highest: Seq,
}

struct InFlight {
    /// `None` for records that were skipped, not sent.
    token: Option<u16>,
    bytes: Vec<u8>,
    /// Lowest and highest seq it carries (pacing lets other devices' records between).
    seqs: (Seq, Seq),
    records: u64,
    acked: bool,
    retries: u32,
    retry_at: Instant,
}

impl PushWindow {
    /// Datagrams waiting for their PUSH_ACK (acknowledged ones behind an older waiting
    /// one stay in `entries` for the ack point, but no longer take a place in the window).
    fn len(&self) -> usize {
        self.entries.iter().filter(|e| !e.acked).count()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn push(
        &mut self,
        token: Option<u16>,
        bytes: Vec<u8>,
        seqs: (Seq, Seq),
        records: u64,
        retry_at: Instant,
    ) {
        let acked = token.is_none();
        self.highest = self.highest.max(seqs.1);
        self.entries.push_back(InFlight { token, bytes, seqs, records, acked, retries: 0, retry_at });
    }

    /// A token no waiting datagram uses.
    fn fresh_token(&self) -> u16 {
        loop {
            let token = rand::random();
            if !self.entries.iter().any(|e| e.token == Some(token) && !e.acked) {
                return token;
            }
        }
    }

    /// PUSH_ACK for `token`: how many records that datagram carried, if it was waiting.
    fn ack(&mut self, token: u16) -> Option<u64> {
        let e = self.entries.iter_mut().find(|e| e.token == Some(token) && !e.acked)?;
        e.acked = true;
        e.bytes = Vec::new();
        Some(e.records)
    }

    /// Drop the acknowledged prefix; the journal may be acked up to the returned seq: never
    /// past a datagram still waiting for its PUSH_ACK nor a record not yet sent (`unsent`).
    fn take_ack_point(&mut self, unsent: Option<Seq>) -> Seq {
        while self.entries.front().is_some_and(|e| e.acked) {
            self.entries.pop_front();
        }
        let waiting = self.entries.iter().filter(|e| !e.acked).map(|e| e.seqs.0).min();
        ack_point(self.highest, waiting, unsent)
    }

    fn next_retry(&self) -> Option<Instant> {
        self.entries.iter().filter(|e| !e.acked).map(|e| e.retry_at).min()
    }

    /// The datagrams to send again now; each waits twice as long as before next time.
    fn due(&mut self, now: Instant, first: Duration, max: Duration) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for e in self.entries.iter_mut().filter(|e| !e.acked && e.retry_at <= now) {
            e.retries = e.retries.saturating_add(1);
            let wait = first.saturating_mul(2u32.saturating_pow(e.retries.min(16))).min(max);
            e.retry_at = now + wait;
            out.push(e.bytes.clone());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{Backend, JournalConfig, NewRecord};
    use crate::sink::chirpstack::{self, StatsSnapshot};
    use berrygw_lora::DownlinkFrame;
    use serde_json::{json, Value};
    use tokio::sync::mpsc;
    use tokio::task::JoinHandle;

    /// Guard against a hung test, not a performance bound.
    const HANG_GUARD: Duration = Duration::from_secs(30);
    const GATEWAY: Eui64 = Eui64([0x00, 0x16, 0xc0, 0x01, 0xff, 0x10, 0xa2, 0x35]);
    const PUSH_DATA: u8 = 0;
    const PULL_DATA: u8 = 2;
    const TX_ACK: u8 = 5;

    /// A datagram as the fake network server sees it, split by hand (not by our codec).
    #[derive(Debug)]
    struct Seen {
        token: u16,
        ident: u8,
        eui: Option<[u8; 8]>,
        json: Option<Value>,
        raw: Vec<u8>,
    }

    struct Harness {
        _dir: tempfile::TempDir,
        journal: Journal,
        counters: Arc<SinkCounters>,
        /// Plays the network server.
        lns: UdpSocket,
        /// The sink's address, learnt from its first datagram.
        sink: Option<SocketAddr>,
        downlinks: mpsc::Receiver<DownlinkFrame>,
        tx_acks: mpsc::Sender<TxAck>,
        shutdown: watch::Sender<bool>,
        task: JoinHandle<()>,
        next_token: u16,
    }

    async fn start(tweak: impl FnOnce(&mut SemtechUdpSettings)) -> Harness {
        let dir = tempfile::tempdir().expect("tmp");
        let journal = Journal::open(
            "test",
            JournalConfig {
                commit_interval: Duration::from_millis(10),
                commit_max_records: 100,
                ..JournalConfig::new(Backend::Log, dir.path().join("j.log"), 1 << 20)
            },
        )
        .expect("journal");
        let lns = UdpSocket::bind("127.0.0.1:0").await.expect("lns socket");
        let port = lns.local_addr().expect("addr").port();
        let mut settings =
            SemtechUdpSinkConfig::new(LnsAddress { host: "127.0.0.1".into(), port }).settings(GATEWAY);
        settings.push_timeout = Duration::from_millis(100);
        tweak(&mut settings);
        let counters = Arc::new(SinkCounters::default());
        let (down_tx, downlinks) = mpsc::channel(8);
        let (tx_acks, ack_rx) = mpsc::channel(8);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let task = tokio::spawn(run(
            settings,
            journal.clone(),
            counters.clone(),
            SinkRadioIo { downlinks: down_tx, tx_acks: ack_rx },
            shutdown_rx,
        ));
        Harness {
            _dir: dir,
            journal,
            counters,
            lns,
            sink: None,
            downlinks,
            tx_acks,
            shutdown,
            task,
            next_token: 0x7000,
        }
    }

    fn uplink(payload: &[u8], counter_us: u32, received_at: SystemTime) -> UplinkFrame {
        let mut f = UplinkFrame::example(payload.to_vec(), CrcStatus::Ok);
        (f.counter_us, f.received_at) = (counter_us, received_at);
        f
    }

    impl Harness {
        async fn append_uplink(&self, f: &UplinkFrame) {
            let msg = chirpstack::uplink_message(&GATEWAY.to_string(), f, 1, 1);
            let record = NewRecord {
                kind: RecordKind::Uplink as u8,
                received_at_ms: berrygw_core::unix_ms(f.received_at),
                payload: msg.encode_to_vec(),
            };
            self.journal.append(record).await.expect("append");
        }

        async fn recv(&mut self) -> Seen {
            let mut buf = vec![0; 65_536];
            let (len, from) = tokio::time::timeout(HANG_GUARD, self.lns.recv_from(&mut buf))
                .await
                .expect("a datagram in time")
                .expect("recv");
            self.sink = Some(from);
            let raw = buf[..len].to_vec();
            assert!(len >= 4 && raw[0] == 2, "GWMP v2 datagram expected: {raw:?}");
            let ident = raw[3];
            let (eui, rest) = match ident {
                PUSH_DATA | PULL_DATA | TX_ACK => {
                    let eui: [u8; 8] = raw[4..12].try_into().expect("EUI");
                    (Some(eui), &raw[12..])
                }
                _ => (None, &raw[4..]),
            };
            let json = (!rest.is_empty()).then(|| serde_json::from_slice(rest).expect("JSON body"));
            Seen { token: u16::from_be_bytes([raw[1], raw[2]]), ident, eui, json, raw }
        }

        /// The next PUSH_DATA; keepalives are skipped.
        async fn recv_push(&mut self) -> Seen {
            loop {
                let seen = self.recv().await;
                if seen.ident == PUSH_DATA {
                    assert_eq!(seen.eui, Some(GATEWAY.0), "our EUI is in the header");
                    return seen;
                }
            }
        }

        async fn send(&mut self, bytes: &[u8]) {
            if self.sink.is_none() {
                self.recv().await; // the first PULL_DATA says where the sink is
            }
            let to = self.sink.expect("sink address");
            self.lns.send_to(bytes, to).await.expect("send");
        }

        async fn push_ack(&mut self, token: u16) {
            self.send(&[2, (token >> 8) as u8, token as u8, 1]).await;
        }

        async fn pull_resp(&mut self, token: u16, txpk: &Value) {
            let mut d = vec![2, (token >> 8) as u8, token as u8, 3];
            d.extend_from_slice(json!({ "txpk": txpk }).to_string().as_bytes());
            self.send(&d).await;
        }

        async fn downlink(&mut self) -> DownlinkFrame {
            tokio::time::timeout(HANG_GUARD, self.downlinks.recv())
                .await
                .expect("downlink in time")
                .expect("open")
        }

        /// Returns once the sink has handled everything sent to it before (it handles
        /// datagrams in order): a PULL_RESP goes through and its downlink comes out.
        async fn sync(&mut self) {
            self.next_token += 1;
            let token = self.next_token;
            self.pull_resp(token, &txpk()).await;
            self.downlink().await;
        }

        async fn wait_acked(&self, seq: u64) {
            let mut stats = self.journal.watch();
            tokio::time::timeout(HANG_GUARD, stats.wait_for(|s| s.acked >= Seq(seq)))
                .await
                .expect("acked in time")
                .expect("journal open");
        }

        /// The journal's durable ack point once every ack requested so far is committed.
        async fn durable_ack(&self) -> Seq {
            self.journal.flush().await.expect("flush");
            self.journal.watch().borrow().acked
        }

        fn counter(&self, c: fn(&SinkCounters) -> &std::sync::atomic::AtomicU64) -> u64 {
            c(&self.counters).load(Ordering::Relaxed)
        }
    }

    fn txpk() -> Value {
        json!({"imme": false, "tmst": 1_234_567, "freq": 869.525, "rfch": 0, "powe": 14, "modu": "LORA",
               "datr": "SF9BW125", "codr": "4/5", "ipol": true, "size": 4, "data": "YAECAw=="})
    }

    fn rxpk_data(seen: &Seen) -> Vec<String> {
        seen.json.as_ref().and_then(|j| j["rxpk"].as_array()).map_or_else(Vec::new, |a| {
            a.iter().map(|p| p["data"].as_str().expect("data").to_string()).collect()
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_backlog_is_paced_per_device_one_device_passing_another_s_held_uplink() {
        let mut h =
            start(|s| s.pace = PaceSettings { device_gap: Duration::from_millis(300), rate: 0 }).await;
        let t = SystemTime::now() - Duration::from_secs(600);
        let data_up = |dev: u8, fcnt: u8| [0x40, dev, 0, 0, 0x26, 0, fcnt, 0, 2, 9, 9, 9, 9];
        // A backlog: device 1's two uplinks (300 ms apart when they leave), device 2's after them.
        h.append_uplink(&uplink(&data_up(1, 0), 1, t)).await;
        h.append_uplink(&uplink(&data_up(1, 1), 2, t + Duration::from_millis(300))).await;
        h.append_uplink(&uplink(&data_up(2, 0), 3, t + Duration::from_millis(600))).await;
        // Base64 of data_up(1, 0), data_up(2, 0), data_up(1, 1).
        let (d1f0, d2f0, d1f1) = ("QAEAACYAAAACCQkJCQ==", "QAIAACYAAAACCQkJCQ==", "QAEAACYAAQACCQkJCQ==");
        let mut sent = Vec::new();
        while sent.len() < 3 {
            let seen = h.recv_push().await;
            sent.extend(rxpk_data(&seen));
            h.push_ack(seen.token).await;
        }
        assert_eq!(sent, [d1f0, d2f0, d1f1], "device 2 passes device 1's held uplink; each device in order");
        h.wait_acked(3).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn uplinks_go_out_as_push_data_in_seq_order_with_their_radio_fields() {
        let mut h = start(|_| {}).await;
        let long_ago = UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
        let mut frames: Vec<UplinkFrame> =
            (0u8..3).map(|i| uplink(&[0x40, i, i, i], 1_000_000 * u32::from(i) + 7, long_ago)).collect();
        frames[1].modulation =
            Modulation::Lora { spreading_factor: 12, bandwidth: 125_000, code_rate: CodeRate::Cr4_6 };
        (frames[1].rssi, frames[1].snr, frames[1].channel, frames[1].rf_chain) = (-119, -15.25, 6, 1);
        frames[1].frequency = Frequency(867_700_000);
        frames[2].crc = CrcStatus::Bad;
        for f in &frames {
            h.append_uplink(f).await;
        }

        let mut rxpk: Vec<Value> = Vec::new();
        while rxpk.len() < 3 {
            let seen = h.recv_push().await;
            rxpk.extend(seen.json.as_ref().expect("json")["rxpk"].as_array().expect("rxpk").iter().cloned());
            h.push_ack(seen.token).await;
        }
        let data: Vec<&str> = rxpk.iter().map(|p| p["data"].as_str().expect("data")).collect();
        assert_eq!(data, ["QAAAAA==", "QAEBAQ==", "QAICAg=="], "journal order");
        let p = &rxpk[1];
        assert_eq!(p["time"], "2023-11-14T22:13:20.123456Z", "the original receive time");
        assert_eq!(p["tmst"], 1_000_007);
        assert_eq!(p["freq"], 867.7);
        assert_eq!(
            (&p["modu"], &p["datr"], &p["codr"]),
            (&json!("LORA"), &json!("SF12BW125"), &json!("4/6"))
        );
        assert_eq!(
            (&p["rssi"], &p["lsnr"], &p["chan"], &p["rfch"]),
            (&json!(-119), &json!(-15.25), &json!(6), &json!(1))
        );
        assert_eq!((&p["stat"], &p["size"]), (&json!(1), &json!(4)));
        assert_eq!(rxpk[2]["stat"], -1);
        h.wait_acked(3).await;
        assert_eq!(h.counter(|c| &c.forwarded), 3);
        assert_eq!(h.counter(|c| &c.bad_records), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unacknowledged_push_data_is_sent_again_and_stays_in_the_journal_until_acked() {
        let mut h = start(|_| {}).await;
        h.append_uplink(&uplink(&[0x40, 1], 1, SystemTime::now())).await;
        let first = h.recv_push().await;
        let again = h.recv_push().await;
        assert_eq!(again.raw, first.raw, "the same datagram, same token");
        let third = h.recv_push().await;
        assert_eq!(third.raw, first.raw);
        assert_eq!(h.durable_ack().await, Seq::NONE, "nothing acknowledged without a PUSH_ACK");
        assert_eq!(h.journal.watch().borrow().records, 1);

        h.push_ack(first.token).await;
        h.wait_acked(1).await;
        assert_eq!(h.durable_ack().await, Seq(1), "the ack is made durable, the record deleted");
        assert_eq!(h.journal.watch().borrow().records, 0);
        assert_eq!(h.counter(|c| &c.forwarded), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn journal_is_acked_only_up_to_the_oldest_unacknowledged_datagram() {
        let mut h = start(|s| {
            s.max_inflight = 3;
            s.max_rxpk_per_datagram = 1;
            s.push_timeout = Duration::from_secs(30); // no retransmission in this test
        })
        .await;
        for i in 0u8..3 {
            h.append_uplink(&uplink(&[0x40, i], 1, SystemTime::now())).await;
        }
        let mut sent = Vec::new();
        while sent.len() < 3 {
            sent.push(h.recv_push().await);
        }
        let data: Vec<Vec<String>> = sent.iter().map(rxpk_data).collect();
        assert_eq!(data, [vec!["QAA=".to_string()], vec!["QAE=".to_string()], vec!["QAI=".to_string()]]);

        h.push_ack(sent[2].token).await;
        h.push_ack(sent[1].token).await;
        h.sync().await;
        assert_eq!(h.durable_ack().await, Seq::NONE, "seq 1 is still out: nothing may leave");
        assert_eq!(h.counter(|c| &c.forwarded), 2);

        h.push_ack(sent[0].token).await;
        h.wait_acked(3).await;
        assert_eq!(h.counter(|c| &c.forwarded), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn gateway_stats_go_out_as_stat() {
        let mut h = start(|_| {}).await;
        let at = UNIX_EPOCH + Duration::from_secs(1_389_517_168);
        let snapshot = StatsSnapshot {
            rx_received: 5,
            rx_received_ok: 4,
            tx_received: 2,
            tx_emitted: 1,
            ..Default::default()
        };
        let msg = chirpstack::stats_message(&GATEWAY.to_string(), at, snapshot);
        let record = NewRecord {
            kind: RecordKind::Stats as u8,
            received_at_ms: berrygw_core::unix_ms(at),
            payload: msg.encode_to_vec(),
        };
        h.journal.append(record).await.expect("append");
        let seen = h.recv_push().await;
        let stat = &seen.json.as_ref().expect("json")["stat"];
        assert_eq!(stat["time"], "2014-01-12 08:59:28 GMT");
        assert_eq!((&stat["rxnb"], &stat["rxok"], &stat["rxfw"]), (&json!(5), &json!(4), &json!(4)));
        assert_eq!((&stat["dwnb"], &stat["txnb"]), (&json!(2), &json!(1)));
        assert!(stat["ackr"].is_number(), "{stat}");
        assert!(seen.json.as_ref().expect("json").get("rxpk").is_none());
        h.push_ack(seen.token).await;
        h.wait_acked(1).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pull_resp_goes_to_the_radio_and_its_tx_ack_goes_back() {
        let mut h = start(|_| {}).await;
        let pull = h.recv().await;
        assert_eq!((pull.ident, pull.eui), (PULL_DATA, Some(GATEWAY.0)), "keepalive first");
        h.send(&[2, pull.raw[1], pull.raw[2], 4]).await; // PULL_ACK
        h.pull_resp(0x4242, &txpk()).await;
        let d = h.downlink().await;
        assert_eq!(d.phy_payload, vec![0x60, 1, 2, 3]);
        assert_eq!(d.frequency, Frequency(869_525_000));
        assert_eq!(
            d.modulation,
            Modulation::Lora { spreading_factor: 9, bandwidth: 125_000, code_rate: CodeRate::Cr4_5 }
        );
        assert_eq!((d.power_dbm, d.timing, d.invert_iq), (14, TxTiming::Counter(1_234_567), true));
        assert!(h.counters.connected.load(Ordering::Relaxed), "PULL_ACK means the server answers");

        h.tx_acks.send(TxAck { downlink_id: d.downlink_id, status: TxStatus::TooLate }).await.expect("ack");
        let ack = loop {
            let seen = h.recv().await;
            if seen.ident == TX_ACK {
                break seen;
            }
        };
        assert_eq!((ack.token, ack.eui), (0x4242, Some(GATEWAY.0)), "TX_ACK answers the PULL_RESP's token");
        assert_eq!(ack.json, Some(json!({"txpk_ack": {"error": "TOO_LATE"}})));
        assert_eq!(h.counter(|c| &c.downlinks_received), 1);
        assert_eq!(h.counter(|c| &c.tx_acks), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_answer_to_a_replayed_uplink_is_refused_too_late_not_sent_to_the_radio() {
        let mut h = start(|_| {}).await;
        // An uplink received 80 minutes ago: its counter has turned since, the radio could not tell.
        let replayed = uplink(
            &[0x80, 1, 0, 0, 0x26, 0, 0, 0, 2, 9, 9, 9, 9],
            1_000_000,
            SystemTime::now() - Duration::from_secs(4800),
        );
        h.append_uplink(&replayed).await;
        let push = h.recv_push().await;
        h.push_ack(push.token).await;
        // The network server's ACK for it, in its RX1 window (tmst + 1 s).
        let mut ack_txpk = txpk();
        ack_txpk["tmst"] = json!(2_000_000);
        h.pull_resp(0x5151, &ack_txpk).await;
        let ack = loop {
            let seen = h.recv().await;
            if seen.ident == TX_ACK {
                break seen;
            }
        };
        assert_eq!(ack.token, 0x5151);
        assert_eq!(ack.json, Some(json!({"txpk_ack": {"error": "TOO_LATE"}})));
        assert!(h.downlinks.try_recv().is_err(), "nothing reached the radio");
        // A downlink answering no uplink we sent (Class C at a counter): the radio judges it.
        let mut other = txpk();
        other["tmst"] = json!(900_000_000);
        h.pull_resp(0x5252, &other).await;
        assert_eq!(h.downlink().await.timing, TxTiming::Counter(900_000_000));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn garbage_from_the_network_server_is_counted_and_ignored() {
        let mut h = start(|_| {}).await;
        let mut bad_txpk = txpk();
        bad_txpk["data"] = json!("!!not base64!!");
        let mut bad_pull_resp = vec![2, 0, 9, 3];
        bad_pull_resp.extend_from_slice(json!({ "txpk": bad_txpk }).to_string().as_bytes());
        let mut push_data = vec![2, 0, 1, 0];
        push_data.extend_from_slice(&GATEWAY.0);
        push_data.extend_from_slice(b"{}");
        let garbage: Vec<Vec<u8>> = vec![
            (0..300u32).map(|i| (i * 7919 % 251) as u8).collect(),
            vec![9, 0, 1, 1],             // wrong version
            vec![2, 0],                   // truncated header
            vec![2, 0, 1, 3, b'{', b'"'], // PULL_RESP, bad JSON
            bad_pull_resp,                // PULL_RESP, bad base64
            vec![2, 0, 1, 0x42],          // unknown identifier
            push_data,                    // forwarders send those, servers do not
        ];
        for g in &garbage {
            h.send(g).await;
        }
        h.push_ack(0x0bad).await; // a PUSH_ACK for nothing is ignored, not counted
        h.sync().await;
        assert_eq!(h.counter(|c| &c.bad_commands), garbage.len() as u64);
        assert_eq!(h.counter(|c| &c.downlinks_received), 1, "only the good PULL_RESP");
        assert!(h.downlinks.try_recv().is_err());

        h.append_uplink(&uplink(&[0x40, 7], 1, SystemTime::now())).await;
        let seen = h.recv_push().await;
        h.push_ack(seen.token).await;
        h.wait_acked(1).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn undecodable_record_is_set_aside_and_leaves_the_journal_in_order() {
        let mut h = start(|_| {}).await;
        let junk = NewRecord { kind: RecordKind::Uplink as u8, received_at_ms: 0, payload: vec![0xff; 9] };
        h.journal.append(junk).await.expect("append");
        h.append_uplink(&uplink(&[0x40, 9], 1, SystemTime::now())).await;
        let seen = h.recv_push().await;
        assert_eq!(rxpk_data(&seen), ["QAk="]);
        h.push_ack(seen.token).await;
        h.wait_acked(2).await;
        assert_eq!(h.counter(|c| &c.bad_records), 1);
    }

    /// Stored records whose time GWMP cannot write (chrono used to panic on them,
    /// killing the sink; the record then stayed in the journal to kill it again).
    fn records_with_unwritable_times() -> Vec<NewRecord> {
        let far = Timestamp { seconds: 10_000_000_000_000, nanos: 0 };
        let mut no_time =
            chirpstack::uplink_message(&GATEWAY.to_string(), &uplink(&[0x40, 1], 1, SystemTime::now()), 1, 1);
        no_time.rx_info.as_mut().expect("rx_info").gw_time = None;
        let mut far_time = no_time.clone();
        far_time.rx_info.as_mut().expect("rx_info").gw_time = Some(far);
        let mut stats =
            chirpstack::stats_message(&GATEWAY.to_string(), SystemTime::now(), StatsSnapshot::default());
        stats.time = Some(far);
        let record = |kind: RecordKind, received_at_ms: i64, payload: Vec<u8>| NewRecord {
            kind: kind as u8,
            received_at_ms,
            payload,
        };
        vec![
            record(RecordKind::Uplink, 10_000_000_000_000_000, no_time.encode_to_vec()),
            record(RecordKind::Uplink, 10_000_000_000_000_000, far_time.encode_to_vec()),
            record(RecordKind::Stats, 10_000_000_000_000_000, stats.encode_to_vec()),
        ]
    }

    #[test]
    fn records_with_unwritable_times_are_bad_records_not_panics() {
        for (i, r) in records_with_unwritable_times().into_iter().enumerate() {
            let r = Record {
                seq: Seq(i as u64 + 1),
                kind: r.kind,
                received_at_ms: r.received_at_ms,
                payload: r.payload,
            };
            let bad = wire_object(&r, 0.0).expect_err("no writable time");
            assert_eq!(bad.cause, "time out of range");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_with_unwritable_times_are_set_aside_and_counted_and_the_sink_goes_on() {
        let mut h = start(|_| {}).await;
        for r in records_with_unwritable_times() {
            h.journal.append(r).await.expect("append");
        }
        h.append_uplink(&uplink(&[0x40, 9], 1, SystemTime::now())).await;
        let seen = h.recv_push().await;
        assert_eq!(rxpk_data(&seen), ["QAk="]);
        h.push_ack(seen.token).await;
        h.wait_acked(4).await;
        assert_eq!(h.counter(|c| &c.bad_records), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn closed_server_port_makes_the_sink_start_over() {
        let h = start(|s| {
            s.reconnect_min = Duration::from_millis(20);
            s.keepalive = Duration::from_millis(50);
        })
        .await;
        // Every PULL_DATA to the closed port comes back as an ICMP "port unreachable".
        drop(h.lns);
        tokio::time::timeout(HANG_GUARD, async {
            while h.counters.reconnects.load(Ordering::Relaxed) < 2 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("restarted after refusals");
        assert!(!h.counters.connected.load(Ordering::Relaxed));
        let _ = h.shutdown.send(true);
        tokio::time::timeout(HANG_GUARD, h.task).await.expect("stopped in time").expect("joined");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_waits_briefly_for_outstanding_push_acks() {
        let mut h = start(|s| s.push_timeout = Duration::from_secs(30)).await;
        h.append_uplink(&uplink(&[0x40, 3], 1, SystemTime::now())).await;
        let seen = h.recv_push().await;
        let _ = h.shutdown.send(true);
        h.push_ack(seen.token).await;
        tokio::time::timeout(HANG_GUARD, &mut h.task).await.expect("stopped in time").expect("joined");
        assert_eq!(h.durable_ack().await, Seq(1), "the late PUSH_ACK still counted");
    }

    #[test]
    fn window_acks_the_journal_only_past_a_fully_acknowledged_prefix() {
        let mut w = PushWindow::default();
        let now = Instant::now();
        w.push(Some(1), vec![1], (Seq(1), Seq(2)), 2, now);
        w.push(None, Vec::new(), (Seq(3), Seq(3)), 0, now); // a skipped record
        w.push(Some(2), vec![2], (Seq(4), Seq(5)), 2, now);
        assert_eq!(w.ack(2), Some(2));
        assert_eq!(w.take_ack_point(None), Seq(0), "the first datagram is still out");
        assert_eq!(w.ack(2), None, "duplicate PUSH_ACK ignored");
        assert_eq!(w.ack(1), Some(2));
        assert_eq!(w.take_ack_point(None), Seq(5));
        assert!(w.is_empty());
    }

    #[test]
    fn with_pacing_the_ack_point_stays_below_a_held_or_waiting_older_record() {
        let mut w = PushWindow::default();
        let now = Instant::now();
        // Device A's seq 2 is held by the pacer while seqs 1 and 3 (other devices) go.
        w.push(Some(1), vec![1], (Seq(1), Seq(3)), 2, now);
        w.ack(1);
        assert_eq!(w.take_ack_point(Some(Seq(2))), Seq(1), "not past the held seq 2");
        // Seq 2 goes, seq 4 after it; seq 4's datagram is acknowledged first.
        w.push(Some(2), vec![2], (Seq(2), Seq(2)), 1, now);
        w.push(Some(3), vec![3], (Seq(4), Seq(4)), 1, now);
        w.ack(3);
        assert_eq!(w.take_ack_point(None), Seq(1), "seq 2 still waits for its PUSH_ACK");
        w.ack(2);
        assert_eq!(w.take_ack_point(None), Seq(4));
    }

    #[test]
    fn retransmissions_back_off_up_to_the_maximum() {
        let mut w = PushWindow::default();
        let t0 = Instant::now();
        w.push(Some(1), vec![7], (Seq(1), Seq(1)), 1, t0);
        let (first, max) = (Duration::from_secs(1), Duration::from_secs(5));
        let mut at = t0;
        let mut waits = Vec::new();
        for _ in 0..5 {
            assert_eq!(w.due(at, first, max), vec![vec![7]]);
            let next = w.next_retry().expect("waiting");
            waits.push(next - at);
            at = next;
        }
        assert_eq!(waits, [2, 4, 5, 5, 5].map(Duration::from_secs));
        assert!(w.due(at - Duration::from_millis(1), first, max).is_empty(), "not yet due");
    }

    #[test]
    fn config_parses_with_defaults_and_refuses_nonsense() {
        let c: SemtechUdpSinkConfig =
            toml::from_str("server = \"eu1.cloud.thethings.network:1700\"").expect("parse");
        assert_eq!(
            c,
            SemtechUdpSinkConfig::new(LnsAddress { host: "eu1.cloud.thethings.network".into(), port: 1700 })
        );
        assert_eq!(c.check(), Ok(()));
        let s = c.settings(GATEWAY);
        assert_eq!((s.keepalive, s.max_inflight, s.max_datagram_bytes), (Duration::from_secs(10), 1, 1400));
        let v6: SemtechUdpSinkConfig = toml::from_str("server = \"[2001:db8::1]:1700\"").expect("v6");
        assert_eq!(v6.server.to_string(), "[2001:db8::1]:1700");
        for bad in ["lns.example.org", "lns.example.org:0", ":1700", "2001:db8::1:1700", "a b:1700"] {
            assert!(toml::from_str::<SemtechUdpSinkConfig>(&format!("server = \"{bad}\"")).is_err(), "{bad}");
        }
        assert!(
            toml::from_str::<SemtechUdpSinkConfig>("server = \"a:1\"\nretries = 3").is_err(),
            "unknown key"
        );
        let c = SemtechUdpSinkConfig { dead_after_secs: 5, ..c };
        assert!(c.check().expect_err("dead_after ≤ keepalive").contains("dead_after_secs"));
    }
}
