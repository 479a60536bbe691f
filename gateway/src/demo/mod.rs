//! `berrygw demo`: the real pipeline with nothing installed. A simulated radio
//! plays the four example devices, the journal lives in a temporary
//! directory, the ChirpStack sink talks to an embedded broker on loopback, and
//! a consumer standing in for the central platform counts what arrives and
//! checks its order. `--outage N` cuts the gateway's link to the broker for N
//! seconds to show uplinks waiting on disk and being replayed in order.
//! Beside the weir: a needle dam and a lighting cabinet simulated on loopback
//! Modbus TCP, polled by the gateway; a field agent's command moves a bay
//! through every safety check, and one refused by an interlock shows why.

pub mod broker;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use chirpstack_api::gw;
use prost::Message;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use berrygw_modbus::sim::{LightingCabinetSim, NeedleDamSim, Selector};

use crate::config;
use crate::pipeline::Gateway;
use crate::sink::chirpstack::META_SEQ;
use broker::DemoBroker;

/// Options of `berrygw demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Cut the backhaul for this many seconds, then restore it.
    #[arg(long, value_name = "SECONDS")]
    pub outage: Option<u64>,
    /// When the outage starts, in seconds after start.
    #[arg(long, value_name = "SECONDS", default_value_t = 5)]
    pub outage_at: u64,
    /// Stop the radio after this many seconds; the demo ends when the backlog is delivered.
    #[arg(long, value_name = "SECONDS", default_value_t = 20)]
    pub duration: u64,
    /// Uplinks per second from the four simulated devices together.
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// Journal backend to show (log or sqlite).
    #[arg(long, default_value = "log")]
    pub backend: String,
}

/// What the stand-in central platform has seen.
#[derive(Default)]
struct Received {
    seqs: BTreeSet<u64>,
    total: u64,
    out_of_order: u64,
    last: u64,
}

/// The shipped profiles, embedded so that the demo runs from anywhere.
const PROFILES: [(&str, &str); 2] = [
    ("needle-dam.toml", include_str!("../../../plugins/profiles/needle-dam.toml")),
    ("lighting-cabinet.toml", include_str!("../../../plugins/profiles/lighting-cabinet.toml")),
];

fn demo_config(
    state_dir: &Path,
    server: &str,
    http_port: u16,
    args: &DemoArgs,
    field: &str,
) -> anyhow::Result<config::LoadedConfig> {
    let text = format!(
        r#"
[gateway]
id = "0016c001ffde0001"
state_dir = "{}"
stats_interval_secs = 3600
report_interval_secs = 3600

[radio]
kind = "sim"
[radio.sim]
devices = []

[journal]
backend = "{}"
stage_dir = "{}-stage"

[http]
listen = "127.0.0.1:{http_port}"

[api]
socket = "{}/api.sock"

[sinks.chirpstack]
server = "mqtt://{server}"
reconnect_min_ms = 500
reconnect_max_ms = 2000

{field}
"#,
        state_dir.display(),
        args.backend,
        state_dir.display(),
        state_dir.display(),
        http_port = http_port,
    );
    let mut cfg = config::parse(Path::new("<demo>"), text).map_err(|e| anyhow::anyhow!("{e}"))?;
    let sim = cfg.config.radio.sim.as_mut().context("demo config has [radio.sim]")?;
    let per_device_ms = (4000.0 / args.rate.max(0.1)).max(1.0) as u64;
    let count = (args.duration * 1000 / per_device_ms).max(1);
    sim.devices = berrygw_lora::sim::example_devices()
        .into_iter()
        .map(|mut d| {
            d.interval_ms = per_device_ms;
            d.count = Some(count);
            d
        })
        .collect();
    Ok(cfg)
}

/// Run the demo to the end and print what happened.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("berrygw-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = run_in(&dir, &args).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run_in(dir: &Path, args: &DemoArgs) -> anyhow::Result<()> {
    let mut broker = DemoBroker::start().await.context("starting the embedded broker")?;
    println!("berrygw demo");
    println!(
        "  embedded MQTT broker: backhaul on {}, platform on {}",
        broker.backhaul_addr(),
        broker.platform_addr()
    );
    println!("  journal ({}) in {}", args.backend, dir.display());

    let received = Arc::new(Mutex::new(Received::default()));
    let consumer = tokio::spawn(consume(broker.platform_addr().to_string(), received.clone()));
    let http_port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    // The field equipment beside the weir, on loopback Modbus TCP.
    let any = "127.0.0.1:0".parse().context("loopback address")?;
    let dam = NeedleDamSim::start(any).await.context("starting the needle dam simulator")?;
    dam.set_speed(20.0);
    let cabinet = LightingCabinetSim::start(any).await.context("starting the lighting cabinet simulator")?;
    let profiles = dir.join("profiles");
    std::fs::create_dir_all(&profiles)?;
    for (name, text) in PROFILES {
        std::fs::write(profiles.join(name), text)?;
    }
    let field = format!(
        "[field]\nprofile_dirs = [\"{}\"]\n\n\
         [[field.device]]\nname = \"barrage-demo\"\nprofile = \"needle-dam\"\npoll_interval_ms = 500\n\
         link = {{ transport = \"tcp\", address = \"{}\" }}\n\n\
         [[field.device]]\nname = \"armoire-demo\"\nprofile = \"lighting-cabinet\"\npoll_interval_ms = 500\n\
         link = {{ transport = \"tcp\", address = \"{}\" }}\n",
        profiles.display(),
        dam.local_addr(),
        cabinet.local_addr()
    );
    let site = config::Site::resolve(demo_config(
        dir,
        &broker.backhaul_addr().to_string(),
        http_port,
        args,
        &field,
    )?)?;
    let gateway = Gateway::start(&site).await?;
    println!(
        "  field: needle dam barrage-demo on tcp://{}, lighting cabinet armoire-demo on tcp://{} (Modbus simulators)",
        dam.local_addr(),
        cabinet.local_addr()
    );
    let field_demo = gateway.view().actuation.map(|a| tokio::spawn(field_agent(a, dam)));
    let expected = site
        .loaded
        .config
        .radio
        .sim
        .as_ref()
        .map(|s| s.devices.iter().filter_map(|d| d.count).sum::<u64>())
        .unwrap_or(0);
    println!(
        "  simulated radio: 4 devices, {:.0} uplinks/s for {} s ({expected} uplinks)",
        args.rate, args.duration
    );
    println!();

    let start = Instant::now();
    let outage = args.outage.map(|n| (Duration::from_secs(args.outage_at), Duration::from_secs(n)));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let deadline = Duration::from_secs(args.duration + args.outage.unwrap_or(0) + 60);
    loop {
        tick.tick().await;
        let t = start.elapsed();
        if let Some((at, len)) = outage {
            if broker.is_backhaul_up() && t >= at && t < at + len {
                broker.cut_backhaul().await;
                println!(
                    "  ---- backhaul DOWN for {} s: uplinks now wait in the journal ----",
                    len.as_secs()
                );
            } else if !broker.is_backhaul_up() && t >= at + len {
                broker.restore_backhaul().await.context("restoring the backhaul")?;
                println!("  ---- backhaul UP: replaying the backlog in order ----");
            }
        }
        let c = &gateway.counters;
        let sink = gateway.sink("chirpstack").context("demo config has the chirpstack sink")?;
        let j = sink.journal.watch().borrow().clone();
        let (got, ooo) = received.lock().map(|r| (r.seqs.len() as u64, r.out_of_order)).unwrap_or((0, 0));
        println!(
            "  t={:>3}s  radio {:>5} uplinks | journal {:>5} waiting | forwarded {:>5} | platform received {:>5}{}",
            t.as_secs(),
            c.received.load(Ordering::Relaxed),
            j.records,
            sink.counters.forwarded.load(Ordering::Relaxed),
            got,
            if ooo > 0 { format!(" ({ooo} out of order)") } else { String::new() }
        );
        if got >= expected && expected > 0 {
            break;
        }
        if t > deadline {
            println!("  giving up waiting after {} s", t.as_secs());
            break;
        }
    }
    if let Some(task) = field_demo {
        if let Ok(lines) = task.await {
            println!();
            for line in lines {
                println!("  {line}");
            }
        }
    }
    drop(cabinet);
    gateway.stop().await?;
    consumer.abort();
    let r = received.lock().map_err(|_| anyhow::anyhow!("consumer state poisoned"))?;
    let missing = (1..=expected).filter(|s| !r.seqs.contains(s)).count();
    println!();
    println!(
        "  done: {} of {expected} uplinks delivered, {missing} missing, {} duplicates, {} out of order",
        r.seqs.len(),
        r.total - r.seqs.len() as u64,
        r.out_of_order
    );
    if missing > 0 {
        anyhow::bail!("{missing} uplinks were not delivered");
    }
    Ok(())
}

/// A field agent on site: one command that passes every check and is read back,
/// then one the dam's local/remote selector refuses. Returns what to print.
async fn field_agent(actuation: crate::actuation::engine::Actuation, dam: NeedleDamSim) -> Vec<String> {
    // Let the first polls come in.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut lines = Vec::new();
    let args = serde_json::json!({ "position": 60 });
    let e = actuation.local(None, "barrage-demo", "move_bay2", args.clone()).await;
    lines.push(format!(
        "field agent: barrage-demo move_bay2 position=60 → {} ({})",
        e.outcome.as_str(),
        e.message
    ));
    dam.set_selector(Selector::Local);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let e = actuation.local(None, "barrage-demo", "move_bay3", args).await;
    lines.push(format!(
        "selector turned to LOCAL on site, then move_bay3 → {} ({}): {}",
        e.outcome.as_str(),
        e.reason.as_deref().unwrap_or(""),
        e.message
    ));
    lines
}

/// The stand-in central platform: subscribes to every gateway's uplinks.
async fn consume(addr: String, received: Arc<Mutex<Received>>) {
    let (host, port) = addr
        .rsplit_once(':')
        .map(|(h, p)| (h.to_string(), p.parse().unwrap_or(1883)))
        .unwrap_or((addr, 1883));
    let mut opts = MqttOptions::new(format!("demo-platform-{}", std::process::id()), host, port);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(opts, 100);
    loop {
        match events.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                let _ = client.subscribe("+/gateway/+/event/up", QoS::AtMostOnce).await;
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let seq = gw::UplinkFrame::decode(p.payload.as_ref())
                    .ok()
                    .and_then(|f| f.rx_info)
                    .and_then(|rx| rx.metadata.get(META_SEQ).and_then(|s| s.parse::<u64>().ok()));
                if let (Some(seq), Ok(mut r)) = (seq, received.lock()) {
                    r.total += 1;
                    if seq < r.last && !r.seqs.contains(&seq) {
                        r.out_of_order += 1;
                    }
                    r.last = r.last.max(seq);
                    r.seqs.insert(seq);
                }
            }
            Ok(_) => {}
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}
