//! egress: delivers a target's spooled batches, over AMQP or HTTPS.
//!
//! Stage: `in_flight` lanes per target take batches from the target's spool in
//! order and hand each to the target's transport: [`amqp`] publishes it to
//! RabbitMQ with publisher confirms (one connection per target, shared by the
//! lanes); HTTPS POSTs it, each lane over its own kept-alive connection
//! ([`client`]). The lane is the same for both: a batch is acknowledged to the
//! spool (and leaves it) only once the target took it (2xx; every message
//! confirmed and routed), or once it was refused for good and written to the
//! dead-letter directory (HTTPS only: an AMQP target refuses nothing for good).
//!
//! Failures are retried without end, with capped, jittered exponential back-off
//! ([`retry`]): connect and TLS errors (counted apart: a failed TLS handshake
//! is a certificate to fix, not a network to wait for), timeouts, 408, 429 and
//! 5xx (honouring `Retry-After`), and also 1xx/3xx, which mean a misconfigured
//! target rather than a bad batch. Another 4xx is final: the batch goes to the
//! dead-letter directory and an error is logged. While a target is down its
//! spool grows and, at its cap, intake pauses; nothing is dropped.
//!
//! Every request carries `Idempotency-Key: <batch_id>`; a batch sent again (after
//! a timeout, a retry or a restart) keeps its id, so the target can drop the copy.
//!
//! Owns: the lanes, the transports and `TargetMetrics`' values. May touch: the
//! spool (read, ack), the dead-letter directory, the registry's types, config
//! and metrics.

pub mod amqp;
pub mod client;
pub mod encode;
pub mod retry;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header;
use http_body_util::{BodyExt, Full, Limited};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::config::{Secret, TargetConfig};
use crate::deadletter::DeadLetters;
use crate::metrics::{unix_ms, unix_us, Metrics, RateLimit, TargetMetrics};
use crate::spool::{Record, Spool};

pub use client::{Connector, TlsSetupError};

/// Most of a response body kept, for logs and dead letters.
const RESPONSE_LIMIT: usize = 64 * 1024;
/// The `User-Agent` of every request to a target.
pub const USER_AGENT: &str = concat!("qbroker/", env!("CARGO_PKG_VERSION"));

/// A running target: its lanes.
pub struct Egress {
    name: String,
    spool: Arc<Spool>,
    lanes: Vec<JoinHandle<()>>,
    target: Arc<Target>,
}

/// How requests authenticate to a target.
#[derive(Clone, Debug)]
pub enum Authorization {
    None,
    /// `Authorization: Bearer <token>`.
    Bearer(Secret),
    /// `Authorization: Basic base64(<username>:<password>)`.
    Basic {
        username: String,
        password: Secret,
    },
}

impl Authorization {
    /// The whole `Authorization` header value, and the credentials to scrub
    /// from answers before they are logged or kept.
    pub fn header(self) -> (Option<Secret>, Vec<Secret>) {
        use base64::Engine as _;
        match self {
            Authorization::None => (None, Vec::new()),
            Authorization::Bearer(t) => {
                (Some(Secret::new(format!("Bearer {}", t.expose()))), vec![t])
            }
            Authorization::Basic { username, password } => {
                let pair = base64::engine::general_purpose::STANDARD
                    .encode(format!("{username}:{}", password.expose()));
                (
                    Some(Secret::new(format!("Basic {pair}"))),
                    vec![password, Secret::new(pair)],
                )
            }
        }
    }
}

/// Where a target's batches go and how: its URL, TLS settings and credentials.
/// Replaced at run time ([`Egress::update`]); every attempt, retries of a batch
/// already in flight included, uses the endpoint current when it starts.
pub struct Endpoint {
    pub cfg: TargetConfig,
    transport: Transport,
}

/// What carries a batch to the target: the lane (spool order, retries,
/// acknowledgement) is the same for both.
enum Transport {
    Https(Https),
    Amqp(Box<amqp::Publisher>),
}

/// An HTTPS target: POST per batch.
struct Https {
    connector: Connector,
    /// The whole `Authorization` header value.
    authorization: Option<Secret>,
    /// Credentials scrubbed from answers before they are logged or kept.
    secrets: Vec<Secret>,
}

impl Endpoint {
    /// A configured target: CA and client certificate from its files, its token
    /// (HTTPS) or its login (AMQP).
    pub fn from_config(cfg: TargetConfig) -> Result<Endpoint, TlsSetupError> {
        let tls = if cfg.tls {
            Some(client::tls_config(&cfg)?)
        } else {
            None
        };
        if cfg.amqp.is_some() {
            return Ok(Endpoint::amqp(cfg, tls));
        }
        let connector = client::connector(&cfg, tls)?;
        let auth = match &cfg.token {
            Some(t) => Authorization::Bearer(t.clone()),
            None => Authorization::None,
        };
        Ok(Endpoint::assemble(cfg, connector, auth))
    }

    /// A target whose CA and client certificate are given as PEM text.
    pub fn with_pem(
        cfg: TargetConfig,
        tls: &client::TlsMaterial<'_>,
        auth: Authorization,
    ) -> Result<Endpoint, TlsSetupError> {
        let tls = if cfg.tls {
            Some(client::tls_config_from_pem(&cfg, tls)?)
        } else {
            None
        };
        if cfg.amqp.is_some() {
            return Ok(Endpoint::amqp(cfg, tls));
        }
        let connector = client::connector(&cfg, tls)?;
        Ok(Endpoint::assemble(cfg, connector, auth))
    }

    fn amqp(cfg: TargetConfig, tls: Option<rustls::ClientConfig>) -> Endpoint {
        let publisher = Box::new(amqp::Publisher::new(&cfg, tls));
        Endpoint {
            cfg,
            transport: Transport::Amqp(publisher),
        }
    }

    fn assemble(cfg: TargetConfig, connector: Connector, auth: Authorization) -> Endpoint {
        let (authorization, secrets) = auth.header();
        Endpoint {
            cfg,
            transport: Transport::Https(Https {
                connector,
                authorization,
                secrets,
            }),
        }
    }
}

struct Target {
    name: String,
    /// The current endpoint; lanes wait on it to cut a back-off short after a change.
    endpoint: watch::Sender<Arc<Endpoint>>,
    spool: Arc<Spool>,
    metrics: Arc<TargetMetrics>,
    broker: Arc<Metrics>,
    dead_letters: Arc<DeadLetters>,
    retry_log: RateLimit,
}

/// An open connection and the endpoint it was opened for.
type Lane = Option<(client::Conn, Arc<Endpoint>)>;

/// How one attempt ended.
enum Outcome {
    Accepted,
    /// Refused for good.
    Rejected {
        status: u16,
        response: String,
    },
    Retry {
        reason: String,
        after: Option<Duration>,
    },
}

/// Start `endpoint.cfg.in_flight` lanes delivering `spool` to `endpoint`. Must be
/// called inside a tokio runtime.
pub fn start_endpoint(
    endpoint: Endpoint,
    spool: Arc<Spool>,
    metrics: Arc<Metrics>,
    dead_letters: Arc<DeadLetters>,
) -> Egress {
    let name = endpoint.cfg.name.clone();
    let in_flight = endpoint.cfg.in_flight;
    info!(target = %name, url = %endpoint.cfg.url_for_logs(), in_flight, "egress started");
    let target = Arc::new(Target {
        metrics: metrics.target(&name),
        broker: metrics,
        endpoint: watch::Sender::new(Arc::new(endpoint)),
        spool: spool.clone(),
        dead_letters,
        retry_log: RateLimit::new(Duration::from_secs(10), 2),
        name: name.clone(),
    });
    let lanes = (0..in_flight)
        .map(|_| tokio::spawn(target.clone().lane()))
        .collect();
    Egress {
        name,
        spool,
        lanes,
        target,
    }
}

impl Egress {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The endpoint batches go to now.
    pub fn endpoint(&self) -> Arc<Endpoint> {
        self.target.endpoint.borrow().clone()
    }

    /// Send the next attempt, of a new batch or of one in flight, to `endpoint`.
    /// Connections to the old one are dropped; lanes waiting to retry try again
    /// at once. The number of lanes stays as started.
    pub fn update(&self, endpoint: Endpoint) {
        info!(target = %self.name, url = %endpoint.cfg.url_for_logs(), "target endpoint changed");
        self.target.endpoint.send_replace(Arc::new(endpoint));
    }

    /// The target's delivery counters.
    pub fn metrics(&self) -> &Arc<TargetMetrics> {
        &self.target.metrics
    }

    /// After the spool was closed: wait until the lanes delivered everything, or
    /// until `deadline`; then stop them. What is left stays in the spool. Returns
    /// whether everything was delivered.
    pub async fn finish(self, deadline: tokio::time::Instant) -> bool {
        let mut drained = true;
        for mut lane in self.lanes {
            if tokio::time::timeout_at(deadline, &mut lane).await.is_err() {
                lane.abort();
                drained = false;
            }
        }
        let left = self.spool.stats().unacked_records;
        if drained {
            info!(target = %self.name, "egress drained");
        } else {
            warn!(target = %self.name, batches_left = left, "shutdown grace period over: undelivered batches stay in the spool for the next start");
        }
        drained
    }
}

impl Target {
    async fn lane(self: Arc<Self>) {
        let mut conn: Lane = None;
        while let Some(record) = self.spool.next().await {
            self.deliver(&mut conn, record).await;
        }
    }

    /// Deliver one spooled batch, then acknowledge it to the spool. A batch
    /// the target refuses as too large (413) is split in halves, each sent on
    /// its own (`<batch_id>.1`, `<batch_id>.2`, stable across restarts), down
    /// to single events; a part refused for good goes to the dead-letter
    /// directory. The batch leaves the spool only once every part was accepted
    /// or kept there; a part that cannot be kept (the directory at its cap, a
    /// write error) is retried with back-off, which pauses the target.
    async fn deliver(&self, conn: &mut Lane, record: Record) {
        self.metrics.in_flight.add(1);
        let mut parts = vec![Part {
            batch_id: record.batch_id.clone(),
            events: record.events,
            body: record.body.clone(),
        }];
        while let Some(part) = parts.pop() {
            if let Some((first, second)) = self.deliver_part(conn, &record, part).await {
                // Sent in order: the first half first.
                parts.push(second);
                parts.push(first);
            }
        }
        self.broker
            .record_latency(&record.cluster, &record.received, unix_us());
        self.metrics.in_flight.add(-1);
        self.spool.ack(record.id);
    }

    /// Send `part` until it is accepted or kept as a dead letter; the two
    /// halves to send instead when the target answered 413.
    async fn deliver_part(
        &self,
        conn: &mut Lane,
        record: &Record,
        part: Part,
    ) -> Option<(Part, Part)> {
        let mut changes = self.endpoint.subscribe();
        let gzipped_body = {
            let ep = changes.borrow_and_update();
            ep.cfg.gzip && ep.cfg.amqp.is_none()
        };
        let body = if gzipped_body {
            let raw = part.body.clone();
            match tokio::task::spawn_blocking(move || gzip(&raw)).await {
                Ok(Ok(zipped)) => Some(zipped),
                _ => None,
            }
        } else {
            None
        };
        let (body, gzipped) = match body {
            Some(b) => (b, true),
            None => (part.body.clone(), false),
        };
        let mut attempt = 0u32;
        loop {
            let ep = changes.borrow_and_update().clone();
            self.metrics.requests.inc();
            let outcome = match tokio::time::timeout(
                ep.cfg.timeout,
                self.attempt(&ep, conn, record, &part, &body, gzipped),
            )
            .await
            {
                Ok(outcome) => outcome,
                Err(_) => {
                    *conn = None;
                    self.metrics.failures_timeout.inc();
                    Outcome::Retry {
                        reason: format!("timed out after {:?}", ep.cfg.timeout),
                        after: None,
                    }
                }
            };
            let outcome = match outcome {
                Outcome::Rejected { status: 413, .. } if part.events > 1 => match split(&part) {
                    Some(halves) => {
                        warn!(
                            target = %self.name,
                            batch_id = %part.batch_id,
                            events = part.events,
                            "target refused the batch as too large (413): sending it in two halves"
                        );
                        self.metrics.batches_split.inc();
                        return Some(halves);
                    }
                    None => outcome,
                },
                other => other,
            };
            let outcome = match outcome {
                Outcome::Rejected { status, response } => {
                    match self.reject(record, &part, status, response).await {
                        Ok(()) => return None,
                        Err(reason) => Outcome::Retry {
                            reason,
                            after: None,
                        },
                    }
                }
                other => other,
            };
            match outcome {
                Outcome::Accepted => {
                    if self.metrics.failing.get() != 0 {
                        info!(target = %self.name, "delivery resumed");
                    }
                    self.metrics.blocked.set(0);
                    self.metrics.batches_delivered.inc();
                    self.metrics.events_delivered.add(u64::from(part.events));
                    self.metrics.bytes_sent.add(body.len() as u64);
                    self.metrics.last_success_unix_ms.set(unix_ms());
                    self.metrics.failing.set(0);
                    return None;
                }
                Outcome::Rejected { .. } => unreachable!("handled above"),
                Outcome::Retry { reason, after } => {
                    if let Transport::Amqp(p) = &ep.transport {
                        self.metrics.blocked.set(i64::from(p.blocked()));
                    }
                    self.metrics.set_last_error(&reason);
                    attempt += 1;
                    self.metrics.retries.inc();
                    self.metrics.failing.set(1);
                    let delay = retry::backoff(attempt, ep.cfg.retry_initial, ep.cfg.retry_max)
                        .max(after.unwrap_or(Duration::ZERO));
                    if let Some(suppressed) = self.retry_log.check() {
                        warn!(
                            target = %self.name,
                            batch_id = %part.batch_id,
                            attempt,
                            retry_in_ms = delay.as_millis() as u64,
                            reason = %reason,
                            suppressed,
                            "delivery failed, will retry"
                        );
                    }
                    // A new endpoint is tried at once: the back-off was for the old one.
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        changed = changes.changed() => {
                            if changed.is_err() {
                                tokio::time::sleep(delay).await;
                            }
                        }
                    }
                }
            }
        }
    }

    async fn attempt(
        &self,
        ep: &Arc<Endpoint>,
        conn: &mut Lane,
        record: &Record,
        part: &Part,
        body: &Bytes,
        gzipped: bool,
    ) -> Outcome {
        let batch_id = part.batch_id.as_str();
        let https = match &ep.transport {
            Transport::Https(h) => h,
            Transport::Amqp(publisher) => {
                // AMQP never splits a batch; a part exists only when an HTTPS
                // endpoint split it before the target became AMQP.
                let whole;
                let sent = if batch_id == record.batch_id {
                    record
                } else {
                    whole = Record {
                        batch_id: part.batch_id.clone(),
                        events: part.events,
                        body: part.body.clone(),
                        ..record.clone()
                    };
                    &whole
                };
                return self.publish(publisher, sent).await;
            }
        };
        if conn
            .as_ref()
            .is_none_or(|(c, opened_for)| c.is_closed() || !Arc::ptr_eq(opened_for, ep))
        {
            *conn = None;
            match https.connector.connect().await {
                Ok(c) => *conn = Some((c, ep.clone())),
                Err(err) => {
                    *conn = None;
                    match err {
                        client::ConnectError::Tls(_) => self.metrics.failures_tls.inc(),
                        _ => self.metrics.failures_connect.inc(),
                    }
                    return Outcome::Retry {
                        reason: err.to_string(),
                        after: None,
                    };
                }
            }
        }
        let sender = &mut conn.as_mut().expect("connected above").0;
        if let Err(err) = sender.ready().await {
            *conn = None;
            self.metrics.failures_connect.inc();
            return Outcome::Retry {
                reason: format!("connection not usable: {err}"),
                after: None,
            };
        }
        let mut request = http::Request::post(ep.cfg.path.as_str())
            .header(header::HOST, host_header(&ep.cfg))
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_LENGTH, body.len())
            .header(header::USER_AGENT, USER_AGENT)
            .header("idempotency-key", batch_id);
        if gzipped {
            request = request.header(header::CONTENT_ENCODING, "gzip");
        }
        if let Some(auth) = &https.authorization {
            request = request.header(header::AUTHORIZATION, auth.expose());
        }
        let request = match request.body(Full::new(body.clone())) {
            Ok(r) => r,
            Err(err) => {
                // Only a batch id with bytes a header cannot carry gets here (a
                // damaged record): no retry can help.
                return Outcome::Rejected {
                    status: 0,
                    response: format!("cannot build the request: {err}"),
                };
            }
        };
        let response = match sender.send_request(request).await {
            Ok(r) => r,
            Err(err) => {
                *conn = None;
                self.metrics.failures_connect.inc();
                return Outcome::Retry {
                    reason: format!("request failed: {err}"),
                    after: None,
                };
            }
        };
        let status = response.status();
        let after = retry::retry_after(
            response.headers(),
            SystemTime::now(),
            ep.cfg.retry_after_max,
        );
        // Read to the end, so that the connection can carry the next request.
        let collected = match Limited::new(response.into_body(), RESPONSE_LIMIT)
            .collect()
            .await
        {
            Ok(collected) => Some(collected.to_bytes()),
            Err(_) => {
                // Too long or cut off: the connection cannot carry another request.
                *conn = None;
                None
            }
        };
        if status.is_success() {
            return Outcome::Accepted;
        }
        // The answer is logged and may be kept in the dead-letter directory: a
        // target that echoes the request must not get the token written there.
        let text = collected.map_or_else(String::new, |bytes| {
            https.secrets.iter().fold(
                String::from_utf8_lossy(&bytes).into_owned(),
                |text, secret| redact(text, Some(secret)),
            )
        });
        self.metrics.failures_status.inc();
        let code = status.as_u16();
        if code == 429 {
            self.metrics.throttled.inc();
        }
        if status.is_client_error() && code != 408 && code != 429 {
            return Outcome::Rejected {
                status: code,
                response: text,
            };
        }
        Outcome::Retry {
            reason: format!("status {code}: {}", snippet(&text)),
            after,
        }
    }

    /// One attempt over AMQP: publish and wait for the confirms.
    async fn publish(&self, publisher: &amqp::Publisher, record: &Record) -> Outcome {
        match publisher.publish(record).await {
            Ok(()) => Outcome::Accepted,
            Err(err) if err.is_permanent() => Outcome::Rejected {
                status: 0,
                response: err.to_string(),
            },
            Err(err) => {
                if err.is_tls() {
                    self.metrics.failures_tls.inc();
                } else if err.is_connect() {
                    self.metrics.failures_connect.inc();
                } else {
                    self.metrics.failures_status.inc();
                }
                Outcome::Retry {
                    reason: err.to_string(),
                    after: None,
                }
            }
        }
    }

    /// Keep a part the target refused for good in the dead-letter directory;
    /// why not (the batch then stays in the spool and is retried).
    async fn reject(
        &self,
        record: &Record,
        part: &Part,
        status: u16,
        response: String,
    ) -> Result<(), String> {
        let dl = self.dead_letters.clone();
        let (target, cluster, batch_id) = (
            self.name.clone(),
            record.cluster.clone(),
            part.batch_id.clone(),
        );
        let (events, body) = (part.events, part.body.clone());
        let response2 = response.clone();
        let kept = tokio::task::spawn_blocking(move || {
            dl.batch(
                &target, &batch_id, &cluster, events, status, &response2, &body,
            )
        })
        .await;
        match kept {
            Ok(Ok(path)) => {
                self.metrics.batches_dead_lettered.inc();
                self.metrics
                    .events_dead_lettered
                    .add(u64::from(part.events));
                error!(
                    target = %self.name,
                    batch_id = %part.batch_id,
                    cluster = %record.cluster,
                    events = part.events,
                    status,
                    response = %snippet(&response),
                    path = %path.display(),
                    "target refused a batch for good; kept in the dead-letter directory (qbroker replay sends it again)"
                );
                Ok(())
            }
            Ok(Err(err)) => {
                self.metrics.dead_letter_failures.inc();
                if let Some(suppressed) = self.retry_log.check() {
                    error!(
                        target = %self.name,
                        batch_id = %part.batch_id,
                        events = part.events,
                        status,
                        error = %err,
                        suppressed,
                        "target refused a batch for good and it cannot be kept in the dead-letter directory: the batch stays in the spool and the target is paused"
                    );
                }
                Err(format!(
                    "refused with status {status}, and the dead-letter directory cannot take it: {err}"
                ))
            }
            Err(_) => Err("the dead-letter writer panicked".to_string()),
        }
    }
}

/// A spooled batch, or a part of one split after a 413.
struct Part {
    batch_id: String,
    events: u32,
    /// The whole request body.
    body: Bytes,
}

/// Split a batch body in two halves of its events, with the ids
/// `<batch_id>.1` and `<batch_id>.2`; `None` when the body is not a batch of
/// two events or more (a record damaged on disk).
fn split(part: &Part) -> Option<(Part, Part)> {
    let mut doc: serde_json::Value = serde_json::from_slice(&part.body).ok()?;
    let events = doc.get_mut("events")?.as_array_mut()?;
    if events.len() < 2 {
        return None;
    }
    let second: Vec<serde_json::Value> = events.split_off(events.len() / 2);
    let first = std::mem::take(events);
    let half = |id: String, events: Vec<serde_json::Value>, doc: &serde_json::Value| {
        let mut doc = doc.clone();
        let n = events.len() as u32;
        doc["batch_id"] = serde_json::Value::String(id.clone());
        doc["events"] = serde_json::Value::Array(events);
        Some(Part {
            batch_id: id,
            events: n,
            body: Bytes::from(serde_json::to_vec(&doc).ok()?),
        })
    };
    Some((
        half(format!("{}.1", part.batch_id), first, &doc)?,
        half(format!("{}.2", part.batch_id), second, &doc)?,
    ))
}

/// The `Host` header of a target's requests.
pub fn host_header(cfg: &TargetConfig) -> String {
    let host = if cfg.host.contains(':') {
        format!("[{}]", cfg.host)
    } else {
        cfg.host.clone()
    };
    match (cfg.tls, cfg.port) {
        (true, 443) | (false, 80) => host,
        (_, port) => format!("{host}:{port}"),
    }
}

/// `text` with every occurrence of the token replaced by `<redacted>`.
fn redact(text: String, token: Option<&Secret>) -> String {
    match token {
        Some(t) if !t.expose().is_empty() && text.contains(t.expose()) => {
            text.replace(t.expose(), "<redacted>")
        }
        _ => text,
    }
}

fn snippet(text: &str) -> &str {
    let mut end = text.len().min(200);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn gzip(body: &[u8]) -> std::io::Result<Bytes> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 4),
        flate2::Compression::fast(),
    );
    enc.write_all(body)?;
    Ok(Bytes::from(enc.finish()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_header_forms() {
        let mut cfg = crate::config::RawConfig::parse(
            "[[targets]]\nname = \"v\"\nurl = \"https://[::1]:8443/x\"\n",
        )
        .unwrap()
        .validate()
        .unwrap()
        .targets
        .remove(0);
        assert_eq!(host_header(&cfg), "[::1]:8443");
        cfg.port = 443;
        cfg.host = "varonis.example".to_string();
        assert_eq!(host_header(&cfg), "varonis.example");
    }

    #[test]
    fn gzip_round_trips_and_snippet_respects_utf8() {
        use std::io::Read;
        let body = b"{\"events\":[]}".repeat(100);
        let zipped = gzip(&body).unwrap();
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&zipped[..])
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, body);
        let text = "é".repeat(150);
        assert!(snippet(&text).len() <= 200);
    }
}
