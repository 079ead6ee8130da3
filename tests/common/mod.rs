//! Shared pieces of the integration tests: a real HTTPS sink with a certificate
//! made for the test, the broker run in-process on loopback, syslog senders, and
//! event identities that tell exactly what was lost or duplicated.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

/// A CA and a server certificate for 127.0.0.1, ::1 and localhost, and a
/// client certificate signed by the same CA.
pub struct Pki {
    pub ca_pem: String,
    pub ca_der: CertificateDer<'static>,
    pub cert: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
    pub client_cert_pem: String,
    pub client_key_pem: String,
}

impl Pki {
    pub fn new() -> Pki {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "qbroker test CA");
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let leaf_params = rcgen::CertificateParams::new(vec![
            "127.0.0.1".to_string(),
            "::1".to_string(),
            "localhost".to_string(),
        ])
        .unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = leaf_params.signed_by(&leaf_key, &ca).unwrap();
        let mut client_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        client_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "qbroker");
        let client_key = rcgen::KeyPair::generate().unwrap();
        let client = client_params.signed_by(&client_key, &ca).unwrap();
        Pki {
            ca_pem: ca.pem(),
            ca_der: ca.der().clone(),
            cert: leaf.der().clone(),
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
            client_cert_pem: client.pem(),
            client_key_pem: client_key.serialize_pem(),
        }
    }

    fn acceptor(&self, require_client_cert: bool) -> TlsAcceptor {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = if require_client_cert {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(self.ca_der.clone()).unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let config = builder
            .with_single_cert(vec![self.cert.clone()], self.key.clone_key())
            .unwrap();
        TlsAcceptor::from(Arc::new(config))
    }
}

/// How the sink answers.
#[derive(Debug, Clone)]
pub enum Mode {
    Accept,
    /// Answer this status, with an optional Retry-After in seconds.
    Fail(u16, Option<u64>),
    /// Wait, then accept.
    Delay(Duration),
    /// Answer this status with the request's Authorization header in the body,
    /// as a careless target might.
    FailEcho(u16),
    /// 413 for a batch of more than this many events (a proxy's body limit).
    TooLarge(usize),
}

/// One request the sink received.
#[derive(Debug, Clone)]
pub struct Received {
    pub idempotency_key: String,
    pub authorization: Option<String>,
    pub gzip: bool,
    pub body: Value,
    pub accepted: bool,
    pub at: Instant,
}

#[derive(Default)]
struct SinkState {
    requests: Mutex<Vec<Received>>,
    /// Idempotency-Key of every request as it arrives, answered or not.
    started: Mutex<Vec<String>>,
    /// Protocol violations seen (wrong headers, bodies that are not the schema).
    problems: Mutex<Vec<String>>,
    mode: Mutex<Option<Mode>>,
    count: AtomicU64,
}

/// A Varonis stand-in: HTTPS on loopback, recording every request.
pub struct Sink {
    pub addr: SocketAddr,
    pub ca_file: PathBuf,
    /// A client certificate and key the sink accepts, when it requires one.
    pub client_cert_file: PathBuf,
    pub client_key_file: PathBuf,
    require_client_cert: bool,
    pki: Arc<Pki>,
    state: Arc<SinkState>,
    stop: Option<watch::Sender<bool>>,
    runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

impl Sink {
    pub fn start() -> Sink {
        Sink::start_with(false)
    }

    /// A sink that accepts only TLS clients with a certificate of its CA.
    pub fn start_mtls() -> Sink {
        Sink::start_with(true)
    }

    fn start_with(require_client_cert: bool) -> Sink {
        let dir = tempfile::tempdir().unwrap();
        let pki = Arc::new(Pki::new());
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, &pki.ca_pem).unwrap();
        let client_cert_file = dir.path().join("client.pem");
        let client_key_file = dir.path().join("client.key");
        std::fs::write(&client_cert_file, &pki.client_cert_pem).unwrap();
        std::fs::write(&client_key_file, &pki.client_key_pem).unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut sink = Sink {
            addr,
            ca_file,
            client_cert_file,
            client_key_file,
            require_client_cert,
            pki,
            state: Arc::new(SinkState::default()),
            stop: None,
            runtime,
            _dir: dir,
        };
        sink.set_mode(Mode::Accept);
        sink.serve(listener);
        sink
    }

    pub fn url(&self) -> String {
        format!("https://{}/events", self.addr)
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = Some(mode);
    }

    /// Stop listening and drop every connection: the target is away.
    pub fn go_away(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    /// Listen again on the same port.
    pub fn come_back(&mut self) {
        let addr = self.addr;
        let listener = wait_for(Duration::from_secs(10), || {
            self.runtime
                .block_on(async { TcpListener::bind(addr).await.ok() })
        });
        self.serve(listener);
    }

    fn serve(&mut self, listener: TcpListener) {
        let (stop_tx, stop_rx) = watch::channel(false);
        self.stop = Some(stop_tx);
        let acceptor = self.pki.acceptor(self.require_client_cert);
        let state = self.state.clone();
        self.runtime.spawn(async move {
            let mut stop = stop_rx.clone();
            loop {
                let (tcp, _) = tokio::select! {
                    _ = stop.changed() => return,
                    r = listener.accept() => match r { Ok(a) => a, Err(_) => continue },
                };
                let (acceptor, state, mut stop) =
                    (acceptor.clone(), state.clone(), stop_rx.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = service_fn(move |req| handle(state.clone(), req));
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service);
                    tokio::select! {
                        _ = stop.changed() => {},
                        _ = conn => {},
                    }
                });
            }
        });
    }

    /// Protocol violations the sink saw; tests assert there are none.
    pub fn problems(&self) -> Vec<String> {
        self.state.problems.lock().unwrap().clone()
    }

    pub fn requests(&self) -> Vec<Received> {
        self.state.requests.lock().unwrap().clone()
    }

    /// Idempotency-Key of every request that arrived, including ones whose
    /// client gave up before the answer.
    pub fn started_keys(&self) -> Vec<String> {
        self.state.started.lock().unwrap().clone()
    }

    pub fn request_count(&self) -> u64 {
        self.state.count.load(Ordering::SeqCst)
    }

    /// Bodies of accepted requests.
    pub fn accepted(&self) -> Vec<Received> {
        self.requests().into_iter().filter(|r| r.accepted).collect()
    }

    /// Every event of every accepted batch, with its batch's cluster.
    pub fn events(&self) -> Vec<(String, Value)> {
        self.accepted()
            .iter()
            .flat_map(|r| {
                let cluster = r.body["cluster"].as_str().unwrap().to_string();
                r.body["events"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(move |e| (cluster.clone(), e.clone()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

async fn handle(
    state: Arc<SinkState>,
    req: hyper::Request<Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, std::convert::Infallible> {
    state.count.fetch_add(1, Ordering::SeqCst);
    let mode = state.mode.lock().unwrap().clone().unwrap_or(Mode::Accept);
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let key = header("idempotency-key").unwrap_or_default();
    state.started.lock().unwrap().push(key.clone());
    let authorization = header("authorization");
    let gzip = header("content-encoding").as_deref() == Some("gzip");
    let content_type = header("content-type").unwrap_or_default();
    let raw = req.into_body().collect().await.unwrap().to_bytes();
    let raw = if gzip {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .unwrap();
        out
    } else {
        raw.to_vec()
    };
    let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    {
        let mut problems = state.problems.lock().unwrap();
        if content_type != "application/json" {
            problems.push(format!("content-type {content_type:?}"));
        }
        if body["schema"] != "qbroker.varonis.v1" || !body["events"].is_array() {
            problems.push(format!(
                "not a qbroker.varonis.v1 batch: {}",
                String::from_utf8_lossy(&raw)
            ));
        }
        if body["batch_id"].as_str() != Some(key.as_str()) {
            problems.push(format!(
                "Idempotency-Key {key:?} is not the batch id {}",
                body["batch_id"]
            ));
        }
    }
    let mut answer = Bytes::from_static(b"{}");
    let (status, retry_after) = match mode {
        Mode::Accept => (200, None),
        Mode::Fail(status, retry_after) => (status, retry_after),
        Mode::Delay(d) => {
            tokio::time::sleep(d).await;
            (200, None)
        }
        Mode::TooLarge(max) => {
            let n = body["events"].as_array().map_or(0, Vec::len);
            (if n > max { 413 } else { 200 }, None)
        }
        Mode::FailEcho(status) => {
            answer = Bytes::from(format!(
                "{{\"error\":\"denied\",\"you_sent\":{:?}}}",
                authorization.clone().unwrap_or_default()
            ));
            (status, None)
        }
    };
    state.requests.lock().unwrap().push(Received {
        idempotency_key: key,
        authorization,
        gzip,
        body,
        accepted: status == 200,
        at: Instant::now(),
    });
    let mut resp = hyper::Response::new(Full::new(answer));
    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    if let Some(secs) = retry_after {
        resp.headers_mut()
            .insert("retry-after", secs.to_string().parse().unwrap());
    }
    Ok(resp)
}

/// Poll `f` until it returns Some, or panic after `timeout`.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "condition not met within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A broker running in-process on loopback with its own runtime.
pub struct Broker {
    pub syslog: SocketAddr,
    pub metrics: SocketAddr,
    /// The TLS syslog listener, when the configuration has `[syslog_tls]`.
    pub syslog_tls: Option<SocketAddr>,
    /// The HTTPS API, when the configuration enables `[api]`.
    pub api: Option<SocketAddr>,
    pub data_dir: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The configuration of a test broker: loopback, small batches, the given sink.
pub fn config_text(sink: &Sink, data_dir: &std::path::Path, extra: &str) -> String {
    format!(
        r#"
listen = "127.0.0.1:0"
metrics_listen = "127.0.0.1:0"
workers = 2
io_threads = 2
data_dir = "{data}"
default_target = "sink"
[batch]
max_events = 50
max_age_ms = 50
[shutdown]
grace_secs = 5
[[targets]]
name = "sink"
url = "{url}"
ca_file = "{ca}"
in_flight = 2
retry_initial_ms = 20
retry_max_ms = 200
{extra}
"#,
        data = data_dir.display(),
        url = sink.url(),
        ca = sink.ca_file.display(),
    )
}

impl Broker {
    pub fn start(config: &str) -> Broker {
        let raw = qbroker::config::RawConfig::parse(config).expect("test config parses");
        let cfg = raw.validate().expect("test config is valid");
        let data_dir = cfg.data_dir.clone();
        let listeners = qbroker::Listeners::bind(&cfg).unwrap();
        let syslog = listeners.syslog.local_addr().unwrap();
        let metrics = listeners.metrics.as_ref().unwrap().local_addr().unwrap();
        let syslog_tls = listeners
            .syslog_tls
            .as_ref()
            .map(|l| l.local_addr().unwrap());
        let api = listeners.api.as_ref().map(|l| l.local_addr().unwrap());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(qbroker::run(cfg, listeners, async {
                let _ = stop_rx.await;
            }))
            .expect("broker runs");
        });
        Broker {
            syslog,
            metrics,
            syslog_tls,
            api,
            data_dir,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Shut down as on SIGTERM and wait for the broker to finish.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().expect("broker thread");
        }
    }

    /// The Prometheus page.
    pub fn metrics_text(&self) -> String {
        http_get(self.metrics, "/metrics")
    }

    /// The value of one sample, such as `qbroker_queue_messages` or
    /// `qbroker_cluster_frames_total{cluster="a"}`.
    pub fn metric(&self, sample: &str) -> Option<f64> {
        metric_value(&self.metrics_text(), sample)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.shutdown();
    }
}

pub fn metric_value(text: &str, sample: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(sample)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// A plain HTTP/1.0 GET on loopback.
pub fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// The identity a test event carries in its file id: node and index.
pub fn file_id(node: u32, index: u64) -> String {
    // Always above 2^64, as real Qumulo ids can be.
    format!("9{node:04}{index:016}")
}

pub fn identity(event: &Value) -> (u32, u64) {
    let id = event["file_id"].as_str().expect("file_id is a string");
    (id[1..5].parse().unwrap(), id[5..].parse().unwrap())
}

/// A Qumulo JSON audit frame (without framing) for `host`.
pub fn json_frame(host: &str, op: &str, path: &str, file_id: &str) -> String {
    format!(
        r#"<14>1 2026-11-26T10:00:00.123456Z {host} qumulo - - - {{"user_id":{{"sid":"S-1-5-21-1-2-3-1104","auth_id":"1104","name":"AD\\alice"}},"user_ip":"10.1.2.3","protocol":"smb2","operation":"{op}","status":"ok","details":{{"file_id":"{file_id}","path":"{path}"}}}}"#
    )
}

/// A Qumulo CSV audit frame (without framing) for `host`.
pub fn csv_frame(host: &str, op: &str, path: &str, file_id: &str) -> String {
    csv_frame_to(host, op, path, "", file_id)
}

/// A Qumulo CSV audit frame with a target path (renames).
pub fn csv_frame_to(host: &str, op: &str, path: &str, target: &str, file_id: &str) -> String {
    format!(
        "<14>1 2026-11-26T10:00:00.9Z {host} qumulo - - - 10.1.2.4,\"AD\\bob\",nfs3,{op},ok,{file_id},\"{path}\",\"{target}\""
    )
}

/// Frame a message for the wire: newline-delimited or octet-counted.
pub fn framed(msg: &str, octet: bool) -> Vec<u8> {
    if octet {
        format!("{} {msg}", msg.len()).into_bytes()
    } else {
        format!("{msg}\n").into_bytes()
    }
}

/// Events per cluster in arrival order, checking the order contract on the way:
/// within a batch, per file, `seq` never goes down (the events of one record
/// share it), and events without a file id have increasing `seq`; per cluster,
/// (`seq`, `operation`) is unique. (Events held behind an enrichment go out
/// later with their own `seq`, so `seq` is not increasing across a batch.)
pub fn check_batches(sink: &Sink) -> BTreeMap<String, Vec<Value>> {
    let mut per_cluster: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for r in sink.accepted() {
        let cluster = r.body["cluster"].as_str().unwrap().to_string();
        let events = r.body["events"].as_array().unwrap();
        assert!(!events.is_empty(), "no empty batches");
        let mut last: BTreeMap<Option<String>, u64> = BTreeMap::new();
        for e in events {
            let seq = e["seq"].as_u64().unwrap();
            let file = e["file_id"].as_str().map(str::to_string);
            if let Some(prev) = last.insert(file.clone(), seq) {
                match file {
                    Some(f) => assert!(prev <= seq, "file {f}: seq {seq} after {prev} in a batch"),
                    None => assert!(prev < seq, "seq {seq} after {prev} in a batch"),
                }
            }
            let node = e["node"].as_str().unwrap();
            assert!(
                node.starts_with(&cluster),
                "event of {node} in a batch of {cluster}"
            );
        }
        per_cluster
            .entry(cluster)
            .or_default()
            .extend(events.iter().cloned());
    }
    for events in per_cluster.values() {
        let mut keys: Vec<(u64, String)> = events
            .iter()
            .map(|e| {
                (
                    e["seq"].as_u64().unwrap(),
                    e["operation"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let n = keys.len();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), n, "(seq, operation) unique per cluster");
    }
    per_cluster
}

/// The broker binary as a child process, its log collected.
pub struct BrokerProcess {
    pub child: std::process::Child,
    pub syslog: SocketAddr,
    pub metrics: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl BrokerProcess {
    /// Start `qbroker run --config <file>`; the config should listen on port 0
    /// for syslog and metrics: the ports are read from the log.
    pub fn spawn(config_file: &std::path::Path) -> BrokerProcess {
        BrokerProcess::spawn_with_log(config_file, "info")
    }

    /// [`spawn`](Self::spawn) with this `RUST_LOG` filter.
    pub fn spawn_with_log(config_file: &std::path::Path, rust_log: &str) -> BrokerProcess {
        BrokerProcess::spawn_with_env(config_file, rust_log, &[])
    }

    /// [`spawn_with_log`](Self::spawn_with_log) with these variables set.
    pub fn spawn_with_env(
        config_file: &std::path::Path,
        rust_log: &str,
        env: &[(String, String)],
    ) -> BrokerProcess {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_qbroker"))
            .args(["run", "--config"])
            .arg(config_file)
            .env("RUST_LOG", rust_log)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("qbroker starts");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let log2 = log.clone();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                log2.lock().unwrap().push(line);
            }
        });
        let find = |what: &str| {
            let log = log.clone();
            let what = what.to_string();
            wait_for(Duration::from_secs(20), move || {
                log.lock().unwrap().iter().find_map(|l| {
                    if !l.contains(&what) {
                        return None;
                    }
                    l.split("listen=")
                        .nth(1)?
                        .split_whitespace()
                        .next()?
                        .parse()
                        .ok()
                })
            })
        };
        let syslog = find("accepting syslog connections");
        let metrics = find("serving /metrics");
        BrokerProcess {
            child,
            syslog,
            metrics,
            log,
            reader: Some(reader),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Send a signal (`TERM`, `KILL`) and wait for the exit.
    pub fn signal_and_wait(&mut self, signal: &str) -> std::process::ExitStatus {
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                if let Some(r) = self.reader.take() {
                    let _ = r.join();
                }
                return status;
            }
            assert!(Instant::now() < deadline, "broker did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    pub fn metric(&self, sample: &str) -> Option<f64> {
        metric_value(&http_get(self.metrics, "/metrics"), sample)
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `key=value` of the first log line containing `marker` and `key=`.
pub fn log_field(log: &[String], marker: &str, key: &str) -> Option<u64> {
    log.iter().filter(|l| l.contains(marker)).find_map(|l| {
        l.split(&format!("{key}="))
            .nth(1)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

/// How the fake Qumulo REST API answers.
#[derive(Debug, Clone)]
pub enum ApiMode {
    Up,
    /// 503 to everything.
    Down,
    /// Wait, then answer.
    Delay(Duration),
}

#[derive(Default)]
struct ApiState {
    /// file id -> the v2 ACL body
    acls: std::collections::HashMap<String, Value>,
    /// file id -> FS_FILE_TYPE_*
    types: std::collections::HashMap<String, String>,
    /// token -> requests it may still make
    tokens: std::collections::HashMap<String, u32>,
    mode: Option<ApiMode>,
    logins: u32,
    /// requests each token may make before the "cluster" expires it
    token_uses: u32,
    /// (method, path, had a valid token)
    log: Vec<(String, String, bool)>,
    /// `/v1/audit/syslog/config` and `/v1/audit/syslog/status` (404 when unset).
    audit_v1: Option<(Value, Value)>,
    /// `/v2/audit/destinations/` and each destination's `/status` by id (404
    /// when unset, as before Qumulo 7.9).
    audit_v2: Option<(Value, std::collections::HashMap<String, Value>)>,
}

/// A Qumulo REST API stand-in over HTTPS on loopback: login, who-am-i,
/// cluster settings, v2 ACLs and attributes, the audit settings (legacy
/// syslog config and status, 7.9+ destinations), with tokens that expire after
/// a number of uses.
pub struct QumuloApi {
    pub addr: SocketAddr,
    pub ca_file: PathBuf,
    state: Arc<Mutex<ApiState>>,
    runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

pub const API_USER: &str = "qbroker";
pub const API_PASSWORD: &str = "pa55 word";

impl QumuloApi {
    pub fn start() -> QumuloApi {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new();
        let ca_file = dir.path().join("api-ca.pem");
        std::fs::write(&ca_file, &pki.ca_pem).unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(ApiState {
            token_uses: u32::MAX,
            mode: Some(ApiMode::Up),
            ..ApiState::default()
        }));
        let acceptor = pki.acceptor(false);
        let st = state.clone();
        runtime.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, st) = (acceptor.clone(), st.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = service_fn(move |req| api_handle(st.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        QumuloApi {
            addr,
            ca_file,
            state,
            runtime,
            _dir: dir,
        }
    }

    /// The `[[clusters]]` lines that point a cluster at this API.
    pub fn cluster_config(&self, name: &str) -> String {
        format!(
            "[[clusters]]\nname = \"{name}\"\napi_url = \"https://127.0.0.1:{}\"\nusername = \"{API_USER}\"\npassword = \"{API_PASSWORD}\"\nca_file = \"{}\"\n",
            self.addr.port(),
            self.ca_file.display()
        )
    }

    pub fn set_acl(&self, file_id: &str, acl: Value) {
        self.state
            .lock()
            .unwrap()
            .acls
            .insert(file_id.to_string(), acl);
    }

    pub fn set_type(&self, file_id: &str, directory: bool) {
        let t = if directory {
            "FS_FILE_TYPE_DIRECTORY"
        } else {
            "FS_FILE_TYPE_FILE"
        };
        self.state
            .lock()
            .unwrap()
            .types
            .insert(file_id.to_string(), t.to_string());
    }

    pub fn set_mode(&self, mode: ApiMode) {
        self.state.lock().unwrap().mode = Some(mode);
    }

    /// Each token is refused (401) after this many requests.
    pub fn expire_tokens_after(&self, uses: u32) {
        self.state.lock().unwrap().token_uses = uses;
    }

    pub fn logins(&self) -> u32 {
        self.state.lock().unwrap().logins
    }

    /// Serve the legacy audit syslog settings: the config and status bodies.
    pub fn set_audit_v1(&self, config: Value, status: Value) {
        self.state.lock().unwrap().audit_v1 = Some((config, status));
    }

    /// Serve Qumulo 7.9+ audit destinations: the list body and each one's status.
    pub fn set_audit_v2(&self, list: Value, statuses: &[(&str, Value)]) {
        self.state.lock().unwrap().audit_v2 = Some((
            list,
            statuses
                .iter()
                .map(|(id, v)| (id.to_string(), v.clone()))
                .collect(),
        ));
    }

    /// (method, path, authorised) of every request so far.
    pub fn log(&self) -> Vec<(String, String, bool)> {
        self.state.lock().unwrap().log.clone()
    }
}

impl Drop for QumuloApi {
    fn drop(&mut self) {
        // the runtime's drop ends the server
        let _ = &self.runtime;
    }
}

async fn api_handle(
    state: Arc<Mutex<ApiState>>,
    req: hyper::Request<Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, std::convert::Infallible> {
    let mode = state.lock().unwrap().mode.clone().unwrap_or(ApiMode::Up);
    let respond = |status: u16, body: Value| {
        let mut resp = hyper::Response::new(Full::new(Bytes::from(body.to_string())));
        *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
        resp
    };
    match mode {
        ApiMode::Down => {
            return Ok(respond(
                503,
                serde_json::json!({"error_class": "unavailable"}),
            ))
        }
        ApiMode::Delay(d) => tokio::time::sleep(d).await,
        ApiMode::Up => {}
    }
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let token = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let mut st = state.lock().unwrap();
    if method == "POST" && path == "/v1/session/login" {
        let creds: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        st.log.push((method, path, true));
        if creds["username"] != API_USER || creds["password"] != API_PASSWORD {
            return Ok(respond(401, serde_json::json!({"error_class": "auth"})));
        }
        st.logins += 1;
        let token = format!("token-{}", st.logins);
        let uses = st.token_uses;
        st.tokens.insert(token.clone(), uses);
        return Ok(respond(200, serde_json::json!({"bearer_token": token})));
    }
    let authorised = match token.as_ref().and_then(|t| st.tokens.get_mut(t)) {
        Some(left) if *left > 0 => {
            *left -= 1;
            true
        }
        _ => false,
    };
    st.log.push((method, path.clone(), authorised));
    if !authorised {
        return Ok(respond(
            401,
            serde_json::json!({"error_class": "http_unauthorized_error"}),
        ));
    }
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let resp = match parts.as_slice() {
        ["v1", "session", "who-am-i"] => {
            respond(200, serde_json::json!({"id": "500", "name": API_USER}))
        }
        ["v1", "cluster", "settings"] => respond(200, serde_json::json!({"cluster_name": "qa"})),
        ["v1", "audit", "syslog", which @ ("config" | "status")] => match &st.audit_v1 {
            Some((config, status)) => respond(
                200,
                if *which == "config" {
                    config.clone()
                } else {
                    status.clone()
                },
            ),
            None => respond(404, serde_json::json!({"error_class": "no_such_route"})),
        },
        ["v2", "audit", "destinations"] => match &st.audit_v2 {
            Some((list, _)) => respond(200, list.clone()),
            None => respond(404, serde_json::json!({"error_class": "no_such_route"})),
        },
        ["v2", "audit", "destinations", id, "status"] => {
            match st.audit_v2.as_ref().and_then(|(_, s)| s.get(*id)) {
                Some(status) => respond(200, status.clone()),
                None => respond(
                    404,
                    serde_json::json!({"error_class": "no_such_destination"}),
                ),
            }
        }
        ["v2", "files", id, "info", "acl"] => match st.acls.get(*id) {
            Some(acl) => respond(200, acl.clone()),
            None => respond(
                404,
                serde_json::json!({"error_class": "fs_no_such_inode_error"}),
            ),
        },
        ["v1", "files", id, "info", "attributes"] => match st.types.get(*id) {
            Some(t) => respond(200, serde_json::json!({"id": id, "type": t})),
            None => respond(
                404,
                serde_json::json!({"error_class": "fs_no_such_inode_error"}),
            ),
        },
        _ => respond(404, serde_json::json!({"error_class": "no_such_route"})),
    };
    Ok(resp)
}

/// An fs_write_metadata JSON frame with the owner before and after (auth ids).
pub fn metadata_frame(host: &str, file_id: &str, path: &str, before: &str, after: &str) -> String {
    format!(
        concat!(
            r#"<14>1 2026-11-26T10:00:00.123456Z {host} qumulo - - - {{"user_id":{{"sid":"S-1-5-21-1-2-3-1104","auth_id":"1104","name":"AD\\alice"}},"#,
            r#""user_ip":"10.1.2.3","protocol":"smb2","operation":"fs_write_metadata","status":"ok","details":{{"file_id":"{file_id}","path":"{path}","#,
            r#""after":{{"ctime":"2026-11-26T10:00:00.2Z","mtime":"2026-11-26T09:00:00Z","owner":{{"sid":"S-1-5-21-{after}","auth_id":"{after}"}}}},"#,
            r#""before":{{"ctime":"2026-11-26T10:00:00.1Z","mtime":"2026-11-26T09:00:00Z","owner":{{"sid":"S-1-5-21-{before}","auth_id":"{before}"}}}}}}}}"#
        ),
        host = host,
        file_id = file_id,
        path = path,
        before = before,
        after = after
    )
}

/// A v2 ACL body: `protected`, and ACEs of (type, auth id, rights, flags).
pub fn acl_body(protected: bool, aces: &[(&str, &str, &[&str], &[&str])]) -> Value {
    let mut control = vec!["PRESENT", "AUTO_INHERIT"];
    if protected {
        control.push("PROTECTED");
    }
    serde_json::json!({
        "control": control,
        "posix_special_permissions": [],
        "aces": aces.iter().map(|(kind, who, rights, flags)| serde_json::json!({
            "type": kind,
            "flags": flags,
            "trustee": {"domain": "ACTIVE_DIRECTORY", "auth_id": who, "uid": null, "gid": null,
                        "sid": format!("S-1-5-21-{who}"), "name": format!("AD\\u{who}")},
            "rights": rights,
        })).collect::<Vec<_>>(),
    })
}
