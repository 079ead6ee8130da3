//! client: one HTTP/1.1 connection to a target, over tokio-rustls.
//!
//! Each egress lane owns one connection and reuses it for every batch (keep-alive)
//! until the target or an error closes it; the next batch then opens a new one.
//! The TLS configuration is built once per target: its CA file (or the system
//! roots), an optional client certificate, and ALPN `http/1.1`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tracing::debug;

use crate::config::TargetConfig;

/// A request sender bound to one open connection.
pub type Conn = SendRequest<Full<Bytes>>;

/// A target's TLS settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("target {target}: cannot read {path}: {source}")]
    Read {
        target: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("target {target}: {path} holds no {what}")]
    Empty {
        target: String,
        path: String,
        what: &'static str,
    },
    #[error("target {target}: {reason}")]
    Tls { target: String, reason: String },
}

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    #[error("tcp connect: {0}")]
    Tcp(std::io::Error),
    #[error("tls handshake: {}", super::pin::describe(.0))]
    Tls(std::io::Error),
    #[error("http handshake: {0}")]
    Http(hyper::Error),
}

/// Opens connections to one target.
pub struct Connector {
    host: String,
    port: u16,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    connect_timeout: Duration,
}

fn read_file(target: &str, path: &Path) -> Result<Vec<u8>, TlsSetupError> {
    std::fs::read(path).map_err(|source| TlsSetupError::Read {
        target: target.to_string(),
        path: path.display().to_string(),
        source,
    })
}

/// The PEM items of `pem` that `parse` finds; an error naming `origin` when there
/// are none or they do not parse.
fn parse_pem<T>(
    target: &str,
    origin: &str,
    pem: &[u8],
    what: &'static str,
    parse: impl FnOnce(&mut &[u8]) -> std::io::Result<Vec<T>>,
) -> Result<Vec<T>, TlsSetupError> {
    let mut reader = pem;
    let items = parse(&mut reader).map_err(|source| TlsSetupError::Read {
        target: target.to_string(),
        path: origin.to_string(),
        source,
    })?;
    if items.is_empty() {
        return Err(TlsSetupError::Empty {
            target: target.to_string(),
            path: origin.to_string(),
            what,
        });
    }
    Ok(items)
}

/// Certificates in PEM text.
pub fn pem_certs(
    target: &str,
    origin: &str,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    parse_pem(target, origin, pem, "PEM certificate", |r| {
        rustls_pemfile::certs(r).collect()
    })
}

/// The first private key in PEM text.
pub fn pem_key(
    target: &str,
    origin: &str,
    pem: &[u8],
) -> Result<PrivateKeyDer<'static>, TlsSetupError> {
    Ok(parse_pem(target, origin, pem, "private key", |r| {
        Ok(rustls_pemfile::private_key(r)?.into_iter().collect())
    })?
    .remove(0))
}

/// A target's TLS material as PEM text: CA certificates to trust (none: the
/// system roots) and a client certificate chain with its key.
#[derive(Default, Clone, Copy)]
pub struct TlsMaterial<'a> {
    pub ca_pem: Option<&'a [u8]>,
    pub client: Option<(&'a [u8], &'a [u8])>,
}

/// The TLS client configuration of a configured target (its files).
pub fn tls_config(cfg: &TargetConfig) -> Result<ClientConfig, TlsSetupError> {
    let ca = cfg
        .ca_file
        .as_deref()
        .map(|p| Ok::<_, TlsSetupError>((read_file(&cfg.name, p)?, p.display().to_string())))
        .transpose()?;
    let client = cfg
        .client_auth
        .as_ref()
        .map(|(c, k)| Ok::<_, TlsSetupError>((read_file(&cfg.name, c)?, read_file(&cfg.name, k)?)))
        .transpose()?;
    let origins = (
        ca.as_ref().map_or(String::new(), |(_, o)| o.clone()),
        cfg.client_auth
            .as_ref()
            .map_or((String::new(), String::new()), |(c, k)| {
                (c.display().to_string(), k.display().to_string())
            }),
    );
    build_tls_config(
        &cfg.name,
        ca.as_ref()
            .map(|(pem, _)| (pem.as_slice(), origins.0.as_str())),
        client.as_ref().map(|(c, k)| {
            (
                (c.as_slice(), origins.1 .0.as_str()),
                (k.as_slice(), origins.1 .1.as_str()),
            )
        }),
    )
}

/// The TLS client configuration of a target given as PEM text.
pub fn tls_config_from_pem(
    target: &str,
    tls: &TlsMaterial<'_>,
) -> Result<ClientConfig, TlsSetupError> {
    build_tls_config(
        target,
        tls.ca_pem.map(|pem| (pem, "ca_certificate")),
        tls.client
            .map(|(c, k)| ((c, "client_certificate"), (k, "client_key"))),
    )
}

type PemFrom<'a> = (&'a [u8], &'a str);

fn build_tls_config(
    target: &str,
    ca: Option<PemFrom<'_>>,
    client: Option<(PemFrom<'_>, PemFrom<'_>)>,
) -> Result<ClientConfig, TlsSetupError> {
    let tls_err = |reason: String| TlsSetupError::Tls {
        target: target.to_string(),
        reason,
    };
    let mut roots = RootCertStore::empty();
    // The configured certificates, also accepted as exact pins (see `pin`).
    let mut pins = Vec::new();
    match ca {
        Some((pem, origin)) => {
            for cert in pem_certs(target, origin, pem)? {
                pins.push(cert.clone());
                roots
                    .add(cert)
                    .map_err(|e| tls_err(format!("bad CA certificate in {origin}: {e}")))?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for cert in native.certs {
                // Some system stores hold certificates rustls rejects; skip those.
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(tls_err(
                    "no ca_file given and no system root certificates found".to_string(),
                ));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(e.to_string()))?;
    let builder = if pins.is_empty() {
        builder.with_root_certificates(roots)
    } else {
        let verifier = super::pin::PinningVerifier::new(pins, roots, provider).map_err(tls_err)?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
    };
    let mut config = match client {
        Some(((cert, cert_origin), (key, key_origin))) => {
            let chain = pem_certs(target, cert_origin, cert)?;
            let key = pem_key(target, key_origin, key)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| tls_err(format!("client certificate: {e}")))?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

impl Connector {
    pub fn new(cfg: &TargetConfig) -> Result<Connector, TlsSetupError> {
        let config = if cfg.tls {
            Some(tls_config(cfg)?)
        } else {
            None
        };
        Connector::with_config(cfg, config)
    }

    /// A connector whose TLS material is PEM text rather than files.
    pub fn with_material(
        cfg: &TargetConfig,
        tls: &TlsMaterial<'_>,
    ) -> Result<Connector, TlsSetupError> {
        let config = if cfg.tls {
            Some(tls_config_from_pem(&cfg.name, tls)?)
        } else {
            None
        };
        Connector::with_config(cfg, config)
    }

    fn with_config(
        cfg: &TargetConfig,
        config: Option<ClientConfig>,
    ) -> Result<Connector, TlsSetupError> {
        let tls = if let Some(config) = config {
            let name = ServerName::try_from(cfg.host.clone()).map_err(|e| TlsSetupError::Tls {
                target: cfg.name.clone(),
                reason: format!("{:?} is not a valid server name: {e}", cfg.host),
            })?;
            Some((TlsConnector::from(Arc::new(config)), name))
        } else {
            None
        };
        Ok(Connector {
            host: cfg.host.clone(),
            port: cfg.port,
            tls,
            connect_timeout: cfg.connect_timeout,
        })
    }

    /// Open a connection: TCP, TLS and the HTTP/1.1 handshake, within the connect
    /// timeout. The connection's driver runs as its own task.
    pub async fn connect(&self) -> Result<Conn, ConnectError> {
        tokio::time::timeout(self.connect_timeout, self.open())
            .await
            .map_err(|_| ConnectError::Timeout(self.connect_timeout))?
    }

    async fn open(&self) -> Result<Conn, ConnectError> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(ConnectError::Tcp)?;
        tcp.set_nodelay(true).map_err(ConnectError::Tcp)?;
        match &self.tls {
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(ConnectError::Tls)?;
                handshake(TokioIo::new(tls)).await
            }
            None => handshake(TokioIo::new(tcp)).await,
        }
    }
}

async fn handshake<T>(io: T) -> Result<Conn, ConnectError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = http1::handshake(io).await.map_err(ConnectError::Http)?;
    tokio::spawn(async move {
        if let Err(err) = conn.await {
            debug!(error = %err, "target connection closed");
        }
    });
    Ok(sender)
}
