//! One set of credentials as LoRa Basics Station keeps them: the server's trust, this
//! router's certificate, and its private key or a token (HTTP header lines).
//!
//! A set travels as one blob, the form CUPS sends: each of trust, certificate and key is a
//! DER structure or four zero bytes (absent), and a token takes the key's place as text. A
//! set's CRC (what `update-info` reports) is the CRC-32 of that blob: for a set CUPS sent,
//! the blob as received; for files the operator gave (PEM or DER), the blob built from
//! their DER, as Semtech's CUPS server computes it from the same files.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Four zero bytes: this part of the set is absent.
const ABSENT: [u8; 4] = [0; 4];

/// The credentials of one server (the LNS, or CUPS).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    blob: Vec<u8>,
    trust: Option<CertificateDer<'static>>,
    cert: Option<CertificateDer<'static>>,
    secret: Secret,
}

/// The router's proof of identity, beside its certificate.
#[derive(Clone, PartialEq, Eq)]
enum Secret {
    None,
    Key(Vec<u8>),
    Token(Vec<(String, String)>),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key or the token.
        f.debug_struct("Credentials")
            .field("crc", &format_args!("{:08X}", self.crc()))
            .field("trust", &self.trust.is_some())
            .field("cert", &self.cert.is_some())
            .field(
                "secret",
                &match self.secret {
                    Secret::None => "none",
                    Secret::Key(_) => "key",
                    Secret::Token(_) => "token",
                },
            )
            .finish()
    }
}

impl Credentials {
    /// No trust, no certificate, no key: system roots and nothing presented.
    pub fn none() -> Credentials {
        Credentials::from_blob(&[ABSENT, ABSENT, ABSENT].concat()).expect("the empty set parses")
    }

    /// A set in CUPS's form; an error says which part is broken.
    pub fn from_blob(blob: &[u8]) -> anyhow::Result<Credentials> {
        let (trust, rest) = der_or_absent(blob).context("the trust")?;
        let (cert, rest) = der_or_absent(rest).context("the certificate")?;
        let secret = if rest.is_empty() || rest == ABSENT {
            Secret::None
        } else if rest[0] == 0x30 {
            let (key, tail) = der_or_absent(rest).context("the private key")?;
            if !tail.is_empty() {
                bail!("{} bytes after the private key", tail.len());
            }
            Secret::Key(key.expect("0x30 is a structure").to_vec())
        } else {
            let text = std::str::from_utf8(rest).context("the token is not text")?;
            Secret::Token(header_lines(text)?)
        };
        if cert.is_some() != matches!(secret, Secret::Key(_)) {
            bail!("a certificate goes with a private key (and a token with no certificate)");
        }
        Ok(Credentials {
            blob: blob.to_vec(),
            trust: trust.map(|d| CertificateDer::from(d.to_vec())),
            cert: cert.map(|d| CertificateDer::from(d.to_vec())),
            secret,
        })
    }

    /// The set in the operator's files, each PEM or DER; a key file that is neither a PEM
    /// nor a DER private key holds token header lines, as in Station.
    pub fn from_files(
        trust: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> anyhow::Result<Credentials> {
        let read = |path: &Path| std::fs::read(path).with_context(|| format!("reading {}", path.display()));
        let mut blob = Vec::new();
        for path in [trust, cert] {
            match path {
                Some(path) => blob.extend_from_slice(&first_der(path, &read(path)?, Part::Cert)?),
                None => blob.extend_from_slice(&ABSENT),
            }
        }
        match key {
            Some(path) => {
                let bytes = read(path)?;
                if is_pem(&bytes) || bytes.first() == Some(&0x30) {
                    blob.extend_from_slice(&first_der(path, &bytes, Part::Key)?);
                } else {
                    let text =
                        std::str::from_utf8(&bytes).ok().filter(|t| header_lines(t).is_ok()).with_context(
                            || format!("{}: neither a PEM key nor `Header: value` lines", path.display()),
                        )?;
                    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
                        blob.extend_from_slice(line.as_bytes());
                        blob.extend_from_slice(b"\r\n");
                    }
                }
            }
            None => blob.extend_from_slice(&ABSENT),
        }
        Credentials::from_blob(&blob).with_context(|| match (cert, key) {
            (Some(c), Some(k)) => format!("{} and {}", c.display(), k.display()),
            (Some(c), None) => format!("{}: a certificate needs its private key", c.display()),
            (None, Some(k)) => format!("{}: a private key needs its certificate", k.display()),
            (None, None) => "the credentials".into(),
        })
    }

    /// The blob, as `update-info` counts it and as it is stored.
    pub fn blob(&self) -> &[u8] {
        &self.blob
    }

    /// CRC-32 (IEEE) of the blob: `cupsCredCrc` / `tcCredCrc`.
    pub fn crc(&self) -> u32 {
        crc32(&self.blob)
    }

    /// Header lines sent with each request (a token); empty with a key.
    pub fn headers(&self) -> Vec<(String, String)> {
        match &self.secret {
            Secret::Token(lines) => lines.clone(),
            _ => Vec::new(),
        }
    }

    /// The rustls client configuration: this set's trust (the system's roots without one)
    /// and its certificate and key when it has them.
    pub fn tls_config(&self) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        let identity = match (&self.cert, &self.secret) {
            (Some(cert), Secret::Key(key)) => Some((
                vec![cert.clone()],
                PrivateKeyDer::try_from(key.clone()).map_err(|e| anyhow::anyhow!("the private key: {e}"))?,
            )),
            _ => None,
        };
        Ok(berrygw_proto::tls::client_config_der(self.trust.clone().map(|t| vec![t]), identity)?)
    }
}

/// CRC-32 as in zlib (`crc32` of Python and Station).
pub fn crc32(bytes: &[u8]) -> u32 {
    crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC).checksum(bytes)
}

/// A DER structure at the start of `bytes` (and the rest), or four zero bytes (`None`).
fn der_or_absent(bytes: &[u8]) -> anyhow::Result<(Option<&[u8]>, &[u8])> {
    if bytes.len() >= 4 && bytes[..4] == ABSENT {
        return Ok((None, &bytes[4..]));
    }
    if bytes.first() != Some(&0x30) {
        bail!("neither a DER structure nor four zero bytes");
    }
    let len_byte = *bytes.get(1).context("cut short")?;
    let (len, header) = match len_byte {
        n if n < 0x80 => (usize::from(n), 2),
        0x81..=0x83 => {
            let n = usize::from(len_byte & 0x7f);
            let digits = bytes.get(2..2 + n).context("cut short")?;
            (digits.iter().fold(0usize, |acc, d| acc << 8 | usize::from(*d)), 2 + n)
        }
        _ => bail!("a DER length this set cannot hold"),
    };
    let end = header + len;
    if bytes.len() < end {
        bail!("cut short ({} of {end} bytes)", bytes.len());
    }
    Ok((Some(&bytes[..end]), &bytes[end..]))
}

fn is_pem(bytes: &[u8]) -> bool {
    bytes.windows(11).any(|w| w == b"-----BEGIN ")
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    Cert,
    Key,
}

/// The first certificate or private key of a PEM or DER file's `bytes`, as DER.
fn first_der(path: &Path, bytes: &[u8], part: Part) -> anyhow::Result<Vec<u8>> {
    if !is_pem(bytes) {
        let (der, rest) =
            der_or_absent(bytes).with_context(|| format!("{}: neither PEM nor DER", path.display()))?;
        if !rest.is_empty() && part == Part::Key {
            bail!("{}: bytes after the DER key", path.display());
        }
        return der.map(<[u8]>::to_vec).with_context(|| format!("{}: empty", path.display()));
    }
    let mut reader = std::io::Cursor::new(bytes);
    let found = match part {
        Part::Cert => rustls_pemfile::certs(&mut reader).next().transpose()?.map(|c| c.to_vec()),
        Part::Key => rustls_pemfile::private_key(&mut reader)?.map(|k| k.secret_der().to_vec()),
    };
    let what = match part {
        Part::Cert => "certificate",
        Part::Key => "private key (PKCS#8, PKCS#1 or SEC1)",
    };
    found.with_context(|| format!("{}: no PEM {what}", path.display()))
}

/// `Name: value` lines (CRLF or LF), as a token `tc.key` holds them.
pub fn header_lines(text: &str) -> anyhow::Result<Vec<(String, String)>> {
    let mut headers = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            bail!("neither a key nor `Header: value` lines");
        };
        let (name, value) = (name.trim(), value.trim());
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            bail!("bad header name {name:?}");
        }
        if value.contains(|c: char| c.is_control()) {
            bail!("header {name}: a control character in its value");
        }
        headers.push((name.to_string(), value.to_string()));
    }
    if headers.is_empty() {
        bail!("no header line");
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A DER SEQUENCE of `n` content bytes.
    fn seq(n: usize) -> Vec<u8> {
        let mut out = vec![0x30];
        match n {
            n if n < 0x80 => out.push(n as u8),
            n if n <= 0xff => out.extend_from_slice(&[0x81, n as u8]),
            n => out.extend_from_slice(&[0x82, (n >> 8) as u8, n as u8]),
        }
        out.extend(std::iter::repeat_n(7u8, n));
        out
    }

    #[test]
    fn a_token_set_parses_and_its_crc_is_zlibs() {
        let blob = [seq(300), ABSENT.to_vec(), b"Authorization: Bearer NNSXS.X\r\n".to_vec()].concat();
        let c = Credentials::from_blob(&blob).unwrap();
        assert_eq!(c.headers(), [("Authorization".to_string(), "Bearer NNSXS.X".to_string())]);
        assert!(c.trust.is_some() && c.cert.is_none());
        // zlib.crc32(b"123456789") == 0xCBF43926
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(c.crc(), crc32(&blob));
        assert!(!format!("{c:?}").contains("NNSXS"));
    }

    #[test]
    fn broken_sets_are_refused_with_the_part_named() {
        for (blob, why) in [
            (vec![0x30, 0x05, 1, 2], "the trust"),
            ([ABSENT.to_vec(), vec![0x31, 0]].concat(), "the certificate"),
            ([ABSENT.to_vec(), seq(10), ABSENT.to_vec()].concat(), "goes with a private key"),
            ([ABSENT.to_vec(), ABSENT.to_vec(), seq(3), vec![9]].concat(), "after the private key"),
            ([ABSENT.to_vec(), ABSENT.to_vec(), vec![0xff, 0xfe]].concat(), "not text"),
            ([ABSENT.to_vec(), ABSENT.to_vec(), b"no colon here".to_vec()].concat(), "Header: value"),
            (vec![0x30, 0x84, 1, 1, 1, 1], "cannot hold"),
            (vec![], "neither"),
        ] {
            let e = format!("{:#}", Credentials::from_blob(&blob).unwrap_err());
            assert!(e.contains(why), "{blob:?}: {e}");
        }
    }

    #[test]
    fn files_in_der_or_pem_make_the_same_set() {
        let dir = tempfile::tempdir().unwrap();
        let der = seq(40);
        let pem = format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &der)
        );
        std::fs::write(dir.path().join("a.der"), &der).unwrap();
        std::fs::write(dir.path().join("a.pem"), pem).unwrap();
        std::fs::write(dir.path().join("tc.key"), "Authorization: Bearer T\n").unwrap();
        let key = dir.path().join("tc.key");
        let a = Credentials::from_files(Some(&dir.path().join("a.der")), None, Some(&key)).unwrap();
        let b = Credentials::from_files(Some(&dir.path().join("a.pem")), None, Some(&key)).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.blob(), [der, ABSENT.to_vec(), b"Authorization: Bearer T\r\n".to_vec()].concat());
        let none = Credentials::from_files(None, None, None).unwrap();
        assert_eq!(none, Credentials::none());
        let e = Credentials::from_files(None, Some(&dir.path().join("a.der")), None).unwrap_err();
        assert!(format!("{e:#}").contains("needs its private key"), "{e:#}");
    }
}
