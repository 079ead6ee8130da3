//! The senders against the discard server over loopback TCP.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use loadgen::discard::DiscardStats;
use loadgen::gen::{Framing, GenConfig, GenCore};
use loadgen::send::{SendConfig, SendStats};
use tokio::sync::watch;

async fn run(cfg: SendConfig) -> (loadgen::send::SendSummary, Arc<DiscardStats>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = listener.local_addr().unwrap().to_string();
    let stats = Arc::new(DiscardStats::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let server = tokio::spawn(loadgen::discard::run(
        listener,
        stats.clone(),
        stop_rx.clone(),
    ));
    let core = Arc::new(GenCore::new(GenConfig::default()).unwrap());
    let cfg = SendConfig { target, ..cfg };
    let summary = tokio::time::timeout(
        Duration::from_secs(60),
        loadgen::send::run(cfg, core, Arc::new(SendStats::default()), stop_rx),
    )
    .await
    .unwrap()
    .unwrap();
    // let the server read what is still in flight
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while stats.frames.load(Ordering::Relaxed) < summary.events
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop_tx.send(true);
    let _ = server.await;
    (summary, stats)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_arrives_as_one_frame() {
    for framing in [Framing::Lf, Framing::Octet] {
        let cfg = SendConfig {
            clusters: 3,
            nodes: 4,
            events: Some(50_001),
            duration: None,
            framing,
            ..SendConfig::default()
        };
        let (summary, stats) = run(cfg).await;
        assert!(summary.errors.is_empty(), "{:?}", summary.errors);
        assert_eq!(summary.events, 50_001);
        assert_eq!(summary.nodes.len(), 12);
        assert_eq!(stats.frames.load(Ordering::Relaxed), 50_001);
        assert_eq!(stats.bytes.load(Ordering::Relaxed), summary.bytes);
        assert_eq!(stats.connections.load(Ordering::Relaxed), 12);
        assert_eq!(stats.framing_errors.load(Ordering::Relaxed), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_is_kept() {
    let cfg = SendConfig {
        clusters: 1,
        nodes: 4,
        rate: Some(4000.0),
        duration: Some(Duration::from_secs(1)),
        ..SendConfig::default()
    };
    let (summary, _) = run(cfg).await;
    assert!(
        (3800..=4200).contains(&summary.events),
        "{}",
        summary.events
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_target_is_an_error_not_a_hang() {
    let core = Arc::new(GenCore::new(GenConfig::default()).unwrap());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = SendConfig {
        target: format!("127.0.0.1:{port}"),
        nodes: 2,
        connect_timeout: Duration::from_millis(500),
        ..SendConfig::default()
    };
    let (_tx, rx) = watch::channel(false);
    let s = tokio::time::timeout(
        Duration::from_secs(10),
        loadgen::send::run(cfg, core, Arc::new(SendStats::default()), rx),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(s.errors.len(), 2);
    assert_eq!(s.events, 0);
}
