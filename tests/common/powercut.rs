//! A power cut for the crash tests: kill -9 alone leaves the page cache, so
//! every write the broker made survives it, synced or not, and a test that
//! kills the broker cannot tell `fsync = "always"` from `"never"`. This module
//! makes the difference: it keeps a journal of what the disk would have made
//! durable, and after the kill throws away the rest.
//!
//! How: `syncshim.c` (beside this file) is compiled at the first use into a
//! shared library, and the broker runs with it in `LD_PRELOAD` ([`env`]). It
//! wraps `fsync`, `fdatasync`, `ftruncate` and `rename` (what Rust's
//! `File::sync_all`, `sync_data`, `set_len` and `std::fs::rename` call through
//! the C library) and, for files under one directory, writes each successful
//! call to a journal: the file's length just before a sync (what the sync
//! covers), the length a truncation left, and renames. After the broker was
//! killed with SIGKILL, [`power_cut`] replays the journal and cuts every
//! regular file under the directory to what was synced: its prefix up to the
//! last synced length (no more than its current length); a file never synced
//! is cut to 0 bytes.
//!
//! The model, and why it fits: the files that hold data are written at their
//! end only. Spool segments are append-only (a failed write is cut back with
//! `set_len`), `stdin.wal` is appended to and emptied with `set_len(0)`, the
//! watermark and the files recovery rewrites are written whole, synced and
//! renamed into place. For such files what a crash may keep is a prefix, and
//! what it must keep is the prefix that was synced; keeping exactly that is the
//! worst case the disk is allowed, which is what a test of fsync wants.
//!
//! Its limits (each errs on the side of keeping data, so a test that sees a
//! loss saw a real one; none of them can hide a missing fsync of file data):
//! - names are treated as durable as soon as they exist: a file created, a
//!   rename or a removal survive without an fsync of the directory (the spool
//!   does fsync its directory, but this does not check it);
//! - a truncation is applied to the synced length at once (not only once
//!   synced), and a file emptied by `open(O_TRUNC)` is not seen (only new,
//!   temporary files are opened so);
//! - the sizes come from `fstat` around the call: a write racing with a sync
//!   of the same file is counted as not synced (this errs towards losing);
//! - writes anywhere but at the end (none in the broker) are not modelled;
//! - `sync_file_range`, `O_SYNC`/`O_DSYNC`, `msync` and `syncfs` are not seen
//!   (the broker uses none; a test that relied on them would see a loss).
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The shim, compiled once per test binary.
fn shim() -> &'static Path {
    static SHIM: OnceLock<PathBuf> = OnceLock::new();
    SHIM.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/common/syncshim.c");
        let out = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("syncshim-{}.so", std::process::id()));
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
        let status = std::process::Command::new(&cc)
            .args(["-shared", "-fPIC", "-O1", "-o"])
            .arg(&out)
            .arg(&src)
            .arg("-ldl")
            .status()
            .unwrap_or_else(|e| panic!("{cc} (to build {}): {e}", src.display()));
        assert!(status.success(), "{cc} failed on {}", src.display());
        out
    })
}

/// The environment that puts the shim under a broker: syncs of files under
/// `dir` (which must be canonical, as /proc/self/fd names files) are written to
/// `journal` (outside `dir`).
pub fn env(dir: &Path, journal: &Path) -> Vec<(String, String)> {
    assert_eq!(
        dir,
        dir.canonicalize().unwrap(),
        "the watched directory must be canonical"
    );
    assert!(!journal.starts_with(dir), "the journal must lie outside");
    vec![
        ("LD_PRELOAD".to_string(), shim().display().to_string()),
        ("QB_SYNC_DIR".to_string(), dir.display().to_string()),
        ("QB_SYNC_JOURNAL".to_string(), journal.display().to_string()),
    ]
}

/// What the journal says is durable: path -> bytes.
pub fn synced(journal: &Path) -> HashMap<PathBuf, u64> {
    let text = std::fs::read_to_string(journal).unwrap_or_default();
    let mut synced: HashMap<PathBuf, u64> = HashMap::new();
    for line in text.lines() {
        let (kind, rest) = line.split_once(' ').expect("journal line");
        match kind {
            "S" | "T" => {
                let (size, path) = rest.split_once(' ').expect("journal line");
                let size: u64 = size.parse().expect("journal size");
                let cur = synced.entry(PathBuf::from(path)).or_insert(0);
                *cur = if kind == "S" {
                    (*cur).max(size)
                } else {
                    (*cur).min(size)
                };
            }
            "R" => {
                let (from, to) = rest.split_once('\t').expect("journal rename");
                match synced.remove(Path::new(from)) {
                    Some(size) => synced.insert(PathBuf::from(to), size),
                    None => synced.remove(Path::new(to)),
                };
            }
            other => panic!("journal line of kind {other:?}: {line}"),
        }
    }
    synced
}

/// What a power cut did to one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut {
    pub path: PathBuf,
    pub before: u64,
    pub after: u64,
}

/// The power cut: call it once the process writing under `dir` is dead
/// (SIGKILL). Every regular file under `dir` keeps only what `journal` says
/// was synced. Returns the files it shortened.
pub fn power_cut(dir: &Path, journal: &Path) -> Vec<Cut> {
    let synced = synced(journal);
    let mut cuts = Vec::new();
    let mut stack = vec![dir.canonicalize().unwrap()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            let path = entry.path();
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() {
                let before = entry.metadata().unwrap().len();
                let after = synced.get(&path).copied().unwrap_or(0).min(before);
                if after < before {
                    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
                    f.set_len(after).unwrap();
                    cuts.push(Cut {
                        path,
                        before,
                        after,
                    });
                }
            }
        }
    }
    cuts.sort_by(|a, b| a.path.cmp(&b.path));
    cuts
}
