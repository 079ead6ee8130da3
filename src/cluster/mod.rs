//! cluster: one supervisor actor per Qumulo cluster, created on first sight.
//!
//! The [`Registry`] lives on the listener's thread. When a new connection has
//! told its cluster (by source address or by the HOSTNAME of its first frame),
//! the registry returns that cluster's [`Supervisor`], starting it on the next
//! arbiter in turn, with its admission-gate slot and its batcher.

pub mod supervisor;

use std::collections::HashMap;
use std::sync::Arc;

use actix::prelude::*;
use actix_rt::ArbiterHandle;

use crate::batch::Batches;
use crate::metrics::Metrics;
use crate::model::ClusterShared;
use crate::sync::gate::Gate;

pub use supervisor::{Attach, Supervisor};

/// Every cluster seen so far.
pub struct Registry {
    arbiters: Vec<ArbiterHandle>,
    gate: Arc<Gate>,
    batches: Arc<Batches>,
    metrics: Arc<Metrics>,
    max_clusters: usize,
    clusters: HashMap<Arc<str>, Addr<Supervisor>>,
}

/// Why a new cluster was not started.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The registry is at `ingest.max_clusters`.
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
        }
    }

    /// The supervisor of `name`, started now if this is the cluster's first
    /// connection; the cluster's target (registered, configured or default)
    /// comes from the batches' router.
    pub fn get_or_create(&mut self, name: &str) -> Result<Addr<Supervisor>, Refused> {
        if let Some(addr) = self.clusters.get(name) {
            return Ok(addr.clone());
        }
        if self.clusters.len() >= self.max_clusters {
            return Err(Refused::TooManyClusters);
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
        let arbiter = &self.arbiters[self.clusters.len() % self.arbiters.len()];
        let broker_metrics = self.metrics.clone();
        let addr = Supervisor::start_in_arbiter(arbiter, move |_ctx| {
            Supervisor::new(shared, broker_metrics)
        });
        self.clusters.insert(name, addr.clone());
        Ok(addr)
    }

    pub fn len(&self) -> usize {
        self.clusters.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clusters.is_empty()
    }
}
