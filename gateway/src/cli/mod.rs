//! Command-line tools of the `berrygw` binary: `decode` and `identity` work
//! in-process; `api` asks the running daemon over its local API socket (`status`,
//! `reload`, `actuate`, `points`, `audit`), `availability` too (`availability`,
//! `maintenance`). They sit above everything else: they
//! load the configuration and use the modules it configures, and nothing imports
//! them but `main.rs`.

pub mod api;
pub mod availability;
pub mod decode;
pub mod identity;
