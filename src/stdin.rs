//! stdin: a source beside [`ingest`](crate::ingest). Lines on a pipe become
//! frames of the same pipeline (parse pool, filter, batchers, spool, egress):
//! `qbroker stdin`, which rsyslog's omprog runs in place of the reference
//! broker's converter binary, and which a person can hand one line to.
//!
//! Each line is one syslog message, in any form the parser reads: what
//! rsyslog's template made of it (`%rawmsg%`, the frame as the node sent it;
//! or omprog's default `RSYSLOG_FileFormat`, `TIMESTAMP HOSTNAME TAG MSG`,
//! which the reference converter read), or a line pasted from a log. Its
//! cluster comes from its HOSTNAME (a `[[clusters]]` entry of that name, else
//! the name with `default_target`), as for a TCP connection; `sources` cannot
//! apply, since a pipe has no peer address.
//!
//! Why a source beside ingest, and not a loopback client of the listener: the
//! acknowledgements. rsyslog keeps a message until the program confirms it, and
//! a confirmation is worth something only once the message is in the spool, on
//! disk. Inside the process the feed can ask each batcher whether its chunks are
//! in and seal what is open at once ([`Batcher::barrier`]); across a socket
//! it could only guess. The frames still travel the real path: the admission
//! gate, the work queue, the pool, the batcher, the spool, egress.
//!
//! The omprog protocol (`confirmMessages="on"`) and what each answer promises:
//!
//! - at start, `OK` once the spools are open; until then a `.` every
//!   `keepalive` (omprog strips leading dots), so that a long spool recovery
//!   does not run into omprog's `confirmTimeout`;
//! - with `useTransactions="on"`: `BEGIN TRANSACTION` -> `OK`; each message ->
//!   `DEFER_COMMIT` at once (received, not yet durable); `COMMIT TRANSACTION`
//!   -> the commit barrier, then `OK`: every message of the transaction is in a
//!   sealed batch in the spool and fsynced (unless `spool.fsync = "never"`).
//!   While the barrier waits (an enrichment, a full spool) a `.` goes out every
//!   `keepalive`. A barrier that fails (spool I/O) answers an error line, and
//!   rsyslog sends the transaction again (at-least-once: a copy may follow);
//! - without transactions, each message -> `OK` once it is in the write-ahead
//!   file (below): it outlives a crash of qbroker, and is fsynced in the spool
//!   by a commit within a second. With `spool.fsync = "always"` the file is
//!   fsynced before the `OK`, so that the message outlives a power cut too
//!   (with `interval`, a power cut may lose the last second of them). rsyslog waits for each answer before it
//!   sends the next message, so each message becomes a chunk of its own.
//!   Prefer transactions: one barrier (seal, append, one fsync) per rsyslog
//!   batch (`queue.dequeueBatchSize`), and batches as large as rsyslog's.
//!
//! A program that dies mid-transaction (a crash, SIGKILL, the OOM killer) is
//! the case rsyslog does not cover: omprog uses rsyslog's old-style
//! transaction interface, and rsyslog resumes the transaction at the message
//! that failed, with the new program; the messages the dead one had answered
//! `DEFER_COMMIT` are not sent again (rsyslog's action.c, `doTransaction`). So
//! the feed writes every message to a write-ahead file, `<spool.dir>/stdin.wal`,
//! before it answers (a `write(2)`: it must outlive the process, and the commit
//! fsyncs the spool; outside a transaction with `fsync = "always"` an fsync
//! too, since no commit follows the `OK`), empties it once a commit made its messages
//! durable, and at start feeds back whatever a dead predecessor left in it.
//! What a crash costs is then a copy (a message both replayed and sent again),
//! never a loss. Outside transactions the file is emptied by a commit of its
//! own every second or 4 MiB. tests/rsyslog.rs kills qbroker mid-stream under a
//! real rsyslog to show it.
//!
//! Bad lines take the path of bad frames: counted, kept in the dead-letter file,
//! and acknowledged (sending them again would not make them good). A line over
//! `ingest.max_frame_bytes` is counted and skipped, as on TCP.
//!
//! What `qbroker stdin --once` prints of a message (the binary's explanation)
//! is made from [`route`] and the parser's own functions.
//!
//! [`Batcher::barrier`]: crate::batch::Batcher::barrier

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use tokio::sync::{oneshot, watch};
use tracing::{error, info, warn};

use crate::batch::Batches;
use crate::config::Config;
use crate::deadletter::DeadLetters;
use crate::ingest::listener::UNIDENTIFIED;
use crate::metrics::{Metrics, NodeMetrics, RateLimit};
use crate::parse;
use crate::pool::ClusterShared;
use crate::source::{Handed, Handoff, Origin, Sequence};
use crate::spool::{Fsync, Spool};
use crate::targets::Targets;

static OVERSIZE_LOG: RateLimit = RateLimit::new(Duration::from_secs(10), 3);
static UNROUTABLE_LOG: RateLimit = RateLimit::new(Duration::from_secs(10), 3);

/// Why a commit could not be confirmed (rsyslog then sends the messages again).
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("qbroker is shutting down")]
    ShuttingDown,
    #[error("the shutdown grace period is over")]
    GraceOver,
    #[error("spool fsync failed: {0}")]
    Fsync(std::io::Error),
    #[error("cannot empty {path}: {source}")]
    Wal {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Lines read ahead of the feed, at most.
const READ_AHEAD: usize = 1024;
/// A commit that waits this long says so in the log.
const COMMIT_SLOW: Duration = Duration::from_secs(10);
/// How often a commit waiting for its reply looks for a shutdown.
const COMMIT_LOOK: Duration = Duration::from_millis(50);

/// How the feed talks to its caller.
#[derive(Debug, Clone)]
pub struct Options {
    /// Answer each line on the output (omprog `confirmMessages="on"`).
    pub confirm: bool,
    /// The line that opens a transaction (omprog `beginTransactionMark`).
    pub begin_mark: String,
    /// The line that commits one (omprog `commitTransactionMark`).
    pub commit_mark: String,
    /// A `.` goes out this often while an answer is pending; keep it below
    /// omprog's `confirmTimeout` (10 s by default).
    pub keepalive: Duration,
    /// Once the input ends, commit, wait up to this long for the targets to
    /// acknowledge everything spooled, and write a delivery report on the output
    /// (`qbroker stdin --once`).
    pub report_delivery: Option<Duration>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            confirm: true,
            begin_mark: "BEGIN TRANSACTION".to_string(),
            commit_mark: "COMMIT TRANSACTION".to_string(),
            keepalive: Duration::from_secs(2),
            report_delivery: None,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The answers' way out, shared with the keep-alive thread.
struct Reply {
    out: Mutex<Box<dyn Write + Send>>,
    confirm: bool,
    /// An answer is due and not yet known: a `.` every keep-alive.
    waiting: AtomicBool,
    /// The output failed (the reader is gone): stop.
    broken: AtomicBool,
}

impl Reply {
    fn write(&self, text: &[u8]) {
        let mut out = lock(&self.out);
        if out.write_all(text).and_then(|()| out.flush()).is_err()
            && !self.broken.swap(true, Ordering::Relaxed)
        {
            warn!("stdin feed: cannot write to stdout (the reader is gone); stopping");
        }
    }

    /// One protocol answer (only with `confirm`).
    fn answer(&self, word: &str) {
        self.waiting.store(false, Ordering::Relaxed);
        if self.confirm {
            let mut line = Vec::with_capacity(word.len() + 1);
            line.extend_from_slice(word.as_bytes());
            line.push(b'\n');
            self.write(&line);
        }
    }

    fn keepalive(&self) {
        if self.confirm && self.waiting.load(Ordering::Relaxed) {
            self.write(b".");
        }
    }
}

/// The keep-alive thread; stopped when dropped (a feed that never started, or
/// one that ended).
struct KeepAlive {
    /// Dropped to stop the thread, which waits on it between keep-alives.
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Lines on a pipe, waiting to be started by [`run_input`](crate::run_input).
pub struct Feed {
    opts: Options,
    input: Box<dyn BufRead + Send>,
    reply: Arc<Reply>,
    keepalive: KeepAlive,
    done: oneshot::Sender<()>,
}

impl Feed {
    /// A feed that reads `input` and answers on `output`. The receiver resolves
    /// once the input ended (or the output broke): pass it, or a future that
    /// includes it, as `run_input`'s shutdown. Until the pipeline is up, a `.`
    /// goes out every `keepalive` (with `confirm`).
    pub fn new(
        opts: Options,
        input: Box<dyn BufRead + Send>,
        output: Box<dyn Write + Send>,
    ) -> std::io::Result<(Feed, oneshot::Receiver<()>)> {
        let reply = Arc::new(Reply {
            out: Mutex::new(output),
            confirm: opts.confirm,
            waiting: AtomicBool::new(true),
            broken: AtomicBool::new(false),
        });
        let (done, done_rx) = oneshot::channel();
        let r = reply.clone();
        let every = opts.keepalive.max(Duration::from_millis(10));
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let keepalive = std::thread::Builder::new()
            .name("qbroker-keepalive".into())
            .spawn(move || {
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                    r.keepalive();
                }
            })?;
        Ok((
            Feed {
                opts,
                input,
                keepalive: KeepAlive {
                    stop: Some(stop),
                    thread: Some(keepalive),
                },
                reply,
                done,
            },
            done_rx,
        ))
    }

    /// Start reading (a reader thread, blocked on the input) and feeding (a
    /// feeder thread, which owns the clusters' numbering and answers).
    pub(crate) fn start(self, p: Pipeline) -> std::io::Result<Running> {
        let Feed {
            opts,
            mut input,
            reply,
            keepalive,
            done,
        } = self;
        let (tx, rx) = crossbeam_channel::bounded::<Vec<u8>>(READ_AHEAD);
        // Not joined: at shutdown it may sit in a read that only the end of the
        // input (or the process) ends.
        std::thread::Builder::new()
            .name("qbroker-stdin".into())
            .spawn(move || read_lines(&mut input, &tx))?;
        let (wal, replay) = if opts.report_delivery.is_none() {
            let (wal, lines) = Wal::open(&p.config.spool.dir)?;
            (Some(wal), lines)
        } else {
            (None, Vec::new())
        };
        let feeder = Feeder {
            p,
            opts,
            reply: reply.clone(),
            clusters: HashMap::new(),
            in_transaction: false,
            wal,
        };
        let thread = std::thread::Builder::new()
            .name("qbroker-feed".into())
            .spawn(move || {
                feeder.run(replay, &rx);
                drop(keepalive);
                let _ = done.send(());
            })?;
        Ok(Running { thread })
    }
}

fn read_lines(input: &mut Box<dyn BufRead + Send>, tx: &Sender<Vec<u8>>) {
    loop {
        let mut line = Vec::new();
        match input.read_until(b'\n', &mut line) {
            Ok(0) => return,
            Ok(_) => {
                if tx.send(line).is_err() {
                    return;
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => {
                warn!(error = %err, "stdin feed: cannot read stdin; treating it as its end");
                return;
            }
        }
    }
}

/// What the feed needs of the running pipeline.
pub(crate) struct Pipeline {
    pub config: Arc<Config>,
    /// The way into the work queue (admission, numbering, the send).
    pub handoff: Handoff,
    pub metrics: Arc<Metrics>,
    pub batches: Arc<Batches>,
    /// The running targets (their spools are synced at a commit).
    pub targets: Arc<Targets>,
    pub dead_letters: Arc<DeadLetters>,
    /// For waiting on the admission gate from the feeder's plain thread.
    pub runtime: tokio::runtime::Handle,
    /// Turns true when the broker shuts down.
    pub stop: watch::Receiver<bool>,
}

/// The running feed.
pub struct Running {
    thread: JoinHandle<()>,
}

impl Running {
    /// Wait until the feed stopped and handed on everything it read. Blocking.
    pub fn join(self) {
        if self.thread.join().is_err() {
            error!("the stdin feeder panicked");
        }
    }
}

/// Frames of one node read since its last chunk.
struct Pending {
    node: Arc<str>,
    metrics: Arc<NodeMetrics>,
    data: BytesMut,
    frames: Vec<(u32, u32)>,
}

/// One cluster as the feed sees it: its numbering (what a supervisor keeps for
/// TCP connections) and its nodes' pending frames.
struct Cluster {
    shared: Arc<ClusterShared>,
    sequence: Sequence,
    nodes: HashMap<Arc<str>, Pending>,
    /// Fed since the last commit.
    dirty: bool,
}

/// Outside a transaction, the write-ahead file is emptied (after a commit)
/// this often, or once it holds this much.
const WAL_CHECKPOINT: Duration = Duration::from_secs(1);
const WAL_CHECKPOINT_BYTES: u64 = 4 << 20;

/// Messages answered but not yet committed (see the module documentation).
struct Wal {
    file: std::fs::File,
    path: std::path::PathBuf,
    bytes: u64,
    since: Instant,
}

impl Wal {
    /// Open `<dir>/stdin.wal`, returning what a previous process left in it.
    fn open(dir: &std::path::Path) -> std::io::Result<(Wal, Vec<Vec<u8>>)> {
        use std::io::Read as _;
        use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
        let path = dir.join("stdin.wal");
        // Owner-only, as every file the broker writes: audit records name users and paths.
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)?;
        // One written by an older version keeps its mode: tighten it.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        let mut left = Vec::new();
        file.read_to_end(&mut left)?;
        let lines = left
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(<[u8]>::to_vec)
            .collect();
        let bytes = left.len() as u64;
        Ok((
            Wal {
                file,
                path,
                bytes,
                since: Instant::now(),
            },
            lines,
        ))
    }

    /// Append one line; with `sync`, also fsync it (`fdatasync`).
    fn append(&mut self, line: &[u8], sync: bool) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line);
        buf.push(b'\n');
        self.file.write_all(&buf)?;
        self.bytes += buf.len() as u64;
        if sync {
            self.file.sync_data()?;
        }
        Ok(())
    }

    /// Everything in it is durable in the spool: start over.
    fn clear(&mut self) -> std::io::Result<()> {
        self.file.set_len(0)?;
        self.bytes = 0;
        self.since = Instant::now();
        Ok(())
    }

    fn due(&self) -> bool {
        self.bytes > 0
            && (self.bytes >= WAL_CHECKPOINT_BYTES || self.since.elapsed() >= WAL_CHECKPOINT)
    }
}

struct Feeder {
    p: Pipeline,
    opts: Options,
    reply: Arc<Reply>,
    clusters: HashMap<Arc<str>, Cluster>,
    in_transaction: bool,
    /// None for `--once`, which works on a throw-away spool.
    wal: Option<Wal>,
}

impl Feeder {
    fn stopping(&self) -> bool {
        *self.p.stop.borrow() || self.reply.broken.load(Ordering::Relaxed)
    }

    fn run(mut self, replay: Vec<Vec<u8>>, lines: &Receiver<Vec<u8>>) {
        if !replay.is_empty() {
            // A predecessor died before it committed these: they go first.
            warn!(
                messages = replay.len(),
                path = %self.wal.as_ref().map_or_else(String::new, |w| w.path.display().to_string()),
                "stdin feed: messages received but not committed before the last exit; feeding them again"
            );
            for line in &replay {
                self.message(line);
            }
            if let Err(reason) = self.checkpoint(false) {
                error!(error = %reason, "stdin feed: cannot commit the replayed messages; they stay in the write-ahead file");
            }
        }
        self.reply.answer("OK");
        info!(
            confirm = self.opts.confirm,
            "stdin feed ready: reading messages"
        );
        let mut messages = 0u64;
        loop {
            if self.stopping() {
                break;
            }
            let line = match lines.try_recv() {
                Ok(line) => line,
                Err(TryRecvError::Empty) => {
                    if !self.in_transaction {
                        // Nothing more is waiting: hand on what was answered.
                        self.flush_all();
                        self.checkpoint_if_due();
                    }
                    match lines.recv_timeout(Duration::from_millis(200)) {
                        Ok(line) => line,
                        Err(RecvTimeoutError::Timeout) => continue,
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
                Err(TryRecvError::Disconnected) => break,
            };
            if self.line(line) {
                messages += 1;
            }
        }
        // Whatever was read goes on, and is committed so that the next start
        // does not feed it again. After a stop, rsyslog may send part of it
        // again (a copy, never a loss).
        self.flush_all();
        match self.opts.report_delivery {
            Some(wait) => {
                let result = self.commit(true);
                self.report(wait, result);
            }
            None => {
                if let Err(reason) = self.checkpoint(false) {
                    warn!(error = %reason, "stdin feed: last commit failed; the next start feeds the uncommitted messages again");
                }
            }
        }
        info!(messages, "stdin feed ended");
    }

    /// Commit, then empty the write-ahead file.
    fn checkpoint(&mut self, stop_aware: bool) -> Result<(), CommitError> {
        self.commit(stop_aware)?;
        if let Some(wal) = self.wal.as_mut() {
            wal.clear().map_err(|source| CommitError::Wal {
                path: wal.path.display().to_string(),
                source,
            })?;
        }
        Ok(())
    }

    /// Outside a transaction: keep the write-ahead file short.
    fn checkpoint_if_due(&mut self) {
        if self.wal.as_ref().is_some_and(Wal::due) {
            if let Err(reason) = self.checkpoint(true) {
                warn!(error = %reason, "stdin feed: commit failed; retrying later");
            }
        }
    }

    /// Handle one line; true when it was a message.
    fn line(&mut self, mut line: Vec<u8>) -> bool {
        while matches!(line.last(), Some(b'\n' | b'\r')) {
            line.pop();
        }
        if line == self.opts.begin_mark.as_bytes() {
            self.in_transaction = true;
            self.reply.answer("OK");
            return false;
        }
        if line == self.opts.commit_mark.as_bytes() {
            self.in_transaction = false;
            match self.checkpoint(true) {
                Ok(()) => self.reply.answer("OK"),
                Err(reason) => {
                    error!(error = %reason, "commit failed: rsyslog will send the transaction again");
                    self.reply.answer(&format!("ERROR {reason}"));
                }
            }
            return false;
        }
        // Outside a transaction the `OK` below is the only answer the message
        // gets: with `fsync = "always"` it must outlive a power cut too, so the
        // write-ahead file is synced first (one fsync per message, as the
        // spool's own with `always`; in a transaction the commit's suffices).
        let sync = !self.in_transaction && self.p.config.spool.fsync == Fsync::Always;
        if let Some(wal) = self.wal.as_mut() {
            if !line.iter().all(u8::is_ascii_whitespace) {
                if let Err(err) = wal.append(&line, sync) {
                    // Not kept, so not answered as received: rsyslog retries it.
                    error!(error = %err, path = %wal.path.display(), "stdin feed: cannot write the write-ahead file");
                    self.reply
                        .answer(&format!("ERROR cannot keep the message: {err}"));
                    return false;
                }
            }
        }
        self.message(&line);
        self.reply.answer(if self.in_transaction {
            "DEFER_COMMIT"
        } else {
            "OK"
        });
        if !self.in_transaction {
            self.checkpoint_if_due();
        }
        true
    }

    fn message(&mut self, frame: &[u8]) {
        if frame.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        let cfg = self.p.config.clone();
        if frame.len() > cfg.ingest.max_frame_bytes {
            self.p.metrics.ingest.oversize_frames.inc();
            if let Some(suppressed) = OVERSIZE_LOG.check() {
                warn!(
                    bytes = frame.len(),
                    max_frame_bytes = cfg.ingest.max_frame_bytes,
                    suppressed,
                    "frame too large, skipped"
                );
            }
            return;
        }
        let host = parse::frame_hostname(frame);
        let (name, _, _) = route(&cfg, host);
        if !self.clusters.contains_key(name.as_str()) {
            if self.clusters.len() >= cfg.ingest.max_clusters
                && !self.p.batches.is_known(name.as_str())
            {
                self.unroutable(&name, host.unwrap_or("-"), frame, "too many clusters");
                return;
            }
            let name: Arc<str> = Arc::from(name.as_str());
            let Some(batcher) =
                self.p
                    .batches
                    .create(name.clone(), &self.p.metrics, &self.p.handoff.gate)
            else {
                self.unroutable(
                    &name,
                    host.unwrap_or("-"),
                    frame,
                    "no target for the cluster",
                );
                return;
            };
            let (gate_id, metrics) = (batcher.gate_id(), batcher.metrics().clone());
            info!(cluster = %name, "cluster seen on stdin");
            self.clusters.insert(
                name.clone(),
                Cluster {
                    shared: Arc::new(ClusterShared {
                        name,
                        gate_id,
                        metrics,
                        batcher,
                    }),
                    sequence: Sequence::default(),
                    nodes: HashMap::new(),
                    dirty: false,
                },
            );
        }
        let cluster = self
            .clusters
            .get_mut(name.as_str())
            .expect("inserted above");
        cluster.dirty = true;
        let node = host.unwrap_or("-");
        if !cluster.nodes.contains_key(node) {
            let node: Arc<str> = Arc::from(node);
            let metrics = cluster.shared.metrics.node(&node);
            cluster.nodes.insert(
                node.clone(),
                Pending {
                    node,
                    metrics,
                    data: BytesMut::new(),
                    frames: Vec::new(),
                },
            );
        }
        let pending = cluster.nodes.get_mut(node).expect("inserted above");
        let start = pending.data.len();
        pending.data.extend_from_slice(frame);
        pending
            .frames
            .push((start as u32, pending.data.len() as u32));
        if pending.frames.len() >= cfg.queue.chunk_max_frames
            || pending.data.len() >= cfg.queue.chunk_max_bytes
        {
            hand_on(&self.p, &cluster.shared, &cluster.sequence, pending);
        }
    }

    /// A line no cluster can take: counted and kept as a dead letter (TCP
    /// closes such a connection; a pipe has no other way to refuse one line).
    fn unroutable(&self, cluster: &str, node: &str, frame: &[u8], why: &str) {
        self.p.metrics.ingest.unroutable(cluster);
        if let Some(suppressed) = UNROUTABLE_LOG.check() {
            warn!(cluster = %cluster, reason = why, suppressed, "line dropped: no target for its cluster; kept in the dead-letter file");
        }
        let kept = self
            .p
            .dead_letters
            .frame(cluster, node, 0, &format!("unroutable: {why}"), frame)
            .and_then(|()| self.p.dead_letters.flush());
        if let Err(err) = kept {
            self.p.metrics.pool.dead_letter_errors.inc();
            error!(error = %err, "cannot write the dead-letter file");
        }
    }

    /// Hand every node's pending frames to the pool.
    fn flush_all(&mut self) {
        for cluster in self.clusters.values_mut() {
            let Cluster {
                shared,
                sequence,
                nodes,
                ..
            } = cluster;
            for pending in nodes.values_mut() {
                hand_on(&self.p, shared, sequence, pending);
            }
        }
    }

    /// The commit barrier: everything read so far is in a sealed batch in the
    /// spool, and on disk unless `spool.fsync = "never"`.
    fn commit(&mut self, stop_aware: bool) -> Result<(), CommitError> {
        self.flush_all();
        // At the end, during shutdown, the barrier still completes: the pool
        // drains only after the feed ended. Bounded by the grace period (the
        // batchers stop waiting on a full spool then).
        let deadline = Instant::now() + self.p.config.shutdown_grace + Duration::from_secs(5);
        self.reply.waiting.store(true, Ordering::Relaxed);
        let mut touched: Vec<Arc<Spool>> = Vec::new();
        let started = Instant::now();
        let mut said = false;
        for cluster in self.clusters.values_mut().filter(|c| c.dirty) {
            // The batcher replies once the cluster's last chunk is in a batch
            // in the spool. The wait looks up now and then for a shutdown.
            let reply = cluster
                .shared
                .batcher
                .barrier(cluster.sequence.next_chunk());
            loop {
                match reply.recv_timeout(COMMIT_LOOK) {
                    Ok(()) => break,
                    Err(RecvTimeoutError::Disconnected) => return Err(CommitError::ShuttingDown),
                    Err(RecvTimeoutError::Timeout) => {}
                }
                if stop_aware && *self.p.stop.borrow() {
                    return Err(CommitError::ShuttingDown);
                }
                if Instant::now() >= deadline && *self.p.stop.borrow() {
                    return Err(CommitError::GraceOver);
                }
                if !said && started.elapsed() >= COMMIT_SLOW {
                    said = true;
                    warn!(cluster = %cluster.shared.name, secs = COMMIT_SLOW.as_secs(), "commit still waiting for the pipeline (an enrichment, or a full spool)");
                }
            }
            let spool = cluster.shared.batcher.current_route().spool;
            if !touched.iter().any(|t| Arc::ptr_eq(t, &spool)) {
                touched.push(spool);
            }
            cluster.dirty = false;
        }
        if self.p.config.spool.fsync != Fsync::Never {
            for spool in &touched {
                spool.sync_appended().map_err(CommitError::Fsync)?;
            }
        }
        Ok(())
    }

    /// `--once`: wait for the targets, then say what became of the batches.
    fn report(&self, wait: Duration, committed: Result<(), CommitError>) {
        let mut text = String::new();
        if let Err(reason) = committed {
            text.push_str(&format!("delivery  not spooled: {reason}\n"));
            self.reply.write(text.as_bytes());
            return;
        }
        // Wait for the acknowledgements, spool by spool, looking up now and
        // then for a shutdown.
        let deadline = Instant::now() + wait;
        for spool in self.p.targets.spools() {
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if spool.wait_acked(left.min(COMMIT_LOOK))
                    || left.is_zero()
                    || *self.p.stop.borrow()
                {
                    break;
                }
            }
        }
        let pending: u64 = self
            .p
            .targets
            .spool_stats()
            .iter()
            .map(|(_, s)| s.unacked_records)
            .sum();
        // Every target that ran, registered ones included.
        for t in self.p.targets.views() {
            let m = self.p.metrics.target(&t.name);
            let (delivered, refused) = (m.events_delivered.get(), m.events_dead_lettered.get());
            if delivered + refused + m.requests.get() == 0 {
                continue;
            }
            text.push_str(&format!(
                "delivery  target {} ({}): {delivered} event(s) delivered in {} batch(es)",
                t.name,
                t.url,
                m.batches_delivered.get()
            ));
            if refused > 0 {
                text.push_str(&format!(
                    ", {refused} event(s) refused for good (HTTP 4xx; the response is in the log above)"
                ));
            }
            text.push('\n');
        }
        if pending > 0 {
            text.push_str(&format!(
                "delivery  NOT DELIVERED: {pending} batch(es) still unacknowledged after {} s; the log above says why\n",
                wait.as_secs()
            ));
        } else if text.is_empty() {
            text.push_str("delivery  nothing to deliver (no event)\n");
        }
        self.reply.write(text.as_bytes());
    }
}

/// The cluster of a message and where its events go: the `[[clusters]]` entry
/// named after its HOSTNAME, else that name with `default_target` (as ingest
/// does for a connection without a configured source). Returns the cluster's
/// name, its target (an index of `cfg.targets`) and its `filer_id`.
pub fn route(cfg: &Config, host: Option<&str>) -> (String, Option<usize>, Option<u64>) {
    match host.map(parse::cluster_of_hostname) {
        Some(name) => match cfg.cluster_named(name) {
            Some(c) => (c.name.clone(), Some(c.target), c.filer_id),
            None => (name.to_string(), cfg.default_target, None),
        },
        None => (UNIDENTIFIED.to_string(), cfg.default_target, None),
    }
}

/// Hand a node's pending frames to the pool as one chunk, once the gate admits
/// it (waiting, as a reader does, while the queue is full; see [`Handoff`]).
/// Bytes count here, where a reader counts them as it reads.
fn hand_on(p: &Pipeline, shared: &Arc<ClusterShared>, sequence: &Sequence, pending: &mut Pending) {
    if pending.frames.is_empty() {
        return;
    }
    let data = pending.data.split().freeze();
    let frames = std::mem::take(&mut pending.frames);
    let bytes = data.len() as u64;
    let at = Origin {
        cluster: shared,
        sequence,
        node: &pending.node,
        node_metrics: &pending.metrics,
    };
    let handed = p.handoff.hand_on_blocking(&p.runtime, at, data, frames);
    if handed != Handed::PoolGone {
        pending.metrics.bytes.add(bytes);
        shared.metrics.bytes.add(bytes);
    }
}
