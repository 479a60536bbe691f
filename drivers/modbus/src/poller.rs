//! One task per field device: reads every point of its profile at its poll interval,
//! publishes the decoded state, backs off exponentially while the device is down and picks
//! it up again by itself, and executes commands (fresh read, interlocks, minimum interval,
//! write, read-back until verified or the deadline passes).
//!
//! Requests of one device never overlap (its task does one thing at a time), and the bus
//! serialises devices that share a wire. A written command stays pending, checked after
//! every read-back poll, so a stop can be written while a move is still being verified.
//! Not here: who may send a command, audit.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rand::Rng;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::client::{Bus, CallError, ErrorKind, Reply, Request, MAX_READ_BITS, MAX_READ_REGISTERS};
use crate::command::{Refusal, RefusalReason, RegisterWrite, TypedArgs};
use crate::profile::value::{self, Points};
use crate::profile::{PointKind, Profile};

/// How one device is polled.
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    /// The device's name in the gateway (`weir-saint-jean`).
    pub name: String,
    /// Modbus unit id (slave address) on its bus.
    pub unit_id: u8,
    /// Time between the starts of two polls while the device answers.
    pub poll_interval: Duration,
    /// Longest wait between two attempts while it does not.
    pub max_backoff: Duration,
    /// Time between read-backs while a command is being verified.
    pub verify_interval: Duration,
}

impl DeviceConfig {
    /// Defaults: poll every second, back off up to a minute, read back every 200 ms.
    pub fn new(name: impl Into<String>, unit_id: u8) -> DeviceConfig {
        DeviceConfig {
            name: name.into(),
            unit_id,
            poll_interval: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            verify_interval: Duration::from_millis(200),
        }
    }
}

/// What the gateway knows about a device, republished after every poll.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DeviceState {
    /// Point values from the last successful poll (kept while offline: see `last_ok`).
    pub points: Points,
    /// Whether the last poll succeeded.
    pub online: bool,
    /// When the last poll succeeded.
    pub last_ok: Option<SystemTime>,
    /// Polls failed in a row.
    pub consecutive_failures: u32,
    /// Why the last poll failed, while it fails.
    pub last_error: Option<String>,
}

/// How one poll ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PollOutcome {
    /// Every point read and decoded.
    Ok,
    /// A request got no reply in time.
    Timeout,
    /// The device answered a Modbus exception.
    Exception,
    /// Connection refused, reset or closed; serial port error.
    IoError,
    /// A reply that was not valid Modbus.
    Garbage,
}

impl PollOutcome {
    /// Every outcome, for metrics labels.
    pub const ALL: [PollOutcome; 5] = [
        PollOutcome::Ok,
        PollOutcome::Timeout,
        PollOutcome::Exception,
        PollOutcome::IoError,
        PollOutcome::Garbage,
    ];

    /// The snake_case label.
    pub fn as_str(self) -> &'static str {
        match self {
            PollOutcome::Ok => "ok",
            PollOutcome::Timeout => "timeout",
            PollOutcome::Exception => "exception",
            PollOutcome::IoError => "io_error",
            PollOutcome::Garbage => "garbage",
        }
    }
}

impl From<&CallError> for PollOutcome {
    fn from(e: &CallError) -> PollOutcome {
        match e.kind() {
            ErrorKind::Timeout => PollOutcome::Timeout,
            ErrorKind::Exception => PollOutcome::Exception,
            ErrorKind::Io => PollOutcome::IoError,
            ErrorKind::Garbage => PollOutcome::Garbage,
        }
    }
}

/// Upper bounds (ms) of the poll latency histogram buckets; one more bucket holds the rest.
pub const LATENCY_BUCKETS_MS: [u64; 10] = [2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500];

/// Poll counts by outcome and poll latency, read by the gateway's metrics at scrape time.
#[derive(Debug, Default)]
pub struct PollCounters {
    by_outcome: [AtomicU64; 5],
    /// Latency of successful polls: per bucket of `LATENCY_BUCKETS_MS` (not cumulative), then +Inf.
    latency_buckets: [AtomicU64; 11],
    latency_sum_us: AtomicU64,
}

impl PollCounters {
    /// Polls that ended with `outcome`.
    pub fn count(&self, outcome: PollOutcome) -> u64 {
        self.by_outcome[outcome as usize].load(Ordering::Relaxed)
    }

    /// Successful-poll latency: per-bucket counts (see `LATENCY_BUCKETS_MS`) and the sum.
    pub fn latency(&self) -> ([u64; 11], Duration) {
        let buckets = std::array::from_fn(|i| self.latency_buckets[i].load(Ordering::Relaxed));
        (buckets, Duration::from_micros(self.latency_sum_us.load(Ordering::Relaxed)))
    }

    fn record(&self, outcome: PollOutcome, took: Duration) {
        self.by_outcome[outcome as usize].fetch_add(1, Ordering::Relaxed);
        if outcome == PollOutcome::Ok {
            let ms = took.as_millis();
            let i = LATENCY_BUCKETS_MS.iter().position(|b| ms <= u128::from(*b)).unwrap_or(10);
            self.latency_buckets[i].fetch_add(1, Ordering::Relaxed);
            let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
            self.latency_sum_us.fetch_add(us, Ordering::Relaxed);
        }
    }
}

/// How a command ended. `reason()` is stable, for audit and metrics.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum CommandOutcome {
    /// Written, and the read-back matched before the deadline.
    Verified {
        /// From the first write to the matching read-back.
        #[serde(with = "millis")]
        elapsed: Duration,
        /// What was written.
        writes: Vec<RegisterWrite>,
    },
    /// Not attempted: nothing was written.
    Refused(Refusal),
    /// Attempted (something may have been written) but not proven to have worked.
    Failed {
        /// Stable cause: `write_failed`, `not_verified`, `interlock_tripped`, `cancelled`,
        /// `device_gone`.
        reason: &'static str,
        /// For people.
        message: String,
    },
}

impl CommandOutcome {
    /// `verified`, a refusal reason, or a failure reason.
    pub fn reason(&self) -> &'static str {
        match self {
            CommandOutcome::Verified { .. } => "verified",
            CommandOutcome::Refused(r) => r.reason.as_str(),
            CommandOutcome::Failed { reason, .. } => reason,
        }
    }
}

impl fmt::Display for CommandOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandOutcome::Verified { elapsed, .. } => write!(f, "verified after {elapsed:?}"),
            CommandOutcome::Refused(r) => write!(f, "refused: {r}"),
            CommandOutcome::Failed { reason, message } => write!(f, "failed: {reason}: {message}"),
        }
    }
}

mod millis {
    pub fn serialize<S: serde::Serializer>(d: &std::time::Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

struct Execute {
    command: String,
    args: TypedArgs,
    reply: oneshot::Sender<CommandOutcome>,
    /// Told what was written as soon as the writes went out (before the read-back).
    written: Option<oneshot::Sender<Vec<RegisterWrite>>>,
}

/// Handle to a polled device. Dropping it stops the device task.
pub struct Device {
    name: String,
    profile: Arc<Profile>,
    state: watch::Receiver<DeviceState>,
    counters: Arc<PollCounters>,
    commands: mpsc::Sender<Execute>,
    task: JoinHandle<()>,
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Device").field("name", &self.name).field("profile", &self.profile.name).finish()
    }
}

impl Device {
    /// Start polling a device of `profile` at `config.unit_id` on `bus`.
    pub fn spawn(profile: Arc<Profile>, bus: Bus, config: DeviceConfig) -> Device {
        let (state_tx, state) = watch::channel(DeviceState::default());
        let (commands, rx) = mpsc::channel(8);
        let counters = Arc::new(PollCounters::default());
        let task = DeviceTask {
            plan: read_plan(&profile),
            profile: Arc::clone(&profile),
            bus,
            state: state_tx,
            counters: Arc::clone(&counters),
            last_run: HashMap::new(),
            name: config.name.clone(),
            config,
        };
        let name = task.name.clone();
        let task = tokio::spawn(task.run(rx));
        Device { name, profile, state, counters, commands, task }
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its profile.
    pub fn profile(&self) -> &Arc<Profile> {
        &self.profile
    }

    /// Its state, updated after every poll.
    pub fn state(&self) -> watch::Receiver<DeviceState> {
        self.state.clone()
    }

    /// Its poll counters.
    pub fn counters(&self) -> Arc<PollCounters> {
        Arc::clone(&self.counters)
    }

    /// Run `command` with JSON `args`: arguments are checked at once; then, in the device's
    /// turn, minimum interval, a fresh read, interlocks, the writes, and read-back until
    /// verified or the deadline passes. Commands to one device are checked and written one
    /// after another; while one waits for its read-back the next may be written (a stop
    /// during a move). Dropping the future does not undo a write already sent.
    pub async fn execute(&self, command: &str, args: &serde_json::Value) -> CommandOutcome {
        self.execute_inner(command, args, None).await
    }

    /// As `execute`, and `written` learns what was written the moment the writes went out,
    /// before the read-back (to report "executed" while a long move is verified). It is
    /// dropped unanswered when nothing was written.
    pub async fn execute_reporting(
        &self,
        command: &str,
        args: &serde_json::Value,
        written: oneshot::Sender<Vec<RegisterWrite>>,
    ) -> CommandOutcome {
        self.execute_inner(command, args, Some(written)).await
    }

    async fn execute_inner(
        &self,
        command: &str,
        args: &serde_json::Value,
        written: Option<oneshot::Sender<Vec<RegisterWrite>>>,
    ) -> CommandOutcome {
        let typed = match self.profile.find_command(command).and_then(|c| c.check_args(args)) {
            Ok(typed) => typed,
            Err(refusal) => return CommandOutcome::Refused(refusal),
        };
        let (reply, rx) = oneshot::channel();
        let gone =
            || CommandOutcome::Failed { reason: "device_gone", message: "the device task stopped".into() };
        if self
            .commands
            .send(Execute { command: command.to_string(), args: typed, reply, written })
            .await
            .is_err()
        {
            return gone();
        }
        rx.await.unwrap_or_else(|_| gone())
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A contiguous run of addresses read by one request.
#[derive(Debug, Clone, PartialEq)]
struct Block {
    kind: PointKind,
    address: u16,
    count: u16,
    /// Indices into `profile.points`.
    points: Vec<usize>,
}

impl Block {
    fn request(&self) -> Request {
        let (address, count) = (self.address, self.count);
        match self.kind {
            PointKind::Coil => Request::ReadCoils { address, count },
            PointKind::DiscreteInput => Request::ReadDiscreteInputs { address, count },
            PointKind::HoldingRegister => Request::ReadHoldingRegisters { address, count },
            PointKind::InputRegister => Request::ReadInputRegisters { address, count },
        }
    }
}

/// Group the profile's points into as few reads as possible: touching or overlapping
/// addresses of one table share a request, up to the protocol's per-request limits. Gaps
/// are never bridged: unmapped addresses often answer "illegal data address".
fn read_plan(profile: &Profile) -> Vec<Block> {
    let mut order: Vec<usize> = (0..profile.points.len()).collect();
    order.sort_by_key(|&i| (profile.points[i].kind, profile.points[i].address));
    let mut blocks: Vec<Block> = Vec::new();
    for i in order {
        let p = &profile.points[i];
        let limit = u32::from(if p.kind.is_bit() { MAX_READ_BITS } else { MAX_READ_REGISTERS });
        let end = p.last_address() + 1;
        if let Some(b) = blocks.last_mut().filter(|b| b.kind == p.kind) {
            let b_end = u32::from(b.address) + u32::from(b.count);
            let new_end = b_end.max(end);
            if u32::from(p.address) <= b_end && new_end - u32::from(b.address) <= limit {
                // Fits u16: bounded by `limit`.
                b.count = (new_end - u32::from(b.address)) as u16;
                b.points.push(i);
                continue;
            }
        }
        // Width is 1 or 2 (checked at load: last address within u16).
        blocks.push(Block { kind: p.kind, address: p.address, count: p.data_type.width(), points: vec![i] });
    }
    blocks
}

/// Delay before the next attempt after `failures` failed polls in a row: the poll interval,
/// doubled per failure, capped, with ±10 % jitter so devices on one bus spread out.
fn backoff(interval: Duration, cap: Duration, failures: u32) -> Duration {
    let doubled = interval.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    let base = doubled.min(cap.max(interval));
    base.mul_f64(rand::thread_rng().gen_range(0.9..=1.1))
}

struct DeviceTask {
    name: String,
    profile: Arc<Profile>,
    plan: Vec<Block>,
    bus: Bus,
    config: DeviceConfig,
    state: watch::Sender<DeviceState>,
    counters: Arc<PollCounters>,
    last_run: HashMap<String, Instant>,
}

/// A command whose writes went out.
struct Written {
    command: String,
    args: TypedArgs,
    writes: Vec<RegisterWrite>,
    started: Instant,
    deadline: Instant,
}

/// A command written and waiting for its read-back. Other commands (a stop) may run meanwhile.
struct Pending {
    written: Written,
    reply: oneshot::Sender<CommandOutcome>,
}

impl DeviceTask {
    async fn run(mut self, mut commands: mpsc::Receiver<Execute>) {
        let mut pending: Vec<Pending> = Vec::new();
        let mut next_poll = tokio::time::Instant::now();
        loop {
            tokio::select! {
                request = commands.recv() => {
                    let Some(request) = request else { return };
                    match self.start_command(&request.command, request.args, &mut pending).await {
                        Ok(written) => {
                            if let Some(tell) = request.written {
                                let _ = tell.send(written.writes.clone()); // the asker may have gone
                            }
                            pending.push(Pending { written, reply: request.reply });
                            next_poll = tokio::time::Instant::now(); // read back at once
                        }
                        Err(outcome) => {
                            let _ = request.reply.send(outcome); // the asker may have gone
                        }
                    }
                }
                () = tokio::time::sleep_until(next_poll) => {
                    let started = tokio::time::Instant::now();
                    let result = self.poll().await;
                    self.settle(&mut pending, &result);
                    next_poll = if !pending.is_empty() {
                        tokio::time::Instant::now() + self.config.verify_interval
                    } else if result.is_ok() {
                        (started + self.config.poll_interval).max(tokio::time::Instant::now())
                    } else {
                        let failures = self.state.borrow().consecutive_failures;
                        tokio::time::Instant::now()
                            + backoff(self.config.poll_interval, self.config.max_backoff, failures)
                    };
                }
            }
        }
    }

    /// Read every point once; publish the result either way.
    async fn poll(&mut self) -> Result<Points, CallError> {
        let started = Instant::now();
        let result = self.read_all().await;
        let outcome = result.as_ref().map_or_else(PollOutcome::from, |_| PollOutcome::Ok);
        self.counters.record(outcome, started.elapsed());
        let name = &self.name;
        self.state.send_modify(|s| match &result {
            Ok(points) => {
                if !s.online && s.consecutive_failures > 0 {
                    tracing::info!(device = %name, after_failures = s.consecutive_failures, "device answers again");
                }
                s.points = points.clone();
                s.online = true;
                s.last_ok = Some(SystemTime::now());
                s.consecutive_failures = 0;
                s.last_error = None;
            }
            Err(e) => {
                // Logged once per outage (and when the cause changes), not once per poll.
                let message = e.to_string();
                if s.consecutive_failures == 0 || s.last_error.as_deref() != Some(message.as_str()) {
                    tracing::warn!(device = %name, error = %message, "device poll failed; backing off");
                }
                s.online = false;
                s.consecutive_failures = s.consecutive_failures.saturating_add(1);
                s.last_error = Some(message);
            }
        });
        result
    }

    async fn read_all(&self) -> Result<Points, CallError> {
        let mut points = Points::new();
        for block in &self.plan {
            let reply = self.bus.call(self.config.unit_id, block.request()).await?;
            for &i in &block.points {
                let p = &self.profile.points[i];
                let offset = usize::from(p.address - block.address);
                let decoded = match &reply {
                    Reply::Bits(bits) => bits.get(offset).map(|b| value::decode_bit(p, *b)),
                    Reply::Words(words) => words
                        .get(offset..offset + usize::from(p.data_type.width()))
                        .map(|w| value::decode_registers(p, w)),
                    Reply::Written => None,
                };
                // The client checked the reply length, so every point is inside it.
                let decoded =
                    decoded.ok_or_else(|| CallError::Garbage(format!("no data for `{}`", p.name)))?;
                points.insert(p.name.clone(), decoded);
            }
        }
        Ok(points)
    }

    /// Everything up to and including the writes. `Ok` means written: verification pending.
    async fn start_command(
        &mut self,
        name: &str,
        args: TypedArgs,
        pending: &mut Vec<Pending>,
    ) -> Result<Written, CommandOutcome> {
        let profile = Arc::clone(&self.profile);
        let command = profile.find_command(name).map_err(CommandOutcome::Refused)?;
        command
            .check_interval(self.last_run.get(name).copied(), Instant::now())
            .map_err(CommandOutcome::Refused)?;
        let fresh = self.poll().await.map_err(|e| {
            CommandOutcome::Refused(Refusal {
                reason: RefusalReason::DeviceOffline,
                message: format!("could not read `{}` before writing: {e}", self.name),
            })
        })?;
        self.settle(pending, &Ok(fresh.clone()));
        command.check_preconditions(&fresh).map_err(CommandOutcome::Refused)?;
        let writes = profile.register_writes(command, &args).map_err(CommandOutcome::Refused)?;
        let started = Instant::now();
        self.last_run.insert(name.to_string(), started);
        for w in &writes {
            let request = match w.clone() {
                RegisterWrite::Coil { address, value } => Request::WriteCoil { address, value },
                RegisterWrite::Registers { address, words } => Request::WriteRegisters { address, words },
            };
            if let Err(e) = self.bus.call(self.config.unit_id, request).await {
                return Err(CommandOutcome::Failed {
                    reason: "write_failed",
                    message: format!("{w:?}: {e}"),
                });
            }
        }
        // A stop ends the read-back of the move it stops.
        let (cancelled, kept) = std::mem::take(pending)
            .into_iter()
            .partition::<Vec<_>, _>(|p| command.cancels.contains(&p.written.command));
        *pending = kept;
        for p in cancelled {
            let message = format!("`{}` was cancelled by `{name}`", p.written.command);
            let _ = p.reply.send(CommandOutcome::Failed { reason: "cancelled", message });
        }
        Ok(Written {
            command: name.to_string(),
            args,
            writes,
            started,
            deadline: started + command.verify_deadline(),
        })
    }

    /// After each poll: answer every pending command that is verified, whose interlock
    /// tripped, whose deadline passed, or whose asker went away.
    fn settle(&self, pending: &mut Vec<Pending>, result: &Result<Points, CallError>) {
        let now = Instant::now();
        let mut still = Vec::with_capacity(pending.len());
        for Pending { written: p, reply } in std::mem::take(pending) {
            // Commands in `pending` come from this profile.
            let Some(command) = self.profile.command(&p.command) else { continue };
            let outcome = match result {
                Ok(points) if command.is_verified(&p.args, points) => {
                    Some(CommandOutcome::Verified { elapsed: p.started.elapsed(), writes: p.writes.clone() })
                }
                Ok(points) => match command.check_preconditions(points) {
                    Err(r) => {
                        Some(CommandOutcome::Failed { reason: "interlock_tripped", message: r.message })
                    }
                    Ok(()) if now >= p.deadline => {
                        let seen = match points.get(&command.verify.point) {
                            Some(v) => format!("`{}` read {v}", command.verify.point),
                            None => format!("`{}` not read", command.verify.point),
                        };
                        Some(not_verified(command, seen))
                    }
                    Ok(()) => None,
                },
                Err(e) if now >= p.deadline => Some(not_verified(command, format!("read-back failed: {e}"))),
                Err(_) => None,
            };
            match outcome {
                Some(outcome) => {
                    let _ = reply.send(outcome); // the asker may have gone
                }
                None if reply.is_closed() => {} // nobody waits for this one any more
                None => still.push(Pending { written: p, reply }),
            }
        }
        *pending = still;
    }
}

fn not_verified(command: &crate::profile::CommandSpec, seen: String) -> CommandOutcome {
    CommandOutcome::Failed {
        reason: "not_verified",
        message: format!("not verified within {:?}: {seen}", command.verify_deadline()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn contiguous_points_share_one_read_and_gaps_split() {
        let text = r#"
name = "t"
[[points]]
name = "a"
kind = "input_register"
address = 0
type = "u16"
[[points]]
name = "b"
kind = "input_register"
address = 1
type = "f32"
[[points]]
name = "c"
kind = "input_register"
address = 5
type = "u16"
[[points]]
name = "d"
kind = "coil"
address = 3
type = "bool"
[[points]]
name = "e"
kind = "coil"
address = 4
type = "bool"
"#;
        let profile = Profile::parse(Path::new("t.toml"), text).unwrap();
        let plan = read_plan(&profile);
        let spans: Vec<_> = plan.iter().map(|b| (b.kind, b.address, b.count)).collect();
        assert_eq!(
            spans,
            vec![(PointKind::Coil, 3, 2), (PointKind::InputRegister, 0, 3), (PointKind::InputRegister, 5, 1)]
        );
    }

    #[test]
    fn reads_respect_the_125_register_limit() {
        let mut text = String::from("name = \"big\"\n");
        for i in 0..130 {
            text.push_str(&format!(
                "[[points]]\nname = \"r{i}\"\nkind = \"holding_register\"\naddress = {i}\ntype = \"u16\"\n"
            ));
        }
        let profile = Profile::parse(Path::new("big.toml"), &text).unwrap();
        let counts: Vec<u16> = read_plan(&profile).iter().map(|b| b.count).collect();
        assert_eq!(counts, vec![125, 5]);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let (i, cap) = (Duration::from_secs(1), Duration::from_secs(60));
        let near = |d: Duration, s: f64| (d.as_secs_f64() - s).abs() <= s * 0.1 + 1e-9;
        assert!(near(backoff(i, cap, 1), 1.0));
        assert!(near(backoff(i, cap, 2), 2.0));
        assert!(near(backoff(i, cap, 4), 8.0));
        assert!(near(backoff(i, cap, 30), 60.0));
        assert!(near(backoff(i, cap, u32::MAX), 60.0));
    }
}
