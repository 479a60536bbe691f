//! Why a codec could not be loaded, and why one frame could not be decoded.
//!
//! A `DecodeError` is about one frame only: the codec stays usable for the next one.
//! Messages are written for the technician reading a log line; `label()` is for metrics.

use std::path::PathBuf;
use std::time::Duration;

/// Why one frame could not be decoded. The codec itself remains usable.
#[derive(thiserror::Error, Debug, Clone, PartialEq)]
pub enum DecodeError {
    /// The codec ran past its time limit (usually an endless loop) and was stopped.
    #[error("codec ran longer than its {} ms time limit and was stopped (endless loop?)", .limit.as_millis())]
    Timeout {
        /// The time limit in force.
        limit: Duration,
    },
    /// The codec tried to use more memory than allowed and was stopped.
    #[error("codec needed more than its {} KiB memory limit and was stopped", .limit / 1024)]
    OutOfMemory {
        /// The memory limit in force, in bytes.
        limit: usize,
    },
    /// The codec threw an exception; the message says what and, when known, where.
    #[error("codec threw an exception: {0}")]
    Threw(String),
    /// The codec returned something that is not a usable result.
    #[error("codec returned an unusable result: {0}")]
    BadReturn(String),
    /// The codec itself reported that decoding failed (TTN `errors` array).
    #[error("codec reported decoding errors: {}", .0.join("; "))]
    CodecErrors(Vec<String>),
    /// A built-in codec was given bytes that do not follow its format.
    #[error("payload does not follow the format: {0}")]
    Malformed(String),
    /// The decoded JSON is larger than allowed.
    #[error("decoded output is larger than the {} KiB limit", .limit / 1024)]
    OutputTooLarge {
        /// The output limit in force, in bytes.
        limit: usize,
    },
    /// The JavaScript engine itself failed (for example it could not be restarted after
    /// running out of memory). Reloading the codec is the way out.
    #[error("JavaScript engine failure: {0}")]
    Engine(String),
}

impl DecodeError {
    /// A short snake_case reason, stable for use as a Prometheus label value.
    pub fn label(&self) -> &'static str {
        match self {
            DecodeError::Timeout { .. } => "timeout",
            DecodeError::OutOfMemory { .. } => "out_of_memory",
            DecodeError::Threw(_) => "threw",
            DecodeError::BadReturn(_) => "bad_return",
            DecodeError::CodecErrors(_) => "codec_errors",
            DecodeError::Malformed(_) => "malformed",
            DecodeError::OutputTooLarge { .. } => "output_too_large",
            DecodeError::Engine(_) => "engine",
        }
    }
}

/// Why a codec could not be loaded.
#[derive(thiserror::Error, Debug)]
pub enum LoadError {
    /// The codec file could not be read.
    #[error("cannot read codec file {}: {source}", .path.display())]
    Io {
        /// The file that was being read.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The codec file is larger than a codec may be.
    #[error("codec file {} is {size} bytes, more than the {limit} byte limit", .path.display())]
    TooLarge {
        /// The file that was refused.
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
        /// The largest size accepted.
        limit: u64,
    },
    /// The script is not valid JavaScript.
    #[error("codec {name} is not valid JavaScript: {message}")]
    Syntax {
        /// The codec name (file name).
        name: String,
        /// The parser's message, with the line when known.
        message: String,
    },
    /// The script's top-level code threw or ran too long while loading.
    #[error("codec {name} failed while running its top-level code: {message}")]
    Startup {
        /// The codec name (file name).
        name: String,
        /// What went wrong.
        message: String,
    },
    /// The script defines none of `decodeUplink`, `Decode` or `Decoder`.
    #[error(
        "codec {name} defines no decoder: expected a function decodeUplink(input), \
         Decode(fPort, bytes, variables) or Decoder(bytes, port)"
    )]
    NoEntryPoint {
        /// The codec name (file name).
        name: String,
    },
    /// The JavaScript engine could not be started.
    #[error("cannot start the JavaScript engine: {0}")]
    Engine(String),
}
