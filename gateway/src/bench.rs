//! `berrygw bench`: measures the uplink path on this machine against a real
//! MQTT broker (mosquitto, started by `scripts/bench`), one phase per process
//! so that each phase's peak memory is its own:
//!
//! - `throughput`: simulated radio → filters → journal → sink → broker at
//!   QoS 1; uplinks/s, CPU µs per uplink, bytes written to disk per uplink.
//! - `drain`: a backlog written straight into the journal while the broker
//!   is unreachable, then drained; drain rate, bytes written per queued
//!   uplink, peak RSS with the backlog on disk.
//! - `footprint`: time from start to READY, resident memory idle and while
//!   the simulated radio sends 100 uplinks/s to the broker for 30 s.
//! - `gwmp`: a packet forwarder (a thread of this process, its CPU time
//!   subtracted) sends PUSH_DATA over loopback UDP to the GWMP ingest, which
//!   feeds journal → MQTT sink → broker; uplinks/s and CPU µs per uplink.
//!
//! - `decode`: local decoding on one core, no broker involved: a typical
//!   JavaScript codec (the shipped river level one) and Cayenne LPP in
//!   decodes/s, and the whole path of one uplink of a registered device
//!   (MIC check, decryption, counter, codec, reading JSON) in µs.
//!
//! Results print as one JSON object per phase for BENCHMARKS.md.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use berrygw_lora::{CrcStatus, UplinkFrame};
use prost::Message;
use tokio::sync::{mpsc, watch};

use crate::config::{self, BrokerUrl, PayloadFormat};
use crate::journal::{Journal, JournalConfig, NewRecord, Seq};
use crate::pipeline::{Gateway, SinkCounters};
use crate::sink::chirpstack::{self, RecordKind, Topics};
use crate::sink::mqtt::{self, MqttSinkSettings, Protocol, SinkInbound, SinkRadioIo};

/// Options of `berrygw bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// `throughput` or `drain`.
    #[arg(long)]
    pub phase: String,
    /// Broker address, host:port (plain MQTT on loopback).
    #[arg(long)]
    pub broker: String,
    /// Journal backend: sqlite or sled.
    #[arg(long, default_value = "sqlite")]
    pub backend: String,
    /// Uplinks to send (throughput) or to queue (drain).
    #[arg(long, default_value_t = 100_000)]
    pub uplinks: u64,
    /// Working directory for the journal (emptied first).
    #[arg(long)]
    pub dir: PathBuf,
}

/// Process counters read from /proc.
#[derive(Clone, Copy, Debug, Default)]
struct ProcSample {
    cpu: Duration,
    write_bytes: u64,
}

fn sample() -> ProcSample {
    // utime and stime (fields 14 and 15) of the whole process, in clock ticks
    // (100 per second on Linux): coarse, but the phases run for many seconds.
    let cpu = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let after_comm = &s[s.rfind(')')? + 2..];
            let fields: Vec<&str> = after_comm.split_whitespace().collect();
            let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
            Some(Duration::from_millis(ticks * 10))
        })
        .unwrap_or(Duration::ZERO);
    let write_bytes = std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("write_bytes:").map(|v| v.trim().parse::<u64>().ok()))
                .flatten()
        })
        .unwrap_or(0);
    ProcSample { cpu, write_bytes }
}

/// Peak resident set size in KiB (VmHWM).
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| {
                    l.strip_prefix("VmHWM:")
                        .map(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                })
                .flatten()
        })
        .unwrap_or(0)
}

/// The `[radio]` body of a simulated radio whose devices a phase sets itself.
const SIM_NO_DEVICES: &str = "kind = \"sim\"\n[radio.sim]\ndevices = []";

/// The shipped river level codec (TTN contract, modern syntax): the "typical JS codec".
const RIVER_LEVEL_JS: &str = include_str!("../../plugins/codecs/examples-js/river_level.js");

/// CPU time of `f` run `n` times, per call.
fn per_call(n: u64, mut f: impl FnMut(u64) -> anyhow::Result<()>) -> anyhow::Result<Duration> {
    let before = sample();
    let start = Instant::now();
    for i in 0..n {
        f(i)?;
    }
    // Ticks are 10 ms: fall back on wall time (one busy thread) when the run is that short.
    let cpu = sample().cpu.saturating_sub(before.cpu).max(start.elapsed());
    Ok(cpu / u32::try_from(n.max(1)).unwrap_or(u32::MAX))
}

/// `decode`: codecs and the whole local decoding path on one core.
fn decode(args: &BenchArgs) -> anyhow::Result<serde_json::Value> {
    use berrygw_codecs::{Codec, Limits, UplinkInput};
    use berrygw_lora::phy::{build_data_uplink, AesKey, DataUplink, DevAddr};

    use crate::decode::engine::{codec_limits, Codecs, Engine, Outcome};
    use crate::decode::registry::Registry;
    use crate::decode::sessions::SessionStore;

    let n = args.uplinks;
    let variables = Default::default();
    let river = [0x00, 0x8e, 0x00, 0x73, 0x0e, 0x10];
    let now = std::time::SystemTime::now();
    let mut js = Codec::javascript("river_level.js", RIVER_LEVEL_JS, Limits::default())?;
    let js_call = per_call(n, |_| {
        let input = UplinkInput { bytes: &river, f_port: 2, recv_time: now, variables: &variables };
        js.decode(&input).map(drop).map_err(anyhow::Error::from)
    })?;
    // Temperature, humidity and GPS on three channels.
    let lpp_payload = [
        0x01, 0x67, 0x01, 0x10, 0x02, 0x68, 0x50, 0x03, 0x88, 0x06, 0x76, 0x5f, 0xf2, 0x96, 0x0a, 0x00, 0x03,
        0xe8,
    ];
    let mut lpp = Codec::cayenne_lpp();
    let lpp_call = per_call(n * 10, |_| {
        let input = UplinkInput { bytes: &lpp_payload, f_port: 1, recv_time: now, variables: &variables };
        lpp.decode(&input).map(drop).map_err(anyhow::Error::from)
    })?;

    // The whole path, through the engine the daemon runs, codec file and all.
    std::fs::write(args.dir.join("river_level.js"), RIVER_LEVEL_JS)?;
    let (nwk, app) = (AesKey([0x2b; 16]), AesKey([0x7e; 16]));
    let registry_text = format!(
        "[[device]]\nname = \"sonde\"\ndev_eui = \"70b3d57ed0001002\"\ncodec = \"river_level.js\"\n\
         abp = {{ dev_addr = \"26011002\", nwk_s_key = \"{}\", app_s_key = \"{}\" }}\n",
        nwk.to_hex(),
        app.to_hex()
    );
    let registry =
        Registry::parse(&args.dir.join("devices.toml"), &registry_text, std::slice::from_ref(&args.dir))?;
    let codecs = Codecs::build(&registry, &codec_limits(50, 8 * 1024))?;
    let (store, sessions) = SessionStore::open(&args.dir.join("sessions.sqlite"))?;
    let topics = crate::sink::app::AppTopics::new("berrygw", "0016c001ffbe0001");
    let mut engine = Engine::new("0016c001ffbe0001".into(), Some(topics), registry, codecs, store, sessions);
    let frames: Vec<UplinkFrame> = (0..n)
        .map(|i| {
            let up = DataUplink {
                dev_addr: DevAddr::from_u32(0x2601_1002),
                fcnt: i as u32,
                confirmed: false,
                adr: true,
                f_port: 2,
                payload: &river,
            };
            build_data_uplink(&up, &nwk, &app).map(|phy| UplinkFrame::example(phy, CrcStatus::Ok))
        })
        .collect::<Result<_, _>>()?;
    let full = per_call(n, |i| match engine.uplink(&frames[i as usize], i) {
        Outcome::Reading { codec_failure: None, .. } => Ok(()),
        other => bail!("frame {i} not decoded: {other:?}"),
    })?;
    engine.flush();
    let per_s = |d: Duration| (1.0 / d.as_secs_f64()).round();
    Ok(serde_json::json!({
        "phase": "decode",
        "js_codec": "river_level.js",
        "js_decodes_per_s": per_s(js_call),
        "js_us_per_decode": js_call.as_secs_f64() * 1e6,
        "lpp_decodes_per_s": per_s(lpp_call),
        "lpp_ns_per_decode": lpp_call.as_secs_f64() * 1e9,
        "full_path_us_per_uplink": full.as_secs_f64() * 1e6,
        "uplinks": n,
    }))
}

/// A gateway config for a phase: state in `dir`, the given `[radio]` body, a
/// roomy journal, the ChirpStack sink to the bench broker, listeners out of the way.
fn bench_config(args: &BenchArgs, dir: &Path, radio: &str) -> anyhow::Result<config::LoadedConfig> {
    let text = format!(
        r#"
[gateway]
id = "0016c001ffbe0001"
state_dir = "{dir}"
stats_interval_secs = 3600
report_interval_secs = 3600
[radio]
{radio}
[journal]
backend = "{backend}"
max_bytes = 4000000000
[http]
listen = "127.0.0.1:0"
[api]
socket = "{dir}/api.sock"
[sinks.chirpstack]
server = "mqtt://{broker}"
max_inflight = 500
"#,
        dir = dir.display(),
        backend = args.backend,
        broker = args.broker
    );
    config::parse(Path::new("<bench>"), text).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Run one benchmark phase and print its JSON result line.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.dir.exists() {
        std::fs::remove_dir_all(&args.dir).with_context(|| format!("emptying {}", args.dir.display()))?;
    }
    std::fs::create_dir_all(&args.dir).with_context(|| format!("creating {}", args.dir.display()))?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let result = match args.phase.as_str() {
        "throughput" => rt.block_on(throughput(&args))?,
        "drain" => rt.block_on(drain(&args))?,
        "gwmp" => rt.block_on(gwmp(&args))?,
        "footprint" => rt.block_on(footprint(&args))?,
        "decode" => decode(&args)?,
        other => bail!("unknown phase `{other}`: use throughput, drain, gwmp, footprint or decode"),
    };
    println!("{result}");
    Ok(())
}

async fn throughput(args: &BenchArgs) -> anyhow::Result<serde_json::Value> {
    // 40 devices every 2 ms offer 20,000 uplinks/s, four times the target: the
    // pipeline, not the simulator, sets the pace.
    let devices = 40u64;
    let per_device = args.uplinks.div_ceil(devices);
    let total = per_device * devices;
    let mut cfg = bench_config(args, &args.dir, SIM_NO_DEVICES)?;
    let sim = cfg.config.radio.sim.as_mut().context("bench config has [radio.sim]")?;
    let template = berrygw_lora::sim::example_devices();
    sim.devices = (0..devices)
        .map(|i| {
            let mut d = template[(i as usize) % template.len()].clone();
            d.name = format!("bench-{i}");
            d.dev_addr = Some(berrygw_lora::phy::DevAddr::from_u32(0x2600_0000 + i as u32));
            d.interval_ms = 2;
            d.count = Some(per_device);
            d
        })
        .collect();
    let before = sample();
    let start = Instant::now();
    let gateway = Gateway::start(&cfg).await?;
    let sink = gateway.sink("chirpstack").context("bench config has the chirpstack sink")?;
    let deadline = start + Duration::from_secs(600);
    while sink.counters.forwarded.load(Ordering::Relaxed) < total {
        if Instant::now() > deadline {
            bail!(
                "only {} of {total} forwarded after 600 s",
                sink.counters.forwarded.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = start.elapsed();
    let after = sample();
    let commits = sink.journal.watch().borrow().commits;
    gateway.stop().await?;
    Ok(serde_json::json!({
        "phase": "throughput",
        "backend": args.backend,
        "uplinks": total,
        "seconds": round(elapsed.as_secs_f64()),
        "uplinks_per_s": round(total as f64 / elapsed.as_secs_f64()),
        "cpu_us_per_uplink": round(after.cpu.saturating_sub(before.cpu).as_micros() as f64 / total as f64),
        "bytes_written_per_uplink": round((after.write_bytes - before.write_bytes) as f64 / total as f64),
        "record_bytes": record_size(),
        "journal_commits": commits,
        "peak_rss_mib": round(peak_rss_kib() as f64 / 1024.0),
    }))
}

/// Current resident set size in KiB (VmRSS).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| {
                    l.strip_prefix("VmRSS:")
                        .map(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                })
                .flatten()
        })
        .unwrap_or(0)
}

async fn footprint(args: &BenchArgs) -> anyhow::Result<serde_json::Value> {
    // Idle: started, connected, nothing to forward.
    let idle_dir = args.dir.join("idle");
    let cfg = bench_config(args, &idle_dir, SIM_NO_DEVICES)?;
    let start = Instant::now();
    let gateway = Gateway::start(&cfg).await?;
    let ready = start.elapsed();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let idle_rss = rss_kib();
    gateway.stop().await?;

    // 100 uplinks/s: four devices, one uplink every 40 ms each, for 30 s.
    let busy_dir = args.dir.join("busy");
    let mut cfg = bench_config(args, &busy_dir, SIM_NO_DEVICES)?;
    let sim = cfg.config.radio.sim.as_mut().context("bench config has [radio.sim]")?;
    sim.devices = berrygw_lora::sim::example_devices()
        .into_iter()
        .map(|mut d| {
            d.interval_ms = 40;
            d
        })
        .collect();
    let gateway = Gateway::start(&cfg).await?;
    tokio::time::sleep(Duration::from_secs(30)).await;
    let busy_rss = rss_kib();
    let forwarded =
        gateway.sink("chirpstack").map(|s| s.counters.forwarded.load(Ordering::Relaxed)).unwrap_or(0);
    gateway.stop().await?;
    Ok(serde_json::json!({
        "phase": "footprint",
        "backend": args.backend,
        "start_to_ready_ms": round(ready.as_secs_f64() * 1000.0),
        "idle_rss_mib": round(idle_rss as f64 / 1024.0),
        "rss_at_100_uplinks_per_s_mib": round(busy_rss as f64 / 1024.0),
        "forwarded_in_30_s": forwarded,
        "peak_rss_mib": round(peak_rss_kib() as f64 / 1024.0),
    }))
}

/// CPU time of the calling thread (utime + stime from /proc/thread-self/stat).
fn thread_cpu() -> Duration {
    std::fs::read_to_string("/proc/thread-self/stat")
        .ok()
        .and_then(|s| {
            let fields: Vec<&str> = s[s.rfind(')')? + 2..].split_whitespace().collect();
            let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
            Some(Duration::from_millis(ticks * 10))
        })
        .unwrap_or(Duration::ZERO)
}

async fn gwmp(args: &BenchArgs) -> anyhow::Result<serde_json::Value> {
    let port = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port();
    let radio = format!("kind = \"gwmp\"\n[radio.gwmp]\nbind = \"127.0.0.1:{port}\"");
    let cfg = bench_config(args, &args.dir, &radio)?;
    let total = args.uplinks;
    let gateway = Gateway::start(&cfg).await?;
    let sink = gateway.sink("chirpstack").context("bench config has the chirpstack sink")?;
    let before = sample();
    let start = Instant::now();
    let sender = std::thread::spawn(move || -> anyhow::Result<(Duration, u64)> {
        use berrygw_lora::gwmp::codec::{Datagram, Packet, RxPk, PROTOCOL_V2};
        let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
        socket.set_read_timeout(Some(Duration::from_millis(200)))?;
        let key = berrygw_lora::phy::AesKey([7; 16]);
        let (mut sent, mut unacked, mut lost) = (0u64, 0u32, 0u64);
        let mut token = 0u16;
        let mut buf = [0u8; 64];
        while sent < total {
            // Like a forwarder on a busy cell: no waiting for PUSH_ACKs, but at most
            // 64 datagrams outstanding so loopback buffers never overflow.
            while unacked >= 64 {
                match socket.recv(&mut buf) {
                    Ok(_) => unacked -= 1,
                    Err(_) => {
                        lost += u64::from(unacked);
                        unacked = 0;
                    }
                }
            }
            let rxpk = (0..8.min(total - sent))
                .map(|i| {
                    let up = berrygw_lora::phy::DataUplink {
                        dev_addr: berrygw_lora::phy::DevAddr::from_u32(0x2600_0000 + (sent + i) as u32 % 64),
                        fcnt: (sent + i) as u32,
                        confirmed: false,
                        adr: false,
                        f_port: 2,
                        payload: &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
                    };
                    let phy = berrygw_lora::phy::build_data_uplink(&up, &key, &key)?;
                    Ok(RxPk::from_uplink(&UplinkFrame::example(phy, CrcStatus::Ok)))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let n = rxpk.len() as u64;
            token = token.wrapping_add(1);
            let gateway_id = berrygw_lora::phy::Eui64::from_u64(0x0016_c001_ffbe_0001);
            let packet = Packet::PushData { gateway_id, rxpk, stat: None };
            let bytes = Datagram { version: PROTOCOL_V2, token, packet }.encode()?;
            socket.send_to(&bytes, ("127.0.0.1", port))?;
            unacked += 1;
            sent += n;
        }
        while unacked > 0 && socket.recv(&mut buf).is_ok() {
            unacked -= 1;
        }
        Ok((thread_cpu(), lost + u64::from(unacked)))
    });
    let (sender_cpu, lost_datagrams) = tokio::task::spawn_blocking(move || sender.join())
        .await?
        .map_err(|_| anyhow::anyhow!("sender thread panicked"))??;
    let received = gateway.counters.received.load(Ordering::Relaxed);
    let deadline = start + Duration::from_secs(600);
    while sink.counters.forwarded.load(Ordering::Relaxed) < received {
        if Instant::now() > deadline {
            bail!(
                "only {} of {received} forwarded after 600 s",
                sink.counters.forwarded.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = start.elapsed();
    let after = sample();
    gateway.stop().await?;
    let gateway_cpu = after.cpu.saturating_sub(before.cpu).saturating_sub(sender_cpu);
    Ok(serde_json::json!({
        "phase": "gwmp",
        "backend": args.backend,
        "uplinks_sent": total,
        "uplinks_received": received,
        "datagrams_unacknowledged": lost_datagrams,
        "seconds": round(elapsed.as_secs_f64()),
        "uplinks_per_s": round(received as f64 / elapsed.as_secs_f64()),
        "cpu_us_per_uplink": round(gateway_cpu.as_micros() as f64 / received.max(1) as f64),
        "forwarder_cpu_us_per_uplink": round(sender_cpu.as_micros() as f64 / total as f64),
        "peak_rss_mib": round(peak_rss_kib() as f64 / 1024.0),
    }))
}

/// Size of one stored uplink record (the protobuf message) for the write-amplification ratio.
fn record_size() -> usize {
    sample_record(1).payload.len()
}

fn sample_record(seq: u64) -> NewRecord {
    let mut frame = UplinkFrame::example(
        vec![
            0x40, 0xda, 0x1b, 0x01, 0x26, 0x00, 0x2a, 0x00, 0x02, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0xaa, 0xbb,
            0xcc, 0xdd,
        ],
        CrcStatus::Ok,
    );
    (frame.rssi, frame.snr, frame.counter_us) = (-97, 6.5, 1_234_567);
    let msg = chirpstack::uplink_message("0016c001ffbe0001", &frame, seq, 42);
    NewRecord {
        kind: RecordKind::Uplink as u8,
        received_at_ms: chirpstack::unix_ms(frame.received_at),
        payload: msg.encode_to_vec(),
    }
}

async fn drain(args: &BenchArgs) -> anyhow::Result<serde_json::Value> {
    let backend = match args.backend.as_str() {
        "sqlite" => crate::journal::Backend::Sqlite,
        "sled" => crate::journal::Backend::Sled,
        other => bail!("unknown backend `{other}`"),
    };
    let path = args.dir.join(format!("bench.{}", args.backend));
    let cfg = JournalConfig {
        backend,
        path,
        max_bytes: 4_000_000_000,
        commit_interval: Duration::from_millis(100),
        commit_max_records: 1000,
    };
    let journal = tokio::task::spawn_blocking(move || Journal::open("bench", cfg)).await??;

    // Fill: the broker is "down", uplinks arrive and wait on disk.
    let fill_before = sample();
    let fill_start = Instant::now();
    for seq in 1..=args.uplinks {
        journal.append(sample_record(seq)).await?;
    }
    journal.flush().await?;
    let fill_elapsed = fill_start.elapsed();
    let fill_after = sample();

    // Drain: the broker is back.
    let server: BrokerUrl =
        format!("mqtt://{}", args.broker).parse().map_err(|e: String| anyhow::anyhow!(e))?;
    let settings = MqttSinkSettings {
        name: "chirpstack",
        protocol: Protocol::Chirpstack {
            topics: Topics::new("bench", "0016c001ffbe0001"),
            format: PayloadFormat::Protobuf,
        },
        server,
        tls: None,
        allow_plaintext: false,
        client_id: "berrygw-bench".into(),
        credentials: None,
        gateway_id: "0016c001ffbe0001".into(),
        keep_alive: Duration::from_secs(30),
        max_inflight: 500,
        reconnect_min: Duration::from_millis(200),
        reconnect_max: Duration::from_secs(2),
    };
    let counters = Arc::new(SinkCounters::default());
    let (_down_tx, _down_rx) = mpsc::channel(1);
    let (_ack_tx, ack_rx) = mpsc::channel(1);
    let (stop_tx, stop_rx) = watch::channel(false);
    let drain_before = sample();
    let drain_start = Instant::now();
    let sink = tokio::spawn(mqtt::run(
        settings,
        journal.clone(),
        counters.clone(),
        SinkInbound::Radio(SinkRadioIo { downlinks: _down_tx, tx_acks: ack_rx }),
        stop_rx,
    ));
    let mut watch = journal.watch();
    let target = Seq(args.uplinks);
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let stats = watch.borrow_and_update().clone();
        if stats.acked >= target && stats.records == 0 {
            break;
        }
        if Instant::now() > deadline {
            bail!("drain incomplete after 900 s: acked {}", stats.acked);
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), watch.changed()).await;
    }
    let drain_elapsed = drain_start.elapsed();
    let drain_after = sample();
    let _ = stop_tx.send(true);
    let _ = sink.await;
    let n = args.uplinks as f64;
    Ok(serde_json::json!({
        "phase": "drain",
        "backend": args.backend,
        "uplinks": args.uplinks,
        "fill_seconds": round(fill_elapsed.as_secs_f64()),
        "fill_per_s": round(n / fill_elapsed.as_secs_f64()),
        "bytes_written_per_queued_uplink": round((fill_after.write_bytes - fill_before.write_bytes) as f64 / n),
        "record_bytes": record_size(),
        "drain_seconds": round(drain_elapsed.as_secs_f64()),
        "drain_per_s": round(n / drain_elapsed.as_secs_f64()),
        "drain_cpu_us_per_uplink": round(drain_after.cpu.saturating_sub(drain_before.cpu).as_micros() as f64 / n),
        "bytes_written_per_drained_uplink": round((drain_after.write_bytes - drain_before.write_bytes) as f64 / n),
        "peak_rss_mib": round(peak_rss_kib() as f64 / 1024.0),
    }))
}

fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}
