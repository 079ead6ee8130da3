//! pki: a certificate authority made for one test or one benchmark run, a
//! server certificate for loopback signed by it, and a client certificate of
//! the same authority for mutual TLS. Everything is generated in memory; the
//! caller writes the PEM files it needs.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsAcceptor;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("building a TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("building a client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// Whether a server asks its clients for a certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clients {
    /// No client certificate asked for.
    Anonymous,
    /// Only clients with a certificate of this authority get in.
    Certified,
}

/// A CA (`<name> CA`), a server certificate for 127.0.0.1, ::1 and localhost
/// (`<name>`), and a client certificate (`<name> client`), all signed by it.
pub struct Pki {
    pub ca_pem: String,
    pub ca_der: CertificateDer<'static>,
    /// The server certificate alone (without the CA).
    pub cert_pem: String,
    pub cert_der: CertificateDer<'static>,
    /// The server certificate's private key (PKCS#8).
    pub key_pem: String,
    key_der: Vec<u8>,
    pub client_cert_pem: String,
    pub client_cert_der: CertificateDer<'static>,
    pub client_key_pem: String,
    client_key_der: Vec<u8>,
}

impl Pki {
    pub fn new(name: &str) -> Result<Pki, Error> {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
            KeyUsagePurpose,
        };
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, format!("{name} CA"));
        // As a real CA marks itself: verifiers stricter than webpki (OpenSSL
        // with X509_STRICT, Erlang's ssl) want keyCertSign stated.
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;
        let key = KeyPair::generate()?;
        let mut leaf = CertificateParams::new(vec![
            "127.0.0.1".to_string(),
            "::1".to_string(),
            "localhost".to_string(),
        ])?;
        leaf.distinguished_name.push(DnType::CommonName, name);
        let leaf = leaf.signed_by(&key, &ca)?;
        let client_key = KeyPair::generate()?;
        let mut client = CertificateParams::new(Vec::<String>::new())?;
        client
            .distinguished_name
            .push(DnType::CommonName, format!("{name} client"));
        let client = client.signed_by(&client_key, &ca)?;
        Ok(Pki {
            ca_pem: ca.pem(),
            ca_der: ca.der().clone(),
            cert_pem: leaf.pem(),
            cert_der: leaf.der().clone(),
            key_pem: key.serialize_pem(),
            key_der: key.serialize_der(),
            client_cert_pem: client.pem(),
            client_cert_der: client.der().clone(),
            client_key_pem: client_key.serialize_pem(),
            client_key_der: client_key.serialize_der(),
        })
    }

    /// The server certificate's private key.
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }

    /// The client certificate's private key.
    pub fn client_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.client_key_der.clone()))
    }

    /// What a server presents: its certificate, then the CA. A client that
    /// trusts the CA needs nothing more; sending the CA too lets a client that
    /// was given only the chain build the path.
    pub fn server_chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.cert_der.clone(), self.ca_der.clone()]
    }

    /// A rustls server configuration (ring) serving [`server_chain`](Self::server_chain),
    /// offering HTTP/1.1 by ALPN.
    pub fn server_config(&self, clients: Clients) -> Result<rustls::ServerConfig, Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let builder = match clients {
            Clients::Anonymous => builder.with_no_client_auth(),
            Clients::Certified => {
                let mut roots = rustls::RootCertStore::empty();
                roots.add(self.ca_der.clone())?;
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_single_cert(self.server_chain(), self.key())?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }

    /// [`server_config`](Self::server_config) as a tokio acceptor.
    pub fn acceptor(&self, clients: Clients) -> Result<TlsAcceptor, Error> {
        Ok(TlsAcceptor::from(Arc::new(self.server_config(clients)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;

    #[test]
    fn a_client_that_trusts_the_ca_accepts_the_server() {
        let pki = Pki::new("unit").unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki.ca_der.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
        let chain = pki.server_chain();
        for name in ["127.0.0.1", "::1", "localhost"] {
            verifier
                .verify_server_cert(
                    &chain[0],
                    &chain[1..],
                    &rustls::pki_types::ServerName::try_from(name).unwrap(),
                    &[],
                    rustls::pki_types::UnixTime::now(),
                )
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        assert!(pki.server_config(Clients::Certified).is_ok());
    }
}
