//! Semtech's UDP packet-forwarder protocol (GWMP). `codec` is the wire format and
//! its translation to our frame types, shared by both ends berrygw plays: the
//! `ingest` radio source (a local packet forwarder pushes to us) and the Semtech
//! UDP sink in the gateway crate (we push to a remote network server). No MQTT,
//! no journal here.

pub mod codec;
pub mod ingest;

pub use codec::{CodecError, Datagram, Packet, RxPk, Stat, TxPk, TxPkAck};
pub use ingest::{GwmpConfig, GwmpError, GwmpHandle, GwmpIngest, GwmpStats};
