//! What a berrygw gateway and the centre say to each other over the broker, shared
//! by the gateway (`berrygw`) and the central tool: the topics (`topics`), the
//! signed command envelope with its canonical bytes, signing and checks
//! (`envelope`), and the keys a gateway accepts commands from with their scope
//! (`keys`, `/etc/berrygw/authorized_keys`). Nothing here does I/O but reading
//! the keys file.

pub mod envelope;
pub mod keys;
pub mod sealed;
pub mod topics;

/// Longest `id`, `key_id`, `gateway_id`, `target` or `command` of a command, in bytes.
pub const MAX_NAME_BYTES: usize = 128;
