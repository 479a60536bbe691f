//! The simulated devices' Modbus TCP server and its fault injection.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_modbus::server::tcp::Server;
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};

use super::{Bank, Plant};

/// Which device a simulated unit is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimDevice {
    /// `plugins/profiles/needle-dam.toml`.
    NeedleDam,
    /// `plugins/profiles/lighting-cabinet.toml`.
    LightingCabinet,
    /// `plugins/profiles/energy-meter.toml`.
    EnergyMeter,
}

impl SimDevice {
    fn plant(self) -> (Bank, Box<dyn Plant>) {
        match self {
            SimDevice::NeedleDam => super::needle_dam::new(),
            SimDevice::LightingCabinet => super::lighting_cabinet::new(),
            SimDevice::EnergyMeter => super::energy_meter::new(),
        }
    }
}

/// What the server has seen, for tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimStats {
    /// TCP connections accepted since start.
    pub connections: u64,
    /// Requests received.
    pub requests: u64,
    /// Most requests ever being answered at the same time.
    pub max_in_flight: u32,
}

struct Unit {
    bank: Bank,
    plant: Box<dyn Plant>,
    last_step: Instant,
}

#[derive(Default)]
struct Faults {
    delay_ms: AtomicU64,
    exception: AtomicU8,
    garbage: AtomicBool,
}

#[derive(Default)]
struct Stats {
    connections: AtomicU64,
    requests: AtomicU64,
    in_flight: AtomicU32,
    max_in_flight: AtomicU32,
}

struct Shared {
    units: Mutex<BTreeMap<u8, Unit>>,
    faults: Faults,
    stats: Stats,
}

impl Shared {
    fn units(&self) -> MutexGuard<'_, BTreeMap<u8, Unit>> {
        // A panic while holding the lock leaves plain numbers behind: still usable.
        self.units.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A Modbus TCP server hosting simulated units. Stops when dropped.
pub struct SimServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for SimServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimServer").field("addr", &self.addr).finish()
    }
}

impl SimServer {
    /// Listen on `addr` (port 0 picks a free one) and serve `units` (unit id, device).
    pub async fn start(addr: SocketAddr, units: &[(u8, SimDevice)]) -> io::Result<SimServer> {
        let now = Instant::now();
        let units = units
            .iter()
            .map(|(id, device)| {
                let (mut bank, mut plant) = device.plant();
                plant.step(&mut bank, 0.0);
                (*id, Unit { bank, plant, last_step: now })
            })
            .collect();
        let shared =
            Arc::new(Shared { units: Mutex::new(units), faults: Faults::default(), stats: Stats::default() });
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let server = SimServer { shared, addr, task: Mutex::new(None) };
        server.serve(listener);
        Ok(server)
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop listening and close every connection: the device is "down".
    pub fn stop(&self) {
        if let Some(task) = self.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
            // Aborting `serve` drops its cancellation guard, which ends every connection.
            task.abort();
        }
    }

    /// Listen again on the same address, with the devices' state kept.
    pub async fn restart(&self) -> io::Result<()> {
        self.stop();
        let listener = TcpListener::bind(self.addr).await?;
        self.serve(listener);
        Ok(())
    }

    /// Close every open connection (the device resets its network side).
    pub async fn drop_connections(&self) -> io::Result<()> {
        self.restart().await
    }

    /// Answer every request only after `delay` (longer than the client's timeout = "slow").
    pub fn set_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.shared.faults.delay_ms.store(ms, Ordering::Relaxed);
    }

    /// Answer every request with this Modbus exception code (`None` to stop).
    pub fn set_exception(&self, code: Option<u8>) {
        self.shared.faults.exception.store(code.unwrap_or(0), Ordering::Relaxed);
    }

    /// Garble the header of every reply (invalid protocol id).
    pub fn set_garbage(&self, on: bool) {
        self.shared.faults.garbage.store(on, Ordering::Relaxed);
    }

    /// Counters for tests.
    pub fn stats(&self) -> SimStats {
        let s = &self.shared.stats;
        SimStats {
            connections: s.connections.load(Ordering::Relaxed),
            requests: s.requests.load(Ordering::Relaxed),
            max_in_flight: s.max_in_flight.load(Ordering::Relaxed),
        }
    }

    /// Run `f` on a unit's plant of type `P` and its tables (after advancing it to now).
    pub(crate) fn with_plant<P: Plant, R>(
        &self,
        unit: u8,
        f: impl FnOnce(&mut P, &mut Bank) -> R,
    ) -> Option<R> {
        let mut units = self.shared.units();
        let u = units.get_mut(&unit)?;
        advance(u);
        let plant = u.plant.as_any().downcast_mut::<P>()?;
        let r = f(plant, &mut u.bank);
        u.plant.step(&mut u.bank, 0.0);
        Some(r)
    }

    fn serve(&self, listener: TcpListener) {
        let shared = Arc::clone(&self.shared);
        let task = tokio::spawn(async move {
            let server = Server::new(listener);
            let on_connected = |stream: TcpStream, _peer: SocketAddr| {
                let shared = Arc::clone(&shared);
                async move {
                    shared.stats.connections.fetch_add(1, Ordering::Relaxed);
                    let _ = stream.set_nodelay(true);
                    let stream = SimStream { inner: stream, shared: Arc::clone(&shared) };
                    Ok(Some((SimService(shared), stream)))
                }
            };
            let on_error = |e: io::Error| tracing::debug!(error = %e, "simulated device: connection ended");
            if let Err(e) = server.serve(&on_connected, on_error).await {
                tracing::warn!(error = %e, "simulated device stopped accepting");
            }
        });
        if let Some(old) = self.task.lock().unwrap_or_else(|e| e.into_inner()).replace(task) {
            old.abort();
        }
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn advance(unit: &mut Unit) {
    let now = Instant::now();
    let dt = now.saturating_duration_since(unit.last_step).as_secs_f64();
    unit.last_step = now;
    unit.plant.step(&mut unit.bank, dt);
}

#[derive(Clone)]
struct SimService(Arc<Shared>);

/// Counts a request as in flight until answered or dropped.
struct InFlight(Arc<Shared>);

impl InFlight {
    fn new(shared: Arc<Shared>) -> InFlight {
        let now = shared.stats.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.stats.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(shared)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.stats.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl tokio_modbus::server::Service for SimService {
    type Request = SlaveRequest<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = Pin<Box<dyn Future<Output = Result<Response, ExceptionCode>> + Send>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        let shared = Arc::clone(&self.0);
        Box::pin(async move {
            shared.stats.requests.fetch_add(1, Ordering::Relaxed);
            let _in_flight = InFlight::new(Arc::clone(&shared));
            let delay = shared.faults.delay_ms.load(Ordering::Relaxed);
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            match shared.faults.exception.load(Ordering::Relaxed) {
                0 => answer(&shared, req.slave, req.request),
                code => Err(ExceptionCode::new(code)),
            }
        })
    }
}

fn answer(shared: &Shared, slave: u8, request: Request<'static>) -> Result<Response, ExceptionCode> {
    let mut units = shared.units();
    let unit = units.get_mut(&slave).ok_or(ExceptionCode::GatewayTargetDevice)?;
    advance(unit);
    let bank = &mut unit.bank;
    let response = match request {
        Request::ReadCoils(a, n) => Response::ReadCoils(slice(&bank.coils, a, n, 2000)?.to_vec()),
        Request::ReadDiscreteInputs(a, n) => {
            Response::ReadDiscreteInputs(slice(&bank.discrete, a, n, 2000)?.to_vec())
        }
        Request::ReadHoldingRegisters(a, n) => {
            Response::ReadHoldingRegisters(slice(&bank.holding, a, n, 125)?.to_vec())
        }
        Request::ReadInputRegisters(a, n) => {
            Response::ReadInputRegisters(slice(&bank.input, a, n, 125)?.to_vec())
        }
        Request::WriteSingleCoil(a, v) => {
            *bank.coils.get_mut(usize::from(a)).ok_or(ExceptionCode::IllegalDataAddress)? = v;
            Response::WriteSingleCoil(a, v)
        }
        Request::WriteMultipleCoils(a, vs) => {
            slice_mut(&mut bank.coils, a, vs.len(), 1968)?.copy_from_slice(&vs);
            Response::WriteMultipleCoils(a, vs.len() as u16)
        }
        Request::WriteSingleRegister(a, w) => {
            *bank.holding.get_mut(usize::from(a)).ok_or(ExceptionCode::IllegalDataAddress)? = w;
            Response::WriteSingleRegister(a, w)
        }
        Request::WriteMultipleRegisters(a, ws) => {
            slice_mut(&mut bank.holding, a, ws.len(), 123)?.copy_from_slice(&ws);
            Response::WriteMultipleRegisters(a, ws.len() as u16)
        }
        _ => return Err(ExceptionCode::IllegalFunction),
    };
    if matches!(response, Response::WriteSingleCoil(..) | Response::WriteMultipleCoils(..))
        || matches!(response, Response::WriteSingleRegister(..) | Response::WriteMultipleRegisters(..))
    {
        unit.plant.written(&mut unit.bank);
    }
    Ok(response)
}

fn slice<T>(table: &[T], address: u16, count: u16, max: u16) -> Result<&[T], ExceptionCode> {
    if count == 0 || count > max {
        return Err(ExceptionCode::IllegalDataValue);
    }
    let start = usize::from(address);
    table.get(start..start + usize::from(count)).ok_or(ExceptionCode::IllegalDataAddress)
}

fn slice_mut<T>(table: &mut [T], address: u16, count: usize, max: usize) -> Result<&mut [T], ExceptionCode> {
    if count == 0 || count > max {
        return Err(ExceptionCode::IllegalDataValue);
    }
    let start = usize::from(address);
    table.get_mut(start..start + count).ok_or(ExceptionCode::IllegalDataAddress)
}

/// The TCP stream of one client, garbling replies while the garbage fault is on.
struct SimStream {
    inner: TcpStream,
    shared: Arc<Shared>,
}

impl AsyncRead for SimStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for SimStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.shared.faults.garbage.load(Ordering::Relaxed) && buf.len() >= 4 {
            // Bytes 2..4 of an MBAP header are the protocol id, always 0 in valid Modbus TCP.
            let mut garbled = buf.to_vec();
            garbled[2] ^= 0xA5;
            garbled[3] ^= 0x5A;
            return Pin::new(&mut self.inner).poll_write(cx, &garbled);
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
