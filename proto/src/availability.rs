//! The availability ledger's records and the contract's figures (issue 15).
//!
//! A gateway records every outage of each of its services as an [`Incident`] and every
//! declared planned maintenance as a [`Maintenance`] (`gateway/src/ledger/`). It sends each
//! closed incident upstream, a summary of each local day, and keeps a [`MonthRecord`] of the
//! month retained on the broker. The centre (`berryctl availability`) joins the month records
//! of every gateway and computes the figures again from the incidents with the same
//! functions as the gateway: the contractor and the operator read the same numbers, and
//! anyone can check them from the records.
//!
//! The figures of a service over a period (a local day or month):
//! - **observed**: the part of the period after the ledger started and before now, less
//!   planned maintenance. For the radio, the sinks and field devices, time while the
//!   gateway itself was down is not observed either (nothing could watch them); the
//!   gateway's own downtime counts in `gateway` and in `overall`.
//! - **down**: the observed time inside the service's incidents. `availability` is
//!   `(observed - down) / observed`.
//! - **incidents**: the incidents that started in the period (outside maintenance); their
//!   mean and longest time to restore over those that ended, and how many lasted longer
//!   than the contract's guaranteed time to restore (GTR), open ones included once over.
//! - **overall**: a gateway is up when the gateway, its radio and every network server sink
//!   are up: its outages are the union of theirs. Field devices are equipment on their own
//!   and are not in it.

use std::collections::BTreeMap;

use berrygw_core::tz::LocalTime;
/// The zone of the contract's days and months (the TZif reader of `berrygw-core`).
pub use berrygw_core::tz::TimeZone;
use chrono::{Datelike, NaiveDate};
use serde::{Deserialize, Serialize};

/// The daemon itself: stopped, crashed, the machine rebooted or lost power.
pub const GATEWAY: &str = "gateway";
/// The radio: concentrator down or silent, packet forwarder silent.
pub const RADIO: &str = "radio";
/// The union of `gateway`, `radio` and the network server sinks (see the module).
pub const OVERALL: &str = "overall";

/// One outage of one service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incident {
    /// Per gateway, in the order the incidents were opened.
    pub id: u64,
    /// `gateway`, `radio`, `sink:<name>` or `field:<device>`.
    pub service: String,
    /// Why the service went down: see README "Availability" for the list.
    pub cause: String,
    /// Unix milliseconds.
    pub start_ms: i64,
    /// Unix milliseconds; none while the incident is open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_ms: Option<i64>,
    /// How it ended: `recovered`, `restarted` (the daemon started again), `stopped` (the daemon
    /// stopped while it was open), `power_cut`, `crash`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<String>,
    /// A bound is estimated: the last heartbeat the ledger recorded before a power cut or a
    /// crash, not an observed instant.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub estimated: bool,
    /// What the gateway saw, for a person (an error message, a count).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

impl Incident {
    /// Its duration up to `now_ms` if still open.
    pub fn duration_ms(&self, now_ms: i64) -> i64 {
        self.end_ms.unwrap_or(now_ms).saturating_sub(self.start_ms).max(0)
    }
}

/// A planned maintenance declared on the gateway (`berrygw maintenance start|stop`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Maintenance {
    pub id: u64,
    pub start_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_ms: Option<i64>,
    pub reason: String,
}

/// A half-open span of Unix milliseconds, `[start_ms, end_ms)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    pub start_ms: i64,
    pub end_ms: i64,
}

impl Span {
    pub fn len(&self) -> i64 {
        self.end_ms.saturating_sub(self.start_ms).max(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn clip(&self, to: Span) -> Span {
        Span { start_ms: self.start_ms.max(to.start_ms), end_ms: self.end_ms.min(to.end_ms).max(to.start_ms) }
    }
}

/// The contract's figures of one service over one period.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    pub service: String,
    pub period: Span,
    pub observed_ms: i64,
    pub down_ms: i64,
    /// `(observed - down) / observed`; none when nothing was observed.
    pub availability: Option<f64>,
    pub incidents: u32,
    /// Of `incidents`, those still open.
    pub open: u32,
    pub mean_restore_ms: Option<i64>,
    pub longest_ms: Option<i64>,
    /// Of `incidents`, those longer than the GTR (open ones counted once past it).
    pub over_gtr: u32,
}

/// What a gateway says of one local month, retained on `…/availability/<YYYY-MM>`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MonthRecord {
    pub gateway_id: String,
    /// `YYYY-MM`.
    pub month: String,
    /// The zone of its days and months, e.g. `Europe/Paris`.
    pub timezone: String,
    /// When this record was made; the month is final once this is past its end.
    pub made_ms: i64,
    /// Since when the ledger has watched (its first start).
    pub observed_since_ms: i64,
    /// The GTR the gateway's own figures used.
    pub gtr_ms: i64,
    /// Every incident that overlaps the month (the latest ones, past
    /// `incidents_omitted`), and every maintenance window.
    pub incidents: Vec<Incident>,
    /// The older incidents of the month left out to bound the record; when there are any,
    /// the centre uses the gateway's `figures` for the month, not its own.
    #[serde(default)]
    pub incidents_omitted: u64,
    pub maintenance: Vec<Maintenance>,
    /// The gateway's figures for the month, per service and `overall`.
    pub figures: Vec<Figures>,
}

/// A closed incident or a day's summary as published on `…/event/incident` and
/// `…/event/availability`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IncidentEvent {
    pub gateway_id: String,
    #[serde(flatten)]
    pub incident: Incident,
}

/// One local day's figures, published once the day is over (`…/event/availability`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DayEvent {
    pub gateway_id: String,
    /// `YYYY-MM-DD`, local.
    pub day: String,
    pub timezone: String,
    pub figures: Vec<Figures>,
}

/// Whether a service belongs to the gateway's `overall` figure.
pub fn in_overall(service: &str) -> bool {
    service == GATEWAY || service == RADIO || service.starts_with("sink:") && service != "sink:app"
}

/// `YYYY-MM` → (year, month).
pub fn parse_month(month: &str) -> Result<(i32, u32), String> {
    let bad = || format!("`{month}` is not a month: write it YYYY-MM, e.g. 2026-11");
    let (y, m) = month.split_once('-').ok_or_else(bad)?;
    if y.len() != 4 || m.len() != 2 {
        return Err(bad());
    }
    let (y, m) = (y.parse::<i32>().map_err(|_| bad())?, m.parse::<u32>().map_err(|_| bad())?);
    NaiveDate::from_ymd_opt(y, m, 1).ok_or_else(bad)?;
    Ok((y, m))
}

/// When the local day `date` starts in `tz`, Unix milliseconds.
fn local_midnight(tz: &TimeZone, date: NaiveDate) -> i64 {
    let midnight = date.and_hms_opt(0, 0, 0).unwrap_or_default();
    let s = match tz.resolve(midnight) {
        LocalTime::Single(s) | LocalTime::Twice(s, _) | LocalTime::Skipped(s) => s,
    };
    s * 1000
}

/// The local month `(year, month)` in `tz`.
pub fn month_span(tz: &TimeZone, year: i32, month: u32) -> Span {
    let first = NaiveDate::from_ymd_opt(year, month, 1).unwrap_or_default();
    let next = if month == 12 {
        NaiveDate::from_ymd_opt(year + 1, 1, 1)
    } else {
        NaiveDate::from_ymd_opt(year, month + 1, 1)
    }
    .unwrap_or_default();
    Span { start_ms: local_midnight(tz, first), end_ms: local_midnight(tz, next) }
}

/// The local day `date` in `tz` (23 or 25 hours when the clocks change).
pub fn day_span(tz: &TimeZone, date: NaiveDate) -> Span {
    let next = date.succ_opt().unwrap_or(date);
    Span { start_ms: local_midnight(tz, date), end_ms: local_midnight(tz, next) }
}

/// The local date at `ms` in `tz`.
pub fn local_date(tz: &TimeZone, ms: i64) -> Option<NaiveDate> {
    tz.to_local(ms.div_euclid(1000)).map(|t| t.date())
}

/// `YYYY-MM` of the local month holding `ms`.
pub fn month_of(tz: &TimeZone, ms: i64) -> Option<String> {
    local_date(tz, ms).map(|d| format!("{:04}-{:02}", d.year(), d.month()))
}

/// Sorted, merged, non-empty spans.
fn union(mut spans: Vec<Span>) -> Vec<Span> {
    spans.retain(|s| !s.is_empty());
    spans.sort_by_key(|s| s.start_ms);
    let mut out: Vec<Span> = Vec::with_capacity(spans.len());
    for s in spans {
        match out.last_mut() {
            Some(last) if s.start_ms <= last.end_ms => last.end_ms = last.end_ms.max(s.end_ms),
            _ => out.push(s),
        }
    }
    out
}

/// Total length of `spans` (merged) inside `within`, less what `minus` (merged) covers.
fn covered(spans: &[Span], within: Span, minus: &[Span]) -> i64 {
    let mut total: i64 = 0;
    for s in spans {
        let c = s.clip(within);
        if c.is_empty() {
            continue;
        }
        let taken = minus.iter().fold(0i64, |t, m| t.saturating_add(m.clip(c).len()));
        total = total.saturating_add(c.len().saturating_sub(taken).max(0));
    }
    total
}

/// What the figures of every service are computed from.
pub struct Ledger<'a> {
    pub incidents: &'a [Incident],
    pub maintenance: &'a [Maintenance],
    /// The ledger's first start.
    pub observed_since_ms: i64,
    pub now_ms: i64,
    pub gtr_ms: i64,
}

impl Ledger<'_> {
    /// The services that appear in the incidents, sorted, with `gateway` and `radio` always.
    pub fn services(&self) -> Vec<String> {
        let mut s: Vec<String> = vec![GATEWAY.into(), RADIO.into()];
        s.extend(self.incidents.iter().map(|i| i.service.clone()));
        s.sort();
        s.dedup();
        s
    }

    fn maintenance_spans(&self) -> Vec<Span> {
        union(
            self.maintenance
                .iter()
                .map(|m| Span { start_ms: m.start_ms, end_ms: m.end_ms.unwrap_or(self.now_ms) })
                .collect(),
        )
    }

    fn outage(&self, i: &Incident) -> Span {
        Span { start_ms: i.start_ms, end_ms: i.end_ms.unwrap_or(self.now_ms).max(i.start_ms) }
    }

    /// The figures of `service` (or [`OVERALL`]) over `period`.
    pub fn figures(&self, service: &str, period: Span) -> Figures {
        let maintenance = self.maintenance_spans();
        let watched = Span { start_ms: self.observed_since_ms, end_ms: self.now_ms }.clip(period);
        let watched = Span { end_ms: watched.end_ms.min(period.end_ms), ..watched };
        let gateway_down: Vec<Span> =
            union(self.incidents.iter().filter(|i| i.service == GATEWAY).map(|i| self.outage(i)).collect());
        // Time that is not observed: maintenance, and for what runs on the gateway, the
        // gateway's own outages.
        let unobserved = if service == GATEWAY || service == OVERALL {
            maintenance.clone()
        } else {
            union(maintenance.iter().chain(&gateway_down).copied().collect())
        };
        let observed_ms = covered(&[watched], watched, &unobserved);

        let mine: Vec<&Incident> = self
            .incidents
            .iter()
            .filter(|i| if service == OVERALL { in_overall(&i.service) } else { i.service == service })
            .collect();
        let outages = union(mine.iter().map(|i| self.outage(i)).collect());
        let down_ms = covered(&outages, watched, &unobserved);

        // Counted: the outages (merged, for `overall`) that start in the period, not in
        // maintenance.
        let counted: Vec<(Span, bool)> = if service == OVERALL {
            let open_end = self.now_ms;
            outages
                .iter()
                .map(|s| (*s, s.end_ms >= open_end && mine.iter().any(|i| i.end_ms.is_none())))
                .collect()
        } else {
            mine.iter().map(|i| (self.outage(i), i.end_ms.is_none())).collect()
        };
        let counted: Vec<(Span, bool)> = counted
            .into_iter()
            .filter(|(s, _)| {
                s.start_ms >= period.start_ms
                    && s.start_ms < period.end_ms
                    && !maintenance.iter().any(|m| m.start_ms <= s.start_ms && s.start_ms < m.end_ms)
            })
            .collect();
        let ended: Vec<i64> = counted.iter().filter(|(_, open)| !open).map(|(s, _)| s.len()).collect();
        let mean_restore_ms = (!ended.is_empty())
            .then(|| (ended.iter().map(|&e| i128::from(e)).sum::<i128>() / ended.len() as i128) as i64);
        Figures {
            service: service.to_string(),
            period,
            observed_ms,
            down_ms,
            availability: (observed_ms > 0).then(|| (observed_ms - down_ms) as f64 / observed_ms as f64),
            incidents: counted.len() as u32,
            open: counted.iter().filter(|(_, open)| *open).count() as u32,
            mean_restore_ms,
            longest_ms: counted.iter().map(|(s, _)| s.len()).max(),
            over_gtr: counted.iter().filter(|(s, _)| s.len() > self.gtr_ms).count() as u32,
        }
    }

    /// The figures of every service and `overall` over `period`.
    pub fn all_figures(&self, period: Span) -> Vec<Figures> {
        let mut out = vec![self.figures(OVERALL, period)];
        out.extend(self.services().iter().map(|s| self.figures(s, period)));
        out
    }

    /// The incidents and maintenance that overlap `period`.
    pub fn overlapping(&self, period: Span) -> (Vec<Incident>, Vec<Maintenance>) {
        let overlaps =
            |start: i64, end: Option<i64>| start < period.end_ms && end.unwrap_or(i64::MAX) > period.start_ms;
        (
            self.incidents.iter().filter(|i| overlaps(i.start_ms, i.end_ms)).cloned().collect(),
            self.maintenance.iter().filter(|m| overlaps(m.start_ms, m.end_ms)).cloned().collect(),
        )
    }
}

/// A length as a person reads it: `42 s`, `12 min`, `3 h 05`, `2 d 4 h`.
pub fn length_text(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..=119 => format!("{s} s"),
        120..=5_999 => format!("{} min", s / 60),
        6_000..=172_799 => format!("{} h {:02}", s / 3600, (s % 3600) / 60),
        _ => format!("{} d {} h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// The columns [`Figures::csv`] writes, from `service`.
pub const CSV_COLUMNS: &str =
    "service,observed_s,down_s,availability,incidents,open,mean_restore_s,longest_s,over_gtr";

impl Figures {
    /// Availability as a person reads it: `99.979 %`, `–` when nothing was observed.
    pub fn percent(&self) -> String {
        self.availability.map_or("–".to_string(), |a| format!("{:.3} %", a * 100.0))
    }

    /// The figures as a person reads them, a table row: service, availability, down time,
    /// incidents, open, mean and longest time to restore, over the GTR.
    pub fn cells(&self) -> [String; 8] {
        [
            self.service.clone(),
            self.percent(),
            length_text(self.down_ms),
            self.incidents.to_string(),
            self.open.to_string(),
            self.mean_restore_ms.map_or("–".into(), length_text),
            self.longest_ms.map_or("–".into(), length_text),
            self.over_gtr.to_string(),
        ]
    }

    /// The figures as CSV fields, in the order of [`CSV_COLUMNS`].
    pub fn csv(&self) -> String {
        format!(
            "{},{},{},{},{},{},{},{},{}",
            self.service,
            self.observed_ms / 1000,
            self.down_ms / 1000,
            self.availability.map_or(String::new(), |a| format!("{a:.6}")),
            self.incidents,
            self.open,
            self.mean_restore_ms.map_or(String::new(), |m| (m / 1000).to_string()),
            self.longest_ms.map_or(String::new(), |m| (m / 1000).to_string()),
            self.over_gtr
        )
    }
}

/// The fleet's figures for a month from every gateway's month record, each recomputed from its
/// incidents: observed and down time summed (so availability is weighted by observed time),
/// incidents counted, restore times averaged over every ended incident. Field devices are
/// one `field` line.
pub fn fleet_figures(
    records: &[MonthRecord],
    gtr_ms: i64,
    tz: &TimeZone,
    year: i32,
    month: u32,
) -> Vec<Figures> {
    let period = month_span(tz, year, month);
    // Per line: the sums, and the total restore time of the ended incidents.
    let mut lines: BTreeMap<String, (Figures, i64)> = BTreeMap::new();
    for r in records {
        let ledger = Ledger {
            incidents: &r.incidents,
            maintenance: &r.maintenance,
            observed_since_ms: r.observed_since_ms,
            now_ms: r.made_ms.min(period.end_ms),
            gtr_ms,
        };
        let figures = if r.incidents_omitted > 0 { r.figures.clone() } else { ledger.all_figures(period) };
        for f in figures {
            let key = if f.service.starts_with("field:") { "field".to_string() } else { f.service.clone() };
            let (sum, restored) = lines.entry(key.clone()).or_insert_with(|| {
                let zero = Figures {
                    service: key,
                    period,
                    observed_ms: 0,
                    down_ms: 0,
                    availability: None,
                    incidents: 0,
                    open: 0,
                    mean_restore_ms: None,
                    longest_ms: None,
                    over_gtr: 0,
                };
                (zero, 0)
            });
            *restored = restored.saturating_add(
                f.mean_restore_ms.unwrap_or(0).saturating_mul(i64::from(f.incidents.saturating_sub(f.open))),
            );
            sum.observed_ms = sum.observed_ms.saturating_add(f.observed_ms);
            sum.down_ms = sum.down_ms.saturating_add(f.down_ms);
            sum.incidents = sum.incidents.saturating_add(f.incidents);
            sum.open = sum.open.saturating_add(f.open);
            sum.over_gtr = sum.over_gtr.saturating_add(f.over_gtr);
            sum.longest_ms = sum.longest_ms.max(f.longest_ms);
        }
    }
    lines
        .into_values()
        .map(|(mut f, restored)| {
            let ended = i64::from(f.incidents.saturating_sub(f.open));
            f.mean_restore_ms = (ended > 0).then(|| restored / ended);
            f.availability =
                (f.observed_ms > 0).then(|| (f.observed_ms - f.down_ms) as f64 / f.observed_ms as f64);
            f
        })
        .collect()
}

#[cfg(test)]
mod tests;
