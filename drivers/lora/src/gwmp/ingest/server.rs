//! The running ingest's state, owned by its task, and the bookkeeping of one datagram
//! or one downlink at a time: parsing a datagram and checking it comes from the pinned
//! forwarder (pinning the first one heard), PUSH_DATA `rxpk`s to uplink frames,
//! PULL_DATA (where downlinks go, moved only from a silent port), PULL_RESP out with a
//! fresh token and its TX_ACK (or its timeout) back as the `TxAck`, and waiting for the
//! pipeline to store a datagram's frames before its PUSH_ACK.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use berrygw_core::LogLimiter;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::stats::{bump, ForwarderView, GwmpStats, RefusedSource};
use crate::frame::{DownlinkFrame, TxAck, TxStatus, TxTiming, UplinkFrame};
use crate::gwmp::codec::{Datagram, Packet, RxTime, TxPk, PROTOCOL_V1};
use crate::phy::Eui64;
use crate::radio::Taken;

/// Longest wait for the pipeline to store a datagram's frames before its PUSH_ACK is withheld.
const TAKEN_TIMEOUT: Duration = Duration::from_secs(5);

/// Where downlinks go: the pinned forwarder's PULL_DATA socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Forwarder {
    addr: SocketAddr,
    version: u8,
    /// Its latest PULL_DATA.
    heard: Instant,
}

/// A PULL_RESP waiting for its TX_ACK.
pub(super) struct PendingTx {
    downlink_id: u32,
    pub(super) deadline: Instant,
}

/// The running ingest's state, owned by its task.
pub(super) struct Server {
    pub(super) socket: super::socket::IngestSocket,
    pub(super) tx_ack_timeout: Duration,
    pub(super) forwarder_timeout: Duration,
    /// The forwarder's IP, configured or first heard.
    pub(super) pinned_ip: Option<IpAddr>,
    /// The forwarder's gateway EUI, configured or first heard.
    pub(super) pinned_gateway: Option<Eui64>,
    pub(super) stats: Arc<GwmpStats>,
    /// Where downlinks go, once the pinned forwarder pulled.
    pub(super) forwarder: Option<Forwarder>,
    /// By PULL_RESP token.
    pub(super) pending: HashMap<u16, PendingTx>,
    /// The forwarder's concentrator counter as its latest rxpk gave it, and when that
    /// arrived: what tells a downlink whose time has passed. An estimate that errs early
    /// (the rxpk's airtime and transit), so it never refuses one that is on time.
    pub(super) counter: Option<(u32, Instant)>,
    pub(super) warn: LogLimiter,
    pub(super) tx_acks: mpsc::Sender<TxAck>,
}

/// What one datagram gave the pipeline.
#[derive(Default)]
pub(super) struct Received {
    pub(super) frames: Vec<UplinkFrame>,
    pub(super) push_ack: Option<Datagram>,
}

impl Server {
    /// Wait until the pipeline has settled frames `first..=last`; true if it stored them all.
    /// False (and logged) if one of them could not be stored, or if they are not settled
    /// within [`TAKEN_TIMEOUT`]: then the datagram is not acknowledged.
    pub(super) async fn wait_taken(
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
    pub(super) async fn on_datagram(&mut self, bytes: &[u8], from: SocketAddr) -> Received {
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

    pub(super) async fn reply(&mut self, dg: Datagram, to: SocketAddr) {
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

    pub(super) async fn on_downlink(&mut self, d: DownlinkFrame) {
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

    pub(super) async fn expire_tx_acks(&mut self) {
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
