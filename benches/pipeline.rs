//! pipeline: the stages around `parse` (which `benches/parse.rs` measures), and
//! the whole broker on loopback.
//!
//! - `framing`: `ingest::framing::Decoder` over a buffer of newline-delimited
//!   frames and over one of octet-counted frames; throughput in bytes.
//! - `batch`: `Batcher::submit` of converted chunks (256 frames each, as the
//!   readers cut them) into a real spool in a temporary directory, with
//!   `Fsync::Never`, while a thread reads and acknowledges the spool as egress
//!   would; throughput in events.
//! - `e2e`: the broker in-process (its own tokio runtime, as `qbroker run`
//!   builds it), four syslog TCP connections (2 clusters x 2 nodes) in, HTTPS
//!   out to loadgen's verifying sink in the same process; each iteration writes
//!   a fixed set of frames and ends when the sink has every expected event.
//!   Throughput in frames sent (events in, filtered ones included). The
//!   senders, the sink and the broker share the machine, so this is a lower
//!   bound for the broker alone; `loadgen bench` measures its CPU.
//!
//! Frames come from loadgen's generator (JSON payloads, its default mix).
//! `cargo bench --bench pipeline [-- framing|batch|e2e]`.

use std::hint::black_box;
use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use loadgen::gen::{Chunk, Format, Framing, GenConfig, GenCore, NodeGen};
use loadgen::verify::Verifier;
use qbroker::batch::{Batches, ChunkOut};
use qbroker::config::BatchConfig;
use qbroker::ingest::framing::{Decoder, Next};
use qbroker::parse::{convert, Filter, FrameCtx, Outcome};
use qbroker::spool::{Fsync, Options, Spool};
use qbroker::sync::gate::Gate;

fn core() -> Arc<GenCore> {
    Arc::new(
        GenCore::new(GenConfig {
            format: Format::Json,
            ..GenConfig::default()
        })
        .expect("generator"),
    )
}

/// `n` frames of one node, framed as asked.
fn frames(core: &Arc<GenCore>, framing: Framing, n: u64) -> Vec<u8> {
    let mut chunk = Chunk::default();
    NodeGen::new(core.clone(), 0, 1, framing).fill(&mut chunk, n);
    chunk.buf
}

// ------------------------------------------------------------------ framing

fn framing(c: &mut Criterion) {
    let core = core();
    let mut g = c.benchmark_group("framing");
    for (name, framing) in [("lf", Framing::Lf), ("octet", Framing::Octet)] {
        let mut buf = BytesMut::from(&frames(&core, framing, 10_000)[..]);
        let decode = |buf: &mut BytesMut| {
            let mut d = Decoder::new(64 * 1024);
            let mut n = 0u32;
            loop {
                match d.next(buf) {
                    Next::Frame { start, end } => {
                        black_box((start, end));
                        n += 1;
                    }
                    Next::Oversize | Next::Overrun => panic!("no frame is over the cap"),
                    Next::Incomplete => break,
                }
            }
            n
        };
        assert_eq!(decode(&mut buf), 10_000, "{name}: every frame decodes");
        eprintln!(
            "framing/{name}: 10,000 frames, {} bytes ({} per frame)",
            buf.len(),
            buf.len() / 10_000
        );
        g.throughput(Throughput::Bytes(buf.len() as u64));
        // the decoder reports ranges and leaves a buffer of whole frames alone
        g.bench_function(name, |b| b.iter(|| decode(&mut buf)));
    }
    g.finish();
}

// ------------------------------------------------------------------- batch

/// Converted chunks of 256 frames, as the parse pool hands them on.
fn chunk_outs(core: &Arc<GenCore>, chunks: usize) -> Vec<ChunkOut> {
    let filter = Filter::reference_default();
    let buf = frames(core, Framing::Lf, chunks as u64 * 256);
    let lines: Vec<&[u8]> = buf
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    lines
        .chunks(256)
        .map(|frames| {
            let mut out = ChunkOut::default();
            for (i, f) in frames.iter().enumerate() {
                let mark = out.events.len();
                if !out.ends.is_empty() {
                    out.events.push(b',');
                }
                let ctx = FrameCtx {
                    seq: i as u64,
                    received_unix_ms: 1_769_523_200_000,
                    conn: None,
                };
                match convert(f, &ctx, &filter, &mut out.events) {
                    Ok(Outcome::Event(_)) => out.ends.push(out.events.len() as u32),
                    Ok(Outcome::Filtered(_)) => out.events.truncate(mark),
                    Err(e) => panic!("generated frame does not parse: {e:?}"),
                }
            }
            out
        })
        .collect()
}

fn batch(c: &mut Criterion) {
    let core = core();
    let templates = chunk_outs(&core, 100);
    let events: usize = templates.iter().map(|c| c.ends.len()).sum();
    let bytes: usize = templates.iter().map(|c| c.events.len()).sum();
    eprintln!(
        "batch: {} chunks of 256 frames, {events} events, {bytes} bytes of events",
        templates.len()
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let spool = Arc::new(
        Spool::open(
            dir.path(),
            Options {
                max_bytes: 4 << 30,
                segment_bytes: 64 << 20,
                fsync: Fsync::Never,
            },
        )
        .expect("spool"),
    );
    // egress stand-in: take every record and acknowledge it, so segments go
    let reader = {
        let spool = spool.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let mut n = 0u64;
                while let Some(rec) = spool.next().await {
                    spool.ack(rec.id);
                    n += u64::from(rec.events);
                }
                n
            })
        })
    };
    let batches = Batches::start(
        BatchConfig {
            max_events: 1000,
            max_bytes: 1 << 20,
            max_age: Duration::from_millis(200),
            idle_seal: None,
            idle_seal_min_events: 1,
        },
        Arc::new(qbroker::batch::OneRoute(qbroker::batch::Route {
            target: Arc::from("bench"),
            spool: spool.clone(),
            filer_id: Some(7),
            lanes: 4,
            wake: Default::default(),
        })),
    );
    let metrics = qbroker::metrics::Metrics::new();
    let gate = Arc::new(Gate::new(1 << 20, 1 << 30));
    let batcher = batches
        .create(Arc::from("qlg-c000"), &metrics, &gate)
        .expect("a route");

    let mut next_chunk = 0u64;
    let mut g = c.benchmark_group("batch");
    g.throughput(Throughput::Elements(events as u64));
    g.bench_function("submit", |b| {
        b.iter_batched(
            || {
                templates
                    .iter()
                    .map(|t| {
                        next_chunk += 1;
                        ChunkOut {
                            chunk_no: next_chunk - 1,
                            events: t.events.clone(),
                            ends: t.ends.clone(),
                            received_unix_us: 1_769_523_200_000_000,
                            weight: (0, 0),
                            ..ChunkOut::default()
                        }
                    })
                    .collect::<Vec<_>>()
            },
            |outs| {
                for o in outs {
                    batcher.submit(o);
                }
            },
            criterion::BatchSize::LargeInput,
        )
    });
    g.finish();
    batches.flush_all();
    spool.close();
    let delivered = reader.join().expect("spool reader");
    let st = spool.stats();
    eprintln!(
        "batch: {} batches, {delivered} events through the spool",
        st.appended_records
    );
}

// --------------------------------------------------------------------- e2e

/// Frames written per iteration, over all connections.
const E2E_FRAMES: u64 = 200_000;
const E2E_CLUSTERS: u16 = 2;
const E2E_NODES: u16 = 2;

struct E2e {
    verifier: Arc<Verifier>,
    nodes: Vec<(NodeGen, TcpStream)>,
    /// expected events written so far (what the sink must end up with)
    expected: u64,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    broker: Option<std::thread::JoinHandle<()>>,
    sink_rt: tokio::runtime::Runtime,
    sink: Option<loadgen::sink::Sink>,
    _dir: tempfile::TempDir,
}

impl E2e {
    fn start() -> E2e {
        let dir = tempfile::tempdir().expect("tempdir");
        let core = core();
        let verifier = Arc::new(Verifier::new(core.clone()));
        let sink_rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("bench-sink")
            .enable_all()
            .build()
            .expect("sink runtime");
        let ca = dir.path().join("ca.pem");
        let sink = sink_rt
            .block_on(loadgen::sink::start(
                loadgen::sink::SinkConfig {
                    listen: "127.0.0.1:0".parse().unwrap(),
                    cert: loadgen::sink::CertSource::Generate,
                    cert_out: Some(ca.clone()),
                    faults: loadgen::sink::FaultConfig::default(),
                },
                verifier.clone(),
            ))
            .expect("sink");
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        // The defaults of deploy/qbroker.toml but for max_age_ms: a fixed set of
        // frames ends with a partly filled batch per cluster, which waits max_age.
        let config = format!(
            "listen = \"127.0.0.1:0\"\nworkers = {workers}\ndata_dir = {data:?}\n\
             default_target = \"sink\"\n[batch]\nmax_age_ms = 20\n\
             [[targets]]\nname = \"sink\"\nurl = \"https://{addr}/events\"\nca_file = {ca:?}\n",
            data = dir.path().join("data").display().to_string(),
            addr = sink.addr,
            ca = ca.display().to_string(),
        );
        let cfg = qbroker::config::RawConfig::parse(&config)
            .expect("config parses")
            .validate()
            .expect("config is valid");
        let listeners = qbroker::Listeners::bind(&cfg).expect("bind");
        let syslog = listeners.syslog.local_addr().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let threads = (workers / 4).clamp(2, 4);
        let broker = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .thread_name("qbroker-rt")
                .enable_all()
                .build()
                .expect("broker runtime");
            rt.block_on(qbroker::run(cfg, listeners, async {
                let _ = stop_rx.await;
            }))
            .expect("broker runs");
        });
        let nodes = (0..E2E_CLUSTERS)
            .flat_map(|c| (1..=E2E_NODES).map(move |n| (c, n)))
            .map(|(c, n)| {
                let tcp = connect(syslog);
                tcp.set_nodelay(true).unwrap();
                (NodeGen::new(core.clone(), c, n, Framing::Lf), tcp)
            })
            .collect();
        E2e {
            verifier,
            nodes,
            expected: 0,
            stop: Some(stop_tx),
            broker: Some(broker),
            sink_rt,
            sink: Some(sink),
            _dir: dir,
        }
    }

    /// Writes `E2E_FRAMES` frames over every connection and waits until the sink
    /// has every expected event; returns the time from the first write.
    fn round(&mut self) -> Duration {
        let per_node = E2E_FRAMES / self.nodes.len() as u64;
        let mut chunks: Vec<Chunk> = self
            .nodes
            .iter_mut()
            .map(|(gen, _)| {
                let mut ch = Chunk::default();
                gen.fill(&mut ch, per_node);
                ch.patch_time(&loadgen::gen::syslog_ts(loadgen::gen::now_unix_us()));
                ch
            })
            .collect();
        self.expected += chunks.iter().map(|c| c.expected).sum::<u64>();
        let start = Instant::now();
        std::thread::scope(|s| {
            for ((_, tcp), ch) in self.nodes.iter_mut().zip(&mut chunks) {
                s.spawn(move || tcp.write_all(&ch.buf).expect("write frames"));
            }
        });
        let deadline = start + Duration::from_secs(60);
        while self.verifier.delivered() < self.expected {
            if Instant::now() > deadline {
                panic!(
                    "the sink has {} of {} events after 60 s: {:?}",
                    self.verifier.delivered(),
                    self.expected,
                    self.verifier.summary(None).failures()
                );
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        start.elapsed()
    }

    fn finish(mut self) {
        for (_, tcp) in &self.nodes {
            let _ = tcp.shutdown(std::net::Shutdown::Both);
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(b) = self.broker.take() {
            b.join().expect("broker thread");
        }
        let s = self.verifier.summary(None);
        let failures = s.failures();
        assert!(failures.is_empty(), "e2e: {failures:?}");
        eprintln!(
            "e2e: {} events delivered in {} batches; lost {}, duplicated {}",
            s.delivered, s.batches, s.lost, s.duplicated
        );
        if let Some(sink) = self.sink.take() {
            self.sink_rt.block_on(sink.stop());
        }
    }
}

fn connect(addr: std::net::SocketAddr) -> TcpStream {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpStream::connect(addr) {
            Ok(s) => return s,
            Err(e) if Instant::now() > deadline => panic!("connecting to the broker: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn e2e(c: &mut Criterion) {
    // started on first use: not at all when a filter leaves e2e out
    let mut run: Option<E2e> = None;
    let mut g = c.benchmark_group("e2e");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(8))
        .throughput(Throughput::Elements(E2E_FRAMES));
    // warm-up rounds included: every round is a full one
    let (mut total, mut rounds) = (Duration::ZERO, 0u64);
    g.bench_function("loopback_tls", |b| {
        let run = run.get_or_insert_with(E2e::start);
        b.iter_custom(|iters| {
            let mut t = Duration::ZERO;
            for _ in 0..iters {
                t += run.round();
            }
            total += t;
            rounds += iters;
            t
        })
    });
    g.finish();
    if rounds > 0 {
        let ns = total.as_nanos() as f64 / (rounds * E2E_FRAMES) as f64;
        eprintln!(
            "e2e: {ns:.0} ns per event (wall), {:.0} events/s over {rounds} rounds of {E2E_FRAMES} frames",
            1e9 / ns
        );
    }
    if let Some(run) = run {
        run.finish();
    }
}

criterion_group!(benches, framing, batch, e2e);
criterion_main!(benches);
