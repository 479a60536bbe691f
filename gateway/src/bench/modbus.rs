//! `modbus`: field devices against simulators in a child process (`modbus-sims`).

use super::*;

/// The shipped profiles, so that the bench does not depend on where it runs from.
const NEEDLE_DAM_TOML: &str = include_str!("../../../plugins/profiles/needle-dam.toml");
const LIGHTING_CABINET_TOML: &str = include_str!("../../../plugins/profiles/lighting-cabinet.toml");

/// Bay travel of the simulated dams, % per second: a 10 % move takes 10 ms, so its
/// read-back needs a second look (the first one comes right after the write).
const DAM_SPEED: f64 = 1000.0;

/// `modbus-sims`, started by `modbus`: `--devices` simulated sites, each a needle dam and a
/// lighting cabinet on their own Modbus TCP servers. Prints `<dam addr> <cabinet addr>`
/// per site on stdout, then serves until its stdin closes (the parent is done or gone).
pub(super) async fn modbus_sims(args: &BenchArgs) -> anyhow::Result<()> {
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
pub(super) fn field_device(
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
pub(super) async fn all_online(devices: &[&berrygw_modbus::Device]) -> anyhow::Result<()> {
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
pub(super) fn latency_summary(mut took: Vec<Duration>) -> serde_json::Value {
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
pub(super) async fn modbus(args: &BenchArgs) -> anyhow::Result<serde_json::Value> {
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
            identity: None,
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
