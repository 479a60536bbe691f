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

mod config;
mod socket;
#[cfg(test)]
mod tests;
mod translate;
mod window;

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Context};
use berrygw_core::LogLimiter;
use berrygw_lora::gwmp::codec::{self, Datagram, Packet, PROTOCOL_V2};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info};

use crate::journal::{Journal, Seq};
use crate::sink::chirpstack::{self};
use crate::sink::pace::{Next, Pacer};
use crate::sink::read_ahead::ReadAhead;
use crate::sink::reconnect::{Backoff, Failure, Reconnect, Sink, Stopped};
use crate::sink::{SinkCounters, SinkRadioIo};

pub use config::{LnsAddress, SemtechUdpSettings, SemtechUdpSinkConfig};
use socket::ServerSocket;
use translate::pack;
pub use translate::{wire_object, WireObject};
use window::PushWindow;

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
    let sink = Sink { name: "semtech_udp", server: &settings.server, counters: &counters, journal: &journal };
    let backoff = Backoff::new(settings.reconnect_min, settings.reconnect_max);
    // UDP has no refusal to tell from silence: a dead server is tried again soon.
    let mut reconnect = Reconnect::new(sink, backoff, |_| Failure::Unreachable);
    loop {
        let ended = session(&settings, &journal, &counters, &mut radio, &mut shutdown, &mut carry).await;
        if reconnect.after(ended, &mut shutdown).await.is_break() {
            return;
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
) -> anyhow::Result<Stopped> {
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

    let mut link = ServerSocket {
        socket,
        s,
        counters,
        journal,
        heard: false,
        last_heard: Instant::now(),
        pull_token: None,
    };
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
                return Ok(Stopped);
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
