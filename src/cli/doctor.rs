//! doctor: `qbroker doctor`, a check of everything a broker depends on, as a
//! pass/fail table.
//!
//! - Each configured cluster with REST credentials (`[[clusters]]` `api_url` or
//!   `api_host`): log in with the enrichment's [`ApiClient`], then read the
//!   audit settings (Qumulo 7.9+: `/v2/audit/destinations/` and each one's
//!   `/status`; older: the legacy `/v1/audit/syslog/config` and `/status`) and
//!   check that audit logging is enabled, in JSON, pointed at this broker, and
//!   connected.
//! - Each target the broker would use: the `[[targets]]` of the file, and
//!   those registered through the API (`/v1/targets`, `/v1/rmq/objects`), read
//!   from the registry (`[store]`: the SQLite file or the shared database) as
//!   `qbroker run` reads it, each named `target @<cluster> (registered)`.
//!   DNS, TCP, the TLS chain (with egress's own TLS configuration: the
//!   target's CA file, or the registered CA certificate), and a test POST of
//!   an empty batch with the target's headers and credentials; for an AMQP
//!   target the login, vhost and (passive) exchange, then a `mandatory` test
//!   publish of an empty batch that warns when no queue is bound for the
//!   routing key. A registration `run` could not use fails as it stands.
//! - This host: the syslog port is free or held by a qbroker, and the spool's
//!   disk has room for the spool caps.
//! - The API, when `[api]` is on: its certificate (unreadable or expired
//!   fails, expiring within 30 days warns) and its port (free, or held by
//!   the running broker: the listener there presents that certificate).
//!
//! "This broker", for the clusters' server address: the `--advertise`
//! addresses when given (a name or an IP, and a port, default `listen`'s);
//! otherwise `listen`, and when that is `0.0.0.0` or `::`, any address of this
//! host (one an UDP socket can bind to). Behind rsyslog the clusters send to
//! rsyslog: pass its address and port with `--advertise`, and
//! `--behind-rsyslog` when rsyslog runs `qbroker stdin` (no listener of its
//! own to check). Every network step has a timeout.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use qbroker::config::{ApiServerConfig, ClusterConfig, Config, Secret, TargetConfig};
use qbroker::enrich::client::{ApiClient, ApiError};
use qbroker::metrics::EnrichMetrics;
use qbroker::store::{Registration, Store};

/// What the checks need besides the configuration.
#[derive(Debug, Clone)]
pub struct Options {
    /// This broker's address(es) as the clusters see it: `HOST` or `HOST:PORT`.
    pub advertise: Vec<String>,
    /// Timeout of each network step.
    pub timeout: Duration,
    /// POST an empty test batch to each target.
    pub post: bool,
    /// qbroker runs behind rsyslog as `qbroker stdin` (omprog): the syslog
    /// port is rsyslog's, so its check is skipped.
    pub behind_rsyslog: bool,
}

/// One check's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pass,
    Fail,
    /// Not applicable, or not possible after an earlier failure.
    Skip,
    /// Works now, but worth a look (does not fail the run): a spool cap over
    /// the free disk, an AMQP target with nothing bound for its routing key.
    Warn,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Fail => "FAIL",
            Status::Skip => "skip",
            Status::Warn => "warn",
        }
    }
}

/// One row of the table.
#[derive(Debug, Clone)]
pub struct Check {
    /// `host`, `target <name>`, `cluster <name>`.
    pub subject: String,
    pub check: String,
    pub status: Status,
    pub detail: String,
}

fn row(subject: &str, check: &str, status: Status, detail: impl Into<String>) -> Check {
    Check {
        subject: subject.to_string(),
        check: check.to_string(),
        status,
        detail: detail.into(),
    }
}

/// Every check, in the order of the table.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    /// No check failed.
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.status != Status::Fail)
    }

    /// The table, and a summary line.
    pub fn render(&self) -> String {
        let w1 = self
            .checks
            .iter()
            .map(|c| c.subject.len())
            .max()
            .unwrap_or(0)
            .max(7);
        let w2 = self
            .checks
            .iter()
            .map(|c| c.check.len())
            .max()
            .unwrap_or(0)
            .max(5);
        let mut out = format!(
            "{:<w1$}  {:<w2$}  {:<6}  DETAIL\n",
            "SUBJECT", "CHECK", "RESULT"
        );
        for c in &self.checks {
            out.push_str(&format!(
                "{:<w1$}  {:<w2$}  {:<6}  {}\n",
                c.subject,
                c.check,
                c.status.as_str(),
                c.detail
            ));
        }
        let count = |s| self.checks.iter().filter(|c| c.status == s).count();
        out.push_str(&format!(
            "\n{} checks: {} passed, {} failed, {} warned, {} skipped\n",
            self.checks.len(),
            count(Status::Pass),
            count(Status::Fail),
            count(Status::Warn),
            count(Status::Skip)
        ));
        out
    }
}

/// Run every check. Must be called inside a tokio runtime.
pub async fn run(cfg: &Config, opts: &Options) -> Report {
    let here = Here::new(cfg, &opts.advertise);
    let port = if opts.behind_rsyslog {
        row(
            "host",
            &format!("syslog port {}", cfg.listen),
            Status::Skip,
            "--behind-rsyslog: rsyslog holds the syslog port and runs `qbroker stdin`",
        )
    } else {
        syslog_port(cfg, opts.timeout).await
    };
    let (registry, registered) = read_registry(cfg, opts.timeout).await;
    let mut checks = vec![port, spool_disk(cfg, registered.len())];
    checks.extend(spool_losses(&cfg.spool.dir));
    if let Some(api) = &cfg.api {
        checks.extend(api_listener(cfg, api, opts.timeout).await);
    }
    checks.extend(registry);
    let mut under_test: Vec<Result<Tested, Vec<Check>>> = cfg
        .targets
        .iter()
        .enumerate()
        .map(|(i, t)| {
            // A cluster routed to the target, for an AMQP target's routing key.
            let cluster = cfg
                .clusters
                .iter()
                .find(|c| c.target == i)
                .map(|c| c.name.clone());
            Ok(Tested::configured(t, cluster))
        })
        .collect();
    under_test.extend(registered.iter().map(Tested::registered));
    let targets = futures_util::future::join_all(under_test.into_iter().map(|t| async move {
        match t {
            Ok(t) => check_target(&t, opts).await,
            Err(rows) => rows,
        }
    }))
    .await;
    let clusters = futures_util::future::join_all(
        cfg.clusters
            .iter()
            .map(|c| check_cluster(cfg, c, &here, opts)),
    )
    .await;
    checks.extend(targets.into_iter().flatten());
    checks.extend(clusters.into_iter().flatten());
    if cfg.clusters.is_empty() {
        checks.push(row(
            "clusters",
            "audit settings",
            Status::Skip,
            "no [[clusters]] configured: nothing to ask (clusters that send unannounced are named from their HOSTNAME)",
        ));
    }
    Report { checks }
}

// ---------------------------------------------------------------------------
// This host.

async fn syslog_port(cfg: &Config, timeout: Duration) -> Check {
    let subject = "host";
    let what = format!("syslog port {}", cfg.listen);
    if cfg.listen.port() == 0 {
        return row(
            subject,
            &what,
            Status::Skip,
            "listen has port 0 (a test setting)",
        );
    }
    let in_use = match std::net::TcpListener::bind(cfg.listen) {
        Ok(_) => return row(subject, &what, Status::Pass, "free: qbroker can bind it"),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => true,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            // Ports below 1024 need CAP_NET_BIND_SERVICE (the unit grants it);
            // tell "free" from "taken" by connecting.
            let probe = probe_addr(cfg.listen);
            matches!(
                tokio::time::timeout(timeout, TcpStream::connect(probe)).await,
                Ok(Ok(_))
            )
        }
        Err(e) => {
            return row(subject, &what, Status::Fail, format!("cannot bind: {e}"));
        }
    };
    if !in_use {
        return row(
            subject,
            &what,
            Status::Pass,
            "free (this user may not bind a port below 1024; the service has CAP_NET_BIND_SERVICE)",
        );
    }
    match cfg.metrics_listen {
        Some(m) if healthz(probe_addr(m), timeout).await => row(
            subject,
            &what,
            Status::Pass,
            format!("in use by qbroker (its /healthz on {m} answers)"),
        ),
        _ => row(
            subject,
            &what,
            Status::Fail,
            format!(
                "in use by another program (rsyslog's imtcp?): see `ss -ltnp 'sport = :{}'`; move it, or point qbroker's listen elsewhere",
                cfg.listen.port()
            ),
        ),
    }
}

/// Where to connect to reach a listener bound to `addr`.
fn probe_addr(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::from(([127, 0, 0, 1], addr.port())),
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port()))
        }
        _ => addr,
    }
}

async fn healthz(addr: SocketAddr, timeout: Duration) -> bool {
    let ask = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET /healthz HTTP/1.0\r\nHost: qbroker\r\n\r\n")
            .await
            .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf);
        Some(text.starts_with("HTTP/1.") && text.contains(" 200 ") && text.contains("\"ok\""))
    };
    matches!(tokio::time::timeout(timeout, ask).await, Ok(Some(true)))
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// Bytes of the files under `dir` (the spools as they are now).
fn used_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => used_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// `registered`: the targets registered through the API, a spool each.
fn spool_disk(cfg: &Config, registered: usize) -> Check {
    let subject = "host";
    let dir = &cfg.spool.dir;
    let what = format!("spool disk {}", dir.display());
    // The spool directory may not exist before the first start: ask its nearest ancestor.
    let mut probe = dir.as_path();
    while !probe.exists() {
        match probe.parent() {
            Some(p) => probe = p,
            None => break,
        }
    }
    let stat = match rustix::fs::statvfs(probe) {
        Ok(s) => s,
        Err(e) => {
            return row(
                subject,
                &what,
                Status::Fail,
                format!("cannot stat {}: {e}", probe.display()),
            )
        }
    };
    if let Err(why) = qbroker::preflight::writable_dir(dir) {
        return row(
            subject,
            &what,
            Status::Fail,
            format!("{}: {why}", dir.display()),
        );
    }
    let free = stat.f_bavail.saturating_mul(stat.f_frsize);
    let targets = (cfg.targets.len() + registered).max(1) as u64;
    let cap = cfg.spool.max_bytes.saturating_mul(targets);
    let used = used_bytes(dir);
    let need = cap.saturating_sub(used);
    let detail = format!(
        "{} free; spool cap {} ({} x {} target(s)), {} in use",
        gib(free),
        gib(cap),
        gib(cfg.spool.max_bytes),
        targets,
        gib(used)
    );
    if free >= need {
        row(subject, &what, Status::Pass, detail)
    } else {
        // The broker runs, and pauses intake when the disk fills: worth a
        // look, not a failure (the shipped cap is larger than many disks).
        row(
            subject,
            &what,
            Status::Warn,
            format!("{detail}: a long outage would fill the disk before the cap (intake then pauses, nothing is lost); lower [spool] max_bytes or grow the disk"),
        )
    }
}

/// Per spool directory, the batches a start found missing (the spool's
/// `missing.log`): a fail row each, or one pass row when no spool lost any.
fn spool_losses(dir: &Path) -> Vec<Check> {
    let mut rows = Vec::new();
    let mut dirs: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .map(|e| {
            e.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    for d in dirs {
        let file = d.join(qbroker::spool::MISSING_FILE);
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let missing: u64 = lines
            .iter()
            .filter_map(|l| {
                l.split("missing=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum();
        let name = d
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        rows.push(row(
            &format!("target {name}"),
            "spool integrity",
            Status::Fail,
            format!(
                "{missing} spooled batch(es) found missing at {} start(s), last: {}; they cannot be sent. See {} and the log; remove the file once handled",
                lines.len(),
                lines.last().copied().unwrap_or(""),
                file.display()
            ),
        ));
    }
    if rows.is_empty() {
        rows.push(row(
            "host",
            "spool integrity",
            Status::Pass,
            "no spool found batches missing at start",
        ));
    }
    rows
}

// ---------------------------------------------------------------------------
// The registry and the API.

/// The registrations `qbroker run` would start targets for, read as it reads
/// them (`[store]`), and a row saying how that went. Nothing without a
/// registry (no `[api]`, no `[store] url`). A SQLite file that does not exist
/// yet is not created.
async fn read_registry(cfg: &Config, timeout: Duration) -> (Vec<Check>, Vec<Registration>) {
    let Some(store) = &cfg.store else {
        return (Vec::new(), Vec::new());
    };
    let subject = "registry";
    // Never the URL itself: it may carry the database password.
    let what = match qbroker::store::sqlite_path(store) {
        Some(path) => {
            if !path.exists() {
                return (
                    vec![row(
                        subject,
                        "read",
                        Status::Pass,
                        format!(
                            "{} does not exist yet: nothing registered through the API",
                            path.display()
                        ),
                    )],
                    Vec::new(),
                );
            }
            path.display().to_string()
        }
        None => "the shared MariaDB/MySQL registry ([store] url)".to_string(),
    };
    let read = async {
        let store = Store::open(store).await?;
        let all = store.list().await;
        store.close().await;
        all
    };
    // Opening waits up to 10 s for a connection; reading is one query.
    match tokio::time::timeout(timeout + Duration::from_secs(10), read).await {
        Ok(Ok(all)) => {
            let names: Vec<&str> = all.iter().map(|r| r.cluster_name.as_str()).collect();
            let detail = if all.is_empty() {
                format!("{what}: nothing registered through the API")
            } else {
                format!(
                    "{what}: {} target(s) registered through the API (clusters {})",
                    all.len(),
                    names.join(", ")
                )
            };
            (vec![row(subject, "read", Status::Pass, detail)], all)
        }
        Ok(Err(e)) => (
            vec![row(
                subject,
                "read",
                Status::Fail,
                format!("{what}: {e}; its registered targets are not checked"),
            )],
            Vec::new(),
        ),
        Err(_) => (
            vec![row(
                subject,
                "read",
                Status::Fail,
                format!(
                    "{what}: no answer within {timeout:?}; its registered targets are not checked"
                ),
            )],
            Vec::new(),
        ),
    }
}

/// A certificate expiring sooner than this warns.
const CERT_WARN_DAYS: i64 = 30;

/// The API listener: its certificate and its port.
async fn api_listener(cfg: &Config, api: &ApiServerConfig, timeout: Duration) -> Vec<Check> {
    let subject = "api";
    let (cert_path, key_path, self_signed) = qbroker::api::cert::paths(api, &cfg.data_dir);
    let mut pinned = None;
    let cert = if self_signed && !cert_path.exists() {
        row(
            subject,
            "certificate",
            Status::Pass,
            format!(
                "no api.cert_file: a self-signed certificate is made at the first start ({})",
                cert_path.display()
            ),
        )
    } else {
        match qbroker::api::cert::load(&cert_path, &key_path) {
            Err(e) => row(
                subject,
                "certificate",
                Status::Fail,
                format!("{e} (api.cert_file, api.key_file)"),
            ),
            Ok((_, chain)) => {
                let leaf = chain.first().cloned();
                let checked = leaf
                    .as_ref()
                    .map(|l| certificate_row(subject, &cert_path, l));
                pinned = leaf;
                checked
                    .unwrap_or_else(|| row(subject, "certificate", Status::Fail, "no certificate"))
            }
        }
    };
    vec![cert, api_port(api.listen, pinned, timeout).await]
}

/// The certificate row: expired fails, expiring within [`CERT_WARN_DAYS`]
/// warns.
fn certificate_row(
    subject: &str,
    path: &Path,
    leaf: &rustls::pki_types::CertificateDer<'_>,
) -> Check {
    let what = format!(
        "{} (sha256 {})",
        path.display(),
        qbroker::api::cert::fingerprint(leaf)
    );
    let not_after = match x509_parser::parse_x509_certificate(leaf) {
        Ok((_, c)) => c.validity().not_after.timestamp(),
        Err(e) => {
            return row(
                subject,
                "certificate",
                Status::Fail,
                format!("{}: not a readable X.509 certificate: {e}", path.display()),
            )
        }
    };
    let now = qbroker::metrics::unix_ms() / 1000;
    let date = httpdate::fmt_http_date(
        std::time::UNIX_EPOCH + Duration::from_secs(u64::try_from(not_after).unwrap_or(0)),
    );
    let days = (not_after - now).div_euclid(86_400);
    if not_after <= now {
        row(
            subject,
            "certificate",
            Status::Fail,
            format!("{what} expired on {date}: clients refuse it; renew it (api.cert_file, api.key_file; the service reads them at start)"),
        )
    } else if days < CERT_WARN_DAYS {
        row(
            subject,
            "certificate",
            Status::Warn,
            format!("{what} expires on {date}, in {days} day(s): renew it (api.cert_file, api.key_file; the service reads them at start)"),
        )
    } else {
        row(
            subject,
            "certificate",
            Status::Pass,
            format!("{what} valid until {date} ({days} days)"),
        )
    }
}

/// The API port: free, or held by this broker's API (the listener there
/// presents `pinned`, the API's certificate).
async fn api_port(
    listen: SocketAddr,
    pinned: Option<rustls::pki_types::CertificateDer<'static>>,
    timeout: Duration,
) -> Check {
    let subject = "api";
    let what = format!("port {listen}");
    if listen.port() == 0 {
        return row(
            subject,
            &what,
            Status::Skip,
            "listen has port 0 (a test setting)",
        );
    }
    let free = match std::net::TcpListener::bind(listen) {
        Ok(_) => return row(subject, &what, Status::Pass, "free: qbroker can bind it"),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => false,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            let probe = probe_addr(listen);
            !matches!(
                tokio::time::timeout(timeout, TcpStream::connect(probe)).await,
                Ok(Ok(_))
            )
        }
        Err(e) => return row(subject, &what, Status::Fail, format!("cannot bind: {e}")),
    };
    if free {
        return row(
            subject,
            &what,
            Status::Pass,
            "free (this user may not bind a port below 1024; the service has CAP_NET_BIND_SERVICE)",
        );
    }
    let ours = match pinned {
        Some(cert) => presents(probe_addr(listen), cert, timeout).await,
        None => false,
    };
    if ours {
        row(
            subject,
            &what,
            Status::Pass,
            "in use by qbroker: the listener there presents the API certificate",
        )
    } else {
        row(
            subject,
            &what,
            Status::Fail,
            format!(
                "in use by another program (it does not present the API certificate): see `ss -ltnp 'sport = :{}'`; move it, or set api.listen elsewhere",
                listen.port()
            ),
        )
    }
}

/// Whether a TLS server at `addr` completes a handshake with exactly `cert`.
async fn presents(
    addr: SocketAddr,
    cert: rustls::pki_types::CertificateDer<'static>,
    timeout: Duration,
) -> bool {
    let body = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(cert.as_ref())
    };
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    let tls = qbroker::net::ClientTls {
        trust: qbroker::net::Trust::RootsOrPinned(qbroker::net::Pem::new(
            pem.as_bytes(),
            "api certificate",
        )),
        identity: None,
        alpn: qbroker::net::Alpn::Http1,
    };
    let Ok(config) = tls.config() else {
        return false;
    };
    // A pinned certificate is accepted whatever name it holds.
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let handshake = async {
        let tcp = TcpStream::connect(addr).await.ok()?;
        connector.connect(name, tcp).await.ok()
    };
    matches!(tokio::time::timeout(timeout, handshake).await, Ok(Some(_)))
}

// ---------------------------------------------------------------------------
// Targets.

/// A target as the checks see it: its settings, its TLS client
/// configuration and its credentials, from the file or the registry.
struct Tested {
    subject: String,
    cfg: TargetConfig,
    /// The TLS client configuration, when the target uses TLS; why it cannot
    /// be built (a CA file that cannot be read, a PEM that does not parse).
    tls: Option<Result<rustls::ClientConfig, String>>,
    /// What the chain is checked against, for the hints.
    roots: String,
    /// The whole `Authorization` header of an HTTPS target's requests.
    authorization: Option<Secret>,
    /// Where the credentials come from, for the hint on a 401 or 403.
    credentials: &'static str,
    /// A client certificate is sent.
    client_cert: bool,
    /// A cluster routed to the target, for an AMQP target's routing key.
    cluster: Option<String>,
}

impl Tested {
    /// A `[[targets]]` entry.
    fn configured(t: &TargetConfig, cluster: Option<String>) -> Tested {
        Tested {
            subject: format!("target {}", t.name),
            tls: t
                .tls
                .then(|| qbroker::egress::client::tls_config(t).map_err(|e| e.to_string())),
            roots: match &t.ca_file {
                Some(p) => format!("ca_file {}", p.display()),
                None => "the system roots".to_string(),
            },
            authorization: t
                .token
                .as_ref()
                .map(|tok| Secret::new(format!("Bearer {}", tok.expose()))),
            credentials: if t.client_auth.is_some() {
                "token / token_file, client certificate"
            } else {
                "token / token_file"
            },
            client_cert: t.client_auth.is_some(),
            cfg: t.clone(),
            cluster,
        }
    }

    /// A registration, as `qbroker run` would start it; the rows of a
    /// registration it could not use.
    fn registered(reg: &Registration) -> Result<Tested, Vec<Check>> {
        let name = qbroker::targets::registered_name(&reg.cluster_name);
        let subject = format!("target {name} (registered)");
        let invalid = |why: String| {
            vec![row(
                &subject,
                "registration",
                Status::Fail,
                format!(
                    "cluster {:?}: the broker cannot use this registration: {why}; fix it through the API (PATCH /v1/targets/{})",
                    reg.cluster_name, reg.cluster_name
                ),
            )]
        };
        let (cfg, auth, material) = match (
            qbroker::targets::target_config_of(reg),
            qbroker::targets::authorization_of(reg),
            qbroker::targets::tls_material_of(reg),
        ) {
            (Ok(c), Ok(a), Ok(m)) => (c, a, m),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return Err(invalid(e.0)),
        };
        let tls = cfg.tls.then(|| {
            qbroker::egress::client::tls_config_from_pem(&cfg, &material).map_err(|e| e.to_string())
        });
        let (authorization, _) = auth.header();
        Ok(Tested {
            subject,
            tls,
            roots: if reg.ca_certificate.is_some() {
                "the registered ca_certificate".to_string()
            } else {
                "the system roots".to_string()
            },
            authorization,
            credentials: if reg.client_certificate.is_some() {
                "the registered token or username and password, client certificate"
            } else {
                "the registered token or username and password"
            },
            client_cert: material.client.is_some(),
            cfg,
            cluster: Some(reg.cluster_name.clone()),
        })
    }
}

async fn check_target(tested: &Tested, opts: &Options) -> Vec<Check> {
    let t = &tested.cfg;
    let subject = tested.subject.clone();
    let timeout = opts.timeout;
    let mut out = Vec::new();
    let steps: &[&str] = if t.amqp.is_some() {
        &["dns", "tcp", "tls", "amqp", "publish"]
    } else {
        &["dns", "tcp", "tls", "post"]
    };
    let skip_rest = |out: &mut Vec<Check>, from: usize, why: &str| {
        for check in steps.iter().skip(from) {
            out.push(row(&subject, check, Status::Skip, why));
        }
    };

    let started = Instant::now();
    let addrs: Vec<SocketAddr> =
        match tokio::time::timeout(timeout, tokio::net::lookup_host((t.host.as_str(), t.port)))
            .await
        {
            Ok(Ok(a)) => a.collect(),
            Ok(Err(e)) => {
                out.push(row(
                    &subject,
                    "dns",
                    Status::Fail,
                    format!("{}: {e}", t.host),
                ));
                skip_rest(&mut out, 1, "needs dns");
                return out;
            }
            Err(_) => {
                out.push(row(
                    &subject,
                    "dns",
                    Status::Fail,
                    format!("{}: no answer within {timeout:?}", t.host),
                ));
                skip_rest(&mut out, 1, "needs dns");
                return out;
            }
        };
    let list: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
    out.push(row(
        &subject,
        "dns",
        Status::Pass,
        format!(
            "{} -> {} ({} ms)",
            t.host,
            list.join(", "),
            started.elapsed().as_millis()
        ),
    ));

    let mut errors = Vec::new();
    let mut stream = None;
    for addr in &addrs {
        let started = Instant::now();
        match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                stream = Some((s, *addr, started.elapsed()));
                break;
            }
            Ok(Err(e)) => errors.push(format!("{addr}: {e}")),
            Err(_) => errors.push(format!("{addr}: no answer within {timeout:?}")),
        }
    }
    let Some((tcp, addr, took)) = stream else {
        out.push(row(&subject, "tcp", Status::Fail, errors.join("; ")));
        skip_rest(&mut out, 2, "needs tcp");
        return out;
    };
    let _ = tcp.set_nodelay(true);
    out.push(row(
        &subject,
        "tcp",
        Status::Pass,
        format!("connected to {addr} in {} ms", took.as_millis()),
    ));

    let config = match &tested.tls {
        None if t.amqp.is_some() => {
            out.push(row(&subject, "tls", Status::Skip, "amqp:// target: no TLS"));
            drop(tcp);
            out.extend(amqp_checks(&subject, tested, None, opts).await);
            return out;
        }
        None => {
            out.push(row(&subject, "tls", Status::Skip, "http:// target: no TLS"));
            out.push(match qbroker::egress::client::connector(t, None) {
                Ok(connector) => post_check(tested, opts, &connector, TokioIo::new(tcp)).await,
                Err(e) => row(&subject, "post", Status::Fail, e.to_string()),
            });
            return out;
        }
        Some(Ok(c)) => c.clone(),
        Some(Err(e)) => {
            out.push(row(&subject, "tls", Status::Fail, e.clone()));
            skip_rest(&mut out, 3, "needs tls");
            return out;
        }
    };
    let connector = match qbroker::egress::client::connector(t, Some(config.clone())) {
        Ok(c) => c,
        Err(e) => {
            out.push(row(&subject, "tls", Status::Fail, e.to_string()));
            skip_rest(&mut out, 3, "needs tls");
            return out;
        }
    };
    let roots = &tested.roots;
    let tls = match tokio::time::timeout(timeout, connector.tls_handshake(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let hint = if e.to_string().contains("certificate") {
                format!(" (checked against {roots}: is it the CA that signed the target's certificate, and does the certificate name {}?)", t.host)
            } else {
                String::new()
            };
            out.push(row(
                &subject,
                "tls",
                Status::Fail,
                format!("handshake: {e}{hint}"),
            ));
            skip_rest(&mut out, 3, "needs tls");
            return out;
        }
        Err(_) => {
            out.push(row(
                &subject,
                "tls",
                Status::Fail,
                format!("no handshake within {timeout:?}"),
            ));
            skip_rest(&mut out, 3, "needs tls");
            return out;
        }
    };
    let (_, session) = tls.get_ref();
    let version = session
        .protocol_version()
        .map_or("?".to_string(), |v| format!("{v:?}"));
    let client_cert = if tested.client_cert {
        ", client certificate sent"
    } else {
        ""
    };
    out.push(row(
        &subject,
        "tls",
        Status::Pass,
        format!("chain verified against {roots}, {version}{client_cert}"),
    ));
    if t.amqp.is_some() {
        drop(tls);
        out.extend(amqp_checks(&subject, tested, Some(config), opts).await);
        return out;
    }
    out.push(post_check(tested, opts, &connector, TokioIo::new(tls)).await);
    out
}

/// An AMQP target: log in, open the vhost, declare the exchange passively
/// (`amqp`); then a `mandatory` test publish of an empty batch that tells
/// whether a queue is bound for the routing key (`publish`: warn when not).
async fn amqp_checks(
    subject: &str,
    tested: &Tested,
    tls: Option<rustls::ClientConfig>,
    opts: &Options,
) -> Vec<Check> {
    use qbroker::egress::amqp::Probe;
    let publish = opts.post.then(|| {
        tested
            .cluster
            .clone()
            .unwrap_or_else(|| "qbroker-doctor".to_string())
    });
    let probe = qbroker::egress::amqp::probe(&tested.cfg, tls, publish, opts.timeout).await;
    probe
        .into_iter()
        .map(|(check, result)| {
            let (status, detail) = match result {
                Probe::Pass(d) => (Status::Pass, d),
                Probe::Warn(d) => (Status::Warn, d),
                Probe::Fail(d) => (Status::Fail, d),
                Probe::Skip(d) => (Status::Skip, d),
            };
            row(subject, check, status, detail)
        })
        .collect()
}

async fn post_check<IO>(
    tested: &Tested,
    opts: &Options,
    connector: &qbroker::egress::Connector,
    io: IO,
) -> Check
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (subject, t) = (tested.subject.as_str(), &tested.cfg);
    if !opts.post {
        return row(subject, "post", Status::Skip, "--no-post");
    }
    let started = Instant::now();
    match tokio::time::timeout(
        opts.timeout,
        post(t, tested.authorization.as_ref(), connector, io),
    )
    .await
    {
        Ok(Ok((status, _))) if (200..300).contains(&status) => row(
            subject,
            "post",
            Status::Pass,
            format!(
                "HTTP {status} in {} ms to an empty test batch",
                started.elapsed().as_millis()
            ),
        ),
        Ok(Ok((status, text))) if status == 401 || status == 403 => row(
            subject,
            "post",
            Status::Fail,
            format!(
                "HTTP {status}: the target refused the credentials ({}): {}",
                tested.credentials,
                snippet(&text)
            ),
        ),
        Ok(Ok((status, text))) => row(
            subject,
            "post",
            Status::Fail,
            format!("HTTP {status} to POST {}: {}", t.path, snippet(&text)),
        ),
        Ok(Err(e)) => row(subject, "post", Status::Fail, e),
        Err(_) => row(
            subject,
            "post",
            Status::Fail,
            format!("no answer within {:?}", opts.timeout),
        ),
    }
}

fn snippet(text: &str) -> String {
    let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    one_line.chars().take(200).collect()
}

/// POST an empty batch of the egress schema, with egress's headers.
async fn post<IO>(
    t: &TargetConfig,
    authorization: Option<&Secret>,
    connector: &qbroker::egress::Connector,
    io: IO,
) -> Result<(u16, String), String>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let mut sender = connector
        .http_handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    let batch_id = format!("qbroker-doctor-{}", uuid::Uuid::now_v7());
    let body = serde_json::json!({
        "schema": qbroker::batch::SCHEMA,
        "cluster": "qbroker-doctor",
        "filer_id": null,
        "batch_id": batch_id,
        "events": [],
    })
    .to_string();
    let mut request = http::Request::post(t.path.as_str())
        .header(http::header::HOST, qbroker::egress::host_header(t))
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::CONTENT_LENGTH, body.len())
        .header(http::header::USER_AGENT, qbroker::egress::USER_AGENT)
        .header("idempotency-key", batch_id.as_str());
    if let Some(auth) = authorization {
        request = request.header(http::header::AUTHORIZATION, auth.expose());
    }
    let request = request
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("cannot build the request: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let status = response.status().as_u16();
    let text = Limited::new(response.into_body(), 64 * 1024)
        .collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
        .unwrap_or_default();
    Ok((status, text))
}

// ---------------------------------------------------------------------------
// Clusters.

/// Where this broker is, as the clusters should see it.
struct Here {
    /// (host, port) pairs from `--advertise`.
    advertised: Vec<(String, u16)>,
    listen: SocketAddr,
}

impl Here {
    fn new(cfg: &Config, advertise: &[String]) -> Here {
        let default_port = cfg.listen.port();
        let advertised = advertise
            .iter()
            .map(|a| split_host_port(a, default_port))
            .collect();
        Here {
            advertised,
            listen: cfg.listen,
        }
    }

    /// A host for the fix hints.
    fn host_hint(&self) -> String {
        match self.advertised.first() {
            Some((h, _)) => h.clone(),
            None if self.listen.ip().is_unspecified() => "<this broker's address>".to_string(),
            None => self.listen.ip().to_string(),
        }
    }

    fn port_hint(&self) -> u16 {
        self.advertised
            .first()
            .map_or(self.listen.port(), |(_, p)| *p)
    }

    fn describe(&self) -> String {
        if self.advertised.is_empty() {
            if self.listen.ip().is_unspecified() {
                format!(
                    "any address of this host, port {} (listen)",
                    self.listen.port()
                )
            } else {
                format!("{} (listen)", self.listen)
            }
        } else {
            let list: Vec<String> = self
                .advertised
                .iter()
                .map(|(h, p)| format!("{h}:{p}"))
                .collect();
            format!("--advertise {}", list.join(", "))
        }
    }

    /// Whether a cluster's `server_address:server_port` reaches this broker.
    async fn matches(&self, address: &str, port: u16, timeout: Duration) -> Result<String, String> {
        let address = address.trim().trim_start_matches('[').trim_end_matches(']');
        if address.is_empty() {
            return Err("no server address set".to_string());
        }
        let resolved = resolve(address, timeout).await;
        if self.advertised.is_empty() {
            if port != self.listen.port() {
                return Err(format!(
                    "port {port}, but this broker listens on {}",
                    self.listen.port()
                ));
            }
            let ips = resolved?;
            let ok = if self.listen.ip().is_unspecified() {
                ips.iter().any(|ip| is_local(*ip))
            } else {
                ips.contains(&self.listen.ip())
            };
            return if ok {
                Ok(format!(
                    "{address}:{port} is this broker ({})",
                    self.describe()
                ))
            } else {
                Err(format!(
                    "{address}:{port} ({}) is not this broker ({})",
                    ips.iter()
                        .map(IpAddr::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                    self.describe()
                ))
            };
        }
        for (host, p) in &self.advertised {
            if *p != port {
                continue;
            }
            if host.eq_ignore_ascii_case(address) {
                return Ok(format!(
                    "{address}:{port} is this broker (--advertise {host}:{p})"
                ));
            }
            if let (Ok(theirs), Ok(ours)) = (&resolved, resolve(host, timeout).await) {
                if theirs.iter().any(|ip| ours.contains(ip)) {
                    return Ok(format!(
                        "{address}:{port} is this broker (--advertise {host}:{p})"
                    ));
                }
            }
        }
        Err(format!(
            "{address}:{port} is not this broker ({})",
            self.describe()
        ))
    }
}

fn split_host_port(text: &str, default_port: u16) -> (String, u16) {
    if let Ok(sa) = text.parse::<SocketAddr>() {
        return (sa.ip().to_string(), sa.port());
    }
    if let Some(inner) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
        return (inner.to_string(), default_port);
    }
    match text.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => match p.parse() {
            Ok(port) => (h.to_string(), port),
            Err(_) => (text.to_string(), default_port),
        },
        _ => (text.to_string(), default_port),
    }
}

async fn resolve(host: &str, timeout: Duration) -> Result<Vec<IpAddr>, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    match tokio::time::timeout(timeout, tokio::net::lookup_host((host, 0))).await {
        Ok(Ok(addrs)) => Ok(addrs.map(|a| a.ip()).collect()),
        Ok(Err(e)) => Err(format!("{host}: {e}")),
        Err(_) => Err(format!("{host}: no DNS answer within {timeout:?}")),
    }
}

/// An address of this host: one a socket can bind to.
fn is_local(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

const ENABLED: &str = "audit enabled";
const JSON: &str = "audit json";
const POINTED: &str = "audit destination";
const CONNECTED: &str = "audit connected";

async fn check_cluster(cfg: &Config, c: &ClusterConfig, here: &Here, opts: &Options) -> Vec<Check> {
    let subject = format!("cluster {}", c.name);
    let Some(api) = &c.api else {
        return vec![row(
            &subject,
            "audit settings",
            Status::Skip,
            "no api_url/api_host: give the cluster REST credentials to check its audit settings",
        )];
    };
    let timeout = opts.timeout;
    let client = match ApiClient::new(
        Arc::from(c.name.as_str()),
        api,
        1,
        timeout,
        cfg.enrich.token_renew,
        Arc::new(EnrichMetrics::default()),
    ) {
        Ok(c) => Arc::new(c),
        Err(e) => return vec![row(&subject, "rest api", Status::Fail, e.to_string())],
    };
    let mut out = Vec::new();
    let api_at = format!("https://{}:{}", api.host, api.port);
    // Overall bound: a login and the call, each already bounded by `timeout`.
    let who = tokio::time::timeout(timeout * 3, client.get_json("/v1/session/who-am-i")).await;
    match who {
        Ok(Ok(v)) => out.push(row(
            &subject,
            "rest api",
            Status::Pass,
            format!(
                "{api_at}: logged in as {}",
                v["name"].as_str().unwrap_or("(an access token)")
            ),
        )),
        Ok(Err(e)) => {
            let hint = match &e {
                ApiError::Unauthorized(_) => " (username/password or access_token)",
                ApiError::Connect(m) if m.contains("tls") => {
                    " (ca_file, or insecure_skip_verify for a self-signed cluster)"
                }
                _ => "",
            };
            out.push(row(
                &subject,
                "rest api",
                Status::Fail,
                format!("{api_at}: {e}{hint}"),
            ));
            for check in [ENABLED, JSON, POINTED, CONNECTED] {
                out.push(row(&subject, check, Status::Skip, "needs the REST API"));
            }
            return out;
        }
        Err(_) => {
            out.push(row(
                &subject,
                "rest api",
                Status::Fail,
                format!("{api_at}: no answer within {:?}", timeout * 3),
            ));
            for check in [ENABLED, JSON, POINTED, CONNECTED] {
                out.push(row(&subject, check, Status::Skip, "needs the REST API"));
            }
            return out;
        }
    }
    match client.get_json("/v2/audit/destinations/").await {
        Ok(list) => out.extend(v2_checks(&subject, &client, &list, here, timeout).await),
        Err(ApiError::Status { status: 404, .. }) => {
            out.extend(v1_checks(&subject, &client, here, timeout).await)
        }
        Err(e) => {
            out.push(row(
                &subject,
                "audit settings",
                Status::Fail,
                format!("GET /v2/audit/destinations/: {e}"),
            ));
        }
    }
    out
}

/// Before Qumulo 7.9: the one audit syslog server.
async fn v1_checks(
    subject: &str,
    client: &Arc<ApiClient>,
    here: &Here,
    timeout: Duration,
) -> Vec<Check> {
    let mut out = Vec::new();
    let config = match client.get_json("/v1/audit/syslog/config").await {
        Ok(v) => v,
        Err(e) => {
            out.push(row(
                subject,
                "audit settings",
                Status::Fail,
                format!("GET /v1/audit/syslog/config: {e}"),
            ));
            return out;
        }
    };
    let fix = "qq audit_set_syslog_config";
    if config["enabled"].as_bool() == Some(true) {
        out.push(row(
            subject,
            ENABLED,
            Status::Pass,
            "audit syslog enabled (/v1/audit/syslog/config)",
        ));
    } else {
        out.push(row(
            subject,
            ENABLED,
            Status::Fail,
            format!("audit syslog is disabled; fix: {fix} --enable"),
        ));
    }
    let format = config["format"].as_str().unwrap_or("");
    if format.eq_ignore_ascii_case("json") {
        out.push(row(subject, JSON, Status::Pass, "format json"));
    } else {
        out.push(row(subject, JSON, Status::Fail, format!("format {format:?}: qbroker parses CSV too, but the Varonis integration uses JSON (it carries the owner of metadata changes); fix: {fix} --json")));
    }
    let address = config["server_address"].as_str().unwrap_or("");
    let port = config["server_port"].as_u64().unwrap_or(0) as u16;
    match here.matches(address, port, timeout).await {
        Ok(d) => out.push(row(subject, POINTED, Status::Pass, d)),
        Err(d) => out.push(row(
            subject,
            POINTED,
            Status::Fail,
            format!(
                "{d}; fix: {fix} --server-address {} --server-port {}",
                here.host_hint(),
                here.port_hint()
            ),
        )),
    }
    match client.get_json("/v1/audit/syslog/status").await {
        Ok(v) => {
            let status = v["connection_status"].as_str().unwrap_or("?");
            if status == "AUDIT_LOG_CONNECTED" {
                out.push(row(subject, CONNECTED, Status::Pass, status));
            } else {
                let message = v["error_message"].as_str().unwrap_or("");
                out.push(row(
                    subject,
                    CONNECTED,
                    Status::Fail,
                    format!(
                        "{status}{}{message} (qq audit_get_syslog_status)",
                        if message.is_empty() { "" } else { ": " }
                    ),
                ));
            }
        }
        Err(e) => out.push(row(
            subject,
            CONNECTED,
            Status::Fail,
            format!("GET /v1/audit/syslog/status: {e}"),
        )),
    }
    out
}

/// Qumulo 7.9+: audit destinations; one SYSLOG destination should be this broker.
async fn v2_checks(
    subject: &str,
    client: &Arc<ApiClient>,
    list: &Value,
    here: &Here,
    timeout: Duration,
) -> Vec<Check> {
    let mut out = Vec::new();
    let empty = Vec::new();
    let destinations = list["destinations"]
        .as_array()
        .or_else(|| list.as_array())
        .unwrap_or(&empty);
    // (id, name, config, why not / how it matches)
    let mut seen = Vec::new();
    let mut ours: Vec<(String, String, Value, String)> = Vec::new();
    for d in destinations {
        let config = if d["config"].is_object() {
            &d["config"]
        } else {
            d
        };
        let kind = config["type"].as_str().unwrap_or("SYSLOG");
        if !kind.eq_ignore_ascii_case("SYSLOG") {
            continue;
        }
        let id = d["id"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| d["id"].to_string());
        let name = config["name"].as_str().unwrap_or("").to_string();
        let address = config["server_address"].as_str().unwrap_or("");
        let port = config["server_port"].as_u64().unwrap_or(0) as u16;
        seen.push(format!("{name} (id {id}) -> {address}:{port}"));
        if let Ok(how) = here.matches(address, port, timeout).await {
            ours.push((id, name, config.clone(), how));
        }
    }
    // Prefer an enabled one, should there be several.
    ours.sort_by_key(|(_, _, c, _)| c["enabled"].as_bool() != Some(true));
    let Some((id, name, config, how)) = ours.into_iter().next() else {
        let found = if seen.is_empty() {
            "none".to_string()
        } else {
            seen.join("; ")
        };
        let fix = format!(
            "qq audit_create_destination --name qbroker --json --server-address {} --server-port {} --enable",
            here.host_hint(),
            here.port_hint()
        );
        out.push(row(
            subject,
            ENABLED,
            Status::Skip,
            "no destination of this broker",
        ));
        out.push(row(
            subject,
            JSON,
            Status::Skip,
            "no destination of this broker",
        ));
        out.push(row(
            subject,
            POINTED,
            Status::Fail,
            format!(
            "no SYSLOG audit destination points at this broker ({}); found: {found}; fix: {fix}",
            here.describe()
        ),
        ));
        out.push(row(
            subject,
            CONNECTED,
            Status::Skip,
            "no destination of this broker",
        ));
        return out;
    };
    let address = config["server_address"].as_str().unwrap_or("");
    let port = config["server_port"].as_u64().unwrap_or(0);
    if config["enabled"].as_bool() == Some(true) {
        out.push(row(
            subject,
            ENABLED,
            Status::Pass,
            format!("destination {name} (id {id}) enabled (/v2/audit/destinations)"),
        ));
    } else {
        out.push(row(subject, ENABLED, Status::Fail, format!(
            "destination {name} (id {id}) is disabled; fix: qq audit_modify_destination --id {id} --enable"
        )));
    }
    let format = config["format"]
        .as_str()
        .or_else(|| config["log_format"].as_str())
        .unwrap_or("");
    if format.eq_ignore_ascii_case("json") {
        out.push(row(subject, JSON, Status::Pass, "format json"));
    } else {
        out.push(row(subject, JSON, Status::Fail, format!(
            "format {format:?}: the Varonis integration uses JSON; fix: qq audit_set_destination --id {id} --name {name} --json --server-address {address} --server-port {port} --enable"
        )));
    }
    out.push(row(
        subject,
        POINTED,
        Status::Pass,
        format!("destination {name} (id {id}): {how}"),
    ));
    let path = format!("/v2/audit/destinations/{id}/status");
    match client.get_json(&path).await {
        Ok(v) => {
            let nodes = v["node_statuses"].as_array().cloned().unwrap_or_default();
            let bad: Vec<String> = nodes
                .iter()
                .filter(|n| {
                    n["status"]["connection_status"].as_str() != Some("AUDIT_DESTINATION_CONNECTED")
                })
                .map(|n| {
                    let status = n["status"]["connection_status"].as_str().unwrap_or("?");
                    let message = n["status"]["error_message"].as_str().unwrap_or("");
                    format!(
                        "node {}: {status}{}{message}",
                        n["node_id"],
                        if message.is_empty() { "" } else { ": " }
                    )
                })
                .collect();
            if nodes.is_empty() {
                out.push(row(
                    subject,
                    CONNECTED,
                    Status::Fail,
                    format!("{path}: no node status"),
                ));
            } else if bad.is_empty() {
                out.push(row(
                    subject,
                    CONNECTED,
                    Status::Pass,
                    format!("all {} node(s) AUDIT_DESTINATION_CONNECTED", nodes.len()),
                ));
            } else {
                out.push(row(
                    subject,
                    CONNECTED,
                    Status::Fail,
                    format!(
                        "{} (qq audit_get_destination_status --id {id})",
                        bad.join("; ")
                    ),
                ));
            }
        }
        Err(e) => out.push(row(
            subject,
            CONNECTED,
            Status::Fail,
            format!("GET {path}: {e}"),
        )),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_forms() {
        assert_eq!(split_host_port("10.0.0.5", 514), ("10.0.0.5".into(), 514));
        assert_eq!(
            split_host_port("10.0.0.5:5514", 514),
            ("10.0.0.5".into(), 5514)
        );
        assert_eq!(
            split_host_port("broker.example", 514),
            ("broker.example".into(), 514)
        );
        assert_eq!(
            split_host_port("broker.example:1", 514),
            ("broker.example".into(), 1)
        );
        assert_eq!(split_host_port("[::1]:7", 514), ("::1".into(), 7));
        assert_eq!(split_host_port("[::1]", 514), ("::1".into(), 514));
        assert_eq!(split_host_port("::1", 514), ("::1".into(), 514));
    }

    #[test]
    fn loopback_is_local_and_test_net_is_not() {
        assert!(is_local("127.0.0.1".parse().unwrap()));
        assert!(!is_local("192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn the_report_fails_on_any_failure() {
        let mut r = Report {
            checks: vec![
                row("host", "a", Status::Pass, ""),
                row("host", "b", Status::Skip, ""),
            ],
        };
        assert!(r.ok());
        r.checks.push(row("target t", "tls", Status::Fail, "bad"));
        assert!(!r.ok());
        let text = r.render();
        assert!(text.contains("target t  tls    FAIL    bad"), "{text}");
        assert!(
            text.contains("3 checks: 1 passed, 1 failed, 0 warned, 1 skipped"),
            "{text}"
        );
    }
}
