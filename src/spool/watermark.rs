//! watermark: the persisted acknowledgement watermark of a spool.
//!
//! Every record id below the watermark was acknowledged by the target and is never
//! sent again. The file is 16 bytes (`"QSW1"`, the watermark as u64 LE, crc32c of
//! the first 12 bytes), replaced atomically: write a temporary file, fsync it,
//! rename it over the old one, fsync the directory.

use std::fs;
use std::io::{self, Read, Write};
use std::path::Path;

use super::segment;

const MAGIC: [u8; 4] = *b"QSW1";
pub(crate) const FILE: &str = "watermark";
pub(crate) const TMP: &str = "watermark.tmp";

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Loaded {
    Missing,
    Valid(u64),
    /// Present but unreadable as a watermark.
    Corrupt,
}

pub(crate) fn encode(w: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&MAGIC);
    b[4..12].copy_from_slice(&w.to_le_bytes());
    let crc = crc32c::crc32c(&b[..12]);
    b[12..].copy_from_slice(&crc.to_le_bytes());
    b
}

pub(crate) fn decode(b: &[u8]) -> Option<u64> {
    if b.len() != 16 || b[..4] != MAGIC {
        return None;
    }
    let crc = u32::from_le_bytes(b[12..].try_into().ok()?);
    if crc != crc32c::crc32c(&b[..12]) {
        return None;
    }
    Some(u64::from_le_bytes(b[4..12].try_into().ok()?))
}

pub(crate) fn load(dir: &Path) -> io::Result<Loaded> {
    let f = match fs::File::open(dir.join(FILE)) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Loaded::Missing),
        Err(e) => return Err(e),
    };
    // A few bytes past the size are enough to tell a wrong size, whatever the file.
    let mut b = Vec::with_capacity(32);
    f.take(32).read_to_end(&mut b)?;
    Ok(decode(&b).map_or(Loaded::Corrupt, Loaded::Valid))
}

pub(crate) fn store(dir: &Path, w: u64) -> io::Result<()> {
    let tmp = dir.join(TMP);
    let mut f = segment::create_file(&tmp)?;
    f.write_all(&encode(w))?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, dir.join(FILE))?;
    segment::sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_then_load() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), Loaded::Missing);
        store(dir.path(), 17).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Loaded::Valid(17));
        store(dir.path(), 18).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Loaded::Valid(18));
        assert!(!dir.path().join(TMP).exists());
    }

    #[test]
    fn damaged_files_read_as_corrupt() {
        let good = encode(5);
        for i in 0..good.len() * 8 {
            let mut b = good;
            b[i / 8] ^= 1 << (i % 8);
            assert_eq!(decode(&b), None, "bit {i}");
        }
        assert_eq!(decode(&good[..15]), None);
        assert_eq!(decode(&[]), None);
    }
}
