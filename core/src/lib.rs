//! What every part of berrygw shares, and nothing else: a configuration or data file error
//! located as a person reads the file (file, line, key) with the readers that check a file's
//! mode, the time formats of the wire and the logs, civil time from the system's TZif files
//! (cron rules and the availability ledger's days), a log rate limiter for hostile input,
//! and the /proc readers of the benchmarks. No crate of the workspace is imported here; every
//! crate may import this one.

pub mod error;
pub mod files;
pub mod log;
pub mod proc;
pub mod time;
pub mod tz;

pub use error::{locate, read_file, ConfigError, SourceFile};
pub use log::LogLimiter;
pub use time::{rfc3339_ms, unix_ms};
