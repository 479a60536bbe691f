//! One socket to the network server: what comes back on it (PUSH_ACK, PULL_ACK,
//! PULL_RESP downlinks, garbage), the keepalive PULL_DATA, TX_ACK for the radio's
//! answers, and the short wait for PUSH_ACKs at shutdown.

use std::fmt;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use berrygw_lora::gwmp::codec::{Datagram, Packet, TxPk, TxPkAck, PROTOCOL_V1, PROTOCOL_V2};
use berrygw_lora::{TxAck, TxStatus, TxTiming};
use tokio::net::UdpSocket;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::window::PushWindow;
use super::{Carry, DownlinkOrigin, SemtechUdpSettings, DOWNLINK_MEMORY};
use crate::journal::{Journal, Seq};
use crate::sink::{SinkCounters, SinkRadioIo};

/// The socket to the server and what we know about the server's liveness.
pub(super) struct ServerSocket<'a> {
    pub(super) socket: UdpSocket,
    pub(super) s: &'a SemtechUdpSettings,
    pub(super) counters: &'a SinkCounters,
    /// Told when the server answers: its commit window is then the short one.
    pub(super) journal: &'a Journal,
    pub(super) heard: bool,
    pub(super) last_heard: Instant,
    pub(super) pull_token: Option<u16>,
}

impl ServerSocket<'_> {
    pub(super) fn heard_from_server(&mut self) {
        self.last_heard = Instant::now();
        if !self.heard {
            self.heard = true;
            self.counters.set_connected(true);
            self.journal.far_side(true);
            info!(server = %self.s.server, "semtech udp sink: the network server answers");
        }
    }

    pub(super) async fn pull(&mut self) -> anyhow::Result<()> {
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
    pub(super) async fn on_datagram(
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

    pub(super) fn bad(&self, carry: &mut Carry, cause: &'static str, what: &dyn fmt::Display) {
        self.counters.bad_commands.fetch_add(1, Ordering::Relaxed);
        if let Some(held) = carry.warn.allow(cause) {
            warn!(server = %self.s.server, held_back = held, "semtech udp sink: datagram from the network server dropped: {what}");
        }
    }

    pub(super) async fn on_pull_resp(
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
    pub(super) async fn tx_ack(&mut self, ack: TxAck, carry: &mut Carry) -> anyhow::Result<()> {
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
    pub(super) async fn drain_before_shutdown(
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
