//! Faults the spool exists for: a long outage of the target, kill -9 of the
//! broker, damaged spool files, and a full spool. Loopback only, bounded in time.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// Accepted events, each batch id counted once; an event in two different
/// batches is a real duplicate and fails the test.
fn delivered(sink: &Sink) -> BTreeSet<(u32, u64)> {
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

/// Every event any request carried, accepted or not.
fn seen(sink: &Sink) -> BTreeSet<(u32, u64)> {
    sink.requests()
        .iter()
        .flat_map(|r| {
            r.body["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(identity)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Send numbered frames at about `per_sec` until `stop`; returns how many were written.
fn paced_sender(
    addr: std::net::SocketAddr,
    host: &'static str,
    node: u32,
    per_sec: u64,
    stop: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
        let start = Instant::now();
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let due = start.elapsed().as_secs_f64() * per_sec as f64;
            while (i as f64) < due {
                let f = framed(
                    &json_frame(host, "fs_write_data", "/data/f", &file_id(node, i)),
                    false,
                );
                if s.write_all(&f).is_err() {
                    return;
                }
                i += 1;
                written.store(i, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    })
}

#[test]
fn a_30_second_outage_at_steady_load_loses_nothing() {
    let sink = Sink::start();
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&config_text(&sink, dir.path(), ""));
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let sender = paced_sender(
        broker.syslog,
        "omega-1",
        1,
        1000,
        stop.clone(),
        written.clone(),
    );
    std::thread::sleep(Duration::from_secs(2));
    sink.set_mode(Mode::Fail(503, None));
    let outage = Instant::now();
    let mut max_queue_bytes = 0f64;
    let mut max_spool_bytes = 0f64;
    while outage.elapsed() < Duration::from_secs(30) {
        let text = broker.metrics_text();
        max_queue_bytes = max_queue_bytes.max(metric_value(&text, "qbroker_queue_bytes").unwrap());
        max_spool_bytes = max_spool_bytes
            .max(metric_value(&text, "qbroker_spool_bytes{target=\"sink\"}").unwrap());
        std::thread::sleep(Duration::from_millis(500));
    }
    sink.set_mode(Mode::Accept);
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    let n = written.load(Ordering::Relaxed);
    assert!(n >= 30_000, "only {n} frames sent");
    wait_for(Duration::from_secs(30), || {
        (delivered(&sink).len() as u64 >= n).then_some(())
    });
    assert_eq!(
        delivered(&sink),
        (0..n).map(|i| (1, i)).collect::<BTreeSet<_>>()
    );
    // The backlog waited on disk, not in memory.
    assert!(
        max_spool_bytes > 1_000_000.0,
        "the spool held {max_spool_bytes} bytes at most"
    );
    assert!(
        max_queue_bytes < 4_000_000.0,
        "the queue held {max_queue_bytes} bytes"
    );
    let failures = sink.requests().iter().filter(|r| !r.accepted).count();
    assert!(
        failures >= 30,
        "{failures} requests refused during the outage"
    );
    assert!(sink.problems().is_empty(), "{:?}", sink.problems());
}

fn process_config(dir: &Path, sink: &Sink, fsync: &str) -> PathBuf {
    let text = config_text(sink, dir, &format!("\n[spool]\nfsync = \"{fsync}\"\n"));
    let path = dir.join("qbroker.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// kill -9 mid-stream while the target refuses, restart, and return (frames the
/// broker had read, events delivered in the end).
fn kill_and_restart(fsync: &str) -> (u64, BTreeSet<(u32, u64)>) {
    let sink = Sink::start();
    let dir = tempfile::tempdir().unwrap();
    let config = process_config(dir.path(), &sink, fsync);
    let mut broker = BrokerProcess::spawn(QBROKER, &config);
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let sender = paced_sender(
        broker.syslog,
        "sigma-1",
        1,
        5000,
        stop.clone(),
        written.clone(),
    );
    wait_for(Duration::from_secs(20), || {
        (sink.accepted().len() >= 5).then_some(())
    });
    sink.set_mode(Mode::Fail(503, None));
    std::thread::sleep(Duration::from_millis(800));
    let read = broker
        .metric("qbroker_cluster_frames_total{cluster=\"sigma\"}")
        .unwrap() as u64;
    broker.signal_and_wait("KILL");
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    let seen_before = seen(&sink);

    sink.set_mode(Mode::Accept);
    let again = BrokerProcess::spawn(QBROKER, &config);
    // Deliveries stop growing once the spool is replayed.
    let mut last = (0, Instant::now());
    let got = wait_for(Duration::from_secs(30), || {
        let got = delivered(&sink);
        if got.len() != last.0 {
            last = (got.len(), Instant::now());
            None
        } else if !got.is_empty() && last.1.elapsed() > Duration::from_secs(2) {
            Some(got)
        } else {
            None
        }
    });
    assert_eq!(
        again.metric("qbroker_spool_unacked_batches{target=\"sink\"}"),
        Some(0.0)
    );
    // Everything that reached the target's door was spooled, so it survived.
    let lost: Vec<_> = seen_before.difference(&got).take(5).collect();
    assert!(lost.is_empty(), "spooled events lost: {lost:?}");
    // Batches are spooled in order: what survived is a prefix of what was sent.
    let n = got.len() as u64;
    assert_eq!(
        got,
        (0..n).map(|i| (1, i)).collect::<BTreeSet<_>>(),
        "a hole in what survived"
    );
    assert!(
        n <= read + 5000,
        "delivered {n}, but only about {read} were read"
    );
    (read, got)
}

#[test]
fn kill_9_with_fsync_always_loses_nothing_spooled() {
    let (read, got) = kill_and_restart("always");
    eprintln!(
        "fsync=always: about {read} frames read before kill -9; {} delivered after restart; {} in flight, not yet spooled",
        got.len(),
        read.saturating_sub(got.len() as u64)
    );
}

#[test]
fn kill_9_with_the_default_policy_reports_what_was_in_flight() {
    let (read, got) = kill_and_restart("interval");
    eprintln!(
        "fsync=interval: about {read} frames read before kill -9; {} delivered after restart; {} in flight, not yet spooled",
        got.len(),
        read.saturating_sub(got.len() as u64)
    );
}

#[test]
fn a_truncated_and_a_bit_flipped_segment_are_set_aside_and_the_rest_delivered() {
    let mut sink = Sink::start();
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(&sink, dir.path(), "").replace("grace_secs = 5", "grace_secs = 1");
    // Spool everything with the target away, then stop cleanly.
    sink.go_away();
    let broker = Broker::start(&text);
    let n = 2000u64;
    let mut s = TcpStream::connect(broker.syslog).unwrap();
    for i in 0..n {
        s.write_all(&framed(
            &json_frame("tau-1", "fs_create_file", "/d/f", &file_id(1, i)),
            false,
        ))
        .unwrap();
    }
    drop(s);
    wait_for(Duration::from_secs(20), || {
        (broker.metric("qbroker_cluster_frames_total{cluster=\"tau\"}")? == n as f64).then_some(())
    });
    broker.stop();

    // Damage the spool: flip a bit in the middle of the first segment, and tear
    // the last record of the last one in half.
    let spool = dir.path().join("spool/sink");
    let mut segments: Vec<PathBuf> = std::fs::read_dir(&spool)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segments.sort();
    assert!(!segments.is_empty());
    let first = &segments[0];
    let mut bytes = std::fs::read(first).unwrap();
    let at = bytes.len() * 2 / 5;
    bytes[at] ^= 0x10;
    std::fs::write(first, &bytes).unwrap();
    let last = segments.last().unwrap();
    let len = std::fs::metadata(last).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(last)
        .unwrap()
        .set_len(len - 100)
        .unwrap();

    sink.come_back();
    let broker = Broker::start(&text);
    let mut last_len = (0, Instant::now());
    let got = wait_for(Duration::from_secs(30), || {
        let got = delivered(&sink);
        if got.len() != last_len.0 {
            last_len = (got.len(), Instant::now());
            None
        } else if !got.is_empty() && last_len.1.elapsed() > Duration::from_secs(2) {
            Some(got)
        } else {
            None
        }
    });
    // Two batches (of at most 50 events) are gone: the flipped one, set aside,
    // and the torn one; each is one contiguous run. The rest arrived.
    let missing: Vec<u64> = (0..n).filter(|i| !got.contains(&(1, *i))).collect();
    let mut runs = BTreeMap::new();
    for &i in &missing {
        let start = if i > 0 && missing.contains(&(i - 1)) {
            *runs.keys().next_back().unwrap()
        } else {
            i
        };
        *runs.entry(start).or_insert(0u64) += 1;
    }
    assert_eq!(runs.len(), 2, "missing runs {runs:?}");
    assert!(runs.values().all(|&len| len <= 50), "missing runs {runs:?}");
    assert!(
        broker
            .metric("qbroker_spool_corrupt_records_total{target=\"sink\"}")
            .unwrap()
            >= 1.0
    );
    let set_aside: Vec<_> = std::fs::read_dir(&spool)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".corrupt"))
        .collect();
    assert_eq!(set_aside.len(), 1, "the damaged bytes are kept aside");
    broker.stop();
}

#[test]
fn a_full_spool_pushes_back_and_intake_resumes_when_the_target_returns() {
    let mut sink = Sink::start();
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}\n[queue]\nsize = 5000\nmax_bytes = 4194304\n[spool]\nmax_bytes = 524288\nsegment_bytes = 65536\n",
        config_text(&sink, dir.path(), "")
    )
    .replace("max_events = 50", "max_events = 50\nmax_bytes = 65536");
    sink.go_away();
    let broker = Broker::start(&text);
    let pad = "q".repeat(1900);
    let n = 30_000u64;
    let written = Arc::new(AtomicU64::new(0));
    let addr = broker.syslog;
    let w2 = written.clone();
    let writer = std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(90))).unwrap();
        for i in 0..n {
            let f = framed(
                &json_frame(
                    "upsilon-1",
                    "fs_write_data",
                    &format!("/{pad}"),
                    &file_id(1, i),
                ),
                false,
            );
            s.write_all(&f).unwrap();
            w2.fetch_add(f.len() as u64, Ordering::Relaxed);
        }
    });
    wait_for(Duration::from_secs(20), || {
        (broker.metric("qbroker_spool_full_waits_total{target=\"sink\"}")? >= 1.0).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    let before = written.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(1));
    let after = written.load(Ordering::Relaxed);
    assert_eq!(
        before, after,
        "the sender must be held back while the spool is full"
    );
    assert!(after < n * 2000 / 2, "{after} bytes written");
    let text_now = broker.metrics_text();
    let spool_bytes = metric_value(&text_now, "qbroker_spool_bytes{target=\"sink\"}").unwrap();
    assert!(
        spool_bytes <= 524_288.0 + 65_536.0,
        "the spool holds {spool_bytes} bytes"
    );
    assert!(metric_value(&text_now, "qbroker_queue_bytes").unwrap() <= 4_194_304.0 + 65_536.0);

    sink.come_back();
    writer.join().unwrap();
    wait_for(Duration::from_secs(60), || {
        (delivered(&sink).len() as u64 >= n).then_some(())
    });
    assert_eq!(
        delivered(&sink),
        (0..n).map(|i| (1, i)).collect::<BTreeSet<_>>()
    );
    broker.stop();
}

/// Deliveries, once they stop growing for two seconds.
fn settled(sink: &Sink, within: Duration) -> BTreeSet<(u32, u64)> {
    let mut last = (0, Instant::now());
    wait_for(within, || {
        let got = delivered(sink);
        if got.len() != last.0 {
            last = (got.len(), Instant::now());
            None
        } else if !got.is_empty() && last.1.elapsed() > Duration::from_secs(2) {
            Some(got)
        } else {
            None
        }
    })
}

/// SIGTERM while the target is away and the spool is at its cap, with the work
/// queue holding thousands of frames: what is in memory goes to disk past the
/// cap, the broker exits within its grace period, its last line says nothing
/// was lost, and after a restart every frame it had read is delivered.
#[test]
fn sigterm_with_the_spool_at_its_cap_keeps_the_work_queue() {
    let mut sink = Sink::start();
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}\n[queue]\nsize = 100000\nmax_bytes = 67108864\n[spool]\nmax_bytes = 1048576\nsegment_bytes = 131072\n",
        config_text(&sink, dir.path(), "").replace("max_events = 50", "max_events = 50\nmax_bytes = 65536")
    );
    let config = dir.path().join("qbroker.toml");
    std::fs::write(&config, text).unwrap();
    sink.go_away();
    let mut broker = BrokerProcess::spawn(QBROKER, &config);
    let stop = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> = [("phi-1", 1), ("phi-2", 2)]
        .into_iter()
        .map(|(host, node)| {
            paced_sender(
                broker.syslog,
                host,
                node,
                5000,
                stop.clone(),
                Arc::new(AtomicU64::new(0)),
            )
        })
        .collect();
    // The spool fills, then the queue holds what the workers cannot append.
    wait_for(Duration::from_secs(60), || {
        let full = broker.metric("qbroker_spool_full_waits_total{target=\"sink\"}")?;
        let queued = broker.metric("qbroker_queue_messages")?;
        (full >= 1.0 && queued >= 10_000.0).then_some(())
    });
    let queued = broker.metric("qbroker_queue_messages").unwrap();
    stop.store(true, Ordering::Relaxed);
    let signalled = Instant::now();
    let status = broker.signal_and_wait("TERM");
    let took = signalled.elapsed();
    for s in senders {
        s.join().unwrap();
    }
    assert!(status.success(), "{status:?}");
    let log = broker.log();
    // grace_secs = 5 in the test configuration; exit well within a second more.
    assert!(
        took < Duration::from_secs(8),
        "exit took {took:?} after SIGTERM"
    );
    assert!(
        !log.iter().any(|l| l.contains("batch lost")),
        "a loss was logged:\n{}",
        log.join("\n")
    );
    let last = log
        .iter()
        .rev()
        .find(|l| l.contains("qbroker stopped"))
        .expect("a last line");
    assert!(
        last.contains("lost_events=0") && last.contains("delivered_everything=false"),
        "{last}"
    );
    let spooled = log_field(&log, "qbroker stopped", "spooled_batches").unwrap();
    assert!(spooled > 0, "{last}");
    let read = log_field(&log, "cluster totals", "frames").unwrap();
    assert!(
        read as f64 >= queued,
        "read {read} frames, {queued} were queued at the signal"
    );

    // Restart with the target back: every frame read before the signal arrives.
    sink.come_back();
    let _again = BrokerProcess::spawn(QBROKER, &config);
    let got = settled(&sink, Duration::from_secs(90));
    for node in [1, 2] {
        let n = got.iter().filter(|e| e.0 == node).count() as u64;
        let want: BTreeSet<_> = (0..n).map(|i| (node, i)).collect();
        let mine: BTreeSet<_> = got.iter().filter(|e| e.0 == node).copied().collect();
        assert_eq!(mine, want, "node {node}: a hole in what was delivered");
    }
    assert_eq!(got.len() as u64, read, "every frame read was delivered");
    assert!(sink.problems().is_empty(), "{:?}", sink.problems());
    let events_in_requests: usize = sink
        .accepted()
        .iter()
        .map(|r| r.body["events"].as_array().unwrap().len())
        .sum();
    eprintln!(
        "sigterm at the spool cap: {queued} frames queued at the signal, exit {took:.2?} after it, \
         {spooled} batches spooled, {read} frames read; after the restart {} events delivered, \
         {} duplicated (events in accepted requests beyond the unique ones)",
        got.len(),
        events_in_requests - got.len()
    );
}

/// Segment files of the spool of target `sink`, in id order, with their first ids.
fn segments_of(spool: &Path) -> Vec<(u64, PathBuf)> {
    let mut segments: Vec<(u64, PathBuf)> = std::fs::read_dir(spool)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .map(|p| {
            let id = p.file_stem().unwrap().to_str().unwrap().parse().unwrap();
            (id, p)
        })
        .collect();
    segments.sort();
    segments
}

/// A middle segment deleted and the first one emptied by hand: the next start
/// names the missing batch ids in the log, the metric and the spool's
/// missing.log (which `qbroker doctor` reads), and delivers the rest.
#[test]
fn a_deleted_and_an_emptied_segment_are_reported_as_missing_batches() {
    let mut sink = Sink::start();
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}\n[spool]\nsegment_bytes = 65536\n",
        config_text(&sink, dir.path(), "").replace("grace_secs = 5", "grace_secs = 1")
    );
    let config = dir.path().join("qbroker.toml");
    std::fs::write(&config, text).unwrap();
    sink.go_away();
    let mut broker = BrokerProcess::spawn(QBROKER, &config);
    let n = 3000u64;
    let mut s = TcpStream::connect(broker.syslog).unwrap();
    for i in 0..n {
        s.write_all(&framed(
            &json_frame("kappa-1", "fs_create_file", "/d/f", &file_id(1, i)),
            false,
        ))
        .unwrap();
    }
    drop(s);
    wait_for(Duration::from_secs(30), || {
        (broker.metric("qbroker_cluster_frames_total{cluster=\"kappa\"}")? == n as f64)
            .then_some(())
    });
    // A fresh spool misses nothing.
    assert_eq!(
        broker.metric("qbroker_spool_missing_batches{target=\"sink\"}"),
        Some(0.0)
    );
    assert!(broker.signal_and_wait("TERM").success());

    let spool = dir.path().join("spool/sink");
    assert!(!spool.join("missing.log").exists());
    let segments = segments_of(&spool);
    assert!(segments.len() >= 6, "{segments:?}");
    // Emptied: the first segment; deleted: the fourth.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segments[0].1)
        .unwrap()
        .set_len(0)
        .unwrap();
    std::fs::remove_file(&segments[3].1).unwrap();
    let missing = (segments[1].0 - segments[0].0) + (segments[4].0 - segments[3].0);

    sink.come_back();
    let again = BrokerProcess::spawn(QBROKER, &config);
    let got = settled(&sink, Duration::from_secs(60));
    let log = again.log();
    assert!(
        log.iter()
            .any(|l| l.contains("batches missing from the spool")
                && l.contains(&format!("missing={missing}"))),
        "{}",
        log.join("\n")
    );
    assert_eq!(
        again.metric("qbroker_spool_missing_batches{target=\"sink\"}"),
        Some(missing as f64)
    );
    let recorded = std::fs::read_to_string(spool.join("missing.log")).unwrap();
    assert!(
        recorded.contains(&format!("missing={missing} ")),
        "{recorded}"
    );
    // What was not in the two segments arrived; at most 50 events per batch are gone.
    let lost = n - got.len() as u64;
    assert!(
        lost > 0 && lost <= missing * 50,
        "lost {lost} events, {missing} batches missing"
    );
    eprintln!(
        "missing segments: {n} events spooled in {} segments, one emptied and one deleted; \
         {missing} batches reported missing; {} events delivered, {lost} gone",
        segments.len(),
        got.len()
    );
}

/// While the broker does not read (the spool is full, the queue too), a node's
/// frame and idle clocks stand still: a pause longer than both deadlines closes
/// no connection, and everything is delivered once the target is back.
#[test]
fn a_long_pause_in_reading_times_out_no_connection() {
    let mut sink = Sink::start();
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}\n[queue]\nsize = 2000\nmax_bytes = 1048576\n[spool]\nmax_bytes = 262144\nsegment_bytes = 65536\n[ingest]\nidle_timeout_secs = 2\nframe_timeout_secs = 1\n",
        config_text(&sink, dir.path(), "").replace("max_events = 50", "max_events = 50\nmax_bytes = 65536")
    );
    sink.go_away();
    let broker = Broker::start(&text);
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let sender = paced_sender(
        broker.syslog,
        "chi-1",
        1,
        2000,
        stop.clone(),
        written.clone(),
    );
    wait_for(Duration::from_secs(30), || {
        (broker.metric("qbroker_reading_paused_total")? >= 1.0).then_some(())
    });
    // Paused for three times the idle deadline and six times the frame one.
    std::thread::sleep(Duration::from_secs(6));
    assert!(broker.metric("qbroker_queue_waiting_readers").unwrap() >= 1.0);
    sink.come_back();
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    let n = written.load(Ordering::Relaxed);
    wait_for(Duration::from_secs(60), || {
        (delivered(&sink).len() as u64 >= n).then_some(())
    });
    assert_eq!(
        delivered(&sink),
        (0..n).map(|i| (1, i)).collect::<BTreeSet<_>>()
    );
    assert_eq!(broker.metric("qbroker_frame_timeouts_total"), Some(0.0));
    assert_eq!(broker.metric("qbroker_idle_timeouts_total"), Some(0.0));
    broker.stop();
}
