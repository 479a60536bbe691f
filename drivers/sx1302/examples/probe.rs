//! Brings up a concentrator and prints what it hears: a bench check of a
//! board, its SPI device and its reset lines, without the rest of berrygw.
//!
//! ```text
//! SX1302_HAL_DIR=... cargo run --release -p berrygw-sx1302 --features sx1302 \
//!     --example probe -- probe.toml 60
//! ```
//! `probe.toml` holds the keys of a `[radio.sx1302]` section (at least
//! `board = "rak2287"`); the number is how many seconds to listen (30 by default).

use std::time::Duration;

use berrygw_lora::{RadioIo, RadioSource};
use berrygw_sx1302::{Sx1302Config, Sx1302Radio};
use tokio::sync::mpsc;

fn main() {
    if let Err(e) = probe() {
        eprintln!("probe: {e}");
        std::process::exit(1);
    }
}

fn probe() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let path = args.next().ok_or("usage: probe <config.toml> [seconds]")?;
    let seconds: u64 =
        args.next().map(|s| s.parse().map_err(|e| format!("seconds: {e}"))).transpose()?.unwrap_or(30);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    let config: Sx1302Config = toml::from_str(&text).map_err(|e| format!("{path}: {e}"))?;

    let radio = Sx1302Radio::open(&config).map_err(|e| e.to_string())?;
    let status = radio.status();
    println!("started: {:?}", *status.borrow());

    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let (up_tx, mut uplinks) = mpsc::channel(64);
        let (_down_tx, downlinks) = mpsc::channel(1);
        let (ack_tx, _acks) = mpsc::channel(1);
        let io = RadioIo { uplinks: up_tx, downlinks, tx_acks: ack_tx, taken: None };
        let task = tokio::spawn(Box::new(radio).start(io));
        let deadline = tokio::time::sleep(Duration::from_secs(seconds));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                frame = uplinks.recv() => match frame {
                    Some(f) => println!(
                        "{} {:?} rssi {} snr {:.1} crc {:?} chan {} count_us {} {} bytes",
                        f.frequency,
                        f.modulation,
                        f.rssi,
                        f.snr,
                        f.crc,
                        f.channel,
                        f.counter_us,
                        f.phy_payload.len()
                    ),
                    None => break,
                },
                _ = &mut deadline => break,
            }
        }
        drop(uplinks);
        let result = task.await.map_err(|e| e.to_string())?;
        println!("stopped: {:?}", *status.borrow());
        result.map_err(|e| e.to_string())
    })
}
