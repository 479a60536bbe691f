//! CUPS, the other half of LoRa Basics Station: a server that hands a router its LNS and
//! CUPS addresses and credentials, and update blobs, on `POST <cups_uri>/update-info`.
//!
//! The router tells what it has (the URIs, the CRC-32 of each credential set, its package
//! version, the CRC-32 of each signing key it holds); the answer carries only what changed,
//! as length-prefixed segments: CUPS URI (1-byte length), LNS URI (1), CUPS credentials (2,
//! little-endian), LNS credentials (2), signature (4: the signing key's CRC, then an ECDSA
//! P-256 signature, DER, of the SHA-512 of the update), update (4).
//!
//! What berrygw does with it (`links.rs`): a new set is *pending* until it has worked
//! (the LNS set once a session on it reached `router_config`, the CUPS set once an
//! `update-info` on it was answered); only then is it written (`tc.set`, `cups.set` in the
//! sink's state directory, replaced atomically) and the old one dropped. A set that fails
//! is dropped and the old one used again. An update is kept (`update.bin` and
//! `update.json`) only when its signature verifies with one of the configured `sig-*.key`;
//! berrygw installs nothing: the operator's apt does, from the package the update names.

use std::fmt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use berrygw_lora::Eui64;
use p256::ecdsa::signature::hazmat::PrehashVerifier;
use serde_json::json;
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::info;

use super::creds::{crc32, Credentials};
use super::ws::{self, WsUri};

/// The longest answer taken (an update blob is the bulk of it).
pub const MAX_ANSWER_BYTES: usize = 32 * 1024 * 1024;

/// An `http://` or `https://` CUPS address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CupsUri(pub WsUri);

impl CupsUri {
    pub fn parse(text: &str) -> anyhow::Result<CupsUri> {
        WsUri::parse_with(text, "http", "https").map(CupsUri)
    }
}

impl AsRef<WsUri> for CupsUri {
    fn as_ref(&self) -> &WsUri {
        &self.0
    }
}

impl fmt::Display for CupsUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let u = &self.0;
        write!(f, "{}://{}{}", if u.tls { "https" } else { "http" }, u.authority(), u.path)
    }
}

/// A signing key: Station's `sig-N.key`, the 64 bytes of a P-256 public point (X then Y).
#[derive(Clone, Debug)]
pub struct SigKey {
    pub path: PathBuf,
    /// CRC-32 of the file: how CUPS names the key its signature is made with.
    pub crc: u32,
    key: p256::ecdsa::VerifyingKey,
}

impl SigKey {
    pub fn read(path: &Path) -> anyhow::Result<SigKey> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        SigKey::from_raw(path, &bytes)
    }

    /// The key from the 64 bytes of its point; `path` names it in messages.
    pub fn from_raw(path: &Path, bytes: &[u8]) -> anyhow::Result<SigKey> {
        if bytes.len() != 64 {
            bail!(
                "{}: {} bytes; a signing key is the 64 bytes of a P-256 public point (X, Y)",
                path.display(),
                bytes.len()
            );
        }
        let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(&[&[0x04], bytes].concat())
            .map_err(|_| anyhow!("{}: not a point of P-256", path.display()))?;
        Ok(SigKey { path: path.to_path_buf(), crc: crc32(bytes), key })
    }
}

/// An update's signature: the CRC of the key it claims, and the ECDSA signature (DER).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature {
    pub key_crc: u32,
    pub der: Vec<u8>,
}

/// What an `update-info` answer changed; `None` for what stays.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpdateInfo {
    pub cups_uri: Option<String>,
    pub tc_uri: Option<String>,
    pub cups_cred: Option<Vec<u8>>,
    pub tc_cred: Option<Vec<u8>>,
    pub signature: Option<Signature>,
    pub update: Option<Vec<u8>>,
}

/// Why an answer or an update was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CupsError {
    #[error("the answer is cut short in its {0}")]
    Short(&'static str),
    #[error("{0} bytes after the update")]
    Trailing(usize),
    #[error("the {0} is not text")]
    NotText(&'static str),
    #[error("a signature segment of {0} bytes (8 to 132)")]
    SignatureLength(usize),
    #[error("an update with no signature; refused (berrygw keeps only signed updates)")]
    Unsigned,
    #[error("signed with key {0:08X}, which this gateway does not hold")]
    UnknownKey(u32),
    #[error("the signature does not verify with key {crc:08X} ({path})")]
    BadSignature { crc: u32, path: String },
}

impl UpdateInfo {
    /// An answer's segments, checked: lengths within the body, text where text is due,
    /// nothing after the update.
    pub fn parse(body: &[u8]) -> Result<UpdateInfo, CupsError> {
        let mut rest = body;
        let mut take = |what: &'static str, width: usize| -> Result<Option<Vec<u8>>, CupsError> {
            let len_bytes = rest.get(..width).ok_or(CupsError::Short(what))?;
            let len = len_bytes.iter().rev().fold(0usize, |acc, b| acc << 8 | usize::from(*b));
            let value = rest.get(width..width + len).ok_or(CupsError::Short(what))?;
            rest = &rest[width + len..];
            Ok((len > 0).then(|| value.to_vec()))
        };
        let text = |what: &'static str, v: Option<Vec<u8>>| -> Result<Option<String>, CupsError> {
            v.map(|b| String::from_utf8(b).map_err(|_| CupsError::NotText(what))).transpose()
        };
        let cups_uri = text("CUPS URI", take("CUPS URI", 1)?)?;
        let tc_uri = text("LNS URI", take("LNS URI", 1)?)?;
        let cups_cred = take("CUPS credentials", 2)?;
        let tc_cred = take("LNS credentials", 2)?;
        let signature = match take("signature", 4)? {
            None => None,
            Some(s) if !(8..=132).contains(&s.len()) => return Err(CupsError::SignatureLength(s.len())),
            Some(s) => Some(Signature {
                key_crc: u32::from_le_bytes([s[0], s[1], s[2], s[3]]),
                der: s[4..].to_vec(),
            }),
        };
        let update = take("update", 4)?;
        if !rest.is_empty() {
            return Err(CupsError::Trailing(rest.len()));
        }
        Ok(UpdateInfo { cups_uri, tc_uri, cups_cred, tc_cred, signature, update })
    }

    /// The answer's form (what a CUPS server sends): the inverse of `parse`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut put = |width: usize, v: Option<&[u8]>| {
            let v = v.unwrap_or_default();
            out.extend_from_slice(&(v.len() as u32).to_le_bytes()[..width]);
            out.extend_from_slice(v);
        };
        put(1, self.cups_uri.as_deref().map(str::as_bytes));
        put(1, self.tc_uri.as_deref().map(str::as_bytes));
        put(2, self.cups_cred.as_deref());
        put(2, self.tc_cred.as_deref());
        let sig = self.signature.as_ref().map(|s| [s.key_crc.to_le_bytes().as_slice(), &s.der].concat());
        put(4, sig.as_deref());
        put(4, self.update.as_deref());
        out
    }
}

/// The key that signed `update`, or why none did. SHA-512 of the update, ECDSA on P-256
/// (the hash cut to the curve's 256 bits), as Station checks it.
pub fn verify<'k>(
    update: &[u8],
    signature: Option<&Signature>,
    keys: &'k [SigKey],
) -> Result<&'k SigKey, CupsError> {
    let signature = signature.ok_or(CupsError::Unsigned)?;
    let key =
        keys.iter().find(|k| k.crc == signature.key_crc).ok_or(CupsError::UnknownKey(signature.key_crc))?;
    let bad = || CupsError::BadSignature { crc: key.crc, path: key.path.display().to_string() };
    let (r, s) = der_signature(&signature.der).ok_or_else(bad)?;
    let sig = p256::ecdsa::Signature::from_scalars(r, s).map_err(|_| bad())?;
    let digest = sha2::Sha512::digest(update);
    key.key.verify_prehash(&digest, &sig).map_err(|_| bad())?;
    Ok(key)
}

/// The two integers of an ECDSA signature in DER (`SEQUENCE { INTEGER r, INTEGER s }`),
/// each as 32 big-endian bytes; `None` for anything else.
fn der_signature(der: &[u8]) -> Option<([u8; 32], [u8; 32])> {
    let (&[0x30, len], body) = der.split_first_chunk::<2>()? else { return None };
    if usize::from(len) != body.len() {
        return None;
    }
    let integer = |bytes: &[u8]| -> Option<([u8; 32], usize)> {
        let (&[0x02, n], rest) = bytes.split_first_chunk::<2>()? else { return None };
        let value = rest.get(..usize::from(n))?;
        // DER: no leading zero unless the next byte's top bit is set.
        let digits = match value {
            [0, next, ..] if next & 0x80 != 0 => &value[1..],
            [0, ..] | [] => return None,
            _ => value,
        };
        if digits.len() > 32 {
            return None;
        }
        let mut out = [0u8; 32];
        out[32 - digits.len()..].copy_from_slice(digits);
        Some((out, 2 + usize::from(n)))
    };
    let (r, used) = integer(body)?;
    let (s, used_s) = integer(&body[used..])?;
    (used + used_s == body.len()).then_some((r, s))
}

/// The router's side of `update-info`.
pub fn request_body(
    router: Eui64,
    cups_uri: &str,
    tc_uri: Option<&str>,
    cups: &Credentials,
    tc: Option<&Credentials>,
    keys: &[SigKey],
) -> String {
    json!({
        "router": berrygw_lora::station::eui_text(router),
        "cupsUri": cups_uri,
        "tcUri": tc_uri.unwrap_or_default(),
        "cupsCredCrc": cups.crc(),
        "tcCredCrc": tc.map_or(0, Credentials::crc),
        "station": concat!("berrygw ", env!("CARGO_PKG_VERSION")),
        "model": "berrygw",
        "package": env!("CARGO_PKG_VERSION"),
        "keys": keys.iter().map(|k| k.crc).collect::<Vec<_>>(),
    })
    .to_string()
}

/// `POST` `body` (JSON) to `<uri>/update-info`; the answer's body when the status is 200.
pub async fn post_update_info(
    uri: &CupsUri,
    creds: &Credentials,
    tls: Option<&Arc<rustls::ClientConfig>>,
    body: &str,
    timeout: Duration,
) -> anyhow::Result<Vec<u8>> {
    let target = uri.0.join("/update-info");
    tokio::time::timeout(timeout, async {
        let mut io = ws::open(&target, tls).await?;
        let mut request = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nAccept: \
             application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n",
            target.path,
            target.authority(),
            body.len()
        );
        for (name, value) in creds.headers() {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        request.push_str(body);
        io.write_all(request.as_bytes()).await.context("sending update-info")?;
        io.flush().await?;
        read_answer(&mut io).await
    })
    .await
    .map_err(|_| anyhow!("{uri}: no update-info answer within {} s", timeout.as_secs()))?
    .with_context(|| format!("{uri}"))
}

/// An HTTP/1.1 answer: status 200, a body by Content-Length, chunks, or up to the close.
async fn read_answer(io: &mut Pin<Box<dyn ws::Stream>>) -> anyhow::Result<Vec<u8>> {
    let (head, mut body) = ws::read_head(io).await.context("the answer's head")?;
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(super::Refused(format!(
            "update-info refused: {}",
            status.chars().take(120).collect::<String>()
        ))
        .into());
    }
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    let chunked = header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    let length = match header("content-length") {
        Some(v) => Some(v.parse::<usize>().map_err(|_| anyhow!("a bad Content-Length: {v}"))?),
        None => None,
    };
    if length.is_some_and(|n| n > MAX_ANSWER_BYTES) {
        bail!("an answer of more than {MAX_ANSWER_BYTES} bytes");
    }
    loop {
        let done = match length {
            Some(n) => body.len() >= n,
            None if chunked => dechunk(&body)?.is_some(),
            None => false,
        };
        if done {
            break;
        }
        // Room for the chunks' framing on top of the body.
        if body.len() > MAX_ANSWER_BYTES + 16 * 1024 {
            bail!("an answer of more than {MAX_ANSWER_BYTES} bytes");
        }
        if io.read_buf(&mut body).await.context("reading the answer")? == 0 {
            if length.is_some() || chunked {
                bail!("the answer was cut short");
            }
            break;
        }
    }
    match (length, chunked) {
        (Some(n), _) => {
            body.truncate(n);
            Ok(body)
        }
        (None, true) => Ok(dechunk(&body)?.expect("checked whole")),
        (None, false) => Ok(body),
    }
}

/// A chunked body, once it is whole (`None` before).
fn dechunk(mut bytes: &[u8]) -> anyhow::Result<Option<Vec<u8>>> {
    let mut out = Vec::new();
    loop {
        let Some(line_end) = bytes.windows(2).position(|w| w == b"\r\n") else { return Ok(None) };
        let size_text = std::str::from_utf8(&bytes[..line_end]).context("a bad chunk size")?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size =
            usize::from_str_radix(size_text, 16).map_err(|_| anyhow!("a bad chunk size {size_text:?}"))?;
        if size > MAX_ANSWER_BYTES || out.len() + size > MAX_ANSWER_BYTES {
            bail!("an answer of more than {MAX_ANSWER_BYTES} bytes");
        }
        let start = line_end + 2;
        if size == 0 {
            return Ok(Some(out));
        }
        let Some(chunk) = bytes.get(start..start + size) else { return Ok(None) };
        out.extend_from_slice(chunk);
        let Some(after) = bytes.get(start + size..start + size + 2) else { return Ok(None) };
        if after != b"\r\n" {
            bail!("a chunk not followed by CRLF");
        }
        bytes = &bytes[start + size + 2..];
    }
}

/// A URI and its credentials, as kept in `tc.set` / `cups.set`: the URI with a 1-byte
/// length, the credential blob with a 2-byte length (CUPS's own segments).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredSet {
    pub uri: String,
    pub cred: Vec<u8>,
}

impl StoredSet {
    pub fn encode(&self) -> Vec<u8> {
        UpdateInfo {
            cups_uri: Some(self.uri.clone()),
            cups_cred: Some(self.cred.clone()),
            ..Default::default()
        }
        .encode()
    }

    pub fn decode(bytes: &[u8]) -> anyhow::Result<StoredSet> {
        let info = UpdateInfo::parse(bytes)?;
        match (info.cups_uri, info.cups_cred) {
            (Some(uri), Some(cred)) => Ok(StoredSet { uri, cred }),
            _ => bail!("a stored set without its URI or credentials"),
        }
    }

    /// The set in `path`, if one was stored; a damaged file is an error (the caller falls
    /// back on the configured set and says so).
    pub fn load(path: &Path) -> anyhow::Result<Option<StoredSet>> {
        match std::fs::read(path) {
            Ok(bytes) => StoredSet::decode(&bytes).with_context(|| format!("{}", path.display())).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn store(&self, path: &Path) -> anyhow::Result<()> {
        berrygw_journal::seq::write_durably(path, &self.encode())
            .with_context(|| format!("writing {}", path.display()))
    }
}

/// Keep a verified update where the operator finds it: `update.bin` and `update.json`
/// (its size, SHA-256, the key that signed it, when). The same update again is not
/// rewritten.
pub fn keep_update(dir: &Path, update: &[u8], key: &SigKey, from: &CupsUri) -> anyhow::Result<()> {
    let sha256 = hex::encode(sha2::Sha256::digest(update));
    let meta_path = dir.join("update.json");
    if let Ok(text) = std::fs::read_to_string(&meta_path) {
        if serde_json::from_str::<serde_json::Value>(&text).is_ok_and(|v| v["sha256"] == sha256.as_str()) {
            return Ok(());
        }
    }
    berrygw_journal::seq::write_durably(&dir.join("update.bin"), update).context("writing update.bin")?;
    let received = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let meta = json!({
        "size": update.len(),
        "sha256": sha256,
        "signing_key": key.path.display().to_string(),
        "signing_key_crc": format!("{:08X}", key.crc),
        "received_unix": received,
        "from": from.to_string(),
    });
    berrygw_journal::seq::write_durably(&meta_path, format!("{meta:#}\n").as_bytes())
        .context("writing update.json")?;
    info!(
        size = update.len(),
        %sha256,
        key = %key.path.display(),
        "basic station sink: CUPS sent a signed update; kept in {} (berrygw installs nothing: apt does)",
        dir.join("update.bin").display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_round_trips_and_only_what_changed_is_there() {
        let info = UpdateInfo {
            tc_uri: Some("wss://lns:8887".into()),
            tc_cred: Some(vec![0; 12]),
            signature: Some(Signature { key_crc: 0xDEAD_BEEF, der: vec![0x30, 2, 1, 1] }),
            update: Some(vec![5; 300]),
            ..Default::default()
        };
        let bytes = info.encode();
        assert_eq!(&bytes[..2], &[0, 14]);
        assert_eq!(UpdateInfo::parse(&bytes).unwrap(), info);
        // Nothing changed: two zero lengths, two zero words, two zero double words.
        assert_eq!(UpdateInfo::parse(&[0; 14]).unwrap(), UpdateInfo::default());
    }

    #[test]
    fn broken_answers_are_refused_with_why() {
        let good = UpdateInfo { tc_uri: Some("ws://x".into()), ..Default::default() }.encode();
        for cut in 0..good.len() {
            assert!(matches!(UpdateInfo::parse(&good[..cut]), Err(CupsError::Short(_))), "cut at {cut}");
        }
        assert_eq!(UpdateInfo::parse(&[good.clone(), vec![1, 2]].concat()), Err(CupsError::Trailing(2)));
        assert_eq!(
            UpdateInfo::parse(&[&[1u8, 0xff][..], &[0; 13]].concat()),
            Err(CupsError::NotText("CUPS URI"))
        );
        let short_sig = [&[0u8; 6][..], &[3, 0, 0, 0, 1, 2, 3], &[0; 4]].concat();
        assert_eq!(UpdateInfo::parse(&short_sig), Err(CupsError::SignatureLength(3)));
    }

    #[test]
    fn a_signing_key_is_64_bytes_of_a_point() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sig-0.key");
        std::fs::write(&path, [1u8; 63]).unwrap();
        assert!(SigKey::read(&path).unwrap_err().to_string().contains("64 bytes"));
        std::fs::write(&path, [1u8; 64]).unwrap();
        assert!(SigKey::read(&path).unwrap_err().to_string().contains("not a point"));
    }

    #[test]
    fn an_update_without_a_known_key_or_signature_is_refused() {
        assert_eq!(verify(b"x", None, &[]).unwrap_err(), CupsError::Unsigned);
        let sig = Signature { key_crc: 7, der: vec![0x30, 0] };
        assert_eq!(verify(b"x", Some(&sig), &[]).unwrap_err(), CupsError::UnknownKey(7));
    }

    /// A key, an update and its signature made by OpenSSL (`openssl dgst -sha512 -sign`
    /// with a prime256v1 key), as a CUPS server's operator makes them.
    #[test]
    fn a_signature_made_by_openssl_verifies_and_a_changed_update_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sig-0.key");
        let public = hex::decode(
            "fda4f5ca42a50fa6c86c9c86528a7101a61cf7a872cb7cecef56a82874b70a0c\
             dfb867f83d28788e7ad27a460e77001356ec20e8bcbd850502348f841eb9ec41",
        )
        .unwrap();
        std::fs::write(&path, &public).unwrap();
        let key = SigKey::read(&path).unwrap();
        assert_eq!(key.crc, crc32(&public));
        let der = hex::decode(
            "30450220562bfd1fac75970ebaaeeff3adfd4da0eb5af4c641957d9df1f3ee82c7bd2e79\
             0221009fda67a272807e448ed76c20034e46752aa6c515082970040ee4e892e180bdc3",
        )
        .unwrap();
        let update = b"berrygw update 1.2.3 for the test of a signature made by OpenSSL";
        let sig = Signature { key_crc: key.crc, der };
        let keys = [key];
        assert_eq!(verify(update, Some(&sig), &keys).unwrap().crc, keys[0].crc);
        let mut changed = update.to_vec();
        changed[0] ^= 1;
        assert!(matches!(verify(&changed, Some(&sig), &keys), Err(CupsError::BadSignature { .. })));
        let garbled = Signature { der: vec![0x30, 3, 1, 1, 1], ..sig };
        assert!(matches!(verify(update, Some(&garbled), &keys), Err(CupsError::BadSignature { .. })));
    }

    #[test]
    fn only_a_strict_der_signature_is_read() {
        let r = [0x7fu8; 32];
        let good = [&[0x30, 68, 0x02, 32][..], &r, &[0x02, 32], &r].concat();
        assert_eq!(der_signature(&good), Some((r, r)));
        // A high bit takes a leading zero; a short integer is padded.
        let s = [&[0x30, 9, 0x02, 2, 0, 0x80, 0x02, 3, 1, 2, 3][..]].concat();
        let (hi, lo) = der_signature(&s).unwrap();
        assert_eq!((&hi[30..], &lo[29..]), (&[0u8, 0x80][..], &[1u8, 2, 3][..]));
        for bad in [
            &good[..good.len() - 1],                   // cut
            &[0x30, 6, 0x02, 1, 0, 0x02, 1, 1][..],    // a needless zero
            &[0x30, 6, 0x02, 1, 1, 0x02, 1, 1, 9][..], // length mismatch
            &[0x31, 6, 0x02, 1, 1, 0x02, 1, 1][..],    // not a SEQUENCE
            &[0x30, 0][..],
        ] {
            assert_eq!(der_signature(bad), None, "{bad:?}");
        }
        let long = [&[0x30, 70, 0x02, 33, 1][..], &r, &[0x02, 33, 1], &r].concat();
        assert_eq!(der_signature(&long), None);
    }

    #[test]
    fn chunked_answers_are_put_together() {
        assert_eq!(dechunk(b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n").unwrap(), Some(b"abcde".to_vec()));
        assert_eq!(dechunk(b"3\r\nab").unwrap(), None);
        assert!(dechunk(b"zz\r\n").is_err());
        assert!(dechunk(b"3\r\nabcXX").is_err());
    }

    #[test]
    fn a_stored_set_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let set = StoredSet { uri: "wss://lns:8887".into(), cred: vec![0; 12] };
        let path = dir.path().join("tc.set");
        assert_eq!(StoredSet::load(&path).unwrap(), None);
        set.store(&path).unwrap();
        assert_eq!(StoredSet::load(&path).unwrap(), Some(set));
        std::fs::write(&path, [9u8, 1]).unwrap();
        assert!(StoredSet::load(&path).is_err());
    }
}
