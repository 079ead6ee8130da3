//! End to end: qbroker under short scenarios, through `bench` as a library
//! call. The short runs use the debug broker that `cargo test --workspace`
//! builds beside this test (for qbroker's own integration tests), never an
//! older release build; the full-rate ones the release broker. Either binary
//! older than a file under src/ fails the test with the command that builds
//! it, so a run never measures a stale broker.
//!
//! The short, low-rate runs are not ignored: they are the end-to-end check
//! that CI runs. The longer ones need the release broker and are ignored:
//! `cargo build --release --workspace && cargo test -p loadgen --test bench -- --ignored`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use loadgen::bench::{BenchOptions, Scenario};
use loadgen::gen::{Format, Framing};
use loadgen::report::Report;

/// `target/<profile>/qbroker`, checked to be newer than every file under the
/// broker's `src/`.
fn broker(profile: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/debug/deps/bench-<hash> -> target
    let target = exe
        .ancestors()
        .find(|d| {
            d.file_name()
                .is_some_and(|n| n == "debug" || n == "release")
        })
        .and_then(Path::parent)
        .expect("the test runs from a cargo target directory")
        .to_path_buf();
    let bin = target.join(profile).join("qbroker");
    let hint = if profile == "release" {
        "cargo build --release --workspace"
    } else {
        "cargo build -p qbroker (cargo test --workspace builds it)"
    };
    let built = std::fs::metadata(&bin)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| panic!("{} not found: {hint}", bin.display()));
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    // src/ only: an edit of Cargo.toml that changes nothing compiled (a
    // comment, the rust-version) does not relink the binary.
    let newest = newest_mtime(&root.join("src"));
    assert!(
        built >= newest,
        "{} is older than the broker's sources: {hint}",
        bin.display()
    );
    bin
}

fn newest_mtime(path: &Path) -> SystemTime {
    let Ok(meta) = std::fs::metadata(path) else {
        return SystemTime::UNIX_EPOCH;
    };
    if !meta.is_dir() {
        return meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    }
    std::fs::read_dir(path)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| newest_mtime(&e.path()))
        .max()
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

async fn run(opts: BenchOptions) -> Report {
    let started = Instant::now();
    let r = loadgen::bench::run(BenchOptions {
        progress: false,
        broker: Some(opts.broker.clone().unwrap_or_else(|| broker("debug"))),
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

/// restart-at-cap, 5 s at 5,000 events/s into a 2 MiB spool while the sink
/// answers 503: SIGTERM once the broker has read every frame, with its spool
/// at its cap and frames in its work queue; a second broker on the same data
/// directory delivers everything once the outage ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_at_cap_loses_nothing() {
    let r = run(BenchOptions {
        scenario: Scenario::RestartAtCap,
        duration: Some(Duration::from_secs(5)),
        drain_timeout: Duration::from_secs(20),
        ..BenchOptions::default()
    })
    .await;
    assert_eq!(r.setup.broker_restarts, 1);
    assert_eq!(
        r.setup
            .broker_exit
            .matches("exit status: 0 after SIGTERM")
            .count(),
        2,
        "{}",
        r.setup.broker_exit
    );
    let at = r.restart.as_ref().expect("restart figures");
    assert_eq!(at.frames_read, r.sent, "{}", r.render());
    assert!(
        at.queue_messages > 0 && at.spool_full_waits > 0,
        "{}",
        r.render()
    );
    assert!(at.stopped.contains("lost_events=0"), "{}", at.stopped);
    assert!(r.sink.unavailable > 0, "the sink never answered 503");
}

async fn release(scenario: Scenario, format: Format, framing: Framing) {
    run(BenchOptions {
        scenario,
        duration: Some(Duration::from_secs(3)),
        format,
        framing,
        broker: Some(broker("release")),
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
        broker: Some(broker("release")),
        ..BenchOptions::default()
    })
    .await;
}
