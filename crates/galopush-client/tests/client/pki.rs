//! Certificates made at test time with rcgen: a CA, and a leaf signed by it for the names a
//! test asks for (an IP address or a DNS name), with what the fakes and the terminals need of
//! them.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use galopush_client::{Tls, Trust};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tempfile::NamedTempFile;
use tokio_rustls::TlsAcceptor;

/// CAs made so far: each gets its own name, so that one is never taken for another.
static CAS: AtomicUsize = AtomicUsize::new(0);

/// A CA and a leaf it signed.
pub struct Pki {
    ca: CertificateDer<'static>,
    ca_pem: String,
    leaf: CertificateDer<'static>,
    leaf_key: Vec<u8>,
}

impl Pki {
    /// A fresh CA and a leaf for 127.0.0.1.
    pub fn localhost() -> Pki {
        Pki::for_names(&["127.0.0.1"])
    }

    /// A fresh CA and a leaf for `names`.
    pub fn for_names(names: &[&str]) -> Pki {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let n = CAS.fetch_add(1, Ordering::Relaxed);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("galopush test CA {n}"));
        let ca_key = KeyPair::generate().expect("CA key");
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA certificate");

        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut leaf_params = CertificateParams::new(names.clone()).expect("leaf parameters");
        leaf_params
            .distinguished_name
            .push(DnType::CommonName, names.join(" "));
        leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        leaf_params.use_authority_key_identifier_extension = true;
        let leaf_key = KeyPair::generate().expect("leaf key");
        let leaf = leaf_params
            .signed_by(&leaf_key, &ca)
            .expect("leaf certificate");
        Pki {
            ca: ca.der().clone(),
            ca_pem: ca.pem(),
            leaf: leaf.der().clone(),
            leaf_key: leaf_key.serialize_der(),
        }
    }

    /// A TLS acceptor presenting the leaf (and the CA after it).
    pub fn acceptor(&self) -> TlsAcceptor {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.leaf_key.clone()));
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(vec![self.leaf.clone(), self.ca.clone()], key)
            .expect("server certificate");
        TlsAcceptor::from(Arc::new(config))
    }

    /// Trust in this CA only.
    pub fn trust(&self) -> Trust {
        Trust::ca_certs([self.ca.clone()]).expect("a CA certificate")
    }

    /// TLS for a terminal trusting this CA only.
    pub fn tls(&self) -> Tls {
        Tls::new(&self.trust()).expect("TLS configuration")
    }

    /// The CA certificate as a PEM file.
    pub fn ca_file(&self) -> NamedTempFile {
        let mut file = NamedTempFile::new().expect("temporary file");
        file.write_all(self.ca_pem.as_bytes())
            .expect("write the CA");
        file
    }
}
