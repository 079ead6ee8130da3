//! pool: the parse pool, `workers` OS threads fed by the bounded work queue.
//!
//! Its input is a [`Chunk`]: what a source (a supervisor's reader, or stdin)
//! hands to the pool, frames of one connection as ranges of one shared buffer
//! (no copy since the socket read), numbered so that the cluster's batcher can
//! restore arrival order after the workers converted chunks in parallel. The
//! pool owns its workers and [`crate::metrics::PoolMetrics`]; it may touch the
//! parser, the dead-letter file and the batchers (which it feeds).
//!
//! Stage: each worker takes a [`Chunk`], converts every frame with
//! [`parse::convert`] straight into one output buffer (no per-event allocation),
//! tallies the outcomes, keeps bad frames in the dead-letter file, and hands the
//! result to the cluster's batcher, which gives the chunk's budget back to the
//! admission gate once its events are in a batch.
//!
//! A panic while converting is caught: the chunk is converted again frame by
//! frame so that only the frame that panicked is set aside (as a dead letter);
//! the worker goes on. Should a worker thread die anyway, it is replaced. The
//! workers exit once the queue is closed (every sender dropped) and drained.

use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use tracing::{error, warn};

use crate::batch::{Batcher, ChunkOut};
use crate::deadletter::DeadLetters;
use crate::metrics::{ClusterMetrics, Metrics, NodeMetrics, RateLimit, Tally};
use crate::parse::{self, ConnNode, EventInfo, FrameCtx, Hint, Outcome, ParseError};

/// The conversion of one frame: [`parse::convert_with_info`], or a stand-in in tests.
type Convert = fn(
    &[u8],
    &FrameCtx,
    &parse::Filter,
    &mut Vec<u8>,
    &mut EventInfo,
) -> Result<Outcome, ParseError>;

static BAD_FRAME_LOG: RateLimit = RateLimit::new(Duration::from_secs(10), 5);
static DEAD_LETTER_LOG: RateLimit = RateLimit::new(Duration::from_secs(60), 1);

/// What every stage knows of one cluster.
pub struct ClusterShared {
    pub name: Arc<str>,
    /// The cluster's id at the admission gate.
    pub gate_id: usize,
    pub metrics: Arc<ClusterMetrics>,
    pub batcher: Arc<Batcher>,
}

/// Frames of one connection, handed to the parse pool in one piece.
pub struct Chunk {
    pub cluster: Arc<ClusterShared>,
    pub node: Arc<str>,
    pub node_metrics: Arc<NodeMetrics>,
    /// The bytes the frames lie in.
    pub data: Bytes,
    /// (start, end) of each frame in `data`.
    pub frames: Vec<(u32, u32)>,
    /// Sequence number of the first frame; the others follow one by one.
    pub seq_base: u64,
    /// Position of this chunk among the cluster's chunks, from 0 without gaps.
    pub chunk_no: u64,
    /// When the bytes were read, in Unix microseconds.
    pub received_unix_us: u64,
}

impl Chunk {
    /// The bytes of frame `i`.
    pub fn frame(&self, i: usize) -> &[u8] {
        let (start, end) = self.frames[i];
        &self.data[start as usize..end as usize]
    }

    /// What the chunk weighs at the admission gate.
    pub fn weight(&self) -> (usize, usize) {
        (self.frames.len(), self.data.len())
    }
}

/// What every worker shares.
pub struct PoolCtx {
    pub filter: parse::Filter,
    pub dead_letters: Arc<DeadLetters>,
    pub metrics: Arc<Metrics>,
}

/// The running pool.
pub struct Pool {
    workers: Vec<JoinHandle<()>>,
}

/// Start `n` workers on `queue`.
pub fn start(n: usize, queue: Receiver<Chunk>, ctx: Arc<PoolCtx>) -> std::io::Result<Pool> {
    let mut workers = Vec::with_capacity(n);
    for i in 0..n {
        let queue = queue.clone();
        let ctx = ctx.clone();
        workers.push(
            std::thread::Builder::new()
                .name(format!("qbroker-parse-{i}"))
                .spawn(move || supervise(i, &queue, &ctx))?,
        );
    }
    Ok(Pool { workers })
}

impl Pool {
    /// Wait for the workers to drain the closed queue. Blocking.
    pub fn join(self) {
        for w in self.workers {
            let _ = w.join();
        }
    }
}

/// Run a worker, and run it again if it dies, until the queue is closed.
fn supervise(id: usize, queue: &Receiver<Chunk>, ctx: &PoolCtx) {
    loop {
        match panic::catch_unwind(AssertUnwindSafe(|| work(queue, ctx))) {
            Ok(()) => return,
            Err(_) => {
                ctx.metrics.pool.workers_restarted.inc();
                error!(worker = id, "parse worker died; replacing it");
            }
        }
    }
}

fn work(queue: &Receiver<Chunk>, ctx: &PoolCtx) {
    let mut tally = Tally::default();
    loop {
        let chunk = match queue.recv_timeout(Duration::from_secs(1)) {
            Ok(chunk) => chunk,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let out = convert_chunk(&chunk, ctx, &mut tally, parse::convert_with_info);
        let cluster = &chunk.cluster;
        cluster.metrics.add(&tally);
        tally = Tally::default();
        ctx.metrics.pool.chunks.inc();
        cluster.batcher.submit(out);
    }
}

/// Convert every frame of a chunk. Never panics.
fn convert_chunk(chunk: &Chunk, ctx: &PoolCtx, tally: &mut Tally, convert: Convert) -> ChunkOut {
    let mut out = ChunkOut {
        chunk_no: chunk.chunk_no,
        events: chunk.cluster.batcher.chunk_buffer(chunk.data.len()),
        ends: Vec::with_capacity(chunk.frames.len()),
        received_unix_us: chunk.received_unix_us,
        weight: chunk.weight(),
        file_keys: Vec::with_capacity(chunk.frames.len()),
        hints: Vec::new(),
    };
    let mut wrote_dead_letter = false;
    let whole = panic::catch_unwind(AssertUnwindSafe(|| {
        let mut local = Tally::default();
        for i in 0..chunk.frames.len() {
            convert_frame(
                chunk,
                i,
                ctx,
                convert,
                &mut out,
                &mut local,
                &mut wrote_dead_letter,
            );
        }
        local
    }));
    match whole {
        Ok(local) => merge(tally, local),
        Err(_) => {
            // Start over one frame at a time, so that one bad frame costs only itself.
            ctx.metrics.pool.worker_panics.inc();
            out.events.clear();
            out.ends.clear();
            out.file_keys.clear();
            out.hints.clear();
            for i in 0..chunk.frames.len() {
                let mark = (out.events.len(), out.ends.len());
                let marks = (out.file_keys.len(), out.hints.len());
                let mut local = Tally::default();
                let mut dl = false;
                let one = panic::catch_unwind(AssertUnwindSafe(|| {
                    convert_frame(chunk, i, ctx, convert, &mut out, &mut local, &mut dl);
                }));
                wrote_dead_letter |= dl;
                match one {
                    Ok(()) => merge(tally, local),
                    Err(_) => {
                        out.events.truncate(mark.0);
                        out.ends.truncate(mark.1);
                        out.file_keys.truncate(marks.0);
                        out.hints.truncate(marks.1);
                        if mark.1 > 0 {
                            // Drop a comma the panicking frame may have left.
                            out.events.truncate(out.ends[mark.1 - 1] as usize);
                        }
                        tally.error("internal");
                        error!(
                            cluster = %chunk.cluster.name,
                            node = %chunk.node,
                            seq = chunk.seq_base + i as u64,
                            "converting a frame panicked; frame kept in the dead-letter file"
                        );
                        dead_letter(chunk, i, ctx, &"internal error: conversion panicked");
                        wrote_dead_letter = true;
                    }
                }
            }
        }
    }
    if wrote_dead_letter {
        if let Err(err) = ctx.dead_letters.flush() {
            dead_letter_failed(ctx, &err);
        }
    }
    out
}

fn merge(into: &mut Tally, from: Tally) {
    for (a, b) in into.events.iter_mut().zip(from.events) {
        *a += b;
    }
    for (a, b) in into.filtered.iter_mut().zip(from.filtered) {
        *a += b;
    }
    for (kind, n) in from.errors {
        match into.errors.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, count)) => *count += n,
            None => into.errors.push((kind, n)),
        }
    }
}

fn convert_frame(
    chunk: &Chunk,
    i: usize,
    ctx: &PoolCtx,
    convert: Convert,
    out: &mut ChunkOut,
    tally: &mut Tally,
    wrote_dead_letter: &mut bool,
) {
    let frame = chunk.frame(i);
    let conn = ConnNode {
        node: &chunk.node,
        cluster: &chunk.cluster.name,
    };
    let fctx = FrameCtx {
        seq: chunk.seq_base + i as u64,
        received_unix_ms: (chunk.received_unix_us / 1000) as i64,
        conn: Some(&conn),
    };
    let mark = out.events.len();
    if !out.ends.is_empty() {
        out.events.push(b',');
    }
    let mut info = EventInfo::default();
    match convert(frame, &fctx, &ctx.filter, &mut out.events, &mut info) {
        Ok(Outcome::Event(op)) => {
            out.file_keys.push(info.file_key);
            match info.hint {
                Hint::None => tally.events[op.index()] += 1,
                Hint::Created { .. } => {
                    tally.events[op.index()] += 1;
                    out.hints.push((out.ends.len() as u32, op, info));
                }
                // The batcher may still change these; it tallies them.
                Hint::Untyped | Hint::WriteMetadata { .. } => {
                    out.hints.push((out.ends.len() as u32, op, info));
                }
            }
            out.ends.push(out.events.len() as u32);
        }
        Ok(Outcome::Filtered(reason)) => {
            out.events.truncate(mark);
            tally.filtered[reason.index()] += 1;
        }
        Err(err) => {
            out.events.truncate(mark);
            tally.error(err.kind());
            bad_frame(chunk, i, &err);
            dead_letter(chunk, i, ctx, &err);
            *wrote_dead_letter = true;
        }
    }
}

fn bad_frame(chunk: &Chunk, i: usize, err: &ParseError) {
    if let Some(suppressed) = BAD_FRAME_LOG.check() {
        warn!(
            cluster = %chunk.cluster.name,
            node = %chunk.node,
            seq = chunk.seq_base + i as u64,
            error = %err,
            suppressed,
            "bad frame skipped; kept in the dead-letter file"
        );
    }
}

fn dead_letter(chunk: &Chunk, i: usize, ctx: &PoolCtx, err: &dyn std::fmt::Display) {
    if let Err(e) = ctx.dead_letters.frame(
        &chunk.cluster.name,
        &chunk.node,
        chunk.seq_base + i as u64,
        err,
        chunk.frame(i),
    ) {
        dead_letter_failed(ctx, &e);
    }
}

fn dead_letter_failed(ctx: &PoolCtx, err: &std::io::Error) {
    ctx.metrics.pool.dead_letter_errors.inc();
    if let Some(suppressed) = DEAD_LETTER_LOG.check() {
        error!(error = %err, suppressed, "cannot write the dead-letter file");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BatchConfig, DeadLetterConfig};
    use crate::spool::{Fsync, Options, Spool};
    use crate::sync::gate::Gate;

    /// Converts like the parser, but panics on frames that say "boom".
    fn boom(
        frame: &[u8],
        ctx: &FrameCtx,
        filter: &parse::Filter,
        out: &mut Vec<u8>,
        info: &mut EventInfo,
    ) -> Result<Outcome, ParseError> {
        if frame.windows(4).any(|w| w == b"boom") {
            out.extend_from_slice(b"{\"half\":");
            panic!("injected");
        }
        parse::convert_with_info(frame, ctx, filter, out, info)
    }

    #[test]
    fn a_panicking_frame_costs_only_itself() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::new());
        let spool = Arc::new(
            Spool::open(
                &dir.path().join("spool"),
                Options {
                    max_bytes: 1 << 30,
                    segment_bytes: 1 << 20,
                    fsync: Fsync::Never,
                },
            )
            .unwrap(),
        );
        let batches = crate::batch::Batches::start(
            BatchConfig {
                max_events: 100,
                max_bytes: 1 << 20,
                max_age: Duration::from_secs(60),
                idle_seal: None,
                idle_seal_min_events: 1,
            },
            Arc::new(crate::batch::OneRoute(crate::batch::Route {
                target: Arc::from("t"),
                spool,
                filer_id: None,
                lanes: 1,
                wake: Default::default(),
            })),
        );
        let gate = Arc::new(Gate::new(1000, 1 << 20));
        let batcher = batches.create(Arc::from("c"), &metrics, &gate).unwrap();
        let (gate_id, cm) = (batcher.gate_id(), batcher.metrics().clone());
        let cluster = Arc::new(ClusterShared {
            name: Arc::from("c"),
            gate_id,
            metrics: cm.clone(),
            batcher,
        });
        let frame = |op: &str, id: u32| {
            format!(
                "<14>1 2026-01-27T14:12:23.9558Z c-1 qumulo - - - 10.0.0.1,\"u\",smb2,{op},ok,{id},\"/f{id}\",\"\""
            )
        };
        let frames = [
            frame("fs_create_file", 1),
            frame("fs_write_data", 2),
            "<14>1 boom".to_string(),
            frame("fs_delete", 3),
        ];
        let mut data = Vec::new();
        let mut ranges = Vec::new();
        for f in &frames {
            ranges.push((data.len() as u32, (data.len() + f.len()) as u32));
            data.extend_from_slice(f.as_bytes());
        }
        let chunk = Chunk {
            cluster: cluster.clone(),
            node: Arc::from("c-1"),
            node_metrics: cm.node("c-1"),
            data: Bytes::from(data),
            frames: ranges,
            seq_base: 10,
            chunk_no: 0,
            received_unix_us: 1,
        };
        let ctx = PoolCtx {
            filter: parse::Filter::reference_default(),
            dead_letters: Arc::new(
                DeadLetters::open(&DeadLetterConfig {
                    dir: dir.path().join("dl"),
                    max_file_bytes: 1 << 20,
                    max_batch_bytes: 1 << 20,
                })
                .unwrap(),
            ),
            metrics: metrics.clone(),
        };
        let mut tally = Tally::default();
        let out = convert_chunk(&chunk, &ctx, &mut tally, boom);
        // The three good frames are converted, in order, as valid JSON.
        let events: Vec<serde_json::Value> =
            serde_json::from_slice(&[b"[", &out.events[..], b"]"].concat()).unwrap();
        let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, [10, 11, 13]);
        assert_eq!(out.ends.len(), 3);
        assert_eq!(tally.errors, vec![("internal", 1)]);
        assert_eq!(metrics.pool.worker_panics.get(), 1);
        let dead = std::fs::read_to_string(ctx.dead_letters.frames_path()).unwrap();
        assert!(dead.contains("boom") && dead.contains("panicked"), "{dead}");
    }
}
