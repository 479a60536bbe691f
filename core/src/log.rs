//! A limit on how often one cause of bad input is logged: a flood of hostile or broken
//! input is logged, not amplified.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How often one cause of bad input may be logged at warn level.
pub const WARN_EVERY: Duration = Duration::from_secs(10);

/// Lets one warning per cause through every `every` and counts the ones it held
/// back, so that a flood of bad datagrams is logged, not amplified.
#[derive(Debug)]
pub struct LogLimiter {
    every: Duration,
    causes: HashMap<&'static str, (Instant, u64)>,
}

impl LogLimiter {
    /// A limiter allowing one warning per cause per `every`.
    pub fn new(every: Duration) -> LogLimiter {
        LogLimiter { every, causes: HashMap::new() }
    }

    /// `Some(n)` when a warning about `cause` may be logged now, `n` being how many
    /// were held back since the last one; `None` when it should be skipped.
    pub fn allow(&mut self, cause: &'static str) -> Option<u64> {
        let now = Instant::now();
        match self.causes.get_mut(cause) {
            Some((last, held)) if now.duration_since(*last) < self.every => {
                *held += 1;
                None
            }
            Some((last, held)) => {
                *last = now;
                Some(std::mem::take(held))
            }
            None => {
                self.causes.insert(cause, (now, 0));
                Some(0)
            }
        }
    }
}

impl Default for LogLimiter {
    fn default() -> LogLimiter {
        LogLimiter::new(WARN_EVERY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_limiter_lets_one_warning_per_cause_through_and_counts_the_rest() {
        let mut l = LogLimiter::new(Duration::from_secs(3600));
        assert_eq!(l.allow("json"), Some(0));
        assert_eq!(l.allow("json"), None);
        assert_eq!(l.allow("json"), None);
        assert_eq!(l.allow("base64"), Some(0), "causes are independent");
        let mut l = LogLimiter::new(Duration::ZERO);
        assert_eq!(l.allow("json"), Some(0));
        assert_eq!(l.allow("json"), Some(0));
    }
}
