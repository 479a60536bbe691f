//! Sinks: where records go after the journal. Each sink reads its own
//! journal and acknowledges records only when the far side has them.
//! `chirpstack` is the protocol (topics and messages), `mqtt` the connection,
//! `semtech_udp` the GWMP client, `tls` the certificate handling shared by
//! MQTT sinks, `read_ahead` the journal window and reconnect backoff every
//! sink shares, `pace` the per-device pacing of a replayed backlog.

pub mod app;
pub mod chirpstack;
pub mod mqtt;
pub mod pace;
pub mod read_ahead;
pub mod semtech_udp;
pub mod tls;
