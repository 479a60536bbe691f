//! Sunrise, sunset and civil twilight at the gateway's coordinates, from NOAA's solar
//! position equations (the "General Solar Position Calculations" of NOAA's Global Monitoring
//! Laboratory, after Meeus' *Astronomical Algorithms*). Good to about a minute at French
//! latitudes, which is what switching street lights needs; not an ephemeris.
//!
//! Sunrise and sunset are when the upper limb of the sun meets a level horizon with average
//! refraction (solar zenith 90.833°); civil dawn and dusk are when the centre is 6° below it.

use chrono::{DateTime, Days, NaiveDate, Utc};

/// A daily event of the sun.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SunEvent {
    Sunrise,
    Sunset,
    /// Start of morning civil twilight (sun 6° below the horizon).
    CivilDawn,
    /// End of evening civil twilight.
    CivilDusk,
}

impl SunEvent {
    /// The name used in rules.toml.
    pub fn parse(name: &str) -> Option<SunEvent> {
        match name {
            "sunrise" => Some(SunEvent::Sunrise),
            "sunset" => Some(SunEvent::Sunset),
            "civil_dawn" => Some(SunEvent::CivilDawn),
            "civil_dusk" => Some(SunEvent::CivilDusk),
            _ => None,
        }
    }

    /// Solar zenith angle at the event, degrees.
    fn zenith(self) -> f64 {
        match self {
            SunEvent::Sunrise | SunEvent::Sunset => 90.833,
            SunEvent::CivilDawn | SunEvent::CivilDusk => 96.0,
        }
    }

    fn is_morning(self) -> bool {
        matches!(self, SunEvent::Sunrise | SunEvent::CivilDawn)
    }
}

/// A place on Earth, degrees (north and east positive).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Coordinates {
    pub latitude: f64,
    pub longitude: f64,
}

/// Declination (degrees) and equation of time (minutes) at Julian day `jd`.
fn solar_position(jd: f64) -> (f64, f64) {
    let t = (jd - 2_451_545.0) / 36_525.0; // Julian centuries since J2000.0
    let mean_long = (280.46646 + t * (36000.76983 + t * 0.000_303_2)).rem_euclid(360.0);
    let mean_anom = 357.52911 + t * (35999.05029 - 0.000_153_7 * t);
    let ecc = 0.016_708_634 - t * (0.000_042_037 + 0.000_000_126_7 * t);
    let m = mean_anom.to_radians();
    let centre = m.sin() * (1.914_602 - t * (0.004_817 + 0.000_014 * t))
        + (2.0 * m).sin() * (0.019_993 - 0.000_101 * t)
        + (3.0 * m).sin() * 0.000_289;
    let omega = (125.04 - 1934.136 * t).to_radians();
    let apparent_long = mean_long + centre - 0.00569 - 0.00478 * omega.sin();
    let mean_obliq = 23.0 + (26.0 + (21.448 - t * (46.815 + t * (0.00059 - t * 0.001_813))) / 60.0) / 60.0;
    let obliq = (mean_obliq + 0.00256 * omega.cos()).to_radians();
    let declination = (obliq.sin() * apparent_long.to_radians().sin()).asin();
    let y = (obliq / 2.0).tan().powi(2);
    let l0 = mean_long.to_radians();
    let eq_time = 4.0
        * (y * (2.0 * l0).sin() - 2.0 * ecc * m.sin() + 4.0 * ecc * y * m.sin() * (2.0 * l0).cos()
            - 0.5 * y * y * (4.0 * l0).sin()
            - 1.25 * ecc * ecc * (2.0 * m).sin())
        .to_degrees();
    (declination.to_degrees(), eq_time)
}

/// The event on the solar day of `date` (the one around local solar noon of that UTC date),
/// or `None` when the sun does not reach that altitude that day (polar day or night).
pub fn event_on(event: SunEvent, date: NaiveDate, at: Coordinates) -> Option<DateTime<Utc>> {
    let midnight = date.and_hms_opt(0, 0, 0)?.and_utc();
    let jd_midnight = midnight.timestamp() as f64 / 86_400.0 + 2_440_587.5;
    let lat = at.latitude.to_radians();
    let cos_zenith = event.zenith().to_radians().cos();
    // Minutes after UTC midnight; refined at the event itself (the sun moves meanwhile).
    let mut minutes = 720.0 - 4.0 * at.longitude;
    for _ in 0..3 {
        let (decl, eq_time) = solar_position(jd_midnight + minutes / 1440.0);
        let decl = decl.to_radians();
        let cos_ha = cos_zenith / (lat.cos() * decl.cos()) - lat.tan() * decl.tan();
        if !cos_ha.is_finite() || !(-1.0..=1.0).contains(&cos_ha) {
            return None;
        }
        let hour_angle = cos_ha.acos().to_degrees();
        let noon = 720.0 - 4.0 * at.longitude - eq_time;
        minutes = if event.is_morning() { noon - 4.0 * hour_angle } else { noon + 4.0 * hour_angle };
    }
    let millis = (minutes * 60_000.0).round();
    if !millis.is_finite() {
        return None;
    }
    midnight.checked_add_signed(chrono::Duration::milliseconds(millis as i64))
}

/// The first `event + offset_min` strictly after `after`, searching a bit over a year ahead.
pub fn next_after(
    event: SunEvent,
    offset_min: i32,
    at: Coordinates,
    after: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let offset = chrono::Duration::minutes(i64::from(offset_min));
    let start = after.date_naive().checked_sub_days(Days::new(2))?;
    (0..400u64)
        .filter_map(|n| start.checked_add_days(Days::new(n)))
        .filter_map(|date| event_on(event, date, at))
        .filter_map(|t| t.checked_add_signed(offset))
        .find(|&t| t > after)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minutes_apart(a: DateTime<Utc>, b: &str) -> i64 {
        let b = DateTime::parse_from_rfc3339(b).expect("test instant").with_timezone(&Utc);
        (a - b).num_seconds().abs() / 60
    }

    fn date(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).expect("test date")
    }

    #[test]
    fn matches_published_almanac_times_within_two_minutes() {
        // U.S. Naval Observatory, "Complete Sun and Moon Data for One Day", 20 March 2002,
        // Eastern Standard Time (UTC-5), as quoted at stevekluge.com/astronomy/equinoxsunrise.html:
        // Washington DC (W77.0, N38.9): civil twilight 5:45, sunrise 6:12, sunset 18:21, end 18:47.
        // Cape May NJ (W74.9, N38.9):   civil twilight 5:37, sunrise 6:04, sunset 18:12, end 18:39.
        let day = date(2002, 3, 20);
        let cases = [
            (-77.0, SunEvent::CivilDawn, "2002-03-20T10:45:00Z"),
            (-77.0, SunEvent::Sunrise, "2002-03-20T11:12:00Z"),
            (-77.0, SunEvent::Sunset, "2002-03-20T23:21:00Z"),
            (-77.0, SunEvent::CivilDusk, "2002-03-20T23:47:00Z"),
            (-74.9, SunEvent::CivilDawn, "2002-03-20T10:37:00Z"),
            (-74.9, SunEvent::Sunrise, "2002-03-20T11:04:00Z"),
            (-74.9, SunEvent::Sunset, "2002-03-20T23:12:00Z"),
            (-74.9, SunEvent::CivilDusk, "2002-03-20T23:39:00Z"),
        ];
        for (longitude, event, published) in cases {
            let at = Coordinates { latitude: 38.9, longitude };
            let t = event_on(event, day, at).expect("the sun rises and sets at 39°N");
            assert!(minutes_apart(t, published) <= 2, "{event:?} at {longitude}: {t} vs {published}");
        }
    }

    #[test]
    fn matches_times_reported_for_paris_within_two_minutes() {
        // Secondary check, from the press rather than an almanac: "today the sun rises at
        // 5:47 am and won't set until 9:58 pm" (justanotheramericaninparis.blogspot.com,
        // 21 June 2008, CEST), and "on December 21 the sun rose at 8:41 and set at 16:56"
        // (particle.news, winter solstice 2025, CET).
        let paris = Coordinates { latitude: 48.8566, longitude: 2.3522 };
        let cases = [
            (date(2008, 6, 21), SunEvent::Sunrise, "2008-06-21T03:47:00Z"),
            (date(2008, 6, 21), SunEvent::Sunset, "2008-06-21T19:58:00Z"),
            (date(2025, 12, 21), SunEvent::Sunrise, "2025-12-21T07:41:00Z"),
            (date(2025, 12, 21), SunEvent::Sunset, "2025-12-21T15:56:00Z"),
        ];
        for (day, event, reported) in cases {
            let t = event_on(event, day, paris).expect("the sun rises and sets in Paris");
            assert!(minutes_apart(t, reported) <= 2, "{event:?} on {day}: {t} vs {reported}");
        }
    }

    #[test]
    fn polar_night_and_midnight_sun_have_no_event() {
        let svalbard = Coordinates { latitude: 78.2, longitude: 15.6 };
        assert_eq!(event_on(SunEvent::Sunrise, date(2025, 12, 21), svalbard), None);
        assert_eq!(event_on(SunEvent::Sunset, date(2025, 6, 21), svalbard), None);
        // The next sunset after midsummer comes in late August.
        let after =
            DateTime::parse_from_rfc3339("2025-06-21T12:00:00Z").expect("instant").with_timezone(&Utc);
        let next = next_after(SunEvent::Sunset, 0, svalbard, after).expect("the sun sets again");
        assert_eq!(next.format("%m").to_string(), "08");
    }

    #[test]
    fn events_are_a_day_apart_and_offsets_apply() {
        let bourges = Coordinates { latitude: 47.08, longitude: 2.40 };
        let after =
            DateTime::parse_from_rfc3339("2025-01-10T12:00:00Z").expect("instant").with_timezone(&Utc);
        let a = next_after(SunEvent::Sunset, 0, bourges, after).expect("sunset");
        let b = next_after(SunEvent::Sunset, 0, bourges, a).expect("next sunset");
        let gap = (b - a).num_minutes();
        assert!((1440..1443).contains(&gap), "{a} then {b}");
        let early = next_after(SunEvent::Sunset, -10, bourges, after).expect("sunset - 10");
        assert_eq!((a - early).num_minutes(), 10);
    }
}
