//! `gwmp`: a packet forwarder thread sends PUSH_DATA over loopback UDP to the GWMP ingest.

use super::*;

/// CPU time of the calling thread.
pub(super) fn thread_cpu() -> Duration {
    stat_cpu("/proc/thread-self/stat")
}

pub(super) async fn gwmp(args: &BenchArgs) -> anyhow::Result<serde_json::Value> {
    let port = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port();
    let radio = format!("kind = \"gwmp\"\n[radio.gwmp]\nbind = \"127.0.0.1:{port}\"");
    let cfg = bench_config(args, &args.dir, &radio)?;
    let total = args.uplinks;
    let gateway = Gateway::start(&Site::resolve(cfg)?).await?;
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
    wait_forwarded(sink, received, start).await?;
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
