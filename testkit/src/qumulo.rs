//! qumulo: a Qumulo REST API stand-in over HTTPS on loopback, what qbroker's
//! enrichment and `doctor` talk to: login, who-am-i, cluster settings, v2
//! ACLs and file attributes, and the audit settings (the legacy syslog config
//! and status, the 7.9+ destinations). Bearer tokens are refused (401) after
//! a number of requests, to exercise renewal. The files it knows come from a
//! [`Files`]: a script the test fills ([`Scripted`]) or loadgen's namespace.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::https::Server;
use crate::pki::{Clients, Pki};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("binding the Qumulo API on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the Qumulo API's TLS: {0}")]
    Tls(#[from] crate::pki::Error),
}

/// The files the API answers for, by Qumulo file id.
pub trait Files: Send + Sync + 'static {
    /// The v2 ACL body (`/v2/files/{id}/info/acl`); None: no such file.
    fn acl(&self, file_id: &str) -> Option<Value>;
    /// Whether the file is a directory (`/v1/files/{id}/info/attributes`);
    /// None: no such file.
    fn is_dir(&self, file_id: &str) -> Option<bool>;
}

/// Files as a test sets them, one by one.
#[derive(Default)]
pub struct Scripted {
    acls: Mutex<HashMap<String, Value>>,
    dirs: Mutex<HashMap<String, bool>>,
}

impl Scripted {
    pub fn set_acl(&self, file_id: &str, acl: Value) {
        self.acls
            .lock()
            .expect("scripted files")
            .insert(file_id.to_string(), acl);
    }

    pub fn set_type(&self, file_id: &str, directory: bool) {
        self.dirs
            .lock()
            .expect("scripted files")
            .insert(file_id.to_string(), directory);
    }
}

impl Files for Scripted {
    fn acl(&self, file_id: &str) -> Option<Value> {
        self.acls
            .lock()
            .expect("scripted files")
            .get(file_id)
            .cloned()
    }

    fn is_dir(&self, file_id: &str) -> Option<bool> {
        self.dirs
            .lock()
            .expect("scripted files")
            .get(file_id)
            .copied()
    }
}

/// How the API answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Up,
    /// 503 to everything.
    Down,
    /// Wait, then answer.
    Delay(Duration),
}

/// Who may log in, and how the API behaves at start.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub listen: SocketAddr,
    pub username: String,
    pub password: String,
    /// What `/v1/cluster/settings` names the cluster.
    pub cluster_name: String,
    /// Requests a bearer token may make before it is refused (401).
    pub token_uses: u64,
    pub mode: Mode,
    /// Keep (method, path, authorised) of every request, for [`QumuloApi::log`].
    /// Off for long runs: the log grows with every request.
    pub keep_log: bool,
}

/// Requests by outcome.
#[derive(Default, Debug)]
pub struct Counters {
    pub logins: AtomicU64,
    /// ACLs served
    pub acl: AtomicU64,
    /// attributes served
    pub attributes: AtomicU64,
    /// requests refused for a missing, unknown or used-up token
    pub refused: AtomicU64,
}

#[derive(Default)]
struct Settable {
    mode: Option<Mode>,
    token_uses: u64,
    /// token -> requests it may still make
    tokens: HashMap<String, u64>,
    /// (method, path, had a valid token)
    log: Vec<(String, String, bool)>,
    /// `/v1/audit/syslog/config` and `/v1/audit/syslog/status` (404 when unset).
    audit_v1: Option<(Value, Value)>,
    /// `/v2/audit/destinations/` and each destination's `/status` by id (404
    /// when unset, as before Qumulo 7.9).
    audit_v2: Option<(Value, HashMap<String, Value>)>,
}

struct State {
    cfg: ApiConfig,
    files: Arc<dyn Files>,
    counters: Arc<Counters>,
    settable: Mutex<Settable>,
}

/// The running API.
pub struct QumuloApi {
    pub addr: SocketAddr,
    pub counters: Arc<Counters>,
    state: Arc<State>,
    server: Server,
}

impl QumuloApi {
    /// Bind `cfg.listen` and serve with `pki`'s server certificate until
    /// [`stop`](Self::stop) (or until the runtime ends).
    pub async fn start(
        cfg: ApiConfig,
        files: Arc<dyn Files>,
        pki: &Pki,
    ) -> Result<QumuloApi, Error> {
        let acceptor = pki.acceptor(Clients::Anonymous)?;
        let listener = TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| Error::Bind {
                addr: cfg.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: cfg.listen,
            source,
        })?;
        let counters = Arc::new(Counters::default());
        let state = Arc::new(State {
            settable: Mutex::new(Settable {
                mode: Some(cfg.mode),
                token_uses: cfg.token_uses,
                ..Settable::default()
            }),
            cfg,
            files,
            counters: counters.clone(),
        });
        let st = state.clone();
        let server = Server::spawn(listener, acceptor, move |req| handle(st.clone(), req));
        Ok(QumuloApi {
            addr,
            counters,
            state,
            server,
        })
    }

    fn settable(&self) -> std::sync::MutexGuard<'_, Settable> {
        self.state.settable.lock().expect("api state")
    }

    pub fn set_mode(&self, mode: Mode) {
        self.settable().mode = Some(mode);
    }

    /// Each token issued from now on is refused (401) after this many requests.
    pub fn expire_tokens_after(&self, uses: u64) {
        self.settable().token_uses = uses;
    }

    pub fn logins(&self) -> u64 {
        self.counters.logins.load(Ordering::Relaxed)
    }

    /// Serve the legacy audit syslog settings: the config and status bodies.
    pub fn set_audit_v1(&self, config: Value, status: Value) {
        self.settable().audit_v1 = Some((config, status));
    }

    /// Serve Qumulo 7.9+ audit destinations: the list body and each one's status.
    pub fn set_audit_v2(&self, list: Value, statuses: &[(&str, Value)]) {
        self.settable().audit_v2 = Some((
            list,
            statuses
                .iter()
                .map(|(id, v)| (id.to_string(), v.clone()))
                .collect(),
        ));
    }

    /// (method, path, authorised) of every request so far (with
    /// [`ApiConfig::keep_log`]).
    pub fn log(&self) -> Vec<(String, String, bool)> {
        self.settable().log.clone()
    }

    /// Close the listener and every connection.
    pub async fn stop(self) {
        self.server.stop().await;
    }
}

/// A token nobody guesses by accident: the login count, mixed.
fn token(n: u64) -> String {
    let mut z = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    format!("token-{n}-{:016x}", z ^ (z >> 31))
}

fn respond(status: u16, body: Value) -> hyper::Response<Full<Bytes>> {
    let mut r = hyper::Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = hyper::StatusCode::from_u16(status).expect("a valid status");
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

async fn handle(
    st: Arc<State>,
    req: hyper::Request<Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let mode = st
        .settable
        .lock()
        .expect("api state")
        .mode
        .unwrap_or(Mode::Up);
    match mode {
        Mode::Down => return Ok(respond(503, json!({"error_class": "unavailable"}))),
        Mode::Delay(d) => tokio::time::sleep(d).await,
        Mode::Up => {}
    }
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let token_sent = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let keep_log = st.cfg.keep_log;
    let mut s = st.settable.lock().expect("api state");
    if method == "POST" && path == "/v1/session/login" {
        if keep_log {
            s.log.push((method, path, true));
        }
        let creds: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if creds["username"] != st.cfg.username.as_str()
            || creds["password"] != st.cfg.password.as_str()
        {
            return Ok(respond(
                401,
                json!({"error_class": "http_unauthorized_error"}),
            ));
        }
        let n = st.counters.logins.fetch_add(1, Ordering::Relaxed) + 1;
        let token = token(n);
        let uses = s.token_uses;
        s.tokens.insert(token.clone(), uses);
        return Ok(respond(200, json!({"bearer_token": token})));
    }
    let authorised = match token_sent.as_ref().and_then(|t| s.tokens.get_mut(t)) {
        Some(left) if *left > 0 => {
            *left -= 1;
            true
        }
        _ => false,
    };
    if keep_log {
        s.log.push((method, path.clone(), authorised));
    }
    if !authorised {
        st.counters.refused.fetch_add(1, Ordering::Relaxed);
        return Ok(respond(
            401,
            json!({"error_class": "http_unauthorized_error"}),
        ));
    }
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let no_such_inode = || respond(404, json!({"error_class": "fs_no_such_inode_error"}));
    let no_such_route = || respond(404, json!({"error_class": "no_such_route"}));
    let resp = match parts.as_slice() {
        ["v1", "session", "who-am-i"] => {
            respond(200, json!({"id": "500", "name": st.cfg.username}))
        }
        ["v1", "cluster", "settings"] => respond(200, json!({"cluster_name": st.cfg.cluster_name})),
        ["v1", "audit", "syslog", which @ ("config" | "status")] => match &s.audit_v1 {
            Some((config, status)) => respond(
                200,
                if *which == "config" {
                    config.clone()
                } else {
                    status.clone()
                },
            ),
            None => no_such_route(),
        },
        ["v2", "audit", "destinations"] => match &s.audit_v2 {
            Some((list, _)) => respond(200, list.clone()),
            None => no_such_route(),
        },
        ["v2", "audit", "destinations", id, "status"] => {
            match s.audit_v2.as_ref().and_then(|(_, d)| d.get(*id)) {
                Some(status) => respond(200, status.clone()),
                None => respond(404, json!({"error_class": "no_such_destination"})),
            }
        }
        ["v2", "files", id, "info", "acl"] => {
            drop(s);
            match st.files.acl(id) {
                Some(acl) => {
                    st.counters.acl.fetch_add(1, Ordering::Relaxed);
                    respond(200, acl)
                }
                None => no_such_inode(),
            }
        }
        ["v1", "files", id, "info", "attributes"] => {
            drop(s);
            match st.files.is_dir(id) {
                Some(dir) => {
                    st.counters.attributes.fetch_add(1, Ordering::Relaxed);
                    let t = if dir {
                        "FS_FILE_TYPE_DIRECTORY"
                    } else {
                        "FS_FILE_TYPE_FILE"
                    };
                    respond(200, json!({"id": id, "type": t}))
                }
                None => no_such_inode(),
            }
        }
        _ => no_such_route(),
    };
    Ok(resp)
}
