//! HTTPS on `http_addr`: the certificate the server presents, kept fresh without a restart.
//!
//! - **Operator's files** (`tls_cert`, `tls_key`): loaded at start (a bad pair refuses to
//!   start), then reloaded when either file's modification time or size changes (checked every
//!   2 s, so a certbot/ACME renewal is picked up by itself) and on SIGHUP. A reload that fails
//!   (half-written file, mismatched pair) is logged and the previous certificate stays.
//! - **Self-signed** (`tls_self_signed`): for a LAN trial. The key is made once and kept in
//!   `<data_dir>/tls/self-signed.key`, so a browser's "proceed anyway" and a pinned public key
//!   (Chromium's `--ignore-certificate-errors-spki-list`) survive restarts; the certificate is
//!   made anew at each start for `localhost`, the loopback and interface addresses and
//!   `public_ip`.

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

/// The certificate handed to every TLS handshake; swapped in place on reload.
#[derive(Debug)]
pub struct ServerCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

impl ServerCert {
    pub fn new(key: CertifiedKey) -> Arc<ServerCert> {
        Arc::new(ServerCert { current: RwLock::new(Arc::new(key)) })
    }

    fn replace(&self, key: CertifiedKey) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
    }

    /// The SHA-256 fingerprint of the leaf certificate now served.
    pub fn fingerprint(&self) -> String {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner()).clone();
        current.cert.first().map(|c| fingerprint(c)).unwrap_or_default()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The rustls set-up of the HTTPS listener: TLS 1.2 and 1.3, HTTP/2 and HTTP/1.1 by ALPN.
pub fn server_config(cert: Arc<ServerCert>) -> Result<Arc<rustls::ServerConfig>, String> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Reads a PEM certificate chain and its private key (PKCS#8, PKCS#1 or SEC1) and checks
/// that they belong together.
pub fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("tls_cert {}: {e}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("tls_cert {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("tls_cert {}: no PEM certificate in it", cert.display()));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("tls_key {}: {e}", key.display()))?;
    certified_key(chain, private).map_err(|e| format!("tls_cert/tls_key: {e}"))
}

fn certified_key(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Result<CertifiedKey, String> {
    let signing = provider().key_provider.load_private_key(key).map_err(|e| format!("unusable private key: {e}"))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| format!("the key does not belong to the certificate: {e}"))?;
    Ok(certified)
}

/// `AB:CD:…`, as browsers show a certificate's SHA-256 fingerprint.
pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der).iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

/// What `--tls-self-signed` made.
pub struct SelfSigned {
    pub cert: CertifiedKey,
    /// The certificate's SHA-256 fingerprint.
    pub fingerprint: String,
    /// Base64 of the SHA-256 of the public key (SPKI): what Chromium's
    /// `--ignore-certificate-errors-spki-list` and HPKP-style pins take.
    pub spki_sha256: String,
    pub names: Vec<String>,
}

/// Makes (or reuses) the key in `<dir>/self-signed.key` and a certificate for `names`.
pub fn self_signed(dir: &Path, names: &[String]) -> Result<SelfSigned, String> {
    use base64::Engine;
    use rcgen::PublicKeyData;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let key_path = dir.join("self-signed.key");
    let key = match std::fs::read_to_string(&key_path) {
        Ok(pem) => rcgen::KeyPair::from_pem(&pem).map_err(|e| format!("{}: {e} (delete it to make a new one)", key_path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = rcgen::KeyPair::generate().map_err(|e| format!("self-signed key: {e}"))?;
            write_private(&key_path, key.serialize_pem().as_bytes())?;
            key
        }
        Err(e) => return Err(format!("{}: {e}", key_path.display())),
    };
    let mut params = rcgen::CertificateParams::new(names.to_vec()).map_err(|e| format!("self-signed certificate: {e}"))?;
    params.distinguished_name.push(rcgen::DnType::CommonName, "Tessera (self-signed)");
    let cert = params.self_signed(&key).map_err(|e| format!("self-signed certificate: {e}"))?;
    let der = cert.der().clone();
    // Handy for `curl --cacert` and for trusting it in a browser profile.
    let _ = std::fs::write(dir.join("self-signed.crt"), cert.pem());
    let fingerprint = fingerprint(&der);
    let spki_sha256 = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(key.subject_public_key_info()));
    let private = PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| format!("self-signed key: {e}"))?;
    let cert = certified_key(vec![der], private)?;
    Ok(SelfSigned { cert, fingerprint, spki_sha256, names: names.to_vec() })
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// Reloads `cert` from the operator's files when they change or on SIGHUP, until the process
/// ends.
pub fn spawn_reloader(cert: Arc<ServerCert>, cert_path: PathBuf, key_path: PathBuf) {
    tokio::spawn(async move {
        let stamp = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
        let mut seen = (stamp(&cert_path), stamp(&key_path));
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        loop {
            let signalled = tokio::select! {
                _ = tick.tick() => false,
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
            };
            let now = (stamp(&cert_path), stamp(&key_path));
            if !signalled && now == seen {
                continue;
            }
            seen = now;
            match load_pair(&cert_path, &key_path) {
                Ok(key) => {
                    cert.replace(key);
                    tracing::info!(fingerprint = %cert.fingerprint(), why = if signalled { "SIGHUP" } else { "file changed" }, "TLS certificate reloaded");
                }
                // A renewal writes two files; the first change may come with the old key.
                Err(e) => tracing::warn!("TLS certificate not reloaded, still serving the previous one: {e}"),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("tessera-https-{tag}-{}", tessera_model::random::task_id()));
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    #[test]
    fn self_signed_keeps_its_key_across_starts() {
        let d = dir("self");
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let a = self_signed(&d, &names).unwrap();
        let b = self_signed(&d, &["localhost".to_string(), "10.0.0.5".to_string()]).unwrap();
        assert_eq!(a.spki_sha256, b.spki_sha256, "the same key: pins survive a restart");
        assert_eq!(a.fingerprint.len(), 32 * 3 - 1);
        // The files it leaves load as an operator's pair would.
        let loaded = load_pair(&d.join("self-signed.crt"), &d.join("self-signed.key")).unwrap();
        assert_eq!(fingerprint(&loaded.cert[0]), b.fingerprint);
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_mismatched_pair_is_refused_with_the_reason() {
        let (d1, d2) = (dir("a"), dir("b"));
        self_signed(&d1, &["localhost".to_string()]).unwrap();
        self_signed(&d2, &["localhost".to_string()]).unwrap();
        let err = load_pair(&d1.join("self-signed.crt"), &d2.join("self-signed.key")).unwrap_err();
        assert!(err.contains("does not belong"), "{err}");
        let err = load_pair(&d1.join("self-signed.key"), &d1.join("self-signed.key")).unwrap_err();
        assert!(err.contains("no PEM certificate"), "{err}");
        let err = load_pair(&d1.join("missing.crt"), &d1.join("self-signed.key")).unwrap_err();
        assert!(err.contains("missing.crt"), "{err}");
        std::fs::remove_dir_all(d1).unwrap();
        std::fs::remove_dir_all(d2).unwrap();
    }
}
