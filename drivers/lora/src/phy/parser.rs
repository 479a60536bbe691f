//! Reading a PHYPayload heard over the air: the message type from the MHDR, the
//! clear-text headers of data frames, JoinRequests and RejoinRequests, and the lengths
//! of JoinAccepts and proprietary frames. Never panics: a frame too short, too long or
//! of an unknown kind is a `PhyError` naming what is wrong.

use std::fmt;

use super::ids::{DevAddr, Eui64};
use super::{
    FHDR_MIN_LEN, JOIN_ACCEPT_CFLIST_LEN, JOIN_ACCEPT_LEN, JOIN_REQUEST_LEN, MAX_PHY_PAYLOAD_LEN, MHDR_LEN,
    MIC_LEN, REJOIN_0_2_LEN, REJOIN_1_LEN,
};

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
    pub(super) frm_payload_start: usize,
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
