//! Duty-cycle accounting per regulatory sub-band over a rolling window
//! (one hour for ETSI EN 300 220, as EU868 gateways apply it): a transmission
//! is accepted only if, in every window it falls into, the sub-band's airtime
//! stays within its budget (1 % of an hour is 36 s).
//!
//! Times are microseconds on a monotonic clock the caller provides (not the
//! concentrator counter, which restarts from zero when the concentrator is
//! reset: the ledger must survive that). Pure Rust, no HAL.

/// One hour in µs: the ETSI observation window.
pub const ONE_HOUR_US: u64 = 3_600_000_000;

/// A transmission that would exceed its sub-band's budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("duty cycle: {used_us} µs of {budget_us} µs already used in the window")]
pub struct DutyCycleExceeded {
    /// Airtime already booked in the fullest window the new transmission falls into.
    pub used_us: u64,
    /// What the window allows.
    pub budget_us: u64,
}

/// The airtime booked in each sub-band.
#[derive(Clone, Debug)]
pub struct DutyCycleLedger {
    window_us: u64,
    bands: Vec<BandLedger>,
}

#[derive(Clone, Debug)]
struct BandLedger {
    /// Allowed share of the window, in thousandths; `None` when not limited.
    limit_permille: Option<u16>,
    /// Booked transmissions as (start, end) µs, in booking order.
    booked: Vec<(u64, u64)>,
}

impl DutyCycleLedger {
    /// A ledger for sub-bands with these limits (thousandths of the window; `None` = unlimited).
    pub fn new(limits_permille: &[Option<u16>], window_us: u64) -> DutyCycleLedger {
        DutyCycleLedger {
            window_us,
            bands: limits_permille
                .iter()
                .map(|&limit_permille| BandLedger { limit_permille, booked: Vec::new() })
                .collect(),
        }
    }

    /// Books `airtime_us` starting at `start_us` in `band` if every window it
    /// touches keeps within budget; otherwise books nothing. `now_us` is the
    /// present (no transmission starts before it); older bookings are forgotten.
    pub fn try_book(
        &mut self,
        band: usize,
        now_us: u64,
        start_us: u64,
        airtime_us: u64,
    ) -> Result<(), DutyCycleExceeded> {
        let window = self.window_us;
        let Some(ledger) = self.bands.get_mut(band) else {
            // No such band: nothing limits it.
            return Ok(());
        };
        ledger.booked.retain(|&(_, end)| end + window > now_us);
        let Some(permille) = ledger.limit_permille else {
            return Ok(());
        };
        let budget_us = window * u64::from(permille) / 1000;
        let new = (start_us, start_us + airtime_us);
        // The fullest window containing part of `new` ends at `new`'s end or at the
        // end of a booked transmission that finishes during or within a window after it.
        let mut ends = vec![new.1];
        ends.extend(
            ledger.booked.iter().map(|&(_, end)| end).filter(|&end| end > new.0 && end < new.1 + window),
        );
        for window_end in ends {
            let window_start = window_end.saturating_sub(window);
            let used = overlap_sum(&ledger.booked, window_start, window_end);
            if used + overlap(new, window_start, window_end) > budget_us {
                return Err(DutyCycleExceeded { used_us: used, budget_us });
            }
        }
        ledger.booked.push(new);
        Ok(())
    }

    /// Airtime booked in `band` within the window that ends at `at_us`.
    pub fn used_us(&self, band: usize, at_us: u64) -> u64 {
        self.bands
            .get(band)
            .map(|l| overlap_sum(&l.booked, at_us.saturating_sub(self.window_us), at_us))
            .unwrap_or(0)
    }
}

fn overlap((start, end): (u64, u64), from: u64, to: u64) -> u64 {
    end.min(to).saturating_sub(start.max(from))
}

fn overlap_sum(booked: &[(u64, u64)], from: u64, to: u64) -> u64 {
    booked.iter().map(|&t| overlap(t, from, to)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000;

    /// One band limited to 1 %, one to 10 %, one unlimited.
    fn ledger() -> DutyCycleLedger {
        DutyCycleLedger::new(&[Some(10), Some(100), None], ONE_HOUR_US)
    }

    #[test]
    fn one_percent_allows_36_seconds_an_hour() {
        let mut l = ledger();
        for i in 0..36 {
            assert_eq!(l.try_book(0, i * 60 * S, i * 60 * S, S), Ok(()), "transmission {i}");
        }
        assert_eq!(l.used_us(0, 36 * 60 * S), 36 * S);
        let refused = l.try_book(0, 36 * 60 * S, 36 * 60 * S, S);
        assert_eq!(refused, Err(DutyCycleExceeded { used_us: 36 * S, budget_us: 36 * S }));
        // Nothing was booked by the refusal.
        assert_eq!(l.used_us(0, 36 * 60 * S + S), 36 * S);
    }

    #[test]
    fn budget_comes_back_as_the_window_rolls_on() {
        let mut l = ledger();
        assert_eq!(l.try_book(0, 0, 0, 36 * S), Ok(()));
        assert!(l.try_book(0, 40 * S, 40 * S, S).is_err());
        // One hour after the first transmission ended, its airtime is out of the window.
        assert_eq!(l.try_book(0, ONE_HOUR_US + 36 * S, ONE_HOUR_US + 36 * S, S), Ok(()));
    }

    #[test]
    fn a_transmission_leaving_the_window_counts_only_its_part_still_in_it() {
        let mut l = ledger();
        assert_eq!(l.try_book(0, 0, 0, 18 * S), Ok(()));
        assert_eq!(l.try_book(0, 0, 30 * 60 * S, 18 * S), Ok(()));
        // 9 s of the first transmission are still within the hour ending now.
        let t = ONE_HOUR_US + 9 * S;
        assert_eq!(l.used_us(0, t), 27 * S);
        // By the end of a new 19 s transmission the first is gone, the second is not: 37 s.
        assert!(l.try_book(0, t, t, 19 * S).is_err());
        assert_eq!(l.try_book(0, t, t, 18 * S), Ok(()));
    }

    #[test]
    fn bands_have_separate_budgets() {
        let mut l = ledger();
        assert_eq!(l.try_book(0, 0, 0, 36 * S), Ok(()));
        assert_eq!(l.try_book(1, 0, 0, 300 * S), Ok(()), "10 % band has its own 360 s");
        assert_eq!(l.try_book(1, 0, 300 * S, 60 * S), Ok(()));
        assert!(l.try_book(1, 0, 400 * S, S).is_err());
        assert_eq!(l.try_book(2, 0, 0, ONE_HOUR_US), Ok(()), "an unlimited band takes anything");
    }

    #[test]
    fn an_earlier_booking_cannot_overfill_a_window_of_a_later_one() {
        let mut l = ledger();
        // Booked first: a transmission 50 min from now using 30 s.
        assert_eq!(l.try_book(0, 0, 50 * 60 * S, 30 * S), Ok(()));
        // Then 6 s at 10 s from now: every window holds at most 30 + 6 = 36 s. 7 s more
        // would put 43 s in the hour ending with the later transmission.
        assert_eq!(l.try_book(0, 0, 10 * S, 6 * S), Ok(()));
        let refused = l.try_book(0, 0, 20 * S, 7 * S);
        assert!(refused.is_err(), "{refused:?}");
    }

    #[test]
    fn tenth_of_a_percent_is_3_6_seconds() {
        let mut l = DutyCycleLedger::new(&[Some(1)], ONE_HOUR_US);
        assert_eq!(l.try_book(0, 0, 0, 3_600_000), Ok(()));
        assert!(l.try_book(0, 0, 10 * S, 1).is_err());
    }
}
