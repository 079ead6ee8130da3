//! `bench --versus`: qbroker and a private rsyslogd on the same short load,
//! through the library, with this package's loadgen binary as rsyslog's
//! omprog relay and the debug broker `cargo test --workspace` builds.
//! Loopback only; rsyslogd comes from the Debian package rsyslog, which
//! scripts/test installs. syslog-ng is not installed by scripts/test: its
//! test is ignored (`scripts/install-peers`, then
//! `cargo test -p loadgen --test versus -- --ignored`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use loadgen::bench::{BenchOptions, Scenario};
use loadgen::peer::{Peer, PeerSettings};
use loadgen::versus::{VersusOptions, VersusReport};

/// `target/debug/qbroker`, beside this test's target directory.
fn broker() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let target = exe
        .ancestors()
        .find(|d| {
            d.file_name()
                .is_some_and(|n| n == "debug" || n == "release")
        })
        .and_then(Path::parent)
        .expect("the test runs from a cargo target directory")
        .to_path_buf();
    let bin = target.join("debug").join("qbroker");
    assert!(
        bin.is_file(),
        "{} not found: cargo build -p qbroker (cargo test --workspace builds it)",
        bin.display()
    );
    bin
}

async fn versus(peers: Vec<Peer>) -> VersusReport {
    let started = Instant::now();
    let r = loadgen::versus::run(VersusOptions {
        bench: BenchOptions {
            scenario: Scenario::Steady,
            duration: Some(Duration::from_secs(2)),
            rate: Some(2_000.0),
            broker: Some(broker()),
            drain_timeout: Duration::from_secs(15),
            progress: false,
            ..BenchOptions::default()
        },
        peers,
        rounds: 1,
        peer_bins: HashMap::new(),
        relay_exe: PathBuf::from(env!("CARGO_BIN_EXE_loadgen")),
        settings: PeerSettings::default(),
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    let took = started.elapsed();
    let text = r.render();
    eprintln!("{text}(in {took:.1?})");
    assert!(r.ok, "{text}");
    for p in &r.pipelines {
        assert_eq!(p.rounds, 1, "{text}");
        assert!(p.delivered > 0, "{}: nothing delivered\n{text}", p.name);
        assert_eq!((p.lost, p.bad_records), (0, 0), "{}\n{text}", p.name);
        assert!(p.ok, "{}\n{text}", p.name);
        assert!(
            p.cpu_us_per_input_msg > 0.0 && p.peak_rss_bytes > 0,
            "{text}"
        );
        assert!(p.cpu_ratio_to_qbroker.is_some_and(|r| r > 0.0), "{text}");
        assert!(p.input_msgs_per_s > 0.0, "{text}");
    }
    // the same load: every pipeline was sent the same events
    let sent: Vec<u64> = r.runs.iter().map(|x| x.report.sent_expected).collect();
    assert!(sent.iter().all(|&s| s > 0), "{sent:?}");
    assert!(text.contains("| qbroker ("), "{text}");
    assert!(took < Duration::from_secs(60), "took {took:?}");
    r
}

/// 2 s at 2,000 events/s into qbroker, then into rsyslog (imtcp,
/// mmjsonparse, the filter, omprog with the reference queue, the relay):
/// both deliver every kept event to the sink, intact, and the report has
/// rsyslog's CPU per message as a ratio to qbroker's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsyslog_beside_qbroker() {
    assert!(
        Path::new("/usr/sbin/rsyslogd").is_file(),
        "rsyslogd missing: install the Debian package rsyslog (scripts/test does)"
    );
    let r = versus(vec![Peer::Rsyslog]).await;
    assert_eq!(r.pipelines.len(), 2);
    assert_eq!(r.pipelines[1].name, "rsyslog");
    assert!(
        r.pipelines[1].version.starts_with("rsyslogd"),
        "{}",
        r.pipelines[1].version
    );
    let json = serde_json::to_value(&r).unwrap();
    for k in [
        "input_msgs_per_s",
        "delivered_per_s",
        "cpu_us_per_input_msg",
        "cpu_ratio_to_qbroker",
        "throughput_ratio_to_qbroker",
        "peak_rss_bytes",
        "lost",
    ] {
        assert!(json["pipelines"][1].get(k).is_some(), "{k} missing");
    }
}

/// As rsyslog_beside_qbroker, with syslog-ng's http() (scripts/install-peers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs syslog-ng: scripts/install-peers"]
async fn syslog_ng_beside_qbroker() {
    let r = versus(vec![Peer::SyslogNg]).await;
    assert_eq!(r.pipelines[1].name, "syslog-ng");
}
