//! client: one HTTP/1.1 connection to a target, over tokio-rustls.
//!
//! Each egress lane owns one connection and reuses it for every batch (keep-alive)
//! until the target or an error closes it; the next batch then opens a new one.
//! The TLS configuration is built once per target: its CA file (or the system
//! roots), an optional client certificate, and ALPN `http/1.1`.

use std::fs::File;
use std::io::BufReader;
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
    #[error("tls handshake: {0}")]
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

fn read_pem<T>(
    target: &str,
    path: &Path,
    what: &'static str,
    parse: impl FnOnce(&mut BufReader<File>) -> std::io::Result<Vec<T>>,
) -> Result<Vec<T>, TlsSetupError> {
    let read_err = |source| TlsSetupError::Read {
        target: target.to_string(),
        path: path.display().to_string(),
        source,
    };
    let mut reader = BufReader::new(File::open(path).map_err(read_err)?);
    let items = parse(&mut reader).map_err(read_err)?;
    if items.is_empty() {
        return Err(TlsSetupError::Empty {
            target: target.to_string(),
            path: path.display().to_string(),
            what,
        });
    }
    Ok(items)
}

fn certs(target: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    read_pem(target, path, "PEM certificate", |r| {
        rustls_pemfile::certs(r).collect()
    })
}

/// The TLS client configuration of a target.
pub fn tls_config(cfg: &TargetConfig) -> Result<ClientConfig, TlsSetupError> {
    let tls_err = |reason: String| TlsSetupError::Tls {
        target: cfg.name.clone(),
        reason,
    };
    let mut roots = RootCertStore::empty();
    match &cfg.ca_file {
        Some(path) => {
            for cert in certs(&cfg.name, path)? {
                roots.add(cert).map_err(|e| {
                    tls_err(format!("bad CA certificate in {}: {e}", path.display()))
                })?;
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
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(e.to_string()))?
        .with_root_certificates(roots);
    let mut config = match &cfg.client_auth {
        Some((cert_path, key_path)) => {
            let chain = certs(&cfg.name, cert_path)?;
            let key: PrivateKeyDer<'static> = read_pem(&cfg.name, key_path, "private key", |r| {
                Ok(rustls_pemfile::private_key(r)?.into_iter().collect())
            })?
            .remove(0);
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
        let tls = if cfg.tls {
            let config = tls_config(cfg)?;
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
