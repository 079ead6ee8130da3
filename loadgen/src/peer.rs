//! peer: the established syslog daemons that `bench --versus` runs beside
//! qbroker on the same load: where their binaries are, their configuration
//! (the same pipeline as qbroker's: TCP syslog in, the audit JSON parsed, the
//! operations Varonis keeps selected, batches over HTTPS to the verifying
//! sink), their CPU and memory as /proc sees them (children included), and
//! `relay`, the trivial omprog consumer that carries rsyslog's output into
//! the sink.
//!
//! - rsyslog: imtcp -> mmjsonparse -> filter -> omprog with the reference
//!   broker's queue settings (its 10-qumulo.conf). Debian's rsyslog has no
//!   omhttp, so omprog runs `loadgen relay`: it cuts each line to its JSON
//!   payload and POSTs JSON arrays of them over TLS, batched as qbroker
//!   batches. Its CPU counts as rsyslog's (it is rsyslog's child).
//! - syslog-ng: network(tcp) -> json-parser -> filter -> http() over TLS,
//!   batched as qbroker batches, the body a JSON array of the parsed records
//!   (`format-json`).
//!
//! Both filters are qbroker's default filter (the seven operations the
//! reference forwarded, and access denied on any operation), so all three
//! pipelines must deliver the same events: the sink counts and checks them
//! by their `file_id` (see [`crate::verify::Verifier::check_peer_batch`]).
//! The reference also required `protocol == smb2`; that is left out here.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// A syslog daemon to compare qbroker with.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum, serde::Serialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Peer {
    /// rsyslogd: imtcp, mmjsonparse, omprog (Debian package rsyslog)
    Rsyslog,
    /// syslog-ng: network(), json-parser, http() (Debian packages
    /// syslog-ng-core and syslog-ng-mod-http)
    SyslogNg,
}

impl Peer {
    pub fn name(self) -> &'static str {
        match self {
            Peer::Rsyslog => "rsyslog",
            Peer::SyslogNg => "syslog-ng",
        }
    }

    /// The executable's file name.
    pub fn program(self) -> &'static str {
        match self {
            Peer::Rsyslog => "rsyslogd",
            Peer::SyslogNg => "syslog-ng",
        }
    }

    /// The pipeline, in a few words (the report's table).
    pub fn pipeline(self) -> &'static str {
        match self {
            Peer::Rsyslog => {
                "imtcp -> mmjsonparse -> filter -> omprog (loadgen relay, HTTPS batches)"
            }
            Peer::SyslogNg => "network(tcp) -> json-parser -> filter -> http() TLS batches",
        }
    }

    fn install_hint(self) -> String {
        match self {
            Peer::Rsyslog => "install the Debian package rsyslog (`sudo apt-get install rsyslog`, \
                 or scripts/install-peers), or pass --peer-bin rsyslog=PATH"
                .to_string(),
            Peer::SyslogNg => format!(
                "it is in the Debian packages syslog-ng-core and syslog-ng-mod-http (the http() \
                 destination); scripts/install-peers unpacks them into {} without installing \
                 them (syslog-ng-core conflicts with rsyslog), or pass --peer-bin syslog-ng=PATH",
                cache_dir().display()
            ),
        }
    }
}

impl std::str::FromStr for Peer {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Peer> {
        match s.trim() {
            "rsyslog" | "rsyslogd" => Ok(Peer::Rsyslog),
            "syslog-ng" | "syslogng" => Ok(Peer::SyslogNg),
            other => bail!("unknown peer {other:?}: rsyslog or syslog-ng"),
        }
    }
}

/// Where scripts/install-peers unpacks syslog-ng.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("LOADGEN_PEERS_DIR") {
        return PathBuf::from(d);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/nonexistent"));
    base.join("loadgen-peers").join("syslog-ng")
}

/// How the peers batch and queue. The batch settings are qbroker's (its
/// `[batch]` defaults unless the command line sets them); the rsyslog queue
/// is the reference's 10-qumulo.conf.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct PeerSettings {
    /// events per HTTPS request (syslog-ng batch-lines; the relay's batch)
    pub batch_lines: usize,
    /// longest an event waits for its batch to fill, ms (batch-timeout)
    pub batch_timeout_ms: u64,
    /// bytes per request at most (batch-bytes)
    pub batch_bytes: u64,
    /// syslog-ng http() workers (parallel connections)
    pub http_workers: usize,
    /// rsyslog action queue: queue.size
    pub rs_queue_size: u64,
    /// queue.workerThreads (each runs its own omprog relay)
    pub rs_queue_workers: u32,
    /// queue.workerThreadMinimumMessages
    pub rs_queue_min_msgs: u64,
    /// simultaneous TCP connections the input accepts
    pub max_connections: usize,
}

impl Default for PeerSettings {
    fn default() -> Self {
        PeerSettings {
            batch_lines: 1000,
            batch_timeout_ms: 200,
            batch_bytes: 1 << 20,
            http_workers: 2,
            rs_queue_size: 100_000,
            rs_queue_workers: 16,
            rs_queue_min_msgs: 10_000,
            max_connections: 200,
        }
    }
}

/// A peer's executable and what it needs to run from where it is.
#[derive(Clone, Debug)]
pub struct PeerBin {
    pub peer: Peer,
    pub bin: PathBuf,
    /// the first line of `--version`
    pub version: String,
    /// syslog-ng: the module directory (`--module-path`), e.g. `.../3.38`
    pub module_dir: Option<PathBuf>,
    /// syslog-ng: its private library directory (LD_LIBRARY_PATH)
    pub lib_dir: Option<PathBuf>,
    /// syslog-ng: the configuration version (`@version:`), e.g. `3.38`
    pub config_version: Option<String>,
}

fn in_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The peer's executable: `explicit`, else PATH, /usr/sbin, and (syslog-ng)
/// where scripts/install-peers unpacks it. A clear error names the package.
pub fn find(peer: Peer, explicit: Option<&Path>) -> anyhow::Result<PeerBin> {
    let bin = match explicit {
        Some(p) if p.is_file() => p.to_path_buf(),
        Some(p) => bail!(
            "{} binary {} not found; {}",
            peer.name(),
            p.display(),
            peer.install_hint()
        ),
        None => {
            let mut tried = vec!["PATH".to_string()];
            let mut candidates = vec![Path::new("/usr/sbin").join(peer.program())];
            if peer == Peer::SyslogNg {
                candidates.push(cache_dir().join("usr/sbin/syslog-ng"));
            }
            tried.extend(candidates.iter().map(|c| c.display().to_string()));
            match in_path(peer.program()).or_else(|| candidates.into_iter().find(|c| c.is_file())) {
                Some(b) => b,
                None => bail!(
                    "{} not found (looked in {}); {}",
                    peer.program(),
                    tried.join(", "),
                    peer.install_hint()
                ),
            }
        }
    };
    let mut pb = PeerBin {
        peer,
        version: String::new(),
        bin,
        module_dir: None,
        lib_dir: None,
        config_version: None,
    };
    if peer == Peer::SyslogNg {
        // <root>/sbin/syslog-ng -> <root>/lib/syslog-ng/<version>/libhttp.so
        let root = pb
            .bin
            .parent()
            .and_then(Path::parent)
            .context("syslog-ng binary path")?;
        let lib = root.join("lib").join("syslog-ng");
        let module = std::fs::read_dir(&lib)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.join("libhttp.so").is_file())
            .max();
        let Some(module) = module else {
            bail!(
                "syslog-ng at {} has no http() module ({}/<version>/libhttp.so): {}",
                pb.bin.display(),
                lib.display(),
                peer.install_hint()
            );
        };
        pb.config_version = module.file_name().map(|n| n.to_string_lossy().into_owned());
        pb.module_dir = Some(module);
        pb.lib_dir = Some(lib);
    }
    let mut cmd = std::process::Command::new(&pb.bin);
    cmd.arg(if peer == Peer::Rsyslog {
        "-v"
    } else {
        "--version"
    });
    if let Some(l) = &pb.lib_dir {
        cmd.env("LD_LIBRARY_PATH", l);
    }
    let out = cmd
        .output()
        .with_context(|| format!("running {} for its version", pb.bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    pb.version = version_line(&text);
    if !out.status.success() || pb.version.is_empty() {
        bail!(
            "{} --version failed ({}): {}; {}",
            pb.bin.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            peer.install_hint()
        );
    }
    Ok(pb)
}

/// The first line of `--version`, without rsyslog's "compiled with:".
fn version_line(text: &str) -> String {
    let first = text.lines().next().unwrap_or("");
    let first = first.split(" compiled with").next().unwrap_or(first);
    first.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The operations qbroker's default filter keeps (the reference's), besides
/// access denied on any operation.
pub const KEPT_OPERATIONS: [&str; 7] = [
    "fs_create_file",
    "fs_create_directory",
    "fs_read_data",
    "fs_write_data",
    "fs_write_metadata",
    "fs_rename",
    "fs_delete",
];

fn quoted(s: &str) -> anyhow::Result<String> {
    if s.contains(['"', '\\', '\n']) {
        bail!("{s:?}: a quote, backslash or newline cannot go into a peer configuration");
    }
    Ok(format!("\"{s}\""))
}

/// rsyslog's configuration: a private instance on `port` (127.0.0.1 only)
/// whose state lives under `work`, with `relay` (a command line; omprog
/// splits it at spaces) as the omprog consumer; what the relays write goes to
/// `work/relay.log`.
pub fn rsyslog_config(
    port: u16,
    work: &Path,
    relay: &str,
    s: &PeerSettings,
) -> anyhow::Result<String> {
    let spool = work.join("spool");
    let relay_log = work.join("relay.log");
    let filter = KEPT_OPERATIONS
        .iter()
        .map(|op| format!("      $!operation == \"{op}\""))
        .collect::<Vec<_>>()
        .join(" or\n");
    Ok(format!(
        r#"# loadgen bench --versus rsyslog: the reference's pipeline (10-qumulo.conf)
global(workDirectory={spool} maxMessageSize="64k")

$RepeatedMsgReduction on

module(load="imtcp" maxSessions="{sessions}")
input(type="imtcp" port="{port}" address="127.0.0.1")

module(load="omprog")
module(load="mmjsonparse")

if ($app-name startswith "qumulo") then {{
  action(type="mmjsonparse" cookie="")
  if ($!status == "fs_access_denied_error" or
{filter}) then {{
    action(
      name="out"
      type="omprog"
      binary={relay}
      output={relay_log}
      queue.type="LinkedList"
      queue.size="{qsize}"
      queue.saveOnShutdown="on"
      queue.workerThreads="{qworkers}"
      queue.workerThreadMinimumMessages="{qmin}"
      action.resumeRetryCount="-1"
      queue.timeoutShutdown="5000"
      queue.timeoutEnqueue="2000"
    )
    stop
  }}
}} else
  action(type="omfile" file="/dev/null")
"#,
        spool = quoted(&spool.to_string_lossy())?,
        sessions = s.max_connections,
        relay = quoted(relay)?,
        relay_log = quoted(&relay_log.to_string_lossy())?,
        qsize = s.rs_queue_size,
        qworkers = s.rs_queue_workers,
        qmin = s.rs_queue_min_msgs,
    ))
}

/// syslog-ng's configuration: `network()` on 127.0.0.1:`port`, http() to
/// `url` over TLS, verified against `ca_file`.
pub fn syslog_ng_config(
    version: &str,
    port: u16,
    url: &str,
    ca_file: &Path,
    s: &PeerSettings,
) -> anyhow::Result<String> {
    let ops = KEPT_OPERATIONS
        .iter()
        .map(|op| op.strip_prefix("fs_").unwrap_or(op))
        .collect::<Vec<_>>()
        .join("|");
    // every connection may hold this many messages in flight (flow control)
    let window = 10_000 * s.max_connections;
    Ok(format!(
        r#"@version: {version}
# loadgen bench --versus syslog-ng: TCP syslog -> json-parser -> filter -> http() batched, TLS
options {{
  threaded(yes);
  use-dns(no);
  dns-cache(no);
  use-fqdn(no);
  keep-hostname(yes);
  chain-hostnames(no);
  mark-freq(0);
  stats-freq(0);
  log-fifo-size({window});
}};

source s_qumulo {{
  network(
    ip("127.0.0.1") port({port}) transport("tcp")
    flags(syslog-protocol)
    max-connections({conns})
    log-iw-size({window})
    log-fetch-limit(100)
  );
}};

parser p_json {{ json-parser(prefix(".json.")); }};

filter f_audit {{
  "${{PROGRAM}}" eq "qumulo"
  and ( match("^fs_({ops})$" value(".json.operation"))
        or "${{.json.status}}" eq "fs_access_denied_error" );
}};

destination d_http {{
  http(
    url({url})
    method("POST")
    headers("Content-Type: application/json")
    workers({workers})
    batch-lines({lines})
    batch-bytes({bytes})
    batch-timeout({timeout})
    body-prefix("[")
    delimiter(",")
    body-suffix("]")
    body("$(format-json --key .json.* --rekey .json.* --shift 6)")
    tls(ca-file({ca}) peer-verify(yes))
    timeout(10)
    persist-name("loadgen_versus")
  );
}};

log {{
  source(s_qumulo);
  parser(p_json);
  filter(f_audit);
  destination(d_http);
  flags(flow-control);
}};
"#,
        conns = s.max_connections,
        url = quoted(url)?,
        ca = quoted(&ca_file.to_string_lossy())?,
        workers = s.http_workers,
        lines = s.batch_lines,
        bytes = s.batch_bytes,
        timeout = s.batch_timeout_ms,
    ))
}

// ---------------------------------------------------------------- /proc

/// From /proc/<pid>/stat: (parent pid, own utime + stime, utime + stime of
/// its reaped children), in clock ticks.
pub fn parse_stat(stat: &str) -> Option<(u32, u64, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): ppid 4, utime 14, stime 15, cutime 16, cstime 17
    let n = |i: usize| f.get(i)?.parse::<u64>().ok();
    Some((n(1)? as u32, n(11)? + n(12)?, n(13)? + n(14)?))
}

/// CPU seconds and summed peak RSS (VmHWM) of `pid` and every process under
/// it. A child that exited and was reaped counts through its parent's
/// cutime/cstime, so the total never goes down.
pub fn tree_usage(pid: u32, tck: u64) -> anyhow::Result<(f64, u64)> {
    let mut procs = Vec::new();
    for e in std::fs::read_dir("/proc")?.flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Some(st) = std::fs::read_to_string(format!("/proc/{p}/stat"))
            .ok()
            .as_deref()
            .and_then(parse_stat)
        {
            procs.push((p, st));
        }
    }
    if !procs.iter().any(|(p, _)| *p == pid) {
        bail!("process {pid} is gone");
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            procs
                .iter()
                .filter(|(_, (ppid, _, _))| *ppid == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    let mut ticks = 0;
    let mut hwm = 0;
    for p in &tree {
        if let Some((_, (_, own, reaped))) = procs.iter().find(|(q, _)| q == p) {
            ticks += own + reaped;
        }
        hwm += std::fs::read_to_string(format!("/proc/{p}/status"))
            .ok()
            .as_deref()
            .and_then(crate::bench::parse_vmhwm)
            .unwrap_or(0);
    }
    Ok((ticks as f64 / tck as f64, hwm))
}

// ---------------------------------------------------------------- relay

/// `loadgen relay`: omprog's consumer.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// `https://HOST:PORT/PATH`
    pub url: String,
    /// the PEM to trust
    pub ca_file: PathBuf,
    pub batch_lines: usize,
    pub batch_bytes: usize,
    pub batch_timeout: Duration,
}

/// What the relay did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RelayStats {
    pub lines: u64,
    pub batches: u64,
    pub retries: u64,
    /// batches the sink refused (4xx): not retried
    pub refused: u64,
}

/// The JSON value a line becomes in the body: from its first `{` (rsyslog's
/// file format puts the time, host and tag before the audit JSON), trailing
/// line end cut; a line without one becomes a JSON string (which the sink
/// counts as a malformed record).
pub fn relay_record(line: &[u8], out: &mut Vec<u8>) {
    let mut line = line;
    while let [rest @ .., b'\n' | b'\r'] = line {
        line = rest;
    }
    match memchr::memchr(b'{', line) {
        Some(i) => out.extend_from_slice(&line[i..]),
        None => {
            let s = String::from_utf8_lossy(line);
            out.extend_from_slice(serde_json::to_string(&s).expect("string").as_bytes());
        }
    }
}

struct Url {
    host: String,
    port: u16,
    path: String,
}

fn parse_url(url: &str) -> anyhow::Result<Url> {
    let rest = url
        .strip_prefix("https://")
        .with_context(|| format!("{url}: want https://HOST:PORT/PATH"))?;
    let (hostport, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let (host, port) = hostport
        .rsplit_once(':')
        .with_context(|| format!("{url}: no port"))?;
    Ok(Url {
        host: host.trim_matches(['[', ']']).to_string(),
        port: port.parse().with_context(|| format!("{url}: port"))?,
        path: if path.is_empty() { "/" } else { path }.to_string(),
    })
}

type Tls = BufReader<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>;

struct Poster {
    url: Url,
    tls: Arc<rustls::ClientConfig>,
    conn: Option<Tls>,
}

impl Poster {
    fn connect(&self) -> anyhow::Result<Tls> {
        let tcp = TcpStream::connect((self.url.host.as_str(), self.url.port))?;
        tcp.set_nodelay(true)?;
        tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
        let name = rustls::pki_types::ServerName::try_from(self.url.host.clone())?;
        let c = rustls::ClientConnection::new(self.tls.clone(), name)?;
        Ok(BufReader::new(rustls::StreamOwned::new(c, tcp)))
    }

    /// One POST on the kept-alive connection: the status.
    fn post_once(&mut self, body: &[u8]) -> anyhow::Result<u16> {
        if self.conn.is_none() {
            self.conn = Some(self.connect()?);
        }
        let c = self.conn.as_mut().expect("connected");
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: {}:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.url.path,
            self.url.host,
            self.url.port,
            body.len()
        );
        let w = c.get_mut();
        w.write_all(head.as_bytes())?;
        w.write_all(body)?;
        w.flush()?;
        let mut line = String::new();
        c.read_line(&mut line)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status line {line:?}"))?;
        let mut len = 0usize;
        let mut close = false;
        loop {
            line.clear();
            if c.read_line(&mut line)? == 0 {
                bail!("connection closed in the response head");
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
                if k == "content-length" {
                    len = v.parse().context("content-length")?;
                } else if (k == "connection" && v.eq_ignore_ascii_case("close"))
                    || k == "transfer-encoding"
                {
                    // a chunked answer is not read: the connection goes
                    close = true;
                }
            }
        }
        let mut sink = vec![0; len];
        c.read_exact(&mut sink)?;
        if close {
            self.conn = None;
        }
        Ok(status)
    }

    /// POSTs until the sink takes it (2xx) or refuses it (4xx but 408/429).
    fn post(&mut self, body: &[u8], stats: &mut RelayStats) {
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.post_once(body) {
                Ok(s) if (200..300).contains(&s) => return,
                Ok(s) if (400..500).contains(&s) && s != 408 && s != 429 => {
                    eprintln!("loadgen relay: the sink refused a batch ({s})");
                    stats.refused += 1;
                    return;
                }
                Ok(s) => {
                    eprintln!("loadgen relay: status {s}; retrying");
                }
                Err(e) => {
                    self.conn = None;
                    eprintln!("loadgen relay: {e:#}; retrying");
                }
            }
            stats.retries += 1;
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }
}

/// Reads lines from `input` until it ends and POSTs them as JSON arrays:
/// a batch goes when it holds `batch_lines` lines or `batch_bytes` bytes, or
/// `batch_timeout` after its first line. Retries until accepted.
pub fn relay(cfg: &RelayConfig, input: impl Read + Send + 'static) -> anyhow::Result<RelayStats> {
    let url = parse_url(&cfg.url)?;
    let pem = std::fs::read(&cfg.ca_file)
        .with_context(|| format!("reading {}", cfg.ca_file.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut &pem[..]) {
        roots.add(c?)?;
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut poster = Poster {
        url,
        tls: Arc::new(tls),
        conn: None,
    };
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(4096);
    let reader = std::thread::spawn(move || -> std::io::Result<()> {
        let mut r = BufReader::with_capacity(1 << 16, input);
        loop {
            let mut line = Vec::with_capacity(512);
            if r.read_until(b'\n', &mut line)? == 0 {
                return Ok(());
            }
            if tx.send(line).is_err() {
                return Ok(());
            }
        }
    });
    let mut stats = RelayStats::default();
    let mut body = Vec::with_capacity(cfg.batch_bytes.min(16 << 20) + 4096);
    let mut n = 0usize;
    let mut deadline: Option<Instant> = None;
    let mut flush = |body: &mut Vec<u8>, n: &mut usize, stats: &mut RelayStats| {
        if *n == 0 {
            return;
        }
        body.push(b']');
        poster.post(body, stats);
        stats.batches += 1;
        body.clear();
        *n = 0;
    };
    loop {
        let got = match deadline {
            None => rx
                .recv()
                .map_err(|_| std::sync::mpsc::RecvTimeoutError::Disconnected),
            Some(d) => rx.recv_timeout(d.saturating_duration_since(Instant::now())),
        };
        match got {
            Ok(line) => {
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                body.push(if n == 0 { b'[' } else { b',' });
                relay_record(&line, &mut body);
                n += 1;
                stats.lines += 1;
                if n == 1 {
                    deadline = Some(Instant::now() + cfg.batch_timeout);
                }
                if n >= cfg.batch_lines || body.len() >= cfg.batch_bytes {
                    flush(&mut body, &mut n, &mut stats);
                    deadline = None;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                flush(&mut body, &mut n, &mut stats);
                deadline = None;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                flush(&mut body, &mut n, &mut stats);
                break;
            }
        }
    }
    reader
        .join()
        .map_err(|_| anyhow::anyhow!("the stdin reader panicked"))?
        .context("reading stdin")?;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse_and_name_their_packages() {
        assert_eq!("rsyslog".parse::<Peer>().unwrap(), Peer::Rsyslog);
        assert_eq!("syslog-ng".parse::<Peer>().unwrap(), Peer::SyslogNg);
        assert!("logstash".parse::<Peer>().is_err());
        let e = find(Peer::SyslogNg, Some(Path::new("/nonexistent/syslog-ng")))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("syslog-ng-core") && e.contains("syslog-ng-mod-http"),
            "{e}"
        );
        let e = find(Peer::Rsyslog, Some(Path::new("/nonexistent/rsyslogd")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("Debian package rsyslog"), "{e}");
    }

    #[test]
    fn rsyslog_config_has_the_reference_queue_and_the_filter() {
        let s = PeerSettings::default();
        let c = rsyslog_config(
            15514,
            Path::new("/tmp/w"),
            "/x/loadgen relay --url https://127.0.0.1:1/peer",
            &s,
        )
        .unwrap();
        for want in [
            r#"global(workDirectory="/tmp/w/spool" maxMessageSize="64k")"#,
            r#"input(type="imtcp" port="15514" address="127.0.0.1")"#,
            r#"action(type="mmjsonparse" cookie="")"#,
            r#"$!status == "fs_access_denied_error" or"#,
            r#"$!operation == "fs_delete")"#,
            r#"binary="/x/loadgen relay --url https://127.0.0.1:1/peer""#,
            r#"output="/tmp/w/relay.log""#,
            r#"queue.type="LinkedList""#,
            r#"queue.size="100000""#,
            r#"queue.workerThreads="16""#,
            r#"queue.workerThreadMinimumMessages="10000""#,
            r#"action.resumeRetryCount="-1""#,
            r#"queue.timeoutEnqueue="2000""#,
        ] {
            assert!(c.contains(want), "{want} missing from\n{c}");
        }
        for op in KEPT_OPERATIONS {
            assert!(c.contains(&format!("$!operation == \"{op}\"")), "{op}");
        }
        // balanced braces and parentheses
        assert_eq!(c.matches('{').count(), c.matches('}').count());
        assert_eq!(c.matches('(').count(), c.matches(')').count());
        assert!(rsyslog_config(1, Path::new("/tmp/a\"b"), "x", &s).is_err());
    }

    #[test]
    fn syslog_ng_config_batches_as_qbroker() {
        let s = PeerSettings {
            batch_lines: 500,
            batch_timeout_ms: 25,
            ..PeerSettings::default()
        };
        let c = syslog_ng_config(
            "3.38",
            15514,
            "https://127.0.0.1:8443/peer/syslog-ng",
            Path::new("/tmp/ca.pem"),
            &s,
        )
        .unwrap();
        assert!(c.starts_with("@version: 3.38\n"));
        for want in [
            r#"ip("127.0.0.1") port(15514) transport("tcp")"#,
            "flags(syslog-protocol)",
            r#"json-parser(prefix(".json."))"#,
            r#"match("^fs_(create_file|create_directory|read_data|write_data|write_metadata|rename|delete)$" value(".json.operation"))"#,
            r#""${.json.status}" eq "fs_access_denied_error""#,
            r#"url("https://127.0.0.1:8443/peer/syslog-ng")"#,
            "batch-lines(500)",
            "batch-timeout(25)",
            "batch-bytes(1048576)",
            "workers(2)",
            r#"tls(ca-file("/tmp/ca.pem") peer-verify(yes))"#,
            "flags(flow-control);",
            "max-connections(200)",
            "log-iw-size(2000000)",
        ] {
            assert!(c.contains(want), "{want} missing from\n{c}");
        }
        assert_eq!(c.matches('{').count(), c.matches('}').count());
        assert_eq!(c.matches('(').count(), c.matches(')').count());
    }

    #[test]
    fn versions() {
        assert_eq!(
            version_line("rsyslogd  8.2302.0 (aka 2023.02) compiled with:\n\tPLATFORM: x\n"),
            "rsyslogd 8.2302.0 (aka 2023.02)"
        );
        assert_eq!(
            version_line("syslog-ng 3 (3.38.1)\nConfig version: 3.38\n"),
            "syslog-ng 3 (3.38.1)"
        );
    }

    #[test]
    fn stat_lines() {
        let stat =
            "4242 (rs main Q:Reg) S 77 4242 4242 0 -1 4194560 1234 0 0 0 150 25 30 5 20 0 9 0 123";
        assert_eq!(parse_stat(stat), Some((77, 175, 35)));
        assert_eq!(parse_stat("junk"), None);
        let tck = 100;
        let (cpu, hwm) = tree_usage(std::process::id(), tck).unwrap();
        assert!(cpu >= 0.0 && hwm > 0);
        assert!(tree_usage(u32::MAX - 1, tck).is_err());
    }

    #[test]
    fn relay_records() {
        let mut out = Vec::new();
        relay_record(
            b"2026-12-02T10:00:00+00:00 qlg-c000-1 qumulo {\"a\":{\"b\":1}}\n",
            &mut out,
        );
        assert_eq!(out, br#"{"a":{"b":1}}"#);
        out.clear();
        relay_record(b"{\"x\":1}\r\n", &mut out);
        assert_eq!(out, br#"{"x":1}"#);
        out.clear();
        relay_record(b"no json \"here\"\n", &mut out);
        assert_eq!(out, br#""no json \"here\"""#);
        let u = parse_url("https://127.0.0.1:8443/peer/rsyslog").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("127.0.0.1", 8443, "/peer/rsyslog")
        );
        assert!(parse_url("http://x:1/").is_err());
        assert!(parse_url("https://x/").is_err());
    }
}
