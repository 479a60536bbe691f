//! `footprint`: time from start to READY, resident memory idle and at 100 uplinks/s.

use super::*;

pub(super) async fn footprint(args: &BenchArgs) -> anyhow::Result<serde_json::Value> {
    // Idle: started, connected, nothing to forward.
    let idle_dir = args.dir.join("idle");
    let cfg = bench_config(args, &idle_dir, SIM_NO_DEVICES)?;
    let start = Instant::now();
    let gateway = Gateway::start(&Site::resolve(cfg)?).await?;
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
    let gateway = Gateway::start(&Site::resolve(cfg)?).await?;
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
