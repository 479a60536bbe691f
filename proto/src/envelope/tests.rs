//! The envelope end to end: signed here or by Python's `cryptography`, through the wire,
//! parsed, checked; canonical bytes, floats, refusals in their order, malformed and mutated
//! payloads.

use std::path::Path;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ed25519_dalek::SigningKey;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use super::canonical::write_float;
use super::*;
use crate::keys::AuthorizedKeys;

const GATEWAY: &str = "b827ebfffe000001";

fn signing_key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn keys() -> AuthorizedKeys {
    let text = format!(
        "[[key]]\nid = \"central-2026\"\npublic_key = \"{}\"\n\
         targets = [\"barrage-*\", \"armoire-ep-rue-haute\"]\ncommands = [\"move_bay*\", \"stop_bay*\"]\n",
        BASE64.encode(signing_key(1).verifying_key().to_bytes())
    );
    AuthorizedKeys::parse(Path::new("authorized_keys"), &text).expect("valid keys")
}

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_772_366_400, 0).expect("2026-03-01T12:00:00Z")
}

fn command() -> UnsignedCommand {
    UnsignedCommand {
        id: "c-20260301-0001".into(),
        key_id: "central-2026".into(),
        gateway_id: GATEWAY.into(),
        target: "barrage-cher-1".into(),
        command: "move_bay".into(),
        args: json!({ "bay": 1, "position_pct": 40.5 }),
        not_after: now() + Duration::minutes(5),
        issued_at: None,
    }
}

fn signed(change: impl FnOnce(&mut UnsignedCommand)) -> CommandEnvelope {
    let mut c = command();
    change(&mut c);
    c.sign(&signing_key(1)).expect("valid command")
}

fn refusal(envelope: &CommandEnvelope, at: DateTime<Utc>) -> Refusal {
    check(envelope, &keys(), GATEWAY, at).expect_err("refused")
}

#[test]
fn a_signed_envelope_goes_through_the_wire_and_verifies() {
    let envelope = signed(|_| {});
    let received = CommandEnvelope::parse(envelope.to_json().as_bytes()).expect("parses");
    assert_eq!(received, envelope);
    let keys = keys();
    let key = check(&received, &keys, GATEWAY, now()).expect("accepted");
    assert_eq!(key.id, "central-2026");
    assert_eq!(received.args()["position_pct"], json!(40.5));
}

#[test]
fn canonical_bytes_are_sorted_compact_and_minimally_escaped() {
    let envelope = signed(|c| {
        c.args = json!({ "b": { "x": "é\n\"\\\u{1f}/", "Z": [1, -2, true, null, 0.5] }, "a": {} });
        c.not_after = DateTime::from_timestamp(1_772_366_700, 0).expect("time");
    });
    let expected = concat!(
        r#"{"args":{"a":{},"b":{"Z":[1,-2,true,null,0.5],"x":"é\n\"\\\u001f/"}},"command":"move_bay","#,
        r#""gateway_id":"b827ebfffe000001","id":"c-20260301-0001","key_id":"central-2026","#,
        r#""not_after":"2026-03-01T12:05:00Z","target":"barrage-cher-1"}"#
    );
    assert_eq!(String::from_utf8(envelope.canonical_bytes()).expect("utf-8"), expected);
}

#[test]
fn canonical_bytes_do_not_depend_on_member_order_or_whitespace() {
    let envelope = signed(|c| c.args = json!({ "bay": 1, "options": { "slow": true, "margin": 2 } }));
    let signature = BASE64.encode(envelope.signature());
    let reordered = format!(
        "{{\n  \"signature\" : \"{signature}\",\n\t\"target\":\"barrage-cher-1\",  \"not_after\": \"{}\",\r\n\
         \"args\" : {{ \"options\" : {{ \"margin\" : 2 , \"slow\" : true }} , \"bay\" : 1 }},\n\
         \"key_id\":\"central-2026\", \"id\":\"c-20260301-0001\",\"gateway_id\":\"{GATEWAY}\",\n\
         \"command\":\"move\\u005fbay\"\n}}\n",
        envelope.not_after_text()
    );
    let received = CommandEnvelope::parse(reordered.as_bytes()).expect("parses");
    assert_eq!(received.canonical_bytes(), envelope.canonical_bytes());
    check(&received, &keys(), GATEWAY, now()).expect("the signature still verifies");
}

#[test]
fn issued_at_is_signed_when_present_and_absent_from_the_bytes_otherwise() {
    let with = signed(|c| c.issued_at = Some(now()));
    let canonical = String::from_utf8(with.canonical_bytes()).expect("utf-8");
    assert!(
        canonical.contains(r#""id":"c-20260301-0001","issued_at":"2026-03-01T12:00:00Z","key_id""#),
        "{canonical}"
    );
    let received = CommandEnvelope::parse(with.to_json().as_bytes()).expect("parses");
    assert_eq!(received.issued_at(), Some(now()));
    check(&received, &keys(), GATEWAY, now()).expect("verifies");
    // Moved, or removed: the signature no longer holds.
    let wire = with.to_json();
    for text in [
        wire.replace("2026-03-01T12:00:00Z", "2026-03-01T12:01:00Z"),
        wire.replace(r#""issued_at":"2026-03-01T12:00:00Z","#, ""),
    ] {
        let envelope = CommandEnvelope::parse(text.as_bytes()).expect("well-formed");
        assert_eq!(refusal(&envelope, now()).reason, "bad_signature", "{text}");
    }
    let without = String::from_utf8(signed(|_| {}).canonical_bytes()).expect("utf-8");
    assert!(!without.contains("issued_at"), "old signers' bytes unchanged: {without}");
}

#[test]
fn an_envelope_issued_in_the_future_is_refused() {
    let ahead = signed(|c| c.issued_at = Some(now() + MAX_CLOCK_SKEW + Duration::seconds(1)));
    assert_eq!(refusal(&ahead, now()).reason, "issued_in_future");
    let skewed = signed(|c| c.issued_at = Some(now() + MAX_CLOCK_SKEW));
    check(&skewed, &keys(), GATEWAY, now()).expect("a little skew is allowed");
    let bad = signed(|_| {}).to_json().replace("\"key_id\"", "\"issued_at\":\"yesterday\",\"key_id\"");
    let refused = CommandEnvelope::parse(bad.as_bytes()).expect_err("not a time");
    assert!(refused.message.contains("issued_at"), "{refused}");
}

#[test]
fn a_forged_signature_names_the_key_as_claimed() {
    let envelope = command().sign(&signing_key(9)).expect("signed by the wrong key");
    let refused = refusal(&envelope, now());
    assert!(refused.message.contains("claimed key `central-2026`"), "{refused}");
}

#[test]
fn floats_are_written_as_python_repr_does() {
    let cases = [
        (0.1, "0.1"),
        (12.5, "12.5"),
        (100.0, "100.0"),
        (-3.0, "-3.0"),
        (0.0, "0.0"),
        (-0.0, "-0.0"),
        (1e15, "1000000000000000.0"),
        (1e16, "1e+16"),
        (1.5e16, "1.5e+16"),
        (0.0001, "0.0001"),
        (0.00001, "1e-05"),
        (-1.5e-7, "-1.5e-07"),
        (1.0 / 3.0, "0.3333333333333333"),
        (123_456_789.125, "123456789.125"),
        (9_007_199_254_740_992.0, "9007199254740992.0"),
        (5e-324, "5e-324"),
        (f64::MAX, "1.7976931348623157e+308"),
        (1e22, "1e+22"),
    ];
    for (value, expected) in cases {
        let mut out = String::new();
        write_float(&mut out, value);
        assert_eq!(out, expected, "{value:e}");
    }
}

#[test]
fn numbers_are_read_to_the_nearest_double() {
    // serde_json rounds long decimals one ulp off unless its `float_roundtrip` feature is
    // on; the canonical bytes would then differ from the signer's and verify nothing.
    for text in ["113118.04384909477", "-520131.84126414603", "2.2250738585072014e-308", "1e-30"] {
        let read: Value = serde_json::from_str(text).expect("a number");
        assert_eq!(
            read.as_f64().map(f64::to_bits),
            text.parse::<f64>().ok().map(f64::to_bits),
            "{text}: serde_json must be built with features = [\"float_roundtrip\"] (gateway/Cargo.toml)"
        );
    }
}

#[test]
fn integers_stay_integers_and_decimals_stay_decimals() {
    let received = signed(|c| c.args = json!({}));
    let text = received.to_json().replace(
        "\"args\":{}",
        r#""args":{"i":-9223372036854775808,"u":18446744073709551615,"one":1.0,"e":1E2,"z":0}"#,
    );
    let parsed = CommandEnvelope::parse(text.as_bytes()).expect("parses");
    let canonical = String::from_utf8(parsed.canonical_bytes()).expect("utf-8");
    assert!(
        canonical.starts_with(
            r#"{"args":{"e":100.0,"i":-9223372036854775808,"one":1.0,"u":18446744073709551615,"z":0}"#
        ),
        "{canonical}"
    );
}

#[test]
fn a_key_not_in_authorized_keys_is_unknown() {
    let envelope = signed(|c| c.key_id = "central-2027".into());
    let refused = refusal(&envelope, now());
    assert_eq!(refused.reason, "unknown_key");
    assert!(refused.message.contains("central-2027"), "{refused}");
}

#[test]
fn a_signature_by_another_key_is_bad() {
    let envelope = command().sign(&signing_key(9)).expect("signed by the wrong key");
    assert_eq!(refusal(&envelope, now()).reason, "bad_signature");
}

#[test]
fn any_change_after_signing_breaks_the_signature() {
    let wire = signed(|_| {}).to_json();
    let tampered = [
        wire.replace("40.5", "90.5"),
        wire.replace("\"bay\":1", "\"bay\":2"),
        wire.replace("barrage-cher-1", "barrage-cher-2"),
        wire.replace("c-20260301-0001", "c-20260301-0002"),
        // Same instant, written differently: the signed text is the one received.
        wire.replace("12:05:00Z", "12:05:00+00:00"),
        wire.replace("\"args\":{", "\"args\":{\"force\":true,"),
    ];
    for text in tampered {
        assert_ne!(text, wire);
        let envelope = CommandEnvelope::parse(text.as_bytes()).expect("still well-formed");
        assert_eq!(refusal(&envelope, now()).reason, "bad_signature", "{text}");
    }
}

#[test]
fn a_command_for_another_gateway_is_refused() {
    let envelope = signed(|c| c.gateway_id = "b827ebfffe000002".into());
    let refused = refusal(&envelope, now());
    assert_eq!(refused.reason, "wrong_gateway");
    assert!(refused.message.contains("b827ebfffe000002"), "{refused}");
}

#[test]
fn a_command_past_not_after_is_expired() {
    let envelope = signed(|_| {});
    check(&envelope, &keys(), GATEWAY, envelope.not_after()).expect("valid up to not_after itself");
    let refused = refusal(&envelope, envelope.not_after() + Duration::seconds(1));
    assert_eq!(refused.reason, "expired");
    // A command queued during a long outage arrives hours late.
    assert_eq!(refusal(&envelope, now() + Duration::hours(6)).reason, "expired");
}

#[test]
fn a_not_after_more_than_a_day_ahead_is_refused() {
    let at_limit = signed(|c| c.not_after = now() + MAX_VALIDITY);
    check(&at_limit, &keys(), GATEWAY, now()).expect("24 h is allowed");
    let too_far = signed(|c| c.not_after = now() + MAX_VALIDITY + Duration::seconds(1));
    assert_eq!(refusal(&too_far, now()).reason, "not_after_too_far");
}

#[test]
fn a_key_is_limited_to_its_targets_and_commands() {
    let wrong_target = signed(|c| c.target = "armoire-ep-rue-basse".into());
    assert_eq!(refusal(&wrong_target, now()).reason, "out_of_scope");
    let wrong_command = signed(|c| c.command = "set_bay_limits".into());
    let refused = refusal(&wrong_command, now());
    assert_eq!(refused.reason, "out_of_scope");
    assert!(refused.message.contains("set_bay_limits"), "{refused}");
    let listed = signed(|c| (c.target, c.command) = ("armoire-ep-rue-haute".into(), "stop_bay".into()));
    check(&listed, &keys(), GATEWAY, now()).expect("in scope");
}

#[test]
fn checks_run_in_the_documented_order() {
    // Bad signature, wrong gateway, expired and out of scope at once: the signature decides.
    let envelope = UnsignedCommand { gateway_id: "elsewhere".into(), target: "nowhere".into(), ..command() }
        .sign(&signing_key(9))
        .expect("signed");
    assert_eq!(refusal(&envelope, now() + Duration::days(2)).reason, "bad_signature");
    // Correctly signed, other gateway and expired: the gateway decides.
    let envelope = signed(|c| c.gateway_id = "elsewhere".into());
    assert_eq!(refusal(&envelope, now() + Duration::days(2)).reason, "wrong_gateway");
    // Expired and out of scope: expiry decides.
    let envelope = signed(|c| c.target = "nowhere".into());
    assert_eq!(refusal(&envelope, now() + Duration::days(2)).reason, "expired");
}

#[test]
fn malformed_envelopes_are_refused_with_what_is_wrong() {
    let wire = signed(|_| {}).to_json();
    let signature = BASE64.encode(signed(|_| {}).signature());
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"{\"id\":".to_vec(), "EOF"),
        (b"not json".to_vec(), "expected"),
        (vec![0xff, 0xfe, b'{'], "UTF-8"),
        (wire.replace("\"args\":{\"bay\":1,\"position_pct\":40.5}", "\"args\":[1]").into_bytes(), "object"),
        (wire.replace("\"id\":\"c-20260301-0001\"", "\"id\":5").into_bytes(), "invalid type"),
        (
            wire.replace("\"target\":", "\"colour\":\"red\",\"target\":").into_bytes(),
            "unknown field `colour`",
        ),
        (wire.replace(",\"target\":\"barrage-cher-1\"", "").into_bytes(), "missing field `target`"),
        (wire.replace("\"bay\":1,", "\"bay\":1,\"bay\":2,").into_bytes(), "appears twice"),
        (wire.replace("\"target\":", "\"id\":\"again\",\"target\":").into_bytes(), "duplicate field `id`"),
        (wire.replace(&signature, "not base64!").into_bytes(), "base64"),
        (wire.replace(&signature, &BASE64.encode([1u8; 63])).into_bytes(), "63 bytes"),
        (wire.replace("2026-03-01T12:05:00Z", "01/03/2026 12:05").into_bytes(), "RFC 3339"),
        (wire.replace("c-20260301-0001", "c 1").into_bytes(), "printable ASCII"),
        (wire.replace("c-20260301-0001", "").into_bytes(), "printable ASCII"),
        (wire.replace("\"barrage-cher-1\"", "\"\"").into_bytes(), "`target`"),
        (wire.replace("\"barrage-cher-1\"", "\"barrage\\u0000\"").into_bytes(), "control"),
        (wire.replace("40.5", "NaN").into_bytes(), "expected value"),
        (wire.replace("40.5", "1e999").into_bytes(), "out of range"),
        (format!("{wire}{}", " ".repeat(MAX_ENVELOPE_BYTES)).into_bytes(), "at most 8192"),
    ];
    for (payload, words) in cases {
        let refused = CommandEnvelope::parse(&payload).expect_err(words);
        assert_eq!(refused.reason, "malformed", "{refused}");
        assert!(refused.message.contains(words), "expected {words:?} in: {refused}");
        assert!(!refused.message.contains('\n'), "one line: {refused}");
    }
}

#[test]
fn refusal_messages_stay_on_one_line() {
    let wire = signed(|_| {}).to_json().replace("\"target\":", "\"x\\ny\":1,\"target\":");
    let refused = CommandEnvelope::parse(wire.as_bytes()).expect_err("unknown field");
    assert!(refused.message.contains("x\\ny"), "{refused}");
    assert!(Refusal::new("x", "a".repeat(10_000)).message.len() < 500);
}

#[test]
fn random_and_mutated_payloads_never_panic_nor_pass_altered() {
    let keys = keys();
    let original = signed(|c| c.args = json!({ "bay": 1, "position_pct": 40.5, "note": "crue" }));
    let wire = original.to_json().into_bytes();
    let mut rng = StdRng::seed_from_u64(0x0062_6572_7279_6777);
    for round in 0..20_000 {
        let payload: Vec<u8> = if round % 4 == 0 {
            let len = rng.gen_range(0..400);
            (0..len).map(|_| rng.gen()).collect()
        } else {
            let mut p = wire.clone();
            for _ in 0..rng.gen_range(1..4) {
                let at = rng.gen_range(0..=p.len());
                match rng.gen_range(0..3) {
                    0 if at < p.len() => p[at] = rng.gen(),
                    1 if at < p.len() => {
                        p.remove(at);
                    }
                    _ => p.insert(at, *b" \"{}[],:0e-\\\n".get(rng.gen_range(0..13)).unwrap_or(&b' ')),
                }
            }
            p
        };
        if let Ok(envelope) = CommandEnvelope::parse(&payload) {
            if check(&envelope, &keys, GATEWAY, now()).is_ok() {
                assert_eq!(
                    envelope.canonical_bytes(),
                    original.canonical_bytes(),
                    "accepted an altered command: {}",
                    String::from_utf8_lossy(&payload)
                );
            }
        }
    }
}

/// Signs envelopes with Python's `cryptography` (Debian: python3-cryptography) and
/// `json.dumps(sort_keys=True, ...)`, then verifies them here: the platform's recipe works.
#[test]
fn envelopes_signed_in_python_verify_here() {
    const SCRIPT: &str = r#"
import base64, json, random, struct, sys
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

key = Ed25519PrivateKey.from_private_bytes(bytes([7] * 32))
rng = random.Random(2026)

def random_double():
    while True:
        f = struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0]
        if f == f and f not in (float("inf"), float("-inf")):
            return f

fixed = [0.1, 12.5, 100.0, 1e16, 1e15, 1e-4, 1e-5, 1.5e-7, -0.0, 0.0, 5e-324,
         1.7976931348623157e308, 123456789.125, 2.0 ** 53, 1 / 3, 2.2250738585072014e-308]
arg_sets = [
    {"bay": 1, "position_pct": 40.5, "zèbre": "é\u00e9\n\t\"\\\u001f\u007f\u2028/😀",
     "nested": {"b": [1, -2, True, False, None], "a": {}, "Z": "upper", "": "empty key"},
     "big": 2 ** 64 - 1, "neg": -(2 ** 63), "fixed": fixed},
    {"uniform": [rng.uniform(-1e6, 1e6) for _ in range(60)]},
    {"scaled": [rng.random() * 10.0 ** rng.randint(-30, 30) for _ in range(60)]},
    {"bits": [random_double() for _ in range(60)]},
]
out = {"public_key": base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode(),
       "envelopes": []}
for i, args in enumerate(arg_sets):
    obj = {"id": "py-%04d" % i, "key_id": "central-2026", "gateway_id": "b827ebfffe000001",
           "target": "barrage-cher-1", "command": "move_bay", "args": args,
           "not_after": "2026-03-01T13:05:00.250+01:00"}
    if i % 2 == 1:
        obj["issued_at"] = "2026-03-01T11:59:30.5Z"
    canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    wire = dict(obj, signature=base64.b64encode(key.sign(canonical)).decode())
    # As a relay might pass it on: other member order, whitespace, \u escapes.
    text = json.dumps(dict(reversed(list(wire.items()))), indent=1, ensure_ascii=True)
    assert len(text.encode()) <= 8192, len(text)
    out["envelopes"].append({"canonical_hex": canonical.hex(), "wire": text})
json.dump(out, sys.stdout)
"#;
    let python = std::env::var("BERRYGW_TEST_PYTHON").unwrap_or_else(|_| "/usr/bin/python3".into());
    let output = std::process::Command::new(&python).arg("-c").arg(SCRIPT).output().unwrap_or_else(|e| {
        panic!("cannot run {python} ({e}): this test needs Debian's python3 and python3-cryptography")
    });
    assert!(
        output.status.success(),
        "{python} failed; this test needs Debian's python3-cryptography (apt-get install \
         python3-cryptography):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let out: Value = serde_json::from_slice(&output.stdout).expect("the script prints JSON");
    let public_key = BASE64.encode(signing_key(7).verifying_key().to_bytes());
    assert_eq!(out["public_key"], json!(public_key), "same seed, same public key");
    let text = format!(
        "[[key]]\nid = \"central-2026\"\npublic_key = \"{public_key}\"\ntargets = [\"*\"]\ncommands = [\"*\"]\n"
    );
    let keys = AuthorizedKeys::parse(Path::new("authorized_keys"), &text).expect("keys");
    let envelopes = out["envelopes"].as_array().expect("a list");
    assert_eq!(envelopes.len(), 4);
    for e in envelopes {
        let wire = e["wire"].as_str().expect("wire text");
        let envelope = CommandEnvelope::parse(wire.as_bytes()).expect("Python's envelope parses");
        let expected = hex::decode(e["canonical_hex"].as_str().expect("hex")).expect("hex");
        assert_eq!(
            String::from_utf8_lossy(&envelope.canonical_bytes()),
            String::from_utf8_lossy(&expected),
            "canonical bytes differ from Python's json.dumps (if only long floats differ: serde_json needs its `float_roundtrip` feature)"
        );
        check(&envelope, &keys, GATEWAY, now()).expect("Python's signature verifies");
    }
    let issued: Vec<bool> = envelopes
        .iter()
        .filter_map(|e| CommandEnvelope::parse(e["wire"].as_str()?.as_bytes()).ok())
        .map(|e| e.issued_at().is_some())
        .collect();
    assert_eq!(issued, [false, true, false, true], "with and without issued_at");
}
