//! `berryctl availability --month YYYY-MM`: the fleet's monthly availability report for the
//! maintenance contract, joined from every gateway's month record (retained by each gateway
//! on `<prefix>/<gateway>/availability/<YYYY-MM>`, see `berrygw_proto::availability`).
//!
//! The figures are computed again here from each gateway's incidents and maintenance, with
//! the same functions the gateway uses, so the report can be checked against the records
//! (`--json` prints them all). A record carrying too many incidents to hold them all
//! (`incidents_omitted`) is taken at its own figures, and the report says so. A record whose
//! gateway id is not the one in its topic, or that does not parse, is left out and named.
//!
//! Outputs: a table (default), `--csv` (one line per gateway and service, then the fleet's),
//! `--json`, and `--html FILE`, a self-contained printable page with a timeline of the
//! month per gateway (a browser prints it to PDF).
//!
//! Exit 0 with at least one gateway's record, 2 when none was heard within `--wait`,
//! 3 for a bad month or zone.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use berrygw_proto::availability::{
    self as av, fleet_figures, length_text as length, month_span, parse_month, Figures, Incident, Ledger,
    MonthRecord, Span, TimeZone, CSV_COLUMNS,
};
use serde::Serialize;

use crate::broker::BrokerArgs;
use crate::Exit;

#[derive(clap::Args)]
pub struct AvailabilityArgs {
    #[command(flatten)]
    broker: BrokerArgs,
    /// The local month, YYYY-MM.
    #[arg(long)]
    month: String,
    /// The contract's guaranteed time to restore, in minutes; default: the gateways' own.
    #[arg(long)]
    gtr_minutes: Option<u64>,
    /// The zone of the contract's days and months.
    #[arg(long, default_value = "Europe/Paris")]
    timezone: String,
    /// Seconds to collect the retained records.
    #[arg(long, default_value_t = 3)]
    wait: u64,
    /// One CSV line per gateway and service, then the fleet's lines.
    #[arg(long, conflicts_with = "json")]
    csv: bool,
    /// The report and every record it was made from, as JSON.
    #[arg(long)]
    json: bool,
    /// Also write a printable HTML page with a timeline per gateway to this file.
    #[arg(long)]
    html: Option<PathBuf>,
}

/// The report of one month.
#[derive(Debug, Serialize)]
pub struct Report {
    pub month: String,
    pub timezone: String,
    pub gtr_ms: i64,
    pub period: Span,
    /// The fleet: `overall`, `gateway`, `radio`, each sink, `field`.
    pub fleet: Vec<Figures>,
    pub gateways: Vec<GatewayReport>,
    /// Records left out and why, and records kept with a remark.
    pub notes: Vec<String>,
}

/// One gateway's month.
#[derive(Debug, Serialize)]
pub struct GatewayReport {
    pub gateway_id: String,
    /// The figures were the gateway's own (its record left incidents out).
    pub own_figures: bool,
    pub figures: Vec<Figures>,
    pub record: MonthRecord,
}

pub fn run(a: AvailabilityArgs) -> Exit {
    let (year, month) = match parse_month(&a.month) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e}");
            return Exit::Usage;
        }
    };
    let tz = match TimeZone::from_config(&a.timezone) {
        Ok(tz) => tz,
        Err(e) => {
            eprintln!("error: --timezone: {e}");
            return Exit::Usage;
        }
    };
    let runtime = match crate::runtime() {
        Ok(r) => r,
        Err(exit) => return exit,
    };
    let messages = match runtime.block_on(collect(&a.broker, &a.month, Duration::from_secs(a.wait))) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Exit::NoAnswer;
        }
    };
    let report = build(&a.broker.prefix, &a.month, (year, month), &tz, a.gtr_minutes, messages);
    for note in &report.notes {
        eprintln!("note: {note}");
    }
    if report.gateways.is_empty() {
        eprintln!("no month record for {} heard on {} within {} s", a.month, a.broker.broker, a.wait);
        return Exit::NoAnswer;
    }
    if let Some(path) = &a.html {
        if let Err(e) = std::fs::write(path, html(&report, &tz)) {
            eprintln!("error: writing {}: {e}", path.display());
            return Exit::Usage;
        }
    }
    if a.json {
        println!("{}", serde_json::to_string(&report).unwrap_or_default());
    } else if a.csv {
        print!("{}", csv(&report));
    } else {
        print!("{}", table(&report));
    }
    Exit::Done
}

/// The retained month records under the prefix: (topic, payload).
async fn collect(broker: &BrokerArgs, month: &str, wait: Duration) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    broker.retained(&[broker.topics("+").availability(month)], wait).await
}

/// The gateway a topic `<prefix>/<gateway>/availability/<month>` names.
fn topic_gateway<'a>(prefix: &str, topic: &'a str) -> Option<&'a str> {
    let prefix = prefix.trim_matches('/');
    let rest = if prefix.is_empty() { topic } else { topic.strip_prefix(prefix)?.strip_prefix('/')? };
    let mut parts = rest.split('/');
    let (Some(gw), Some("availability"), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    Some(gw)
}

/// The report from the messages heard (the latest per gateway wins).
pub fn build(
    prefix: &str,
    month_name: &str,
    (year, month): (i32, u32),
    tz: &TimeZone,
    gtr_minutes: Option<u64>,
    messages: Vec<(String, Vec<u8>)>,
) -> Report {
    let mut notes = Vec::new();
    let mut records: BTreeMap<String, MonthRecord> = BTreeMap::new();
    for (topic, payload) in messages {
        let Some(gw) = topic_gateway(prefix, &topic) else { continue };
        match serde_json::from_slice::<MonthRecord>(&payload) {
            Ok(r) if r.gateway_id != gw => {
                notes.push(format!("{topic}: the record says gateway {}, the topic {gw}", r.gateway_id))
            }
            Ok(r) if r.month != month_name => {
                notes.push(format!("{topic}: the record is of month {}", r.month))
            }
            Ok(r) => {
                if r.timezone != tz.name() {
                    notes.push(format!(
                        "{topic}: kept, but the gateway counts its days in {} (the report: {})",
                        r.timezone,
                        tz.name()
                    ));
                }
                records.insert(gw.to_string(), r);
            }
            Err(e) => notes.push(format!("{topic}: not a month record: {e}")),
        }
    }
    let gtr_ms = gtr_minutes
        .map(|m| (m * 60_000) as i64)
        .or_else(|| records.values().next().map(|r| r.gtr_ms))
        .unwrap_or(4 * 3_600_000);
    let period = month_span(tz, year, month);
    let records: Vec<MonthRecord> = records.into_values().collect();
    let fleet = fleet_figures(&records, gtr_ms, tz, year, month);
    let gateways = records
        .into_iter()
        .map(|record| {
            let own_figures = record.incidents_omitted > 0;
            let figures = if own_figures {
                record.figures.clone()
            } else {
                Ledger {
                    incidents: &record.incidents,
                    maintenance: &record.maintenance,
                    observed_since_ms: record.observed_since_ms,
                    now_ms: record.made_ms.min(period.end_ms),
                    gtr_ms,
                }
                .all_figures(period)
            };
            GatewayReport { gateway_id: record.gateway_id.clone(), own_figures, figures, record }
        })
        .collect();
    Report {
        month: month_name.to_string(),
        timezone: tz.name().to_string(),
        gtr_ms,
        period,
        fleet,
        gateways,
        notes,
    }
}

fn percent(f: Option<&Figures>) -> String {
    f.map_or("–".to_string(), Figures::percent)
}

fn overall(figures: &[Figures]) -> Option<&Figures> {
    figures.iter().find(|f| f.service == av::OVERALL)
}

/// The report for a terminal: one line per gateway (its overall figures), then the fleet.
pub fn table(r: &Report) -> String {
    let mut out = format!(
        "Availability {} ({}), GTR {}: {} gateways\n\n",
        r.month,
        r.timezone,
        length(r.gtr_ms),
        r.gateways.len()
    );
    let _ = writeln!(
        out,
        "{:<18} {:>12} {:>10} {:>9} {:>5} {:>10} {:>10} {:>8}  worst service",
        "gateway", "availability", "down", "incidents", "open", "mean TTR", "longest", "over GTR"
    );
    let line = |out: &mut String, name: &str, figures: &[Figures], note: &str| {
        let o = overall(figures);
        let worst = figures
            .iter()
            .filter(|f| f.service != av::OVERALL && f.availability.is_some_and(|a| a < 1.0))
            .min_by(|a, b| a.availability.partial_cmp(&b.availability).unwrap_or(std::cmp::Ordering::Equal))
            .map(|f| format!("{} {}", f.service, percent(Some(f))))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{:<18} {:>12} {:>10} {:>9} {:>5} {:>10} {:>10} {:>8}  {}{}",
            name,
            percent(o),
            o.map_or("–".into(), |f| length(f.down_ms)),
            o.map_or(0, |f| f.incidents),
            o.map_or(0, |f| f.open),
            o.and_then(|f| f.mean_restore_ms).map_or("–".into(), length),
            o.and_then(|f| f.longest_ms).map_or("–".into(), length),
            o.map_or(0, |f| f.over_gtr),
            worst,
            note
        );
    };
    for g in &r.gateways {
        line(&mut out, &g.gateway_id, &g.figures, if g.own_figures { " (its own figures)" } else { "" });
    }
    line(&mut out, "fleet", &r.fleet, "");
    out
}

/// One CSV line per gateway and service, then the fleet's (gateway `fleet`).
pub fn csv(r: &Report) -> String {
    let mut out = format!("month,gateway_id,{CSV_COLUMNS}\n");
    let rows = r.gateways.iter().map(|g| (g.gateway_id.as_str(), &g.figures)).chain([("fleet", &r.fleet)]);
    for (gw, figures) in rows {
        for f in figures {
            let _ = writeln!(out, "{},{},{}", r.month, gw, f.csv());
        }
    }
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn local(tz: &TimeZone, ms: i64) -> String {
    tz.to_local(ms.div_euclid(1000))
        .map_or_else(|| ms.to_string(), |t| t.format("%Y-%m-%d %H:%M").to_string())
}

/// A self-contained printable page: the fleet's figures, then per gateway a timeline of the
/// month (one lane per service, outages in red, maintenance in grey) and its incidents.
pub fn html(r: &Report, tz: &TimeZone) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Availability {m}</title>\
         <style>body{{font:12px system-ui,sans-serif;margin:1.5em;color:#222}}table{{border-collapse:collapse;margin:.5em 0}}\
         td,th{{border:1px solid #bbb;padding:2px 6px;text-align:right}}td:first-child,th:first-child{{text-align:left}}\
         h2{{margin-top:1.5em;page-break-before:auto}}section{{page-break-inside:avoid}}.lane{{fill:#e8f5e9}}.out{{fill:#c62828}}\
         .mnt{{fill:#9e9e9e}}svg text{{font:10px sans-serif}}@media print{{body{{margin:0}}}}</style></head><body>\
         <h1>Availability {m}</h1><p>Days and months in {tz}; guaranteed time to restore {gtr}; {n} gateways. \
         Figures computed from each gateway's incidents (planned maintenance excluded).</p>",
        m = escape(&r.month),
        tz = escape(&r.timezone),
        gtr = length(r.gtr_ms),
        n = r.gateways.len()
    );
    out.push_str(&figures_table(&r.fleet));
    for g in &r.gateways {
        let _ = write!(out, "<section><h2>{}</h2>", escape(&g.gateway_id));
        if g.own_figures {
            let _ = write!(
                out,
                "<p>{} older incidents were left out of its record; its own figures are shown.</p>",
                g.record.incidents_omitted
            );
        }
        out.push_str(&figures_table(&g.figures));
        out.push_str(&timeline(r.period, &g.figures, &g.record));
        if !g.record.incidents.is_empty() {
            out.push_str("<table><tr><th>#</th><th>service</th><th>cause</th><th>start</th><th>end</th><th>length</th><th>ended</th></tr>");
            for i in &g.record.incidents {
                let _ = write!(
                    out,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    i.id,
                    escape(&i.service),
                    escape(&i.cause),
                    if i.estimated { "~" } else { "" },
                    local(tz, i.start_ms),
                    i.end_ms.map_or("open".into(), |e| local(tz, e)),
                    length(i.duration_ms(g.record.made_ms)),
                    escape(i.ended.as_deref().unwrap_or("open"))
                );
            }
            out.push_str("</table>");
        }
        out.push_str("</section>");
    }
    out.push_str("</body></html>\n");
    out
}

fn figures_table(figures: &[Figures]) -> String {
    let mut out = String::from(
        "<table><tr><th>service</th><th>availability</th><th>down</th><th>incidents</th><th>open</th>\
         <th>mean TTR</th><th>longest</th><th>over GTR</th></tr>",
    );
    for f in figures {
        out.push_str("<tr>");
        for cell in f.cells() {
            let _ = write!(out, "<td>{}</td>", escape(&cell));
        }
        out.push_str("</tr>");
    }
    out.push_str("</table>");
    out
}

/// One lane per service over the month; outages red, maintenance grey.
fn timeline(period: Span, figures: &[Figures], record: &MonthRecord) -> String {
    const W: f64 = 700.0;
    const LANE: f64 = 14.0;
    const LEFT: f64 = 130.0;
    let services: Vec<&str> =
        figures.iter().map(|f| f.service.as_str()).filter(|s| *s != av::OVERALL).collect();
    let height = LANE * (services.len() as f64 + 1.0) + 16.0;
    let x = |ms: i64| {
        LEFT + W * ((ms - period.start_ms).clamp(0, period.len()) as f64 / period.len().max(1) as f64)
    };
    let mut out = format!("<svg width=\"{}\" height=\"{height}\" role=\"img\">", LEFT + W + 10.0);
    for (n, service) in services.iter().enumerate() {
        let y = LANE * n as f64;
        let _ = write!(
            out,
            "<text x=\"0\" y=\"{}\">{}</text><rect class=\"lane\" x=\"{LEFT}\" y=\"{y}\" width=\"{W}\" height=\"{}\"/>",
            y + LANE - 4.0,
            escape(service),
            LANE - 3.0
        );
        for m in &record.maintenance {
            let (a, b) = (x(m.start_ms), x(m.end_ms.unwrap_or(record.made_ms)));
            let _ = write!(
                out,
                "<rect class=\"mnt\" x=\"{a:.1}\" y=\"{y}\" width=\"{:.1}\" height=\"{}\"/>",
                (b - a).max(1.0),
                LANE - 3.0
            );
        }
        for i in record.incidents.iter().filter(|i: &&Incident| i.service == *service) {
            let (a, b) = (x(i.start_ms), x(i.end_ms.unwrap_or(record.made_ms)));
            let _ = write!(
                out,
                "<rect class=\"out\" x=\"{a:.1}\" y=\"{y}\" width=\"{:.1}\" height=\"{}\"><title>{} {}</title></rect>",
                (b - a).max(1.0),
                LANE - 3.0,
                escape(&i.cause),
                length(i.duration_ms(record.made_ms))
            );
        }
    }
    // Day ticks: every 5th day.
    let y = LANE * services.len() as f64 + 10.0;
    let days = (period.len() / 86_400_000).max(1);
    for d in (0..=days).step_by(5) {
        let xd = LEFT + W * (d as f64 / days as f64);
        let _ = write!(out, "<text x=\"{xd:.1}\" y=\"{y}\">{}</text>", d + 1);
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(gw: &str, incidents: Vec<Incident>) -> MonthRecord {
        MonthRecord {
            gateway_id: gw.into(),
            month: "2026-11".into(),
            timezone: "Europe/Paris".into(),
            made_ms: 1_800_000_000_000,
            observed_since_ms: 0,
            gtr_ms: 4 * 3_600_000,
            incidents,
            incidents_omitted: 0,
            maintenance: vec![],
            figures: vec![],
        }
    }

    #[test]
    fn forged_junk_and_other_months_are_left_out_and_named() {
        let tz = TimeZone::utc();
        let good = serde_json::to_vec(&record("gw1", vec![])).unwrap();
        let messages = vec![
            ("berrygw/gw1/availability/2026-11".to_string(), good.clone()),
            // Published on gw2's topic but saying gw1.
            ("berrygw/gw2/availability/2026-11".to_string(), good),
            ("berrygw/gw3/availability/2026-11".to_string(), b"{not json".to_vec()),
            ("berrygw/gw4/availability/2026-11/extra".to_string(), b"{}".to_vec()),
        ];
        let r = build("berrygw", "2026-11", (2026, 11), &tz, None, messages);
        assert_eq!(r.gateways.iter().map(|g| g.gateway_id.as_str()).collect::<Vec<_>>(), vec!["gw1"]);
        assert_eq!(r.notes.len(), 3, "{:?}", r.notes);
        assert!(r.notes.iter().any(|w| w.contains("says gateway gw1")));
        assert!(r.notes.iter().any(|w| w.contains("not a month record")));
        assert!(r.notes.iter().any(|w| w.contains("counts its days in Europe/Paris")));
    }

    #[test]
    fn the_page_escapes_what_gateways_wrote() {
        let tz = TimeZone::utc();
        let mut i = Incident {
            id: 1,
            service: "field:<script>".into(),
            cause: "not_answering".into(),
            start_ms: 1_793_600_000_000,
            end_ms: Some(1_793_600_600_000),
            ended: Some("recovered".into()),
            estimated: false,
            detail: String::new(),
        };
        i.cause = "<b>".into();
        let messages = vec![(
            "berrygw/gw1/availability/2026-11".to_string(),
            serde_json::to_vec(&record("gw1", vec![i])).unwrap(),
        )];
        let r = build("berrygw", "2026-11", (2026, 11), &tz, Some(240), messages);
        let page = html(&r, &tz);
        assert!(!page.contains("<script>") && page.contains("&lt;script&gt;"), "escaped");
        assert!(page.contains("<svg"), "a timeline");
        assert!(csv(&r).lines().any(|l| l.starts_with("2026-11,fleet,overall,")), "{}", csv(&r));
    }
}
