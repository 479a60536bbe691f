//! Decides when the concentrator is wedged (see `HealthConfig` for the rule):
//! too many consecutive failed HAL calls, a counter that stopped counting, or
//! (only if configured) a radio silent for too long. Pure bookkeeping over
//! instants the owner thread passes in, so tests need no clock.

use std::fmt;
use std::time::{Duration, Instant};

use crate::config::HealthConfig;

/// Why the concentrator is considered wedged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wedged {
    /// `count` consecutive calls of `call` failed.
    HalErrors { call: &'static str, count: u32 },
    /// The counter read `value` for `stalled` without moving.
    CounterStalled { value: u32, stalled: Duration },
    /// No frame was received for `silent`.
    Silent { silent: Duration },
}

impl fmt::Display for Wedged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Wedged::HalErrors { call, count } => write!(f, "{count} consecutive {call} calls failed"),
            Wedged::CounterStalled { value, stalled } => {
                write!(f, "the concentrator counter stopped at {value} for {} ms", stalled.as_millis())
            }
            Wedged::Silent { silent } => write!(f, "no frame received for {} s", silent.as_secs()),
        }
    }
}

/// The running tally behind the rule.
#[derive(Clone, Debug)]
pub struct HealthMonitor {
    config: HealthConfig,
    receive_errors: u32,
    counter_errors: u32,
    /// Last counter value and when it was first read.
    counter_since: Option<(u32, Instant)>,
    last_frame: Instant,
}

impl HealthMonitor {
    /// A monitor for a concentrator (re)started at `now`.
    pub fn new(config: HealthConfig, now: Instant) -> HealthMonitor {
        HealthMonitor { config, receive_errors: 0, counter_errors: 0, counter_since: None, last_frame: now }
    }

    /// The concentrator was (re)started at `now`: forget the past.
    pub fn restarted(&mut self, now: Instant) {
        *self = HealthMonitor::new(self.config, now);
    }

    /// `lgw_receive` succeeded with `frames` frames.
    pub fn receive_ok(&mut self, frames: usize, now: Instant) {
        self.receive_errors = 0;
        if frames > 0 {
            self.last_frame = now;
        }
    }

    /// `lgw_receive` failed.
    pub fn receive_failed(&mut self) -> Option<Wedged> {
        self.receive_errors += 1;
        (self.receive_errors >= self.config.max_hal_errors)
            .then_some(Wedged::HalErrors { call: "lgw_receive", count: self.receive_errors })
    }

    /// `lgw_get_instcnt` read `value` at `now`.
    pub fn counter_read(&mut self, value: u32, now: Instant) -> Option<Wedged> {
        self.counter_errors = 0;
        match self.counter_since {
            Some((last, since)) if last == value => {
                let stalled = now.saturating_duration_since(since);
                (stalled >= Duration::from_millis(self.config.counter_stall_ms))
                    .then_some(Wedged::CounterStalled { value, stalled })
            }
            _ => {
                self.counter_since = Some((value, now));
                None
            }
        }
    }

    /// `lgw_get_instcnt` failed.
    pub fn counter_failed(&mut self) -> Option<Wedged> {
        self.counter_errors += 1;
        (self.counter_errors >= self.config.max_hal_errors)
            .then_some(Wedged::HalErrors { call: "lgw_get_instcnt", count: self.counter_errors })
    }

    /// Whether the radio has been silent too long at `now` (only if configured).
    pub fn silence(&self, now: Instant) -> Option<Wedged> {
        let limit = Duration::from_secs(self.config.silence_restart_s?);
        let silent = now.saturating_duration_since(self.last_frame);
        (silent >= limit).then_some(Wedged::Silent { silent })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> HealthConfig {
        HealthConfig { max_hal_errors: 3, counter_stall_ms: 1_000, ..HealthConfig::default() }
    }

    #[test]
    fn consecutive_receive_failures_mean_wedged_and_a_success_forgives() {
        let t = Instant::now();
        let mut h = HealthMonitor::new(config(), t);
        assert_eq!(h.receive_failed(), None);
        assert_eq!(h.receive_failed(), None);
        h.receive_ok(0, t);
        assert_eq!(h.receive_failed(), None);
        assert_eq!(h.receive_failed(), None);
        assert_eq!(h.receive_failed(), Some(Wedged::HalErrors { call: "lgw_receive", count: 3 }));
    }

    #[test]
    fn a_counter_that_stops_counting_means_wedged() {
        let t = Instant::now();
        let mut h = HealthMonitor::new(config(), t);
        assert_eq!(h.counter_read(5, t), None);
        assert_eq!(h.counter_read(5, t + Duration::from_millis(999)), None);
        let stalled = h.counter_read(5, t + Duration::from_millis(1_000));
        assert_eq!(stalled, Some(Wedged::CounterStalled { value: 5, stalled: Duration::from_millis(1_000) }));
    }

    #[test]
    fn a_counting_counter_is_healthy_even_when_it_wraps() {
        let t = Instant::now();
        let mut h = HealthMonitor::new(config(), t);
        for (i, v) in [u32::MAX - 5, 3, 3_000_000].into_iter().enumerate() {
            assert_eq!(h.counter_read(v, t + Duration::from_secs(i as u64 * 2)), None);
        }
    }

    #[test]
    fn failed_counter_reads_count_apart_from_receive_failures() {
        let t = Instant::now();
        let mut h = HealthMonitor::new(config(), t);
        assert_eq!(h.receive_failed(), None);
        assert_eq!(h.counter_failed(), None);
        assert_eq!(h.receive_failed(), None);
        assert_eq!(h.counter_failed(), None);
        assert_eq!(h.counter_failed(), Some(Wedged::HalErrors { call: "lgw_get_instcnt", count: 3 }));
    }

    #[test]
    fn silence_counts_only_when_configured() {
        let t = Instant::now();
        let later = t + Duration::from_secs(7_200);
        assert_eq!(HealthMonitor::new(config(), t).silence(later), None);
        let mut h = HealthMonitor::new(HealthConfig { silence_restart_s: Some(3_600), ..config() }, t);
        h.receive_ok(1, t + Duration::from_secs(3_000));
        assert_eq!(h.silence(t + Duration::from_secs(6_599)), None);
        assert_eq!(
            h.silence(t + Duration::from_secs(6_600)),
            Some(Wedged::Silent { silent: Duration::from_secs(3_600) })
        );
    }

    #[test]
    fn a_restart_forgives_everything() {
        let t = Instant::now();
        let mut h = HealthMonitor::new(config(), t);
        h.receive_failed();
        h.receive_failed();
        h.restarted(t);
        assert_eq!(h.receive_failed(), None);
    }
}
