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
//! - `ledger`: bytes the availability ledger writes in a simulated day with a flapping
//!   backhaul (an outage a minute) and a quiet one, real files and fsyncs (no broker).
//!
//! Results print as one JSON object per phase for BENCHMARKS.md. One file per phase.

mod decode;
mod drain;
mod footprint;
mod gwmp;
mod ledger;
mod modbus;
mod station;
mod throughput;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use berrygw_core::proc::{self, stat_cpu};
use berrygw_lora::{CrcStatus, UplinkFrame};
use prost::Message;
use tokio::sync::{mpsc, watch};

use crate::config::{self, Site};
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
    /// `throughput`, `drain`, `gwmp`, `footprint`, `decode`, `modbus`, `ledger` or `station`.
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
    /// ledger: backhaul outages per hour (20 s each).
    #[arg(long, default_value_t = 60)]
    pub flaps_per_hour: u64,
    /// ledger: simulated days.
    #[arg(long, default_value_t = 1)]
    pub days: u64,
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

/// A gateway config for a phase: state in `dir`, the given `[radio]` body, a
/// roomy journal, the ChirpStack sink to the bench broker, listeners out of the way.
fn bench_config(args: &BenchArgs, dir: &Path, radio: &str) -> anyhow::Result<config::LoadedConfig> {
    let sink = format!(
        "[sinks.chirpstack]\nserver = \"mqtt://{}\"\nmax_inflight = 500\n\
         # Devices every 2 ms, far faster than any real one: replay pacing would only measure itself.\n\
         replay_gap_ms = 0\nreplay_rate = 0\n",
        args.broker
    );
    bench_config_with(args, dir, radio, &sink)
}

/// The same with the given `[sinks...]` sections.
fn bench_config_with(
    args: &BenchArgs,
    dir: &Path,
    radio: &str,
    sinks: &str,
) -> anyhow::Result<config::LoadedConfig> {
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
{sinks}
"#,
        dir = dir.display(),
        backend = args.backend,
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
        "throughput" => rt.block_on(throughput::throughput(&args))?,
        "drain" => rt.block_on(drain::drain(&args))?,
        "gwmp" => rt.block_on(gwmp::gwmp(&args))?,
        "footprint" => rt.block_on(footprint::footprint(&args))?,
        "decode" => decode::decode(&args)?,
        "modbus" => rt.block_on(modbus::modbus(&args))?,
        "ledger" => ledger::ledger(&args)?,
        // The child of `modbus`: no result line of its own.
        "modbus-sims" => return rt.block_on(modbus::modbus_sims(&args)),
        "station" => rt.block_on(station::station(&args))?,
        // The child of `station`: the LNS.
        "station-lns" => return rt.block_on(station::station_lns()),
        other => {
            bail!(
                "unknown phase `{other}`: use throughput, drain, gwmp, footprint, decode, modbus, ledger or station"
            )
        }
    };
    println!("{result}");
    Ok(())
}

/// The throughput load on `cfg`'s sim radio: 40 devices every 2 ms (20,000 uplinks/s offered,
/// four times the target: the pipeline, not the simulator, sets the pace), `uplinks` in all
/// (rounded up to a multiple of 40); the total.
fn offer_throughput_load(cfg: &mut config::LoadedConfig, uplinks: u64) -> anyhow::Result<u64> {
    let devices = 40u64;
    let per_device = uplinks.div_ceil(devices);
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
    Ok(per_device * devices)
}

/// Wait until `sink` has forwarded `total` (at most 600 s after `start`).
async fn wait_forwarded(
    sink: &crate::pipeline::SinkRuntime,
    total: u64,
    start: Instant,
) -> anyhow::Result<()> {
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
    Ok(())
}

/// Wait until `journal` has every record up to `target` acknowledged and deleted (at most 900 s).
async fn wait_drained(journal: &Journal, target: Seq) -> anyhow::Result<()> {
    let mut watch = journal.watch();
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let stats = watch.borrow_and_update().clone();
        if stats.acked >= target && stats.records == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("drain incomplete after 900 s: acked {}", stats.acked);
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), watch.changed()).await;
    }
}

/// Current resident set size in KiB (VmRSS).
fn rss_kib() -> u64 {
    proc::self_field("status", "VmRSS:")
}

/// Size of one stored uplink record (the protobuf message) for the write-amplification ratio.
fn record_size() -> usize {
    drain::sample_record(1).payload.len()
}

fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}
