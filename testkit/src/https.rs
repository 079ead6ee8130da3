//! https: the server side of the stand-ins (a Varonis endpoint, a Qumulo
//! REST API): HTTP/1.1 over TLS on a listener the caller bound, one task per
//! connection, and a stop that returns only once the listener is closed and
//! every connection dropped, so that a test that stops a server can count on
//! the next connection being refused.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

/// A TLS handshake that takes longer is given up.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serve one accepted connection: the TLS handshake (bounded by
/// [`TLS_HANDSHAKE_TIMEOUT`]), then HTTP/1.1 with `service` until the client
/// closes, or until it takes longer than `header_read_timeout` (if any) to
/// send a request head, which also ends a connection idle that long. A failed
/// handshake or connection is logged at debug and ends it.
pub async fn serve_connection<S, E>(
    tcp: TcpStream,
    acceptor: TlsAcceptor,
    service: S,
    header_read_timeout: Option<Duration>,
) where
    S: hyper::service::Service<
        hyper::Request<Incoming>,
        Response = hyper::Response<Full<Bytes>>,
        Error = E,
    >,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "tls handshake");
            return;
        }
        Err(_) => return,
    };
    let mut http = hyper::server::conn::http1::Builder::new();
    if let Some(t) = header_read_timeout {
        http.timer(TokioTimer::new()).header_read_timeout(t);
    }
    let r = http.serve_connection(TokioIo::new(tls), service).await;
    if let Err(e) = r {
        tracing::debug!(error = %e, "connection ended");
    }
}

/// A running server: its accept loop and connections, on the runtime that
/// was current when it was spawned.
pub struct Server {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Accept on `listener` until [`stop`](Self::stop); each request of
    /// each connection goes to `handle`. A connection stays open, idle or
    /// not, as long as its client keeps it.
    pub fn spawn<H, F>(listener: TcpListener, acceptor: TlsAcceptor, handle: H) -> Server
    where
        H: Fn(hyper::Request<Incoming>) -> F + Clone + Send + Sync + 'static,
        F: std::future::Future<Output = Result<hyper::Response<Full<Bytes>>, Infallible>>
            + Send
            + 'static,
    {
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                // reap the connections that ended
                while connections.try_join_next().is_some() {}
                tokio::select! {
                    _ = stopped.changed() => break,
                    r = listener.accept() => match r {
                        Ok((tcp, _)) => {
                            let service = hyper::service::service_fn(handle.clone());
                            connections.spawn(serve_connection(
                                tcp,
                                acceptor.clone(),
                                service,
                                None,
                            ));
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "accept");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    },
                }
            }
            drop(listener);
            connections.shutdown().await;
        });
        Server { stop, task }
    }

    /// Close the listener and drop every connection; returns once both are
    /// gone (or after 5 s).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}
