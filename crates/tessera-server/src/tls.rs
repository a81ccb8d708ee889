//! The TLS client set-up shared by every outgoing connection (rtmps relays, https webhooks):
//! rustls on `ring`, Mozilla's root set, plus the operator's own CAs (`outbound_ca_file`) for
//! private CDNs and backends.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use std::path::Path;
use std::sync::Arc;

pub fn client_config(extra_ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    if let Some(path) = extra_ca {
        let mut added = 0;
        for cert in CertificateDer::pem_file_iter(path).map_err(|e| format!("outbound_ca_file {}: {e}", path.display()))? {
            let cert = cert.map_err(|e| format!("outbound_ca_file {}: {e}", path.display()))?;
            roots.add(cert).map_err(|e| format!("outbound_ca_file {}: {e}", path.display()))?;
            added += 1;
        }
        if added == 0 {
            return Err(format!("outbound_ca_file {}: no PEM certificate in it", path.display()));
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_missing_or_empty_ca_file_is_refused() {
        assert!(super::client_config(None).is_ok());
        assert!(super::client_config(Some(std::path::Path::new("/nonexistent/ca.pem"))).is_err());
        let empty = std::env::temp_dir().join(format!("tessera-empty-ca-{}.pem", std::process::id()));
        std::fs::write(&empty, "not a certificate\n").unwrap();
        assert!(super::client_config(Some(&empty)).unwrap_err().contains("no PEM certificate"));
        let _ = std::fs::remove_file(&empty);
    }
}
