//! Test harness for the end-to-end tests: real mosquitto brokers, the real
//! `berrygw` binary, certificates made with openssl, all on loopback ports
//! picked here and stopped when the test ends (on `Drop`, even on panic).

#![allow(dead_code)]

pub mod gwmp;
pub mod station;

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chirpstack_api::gw;
use prost::Message;
use rumqttc::{Client, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};

/// Ports handed out by `free_port`: below Linux's ephemeral range (32768 and up),
/// so that no outgoing connection of this or another process takes one meanwhile.
const TEST_PORTS: std::ops::Range<u32> = 20_000..32_000;

/// A TCP and UDP port on 127.0.0.1 for a listener of the test (mosquitto, berrygw).
/// Never the same twice in one test binary (a per-process counter), so tests running
/// in parallel cannot race for it; each process starts at its own place in the range
/// (from its pid), so two test binaries at once are unlikely to meet; a port
/// something else holds is skipped.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static HANDED_OUT: AtomicU32 = AtomicU32::new(0);
    let span = TEST_PORTS.end - TEST_PORTS.start;
    let start = (std::process::id().wrapping_mul(7919)) % span;
    loop {
        let n = HANDED_OUT.fetch_add(1, Ordering::Relaxed);
        assert!(n < span, "no test port left");
        let port = (TEST_PORTS.start + (start + n) % span) as u16;
        let free = TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok();
        if free {
            return port;
        }
    }
}

/// Poll `f` until it returns Some, or panic with `what` after `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

pub fn mosquitto_bin() -> PathBuf {
    for p in ["/usr/sbin/mosquitto", "/usr/bin/mosquitto", "/usr/local/sbin/mosquitto"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    PathBuf::from("mosquitto")
}

/// TLS material for a broker listener.
#[derive(Clone)]
pub struct BrokerTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub require_client_cert: bool,
}

/// A mosquitto process with a persistent store in its own directory.
pub struct Mosquitto {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Mosquitto {
    pub fn start(dir: &Path, tls: Option<BrokerTls>) -> Mosquitto {
        Mosquitto::start_with(dir, tls, "")
    }

    /// As `start`, with more lines for its configuration (an ACL file, say).
    pub fn start_with(dir: &Path, tls: Option<BrokerTls>, extra_conf: &str) -> Mosquitto {
        let port = free_port();
        let dir = dir.join(format!("mosquitto-{port}"));
        fs::create_dir_all(&dir).expect("mosquitto dir");
        let mut conf = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\nmax_queued_messages 0\nmax_inflight_messages 0\nlog_dest file {}/mosquitto.log\n",
            dir.display(),
            dir.display()
        );
        // Run as whoever runs the tests: as root, mosquitto would otherwise switch to
        // its own user and fail to read the test's private keys.
        if let Ok(out) = Command::new("id").arg("-un").output() {
            conf += &format!("user {}\n", String::from_utf8_lossy(&out.stdout).trim());
        }
        if let Some(t) = tls {
            conf += &format!(
                "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate {}\n",
                t.ca.display(),
                t.cert.display(),
                t.key.display(),
                t.require_client_cert
            );
        }
        conf += extra_conf;
        fs::write(dir.join("mosquitto.conf"), conf).expect("write mosquitto.conf");
        let mut m = Mosquitto { port, dir, child: None };
        m.restart();
        m
    }

    /// Start (again) on the same port with the same store.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "mosquitto already running");
        let child = Command::new(mosquitto_bin())
            .arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto (is it installed? scripts/test installs it)");
        self.child = Some(child);
        let port = self.port;
        wait_for(Duration::from_secs(10), "mosquitto to listen", || {
            TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
        });
    }

    /// Stop cleanly (SIGTERM, so the persistent store is saved).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, "TERM");
            let _ = wait_timeout(&mut child, Duration::from_secs(10)).or_else(|| {
                let _ = child.kill();
                child.wait().ok()
            });
        }
    }

    pub fn url(&self, tls: bool) -> String {
        format!("{}://127.0.0.1:{}", if tls { "mqtts" } else { "mqtt" }, self.port)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn signal(child: &Child, sig: &str) {
    let _ = Command::new("kill").arg(format!("-{sig}")).arg(child.id().to_string()).status();
}

fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        if Instant::now() > deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl.
pub struct Certs {
    dir: PathBuf,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("run openssl");
    assert!(out.status.success(), "openssl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

impl Certs {
    /// Generate everything under `dir/<name>`.
    pub fn generate(dir: &Path, name: &str) -> Certs {
        let d = dir.join(name);
        fs::create_dir_all(&d).expect("cert dir");
        openssl(
            &d,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                &format!("/CN=berrygw test CA {name}"),
            ],
        );
        for (who, ext) in [
            ("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth"),
            ("client", "extendedKeyUsage=clientAuth"),
        ] {
            fs::write(d.join(format!("{who}.ext")), format!("{ext}\nbasicConstraints=CA:FALSE\n"))
                .expect("ext");
            issue(&d, who, &format!("{who}.ext"));
        }
        Certs {
            dir: d.clone(),
            ca: d.join("ca.pem"),
            server_cert: d.join("server.pem"),
            server_key: d.join("server.key"),
            client_cert: d.join("client.pem"),
            client_key: d.join("client.key"),
        }
    }
}

impl Certs {
    /// Another client certificate of this CA, with common name `cn` (a broker that maps
    /// certificates to users, `use_identity_as_username`, knows it by that name):
    /// `(certificate, key)`.
    pub fn client(&self, cn: &str) -> (PathBuf, PathBuf) {
        issue(&self.dir, cn, "client.ext")
    }
}

/// A key and a certificate `<cn>.key`, `<cn>.pem` for common name `cn`, signed by the CA in
/// `d` with the extensions of the file `ext`: `(certificate, key)`.
fn issue(d: &Path, cn: &str, ext: &str) -> (PathBuf, PathBuf) {
    let (key, csr, pem) = (format!("{cn}.key"), format!("{cn}.csr"), format!("{cn}.pem"));
    openssl(
        d,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={cn}"),
        ],
    );
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            ext,
        ],
    );
    (d.join(pem), d.join(key))
}

/// A mosquitto with a TLS listener using `certs`' server identity.
pub fn tls_broker(dir: &Path, certs: &Certs, require_client_cert: bool) -> Mosquitto {
    let tls = BrokerTls {
        ca: certs.ca.clone(),
        cert: certs.server_cert.clone(),
        key: certs.server_key.clone(),
        require_client_cert,
    };
    Mosquitto::start(dir, Some(tls))
}

/// A mosquitto requiring a client certificate of `certs`' CA, whose CN is the user name
/// `acl` (mosquitto's acl_file syntax) gives rights to: the fleet's trust boundary.
pub fn acl_broker(dir: &Path, certs: &Certs, acl: &str) -> Mosquitto {
    let acl_file = dir.join("acl");
    fs::write(&acl_file, acl).expect("acl");
    let tls = BrokerTls {
        ca: certs.ca.clone(),
        cert: certs.server_cert.clone(),
        key: certs.server_key.clone(),
        require_client_cert: true,
    };
    let conf = format!("use_identity_as_username true\nacl_file {}\n", acl_file.display());
    Mosquitto::start_with(dir, Some(tls), &conf)
}

/// Sink `name` of a gateway on the TLS broker at `url`, with the client certificate `cert`.
pub fn tls_sink(name: &str, url: &str, certs: &Certs, cert: &Path, key: &Path) -> String {
    format!(
        "[sinks.{name}]\nserver = \"{url}\"\nca_file = \"{}\"\nclient_cert_file = \"{}\"\nclient_key_file = \"{}\"\n\
         reconnect_min_ms = 200\nreconnect_max_ms = 1000\n",
        certs.ca.display(),
        cert.display(),
        key.display()
    )
}

/// rumqttc TLS settings for the test subscriber, with or without the client certificate.
pub fn client_tls(certs: &Certs, with_cert: bool) -> TlsConfiguration {
    let files = berrygw_proto::tls::TlsFiles {
        ca_file: Some(&certs.ca),
        client_cert_file: with_cert.then_some(certs.client_cert.as_path()),
        client_key_file: with_cert.then_some(certs.client_key.as_path()),
    };
    TlsConfiguration::Rustls(berrygw_proto::tls::client_config(&files).expect("test TLS config"))
}

/// The real berrygw binary running `run --config`.
pub struct Berrygw {
    child: Option<Child>,
    pub config: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
    env: Vec<(String, String)>,
    /// A program (and its arguments) the daemon runs under, e.g. a sandbox.
    wrapper: Vec<String>,
}

pub fn berrygw_bin() -> &'static str {
    env!("CARGO_BIN_EXE_berrygw")
}

/// A command running the berrygw binary; under `scripts/cross-test` the
/// foreign binary goes through the qemu runner named in `BERRYGW_TEST_RUNNER`.
pub fn berrygw_command() -> Command {
    through_runner(Path::new(berrygw_bin()))
}

/// A command running `bin`, through the qemu runner in `BERRYGW_TEST_RUNNER` if any.
fn through_runner(bin: &Path) -> Command {
    let runner = std::env::var("BERRYGW_TEST_RUNNER").unwrap_or_default();
    let mut words = runner.split_whitespace();
    match words.next() {
        Some(program) => {
            let mut c = Command::new(program);
            c.args(words).arg(bin);
            c
        }
        None => Command::new(bin),
    }
}

/// The central tool, built beside `berrygw` by `cargo test --workspace` (the `berryctl`
/// package's own tests make cargo build its binary).
pub fn berryctl_bin() -> PathBuf {
    let bin = Path::new(berrygw_bin()).with_file_name("berryctl");
    assert!(
        bin.exists(),
        "{} is not built: run `cargo build -p berryctl` (cargo test --workspace builds it)",
        bin.display()
    );
    bin
}

/// A command running `berryctl` (through the qemu runner under `scripts/cross-test`).
pub fn berryctl_command() -> Command {
    through_runner(&berryctl_bin())
}

impl Berrygw {
    /// Write `config_text` to `dir/berrygw.toml` and start the daemon on it.
    pub fn start(dir: &Path, config_text: &str) -> Berrygw {
        Berrygw::start_with_env(dir, config_text, &[])
    }

    /// As `start`, with extra environment variables for the daemon.
    pub fn start_with_env(dir: &Path, config_text: &str, env: &[(&str, &str)]) -> Berrygw {
        let config = dir.join("berrygw.toml");
        fs::write(&config, config_text).expect("write config");
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut b = Berrygw { child: None, config, log: Arc::default(), env, wrapper: Vec::new() };
        b.restart();
        b
    }

    /// As `start`, the daemon run by `wrapper` (a program and its arguments,
    /// then the berrygw binary and its own arguments).
    pub fn start_wrapped(dir: &Path, config_text: &str, wrapper: &[&str]) -> Berrygw {
        let config = dir.join("berrygw.toml");
        fs::write(&config, config_text).expect("write config");
        let wrapper = wrapper.iter().map(|w| w.to_string()).collect();
        let mut b = Berrygw { child: None, config, log: Arc::default(), env: Vec::new(), wrapper };
        b.restart();
        b
    }

    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "berrygw already running");
        let mut command = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(berrygw_bin());
                c
            }
            None => berrygw_command(),
        };
        let mut child = command
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .env("BERRYGW_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start berrygw");
        let stderr = child.stderr.take().expect("stderr piped");
        let log = self.log.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("BERRYGW_TEST_ECHO").is_some() {
                    eprintln!("berrygw| {line}");
                }
                if let Ok(mut l) = log.lock() {
                    l.push(line);
                }
            }
        });
        self.child = Some(child);
    }

    /// Every line logged so far (all runs of this daemon).
    pub fn log(&self) -> Vec<String> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Wait until a log line contains `needle`; returns that line.
    pub fn wait_log(&self, timeout: Duration, needle: &str) -> String {
        wait_for(timeout, &format!("berrygw to log {needle:?}"), || {
            self.log().into_iter().find(|l| l.contains(needle))
        })
    }

    /// SIGKILL: as a power cut, nothing gets flushed.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Send `sig` (`HUP`, `TERM`, ...) to the running daemon.
    pub fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            signal(c, sig);
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        signal(&c, "TERM");
        wait_timeout(&mut c, Duration::from_secs(20))
    }
}

impl Drop for Berrygw {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// One message seen by the test subscriber.
#[derive(Clone, Debug)]
pub struct Seen {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
    pub at: SystemTime,
}

impl Seen {
    pub fn uplink(&self) -> gw::UplinkFrame {
        gw::UplinkFrame::decode(self.payload.as_slice())
            .expect("uplink decodes as chirpstack_api gw.UplinkFrame")
    }

    /// The berrygw sequence number in the uplink's metadata.
    pub fn seq(&self) -> u64 {
        let up = self.uplink();
        let rx = up.rx_info.expect("rx_info");
        rx.metadata.get("berrygw_seq").expect("berrygw_seq metadata").parse().expect("numeric seq")
    }
}

/// A persistent-session QoS 1 subscriber on its own thread, as a network server would be.
pub struct Subscriber {
    seen: Arc<Mutex<Vec<Seen>>>,
    client: Client,
}

impl Subscriber {
    pub fn connect(port: u16, filter: &str, tls: Option<TlsConfiguration>) -> Subscriber {
        let mut opts = MqttOptions::new(format!("test-sub-{port}-{}", std::process::id()), "127.0.0.1", port);
        opts.set_clean_session(false);
        opts.set_keep_alive(Duration::from_secs(5));
        opts.set_max_packet_size(1 << 20, 1 << 20);
        if let Some(t) = tls {
            opts.set_transport(Transport::tls_with_config(t));
        }
        let (client, mut conn) = Client::new(opts, 100);
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let s = seen.clone();
        let c = client.clone();
        let filter = filter.to_string();
        thread::spawn(move || loop {
            match conn.recv() {
                Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                    let _ = c.try_subscribe(filter.clone(), QoS::AtLeastOnce);
                }
                Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => {
                    let _ = ready_tx.send(());
                }
                Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                    if let Ok(mut v) = s.lock() {
                        v.push(Seen {
                            topic: p.topic.clone(),
                            payload: p.payload.to_vec(),
                            retain: p.retain,
                            at: SystemTime::now(),
                        });
                    }
                }
                Ok(Ok(_)) => {}
                Ok(Err(_)) => thread::sleep(Duration::from_millis(200)),
                Err(_) => return,
            }
        });
        ready_rx.recv_timeout(Duration::from_secs(10)).expect("test subscriber subscribed");
        Subscriber { seen, client }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().map(|v| v.clone()).unwrap_or_default()
    }

    pub fn on_topic(&self, suffix: &str) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| s.topic.ends_with(suffix)).collect()
    }

    /// Wait until `n` distinct uplinks (by sequence number) arrived; returns every
    /// uplink message seen, duplicates included.
    pub fn wait_uplinks(&self, n: usize, timeout: Duration) -> Vec<Seen> {
        let deadline = Instant::now() + timeout;
        loop {
            let ups = self.on_topic("/event/up");
            let distinct = first_arrivals(&ups).len();
            if distinct >= n {
                return ups;
            }
            if Instant::now() > deadline {
                let have: std::collections::BTreeSet<u64> = first_arrivals(&ups).into_iter().collect();
                let max = have.iter().next_back().copied().unwrap_or(0);
                let missing: Vec<u64> = (1..=max).filter(|s| !have.contains(s)).take(20).collect();
                panic!("timed out after {timeout:?}: {distinct} of {n} distinct uplinks; missing below {max}: {missing:?}");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.client.disconnect();
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// A sim device table entry in TOML.
pub fn sim_device(name: &str, kind: &str, dev_addr: &str, interval_ms: u64, count: Option<u64>) -> String {
    let count = count.map(|c| format!("count = {c}\n")).unwrap_or_default();
    format!(
        "[[radio.sim.devices]]\nname = \"{name}\"\nkind = \"{kind}\"\ndev_addr = \"{dev_addr}\"\nnwk_s_key = \"2b7e151628aed2a6abf7158809cf4f3c\"\napp_s_key = \"000102030405060708090a0b0c0d0e0f\"\ninterval_ms = {interval_ms}\n{count}"
    )
}

/// The four example device kinds at `interval_ms` each, `count` uplinks each.
pub fn four_devices(interval_ms: u64, count: Option<u64>) -> String {
    [
        sim_device("compteur-eau", "water_meter", "26011001", interval_ms, count),
        sim_device("sonde-niveau", "river_level", "26011002", interval_ms, count),
        sim_device("conteneur-verre", "waste_fill", "26011003", interval_ms, count),
        sim_device("armoire-ep", "lighting_cabinet", "26011004", interval_ms, count),
    ]
    .join("\n")
}

/// A complete config with the simulated radio; `sink_extra` is appended to
/// `[sinks.chirpstack]`, `devices` after `[radio.sim]`. The test devices send every
/// few tens of milliseconds, faster than any real device can, so replay pacing is off
/// unless `sink_extra` sets it (tests/replay.rs tests it at its defaults).
pub fn config(state_dir: &Path, backend: &str, server: &str, sink_extra: &str, devices: &str) -> String {
    let radio = format!("[radio]\nkind = \"sim\"\n\n[radio.sim]\nseed = 7\n\n{devices}\n");
    let pace = if sink_extra.contains("replay_") { "" } else { "replay_gap_ms = 0\nreplay_rate = 0\n" };
    config_with_radio(state_dir, backend, &radio, &format!("[sinks.chirpstack]\nserver = \"{server}\"\nreconnect_min_ms = 200\nreconnect_max_ms = 1000\nkeep_alive_secs = 5\n{pace}{sink_extra}\n"))
}

/// A complete config from its `[radio...]` and `[sinks...]` sections.
pub fn config_with_radio(state_dir: &Path, backend: &str, radio: &str, sinks: &str) -> String {
    format!(
        r#"[gateway]
id = "0016c001ff10a235"
state_dir = "{}"
stats_interval_secs = 3600
report_interval_secs = 1

[journal]
backend = "{backend}"
commit_interval_ms = 50
stage_dir = "{state}-stage"

[http]
listen = "127.0.0.1:{http_port}"

[api]
socket = "{state}/api.sock"

{radio}
{sinks}
"#,
        state_dir.display(),
        http_port = free_port(),
        state = state_dir.display()
    )
}

/// Each uplink's seq in arrival order, first arrival only.
pub fn first_arrivals(ups: &[Seen]) -> Vec<u64> {
    let mut seen = std::collections::HashSet::new();
    ups.iter().map(Seen::seq).filter(|s| seen.insert(*s)).collect()
}

/// A ChirpStack downlink command: one immediate item, 869.525 MHz, SF9, 14 dBm.
pub fn downlink_command(downlink_id: u32) -> gw::DownlinkFrame {
    gw::DownlinkFrame {
        downlink_id,
        gateway_id: "0016c001ff10a235".into(),
        items: vec![gw::DownlinkFrameItem {
            phy_payload: vec![0x60, 0xda, 0x1b, 0x01, 0x26, 0x20, 0x01, 0x00, 0x11, 0x22, 0x33, 0x44],
            tx_info: Some(gw::DownlinkTxInfo {
                frequency: 869_525_000,
                power: 14,
                modulation: Some(gw::Modulation {
                    parameters: Some(gw::modulation::Parameters::Lora(gw::LoraModulationInfo {
                        bandwidth: 125_000,
                        spreading_factor: 9,
                        code_rate: gw::CodeRate::Cr45.into(),
                        polarization_inversion: true,
                        ..Default::default()
                    })),
                }),
                timing: Some(gw::Timing {
                    parameters: Some(gw::timing::Parameters::Immediately(gw::ImmediatelyTimingInfo {})),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A device registry (mode 0600) in `dir` naming one device whose codec, `broken.js` in
/// `dir/codecs`, does not compile: `(registry, codec folder)`.
pub fn registry_with_a_broken_codec(dir: &Path) -> (PathBuf, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let codecs = dir.join("codecs");
    fs::create_dir_all(&codecs).expect("codec dir");
    fs::write(codecs.join("broken.js"), "function decodeUplink(input) { return {").expect("codec");
    let registry = dir.join("devices.toml");
    fs::write(
        &registry,
        "[[device]]\nname = \"compteur\"\ndev_eui = \"0000000000000001\"\ncodec = \"broken.js\"\n\
         otaa = { app_key = \"000102030405060708090a0b0c0d0e0f\" }\n",
    )
    .expect("registry");
    fs::set_permissions(&registry, fs::Permissions::from_mode(0o600)).expect("chmod");
    (registry, codecs)
}

/// `berrygw availability --json` over the daemon's local API socket; `None` while it does not
/// answer (starting, or not running).
pub fn availability_report(socket: &Path) -> Option<serde_json::Value> {
    let out = berrygw_command().args(["availability", "--json", "--socket"]).arg(socket).output().ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

/// One raw request on the daemon's local API socket (`close_write`: then shut the writing
/// side); the status code and body of the answer.
pub fn local_api(socket: &Path, request: &[u8], close_write: bool) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    s.write_all(request).ok()?;
    if close_write {
        s.shutdown(std::net::Shutdown::Write).ok()?;
    }
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    Some((head.split(' ').nth(1)?.parse().ok()?, body.to_string()))
}

/// GET `path` from the daemon's HTTP listener (`listen = "127.0.0.1:…"` in its config).
pub fn http_get(config_text: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let port: u16 = config_text
        .lines()
        .find_map(|l| l.strip_prefix("listen = \"127.0.0.1:"))?
        .trim_end_matches('"')
        .parse()
        .ok()?;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n").ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    answer.split_once("\r\n\r\n").map(|(_, body)| body.to_string())
}
