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

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::net::{Alpn, ClientTls, Pem, ServerTls, Trust};

    /// A TLS server on loopback that answers every request 204 when the client
    /// offered `http/1.1` in ALPN, else 500.
    async fn server(cert: &str, key: &str) -> SocketAddr {
        let config = ServerTls {
            chain: Pem::new(cert.as_bytes(), "cert").certs().unwrap(),
            key: Pem::new(key.as_bytes(), "key").key().unwrap(),
            client_ca: None,
            alpn: Alpn::Http1,
        }
        .config()
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let h1 = tls.get_ref().1.alpn_protocol() == Some(b"http/1.1");
                    let service = hyper::service::service_fn(move |_req| async move {
                        let status = if h1 { 204 } else { 500 };
                        http::Response::builder()
                            .status(status)
                            .body(Full::new(Bytes::new()))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        addr
    }

    fn connector(addr: SocketAddr, trust: Trust<'_>) -> HttpsConnector {
        let tls = ClientTls {
            trust,
            identity: None,
            alpn: Alpn::Http1,
        }
        .config()
        .unwrap();
        HttpsConnector::new(
            "test",
            "127.0.0.1",
            addr.port(),
            Some(tls),
            Duration::from_secs(5),
        )
        .unwrap()
    }

    /// A server's own self-signed certificate marked CA:TRUE (what `openssl req
    /// -x509` makes), given as the CA: pinned, it is reached (HTTP/1.1 agreed
    /// in ALPN); as a mere root, webpki refuses a CA used as an end entity, and
    /// the error says what to do.
    #[tokio::test]
    async fn a_pinned_self_signed_server_is_reached_and_a_mere_root_is_not() {
        let pair = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&pair).unwrap().pem();
        let addr = server(&cert, &pair.serialize_pem()).await;
        let ca = Pem::new(cert.as_bytes(), "ca_file");

        let mut conn = connector(addr, Trust::RootsOrPinned(ca))
            .connect()
            .await
            .unwrap();
        let request = http::Request::get("/")
            .header(http::header::HOST, "127.0.0.1")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = conn.send_request(request).await.unwrap();
        assert_eq!(response.status(), 204);

        let err = connector(addr, Trust::Roots(ca))
            .connect()
            .await
            .expect_err("webpki refuses a CA certificate as the server's own");
        assert!(matches!(err, ConnectError::Tls(_)), "{err}");
        assert!(
            err.to_string().starts_with("tls handshake: the server"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_closed_port_is_a_tcp_error() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let c = HttpsConnector::new(
            "test",
            "127.0.0.1",
            addr.port(),
            None,
            Duration::from_secs(5),
        )
        .unwrap();
        let err = c.connect().await.expect_err("nothing listens");
        assert!(matches!(err, ConnectError::Tcp(_)), "{err}");
    }
}
