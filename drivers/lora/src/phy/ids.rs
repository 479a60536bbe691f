//! The identifiers of LoRaWAN 1.0.x as written by people: `DevAddr`, `Eui64` and
//! `AesKey`, stored MSB first, read from and written to hex strings (serde too), with
//! the little-endian order they travel in over the air. A key never shows in `Debug`
//! nor in an error.

use std::fmt;
use std::str::FromStr;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// Why a hex identifier or key could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HexError {
    /// `shown` is ` in "<input>"` for identifiers and empty for keys (never echoed).
    #[error("invalid {what}: expected {expected} hex digits ({bytes} bytes), got {got} characters{shown}")]
    Length { what: &'static str, expected: usize, bytes: usize, got: usize, shown: String },
    /// `shown` is ` in "<input>"` for identifiers and empty for keys (never echoed).
    #[error("invalid {what}: {ch:?} at position {pos} is not a hex digit{shown}")]
    Char { what: &'static str, ch: char, pos: usize, shown: String },
}

/// Reads exactly `N` bytes written as `2 * N` hex digits (either case), MSB first.
fn parse_hex<const N: usize>(s: &str, what: &'static str, secret: bool) -> Result<[u8; N], HexError> {
    let shown = if secret { String::new() } else { format!(" in {s:?}") };
    if let Some((pos, ch)) = s.chars().enumerate().find(|(_, c)| !c.is_ascii_hexdigit()) {
        return Err(HexError::Char { what, ch, pos, shown });
    }
    let mut out = [0u8; N];
    // Every char is ASCII here, so byte length == char count.
    hex::decode_to_slice(s, &mut out).map_err(|_| HexError::Length {
        what,
        expected: 2 * N,
        bytes: N,
        got: s.len(),
        shown,
    })?;
    Ok(out)
}

/// Serde visitor for the hex-string types below.
struct HexVisitor<T>(std::marker::PhantomData<T>, &'static str);

impl<T: FromStr<Err = HexError>> de::Visitor<'_> for HexVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a {} as a hex string", self.1)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        v.parse().map_err(E::custom)
    }
}

/// FromStr and serde (as a hex string) for a `[u8; N]` newtype stored MSB first.
macro_rules! hex_newtype_io {
    ($name:ident, $len:expr, $what:expr, $secret:expr) => {
        impl FromStr for $name {
            type Err = HexError;

            fn from_str(s: &str) -> Result<Self, HexError> {
                parse_hex::<$len>(s, $what, $secret).map($name)
            }
        }

        impl From<[u8; $len]> for $name {
            fn from(bytes: [u8; $len]) -> Self {
                $name(bytes)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&hex::encode(self.0))
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_str(HexVisitor(std::marker::PhantomData, $what))
            }
        }
    };
}

/// A 32-bit device address, stored MSB first as written ("26011bda").
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DevAddr(pub [u8; 4]);

impl DevAddr {
    /// Reads the little-endian bytes that travel over the air.
    pub fn from_le_bytes(b: [u8; 4]) -> Self {
        DevAddr(u32::from_le_bytes(b).to_be_bytes())
    }

    /// The little-endian bytes that travel over the air.
    pub fn to_le_bytes(self) -> [u8; 4] {
        self.to_u32().to_le_bytes()
    }

    /// The address as a number (`0x26011bda` for "26011bda").
    pub fn to_u32(self) -> u32 {
        u32::from_be_bytes(self.0)
    }

    /// The address from a number (`0x26011bda` gives "26011bda").
    pub fn from_u32(v: u32) -> Self {
        DevAddr(v.to_be_bytes())
    }
}

impl fmt::Display for DevAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for DevAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DevAddr({self})")
    }
}

hex_newtype_io!(DevAddr, 4, "DevAddr", false);

/// A 64-bit EUI (DevEUI, JoinEUI), stored MSB first as written ("70b3d57ed0000000").
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Eui64(pub [u8; 8]);

impl Eui64 {
    /// Reads the little-endian bytes that travel over the air.
    pub fn from_le_bytes(b: [u8; 8]) -> Self {
        Eui64(u64::from_le_bytes(b).to_be_bytes())
    }

    /// The little-endian bytes that travel over the air.
    pub fn to_le_bytes(self) -> [u8; 8] {
        self.to_u64().to_le_bytes()
    }

    /// The EUI as a number.
    pub fn to_u64(self) -> u64 {
        u64::from_be_bytes(self.0)
    }

    /// The EUI from a number.
    pub fn from_u64(v: u64) -> Self {
        Eui64(v.to_be_bytes())
    }
}

impl fmt::Display for Eui64 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Eui64 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Eui64({self})")
    }
}

hex_newtype_io!(Eui64, 8, "EUI-64", false);

/// A 128-bit AES session or root key, stored as written. Its `Debug` never
/// shows the key and it has no `Display`: printing it takes an explicit
/// `to_hex()`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct AesKey(pub [u8; 16]);

impl AesKey {
    /// The key as 32 lowercase hex digits. Only for writing it where keys belong.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for AesKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AesKey(<redacted>)")
    }
}

hex_newtype_io!(AesKey, 16, "AES-128 key", true);
