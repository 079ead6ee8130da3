//! Supervisor: the actor of one cluster.
//!
//! Its readers (one per node connection) run on the io thread the listener
//! gave each connection, so that a cluster's nodes are spread over the io
//! threads; the supervisor adopts each ([`Adopt`]: it is counted and tracked,
//! and told when it ends). All readers of the cluster, on whatever
//! thread, number their chunks from one [`Sequence`]. A reader that fails or
//! panics ends only its own connection (the node reconnects, as Qumulo nodes do
//! on their own); it is counted and logged, and the supervisor and the broker go
//! on.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use tracing::{debug, error, info};

use crate::metrics::Metrics;
use crate::pool::ClusterShared;
pub use crate::source::Sequence;

/// Why a reader ended (the reader, in [`crate::ingest::reader`], says it;
/// the supervisor counts and logs it).
#[derive(Debug)]
pub enum End {
    Eof,
    Stopped,
    /// No complete frame for `ingest.idle_timeout_secs`.
    IdleTimeout,
    /// A frame not complete within `ingest.frame_timeout_secs`.
    FrameTimeout,
    /// Bad frames outnumbered good ones by `ingest.max_bad_frames`.
    BadFrames,
    /// A frame past `ingest.max_oversize_frame_bytes`.
    Overrun,
    Error(std::io::Error),
}

/// Messages wait here while the supervisor is busy; `Addr::send` waits when full.
const MAILBOX: usize = 256;

struct ReaderInfo {
    peer: SocketAddr,
    node: Arc<str>,
    since: Instant,
}

/// The actor of one cluster.
pub struct Supervisor {
    cluster: Arc<ClusterShared>,
    metrics: Arc<Metrics>,
    sequence: Arc<Sequence>,
    next_reader: u64,
    readers: HashMap<u64, ReaderInfo>,
}

impl Supervisor {
    pub fn new(cluster: Arc<ClusterShared>, metrics: Arc<Metrics>) -> Supervisor {
        Supervisor {
            cluster,
            metrics,
            sequence: Arc::new(Sequence::default()),
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
            Ok(End::FrameTimeout) => {
                info!(cluster = %self.cluster.name, node = %info.node, peer = %info.peer, secs, "connection closed: a frame not complete within ingest.frame_timeout_secs")
            }
            Ok(End::BadFrames) => {
                info!(cluster = %self.cluster.name, node = %info.node, peer = %info.peer, secs, "connection closed: too many bad frames (ingest.max_bad_frames)")
            }
            Ok(End::Overrun) => {
                info!(cluster = %self.cluster.name, node = %info.node, peer = %info.peer, secs, "connection closed: a frame past ingest.max_oversize_frame_bytes")
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

/// Track a reader (it runs on an io thread of its own choosing); answers what
/// the reader needs of the cluster and the reader's id for [`Ended`].
#[derive(Message)]
#[rtype(result = "Adopted")]
pub struct Adopt {
    pub peer: SocketAddr,
    pub node: Arc<str>,
}

/// What an adopted reader needs of its cluster.
pub struct Adopted {
    pub id: u64,
    pub cluster: Arc<ClusterShared>,
    pub sequence: Arc<Sequence>,
}

impl Handler<Adopt> for Supervisor {
    type Result = MessageResult<Adopt>;

    fn handle(&mut self, adopt: Adopt, _ctx: &mut Context<Self>) -> MessageResult<Adopt> {
        let id = self.next_reader;
        self.next_reader += 1;
        self.readers.insert(
            id,
            ReaderInfo {
                peer: adopt.peer,
                node: adopt.node,
                since: Instant::now(),
            },
        );
        MessageResult(Adopted {
            id,
            cluster: self.cluster.clone(),
            sequence: self.sequence.clone(),
        })
    }
}

/// An adopted reader ended (or panicked).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Ended {
    pub id: u64,
    pub result: std::thread::Result<End>,
}

impl Handler<Ended> for Supervisor {
    type Result = ();

    fn handle(&mut self, ended: Ended, _ctx: &mut Context<Self>) {
        self.reader_ended(ended.id, ended.result);
    }
}
