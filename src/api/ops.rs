//! Operations: `/healthz`, `/readyz`, `/metrics` and `/v1/clusters`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::StatusCode;
use serde::Serialize;

use super::targets::{caller, tri};
use super::{error, json, Answer, Ctx, Request};
use crate::metrics::Metrics;

/// How often events per second are sampled.
pub const RATE_INTERVAL: Duration = Duration::from_secs(5);

/// Events per second per cluster, over the last sampling interval.
#[derive(Default)]
pub struct Rates(Mutex<BTreeMap<String, (u64, Instant, f64)>>);

impl Rates {
    pub fn sample(&self, metrics: &Metrics) {
        let mut rates = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        for c in metrics.clusters() {
            let total = c.events_total();
            let entry = rates.entry(c.name.to_string()).or_insert((total, now, 0.0));
            let secs = now.duration_since(entry.1).as_secs_f64();
            if secs > 0.0 {
                *entry = (total, now, total.saturating_sub(entry.0) as f64 / secs);
            }
        }
    }

    fn of(&self, cluster: &str) -> f64 {
        let rates = self.0.lock().unwrap_or_else(|e| e.into_inner());
        rates.get(cluster).map_or(0.0, |r| r.2)
    }
}

fn rfc3339(ms: i64) -> Option<String> {
    (ms > 0).then(|| {
        let mut out = Vec::with_capacity(24);
        crate::parse::write_rfc3339_ms(&mut out, ms);
        String::from_utf8(out).unwrap_or_default()
    })
}

/// Alive, with each target's health as detail: the targets whose last
/// delivery failed and the spools at their cap. Always 200 while the process
/// serves (a liveness probe must not restart the broker for a target's fault).
pub fn healthz(ctx: &Ctx) -> Answer {
    let (failing, full, total) = target_health(ctx);
    json(
        StatusCode::OK,
        &serde_json::json!({
            "status": "ok",
            "targets": { "total": total, "failing": failing, "spool_full": full },
        }),
    )
}

/// (targets whose last delivery failed, spools at their cap, targets in all).
fn target_health(ctx: &Ctx) -> (Vec<String>, Vec<String>, usize) {
    let views = ctx.targets.views();
    let failing = views
        .iter()
        .filter(|v| v.failing)
        .map(|v| v.name.clone())
        .collect();
    let full = views
        .iter()
        .filter(|v| v.spool.bytes >= ctx.cfg.spool.max_bytes)
        .map(|v| v.name.clone())
        .collect();
    (failing, full, views.len())
}

/// Ready to take the clusters' traffic: listening (this answer), the registry
/// loaded and the spools open (the API serves only after both), and the spool
/// directory writable. One target's failure does not make the whole broker
/// unready (a load balancer would take every cluster away): the targets'
/// health is detail here and in `/healthz`, and in the metrics.
pub async fn readyz(ctx: &Ctx) -> Answer {
    let dir = ctx.cfg.spool.dir.clone();
    let writable = tokio::task::spawn_blocking(move || {
        let probe = dir.join(".readyz");
        let ok = std::fs::write(&probe, b"ok").is_ok();
        let _ = std::fs::remove_file(&probe);
        ok
    })
    .await
    .unwrap_or(false);
    let (failing, full, total) = target_health(ctx);
    json(
        if writable {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        &serde_json::json!({
            "ready": writable,
            "targets": { "total": total, "failing": failing },
            "spool": { "writable": writable, "full": full },
        }),
    )
}

pub async fn metrics(ctx: &Ctx, req: &Request) -> Answer {
    let scope = tri!(caller(ctx, req, None).await);
    if !scope.is_admin() {
        return error(
            StatusCode::UNAUTHORIZED,
            "Authentication failure: /metrics needs the admin token",
        );
    }
    let mut resp = http::Response::new(http_body_util::Full::new(bytes::Bytes::from(
        (ctx.render)(),
    )));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    resp
}

#[derive(Serialize)]
struct NodeOut {
    name: String,
    connected: bool,
    frames: u64,
    last_frame_time: Option<String>,
}

#[derive(Serialize)]
struct TargetOut {
    name: String,
    origin: &'static str,
    /// `ok`, `failing` (the last delivery attempt failed), `blocked` (RabbitMQ
    /// blocks publishing: a memory or disk alarm) or `draining`.
    state: &'static str,
    url: String,
    /// Why the last failed attempt failed, and when (RFC 3339).
    last_error: Option<String>,
    last_error_time: Option<String>,
    spool_batches: u64,
    spool_bytes: u64,
    oldest_batch_age_ms: u64,
}

#[derive(Serialize)]
struct ClusterOut {
    cluster: String,
    nodes_connected: i64,
    nodes: Vec<NodeOut>,
    events_per_second: f64,
    events_total: u64,
    frames_total: u64,
    last_event_time: Option<String>,
    queue_messages: usize,
    queue_bytes: usize,
    target: Option<TargetOut>,
}

pub async fn clusters(ctx: &Ctx, req: &Request) -> Answer {
    let scope = tri!(caller(ctx, req, None).await);
    let views = ctx.targets.views();
    let out: Vec<ClusterOut> = ctx
        .metrics
        .clusters()
        .into_iter()
        .filter(|c| scope.allows(&c.name))
        .map(|c| {
            let (queue_messages, queue_bytes) = ctx
                .targets
                .gate_id(&c.name)
                .map_or((0, 0), |id| ctx.gate.cluster_usage(id));
            let target = ctx
                .targets
                .route_of(&c.name)
                .and_then(|t| views.iter().find(|v| v.name == t))
                .map(|v| TargetOut {
                    name: v.name.clone(),
                    origin: v.origin.as_str(),
                    state: if v.draining {
                        "draining"
                    } else if v.blocked {
                        "blocked"
                    } else if v.failing {
                        "failing"
                    } else {
                        "ok"
                    },
                    url: super::targets::shown_url(&v.url),
                    last_error: v.last_error.as_ref().map(|(e, _)| e.clone()),
                    last_error_time: v.last_error.as_ref().and_then(|(_, at)| rfc3339(*at)),
                    spool_batches: v.spool.unacked_records,
                    spool_bytes: v.spool.bytes,
                    oldest_batch_age_ms: v.spool.oldest_unacked_age_ms,
                });
            ClusterOut {
                cluster: c.name.to_string(),
                nodes_connected: c.connections.get(),
                nodes: c
                    .nodes()
                    .into_iter()
                    .map(|(name, n)| NodeOut {
                        name: name.to_string(),
                        connected: n.connected.get() > 0,
                        frames: n.frames.get(),
                        last_frame_time: rfc3339(n.last_frame_unix_ms.get()),
                    })
                    .collect(),
                events_per_second: ctx.rates.of(&c.name),
                events_total: c.events_total(),
                frames_total: c.frames.get(),
                last_event_time: rfc3339(c.last_event_unix_ms.get()),
                queue_messages,
                queue_bytes,
                target,
            }
        })
        .collect();
    json(StatusCode::OK, &out)
}
