//! LoRaWAN 1.0.x PHYPayload as a gateway sees it: the identifiers (`DevAddr`,
//! `Eui64`, `AesKey`), a parser that reads the clear-text headers of any frame
//! heard over the air without ever panicking, and the 1.0.x session crypto
//! (build an encrypted uplink, verify its MIC and decrypt it) used by the
//! simulator, by tests and by `security` (which adds frame counters and the
//! OTAA join). It is not a network server: no MAC command handling, no
//! LoRaWAN 1.1 key hierarchy.
//!
//! Files: `ids.rs` (the identifiers and keys, read and written as hex), `parser.rs`
//! (message types and the parser of clear-text headers), `crypto.rs` (building a data
//! uplink, checking its MIC and decrypting it). This file holds the frame lengths
//! they share.

mod crypto;
mod ids;
mod parser;
#[cfg(test)]
mod tests;

pub(crate) use crypto::open_data;
pub use crypto::{build_data_uplink, verify_and_decrypt, CryptoError, DataUplink};
pub use ids::{AesKey, DevAddr, Eui64, HexError};
pub(crate) use parser::data_layout;
pub use parser::{parse, DataFrame, FCtrl, JoinRequest, MType, PhyError, PhyFrame, RejoinRequest};

/// Length of the MHDR.
const MHDR_LEN: usize = 1;
/// Length of the MIC.
const MIC_LEN: usize = 4;
/// DevAddr + FCtrl + FCnt: the FHDR without FOpts.
const FHDR_MIN_LEN: usize = 7;
/// MHDR + JoinEUI + DevEUI + DevNonce + MIC.
const JOIN_REQUEST_LEN: usize = 23;
/// Encrypted JoinAccept without CFList.
const JOIN_ACCEPT_LEN: usize = 17;
/// Encrypted JoinAccept with CFList.
const JOIN_ACCEPT_CFLIST_LEN: usize = 33;
/// RejoinRequest types 0 and 2: MHDR + type + NetID + DevEUI + RJcount0 + MIC.
const REJOIN_0_2_LEN: usize = 19;
/// RejoinRequest type 1: MHDR + type + JoinEUI + DevEUI + RJcount1 + MIC.
const REJOIN_1_LEN: usize = 24;
/// Largest PHYPayload a LoRa modem sends or receives.
pub const MAX_PHY_PAYLOAD_LEN: usize = 255;
/// Largest FRMPayload a 1.0.x data frame can carry (MACPayload 250 − FHDR 7 − FPort 1).
pub const MAX_FRM_PAYLOAD_LEN: usize = 242;
