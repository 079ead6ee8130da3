//! spool: the durable, segmented, checksummed log of sealed batches, one per target.
//!
//! SKELETON: signatures only; the real implementation replaces this file.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;

/// When appended records are forced to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// Every append returns only after its record is on disk (group commit).
    Always,
    /// A background flusher syncs at this interval.
    Interval(Duration),
    /// Left to the operating system.
    Never,
}

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
}

/// Point-in-time figures for metrics.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub bytes: u64,
    pub segments: u64,
    pub unacked_records: u64,
    pub oldest_unacked_age_ms: u64,
    pub appended_records: u64,
    pub acked_records: u64,
    pub replayed_records: u64,
    pub corrupt_records: u64,
    pub full_waits: u64,
    pub io_errors: u64,
}

pub struct Spool {
    _private: (),
}

impl Spool {
    pub fn open(dir: &Path, opts: Options) -> Result<Spool, SpoolError> {
        let _ = (dir, opts);
        Ok(Spool { _private: () })
    }

    pub fn append(&self, batch: &NewBatch<'_>, wait: Duration) -> Result<u64, AppendError> {
        let _ = (batch, wait);
        Err(AppendError::Closed)
    }

    pub async fn next(&self) -> Option<Record> {
        None
    }

    pub fn ack(&self, id: u64) {
        let _ = id;
    }

    pub fn close(&self) {}

    pub fn sync(&self) -> std::io::Result<()> {
        Ok(())
    }

    pub fn stats(&self) -> Stats {
        Stats::default()
    }
}
