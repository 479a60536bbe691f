//! The daemon's HTTP side and its clients. One HTTP listener (`[http] listen`)
//! serves three read-only GET routes, `/metrics`, `/` (the status page) and
//! `/api/status`; the local API socket (`[api] socket`) serves them too, and the
//! field tools' routes: `POST /api/reload` (device registry, keys, rules), `POST
//! /api/actuate` (a JSON body: target, command, args; the caller's uid goes to the
//! audit log), `GET /api/points/<device>` and `GET /api/audit?limit=N`. Reaching
//! the socket is enough to read; the two POST routes also need the caller in
//! `[api] operators`.
//!
//! `config` holds the two sections; `server` the listeners, `http` the HTTP/1.1
//! they speak, `routes` what each path answers, `operators` who may act;
//! `client` is the other end, used by the `berrygw status`, `reload`, `actuate`,
//! `points` and `audit` commands (`crate::cli::api`).
//!
//! The HTTP listener answers only requests whose `Host` (and `Origin`, when sent)
//! names this gateway: an IP literal, `localhost`, or one of `[http]
//! allowed_hosts`. A web page that rebinds its own DNS name to the gateway's
//! address therefore cannot read it from a browser.
//!
//! Neither listener is needed to keep uplinks safe: if one cannot be opened the
//! daemon says so at error level and keeps forwarding.

pub mod client;
mod config;
pub mod http;
pub mod operators;
mod routes;
mod server;

pub use config::{ApiSection, HttpSection, DEFAULT_API_SOCKET};
pub use server::{serve, Served};
