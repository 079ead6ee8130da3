//! Supervisor: the actor of one cluster.
//!
//! It owns the readers of the cluster's node connections: they run as futures in
//! its context, on its arbiter's thread, and share its sequence counters without
//! locks. A reader that fails or panics ends only its own connection (the node
//! reconnects, as Qumulo nodes do on their own); it is counted and logged, and the
//! supervisor and the broker go on.

use std::cell::Cell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use futures_util::FutureExt;
use tracing::{debug, error, info};

use crate::ingest::reader::{self, End, Handoff};
use crate::metrics::Metrics;
use crate::model::ClusterShared;

/// Messages wait here while the supervisor is busy; `Addr::send` waits when full.
const MAILBOX: usize = 256;

/// Per-cluster counters that only the supervisor's thread touches.
#[derive(Debug, Default)]
pub struct Sequence {
    /// Sequence number of the next frame.
    pub next_seq: Cell<u64>,
    /// Number of the next chunk.
    pub next_chunk: Cell<u64>,
}

struct ReaderInfo {
    peer: SocketAddr,
    node: Arc<str>,
    since: Instant,
}

/// The actor of one cluster.
pub struct Supervisor {
    cluster: Arc<ClusterShared>,
    metrics: Arc<Metrics>,
    sequence: Rc<Sequence>,
    next_reader: u64,
    readers: HashMap<u64, ReaderInfo>,
}

impl Supervisor {
    pub fn new(cluster: Arc<ClusterShared>, metrics: Arc<Metrics>) -> Supervisor {
        Supervisor {
            cluster,
            metrics,
            sequence: Rc::new(Sequence::default()),
            next_reader: 0,
            readers: HashMap::new(),
        }
    }

    fn reader_ended(&mut self, id: u64, result: std::thread::Result<End>) {
        let Some(info) = self.readers.remove(&id) else {
            return;
        };
        let secs = info.since.elapsed().as_secs();
        match result {
            Ok(End::Eof) => {
                info!(cluster = %self.cluster.name, node = %info.node, peer = %info.peer, secs, "node disconnected")
            }
            Ok(End::Stopped) => {
                debug!(cluster = %self.cluster.name, node = %info.node, peer = %info.peer, "reader stopped for shutdown")
            }
            Ok(End::IdleTimeout) => {
                info!(cluster = %self.cluster.name, node = %info.node, peer = %info.peer, secs, "idle connection closed")
            }
            Ok(End::Error(err)) => {
                info!(cluster = %self.cluster.name, node = %info.node, peer = %info.peer, error = %err, "connection ended by a read error")
            }
            Err(_) => {
                self.metrics.ingest.reader_panics.inc();
                error!(cluster = %self.cluster.name, node = %info.node, peer = %info.peer, "connection reader panicked; connection closed, the node will reconnect")
            }
        }
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(MAILBOX);
        info!(cluster = %self.cluster.name, "cluster supervisor started");
    }
}

/// Take over a connection whose cluster is this one.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Attach(pub Handoff);

impl Handler<Attach> for Supervisor {
    type Result = ();

    fn handle(&mut self, Attach(handoff): Attach, ctx: &mut Context<Self>) {
        let id = self.next_reader;
        self.next_reader += 1;
        self.readers.insert(
            id,
            ReaderInfo {
                peer: handoff.peer,
                node: handoff.node.clone(),
                since: Instant::now(),
            },
        );
        let fut = reader::run(handoff, self.cluster.clone(), self.sequence.clone());
        ctx.spawn(
            AssertUnwindSafe(fut)
                .catch_unwind()
                .into_actor(self)
                .map(move |result, act, _ctx| act.reader_ended(id, result)),
        );
    }
}
