//! The DTLS set-up of every peer: str0m's dimpl with the AWS-LC crypto provider, plus ECDSA
//! verification of P-224 certificates.
//!
//! FFmpeg 8's WHIP muxer generates its self-signed DTLS certificate on P-224 (secp224r1).
//! dimpl's verifier knows P-256 and P-384 only, so it could not check the signature in
//! FFmpeg's ServerKeyExchange (Tessera as DTLS client) or CertificateVerify (as server): the
//! flight was dropped, retransmitted, dropped again, and FFmpeg never got to publish (issue 10,
//! defect 17). [`Verifier`] hands everything to dimpl's own verifier and, only where that one
//! says the curve is unsupported and the curve is P-224, verifies with RustCrypto's `p224`.

use std::sync::{Arc, OnceLock};
use std::time::Instant;
use str0m::crypto::dtls::{DtlsCert, DtlsImplError, DtlsInstance, DtlsOutput, DtlsProvider, DtlsVersion, ProtocolVersion};
use str0m::crypto::{CryptoError, CryptoProvider};

use dimpl::crypto::SignatureVerifier;
use dimpl::{HashAlgorithm, NamedGroup, SignatureAlgorithm};

/// secp224r1.
const OID_P224: &str = "1.3.132.0.33";

/// dimpl's verifier, with P-224 added.
#[derive(Debug)]
struct Verifier;

impl Verifier {
    fn verify_p224(cert_der: &[u8], data: &[u8], signature: &[u8], hash_alg: HashAlgorithm) -> Result<(), dimpl::CryptoError> {
        use p224::ecdsa::signature::hazmat::PrehashVerifier;
        use sha2::Digest;
        use x509_cert::der::Decode;
        let failed = || dimpl::CryptoError::SignatureVerificationFailed { signature: SignatureAlgorithm::ECDSA, hash: hash_alg, group: NamedGroup::Secp224r1 };
        let cert = x509_cert::Certificate::from_der(cert_der).map_err(|_| dimpl::CryptoError::CertificateParseFailed)?;
        let spki = &cert.tbs_certificate().subject_public_key_info();
        let curve: x509_cert::spki::ObjectIdentifier =
            spki.algorithm.parameters.as_ref().ok_or(dimpl::CryptoError::MissingEcCurveParameter)?.decode_as().map_err(|_| dimpl::CryptoError::InvalidEcCurveParameter)?;
        if curve.to_string() != OID_P224 {
            return Err(dimpl::CryptoError::UnsupportedEcCurve);
        }
        let point = spki.subject_public_key.as_bytes().ok_or(dimpl::CryptoError::InvalidSubjectPublicKey)?;
        let key = p224::ecdsa::VerifyingKey::from_sec1_bytes(point).map_err(|_| dimpl::CryptoError::InvalidSubjectPublicKey)?;
        let signature = p224::ecdsa::Signature::from_der(signature).map_err(|_| failed())?;
        let digest: Vec<u8> = match hash_alg {
            HashAlgorithm::SHA256 => sha2::Sha256::digest(data).to_vec(),
            HashAlgorithm::SHA384 => sha2::Sha384::digest(data).to_vec(),
            _ => return Err(dimpl::CryptoError::UnsupportedSignatureVerification { signature: SignatureAlgorithm::ECDSA, hash: hash_alg, group: NamedGroup::Secp224r1 }),
        };
        key.verify_prehash(&digest, &signature).map_err(|_| failed())
    }
}

impl SignatureVerifier for Verifier {
    fn verify_signature(&self, cert_der: &[u8], data: &[u8], signature: &[u8], hash_alg: HashAlgorithm, sig_alg: SignatureAlgorithm) -> Result<(), dimpl::CryptoError> {
        let default = dimpl::crypto::aws_lc_rs::default_provider().signature_verification;
        match default.verify_signature(cert_der, data, signature, hash_alg, sig_alg) {
            Err(dimpl::CryptoError::UnsupportedEcCurve) if sig_alg == SignatureAlgorithm::ECDSA => Verifier::verify_p224(cert_der, data, signature, hash_alg),
            other => other,
        }
    }
}

static VERIFIER: Verifier = Verifier;

/// dimpl's AWS-LC provider with [`Verifier`].
fn dimpl_provider() -> dimpl::crypto::CryptoProvider {
    let mut provider = dimpl::crypto::aws_lc_rs::default_provider();
    provider.signature_verification = &VERIFIER;
    provider
}

/// str0m's DTLS provider, building each peer's dimpl instance with [`dimpl_provider`] (the rest
/// as str0m's own AWS-LC DTLS provider does: no server cookie, since ICE already checked the
/// peer's address).
#[derive(Debug)]
struct Dtls;

impl DtlsProvider for Dtls {
    fn generate_certificate(&self) -> Option<DtlsCert> {
        dimpl::certificate::generate_self_signed_certificate().ok().map(|c| DtlsCert { certificate: c.certificate, private_key: c.private_key })
    }

    fn new_dtls(&self, cert: &DtlsCert, now: Instant, version: DtlsVersion, mtu: Option<usize>) -> Result<Box<dyn DtlsInstance>, CryptoError> {
        let certificate = dimpl::DtlsCertificate { certificate: cert.certificate.clone(), private_key: cert.private_key.clone() };
        let mut builder = dimpl::Config::builder().use_server_cookie(false).with_crypto_provider(dimpl_provider());
        if let Some(mtu) = mtu {
            builder = builder.mtu(mtu);
        }
        let config = Arc::new(builder.build().map_err(|e| CryptoError::Other(format!("DTLS configuration: {e}")))?);
        let dtls = match version {
            DtlsVersion::Dtls12 => dimpl::Dtls::new_12(config, certificate, now),
            DtlsVersion::Dtls13 => dimpl::Dtls::new_13(config, certificate, now),
            DtlsVersion::Auto => dimpl::Dtls::new_auto(config, certificate, now),
            other => return Err(CryptoError::Other(format!("unsupported DTLS version {other}"))),
        };
        Ok(Box::new(Instance(dtls)))
    }
}

struct Instance(dimpl::Dtls);

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DtlsInstance")
    }
}

impl DtlsInstance for Instance {
    fn set_active(&mut self, active: bool) {
        self.0.set_active(active);
    }
    fn handle_packet(&mut self, packet: &[u8]) -> Result<(), DtlsImplError> {
        self.0.handle_packet(packet)
    }
    fn poll_output<'a>(&mut self, buf: &'a mut [u8]) -> DtlsOutput<'a> {
        self.0.poll_output(buf)
    }
    fn handle_timeout(&mut self, now: Instant) -> Result<(), DtlsImplError> {
        self.0.handle_timeout(now)
    }
    fn send_application_data(&mut self, data: &[u8]) -> Result<usize, DtlsImplError> {
        self.0.send_application_data(data)
    }
    fn is_active(&self) -> bool {
        self.0.is_active()
    }
    fn protocol_version(&self) -> Option<ProtocolVersion> {
        self.0.protocol_version()
    }
    fn is_closing(&self) -> bool {
        self.0.is_closing()
    }
    fn is_closed(&self) -> bool {
        self.0.is_closed()
    }
    fn close(&mut self) -> Result<(), DtlsImplError> {
        self.0.close()
    }
}

static DTLS: Dtls = Dtls;

/// The DTLS certificate every peer presents, made once per process (as mediasoup does per
/// worker): making a key pair and signing a certificate for each session is work a connect
/// storm would do hundreds of times on the media task, and browsers pin only the fingerprint
/// the SDP answer carries, which is then the same for every session. `None` if it cannot be
/// made (each peer then makes its own).
pub fn process_certificate() -> Option<DtlsCert> {
    static CERT: OnceLock<Option<DtlsCert>> = OnceLock::new();
    CERT.get_or_init(|| DTLS.generate_certificate()).clone()
}

/// The crypto provider every peer uses: str0m's AWS-LC one with [`Dtls`].
pub fn crypto_provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            let mut p = str0m_aws_lc_rs::default_provider();
            p.dtls_provider = &DTLS;
            Arc::new(p)
        })
        .clone()
}

/// The signature check every DTLS handshake runs on a peer's certificate and signed handshake
/// data (ECDSA with SHA-256), for Tessera's fuzz target: the certificate's DER is parsed here,
/// by x509-cert, when the curve is one dimpl does not know.
#[doc(hidden)]
pub fn verify_ecdsa_sha256(cert_der: &[u8], signed: &[u8], signature: &[u8]) -> bool {
    Verifier.verify_signature(cert_der, signed, signature, HashAlgorithm::SHA256, SignatureAlgorithm::ECDSA).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// FFmpeg 8's own certificate and ServerKeyExchange signature, captured from a WHIP
    /// handshake with Tessera (client random, server random and the ECDH parameters, signed
    /// with ecdsa-with-SHA256 on P-224): verified, and a changed message is refused.
    #[test]
    fn ffmpeg8_p224_server_key_exchange_verifies() {
        let cert = include_bytes!("../testdata/ffmpeg8-p224-cert.der");
        let signed = include_bytes!("../testdata/ffmpeg8-p224-ske-signed.bin");
        let signature = include_bytes!("../testdata/ffmpeg8-p224-ske-signature.der");
        // dimpl alone cannot (this is the bug).
        let default = dimpl::crypto::aws_lc_rs::default_provider().signature_verification;
        assert!(matches!(default.verify_signature(cert, signed, signature, HashAlgorithm::SHA256, SignatureAlgorithm::ECDSA), Err(dimpl::CryptoError::UnsupportedEcCurve)));
        Verifier.verify_signature(cert, signed, signature, HashAlgorithm::SHA256, SignatureAlgorithm::ECDSA).unwrap();
        let mut changed = signed.to_vec();
        changed[0] ^= 1;
        assert!(Verifier.verify_signature(cert, &changed, signature, HashAlgorithm::SHA256, SignatureAlgorithm::ECDSA).is_err());
    }
}
