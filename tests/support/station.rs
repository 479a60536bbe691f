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
