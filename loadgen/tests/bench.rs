//! End to end: the release qbroker under short scenarios, through `bench` as
//! a library call. Needs `target/release/qbroker`
//! (`cargo build --release --workspace`), so it is ignored by default:
//! `cargo test -p loadgen --test bench -- --ignored`.

use std::time::Duration;

use loadgen::bench::{BenchOptions, Scenario};
use loadgen::gen::{Format, Framing};

async fn run(scenario: Scenario, format: Format, framing: Framing) {
    let opts = BenchOptions {
        scenario,
        duration: Some(Duration::from_secs(3)),
        format,
        framing,
        progress: false,
        ..BenchOptions::default()
    };
    let r = loadgen::bench::run(opts).await.unwrap();
    assert!(r.ok, "{}", r.render());
    assert_eq!(r.lost, 0);
    assert!(
        r.delivered > 0 && r.delivered == r.sent_expected,
        "{}",
        r.render()
    );
    assert!(r.broker_cpu_us_per_event > 0.0 && r.broker_peak_rss_bytes > 0);
    assert!(r.latency_ms.max >= r.latency_ms.p50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs target/release/qbroker (cargo build --release --workspace)"]
async fn steady_json_lf() {
    run(Scenario::Steady, Format::Json, Framing::Lf).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs target/release/qbroker (cargo build --release --workspace)"]
async fn burst_csv_octet() {
    run(Scenario::Burst, Format::Csv, Framing::Octet).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs target/release/qbroker (cargo build --release --workspace)"]
async fn short_outage_loses_nothing() {
    run(Scenario::Outage, Format::Json, Framing::Lf).await;
}
