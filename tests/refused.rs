//! Batches a target refuses for good: split on 413 down to single events,
//! kept in the dead-letter directory up to a cap (past it the target is
//! paused, nothing dropped), and put back into the spool by `qbroker replay`.
//! Loopback only, bounded in time.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

/// Accepted events, each batch id counted once.
fn delivered(sink: &Sink) -> BTreeSet<(u32, u64)> {
    let mut keys = BTreeSet::new();
    let mut ids = BTreeSet::new();
    for r in sink.accepted() {
        if keys.insert(r.idempotency_key.clone()) {
            for e in r.body["events"].as_array().unwrap() {
                assert!(ids.insert(identity(e)), "event delivered twice: {e}");
            }
        }
    }
    ids
}

fn send(addr: std::net::SocketAddr, host: &str, node: u32, n: u64) {
    let mut s = TcpStream::connect(addr).unwrap();
    for i in 0..n {
        s.write_all(&framed(
            &json_frame(host, "fs_create_file", "/d/f", &file_id(node, i)),
            false,
        ))
        .unwrap();
    }
}

fn dead_lettered_files(data: &Path) -> usize {
    std::fs::read_dir(data.join("dead-letter/batches/sink"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".meta.json"))
                .count()
        })
        .unwrap_or(0)
}

/// A proxy in front of the target takes at most 12 events per request: every
/// 50-event batch is split (25, 12/13, 6/7) until the parts pass; all arrive,
/// none is dead-lettered, and the parts carry stable derived ids.
#[test]
fn a_413_splits_the_batch_until_the_parts_pass() {
    let sink = Sink::start();
    sink.set_mode(Mode::TooLarge(12));
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&config_text(&sink, dir.path(), ""));
    send(broker.syslog, "rho-1", 1, 500);
    wait_for(Duration::from_secs(30), || {
        (delivered(&sink).len() == 500).then_some(())
    });
    assert_eq!(delivered(&sink), (0..500).map(|i| (1, i)).collect());
    assert!(sink
        .accepted()
        .iter()
        .all(|r| r.body["events"].as_array().unwrap().len() <= 12));
    assert!(sink
        .accepted()
        .iter()
        .all(|r| r.idempotency_key.contains('.')));
    assert!(
        broker
            .metric("qbroker_target_batches_split_total{target=\"sink\"}")
            .unwrap()
            >= 10.0
    );
    assert_eq!(
        broker.metric("qbroker_target_batches_dead_lettered_total{target=\"sink\"}"),
        Some(0.0)
    );
    assert!(sink.problems().is_empty(), "{:?}", sink.problems());
    broker.stop();
}

/// Everything refused for good (400): the batches fill the dead-letter
/// directory up to `max_batch_bytes`, then the target is paused with the rest
/// in its spool. Once the target is fixed, the spooled batches flow, and
/// `qbroker replay` (broker stopped) puts the dead-lettered ones back: every
/// event arrives, none twice.
#[test]
fn the_dead_letter_cap_pauses_the_target_and_replay_recovers_everything() {
    let sink = Sink::start();
    sink.set_mode(Mode::Fail(400, None));
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}\n[dead_letter]\nmax_batch_bytes = 40000\n",
        config_text(&sink, dir.path(), "").replace("grace_secs = 5", "grace_secs = 1")
    );
    let config = dir.path().join("qbroker.toml");
    std::fs::write(&config, &text).unwrap();
    let broker = Broker::start(&text);
    let n = 1000u64;
    send(broker.syslog, "sigma-1", 1, n);
    wait_for(Duration::from_secs(30), || {
        (broker.metric("qbroker_target_dead_letter_failures_total{target=\"sink\"}")? >= 1.0)
            .then_some(())
    });
    let kept = dead_lettered_files(dir.path());
    assert!(kept >= 1, "some batches were dead-lettered");
    let unacked = broker
        .metric("qbroker_spool_unacked_batches{target=\"sink\"}")
        .unwrap();
    assert!(unacked >= 1.0, "the rest waits in the spool");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(dead_lettered_files(dir.path()), kept, "the cap holds");

    // The target is fixed: what waited in the spool flows.
    sink.set_mode(Mode::Accept);
    wait_for(Duration::from_secs(30), || {
        (broker.metric("qbroker_spool_unacked_batches{target=\"sink\"}")? == 0.0).then_some(())
    });
    broker.stop();
    let before_replay = delivered(&sink);
    assert!((before_replay.len() as u64) < n);

    let replay = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_qbroker"))
            .args(["replay", "--config"])
            .arg(&config)
            .args(extra)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let dry = replay(&["--dry-run", "--target", "sink"]);
    assert!(
        dry.contains(&format!("{kept} batch(es)")) && dry.contains("would be put back"),
        "{dry}"
    );
    assert_eq!(
        dead_lettered_files(dir.path()),
        kept,
        "a dry run changes nothing"
    );
    let none = replay(&["--target", "other"]);
    assert!(none.contains("0 batch(es)"), "{none}");
    let done = replay(&["--since", "2020-01-01T00:00:00Z"]);
    assert!(done.contains(&format!("{kept} batch(es)")), "{done}");
    assert_eq!(dead_lettered_files(dir.path()), 0);

    let broker = Broker::start(&text);
    wait_for(Duration::from_secs(30), || {
        (delivered(&sink).len() as u64 == n).then_some(())
    });
    assert_eq!(delivered(&sink), (0..n).map(|i| (1, i)).collect());
    broker.stop();
}
