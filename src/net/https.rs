//! https: HTTP/1.1 client connections over TCP, in TLS unless the URL said
//! `http://`.
//!
//! One [`HttpsConnector`] per peer (a target, a cluster's REST API), holding
//! its TLS configuration, built once. A connection is a hyper request sender;
//! its driver runs as its own tokio task until the peer or an error closes it.
//! The owner keeps the sender for reuse (keep-alive) as long as it is open.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tracing::debug;

use super::{describe, server_name, TlsError};

/// A request sender bound to one open connection.
pub type Conn = SendRequest<Full<Bytes>>;

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    #[error("tcp connect: {0}")]
    Tcp(std::io::Error),
    #[error("tls handshake: {}", describe(.0))]
    Tls(std::io::Error),
    #[error("http handshake: {0}")]
    Http(hyper::Error),
}

/// Opens HTTP/1.1 connections to one peer.
pub struct HttpsConnector {
    /// Whom the connections go to, for the log.
    peer: Arc<str>,
    host: String,
    port: u16,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    connect_timeout: Duration,
}

impl HttpsConnector {
    /// Connections to `host`:`port` (`peer` names it in the log), in TLS with
    /// `tls` (None: in clear), each opened within `connect_timeout`. The TLS
    /// server name is `host`.
    pub fn new(
        peer: &str,
        host: &str,
        port: u16,
        tls: Option<ClientConfig>,
        connect_timeout: Duration,
    ) -> Result<HttpsConnector, TlsError> {
        let tls = match tls {
            Some(config) => Some((TlsConnector::from(Arc::new(config)), server_name(host)?)),
            None => None,
        };
        Ok(HttpsConnector {
            peer: Arc::from(peer),
            host: host.to_string(),
            port,
            tls,
            connect_timeout,
        })
    }

    /// Open a connection: TCP, TLS and the HTTP/1.1 handshake, within the connect
    /// timeout.
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
        if self.tls.is_none() {
            return self.http_handshake(TokioIo::new(tcp)).await;
        }
        let tls = self.tls_handshake(tcp).await.map_err(ConnectError::Tls)?;
        self.http_handshake(TokioIo::new(tls)).await
    }

    /// The TLS handshake over an open TCP stream (an error if the connector is
    /// in clear). `qbroker doctor` takes the steps one by one, to report each.
    pub async fn tls_handshake(&self, tcp: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
        let Some((connector, name)) = &self.tls else {
            return Err(std::io::Error::other("the connection is not in TLS"));
        };
        connector.connect(name.clone(), tcp).await
    }

    /// The HTTP/1.1 handshake over an open stream; its driver is spawned.
    pub async fn http_handshake<T>(&self, io: T) -> Result<Conn, ConnectError>
    where
        T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let (sender, conn) = http1::handshake(io).await.map_err(ConnectError::Http)?;
        let peer = self.peer.clone();
        tokio::spawn(async move {
            if let Err(err) = conn.await {
                debug!(peer = %peer, error = %err, "connection closed");
            }
        });
        Ok(sender)
    }
}
