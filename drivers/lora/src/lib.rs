//! The LoRa radio side of berrygw: the frame types that cross the radio
//! boundary, the `RadioSource` trait every radio implements (here the
//! simulated radio, `sim`, and the Semtech UDP packet-forwarder ingest,
//! `gwmp`; the SX1302 concentrator lives in `berrygw-sx1302`), LoRaWAN PHY
//! parsing, the uplink filters and LoRaWAN 1.0.x security for local decoding
//! (MIC, decryption, frame counters, OTAA join). Nothing here knows about
//! journals, sinks or MQTT.

pub mod filter;
pub mod frame;
pub mod gwmp;
pub mod phy;
pub mod radio;
pub mod security;
pub mod sim;
pub mod station;

pub use filter::{FilterConfig, Rejection, UplinkFilter};
pub use frame::{
    CodeRate, CrcStatus, DownlinkFrame, Frequency, Modulation, TxAck, TxStatus, TxTiming, UplinkFrame,
};
pub use phy::{AesKey, DevAddr, Eui64, MType, PhyError, PhyFrame};
pub use radio::{RadioError, RadioIo, RadioSource, Taken};
pub use security::{FCntError, SecurityError, SessionKeys, VerifiedUplink};
pub use sim::{SimConfig, SimRadio};
