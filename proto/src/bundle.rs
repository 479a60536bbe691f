//! Signed configuration bundles: a site's files, made at the centre (`berryctl bundle
//! build`), published retained on `<prefix>/<gateway_id>/bundle`, verified and applied by
//! each target gateway.
//!
//! On the wire, one JSON object:
//!
//! ```json
//! {"bundle": 1,
//!  "manifest": "<the manifest's JSON, as a string: the bytes that are signed>",
//!  "key_id": "central-config",
//!  "signature": "<base64 of the Ed25519 signature of DOMAIN + manifest>",
//!  "files": {"codecs/meter.js": "<base64>", "rules.toml": "<base64>"},
//!  "sealed": {"devices.toml": {"0016c001ff10a235": "<base64 sealed box>"}}}
//! ```
//!
//! The manifest ([`Manifest`]) names the version, the target gateways and every file with
//! its kind, size and SHA-256; the signature covers it, so it covers every file. A file
//! holding secrets (`devices.toml`: device keys) never travels in clear: it is sealed to
//! each target gateway's identity (`crate::sealed`), and its hash is of the plaintext, so
//! a gateway checks what it opened. A gateway accepts a bundle only if the key is in its
//! `authorized_keys` with a `bundles` scope allowing every kind of file carried, the
//! gateway is a target, the version is newer than the one in force, and every file is
//! present, well named and matches its hash ([`open`]). Nothing here touches the disk.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::envelope::Refusal;
use crate::keys::{AuthorizedKey, AuthorizedKeys};
use crate::sealed::{Identity, Recipient};
pub use crate::site::Kind;
use crate::MAX_NAME_BYTES;

/// The wire format's version (`"bundle"`).
pub const FORMAT: u32 = 1;

/// What is signed: this, then the manifest's bytes (so that no other signed message of
/// the network can pass for a bundle).
pub const DOMAIN: &[u8] = b"berrygw bundle v1\n";

/// Largest bundle a gateway reads, in bytes (5,000 devices and 50 codecs take about 2 MiB).
pub const MAX_BUNDLE_BYTES: usize = 16 * 1024 * 1024;

/// Most files in one bundle.
pub const MAX_FILES: usize = 1024;

/// Why a bundle was refused: stable labels for the audit log, events and metrics.
pub mod reason {
    /// Not a bundle: size, JSON, members, encoding.
    pub const MALFORMED: &str = "malformed";
    /// Signed by a key this gateway does not know.
    pub const UNKNOWN_KEY: &str = "unknown_key";
    /// The signature does not verify.
    pub const BAD_SIGNATURE: &str = "bad_signature";
    /// The key's `bundles` scope does not allow a kind of file the bundle carries.
    pub const OUT_OF_SCOPE: &str = "out_of_scope";
    /// This gateway is not among the targets.
    pub const WRONG_TARGET: &str = "wrong_target";
    /// Not newer than the version in force (an old bundle replayed, or a mistake).
    pub const NOT_NEWER: &str = "not_newer";
    /// A file is missing, extra, badly named, or does not match its hash.
    pub const BAD_FILE: &str = "bad_file";
    /// A sealed file does not open with this gateway's identity.
    pub const SEALED_UNREADABLE: &str = "sealed_unreadable";
    /// The files do not pass the checks `check-config` makes (gateway side).
    pub const CHECK_FAILED: &str = "check_failed";
    /// Staging or switching the files failed (gateway side: disk full, permissions).
    pub const APPLY_FAILED: &str = "apply_failed";
}

/// What is signed: the bundle's version, targets and files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Grows with every bundle of a site; a gateway takes only a version newer than its own.
    pub version: u64,
    /// When it was built (RFC 3339), for people.
    pub created_at: String,
    /// The gateway ids it is for.
    pub targets: Vec<String>,
    /// Every file, sorted by path.
    pub files: Vec<FileEntry>,
}

/// One file of a bundle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub path: String,
    pub kind: Kind,
    pub size: u64,
    /// Hex SHA-256 of the plaintext.
    pub sha256: String,
    /// Sealed to each target's identity (secrets), or in clear.
    pub sealed: bool,
}

impl Manifest {
    /// The kinds of file it carries.
    pub fn kinds(&self) -> Vec<Kind> {
        let mut kinds: Vec<Kind> = self.files.iter().map(|f| f.kind).collect();
        kinds.sort();
        kinds.dedup();
        kinds
    }
}

/// The bundle as it travels.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    pub bundle: u32,
    /// The manifest's JSON: the signed bytes, kept exactly as signed.
    pub manifest: String,
    pub key_id: String,
    /// Base64 of the 64-byte Ed25519 signature of [`DOMAIN`] + `manifest`.
    pub signature: String,
    /// Files in clear: path → base64.
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    /// Sealed files: path → gateway id → base64 sealed box.
    #[serde(default)]
    pub sealed: BTreeMap<String, BTreeMap<String, String>>,
}

/// A file for [`build`]: its path in the bundle and its content.
pub struct Source {
    pub path: String,
    pub content: Vec<u8>,
}

/// Build and sign a bundle of `files` for `targets` (gateway id, identity key each):
/// secrets sealed to every target. Errors name the file.
pub fn build(
    version: u64,
    created_at: String,
    targets: &[(String, Recipient)],
    files: Vec<Source>,
    key_id: &str,
    key: &SigningKey,
) -> Result<Bundle, String> {
    if targets.is_empty() {
        return Err("a bundle needs at least one target gateway".into());
    }
    if files.is_empty() {
        return Err("a bundle needs at least one file".into());
    }
    if files.len() > MAX_FILES {
        return Err(format!("{} files; a bundle carries at most {MAX_FILES}", files.len()));
    }
    let mut files = files;
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let mut entries = Vec::with_capacity(files.len());
    let (mut clear, mut sealed) = (BTreeMap::new(), BTreeMap::new());
    for f in files {
        let kind = Kind::of_path(&f.path).ok_or_else(|| {
            format!(
                "{}: not a file a bundle carries (devices.toml, rules.toml, authorized_keys, berrygw.toml, codecs/<name>.js, profiles/<name>.toml)",
                f.path
            )
        })?;
        let secret = kind.is_secret();
        entries.push(FileEntry {
            path: f.path.clone(),
            kind,
            size: f.content.len() as u64,
            sha256: sha256_hex(&f.content),
            sealed: secret,
        });
        if secret {
            let boxes = targets.iter().map(|(id, r)| (id.clone(), r.seal_base64(&f.content))).collect();
            sealed.insert(f.path, boxes);
        } else {
            clear.insert(f.path, BASE64.encode(&f.content));
        }
    }
    let manifest = Manifest {
        version,
        created_at,
        targets: targets.iter().map(|(id, _)| id.clone()).collect(),
        files: entries,
    };
    let manifest = serde_json::to_string(&manifest).map_err(|e| e.to_string())?;
    let signature = key.sign(&signed_bytes(&manifest));
    Ok(Bundle {
        bundle: FORMAT,
        manifest,
        key_id: key_id.to_string(),
        signature: BASE64.encode(signature.to_bytes()),
        files: clear,
        sealed,
    })
}

impl Bundle {
    /// The copy one target gets: the same signed manifest and clear files, and only its
    /// own sealed boxes.
    pub fn for_gateway(&self, gateway_id: &str) -> Bundle {
        let sealed = self
            .sealed
            .iter()
            .map(|(path, boxes)| {
                let mine = boxes.iter().filter(|(id, _)| id.eq_ignore_ascii_case(gateway_id));
                (path.clone(), mine.map(|(id, b)| (id.clone(), b.clone())).collect())
            })
            .collect();
        Bundle { sealed, ..self.clone() }
    }

    /// The manifest, as signed (not checked: see [`open`]).
    pub fn manifest(&self) -> Result<Manifest, String> {
        serde_json::from_str(&self.manifest).map_err(|e| format!("manifest: {e}"))
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// A bundle that passed every check of [`open`]: its manifest, signer and files in clear.
pub struct Opened {
    pub manifest: Manifest,
    pub key_id: String,
    /// (path, content) in manifest order.
    pub files: Vec<(String, Vec<u8>)>,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the contents: device keys.
        f.debug_struct("Opened")
            .field("version", &self.manifest.version)
            .field("key_id", &self.key_id)
            .field("files", &self.files.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>())
            .finish()
    }
}

/// What a refused bundle said of itself, when it could be read: for the audit entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Claimed {
    pub version: Option<u64>,
    pub key_id: Option<String>,
}

/// Read, authenticate and check a bundle for `gateway_id`, whose version in force is
/// `in_force`: signature by a key in `keys`, scope for every kind carried, target,
/// version, every file present and matching its hash; sealed files opened with
/// `identity`. In this order, so that nothing of an unauthenticated bundle is opened.
pub fn open(
    payload: &[u8],
    gateway_id: &str,
    in_force: u64,
    keys: &AuthorizedKeys,
    identity: &Identity,
) -> Result<Opened, (Refusal, Claimed)> {
    let mut claimed = Claimed::default();
    let malformed = |m: String| Refusal::new(reason::MALFORMED, m);
    if payload.len() > MAX_BUNDLE_BYTES {
        let m = format!("{} bytes; a bundle is at most {MAX_BUNDLE_BYTES}", payload.len());
        return Err((malformed(m), claimed));
    }
    let bundle: Bundle = serde_json::from_slice(payload)
        .map_err(|e| (malformed(format!("not a bundle: {e}")), claimed.clone()))?;
    claimed.key_id = Some(bundle.key_id.chars().take(MAX_NAME_BYTES).collect());
    // What it claims, for the refusal's record only: nothing is trusted before the signature.
    claimed.version = bundle.manifest().ok().map(|m| m.version);
    if bundle.bundle != FORMAT {
        let m = format!("bundle format {}; this gateway reads {FORMAT}", bundle.bundle);
        return Err((malformed(m), claimed));
    }
    let key = keys.get(&bundle.key_id).ok_or_else(|| {
        let m = format!("no key `{}` in {}", claimed.key_id.as_deref().unwrap_or(""), keys.path().display());
        (Refusal::new(reason::UNKNOWN_KEY, m), claimed.clone())
    })?;
    verify_signature(&bundle, key).map_err(|r| (r, claimed.clone()))?;
    // Authenticated from here: the manifest is the signer's.
    let manifest: Manifest = bundle.manifest().map_err(|m| (malformed(m), claimed.clone()))?;
    claimed.version = Some(manifest.version);
    let fail = |reason: &'static str, m: String| (Refusal::new(reason, m), claimed.clone());
    if let Some(kind) = manifest.kinds().into_iter().find(|k| !key.bundles.contains(k)) {
        let m = format!(
            "key `{}` may not sign {} files (its bundles scope: {:?})",
            key.id,
            kind.as_str(),
            key.bundles
        );
        return Err(fail(reason::OUT_OF_SCOPE, m));
    }
    if !manifest.targets.iter().any(|t| t.eq_ignore_ascii_case(gateway_id)) {
        let m = format!("bundle {} is for {:?}, not {gateway_id}", manifest.version, manifest.targets);
        return Err(fail(reason::WRONG_TARGET, m));
    }
    if manifest.version <= in_force {
        let m = format!("version {} is not newer than {in_force}, the one in force", manifest.version);
        return Err(fail(reason::NOT_NEWER, m));
    }
    let files = open_files(&bundle, &manifest, gateway_id, identity).map_err(|r| (r, claimed.clone()))?;
    Ok(Opened { manifest, key_id: key.id.clone(), files })
}

fn verify_signature(bundle: &Bundle, key: &AuthorizedKey) -> Result<(), Refusal> {
    let bad =
        || Refusal::new(reason::BAD_SIGNATURE, format!("signature does not verify with key `{}`", key.id));
    let bytes = BASE64.decode(bundle.signature.trim()).map_err(|_| bad())?;
    let bytes: [u8; 64] = bytes.try_into().map_err(|_| bad())?;
    key.public_key
        .verify_strict(&signed_bytes(&bundle.manifest), &Signature::from_bytes(&bytes))
        .map_err(|_| bad())
}

fn open_files(
    bundle: &Bundle,
    manifest: &Manifest,
    gateway_id: &str,
    identity: &Identity,
) -> Result<Vec<(String, Vec<u8>)>, Refusal> {
    let bad = |m: String| Refusal::new(reason::BAD_FILE, m);
    if manifest.files.is_empty() || manifest.files.len() > MAX_FILES {
        return Err(bad(format!("{} files; a bundle carries 1 to {MAX_FILES}", manifest.files.len())));
    }
    let mut out = Vec::with_capacity(manifest.files.len());
    let mut previous: Option<&str> = None;
    for f in &manifest.files {
        if previous.is_some_and(|p| p >= f.path.as_str()) {
            return Err(bad(format!("{}: files must be sorted by path, each once", f.path)));
        }
        previous = Some(&f.path);
        if Kind::of_path(&f.path) != Some(f.kind) {
            return Err(bad(format!("{}: not a {} file a bundle may carry", f.path, f.kind.as_str())));
        }
        if f.sealed != f.kind.is_secret() {
            return Err(bad(format!(
                "{}: a {} file must {}be sealed",
                f.path,
                f.kind.as_str(),
                if f.sealed { "not " } else { "" }
            )));
        }
        let content = if f.sealed {
            let boxed = bundle
                .sealed
                .get(&f.path)
                .and_then(|boxes| boxes.iter().find(|(id, _)| id.eq_ignore_ascii_case(gateway_id)))
                .map(|(_, b)| b)
                .ok_or_else(|| bad(format!("{}: no copy sealed to {gateway_id}", f.path)))?;
            identity
                .open_base64(boxed)
                .map_err(|e| Refusal::new(reason::SEALED_UNREADABLE, format!("{}: {e}", f.path)))?
        } else {
            let text = bundle.files.get(&f.path).ok_or_else(|| bad(format!("{}: missing", f.path)))?;
            BASE64.decode(text.trim()).map_err(|e| bad(format!("{}: not base64: {e}", f.path)))?
        };
        if content.len() as u64 != f.size || sha256_hex(&content) != f.sha256 {
            return Err(bad(format!("{}: content does not match the signed size and SHA-256", f.path)));
        }
        out.push((f.path.clone(), content));
    }
    let listed = |p: &String| manifest.files.iter().any(|f| &f.path == p);
    if let Some(extra) = bundle.files.keys().chain(bundle.sealed.keys()).find(|p| !listed(p)) {
        return Err(bad(format!("{extra}: carried but not in the signed manifest")));
    }
    Ok(out)
}

/// What became of a bundle on a gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BundleOutcome {
    /// Verified, checked, in force and reloaded; now watched.
    Applied,
    /// Not taken; `reason` says why. Nothing changed.
    Refused,
    /// Taken, then undone: health fell during the watch, or the daemon could not start on it.
    RolledBack,
    /// Watched without trouble: it stays.
    Kept,
}

impl BundleOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            BundleOutcome::Applied => "applied",
            BundleOutcome::Refused => "refused",
            BundleOutcome::RolledBack => "rolled_back",
            BundleOutcome::Kept => "kept",
        }
    }
}

/// The event on `<prefix>/<gateway_id>/event/bundle`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleEvent {
    pub gateway_id: String,
    /// The bundle's version, when it could be read.
    pub version: Option<u64>,
    /// The version in force after this outcome.
    pub in_force: u64,
    /// Who signed it, as it claims (refusals) or as verified.
    pub key_id: Option<String>,
    pub outcome: BundleOutcome,
    /// Stable snake_case cause (refusals: one of [`reason`]; roll-backs: `health_fell`,
    /// `start_failed`).
    pub reason: Option<String>,
    /// For people, one line.
    pub message: String,
    pub at_ms: i64,
}

fn signed_bytes(manifest: &str) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(DOMAIN.len() + manifest.len());
    bytes.extend_from_slice(DOMAIN);
    bytes.extend_from_slice(manifest.as_bytes());
    bytes
}

/// Hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests;
