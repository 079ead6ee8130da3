//! bench: qbroker end to end on loopback. Starts the sink, then the release
//! broker as a child process with a generated configuration, then the
//! senders; runs a named scenario; waits for every expected event to arrive
//! (or for progress to stop); stops the broker with SIGTERM; and reports.
//!
//! Broker CPU comes from /proc/<pid>/stat (utime + stime, sampled when the
//! senders start and when the drain ends), peak RSS from VmHWM.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::process::{Child, Command};
use tokio::sync::watch;

use crate::acl::Namespace;
use crate::gen::{now_unix_us, Format, Framing, GenConfig, GenCore};
use crate::report::{num, BrokerUsage, EnrichReport, Report, RestartReport, Setup, Timing};
use crate::send::{SendConfig, SendStats};
use crate::sink::{CertSource, FaultConfig, SinkConfig, Window};
use crate::verify::Verifier;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// 2 clusters x 3 nodes at 20,000 events/s
    Steady,
    /// 2 clusters x 4 nodes, as fast as the senders go
    Max,
    /// 50 clusters x 4 nodes at 20,000 events/s
    ManyClusters,
    /// 2 clusters x 3 nodes at 5,000 events/s, plus one node of one user
    /// reading, overwriting and renaming 5,000 files/s (ransomware-like)
    Burst,
    /// 2 clusters x 3 nodes at 10,000 events/s; the sink answers 503 for
    /// 30 s mid-run; nothing may be lost
    Outage,
    /// steady, with 5% of events metadata changes on ACL-carrying objects that
    /// qbroker enriches from the simulated clusters' REST API
    Enrich,
    /// enrich, with every API answer 300 ms late: the rest must not slow down
    EnrichSlowApi,
    /// 2 clusters x 2 nodes at 5,000 events/s for 8 s into a broker with a
    /// 2 MiB spool cap while the sink answers 503; once the broker has read
    /// every frame, its spool is at its cap and frames wait in its work queue,
    /// SIGTERM; start it again on the same data directory, end the outage:
    /// nothing may be lost
    RestartAtCap,
    /// AMQP (--egress amqp unless amqp-event is asked for): 2 clusters x 3
    /// nodes at 10,000 events/s; RabbitMQ is killed (-9) mid-run and started
    /// again 5 s later; nothing may be lost
    RabbitmqRestart,
    /// AMQP: as rabbitmq-restart, but a memory alarm blocks publishing for the
    /// middle third instead; nothing may be lost
    RabbitmqBlocked,
}

/// What happens to the benchmark's RabbitMQ during a window of the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RabbitFault {
    /// kill -9 at the start, started again at the end
    Restart,
    /// a memory alarm (high watermark 0) from the start to the end
    Blocked,
}

/// What a scenario runs.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub clusters: u16,
    pub nodes: u16,
    pub rate: Option<f64>,
    pub burst_rate: Option<f64>,
    pub duration: Duration,
    /// 503 window, relative to the start of sending
    pub outage: Option<Window>,
    /// share of metadata changes on the namespace objects, per million (0: none)
    pub acl_ppm: u32,
    /// delay of every REST API answer
    pub api_delay: Duration,
    /// a RabbitMQ fault, relative to the start of sending (AMQP scenarios)
    pub rabbit: Option<(RabbitFault, Window)>,
    /// restart-at-cap: the sink answers 503 from the start until the broker,
    /// stopped at its spool cap, was started again
    pub restart_at_cap: bool,
    /// the scenario's broker settings (the command line's come first)
    pub broker: BrokerOverrides,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Steady => "steady",
            Scenario::Max => "max",
            Scenario::ManyClusters => "many-clusters",
            Scenario::Burst => "burst",
            Scenario::Outage => "outage",
            Scenario::Enrich => "enrich",
            Scenario::EnrichSlowApi => "enrich-slow-api",
            Scenario::RabbitmqRestart => "rabbitmq-restart",
            Scenario::RabbitmqBlocked => "rabbitmq-blocked",
            Scenario::RestartAtCap => "restart-at-cap",
        }
    }

    /// The scenario's shape; `duration` overrides its default length.
    /// [`Plan::with`] applies the other overrides.
    pub fn plan(self, duration: Option<Duration>) -> Plan {
        let secs = Duration::from_secs;
        let base = Plan {
            clusters: 2,
            nodes: 3,
            rate: Some(20_000.0),
            burst_rate: None,
            duration: duration.unwrap_or(secs(10)),
            outage: None,
            acl_ppm: 0,
            api_delay: Duration::ZERO,
            rabbit: None,
            restart_at_cap: false,
            broker: BrokerOverrides::default(),
        };
        match self {
            Scenario::Steady => base,
            Scenario::Enrich => Plan {
                acl_ppm: 50_000,
                ..base
            },
            Scenario::EnrichSlowApi => Plan {
                acl_ppm: 50_000,
                api_delay: Duration::from_millis(300),
                ..base
            },
            Scenario::Max => Plan {
                nodes: 4,
                rate: None,
                ..base
            },
            Scenario::ManyClusters => Plan {
                clusters: 50,
                nodes: 4,
                ..base
            },
            Scenario::Burst => Plan {
                rate: Some(5_000.0),
                burst_rate: Some(15_000.0),
                ..base
            },
            Scenario::RabbitmqRestart | Scenario::RabbitmqBlocked => {
                let d = duration.unwrap_or(secs(30));
                let (fault, len) = if self == Scenario::RabbitmqRestart {
                    (RabbitFault::Restart, secs(5).min(d / 3))
                } else {
                    (RabbitFault::Blocked, d / 3)
                };
                Plan {
                    rate: Some(10_000.0),
                    duration: d,
                    rabbit: Some((
                        fault,
                        Window {
                            start: (d - len) / 2,
                            len,
                        },
                    )),
                    ..base
                }
            }
            Scenario::RestartAtCap => Plan {
                nodes: 2,
                rate: Some(5_000.0),
                duration: duration.unwrap_or(secs(8)),
                restart_at_cap: true,
                broker: BrokerOverrides {
                    // small enough that a few seconds of events fill it (the
                    // broker wants max_bytes >= twice segment_bytes and
                    // batch.max_bytes)
                    spool_max_bytes: Some(2 << 20),
                    spool_segment_bytes: Some(256 << 10),
                    batch_max_bytes: Some(256 << 10),
                    // room for every frame sent, so that reading never pauses:
                    // syslog over TCP has no acknowledgement, so what would
                    // wait in socket buffers at the signal is lost by TCP
                    queue_size: Some(200_000),
                    queue_max_bytes: Some(256 << 20),
                    // the stopping broker tries the sink (503) until the grace
                    // period ends: short, but room to write the queue to disk
                    shutdown_grace_secs: Some(10),
                    ..BrokerOverrides::default()
                },
                ..base
            },
            Scenario::Outage => {
                let d = duration.unwrap_or(secs(60));
                // 30 s of 503 in the middle; shorter runs get half their length
                let len = secs(30).min(d / 2);
                Plan {
                    rate: Some(10_000.0),
                    duration: d,
                    outage: Some(Window {
                        start: (d - len) / 2,
                        len,
                    }),
                    ..base
                }
            }
        }
    }
}

impl Plan {
    /// The plan with the shape and rate of the command line, where given.
    /// `rate` is events/s over all nodes; a burst node keeps its own rate on top.
    pub fn with(
        mut self,
        rate: Option<f64>,
        clusters: Option<u16>,
        nodes: Option<u16>,
    ) -> anyhow::Result<Plan> {
        if let Some(r) = rate {
            if !(r > 0.0 && r.is_finite()) {
                bail!("--rate: a positive number of events per second");
            }
            self.rate = Some(r);
        }
        if let Some(c) = clusters {
            if c == 0 {
                bail!("--clusters: at least one");
            }
            self.clusters = c;
        }
        if let Some(n) = nodes {
            if n == 0 {
                bail!("--nodes: at least one");
            }
            self.nodes = n;
        }
        Ok(self)
    }
}

/// `[batch]`, `[spool]`, `[queue]` and `[shutdown]` settings of the broker
/// under test; None: its default.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct BrokerOverrides {
    pub max_events: Option<usize>,
    pub max_age_ms: Option<u64>,
    /// `[batch] max_bytes`
    pub batch_max_bytes: Option<u64>,
    /// `[spool] fsync`
    pub spool_fsync: Option<SpoolFsync>,
    /// the spool in memory (a directory under /dev/shm) instead of on disk:
    /// what the spool's own work costs without the disk
    pub spool_in_memory: bool,
    /// `[spool] max_bytes`
    pub spool_max_bytes: Option<u64>,
    /// `[spool] segment_bytes`
    pub spool_segment_bytes: Option<u64>,
    /// `[queue] size` (frames)
    pub queue_size: Option<u64>,
    /// `[queue] max_bytes`
    pub queue_max_bytes: Option<u64>,
    /// `[shutdown] grace_secs`
    pub shutdown_grace_secs: Option<u64>,
}

impl BrokerOverrides {
    /// These settings, with `base`'s (a scenario's) where these have none.
    pub fn over(self, base: BrokerOverrides) -> BrokerOverrides {
        BrokerOverrides {
            max_events: self.max_events.or(base.max_events),
            max_age_ms: self.max_age_ms.or(base.max_age_ms),
            batch_max_bytes: self.batch_max_bytes.or(base.batch_max_bytes),
            spool_fsync: self.spool_fsync.or(base.spool_fsync),
            spool_in_memory: self.spool_in_memory || base.spool_in_memory,
            spool_max_bytes: self.spool_max_bytes.or(base.spool_max_bytes),
            spool_segment_bytes: self.spool_segment_bytes.or(base.spool_segment_bytes),
            queue_size: self.queue_size.or(base.queue_size),
            queue_max_bytes: self.queue_max_bytes.or(base.queue_max_bytes),
            shutdown_grace_secs: self.shutdown_grace_secs.or(base.shutdown_grace_secs),
        }
    }
}

/// The broker's `[spool] fsync` policies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SpoolFsync {
    Always,
    Interval,
    Never,
}

impl SpoolFsync {
    pub fn as_str(self) -> &'static str {
        match self {
            SpoolFsync::Always => "always",
            SpoolFsync::Interval => "interval",
            SpoolFsync::Never => "never",
        }
    }
}

/// What carries the batches from qbroker to the sink.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Egress {
    /// HTTPS POSTs to the verifying sink
    #[default]
    Https,
    /// AMQP to a private RabbitMQ, one message per batch; the sink consumes
    Amqp,
    /// AMQP, one message per event
    AmqpEvent,
}

impl Egress {
    pub fn name(self) -> &'static str {
        match self {
            Egress::Https => "https",
            Egress::Amqp => "amqp",
            Egress::AmqpEvent => "amqp-event",
        }
    }
}

#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub scenario: Scenario,
    /// what carries the batches to the sink
    pub egress: Egress,
    pub duration: Option<Duration>,
    /// the qbroker binary; default: next to this executable
    pub broker: Option<PathBuf>,
    /// broker parse threads; default: the number of CPUs it may run on
    pub workers: Option<usize>,
    /// events/s over all nodes, instead of the scenario's
    pub rate: Option<f64>,
    /// clusters, instead of the scenario's
    pub clusters: Option<u16>,
    /// nodes per cluster, instead of the scenario's
    pub nodes: Option<u16>,
    /// run the broker under `taskset -c LIST` (e.g. `0-7`)
    pub broker_cpus: Option<String>,
    /// the broker's `[batch]` and `[spool]` settings, where not its defaults
    pub overrides: BrokerOverrides,
    pub format: Format,
    pub framing: Framing,
    pub seed: u64,
    /// give up waiting for deliveries after this long without progress
    pub drain_timeout: Duration,
    /// draw a progress bar on stderr (when it is a terminal)
    pub progress: bool,
    /// keep the work directory (config, broker log, spool) after success
    pub keep_dir: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            scenario: Scenario::Steady,
            egress: Egress::Https,
            duration: None,
            broker: None,
            workers: None,
            rate: None,
            clusters: None,
            nodes: None,
            broker_cpus: None,
            overrides: BrokerOverrides::default(),
            format: Format::Json,
            framing: Framing::Lf,
            seed: 1,
            drain_timeout: Duration::from_secs(30),
            progress: true,
            keep_dir: false,
        }
    }
}

const BUILD_HINT: &str = "build it with `cargo build --release --workspace` \
     (tests also take the debug one from `cargo build -p qbroker`), or pass --broker PATH";

/// The qbroker binary: `explicit`, else next to the running executable
/// (also from `target/*/deps` test binaries and from a debug loadgen).
pub fn find_broker(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        if p.is_file() {
            return Ok(p.to_path_buf());
        }
        bail!("qbroker binary {} not found; {BUILD_HINT}", p.display());
    }
    let exe = std::env::current_exe().context("locating the running executable")?;
    let dir = exe.parent().context("executable has no directory")?;
    let mut candidates = vec![dir.join("qbroker")];
    if dir.ends_with("deps") {
        if let Some(up) = dir.parent() {
            candidates.push(up.join("qbroker"));
        }
    }
    // target/debug/loadgen (or target/debug/deps/...) -> target/release/qbroker
    for d in dir.ancestors().take(3) {
        if d.file_name().is_some_and(|n| n == "debug") {
            if let Some(t) = d.parent() {
                candidates.push(t.join("release").join("qbroker"));
            }
        }
    }
    // prefer the release build
    candidates.sort_by_key(|p| !p.to_string_lossy().contains("release"));
    for c in &candidates {
        if c.is_file() {
            return Ok(c.clone());
        }
    }
    let tried: Vec<String> = candidates.iter().map(|c| c.display().to_string()).collect();
    bail!(
        "qbroker binary not found (looked at {}); {BUILD_HINT}",
        tried.join(", ")
    )
}

fn toml_str(s: &str) -> String {
    // a JSON string is a valid TOML basic string
    serde_json::to_string(s).expect("string")
}

/// The broker configuration the bench runs with.
/// `overrides` sets `[batch]`, `[spool]`, `[queue]` and `[shutdown]` fields
/// over the broker's defaults
/// (`spool_dir`: where the spool goes instead of `data_dir`). Every simulated
/// node connects from 127.0.0.1, so the per-source connection limit (128 by
/// default, sized for a relay) is raised to twice the `nodes` the senders run:
/// a node that reconnects may hold two for a moment.
#[allow(clippy::too_many_arguments)]
pub fn broker_config(
    listen: std::net::SocketAddr,
    workers: usize,
    metrics: std::net::SocketAddr,
    data_dir: &Path,
    sink_url: &str,
    ca_file: &Path,
    overrides: &BrokerOverrides,
    nodes: usize,
    spool_dir: Option<&Path>,
) -> String {
    let mut batch_table = String::new();
    if let Some(n) = overrides.max_events {
        batch_table.push_str(&format!("max_events = {n}\n"));
    }
    if let Some(ms) = overrides.max_age_ms {
        batch_table.push_str(&format!("max_age_ms = {ms}\n"));
    }
    if let Some(b) = overrides.batch_max_bytes {
        batch_table.push_str(&format!("max_bytes = {b}\n"));
    }
    if !batch_table.is_empty() {
        batch_table.insert_str(0, "\n[batch]\n");
    }
    let mut spool_table = String::new();
    if let Some(f) = overrides.spool_fsync {
        spool_table.push_str(&format!("fsync = {}\n", toml_str(f.as_str())));
    }
    if let Some(b) = overrides.spool_max_bytes {
        spool_table.push_str(&format!("max_bytes = {b}\n"));
    }
    if let Some(b) = overrides.spool_segment_bytes {
        spool_table.push_str(&format!("segment_bytes = {b}\n"));
    }
    if let Some(dir) = spool_dir {
        spool_table.push_str(&format!("dir = {}\n", toml_str(&dir.to_string_lossy())));
    }
    if !spool_table.is_empty() {
        spool_table.insert_str(0, "\n[spool]\n");
    }
    let mut queue_table = String::new();
    if let Some(n) = overrides.queue_size {
        queue_table.push_str(&format!("size = {n}\n"));
    }
    if let Some(b) = overrides.queue_max_bytes {
        queue_table.push_str(&format!("max_bytes = {b}\n"));
    }
    if !queue_table.is_empty() {
        queue_table.insert_str(0, "\n[queue]\n");
    }
    if let Some(s) = overrides.shutdown_grace_secs {
        queue_table.push_str(&format!("\n[shutdown]\ngrace_secs = {s}\n"));
    }
    let per_source = (2 * nodes).max(128);
    format!(
        "listen = {}\nworkers = {workers}\nmetrics_listen = {}\ndata_dir = {}\ndefault_target = \"sink\"\n{batch_table}{spool_table}{queue_table}\n\
         [ingest]\nmax_connections_per_source = {per_source}\n\n\
         [[targets]]\nname = \"sink\"\nurl = {}\nca_file = {}\n",
        toml_str(&listen.to_string()),
        toml_str(&metrics.to_string()),
        toml_str(&data_dir.to_string_lossy()),
        toml_str(sink_url),
        toml_str(&ca_file.to_string_lossy()),
    )
}

/// `[[clusters]]` entries that point every cluster at the simulated REST API.
pub fn enrich_config(
    core: &GenCore,
    clusters: u16,
    api: std::net::SocketAddr,
    ca_file: &Path,
) -> String {
    let mut s = String::from("\n[enrich]\nacl_cache_entries = 100000\n");
    for c in 0..clusters {
        s.push_str(&format!(
            "\n[[clusters]]\nname = {}\napi_url = {}\nusername = {}\npassword = {}\nca_file = {}\n",
            toml_str(&core.cluster_name(c)),
            toml_str(&format!("https://{api}")),
            toml_str(crate::acl::API_USER),
            toml_str(crate::acl::API_PASSWORD),
            toml_str(&ca_file.to_string_lossy()),
        ));
    }
    s
}

/// The broker's /metrics page (plain HTTP/1.0).
async fn scrape(addr: std::net::SocketAddr) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await??;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out)).await??;
    Ok(out)
}

/// One sample's value from a Prometheus page.
fn metric(text: &str, sample: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(sample)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// The sum of a metric's samples over its labels (`prefix` up to the `{`).
fn metric_sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix) && l[prefix.len()..].starts_with('{'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits until the broker has read `sent` frames, its spool has waited full
/// and its work queue holds frames: the moment restart-at-cap signals it.
async fn wait_at_cap(
    metrics: std::net::SocketAddr,
    sent: u64,
    within: Duration,
    pb: &ProgressBar,
) -> anyhow::Result<RestartReport> {
    let start = Instant::now();
    loop {
        let text = scrape(metrics).await.unwrap_or_default();
        let m = |name: &str| metric(&text, name).unwrap_or(0.0) as u64;
        let at = RestartReport {
            frames_read: metric_sum(&text, "qbroker_cluster_frames_total") as u64,
            queue_messages: m("qbroker_queue_messages"),
            queue_bytes: m("qbroker_queue_bytes"),
            spool_bytes: metric_sum(&text, "qbroker_spool_bytes") as u64,
            spool_full_waits: metric_sum(&text, "qbroker_spool_full_waits_total") as u64,
            ..RestartReport::default()
        };
        if at.frames_read >= sent && at.spool_full_waits >= 1 && at.queue_messages > 0 {
            return Ok(at);
        }
        if start.elapsed() > within {
            bail!(
                "restart-at-cap: {within:?} after the senders ended the broker had read {} of \
                 {sent} frames, its spool had waited full {} times and its work queue held {} \
                 frames; the signal wants every frame read, the spool at its cap and frames in \
                 the queue (send more, or fewer than the queue holds)",
                at.frames_read,
                at.spool_full_waits,
                at.queue_messages
            );
        }
        pb.set_message(format!(
            "sent {sent}; broker read {}, spool {} bytes ({} full waits), queue {} frames",
            num(at.frames_read),
            num(at.spool_bytes),
            at.spool_full_waits,
            num(at.queue_messages)
        ));
        pb.tick();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The last `qbroker stopped` line of a broker log, without colours.
fn stopped_line(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .rev()
        .map(strip_ansi)
        .find_map(|l| Some(l[l.find("qbroker stopped")?..].trim().to_string()))
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters, then a letter
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `name=N` of a log line.
fn stopped_field(line: &str, name: &str) -> Option<u64> {
    let key = format!("{name}=");
    let at = line
        .match_indices(&key)
        .find(|(i, _)| *i == 0 || !line[..*i].ends_with(|c: char| c.is_alphanumeric() || c == '_'))?
        .0;
    let digits: String = line[at + key.len()..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// utime + stime, in clock ticks, from /proc/<pid>/stat.
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    // the command name may hold spaces and parentheses: fields start after the last ')'
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime and stime are fields 14 and 15
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// VmHWM in bytes, from /proc/<pid>/status.
pub fn parse_vmhwm(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let mut it = line["VmHWM:".len()..].split_whitespace();
    let v: u64 = it.next()?.parse().ok()?;
    match it.next() {
        Some("kB") | None => Some(v * 1024),
        _ => None,
    }
}

/// The CPUs of a `taskset -c` list such as `0-7` or `0,2,4-5`.
pub fn parse_cpu_list(list: &str) -> anyhow::Result<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in list.split(',') {
        let part = part.trim();
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (Ok(a), Ok(b)) = (a.trim().parse::<usize>(), b.trim().parse::<usize>()) else {
            bail!("CPU list {list:?}: expected numbers and ranges such as 0-7 or 0,2,4-5");
        };
        if a > b {
            bail!("CPU list {list:?}: range {part} runs backwards");
        }
        cpus.extend(a..=b);
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

/// `Cpus_allowed_list` from /proc/<pid>/status: where the process may run.
pub fn parse_cpus_allowed(status: &str) -> Option<String> {
    let line = status
        .lines()
        .find(|l| l.starts_with("Cpus_allowed_list:"))?;
    Some(line["Cpus_allowed_list:".len()..].trim().to_string())
}

/// An executable named `name` in PATH.
fn in_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

pub(crate) fn clock_ticks_per_sec() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// CPU seconds and peak RSS of a live process.
fn sample(pid: u32, tck: u64) -> anyhow::Result<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let ticks = parse_stat_ticks(&stat).context("parsing /proc/<pid>/stat")?;
    let hwm = parse_vmhwm(&status).unwrap_or(0);
    Ok((ticks as f64 / tck as f64, hwm))
}

pub(crate) fn free_port() -> anyhow::Result<std::net::SocketAddr> {
    testkit::net::free_addr().context("finding a free port")
}

pub(crate) fn log_tail(path: &Path) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// The broker child, stopped on drop if still running.
struct Broker {
    child: Child,
    pid: u32,
    log: PathBuf,
}

impl Broker {
    /// Starts `bin run --config CONFIG`, under `TASKSET -c CPUS` when given.
    async fn start(
        bin: &Path,
        config: &Path,
        log: &Path,
        pin: Option<(&Path, &str)>,
    ) -> anyhow::Result<Broker> {
        let out =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = match pin {
            Some((taskset, list)) => {
                let mut c = Command::new(taskset);
                c.arg("-c").arg(list).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let child = cmd
            .arg("run")
            .arg("--config")
            .arg(config)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            // as deploy/qbroker.service runs it
            .env("MIMALLOC_ALLOW_THP", "0")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id().context("broker exited at once")?;
        Ok(Broker {
            child,
            pid,
            log: log.to_path_buf(),
        })
    }

    /// Waits until the syslog port accepts connections.
    async fn ready(
        &mut self,
        listen: std::net::SocketAddr,
        within: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = self.child.try_wait()? {
                bail!(
                    "qbroker exited ({st}) before listening; its log:\n{}",
                    log_tail(&self.log)
                );
            }
            let attempt = tokio::time::timeout(
                Duration::from_millis(500),
                tokio::net::TcpStream::connect(listen),
            );
            if let Ok(Ok(_)) = attempt.await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "qbroker not listening on {listen} after {within:?}; its log:\n{}",
                    log_tail(&self.log)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// [`stop`](Self::stop), sampling the broker's CPU seconds and peak RSS
    /// every 20 ms until it exits: the last sample (up to 20 ms of its
    /// shutdown's CPU short).
    async fn stop_measured(
        mut self,
        grace: Duration,
        tck: u64,
    ) -> anyhow::Result<(String, Option<(f64, u64)>)> {
        let pid = self.pid;
        let mut last = sample(pid, tck).ok();
        // an exited process's status has no VmHWM: keep the highest of each
        let take = |last: &mut Option<(f64, u64)>| {
            if let Ok((cpu, hwm)) = sample(pid, tck) {
                let (c, h) = last.unwrap_or((0.0, 0));
                *last = Some((cpu.max(c), hwm.max(h)));
            }
        };
        if let Some(st) = self.child.try_wait()? {
            return Ok((format!("had already exited ({st}) before SIGTERM"), last));
        }
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
        let deadline = Instant::now() + grace;
        loop {
            tokio::select! {
                r = self.child.wait() => return Ok((format!("{} after SIGTERM", r?), last)),
                _ = tokio::time::sleep(Duration::from_millis(20)) => {
                    take(&mut last);
                    if Instant::now() >= deadline {
                        tracing::warn!(pid, "qbroker ignored SIGTERM for {grace:?}; killing it");
                        self.child.kill().await?;
                        return Ok((format!("killed: still running {grace:?} after SIGTERM"), last));
                    }
                }
            }
        }
    }

    /// SIGTERM, then SIGKILL after `grace`; says how it ended.
    async fn stop(mut self, grace: Duration) -> anyhow::Result<String> {
        terminate(&mut self.child, self.pid, grace, "qbroker").await
    }
}

/// SIGTERM to the child `what` (process `pid`), then SIGKILL after `grace`;
/// says how it ended. For the broker and, in `--versus`, the peers.
pub(crate) async fn terminate(
    child: &mut tokio::process::Child,
    pid: u32,
    grace: Duration,
    what: &str,
) -> anyhow::Result<String> {
    if let Some(st) = child.try_wait()? {
        return Ok(format!("had already exited ({st}) before SIGTERM"));
    }
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(r) => Ok(format!("{} after SIGTERM", r?)),
        Err(_) => {
            tracing::warn!(pid, "{what} ignored SIGTERM for {grace:?}; killing it");
            child.kill().await?;
            Ok(format!("killed: still running {grace:?} after SIGTERM"))
        }
    }
}

/// Runs one scenario end to end and returns the report.
/// How often a progress line is written when stderr is not a terminal.
const PROGRESS_LINE_EVERY: Duration = Duration::from_secs(5);

pub async fn run(opts: BenchOptions) -> anyhow::Result<Report> {
    let plan = opts
        .scenario
        .plan(opts.duration)
        .with(opts.rate, opts.clusters, opts.nodes)?;
    let overrides = opts.overrides.over(plan.broker);
    let broker_bin = find_broker(opts.broker.as_deref())?;
    // (taskset, the CPUs asked for)
    let pin = match &opts.broker_cpus {
        Some(list) => {
            let cpus = parse_cpu_list(list).context("--broker-cpus")?;
            let taskset = in_path("taskset").context(
                "--broker-cpus needs taskset (util-linux), which is not in PATH; \
                 install it or leave --broker-cpus out",
            )?;
            Some((taskset, cpus))
        }
        None => None,
    };
    let pinned = pin.as_ref().map(|(_, cpus)| cpus.len());
    let workers = match (opts.workers, pinned) {
        (Some(0), _) => bail!("--workers: at least one"),
        (Some(w), _) => w,
        (None, Some(n)) => n,
        (None, None) => std::thread::available_parallelism().map_or(2, |n| n.get()),
    };
    // pid, time and a counter: two benches started in the same microsecond by
    // one process (tests run in parallel) must not share a spool directory
    static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let work = std::env::temp_dir().join(format!(
        "loadgen-bench-{}-{}-{}",
        std::process::id(),
        now_unix_us(),
        RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let data_dir = work.join("data");
    let shm_spool = if overrides.spool_in_memory {
        let shm = Path::new("/dev/shm");
        if !shm.is_dir() {
            bail!("--spool-in-memory: no /dev/shm on this machine");
        }
        Some(shm.join(work.file_name().expect("a named work directory")))
    } else {
        None
    };
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;

    let mut mix = crate::gen::Mix::default();
    if plan.acl_ppm > 0 {
        // every metadata change is then one on a namespace object, which the
        // simulated API knows
        mix.set_op_weights("fs_write_metadata=0")?;
    }
    let gen_cfg = GenConfig {
        seed: opts.seed,
        format: opts.format,
        burst: plan.burst_rate.is_some(),
        acl_ppm: plan.acl_ppm,
        mix,
        ..GenConfig::default()
    };
    let core = Arc::new(GenCore::new(gen_cfg)?);
    // the simulated clusters' REST API, serving the namespace the senders change
    let namespace = (plan.acl_ppm > 0).then(|| Arc::new(Namespace::new(core.clone())));
    let api = match &namespace {
        Some(ns) => {
            let pki =
                testkit::pki::Pki::new("loadgen api").context("generating the API certificate")?;
            std::fs::write(work.join("api-ca.pem"), &pki.ca_pem)?;
            Some(
                crate::acl::start(
                    crate::acl::ApiConfig {
                        listen: "127.0.0.1:0".parse()?,
                        token_uses: 2_000,
                        delay: plan.api_delay,
                    },
                    ns.clone(),
                    &pki,
                )
                .await?,
            )
        }
        None => None,
    };
    let verifier = Arc::new(Verifier::new(core.clone()));
    // A slow API answers after later changes were made: diffs may fold several.
    verifier.set_acl_lenient(!plan.api_delay.is_zero());
    let ca_file = work.join("sink-ca.pem");
    let sink = crate::sink::start(
        SinkConfig {
            listen: "127.0.0.1:0".parse()?,
            cert: CertSource::Generate,
            cert_out: Some(ca_file.clone()),
            faults: FaultConfig::default(),
        },
        verifier.clone(),
    )
    .await?;

    // AMQP: a RabbitMQ of the run's own; the verifier consumes its queue.
    let mut rabbit = None;
    let mut consumer = None;
    let egress = match (opts.egress, plan.rabbit) {
        (Egress::Https, Some(_)) => Egress::Amqp,
        (e, _) => e,
    };
    if egress != Egress::Https {
        let r = crate::amqp::start(&work.join("rabbitmq")).await?;
        consumer = Some(crate::amqp::consume(&r.url(), verifier.clone()).await?);
        rabbit = Some(r);
    }

    let listen = free_port()?;
    let metrics = free_port()?;
    let config = broker_config(
        listen,
        workers,
        metrics,
        &data_dir,
        &format!("https://127.0.0.1:{}/events", sink.addr.port()),
        &ca_file,
        &overrides,
        usize::from(plan.clusters) * usize::from(plan.nodes),
        shm_spool.as_deref(),
    );
    let mut config = config;
    if let Some(r) = &rabbit {
        let password_file = work.join("rabbit.password");
        std::fs::write(&password_file, crate::amqp::PASSWORD)?;
        let message = if egress == Egress::AmqpEvent {
            "event"
        } else {
            "batch"
        };
        let head = config
            .split("[[targets]]")
            .next()
            .unwrap_or_default()
            .to_string();
        config = format!(
            "{head}[[targets]]\nname = \"sink\"\n{}",
            crate::amqp::target_config(r, &password_file, message)
        );
    }
    if let Some(api) = &api {
        // One request at a time: the sink then sees batches in spool order, in
        // which each file's events are (it checks each object's versions in order).
        config.push_str("in_flight = 1\n");
        config.push_str(&enrich_config(
            &core,
            plan.clusters,
            api.addr,
            &work.join("api-ca.pem"),
        ));
    }
    let config_path = work.join("qbroker.toml");
    std::fs::write(&config_path, &config)?;
    let pin_arg = pin
        .as_ref()
        .zip(opts.broker_cpus.as_deref())
        .map(|((taskset, _), list)| (taskset.as_path(), list));
    let mut broker = Broker::start(
        &broker_bin,
        &config_path,
        &work.join("qbroker.log"),
        pin_arg,
    )
    .await?;
    broker.ready(listen, Duration::from_secs(20)).await?;
    let broker_cpus = std::fs::read_to_string(format!("/proc/{}/status", broker.pid))
        .ok()
        .as_deref()
        .and_then(parse_cpus_allowed)
        .unwrap_or_else(|| "?".to_string());
    if let Some((_, want)) = &pin {
        // the kernel drops CPUs that do not exist from the mask without a word
        if parse_cpu_list(&broker_cpus).ok().as_ref() != Some(want) {
            bail!(
                "--broker-cpus {}: the broker may run on CPUs {broker_cpus} instead \
                 (this machine has {} CPUs)",
                opts.broker_cpus.as_deref().unwrap_or_default(),
                std::thread::available_parallelism().map_or(0, |n| n.get())
            );
        }
    }
    let tck = clock_ticks_per_sec();
    let (mut cpu0, _) = sample(broker.pid, tck)?;

    // senders
    let send_cfg = SendConfig {
        target: listen.to_string(),
        clusters: plan.clusters,
        nodes: plan.nodes,
        rate: plan.rate,
        burst_rate: plan.burst_rate,
        duration: Some(plan.duration),
        events: None,
        framing: opts.framing,
        namespace: namespace.clone(),
        ..SendConfig::default()
    };
    let stats = Arc::new(SendStats::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let send_start = Instant::now();
    if plan.restart_at_cap {
        // 503 from the start, until the broker was started again
        sink.faults.outage(Duration::from_secs(86_400));
    }
    let senders = tokio::spawn(crate::send::run(
        send_cfg,
        core.clone(),
        stats.clone(),
        stop_rx,
    ));
    if let Some(w) = plan.outage {
        let faults = sink.faults.clone();
        tokio::spawn(async move {
            tokio::time::sleep(w.start).await;
            faults.outage(w.len);
        });
    }
    // The RabbitMQ fault runs beside the senders: the node is killed and
    // started again, or the alarm set and cleared, within the window.
    let rabbit_fault = match (plan.rabbit, rabbit.take()) {
        (Some((fault, w)), Some(mut r)) => Some(tokio::spawn(async move {
            tokio::time::sleep(w.start).await;
            let on = match fault {
                RabbitFault::Restart => {
                    r.kill();
                    Ok(())
                }
                RabbitFault::Blocked => r
                    .ctl(&["set_vm_memory_high_watermark", "0"])
                    .map(drop)
                    .map_err(anyhow::Error::from),
            };
            tokio::time::sleep(w.len).await;
            let off = match fault {
                RabbitFault::Restart => r.launch().await.map_err(anyhow::Error::from),
                RabbitFault::Blocked => r
                    .ctl(&["set_vm_memory_high_watermark", "0.4"])
                    .map(drop)
                    .map_err(anyhow::Error::from),
            };
            (r, on.and(off))
        })),
        (_, r) => {
            rabbit = r;
            None
        }
    };

    let pb = if opts.progress {
        let pb = ProgressBar::with_draw_target(
            Some(plan.duration.as_millis() as u64),
            ProgressDrawTarget::stderr(),
        );
        pb.set_style(
            ProgressStyle::with_template("{spinner} {elapsed:>4} [{bar:20}] {wide_msg}")
                .expect("template")
                .progress_chars("=> "),
        );
        pb
    } else {
        ProgressBar::hidden()
    };
    let progress = |sending: bool| {
        let sent = stats.events.load(Ordering::Relaxed);
        let secs = send_start.elapsed().as_secs_f64().max(1e-3);
        let phase = if sending {
            format!(
                "sent {} frames ({}/s)",
                num(sent),
                num((sent as f64 / secs) as u64)
            )
        } else {
            format!("draining; sent {} frames", num(sent))
        };
        let outage = if sink.faults.in_outage() {
            ", sink answering 503"
        } else {
            ""
        };
        format!(
            "{phase}, delivered {} of {} events{outage}",
            num(verifier.delivered()),
            num(stats.expected.load(Ordering::Relaxed)),
        )
    };
    // Not a terminal (a CI log, a pipe): a plain line every few seconds
    // instead of the bar, which would draw nothing.
    let log_lines = opts.progress && !std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut last_line = Instant::now();
    let mut log_line = |message: String| {
        if log_lines && last_line.elapsed() >= PROGRESS_LINE_EVERY {
            last_line = Instant::now();
            eprintln!(
                "loadgen: {:>5.1} s  {message}",
                send_start.elapsed().as_secs_f64()
            );
        }
    };
    let send_limit = plan.duration + Duration::from_secs(90);
    let mut senders = senders;
    let send = loop {
        tokio::select! {
            r = &mut senders => break r.context("sender task")??,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                pb.set_position(send_start.elapsed().as_millis() as u64);
                pb.set_message(progress(true));
                log_line(progress(true));
                if send_start.elapsed() > send_limit {
                    let _ = stop_tx.send(true);
                }
            }
        }
    };
    let send_s = send_start.elapsed().as_secs_f64();

    // restart-at-cap: SIGTERM once the broker has read every frame sent (what
    // it has not read, TCP would lose), its spool is at its cap and frames
    // wait in its work queue; start it again on the same data directory; end
    // the outage. CPU and peak RSS are those of both processes, added up.
    let mut restart = None;
    // (CPU seconds, peak RSS) of the stopped broker
    let mut stopped_usage = (0.0, 0);
    let mut first_exit = None;
    if plan.restart_at_cap {
        let mut at = wait_at_cap(metrics, send.events, Duration::from_secs(60), &pb).await?;
        pb.set_message("SIGTERM at the spool cap; waiting for the broker to stop");
        let grace = Duration::from_secs(overrides.shutdown_grace_secs.unwrap_or(30) + 20);
        let stop_start = Instant::now();
        let (exit, usage) = broker.stop_measured(grace, tck).await?;
        at.stop_s = stop_start.elapsed().as_secs_f64();
        let (cpu, hwm) = usage.unwrap_or((cpu0, 0));
        stopped_usage = (cpu - cpu0, hwm);
        first_exit = Some(exit);
        at.stopped = stopped_line(&work.join("qbroker.log")).unwrap_or_default();
        pb.set_message("starting the broker again");
        let restart_start = Instant::now();
        broker = Broker::start(
            &broker_bin,
            &config_path,
            &work.join("qbroker.restarted.log"),
            pin_arg,
        )
        .await?;
        broker.ready(listen, Duration::from_secs(20)).await?;
        at.restart_s = restart_start.elapsed().as_secs_f64();
        // the restarted broker's CPU counts from its start (opening the spool)
        cpu0 = 0.0;
        sink.faults.end_outages();
        restart = Some(at);
    }

    // drain: until everything expected arrived, or progress stops
    if let Some(f) = rabbit_fault {
        let (r, result) = f.await?;
        result.context("the RabbitMQ fault")?;
        rabbit = Some(r);
    }
    let drain_start = Instant::now();
    let totals = send.totals();
    let mut last = verifier.delivered() + verifier.acl_records();
    // when the delivered count last grew (it may have stopped before now)
    let mut last_delivery = (last > 0).then(Instant::now);
    let drain_timeout = match (plan.outage, plan.rabbit) {
        (Some(w), _) | (None, Some((_, w))) => opts.drain_timeout.max(w.len),
        (None, None) => opts.drain_timeout,
    };
    loop {
        let d = verifier.delivered() + verifier.acl_records();
        if d != last {
            last = d;
            last_delivery = Some(Instant::now());
        }
        if d >= send.expected + send.acl() {
            break;
        }
        let quiet_since = last_delivery.map_or(drain_start, |t| t.max(drain_start));
        if quiet_since.elapsed() > drain_timeout {
            break;
        }
        pb.set_message(progress(false));
        log_line(progress(false));
        pb.tick();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // nothing delivered: no throughput to speak of
    let through_s = last_delivery.map_or(0.0, |t| (t - send_start).as_secs_f64());
    let drain_s = drain_start.elapsed().as_secs_f64();
    let (cpu1, hwm) = sample(broker.pid, tck).unwrap_or((cpu0, 0));
    let broker_metrics = if api.is_some() {
        scrape(metrics).await.unwrap_or_default()
    } else {
        String::new()
    };
    pb.finish_and_clear();
    let mut broker_exit = broker.stop(Duration::from_secs(20)).await?;
    if let Some(first) = &first_exit {
        broker_exit = format!("first {first}; restarted, then {broker_exit}");
    }

    verifier.set_acl_totals(send.acl_totals());
    let summary = verifier.summary(Some(&totals));
    if let Some(api) = api {
        api.stop().await;
    }
    let responses = sink.counters.snapshot();
    sink.stop().await;
    if let Some(c) = consumer {
        c.abort();
    }
    if let Some(mut r) = rabbit {
        tokio::task::spawn_blocking(move || r.stop()).await?;
    }
    let setup = Setup {
        scenario: opts.scenario.name().to_string(),
        egress: egress.name().to_string(),
        clusters: plan.clusters,
        nodes_per_cluster: plan.nodes,
        format: opts.format,
        framing: opts.framing,
        seed: opts.seed,
        rate: plan.rate,
        broker: broker_bin.display().to_string(),
        broker_workers: workers,
        broker_cpus,
        broker_pinned: opts.broker_cpus.is_some(),
        broker_overrides: overrides,
        broker_exit,
        broker_restarts: u32::from(restart.is_some()),
    };
    let mut report = Report::assemble(
        setup,
        &send,
        &summary,
        responses,
        BrokerUsage {
            cpu_s: stopped_usage.0 + (cpu1 - cpu0),
            peak_rss_bytes: stopped_usage.1 + hwm,
        },
        Timing {
            send_s,
            drain_s,
            through_s,
        },
    );
    if let Some(at) = restart {
        match stopped_field(&at.stopped, "lost_events") {
            Some(0) => {}
            Some(n) => report.fail(format!(
                "the broker stopped at its spool cap lost {n} events: {}",
                at.stopped
            )),
            None => report.fail(format!(
                "the broker stopped at its spool cap logged no `qbroker stopped ... lost_events=N` line (last: {:?})",
                at.stopped
            )),
        }
        if let Some(first) = first_exit.filter(|e| !e.contains("exit status: 0")) {
            report.fail(format!("the broker stopped at its spool cap: {first}"));
        }
        report.restart = Some(at);
    }
    if plan.acl_ppm > 0 {
        let m = |name: &str| metric(&broker_metrics, name).unwrap_or(0.0) as u64;
        let (hits, misses) = (
            m("qbroker_enrich_cache_hits_total"),
            m("qbroker_enrich_cache_misses_total"),
        );
        let jobs = m("qbroker_enrich_jobs_total");
        let errors: u64 = broker_metrics
            .lines()
            .filter(|l| l.starts_with("qbroker_enrich_errors_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .map(|v| v as u64)
            .sum();
        report.enrich = Some(EnrichReport {
            sent: send.acl(),
            share_pct: send.acl() as f64 * 100.0 / send.events.max(1) as f64,
            records: summary.acl_records,
            exact: summary.acl_exact,
            first: summary.acl_first,
            fallbacks: summary.acl_fallbacks,
            unverified: summary.acl_unverified,
            lost: summary.acl_lost,
            jobs,
            jobs_per_sec: if through_s > 0.0 {
                jobs as f64 / through_s
            } else {
                0.0
            },
            cache_hits: hits,
            cache_misses: misses,
            cache_hit_rate: hits as f64 / (hits + misses).max(1) as f64,
            api_errors: errors,
            logins: m("qbroker_enrich_logins_total"),
            token_renewals: m("qbroker_enrich_token_renewals_total"),
            api_delay_ms: plan.api_delay.as_millis() as u64,
        });
    }
    if let Some(dir) = &shm_spool {
        // memory, not disk: never left behind
        let _ = std::fs::remove_dir_all(dir);
    }
    if report.ok && !opts.keep_dir {
        let _ = std::fs::remove_dir_all(&work);
    } else {
        eprintln!(
            "bench work directory (config, broker log, spool): {}",
            work.display()
        );
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_parsing() {
        let stat = "4242 (q broker) (x)) S 1 4242 4242 0 -1 4194560 1234 0 0 0 150 25 0 0 20 0 9 0 123 456789 1000 18446744073709551615";
        assert_eq!(parse_stat_ticks(stat), Some(175));
        assert_eq!(parse_stat_ticks("garbage"), None);
        let status =
            "Name:\tqbroker\nVmPeak:\t  200000 kB\nVmHWM:\t   51200 kB\nVmRSS:\t 40000 kB\n";
        assert_eq!(parse_vmhwm(status), Some(51200 * 1024));
        assert_eq!(parse_vmhwm("Name: x\n"), None);
        // this process, for real
        let (cpu, hwm) = sample(std::process::id(), clock_ticks_per_sec()).unwrap();
        assert!(cpu >= 0.0 && hwm > 0);
    }

    #[test]
    fn scenarios() {
        let s = Scenario::Steady.plan(None);
        assert_eq!(
            (s.clusters, s.nodes, s.duration),
            (2, 3, Duration::from_secs(10))
        );
        assert_eq!(Scenario::Max.plan(None).rate, None);
        let m = Scenario::ManyClusters.plan(None);
        assert_eq!((m.clusters, m.nodes), (50, 4));
        assert!(Scenario::Burst.plan(None).burst_rate.is_some());
        let o = Scenario::Outage.plan(None).outage.unwrap();
        assert_eq!(
            (o.start, o.len),
            (Duration::from_secs(15), Duration::from_secs(30))
        );
        let r = Scenario::RestartAtCap.plan(None);
        assert!(r.restart_at_cap && r.outage.is_none());
        assert_eq!(
            (r.clusters, r.nodes, r.rate, r.duration),
            (2, 2, Some(5_000.0), Duration::from_secs(8))
        );
        assert!(!Scenario::Steady.plan(None).restart_at_cap);
        let o = Scenario::Outage
            .plan(Some(Duration::from_secs(20)))
            .outage
            .unwrap();
        assert_eq!(
            (o.start, o.len),
            (Duration::from_secs(5), Duration::from_secs(10))
        );
    }

    #[test]
    fn overrides() {
        let p = Scenario::Max
            .plan(None)
            .with(Some(100_000.0), Some(5), Some(2))
            .unwrap();
        assert_eq!((p.rate, p.clusters, p.nodes), (Some(100_000.0), 5, 2));
        let b = Scenario::Burst
            .plan(None)
            .with(Some(1000.0), None, None)
            .unwrap();
        assert_eq!((b.rate, b.burst_rate), (Some(1000.0), Some(15_000.0)));
        assert_eq!(
            Scenario::Steady.plan(None).with(None, None, None).unwrap(),
            Scenario::Steady.plan(None)
        );
        assert!(Scenario::Steady
            .plan(None)
            .with(Some(0.0), None, None)
            .is_err());
        assert!(Scenario::Steady
            .plan(None)
            .with(None, Some(0), None)
            .is_err());
        assert!(Scenario::Steady
            .plan(None)
            .with(None, None, Some(0))
            .is_err());
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-7").unwrap(), (0..8).collect::<Vec<_>>());
        assert_eq!(parse_cpu_list("0,2,4-5").unwrap(), vec![0, 2, 4, 5]);
        assert_eq!(parse_cpu_list("3").unwrap(), vec![3]);
        assert_eq!(parse_cpu_list("1-2,2-3").unwrap(), vec![1, 2, 3]);
        for bad in ["", "a", "7-0", "0-", "0,,1"] {
            assert!(parse_cpu_list(bad).is_err(), "{bad:?}");
        }
        let status = "Name:\tqbroker\nCpus_allowed:\tff\nCpus_allowed_list:\t0-7\n";
        assert_eq!(parse_cpus_allowed(status).as_deref(), Some("0-7"));
        let me = std::fs::read_to_string("/proc/self/status").unwrap();
        assert!(parse_cpus_allowed(&me).is_some_and(|l| !l.is_empty()));
    }

    #[test]
    fn config_is_toml_with_the_documented_fields() {
        let c = broker_config(
            "127.0.0.1:5514".parse().unwrap(),
            2,
            "127.0.0.1:9100".parse().unwrap(),
            Path::new("/tmp/a \"b\"/data"),
            "https://127.0.0.1:8443/events",
            Path::new("/tmp/ca.pem"),
            &BrokerOverrides::default(),
            6,
            None,
        );
        let v: toml::Value = toml::from_str(&c).unwrap();
        assert_eq!(
            v["ingest"]["max_connections_per_source"].as_integer(),
            Some(128)
        );
        assert_eq!(v["listen"].as_str(), Some("127.0.0.1:5514"));
        assert_eq!(v["workers"].as_integer(), Some(2));
        assert_eq!(v["data_dir"].as_str(), Some("/tmp/a \"b\"/data"));
        assert_eq!(v["default_target"].as_str(), Some("sink"));
        let t = &v["targets"][0];
        assert_eq!(t["name"].as_str(), Some("sink"));
        assert_eq!(t["url"].as_str(), Some("https://127.0.0.1:8443/events"));
        assert_eq!(t["ca_file"].as_str(), Some("/tmp/ca.pem"));
        assert!(v.get("batch").is_none());
        let c = broker_config(
            "127.0.0.1:5514".parse().unwrap(),
            2,
            "127.0.0.1:9100".parse().unwrap(),
            Path::new("/tmp/data"),
            "https://127.0.0.1:8443/events",
            Path::new("/tmp/ca.pem"),
            &BrokerOverrides {
                max_events: Some(500),
                max_age_ms: Some(25),
                spool_fsync: Some(SpoolFsync::Always),
                spool_in_memory: true,
                ..BrokerOverrides::default()
            },
            200,
            Some(Path::new("/dev/shm/x")),
        );
        let v: toml::Value = toml::from_str(&c).unwrap();
        assert_eq!(v["spool"]["fsync"].as_str(), Some("always"));
        assert_eq!(v["spool"]["dir"].as_str(), Some("/dev/shm/x"));
        assert_eq!(
            v["ingest"]["max_connections_per_source"].as_integer(),
            Some(400)
        );
        assert_eq!(v["batch"]["max_events"].as_integer(), Some(500));
        assert_eq!(v["batch"]["max_age_ms"].as_integer(), Some(25));
        assert_eq!(v["targets"][0]["name"].as_str(), Some("sink"));
        assert!(v.get("queue").is_none() && v.get("shutdown").is_none());
        // restart-at-cap's settings, under the command line's
        let o = BrokerOverrides {
            max_events: Some(500),
            ..BrokerOverrides::default()
        }
        .over(Scenario::RestartAtCap.plan(None).broker);
        assert_eq!(o.max_events, Some(500));
        let c = broker_config(
            "127.0.0.1:5514".parse().unwrap(),
            2,
            "127.0.0.1:9100".parse().unwrap(),
            Path::new("/tmp/data"),
            "https://127.0.0.1:8443/events",
            Path::new("/tmp/ca.pem"),
            &o,
            4,
            None,
        );
        let v: toml::Value = toml::from_str(&c).unwrap();
        assert_eq!(v["batch"]["max_events"].as_integer(), Some(500));
        assert_eq!(v["batch"]["max_bytes"].as_integer(), Some(256 << 10));
        assert_eq!(v["spool"]["max_bytes"].as_integer(), Some(2 << 20));
        assert_eq!(v["spool"]["segment_bytes"].as_integer(), Some(256 << 10));
        assert_eq!(v["queue"]["size"].as_integer(), Some(200_000));
        assert_eq!(v["queue"]["max_bytes"].as_integer(), Some(256 << 20));
        assert_eq!(v["shutdown"]["grace_secs"].as_integer(), Some(10));
        assert_eq!(v["targets"][0]["name"].as_str(), Some("sink"));
    }

    #[test]
    fn stopped_lines() {
        let line = "\u{1b}[2m2026-12-02T09:00:00Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m qbroker: \
                    qbroker stopped \u{1b}[3mdelivered_everything\u{1b}[0m\u{1b}[2m=\u{1b}[0mfalse \
                    spooled_batches=17 lost_events=0";
        let plain = strip_ansi(line);
        assert!(plain.contains("delivered_everything=false"), "{plain}");
        assert_eq!(stopped_field(&plain, "lost_events"), Some(0));
        assert_eq!(stopped_field(&plain, "spooled_batches"), Some(17));
        assert_eq!(stopped_field("x lost_events=12", "lost_events"), Some(12));
        assert_eq!(stopped_field("x not_lost_events=1", "lost_events"), None);
        assert_eq!(stopped_field("x", "lost_events"), None);
        let dir = std::env::temp_dir().join(format!("loadgen-stopped-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("qbroker.log");
        std::fs::write(&log, format!("qbroker running\n{line}\ncluster totals\n")).unwrap();
        assert_eq!(
            stopped_line(&log).as_deref(),
            Some("qbroker stopped delivered_everything=false spooled_batches=17 lost_events=0")
        );
        let _ = std::fs::remove_dir_all(&dir);
        let text = "# HELP qbroker_cluster_frames_total x\nqbroker_cluster_frames_total{cluster=\"a\"} 3\n\
                    qbroker_cluster_frames_total{cluster=\"b\"} 4\nqbroker_cluster_frames_totalx{a=\"\"} 9\n";
        assert_eq!(metric_sum(text, "qbroker_cluster_frames_total"), 7.0);
    }

    #[test]
    fn missing_broker_says_how_to_build_it() {
        let e = find_broker(Some(Path::new("/nonexistent/qbroker"))).unwrap_err();
        assert!(
            e.to_string().contains("cargo build --release --workspace"),
            "{e}"
        );
    }
}
