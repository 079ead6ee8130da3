//! loadgen's command line: parses arguments and calls the library.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use tokio::sync::watch;

use loadgen::bench::{BenchOptions, Scenario};
use loadgen::gen::{Format, Framing, GenConfig, GenCore, Mix};
use loadgen::report::num;
use loadgen::send::{NodeTotal, SendConfig, SendStats};
use loadgen::sink::{CertSource, FaultConfig, SinkConfig, Window};
use loadgen::verify::Verifier;

#[derive(Parser)]
#[command(
    name = "loadgen",
    version,
    about = "Synthetic Qumulo clusters, a verifying Varonis sink, and the qbroker benchmark"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Send Qumulo audit syslog over TCP, one connection per node
    Send(SendArgs),
    /// Run a verifying Varonis endpoint (HTTPS)
    Sink(SinkArgs),
    /// Run a syslog TCP server that counts and discards (to measure `send`)
    Discard(DiscardArgs),
    /// Run qbroker, the sink and the senders together and report
    Bench(BenchArgs),
    /// rsyslog's omprog consumer in `bench --versus rsyslog`: lines from
    /// stdin to the sink as JSON arrays over HTTPS
    #[command(hide = true)]
    Relay(RelayArgs),
}

#[derive(Args)]
struct RelayArgs {
    /// https://HOST:PORT/PATH
    #[arg(long)]
    url: String,
    /// the PEM to trust
    #[arg(long)]
    ca: PathBuf,
    #[arg(long, default_value_t = 1000)]
    batch_lines: usize,
    #[arg(long, default_value_t = 1 << 20)]
    batch_bytes: usize,
    #[arg(long, default_value_t = 200)]
    batch_timeout_ms: u64,
}

/// Event content; the sink needs the same values as the sender.
#[derive(Args, Clone)]
struct GenArgs {
    /// seed of every generated event
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// audit record format
    #[arg(long, value_enum, default_value_t = Format::Json)]
    format: Format,
    /// operation weights, e.g. `fs_read_metadata=300,fs_open=0`; unnamed operations keep their defaults
    #[arg(long)]
    mix: Option<String>,
    /// percent of fs operations failing with fs_access_denied_error
    #[arg(long, default_value_t = 2.0)]
    denied_pct: f64,
    /// percent of operations failing with another error
    #[arg(long, default_value_t = 2.0)]
    error_pct: f64,
    /// percent of clients with IPv6 addresses
    #[arg(long, default_value_t = 15.0)]
    ipv6_pct: f64,
    /// protocol weights, e.g. `smb2=60,nfs3=20,nfs4=10,api=10`
    #[arg(long)]
    protocols: Option<String>,
    /// cluster 0 node 1 plays ransomware: one user reading, overwriting and renaming files
    #[arg(long)]
    burst: bool,
    /// cluster names are PREFIX000, PREFIX001, ...
    #[arg(long, default_value = "qlg-c")]
    cluster_prefix: String,
}

fn ppm(name: &str, pct: f64) -> anyhow::Result<u32> {
    if !(0.0..=100.0).contains(&pct) {
        bail!("--{name}: a percentage between 0 and 100");
    }
    Ok((pct * 10_000.0).round() as u32)
}

impl GenArgs {
    fn core(&self) -> anyhow::Result<Arc<GenCore>> {
        let mut mix = Mix::default();
        if let Some(m) = &self.mix {
            mix.set_op_weights(m).context("--mix")?;
        }
        if let Some(p) = &self.protocols {
            mix.set_protocols(p).context("--protocols")?;
        }
        mix.denied_ppm = ppm("denied-pct", self.denied_pct)?;
        mix.error_ppm = ppm("error-pct", self.error_pct)?;
        mix.ipv6_ppm = ppm("ipv6-pct", self.ipv6_pct)?;
        let cfg = GenConfig {
            seed: self.seed,
            format: self.format,
            mix,
            burst: self.burst,
            cluster_prefix: self.cluster_prefix.clone(),
            acl_ppm: 0,
        };
        Ok(Arc::new(GenCore::new(cfg)?))
    }
}

#[derive(Args)]
struct SendArgs {
    /// the syslog listener, HOST:PORT
    #[arg(long)]
    target: String,
    #[arg(long, default_value_t = 1)]
    clusters: u16,
    /// nodes per cluster (one TCP connection each)
    #[arg(long, default_value_t = 4)]
    nodes: u16,
    /// events per second over all nodes; omit to send as fast as possible
    #[arg(long)]
    rate: Option<f64>,
    /// events per second of the --burst node (default: its share of --rate)
    #[arg(long)]
    burst_rate: Option<f64>,
    /// seconds to send (default 10 unless --events is given)
    #[arg(long)]
    duration: Option<f64>,
    /// events to send over all nodes
    #[arg(long)]
    events: Option<u64>,
    #[arg(long, value_enum, default_value_t = Framing::Lf)]
    framing: Framing,
    /// most frames per write
    #[arg(long, default_value_t = 256)]
    chunk: u64,
    /// write what each node sent (for `sink --manifest`) to this JSON file
    #[arg(long)]
    manifest: Option<PathBuf>,
    #[command(flatten)]
    gen: GenArgs,
}

#[derive(Args)]
struct SinkArgs {
    #[arg(long, default_value = "127.0.0.1:8443")]
    listen: std::net::SocketAddr,
    /// certificate chain PEM (default: generate a CA and a leaf for localhost)
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// private key PEM for --cert
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// write the PEM clients should trust (the generated CA) here
    #[arg(long)]
    cert_out: Option<PathBuf>,
    /// seconds to run (default: until Ctrl-C)
    #[arg(long)]
    duration: Option<f64>,
    /// the sender's manifest (`send --manifest`): counts losses at the tail too
    #[arg(long)]
    manifest: Option<PathBuf>,
    /// write the final summary as JSON here
    #[arg(long)]
    json: Option<PathBuf>,
    /// fraction of requests answered 503
    #[arg(long, default_value_t = 0.0)]
    fail_503: f64,
    /// answer 503 to everything during START+LEN seconds after start (repeatable)
    #[arg(long)]
    outage: Vec<Window>,
    /// fraction of requests answered 429
    #[arg(long, default_value_t = 0.0)]
    throttle_429: f64,
    /// Retry-After seconds on 429
    #[arg(long, default_value_t = 1)]
    retry_after: u64,
    /// delay every response by MS, or by MIN-MAX ms
    #[arg(long)]
    delay_ms: Option<String>,
    /// fraction of requests whose connection is closed without an answer
    #[arg(long, default_value_t = 0.0)]
    reset: f64,
    /// fraction of requests accepted, then closed without an answer
    #[arg(long, default_value_t = 0.0)]
    lose_ack: f64,
    /// be gone (listener closed, connections dropped) during START+LEN seconds (repeatable)
    #[arg(long)]
    away: Vec<Window>,
    #[command(flatten)]
    gen: GenArgs,
}

#[derive(Args)]
struct DiscardArgs {
    #[arg(long, default_value = "127.0.0.1:5514")]
    listen: std::net::SocketAddr,
    /// seconds to run (default: until Ctrl-C)
    #[arg(long)]
    duration: Option<f64>,
}

#[derive(Args)]
struct BenchArgs {
    #[arg(long, value_enum, default_value_t = Scenario::Steady)]
    scenario: Scenario,
    /// what carries the batches: https (the verifying HTTPS sink), amqp or
    /// amqp-event (a private RabbitMQ, started here, whose queue the sink
    /// consumes; a message per batch or per event)
    #[arg(long, value_enum, default_value_t = loadgen::bench::Egress::Https)]
    egress: loadgen::bench::Egress,
    /// seconds of sending (default: the scenario's, 10 s; outage 60 s;
    /// restart-at-cap 8 s)
    #[arg(long)]
    duration: Option<f64>,
    /// write the report as JSON here
    #[arg(long)]
    json: Option<PathBuf>,
    /// the qbroker binary (default: target/release/qbroker next to loadgen)
    #[arg(long)]
    broker: Option<PathBuf>,
    /// broker parse threads (default: the number of CPUs it may run on)
    #[arg(long)]
    workers: Option<usize>,
    /// events per second over all nodes, instead of the scenario's
    /// (burst: the burst node's 15,000/s come on top)
    #[arg(long)]
    rate: Option<f64>,
    /// clusters, instead of the scenario's
    #[arg(long)]
    clusters: Option<u16>,
    /// nodes per cluster, instead of the scenario's
    #[arg(long)]
    nodes: Option<u16>,
    /// run the broker under `taskset -c LIST`, e.g. `0-7`
    #[arg(long, value_name = "LIST")]
    broker_cpus: Option<String>,
    /// the broker's [batch] max_events (default: its own, 1000)
    #[arg(long)]
    batch_max_events: Option<usize>,
    /// the broker's [batch] max_age_ms (default: its own, 200)
    #[arg(long)]
    batch_max_age_ms: Option<u64>,
    /// the broker's [spool] fsync policy (default: its own, interval)
    #[arg(long, value_enum)]
    spool_fsync: Option<loadgen::bench::SpoolFsync>,
    /// put the broker's spool under /dev/shm (memory) instead of the work
    /// directory: compared with a run on disk, what the disk costs
    #[arg(long)]
    spool_in_memory: bool,
    #[arg(long, value_enum, default_value_t = Format::Json)]
    format: Format,
    #[arg(long, value_enum, default_value_t = Framing::Lf)]
    framing: Framing,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// seconds without a new delivery before giving up on the rest
    #[arg(long, default_value_t = 30.0)]
    drain_timeout: f64,
    /// keep the work directory (config, broker log, spool)
    #[arg(long)]
    keep: bool,
    /// no progress bar
    #[arg(long)]
    no_progress: bool,
    /// also run these syslog daemons on the same load, one after the other
    /// with qbroker in each round, and report CPU per input message and
    /// throughput as ratios to qbroker's: rsyslog, syslog-ng (repeat or
    /// separate with commas)
    #[arg(long, value_delimiter = ',', value_name = "PEER")]
    versus: Vec<loadgen::peer::Peer>,
    /// --versus: interleaved rounds (qbroker, then each peer); medians
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// --versus: a peer's executable, e.g. `syslog-ng=/opt/sng/usr/sbin/syslog-ng`
    /// (default: PATH, /usr/sbin, then where scripts/install-peers unpacks syslog-ng)
    #[arg(long, value_name = "PEER=PATH")]
    peer_bin: Vec<String>,
    /// --versus: syslog-ng's http() workers
    #[arg(long, default_value_t = 2)]
    peer_http_workers: usize,
}

fn secs(name: &str, v: f64) -> anyhow::Result<Duration> {
    if !(v > 0.0 && v < 1e7) {
        bail!("--{name}: a positive number of seconds");
    }
    Ok(Duration::from_secs_f64(v))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,lapin=off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let ok = match Cli::parse().cmd {
        Cmd::Send(a) => send(a).await?,
        Cmd::Sink(a) => sink(a).await?,
        Cmd::Discard(a) => discard(a).await?,
        Cmd::Bench(a) => bench(a).await?,
        Cmd::Relay(a) => relay(a).await?,
    };
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}

/// Resolves on Ctrl-C or after `limit`.
async fn until(limit: Option<Duration>) {
    match limit {
        Some(d) => {
            tokio::select! {
                _ = tokio::time::sleep(d) => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        None => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Manifest {
    tag: u16,
    seed: u64,
    nodes: Vec<NodeTotal>,
}

async fn send(a: SendArgs) -> anyhow::Result<bool> {
    let core = a.gen.core()?;
    let duration = match (a.duration, a.events) {
        (Some(d), _) => Some(secs("duration", d)?),
        (None, Some(_)) => None,
        (None, None) => Some(Duration::from_secs(10)),
    };
    let cfg = SendConfig {
        target: a.target.clone(),
        clusters: a.clusters,
        nodes: a.nodes,
        rate: a.rate,
        burst_rate: a.burst_rate,
        duration,
        events: a.events,
        framing: a.framing,
        chunk_events: a.chunk,
        ..SendConfig::default()
    };
    let stats = Arc::new(SendStats::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut task = tokio::spawn(loadgen::send::run(
        cfg,
        core.clone(),
        stats.clone(),
        stop_rx,
    ));
    let start = Instant::now();
    let mut last = (0u64, start);
    let summary = loop {
        tokio::select! {
            r = &mut task => break r??,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                let n = stats.events.load(Ordering::Relaxed);
                let rate = (n - last.0) as f64 / last.1.elapsed().as_secs_f64();
                eprintln!("{:>5.1} s  sent {:>12}  {:>10}/s", start.elapsed().as_secs_f64(), num(n), num(rate as u64));
                last = (n, Instant::now());
            }
            _ = tokio::signal::ctrl_c() => { let _ = stop_tx.send(true); }
        }
    };
    let secs = summary.elapsed.as_secs_f64();
    println!(
        "sent {} events ({} to be delivered) over {} connections in {:.2} s: {} events/s, {:.1} MB/s, {} reconnects",
        num(summary.events),
        num(summary.expected),
        summary.nodes.len(),
        secs,
        num(summary.events_per_sec() as u64),
        summary.bytes as f64 / secs / 1e6,
        summary.reconnects
    );
    for e in &summary.errors {
        eprintln!("error: {e}");
    }
    if let Some(p) = &a.manifest {
        let m = Manifest {
            tag: core.tag(),
            seed: a.gen.seed,
            nodes: summary.nodes.clone(),
        };
        std::fs::write(p, serde_json::to_vec_pretty(&m)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(summary.errors.is_empty())
}

fn parse_delay(s: &str) -> anyhow::Result<(u64, u64)> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let a: u64 = a.trim().parse().context("--delay-ms: MS or MIN-MAX")?;
    let b: u64 = b.trim().parse().context("--delay-ms: MS or MIN-MAX")?;
    Ok((a, b))
}

async fn sink(a: SinkArgs) -> anyhow::Result<bool> {
    let core = a.gen.core()?;
    let faults = FaultConfig {
        fail_503: a.fail_503,
        outages: a.outage.clone(),
        throttle_429: a.throttle_429,
        retry_after_secs: a.retry_after,
        delay_ms: a
            .delay_ms
            .as_deref()
            .map(parse_delay)
            .transpose()?
            .unwrap_or((0, 0)),
        reset: a.reset,
        lose_ack: a.lose_ack,
        away: a.away.clone(),
    };
    let cert = match (&a.cert, &a.key) {
        (Some(cert), Some(key)) => CertSource::Files {
            cert: cert.clone(),
            key: key.clone(),
        },
        _ => CertSource::Generate,
    };
    let verifier = Arc::new(Verifier::new(core.clone()));
    let sink = loadgen::sink::start(
        SinkConfig {
            listen: a.listen,
            cert,
            cert_out: a.cert_out.clone(),
            faults,
        },
        verifier.clone(),
    )
    .await?;
    eprintln!(
        "sink on https://{}/ (run tag {:#06x}){}",
        sink.addr,
        core.tag(),
        a.cert_out
            .as_ref()
            .map_or(String::new(), |p| format!("; trust {}", p.display()))
    );
    let limit = a.duration.map(|d| secs("duration", d)).transpose()?;
    let ticker = {
        let (verifier, counters) = (verifier.clone(), sink.counters.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let s = verifier.summary(None);
                let r = counters.snapshot();
                eprintln!(
                    "batches {}  delivered {}  lost {}  duplicated {}  errors {}  p99 {:.1} ms  ({} x 503, {} x 429)",
                    num(s.batches),
                    num(s.delivered),
                    num(s.lost),
                    num(s.duplicated),
                    num(s.schema_errors + s.mismatches + s.unexpected + s.foreign),
                    s.latency_ms.p99,
                    r.unavailable,
                    r.throttled
                );
            }
        })
    };
    until(limit).await;
    ticker.abort();
    let totals = match &a.manifest {
        Some(p) => {
            let m: Manifest = serde_json::from_slice(
                &std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
            )
            .with_context(|| format!("parsing {}", p.display()))?;
            if m.tag != core.tag() {
                eprintln!(
                    "warning: the manifest's run tag {:#06x} differs from this sink's {:#06x}",
                    m.tag,
                    core.tag()
                );
            }
            Some(
                m.nodes
                    .iter()
                    .map(|n| ((n.cluster, n.node), n.expected))
                    .collect(),
            )
        }
        None => None,
    };
    let s = verifier.summary(totals.as_ref());
    let responses = sink.counters.snapshot();
    sink.stop().await;
    println!("{}", serde_json::to_string_pretty(&s)?);
    println!("{}", serde_json::to_string_pretty(&responses)?);
    if let Some(p) = &a.json {
        let v = serde_json::json!({ "summary": s, "responses": responses });
        std::fs::write(p, serde_json::to_vec_pretty(&v)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    let failures = s.failures();
    for f in &failures {
        eprintln!("FAIL: {f}");
    }
    Ok(failures.is_empty())
}

async fn discard(a: DiscardArgs) -> anyhow::Result<bool> {
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("binding {}", a.listen))?;
    eprintln!("discarding on {}", listener.local_addr()?);
    let stats = Arc::new(loadgen::discard::DiscardStats::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let server = tokio::spawn(loadgen::discard::run(listener, stats.clone(), stop_rx));
    let limit = a.duration.map(|d| secs("duration", d)).transpose()?;
    let start = Instant::now();
    let ticker = {
        let stats = stats.clone();
        tokio::spawn(async move {
            let (mut lf, mut lb, mut lt) = (0u64, 0u64, Instant::now());
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let (f, b) = (
                    stats.frames.load(Ordering::Relaxed),
                    stats.bytes.load(Ordering::Relaxed),
                );
                let dt = lt.elapsed().as_secs_f64();
                if f != lf {
                    eprintln!(
                        "{:>10} frames/s  {:>7.1} MB/s  total {} frames",
                        num(((f - lf) as f64 / dt) as u64),
                        (b - lb) as f64 / dt / 1e6,
                        num(f)
                    );
                }
                (lf, lb, lt) = (f, b, Instant::now());
            }
        })
    };
    until(limit).await;
    ticker.abort();
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    println!(
        "received {} frames, {} bytes on {} connections in {:.1} s ({} framing errors)",
        num(stats.frames.load(Ordering::Relaxed)),
        num(stats.bytes.load(Ordering::Relaxed)),
        stats.connections.load(Ordering::Relaxed),
        start.elapsed().as_secs_f64(),
        stats.framing_errors.load(Ordering::Relaxed)
    );
    Ok(true)
}

async fn relay(a: RelayArgs) -> anyhow::Result<bool> {
    let cfg = loadgen::peer::RelayConfig {
        url: a.url,
        ca_file: a.ca,
        batch_lines: a.batch_lines.max(1),
        batch_bytes: a.batch_bytes.max(1),
        batch_timeout: Duration::from_millis(a.batch_timeout_ms),
    };
    let stats =
        tokio::task::spawn_blocking(move || loadgen::peer::relay(&cfg, std::io::stdin())).await??;
    eprintln!(
        "loadgen relay: {} lines in {} batches, {} retries, {} refused",
        stats.lines, stats.batches, stats.retries, stats.refused
    );
    Ok(stats.refused == 0)
}

async fn bench(a: BenchArgs) -> anyhow::Result<bool> {
    let versus = !a.versus.is_empty();
    let mut peer_bins = std::collections::HashMap::new();
    for spec in &a.peer_bin {
        let (name, path) = spec
            .split_once('=')
            .context("--peer-bin: PEER=PATH, e.g. syslog-ng=/usr/sbin/syslog-ng")?;
        let peer: loadgen::peer::Peer = name.parse().context("--peer-bin")?;
        peer_bins.insert(peer, PathBuf::from(path));
    }
    if !versus && !peer_bins.is_empty() {
        bail!("--peer-bin goes with --versus");
    }
    let settings = loadgen::peer::PeerSettings {
        batch_lines: a.batch_max_events.unwrap_or(1000),
        batch_timeout_ms: a.batch_max_age_ms.unwrap_or(200),
        http_workers: a.peer_http_workers.max(1),
        ..Default::default()
    };
    let (versus_peers, rounds, json) = (a.versus.clone(), a.rounds, a.json.clone());
    let opts = BenchOptions {
        scenario: a.scenario,
        egress: a.egress,
        duration: a.duration.map(|d| secs("duration", d)).transpose()?,
        broker: a.broker,
        workers: a.workers,
        rate: a.rate,
        clusters: a.clusters,
        nodes: a.nodes,
        broker_cpus: a.broker_cpus,
        overrides: loadgen::bench::BrokerOverrides {
            max_events: a.batch_max_events,
            max_age_ms: a.batch_max_age_ms,
            spool_fsync: a.spool_fsync,
            spool_in_memory: a.spool_in_memory,
            ..Default::default()
        },
        format: a.format,
        framing: a.framing,
        seed: a.seed,
        drain_timeout: secs("drain-timeout", a.drain_timeout)?,
        progress: !a.no_progress,
        keep_dir: a.keep,
    };
    if versus {
        let report = loadgen::versus::run(loadgen::versus::VersusOptions {
            bench: opts,
            peers: versus_peers,
            rounds,
            peer_bins,
            relay_exe: std::env::current_exe().context("locating loadgen itself")?,
            settings,
        })
        .await?;
        print!("{}", report.render());
        if let Some(p) = &json {
            report.write_json(p)?;
        }
        return Ok(report.ok);
    }
    let report = loadgen::bench::run(opts).await?;
    print!("{}", report.render());
    if let Some(p) = &a.json {
        report.write_json(p)?;
    }
    Ok(report.ok)
}
