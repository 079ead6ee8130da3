//! segment: the files of a spool directory and the small helpers around them.
//!
//! A segment is named by the id of its first record, zero-padded so that names sort
//! like ids: `000000000000000001.seg`. Bytes set aside from a segment go to
//! `<segment>.corrupt` beside it and are never deleted by the spool.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const SUFFIX: &str = ".seg";
const CORRUPT_SUFFIX: &str = ".corrupt";

/// One segment file as the running spool knows it.
#[derive(Debug)]
pub(crate) struct Segment {
    pub(crate) first_id: u64,
    pub(crate) path: PathBuf,
    pub(crate) file: Arc<File>,
    /// Bytes of whole, valid records; the reader never looks past this.
    pub(crate) len: u64,
    /// One past the last id the segment holds, once sealed (the active segment's
    /// end is the log's next id).
    pub(crate) end_id: u64,
}

pub(crate) fn segment_file_name(first_id: u64) -> String {
    format!("{first_id:018}{SUFFIX}")
}

/// The first id of a segment file name, `None` for any other file.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SUFFIX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Creates the spool directory (mode 0700) when missing.
pub(crate) fn create_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// Creates (or empties) a file for writing, mode 0600.
pub(crate) fn create_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

/// Makes created, renamed and removed names durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

pub(crate) fn corrupt_path(segment: &Path) -> PathBuf {
    let mut s = segment.as_os_str().to_owned();
    s.push(CORRUPT_SUFFIX);
    PathBuf::from(s)
}

/// Appends bytes `from..to` of `file` to the side file of `segment`, durably.
pub(crate) fn set_aside(file: &File, segment: &Path, from: u64, to: u64) -> io::Result<PathBuf> {
    let side = corrupt_path(segment);
    let mut out = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(&side)?;
    copy_range(file, from, to, &mut out)?;
    out.sync_all()?;
    Ok(side)
}

/// Appends bytes `from..to` of `file` to `out`, a megabyte at a time.
pub(crate) fn copy_range(file: &File, from: u64, to: u64, out: &mut impl Write) -> io::Result<()> {
    let mut buf = vec![0u8; (to.saturating_sub(from)).min(1 << 20) as usize];
    let mut at = from;
    while at < to {
        let n = (to - at).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], at)?;
        out.write_all(&buf[..n])?;
        at += n as u64;
    }
    Ok(())
}

/// Removes a file, treating "already gone" as done.
pub(crate) fn remove(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort_like_ids() {
        assert_eq!(segment_file_name(1), "000000000000000001.seg");
        assert_eq!(parse_segment_name("000000000000000001.seg"), Some(1));
        assert_eq!(
            parse_segment_name(&segment_file_name(u64::MAX)),
            Some(u64::MAX)
        );
        assert!(segment_file_name(9) < segment_file_name(10));
        for bad in [
            "watermark",
            ".seg",
            "12.seg.corrupt",
            "1a.seg",
            "-1.seg",
            "99999999999999999999999.seg",
        ] {
            assert_eq!(parse_segment_name(bad), None, "{bad}");
        }
    }
}
