//! The wire: one task owns each Modbus connection (a TCP socket or an RS-485 serial port)
//! and serves requests from a channel one at a time, for every unit id on that bus.
//!
//! Every request runs under a timeout. After a timeout, an I/O error or a framing error the
//! connection is dropped and a fresh one is opened for the next request: a late reply on a
//! reused connection would be taken for the answer to the next question. A Modbus exception
//! is an answer (the device is there), so the connection is kept.
//! Not here: what to read or when (`poller.rs`).

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};
use tokio_modbus::client::{Client, Context};
use tokio_modbus::prelude::SlaveContext;
use tokio_modbus::{Response, Slave};

/// Largest register count one read may ask for (Modbus application protocol, 6.3).
pub const MAX_READ_REGISTERS: u16 = 125;
/// Largest bit count one read may ask for (6.1, 6.2).
pub const MAX_READ_BITS: u16 = 2000;

/// Where a bus is: a TCP peer or a serial line.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "transport", rename_all = "snake_case", deny_unknown_fields)]
pub enum Link {
    /// Modbus TCP to `address` (`host:port`, resolved at each connection).
    Tcp {
        /// `host:port`.
        address: String,
    },
    /// Modbus RTU on a serial port (RS-485 adapter).
    Rtu {
        /// `/dev/ttyUSB0`, `/dev/ttyAMA0`, ...
        path: PathBuf,
        /// Bits per second (9600, 19200, ...).
        baud_rate: u32,
        /// Parity; Modbus RTU's default is even.
        #[serde(default)]
        parity: Parity,
        /// 1 or 2.
        #[serde(default = "one_stop_bit")]
        stop_bits: u8,
    },
}

fn one_stop_bit() -> u8 {
    1
}

impl fmt::Display for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Link::Tcp { address } => write!(f, "tcp://{address}"),
            Link::Rtu { path, baud_rate, .. } => write!(f, "rtu://{}@{baud_rate}", path.display()),
        }
    }
}

/// Serial parity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Parity {
    /// No parity bit (then two stop bits, says the standard; many devices differ).
    None,
    /// Even parity (the Modbus RTU default).
    #[default]
    Even,
    /// Odd parity.
    Odd,
}

/// Timing of one bus.
#[derive(Debug, Clone)]
pub struct BusOptions {
    /// How long one request may take on the wire before the connection is given up.
    pub timeout: Duration,
    /// How long opening the connection may take.
    pub connect_timeout: Duration,
    /// Silence kept after each exchange before the next request (RS-485 turnaround).
    pub turnaround: Duration,
    /// Requests that may wait for the bus.
    pub queue: usize,
}

impl Default for BusOptions {
    fn default() -> Self {
        BusOptions {
            timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(3),
            turnaround: Duration::ZERO,
            queue: 64,
        }
    }
}

impl BusOptions {
    /// Defaults for a serial line at `baud_rate`: the 3.5-character silence RTU needs between
    /// frames (1.75 ms above 19200 bd, as the standard fixes).
    pub fn for_rtu(baud_rate: u32) -> BusOptions {
        let char_time = 11.0 / f64::from(baud_rate.max(1));
        let silence = if baud_rate > 19_200 { 0.00175 } else { 3.5 * char_time };
        BusOptions { turnaround: Duration::from_secs_f64(silence), ..BusOptions::default() }
    }
}

/// One Modbus request, addressed to a unit id by `Bus::call`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Function code 1.
    ReadCoils {
        /// First coil.
        address: u16,
        /// How many (1..=2000).
        count: u16,
    },
    /// Function code 2.
    ReadDiscreteInputs {
        /// First input.
        address: u16,
        /// How many (1..=2000).
        count: u16,
    },
    /// Function code 3.
    ReadHoldingRegisters {
        /// First register.
        address: u16,
        /// How many (1..=125).
        count: u16,
    },
    /// Function code 4.
    ReadInputRegisters {
        /// First register.
        address: u16,
        /// How many (1..=125).
        count: u16,
    },
    /// Function code 5.
    WriteCoil {
        /// Coil address.
        address: u16,
        /// New state.
        value: bool,
    },
    /// Function code 6 for one register, 16 for more.
    WriteRegisters {
        /// First register.
        address: u16,
        /// Words in device order.
        words: Vec<u16>,
    },
}

/// A checked reply: exactly as many values as asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Coils or discrete inputs.
    Bits(Vec<bool>),
    /// Registers.
    Words(Vec<u16>),
    /// The device acknowledged a write.
    Written,
}

/// Why a request got no usable reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// No (complete) reply within the timeout; the connection was dropped.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// The device answered with a Modbus exception; the connection is kept.
    #[error("device answered exception {code:#04x} ({name})")]
    Exception {
        /// Exception code (2 = illegal data address, 4 = device failure, ...).
        code: u8,
        /// Its name.
        name: String,
    },
    /// Connection refused, reset, closed, or the serial port failed; the connection was dropped.
    #[error("i/o error: {0}")]
    Io(String),
    /// The reply was not valid Modbus (bad header, wrong function, short data); dropped.
    #[error("garbled reply: {0}")]
    Garbage(String),
    /// The bus task is gone (gateway shutting down).
    #[error("bus closed")]
    BusClosed,
}

/// Kinds of `CallError`, for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// `CallError::Timeout`.
    Timeout,
    /// `CallError::Exception`.
    Exception,
    /// `CallError::Io` and `CallError::BusClosed`.
    Io,
    /// `CallError::Garbage`.
    Garbage,
}

impl CallError {
    /// Its kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            CallError::Timeout(_) => ErrorKind::Timeout,
            CallError::Exception { .. } => ErrorKind::Exception,
            CallError::Io(_) | CallError::BusClosed => ErrorKind::Io,
            CallError::Garbage(_) => ErrorKind::Garbage,
        }
    }

    /// Whether the connection can no longer be trusted (everything but an exception).
    fn breaks_connection(&self) -> bool {
        !matches!(self, CallError::Exception { .. })
    }
}

/// What a bus has done, read by the gateway's metrics.
#[derive(Debug, Default)]
pub struct BusCounters {
    /// Connections (TCP sockets, serial port openings) made.
    pub connects: AtomicU64,
    /// Connections dropped after a timeout, an I/O or a framing error.
    pub dropped: AtomicU64,
    /// Requests sent on the wire.
    pub requests: AtomicU64,
}

struct Call {
    unit: u8,
    request: Request,
    reply: oneshot::Sender<Result<Reply, CallError>>,
}

/// Handle to one bus. Cheap to clone; the bus task ends when the last handle is dropped.
#[derive(Clone)]
pub struct Bus {
    link: Arc<Link>,
    calls: mpsc::Sender<Call>,
    counters: Arc<BusCounters>,
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bus").field("link", &self.link).finish()
    }
}

impl Bus {
    /// Start the task that owns `link`. Nothing is opened until the first request.
    pub fn spawn(link: Link, options: BusOptions) -> Bus {
        let (calls, rx) = mpsc::channel(options.queue.max(1));
        let counters = Arc::new(BusCounters::default());
        let link = Arc::new(link);
        tokio::spawn(serve(Arc::clone(&link), options, rx, Arc::clone(&counters)));
        Bus { link, calls, counters }
    }

    /// Send `request` to `unit` when the bus is free and wait for its reply. Waiting in the
    /// queue does not count against the timeout; only time on the wire does.
    pub async fn call(&self, unit: u8, request: Request) -> Result<Reply, CallError> {
        let (reply, rx) = oneshot::channel();
        self.calls.send(Call { unit, request, reply }).await.map_err(|_| CallError::BusClosed)?;
        rx.await.unwrap_or(Err(CallError::BusClosed))
    }

    /// The link this bus talks on.
    pub fn link(&self) -> &Link {
        &self.link
    }

    /// Its counters.
    pub fn counters(&self) -> Arc<BusCounters> {
        Arc::clone(&self.counters)
    }
}

/// The bus task: one request at a time, a fresh connection after any broken one.
async fn serve(
    link: Arc<Link>,
    options: BusOptions,
    mut calls: mpsc::Receiver<Call>,
    counters: Arc<BusCounters>,
) {
    let mut connection: Option<Context> = None;
    while let Some(call) = calls.recv().await {
        if call.reply.is_closed() {
            continue; // the caller gave up (its device was stopped): don't disturb the bus
        }
        let result = exchange(&link, &options, &mut connection, &counters, call.unit, &call.request).await;
        if let Err(e) = &result {
            if e.breaks_connection() && connection.take().is_some() {
                counters.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%link, error = %e, "connection dropped; the next request opens a new one");
            }
        }
        let _ = call.reply.send(result); // the caller may have gone; nothing to do then
        if !options.turnaround.is_zero() {
            tokio::time::sleep(options.turnaround).await;
        }
    }
}

async fn exchange(
    link: &Link,
    options: &BusOptions,
    connection: &mut Option<Context>,
    counters: &BusCounters,
    unit: u8,
    request: &Request,
) -> Result<Reply, CallError> {
    let ctx = match connection {
        Some(ctx) => ctx,
        None => {
            let ctx = connect(link, options).await?;
            counters.connects.fetch_add(1, Ordering::Relaxed);
            connection.insert(ctx)
        }
    };
    ctx.set_slave(Slave(unit));
    counters.requests.fetch_add(1, Ordering::Relaxed);
    let wire = to_wire(request);
    let answer = tokio::time::timeout(options.timeout, ctx.call(wire))
        .await
        .map_err(|_| CallError::Timeout(options.timeout))?;
    match answer {
        Ok(Ok(response)) => check_reply(request, response),
        Ok(Err(exception)) => {
            Err(CallError::Exception { code: u8::from(exception), name: format!("{exception:?}") })
        }
        Err(tokio_modbus::Error::Protocol(e)) => Err(CallError::Garbage(e.to_string())),
        Err(tokio_modbus::Error::Transport(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
            Err(CallError::Garbage(e.to_string()))
        }
        Err(tokio_modbus::Error::Transport(e)) => Err(CallError::Io(e.to_string())),
    }
}

async fn connect(link: &Link, options: &BusOptions) -> Result<Context, CallError> {
    match link {
        Link::Tcp { address } => {
            let stream =
                tokio::time::timeout(options.connect_timeout, tokio::net::TcpStream::connect(address))
                    .await
                    .map_err(|_| CallError::Timeout(options.connect_timeout))?
                    .map_err(|e| CallError::Io(format!("cannot connect to {address}: {e}")))?;
            // Requests are tiny and latency matters more than packet count.
            let _ = stream.set_nodelay(true);
            Ok(tokio_modbus::client::tcp::attach(stream))
        }
        Link::Rtu { path, baud_rate, parity, stop_bits } => {
            use tokio_serial::SerialPort;
            let builder = tokio_serial::new(path.to_string_lossy(), *baud_rate)
                .data_bits(tokio_serial::DataBits::Eight)
                .parity(match parity {
                    Parity::None => tokio_serial::Parity::None,
                    Parity::Even => tokio_serial::Parity::Even,
                    Parity::Odd => tokio_serial::Parity::Odd,
                })
                .stop_bits(if *stop_bits == 2 {
                    tokio_serial::StopBits::Two
                } else {
                    tokio_serial::StopBits::One
                });
            let port = tokio_serial::SerialStream::open(&builder)
                .map_err(|e| CallError::Io(format!("cannot open {}: {e}", path.display())))?;
            // Bytes left from a reply that came too late belong to no one.
            let _ = port.clear(tokio_serial::ClearBuffer::All);
            Ok(tokio_modbus::client::rtu::attach(port))
        }
    }
}

fn to_wire(request: &Request) -> tokio_modbus::Request<'_> {
    use std::borrow::Cow;
    use tokio_modbus::Request as W;
    match request {
        Request::ReadCoils { address, count } => W::ReadCoils(*address, *count),
        Request::ReadDiscreteInputs { address, count } => W::ReadDiscreteInputs(*address, *count),
        Request::ReadHoldingRegisters { address, count } => W::ReadHoldingRegisters(*address, *count),
        Request::ReadInputRegisters { address, count } => W::ReadInputRegisters(*address, *count),
        Request::WriteCoil { address, value } => W::WriteSingleCoil(*address, *value),
        Request::WriteRegisters { address, words } if words.len() == 1 => {
            W::WriteSingleRegister(*address, words[0])
        }
        Request::WriteRegisters { address, words } => {
            W::WriteMultipleRegisters(*address, Cow::Borrowed(words))
        }
    }
}

/// Accept a reply only if it answers the question asked, with exactly the values asked for.
fn check_reply(request: &Request, response: Response) -> Result<Reply, CallError> {
    let garbage = |what: String| Err(CallError::Garbage(what));
    match (request, response) {
        (Request::ReadCoils { count, .. }, Response::ReadCoils(mut bits))
        | (Request::ReadDiscreteInputs { count, .. }, Response::ReadDiscreteInputs(mut bits)) => {
            // Bits come padded to whole bytes.
            if bits.len() < usize::from(*count) || bits.len() > usize::from(*count).div_ceil(8) * 8 {
                return garbage(format!("asked {count} bits, got {}", bits.len()));
            }
            bits.truncate(usize::from(*count));
            Ok(Reply::Bits(bits))
        }
        (Request::ReadHoldingRegisters { count, .. }, Response::ReadHoldingRegisters(words))
        | (Request::ReadInputRegisters { count, .. }, Response::ReadInputRegisters(words)) => {
            if words.len() != usize::from(*count) {
                return garbage(format!("asked {count} registers, got {}", words.len()));
            }
            Ok(Reply::Words(words))
        }
        (Request::WriteCoil { address, value }, Response::WriteSingleCoil(a, v)) => {
            if (a, v) != (*address, *value) {
                return garbage(format!("write coil {address}={value} echoed {a}={v}"));
            }
            Ok(Reply::Written)
        }
        (Request::WriteRegisters { address, words }, Response::WriteSingleRegister(a, w)) => {
            if a != *address || Some(&w) != words.first() {
                return garbage(format!("write register {address} echoed {a}={w}"));
            }
            Ok(Reply::Written)
        }
        (Request::WriteRegisters { address, words }, Response::WriteMultipleRegisters(a, n)) => {
            if a != *address || usize::from(n) != words.len() {
                return garbage(format!("write {} registers at {address} echoed {n} at {a}", words.len()));
            }
            Ok(Reply::Written)
        }
        (_, other) => garbage(format!("reply does not answer the request: {other:?}")),
    }
}
