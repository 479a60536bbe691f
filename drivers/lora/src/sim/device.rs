//! A virtual device while the radio runs: its own random stream (seeded from the
//! radio's seed and its place in the list, so its readings do not depend on how
//! uplinks interleave), where it stands (an active session with its frame counter, or
//! an OTAA device sending JoinRequests), the next frame it puts on air, and the
//! JoinAccept that makes it join.

use rand::rngs::StdRng;
use tracing::info;

use super::config::{SimDevice, SimOtaa};
use super::telemetry::Telemetry;
use crate::phy::{build_data_uplink, DataUplink};
use crate::radio::RadioError;
use crate::security::{build_join_request, derive_session_keys, open_join_accept, SessionKeys};

/// The random stream of device `index`, independent of how uplinks interleave.
pub(super) fn device_seed(seed: u64, index: usize) -> u64 {
    seed.wrapping_add((index as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// A device while the radio runs.
pub(super) struct DeviceRun {
    pub(super) config: SimDevice,
    pub(super) state: DeviceState,
    pub(super) telemetry: Telemetry,
    pub(super) rng: StdRng,
    /// Data uplinks sent (what `count` limits).
    pub(super) sent: u64,
    /// Mean RSSI at this gateway (the device's distance), dBm.
    pub(super) rssi_base: i16,
}

/// Where a device stands; the session stays inside the radio.
#[derive(Clone, Copy, Debug)]
pub(super) enum DeviceState {
    /// Sends data with this session; `fcnt` goes into the next uplink.
    Active { keys: SessionKeys, fcnt: u32 },
    /// OTAA, not joined yet: `next_dev_nonce` goes into the next JoinRequest;
    /// `pending` is the DevNonce of the last one sent, which a JoinAccept answers.
    Joining { otaa: SimOtaa, next_dev_nonce: u16, pending: Option<u16> },
}

/// What a device just put on air, for the log and the counters.
#[derive(Clone, Copy, Debug)]
pub(super) enum Sent {
    JoinRequest { dev_nonce: u16 },
    Data { fcnt: u32 },
}

impl DeviceRun {
    pub(super) fn done(&self) -> bool {
        self.config.count.is_some_and(|c| self.sent >= c)
    }

    /// The next frame: a JoinRequest while joining, a data uplink once active.
    pub(super) fn next_phy_payload(&mut self) -> Result<(Vec<u8>, Sent), RadioError> {
        match &mut self.state {
            DeviceState::Joining { otaa, next_dev_nonce, pending } => {
                let dev_nonce = *next_dev_nonce;
                *pending = Some(dev_nonce);
                *next_dev_nonce = dev_nonce.wrapping_add(1);
                let phy = build_join_request(otaa.join_eui, otaa.dev_eui, dev_nonce, &otaa.app_key);
                Ok((phy, Sent::JoinRequest { dev_nonce }))
            }
            DeviceState::Active { keys, fcnt } => {
                let payload = self.telemetry.next_payload(&mut self.rng);
                let sent = *fcnt;
                // The 32-bit counter wraps like a device's; only its low 16 bits go on air.
                *fcnt = fcnt.wrapping_add(1);
                let phy = build_data_uplink(
                    &DataUplink {
                        dev_addr: keys.dev_addr,
                        fcnt: sent,
                        confirmed: self.config.confirmed,
                        adr: true,
                        f_port: self.config.f_port,
                        payload: &payload,
                    },
                    &keys.nwk_s_key,
                    &keys.app_s_key,
                )
                .map_err(|e| RadioError::Failed(format!("sim device {:?}: {e}", self.config.name)))?;
                Ok((phy, Sent::Data { fcnt: sent }))
            }
        }
    }

    /// Tries a downlink as the JoinAccept this device waits for; true when
    /// it opened with the AppKey and the device joined.
    pub(super) fn try_join(&mut self, phy_payload: &[u8]) -> bool {
        let DeviceState::Joining { otaa, pending: Some(dev_nonce), .. } = self.state else {
            return false;
        };
        let Ok(accept) = open_join_accept(phy_payload, &otaa.app_key) else {
            return false;
        };
        let keys = derive_session_keys(&otaa.app_key, &accept, dev_nonce);
        info!(
            device = %self.config.name,
            dev_eui = %otaa.dev_eui,
            dev_addr = %keys.dev_addr,
            dev_nonce,
            "sim radio: device joined"
        );
        self.state = DeviceState::Active { keys, fcnt: 0 };
        true
    }
}

/// Salt for the stream that draws a device's first DevNonce, apart from its
/// telemetry stream so that joining does not change the readings it sends.
pub(super) const DEV_NONCE_SALT: u64 = 0x6a6f_696e_6e6f_6e63;
