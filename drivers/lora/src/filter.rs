//! Uplink filters, as ChirpStack's forwarders offer them: drop frames with a
//! bad or missing CRC, frames heard from other gateways (downlink message
//! types), and data or join frames outside configured DevAddr / JoinEUI
//! prefixes. The filter parses each PHYPayload once and hands the result on.
//! It does not check MICs or know devices; that is local decoding's job.

use std::fmt;
use std::str::FromStr;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

use crate::frame::{CrcStatus, UplinkFrame};
use crate::phy::{self, DevAddr, Eui64, HexError, MType, PhyError, PhyFrame};

/// Why a prefix such as "26000000/7" could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    #[error("invalid prefix {input:?}: expected \"<hex>/<length>\", e.g. {example:?}")]
    MissingLength { input: String, example: &'static str },
    #[error("invalid prefix {input:?}: {source}")]
    Hex { input: String, source: HexError },
    #[error("invalid prefix length in {input:?}: must be a number from 0 to {max}")]
    BadLength { input: String, max: u8 },
}

/// Splits "<hex>/<len>" and checks the length is at most `max`.
fn split_prefix<'a>(s: &'a str, max: u8, example: &'static str) -> Result<(&'a str, u8), PrefixError> {
    let (hex, len) =
        s.split_once('/').ok_or_else(|| PrefixError::MissingLength { input: s.to_owned(), example })?;
    let bad = || PrefixError::BadLength { input: s.to_owned(), max };
    let len: u8 = len.trim().parse().map_err(|_| bad())?;
    if len > max {
        return Err(bad());
    }
    Ok((hex.trim(), len))
}

/// The mask selecting the top `len` bits of a u64 (`len` <= 64).
fn mask64(len: u8) -> u64 {
    u64::MAX.checked_shl(64 - u32::from(len)).unwrap_or(0)
}

/// A DevAddr prefix such as "26000000/7"; bits past the length are ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DevAddrPrefix {
    /// The prefix with every bit past `len` cleared.
    prefix: DevAddr,
    len: u8,
}

impl DevAddrPrefix {
    /// A prefix of `len` bits (0..=32) of `addr`; None when `len` > 32.
    pub fn new(addr: DevAddr, len: u8) -> Option<Self> {
        (len <= 32).then(|| DevAddrPrefix { prefix: DevAddr::from_u32(addr.to_u32() & Self::mask(len)), len })
    }

    fn mask(len: u8) -> u32 {
        // len <= 32, so the top 32 bits of mask64 are the 32-bit mask.
        (mask64(len) >> 32) as u32
    }

    /// True when the top `len` bits of `addr` equal the prefix.
    pub fn matches(&self, addr: DevAddr) -> bool {
        addr.to_u32() & Self::mask(self.len) == self.prefix.to_u32()
    }
}

impl FromStr for DevAddrPrefix {
    type Err = PrefixError;

    fn from_str(s: &str) -> Result<Self, PrefixError> {
        let (hex, len) = split_prefix(s, 32, "26000000/7")?;
        let addr: DevAddr = hex.parse().map_err(|source| PrefixError::Hex { input: s.to_owned(), source })?;
        DevAddrPrefix::new(addr, len).ok_or(PrefixError::BadLength { input: s.to_owned(), max: 32 })
    }
}

impl fmt::Display for DevAddrPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.prefix, self.len)
    }
}

/// An EUI-64 prefix such as "70b3d57ed0000000/24"; bits past the length are ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EuiPrefix {
    /// The prefix with every bit past `len` cleared.
    prefix: Eui64,
    len: u8,
}

impl EuiPrefix {
    /// A prefix of `len` bits (0..=64) of `eui`; None when `len` > 64.
    pub fn new(eui: Eui64, len: u8) -> Option<Self> {
        (len <= 64).then(|| EuiPrefix { prefix: Eui64::from_u64(eui.to_u64() & mask64(len)), len })
    }

    /// True when the top `len` bits of `eui` equal the prefix.
    pub fn matches(&self, eui: Eui64) -> bool {
        eui.to_u64() & mask64(self.len) == self.prefix.to_u64()
    }
}

impl FromStr for EuiPrefix {
    type Err = PrefixError;

    fn from_str(s: &str) -> Result<Self, PrefixError> {
        let (hex, len) = split_prefix(s, 64, "70b3d57ed0000000/24")?;
        let eui: Eui64 = hex.parse().map_err(|source| PrefixError::Hex { input: s.to_owned(), source })?;
        EuiPrefix::new(eui, len).ok_or(PrefixError::BadLength { input: s.to_owned(), max: 64 })
    }
}

impl fmt::Display for EuiPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.prefix, self.len)
    }
}

/// Serde as the "<hex>/<len>" string for both prefix types.
macro_rules! prefix_serde {
    ($name:ident, $what:expr) => {
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl de::Visitor<'_> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($what)
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$name, E> {
                        v.parse().map_err(E::custom)
                    }
                }
                d.deserialize_str(V)
            }
        }
    };
}

prefix_serde!(DevAddrPrefix, "a DevAddr prefix such as \"26000000/7\"");
prefix_serde!(EuiPrefix, "a JoinEUI prefix such as \"70b3d57ed0000000/24\"");

/// The `[filters]` configuration: what the gateway forwards.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// Forward frames whose CRC check failed (they still have to parse).
    #[serde(default)]
    pub forward_crc_bad: bool,
    /// Forward frames received without a CRC (they still have to parse).
    #[serde(default)]
    pub forward_crc_missing: bool,
    /// Data uplinks pass when their DevAddr matches one; empty = all pass.
    #[serde(default)]
    pub dev_addr_prefixes: Vec<DevAddrPrefix>,
    /// JoinRequests pass when their JoinEUI matches one; empty = all pass.
    #[serde(default)]
    pub join_eui_prefixes: Vec<EuiPrefix>,
}

/// Why an uplink was not forwarded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("CRC check failed")]
    CrcBad,
    #[error("frame has no CRC")]
    CrcMissing,
    #[error("malformed PHYPayload: {0}")]
    Malformed(PhyError),
    #[error("{0} is a downlink message type (another gateway's transmission)")]
    NotUplink(MType),
    #[error("DevAddr {0} matches no configured dev_addr_prefixes")]
    DevAddrFiltered(DevAddr),
    #[error("JoinEUI {0} matches no configured join_eui_prefixes")]
    JoinEuiFiltered(Eui64),
}

impl Rejection {
    /// Short label for metrics and rate-limited logs ("crc_bad", "malformed", ...).
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::CrcBad => "crc_bad",
            Rejection::CrcMissing => "crc_missing",
            Rejection::Malformed(_) => "malformed",
            Rejection::NotUplink(_) => "not_uplink",
            Rejection::DevAddrFiltered(_) => "dev_addr_filtered",
            Rejection::JoinEuiFiltered(_) => "join_eui_filtered",
        }
    }
}

/// Decides, frame by frame, what the gateway forwards.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UplinkFilter {
    config: FilterConfig,
}

impl UplinkFilter {
    /// A filter applying `config`.
    pub fn new(config: FilterConfig) -> Self {
        UplinkFilter { config }
    }

    /// The configuration this filter applies.
    pub fn config(&self) -> &FilterConfig {
        &self.config
    }

    /// Parses the frame's PHYPayload and returns it if the frame is to be forwarded.
    pub fn check(&self, frame: &UplinkFrame) -> Result<PhyFrame, Rejection> {
        match frame.crc {
            CrcStatus::Ok => {}
            CrcStatus::Bad if !self.config.forward_crc_bad => return Err(Rejection::CrcBad),
            CrcStatus::Missing if !self.config.forward_crc_missing => return Err(Rejection::CrcMissing),
            CrcStatus::Bad | CrcStatus::Missing => {}
        }
        let phy = phy::parse(&frame.phy_payload).map_err(Rejection::Malformed)?;
        match phy {
            PhyFrame::Data(d) if !d.mtype.is_uplink() => Err(Rejection::NotUplink(d.mtype)),
            PhyFrame::JoinAccept { .. } => Err(Rejection::NotUplink(MType::JoinAccept)),
            PhyFrame::Data(d) => {
                let prefixes = &self.config.dev_addr_prefixes;
                if prefixes.is_empty() || prefixes.iter().any(|p| p.matches(d.dev_addr)) {
                    Ok(phy)
                } else {
                    Err(Rejection::DevAddrFiltered(d.dev_addr))
                }
            }
            PhyFrame::JoinRequest(j) => {
                let prefixes = &self.config.join_eui_prefixes;
                if prefixes.is_empty() || prefixes.iter().any(|p| p.matches(j.join_eui)) {
                    Ok(phy)
                } else {
                    Err(Rejection::JoinEuiFiltered(j.join_eui))
                }
            }
            // Rejoins carry a NetID or JoinEUI the operator does not filter on.
            PhyFrame::RejoinRequest(_) | PhyFrame::Proprietary { .. } => Ok(phy),
        }
    }
}

impl From<FilterConfig> for UplinkFilter {
    fn from(config: FilterConfig) -> Self {
        UplinkFilter::new(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phy::{build_data_uplink, AesKey, DataUplink};

    fn data_up(addr: &str) -> UplinkFrame {
        let bytes = build_data_uplink(
            &DataUplink {
                dev_addr: addr.parse().unwrap(),
                fcnt: 1,
                confirmed: false,
                adr: true,
                f_port: 2,
                payload: b"\x01\x02",
            },
            &AesKey([1; 16]),
            &AesKey([2; 16]),
        )
        .unwrap();
        UplinkFrame::example(bytes, CrcStatus::Ok)
    }

    fn join_request(join_eui: &str) -> UplinkFrame {
        let mut b = vec![0x00];
        b.extend_from_slice(&join_eui.parse::<Eui64>().unwrap().to_le_bytes());
        b.extend_from_slice(&[0x11; 8]);
        b.extend_from_slice(&[0x01, 0x00, 1, 2, 3, 4]);
        UplinkFrame::example(b, CrcStatus::Ok)
    }

    fn filter(toml_text: &str) -> UplinkFilter {
        UplinkFilter::new(toml::from_str(toml_text).unwrap())
    }

    #[test]
    fn default_filter_forwards_good_uplinks_and_drops_bad_crc() {
        let f = UplinkFilter::default();
        let phy = f.check(&data_up("26011bda")).unwrap();
        assert_eq!(phy.dev_addr(), Some("26011bda".parse().unwrap()));
        assert!(f.check(&join_request("70b3d57ed0000000")).is_ok());
        let mut bad = data_up("26011bda");
        bad.crc = CrcStatus::Bad;
        assert_eq!(f.check(&bad), Err(Rejection::CrcBad));
        bad.crc = CrcStatus::Missing;
        assert_eq!(f.check(&bad), Err(Rejection::CrcMissing));
    }

    #[test]
    fn crc_policies_forward_when_asked() {
        let f = filter("forward_crc_bad = true\nforward_crc_missing = true");
        let mut frame = data_up("26011bda");
        frame.crc = CrcStatus::Bad;
        assert!(f.check(&frame).is_ok());
        frame.crc = CrcStatus::Missing;
        assert!(f.check(&frame).is_ok());
        // Forwarding bad CRCs does not forward garbage that does not parse.
        frame.phy_payload = vec![0x40, 1, 2];
        assert_eq!(f.check(&frame).unwrap_err().reason(), "malformed");
        let only_missing = filter("forward_crc_missing = true");
        frame.phy_payload = data_up("26011bda").phy_payload;
        assert_eq!(only_missing.check(&frame).map(|p| p.mtype()), Ok(MType::UnconfirmedDataUp));
        frame.crc = CrcStatus::Bad;
        assert_eq!(only_missing.check(&frame), Err(Rejection::CrcBad));
    }

    #[test]
    fn dev_addr_prefixes_select_data_uplinks() {
        let f = filter("dev_addr_prefixes = [\"26000000/7\", \"fc00ac00/23\"]");
        assert!(f.check(&data_up("26011bda")).is_ok());
        assert!(f.check(&data_up("27ffffff")).is_ok());
        assert!(f.check(&data_up("fc00adff")).is_ok());
        assert_eq!(
            f.check(&data_up("28000000")),
            Err(Rejection::DevAddrFiltered("28000000".parse().unwrap()))
        );
        assert_eq!(f.check(&data_up("fc00ae00")).unwrap_err().reason(), "dev_addr_filtered");
        // DevAddr prefixes do not apply to joins.
        assert!(f.check(&join_request("0000000000000001")).is_ok());
    }

    #[test]
    fn join_eui_prefixes_select_join_requests() {
        let f = filter("join_eui_prefixes = [\"70b3d57ed0000000/24\"]");
        assert!(f.check(&join_request("70b3d5ffffffffff")).is_ok());
        assert_eq!(
            f.check(&join_request("70b3d60000000000")),
            Err(Rejection::JoinEuiFiltered("70b3d60000000000".parse().unwrap()))
        );
        assert!(f.check(&data_up("01020304")).is_ok());
        // Rejoin and proprietary frames pass.
        let mut rejoin = vec![0xc0, 0x00, 1, 2, 3];
        rejoin.extend_from_slice(&[0u8; 14]);
        assert!(f.check(&UplinkFrame::example(rejoin, CrcStatus::Ok)).is_ok());
        assert!(f.check(&UplinkFrame::example(vec![0xe0, 9, 9], CrcStatus::Ok)).is_ok());
    }

    #[test]
    fn prefix_lengths_zero_and_full_match_all_and_exactly_one() {
        let all: DevAddrPrefix = "ffffffff/0".parse().unwrap();
        assert_eq!(all.to_string(), "00000000/0");
        assert!(all.matches(DevAddr::from_u32(0)) && all.matches(DevAddr::from_u32(u32::MAX)));
        let one: DevAddrPrefix = "26011bda/32".parse().unwrap();
        assert!(one.matches("26011bda".parse().unwrap()));
        assert!(!one.matches("26011bdb".parse().unwrap()));
        let eui_all: EuiPrefix = "0123456789abcdef/0".parse().unwrap();
        assert!(eui_all.matches(Eui64::from_u64(u64::MAX)));
        let eui_one: EuiPrefix = "0123456789abcdef/64".parse().unwrap();
        assert!(eui_one.matches(Eui64::from_u64(0x0123_4567_89ab_cdef)));
        assert!(!eui_one.matches(Eui64::from_u64(0x0123_4567_89ab_cdee)));
        // Bits past the length are accepted and masked.
        let masked: DevAddrPrefix = "26ffffff/7".parse().unwrap();
        assert_eq!(masked.to_string(), "26000000/7");
        assert_eq!(masked, "26000000/7".parse().unwrap());
    }

    #[test]
    fn bad_prefixes_have_clear_messages() {
        let e = |s: &str| s.parse::<DevAddrPrefix>().unwrap_err().to_string();
        assert_eq!(
            e("26000000"),
            "invalid prefix \"26000000\": expected \"<hex>/<length>\", e.g. \"26000000/7\""
        );
        assert_eq!(
            e("26000000/33"),
            "invalid prefix length in \"26000000/33\": must be a number from 0 to 32"
        );
        assert_eq!(e("26000000/x"), "invalid prefix length in \"26000000/x\": must be a number from 0 to 32");
        assert_eq!(
            e("260000/7"),
            "invalid prefix \"260000/7\": invalid DevAddr: expected 8 hex digits (4 bytes), got 6 characters in \"260000\""
        );
        let eui = "70b3d57ed0000000/65".parse::<EuiPrefix>().unwrap_err();
        assert_eq!(eui, PrefixError::BadLength { input: "70b3d57ed0000000/65".into(), max: 64 });
        let cfg =
            toml::from_str::<FilterConfig>("dev_addr_prefixes = [\"26000000/40\"]").unwrap_err().to_string();
        assert!(cfg.contains("must be a number from 0 to 32"), "{cfg}");
        let unknown = toml::from_str::<FilterConfig>("forward_crc_ok = true").unwrap_err().to_string();
        assert!(unknown.contains("unknown field `forward_crc_ok`"), "{unknown}");
    }

    #[test]
    fn downlink_message_types_are_rejected() {
        let f = UplinkFilter::default();
        let mut down = data_up("26011bda");
        for (mhdr, mtype) in [(0x60, MType::UnconfirmedDataDown), (0xa0, MType::ConfirmedDataDown)] {
            down.phy_payload[0] = mhdr;
            assert_eq!(f.check(&down), Err(Rejection::NotUplink(mtype)));
        }
        let accept = UplinkFrame::example(vec![0x20; 17], CrcStatus::Ok);
        assert_eq!(f.check(&accept), Err(Rejection::NotUplink(MType::JoinAccept)));
        assert_eq!(f.check(&accept).unwrap_err().reason(), "not_uplink");
    }

    #[test]
    fn malformed_frames_are_rejected_with_the_parse_error() {
        let f = UplinkFilter::default();
        assert_eq!(
            f.check(&UplinkFrame::example(vec![], CrcStatus::Ok)),
            Err(Rejection::Malformed(PhyError::Empty))
        );
        let r = f.check(&UplinkFrame::example(vec![0x40], CrcStatus::Ok)).unwrap_err();
        assert_eq!(r.reason(), "malformed");
        assert_eq!(
            r.to_string(),
            "malformed PHYPayload: UnconfirmedDataUp frame too short: 1 bytes, needs at least 12"
        );
    }

    #[test]
    fn config_round_trips_through_toml() {
        let cfg = FilterConfig {
            forward_crc_bad: true,
            forward_crc_missing: false,
            dev_addr_prefixes: vec!["26000000/7".parse().unwrap()],
            join_eui_prefixes: vec!["70b3d57ed0000000/24".parse().unwrap()],
        };
        let text = toml::to_string(&cfg).unwrap();
        assert_eq!(toml::from_str::<FilterConfig>(&text).unwrap(), cfg);
    }
}
