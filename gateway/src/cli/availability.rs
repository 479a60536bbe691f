//! `berrygw availability` and `berrygw maintenance`: the availability ledger through the
//! daemon's local API (reading needs only the socket; maintenance is an action for
//! `[api] operators`, like `reload`).

use std::fmt::Write as _;
use std::process::ExitCode;

use berrygw_proto::availability::{length_text as length, Figures, Incident, Maintenance, CSV_COLUMNS};

use super::api::{api_call, ApiArgs};
use crate::ledger::Report;
use crate::rules::TimeZone;

/// `berrygw availability`: 0 printed, 1 the daemon refused (a bad month, no ledger), 3 no daemon.
pub fn availability(month: Option<&str>, json: bool, csv: bool, api: ApiArgs) -> ExitCode {
    if let Some(m) = month {
        if let Err(e) = berrygw_proto::availability::parse_month(m) {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    }
    let path = match month {
        Some(m) => format!("/api/availability?month={m}"),
        None => "/api/availability".to_string(),
    };
    let body = match api_call(api, "GET", &path, None) {
        Ok(body) => body,
        Err(code) => return code,
    };
    if json {
        println!("{}", body.trim_end());
        return ExitCode::SUCCESS;
    }
    match serde_json::from_str::<Report>(&body) {
        Ok(report) => {
            print!("{}", if csv { render_csv(&report) } else { render(&report) });
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: unexpected answer: {e}");
            ExitCode::from(3)
        }
    }
}

/// `berrygw maintenance start --reason …` / `stop`: 0 done, 1 refused, 3 no daemon.
pub fn maintenance(start_reason: Option<&str>, api: ApiArgs) -> ExitCode {
    let body = match start_reason {
        Some(reason) => serde_json::json!({ "action": "start", "reason": reason }),
        None => serde_json::json!({ "action": "stop" }),
    }
    .to_string();
    match api_call(api, "POST", "/api/maintenance", Some(&body)) {
        Ok(body) => {
            match serde_json::from_str::<Maintenance>(&body) {
                Ok(m) if m.end_ms.is_none() => println!("maintenance {} started: {}", m.id, m.reason),
                Ok(m) => println!(
                    "maintenance {} stopped after {} ({})",
                    m.id,
                    length(m.end_ms.unwrap_or(m.start_ms) - m.start_ms),
                    m.reason
                ),
                Err(_) => println!("{}", body.trim_end()),
            }
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

fn local(tz: &TimeZone, ms: i64) -> String {
    tz.to_local(ms.div_euclid(1000))
        .map_or_else(|| ms.to_string(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string())
}

/// The report for a terminal.
pub fn render(r: &Report) -> String {
    let tz = TimeZone::from_config(&r.timezone).unwrap_or_else(|_| TimeZone::utc());
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Availability of {}, {} ({}), GTR {}; watched since {}",
        r.gateway_id,
        r.month,
        tz.name(),
        length(r.gtr_ms),
        local(&tz, r.observed_since_ms)
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<24} {:>12} {:>10} {:>9} {:>5} {:>10} {:>10} {:>8}",
        "service", "availability", "down", "incidents", "open", "mean TTR", "longest", "over GTR"
    );
    for f in &r.figures {
        let [service, percent, down, incidents, open, mean, longest, over] = f.cells();
        let _ = writeln!(
            out,
            "{service:<24} {percent:>12} {down:>10} {incidents:>9} {open:>5} {mean:>10} {longest:>10} {over:>8}"
        );
    }
    let _ = writeln!(out);
    // The days, overall: a compact line of week-long rows.
    if !r.days.is_empty() {
        let _ = writeln!(out, "Days (overall):");
        for week in r.days.chunks(7) {
            let cells: Vec<String> = week
                .iter()
                .map(|d| {
                    let pct = d
                        .figures
                        .iter()
                        .find(|f| f.service == "overall")
                        .map_or("–".into(), Figures::percent);
                    format!("{} {:>9}", &d.day[8..], pct)
                })
                .collect();
            let _ = writeln!(out, "  {}", cells.join("   "));
        }
        let _ = writeln!(out);
    }
    if r.incidents.is_empty() {
        let _ = writeln!(out, "No incident this month.");
    } else {
        let _ = writeln!(out, "Incidents ({} local time; ~ estimated):", tz.name());
        for i in &r.incidents {
            let _ = writeln!(out, "  {}", incident_line(&tz, i, r.now_ms));
        }
    }
    for m in &r.maintenance {
        let _ = writeln!(
            out,
            "Maintenance {}: {} to {}: {}",
            m.id,
            local(&tz, m.start_ms),
            m.end_ms.map_or("(in progress)".into(), |e| local(&tz, e)),
            m.reason
        );
    }
    out
}

fn incident_line(tz: &TimeZone, i: &Incident, now_ms: i64) -> String {
    let mark = if i.estimated { "~" } else { " " };
    format!(
        "#{:<5} {:<20} {:<18} {}{} to {} {:>10}  {}{}",
        i.id,
        i.service,
        i.cause,
        mark,
        local(tz, i.start_ms),
        i.end_ms.map_or("(open)             ".into(), |e| local(tz, e)),
        length(i.duration_ms(now_ms)),
        i.ended.as_deref().unwrap_or("open"),
        if i.detail.is_empty() { String::new() } else { format!(": {}", i.detail) }
    )
}

/// One line per service, for a spreadsheet: the figures of the month (`period` YYYY-MM),
/// then of each day (`period` YYYY-MM-DD).
pub fn render_csv(r: &Report) -> String {
    let mut out = format!("gateway_id,period,{CSV_COLUMNS}\n");
    for f in &r.figures {
        let _ = writeln!(out, "{},{},{}", r.gateway_id, r.month, f.csv());
    }
    for d in &r.days {
        for f in &d.figures {
            let _ = writeln!(out, "{},{},{}", r.gateway_id, d.day, f.csv());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_read_naturally() {
        assert_eq!(length(42_000), "42 s");
        assert_eq!(length(12 * 60_000), "12 min");
        assert_eq!(length(3 * 3_600_000 + 5 * 60_000), "3 h 05");
        assert_eq!(length(2 * 86_400_000 + 4 * 3_600_000), "2 d 4 h");
        assert_eq!(length(-5), "0 s");
    }
}
