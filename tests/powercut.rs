//! Power cuts: kill -9, then every file under the data directory loses what
//! was not fsynced (tests/common/powercut.rs: an LD_PRELOAD stand-in for the
//! disk that journals fsyncs), then a restart with the target back. A plain
//! kill -9 leaves the page cache, so only this tells `fsync = "always"` from
//! `"never"`: the spool and `stdin.wal` under `always` lose nothing that was
//! spooled or answered `OK`; under `never` the same run loses events, which is
//! the proof that the stand-in drops unsynced writes. And the stdin commit
//! barrier, killed right after its `OK` with every other seal held back.
//! Loopback only, bounded in time.

mod common;
#[path = "common/powercut.rs"]
mod powercut;

use std::collections::BTreeSet;
use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

/// Events by identity (node, index).
type Events = BTreeSet<(u32, u64)>;

/// Accepted events, each batch id counted once; an event in two different
/// batches fails the test.
fn delivered(sink: &Sink) -> Events {
    let mut batches = BTreeSet::new();
    let mut ids = BTreeSet::new();
    for r in sink.accepted() {
        if batches.insert(r.idempotency_key.clone()) {
            for e in r.body["events"].as_array().unwrap() {
                assert!(
                    ids.insert(identity(e)),
                    "event delivered in two batches: {e}"
                );
            }
        }
    }
    ids
}

/// What the sink holds once the restarted broker's spool has nothing left
/// unacknowledged (`metrics` reads its /metrics page), at most 60 s.
fn drained(sink: &Sink, metrics: std::net::SocketAddr) -> Events {
    wait_for(Duration::from_secs(60), || {
        let page = http_get(metrics, "/metrics");
        (metric_value(&page, "qbroker_spool_unacked_batches{target=\"sink\"}")? == 0.0)
            .then_some(())
    });
    delivered(sink)
}

/// A canonical temporary directory (the shim names files by their real path).
fn data_dir(tmp: &tempfile::TempDir) -> PathBuf {
    let dir = tmp.path().canonicalize().unwrap().join("data");
    std::fs::create_dir(&dir).unwrap();
    dir
}

/// Frames read by the broker, the work queue empty and the spool's appends
/// stable for a second: what the broker will ever spool of them is spooled.
fn wait_spooled(broker: &BrokerProcess, cluster: &str, n: u64) {
    let frames = format!("qbroker_cluster_frames_total{{cluster=\"{cluster}\"}}");
    let mut last = (f64::NAN, Instant::now());
    wait_for(Duration::from_secs(60), || {
        let read = broker.metric(&frames)?;
        let queued = broker.metric("qbroker_queue_messages")?;
        let appended = broker.metric("qbroker_spool_appended_batches_total{target=\"sink\"}")?;
        if read as u64 != n || queued != 0.0 || appended == 0.0 {
            return None;
        }
        if appended != last.0 {
            last = (appended, Instant::now());
            return None;
        }
        (last.1.elapsed() > Duration::from_secs(1)).then_some(())
    });
}

/// Spool `n` events with the target away, kill -9, power cut, restart with the
/// target back; returns what was delivered.
fn spool_power_cut(fsync: &str, n: u64) -> Events {
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(&tmp);
    let journal = tmp.path().join("sync.journal");
    let mut sink = Sink::start();
    sink.go_away();
    let config = tmp.path().join("qbroker.toml");
    std::fs::write(
        &config,
        config_text(&sink, &dir, &format!("\n[spool]\nfsync = \"{fsync}\"\n")),
    )
    .unwrap();
    let mut broker =
        BrokerProcess::spawn_with_env(QBROKER, &config, "info", &powercut::env(&dir, &journal));
    let mut s = TcpStream::connect(broker.syslog).unwrap();
    for i in 0..n {
        s.write_all(&framed(
            &json_frame("volt-1", "fs_write_data", "/data/f", &file_id(1, i)),
            false,
        ))
        .unwrap();
    }
    s.flush().unwrap();
    wait_spooled(&broker, "volt", n);
    broker.child.kill().unwrap();
    broker.child.wait().unwrap();
    drop(s);
    assert!(delivered(&sink).is_empty(), "the target was away");
    let cuts = powercut::power_cut(&dir, &journal);
    eprintln!("fsync = {fsync}: power cut shortened {cuts:#?}");

    sink.come_back();
    let again = BrokerProcess::spawn(QBROKER, &config);
    let got = drained(&sink, again.metrics);
    let all: Events = (0..n).map(|i| (1, i)).collect();
    assert!(got.is_subset(&all), "delivered events never sent");
    assert!(sink.problems().is_empty(), "{:?}", sink.problems());
    got
}

#[test]
fn spooled_events_outlive_a_power_cut_with_fsync_always() {
    let n = 3000;
    let got = spool_power_cut("always", n);
    assert_eq!(got.len() as u64, n, "events lost in the power cut");
}

#[test]
fn spooled_events_outlive_a_power_cut_with_fsync_interval_once_it_passed() {
    // The default interval (100 ms) passed many times over while the test
    // waited for the appends to be stable.
    let n = 3000;
    let got = spool_power_cut("interval", n);
    assert_eq!(got.len() as u64, n, "events lost in the power cut");
}

#[test]
fn a_power_cut_loses_spooled_events_with_fsync_never() {
    // The same run as with "always", and the broker had spooled every event
    // before the kill (wait_spooled); only the writes that were never synced
    // are gone. This is the proof that the stand-in drops unsynced writes, so
    // that the tests above would fail if the spool did not fsync.
    let n = 3000;
    let got = spool_power_cut("never", n);
    assert!(
        (got.len() as u64) < n,
        "all {n} events survived a power cut without fsync: the stand-in kept unsynced writes"
    );
    eprintln!("fsync = never: {} of {n} events delivered", got.len());
}

// ---------------------------------------------------------------------------
// qbroker stdin: the write-ahead file and the commit barrier.

fn stdin_config(tmp: &Path, dir: &Path, sink: &Sink, extra: &str) -> PathBuf {
    let text = format!(
        r#"listen = "127.0.0.1:0"
metrics_listen = "127.0.0.1:0"
workers = 2
data_dir = "{data}"
default_target = "sink"
{extra}
[shutdown]
grace_secs = 5
[[targets]]
name = "sink"
url = "{url}"
ca_file = "{ca}"
retry_initial_ms = 20
retry_max_ms = 200
"#,
        data = dir.display(),
        url = sink.url(),
        ca = sink.ca_file.display(),
    );
    let path = tmp.join("qbroker.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `qbroker stdin` with both ends of omprog's protocol in the test's hands,
/// its first answer ("ready") read.
fn stdin_ready(config: &Path, env: &[(String, String)]) -> StdinFeed {
    let mut feed = StdinFeed::spawn(QBROKER, config, &[], env);
    assert_eq!(feed.answer(), "OK", "ready");
    feed
}

fn message(node: u32, i: u64) -> String {
    json_frame("amp-1", "fs_write_data", "/d/f", &file_id(node, i))
}

/// `qbroker stdin` with the target away, messages answered `OK` outside a
/// transaction (so they are in `stdin.wal` and, the seal held back, nowhere
/// else on disk), kill -9 right after the last `OK`, power cut, restart with
/// the target back; returns (answered, delivered).
fn wal_power_cut(fsync: &str) -> (Events, Events) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(&tmp);
    let journal = tmp.path().join("sync.journal");
    let mut sink = Sink::start();
    sink.go_away();
    // Batches leave only by the write-ahead file's checkpoint (every second).
    let config = stdin_config(
        tmp.path(),
        &dir,
        &sink,
        &format!(
            "[batch]\nmax_events = 1000\nmax_age_ms = 600000\nidle_seal_ms = 0\n[spool]\nfsync = \"{fsync}\"\n"
        ),
    );
    let mut feed = stdin_ready(&config, &powercut::env(&dir, &journal));
    let mut answered = BTreeSet::new();
    for i in 0..20 {
        feed.send(&message(1, i));
        assert_eq!(feed.answer(), "OK");
        answered.insert((1, i));
    }
    feed.kill();
    let wal = dir.join("spool/stdin.wal");
    assert!(
        std::fs::metadata(&wal).unwrap().len() > 0,
        "the wal holds the last messages"
    );
    let cuts = powercut::power_cut(&dir, &journal);
    eprintln!("fsync = {fsync}: power cut shortened {cuts:#?}");

    sink.come_back();
    let next = stdin_ready(&config, &[]);
    let got = drained(&sink, next.metrics);
    next.finish();
    assert!(sink.problems().is_empty(), "{:?}", sink.problems());
    (answered, got)
}

#[test]
fn messages_answered_ok_outlive_a_power_cut_with_fsync_always() {
    let (answered, got) = wal_power_cut("always");
    let lost: Vec<_> = answered.difference(&got).collect();
    assert!(
        lost.is_empty(),
        "{} of {} answered OK and lost: {lost:?}",
        lost.len(),
        answered.len()
    );
}

#[test]
fn a_power_cut_loses_messages_answered_ok_with_fsync_never() {
    // `never` gives up the guarantee: neither stdin.wal nor the spool is
    // synced, and what was answered is gone. The proof that the stand-in
    // matters for the write-ahead file too.
    let (answered, got) = wal_power_cut("never");
    let lost = answered.difference(&got).count();
    assert!(
        lost > 0,
        "every message survived a power cut without fsync: the stand-in kept unsynced writes"
    );
    eprintln!(
        "fsync = never: {} of {} answered messages delivered",
        got.len(),
        answered.len()
    );
}

/// The commit barrier: only it can seal (max age of ten minutes, no idle seal)
/// and only it fsyncs (an interval of ten minutes). kill -9 right after the
/// last commit's `OK`, power cut: every committed message is delivered. A
/// barrier that answered before its batches were sealed, appended and fsynced
/// would lose them here.
#[test]
fn a_commit_ok_outlives_a_power_cut_right_after_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(&tmp);
    let journal = tmp.path().join("sync.journal");
    let mut sink = Sink::start();
    sink.go_away();
    let config = stdin_config(
        tmp.path(),
        &dir,
        &sink,
        "[batch]\nmax_events = 1000\nmax_age_ms = 600000\nidle_seal_ms = 0\n\
         [spool]\nfsync = \"interval\"\nfsync_interval_ms = 600000\n",
    );
    let mut feed = stdin_ready(&config, &powercut::env(&dir, &journal));
    let mut committed = BTreeSet::new();
    for round in 0..3u64 {
        feed.send("BEGIN TRANSACTION");
        assert_eq!(feed.answer(), "OK");
        let mut batch = Vec::new();
        for i in 0..100 {
            let index = round * 1000 + i;
            feed.send(&message(2, index));
            assert_eq!(feed.answer(), "DEFER_COMMIT");
            batch.push((2, index));
        }
        feed.send("COMMIT TRANSACTION");
        assert_eq!(feed.answer(), "OK");
        committed.extend(batch);
    }
    // Right after the last OK.
    feed.kill();
    let cuts = powercut::power_cut(&dir, &journal);
    eprintln!("commit barrier: power cut shortened {cuts:#?}");

    sink.come_back();
    let next = stdin_ready(&config, &[]);
    let got = drained(&sink, next.metrics);
    next.finish();
    let lost: Vec<_> = committed.difference(&got).collect();
    assert!(
        lost.is_empty(),
        "{} of {} committed and lost, from {:?}",
        lost.len(),
        committed.len(),
        lost.first()
    );
    assert!(sink.problems().is_empty(), "{:?}", sink.problems());
}
