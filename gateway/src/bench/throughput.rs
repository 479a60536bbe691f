//! `throughput`: simulated radio → filters → journal → sink → broker at QoS 1.

use super::*;

pub(super) async fn throughput(args: &BenchArgs) -> anyhow::Result<serde_json::Value> {
    let mut cfg = bench_config(args, &args.dir, SIM_NO_DEVICES)?;
    let total = offer_throughput_load(&mut cfg, args.uplinks)?;
    let before = sample();
    let start = Instant::now();
    let gateway = Gateway::start(&Site::resolve(cfg)?).await?;
    let sink = gateway.sink("chirpstack").context("bench config has the chirpstack sink")?;
    wait_forwarded(sink, total, start).await?;
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
