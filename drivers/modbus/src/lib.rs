//! The Modbus side of berrygw: field equipment (needle dams, public-lighting cabinets,
//! energy meters) wired to the gateway over Modbus TCP or RTU (RS-485).
//!
//! - `profile`: device profiles (points, commands, interlocks) loaded from TOML;
//! - `profile::value` and `command`: pure decoding and safety rules, no I/O;
//! - `client`: one task per bus or connection, one request at a time, timeouts, reconnect;
//! - `poller`: per-device polling with backoff, published state, command execution;
//! - `sim`: simulators of the shipped profiles as Modbus TCP servers (tests, `berrygw demo`).
//!
//! Not here: signed commands, the local API, rules and the audit log (the gateway's).

pub mod client;
pub mod command;
pub mod poller;
pub mod profile;
pub mod sim;

pub use client::{Bus, BusCounters, BusOptions, CallError, Link, Parity, Reply, Request};
pub use command::{ArgValue, Refusal, RefusalReason, RegisterWrite, TypedArgs};
pub use poller::{CommandOutcome, Device, DeviceConfig, DeviceState, PollCounters, PollOutcome};
pub use profile::value::{self, PointValue, Points};
pub use profile::{CommandSpec, Point, PointKind, Profile, ProfileSet};
