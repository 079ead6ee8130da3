//! listener: accepts syslog connections, tells each one's cluster, and hands it
//! to that cluster's supervisor.
//!
//! It runs on the actix system's main thread; the supervisors run on `io_threads`
//! arbiters. A refused source (allowlist) or a connection over
//! `ingest.max_connections` is closed at once and counted. Accept errors (such as
//! running out of file descriptors) are counted and backed off from, never fatal.
//!
//! A connection's cluster is the configured cluster of its source address, else
//! the HOSTNAME of its first frame without the `-<node>` suffix. The bytes read
//! to find it travel with the connection, so no frame is read twice or lost.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix_rt::Arbiter;
use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use super::framing::{Decoder, Next};
use super::reader::{ConnGuard, Handoff, ReaderDeps};
use crate::batch::Batches;
use crate::cluster::{Attach, Registry};
use crate::config::canonical_ip;
use crate::metrics::RateLimit;
use crate::parse;

const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How long a supervisor may take to take over a connection.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(30);
/// The cluster of connections whose frames tell no HOSTNAME.
pub const UNIDENTIFIED: &str = "unidentified";

static REFUSED_LOG: RateLimit = RateLimit::new(Duration::from_secs(10), 3);
static ACCEPT_ERROR_LOG: RateLimit = RateLimit::new(Duration::from_secs(10), 3);

/// What the ingest side needs from the rest of the broker.
pub struct IngestCtx {
    pub deps: ReaderDeps,
    pub batches: Arc<Batches>,
}

/// The running ingest side: the listener, the supervisors and their readers.
pub struct Ingest {
    thread: std::thread::JoinHandle<()>,
}

impl Ingest {
    /// Wait until the listener stopped and every reader handed on what it read.
    /// Blocking.
    pub fn join(self) {
        if self.thread.join().is_err() {
            error!("the ingest thread panicked");
        }
    }
}

/// Start the actix system that runs ingest, on its own thread.
pub fn start(listener: std::net::TcpListener, ctx: IngestCtx) -> std::io::Result<Ingest> {
    listener.set_nonblocking(true)?;
    let thread = std::thread::Builder::new()
        .name("qbroker-ingest".to_string())
        .spawn(move || {
            let system = actix_rt::System::new();
            system.block_on(serve(listener, ctx));
        })?;
    Ok(Ingest { thread })
}

async fn serve(listener: std::net::TcpListener, ctx: IngestCtx) {
    let cfg = ctx.deps.config.clone();
    let arbiters: Vec<Arbiter> = (0..cfg.io_threads.get()).map(|_| Arbiter::new()).collect();
    let registry = Rc::new(RefCell::new(Registry::new(
        arbiters.iter().map(Arbiter::handle).collect(),
        ctx.deps.gate.clone(),
        ctx.batches.clone(),
        ctx.deps.metrics.clone(),
        cfg.ingest.max_clusters,
    )));
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    match TcpListener::from_std(listener) {
        Ok(listener) => {
            if let Ok(addr) = listener.local_addr() {
                info!(listen = %addr, "accepting syslog connections");
            }
            accept_loop(listener, &ctx, &registry, &done_tx).await;
        }
        Err(err) => error!(error = %err, "cannot use the syslog listener"),
    }
    // Every connection holds a clone of `done_tx`: this ends once all have ended.
    drop(done_tx);
    while done_rx.recv().await.is_some() {}
    info!(clusters = registry.borrow().len(), "ingest stopped");
    drop(registry);
    drop(ctx);
    for a in &arbiters {
        a.stop();
    }
    for a in arbiters {
        let _ = a.join();
    }
}

async fn accept_loop(
    listener: TcpListener,
    ctx: &IngestCtx,
    registry: &Rc<RefCell<Registry>>,
    done: &mpsc::Sender<()>,
) {
    let mut stop = ctx.deps.stop.clone();
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.changed() => return,
            accepted = listener.accept() => accepted,
        };
        if *stop.borrow() {
            return;
        }
        match accepted {
            Ok((stream, peer)) => {
                backoff = ACCEPT_BACKOFF_MIN;
                admit(stream, peer, ctx, registry, done);
            }
            Err(err) => {
                ctx.deps.metrics.ingest.accept_errors.inc();
                if let Some(suppressed) = ACCEPT_ERROR_LOG.check() {
                    warn!(error = %err, backoff_ms = backoff.as_millis() as u64, suppressed, "accept failed");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
            }
        }
    }
}

fn admit(
    stream: TcpStream,
    peer: SocketAddr,
    ctx: &IngestCtx,
    registry: &Rc<RefCell<Registry>>,
    done: &mpsc::Sender<()>,
) {
    let cfg = &ctx.deps.config;
    let metrics = &ctx.deps.metrics;
    if !cfg.source_allowed(peer.ip()) {
        metrics.ingest.refused_allowlist.inc();
        if let Some(suppressed) = REFUSED_LOG.check() {
            warn!(peer = %peer, suppressed, "connection refused: source not in ingest.allow_sources");
        }
        return;
    }
    if metrics.ingest.connections_active.get() >= cfg.ingest.max_connections as i64 {
        metrics.ingest.refused_limit.inc();
        if let Some(suppressed) = REFUSED_LOG.check() {
            warn!(peer = %peer, max_connections = cfg.ingest.max_connections, suppressed, "connection refused: too many connections");
        }
        return;
    }
    metrics.ingest.connections_accepted.inc();
    let guard = ConnGuard::new(metrics.clone(), done.clone());
    actix_rt::spawn(handshake(
        stream,
        peer,
        guard,
        ctx.deps.clone(),
        registry.clone(),
    ));
}

/// Read until the first frame tells the connection's cluster, then hand it over.
async fn handshake(
    mut stream: TcpStream,
    peer: SocketAddr,
    guard: ConnGuard,
    deps: ReaderDeps,
    registry: Rc<RefCell<Registry>>,
) {
    let cfg = deps.config.clone();
    let ip = canonical_ip(peer.ip());
    let by_source = cfg.cluster_of_source(ip);
    let mut buf = BytesMut::with_capacity(cfg.ingest.read_buffer_bytes);
    // Look this far for a frame with a HOSTNAME before giving up on it.
    let limit = cfg.ingest.max_frame_bytes * 2 + cfg.ingest.read_buffer_bytes;
    let deadline = tokio::time::Instant::now() + cfg.ingest.first_frame_timeout;
    let mut stop = deps.stop.clone();
    let host = loop {
        if let Some(host) = first_hostname(&buf, cfg.ingest.max_frame_bytes) {
            break Some(host);
        }
        if buf.len() >= limit {
            break None;
        }
        buf.reserve(cfg.ingest.read_buffer_bytes);
        let read = tokio::select! {
            biased;
            _ = stop.changed() => None,
            read = tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)) => Some(read),
        };
        match read {
            // Stopping, or the node said nothing useful in time: what was read is
            // still handed on, under whatever cluster it can be given.
            None => break None,
            Some(Err(_elapsed)) if buf.is_empty() => {
                deps.metrics.ingest.first_frame_timeouts.inc();
                info!(peer = %peer, "connection closed: no frame within ingest.first_frame_timeout_secs");
                return;
            }
            Some(Err(_elapsed)) => break None,
            Some(Ok(Ok(0))) if buf.is_empty() => return,
            Some(Ok(Ok(0))) => break None,
            Some(Ok(Ok(_))) => {}
            Some(Ok(Err(err))) => {
                deps.metrics.ingest.read_errors.inc();
                info!(peer = %peer, error = %err, "connection failed before its first frame");
                return;
            }
        }
    };

    let hostname_cluster = host.as_deref().map(parse::cluster_of_hostname);
    let (name, target, filer_id) = match (by_source, hostname_cluster) {
        (Some(c), _) => (c.name.clone(), Some(c.target), c.filer_id),
        (None, Some(name)) => match cfg.cluster_named(name) {
            Some(c) => (c.name.clone(), Some(c.target), c.filer_id),
            None => (name.to_string(), cfg.default_target, None),
        },
        (None, None) => (UNIDENTIFIED.to_string(), cfg.default_target, None),
    };
    let Some(target) = target else {
        deps.metrics.ingest.unroutable.inc();
        if let Some(suppressed) = REFUSED_LOG.check() {
            warn!(peer = %peer, cluster = %name, suppressed, "connection closed: cluster not configured and no default_target");
        }
        return;
    };
    let node: Arc<str> = Arc::from(host.unwrap_or_else(|| ip.to_string()));
    let addr = match registry.borrow_mut().get_or_create(&name, target, filer_id) {
        Ok(addr) => addr,
        Err(_) => {
            deps.metrics.ingest.unroutable.inc();
            if let Some(suppressed) = REFUSED_LOG.check() {
                warn!(peer = %peer, cluster = %name, max_clusters = cfg.ingest.max_clusters, suppressed, "connection closed: too many clusters");
            }
            return;
        }
    };
    let stream = match stream.into_std() {
        Ok(s) => s,
        Err(err) => {
            error!(peer = %peer, error = %err, "cannot hand the connection over");
            return;
        }
    };
    let pending = buf.len();
    let handoff = Handoff {
        stream,
        peer,
        node: node.clone(),
        buf,
        deps,
        guard,
    };
    info!(cluster = %name, node = %node, peer = %peer, "node connected");
    match tokio::time::timeout(ATTACH_TIMEOUT, addr.send(Attach(handoff))).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => {
            error!(cluster = %name, peer = %peer, error = %err, bytes = pending, "supervisor gone: connection closed")
        }
        Err(_) => {
            error!(cluster = %name, peer = %peer, bytes = pending, "supervisor did not take the connection in time: connection closed")
        }
    }
}

/// The HOSTNAME of the first complete frame in `buf` that has one.
fn first_hostname(buf: &BytesMut, max_frame: usize) -> Option<String> {
    let mut probe = buf.clone();
    let mut decoder = Decoder::new(max_frame);
    loop {
        match decoder.next(&mut probe) {
            Next::Frame { start, end } => {
                if let Some(host) = parse::frame_hostname(&probe[start..end]) {
                    return Some(host.to_string());
                }
            }
            Next::Oversize => {}
            Next::Incomplete => return None,
        }
    }
}
