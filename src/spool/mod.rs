//! spool: the durable, segmented, checksummed log of sealed batches, one per target.
//!
//! The batcher appends sealed batches from plain threads ([`Spool::append`]); egress
//! lanes take them in id order ([`Spool::next`], async) and acknowledge them in any
//! order once the target accepted them ([`Spool::ack`]). A record leaves the disk
//! only when every record before it was acknowledged too (the watermark), and the
//! watermark is persisted before any segment is deleted, so a restart sends again
//! exactly the records at or above the persisted watermark (at-least-once).
//!
//! On disk, one directory per target:
//!
//! - `<first id, 18 digits>.seg`: append-only segments of records (see `record`),
//!   a new one once the current one passes `segment_bytes`;
//! - `watermark`: the persisted acknowledgement watermark (see `watermark`);
//! - `<segment>.corrupt`: bytes set aside by recovery, never deleted by the spool.
//!
//! Threads and locks: appenders write under the log lock, then share fsyncs (group
//! commit: one appender fsyncs for every record written so far while the others
//! wait for it). The housekeeping, a few threads shared by every spool of the
//! process, persists each watermark, deletes acknowledged segments and, with
//! [`Fsync::Interval`], fsyncs. Readers hand out
//! records from a bounded cache of recent appends, or from the segment files (in a
//! blocking task) when they lag behind it.
//!
//! Modules: `record` (encoding), `segment` (files), `watermark`, `recover` (open),
//! `writer` (append, group commit), `reader` (next), `housekeeper`.
//!
//! Owns: the files of one target's log, the directory lock ([`lock_dir`]) and
//! the spools' part of the `/metrics` page ([`render_stats`]). May touch: the
//! ack tracker of [`crate::sync`], the buffers of [`crate::model`] and
//! `[spool]`'s types in [`crate::config`]; it names no stage.

mod housekeeper;
mod reader;
mod record;
mod recover;
mod segment;
mod watermark;
mod writer;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tracing::{debug, info, warn};

use crate::sync::acks::AckTracker;

use housekeeper::Housekeeping;
/// The most threads, and their name, that do the housekeeping of every spool of
/// the process together.
pub use housekeeper::{MAX_THREADS as HOUSEKEEPING_THREADS, THREAD_NAME as HOUSEKEEPING_THREAD};
use reader::{Cache, ReadState};
use writer::{CommitState, Log};

/// Default budget of the in-memory cache of recently appended records.
pub const DEFAULT_CACHE_BYTES: usize = crate::config::SPOOL_CACHE_BYTES;

/// When appended records are forced to disk (defined with `[spool]`'s section).
pub use crate::config::Fsync;

/// Encoding buffers kept for reuse, and the largest one kept.
const RECYCLED_BUFFERS: usize = 32;
const RECYCLED_MAX_BYTES: usize = 8 << 20;

/// Validated spool settings of one target.
#[derive(Debug, Clone)]
pub struct Options {
    /// Cap on the bytes of all segments; at the cap `append` waits (backpressure).
    pub max_bytes: u64,
    /// A segment is sealed and a new one started past this size.
    pub segment_bytes: u64,
    pub fsync: Fsync,
}

/// A sealed batch as the batcher hands it over.
#[derive(Debug, Clone, Copy)]
pub struct NewBatch<'a> {
    pub batch_id: &'a str,
    pub cluster: &'a str,
    pub events: u32,
    /// (receive time in Unix microseconds, events) of each chunk the batch holds events of.
    pub received: &'a [(u64, u32)],
    /// The complete HTTP request body.
    pub body: &'a [u8],
}

/// A spooled batch as egress reads it.
#[derive(Debug, Clone)]
pub struct Record {
    /// Position in this spool's log; increases by one per record.
    pub id: u64,
    pub batch_id: String,
    pub cluster: String,
    pub events: u32,
    pub received: Vec<(u64, u32)>,
    pub body: Bytes,
    /// True when this record was found on disk at start (sent again after a restart).
    pub replayed: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool i/o at {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("spool full")]
    Full,
    #[error("spool closed")]
    Closed,
    #[error("spool write failed: {0}")]
    Io(#[from] std::io::Error),
    /// The encoded batch exceeds the largest record the spool stores (256 MiB);
    /// retrying cannot help.
    #[error("batch of {bytes} bytes is too large for the spool")]
    TooLarge { bytes: usize },
}

/// Point-in-time figures for metrics.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Bytes of all segments on disk (side files excluded).
    pub bytes: u64,
    pub segments: u64,
    pub unacked_records: u64,
    /// Bytes of the log from the oldest unacknowledged record to its end:
    /// what is still to be delivered (records acknowledged out of order past
    /// the oldest included, at most `in_flight` of them). Less than `bytes`,
    /// which also holds delivered records until their segment is deleted.
    pub unacked_bytes: u64,
    pub oldest_unacked_age_ms: u64,
    pub appended_records: u64,
    /// Acknowledgements received (a repeated one counts again).
    pub acked_records: u64,
    /// Records found on disk at open and handed out again.
    pub replayed_records: u64,
    /// Stretches of bad bytes set aside (at open, or found while reading).
    pub corrupt_records: u64,
    /// Batch ids found missing at open: spooled once, not on disk any more
    /// (see [`MISSING_FILE`]).
    pub missing_records: u64,
    /// Appends that found the spool full and had to wait.
    pub full_waits: u64,
    pub io_errors: u64,
    /// Every record id below this was acknowledged.
    pub watermark: u64,
    /// Bytes of record data held in the read cache.
    pub cache_bytes: u64,
}

/// The spool directory could not be locked ([`lock_dir`]).
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the lock.
    #[error("{} is locked by another process", path.display())]
    Locked { path: PathBuf },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// Take `<dir>/qbroker.lock` (an advisory `flock`), so that two brokers never
/// share a spool: the spool assumes one writer. Held until the file is
/// dropped; the kernel lets go of it if the process dies.
pub fn lock_dir(dir: &Path) -> Result<std::fs::File, LockError> {
    let path = dir.join("qbroker.lock");
    let mut opts = std::fs::OpenOptions::new();
    opts.create(true).truncate(false).write(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let file = opts.open(&path).map_err(|source| LockError::Io {
        what: format!("cannot open {}", path.display()),
        source,
    })?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => Err(LockError::Locked { path }),
        Err(e) => Err(LockError::Io {
            what: format!("cannot lock {}", path.display()),
            source: e.into(),
        }),
    }
}

/// The spools' part of the `/metrics` page: each target's [`Stats`], `spools`
/// as (target name, stats).
pub fn render_stats<S: AsRef<str>>(out: &mut String, spools: &[(S, Stats)]) {
    use crate::metrics::{esc, header};
    use std::fmt::Write as _;
    type SpoolPick = fn(&Stats) -> u64;
    let per_spool: [(&str, &str, &str, SpoolPick); 11] = [
        (
            "qbroker_spool_bytes",
            "gauge",
            "Bytes of the spool's segment files.",
            |s| s.bytes,
        ),
        ("qbroker_spool_segments", "gauge", "Segment files.", |s| {
            s.segments
        }),
        (
            "qbroker_spool_unacked_bytes",
            "gauge",
            "Bytes of the spool from its oldest unacknowledged batch to its end: what is left to deliver (qbroker_spool_bytes also counts delivered batches until their segment file is deleted).",
            |s| s.unacked_bytes,
        ),
        (
            "qbroker_spool_unacked_batches",
            "gauge",
            "Spooled batches not yet acknowledged.",
            |s| s.unacked_records,
        ),
        (
            "qbroker_spool_oldest_unacked_age_seconds",
            "gauge",
            "Age of the oldest unacknowledged batch.",
            |s| s.oldest_unacked_age_ms / 1000,
        ),
        (
            "qbroker_spool_replayed_batches_total",
            "counter",
            "Batches found unacknowledged at start and sent again.",
            |s| s.replayed_records,
        ),
        (
            "qbroker_spool_corrupt_records_total",
            "counter",
            "Corrupt records set aside at start.",
            |s| s.corrupt_records,
        ),
        (
            "qbroker_spool_missing_batches",
            "gauge",
            "Batch ids found missing from the spool at start (spooled, then gone from disk: see missing.log in the spool directory).",
            |s| s.missing_records,
        ),
        (
            "qbroker_spool_full_waits_total",
            "counter",
            "Appends that waited on a full spool.",
            |s| s.full_waits,
        ),
        (
            "qbroker_spool_io_errors_total",
            "counter",
            "Spool write errors (intake paused and retried).",
            |s| s.io_errors,
        ),
        (
            "qbroker_spool_appended_batches_total",
            "counter",
            "Batches appended.",
            |s| s.appended_records,
        ),
    ];
    for (name, kind, help, pick) in per_spool {
        header(out, name, kind, help);
        for (target, s) in spools {
            let _ = writeln!(
                out,
                "{name}{{target=\"{}\"}} {}",
                esc(target.as_ref()),
                pick(s)
            );
        }
    }
}

/// A position in the log: a segment (by first id) and a byte offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Pos {
    pub(crate) seg: u64,
    pub(crate) off: u64,
}

#[derive(Default)]
struct Counters {
    appended: AtomicU64,
    acked: AtomicU64,
    replayed: AtomicU64,
    corrupt: AtomicU64,
    missing: AtomicU64,
    full_waits: AtomicU64,
    io_errors: AtomicU64,
}

impl Counters {
    fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// Everything the spool's handle, its readers and its housekeeper share.
/// Lock order: `reader` -> `log` -> `cache`; `persisted` -> `log`; `commit` is
/// never held while taking another lock, nor `handed`.
struct Shared {
    dir: PathBuf,
    opts: Options,
    log: Mutex<Log>,
    /// Appenders waiting for space, with `log`.
    space: Condvar,
    commit: Mutex<CommitState>,
    committed: Condvar,
    tracker: AckTracker,
    /// The watermark last written to disk; held while writing it and deleting.
    persisted: Mutex<u64>,
    reader: Mutex<ReadState>,
    /// Serialises `next` callers, across their awaits.
    read_turn: tokio::sync::Mutex<()>,
    readable: tokio::sync::Notify,
    /// Notified when a record is acknowledged, space is freed, or the spool
    /// closes or lifts its cap: what the batch sealer waits on while a batch
    /// waits for a request slot or for room ([`Spool::changed`]).
    changed: tokio::sync::Notify,
    /// Callers of [`Spool::wait_acked`] and what wakes them (only while one
    /// waits: an acknowledgement with nobody waiting costs one load).
    ack_waiters: AtomicUsize,
    acked: (Mutex<()>, Condvar),
    cache: Mutex<Cache>,
    cache_budget: AtomicUsize,
    /// Encoding buffers, back from the cache once egress is done with a record.
    buffers: Arc<crate::model::Recycler>,
    /// (id, sealed ms, position) of records handed out and not below the
    /// watermark, in id order.
    handed: Mutex<VecDeque<(u64, u64, Pos)>>,
    /// One past the highest id handed out.
    handed_end: AtomicU64,
    /// End id of the oldest sealed segment (u64::MAX when only the active one): a
    /// watermark reaching it makes a segment deletable.
    deletable_at: AtomicU64,
    /// Records written since the last flush (for `Fsync::Interval`).
    dirty: AtomicBool,
    /// This spool's key in the shared [`Housekeeping`].
    hk_key: AtomicUsize,
    /// The housekeeping has nothing to do for this spool (at its last look): an
    /// acknowledgement or a write queues it.
    hk_idle: AtomicBool,
    /// Ids below this were on disk at open.
    first_new_id: u64,
    counters: Counters,
}

/// The file in a spool directory where every start that found batches missing
/// adds a line (`<unix seconds> missing=<count> ids=<ranges>`), so that the
/// loss stays visible after the log has rotated (`qbroker doctor` reads it).
pub const MISSING_FILE: &str = "missing.log";

/// Append the report of missing batch ids to [`MISSING_FILE`]; a failure is
/// logged, the spool opens all the same.
fn record_missing(dir: &Path, gaps: &[(u64, u64)], missing: u64) {
    use std::io::Write;
    let line = format!(
        "{} missing={missing} ids={}\n",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        recover::format_ranges(gaps)
    );
    let path = dir.join(MISSING_FILE);
    let mut opts = std::fs::OpenOptions::new();
    opts.create(true).append(true);
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    if let Err(error) = opts
        .open(&path)
        .and_then(|mut f| f.write_all(line.as_bytes()))
    {
        warn!(file = %path.display(), %error, "cannot record the missing batches");
    }
}

/// Locks, carrying on through poisoning: every critical section leaves the state
/// consistent before anything that can panic.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Shared {
    fn wake_housekeeper(&self) {
        Housekeeping::global().wake(self.hk_key.load(Ordering::Relaxed));
    }

    /// Work for a housekeeper that sleeps with nothing to do (cheap when it
    /// does not: one load).
    fn kick_housekeeper(&self) {
        fence(Ordering::SeqCst);
        if self.hk_idle.load(Ordering::SeqCst) {
            Housekeeping::global().kick(self.hk_key.load(Ordering::Relaxed));
        }
    }

    /// After the watermark moved to `w`.
    fn advanced(&self, w: u64) {
        {
            let mut h = lock(&self.handed);
            while h.front().is_some_and(|f| f.0 < w) {
                h.pop_front();
            }
        }
        if w >= self.deletable_at.load(Ordering::Acquire) {
            self.wake_housekeeper();
        } else {
            self.kick_housekeeper();
        }
    }
}

/// The durable log of one target. `Send + Sync`: share it as `Arc<Spool>`.
pub struct Spool {
    shared: Arc<Shared>,
}

const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Spool>();
};

impl Spool {
    /// Opens (creating when missing) the spool in `dir` and recovers what is on
    /// disk: records above the persisted watermark are handed out first, with
    /// `replayed` set.
    pub fn open(dir: &Path, opts: Options) -> Result<Spool, SpoolError> {
        let rec = recover::recover(dir)?;
        let tracker = AckTracker::new(rec.watermark);
        for &(lo, hi) in &rec.gaps {
            tracker.ack_range(lo, hi);
        }
        let expected = tracker.watermark();
        let log = Log::new(rec.segments, rec.next_id);
        let deletable_at = log.deletable_at();
        let counters = Counters::default();
        counters.corrupt.store(rec.corrupt, Ordering::Relaxed);
        let missing: u64 = rec.missing.iter().map(|g| g.1 - g.0).sum();
        counters.missing.store(missing, Ordering::Relaxed);
        if missing > 0 {
            record_missing(dir, &rec.missing, missing);
        }
        let shared = Arc::new(Shared {
            dir: dir.to_owned(),
            opts,
            log: Mutex::new(log),
            space: Condvar::new(),
            commit: Mutex::new(CommitState::new(rec.next_id)),
            committed: Condvar::new(),
            tracker,
            persisted: Mutex::new(rec.watermark),
            reader: Mutex::new(ReadState {
                pos: rec.start,
                expected,
            }),
            read_turn: tokio::sync::Mutex::new(()),
            readable: tokio::sync::Notify::new(),
            changed: tokio::sync::Notify::new(),
            ack_waiters: AtomicUsize::new(0),
            acked: (Mutex::new(()), Condvar::new()),
            cache: Mutex::new(Cache::default()),
            cache_budget: AtomicUsize::new(DEFAULT_CACHE_BYTES),
            buffers: Arc::new(crate::model::Recycler::new(
                RECYCLED_BUFFERS,
                RECYCLED_MAX_BYTES,
            )),
            handed: Mutex::new(VecDeque::new()),
            handed_end: AtomicU64::new(0),
            deletable_at: AtomicU64::new(deletable_at),
            dirty: AtomicBool::new(false),
            hk_key: AtomicUsize::new(usize::MAX),
            hk_idle: AtomicBool::new(false),
            first_new_id: rec.next_id,
            counters,
        });
        let key = Housekeeping::global()
            .register(Arc::downgrade(&shared))
            .map_err(|source| SpoolError::Io {
                path: dir.to_owned(),
                source,
            })?;
        shared.hk_key.store(key, Ordering::Relaxed);
        Ok(Spool { shared })
    }

    /// Appends a sealed batch and returns its record id. Blocking: call it from a
    /// plain thread. With [`Fsync::Always`] it returns once the record is on disk.
    ///
    /// When the spool holds `max_bytes` or more it waits up to `wait` for
    /// acknowledgements to free space, then returns [`AppendError::Full`]; the
    /// caller keeps the batch and calls again. After an [`AppendError::Io`] the
    /// spool stays usable; when the failure was the fsync, the record may still be
    /// delivered, so a retry can deliver it twice (the batch id lets the target
    /// drop the duplicate).
    pub fn append(&self, batch: &NewBatch<'_>, wait: Duration) -> Result<u64, AppendError> {
        self.shared.append(batch, wait)
    }

    /// The next record not yet handed out, in id order; waits for one to be
    /// appended. `None` once [`close`](Self::close) was called and every record was
    /// handed out. Cancel-safe: a dropped call hands out nothing.
    pub async fn next(&self) -> Option<Record> {
        self.shared.next().await
    }

    /// Acknowledges a record handed out by [`next`](Self::next), in any order.
    pub fn ack(&self, id: u64) {
        let sh = &self.shared;
        if id >= sh.handed_end.load(Ordering::Acquire) {
            warn!(dir = %sh.dir.display(), id, "ack of a record never handed out ignored");
            return;
        }
        Counters::bump(&sh.counters.acked);
        if let Some(w) = sh.tracker.ack(id) {
            sh.advanced(w);
        }
        sh.changed.notify_one();
        fence(Ordering::SeqCst);
        if sh.ack_waiters.load(Ordering::SeqCst) > 0 {
            let _one = lock(&sh.acked.0);
            sh.acked.1.notify_all();
        }
    }

    /// Waits up to `timeout` until every appended record is acknowledged;
    /// whether they are. Blocking.
    pub fn wait_acked(&self, timeout: Duration) -> bool {
        let sh = &self.shared;
        let deadline = Instant::now() + timeout;
        sh.ack_waiters.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let mut guard = lock(&sh.acked.0);
        let done = loop {
            if self.unacked_records() == 0 {
                break true;
            }
            let now = Instant::now();
            if now >= deadline {
                break false;
            }
            guard = sh
                .acked
                .1
                .wait_timeout(guard, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        };
        drop(guard);
        sh.ack_waiters.fetch_sub(1, Ordering::SeqCst);
        done
    }

    /// Completes at the next acknowledgement, freeing of space, close or
    /// lifted cap, or at once when one happened since the last call returned
    /// (one permit is kept). For one waiter: the target's batch sealer.
    pub async fn changed(&self) {
        self.shared.changed.notified().await
    }

    /// Whether an append would go in now without waiting for space.
    /// Does not wait: while an append holds the log it says yes (the caller's
    /// append then waits as appends do).
    pub fn has_room(&self) -> bool {
        match self.shared.log.try_lock() {
            Ok(log) => log.closed || log.uncapped || log.bytes < self.shared.opts.max_bytes,
            Err(_) => true,
        }
    }

    /// No more appends (they return [`AppendError::Closed`]); wakes waiting
    /// appenders and readers, and syncs (see [`sync`](Self::sync)), logging any
    /// failure. Records already appended are still handed out and acknowledged.
    pub fn close(&self) {
        let sh = &self.shared;
        lock(&sh.log).closed = true;
        sh.space.notify_all();
        sh.readable.notify_waiters();
        sh.changed.notify_one();
        if let Err(error) = self.sync() {
            warn!(dir = %sh.dir.display(), %error, "spool sync at close failed");
        }
    }

    /// From now on appends do not wait for space: the spool may grow past
    /// `max_bytes`. For shutdown, when what is still in memory (the work queue,
    /// open batches) must reach disk within the grace period rather than wait
    /// for a target that is away; the excess is bounded by the queue's and the
    /// batches' own limits, and once the spool is reopened appends wait again
    /// until acknowledgements bring it under the cap. Wakes waiting appenders.
    pub fn lift_cap(&self) {
        let sh = &self.shared;
        let bytes = {
            let mut log = lock(&sh.log);
            log.uncapped = true;
            log.bytes
        };
        sh.space.notify_all();
        sh.changed.notify_one();
        if bytes >= sh.opts.max_bytes {
            info!(dir = %sh.dir.display(), bytes, max_bytes = sh.opts.max_bytes, "spool at its cap: what is still in memory is written past it for shutdown");
        }
    }

    /// Fsyncs every record appended so far, persists the watermark and deletes the
    /// segments it passed.
    pub fn sync(&self) -> std::io::Result<()> {
        let sh = &self.shared;
        let (from, end) = {
            let covered = lock(&sh.commit).covered;
            (covered, lock(&sh.log).next_id)
        };
        sh.commit_until(from, end)?;
        sh.persist_and_delete()
    }

    /// Fsyncs every record appended so far (sharing the fsync with concurrent
    /// appenders), without [`sync`](Self::sync)'s watermark work: for a caller
    /// that must know its records are on disk before it acknowledges them
    /// (`qbroker stdin`'s commit).
    pub fn sync_appended(&self) -> std::io::Result<()> {
        let sh = &self.shared;
        let (from, end) = {
            let covered = lock(&sh.commit).covered;
            (covered, lock(&sh.log).next_id)
        };
        sh.commit_until(from, end)
    }

    /// Sets the budget of the cache of recent records (default
    /// [`DEFAULT_CACHE_BYTES`]); records past it are read back from the segments.
    pub fn set_cache_bytes(&self, bytes: usize) {
        self.shared.cache_budget.store(bytes, Ordering::Relaxed);
    }

    /// Records appended and not yet acknowledged (cheaper than [`Spool::stats`]).
    pub fn unacked_records(&self) -> u64 {
        let sh = &self.shared;
        let (w, ahead) = sh.tracker.snapshot();
        let next_id = lock(&sh.log).next_id;
        next_id.saturating_sub(w).saturating_sub(ahead)
    }

    pub fn stats(&self) -> Stats {
        let sh = &self.shared;
        let c = &sh.counters;
        let (w, ahead) = sh.tracker.snapshot();
        let (bytes, segments, next_id) = {
            let log = lock(&sh.log);
            (log.bytes, log.segments.len() as u64, log.next_id)
        };
        let unacked = next_id.saturating_sub(w).saturating_sub(ahead);
        let (oldest_unacked_age_ms, unacked_bytes) = if unacked == 0 {
            (0, 0)
        } else {
            (
                sh.oldest_unacked_sealed_ms(w)
                    .map_or(0, |s| now_ms().saturating_sub(s)),
                sh.unacked_bytes(w),
            )
        };
        Stats {
            bytes,
            segments,
            unacked_records: unacked,
            unacked_bytes,
            oldest_unacked_age_ms,
            appended_records: c.appended.load(Ordering::Relaxed),
            acked_records: c.acked.load(Ordering::Relaxed),
            replayed_records: c.replayed.load(Ordering::Relaxed),
            corrupt_records: c.corrupt.load(Ordering::Relaxed),
            missing_records: c.missing.load(Ordering::Relaxed),
            full_waits: c.full_waits.load(Ordering::Relaxed),
            io_errors: c.io_errors.load(Ordering::Relaxed),
            watermark: w,
            cache_bytes: lock(&sh.cache).bytes as u64,
        }
    }

    /// The spool's directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }
}

impl Drop for Spool {
    /// Takes the spool out of the shared housekeeping (after a step of it under
    /// way), then fsyncs and persists the watermark one last time.
    fn drop(&mut self) {
        Housekeeping::global().close(self.shared.hk_key.load(Ordering::Relaxed));
        housekeeper::last_step(&self.shared);
        debug!(dir = %self.shared.dir.display(), "spool closed; its files stay for the next start");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spools_part_of_the_page_declares_every_family() {
        let mut text = String::new();
        let stats = Stats {
            unacked_records: 3,
            ..Stats::default()
        };
        render_stats(&mut text, &[("v", stats)]);
        assert!(
            text.contains("qbroker_spool_unacked_batches{target=\"v\"} 3"),
            "{text}"
        );
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(text.contains(&format!("# TYPE {name} ")), "{line}");
        }
    }
}
