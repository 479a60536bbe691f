//! The RTU framing path over a pseudo-terminal pair: our client on the "serial port", a
//! tokio-modbus RTU server on the other end, several unit ids on one line.

mod common;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berrygw_modbus::{Bus, BusOptions, CallError, Device, Link, Parity, PointValue, Profile, Reply, Request};
use common::*;
use serde_json::json;
use tokio_modbus::{ExceptionCode, Response, SlaveRequest};
use tokio_serial::SerialPort;

/// Unit 1 only: 8 holding registers; inputs mirror holdings + 1. Other units stay silent,
/// as absent devices on an RS-485 line do.
#[derive(Clone)]
struct UnitOne(Arc<Mutex<Vec<u16>>>);

impl tokio_modbus::server::Service for UnitOne {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Pin<Box<dyn Future<Output = Result<Option<Response>, ExceptionCode>> + Send>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        let regs = Arc::clone(&self.0);
        Box::pin(async move {
            if req.slave != 1 {
                return Ok(None);
            }
            let mut regs = regs.lock().unwrap_or_else(|e| e.into_inner());
            let range = |a: u16, n: u16| {
                let (a, n) = (usize::from(a), usize::from(n));
                if a + n <= regs.len() {
                    Ok(a..a + n)
                } else {
                    Err(ExceptionCode::IllegalDataAddress)
                }
            };
            Ok(Some(match req.request {
                tokio_modbus::Request::ReadHoldingRegisters(a, n) => {
                    Response::ReadHoldingRegisters(regs[range(a, n)?].to_vec())
                }
                tokio_modbus::Request::ReadInputRegisters(a, n) => {
                    Response::ReadInputRegisters(regs[range(a, n)?].iter().map(|w| w + 1).collect())
                }
                tokio_modbus::Request::WriteSingleRegister(a, w) => {
                    let r = range(a, 1)?;
                    regs[r][0] = w;
                    Response::WriteSingleRegister(a, w)
                }
                tokio_modbus::Request::WriteMultipleRegisters(a, ws) => {
                    let r = range(a, ws.len() as u16)?;
                    regs[r].copy_from_slice(&ws);
                    Response::WriteMultipleRegisters(a, ws.len() as u16)
                }
                _ => return Err(ExceptionCode::IllegalFunction),
            }))
        })
    }
}

// serialport sets line speed with the termios2 ioctls (TCGETS2/TCSETS2), which qemu-user
// (Debian bookworm's 7.2) does not implement: opening any tty fails with ENOSYS there. On
// real ARM hardware run it with `cargo test -- --include-ignored`.
#[tokio::test]
#[cfg_attr(
    not(target_arch = "x86_64"),
    ignore = "qemu-user lacks the termios2 ioctls serial ports need; on real hardware use --include-ignored"
)]
async fn rtu_over_a_pty_reads_writes_and_survives_a_silent_unit() {
    let (master, slave) = tokio_serial::SerialStream::pair().expect("open a pseudo-terminal pair");
    let path = PathBuf::from(slave.name().expect("the pty has a name"));
    // Our client opens the path itself, with an exclusive lock as on a real RS-485 port. A
    // plain handle (no lock) keeps the line up: a pty whose last slave closes hangs up the
    // master, and the server with it.
    let _line_up = std::fs::OpenOptions::new().read(true).write(true).open(&path).expect("open the pty");
    drop(slave);
    let registers = Arc::new(Mutex::new(vec![100, 200, 300, 400, 0, 0, 0, 0]));
    let server = tokio::spawn(
        tokio_modbus::server::rtu::Server::new(master).serve_forever(UnitOne(registers.clone())),
    );

    let link = Link::Rtu { path, baud_rate: 19_200, parity: Parity::Even, stop_bits: 1 };
    let options = BusOptions { timeout: Duration::from_millis(300), ..BusOptions::for_rtu(19_200) };
    let bus = Bus::spawn(link, options);
    let counters = bus.counters();

    let read = bus.call(1, Request::ReadInputRegisters { address: 0, count: 4 }).await;
    assert_eq!(read, Ok(Reply::Words(vec![101, 201, 301, 401])));
    let wrote = bus.call(1, Request::WriteRegisters { address: 4, words: vec![0xBEEF, 0x0042] }).await;
    assert_eq!(wrote, Ok(Reply::Written));
    assert_eq!(registers.lock().unwrap()[4..6], [0xBEEF, 0x0042]);

    let silent = bus.call(2, Request::ReadHoldingRegisters { address: 0, count: 1 }).await;
    assert!(matches!(silent, Err(CallError::Timeout(_))), "{silent:?}");
    assert_eq!(counters.dropped.load(Ordering::Relaxed), 1, "the port is reopened after a timeout");
    let again = bus.call(1, Request::ReadHoldingRegisters { address: 4, count: 2 }).await;
    assert_eq!(again, Ok(Reply::Words(vec![0xBEEF, 0x0042])));
    assert_eq!(counters.connects.load(Ordering::Relaxed), 2);
    let bad = bus.call(1, Request::ReadHoldingRegisters { address: 7, count: 4 }).await;
    assert!(matches!(bad, Err(CallError::Exception { code: 2, .. })), "{bad:?}");

    // The poller and a verified command over RTU.
    let profile = Profile::parse(
        std::path::Path::new("rtu.toml"),
        r#"
name = "rtu-device"
[[points]]
name = "flow"
kind = "input_register"
address = 0
type = "u16"
scale = 0.1
[[points]]
name = "setpoint"
kind = "holding_register"
address = 6
type = "u16"
[[commands]]
name = "set"
args = [{ name = "value", type = "int", min = 0, max = 1000 }]
writes = [{ point = "setpoint", arg = "value" }]
verify = { point = "setpoint", arg = "value", deadline_s = 5 }
"#,
    )
    .unwrap();
    let dev = Device::spawn(profile.into(), bus, fast("rtu", 1));
    let s = wait_state(&mut dev.state(), "polled over RTU", |s| s.online).await;
    assert_eq!(s.points["flow"], PointValue::Number(10.1));
    assert_eq!(dev.execute("set", &json!({"value": 777})).await.reason(), "verified");
    assert_eq!(registers.lock().unwrap()[6], 777);
    server.abort();
}
