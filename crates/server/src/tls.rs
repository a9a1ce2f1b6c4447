//! TLS for the protocol listeners (`amqps`, `mqtts`, `stomps`): rustls with
//! the ring provider, passed explicitly (no aws-lc C build; the test suite
//! fails if aws-lc-rs appears in `cargo tree`). The configuration is built
//! from PEM files once at start and again on reload; a reload that fails
//! keeps the configuration in use. Handshakes run in the connection's own
//! task, under `[tls] handshake_timeout_secs`, after the connection was
//! admitted (so they count against the connection limits).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use serde::{Deserialize, Serialize};

/// Whether clients must show a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verify {
    /// No client certificate is asked for.
    #[default]
    None,
    /// Asked for; a client without one may still log in with a password,
    /// one with a certificate the CA did not sign is refused.
    Optional,
    /// A certificate signed by `[tls] ca` is required.
    Required,
}

impl std::str::FromStr for Verify {
    type Err = String;
    fn from_str(s: &str) -> Result<Verify, String> {
        match s {
            "none" => Ok(Verify::None),
            "optional" => Ok(Verify::Optional),
            "required" => Ok(Verify::Required),
            other => Err(format!("'{other}' is not none, optional or required")),
        }
    }
}

/// Which name in a client certificate becomes the user it logs in as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoginName {
    /// The subject's Common Name (RabbitMQ's and Mosquitto's default).
    #[default]
    CommonName,
    /// The whole subject, as `CN=device-7, O=Plant` (attributes in the
    /// certificate's order).
    DistinguishedName,
    /// A subject alternative name: the `login_san_index`th (from 0) of
    /// type `login_san_type`.
    SubjectAlternativeName,
}

/// The kind of subject alternative name [`LoginName::SubjectAlternativeName`] takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SanType {
    #[default]
    Dns,
    Email,
    Uri,
}

/// `[tls]`: certificates for the TLS listeners and their ports. With no
/// `cert` there are no TLS listeners.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// The server's certificate chain (PEM, leaf first). Empty: no TLS.
    pub cert: PathBuf,
    /// The server's private key (PEM: PKCS#8, or PKCS#1 RSA, or SEC1 EC).
    pub key: PathBuf,
    /// CA certificates that sign client certificates (PEM); needed when
    /// `verify` is not `none`.
    pub ca: PathBuf,
    /// Certificate revocation lists (PEM) checked for client certificates.
    pub crl: PathBuf,
    /// Client certificates: `none`, `optional` or `required`.
    pub verify: Verify,
    /// The oldest TLS version accepted: "1.2" or "1.3".
    pub min_version: String,
    /// Seconds a client has to finish its handshake.
    pub handshake_timeout_secs: u64,
    /// The certificate name a client without a password logs in as.
    pub login_name: LoginName,
    pub login_san_type: SanType,
    pub login_san_index: usize,
    /// The TLS listeners' ports on `[broker] bind` (0: any free port).
    pub amqps_port: u16,
    pub mqtts_port: u16,
    pub stomps_port: u16,
    /// The admin listener over HTTPS (management API, console, metrics),
    /// beside the plain one, when `[admin] enabled`.
    pub https_port: u16,
    /// MQTT and STOMP over WebSocket over TLS (`wss://`), when
    /// `[websocket] enabled` and their protocol's listener is.
    pub mqtt_wss_port: u16,
    pub stomp_wss_port: u16,
}

impl Default for TlsConfig {
    fn default() -> TlsConfig {
        TlsConfig {
            cert: PathBuf::new(),
            key: PathBuf::new(),
            ca: PathBuf::new(),
            crl: PathBuf::new(),
            verify: Verify::None,
            min_version: "1.2".into(),
            handshake_timeout_secs: 10,
            login_name: LoginName::CommonName,
            login_san_type: SanType::Dns,
            login_san_index: 0,
            amqps_port: 5671,
            mqtts_port: 8883,
            stomps_port: 61614,
            https_port: 15671,
            mqtt_wss_port: 15676,
            stomp_wss_port: 15673,
        }
    }
}

impl TlsConfig {
    /// Whether TLS listeners are to be opened.
    pub fn enabled(&self) -> bool {
        !self.cert.as_os_str().is_empty()
    }

    /// The checks serde cannot make (files are read at start).
    pub fn validate(&self) -> Result<(), String> {
        if !["1.2", "1.3"].contains(&self.min_version.as_str()) {
            return Err(format!(
                "[tls] min_version must be \"1.2\" or \"1.3\", not \"{}\"",
                self.min_version
            ));
        }
        if self.enabled() && self.key.as_os_str().is_empty() {
            return Err("[tls] cert is set but key is not".into());
        }
        if self.enabled() && self.verify != Verify::None && self.ca.as_os_str().is_empty() {
            return Err(
                "[tls] verify needs ca: the certificates that sign client certificates".into(),
            );
        }
        if self.handshake_timeout_secs == 0 {
            return Err("[tls] handshake_timeout_secs must be at least 1".into());
        }
        Ok(())
    }

    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.handshake_timeout_secs)
    }
}

/// The TLS configuration in use, swapped whole on reload.
pub struct Tls {
    config: TlsConfig,
    current: RwLock<Arc<ServerConfig>>,
}

impl Tls {
    /// Reads the files named by `config`.
    pub fn load(config: &TlsConfig) -> Result<Tls, String> {
        Ok(Tls {
            current: RwLock::new(Arc::new(build(config)?)),
            config: config.clone(),
        })
    }

    /// Reads the files again. New handshakes use them; open connections
    /// keep theirs. On error the configuration in use stays.
    pub fn reload(&self) -> Result<(), String> {
        let fresh = build(&self.config)?;
        *self.current.write() = Arc::new(fresh);
        Ok(())
    }

    /// An acceptor with the configuration in use now.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(Arc::clone(&self.current.read()))
    }

    pub fn handshake_timeout(&self) -> Duration {
        self.config.handshake_timeout()
    }

    /// The user a verified client certificate chain (leaf first) stands
    /// for, by `[tls] login_name`; None when it has no such name.
    pub fn client_name(&self, chain: &[CertificateDer<'_>]) -> Option<String> {
        let (_, cert) = x509_parser::parse_x509_certificate(chain.first()?.as_ref()).ok()?;
        let subject = cert.subject();
        match self.config.login_name {
            LoginName::CommonName => subject
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok())
                .map(str::to_string),
            LoginName::DistinguishedName => Some(subject.to_string()),
            LoginName::SubjectAlternativeName => {
                use x509_parser::extensions::GeneralName;
                let sans = cert.subject_alternative_name().ok()??;
                sans.value
                    .general_names
                    .iter()
                    .filter_map(|n| match (self.config.login_san_type, n) {
                        (SanType::Dns, GeneralName::DNSName(s))
                        | (SanType::Email, GeneralName::RFC822Name(s))
                        | (SanType::Uri, GeneralName::URI(s)) => Some(s.to_string()),
                        _ => None,
                    })
                    .nth(self.config.login_san_index)
            }
        }
        .filter(|name| !name.is_empty())
    }
}

fn read_certs(what: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("[tls] {what} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "[tls] {what} {}: no certificate in it",
            path.display()
        ));
    }
    Ok(certs)
}

/// The CA certificates of `[tls] ca`, as roots.
fn read_roots(config: &TlsConfig) -> Result<Arc<rustls::RootCertStore>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in read_certs("ca", &config.ca)? {
        roots
            .add(ca)
            .map_err(|e| format!("[tls] ca {}: {e}", config.ca.display()))?;
    }
    Ok(Arc::new(roots))
}

/// The revocation lists of `[tls] crl` (none when it is not set).
fn read_crls(config: &TlsConfig) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    if config.crl.as_os_str().is_empty() {
        return Ok(Vec::new());
    }
    CertificateRevocationListDer::pem_file_iter(&config.crl)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("[tls] crl {}: {e}", config.crl.display()))
}

/// TLS for the cluster's peer links (`[cluster] peer_tls`), TLS 1.3 only
/// (both ends are Junction): this node's `[tls] cert` and `key` on both
/// ends of its links; the other node's certificate must chain to `[tls]
/// ca` (and, itself, not be revoked by `[tls] crl`, as for clients), and
/// name that node's IP address (checked by both ends).
pub fn peer_tls(config: &TlsConfig) -> Result<junction_cluster::PeerTls, String> {
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
    let chain = read_certs("cert", &config.cert)?;
    let key = PrivateKeyDer::from_pem_file(&config.key)
        .map_err(|e| format!("[tls] key {}: {e}", config.key.display()))?;
    let roots = read_roots(config)?;
    let crls = read_crls(config)?;
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(&provider))
            .with_crls(crls.clone())
            .only_check_end_entity_revocation()
            .build()
            .map_err(|e| format!("[tls] peer verification: {e}"))?;
    let server = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(versions)
        .map_err(|e| format!("[tls] protocol versions: {e}"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| format!("[tls] cert and key: {e}"))?;
    let server_verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(roots, Arc::clone(&provider))
            .with_crls(crls)
            .only_check_end_entity_revocation()
            .build()
            .map_err(|e| format!("[tls] peer verification: {e}"))?;
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| format!("[tls] protocol versions: {e}"))?
        .with_webpki_verifier(server_verifier)
        .with_client_auth_cert(chain, key)
        .map_err(|e| format!("[tls] cert and key as a client's: {e}"))?;
    Ok(junction_cluster::PeerTls {
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
        connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
    })
}

/// A rustls server configuration from the files `config` names.
fn build(config: &TlsConfig) -> Result<ServerConfig, String> {
    // ring, as the project requires (no aws-lc C build). rustls 0.23.48
    // marks it deprecated only because ring has no post-quantum key
    // exchange; the classical suites it offers are the ones clients use.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = if config.min_version == "1.3" {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let chain = read_certs("cert", &config.cert)?;
    let key = PrivateKeyDer::from_pem_file(&config.key)
        .map_err(|e| format!("[tls] key {}: {e}", config.key.display()))?;
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(versions)
        .map_err(|e| format!("[tls] protocol versions: {e}"))?;
    let builder = match config.verify {
        Verify::None => builder.with_no_client_auth(),
        Verify::Optional | Verify::Required => {
            let roots = read_roots(config)?;
            let crls = read_crls(config)?;
            // With CRLs, the client's own certificate is checked against
            // them (OpenSSL's and so Mosquitto's CRL check); a certificate
            // whose issuer has no CRL in the file is refused.
            let checks_crls = !crls.is_empty();
            let verifier =
                WebPkiClientVerifier::builder_with_provider(roots, Arc::clone(&provider))
                    .with_crls(crls);
            let verifier = if checks_crls {
                verifier.only_check_end_entity_revocation()
            } else {
                verifier
            };
            let verifier = if config.verify == Verify::Optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .map_err(|e| format!("[tls] client verification: {e}"))?,
            )
        }
    };
    builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("[tls] cert and key: {e}"))
}

/// Most TLS handshakes the admin listener runs at once.
const MAX_ADMIN_HANDSHAKES: usize = 64;

/// The admin listener over HTTPS, for axum: a task accepts connections and
/// runs their handshakes in their own tasks (each under the handshake
/// timeout, at most [`MAX_ADMIN_HANDSHAKES`] at once), so a client that
/// never finishes one holds up nobody; axum takes the finished streams.
pub struct HttpsListener {
    ready: tokio::sync::mpsc::Receiver<(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        std::net::SocketAddr,
    )>,
    local: std::net::SocketAddr,
}

impl HttpsListener {
    /// Starts accepting on `listener` until `shutdown`; the task is
    /// tracked by `tasks`.
    pub fn spawn(
        listener: tokio::net::TcpListener,
        tls: Arc<Tls>,
        shutdown: tokio_util::sync::CancellationToken,
        tasks: &tokio_util::task::TaskTracker,
    ) -> std::io::Result<HttpsListener> {
        let local = listener.local_addr()?;
        let (tx, ready) = tokio::sync::mpsc::channel(MAX_ADMIN_HANDSHAKES);
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_ADMIN_HANDSHAKES));
        let spawner = tasks.clone();
        tasks.spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    a = listener.accept() => a,
                };
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin HTTPS accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Past the bound, a new connection is closed at once.
                let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                    continue;
                };
                let (tls, tx) = (Arc::clone(&tls), tx.clone());
                spawner.spawn(async move {
                    let handshake = tls.acceptor().accept(stream);
                    match tokio::time::timeout(tls.handshake_timeout(), handshake).await {
                        Ok(Ok(s)) => {
                            let _ = tx.send((s, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "admin TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%peer, "admin TLS handshake timed out"),
                    }
                    drop(slot);
                });
            }
        });
        Ok(HttpsListener { ready, local })
    }
}

impl axum::serve::Listener for HttpsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(s) => s,
            // The accepting task ended (shutdown): nothing more comes.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_cert_no_tls_and_the_defaults_validate() {
        let c = TlsConfig::default();
        assert!(!c.enabled());
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(
            (c.amqps_port, c.mqtts_port, c.stomps_port, c.https_port),
            (5671, 8883, 61614, 15671)
        );
    }

    #[test]
    fn settings_that_cannot_work_are_refused_at_start() {
        let with = |f: &dyn Fn(&mut TlsConfig)| {
            let mut c = TlsConfig {
                cert: "s.pem".into(),
                key: "s.key".into(),
                ..TlsConfig::default()
            };
            f(&mut c);
            c.validate()
        };
        assert_eq!(with(&|_| {}), Ok(()));
        assert!(
            with(&|c| c.key = PathBuf::new())
                .unwrap_err()
                .contains("key")
        );
        assert!(
            with(&|c| c.verify = Verify::Required)
                .unwrap_err()
                .contains("ca")
        );
        assert!(
            with(&|c| c.min_version = "1.1".into())
                .unwrap_err()
                .contains("min_version")
        );
        assert!(with(&|c| c.handshake_timeout_secs = 0).is_err());
        assert_eq!("optional".parse::<Verify>(), Ok(Verify::Optional));
        assert!("sometimes".parse::<Verify>().is_err());
    }

    #[test]
    fn unreadable_files_say_which_and_why() {
        let c = TlsConfig {
            cert: "/nonexistent/server.pem".into(),
            key: "/nonexistent/server.key".into(),
            ..TlsConfig::default()
        };
        let err = Tls::load(&c).err().expect("no such file");
        assert!(
            err.starts_with("[tls] cert /nonexistent/server.pem: "),
            "{err}"
        );
    }
}
