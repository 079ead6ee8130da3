//! The sink over real HTTPS on loopback: frames from the generator, turned
//! into batches by the reference conversion in `common`, verified.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use loadgen::gen::{now_unix_us, syslog_ts, Chunk, Format, Framing, GenConfig, GenCore, NodeGen};
use loadgen::sink::{CertSource, FaultConfig, Sink, SinkConfig};
use loadgen::verify::Verifier;
use serde_json::Value;

async fn start(
    format: Format,
    faults: FaultConfig,
    cert_out: Option<std::path::PathBuf>,
) -> (Sink, Arc<GenCore>) {
    let core = Arc::new(
        GenCore::new(GenConfig {
            format,
            ..GenConfig::default()
        })
        .unwrap(),
    );
    let sink = loadgen::sink::start(
        SinkConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            cert: CertSource::Generate,
            cert_out,
            faults,
        },
        Arc::new(Verifier::new(core.clone())),
    )
    .await
    .unwrap();
    (sink, core)
}

type PerCluster = HashMap<String, Vec<Value>>;

/// Converts `n` frames of each node into events, grouped per cluster, and
/// the number of expected events per node.
fn events(
    core: &Arc<GenCore>,
    nodes: &[(u16, u16)],
    n: u64,
    framing: Framing,
) -> (PerCluster, HashMap<(u16, u16), u64>) {
    let mut per_cluster = PerCluster::new();
    let mut totals = HashMap::new();
    for &(c, node) in nodes {
        let mut g = NodeGen::new(core.clone(), c, node, framing);
        let mut chunk = Chunk::default();
        g.fill(&mut chunk, n);
        chunk.patch_time(&syslog_ts(now_unix_us()));
        for f in common::split_frames(&chunk.buf) {
            if let Some((cluster, ev)) = common::convert(&f) {
                per_cluster.entry(cluster).or_default().push(ev);
            }
        }
        totals.insert((c, node), g.expected_count());
    }
    (per_cluster, totals)
}

async fn post_all(sink: &Sink, per_cluster: &PerCluster, batch: usize) {
    for (cluster, evs) in per_cluster {
        for (i, chunk) in evs.chunks(batch).enumerate() {
            let id = format!("{cluster}-{i}");
            let body = common::batch(cluster, &id, (i * batch) as u64, chunk);
            let h = [
                ("content-type", "application/json"),
                ("idempotency-key", id.as_str()),
            ];
            let (status, _) = common::post(sink.addr, &sink.trust_pem, &h, body)
                .await
                .unwrap();
            assert_eq!(status, 200);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_pipeline_passes_in_every_format_and_framing() {
    let nodes = [(0, 1), (0, 2), (1, 1), (4, 3)];
    for (format, framing) in [
        (Format::Json, Framing::Lf),
        (Format::Json, Framing::Octet),
        (Format::Csv, Framing::Lf),
        (Format::Csv, Framing::Octet),
    ] {
        let (sink, core) = start(format, FaultConfig::default(), None).await;
        let (per_cluster, totals) = events(&core, &nodes, 3000, framing);
        post_all(&sink, &per_cluster, 250).await;
        let s = sink.verifier.summary(Some(&totals));
        assert!(
            s.failures().is_empty(),
            "{format:?}/{framing:?}: {:?}\n{:#?}",
            s.failures(),
            s.problems
        );
        assert_eq!(s.delivered, totals.values().sum::<u64>());
        assert!(
            s.delivered > 3000,
            "about a third of 12000 events are delivered"
        );
        assert_eq!(s.latency_ms.count, s.delivered);
        assert_eq!(s.reordered, 0);
        sink.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_and_cert_out() {
    use std::io::Write;
    let dir = std::env::temp_dir().join(format!("loadgen-test-{}", now_unix_us()));
    std::fs::create_dir_all(&dir).unwrap();
    let pem_path = dir.join("ca.pem");
    let (sink, core) = start(Format::Json, FaultConfig::default(), Some(pem_path.clone())).await;
    assert_eq!(std::fs::read_to_string(&pem_path).unwrap(), sink.trust_pem);
    let (per_cluster, totals) = events(&core, &[(0, 1)], 500, Framing::Lf);
    let evs = &per_cluster[&core.cluster_name(0)];
    let body = common::batch(&core.cluster_name(0), "gz", 0, evs);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&body).unwrap();
    let h = [
        ("content-type", "application/json"),
        ("content-encoding", "gzip"),
        ("idempotency-key", "gz"),
    ];
    let (status, _) = common::post(sink.addr, &sink.trust_pem, &h, gz.finish().unwrap())
        .await
        .unwrap();
    assert_eq!(status, 200);
    let s = sink.verifier.summary(Some(&totals));
    assert!(s.failures().is_empty(), "{:?}", s.problems);
    sink.stop().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_loss_duplicate_and_reorder_are_reported() {
    let (sink, core) = start(Format::Json, FaultConfig::default(), None).await;
    let (mut per_cluster, totals) = events(&core, &[(0, 1)], 2000, Framing::Lf);
    let cluster = core.cluster_name(0);
    let evs = per_cluster.remove(&cluster).unwrap();
    let mut evs: Vec<Value> = evs;
    evs.remove(10); // lost
    let dup = evs[20].clone();
    let h = |id: &'static str| {
        [
            ("content-type", "application/json"),
            ("idempotency-key", id),
        ]
    };
    let (a, b) = evs.split_at(300);
    // the second half first: the first half then arrives reordered
    for (id, part) in [("b", b), ("a", a), ("c", std::slice::from_ref(&dup))] {
        let (status, _) = common::post(
            sink.addr,
            &sink.trust_pem,
            &h(id),
            common::batch(&cluster, id, 0, part),
        )
        .await
        .unwrap();
        assert_eq!(status, 200);
    }
    let s = sink.verifier.summary(Some(&totals));
    assert_eq!(s.lost, 1);
    assert_eq!((s.duplicated, s.duplicated_in_redelivered_batches), (1, 0));
    assert_eq!(
        s.reordered, 300,
        "the whole first half came after the second"
    );
    assert_eq!(s.gaps.len(), 1);
    let f = s.failures();
    assert!(
        f.iter().any(|m| m.contains("1 events lost")) && f.iter().any(|m| m.contains("duplicated")),
        "{f:?}"
    );
    sink.stop().await;
}

fn one_batch(core: &Arc<GenCore>, id: &str) -> Vec<u8> {
    let (per_cluster, _) = events(core, &[(0, 1)], 30, Framing::Lf);
    common::batch(
        &core.cluster_name(0),
        id,
        0,
        &per_cluster[&core.cluster_name(0)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_modes() {
    let h = [
        ("content-type", "application/json"),
        ("idempotency-key", "f"),
    ];
    // 429 with Retry-After
    let (sink, core) = start(
        Format::Json,
        FaultConfig {
            throttle_429: 1.0,
            retry_after_secs: 7,
            ..FaultConfig::default()
        },
        None,
    )
    .await;
    let (status, headers) = common::post(sink.addr, &sink.trust_pem, &h, one_batch(&core, "f"))
        .await
        .unwrap();
    assert_eq!(status, 429);
    assert_eq!(headers.get("retry-after").unwrap(), "7");
    assert_eq!(sink.verifier.delivered(), 0);
    sink.stop().await;

    // an outage window answers 503 and accepts nothing; then back to 200
    let (sink, core) = start(Format::Json, FaultConfig::default(), None).await;
    sink.faults.outage(Duration::from_millis(300));
    let (status, _) = common::post(sink.addr, &sink.trust_pem, &h, one_batch(&core, "f"))
        .await
        .unwrap();
    assert_eq!(status, 503);
    assert_eq!(sink.verifier.delivered(), 0);
    tokio::time::sleep(Duration::from_millis(350)).await;
    let (status, _) = common::post(sink.addr, &sink.trust_pem, &h, one_batch(&core, "f"))
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(sink.verifier.delivered() > 0);
    sink.stop().await;

    // reset: no answer, nothing accepted
    let (sink, core) = start(
        Format::Json,
        FaultConfig {
            reset: 1.0,
            ..FaultConfig::default()
        },
        None,
    )
    .await;
    assert!(
        common::post(sink.addr, &sink.trust_pem, &h, one_batch(&core, "f"))
            .await
            .is_err()
    );
    assert_eq!(sink.verifier.delivered(), 0);
    assert_eq!(sink.counters.snapshot().resets, 1);
    sink.stop().await;

    // lost ack: no answer, but accepted; the retry is a duplicate batch
    let (sink, core) = start(
        Format::Json,
        FaultConfig {
            lose_ack: 1.0,
            ..FaultConfig::default()
        },
        None,
    )
    .await;
    assert!(
        common::post(sink.addr, &sink.trust_pem, &h, one_batch(&core, "f"))
            .await
            .is_err()
    );
    assert!(
        common::post(sink.addr, &sink.trust_pem, &h, one_batch(&core, "f"))
            .await
            .is_err()
    );
    let s = sink.verifier.summary(None);
    assert_eq!(s.duplicate_batches, 1);
    assert!(
        s.delivered > 0 && s.duplicated == s.delivered && s.failures().is_empty(),
        "{s:?}"
    );
    sink.stop().await;

    // delay
    let (sink, core) = start(
        Format::Json,
        FaultConfig {
            delay_ms: (200, 200),
            ..FaultConfig::default()
        },
        None,
    )
    .await;
    let t = Instant::now();
    let (status, _) = common::post(sink.addr, &sink.trust_pem, &h, one_batch(&core, "f"))
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(t.elapsed() >= Duration::from_millis(200));
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goes_away_and_comes_back() {
    let (sink, core) = start(Format::Json, FaultConfig::default(), None).await;
    let h = [
        ("content-type", "application/json"),
        ("idempotency-key", "f"),
    ];
    let (status, _) = common::post(sink.addr, &sink.trust_pem, &h, one_batch(&core, "f"))
        .await
        .unwrap();
    assert_eq!(status, 200);
    sink.faults.go_away(Duration::from_millis(800));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        common::post(sink.addr, &sink.trust_pem, &h, one_batch(&core, "f"))
            .await
            .is_err(),
        "listener closed"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Ok((200, _)) =
            common::post(sink.addr, &sink.trust_pem, &h, one_batch(&core, "f")).await
        {
            break;
        }
        assert!(Instant::now() < deadline, "sink did not come back");
    }
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_what_is_not_a_batch() {
    let (sink, _core) = start(Format::Json, FaultConfig::default(), None).await;
    let (status, _) = common::post(
        sink.addr,
        &sink.trust_pem,
        &[("content-type", "application/json")],
        b"[1,2]".to_vec(),
    )
    .await
    .unwrap();
    assert_eq!(status, 400);
    let (status, _) = common::post(
        sink.addr,
        &sink.trust_pem,
        &[("content-type", "text/plain")],
        b"{}".to_vec(),
    )
    .await
    .unwrap();
    assert_eq!(status, 415);
    assert_eq!(sink.verifier.summary(None).schema_errors, 2);
    sink.stop().await;
}
