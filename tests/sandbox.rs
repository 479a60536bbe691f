//! End to end: berrygw under the shipped unit's own sandbox. systemd is not
//! PID 1 here, so `tests/support/unit_sandbox.py` applies what the unit file
//! says (its syscall filter with systemd's own set tables, ProtectClock=,
//! CapabilityBoundingSet=, NoNewPrivileges=) with libseccomp's Python binding,
//! then runs the real binary: it must still forward uplinks, and still read
//! the kernel's clock state, without any right to set the clock.
//!
//! Native only: under qemu-user the filter would judge qemu's own calls.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use support::*;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn unit() -> String {
    repo().join("systemd/berrygw.service").display().to_string()
}

fn sandbox() -> String {
    repo().join("tests/support/unit_sandbox.py").display().to_string()
}

/// Debian's python3, which has python3-seccomp (scripts/test installs it).
const PYTHON: &str = "/usr/bin/python3";

fn native() -> bool {
    std::env::var("BERRYGW_TEST_RUNNER").map_or(true, |r| r.trim().is_empty())
}

/// Python asking the kernel, through libc, outside or inside the sandbox:
/// prints `read <return> <errno>` for a read-only adjtimex, then the same for
/// clock_settime(now) and for an adjtimex that sets the status.
const CLOCK_PROBE: &str = r#"
import ctypes, errno
libc = ctypes.CDLL(None, use_errno=True)
def call(f, *a):
    r = f(*a)
    return f"{r} {errno.errorcode.get(ctypes.get_errno(), 0) if r < 0 else 0}"
buf = ctypes.create_string_buffer(512)
print("read", call(libc.adjtimex, buf))
class TS(ctypes.Structure):
    _fields_ = [("s", ctypes.c_long), ("ns", ctypes.c_long)]
t = TS()
libc.clock_gettime(0, ctypes.byref(t))
print("settime", call(libc.clock_settime, 0, ctypes.byref(t)))
ctypes.memset(buf, 0, 512)
ctypes.c_uint.from_buffer(buf, 0).value = 0x0010  # ADJ_STATUS
print("setstatus", call(libc.adjtimex, buf))
"#;

fn probe(sandboxed: bool) -> String {
    let mut c = if sandboxed {
        let mut c = Command::new(PYTHON);
        c.args([sandbox().as_str(), unit().as_str(), "--", PYTHON, "-c", CLOCK_PROBE]);
        c
    } else {
        let mut c = Command::new(PYTHON);
        c.args(["-c", CLOCK_PROBE]);
        c
    };
    let out = c.output().expect("run python3");
    assert!(
        out.status.success(),
        "clock probe failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn line<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(name))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {name} in {out}"))
}

/// TIME_ERROR (5) or STA_UNSYNC: what the kernel says, as berrygw reads it.
fn kernel_state(read: &str) -> &'static str {
    let code: i32 = read.split_whitespace().next().and_then(|c| c.parse().ok()).expect("adjtimex return");
    if code == 5 {
        "unsynchronized"
    } else {
        "synchronized"
    }
}

#[test]
fn the_units_sandbox_lets_the_clock_be_read_but_never_set() {
    if !native() {
        eprintln!("skipped under qemu-user: the syscall filter would apply to qemu itself");
        return;
    }
    let out = probe(true);
    let read = line(&out, "read");
    assert!(!read.ends_with("EPERM"), "a read-only adjtimex is denied under the unit: {out}");
    assert_eq!(line(&out, "settime"), "-1 EPERM", "clock_settime must be refused: {out}");
    assert_eq!(line(&out, "setstatus"), "-1 EPERM", "adjtimex that sets must be refused: {out}");
}

#[test]
fn daemon_under_the_units_sandbox_forwards_and_reads_the_clock() {
    if !native() {
        eprintln!("skipped under qemu-user: the syscall filter would apply to qemu itself");
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let broker = Mosquitto::start(dir.path(), None);
    let sub = Subscriber::connect(broker.port, "eu868/gateway/0016c001ff10a235/#", None);
    let devices = sim_device("d", "water_meter", "26011bda", 100, Some(3));
    let state = dir.path().join("state");
    let text = config(&state, "sqlite", &broker.url(false), "", &devices);
    let (sandbox, unit) = (sandbox(), unit());
    let gw = Berrygw::start_wrapped(dir.path(), &text, &[PYTHON, &sandbox, &unit, "--"]);

    let ups = sub.wait_uplinks(3, Duration::from_secs(30));
    assert_eq!(ups.len(), 3, "uplinks forwarded under the unit's syscall filter; log: {:?}", gw.log());

    let socket = state.join("api.sock");
    let json = wait_for(Duration::from_secs(10), "berrygw status --json", || {
        let out = berrygw_command().args(["status", "--json", "--socket"]).arg(&socket).output().ok()?;
        (!out.stdout.is_empty()).then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    });
    let status: serde_json::Value = serde_json::from_str(&json).expect("status JSON");
    let expected = kernel_state(line(&probe(false), "read"));
    assert_eq!(
        status["clock"]["state"], expected,
        "the daemon under the sandbox reads the kernel's clock state as an unsandboxed reader does: {}",
        status["clock"]
    );
}
