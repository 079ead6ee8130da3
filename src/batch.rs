//! batch: per-cluster batchers that put converted events back in arrival order and
//! seal them into batches for the target's spool.
//!
//! Stage: the parse pool's workers hand each converted chunk to its cluster's
//! [`Batcher`]. Workers finish chunks out of order, so the batcher keeps early
//! ones aside until their turn (at most the chunks in the work queue, which the
//! admission gate bounds). Events are copied once, from the worker's buffer into
//! the open batch's body, which is the finished HTTP body once sealed.
//!
//! Order contract: `seq` is the cluster's arrival number of the audit record an
//! event came from; one record can make several events (an enriched metadata
//! change), which share its `seq`. Events go into batches in arrival order,
//! except that a metadata change being enriched (see [`crate::enrich`]), and every
//! later event of the same file, are held and go out when the enrichment is
//! done: later than other files' events, possibly in a later batch, still with
//! their own `seq`. So within a batch `seq` increases except around held events,
//! and per file the order is always the arrival order (spool order). The batcher
//! also keeps the type cache (creates teach it; deletes and renames without a
//! trailing `/`, and metadata changes, ask it).
//!
//! A batch is sealed at `max_events`, at `max_bytes`, or `max_age` after it was
//! opened, whichever comes first; the first two by the worker that fills it, the
//! third by the target's [`Sealer`], a task on the broker's tokio runtime that
//! sleeps until the soonest deadline of its clusters' open batches (tokio
//! timers: tests pause the clock) and is woken when a batch opens, when one
//! reaches `idle_seal_min_events`, and when the spool acknowledges or frees
//! space. With no batch open it does not wake at all. It seals on a blocking
//! thread, and not while the spool is full. Sealed batches of one cluster are
//! appended to the spool in order. When the spool is full the append waits,
//! which holds the worker, which holds the queue, which pauses the readers.
//!
//! Owns: the batchers (order, type cache, open batches, sealing) and their
//! routes. May touch: the spool (to append), enrich (jobs out; results come
//! back through [`enrich::Completions`], which [`Batcher`] implements), config
//! and metrics; it names no source, no pool, no target set.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use tracing::{error, warn};

use crate::config::{BatchConfig, EnrichConfig};
use crate::enrich::{self, Completion, Enricher, Fallback, Held, Link, Order};
use crate::metrics::{ClusterMetrics, Metrics, RateLimit};
use crate::model::Recycler;
use crate::parse::{EventInfo, Hint, Operation};
use crate::spool::{AppendError, NewBatch, Spool};
use crate::sync::gate::Gate;

/// The body schema name.
pub const SCHEMA: &str = "qbroker.varonis.v1";

/// Receive-time entries kept per batch, for the latency histogram.
const MAX_RECEIVED: usize = 64;

/// How long one spool append may wait before the batcher logs and tries again.
const APPEND_WAIT: Duration = Duration::from_secs(1);

static SPOOL_FULL_LOG: RateLimit = RateLimit::new(Duration::from_secs(10), 1);
static SPOOL_ERROR_LOG: RateLimit = RateLimit::new(Duration::from_secs(10), 3);

/// The events a worker made of one chunk.
#[derive(Debug, Default)]
pub struct ChunkOut {
    pub chunk_no: u64,
    /// Event objects separated by commas.
    pub events: Vec<u8>,
    /// End offset of each event in `events`; event `i` starts one past event
    /// `i - 1`'s end (after its comma), the first at 0.
    pub ends: Vec<u32>,
    /// When the chunk's bytes were read, in Unix microseconds.
    pub received_unix_us: u64,
    /// What the chunk holds at the admission gate (messages, bytes). Given back
    /// once the chunk's events are in a batch, not before: a chunk kept aside
    /// for its turn still counts against the queue.
    pub weight: (usize, usize),
    /// Per event, the key of its file (`EventInfo::file_key`, 0 for none), for
    /// per-file order behind enrichments. May be empty when no event has one.
    pub file_keys: Vec<u64>,
    /// Events with a hint (`EventInfo::hint` not `None`), by index, in order.
    /// The operation of an `Untyped` or `WriteMetadata` one is tallied by the
    /// batcher (it may change it), the others' by the worker.
    pub hints: Vec<(u32, Operation, EventInfo)>,
}

/// Where a cluster's batches go: its target's spool, and the filer id written
/// into each batch. Changed at run time ([`Batcher::set_route`]).
#[derive(Clone)]
pub struct Route {
    /// The target's name, for logs.
    pub target: Arc<str>,
    pub spool: Arc<Spool>,
    pub filer_id: Option<u64>,
    /// The target's requests in flight at most (`in_flight`), for the idle seal.
    pub lanes: usize,
    /// Wakes the target's [`Sealer`] (a batch opened, or reached
    /// `idle_seal_min_events`); [`Sealer::waker`], or a fresh one that nothing
    /// waits on for a route with no sealer.
    pub wake: Arc<Notify>,
}

/// A route and the body prefix it gives the cluster's batches.
struct Routed {
    route: Route,
    /// `{"schema":…,"cluster":…,"filer_id":…,"batch_id":"` up to the id.
    prefix: Vec<u8>,
}

struct Open {
    batch_id: String,
    body: Vec<u8>,
    events: u32,
    opened: Instant,
    received: Vec<(u64, u32)>,
    /// The route the batch was opened for, whose spool it is appended to.
    routed: Arc<Routed>,
}

struct Sealed {
    batch_id: String,
    body: Vec<u8>,
    events: u32,
    received: Vec<(u64, u32)>,
    routed: Arc<Routed>,
}

struct State {
    next_chunk: u64,
    pending: BTreeMap<u64, ChunkOut>,
    open: Option<Open>,
    /// Per-file order behind enrichments, and the type cache.
    order: Order,
    /// The route of the next batch opened.
    routed: Arc<Routed>,
    /// A commit barrier waiting ([`Batcher::barrier`]): the chunks it waits
    /// for, and where its reply goes.
    barrier: Option<(u64, crossbeam_channel::Sender<()>)>,
}

/// What every batcher shares.
struct Common {
    limits: BatchConfig,
    /// Worker output buffers, one per chunk in work.
    chunks: Recycler,
    /// Batch bodies, one per open or sealing batch.
    bodies: Recycler,
    /// Set when the shutdown deadline passed: stop waiting on a spool.
    abort: AtomicBool,
    /// What [`Batcher::open_at`] counts from.
    epoch: Instant,
    /// Wakes a spool-write retry's back-off when `abort` is set.
    aborted: (Mutex<()>, Condvar),
}

impl Common {
    fn new(limits: BatchConfig) -> Common {
        Common {
            chunks: Recycler::new(64, 4 << 20),
            bodies: Recycler::new(16, limits.max_bytes * 2),
            limits,
            abort: AtomicBool::new(false),
            epoch: Instant::now(),
            aborted: (Mutex::new(()), Condvar::new()),
        }
    }

    /// Wait `back_off` before a spool write is tried again, or less if the
    /// shutdown deadline passes meanwhile.
    fn back_off(&self, back_off: Duration) {
        let (m, cv) = &self.aborted;
        let guard = lock(m);
        let _ = cv
            .wait_timeout_while(guard, back_off, |_| !self.abort.load(Ordering::SeqCst))
            .unwrap_or_else(|e| e.into_inner());
    }

    fn set_abort(&self) {
        let (m, cv) = &self.aborted;
        let _guard = lock(m);
        self.abort.store(true, Ordering::SeqCst);
        cv.notify_all();
    }
}

/// When one batcher's open batch is due, as its sealer sees it.
#[derive(Debug, PartialEq, Eq)]
enum Due {
    /// No open batch, or one that only an event can make due (it reaches
    /// `idle_seal_min_events`).
    Nothing,
    /// Seal it now: `max_age` (`idle: false`), or `idle_seal` if a request
    /// slot is free (`idle: true`); it has been open this long.
    Now { age: Duration, idle: bool },
    /// Look again at this time.
    At(Instant),
}

/// What [`Batcher::seal_if_due`] did.
#[derive(Debug, PartialEq, Eq)]
enum Sealing {
    Sealed,
    /// Idle-due, but the target has no request slot free: an
    /// acknowledgement frees one.
    NoSlot,
    /// Nothing open or nothing due.
    NotDue,
}

/// Batches of one cluster.
pub struct Batcher {
    cluster: Arc<str>,
    metrics: Arc<ClusterMetrics>,
    gate: Arc<Gate>,
    gate_id: usize,
    common: Arc<Common>,
    state: Mutex<State>,
    /// Held while appending sealed batches, taken before `state` is let go, so that
    /// the spool receives a cluster's batches in the order they were sealed.
    append: Mutex<()>,
    /// Set when the cluster's metadata changes are enriched.
    enrich: OnceLock<Arc<Link>>,
    /// The cluster's registration was deleted and it has no other target: its
    /// source forgets it once no connection holds it and nothing waits here
    /// (see [`Batcher::route_gone`]).
    route_gone: AtomicBool,
    /// When the open batch was opened, in ns since `common.epoch` (`NOT_OPEN`
    /// with none), and its events: a copy of `state.open`'s, for the sealer to
    /// read without taking the lock the workers use.
    open_at: AtomicU64,
    open_events: AtomicU32,
}

const NOT_OPEN: u64 = u64::MAX;

/// Whether the event already says directory (its operation does).
fn typed_directory(ev: &Held) -> bool {
    ev.op.is_some_and(Operation::is_directory)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn routed(cluster: &str, route: Route) -> Arc<Routed> {
    let mut prefix = Vec::with_capacity(128);
    prefix.extend_from_slice(b"{\"schema\":\"");
    prefix.extend_from_slice(SCHEMA.as_bytes());
    prefix.extend_from_slice(b"\",\"cluster\":");
    prefix.extend_from_slice(
        serde_json::to_string(cluster)
            .expect("a string serialises")
            .as_bytes(),
    );
    prefix.extend_from_slice(b",\"filer_id\":");
    match route.filer_id {
        Some(id) => prefix.extend_from_slice(id.to_string().as_bytes()),
        None => prefix.extend_from_slice(b"null"),
    }
    prefix.extend_from_slice(b",\"batch_id\":\"");
    Arc::new(Routed { route, prefix })
}

impl Batcher {
    fn new(
        cluster: Arc<str>,
        route: Route,
        metrics: Arc<ClusterMetrics>,
        (gate, gate_id): (Arc<Gate>, usize),
        common: Arc<Common>,
    ) -> Batcher {
        let routed = routed(&cluster, route);
        Batcher {
            cluster,
            metrics,
            gate,
            gate_id,
            common,
            state: Mutex::new(State {
                next_chunk: 0,
                pending: BTreeMap::new(),
                barrier: None,
                open: None,
                order: {
                    let e = EnrichConfig::default();
                    Order::new(e.type_cache_entries, e.queue_max_events, e.queue_max_bytes)
                },
                routed,
            }),
            append: Mutex::new(()),
            enrich: OnceLock::new(),
            route_gone: AtomicBool::new(false),
            open_at: AtomicU64::new(NOT_OPEN),
            open_events: AtomicU32::new(0),
        }
    }

    /// The target set has no route for this cluster any more (its registration
    /// was deleted, and it has no configured or default target): the batches
    /// it still makes go to the deleted target, which is delivered and then
    /// removed once the cluster's source forgot the cluster (no connection,
    /// nothing waiting). A connection of the cluster after that is refused.
    pub fn set_route_gone(&self) {
        self.route_gone.store(true, Ordering::SeqCst);
    }

    /// See [`set_route_gone`](Self::set_route_gone).
    pub fn route_gone(&self) -> bool {
        self.route_gone.load(Ordering::SeqCst)
    }

    /// Size the type cache and the enrichment bounds, and enrich this cluster's
    /// metadata changes through `link` when it has one.
    fn configure(self: &Arc<Self>, cfg: &EnrichConfig, link: Option<Arc<Link>>) {
        let mut st = lock(&self.state);
        st.order = Order::new(
            cfg.type_cache_entries,
            cfg.queue_max_events,
            cfg.queue_max_bytes,
        );
        if let Some(link) = link {
            st.order.set_metrics(link.metrics.clone());
            link.attach(Arc::downgrade(self));
            let _ = self.enrich.set(link);
        }
    }

    /// Enrich this cluster's metadata changes through `link` from now on (REST
    /// credentials that arrived after the cluster was first seen). The type
    /// cache and the order state are kept. A cluster has one link for good: a
    /// later change of credentials is the link's business.
    pub fn enable_enrichment(self: &Arc<Self>, link: Arc<Link>) {
        let mut st = lock(&self.state);
        if self.enrich.get().is_some() {
            return;
        }
        link.attach(Arc::downgrade(self));
        st.order.set_metrics(link.metrics.clone());
        let _ = self.enrich.set(link);
    }

    /// The cluster's name.
    pub fn cluster(&self) -> &Arc<str> {
        &self.cluster
    }

    /// The cluster's slot at the admission gate.
    pub fn gate_id(&self) -> usize {
        self.gate_id
    }

    pub fn metrics(&self) -> &Arc<ClusterMetrics> {
        &self.metrics
    }

    /// Where the cluster's batches go now.
    pub fn current_route(&self) -> Route {
        lock(&self.state).routed.route.clone()
    }

    /// Send the cluster's next batches to `route`. The open batch is sealed first
    /// and appended to the old route's spool (with the old filer id), so a batch
    /// never mixes two routes and nothing is lost or reordered within one. Returns
    /// once every batch sealed for the old route is in its spool, so the caller
    /// knows the old spool gets nothing more from this cluster. Blocking (it may
    /// wait on a full spool): call it from a plain thread.
    pub fn set_route(&self, route: Route) {
        self.route_gone.store(false, Ordering::SeqCst);
        let mut st = lock(&self.state);
        let sealed = self.seal(&mut st);
        st.routed = routed(&self.cluster, route);
        let order = lock(&self.append);
        drop(st);
        self.write(sealed.into_iter().collect(), order);
    }

    /// The result of an enrichment: its events go out, then the events of the
    /// file that waited behind it, in order.
    pub fn complete(&self, c: Completion) {
        let mut sealed = Vec::new();
        let mut st = lock(&self.state);
        let Some((head, waiting)) = st.order.finish(c.key, c.id) else {
            if let Some(link) = self.enrich.get() {
                link.metrics.late_results.inc();
            }
            return;
        };
        if let Some(d) = c.directory {
            st.order.learn(c.key, d);
        }
        for (op, bytes) in &c.events {
            self.metrics.events[op.index()].inc();
            self.append_one(&mut st, bytes, head.received_us, &mut sealed);
        }
        for ev in waiting {
            self.route(&mut st, ev, &mut sealed);
        }
        let reply = self.barrier_due(&mut st, &mut sealed);
        let order = (!sealed.is_empty()).then(|| lock(&self.append));
        drop(st);
        if let Some(order) = order {
            self.write(sealed, order);
        }
        if let Some(reply) = reply {
            let _ = reply.send(());
        }
    }

    /// Events of a file given up (queue full, shutdown): its generic event now,
    /// then the events that waited.
    fn abandon(
        &self,
        st: &mut State,
        chain: (Arc<Held>, std::collections::VecDeque<Held>),
        reason: Fallback,
        sealed: &mut Vec<Sealed>,
    ) {
        let (head, waiting) = chain;
        if let Some(link) = self.enrich.get() {
            link.metrics.fallbacks[reason.index()].inc();
        }
        let directory = st.order.directory(head.info.file_key);
        let (op, bytes) = enrich::generic(&head, directory);
        self.metrics.events[op.index()].inc();
        self.append_one(st, &bytes, head.received_us, sealed);
        for ev in waiting {
            self.route(st, ev, sealed);
        }
    }

    /// One event that needs a decision: wait behind its file, teach or ask the
    /// type cache, start an enrichment, or go out.
    fn route(&self, st: &mut State, ev: Held, sealed: &mut Vec<Sealed>) {
        let key = ev.info.file_key;
        let mut ev = ev;
        // A loop, not an `if`: giving the file's chain up routes the events that
        // waited in it, and a metadata change among them starts a new chain of
        // the same file, which `ev` must then wait behind. Each turn gives up at
        // least the chain's head, so the file's held events run out.
        while st.order.pending(key) {
            match st.order.defer(ev) {
                Ok(()) => return,
                Err(back) => {
                    ev = back;
                    match st.order.abandon(key) {
                        Some(chain) => self.abandon(st, chain, Fallback::QueueFull, sealed),
                        None => break,
                    }
                }
            }
        }
        let directory = match ev.info.hint {
            Hint::None => None,
            Hint::Created { directory } => {
                st.order.learn(key, directory);
                None
            }
            Hint::Untyped => st.order.directory(key),
            Hint::WriteMetadata {
                typed,
                owner_changed,
            } => {
                let directory = if typed {
                    Some(true)
                } else {
                    st.order.directory(key)
                };
                if let Some(link) = self.enrich.get() {
                    if ev.info.file_id_span.0 >= ev.info.file_id_span.1 {
                        // no file id: nothing to look up
                    } else if link.overdue(ev.received_us) {
                        // it waited behind its file's lookups past the time
                        // allowed: no lookup of its own, its generic event now
                        link.metrics.fallbacks[Fallback::Timeout.index()].inc();
                    } else {
                        match st
                            .order
                            .start(ev, directory, owner_changed, |job| link.dispatch(job))
                        {
                            Ok(()) => return,
                            Err((back, reason)) => {
                                link.metrics.fallbacks[reason.index()].inc();
                                ev = back;
                            }
                        }
                    }
                }
                directory
            }
        };
        if directory == Some(true) && !typed_directory(&ev) {
            if let Some(link) = self.enrich.get() {
                link.metrics.type_cache_hits.inc();
            }
        }
        match ev.op {
            Some(_) => {
                let (op, bytes) = enrich::generic(&ev, directory);
                self.metrics.events[op.index()].inc();
                self.append_one(st, &bytes, ev.received_us, sealed);
            }
            None => self.append_one(st, &ev.bytes, ev.received_us, sealed),
        }
    }

    fn append_one(&self, st: &mut State, event: &[u8], received_us: u64, sealed: &mut Vec<Sealed>) {
        let ends = [event.len() as u32];
        self.append(st, event, &ends, 0..1, received_us, sealed);
    }

    /// A buffer for a worker to convert a chunk of `bytes` bytes into.
    pub fn chunk_buffer(&self, bytes: usize) -> Vec<u8> {
        self.common.chunks.get(bytes + bytes / 2)
    }

    /// Take a converted chunk (even one with no events: it moves the order on).
    pub fn submit(&self, out: ChunkOut) {
        let mut sealed = Vec::new();
        let mut st = lock(&self.state);
        if out.chunk_no != st.next_chunk {
            st.pending.insert(out.chunk_no, out);
            return;
        }
        let mut weight = out.weight;
        self.apply(&mut st, &out, &mut sealed);
        self.common.chunks.put(out.events);
        st.next_chunk += 1;
        loop {
            let no = st.next_chunk;
            let Some(next) = st.pending.remove(&no) else {
                break;
            };
            self.apply(&mut st, &next, &mut sealed);
            weight.0 += next.weight.0;
            weight.1 += next.weight.1;
            self.common.chunks.put(next.events);
            st.next_chunk += 1;
        }
        let reply = self.barrier_due(&mut st, &mut sealed);
        let order = (!sealed.is_empty()).then(|| lock(&self.append));
        drop(st);
        self.gate.release(self.gate_id, weight.0, weight.1);
        if let Some(order) = order {
            self.write(sealed, order);
        }
        if let Some(reply) = reply {
            let _ = reply.send(());
        }
    }

    /// A commit barrier (`qbroker stdin`): once every chunk numbered below
    /// `chunks` is in and no event waits for an enrichment, the open batch is
    /// sealed into the spool, without waiting for `max_age`, and the returned
    /// channel gets its one message. When that is already so, it happens here
    /// and now (the spool append may wait while the spool is full); otherwise
    /// on the thread whose chunk or enrichment completes it. One barrier at a
    /// time: a new one replaces (disconnects) a barrier still waiting.
    pub fn barrier(&self, chunks: u64) -> crossbeam_channel::Receiver<()> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let mut st = lock(&self.state);
        st.barrier = Some((chunks, tx));
        let mut sealed = Vec::new();
        let Some(reply) = self.barrier_due(&mut st, &mut sealed) else {
            return rx;
        };
        let order = lock(&self.append);
        drop(st);
        self.write(sealed, order);
        let _ = reply.send(());
        rx
    }

    /// The waiting barrier's reply, its batch sealed into `sealed`, when
    /// nothing it waits for is still on its way. Send the reply once `sealed`
    /// is written.
    fn barrier_due(
        &self,
        st: &mut State,
        sealed: &mut Vec<Sealed>,
    ) -> Option<crossbeam_channel::Sender<()>> {
        let (chunks, _) = st.barrier.as_ref()?;
        if st.next_chunk < *chunks || !st.order.idle() {
            return None;
        }
        let (_, reply) = st.barrier.take()?;
        sealed.extend(self.seal(st));
        Some(reply)
    }

    /// Nothing waits here: no chunk kept aside, no open batch, no event held
    /// for an enrichment. (With no reader left and nothing at the gate, the
    /// cluster can be forgotten.)
    pub fn is_idle(&self) -> bool {
        let st = lock(&self.state);
        st.pending.is_empty() && st.open.is_none() && st.order.idle()
    }

    /// When the open batch is due (see [`seal_if_due`](Self::seal_if_due)),
    /// as of `now`, from the copy the sealer reads without the batcher's lock
    /// (a worker may hold that lock while it waits on a full spool, and the
    /// sealer runs on the async runtime). `no_slot`: the target had no request
    /// slot free at the last look, so an idle-due batch waits for `max_age`
    /// (or an acknowledgement, which wakes the sealer).
    fn due(&self, now: Instant, no_slot: bool) -> Due {
        let at = self.open_at.load(Ordering::Acquire);
        if at == NOT_OPEN {
            return Due::Nothing;
        }
        let limits = &self.common.limits;
        let opened = self.common.epoch + Duration::from_nanos(at);
        let age = now.saturating_duration_since(opened);
        if age >= limits.max_age {
            return Due::Now { age, idle: false };
        }
        let at_max_age = opened + limits.max_age;
        match limits.idle_seal {
            Some(idle)
                if self.open_events.load(Ordering::Acquire) >= limits.idle_seal_min_events =>
            {
                if age < idle {
                    Due::At((opened + idle).min(at_max_age))
                } else if no_slot {
                    Due::At(at_max_age)
                } else {
                    Due::Now { age, idle: true }
                }
            }
            _ => Due::At(at_max_age),
        }
    }

    fn due_locked(&self, st: &State, now: Instant) -> Sealing {
        let Some(o) = st.open.as_ref() else {
            return Sealing::NotDue;
        };
        let limits = &self.common.limits;
        let age = now.saturating_duration_since(o.opened);
        if age >= limits.max_age {
            return Sealing::Sealed;
        }
        match limits.idle_seal {
            Some(idle) if age >= idle && o.events >= limits.idle_seal_min_events => {
                let route = &o.routed.route;
                if route.spool.unacked_records() < route.lanes as u64 {
                    Sealing::Sealed
                } else {
                    Sealing::NoSlot
                }
            }
            _ => Sealing::NotDue,
        }
    }

    /// Seal the open batch if it is `max_age` old, or `idle_seal` old while the
    /// target has a request slot free and the batch holds at least
    /// `idle_seal_min_events` events (so that a light load does not become one
    /// request per event). Blocking: it may wait for the cluster's worker, and
    /// on the spool.
    fn seal_if_due(&self) -> Sealing {
        let mut st = lock(&self.state);
        let due = self.due_locked(&st, Instant::now());
        if due == Sealing::Sealed {
            let sealed = self.seal(&mut st);
            let order = lock(&self.append);
            drop(st);
            self.write(sealed.into_iter().collect(), order);
        }
        due
    }

    /// Seal whatever is open (shutdown), after giving up the enrichments that
    /// have not come back: their generic events go out first.
    fn flush(&self) {
        let mut st = lock(&self.state);
        // A barrier still waiting is let go (its receiver sees the sender gone).
        st.barrier = None;
        let chains = st.order.close();
        if !chains.is_empty() {
            let mut sealed = Vec::new();
            for chain in chains {
                self.abandon(&mut st, chain, Fallback::Shutdown, &mut sealed);
            }
            let order = (!sealed.is_empty()).then(|| lock(&self.append));
            drop(st);
            if let Some(order) = order {
                self.write(sealed, order);
            }
            st = lock(&self.state);
        }

        if !st.pending.is_empty() {
            // Only a chunk lost in a worker could leave a gap; its successors are
            // still whole and are delivered.
            error!(
                cluster = %self.cluster,
                chunks = st.pending.len(),
                "chunks waiting for a predecessor that never came; delivering them anyway"
            );
            let pending = std::mem::take(&mut st.pending);
            let mut sealed = Vec::new();
            for out in pending.into_values() {
                self.apply(&mut st, &out, &mut sealed);
                self.gate.release(self.gate_id, out.weight.0, out.weight.1);
            }
            sealed.extend(self.seal(&mut st));
            let order = lock(&self.append);
            drop(st);
            self.write(sealed, order);
            return;
        }
        let sealed = self.seal(&mut st);
        let order = lock(&self.append);
        drop(st);
        self.write(sealed.into_iter().collect(), order);
    }

    fn apply(&self, st: &mut State, out: &ChunkOut, sealed: &mut Vec<Sealed>) {
        let n = out.ends.len();
        if out.hints.is_empty() && st.order.idle() {
            return self.append(
                st,
                &out.events,
                &out.ends,
                0..n,
                out.received_unix_us,
                sealed,
            );
        }
        // Walk the events; runs that need no decision are still copied in one piece.
        let enriched = self.enrich.get().is_some();
        let mut run = 0;
        let mut hints = out.hints.iter().peekable();
        for i in 0..n {
            let key = out.file_keys.get(i).copied().unwrap_or(0);
            let hint = hints.next_if(|h| h.0 as usize == i);
            let decide = st.order.pending(key)
                || match hint {
                    None => false,
                    Some((_, op, info)) => match info.hint {
                        Hint::None => false,
                        Hint::Created { directory } => {
                            st.order.learn(key, directory);
                            false
                        }
                        Hint::WriteMetadata { .. } if enriched => true,
                        Hint::Untyped | Hint::WriteMetadata { .. } => {
                            let dir = st.order.directory(key) == Some(true);
                            if !dir || op.is_directory() {
                                self.metrics.events[op.index()].inc();
                            }
                            dir && !op.is_directory()
                        }
                    },
                };
            if !decide {
                continue;
            }
            if run < i {
                self.append(
                    st,
                    &out.events,
                    &out.ends,
                    run..i,
                    out.received_unix_us,
                    sealed,
                );
            }
            let start = if i == 0 {
                0
            } else {
                out.ends[i - 1] as usize + 1
            };
            let (op, info) = match hint {
                Some((_, op, info)) => {
                    let tallied_here =
                        matches!(info.hint, Hint::Untyped | Hint::WriteMetadata { .. });
                    (tallied_here.then_some(*op), *info)
                }
                None => (
                    None,
                    EventInfo {
                        file_key: key,
                        ..EventInfo::default()
                    },
                ),
            };
            let ev = Held {
                bytes: out.events[start..out.ends[i] as usize].to_vec(),
                received_us: out.received_unix_us,
                info,
                op,
            };
            self.route(st, ev, sealed);
            run = i + 1;
        }
        if run < n {
            self.append(
                st,
                &out.events,
                &out.ends,
                run..n,
                out.received_unix_us,
                sealed,
            );
        }
    }

    /// Append events `range` of `events` (comma-separated, `ends` as in
    /// [`ChunkOut`]) to the open batch, sealing batches as they fill.
    fn append(
        &self,
        st: &mut State,
        events: &[u8],
        ends: &[u32],
        range: Range<usize>,
        received_unix_us: u64,
        sealed: &mut Vec<Sealed>,
    ) {
        let n = range.end;
        let start_of = |i: usize| {
            if i == 0 {
                0
            } else {
                ends[i - 1] as usize + 1
            }
        };
        let mut i = range.start;
        while i < n {
            if st.open.is_none() {
                st.open = Some(self.open_batch(&st.routed));
            }
            let open = st.open.as_mut().expect("opened above");
            // Take the longest run of events from `i` that fits the open batch.
            let mut j = i;
            let mut size = open.body.len();
            while j < n && (open.events as usize + (j - i)) < self.common.limits.max_events {
                let len = ends[j] as usize - start_of(j) + 1;
                let empty = open.events == 0 && j == i;
                if !empty && size + len + 2 > self.common.limits.max_bytes {
                    break;
                }
                size += len;
                j += 1;
            }
            if j == i {
                sealed.extend(self.seal(st));
                continue;
            }
            if open.events > 0 {
                open.body.push(b',');
            }
            open.body
                .extend_from_slice(&events[start_of(i)..ends[j - 1] as usize]);
            let taken = (j - i) as u32;
            let min = self.common.limits.idle_seal_min_events;
            if open.events < min && open.events + taken >= min {
                // Now it may leave at the idle age: the sealer takes a new look.
                self.open_events
                    .store(open.events + taken, Ordering::Release);
                open.routed.route.wake.notify_one();
            }
            open.events += taken;
            self.open_events.store(open.events, Ordering::Relaxed);
            let full_profile = open.received.len() >= MAX_RECEIVED;
            match open.received.last_mut() {
                // Same read, or enough entries for a batch's latency profile: fold
                // into the last one (its time is then a little early, never late).
                Some((at, count)) if *at == received_unix_us || full_profile => *count += taken,
                _ => open.received.push((received_unix_us, taken)),
            }
            let full = open.events as usize >= self.common.limits.max_events
                || open.body.len() + 2 >= self.common.limits.max_bytes;
            i = j;
            if full {
                sealed.extend(self.seal(st));
            }
        }
    }

    fn open_batch(&self, routed: &Arc<Routed>) -> Open {
        let batch_id = uuid::Uuid::now_v7().to_string();
        let mut body = self
            .common
            .bodies
            .get((self.common.limits.max_bytes / 4).clamp(4096, 256 * 1024) + routed.prefix.len());
        body.extend_from_slice(&routed.prefix);
        body.extend_from_slice(batch_id.as_bytes());
        body.extend_from_slice(b"\",\"events\":[");
        let opened = Instant::now();
        self.open_events.store(0, Ordering::Relaxed);
        let since = opened
            .saturating_duration_since(self.common.epoch)
            .as_nanos();
        self.open_at.store(
            u64::try_from(since).unwrap_or(NOT_OPEN - 1),
            Ordering::Release,
        );
        routed.route.wake.notify_one();
        Open {
            batch_id,
            body,
            events: 0,
            opened,
            received: Vec::new(),
            routed: routed.clone(),
        }
    }

    fn seal(&self, st: &mut State) -> Option<Sealed> {
        let mut open = st.open.take()?;
        self.open_at.store(NOT_OPEN, Ordering::Release);
        open.body.extend_from_slice(b"]}");
        Some(Sealed {
            batch_id: open.batch_id,
            body: open.body,
            events: open.events,
            received: open.received,
            routed: open.routed,
        })
    }

    /// Append sealed batches to the spool, in order, waiting while it is full or
    /// failing. Nothing is dropped unless the broker is being torn down.
    fn write(&self, sealed: Vec<Sealed>, _order: MutexGuard<'_, ()>) {
        for batch in sealed {
            let new = NewBatch {
                batch_id: &batch.batch_id,
                cluster: &self.cluster,
                events: batch.events,
                received: &batch.received,
                body: &batch.body,
            };
            let mut failures = 0u32;
            loop {
                match batch.routed.route.spool.append(&new, APPEND_WAIT) {
                    Ok(_) => {
                        self.metrics.batches.inc();
                        break;
                    }
                    Err(AppendError::Full) => {
                        if let Some(suppressed) = SPOOL_FULL_LOG.check() {
                            warn!(
                                cluster = %self.cluster,
                                suppressed,
                                "spool full: intake paused until the target catches up"
                            );
                        }
                    }
                    Err(AppendError::Io(err)) => {
                        failures += 1;
                        if let Some(suppressed) = SPOOL_ERROR_LOG.check() {
                            error!(
                                cluster = %self.cluster,
                                error = %err,
                                suppressed,
                                "spool write failed: intake paused, retrying"
                            );
                        }
                        self.common
                            .back_off(Duration::from_millis((50u64 << failures.min(5)).min(1000)));
                    }
                    Err(AppendError::TooLarge { bytes }) => {
                        // Cannot happen within the configured limits (batch.max_bytes
                        // and ingest.max_frame_bytes are far below the record cap).
                        error!(
                            cluster = %self.cluster,
                            batch_id = %batch.batch_id,
                            events = batch.events,
                            bytes,
                            "batch too large for the spool: batch lost"
                        );
                        self.metrics.events_lost.add(u64::from(batch.events));
                        break;
                    }
                    Err(AppendError::Closed) => {
                        error!(
                            cluster = %self.cluster,
                            batch_id = %batch.batch_id,
                            events = batch.events,
                            "spool closed before a batch could be appended: batch lost"
                        );
                        self.metrics.events_lost.add(u64::from(batch.events));
                        break;
                    }
                }
                if self.common.abort.load(Ordering::Relaxed) {
                    error!(
                        cluster = %self.cluster,
                        batch_id = %batch.batch_id,
                        events = batch.events,
                        "shutdown deadline passed while the spool was unavailable: batch lost"
                    );
                    self.metrics.events_lost.add(u64::from(batch.events));
                    break;
                }
            }
            self.common.bodies.put(batch.body);
        }
    }
}

/// The age sealer of one target: a task that seals the open batches of the
/// clusters routed to the target once they are due (see
/// [`Batcher::seal_if_due`]). It sleeps until the soonest deadline of those
/// batches, and is woken early through [`Route::wake`] (a batch opened, or
/// reached `idle_seal_min_events`) and by the spool ([`Spool::changed`]: a
/// request slot or room freed). With no open batch it sleeps until woken. One
/// per target, each sealing on a blocking thread, so that a full spool, which
/// holds a seal appending to it, holds no other target's clusters; and it does
/// not seal while its spool is full (the batch keeps filling, and the worker that
/// fills it waits on the spool, which pauses intake).
pub struct Sealer {
    shared: Arc<SealerShared>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

struct SealerShared {
    batchers: Mutex<Vec<Arc<Batcher>>>,
    wake: Arc<Notify>,
    stop: AtomicBool,
}

impl Sealer {
    /// Start the sealer of target `name` and its `spool` on `runtime`.
    pub fn start(name: &str, spool: Arc<Spool>, runtime: &tokio::runtime::Handle) -> Sealer {
        let shared = Arc::new(SealerShared {
            batchers: Mutex::new(Vec::new()),
            wake: Arc::new(Notify::new()),
            stop: AtomicBool::new(false),
        });
        let task = runtime.spawn(seal_loop(name.to_string(), shared.clone(), spool));
        Sealer {
            shared,
            task: Mutex::new(Some(task)),
        }
    }

    /// What a route to this target wakes the sealer with ([`Route::wake`]).
    pub fn waker(&self) -> Arc<Notify> {
        self.shared.wake.clone()
    }

    /// Seal `b`'s batches here from now on.
    pub fn add(&self, b: &Arc<Batcher>) {
        lock(&self.shared.batchers).push(b.clone());
        self.shared.wake.notify_one();
    }

    /// No longer seal `b`'s batches here.
    pub fn remove(&self, b: &Arc<Batcher>) {
        lock(&self.shared.batchers).retain(|x| !Arc::ptr_eq(x, b));
    }

    /// Stop sealing. A seal under way finishes on its blocking thread (the
    /// batcher's append lock keeps a later flush behind it).
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.wake.notify_one();
        if let Some(task) = lock(&self.task).take() {
            task.abort();
        }
    }
}

impl Drop for Sealer {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn seal_loop(name: String, shared: Arc<SealerShared>, spool: Arc<Spool>) {
    // The target had no request slot free for an idle-due batch at the last
    // look; cleared by the next acknowledgement.
    let mut no_slot = false;
    loop {
        // Armed before looking, so that a wake-up while looking is not lost.
        let woken = shared.wake.notified();
        let changed = spool.changed();
        tokio::pin!(woken, changed);
        woken.as_mut().enable();
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let batchers = lock(&shared.batchers).clone();
        let now = Instant::now();
        let mut due = Vec::new();
        let mut next: Option<Instant> = None;
        for b in batchers {
            match b.due(now, no_slot) {
                Due::Nothing => {}
                Due::Now { age, .. } => due.push((age, b)),
                Due::At(at) => next = Some(next.map_or(at, |n| n.min(at))),
            }
        }
        if !due.is_empty() && spool.has_room() {
            // Oldest open batch first: when fewer request slots are free than
            // batches are idle-due, those that waited longest take them (a fixed
            // order would leave the last clusters to max_age).
            due.sort_by_key(|d| std::cmp::Reverse(d.0));
            let sealing = tokio::task::spawn_blocking(move || {
                due.iter().fold(false, |busy, (_, b)| {
                    busy | (b.seal_if_due() == Sealing::NoSlot)
                })
            });
            match sealing.await {
                Ok(busy) => no_slot = busy,
                Err(err) => error!(target = %name, error = %err, "a batch seal failed"),
            }
            continue;
        }
        // Due but the spool is full: it waits for room (`changed`).
        let sleep = async {
            match next {
                Some(at) if due.is_empty() => tokio::time::sleep_until(at).await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut woken => {}
            _ = &mut changed => no_slot = false,
            _ = sleep => {}
        }
    }
}

/// Gives a newly seen cluster its route and records its batcher, so that later
/// route changes reach it (the runtime target set, [`crate::targets::Targets`]).
pub trait Router: Send + Sync {
    /// Call `make` with the route of `cluster` and keep the batcher it returns;
    /// `None` (without calling `make`) when the cluster has nowhere to go.
    fn attach(
        &self,
        cluster: &Arc<str>,
        make: &mut dyn FnMut(Route) -> Arc<Batcher>,
    ) -> Option<Arc<Batcher>>;
    /// Stop the age sealers (shutdown).
    fn stop_sealers(&self);
    /// Forget `batcher`, the one attached for `cluster` (an idle cluster that
    /// ingest forgets): its route and its sealer go.
    fn detach(&self, cluster: &str, batcher: &Arc<Batcher>);
    /// Whether `cluster` is configured or registered (never refused for room).
    fn is_known(&self, cluster: &str) -> bool;
}

/// A router that sends every cluster to one route, with no age sealer (benches
/// and tests; the broker uses [`crate::targets::Targets`]).
pub struct OneRoute(pub Route);

impl Router for OneRoute {
    fn attach(
        &self,
        _cluster: &Arc<str>,
        make: &mut dyn FnMut(Route) -> Arc<Batcher>,
    ) -> Option<Arc<Batcher>> {
        Some(make(self.0.clone()))
    }

    fn stop_sealers(&self) {}

    fn detach(&self, _cluster: &str, _batcher: &Arc<Batcher>) {}

    fn is_known(&self, _cluster: &str) -> bool {
        false
    }
}

/// Every batcher, and the router that gives each its target.
pub struct Batches {
    common: Arc<Common>,
    router: Arc<dyn Router>,
    all: Mutex<Vec<Arc<Batcher>>>,
    enricher: OnceLock<Arc<Enricher>>,
}

impl Batches {
    pub fn start(limits: BatchConfig, router: Arc<dyn Router>) -> Arc<Batches> {
        Arc::new(Batches {
            common: Arc::new(Common::new(limits)),
            router,
            all: Mutex::new(Vec::new()),
            enricher: OnceLock::new(),
        })
    }

    /// A batcher for a newly seen cluster, with its slot at the gate and its
    /// metrics; `None` (and neither taken) when the cluster has no target.
    pub fn create(
        &self,
        cluster: Arc<str>,
        metrics: &Metrics,
        gate: &Arc<Gate>,
    ) -> Option<Arc<Batcher>> {
        let enricher = self.enricher.get();
        let mut make = |route: Route| {
            let b = Arc::new(Batcher::new(
                cluster.clone(),
                route,
                metrics.cluster(&cluster),
                (gate.clone(), gate.register()),
                self.common.clone(),
            ));
            if let Some(e) = enricher {
                b.configure(e.config(), e.link(&b.cluster));
            }
            b
        };
        let b = self.router.attach(&cluster, &mut make)?;
        lock(&self.all).push(b.clone());
        Some(b)
    }

    /// Forget an idle cluster's batcher (see [`Batcher::is_idle`]) and give its
    /// gate slot back; a batcher that is no longer idle is kept and false
    /// returned.
    pub fn forget(&self, b: &Arc<Batcher>) -> bool {
        let mut all = lock(&self.all);
        if !b.is_idle() || !b.gate.unregister(b.gate_id) {
            return false;
        }
        all.retain(|x| !Arc::ptr_eq(x, b));
        drop(all);
        self.router.detach(b.cluster(), b);
        true
    }

    /// Whether `cluster` is configured or registered.
    pub fn is_known(&self, cluster: &str) -> bool {
        self.router.is_known(cluster)
    }

    /// Enrich the metadata changes of the clusters `enricher` has a link for
    /// (call before the first cluster is created).
    pub fn set_enricher(&self, enricher: Arc<Enricher>) {
        let _ = self.enricher.set(enricher);
    }

    /// Stop the sealers and seal every open batch into its spool (shutdown, after
    /// the pool has drained). Enrichments that have not come back by then go out
    /// as their generic events first.
    pub fn flush_all(&self) {
        self.router.stop_sealers();
        let all = lock(&self.all).clone();
        for b in all {
            b.flush();
        }
    }

    /// Give up waiting on unavailable spools (the shutdown deadline passed).
    pub fn abort(&self) {
        self.common.set_abort();
    }
}

impl enrich::Completions for Batcher {
    fn complete(&self, c: Completion) {
        Batcher::complete(self, c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::spool::{Fsync, Options};

    fn chunk(no: u64, events: &[&str]) -> ChunkOut {
        let mut out = ChunkOut {
            chunk_no: no,
            received_unix_us: 1000 + no,
            ..ChunkOut::default()
        };
        for (i, e) in events.iter().enumerate() {
            if i > 0 {
                out.events.push(b',');
            }
            out.events.extend_from_slice(e.as_bytes());
            out.ends.push(out.events.len() as u32);
        }
        out
    }

    fn batcher(
        dir: &std::path::Path,
        max_events: usize,
        max_bytes: usize,
    ) -> (Batcher, Arc<Spool>) {
        batcher_with(dir, max_events, max_bytes, None, 1)
    }

    /// A spool in `dir` that never fsyncs.
    fn test_spool(dir: &std::path::Path) -> Arc<Spool> {
        let options = Options {
            max_bytes: 1 << 30,
            segment_bytes: 1 << 20,
            fsync: Fsync::Never,
        };
        Arc::new(Spool::open(dir, options).unwrap())
    }

    fn batcher_with(
        dir: &std::path::Path,
        max_events: usize,
        max_bytes: usize,
        idle_seal: Option<Duration>,
        idle_seal_min_events: u32,
    ) -> (Batcher, Arc<Spool>) {
        let spool = test_spool(dir);
        let limits = BatchConfig {
            max_events,
            max_bytes,
            max_age: Duration::from_millis(50),
            idle_seal,
            idle_seal_min_events,
        };
        let m = Metrics::new();
        let gate = Arc::new(Gate::new(1 << 20, 1 << 30));
        let id = gate.register();
        let b = Batcher::new(
            Arc::from("c\"1"),
            Route {
                target: Arc::from("t"),
                spool: spool.clone(),
                filer_id: Some(7),
                lanes: 1,
                wake: Default::default(),
            },
            m.cluster("c\"1"),
            (gate, id),
            Arc::new(Common::new(limits)),
        );
        (b, spool)
    }

    fn drain(spool: &Spool) -> Vec<serde_json::Value> {
        spool.close();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut bodies = Vec::new();
        rt.block_on(async {
            while let Some(rec) = spool.next().await {
                let v: serde_json::Value = serde_json::from_slice(&rec.body).unwrap();
                assert_eq!(v["batch_id"], rec.batch_id.as_str());
                assert_eq!(v["events"].as_array().unwrap().len() as u32, rec.events);
                bodies.push(v);
                spool.ack(rec.id);
            }
        });
        bodies
    }

    #[test]
    fn restores_chunk_order_and_splits_at_max_events() {
        let dir = tempfile::tempdir().unwrap();
        let (b, spool) = batcher(dir.path(), 3, 1 << 20);
        b.submit(chunk(2, &["{\"n\":5}"]));
        b.submit(chunk(1, &["{\"n\":3}", "{\"n\":4}"]));
        b.submit(chunk(0, &["{\"n\":1}", "{\"n\":2}"]));
        b.submit(chunk(3, &[]));
        b.flush();
        let batches = drain(&spool);
        let ns: Vec<Vec<u64>> = batches
            .iter()
            .map(|v| {
                v["events"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| e["n"].as_u64().unwrap())
                    .collect()
            })
            .collect();
        assert_eq!(ns, vec![vec![1, 2, 3], vec![4, 5]]);
        assert_eq!(batches[0]["schema"], SCHEMA);
        assert_eq!(batches[0]["cluster"], "c\"1");
        assert_eq!(batches[0]["filer_id"], 7);
        assert_ne!(batches[0]["batch_id"], batches[1]["batch_id"]);
    }

    #[test]
    fn splits_at_max_bytes_but_never_drops_a_large_event() {
        let dir = tempfile::tempdir().unwrap();
        let (b, spool) = batcher(dir.path(), 1000, 4096);
        let big = format!("{{\"x\":\"{}\"}}", "a".repeat(5000));
        let small = "{\"x\":\"b\"}".to_string();
        let events: Vec<&str> = [small.as_str(); 300]
            .into_iter()
            .chain([big.as_str()])
            .chain([small.as_str(); 3])
            .collect();
        b.submit(chunk(0, &events));
        b.flush();
        let batches = drain(&spool);
        let total: usize = batches
            .iter()
            .map(|v| v["events"].as_array().unwrap().len())
            .sum();
        assert_eq!(total, 304);
        for v in &batches {
            let len = serde_json::to_vec(v).unwrap().len();
            let n = v["events"].as_array().unwrap().len();
            assert!(len <= 4096 || n == 1, "{len} bytes in {n} events");
        }
    }

    #[test]
    fn a_new_route_seals_the_open_batch_to_the_old_one_and_takes_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let (b, first) = batcher(&dir.path().join("a"), 1000, 1 << 20);
        let second = test_spool(&dir.path().join("b"));
        b.submit(chunk(0, &["{\"n\":1}", "{\"n\":2}"]));
        b.set_route(Route {
            target: Arc::from("b"),
            spool: second.clone(),
            filer_id: None,
            lanes: 1,
            wake: Default::default(),
        });
        // The open batch went to the old spool at once, whole.
        assert_eq!(first.stats().appended_records, 1);
        b.submit(chunk(1, &["{\"n\":3}"]));
        b.flush();
        let old = drain(&first);
        let new = drain(&second);
        assert_eq!(old.len(), 1);
        assert_eq!(old[0]["filer_id"], 7);
        assert_eq!(old[0]["events"].as_array().unwrap().len(), 2);
        assert_eq!(new.len(), 1);
        assert_eq!(new[0]["filer_id"], serde_json::Value::Null);
        assert_eq!(new[0]["events"][0]["n"], 3);
        assert_eq!(b.current_route().target.as_ref(), "b");
    }

    /// [`drain`] from inside a runtime.
    fn drain_apart(spool: &Spool) -> Vec<serde_json::Value> {
        std::thread::scope(|s| s.spawn(|| drain(spool)).join().unwrap())
    }

    /// Let the sealer task and its blocking seals (real threads) run while the
    /// clock stands still, until `done`, or 10 s of real time.
    async fn settle(done: impl Fn() -> bool) {
        settle_for(done, Duration::from_secs(10)).await
    }

    /// What a sealer that should not seal gets to show that it does not.
    async fn quiet() {
        settle_for(|| false, Duration::from_millis(100)).await
    }

    async fn settle_for(done: impl Fn() -> bool, real: Duration) {
        let deadline = std::time::Instant::now() + real;
        while !done() && std::time::Instant::now() < deadline {
            tokio::task::yield_now().await;
            std::thread::yield_now();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_leaves_early_while_the_target_has_a_free_slot() {
        let dir = tempfile::tempdir().unwrap();
        let (b, spool) = batcher_with(dir.path(), 1000, 1 << 20, Some(Duration::from_millis(5)), 1);
        b.submit(chunk(0, &["{}"]));
        tokio::time::advance(Duration::from_millis(8)).await;
        b.seal_if_due();
        assert_eq!(spool.stats().appended_records, 1, "sealed at the idle age");
        // The one slot (lanes = 1) now holds that batch: the next waits for max_age.
        b.submit(chunk(1, &["{}"]));
        tokio::time::advance(Duration::from_millis(8)).await;
        b.seal_if_due();
        assert_eq!(spool.stats().appended_records, 1, "no slot free: it waits");
        tokio::time::advance(Duration::from_millis(50)).await;
        b.seal_if_due();
        assert_eq!(spool.stats().appended_records, 2, "sealed at max_age");
    }

    /// Light load: a batch with fewer than `idle_seal_min_events` events does
    /// not leave early even with a slot free; it waits for `max_age`, so a
    /// trickle of events is not one request each.
    #[tokio::test(start_paused = true)]
    async fn a_small_batch_waits_for_max_age_even_with_a_free_slot() {
        let dir = tempfile::tempdir().unwrap();
        let (b, spool) = batcher_with(dir.path(), 1000, 1 << 20, Some(Duration::from_millis(5)), 3);
        b.submit(chunk(0, &["{}", "{}"]));
        tokio::time::advance(Duration::from_millis(10)).await;
        b.seal_if_due();
        assert_eq!(spool.stats().appended_records, 0, "2 events: it waits");
        b.submit(chunk(1, &["{}"]));
        b.seal_if_due();
        assert_eq!(
            spool.stats().appended_records,
            1,
            "3 events: it leaves early"
        );
        b.submit(chunk(2, &["{}"]));
        tokio::time::advance(Duration::from_millis(60)).await;
        b.seal_if_due();
        assert_eq!(spool.stats().appended_records, 2, "sealed at max_age");
    }

    fn shared_target(
        limits: &BatchConfig,
        spool: &Arc<Spool>,
        sealer: &Sealer,
    ) -> impl Fn(&str) -> Arc<Batcher> {
        let m = Metrics::new();
        let gate = Arc::new(Gate::new(1 << 20, 1 << 30));
        let common = Arc::new(Common::new(limits.clone()));
        let (spool, wake) = (spool.clone(), sealer.waker());
        move |name: &str| {
            Arc::new(Batcher::new(
                Arc::from(name),
                Route {
                    target: Arc::from("t"),
                    spool: spool.clone(),
                    filer_id: None,
                    lanes: 1,
                    wake: wake.clone(),
                },
                m.cluster(name),
                (gate.clone(), gate.register()),
                common.clone(),
            ))
        }
    }

    /// Two clusters share a target with one request slot; both have a batch
    /// past `idle_seal` when the sealer looks. The slot goes to the batch that
    /// has waited longer, whatever order the batchers were added in.
    #[tokio::test(start_paused = true)]
    async fn the_sealer_gives_a_free_slot_to_the_oldest_batch() {
        let dir = tempfile::tempdir().unwrap();
        let spool = test_spool(dir.path());
        let limits = BatchConfig {
            max_events: 1000,
            max_bytes: 1 << 20,
            max_age: Duration::from_secs(60),
            idle_seal: Some(Duration::from_millis(10)),
            idle_seal_min_events: 1,
        };
        let sealer = Sealer::start("t", spool.clone(), &tokio::runtime::Handle::current());
        let make = shared_target(&limits, &spool, &sealer);
        let (young, old) = (make("young"), make("old"));
        old.submit(chunk(0, &["{}"]));
        tokio::time::advance(Duration::from_millis(30)).await;
        young.submit(chunk(0, &["{}"]));
        tokio::time::advance(Duration::from_millis(15)).await;
        // Both are idle-due before the sealer first looks.
        sealer.add(&young);
        sealer.add(&old);
        settle(|| spool.stats().appended_records > 0).await;
        tokio::time::advance(Duration::from_millis(20)).await;
        quiet().await;
        sealer.stop();
        assert_eq!(spool.stats().appended_records, 1, "one slot, one batch");
        let batches = drain_apart(&spool);
        assert_eq!(batches[0]["cluster"], "old");
    }

    #[tokio::test(start_paused = true)]
    async fn the_sealer_seals_a_batch_after_max_age() {
        let dir = tempfile::tempdir().unwrap();
        let (b, spool) = batcher(dir.path(), 1000, 1 << 20);
        b.submit(chunk(0, &["{}"]));
        b.seal_if_due();
        assert_eq!(spool.stats().appended_records, 0);
        tokio::time::advance(Duration::from_millis(60)).await;
        b.seal_if_due();
        assert_eq!(spool.stats().appended_records, 1);
        assert_eq!(drain_apart(&spool).len(), 1);
    }

    /// The sealer task on a paused clock: a batch opened leaves at `max_age`
    /// and not a millisecond before, with no tick in between; a later batch
    /// after its own `max_age`; an acknowledgement frees the one slot for an
    /// idle-due batch at once.
    #[tokio::test(start_paused = true)]
    async fn the_sealer_task_seals_at_the_deadline_and_on_a_freed_slot() {
        let dir = tempfile::tempdir().unwrap();
        let spool = test_spool(dir.path());
        let limits = BatchConfig {
            max_events: 1000,
            max_bytes: 1 << 20,
            max_age: Duration::from_millis(200),
            idle_seal: Some(Duration::from_millis(20)),
            idle_seal_min_events: 3,
        };
        let sealer = Sealer::start("t", spool.clone(), &tokio::runtime::Handle::current());
        let b = shared_target(&limits, &spool, &sealer)("c");
        sealer.add(&b);
        let appended = || spool.stats().appended_records;

        // Two events: under idle_seal_min_events, so only max_age seals it.
        b.submit(chunk(0, &["{}", "{}"]));
        tokio::time::advance(Duration::from_millis(199)).await;
        quiet().await;
        assert_eq!(appended(), 0, "not before max_age");
        tokio::time::advance(Duration::from_millis(1)).await;
        settle(|| appended() == 1).await;
        assert_eq!(appended(), 1, "at max_age");

        // Three events: idle-due at 20 ms, but the one slot holds the first
        // batch (not acknowledged), so it waits, until the acknowledgement.
        b.submit(chunk(1, &["{}", "{}", "{}"]));
        tokio::time::advance(Duration::from_millis(50)).await;
        quiet().await;
        assert_eq!(appended(), 1, "no free slot");
        let rec = spool.next().await.unwrap();
        spool.ack(rec.id);
        settle(|| appended() == 2).await;
        assert_eq!(appended(), 2, "sealed on the acknowledgement");
        sealer.stop();
    }
}

/// Property tests of batching: whatever the chunks, their sizes, the order the
/// workers hand them in, the commit barriers between them, the enrichments and
/// the order their results come back in, and the bounds: every event is sealed
/// into exactly one spool record, each file's events in arrival order (and,
/// with nothing enriched, all events in arrival order) across batches, and
/// every record is within its bounds and not empty.
#[cfg(test)]
mod props {
    use super::*;
    use crate::metrics::Metrics;
    use crate::spool::{Fsync, Options};
    use proptest::prelude::*;

    /// One generated event: the file it is about, how much filler it carries,
    /// and whether it is a metadata change (enriched when the case enriches).
    #[derive(Debug, Clone)]
    struct Ev {
        file: u8,
        pad: usize,
        meta: bool,
    }

    /// What one worker does next: hand in a chunk, ask for a commit barrier at
    /// that many chunks, or complete one of the enrichments handed out (picked
    /// by index among those outstanding).
    #[derive(Debug, Clone)]
    enum Step {
        Submit(u64),
        Barrier(u64),
        Complete(usize),
    }

    /// Enrichment bounds: jobs in flight at most (more fall back to the
    /// generic event at once), events and bytes held behind lookups.
    #[derive(Debug, Clone)]
    struct Enrich {
        jobs: usize,
        queue_max_events: usize,
        queue_max_bytes: usize,
        /// Complete every lookup still out before the flush (else the flush
        /// gives them up, as at shutdown).
        complete_rest: bool,
    }

    #[derive(Debug, Clone)]
    struct Case {
        max_events: usize,
        max_bytes: usize,
        enrich: Option<Enrich>,
        chunks: Vec<Vec<Ev>>,
        /// Each worker's steps, in its order.
        workers: Vec<Vec<Step>>,
    }

    fn ev() -> impl Strategy<Value = Ev> {
        // Mostly small events, some larger than a small `max_bytes`.
        let pad = prop_oneof![4 => 0usize..40, 1 => 0usize..1200];
        (0u8..4, pad, prop::bool::weighted(0.3)).prop_map(|(file, pad, meta)| Ev {
            file,
            pad,
            meta,
        })
    }

    fn enrich() -> impl Strategy<Value = Option<Enrich>> {
        prop::option::of(
            (1usize..5, 1usize..8, 64usize..4000, any::<bool>()).prop_map(
                |(jobs, queue_max_events, queue_max_bytes, complete_rest)| Enrich {
                    jobs,
                    queue_max_events,
                    queue_max_bytes,
                    complete_rest,
                },
            ),
        )
    }

    fn case() -> impl Strategy<Value = Case> {
        let chunks = prop::collection::vec(prop::collection::vec(ev(), 0..7), 0..12);
        (1usize..9, 64usize..1600, enrich(), chunks)
            .prop_flat_map(|(max_events, max_bytes, enrich, chunks)| {
                let n = chunks.len() as u64;
                let order = Just((0..n).collect::<Vec<u64>>()).prop_shuffle();
                // Per delivery: the worker that makes it, maybe a barrier after
                // it, and the completions it then hands back.
                let per = prop::collection::vec(
                    (
                        0usize..3,
                        prop::option::weighted(0.2, 0..=n),
                        prop::collection::vec(0usize..8, 0..3),
                    ),
                    chunks.len(),
                );
                (
                    Just((max_events, max_bytes, enrich, chunks)),
                    order,
                    per,
                    1usize..4,
                )
            })
            .prop_map(
                |((max_events, max_bytes, enrich, chunks), order, per, n_workers)| {
                    let mut workers = vec![Vec::new(); n_workers];
                    for (no, (w, barrier, completes)) in order.into_iter().zip(per) {
                        let steps = &mut workers[w % n_workers];
                        steps.push(Step::Submit(no));
                        if let Some(at) = barrier {
                            steps.push(Step::Barrier(at));
                        }
                        steps.extend(completes.into_iter().map(Step::Complete));
                    }
                    Case {
                        max_events,
                        max_bytes,
                        enrich,
                        chunks,
                        workers,
                    }
                },
            )
    }

    /// Chunk `no` of the case as a worker hands it in; events are numbered
    /// `first..` in arrival order.
    fn chunk_out(no: u64, evs: &[Ev], first: u64) -> ChunkOut {
        let mut out = ChunkOut {
            chunk_no: no,
            // Now: an enrichment is not given up as held too long.
            received_unix_us: crate::metrics::unix_us(),
            ..ChunkOut::default()
        };
        for (i, e) in evs.iter().enumerate() {
            if i > 0 {
                out.events.push(b',');
            }
            let g = first + i as u64;
            let json = format!(
                "{{\"g\":{g},\"f\":{},\"p\":\"{}\"}}",
                e.file,
                "x".repeat(e.pad)
            );
            out.events.extend_from_slice(json.as_bytes());
            out.ends.push(out.events.len() as u32);
            let file_key = u64::from(e.file) + 1;
            out.file_keys.push(file_key);
            if e.meta {
                let info = EventInfo {
                    file_key,
                    hint: Hint::WriteMetadata {
                        typed: false,
                        owner_changed: false,
                    },
                    // Any non-empty span: there is a file id to look up.
                    file_id_span: (1, 2),
                    ..EventInfo::default()
                };
                out.hints
                    .push((i as u32, Operation::FilePermissionsChange, info));
            }
        }
        out
    }

    /// A sealed record as read back: its event count, its body's length, and
    /// each event's (number, file).
    struct Read {
        events: u32,
        bytes: usize,
        evs: Vec<(u64, u64)>,
    }

    /// The lookups handed out and not yet completed.
    struct Jobs {
        rx: tokio::sync::mpsc::Receiver<enrich::Job>,
        out: Vec<enrich::Job>,
    }

    impl Jobs {
        /// The `k`-th lookup out (modulo how many), if any.
        fn take(&mut self, k: usize) -> Option<enrich::Job> {
            while let Ok(job) = self.rx.try_recv() {
                self.out.push(job);
            }
            (!self.out.is_empty()).then(|| {
                let at = k % self.out.len();
                self.out.remove(at)
            })
        }
    }

    /// The result of a lookup: the event as it was (so that it can be told
    /// apart in the spool), with its type unknown.
    fn completion(job: enrich::Job) -> Completion {
        Completion {
            key: job.key,
            id: job.id,
            events: vec![(Operation::FilePermissionsChange, job.event.bytes.clone())],
            directory: None,
        }
    }

    fn run(case: &Case) -> Vec<Read> {
        let dir = tempfile::tempdir().unwrap();
        let options = Options {
            max_bytes: 1 << 30,
            segment_bytes: 1 << 20,
            fsync: Fsync::Never,
        };
        let spool = Arc::new(Spool::open(dir.path(), options).unwrap());
        let limits = BatchConfig {
            max_events: case.max_events,
            max_bytes: case.max_bytes,
            max_age: Duration::from_secs(3600),
            idle_seal: None,
            idle_seal_min_events: 1,
        };
        let m = Metrics::new();
        let gate = Arc::new(Gate::new(1 << 20, 1 << 30));
        let id = gate.register();
        let b = Arc::new(Batcher::new(
            Arc::from("c"),
            Route {
                target: Arc::from("t"),
                spool: spool.clone(),
                filer_id: None,
                lanes: 1,
                wake: Default::default(),
            },
            m.cluster("c"),
            (gate, id),
            Arc::new(Common::new(limits)),
        ));
        let jobs = case.enrich.as_ref().map(|e| {
            let (link, rx) = Link::for_test("c", e.jobs, e.queue_max_events, e.queue_max_bytes);
            let cfg = EnrichConfig {
                queue_max_events: e.queue_max_events,
                queue_max_bytes: e.queue_max_bytes,
                ..EnrichConfig::default()
            };
            b.configure(&cfg, Some(link));
            Mutex::new(Jobs {
                rx,
                out: Vec::new(),
            })
        });
        let mut firsts = Vec::with_capacity(case.chunks.len());
        let mut g = 0u64;
        for c in &case.chunks {
            firsts.push(g);
            g += c.len() as u64;
        }
        std::thread::scope(|s| {
            for steps in &case.workers {
                let (b, firsts, jobs) = (&b, &firsts, &jobs);
                s.spawn(move || {
                    for step in steps {
                        match *step {
                            Step::Submit(no) => b.submit(chunk_out(
                                no,
                                &case.chunks[no as usize],
                                firsts[no as usize],
                            )),
                            Step::Barrier(at) => drop(b.barrier(at)),
                            Step::Complete(k) => {
                                let job = jobs.as_ref().and_then(|j| lock(j).take(k));
                                if let Some(job) = job {
                                    b.complete(completion(job));
                                }
                            }
                        }
                    }
                });
            }
        });
        assert!(lock(&b.state).pending.is_empty(), "a chunk left aside");
        if let (Some(jobs), Some(e)) = (&jobs, &case.enrich) {
            if e.complete_rest {
                // A completion may start the next lookup of its file.
                loop {
                    let job = lock(jobs).take(0);
                    let Some(job) = job else { break };
                    b.complete(completion(job));
                }
                assert!(lock(&b.state).order.idle(), "an event still held");
            }
        }
        b.flush();
        assert!(b.is_idle());
        spool.close();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut read = Vec::new();
        rt.block_on(async {
            while let Some(rec) = spool.next().await {
                let v: serde_json::Value = serde_json::from_slice(&rec.body).unwrap();
                let evs = v["events"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| (e["g"].as_u64().unwrap(), e["f"].as_u64().unwrap()))
                    .collect();
                read.push(Read {
                    events: rec.events,
                    bytes: rec.body.len(),
                    evs,
                });
                spool.ack(rec.id);
            }
        });
        read
    }

    /// The case the property found, made small: the hold queue (two events)
    /// is full when the file's third event comes, so the file's chain is given
    /// up; that starts a new chain of the same file, for the metadata change
    /// that waited in it, and the third event must wait behind that one, not go
    /// out before it.
    #[test]
    fn an_event_waits_behind_a_chain_restarted_when_its_file_was_given_up() {
        let meta = |meta| Ev {
            file: 1,
            pad: 0,
            meta,
        };
        let case = Case {
            max_events: 100,
            max_bytes: 1 << 20,
            enrich: Some(Enrich {
                jobs: 4,
                queue_max_events: 2,
                queue_max_bytes: 1 << 20,
                complete_rest: true,
            }),
            chunks: vec![vec![meta(true), meta(true), meta(false)]],
            workers: vec![vec![Step::Submit(0)]],
        };
        let got: Vec<u64> = run(&case)
            .iter()
            .flat_map(|r| r.evs.iter().map(|e| e.0))
            .collect();
        assert_eq!(got, [0, 1, 2]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn every_event_sealed_once_in_order_within_bounds(case in case()) {
            let read = run(&case);
            let total: u64 = case.chunks.iter().map(|c| c.len() as u64).sum();
            for r in &read {
                prop_assert!(r.events > 0, "an empty batch");
                prop_assert_eq!(r.events as usize, r.evs.len(), "record count vs body");
                prop_assert!(r.events as usize <= case.max_events,
                    "{} events over max_events {}", r.events, case.max_events);
                prop_assert!(r.bytes <= case.max_bytes || r.events == 1,
                    "{} bytes in {} events over max_bytes {}", r.bytes, r.events, case.max_bytes);
            }
            let got: Vec<u64> = read.iter().flat_map(|r| r.evs.iter().map(|e| e.0)).collect();
            if case.enrich.is_none() {
                // Nothing held: arrival order across batches.
                prop_assert_eq!(got, (0..total).collect::<Vec<u64>>());
            } else {
                // No loss, no duplicate.
                let mut sorted = got.clone();
                sorted.sort_unstable();
                prop_assert_eq!(sorted, (0..total).collect::<Vec<u64>>());
            }
            // Each file's events in arrival order, even behind enrichments.
            let mut last = BTreeMap::new();
            for &(g, f) in read.iter().flat_map(|r| r.evs.iter()) {
                if let Some(prev) = last.insert(f, g) {
                    prop_assert!(prev < g, "file {} out of order: {} after {}", f, g, prev);
                }
            }
        }
    }
}
