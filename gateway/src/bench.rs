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
//! - `modbus`: field devices against simulators in a child process (`modbus-sims`, so
//!   that their CPU is not ours): command → write → verified read-back latency through
//!   the actuation engine (audit log and all) and through the poller alone, and the CPU
//!   cost of polling needle dams every second, each on its own TCP connection.
//!
//! Results print as one JSON object per phase for BENCHMARKS.md.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use berrygw_core::proc::{self, stat_cpu};
use berrygw_lora::{CrcStatus, UplinkFrame};
use prost::Message;
use tokio::sync::{mpsc, watch};

use crate::config;
use crate::journal::{Journal, JournalConfig, NewRecord, Seq};
use crate::pipeline::Gateway;
use crate::sink::chirpstack::{self, PayloadFormat, RecordKind, Topics};
use crate::sink::mqtt::{self, BrokerUrl, MqttSinkSettings, Protocol, SinkInbound};
use crate::sink::pace::PaceSettings;
use crate::sink::SinkCounters;
use crate::sink::SinkRadioIo;

/// Options of `berrygw bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// `throughput`, `drain`, `gwmp`, `footprint`, `decode` or `modbus`.
    #[arg(long)]
    pub phase: String,
    /// Broker address, host:port (plain MQTT on loopback).
    #[arg(long)]
    pub broker: String,
    /// Journal backend: log or sqlite.
    #[arg(long, default_value = "log")]
    pub backend: String,
    /// Uplinks to send (throughput) or to queue (drain).
    #[arg(long, default_value_t = 100_000)]
    pub uplinks: u64,
    /// Working directory for the journal (emptied first).
    #[arg(long)]
    pub dir: PathBuf,
    /// modbus: field devices polled, and simulated sites (a dam and a cabinet each).
    #[arg(long, default_value_t = 50)]
    pub devices: usize,
    /// modbus: seconds of polling measured.
    #[arg(long, default_value_t = 30)]
    pub seconds: u64,
    /// modbus: commands timed per device kind, path and read-back interval.
    #[arg(long, default_value_t = 200)]
    pub commands: usize,
}

/// Process counters read from /proc.
#[derive(Clone, Copy, Debug, Default)]
struct ProcSample {
    cpu: Duration,
    write_bytes: u64,
}

fn sample() -> ProcSample {
    ProcSample { cpu: stat_cpu("/proc/self/stat"), write_bytes: proc::self_field("io", "write_bytes:") }
}

/// Peak resident set size in KiB (VmHWM).
fn peak_rss_kib() -> u64 {
    proc::self_field("status", "VmHWM:")
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
        let input =
            UplinkInput { bytes: &river, f_port: 2, recv_time: now, variables: &variables, device: "sonde" };
        js.decode(&input).map(drop).map_err(anyhow::Error::from)
    })?;
    // Temperature, humidity and GPS on three channels.
    let lpp_payload = [
        0x01, 0x67, 0x01, 0x10, 0x02, 0x68, 0x50, 0x03, 0x88, 0x06, 0x76, 0x5f, 0xf2, 0x96, 0x0a, 0x00, 0x03,
        0xe8,
    ];
    let mut lpp = Codec::cayenne_lpp();
    let lpp_call = per_call(n * 10, |_| {
        let input = UplinkInput {
            bytes: &lpp_payload,
            f_port: 1,
            recv_time: now,
            variables: &variables,
            device: "lpp",
        };
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
    let topics = crate::events::AppTopics::new("berrygw", "0016c001ffbe0001");
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
# In RAM, as under systemd (/run is a tmpfs): only the journal's durable writes are measured.
stage_dir = "/dev/shm/berrygw-bench-{pid}"
[http]
listen = "127.0.0.1:0"
[api]
socket = "{dir}/api.sock"
[sinks.chirpstack]
server = "mqtt://{broker}"
max_inflight = 500
# Devices every 2 ms, far faster than any real one: replay pacing would only measure itself.
replay_gap_ms = 0
replay_rate = 0
"#,
        dir = dir.display(),
        backend = args.backend,
        broker = args.broker,
        pid = std::process::id()
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
        "modbus" => rt.block_on(modbus(&args))?,
        // The child of `modbus`: no result line of its own.
        "modbus-sims" => return rt.block_on(modbus_sims(&args)),
        other => bail!("unknown phase `{other}`: use throughput, drain, gwmp, footprint, decode or modbus"),
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
    proc::self_field("status", "VmRSS:")
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

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    stat_cpu("/proc/thread-self/stat")
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
        received_at_ms: berrygw_core::unix_ms(frame.received_at),
        payload: msg.encode_to_vec(),
    }
}

async fn drain(args: &BenchArgs) -> anyhow::Result<serde_json::Value> {
    let backend = match args.backend.as_str() {
        "log" => crate::journal::Backend::Log,
        "sqlite" => crate::journal::Backend::Sqlite,
        other => bail!("unknown backend `{other}`"),
    };
    let path = args.dir.join(format!("bench.{}", args.backend));
    let cfg = JournalConfig {
        commit_interval: Duration::from_millis(100),
        commit_max_records: 1000,
        ..JournalConfig::new(backend, path, 4_000_000_000)
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
        // The sink's own drain speed; pacing for a network server is measured by scripts/interop-chirpstack.
        pace: PaceSettings::OFF,
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

/// The shipped profiles, so that the bench does not depend on where it runs from.
const NEEDLE_DAM_TOML: &str = include_str!("../../plugins/profiles/needle-dam.toml");
const LIGHTING_CABINET_TOML: &str = include_str!("../../plugins/profiles/lighting-cabinet.toml");

/// Bay travel of the simulated dams, % per second: a 10 % move takes 10 ms, so its
/// read-back needs a second look (the first one comes right after the write).
const DAM_SPEED: f64 = 1000.0;

/// `modbus-sims`, started by `modbus`: `--devices` simulated sites, each a needle dam and a
/// lighting cabinet on their own Modbus TCP servers. Prints `<dam addr> <cabinet addr>`
/// per site on stdout, then serves until its stdin closes (the parent is done or gone).
async fn modbus_sims(args: &BenchArgs) -> anyhow::Result<()> {
    use std::io::Write;

    use berrygw_modbus::sim::{LightingCabinetSim, NeedleDamSim};

    let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let mut sites = Vec::with_capacity(args.devices);
    for _ in 0..args.devices {
        let dam = NeedleDamSim::start(loopback).await.context("starting a needle dam simulator")?;
        dam.set_speed(DAM_SPEED);
        let cabinet =
            LightingCabinetSim::start(loopback).await.context("starting a lighting cabinet simulator")?;
        sites.push((dam, cabinet));
    }
    let mut out = std::io::stdout().lock();
    for (dam, cabinet) in &sites {
        writeln!(out, "{} {}", dam.local_addr(), cabinet.local_addr())?;
    }
    out.flush()?;
    drop(out);
    tokio::task::spawn_blocking(|| std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink()))
        .await??;
    Ok(())
}

/// The `modbus-sims` child process. Dropping it closes its stdin, which ends it.
struct SimProcess {
    child: std::process::Child,
    /// (dam, cabinet) Modbus TCP addresses of each site.
    sites: Vec<(String, String)>,
}

impl SimProcess {
    /// Start this binary again as `bench --phase modbus-sims` and read its addresses. Blocking.
    fn start(args: &BenchArgs) -> anyhow::Result<SimProcess> {
        use std::io::BufRead;
        use std::process::{Command, Stdio};

        let exe = std::env::current_exe().context("finding this binary to start the simulators")?;
        let child = Command::new(exe)
            .args(["bench", "--phase", "modbus-sims", "--broker", &args.broker, "--devices"])
            .arg(args.devices.to_string())
            .arg("--dir")
            .arg(args.dir.join("sims"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the simulator process")?;
        let mut sims = SimProcess { child, sites: Vec::with_capacity(args.devices) };
        let stdout = sims.child.stdout.take().context("the simulator process has a stdout pipe")?;
        let mut lines = std::io::BufReader::new(stdout).lines();
        while sims.sites.len() < args.devices {
            let line = lines.next().context("the simulator process ended before listing its devices")??;
            let (dam, cabinet) =
                line.split_once(' ').with_context(|| format!("bad line from the simulators: {line:?}"))?;
            sims.sites.push((dam.to_string(), cabinet.to_string()));
        }
        Ok(sims)
    }

    /// CPU time the simulators used so far.
    fn cpu(&self) -> Duration {
        stat_cpu(&format!("/proc/{}/stat", self.child.id()))
    }
}

impl Drop for SimProcess {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One field device on its own TCP connection, as `FieldSection::spawn` makes it (one bus
/// per link, default bus options), with the given read-back interval.
fn field_device(
    name: String,
    profile: &Arc<berrygw_modbus::Profile>,
    address: &str,
    verify_interval: Duration,
) -> (Arc<crate::actuation::field::FieldDevice>, berrygw_modbus::Bus) {
    use berrygw_modbus::{Bus, BusOptions, Device, DeviceConfig, Link};

    let link = Link::Tcp { address: address.to_string() };
    let bus = Bus::spawn(link.clone(), BusOptions::default());
    let mut config = DeviceConfig::new(name, 1);
    config.verify_interval = verify_interval;
    let device = Device::spawn(Arc::clone(profile), bus.clone(), config);
    let field = crate::actuation::field::FieldDevice {
        device,
        link: link.to_string(),
        profile: profile.name.clone(),
    };
    (Arc::new(field), bus)
}

/// Wait until every device has been polled successfully once.
async fn all_online(devices: &[&berrygw_modbus::Device]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    for d in devices {
        let mut state = d.state();
        while !state.borrow_and_update().online {
            if Instant::now() > deadline {
                bail!("{} not online after 20 s: {:?}", d.name(), state.borrow().last_error);
            }
            let _ = tokio::time::timeout(Duration::from_millis(200), state.changed()).await;
        }
    }
    Ok(())
}

/// Every switchable target of some devices, taken in turn, each ordered to the opposite of
/// its last order (so each command changes something), never sooner than its command's
/// minimum interval allows. The waits are not part of any measurement.
struct Rota {
    targets: Vec<RotaTarget>,
    next: usize,
}

struct RotaTarget {
    device: String,
    command: String,
    /// The two argument sets it alternates between.
    args: [serde_json::Value; 2],
    flip: usize,
    min_interval: Duration,
    last_done: Option<Instant>,
}

impl Rota {
    fn new(
        devices: &[String],
        profile: &berrygw_modbus::Profile,
        commands: &[(String, [serde_json::Value; 2])],
    ) -> Rota {
        let mut targets = Vec::new();
        for device in devices {
            for (command, args) in commands {
                // Each profile command named here exists: the profile is the shipped one.
                let min_interval = profile.command(command).map_or(Duration::ZERO, |c| c.min_interval())
                    + Duration::from_millis(20);
                targets.push(RotaTarget {
                    device: device.clone(),
                    command: command.clone(),
                    args: args.clone(),
                    flip: 0,
                    min_interval,
                    last_done: None,
                });
            }
        }
        Rota { targets, next: 0 }
    }

    /// Time `n` commands sent by `send` (device, command, args → verified or why not).
    async fn time<F, Fut>(&mut self, n: usize, mut send: F) -> anyhow::Result<Vec<Duration>>
    where
        F: FnMut(String, String, serde_json::Value) -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        let mut took = Vec::with_capacity(n);
        for _ in 0..n {
            let len = self.targets.len();
            let t = &mut self.targets[self.next % len];
            self.next += 1;
            if let Some(last) = t.last_done {
                tokio::time::sleep_until((last + t.min_interval).into()).await;
            }
            let args = t.args[t.flip % 2].clone();
            t.flip += 1;
            let start = Instant::now();
            let result = send(t.device.clone(), t.command.clone(), args).await;
            took.push(start.elapsed());
            t.last_done = Some(Instant::now());
            if let Err(why) = result {
                bail!("`{}` on {} not verified: {why}", t.command, t.device);
            }
        }
        Ok(took)
    }
}

/// p50, p99 and max of command latencies, in ms.
fn latency_summary(mut took: Vec<Duration>) -> serde_json::Value {
    took.sort();
    let ms = |d: Option<&Duration>| d.map_or(0.0, |d| (d.as_secs_f64() * 1e4).round() / 10.0);
    // Nearest rank.
    let rank = |p: f64| (((p / 100.0) * took.len() as f64).ceil() as usize).saturating_sub(1);
    serde_json::json!({
        "commands": took.len(),
        "p50_ms": ms(took.get(rank(50.0))),
        "p99_ms": ms(took.get(rank(99.0))),
        "max_ms": ms(took.last()),
    })
}

/// `modbus`: command latency and polling cost against simulators in a child process.
async fn modbus(args: &BenchArgs) -> anyhow::Result<serde_json::Value> {
    use berrygw_modbus::{CommandOutcome, PollOutcome, Profile};

    use crate::actuation::audit::Outcome;
    use crate::actuation::engine::{Actuation, ActuationSettings};

    if args.devices == 0 {
        bail!("--devices must be at least 1");
    }
    let dam = Arc::new(Profile::parse(Path::new("needle-dam.toml"), NEEDLE_DAM_TOML)?);
    let cabinet = Arc::new(Profile::parse(Path::new("lighting-cabinet.toml"), LIGHTING_CABINET_TOML)?);
    let rss_start = rss_kib();
    let sims = tokio::task::block_in_place(|| SimProcess::start(args))?;

    // Polling: every dam each second, each on its own connection, nothing else running.
    let defaults = berrygw_modbus::DeviceConfig::new("", 1);
    let polled: Vec<_> = sims
        .sites
        .iter()
        .enumerate()
        .map(|(i, (addr, _))| field_device(format!("dam-{i}"), &dam, addr, defaults.verify_interval))
        .collect();
    all_online(&polled.iter().map(|(f, _)| &f.device).collect::<Vec<_>>()).await?;
    let totals = || {
        let (mut ok, mut failed, mut requests) = (0u64, 0u64, 0u64);
        for (f, bus) in &polled {
            let c = f.device.counters();
            ok += c.count(PollOutcome::Ok);
            failed +=
                PollOutcome::ALL.iter().filter(|o| **o != PollOutcome::Ok).map(|o| c.count(*o)).sum::<u64>();
            requests += bus.counters().requests.load(Ordering::Relaxed);
        }
        (ok, failed, requests)
    };
    let (ok_before, failed_before, requests_before) = totals();
    let (cpu_before, sims_before, start) = (sample().cpu, sims.cpu(), Instant::now());
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let (cpu_after, sims_after, wall) = (sample().cpu, sims.cpu(), start.elapsed());
    let (ok_after, failed_after, requests_after) = totals();
    let rss_polling = rss_kib();
    drop(polled);

    let polls = ok_after - ok_before;
    let cpu = cpu_after.saturating_sub(cpu_before);
    let polling = serde_json::json!({
        "profile": dam.name,
        "devices": args.devices,
        "poll_interval_ms": defaults.poll_interval.as_millis() as u64,
        "seconds": round(wall.as_secs_f64()),
        "polls_ok": polls,
        "polls_failed": failed_after - failed_before,
        "requests_per_poll": round((requests_after - requests_before) as f64 / polls.max(1) as f64),
        "cpu_percent_of_one_core": round(cpu.as_secs_f64() / wall.as_secs_f64() * 100.0),
        "cpu_us_per_poll": round(cpu.as_micros() as f64 / polls.max(1) as f64),
        "simulators_cpu_percent_of_one_core":
            round(sims_after.saturating_sub(sims_before).as_secs_f64() / wall.as_secs_f64() * 100.0),
        "rss_mib": round(rss_polling as f64 / 1024.0),
        "rss_before_devices_mib": round(rss_start as f64 / 1024.0),
    });

    // Command latency: lighting cabinets (a contactor follows its order at once) and dams
    // (a 10 % move takes 10 ms, so its first read-back is too early), each polled every
    // second meanwhile. Through the actuation engine (checks, audit log with fsync per
    // entry, poller) and through the poller alone (`Device::execute`).
    let on_off = [serde_json::json!({"on": true}), serde_json::json!({"on": false})];
    let circuits: Vec<(String, [serde_json::Value; 2])> =
        (1..=4).map(|c| (format!("switch_circuit{c}"), on_off.clone())).collect();
    let low_high = [serde_json::json!({"position": 30.0}), serde_json::json!({"position": 20.0})];
    let bays: Vec<(String, [serde_json::Value; 2])> =
        (1..=4).map(|b| (format!("move_bay{b}"), low_high.clone())).collect();
    let cabinet_names: Vec<String> = (0..args.devices).map(|i| format!("cabinet-{i}")).collect();
    let dam_names: Vec<String> = (0..args.devices).map(|i| format!("dam-{i}")).collect();
    let mut rotas = [Rota::new(&cabinet_names, &cabinet, &circuits), Rota::new(&dam_names, &dam, &bays)];
    let mut results = Vec::new();
    for verify_ms in [200u64, 20] {
        let verify = Duration::from_millis(verify_ms);
        let mut devices = std::collections::BTreeMap::new();
        for (i, (dam_addr, cabinet_addr)) in sims.sites.iter().enumerate() {
            devices.insert(
                cabinet_names[i].clone(),
                field_device(cabinet_names[i].clone(), &cabinet, cabinet_addr, verify).0,
            );
            devices
                .insert(dam_names[i].clone(), field_device(dam_names[i].clone(), &dam, dam_addr, verify).0);
        }
        all_online(&devices.values().map(|f| &f.device).collect::<Vec<_>>()).await?;
        let state_dir = args.dir.join(format!("actuation-{verify_ms}ms"));
        std::fs::create_dir_all(&state_dir)?;
        let settings = ActuationSettings {
            gateway_id: "0016c001ffbe0001".into(),
            topics: None,
            state_dir,
            state_interval: Duration::from_secs(60),
            keys: None,
            require_clock_sync: false,
            audit_max_bytes: crate::actuation::audit::DEFAULT_MAX_BYTES,
            decoder: None,
        };
        let (actuation, _no_publishers) = Actuation::start(devices.clone(), settings, None)?;
        for (kind, rota) in [("lighting-cabinet", 0), ("needle-dam", 1)] {
            let engine = rotas[rota]
                .time(args.commands, |target, command, cmd_args| {
                    let actuation = actuation.clone();
                    async move {
                        let entry = actuation.local(Some(0), &target, &command, cmd_args).await;
                        if entry.outcome == Outcome::Verified {
                            Ok(())
                        } else {
                            Err(entry.message)
                        }
                    }
                })
                .await?;
            let direct = rotas[rota]
                .time(args.commands, |target, command, cmd_args| {
                    let device = devices.get(&target).cloned();
                    async move {
                        let device = device.ok_or("no such device")?;
                        match device.device.execute(&command, &cmd_args).await {
                            CommandOutcome::Verified { .. } => Ok(()),
                            other => Err(other.to_string()),
                        }
                    }
                })
                .await?;
            for (path, took) in [("actuation_local", engine), ("device_execute", direct)] {
                let mut line = latency_summary(took);
                line["device"] = kind.into();
                line["path"] = path.into();
                line["verify_interval_ms"] = verify_ms.into();
                results.push(line);
            }
        }
        drop(actuation);
    }
    drop(sims);
    Ok(serde_json::json!({
        "phase": "modbus",
        "polling": polling,
        "command_latency": results,
        "peak_rss_mib": round(peak_rss_kib() as f64 / 1024.0),
    }))
}

fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}
