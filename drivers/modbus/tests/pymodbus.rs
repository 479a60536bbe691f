//! Wire compatibility with an implementation outside this project: pymodbus (Debian's
//! python3-pymodbus) as a client of our simulator, and as a server for our client.
//! Missing pymodbus fails these tests with what to install; they never skip silently.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use berrygw_modbus::sim::NeedleDamSim;
use berrygw_modbus::{Device, PointValue, Profile};
use common::*;
use serde_json::{json, Value};

/// The python3 with pymodbus: `BERRYGW_PYTHON`, else Debian's own (not a pyenv shim).
fn python() -> PathBuf {
    let python =
        std::env::var_os("BERRYGW_PYTHON").map_or_else(|| PathBuf::from("/usr/bin/python3"), PathBuf::from);
    let ok = Command::new(&python)
        .args(["-c", "import pymodbus"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "pymodbus is needed for the wire-compatibility tests and `{} -c 'import pymodbus'` failed: \
         install it with `apt-get install python3-pymodbus` (Debian bookworm), or point \
         BERRYGW_PYTHON at a python3 that has pymodbus 3.x",
        python.display()
    );
    python
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pymodbus").join(name)
}

/// Kills the child on drop, so a failing test leaves no server behind.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pymodbus_client_reads_and_writes_our_needle_dam_simulator() {
    let python = python();
    let sim = NeedleDamSim::start(any_port()).await.unwrap();
    let port = sim.local_addr().port().to_string();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python).arg(script("client_reads_sim.py")).arg(port).output()
    })
    .await
    .unwrap()
    .expect("run the pymodbus client");
    assert!(output.status.success(), "pymodbus client failed: {}", String::from_utf8_lossy(&output.stderr));
    let got: Value = serde_json::from_slice(&output.stdout).expect("client prints JSON");

    assert_eq!(got["positions"], json!([200, 200, 200, 200]));
    let level = got["upstream_level"].as_f64().unwrap();
    assert!((1.5..3.0).contains(&level), "upstream level {level}");
    assert_eq!(got["selector"], json!(1));
    assert_eq!(got["discrete"][8], json!(false), "no motor fault");
    assert_eq!(got["write_register_error"], json!(false));
    assert_eq!(got["write_registers_error"], json!(false));
    assert_eq!(got["targets"], json!([200, 600, 450, 550]));
    assert_eq!(got["write_coil_error"], json!(false));
    assert_eq!(got["coils"], json!([false, false, false, false]), "stop coil self-clears");
    assert_eq!(got["bad_address_exception"], json!(2), "illegal data address");
    // pymodbus's writes reached the plant: bay 2 heads to 60 %.
    wait_until("bay 2 moves after pymodbus's write", || sim.bay_position(2).is_some_and(|p| p > 20.0)).await;
}

const PYMODBUS_DEVICE: &str = r#"
name = "pymodbus-device"
[[points]]
name = "temperature"
kind = "input_register"
address = 0
type = "i16"
scale = 0.1
[[points]]
name = "voltage"
kind = "input_register"
address = 2
type = "f32"
[[points]]
name = "counter"
kind = "input_register"
address = 4
type = "u32"
word_order = "little"
[[points]]
name = "balance"
kind = "input_register"
address = 6
type = "i32"
[[points]]
name = "state"
kind = "input_register"
address = 8
type = "u16"
enum = { 0 = "idle", 1 = "run", 2 = "fault" }
[[points]]
name = "setpoint"
kind = "holding_register"
address = 0
type = "u16"
scale = 0.1
[[points]]
name = "big_setpoint"
kind = "holding_register"
address = 2
type = "u32"
[[points]]
name = "pump"
kind = "coil"
address = 1
type = "bool"
[[points]]
name = "alarm"
kind = "discrete_input"
address = 2
type = "bool"

[[commands]]
name = "set_setpoint"
args = [{ name = "value", type = "float", min = 5, max = 30 }]
writes = [{ point = "setpoint", arg = "value" }]
preconditions = [{ point = "state", not_equals = "fault", reason = "the device reports a fault" }]
verify = { point = "setpoint", arg = "value", tolerance = 0.05, deadline_s = 5 }

[[commands]]
name = "set_big"
args = [{ name = "value", type = "int", min = 0, max = 4000000000 }]
writes = [{ point = "big_setpoint", arg = "value" }]
verify = { point = "big_setpoint", arg = "value", deadline_s = 5 }

[[commands]]
name = "pump"
args = [{ name = "on", type = "bool" }]
writes = [{ point = "pump", arg = "on" }]
verify = { point = "pump", arg = "on", deadline_s = 5 }
"#;

#[tokio::test]
async fn our_client_polls_and_commands_a_pymodbus_server() {
    let mut child = Command::new(python())
        .arg(script("server.py"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the pymodbus server");
    let stdout = child.stdout.take().expect("piped stdout");
    let server = Reaped(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("the server prints its port");
    let port: u16 = line.trim().parse().unwrap_or_else(|_| panic!("pymodbus server said {line:?}"));

    let profile = Profile::parse(Path::new("pymodbus-device.toml"), PYMODBUS_DEVICE).unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let dev = Device::spawn(profile.into(), tcp_bus(addr, Duration::from_secs(2)), fast("py", 3));
    let s = wait_state(&mut dev.state(), "pymodbus server polled", |s| s.online).await;
    assert_eq!(s.points["temperature"], PointValue::Number(-12.5));
    assert_eq!(s.points["voltage"], PointValue::Number(231.5));
    assert_eq!(s.points["counter"], PointValue::Number(123_456_789.0));
    assert_eq!(s.points["balance"], PointValue::Number(-70_000.0));
    assert_eq!(s.points["state"], PointValue::Enum { raw: 1, label: Some("run".into()) });
    assert_eq!(s.points["setpoint"], PointValue::Number(21.5));
    assert_eq!(s.points["pump"], PointValue::Bool(false));
    assert_eq!(s.points["alarm"], PointValue::Bool(true));

    for (command, args) in [
        ("set_setpoint", json!({"value": 18.5})),
        ("set_big", json!({"value": 3_000_000_000u64})),
        ("pump", json!({"on": true})),
    ] {
        let outcome = dev.execute(command, &args).await;
        assert_eq!(outcome.reason(), "verified", "{command}: {outcome}");
    }
    let s = dev.state().borrow().clone();
    assert_eq!(s.points["setpoint"], PointValue::Number(18.5));
    assert_eq!(s.points["big_setpoint"], PointValue::Number(3_000_000_000.0));
    assert_eq!(s.points["pump"], PointValue::Bool(true));
    drop(server);
}
