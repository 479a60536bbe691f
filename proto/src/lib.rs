//! What a berrygw gateway and the centre say to each other over the broker, shared
//! by the gateway (`berrygw`) and the central tool: the topics (`topics`), what
//! became of a command (`audit`, the result event), the
//! signed command envelope with its canonical bytes, signing and checks
//! (`envelope`), the keys a gateway accepts commands from with their scope
//! (`keys`, `/etc/berrygw/authorized_keys`), secrets sealed to a gateway's identity
//! (`sealed`), the identity each gateway announces (`identity`) and signed
//! configuration bundles (`bundle`). Nothing here
//! does I/O but reading the keys file and the TLS files; `broker` and `tls` are how
//! both ends reach the broker.

pub mod audit;
pub mod availability;
pub mod broker;
pub mod bundle;
pub mod envelope;
pub mod health;
pub mod identity;
pub mod keys;
pub mod sealed;
pub mod session;
pub mod site;
pub mod tls;
pub mod topics;

/// Longest `id`, `key_id`, `gateway_id`, `target` or `command` of a command, in bytes.
pub const MAX_NAME_BYTES: usize = 128;
