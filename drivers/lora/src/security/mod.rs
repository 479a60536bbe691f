//! LoRaWAN 1.0.x security for local decoding: rebuilding the 32-bit uplink
//! frame counter and refusing replays, checking the MIC of a data uplink and
//! decrypting it with a device's session keys, and the OTAA join (JoinRequest
//! MIC, JoinAccept decryption, session key derivation). Pure functions over
//! bytes that never panic: the caller holds the keys and the last accepted
//! counters and decides what to persist. Not a network server: no MAC
//! command handling, no downlinks, no LoRaWAN 1.1 key hierarchy.
//!
//! The framing and the AES/CMAC work go through the `lorawan` crate. Over the
//! air every multi-byte field is little-endian (EUIs, DevAddr, DevNonce,
//! AppNonce, NetID); `Eui64`/`DevAddr` hold them as written, MSB first, and
//! `JoinAccept` holds the nonces as numbers.

use aes::cipher::generic_array::GenericArray;
use lorawan::creator::JoinRequestCreator;
use lorawan::default_crypto::DefaultFactory;
use lorawan::keys::{AppKey, CryptoFactory, Decrypter, Encrypter, Mac, AES128};
use lorawan::parser::{AsPhyPayloadBytes, EncryptedJoinAcceptPayload, JoinRequestPayload};

use crate::phy::{self, AesKey, DevAddr, Eui64, MType, PhyError, PhyFrame};

/// The largest step forward the uplink counter may take between two accepted
/// frames (the value LoRaWAN 1.0 calls MAX_FCNT_GAP).
pub const MAX_FCNT_GAP: u32 = 16_384;

/// MHDR of a JoinAccept: MType 001, LoRaWAN R1.
const MHDR_JOIN_ACCEPT: u8 = 0x20;
/// Largest value of the 24-bit AppNonce and NetID.
const MAX_24_BITS: u32 = 0x00ff_ffff;
/// RxDelay carries the delay in its low 4 bits; the high ones are RFU.
const MAX_RX_DELAY: u8 = 0x0f;

/// The session of one activated device: ABP keys, or keys derived from an OTAA join.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SessionKeys {
    pub dev_addr: DevAddr,
    pub nwk_s_key: AesKey,
    pub app_s_key: AesKey,
}

/// Why a 16-bit counter heard over the air cannot be accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum FCntError {
    #[error(
        "frame counter {fcnt} is not newer than the last accepted {last}: a retransmission \
         (1.0.x devices repeat confirmed frames with the same counter) or a replay; each counter is decoded once"
    )]
    Replay { last: u32, fcnt: u32 },
    #[error(
        "frame counter jumps from {last} to {candidate}, more than {MAX_FCNT_GAP} ahead: many lost frames, \
         a device that reset its counter, or a forged frame; if the device restarted, reset its stored counter"
    )]
    GapTooLarge { last: u32, candidate: u32 },
    #[error(
        "the 32-bit frame counter is exhausted after {last}: the device must rejoin (OTAA) or get new session keys (ABP)"
    )]
    Exhausted { last: u32 },
}

impl FCntError {
    /// Short snake_case name for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            FCntError::Replay { .. } => "replay",
            FCntError::GapTooLarge { .. } => "fcnt_gap",
            FCntError::Exhausted { .. } => "fcnt_exhausted",
        }
    }
}

/// Reconstructs the 32-bit uplink counter from the 16 bits on air and the last accepted one.
///
/// Without a previous counter the 16 bits are taken as they are. Otherwise
/// the counter keeps the high half of `last`, plus one 16-bit rollover when
/// that would not be newer. A counter equal to `last`, or at most
/// `MAX_FCNT_GAP` behind it, is a `Replay` (a rollover that far ahead would
/// be refused as a gap anyway); a step of more than `MAX_FCNT_GAP` is a
/// `GapTooLarge`; going past `u32::MAX` is `Exhausted`.
pub fn reconstruct_fcnt(last: Option<u32>, on_air: u16) -> Result<u32, FCntError> {
    let Some(last) = last else {
        return Ok(u32::from(on_air));
    };
    let same_era = (last & 0xffff_0000) | u32::from(on_air);
    if same_era <= last && last - same_era <= MAX_FCNT_GAP {
        return Err(FCntError::Replay { last, fcnt: same_era });
    }
    let candidate = if same_era < last { u64::from(same_era) + 0x1_0000 } else { u64::from(same_era) };
    let candidate = u32::try_from(candidate).map_err(|_| FCntError::Exhausted { last })?;
    // `candidate > last` here: either `same_era > last` or a rollover above it.
    if candidate - last > MAX_FCNT_GAP {
        return Err(FCntError::GapTooLarge { last, candidate });
    }
    Ok(candidate)
}

/// Why a frame could not be verified, opened or built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SecurityError {
    #[error("malformed frame: {0}")]
    Malformed(#[from] PhyError),
    #[error("expected a data uplink, got a {0}")]
    NotDataUplink(MType),
    #[error("expected a JoinRequest, got a {0}")]
    NotJoinRequest(MType),
    #[error("expected a JoinAccept, got a {0}")]
    NotJoinAccept(MType),
    #[error("the frame comes from DevAddr {got} but these session keys belong to {expected}")]
    DevAddrMismatch { expected: DevAddr, got: DevAddr },
    #[error(transparent)]
    FCnt(#[from] FCntError),
    #[error("MIC check failed for the {frame}: {hint}")]
    Mic { frame: &'static str, hint: &'static str },
    #[error("cannot build a JoinAccept: {field} {value:#x} does not fit in its {bits} bits")]
    FieldTooWide { field: &'static str, value: u32, bits: u8 },
}

impl SecurityError {
    /// Short snake_case name for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            SecurityError::Malformed(_) => "malformed",
            SecurityError::NotDataUplink(_) => "not_data_uplink",
            SecurityError::NotJoinRequest(_) => "not_join_request",
            SecurityError::NotJoinAccept(_) => "not_join_accept",
            SecurityError::DevAddrMismatch { .. } => "dev_addr_mismatch",
            SecurityError::FCnt(e) => e.label(),
            SecurityError::Mic { .. } => "mic",
            SecurityError::FieldTooWide { .. } => "field_too_wide",
        }
    }
}

const DATA_MIC: SecurityError = SecurityError::Mic {
    frame: "data uplink",
    hint: "wrong NwkSKey, a frame counter more than 65,535 frames away from the stored one, or a corrupted frame",
};
const JOIN_REQUEST_MIC: SecurityError = SecurityError::Mic {
    frame: "JoinRequest",
    hint: "not sent with this AppKey (another device or a wrong key), or corrupted",
};
const JOIN_ACCEPT_MIC: SecurityError = SecurityError::Mic {
    frame: "JoinAccept",
    hint: "not made with this AppKey (meant for another device or a wrong key), or corrupted",
};

/// A data uplink whose MIC checked, decrypted.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct VerifiedUplink {
    /// The full 32-bit frame counter; store it as the device's last counter.
    pub fcnt: u32,
    /// None when the frame carries neither FPort nor FRMPayload.
    pub f_port: Option<u8>,
    /// The decrypted FRMPayload (MAC commands when `f_port` is 0).
    pub payload: Vec<u8>,
    /// ConfirmedDataUp.
    pub confirmed: bool,
    pub adr: bool,
    /// The device acknowledges a confirmed downlink.
    pub ack: bool,
    /// MAC commands piggybacked in the header (clear text in 1.0.x).
    pub f_opts: Vec<u8>,
}

/// Verifies a data uplink of `keys.dev_addr` and decrypts it.
///
/// Checks the message type and DevAddr, rebuilds the 32-bit counter from
/// `last_fcnt` (the last accepted one, `None` for a fresh session), checks the
/// MIC with the NwkSKey over that counter, and decrypts the FRMPayload with the
/// AppSKey (NwkSKey on FPort 0). The counter is judged before the MIC, so a
/// forged frame may be reported as a replay or a gap; nothing is accepted
/// without a good MIC. The MIC does not cover the AppSKey: a wrong AppSKey
/// gives garbage, not an error. Store `fcnt` only once this returns `Ok`.
pub fn verify_uplink(
    phy: &[u8],
    keys: &SessionKeys,
    last_fcnt: Option<u32>,
) -> Result<VerifiedUplink, SecurityError> {
    let frame = phy::parse(phy)?;
    let PhyFrame::Data(data) = frame else {
        return Err(SecurityError::NotDataUplink(frame.mtype()));
    };
    if !data.mtype.is_uplink() {
        return Err(SecurityError::NotDataUplink(data.mtype));
    }
    if data.dev_addr != keys.dev_addr {
        return Err(SecurityError::DevAddrMismatch { expected: keys.dev_addr, got: data.dev_addr });
    }
    let fcnt = reconstruct_fcnt(last_fcnt, data.fcnt)?;
    let layout = phy::data_layout(phy, data.mtype)?;
    let payload = phy::open_data(phy, &layout, &keys.nwk_s_key, &keys.app_s_key, fcnt).ok_or(DATA_MIC)?;
    Ok(VerifiedUplink {
        fcnt,
        f_port: data.f_port,
        payload,
        confirmed: data.mtype == MType::ConfirmedDataUp,
        adr: data.fctrl.adr,
        ack: data.fctrl.ack,
        f_opts: layout.f_opts(phy).to_vec(),
    })
}

/// What a JoinRequest carries (all of it clear text).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct JoinRequestFields {
    pub join_eui: Eui64,
    pub dev_eui: Eui64,
    pub dev_nonce: u16,
}

/// Checks the MIC of a JoinRequest with the device's AppKey and returns its fields.
pub fn verify_join_request(phy: &[u8], app_key: &AesKey) -> Result<JoinRequestFields, SecurityError> {
    let frame = phy::parse(phy)?;
    let PhyFrame::JoinRequest(request) = frame else {
        return Err(SecurityError::NotJoinRequest(frame.mtype()));
    };
    // Our parser accepted 23 bytes with the JoinRequest MType, which is all the
    // crate asks; were it to refuse, the frame cannot be authenticated.
    match JoinRequestPayload::new(phy) {
        Ok(payload) if payload.validate_mic(&AES128(app_key.0)) => Ok(JoinRequestFields {
            join_eui: request.join_eui,
            dev_eui: request.dev_eui,
            dev_nonce: request.dev_nonce,
        }),
        _ => Err(JOIN_REQUEST_MIC),
    }
}

/// Builds a JoinRequest with its MIC (for the simulator and tests).
pub fn build_join_request(join_eui: Eui64, dev_eui: Eui64, dev_nonce: u16, app_key: &AesKey) -> Vec<u8> {
    let mut creator = JoinRequestCreator::new();
    // Bytes, not numbers: the crate turns a u16 DevNonce into big-endian bytes,
    // while the air wants little-endian.
    creator
        .set_app_eui(&join_eui.to_le_bytes())
        .set_dev_eui(&dev_eui.to_le_bytes())
        .set_dev_nonce(&dev_nonce.to_le_bytes());
    creator.build(&AppKey::from(app_key.0)).to_vec()
}

/// A JoinAccept in clear (LoRaWAN 1.0.x).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct JoinAccept {
    /// AppNonce (JoinNonce since 1.0.4), 24 bits.
    pub join_nonce: u32,
    /// NetID, 24 bits.
    pub net_id: u32,
    pub dev_addr: DevAddr,
    /// RX1DRoffset and RX2 data rate.
    pub dl_settings: u8,
    /// Delay before RX1 in seconds (0 means 1), 4 bits.
    pub rx_delay: u8,
    /// Channel list, as sent.
    pub cf_list: Option<[u8; 16]>,
}

/// Reads a 24-bit little-endian field (the crate hands out 3-byte slices).
fn le24(bytes: &[u8]) -> u32 {
    bytes.iter().rev().fold(0, |acc, &b| (acc << 8) | u32::from(b))
}

/// Decrypts a JoinAccept with the device's AppKey and checks its MIC.
///
/// A JoinAccept made for another AppKey fails the MIC, which is how a device
/// (or the simulator) recognises the one meant for it.
pub fn open_join_accept(phy: &[u8], app_key: &AesKey) -> Result<JoinAccept, SecurityError> {
    let frame = phy::parse(phy)?;
    if !matches!(frame, PhyFrame::JoinAccept { .. }) {
        return Err(SecurityError::NotJoinAccept(frame.mtype()));
    }
    let key = AppKey::from(app_key.0);
    // Our parser accepted 17 or 33 bytes with the JoinAccept MType, which is
    // all the crate asks; were it to refuse, the frame cannot be authenticated.
    let Ok(encrypted) = EncryptedJoinAcceptPayload::new(phy.to_vec()) else {
        return Err(JOIN_ACCEPT_MIC);
    };
    // "Decrypting" a JoinAccept is AES encryption (the device only needs the
    // encrypt direction); the crate does that here.
    let accept = encrypted.decrypt(&key);
    if !accept.validate_mic(&key) {
        return Err(JOIN_ACCEPT_MIC);
    }
    let clear = accept.as_bytes();
    let mut dev_addr = [0u8; 4];
    // The crate's DevAddr is always a 4-byte slice of the 17 or 33 checked above.
    if let Ok(bytes) = <[u8; 4]>::try_from(accept.dev_addr().as_ref()) {
        dev_addr = bytes;
    }
    Ok(JoinAccept {
        join_nonce: le24(accept.app_nonce().as_ref()),
        net_id: le24(accept.net_id().as_ref()),
        dev_addr: DevAddr::from_le_bytes(dev_addr),
        dl_settings: accept.dl_settings().raw_value(),
        rx_delay: accept.rx_delay(),
        cf_list: clear.get(13..29).and_then(|c| <[u8; 16]>::try_from(c).ok()),
    })
}

/// Builds an encrypted JoinAccept with its MIC (for the simulator and tests).
///
/// The crate's `JoinAcceptCreator` (0.9) cannot emit a CFList (its flag for
/// one is never set) and returns its whole 33-byte buffer even without one,
/// so the clear bytes are laid out here and the crate's AES/CMAC factory
/// computes the MIC and encrypts them. Fails when a field is wider than the air allows.
pub fn build_join_accept(accept: &JoinAccept, app_key: &AesKey) -> Result<Vec<u8>, SecurityError> {
    let le24 = |field: &'static str, value: u32| {
        if value > MAX_24_BITS {
            Err(SecurityError::FieldTooWide { field, value, bits: 24 })
        } else {
            Ok(value.to_le_bytes())
        }
    };
    let join_nonce = le24("AppNonce", accept.join_nonce)?;
    let net_id = le24("NetID", accept.net_id)?;
    if accept.rx_delay > MAX_RX_DELAY {
        return Err(SecurityError::FieldTooWide { field: "RxDelay", value: accept.rx_delay.into(), bits: 4 });
    }
    let mut frame = Vec::with_capacity(33);
    frame.push(MHDR_JOIN_ACCEPT);
    frame.extend_from_slice(&join_nonce[..3]);
    frame.extend_from_slice(&net_id[..3]);
    frame.extend_from_slice(&accept.dev_addr.to_le_bytes());
    frame.push(accept.dl_settings);
    frame.push(accept.rx_delay);
    if let Some(cf_list) = &accept.cf_list {
        frame.extend_from_slice(cf_list);
    }
    let key = AES128(app_key.0);
    let mut mac = DefaultFactory.new_mac(&key);
    mac.input(&frame);
    frame.extend_from_slice(&mac.result()[..4]);
    // The network side encrypts with AES *decrypt* so that the device can
    // recover the frame with AES encrypt alone (LoRaWAN 1.0.x, JoinAccept).
    let cipher = DefaultFactory.new_dec(&key);
    for block in frame[1..].chunks_exact_mut(16) {
        cipher.decrypt_block(GenericArray::from_mut_slice(block));
    }
    Ok(frame)
}

/// One LoRaWAN 1.0.x session key: aes128_encrypt(AppKey, prefix | AppNonce | NetID | DevNonce | pad16).
fn session_key(prefix: u8, app_key: &AesKey, accept: &JoinAccept, dev_nonce: u16) -> AesKey {
    let mut block = [0u8; 16];
    block[0] = prefix;
    block[1..4].copy_from_slice(&accept.join_nonce.to_le_bytes()[..3]);
    block[4..7].copy_from_slice(&accept.net_id.to_le_bytes()[..3]);
    block[7..9].copy_from_slice(&dev_nonce.to_le_bytes());
    DefaultFactory.new_enc(&AES128(app_key.0)).encrypt_block(GenericArray::from_mut_slice(&mut block));
    AesKey(block)
}

/// Derives the LoRaWAN 1.0.x session of a device that joined with `dev_nonce`.
///
/// NwkSKey = aes128_encrypt(AppKey, 0x01 | AppNonce | NetID | DevNonce | pad16),
/// AppSKey the same with 0x02. The crate only derives from a JoinAccept it
/// decrypted itself, so the formula is applied here with its AES; tests check
/// it against the crate, a published vector and an independent computation.
/// Only the low 24 bits of the nonce and NetID count, as on air.
pub fn derive_session_keys(app_key: &AesKey, accept: &JoinAccept, dev_nonce: u16) -> SessionKeys {
    SessionKeys {
        dev_addr: accept.dev_addr,
        nwk_s_key: session_key(0x01, app_key, accept, dev_nonce),
        app_s_key: session_key(0x02, app_key, accept, dev_nonce),
    }
}

#[cfg(test)]
mod tests;
