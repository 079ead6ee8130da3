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
//!
//! The reader closes a connection that misbehaves, and counts why:
//! - no complete frame for `ingest.idle_timeout_secs` (idle, or blank bytes only);
//! - a frame begun and not complete within `ingest.frame_timeout_secs`
//!   (slowloris); time spent paused on a full queue does not count;
//! - bad frames (oversize, or not starting like syslog) outnumbering good ones by
//!   `ingest.max_bad_frames` (garbage);
//! - a frame past `ingest.max_oversize_frame_bytes` (an endless line).
//!
//! Each read leaves at least a quarter of `ingest.read_buffer_bytes` free, and a
//! new buffer is allocated only below that: chunks in the queue pin the buffers
//! their bytes lie in, so buffers are filled before they are let go, and the
//! memory the queue pins stays within a third over the bytes it counts.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::warn;

use super::framing::{plausible, BadFrames, Decoder, Finish, Next};
pub use crate::cluster::supervisor::End;
use crate::cluster::supervisor::Sequence;
use crate::config::Config;
use crate::metrics::{Metrics, NodeMetrics, RateLimit};
use crate::pool::ClusterShared;
use crate::source::{Handed, Handoff, Origin};

static OVERSIZE_LOG: RateLimit = RateLimit::new(Duration::from_secs(10), 3);

/// What every reader needs, cloned per connection.
#[derive(Clone)]
pub struct ReaderDeps {
    pub config: Arc<Config>,
    /// The way into the work queue (admission, numbering, the send).
    pub handoff: Handoff,
    pub metrics: Arc<Metrics>,
    /// Turns true when the broker shuts down.
    pub stop: watch::Receiver<bool>,
}

/// Counts an open connection; the listener waits for every guard to drop before
/// it reports ingest finished.
pub struct ConnGuard {
    metrics: Arc<Metrics>,
    _source: SourcePermit,
    _done: mpsc::Sender<()>,
}

impl ConnGuard {
    pub fn new(metrics: Arc<Metrics>, source: SourcePermit, done: mpsc::Sender<()>) -> ConnGuard {
        metrics.ingest.connections_active.add(1);
        ConnGuard {
            metrics,
            _source: source,
            _done: done,
        }
    }
}

/// Open connections per source, for `ingest.max_connections_per_source`. An IPv6
/// source counts by its /64: one host holds a whole /64 as easily as one address.
pub struct SourceLimit {
    max: usize,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One open connection of a source; gives its place back when dropped.
pub struct SourcePermit {
    key: IpAddr,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl SourceLimit {
    pub fn new(max: usize) -> SourceLimit {
        SourceLimit {
            max,
            open: Arc::default(),
        }
    }

    /// A place for one more connection of `source`, unless it holds `max` already.
    pub fn acquire(&self, source: IpAddr) -> Option<SourcePermit> {
        let key = match crate::config::canonical_ip(source) {
            IpAddr::V6(v6) => {
                let mut o = v6.octets();
                o[8..].fill(0);
                IpAddr::from(o)
            }
            v4 => v4,
        };
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(key).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(SourcePermit {
            key,
            open: self.open.clone(),
        })
    }

    /// Sources with a connection open now.
    pub fn sources(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl Drop for SourcePermit {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.metrics.ingest.connections_active.add(-1);
    }
}

/// Which deadline a read waits under.
#[derive(Debug, Clone, Copy)]
enum Deadline {
    Idle,
    Frame,
}

struct Reader {
    cluster: Arc<ClusterShared>,
    sequence: Arc<Sequence>,
    node: Arc<str>,
    node_metrics: Arc<NodeMetrics>,
    deps: ReaderDeps,
    buf: BytesMut,
    decoder: Decoder,
    frames: Vec<(u32, u32)>,
    frame_bytes: usize,
    bad: BadFrames,
    /// When the last frame was complete, or reading resumed after a pause.
    last_frame: Instant,
    /// When the frame in progress began (or reading resumed after a pause).
    partial_since: Option<Instant>,
    /// A frame was complete, or a pause ended, since the deadlines were last set.
    progressed: bool,
}

/// Read a connection (plain TCP, or TLS after its handshake), on the io thread
/// it was given, until it ends or the broker stops. `buf` holds what was read
/// while finding the cluster.
pub async fn read_stream<S: AsyncRead + Unpin>(
    mut stream: S,
    node: Arc<str>,
    buf: BytesMut,
    deps: ReaderDeps,
    _guard: ConnGuard,
    cluster: Arc<ClusterShared>,
    sequence: Arc<Sequence>,
) -> End {
    let cfg = deps.config.clone();
    let (node_metrics, over) = cluster
        .metrics
        .node_bounded(&node, cfg.ingest.max_nodes_per_cluster);
    if over {
        deps.metrics.ingest.nodes_over_limit.inc();
    }
    node_metrics.connected.add(1);
    node_metrics.connections.inc();
    cluster.metrics.connections.add(1);
    let mut reader = Reader {
        cluster,
        sequence,
        node,
        node_metrics,
        decoder: Decoder::with_skip_limit(
            cfg.ingest.max_frame_bytes,
            cfg.ingest.max_oversize_frame_bytes,
        ),
        frames: Vec::with_capacity(cfg.queue.chunk_max_frames),
        frame_bytes: 0,
        buf,
        deps,
        bad: BadFrames::new(cfg.ingest.max_bad_frames),
        last_frame: Instant::now(),
        partial_since: None,
        progressed: false,
    };
    // Bytes the listener read while finding the cluster count for the node too.
    reader.count_read(reader.buf.len());
    let end = reader.read_loop(&mut stream, &cfg).await;
    reader.node_metrics.connected.add(-1);
    reader.cluster.metrics.connections.add(-1);
    let ingest = &reader.deps.metrics.ingest;
    match &end {
        End::IdleTimeout => ingest.idle_timeouts.inc(),
        End::FrameTimeout => ingest.frame_timeouts.inc(),
        End::BadFrames => ingest.closed_bad_frames.inc(),
        End::Overrun => ingest.closed_frame_overrun.inc(),
        End::Error(_) => ingest.read_errors.inc(),
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
    async fn read_loop<S: AsyncRead + Unpin>(&mut self, stream: &mut S, cfg: &Config) -> End {
        let mut stop = self.deps.stop.clone();
        // Reads get at least this much room; below it, a new buffer (see the module doc).
        let min_read = (cfg.ingest.read_buffer_bytes / 4).max(1);
        loop {
            if let Some(end) = self.decode().await {
                return end;
            }
            if *stop.borrow() {
                return End::Stopped;
            }
            let (at, why) = self.deadline(cfg);
            self.buf.reserve(min_read);
            let read = async {
                match at {
                    Some(at) => tokio::time::timeout_at(at, stream.read_buf(&mut self.buf))
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
            let read = match read {
                // A TLS peer that closes without close_notify: the end of the stream
                // all the same (what it sent is complete or counted partial below).
                Some(Err(err)) if err.kind() == std::io::ErrorKind::UnexpectedEof => Some(Ok(0)),
                other => other,
            };
            match read {
                None => {
                    return match why {
                        Deadline::Idle => End::IdleTimeout,
                        Deadline::Frame => End::FrameTimeout,
                    }
                }
                Some(Ok(0)) => {
                    if let Some(end) = self.decode().await {
                        return end;
                    }
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
                    let _ = self.decode().await;
                    return End::Error(err);
                }
            }
        }
    }

    /// When the next read must have brought something, and which limit that is:
    /// the frame in progress's deadline, or the idle one.
    fn deadline(&mut self, cfg: &Config) -> (Option<Instant>, Deadline) {
        let now = Instant::now();
        if self.progressed {
            self.last_frame = now;
        }
        self.partial_since = if self.decoder.mid_frame(&self.buf) {
            match self.partial_since {
                Some(since) if !self.progressed => Some(since),
                _ => Some(now),
            }
        } else {
            None
        };
        self.progressed = false;
        let idle = cfg.ingest.idle_timeout.map(|d| self.last_frame + d);
        let frame = self.partial_since.map(|t| t + cfg.ingest.frame_timeout);
        match (idle, frame) {
            (Some(i), Some(f)) if f < i => (Some(f), Deadline::Frame),
            (Some(i), _) => (Some(i), Deadline::Idle),
            (None, Some(f)) => (Some(f), Deadline::Frame),
            (None, None) => (None, Deadline::Idle),
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

    /// Decode every complete frame in the buffer and hand them on. `Some` when the
    /// connection must be closed (what came before is handed on first).
    async fn decode(&mut self) -> Option<End> {
        let max_frames = self.deps.config.queue.chunk_max_frames;
        let max_bytes = self.deps.config.queue.chunk_max_bytes;
        let ended = self.decoder.ended();
        let mut close = None;
        loop {
            match self.decoder.next(&mut self.buf) {
                Next::Frame { start, end } => {
                    self.frames.push((start as u32, end as u32));
                    self.frame_bytes += end - start;
                    if plausible(&self.buf[start..end]) {
                        self.bad.good();
                    } else if self.bad.bad() {
                        close = Some(End::BadFrames);
                        break;
                    }
                    if self.frames.len() >= max_frames || self.frame_bytes >= max_bytes {
                        self.flush().await;
                    }
                }
                Next::Oversize => {
                    self.oversize();
                    if self.bad.bad() {
                        close = Some(End::BadFrames);
                        break;
                    }
                }
                Next::Incomplete => break,
                Next::Overrun => {
                    close = Some(End::Overrun);
                    break;
                }
            }
        }
        self.progressed |= self.decoder.ended() != ended;
        if !self.frames.is_empty() {
            self.flush().await;
        } else {
            let consumed = self.decoder.consumed();
            if consumed > 0 {
                let _ = self.buf.split_to(consumed);
                self.decoder.rebase(consumed);
            }
        }
        close
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
        let at = Origin {
            cluster: &self.cluster,
            sequence: &self.sequence,
            node: &self.node,
            node_metrics: &self.node_metrics,
        };
        if self.deps.handoff.hand_on(at, data, frames).await == Handed::QueuedAfterPause {
            // Time spent paused is the broker's, not the sender's: the deadlines
            // start again from now.
            self.progressed = true;
        }
    }
}

#[cfg(test)]
mod source_limit_tests {
    use super::*;

    /// IPv6 sources count per /64 (a host can pick any address in its /64);
    /// IPv4 per address, an IPv4-mapped IPv6 address as its IPv4 one.
    #[test]
    fn ipv6_sources_share_one_limit_per_64() {
        let limit = SourceLimit::new(2);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let a = limit.acquire(ip("2001:db8:1:2::1")).unwrap();
        let _b = limit.acquire(ip("2001:db8:1:2:ffff::9")).unwrap();
        assert!(
            limit.acquire(ip("2001:db8:1:2::77")).is_none(),
            "a third address of the same /64"
        );
        assert!(
            limit.acquire(ip("2001:db8:1:3::1")).is_some(),
            "another /64"
        );
        drop(a);
        assert!(
            limit.acquire(ip("2001:db8:1:2::77")).is_some(),
            "a place given back"
        );

        let v4 = limit.acquire(ip("192.0.2.7")).unwrap();
        let _mapped = limit.acquire(ip("::ffff:192.0.2.7")).unwrap();
        assert!(
            limit.acquire(ip("192.0.2.7")).is_none(),
            "mapped counts as v4"
        );
        assert!(limit.acquire(ip("192.0.2.8")).is_some(), "v4: per address");
        drop(v4);
        assert_eq!(limit.sources(), 2, "the /64 of _b and 192.0.2.7 (_mapped)");
    }
}
