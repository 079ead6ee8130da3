//! targets: the running set of targets, and the route of every cluster to one.
//!
//! A running target is a spool (`<spool.dir>/<name>`), its egress lanes and its
//! age sealer. The `[[targets]]` of the configuration run from start to
//! shutdown. Registered targets (the registry of [`crate::store`], one per
//! cluster, named `@<cluster>` with the cluster name percent-encoded) come and
//! go while the broker runs: [`Targets::apply`] brings the running set to a
//! registry snapshot, after every change made through the API and every
//! `store.poll_secs` (changes other brokers made to a shared registry).
//!
//! A cluster's route: its registration, else its `[[clusters]]` entry's target,
//! else `default_target`, with the filer id that goes with it. A cluster has
//! none of them: its connections are refused (the nodes keep their audit log
//! and reconnect).
//!
//! What a change does:
//! - **register**: the cluster's spool is opened (a spool left on disk is
//!   delivered too) and its lanes started; the cluster's batcher seals its open
//!   batch into the old target's spool and sends its next batches to the new
//!   one ([`Batcher::set_route`]).
//! - **update**: a new URL, CA, token or client certificate applies to the next
//!   request, retries of batches in flight and batches already spooled
//!   included: the spool belongs to the target, and its contents go wherever the
//!   target points now. A new filer id applies from the next batch. New REST
//!   credentials apply to the next lookup.
//! - **delete**: the cluster goes back to its configured or default target for
//!   its next batches; what the deleted target's spool holds is still delivered,
//!   to the endpoint it had. Once nothing routes to it and its spool is empty it
//!   is stopped and its directory removed. A cluster that has no other target
//!   keeps sending to the deleted one until it is registered again (the API
//!   refuses such a deletion while the cluster is connected here; a deletion
//!   seen in a shared registry cannot be refused). If the broker stops before
//!   the spool is empty, the next start delivers what is left to the cluster's
//!   configured or default target (the deleted endpoint is not kept), or keeps
//!   the directory, with a warning, when the cluster has none.
//!
//! Locks: one for the set, held for map changes only; spools are opened, routes
//! switched (which may wait on a full spool) and lanes joined outside it. Changes
//! are applied one at a time. Nothing here is on the per-event path: a batcher
//! reads its route under the lock it already holds per batch.
//!
//! Owns: the set of running targets (spool, lanes, sealer) and the routes, and
//! the `/stats` document ([`Targets::stats`]). May touch: every stage it starts
//! (spool, egress, batch, enrich, store); nothing below names it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tracing::{error, info, warn};

use crate::batch::{Batcher, Route, Router, Sealer};
use crate::config::{ApiAuth, ApiConfig, Config, REGISTRY_SPOOL_CACHE_BYTES};
use crate::deadletter::DeadLetters;
use crate::egress::{self, client::TlsMaterial, Authorization, Egress, Endpoint};
use crate::enrich::{Enricher, RegisteredApi};
use crate::metrics::Metrics;
use crate::spool::{self, Spool};
use crate::store::{Registration, Store, StoreError};

/// A target could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open the spool of target {target}: {source}")]
    Spool {
        target: String,
        #[source]
        source: spool::SpoolError,
    },
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] egress::TlsSetupError),
}

/// Where a running target came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A `[[targets]]` entry.
    Config,
    /// A registration.
    Registry,
    /// A registration's spool found on disk at start without its registration.
    Leftover,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Config => "config",
            Origin::Registry => "registry",
            Origin::Leftover => "leftover",
        }
    }
}

struct Live {
    spool: Arc<Spool>,
    egress: Egress,
    sealer: Sealer,
    origin: Origin,
    /// Deleted: stopped and removed once nothing routes here and the spool is empty.
    draining: bool,
}

struct Attached {
    batcher: Arc<Batcher>,
    /// The name of the target its route points at.
    target: String,
    filer_id: Option<u64>,
}

#[derive(Default)]
struct State {
    live: BTreeMap<String, Live>,
    /// The registry as last applied, by cluster.
    registry: BTreeMap<String, Registration>,
    clusters: BTreeMap<Arc<str>, Attached>,
    stopped: bool,
    /// Shutting down: spools opened from now on take appends past their cap.
    uncapped: bool,
}

/// How the targets ended at shutdown ([`Targets::finish`]).
#[derive(Debug, Clone, Copy)]
pub struct Finished {
    /// Every spooled batch was delivered.
    pub delivered: bool,
    /// Batches still in the spools, sent at the next start.
    pub batches_left: u64,
}

/// A running target, as the API shows it.
#[derive(Debug, Clone)]
pub struct TargetView {
    pub name: String,
    pub origin: Origin,
    pub draining: bool,
    /// The URL without its query.
    pub url: String,
    pub spool: spool::Stats,
    /// The last delivery attempt failed.
    pub failing: bool,
    pub last_success_unix_ms: i64,
    /// Requests in flight at most, and whether batches are gzipped.
    pub in_flight: usize,
    pub gzip: bool,
    /// RabbitMQ blocks publishing (an AMQP target's memory or disk alarm).
    pub blocked: bool,
    /// Why the last failed attempt failed, and when (Unix ms).
    pub last_error: Option<(String, i64)>,
}

/// A registration that cannot run (bad PEM, bad URL).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// The running target set.
pub struct Targets {
    cfg: Arc<Config>,
    metrics: Arc<Metrics>,
    dead_letters: Arc<DeadLetters>,
    enricher: OnceLock<Arc<Enricher>>,
    state: Mutex<State>,
    /// One change at a time.
    applying: Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The name of a cluster's registered target: `@` and the name, percent-encoded
/// outside `[A-Za-z0-9._-]`, so that it is one safe path component and never a
/// `[[targets]]` name.
pub fn registered_name(cluster: &str) -> String {
    let mut s = String::with_capacity(cluster.len() + 1);
    s.push('@');
    for b in cluster.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

/// The cluster of a registered target's name.
fn cluster_of(name: &str) -> Option<String> {
    let enc = name.strip_prefix('@')?.as_bytes();
    let mut out = Vec::with_capacity(enc.len());
    let mut i = 0;
    while i < enc.len() {
        if enc[i] == b'%' {
            let hex = std::str::from_utf8(enc.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(enc[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The endpoint of a registration.
pub fn endpoint_of(reg: &Registration) -> Result<Endpoint, Invalid> {
    let cfg = target_config_of(reg)?;
    let auth = authorization_of(reg)?;
    let tls = tls_material_of(reg)?;
    Endpoint::with_pem(cfg, &tls, auth).map_err(|e| Invalid(e.to_string()))
}

/// The target settings of a registration (URL, and for AMQP its exchange and
/// login), named [`registered_name`].
pub fn target_config_of(reg: &Registration) -> Result<crate::config::TargetConfig, Invalid> {
    let name = registered_name(&reg.cluster_name);
    if reg.url.starts_with("amqp") {
        // An AMQP target: its RabbitMQ login, exchange and CA.
        return crate::egress::amqp::registered(&name, reg).map_err(Invalid);
    }
    crate::config::registered_target(&name, &reg.url).map_err(|e| Invalid(format!("url: {e}")))
}

/// How a registered HTTPS target's requests authenticate (an AMQP target logs
/// in with its [`target_config_of`] login instead: `None`).
pub fn authorization_of(reg: &Registration) -> Result<Authorization, Invalid> {
    if reg.url.starts_with("amqp") {
        return Ok(Authorization::None);
    }
    match (&reg.token, &reg.basic_username, &reg.basic_password) {
        // A username beside a token is only kept (an rmq registration in bearer mode).
        (Some(t), _, None) => Ok(Authorization::Bearer(t.clone())),
        (None, Some(u), Some(p)) => Ok(Authorization::Basic {
            username: u.clone(),
            password: p.clone(),
        }),
        (None, None, None) => Ok(Authorization::None),
        _ => Err(Invalid(
            "token, and username with password, do not go together".to_string(),
        )),
    }
}

/// A registration's CA certificate and client certificate, as PEM text.
pub fn tls_material_of(reg: &Registration) -> Result<TlsMaterial<'_>, Invalid> {
    let client = match (&reg.client_certificate, &reg.client_key) {
        (Some(c), Some(k)) => Some((c.as_bytes(), k.expose().as_bytes())),
        (None, None) => None,
        // An AMQP registration with half a client certificate uses none.
        _ if reg.url.starts_with("amqp") => None,
        _ => {
            return Err(Invalid(
                "client_certificate and client_key go together".to_string(),
            ))
        }
    };
    Ok(TlsMaterial {
        ca_pem: reg.ca_certificate.as_deref().map(str::as_bytes),
        client,
    })
}

/// The REST API of a registration, for enrichment and the credential check.
pub fn api_of(reg: &Registration) -> Result<Option<RegisteredApi>, Invalid> {
    let Some(url) = &reg.api_url else {
        return Ok(None);
    };
    let (host, port) = crate::config::api_url(url).map_err(|e| Invalid(format!("api.url: {e}")))?;
    let auth = match (&reg.api_username, &reg.api_password, &reg.api_access_token) {
        (Some(u), Some(p), None) if !u.is_empty() => ApiAuth::Login {
            username: u.clone(),
            password: p.clone(),
        },
        (None, None, Some(t)) => ApiAuth::AccessToken(t.clone()),
        _ => {
            return Err(Invalid(
                "api: give username and password, or access_token".to_string(),
            ))
        }
    };
    if reg.api_ca_certificate.is_some() && reg.api_insecure_skip_verify {
        return Err(Invalid(
            "api: ca_certificate and insecure_skip_verify do not go together".to_string(),
        ));
    }
    let api = ApiConfig {
        host,
        port,
        auth,
        ca_file: None,
        insecure_skip_verify: reg.api_insecure_skip_verify,
    };
    // Build the TLS settings now, so that a bad certificate is refused at once.
    crate::enrich::client::tls_config_pem(
        &reg.cluster_name,
        reg.api_ca_certificate
            .as_deref()
            .map(|p| crate::net::Pem::new(p.as_bytes(), "api.ca_certificate")),
        reg.api_insecure_skip_verify,
    )
    .map_err(|e| Invalid(e.to_string()))?;
    Ok(Some(RegisteredApi {
        api,
        ca_pem: reg.api_ca_certificate.clone(),
    }))
}

impl Targets {
    /// Open the configured targets' spools and start their lanes and sealers,
    /// then the registered ones (`registry`), then leftovers of deleted ones.
    /// Must be called inside a tokio runtime, from a thread that may block.
    pub fn start(
        cfg: Arc<Config>,
        registry: Vec<Registration>,
        metrics: Arc<Metrics>,
        dead_letters: Arc<DeadLetters>,
        enricher: Arc<Enricher>,
    ) -> Result<Arc<Targets>, StartError> {
        let targets = Arc::new(Targets {
            cfg: cfg.clone(),
            metrics,
            dead_letters,
            enricher: OnceLock::from(enricher),
            state: Mutex::new(State::default()),
            applying: Mutex::new(()),
        });
        for t in &cfg.targets {
            let spool = targets.open_spool(&t.name)?;
            let endpoint = Endpoint::from_config(t.clone())?;
            let live = targets.run(endpoint, spool, Origin::Config)?;
            lock(&targets.state).live.insert(t.name.clone(), live);
        }
        targets.apply(registry);
        targets.adopt_leftovers();
        Ok(targets)
    }

    fn spool_options(&self) -> spool::Options {
        spool::Options {
            max_bytes: self.cfg.spool.max_bytes,
            segment_bytes: self.cfg.spool.segment_bytes,
            fsync: self.cfg.spool.fsync,
        }
    }

    fn open_spool(&self, name: &str) -> Result<Arc<Spool>, StartError> {
        let spool = Spool::open(&self.cfg.spool.dir.join(name), self.spool_options()).map_err(
            |source| StartError::Spool {
                target: name.to_string(),
                source,
            },
        )?;
        let stats = spool.stats();
        if stats.unacked_records > 0 {
            info!(target = %name, batches = stats.unacked_records, "unacknowledged batches in the spool will be sent again");
        }
        if name.starts_with('@') {
            spool.set_cache_bytes(REGISTRY_SPOOL_CACHE_BYTES);
        }
        Ok(Arc::new(spool))
    }

    fn run(
        &self,
        endpoint: Endpoint,
        spool: Arc<Spool>,
        origin: Origin,
    ) -> Result<Live, StartError> {
        let name = endpoint.cfg.name.clone();
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| StartError::Io {
            what: "cannot start a batch sealer",
            source: std::io::Error::other("not inside the tokio runtime"),
        })?;
        let sealer = Sealer::start(&name, spool.clone(), &runtime);
        let egress = egress::start_endpoint(
            endpoint,
            spool.clone(),
            self.metrics.clone(),
            self.dead_letters.clone(),
        );
        Ok(Live {
            spool,
            egress,
            sealer,
            origin,
            draining: false,
        })
    }

    /// Spool directories of registered targets with no registration: deliver
    /// what they hold to the cluster's configured or default target.
    fn adopt_leftovers(&self) {
        let Ok(entries) = std::fs::read_dir(&self.cfg.spool.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with('@') || !entry.path().is_dir() {
                continue;
            }
            if lock(&self.state).live.contains_key(&name) {
                continue;
            }
            let Some(cluster) = cluster_of(&name) else {
                warn!(dir = %entry.path().display(), "spool directory of no cluster left alone");
                continue;
            };
            let Some((fallback, _)) = self.configured_route(&cluster) else {
                warn!(cluster = %cluster, dir = %entry.path().display(), "spool of a deleted registration and the cluster has no configured or default target: kept as is until it is registered again");
                continue;
            };
            let Some(mut target_cfg) = self
                .cfg
                .targets
                .iter()
                .find(|t| t.name == fallback)
                .cloned()
            else {
                continue;
            };
            target_cfg.name = name.clone();
            let started = self.open_spool(&name).and_then(|spool| {
                let endpoint = Endpoint::from_config(target_cfg)?;
                self.run(endpoint, spool, Origin::Leftover)
            });
            match started {
                Ok(mut live) => {
                    info!(cluster = %cluster, target = %fallback, "spool of a deleted registration: delivering what it holds to the cluster's configured target");
                    live.draining = true;
                    lock(&self.state).live.insert(name, live);
                }
                Err(err) => {
                    error!(cluster = %cluster, error = %err, "cannot open the spool of a deleted registration")
                }
            }
        }
    }

    /// The `[[clusters]]` or default target of `cluster`, and its filer id.
    fn configured_route(&self, cluster: &str) -> Option<(String, Option<u64>)> {
        let cfg = &self.cfg;
        match cfg.cluster_named(cluster) {
            Some(c) => Some((cfg.targets[c.target].name.clone(), c.filer_id)),
            None => cfg
                .default_target
                .map(|i| (cfg.targets[i].name.clone(), None)),
        }
    }

    /// The route `cluster` should have now.
    fn desired(&self, st: &State, cluster: &str) -> Option<(String, Option<u64>)> {
        if let Some(reg) = st.registry.get(cluster) {
            let name = registered_name(cluster);
            if st.live.get(&name).is_some_and(|l| !l.draining) {
                return Some((name, reg.filer_id.map(|f| f as u64)));
            }
        }
        self.configured_route(cluster)
    }

    fn route_to(st: &State, target: &str, filer_id: Option<u64>) -> Option<Route> {
        let live = st.live.get(target)?;
        Some(Route {
            target: Arc::from(target),
            spool: live.spool.clone(),
            filer_id,
            lanes: live.egress.endpoint().cfg.in_flight,
            wake: live.sealer.waker(),
        })
    }

    /// Bring the running set to `registry` (a whole snapshot of the registry).
    /// Registrations that cannot run are logged and left as they were. Blocking.
    pub fn apply(&self, registry: Vec<Registration>) {
        let _one = lock(&self.applying);
        if lock(&self.state).stopped {
            return;
        }
        let wanted: BTreeMap<String, Registration> = registry
            .into_iter()
            .map(|r| (r.cluster_name.clone(), r))
            .collect();
        let before = lock(&self.state).registry.clone();
        let mut applied = before.clone();

        // Registrations added or changed.
        for (cluster, reg) in &wanted {
            let old = before.get(cluster);
            if old == Some(reg) {
                continue;
            }
            match self.apply_one(cluster, old, reg) {
                Ok(()) => {
                    applied.insert(cluster.clone(), reg.clone());
                }
                Err(err) => {
                    error!(cluster = %cluster, error = %err, "registration cannot be applied; the cluster keeps its previous target")
                }
            }
        }
        // Registrations gone.
        for cluster in before.keys().filter(|c| !wanted.contains_key(*c)) {
            applied.remove(cluster);
            self.set_api(cluster, None);
            let name = registered_name(cluster);
            let mut st = lock(&self.state);
            if let Some(live) = st.live.get_mut(&name) {
                live.draining = true;
                info!(cluster = %cluster, target = %name, "registration deleted: its spool is delivered, then removed");
            }
        }
        lock(&self.state).registry = applied;
        self.reroute();
        self.sweep_locked();
    }

    fn apply_one(
        &self,
        cluster: &str,
        old: Option<&Registration>,
        reg: &Registration,
    ) -> Result<(), Invalid> {
        let name = registered_name(cluster);
        let api = api_of(reg)?;
        let target_changed = old.is_none_or(|o| !o.same_target(reg));
        let running = lock(&self.state).live.contains_key(&name);
        if target_changed || !running {
            let mut endpoint = endpoint_of(reg)?;
            if let Some(store) = &self.cfg.store {
                endpoint.cfg.in_flight = store.target_in_flight;
                endpoint.cfg.gzip = store.target_gzip;
            }
            let mut st = lock(&self.state);
            match st.live.get_mut(&name) {
                Some(live) => {
                    // Running, or deleted and still draining (registered again).
                    live.egress.update(endpoint);
                    live.draining = false;
                    live.origin = Origin::Registry;
                }
                None => {
                    drop(st);
                    let spool = self.open_spool(&name).map_err(|e| Invalid(e.to_string()))?;
                    let live = self
                        .run(endpoint, spool, Origin::Registry)
                        .map_err(|e| Invalid(e.to_string()))?;
                    info!(cluster = %cluster, target = %name, url = %live.egress.endpoint().cfg.url_for_logs(), "registered target started");
                    st = lock(&self.state);
                    if st.stopped {
                        return Err(Invalid("shutting down".to_string()));
                    }
                    if st.uncapped {
                        live.spool.lift_cap();
                    }
                    st.live.insert(name.clone(), live);
                }
            }
        }
        if old.is_none_or(|o| !o.same_api(reg)) {
            // The registry's credentials, else the configured ones.
            match api {
                Some(api) => self.set_api(cluster, Some(&api)),
                None => self.set_api(cluster, None),
            }
        }
        Ok(())
    }

    /// Hand `cluster`'s REST credentials (registered, else configured) to the
    /// enricher, and a new link to the cluster's batcher.
    fn set_api(&self, cluster: &str, registered: Option<&RegisteredApi>) {
        let Some(enricher) = self.enricher.get() else {
            return;
        };
        let configured = self
            .cfg
            .cluster_named(cluster)
            .and_then(|c| c.api.clone())
            .map(|api| RegisteredApi { api, ca_pem: None });
        let api = registered.or(configured.as_ref());
        match enricher.set_api(cluster, api) {
            Ok(Some(link)) => {
                let batcher = lock(&self.state)
                    .clusters
                    .get(cluster)
                    .map(|a| a.batcher.clone());
                if let Some(b) = batcher {
                    b.enable_enrichment(link);
                }
            }
            Ok(None) => {}
            Err(err) => {
                error!(cluster = %cluster, error = %err, "cannot use the cluster's REST API credentials")
            }
        }
    }

    /// Give every attached cluster the route it should have now.
    fn reroute(&self) {
        let moves: Vec<(Arc<Batcher>, String, String, Route)> = {
            let st = lock(&self.state);
            st.clusters
                .iter()
                .filter_map(|(cluster, a)| {
                    let Some((target, filer_id)) = self.desired(&st, cluster) else {
                        if st.live.get(&a.target).is_some_and(|l| l.draining) && !a.batcher.route_gone() {
                            a.batcher.set_route_gone();
                            info!(cluster = %cluster, target = %a.target, "registration deleted and the cluster has no other target: what it still sends goes to the deleted target; once no node is connected the cluster is forgotten and later connections are refused");
                        }
                        return None;
                    };
                    if target == a.target && filer_id == a.filer_id {
                        return None;
                    }
                    let route = Targets::route_to(&st, &target, filer_id)?;
                    Some((a.batcher.clone(), a.target.clone(), target, route))
                })
                .collect()
        };
        for (batcher, from, to, route) in moves {
            let filer_id = route.filer_id;
            // Outside the lock: it seals and appends the open batch to the old spool.
            batcher.set_route(route);
            let mut st = lock(&self.state);
            if let Some(old) = st.live.get(&from) {
                old.sealer.remove(&batcher);
            }
            if let Some(new) = st.live.get(&to) {
                new.sealer.add(&batcher);
            }
            if let Some(a) = st.clusters.get_mut(batcher.cluster()) {
                a.target = to.clone();
                a.filer_id = filer_id;
            }
            info!(cluster = %batcher.cluster(), from = %from, to = %to, "cluster's batches now go to another target");
        }
    }

    /// Stop and remove deleted targets that nothing routes to and whose spools
    /// are empty. Blocking (joins their lanes).
    pub fn sweep(&self) {
        let _one = lock(&self.applying);
        self.sweep_locked();
    }

    fn sweep_locked(&self) {
        let done: Vec<(String, Live)> = {
            let mut st = lock(&self.state);
            if st.stopped {
                return;
            }
            let names: Vec<String> = st
                .live
                .iter()
                .filter(|(name, live)| {
                    live.draining
                        && live.spool.stats().unacked_records == 0
                        && !st.clusters.values().any(|a| &a.target == *name)
                })
                .map(|(name, _)| name.clone())
                .collect();
            names
                .into_iter()
                .filter_map(|n| st.live.remove(&n).map(|l| (n, l)))
                .collect()
        };
        for (name, live) in done {
            live.spool.close();
            live.sealer.stop();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            let dir: PathBuf = live.spool.dir().to_path_buf();
            let Live { spool, egress, .. } = live;
            let drained = tokio::runtime::Handle::current().block_on(egress.finish(deadline));
            drop(spool);
            if drained {
                self.metrics.remove_target(&name);
                match std::fs::remove_dir_all(&dir) {
                    Ok(()) => info!(target = %name, "deleted target drained and removed"),
                    Err(err) => {
                        warn!(target = %name, dir = %dir.display(), error = %err, "deleted target drained; its spool directory could not be removed")
                    }
                }
            }
        }
    }

    /// Whether deleting `cluster`'s registration would leave a node of the
    /// cluster connected here (now) without a target.
    pub fn deletion_strands(&self, cluster: &str) -> bool {
        let st = lock(&self.state);
        st.clusters
            .get(cluster)
            .is_some_and(|a| a.batcher.metrics().connections.get() > 0)
            && self.configured_route(cluster).is_none()
    }

    /// The name of the target `cluster`'s batches go to now, if it is connected.
    pub fn route_of(&self, cluster: &str) -> Option<String> {
        lock(&self.state)
            .clusters
            .get(cluster)
            .map(|a| a.target.clone())
    }

    /// The target `cluster` would be routed to now (connected or not).
    pub fn target_of(&self, cluster: &str) -> Option<String> {
        let st = lock(&self.state);
        match st.clusters.get(cluster) {
            Some(a) => Some(a.target.clone()),
            None => self.desired(&st, cluster).map(|(t, _)| t),
        }
    }

    /// Every running target.
    pub fn views(&self) -> Vec<TargetView> {
        let st = lock(&self.state);
        st.live
            .iter()
            .map(|(name, live)| {
                let m = live.egress.metrics();
                TargetView {
                    name: name.clone(),
                    origin: live.origin,
                    draining: live.draining,
                    url: live.egress.endpoint().cfg.url_for_logs().to_string(),
                    in_flight: live.egress.endpoint().cfg.in_flight,
                    gzip: live.egress.endpoint().cfg.gzip,
                    spool: live.spool.stats(),
                    failing: m.failing.get() != 0,
                    blocked: m.blocked.get() != 0,
                    last_error: m.last_error(),
                    last_success_unix_ms: m.last_success_unix_ms.get(),
                }
            })
            .collect()
    }

    /// The spools of every running target.
    pub fn spools(&self) -> Vec<Arc<Spool>> {
        lock(&self.state)
            .live
            .values()
            .map(|live| live.spool.clone())
            .collect()
    }

    /// Spool figures of every running target, for `/metrics`.
    pub fn spool_stats(&self) -> Vec<(String, spool::Stats)> {
        let st = lock(&self.state);
        st.live
            .iter()
            .map(|(name, live)| (name.clone(), live.spool.stats()))
            .collect()
    }

    /// Shutdown, first step: every spool takes appends past its cap from now
    /// on, so that draining the work queue and sealing the open batches never
    /// waits on a target that is away (nor loses what is in memory when the
    /// grace period ends). See [`Spool::lift_cap`].
    pub fn lift_caps(&self) {
        let spools: Vec<Arc<Spool>> = {
            let mut st = lock(&self.state);
            st.uncapped = true;
            st.live.values().map(|l| l.spool.clone()).collect()
        };
        for spool in spools {
            spool.lift_cap();
        }
    }

    /// Shutdown, after the batches were flushed: no more changes; close every
    /// spool, let the lanes deliver until `deadline`, and sync. What was
    /// delivered and what stays in the spools for the next start.
    pub async fn finish(&self, deadline: tokio::time::Instant) -> Finished {
        let lives: Vec<(String, Live)> = {
            let mut st = lock(&self.state);
            st.stopped = true;
            std::mem::take(&mut st.live).into_iter().collect()
        };
        let mut spools = Vec::with_capacity(lives.len());
        let mut finishing = Vec::with_capacity(lives.len());
        for (name, live) in lives {
            live.spool.close();
            live.sealer.stop();
            spools.push((name, live.spool.clone()));
            finishing.push(live.egress.finish(deadline));
        }
        let finished = futures_util::future::join_all(finishing).await;
        let mut batches_left = 0;
        for (name, spool) in &spools {
            if let Err(err) = spool.sync() {
                error!(target = %name, error = %err, "cannot sync the spool");
            }
            batches_left += spool.stats().unacked_records;
        }
        Finished {
            delivered: finished.iter().all(|d| *d) && batches_left == 0,
            batches_left,
        }
    }

    /// The REST APIs of the applied registrations, by cluster.
    pub fn registered_apis(&self) -> Vec<(String, RegisteredApi)> {
        let regs: Vec<Registration> = lock(&self.state).registry.values().cloned().collect();
        regs.iter()
            .filter_map(|r| Some((r.cluster_name.clone(), api_of(r).ok()??)))
            .collect()
    }

    /// `cluster`'s batcher's slot at the admission gate, if it is connected.
    pub fn gate_id(&self, cluster: &str) -> Option<usize> {
        lock(&self.state)
            .clusters
            .get(cluster)
            .map(|a| a.batcher.gate_id())
    }
}

/// Keeps the running set in step with the registry: after every change made
/// through this broker's API ([`RegistrySync::reload`]), and every
/// `store.poll_secs` for changes other brokers sharing the registry made;
/// and sweeps drained targets every second.
pub struct RegistrySync {
    pub store: Arc<Store>,
    pub targets: Arc<Targets>,
    /// One read-and-apply at a time, so that an older snapshot is never applied
    /// after a newer one.
    one: tokio::sync::Mutex<()>,
}

impl RegistrySync {
    pub fn new(store: Arc<Store>, targets: Arc<Targets>) -> Arc<RegistrySync> {
        Arc::new(RegistrySync {
            store,
            targets,
            one: tokio::sync::Mutex::new(()),
        })
    }

    /// Read the registry and apply it.
    pub async fn reload(&self) -> Result<(), StoreError> {
        let _one = self.one.lock().await;
        let all = self.store.list().await?;
        let targets = self.targets.clone();
        tokio::task::spawn_blocking(move || targets.apply(all))
            .await
            .map_err(|e| StoreError::Db(format!("applying the registry panicked: {e}")))
    }

    /// Poll and sweep until `stop` turns true.
    pub async fn run(
        self: Arc<Self>,
        poll: Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut sweep = tokio::time::interval(Duration::from_secs(1));
        let mut reread = tokio::time::interval(poll);
        reread.tick().await;
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = sweep.tick() => {
                    let _one = self.one.lock().await;
                    let targets = self.targets.clone();
                    let _ = tokio::task::spawn_blocking(move || targets.sweep()).await;
                }
                _ = reread.tick() => {
                    if let Err(err) = self.reload().await {
                        warn!(error = %err, "cannot read the registry again");
                    }
                }
            }
        }
    }
}

impl Router for Targets {
    fn attach(
        &self,
        cluster: &Arc<str>,
        make: &mut dyn FnMut(Route) -> Arc<Batcher>,
    ) -> Option<Arc<Batcher>> {
        let mut st = lock(&self.state);
        if let Some(a) = st.clusters.get(cluster) {
            return Some(a.batcher.clone());
        }
        let (target, filer_id) = self.desired(&st, cluster)?;
        let route = Targets::route_to(&st, &target, filer_id)?;
        let b = make(route);
        if let Some(live) = st.live.get(&target) {
            live.sealer.add(&b);
        }
        st.clusters.insert(
            cluster.clone(),
            Attached {
                batcher: b.clone(),
                target,
                filer_id,
            },
        );
        Some(b)
    }

    fn stop_sealers(&self) {
        let st = lock(&self.state);
        for live in st.live.values() {
            live.sealer.stop();
        }
    }

    fn detach(&self, cluster: &str, batcher: &Arc<Batcher>) {
        let mut st = lock(&self.state);
        let Some(a) = st.clusters.get(cluster) else {
            return;
        };
        if !Arc::ptr_eq(&a.batcher, batcher) {
            return;
        }
        let target = a.target.clone();
        st.clusters.remove(cluster);
        if let Some(live) = st.live.get(&target) {
            live.sealer.remove(batcher);
        }
    }

    fn is_known(&self, cluster: &str) -> bool {
        self.cfg.cluster_named(cluster).is_some()
            || lock(&self.state).registry.contains_key(cluster)
    }
}

/// `GET /stats` (the document of [`crate::metrics::stats`]): the metrics
/// seen through the running targets and routes.
mod stats {
    use crate::metrics::stats::{
        ClusterStats, LatencyStats, QueueStats, Stats, TargetStats, SCHEMA,
    };
    use crate::metrics::Metrics;
    use crate::sync::gate::Gate;
    use crate::targets::Targets;

    impl Targets {
        /// Take a snapshot. Cost: one pass over the clusters and the targets, each
        /// lock held briefly, as `/metrics` does.
        pub fn stats(&self, m: &Metrics, gate: &Gate, uptime_ms: u64) -> Stats {
            let usage = gate.usage();
            let (quantiles, count) = m.latency_quantiles(&[0.5, 0.99, 1.0]);
            let q = |i: usize| quantiles.get(i).map_or(0, |&(_, us)| us);
            let clusters = m
                .clusters()
                .into_iter()
                .map(|c| {
                    let (queue_messages, queue_bytes) = self
                        .gate_id(&c.name)
                        .map_or((0, 0), |id| gate.cluster_usage(id));
                    let buckets = c.latency.snapshot();
                    let max_us = c.latency.max_us();
                    // A bucket's bound, never above the largest latency seen.
                    let q = |q| {
                        crate::metrics::buckets_quantile(&buckets, q).map_or(0, |us| us.min(max_us))
                    };
                    ClusterStats {
                        name: c.name.to_string(),
                        nodes_connected: c.connections.get(),
                        nodes: c.nodes().len() as u64,
                        frames: c.frames.get(),
                        bytes: c.bytes.get(),
                        events: c.events_total(),
                        filtered: c.filtered.iter().map(crate::metrics::Counter::get).sum(),
                        parse_errors: c.parse_errors_total(),
                        batches: c.batches.get(),
                        events_lost: c.events_lost.get(),
                        queue_messages: queue_messages as u64,
                        queue_bytes: queue_bytes as u64,
                        route: self.route_of(&c.name),
                        last_event_unix_ms: c.last_event_unix_ms.get(),
                        latency: LatencyStats {
                            p50_us: q(0.5),
                            p99_us: q(0.99),
                            max_us,
                            count: buckets.iter().map(|b| b.1).sum(),
                        },
                        latency_buckets: buckets.clone(),
                    }
                })
                .collect();
            let targets = self
                .views()
                .into_iter()
                .map(|v| {
                    let t = m.target(&v.name);
                    TargetStats {
                        origin: v.origin.as_str().to_string(),
                        state: if v.draining {
                            "draining"
                        } else if v.failing {
                            "failing"
                        } else {
                            "ok"
                        }
                        .to_string(),
                        last_error: v
                            .last_error
                            .as_ref()
                            .filter(|_| v.failing)
                            .map(|(e, _)| e.clone()),
                        url: crate::metrics::stats::shown_url(&v.url),
                        in_flight: t.in_flight.get(),
                        in_flight_max: v.in_flight as u64,
                        spool_bytes: v.spool.bytes,
                        spool_batches: v.spool.unacked_records,
                        spool_unacked_bytes: v.spool.unacked_bytes,
                        oldest_unacked_age_ms: v.spool.oldest_unacked_age_ms,
                        batches_delivered: t.batches_delivered.get(),
                        events_delivered: t.events_delivered.get(),
                        bytes_sent: t.bytes_sent.get(),
                        retries: t.retries.get(),
                        failures: t.failures_connect.get()
                            + t.failures_tls.get()
                            + t.failures_timeout.get()
                            + t.failures_status.get(),
                        batches_dead_lettered: t.batches_dead_lettered.get(),
                        last_success_unix_ms: v.last_success_unix_ms,
                        name: v.name,
                    }
                })
                .collect();
            Stats {
                schema: SCHEMA.to_string(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                uptime_ms,
                time_unix_ms: crate::metrics::unix_ms(),
                queue: QueueStats {
                    messages: usage.msgs as u64,
                    bytes: usage.bytes as u64,
                    capacity_messages: usage.cap_msgs as u64,
                    capacity_bytes: usage.cap_bytes as u64,
                    waiting_readers: usage.waiters as u64,
                },
                latency: LatencyStats {
                    p50_us: q(0),
                    p99_us: q(1),
                    max_us: q(2),
                    count,
                },
                clusters,
                targets,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_names_are_one_safe_path_component_and_round_trip() {
        for cluster in ["east", "a/b", "..", "Üst wing", "x%y", "@z"] {
            let name = registered_name(cluster);
            assert!(name.starts_with('@'));
            assert!(!name[1..].contains(['/', '@', ' ']), "{name}");
            assert_eq!(cluster_of(&name).as_deref(), Some(cluster));
        }
        assert_eq!(registered_name("qa-1.b_c"), "@qa-1.b_c");
    }
}
