//! reader: handing records out to egress, in id order, once each.
//!
//! The read cursor is a log position. A record at the cursor comes from the cache
//! of recent appends when it is there (normal operation, no disk read), otherwise
//! from its segment file, read in a blocking task so that a large record does not
//! hold up the async runtime. Callers of `next` take turns (an async mutex), so the
//! cursor only moves forward and each record is handed out once; the cursor moves
//! only when the record is returned, which makes `next` cancel-safe.
//!
//! The cache is bounded in bytes: an append that would pass the budget is simply
//! not cached, and its record is read back from the file when its turn comes.

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tracing::error;

use super::record::{self, Decoded, ReadError, HEADER_LEN, MAGIC};
use super::{lock, recover, segment, Counters, Pos, Record, Shared};

pub(crate) struct ReadState {
    /// Where the next record to hand out starts.
    pub(crate) pos: Pos,
    /// The id the next record should have; a larger one means ids were lost to
    /// corruption, and they are acknowledged so the watermark can pass them.
    pub(crate) expected: u64,
}

#[derive(Default)]
pub(crate) struct Cache {
    /// In log order.
    pub(crate) entries: VecDeque<CacheEntry>,
    pub(crate) bytes: usize,
}

pub(crate) struct CacheEntry {
    pub(crate) pos: Pos,
    pub(crate) len: u64,
    pub(crate) sealed_ms: u64,
    /// The whole record as written (header included).
    pub(crate) data: Bytes,
}

enum Step {
    Ready(Record),
    Disk {
        file: Arc<File>,
        path: PathBuf,
        pos: Pos,
        limit: u64,
    },
    Empty {
        closed: bool,
    },
}

/// Runs `f` on tokio's blocking pool when there is a runtime; `None` when the
/// runtime is shutting down.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    match tokio::runtime::Handle::try_current() {
        Ok(h) => match h.spawn_blocking(f).await {
            Ok(v) => Some(v),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => None,
        },
        Err(_) => Some(f()),
    }
}

/// Skips bad bytes met while reading: resumes at the next verifying record of
/// the segment (or its end) and sets the bytes aside.
fn skip_corrupt(file: &File, path: &Path, off: u64, limit: u64, why: &'static str) -> u64 {
    let resume = match recover::find_next_good(file, off + 1, limit) {
        Ok(r) => r.unwrap_or(limit),
        Err(error) => {
            error!(segment = %path.display(), offset = off, %error, "spool read failed while resynchronising");
            limit
        }
    };
    match segment::set_aside(file, path, off, resume) {
        Ok(side) => error!(
            segment = %path.display(),
            offset = off,
            bytes = resume - off,
            reason = why,
            side_file = %side.display(),
            "corrupt spool record found while reading; set aside and skipped"
        ),
        Err(error) => error!(
            segment = %path.display(),
            offset = off,
            bytes = resume - off,
            reason = why,
            %error,
            "corrupt spool record found while reading; skipped, could not set it aside"
        ),
    }
    resume
}

impl Shared {
    pub(crate) async fn next(&self) -> Option<Record> {
        let _turn = self.read_turn.lock().await;
        let mut backoff = Duration::from_millis(50);
        loop {
            let notified = self.readable.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (file, path, pos, limit) = match self.step() {
                Step::Ready(r) => return Some(r),
                Step::Empty { closed: true } => return None,
                Step::Empty { closed: false } => {
                    notified.await;
                    continue;
                }
                Step::Disk {
                    file,
                    path,
                    pos,
                    limit,
                } => (file, path, pos, limit),
            };
            let f = file.clone();
            match blocking(move || record::read_at(&f, pos.off, limit)).await {
                Some(Ok((len, d))) => {
                    let mut rd = lock(&self.reader);
                    debug_assert_eq!(rd.pos, pos);
                    let after = Pos {
                        seg: pos.seg,
                        off: pos.off + len,
                    };
                    return Some(self.hand_out(&mut rd, d, after));
                }
                Some(Err(ReadError::Corrupt(why))) => {
                    let resume =
                        blocking(move || skip_corrupt(&file, &path, pos.off, limit, why)).await?;
                    Counters::bump(&self.counters.corrupt);
                    lock(&self.reader).pos = Pos {
                        seg: pos.seg,
                        off: resume,
                    };
                }
                Some(Err(ReadError::Io(error))) => {
                    Counters::bump(&self.counters.io_errors);
                    error!(segment = %path.display(), offset = pos.off, %error, "spool read failed; retrying");
                    if lock(&self.log).closed {
                        // The record stays unacknowledged on disk: sent after restart.
                        return None;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                None => return None,
            }
        }
    }

    /// Takes the record at the cursor when it is cached, or says where to read it.
    fn step(&self) -> Step {
        let mut rd = lock(&self.reader);
        let log = lock(&self.log);
        let (file, path, limit) = loop {
            match log.find(rd.pos.seg) {
                Some((_, s)) if rd.pos.off < s.len => break (&s.file, &s.path, s.len),
                Some((i, _)) if i + 1 == log.segments.len() => {
                    return Step::Empty { closed: log.closed }
                }
                _ => match log.after(rd.pos.seg) {
                    Some(n) => {
                        rd.pos = Pos {
                            seg: n.first_id,
                            off: 0,
                        }
                    }
                    None => return Step::Empty { closed: log.closed },
                },
            }
        };
        let mut cache = lock(&self.cache);
        while let Some(f) = cache.entries.front() {
            if f.pos >= rd.pos {
                break;
            }
            cache.bytes -= f.len as usize;
            cache.entries.pop_front();
        }
        if cache.entries.front().is_some_and(|f| f.pos == rd.pos) {
            let e = cache.entries.pop_front().expect("checked above");
            cache.bytes -= e.len as usize;
            drop(cache);
            drop(log);
            let d = record::decode(e.data.slice(HEADER_LEN as usize..))
                .expect("records in the cache were encoded by this process");
            let after = Pos {
                seg: e.pos.seg,
                off: e.pos.off + e.len,
            };
            return Step::Ready(self.hand_out(&mut rd, d, after));
        }
        Step::Disk {
            file: file.clone(),
            path: path.clone(),
            pos: rd.pos,
            limit,
        }
    }

    fn hand_out(&self, rd: &mut ReadState, d: Decoded, after: Pos) -> Record {
        let at = rd.pos;
        rd.pos = after;
        if d.id > rd.expected {
            if let Some(w) = self.tracker.ack_range(rd.expected, d.id) {
                self.advanced(w);
            }
        }
        rd.expected = rd.expected.max(d.id + 1);
        lock(&self.handed).push_back((d.id, d.sealed_ms, at));
        self.handed_end.fetch_max(d.id + 1, Ordering::AcqRel);
        let replayed = d.id < self.first_new_id;
        if replayed {
            Counters::bump(&self.counters.replayed);
        }
        Record {
            id: d.id,
            batch_id: d.batch_id,
            cluster: d.cluster,
            events: d.events,
            received: d.received,
            body: d.body,
            replayed,
        }
    }

    /// Bytes of the log from the oldest unacknowledged record to its end,
    /// given watermark `w`.
    pub(crate) fn unacked_bytes(&self, w: u64) -> u64 {
        let front = {
            let mut h = lock(&self.handed);
            while h.front().is_some_and(|f| f.0 < w) {
                h.pop_front();
            }
            h.front().map(|f| f.2)
        };
        // Every record handed out is acknowledged: the oldest is the next to read.
        let from = front.unwrap_or_else(|| lock(&self.reader).pos);
        let log = lock(&self.log);
        // Segments before `from` hold only acknowledged records (deleted ones
        // are no longer in the log, nor in `log.bytes`).
        let before: u64 = log
            .segments
            .iter()
            .take_while(|s| s.first_id < from.seg)
            .map(|s| s.len)
            .sum();
        let within = log.find(from.seg).map_or(0, |(_, s)| from.off.min(s.len));
        log.bytes.saturating_sub(before + within)
    }

    /// Sealed time of the oldest unacknowledged record, given watermark `w`.
    pub(crate) fn oldest_unacked_sealed_ms(&self, w: u64) -> Option<u64> {
        {
            let mut h = lock(&self.handed);
            while h.front().is_some_and(|f| f.0 < w) {
                h.pop_front();
            }
            if let Some(f) = h.front() {
                return Some(f.1);
            }
        }
        // Every record handed out is acknowledged: the oldest is the next to read.
        let pos = lock(&self.reader).pos;
        let (file, pos) = {
            let log = lock(&self.log);
            match log.find(pos.seg) {
                Some((_, s)) if pos.off < s.len => (s.file.clone(), pos),
                _ => {
                    let n = log.after(pos.seg).filter(|n| n.len > 0)?;
                    (
                        n.file.clone(),
                        Pos {
                            seg: n.first_id,
                            off: 0,
                        },
                    )
                }
            }
        };
        if let Some(f) = lock(&self.cache).entries.front() {
            if f.pos == pos {
                return Some(f.sealed_ms);
            }
        }
        let mut h = [0u8; HEADER_LEN as usize + 16];
        file.read_exact_at(&mut h, pos.off).ok()?;
        if h[..4] != MAGIC {
            return None;
        }
        Some(u64::from_le_bytes(h[20..28].try_into().ok()?))
    }
}
