//! Shared pieces of the integration tests: a real HTTPS sink with a certificate
//! made for the test, the broker run in-process on loopback, syslog senders, and
//! event identities that tell exactly what was lost or duplicated. What loadgen
//! shares with them (the PKI, RabbitMQ, the Qumulo API stand-in, broker
//! processes, ports and bounded waits) is in the testkit crate, re-exported here.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::Value;
use testkit::https::Server;
use testkit::pki::{Clients, Pki};
use testkit::qumulo::{ApiConfig, Scripted};
use tokio::net::TcpListener;

// Each test binary uses some of these.
#[allow(unused_imports)]
pub use testkit::{
    net::{free_port, http_get},
    process::{log_field, metric_value, BrokerProcess, StdinFeed},
    qumulo::Mode as ApiMode,
    wait_for, wait_until,
};

/// The broker binary of this workspace, for [`BrokerProcess`] and [`StdinFeed`].
pub const QBROKER: &str = env!("CARGO_BIN_EXE_qbroker");

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
    clients: Clients,
    pki: Pki,
    state: Arc<SinkState>,
    server: Option<Server>,
    runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

impl Sink {
    pub fn start() -> Sink {
        Sink::start_with(Clients::Anonymous)
    }

    /// A sink that accepts only TLS clients with a certificate of its CA.
    pub fn start_mtls() -> Sink {
        Sink::start_with(Clients::Certified)
    }

    fn start_with(clients: Clients) -> Sink {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new("qbroker test").unwrap();
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
            clients,
            pki,
            state: Arc::new(SinkState::default()),
            server: None,
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

    /// Stop listening and drop every connection: the target is away. Returns
    /// once the listener is closed and the connections are gone.
    pub fn go_away(&mut self) {
        if let Some(server) = self.server.take() {
            self.runtime.block_on(server.stop());
        }
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
        let acceptor = self.pki.acceptor(self.clients).unwrap();
        let state = self.state.clone();
        let _in_runtime = self.runtime.enter();
        self.server = Some(Server::spawn(listener, acceptor, move |req| {
            handle(state.clone(), req)
        }));
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

pub const API_USER: &str = "qbroker";
pub const API_PASSWORD: &str = "pa55 word";

/// The Qumulo REST API stand-in (testkit's) with files the test sets one by
/// one, on a runtime of its own, its CA in a file.
pub struct QumuloApi {
    pub addr: SocketAddr,
    pub ca_file: PathBuf,
    api: testkit::qumulo::QumuloApi,
    files: Arc<Scripted>,
    _runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

impl QumuloApi {
    pub fn start() -> QumuloApi {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new("qumulo test").unwrap();
        let ca_file = dir.path().join("api-ca.pem");
        std::fs::write(&ca_file, &pki.ca_pem).unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let files = Arc::new(Scripted::default());
        let cfg = ApiConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            username: API_USER.to_string(),
            password: API_PASSWORD.to_string(),
            cluster_name: "qa".to_string(),
            token_uses: u64::MAX,
            mode: ApiMode::Up,
            keep_log: true,
        };
        let api = runtime
            .block_on(testkit::qumulo::QumuloApi::start(cfg, files.clone(), &pki))
            .unwrap();
        QumuloApi {
            addr: api.addr,
            ca_file,
            api,
            files,
            _runtime: runtime,
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
        self.files.set_acl(file_id, acl);
    }

    pub fn set_type(&self, file_id: &str, directory: bool) {
        self.files.set_type(file_id, directory);
    }

    pub fn set_mode(&self, mode: ApiMode) {
        self.api.set_mode(mode);
    }

    /// Each token is refused (401) after this many requests.
    pub fn expire_tokens_after(&self, uses: u64) {
        self.api.expire_tokens_after(uses);
    }

    pub fn logins(&self) -> u64 {
        self.api.logins()
    }

    /// Serve the legacy audit syslog settings: the config and status bodies.
    pub fn set_audit_v1(&self, config: Value, status: Value) {
        self.api.set_audit_v1(config, status);
    }

    /// Serve Qumulo 7.9+ audit destinations: the list body and each one's status.
    pub fn set_audit_v2(&self, list: Value, statuses: &[(&str, Value)]) {
        self.api.set_audit_v2(list, statuses);
    }

    /// (method, path, authorised) of every request so far.
    pub fn log(&self) -> Vec<(String, String, bool)> {
        self.api.log()
    }
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
