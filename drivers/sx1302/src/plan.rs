//! A receive channel plan from outside `[radio.sx1302]` (a Basics Station
//! LNS's `router_config`), put in place of the configuration's channels, and
//! the `Tuner` that has the owner thread restart the concentrator on it.
//!
//! Only the channels change: board, power tables, GPIO lines, duty-cycle
//! enforcement and health rules stay the operator's. The radios' centres are
//! the plan's when it gives them; otherwise the configured ones are kept when
//! every channel fits them, else each radio is centred on the channels it
//! takes, in frequency order (each hears ±800 kHz).

use std::sync::{mpsc, Arc};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::config::{FskChannel, LoraServiceChannel, Setting, Sx1302Config};
use crate::setup::{
    fsk_bandwidth_hz, ConcentratorSetup, ConfigError, IF_HALF_SPAN_HZ, MULTI_SF_BANDWIDTH_HZ,
};

/// The receive channels a network server asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelPlan {
    /// Multi-SF LoRa channels (125 kHz), Hz.
    pub multi_sf: Vec<u32>,
    /// The single-SF LoRa channel, if any.
    pub lora_service: Option<LoraServiceChannel>,
    /// The FSK channel, if any.
    pub fsk: Option<FskChannel>,
    /// The radios' centres, Hz, where the plan sets them.
    #[serde(default)]
    pub centres: [Option<u32>; 2],
}

impl ChannelPlan {
    /// `base` with this plan's channels in place of its own, resolved and checked as
    /// the configuration is. The error names what the SX1302 cannot do.
    pub fn setup(&self, base: &Sx1302Config) -> Result<ConcentratorSetup, ConfigError> {
        let mut config = self.config(base);
        match ConcentratorSetup::resolve(&config) {
            Ok(s) => Ok(s),
            Err(e) if self.centres.iter().all(Option::is_some) => Err(e),
            Err(_) => {
                // The configured centres do not reach every channel: centre the radios
                // on the plan's channels.
                let [c0, c1] = self.place()?;
                if let Some(c0) = self.centres[0].or(c0) {
                    config.radio_0.frequency = Some(c0);
                    // A radio with nothing of its own to hear sits beside the other.
                    config.radio_1.frequency = Some(self.centres[1].or(c1).unwrap_or(c0));
                }
                ConcentratorSetup::resolve(&config)
            }
        }
    }

    /// `base` with this plan's channels (and centres, where it has them).
    pub fn config(&self, base: &Sx1302Config) -> Sx1302Config {
        let mut c = base.clone();
        c.multi_sf_channels = Some(self.multi_sf.clone());
        c.lora_service = Some(self.lora_service.map_or(Setting::Off(crate::config::Off::None), Setting::On));
        c.fsk = Some(self.fsk.map_or(Setting::Off(crate::config::Off::None), Setting::On));
        if let Some(f) = self.centres[0] {
            c.radio_0.frequency = Some(f);
        }
        if let Some(f) = self.centres[1] {
            c.radio_1.frequency = Some(f);
        }
        c
    }

    /// Centres for the two radios: the channels in frequency order, radio 0 taking as
    /// many as fit in its span, radio 1 the rest; `None` for a radio with nothing to hear.
    fn place(&self) -> Result<[Option<u32>; 2], ConfigError> {
        let mut edges: Vec<(u32, u32)> = self
            .multi_sf
            .iter()
            .map(|&f| (f, MULTI_SF_BANDWIDTH_HZ))
            .chain(self.lora_service.map(|c| (c.frequency, c.bandwidth)))
            .chain(self.fsk.map(|c| (c.frequency, fsk_bandwidth_hz(&c))))
            .map(|(f, bw)| (f.saturating_sub(bw / 2), f.saturating_add(bw / 2)))
            .collect();
        edges.sort_unstable();
        let mut centres = [None, None];
        let mut rest = edges.as_slice();
        for centre in &mut centres {
            let Some(&(low, _)) = rest.first() else { break };
            let taken = rest.iter().take_while(|(_, high)| high - low <= 2 * IF_HALF_SPAN_HZ).count();
            let high = rest[..taken].iter().map(|e| e.1).max().unwrap_or(low);
            *centre = Some(low + (high - low) / 2);
            rest = &rest[taken..];
        }
        if let (Some(first), Some(last)) = (edges.first(), edges.last()) {
            if !rest.is_empty() {
                return Err(ConfigError::Invalid {
                    key: "channels".into(),
                    reason: format!(
                        "the plan spans {:.3}–{:.3} MHz; the SX1302's two radios hear {:.1} MHz each",
                        f64::from(first.0) / 1e6,
                        f64::from(last.1) / 1e6,
                        f64::from(2 * IF_HALF_SPAN_HZ) / 1e6
                    ),
                });
            }
        }
        Ok(centres)
    }
}

/// What a retune did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The concentrator already ran this plan: nothing was restarted.
    Unchanged,
    /// The concentrator was stopped and started on the plan.
    Retuned,
}

/// A retune for the owner thread: the checked setup, who asks, where to answer.
// Read by the owner thread, which a build without a HAL does not have.
#[cfg_attr(not(any(feature = "sx1302", feature = "hal-double")), allow(dead_code))]
pub(crate) struct Retune {
    pub setup: ConcentratorSetup,
    pub from: String,
    pub reply: oneshot::Sender<Result<Applied, String>>,
}

/// Puts a channel plan on a running concentrator (`Sx1302Radio::tuner`). Cloned freely.
#[derive(Clone, Debug)]
pub struct Tuner {
    /// The operator's `[radio.sx1302]`: every plan goes over it, not over the last plan.
    base: Arc<Sx1302Config>,
    tx: mpsc::Sender<Retune>,
}

impl Tuner {
    pub(crate) fn new(base: Sx1302Config, tx: mpsc::Sender<Retune>) -> Tuner {
        Tuner { base: Arc::new(base), tx }
    }

    /// Restarts the concentrator on `plan` (asked by `from`, shown in its status) unless
    /// it runs it already. A plan the SX1302 cannot run is refused before anything
    /// stops; one that fails to start puts the concentrator back on the plan it had.
    /// The concentrator is deaf for the restart (about a second).
    pub async fn apply(&self, plan: &ChannelPlan, from: &str) -> Result<Applied, String> {
        let setup = plan.setup(&self.base).map_err(|e| e.to_string())?;
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Retune { setup, from: from.to_string(), reply })
            .map_err(|_| "the concentrator thread has stopped".to_string())?;
        answer.await.map_err(|_| "the concentrator thread ended without an answer".to_string())?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lora_channels(s: &ConcentratorSetup) -> Vec<u32> {
        s.lora_channels()
    }

    /// Semtech's six-channel EU868 test plan, as `upchannels` gives it (no centres).
    fn six() -> ChannelPlan {
        ChannelPlan {
            multi_sf: vec![868_100_000, 868_300_000, 868_500_000, 868_850_000, 869_050_000, 869_525_000],
            ..ChannelPlan::default()
        }
    }

    #[test]
    fn a_plan_the_configured_centres_reach_keeps_them() {
        let base = Sx1302Config::for_board("rak2287");
        let plan =
            ChannelPlan { multi_sf: vec![867_100_000, 868_100_000, 868_500_000], ..Default::default() };
        let s = plan.setup(&base).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((s.rf_chains[0].frequency, s.rf_chains[1].frequency), (867_500_000, 868_500_000));
        assert_eq!(lora_channels(&s), vec![867_100_000, 868_100_000, 868_500_000]);
        assert_eq!((s.lora_service, s.fsk), (None, None), "what the plan lacks is switched off");
        // The rest is the operator's.
        let configured = ConcentratorSetup::resolve(&base).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((s.tx, s.reset, s.health), (configured.tx, configured.reset, configured.health));
    }

    #[test]
    fn radios_are_centred_on_a_plan_out_of_their_reach() {
        let s = six().setup(&Sx1302Config::for_board("rak2287")).unwrap_or_else(|e| panic!("{e}"));
        // 868.0375–869.5875 MHz fits radio 0 (1.55 MHz); radio 1 sits beside it.
        assert_eq!((s.rf_chains[0].frequency, s.rf_chains[1].frequency), (868_812_500, 868_812_500));
        assert_eq!(lora_channels(&s), six().multi_sf);
        for c in &s.multi_sf {
            let centre = s.rf_chains[usize::from(c.rf_chain)].frequency;
            assert!(c.frequency.abs_diff(centre) + 62_500 <= IF_HALF_SPAN_HZ, "{c:?}");
        }
    }

    #[test]
    fn channels_beyond_one_radios_span_go_to_the_other() {
        let plan = ChannelPlan {
            multi_sf: vec![867_100_000, 867_300_000, 868_100_000, 868_500_000, 869_525_000],
            ..Default::default()
        };
        let s = plan.setup(&Sx1302Config::for_board("rak2287")).unwrap_or_else(|e| panic!("{e}"));
        // 867.0375–868.5625 MHz on radio 0; 869.4625–869.5875 MHz on radio 1.
        assert_eq!((s.rf_chains[0].frequency, s.rf_chains[1].frequency), (867_800_000, 869_525_000));
        assert_eq!(lora_channels(&s), plan.multi_sf);
    }

    #[test]
    fn the_plans_own_centres_are_used() {
        let mut plan = six();
        plan.centres = [Some(868_475_000), Some(869_287_500)];
        let s = plan.setup(&Sx1302Config::for_board("rak2287")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((s.rf_chains[0].frequency, s.rf_chains[1].frequency), (868_475_000, 869_287_500));
        // Centres that cannot reach a channel are the plan's mistake: said, not repaired.
        plan.centres = [Some(867_000_000), Some(867_500_000)];
        let e = plan.setup(&Sx1302Config::for_board("rak2287")).err().map(|e| e.to_string());
        assert!(e.unwrap_or_default().contains("out of reach of both radios"));
    }

    #[test]
    fn what_the_sx1302_cannot_hear_is_refused_with_why() {
        let base = Sx1302Config::for_board("rak2287");
        let wide =
            ChannelPlan { multi_sf: vec![863_100_000, 866_000_000, 869_900_000], ..Default::default() };
        let e = wide.setup(&base).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("the plan spans 863.038–869.96"), "{e}");
        let many = ChannelPlan {
            multi_sf: (0..9).map(|i| 867_100_000 + i * 100_000).collect(),
            ..Default::default()
        };
        let e = many.setup(&base).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("9 channels given, the SX1302 has 8"), "{e}");
    }

    #[test]
    fn service_and_fsk_channels_are_placed_with_their_bandwidth() {
        let plan = ChannelPlan {
            multi_sf: vec![868_100_000, 868_300_000, 868_500_000],
            lora_service: Some(LoraServiceChannel {
                frequency: 868_300_000,
                bandwidth: 250_000,
                spreading_factor: 7,
            }),
            fsk: Some(FskChannel { frequency: 868_800_000, datarate: 50_000, frequency_deviation: 25_000 }),
            centres: [None, None],
        };
        let s = plan.setup(&Sx1302Config::for_board("rak2287")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.lora_service.map(|(_, c)| c.bandwidth), Some(250_000));
        assert_eq!(s.fsk.map(|(i, _)| i.frequency), Some(868_800_000));
        assert_eq!(lora_channels(&s), vec![868_100_000, 868_300_000, 868_500_000]);
    }
}
