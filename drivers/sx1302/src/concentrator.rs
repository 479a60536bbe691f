//! The concentrator's owner thread: the one thread that touches libloragw
//! (blocking, not thread-safe). It resets the board through GPIO, configures
//! and starts the HAL, then polls: downlinks in (admitted or refused with a
//! `TxAck`), due frames out to `lgw_send`, `lgw_receive` every poll interval
//! with frames out to the pipeline, health checked, a wedged concentrator
//! reset and restarted, status published.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime};

use berrygw_lora::{DownlinkFrame, Eui64, RadioError, RadioIo, TxAck, TxStatus};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, info, warn};

use crate::downlink::{Clock, DownlinkScheduler, TxRequest};
use crate::error::Sx1302Error;
use crate::gpio::{reset_concentrator, Gpio};
use crate::hal::Hal;
use crate::health::{HealthMonitor, Wedged};
use crate::jit::{Due, JitLimits};
use crate::plan::{Applied, Retune};
use crate::setup::ConcentratorSetup;
use crate::status::ConcentratorStatus;

/// How often the temperature is read.
const TEMPERATURE_EVERY: Duration = Duration::from_secs(30);
/// Longest the next fetch waits for the pipeline to store the previous one; past it the chip
/// is read anyway (its buffer would overflow), with a warning.
const STORE_WAIT: Duration = Duration::from_secs(5);
/// First wait before retrying a restart that failed; doubles up to the configured maximum.
const RESTART_BACKOFF_MIN: Duration = Duration::from_secs(1);

/// What the radio task hands the thread once the pipeline starts it.
pub(crate) struct Start {
    pub io: RadioIo,
    /// Where the thread reports how it ended; closed when the task is dropped.
    pub done: oneshot::Sender<Result<(), RadioError>>,
}

/// The thread's state: the HAL and everything around it.
pub(crate) struct Owner {
    hal: Hal,
    setup: ConcentratorSetup,
    gpio: Box<dyn Gpio>,
    status: watch::Sender<ConcentratorStatus>,
    scheduler: DownlinkScheduler,
    health: HealthMonitor,
    /// Origin of the monotonic µs clock the duty-cycle ledger uses.
    epoch: Instant,
    running: bool,
    next_restart: Instant,
    backoff: Duration,
    next_temperature: Instant,
    /// Channel plans from outside the configuration (`Tuner`).
    retunes: Receiver<Retune>,
    /// Who set the plan in use, when it is not the configuration's.
    plan_from: Option<String>,
}

impl Owner {
    /// The owner of `hal`, not started yet.
    pub fn new(
        hal: Hal,
        setup: ConcentratorSetup,
        gpio: Box<dyn Gpio>,
        status: watch::Sender<ConcentratorStatus>,
        retunes: Receiver<Retune>,
        plan_from: Option<String>,
    ) -> Owner {
        let now = Instant::now();
        let scheduler = DownlinkScheduler::new(setup.region, setup.tx.clone(), JitLimits::default());
        let health = HealthMonitor::new(setup.health, now);
        status.send_modify(|s| s.board = setup.board.name.to_string());
        Owner {
            hal,
            setup,
            gpio,
            status,
            scheduler,
            health,
            epoch: now,
            running: false,
            next_restart: now,
            backoff: RESTART_BACKOFF_MIN,
            next_temperature: now,
            retunes,
            plan_from,
        }
    }

    /// Resets the board, configures and starts the HAL, reads the EUI.
    pub fn bring_up(&mut self) -> Result<(), Sx1302Error> {
        reset_concentrator(self.gpio.as_mut(), &self.setup.reset)?;
        self.hal.configure(&self.setup)?;
        self.hal.start()?;
        let eui = self.hal.eui().ok().map(Eui64::from_u64);
        let temperature = self.hal.temperature().ok();
        let now = Instant::now();
        self.running = true;
        self.health.restarted(now);
        self.backoff = RESTART_BACKOFF_MIN;
        self.next_temperature = now + TEMPERATURE_EVERY;
        let channels = self.setup.lora_channels();
        let plan_from = self.plan_from.clone();
        self.status.send_modify(|s| {
            s.running = true;
            s.eui = eui;
            s.temperature_c = temperature;
            s.channels_hz = channels;
            s.plan_from = plan_from;
        });
        info!(
            board = self.setup.board.name,
            region = self.setup.region.name,
            eui = eui.map(|e| e.to_string()).unwrap_or_default(),
            hal = %self.hal.version(),
            "concentrator started"
        );
        Ok(())
    }

    /// Stops the HAL (errors are only logged: it is going away anyway).
    pub fn shut_down(&mut self) {
        if self.running {
            if let Err(e) = self.hal.stop() {
                warn!("{e}");
            }
            self.running = false;
        }
        self.status.send_modify(|s| s.running = false);
    }

    /// Waits for the pipeline to start the radio, then runs it until the pipeline
    /// goes away. Returns when `start` is closed without a start, too.
    pub fn serve(mut self, start: Receiver<Start>) {
        let started = loop {
            match start.recv_timeout(Duration::from_secs(1)) {
                Ok(s) => break Some(s),
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => break None,
            }
        };
        let Some(Start { io, done }) = started else {
            self.shut_down();
            return;
        };
        let result = self.run(io, &done);
        self.shut_down();
        // Release the HAL before reporting, so a new `open` can follow at once.
        drop(self);
        let _ = done.send(result);
    }

    fn run(&mut self, io: RadioIo, done: &oneshot::Sender<Result<(), RadioError>>) -> Result<(), RadioError> {
        let RadioIo { uplinks, mut downlinks, tx_acks, taken } = io;
        let mut downlinks_open = true;
        let mut received = Vec::new();
        // Frames handed to the pipeline so far, and when the last of them were handed over.
        let mut handed = 0u64;
        let mut handed_at = Instant::now();
        loop {
            if uplinks.is_closed() || done.is_closed() {
                return Ok(());
            }
            while let Ok(r) = self.retunes.try_recv() {
                self.retune(r);
            }
            let now = Instant::now();
            if !self.running {
                if now >= self.next_restart {
                    self.try_restart();
                }
                if !self.running {
                    // Nothing can be sent while the concentrator is down.
                    self.drain_downlinks(&mut downlinks, &mut downlinks_open, &tx_acks, None);
                    std::thread::sleep(self.setup.poll_interval);
                    continue;
                }
            }

            let mut wedged: Option<Wedged> = None;
            let counter = match self.hal.instcnt() {
                Ok(c) => {
                    wedged = self.health.counter_read(c, now);
                    Some(c)
                }
                Err(e) => {
                    self.note_error(&e.to_string());
                    wedged = self.health.counter_failed().or(wedged);
                    None
                }
            };
            let clock = counter.map(|counter_us| Clock { counter_us, monotonic_us: self.monotonic_us(now) });
            self.drain_downlinks(&mut downlinks, &mut downlinks_open, &tx_acks, clock);
            if let Some(c) = counter {
                self.transmit_due(c);
            }

            // The next fetch waits until the pipeline has stored the last one (in the journals'
            // RAM stage): until then new frames stay in the chip's buffer, so a crash can lose
            // only the one fetch between `lgw_receive` and the stage write. Downlinks go on.
            let settled = taken.as_ref().is_none_or(|t| t.borrow().handled >= handed);
            let overdue = !settled && now.duration_since(handed_at) >= STORE_WAIT;
            if overdue {
                warn!("the pipeline has not stored the last fetch within {STORE_WAIT:?}; reading the concentrator anyway");
                handed_at = now;
            }
            let fetch = settled || overdue;
            received.clear();
            let result =
                fetch.then(|| self.hal.receive(self.fsk_deviation(), SystemTime::now(), &mut received));
            match result {
                None => {}
                Some(Ok(())) => {
                    self.health.receive_ok(received.len(), now);
                    let mut delivered = 0u64;
                    let mut dropped = 0u64;
                    for item in received.drain(..) {
                        match item {
                            Ok(frame) => {
                                if uplinks.blocking_send(frame).is_err() {
                                    return Ok(());
                                }
                                delivered += 1;
                                handed += 1;
                                handed_at = now;
                            }
                            Err(reason) => {
                                warn!("dropped a received packet: {reason}");
                                dropped += 1;
                            }
                        }
                    }
                    if delivered + dropped > 0 {
                        self.status.send_modify(|s| {
                            s.uplinks += delivered;
                            s.uplinks_dropped += dropped;
                        });
                    }
                }
                Some(Err(e)) => {
                    self.note_error(&e.to_string());
                    wedged = wedged.or(self.health.receive_failed());
                }
            }

            if let Some(reason) = wedged.or_else(|| self.health.silence(now)) {
                self.restart(reason);
                continue;
            }
            if now >= self.next_temperature {
                self.next_temperature = now + TEMPERATURE_EVERY;
                let t = self.hal.temperature().ok();
                self.status.send_modify(|s| s.temperature_c = t);
            }
            std::thread::sleep(self.setup.poll_interval);
        }
    }

    /// Admits or refuses every downlink waiting on the channel; acks each.
    fn drain_downlinks(
        &mut self,
        downlinks: &mut mpsc::Receiver<DownlinkFrame>,
        open: &mut bool,
        tx_acks: &mpsc::Sender<TxAck>,
        clock: Option<Clock>,
    ) {
        while *open {
            let frame = match downlinks.try_recv() {
                Ok(f) => f,
                Err(mpsc::error::TryRecvError::Empty) => return,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    *open = false;
                    return;
                }
            };
            let status = if self.running {
                match self.scheduler.admit(&frame, clock) {
                    Ok(start) => {
                        debug!(downlink_id = frame.downlink_id, start, "downlink queued");
                        TxStatus::Ok
                    }
                    Err(status) => status,
                }
            } else {
                TxStatus::InternalError
            };
            if status != TxStatus::Ok {
                let frequency = frame.frequency;
                info!(downlink_id = frame.downlink_id, ?status, %frequency, "downlink refused");
                self.status.send_modify(|s| s.tx_refused += 1);
            }
            // A closed ack channel means the pipeline is going away: nothing to tell.
            let _ = tx_acks.blocking_send(TxAck { downlink_id: frame.downlink_id, status });
        }
    }

    /// Hands every due frame to the HAL.
    fn transmit_due(&mut self, counter: u32) {
        while let Some(due) = self.scheduler.due(counter) {
            match due {
                Due::Send(h) => self.transmit(&h.item),
                Due::Missed(r) => {
                    warn!(
                        downlink_id = r.downlink_id,
                        "downlink dropped: its time passed before it could be sent"
                    );
                    self.status.send_modify(|s| s.tx_failed += 1);
                }
            }
        }
    }

    fn transmit(&mut self, r: &TxRequest) {
        if let Ok(true) = self.hal.is_emitting(r.rf_chain) {
            // The JIT queue keeps frames apart, so this means the chip is behind.
            warn!(downlink_id = r.downlink_id, "downlink dropped: the concentrator is still emitting");
            self.status.send_modify(|s| s.tx_failed += 1);
            return;
        }
        match self.hal.send(r) {
            Ok(()) => {
                debug!(
                    downlink_id = r.downlink_id,
                    count_us = r.count_us,
                    "downlink handed to the concentrator"
                );
                self.status.send_modify(|s| s.tx_sent += 1);
            }
            Err(e) => {
                warn!(downlink_id = r.downlink_id, "downlink not sent: {e}");
                let text = e.to_string();
                self.status.send_modify(|s| {
                    s.tx_failed += 1;
                    s.last_error = Some(text);
                });
            }
        }
    }

    /// Puts the concentrator on another channel plan: stopped, reconfigured, started.
    /// If it does not start on it, it goes back to the plan it had.
    fn retune(&mut self, r: Retune) {
        if r.setup == self.setup && self.running {
            self.plan_from = Some(r.from);
            let from = self.plan_from.clone();
            self.status.send_modify(|s| s.plan_from = from);
            let _ = r.reply.send(Ok(Applied::Unchanged));
            return;
        }
        info!(from = %r.from, channels = ?r.setup.lora_channels(), "concentrator retuned: restarting it on another channel plan");
        if self.running {
            if let Err(e) = self.hal.stop() {
                debug!("{e} (stopping the concentrator to retune it)");
            }
            self.running = false;
        }
        self.void_queued("the retune");
        let old = (std::mem::replace(&mut self.setup, r.setup), self.plan_from.replace(r.from));
        let answer = match self.bring_up() {
            Ok(()) => {
                self.status.send_modify(|s| s.retunes += 1);
                Ok(Applied::Retuned)
            }
            Err(e) => {
                let _ = self.hal.stop();
                self.running = false;
                let why = format!("the concentrator did not start on that plan: {e}");
                error!("{why}; back on the plan it had");
                (self.setup, self.plan_from) = old;
                self.try_restart();
                Err(why)
            }
        };
        let _ = r.reply.send(answer);
    }

    /// Queued downlinks are voided: a stop resets the counter their times are in.
    fn void_queued(&mut self, by: &str) {
        let voided = self.scheduler.clear();
        if !voided.is_empty() {
            warn!(count = voided.len(), "queued downlinks dropped: {by} voids their counter times");
            let n = voided.len() as u64;
            self.status.send_modify(|s| s.tx_failed += n);
        }
    }

    /// Stops the wedged concentrator and brings it back up.
    fn restart(&mut self, reason: Wedged) {
        error!("concentrator wedged ({reason}): resetting and restarting it");
        let text = format!("concentrator wedged: {reason}");
        self.status.send_modify(|s| {
            s.running = false;
            s.last_error = Some(text);
        });
        if let Err(e) = self.hal.stop() {
            debug!("{e} (stopping a wedged concentrator)");
        }
        self.running = false;
        self.void_queued("the restart");
        self.try_restart();
    }

    fn try_restart(&mut self) {
        self.status.send_modify(|s| s.restarts += 1);
        match self.bring_up() {
            Ok(()) => info!("concentrator restarted"),
            Err(e) => {
                // A failed start may leave the HAL half-open; stop it before the next attempt.
                let _ = self.hal.stop();
                self.running = false;
                error!("concentrator restart failed: {e}; next attempt in {} s", self.backoff.as_secs());
                let text = e.to_string();
                self.status.send_modify(|s| {
                    s.running = false;
                    s.last_error = Some(text);
                });
                self.next_restart = Instant::now() + self.backoff;
                let max = Duration::from_secs(self.setup.health.restart_backoff_max_s);
                self.backoff = (self.backoff * 2).min(max);
            }
        }
    }

    /// The FSK channel's deviation, which the HAL needs to convert what it receives.
    fn fsk_deviation(&self) -> u32 {
        self.setup.fsk.map_or(0, |(_, f)| f.frequency_deviation)
    }

    fn note_error(&mut self, text: &str) {
        debug!("{text}");
        let text = text.to_string();
        self.status.send_modify(|s| s.last_error = Some(text));
    }

    fn monotonic_us(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_micros()).unwrap_or(u64::MAX)
    }
}
