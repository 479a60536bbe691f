//! GWMP datagrams in both directions over arbitrary bytes: what a packet
//! forwarder sends the ingest (PUSH_DATA, PULL_DATA, TX_ACK) and what a network
//! server sends the Semtech UDP sink (PUSH_ACK, PULL_ACK, PULL_RESP). Each
//! parsed frame is converted the way the gateway converts it, then encoded again.
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use berrygw_lora::gwmp::codec::{Datagram, Packet, RxPk, TxPk};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok(datagram) = Datagram::parse(bytes) else { return };
    let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    match &datagram.packet {
        Packet::PushData { rxpk, .. } => {
            for p in rxpk {
                if let Ok((uplink, _)) = p.to_uplink(now) {
                    let _ = RxPk::from_uplink(&uplink);
                }
            }
        }
        Packet::PullResp { txpk } => {
            if let Ok(downlink) = txpk.to_downlink(7) {
                let _ = TxPk::from_downlink(&downlink);
            }
        }
        Packet::TxAck { ack, .. } => {
            let _ = ack.status();
        }
        _ => {}
    }
    let _ = datagram.encode();
});
