//! qbroker behind a real rsyslog (the Debian package's /usr/sbin/rsyslogd, run
//! unprivileged-style: a private configuration and work directory in a
//! tempdir, imtcp on a loopback port), with the snippets shipped in
//! deploy/rsyslog/:
//!
//! - 10-qbroker-omprog.conf: rsyslog runs `qbroker stdin` through omprog
//!   (confirmMessages, useTransactions); every message arrives exactly once,
//!   and killing qbroker with SIGKILL mid-stream loses none (rsyslog sends the
//!   unconfirmed ones again);
//! - the reference's own omprog shape (default template, no confirmations);
//! - 10-qbroker-forward.conf: omfwd with octet framing and a disk-assisted
//!   queue that keeps messages across an rsyslog restart while qbroker is away.
//!
//! These tests need rsyslog installed (.ci/run installs it) and fail, saying
//! so, when it is not.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const RSYSLOGD: &str = "/usr/sbin/rsyslogd";

fn rsyslogd() -> &'static str {
    assert!(
        Path::new(RSYSLOGD).exists(),
        "{RSYSLOGD} not found: these tests run a real rsyslog; install the Debian package \
         `rsyslog` (apt-get install -y rsyslog; .ci/run does it)"
    );
    RSYSLOGD
}

/// imtcp on a loopback port of the kernel's choosing, written to a file
/// (no race with other programs for a "free" port).
fn imtcp_input(dir: &Path) -> String {
    format!(
        "input(type=\"imtcp\" address=\"127.0.0.1\" port=\"0\" listenPortFileName=\"{}\"",
        dir.join("imtcp.port").display()
    )
}

/// A shipped snippet with test values in place of the production ones; each
/// replaced text must be there, so that a changed snippet fails here loudly.
fn snippet(name: &str, subs: &[(&str, &str)]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/rsyslog")
        .join(name);
    let mut text = std::fs::read_to_string(&path).unwrap();
    for (from, to) in subs {
        assert!(text.contains(from), "{name} no longer holds {from:?}");
        text = text.replace(from, to);
    }
    text
}

/// rsyslogd in the foreground with a private configuration, whose imtcp input
/// is [`imtcp_input`].
struct Rsyslog {
    child: Option<Child>,
    dir: PathBuf,
    conf: PathBuf,
    port: u16,
}

impl Rsyslog {
    fn start(dir: &Path, body: &str) -> Rsyslog {
        let conf = dir.join("rsyslog.conf");
        std::fs::write(
            &conf,
            format!(
                "global(workDirectory=\"{}\" maxMessageSize=\"64k\")\n{body}\n",
                dir.display()
            ),
        )
        .unwrap();
        let mut r = Rsyslog {
            child: None,
            dir: dir.to_path_buf(),
            conf,
            port: 0,
        };
        r.launch();
        r
    }

    fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("rsyslogd.log"))
            .unwrap();
        let child = Command::new(rsyslogd())
            .arg("-n")
            .arg("-f")
            .arg(&self.conf)
            .arg("-i")
            .arg(self.dir.join("rsyslogd.pid"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("rsyslogd starts");
        self.child = Some(child);
        let port_file = self.dir.join("imtcp.port");
        let port: u16 = wait_for(Duration::from_secs(15), || {
            std::fs::read_to_string(&port_file)
                .ok()?
                .trim()
                .parse()
                .ok()
        });
        wait_for(Duration::from_secs(15), || {
            TcpStream::connect(("127.0.0.1", port)).ok().map(drop)
        });
        self.port = port;
    }

    /// SIGTERM, and wait for rsyslog (and the omprog child it stops) to exit.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        testkit::process::signal(child.id(), "TERM");
        testkit::process::wait_exit(&mut child, Duration::from_secs(60)).expect("rsyslogd stops");
        let _ = std::fs::remove_file(self.dir.join("imtcp.port"));
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("rsyslogd.log")).unwrap_or_default()
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("rsyslogd log:\n{}", self.log());
            for f in ["qbroker-stdin.log", "broker.log"] {
                if let Ok(text) = std::fs::read_to_string(self.dir.join(f)) {
                    eprintln!("{f}:\n{text}");
                }
            }
        }
    }
}

fn send(port: u16, frames: &[String], octet: bool) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut bytes = Vec::new();
    for f in frames {
        bytes.extend_from_slice(&framed(f, octet));
    }
    s.write_all(&bytes).unwrap();
}

fn qbroker_config(dir: &Path, sink: &Sink) -> PathBuf {
    let text = format!(
        r#"listen = "127.0.0.1:0"
workers = 2
data_dir = "{data}"
default_target = "sink"
[batch]
max_events = 200
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
        url = sink.url(),
        ca = sink.ca_file.display()
    );
    let path = dir.join("qbroker.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The omprog snippet, pointed at the test's rsyslog port, binary and files.
fn omprog_snippet(dir: &Path, config: &Path) -> String {
    snippet(
        "10-qbroker-omprog.conf",
        &[
            ("input(type=\"imtcp\" port=\"514\"", &imtcp_input(dir)),
            (
                "binary=\"/usr/local/bin/qbroker stdin --config /etc/qbroker/qbroker.toml\"",
                &format!(
                    "binary=\"{} stdin --keepalive-ms 500 --config {}\"",
                    env!("CARGO_BIN_EXE_qbroker"),
                    config.display()
                ),
            ),
            (
                "output=\"/var/log/qbroker-stdin.log\"",
                &format!("output=\"{}\"", dir.join("qbroker-stdin.log").display()),
            ),
            ("action.resumeInterval=\"5\"", "action.resumeInterval=\"1\""),
        ],
    )
}

/// Identity -> how many times the sink got it.
fn counts(sink: &Sink) -> BTreeMap<(u32, u64), usize> {
    let mut m = BTreeMap::new();
    for (_, e) in sink.events() {
        *m.entry(identity(&e)).or_insert(0) += 1;
    }
    m
}

fn wait_all(sink: &Sink, expected: &BTreeSet<(u32, u64)>, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let got = counts(sink);
        let missing = expected.iter().filter(|k| !got.contains_key(k)).count();
        if missing == 0 {
            return;
        }
        if Instant::now() >= deadline {
            let lost: Vec<&(u32, u64)> = expected.iter().filter(|k| !got.contains_key(k)).collect();
            panic!(
                "{missing} of {} events not delivered within {timeout:?}: {:?} ... {:?}",
                expected.len(),
                &lost[..lost.len().min(20)],
                &lost[lost.len().saturating_sub(5)..]
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// PIDs of processes whose command line holds `needle`.
fn pids_with(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) {
            if String::from_utf8_lossy(&cmd).contains(needle) {
                pids.push(pid);
            }
        }
    }
    pids
}

#[test]
fn the_shipped_snippets_pass_rsyslogs_own_check() {
    for name in ["10-qbroker-omprog.conf", "10-qbroker-forward.conf"] {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("rsyslog.conf");
        std::fs::write(
            &conf,
            format!(
                "global(workDirectory=\"{}\")\n{}",
                dir.path().display(),
                snippet(name, &[])
            ),
        )
        .unwrap();
        let out = Command::new(rsyslogd())
            .args(["-N1", "-f"])
            .arg(&conf)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{name}:\n{text}");
        assert!(
            !text.contains("error") && !text.contains("warning"),
            "{name}:\n{text}"
        );
    }
}

#[test]
fn omprog_with_transactions_delivers_every_message_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start();
    let config = qbroker_config(dir.path(), &sink);
    let mut rsyslog = Rsyslog::start(dir.path(), &omprog_snippet(dir.path(), &config));
    let port = rsyslog.port;

    let mut expected = BTreeSet::new();
    let mut octet = Vec::new();
    for i in 0..2000u64 {
        let host = if i % 2 == 0 { "alpha-1" } else { "alpha-2" };
        octet.push(json_frame(host, "fs_write_data", "/a/f", &file_id(1, i)));
        expected.insert((1, i));
    }
    octet.push(json_frame(
        "alpha-1",
        "fs_read_metadata",
        "/a/",
        &file_id(9, 0),
    ));
    octet.push("<14>1 2026-11-26T10:00:00Z alpha-1 qumulo - - - not an audit record".to_string());
    octet.push("<13>1 2026-11-26T10:00:00Z alpha-1 sshd - - - not from qumulo".to_string());
    let mut lf = Vec::new();
    for i in 0..500u64 {
        lf.push(csv_frame(
            "beta-1",
            "fs_create_file",
            "/b/new",
            &file_id(2, i),
        ));
        expected.insert((2, i));
    }
    lf.push("<14>1 2026-11-26T10:00:00Z beta-1 qumulo - - - 1,2,3".to_string());
    let a = std::thread::spawn(move || send(port, &octet, true));
    let b = std::thread::spawn(move || send(port, &lf, false));
    a.join().unwrap();
    b.join().unwrap();

    wait_all(&sink, &expected, Duration::from_secs(60));
    // Nothing failed, so nothing was sent twice.
    std::thread::sleep(Duration::from_millis(300));
    let got = counts(&sink);
    assert_eq!(got.len(), expected.len(), "no extra events");
    assert!(got.values().all(|n| *n == 1), "each event once");
    let clusters: BTreeSet<String> = sink.events().into_iter().map(|(c, _)| c).collect();
    assert_eq!(
        clusters,
        BTreeSet::from(["alpha".to_string(), "beta".to_string()])
    );
    check_batches(&sink);
    assert!(sink.problems().is_empty(), "{:?}", sink.problems());
    let dead = std::fs::read_to_string(dir.path().join("data/dead-letter/frames.jsonl")).unwrap();
    assert_eq!(dead.lines().count(), 2, "{dead}");
    assert!(
        !dead.contains("sshd"),
        "rsyslog's filter keeps other programs out"
    );

    // rsyslog's stop: SIGTERM to qbroker, which drains and exits cleanly.
    rsyslog.stop();
    let log = std::fs::read_to_string(dir.path().join("qbroker-stdin.log")).unwrap();
    assert!(
        log.contains("qbroker stopped delivered_everything=true"),
        "{log}"
    );
    assert_eq!(log.matches("stdin feed ready").count(), 1, "{log}");
}

#[test]
fn omprog_survives_sigkill_of_qbroker_without_losing_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start();
    let config = qbroker_config(dir.path(), &sink);
    let mut rsyslog = Rsyslog::start(dir.path(), &omprog_snippet(dir.path(), &config));
    let port = rsyslog.port;

    let total = 12_000u64;
    let expected: BTreeSet<(u32, u64)> = (0..total).map(|i| (1, i)).collect();
    let done = Arc::new(AtomicBool::new(false));
    let sender = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            for chunk in 0..total / 200 {
                let mut bytes = Vec::new();
                for i in chunk * 200..(chunk + 1) * 200 {
                    let host = ["omega-1", "omega-2", "omega-3"][(i % 3) as usize];
                    bytes.extend_from_slice(&framed(
                        &json_frame(host, "fs_write_data", "/o/f", &file_id(1, i)),
                        true,
                    ));
                }
                s.write_all(&bytes).unwrap();
                std::thread::sleep(Duration::from_millis(10));
            }
            done.store(true, Ordering::Relaxed);
        })
    };
    // Mid-stream: kill qbroker outright. rsyslog starts it again and sends
    // every message it had not seen confirmed.
    wait_for(Duration::from_secs(60), || {
        (counts(&sink).len() >= 1500).then_some(())
    });
    let needle = config.display().to_string();
    let pids = pids_with(&needle);
    assert_eq!(pids.len(), 1, "one qbroker stdin: {pids:?}");
    testkit::process::signal(pids[0], "KILL");
    sender.join().unwrap();
    assert!(done.load(Ordering::Relaxed));

    wait_all(&sink, &expected, Duration::from_secs(120));
    let got = counts(&sink);
    let copies: usize = got.values().map(|n| n - 1).sum();
    eprintln!(
        "after SIGKILL: {} events, {copies} delivered twice",
        got.len()
    );
    assert_eq!(got.len(), expected.len(), "no stray events");
    let log = std::fs::read_to_string(dir.path().join("qbroker-stdin.log")).unwrap();
    assert!(
        log.matches("stdin feed ready").count() >= 2,
        "rsyslog restarted qbroker:\n{log}"
    );
    let new = pids_with(&needle);
    assert_eq!(new.len(), 1);
    assert_ne!(new[0], pids[0]);
    rsyslog.stop();
}

#[test]
fn the_reference_omprog_shape_works_without_confirmations() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start();
    let config = qbroker_config(dir.path(), &sink);
    // Qumulo's 10-qumulo.conf with qbroker in place of the Broker binary: no
    // template (omprog's default RSYSLOG_FileFormat), no confirmations.
    let body = format!(
        r#"module(load="imtcp")
module(load="omprog")
{input})
if ($app-name startswith "qumulo") then {{
  action(type="omprog" name="QumuloLog"
    binary="{exe} stdin --no-confirm --config {config}"
    queue.type="LinkedList" queue.size="100000" queue.saveOnShutdown="on"
    queue.workerThreads="1" action.resumeRetryCount="-1" signalOnClose="on"
    output="{out}")
  stop
}}
"#,
        input = imtcp_input(dir.path()),
        exe = env!("CARGO_BIN_EXE_qbroker"),
        config = config.display(),
        out = dir.path().join("broker.log").display()
    );
    let mut rsyslog = Rsyslog::start(dir.path(), &body);
    let port = rsyslog.port;
    let mut expected = BTreeSet::new();
    let mut frames = Vec::new();
    for i in 0..400u64 {
        frames.push(json_frame(
            "kappa-4",
            "fs_delete",
            "/k/gone/",
            &file_id(4, i),
        ));
        expected.insert((4, i));
    }
    send(port, &frames, true);
    wait_all(&sink, &expected, Duration::from_secs(60));
    let events = sink.events();
    assert!(events
        .iter()
        .all(|(c, e)| c == "kappa" && e["operation"] == "directory.delete"));
    // The file format keeps the timestamp to the microsecond; events carry ms.
    assert_eq!(events[0].1["time"], "2026-11-26T10:00:00.123Z");
    rsyslog.stop();
}

#[test]
fn the_forward_snippet_keeps_messages_in_its_disk_queue_while_qbroker_is_away() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start();
    let data = dir.path().join("broker");
    std::fs::create_dir_all(&data).unwrap();
    let broker = Broker::start(&config_text(&sink, &data, ""));
    let qport = broker.syslog.port();
    let body = snippet(
        "10-qbroker-forward.conf",
        &[
            (
                "input(type=\"imtcp\" port=\"514\"",
                &imtcp_input(dir.path()),
            ),
            (
                "target=\"127.0.0.1\" port=\"5514\"",
                &format!("target=\"127.0.0.1\" port=\"{qport}\""),
            ),
            ("action.resumeInterval=\"5\"", "action.resumeInterval=\"1\""),
        ],
    );
    let mut rsyslog = Rsyslog::start(dir.path(), &body);
    let port = rsyslog.port;

    // Octet-counted and newline-delimited senders; rsyslog forwards octet-counted.
    let mut first = BTreeSet::new();
    let (mut octet, mut lf) = (Vec::new(), Vec::new());
    for i in 0..300u64 {
        octet.push(json_frame(
            "delta-1",
            "fs_create_file",
            "/d/a",
            &file_id(5, i),
        ));
        lf.push(csv_frame(
            "delta-2",
            "fs_write_data",
            "/d/b",
            &file_id(6, i),
        ));
        first.insert((5, i));
        first.insert((6, i));
    }
    octet.push("<13>1 2026-11-26T10:00:00Z delta-1 cron - - - not qumulo".to_string());
    send(port, &octet, true);
    send(port, &lf, false);
    wait_all(&sink, &first, Duration::from_secs(30));
    assert!(sink.events().iter().all(|(c, _)| c == "delta"));

    // qbroker away; rsyslog queues, and its queue outlives its own restart.
    broker.stop();
    send(
        port,
        &[json_frame(
            "delta-1",
            "fs_write_data",
            "/d/probe",
            &file_id(8, 0),
        )],
        true,
    );
    std::thread::sleep(Duration::from_secs(2));
    let mut second = BTreeSet::new();
    let mut frames = Vec::new();
    for i in 0..500u64 {
        frames.push(json_frame(
            "delta-3",
            "fs_write_data",
            "/d/c",
            &file_id(7, i),
        ));
        second.insert((7, i));
    }
    send(port, &frames, true);
    std::thread::sleep(Duration::from_secs(1));
    rsyslog.stop();
    let saved: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("qbroker_forward"))
        .collect();
    assert!(!saved.is_empty(), "the queue went to disk at shutdown");
    rsyslog.launch();
    let port = rsyslog.port;
    let broker = Broker::start(&config_text(&sink, &data, "").replace(
        "\nlisten = \"127.0.0.1:0\"",
        &format!("\nlisten = \"127.0.0.1:{qport}\""),
    ));
    // The restarted rsyslog (on a new port) forwards new messages too.
    let third: Vec<String> = (0..50u64)
        .map(|i| json_frame("delta-3", "fs_write_data", "/d/e", &file_id(9, i)))
        .collect();
    send(port, &third, false);
    second.extend((0..50u64).map(|i| (9, i)));
    wait_all(&sink, &second, Duration::from_secs(60));
    assert!(sink.problems().is_empty(), "{:?}", sink.problems());
    rsyslog.stop();
    broker.stop();
}
