//! TLS client settings for MQTT connections (the gateway's sinks, the central tool):
//! the server is verified against a
//! configured CA bundle or the system roots, and a client certificate is
//! presented when configured (mutual TLS). rustls with the ring provider only:
//! no OpenSSL, no aws-lc (which needs cmake and breaks armv7 builds).

use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

/// Why a TLS client configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{key}: cannot read {path}: {source}")]
    Read { key: &'static str, path: String, source: std::io::Error },
    #[error("{key}: {path} holds no PEM certificate")]
    NoCertificate { key: &'static str, path: String },
    #[error("{key}: {path} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey { key: &'static str, path: String },
    #[error("no usable system root certificates; set ca_file")]
    NoSystemRoots,
    #[error("client certificate and key do not form a usable identity: {0}")]
    Identity(rustls::Error),
    #[error("TLS setup failed: {0}")]
    Setup(rustls::Error),
}

/// Files that make up a TLS client identity and trust.
pub struct TlsFiles<'a> {
    pub ca_file: Option<&'a Path>,
    pub client_cert_file: Option<&'a Path>,
    pub client_key_file: Option<&'a Path>,
}

/// Build the rustls client configuration for one sink.
pub fn client_config(files: &TlsFiles<'_>) -> Result<Arc<ClientConfig>, TlsError> {
    let trust = files.ca_file.map(|path| read_certs("ca_file", path)).transpose()?;
    let identity = match (files.client_cert_file, files.client_key_file) {
        (Some(cert), Some(key)) => {
            Some((read_certs("client_cert_file", cert)?, read_key("client_key_file", key)?))
        }
        _ => None,
    };
    client_config_der(trust, identity)
}

/// The same from certificates and a key already in DER (LoRa Basics Station's credential
/// sets): `trust` or the system roots, and the identity presented when given.
pub fn client_config_der(
    trust: Option<Vec<CertificateDer<'static>>>,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    match trust {
        Some(certs) => {
            for cert in certs {
                roots.add(cert).map_err(TlsError::Setup)?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for cert in native.certs {
                // A broken system certificate is skipped; the rest still verify.
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(TlsError::NoSystemRoots);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Setup)?
        .with_root_certificates(roots);
    let config = match identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).map_err(TlsError::Identity)?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

fn open(key: &'static str, path: &Path) -> Result<BufReader<File>, TlsError> {
    File::open(path).map(BufReader::new).map_err(|source| TlsError::Read {
        key,
        path: path.display().to_string(),
        source,
    })
}

fn read_certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let mut reader = open(key, path)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut reader)
        .collect::<Result<_, _>>()
        .map_err(|source| TlsError::Read { key, path: path.display().to_string(), source })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { key, path: path.display().to_string() });
    }
    Ok(certs)
}

fn read_key(key: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let mut reader = open(key, path)?;
    rustls_pemfile::private_key(&mut reader)
        .map_err(|source| TlsError::Read { key, path: path.display().to_string(), source })?
        .ok_or_else(|| TlsError::NoKey { key, path: path.display().to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_file_without_certificate_is_refused() {
        let dir = std::env::temp_dir().join(format!("berrygw-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp");
        let path = dir.join("empty.pem");
        std::fs::write(&path, "not a certificate\n").expect("write");
        let err =
            client_config(&TlsFiles { ca_file: Some(&path), client_cert_file: None, client_key_file: None })
                .expect_err("garbage CA refused");
        assert!(
            err.to_string().contains("ca_file") && err.to_string().contains("no PEM certificate"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn missing_key_file_names_the_key() {
        let missing = Path::new("/nonexistent/client.key");
        let err = read_key("client_key_file", missing).expect_err("missing");
        assert!(err.to_string().starts_with("client_key_file: cannot read /nonexistent/client.key"), "{err}");
    }
}
