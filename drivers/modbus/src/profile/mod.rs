//! Device profiles: what a kind of Modbus device exposes (points to read) and what may be
//! asked of it (commands, with typed bounded arguments, interlocks and read-back checks).
//!
//! A profile is data, one TOML file per kind of device (`plugins/profiles/*.toml`). This
//! module holds the model; `load.rs` parses and validates files (errors name file, line
//! and key); decoding lives in `value`, the safety rules in `crate::command`.

mod load;
pub mod value;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize};

pub use load::ProfileSet;

/// One kind of field device: its points and its commands, checked at load.
#[derive(Debug, Clone)]
pub struct Profile {
    /// The name devices refer to in the gateway config (`needle-dam`).
    pub name: String,
    /// One line for people.
    pub description: String,
    /// Every point the poller reads, in file order.
    pub points: Vec<Point>,
    /// Every command the device accepts, in file order.
    pub commands: Vec<CommandSpec>,
    /// The file this profile came from (shipped or site override).
    pub source: PathBuf,
}

impl Profile {
    /// The point called `name`.
    pub fn point(&self, name: &str) -> Option<&Point> {
        self.points.iter().find(|p| p.name == name)
    }

    /// The command called `name`.
    pub fn command(&self, name: &str) -> Option<&CommandSpec> {
        self.commands.iter().find(|c| c.name == name)
    }
}

/// Which Modbus table a point lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PointKind {
    /// Read/write bit (function codes 1, 5, 15).
    Coil,
    /// Read-only bit (function code 2).
    DiscreteInput,
    /// Read/write 16-bit register (function codes 3, 6, 16).
    HoldingRegister,
    /// Read-only 16-bit register (function code 4).
    InputRegister,
}

impl PointKind {
    /// Bits (coils, discrete inputs) rather than registers.
    pub fn is_bit(self) -> bool {
        matches!(self, PointKind::Coil | PointKind::DiscreteInput)
    }

    /// Whether a command may write this table.
    pub fn is_writable(self) -> bool {
        matches!(self, PointKind::Coil | PointKind::HoldingRegister)
    }
}

/// How the raw bits of a point are to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DataType {
    /// One bit (coils and discrete inputs only).
    Bool,
    /// One register, unsigned.
    U16,
    /// One register, two's complement.
    I16,
    /// Two registers, unsigned.
    U32,
    /// Two registers, two's complement.
    I32,
    /// Two registers, IEEE 754 single precision.
    F32,
}

impl DataType {
    /// How many registers (or bits) the value takes.
    pub fn width(self) -> u16 {
        match self {
            DataType::Bool | DataType::U16 | DataType::I16 => 1,
            DataType::U32 | DataType::I32 | DataType::F32 => 2,
        }
    }

    /// The raw integer range, for integer types.
    pub fn int_range(self) -> Option<(i64, i64)> {
        match self {
            DataType::Bool => Some((0, 1)),
            DataType::U16 => Some((0, i64::from(u16::MAX))),
            DataType::I16 => Some((i64::from(i16::MIN), i64::from(i16::MAX))),
            DataType::U32 => Some((0, i64::from(u32::MAX))),
            DataType::I32 => Some((i64::from(i32::MIN), i64::from(i32::MAX))),
            DataType::F32 => None,
        }
    }
}

/// Order of the two registers of a 32-bit value (bytes inside a register are always big endian).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WordOrder {
    /// High word first (the Modbus convention, "ABCD").
    #[default]
    Big,
    /// Low word first ("CDAB", common on energy meters).
    Little,
}

/// A named value read from the device: `engineering = raw * scale + offset`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Point {
    /// Unique within the profile; what commands, rules and the platform refer to.
    pub name: String,
    /// Which Modbus table.
    pub kind: PointKind,
    /// Zero-based protocol address (register 40001 is holding register address 0).
    pub address: u16,
    /// Raw type.
    #[serde(rename = "type")]
    pub data_type: DataType,
    /// Register order for 32-bit types.
    #[serde(default)]
    pub word_order: WordOrder,
    /// Multiplier applied to the raw value.
    #[serde(default = "one")]
    pub scale: f64,
    /// Added after scaling.
    #[serde(default)]
    pub offset: f64,
    /// Engineering unit shown to people (`%`, `m`, `kWh`).
    #[serde(default)]
    pub unit: String,
    /// Raw value → label, for selectors and modes (`0 = "local"`).
    #[serde(default, rename = "enum", deserialize_with = "enum_labels")]
    pub labels: BTreeMap<i64, String>,
    /// Free text for people.
    #[serde(default)]
    pub description: String,
}

fn one() -> f64 {
    1.0
}

/// TOML keys are strings: `enum = { 0 = "local", 1 = "remote" }` arrives as `"0"`, `"1"`.
fn enum_labels<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<i64, String>, D::Error> {
    let raw = BTreeMap::<String, String>::deserialize(d)?;
    raw.into_iter()
        .map(|(k, v)| {
            k.trim()
                .parse::<i64>()
                .map(|k| (k, v))
                .map_err(|_| serde::de::Error::custom(format!("enum key `{k}` is not an integer raw value")))
        })
        .collect()
}

impl Point {
    /// The label of `raw`, if this point is an enumeration.
    pub fn label_of(&self, raw: i64) -> Option<&str> {
        self.labels.get(&raw).map(String::as_str)
    }

    /// The raw value whose label is `label`.
    pub fn raw_of(&self, label: &str) -> Option<i64> {
        self.labels.iter().find(|(_, l)| l.as_str() == label).map(|(r, _)| *r)
    }

    /// The last address this point covers.
    pub fn last_address(&self) -> u32 {
        u32::from(self.address) + u32::from(self.data_type.width()) - 1
    }
}

/// A constant in a profile: a write value, an interlock or a verification target.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Literal {
    /// `true` / `false`.
    Bool(bool),
    /// Engineering value (after scale and offset).
    Number(f64),
    /// An enumeration label.
    Label(String),
}

impl std::fmt::Display for Literal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Literal::Bool(b) => write!(f, "{b}"),
            Literal::Number(n) => write!(f, "{n}"),
            Literal::Label(l) => write!(f, "\"{l}\""),
        }
    }
}

/// An action on the device, with everything needed to refuse it when unsafe.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandSpec {
    /// Unique within the profile (`move_bay2`).
    pub name: String,
    /// Free text for people.
    #[serde(default)]
    pub description: String,
    /// Typed, bounded arguments.
    #[serde(default)]
    pub args: Vec<ArgSpec>,
    /// Register or coil writes, in order.
    pub writes: Vec<WriteSpec>,
    /// Interlocks on other points, checked against a fresh read before writing.
    #[serde(default)]
    pub preconditions: Vec<Precondition>,
    /// Minimum time between two executions of this command on one device.
    #[serde(default)]
    pub min_interval_s: f64,
    /// Read-back that proves the command took effect.
    pub verify: Verify,
    /// Commands whose pending read-back this one ends (a stop cancels the move it stops).
    #[serde(default)]
    pub cancels: Vec<String>,
}

/// The type of an argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ArgType {
    /// Whole number within `min..=max`.
    Int,
    /// Number within `min..=max`.
    Float,
    /// `true` / `false`.
    Bool,
    /// One of `values`.
    Enum,
}

/// One argument of a command.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArgSpec {
    /// The key in the command's `args` object.
    pub name: String,
    /// Its type.
    #[serde(rename = "type")]
    pub arg_type: ArgType,
    /// Lowest accepted value (int, float), inclusive.
    pub min: Option<f64>,
    /// Highest accepted value (int, float), inclusive.
    pub max: Option<f64>,
    /// Accepted labels (enum).
    pub values: Option<Vec<String>>,
    /// Engineering unit shown to people.
    #[serde(default)]
    pub unit: String,
    /// Free text for people.
    #[serde(default)]
    pub description: String,
}

/// One write: a writable point gets an argument or a constant, encoded by the point's type.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriteSpec {
    /// A coil or holding-register point.
    pub point: String,
    /// The argument whose value is written...
    pub arg: Option<String>,
    /// ...or a constant.
    pub value: Option<Literal>,
}

/// An interlock: the command is refused unless `point` satisfies the comparison.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Precondition {
    /// The point to look at.
    pub point: String,
    /// Must equal this.
    pub equals: Option<Literal>,
    /// Must not equal this.
    pub not_equals: Option<Literal>,
    /// Must be at least this (numeric points).
    pub min: Option<f64>,
    /// Must be at most this (numeric points).
    pub max: Option<f64>,
    /// Why, for the person whose command is refused.
    pub reason: String,
}

/// Read-back verification: `point` must reach the argument (or constant) before the deadline.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Verify {
    /// The point read back.
    pub point: String,
    /// Compare with this argument...
    pub arg: Option<String>,
    /// ...or with this constant.
    pub value: Option<Literal>,
    /// Accepted difference for numbers, in engineering units.
    #[serde(default)]
    pub tolerance: f64,
    /// Seconds after the write by which the read-back must match.
    pub deadline_s: f64,
}
