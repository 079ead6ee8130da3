//! client: a Qumulo cluster's REST API over HTTPS (port 8000).
//!
//! One [`ApiClient`] per enriched cluster. It keeps a few keep-alive HTTP/1.1
//! connections (at most `enrich.in_flight` are used at once, by the caller's
//! bound) and a bearer token: from `POST /v1/session/login`, renewed when it is
//! `enrich.token_renew_secs` old (Qumulo's expire after 10 hours) and at once on
//! a 401, which is then retried once; or a configured long-lived access token.
//! Credentials are [`Secret`]s and never reach a log.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use rustls::ClientConfig;
use tracing::{debug, info};

use super::acl::Acl;
use crate::config::{ApiAuth, ApiConfig, Secret};
use crate::metrics::EnrichMetrics;
use crate::net::{Alpn, ClientTls, HttpsConnector, Pem, PemFile, TlsError, Trust};

/// Why a REST call failed. The kinds are metric labels.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("the cluster refused the credentials (HTTP {0})")]
    Unauthorized(u16),
    #[error("HTTP {status} from {path}")]
    Status { status: u16, path: String },
    #[error("unexpected response from {path}: {reason}")]
    Decode { path: String, reason: String },
    #[error("http: {0}")]
    Http(String),
}

impl ApiError {
    pub const KINDS: [&'static str; 6] = [
        "timeout",
        "connect",
        "unauthorized",
        "status",
        "decode",
        "http",
    ];

    /// Index into [`ApiError::KINDS`].
    pub fn kind(&self) -> usize {
        match self {
            ApiError::Timeout(_) => 0,
            ApiError::Connect(_) => 1,
            ApiError::Unauthorized(_) => 2,
            ApiError::Status { .. } => 3,
            ApiError::Decode { .. } => 4,
            ApiError::Http(_) => 5,
        }
    }
}

/// The TLS settings of a cluster's API could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ClientSetupError {
    #[error("cluster {cluster}: {source}")]
    Tls {
        cluster: String,
        #[source]
        source: TlsError,
    },
    #[error("enrich: cannot start the completion thread: {0}")]
    Thread(std::io::Error),
}

impl ClientSetupError {
    fn of(cluster: &str) -> impl FnOnce(TlsError) -> ClientSetupError + '_ {
        move |source| ClientSetupError::Tls {
            cluster: cluster.to_string(),
            source,
        }
    }
}

struct Token {
    value: Secret,
    obtained: Instant,
    generation: u64,
}

/// The REST API of one cluster.
pub struct ApiClient {
    cluster: Arc<str>,
    authority: String,
    connector: HttpsConnector,
    auth: ApiAuth,
    token: tokio::sync::Mutex<Option<Token>>,
    generation: AtomicU64,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
    max_idle: usize,
    request_timeout: Duration,
    token_renew: Duration,
    metrics: Arc<EnrichMetrics>,
}

fn tls_config(cluster: &str, api: &ApiConfig) -> Result<ClientConfig, ClientSetupError> {
    let ca = match (&api.ca_file, api.insecure_skip_verify) {
        (Some(path), false) => Some(PemFile::read(path).map_err(ClientSetupError::of(cluster))?),
        _ => None,
    };
    tls_config_pem(
        cluster,
        ca.as_ref().map(PemFile::pem),
        api.insecure_skip_verify,
    )
}

/// The TLS settings of a cluster's REST API: trust the PEM CA certificates
/// `ca` (none: the system roots), or any certificate when `insecure`.
pub fn tls_config_pem(
    cluster: &str,
    ca: Option<Pem<'_>>,
    insecure: bool,
) -> Result<ClientConfig, ClientSetupError> {
    let trust = match ca {
        _ if insecure => Trust::Any,
        Some(pem) => Trust::Roots(pem),
        None => Trust::System,
    };
    ClientTls {
        trust,
        identity: None,
        alpn: Alpn::Http1,
    }
    .config()
    .map_err(ClientSetupError::of(cluster))
}

#[derive(serde::Serialize)]
struct Login<'a> {
    username: &'a str,
    password: &'a str,
}

#[derive(serde::Deserialize)]
struct LoginResponse {
    bearer_token: String,
}

#[derive(serde::Deserialize)]
struct Attributes {
    #[serde(rename = "type")]
    kind: String,
}

/// `/`-free, percent-encoded path segment (file ids are digits in practice).
fn segment(id: &str) -> String {
    let mut s = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.' {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

#[derive(serde::Deserialize)]
struct ClusterSettings {
    cluster_name: String,
}

impl ApiClient {
    pub fn new(
        cluster: Arc<str>,
        api: &ApiConfig,
        max_idle: usize,
        request_timeout: Duration,
        token_renew: Duration,
        metrics: Arc<EnrichMetrics>,
    ) -> Result<ApiClient, ClientSetupError> {
        let config = tls_config(&cluster, api)?;
        ApiClient::with_tls(
            cluster,
            api,
            config,
            max_idle,
            request_timeout,
            token_renew,
            metrics,
        )
    }

    /// A client with these TLS settings (`api.ca_file` and
    /// `api.insecure_skip_verify` are not read).
    pub fn with_tls(
        cluster: Arc<str>,
        api: &ApiConfig,
        config: ClientConfig,
        max_idle: usize,
        request_timeout: Duration,
        token_renew: Duration,
        metrics: Arc<EnrichMetrics>,
    ) -> Result<ApiClient, ClientSetupError> {
        let connector = HttpsConnector::new(
            &format!("cluster {cluster} REST API"),
            &api.host,
            api.port,
            Some(config),
            // Within the request's own timeout, which bounds it first.
            request_timeout,
        )
        .map_err(ClientSetupError::of(&cluster))?;
        let authority = if api.host.contains(':') {
            format!("[{}]:{}", api.host, api.port)
        } else {
            format!("{}:{}", api.host, api.port)
        };
        Ok(ApiClient {
            cluster,
            authority,
            connector,
            auth: api.auth.clone(),
            token: tokio::sync::Mutex::new(None),
            generation: AtomicU64::new(0),
            idle: Mutex::new(Vec::new()),
            max_idle,
            request_timeout,
            token_renew,
            metrics,
        })
    }

    /// Log in with the client's username and password (`POST /v1/session/login`)
    /// and read the cluster's name (`GET /v1/cluster/settings`), as the reference
    /// broker checked the credentials Varonis sent. Every request within the
    /// client's request timeout.
    pub async fn cluster_name(self: &Arc<Self>) -> Result<String, ApiError> {
        let body = self.get("/v1/cluster/settings").await?;
        let settings: ClusterSettings =
            serde_json::from_slice(&body).map_err(|e| ApiError::Decode {
                path: "/v1/cluster/settings".to_string(),
                reason: e.to_string(),
            })?;
        Ok(settings.cluster_name)
    }

    /// The explicit ACL of a file.
    pub async fn acl(self: &Arc<Self>, file_id: &str) -> Result<Acl, ApiError> {
        let path = format!("/v2/files/{}/info/acl", segment(file_id));
        self.metrics.requests_acl.inc();
        let body = self.get(&path).await?;
        Acl::from_v2_json(&body).map_err(|e| ApiError::Decode {
            path,
            reason: e.to_string(),
        })
    }

    /// Whether the object is a directory, from its attributes.
    pub async fn is_directory(self: &Arc<Self>, file_id: &str) -> Result<bool, ApiError> {
        let path = format!("/v1/files/{}/info/attributes", segment(file_id));
        self.metrics.requests_attributes.inc();
        let body = self.get(&path).await?;
        let attrs: Attributes = serde_json::from_slice(&body).map_err(|e| ApiError::Decode {
            path,
            reason: e.to_string(),
        })?;
        Ok(attrs.kind == "FS_FILE_TYPE_DIRECTORY")
    }

    /// Any JSON resource of the API, with the same login, token and TLS
    /// (`qbroker doctor` reads the audit settings with it).
    pub async fn get_json(self: &Arc<Self>, path: &str) -> Result<serde_json::Value, ApiError> {
        let body = self.get(path).await?;
        serde_json::from_slice(&body).map_err(|e| ApiError::Decode {
            path: path.to_string(),
            reason: e.to_string(),
        })
    }

    /// GET with the bearer token; a 401 renews a login token and tries once more.
    async fn get(self: &Arc<Self>, path: &str) -> Result<Bytes, ApiError> {
        let (token, generation) = self.token().await?;
        match self.call("GET", path, Some(&token), None).await {
            Err(ApiError::Unauthorized(status)) => {
                if !matches!(self.auth, ApiAuth::Login { .. }) {
                    return Err(ApiError::Unauthorized(status));
                }
                debug!(cluster = %self.cluster, "bearer token refused; logging in again");
                self.expire(generation).await;
                let (token, _) = self.token().await?;
                self.call("GET", path, Some(&token), None).await
            }
            other => other,
        }
    }

    /// The current token, logging in first when there is none or it is due. The
    /// login runs as its own task: a lookup that gives up (its deadline) does not
    /// cut a login short for the lookups behind it.
    async fn token(self: &Arc<Self>) -> Result<(Secret, u64), ApiError> {
        if let ApiAuth::AccessToken(t) = &self.auth {
            return Ok((t.clone(), 0));
        }
        {
            let slot = self.token.lock().await;
            if let Some(t) = slot
                .as_ref()
                .filter(|t| t.obtained.elapsed() < self.token_renew)
            {
                return Ok((t.value.clone(), t.generation));
            }
        }
        let this = self.clone();
        tokio::spawn(async move { this.login().await })
            .await
            .unwrap_or_else(|e| Err(ApiError::Http(format!("login task: {e}"))))
    }

    async fn login(&self) -> Result<(Secret, u64), ApiError> {
        let ApiAuth::Login { username, password } = &self.auth else {
            unreachable!("only login credentials log in");
        };
        let mut slot = self.token.lock().await;
        // Another task may have logged in while this one waited for the lock.
        if let Some(t) = slot
            .as_ref()
            .filter(|t| t.obtained.elapsed() < self.token_renew)
        {
            return Ok((t.value.clone(), t.generation));
        }
        let body = serde_json::to_vec(&Login {
            username,
            password: password.expose(),
        })
        .expect("login body serialises");
        self.metrics.logins.inc();
        let resp = self
            .call("POST", "/v1/session/login", None, Some(body))
            .await?;
        let login: LoginResponse = serde_json::from_slice(&resp).map_err(|e| ApiError::Decode {
            path: "/v1/session/login".to_string(),
            reason: e.to_string(),
        })?;
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        if generation > 1 {
            // Every login after the first replaces a token: due, or refused.
            self.metrics.token_renewals.inc();
        }
        info!(cluster = %self.cluster, user = %username, "logged in to the cluster's REST API");
        let token = Secret::new(login.bearer_token);
        *slot = Some(Token {
            value: token.clone(),
            obtained: Instant::now(),
            generation,
        });
        Ok((token, generation))
    }

    /// Forget the token of `generation` (refused by the cluster), unless another
    /// request already replaced it.
    async fn expire(&self, generation: u64) {
        let mut slot = self.token.lock().await;
        if slot.as_ref().is_some_and(|t| t.generation == generation) {
            *slot = None;
        }
    }

    /// One request within the request timeout; 2xx bodies only.
    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&Secret>,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, ApiError> {
        let timeout = self.request_timeout;
        let result = tokio::time::timeout(timeout, self.exchange(method, path, token, body))
            .await
            .unwrap_or(Err(ApiError::Timeout(timeout)));
        if let Err(err) = &result {
            self.metrics.errors[err.kind()].inc();
        }
        result
    }

    async fn exchange(
        &self,
        method: &str,
        path: &str,
        token: Option<&Secret>,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, ApiError> {
        let mut conn = self.connection().await?;
        let mut req = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, &self.authority)
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::USER_AGENT, "qbroker");
        if let Some(t) = token {
            req = req.header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", t.expose()),
            );
        }
        if body.is_some() {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ApiError::Http(e.to_string()))?;
        let resp = conn
            .send_request(req)
            .await
            .map_err(|e| ApiError::Http(e.to_string()))?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ApiError::Http(e.to_string()))?
            .to_bytes();
        self.give_back(conn);
        match status {
            200..=299 => Ok(body),
            401 | 403 => Err(ApiError::Unauthorized(status)),
            _ => Err(ApiError::Status {
                status,
                path: path.to_string(),
            }),
        }
    }

    async fn connection(&self) -> Result<SendRequest<Full<Bytes>>, ApiError> {
        loop {
            let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            match idle {
                Some(mut c) if !c.is_closed() => {
                    if c.ready().await.is_ok() {
                        return Ok(c);
                    }
                }
                Some(_) => {}
                None => break,
            }
        }
        self.connector
            .connect()
            .await
            .map_err(|e| ApiError::Connect(e.to_string()))
    }

    fn give_back(&self, conn: SendRequest<Full<Bytes>>) {
        if conn.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < self.max_idle {
            idle.push(conn);
        }
    }
}
