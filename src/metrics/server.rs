//! server: the plain-HTTP observability endpoint (`--metrics-listen`).
//!
//! `GET /metrics` answers the Prometheus text format; `GET /stats` the same
//! counters and gauges per cluster and per target as one JSON document, for
//! `qbroker top` ([`super::stats`]); `GET /healthz` answers `{"status":"ok"}`
//! while the broker runs. Nothing here is secret: the pages hold counters and
//! names, never credentials.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// Renders the current page.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Serve until `stop` turns true: `render` answers `/metrics`, `stats` (JSON)
/// answers `/stats`.
pub async fn serve(
    listener: TcpListener,
    render: Render,
    stats: Render,
    mut stop: watch::Receiver<bool>,
) {
    if let Ok(addr) = listener.local_addr() {
        info!(listen = %addr, "serving /metrics, /stats and /healthz");
    }
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.changed() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, _) = match accepted {
            Ok(a) => a,
            Err(err) => {
                warn!(error = %err, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (render, stats) = (render.clone(), stats.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let (render, stats) = (render.clone(), stats.clone());
                async move { Ok::<_, Infallible>(respond(&req, &render, &stats)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            if let Err(err) = tokio::time::timeout(Duration::from_secs(60), conn).await {
                debug!(error = %err, "metrics connection closed");
            }
        });
    }
}

fn respond(req: &Request<Incoming>, render: &Render, stats: &Render) -> Response<Full<Bytes>> {
    let (status, kind, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => (StatusCode::OK, "text/plain; version=0.0.4", render()),
        (&Method::GET, "/stats") => (StatusCode::OK, "application/json", stats()),
        (&Method::GET, "/healthz") => (
            StatusCode::OK,
            "application/json",
            "{\"status\":\"ok\"}".to_string(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "application/json",
            "{\"error\":\"not found\"}".to_string(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(kind));
    resp
}
