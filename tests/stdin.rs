//! `qbroker stdin` (the binary) over real pipes, speaking omprog's protocol by
//! hand: the answers, the commit barrier (kill -9 right after a commit's `OK`,
//! and a fresh broker on the same spool delivers every committed message),
//! `--no-confirm`, `--once` (explain and deliver one line), and the spool lock
//! that keeps two brokers off one spool. tests/rsyslog.rs runs it under a real
//! rsyslog.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn write_config(dir: &std::path::Path, url: &str, ca: &std::path::Path) -> std::path::PathBuf {
    let text = format!(
        r#"listen = "127.0.0.1:0"
metrics_listen = "127.0.0.1:0"
workers = 2
data_dir = "{data}"
default_target = "sink"
[batch]
max_events = 50
max_age_ms = 50
[shutdown]
grace_secs = 5
[[targets]]
name = "sink"
url = "{url}"
ca_file = "{ca}"
retry_initial_ms = 20
retry_max_ms = 200
"#,
        data = dir.join("data").display(),
        ca = ca.display()
    );
    let path = dir.join("qbroker.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn delivered(sink: &Sink) -> BTreeSet<(u32, u64)> {
    sink.events().iter().map(|(_, e)| identity(e)).collect()
}

#[test]
fn a_commit_is_answered_only_once_its_messages_are_in_the_spool() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start();
    // The target is away while qbroker stdin runs: whatever is committed can
    // only be in the spool.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = write_config(
        dir.path(),
        &format!("https://{closed}/events"),
        &sink.ca_file,
    );
    let mut feed = StdinFeed::spawn(QBROKER, &config, &[], &[]);
    assert_eq!(feed.answer(), "OK", "ready");
    let mut expected = BTreeSet::new();
    for round in 0..3u64 {
        feed.send("BEGIN TRANSACTION");
        assert_eq!(feed.answer(), "OK");
        for i in 0..40u64 {
            let index = round * 100 + i;
            let host = if i % 2 == 0 { "alpha-1" } else { "beta-2" };
            feed.send(&json_frame(
                host,
                "fs_write_data",
                "/d/f",
                &file_id(1, index),
            ));
            assert_eq!(feed.answer(), "DEFER_COMMIT");
            expected.insert((1, index));
        }
        // Filtered and bad lines are answered like the rest.
        feed.send(&json_frame(
            "alpha-1",
            "fs_read_metadata",
            "/d/",
            &file_id(9, round),
        ));
        assert_eq!(feed.answer(), "DEFER_COMMIT");
        feed.send("<14>1 2026-11-26T10:00:00Z alpha-1 qumulo - - - not an audit record");
        assert_eq!(feed.answer(), "DEFER_COMMIT");
        feed.send("COMMIT TRANSACTION");
        assert_eq!(feed.answer(), "OK");
    }
    // Outside a transaction each message is answered OK once it is in the
    // write-ahead file.
    feed.send(&json_frame(
        "alpha-1",
        "fs_write_data",
        "/d/f",
        &file_id(2, 0),
    ));
    assert_eq!(feed.answer(), "OK");
    expected.insert((2, 0));
    // A transaction cut short: rsyslog does not send these again to the next
    // process (it resumes after them), so qbroker must have kept them.
    feed.send("BEGIN TRANSACTION");
    assert_eq!(feed.answer(), "OK");
    for i in 0..10u64 {
        feed.send(&json_frame(
            "beta-2",
            "fs_write_data",
            "/d/g",
            &file_id(3, i),
        ));
        assert_eq!(feed.answer(), "DEFER_COMMIT");
        expected.insert((3, i));
    }
    // Dead: nothing gets to drain.
    feed.child.kill().unwrap();
    feed.child.wait().unwrap();
    let wal = dir.path().join("data/spool/stdin.wal");
    assert!(std::fs::metadata(&wal).unwrap().len() > 0);

    // The next qbroker stdin, the target back: the spool holds every committed
    // message, the write-ahead file the others.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace(&format!("https://{closed}/events"), &sink.url());
    std::fs::write(&config, text).unwrap();
    let mut next = StdinFeed::spawn(QBROKER, &config, &[], &[]);
    assert_eq!(next.answer(), "OK");
    wait_for(Duration::from_secs(30), || {
        expected.is_subset(&delivered(&sink)).then_some(())
    });
    assert_eq!(
        std::fs::metadata(&wal).unwrap().len(),
        0,
        "replayed messages are committed at once"
    );
    assert!(next.finish().success());
    let events = sink.events();
    assert!(events.iter().all(|(c, _)| c == "alpha" || c == "beta"));
    assert!(
        events.iter().all(|(_, e)| identity(e).0 != 9),
        "filtered lines make no event"
    );
    let dead = std::fs::read_to_string(dir.path().join("data/dead-letter/frames.jsonl")).unwrap();
    assert_eq!(
        dead.lines().count(),
        3,
        "bad lines are dead letters:\n{dead}"
    );
    // (No check_batches: `seq` starts again at 0 in the second process.)
    assert!(sink.problems().is_empty(), "{:?}", sink.problems());
}

#[test]
fn without_confirmations_nothing_is_written_and_the_end_of_input_drains() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start();
    let config = write_config(dir.path(), &sink.url(), &sink.ca_file);
    let mut feed = StdinFeed::spawn(QBROKER, &config, &["--no-confirm"], &[]);
    let mut expected = BTreeSet::new();
    // omprog's default template (RSYSLOG_FileFormat), what the reference
    // Broker binary read: TIMESTAMP HOSTNAME TAG MSG.
    for i in 0..300u64 {
        let frame = json_frame("gamma-3", "fs_create_file", "/x/new", &file_id(3, i));
        let msg = frame.split_once(" qumulo - - - ").unwrap().1;
        feed.send(&format!(
            "2026-11-26T10:00:00.123456+00:00 gamma-3 qumulo {msg}"
        ));
        expected.insert((3, i));
    }
    let mut rest = String::new();
    let status = {
        drop(feed.input.take());
        let status = feed.child.wait().unwrap();
        std::io::Read::read_to_string(&mut feed.output, &mut rest).unwrap();
        status
    };
    assert!(status.success());
    assert_eq!(rest, "", "no answers without confirmMessages");
    // The end of input shut the broker down after delivering (grace period).
    assert_eq!(delivered(&sink), expected);
    assert!(sink.events().iter().all(|(c, e)| c == "gamma"
        && e["operation"] == "file.create"
        && e["time"] == "2026-11-26T10:00:00.123Z"));
}

fn once(config: &std::path::Path, input: impl AsRef<[u8]>, extra: &[&str]) -> (i32, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_qbroker"))
        .args(["stdin", "--once", "--config"])
        .arg(config)
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_ref())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{text}{}", String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn once_explains_a_line_and_delivers_it() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start();
    let config = write_config(dir.path(), &sink.url(), &sink.ca_file);

    // The troubleshooting guide's form: rsyslog's file format, the JSON
    // pretty-printed over several lines.
    let pasted = "2023-03-03T14:08:51.058379Z q-varonis-1 qumulo\n{\n  \"user_id\": {\"sid\": \"S-1-5-21-1\", \"auth_id\": \"500\", \"name\": \"admin\"},\n  \"user_ip\": \"10.1.2.3\",\n  \"protocol\": \"smb2\",\n  \"operation\": \"fs_create_file\",\n  \"status\": \"ok\",\n  \"details\": {\"file_id\": \"1000003\", \"path\": \"/my-file.txt\"}\n}\n";
    let (code, out) = once(&config, pasted, &["--dry-run"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("result    event file.create"), "{out}");
    assert!(out.contains("\"path\": \"/my-file.txt\""), "{out}");
    assert!(
        out.contains("node      q-varonis-1: cluster q-varonis"),
        "{out}"
    );
    assert!(
        !out.contains("delivery"),
        "--dry-run delivers nothing: {out}"
    );
    assert_eq!(sink.request_count(), 0);

    let (code, out) = once(&config, pasted, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "delivery  target sink ({}): 1 event(s) delivered in 1 batch(es)",
            sink.url()
        )),
        "{out}"
    );
    let events = sink.events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].0, "q-varonis");
    assert_eq!(events[0].1["path"], "/my-file.txt");
    assert!(
        !dir.path().join("data").exists(),
        "--once keeps the configured spool out of it"
    );

    let (code, out) = once(
        &config,
        json_frame("q-1", "fs_read_metadata", "/", "2"),
        &[],
    );
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("result    filtered (operation): operation \"fs_read_metadata\" is not in [filter] operations"), "{out}");

    let (code, out) = once(&config, "this is not syslog\n", &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("result    invalid (header)"), "{out}");
    assert_eq!(sink.request_count(), 1, "nothing more was sent");

    // A target that refuses the batch for good, and one that is away.
    sink.set_mode(Mode::Fail(400, None));
    let line = json_frame("q-1", "fs_write_data", "/f", "5");
    let (code, out) = once(&config, &line, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("1 event(s) refused for good"), "{out}");
    sink.set_mode(Mode::Fail(503, None));
    let (code, out) = once(&config, &line, &["--timeout-secs", "2"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("NOT DELIVERED: 1 batch(es) still unacknowledged after 2 s"),
        "{out}"
    );
}

#[test]
fn two_brokers_never_share_a_spool() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start();
    let config = write_config(dir.path(), &sink.url(), &sink.ca_file);
    let mut feed = StdinFeed::spawn(QBROKER, &config, &[], &[]);
    assert_eq!(feed.answer(), "OK");
    let out = Command::new(env!("CARGO_BIN_EXE_qbroker"))
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is locked by another qbroker"), "{err}");
    assert!(feed.finish().success());
    // Once the first one is gone, the lock is free again.
    let mut again = StdinFeed::spawn(QBROKER, &config, &[], &[]);
    assert_eq!(again.answer(), "OK");
}

/// A line with bytes that are not UTF-8 becomes an event with U+FFFD in their
/// place, as on the TCP path; it is not refused.
#[test]
fn once_takes_invalid_utf8_as_the_tcp_path_does() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start();
    let config = write_config(dir.path(), &sink.url(), &sink.ca_file);
    let mut line = json_frame("q-1", "fs_create_file", "/caf~", "2").into_bytes();
    let at = line.iter().position(|&b| b == b'~').unwrap();
    line[at] = 0xff; // a byte that starts no UTF-8 sequence
    line.push(b'\n');
    let (code, out) = once(&config, &line, &["--dry-run"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("result    event file.create"), "{out}");
    assert!(out.contains("\u{fffd}"), "{out}");
}

/// `--once` routes as the running broker does: a cluster registered through
/// the API goes to its registered target (not "dropped"), and a line whose
/// cluster has no target at all is reported undelivered with exit status 1.
#[test]
fn once_uses_the_registry_and_its_exit_status_matches_the_text() {
    let dir = tempfile::tempdir().unwrap();
    let configured = Sink::start();
    let registered = Sink::start();
    let registry = dir.path().join("registry.sqlite3");
    // No default target: only registered clusters have somewhere to go.
    let config = write_config(dir.path(), &configured.url(), &configured.ca_file);
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("default_target = \"sink\"\n", "")
        + &format!(
            "[[targets]]\nname = \"other\"\nurl = \"{}\"\nca_file = \"{}\"\n[store]\nurl = \"sqlite://{}\"\n",
            configured.url(),
            configured.ca_file.display(),
            registry.display()
        );
    std::fs::write(&config, text).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cfg = qbroker::config::RawConfig::load(&config)
            .unwrap()
            .validate()
            .unwrap();
        let store = qbroker::store::Store::open(cfg.store.as_ref().unwrap())
            .await
            .unwrap();
        let mut reg = qbroker::store::Registration::new("reg", &registered.url());
        reg.ca_certificate = Some(std::fs::read_to_string(&registered.ca_file).unwrap());
        store.insert(&reg).await.unwrap();
        store.close().await;
    });

    let (code, out) = once(
        &config,
        json_frame("reg-1", "fs_create_file", "/r", "5"),
        &[],
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("target @reg (registered through the API)"),
        "{out}"
    );
    assert!(!out.contains("would be dropped"), "{out}");
    assert!(out.contains("delivery  target @reg"), "{out}");
    assert_eq!(registered.events().len(), 1);

    let (code, out) = once(
        &config,
        json_frame("lost-1", "fs_create_file", "/l", "6"),
        &[],
    );
    assert!(out.contains("would be dropped"), "{out}");
    assert!(out.contains("nothing to deliver"), "{out}");
    assert_eq!(code, 1, "nothing was delivered: {out}");
    assert!(configured.events().is_empty());
}
