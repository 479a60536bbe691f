//! The simulated radio: virtual devices (water meter, river level probe,
//! waste container, lighting cabinet) that send real, encrypted LoRaWAN 1.0.x
//! data uplinks on a schedule, and a transmitter that acknowledges every
//! downlink. ABP devices send data from the start; OTAA devices send
//! JoinRequests until a downlink opens as a JoinAccept with their AppKey,
//! then send data with the derived session keys. It lets the whole pipeline
//! run and be tested without a concentrator. It does not model airtime, duty
//! cycle, collisions, class A receive windows or join timing (any JoinAccept
//! heard while waiting counts), and never rejoins.
//!
//! Files: `config.rs` (the `[radio.sim]` table: devices, their kinds and activation,
//! its checks, and the four demo devices), `telemetry.rs` (what each kind of device
//! measures and how its readings evolve and are encoded), `device.rs` (a device while
//! the radio runs: its own random stream, ABP session or OTAA join, the next frame it
//! sends). This file holds the radio: its schedule of uplinks, the frames' channel and
//! signal levels, and the downlinks it answers (trying each as a JoinAccept).

mod config;
mod device;
mod telemetry;
#[cfg(test)]
mod tests;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, SystemTime};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;
use tracing::{debug, info};

use crate::frame::{CodeRate, CrcStatus, DownlinkFrame, Frequency, Modulation, TxAck, TxStatus, UplinkFrame};
use crate::radio::{RadioError, RadioIo, RadioSource, RadioTask};
use config::Activation;
use device::{device_seed, DeviceRun, DeviceState, Sent, DEV_NONCE_SALT};
use telemetry::Telemetry;

pub use config::{default_frequencies, example_devices, DeviceKind, SimConfig, SimDevice, SimError, SimOtaa};

/// The simulated radio; `start` runs it until the pipeline closes its channels.
#[derive(Clone, Debug)]
pub struct SimRadio {
    config: SimConfig,
}

impl SimRadio {
    /// A simulated radio for a configuration that passes `SimConfig::validate`.
    pub fn new(config: SimConfig) -> Result<SimRadio, SimError> {
        config.validate()?;
        Ok(SimRadio { config })
    }

    /// The configuration the radio runs.
    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    async fn run(self, io: RadioIo) -> Result<(), RadioError> {
        let RadioIo { uplinks, mut downlinks, tx_acks, .. } = io;
        let SimConfig { devices, frequencies, seed } = self.config;
        let seed = seed.unwrap_or_else(rand::random);
        info!(devices = devices.len(), seed, "sim radio: started");
        let mut rng = StdRng::seed_from_u64(seed);
        let start = Instant::now();

        let mut devices: Vec<DeviceRun> = devices
            .into_iter()
            .enumerate()
            .map(|(i, config)| {
                let mut device_rng = StdRng::seed_from_u64(device_seed(seed, i));
                // `new` validated the configuration; a refusal here is still reported, not trusted away.
                let state = match config.activation().map_err(|e| RadioError::Start(e.to_string()))? {
                    Activation::Abp(keys) => DeviceState::Active { keys, fcnt: config.first_fcnt },
                    Activation::Otaa(otaa) => DeviceState::Joining {
                        otaa,
                        next_dev_nonce: otaa.first_dev_nonce.unwrap_or_else(|| {
                            StdRng::seed_from_u64(device_seed(seed, i) ^ DEV_NONCE_SALT).gen()
                        }),
                        pending: None,
                    },
                };
                Ok(DeviceRun {
                    telemetry: Telemetry::new(config.kind, &mut device_rng),
                    config,
                    state,
                    rng: device_rng,
                    sent: 0,
                    rssi_base: rng.gen_range(-110..=-65),
                })
            })
            .collect::<Result<_, RadioError>>()?;
        // Next uplink of each device, earliest first. Devices start spread
        // over their first interval, then keep an absolute schedule so a
        // late wake-up is caught up and rates hold (tokio's Burst behaviour).
        let mut due: BinaryHeap<Reverse<(Instant, usize)>> = BinaryHeap::new();
        for (i, d) in devices.iter().enumerate() {
            if !d.done() {
                let offset = rng.gen_range(0..d.config.interval_ms);
                due.push(Reverse((start + Duration::from_millis(offset), i)));
            }
        }

        let mut total: u64 = 0;
        let mut announced_done = false;
        let mut downlinks_open = true;
        loop {
            if due.is_empty() {
                if !announced_done {
                    info!("sim radio: all devices done ({total} uplinks)");
                    announced_done = true;
                }
                if !downlinks_open {
                    return Ok(());
                }
            }
            let next = due.peek().map(|Reverse((at, _))| *at);
            tokio::select! {
                biased;
                () = uplinks.closed() => return Ok(()),
                downlink = downlinks.recv(), if downlinks_open => match downlink {
                    Some(downlink) => {
                        // The first device waiting whose AppKey opens it joins; the rest keep trying.
                        let on_time = matches!(
                            downlink.timing.status_at(start.elapsed().as_micros() as u32, SystemTime::now()),
                            TxStatus::Ok
                        );
                        for device in devices.iter_mut().filter(|_| on_time) {
                            if device.try_join(&downlink.phy_payload) {
                                break;
                            }
                        }
                        // Counted like the SX1302's: microseconds since start, wrapping at 32 bits.
                        let counter_now = start.elapsed().as_micros() as u32;
                        acknowledge(&downlink, downlink.timing.status_at(counter_now, SystemTime::now()), &tx_acks).await;
                    }
                    None => downlinks_open = false,
                },
                () = tokio::time::sleep_until(next.unwrap_or(start)), if next.is_some() => {
                    let Some(Reverse((at, i))) = due.pop() else { continue };
                    // `i` came from enumerating `devices`, which never shrinks.
                    let device = &mut devices[i];
                    let (phy_payload, sent) = device.next_phy_payload()?;
                    let channel = rng.gen_range(0..frequencies.len());
                    let rssi = device.rssi_base + rng.gen_range(-5..=5);
                    // SNR follows RSSI from -5 dB near sensitivity to +10 dB close by,
                    // in the concentrator's 0.25 dB steps.
                    let snr = (f32::from(rssi + 115) * 15.0 / 55.0 - 5.0 + rng.gen_range(-1.5..=1.5))
                        .clamp(-5.0, 10.0);
                    let frame = UplinkFrame {
                        phy_payload,
                        frequency: Frequency(frequencies[channel]),
                        modulation: Modulation::Lora {
                            spreading_factor: device.config.spreading_factor,
                            bandwidth: 125_000,
                            code_rate: CodeRate::Cr4_5,
                        },
                        rssi,
                        snr: (snr * 4.0).round() / 4.0,
                        crc: CrcStatus::Ok,
                        channel: u8::try_from(channel).unwrap_or(u8::MAX),
                        rf_chain: 0,
                        board: 0,
                        // Wraps every ~71.6 minutes, like the SX1302 counter.
                        counter_us: start.elapsed().as_micros() as u32,
                        received_at: SystemTime::now(),
                    };
                    match sent {
                        Sent::Data { fcnt } => {
                            debug!(device = %device.config.name, fcnt, frequency = %frame.frequency, "sim radio: uplink");
                        }
                        Sent::JoinRequest { dev_nonce } => {
                            debug!(device = %device.config.name, dev_nonce, frequency = %frame.frequency, "sim radio: join request");
                        }
                    }
                    if uplinks.send(frame).await.is_err() {
                        return Ok(());
                    }
                    if matches!(sent, Sent::Data { .. }) {
                        device.sent += 1;
                    }
                    total += 1;
                    if !device.done() {
                        due.push(Reverse((at + Duration::from_millis(device.config.interval_ms), i)));
                    }
                }
            }
        }
    }
}

/// Pretends to transmit a downlink when its timing allows, and answers.
async fn acknowledge(downlink: &DownlinkFrame, status: TxStatus, tx_acks: &tokio::sync::mpsc::Sender<TxAck>) {
    if status == TxStatus::Ok {
        info!(
            downlink_id = downlink.downlink_id,
            frequency = %downlink.frequency,
            bytes = downlink.phy_payload.len(),
            "sim radio: downlink transmitted (simulated)"
        );
    } else {
        info!(downlink_id = downlink.downlink_id, ?status, "sim radio: downlink refused, not transmitted");
    }
    let ack = TxAck { downlink_id: downlink.downlink_id, status };
    if tx_acks.send(ack).await.is_err() {
        debug!("sim radio: nobody listens for tx acks any more");
    }
}

impl RadioSource for SimRadio {
    fn kind(&self) -> &'static str {
        "sim"
    }

    fn start(self: Box<Self>, io: RadioIo) -> RadioTask {
        Box::pin(self.run(io))
    }
}
