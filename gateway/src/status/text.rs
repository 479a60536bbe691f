//! `berrygw status` for a person at a terminal: the daemon's status as lines.

use super::{human_duration, Status};
use crate::clock::ClockSync;

/// The status for a person at a terminal.
pub fn render(s: &Status) -> String {
    let mut out = String::new();
    let mut line = |l: String| {
        out.push_str(&l);
        out.push('\n');
    };
    line(format!("berrygw {} on gateway {}, up {}", s.version, s.gateway_id, human_duration(s.uptime_secs)));
    if let Some(v) = s.config_version {
        line(format!(
            "config:   bundle version {v}{}",
            if v == 0 { " (the files berrygw.toml names)" } else { "" }
        ));
    }
    if s.healthy {
        line("health:   healthy".into());
    } else {
        line("health:   NOT HEALTHY".into());
        for p in &s.problems {
            line(format!("  - {p}"));
        }
    }
    line(format!(
        "clock:    {}",
        match &s.clock {
            ClockSync::Synchronized => "NTP-synchronized".to_string(),
            ClockSync::Unsynchronized => "NOT synchronized (central commands are refused)".to_string(),
            ClockSync::Unknown(e) => format!("UNKNOWN: {e}"),
        }
    ));
    let r = &s.radio;
    line(format!(
        "radio:    {}: {} received ({} CRC ok), {} rejected, {} queued",
        r.kind, r.received, r.received_crc_ok, r.rejected, r.queued
    ));
    if let Some(c) = &r.concentrator {
        let temp = c.temperature_c.map(|t| format!(", {t:.1} °C")).unwrap_or_default();
        line(format!(
            "          concentrator {} {}{temp}, {} restarts{}",
            c.board,
            if c.running { "running" } else { "NOT RUNNING" },
            c.restarts,
            c.last_error.as_ref().map(|e| format!(", last error: {e}")).unwrap_or_default()
        ));
        let mhz: Vec<String> = c.channels_hz.iter().map(|f| format!("{:.3}", f64::from(*f) / 1e6)).collect();
        line(format!(
            "          channels {} MHz, from {}",
            mhz.join(", "),
            c.plan_from.as_deref().unwrap_or("[radio.sx1302]")
        ));
    }
    for sink in &s.sinks {
        let b = &sink.backlog;
        line(format!(
            "sink {}: {}, {} forwarded, {} reconnects",
            sink.name,
            if sink.connected { "connected" } else { "DISCONNECTED" },
            sink.forwarded,
            sink.reconnects
        ));
        let age = b.oldest_age_secs.map(|a| format!(", oldest {}", human_duration(a))).unwrap_or_default();
        let eta = match (b.records, b.drained_in_secs, b.growth_per_sec) {
            (0, _, _) => String::new(),
            (_, Some(eta), _) => format!(", drained in about {}", human_duration(eta)),
            (_, None, Some(g)) if g > 0.0 => ", growing".into(),
            _ => String::new(),
        };
        line(format!("          backlog {} records ({} bytes){age}{eta}", b.records, b.bytes));
        if b.evicted_total > 0 {
            line(format!("          {} records dropped unsent (journal full), ever", b.evicted_total));
        }
    }
    for d in &s.field_devices {
        let seen = d
            .last_ok_age_secs
            .map(|a| format!(", last answer {} ago", human_duration(a)))
            .unwrap_or_default();
        line(format!(
            "field {}: {} ({}, {}){seen}",
            d.name,
            if d.online { "online" } else { "NOT ANSWERING" },
            d.profile,
            d.link
        ));
    }
    for a in &s.alarms {
        line(format!(
            "ALARM {} [{}]: {} (since {}, rule {})",
            a.name, a.severity, a.message, a.since, a.rule
        ));
    }
    if let Some(c) = s.recent_commands.first() {
        line(format!(
            "last command: {} {} on {} by {} ({}): {}{}",
            c.at,
            c.command,
            c.target,
            c.actor,
            c.source,
            c.outcome,
            c.reason.as_ref().map(|r| format!(" ({r})")).unwrap_or_default()
        ));
    }
    if !s.readings.is_empty() {
        line(format!("readings: {} devices decoded", s.readings.len()));
    }
    out
}
