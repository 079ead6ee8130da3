//! enrich: permission and protection events from the clusters' REST APIs.
//!
//! Stage: beside the batcher. Qumulo's `fs_write_metadata` audit record says only
//! the owner before and after. For a cluster with API credentials, the batcher
//! hands each successful metadata change (in arrival order, see [`order`]) to
//! this stage as a [`Job`], without waiting: a bounded channel, `try_send`. An
//! async task per cluster reads the file's ACL (`GET /v2/files/{id}/info/acl`,
//! and `/v1/files/{id}/info/attributes` when the type is unknown), with at most
//! `enrich.in_flight` requests at once (a job still waiting for a slot
//! `enrich.timeout_ms` after its event was read is not looked up), diffs it against the last ACL seen for
//! that file (an LRU of `enrich.acl_cache_entries`), and renders the events:
//!
//! - `*.owner_change` when `before.owner` differs from `after.owner` (with `owner`);
//! - `*.protection_add` / `*.protection_remove` when `PROTECTED` was set / cleared,
//!   with `"acl":{"protected":true|false}`;
//! - `*.permissions_remove` with `"acl":{"removed":[ACE,...]}` for explicit ACEs
//!   that went away, then `*.permissions_add` with `"acl":{"added":[ACE,...]}`;
//!   an ACE is `{"type","trustee":{"domain","auth_id","sid","name"[,"uid"][,"gid"]},
//!   "rights":[...],"flags":[...]}` (rights and flags sorted, `INHERITED` ACEs
//!   never listed).
//!
//! All the events of one record carry its `seq`, and go out in that order. When
//! the ACL cannot be compared (first sight of the file, an API error or timeout,
//! the queue full, shutdown) or nothing changed, the record's generic event goes
//! out instead, as it would without enrichment (`*.owner_change` or
//! `*.permissions_change`), and the reason is counted
//! (`qbroker_enrich_fallbacks_total`). Nothing is dropped: a result is handed back
//! through one completion thread, which appends it to the cluster's batcher
//! (and may wait there on a full spool, which an async task must not).
//!
//! Owns: the REST clients, the ACL caches, the lookups and `EnrichMetrics`'
//! page ([`Series`]). May touch: config and metrics only; results go back
//! through [`Completions`] (the batcher implements it), so this module names no
//! batcher.

pub mod acl;
pub mod client;
pub mod lru;
pub mod order;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, RwLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Semaphore};
use tracing::warn;

use crate::config::{ApiConfig, Config, EnrichConfig};
use crate::metrics::{EnrichMetrics, RateLimit};
use crate::parse::{EventInfo, Operation};
use acl::{Acl, AclDiff};
use client::{ApiClient, ClientSetupError};
use lru::Lru;

pub use order::Order;

static API_ERROR_LOG: RateLimit = RateLimit::new(Duration::from_secs(10), 3);

/// Why a metadata change of an enriched cluster went out as its generic event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// First ACL seen for the file: nothing to compare with (the ACL is now cached).
    NoBaseline,
    /// The ACL and the owner are as before (a change of mode bits that Qumulo
    /// keeps outside the ACL, times, attributes).
    Unchanged,
    Timeout,
    ApiError,
    /// The cluster's enrichment queue was full.
    QueueFull,
    /// The broker was shutting down.
    Shutdown,
}

impl Fallback {
    pub const ALL: [Fallback; 6] = [
        Fallback::NoBaseline,
        Fallback::Unchanged,
        Fallback::Timeout,
        Fallback::ApiError,
        Fallback::QueueFull,
        Fallback::Shutdown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Fallback::NoBaseline => "no_baseline",
            Fallback::Unchanged => "unchanged",
            Fallback::Timeout => "timeout",
            Fallback::ApiError => "api_error",
            Fallback::QueueFull => "queue_full",
            Fallback::Shutdown => "shutdown",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// One event as the batcher holds it while it waits (behind an enrichment, or
/// as the enrichment's subject).
#[derive(Debug, Clone)]
pub struct Held {
    pub bytes: Vec<u8>,
    pub received_us: u64,
    pub info: EventInfo,
    /// The operation, for events whose operation the batcher tallies (those with
    /// a hint that can change it); `None` for events the worker tallied.
    pub op: Option<Operation>,
}

impl Held {
    /// The file id, as written in the event.
    pub fn file_id(&self) -> &str {
        let (a, b) = self.info.file_id_span;
        std::str::from_utf8(&self.bytes[a as usize..b as usize]).unwrap_or("")
    }
}

/// `ev` rewritten as operation `op` (which also sets `object_type`), with
/// `"acl":` + `acl` before `qumulo_operation` when given, and its `owner` kept
/// only when `keep_owner`.
pub fn render(ev: &Held, op: Operation, acl: Option<&[u8]>, keep_owner: bool) -> Vec<u8> {
    let b = &ev.bytes;
    let (op0, op1) = (ev.info.op_span.0 as usize, ev.info.op_span.1 as usize);
    let (ow0, ow1) = (ev.info.owner_span.0 as usize, ev.info.owner_span.1 as usize);
    let mut out = Vec::with_capacity(b.len() + acl.map_or(0, |a| a.len() + 8) + 16);
    out.extend_from_slice(&b[..op0]);
    out.extend_from_slice(b"\"operation\":\"");
    out.extend_from_slice(op.as_str().as_bytes());
    out.extend_from_slice(if op.is_directory() {
        b"\",\"object_type\":\"directory\""
    } else {
        b"\",\"object_type\":\"file\""
    });
    out.extend_from_slice(&b[op1..ow0]);
    if keep_owner {
        out.extend_from_slice(&b[ow0..ow1]);
    }
    if let Some(acl) = acl {
        out.extend_from_slice(b",\"acl\":");
        out.extend_from_slice(acl);
    }
    out.extend_from_slice(&b[ow1..]);
    out
}

/// The events of one resolved metadata change, in the order they go out.
pub fn events_for(
    ev: &Held,
    directory: bool,
    owner_changed: bool,
    diff: &AclDiff,
) -> Vec<(Operation, Vec<u8>)> {
    let mut out = Vec::new();
    let mut push = |op: Operation, acl: Option<Vec<u8>>, keep_owner: bool| {
        let op = op.on(directory);
        out.push((op, render(ev, op, acl.as_deref(), keep_owner)));
    };
    if owner_changed {
        push(Operation::FileOwnerChange, None, true);
    }
    if let Some(protected) = diff.protection {
        let op = if protected {
            Operation::FileProtectionAdd
        } else {
            Operation::FileProtectionRemove
        };
        let acl = if protected {
            b"{\"protected\":true}".to_vec()
        } else {
            b"{\"protected\":false}".to_vec()
        };
        push(op, Some(acl), false);
    }
    if !diff.removed.is_empty() {
        let mut acl = b"{\"removed\":".to_vec();
        serde_json::to_writer(&mut acl, &diff.removed).expect("ACEs serialise");
        acl.push(b'}');
        push(Operation::FilePermissionsRemove, Some(acl), false);
    }
    if !diff.added.is_empty() {
        let mut acl = b"{\"added\":".to_vec();
        serde_json::to_writer(&mut acl, &diff.added).expect("ACEs serialise");
        acl.push(b'}');
        push(Operation::FilePermissionsAdd, Some(acl), false);
    }
    out
}

/// The generic event of `ev`, with its type set when it became known.
pub fn generic(ev: &Held, directory: Option<bool>) -> (Operation, Vec<u8>) {
    let op = ev.op.unwrap_or(Operation::FilePermissionsChange);
    match directory {
        Some(d) if d != op.is_directory() => {
            let op = op.on(d);
            (op, render(ev, op, None, true))
        }
        _ => (op, ev.bytes.clone()),
    }
}

/// How long ago an event read at `received_us` (Unix µs) was read.
fn held_for(received_us: u64) -> Duration {
    Duration::from_micros(crate::metrics::unix_us().saturating_sub(received_us))
}

/// A metadata change to look up.
pub struct Job {
    pub key: u64,
    pub id: u64,
    /// `Some` when the type is known (trailing `/` or the type cache).
    pub directory: Option<bool>,
    pub owner_changed: bool,
    /// `enrich.timeout_ms` counts from when this was read (`received_us`), so
    /// that a job whose event waited too long (behind its file's earlier
    /// lookups, or for a free request slot) is not looked up at all, and no
    /// event is held for longer than the timeout.
    pub event: Arc<Held>,
}

/// Enrichment's part of the `/metrics` page, registered with
/// [`Metrics::register`](crate::metrics::Metrics::register).
pub struct Series(pub Arc<EnrichMetrics>);

impl crate::metrics::Render for Series {
    fn render(&self, out: &mut String) {
        use crate::metrics::{header, Counter};
        use std::fmt::Write as _;
        let e = &*self.0;
        let counters: [(&str, &str, &Counter); 7] = [
            (
                "qbroker_enrich_jobs_total",
                "Metadata changes sent to the clusters' REST APIs.",
                &e.jobs,
            ),
            (
                "qbroker_enrich_logins_total",
                "Logins to the clusters' REST APIs.",
                &e.logins,
            ),
            (
                "qbroker_enrich_token_renewals_total",
                "Bearer tokens renewed (due, or refused with 401).",
                &e.token_renewals,
            ),
            (
                "qbroker_enrich_cache_hits_total",
                "ACL reads that found the file's earlier ACL cached.",
                &e.cache_hits,
            ),
            (
                "qbroker_enrich_cache_misses_total",
                "ACL reads with no earlier ACL of the file cached.",
                &e.cache_misses,
            ),
            (
                "qbroker_enrich_late_results_total",
                "ACL results that came after their file's enrichment was given up.",
                &e.late_results,
            ),
            (
                "qbroker_enrich_type_cache_hits_total",
                "Events whose file-or-directory type came from the type cache.",
                &e.type_cache_hits,
            ),
        ];
        for (name, help, c) in counters {
            header(out, name, "counter", help);
            let _ = writeln!(out, "{name} {}", c.get());
        }
        header(
            out,
            "qbroker_enrich_requests_total",
            "counter",
            "REST requests, by kind.",
        );
        for (kind, c) in [
            ("acl", &e.requests_acl),
            ("attributes", &e.requests_attributes),
        ] {
            let _ = writeln!(
                out,
                "qbroker_enrich_requests_total{{kind=\"{kind}\"}} {}",
                c.get()
            );
        }
        header(
            out,
            "qbroker_enrich_errors_total",
            "counter",
            "Failed REST requests, by kind.",
        );
        for (kind, c) in client::ApiError::KINDS.iter().zip(&e.errors) {
            let _ = writeln!(
                out,
                "qbroker_enrich_errors_total{{kind=\"{kind}\"}} {}",
                c.get()
            );
        }
        header(
            out,
            "qbroker_enrich_fallbacks_total",
            "counter",
            "Metadata changes of enriched clusters sent as their generic event, by reason.",
        );
        for r in Fallback::ALL {
            let _ = writeln!(
                out,
                "qbroker_enrich_fallbacks_total{{reason=\"{}\"}} {}",
                r.as_str(),
                e.fallbacks[r.index()].get()
            );
        }
        for (name, help, g) in [
            (
                "qbroker_enrich_queue_events",
                "Events held for enrichment (and behind it), all clusters.",
                &e.queue_events,
            ),
            (
                "qbroker_enrich_queue_bytes",
                "Bytes of events held for enrichment.",
                &e.queue_bytes,
            ),
            (
                "qbroker_enrich_in_flight",
                "Enrichments being looked up now.",
                &e.in_flight,
            ),
        ] {
            header(out, name, "gauge", help);
            let _ = writeln!(out, "{name} {}", g.get());
        }
    }
}

/// Where the results of a cluster's jobs go: its batcher, which implements
/// this (enrich sits below the batcher and does not name it).
pub trait Completions: Send + Sync {
    /// Take one result; may block (a full spool), never on an async task.
    fn complete(&self, c: Completion);
}

/// The result of a [`Job`], for the batcher.
#[derive(Debug)]
pub struct Completion {
    pub key: u64,
    pub id: u64,
    pub events: Vec<(Operation, Vec<u8>)>,
    /// The type, when the API said it (the type cache learns it).
    pub directory: Option<bool>,
}

/// One enriched cluster, as its batcher sees it.
pub struct Link {
    pub cluster: Arc<str>,
    jobs: mpsc::Sender<Job>,
    /// Jobs handed over and not yet completed back (for the shutdown drain).
    outstanding: AtomicUsize,
    /// Told when `outstanding` falls to zero (shared by every link).
    settled: Arc<Settled>,
    batcher: OnceLock<Weak<dyn Completions>>,
    pub metrics: Arc<EnrichMetrics>,
    pub queue_max_events: usize,
    pub queue_max_bytes: usize,
    /// How long after it was read an event may be held, for its own lookup or
    /// behind its file's (`enrich.timeout_ms`); then its generic event goes out.
    pub hold_max: Duration,
}

impl Link {
    /// Whether an event read at `received_us` (Unix µs) was held too long.
    pub fn overdue(&self, received_us: u64) -> bool {
        held_for(received_us) > self.hold_max
    }

    /// Hand a job over without waiting; false when the queue is full or closed.
    pub fn dispatch(&self, job: Job) -> bool {
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        if self.jobs.try_send(job).is_ok() {
            self.metrics.jobs.inc();
            true
        } else {
            self.done_one();
            false
        }
    }

    fn done_one(&self) {
        if self.outstanding.fetch_sub(1, Ordering::AcqRel) == 1 {
            // Under the lock: a drain between its check and its wait cannot miss it.
            let _held = lock(&self.settled.lock);
            self.settled.changed.notify_all();
        }
    }

    /// The batcher that completions go to.
    pub fn attach<B: Completions + 'static>(&self, batcher: Weak<B>) {
        let batcher: Weak<dyn Completions> = batcher;
        let _ = self.batcher.set(batcher);
    }

    fn complete(&self, c: Completion) {
        if let Some(b) = self.batcher.get().and_then(Weak::upgrade) {
            b.complete(c);
        }
        self.done_one();
    }
}

#[cfg(test)]
impl Link {
    /// A link whose jobs go to the returned receiver, for a test to complete
    /// (through the batcher's [`Completions`]) in whatever order it likes.
    pub(crate) fn for_test(
        cluster: &str,
        jobs: usize,
        queue_max_events: usize,
        queue_max_bytes: usize,
    ) -> (Arc<Link>, mpsc::Receiver<Job>) {
        let (tx, rx) = mpsc::channel(jobs);
        let link = Arc::new(Link {
            cluster: Arc::from(cluster),
            jobs: tx,
            outstanding: AtomicUsize::new(0),
            settled: Arc::new(Settled::default()),
            batcher: OnceLock::new(),
            metrics: Arc::new(EnrichMetrics::default()),
            queue_max_events,
            queue_max_bytes,
            hold_max: Duration::from_secs(3600),
        });
        (link, rx)
    }
}

/// Where the shutdown drain waits for the links' jobs to come back.
#[derive(Default)]
struct Settled {
    lock: Mutex<()>,
    changed: Condvar,
}

struct ClusterCtx {
    cluster: Arc<str>,
    /// Replaced when the cluster's credentials change; `None` once they are
    /// removed (lookups then fail at once and the generic events go out).
    client: RwLock<Option<Arc<ApiClient>>>,
    cache: Mutex<Lru<String, Acl>>,
    timeout: Duration,
    metrics: Arc<EnrichMetrics>,
}

impl ClusterCtx {
    async fn resolve(&self, job: &Job) -> Completion {
        let ev = &job.event;
        let left = self.timeout.saturating_sub(held_for(ev.received_us));
        let fetched = if left.is_zero() {
            Err(client::ApiError::Timeout(self.timeout))
        } else {
            tokio::time::timeout(left, self.fetch(ev.file_id(), job.directory))
                .await
                .unwrap_or(Err(client::ApiError::Timeout(self.timeout)))
        };
        let (events, directory) = match fetched {
            Ok((acl, directory)) => {
                let before = self
                    .cache
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(ev.file_id().to_string(), acl.clone());
                let events = match before {
                    None => {
                        self.metrics.cache_misses.inc();
                        self.fallback(Fallback::NoBaseline);
                        vec![generic(ev, Some(directory))]
                    }
                    Some(before) => {
                        self.metrics.cache_hits.inc();
                        let diff = before.diff(&acl);
                        let events = events_for(ev, directory, job.owner_changed, &diff);
                        if events.is_empty() {
                            self.fallback(Fallback::Unchanged);
                            vec![generic(ev, Some(directory))]
                        } else {
                            events
                        }
                    }
                };
                (events, Some(directory))
            }
            Err(err) => {
                let reason = match err {
                    client::ApiError::Timeout(_) => Fallback::Timeout,
                    _ => Fallback::ApiError,
                };
                self.fallback(reason);
                if let Some(suppressed) = API_ERROR_LOG.check() {
                    warn!(
                        cluster = %self.cluster,
                        file_id = ev.file_id(),
                        error = %err,
                        suppressed,
                        "cannot read the ACL; sending the generic event"
                    );
                }
                (vec![generic(ev, job.directory)], None)
            }
        };
        Completion {
            key: job.key,
            id: job.id,
            events,
            directory,
        }
    }

    async fn fetch(
        &self,
        file_id: &str,
        directory: Option<bool>,
    ) -> Result<(Acl, bool), client::ApiError> {
        let client = self
            .client
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| client::ApiError::Connect("no REST API credentials".to_string()))?;
        let acl = client.acl(file_id).await?;
        let directory = match directory {
            Some(d) => d,
            None => client.is_directory(file_id).await?,
        };
        Ok((acl, directory))
    }

    fn fallback(&self, reason: Fallback) {
        self.metrics.fallbacks[reason.index()].inc();
    }
}

/// A completion on its way to the completion thread.
type Done = mpsc::Sender<(Arc<Link>, Completion)>;
/// A cluster's link and the context its task looks up with.
type Linked = (Arc<Link>, Arc<ClusterCtx>);

/// Every enriched cluster's client, cache and task, and the completion thread.
pub struct Enricher {
    links: Mutex<HashMap<String, Linked>>,
    cfg: EnrichConfig,
    metrics: Arc<EnrichMetrics>,
    /// Completions of every cluster's task go here; taken at stop.
    done_tx: Mutex<Option<Done>>,
    runtime: tokio::runtime::Handle,
    done: Mutex<Option<JoinHandle<()>>>,
    settled: Arc<Settled>,
}

/// A cluster's REST API as the registry gives it: the CA as PEM text.
#[derive(Debug, Clone)]
pub struct RegisteredApi {
    pub api: ApiConfig,
    pub ca_pem: Option<String>,
}

/// Completions waiting for the completion thread, at most.
const DONE_QUEUE: usize = 1024;

impl Enricher {
    /// Set up the clusters that have an API configured (when `enrich.enabled`).
    /// Must be called inside a tokio runtime.
    pub fn start(
        cfg: &Config,
        metrics: Arc<EnrichMetrics>,
    ) -> Result<Arc<Enricher>, ClientSetupError> {
        let e = &cfg.enrich;
        let (done_tx, mut done_rx) = mpsc::channel::<(Arc<Link>, Completion)>(DONE_QUEUE);
        let done = std::thread::Builder::new()
            .name("qbroker-enrich-done".to_string())
            .spawn(move || {
                while let Some((link, c)) = done_rx.blocking_recv() {
                    link.complete(c);
                }
            })
            .map_err(ClientSetupError::Thread)?;
        let enricher = Enricher {
            links: Mutex::new(HashMap::new()),
            cfg: e.clone(),
            metrics,
            done_tx: Mutex::new(Some(done_tx)),
            runtime: tokio::runtime::Handle::current(),
            done: Mutex::new(Some(done)),
            settled: Arc::default(),
        };
        for c in cfg.clusters.iter().filter(|_| e.enabled) {
            let Some(api) = &c.api else { continue };
            let client = enricher.client(&c.name, api, None)?;
            enricher.add(&c.name, client);
        }
        Ok(Arc::new(enricher))
    }

    fn client(
        &self,
        cluster: &str,
        api: &ApiConfig,
        ca_pem: Option<&str>,
    ) -> Result<Arc<ApiClient>, ClientSetupError> {
        let e = &self.cfg;
        let name: Arc<str> = Arc::from(cluster);
        let client = match ca_pem {
            None => ApiClient::new(
                name,
                api,
                e.in_flight,
                e.request_timeout,
                e.token_renew,
                self.metrics.clone(),
            )?,
            Some(pem) => ApiClient::with_tls(
                name,
                api,
                client::tls_config_pem(
                    cluster,
                    Some(crate::net::Pem::new(pem.as_bytes(), "ca_certificate")),
                    api.insecure_skip_verify,
                )?,
                e.in_flight,
                e.request_timeout,
                e.token_renew,
                self.metrics.clone(),
            )?,
        };
        Ok(Arc::new(client))
    }

    /// A link, its context and its task for a cluster not linked yet.
    fn add(&self, cluster: &str, client: Arc<ApiClient>) -> Arc<Link> {
        let e = &self.cfg;
        let name: Arc<str> = Arc::from(cluster);
        let (tx, rx) = mpsc::channel(e.queue_max_events);
        let link = Arc::new(Link {
            cluster: name.clone(),
            jobs: tx,
            outstanding: AtomicUsize::new(0),
            settled: self.settled.clone(),
            batcher: OnceLock::new(),
            metrics: self.metrics.clone(),
            queue_max_events: e.queue_max_events,
            queue_max_bytes: e.queue_max_bytes,
            hold_max: e.timeout,
        });
        let ctx = Arc::new(ClusterCtx {
            cluster: name,
            client: RwLock::new(Some(client)),
            cache: Mutex::new(Lru::new(e.acl_cache_entries)),
            timeout: e.timeout,
            metrics: self.metrics.clone(),
        });
        if let Some(done) = lock(&self.done_tx).clone() {
            self.runtime
                .spawn(serve(link.clone(), rx, ctx.clone(), e.in_flight, done));
        }
        lock(&self.links).insert(cluster.to_string(), (link.clone(), ctx));
        link
    }

    /// Use these credentials for `cluster` from now on (`None`: none; lookups in
    /// flight finish with the old ones, later ones fail at once and their generic
    /// events go out). Returns the cluster's link when it was created now, for
    /// the caller to hand to the cluster's batcher if it has one; the ACL cache is
    /// kept across changes. Does nothing while enrichment is off.
    pub fn set_api(
        &self,
        cluster: &str,
        api: Option<&RegisteredApi>,
    ) -> Result<Option<Arc<Link>>, ClientSetupError> {
        if !self.cfg.enabled {
            return Ok(None);
        }
        let client = api
            .map(|a| self.client(cluster, &a.api, a.ca_pem.as_deref()))
            .transpose()?;
        let existing = lock(&self.links).get(cluster).cloned();
        match (existing, client) {
            (Some((_, ctx)), client) => {
                *ctx.client.write().unwrap_or_else(|e| e.into_inner()) = client;
                Ok(None)
            }
            (None, Some(client)) => Ok(Some(self.add(cluster, client))),
            (None, None) => Ok(None),
        }
    }

    /// The link of an enriched cluster.
    pub fn link(&self, cluster: &str) -> Option<Arc<Link>> {
        lock(&self.links).get(cluster).map(|(l, _)| l.clone())
    }

    pub fn config(&self) -> &EnrichConfig {
        &self.cfg
    }

    /// Wait (blocking) until every job handed over was completed back, or `wait`
    /// passed; what is left is turned into generic events by the batchers' flush.
    pub fn drain(&self, wait: Duration) {
        let deadline = Instant::now() + wait;
        let links: Vec<Arc<Link>> = lock(&self.links).values().map(|(l, _)| l.clone()).collect();
        let busy = || {
            links
                .iter()
                .any(|l| l.outstanding.load(Ordering::Acquire) > 0)
        };
        let mut held = lock(&self.settled.lock);
        while busy() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            held = self
                .settled
                .changed
                .wait_timeout(held, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Detach the completion thread; it ends when the runtime's tasks are gone.
    pub fn stop(&self) {
        drop(lock(&self.done_tx).take());
        drop(lock(&self.done).take());
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The per-cluster task: take jobs in order, run up to `in_flight` at once.
async fn serve(
    link: Arc<Link>,
    mut jobs: mpsc::Receiver<Job>,
    ctx: Arc<ClusterCtx>,
    in_flight: usize,
    done: mpsc::Sender<(Arc<Link>, Completion)>,
) {
    let slots = Arc::new(Semaphore::new(in_flight));
    while let Some(job) = jobs.recv().await {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (ctx, link, done) = (ctx.clone(), link.clone(), done.clone());
        tokio::spawn(async move {
            ctx.metrics.in_flight.add(1);
            let c = ctx.resolve(&job).await;
            ctx.metrics.in_flight.add(-1);
            drop(permit);
            let _ = done.send((link, c)).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::{convert_with_info, Filter, FrameCtx, Hint, Outcome};
    use serde_json::{json, Value};

    #[test]
    fn the_enrichment_part_of_the_page_declares_every_family() {
        use crate::metrics::Render as _;
        let m = Arc::new(EnrichMetrics::default());
        m.fallbacks[Fallback::ApiError.index()].add(2);
        let mut text = String::new();
        Series(m).render(&mut text);
        assert!(
            text.contains("qbroker_enrich_fallbacks_total{reason=\"api_error\"} 2"),
            "{text}"
        );
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(text.contains(&format!("# TYPE {name} ")), "{line}");
        }
    }

    fn held(frame: &str) -> Held {
        let mut out = Vec::new();
        let mut info = EventInfo::default();
        let ctx = FrameCtx {
            seq: 9,
            received_unix_ms: 0,
            conn: None,
        };
        let r = convert_with_info(
            frame.as_bytes(),
            &ctx,
            &Filter::reference_default(),
            &mut out,
            &mut info,
        );
        let Ok(Outcome::Event(op)) = r else {
            panic!("{r:?}")
        };
        Held {
            bytes: out,
            received_us: 0,
            info,
            op: Some(op),
        }
    }

    const WM: &str = concat!(
        r#"<14>1 2024-06-11T14:55:58.187Z q-2 qumulo - - - {"user_id": {"name": "alice", "sid": "S-9", "auth_id": "500"}, "user_ip": "10.1.1.1", "protocol": "smb2","#,
        r#" "operation": "fs_write_metadata", "status": "ok", "details": {"file_id": "4", "path": "/my_file","#,
        r#" "after": {"owner": {"sid": "S-2", "auth_id": "501"}}, "before": {"owner": {"sid": "S-1", "auth_id": "500"}}}}"#
    );

    #[test]
    fn events_of_a_resolved_change() {
        let ev = held(WM);
        assert_eq!(
            ev.info.hint,
            Hint::WriteMetadata {
                typed: false,
                owner_changed: true
            }
        );
        assert_eq!(ev.file_id(), "4");
        let before = Acl::from_v2_json(br#"{"aces":[{"type":"ALLOWED","flags":[],"rights":["READ"],"trustee":{"auth_id":"500"}}]}"#).unwrap();
        let after = Acl::from_v2_json(br#"{"control":["PROTECTED"],"aces":[{"type":"ALLOWED","flags":["OBJECT_INHERIT"],"rights":["READ"],"trustee":{"auth_id":"501","sid":"S-2"}}]}"#).unwrap();
        let evs = events_for(&ev, true, true, &before.diff(&after));
        let ops: Vec<_> = evs.iter().map(|(op, _)| op.as_str()).collect();
        assert_eq!(
            ops,
            [
                "directory.owner_change",
                "directory.protection_add",
                "directory.permissions_remove",
                "directory.permissions_add"
            ]
        );
        let v: Vec<Value> = evs
            .iter()
            .map(|(_, b)| serde_json::from_slice(b).unwrap())
            .collect();
        for e in &v {
            assert_eq!(e["seq"], 9);
            assert_eq!(e["object_type"], "directory");
            assert_eq!(e["qumulo_operation"], "fs_write_metadata");
            assert_eq!(e["path"], "/my_file");
        }
        assert_eq!(v[0]["owner"]["after"]["auth_id"], "501");
        assert!(v[0].get("acl").is_none());
        assert!(v[1].get("owner").is_none());
        assert_eq!(v[1]["acl"], json!({"protected": true}));
        assert_eq!(
            v[2]["acl"],
            json!({"removed": [{"type": "ALLOWED", "trustee": {"domain": null, "auth_id": "500", "sid": null, "name": null}, "rights": ["READ"], "flags": []}]})
        );
        assert_eq!(v[3]["acl"]["added"][0]["flags"], json!(["OBJECT_INHERIT"]));
        // keys keep the schema's order, acl just before qumulo_operation
        let raw = std::str::from_utf8(&evs[3].1).unwrap();
        assert!(raw.find("\"success\"").unwrap() < raw.find("\"acl\"").unwrap());
        assert!(raw.find("\"acl\"").unwrap() < raw.find("\"qumulo_operation\"").unwrap());
    }

    #[test]
    fn generic_event_takes_a_learned_type() {
        let ev = held(
            &WM.replace(r#""auth_id": "501""#, r#""auth_id": "500""#)
                .replace("S-2", "S-1"),
        );
        assert_eq!(ev.op, Some(Operation::FilePermissionsChange));
        let (op, bytes) = generic(&ev, Some(true));
        assert_eq!(op, Operation::DirectoryPermissionsChange);
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            (v["operation"].as_str(), v["object_type"].as_str()),
            (Some("directory.permissions_change"), Some("directory"))
        );
        assert_eq!(generic(&ev, None).1, ev.bytes);
        assert_eq!(generic(&ev, Some(false)).1, ev.bytes);
    }
}
