//! End to end: qbroker under short scenarios, through `bench` as a library
//! call, against whichever broker binary `find_broker` finds: the release
//! one when built, else the debug one that `cargo test --workspace` builds
//! for qbroker's own integration tests (`cargo build -p qbroker` when this
//! test runs alone). A missing broker fails the test with the build hint.
//!
//! The short, low-rate runs are not ignored: they are the end-to-end check
//! that CI runs. The longer ones need the release broker and are ignored:
//! `cargo build --release --workspace && cargo test -p loadgen --test bench -- --ignored`.

use std::time::{Duration, Instant};

use loadgen::bench::{BenchOptions, Scenario};
use loadgen::gen::{Format, Framing};
use loadgen::report::Report;

async fn run(opts: BenchOptions) -> Report {
    let started = Instant::now();
    let r = loadgen::bench::run(BenchOptions {
        progress: false,
        ..opts
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    let took = started.elapsed();
    eprintln!("{} (in {took:.1?})\n{}", r.setup.broker, r.render());
    assert!(r.ok, "{}", r.render());
    assert!(
        r.delivered > 0 && r.delivered == r.sent_expected && r.lost == 0,
        "{}",
        r.render()
    );
    assert_eq!(
        r.duplicated,
        r.duplicated_in_redelivered_batches,
        "duplicates other than idempotent re-sends\n{}",
        r.render()
    );
    let errors = [
        r.schema_errors,
        r.mismatches,
        r.unexpected,
        r.foreign,
        r.order_violations,
    ];
    assert_eq!(errors, [0; 5], "schema or field errors\n{}", r.render());
    assert!(r.sender_errors.is_empty(), "{:?}", r.sender_errors);
    assert!(r.broker_cpu_us_per_event > 0.0 && r.broker_peak_rss_bytes > 0);
    assert!(r.broker_cpu_us_per_delivered_event >= r.broker_cpu_us_per_event);
    assert!(r.setup.broker_workers > 0 && !r.setup.broker_cpus.is_empty());
    assert!(r.latency_ms.max >= r.latency_ms.p50);
    assert!(
        r.setup.broker_exit.contains("exit status: 0"),
        "{}",
        r.setup.broker_exit
    );
    assert!(took < Duration::from_secs(60), "took {took:?}");
    r
}

/// 3 s of steady load at 2,500 events/s: everything arrives, intact, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_steady_loses_nothing() {
    let r = run(BenchOptions {
        scenario: Scenario::Steady,
        duration: Some(Duration::from_secs(3)),
        rate: Some(2_500.0),
        ..BenchOptions::default()
    })
    .await;
    assert_eq!(r.sink.unavailable, 0);
}

/// 6 s at 2,500 events/s, of which the sink answers 503 for the middle 3 s:
/// the broker keeps the batches and delivers every event afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_outage_loses_nothing() {
    let r = run(BenchOptions {
        scenario: Scenario::Outage,
        duration: Some(Duration::from_secs(6)),
        rate: Some(2_500.0),
        drain_timeout: Duration::from_secs(20),
        ..BenchOptions::default()
    })
    .await;
    assert!(r.sink.unavailable > 0, "the sink never answered 503");
}

/// 3 s at 2,500 events/s over AMQP: qbroker publishes to a private RabbitMQ
/// (Debian's rabbitmq-server), the sink consumes; everything arrives, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_steady_over_amqp_loses_nothing() {
    let r = run(BenchOptions {
        scenario: Scenario::Steady,
        egress: loadgen::bench::Egress::Amqp,
        duration: Some(Duration::from_secs(3)),
        rate: Some(2_500.0),
        ..BenchOptions::default()
    })
    .await;
    assert_eq!(r.setup.egress, "amqp");
    assert_eq!(r.sink.requests, 0, "nothing went over HTTPS");
}

/// rabbitmq-restart, short: RabbitMQ killed (-9) mid-run and started again;
/// every event arrives. (Not through `run`: two RabbitMQ starts can take
/// longer than its time limit on a busy machine.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_restart_loses_nothing() {
    let r = loadgen::bench::run(BenchOptions {
        scenario: Scenario::RabbitmqRestart,
        duration: Some(Duration::from_secs(8)),
        rate: Some(2_500.0),
        progress: false,
        ..BenchOptions::default()
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(r.ok, "{}", r.render());
    assert_eq!(r.setup.egress, "amqp");
    assert!(
        r.delivered > 0 && r.delivered == r.sent_expected && r.lost == 0,
        "{}",
        r.render()
    );
}

async fn release(scenario: Scenario, format: Format, framing: Framing) {
    run(BenchOptions {
        scenario,
        duration: Some(Duration::from_secs(3)),
        format,
        framing,
        ..BenchOptions::default()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "full rate: wants target/release/qbroker (cargo build --release --workspace)"]
async fn steady_json_lf() {
    release(Scenario::Steady, Format::Json, Framing::Lf).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "full rate: wants target/release/qbroker (cargo build --release --workspace)"]
async fn burst_csv_octet() {
    release(Scenario::Burst, Format::Csv, Framing::Octet).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "full rate: wants target/release/qbroker (cargo build --release --workspace)"]
async fn outage_at_full_rate_loses_nothing() {
    release(Scenario::Outage, Format::Json, Framing::Lf).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "full rate: wants target/release/qbroker (cargo build --release --workspace)"]
async fn many_clusters_pinned() {
    run(BenchOptions {
        scenario: Scenario::ManyClusters,
        duration: Some(Duration::from_secs(3)),
        broker_cpus: Some("0".into()),
        ..BenchOptions::default()
    })
    .await;
}
