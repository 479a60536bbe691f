//! Civil time for cron rules and the availability ledger's days and months: UTC, a fixed
//! offset, or a zone such as `Europe/Paris` read once from the system's TZif file
//! (`/usr/share/zoneinfo`, Debian package `tzdata`).
//!
//! Only what they need: the UTC offset in force at an instant, and where a local wall-clock
//! time falls (once, twice when the clocks go back, or in the gap when they go forward).
//! Times past the file's last transition follow its POSIX TZ footer (`CET-1CEST,M3.5.0,M10.5.0/3`),
//! so "slim" TZif files work as well as "fat" ones.

use std::path::Path;

use chrono::{Datelike, NaiveDate, NaiveDateTime};

/// Where zone names are looked up.
pub const ZONEINFO: &str = "/usr/share/zoneinfo";

/// A time zone: its name as written and how to get its offset.
#[derive(Clone, Debug, PartialEq)]
pub struct TimeZone {
    name: String,
    rules: ZoneRules,
}

#[derive(Clone, Debug, PartialEq)]
enum ZoneRules {
    /// Seconds east of UTC, always.
    Fixed(i32),
    Table(Table),
}

/// A TZif file, reduced to offsets.
#[derive(Clone, Debug, PartialEq)]
struct Table {
    /// Transition instants (Unix seconds), ascending.
    at: Vec<i64>,
    /// The offset in force from `at[i]` on.
    offset_after: Vec<i32>,
    /// The offset before the first transition (TZif local time type 0).
    initial: i32,
    /// The footer rule, for instants after the last transition.
    footer: Option<PosixTz>,
}

/// A POSIX TZ string such as `CET-1CEST,M3.5.0,M10.5.0/3`.
#[derive(Clone, Debug, PartialEq)]
struct PosixTz {
    /// Standard time, seconds east of UTC.
    std: i32,
    dst: Option<DstRule>,
}

#[derive(Clone, Debug, PartialEq)]
struct DstRule {
    /// Daylight saving time, seconds east of UTC.
    offset: i32,
    /// When DST starts, in standard local time.
    start: (RuleDay, i32),
    /// When DST ends, in daylight local time.
    end: (RuleDay, i32),
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum RuleDay {
    /// `Jn`: day 1..=365, February 29 never counted.
    Julian1(u16),
    /// `n`: day 0..=365, February 29 counted.
    Julian0(u16),
    /// `Mm.w.d`: day `d` (0 = Sunday) of week `w` (5 = last) of month `m`.
    MonthWeekDay(u32, u32, u32),
}

/// Where a local wall-clock time falls on the UTC line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalTime {
    /// It happens once, at this instant (Unix seconds).
    Single(i64),
    /// The clocks went back: it happens twice, first at `.0`, then at `.1`.
    Twice(i64, i64),
    /// The clocks went forward over it: it never happens; they jumped at this instant.
    Skipped(i64),
}

impl TimeZone {
    /// Coordinated Universal Time.
    pub fn utc() -> TimeZone {
        TimeZone { name: "UTC".into(), rules: ZoneRules::Fixed(0) }
    }

    /// Read a zone as written in rules.toml: `"UTC"`, `"+01:00"`/`"-03:30"`, or a zone name
    /// found under [`ZONEINFO`].
    pub fn from_config(spec: &str) -> Result<TimeZone, String> {
        TimeZone::from_config_in(spec, Path::new(ZONEINFO))
    }

    /// Whether `spec` is written as a zone can be (`UTC`, a fixed offset, a zone name), without
    /// reading any file: a missing zone file is a matter of the machine (tzdata), not of the
    /// configuration.
    pub fn check_spec(spec: &str) -> Result<(), String> {
        if spec == "UTC" || spec == "Z" {
            return Ok(());
        }
        if spec.starts_with(['+', '-']) {
            return parse_fixed_offset(spec)
                .map(|_| ())
                .ok_or_else(|| format!("`{spec}`: a fixed offset is written like \"+01:00\" or \"-03:30\""));
        }
        let plausible = !spec.is_empty()
            && spec.split('/').all(|part| {
                !part.is_empty()
                    && !part.starts_with('.')
                    && part.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '+'))
            });
        if !plausible {
            return Err(format!(
                "`{spec}` is not a time zone: use \"UTC\", a fixed offset like \"+01:00\", \
                 or a zone name like \"Europe/Paris\""
            ));
        }
        Ok(())
    }

    /// As [`TimeZone::from_config`], with zone files looked up in `dir`.
    pub fn from_config_in(spec: &str, dir: &Path) -> Result<TimeZone, String> {
        TimeZone::check_spec(spec)?;
        if spec == "UTC" || spec == "Z" {
            return Ok(TimeZone::utc());
        }
        if let Some(offset) = spec.starts_with(['+', '-']).then(|| parse_fixed_offset(spec)).flatten() {
            return Ok(TimeZone { name: spec.into(), rules: ZoneRules::Fixed(offset) });
        }
        let path = dir.join(spec);
        let bytes = std::fs::read(&path).map_err(|e| {
            format!(
                "time zone `{spec}`: cannot read {} ({e}); is the tzdata package installed?",
                path.display()
            )
        })?;
        TimeZone::from_tzif(spec, &bytes).map_err(|e| format!("time zone `{spec}`: {}: {e}", path.display()))
    }

    /// Parse the contents of a TZif file (RFC 8536, versions 1 to 4).
    pub fn from_tzif(name: &str, bytes: &[u8]) -> Result<TimeZone, String> {
        let table = parse_tzif(bytes)?;
        Ok(TimeZone { name: name.into(), rules: ZoneRules::Table(table) })
    }

    /// The zone's name as written.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Seconds east of UTC in force at `utc` (Unix seconds).
    pub fn offset_at(&self, utc: i64) -> i32 {
        match &self.rules {
            ZoneRules::Fixed(o) => *o,
            ZoneRules::Table(t) => t.offset_at(utc),
        }
    }

    /// The local wall-clock time at `utc`.
    pub fn to_local(&self, utc: i64) -> Option<NaiveDateTime> {
        let local = utc.checked_add(i64::from(self.offset_at(utc)))?;
        chrono::DateTime::from_timestamp(local, 0).map(|d| d.naive_utc())
    }

    /// When the local wall-clock time `local` happens.
    pub fn resolve(&self, local: NaiveDateTime) -> LocalTime {
        let l = local.and_utc().timestamp();
        // Real zones change offset at most once within two days, so the offsets a day
        // before and a day after are the only candidates.
        let before = self.offset_at(l - 86_400);
        let after = self.offset_at(l + 86_400);
        let fits = |o: i32| {
            let u = l - i64::from(o);
            (self.offset_at(u) == o).then_some(u)
        };
        match (fits(before), fits(after)) {
            (Some(a), Some(b)) if a != b => LocalTime::Twice(a.min(b), a.max(b)),
            (Some(u), _) | (_, Some(u)) => LocalTime::Single(u),
            (None, None) => {
                // In the gap: the transition lies between the two readings of `l`.
                let (mut lo, mut hi) = {
                    let (a, b) = (l - i64::from(before), l - i64::from(after));
                    (a.min(b), a.max(b))
                };
                // Invariant: offset_at(lo) == before, offset_at(hi) != before.
                while hi - lo > 1 {
                    let mid = lo + (hi - lo) / 2;
                    if self.offset_at(mid) == before {
                        lo = mid;
                    } else {
                        hi = mid;
                    }
                }
                LocalTime::Skipped(hi)
            }
        }
    }
}

/// `+01:00`, `-0330`, `+1` → seconds east of UTC.
fn parse_fixed_offset(spec: &str) -> Option<i32> {
    let (sign, rest) = match spec.as_bytes().first()? {
        b'+' => (1, &spec[1..]),
        b'-' => (-1, &spec[1..]),
        _ => return None,
    };
    let (h, m) = match rest.split_once(':') {
        Some((h, m)) => (h, m),
        None if rest.len() == 4 => rest.split_at(2),
        None => (rest, "0"),
    };
    if h.is_empty() || h.len() > 2 || m.is_empty() || m.len() > 2 {
        return None;
    }
    let h: i32 = h.parse().ok()?;
    let m: i32 = m.parse().ok()?;
    (h <= 14 && m < 60).then_some(sign * (h * 3600 + m * 60))
}

impl Table {
    fn offset_at(&self, utc: i64) -> i32 {
        let i = self.at.partition_point(|&t| t <= utc);
        if i == 0 {
            return self.initial;
        }
        match &self.footer {
            Some(rule) if i == self.at.len() => rule.offset_at(utc),
            _ => self.offset_after[i - 1],
        }
    }
}

/// A cursor over the TZif bytes that never reads past the end.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or("truncated TZif file")?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

struct Counts {
    isut: usize,
    isstd: usize,
    leap: usize,
    time: usize,
    types: usize,
    chars: usize,
}

fn header(r: &mut Reader<'_>) -> Result<(u8, Counts), String> {
    if r.take(4)? != b"TZif" {
        return Err("not a TZif file".into());
    }
    let version = r.take(1)?[0];
    r.take(15)?;
    let mut n = [0usize; 6];
    for v in &mut n {
        *v = usize::try_from(r.u32()?).map_err(|_| "count too large")?;
    }
    let counts = Counts { isut: n[0], isstd: n[1], leap: n[2], time: n[3], types: n[4], chars: n[5] };
    // Bounds far above any real zone, so that sizes cannot overflow on 32-bit targets.
    if counts.types == 0
        || counts.types > 256
        || counts.time > 100_000
        || counts.chars > 65_536
        || counts.leap > 10_000
        || counts.isstd > counts.types
        || counts.isut > counts.types
    {
        return Err("implausible TZif counts".into());
    }
    Ok((version, counts))
}

fn parse_tzif(bytes: &[u8]) -> Result<Table, String> {
    let mut r = Reader { bytes, pos: 0 };
    let (version, v1) = header(&mut r)?;
    let (time_size, c) = if version >= b'2' {
        // Skip the 32-bit block; the 64-bit one after it is complete.
        let v1_len = v1.time * 5 + v1.types * 6 + v1.chars + v1.leap * 8 + v1.isstd + v1.isut;
        r.take(v1_len)?;
        let (_, c) = header(&mut r)?;
        (8, c)
    } else {
        (4, v1)
    };
    let mut at = Vec::with_capacity(c.time);
    for _ in 0..c.time {
        let b = r.take(time_size)?;
        at.push(if time_size == 8 {
            i64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
        } else {
            i64::from(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        });
    }
    if at.windows(2).any(|w| w[0] >= w[1]) {
        return Err("transitions out of order".into());
    }
    let indices = r.take(c.time)?.to_vec();
    let mut offsets = Vec::with_capacity(c.types);
    for _ in 0..c.types {
        let b = r.take(6)?;
        let off = i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        if !(-25 * 3600..=26 * 3600).contains(&off) {
            return Err(format!("implausible UTC offset {off} s"));
        }
        offsets.push(off);
    }
    let offset_after = indices
        .iter()
        .map(|&i| offsets.get(usize::from(i)).copied().ok_or("local time type out of range"))
        .collect::<Result<Vec<i32>, _>>()?;
    r.take(c.chars + c.leap * (time_size + 4) + c.isstd + c.isut)?;
    let footer = if version >= b'2' {
        let rest = &bytes[r.pos..];
        let text = rest
            .strip_prefix(b"\n")
            .and_then(|t| t.iter().position(|&b| b == b'\n').map(|end| &t[..end]))
            .ok_or("missing TZ string footer")?;
        let text = std::str::from_utf8(text).map_err(|_| "TZ string footer is not text")?;
        if text.is_empty() {
            None
        } else {
            Some(PosixTz::parse(text).ok_or_else(|| format!("unsupported TZ string footer `{text}`"))?)
        }
    } else {
        None
    };
    Ok(Table { at, offset_after, initial: offsets[0], footer })
}

impl PosixTz {
    fn parse(text: &str) -> Option<PosixTz> {
        let mut s = text;
        designation(&mut s)?;
        let std = -posix_seconds(&mut s, 24)?;
        if s.is_empty() {
            return Some(PosixTz { std, dst: None });
        }
        designation(&mut s)?;
        let offset = if s.starts_with(',') { std + 3600 } else { -posix_seconds(&mut s, 24)? };
        s = s.strip_prefix(',')?;
        let start = rule_time(&mut s)?;
        s = s.strip_prefix(',')?;
        let end = rule_time(&mut s)?;
        s.is_empty().then_some(PosixTz { std, dst: Some(DstRule { offset, start, end }) })
    }

    fn offset_at(&self, utc: i64) -> i32 {
        let Some(dst) = &self.dst else { return self.std };
        let Some(year) =
            chrono::DateTime::from_timestamp(utc + i64::from(self.std), 0).map(|d| d.naive_utc().year())
        else {
            return self.std;
        };
        let (Some(start), Some(end)) =
            (rule_instant(year, dst.start, self.std), rule_instant(year, dst.end, dst.offset))
        else {
            return self.std;
        };
        let in_dst = if start < end {
            start <= utc && utc < end
        } else {
            // Southern hemisphere: DST spans the new year.
            !(end <= utc && utc < start)
        };
        if in_dst {
            dst.offset
        } else {
            self.std
        }
    }
}

/// The UTC instant of a rule's change in `year`; `(day, time)` is local time at `offset`.
fn rule_instant(year: i32, (day, time): (RuleDay, i32), offset: i32) -> Option<i64> {
    let date = match day {
        RuleDay::Julian1(n) => {
            let mut date = NaiveDate::from_yo_opt(year, u32::from(n))?;
            if date.leap_year() && n >= 60 {
                date = date.succ_opt()?;
            }
            date
        }
        RuleDay::Julian0(n) => NaiveDate::from_yo_opt(year, u32::from(n) + 1)?,
        RuleDay::MonthWeekDay(m, w, d) => {
            let first = NaiveDate::from_ymd_opt(year, m, 1)?;
            let first_wd = first.weekday().num_days_from_sunday();
            let mut day = 1 + (d + 7 - first_wd) % 7 + (w - 1) * 7;
            let len = days_in_month(year, m)?;
            while day > len {
                day -= 7;
            }
            NaiveDate::from_ymd_opt(year, m, day)?
        }
    };
    let midnight = date.and_hms_opt(0, 0, 0)?.and_utc().timestamp();
    Some(midnight + i64::from(time) - i64::from(offset))
}

fn days_in_month(year: i32, month: u32) -> Option<u32> {
    let next = if month == 12 {
        NaiveDate::from_ymd_opt(year + 1, 1, 1)?
    } else {
        NaiveDate::from_ymd_opt(year, month + 1, 1)?
    };
    Some(next.pred_opt()?.day())
}

/// `CET` or `<+03>`.
fn designation(s: &mut &str) -> Option<()> {
    let len = if let Some(rest) = s.strip_prefix('<') {
        rest.find('>')? + 2
    } else {
        s.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(s.len())
    };
    if len < 3 {
        return None;
    }
    *s = &s[len..];
    Some(())
}

/// `[+-]hh[:mm[:ss]]` in seconds, hours up to `max_hours`.
fn posix_seconds(s: &mut &str, max_hours: i64) -> Option<i32> {
    let mut sign = 1;
    if let Some(rest) = s.strip_prefix('-') {
        sign = -1;
        *s = rest;
    } else if let Some(rest) = s.strip_prefix('+') {
        *s = rest;
    }
    let end = s.find(|c: char| !(c.is_ascii_digit() || c == ':')).unwrap_or(s.len());
    let (num, rest) = s.split_at(end);
    *s = rest;
    let mut parts = num.split(':');
    let h: i64 = parts.next()?.parse().ok()?;
    let m: i64 = parts.next().map_or(Some(0), |p| p.parse().ok())?;
    let sec: i64 = parts.next().map_or(Some(0), |p| p.parse().ok())?;
    if parts.next().is_some() || h > max_hours || m > 59 || sec > 59 {
        return None;
    }
    i32::try_from(sign * (h * 3600 + m * 60 + sec)).ok()
}

/// `M3.5.0/3`, `J60`, `59/-1`.
fn rule_time(s: &mut &str) -> Option<(RuleDay, i32)> {
    let end = s.find([',', '/']).unwrap_or(s.len());
    let (day, rest) = s.split_at(end);
    *s = rest;
    let day = if let Some(m) = day.strip_prefix('M') {
        let mut it = m.split('.').map(|p| p.parse::<u32>().ok());
        let (m, w, d) = (it.next()??, it.next()??, it.next()??);
        if it.next().is_some() || !(1..=12).contains(&m) || !(1..=5).contains(&w) || d > 6 {
            return None;
        }
        RuleDay::MonthWeekDay(m, w, d)
    } else if let Some(n) = day.strip_prefix('J') {
        let n: u16 = n.parse().ok()?;
        (1..=365).contains(&n).then_some(RuleDay::Julian1(n))?
    } else {
        let n: u16 = day.parse().ok()?;
        (n <= 365).then_some(RuleDay::Julian0(n))?
    };
    let time = match s.strip_prefix('/') {
        Some(rest) => {
            *s = rest;
            posix_seconds(s, 167)?
        }
        None => 2 * 3600,
    };
    Some((day, time))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(text).expect("test instant").timestamp()
    }

    fn local(text: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M").expect("test local time")
    }

    /// The system's Europe/Paris; tests that need it say so clearly when it is missing.
    fn paris() -> TimeZone {
        TimeZone::from_config("Europe/Paris")
            .unwrap_or_else(|e| panic!("these tests need /usr/share/zoneinfo/Europe/Paris (tzdata): {e}"))
    }

    #[test]
    fn paris_changes_offset_on_the_last_sundays_of_march_and_october() {
        let tz = paris();
        assert_eq!(tz.offset_at(at("2025-03-30T00:59:59Z")), 3600);
        assert_eq!(tz.offset_at(at("2025-03-30T01:00:00Z")), 7200);
        assert_eq!(tz.offset_at(at("2025-10-26T00:59:59Z")), 7200);
        assert_eq!(tz.offset_at(at("2025-10-26T01:00:00Z")), 3600);
        // Past the file's table (if any), the footer rule takes over.
        assert_eq!(tz.offset_at(at("2061-07-01T12:00:00Z")), 7200);
        assert_eq!(tz.offset_at(at("2061-12-01T12:00:00Z")), 3600);
    }

    #[test]
    fn footer_rule_agrees_with_the_transition_table() {
        let tz = paris();
        let rule = PosixTz::parse("CET-1CEST,M3.5.0,M10.5.0/3").expect("Paris rule");
        let mut t = at("1997-01-01T00:00:00Z");
        while t < at("2037-01-01T00:00:00Z") {
            assert_eq!(tz.offset_at(t), rule.offset_at(t), "at {t}");
            t += 1800;
        }
    }

    #[test]
    fn local_times_in_the_gap_and_the_overlap_are_told_apart() {
        let tz = paris();
        assert_eq!(tz.resolve(local("2025-03-30 01:30")), LocalTime::Single(at("2025-03-30T00:30:00Z")));
        assert_eq!(tz.resolve(local("2025-03-30 02:30")), LocalTime::Skipped(at("2025-03-30T01:00:00Z")));
        assert_eq!(tz.resolve(local("2025-03-30 03:00")), LocalTime::Single(at("2025-03-30T01:00:00Z")));
        assert_eq!(
            tz.resolve(local("2025-10-26 02:30")),
            LocalTime::Twice(at("2025-10-26T00:30:00Z"), at("2025-10-26T01:30:00Z"))
        );
        assert_eq!(tz.resolve(local("2025-10-26 03:00")), LocalTime::Single(at("2025-10-26T02:00:00Z")));
    }

    #[test]
    fn southern_hemisphere_rules_span_the_new_year() {
        // Australia/Sydney's footer: DST from the first Sunday of October to the first of April.
        let rule = PosixTz::parse("AEST-10AEDT,M10.1.0,M4.1.0/3").expect("Sydney rule");
        assert_eq!(rule.offset_at(at("2025-01-15T00:00:00Z")), 11 * 3600);
        assert_eq!(rule.offset_at(at("2025-06-15T00:00:00Z")), 10 * 3600);
        let quoted = PosixTz::parse("<-03>3").expect("quoted name");
        assert_eq!(quoted.offset_at(0), -3 * 3600);
    }

    #[test]
    fn config_spellings_are_read_or_refused() {
        assert_eq!(TimeZone::from_config("UTC").map(|t| t.offset_at(0)), Ok(0));
        assert_eq!(TimeZone::from_config("+01:00").map(|t| t.offset_at(0)), Ok(3600));
        assert_eq!(TimeZone::from_config("-03:30").map(|t| t.offset_at(0)), Ok(-12_600));
        for bad in ["", "../etc/passwd", "/etc/localtime", "+25:00", "Europe/Atlantis", "Europe//Paris"] {
            assert!(TimeZone::from_config(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn garbage_tzif_is_an_error_not_a_panic() {
        let good = std::fs::read(Path::new(ZONEINFO).join("Europe/Paris")).unwrap_or_default();
        let mut inputs: Vec<Vec<u8>> = vec![b"TZif2".to_vec(), b"not a zone".to_vec(), Vec::new()];
        for cut in (0..good.len()).step_by(97) {
            inputs.push(good[..cut].to_vec());
        }
        for bytes in inputs {
            assert!(TimeZone::from_tzif("x", &bytes).is_err());
        }
    }
}
