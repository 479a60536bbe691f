//! A LoRa Basics Station LNS for the tests (`station_lns.py`, on python3-websockets):
//! started on a port the test picks, stopped (killed) and started again on the same port
//! for outages, fed text messages through its stdin, read through its log of JSON lines.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use super::{free_port, wait_for};

/// The peer as a child process.
pub struct StationLns {
    pub port: u16,
    pub log: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
}

impl StationLns {
    /// Start it with extra `args` (`--mode mute`, `--tls CERT KEY`, ...); logs to `dir`.
    pub fn start(dir: &Path, args: &[&str]) -> StationLns {
        let mut lns = StationLns {
            port: free_port(),
            log: dir.join(format!("lns-{}.jsonl", rand_suffix())),
            args: args.iter().map(|a| a.to_string()).collect(),
            child: None,
            stdin: None,
        };
        lns.launch();
        lns
    }

    fn launch(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/support/station_lns.py");
        let mut child = Command::new("/usr/bin/python3")
            .arg(script)
            .args(["--port", &self.port.to_string(), "--log", self.log.to_str().expect("utf-8 path")])
            .args(&self.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 with python3-websockets (scripts/test installs it)");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("the LNS says it listens");
        assert!(line.starts_with("listening"), "station_lns.py: {line:?}");
        self.stdin = child.stdin.take();
        self.child = Some(child);
    }

    /// The same peer with other arguments from now on (after a `stop`).
    pub fn set_args(&mut self, args: &[&str]) {
        self.args = args.iter().map(|a| a.to_string()).collect();
    }

    /// Kill it: every connection drops at once, as when the LNS or the backhaul dies.
    pub fn stop(&mut self) {
        self.stdin = None;
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start it again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    /// Send `text` as one message to the newest traffic connection.
    pub fn send(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("running");
        writeln!(stdin, "{text}").expect("write to the LNS");
        stdin.flush().expect("flush");
    }

    /// `ws://127.0.0.1:<port>` (or wss://).
    pub fn uri(&self) -> String {
        let tls = self.args.iter().any(|a| a == "--tls");
        format!("{}://127.0.0.1:{}", if tls { "wss" } else { "ws" }, self.port)
    }

    /// Everything logged so far, oldest first.
    pub fn entries(&self) -> Vec<serde_json::Value> {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The messages of type `msgtype` received so far.
    pub fn messages(&self, msgtype: &str) -> Vec<serde_json::Value> {
        self.entries()
            .into_iter()
            .filter_map(|e| e.get("msg").cloned())
            .filter(|m| m["msgtype"] == msgtype)
            .collect()
    }

    /// berrygw's seq of each uplink received (`upinfo.seq`), in arrival order.
    pub fn uplink_seqs(&self) -> Vec<u64> {
        self.messages("updf").iter().filter_map(|m| m["upinfo"]["seq"].as_u64()).collect()
    }

    /// Wait until at least `n` uplinks arrived.
    pub fn wait_uplinks(&self, n: usize, timeout: Duration) -> Vec<u64> {
        wait_for(timeout, &format!("{n} uplinks at the LNS"), || {
            let seqs = self.uplink_seqs();
            (seqs.len() >= n).then_some(seqs)
        })
    }
}

impl Drop for StationLns {
    fn drop(&mut self) {
        self.stop();
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// A CUPS server for the tests (`station_cups.py`, on python3-aiohttp, update signatures by
/// python3-cryptography). What it hands over is its state file, which `set` replaces.
pub struct StationCups {
    pub port: u16,
    pub log: PathBuf,
    state: PathBuf,
    tls: bool,
    child: Child,
}

impl StationCups {
    /// Start it on a free port, over TLS with `tls` (certificate and key files).
    pub fn start(dir: &Path, tls: Option<(&Path, &Path)>, state: &serde_json::Value) -> StationCups {
        let suffix = rand_suffix();
        let log = dir.join(format!("cups-{suffix}.jsonl"));
        let state_path = dir.join(format!("cups-{suffix}.json"));
        fs::write(&state_path, state.to_string()).expect("state");
        let port = free_port();
        let mut command = Command::new("/usr/bin/python3");
        command.arg(cups_script()).args([
            "--port",
            &port.to_string(),
            "--log",
            log.to_str().expect("utf-8"),
            "--state",
            state_path.to_str().expect("utf-8"),
        ]);
        if let Some((cert, key)) = tls {
            command.arg("--tls").arg(cert).arg(key);
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 with python3-aiohttp and python3-cryptography (scripts/test installs them)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("CUPS says it listens");
        assert!(line.starts_with("listening"), "station_cups.py: {line:?}");
        StationCups { port, log, state: state_path, tls: tls.is_some(), child }
    }

    /// What it hands over from the next request on.
    pub fn set(&self, state: &serde_json::Value) {
        let tmp = self.state.with_extension("tmp");
        fs::write(&tmp, state.to_string()).expect("state");
        fs::rename(&tmp, &self.state).expect("state");
    }

    pub fn uri(&self) -> String {
        format!("{}://127.0.0.1:{}", if self.tls { "https" } else { "http" }, self.port)
    }

    /// Every request so far: {"headers", "req", "sent", "refused"?}.
    pub fn requests(&self) -> Vec<serde_json::Value> {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// A new P-256 signing key made by python3-cryptography: its private key (PEM) at
    /// `private`, Station's `sig-N.key` (the 64 bytes of the public point) at `public`.
    pub fn make_sig_key(private: &Path, public: &Path) {
        let status = Command::new("/usr/bin/python3")
            .arg(cups_script())
            .arg("--make-sig-key")
            .arg(private)
            .arg(public)
            .status()
            .expect("python3");
        assert!(status.success(), "station_cups.py --make-sig-key");
    }
}

impl Drop for StationCups {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cups_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/support/station_cups.py")
}
