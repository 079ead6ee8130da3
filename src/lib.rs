//! qbroker: Qumulo audit syslog in, Varonis file-activity events out.
//!
//! # Layout
//!
//! The modules follow the data, in the order a frame travels:
//!
//! - [`ingest`]: the syslog TCP listener, RFC 6587 framing, and each connection's
//!   read loop, which hands frames on in chunks through the admission gate.
//! - [`stdin`]: the other source, beside ingest: lines on a pipe from rsyslog's
//!   omprog (`qbroker stdin`), with a commit barrier for its acknowledgements.
//! - [`cluster`]: one actix supervisor actor per Qumulo cluster, which owns the
//!   readers of its nodes' connections.
//! - [`pool`]: the parse pool, `workers` OS threads fed by a bounded crossbeam
//!   channel.
//! - [`parse`]: plain functions from one syslog frame to one serialised event
//!   (header, JSON or CSV payload, filter, mapping).
//! - [`batch`]: per-cluster batchers that restore arrival order and seal batches.
//! - [`enrich`]: permission and protection events from the clusters' REST APIs
//!   (ACL diff), off the hot path; the batcher keeps each file's events in order
//!   behind a lookup.
//! - [`spool`]: the durable per-target log of sealed batches.
//! - [`egress`]: HTTPS delivery of spooled batches, with retries.
//!
//! Beside the data path: [`config`] (the TOML file and its validation),
//! [`metrics`] (counters, latency, the `/metrics` endpoint), [`deadletter`]
//! (where bad input is kept), [`model`] (types that cross stages), [`sync`]
//! (the hand-written synchronisation pieces, checked with loom) and [`doctor`]
//! (`qbroker doctor`: checks of the clusters, the targets and the host).
//!
//! [`run`] wires the stages from the back (spools, egress, batchers, pool, then
//! ingest) and shuts them down from the front.
#![forbid(unsafe_code)]

pub mod batch;
pub mod cluster;
pub mod config;
pub mod deadletter;
pub mod doctor;
pub mod egress;
pub mod enrich;
pub mod ingest;
pub mod metrics;
pub mod model;
pub mod parse;
pub mod pool;
pub mod spool;
pub mod stdin;
pub mod sync;

use std::future::Future;
use std::sync::Arc;

use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::spool::Spool;
use crate::sync::gate::Gate;

/// Where the frames come from.
pub enum Input {
    /// The syslog TCP listener (`qbroker run`).
    Syslog(std::net::TcpListener),
    /// Lines on a pipe, from rsyslog's omprog or a person (`qbroker stdin`).
    Stdin(stdin::Feed),
}

/// Sockets bound by the caller, so that tests can bind port 0.
pub struct Listeners {
    pub syslog: std::net::TcpListener,
    pub metrics: Option<std::net::TcpListener>,
}

impl Listeners {
    /// Bind the addresses of the configuration.
    pub fn bind(cfg: &Config) -> Result<Listeners, RunError> {
        let bind = |what: &'static str, addr| {
            std::net::TcpListener::bind(addr).map_err(|source| RunError::Bind {
                what,
                addr,
                source,
            })
        };
        Ok(Listeners {
            syslog: bind("syslog listener", cfg.listen)?,
            metrics: cfg
                .metrics_listen
                .map(|addr| bind("metrics listener", addr))
                .transpose()?,
        })
    }
}

/// The broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot bind the {what} to {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the spool of target {target}: {source}")]
    Spool {
        target: String,
        #[source]
        source: spool::SpoolError,
    },
    #[error(transparent)]
    Tls(#[from] egress::TlsSetupError),
    #[error(transparent)]
    Enrich(#[from] enrich::client::ClientSetupError),
    #[error("{path} is locked by another qbroker: run one broker per spool directory (is `qbroker run` running beside `qbroker stdin`, or does rsyslog start several instances? set forceSingleInstance=\"on\")")]
    Locked { path: std::path::PathBuf },
}

fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RunError {
    let what = what.into();
    move |source| RunError::Io { what, source }
}

/// Run the broker until `shutdown` resolves, then shut down in order: stop
/// accepting and reading, drain the work queue through the pool, seal every open
/// batch into the spool, let egress deliver within `shutdown.grace_secs`, and
/// sync the spools. Must be called inside a multi-threaded tokio runtime.
pub async fn run(
    cfg: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    run_input(
        cfg,
        Input::Syslog(listeners.syslog),
        listeners.metrics,
        shutdown,
    )
    .await
}

/// [`run`] with frames from `input`: the syslog listener, or a [`stdin::Feed`]
/// (whose end of input should resolve `shutdown`, see [`stdin::Feed::new`]).
pub async fn run_input(
    cfg: Config,
    input: Input,
    metrics_listener: Option<std::net::TcpListener>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let cfg = Arc::new(cfg);
    let metrics = Arc::new(Metrics::new());

    // From the back: spools, egress, batchers, pool, and ingest last.
    deadletter::create_private_dir(&cfg.spool.dir).map_err(io_error(format!(
        "cannot create {}",
        cfg.spool.dir.display()
    )))?;
    // Held until this function returns; the kernel lets go of it if the process dies.
    let _lock = lock_spool_dir(&cfg.spool.dir)?;
    let mut spools: Vec<Arc<Spool>> = Vec::with_capacity(cfg.targets.len());
    for target in &cfg.targets {
        let dir = cfg.spool.dir.join(&target.name);
        let opts = spool::Options {
            max_bytes: cfg.spool.max_bytes,
            segment_bytes: cfg.spool.segment_bytes,
            fsync: cfg.spool.fsync,
        };
        let opened = tokio::task::spawn_blocking(move || Spool::open(&dir, opts))
            .await
            .expect("opening a spool does not panic");
        let spool = opened.map_err(|source| RunError::Spool {
            target: target.name.clone(),
            source,
        })?;
        let stats = spool.stats();
        if stats.unacked_records > 0 {
            info!(target = %target.name, batches = stats.unacked_records, "unacknowledged batches in the spool will be sent again");
        }
        spools.push(Arc::new(spool));
    }
    let dead_letters = Arc::new(deadletter::DeadLetters::open(&cfg.dead_letter).map_err(
        io_error(format!("cannot create {}", cfg.dead_letter.dir.display())),
    )?);
    let mut egress = Vec::with_capacity(cfg.targets.len());
    for (target, spool) in cfg.targets.iter().zip(&spools) {
        egress.push(egress::start(
            target.clone(),
            spool.clone(),
            metrics.clone(),
            dead_letters.clone(),
        )?);
    }
    let batches = batch::Batches::start(cfg.batch.clone(), spools.clone())
        .map_err(io_error("cannot start the batch sealers"))?;
    let enricher = enrich::Enricher::start(&cfg, metrics.enrich.clone())?;
    batches.set_enricher(enricher.clone());
    let gate = Arc::new(Gate::new(cfg.queue.size, cfg.queue.max_bytes));
    // Capacity in chunks = capacity in messages: the gate, which counts messages
    // and bytes, is the real bound, and the channel can never refuse what it admits.
    let (queue_tx, queue_rx) = crossbeam_channel::bounded(cfg.queue.size);
    let pool = pool::start(
        cfg.workers.get(),
        queue_rx,
        Arc::new(pool::PoolCtx {
            filter: cfg.filter.clone(),
            dead_letters: dead_letters.clone(),
            metrics: metrics.clone(),
        }),
    )
    .map_err(io_error("cannot start the parse pool"))?;

    let (metrics_stop_tx, metrics_stop_rx) = watch::channel(false);
    let metrics_server = match metrics_listener {
        Some(listener) => {
            listener
                .set_nonblocking(true)
                .map_err(io_error("metrics listener"))?;
            let listener = tokio::net::TcpListener::from_std(listener)
                .map_err(io_error("metrics listener"))?;
            let (m, g) = (metrics.clone(), gate.clone());
            let names: Vec<String> = cfg.targets.iter().map(|t| t.name.clone()).collect();
            let sp = spools.clone();
            let render: metrics::server::Render = Arc::new(move || {
                let gauges = metrics::Gauges {
                    queue: g.usage(),
                    spools: names
                        .iter()
                        .map(String::as_str)
                        .zip(sp.iter().map(|s| s.stats()))
                        .collect(),
                };
                metrics::render(&m, &gauges)
            });
            Some(tokio::spawn(metrics::server::serve(
                listener,
                render,
                metrics_stop_rx,
            )))
        }
        None => None,
    };

    let (stop_tx, stop_rx) = watch::channel(false);
    let source = match input {
        Input::Syslog(listener) => Source::Ingest(
            ingest::start(
                listener,
                ingest::IngestCtx {
                    deps: ingest::reader::ReaderDeps {
                        config: cfg.clone(),
                        queue: queue_tx,
                        gate: gate.clone(),
                        metrics: metrics.clone(),
                        stop: stop_rx,
                    },
                    batches: batches.clone(),
                },
            )
            .map_err(io_error("cannot start ingest"))?,
        ),
        Input::Stdin(feed) => Source::Stdin(
            feed.start(stdin::Pipeline {
                config: cfg.clone(),
                queue: queue_tx,
                gate: gate.clone(),
                metrics: metrics.clone(),
                batches: batches.clone(),
                spools: spools.clone(),
                dead_letters: dead_letters.clone(),
                runtime: tokio::runtime::Handle::current(),
                stop: stop_rx,
            })
            .map_err(io_error("cannot start the stdin feed"))?,
        ),
    };
    info!(
        workers = cfg.workers.get(),
        io_threads = cfg.io_threads.get(),
        targets = cfg.targets.len(),
        "qbroker running"
    );

    shutdown.await;
    let deadline = tokio::time::Instant::now() + cfg.shutdown_grace;
    info!(
        grace_secs = cfg.shutdown_grace.as_secs(),
        "shutting down: no more reading; draining"
    );
    let _ = stop_tx.send(true);
    // Should a spool stay unavailable past the deadline, stop waiting on it.
    let watchdog = {
        let batches = batches.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(deadline).await;
            batches.abort();
        })
    };
    let drain_enricher = enricher.clone();
    let drained = tokio::task::spawn_blocking(move || {
        source.join();
        pool.join();
        // Let lookups in flight finish; what is left goes out generic in the flush.
        drain_enricher.drain(drain_enricher.config().shutdown_wait);
        batches.flush_all();
    })
    .await;
    enricher.stop();
    if drained.is_err() {
        error!("draining the pipeline panicked");
    }
    for spool in &spools {
        spool.close();
    }
    let finished =
        futures_util::future::join_all(egress.into_iter().map(|e| e.finish(deadline))).await;
    watchdog.abort();
    for (spool, target) in spools.iter().zip(&cfg.targets) {
        if let Err(err) = spool.sync() {
            error!(target = %target.name, error = %err, "cannot sync the spool");
        }
    }
    if let Err(err) = dead_letters.flush() {
        warn!(error = %err, "cannot flush the dead-letter file");
    }
    let _ = metrics_stop_tx.send(true);
    if let Some(server) = metrics_server {
        let _ = server.await;
    }
    for c in metrics.clusters() {
        info!(
            cluster = %c.name,
            frames = c.frames.get(),
            events = c.events_total(),
            filtered = c.filtered.iter().map(|f| f.get()).sum::<u64>(),
            parse_errors = c.parse_errors_total(),
            lost = c.events_lost.get(),
            "cluster totals"
        );
    }
    info!(
        delivered_everything = finished.iter().all(|d| *d),
        "qbroker stopped"
    );
    Ok(())
}

/// The running source of frames, joined before the pool drains.
enum Source {
    Ingest(ingest::Ingest),
    Stdin(stdin::Running),
}

impl Source {
    /// Wait until the source stopped and handed on everything it read. Blocking.
    fn join(self) {
        match self {
            Source::Ingest(i) => i.join(),
            Source::Stdin(s) => s.join(),
        }
    }
}

/// Take `<dir>/qbroker.lock` (an advisory `flock`), so that two brokers never
/// share a spool: the spool assumes one writer.
fn lock_spool_dir(dir: &std::path::Path) -> Result<std::fs::File, RunError> {
    let path = dir.join("qbroker.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_error(format!("cannot open {}", path.display())))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => Err(RunError::Locked { path }),
        Err(e) => Err(RunError::Io {
            what: format!("cannot lock {}", path.display()),
            source: e.into(),
        }),
    }
}
