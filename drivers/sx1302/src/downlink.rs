//! Downlink admission: decides the `TxStatus` of every `DownlinkFrame` (GPS
//! timing, frequency and power against the region, airtime, JIT slot,
//! duty cycle), turns accepted ones into `TxRequest`s for the HAL and keeps
//! them in the JIT queue until they are due. Pure Rust: the owner thread
//! gives it the clock and hands what is due to `lgw_send`.

use berrygw_lora::{DownlinkFrame, Modulation, TxStatus, TxTiming};

use crate::airtime::{time_on_air_us, FrameFormat};
use crate::config::TxGain;
use crate::duty_cycle::{DutyCycleLedger, ONE_HOUR_US};
use crate::jit::{Due, JitLimits, JitQueue, JitRefusal, TxWhen};
use crate::regions::RegionPlan;
use crate::setup::TxSetup;

/// Largest payload the SX1302 sends.
pub const MAX_PAYLOAD: usize = 255;

/// A frame ready for `lgw_send`, in plain Rust.
#[derive(Clone, Debug, PartialEq)]
pub struct TxRequest {
    pub downlink_id: u32,
    /// Hz.
    pub frequency: u32,
    /// Send at once rather than at `count_us`.
    pub immediate: bool,
    /// Counter value to start at.
    pub count_us: u32,
    pub rf_chain: u8,
    /// Power at the connector: a step of the board's power table, dBm.
    pub rf_power: i8,
    pub modulation: Modulation,
    pub invert_polarity: bool,
    /// LoRa: symbols; FSK: bytes.
    pub preamble: u16,
    pub crc: bool,
    pub payload: Vec<u8>,
}

/// The two clocks admission needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Clock {
    /// Concentrator counter now, µs.
    pub counter_us: u32,
    /// Monotonic time now, µs (duty-cycle accounting; survives concentrator restarts).
    pub monotonic_us: u64,
}

/// Admits downlinks and holds them until they are due.
#[derive(Debug)]
pub struct DownlinkScheduler {
    region: &'static RegionPlan,
    tx: TxSetup,
    jit: JitQueue<TxRequest>,
    duty: DutyCycleLedger,
}

impl DownlinkScheduler {
    /// A scheduler for `region`, sending as `tx` says.
    pub fn new(region: &'static RegionPlan, tx: TxSetup, limits: JitLimits) -> DownlinkScheduler {
        let bands: Vec<Option<u16>> = region
            .sub_bands
            .iter()
            .map(|b| if tx.enforce_duty_cycle { b.duty_cycle_permille } else { None })
            .collect();
        DownlinkScheduler {
            region,
            tx,
            jit: JitQueue::new(limits),
            duty: DutyCycleLedger::new(&bands, ONE_HOUR_US),
        }
    }

    /// Admits `frame` (returns the counter value it will start at) or says why not.
    /// `now` is `None` when the concentrator counter could not be read.
    pub fn admit(&mut self, frame: &DownlinkFrame, now: Option<Clock>) -> Result<u32, TxStatus> {
        let when = match frame.timing {
            // No GPS time reference is kept by this driver (no GPS receiver support yet).
            TxTiming::GpsEpoch(_) => return Err(TxStatus::GpsUnlocked),
            TxTiming::Immediately => TxWhen::Immediately,
            TxTiming::Counter(at) => TxWhen::At(at),
        };
        let Some(rf_chain) = self.tx.rf_chain else {
            // A receive-only configuration: no frequency of this gateway can transmit.
            return Err(TxStatus::TxFrequency);
        };
        if frame.board != 0 || frame.phy_payload.len() > MAX_PAYLOAD {
            return Err(TxStatus::InternalError);
        }
        let bandwidth = match frame.modulation {
            Modulation::Lora { bandwidth, .. } => bandwidth,
            Modulation::Fsk { datarate, frequency_deviation } => {
                frequency_deviation.saturating_mul(2).saturating_add(datarate)
            }
        };
        let Some((band_index, band)) = self.region.sub_band(frame.frequency.0, bandwidth) else {
            return Err(TxStatus::TxFrequency);
        };
        if frame.power_dbm > band.max_eirp_dbm {
            return Err(TxStatus::TxPower);
        }
        let step = power_step(&self.tx.gain_lut, frame.power_dbm.saturating_sub(self.tx.antenna_gain_dbi))
            .ok_or(TxStatus::TxPower)?;
        if step.rf_power.saturating_add(self.tx.antenna_gain_dbi) > band.max_eirp_dbm {
            // Even the lowest step of the table is above what the sub-band allows.
            return Err(TxStatus::TxPower);
        }
        let format = FrameFormat::downlink(&frame.modulation);
        let airtime_us = time_on_air_us(&frame.modulation, frame.phy_payload.len(), format)
            .map_err(|_| TxStatus::InternalError)?;
        let now = now.ok_or(TxStatus::InternalError)?;

        let request = TxRequest {
            downlink_id: frame.downlink_id,
            frequency: frame.frequency.0,
            immediate: matches!(when, TxWhen::Immediately),
            count_us: 0,
            rf_chain,
            rf_power: step.rf_power,
            modulation: frame.modulation,
            invert_polarity: frame.invert_iq,
            preamble: format.preamble,
            crc: format.crc,
            payload: frame.phy_payload.clone(),
        };
        // Check the duty cycle before taking the JIT slot, book it only once the slot is ours.
        let start_counter = match when {
            TxWhen::Immediately => now.counter_us,
            TxWhen::At(at) => at,
        };
        let start_mono = now
            .monotonic_us
            .saturating_add_signed(i64::from(start_counter.wrapping_sub(now.counter_us) as i32));
        let mut probe = self.duty.clone();
        probe
            .try_book(band_index, now.monotonic_us, start_mono, u64::from(airtime_us))
            .map_err(|_| TxStatus::DutyCycleOverflow)?;
        let start = self.jit.enqueue(now.counter_us, when, airtime_us, request).map_err(|r| match r {
            JitRefusal::TooLate { .. } => TxStatus::TooLate,
            JitRefusal::TooEarly { .. } => TxStatus::TooEarly,
            JitRefusal::Collision => TxStatus::CollisionPacket,
            JitRefusal::QueueFull(_) => TxStatus::QueueFull,
        })?;
        self.duty = probe;
        Ok(start)
    }

    /// The next frame to hand to the HAL at counter value `now`, with its start time filled in.
    pub fn due(&mut self, now: u32) -> Option<Due<TxRequest>> {
        Some(match self.jit.pop_due(now)? {
            Due::Send(mut h) => {
                h.item.count_us = h.start;
                Due::Send(h)
            }
            missed => missed,
        })
    }

    /// Frames waiting.
    pub fn waiting(&self) -> usize {
        self.jit.len()
    }

    /// Drops every waiting frame (the concentrator restarted); returns them.
    pub fn clear(&mut self) -> Vec<TxRequest> {
        self.jit.clear()
    }
}

/// The step the HAL will use for `conducted_dbm`: the highest not above it, or the lowest.
fn power_step(lut: &[TxGain], conducted_dbm: i8) -> Option<TxGain> {
    lut.iter().rev().find(|s| s.rf_power <= conducted_dbm).or_else(|| lut.first()).copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boards::rak2287;
    use crate::regions::eu868;
    use berrygw_lora::{CodeRate, Frequency};

    const MS: u32 = 1_000;

    fn scheduler(enforce_duty_cycle: bool) -> DownlinkScheduler {
        let tx = TxSetup {
            rf_chain: Some(0),
            gain_lut: rak2287::MODEL.tx_gain_tables[0].steps.to_vec(),
            antenna_gain_dbi: 2,
            enforce_duty_cycle,
        };
        DownlinkScheduler::new(&eu868::PLAN, tx, JitLimits::default())
    }

    fn frame(id: u32, frequency: u32, sf: u8, power_dbm: i8, timing: TxTiming) -> DownlinkFrame {
        DownlinkFrame {
            downlink_id: id,
            phy_payload: vec![0x60; 20],
            frequency: Frequency(frequency),
            modulation: Modulation::Lora {
                spreading_factor: sf,
                bandwidth: 125_000,
                code_rate: CodeRate::Cr4_5,
            },
            power_dbm,
            timing,
            invert_iq: true,
            board: 0,
            antenna: 0,
        }
    }

    fn clock(counter_us: u32) -> Option<Clock> {
        Some(Clock { counter_us, monotonic_us: 10 * ONE_HOUR_US + u64::from(counter_us) })
    }

    #[test]
    fn an_rx1_downlink_is_sent_at_its_counter_time_with_the_boards_power_step() {
        let mut s = scheduler(true);
        let f = frame(1, 868_100_000, 7, 16, TxTiming::Counter(1_000 * MS));
        assert_eq!(s.admit(&f, clock(0)), Ok(1_000 * MS));
        assert_eq!(s.due(900 * MS), None);
        let Some(Due::Send(h)) = s.due(970 * MS) else { panic!("not due") };
        let r = h.item;
        assert_eq!((r.count_us, r.immediate, r.rf_chain, r.frequency), (1_000 * MS, false, 0, 868_100_000));
        // 16 dBm EIRP with a 2 dBi antenna: the 14 dBm step.
        assert_eq!(r.rf_power, 14);
        assert_eq!((r.preamble, r.crc, r.invert_polarity), (8, false, true));
    }

    #[test]
    fn answers_each_refusal_with_its_status() {
        let mut s = scheduler(true);
        let now = clock(0);
        let f = |freq, power, timing| frame(9, freq, 9, power, timing);
        assert_eq!(s.admit(&f(868_100_000, 14, TxTiming::GpsEpoch(1)), now), Err(TxStatus::GpsUnlocked));
        assert_eq!(s.admit(&f(868_100_000, 14, TxTiming::Counter(20 * MS)), now), Err(TxStatus::TooLate));
        assert_eq!(
            s.admit(&f(868_100_000, 14, TxTiming::Counter(31_000 * MS)), now),
            Err(TxStatus::TooEarly)
        );
        assert_eq!(
            s.admit(&f(870_100_000, 14, TxTiming::Counter(1_000 * MS)), now),
            Err(TxStatus::TxFrequency)
        );
        assert_eq!(
            s.admit(&f(868_650_000, 14, TxTiming::Counter(1_000 * MS)), now),
            Err(TxStatus::TxFrequency)
        );
        assert_eq!(s.admit(&f(868_100_000, 17, TxTiming::Counter(1_000 * MS)), now), Err(TxStatus::TxPower));
        assert_eq!(s.admit(&f(869_525_000, 27, TxTiming::Counter(1_000 * MS)), now), Ok(1_000 * MS));
        assert_eq!(
            s.admit(&f(868_100_000, 14, TxTiming::Counter(1_100 * MS)), now),
            Err(TxStatus::CollisionPacket)
        );
        assert_eq!(
            s.admit(&f(868_100_000, 14, TxTiming::Counter(5_000 * MS)), None),
            Err(TxStatus::InternalError)
        );
        let mut wrong_board = f(868_100_000, 14, TxTiming::Counter(5_000 * MS));
        wrong_board.board = 1;
        assert_eq!(s.admit(&wrong_board, now), Err(TxStatus::InternalError));
    }

    #[test]
    fn a_sub_band_out_of_duty_cycle_refuses_until_the_hour_has_passed() {
        let mut s = scheduler(true);
        // SF12 frames of 20 bytes take ~1.3 s: g1 (1 %, 36 s an hour) holds 27 of them.
        let mut accepted = 0;
        let mut t: u32 = 0;
        let refused = loop {
            let f = frame(accepted, 868_300_000, 12, 14, TxTiming::Counter(t + 1_000 * MS));
            match s.admit(&f, clock(t)) {
                Ok(_) => accepted += 1,
                Err(status) => break status,
            }
            while let Some(Due::Send(_)) = s.due(t + 970 * MS) {}
            t += 10_000 * MS;
        };
        assert_eq!(refused, TxStatus::DutyCycleOverflow);
        assert_eq!(accepted, 27);
        // Another sub-band still has its own budget.
        let rx2 = frame(99, 869_525_000, 12, 14, TxTiming::Counter(t + 1_000 * MS));
        assert_eq!(s.admit(&rx2, clock(t)), Ok(t + 1_000 * MS));
    }

    #[test]
    fn without_enforcement_the_duty_cycle_is_not_counted() {
        let mut s = scheduler(false);
        let mut t: u32 = 0;
        for i in 0..40 {
            let f = frame(i, 868_300_000, 12, 14, TxTiming::Counter(t + 1_000 * MS));
            assert_eq!(s.admit(&f, clock(t)), Ok(t + 1_000 * MS), "frame {i}");
            while let Some(Due::Send(_)) = s.due(t + 970 * MS) {}
            t += 10_000 * MS;
        }
    }

    #[test]
    fn a_refused_frame_books_no_airtime() {
        let mut s = scheduler(true);
        let first = frame(1, 868_300_000, 12, 14, TxTiming::Counter(1_000 * MS));
        assert!(s.admit(&first, clock(0)).is_ok());
        // Collides: refused, and must not eat g1's budget.
        for i in 0..100 {
            let f = frame(i, 868_300_000, 12, 14, TxTiming::Counter(1_500 * MS));
            assert_eq!(s.admit(&f, clock(0)), Err(TxStatus::CollisionPacket));
        }
        assert_eq!(s.waiting(), 1);
        let later = frame(2, 868_300_000, 12, 14, TxTiming::Counter(5_000 * MS));
        assert!(s.admit(&later, clock(0)).is_ok());
    }

    #[test]
    fn power_below_the_table_uses_its_lowest_step_and_above_the_sub_band_is_refused() {
        let mut s = scheduler(true);
        let low = frame(1, 868_100_000, 7, 2, TxTiming::Immediately);
        assert_eq!(s.admit(&low, clock(0)).map(|_| ()), Ok(()));
        let Some(Due::Send(h)) = s.due(0) else { panic!("immediate frame not due") };
        assert_eq!((h.item.rf_power, h.item.immediate), (12, true));
        // 12 dBm + 2 dBi = 14 dBm EIRP: fine in g1. With a 6 dBi antenna it would be 18.
        let mut loud = scheduler(true);
        loud.tx.antenna_gain_dbi = 6;
        assert_eq!(
            loud.admit(&frame(2, 868_100_000, 7, 8, TxTiming::Immediately), clock(0)),
            Err(TxStatus::TxPower)
        );
    }

    #[test]
    fn a_receive_only_gateway_refuses_every_downlink() {
        let mut s = scheduler(true);
        s.tx.rf_chain = None;
        let f = frame(1, 868_100_000, 7, 14, TxTiming::Immediately);
        assert_eq!(s.admit(&f, clock(0)), Err(TxStatus::TxFrequency));
    }
}
