//! metrics: counters per stage, per cluster, per node and per target, end-to-end
//! latency, their Prometheus text rendering, and the same figures as JSON for
//! `qbroker top` ([`stats`], `GET /stats`).
//!
//! Hot paths add to plain atomics once per chunk or per batch, never per event:
//! workers sum a chunk's outcomes locally and add them at the end. The latency
//! histogram (hdrhistogram, microseconds) is updated once per delivered batch.
//!
//! This module sits below the stages and names none of them: the page is the
//! counters defined here ([`Metrics::render`]) plus the parts the stages render
//! themselves and register ([`Render`], [`Metrics::register`]: the queue, the
//! spools, enrichment). The `/stats` document is defined here ([`stats`]) and
//! made by [`crate::targets`], which knows the routes.

pub mod ratelimit;
pub mod server;
pub mod stats;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;

use crate::parse::{FilterReason, Operation};
use crate::sync::gate::Usage;

pub use ratelimit::RateLimit;

/// Milliseconds since the Unix epoch, now.
pub fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Microseconds since the Unix epoch, now.
pub fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn add(&self, n: u64) {
        if n > 0 {
            self.0.fetch_add(n, Ordering::Relaxed);
        }
    }
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn add(&self, n: i64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn set(&self, n: i64) {
        self.0.store(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Cluster names with their own unroutable series; the names come from the
/// network, so the label set is bounded.
pub const UNROUTABLE_CLUSTERS: usize = 64;

impl IngestMetrics {
    /// A connection (or a stdin line) of `cluster` refused: its cluster has no
    /// target, or the cluster table is full.
    pub fn unroutable(&self, cluster: &str) {
        self.unroutable.inc();
        let mut m = self
            .unroutable_clusters
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let key = if m.contains_key(cluster) || m.len() < UNROUTABLE_CLUSTERS {
            cluster
        } else {
            "~other"
        };
        *m.entry(key.to_string()).or_default() += 1;
    }
}

/// The listener and connection readers.
#[derive(Debug, Default)]
pub struct IngestMetrics {
    /// Unroutable connections (or stdin lines) per cluster name, the first
    /// [`UNROUTABLE_CLUSTERS`] names, the rest under `~other`.
    unroutable_clusters: Mutex<BTreeMap<String, u64>>,
    pub connections_accepted: Counter,
    pub connections_active: Gauge,
    pub refused_allowlist: Counter,
    pub refused_limit: Counter,
    pub accept_errors: Counter,
    pub first_frame_timeouts: Counter,
    pub unroutable: Counter,
    pub idle_timeouts: Counter,
    pub read_errors: Counter,
    pub reader_panics: Counter,
    pub oversize_frames: Counter,
    pub partial_frames: Counter,
    pub paused: Counter,
    /// Refused at once: `ingest.max_connections_per_source` reached.
    pub refused_source_limit: Counter,
    /// Closed: a frame not complete within `ingest.frame_timeout_secs`.
    pub frame_timeouts: Counter,
    /// Closed: bad frames outnumbered good ones by `ingest.max_bad_frames`.
    pub closed_bad_frames: Counter,
    /// Closed: a frame past `ingest.max_oversize_frame_bytes`.
    pub closed_frame_overrun: Counter,
    /// TLS connections whose handshake failed or timed out.
    pub tls_handshake_failures: Counter,
    /// First-frame HOSTNAMEs not taken as a node name (not 1 to 255 printable
    /// ASCII characters); the connection is named by its address instead.
    pub invalid_hostnames: Counter,
    /// Connections counted under `node="~other"`: their cluster had
    /// `ingest.max_nodes_per_cluster` node names already.
    pub nodes_over_limit: Counter,
}

/// The label of the connections of nodes over `ingest.max_nodes_per_cluster`.
pub const OTHER_NODES: &str = "~other";

/// The parse pool.
#[derive(Debug, Default)]
pub struct PoolMetrics {
    pub chunks: Counter,
    pub worker_panics: Counter,
    pub workers_restarted: Counter,
    pub dead_letter_errors: Counter,
}

/// Enrichment (`enrich`): REST calls, the ACL cache, the queue, fallbacks.
#[derive(Debug, Default)]
pub struct EnrichMetrics {
    /// Metadata changes handed to the API side.
    pub jobs: Counter,
    pub requests_acl: Counter,
    pub requests_attributes: Counter,
    /// Logins (`POST /v1/session/login`), the first included.
    pub logins: Counter,
    /// Logins that replaced a token: due for renewal, or refused (401).
    pub token_renewals: Counter,
    /// Failed requests, by `enrich::client::ApiError::KINDS`.
    pub errors: [Counter; 6],
    /// An earlier ACL of the file was cached.
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    /// Generic events sent instead, by `enrich::Fallback::ALL`.
    pub fallbacks: [Counter; 6],
    /// Results that came back after their file's enrichment was given up.
    pub late_results: Counter,
    /// Events whose type came from the type cache.
    pub type_cache_hits: Counter,
    /// Events held (metadata changes waiting for the API and the events waiting
    /// behind them), over all clusters.
    pub queue_events: Gauge,
    pub queue_bytes: Gauge,
    pub in_flight: Gauge,
}

/// One node of a cluster (one syslog HOSTNAME).
#[derive(Debug, Default)]
pub struct NodeMetrics {
    pub connected: Gauge,
    pub connections: Counter,
    pub frames: Counter,
    pub bytes: Counter,
    pub last_frame_unix_ms: Gauge,
}

/// Per-chunk outcome tally that a worker fills and then adds in one go.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub events: [u64; Operation::ALL.len()],
    pub filtered: [u64; FilterReason::ALL.len()],
    /// (kind, count); parse errors are few, a short list beats a map.
    pub errors: Vec<(&'static str, u64)>,
    pub event_bytes: u64,
}

impl Tally {
    pub fn error(&mut self, kind: &'static str) {
        match self.errors.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, n)) => *n += 1,
            None => self.errors.push((kind, 1)),
        }
    }
}

/// One cluster.
#[derive(Debug)]
pub struct ClusterMetrics {
    pub name: Arc<str>,
    pub connections: Gauge,
    pub frames: Counter,
    pub bytes: Counter,
    pub events: [Counter; Operation::ALL.len()],
    pub filtered: [Counter; FilterReason::ALL.len()],
    pub parse_errors: Mutex<BTreeMap<&'static str, u64>>,
    pub batches: Counter,
    /// Events that could not be kept: only a broken spool at a forced shutdown
    /// gets here, and each case is logged as an error. Should stay 0.
    pub events_lost: Counter,
    pub last_event_unix_ms: Gauge,
    /// End-to-end latency of the cluster's events (receipt of a frame to
    /// acknowledgement of its batch), for `/stats` and `qbroker top`.
    pub latency: LatencyBuckets,
    nodes: Mutex<BTreeMap<Arc<str>, Arc<NodeMetrics>>>,
}

/// Buckets of [`LatencyBuckets`] with a finite upper bound; one more takes
/// what is above the last.
pub const CLUSTER_LATENCY_BUCKETS: usize = 88;

/// Upper bound of bucket `i` of [`LatencyBuckets`], in microseconds: 1 ms
/// times 2^(i/4), from 1 ms to about 56 minutes, each bound about 19 % above
/// the one before; `u64::MAX` for the last bucket.
pub fn cluster_latency_bound_us(i: usize) -> u64 {
    if i >= CLUSTER_LATENCY_BUCKETS {
        return u64::MAX;
    }
    (1000.0 * (i as f64 / 4.0).exp2()).round() as u64
}

/// A latency histogram of fixed, logarithmic buckets ([`cluster_latency_bound_us`]):
/// 89 counters, lock-free, whatever the traffic. Quantiles read from it are a
/// bucket's upper bound, within 19 % of the exact value.
#[derive(Debug)]
pub struct LatencyBuckets {
    counts: [AtomicU64; CLUSTER_LATENCY_BUCKETS + 1],
    max_us: AtomicU64,
}

impl Default for LatencyBuckets {
    fn default() -> Self {
        LatencyBuckets {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            max_us: AtomicU64::new(0),
        }
    }
}

impl LatencyBuckets {
    /// The bucket of a latency.
    fn bucket(us: u64) -> usize {
        if us <= 1000 {
            return 0;
        }
        let guess = (4.0 * (us as f64 / 1000.0).log2()).ceil().max(0.0) as usize;
        let mut i = guess.min(CLUSTER_LATENCY_BUCKETS);
        while i > 0 && cluster_latency_bound_us(i - 1) >= us {
            i -= 1;
        }
        while i < CLUSTER_LATENCY_BUCKETS && cluster_latency_bound_us(i) < us {
            i += 1;
        }
        i
    }

    /// Count `count` events of latency `us`.
    pub fn record(&self, us: u64, count: u64) {
        self.counts[Self::bucket(us)].fetch_add(count, Ordering::Relaxed);
        self.max_us.fetch_max(us, Ordering::Relaxed);
    }

    /// (bucket, count) of every bucket that counted something, in order.
    pub fn snapshot(&self) -> Vec<(u32, u64)> {
        self.counts
            .iter()
            .enumerate()
            .map(|(i, c)| (i as u32, c.load(Ordering::Relaxed)))
            .filter(|&(_, n)| n > 0)
            .collect()
    }

    /// The largest latency recorded, in microseconds.
    pub fn max_us(&self) -> u64 {
        self.max_us.load(Ordering::Relaxed)
    }
}

/// The upper bound, in microseconds, of the bucket that holds quantile `q`
/// of `buckets` ((bucket, count) in bucket order, as
/// [`LatencyBuckets::snapshot`] gives them); `None` when they count nothing.
pub fn buckets_quantile(buckets: &[(u32, u64)], q: f64) -> Option<u64> {
    let total: u64 = buckets.iter().map(|b| b.1).sum();
    if total == 0 {
        return None;
    }
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0;
    for &(i, n) in buckets {
        seen += n;
        if seen >= rank {
            return Some(cluster_latency_bound_us(i as usize));
        }
    }
    buckets
        .last()
        .map(|b| cluster_latency_bound_us(b.0 as usize))
}

impl ClusterMetrics {
    fn new(name: Arc<str>) -> ClusterMetrics {
        ClusterMetrics {
            name,
            connections: Gauge::default(),
            frames: Counter::default(),
            bytes: Counter::default(),
            events: Default::default(),
            filtered: Default::default(),
            parse_errors: Mutex::new(BTreeMap::new()),
            batches: Counter::default(),
            events_lost: Counter::default(),
            last_event_unix_ms: Gauge::default(),
            latency: LatencyBuckets::default(),
            nodes: Mutex::new(BTreeMap::new()),
        }
    }

    /// The counters of one node, created on first sight.
    pub fn node(&self, name: &str) -> Arc<NodeMetrics> {
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = nodes.get(name) {
            return n.clone();
        }
        let n = Arc::new(NodeMetrics::default());
        nodes.insert(Arc::from(name), n.clone());
        n
    }

    /// The counters of one node, unless the cluster has `max` nodes already: then
    /// those of [`OTHER_NODES`], and `true`. Node names come from the network, and
    /// each one is a metric label: their number must be bounded.
    pub fn node_bounded(&self, name: &str, max: usize) -> (Arc<NodeMetrics>, bool) {
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = nodes.get(name) {
            return (n.clone(), false);
        }
        let (name, over) = if nodes.len() >= max {
            (OTHER_NODES, true)
        } else {
            (name, false)
        };
        let n = nodes
            .entry(Arc::from(name))
            .or_insert_with(|| Arc::new(NodeMetrics::default()))
            .clone();
        (n, over)
    }

    pub fn nodes(&self) -> Vec<(Arc<str>, Arc<NodeMetrics>)> {
        let nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        nodes.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Add a worker's tally of one chunk.
    pub fn add(&self, tally: &Tally) {
        let mut any = false;
        for (counter, n) in self.events.iter().zip(tally.events) {
            counter.add(n);
            any |= n > 0;
        }
        for (counter, n) in self.filtered.iter().zip(tally.filtered) {
            counter.add(n);
        }
        if !tally.errors.is_empty() {
            let mut errors = self.parse_errors.lock().unwrap_or_else(|e| e.into_inner());
            for (kind, n) in &tally.errors {
                *errors.entry(kind).or_default() += n;
            }
        }
        if any {
            self.last_event_unix_ms.set(unix_ms());
        }
    }

    pub fn events_total(&self) -> u64 {
        self.events.iter().map(Counter::get).sum()
    }

    pub fn parse_errors_total(&self) -> u64 {
        let errors = self.parse_errors.lock().unwrap_or_else(|e| e.into_inner());
        errors.values().sum()
    }
}

/// One delivery target.
#[derive(Debug, Default)]
pub struct TargetMetrics {
    pub requests: Counter,
    pub batches_delivered: Counter,
    pub events_delivered: Counter,
    pub bytes_sent: Counter,
    pub retries: Counter,
    pub failures_connect: Counter,
    /// TLS handshakes that failed (the target's certificate untrusted,
    /// expired or for another name); not in `failures_connect`. A client
    /// certificate the target refuses shows as a connect failure under TLS
    /// 1.3, whose refusal comes after the handshake.
    pub failures_tls: Counter,
    pub failures_timeout: Counter,
    pub failures_status: Counter,
    pub throttled: Counter,
    pub batches_dead_lettered: Counter,
    pub events_dead_lettered: Counter,
    /// Batches (or parts) refused as too large (413) and sent in two halves.
    pub batches_split: Counter,
    /// Refused batches the dead-letter directory could not take (kept in the spool).
    pub dead_letter_failures: Counter,
    pub in_flight: Gauge,
    pub last_success_unix_ms: Gauge,
    /// 1 while the last attempt failed, 0 once one succeeds.
    pub failing: Gauge,
    /// 1 while RabbitMQ blocks publishing to an AMQP target (memory or disk alarm).
    pub blocked: Gauge,
    /// Why the last failed attempt failed, and when (Unix ms); for the target
    /// views. Kept after a success, with `failing` telling whether it is current.
    pub last_error: std::sync::Mutex<Option<(String, i64)>>,
}

impl TargetMetrics {
    pub fn set_last_error(&self, reason: &str) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((reason.to_string(), unix_ms()));
    }

    pub fn last_error(&self) -> Option<(String, i64)> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Every metric of one broker.
pub struct Metrics {
    pub ingest: IngestMetrics,
    pub pool: PoolMetrics,
    pub api: ApiMetrics,
    pub enrich: Arc<EnrichMetrics>,
    clusters: RwLock<BTreeMap<Arc<str>, Arc<ClusterMetrics>>>,
    targets: RwLock<BTreeMap<String, Arc<TargetMetrics>>>,
    /// End-to-end latency, receipt of a frame to acknowledgement of its batch, in
    /// microseconds: exact quantiles for people (`latency_quantiles`)...
    latency: Mutex<Histogram<u64>>,
    /// ...and the Prometheus histogram: events per bucket of
    /// [`LATENCY_BUCKETS_SECONDS`] (not cumulative; the last is +Inf), and the
    /// sum in microseconds.
    latency_buckets: [AtomicU64; LATENCY_BUCKETS_SECONDS.len() + 1],
    latency_sum_us: AtomicU64,
    /// When the process started, for `process_start_time_seconds`.
    started_unix_s: f64,
    /// The stages' own parts of the page, in the order they registered.
    parts: RwLock<Vec<Arc<dyn Render>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics {
            ingest: IngestMetrics::default(),
            pool: PoolMetrics::default(),
            api: ApiMetrics::default(),
            enrich: Arc::default(),
            clusters: RwLock::new(BTreeMap::new()),
            targets: RwLock::new(BTreeMap::new()),
            // One hour at three significant digits: a few tens of KiB.
            latency: Mutex::new(
                Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds"),
            ),
            latency_buckets: Default::default(),
            latency_sum_us: AtomicU64::new(0),
            started_unix_s: unix_ms() as f64 / 1000.0,
            parts: RwLock::new(Vec::new()),
        }
    }

    /// Add a stage's part to the page ([`Metrics::render`]).
    pub fn register(&self, part: Arc<dyn Render>) {
        self.parts
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(part);
    }

    pub fn cluster(&self, name: &str) -> Arc<ClusterMetrics> {
        if let Some(c) = self
            .clusters
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
        {
            return c.clone();
        }
        let mut clusters = self.clusters.write().unwrap_or_else(|e| e.into_inner());
        clusters
            .entry(Arc::from(name))
            .or_insert_with(|| Arc::new(ClusterMetrics::new(Arc::from(name))))
            .clone()
    }

    pub fn clusters(&self) -> Vec<Arc<ClusterMetrics>> {
        let clusters = self.clusters.read().unwrap_or_else(|e| e.into_inner());
        clusters.values().cloned().collect()
    }

    pub fn target(&self, name: &str) -> Arc<TargetMetrics> {
        let mut targets = self.targets.write().unwrap_or_else(|e| e.into_inner());
        targets.entry(name.to_string()).or_default().clone()
    }

    /// Forget a cluster that was forgotten by ingest (idle, known only by its
    /// HOSTNAME): its series leave the page.
    pub fn remove_cluster(&self, name: &str) {
        let mut clusters = self.clusters.write().unwrap_or_else(|e| e.into_inner());
        clusters.remove(name);
    }

    /// Forget a target that was removed (a deleted registration, drained):
    /// its series leave the page. A target of that name later starts again
    /// from zero, which Prometheus reads as a counter reset.
    pub fn remove_target(&self, name: &str) {
        let mut targets = self.targets.write().unwrap_or_else(|e| e.into_inner());
        targets.remove(name);
    }

    /// Record the latency of a batch of `cluster` acknowledged at `acked_us`:
    /// `received` holds (receipt time, events) of each chunk it has events
    /// of. A cluster with no metrics (forgotten since) counts in the
    /// broker's histogram only.
    pub fn record_latency(&self, cluster: &str, received: &[(u64, u32)], acked_us: u64) {
        let per_cluster = self
            .clusters
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(cluster)
            .cloned();
        let mut h = self.latency.lock().unwrap_or_else(|e| e.into_inner());
        for &(at, count) in received {
            let us = acked_us.saturating_sub(at).clamp(1, h.high());
            if let Some(c) = &per_cluster {
                c.latency.record(us, u64::from(count));
            }
            let _ = h.record_n(us, u64::from(count));
            let secs = us as f64 / 1e6;
            let bucket = LATENCY_BUCKETS_SECONDS
                .iter()
                .position(|&le| secs <= le)
                .unwrap_or(LATENCY_BUCKETS_SECONDS.len());
            self.latency_buckets[bucket].fetch_add(u64::from(count), Ordering::Relaxed);
            self.latency_sum_us
                .fetch_add(us * u64::from(count), Ordering::Relaxed);
        }
    }

    /// (quantile, microseconds) for the given quantiles, and the count.
    pub fn latency_quantiles(&self, quantiles: &[f64]) -> (Vec<(f64, u64)>, u64) {
        let h = self.latency.lock().unwrap_or_else(|e| e.into_inner());
        let q = quantiles
            .iter()
            .map(|&q| (q, h.value_at_quantile(q)))
            .collect();
        (q, h.len())
    }
}

/// The HTTPS API's requests. Labels are bounded: the route is one of the
/// API's path patterns (or `other`), the method one of five (or `other`), the
/// status one the API answers.
#[derive(Debug, Default)]
pub struct ApiMetrics {
    requests: Mutex<BTreeMap<(&'static str, &'static str, u16), u64>>,
    /// Answers 401: a missing, wrong or rate-limited credential.
    pub auth_failures: Counter,
}

impl ApiMetrics {
    /// Count one answered request.
    pub fn request(&self, route: &'static str, method: &str, status: u16) {
        let method = match method {
            "GET" => "GET",
            "POST" => "POST",
            "PATCH" => "PATCH",
            "DELETE" => "DELETE",
            "PUT" => "PUT",
            _ => "other",
        };
        let mut r = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *r.entry((route, method, status)).or_default() += 1;
        if status == 401 {
            self.auth_failures.inc();
        }
    }
}

/// Upper bounds of the end-to-end latency histogram's buckets, in seconds.
pub const LATENCY_BUCKETS_SECONDS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// A part of the `/metrics` page: the series of one stage, which the stage
/// renders itself (with [`header`] and [`esc`]) and registers with
/// [`Metrics::register`]. This module names no stage: the parts it renders are
/// the counters defined here.
pub trait Render: Send + Sync {
    /// Append the part's families, in the Prometheus text exposition format.
    fn render(&self, out: &mut String);
}

impl<F: Fn(&mut String) + Send + Sync> Render for F {
    fn render(&self, out: &mut String) {
        self(out)
    }
}

impl Metrics {
    /// Render everything in the Prometheus text exposition format: the
    /// counters of this module, then the registered parts, then the latency,
    /// the API, the process and the build.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        render_ingest(&mut out, &self.ingest);
        render_pool(&mut out, &self.pool);
        render_clusters(&mut out, &self.clusters());
        render_targets(&mut out, self);
        let parts = self.parts.read().unwrap_or_else(|e| e.into_inner()).clone();
        for part in parts {
            part.render(&mut out);
        }
        render_latency(&mut out, self);
        render_api(&mut out, &self.api);
        render_process(&mut out, self.started_unix_s);
        header(
            &mut out,
            "qbroker_build_info",
            "gauge",
            "The running build: its version (always 1).",
        );
        let _ = writeln!(
            out,
            "qbroker_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        out
    }
}

/// The listener's and the readers' counters.
fn render_ingest(out: &mut String, i: &IngestMetrics) {
    let simple: [(&str, &str, &str, i64); 13] = [
        ("qbroker_connections_accepted_total", "counter", "Syslog connections accepted.", i.connections_accepted.get() as i64),
        ("qbroker_connections_active", "gauge", "Syslog connections open now.", i.connections_active.get()),
        ("qbroker_connections_refused_allowlist_total", "counter", "Connections closed at once: source not in ingest.allow_sources.", i.refused_allowlist.get() as i64),
        ("qbroker_connections_refused_limit_total", "counter", "Connections closed at once: ingest.max_connections reached.", i.refused_limit.get() as i64),
        ("qbroker_accept_errors_total", "counter", "Errors accepting connections (the listener backs off).", i.accept_errors.get() as i64),
        ("qbroker_first_frame_timeouts_total", "counter", "Connections closed before sending a complete first frame in time.", i.first_frame_timeouts.get() as i64),
        ("qbroker_connections_unroutable_total", "counter", "Connections closed: their cluster has no target.", i.unroutable.get() as i64),
        ("qbroker_idle_timeouts_total", "counter", "Connections closed after ingest.idle_timeout_secs without data.", i.idle_timeouts.get() as i64),
        ("qbroker_read_errors_total", "counter", "Connections ended by a read error.", i.read_errors.get() as i64),
        ("qbroker_reader_panics_total", "counter", "Connection readers that panicked (the connection was closed, the broker kept running).", i.reader_panics.get() as i64),
        ("qbroker_frames_oversize_total", "counter", "Frames over ingest.max_frame_bytes, skipped.", i.oversize_frames.get() as i64),
        ("qbroker_frames_partial_total", "counter", "Incomplete frames cut off by the end of a connection.", i.partial_frames.get() as i64),
        ("qbroker_reading_paused_total", "counter", "Times a reader paused because the work queue was full.", i.paused.get() as i64),
    ];
    for (name, kind, help, value) in simple {
        header(out, name, kind, help);
        let _ = writeln!(out, "{name} {value}");
    }
    header(
        out,
        "qbroker_cluster_unroutable_total",
        "counter",
        "Connections (or stdin lines) refused, by the cluster they named: no target, or the cluster table full. The first 64 names have their own series, the rest count under cluster=\"~other\".",
    );
    for (cluster, n) in i
        .unroutable_clusters
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
    {
        let _ = writeln!(
            out,
            "qbroker_cluster_unroutable_total{{cluster=\"{}\"}} {n}",
            esc(cluster)
        );
    }
    let hostile: [(&str, &str, u64); 7] = [
        ("qbroker_connections_refused_source_limit_total", "Connections closed at once: ingest.max_connections_per_source reached.", i.refused_source_limit.get()),
        ("qbroker_frame_timeouts_total", "Connections closed: a frame not complete within ingest.frame_timeout_secs.", i.frame_timeouts.get()),
        ("qbroker_connections_closed_bad_frames_total", "Connections closed: bad frames outnumbered good ones by ingest.max_bad_frames.", i.closed_bad_frames.get()),
        ("qbroker_connections_closed_frame_overrun_total", "Connections closed: a frame longer than ingest.max_oversize_frame_bytes.", i.closed_frame_overrun.get()),
        ("qbroker_tls_handshake_failures_total", "TLS syslog connections whose handshake failed or timed out.", i.tls_handshake_failures.get()),
        ("qbroker_invalid_hostnames_total", "First-frame HOSTNAMEs not used as node names (not 1 to 255 printable ASCII characters).", i.invalid_hostnames.get()),
        ("qbroker_nodes_over_limit_total", "Connections counted under node=\"~other\": ingest.max_nodes_per_cluster reached.", i.nodes_over_limit.get()),
    ];
    for (name, help, value) in hostile {
        header(out, name, "counter", help);
        let _ = writeln!(out, "{name} {value}");
    }
}

/// The work queue: the admission gate's usage (registered by whoever holds the
/// gate).
pub fn render_queue(out: &mut String, q: &Usage) {
    for (name, help, value) in [
        (
            "qbroker_queue_messages",
            "Frames in the work queue or being converted.",
            q.msgs,
        ),
        (
            "qbroker_queue_bytes",
            "Bytes of frames in the work queue or being converted.",
            q.bytes,
        ),
        ("qbroker_queue_capacity_messages", "queue.size.", q.cap_msgs),
        (
            "qbroker_queue_capacity_bytes",
            "queue.max_bytes.",
            q.cap_bytes,
        ),
        (
            "qbroker_queue_waiting_readers",
            "Readers paused on a full queue.",
            q.waiters,
        ),
    ] {
        header(out, name, "gauge", help);
        let _ = writeln!(out, "{name} {value}");
    }
}

/// The parse pool's counters.
fn render_pool(out: &mut String, p: &PoolMetrics) {
    for (name, help, value) in [
        (
            "qbroker_pool_chunks_total",
            "Chunks of frames converted by the parse pool.",
            p.chunks.get(),
        ),
        (
            "qbroker_pool_panics_total",
            "Panics caught while converting (the frame went to the dead-letter file).",
            p.worker_panics.get(),
        ),
        (
            "qbroker_pool_workers_restarted_total",
            "Parse worker threads replaced after dying.",
            p.workers_restarted.get(),
        ),
        (
            "qbroker_dead_letter_errors_total",
            "Failures writing the dead-letter files.",
            p.dead_letter_errors.get(),
        ),
    ] {
        header(out, name, "counter", help);
        let _ = writeln!(out, "{name} {value}");
    }
}

/// The clusters' and their nodes' counters.
fn render_clusters(out: &mut String, clusters: &[Arc<ClusterMetrics>]) {
    header(
        out,
        "qbroker_cluster_connections",
        "gauge",
        "Open connections per cluster.",
    );
    for c in clusters {
        let _ = writeln!(
            out,
            "qbroker_cluster_connections{{cluster=\"{}\"}} {}",
            esc(&c.name),
            c.connections.get()
        );
    }
    header(
        out,
        "qbroker_cluster_frames_total",
        "counter",
        "Frames received per cluster.",
    );
    for c in clusters {
        let _ = writeln!(
            out,
            "qbroker_cluster_frames_total{{cluster=\"{}\"}} {}",
            esc(&c.name),
            c.frames.get()
        );
    }
    header(
        out,
        "qbroker_cluster_bytes_total",
        "counter",
        "Bytes of frames received per cluster.",
    );
    for c in clusters {
        let _ = writeln!(
            out,
            "qbroker_cluster_bytes_total{{cluster=\"{}\"}} {}",
            esc(&c.name),
            c.bytes.get()
        );
    }
    header(
        out,
        "qbroker_cluster_events_total",
        "counter",
        "Events produced per cluster and Varonis operation.",
    );
    for c in clusters {
        for op in Operation::ALL {
            let n = c.events[op.index()].get();
            if n > 0 {
                let _ = writeln!(
                    out,
                    "qbroker_cluster_events_total{{cluster=\"{}\",operation=\"{}\"}} {n}",
                    esc(&c.name),
                    op.as_str()
                );
            }
        }
    }
    header(
        out,
        "qbroker_cluster_filtered_total",
        "counter",
        "Frames dropped by the filter, per cluster and reason.",
    );
    for c in clusters {
        for r in FilterReason::ALL {
            let _ = writeln!(
                out,
                "qbroker_cluster_filtered_total{{cluster=\"{}\",reason=\"{}\"}} {}",
                esc(&c.name),
                r.as_str(),
                c.filtered[r.index()].get()
            );
        }
    }
    header(
        out,
        "qbroker_cluster_parse_errors_total",
        "counter",
        "Frames that could not be parsed (kept in the dead-letter file), per cluster and kind.",
    );
    for c in clusters {
        let errors = c.parse_errors.lock().unwrap_or_else(|e| e.into_inner());
        for (kind, n) in errors.iter() {
            let _ = writeln!(
                out,
                "qbroker_cluster_parse_errors_total{{cluster=\"{}\",kind=\"{kind}\"}} {n}",
                esc(&c.name)
            );
        }
    }
    header(
        out,
        "qbroker_cluster_batches_total",
        "counter",
        "Batches sealed per cluster.",
    );
    for c in clusters {
        let _ = writeln!(
            out,
            "qbroker_cluster_batches_total{{cluster=\"{}\"}} {}",
            esc(&c.name),
            c.batches.get()
        );
    }
    header(
        out,
        "qbroker_cluster_last_event_timestamp_seconds",
        "gauge",
        "When the cluster's last event was produced.",
    );
    for c in clusters {
        let _ = writeln!(
            out,
            "qbroker_cluster_last_event_timestamp_seconds{{cluster=\"{}\"}} {:.3}",
            esc(&c.name),
            c.last_event_unix_ms.get() as f64 / 1000.0
        );
    }
    header(
        out,
        "qbroker_node_connected",
        "gauge",
        "Open connections per node.",
    );
    header(
        out,
        "qbroker_node_frames_total",
        "counter",
        "Frames received per node.",
    );
    header(
        out,
        "qbroker_node_bytes_total",
        "counter",
        "Bytes received per node.",
    );
    for c in clusters {
        for (node, n) in c.nodes() {
            let labels = format!("cluster=\"{}\",node=\"{}\"", esc(&c.name), esc(&node));
            let _ = writeln!(
                out,
                "qbroker_node_connected{{{labels}}} {}",
                n.connected.get()
            );
            let _ = writeln!(
                out,
                "qbroker_node_frames_total{{{labels}}} {}",
                n.frames.get()
            );
            let _ = writeln!(
                out,
                "qbroker_node_bytes_total{{{labels}}} {}",
                n.bytes.get()
            );
        }
    }
}

/// The targets' delivery counters.
fn render_targets(out: &mut String, m: &Metrics) {
    let targets: Vec<(String, Arc<TargetMetrics>)> = {
        let t = m.targets.read().unwrap_or_else(|e| e.into_inner());
        t.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    };
    type Pick = fn(&TargetMetrics) -> i64;
    let per_target: [(&str, &str, &str, Pick); 14] = [
        (
            "qbroker_target_requests_total",
            "counter",
            "HTTP requests sent.",
            |t| t.requests.get() as i64,
        ),
        (
            "qbroker_target_batches_delivered_total",
            "counter",
            "Batches acknowledged with 2xx.",
            |t| t.batches_delivered.get() as i64,
        ),
        (
            "qbroker_target_events_delivered_total",
            "counter",
            "Events in acknowledged batches.",
            |t| t.events_delivered.get() as i64,
        ),
        (
            "qbroker_target_bytes_sent_total",
            "counter",
            "Body bytes of acknowledged batches, as sent.",
            |t| t.bytes_sent.get() as i64,
        ),
        (
            "qbroker_target_retries_total",
            "counter",
            "Attempts that will be retried.",
            |t| t.retries.get() as i64,
        ),
        (
            "qbroker_target_throttled_total",
            "counter",
            "Attempts answered 429.",
            |t| t.throttled.get() as i64,
        ),
        (
            "qbroker_target_batches_dead_lettered_total",
            "counter",
            "Batches refused for good (4xx) and kept in the dead-letter directory.",
            |t| t.batches_dead_lettered.get() as i64,
        ),
        (
            "qbroker_target_events_dead_lettered_total",
            "counter",
            "Events in dead-lettered batches.",
            |t| t.events_dead_lettered.get() as i64,
        ),
        (
            "qbroker_target_batches_split_total",
            "counter",
            "Batches refused as too large (413) and sent again in two halves.",
            |t| t.batches_split.get() as i64,
        ),
        (
            "qbroker_target_dead_letter_failures_total",
            "counter",
            "Refused batches the dead-letter directory could not take (at its cap, or a write error): they stay in the spool and the target is paused.",
            |t| t.dead_letter_failures.get() as i64,
        ),
        (
            "qbroker_target_in_flight",
            "gauge",
            "Requests in flight.",
            |t| t.in_flight.get(),
        ),
        (
            "qbroker_target_failing",
            "gauge",
            "1 while the last attempt failed.",
            |t| t.failing.get(),
        ),
        (
            "qbroker_target_blocked",
            "gauge",
            "1 while RabbitMQ blocks publishing (memory or disk alarm).",
            |t| t.blocked.get(),
        ),
        (
            "qbroker_target_last_success_timestamp_seconds",
            "gauge",
            "When the last batch was acknowledged, in whole seconds.",
            |t| t.last_success_unix_ms.get() / 1000,
        ),
    ];
    for (name, kind, help, pick) in per_target {
        header(out, name, kind, help);
        for (target, t) in &targets {
            let _ = writeln!(out, "{name}{{target=\"{}\"}} {}", esc(target), pick(t));
        }
    }
    header(
        out,
        "qbroker_target_failures_total",
        "counter",
        "Failed attempts, by kind: connect (TCP or the connection), tls (the TLS handshake: the target's certificate not trusted, expired or for another name), timeout (no answer within timeout_secs), status (a non-2xx answer).",
    );
    for (target, t) in &targets {
        for (kind, c) in [
            ("connect", &t.failures_connect),
            ("tls", &t.failures_tls),
            ("timeout", &t.failures_timeout),
            ("status", &t.failures_status),
        ] {
            let _ = writeln!(
                out,
                "qbroker_target_failures_total{{target=\"{}\",kind=\"{kind}\"}} {}",
                esc(target),
                c.get()
            );
        }
    }
}

/// The end-to-end latency histogram.
fn render_latency(out: &mut String, m: &Metrics) {
    header(
        out,
        "qbroker_event_latency_seconds",
        "histogram",
        "Receipt of a frame to acknowledgement of its batch (per event).",
    );
    let mut cumulative = 0u64;
    for (i, le) in LATENCY_BUCKETS_SECONDS.iter().enumerate() {
        cumulative += m.latency_buckets[i].load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "qbroker_event_latency_seconds_bucket{{le=\"{le}\"}} {cumulative}"
        );
    }
    cumulative += m.latency_buckets[LATENCY_BUCKETS_SECONDS.len()].load(Ordering::Relaxed);
    let _ = writeln!(
        out,
        "qbroker_event_latency_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
    );
    let _ = writeln!(
        out,
        "qbroker_event_latency_seconds_sum {:.6}",
        m.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6
    );
    let _ = writeln!(out, "qbroker_event_latency_seconds_count {cumulative}");
}

/// The HTTPS API's requests.
fn render_api(out: &mut String, api: &ApiMetrics) {
    header(
        out,
        "qbroker_api_requests_total",
        "counter",
        "Requests the HTTPS API answered, by route pattern, method and status.",
    );
    for ((route, method, status), n) in api
        .requests
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
    {
        let _ = writeln!(
            out,
            "qbroker_api_requests_total{{route=\"{}\",method=\"{method}\",code=\"{status}\"}} {n}",
            esc(route)
        );
    }
    header(
        out,
        "qbroker_api_auth_failures_total",
        "counter",
        "API requests refused for their credentials (401).",
    );
    let _ = writeln!(
        out,
        "qbroker_api_auth_failures_total {}",
        api.auth_failures.get()
    );
}

/// The soft limit on open files (RLIMIT_NOFILE), from /proc on Linux.
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// The standard `process_*` metrics (Prometheus client conventions), from
/// /proc/self on Linux; none elsewhere.
fn render_process(out: &mut String, started_unix_s: f64) {
    let tck = 100.0; // USER_HZ on Linux
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the command name (which may hold spaces) in parentheses.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of stat, 12 and 13 here.
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        header(
            out,
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time spent, in seconds.",
        );
        let _ = writeln!(
            out,
            "process_cpu_seconds_total {:.2}",
            (ticks(11) + ticks(12)) / tck
        );
        header(
            out,
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
        );
        let _ = writeln!(out, "process_virtual_memory_bytes {}", ticks(20) as u64);
    }
    // VmRSS in kB: no page size to assume.
    let rss_kib = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse::<u64>()
                .ok()
        });
    if let Some(kib) = rss_kib {
        header(
            out,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
        );
        let _ = writeln!(out, "process_resident_memory_bytes {}", kib * 1024);
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        header(out, "process_open_fds", "gauge", "Open file descriptors.");
        let _ = writeln!(out, "process_open_fds {}", fds.count());
    }
    if let Some(max) = open_files_limit() {
        header(out, "process_max_fds", "gauge", "The open-file limit.");
        let _ = writeln!(out, "process_max_fds {max}");
    }
    header(
        out,
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since the Unix epoch, in seconds.",
    );
    let _ = writeln!(out, "process_start_time_seconds {started_unix_s:.3}");
}

/// The `# HELP` and `# TYPE` lines of a family.
pub fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Escape a label value.
pub fn esc(value: &str) -> String {
    let mut s = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_labels_escaped_and_latency_quantiles() {
        let m = Metrics::new();
        let c = m.cluster("we\"ird\\name");
        c.frames.add(3);
        let mut tally = Tally::default();
        tally.events[Operation::FileRead.index()] = 2;
        tally.filtered[FilterReason::Operation.index()] = 1;
        tally.error("header");
        tally.error("header");
        c.add(&tally);
        c.node("we-1").frames.add(3);
        m.target("v").batches_delivered.inc();
        m.record_latency(
            "we\"ird\\name",
            &[(1_000_000, 10), (1_500_000, 10)],
            2_000_000,
        );
        // A cluster without metrics counts in the broker's histogram only.
        m.record_latency("gone", &[(1_000_000, 1)], 1_000_500);
        assert!(m.clusters().iter().all(|c| &*c.name != "gone"));
        let b = c.latency.snapshot();
        assert_eq!(b.iter().map(|b| b.1).sum::<u64>(), 20);
        assert_eq!(c.latency.max_us(), 1_000_000);
        m.register(Arc::new(|out: &mut String| {
            render_queue(
                out,
                &Usage {
                    msgs: 1,
                    bytes: 2,
                    cap_msgs: 3,
                    cap_bytes: 4,
                    active_clusters: 0,
                    waiters: 0,
                },
            )
        }));
        let text = m.render();
        assert!(
            text.contains("qbroker_cluster_frames_total{cluster=\"we\\\"ird\\\\name\"} 3"),
            "{text}"
        );
        assert!(text.contains("operation=\"file.read\"} 2"));
        assert!(text.contains("reason=\"operation\"} 1"));
        assert!(text.contains("kind=\"header\"} 2"));
        assert!(text.contains("qbroker_target_batches_delivered_total{target=\"v\"} 1"));
        assert!(text.contains("qbroker_event_latency_seconds_count 21"));
        // A histogram: 10 events at 0.5 s, 10 at 1 s.
        for line in [
            "qbroker_event_latency_seconds_bucket{le=\"0.005\"} 1",
            "qbroker_event_latency_seconds_bucket{le=\"0.25\"} 1",
            "qbroker_event_latency_seconds_bucket{le=\"0.5\"} 11",
            "qbroker_event_latency_seconds_bucket{le=\"1\"} 21",
            "qbroker_event_latency_seconds_bucket{le=\"+Inf\"} 21",
            "qbroker_event_latency_seconds_sum 15.000500",
        ] {
            assert!(text.contains(line), "{line}\n{text}");
        }
        assert!(text.contains(&format!(
            "qbroker_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )));
        assert!(text.contains("\nprocess_resident_memory_bytes "));
        assert!(text.contains("\nprocess_cpu_seconds_total "));
        assert!(text.contains("qbroker_queue_capacity_bytes 4"));
        // Every sample line belongs to a declared metric family.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            let family = name
                .trim_end_matches("_count")
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum");
            assert!(text.contains(&format!("# TYPE {family} ")), "{line}");
        }
    }

    #[test]
    fn cluster_latency_buckets_bound_each_latency_within_a_fifth() {
        assert_eq!(cluster_latency_bound_us(0), 1000);
        assert_eq!(cluster_latency_bound_us(4), 2000);
        assert_eq!(cluster_latency_bound_us(40), 1_024_000);
        assert!(cluster_latency_bound_us(CLUSTER_LATENCY_BUCKETS - 1) > 3_000_000_000);
        for us in [
            1,
            999,
            1000,
            1001,
            1189,
            1190,
            25_000,
            999_999,
            3_600_000_000,
            u64::MAX / 2,
        ] {
            let i = LatencyBuckets::bucket(us);
            assert!(cluster_latency_bound_us(i) >= us, "{us} in {i}");
            if i > 0 {
                assert!(cluster_latency_bound_us(i - 1) < us, "{us} in {i}");
            }
            if i > 0 && i < CLUSTER_LATENCY_BUCKETS {
                assert!(
                    cluster_latency_bound_us(i) as f64 <= us as f64 * 1.2,
                    "{us} in {i}"
                );
            }
        }
        let b = LatencyBuckets::default();
        assert_eq!(buckets_quantile(&b.snapshot(), 0.99), None);
        b.record(20_000, 98);
        b.record(200_000, 2);
        let snap = b.snapshot();
        assert_eq!(snap.len(), 2);
        let p50 = buckets_quantile(&snap, 0.5).unwrap();
        let p99 = buckets_quantile(&snap, 0.99).unwrap();
        assert!((20_000..24_000).contains(&p50), "{p50}");
        assert!((200_000..240_000).contains(&p99), "{p99}");
        assert_eq!(b.max_us(), 200_000);
    }
}
