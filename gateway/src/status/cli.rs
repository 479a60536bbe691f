//! `berrygw status`: asks the running daemon over its local API socket and
//! prints the answer for a terminal (or as JSON). Blocking std I/O: the
//! command makes one request and exits.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::{human_duration, Status};
use crate::clock::ClockSync;

/// Why no status could be had.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    #[error("no answer on {path}: {source}")]
    NotRunning { path: String, source: std::io::Error },
    #[error("the daemon's answer could not be read: {0}")]
    BadAnswer(String),
}

/// The raw JSON body of `GET /api/status` from the daemon at `socket`.
pub fn ask(socket: &Path) -> Result<String, AskError> {
    let (status, body) = request(socket, "GET", "/api/status")?;
    if status != 200 {
        return Err(AskError::BadAnswer(format!("HTTP {status}: {}", body.trim())));
    }
    Ok(body)
}

/// One request to the daemon's local API: the HTTP status and the body.
pub fn request(socket: &Path, method: &str, path: &str) -> Result<(u16, String), AskError> {
    request_with_body(socket, method, path, None)
}

/// As `request`, with a JSON body. Waits up to 5 minutes (a command's read-back).
pub fn request_with_body(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, String), AskError> {
    let not_running = |source| AskError::NotRunning { path: socket.display().to_string(), source };
    let mut stream = UnixStream::connect(socket).map_err(not_running)?;
    let timeout = Some(Duration::from_secs(if body.is_some() { 300 } else { 10 }));
    stream.set_read_timeout(timeout).map_err(not_running)?;
    stream.set_write_timeout(timeout).map_err(not_running)?;
    stream
        .write_all(
            format!(
                "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{}\r\n{}",
                body.map(|b| format!("Content-Type: application/json\r\nContent-Length: {}\r\n", b.len()))
                    .unwrap_or_default(),
                body.unwrap_or_default()
            )
            .as_bytes(),
        )
        .map_err(not_running)?;
    let mut raw = Vec::new();
    stream.take(16 << 20).read_to_end(&mut raw).map_err(not_running)?;
    let text = String::from_utf8(raw).map_err(|_| AskError::BadAnswer("not UTF-8".into()))?;
    let (head, body) =
        text.split_once("\r\n\r\n").ok_or_else(|| AskError::BadAnswer("no HTTP header".into()))?;
    let status_line = head.lines().next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| AskError::BadAnswer(format!("bad status line {status_line:?}")))?;
    Ok((status, body.to_string()))
}

/// Parse the JSON body of `/api/status`.
pub fn parse(body: &str) -> Result<Status, AskError> {
    serde_json::from_str(body).map_err(|e| AskError::BadAnswer(format!("unexpected JSON: {e}")))
}

/// The status for a person at a terminal.
pub fn render(s: &Status) -> String {
    let mut out = String::new();
    let mut line = |l: String| {
        out.push_str(&l);
        out.push('\n');
    };
    line(format!("berrygw {} on gateway {}, up {}", s.version, s.gateway_id, human_duration(s.uptime_secs)));
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
