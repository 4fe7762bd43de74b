//! TLS with rustls: the listeners' certificates, the peer client's identity (mutual TLS between
//! nodes), both read from PEM files and reloaded without a restart ([`watch_files`]: SIGHUP, or
//! a change of the files), and [`ca`], the CA that `cluster up --tls`, `flagstaff tls` and the
//! tests issue certificates with.
//!
//! A reload builds a whole new configuration from the files and swaps it in only if it is
//! complete and consistent (the key matches the certificate): a half-copied file leaves the
//! node serving the certificate it had, and a connection handshakes with either the old or the
//! new one, never a mix.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

/// A certificate chain and its private key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// The peer listener's and peer client's TLS: this node's certificate, used both to serve and
/// to connect, and the cluster CA that every other node's certificate must chain to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerTlsFiles {
    pub identity: TlsFiles,
    /// PEM certificates of the CA (or CAs) of this cluster.
    pub trusted_ca: PathBuf,
}

impl PeerTlsFiles {
    /// Every file a reload reads.
    pub fn paths(&self) -> [&Path; 3] {
        [&self.identity.cert, &self.identity.key, &self.trusted_ca]
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("{0}")]
    Config(String),
}

fn file_error(path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// Largest PEM file read: a chain of a few certificates is a few KiB.
const MAX_PEM_BYTES: u64 = 1 << 20;

fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    let len = std::fs::metadata(path)
        .map_err(|e| file_error(path, e))?
        .len();
    if len > MAX_PEM_BYTES {
        return Err(file_error(
            path,
            format!("larger than {MAX_PEM_BYTES} bytes"),
        ));
    }
    std::fs::read(path).map_err(|e| file_error(path, e))
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_pem(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_pem(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| file_error(path, e))
}

fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(path)? {
        roots.add(cert).map_err(|e| file_error(path, e))?;
    }
    Ok(roots)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// ALPN's name for HTTP/1.1, which the client, metrics and peer listeners speak.
pub const HTTP1: &[u8] = b"http/1.1";
/// ALPN's name for HTTP/2, which gRPC (the sync listener) needs.
pub const H2: &[u8] = b"h2";

/// One listener's TLS: the configuration in use, replaced whole by [`ServerTls::reload`].
pub struct ServerTls {
    files: TlsFiles,
    /// The application protocol the listener speaks, as ALPN names it.
    protocol: &'static [u8],
    /// When set, a client must present a certificate chaining to these CAs (mutual TLS).
    client_ca: Option<PathBuf>,
    current: RwLock<Arc<ServerConfig>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.files)
            .field("client_ca", &self.client_ca)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Reads the files; fails with the file and the reason if any is missing, unreadable,
    /// malformed or inconsistent.
    pub fn load(files: TlsFiles, client_ca: Option<PathBuf>) -> Result<Self, TlsError> {
        Self::load_for(files, client_ca, HTTP1)
    }

    /// As [`ServerTls::load`], for a listener speaking `protocol` (an ALPN name: [`HTTP1`] or
    /// [`H2`]).
    pub fn load_for(
        files: TlsFiles,
        client_ca: Option<PathBuf>,
        protocol: &'static [u8],
    ) -> Result<Self, TlsError> {
        let config = Self::build(&files, client_ca.as_deref(), protocol)?;
        Ok(Self {
            files,
            protocol,
            client_ca,
            current: RwLock::new(Arc::new(config)),
        })
    }

    fn build(
        files: &TlsFiles,
        client_ca: Option<&Path>,
        protocol: &'static [u8],
    ) -> Result<ServerConfig, TlsError> {
        let certs = certificates(&files.cert)?;
        let key = private_key(&files.key)?;
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match client_ca {
            Some(ca) => {
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider())
                        .build()
                        .map_err(|e| file_error(ca, e))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(certs, key)
            .map_err(|e| file_error(&files.key, format!("does not fit the certificate: {e}")))?;
        config.alpn_protocols = vec![protocol.to_vec()];
        Ok(config)
    }

    /// An acceptor with the configuration in use now.
    pub fn acceptor(&self) -> TlsAcceptor {
        let config = self.current.read().unwrap_or_else(|e| e.into_inner());
        TlsAcceptor::from(config.clone())
    }

    /// Reads the files again; on success new connections use them, on failure nothing changes.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = Self::build(&self.files, self.client_ca.as_deref(), self.protocol)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
        Ok(())
    }

    /// Every file a reload reads.
    pub fn paths(&self) -> Vec<PathBuf> {
        let mut paths = vec![self.files.cert.clone(), self.files.key.clone()];
        paths.extend(self.client_ca.clone());
        paths
    }
}

/// What the peer client presents and trusts, read from the files: the node's identity (its
/// certificate chain and key, as reqwest takes them) and the cluster CA.
pub struct ClientTls {
    pub identity: reqwest::Identity,
    pub trusted_ca: Vec<reqwest::Certificate>,
}

impl ClientTls {
    pub fn load(files: &PeerTlsFiles) -> Result<Self, TlsError> {
        // Parsed here first, so a bad file is reported by name (reqwest's errors are vaguer),
        // and the key is checked against the certificate as the listener checks it.
        ServerTls::build(&files.identity, None, HTTP1)?;
        let mut pem = read_pem(&files.identity.cert)?;
        pem.push(b'\n');
        pem.extend(read_pem(&files.identity.key)?);
        let identity =
            reqwest::Identity::from_pem(&pem).map_err(|e| file_error(&files.identity.key, e))?;
        Ok(Self {
            identity,
            trusted_ca: ca_certificates(&files.trusted_ca)?,
        })
    }
}

/// The certificates of a CA file, as reqwest takes them (the SDK and the CLI use this too).
pub fn ca_certificates(path: &Path) -> Result<Vec<reqwest::Certificate>, TlsError> {
    // Parsed by rustls first, for an error that names what is wrong.
    roots(path)?;
    reqwest::Certificate::from_pem_bundle(&read_pem(path)?).map_err(|e| file_error(path, e))
}

/// How often [`watch_files`] looks at the certificate files.
pub const RELOAD_POLL: Duration = Duration::from_secs(2);

/// What a file looked like when last read: a change of either means it was rewritten.
fn fingerprint(paths: &[PathBuf]) -> Vec<Option<(SystemTime, u64)>> {
    paths
        .iter()
        .map(|p| {
            let m = std::fs::metadata(p).ok()?;
            Some((m.modified().ok()?, m.len()))
        })
        .collect()
}

/// Calls `reload` on SIGHUP and whenever one of `paths` changes (looked at every
/// [`RELOAD_POLL`]), until dropped. `reload` does the reading and reports its own outcome.
pub async fn watch_files(paths: Vec<PathBuf>, reload: impl Fn()) {
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut seen = fingerprint(&paths);
    let mut tick = tokio::time::interval(RELOAD_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let signalled = tokio::select! {
            _ = tick.tick() => false,
            Some(()) = async {
                match hangup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            } => true,
        };
        let now = fingerprint(&paths);
        if signalled || now != seen {
            seen = now;
            reload();
        }
    }
}

/// A certificate authority that issues node certificates: the throwaway one of `flagstaff
/// cluster up --tls` and the tests, and `flagstaff tls ca` / `flagstaff tls cert` for a
/// deployment without a PKI of its own. Keys are ECDSA P-256.
pub mod ca {
    use std::path::Path;
    use std::time::Duration;

    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };

    use super::{file_error, read_pem, ServerTls, TlsError, TlsFiles};

    /// How long a CA certificate is valid.
    pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86_400);
    /// How long a node certificate is valid: renew it (`flagstaff tls cert` again, then a
    /// SIGHUP or nothing at all: the node picks up changed files) before it runs out.
    pub const CERT_VALIDITY: Duration = Duration::from_secs(365 * 86_400);

    /// A CA: its certificate (PEM) and what it signs with.
    pub struct Authority {
        pub cert_pem: String,
        issuer: Issuer<'static, KeyPair>,
    }

    /// A certificate (PEM) and its private key (PEM, PKCS#8).
    pub struct Issued {
        pub cert_pem: String,
        pub key_pem: String,
    }

    /// Valid from an hour ago (clocks differ a little) for `validity`.
    fn validity(params: &mut CertificateParams, validity: Duration) {
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - Duration::from_secs(3600);
        params.not_after = now + validity;
    }

    fn config_error(what: &str, e: rcgen::Error) -> TlsError {
        TlsError::Config(format!("{what}: {e}"))
    }

    impl Authority {
        /// A new CA named `name`.
        pub fn generate(name: &str) -> Result<Self, TlsError> {
            let fault = |e| config_error("making the CA", e);
            let mut params = CertificateParams::new(Vec::<String>::new()).map_err(fault)?;
            params.distinguished_name.push(DnType::CommonName, name);
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            validity(&mut params, CA_VALIDITY);
            let key = KeyPair::generate().map_err(fault)?;
            let cert = params.self_signed(&key).map_err(fault)?;
            Ok(Self {
                cert_pem: cert.pem(),
                issuer: Issuer::new(params, key),
            })
        }

        /// The CA of a certificate file and its key file, refused when the key is not the
        /// certificate's.
        pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
            ServerTls::build(files, None, super::HTTP1)?;
            let text = |path: &Path| {
                String::from_utf8(read_pem(path)?).map_err(|_| file_error(path, "is not PEM text"))
            };
            let cert_pem = text(&files.cert)?;
            let key = KeyPair::from_pem(&text(&files.key)?).map_err(|e| {
                file_error(&files.key, format!("is not a key rcgen can sign with: {e}"))
            })?;
            let issuer =
                Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| file_error(&files.cert, e))?;
            Ok(Self { cert_pem, issuer })
        }

        /// The CA's private key (PEM, PKCS#8).
        pub fn key_pem(&self) -> String {
            self.issuer.key().serialize_pem()
        }

        /// A certificate for `names` (host names or IP addresses), good both for serving and
        /// for connecting as a client (a node is both to its peers), valid for
        /// [`CERT_VALIDITY`].
        pub fn issue(&self, common_name: &str, names: &[String]) -> Result<Issued, TlsError> {
            let fault = |e| config_error("issuing a certificate", e);
            let mut params = CertificateParams::new(names.to_vec()).map_err(fault)?;
            params
                .distinguished_name
                .push(DnType::CommonName, common_name);
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            validity(&mut params, CERT_VALIDITY);
            let key = KeyPair::generate().map_err(fault)?;
            let cert = params.signed_by(&key, &self.issuer).map_err(fault)?;
            Ok(Issued {
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
            })
        }
    }
}
