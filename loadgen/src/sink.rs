//! sink: a Varonis endpoint that verifies what qbroker delivers.
//!
//! HTTPS (hyper 1 over tokio-rustls) with a certificate generated at start
//! (a CA and a leaf for localhost/127.0.0.1/::1) or read from files. Each
//! POST body goes to the [`Verifier`]; a 200 means the batch was accepted and
//! counted. Faults, for tests: 503 for a fraction of requests or for a
//! period, 429 with Retry-After, response delays, connections closed without
//! an answer (before or after accepting the batch), and going away
//! altogether (listener closed, connections dropped) for a period.
//!
//! A POST to a path under `/peer` is a peer's body (`bench --versus`): a
//! JSON array of the audit records rsyslog or syslog-ng passed on, checked
//! by [`Verifier::check_peer_batch`] instead of as a qbroker batch.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use testkit::https::serve_connection;
use testkit::pki::Pki;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::gen::Rng;
use crate::verify::{BatchMeta, Verifier};

/// Largest request body accepted.
const MAX_BODY: usize = 256 << 20;
/// A connection that sends no complete request head for this long (idle
/// between requests included) is closed.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the server certificate comes from.
#[derive(Clone, Debug)]
pub enum CertSource {
    /// a fresh CA and a leaf for localhost, 127.0.0.1 and ::1
    Generate,
    /// PEM files: the chain, leaf first, and its private key
    Files { cert: PathBuf, key: PathBuf },
}

/// A period relative to the sink's start.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Window {
    pub start: Duration,
    pub len: Duration,
}

impl std::str::FromStr for Window {
    type Err = anyhow::Error;
    /// `START+LEN` in seconds after the sink starts, e.g. `10+30`.
    fn from_str(s: &str) -> anyhow::Result<Self> {
        let (a, b) = s
            .split_once('+')
            .context("want START+LEN, in seconds (e.g. 10+30)")?;
        let secs = |x: &str| -> anyhow::Result<Duration> {
            let v: f64 = x
                .trim()
                .parse()
                .with_context(|| format!("`{x}` is not a number"))?;
            if !(0.0..=1e6).contains(&v) {
                bail!("`{x}` out of range");
            }
            Ok(Duration::from_secs_f64(v))
        };
        Ok(Window {
            start: secs(a)?,
            len: secs(b)?,
        })
    }
}

/// Fault injection settings.
#[derive(Clone, Debug, Default)]
pub struct FaultConfig {
    /// fraction of requests answered 503
    pub fail_503: f64,
    /// periods when every request is answered 503
    pub outages: Vec<Window>,
    /// fraction of requests answered 429 with `Retry-After`
    pub throttle_429: f64,
    pub retry_after_secs: u64,
    /// response delay, uniform in [min, max] milliseconds
    pub delay_ms: (u64, u64),
    /// fraction of requests whose connection is closed without an answer
    /// (the batch is not accepted)
    pub reset: f64,
    /// fraction of requests accepted and counted, then the connection is
    /// closed without an answer (a lost acknowledgement: expect a retry)
    pub lose_ack: f64,
    /// periods when the sink is gone: listener closed, connections dropped
    pub away: Vec<Window>,
}

impl FaultConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        for (name, f) in [
            ("fail-503", self.fail_503),
            ("throttle-429", self.throttle_429),
            ("reset", self.reset),
            ("lose-ack", self.lose_ack),
        ] {
            if !(0.0..=1.0).contains(&f) {
                bail!("{name}: a fraction between 0 and 1");
            }
        }
        if self.fail_503 + self.throttle_429 + self.reset + self.lose_ack > 1.0 {
            bail!("fault fractions add up to more than 1");
        }
        if self.delay_ms.0 > self.delay_ms.1 {
            bail!("delay: min above max");
        }
        Ok(())
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Decision {
    Accept,
    Unavailable,
    Throttle,
    Reset,
    LoseAck,
}

/// Fault state, changeable while the sink runs (bench schedules outages).
pub struct Faults {
    cfg: FaultConfig,
    outages: Mutex<Vec<(Instant, Instant)>>,
    away: Mutex<Vec<(Instant, Instant)>>,
    rng: Mutex<Rng>,
}

fn in_window(ws: &Mutex<Vec<(Instant, Instant)>>, now: Instant) -> Option<Instant> {
    let ws = ws.lock().expect("fault lock");
    ws.iter().find(|(a, b)| *a <= now && now < *b).map(|w| w.1)
}

impl Faults {
    fn new(cfg: FaultConfig, start: Instant) -> Self {
        let abs = |ws: &[Window]| {
            ws.iter()
                .map(|w| (start + w.start, start + w.start + w.len))
                .collect()
        };
        Faults {
            outages: Mutex::new(abs(&cfg.outages)),
            away: Mutex::new(abs(&cfg.away)),
            rng: Mutex::new(Rng::new(crate::gen::now_unix_us())),
            cfg,
        }
    }

    /// Answer 503 to everything from now on for `len`.
    pub fn outage(&self, len: Duration) {
        let now = Instant::now();
        self.outages
            .lock()
            .expect("fault lock")
            .push((now, now + len));
    }

    /// End every outage now (and drop those still to come).
    pub fn end_outages(&self) {
        let now = Instant::now();
        for w in self.outages.lock().expect("fault lock").iter_mut() {
            if w.1 > now {
                w.1 = now.max(w.0);
            }
        }
    }

    /// Close the listener and all connections from now on for `len`.
    pub fn go_away(&self, len: Duration) {
        let now = Instant::now();
        self.away.lock().expect("fault lock").push((now, now + len));
    }

    /// Whether requests are being answered 503 by an outage window now.
    pub fn in_outage(&self) -> bool {
        in_window(&self.outages, Instant::now()).is_some()
    }

    fn away_until(&self, now: Instant) -> Option<Instant> {
        in_window(&self.away, now)
    }

    fn delay(&self) -> Option<Duration> {
        let (lo, hi) = self.cfg.delay_ms;
        if hi == 0 {
            return None;
        }
        let ms = lo + self.rng.lock().expect("fault lock").below(hi - lo + 1);
        Some(Duration::from_millis(ms))
    }

    fn decide(&self, now: Instant) -> Decision {
        if in_window(&self.outages, now).is_some() {
            return Decision::Unavailable;
        }
        let c = &self.cfg;
        let u = self.rng.lock().expect("fault lock").below(1 << 53) as f64 / (1u64 << 53) as f64;
        let mut edge = 0.0;
        for (p, d) in [
            (c.fail_503, Decision::Unavailable),
            (c.throttle_429, Decision::Throttle),
            (c.reset, Decision::Reset),
            (c.lose_ack, Decision::LoseAck),
        ] {
            edge += p;
            if u < edge {
                return d;
            }
        }
        Decision::Accept
    }
}

/// Requests and answers, by kind.
#[derive(Default, Debug)]
pub struct Counters {
    pub connections: AtomicU64,
    pub requests: AtomicU64,
    pub accepted: AtomicU64,
    pub unavailable: AtomicU64,
    pub throttled: AtomicU64,
    pub resets: AtomicU64,
    pub lost_acks: AtomicU64,
    pub refused: AtomicU64,
}

/// A snapshot of [`Counters`].
#[derive(Clone, Debug, Default, serde::Serialize, PartialEq)]
pub struct Responses {
    pub connections: u64,
    pub requests: u64,
    /// 200
    pub accepted: u64,
    /// 503
    pub unavailable: u64,
    /// 429
    pub throttled: u64,
    /// closed without an answer, batch not accepted
    pub resets: u64,
    /// accepted, then closed without an answer
    pub lost_acks: u64,
    /// 4xx: the batch failed the envelope checks
    pub refused: u64,
}

impl Counters {
    pub fn snapshot(&self) -> Responses {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Responses {
            connections: g(&self.connections),
            requests: g(&self.requests),
            accepted: g(&self.accepted),
            unavailable: g(&self.unavailable),
            throttled: g(&self.throttled),
            resets: g(&self.resets),
            lost_acks: g(&self.lost_acks),
            refused: g(&self.refused),
        }
    }
}

pub struct SinkConfig {
    pub listen: SocketAddr,
    pub cert: CertSource,
    /// where to write the PEM a client should trust
    pub cert_out: Option<PathBuf>,
    pub faults: FaultConfig,
}

struct Shared {
    verifier: Arc<Verifier>,
    faults: Arc<Faults>,
    counters: Arc<Counters>,
    /// numbers the bodies of peers (POST /peer...), which carry no batch id
    peer_bodies: AtomicU64,
}

/// A running sink.
pub struct Sink {
    pub addr: SocketAddr,
    /// PEM of the certificate a client should trust (the CA when generated)
    pub trust_pem: String,
    pub verifier: Arc<Verifier>,
    pub faults: Arc<Faults>,
    pub counters: Arc<Counters>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Sink {
    /// Stops accepting, drops every connection, and waits for the server task.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

fn load_cert(
    cert: &PathBuf,
    key: &PathBuf,
) -> anyhow::Result<(String, Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let pem =
        std::fs::read_to_string(cert).with_context(|| format!("reading {}", cert.display()))?;
    let chain = rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", cert.display()))?;
    if chain.is_empty() {
        bail!("{}: no certificate", cert.display());
    }
    let key_pem = std::fs::read(key).with_context(|| format!("reading {}", key.display()))?;
    let key = rustls_pemfile::private_key(&mut &key_pem[..])
        .with_context(|| format!("parsing {}", key.display()))?
        .with_context(|| format!("{}: no private key", key.display()))?;
    Ok((pem, chain, key))
}

/// Binds, writes the trust PEM if asked, and serves until [`Sink::stop`].
pub async fn start(cfg: SinkConfig, verifier: Arc<Verifier>) -> anyhow::Result<Sink> {
    cfg.faults.validate()?;
    let (trust_pem, chain, key) = match &cfg.cert {
        CertSource::Generate => {
            let pki = Pki::new("loadgen sink").context("generating the sink certificate")?;
            (pki.ca_pem.clone(), pki.server_chain(), pki.key())
        }
        CertSource::Files { cert, key } => load_cert(cert, key)?,
    };
    if let Some(p) = &cfg.cert_out {
        std::fs::write(p, &trust_pem).with_context(|| format!("writing {}", p.display()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("server certificate")?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let listener = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("binding {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    let faults = Arc::new(Faults::new(cfg.faults, Instant::now()));
    let counters = Arc::new(Counters::default());
    let shared = Arc::new(Shared {
        verifier: verifier.clone(),
        faults: faults.clone(),
        counters: counters.clone(),
        peer_bodies: AtomicU64::new(0),
    });
    let (shutdown, rx) = watch::channel(false);
    let task = tokio::spawn(serve(listener, addr, acceptor, shared, rx));
    Ok(Sink {
        addr,
        trust_pem,
        verifier,
        faults,
        counters,
        shutdown,
        task,
    })
}

async fn serve(
    listener: TcpListener,
    addr: SocketAddr,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    // bumping this drops every open connection
    let (drop_all, _) = watch::channel(0u64);
    let mut listener = Some(listener);
    loop {
        if *shutdown.borrow() {
            break;
        }
        if let Some(until) = shared.faults.away_until(Instant::now()) {
            if listener.take().is_some() {
                tracing::info!(%addr, "sink going away");
            }
            drop_all.send_modify(|g| *g += 1);
            tokio::select! {
                _ = tokio::time::sleep_until(until.into()) => {}
                _ = shutdown.changed() => break,
            }
            continue;
        }
        let Some(l) = &listener else {
            match TcpListener::bind(addr).await {
                Ok(l) => {
                    tracing::info!(%addr, "sink back");
                    listener = Some(l);
                }
                Err(e) => {
                    tracing::warn!(%addr, error = %e, "rebinding the sink");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            continue;
        };
        tokio::select! {
            r = l.accept() => match r {
                Ok((tcp, _)) => {
                    let _ = tcp.set_nodelay(true);
                    shared.counters.connections.fetch_add(1, Ordering::Relaxed);
                    let (acceptor, shared) = (acceptor.clone(), shared.clone());
                    let mut kill = drop_all.subscribe();
                    let mut stop = shutdown.clone();
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req| handle(req, shared.clone()));
                        tokio::select! {
                            _ = serve_connection(tcp, acceptor, svc, Some(HEADER_READ_TIMEOUT)) => {}
                            _ = kill.changed() => {}
                            _ = stop.changed() => {}
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            // wake up to notice an away window
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = shutdown.changed() => break,
        }
    }
    drop_all.send_modify(|g| *g += 1);
}

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

async fn handle(
    req: Request<Incoming>,
    sh: Arc<Shared>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    sh.counters.requests.fetch_add(1, Ordering::Relaxed);
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => return Ok(reply(StatusCode::OK, "{\"ok\":true}")),
        (&Method::GET, "/report") => {
            let s = sh.verifier.summary(None);
            let body = serde_json::to_vec_pretty(&s).unwrap_or_default();
            return Ok(reply(StatusCode::OK, body));
        }
        (&Method::POST, _) => {}
        _ => {
            return Ok(reply(
                StatusCode::METHOD_NOT_ALLOWED,
                "{\"error\":\"POST a batch\"}",
            ))
        }
    }
    let header = |name: http::header::HeaderName| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    // `bench --versus`: a peer's JSON array of audit records, not a batch
    let peer = req.uri().path().starts_with("/peer");
    let content_type = header(http::header::CONTENT_TYPE);
    let content_encoding = header(http::header::CONTENT_ENCODING);
    let idempotency_key = req
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            sh.counters.refused.fetch_add(1, Ordering::Relaxed);
            let msg = format!(
                "{{\"error\":{}}}",
                serde_json::to_string(&e.to_string()).unwrap_or_default()
            );
            return Ok(reply(StatusCode::PAYLOAD_TOO_LARGE, msg));
        }
    };
    if let Some(d) = sh.faults.delay() {
        tokio::time::sleep(d).await;
    }
    let decision = sh.faults.decide(Instant::now());
    match decision {
        Decision::Unavailable => {
            sh.counters.unavailable.fetch_add(1, Ordering::Relaxed);
            return Ok(reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "{\"error\":\"unavailable\"}",
            ));
        }
        Decision::Throttle => {
            sh.counters.throttled.fetch_add(1, Ordering::Relaxed);
            let mut r = reply(StatusCode::TOO_MANY_REQUESTS, "{\"error\":\"slow down\"}");
            r.headers_mut().insert(
                http::header::RETRY_AFTER,
                sh.faults.cfg.retry_after_secs.into(),
            );
            return Ok(r);
        }
        Decision::Reset => {
            sh.counters.resets.fetch_add(1, Ordering::Relaxed);
            return Err(std::io::Error::other("injected connection reset"));
        }
        Decision::Accept | Decision::LoseAck => {}
    }
    // verification is CPU work: keep it off the reactor threads
    let verifier = sh.verifier.clone();
    let peer_body = peer.then(|| sh.peer_bodies.fetch_add(1, Ordering::Relaxed));
    let checked = tokio::task::spawn_blocking(move || {
        if let Some(n) = peer_body {
            return verifier.check_peer_batch(n, &body);
        }
        let meta = BatchMeta {
            content_type: content_type.as_deref(),
            content_encoding: content_encoding.as_deref(),
            idempotency_key: idempotency_key.as_deref(),
            delivery_id: None,
        };
        verifier.check_batch(&meta, &body)
    })
    .await
    .map_err(std::io::Error::other)?;
    match checked {
        Ok(n) if decision == Decision::LoseAck => {
            let _ = n;
            sh.counters.lost_acks.fetch_add(1, Ordering::Relaxed);
            Err(std::io::Error::other("injected lost acknowledgement"))
        }
        Ok(n) => {
            sh.counters.accepted.fetch_add(1, Ordering::Relaxed);
            Ok(reply(StatusCode::OK, format!("{{\"accepted\":{n}}}")))
        }
        Err(rej) => {
            sh.counters.refused.fetch_add(1, Ordering::Relaxed);
            let status = StatusCode::from_u16(rej.status).unwrap_or(StatusCode::BAD_REQUEST);
            let msg = format!(
                "{{\"error\":{}}}",
                serde_json::to_string(&rej.reason).unwrap_or_default()
            );
            Ok(reply(status, msg))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_parse() {
        let w: Window = "10+30".parse().unwrap();
        assert_eq!(
            w,
            Window {
                start: Duration::from_secs(10),
                len: Duration::from_secs(30)
            }
        );
        assert!("10".parse::<Window>().is_err());
        assert!("x+1".parse::<Window>().is_err());
    }

    #[test]
    fn fault_fractions() {
        let cfg = FaultConfig {
            fail_503: 0.25,
            throttle_429: 0.25,
            ..FaultConfig::default()
        };
        let f = Faults::new(cfg, Instant::now());
        let mut n = [0u32; 3];
        for _ in 0..10_000 {
            match f.decide(Instant::now()) {
                Decision::Unavailable => n[0] += 1,
                Decision::Throttle => n[1] += 1,
                _ => n[2] += 1,
            }
        }
        assert!(
            (2200..2800).contains(&n[0]) && (2200..2800).contains(&n[1]),
            "{n:?}"
        );
        f.outage(Duration::from_secs(60));
        assert_eq!(f.decide(Instant::now()), Decision::Unavailable);
        f.end_outages();
        assert!(!f.in_outage());
        assert!(FaultConfig {
            reset: 1.5,
            ..FaultConfig::default()
        }
        .validate()
        .is_err());
    }
}
