//! `qbroker top`: a live view of a running broker, per cluster and per target,
//! read from its `GET /stats` (the metrics listener, loopback by default).
//!
//! Rates come from two snapshots: the difference of each counter over the
//! difference of the broker's uptime. `--once` prints one such view as two
//! text tables; otherwise a terminal UI (ratatui) refreshes every interval.

use std::io::{Read as _, Write as _};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use qbroker::metrics::stats::{Stats, SCHEMA};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize as _};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Paragraph, Row, Table};
use ratatui::Frame;

#[derive(clap::Args)]
pub struct TopArgs {
    /// The broker's metrics listener (`metrics_listen`); `/stats` is read
    /// there. Plain http only.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:9514")]
    url: String,
    /// Print one view (two snapshots --interval-ms apart) as text and exit.
    #[arg(long)]
    once: bool,
    /// Time between snapshots, in milliseconds (at least 100).
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    interval_ms: u64,
    /// Sort rows by: name, rate (events/s, delivered/s), errors (parse
    /// errors, failing targets first) or backlog (queue share, unacknowledged
    /// batches).
    #[arg(long, value_enum, value_name = "KEY", default_value = "name")]
    sort: SortKey,
    /// Show only the clusters and targets whose name, route or URL contains
    /// this text (any case).
    #[arg(long, value_name = "TEXT")]
    filter: Option<String>,
}

/// The order of the rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SortKey {
    Name,
    Rate,
    Errors,
    Backlog,
}

impl SortKey {
    fn next(self) -> SortKey {
        match self {
            SortKey::Name => SortKey::Rate,
            SortKey::Rate => SortKey::Errors,
            SortKey::Errors => SortKey::Backlog,
            SortKey::Backlog => SortKey::Name,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            SortKey::Name => "name",
            SortKey::Rate => "rate",
            SortKey::Errors => "errors",
            SortKey::Backlog => "backlog",
        }
    }
}

pub fn top(args: TopArgs) -> anyhow::Result<std::process::ExitCode> {
    let source = Source::parse(&args.url)?;
    let interval = Duration::from_millis(args.interval_ms.max(100));
    if args.once {
        let first = source.get()?;
        std::thread::sleep(interval);
        let second = source.get()?;
        let view = View::new(Some(&first), &second, args.sort, args.filter.as_deref());
        print!("{}", view.text());
        return Ok(std::process::ExitCode::SUCCESS);
    }
    interactive(source, interval, args.sort, args.filter.unwrap_or_default())?;
    Ok(std::process::ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------
// Reading /stats.

/// Where `/stats` is read: host, port and path of an http URL.
#[derive(Debug, Clone, PartialEq)]
struct Source {
    host: String,
    port: u16,
    path: String,
}

impl Source {
    fn parse(url: &str) -> anyhow::Result<Source> {
        let Some(rest) = url.strip_prefix("http://") else {
            match url.split_once("://") {
                Some((scheme, _)) => bail!(
                    "--url {url}: only http:// is read (the metrics listener is plain HTTP), not {scheme}://"
                ),
                None => bail!("--url {url}: not a URL; give http://HOST:PORT, e.g. http://127.0.0.1:9514"),
            }
        };
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if authority.contains('@') {
            bail!("--url {url}: the metrics listener takes no credentials");
        }
        let port = |p: &str| {
            p.parse::<u16>()
                .ok()
                .filter(|&p| p > 0)
                .with_context(|| format!("--url {url}: port {p:?} is not 1 to 65535"))
        };
        let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
            let (h, after) = rest
                .split_once(']')
                .with_context(|| format!("--url {url}: no ] after the IPv6 address"))?;
            match after.strip_prefix(':') {
                Some(p) => (h, port(p)?),
                None if after.is_empty() => (h, 80),
                None => bail!("--url {url}: {after:?} after the IPv6 address"),
            }
        } else {
            match authority.split_once(':') {
                Some((h, p)) => (h, port(p)?),
                None => (authority, 80),
            }
        };
        if host.is_empty() {
            bail!("--url {url}: no host");
        }
        let path = match path.trim_end_matches('/') {
            p if p.ends_with("/stats") => p.to_string(),
            p => format!("{p}/stats"),
        };
        Ok(Source {
            host: host.to_string(),
            port,
            path,
        })
    }

    fn url(&self) -> String {
        if self.host.contains(':') {
            format!("http://[{}]:{}{}", self.host, self.port, self.path)
        } else {
            format!("http://{}:{}{}", self.host, self.port, self.path)
        }
    }

    /// One snapshot.
    fn get(&self) -> anyhow::Result<Stats> {
        let url = self.url();
        let body = self.fetch().with_context(|| {
            format!("cannot read {url} (is the broker running, with metrics_listen there?)")
        })?;
        let stats: Stats = serde_json::from_slice(&body)
            .with_context(|| format!("{url} did not answer a qbroker stats document"))?;
        if stats.schema != SCHEMA {
            bail!(
                "{url} answers schema {:?}; this qbroker reads {SCHEMA:?}",
                stats.schema
            );
        }
        Ok(stats)
    }

    /// A plain HTTP/1.1 GET, the connection closed after the answer.
    fn fetch(&self) -> anyhow::Result<Vec<u8>> {
        const LIMIT: u64 = 64 << 20;
        let timeout = Duration::from_secs(5);
        let addrs: Vec<_> = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .context("cannot resolve the host")?
            .collect();
        let mut last = None;
        let mut stream = None;
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, timeout) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let mut stream = match (stream, last) {
            (Some(s), _) => s,
            (None, Some(e)) => return Err(e.into()),
            (None, None) => bail!("the host has no address"),
        };
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        write!(
            stream,
            "GET {} HTTP/1.1\r\nHost: {host}:{}\r\nAccept: application/json\r\nConnection: close\r\nUser-Agent: qbroker-top\r\n\r\n",
            self.path, self.port
        )?;
        let mut raw = Vec::new();
        stream.take(LIMIT).read_to_end(&mut raw)?;
        parse_response(&raw)
    }
}

/// The body of a 200 answer (Content-Length, chunked, or up to the close).
fn parse_response(raw: &[u8]) -> anyhow::Result<Vec<u8>> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("incomplete HTTP answer")?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let body = &raw[end + 4..];
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    let code = status.split(' ').nth(1).unwrap_or_default();
    if code != "200" {
        bail!("answered {status:?}");
    }
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse::<usize>().ok();
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        }
    }
    if chunked {
        let mut out = Vec::new();
        let mut rest = body;
        loop {
            let nl = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .context("bad chunk")?;
            let size = std::str::from_utf8(&rest[..nl])?;
            let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)?;
            rest = &rest[nl + 2..];
            if size == 0 {
                return Ok(out);
            }
            out.extend_from_slice(rest.get(..size).context("short chunk")?);
            rest = rest.get(size + 2..).context("short chunk")?;
        }
    }
    match length {
        Some(n) => Ok(body.get(..n).context("short answer")?.to_vec()),
        None => Ok(body.to_vec()),
    }
}

// ---------------------------------------------------------------------------
// What is shown: rows with rates.

#[derive(Debug, Clone, PartialEq)]
struct ClusterRow {
    name: String,
    nodes: i64,
    frames_s: Option<f64>,
    events_s: Option<f64>,
    filtered_s: Option<f64>,
    parse_errors: u64,
    /// Of the work queue's capacity, 0 to 1.
    queue_share: f64,
    /// p99 end-to-end latency of the events delivered between the two
    /// snapshots (since start with one snapshot); `None` when there were none.
    p99_us: Option<u64>,
    route: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
struct TargetRow {
    name: String,
    state: String,
    last_error: Option<String>,
    in_flight: i64,
    in_flight_max: u64,
    spool_bytes: u64,
    unacked_bytes: u64,
    spool_batches: u64,
    oldest_ms: u64,
    delivered_s: Option<f64>,
    url: String,
}

#[derive(Debug, Clone, PartialEq)]
struct View {
    version: String,
    uptime_ms: u64,
    /// Seconds between the two snapshots; `None` with one snapshot (or after a
    /// restart of the broker).
    span: Option<f64>,
    events_s: Option<f64>,
    delivered_s: Option<f64>,
    queue_share: f64,
    latency_p99_us: u64,
    latency_count: u64,
    clusters: Vec<ClusterRow>,
    targets: Vec<TargetRow>,
    /// Before the filter.
    clusters_total: usize,
    targets_total: usize,
    failing: usize,
}

fn share(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

impl View {
    fn new(prev: Option<&Stats>, cur: &Stats, sort: SortKey, filter: Option<&str>) -> View {
        Self::sorted(prev, cur, sort, sort, filter)
    }

    fn sorted(
        prev: Option<&Stats>,
        cur: &Stats,
        cluster_sort: SortKey,
        target_sort: SortKey,
        filter: Option<&str>,
    ) -> View {
        // A broker restarted between the snapshots: no rates this time.
        let prev = prev.filter(|p| p.uptime_ms < cur.uptime_ms);
        let span = prev.map(|p| (cur.uptime_ms - p.uptime_ms) as f64 / 1000.0);
        let rate = |now: u64, before: Option<u64>| -> Option<f64> {
            let span = span?;
            Some(now.saturating_sub(before.unwrap_or(0)) as f64 / span)
        };
        let cap = cur.queue.capacity_messages;
        let mut clusters: Vec<ClusterRow> = cur
            .clusters
            .iter()
            .map(|c| {
                let p = prev.and_then(|p| p.clusters.iter().find(|x| x.name == c.name));
                ClusterRow {
                    name: c.name.clone(),
                    nodes: c.nodes_connected,
                    frames_s: rate(c.frames, p.map(|p| p.frames)),
                    events_s: rate(c.events, p.map(|p| p.events)),
                    filtered_s: rate(c.filtered, p.map(|p| p.filtered)),
                    parse_errors: c.parse_errors,
                    queue_share: share(c.queue_messages, cap),
                    p99_us: window_p99(
                        &c.latency_buckets,
                        p.map(|p| p.latency_buckets.as_slice()),
                        c.latency.max_us,
                    ),
                    route: c.route.clone(),
                }
            })
            .collect();
        let mut targets: Vec<TargetRow> = cur
            .targets
            .iter()
            .map(|t| {
                let p = prev.and_then(|p| p.targets.iter().find(|x| x.name == t.name));
                TargetRow {
                    name: t.name.clone(),
                    state: t.state.clone(),
                    last_error: t.last_error.clone(),
                    in_flight: t.in_flight,
                    in_flight_max: t.in_flight_max,
                    spool_bytes: t.spool_bytes,
                    unacked_bytes: t.spool_unacked_bytes,
                    spool_batches: t.spool_batches,
                    oldest_ms: t.oldest_unacked_age_ms,
                    delivered_s: rate(t.events_delivered, p.map(|p| p.events_delivered)),
                    url: t.url.clone(),
                }
            })
            .collect();
        let events_s = span.map(|_| clusters.iter().filter_map(|c| c.events_s).sum());
        let delivered_s = span.map(|_| targets.iter().filter_map(|t| t.delivered_s).sum());
        let (clusters_total, targets_total) = (clusters.len(), targets.len());
        let failing = targets.iter().filter(|t| t.state == "failing").count();
        if let Some(f) = filter.map(str::to_lowercase).filter(|f| !f.is_empty()) {
            clusters.retain(|c| {
                c.name.to_lowercase().contains(&f)
                    || c.route
                        .as_deref()
                        .is_some_and(|r| r.to_lowercase().contains(&f))
            });
            targets.retain(|t| {
                t.name.to_lowercase().contains(&f) || t.url.to_lowercase().contains(&f)
            });
        }
        sort_clusters(&mut clusters, cluster_sort);
        sort_targets(&mut targets, target_sort);
        View {
            version: cur.version.clone(),
            uptime_ms: cur.uptime_ms,
            span,
            events_s,
            delivered_s,
            queue_share: share(cur.queue.messages, cap),
            latency_p99_us: cur.latency.p99_us,
            latency_count: cur.latency.count,
            clusters,
            targets,
            clusters_total,
            targets_total,
            failing,
        }
    }

    /// The header: two lines, each within 80 columns.
    fn summary(&self) -> [String; 2] {
        let mut s = format!(
            "qbroker {}  up {}  clusters {}  targets {}",
            self.version,
            age(self.uptime_ms),
            self.clusters_total,
            self.targets_total
        );
        if self.failing > 0 {
            s.push_str(&format!(" ({} failing)", self.failing));
        }
        let mut t = format!(
            "events/s {}  delivered/s {}  queue {}  p99 {}",
            rate(self.events_s),
            rate(self.delivered_s),
            percent(self.queue_share),
            if self.latency_count == 0 {
                "-".to_string()
            } else {
                age_us(self.latency_p99_us)
            }
        );
        if let Some(span) = self.span {
            t.push_str(&format!("  (over {span:.1}s)"));
        }
        [s, t]
    }

    fn cluster_cells(&self) -> Vec<Vec<String>> {
        self.clusters
            .iter()
            .map(|c| {
                vec![
                    c.name.clone(),
                    c.nodes.to_string(),
                    rate(c.frames_s),
                    rate(c.events_s),
                    rate(c.filtered_s),
                    count(c.parse_errors),
                    percent(c.queue_share),
                    c.p99_us.map_or_else(|| "-".to_string(), age_us),
                    c.route.clone().unwrap_or_else(|| "-".to_string()),
                ]
            })
            .collect()
    }

    fn target_cells(&self) -> Vec<Vec<String>> {
        self.targets
            .iter()
            .map(|t| {
                vec![
                    t.name.clone(),
                    t.state.clone(),
                    format!("{}/{}", t.in_flight, t.in_flight_max),
                    bytes(t.spool_bytes),
                    bytes(t.unacked_bytes),
                    count(t.spool_batches),
                    if t.spool_batches == 0 {
                        "-".to_string()
                    } else {
                        age(t.oldest_ms)
                    },
                    rate(t.delivered_s),
                    t.last_error
                        .as_deref()
                        .map_or_else(|| "-".to_string(), |e| shorten(e, LAST_ERROR_WIDTH)),
                ]
            })
            .collect()
    }

    /// `--once`: the header and two tables. (The whole last error is in
    /// `/v1/clusters` and the log.)
    fn text(&self) -> String {
        let [first, second] = self.summary();
        let mut out = format!("{first}\n{second}\n\n");
        out.push_str(&text_table(&CLUSTER_COLUMNS, &self.cluster_cells()));
        out.push('\n');
        out.push_str(&text_table(&TARGET_COLUMNS, &self.target_cells()));
        out
    }
}

/// Characters of a target's last error shown, so that a row fits 80 columns.
const LAST_ERROR_WIDTH: usize = 13;

/// The p99 latency of the events counted in `cur` and not in `prev` (both a
/// cluster's `latency_buckets`), or in `cur` alone without `prev`; never
/// above `max_us`, the largest since start.
fn window_p99(cur: &[(u32, u64)], prev: Option<&[(u32, u64)]>, max_us: u64) -> Option<u64> {
    let before: std::collections::BTreeMap<u32, u64> =
        prev.unwrap_or_default().iter().copied().collect();
    let window: Vec<(u32, u64)> = cur
        .iter()
        .map(|&(i, n)| (i, n.saturating_sub(before.get(&i).copied().unwrap_or(0))))
        .filter(|&(_, n)| n > 0)
        .collect();
    let p99 = qbroker::metrics::buckets_quantile(&window, 0.99)?;
    Some(if max_us > 0 { p99.min(max_us) } else { p99 })
}

/// `text` cut to `width` characters, the cut marked with `…`.
fn shorten(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_string();
    }
    let mut out: String = text.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

fn sort_clusters(rows: &mut [ClusterRow], key: SortKey) {
    let desc = |a: f64, b: f64| b.total_cmp(&a);
    rows.sort_by(|a, b| {
        match key {
            SortKey::Name => std::cmp::Ordering::Equal,
            SortKey::Rate => desc(a.events_s.unwrap_or(0.0), b.events_s.unwrap_or(0.0)),
            SortKey::Errors => b.parse_errors.cmp(&a.parse_errors),
            SortKey::Backlog => desc(a.queue_share, b.queue_share),
        }
        .then_with(|| a.name.cmp(&b.name))
    });
}

fn sort_targets(rows: &mut [TargetRow], key: SortKey) {
    rows.sort_by(|a, b| {
        match key {
            SortKey::Name => std::cmp::Ordering::Equal,
            SortKey::Rate => b
                .delivered_s
                .unwrap_or(0.0)
                .total_cmp(&a.delivered_s.unwrap_or(0.0)),
            SortKey::Errors => (b.state == "failing").cmp(&(a.state == "failing")),
            SortKey::Backlog => {
                (b.spool_batches, b.unacked_bytes).cmp(&(a.spool_batches, a.unacked_bytes))
            }
        }
        .then_with(|| a.name.cmp(&b.name))
    });
}

// ---------------------------------------------------------------------------
// Numbers that fit.

/// A count: 999, 1.2k, 12k, 123k, 1.2M, ...
fn count(n: u64) -> String {
    si(n as f64, 1000.0, &["", "k", "M", "G", "T", "P"])
}

/// Bytes in binary units: 512B, 1.5K, 12M, 1.2G.
fn bytes(n: u64) -> String {
    si(n as f64, 1024.0, &["B", "K", "M", "G", "T", "P"])
}

fn si(mut v: f64, base: f64, units: &[&str]) -> String {
    let mut i = 0;
    while v >= base * 0.9995 && i + 1 < units.len() {
        v /= base;
        i += 1;
    }
    if i == 0 {
        format!("{}{}", v.round() as u64, units[0])
    } else if v < 9.95 {
        format!("{v:.1}{}", units[i])
    } else {
        format!("{}{}", v.round() as u64, units[i])
    }
}

/// Per second; `-` without two snapshots. Below 10: one decimal.
fn rate(r: Option<f64>) -> String {
    match r {
        None => "-".to_string(),
        Some(r) if r > 0.0 && r < 9.95 => format!("{r:.1}"),
        Some(r) => si(r, 1000.0, &["", "k", "M", "G", "T", "P"]),
    }
}

fn percent(f: f64) -> String {
    let p = f * 100.0;
    if p > 0.0 && p < 1.0 {
        "<1%".to_string()
    } else {
        format!("{}%", p.round() as u64)
    }
}

/// 850ms, 45s, 3m12s, 2h05m, 3d04h.
fn age(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0 => format!("{ms}ms"),
        1..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

fn age_us(us: u64) -> String {
    if us < 1000 {
        format!("{us}us")
    } else {
        age(us / 1000)
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Align {
    Left,
    Right,
}

/// Column titles, alignment, and the width they get in the terminal UI (the
/// first column takes what is left).
type Column = (&'static str, Align, u16);

const CLUSTER_COLUMNS: [Column; 9] = [
    ("CLUSTER", Align::Left, 0),
    ("NODES", Align::Right, 5),
    ("FRAMES/S", Align::Right, 8),
    ("EVENTS/S", Align::Right, 8),
    ("FILT/S", Align::Right, 6),
    ("ERRORS", Align::Right, 6),
    ("QUEUE", Align::Right, 5),
    ("P99", Align::Right, 6),
    ("ROUTE", Align::Left, 18),
];

/// SPOOL: the bytes of the spool's files; UNACKED: of them, what is left to
/// deliver; BATCHES: unacknowledged batches.
const TARGET_COLUMNS: [Column; 9] = [
    ("TARGET", Align::Left, 0),
    ("STATE", Align::Left, 8),
    ("IN-FL", Align::Right, 5),
    ("SPOOL", Align::Right, 6),
    ("UNACKED", Align::Right, 7),
    ("BATCHES", Align::Right, 7),
    ("OLDEST", Align::Right, 6),
    ("DELIV/S", Align::Right, 7),
    ("LAST ERROR", Align::Left, 16),
];

/// Columns two spaces apart, as wide as their widest cell; the last one
/// unpadded.
fn text_table(columns: &[Column], rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, (title, _, _))| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([title.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let titles: Vec<String> = columns.iter().map(|c| c.0.to_string()).collect();
    for row in std::iter::once(&titles).chain(rows) {
        let mut line = String::new();
        for (i, ((_, align, _), cell)) in columns.iter().zip(row).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let pad = widths[i].saturating_sub(cell.chars().count());
            match align {
                Align::Right => {
                    line.push_str(&" ".repeat(pad));
                    line.push_str(cell);
                }
                Align::Left if i + 1 == columns.len() => line.push_str(cell),
                Align::Left => {
                    line.push_str(cell);
                    line.push_str(&" ".repeat(pad));
                }
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

// ---------------------------------------------------------------------------
// The terminal UI.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Focus {
    Clusters,
    Targets,
}

struct App {
    prev: Option<Stats>,
    cur: Option<Stats>,
    /// The last read failed: why.
    error: Option<String>,
    focus: Focus,
    cluster_sort: SortKey,
    target_sort: SortKey,
    filter: String,
    /// Typing a filter (after `/`): the text so far.
    editing: Option<String>,
    url: String,
}

impl App {
    fn new(url: String, sort: SortKey, filter: String) -> App {
        App {
            prev: None,
            cur: None,
            error: None,
            focus: Focus::Clusters,
            cluster_sort: sort,
            target_sort: sort,
            filter,
            editing: None,
            url,
        }
    }

    fn update(&mut self, read: anyhow::Result<Stats>) {
        match read {
            Ok(stats) => {
                self.prev = self.cur.replace(stats);
                self.error = None;
            }
            Err(err) => self.error = Some(format!("{err:#}")),
        }
    }

    /// Handle a key; `false` to quit.
    fn key(&mut self, code: KeyCode, mods: KeyModifiers) -> bool {
        if let Some(text) = &mut self.editing {
            match code {
                KeyCode::Enter => self.filter = self.editing.take().unwrap_or_default(),
                KeyCode::Esc => self.editing = None,
                KeyCode::Backspace => {
                    text.pop();
                }
                KeyCode::Char(c) if !mods.contains(KeyModifiers::CONTROL) => text.push(c),
                _ => {}
            }
            return true;
        }
        match code {
            KeyCode::Char('q') | KeyCode::Esc => return false,
            KeyCode::Char('c') if mods.contains(KeyModifiers::CONTROL) => return false,
            KeyCode::Char('s') => match self.focus {
                Focus::Clusters => self.cluster_sort = self.cluster_sort.next(),
                Focus::Targets => self.target_sort = self.target_sort.next(),
            },
            KeyCode::Char('/') => self.editing = Some(self.filter.clone()),
            KeyCode::Char('c') => self.focus = Focus::Clusters,
            KeyCode::Char('t') => self.focus = Focus::Targets,
            KeyCode::Tab => {
                self.focus = match self.focus {
                    Focus::Clusters => Focus::Targets,
                    Focus::Targets => Focus::Clusters,
                }
            }
            _ => {}
        }
        true
    }

    fn view(&self) -> Option<View> {
        let cur = self.cur.as_ref()?;
        Some(View::sorted(
            self.prev.as_ref(),
            cur,
            self.cluster_sort,
            self.target_sort,
            Some(&self.filter),
        ))
    }

    fn draw(&self, frame: &mut Frame) {
        let [head, clusters, targets, foot] = Layout::vertical([
            Constraint::Length(2),
            Constraint::Fill(1),
            Constraint::Fill(1),
            Constraint::Length(1),
        ])
        .areas(frame.area());
        let view = self.view();
        let header: Vec<Line> = match (&view, &self.error) {
            (_, Some(err)) => vec![
                Line::raw(self.url.clone()),
                Line::styled(err.clone(), Style::new().fg(Color::Red)),
            ],
            (Some(v), None) => v.summary().map(Line::raw).into(),
            (None, None) => vec![Line::raw(format!("reading {} ...", self.url))],
        };
        frame.render_widget(Paragraph::new(header), head);
        if let Some(v) = &view {
            self.table(
                frame,
                clusters,
                Focus::Clusters,
                &CLUSTER_COLUMNS,
                v.cluster_cells(),
                v.clusters.len(),
                v.clusters_total,
                self.cluster_sort,
                |_| None,
            );
            self.table(
                frame,
                targets,
                Focus::Targets,
                &TARGET_COLUMNS,
                v.target_cells(),
                v.targets.len(),
                v.targets_total,
                self.target_sort,
                |row| match row[1].as_str() {
                    "failing" => Some(Color::Red),
                    "draining" => Some(Color::Yellow),
                    _ => None,
                },
            );
        }
        let footer = match &self.editing {
            Some(text) => Line::from(vec![
                Span::raw("filter: "),
                Span::raw(text.clone()).bold(),
                Span::raw("_   Enter apply  Esc cancel"),
            ]),
            None => Line::raw(format!(
                "q quit  s sort  / filter  c clusters  t targets{}",
                if self.filter.is_empty() {
                    String::new()
                } else {
                    format!("   filter: {}", self.filter)
                }
            )),
        };
        frame.render_widget(Paragraph::new(footer).reversed(), foot);
    }

    #[allow(clippy::too_many_arguments)]
    fn table(
        &self,
        frame: &mut Frame,
        area: Rect,
        which: Focus,
        columns: &[Column],
        cells: Vec<Vec<String>>,
        shown: usize,
        total: usize,
        sort: SortKey,
        color: impl Fn(&[String]) -> Option<Color>,
    ) {
        let name = match which {
            Focus::Clusters => "Clusters",
            Focus::Targets => "Targets",
        };
        let count = if shown == total {
            format!("{total}")
        } else {
            format!("{shown} of {total}")
        };
        let focused = self.focus == which;
        let block = Block::bordered()
            .title(format!(" {name} ({count})  sort: {} ", sort.as_str()))
            .border_style(if focused {
                Style::new().fg(Color::Cyan)
            } else {
                Style::new().fg(Color::DarkGray)
            });
        let cell = |text: String, align: Align, width: u16| {
            // Right-aligned numbers are padded by hand: a cell never cuts one.
            let text = match align {
                Align::Right => format!("{text:>w$}", w = width as usize),
                Align::Left => text,
            };
            Cell::from(text)
        };
        let header = Row::new(
            columns
                .iter()
                .map(|&(t, a, w)| cell(t.to_string(), a, w))
                .collect::<Vec<_>>(),
        )
        .style(Style::new().add_modifier(Modifier::BOLD));
        let rows = cells.into_iter().map(|row| {
            let style = color(&row).map_or(Style::new(), |c| Style::new().fg(c));
            Row::new(
                row.into_iter()
                    .zip(columns)
                    .map(|(text, &(_, a, w))| cell(text, a, w))
                    .collect::<Vec<_>>(),
            )
            .style(style)
        });
        let widths = columns.iter().map(|&(_, _, w)| {
            if w == 0 {
                Constraint::Min(8)
            } else {
                Constraint::Length(w)
            }
        });
        frame.render_widget(Table::new(rows, widths).header(header).block(block), area);
    }
}

fn interactive(
    source: Source,
    interval: Duration,
    sort: SortKey,
    filter: String,
) -> anyhow::Result<()> {
    use std::io::IsTerminal as _;
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        bail!("not a terminal: run qbroker top in one, or use --once for text");
    }
    // Snapshots are read on their own thread: a slow broker never stalls the keys.
    // Between two reads it waits on `stop` (dropped when the view ends), not in a
    // sleep: quitting ends it at once.
    let (tx, rx) = mpsc::channel();
    let (stop, stopped) = mpsc::channel::<()>();
    let reader = source.clone();
    std::thread::Builder::new()
        .name("qbroker-top".to_string())
        .spawn(move || loop {
            let started = Instant::now();
            if tx.send(reader.get()).is_err() {
                return;
            }
            match stopped.recv_timeout(interval.saturating_sub(started.elapsed())) {
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        })
        .context("cannot start the reader thread")?;
    let mut app = App::new(source.url(), sort, filter);
    // Raw mode and the alternate screen; the panic hook it installs puts the
    // terminal back before the message is printed.
    let mut terminal = match ratatui::try_init() {
        Ok(t) => t,
        Err(err) => {
            ratatui::restore();
            return Err(err).context("cannot set up the terminal");
        }
    };
    let result = (|| -> anyhow::Result<()> {
        // Drawn when something changed: a snapshot, a key, a resize. Between
        // them the loop waits on the terminal's events, so a key is handled
        // as it comes; the timeout bounds how late a snapshot is shown.
        let mut dirty = true;
        loop {
            while let Ok(read) = rx.try_recv() {
                app.update(read);
                dirty = true;
            }
            if dirty {
                terminal.draw(|f| app.draw(f))?;
                dirty = false;
            }
            if event::poll(Duration::from_millis(100))? {
                match event::read()? {
                    Event::Key(key) if key.kind == KeyEventKind::Press => {
                        if !app.key(key.code, key.modifiers) {
                            return Ok(());
                        }
                        dirty = true;
                    }
                    Event::Resize(..) => dirty = true,
                    _ => {}
                }
            }
        }
    })();
    drop(stop);
    ratatui::restore();
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use qbroker::metrics::stats::{ClusterStats, LatencyStats, QueueStats, TargetStats};
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    fn stats(uptime_ms: u64, scale: u64) -> Stats {
        Stats {
            schema: SCHEMA.to_string(),
            version: "0.1.0".to_string(),
            uptime_ms,
            time_unix_ms: 1_700_000_000_000,
            queue: QueueStats {
                messages: 100,
                bytes: 1000,
                capacity_messages: 1000,
                capacity_bytes: 1 << 20,
                waiting_readers: 0,
            },
            latency: LatencyStats {
                p50_us: 20_000,
                p99_us: 250_000,
                max_us: 900_000,
                count: 5000,
            },
            clusters: vec![
                ClusterStats {
                    name: "alpha".to_string(),
                    nodes_connected: 3,
                    frames: 2000 * scale,
                    events: 1500 * scale,
                    filtered: 500 * scale,
                    parse_errors: 7,
                    queue_messages: 80,
                    route: Some("varonis".to_string()),
                    // 20 ms and 250 ms (buckets 18 and 32), 9 to 1.
                    latency_buckets: vec![(18, 90 * scale), (32, 10 * scale)],
                    latency: LatencyStats {
                        max_us: 300_000,
                        ..Default::default()
                    },
                    ..Default::default()
                },
                ClusterStats {
                    name: "beta".to_string(),
                    nodes_connected: 1,
                    frames: 20 * scale,
                    events: 20 * scale,
                    parse_errors: 0,
                    queue_messages: 20,
                    route: Some("@beta".to_string()),
                    ..Default::default()
                },
            ],
            targets: vec![
                TargetStats {
                    name: "varonis".to_string(),
                    origin: "config".to_string(),
                    state: "ok".to_string(),
                    url: "https://varonis.example/api".to_string(),
                    in_flight: 2,
                    in_flight_max: 4,
                    events_delivered: 1500 * scale,
                    ..Default::default()
                },
                TargetStats {
                    name: "@beta".to_string(),
                    origin: "registry".to_string(),
                    state: "failing".to_string(),
                    last_error: Some("connection refused".to_string()),
                    url: "https://beta.example/api".to_string(),
                    in_flight: 1,
                    in_flight_max: 4,
                    spool_bytes: 3 << 20,
                    spool_unacked_bytes: 2 << 20,
                    spool_batches: 42,
                    oldest_unacked_age_ms: 192_000,
                    ..Default::default()
                },
            ],
        }
    }

    fn screen(app: &App, width: u16, height: u16) -> Vec<String> {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
        terminal.draw(|f| app.draw(f)).unwrap();
        let buf = terminal.backend().buffer().clone();
        (0..height)
            .map(|y| {
                (0..width)
                    .map(|x| buf[(x, y)].symbol())
                    .collect::<String>()
                    .replace('│', " ")
            })
            .collect()
    }

    fn app_with(sort: SortKey, filter: &str) -> App {
        let mut app = App::new("http://127.0.0.1:9514/stats".into(), sort, filter.into());
        app.update(Ok(stats(10_000, 1)));
        app.update(Ok(stats(12_000, 3)));
        app
    }

    fn line_with<'a>(lines: &'a [String], text: &str) -> &'a str {
        lines
            .iter()
            .find(|l| l.contains(text))
            .unwrap_or_else(|| panic!("no line with {text:?} in\n{}", lines.join("\n")))
    }

    fn row_of(lines: &[String], text: &str) -> usize {
        lines
            .iter()
            .position(|l| l.contains(text))
            .unwrap_or_else(|| panic!("no line with {text:?} in\n{}", lines.join("\n")))
    }

    #[test]
    fn renders_clusters_targets_and_a_failing_target() {
        let app = app_with(SortKey::Name, "");
        let lines = screen(&app, 120, 24);
        let all = lines.join("\n");
        assert!(
            lines[0].starts_with("qbroker 0.1.0  up 12s  clusters 2  targets 2 (1 failing)"),
            "{all}"
        );
        assert!(
            lines[1].starts_with("events/s 1.5k  delivered/s 1.5k  queue 10%  p99 250ms"),
            "{all}"
        );
        assert!(all.contains("Clusters (2)  sort: name"), "{all}");
        for title in [
            "CLUSTER", "NODES", "FRAMES/S", "EVENTS/S", "FILT/S", "ERRORS", "QUEUE", "P99",
            "ROUTE", "UNACKED",
        ] {
            assert!(all.contains(title), "{title}: {all}");
        }
        // alpha: 4000 frames, 3000 events, 1000 filtered over 2 s; of the
        // 200 events delivered meanwhile, 20 took 250 ms: p99 is that
        // bucket's bound (256 ms); beta delivered none.
        let alpha: Vec<&str> = line_with(&lines, "alpha").split_whitespace().collect();
        assert_eq!(
            &alpha[..9],
            ["alpha", "3", "2.0k", "1.5k", "500", "7", "8%", "256ms", "varonis"],
            "{all}"
        );
        let beta: Vec<&str> = line_with(&lines, " beta ").split_whitespace().collect();
        assert_eq!(&beta[6..9], ["2%", "-", "@beta"], "{all}");
        let failing: Vec<&str> = line_with(&lines, " failing ").split_whitespace().collect();
        assert_eq!(
            &failing[..9],
            [
                "@beta",
                "failing",
                "1/4",
                "3.0M",
                "2.0M",
                "42",
                "3m12s",
                "0",
                "connection"
            ],
            "{all}"
        );
        // The failing row is red, the ok one is not.
        let mut terminal = Terminal::new(TestBackend::new(120, 24)).unwrap();
        terminal.draw(|f| app.draw(f)).unwrap();
        let buf = terminal.backend().buffer();
        let y = row_of(&lines, " failing ") as u16;
        let x = lines[y as usize].find(" failing ").unwrap() as u16 + 1;
        assert_eq!(buf[(x, y)].fg, Color::Red);
        let y = row_of(&lines, " 2/4 ") as u16;
        assert_ne!(buf[(1, y)].fg, Color::Red);
        assert!(lines
            .last()
            .unwrap()
            .contains("q quit  s sort  / filter  c clusters  t targets"));
    }

    #[test]
    fn sorts_and_filters() {
        // By name: alpha before beta; by errors the same; by rate too.
        let lines = screen(&app_with(SortKey::Name, ""), 120, 24);
        assert!(row_of(&lines, " alpha ") < row_of(&lines, " beta "));
        // Targets by name: @beta before varonis; by rate: varonis first.
        assert!(row_of(&lines, " @beta ") < row_of(&lines, " 2/4 "));
        let mut app = app_with(SortKey::Name, "");
        app.key(KeyCode::Char('t'), KeyModifiers::NONE);
        app.key(KeyCode::Char('s'), KeyModifiers::NONE);
        let lines = screen(&app, 120, 24);
        assert!(lines.join("\n").contains("sort: rate"));
        let t = row_of(&lines, "Targets");
        let varonis = lines
            .iter()
            .skip(t)
            .position(|l| l.contains(" ok "))
            .unwrap();
        let beta = lines
            .iter()
            .skip(t)
            .position(|l| l.contains("failing"))
            .unwrap();
        assert!(varonis < beta, "{}", lines.join("\n"));
        // Backlog on clusters: queue share, alpha (8%) first.
        let mut view = View::new(None, &stats(1, 1), SortKey::Backlog, None);
        assert_eq!(view.clusters[0].name, "alpha");
        assert_eq!(view.targets[0].name, "@beta");
        // No rates from one snapshot.
        assert_eq!(view.clusters[0].events_s, None);
        view = View::new(None, &stats(1, 1), SortKey::Name, Some("BET"));
        assert_eq!(view.clusters.len(), 1);
        assert_eq!(view.targets.len(), 1);
        assert_eq!(view.clusters_total, 2);

        // Typing a filter.
        let mut app = app_with(SortKey::Name, "");
        for c in "/alp".chars() {
            app.key(KeyCode::Char(c), KeyModifiers::NONE);
        }
        assert!(screen(&app, 120, 24)
            .last()
            .unwrap()
            .contains("filter: alp_"));
        app.key(KeyCode::Enter, KeyModifiers::NONE);
        let all = screen(&app, 120, 24).join("\n");
        assert!(all.contains("Clusters (1 of 2)"), "{all}");
        assert!(!all.contains(" beta "), "{all}");
        assert!(all.contains("filter: alp"), "{all}");
        assert!(!app.key(KeyCode::Char('q'), KeyModifiers::NONE));
    }

    #[test]
    fn numbers_fit_at_80_columns() {
        let mut s = stats(10_000, 1);
        s.clusters[0].name = "a-cluster-name".into();
        let mut big = s.clone();
        big.uptime_ms = 11_000;
        big.clusters[0].frames += 123_456_789;
        big.clusters[0].events += 98_765_432;
        big.targets[1].spool_bytes = 99 << 30;
        let view = View::new(Some(&s), &big, SortKey::Name, None);
        let lines = screen(
            &{
                let mut app = App::new(String::new(), SortKey::Name, String::new());
                app.update(Ok(s.clone()));
                app.update(Ok(big.clone()));
                app
            },
            80,
            24,
        );
        let all = lines.join("\n");
        assert!(all.contains("123M"), "{all}");
        assert!(all.contains("99G"), "{all}");
        for line in view.text().lines() {
            assert!(line.chars().count() <= 80, "{line}");
        }
        assert!(view.text().contains("  123M  "), "{}", view.text());
    }

    #[test]
    fn formats() {
        assert_eq!(count(999), "999");
        assert_eq!(count(1_000), "1.0k");
        assert_eq!(count(12_345), "12k");
        assert_eq!(count(999_999), "1.0M");
        assert_eq!(bytes(512), "512B");
        assert_eq!(bytes(3 << 20), "3.0M");
        assert_eq!(rate(Some(0.26)), "0.3");
        assert_eq!(rate(Some(0.0)), "0");
        assert_eq!(rate(None), "-");
        assert_eq!(age(850), "850ms");
        assert_eq!(age(192_000), "3m12s");
        assert_eq!(age(7_500_000), "2h05m");
        assert_eq!(percent(0.001), "<1%");
    }

    #[test]
    fn urls() {
        let s = Source::parse("http://127.0.0.1:9514").unwrap();
        assert_eq!(
            (s.host.as_str(), s.port, s.path.as_str()),
            ("127.0.0.1", 9514, "/stats")
        );
        assert_eq!(
            Source::parse("http://[::1]:9/stats").unwrap().url(),
            "http://[::1]:9/stats"
        );
        assert_eq!(Source::parse("http://h").unwrap().port, 80);
        assert_eq!(
            Source::parse("http://[::1]").unwrap().url(),
            "http://[::1]:80/stats"
        );
        assert_eq!(
            Source::parse("http://localhost:9514/x/").unwrap().url(),
            "http://localhost:9514/x/stats"
        );
        assert!(Source::parse("http://:9514").is_err());
        assert!(Source::parse("http://u:p@h:1").is_err());
        let err = Source::parse("https://127.0.0.1:9514")
            .unwrap_err()
            .to_string();
        assert!(err.contains("only http://"), "{err}");
        assert!(Source::parse("127.0.0.1:9514").is_err());
        assert!(Source::parse("http://h:99999").is_err());
        assert_eq!(
            parse_response(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
            )
            .unwrap(),
            b"abc"
        );
        assert!(parse_response(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n").is_err());
    }
}
