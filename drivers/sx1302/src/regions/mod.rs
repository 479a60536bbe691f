//! Region channel plans as data: which channels the concentrator listens on,
//! where its two radios are centred, and the rules a transmission must obey
//! (frequency range, regulatory sub-bands with their power and duty-cycle
//! limits). One file per region; a region name resolves once, here.

use crate::config::{FskChannel, LoraServiceChannel};

pub mod eu868;

/// A region's channel plan and transmit rules.
#[derive(Debug, PartialEq)]
pub struct RegionPlan {
    /// The name used in `[radio.sx1302] region = "..."`.
    pub name: &'static str,
    /// Centre frequencies of RF chains 0 and 1, Hz.
    pub rf_chain_frequencies: [u32; 2],
    /// Multi-SF LoRa channels (125 kHz), Hz.
    pub multi_sf_channels: &'static [u32],
    pub lora_service: Option<LoraServiceChannel>,
    pub fsk: Option<FskChannel>,
    /// Lowest and highest frequency a transmission may occupy, Hz.
    pub tx_frequency_min: u32,
    pub tx_frequency_max: u32,
    /// Regulatory sub-bands; a transmission must lie wholly inside one.
    pub sub_bands: &'static [SubBand],
}

/// A regulatory sub-band and its limits.
#[derive(Debug, PartialEq, Eq)]
pub struct SubBand {
    /// ETSI's name ("g1").
    pub name: &'static str,
    pub min_hz: u32,
    pub max_hz: u32,
    /// Share of any hour a gateway may transmit in it, in thousandths; `None` if unlimited.
    pub duty_cycle_permille: Option<u16>,
    /// Highest EIRP allowed, dBm.
    pub max_eirp_dbm: i8,
}

impl RegionPlan {
    /// The sub-band (and its index) that wholly holds a transmission on
    /// `frequency` with `bandwidth` Hz, if any.
    pub fn sub_band(&self, frequency: u32, bandwidth: u32) -> Option<(usize, &'static SubBand)> {
        let half = bandwidth / 2;
        let (low, high) = (frequency.checked_sub(half)?, frequency.checked_add(half)?);
        if low < self.tx_frequency_min || high > self.tx_frequency_max {
            return None;
        }
        self.sub_bands.iter().enumerate().find(|(_, b)| low >= b.min_hz && high <= b.max_hz)
    }
}

/// Every region berrygw knows.
pub const REGIONS: &[&RegionPlan] = &[&eu868::PLAN];

/// The region called `name` (case-insensitive).
pub fn find(name: &str) -> Option<&'static RegionPlan> {
    REGIONS.iter().copied().find(|r| r.name.eq_ignore_ascii_case(name))
}

/// The known region names, for error messages.
pub fn names() -> String {
    REGIONS.iter().map(|r| r.name).collect::<Vec<_>>().join(", ")
}
