//! `berryctl exporter --listen ADDR`: the fleet as Prometheus metrics, for a central
//! Prometheus that cannot scrape gateways behind NAT. It stays subscribed to every
//! gateway's retained state and health record (see `fleet`) and serves the latest of
//! each on `GET /metrics`, `berrygw_fleet_*` families labelled by `gateway` (and `sink`).
//! A lost broker connection is retried every few seconds; meanwhile the last records are
//! served, with their age. One small HTTP/1.1 server: one request per connection, the
//! head bounded in size and time, anything but `GET /metrics` a 404.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berrygw_proto::health::Health;
use rumqttc::{Event, Packet};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::broker::BrokerArgs;
use crate::fleet::{subscribe, take, Known};
use crate::Exit;

#[derive(clap::Args)]
pub struct ExporterArgs {
    #[command(flatten)]
    broker: BrokerArgs,
    /// Where to serve /metrics.
    #[arg(long, default_value = "127.0.0.1:9300")]
    listen: SocketAddr,
}

type Fleet = Arc<Mutex<BTreeMap<String, Known>>>;

pub fn run(a: ExporterArgs) -> Exit {
    let runtime = match crate::runtime() {
        Ok(r) => r,
        Err(exit) => return exit,
    };
    runtime.block_on(async {
        let listener = match TcpListener::bind(a.listen).await {
            Ok(l) => l,
            Err(e) => return crate::command::usage(&format!("--listen {}: {e}", a.listen)),
        };
        eprintln!("berryctl exporter: fleet metrics at http://{}/metrics", a.listen);
        let fleet: Fleet = Arc::default();
        tokio::spawn(follow(a.broker, fleet.clone()));
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { continue };
            let fleet = fleet.clone();
            tokio::spawn(async move {
                let mut head = Vec::with_capacity(512);
                let mut buf = [0u8; 512];
                let read = tokio::time::timeout(Duration::from_secs(3), async {
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return false,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    true
                })
                .await;
                if read != Ok(true) {
                    return;
                }
                let line = String::from_utf8_lossy(&head).lines().next().unwrap_or_default().to_string();
                let response = if line.starts_with("GET /metrics ") {
                    let body = encode(&fleet, chrono::Utc::now().timestamp_millis());
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 22\r\nConnection: close\r\n\r\nonly GET /metrics here".into()
                };
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    })
}

/// Stay subscribed to every gateway's state and health, reconnecting when the broker goes.
async fn follow(broker: BrokerArgs, fleet: Fleet) {
    loop {
        let session = async {
            let (client, mut eventloop) = broker.connect(Duration::from_secs(15)).await?;
            subscribe(&client, &broker.prefix).await?;
            loop {
                if let Event::Incoming(Packet::Publish(p)) = eventloop.poll().await? {
                    let mut fleet = fleet.lock().unwrap_or_else(|e| e.into_inner());
                    take(&mut fleet, &broker.prefix, &p.topic, &p.payload);
                }
            }
            #[allow(unreachable_code)]
            Ok::<(), anyhow::Error>(())
        };
        if let Err(e) = session.await {
            eprintln!("berryctl exporter: {e:#}; again in 5 s (the last records are still served)");
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// A label value, escaped as the text format wants.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The Prometheus text of what is known at `now_ms`.
fn encode(fleet: &Fleet, now_ms: i64) -> String {
    let fleet = fleet.lock().unwrap_or_else(|e| e.into_inner());
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, f64)>| {
        let _ = writeln!(out, "# HELP berrygw_fleet_{name} {help}");
        let _ = writeln!(out, "# TYPE berrygw_fleet_{name} {kind}");
        for (labels, value) in samples {
            if labels.is_empty() {
                let _ = writeln!(out, "berrygw_fleet_{name} {value}");
            } else {
                let _ = writeln!(out, "berrygw_fleet_{name}{{{labels}}} {value}");
            }
        }
    };
    let gw = |id: &str| format!("gateway=\"{}\"", label(id));
    let per = |f: &dyn Fn(&Health) -> Option<f64>| -> Vec<(String, f64)> {
        fleet.iter().filter_map(|(id, k)| k.health.as_ref().and_then(f).map(|v| (gw(id), v))).collect()
    };
    let per_sink = |f: &dyn Fn(&berrygw_proto::health::SinkHealth) -> Option<f64>| -> Vec<(String, f64)> {
        let mut v = Vec::new();
        for (id, k) in fleet.iter() {
            for s in k.health.iter().flat_map(|h| &h.sinks) {
                if let Some(x) = f(s) {
                    v.push((format!("{},sink=\"{}\"", gw(id), label(&s.name)), x));
                }
            }
        }
        v
    };
    let b = |x: bool| if x { 1.0 } else { 0.0 };
    family(
        "gateways",
        "gauge",
        "Gateways heard (retained state or health).",
        vec![(String::new(), fleet.len() as f64)],
    );
    family(
        "gateway_up",
        "gauge",
        "1 while the gateway's retained state says online (0 after its last will).",
        fleet.iter().filter_map(|(id, k)| k.online.map(|o| (gw(id), b(o)))).collect(),
    );
    family(
        "info",
        "gauge",
        "The gateway's berrygw version.",
        fleet
            .iter()
            .filter_map(|(id, k)| {
                k.health.as_ref().map(|h| (format!("{},version=\"{}\"", gw(id), label(&h.version)), 1.0))
            })
            .collect(),
    );
    family("healthy", "gauge", "1 when the gateway reports no problem.", per(&|h| Some(b(h.healthy))));
    family(
        "config_version",
        "gauge",
        "The configuration bundle in force (0: the files berrygw.toml names), when bundles are on.",
        per(&|h| h.config_version.map(|v| v as f64)),
    );
    family(
        "health_age_seconds",
        "gauge",
        "Age of the gateway's latest health record.",
        per(&|h| Some(((now_ms - h.at_ms).max(0) / 1000) as f64)),
    );
    family(
        "health_period_seconds",
        "gauge",
        "The longest the gateway waits between records.",
        per(&|h| Some(h.every_secs as f64)),
    );
    family(
        "uptime_seconds",
        "gauge",
        "The daemon's uptime when the record was made.",
        per(&|h| Some(h.uptime_secs as f64)),
    );
    family("radio_running", "gauge", "0 while the concentrator is down.", per(&|h| Some(b(h.radio.running))));
    family(
        "radio_received_total",
        "counter",
        "Frames the radio received since the daemon started.",
        per(&|h| Some(h.radio.received as f64)),
    );
    family(
        "disk_free_bytes",
        "gauge",
        "Free bytes on the state directory's filesystem.",
        per(&|h| h.disk_free_bytes.map(|v| v as f64)),
    );
    family(
        "clock_synced",
        "gauge",
        "1 when the kernel says the clock is NTP-synchronized.",
        per(&|h| h.clock_synced.map(b)),
    );
    family(
        "last_uplink_age_seconds",
        "gauge",
        "Seconds since the radio last handed over a frame.",
        per(&|h| h.last_uplink_age_secs.map(|v| v as f64)),
    );
    family("alarms_open", "gauge", "Alarms open on the gateway.", per(&|h| Some(f64::from(h.alarms_open))));
    family(
        "sink_connected",
        "gauge",
        "1 while the sink's far side answers.",
        per_sink(&|s| Some(b(s.connected))),
    );
    family(
        "sink_backlog_records",
        "gauge",
        "Records waiting in the sink's journal.",
        per_sink(&|s| Some(s.backlog as f64)),
    );
    family(
        "sink_oldest_waiting_seconds",
        "gauge",
        "Age of the oldest record waiting in the sink's journal.",
        per_sink(&|s| s.oldest_waiting_secs.map(|v| v as f64)),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_gateway_ids_and_sink_names_cannot_break_the_text_format() {
        let fleet: Fleet = Arc::default();
        let health: Health = serde_json::from_value(serde_json::json!({
            "gateway_id": "x", "at_ms": 0, "every_secs": 300, "version": "1\"\n# TYPE evil gauge",
            "uptime_secs": 1, "healthy": true,
            "radio": { "kind": "sim", "running": true, "received": 0 },
            "sinks": [{ "name": "a\"}\nevil 1", "connected": true, "backlog": 0 }],
        }))
        .expect("a record");
        fleet
            .lock()
            .expect("lock")
            .insert("gw\"\\\n1".into(), Known { online: Some(true), health: Some(health) });
        let text = encode(&fleet, 1000);
        for line in text.lines() {
            assert!(
                line.starts_with("# HELP berrygw_fleet_")
                    || line.starts_with("# TYPE berrygw_fleet_")
                    || line.starts_with("berrygw_fleet_"),
                "a line the text format does not allow: {line:?}\n{text}"
            );
        }
        assert!(text.contains(r#"gateway="gw\"\\\n1""#), "{text}");
    }
}
