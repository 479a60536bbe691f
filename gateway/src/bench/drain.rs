//! `drain`: a backlog written into the journal while the broker is unreachable, then drained.

use super::*;

pub(super) fn sample_record(seq: u64) -> NewRecord {
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

pub(super) async fn drain(args: &BenchArgs) -> anyhow::Result<serde_json::Value> {
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
    wait_drained(&journal, Seq(args.uplinks)).await?;
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
