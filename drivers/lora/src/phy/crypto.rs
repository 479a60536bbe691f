//! The LoRaWAN 1.0.x session crypto of a data frame, through the `lorawan` crate:
//! building an encrypted uplink with its MIC, and checking the MIC of a frame the
//! parser laid out and decrypting its FRMPayload (AppSKey, or NwkSKey on FPort 0).

use lorawan::creator::DataPayloadCreator;
use lorawan::keys::{AppSKey, NewSKey, AES128};
use lorawan::maccommands::SerializableMacCommand;
use lorawan::parser::{DataPayload, FCtrl as CrateFCtrl, PhyPayload};

use super::ids::{AesKey, DevAddr};
use super::parser::{data_layout, parse, DataLayout, MType, PhyError, PhyFrame};
use super::{MAX_FRM_PAYLOAD_LEN, MIC_LEN};

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
