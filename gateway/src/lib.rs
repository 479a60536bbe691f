//! berrygw, the LoRaWAN gateway runtime: the library behind the `berrygw`
//! binary. `pipeline` wires a radio source through filters into per-sink
//! durable journals and out through the sinks; `config` is the file format and
//! the resolved site; `demo` and `bench` run the same pipeline against an
//! embedded broker; `metrics`, `status` and `api` tell people how it is doing,
//! `health` and `identity` what the centre knows of it (with `berrygw-proto`).
//! See ARCHITECTURE.md at the repository root for the code map.

pub mod actuation;
pub mod api;
pub mod automation;
pub mod bench;
pub mod bundle;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod decode;
pub mod demo;
pub mod events;
pub mod health;
pub mod identity;
pub mod ledger;
pub mod metrics;
pub mod period;
pub mod pipeline;
pub mod service;
pub mod sink;
pub mod status;
pub mod view;

/// The durable stores, a crate of their own (`berrygw-journal`).
pub use berrygw_journal as journal;
pub use berrygw_journal::{seq, state_db};
/// The rules engine, a crate of its own (`berrygw-rules`); the task feeding it is `automation`.
pub use berrygw_rules as rules;
