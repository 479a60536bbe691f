//! End to end: the real `berrygw` binary with a simulated radio and a real
//! mosquitto serves `/metrics` (checked with a strict OpenMetrics text parser:
//! every family present, live values), `/api/status`, the status page
//! (rendered by headless Chromium, which must show the live values its script
//! fetched) and the local API socket behind `berrygw status`.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use support::*;

/// A gateway with its broker, HTTP port and API socket.
struct Site {
    dir: tempfile::TempDir,
    broker: Mosquitto,
    gw: Berrygw,
    http_port: u16,
    socket: PathBuf,
    _dam: berrygw_modbus::sim::NeedleDamSim,
    _rt: tokio::runtime::Runtime,
}

fn start_site() -> Site {
    let dir = tempfile::tempdir().expect("tmp");
    let broker = Mosquitto::start(dir.path(), None);
    let http_port = free_port();
    let socket = dir.path().join("run").join("api.sock");
    let devices = four_devices(200, None);
    // Local decoding of the four devices, readings on an app sink on the same broker.
    let registry = dir.path().join("devices.toml");
    let entries: String = ["26011001", "26011002", "26011003", "26011004"]
        .iter()
        .zip(["compteur-eau", "sonde-niveau", "conteneur-verre", "armoire-ep"])
        .map(|(addr, name)| {
            format!(
                "[[device]]\nname = \"{name}\"\ndev_eui = \"70b3d57e{addr}\"\ncodec = \"hex\"\n\
                 abp = {{ dev_addr = \"{addr}\", nwk_s_key = \"2b7e151628aed2a6abf7158809cf4f3c\", \
                 app_s_key = \"000102030405060708090a0b0c0d0e0f\" }}\n\n"
            )
        })
        .collect();
    std::fs::write(&registry, entries).expect("registry");
    std::fs::set_permissions(&registry, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
    // A needle dam on loopback Modbus TCP.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dam = rt
        .block_on(berrygw_modbus::sim::NeedleDamSim::start("127.0.0.1:0".parse().expect("addr")))
        .expect("dam simulator");
    let profiles = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/profiles");
    let extra = format!(
        "\n[sinks.app]\nserver = \"{}\"\nreconnect_min_ms = 200\nreconnect_max_ms = 1000\n\n[decode]\ndevices = \"{}\"\n\n\
         [field]\nprofile_dirs = [\"{}\"]\n\n[[field.device]]\nname = \"barrage-cher-1\"\nprofile = \"needle-dam\"\n\
         poll_interval_ms = 200\nlink = {{ transport = \"tcp\", address = \"{}\" }}\n",
        broker.url(false),
        registry.display(),
        profiles.display(),
        dam.local_addr()
    );
    let text = config(&dir.path().join("state"), "sqlite", &broker.url(false), &extra, &devices)
        .lines()
        .map(|l| {
            if l.starts_with("listen = ") {
                format!("listen = \"127.0.0.1:{http_port}\"")
            } else if l.starts_with("socket = ") {
                format!("socket = \"{}\"", socket.display())
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let gw = Berrygw::start(dir.path(), &text);
    let site = Site { dir, broker, gw, http_port, socket, _dam: dam, _rt: rt };
    wait_for(Duration::from_secs(30), "a healthy gateway that received uplinks", || {
        let s = site.api_status()?;
        (s["healthy"] == true && s["radio"]["received"].as_u64() > Some(0)).then_some(())
    });
    site
}

impl Site {
    fn get(&self, path: &str) -> Option<(u16, String)> {
        http(self.http_port, format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
    }

    fn api_status(&self) -> Option<serde_json::Value> {
        let (code, body) = self.get("/api/status")?;
        (code == 200).then(|| serde_json::from_str(&body).expect("/api/status is JSON"))
    }

    fn metrics(&self) -> Option<HashMap<String, Family>> {
        let (code, body) = self.get("/metrics")?;
        assert_eq!(code, 200);
        Some(
            parse_openmetrics(&body)
                .unwrap_or_else(|e| panic!("/metrics is not valid OpenMetrics: {e}\n{body}")),
        )
    }

    fn status_cmd(&self, args: &[&str]) -> Output {
        berrygw_command()
            .arg("status")
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run berrygw status")
    }
}

/// Send `request` raw; the status code and body of the answer, None if nobody listens.
fn http(port: u16, request: &[u8]) -> Option<(u16, String)> {
    exchange(TcpStream::connect(("127.0.0.1", port)).ok()?, request)
}

#[derive(Debug)]
struct Family {
    kind: String,
    samples: Vec<Sample>,
}

#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

impl Family {
    fn sum(&self, suffix: &str) -> f64 {
        self.samples.iter().filter(|s| s.name.ends_with(suffix)).map(|s| s.value).sum()
    }

    fn with_label(&self, key: &str, value: &str) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.labels.get(key).map(String::as_str) == Some(value)).collect()
    }
}

/// A strict parser of the OpenMetrics text format as Prometheus reads it: every sample
/// belongs to a declared family with a suffix its type allows, labels are well quoted,
/// values are numbers, and the exposition ends with `# EOF`.
fn parse_openmetrics(text: &str) -> Result<HashMap<String, Family>, String> {
    let mut families: HashMap<String, Family> = HashMap::new();
    let mut lines: Vec<&str> = text.lines().collect();
    if lines.pop() != Some("# EOF") {
        return Err("does not end with # EOF".into());
    }
    for line in lines {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (what, name, arg) = (parts.next(), parts.next(), parts.next());
            let (Some(what), Some(name), Some(arg)) = (what, name, arg) else {
                return Err(format!("bad comment line {line:?}"));
            };
            match what {
                "TYPE" => {
                    if !["counter", "gauge", "histogram", "info", "unknown"].contains(&arg) {
                        return Err(format!("unknown type in {line:?}"));
                    }
                    if families.insert(name.into(), Family { kind: arg.into(), samples: vec![] }).is_some() {
                        return Err(format!("family {name} declared twice"));
                    }
                }
                "HELP" | "UNIT" => {}
                _ => return Err(format!("bad comment line {line:?}")),
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').ok_or_else(|| format!("no value in {line:?}"))?;
        let value: f64 = value.parse().map_err(|_| format!("bad value in {line:?}"))?;
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').ok_or_else(|| format!("unclosed labels in {line:?}"))?;
                (name, parse_labels(body).map_err(|e| format!("{e} in {line:?}"))?)
            }
            None => (series, BTreeMap::new()),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            return Err(format!("bad metric name in {line:?}"));
        }
        let family = families
            .iter_mut()
            .filter(|(f, fam)| {
                let allowed: &[&str] = match fam.kind.as_str() {
                    "counter" => &["_total", "_created"],
                    "histogram" => &["_bucket", "_sum", "_count", "_created"],
                    "info" => &["_info"],
                    _ => &[""],
                };
                allowed.iter().any(|suffix| name == format!("{f}{suffix}"))
            })
            .map(|(_, fam)| fam)
            .next()
            .ok_or_else(|| format!("sample {name} belongs to no declared family"))?;
        family.samples.push(Sample { name: name.into(), labels, value });
    }
    Ok(families)
}

fn parse_labels(body: &str) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    let mut chars = body.chars().peekable();
    while chars.peek().is_some() {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("bad label name {key:?}"));
        }
        if chars.next() != Some('"') {
            return Err("label value not quoted".into());
        }
        let mut value = String::new();
        loop {
            match chars.next() {
                Some('\\') => match chars.next() {
                    Some('\\') => value.push('\\'),
                    Some('"') => value.push('"'),
                    Some('n') => value.push('\n'),
                    _ => return Err("bad escape".into()),
                },
                Some('"') => break,
                Some(c) => value.push(c),
                None => return Err("unterminated label value".into()),
            }
        }
        labels.insert(key, value);
        match chars.next() {
            Some(',') | None => {}
            Some(c) => return Err(format!("unexpected {c:?} after a label")),
        }
    }
    Ok(labels)
}

/// Every family a gateway with a simulated radio, MQTT sinks and local decoding exports. (The
/// concentrator families appear only with an SX1302.)
const FAMILIES: &[&str] = &[
    "berrygw_build",
    "berrygw_uptime_seconds",
    "berrygw_radio_frames",
    "berrygw_radio_rssi_dbm",
    "berrygw_radio_snr_db",
    "berrygw_radio_rejected",
    "berrygw_radio_queued",
    "berrygw_tx",
    "berrygw_journal_records",
    "berrygw_journal_bytes",
    "berrygw_journal_oldest_age_seconds",
    "berrygw_journal_evicted",
    "berrygw_journal_quarantined",
    "berrygw_sink_connected",
    "berrygw_sink_reconnects",
    "berrygw_sink_forwarded",
    "berrygw_sink_bad_records",
    "berrygw_sink_downlinks",
    "berrygw_sink_bad_commands",
    "berrygw_sink_publish_ack_latency_seconds",
    "berrygw_decode_readings",
    "berrygw_decode_errors",
    "berrygw_decode_not_ours",
    "berrygw_decode_dropped",
    "berrygw_decode_devices",
    "berrygw_decode_sessions",
    "berrygw_decode_sessions_started",
    "berrygw_decode_reloads",
    "berrygw_decode_duration_seconds",
    "berrygw_modbus_polls",
    "berrygw_modbus_poll_latency_seconds",
    "berrygw_field_device_online",
    "berrygw_commands",
    "berrygw_command_reasons",
    "berrygw_incidents_opened",
    "berrygw_service_down",
    "berrygw_availability_30d_ratio",
    "berrygw_maintenance",
];

#[test]
fn metrics_parse_as_openmetrics_with_every_family_and_live_values() {
    let site = start_site();
    let m = wait_for(Duration::from_secs(30), "forwarded uplinks in the metrics", || {
        let m = site.metrics()?;
        (m.get("berrygw_sink_forwarded")?.sum("_total") > 0.0).then_some(m)
    });
    let missing: Vec<&&str> = FAMILIES.iter().filter(|f| !m.contains_key(**f)).collect();
    assert!(missing.is_empty(), "families missing: {missing:?}; have {:?}", m.keys().collect::<Vec<_>>());

    let build = &m["berrygw_build"].samples[0];
    assert_eq!(build.labels.get("version").map(String::as_str), Some(env!("CARGO_PKG_VERSION")));
    assert_eq!(build.labels.get("radio").map(String::as_str), Some("sim"));
    let frames = &m["berrygw_radio_frames"];
    assert!(frames.sum("_total") > 0.0, "received frames counted: {frames:?}");
    let first = &frames.samples[0];
    assert_eq!(first.labels.get("crc").map(String::as_str), Some("ok"), "{first:?}");
    assert_eq!(first.labels.get("data_rate").map(String::as_str), Some("SF7BW125"), "{first:?}");
    assert!(first.labels.get("frequency_hz").is_some_and(|f| f.starts_with("86")), "{first:?}");
    assert!(m["berrygw_radio_rssi_dbm"].sum("_count") > 0.0);
    assert!(m["berrygw_radio_snr_db"].sum("_count") > 0.0);
    assert_eq!(m["berrygw_tx"].with_label("status", "ok").len(), 1, "every TX status exists from the start");
    for family in ["berrygw_journal_records", "berrygw_sink_connected", "berrygw_sink_forwarded"] {
        assert_eq!(m[family].with_label("sink", "chirpstack").len(), 1, "{family} per sink");
    }
    assert_eq!(m["berrygw_sink_connected"].sum(""), 2.0, "chirpstack and app both connected");
    let decoded = wait_for(Duration::from_secs(30), "readings in the metrics", || {
        let m = site.metrics()?;
        (m.get("berrygw_decode_readings")?.sum("_total") > 0.0).then_some(m)
    });
    assert_eq!(decoded["berrygw_decode_devices"].sum(""), 4.0);
    assert!(decoded["berrygw_decode_duration_seconds"].sum("_count") > 0.0);
    let latency = &m["berrygw_sink_publish_ack_latency_seconds"];
    assert!(latency.sum("_count") > 0.0, "PUBACKs observed: {latency:?}");
    assert!(m["berrygw_uptime_seconds"].sum("") >= 0.0);
}

#[test]
fn api_status_and_berrygw_status_report_health_and_its_loss() {
    let mut site = start_site();
    let s = site.api_status().expect("/api/status");
    assert_eq!(s["gateway_id"], "0016c001ff10a235");
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(s["problems"].as_array().map(Vec::len), Some(0), "{s}");
    assert_eq!(s["radio"]["kind"], "sim");
    assert!(s["radio"]["queued"].as_u64() > Some(0), "{s}");
    let sink = &s["sinks"][0];
    assert_eq!(sink["name"], "chirpstack");
    assert_eq!(sink["connected"], true);
    assert!(sink["backlog"]["records"].is_u64(), "{s}");

    let out = site.status_cmd(&["--json"]);
    assert_eq!(out.status.code(), Some(0), "healthy: {}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("--json prints JSON");
    assert_eq!(json["sinks"][0]["name"], "chirpstack");
    assert_eq!(json["healthy"], true);

    let out = site.status_cmd(&[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("health:   healthy"), "{text}");
    assert!(text.contains("sink chirpstack: connected"), "{text}");
    assert!(text.contains("radio:    sim:"), "{text}");
    assert!(text.contains("field barrage-cher-1: online"), "{text}");

    // The backhaul goes away: unhealthy, with the reason, and exit code 1.
    site.broker.stop();
    let text = wait_for(Duration::from_secs(30), "berrygw status to say the sink is down", || {
        let out = site.status_cmd(&[]);
        (out.status.code() == Some(1)).then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    });
    assert!(text.contains("NOT HEALTHY"), "{text}");
    assert!(text.contains("sink chirpstack: not connected"), "{text}");

    // The daemon stops: exit code 3 and a hint.
    site.gw.stop();
    let out = site.status_cmd(&[]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not running"), "{out:?}");
}

#[test]
fn malformed_and_oversized_http_requests_are_refused() {
    let site = start_site();
    let port = site.http_port;
    for bad in
        [&b"GARBAGE\r\n\r\n"[..], b"GET / HTTP/1.1\r\nno colon\r\n\r\n", b"GET /\xff\xfe HTTP/1.1\r\n\r\n"]
    {
        let (code, _) = http(port, bad).expect("an answer");
        assert_eq!(code, 400, "{:?}", String::from_utf8_lossy(bad));
    }
    let mut big = b"GET / HTTP/1.1\r\nX-Filler: ".to_vec();
    big.resize(64 * 1024, b'a');
    assert_eq!(http(port, &big).map(|r| r.0), Some(431));
    assert_eq!(http(port, b"POST /api/status HTTP/1.1\r\n\r\n").map(|r| r.0), Some(405));
    assert_eq!(site.get("/nothing-here").map(|r| r.0), Some(404));
    // Still serving after all that.
    assert!(site.api_status().is_some());
}

#[test]
fn requests_naming_another_host_are_refused() {
    let site = start_site();
    let port = site.http_port;
    for (request, code) in [
        // A page on a rebinding DNS name: same address, foreign Host.
        (format!("GET /api/status HTTP/1.1\r\nHost: rebind.example:{port}\r\n\r\n"), 421),
        (
            format!("GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nOrigin: http://evil.example\r\n\r\n"),
            421,
        ),
        (format!("GET /api/status HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n"), 200),
        (format!("GET /api/status HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"), 200),
        ("GET /api/status HTTP/1.0\r\n\r\n".to_string(), 200),
    ] {
        assert_eq!(http(port, request.as_bytes()).map(|r| r.0), Some(code), "{request:?}");
    }
}

#[test]
fn idle_connections_are_closed_and_bounded_per_peer() {
    let site = start_site();
    let port = site.http_port;
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    // One peer opens connections and sends nothing. It is 127.0.0.3 (all of 127/8 is
    // loopback): start_site's last probe from 127.0.0.1 may still be counted for a moment
    // after its answer was read (the server closes gracefully), and would take a place.
    let peer = [127, 0, 0, 3];
    let idle: Vec<TcpStream> = (0..8).map(|_| connect_from(&rt, peer, port)).collect();
    let get = b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    // Past its share, the same peer is told at once, not queued.
    let refused = wait_for(Duration::from_secs(60), "a 503 for the ninth connection", || {
        exchange(connect_from(&rt, peer, port), get).filter(|r| r.0 == 503)
    });
    assert!(refused.1.contains("too many connections"));
    // Another address is served meanwhile.
    let other = exchange(connect_from(&rt, [127, 0, 0, 2], port), get).expect("an answer");
    assert_eq!(other.0, 200, "{other:?}");
    // The server closes the idle ones (a 408, then end of stream) without help from us.
    for mut s in idle {
        s.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
        let mut answer = String::new();
        s.read_to_string(&mut answer).expect("closed by the server");
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    }
    assert!(site.api_status().is_some(), "served again");
}

/// A blocking connection to the site's port from `source` (any address of 127/8).
fn connect_from(rt: &tokio::runtime::Runtime, source: [u8; 4], port: u16) -> TcpStream {
    rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.bind(std::net::SocketAddr::from((source, 0))).expect("bind a loopback address");
        let stream = socket.connect(([127, 0, 0, 1], port).into()).await.expect("connect");
        let stream = stream.into_std().expect("a std stream");
        stream.set_nonblocking(false).expect("blocking");
        stream
    })
}

/// Send `request` on `s` and read the answer to its end: its status code and body.
fn exchange(mut s: TcpStream, request: &[u8]) -> Option<(u16, String)> {
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(request).ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let code = head.split(' ').nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

fn chromium() -> PathBuf {
    for p in ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!(
        "headless Chromium is needed to test the status page and was not found; install it with \
         `apt-get install -y chromium` (scripts/test does)"
    );
}

#[test]
fn status_page_renders_live_values_in_headless_chromium() {
    let browser = chromium();
    let site = start_site();
    wait_for(Duration::from_secs(30), "a reading of every device in /api/status", || {
        (site.api_status()?["readings"].as_array()?.len() == 4).then_some(())
    });
    let profile = site.dir.path().join("chromium-profile");
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--virtual-time-budget=5000")
        .arg("--dump-dom")
        .arg(format!("http://127.0.0.1:{}/", site.http_port))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chromium");
    // Hang guard only: the browser normally answers within seconds.
    let status =
        wait_for(Duration::from_secs(120), "chromium to dump the page", || child.try_wait().ok().flatten());
    let mut dom = String::new();
    let mut err = String::new();
    child.stdout.take().expect("piped").read_to_string(&mut dom).expect("read DOM");
    child.stderr.take().expect("piped").read_to_string(&mut err).expect("read stderr");
    assert!(status.success(), "chromium failed ({status}): {err}");

    let received = text_of(&dom, "received").unwrap_or_else(|| panic!("no #received in the page:\n{dom}"));
    let received: u64 =
        received.parse().unwrap_or_else(|_| panic!("#received not filled in ({received:?}):\n{dom}"));
    assert!(received > 0, "the page shows live uplink counts");
    assert_eq!(text_of(&dom, "health-text").as_deref(), Some("healthy"), "{dom}");
    assert_eq!(text_of(&dom, "radio-kind").as_deref(), Some("sim"), "{dom}");
    assert_eq!(text_of(&dom, "gateway-id").as_deref(), Some("0016c001ff10a235"), "{dom}");
    assert!(dom.contains(r#"<td class="sink-name">chirpstack</td>"#), "sink row rendered:\n{dom}");
    assert!(dom.contains(r#"<td class="good">connected</td>"#), "sink connected:\n{dom}");
    assert!(dom.contains(r#"<td class="device-name">sonde-niveau</td>"#), "latest readings rendered:\n{dom}");
    assert!(dom.contains(r#"<td class="field-name">barrage-cher-1</td>"#), "field devices rendered:\n{dom}");
    assert!(
        dom.contains(r#"<tr class="availability"><td>overall</td>"#),
        "the last 30 days rendered:\n{dom}"
    );
}

/// The text inside the element with `id="…"` (no nested elements).
fn text_of(dom: &str, id: &str) -> Option<String> {
    let start = dom.find(&format!("id=\"{id}\""))?;
    let open_end = start + dom[start..].find('>')? + 1;
    let close = open_end + dom[open_end..].find('<')?;
    Some(dom[open_end..close].trim().to_string())
}

#[test]
fn grafana_dashboard_only_uses_metrics_berrygw_exports() {
    let site = start_site();
    let m = site.metrics().expect("metrics");
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/grafana-dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("dashboard file"))
            .expect("dashboard is JSON");
    let mut used = std::collections::BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            let mut rest = expr;
            while let Some(i) = rest.find("berrygw_") {
                let name: String =
                    rest[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                rest = &rest[i + name.len()..];
                used.insert(name);
            }
        }
    }
    assert!(used.len() >= 10, "the dashboard covers the families: {used:?}");
    for name in used {
        let family = ["_bucket", "_total", "_info", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(&name)
            .to_string();
        // Concentrator families exist only with an SX1302 (this gateway has a sim radio).
        if family.starts_with("berrygw_concentrator_") {
            continue;
        }
        assert!(m.contains_key(&family), "dashboard uses {name}, which berrygw does not export");
    }
}

#[test]
fn malformed_actions_on_the_local_api_are_refused() {
    let site = start_site();
    let post =
        |body: &str| format!("POST /api/actuate HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    for (request, code) in [
        (post("{not json"), 400),
        (post(r#"{"target":"barrage-cher-1","command":"move_bay1","colour":1}"#), 400),
        ("POST /api/actuate HTTP/1.1\r\nContent-Length: x12\r\n\r\n".to_string(), 400),
        ("POST /api/actuate HTTP/1.1\r\nContent-Length: 999999\r\n\r\n".to_string(), 413),
        ("POST /api/frobnicate HTTP/1.1\r\n\r\n".to_string(), 404),
        ("GET /api/points/no-such-device HTTP/1.1\r\n\r\n".to_string(), 404),
    ] {
        let answer = local_api(&site.socket, request.as_bytes(), false).expect("an answer");
        assert_eq!(answer.0, code, "{request:?}: {answer:?}");
    }
    // A body shorter than its Content-Length, then the client stops writing.
    let short = "POST /api/actuate HTTP/1.1\r\nContent-Length: 50\r\n\r\n{\"target\"";
    assert_eq!(local_api(&site.socket, short.as_bytes(), true).map(|a| a.0), Some(400));
    // The field-tool routes are not served on the (possibly LAN-wide) HTTP listener.
    assert_eq!(site.get("/api/points/barrage-cher-1").map(|r| r.0), Some(404));
    assert_eq!(site.get("/api/audit").map(|r| r.0), Some(404));
    // Still serving after all that.
    assert!(site.api_status().is_some());
}
