//! api: the HTTPS control plane.
//!
//! Beside the data path: an HTTPS-only server (hyper + tokio-rustls) on
//! `api.listen`. Varonis registers, per cluster, where its events go
//! (`/v1/targets`, and the reference broker's `/v1/rmq/objects`, [`rmq`]);
//! operators read health, readiness, per-cluster stats and Prometheus metrics
//! ([`ops`]). Every route and its JSON is described in `/openapi.json`
//! (`openapi.json` beside this file).
//!
//! A registration is written to the [`crate::store`], then applied to the
//! running pipeline ([`crate::targets::Targets::apply`]) before the answer, so a
//! caller that was answered can send events at once.
//!
//! Limits: `api.max_connections` connections; a TLS handshake and a request
//! head within 10 s; a whole request within `api.request_timeout_secs`; bodies
//! of at most `api.max_body_bytes` (413); plain HTTP on the port is answered 400
//! in clear and closed. Errors are JSON `{"detail": "..."}` (FastAPI's form,
//! which the reference's clients read); authentication in [`auth`].

// Handlers return their refusal as the HTTP answer itself (`Result<_, Answer>`):
// built once per request, never on a hot path, so it is not boxed.
#![allow(clippy::result_large_err)]

pub mod auth;
pub mod cert;
mod ops;
mod rmq;
mod targets;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, Method, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::config::{ApiServerConfig, Config};
use crate::metrics::{server::Render, Metrics, RateLimit};
use crate::store::{Store, StoreError};
use crate::sync::gate::Gate;
use crate::targets::{RegistrySync, Targets};
use auth::{Auth, CheckTarget, Credentials, KnownApis, Scope};

/// The OpenAPI description of every route.
pub const OPENAPI: &str = include_str!("openapi.json");

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

static ACCEPT_LOG: RateLimit = RateLimit::new(Duration::from_secs(10), 2);

/// What the handlers share.
pub struct Ctx {
    pub cfg: Arc<Config>,
    pub api: ApiServerConfig,
    pub store: Arc<Store>,
    pub targets: Arc<Targets>,
    pub metrics: Arc<Metrics>,
    pub gate: Arc<Gate>,
    pub render: Render,
    pub auth: Auth,
    pub sync: Arc<RegistrySync>,
    rates: ops::Rates,
    /// Held while a registration is counted and inserted (see `targets::insert`).
    pub registering: tokio::sync::Mutex<()>,
}

/// The API could not start.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Cert(#[from] cert::CertError),
    #[error("api: {0}")]
    Setup(String),
}

/// A JSON answer.
pub type Answer = Response<Full<Bytes>>;

pub fn json<T: Serialize>(status: StatusCode, body: &T) -> Answer {
    let bytes = serde_json::to_vec(body).expect("answers serialise");
    let mut resp = Response::new(Full::new(Bytes::from(bytes)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    resp
}

/// `{"detail": "..."}`.
pub fn error(status: StatusCode, detail: impl Into<String>) -> Answer {
    json(status, &serde_json::json!({ "detail": detail.into() }))
}

/// The answer to a refused caller.
fn unauthorized(detail: &str) -> Answer {
    let mut resp = error(StatusCode::UNAUTHORIZED, detail);
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer realm=\"qbroker\", Basic realm=\"qbroker\""),
    );
    resp
}

/// A store failure as an answer.
pub fn store_error(err: StoreError) -> Answer {
    match err {
        StoreError::Conflict(m) => error(StatusCode::CONFLICT, m),
        StoreError::Stale(_) => error(StatusCode::CONFLICT, err.to_string()),
        other => {
            warn!(error = %other, "api: registry failed");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the registry is not available",
            )
        }
    }
}

/// Parse a JSON body, naming what is wrong (unknown fields included) in a 400 or 422.
pub fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, Answer> {
    if body.is_empty() {
        return Err(error(StatusCode::BAD_REQUEST, "a JSON body is required"));
    }
    serde_json::from_slice(body).map_err(|e| {
        let status = if e.is_data() {
            StatusCode::UNPROCESSABLE_ENTITY
        } else {
            StatusCode::BAD_REQUEST
        };
        error(status, format!("invalid JSON body: {e}"))
    })
}

impl KnownApis for Targets {
    fn known_apis(&self) -> Vec<(String, CheckTarget)> {
        self.registered_apis()
            .into_iter()
            .map(|(cluster, api)| {
                (
                    cluster,
                    CheckTarget {
                        host: api.api.host,
                        port: api.api.port,
                        ca_pem: api.ca_pem,
                        insecure: api.api.insecure_skip_verify,
                    },
                )
            })
            .collect()
    }
}

impl Ctx {
    /// Read the registry and apply it to the running pipeline.
    pub async fn reload(&self) -> Result<(), StoreError> {
        self.sync.reload().await
    }

    /// Who the caller is: the admin token, Qumulo credentials (`body`, or Basic
    /// with `X-Qumulo-Cluster`), or a refusal (401, or 429 past the failure budget).
    pub async fn authenticate(
        &self,
        peer: IpAddr,
        headers: &HeaderMap,
        body: Option<&Credentials>,
    ) -> Result<Scope, Answer> {
        if let Some(secs) = self.auth.blocked(peer) {
            let mut resp = error(
                StatusCode::TOO_MANY_REQUESTS,
                "too many failed authentications from this address; try again later",
            );
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
            return Err(resp);
        }
        let authorization = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let mut creds = body.cloned();
        if let Some(value) = authorization {
            match self.auth.is_admin(value) {
                Some(true) => return Ok(Scope::Admin),
                Some(false) => {
                    self.auth.failed(peer, "wrong admin token");
                    return Err(unauthorized("Authentication failure"));
                }
                None => {}
            }
            if let Some(basic) = value.strip_prefix("Basic ") {
                creds = basic_credentials(basic, headers);
                if creds.is_none() {
                    self.auth.failed(peer, "malformed Basic credentials");
                    return Err(unauthorized(
                        "Authentication failure: Basic credentials need an X-Qumulo-Cluster header",
                    ));
                }
            }
        }
        let Some(creds) = creds else {
            self.auth.failed(peer, "no credentials");
            return Err(unauthorized("Authentication failure"));
        };
        match self.auth.check(&creds, self.targets.as_ref()).await {
            Ok(scope) => Ok(scope),
            Err(reason) => {
                self.auth.failed(peer, &reason);
                Err(unauthorized("Authentication failure"))
            }
        }
    }
}

fn basic_credentials(encoded: &str, headers: &HeaderMap) -> Option<Credentials> {
    use base64::Engine as _;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (username, password) = text.split_once(':')?;
    let cluster = headers.get("x-qumulo-cluster")?.to_str().ok()?;
    Some(Credentials {
        username: username.to_string(),
        password: password.to_string(),
        cluster: cluster.to_string(),
    })
}

/// Everything the server needs, built before anything is bound.
pub struct Server {
    ctx: Arc<Ctx>,
    tls: Arc<rustls::ServerConfig>,
}

impl Server {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: Arc<Config>,
        sync: Arc<RegistrySync>,
        metrics: Arc<Metrics>,
        gate: Arc<Gate>,
        render: Render,
    ) -> Result<Server, ApiError> {
        let api = cfg
            .api
            .clone()
            .ok_or_else(|| ApiError::Setup("not enabled".to_string()))?;
        let tls = cert::server_config(&api, &cfg.data_dir)?;
        let auth = Auth::new(&api, cfg.clone()).map_err(ApiError::Setup)?;
        if api.admin_token.is_none() {
            info!("api: no admin_token: only Qumulo credentials are accepted");
        }
        Ok(Server {
            ctx: Arc::new(Ctx {
                cfg,
                api,
                store: sync.store.clone(),
                targets: sync.targets.clone(),
                metrics,
                gate,
                render,
                auth,
                sync,
                rates: ops::Rates::default(),
                registering: tokio::sync::Mutex::new(()),
            }),
            tls,
        })
    }

    /// Serve on `listener` until `stop` turns true.
    pub async fn serve(self, listener: std::net::TcpListener, mut stop: watch::Receiver<bool>) {
        let listener = match listener
            .set_nonblocking(true)
            .and_then(|()| TcpListener::from_std(listener))
        {
            Ok(l) => l,
            Err(err) => {
                warn!(error = %err, "api: cannot use the listener");
                return;
            }
        };
        if let Ok(addr) = listener.local_addr() {
            info!(listen = %addr, "serving the API over HTTPS");
        }
        let ctx = self.ctx.clone();
        let background = tokio::spawn(background(ctx.clone(), stop.clone()));
        let acceptor = TlsAcceptor::from(self.tls.clone());
        let slots = Arc::new(Semaphore::new(ctx.api.max_connections));
        loop {
            let accepted = tokio::select! {
                biased;
                _ = stop.changed() => break,
                accepted = listener.accept() => accepted,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(err) => {
                    if let Some(suppressed) = ACCEPT_LOG.check() {
                        warn!(error = %err, suppressed, "api: accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                if let Some(suppressed) = ACCEPT_LOG.check() {
                    warn!(peer = %peer, suppressed, "api: connection refused: api.max_connections reached");
                }
                continue;
            };
            let (ctx, acceptor, stop) = (ctx.clone(), acceptor.clone(), stop.clone());
            tokio::spawn(async move {
                connection(ctx, acceptor, tcp, peer, stop).await;
                drop(permit);
            });
        }
        background.abort();
    }
}

/// Events per second, sampled for `/v1/clusters`.
async fn background(ctx: Arc<Ctx>, mut stop: watch::Receiver<bool>) {
    let mut sample = tokio::time::interval(ops::RATE_INTERVAL);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = sample.tick() => ctx.rates.sample(&ctx.metrics),
        }
    }
}

async fn connection(
    ctx: Arc<Ctx>,
    acceptor: TlsAcceptor,
    mut tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    mut stop: watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    // A TLS connection starts with a handshake record (0x16); anything else is
    // most likely plain HTTP, told so in clear.
    let mut first = [0u8; 1];
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tcp.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] != 0x16 => {
            let body = br#"{"detail":"this port speaks HTTPS only"}"#;
            let head = format!(
                "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = tcp.write_all(head.as_bytes()).await;
            let _ = tcp.write_all(body).await;
            let _ = tcp.shutdown().await;
            return;
        }
        Ok(Ok(1)) => {}
        _ => return,
    }
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(err)) => {
            debug!(peer = %peer, error = %err, "api: TLS handshake failed");
            return;
        }
        Err(_) => return,
    };
    let ip = peer.ip();
    let service = service_fn(move |req| {
        let ctx = ctx.clone();
        async move {
            let timeout = ctx.api.request_timeout;
            let answer = match tokio::time::timeout(timeout, handle(&ctx, ip, req)).await {
                Ok(a) => a,
                Err(_) => error(StatusCode::REQUEST_TIMEOUT, "request timed out"),
            };
            Ok::<_, Infallible>(answer)
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HANDSHAKE_TIMEOUT)
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(tls), service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(err) = result {
                debug!(peer = %peer, error = %err, "api: connection closed");
            }
        }
        _ = stop.changed() => {}
    }
}

/// A request, once its body is read within the limit.
pub struct Request {
    pub method: Method,
    pub path: Vec<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub peer: IpAddr,
}

async fn handle(ctx: &Ctx, peer: IpAddr, req: http::Request<Incoming>) -> Answer {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, ctx.api.max_body_bytes).collect().await {
        Ok(b) => b.to_bytes(),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the body is larger than api.max_body_bytes ({} bytes)",
                    ctx.api.max_body_bytes
                ),
            )
        }
        Err(_) => return error(StatusCode::BAD_REQUEST, "the body could not be read"),
    };
    let Some(path) = segments(parts.uri.path()) else {
        return error(StatusCode::BAD_REQUEST, "the path is not valid UTF-8");
    };
    let req = Request {
        method: parts.method,
        path,
        headers: parts.headers,
        body,
        peer,
    };
    route(ctx, req).await
}

/// The path's segments, percent-decoded; a trailing `/` is dropped.
fn segments(path: &str) -> Option<Vec<String>> {
    path.trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect()
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The routes: `(path pattern, methods)`; `{}` is one segment. Kept in step
/// with `openapi.json` (a test checks both ways).
pub const ROUTES: &[(&str, &[&str])] = &[
    ("/healthz", &["GET"]),
    ("/readyz", &["GET"]),
    ("/metrics", &["GET"]),
    ("/openapi.json", &["GET"]),
    ("/v1/clusters", &["GET"]),
    ("/v1/targets", &["GET", "POST"]),
    ("/v1/targets/{cluster_name}", &["GET", "PATCH", "DELETE"]),
    ("/v1/rmq/objects/", &["GET", "POST"]),
    (
        "/v1/rmq/objects/{cluster_name}",
        &["GET", "PATCH", "DELETE"],
    ),
];

async fn route(ctx: &Ctx, req: Request) -> Answer {
    let path: Vec<&str> = req.path.iter().map(String::as_str).collect();
    let m = req.method.clone();
    match (path.as_slice(), m.as_str()) {
        (["healthz"], "GET") => ops::healthz(ctx),
        (["readyz"], "GET") => ops::readyz(ctx).await,
        (["openapi.json"], "GET") => {
            let mut resp = Response::new(Full::new(Bytes::from_static(OPENAPI.as_bytes())));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            resp
        }
        (["metrics"], "GET") => ops::metrics(ctx, &req).await,
        (["v1", "clusters"], "GET") => ops::clusters(ctx, &req).await,
        (["v1", "targets"], "GET") => targets::list(ctx, &req).await,
        (["v1", "targets"], "POST") => targets::create(ctx, &req).await,
        (["v1", "targets", name], "GET") => targets::get(ctx, &req, name).await,
        (["v1", "targets", name], "PATCH") => targets::update(ctx, &req, name).await,
        (["v1", "targets", name], "DELETE") => targets::delete(ctx, &req, name).await,
        (["v1", "rmq", "objects"], "GET") => rmq::list(ctx, &req).await,
        (["v1", "rmq", "objects"], "POST") => rmq::create(ctx, &req).await,
        (["v1", "rmq", "objects", name], "GET") => rmq::get(ctx, &req, name).await,
        (["v1", "rmq", "objects", name], "PATCH") => rmq::update(ctx, &req, name).await,
        (["v1", "rmq", "objects", name], "DELETE") => rmq::delete(ctx, &req, name).await,
        _ => {
            let allowed = allowed_methods(&path);
            if allowed.is_empty() {
                error(StatusCode::NOT_FOUND, "Not Found")
            } else {
                let mut resp = error(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
                if let Ok(v) = header::HeaderValue::from_str(&allowed.join(", ")) {
                    resp.headers_mut().insert(header::ALLOW, v);
                }
                resp
            }
        }
    }
}

/// The methods [`ROUTES`] has for a path.
fn allowed_methods(path: &[&str]) -> Vec<&'static str> {
    ROUTES
        .iter()
        .filter(|(pattern, _)| {
            let p: Vec<&str> = pattern.split('/').filter(|s| !s.is_empty()).collect();
            p.len() == path.len()
                && p.iter()
                    .zip(path)
                    .all(|(a, b)| a.starts_with('{') || a == b)
        })
        .flat_map(|(_, methods)| methods.iter().copied())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_decode_and_lose_their_trailing_slash() {
        assert_eq!(
            segments("/v1/rmq/objects/").unwrap(),
            vec!["v1", "rmq", "objects"]
        );
        assert_eq!(
            segments("/v1/targets/a%20b%2Fc").unwrap(),
            vec!["v1", "targets", "a b/c"]
        );
        assert!(segments("/v1/targets/%ff").is_none());
        assert_eq!(
            allowed_methods(&["v1", "targets", "x"]),
            vec!["GET", "PATCH", "DELETE"]
        );
        assert!(allowed_methods(&["v2"]).is_empty());
    }

    /// Every route of the OpenAPI document is served, and every route served is
    /// in the document, with the same methods.
    #[test]
    fn openapi_matches_the_routes() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        let mut documented: Vec<(String, Vec<String>)> = paths
            .iter()
            .map(|(p, ops)| {
                let mut m: Vec<String> = ops
                    .as_object()
                    .unwrap()
                    .keys()
                    .filter(|k| ["get", "post", "patch", "delete", "put"].contains(&k.as_str()))
                    .map(|k| k.to_uppercase())
                    .collect();
                m.sort();
                (p.clone(), m)
            })
            .collect();
        documented.sort();
        let mut served: Vec<(String, Vec<String>)> = ROUTES
            .iter()
            .map(|(p, m)| {
                let mut m: Vec<String> = m.iter().map(|s| s.to_string()).collect();
                m.sort();
                (p.to_string(), m)
            })
            .collect();
        served.sort();
        assert_eq!(documented, served);
        assert_eq!(
            doc["openapi"].as_str().unwrap().split('.').next(),
            Some("3")
        );
    }
}
