//! Prometheus metrics (`GET /metrics`, OpenMetrics text): one `Collector` that
//! reads the pipeline's own counters, journal statistics and concentrator
//! status at scrape time. Nothing is counted here; the pipeline and the sinks
//! count, this module only names and encodes what they counted.
//!
//! Every family is prefixed `berrygw_`. Families that depend on hardware
//! (concentrator temperature, restarts) appear only when that hardware runs.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::SystemTime;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::ledger::{Ledger, Now};
use crate::view::{GatewayView, SinkView};

/// The registry of a running gateway, ready to encode.
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    /// Metrics over everything `view` can see, and the availability ledger's when there is one.
    pub fn new(view: GatewayView, ledger: Option<Ledger>) -> Metrics {
        let mut registry = Registry::with_prefix("berrygw");
        registry.register_collector(Box::new(GatewayCollector { view }));
        if let Some(ledger) = ledger {
            registry.register_collector(Box::new(LedgerCollector { ledger }));
        }
        Metrics { registry }
    }

    /// The current values in OpenMetrics text format (what Prometheus scrapes).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; an encoder error would be a bug in a label.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!("encoding metrics failed: {e}");
        }
        out
    }
}

/// The `Content-Type` of `Metrics::encode`.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

struct GatewayCollector {
    view: GatewayView,
}

impl fmt::Debug for GatewayCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayCollector").field("gateway_id", &self.view.gateway_id).finish()
    }
}

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

fn flag(a: &AtomicBool) -> i64 {
    i64::from(a.load(Ordering::Relaxed))
}

/// One unlabelled sample under a fresh descriptor.
fn single(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    metric: &impl EncodeMetric,
) -> fmt::Result {
    let m = enc.encode_descriptor(name, help, unit, metric.metric_type())?;
    metric.encode(m)
}

/// One sample per sink under a fresh descriptor.
fn per_sink<M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    sinks: &[SinkView],
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    metric_type: MetricType,
    value: impl Fn(&SinkView) -> M,
) -> fmt::Result {
    let mut m: MetricEncoder = enc.encode_descriptor(name, help, unit, metric_type)?;
    for sink in sinks {
        value(sink).encode(m.encode_family(&[("sink", sink.name)])?)?;
    }
    Ok(())
}

impl prometheus_client::collector::Collector for GatewayCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let v = &self.view;
        let c = &v.counters;

        let mut info =
            enc.encode_descriptor("build", "berrygw version and radio kind", None, MetricType::Info)?;
        info.encode_info(&[("version", env!("CARGO_PKG_VERSION")), ("radio", v.radio_kind)])?;
        single(
            &mut enc,
            "uptime",
            "Seconds since the daemon started",
            Some(&Unit::Seconds),
            &ConstGauge::new(v.started.elapsed().as_secs_f64()),
        )?;

        // Radio side.
        let m = enc.encode_descriptor(
            "radio_frames",
            "Frames received by the radio, by CRC status, channel frequency and data rate",
            None,
            MetricType::Counter,
        )?;
        c.frames.encode(m)?;
        single(&mut enc, "radio_rssi_dbm", "RSSI of received frames (dBm)", None, &c.rssi)?;
        single(&mut enc, "radio_snr_db", "SNR of received frames (dB)", None, &c.snr)?;
        let mut m = enc.encode_descriptor(
            "radio_rejected",
            "Frames dropped by the filters, by reason",
            None,
            MetricType::Counter,
        )?;
        let reasons: Vec<(&'static str, u64)> = c
            .rejected_by_reason
            .lock()
            .map(|r| r.iter().map(|(k, v)| (*k, *v)).collect())
            .unwrap_or_default();
        for (reason, n) in reasons {
            ConstCounter::new(n).encode(m.encode_family(&[("reason", reason)])?)?;
        }
        single(
            &mut enc,
            "radio_queued",
            "Frames accepted and stored in every sink's journal",
            None,
            &ConstCounter::new(load(&c.queued)),
        )?;
        let m = enc.encode_descriptor(
            "tx",
            "Downlink transmissions by the radio's answer",
            None,
            MetricType::Counter,
        )?;
        c.tx_by_status.encode(m)?;
        if let Some(status) = &v.concentrator {
            let s = status.borrow().clone();
            single(
                &mut enc,
                "concentrator_running",
                "1 while the SX1302 concentrator is started and polled",
                None,
                &ConstGauge::new(i64::from(s.running)),
            )?;
            single(
                &mut enc,
                "concentrator_restarts",
                "Attempts to reset and restart a wedged concentrator",
                None,
                &ConstCounter::new(s.restarts),
            )?;
            if let Some(t) = s.temperature_c {
                single(
                    &mut enc,
                    "concentrator_temperature",
                    "Concentrator board temperature",
                    Some(&Unit::Celsius),
                    &ConstGauge::new(f64::from(t)),
                )?;
            }
        }

        if let Some(gwmp) = &v.gwmp {
            let g = gwmp.stats();
            let mut m = enc.encode_descriptor(
                "gwmp_dropped",
                "Packet-forwarder datagrams dropped whole, by reason (malformed, or not from the pinned forwarder)",
                None,
                MetricType::Counter,
            )?;
            for (reason, counter) in [
                ("malformed", &g.malformed),
                ("foreign_source", &g.foreign_source),
                ("foreign_gateway", &g.foreign_gateway),
                ("pull_data_refused", &g.pull_data_refused),
                ("tx_ack_refused", &g.tx_ack_refused),
            ] {
                ConstCounter::new(load(counter)).encode(m.encode_family(&[("reason", reason)])?)?;
            }
            single(
                &mut enc,
                "gwmp_rxpk_rejected",
                "Frames (rxpk) from the packet forwarder refused: bad base64, oversized, missing or implausible field",
                None,
                &ConstCounter::new(load(&g.rxpk_rejected)),
            )?;
            single(
                &mut enc,
                "gwmp_forwarder_moves",
                "Times downlinks moved to a new port of the pinned forwarder after the old one went silent",
                None,
                &ConstCounter::new(load(&g.forwarder_moves)),
            )?;
        }

        // Journals and sinks.
        let sinks = &v.sinks;
        let now_ms = berrygw_core::unix_ms(SystemTime::now());
        per_sink(
            &mut enc,
            sinks,
            "journal_records",
            "Records waiting in the sink's journal",
            None,
            MetricType::Gauge,
            |s| ConstGauge::new(s.journal.watch().borrow().records as i64),
        )?;
        per_sink(
            &mut enc,
            sinks,
            "journal_bytes",
            "Bytes held by the sink's journal",
            None,
            MetricType::Gauge,
            |s| ConstGauge::new(s.journal.watch().borrow().bytes as i64),
        )?;
        per_sink(
            &mut enc,
            sinks,
            "journal_oldest_age",
            "Age of the oldest record waiting (receive time to now; 0 when empty)",
            Some(&Unit::Seconds),
            MetricType::Gauge,
            |s| {
                let oldest = s.journal.watch().borrow().oldest_received_at_ms;
                ConstGauge::new(oldest.map(|ms| (now_ms - ms).max(0) as f64 / 1000.0).unwrap_or(0.0))
            },
        )?;
        per_sink(
            &mut enc,
            sinks,
            "journal_evicted",
            "Records dropped unacknowledged (journal full or unreadable), ever",
            None,
            MetricType::Counter,
            |s| ConstCounter::new(s.journal.watch().borrow().evicted_total),
        )?;
        per_sink(
            &mut enc,
            sinks,
            "journal_quarantined",
            "1 when the journal was found corrupt at start and moved aside",
            None,
            MetricType::Gauge,
            |s| ConstGauge::new(i64::from(s.journal.watch().borrow().quarantined.is_some())),
        )?;
        per_sink(
            &mut enc,
            sinks,
            "sink_connected",
            "1 while the sink is connected to its server",
            None,
            MetricType::Gauge,
            |s| ConstGauge::new(flag(&s.counters.connected)),
        )?;
        per_sink(
            &mut enc,
            sinks,
            "sink_acks_read_late",
            "1 while the MQTT sink reads PUBACKs with its next publish instead of waking for each",
            None,
            MetricType::Gauge,
            |s| ConstGauge::new(flag(&s.counters.acks_read_late)),
        )?;
        per_sink(
            &mut enc,
            sinks,
            "sink_reconnects",
            "Connections lost and retried",
            None,
            MetricType::Counter,
            |s| ConstCounter::new(load(&s.counters.reconnects)),
        )?;
        per_sink(
            &mut enc,
            sinks,
            "sink_forwarded",
            "Records the far side acknowledged",
            None,
            MetricType::Counter,
            |s| ConstCounter::new(load(&s.counters.forwarded)),
        )?;
        per_sink(
            &mut enc,
            sinks,
            "sink_bad_records",
            "Journal records the sink could not turn into a wire message, set aside and not retried",
            None,
            MetricType::Counter,
            |s| ConstCounter::new(load(&s.counters.bad_records)),
        )?;
        per_sink(
            &mut enc,
            sinks,
            "sink_downlinks",
            "Downlink commands received from the server",
            None,
            MetricType::Counter,
            |s| ConstCounter::new(load(&s.counters.downlinks_received)),
        )?;
        per_sink(
            &mut enc,
            sinks,
            "sink_bad_commands",
            "Malformed commands or datagrams from the server",
            None,
            MetricType::Counter,
            |s| ConstCounter::new(load(&s.counters.bad_commands)),
        )?;
        let mut m = enc.encode_descriptor(
            "sink_publish_ack_latency",
            "Publish of a journal record to reading its acknowledgement (MQTT PUBACK; read with the next publish at field rates, README \"Journal\")",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for sink in sinks {
            sink.counters.publish_ack_latency.encode(m.encode_family(&[("sink", sink.name)])?)?;
        }
        if let Some(decoder) = &v.decoder {
            encode_decoder(&mut enc, &decoder.counters)?;
        }
        if let Some(actuation) = &v.actuation {
            encode_actuation(&mut enc, actuation)?;
        }
        Ok(())
    }
}

/// Local decoding, when `[decode]` is configured.
fn encode_decoder(enc: &mut DescriptorEncoder, d: &crate::decode::DecodeCounters) -> fmt::Result {
    single(
        enc,
        "decode_readings",
        "Uplinks of registered devices decoded into readings",
        None,
        &ConstCounter::new(load(&d.readings)),
    )?;
    let m = enc.encode_descriptor(
        "decode_errors",
        "Uplinks of registered devices refused (mic, replay, fcnt_gap, ...) or whose codec failed (codec_*), by reason",
        None,
        MetricType::Counter,
    )?;
    d.errors.encode(m)?;
    single(
        enc,
        "decode_not_ours",
        "Frames of devices not in the registry (forwarded untouched)",
        None,
        &ConstCounter::new(load(&d.not_ours)),
    )?;
    single(
        enc,
        "decode_dropped",
        "Readings lost because the decoder's queue was full",
        None,
        &ConstCounter::new(load(&d.dropped)),
    )?;
    single(
        enc,
        "decode_devices",
        "Devices in the registry in force",
        None,
        &ConstGauge::new(load(&d.devices) as i64),
    )?;
    single(
        enc,
        "decode_sessions",
        "Devices with session keys",
        None,
        &ConstGauge::new(load(&d.sessions) as i64),
    )?;
    let m = enc.encode_descriptor(
        "decode_sessions_started",
        "OTAA sessions started, by source (join relayed here, pushed)",
        None,
        MetricType::Counter,
    )?;
    d.sessions_started.encode(m)?;
    let m = enc.encode_descriptor(
        "decode_reloads",
        "Device registry reloads, by result",
        None,
        MetricType::Counter,
    )?;
    d.reloads.encode(m)?;
    single(
        enc,
        "decode_duration",
        "Time to verify, decrypt and decode one uplink",
        Some(&Unit::Seconds),
        &d.decode_seconds,
    )
}

/// Exemplar labels of a histogram that has none.
type NoLabels = Vec<(String, String)>;

/// Field devices and commands, when `[field]` is configured.
fn encode_actuation(enc: &mut DescriptorEncoder, a: &crate::actuation::engine::Actuation) -> fmt::Result {
    use berrygw_modbus::poller::{PollOutcome, LATENCY_BUCKETS_MS};
    let mut m = enc.encode_descriptor(
        "modbus_polls",
        "Modbus polls by device and outcome",
        None,
        MetricType::Counter,
    )?;
    for (name, d) in a.devices() {
        let c = d.device.counters();
        for outcome in PollOutcome::ALL {
            ConstCounter::new(c.count(outcome))
                .encode(m.encode_family(&[("device", name.as_str()), ("outcome", outcome.as_str())])?)?;
        }
    }
    let mut m = enc.encode_descriptor(
        "modbus_poll_latency",
        "Duration of successful Modbus polls (every point of the device read)",
        Some(&Unit::Seconds),
        MetricType::Histogram,
    )?;
    for (name, d) in a.devices() {
        let (counts, sum) = d.device.counters().latency();
        let buckets: Vec<(f64, u64)> = counts
            .iter()
            .enumerate()
            .map(|(i, n)| (LATENCY_BUCKETS_MS.get(i).map_or(f64::MAX, |ms| *ms as f64 / 1000.0), *n))
            .collect();
        let count = counts.iter().sum();
        m.encode_family(&[("device", name.as_str())])?.encode_histogram::<NoLabels>(
            sum.as_secs_f64(),
            count,
            &buckets,
            None,
        )?;
    }
    let mut m = enc.encode_descriptor(
        "field_device_online",
        "1 while the device answers its polls",
        None,
        MetricType::Gauge,
    )?;
    for (name, d) in a.devices() {
        let online = d.device.state().borrow().online;
        ConstGauge::new(i64::from(online)).encode(m.encode_family(&[("device", name.as_str())])?)?;
    }
    let c = a.counters();
    let m = enc.encode_descriptor(
        "commands",
        "Field device commands by source (central, local, rule) and outcome (refused, executed, verified, failed)",
        None,
        MetricType::Counter,
    )?;
    c.commands.encode(m)?;
    let m = enc.encode_descriptor(
        "command_reasons",
        "Refused and failed commands by reason",
        None,
        MetricType::Counter,
    )?;
    c.reasons.encode(m)?;
    let m = enc.encode_descriptor(
        "commands_unauthenticated",
        "Central messages refused before authentication (malformed, unknown_key, bad_signature, duplicate): counted, never stored",
        None,
        MetricType::Counter,
    )?;
    c.unauthenticated.encode(m)
}

/// The availability ledger: incidents opened, services down now, the last 30 days.
struct LedgerCollector {
    ledger: Ledger,
}

impl fmt::Debug for LedgerCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LedgerCollector").finish()
    }
}

impl prometheus_client::collector::Collector for LedgerCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        // The last 30 days are read from the ledger's file (cached 10 s).
        let recent = tokio::runtime::Handle::try_current()
            .ok()
            .filter(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
            .map_or_else(
                || self.ledger.recent(Now::current()),
                |_| tokio::task::block_in_place(|| self.ledger.recent(Now::current())),
            );
        let mut m = enc.encode_descriptor(
            "incidents_opened",
            "Availability incidents opened since the daemon started, by service and cause",
            None,
            MetricType::Counter,
        )?;
        for (service, cause, n) in &recent.opened {
            ConstCounter::new(*n)
                .encode(m.encode_family(&[("service", service.as_str()), ("cause", cause.as_str())])?)?;
        }
        let mut m = enc.encode_descriptor(
            "service_down",
            "1 while the service has an open availability incident",
            None,
            MetricType::Gauge,
        )?;
        let services: Vec<&str> = recent
            .figures
            .iter()
            .map(|f| f.service.as_str())
            .filter(|s| *s != berrygw_proto::availability::OVERALL)
            .collect();
        for service in &services {
            let down = recent.open.iter().any(|i| i.service == *service);
            ConstGauge::new(i64::from(down)).encode(m.encode_family(&[("service", *service)])?)?;
        }
        let mut m = enc.encode_descriptor(
            "availability_30d_ratio",
            "Time up over time observed in the last 30 days (planned maintenance excluded), by service and overall",
            None,
            MetricType::Gauge,
        )?;
        for f in &recent.figures {
            if let Some(a) = f.availability {
                ConstGauge::new(a).encode(m.encode_family(&[("service", f.service.as_str())])?)?;
            }
        }
        single(
            &mut enc,
            "maintenance",
            "1 while a declared planned maintenance is in progress",
            None,
            &ConstGauge::new(i64::from(recent.maintenance.is_some())),
        )
    }
}
