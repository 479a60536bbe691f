//! What the structure-aware fuzz targets share: values picked from the edges
//! (zero, ±1, the type's limits, the years chrono and GWMP stop at) more often
//! than byte-level mutation would find them.

use arbitrary::Arbitrary;
use chirpstack_api::pbjson_types::{Duration, Timestamp};

/// `raw`, or one of the edge values of an `i64` when `pick` says so.
pub fn extreme_i64(pick: u8, raw: i64) -> i64 {
    const EDGES: [i64; 12] = [
        0,
        1,
        -1,
        i64::MIN,
        i64::MAX,
        i64::MAX / 1_000_000,
        1_700_000_000,          // now-ish, seconds
        1_700_000_000_000,      // now-ish, milliseconds
        253_402_300_799,        // last second of year 9999
        253_402_300_800,        // year 10000
        10_000_000_000_000,     // 1e13: beyond chrono's range as seconds
        10_000_000_000_000_000, // 1e16
    ];
    match pick % 16 {
        n if (n as usize) < EDGES.len() => EDGES[n as usize],
        _ => raw,
    }
}

/// `raw`, or one of the edge values of an `i32` when `pick` says so.
pub fn extreme_i32(pick: u8, raw: i32) -> i32 {
    const EDGES: [i32; 7] = [0, 1, -1, i32::MIN, i32::MAX, 999_999_999, 1_000_000_000];
    match pick % 10 {
        n if (n as usize) < EDGES.len() => EDGES[n as usize],
        _ => raw,
    }
}

/// An optional protobuf time with edge values likely.
#[derive(Arbitrary, Debug)]
pub enum Time {
    None,
    At { seconds: (u8, i64), nanos: (u8, i32) },
}

impl Time {
    pub fn timestamp(&self) -> Option<Timestamp> {
        match *self {
            Time::None => None,
            Time::At { seconds, nanos } => Some(Timestamp {
                seconds: extreme_i64(seconds.0, seconds.1),
                nanos: extreme_i32(nanos.0, nanos.1),
            }),
        }
    }

    pub fn duration(&self) -> Option<Duration> {
        self.timestamp().map(|t| Duration { seconds: t.seconds, nanos: t.nanos })
    }
}
