//! Time as berrygw writes it: unix milliseconds on the wire and in stores, RFC 3339 in UTC
//! with milliseconds in JSON and logs. One of each, used everywhere.

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix time in milliseconds; 0 for a time before 1970 (a clock that was never set).
pub fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// RFC 3339 in UTC with milliseconds: `2026-12-07T01:02:03.456Z`.
pub fn rfc3339_ms(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_agree() {
        let t = UNIX_EPOCH + Duration::from_millis(1_796_000_523_456);
        assert_eq!(unix_ms(t), 1_796_000_523_456);
        assert_eq!(rfc3339_ms(t), "2026-11-30T01:02:03.456Z");
        assert_eq!(unix_ms(UNIX_EPOCH - Duration::from_secs(1)), 0);
    }
}
