//! `throughput`: simulated radio → filters → journal → sink → broker at QoS 1.

use super::*;

pub(super) async fn throughput(args: &BenchArgs) -> anyhow::Result<serde_json::Value> {
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
    let gateway = Gateway::start(&Site::resolve(cfg)?).await?;
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
