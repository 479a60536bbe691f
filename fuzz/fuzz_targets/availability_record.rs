//! Month records of the availability ledger over arbitrary bytes, as `berryctl availability`
//! takes them from the broker (anyone able to publish may leave one): parsed, then the
//! figures computed from whatever incidents and maintenance windows they hold (extreme
//! times, ends before starts, open ones, their own figures when incidents were left out),
//! alone and as a fleet. Nothing may panic.
#![no_main]

use berrygw_proto::availability::{fleet_figures, month_span, Ledger, MonthRecord, TimeZone};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok(record) = serde_json::from_slice::<MonthRecord>(bytes) else { return };
    let tz = TimeZone::utc();
    let period = month_span(&tz, 2026, 11);
    let ledger = Ledger {
        incidents: &record.incidents,
        maintenance: &record.maintenance,
        observed_since_ms: record.observed_since_ms,
        now_ms: record.made_ms,
        gtr_ms: record.gtr_ms,
    };
    let _ = ledger.all_figures(period);
    let _ = ledger.overlapping(period);
    let _ = fleet_figures(&[record.clone(), record], 4 * 3_600_000, &tz, 2026, 11);
});
