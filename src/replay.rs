//! replay: refused batches back from the dead-letter directory into their
//! target's spool (`qbroker replay`), once the cause of the refusal is fixed.
//!
//! Each `<dead_letter.dir>/batches/<target>/<name>.json` (the request body as
//! it was refused) with its `<name>.meta.json` (target, batch id, cluster,
//! events, status, time) is appended to the spool of `<target>` under
//! `spool.dir`, with its own batch id (so a receiver that took a copy after
//! all can drop it), then removed. The spool is opened as the broker opens it,
//! under the same lock: the broker must be stopped (a running one holds the
//! lock, and replay says so). Appends may pass the spool's cap: the operator
//! asked for these batches, and the broker waits for room before taking more.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::config::Config;
use crate::spool::{NewBatch, Spool};

/// What to replay.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Only the batches of this target (as named under `batches/`:
    /// `[[targets]] name`, or `@<cluster>` for a registered one).
    pub target: Option<String>,
    /// Only batches refused at or after this time (Unix milliseconds).
    pub since_unix_ms: Option<i64>,
    /// Only batches refused before this time (Unix milliseconds).
    pub until_unix_ms: Option<i64>,
    /// Say what would be replayed; change nothing.
    pub dry_run: bool,
}

/// One dead-lettered batch, as replay saw it.
#[derive(Debug, Clone)]
pub struct Item {
    pub target: String,
    pub batch_id: String,
    pub cluster: String,
    pub events: u32,
    pub status: u16,
    pub time_unix_ms: i64,
    pub path: PathBuf,
    /// Appended to the spool (false: a dry run, or filtered out).
    pub replayed: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a dead-lettered batch's description: {reason}")]
    Meta { path: PathBuf, reason: String },
    #[error("{0}")]
    Locked(String),
    #[error("cannot open the spool of target {target}: {reason}")]
    Spool { target: String, reason: String },
    #[error("batch {batch_id} of target {target}: the spool refused it: {reason}")]
    Append {
        target: String,
        batch_id: String,
        reason: String,
    },
}

#[derive(Deserialize)]
struct Meta {
    target: String,
    batch_id: String,
    cluster: String,
    events: u32,
    status: u16,
    time_unix_ms: i64,
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> ReplayError + '_ {
    move |source| ReplayError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The dead-lettered batches, oldest first, with `replayed` set on those
/// appended to their spool (none with `dry_run`). Stops at the first error;
/// what was replayed before it is gone from the dead-letter directory.
pub fn replay(cfg: &Config, opts: &Options) -> Result<Vec<Item>, ReplayError> {
    let root = cfg.dead_letter.dir.join("batches");
    let mut items = Vec::new();
    let targets = match std::fs::read_dir(&root) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(items),
        Err(e) => return Err(io_at(&root)(e)),
    };
    for t in targets {
        let t = t.map_err(io_at(&root))?;
        let dir = t.path();
        if !dir.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&dir).map_err(io_at(&dir))? {
            let path = f.map_err(io_at(&dir))?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if !name.ends_with(".meta.json") {
                continue;
            }
            let text = std::fs::read_to_string(&path).map_err(io_at(&path))?;
            let meta: Meta = serde_json::from_str(&text).map_err(|e| ReplayError::Meta {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            let body = dir.join(name.replace(".meta.json", ".json"));
            items.push(Item {
                target: meta.target,
                batch_id: meta.batch_id,
                cluster: meta.cluster,
                events: meta.events,
                status: meta.status,
                time_unix_ms: meta.time_unix_ms,
                path: body,
                replayed: false,
            });
        }
    }
    items.retain(|i| {
        opts.target.as_ref().is_none_or(|t| &i.target == t)
            && opts.since_unix_ms.is_none_or(|s| i.time_unix_ms >= s)
            && opts.until_unix_ms.is_none_or(|u| i.time_unix_ms < u)
    });
    items.sort_by(|a, b| (a.time_unix_ms, &a.batch_id).cmp(&(b.time_unix_ms, &b.batch_id)));
    if opts.dry_run || items.is_empty() {
        return Ok(items);
    }

    crate::deadletter::create_private_dir(&cfg.spool.dir).map_err(io_at(&cfg.spool.dir))?;
    let _lock = crate::spool::lock_dir(&cfg.spool.dir).map_err(|e| match e {
        crate::spool::LockError::Locked { path } => ReplayError::Locked(format!(
            "{} is locked: a qbroker is running on this spool directory; stop it (systemctl stop qbroker), replay, then start it",
            path.display()
        )),
        other => ReplayError::Locked(other.to_string()),
    })?;
    let mut spools: std::collections::BTreeMap<String, Spool> = Default::default();
    for item in &mut items {
        if !spools.contains_key(&item.target) {
            let opts = crate::spool::Options {
                max_bytes: cfg.spool.max_bytes,
                segment_bytes: cfg.spool.segment_bytes,
                fsync: cfg.spool.fsync,
            };
            let spool = Spool::open(&cfg.spool.dir.join(&item.target), opts).map_err(|e| {
                ReplayError::Spool {
                    target: item.target.clone(),
                    reason: e.to_string(),
                }
            })?;
            spool.lift_cap();
            spools.insert(item.target.clone(), spool);
        }
        let spool = &spools[&item.target];
        let body = std::fs::read(&item.path).map_err(io_at(&item.path))?;
        let batch = NewBatch {
            batch_id: &item.batch_id,
            cluster: &item.cluster,
            events: item.events,
            received: &[],
            body: &body,
        };
        spool
            .append(&batch, Duration::from_secs(10))
            .map_err(|e| ReplayError::Append {
                target: item.target.clone(),
                batch_id: item.batch_id.clone(),
                reason: e.to_string(),
            })?;
        spool.sync_appended().map_err(io_at(spool.dir()))?;
        let meta = item.path.with_extension("meta.json");
        std::fs::remove_file(&item.path).map_err(io_at(&item.path))?;
        std::fs::remove_file(&meta).map_err(io_at(&meta))?;
        item.replayed = true;
    }
    for spool in spools.values() {
        spool.close();
    }
    Ok(items)
}

/// A time given on the command line: RFC 3339 (`2026-12-01T10:00:00Z`) or
/// Unix seconds; Unix milliseconds.
pub fn parse_time(s: &str) -> Option<i64> {
    if let Ok(secs) = s.parse::<i64>() {
        return secs.checked_mul(1000);
    }
    crate::parse::parse_rfc3339(s.as_bytes()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_in_both_forms() {
        assert_eq!(parse_time("1700000000"), Some(1_700_000_000_000));
        assert_eq!(parse_time("2026-01-27T14:12:23Z"), Some(1_769_523_143_000));
        assert_eq!(parse_time("yesterday"), None);
    }
}
