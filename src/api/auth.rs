//! auth: who may call the API.
//!
//! Two kinds of caller:
//! - operators, with the admin token of the configuration
//!   (`Authorization: Bearer <token>`): every route, every cluster;
//! - Varonis (or anyone holding a Qumulo cluster's credentials): `username`,
//!   `password` and the `cluster` address, in the body as the reference broker
//!   took them, or as `Authorization: Basic` with an `X-Qumulo-Cluster` header.
//!   qbroker checks them as the reference did, by logging in to the cluster
//!   (`POST /v1/session/login`) and reading its name
//!   (`GET /v1/cluster/settings`), with the enrichment's REST client. Unlike the
//!   reference it logs in only to clusters it knows (`[[clusters]]` or registered
//!   REST APIs, and `api.qumulo_hosts`): otherwise anyone could point the check
//!   at a server of their own that says yes. The caller is then that cluster:
//!   with `api.restrict_to_own_cluster` it sees and changes only that cluster's
//!   registration.
//!
//! A successful check is remembered for `api.auth_cache_secs`, under an HMAC of
//! the address and credentials (keyed at start, so the cache holds no password).
//! Every refusal is counted against the caller's address; past
//! `api.auth_failures_max` within the window the address is answered 429 without
//! a login attempt, so the broker cannot be used to guess a cluster's passwords.
//! Passwords and tokens never reach a log.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ring::hmac;
use tokio::sync::Semaphore;
use tracing::{info, warn};

use crate::config::{ApiAuth, ApiConfig, ApiServerConfig, Config, Secret};
use crate::enrich::client::{tls_config_pem, ApiClient};
use crate::metrics::{EnrichMetrics, RateLimit};

/// Remembered checks, at most.
const CACHE_ENTRIES: usize = 4096;
/// Sources whose failures are counted, at most.
const FAILURE_ENTRIES: usize = 65536;
/// Credential checks (logins) in flight at once.
const CHECKS_IN_FLIGHT: usize = 16;
/// A whole check, login and settings.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

static REFUSED_LOG: RateLimit = RateLimit::new(Duration::from_secs(10), 5);

/// What a caller may touch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Admin,
    /// The cluster whose credentials the caller gave (its name per the cluster).
    Cluster(String),
    /// Any cluster's registration: Qumulo credentials, without
    /// `restrict_to_own_cluster`.
    AnyCluster(String),
}

impl Scope {
    /// Whether the caller may see or change `cluster`'s registration.
    pub fn allows(&self, cluster: &str) -> bool {
        match self {
            Scope::Admin | Scope::AnyCluster(_) => true,
            Scope::Cluster(own) => own == cluster,
        }
    }

    pub fn is_admin(&self) -> bool {
        matches!(self, Scope::Admin)
    }
}

/// Qumulo credentials as the reference broker took them.
#[derive(Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    /// The cluster's address: `HOST` or `HOST:PORT`.
    pub cluster: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

/// The REST API a credential check logs in to.
pub struct CheckTarget {
    pub host: String,
    pub port: u16,
    pub ca_pem: Option<String>,
    pub insecure: bool,
}

/// Where clusters' REST APIs are, besides `api.qumulo_hosts`: the configured
/// and registered ones (by cluster name, and by host).
pub trait KnownApis: Send + Sync {
    fn known_apis(&self) -> Vec<(String, CheckTarget)>;
}

struct Failures {
    window_start: Instant,
    count: u32,
}

pub struct Auth {
    api: ApiServerConfig,
    cfg: Arc<Config>,
    key: hmac::Key,
    cache: Mutex<HashMap<Vec<u8>, (String, Instant)>>,
    failures: Mutex<HashMap<IpAddr, Failures>>,
    checks: Semaphore,
    qumulo_ca: Option<String>,
    metrics: Arc<EnrichMetrics>,
}

/// The source a failure is counted against: the address, or its /64 for IPv6.
fn source_key(ip: IpAddr) -> IpAddr {
    match crate::config::canonical_ip(ip) {
        IpAddr::V6(v6) => {
            let mut o = v6.octets();
            o[8..].fill(0);
            IpAddr::V6(o.into())
        }
        v4 => v4,
    }
}

/// Compare without an early exit, so that the time taken tells nothing.
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `HOST`, `HOST:PORT`, `[V6]` or `[V6]:PORT`.
fn split_host_port(cluster: &str) -> Option<(String, Option<u16>)> {
    let cluster = cluster.trim();
    if cluster.is_empty() || cluster.contains(['/', '@', ' ', '?', '#']) {
        return None;
    }
    if let Some(rest) = cluster.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after.strip_prefix(':') {
            Some(p) => Some((host.to_string(), Some(p.parse().ok()?))),
            None if after.is_empty() => Some((host.to_string(), None)),
            None => None,
        };
    }
    if cluster.parse::<std::net::Ipv6Addr>().is_ok() {
        return Some((cluster.to_string(), None));
    }
    match cluster.rsplit_once(':') {
        Some((h, p)) => Some((h.to_string(), Some(p.parse().ok()?))),
        None => Some((cluster.to_string(), None)),
    }
}

impl Auth {
    pub fn new(api: &ApiServerConfig, cfg: Arc<Config>) -> Result<Auth, String> {
        let rng = ring::rand::SystemRandom::new();
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &rng)
            .map_err(|_| "no random numbers for the credential cache key".to_string())?;
        let qumulo_ca = api
            .qumulo_ca_file
            .as_ref()
            .map(|p| {
                std::fs::read_to_string(p)
                    .map_err(|e| format!("api.qumulo_ca_file: cannot read {}: {e}", p.display()))
            })
            .transpose()?;
        Ok(Auth {
            api: api.clone(),
            cfg,
            key,
            cache: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            checks: Semaphore::new(CHECKS_IN_FLIGHT),
            qumulo_ca,
            metrics: Arc::default(),
        })
    }

    /// `Some(seconds)` while `ip` is past its failure budget.
    pub fn blocked(&self, ip: IpAddr) -> Option<u64> {
        let failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let f = failures.get(&source_key(ip))?;
        let elapsed = f.window_start.elapsed();
        if elapsed >= self.api.auth_failures_window || f.count < self.api.auth_failures_max {
            return None;
        }
        Some((self.api.auth_failures_window - elapsed).as_secs().max(1))
    }

    /// Count a refusal against `ip`.
    pub fn failed(&self, ip: IpAddr, reason: &str) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if failures.len() >= FAILURE_ENTRIES {
            let window = self.api.auth_failures_window;
            failures.retain(|_, f| f.window_start.elapsed() < window);
            if failures.len() >= FAILURE_ENTRIES {
                // A flood of sources: start over rather than grow.
                failures.clear();
            }
        }
        let now = Instant::now();
        let f = failures.entry(source_key(ip)).or_insert(Failures {
            window_start: now,
            count: 0,
        });
        if f.window_start.elapsed() >= self.api.auth_failures_window {
            *f = Failures {
                window_start: now,
                count: 0,
            };
        }
        f.count += 1;
        if let Some(suppressed) = REFUSED_LOG.check() {
            info!(peer = %ip, failures = f.count, reason, suppressed, "api: caller refused");
        }
    }

    /// Whether `header` (an `Authorization` value) carries the admin token.
    pub fn is_admin(&self, header: &str) -> Option<bool> {
        let token = header.strip_prefix("Bearer ")?;
        let admin = self.api.admin_token.as_ref()?;
        Some(same(token.trim().as_bytes(), admin.expose().as_bytes()))
    }

    fn cache_key(&self, c: &Credentials) -> Vec<u8> {
        let mut ctx = hmac::Context::with_key(&self.key);
        for part in [&c.cluster, &c.username, &c.password] {
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part.as_bytes());
        }
        ctx.sign().as_ref().to_vec()
    }

    /// The REST API to check `cluster`'s credentials with, if it is one qbroker
    /// may ask.
    fn target(&self, cluster: &str, known: &dyn KnownApis) -> Option<CheckTarget> {
        let (host, port) = split_host_port(cluster)?;
        // A configured cluster, by name or API host.
        for c in &self.cfg.clusters {
            let Some(api) = &c.api else { continue };
            if c.name == cluster
                || (api.host.eq_ignore_ascii_case(&host) && port.is_none_or(|p| p == api.port))
            {
                let ca_pem = match &api.ca_file {
                    Some(p) => Some(std::fs::read_to_string(p).ok()?),
                    None => None,
                };
                return Some(CheckTarget {
                    host: api.host.clone(),
                    port: api.port,
                    ca_pem,
                    insecure: api.insecure_skip_verify,
                });
            }
        }
        for (name, t) in known.known_apis() {
            if name == cluster
                || (t.host.eq_ignore_ascii_case(&host) && port.is_none_or(|p| p == t.port))
            {
                return Some(t);
            }
        }
        if self.api.qumulo_hosts.iter().any(|r| r.matches(&host)) {
            return Some(CheckTarget {
                host,
                port: port.unwrap_or(self.api.qumulo_port),
                ca_pem: self.qumulo_ca.clone(),
                insecure: self.api.qumulo_insecure_skip_verify,
            });
        }
        None
    }

    /// Check Qumulo credentials; the scope they give.
    pub async fn check(&self, c: &Credentials, known: &dyn KnownApis) -> Result<Scope, String> {
        if c.username.is_empty() || c.password.is_empty() {
            return Err("empty username or password".to_string());
        }
        let key = self.cache_key(c);
        let cached = {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            cache
                .get(&key)
                .filter(|(_, until)| *until > Instant::now())
                .map(|(name, _)| name.clone())
        };
        let name = match cached {
            Some(name) => name,
            None => {
                let name = self.login(c, known).await?;
                if !self.api.auth_cache.is_zero() {
                    let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
                    if cache.len() >= CACHE_ENTRIES {
                        let now = Instant::now();
                        cache.retain(|_, (_, until)| *until > now);
                        if cache.len() >= CACHE_ENTRIES {
                            cache.clear();
                        }
                    }
                    cache.insert(key, (name.clone(), Instant::now() + self.api.auth_cache));
                }
                name
            }
        };
        Ok(if self.api.restrict_to_own_cluster {
            Scope::Cluster(name)
        } else {
            Scope::AnyCluster(name)
        })
    }

    async fn login(&self, c: &Credentials, known: &dyn KnownApis) -> Result<String, String> {
        let Some(target) = self.target(&c.cluster, known) else {
            warn!(cluster = %c.cluster, "api: credential check refused: the cluster is not configured, not registered and not in api.qumulo_hosts");
            return Err("the cluster is not one qbroker may check credentials with".to_string());
        };
        let _slot = self
            .checks
            .acquire()
            .await
            .map_err(|_| "shutting down".to_string())?;
        let tls = tls_config_pem(
            &c.cluster,
            target
                .ca_pem
                .as_deref()
                .map(|p| crate::net::Pem::new(p.as_bytes(), "CA certificate")),
            target.insecure,
        )
        .map_err(|e| e.to_string())?;
        let api = ApiConfig {
            host: target.host,
            port: target.port,
            auth: ApiAuth::Login {
                username: c.username.clone(),
                password: Secret::new(c.password.clone()),
            },
            ca_file: None,
            insecure_skip_verify: target.insecure,
        };
        let client = Arc::new(
            ApiClient::with_tls(
                Arc::from(c.cluster.as_str()),
                &api,
                tls,
                1,
                CHECK_TIMEOUT / 2,
                Duration::from_secs(3600),
                self.metrics.clone(),
            )
            .map_err(|e| e.to_string())?,
        );
        match tokio::time::timeout(CHECK_TIMEOUT, client.cluster_name()).await {
            Ok(Ok(name)) => Ok(name),
            Ok(Err(err)) => Err(format!("the cluster did not accept the credentials: {err}")),
            Err(_) => Err("the cluster did not answer in time".to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_addresses() {
        assert_eq!(split_host_port("q1"), Some(("q1".to_string(), None)));
        assert_eq!(
            split_host_port("10.0.0.1:8000"),
            Some(("10.0.0.1".to_string(), Some(8000)))
        );
        assert_eq!(split_host_port("::1"), Some(("::1".to_string(), None)));
        assert_eq!(
            split_host_port("[::1]:9000"),
            Some(("::1".to_string(), Some(9000)))
        );
        assert_eq!(split_host_port("evil.example/x"), None);
        assert_eq!(split_host_port("u@h"), None);
        assert_eq!(split_host_port("h:notaport"), None);
    }

    #[test]
    fn constant_time_compare() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
    }

    #[test]
    fn ipv6_failures_count_per_64() {
        let a: IpAddr = "2001:db8:1:2:3:4:5:6".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::1".parse().unwrap();
        assert_eq!(source_key(a), source_key(b));
        let v4: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(source_key(v4), "10.0.0.1".parse::<IpAddr>().unwrap());
    }
}
