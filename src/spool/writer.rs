//! writer: appending records, rolling segments, and group commit.
//!
//! A record is encoded and checksummed before the log lock is taken; under it the
//! appender only stamps the id, writes at the end of the active segment and
//! updates the counters. Fsync happens after the lock is released: the first
//! appender to need one becomes the leader, snapshots what was written so far and
//! fsyncs it, while later appenders wait on the condvar and are covered by that
//! fsync or the next one.
//!
//! A failed write is cut back off the file (best effort) and the segment is
//! sealed, so the next append starts a fresh segment; nothing of a failed write is
//! ever visible to readers, who never look past `Segment::len`.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, error, warn};

use super::reader::CacheEntry;
use super::record::Encoded;
use super::segment::{self, Segment};
use super::{lock, now_ms, watermark, AppendError, Counters, Fsync, NewBatch, Pos, Shared};

/// The segments and the write position, under the log lock.
pub(crate) struct Log {
    pub(crate) closed: bool,
    /// Appends no longer wait for space (shutdown: what is in memory goes to
    /// disk past the cap rather than being lost; see `Spool::lift_cap`).
    pub(crate) uncapped: bool,
    pub(crate) next_id: u64,
    /// In id order; never empty; the last one is the active segment.
    pub(crate) segments: VecDeque<Segment>,
    pub(crate) bytes: u64,
    /// The active segment saw a failed write or fsync: start a new one.
    roll_pending: bool,
    /// Sealed segments not yet fsynced (not tracked with `Fsync::Never`).
    unsynced: Vec<Arc<File>>,
    /// A segment was created since the directory was last fsynced.
    dir_unsynced: bool,
}

impl Log {
    pub(crate) fn new(segments: Vec<Segment>, next_id: u64) -> Log {
        let bytes = segments.iter().map(|s| s.len).sum();
        Log {
            closed: false,
            uncapped: false,
            next_id,
            segments: segments.into(),
            bytes,
            roll_pending: false,
            unsynced: Vec::new(),
            dir_unsynced: false,
        }
    }

    pub(crate) fn active(&self) -> &Segment {
        self.segments
            .back()
            .expect("the log always has an active segment")
    }

    fn active_mut(&mut self) -> &mut Segment {
        self.segments
            .back_mut()
            .expect("the log always has an active segment")
    }

    /// See `Shared::deletable_at`.
    pub(crate) fn deletable_at(&self) -> u64 {
        if self.segments.len() > 1 {
            self.segments[0].end_id
        } else {
            u64::MAX
        }
    }

    /// The segment starting at `first_id`.
    pub(crate) fn find(&self, first_id: u64) -> Option<(usize, &Segment)> {
        let i = self
            .segments
            .binary_search_by_key(&first_id, |s| s.first_id)
            .ok()?;
        Some((i, &self.segments[i]))
    }

    /// The first segment after the one starting at `first_id`.
    pub(crate) fn after(&self, first_id: u64) -> Option<&Segment> {
        let i = self.segments.partition_point(|s| s.first_id <= first_id);
        self.segments.get(i)
    }
}

/// Group-commit bookkeeping.
pub(crate) struct CommitState {
    /// Every id below this was covered by a finished fsync round (which may have
    /// failed: see `failures`).
    pub(crate) covered: u64,
    leader: bool,
    /// Recent failed rounds: ids `lo..hi` and the error.
    failures: VecDeque<(u64, u64, io::ErrorKind, Arc<str>)>,
}

/// Failed rounds remembered for waiters that wake late.
const FAILURES_KEPT: usize = 64;

impl CommitState {
    pub(crate) fn new(covered: u64) -> CommitState {
        CommitState {
            covered,
            leader: false,
            failures: VecDeque::new(),
        }
    }

    fn failure(&self, lo: u64, hi: u64) -> Option<io::Error> {
        self.failures
            .iter()
            .find(|f| f.0 < hi && lo < f.1)
            .map(|f| io::Error::new(f.2, format!("spool fsync failed: {}", f.3)))
    }
}

impl Shared {
    pub(crate) fn append(&self, batch: &NewBatch<'_>, wait: Duration) -> Result<u64, AppendError> {
        let buf = self.buffers.get(batch.body.len() + 256);
        let Some(mut enc) = Encoded::new(batch, now_ms(), buf) else {
            return Err(AppendError::TooLarge {
                bytes: batch.body.len() + batch.batch_id.len() + batch.cluster.len(),
            });
        };
        let deadline = Instant::now().checked_add(wait);
        let mut log = lock(&self.log);
        let mut waited = false;
        loop {
            if log.closed {
                return Err(AppendError::Closed);
            }
            if log.bytes < self.opts.max_bytes || log.uncapped {
                break;
            }
            if !waited {
                waited = true;
                Counters::bump(&self.counters.full_waits);
                self.seal_large_active(&mut log);
            }
            log = match deadline {
                None => self.space.wait(log).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Err(AppendError::Full);
                    }
                    self.space
                        .wait_timeout(log, d - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
        let (id, pos) = self.write_locked(&mut log, &mut enc)?;
        let len = enc.len();
        {
            let mut cache = lock(&self.cache);
            if cache.bytes + len as usize <= self.cache_budget.load(Ordering::Relaxed) {
                cache.bytes += len as usize;
                cache.entries.push_back(CacheEntry {
                    pos,
                    len,
                    sealed_ms: enc.sealed_ms,
                    data: enc.into_bytes(&self.buffers),
                });
            }
        }
        drop(log);
        Counters::bump(&self.counters.appended);
        self.readable.notify_waiters();
        match self.opts.fsync {
            Fsync::Always => self.commit_until(id, id + 1)?,
            Fsync::Interval(_) => {
                self.dirty.store(true, Ordering::SeqCst);
                self.kick_housekeeper();
            }
            Fsync::Never => {}
        }
        Ok(id)
    }

    /// The spool is full: when the active segment holds a good share of the cap,
    /// seal it so that acknowledging its records can free space (otherwise the
    /// sealed segments hold the most and will free it).
    fn seal_large_active(&self, log: &mut Log) {
        let a = log.active();
        if a.len > 0 && a.len >= self.opts.max_bytes / 8 {
            if let Err(error) = self.roll(log) {
                Counters::bump(&self.counters.io_errors);
                warn!(dir = %self.dir.display(), %error, "spool segment roll failed");
                log.roll_pending = true;
            }
            if self.tracker.watermark() >= log.deletable_at() {
                self.wake_housekeeper();
            }
        }
    }

    fn write_locked(&self, log: &mut Log, enc: &mut Encoded) -> Result<(u64, Pos), AppendError> {
        let a = log.active();
        if log.roll_pending || (a.len > 0 && a.len >= self.opts.segment_bytes) {
            if let Err(error) = self.roll(log) {
                Counters::bump(&self.counters.io_errors);
                warn!(dir = %self.dir.display(), %error, "spool segment roll failed");
                log.roll_pending = true;
                return Err(AppendError::Io(error));
            }
        }
        let id = log.next_id;
        let bytes = enc.seal(id);
        let n = bytes.len() as u64;
        let a = log.active_mut();
        let off = a.len;
        if let Err(error) = a.file.write_all_at(bytes, off) {
            Counters::bump(&self.counters.io_errors);
            let cut = a.file.set_len(off);
            warn!(
                segment = %a.path.display(),
                offset = off,
                %error,
                truncated = cut.is_ok(),
                "spool write failed; the next append starts a new segment"
            );
            log.roll_pending = true;
            return Err(AppendError::Io(error));
        }
        a.len += n;
        let pos = Pos {
            seg: a.first_id,
            off,
        };
        log.bytes += n;
        log.next_id += 1;
        Ok((id, pos))
    }

    /// Seals the active segment and starts a new one named by the next id.
    pub(crate) fn roll(&self, log: &mut Log) -> io::Result<()> {
        let id = log.next_id;
        let path = self.dir.join(segment::segment_file_name(id));
        if log.active().first_id == id {
            // No record in it (a failed first write): replace the file itself.
            let a = log.active();
            segment::remove(&a.path)?;
            let file = segment::create_file(&path)?;
            let a = log.active_mut();
            let stale = a.len;
            a.file = Arc::new(file);
            a.len = 0;
            log.bytes -= stale;
        } else {
            let file = segment::create_file(&path)?;
            let keep_unsynced = self.opts.fsync != Fsync::Never;
            let a = log.active_mut();
            a.end_id = id;
            let old = a.file.clone();
            if keep_unsynced {
                log.unsynced.push(old);
            }
            log.segments.push_back(Segment {
                first_id: id,
                path,
                file: Arc::new(file),
                len: 0,
                end_id: id,
            });
        }
        log.dir_unsynced = true;
        log.roll_pending = false;
        self.deletable_at
            .store(log.deletable_at(), Ordering::Release);
        debug!(dir = %self.dir.display(), first_id = id, "spool segment started");
        Ok(())
    }

    /// Makes ids `lo..end` durable, sharing fsyncs with concurrent callers. Fails
    /// when the fsync round that covered any of them failed.
    pub(crate) fn commit_until(&self, lo: u64, end: u64) -> io::Result<()> {
        let mut st = lock(&self.commit);
        loop {
            if end <= st.covered {
                return match st.failure(lo, end) {
                    Some(e) => Err(e),
                    None => Ok(()),
                };
            }
            if st.leader {
                st = self.committed.wait(st).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            st.leader = true;
            let from = st.covered;
            drop(st);
            let res = self.flush_round();
            st = lock(&self.commit);
            st.leader = false;
            match res {
                Ok(upto) => st.covered = st.covered.max(upto),
                Err((upto, error)) => {
                    st.failures
                        .push_back((from, upto, error.kind(), error.to_string().into()));
                    if st.failures.len() > FAILURES_KEPT {
                        st.failures.pop_front();
                    }
                    st.covered = st.covered.max(upto);
                }
            }
            self.committed.notify_all();
        }
    }

    /// One fsync round over everything written so far; returns the id it covers up
    /// to (exclusive).
    fn flush_round(&self) -> Result<u64, (u64, io::Error)> {
        let (upto, files, dir) = {
            let mut log = lock(&self.log);
            let mut files = std::mem::take(&mut log.unsynced);
            files.push(log.active().file.clone());
            let dir = std::mem::take(&mut log.dir_unsynced);
            (log.next_id, files, dir)
        };
        let mut res = files.iter().try_for_each(|f| f.sync_data());
        if res.is_ok() && dir {
            res = segment::sync_dir(&self.dir);
        }
        match res {
            Ok(()) => Ok(upto),
            Err(error) => {
                Counters::bump(&self.counters.io_errors);
                error!(dir = %self.dir.display(), %error, "spool fsync failed; the next append starts a new segment");
                let mut log = lock(&self.log);
                log.roll_pending = true;
                log.dir_unsynced |= dir;
                Err((upto, error))
            }
        }
    }

    /// Fsyncs what was written since the last round (housekeeper, `Interval`).
    pub(crate) fn flush(&self) -> io::Result<()> {
        let from = lock(&self.commit).covered;
        let end = lock(&self.log).next_id;
        self.commit_until(from, end)
    }

    /// Persists the watermark when it advanced, then deletes every sealed segment
    /// below the persisted watermark and wakes appenders waiting for space.
    pub(crate) fn persist_and_delete(&self) -> io::Result<()> {
        let mut persisted = lock(&self.persisted);
        let w = self.tracker.watermark();
        if w > *persisted {
            if let Err(e) = watermark::store(&self.dir, w) {
                Counters::bump(&self.counters.io_errors);
                return Err(e);
            }
            *persisted = w;
        }
        let w = *persisted;
        let doomed: Vec<_> = {
            let mut log = lock(&self.log);
            let mut doomed = Vec::new();
            while log.segments.len() > 1 && log.segments[0].end_id <= w {
                let s = log.segments.pop_front().expect("checked above");
                log.bytes -= s.len;
                doomed.push(s.path);
            }
            self.deletable_at
                .store(log.deletable_at(), Ordering::Release);
            doomed
        };
        if doomed.is_empty() {
            return Ok(());
        }
        self.space.notify_all();
        self.changed.notify_one();
        for path in &doomed {
            if let Err(error) = segment::remove(path) {
                Counters::bump(&self.counters.io_errors);
                warn!(segment = %path.display(), %error, "acknowledged spool segment not removed");
            }
        }
        debug!(dir = %self.dir.display(), watermark = w, deleted = doomed.len(), "spool segments deleted");
        Ok(())
    }
}
