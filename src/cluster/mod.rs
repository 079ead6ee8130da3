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

/// The registry is at `ingest.max_clusters`.
#[derive(Debug)]
pub struct TooManyClusters;

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
    /// connection. `target` and `filer_id` apply to a new cluster only.
    pub fn get_or_create(
        &mut self,
        name: &str,
        target: usize,
        filer_id: Option<u64>,
    ) -> Result<Addr<Supervisor>, TooManyClusters> {
        if let Some(addr) = self.clusters.get(name) {
            return Ok(addr.clone());
        }
        if self.clusters.len() >= self.max_clusters {
            return Err(TooManyClusters);
        }
        let name: Arc<str> = Arc::from(name);
        let gate_id = self.gate.register();
        let metrics = self.metrics.cluster(&name);
        let batcher = self.batches.create(
            name.clone(),
            target,
            filer_id,
            metrics.clone(),
            (self.gate.clone(), gate_id),
        );
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
