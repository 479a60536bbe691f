use std::path::Path;

use super::*;
use crate::sealed::Identity;

const GW: &str = "0016c001ff10a235";
const OTHER: &str = "0016c001ff10a236";

fn signer(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn keys(scope: &str) -> AuthorizedKeys {
    let text = format!(
        "[[key]]\nid = \"config\"\npublic_key = \"{}\"\nbundles = {scope}\n",
        BASE64.encode(signer(1).verifying_key().to_bytes())
    );
    AuthorizedKeys::parse(Path::new("authorized_keys"), &text).expect("keys")
}

fn files() -> Vec<Source> {
    vec![
        Source {
            path: "devices.toml".into(),
            content: b"app_s_key = \"2b7e151628aed2a6abf7158809cf4f3c\"".to_vec(),
        },
        Source {
            path: "codecs/meter.js".into(),
            content: b"function decodeUplink(i) { return {data: {}}; }".to_vec(),
        },
    ]
}

fn built(version: u64, gateway: &Identity) -> Bundle {
    let targets =
        [(GW.to_string(), gateway.recipient()), (OTHER.to_string(), Identity::generate().recipient())];
    build(version, "2026-12-07T08:00:00Z".into(), &targets, files(), "config", &signer(1)).expect("build")
}

fn open_as(b: &Bundle, in_force: u64, keys: &AuthorizedKeys, id: &Identity) -> Result<Opened, &'static str> {
    open(&b.to_json(), GW, in_force, keys, id).map_err(|(r, _)| r.reason)
}

#[test]
fn a_bundle_opens_at_its_target_with_its_secrets_sealed_on_the_wire() {
    let id = Identity::generate();
    let b = built(7, &id);
    let wire = String::from_utf8(b.for_gateway(GW).to_json()).expect("utf-8");
    assert!(!wire.contains("2b7e151628aed2a6abf7158809cf4f3c"), "no device key in clear");
    assert_eq!(b.for_gateway(GW).sealed["devices.toml"].len(), 1, "only its own box");
    let opened = open(wire.as_bytes(), GW, 6, &keys("[\"devices\", \"codecs\"]"), &id).expect("opens");
    assert_eq!(opened.manifest.version, 7);
    assert_eq!(opened.key_id, "config");
    let paths: Vec<&str> = opened.files.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(paths, ["codecs/meter.js", "devices.toml"]);
    assert_eq!(opened.files[1].1, files()[0].content);
    assert!(!format!("{opened:?}").contains("2b7e"), "never printed");
}

#[test]
fn each_check_refuses_with_its_reason() {
    let id = Identity::generate();
    let all = keys("[\"devices\", \"codecs\"]");
    let b = built(7, &id);
    assert_eq!(open_as(&b, 7, &all, &id).err(), Some(reason::NOT_NEWER));
    assert_eq!(open_as(&b, 9, &all, &id).err(), Some(reason::NOT_NEWER));
    assert_eq!(open_as(&b, 6, &keys("[\"codecs\"]"), &id).err(), Some(reason::OUT_OF_SCOPE));
    assert_eq!(open_as(&b, 6, &all, &Identity::generate()).err(), Some(reason::SEALED_UNREADABLE));
    let elsewhere =
        open(&b.to_json(), "0016c001ff10a299", 0, &all, &id).err().map(|(r, c)| (r.reason, c.version));
    assert_eq!(elsewhere, Some((reason::WRONG_TARGET, Some(7))));

    let mut forged = b.clone();
    forged.manifest = forged.manifest.replace("\"version\":7", "\"version\":8");
    assert_eq!(open_as(&forged, 6, &all, &id).err(), Some(reason::BAD_SIGNATURE));
    let mut unknown = b.clone();
    unknown.key_id = "someone".into();
    assert_eq!(open_as(&unknown, 6, &all, &id).err(), Some(reason::UNKNOWN_KEY));
    let mut swapped = b.clone();
    swapped.files.insert("codecs/meter.js".into(), BASE64.encode(b"function decodeUplink() { evil(); }"));
    assert_eq!(open_as(&swapped, 6, &all, &id).err(), Some(reason::BAD_FILE));
    let mut extra = b.clone();
    extra.files.insert("codecs/extra.js".into(), BASE64.encode(b"x"));
    assert_eq!(open_as(&extra, 6, &all, &id).err(), Some(reason::BAD_FILE));
    let mut missing = b.clone();
    missing.files.clear();
    assert_eq!(open_as(&missing, 6, &all, &id).err(), Some(reason::BAD_FILE));
    let mut cut = b.for_gateway(OTHER);
    cut.bundle = 2;
    assert_eq!(open_as(&cut, 6, &all, &id).err(), Some(reason::MALFORMED));
    for junk in [&b"not json"[..], b"{}", b"[]", b"{\"bundle\":1}"] {
        assert_eq!(open(junk, GW, 0, &all, &id).err().map(|(r, _)| r.reason), Some(reason::MALFORMED));
    }
    let huge = vec![b' '; MAX_BUNDLE_BYTES + 1];
    assert_eq!(open(&huge, GW, 0, &all, &id).err().map(|(r, _)| r.reason), Some(reason::MALFORMED));
}

#[test]
fn a_signer_cannot_slip_in_a_path_or_leave_a_secret_in_clear() {
    let id = Identity::generate();
    let targets = [(GW.to_string(), id.recipient())];
    for path in
        ["../etc/passwd", "/etc/shadow", "codecs/../x.js", "codecs/.js", "codecs/a b.js", "etc/berrygw.toml"]
    {
        let files = vec![Source { path: path.into(), content: b"x".to_vec() }];
        assert!(build(1, String::new(), &targets, files, "config", &signer(1)).is_err(), "{path}");
    }
    // Signed by the right key, but the manifest itself breaks the rules.
    let all = keys("[\"devices\", \"codecs\", \"rules\", \"authorized_keys\"]");
    let sign = |manifest: &Manifest, files: BTreeMap<String, String>| {
        let text = serde_json::to_string(manifest).expect("json");
        let signature = BASE64.encode(signer(1).sign(&signed_bytes(&text)).to_bytes());
        Bundle {
            bundle: FORMAT,
            manifest: text,
            key_id: "config".into(),
            signature,
            files,
            sealed: BTreeMap::new(),
        }
    };
    let entry = |path: &str, kind: Kind, sealed: bool| FileEntry {
        path: path.into(),
        kind,
        size: 1,
        sha256: sha256_hex(b"x"),
        sealed,
    };
    let one = |path: &str| BTreeMap::from([(path.to_string(), BASE64.encode(b"x"))]);
    let m = |files| Manifest { version: 2, created_at: String::new(), targets: vec![GW.into()], files };
    let in_clear = sign(&m(vec![entry("devices.toml", Kind::Devices, false)]), one("devices.toml"));
    assert_eq!(open_as(&in_clear, 1, &all, &id).err(), Some(reason::BAD_FILE));
    let escape = sign(&m(vec![entry("../rules.toml", Kind::Rules, false)]), one("../rules.toml"));
    assert_eq!(open_as(&escape, 1, &all, &id).err(), Some(reason::BAD_FILE));
    let twice = sign(
        &m(vec![entry("rules.toml", Kind::Rules, false), entry("rules.toml", Kind::Rules, false)]),
        one("rules.toml"),
    );
    assert_eq!(open_as(&twice, 1, &all, &id).err(), Some(reason::BAD_FILE));
    let fine = sign(&m(vec![entry("rules.toml", Kind::Rules, false)]), one("rules.toml"));
    assert!(open_as(&fine, 1, &all, &id).is_ok());
}

#[test]
fn a_key_for_bundles_needs_no_command_scope_and_kinds_are_checked() {
    let k = keys("[\"authorized_keys\", \"rules\", \"rules\"]");
    let key = k.get("config").expect("key");
    assert_eq!(key.bundles, [Kind::Rules, Kind::AuthorizedKeys]);
    assert!(key.targets.is_empty() && !key.allows("x", "y"), "signs no command");
    let text = format!(
        "[[key]]\nid = \"c\"\npublic_key = \"{}\"\nbundles = [\"firmware\"]\n",
        BASE64.encode(signer(1).verifying_key().to_bytes())
    );
    let err = AuthorizedKeys::parse(Path::new("k"), &text).expect_err("unknown kind").to_string();
    assert!(err.contains("firmware") && err.contains("authorized_keys"), "{err}");
    let text = format!(
        "[[key]]\nid = \"c\"\npublic_key = \"{}\"\n",
        BASE64.encode(signer(1).verifying_key().to_bytes())
    );
    let err = AuthorizedKeys::parse(Path::new("k"), &text).expect_err("no scope at all").to_string();
    assert!(err.contains("missing `targets`"), "{err}");
}
