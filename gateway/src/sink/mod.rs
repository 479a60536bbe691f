//! Sinks: where records go after the journal. Each sink reads its own
//! journal and acknowledges records only when the far side has them.
//! `chirpstack` is the protocol (topics and messages), `mqtt` the connection,
//! `tls` the certificate handling shared by MQTT sinks.

pub mod chirpstack;
pub mod mqtt;
pub mod semtech_udp;
pub mod tls;
