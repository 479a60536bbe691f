//! `station`: the Basics Station sink under the `throughput` phase's load (simulated
//! radio, 20,000 uplinks/s offered) and draining a backlog written while the LNS was
//! unreachable. The LNS is `station-lns`, a child process (this binary), so that the
//! measured process is the gateway alone, as with mosquitto for the MQTT sink.
//!
//! `station-lns` is the least an LNS does for a gateway: router-info, `router_config`
//! after `version`, every `timesync` answered, uplinks read and counted (not parsed).

use std::io::BufRead;
use std::process::{Child, Command, Stdio};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::sink::basic_station::{self, ws, BasicStationSinkConfig};

/// The LNS child, killed on drop.
struct Lns(Child, u16);

impl Drop for Lns {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_lns(args: &BenchArgs) -> anyhow::Result<Lns> {
    let exe = std::env::current_exe().context("finding this binary to start the LNS")?;
    let mut child = Command::new(exe)
        .args(["bench", "--phase", "station-lns", "--broker", &args.broker, "--dir"])
        .arg(args.dir.join("lns"))
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the LNS process")?;
    let stdout = child.stdout.take().context("the LNS process has a stdout pipe")?;
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line)?;
    let port = line.trim().strip_prefix("listening ").and_then(|p| p.parse().ok());
    let port = port.with_context(|| format!("the LNS said {line:?}"))?;
    Ok(Lns(child, port))
}

fn station_sink(port: u16) -> anyhow::Result<basic_station::BasicStationSettings> {
    let cfg: BasicStationSinkConfig = toml::from_str(&format!(
        "tc_uri = \"ws://127.0.0.1:{port}\"\nreconnect_min_ms = 200\nreconnect_max_ms = 2000\n"
    ))?;
    // No CUPS: nothing is kept in the state directory.
    cfg.settings(berrygw_lora::Eui64::from_u64(0x0016_c001_ffbe_0001), std::path::Path::new("/nonexistent"))
}

pub(super) async fn station(args: &BenchArgs) -> anyhow::Result<serde_json::Value> {
    let lns = start_lns(args)?;

    // Live: the throughput phase's load through the Station sink.
    let sinks = format!("[sinks.basic_station]\ntc_uri = \"ws://127.0.0.1:{}\"\n", lns.1);
    let mut cfg = bench_config_with(args, &args.dir.join("live"), SIM_NO_DEVICES, &sinks)?;
    let total = offer_throughput_load(&mut cfg, args.uplinks)?;
    let before = sample();
    let start = Instant::now();
    let gateway = Gateway::start(&Site::resolve(cfg)?).await?;
    let sink = gateway.sink("basic_station").context("the bench config has the basic_station sink")?;
    wait_forwarded(sink, total, start).await?;
    let elapsed = start.elapsed();
    let after = sample();
    gateway.stop().await?;
    let live_rss = peak_rss_kib();

    // Drain: a backlog written while the LNS was unreachable, then sent.
    let cfg = JournalConfig {
        commit_interval: Duration::from_millis(100),
        commit_max_records: 1000,
        ..JournalConfig::new(crate::journal::Backend::Log, args.dir.join("backlog.log"), 4_000_000_000)
    };
    let journal = tokio::task::spawn_blocking(move || Journal::open("bench", cfg)).await??;
    for seq in 1..=args.uplinks {
        journal.append(drain::sample_record(seq)).await?;
    }
    journal.flush().await?;
    let counters = Arc::new(SinkCounters::default());
    let (down_tx, _down_rx) = mpsc::channel(1);
    let (_ack_tx, ack_rx) = mpsc::channel(1);
    let (stop_tx, stop_rx) = watch::channel(false);
    let drain_before = sample();
    let drain_start = Instant::now();
    let task = tokio::spawn(basic_station::run(
        station_sink(lns.1)?,
        journal.clone(),
        counters.clone(),
        SinkRadioIo { downlinks: down_tx, tx_acks: ack_rx },
        stop_rx,
    ));
    wait_drained(&journal, Seq(args.uplinks)).await?;
    let drain_elapsed = drain_start.elapsed();
    let drain_after = sample();
    let _ = stop_tx.send(true);
    let _ = task.await;
    let n = args.uplinks as f64;
    Ok(serde_json::json!({
        "phase": "station",
        "uplinks": total,
        "uplinks_per_s": round(total as f64 / elapsed.as_secs_f64()),
        "cpu_us_per_uplink": round(after.cpu.saturating_sub(before.cpu).as_micros() as f64 / total as f64),
        "peak_rss_mib": round(live_rss as f64 / 1024.0),
        "backlog": args.uplinks,
        "drain_seconds": round(drain_elapsed.as_secs_f64()),
        "drain_per_s": round(n / drain_elapsed.as_secs_f64()),
        "drain_cpu_us_per_uplink": round(drain_after.cpu.saturating_sub(drain_before.cpu).as_micros() as f64 / n),
        "drain_peak_rss_mib": round(peak_rss_kib() as f64 / 1024.0),
    }))
}

/// The child: an LNS on a free loopback port ("listening <port>" on stdout), until killed.
pub(super) async fn station_lns() -> anyhow::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    println!("listening {port}");
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            if let Err(e) = serve(stream, port).await {
                eprintln!("station-lns: {e:#}");
            }
        });
    }
}

/// One connection: the upgrade, then router-info or traffic.
async fn serve(mut stream: TcpStream, port: u16) -> anyhow::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::new();
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    let key = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(n, _)| n.eq_ignore_ascii_case("sec-websocket-key")))
        .map(|(_, v)| v.trim().to_string())
        .context("no Sec-WebSocket-Key")?;
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        ws::accept_key(&key)
    );
    stream.write_all(answer.as_bytes()).await?;
    buf.drain(..end);
    let mut out = Vec::new();
    loop {
        // Every whole frame buffered, answered in one write.
        while let Some((opcode, payload)) = client_frame(&mut buf)? {
            match opcode {
                8 => return Ok(()),
                1 => {
                    let text = String::from_utf8_lossy(&payload);
                    if path.ends_with("/router-info") {
                        let reply = format!(
                            r#"{{"router":"00-16-C0-01-FF-BE-00-01","muxs":"muxs-::0","uri":"ws://127.0.0.1:{port}/traffic"}}"#
                        );
                        server_frame(&mut out, &reply);
                    } else if text.contains(r#""msgtype":"version""#) {
                        server_frame(&mut out, ROUTER_CONFIG);
                    } else if text.contains(r#""msgtype":"timesync""#) {
                        let v: serde_json::Value = serde_json::from_str(&text)?;
                        let reply =
                            serde_json::json!({"msgtype": "timesync", "txtime": v["txtime"], "gpstime": 1});
                        server_frame(&mut out, &reply.to_string());
                    }
                }
                _ => {}
            }
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
}

const ROUTER_CONFIG: &str = r#"{"msgtype":"router_config","region":"EU863","freq_range":[863000000,870000000],"DRs":[[12,125,0],[11,125,0],[10,125,0],[9,125,0],[8,125,0],[7,125,0],[7,250,0],[0,0,0]],"max_eirp":16.0,"MuxTime":1700000000.0}"#;

/// A client's (masked) frame from `buf`, unmasked; `None` until whole.
fn client_frame(buf: &mut Vec<u8>) -> anyhow::Result<Option<(u8, Vec<u8>)>> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (len, mut at) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (usize::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
        127 if buf.len() >= 10 => (u64::from_be_bytes(buf[2..10].try_into()?) as usize, 10),
        126 | 127 => return Ok(None),
        n => (usize::from(n), 2),
    };
    if buf[1] & 0x80 == 0 {
        bail!("an unmasked frame from a client");
    }
    if buf.len() < at + 4 + len {
        return Ok(None);
    }
    let mask = [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]];
    at += 4;
    let payload = buf[at..at + len].iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect();
    let opcode = buf[0] & 0x0f;
    buf.drain(..at + len);
    Ok(Some((opcode, payload)))
}

fn server_frame(out: &mut Vec<u8>, text: &str) {
    out.push(0x81);
    match text.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= 0xffff => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(text.as_bytes());
}
