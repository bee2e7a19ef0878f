//! TLS for terminals and the router's HTTP side: which certificates to trust ([`Trust`]: the
//! system's roots or given CA certificates) and how a terminal reaches a comet's TLS or WSS
//! listener ([`Tls`]). The crypto provider is aws-lc-rs, rustls's default.

use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::client::Resumption;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use rustls_platform_verifier::BuilderVerifierExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::error::{CaError, ClientError, Result};

/// The certificates a client trusts: the system's roots (the default) or only given CA
/// certificates. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    roots: Roots,
}

/// The roots a [`Trust`] stands for.
#[derive(Debug, Clone, Default)]
enum Roots {
    /// The platform's root store.
    #[default]
    System,
    /// These CA certificates only, also parsed into a store (which checks them).
    Ca {
        certs: Arc<[CertificateDer<'static>]>,
        store: Arc<RootCertStore>,
    },
}

impl Trust {
    /// Trusts the system's root certificates.
    pub fn system() -> Trust {
        Trust::default()
    }

    /// Trusts only the CA certificates of the PEM file at `path` (one or more `CERTIFICATE`
    /// sections; other sections are skipped).
    ///
    /// Fails with [`ClientError::CaFile`], naming the file, when it cannot be read, is not PEM,
    /// holds no certificate or holds one that cannot be a trust anchor.
    pub fn ca_file(path: impl AsRef<Path>) -> Result<Trust> {
        let path = path.as_ref();
        let bad = |source| ClientError::CaFile {
            path: path.to_owned(),
            source,
        };
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| bad(CaError::Pem(e)))?;
        Trust::from_certs(certs).map_err(bad)
    }

    /// Trusts only the CA certificates `certs` (DER).
    ///
    /// Fails with [`ClientError::Ca`] when there is none or one cannot be a trust anchor.
    pub fn ca_certs(certs: impl IntoIterator<Item = CertificateDer<'static>>) -> Result<Trust> {
        Trust::from_certs(certs.into_iter().collect()).map_err(ClientError::Ca)
    }

    fn from_certs(certs: Vec<CertificateDer<'static>>) -> Result<Trust, CaError> {
        if certs.is_empty() {
            return Err(CaError::NoCertificate);
        }
        let mut store = RootCertStore::empty();
        for (index, cert) in certs.iter().enumerate() {
            store
                .add(cert.clone())
                .map_err(|source| CaError::Certificate { index, source })?;
        }
        Ok(Trust {
            roots: Roots::Ca {
                certs: certs.into(),
                store: Arc::new(store),
            },
        })
    }

    /// A reqwest client builder (with rustls) that trusts these certificates, for `https://`
    /// bases: the system's roots, or only the given CA certificates.
    pub fn http_client_builder(&self) -> Result<reqwest::ClientBuilder> {
        let builder = reqwest::Client::builder();
        Ok(match &self.roots {
            Roots::System => builder,
            Roots::Ca { certs, .. } => builder.tls_certs_only(
                certs
                    .iter()
                    .map(|cert| reqwest::Certificate::from_der(cert))
                    .collect::<reqwest::Result<Vec<_>>>()?,
            ),
        })
    }

    /// A rustls client configuration verifying servers against these certificates.
    fn client_config(&self) -> Result<ClientConfig> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder =
            ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions()?;
        Ok(match &self.roots {
            Roots::System => builder.with_platform_verifier()?.with_no_client_auth(),
            Roots::Ca { store, .. } => builder
                .with_root_certificates(store.clone())
                .with_no_client_auth(),
        })
    }
}

/// How a terminal connects to a comet's TLS listener (binary frames inside TLS) or WSS
/// listener: the rustls configuration, built once and shared by every connection, and the name
/// to verify the comet's certificate against. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Tls {
    config: Arc<ClientConfig>,
    server_name: Option<ServerName<'static>>,
}

impl Tls {
    /// TLS trusting `trust`, verifying the host part of each address connected to (a DNS name
    /// or an IP address).
    pub fn new(trust: &Trust) -> Result<Tls> {
        Ok(Tls {
            config: Arc::new(trust.client_config()?),
            server_name: None,
        })
    }

    /// TLS with a rustls configuration of the caller's (roots, verifier, versions, client
    /// certificate…), verifying the host part of each address connected to.
    pub fn from_config(config: Arc<ClientConfig>) -> Tls {
        Tls {
            config,
            server_name: None,
        }
    }

    /// Verifies the comet's certificate against `name` (a DNS name or an IP address) whatever
    /// the address connected to, e.g. when connecting to an IP address the certificate does
    /// not list.
    pub fn with_server_name(self, name: &str) -> Result<Tls> {
        let server_name = ServerName::try_from(name.to_owned())
            .map_err(|_| ClientError::ServerName(name.to_owned()))?;
        Ok(Tls {
            server_name: Some(server_name),
            ..self
        })
    }

    /// Makes every connection a full handshake: no session is kept for resuming the next one,
    /// as with distinct devices (the bench's terminals).
    pub fn without_resumption(self) -> Tls {
        let mut config = ClientConfig::clone(&self.config);
        config.resumption = Resumption::disabled();
        Tls {
            config: Arc::new(config),
            ..self
        }
    }

    /// The name to verify the certificate of the comet at `addr` (`host:port`) against.
    pub(crate) fn server_name_for(&self, addr: &str) -> Result<ServerName<'static>> {
        if let Some(name) = &self.server_name {
            return Ok(name.clone());
        }
        let host = host_of(addr);
        ServerName::try_from(host.to_owned()).map_err(|_| ClientError::ServerName(host.to_owned()))
    }

    /// Runs the TLS handshake on `stream`, connected to the comet at `addr`, verifying its
    /// certificate against `server_name`.
    pub(crate) async fn handshake(
        &self,
        addr: &str,
        server_name: ServerName<'static>,
        stream: TcpStream,
    ) -> Result<TlsStream<TcpStream>> {
        TlsConnector::from(self.config.clone())
            .connect(server_name, stream)
            .await
            .map_err(|e| handshake_error(addr, e))
    }
}

/// The host part of `host:port` or `[v6]:port`.
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _port)| host);
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// A failed handshake: what TLS refused, else what the network did.
fn handshake_error(addr: &str, e: io::Error) -> ClientError {
    let addr = addr.to_owned();
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(tls) => ClientError::TlsHandshake {
            addr,
            source: tls.clone(),
        },
        None => ClientError::TlsHandshakeIo { addr, source: e },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_of_an_address() {
        assert_eq!(host_of("127.0.0.1:5163"), "127.0.0.1");
        assert_eq!(host_of("comet.example:443"), "comet.example");
        assert_eq!(host_of("[::1]:5163"), "::1");
        assert_eq!(host_of("comet.example"), "comet.example");
    }

    #[test]
    fn server_names_default_to_the_host_and_can_be_set() {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("the default versions")
            .with_root_certificates(RootCertStore::empty())
            .with_no_client_auth();
        let tls = Tls::from_config(Arc::new(config));
        assert_eq!(
            tls.server_name_for("127.0.0.1:1").ok(),
            Some(ServerName::try_from("127.0.0.1").expect("an IP"))
        );
        assert!(matches!(
            tls.server_name_for("bad name:1"),
            Err(ClientError::ServerName(name)) if name == "bad name"
        ));
        let named = tls.with_server_name("comet.test").expect("a DNS name");
        assert_eq!(
            named.server_name_for("127.0.0.1:1").ok(),
            Some(ServerName::try_from("comet.test").expect("a DNS name"))
        );
    }
}
