//! send: synthetic clusters. One TCP connection per node, each writing its
//! node's event stream as syslog frames.
//!
//! Frames are built in chunks (up to `chunk_events` per write) into a
//! reused buffer; just before a chunk is written its timestamps are set to
//! the send time, so the sink can measure end-to-end latency. All nodes
//! connect first and start together; a node with a rate paces itself
//! against that start (no drift); without one it writes as fast as the
//! socket takes it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::gen::{now_unix_us, syslog_ts, Chunk, Framing, GenCore, NodeGen};

#[derive(Clone, Debug)]
pub struct SendConfig {
    /// `HOST:PORT` of the syslog listener
    pub target: String,
    pub clusters: u16,
    /// nodes per cluster
    pub nodes: u16,
    /// events per second over all nodes (the burst node excepted); None: as fast as possible
    pub rate: Option<f64>,
    /// events per second of the burst node, when the generator has one
    pub burst_rate: Option<f64>,
    pub duration: Option<Duration>,
    /// events over all nodes
    pub events: Option<u64>,
    pub framing: Framing,
    /// most frames per write
    pub chunk_events: u64,
    /// how long a node keeps trying to (re)connect
    pub connect_timeout: Duration,
    /// longest a single write may block (a broker pushing back)
    pub write_timeout: Duration,
    /// where the namespace metadata changes are applied (the API serves it);
    /// needed when the generator makes them
    pub namespace: Option<Arc<crate::acl::Namespace>>,
}

impl Default for SendConfig {
    fn default() -> Self {
        SendConfig {
            target: "127.0.0.1:514".to_string(),
            clusters: 1,
            nodes: 4,
            rate: None,
            burst_rate: None,
            duration: Some(Duration::from_secs(10)),
            events: None,
            framing: Framing::Lf,
            chunk_events: 256,
            connect_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(60),
            namespace: None,
        }
    }
}

/// Live counters, shared with whoever shows progress.
#[derive(Default, Debug)]
pub struct SendStats {
    pub events: AtomicU64,
    pub expected: AtomicU64,
    /// namespace metadata changes written
    pub acl: AtomicU64,
    pub bytes: AtomicU64,
    pub reconnects: AtomicU64,
}

/// What one node wrote.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct NodeTotal {
    pub cluster: u16,
    pub node: u16,
    pub events: u64,
    /// events qbroker should deliver: seqs 0..expected
    pub expected: u64,
    /// namespace metadata changes written (verified apart)
    #[serde(default)]
    pub acl: u64,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct SendSummary {
    /// from the common start (all nodes connected) to the last node's end
    pub elapsed: Duration,
    pub events: u64,
    pub expected: u64,
    pub bytes: u64,
    pub reconnects: u64,
    pub nodes: Vec<NodeTotal>,
    /// nodes that gave up, and why
    pub errors: Vec<String>,
}

impl SendSummary {
    pub fn events_per_sec(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Namespace metadata changes written, over all nodes.
    pub fn acl(&self) -> u64 {
        self.nodes.iter().map(|n| n.acl).sum()
    }

    /// (cluster, node) -> namespace metadata changes written.
    pub fn acl_totals(&self) -> HashMap<(u16, u16), u64> {
        self.nodes
            .iter()
            .map(|n| ((n.cluster, n.node), n.acl))
            .collect()
    }

    /// (cluster, node) -> expected events written: what the verifier needs.
    pub fn totals(&self) -> HashMap<(u16, u16), u64> {
        self.nodes
            .iter()
            .map(|n| ((n.cluster, n.node), n.expected))
            .collect()
    }
}

impl SendConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.clusters == 0 || self.nodes == 0 {
            bail!("need at least one cluster and one node");
        }
        if self.clusters as u32 * self.nodes as u32 > 20_000 {
            bail!("more than 20000 connections");
        }
        for r in [self.rate, self.burst_rate].into_iter().flatten() {
            if !(r > 0.0 && r.is_finite()) {
                bail!("rate must be a positive number of events per second");
            }
        }
        if self.duration.is_none() && self.events.is_none() {
            bail!("give a duration or a number of events");
        }
        if self.chunk_events == 0 {
            bail!("chunk must hold at least one event");
        }
        Ok(())
    }
}

struct NodePlan {
    cluster: u16,
    node: u16,
    rate: Option<f64>,
    budget: u64,
}

fn plan(cfg: &SendConfig, core: &GenCore) -> Vec<NodePlan> {
    let all: Vec<(u16, u16)> = (0..cfg.clusters)
        .flat_map(|c| (1..=cfg.nodes).map(move |n| (c, n)))
        .collect();
    let burst = |c: u16, n: u16| core.config().burst && (c, n) == crate::gen::BURST_NODE;
    let mix_nodes = all.iter().filter(|(c, n)| !burst(*c, *n)).count().max(1);
    let total = all.len() as u64;
    all.iter()
        .enumerate()
        .map(|(i, &(cluster, node))| NodePlan {
            cluster,
            node,
            rate: if burst(cluster, node) {
                cfg.burst_rate.or(cfg.rate.map(|r| r / mix_nodes as f64))
            } else {
                cfg.rate.map(|r| r / mix_nodes as f64)
            },
            budget: match cfg.events {
                Some(n) => n / total + ((i as u64) < n % total) as u64,
                None => u64::MAX,
            },
        })
        .collect()
}

async fn connect(target: &str, within: Duration) -> anyhow::Result<TcpStream> {
    let deadline = Instant::now() + within;
    let mut backoff = Duration::from_millis(50);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(
            left.max(Duration::from_millis(1)),
            TcpStream::connect(target),
        )
        .await
        {
            Ok(Ok(s)) => {
                s.set_nodelay(true)?;
                return Ok(s);
            }
            Ok(Err(e)) if Instant::now() + backoff < deadline => {
                tracing::debug!(%target, error = %e, "connect failed, retrying");
            }
            Ok(Err(e)) => return Err(e).with_context(|| format!("connecting to {target}")),
            Err(_) => bail!("connecting to {target}: timed out after {within:?}"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// Runs every node until the duration passes, the event budget is spent,
/// or `stop` turns true. Nodes that fail are reported in `errors`.
pub async fn run(
    cfg: SendConfig,
    core: Arc<GenCore>,
    stats: Arc<SendStats>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<SendSummary> {
    cfg.validate()?;
    let cfg = Arc::new(cfg);
    let plans = plan(&cfg, &core);
    // every node connects (or fails to) before any sends, so all start together
    let barrier = Arc::new(tokio::sync::Barrier::new(plans.len()));
    let mut tasks = tokio::task::JoinSet::new();
    for p in plans {
        let (cfg, core, stats, stop) = (cfg.clone(), core.clone(), stats.clone(), stop.clone());
        let barrier = barrier.clone();
        tasks.spawn(async move {
            let (c, n) = (p.cluster, p.node);
            let mut gen = NodeGen::new(core, c, n, cfg.framing);
            if let Some(ns) = &cfg.namespace {
                gen = gen.with_namespace(ns.clone());
            }
            let conn = connect(&cfg.target, cfg.connect_timeout).await;
            barrier.wait().await;
            let started = Instant::now();
            let r = match conn {
                Ok(stream) => node_loop(&cfg, p, stream, &mut gen, &stats, stop).await,
                Err(e) => Err(e),
            };
            let total = NodeTotal {
                cluster: c,
                node: n,
                events: gen.expected_count() + gen.filtered_count() + gen.acl_count(),
                expected: gen.expected_count(),
                acl: gen.acl_count(),
            };
            (
                total,
                started,
                r.err().map(|e| format!("node {c}/{n}: {e:#}")),
            )
        });
    }
    let mut nodes = Vec::new();
    let mut errors = Vec::new();
    let mut start: Option<Instant> = None;
    while let Some(r) = tasks.join_next().await {
        let (total, started, err) = r.context("sender task panicked")?;
        nodes.push(total);
        errors.extend(err);
        start = Some(start.map_or(started, |s| s.min(started)));
    }
    nodes.sort_by_key(|n| (n.cluster, n.node));
    Ok(SendSummary {
        // from the moment every node was connected
        elapsed: start.map_or(Duration::ZERO, |s| s.elapsed()),
        events: nodes.iter().map(|n| n.events).sum(),
        expected: nodes.iter().map(|n| n.expected).sum(),
        bytes: stats.bytes.load(Ordering::Relaxed),
        reconnects: stats.reconnects.load(Ordering::Relaxed),
        nodes,
        errors,
    })
}

/// Events a node may have sent by `elapsed` at `rate`.
fn allowed(elapsed: Duration, rate: f64) -> u64 {
    (elapsed.as_secs_f64() * rate) as u64 + 1
}

async fn node_loop(
    cfg: &SendConfig,
    p: NodePlan,
    mut stream: TcpStream,
    gen: &mut NodeGen,
    stats: &SendStats,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let start = Instant::now();
    let deadline = cfg.duration.map(|d| start + d);
    // rate-limited nodes write at least every ~2 ms worth of events
    let min_chunk = p
        .rate
        .map_or(1, |r| ((r * 0.002) as u64).clamp(1, cfg.chunk_events));
    let mut chunk = Chunk::default();
    let mut sent = 0u64;
    loop {
        if *stop.borrow() || sent >= p.budget || deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let cap = match p.rate {
            Some(r) => allowed(start.elapsed(), r).min(p.budget),
            None => p.budget,
        };
        let due = cap - sent;
        if due < min_chunk.min(p.budget - sent) {
            let r = p.rate.expect("only rate-limited nodes wait");
            let wake = start + Duration::from_secs_f64((sent + min_chunk - 1) as f64 / r);
            let wake = deadline.map_or(wake, |d| wake.min(d));
            tokio::select! {
                _ = tokio::time::sleep_until(wake.into()) => {}
                _ = stop.changed() => {}
            }
            continue;
        }
        chunk.clear();
        gen.fill(&mut chunk, due.min(cfg.chunk_events));
        write_chunk(cfg, &mut stream, &mut chunk, stats).await?;
        sent += chunk.events;
        stats.events.fetch_add(chunk.events, Ordering::Relaxed);
        stats.expected.fetch_add(chunk.expected, Ordering::Relaxed);
        stats.acl.fetch_add(chunk.acl, Ordering::Relaxed);
        stats
            .bytes
            .fetch_add(chunk.buf.len() as u64, Ordering::Relaxed);
        // a write into a socket with room never yields; let the other nodes run
        tokio::task::yield_now().await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.shutdown()).await;
    Ok(())
}

/// Stamps and writes a chunk; on a broken connection reconnects and writes
/// the whole chunk again (what a node resending its buffer would do).
async fn write_chunk(
    cfg: &SendConfig,
    stream: &mut TcpStream,
    chunk: &mut Chunk,
    stats: &SendStats,
) -> anyhow::Result<()> {
    let give_up = Instant::now() + cfg.connect_timeout + cfg.write_timeout;
    // a broker that refuses connections (a limit reached) must not be hammered:
    // 10 ms before the first reconnect, doubling up to 1 s
    let mut pause = Duration::from_millis(10);
    loop {
        chunk.patch_time(&syslog_ts(now_unix_us()));
        let err = match tokio::time::timeout(cfg.write_timeout, stream.write_all(&chunk.buf)).await
        {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => anyhow::Error::from(e),
            Err(_) => anyhow::anyhow!("write blocked for {:?}", cfg.write_timeout),
        };
        if Instant::now() >= give_up {
            return Err(err.context("writing frames"));
        }
        tracing::warn!(target = %cfg.target, error = %err, "write failed, reconnecting");
        stats.reconnects.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(pause.min(give_up.saturating_duration_since(Instant::now()))).await;
        pause = (pause * 2).min(Duration::from_secs(1));
        *stream = connect(&cfg.target, cfg.connect_timeout).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gen::GenConfig;

    #[test]
    fn plan_splits_rate_and_budget() {
        let core = GenCore::new(GenConfig {
            burst: true,
            ..GenConfig::default()
        })
        .unwrap();
        let cfg = SendConfig {
            clusters: 2,
            nodes: 3,
            rate: Some(1000.0),
            burst_rate: Some(9000.0),
            events: Some(10),
            ..SendConfig::default()
        };
        let p = plan(&cfg, &core);
        assert_eq!(p.len(), 6);
        assert_eq!(p[0].rate, Some(9000.0), "cluster 0 node 1 bursts");
        assert!(p[1..].iter().all(|n| n.rate == Some(200.0)));
        assert_eq!(p.iter().map(|n| n.budget).sum::<u64>(), 10);
    }

    #[test]
    fn pacing() {
        assert_eq!(allowed(Duration::ZERO, 1000.0), 1);
        assert_eq!(allowed(Duration::from_millis(1500), 1000.0), 1501);
    }
}
