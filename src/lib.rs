//! qbroker: Qumulo audit syslog in, Varonis file-activity events out.
//!
//! # Layout
//!
//! The modules follow the data, in the order a frame travels:
//!
//! - [`ingest`]: the syslog TCP listener (and the optional TLS one), RFC 6587
//!   framing, and each connection's read loop, which hands frames on in chunks
//!   through the admission gate and closes connections that misbehave.
//! - [`stdin`]: the other source, beside ingest: lines on a pipe from rsyslog's
//!   omprog (`qbroker stdin`), with a commit barrier for its acknowledgements.
//! - [`cluster`]: one actix supervisor actor per Qumulo cluster, which owns the
//!   readers of its nodes' connections.
//! - [`pool`]: the parse pool, `workers` OS threads fed by a bounded crossbeam
//!   channel.
//! - [`parse`]: plain functions from one syslog frame to one serialised event
//!   (header, JSON or CSV payload, filter, mapping).
//! - [`batch`]: per-cluster batchers that restore arrival order and seal batches;
//!   age seals by a tokio task per target ([`batch::Sealer`]), no thread.
//!
//! docs/architecture.md has the data-flow picture, the waits and the threads.
//! - [`enrich`]: permission and protection events from the clusters' REST APIs
//!   (ACL diff), off the hot path; the batcher keeps each file's events in order
//!   behind a lookup.
//! - [`spool`]: the durable per-target log of sealed batches.
//! - [`egress`]: delivery of spooled batches, with retries: AMQP 0-9-1 to
//!   Varonis's RabbitMQ (publisher confirms) or HTTPS POSTs.
//!
//! Beside the data path: [`targets`] (the running target set: each target's
//! spool, egress lanes and sealer, and every cluster's route to one, changed
//! at run time), [`api`] (the HTTPS control plane: targets registered per
//! cluster, the reference broker's `/v1/rmq/objects`, health, stats),
//! [`store`] (where registered targets live: SQLite, or a shared MariaDB),
//! [`config`] (the TOML file and its validation), [`metrics`] (counters,
//! latency, the `/metrics` and `/stats` endpoints), [`deadletter`] (where bad
//! input is kept), [`model`] (low-level types that cross stages), [`net`] (TLS
//! configurations and HTTPS connections, one way for every part), [`preflight`] (what
//! `run` would refuse, for `check-config`), [`replay`] (refused batches back
//! from the dead-letter directory into their spool), [`sync`] (the hand-written
//! synchronisation pieces, checked with loom).
//!
//! The library holds no command's output: `qbroker doctor`, the explanation of
//! `qbroker stdin --once` and what `check-config` prints live with the binary
//! (src/cli/), made from the APIs here.
//!
//! # Layers
//!
//! A module names only modules below it; tests/layers.rs reads src/ and fails
//! on any import cycle between top-level modules, or between the submodules
//! of one module directory (and prints the layers with `--nocapture`). Bottom first:
//!
//! - [`model`], [`net`], [`parse`], [`sync`]: types and pieces that name no
//!   stage;
//! - [`config`] (each stage's section, composed) and [`metrics`] (the counters,
//!   and a registry that each stage adds its own part of the page to, see
//!   [`metrics::Render`]);
//! - the stages, from the spool up: [`deadletter`], [`spool`], [`enrich`]
//!   (which hands results back through [`enrich::Completions`], implemented
//!   by the batcher), [`batch`], [`store`], [`egress`], [`pool`] (with
//!   [`pool::Chunk`], what a source hands on), [`source`] (the one hand-off
//!   of every source: admission, numbering, the chunk, the bounded send),
//!   [`cluster`], [`targets`];
//! - the sources and the control plane: [`ingest`], [`stdin`], [`api`],
//!   [`replay`], [`preflight`];
//! - this root, which wires them.
//!
//! [`run`] wires the stages from the back (registry, targets, batchers, pool,
//! the API, then ingest) and shuts them down from the front.
#![forbid(unsafe_code)]

pub mod api;
pub mod batch;
pub mod cluster;
pub mod config;
pub mod deadletter;
pub mod egress;
pub mod enrich;
pub mod ingest;
pub mod metrics;
pub mod model;
pub mod net;
pub mod parse;
pub mod pool;
pub mod preflight;
pub mod replay;
pub mod source;
pub mod spool;
pub mod stdin;
pub mod store;
pub mod sync;
pub mod targets;

use std::future::Future;
use std::sync::Arc;

use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::sync::gate::Gate;
use crate::targets::Targets;

/// Where the frames come from.
pub enum Input {
    /// The syslog TCP listener and the optional TLS one (`qbroker run`).
    Syslog {
        listener: std::net::TcpListener,
        tls: Option<std::net::TcpListener>,
    },
    /// Lines on a pipe, from rsyslog's omprog or a person (`qbroker stdin`).
    Stdin(stdin::Feed),
}

/// Sockets bound by the caller, so that tests can bind port 0.
pub struct Listeners {
    pub syslog: std::net::TcpListener,
    pub metrics: Option<std::net::TcpListener>,
    /// The TLS syslog listener, when `[syslog_tls]` sets one.
    pub syslog_tls: Option<std::net::TcpListener>,
    /// The HTTPS API, when `[api]` is enabled.
    pub api: Option<std::net::TcpListener>,
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
            syslog_tls: cfg
                .syslog_tls
                .as_ref()
                .map(|t| bind("TLS syslog listener", t.listen))
                .transpose()?,
            api: cfg
                .api
                .as_ref()
                .map(|a| bind("API listener", a.listen))
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
    #[error(transparent)]
    Targets(#[from] targets::StartError),
    #[error(transparent)]
    Tls(#[from] egress::TlsSetupError),
    #[error(transparent)]
    Enrich(#[from] enrich::client::ClientSetupError),
    #[error(transparent)]
    TlsInput(#[from] ingest::tls::TlsInputError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Api(#[from] api::ApiError),
    #[error("{path} is locked by another qbroker: run one broker per spool directory (is `qbroker run` running beside `qbroker stdin`, or does rsyslog start several instances? set forceSingleInstance=\"on\")")]
    Locked { path: std::path::PathBuf },
}

pub(crate) fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RunError {
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
    let Listeners {
        syslog,
        metrics,
        syslog_tls,
        api,
    } = listeners;
    run_input(
        cfg,
        Input::Syslog {
            listener: syslog,
            tls: syslog_tls,
        },
        metrics,
        api,
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
    api_listener: Option<std::net::TcpListener>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let started = std::time::Instant::now();
    let cfg = Arc::new(cfg);
    let metrics = Arc::new(Metrics::new());
    // Before anything is started: a bad certificate or key stops the start.
    let (input, tls_listener) = match input {
        Input::Syslog { listener, tls } => (
            Input::Syslog {
                listener,
                tls: None,
            },
            tls,
        ),
        stdin => (stdin, None),
    };
    let tls_input = match (&cfg.syslog_tls, tls_listener) {
        (Some(tls), Some(listener)) => Some(ingest::TlsInput {
            listener,
            config: ingest::tls::server_config(tls)?,
        }),
        _ => None,
    };
    if let Some(tls) = &cfg.syslog_tls {
        if !tls.require_client_cert {
            warn!(
                "syslog_tls.require_client_cert is false: TLS syslog clients are not authenticated"
            );
        }
    }
    check_open_files(&cfg);

    // From the back: the registry, the targets (spools, egress), batchers, the
    // pool, the API, and ingest last.
    deadletter::create_private_dir(&cfg.spool.dir).map_err(io_error(format!(
        "cannot create {}",
        cfg.spool.dir.display()
    )))?;
    // Held until this function returns; the kernel lets go of it if the process dies.
    let _lock = lock_spool_dir(&cfg.spool.dir)?;
    let dead_letters = Arc::new(deadletter::DeadLetters::open(&cfg.dead_letter).map_err(
        io_error(format!("cannot create {}", cfg.dead_letter.dir.display())),
    )?);
    let enricher = enrich::Enricher::start(&cfg, metrics.enrich.clone())?;
    let store = match &cfg.store {
        Some(s) => Some(Arc::new(Store::open(s).await?)),
        None => None,
    };
    let registry = match &store {
        Some(s) => s.list().await?,
        None => Vec::new(),
    };
    let targets = {
        let (cfg, metrics, dl, en) = (
            cfg.clone(),
            metrics.clone(),
            dead_letters.clone(),
            enricher.clone(),
        );
        tokio::task::spawn_blocking(move || Targets::start(cfg, registry, metrics, dl, en))
            .await
            .expect("starting the targets does not panic")?
    };
    let batches = batch::Batches::start(cfg.batch.clone(), targets.clone());
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

    // Each stage's own part of the /metrics page, beside the counters of `metrics`.
    {
        let g = gate.clone();
        metrics.register(Arc::new(move |out: &mut String| {
            metrics::render_queue(out, &g.usage())
        }));
        let t = targets.clone();
        metrics.register(Arc::new(move |out: &mut String| {
            spool::render_stats(out, &t.spool_stats())
        }));
        metrics.register(Arc::new(enrich::Series(metrics.enrich.clone())));
    }
    let render: metrics::server::Render = {
        let m = metrics.clone();
        Arc::new(move || m.render())
    };
    let stats: metrics::server::Render = {
        let (m, g, t) = (metrics.clone(), gate.clone(), targets.clone());
        Arc::new(move || {
            let uptime_ms = started.elapsed().as_millis() as u64;
            serde_json::to_string(&t.stats(&m, &g, uptime_ms)).unwrap_or_default()
        })
    };
    let (metrics_stop_tx, metrics_stop_rx) = watch::channel(false);
    let metrics_server = match metrics_listener {
        Some(listener) => {
            listener
                .set_nonblocking(true)
                .map_err(io_error("metrics listener"))?;
            let listener = tokio::net::TcpListener::from_std(listener)
                .map_err(io_error("metrics listener"))?;
            Some(tokio::spawn(metrics::server::serve(
                listener,
                render.clone(),
                stats,
                metrics_stop_rx,
            )))
        }
        None => None,
    };
    let (api_stop_tx, api_stop_rx) = watch::channel(false);
    let sync = store
        .as_ref()
        .map(|s| targets::RegistrySync::new(s.clone(), targets.clone()));
    let follower = match (&sync, &cfg.store) {
        (Some(sync), Some(s)) => Some(tokio::spawn(sync.clone().run(s.poll, api_stop_rx.clone()))),
        _ => None,
    };
    let api_server = match (api_listener, &sync) {
        (Some(listener), Some(sync)) => {
            let server = api::Server::new(
                cfg.clone(),
                sync.clone(),
                metrics.clone(),
                gate.clone(),
                render,
            )?;
            Some(tokio::spawn(server.serve(listener, api_stop_rx)))
        }
        _ => None,
    };

    let (stop_tx, stop_rx) = watch::channel(false);
    let source = match input {
        Input::Syslog { listener, .. } => Source::Ingest(
            ingest::start(
                listener,
                tls_input,
                ingest::IngestCtx {
                    deps: ingest::reader::ReaderDeps {
                        config: cfg.clone(),
                        handoff: source::Handoff {
                            queue: queue_tx,
                            gate: gate.clone(),
                            metrics: metrics.clone(),
                        },
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
                handoff: source::Handoff {
                    queue: queue_tx,
                    gate: gate.clone(),
                    metrics: metrics.clone(),
                },
                metrics: metrics.clone(),
                batches: batches.clone(),
                targets: targets.clone(),
                dead_letters: dead_letters.clone(),
                runtime: tokio::runtime::Handle::current(),
                stop: stop_rx,
            })
            .map_err(io_error("cannot start the stdin feed"))?,
        ),
    };
    let running_targets = targets.views().len();
    info!(
        workers = cfg.workers.get(),
        io_threads = cfg.io_threads.get(),
        targets = running_targets,
        "qbroker running"
    );
    if running_targets == 0 {
        warn!("no target yet: every cluster's connection is refused until a target is registered through the API (POST /v1/targets or /v1/rmq/objects) or configured ([[targets]])");
    }

    shutdown.await;
    let deadline = tokio::time::Instant::now() + cfg.shutdown_grace;
    info!(
        grace_secs = cfg.shutdown_grace.as_secs(),
        "shutting down: no more reading; draining"
    );
    // What is in memory goes to disk even past a spool's cap: a target that is
    // away must not turn a restart into a loss of the work queue.
    targets.lift_caps();
    // Should a spool stay unavailable past the deadline, stop waiting on it.
    let watchdog = {
        let batches = batches.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(deadline).await;
            batches.abort();
        })
    };
    // No more changes to the targets while the pipeline drains (a change being
    // applied may wait on a full spool: not past the deadline).
    let _ = api_stop_tx.send(true);
    for mut task in [api_server, follower].into_iter().flatten() {
        if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
            task.abort();
            warn!("a change of targets was still being applied at the shutdown deadline");
        }
    }
    let _ = stop_tx.send(true);
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
    let finished = targets.finish(deadline).await;
    watchdog.abort();
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
    if let Some(store) = &store {
        store.close().await;
    }
    // The last line tells the truth: what was delivered, what waits in the
    // spools for the next start, and what was lost (only a spool that could not
    // be written until the grace period ended loses anything).
    let lost_events: u64 = metrics.clusters().iter().map(|c| c.events_lost.get()).sum();
    if lost_events > 0 {
        error!(
            delivered_everything = false,
            spooled_batches = finished.batches_left,
            lost_events,
            "qbroker stopped; events were lost (see the errors above)"
        );
    } else {
        info!(
            delivered_everything = finished.delivered,
            spooled_batches = finished.batches_left,
            lost_events,
            "qbroker stopped"
        );
    }
    Ok(())
}

/// File descriptors the broker may need besides its syslog connections: spool
/// segments, dead-letter files, egress and metrics connections, the runtime.
const RESERVED_FDS: u64 = 256;

/// Warn at start when `ingest.max_connections` cannot be held within the
/// process's open-file limit (the connections past it would fail to be accepted:
/// counted and backed off from, but refused at random rather than by the limit).
fn check_open_files(cfg: &Config) {
    let Some(soft) = open_files_limit() else {
        return;
    };
    let need = cfg.ingest.max_connections as u64 + RESERVED_FDS;
    if need > soft {
        warn!(
            max_connections = cfg.ingest.max_connections,
            open_files_limit = soft,
            "ingest.max_connections does not fit the open-file limit: raise LimitNOFILE or lower max_connections"
        );
    }
}

/// The soft limit on open files (RLIMIT_NOFILE), from /proc on Linux.
pub use metrics::open_files_limit;

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

/// Take the spool directory's lock ([`spool::lock_dir`]).
fn lock_spool_dir(dir: &std::path::Path) -> Result<std::fs::File, RunError> {
    spool::lock_dir(dir).map_err(|e| match e {
        spool::LockError::Locked { path } => RunError::Locked { path },
        spool::LockError::Io { what, source } => RunError::Io { what, source },
    })
}
