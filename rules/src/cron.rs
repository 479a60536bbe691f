//! Cron expressions (`30 23 * * 1-5`): parsing, and the next matching instant in a time zone.
//!
//! Five fields: minute (0–59), hour (0–23), day of month (1–31), month (1–12), day of week
//! (0–7, 0 and 7 are Sunday). Each is `*` or a comma list of `n`, `a-b`, `*/s`, `a-b/s`, `a/s`.
//! As in Vixie cron, when both day fields are restricted a day matches if *either* does.
//!
//! Local time is the rule file's time zone. When the clocks go forward, a time in the skipped
//! hour fires at the instant of the jump (a daily 02:30 job still runs that day, at 03:00).
//! When they go back, a time in the repeated hour fires once, in its first pass, unless the
//! hour field is `*`, in which case it fires in both passes (so `*/15 * * * *` keeps every
//! quarter hour).

use chrono::{DateTime, Datelike, Days, NaiveDate, Utc};

use super::tz::{LocalTime, TimeZone};

/// How far ahead `next_after` looks: 8 years covers every February 29.
const HORIZON_DAYS: u64 = 366 * 8 + 2;

/// A parsed cron expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cron {
    text: String,
    minutes: u64,
    hours: u32,
    days: u32,
    months: u16,
    weekdays: u8,
    /// The day-of-month field is unrestricted (starts with `*`).
    any_day: bool,
    /// The day-of-week field is unrestricted (starts with `*`).
    any_weekday: bool,
    /// The hour field is exactly `*`: fire in both passes of a repeated hour.
    every_hour: bool,
}

impl Cron {
    /// Parse the five fields; the message says which field is wrong and why.
    pub fn parse(text: &str) -> Result<Cron, String> {
        let fields: Vec<&str> = text.split_whitespace().collect();
        let [minute, hour, day, month, weekday] = fields[..] else {
            return Err(format!(
                "`{text}` has {} fields; cron takes 5: minute hour day-of-month month day-of-week",
                fields.len()
            ));
        };
        let mut weekdays = field(weekday, "day-of-week", 0, 7)?;
        if weekdays & (1 << 7) != 0 {
            weekdays |= 1; // 7 is Sunday too
        }
        let cron = Cron {
            text: fields.join(" "),
            minutes: field(minute, "minute", 0, 59)?,
            hours: narrow(field(hour, "hour", 0, 23)?),
            days: narrow(field(day, "day-of-month", 1, 31)?),
            months: narrow(field(month, "month", 1, 12)?),
            weekdays: narrow(weekdays & 0x7f),
            any_day: day.starts_with('*'),
            any_weekday: weekday.starts_with('*'),
            every_hour: hour == "*",
        };
        let probe = DateTime::from_timestamp(1_704_067_200, 0).unwrap_or_default(); // 2024-01-01
        if cron.next_after(probe, &TimeZone::utc()).is_none() {
            return Err(format!("`{text}` never matches a real date"));
        }
        Ok(cron)
    }

    /// The expression as written (fields separated by single spaces).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    fn matches_day(&self, date: NaiveDate) -> bool {
        if self.months & (1 << date.month()) == 0 {
            return false;
        }
        let day = self.days & (1 << date.day()) != 0;
        let weekday = self.weekdays & (1 << date.weekday().num_days_from_sunday()) != 0;
        if self.any_day || self.any_weekday {
            day && weekday
        } else {
            day || weekday
        }
    }

    /// The first instant strictly after `after` that matches, in local time of `tz`.
    pub fn next_after(&self, after: DateTime<Utc>, tz: &TimeZone) -> Option<DateTime<Utc>> {
        let after_s = after.timestamp();
        let start = tz.to_local(after_s)?.date().checked_sub_days(Days::new(1))?;
        for n in 0..HORIZON_DAYS {
            let date = start.checked_add_days(Days::new(n))?;
            if !self.matches_day(date) {
                continue;
            }
            // Within a day, local order and UTC order can differ around a clock change,
            // so take the earliest candidate of the first day that has one.
            let mut best: Option<i64> = None;
            for hour in (0..24).filter(|h| self.hours & (1 << h) != 0) {
                for minute in (0..60).filter(|m| self.minutes & (1 << m) != 0) {
                    let Some(local) = date.and_hms_opt(hour, minute, 0) else { continue };
                    let (first, second) = match tz.resolve(local) {
                        LocalTime::Single(u) | LocalTime::Skipped(u) => (u, None),
                        LocalTime::Twice(a, b) => (a, self.every_hour.then_some(b)),
                    };
                    for u in std::iter::once(first).chain(second) {
                        if u > after_s && best.is_none_or(|b| u < b) {
                            best = Some(u);
                        }
                    }
                }
            }
            if let Some(u) = best {
                return DateTime::from_timestamp(u, 0);
            }
        }
        None
    }
}

/// Narrow a bit set that `field` built within the type's range.
fn narrow<T: TryFrom<u64> + Default>(bits: u64) -> T {
    // `field` only sets bits up to the field's maximum, which fits the target type.
    T::try_from(bits).unwrap_or_default()
}

/// One field as a bit set (bit n set = value n matches).
fn field(text: &str, name: &str, min: u32, max: u32) -> Result<u64, String> {
    let bad = |why: &str| format!("{name} field `{text}`: {why} (values {min}-{max})");
    let number = |s: &str| -> Result<u32, String> {
        let n: u32 = s.parse().map_err(|_| bad(&format!("`{s}` is not a number")))?;
        if (min..=max).contains(&n) {
            Ok(n)
        } else {
            Err(bad(&format!("{n} is out of range")))
        }
    };
    let mut bits = 0u64;
    for item in text.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => {
                let s: u32 = s.parse().map_err(|_| bad(&format!("step `{s}` is not a number")))?;
                if s == 0 {
                    return Err(bad("a step of 0"));
                }
                if s > max - min + 1 {
                    return Err(bad(&format!(
                        "a step of {s} is longer than the field's cycle; cron cannot say that"
                    )));
                }
                (r, Some(s))
            }
            None => (item, None),
        };
        let (lo, hi) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (number(a)?, number(b)?);
            if a > b {
                return Err(bad(&format!("range {a}-{b} runs backwards")));
            }
            (a, b)
        } else {
            let a = number(range)?;
            // `a/s` means from a to the end, every s.
            (a, if step.is_some() { max } else { a })
        };
        let step = step.unwrap_or(1);
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            let Some(next) = v.checked_add(step) else { break };
            v = next;
        }
    }
    Ok(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).expect("test instant").with_timezone(&Utc)
    }

    fn paris() -> TimeZone {
        TimeZone::from_config("Europe/Paris")
            .unwrap_or_else(|e| panic!("these tests need /usr/share/zoneinfo/Europe/Paris (tzdata): {e}"))
    }

    /// The next `n` firings after `from`.
    fn firings(expr: &str, tz: &TimeZone, from: &str, n: usize) -> Vec<String> {
        let cron = Cron::parse(expr).expect("valid cron");
        let mut t = at(from);
        let mut out = Vec::new();
        for _ in 0..n {
            t = cron.next_after(t, tz).expect("fires");
            out.push(t.to_rfc3339());
        }
        out
    }

    #[test]
    fn steps_ranges_and_lists_select_the_right_minutes() {
        let utc = TimeZone::utc();
        assert_eq!(
            firings("*/20 8 * * *", &utc, "2025-06-02T07:59:00Z", 4),
            [
                "2025-06-02T08:00:00+00:00",
                "2025-06-02T08:20:00+00:00",
                "2025-06-02T08:40:00+00:00",
                "2025-06-03T08:00:00+00:00"
            ]
        );
        assert_eq!(
            firings("0-30/15,45 6 1,15 * *", &utc, "2025-06-01T00:00:00Z", 5),
            [
                "2025-06-01T06:00:00+00:00",
                "2025-06-01T06:15:00+00:00",
                "2025-06-01T06:30:00+00:00",
                "2025-06-01T06:45:00+00:00",
                "2025-06-15T06:00:00+00:00"
            ]
        );
        assert_eq!(firings("50/5 0 * * *", &utc, "2025-06-01T00:00:00Z", 3)[2], "2025-06-02T00:50:00+00:00");
    }

    #[test]
    fn day_of_week_counts_seven_as_sunday_and_ranges_as_working_days() {
        let utc = TimeZone::utc();
        // 2025-06-07 is a Saturday.
        assert_eq!(firings("0 12 * * 7", &utc, "2025-06-07T00:00:00Z", 1), ["2025-06-08T12:00:00+00:00"]);
        assert_eq!(firings("0 12 * * 0", &utc, "2025-06-07T00:00:00Z", 1), ["2025-06-08T12:00:00+00:00"]);
        assert_eq!(
            firings("0 12 * * 1-5", &utc, "2025-06-06T13:00:00Z", 2),
            ["2025-06-09T12:00:00+00:00", "2025-06-10T12:00:00+00:00"]
        );
        // Both day fields restricted: either matches (the 1st, or any Sunday).
        assert_eq!(
            firings("0 0 1 * 0", &utc, "2025-06-01T01:00:00Z", 2),
            ["2025-06-08T00:00:00+00:00", "2025-06-15T00:00:00+00:00"]
        );
    }

    #[test]
    fn local_time_follows_summer_time_in_paris() {
        let tz = paris();
        // 23:30 local is 21:30 UTC in summer and 22:30 UTC in winter.
        assert_eq!(
            firings("30 23 * * *", &tz, "2025-10-24T12:00:00Z", 3),
            ["2025-10-24T21:30:00+00:00", "2025-10-25T21:30:00+00:00", "2025-10-26T22:30:00+00:00"]
        );
    }

    #[test]
    fn skipped_hour_fires_at_the_jump_and_repeated_hour_fires_once() {
        let tz = paris();
        // 2025-03-30: 02:00 CET becomes 03:00 CEST at 01:00 UTC. The 02:30 job runs at the jump.
        assert_eq!(
            firings("30 2 * * *", &tz, "2025-03-29T12:00:00Z", 2),
            ["2025-03-30T01:00:00+00:00", "2025-03-31T00:30:00+00:00"]
        );
        // 2025-10-26: 03:00 CEST becomes 02:00 CET at 01:00 UTC. The 02:30 job runs once.
        assert_eq!(
            firings("30 2 * * *", &tz, "2025-10-25T12:00:00Z", 2),
            ["2025-10-26T00:30:00+00:00", "2025-10-27T01:30:00+00:00"]
        );
        // An hourly job keeps running every hour through the repeated hour.
        assert_eq!(
            firings("30 * * * *", &tz, "2025-10-25T23:45:00Z", 4),
            [
                "2025-10-26T00:30:00+00:00",
                "2025-10-26T01:30:00+00:00",
                "2025-10-26T02:30:00+00:00",
                "2025-10-26T03:30:00+00:00"
            ]
        );
    }

    #[test]
    fn leap_day_is_found_years_ahead() {
        assert_eq!(
            firings("0 0 29 2 *", &TimeZone::utc(), "2024-03-01T00:00:00Z", 1),
            ["2028-02-29T00:00:00+00:00"]
        );
    }

    #[test]
    fn malformed_expressions_are_refused_with_the_field() {
        for (text, says) in [
            ("* * * *", "5"),
            ("60 * * * *", "minute"),
            ("* 24 * * *", "hour"),
            ("* * 0 * *", "day-of-month"),
            ("* * * 13 *", "month"),
            ("* * * * 8", "day-of-week"),
            ("*/0 * * * *", "step of 0"),
            ("5-1 * * * *", "backwards"),
            ("a * * * *", "not a number"),
            ("0 0 31 2 *", "never"),
            ("1,,2 * * * *", "minute"),
            ("*/4294967295 * * * *", "step"),
            ("*/90 * * * *", "longer than"),
        ] {
            let err = Cron::parse(text).expect_err(text);
            assert!(err.contains(says), "{text}: {err}");
        }
    }
}
