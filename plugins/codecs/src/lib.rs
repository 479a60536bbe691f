//! Payload codecs: turn a decrypted LoRaWAN FRMPayload into JSON on the gateway.
//!
//! Two families live here. Built-in Rust codecs for common formats (Cayenne LPP, raw hex),
//! and site codecs written in JavaScript with the TTN Device Repository / ChirpStack contract
//! (`decodeUplink(input)`, plus the legacy `Decode` and `Decoder`), run in QuickJS with a time
//! and memory limit per call. A codec that throws, loops or returns garbage fails that frame
//! only, with a [`DecodeError`] whose `label()` feeds a metric.
//!
//! Not for: encoding downlinks, choosing which device uses which codec (gateway config does),
//! or running codecs concurrently. A [`Codec`] holding JavaScript is **not `Send`**: create it,
//! keep it and call it on one thread (the gateway's decode thread), and rebuild it there on
//! reload. Site codecs are read from `/etc/berrygw/codecs/*.js` with [`Codec::load_file`].

mod error;
mod js;
mod lpp;
mod reply;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

pub use error::{DecodeError, LoadError};
pub use js::{EntryPoint, JsCodec, MAX_DEVICE_CONTEXTS};

/// A codec file larger than this is refused: codecs are small, and a big file is a mistake.
pub const MAX_SOURCE_BYTES: u64 = 1024 * 1024;

/// Where site codecs live on a gateway.
pub const SITE_CODECS_DIR: &str = "/etc/berrygw/codecs";

/// What a codec gets for one uplink.
#[derive(Debug, Clone, Copy)]
pub struct UplinkInput<'a> {
    /// The decrypted FRMPayload.
    pub bytes: &'a [u8],
    /// The LoRaWAN FPort.
    pub f_port: u8,
    /// When the gateway received the frame (`input.recvTime`, a JS `Date`).
    pub recv_time: SystemTime,
    /// ChirpStack device variables (`input.variables`); empty for TTN codecs.
    pub variables: &'a BTreeMap<String, String>,
    /// Which device sent it (its DevEUI, say): JavaScript codecs keep each device's
    /// globals and built-ins apart from every other device's.
    pub device: &'a str,
}

/// A codec's answer for one uplink.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// The decoded reading: usually a JSON object, but any JSON value the codec returned.
    pub data: serde_json::Value,
    /// Warnings the codec reported alongside its data.
    pub warnings: Vec<String>,
    /// Always empty on success (a codec reporting errors yields [`DecodeError::CodecErrors`]);
    /// kept so the shape matches the TTN contract.
    pub errors: Vec<String>,
}

/// Per-call limits for JavaScript codecs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest one call may run (default 50 ms).
    pub time: Duration,
    /// Most memory the codec's whole runtime may hold, script included (default 8 MiB).
    pub memory_bytes: usize,
    /// Largest decoded JSON accepted (default 64 KiB).
    pub max_output_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { time: Duration::from_millis(50), memory_bytes: 8 << 20, max_output_bytes: 64 << 10 }
    }
}

/// A payload codec: a built-in, or a JavaScript codec compiled once and reused.
///
/// Not `Send` when it holds JavaScript (see the crate docs).
#[derive(Debug)]
pub enum Codec {
    /// Cayenne LPP, decoded in Rust.
    CayenneLpp,
    /// The raw payload as lowercase hex: `{"hex": "0a1b"}`.
    Hex,
    /// A JavaScript codec.
    JavaScript(JsCodec),
}

/// Reads the JSON form of a `decodeUplink` answer (`{data, warnings, errors}`) the way
/// a JavaScript codec's answer is read; public so the fuzz targets reach it.
pub fn read_decode_uplink_answer(answer: serde_json::Value) -> Result<Decoded, DecodeError> {
    reply::from_decode_uplink(answer)
}

impl Codec {
    /// The built-in Cayenne LPP codec.
    pub fn cayenne_lpp() -> Codec {
        Codec::CayenneLpp
    }

    /// The built-in raw codec: `data = {"hex": "0a1b..."}`; never fails.
    pub fn hex() -> Codec {
        Codec::Hex
    }

    /// Compiles a JavaScript codec once; `name` appears in errors and stack lines.
    pub fn javascript(name: &str, source: &str, limits: Limits) -> Result<Codec, LoadError> {
        JsCodec::load(name, source, limits).map(Codec::JavaScript)
    }

    /// Reads and compiles a `.js` codec file (at most [`MAX_SOURCE_BYTES`]); its name is the
    /// file name.
    pub fn load_file(path: &Path, limits: Limits) -> Result<Codec, LoadError> {
        let io_error = |source| LoadError::Io { path: path.to_owned(), source };
        let size = std::fs::metadata(path).map_err(io_error)?.len();
        if size > MAX_SOURCE_BYTES {
            return Err(LoadError::TooLarge { path: path.to_owned(), size, limit: MAX_SOURCE_BYTES });
        }
        let source = std::fs::read_to_string(path).map_err(io_error)?;
        let name =
            path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into());
        Codec::javascript(&name, &source, limits)
    }

    /// `"cayenne_lpp"`, `"hex"`, or the JavaScript codec's name.
    pub fn name(&self) -> &str {
        match self {
            Codec::CayenneLpp => "cayenne_lpp",
            Codec::Hex => "hex",
            Codec::JavaScript(js) => js.name(),
        }
    }

    /// Decodes one uplink. An error concerns this frame only: the codec stays usable.
    pub fn decode(&mut self, input: &UplinkInput<'_>) -> Result<Decoded, DecodeError> {
        match self {
            Codec::CayenneLpp => Ok(reply::data_only(lpp::decode(input.bytes)?)),
            Codec::Hex => {
                let mut data = serde_json::Map::with_capacity(1);
                data.insert("hex".to_owned(), serde_json::Value::String(hex::encode(input.bytes)));
                Ok(reply::data_only(serde_json::Value::Object(data)))
            }
            Codec::JavaScript(js) => js.decode(input),
        }
    }
}
