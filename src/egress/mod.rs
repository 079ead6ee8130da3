//! egress: delivers a target's spooled batches over HTTPS.
//!
//! Stage: `in_flight` lanes per target take batches from the target's spool in
//! order and POST them, each lane over its own kept-alive connection
//! ([`client`]). A batch is acknowledged to the spool (and leaves it) only once
//! the target answered 2xx, or once it was refused for good and written to the
//! dead-letter directory.
//!
//! Failures are retried without end, with capped, jittered exponential back-off
//! ([`retry`]): connect and TLS errors, timeouts, 408, 429 and 5xx (honouring
//! `Retry-After`), and also 1xx/3xx, which mean a misconfigured target rather
//! than a bad batch. Another 4xx is final: the batch goes to the dead-letter
//! directory and an error is logged. While a target is down its spool grows and,
//! at its cap, intake pauses; nothing is dropped.
//!
//! Every request carries `Idempotency-Key: <batch_id>`; a batch sent again (after
//! a timeout, a retry or a restart) keeps its id, so the target can drop the copy.

pub mod client;
pub mod retry;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header;
use http_body_util::{BodyExt, Full, Limited};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::config::TargetConfig;
use crate::deadletter::DeadLetters;
use crate::metrics::{unix_ms, unix_us, Metrics, RateLimit, TargetMetrics};
use crate::spool::{Record, Spool};

pub use client::{Connector, TlsSetupError};

/// Most of a response body kept, for logs and dead letters.
const RESPONSE_LIMIT: usize = 64 * 1024;
pub(crate) const USER_AGENT: &str = concat!("qbroker/", env!("CARGO_PKG_VERSION"));

/// A running target: its lanes.
pub struct Egress {
    name: String,
    spool: Arc<Spool>,
    lanes: Vec<JoinHandle<()>>,
}

struct Target {
    cfg: TargetConfig,
    spool: Arc<Spool>,
    connector: Connector,
    metrics: Arc<TargetMetrics>,
    broker: Arc<Metrics>,
    dead_letters: Arc<DeadLetters>,
    retry_log: RateLimit,
}

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

/// Start the lanes of one target. Must be called inside a tokio runtime.
pub fn start(
    cfg: TargetConfig,
    spool: Arc<Spool>,
    metrics: Arc<Metrics>,
    dead_letters: Arc<DeadLetters>,
) -> Result<Egress, TlsSetupError> {
    let connector = Connector::new(&cfg)?;
    let target = Arc::new(Target {
        metrics: metrics.target(&cfg.name),
        broker: metrics,
        connector,
        spool: spool.clone(),
        dead_letters,
        retry_log: RateLimit::new(Duration::from_secs(10), 2),
        cfg,
    });
    let lanes = (0..target.cfg.in_flight)
        .map(|_| tokio::spawn(target.clone().lane()))
        .collect();
    info!(target = %target.cfg.name, url = %target.cfg.url, in_flight = target.cfg.in_flight, "egress started");
    Ok(Egress {
        name: target.cfg.name.clone(),
        spool,
        lanes,
    })
}

impl Egress {
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
        let mut conn: Option<client::Conn> = None;
        while let Some(record) = self.spool.next().await {
            self.deliver(&mut conn, record).await;
        }
    }

    async fn deliver(&self, conn: &mut Option<client::Conn>, record: Record) {
        let body = if self.cfg.gzip {
            let raw = record.body.clone();
            match tokio::task::spawn_blocking(move || gzip(&raw)).await {
                Ok(Ok(zipped)) => Some(zipped),
                _ => None,
            }
        } else {
            None
        };
        let (body, gzipped) = match body {
            Some(b) => (b, true),
            None => (record.body.clone(), false),
        };
        self.metrics.in_flight.add(1);
        let mut attempt = 0u32;
        loop {
            self.metrics.requests.inc();
            let outcome = match tokio::time::timeout(
                self.cfg.timeout,
                self.attempt(conn, &record, &body, gzipped),
            )
            .await
            {
                Ok(outcome) => outcome,
                Err(_) => {
                    *conn = None;
                    self.metrics.failures_timeout.inc();
                    Outcome::Retry {
                        reason: format!("timed out after {:?}", self.cfg.timeout),
                        after: None,
                    }
                }
            };
            match outcome {
                Outcome::Accepted => {
                    self.metrics.batches_delivered.inc();
                    self.metrics.events_delivered.add(u64::from(record.events));
                    self.metrics.bytes_sent.add(body.len() as u64);
                    self.metrics.last_success_unix_ms.set(unix_ms());
                    self.metrics.failing.set(0);
                    self.broker.record_latency(&record.received, unix_us());
                    break;
                }
                Outcome::Rejected { status, response } => {
                    self.reject(&record, status, response).await;
                    break;
                }
                Outcome::Retry { reason, after } => {
                    attempt += 1;
                    self.metrics.retries.inc();
                    self.metrics.failing.set(1);
                    let delay = retry::backoff(attempt, self.cfg.retry_initial, self.cfg.retry_max)
                        .max(after.unwrap_or(Duration::ZERO));
                    if let Some(suppressed) = self.retry_log.check() {
                        warn!(
                            target = %self.cfg.name,
                            batch_id = %record.batch_id,
                            attempt,
                            retry_in_ms = delay.as_millis() as u64,
                            reason = %reason,
                            suppressed,
                            "delivery failed, will retry"
                        );
                    }
                    tokio::time::sleep(delay).await;
                }
            }
        }
        self.metrics.in_flight.add(-1);
        self.spool.ack(record.id);
    }

    async fn attempt(
        &self,
        conn: &mut Option<client::Conn>,
        record: &Record,
        body: &Bytes,
        gzipped: bool,
    ) -> Outcome {
        if conn.as_ref().is_none_or(|c| c.is_closed()) {
            match self.connector.connect().await {
                Ok(c) => *conn = Some(c),
                Err(err) => {
                    *conn = None;
                    self.metrics.failures_connect.inc();
                    return Outcome::Retry {
                        reason: err.to_string(),
                        after: None,
                    };
                }
            }
        }
        let sender = conn.as_mut().expect("connected above");
        if let Err(err) = sender.ready().await {
            *conn = None;
            self.metrics.failures_connect.inc();
            return Outcome::Retry {
                reason: format!("connection not usable: {err}"),
                after: None,
            };
        }
        let mut request = http::Request::post(self.cfg.path.as_str())
            .header(header::HOST, host_header(&self.cfg))
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_LENGTH, body.len())
            .header(header::USER_AGENT, USER_AGENT)
            .header("idempotency-key", record.batch_id.as_str());
        if gzipped {
            request = request.header(header::CONTENT_ENCODING, "gzip");
        }
        if let Some(token) = &self.cfg.token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {}", token.expose()));
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
            self.cfg.retry_after_max,
        );
        let text = match Limited::new(response.into_body(), RESPONSE_LIMIT)
            .collect()
            .await
        {
            Ok(collected) => String::from_utf8_lossy(&collected.to_bytes()).into_owned(),
            Err(_) => {
                // Too long or cut off: the connection cannot carry another request.
                *conn = None;
                String::new()
            }
        };
        if status.is_success() {
            return Outcome::Accepted;
        }
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

    async fn reject(&self, record: &Record, status: u16, response: String) {
        self.metrics.batches_dead_lettered.inc();
        self.metrics
            .events_dead_lettered
            .add(u64::from(record.events));
        let dl = self.dead_letters.clone();
        let (target, record2) = (self.cfg.name.clone(), record.clone());
        let response2 = response.clone();
        let kept = tokio::task::spawn_blocking(move || {
            dl.batch(
                &target,
                &record2.batch_id,
                &record2.cluster,
                record2.events,
                status,
                &response2,
                &record2.body,
            )
        })
        .await;
        match kept {
            Ok(Ok(path)) => error!(
                target = %self.cfg.name,
                batch_id = %record.batch_id,
                cluster = %record.cluster,
                events = record.events,
                status,
                response = %snippet(&response),
                path = %path.display(),
                "target refused a batch for good; kept in the dead-letter directory"
            ),
            Ok(Err(err)) => error!(
                target = %self.cfg.name,
                batch_id = %record.batch_id,
                events = record.events,
                status,
                error = %err,
                "target refused a batch for good and it could not be written to the dead-letter directory: batch lost"
            ),
            Err(_) => {
                error!(target = %self.cfg.name, batch_id = %record.batch_id, "dead-letter writer panicked")
            }
        }
    }
}

/// The `Host` header of a target's requests.
pub(crate) fn host_header(cfg: &TargetConfig) -> String {
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
