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
use std::sync::{Arc, Mutex};
use std::time::Instant;

use actix::prelude::*;
use tracing::{debug, error, info};

use crate::metrics::Metrics;
use crate::pool::ClusterShared;

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

/// The numbering of a cluster's frames and chunks, shared by its readers.
///
/// A chunk's number and its frames' sequence numbers are taken in one step, so
/// that chunk order is sequence order whichever reader, on whichever thread,
/// takes them: the batcher restores chunk order, and with it seq order. One
/// uncontended lock per chunk (hundreds of frames), never per frame.
#[derive(Debug, Default)]
pub struct Sequence(Mutex<Next>);

#[derive(Debug, Default)]
struct Next {
    seq: u64,
    chunk: u64,
}

impl Sequence {
    /// Number a chunk of `frames` frames: (seq of its first frame, chunk number).
    pub fn take(&self, frames: usize) -> (u64, u64) {
        let mut next = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let taken = (next.seq, next.chunk);
        next.seq += frames as u64;
        next.chunk += 1;
        taken
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_from_many_threads_number_seq_in_chunk_order() {
        let seq = Arc::new(Sequence::default());
        let taken: Vec<Vec<(u64, u64, usize)>> = (1..=4)
            .map(|t| {
                let seq = seq.clone();
                std::thread::spawn(move || {
                    (0..10_000)
                        .map(|i| {
                            let n = (i % 7 + t) as usize;
                            let (s, c) = seq.take(n);
                            (c, s, n)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .map(|h| h.join().unwrap())
            .collect();
        let mut all: Vec<(u64, u64, usize)> = taken.into_iter().flatten().collect();
        all.sort_unstable();
        let mut next_seq = 0;
        for (i, (chunk, s, n)) in all.iter().enumerate() {
            assert_eq!(*chunk, i as u64, "chunk numbers without gaps");
            assert_eq!(*s, next_seq, "chunk order is seq order");
            next_seq += *n as u64;
        }
    }
}
