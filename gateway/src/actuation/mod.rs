//! Field-device actuation: the engine every command goes through (`engine`), the
//! `[field]` configuration and pollers (`field`), what a command must prove before it
//! may move equipment, and the record of every attempt. `gate` is the door every central
//! message passes before anything is stored (parse, signature with `berrygw_proto`'s
//! `envelope` and `keys`, counted refusals), `replay` the
//! persisted window of command ids already seen, `audit` the durable log of every attempt
//! from any source. Argument bounds
//! and interlocks are not here: the Modbus profile engine (`berrygw-modbus`) checks them.

pub mod audit;
pub mod engine;
pub mod field;
pub mod gate;
pub mod replay;
