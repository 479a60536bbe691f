//! The GWMP ingest radio source: berrygw plays the network server for a packet
//! forwarder on this gateway (vendor firmware running Semtech's `lora_pkt_fwd`,
//! pointed at `127.0.0.1:1700`). PUSH_DATA `rxpk`s become `UplinkFrame`s,
//! downlinks go out as PULL_RESP to the forwarder's PULL_DATA address, and the
//! forwarder's TX_ACK becomes the `TxAck`. It owns no radio and keeps no
//! uplink: a datagram lost before it reaches us is lost, as with any UDP
//! forwarder.
//!
//! One forwarder, pinned: its IP address (`forwarder`, or the first one heard)
//! and its gateway EUI (`gateway_id`, or the first one heard). Its ports are not
//! pinned: `lora_pkt_fwd` pushes and pulls from two sockets, and both get new
//! ports when it restarts. Downlinks go to the port of its PULL_DATA; a PULL_DATA
//! from another port moves them only once the current one has been silent for
//! `forwarder_timeout_ms` (a restart), so a second process on the same host
//! cannot take the downlinks of a live forwarder. TX_ACK is taken only from the
//! address the PULL_RESP went to. Everything else is dropped, counted by reason
//! and remembered for the status page.
//!
//! Transmit outcomes: a GWMP v2 forwarder answers every PULL_RESP with a TX_ACK
//! within milliseconds, so silence for `tx_ack_timeout_ms` means the PULL_RESP or
//! the forwarder was lost and is answered [`TxStatus::InternalError`]. A GWMP v1
//! forwarder (its PULL_DATA says version 1) has no TX_ACK: its downlinks are
//! answered [`TxStatus::Unconfirmed`] once the PULL_RESP is sent, never `Ok`.
//! With no forwarder yet (no PULL_DATA) a downlink is refused at once.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use berrygw_core::LogLimiter;
use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::codec::{Datagram, Packet, RxTime, TxPk, MAX_DATAGRAM_BYTES, PROTOCOL_V1};
use crate::frame::{DownlinkFrame, TxAck, TxStatus, TxTiming, UplinkFrame};
use crate::phy::Eui64;
use crate::radio::{RadioError, RadioIo, RadioSource, RadioTask, Taken};

/// Longest wait for the pipeline to store a datagram's frames before its PUSH_ACK is withheld.
const TAKEN_TIMEOUT: Duration = Duration::from_secs(5);

/// The `[radio.gwmp]` configuration.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GwmpConfig {
    /// UDP address the packet forwarder sends to (its `server_address`/`serv_port_up`/`serv_port_down`).
    #[serde(default = "default_bind")]
    pub bind: SocketAddr,
    /// Accept only this gateway EUI; datagrams from others are counted and dropped.
    /// Unset: the first EUI heard is pinned until restart.
    #[serde(default)]
    pub gateway_id: Option<Eui64>,
    /// Accept datagrams only from this IP address (the packet forwarder's host).
    /// Unset: the first address heard is pinned until restart.
    #[serde(default)]
    pub forwarder: Option<IpAddr>,
    /// A PULL_DATA from a new port of the pinned forwarder takes the downlinks only after
    /// the current port has sent none for this long (a forwarder restarting).
    #[serde(default = "default_forwarder_timeout_ms")]
    pub forwarder_timeout_ms: u64,
    /// How long a downlink waits for the forwarder's TX_ACK before it counts as failed.
    #[serde(default = "default_tx_ack_timeout_ms")]
    pub tx_ack_timeout_ms: u64,
}

fn default_bind() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 1700))
}

fn default_tx_ack_timeout_ms() -> u64 {
    2000
}

/// Three of `lora_pkt_fwd`'s default 10 s keepalives.
fn default_forwarder_timeout_ms() -> u64 {
    30_000
}

impl Default for GwmpConfig {
    fn default() -> GwmpConfig {
        GwmpConfig {
            bind: default_bind(),
            gateway_id: None,
            forwarder: None,
            forwarder_timeout_ms: default_forwarder_timeout_ms(),
            tx_ack_timeout_ms: default_tx_ack_timeout_ms(),
        }
    }
}

/// Why a GWMP ingest configuration was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GwmpError {
    #[error(
        "radio.gwmp: tx_ack_timeout_ms = {0} is outside 1..=60000; a forwarder answers within milliseconds, 2000 is safe"
    )]
    TxAckTimeout(u64),
    #[error(
        "radio.gwmp: forwarder_timeout_ms = {0} is outside 1000..=600000; lora_pkt_fwd sends PULL_DATA every 10 s, 30000 is safe"
    )]
    ForwarderTimeout(u64),
}

/// What the ingest has seen and done since it started; plain counters for metrics and tests.
#[derive(Debug, Default)]
pub struct GwmpStats {
    /// Datagrams received, good or bad.
    pub datagrams: AtomicU64,
    /// Datagrams dropped whole: bad version or identifier, truncated, bad JSON, or a
    /// server-to-forwarder type sent to us.
    pub malformed: AtomicU64,
    /// Datagrams dropped because their gateway EUI is not `gateway_id` (or the pinned one).
    pub foreign_gateway: AtomicU64,
    /// Datagrams dropped because they came from an IP address other than the pinned forwarder's.
    pub foreign_source: AtomicU64,
    /// PULL_DATA from a new port of the pinned forwarder while its current one is alive.
    pub pull_data_refused: AtomicU64,
    /// TX_ACKs dropped because they came from another address than the PULL_RESP went to.
    pub tx_ack_refused: AtomicU64,
    /// Times the downlink address moved to a new port after the old one went silent.
    pub forwarder_moves: AtomicU64,
    /// The latest datagram refused for its source (any of the four counters above).
    pub last_refused: Mutex<Option<RefusedSource>>,
    /// The pinned forwarder, once one was heard.
    pub forwarder: Mutex<Option<ForwarderView>>,
    /// PUSH_DATA accepted (and acknowledged).
    pub push_data: AtomicU64,
    /// PULL_DATA accepted (and acknowledged).
    pub pull_data: AtomicU64,
    /// `rxpk`s handed to the pipeline as uplinks.
    pub uplinks: AtomicU64,
    /// `rxpk`s refused (bad base64, missing or implausible field); the rest of their datagram is kept.
    pub rxpk_rejected: AtomicU64,
    /// Uplinks whose forwarder `time` was unusable and replaced by ours.
    pub time_replaced: AtomicU64,
    /// PULL_RESPs sent.
    pub downlinks_sent: AtomicU64,
    /// Downlinks refused because no forwarder had sent PULL_DATA yet.
    pub downlinks_without_forwarder: AtomicU64,
    /// Downlinks refused `TooLate` before the forwarder saw them: their counter time had passed.
    pub downlinks_too_late: AtomicU64,
    /// TX_ACKs matched to a downlink.
    pub tx_acks: AtomicU64,
    /// Downlinks with no TX_ACK in time (answered InternalError).
    pub tx_ack_timeouts: AtomicU64,
    /// TX_ACKs whose token matches no waiting downlink (late, or duplicated).
    pub unknown_tx_acks: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// A datagram refused for where it came from, for the status page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefusedSource {
    pub from: SocketAddr,
    pub gateway_id: Eui64,
    /// `foreign_source`, `foreign_gateway`, `pull_data_refused` or `tx_ack_refused`.
    pub reason: &'static str,
    pub at: SystemTime,
}

/// The pinned packet forwarder as the status page shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForwarderView {
    pub ip: IpAddr,
    pub gateway_id: Option<Eui64>,
    /// Where downlinks go (its latest accepted PULL_DATA), once it pulled.
    pub downlink_addr: Option<SocketAddr>,
    /// Its GWMP version (1 has no TX_ACK).
    pub version: Option<u8>,
}

impl GwmpStats {
    /// The latest refused source, if any.
    pub fn last_refused(&self) -> Option<RefusedSource> {
        self.last_refused.lock().ok().and_then(|g| g.clone())
    }

    /// The pinned forwarder, if one was heard.
    pub fn forwarder(&self) -> Option<ForwarderView> {
        self.forwarder.lock().ok().and_then(|g| g.clone())
    }
}

/// A view of a (running) ingest: its counters and the address it listens on.
#[derive(Clone, Debug)]
pub struct GwmpHandle {
    stats: Arc<GwmpStats>,
    bound: watch::Receiver<Option<SocketAddr>>,
}

impl GwmpHandle {
    /// The ingest's counters.
    pub fn stats(&self) -> &GwmpStats {
        &self.stats
    }

    /// The bound UDP address, once the ingest listens; `None` if it stopped before binding.
    pub async fn local_addr(&mut self) -> Option<SocketAddr> {
        self.bound.wait_for(Option::is_some).await.ok().and_then(|a| *a)
    }
}

/// The GWMP ingest radio source; `start` binds the socket and serves the forwarder.
#[derive(Debug)]
pub struct GwmpIngest {
    config: GwmpConfig,
    stats: Arc<GwmpStats>,
    bound: watch::Sender<Option<SocketAddr>>,
}

impl GwmpIngest {
    /// An ingest for a configuration that passes its checks (it binds nothing yet).
    pub fn new(config: GwmpConfig) -> Result<GwmpIngest, GwmpError> {
        if !(1..=60_000).contains(&config.tx_ack_timeout_ms) {
            return Err(GwmpError::TxAckTimeout(config.tx_ack_timeout_ms));
        }
        if !(1_000..=600_000).contains(&config.forwarder_timeout_ms) {
            return Err(GwmpError::ForwarderTimeout(config.forwarder_timeout_ms));
        }
        let (bound, _) = watch::channel(None);
        Ok(GwmpIngest { config, stats: Arc::default(), bound })
    }

    /// Counters and bound address, readable while the ingest runs.
    pub fn handle(&self) -> GwmpHandle {
        GwmpHandle { stats: self.stats.clone(), bound: self.bound.subscribe() }
    }

    async fn run(self, io: RadioIo) -> Result<(), RadioError> {
        let GwmpIngest { config, stats, bound } = self;
        let socket = UdpSocket::bind(config.bind).await.map_err(|e| {
            RadioError::Start(format!(
                "gwmp ingest: cannot listen on udp {}: {e}; is another packet-forwarder server bound to it?",
                config.bind
            ))
        })?;
        let local = socket
            .local_addr()
            .map_err(|e| RadioError::Start(format!("gwmp ingest: no local address: {e}")))?;
        bound.send_replace(Some(local));
        info!(%local, "gwmp ingest: listening for a packet forwarder");

        let RadioIo { uplinks, mut downlinks, tx_acks, mut taken } = io;
        // Frames handed to the pipeline so far (compared with `taken`).
        let mut handed: u64 = 0;
        let mut server = Server {
            socket,
            tx_ack_timeout: Duration::from_millis(config.tx_ack_timeout_ms),
            forwarder_timeout: Duration::from_millis(config.forwarder_timeout_ms),
            pinned_ip: config.forwarder,
            pinned_gateway: config.gateway_id,
            stats,
            forwarder: None,
            pending: HashMap::new(),
            counter: None,
            warn: LogLimiter::default(),
            tx_acks,
        };
        // One byte more than the largest datagram, so that nothing valid is cut short.
        let mut buf = vec![0u8; MAX_DATAGRAM_BYTES + 1];
        let mut downlinks_open = true;
        loop {
            let next_timeout = server.pending.values().map(|p| p.deadline).min();
            tokio::select! {
                biased;
                () = uplinks.closed() => return Ok(()),
                received = server.socket.recv_from(&mut buf) => match received {
                    Ok((len, from)) => {
                        let datagram = server.on_datagram(&buf[..len], from).await;
                        let first = handed + 1;
                        for frame in datagram.frames {
                            if uplinks.send(frame).await.is_err() {
                                return Ok(());
                            }
                            handed += 1;
                            bump(&server.stats.uplinks);
                        }
                        // Acknowledged only once every frame of it is stored (in the journals'
                        // RAM stage at least): a crash after the PUSH_ACK loses none of them.
                        if let Some(ack) = datagram.push_ack {
                            if server.wait_taken(taken.as_mut(), first, handed).await {
                                server.reply(ack, from).await;
                            }
                        }
                    }
                    Err(e) => {
                        if let Some(held) = server.warn.allow("recv") {
                            warn!(held_back = held, "gwmp ingest: receive failed: {e}");
                        }
                        // Do not spin on a persistent socket error.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
                downlink = downlinks.recv(), if downlinks_open => match downlink {
                    Some(d) => server.on_downlink(d).await,
                    None => downlinks_open = false,
                },
                () = tokio::time::sleep_until(next_timeout.unwrap_or_else(Instant::now)), if next_timeout.is_some() => {
                    server.expire_tx_acks().await;
                }
            }
        }
    }
}

impl RadioSource for GwmpIngest {
    fn kind(&self) -> &'static str {
        "gwmp"
    }

    fn start(self: Box<Self>, io: RadioIo) -> RadioTask {
        Box::pin(self.run(io))
    }
}

/// Where downlinks go: the pinned forwarder's PULL_DATA socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Forwarder {
    addr: SocketAddr,
    version: u8,
    /// Its latest PULL_DATA.
    heard: Instant,
}

/// A PULL_RESP waiting for its TX_ACK.
struct PendingTx {
    downlink_id: u32,
    deadline: Instant,
}

/// The running ingest's state, owned by its task.
struct Server {
    socket: UdpSocket,
    tx_ack_timeout: Duration,
    forwarder_timeout: Duration,
    /// The forwarder's IP, configured or first heard.
    pinned_ip: Option<IpAddr>,
    /// The forwarder's gateway EUI, configured or first heard.
    pinned_gateway: Option<Eui64>,
    stats: Arc<GwmpStats>,
    /// Where downlinks go, once the pinned forwarder pulled.
    forwarder: Option<Forwarder>,
    /// By PULL_RESP token.
    pending: HashMap<u16, PendingTx>,
    /// The forwarder's concentrator counter as its latest rxpk gave it, and when that
    /// arrived: what tells a downlink whose time has passed. An estimate that errs early
    /// (the rxpk's airtime and transit), so it never refuses one that is on time.
    counter: Option<(u32, Instant)>,
    warn: LogLimiter,
    tx_acks: mpsc::Sender<TxAck>,
}

/// What one datagram gave the pipeline.
#[derive(Default)]
struct Received {
    frames: Vec<UplinkFrame>,
    push_ack: Option<Datagram>,
}

impl Server {
    /// Wait until the pipeline has settled frames `first..=last`; true if it stored them all.
    /// False (and logged) if one of them could not be stored, or if they are not settled
    /// within [`TAKEN_TIMEOUT`]: then the datagram is not acknowledged.
    async fn wait_taken(
        &mut self,
        taken: Option<&mut watch::Receiver<Taken>>,
        first: u64,
        last: u64,
    ) -> bool {
        let Some(taken) = taken else { return true };
        match tokio::time::timeout(TAKEN_TIMEOUT, taken.wait_for(|t| t.stored(first, last).is_some())).await {
            Ok(Ok(t)) if t.stored(first, last) == Some(true) => true,
            Ok(Ok(_)) => {
                if let Some(held) = self.warn.allow("unstored") {
                    warn!(held_back = held, "gwmp ingest: the pipeline could not store a frame of this datagram; its PUSH_ACK is withheld");
                }
                false
            }
            // The pipeline is gone: nothing can be stored any more.
            Ok(Err(_)) => false,
            Err(_) => {
                if let Some(held) = self.warn.allow("taken") {
                    warn!(held_back = held, "gwmp ingest: the pipeline did not store a frame within {TAKEN_TIMEOUT:?}; its PUSH_ACK is withheld");
                }
                false
            }
        }
    }

    /// Handle one datagram; returns the uplinks it carried and, for a
    /// PUSH_DATA, the PUSH_ACK to send once they are handed over.
    async fn on_datagram(&mut self, bytes: &[u8], from: SocketAddr) -> Received {
        bump(&self.stats.datagrams);
        let dg = match Datagram::parse(bytes) {
            Ok(dg) => dg,
            Err(e) => {
                self.malformed(e.cause(), from, &e);
                return Received::default();
            }
        };
        let (version, token) = (dg.version, dg.token);
        match dg.packet {
            Packet::PushData { gateway_id, rxpk, stat } => {
                if !self.accepts(gateway_id, from) {
                    return Received::default();
                }
                bump(&self.stats.push_data);
                if stat.is_some() {
                    debug!(%gateway_id, "gwmp ingest: forwarder status ignored (berrygw reports its own)");
                }
                let now = SystemTime::now();
                let mut frames = Vec::with_capacity(rxpk.len());
                for r in &rxpk {
                    match r.to_uplink(now) {
                        Ok((frame, when)) => {
                            if when == RxTime::Replaced {
                                bump(&self.stats.time_replaced);
                                if let Some(held) = self.warn.allow("time") {
                                    warn!(%gateway_id, time = ?r.time, held_back = held, "gwmp ingest: forwarder time unusable (unparsable or over a day off our clock); using ours");
                                }
                            }
                            frames.push(frame);
                        }
                        Err(e) => {
                            bump(&self.stats.rxpk_rejected);
                            if let Some(held) = self.warn.allow(e.cause()) {
                                warn!(%gateway_id, %from, held_back = held, "gwmp ingest: rxpk dropped: {e}");
                            }
                        }
                    }
                }
                if let Some(last) = frames.last() {
                    self.counter = Some((last.counter_us, Instant::now()));
                }
                Received { frames, push_ack: Some(Datagram { version, token, packet: Packet::PushAck }) }
            }
            Packet::PullData { gateway_id } => {
                if !self.accepts(gateway_id, from) {
                    return Received::default();
                }
                let now = Instant::now();
                match self.forwarder {
                    Some(current) if current.addr != from => {
                        let silent = now.saturating_duration_since(current.heard);
                        if silent < self.forwarder_timeout {
                            // No PULL_ACK: the live forwarder keeps its downlinks.
                            self.refuse("pull_data_refused", from, gateway_id);
                            return Received::default();
                        }
                        bump(&self.stats.forwarder_moves);
                        warn!(%gateway_id, old = %current.addr, new = %from, silent_ms = silent.as_millis() as u64,
                            "gwmp ingest: packet forwarder pulls from a new port after going silent (restarted?); downlinks go there now");
                    }
                    Some(current) if current.version != version => {
                        info!(%gateway_id, %from, version, "gwmp ingest: packet forwarder changed its GWMP version");
                    }
                    Some(_) => {}
                    None => {
                        info!(%gateway_id, %from, version, "gwmp ingest: downlinks go to this packet forwarder")
                    }
                }
                bump(&self.stats.pull_data);
                self.reply(Datagram { version, token, packet: Packet::PullAck }, from).await;
                self.forwarder = Some(Forwarder { addr: from, version, heard: now });
                self.publish_forwarder();
                Received::default()
            }
            Packet::TxAck { gateway_id, ack } => {
                if !self.accepts(gateway_id, from) {
                    return Received::default();
                }
                if self.forwarder.map(|f| f.addr) != Some(from) {
                    self.refuse("tx_ack_refused", from, gateway_id);
                    return Received::default();
                }
                let Some(pending) = self.pending.remove(&token) else {
                    bump(&self.stats.unknown_tx_acks);
                    debug!(token, "gwmp ingest: TX_ACK for no waiting downlink (late or duplicate)");
                    return Received::default();
                };
                bump(&self.stats.tx_acks);
                let status = ack.status();
                if status == TxStatus::InternalError && ack.error.as_deref() != Some("INTERNAL_ERROR") {
                    if let Some(held) = self.warn.allow("tx_ack_error") {
                        warn!(error = ?ack.error, held_back = held, "gwmp ingest: unknown TX_ACK error, reported as INTERNAL_ERROR");
                    }
                }
                if let Some(w) = &ack.warn {
                    debug!(downlink_id = pending.downlink_id, warn = %w, value = ?ack.value, "gwmp ingest: forwarder transmitted with a warning");
                }
                self.answer(pending.downlink_id, status).await;
                Received::default()
            }
            other @ (Packet::PushAck | Packet::PullAck | Packet::PullResp { .. }) => {
                let name = other.identifier().name();
                self.malformed("unexpected", from, &format_args!("{name} is sent by servers, not to them"));
                Received::default()
            }
        }
    }

    /// Whether a datagram comes from the pinned forwarder (IP address and gateway EUI);
    /// pins the first one heard. Counts, remembers and logs a refusal.
    fn accepts(&mut self, gateway_id: Eui64, from: SocketAddr) -> bool {
        let ip = from.ip().to_canonical();
        if self.pinned_ip.is_some_and(|pinned| pinned.to_canonical() != ip) {
            self.refuse("foreign_source", from, gateway_id);
            return false;
        }
        if self.pinned_gateway.is_some_and(|pinned| pinned != gateway_id) {
            self.refuse("foreign_gateway", from, gateway_id);
            return false;
        }
        if self.pinned_ip.is_none() || self.pinned_gateway.is_none() {
            info!(%gateway_id, %ip, "gwmp ingest: packet forwarder pinned; datagrams from any other address or EUI are dropped until restart");
            self.pinned_ip = Some(ip);
            self.pinned_gateway = Some(gateway_id);
            self.publish_forwarder();
        }
        true
    }

    /// Drops a datagram for its source: counted by `reason`, remembered, logged (limited).
    fn refuse(&mut self, reason: &'static str, from: SocketAddr, gateway_id: Eui64) {
        let counter = match reason {
            "foreign_gateway" => &self.stats.foreign_gateway,
            "pull_data_refused" => &self.stats.pull_data_refused,
            "tx_ack_refused" => &self.stats.tx_ack_refused,
            _ => &self.stats.foreign_source,
        };
        bump(counter);
        if let Ok(mut last) = self.stats.last_refused.lock() {
            *last = Some(RefusedSource { from, gateway_id, reason, at: SystemTime::now() });
        }
        if let Some(held) = self.warn.allow(reason) {
            let forwarder = self.forwarder.map(|f| f.addr.to_string()).unwrap_or_else(|| "none yet".into());
            warn!(%gateway_id, %from, ?self.pinned_ip, ?self.pinned_gateway, %forwarder, held_back = held,
                "gwmp ingest: datagram from a source other than the pinned packet forwarder dropped ({reason})");
        }
    }

    /// Publishes the pinned forwarder for the status page.
    fn publish_forwarder(&self) {
        let Some(ip) = self.pinned_ip else { return };
        if let Ok(mut view) = self.stats.forwarder.lock() {
            *view = Some(ForwarderView {
                ip,
                gateway_id: self.pinned_gateway,
                downlink_addr: self.forwarder.map(|f| f.addr),
                version: self.forwarder.map(|f| f.version),
            });
        }
    }

    fn malformed(&mut self, cause: &'static str, from: SocketAddr, what: &dyn std::fmt::Display) {
        bump(&self.stats.malformed);
        if let Some(held) = self.warn.allow(cause) {
            warn!(%from, held_back = held, "gwmp ingest: datagram dropped: {what}");
        }
    }

    async fn reply(&mut self, dg: Datagram, to: SocketAddr) {
        let sent = match dg.encode() {
            Ok(bytes) => self.socket.send_to(&bytes, to).await.map(drop).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = sent {
            if let Some(held) = self.warn.allow("send") {
                warn!(%to, held_back = held, "gwmp ingest: sending {} failed: {e}", dg.packet.identifier().name());
            }
        }
    }

    async fn on_downlink(&mut self, d: DownlinkFrame) {
        let Some(fwd) = self.forwarder else {
            bump(&self.stats.downlinks_without_forwarder);
            if let Some(held) = self.warn.allow("no_forwarder") {
                warn!(
                    downlink_id = d.downlink_id,
                    held_back = held,
                    "gwmp ingest: downlink refused: no packet forwarder has sent PULL_DATA yet"
                );
            }
            return self.answer(d.downlink_id, TxStatus::InternalError).await;
        };
        // A counter time that has passed (a replayed uplink's answer) never reaches the forwarder:
        // a GWMP v1 forwarder would send it a counter turn (71 minutes) late, or at once.
        if let (TxTiming::Counter(_), Some((counter, at))) = (d.timing, self.counter) {
            let counter_now = counter.wrapping_add(at.elapsed().as_micros() as u32);
            if d.timing.status_at(counter_now, SystemTime::now()) == TxStatus::TooLate {
                bump(&self.stats.downlinks_too_late);
                debug!(downlink_id = d.downlink_id, "gwmp ingest: downlink refused, its time has passed");
                return self.answer(d.downlink_id, TxStatus::TooLate).await;
            }
        }
        let token = self.fresh_token();
        let dg = Datagram {
            version: fwd.version,
            token,
            packet: Packet::PullResp { txpk: TxPk::from_downlink(&d) },
        };
        let sent = match dg.encode() {
            Ok(bytes) => self.socket.send_to(&bytes, fwd.addr).await.map(drop).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = sent {
            if let Some(held) = self.warn.allow("send") {
                warn!(to = %fwd.addr, held_back = held, "gwmp ingest: sending PULL_RESP failed: {e}");
            }
            return self.answer(d.downlink_id, TxStatus::InternalError).await;
        }
        bump(&self.stats.downlinks_sent);
        debug!(downlink_id = d.downlink_id, token, to = %fwd.addr, "gwmp ingest: PULL_RESP sent");
        if fwd.version == PROTOCOL_V1 {
            // Version 1 has no TX_ACK: handing the frame over is all we will ever know,
            // which is not the same as knowing it went out.
            self.answer(d.downlink_id, TxStatus::Unconfirmed).await;
        } else {
            let deadline = Instant::now() + self.tx_ack_timeout;
            self.pending.insert(token, PendingTx { downlink_id: d.downlink_id, deadline });
        }
    }

    /// A token no waiting PULL_RESP uses.
    fn fresh_token(&self) -> u16 {
        loop {
            let token = rand::random();
            if !self.pending.contains_key(&token) {
                return token;
            }
        }
    }

    async fn expire_tx_acks(&mut self) {
        let now = Instant::now();
        let expired: Vec<u16> =
            self.pending.iter().filter(|(_, p)| p.deadline <= now).map(|(token, _)| *token).collect();
        for token in expired {
            let Some(p) = self.pending.remove(&token) else { continue };
            bump(&self.stats.tx_ack_timeouts);
            if let Some(held) = self.warn.allow("tx_ack_timeout") {
                warn!(
                    downlink_id = p.downlink_id,
                    held_back = held,
                    "gwmp ingest: no TX_ACK from the packet forwarder in time; downlink reported as failed"
                );
            }
            self.answer(p.downlink_id, TxStatus::InternalError).await;
        }
    }

    async fn answer(&mut self, downlink_id: u32, status: TxStatus) {
        if self.tx_acks.send(TxAck { downlink_id, status }).await.is_err() {
            debug!("gwmp ingest: nobody listens for tx acks any more");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{CodeRate, CrcStatus, Frequency, Modulation};
    use tokio::task::JoinHandle;

    /// Guard against a hung test, not a performance bound.
    const HANG_GUARD: Duration = Duration::from_secs(20);
    const FORWARDER_EUI: [u8; 8] = [0xaa, 0x55, 0x5a, 0, 0, 0, 0, 0x01];

    struct Harness {
        uplinks: mpsc::Receiver<UplinkFrame>,
        downlinks: mpsc::Sender<DownlinkFrame>,
        tx_acks: mpsc::Receiver<TxAck>,
        handle: GwmpHandle,
        task: JoinHandle<Result<(), RadioError>>,
        /// Plays the packet forwarder.
        forwarder: UdpSocket,
    }

    async fn start(config: GwmpConfig) -> Harness {
        start_with_room(config, 64).await
    }

    /// As `start`, with room for `room` uplinks between the ingest and the pipeline.
    async fn start_with_room(config: GwmpConfig, room: usize) -> Harness {
        start_with(config, room, None).await
    }

    /// As `start_with_room`, with the pipeline's account of stored frames when `taken` is set.
    async fn start_with(config: GwmpConfig, room: usize, taken: Option<watch::Receiver<Taken>>) -> Harness {
        let (up_tx, uplinks) = mpsc::channel(room);
        let (downlinks, down_rx) = mpsc::channel(8);
        let (ack_tx, tx_acks) = mpsc::channel(8);
        let ingest = Box::new(
            GwmpIngest::new(GwmpConfig { bind: "127.0.0.1:0".parse().expect("addr"), ..config })
                .expect("config"),
        );
        assert_eq!(ingest.kind(), "gwmp");
        let mut handle = ingest.handle();
        let task = tokio::spawn(ingest.start(RadioIo {
            uplinks: up_tx,
            downlinks: down_rx,
            tx_acks: ack_tx,
            taken,
        }));
        let server = tokio::time::timeout(HANG_GUARD, handle.local_addr())
            .await
            .expect("bound in time")
            .expect("bound");
        let forwarder = UdpSocket::bind("127.0.0.1:0").await.expect("client socket");
        forwarder.connect(server).await.expect("connect");
        Harness { uplinks, downlinks, tx_acks, handle, task, forwarder }
    }

    impl Harness {
        async fn send(&self, bytes: &[u8]) {
            self.forwarder.send(bytes).await.expect("send");
        }

        async fn recv(&self) -> Vec<u8> {
            let mut buf = vec![0; 65_536];
            let len = tokio::time::timeout(HANG_GUARD, self.forwarder.recv(&mut buf))
                .await
                .expect("an answer in time")
                .expect("recv");
            buf.truncate(len);
            buf
        }

        async fn uplink(&mut self) -> UplinkFrame {
            tokio::time::timeout(HANG_GUARD, self.uplinks.recv())
                .await
                .expect("uplink in time")
                .expect("open")
        }

        async fn tx_ack(&mut self) -> TxAck {
            tokio::time::timeout(HANG_GUARD, self.tx_acks.recv())
                .await
                .expect("tx ack in time")
                .expect("open")
        }

        async fn pull(&self, version: u8, token: u16) {
            let mut d = vec![version, (token >> 8) as u8, token as u8, 2];
            d.extend_from_slice(&FORWARDER_EUI);
            self.send(&d).await;
            assert_eq!(self.recv().await, vec![version, (token >> 8) as u8, token as u8, 4], "PULL_ACK");
        }

        fn stat(&self, counter: fn(&GwmpStats) -> &AtomicU64) -> u64 {
            counter(self.handle.stats()).load(Ordering::Relaxed)
        }
    }

    fn push_data(token: u16, eui: [u8; 8], json: &str) -> Vec<u8> {
        let mut d = vec![2, (token >> 8) as u8, token as u8, 0];
        d.extend_from_slice(&eui);
        d.extend_from_slice(json.as_bytes());
        d
    }

    /// A PUSH_ACK tells the forwarder its frames are safe: it goes out only once the pipeline
    /// has stored them, and never for a datagram one of whose frames it failed to store.
    #[tokio::test]
    async fn a_push_data_is_acknowledged_only_once_the_pipeline_stored_its_frames() {
        let (pipeline, taken) = watch::channel(Taken::default());
        let mut h = start_with(GwmpConfig::default(), 64, Some(taken)).await;
        let two = format!(r#"{{"rxpk":[{},{}]}}"#, rxpk("AQID"), rxpk("AQID"));

        h.send(&push_data(1, FORWARDER_EUI, &two)).await;
        h.uplink().await;
        h.uplink().await;
        pipeline.send_modify(|t| t.handled = 1);
        // Not yet: the second frame is not settled. Settling it releases the PUSH_ACK.
        pipeline.send_modify(|t| t.handled = 2);
        assert_eq!(h.recv().await, vec![2, 0, 1, 1], "both frames stored: PUSH_ACK");

        h.send(&push_data(2, FORWARDER_EUI, &two)).await;
        h.uplink().await;
        h.uplink().await;
        pipeline.send_modify(|t| {
            t.handled = 3;
            t.last_failed = 3;
        });
        pipeline.send_modify(|t| t.handled = 4);

        h.send(&push_data(3, FORWARDER_EUI, &one_rxpk("AQID"))).await;
        h.uplink().await;
        pipeline.send_modify(|t| t.handled = 5);
        assert_eq!(
            h.recv().await,
            vec![2, 0, 3, 1],
            "the next answer is datagram 3's: datagram 2's PUSH_ACK is withheld, one of its frames was not stored"
        );
    }

    fn one_rxpk(data: &str) -> String {
        format!(r#"{{"rxpk":[{}]}}"#, rxpk(data))
    }

    fn rxpk(data: &str) -> String {
        format!(
            r#"{{"tmst":42,"chan":0,"rfch":0,"freq":868.1,"stat":1,"modu":"LORA","datr":"SF7BW125","codr":"4/5","rssi":-60,"lsnr":9.0,"size":3,"data":"{data}"}}"#
        )
    }

    fn downlink(id: u32, timing: TxTiming) -> DownlinkFrame {
        DownlinkFrame {
            downlink_id: id,
            phy_payload: vec![0x20, 1, 2, 3, 4],
            frequency: Frequency(869_525_000),
            modulation: Modulation::Lora {
                spreading_factor: 12,
                bandwidth: 125_000,
                code_rate: CodeRate::Cr4_5,
            },
            power_dbm: 27,
            timing,
            invert_iq: true,
            board: 0,
            antenna: 0,
        }
    }

    #[tokio::test]
    async fn push_ack_comes_only_once_the_frames_are_in_the_pipelines_hands() {
        let mut h = start_with_room(GwmpConfig::default(), 1).await;
        h.send(&push_data(1, FORWARDER_EUI, &one_rxpk("AQID"))).await;
        assert_eq!(h.recv().await, vec![2, 0, 1, 1], "the first frame fits: PUSH_ACK");
        // The pipeline is full: the second frame waits, and so does its PUSH_ACK.
        h.send(&push_data(2, FORWARDER_EUI, &one_rxpk("AQID"))).await;
        let mut buf = [0u8; 64];
        let early = tokio::time::timeout(Duration::from_millis(300), h.forwarder.recv(&mut buf)).await;
        assert!(
            early.is_err(),
            "no PUSH_ACK for a frame not yet handed over: {:?}",
            early.map(|r| buf[..r.unwrap_or(0)].to_vec())
        );
        h.uplink().await;
        assert_eq!(h.recv().await, vec![2, 0, 2, 1], "PUSH_ACK once the pipeline took it");
        h.uplink().await;
    }

    #[tokio::test]
    async fn a_downlink_whose_counter_time_has_passed_is_refused_too_late_before_the_forwarder() {
        let mut h = start(GwmpConfig::default()).await;
        h.pull(2, 0x0102).await;
        h.send(&push_data(1, FORWARDER_EUI, &one_rxpk("AQID"))).await; // tmst 42
        h.uplink().await;
        assert_eq!(h.recv().await, vec![2, 0, 1, 1], "PUSH_ACK");
        // The answer to an uplink heard a second before the latest one: its time has passed.
        h.downlinks
            .send(downlink(601, TxTiming::Counter(42u32.wrapping_sub(1_000_000))))
            .await
            .expect("send");
        assert_eq!(h.tx_ack().await, TxAck { downlink_id: 601, status: TxStatus::TooLate });
        assert_eq!(h.stat(|s| &s.downlinks_too_late), 1);
        // RX2 of the latest uplink is still ahead: it goes to the forwarder.
        h.downlinks.send(downlink(602, TxTiming::Counter(42 + 2_000_000))).await.expect("send");
        let resp = h.recv().await;
        assert_eq!((resp[0], resp[3]), (2, 3), "PULL_RESP");
        assert_eq!(h.stat(|s| &s.downlinks_sent), 1, "only the one on time was sent");
    }

    #[tokio::test]
    async fn push_data_rxpks_become_uplinks_and_are_acknowledged_with_the_token() {
        let mut h = start(GwmpConfig::default()).await;
        let json = r#"{"rxpk":[
            {"time":"2030-01-02T03:04:05.678901Z","tmst":3512348611,"chan":2,"rfch":0,"freq":866.349812,"stat":1,"modu":"LORA","datr":"SF7BW125","codr":"4/6","rssi":-35,"lsnr":5.1,"size":4,"data":"QAECAw=="},
            {"tmst":100,"chan":7,"rfch":1,"freq":867.9,"stat":-1,"modu":"LORA","datr":"SF12BW125","codr":"4/5","rssi":-120,"rssis":-125,"lsnr":-17.5,"size":1,"data":"/w=="},
            {"tmst":200,"chan":8,"rfch":1,"freq":868.8,"stat":0,"modu":"FSK","datr":50000,"rssi":-75,"size":2,"data":"AAE="}
        ],"stat":{"time":"2014-01-12 08:59:28 GMT","rxnb":2,"rxok":2,"rxfw":2,"ackr":100.0,"dwnb":2,"txnb":2}}"#;
        let before = SystemTime::now();
        h.send(&push_data(0xbeef, FORWARDER_EUI, json)).await;
        assert_eq!(h.recv().await, vec![2, 0xbe, 0xef, 1], "PUSH_ACK echoes the token");

        let a = h.uplink().await;
        assert_eq!(a.phy_payload, vec![0x40, 1, 2, 3]);
        assert_eq!(a.frequency, Frequency(866_349_812));
        assert_eq!(
            a.modulation,
            Modulation::Lora { spreading_factor: 7, bandwidth: 125_000, code_rate: CodeRate::Cr4_6 }
        );
        assert_eq!(
            (a.rssi, a.snr, a.crc, a.channel, a.rf_chain, a.counter_us),
            (-35, 5.1, CrcStatus::Ok, 2, 0, 3_512_348_611)
        );
        // 2030 is more than a day from now: replaced by our clock, and counted.
        assert!(a.received_at >= before);

        let b = h.uplink().await;
        assert_eq!(
            (b.rssi, b.snr, b.crc, b.channel, b.rf_chain, b.counter_us),
            (-120, -17.5, CrcStatus::Bad, 7, 1, 100)
        );
        assert_eq!(b.phy_payload, vec![0xff]);
        assert!(b.received_at >= before, "no time: received now");

        let c = h.uplink().await;
        assert_eq!(c.modulation, Modulation::Fsk { datarate: 50_000, frequency_deviation: 0 });
        assert_eq!((c.crc, c.frequency), (CrcStatus::Missing, Frequency(868_800_000)));

        assert_eq!(h.stat(|s| &s.uplinks), 3);
        assert_eq!(h.stat(|s| &s.push_data), 1);
        assert_eq!(h.stat(|s| &s.time_replaced), 1);
    }

    #[tokio::test]
    async fn reported_receive_time_is_kept() {
        let mut h = start(GwmpConfig::default()).await;
        let t = SystemTime::now() - Duration::from_secs(90);
        let json = format!(
            r#"{{"rxpk":[{{"time":"{}","tmst":1,"freq":868.1,"stat":1,"modu":"LORA","datr":"SF7BW125","codr":"4/5","rssi":-60,"lsnr":9.0,"size":1,"data":"QA=="}}]}}"#,
            crate::gwmp::codec::rfc3339_micros(t).expect("writable")
        );
        h.send(&push_data(1, FORWARDER_EUI, &json)).await;
        let f = h.uplink().await;
        let skew = f.received_at.duration_since(t).unwrap_or_else(|e| e.duration());
        assert!(skew < Duration::from_millis(1), "µs precision: {skew:?}");
    }

    #[tokio::test]
    async fn downlink_goes_out_as_pull_resp_and_the_tx_ack_error_comes_back() {
        let mut h = start(GwmpConfig::default()).await;
        h.pull(2, 0x0102).await;
        // The uplink was at counter 4_294_000_000; RX window 5 s later wraps the 32-bit counter.
        h.downlinks
            .send(downlink(501, TxTiming::Counter(4_294_000_000u32.wrapping_add(5_000_000))))
            .await
            .expect("send");
        let resp = h.recv().await;
        assert_eq!((resp[0], resp[3]), (2, 3), "PULL_RESP");
        let txpk: serde_json::Value = serde_json::from_slice(&resp[4..]).expect("json");
        let txpk = &txpk["txpk"];
        assert_eq!(txpk["imme"], false);
        assert_eq!(txpk["tmst"], 4_032_704);
        assert_eq!(txpk["freq"], 869.525);
        assert_eq!(txpk["powe"], 27);
        assert_eq!(txpk["modu"], "LORA");
        assert_eq!(txpk["datr"], "SF12BW125");
        assert_eq!(txpk["codr"], "4/5");
        assert_eq!(txpk["ipol"], true);
        assert_eq!(txpk["size"], 5);
        assert_eq!(txpk["data"], "IAECAwQ=");
        assert_eq!(txpk["rfch"], 0);

        let mut ack = vec![2, resp[1], resp[2], 5];
        ack.extend_from_slice(&FORWARDER_EUI);
        ack.extend_from_slice(br#"{"txpk_ack":{"error":"TOO_LATE"}}"#);
        h.send(&ack).await;
        assert_eq!(h.tx_ack().await, TxAck { downlink_id: 501, status: TxStatus::TooLate });

        // GPS-timed and immediate downlinks, and a TX_ACK without error.
        h.downlinks.send(downlink(502, TxTiming::GpsEpoch(1_400_000_000_250_000))).await.expect("send");
        let resp = h.recv().await;
        let v: serde_json::Value = serde_json::from_slice(&resp[4..]).expect("json");
        assert_eq!(
            (&v["txpk"]["tmms"], &v["txpk"]["imme"]),
            (&serde_json::json!(1_400_000_000_250u64), &serde_json::json!(false))
        );
        let mut ack = vec![2, resp[1], resp[2], 5];
        ack.extend_from_slice(&FORWARDER_EUI);
        ack.extend_from_slice(br#"{"txpk_ack":{"error":"NONE"}}"#);
        h.send(&ack).await;
        assert_eq!(h.tx_ack().await, TxAck { downlink_id: 502, status: TxStatus::Ok });

        h.downlinks.send(downlink(503, TxTiming::Immediately)).await.expect("send");
        let resp = h.recv().await;
        let v: serde_json::Value = serde_json::from_slice(&resp[4..]).expect("json");
        assert_eq!(v["txpk"]["imme"], true);
        let mut ack = vec![2, resp[1], resp[2], 5];
        ack.extend_from_slice(&FORWARDER_EUI);
        ack.extend_from_slice(br#"{"txpk_ack":{"error":"GPS_UNLOCKED"}}"#);
        h.send(&ack).await;
        assert_eq!(h.tx_ack().await, TxAck { downlink_id: 503, status: TxStatus::GpsUnlocked });
        assert_eq!(h.stat(|s| &s.tx_acks), 3);
    }

    #[tokio::test]
    async fn downlink_without_a_forwarder_is_refused_at_once() {
        let mut h = start(GwmpConfig::default()).await;
        h.downlinks.send(downlink(7, TxTiming::Immediately)).await.expect("send");
        assert_eq!(h.tx_ack().await, TxAck { downlink_id: 7, status: TxStatus::InternalError });
        assert_eq!(h.stat(|s| &s.downlinks_without_forwarder), 1);
    }

    #[tokio::test]
    async fn silent_forwarder_downlink_is_reported_failed() {
        let mut h = start(GwmpConfig { tx_ack_timeout_ms: 50, ..GwmpConfig::default() }).await;
        h.pull(2, 1).await;
        h.downlinks.send(downlink(8, TxTiming::Immediately)).await.expect("send");
        let resp = h.recv().await;
        assert_eq!(resp[3], 3, "PULL_RESP sent");
        assert_eq!(h.tx_ack().await, TxAck { downlink_id: 8, status: TxStatus::InternalError });
        assert_eq!(h.stat(|s| &s.tx_ack_timeouts), 1);
        // A TX_ACK arriving after that is counted and ignored.
        let mut ack = vec![2, resp[1], resp[2], 5];
        ack.extend_from_slice(&FORWARDER_EUI);
        h.send(&ack).await;
        h.send(&push_data(9, FORWARDER_EUI, &one_rxpk("AQID"))).await;
        assert_eq!(h.recv().await, vec![2, 0, 9, 1]);
        assert_eq!(h.stat(|s| &s.unknown_tx_acks), 1);
    }

    #[tokio::test]
    async fn version_1_forwarder_downlinks_are_reported_unconfirmed_never_ok() {
        let mut h = start(GwmpConfig::default()).await;
        h.pull(1, 0x0a0b).await;
        h.downlinks.send(downlink(9, TxTiming::Counter(1000))).await.expect("send");
        let resp = h.recv().await;
        assert_eq!((resp[0], resp[3]), (1, 3), "PULL_RESP in version 1");
        assert_eq!(h.tx_ack().await, TxAck { downlink_id: 9, status: TxStatus::Unconfirmed });
    }

    /// A second socket on the same host, playing another process.
    async fn intruder(h: &Harness) -> UdpSocket {
        let server = h.forwarder.peer_addr().expect("peer");
        let s = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        s.connect(server).await.expect("connect");
        s
    }

    async fn recv_on(s: &UdpSocket) -> Vec<u8> {
        let mut buf = vec![0; 65_536];
        let len = tokio::time::timeout(HANG_GUARD, s.recv(&mut buf)).await.expect("in time").expect("recv");
        buf.truncate(len);
        buf
    }

    fn pull_data(version: u8, token: u16, eui: [u8; 8]) -> Vec<u8> {
        let mut d = vec![version, (token >> 8) as u8, token as u8, 2];
        d.extend_from_slice(&eui);
        d
    }

    #[tokio::test]
    async fn another_process_cannot_take_the_downlinks_of_a_live_forwarder() {
        let mut h = start(GwmpConfig::default()).await;
        h.pull(2, 1).await;
        let thief = intruder(&h).await;
        // Same IP, same EUI, version 1 (which would turn every downlink into a fake OK).
        thief.send(&pull_data(1, 2, FORWARDER_EUI)).await.expect("send");
        // Its TX_ACK for a token it guessed is refused too.
        let mut ack = vec![2, 0, 0, 5];
        ack.extend_from_slice(&FORWARDER_EUI);
        thief.send(&ack).await.expect("send");
        h.send(&push_data(3, FORWARDER_EUI, &one_rxpk("AQID"))).await;
        assert_eq!(h.recv().await, vec![2, 0, 3, 1]);

        h.downlinks.send(downlink(11, TxTiming::Immediately)).await.expect("send");
        let resp = h.recv().await;
        assert_eq!((resp[0], resp[3]), (2, 3), "the PULL_RESP went to the pinned forwarder, in version 2");
        let mut thief_ack = vec![2, resp[1], resp[2], 5];
        thief_ack.extend_from_slice(&FORWARDER_EUI);
        thief.send(&thief_ack).await.expect("send");
        let mut ack = vec![2, resp[1], resp[2], 5];
        ack.extend_from_slice(&FORWARDER_EUI);
        ack.extend_from_slice(br#"{"txpk_ack":{"error":"TOO_LATE"}}"#);
        h.send(&ack).await;
        assert_eq!(
            h.tx_ack().await,
            TxAck { downlink_id: 11, status: TxStatus::TooLate },
            "only the forwarder's TX_ACK counts"
        );
        assert_eq!(h.stat(|s| &s.pull_data_refused), 1);
        assert_eq!(h.stat(|s| &s.tx_ack_refused), 2);
        let refused = h.handle.stats().last_refused().expect("remembered");
        assert_eq!((refused.from, refused.reason), (thief.local_addr().expect("addr"), "tx_ack_refused"));
        let view = h.handle.stats().forwarder().expect("pinned");
        assert_eq!(view.downlink_addr, Some(h.forwarder.local_addr().expect("addr")));
        assert_eq!(view.version, Some(2));
        let mut buf = [0u8; 64];
        assert!(thief.try_recv(&mut buf).is_err(), "the intruder got no PULL_ACK and no downlink");
    }

    #[tokio::test]
    async fn a_restarted_forwarder_gets_the_downlinks_once_its_old_port_is_silent() {
        let h = start(GwmpConfig { forwarder_timeout_ms: 1000, ..GwmpConfig::default() }).await;
        h.pull(2, 1).await;
        let restarted = intruder(&h).await;
        // Keep trying from the new port, as lora_pkt_fwd does every keepalive.
        let answer = loop {
            restarted.send(&pull_data(2, 7, FORWARDER_EUI)).await.expect("send");
            let mut buf = vec![0; 64];
            match tokio::time::timeout(Duration::from_millis(200), restarted.recv(&mut buf)).await {
                Ok(Ok(len)) => break buf[..len].to_vec(),
                _ => continue,
            }
        };
        assert_eq!(answer, vec![2, 0, 7, 4], "PULL_ACK once the old port went silent");
        h.downlinks.send(downlink(12, TxTiming::Immediately)).await.expect("send");
        assert_eq!(recv_on(&restarted).await[3], 3, "PULL_RESP to the new port");
        assert_eq!(h.stat(|s| &s.forwarder_moves), 1);
        assert!(h.stat(|s| &s.pull_data_refused) >= 1);
    }

    #[tokio::test]
    async fn first_forwarder_heard_is_pinned_and_others_are_dropped() {
        let mut h = start(GwmpConfig::default()).await;
        h.send(&push_data(1, FORWARDER_EUI, &one_rxpk("AQID"))).await;
        assert_eq!(h.recv().await, vec![2, 0, 1, 1]);
        assert_eq!(h.uplink().await.phy_payload, vec![1, 2, 3]);
        // Another EUI, even from the same address, is not the forwarder.
        h.send(&push_data(2, [9; 8], &one_rxpk("BAUG"))).await;
        h.send(&pull_data(2, 3, [9; 8])).await;
        h.send(&push_data(4, FORWARDER_EUI, &one_rxpk("BwgJ"))).await;
        assert_eq!(h.recv().await, vec![2, 0, 4, 1], "only the pinned gateway is answered");
        assert_eq!(h.uplink().await.phy_payload, vec![7, 8, 9]);
        assert_eq!(h.stat(|s| &s.foreign_gateway), 2);
        let view = h.handle.stats().forwarder().expect("pinned");
        assert_eq!(
            (view.ip, view.gateway_id),
            ("127.0.0.1".parse().expect("ip"), Some(Eui64(FORWARDER_EUI)))
        );
    }

    #[tokio::test]
    async fn datagrams_from_another_address_than_the_configured_forwarder_are_dropped() {
        let mut h =
            start(GwmpConfig { forwarder: Some("192.0.2.1".parse().expect("ip")), ..GwmpConfig::default() })
                .await;
        h.send(&push_data(1, FORWARDER_EUI, &one_rxpk("AQID"))).await;
        h.send(&pull_data(2, 2, FORWARDER_EUI)).await;
        tokio::time::timeout(HANG_GUARD, async {
            while h.stat(|s| &s.foreign_source) < 2 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("both refused");
        assert!(h.uplinks.try_recv().is_err());
        assert_eq!(h.handle.stats().last_refused().map(|r| r.reason), Some("foreign_source"));
    }

    #[tokio::test]
    async fn garbage_datagrams_are_counted_and_dropped_and_the_next_good_one_works() {
        let mut h = start(GwmpConfig::default()).await;
        let mut noise = [0u8; 97];
        noise.iter_mut().enumerate().for_each(|(i, b)| *b = (i as u8).wrapping_mul(151).wrapping_add(7));
        let mut wrong_version = push_data(1, FORWARDER_EUI, &one_rxpk("AQID"));
        wrong_version[0] = 3;
        let garbage: [&[u8]; 7] = [
            &noise,
            &wrong_version,
            &[2, 0],                                               // truncated header
            &[2, 0, 1, 0, 0xaa, 0x55],                             // truncated EUI
            &push_data(2, FORWARDER_EUI, "{\"rxpk\":[{\"tmst\":"), // bad JSON
            &[2, 0, 3, 9, 1, 2, 3, 4, 5, 6, 7, 8],                 // unknown identifier
            &[2, 0, 4, 1],                                         // PUSH_ACK: servers send those
        ];
        for g in garbage {
            h.send(g).await;
        }
        // Bad base64 and absurd values spoil only their rxpk: the datagram is acknowledged.
        h.send(&push_data(0x0505, FORWARDER_EUI, &one_rxpk("!!not base64!!"))).await;
        assert_eq!(h.recv().await, vec![2, 5, 5, 1]);
        h.send(&push_data(0x0606, FORWARDER_EUI, &one_rxpk("AQID").replace("868.1", "1e9"))).await;
        assert_eq!(h.recv().await, vec![2, 6, 6, 1]);

        h.send(&push_data(0x0707, FORWARDER_EUI, &one_rxpk("AQID"))).await;
        assert_eq!(h.recv().await, vec![2, 7, 7, 1], "only the good datagrams were answered");
        assert_eq!(h.uplink().await.phy_payload, vec![1, 2, 3]);
        assert_eq!(h.stat(|s| &s.malformed), garbage.len() as u64);
        assert_eq!(h.stat(|s| &s.rxpk_rejected), 2);
        assert_eq!(h.stat(|s| &s.uplinks), 1);
        assert!(h.uplinks.try_recv().is_err(), "nothing else reached the pipeline");
    }

    #[tokio::test]
    async fn datagrams_from_another_gateway_are_dropped_when_filtered() {
        let mut h =
            start(GwmpConfig { gateway_id: Some(Eui64(FORWARDER_EUI)), ..GwmpConfig::default() }).await;
        h.send(&push_data(1, [9; 8], &one_rxpk("AQID"))).await;
        h.send(&push_data(2, FORWARDER_EUI, &one_rxpk("BAUG"))).await;
        assert_eq!(h.recv().await, vec![2, 0, 2, 1], "only our gateway is answered");
        assert_eq!(h.uplink().await.phy_payload, vec![4, 5, 6]);
        assert_eq!(h.stat(|s| &s.foreign_gateway), 1);
    }

    #[tokio::test]
    async fn bind_failure_is_a_start_error() {
        let taken = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let config = GwmpConfig { bind: taken.local_addr().expect("addr"), ..GwmpConfig::default() };
        let (up_tx, _up_rx) = mpsc::channel(1);
        let (_down_tx, down_rx) = mpsc::channel(1);
        let (ack_tx, _ack_rx) = mpsc::channel(1);
        let ingest = Box::new(GwmpIngest::new(config).expect("config"));
        let mut handle = ingest.handle();
        let err =
            ingest.start(RadioIo { uplinks: up_tx, downlinks: down_rx, tx_acks: ack_tx, taken: None }).await;
        assert!(matches!(err, Err(RadioError::Start(ref m)) if m.contains("cannot listen")), "{err:?}");
        assert_eq!(handle.local_addr().await, None);
    }

    #[tokio::test]
    async fn stops_when_the_pipeline_closes() {
        let h = start(GwmpConfig::default()).await;
        drop(h.uplinks);
        let r = tokio::time::timeout(HANG_GUARD, h.task).await.expect("stopped in time").expect("joined");
        assert!(r.is_ok());
    }

    #[test]
    fn config_defaults_and_checks() {
        let c: GwmpConfig = toml::from_str("").expect("empty is fine");
        assert_eq!(c, GwmpConfig::default());
        assert_eq!(c.bind, "127.0.0.1:1700".parse().expect("addr"));
        let c: GwmpConfig =
            toml::from_str("bind = \"0.0.0.0:1700\"\ngateway_id = \"aa555a0000000001\"").expect("parse");
        assert_eq!(c.gateway_id, Some(Eui64(FORWARDER_EUI)));
        assert!(toml::from_str::<GwmpConfig>("port = 1700").is_err(), "unknown keys refused");
        assert_eq!(
            GwmpIngest::new(GwmpConfig { tx_ack_timeout_ms: 0, ..c }).expect_err("zero"),
            GwmpError::TxAckTimeout(0)
        );
        assert_eq!(
            GwmpIngest::new(GwmpConfig { forwarder_timeout_ms: 10, ..c }).expect_err("too short"),
            GwmpError::ForwarderTimeout(10)
        );
        let c: GwmpConfig = toml::from_str("forwarder = \"10.0.0.2\"").expect("parse");
        assert_eq!(c.forwarder, Some("10.0.0.2".parse().expect("ip")));
    }
}
