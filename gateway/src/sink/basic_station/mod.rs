//! The `basic_station` sink (issue 16): berrygw as a LoRa Basics Station towards an LNS
//! (The Things Stack, AWS IoT Core for LoRaWAN, ThingPark, ChirpStack's gateway bridge),
//! fed from the journal like every sink, so uplinks heard while the LNS is unreachable are
//! sent when it is back, in order, with their original receive time.
//!
//! A session: ask router-info (`<tc_uri>/router-info`) where this router's muxs is, open
//! it, send `version`, take the `router_config` (checked: `berrygw_lora::station`), then
//! send uplinks as `jreq`/`updf`/`propdf` from the journal, each with `upinfo` (its
//! `rxtime` the original receive time, `RefTime` on the LNS's clock when the LNS gave its
//! `MuxTime`, and berrygw's seq as `upinfo.seq`). Records leave the journal once a
//! `timesync` round trip sent after them has come back on the same socket (`proof`).
//! `dnmsg` downlinks go to the radio (Class A RX1, RX2 if RX1 is refused; Class C at once;
//! Class B at GPS time) and are answered `dntxed` when the radio says sent. `runcmd` and
//! `rmtsh` are refused, always: the LNS gets no shell on a public network's gateway.
//!
//! With a CUPS server (`cups.rs`), the LNS's address and credentials come from CUPS, which
//! is asked at start, every `cups_interval_s`, and after three failed sessions in a row; a
//! set it hands over is tried and kept only once it has worked (`links.rs`).
//!
//! Files: `ws.rs` (the WebSocket client), `config.rs` (`[sinks.basic_station]`),
//! `creds.rs` (credential sets), `cups.rs` (the `update-info` exchange), `links.rs` (which
//! sets are in use, pending, kept), `plan.rs` (the LNS's channel plan on the concentrator),
//! `proof.rs` (when a record may leave the journal).

pub mod config;
pub mod creds;
pub mod cups;
pub mod links;
pub mod plan;
pub mod proof;
pub mod ws;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail};
use berrygw_core::LogLimiter;
use berrygw_lora::station::{self, Dnmsg, Downstream, RouterConfig, RouterInfo, UpContext, Window};
use berrygw_lora::{TxAck, TxStatus};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::journal::{Journal, Seq};
use crate::sink::chirpstack::{frame_of_record, RecordKind};
use crate::sink::read_ahead::ReadAhead;
use crate::sink::reconnect::{Backoff, Failure, Reconnect, Sink, Stopped};
use crate::sink::{SinkCounters, SinkRadioIo};

pub use config::{BasicStationSettings, BasicStationSinkConfig, Endpoint, RadioChannels};
use links::Links;
use proof::Proof;
use ws::{Message, WebSocket, WsUri};

/// How long the LNS has to answer router-info, the upgrade, or with `router_config`.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);
/// With nothing in flight, a `timesync` this often keeps the link checked.
const IDLE_TIMESYNC: Duration = Duration::from_secs(30);
/// A request unanswered this long: the LNS is gone; start over.
const DEAD_AFTER: Duration = Duration::from_secs(60);
/// Downlinks remembered for their `dntxed`.
const DOWNLINKS_KEPT: usize = 256;

/// State that outlives one socket.
struct Carry {
    /// Highest seq acknowledged to the journal by this task.
    acked: Seq,
    /// The radio session in `xtime` (1..=255): an xtime from another (a replayed uplink
    /// heard before berrygw or the concentrator restarted) is never taken for a counter of
    /// this one. A new one when the concentrator is retuned (its counter starts again).
    session: u8,
    /// Since when frames belong to `session`.
    started: SystemTime,
    next_downlink_id: u32,
    warn: LogLimiter,
    /// The credential sets (CUPS's, the LNS's).
    links: Links,
    /// Uplink channels outside the LNS's plan, each warned about once.
    off_plan: std::collections::HashSet<u32>,
}

/// The sink task: (ask CUPS,) discover, connect, send, reconnect with backoff, until
/// shutdown.
pub async fn run(
    settings: BasicStationSettings,
    journal: Journal,
    counters: Arc<SinkCounters>,
    mut radio: SinkRadioIo,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut carry = Carry {
        acked: journal.watch().borrow().acked,
        session: rand::random::<u8>().max(1),
        started: SystemTime::now(),
        next_downlink_id: rand::random::<u32>() | 1,
        warn: LogLimiter::default(),
        links: Links::open(&settings),
        off_plan: Default::default(),
    };
    let server = carry.links.describe();
    let sink = Sink { name: "basic_station", server: &server, counters: &counters, journal: &journal };
    let backoff = Backoff::new(settings.reconnect_min, settings.reconnect_max);
    let mut reconnect = Reconnect::new(sink, backoff, classify);
    loop {
        let asked = tokio::select! {
            asked = carry.links.ask_cups_if_due(&settings, &counters) => asked,
            _ = shutdown.changed() => return,
        };
        let Some(lns) = carry.links.lns().cloned() else {
            // Nothing to connect to until CUPS answers.
            let e = asked.err().unwrap_or_else(|| anyhow!("no LNS: CUPS gave none yet"));
            if reconnect.after(Err(e), &mut shutdown).await.is_break() {
                return;
            }
            continue;
        };
        if let Err(e) = asked {
            warn!("basic station sink: CUPS: {e:#}; the LNS set in use is kept");
        }
        let ended =
            session(&lns, &settings, &journal, &counters, &mut radio, &mut shutdown, &mut carry).await;
        carry.links.session_ended();
        if ended.as_ref().is_err_and(|e| e.is::<CupsDue>()) {
            // As Station does: the LNS link is closed while CUPS is asked, then opened
            // again (on the set CUPS handed over, if any). What was not proven is resent.
            reconnect.paused();
            continue;
        }
        if reconnect.after(ended, &mut shutdown).await.is_break() {
            return;
        }
    }
}

/// An answer that says no (a status other than 101 or 200, router-info's error, a bad
/// `router_config`): back off, rather than retry soon as after silence.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// A session ends when CUPS is due.
#[derive(Debug, thiserror::Error)]
#[error("CUPS is due")]
struct CupsDue;

/// Nothing answered (try again soon) or the far side answered and refused (back off).
fn classify(e: &anyhow::Error) -> Failure {
    if e.chain().any(|c| c.is::<Refused>()) {
        Failure::Refused
    } else {
        Failure::Unreachable
    }
}

/// Ask router-info where this router's traffic goes.
async fn discover(lns: &Endpoint<WsUri>, s: &BasicStationSettings) -> anyhow::Result<WsUri> {
    let uri = lns.uri.join("/router-info");
    let headers = lns.creds.headers();
    let mut ws = ws::connect(&uri, lns.tls.as_ref(), &headers, ANSWER_TIMEOUT).await?;
    ws.send_text(&station::router_info_request(s.router).to_string()).await?;
    let answer = tokio::time::timeout(ANSWER_TIMEOUT, async {
        loop {
            match ws.next().await? {
                Message::Text(t) => return anyhow::Ok(t),
                Message::Ping(p) => ws.pong(&p).await?,
                Message::Close(code) => bail!("router-info closed the connection ({code:?})"),
                _ => {}
            }
        }
    })
    .await
    .map_err(|_| anyhow!("router-info: no answer within {} s", ANSWER_TIMEOUT.as_secs()))??;
    ws.close().await;
    let refused = |why: String| anyhow::Error::new(Refused(why));
    let info = RouterInfo::parse(&answer).map_err(|e| refused(format!("router-info: {e}")))?;
    let muxs = WsUri::parse(&info.uri).map_err(|e| refused(format!("router-info's uri: {e:#}")))?;
    if !muxs.tls && !s.allow_plaintext && !berrygw_proto::broker::is_loopback_host(&muxs.host) {
        return Err(refused(format!(
            "router-info: {muxs} is ws:// to another host; refused without allow_plaintext"
        )));
    }
    if lns.uri.tls && !muxs.tls {
        return Err(refused(format!("router-info: {muxs} would drop the TLS of {}", lns.uri)));
    }
    Ok(muxs)
}

/// A downlink on the radio, waiting for its TxAck.
struct OnAir {
    dnmsg: Dnmsg,
    window: Window,
    xtime: i64,
}

/// One WebSocket's life.
async fn session(
    lns: &Endpoint<WsUri>,
    s: &BasicStationSettings,
    journal: &Journal,
    counters: &SinkCounters,
    radio: &mut SinkRadioIo,
    shutdown: &mut watch::Receiver<bool>,
    carry: &mut Carry,
) -> anyhow::Result<Stopped> {
    let muxs = discover(lns, s).await?;
    let mut ws = ws::connect(&muxs, lns.tls.as_ref(), &lns.creds.headers(), ANSWER_TIMEOUT).await?;
    let version = station::version_message(concat!("berrygw ", env!("CARGO_PKG_VERSION")), "berrygw", "");
    ws.send_text(&version.to_string()).await?;
    let mut plan = tokio::time::timeout(ANSWER_TIMEOUT, async {
        loop {
            match ws.next().await? {
                Message::Text(t) => match Downstream::parse(&t) {
                    Ok(Downstream::RouterConfig(cfg)) => return anyhow::Ok(cfg),
                    Ok(_) => debug!("basic station sink: a message before router_config, ignored"),
                    Err(e) => {
                        counters.bad_commands.fetch_add(1, Ordering::Relaxed);
                        return Err(Refused(format!("router_config: {e}")).into());
                    }
                },
                Message::Ping(p) => ws.pong(&p).await?,
                Message::Close(code) => {
                    bail!("the LNS closed the connection before router_config ({code:?})")
                }
                _ => {}
            }
        }
    })
    .await
    .map_err(|_| anyhow!("no router_config within {} s", ANSWER_TIMEOUT.as_secs()))??;
    take_channel_plan(&plan, s, carry).await?;
    // The LNS's clock against ours when it sent the plan: RefTime of each uplink.
    let mut mux_offset = plan.mux_time.map(|t| t - unix_secs(SystemTime::now()));
    info!(lns = %muxs, region = plan.region.name, "basic station sink: connected");
    // A set CUPS handed over has worked: kept now, not when this session ends.
    carry.links.lns_works();
    counters.set_connected(true);
    journal.far_side(true);

    let mut proof = Proof::default();
    let mut reader = ReadAhead::new(journal, carry.acked);
    let mut on_air: HashMap<u32, OnAir> = HashMap::new();
    let mut last_probe = Instant::now();
    loop {
        // Send what the journal holds, in order, while the proof window allows.
        let mut unsendable_up_to = None;
        while proof.may_send() {
            let Some(record) = reader.records.pop_front() else { break };
            match uplink_text(&record, &plan, carry, mux_offset) {
                Some(text) => {
                    ws.send_text(&text).await?;
                    proof.sent(record.seq);
                }
                // Stats and frames Station would not send (a CRC error, a DR outside the
                // plan, filtered by the LNS's JoinEUI/NetID lists): nothing to prove, they
                // leave the journal with the records around them.
                None => {
                    if proof.is_idle() {
                        unsendable_up_to = Some(record.seq);
                    } else {
                        proof.sent(record.seq);
                    }
                }
            }
        }
        if let Some(up_to) = unsendable_up_to.filter(|u| *u > carry.acked) {
            carry.acked = up_to;
            journal.ack(up_to);
        }
        let now = Instant::now();
        let due = now >= last_probe + s.proof_interval || proof.in_flight() == 0;
        if due {
            if let Some(txtime) = proof.probe(unix_secs(SystemTime::now())) {
                ws.send_text(&station::timesync_request(txtime).to_string()).await?;
                last_probe = now;
            }
        }
        if proof.waiting_since().is_some_and(|at| at.elapsed() > DEAD_AFTER) {
            bail!("no timesync answer for {} s", DEAD_AFTER.as_secs());
        }
        reader.refill();
        let next_probe = last_probe + if proof.unproven() { s.proof_interval } else { IDLE_TIMESYNC };

        tokio::select! {
            ready = reader.ready() => ready?,
            message = ws.next() => match message? {
                Message::Text(text) => {
                    match Downstream::parse(&text) {
                        Ok(Downstream::Timesync { txtime: Some(txtime), .. }) => {
                            if let Some(up_to) = proof.answered(txtime) {
                                if up_to > carry.acked {
                                    let n = up_to.0 - carry.acked.0;
                                    counters.forwarded.fetch_add(n, Ordering::Relaxed);
                                    carry.acked = up_to;
                                    journal.ack(up_to);
                                }
                            }
                        }
                        Ok(Downstream::Timesync { .. }) => {}
                        Ok(Downstream::RouterConfig(cfg)) => {
                            info!("basic station sink: a new router_config");
                            take_channel_plan(&cfg, s, carry).await?;
                            mux_offset = cfg.mux_time.map(|t| t - unix_secs(SystemTime::now())).or(mux_offset);
                            plan = cfg;
                        }
                        Ok(Downstream::Dnmsg(d)) => {
                            counters.downlinks_received.fetch_add(1, Ordering::Relaxed);
                            downlink(*d, &plan, radio, &mut on_air, carry, counters).await;
                        }
                        Ok(refused @ (Downstream::Runcmd | Downstream::Rmtsh | Downstream::Dnsched)) => {
                            counters.bad_commands.fetch_add(1, Ordering::Relaxed);
                            if let Some(held) = carry.warn.allow("refused") {
                                warn!(held_back = held, "basic station sink: the LNS sent {refused:?}; refused (remote commands are never run)");
                            }
                        }
                        Err(e) => {
                            counters.bad_commands.fetch_add(1, Ordering::Relaxed);
                            if let Some(held) = carry.warn.allow(e.kind()) {
                                warn!(held_back = held, "basic station sink: a message from the LNS refused: {e}");
                            }
                        }
                    }
                }
                Message::Ping(p) => ws.pong(&p).await?,
                Message::Pong(_) => {}
                Message::Binary(_) => {
                    counters.bad_commands.fetch_add(1, Ordering::Relaxed);
                    if let Some(held) = carry.warn.allow("binary") {
                        warn!(held_back = held, "basic station sink: a binary message from the LNS refused");
                    }
                }
                Message::Close(code) => bail!("the LNS closed the connection ({code:?})"),
            },
            Some(ack) = radio.tx_acks.recv() => {
                counters.tx_acks.fetch_add(1, Ordering::Relaxed);
                tx_ack(ack, &mut ws, radio, &mut on_air, &plan, carry).await?;
            }
            () = tokio::time::sleep_until(next_probe) => {
                // The idle check: a timesync even with nothing to prove.
                if !proof.unproven() {
                    let txtime = proof.ping(unix_secs(SystemTime::now()));
                    ws.send_text(&station::timesync_request(txtime).to_string()).await?;
                }
                last_probe = Instant::now();
            }
            () = sleep_until_some(carry.links.cups_due()) => {
                ws.close().await;
                return Err(CupsDue.into());
            }
            _ = shutdown.changed() => {
                ws.close().await;
                return Ok(Stopped);
            }
        }
    }
}

/// The LNS's channel plan: put on the concentrator (`plan::retune`) when berrygw may
/// tune it, else checked against the radio's. A retuned concentrator's counter starts
/// again: frames heard before it keep no xtime a downlink could use.
async fn take_channel_plan(
    plan: &RouterConfig,
    s: &BasicStationSettings,
    carry: &mut Carry,
) -> anyhow::Result<()> {
    let Some(tuner) = &s.tuner else { return check_channels(plan, s) };
    if plan::retune(tuner, plan, &s.dir).await? == berrygw_sx1302::Applied::Retuned {
        carry.session = carry.session.wrapping_add(1).max(1);
        carry.started = SystemTime::now();
    }
    Ok(())
}

/// The LNS's channel plan against the radio's, where berrygw knows the radio's and does
/// not tune it (sim; sx1302 with `channel_plan = "radio"`): a mismatch is refused (the
/// session ends, the sink backs off, status says why), since devices would be sent to
/// channels the radio does not hear, or heard where the LNS does not expect them.
fn check_channels(plan: &RouterConfig, s: &BasicStationSettings) -> anyhow::Result<()> {
    let Some(radio) = &s.radio_channels else { return Ok(()) };
    match plan.channel_mismatch(&radio.hz) {
        None => Ok(()),
        Some(why) => Err(Refused(format!(
            "router_config: the LNS's uplink channels are not the radio's: {why}; make {} the LNS's \
             plan, or the LNS's plan the radio's",
            radio.source
        ))
        .into()),
    }
}

/// Until `at`; forever when `None`.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn unix_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// The Station message of a journal record; `None` for one Station does not send.
fn uplink_text(
    record: &crate::journal::Record,
    plan: &RouterConfig,
    carry: &mut Carry,
    mux_offset: Option<f64>,
) -> Option<String> {
    if RecordKind::from_u8(record.kind)? != RecordKind::Uplink {
        return None;
    }
    let (frame, seq) = frame_of_record(record)?;
    if plan.upchannels.as_ref().is_some_and(|ch| ch.binary_search(&frame.frequency.0).is_err())
        && carry.off_plan.insert(frame.frequency.0)
    {
        // A packet forwarder's plan is not berrygw's to know: each such channel said once.
        warn!(
            frequency = frame.frequency.0,
            "basic station sink: an uplink on a channel the LNS's router_config does not have; the \
             radio's channel plan and the LNS's differ"
        );
    }
    // Heard by this process's radio: its counter is good for a downlink. Heard before
    // (replayed after a restart): session 0, which no downlink can use.
    let session = if frame.received_at >= carry.started { carry.session } else { 0 };
    let ctx = UpContext {
        rctx: 0,
        xtime: station::xtime(session, u64::from(frame.counter_us)),
        gpstime: 0,
        ref_time: mux_offset.map_or(0.0, |o| unix_secs(frame.received_at) + o),
    };
    let mut msg = station::uplink_message(&frame, plan, &ctx)?;
    msg["upinfo"]["seq"] = seq.into();
    Some(msg.to_string())
}

/// Hand a `dnmsg` to the radio in its first window; a refusal is logged and counted.
async fn downlink(
    d: Dnmsg,
    plan: &RouterConfig,
    radio: &mut SinkRadioIo,
    on_air: &mut HashMap<u32, OnAir>,
    carry: &mut Carry,
    counters: &SinkCounters,
) {
    let Some(&window) = d.windows().first() else {
        counters.bad_commands.fetch_add(1, Ordering::Relaxed);
        warn!(diid = d.diid, "basic station sink: a dnmsg with no window the radio can use; dropped");
        return;
    };
    if let Err(e) = send_in(d, window, plan, radio, on_air, carry).await {
        counters.bad_commands.fetch_add(1, Ordering::Relaxed);
        if let Some(held) = carry.warn.allow("dnmsg") {
            warn!(held_back = held, "basic station sink: downlink refused: {e:#}");
        }
    }
}

async fn send_in(
    d: Dnmsg,
    window: Window,
    plan: &RouterConfig,
    radio: &mut SinkRadioIo,
    on_air: &mut HashMap<u32, OnAir>,
    carry: &mut Carry,
) -> anyhow::Result<()> {
    let session = carry.session;
    let id = carry.next_downlink_id;
    carry.next_downlink_id = carry.next_downlink_id.wrapping_add(1).max(1);
    let frame = d.to_frame(window, plan, id, |xtime| {
        station::xtime_parts(xtime).filter(|(s, _)| *s == session).map(|(_, counter)| counter)
    })?;
    let xtime = d.xtime.unwrap_or(0);
    radio.downlinks.send(frame).await.map_err(|_| anyhow!("the radio is gone"))?;
    if on_air.len() >= DOWNLINKS_KEPT {
        on_air.clear();
    }
    on_air.insert(id, OnAir { dnmsg: d, window, xtime });
    Ok(())
}

/// The radio's answer: `dntxed` when sent; RX2 after a refused RX1.
async fn tx_ack(
    ack: TxAck,
    ws: &mut WebSocket,
    radio: &mut SinkRadioIo,
    on_air: &mut HashMap<u32, OnAir>,
    plan: &RouterConfig,
    carry: &mut Carry,
) -> anyhow::Result<()> {
    let Some(sent) = on_air.remove(&ack.downlink_id) else { return Ok(()) };
    match ack.status {
        TxStatus::Ok | TxStatus::Unconfirmed => {
            let msg = station::dntxed_message(&sent.dnmsg, sent.xtime, SystemTime::now(), 0);
            ws.send_text(&msg.to_string()).await?;
        }
        status if sent.window == Window::Rx1 && sent.dnmsg.rx2.is_some() => {
            debug!(
                diid = sent.dnmsg.diid,
                ?status,
                "basic station sink: RX1 refused by the radio; trying RX2"
            );
            if let Err(e) = send_in(sent.dnmsg, Window::Rx2, plan, radio, on_air, carry).await {
                warn!("basic station sink: downlink refused in RX2 too: {e:#}");
            }
        }
        status => {
            if let Some(held) = carry.warn.allow("tx") {
                warn!(
                    held_back = held,
                    diid = sent.dnmsg.diid,
                    ?status,
                    "basic station sink: the radio did not send a downlink"
                );
            }
        }
    }
    Ok(())
}
