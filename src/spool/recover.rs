//! recover: what `Spool::open` does to a directory before the spool runs.
//!
//! Every segment is scanned in id order and every record verified. A torn tail of
//! the last segment (a crash mid-write) is truncated. Any other bad bytes (checksum
//! mismatch, bad magic, absurd length, an id that does not increase) are copied to
//! `<segment>.corrupt`, reported once with their offset, and cut out of the segment:
//! truncated when they end it, otherwise the segment is rewritten without them
//! (temporary file, fsync, rename). After recovery every segment holds only whole,
//! verified records, so the running spool never meets a hole.
//!
//! Resynchronising after bad bytes: when the bad record's length is plausible and
//! the magic of the next record follows it, exactly that record is skipped;
//! otherwise the scan moves forward byte by byte to the next magic whose record
//! verifies.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::{info, warn};

use super::record::{self, Header, HEADER_LEN, MAGIC};
use super::segment::{self, Segment};
use super::watermark::{self, Loaded};
use super::{Pos, SpoolError};

/// What lies at an offset of a segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Probe {
    /// A verified record of `len` bytes in all.
    Good { len: u64, id: u64 },
    /// A plausible header whose record runs past the end, or a partial header.
    Torn,
    /// Not a valid record; `len` is the claimed length when the header looked sane.
    Bad { len: Option<u64> },
}

pub(crate) fn probe(file: &File, off: u64, end: u64) -> io::Result<Probe> {
    if end.saturating_sub(off) < HEADER_LEN {
        return Ok(Probe::Torn);
    }
    let mut h = [0u8; HEADER_LEN as usize];
    file.read_exact_at(&mut h, off)?;
    let Header::Ok { len, crc } = record::parse_header(&h) else {
        return Ok(Probe::Bad { len: None });
    };
    let total = HEADER_LEN + u64::from(len);
    if end - off < total {
        return Ok(Probe::Torn);
    }
    let mut payload = vec![0u8; len as usize];
    file.read_exact_at(&mut payload, off + HEADER_LEN)?;
    if crc32c::crc32c(&payload) != crc {
        return Ok(Probe::Bad { len: Some(total) });
    }
    match record::parse(&payload) {
        Some(p) => Ok(Probe::Good {
            len: total,
            id: p.id,
        }),
        None => Ok(Probe::Bad { len: Some(total) }),
    }
}

fn magic_at(file: &File, at: u64, end: u64) -> io::Result<bool> {
    if end.saturating_sub(at) < MAGIC.len() as u64 {
        return Ok(false);
    }
    let mut m = [0u8; 4];
    file.read_exact_at(&mut m, at)?;
    Ok(m == MAGIC)
}

/// The offset of the first verified record at or after `from`, before `end`.
pub(crate) fn find_next_good(file: &File, from: u64, end: u64) -> io::Result<Option<u64>> {
    const WINDOW: u64 = 1 << 20;
    let overlap = MAGIC.len() as u64 - 1;
    let finder = memchr::memmem::Finder::new(&MAGIC);
    let mut buf = vec![0u8; (WINDOW + overlap).min(end.saturating_sub(from)) as usize];
    let mut at = from;
    while at < end {
        let n = (WINDOW + overlap).min(end - at) as usize;
        file.read_exact_at(&mut buf[..n], at)?;
        let last = at + n as u64 >= end;
        for i in finder.find_iter(&buf[..n]) {
            // A match starting in the overlap is seen again by the next window.
            if !last && i as u64 >= WINDOW {
                break;
            }
            let c = at + i as u64;
            if let Probe::Good { .. } = probe(file, c, end)? {
                return Ok(Some(c));
            }
        }
        if last {
            break;
        }
        at += WINDOW;
    }
    Ok(None)
}

/// Expected ids with no record: acknowledged up front so the watermark can pass them.
struct Gaps {
    expect: u64,
    out: Vec<(u64, u64)>,
}

impl Gaps {
    /// A segment named `first_id` exists: its first record is that id, so any
    /// id from the one expected up to it must have been on disk (a segment
    /// deleted or emptied by hand, or records lost from the end of the one
    /// before it).
    fn segment_named(&mut self, first_id: u64) {
        if first_id > self.expect {
            self.out.push((self.expect, first_id));
            self.expect = first_id;
        }
    }

    fn see(&mut self, id: u64) {
        if id > self.expect {
            self.out.push((self.expect, id));
        }
        self.expect = id + 1;
    }
}

struct Scanned {
    first_id: u64,
    path: PathBuf,
    file: File,
    len: u64,
    /// Last valid id in this segment.
    last_id: Option<u64>,
    /// Offset (after repair) of the first record at or above the watermark.
    start_off: Option<u64>,
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_owned(),
        source,
    }
}

struct Scan {
    watermark: u64,
    last_id: Option<u64>,
    gaps: Gaps,
    corrupt: u64,
    replay: u64,
}

impl Scan {
    fn segment(&mut self, path: &Path, first_id: u64, is_last: bool) -> io::Result<Scanned> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let file_len = file.metadata()?.len();
        let mut good: Vec<(u64, u64)> = Vec::new();
        let mut bad: Vec<(u64, u64)> = Vec::new();
        let mut torn_at = None;
        let mut removed = 0u64;
        let mut start_off = None;
        let mut seg_last = None;
        let mut off = 0u64;
        while off < file_len {
            let p = match probe(&file, off, file_len)? {
                Probe::Good { len, id } if self.last_id.is_none_or(|l| id > l) => {
                    match good.last_mut() {
                        Some(g) if g.1 == off => g.1 += len,
                        _ => good.push((off, off + len)),
                    }
                    if id >= self.watermark {
                        if start_off.is_none() {
                            start_off = Some(off - removed);
                        }
                        self.gaps.see(id);
                        self.replay += 1;
                    }
                    self.last_id = Some(id);
                    seg_last = Some(id);
                    off += len;
                    continue;
                }
                // A verified record whose id does not increase is not part of this log.
                Probe::Good { len, .. } => Probe::Bad { len: Some(len) },
                other => other,
            };
            let claimed = match p {
                Probe::Bad { len } => len,
                _ => None,
            };
            let resume = match claimed {
                Some(l) if off + l == file_len || magic_at(&file, off + l, file_len)? => {
                    Some(off + l)
                }
                _ => find_next_good(&file, off + 1, file_len)?,
            };
            match resume {
                Some(r) if r < file_len => {
                    bad.push((off, r));
                    removed += r - off;
                    off = r;
                }
                _ => {
                    if is_last && p == Probe::Torn {
                        torn_at = Some(off);
                    } else {
                        bad.push((off, file_len));
                    }
                    break;
                }
            }
        }
        for &(from, to) in &bad {
            let side = segment::set_aside(&file, path, from, to)?;
            self.corrupt += 1;
            warn!(
                segment = %path.display(),
                offset = from,
                bytes = to - from,
                side_file = %side.display(),
                "corrupt spool bytes set aside; the records after them are still delivered"
            );
        }
        if let Some(at) = torn_at {
            warn!(
                segment = %path.display(),
                offset = at,
                bytes = file_len - at,
                "torn record at the end of the spool truncated (interrupted write)"
            );
        }
        let len: u64 = good.iter().map(|g| g.1 - g.0).sum();
        let file = if bad.iter().any(|b| b.1 < file_len) {
            rewrite(&file, path, &good)?
        } else if len < file_len {
            // Only the tail is bad: cut it off.
            file.set_len(len)?;
            file.sync_all()?;
            file
        } else {
            file
        };
        Ok(Scanned {
            first_id,
            path: path.to_owned(),
            file,
            len,
            last_id: seg_last,
            start_off,
        })
    }
}

/// `lo..hi` id ranges as `3-7,12` (inclusive ends), the first 20 of them.
pub(crate) fn format_ranges(ranges: &[(u64, u64)]) -> String {
    let mut out: Vec<String> = ranges
        .iter()
        .take(20)
        .map(|&(lo, hi)| {
            if hi - lo == 1 {
                lo.to_string()
            } else {
                format!("{lo}-{}", hi - 1)
            }
        })
        .collect();
    if ranges.len() > 20 {
        out.push(format!("and {} more ranges", ranges.len() - 20));
    }
    out.join(",")
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

/// Replaces a segment by one holding only its `good` ranges.
fn rewrite(file: &File, path: &Path, good: &[(u64, u64)]) -> io::Result<File> {
    let tmp = tmp_path(path);
    let mut out = segment::create_file(&tmp)?;
    for &(from, to) in good {
        segment::copy_range(file, from, to, &mut out)?;
    }
    out.sync_all()?;
    drop(out);
    fs::rename(&tmp, path)?;
    OpenOptions::new().read(true).write(true).open(path)
}

/// The state a spool starts from.
pub(crate) struct Recovered {
    /// Kept segments in id order, the new (empty) active segment last.
    pub(crate) segments: Vec<Segment>,
    pub(crate) next_id: u64,
    /// The watermark as persisted (0 when missing or unreadable).
    pub(crate) watermark: u64,
    /// Id ranges at or above the watermark with no record (id 0 of a fresh
    /// spool among them): acknowledged so the watermark can pass them.
    pub(crate) gaps: Vec<(u64, u64)>,
    /// `gaps` without id 0 (never a batch): what was lost, for the report.
    pub(crate) missing: Vec<(u64, u64)>,
    /// Where the first record to replay is (the active segment's start when none).
    pub(crate) start: Pos,
    pub(crate) corrupt: u64,
}

pub(crate) fn recover(dir: &Path) -> Result<Recovered, SpoolError> {
    segment::create_dir(dir).map_err(io_at(dir))?;
    let watermark = match watermark::load(dir).map_err(io_at(dir))? {
        Loaded::Valid(w) => w,
        Loaded::Missing => 0,
        Loaded::Corrupt => {
            let from = dir.join(watermark::FILE);
            let to = dir.join(format!("{}.corrupt", watermark::FILE));
            fs::rename(&from, &to).map_err(io_at(&from))?;
            warn!(
                file = %from.display(),
                moved_to = %to.display(),
                "spool watermark unreadable; every record on disk is sent again"
            );
            0
        }
    };

    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_at(dir))? {
        let entry = entry.map_err(io_at(dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let path = entry.path();
        if name == watermark::TMP || name.ends_with(".seg.tmp") {
            // Leftover of an interrupted atomic replace; the original is intact.
            segment::remove(&path).map_err(io_at(&path))?;
            continue;
        }
        let Some(id) = segment::parse_segment_name(name) else {
            continue;
        };
        if !entry.file_type().map_err(io_at(&path))?.is_file() {
            warn!(path = %path.display(), "not a regular file; ignored");
            continue;
        }
        names.push((id, path));
    }
    names.sort();

    let mut scan = Scan {
        watermark,
        last_id: None,
        gaps: Gaps {
            expect: watermark,
            out: Vec::new(),
        },
        corrupt: 0,
        replay: 0,
    };
    let n = names.len();
    let mut scanned = Vec::with_capacity(n);
    for (i, (id, path)) in names.into_iter().enumerate() {
        scan.gaps.segment_named(id);
        scanned.push(scan.segment(&path, id, i + 1 == n).map_err(io_at(&path))?);
    }

    let mut segments = Vec::new();
    let mut start = None;
    let mut max_name = 0;
    for s in scanned {
        match s.last_id {
            // Empty, or every record acknowledged (any bad bytes are set aside).
            None => segment::remove(&s.path).map_err(io_at(&s.path))?,
            Some(last) if last < watermark => segment::remove(&s.path).map_err(io_at(&s.path))?,
            Some(last) => {
                if start.is_none() {
                    start = s.start_off.map(|off| Pos {
                        seg: s.first_id,
                        off,
                    });
                }
                max_name = max_name.max(s.first_id);
                segments.push(Segment {
                    first_id: s.first_id,
                    path: s.path,
                    file: Arc::new(s.file),
                    len: s.len,
                    end_id: last + 1,
                });
            }
        }
    }
    let next_id = 1
        .max(watermark)
        .max(scan.last_id.map_or(0, |l| l + 1))
        .max(if segments.is_empty() { 0 } else { max_name + 1 });
    let mut gaps = scan.gaps;
    if next_id > gaps.expect {
        gaps.out.push((gaps.expect, next_id));
    }
    // Ids start at 1: id 0 (a fresh spool's watermark) was never a batch.
    let missing_ranges: Vec<(u64, u64)> = gaps
        .out
        .iter()
        .map(|&(lo, hi)| (lo.max(1), hi))
        .filter(|&(lo, hi)| hi > lo)
        .collect();
    if !missing_ranges.is_empty() {
        let missing: u64 = missing_ranges.iter().map(|g| g.1 - g.0).sum();
        warn!(
            dir = %dir.display(),
            missing,
            ids = %format_ranges(&missing_ranges),
            corrupt = scan.corrupt,
            "batches missing from the spool: their ids are not on disk (a segment deleted or truncated, records lost in a crash, or set aside as corrupt); they cannot be sent"
        );
    }

    let path = dir.join(segment::segment_file_name(next_id));
    let file = segment::create_file(&path).map_err(io_at(&path))?;
    segments.push(Segment {
        first_id: next_id,
        path,
        file: Arc::new(file),
        len: 0,
        end_id: next_id,
    });
    segment::sync_dir(dir).map_err(io_at(dir))?;

    info!(
        dir = %dir.display(),
        watermark,
        next_id,
        replay = scan.replay,
        corrupt = scan.corrupt,
        segments = segments.len(),
        "spool opened"
    );
    Ok(Recovered {
        segments,
        next_id,
        watermark,
        gaps: gaps.out,
        missing: missing_ranges,
        start: start.unwrap_or(Pos {
            seg: next_id,
            off: 0,
        }),
        corrupt: scan.corrupt,
    })
}
