//! deadletter: where bad input is set aside for a person to look at.
//!
//! Frames that could not be parsed go, one JSON line each, to
//! `<dir>/frames.jsonl` (rotated to `frames.jsonl.1` at `max_file_bytes`, so the
//! files never hold more than twice that). Batches that a target refused for good
//! (a 4xx other than 408 and 429) are written whole to
//! `<dir>/batches/<target>/<batch_id>.json`, beside a `.meta.json` with the status
//! and the target's answer. Both directories are private to the broker's user.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::Serialize;

use crate::config::DeadLetterConfig;

/// The dead-letter files of one broker.
pub struct DeadLetters {
    dir: PathBuf,
    max_file_bytes: u64,
    max_batch_bytes: u64,
    /// Bytes of the files under `batches/` (counted at open, then kept).
    batch_bytes: AtomicU64,
    frames: Mutex<FrameFile>,
}

/// Bytes of the regular files under `dir`, recursively (0 when missing).
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

struct FrameFile {
    out: Option<BufWriter<File>>,
    written: u64,
}

#[derive(Serialize)]
struct FrameLine<'a> {
    time_unix_ms: i64,
    cluster: &'a str,
    node: &'a str,
    seq: u64,
    error: String,
    frame: std::borrow::Cow<'a, str>,
}

#[derive(Serialize)]
struct BatchMeta<'a> {
    target: &'a str,
    batch_id: &'a str,
    cluster: &'a str,
    events: u32,
    status: u16,
    response: &'a str,
    time_unix_ms: i64,
}

/// Create `dir` (and any missing parents, such as `batches/` above
/// `batches/<target>`) readable by the owner only.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        builder.mode(0o700);
        builder.create(dir)?;
        // An existing directory keeps its mode through create(): set it.
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    #[cfg(not(unix))]
    builder.create(dir)?;
    Ok(())
}

fn open_private(path: &Path) -> io::Result<File> {
    let mut opts = OpenOptions::new();
    opts.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)
}

impl DeadLetters {
    pub fn open(cfg: &DeadLetterConfig) -> io::Result<DeadLetters> {
        create_private_dir(&cfg.dir)?;
        let written = fs::metadata(cfg.dir.join("frames.jsonl")).map_or(0, |m| m.len());
        Ok(DeadLetters {
            dir: cfg.dir.clone(),
            max_file_bytes: cfg.max_file_bytes,
            max_batch_bytes: cfg.max_batch_bytes,
            batch_bytes: AtomicU64::new(dir_bytes(&cfg.dir.join("batches"))),
            frames: Mutex::new(FrameFile { out: None, written }),
        })
    }

    /// Where refused batches are kept: `<dir>/batches/<target>/`.
    pub fn batches_dir(&self) -> PathBuf {
        self.dir.join("batches")
    }

    /// Bytes of refused batches kept now.
    pub fn batch_bytes(&self) -> u64 {
        self.batch_bytes.load(Ordering::Relaxed)
    }

    pub fn frames_path(&self) -> PathBuf {
        self.dir.join("frames.jsonl")
    }

    /// Keep a frame that could not be parsed. Buffered: call [`flush`](Self::flush)
    /// after a chunk.
    pub fn frame(
        &self,
        cluster: &str,
        node: &str,
        seq: u64,
        error: &dyn std::fmt::Display,
        frame: &[u8],
    ) -> io::Result<()> {
        let line = FrameLine {
            time_unix_ms: crate::metrics::unix_ms(),
            cluster,
            node,
            seq,
            error: error.to_string(),
            frame: String::from_utf8_lossy(frame),
        };
        let mut text = serde_json::to_vec(&line).map_err(io::Error::other)?;
        text.push(b'\n');
        let mut f = self.frames.lock().unwrap_or_else(|e| e.into_inner());
        if f.written + text.len() as u64 > self.max_file_bytes && f.written > 0 {
            if let Some(mut out) = f.out.take() {
                out.flush()?;
            }
            fs::rename(self.frames_path(), self.dir.join("frames.jsonl.1"))?;
            f.written = 0;
        }
        if f.out.is_none() {
            f.out = Some(BufWriter::new(open_private(&self.frames_path())?));
        }
        f.out.as_mut().expect("opened above").write_all(&text)?;
        f.written += text.len() as u64;
        Ok(())
    }

    pub fn flush(&self) -> io::Result<()> {
        let mut f = self.frames.lock().unwrap_or_else(|e| e.into_inner());
        match f.out.as_mut() {
            Some(out) => out.flush(),
            None => Ok(()),
        }
    }

    /// Keep a batch the target refused for good. Blocking file I/O: call it from a
    /// blocking context.
    #[allow(clippy::too_many_arguments)]
    pub fn batch(
        &self,
        target: &str,
        batch_id: &str,
        cluster: &str,
        events: u32,
        status: u16,
        response: &str,
        body: &[u8],
    ) -> io::Result<PathBuf> {
        let held = self.batch_bytes.load(Ordering::Relaxed);
        if held + body.len() as u64 > self.max_batch_bytes {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!(
                    "the dead-letter directory holds {held} bytes of refused batches, at its cap (dead_letter.max_batch_bytes = {}): replay them (qbroker replay) or remove them",
                    self.max_batch_bytes
                ),
            ));
        }
        let dir = self.dir.join("batches").join(target);
        create_private_dir(&dir)?;
        // The batch id is ours (a UUID), but a record read back from disk is
        // untrusted: keep the name to safe characters.
        let name: String = batch_id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let path = dir.join(format!("{name}.json"));
        let mut f = open_private(&path)?;
        f.set_len(0)?;
        f.write_all(body)?;
        f.sync_all()?;
        let meta = BatchMeta {
            target,
            batch_id,
            cluster,
            events,
            status,
            response,
            time_unix_ms: crate::metrics::unix_ms(),
        };
        let meta = serde_json::to_vec_pretty(&meta).map_err(io::Error::other)?;
        let mut m = open_private(&dir.join(format!("{name}.meta.json")))?;
        m.set_len(0)?;
        m.write_all(&meta)?;
        m.sync_all()?;
        self.batch_bytes
            .fetch_add((body.len() + meta.len()) as u64, Ordering::Relaxed);
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_rotate_and_batches_are_kept_whole() {
        let dir = tempfile::tempdir().unwrap();
        let dl = DeadLetters::open(&DeadLetterConfig {
            dir: dir.path().join("dl"),
            max_file_bytes: 4096,
            max_batch_bytes: 1 << 20,
        })
        .unwrap();
        for seq in 0..100 {
            dl.frame("c", "c-1", seq, &"header", b"<14>1 bad \xff frame")
                .unwrap();
        }
        dl.flush().unwrap();
        let cur = fs::read_to_string(dl.frames_path()).unwrap();
        let old = fs::read_to_string(dir.path().join("dl/frames.jsonl.1")).unwrap();
        assert!(cur.len() <= 4096 && old.len() <= 4096);
        let last: serde_json::Value = serde_json::from_str(cur.lines().last().unwrap()).unwrap();
        assert_eq!(last["seq"], 99);
        assert_eq!(last["error"], "header");
        assert_eq!(last["frame"], "<14>1 bad \u{fffd} frame");

        let path = dl
            .batch(
                "v",
                "0190-ab/../x",
                "c",
                2,
                400,
                "bad schema",
                b"{\"events\":[]}",
            )
            .unwrap();
        assert!(path.ends_with("batches/v/0190-ab____x.json"), "{path:?}");
        assert_eq!(fs::read(&path).unwrap(), b"{\"events\":[]}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join("dl"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o700);
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            let mode = fs::metadata(dir.path().join("dl/batches"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o700, "parents too");
        }
    }
}
