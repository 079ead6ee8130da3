//! reader: the read loop of one node connection, run by its cluster's supervisor.
//!
//! It reads into one buffer, decodes frames in place, and hands them to the parse
//! pool in chunks of at most `queue.chunk_max_frames` frames or
//! `queue.chunk_max_bytes` bytes, without copying: a chunk is a frozen slice of
//! the read buffer plus the frames' ranges. Everything complete that a read
//! brought is handed on before the next read, so a quiet node's frame never waits
//! for more traffic.
//!
//! Before each chunk the reader asks the admission gate; while the gate is shut
//! it does not read, and TCP flow control pushes back to the node. On shutdown it
//! stops reading and hands on what it has already read, so nothing read is lost.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use crossbeam_channel::{Sender, TrySendError};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tracing::{error, warn};

use super::framing::{Decoder, Finish, Next};
use crate::cluster::supervisor::Sequence;
use crate::config::Config;
use crate::metrics::{unix_us, Metrics, NodeMetrics, RateLimit};
use crate::model::{Chunk, ClusterShared};
use crate::sync::gate::Gate;

static OVERSIZE_LOG: RateLimit = RateLimit::new(Duration::from_secs(10), 3);
static PAUSED_LOG: RateLimit = RateLimit::new(Duration::from_secs(10), 1);

/// How long to wait on a full queue before saying so again.
const PAUSE_REPORT: Duration = Duration::from_secs(5);

/// What every reader needs, cloned per connection.
#[derive(Clone)]
pub struct ReaderDeps {
    pub config: Arc<Config>,
    pub queue: Sender<Chunk>,
    pub gate: Arc<Gate>,
    pub metrics: Arc<Metrics>,
    /// Turns true when the broker shuts down.
    pub stop: watch::Receiver<bool>,
}

/// Counts an open connection; the listener waits for every guard to drop before
/// it reports ingest finished.
pub struct ConnGuard {
    metrics: Arc<Metrics>,
    _done: mpsc::Sender<()>,
}

impl ConnGuard {
    pub fn new(metrics: Arc<Metrics>, done: mpsc::Sender<()>) -> ConnGuard {
        metrics.ingest.connections_active.add(1);
        ConnGuard {
            metrics,
            _done: done,
        }
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.metrics.ingest.connections_active.add(-1);
    }
}

/// A connection whose cluster is known, with what was already read from it.
pub struct Handoff {
    pub stream: std::net::TcpStream,
    pub peer: SocketAddr,
    pub node: Arc<str>,
    pub buf: BytesMut,
    pub deps: ReaderDeps,
    pub guard: ConnGuard,
}

/// Why a reader ended.
#[derive(Debug)]
pub enum End {
    Eof,
    Stopped,
    IdleTimeout,
    Error(std::io::Error),
}

struct Reader {
    cluster: Arc<ClusterShared>,
    sequence: Rc<Sequence>,
    node: Arc<str>,
    node_metrics: Arc<NodeMetrics>,
    deps: ReaderDeps,
    buf: BytesMut,
    decoder: Decoder,
    frames: Vec<(u32, u32)>,
    frame_bytes: usize,
}

/// Read a connection until it ends or the broker stops.
pub async fn run(h: Handoff, cluster: Arc<ClusterShared>, sequence: Rc<Sequence>) -> End {
    let Handoff {
        stream,
        peer: _,
        node,
        buf,
        deps,
        guard: _guard,
    } = h;
    let mut stream = match TcpStream::from_std(stream) {
        Ok(s) => s,
        Err(err) => return End::Error(err),
    };
    let node_metrics = cluster.metrics.node(&node);
    node_metrics.connected.add(1);
    node_metrics.connections.inc();
    cluster.metrics.connections.add(1);
    let cfg = deps.config.clone();
    let mut reader = Reader {
        cluster,
        sequence,
        node,
        node_metrics,
        decoder: Decoder::new(cfg.ingest.max_frame_bytes),
        frames: Vec::with_capacity(cfg.queue.chunk_max_frames),
        frame_bytes: 0,
        buf,
        deps,
    };
    // Bytes the listener read while finding the cluster count for the node too.
    reader.count_read(reader.buf.len());
    let end = reader.read_loop(&mut stream, &cfg).await;
    reader.node_metrics.connected.add(-1);
    reader.cluster.metrics.connections.add(-1);
    match &end {
        End::IdleTimeout => reader.deps.metrics.ingest.idle_timeouts.inc(),
        End::Error(_) => reader.deps.metrics.ingest.read_errors.inc(),
        End::Eof => {}
        End::Stopped => {
            if !reader.decoder.at_boundary(&reader.buf) {
                // Stopping cut a frame in half; its rest never came.
                reader.deps.metrics.ingest.partial_frames.inc();
            }
        }
    }
    end
}

impl Reader {
    async fn read_loop(&mut self, stream: &mut TcpStream, cfg: &Config) -> End {
        let mut stop = self.deps.stop.clone();
        loop {
            self.decode().await;
            if *stop.borrow() {
                return End::Stopped;
            }
            self.buf.reserve(cfg.ingest.read_buffer_bytes);
            let read = async {
                match cfg.ingest.idle_timeout {
                    Some(idle) => tokio::time::timeout(idle, stream.read_buf(&mut self.buf))
                        .await
                        .ok(),
                    None => Some(stream.read_buf(&mut self.buf).await),
                }
            };
            let read = tokio::select! {
                biased;
                _ = stop.changed() => return End::Stopped,
                read = read => read,
            };
            match read {
                None => return End::IdleTimeout,
                Some(Ok(0)) => {
                    self.decode().await;
                    match self.decoder.finish(&mut self.buf) {
                        Finish::Frame { start, end } => {
                            self.frames.push((start as u32, end as u32));
                            self.flush().await;
                        }
                        Finish::Partial => self.deps.metrics.ingest.partial_frames.inc(),
                        Finish::Oversize => self.oversize(),
                        Finish::Clean => {}
                    }
                    return End::Eof;
                }
                Some(Ok(n)) => self.count_read(n),
                Some(Err(err)) => {
                    // What was read before the error is complete and still handed on.
                    self.decode().await;
                    return End::Error(err);
                }
            }
        }
    }

    fn count_read(&self, n: usize) {
        self.node_metrics.bytes.add(n as u64);
        self.cluster.metrics.bytes.add(n as u64);
    }

    fn oversize(&self) {
        self.deps.metrics.ingest.oversize_frames.inc();
        if let Some(suppressed) = OVERSIZE_LOG.check() {
            warn!(
                cluster = %self.cluster.name,
                node = %self.node,
                max_frame_bytes = self.deps.config.ingest.max_frame_bytes,
                suppressed,
                "frame too large, skipped"
            );
        }
    }

    /// Decode every complete frame in the buffer and hand them on.
    async fn decode(&mut self) {
        let max_frames = self.deps.config.queue.chunk_max_frames;
        let max_bytes = self.deps.config.queue.chunk_max_bytes;
        loop {
            match self.decoder.next(&mut self.buf) {
                Next::Frame { start, end } => {
                    self.frames.push((start as u32, end as u32));
                    self.frame_bytes += end - start;
                    if self.frames.len() >= max_frames || self.frame_bytes >= max_bytes {
                        self.flush().await;
                    }
                }
                Next::Oversize => self.oversize(),
                Next::Incomplete => break,
            }
        }
        if !self.frames.is_empty() {
            self.flush().await;
        } else {
            let consumed = self.decoder.consumed();
            if consumed > 0 {
                let _ = self.buf.split_to(consumed);
                self.decoder.rebase(consumed);
            }
        }
    }

    /// Hand the decoded frames to the pool as one chunk, once the gate admits it.
    async fn flush(&mut self) {
        let consumed = self.decoder.consumed();
        let data = self.buf.split_to(consumed).freeze();
        self.decoder.rebase(consumed);
        let frames = std::mem::replace(
            &mut self.frames,
            Vec::with_capacity(self.deps.config.queue.chunk_max_frames),
        );
        self.frame_bytes = 0;
        let (n, bytes) = (frames.len(), data.len());
        let gate = &self.deps.gate;
        let id = self.cluster.gate_id;
        if !gate.try_admit(id, n, bytes) {
            self.deps.metrics.ingest.paused.inc();
            let mut admit = std::pin::pin!(gate.admit(id, n, bytes));
            loop {
                match tokio::time::timeout(PAUSE_REPORT, admit.as_mut()).await {
                    Ok(()) => break,
                    Err(_) => {
                        if let Some(suppressed) = PAUSED_LOG.check() {
                            let usage = gate.usage();
                            warn!(
                                cluster = %self.cluster.name,
                                node = %self.node,
                                queue_messages = usage.msgs,
                                queue_bytes = usage.bytes,
                                suppressed,
                                "work queue full: reading paused"
                            );
                        }
                    }
                }
            }
        }
        // Numbering and sending happen with no await between them: the chunks of
        // a cluster enter the queue in the order of their numbers.
        let seq_base = self.sequence.next_seq.get();
        let chunk_no = self.sequence.next_chunk.get();
        self.sequence.next_seq.set(seq_base + n as u64);
        self.sequence.next_chunk.set(chunk_no + 1);
        let chunk = Chunk {
            cluster: self.cluster.clone(),
            node: self.node.clone(),
            node_metrics: self.node_metrics.clone(),
            data,
            frames,
            seq_base,
            chunk_no,
            received_unix_us: unix_us(),
        };
        self.node_metrics.frames.add(n as u64);
        self.node_metrics
            .last_frame_unix_ms
            .set((chunk.received_unix_us / 1000) as i64);
        self.cluster.metrics.frames.add(n as u64);
        let mut chunk = chunk;
        loop {
            // The queue's capacity in chunks is its capacity in messages, and every
            // chunk holds at least one message that the gate admitted: it cannot be
            // full. Should it be, wait rather than drop.
            match self.deps.queue.try_send(chunk) {
                Ok(()) => return,
                Err(TrySendError::Full(back)) => {
                    chunk = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err(TrySendError::Disconnected(back)) => {
                    error!(
                        cluster = %self.cluster.name,
                        node = %self.node,
                        frames = back.frames.len(),
                        "parse pool gone: frames dropped"
                    );
                    gate.release(id, n, bytes);
                    return;
                }
            }
        }
    }
}
