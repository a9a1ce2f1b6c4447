//! TLS for the MQTT and AMQP clients (`--tls-ca FILE`): every connection
//! of those protocols goes over TLS, trusting only the CAs in FILE (PEM),
//! and checks the broker's certificate against `--host` (an IP address such
//! as 127.0.0.1 must then be in the certificate's subjectAltName). No client
//! certificate is shown; the login is the usual user and password.
//!
//! The crypto provider is rustls's *ring*, passed explicitly, as the broker
//! itself uses: aws-lc is never built (scripts/test fails if it appears in
//! `cargo tree`). lapin gets the CA as PEM text and builds its own rustls
//! configuration on ring (its `rustls--ring` feature); rumqttc gets one
//! [`rustls::ClientConfig`] shared by all its connections.

use crate::error::BenchError;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use std::path::Path;
use std::sync::Arc;

/// The client side of TLS for one run, from `--tls-ca`.
#[derive(Clone)]
pub struct TlsClient {
    /// The CA file's text, for lapin (`OwnedTLSConfig::cert_chain`).
    ca_pem: String,
    /// rumqttc's configuration: the CA as the only root, no client auth.
    mqtt: rumqttc::TlsConfiguration,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient").finish_non_exhaustive()
    }
}

impl TlsClient {
    /// Reads the CA certificates in `path` (PEM). A file that cannot be
    /// read, or holds no certificate rustls accepts as a root, is a usage
    /// error.
    pub fn load(path: &Path) -> Result<Self, BenchError> {
        let usage =
            |what: String| BenchError::Usage(format!("--tls-ca {}: {what}", path.display()));
        let pem = std::fs::read(path).map_err(|e| usage(e.to_string()))?;
        Self::from_pem(&pem).map_err(usage)
    }

    /// The same from the file's contents; `Err` says what is wrong.
    pub fn from_pem(pem: &[u8]) -> Result<Self, String> {
        let ca_pem = String::from_utf8(pem.to_vec()).map_err(|_| "not PEM text".to_string())?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| format!("bad PEM: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("not a usable CA certificate: {e}"))?;
        }
        if roots.is_empty() {
            return Err("no CERTIFICATE in the file".into());
        }
        // ring, as the broker uses (crates/server/src/tls.rs): aws-lc is
        // never built here. rustls 0.23.48 marks ring's provider deprecated
        // only because ring has no post-quantum key exchange, which a
        // loopback benchmark does not need.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS versions: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(TlsClient {
            ca_pem,
            mqtt: rumqttc::TlsConfiguration::Rustls(Arc::new(config)),
        })
    }

    /// The CA as PEM text (lapin).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// rumqttc's transport for one connection (shares the configuration).
    pub fn mqtt_transport(&self) -> rumqttc::Transport {
        rumqttc::Transport::tls_with_config(self.mqtt.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed EC P-256 CA made with `openssl req -x509 -newkey ec`
    /// (key thrown away); its dates do not matter, only that it parses as a
    /// root.
    const CA: &str = "-----BEGIN CERTIFICATE-----
MIIBqDCCAU2gAwIBAgIUZ6vpRiOp1ESVY6dHZhXHkPJCsdQwCgYIKoZIzj0EAwIw
ITEfMB0GA1UEAwwWanVuY3Rpb24tYmVuY2ggdGVzdCBDQTAeFw0yNjEyMDYxMjMw
MjNaFw0yNjEyMDcxMjMwMjNaMCExHzAdBgNVBAMMFmp1bmN0aW9uLWJlbmNoIHRl
c3QgQ0EwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAARKhBza1xkUaIvFhk0ElHat
U143jG5Kd00JTXPaZ8TnMN4hEVKOgsM5h9kmA28325FMc75IOs1uc5vIZ7g4XVH5
o2MwYTAdBgNVHQ4EFgQU2AM31Qvk42TJ4cOCJO62Vz8QxL8wHwYDVR0jBBgwFoAU
2AM31Qvk42TJ4cOCJO62Vz8QxL8wDwYDVR0TAQH/BAUwAwEB/zAOBgNVHQ8BAf8E
BAMCAQYwCgYIKoZIzj0EAwIDSQAwRgIhAIFUowd9qMHPYdJWcxPSP1xxWjVxWaEy
7Fco95ry2UDnAiEAylEUsFM7MmATdFruMeJUtIBHyZCPmqbZWEdrnNTWKGQ=
-----END CERTIFICATE-----
";

    #[test]
    fn a_ca_file_gives_both_clients_their_configuration() {
        let tls = TlsClient::from_pem(CA.as_bytes()).expect("CA parses");
        assert_eq!(tls.ca_pem(), CA);
        assert!(matches!(tls.mqtt_transport(), rumqttc::Transport::Tls(_)));
    }

    #[test]
    fn a_file_without_a_certificate_is_refused() {
        let err = TlsClient::from_pem(b"just text\n").unwrap_err();
        assert!(err.contains("no CERTIFICATE"), "{err}");
    }

    #[test]
    fn a_missing_file_is_a_usage_error() {
        let err = TlsClient::load(Path::new("/nonexistent/ca.pem")).unwrap_err();
        assert!(
            matches!(err, BenchError::Usage(ref m) if m.contains("--tls-ca")),
            "{err}"
        );
    }

    #[test]
    fn a_truncated_certificate_is_refused() {
        let cut: String = CA
            .lines()
            .take(4)
            .chain(CA.lines().last())
            .collect::<Vec<_>>()
            .join("\n");
        assert!(TlsClient::from_pem(cut.as_bytes()).is_err());
    }
}
