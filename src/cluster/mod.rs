//! cluster: one supervisor actor per Qumulo cluster, created on first sight.
//!
//! The [`Registry`] lives on the listener's thread. When a new connection has
//! told its cluster (by source address or by the HOSTNAME of its first frame),
//! the registry returns that cluster's [`Supervisor`], starting it on the next
//! arbiter in turn, with its admission-gate slot and its batcher, and a
//! [`Lease`] the connection holds until it ends. Clusters known only by their
//! HOSTNAME that have no connection and hold nothing are forgotten after
//! `ingest.forget_idle_cluster_secs`, or at once when room is needed, so the
//! table does not only grow.
//!
//! Owns: the per-cluster supervisors, their numbering
//! ([`supervisor::Sequence`]) and how their readers end ([`supervisor::End`]).
//! May touch: the batchers (through [`crate::batch::Batches`]), the gate,
//! config and metrics; it names nothing of ingest (ingest names it).

pub mod supervisor;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_rt::ArbiterHandle;
use tracing::info;

use crate::batch::Batches;
use crate::metrics::Metrics;
use crate::pool::ClusterShared;
use crate::sync::gate::Gate;

pub use supervisor::Supervisor;

/// The connections that hold a cluster in the table. A [`Lease`] is taken
/// under the registry's lock when a connection is routed to the cluster, and
/// given back when the connection ends (dropped with its reader), so a cluster
/// is never forgotten between being chosen and reading.
#[derive(Default)]
struct Presence {
    connections: AtomicUsize,
    /// When the last connection ended (or the cluster was created).
    idle_since: Mutex<Option<Instant>>,
}

/// One connection's hold on its cluster: see [`Presence`].
pub struct Lease(Arc<Presence>);

impl Lease {
    fn new(p: &Arc<Presence>) -> Lease {
        p.connections.fetch_add(1, Ordering::AcqRel);
        Lease(p.clone())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut idle = self.0.idle_since.lock().unwrap_or_else(|e| e.into_inner());
        if self.0.connections.fetch_sub(1, Ordering::AcqRel) == 1 {
            *idle = Some(Instant::now());
        }
    }
}

struct Entry {
    addr: Addr<Supervisor>,
    shared: Arc<ClusterShared>,
    presence: Arc<Presence>,
    /// Configured or registered when first seen: not counted against
    /// `max_clusters`, never forgotten.
    known: bool,
}

impl Entry {
    /// How long the cluster has had no connection; `None` while it has one.
    fn idle_for(&self, now: Instant) -> Option<Duration> {
        let idle = self
            .presence
            .idle_since
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if self.presence.connections.load(Ordering::Acquire) > 0 {
            return None;
        }
        idle.map(|t| now.saturating_duration_since(t))
    }
}

/// Every cluster seen and not forgotten.
pub struct Registry {
    arbiters: Vec<ArbiterHandle>,
    gate: Arc<Gate>,
    batches: Arc<Batches>,
    metrics: Arc<Metrics>,
    max_clusters: usize,
    clusters: HashMap<Arc<str>, Entry>,
    /// Clusters in `clusters` that are not `known`.
    unknown: usize,
    /// Clusters started so far (spreads them over the arbiters).
    started: usize,
}

/// Why a new cluster was not started.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// `ingest.max_clusters` clusters known only by their HOSTNAME are held,
    /// and none is idle.
    TooManyClusters,
    /// No target: not registered, not configured, and no `default_target`.
    NoTarget,
}

impl Registry {
    pub fn new(
        arbiters: Vec<ArbiterHandle>,
        gate: Arc<Gate>,
        batches: Arc<Batches>,
        metrics: Arc<Metrics>,
        max_clusters: usize,
    ) -> Registry {
        assert!(!arbiters.is_empty(), "at least one arbiter");
        Registry {
            arbiters,
            gate,
            batches,
            metrics,
            max_clusters,
            clusters: HashMap::new(),
            unknown: 0,
            started: 0,
        }
    }

    /// The supervisor of `name` and a lease on it for one connection, started
    /// now if this is the cluster's first connection; the cluster's target
    /// (registered, configured or default) comes from the batches' router. A
    /// cluster known only by its HOSTNAME is refused when `max_clusters` such
    /// clusters are held and none of them is idle (an idle one is forgotten to
    /// make room); a configured or registered one never is.
    pub fn get_or_create(&mut self, name: &str) -> Result<(Addr<Supervisor>, Lease), Refused> {
        if let Some(e) = self.clusters.get(name) {
            // A cluster whose route is gone (its registration deleted) starts
            // afresh once no connection holds it and nothing waits in it (it
            // is then refused unless it has a target again).
            let stale = e.shared.batcher.route_gone()
                && e.presence.connections.load(Ordering::Acquire) == 0
                && self.batches.forget(&e.shared.batcher);
            if !stale {
                return Ok((e.addr.clone(), Lease::new(&e.presence)));
            }
            let e = self.clusters.remove(name).expect("looked up above");
            if !e.known {
                self.unknown -= 1;
            }
            info!(cluster = %name, "cluster forgotten: its registration was deleted");
        }
        let known = self.batches.is_known(name);
        if !known && self.unknown >= self.max_clusters {
            self.forget_idle(Duration::ZERO, 1);
            if self.unknown >= self.max_clusters {
                return Err(Refused::TooManyClusters);
            }
        }
        let name: Arc<str> = Arc::from(name);
        let batcher = self
            .batches
            .create(name.clone(), &self.metrics, &self.gate)
            .ok_or(Refused::NoTarget)?;
        let (gate_id, metrics) = (batcher.gate_id(), batcher.metrics().clone());
        let shared = Arc::new(ClusterShared {
            name: name.clone(),
            gate_id,
            metrics,
            batcher,
        });
        let arbiter = &self.arbiters[self.started % self.arbiters.len()];
        self.started += 1;
        let broker_metrics = self.metrics.clone();
        let actor_shared = shared.clone();
        let addr = Supervisor::start_in_arbiter(arbiter, move |_ctx| {
            Supervisor::new(actor_shared, broker_metrics)
        });
        let presence = Arc::new(Presence::default());
        let lease = Lease::new(&presence);
        if !known {
            self.unknown += 1;
        }
        self.clusters.insert(
            name,
            Entry {
                addr: addr.clone(),
                shared,
                presence,
                known,
            },
        );
        Ok((addr, lease))
    }

    /// Forget up to `limit` clusters known only by their HOSTNAME that have had
    /// no connection for `min_idle` and hold nothing (queue, open batch,
    /// enrichment), those idle longest first: their supervisors stop, their
    /// batchers and metric series go. Returns how many were forgotten.
    pub fn forget_idle(&mut self, min_idle: Duration, limit: usize) -> usize {
        let now = Instant::now();
        // Clusters whose route is gone go at once, known ones too.
        let mut idle: Vec<(Duration, Arc<str>)> = self
            .clusters
            .iter()
            .filter(|(_, e)| !e.known || e.shared.batcher.route_gone())
            .filter_map(|(name, e)| {
                let d = e.idle_for(now)?;
                (d >= min_idle || e.shared.batcher.route_gone()).then(|| (d, name.clone()))
            })
            .collect();
        idle.sort_by_key(|i| std::cmp::Reverse(i.0));
        let mut forgotten = 0;
        for (idle_for, name) in idle {
            if forgotten >= limit {
                break;
            }
            let Some(e) = self.clusters.get(&name) else {
                continue;
            };
            // No lease can be taken meanwhile: that needs this registry.
            if e.presence.connections.load(Ordering::Acquire) > 0
                || !self.batches.forget(&e.shared.batcher)
            {
                continue;
            }
            if let Some(e) = self.clusters.remove(&name) {
                if !e.known {
                    self.unknown -= 1;
                }
            }
            self.metrics.remove_cluster(&name);
            forgotten += 1;
            info!(cluster = %name, idle_secs = idle_for.as_secs(), "idle cluster forgotten (no connection, nothing queued)");
        }
        forgotten
    }

    pub fn len(&self) -> usize {
        self.clusters.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clusters.is_empty()
    }
}
