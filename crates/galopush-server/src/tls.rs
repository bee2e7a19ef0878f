//! TLS for the listeners (SPEC §11): the certificate of `[tls]`, read from PEM files, served
//! by rustls (TLS 1.2 and 1.3 only) and read again on SIGHUP and when the files change. A new
//! pair is served to the next connection; live connections keep theirs. A pair that cannot be
//! used stops the start, and on a reload is logged while the old pair stays in service.
//!
//! The crypto provider is aws-lc-rs, rustls's default: it builds here with the C compiler
//! alone, and reqwest, tonic and jsonwebtoken use it too, so the process carries one crypto
//! library.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::{Mutex, RwLock};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig, version};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use rustls_platform_verifier::ConfigVerifierExt;
use tokio_rustls::TlsAcceptor;

/// How often the certificate files are checked for a change.
const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// Why a certificate and key cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("{path} holds no certificate")]
    NoCertificate { path: PathBuf },
    #[error("{cert} and {key} do not make a usable pair: {source}")]
    Pair {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
    #[error("cannot set up the certificates to trust: {0}")]
    Roots(rustls::Error),
}

/// The crypto provider of every TLS endpoint of the process.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Reads a PEM certificate chain (leaf first) and its private key, and checks that they match.
pub fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain = load_certificates(cert)?;
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Read {
        path: key.to_owned(),
        message: e.to_string(),
    })?;
    CertifiedKey::from_der(chain, private, &provider()).map_err(|source| TlsError::Pair {
        cert: cert.to_owned(),
        key: key.to_owned(),
        source,
    })
}

/// Reads every certificate of a PEM file; at least one.
pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read_error = |e: rustls_pki_types::pem::Error| TlsError::Read {
        path: path.to_owned(),
        message: e.to_string(),
    };
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(read_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_error)?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(chain)
}

/// A client configuration that trusts the CAs of the PEM file `ca`, or the system's roots
/// without one (SPEC §11: nsqd over TLS, `bus.nsq_ca`).
pub fn client_config(ca: Option<&Path>) -> Result<Arc<ClientConfig>, TlsError> {
    let config = match ca {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in load_certificates(path)? {
                roots.add(cert).map_err(|e| TlsError::Read {
                    path: path.to_owned(),
                    message: format!("not a usable CA certificate: {e}"),
                })?;
            }
            ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(TlsError::Roots)?
                .with_root_certificates(roots)
                .with_no_client_auth()
        }
        None => ClientConfig::with_platform_verifier().map_err(TlsError::Roots)?,
    };
    Ok(Arc::new(config))
}

/// The modification times of a pair's files, to notice a change.
type Stamps = (Option<SystemTime>, Option<SystemTime>);

fn stamps(cert: &Path, key: &Path) -> Stamps {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    (modified(cert), modified(key))
}

/// The certificate in service, swapped whole on a reload.
#[derive(Debug)]
pub struct ReloadingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    seen: Mutex<Stamps>,
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().clone())
    }
}

impl ReloadingCert {
    /// Reads the pair now; an error stops the start.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<ReloadingCert>, TlsError> {
        let seen = stamps(cert, key);
        let pair = load_pair(cert, key)?;
        Ok(Arc::new(ReloadingCert {
            cert_path: cert.to_owned(),
            key_path: key.to_owned(),
            current: RwLock::new(Arc::new(pair)),
            seen: Mutex::new(seen),
        }))
    }

    /// Reads the files again; a pair that cannot be used is logged and the old one kept.
    /// Returns whether a new pair is in service.
    pub fn reload(&self) -> bool {
        *self.seen.lock() = stamps(&self.cert_path, &self.key_path);
        match load_pair(&self.cert_path, &self.key_path) {
            Ok(pair) => {
                *self.current.write() = Arc::new(pair);
                tracing::info!(cert = %self.cert_path.display(), "TLS certificate reloaded");
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "TLS certificate not reloaded; the previous one stays in service");
                false
            }
        }
    }

    /// Reloads if either file changed since the last look.
    fn reload_if_changed(&self) {
        let now = stamps(&self.cert_path, &self.key_path);
        if now != *self.seen.lock() {
            self.reload();
        }
    }

    /// Reloads on SIGHUP and when the files change, for as long as the process runs.
    pub fn watch(self: &Arc<Self>) {
        let cert = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(WATCH_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            #[cfg(unix)]
            let mut hangup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            loop {
                #[cfg(unix)]
                {
                    let sighup = async {
                        match hangup.as_mut() {
                            Some(signal) => signal.recv().await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        _ = tick.tick() => cert.reload_if_changed(),
                        _ = sighup => {
                            tracing::info!("SIGHUP: reading the TLS certificate again");
                            cert.reload();
                        }
                    }
                }
                #[cfg(not(unix))]
                {
                    tick.tick().await;
                    cert.reload_if_changed();
                }
            }
        });
    }

    /// An acceptor serving this certificate, announcing `alpn` (e.g. `http/1.1`).
    pub fn acceptor(self: &Arc<Self>, alpn: &[&[u8]]) -> TlsAcceptor {
        TlsAcceptor::from(self.server_config(alpn))
    }

    /// The server configuration serving this certificate, announcing `alpn` (empty for the
    /// terminals' protocols).
    pub fn server_config(self: &Arc<Self>, alpn: &[&[u8]]) -> Arc<ServerConfig> {
        let versions = [&version::TLS13, &version::TLS12];
        // The provider's defaults and these versions always go together.
        let builder = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&versions)
            .unwrap_or_else(|_| ServerConfig::builder_with_protocol_versions(&versions));
        let mut config = builder
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        // Resumption by tickets only (the session state travels in the ticket, encrypted):
        // a terminal that reconnects skips the full handshake, and the server keeps nothing
        // per session for it.
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        match rustls::crypto::aws_lc_rs::Ticketer::new() {
            Ok(ticketer) => config.ticketer = ticketer,
            Err(e) => {
                tracing::warn!(error = %e, "no TLS session tickets: every handshake is a full one")
            }
        }
        Arc::new(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().expect("key");
        let params =
            rcgen::CertificateParams::new(vec![name.to_owned()]).expect("certificate params");
        let cert = params.self_signed(&key).expect("self-signed");
        let (cert_path, key_path) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert_path, cert.pem()).expect("write cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        (cert_path, key_path)
    }

    fn served_name(cert: &ReloadingCert) -> Vec<u8> {
        cert.current
            .read()
            .end_entity_cert()
            .expect("leaf")
            .to_vec()
    }

    #[test]
    fn a_bad_pair_stops_the_start_and_a_reload_keeps_the_old_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = write_pair(dir.path(), "one.example");
        let (other_cert, other_key) = write_pair(dir.path(), "two.example");
        assert!(matches!(
            load_pair(&cert, &other_key),
            Err(TlsError::Pair { .. })
        ));
        assert!(matches!(
            load_pair(&dir.path().join("missing.pem"), &key),
            Err(TlsError::Read { .. })
        ));
        std::fs::write(dir.path().join("empty.pem"), "").expect("write");
        assert!(matches!(
            load_pair(&dir.path().join("empty.pem"), &key),
            Err(TlsError::NoCertificate { .. })
        ));

        let served = ReloadingCert::load(&cert, &key).expect("a good pair");
        let first = served_name(&served);
        // A half-written replacement (new certificate, old key): refused, the old pair stays.
        std::fs::copy(&other_cert, &cert).expect("copy");
        assert!(!served.reload());
        assert_eq!(served_name(&served), first);
        // The whole new pair: served from now on.
        std::fs::copy(&other_key, &key).expect("copy");
        assert!(served.reload());
        assert_ne!(served_name(&served), first);
    }
}
