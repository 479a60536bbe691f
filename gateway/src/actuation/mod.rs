//! Field-device actuation: the engine every command goes through (`engine`), the
//! `[field]` configuration and pollers (`field`), what a command must prove before it
//! may move equipment, and the record of every attempt. `envelope` parses and checks signed central commands,
//! `gate` is the door every central message passes before anything is stored (parse,
//! signature, counted refusals), `keys` is `/etc/berrygw/authorized_keys`, `replay` the
//! persisted window of command ids already seen, `audit` the durable log of every attempt
//! from any source. Argument bounds
//! and interlocks are not here: the Modbus profile engine (`berrygw-modbus`) checks them.

pub mod audit;
pub mod engine;
pub mod envelope;
pub mod field;
pub mod gate;
pub mod keys;
pub mod replay;

/// Longest `id`, `key_id`, `gateway_id`, `target` or `command` of a command, in bytes.
pub const MAX_NAME_BYTES: usize = 128;
