//! listener: accepts syslog connections, tells each one's cluster, and hands it
//! to that cluster's supervisor.
//!
//! It runs on the actix system's main thread; the supervisors run on `io_threads`
//! arbiters. A refused source (allowlist), a connection over
//! `ingest.max_connections` or over `ingest.max_connections_per_source` is closed
//! at once and counted. Accept errors (such as running out of file descriptors)
//! are counted and backed off from, never fatal.
//!
//! A connection's cluster is the configured cluster of its source address, else
//! the HOSTNAME of its first frame without the `-<node>` suffix. The bytes read
//! to find it travel with the connection, so no frame is read twice or lost. A
//! HOSTNAME that is not 1 to 255 printable ASCII characters (RFC 5424) is not
//! used: it would become a metric label.
//!
//! Each accepted socket moves (as a std socket) to the next `io_threads`
//! arbiter in turn, which does the TLS handshake (`[syslog_tls]`), reads the
//! first frame and runs the reader; the cluster's supervisor adopts it (counts
//! and tracks it, and is told when it ends). So the nodes of one cluster are
//! spread over the io threads, plain TCP and TLS alike; a TLS session could
//! not move between threads after its handshake anyway.

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::Addr;
use actix_rt::{Arbiter, ArbiterHandle};
use bytes::BytesMut;
use futures_util::FutureExt;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tracing::{error, info, warn};

use super::framing::{Decoder, Next};
use super::reader::{self, ConnGuard, ReaderDeps, SourceLimit};
use crate::batch::Batches;
use crate::cluster::supervisor::{Adopt, Ended};
use crate::cluster::{Lease, Refused, Registry, Supervisor};
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
static CONNECTED_LOG: RateLimit = RateLimit::new(Duration::from_secs(10), 20);
static TLS_LOG: RateLimit = RateLimit::new(Duration::from_secs(10), 3);

/// What the ingest side needs from the rest of the broker.
pub struct IngestCtx {
    pub deps: ReaderDeps,
    pub batches: Arc<Batches>,
}

/// The TLS syslog listener and its server configuration.
pub struct TlsInput {
    pub listener: std::net::TcpListener,
    pub config: Arc<rustls::ServerConfig>,
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
pub fn start(
    listener: std::net::TcpListener,
    tls: Option<TlsInput>,
    ctx: IngestCtx,
) -> std::io::Result<Ingest> {
    listener.set_nonblocking(true)?;
    if let Some(t) = &tls {
        t.listener.set_nonblocking(true)?;
    }
    let thread = std::thread::Builder::new()
        .name("qbroker-ingest".to_string())
        .spawn(move || {
            let system = actix_rt::System::new();
            system.block_on(serve(listener, tls, ctx));
        })?;
    Ok(Ingest { thread })
}

/// What every accepted connection shares, on the listener's thread.
struct Shared {
    ctx: IngestCtx,
    registry: Arc<Mutex<Registry>>,
    sources: SourceLimit,
    arbiters: Vec<ArbiterHandle>,
    done: mpsc::Sender<()>,
}

/// How a listener's connections go on once admitted.
#[derive(Clone)]
enum Kind {
    Plain,
    Tls {
        acceptor: TlsAcceptor,
        handshake_timeout: Duration,
    },
}

async fn serve(listener: std::net::TcpListener, tls: Option<TlsInput>, ctx: IngestCtx) {
    let cfg = ctx.deps.config.clone();
    let arbiters: Vec<Arbiter> = (0..cfg.io_threads.get()).map(|_| Arbiter::new()).collect();
    let handles: Vec<ArbiterHandle> = arbiters.iter().map(Arbiter::handle).collect();
    let registry = Arc::new(Mutex::new(Registry::new(
        handles.clone(),
        ctx.deps.handoff.gate.clone(),
        ctx.batches.clone(),
        ctx.deps.metrics.clone(),
        cfg.ingest.max_clusters,
    )));
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    let shared = Shared {
        sources: SourceLimit::new(cfg.ingest.max_connections_per_source),
        ctx,
        registry,
        arbiters: handles,
        done: done_tx,
    };
    let plain = async {
        match TcpListener::from_std(listener) {
            Ok(listener) => {
                if let Ok(addr) = listener.local_addr() {
                    info!(listen = %addr, "accepting syslog connections");
                }
                accept_loop(listener, Kind::Plain, &shared).await;
            }
            Err(err) => error!(error = %err, "cannot use the syslog listener"),
        }
    };
    let tls = async {
        let Some(tls) = tls else { return };
        let handshake_timeout = cfg
            .syslog_tls
            .as_ref()
            .map_or(Duration::from_secs(10), |t| t.handshake_timeout);
        match TcpListener::from_std(tls.listener) {
            Ok(listener) => {
                if let Ok(addr) = listener.local_addr() {
                    info!(listen = %addr, "accepting TLS syslog connections");
                }
                let kind = Kind::Tls {
                    acceptor: TlsAcceptor::from(tls.config),
                    handshake_timeout,
                };
                accept_loop(listener, kind, &shared).await;
            }
            Err(err) => error!(error = %err, "cannot use the TLS syslog listener"),
        }
    };
    // Clusters known only by their HOSTNAME that stayed idle are forgotten.
    let forget = async {
        let after = cfg.ingest.forget_idle_cluster;
        let mut tick = tokio::time::interval(
            (after / 4).clamp(Duration::from_secs(1), Duration::from_secs(10)),
        );
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stop = shared.ctx.deps.stop.clone();
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tick.tick() => {}
            }
            if *stop.borrow() {
                return;
            }
            shared
                .registry
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .forget_idle(after, usize::MAX);
        }
    };
    futures_util::future::join3(plain, tls, forget).await;
    // Every connection holds a clone of `done`: this ends once all have ended.
    let Shared {
        ctx,
        registry,
        done,
        ..
    } = shared;
    drop(done);
    while done_rx.recv().await.is_some() {}
    info!(
        clusters = registry.lock().unwrap_or_else(|e| e.into_inner()).len(),
        "ingest stopped"
    );
    drop(registry);
    drop(ctx);
    for a in &arbiters {
        a.stop();
    }
    for a in arbiters {
        let _ = a.join();
    }
}

async fn accept_loop(listener: TcpListener, kind: Kind, shared: &Shared) {
    let mut stop = shared.ctx.deps.stop.clone();
    let mut backoff = ACCEPT_BACKOFF_MIN;
    let mut next_arbiter = 0usize;
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
                let Some(guard) = admit(peer, shared) else {
                    continue;
                };
                // Every connection runs on the next io thread, plain or TLS: a
                // cluster's nodes are spread over them (its supervisor only
                // numbers and tracks them).
                let stream = match stream.into_std() {
                    Ok(s) => s,
                    Err(err) => {
                        error!(peer = %peer, error = %err, "cannot hand the connection over");
                        continue;
                    }
                };
                let arbiter = &shared.arbiters[next_arbiter % shared.arbiters.len()];
                next_arbiter = next_arbiter.wrapping_add(1);
                let (deps, registry) = (shared.ctx.deps.clone(), shared.registry.clone());
                match &kind {
                    Kind::Plain => {
                        arbiter.spawn(plain_connection(stream, peer, guard, deps, registry));
                    }
                    Kind::Tls {
                        acceptor,
                        handshake_timeout,
                    } => {
                        arbiter.spawn(tls_connection(
                            stream,
                            peer,
                            guard,
                            deps,
                            registry,
                            acceptor.clone(),
                            *handshake_timeout,
                        ));
                    }
                }
            }
            Err(err) => {
                shared.ctx.deps.metrics.ingest.accept_errors.inc();
                if let Some(suppressed) = ACCEPT_ERROR_LOG.check() {
                    warn!(error = %err, backoff_ms = backoff.as_millis() as u64, suppressed, "accept failed");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
            }
        }
    }
}

/// The allowlist and the connection limits; the guard that counts the connection
/// if it is admitted. A refused connection is dropped (closed) by the caller.
fn admit(peer: SocketAddr, shared: &Shared) -> Option<ConnGuard> {
    let cfg = &shared.ctx.deps.config;
    let metrics = &shared.ctx.deps.metrics;
    if !cfg.source_allowed(peer.ip()) {
        metrics.ingest.refused_allowlist.inc();
        if let Some(suppressed) = REFUSED_LOG.check() {
            warn!(peer = %peer, suppressed, "connection refused: source not in ingest.allow_sources");
        }
        return None;
    }
    if metrics.ingest.connections_active.get() >= cfg.ingest.max_connections as i64 {
        metrics.ingest.refused_limit.inc();
        if let Some(suppressed) = REFUSED_LOG.check() {
            warn!(peer = %peer, max_connections = cfg.ingest.max_connections, suppressed, "connection refused: too many connections");
        }
        return None;
    }
    let Some(permit) = shared.sources.acquire(peer.ip()) else {
        metrics.ingest.refused_source_limit.inc();
        if let Some(suppressed) = REFUSED_LOG.check() {
            warn!(peer = %peer, max_connections_per_source = cfg.ingest.max_connections_per_source, suppressed, "connection refused: too many connections from this source");
        }
        return None;
    };
    metrics.ingest.connections_accepted.inc();
    Some(ConnGuard::new(metrics.clone(), permit, shared.done.clone()))
}

/// Read until the first frame tells the connection's HOSTNAME (or there is no
/// hope it will). `None` when the connection ended or timed out first (counted).
async fn first_frame<S: AsyncRead + Unpin>(
    stream: &mut S,
    peer: SocketAddr,
    deps: &ReaderDeps,
) -> Option<(Option<String>, BytesMut)> {
    let cfg = &deps.config;
    let mut buf = BytesMut::with_capacity(cfg.ingest.read_buffer_bytes);
    // Look this far for a frame with a HOSTNAME before giving up on it.
    let limit = cfg.ingest.max_frame_bytes * 2 + cfg.ingest.read_buffer_bytes;
    let deadline = tokio::time::Instant::now() + cfg.ingest.first_frame_timeout;
    let mut stop = deps.stop.clone();
    let host = loop {
        match first_hostname(&buf, cfg.ingest.max_frame_bytes) {
            Some(Ok(host)) => break Some(host),
            Some(Err(())) => {
                deps.metrics.ingest.invalid_hostnames.inc();
                break None;
            }
            None => {}
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
                return None;
            }
            Some(Err(_elapsed)) => break None,
            Some(Ok(Ok(0))) if buf.is_empty() => return None,
            Some(Ok(Ok(0))) => break None,
            Some(Ok(Ok(_))) => {}
            Some(Ok(Err(err))) if err.kind() == std::io::ErrorKind::UnexpectedEof => {
                if buf.is_empty() {
                    return None;
                }
                break None;
            }
            Some(Ok(Err(err))) => {
                deps.metrics.ingest.read_errors.inc();
                info!(peer = %peer, error = %err, "connection failed before its first frame");
                return None;
            }
        }
    };
    Some((host, buf))
}

/// The connection's cluster (started now if new), and its node name. `None`
/// when it has nowhere to go (counted).
fn route(
    host: Option<String>,
    peer: SocketAddr,
    deps: &ReaderDeps,
    registry: &Mutex<Registry>,
) -> Option<(String, Addr<Supervisor>, Arc<str>, Lease)> {
    let cfg = &deps.config;
    let ip = canonical_ip(peer.ip());
    let by_source = cfg.cluster_of_source(ip);
    let hostname_cluster = host.as_deref().map(parse::cluster_of_hostname);
    let name = match (by_source, hostname_cluster) {
        (Some(c), _) => c.name.clone(),
        (None, Some(name)) => match cfg.cluster_named(name) {
            Some(c) => c.name.clone(),
            None => name.to_string(),
        },
        (None, None) => UNIDENTIFIED.to_string(),
    };
    let node: Arc<str> = Arc::from(host.unwrap_or_else(|| ip.to_string()));
    // Registering (the batcher's spool) may block briefly; this runs on the
    // listener's arbiter, as the creation always did.
    let created = registry
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_create(&name);
    match created {
        Ok((addr, lease)) => Some((name, addr, node, lease)),
        Err(Refused::NoTarget) => {
            deps.metrics.ingest.unroutable(&name);
            if let Some(suppressed) = REFUSED_LOG.check() {
                warn!(peer = %peer, cluster = %name, suppressed, "connection closed: cluster not registered, not configured, and no default_target");
            }
            None
        }
        Err(Refused::TooManyClusters) => {
            deps.metrics.ingest.unroutable(&name);
            if let Some(suppressed) = REFUSED_LOG.check() {
                warn!(peer = %peer, cluster = %name, max_clusters = cfg.ingest.max_clusters, suppressed, "connection closed: too many clusters");
            }
            None
        }
    }
}

fn log_connected(cluster: &str, node: &str, peer: SocketAddr, tls: bool) {
    if let Some(suppressed) = CONNECTED_LOG.check() {
        info!(cluster = %cluster, node = %node, peer = %peer, tls, suppressed, "node connected");
    }
}

/// Plain TCP: on the arbiter that runs it, the first frame and the reader,
/// adopted by the cluster's supervisor.
async fn plain_connection(
    stream: std::net::TcpStream,
    peer: SocketAddr,
    guard: ConnGuard,
    deps: ReaderDeps,
    registry: Arc<Mutex<Registry>>,
) {
    let mut tcp = match TcpStream::from_std(stream) {
        Ok(s) => s,
        Err(err) => {
            error!(peer = %peer, error = %err, "cannot take the connection over");
            return;
        }
    };
    let Some((host, buf)) = first_frame(&mut tcp, peer, &deps).await else {
        return;
    };
    adopt_and_read(tcp, peer, host, buf, guard, deps, &registry, false).await;
}

/// TLS: on the arbiter that runs it, the handshake, the first frame, and the
/// reader, adopted by the cluster's supervisor.
async fn tls_connection(
    stream: std::net::TcpStream,
    peer: SocketAddr,
    guard: ConnGuard,
    deps: ReaderDeps,
    registry: Arc<Mutex<Registry>>,
    acceptor: TlsAcceptor,
    handshake_timeout: Duration,
) {
    let tcp = match TcpStream::from_std(stream) {
        Ok(s) => s,
        Err(err) => {
            error!(peer = %peer, error = %err, "cannot take the TLS connection over");
            return;
        }
    };
    let mut stop = deps.stop.clone();
    let accepted = tokio::select! {
        biased;
        _ = stop.changed() => return,
        accepted = tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)) => accepted,
    };
    let mut tls = match accepted {
        Ok(Ok(tls)) => tls,
        Ok(Err(err)) => {
            deps.metrics.ingest.tls_handshake_failures.inc();
            if let Some(suppressed) = TLS_LOG.check() {
                warn!(peer = %peer, error = %err, suppressed, "TLS handshake failed: connection closed");
            }
            return;
        }
        Err(_) => {
            deps.metrics.ingest.tls_handshake_failures.inc();
            if let Some(suppressed) = TLS_LOG.check() {
                warn!(peer = %peer, timeout_secs = handshake_timeout.as_secs(), suppressed, "TLS handshake timed out: connection closed");
            }
            return;
        }
    };
    let Some((host, buf)) = first_frame(&mut tls, peer, &deps).await else {
        return;
    };
    adopt_and_read(tls, peer, host, buf, guard, deps, &registry, true).await;
}

/// Route the connection to its cluster, have the cluster's supervisor adopt
/// it, and read it here until it ends; the supervisor is told how it ended.
#[allow(clippy::too_many_arguments)]
async fn adopt_and_read<S: AsyncRead + Unpin>(
    stream: S,
    peer: SocketAddr,
    host: Option<String>,
    buf: BytesMut,
    guard: ConnGuard,
    deps: ReaderDeps,
    registry: &Mutex<Registry>,
    tls: bool,
) {
    // The lease holds the cluster in the table while the connection lasts.
    let Some((name, addr, node, _lease)) = route(host, peer, &deps, registry) else {
        return;
    };
    let adopt = Adopt {
        peer,
        node: node.clone(),
    };
    let adopted = match tokio::time::timeout(ATTACH_TIMEOUT, addr.send(adopt)).await {
        Ok(Ok(adopted)) => adopted,
        Ok(Err(err)) => {
            error!(cluster = %name, peer = %peer, error = %err, bytes = buf.len(), "supervisor gone: connection closed");
            return;
        }
        Err(_) => {
            error!(cluster = %name, peer = %peer, bytes = buf.len(), "supervisor did not take the connection in time: connection closed");
            return;
        }
    };
    log_connected(&name, &node, peer, tls);
    let id = adopted.id;
    let read = reader::read_stream(
        stream,
        node,
        buf,
        deps,
        guard,
        adopted.cluster,
        adopted.sequence,
    );
    let result = AssertUnwindSafe(read).catch_unwind().await;
    let _ = addr.send(Ended { id, result }).await;
}

/// The HOSTNAME of the first complete frame in `buf` that has one: `Ok` if it
/// is a valid RFC 5424 HOSTNAME (1 to 255 printable ASCII characters), `Err`
/// if not.
fn first_hostname(buf: &BytesMut, max_frame: usize) -> Option<Result<String, ()>> {
    let mut probe = buf.clone();
    let mut decoder = Decoder::new(max_frame);
    loop {
        match decoder.next(&mut probe) {
            Next::Frame { start, end } => {
                if let Some(host) = parse::frame_hostname(&probe[start..end]) {
                    return Some(valid_hostname(host).then(|| host.to_string()).ok_or(()));
                }
            }
            Next::Oversize => {}
            Next::Incomplete | Next::Overrun => return None,
        }
    }
}

/// RFC 5424: `HOSTNAME = NILVALUE / 1*255PRINTUSASCII`.
fn valid_hostname(host: &str) -> bool {
    (1..=255).contains(&host.len()) && host.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_become_node_names_only_when_valid() {
        let buf = |s: &str| BytesMut::from(s.as_bytes());
        assert_eq!(
            first_hostname(
                &buf("<14>1 2026-01-01T00:00:00Z qc-3 qumulo - - - {}\n"),
                1024
            ),
            Some(Ok("qc-3".to_string()))
        );
        let long = format!(
            "<14>1 2026-01-01T00:00:00Z {} qumulo - - - {{}}\n",
            "h".repeat(256)
        );
        assert_eq!(first_hostname(&buf(&long), 4096), Some(Err(())));
        let utf8 = "<14>1 2026-01-01T00:00:00Z h\u{e9}te qumulo - - - {}\n";
        assert_eq!(first_hostname(&buf(utf8), 1024), Some(Err(())));
        assert_eq!(first_hostname(&buf("garbage\n"), 1024), None);
        assert!(valid_hostname(&"h".repeat(255)));
    }
}
