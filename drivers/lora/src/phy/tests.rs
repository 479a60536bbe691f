//! Tests of the PHY layer: identifiers printed and read back (hex in either case,
//! serde, errors that name the type; a key never shown), the parser on reference frames
//! (data, JoinRequest, RejoinRequest, proprietary), on every truncation of a valid
//! frame, on oversize frames, FOpts past the end and other major versions, and on
//! random bytes (never a panic); uplinks built, verified and decrypted (wrong keys or
//! counters fail the MIC, oversize payloads are refused).

use super::*;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

const NWK: AesKey =
    AesKey([0x2b, 0x7e, 0x15, 0x16, 0x28, 0xae, 0xd2, 0xa6, 0xab, 0xf7, 0x15, 0x88, 0x09, 0xcf, 0x4f, 0x3c]);
const APP: AesKey =
    AesKey([0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff]);

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
        0x40, 0x04, 0x03, 0x02, 0x01, 0x80, 0x01, 0x00, 0x01, 0xa6, 0x94, 0x64, 0x26, 0x15, 0xd6, 0xc3, 0xb5,
        0x82,
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
    assert_eq!(build_data_uplink(&up, &NWK, &APP), Err(CryptoError::PayloadTooLong { len: 243, max: 242 }));
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
