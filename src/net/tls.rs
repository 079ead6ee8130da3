//! tls: rustls client and server configurations, from PEM text.
//!
//! The text comes from a file ([`PemFile`]) or from a registration's field;
//! either way a [`Pem`] carries where it came from, and every error names
//! that, so that an operator knows which setting to fix.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use super::verify::{AnyCertificate, PinningVerifier};

/// A TLS setting could not be read or used. The caller prefixes whose setting
/// it is.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin} holds no {what}")]
    Empty { origin: String, what: &'static str },
    #[error("bad CA certificate in {origin}: {reason}")]
    BadCa { origin: String, reason: String },
    #[error("cannot use the CA certificates: {0}")]
    Roots(String),
    #[error("no ca_file given and no system root certificates found")]
    NoSystemRoots,
    #[error("client certificate: {0}")]
    ClientCert(String),
    #[error("cannot check client certificates against {origin}: {reason}")]
    ClientCa { origin: String, reason: String },
    #[error("certificate and key do not go together: {0}")]
    CertKey(String),
    #[error("{host:?} is not a valid server name: {reason}")]
    ServerName { host: String, reason: String },
    #[error("{0}")]
    Protocol(String),
}

/// PEM text, and where it came from (a path, or a field's name) for messages.
#[derive(Debug, Clone, Copy)]
pub struct Pem<'a> {
    pub text: &'a [u8],
    pub origin: &'a str,
}

impl<'a> Pem<'a> {
    pub fn new(text: &'a [u8], origin: &'a str) -> Pem<'a> {
        Pem { text, origin }
    }

    /// Every certificate in the text; an error when there is none.
    pub fn certs(&self) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        self.items("PEM certificate", |r| rustls_pemfile::certs(r).collect())
    }

    /// The first private key in the text; an error when there is none.
    pub fn key(&self) -> Result<PrivateKeyDer<'static>, TlsError> {
        Ok(self
            .items("private key", |r| {
                Ok(rustls_pemfile::private_key(r)?.into_iter().collect())
            })?
            .remove(0))
    }

    fn items<T>(
        &self,
        what: &'static str,
        parse: impl FnOnce(&mut &[u8]) -> std::io::Result<Vec<T>>,
    ) -> Result<Vec<T>, TlsError> {
        let mut reader = self.text;
        let items = parse(&mut reader).map_err(|source| TlsError::Read {
            path: self.origin.to_string(),
            source,
        })?;
        if items.is_empty() {
            return Err(TlsError::Empty {
                origin: self.origin.to_string(),
                what,
            });
        }
        Ok(items)
    }
}

/// A PEM file's text, read whole, and its path.
#[derive(Debug, Clone)]
pub struct PemFile {
    text: Vec<u8>,
    origin: String,
}

impl PemFile {
    pub fn read(path: &Path) -> Result<PemFile, TlsError> {
        let origin = path.display().to_string();
        match std::fs::read(path) {
            Ok(text) => Ok(PemFile { text, origin }),
            Err(source) => Err(TlsError::Read {
                path: origin,
                source,
            }),
        }
    }

    pub fn pem(&self) -> Pem<'_> {
        Pem::new(&self.text, &self.origin)
    }
}

/// The ALPN protocol a connection offers or accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// None: protocols without an ALPN name (AMQP, syslog). Offering
    /// `http/1.1` there would be a lie a strict server may refuse.
    None,
    /// `http/1.1`.
    Http1,
}

impl Alpn {
    fn protocols(self) -> Vec<Vec<u8>> {
        match self {
            Alpn::None => Vec::new(),
            Alpn::Http1 => vec![b"http/1.1".to_vec()],
        }
    }
}

/// Which server certificates a client accepts.
#[derive(Debug, Clone, Copy)]
pub enum Trust<'a> {
    /// Those chaining to the system's root certificates.
    System,
    /// Those chaining to these certificates.
    Roots(Pem<'a>),
    /// Those chaining to these certificates, and each of them as it is (a pin:
    /// a server's own self-signed certificate, see [`super::verify`]).
    RootsOrPinned(Pem<'a>),
    /// Any (`insecure_skip_verify`; the handshake is still signed by the key of
    /// the certificate presented).
    Any,
}

/// A client certificate chain and its key.
#[derive(Debug, Clone, Copy)]
pub struct Identity<'a> {
    pub chain: Pem<'a>,
    pub key: Pem<'a>,
}

/// The settings of a TLS client.
#[derive(Debug, Clone, Copy)]
pub struct ClientTls<'a> {
    pub trust: Trust<'a>,
    pub identity: Option<Identity<'a>>,
    pub alpn: Alpn,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Certificates as roots, each refused one named.
fn roots_of(origin: &str, certs: Vec<CertificateDer<'static>>) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| TlsError::BadCa {
            origin: origin.to_string(),
            reason: e.to_string(),
        })?;
    }
    Ok(roots)
}

impl ClientTls<'_> {
    /// The rustls configuration.
    pub fn config(&self) -> Result<ClientConfig, TlsError> {
        let provider = provider();
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Protocol(e.to_string()))?;
        let builder = match self.trust {
            Trust::System => {
                let mut roots = RootCertStore::empty();
                for cert in rustls_native_certs::load_native_certs().certs {
                    // Some system stores hold certificates rustls rejects; skip those.
                    let _ = roots.add(cert);
                }
                if roots.is_empty() {
                    return Err(TlsError::NoSystemRoots);
                }
                builder.with_root_certificates(roots)
            }
            Trust::Roots(pem) => {
                builder.with_root_certificates(roots_of(pem.origin, pem.certs()?)?)
            }
            Trust::RootsOrPinned(pem) => {
                let certs = pem.certs()?;
                let roots = roots_of(pem.origin, certs.clone())?;
                let verifier = PinningVerifier::new(certs, roots, provider)?;
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(verifier))
            }
            Trust::Any => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate::new(provider))),
        };
        let mut config = match &self.identity {
            Some(id) => {
                let chain = id.chain.certs()?;
                let key = id.key.key()?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| TlsError::ClientCert(e.to_string()))?
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = self.alpn.protocols();
        Ok(config)
    }
}

/// The CA certificates a server checks client certificates against.
#[derive(Debug, Clone)]
pub struct ClientCa<'a> {
    pub certs: Vec<CertificateDer<'static>>,
    /// Where they came from, for messages.
    pub origin: &'a str,
    /// Whether a client without a certificate is refused.
    pub required: bool,
}

/// The settings of a TLS server.
#[derive(Debug)]
pub struct ServerTls<'a> {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// None: no client certificate is asked for.
    pub client_ca: Option<ClientCa<'a>>,
    pub alpn: Alpn,
}

impl ServerTls<'_> {
    /// The rustls configuration.
    pub fn config(self) -> Result<ServerConfig, TlsError> {
        let provider = provider();
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Protocol(e.to_string()))?;
        let builder = match self.client_ca {
            Some(ca) => {
                let roots = roots_of(ca.origin, ca.certs)?;
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                let verifier = if ca.required {
                    verifier
                } else {
                    verifier.allow_unauthenticated()
                };
                let verifier = verifier.build().map_err(|e| TlsError::ClientCa {
                    origin: ca.origin.to_string(),
                    reason: e.to_string(),
                })?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(self.chain, self.key)
            .map_err(|e| TlsError::CertKey(e.to_string()))?;
        config.alpn_protocols = self.alpn.protocols();
        Ok(config)
    }
}

/// The name a client checks the server's certificate for: a DNS name or an
/// IP address.
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(host.to_string()).map_err(|e| TlsError::ServerName {
        host: host.to_string(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(name: &str) -> (String, String) {
        let pair = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .self_signed(&pair)
            .unwrap();
        (cert.pem(), pair.serialize_pem())
    }

    #[test]
    fn errors_name_where_the_text_came_from() {
        let empty = Pem::new(b"no pem here", "/etc/ca.pem");
        let err = empty.certs().unwrap_err().to_string();
        assert_eq!(err, "/etc/ca.pem holds no PEM certificate");
        let err = Pem::new(b"", "client_key").key().unwrap_err().to_string();
        assert_eq!(err, "client_key holds no private key");
        let err = PemFile::read(Path::new("/nonexistent/qbroker/ca.pem"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("cannot read /nonexistent/qbroker/ca.pem: "),
            "{err}"
        );
        let err = server_name("not a name").unwrap_err().to_string();
        assert!(
            err.starts_with("\"not a name\" is not a valid server name"),
            "{err}"
        );
    }

    #[test]
    fn client_configs_offer_the_alpn_asked_for() {
        let (cert, key) = self_signed("localhost");
        let ca = Pem::new(cert.as_bytes(), "ca_certificate");
        for (trust, alpn) in [
            (Trust::Roots(ca), Alpn::Http1),
            (Trust::RootsOrPinned(ca), Alpn::None),
            (Trust::Any, Alpn::Http1),
        ] {
            let config = ClientTls {
                trust,
                identity: Some(Identity {
                    chain: Pem::new(cert.as_bytes(), "client_certificate"),
                    key: Pem::new(key.as_bytes(), "client_key"),
                }),
                alpn,
            }
            .config()
            .unwrap();
            assert_eq!(config.alpn_protocols, alpn.protocols());
            assert!(config.client_auth_cert_resolver.has_certs());
        }
    }

    #[test]
    fn a_key_that_is_not_the_certificates_is_refused() {
        let (cert, _) = self_signed("localhost");
        let (_, other_key) = self_signed("localhost");
        let err = ServerTls {
            chain: Pem::new(cert.as_bytes(), "cert").certs().unwrap(),
            key: Pem::new(other_key.as_bytes(), "key").key().unwrap(),
            client_ca: None,
            alpn: Alpn::None,
        }
        .config()
        .unwrap_err();
        assert!(matches!(err, TlsError::CertKey(_)), "{err}");
    }
}
