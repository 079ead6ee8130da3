//! versus: `bench --versus rsyslog,syslog-ng`. qbroker and each peer, one
//! after the other, on the same scenario, rate and length, with the same
//! senders and the same verifying sink, in interleaved rounds; medians per
//! pipeline and the peers' ratios to qbroker.
//!
//! qbroker runs exactly as in `bench` ([`crate::bench::run`]). A peer run
//! mirrors it: a fresh sink, the peer as a private child process (its own
//! configuration, state and pid files under a temporary directory, a
//! loopback port), CPU and peak RSS of the peer and its children (rsyslog's
//! omprog relays) from /proc, sampled when the senders start and when the
//! drain ends; the sink counts each delivered record by its `file_id`
//! against what the senders wrote (loss, duplicates) and checks its
//! operation, status and path.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use tokio::process::{Child, Command};
use tokio::sync::watch;

use crate::bench::{BenchOptions, Egress, Scenario};
use crate::gen::{now_unix_us, Format, GenConfig, GenCore};
use crate::peer::{Peer, PeerBin, PeerSettings};
use crate::report::{num, BrokerUsage, Report, Setup, Timing};
use crate::send::{SendConfig, SendStats};
use crate::sink::{CertSource, FaultConfig, SinkConfig};
use crate::verify::Verifier;

#[derive(Clone, Debug)]
pub struct VersusOptions {
    /// the scenario, rate, length and qbroker settings (as `bench`)
    pub bench: BenchOptions,
    /// the peers, in the order they run in each round
    pub peers: Vec<Peer>,
    pub rounds: u32,
    /// a peer's executable, where not found by itself
    pub peer_bins: HashMap<Peer, PathBuf>,
    /// the loadgen executable, for rsyslog's omprog relay (`loadgen relay`)
    pub relay_exe: PathBuf,
    pub settings: PeerSettings,
}

/// One pipeline's medians over the rounds.
#[derive(Clone, Debug, Serialize)]
pub struct Pipeline {
    /// `qbroker`, `rsyslog`, `syslog-ng`
    pub name: String,
    /// its version (`--version`'s first line) and binary
    pub version: String,
    pub binary: String,
    /// what runs, in a few words
    pub pipeline: String,
    pub rounds: u32,
    /// events the senders wrote per second, send start to last delivery
    pub input_msgs_per_s: f64,
    /// events the sink accepted per second over the same time
    pub delivered_per_s: f64,
    /// daemon CPU (children included) per input message, microseconds
    pub cpu_us_per_input_msg: f64,
    /// per delivered event
    pub cpu_us_per_delivered: f64,
    /// peak RSS (VmHWM; a peer's children added)
    pub peak_rss_bytes: u64,
    /// over all rounds
    pub sent: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
    /// records that were malformed, foreign, wrongly kept or altered
    pub bad_records: u64,
    /// this pipeline's CPU per input message / qbroker's
    pub cpu_ratio_to_qbroker: Option<f64>,
    /// this pipeline's input msgs/s / qbroker's
    pub throughput_ratio_to_qbroker: Option<f64>,
    /// every round passed the sink's checks
    pub ok: bool,
}

/// One run of one pipeline.
#[derive(Clone, Debug, Serialize)]
pub struct Run {
    pub pipeline: String,
    pub round: u32,
    pub report: Report,
}

#[derive(Clone, Debug, Serialize)]
pub struct VersusReport {
    pub scenario: String,
    pub clusters: u16,
    pub nodes_per_cluster: u16,
    /// events/s over all nodes (None: flat out)
    pub rate: Option<f64>,
    pub duration_s: f64,
    pub rounds: u32,
    pub cpus: usize,
    /// /proc/loadavg before the first run and after the last
    pub loadavg_before: String,
    pub loadavg_after: String,
    pub settings: PeerSettings,
    pub pipelines: Vec<Pipeline>,
    pub runs: Vec<Run>,
    /// qbroker passed every round and each peer delivered something
    pub ok: bool,
    pub failures: Vec<String>,
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// Runs every pipeline `rounds` times, interleaved, and reports.
pub async fn run(opts: VersusOptions) -> anyhow::Result<VersusReport> {
    let b = &opts.bench;
    match b.scenario {
        Scenario::Steady | Scenario::Max | Scenario::ManyClusters | Scenario::Burst => {}
        s => bail!(
            "--versus runs the scenarios steady, max, many-clusters and burst, not {}",
            s.name()
        ),
    }
    if b.egress != Egress::Https {
        bail!("--versus compares HTTPS egress only (the peers post batches over TLS)");
    }
    if b.format != Format::Json {
        bail!("--versus needs --format json: the peers' filters parse the audit JSON");
    }
    if opts.rounds == 0 {
        bail!("--rounds: at least one");
    }
    let mut seen = std::collections::HashSet::new();
    let mut peers = opts.peers.clone();
    peers.retain(|p| seen.insert(*p));
    if peers.is_empty() {
        bail!("--versus: name rsyslog or syslog-ng");
    }
    // find every binary before the first run
    let broker_bin = crate::bench::find_broker(b.broker.as_deref())?;
    let mut bins = Vec::new();
    for p in &peers {
        bins.push(crate::peer::find(
            *p,
            opts.peer_bins.get(p).map(PathBuf::as_path),
        )?);
    }
    if peers.contains(&Peer::Rsyslog) && !opts.relay_exe.is_file() {
        bail!(
            "the relay rsyslog's omprog runs ({}) is not a file",
            opts.relay_exe.display()
        );
    }
    let plan = b
        .scenario
        .plan(b.duration)
        .with(b.rate, b.clusters, b.nodes)?;
    let mut settings = opts.settings.clone();
    settings.max_connections = settings
        .max_connections
        .max(2 * usize::from(plan.clusters) * usize::from(plan.nodes));
    let loadavg_before = loadavg();
    let mut runs = Vec::new();
    let total = opts.rounds as usize * (1 + bins.len());
    for round in 1..=opts.rounds {
        eprintln!(
            "loadgen: round {round}/{}: qbroker (run {} of {total})",
            opts.rounds,
            runs.len() + 1
        );
        let report = crate::bench::run(BenchOptions {
            broker: Some(broker_bin.clone()),
            keep_dir: b.keep_dir,
            ..b.clone()
        })
        .await
        .context("qbroker's run")?;
        eprintln!("{}", one_line("qbroker", &report));
        runs.push(Run {
            pipeline: "qbroker".into(),
            round,
            report,
        });
        for pb in &bins {
            eprintln!(
                "loadgen: round {round}/{}: {} (run {} of {total})",
                opts.rounds,
                pb.peer.name(),
                runs.len() + 1
            );
            let report = run_peer(b, pb, &opts.relay_exe, &settings)
                .await
                .with_context(|| format!("{}'s run", pb.peer.name()))?;
            eprintln!("{}", one_line(pb.peer.name(), &report));
            runs.push(Run {
                pipeline: pb.peer.name().into(),
                round,
                report,
            });
        }
    }
    let qbroker_version = std::process::Command::new(&broker_bin)
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let mut pipelines = vec![summarize(
        "qbroker",
        &qbroker_version,
        &broker_bin.display().to_string(),
        "tcp -> its default filter -> batched HTTPS, durable spool",
        &runs,
    )];
    for pb in &bins {
        pipelines.push(summarize(
            pb.peer.name(),
            &pb.version,
            &pb.bin.display().to_string(),
            pb.peer.pipeline(),
            &runs,
        ));
    }
    let (q_cpu, q_rate) = (
        pipelines[0].cpu_us_per_input_msg,
        pipelines[0].input_msgs_per_s,
    );
    for p in pipelines.iter_mut().skip(1) {
        p.cpu_ratio_to_qbroker = (q_cpu > 0.0).then(|| p.cpu_us_per_input_msg / q_cpu);
        p.throughput_ratio_to_qbroker = (q_rate > 0.0).then(|| p.input_msgs_per_s / q_rate);
    }
    pipelines[0].cpu_ratio_to_qbroker = Some(1.0);
    pipelines[0].throughput_ratio_to_qbroker = Some(1.0);
    let mut failures = Vec::new();
    for r in &runs {
        if r.pipeline == "qbroker" && !r.report.ok {
            failures.push(format!(
                "qbroker, round {}: {}",
                r.round,
                r.report.failures.join("; ")
            ));
        }
        if r.report.delivered == 0 {
            failures.push(format!(
                "{}, round {}: nothing delivered",
                r.pipeline, r.round
            ));
        }
    }
    Ok(VersusReport {
        scenario: b.scenario.name().to_string(),
        clusters: plan.clusters,
        nodes_per_cluster: plan.nodes,
        rate: plan.rate,
        duration_s: plan.duration.as_secs_f64(),
        rounds: opts.rounds,
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg_before,
        loadavg_after: loadavg(),
        settings,
        pipelines,
        runs,
        ok: failures.is_empty(),
        failures,
    })
}

fn one_line(name: &str, r: &Report) -> String {
    format!(
        "loadgen:   {name}: sent {} ({}/s), delivered {} of {}, lost {}, CPU {:.2} us per input msg, peak RSS {:.1} MiB{}",
        num(r.sent),
        num(r.events_per_sec as u64),
        num(r.delivered),
        num(r.sent_expected),
        num(r.lost),
        r.broker_cpu_us_per_event,
        r.broker_peak_rss_bytes as f64 / (1 << 20) as f64,
        if r.ok { "" } else { " -- checks failed" }
    )
}

fn summarize(name: &str, version: &str, binary: &str, pipeline: &str, runs: &[Run]) -> Pipeline {
    let mine: Vec<&Report> = runs
        .iter()
        .filter(|r| r.pipeline == name)
        .map(|r| &r.report)
        .collect();
    let med = |f: fn(&Report) -> f64| median(mine.iter().map(|r| f(r)).collect());
    let sum = |f: fn(&Report) -> u64| mine.iter().map(|r| f(r)).sum::<u64>();
    Pipeline {
        name: name.to_string(),
        version: version.to_string(),
        binary: binary.to_string(),
        pipeline: pipeline.to_string(),
        rounds: mine.len() as u32,
        input_msgs_per_s: med(|r| r.events_per_sec),
        delivered_per_s: med(|r| r.delivered_per_sec),
        cpu_us_per_input_msg: med(|r| r.broker_cpu_us_per_event),
        cpu_us_per_delivered: med(|r| r.broker_cpu_us_per_delivered_event),
        peak_rss_bytes: med(|r| r.broker_peak_rss_bytes as f64) as u64,
        sent: sum(|r| r.sent),
        delivered: sum(|r| r.delivered),
        lost: sum(|r| r.lost),
        duplicated: sum(|r| r.duplicated),
        bad_records: sum(|r| r.schema_errors + r.foreign + r.unexpected + r.mismatches),
        cpu_ratio_to_qbroker: None,
        throughput_ratio_to_qbroker: None,
        ok: mine.iter().all(|r| r.ok),
    }
}

impl VersusReport {
    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        let mut s = serde_json::to_string_pretty(self)?;
        s.push('\n');
        std::fs::write(path, s).with_context(|| format!("writing {}", path.display()))
    }

    /// The table (Markdown) and a line per run.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let rate = self
            .rate
            .map_or("flat out".to_string(), |r| format!("{}/s", num(r as u64)));
        let _ = writeln!(
            o,
            "loadgen bench --versus: scenario {}, {} clusters x {} nodes, {rate}, {:.0} s per run, \
             {} interleaved rounds (medians), {} CPUs, load {} before, {} after -- {}",
            self.scenario,
            self.clusters,
            self.nodes_per_cluster,
            self.duration_s,
            self.rounds,
            self.cpus,
            self.loadavg_before,
            self.loadavg_after,
            if self.ok { "PASS" } else { "FAIL" }
        );
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "| pipeline | input msgs/s | delivered/s | CPU µs per input msg | CPU vs qbroker | throughput vs qbroker | peak RSS | lost | bad records |"
        );
        let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for p in &self.pipelines {
            let ratio = |r: Option<f64>| r.map_or("-".to_string(), |r| format!("{r:.2}x"));
            let _ = writeln!(
                o,
                "| {} ({}) | {} | {} | {:.2} | {} | {} | {:.0} MiB | {} | {} |",
                p.name,
                p.version,
                num(p.input_msgs_per_s as u64),
                num(p.delivered_per_s as u64),
                p.cpu_us_per_input_msg,
                ratio(p.cpu_ratio_to_qbroker),
                ratio(p.throughput_ratio_to_qbroker),
                p.peak_rss_bytes as f64 / (1 << 20) as f64,
                num(p.lost),
                num(p.bad_records),
            );
        }
        let _ = writeln!(o);
        for p in &self.pipelines {
            let _ = writeln!(o, "  {:<10} {} ({})", p.name, p.pipeline, p.binary);
        }
        let s = &self.settings;
        let _ = writeln!(
            o,
            "  peers batch {} events / {} ms / {} bytes (qbroker's); syslog-ng http() workers {}; \
             rsyslog queue LinkedList {} x {} workers, min {} msgs per worker",
            s.batch_lines,
            s.batch_timeout_ms,
            num(s.batch_bytes),
            s.http_workers,
            num(s.rs_queue_size),
            s.rs_queue_workers,
            num(s.rs_queue_min_msgs)
        );
        for r in &self.runs {
            let _ = writeln!(
                o,
                "  round {} {:<10} sent {} ({}/s), delivered {}, lost {}, dup {}, CPU {:.2} s = {:.2} us/msg, {:.2} us/delivered, RSS {:.1} MiB, drain {:.1} s{}",
                r.round,
                r.pipeline,
                num(r.report.sent),
                num(r.report.events_per_sec as u64),
                num(r.report.delivered),
                num(r.report.lost),
                num(r.report.duplicated),
                r.report.broker_cpu_s,
                r.report.broker_cpu_us_per_event,
                r.report.broker_cpu_us_per_delivered_event,
                r.report.broker_peak_rss_bytes as f64 / (1 << 20) as f64,
                r.report.drain_s,
                if r.report.ok {
                    String::new()
                } else {
                    format!(" -- {}", r.report.failures.join("; "))
                }
            );
        }
        for f in &self.failures {
            let _ = writeln!(o, "  FAIL {f}");
        }
        o
    }
}

/// The peer daemon, stopped on drop if still running.
struct Daemon {
    child: Child,
    pid: u32,
    log: PathBuf,
}

impl Daemon {
    async fn ready(&mut self, listen: std::net::SocketAddr, name: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = self.child.try_wait()? {
                bail!(
                    "{name} exited ({st}) before listening; its log:\n{}",
                    crate::bench::log_tail(&self.log)
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
                    "{name} not listening on {listen} after 20 s; its log:\n{}",
                    crate::bench::log_tail(&self.log)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn stop(mut self, grace: Duration) -> anyhow::Result<String> {
        crate::bench::terminate(&mut self.child, self.pid, grace, "the peer").await
    }
}

/// One run of a peer: as `bench` runs qbroker.
pub async fn run_peer(
    opts: &BenchOptions,
    pb: &PeerBin,
    relay_exe: &Path,
    settings: &PeerSettings,
) -> anyhow::Result<Report> {
    let plan = opts
        .scenario
        .plan(opts.duration)
        .with(opts.rate, opts.clusters, opts.nodes)?;
    static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let work = std::env::temp_dir().join(format!(
        "loadgen-versus-{}-{}-{}-{}",
        pb.peer.name(),
        std::process::id(),
        now_unix_us(),
        RUNS.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(work.join("spool"))
        .with_context(|| format!("creating {}", work.display()))?;
    let core = Arc::new(GenCore::new(GenConfig {
        seed: opts.seed,
        format: opts.format,
        burst: plan.burst_rate.is_some(),
        ..GenConfig::default()
    })?);
    let verifier = Arc::new(Verifier::new(core.clone()));
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
    let url = format!(
        "https://127.0.0.1:{}/peer/{}",
        sink.addr.port(),
        pb.peer.name()
    );
    let listen = crate::bench::free_port()?;
    let log = work.join(format!("{}.log", pb.peer.name()));
    let out = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let mut cmd = Command::new(&pb.bin);
    match pb.peer {
        Peer::Rsyslog => {
            let relay = format!(
                "{} relay --url {url} --ca {} --batch-lines {} --batch-bytes {} --batch-timeout-ms {}",
                relay_exe.display(),
                ca_file.display(),
                settings.batch_lines,
                settings.batch_bytes,
                settings.batch_timeout_ms
            );
            if relay_exe.to_string_lossy().contains(' ') || work.to_string_lossy().contains(' ') {
                bail!("omprog splits its command at spaces: the loadgen path and TMPDIR may hold none");
            }
            let conf = crate::peer::rsyslog_config(listen.port(), &work, &relay, settings)?;
            let path = work.join("rsyslog.conf");
            std::fs::write(&path, conf)?;
            cmd.arg("-n")
                .arg("-f")
                .arg(&path)
                .arg("-i")
                .arg(work.join("rsyslogd.pid"));
        }
        Peer::SyslogNg => {
            let version = pb.config_version.as_deref().unwrap_or("3.38");
            let conf =
                crate::peer::syslog_ng_config(version, listen.port(), &url, &ca_file, settings)?;
            let path = work.join("syslog-ng.conf");
            std::fs::write(&path, conf)?;
            cmd.arg("-F")
                .arg("--no-caps")
                .arg("-f")
                .arg(&path)
                .arg("-R")
                .arg(work.join("syslog-ng.persist"))
                .arg("-p")
                .arg(work.join("syslog-ng.pid"))
                .arg("-c")
                .arg(work.join("syslog-ng.ctl"));
            if let Some(m) = &pb.module_dir {
                cmd.arg(format!("--module-path={}", m.display()));
            }
            if let Some(l) = &pb.lib_dir {
                cmd.env("LD_LIBRARY_PATH", l);
            }
        }
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", pb.bin.display()))?;
    let pid = child.id().context("the peer exited at once")?;
    let mut daemon = Daemon {
        child,
        pid,
        log: log.clone(),
    };
    daemon.ready(listen, pb.peer.name()).await?;
    let cpus = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .as_deref()
        .and_then(crate::bench::parse_cpus_allowed)
        .unwrap_or_else(|| "?".to_string());
    let tck = crate::bench::clock_ticks_per_sec();
    let (cpu0, _) = crate::peer::tree_usage(pid, tck)?;

    let send_cfg = SendConfig {
        target: listen.to_string(),
        clusters: plan.clusters,
        nodes: plan.nodes,
        rate: plan.rate,
        burst_rate: plan.burst_rate,
        duration: Some(plan.duration),
        events: None,
        framing: opts.framing,
        ..SendConfig::default()
    };
    let stats = Arc::new(SendStats::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let send_start = Instant::now();
    let mut senders = tokio::spawn(crate::send::run(
        send_cfg,
        core.clone(),
        stats.clone(),
        stop_rx,
    ));
    let progress = opts.progress;
    let mut last_line = Instant::now();
    let mut line = |what: &str| {
        if progress && last_line.elapsed() >= Duration::from_secs(5) {
            last_line = Instant::now();
            eprintln!(
                "loadgen: {:>5.1} s  {what}; sent {}, delivered {} of {}",
                send_start.elapsed().as_secs_f64(),
                num(stats.events.load(Ordering::Relaxed)),
                num(verifier.delivered()),
                num(stats.expected.load(Ordering::Relaxed))
            );
        }
    };
    let send_limit = plan.duration + Duration::from_secs(90);
    let send = loop {
        tokio::select! {
            r = &mut senders => break r.context("sender task")??,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                line("sending");
                if send_start.elapsed() > send_limit {
                    let _ = stop_tx.send(true);
                }
            }
        }
    };
    let send_s = send_start.elapsed().as_secs_f64();
    let drain_start = Instant::now();
    let totals = send.totals();
    let mut last = verifier.delivered();
    let mut last_delivery = (last > 0).then(Instant::now);
    loop {
        let d = verifier.delivered();
        if d != last {
            last = d;
            last_delivery = Some(Instant::now());
        }
        if d >= send.expected {
            break;
        }
        let quiet_since = last_delivery.map_or(drain_start, |t| t.max(drain_start));
        if quiet_since.elapsed() > opts.drain_timeout {
            break;
        }
        if daemon.child.try_wait()?.is_some() {
            break;
        }
        line("draining");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let through_s = last_delivery.map_or(0.0, |t| (t - send_start).as_secs_f64());
    let drain_s = drain_start.elapsed().as_secs_f64();
    let (cpu1, hwm) = crate::peer::tree_usage(pid, tck).unwrap_or((cpu0, 0));
    let exit = daemon.stop(Duration::from_secs(15)).await?;
    let summary = verifier.summary(Some(&totals));
    let responses = sink.counters.snapshot();
    sink.stop().await;
    let workers = match pb.peer {
        Peer::Rsyslog => settings.rs_queue_workers as usize,
        Peer::SyslogNg => settings.http_workers,
    };
    let setup = Setup {
        scenario: opts.scenario.name().to_string(),
        egress: "https".to_string(),
        clusters: plan.clusters,
        nodes_per_cluster: plan.nodes,
        format: opts.format,
        framing: opts.framing,
        seed: opts.seed,
        rate: plan.rate,
        broker: format!("{} ({})", pb.bin.display(), pb.version),
        broker_workers: workers,
        broker_cpus: cpus,
        broker_pinned: false,
        broker_overrides: Default::default(),
        broker_exit: exit,
        broker_restarts: 0,
    };
    let report = Report::assemble(
        setup,
        &send,
        &summary,
        responses,
        BrokerUsage {
            cpu_s: cpu1 - cpu0,
            peak_rss_bytes: hwm,
        },
        Timing {
            send_s,
            drain_s,
            through_s,
        },
    );
    if report.ok && !opts.keep_dir {
        let _ = std::fs::remove_dir_all(&work);
    } else {
        eprintln!(
            "{} work directory (configuration, log): {}",
            pb.peer.name(),
            work.display()
        );
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(vec![]), 0.0);
        assert_eq!(median(vec![3.0]), 3.0);
        assert_eq!(median(vec![5.0, 1.0, 3.0]), 3.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
    }

    #[tokio::test]
    async fn refuses_what_it_cannot_compare() {
        let base = VersusOptions {
            bench: BenchOptions::default(),
            peers: vec![Peer::Rsyslog],
            rounds: 1,
            peer_bins: HashMap::new(),
            relay_exe: PathBuf::from("/nonexistent"),
            settings: PeerSettings::default(),
        };
        let with = |f: fn(&mut VersusOptions)| {
            let mut o = base.clone();
            f(&mut o);
            o
        };
        for (o, want) in [
            (with(|o| o.bench.scenario = Scenario::Outage), "not outage"),
            (with(|o| o.bench.egress = Egress::Amqp), "HTTPS egress only"),
            (with(|o| o.bench.format = Format::Csv), "--format json"),
            (with(|o| o.rounds = 0), "--rounds"),
            (with(|o| o.peers.clear()), "rsyslog or syslog-ng"),
        ] {
            let e = run(o).await.unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
    }
}
