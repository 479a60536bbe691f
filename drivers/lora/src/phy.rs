//! LoRaWAN 1.0.x PHYPayload as a gateway sees it: the identifiers (`DevAddr`,
//! `Eui64`, `AesKey`), a parser that reads the clear-text headers of any frame
//! heard over the air without ever panicking, and the 1.0.x session crypto
//! (build an encrypted uplink, verify its MIC and decrypt it) used by the
//! simulator, by tests and by `security` (which adds frame counters and the
//! OTAA join). It is not a network server: no MAC command handling, no
//! LoRaWAN 1.1 key hierarchy.

use std::fmt;
use std::str::FromStr;

use lorawan::creator::DataPayloadCreator;
use lorawan::keys::{AppSKey, NewSKey, AES128};
use lorawan::maccommands::SerializableMacCommand;
use lorawan::parser::{DataPayload, FCtrl as CrateFCtrl, PhyPayload};
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// Length of the MHDR.
const MHDR_LEN: usize = 1;
/// Length of the MIC.
const MIC_LEN: usize = 4;
/// DevAddr + FCtrl + FCnt: the FHDR without FOpts.
const FHDR_MIN_LEN: usize = 7;
/// MHDR + JoinEUI + DevEUI + DevNonce + MIC.
const JOIN_REQUEST_LEN: usize = 23;
/// Encrypted JoinAccept without CFList.
const JOIN_ACCEPT_LEN: usize = 17;
/// Encrypted JoinAccept with CFList.
const JOIN_ACCEPT_CFLIST_LEN: usize = 33;
/// RejoinRequest types 0 and 2: MHDR + type + NetID + DevEUI + RJcount0 + MIC.
const REJOIN_0_2_LEN: usize = 19;
/// RejoinRequest type 1: MHDR + type + JoinEUI + DevEUI + RJcount1 + MIC.
const REJOIN_1_LEN: usize = 24;
/// Largest PHYPayload a LoRa modem sends or receives.
pub const MAX_PHY_PAYLOAD_LEN: usize = 255;
/// Largest FRMPayload a 1.0.x data frame can carry (MACPayload 250 − FHDR 7 − FPort 1).
pub const MAX_FRM_PAYLOAD_LEN: usize = 242;

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

/// The LoRaWAN message type, from the top three bits of the MHDR.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MType {
    JoinRequest,
    JoinAccept,
    UnconfirmedDataUp,
    UnconfirmedDataDown,
    ConfirmedDataUp,
    ConfirmedDataDown,
    /// RFU in LoRaWAN 1.0.x, RejoinRequest since 1.1.
    RejoinRequest,
    Proprietary,
}

impl MType {
    /// The message type encoded in an MHDR byte.
    pub fn from_mhdr(mhdr: u8) -> Self {
        match mhdr >> 5 {
            0 => MType::JoinRequest,
            1 => MType::JoinAccept,
            2 => MType::UnconfirmedDataUp,
            3 => MType::UnconfirmedDataDown,
            4 => MType::ConfirmedDataUp,
            5 => MType::ConfirmedDataDown,
            6 => MType::RejoinRequest,
            _ => MType::Proprietary,
        }
    }

    /// True for the types a device transmits (everything but JoinAccept and *DataDown).
    pub fn is_uplink(self) -> bool {
        !matches!(self, MType::JoinAccept | MType::UnconfirmedDataDown | MType::ConfirmedDataDown)
    }

    /// True for the four data message types.
    pub fn is_data(self) -> bool {
        matches!(
            self,
            MType::UnconfirmedDataUp
                | MType::UnconfirmedDataDown
                | MType::ConfirmedDataUp
                | MType::ConfirmedDataDown
        )
    }
}

impl fmt::Display for MType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Why a PHYPayload could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PhyError {
    #[error("empty PHYPayload")]
    Empty,
    #[error("PHYPayload of {len} bytes is longer than the 255 bytes a LoRa frame can carry")]
    TooLong { len: usize },
    #[error("unsupported LoRaWAN major version {major} in MHDR 0x{mhdr:02x}; only LoRaWAN R1 (major 0) is understood")]
    UnsupportedMajor { major: u8, mhdr: u8 },
    #[error("{mtype} frame too short: {len} bytes, needs at least {min}")]
    TooShort { mtype: MType, len: usize, min: usize },
    #[error("{mtype} frame has {len} bytes, must be {expected}")]
    BadLength { mtype: MType, len: usize, expected: &'static str },
    #[error("FOptsLen {fopts_len} exceeds the frame: only {available} bytes between FCnt and MIC")]
    FOptsExceedFrame { fopts_len: u8, available: usize },
    #[error("unknown RejoinRequest type {0} (known: 0, 1, 2)")]
    UnknownRejoinType(u8),
}

/// FCtrl of a data frame, as a device or network server set it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FCtrl {
    pub adr: bool,
    /// ADRACKReq on uplinks; RFU on downlinks.
    pub adr_ack_req: bool,
    pub ack: bool,
    /// FPending on downlinks; ClassB on uplinks.
    pub f_pending: bool,
    /// Length of FOpts, 0..=15.
    pub fopts_len: u8,
}

impl FCtrl {
    /// Splits an FCtrl byte into its fields.
    pub fn from_byte(b: u8) -> Self {
        FCtrl {
            adr: b & 0x80 != 0,
            adr_ack_req: b & 0x40 != 0,
            ack: b & 0x20 != 0,
            f_pending: b & 0x10 != 0,
            fopts_len: b & 0x0f,
        }
    }
}

/// The clear-text headers of a data frame (Unconfirmed/Confirmed, Up/Down).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DataFrame {
    pub mtype: MType,
    pub dev_addr: DevAddr,
    pub fctrl: FCtrl,
    /// The 16 low bits of the frame counter, as sent over the air.
    pub fcnt: u16,
    /// None when the frame carries neither FPort nor FRMPayload.
    pub f_port: Option<u8>,
    /// Length of the (encrypted) FRMPayload in bytes.
    pub frm_payload_len: usize,
    pub mic: [u8; 4],
}

/// A JoinRequest: everything in it is clear text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct JoinRequest {
    pub join_eui: Eui64,
    pub dev_eui: Eui64,
    pub dev_nonce: u16,
    pub mic: [u8; 4],
}

/// A RejoinRequest (LoRaWAN 1.1 devices talking to a 1.0 gateway still send them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RejoinRequest {
    /// 0, 1 or 2.
    pub rejoin_type: u8,
    /// Present in type 1 only (types 0 and 2 carry the NetID instead).
    pub join_eui: Option<Eui64>,
    pub dev_eui: Eui64,
}

/// A parsed PHYPayload: what a gateway can read without session keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PhyFrame {
    JoinRequest(JoinRequest),
    /// Encrypted with the AppKey; only its length is visible.
    JoinAccept {
        len: usize,
    },
    Data(DataFrame),
    RejoinRequest(RejoinRequest),
    /// Vendor-specific; only its length is known.
    Proprietary {
        len: usize,
    },
}

impl PhyFrame {
    /// The message type.
    pub fn mtype(&self) -> MType {
        match self {
            PhyFrame::JoinRequest(_) => MType::JoinRequest,
            PhyFrame::JoinAccept { .. } => MType::JoinAccept,
            PhyFrame::Data(d) => d.mtype,
            PhyFrame::RejoinRequest(_) => MType::RejoinRequest,
            PhyFrame::Proprietary { .. } => MType::Proprietary,
        }
    }

    /// The DevAddr of a data frame.
    pub fn dev_addr(&self) -> Option<DevAddr> {
        match self {
            PhyFrame::Data(d) => Some(d.dev_addr),
            _ => None,
        }
    }

    /// The JoinEUI of a JoinRequest or type-1 RejoinRequest.
    pub fn join_eui(&self) -> Option<Eui64> {
        match self {
            PhyFrame::JoinRequest(j) => Some(j.join_eui),
            PhyFrame::RejoinRequest(r) => r.join_eui,
            _ => None,
        }
    }
}

/// Copies `N` bytes at `at`; the caller has checked the length.
fn take<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(src) = b.get(at..at + N) {
        out.copy_from_slice(src);
    }
    out
}

/// Parses a LoRaWAN 1.0.x PHYPayload (MHDR .. MIC). Never panics.
pub fn parse(bytes: &[u8]) -> Result<PhyFrame, PhyError> {
    let &mhdr = bytes.first().ok_or(PhyError::Empty)?;
    if bytes.len() > MAX_PHY_PAYLOAD_LEN {
        return Err(PhyError::TooLong { len: bytes.len() });
    }
    let major = mhdr & 0x03;
    if major != 0 {
        return Err(PhyError::UnsupportedMajor { major, mhdr });
    }
    let mtype = MType::from_mhdr(mhdr);
    let len = bytes.len();
    let exact = |expected: usize, text: &'static str| {
        if len == expected {
            Ok(())
        } else {
            Err(PhyError::BadLength { mtype, len, expected: text })
        }
    };
    match mtype {
        MType::JoinRequest => {
            exact(JOIN_REQUEST_LEN, "23")?;
            Ok(PhyFrame::JoinRequest(JoinRequest {
                join_eui: Eui64::from_le_bytes(take(bytes, 1)),
                dev_eui: Eui64::from_le_bytes(take(bytes, 9)),
                dev_nonce: u16::from_le_bytes(take(bytes, 17)),
                mic: take(bytes, 19),
            }))
        }
        MType::JoinAccept => {
            if len == JOIN_ACCEPT_LEN || len == JOIN_ACCEPT_CFLIST_LEN {
                Ok(PhyFrame::JoinAccept { len })
            } else {
                Err(PhyError::BadLength { mtype, len, expected: "17 or 33" })
            }
        }
        MType::RejoinRequest => {
            let min = MHDR_LEN + 1;
            let &rejoin_type = bytes.get(1).ok_or(PhyError::TooShort { mtype, len, min })?;
            match rejoin_type {
                0 | 2 => {
                    exact(REJOIN_0_2_LEN, "19 for rejoin types 0 and 2")?;
                    Ok(PhyFrame::RejoinRequest(RejoinRequest {
                        rejoin_type,
                        join_eui: None,
                        dev_eui: Eui64::from_le_bytes(take(bytes, 5)),
                    }))
                }
                1 => {
                    exact(REJOIN_1_LEN, "24 for rejoin type 1")?;
                    Ok(PhyFrame::RejoinRequest(RejoinRequest {
                        rejoin_type,
                        join_eui: Some(Eui64::from_le_bytes(take(bytes, 2))),
                        dev_eui: Eui64::from_le_bytes(take(bytes, 10)),
                    }))
                }
                other => Err(PhyError::UnknownRejoinType(other)),
            }
        }
        MType::Proprietary => Ok(PhyFrame::Proprietary { len }),
        MType::UnconfirmedDataUp
        | MType::UnconfirmedDataDown
        | MType::ConfirmedDataUp
        | MType::ConfirmedDataDown => parse_data(bytes, mtype).map(PhyFrame::Data),
    }
}

/// Offsets of the parts of a data frame that has passed `parse_data`.
pub(crate) struct DataLayout {
    pub(crate) frame: DataFrame,
    /// Index of the first FRMPayload byte.
    frm_payload_start: usize,
}

impl DataLayout {
    /// The FOpts bytes of the frame this layout was read from (clear text in 1.0.x).
    pub(crate) fn f_opts<'a>(&self, bytes: &'a [u8]) -> &'a [u8] {
        let start = MHDR_LEN + FHDR_MIN_LEN;
        bytes.get(start..start + usize::from(self.frame.fctrl.fopts_len)).unwrap_or(&[])
    }
}

/// Reads the headers and offsets of a data frame of type `mtype`.
pub(crate) fn data_layout(bytes: &[u8], mtype: MType) -> Result<DataLayout, PhyError> {
    let len = bytes.len();
    let min = MHDR_LEN + FHDR_MIN_LEN + MIC_LEN;
    if len < min {
        return Err(PhyError::TooShort { mtype, len, min });
    }
    let fctrl = FCtrl::from_byte(bytes[5]);
    // Bytes between the end of FCnt and the start of the MIC.
    let available = len - min;
    let fopts_len = usize::from(fctrl.fopts_len);
    if fopts_len > available {
        return Err(PhyError::FOptsExceedFrame { fopts_len: fctrl.fopts_len, available });
    }
    let after_fhdr = MHDR_LEN + FHDR_MIN_LEN + fopts_len;
    let rest = available - fopts_len;
    let (f_port, frm_payload_len) =
        if rest == 0 { (None, 0) } else { (bytes.get(after_fhdr).copied(), rest - 1) };
    Ok(DataLayout {
        frame: DataFrame {
            mtype,
            dev_addr: DevAddr::from_le_bytes(take(bytes, 1)),
            fctrl,
            fcnt: u16::from_le_bytes(take(bytes, 6)),
            f_port,
            frm_payload_len,
            mic: take(bytes, len - MIC_LEN),
        },
        frm_payload_start: after_fhdr + 1,
    })
}

fn parse_data(bytes: &[u8], mtype: MType) -> Result<DataFrame, PhyError> {
    data_layout(bytes, mtype).map(|l| l.frame)
}

/// Why a data frame could not be built, verified or decrypted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("FRMPayload of {len} bytes is longer than the {max} bytes a LoRaWAN frame can carry")]
    PayloadTooLong { len: usize, max: usize },
    #[error("the lorawan crate refused to build the frame: {0}")]
    Build(String),
    #[error("malformed frame: {0}")]
    Malformed(#[from] PhyError),
    #[error("expected a data frame, got a {0}")]
    NotData(MType),
    #[error("frame counter {given} does not match the FCnt {on_air} sent over the air (low 16 bits differ)")]
    FCntMismatch { on_air: u16, given: u32 },
    #[error("MIC check failed: wrong NwkSKey, wrong frame counter, or a corrupted frame")]
    MicMismatch,
}

/// What goes into a LoRaWAN 1.0.x data uplink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataUplink<'a> {
    pub dev_addr: DevAddr,
    /// Full 32-bit frame counter; its 16 low bits go over the air.
    pub fcnt: u32,
    pub confirmed: bool,
    pub adr: bool,
    /// 0 (MAC commands, encrypted with the NwkSKey) or an application port.
    pub f_port: u8,
    /// Clear-text FRMPayload (MAC commands when `f_port` is 0).
    pub payload: &'a [u8],
}

/// FPort-0 payload handed to the lorawan creator, which only takes MAC
/// commands there: the first byte plays the CID, the rest its payload.
struct RawMacCommands<'a>(&'a [u8]);

impl SerializableMacCommand for RawMacCommands<'_> {
    fn payload_bytes(&self) -> &[u8] {
        self.0.get(1..).unwrap_or(&[])
    }

    fn cid(&self) -> u8 {
        self.0.first().copied().unwrap_or(0)
    }

    fn payload_len(&self) -> usize {
        self.0.len().saturating_sub(1)
    }
}

/// Builds a complete data uplink PHYPayload: FRMPayload encrypted with the
/// AppSKey (NwkSKey on FPort 0), MIC over B0 with the NwkSKey.
pub fn build_data_uplink(
    up: &DataUplink<'_>,
    nwk_s_key: &AesKey,
    app_s_key: &AesKey,
) -> Result<Vec<u8>, CryptoError> {
    // The creator writes into a 256-byte buffer and would panic past it.
    if up.payload.len() > MAX_FRM_PAYLOAD_LEN {
        return Err(CryptoError::PayloadTooLong { len: up.payload.len(), max: MAX_FRM_PAYLOAD_LEN });
    }
    let mut creator = DataPayloadCreator::new();
    creator
        .set_uplink(true)
        .set_confirmed(up.confirmed)
        .set_dev_addr(up.dev_addr.to_le_bytes())
        .set_fctrl(&CrateFCtrl::new(if up.adr { 0x80 } else { 0x00 }, true))
        .set_fcnt(up.fcnt)
        .set_f_port(up.f_port);
    let nwk = NewSKey::from(nwk_s_key.0);
    let app = AppSKey::from(app_s_key.0);
    let raw = RawMacCommands(up.payload);
    let built = if up.f_port == 0 {
        let cmds: &[&dyn SerializableMacCommand] = if up.payload.is_empty() { &[] } else { &[&raw] };
        creator.build(&[], cmds, &nwk, &app)
    } else {
        creator.build(up.payload, &[], &nwk, &app)
    };
    // Unreachable with the checks above (length bounded, no FOpts), but
    // reported rather than trusted.
    built.map(<[u8]>::to_vec).map_err(|e| CryptoError::Build(format!("{e:?}")))
}

/// Checks the MIC of a data frame with the NwkSKey and returns its decrypted
/// FRMPayload (AppSKey, or NwkSKey on FPort 0). `fcnt` is the full 32-bit
/// counter; its 16 low bits must equal the FCnt on air.
pub fn verify_and_decrypt(
    phy_payload: &[u8],
    nwk_s_key: &AesKey,
    app_s_key: &AesKey,
    fcnt: u32,
) -> Result<Vec<u8>, CryptoError> {
    let frame = parse(phy_payload)?;
    let PhyFrame::Data(data) = frame else {
        return Err(CryptoError::NotData(frame.mtype()));
    };
    if u32::from(data.fcnt) != fcnt & 0xffff {
        return Err(CryptoError::FCntMismatch { on_air: data.fcnt, given: fcnt });
    }
    let layout = data_layout(phy_payload, data.mtype)?;
    open_data(phy_payload, &layout, nwk_s_key, app_s_key, fcnt).ok_or(CryptoError::MicMismatch)
}

/// Checks the MIC of a data frame laid out by `data_layout` with the NwkSKey
/// over the full 32-bit `fcnt`, and returns its decrypted FRMPayload
/// (AppSKey, or NwkSKey on FPort 0); `None` when the MIC does not match.
/// The one decryption path behind `verify_and_decrypt` and
/// `security::verify_uplink`.
pub(crate) fn open_data(
    phy_payload: &[u8],
    layout: &DataLayout,
    nwk_s_key: &AesKey,
    app_s_key: &AesKey,
    fcnt: u32,
) -> Option<Vec<u8>> {
    // Our parser accepted the frame, so the crate's stricter-or-equal checks
    // do too; were they ever to refuse it, the frame cannot be authenticated,
    // which is what `None` says.
    let Ok(PhyPayload::Data(DataPayload::Encrypted(enc))) = lorawan::parser::parse(phy_payload.to_vec())
    else {
        return None;
    };
    let nwk = AES128(nwk_s_key.0);
    let app = AES128(app_s_key.0);
    let plain = enc.decrypt_if_mic_ok(&nwk, &app, fcnt).ok()?.to_inner();
    let start = layout.frm_payload_start;
    let end = plain.len().saturating_sub(MIC_LEN);
    Some(plain.get(start..end).map(<[u8]>::to_vec).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    const NWK: AesKey = AesKey([
        0x2b, 0x7e, 0x15, 0x16, 0x28, 0xae, 0xd2, 0xa6, 0xab, 0xf7, 0x15, 0x88, 0x09, 0xcf, 0x4f, 0x3c,
    ]);
    const APP: AesKey = AesKey([
        0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff,
    ]);

    fn uplink(payload: &[u8], fcnt: u32, f_port: u8) -> Vec<u8> {
        build_data_uplink(
            &DataUplink {
                dev_addr: DevAddr([0x26, 0x01, 0x1b, 0xda]),
                fcnt,
                confirmed: false,
                adr: true,
                f_port,
                payload,
            },
            &NWK,
            &APP,
        )
        .unwrap()
    }

    #[test]
    fn identifiers_print_msb_first_and_read_back_in_any_case() {
        let addr: DevAddr = "26011BDA".parse().unwrap();
        assert_eq!(addr.0, [0x26, 0x01, 0x1b, 0xda]);
        assert_eq!(addr.to_string(), "26011bda");
        assert_eq!(addr.to_u32(), 0x2601_1bda);
        assert_eq!(addr.to_le_bytes(), [0xda, 0x1b, 0x01, 0x26]);
        assert_eq!(DevAddr::from_le_bytes([0xda, 0x1b, 0x01, 0x26]), addr);
        let eui: Eui64 = "70B3D57ED0000001".parse().unwrap();
        assert_eq!(eui.to_string(), "70b3d57ed0000001");
        assert_eq!(Eui64::from_le_bytes(eui.to_le_bytes()), eui);
        let key: AesKey = "00112233445566778899AABBCCDDEEFF".parse().unwrap();
        assert_eq!(key, APP);
        assert_eq!(key.to_hex(), "00112233445566778899aabbccddeeff");
    }

    #[test]
    fn aes_key_debug_hides_the_key() {
        let shown = format!("{APP:?} {:?}", Some(APP));
        assert!(!shown.contains("0011"), "{shown}");
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn hex_errors_name_the_type_and_expected_length() {
        let e = "26011bd".parse::<DevAddr>().unwrap_err().to_string();
        assert_eq!(e, "invalid DevAddr: expected 8 hex digits (4 bytes), got 7 characters in \"26011bd\"");
        let e = "70b3d57ed000000g".parse::<Eui64>().unwrap_err().to_string();
        assert_eq!(e, "invalid EUI-64: 'g' at position 15 is not a hex digit in \"70b3d57ed000000g\"");
        let e = "0011".parse::<AesKey>().unwrap_err().to_string();
        assert_eq!(e, "invalid AES-128 key: expected 32 hex digits (16 bytes), got 4 characters");
        let e = "00112233445566778899aabbccddeeéé".parse::<AesKey>().unwrap_err();
        assert!(!e.to_string().contains("0011"), "{e}");
    }

    #[test]
    fn identifiers_round_trip_through_serde_as_hex_strings() {
        #[derive(Deserialize, Serialize, Debug, PartialEq)]
        struct Dev {
            dev_addr: DevAddr,
            dev_eui: Eui64,
            key: AesKey,
        }
        let text = "dev_addr = \"26011BDA\"\ndev_eui = \"70b3d57ed0000001\"\nkey = \"00112233445566778899aabbccddeeff\"\n";
        let dev: Dev = toml::from_str(text).unwrap();
        assert_eq!(dev.dev_addr, DevAddr([0x26, 0x01, 0x1b, 0xda]));
        assert_eq!(toml::from_str::<Dev>(&toml::to_string(&dev).unwrap()).unwrap(), dev);
        let err = toml::from_str::<Dev>(&text.replace("26011BDA", "2601")).unwrap_err().to_string();
        assert!(err.contains("expected 8 hex digits (4 bytes)"), "{err}");
    }

    #[test]
    fn parses_and_decrypts_the_lorawan_crate_reference_uplink() {
        let data = [
            0x40, 0x04, 0x03, 0x02, 0x01, 0x80, 0x01, 0x00, 0x01, 0xa6, 0x94, 0x64, 0x26, 0x15, 0xd6, 0xc3,
            0xb5, 0x82,
        ];
        let PhyFrame::Data(d) = parse(&data).unwrap() else { panic!("not data") };
        assert_eq!(d.mtype, MType::UnconfirmedDataUp);
        assert_eq!(d.dev_addr.to_string(), "01020304");
        assert!(d.fctrl.adr && !d.fctrl.ack);
        assert_eq!(d.fctrl.fopts_len, 0);
        assert_eq!(d.fcnt, 1);
        assert_eq!(d.f_port, Some(1));
        assert_eq!(d.frm_payload_len, 5);
        let (nwk, app) = (AesKey([2; 16]), AesKey([1; 16]));
        assert_eq!(verify_and_decrypt(&data, &nwk, &app, 1).unwrap(), b"hello");
        assert_eq!(verify_and_decrypt(&data, &app, &app, 1), Err(CryptoError::MicMismatch));
    }

    #[test]
    fn parses_a_join_request_with_little_endian_euis() {
        let mut jr = vec![0x00];
        jr.extend_from_slice(&Eui64::from_u64(0x70b3_d57e_d000_0000).to_le_bytes());
        jr.extend_from_slice(&Eui64::from_u64(0x0004_a30b_001c_0530).to_le_bytes());
        jr.extend_from_slice(&0x1234u16.to_le_bytes());
        jr.extend_from_slice(&[1, 2, 3, 4]);
        let f = parse(&jr).unwrap();
        assert_eq!(f.mtype(), MType::JoinRequest);
        assert_eq!(f.join_eui().unwrap().to_string(), "70b3d57ed0000000");
        let PhyFrame::JoinRequest(j) = f else { panic!() };
        assert_eq!(j.dev_eui.to_string(), "0004a30b001c0530");
        assert_eq!(j.dev_nonce, 0x1234);
        assert_eq!(
            parse(&jr[..22]),
            Err(PhyError::BadLength { mtype: MType::JoinRequest, len: 22, expected: "23" })
        );
    }

    #[test]
    fn built_uplink_verifies_and_decrypts_with_the_right_keys() {
        for f_port in [0u8, 1, 2, 223] {
            let payload = b"\x00\x01\x86\xa0\x0e\x10\x00";
            let fcnt = 0x0001_0005;
            let bytes = uplink(payload, fcnt, f_port);
            let PhyFrame::Data(d) = parse(&bytes).unwrap() else { panic!() };
            assert_eq!(d.fcnt, 5);
            assert_eq!(d.f_port, Some(f_port));
            assert_eq!(d.frm_payload_len, payload.len());
            assert_ne!(&bytes[9..9 + payload.len()], payload, "FRMPayload is encrypted");
            assert_eq!(verify_and_decrypt(&bytes, &NWK, &APP, fcnt).unwrap(), payload.to_vec());
        }
    }

    #[test]
    fn wrong_key_or_counter_fails_the_mic() {
        let bytes = uplink(b"hello", 7, 2);
        let other = AesKey([9; 16]);
        assert_eq!(verify_and_decrypt(&bytes, &other, &APP, 7), Err(CryptoError::MicMismatch));
        assert_eq!(verify_and_decrypt(&bytes, &NWK, &APP, 0x0001_0007), Err(CryptoError::MicMismatch));
        assert_eq!(
            verify_and_decrypt(&bytes, &NWK, &APP, 8),
            Err(CryptoError::FCntMismatch { on_air: 7, given: 8 })
        );
        // A wrong AppSKey passes the MIC but yields garbage.
        assert_ne!(verify_and_decrypt(&bytes, &NWK, &other, 7).unwrap(), b"hello");
    }

    #[test]
    fn builder_refuses_payloads_longer_than_a_frame_carries() {
        let long = [0u8; MAX_FRM_PAYLOAD_LEN + 1];
        let up = DataUplink {
            dev_addr: DevAddr([0; 4]),
            fcnt: 0,
            confirmed: true,
            adr: false,
            f_port: 1,
            payload: &long,
        };
        assert_eq!(
            build_data_uplink(&up, &NWK, &APP),
            Err(CryptoError::PayloadTooLong { len: 243, max: 242 })
        );
        let ok = build_data_uplink(&DataUplink { payload: &long[..242], ..up }, &NWK, &APP).unwrap();
        assert_eq!(parse(&ok).unwrap().mtype(), MType::ConfirmedDataUp);
    }

    #[test]
    fn every_truncation_of_a_valid_frame_is_an_error() {
        let bytes = uplink(b"abcdef", 3, 2);
        assert_eq!(parse(&[]), Err(PhyError::Empty));
        for cut in 1..12 {
            assert!(matches!(parse(&bytes[..cut]), Err(PhyError::TooShort { min: 12, .. })), "cut {cut}");
        }
        // From 12 bytes on the frame is a shorter but well-formed data frame:
        // the parser cannot know where the payload was meant to end; the MIC can.
        for cut in 12..bytes.len() {
            assert!(parse(&bytes[..cut]).is_ok());
            assert!(verify_and_decrypt(&bytes[..cut], &NWK, &APP, 3).is_err());
        }
        let jr = [0u8; 23]; // MHDR 0x00: JoinRequest
        for cut in 0..23 {
            assert!(parse(&jr[..cut]).is_err(), "join request cut {cut}");
        }
        let ja = [0x20u8; 33];
        for cut in 0..33 {
            if cut != 17 {
                assert!(parse(&ja[..cut]).is_err(), "join accept cut {cut}");
            }
        }
    }

    #[test]
    fn fopts_longer_than_the_frame_is_reported() {
        let mut bytes = uplink(b"", 3, 2);
        // 13 bytes: MHDR, FHDR(7), FPort, MIC(4). Claim 15 bytes of FOpts.
        bytes[5] |= 0x0f;
        assert_eq!(parse(&bytes), Err(PhyError::FOptsExceedFrame { fopts_len: 15, available: 1 }));
        assert_eq!(
            parse(&bytes).unwrap_err().to_string(),
            "FOptsLen 15 exceeds the frame: only 1 bytes between FCnt and MIC"
        );
    }

    #[test]
    fn frames_longer_than_a_lora_frame_are_refused() {
        let mut bytes = uplink(&[7; MAX_FRM_PAYLOAD_LEN], 1, 2);
        assert_eq!(bytes.len(), MAX_PHY_PAYLOAD_LEN);
        assert!(parse(&bytes).is_ok());
        bytes.push(0);
        assert_eq!(parse(&bytes), Err(PhyError::TooLong { len: 256 }));
        // Local decoding must not hand oversized input to the crypto either.
        bytes.resize(5_000, 0);
        assert!(verify_and_decrypt(&bytes, &NWK, &APP, 1).is_err());
    }

    #[test]
    fn unsupported_major_version_is_named() {
        let mut bytes = uplink(b"x", 1, 2);
        bytes[0] |= 0x01;
        assert_eq!(parse(&bytes), Err(PhyError::UnsupportedMajor { major: 1, mhdr: 0x41 }));
    }

    #[test]
    fn rejoin_and_proprietary_frames_are_recognised() {
        let mut r = vec![0xc0, 0x01];
        r.extend_from_slice(&Eui64::from_u64(1).to_le_bytes());
        r.extend_from_slice(&Eui64::from_u64(2).to_le_bytes());
        r.extend_from_slice(&[0, 0, 1, 2, 3, 4]);
        let f = parse(&r).unwrap();
        assert_eq!(f.mtype(), MType::RejoinRequest);
        assert_eq!(f.join_eui(), Some(Eui64::from_u64(1)));
        assert_eq!(parse(&[0xc0, 0x05]), Err(PhyError::UnknownRejoinType(5)));
        assert_eq!(parse(&[0xe0, 1, 2]), Ok(PhyFrame::Proprietary { len: 3 }));
    }

    #[test]
    fn random_bytes_never_panic_and_data_frames_stay_consistent() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
        for _ in 0..10_000 {
            let len = if rng.gen_bool(0.9) { rng.gen_range(0..40) } else { rng.gen_range(0..300) };
            let mut b: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            if rng.gen_bool(0.5) && !b.is_empty() {
                b[0] &= 0xfc; // valid major: reach the per-MType parsers
            }
            if let Ok(PhyFrame::Data(d)) = parse(&b) {
                assert_eq!(
                    12 + usize::from(d.fctrl.fopts_len) + usize::from(d.f_port.is_some()) + d.frm_payload_len,
                    b.len()
                );
                let _ = verify_and_decrypt(&b, &NWK, &APP, u32::from(d.fcnt));
            }
        }
    }
}
