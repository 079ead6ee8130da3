//! `GET /stats` and `qbroker top` against a real broker: a cluster delivered
//! to a sink, another routed to a target that refuses every connection.
//! `top --once` as text, and the interactive view once in a real terminal
//! (tmux, the Debian package `tmux`; scripts/test installs it). Loopback only,
//! bounded in time.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    free_port().unwrap()
}

/// A broker with target `sink` (the default) and target `down` (refuses
/// every connection), cluster `gamma` routed to `down`.
fn start(sink: &Sink, dir: &std::path::Path) -> Broker {
    let extra = format!(
        "[[targets]]\nname = \"down\"\nurl = \"https://127.0.0.1:{}/events?secret=1\"\nca_file = \"{}\"\nretry_initial_ms = 20\nretry_max_ms = 200\n[[clusters]]\nname = \"gamma\"\ntarget = \"down\"\n",
        closed_port(),
        sink.ca_file.display()
    );
    Broker::start(&config_text(sink, dir, &extra))
}

/// Send `n` frames of `host` and keep the connection open.
fn send(addr: SocketAddr, host: &str, node: u32, n: u64) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    for i in 0..n {
        let frame = json_frame(host, "fs_write_data", "/share/f", &file_id(node, i));
        s.write_all(&framed(&frame, false)).unwrap();
    }
    s.flush().unwrap();
    s
}

fn stats(broker: &Broker) -> Value {
    serde_json::from_str(&http_get(broker.metrics, "/stats")).expect("/stats is JSON")
}

fn named<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    list.as_array()?.iter().find(|x| x["name"] == name)
}

/// The broker with alpha's 100 events delivered and gamma's 10 stuck behind
/// a failing target; the connections stay open while the test runs.
fn traffic(broker: &Broker, sink: &Sink) -> (TcpStream, TcpStream) {
    let alpha = send(broker.syslog, "alpha-1", 1, 100);
    let gamma = send(broker.syslog, "gamma-1", 2, 10);
    wait_for(Duration::from_secs(20), || {
        let s = stats(broker);
        let down = named(&s["targets"], "down")?;
        let gamma = named(&s["clusters"], "gamma")?;
        // The broker counts a batch's latency once the sink's answer is
        // back, a moment after the sink has the events.
        let alpha = named(&s["clusters"], "alpha")?;
        (sink.events().len() == 100
            && alpha["latency"]["count"] == 100
            && named(&s["targets"], "sink")?["spool_batches"] == 0
            && down["state"] == "failing"
            && down["spool_batches"].as_u64()? >= 1
            && gamma["events"] == 10)
            .then_some(())
    });
    (alpha, gamma)
}

fn top(args: &[&str]) -> Output {
    Command::new(QBROKER)
        .arg("top")
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("qbroker runs")
}

/// The whitespace-separated cells of the line that starts with `first`.
fn row(text: &str, first: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .find(|cells| cells.first().map(String::as_str) == Some(first))
        .unwrap_or_else(|| panic!("no row {first:?} in\n{text}"))
}

#[test]
fn stats_json_has_the_clusters_and_targets_with_their_counters() {
    let sink = Sink::start();
    let dir = tempfile::tempdir().unwrap();
    let broker = start(&sink, dir.path());
    let _conns = traffic(&broker, &sink);

    let s = stats(&broker);
    assert_eq!(s["schema"], "qbroker.stats/1", "{s:#}");
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    assert!(s["uptime_ms"].as_u64().unwrap() > 0);
    assert!(s["queue"]["capacity_messages"].as_u64().unwrap() > 0);
    assert!(s["latency"]["count"].as_u64().unwrap() >= 100, "{s:#}");

    let alpha = named(&s["clusters"], "alpha").unwrap();
    assert_eq!(alpha["nodes_connected"], 1, "{alpha:#}");
    assert_eq!(alpha["frames"], 100);
    assert_eq!(alpha["events"], 100);
    assert_eq!(alpha["filtered"], 0);
    assert_eq!(alpha["parse_errors"], 0);
    assert_eq!(alpha["route"], "sink");
    assert!(alpha["last_event_unix_ms"].as_i64().unwrap() > 0);
    // Its own latency: every event delivered, in buckets that add up.
    assert_eq!(alpha["latency"]["count"], 100, "{alpha:#}");
    let p99 = alpha["latency"]["p99_us"].as_u64().unwrap();
    assert!(p99 > 0 && p99 <= alpha["latency"]["max_us"].as_u64().unwrap());
    let in_buckets: u64 = alpha["latency_buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b[1].as_u64().unwrap())
        .sum();
    assert_eq!(in_buckets, 100, "{alpha:#}");
    let gamma = named(&s["clusters"], "gamma").unwrap();
    assert_eq!(gamma["route"], "down");
    assert_eq!(gamma["frames"], 10);

    let ok = named(&s["targets"], "sink").unwrap();
    assert_eq!(ok["state"], "ok", "{ok:#}");
    assert_eq!(ok["origin"], "config");
    assert_eq!(ok["events_delivered"], 100);
    assert_eq!(ok["spool_batches"], 0);
    // Delivered: nothing left to send, though the file still holds it.
    assert_eq!(ok["spool_unacked_bytes"], 0, "{ok:#}");
    assert!(ok["spool_bytes"].as_u64().unwrap() > 0, "{ok:#}");
    assert_eq!(ok["in_flight_max"], 2);
    let down = named(&s["targets"], "down").unwrap();
    assert_eq!(down["state"], "failing", "{down:#}");
    assert_eq!(down["events_delivered"], 0);
    assert!(down["failures"].as_u64().unwrap() >= 1);
    assert!(down["spool_bytes"].as_u64().unwrap() > 0);
    let unacked = down["spool_unacked_bytes"].as_u64().unwrap();
    assert!(unacked > 0 && unacked <= down["spool_bytes"].as_u64().unwrap());
    // The same figures on /metrics (gauges, read at another moment: nothing
    // is delivered to `down` meanwhile, nothing appended to `sink`).
    assert_eq!(
        broker.metric("qbroker_spool_unacked_bytes{target=\"down\"}"),
        Some(unacked as f64)
    );
    assert_eq!(
        broker.metric("qbroker_spool_unacked_bytes{target=\"sink\"}"),
        Some(0.0)
    );
    assert!(down["oldest_unacked_age_ms"].as_u64().is_some());
    // Nothing secret: the query of the URL is not shown.
    assert!(!s.to_string().contains("secret"), "{s:#}");
    assert!(down["url"].as_str().unwrap().ends_with("/events"));
    // A reason, when the broker knows one; never a made-up one.
    assert!(down
        .get("last_error")
        .is_none_or(|e| e.is_null() || e.is_string()));

    // Counters, not rates: they only go up between two snapshots.
    let later = stats(&broker);
    assert!(later["uptime_ms"].as_u64() >= s["uptime_ms"].as_u64());
    assert_eq!(named(&later["clusters"], "alpha").unwrap()["events"], 100);
    // docs/troubleshooting.md shows every field, and no other.
    let guide = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/troubleshooting.md"
    ))
    .unwrap();
    let example = guide
        .split("### `qbroker top` and `GET /stats`")
        .nth(1)
        .and_then(|rest| rest.split("```json\n").nth(1))
        .and_then(|rest| rest.split("```").next())
        .expect("the /stats example in docs/troubleshooting.md");
    let example: Value = serde_json::from_str(example).expect("the example is JSON");
    let keys = |v: &Value| -> Vec<String> {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.retain(|k| k != "last_error");
        k.sort();
        k
    };
    assert_eq!(keys(&example), keys(&s));
    for part in ["queue", "latency"] {
        assert_eq!(keys(&example[part]), keys(&s[part]), "{part}");
    }
    assert_eq!(keys(&example["clusters"][0]), keys(alpha));
    assert_eq!(keys(&example["targets"][0]), keys(down));
    // /metrics is still served beside it.
    assert!(broker
        .metrics_text()
        .contains("qbroker_cluster_frames_total"));
}

#[test]
fn top_once_prints_cluster_and_target_rows() {
    let sink = Sink::start();
    let dir = tempfile::tempdir().unwrap();
    let broker = start(&sink, dir.path());
    let (mut alpha, _gamma) = traffic(&broker, &sink);
    let url = format!("http://{}", broker.metrics);

    // More of alpha while top measures: a rate above 0.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let feeder = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut i = 100u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && i < 20_000 {
                let frame = json_frame("alpha-1", "fs_write_data", "/share/f", &file_id(1, i));
                alpha.write_all(&framed(&frame, false)).unwrap();
                i += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            alpha
        })
    };
    let out = top(&["--once", "--interval-ms", "500", "--url", &url]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _alpha = feeder.join().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with("qbroker "), "{text}");
    assert!(text.contains("clusters 2  targets 2 (1 failing)"), "{text}");
    assert_eq!(
        row(&text, "CLUSTER"),
        ["CLUSTER", "NODES", "FRAMES/S", "EVENTS/S", "FILT/S", "ERRORS", "QUEUE", "P99", "ROUTE"]
    );
    let a = row(&text, "alpha");
    assert_eq!((a[1].as_str(), a[8].as_str()), ("1", "sink"), "{text}");
    assert_ne!(a[3], "0", "alpha's events/s: {text}");
    // alpha's events were delivered while top measured: a p99 (a time).
    assert!(a[7].ends_with('s'), "alpha's p99: {text}");
    let g = row(&text, "gamma");
    // gamma's target is down: nothing delivered, no latency.
    assert_eq!(
        (g[1].as_str(), g[3].as_str(), g[7].as_str(), g[8].as_str()),
        ("1", "0", "-", "down"),
        "{text}"
    );
    assert_eq!(
        row(&text, "TARGET")[..8],
        ["TARGET", "STATE", "IN-FL", "SPOOL", "UNACKED", "BATCHES", "OLDEST", "DELIV/S"]
    );
    let d = row(&text, "down");
    assert_eq!(d[1], "failing", "{text}");
    assert_ne!(d[4], "0B", "down's unacknowledged bytes: {text}");
    assert_ne!(d[5], "0", "down's spooled batches: {text}");
    assert_eq!(d[7], "0", "{text}");
    let s = row(&text, "sink");
    assert_eq!(s[1], "ok", "{text}");
    for line in text.lines() {
        assert!(line.chars().count() <= 80, "over 80 columns: {line:?}");
    }

    // Filter and sort.
    let out = top(&[
        "--once",
        "--interval-ms",
        "100",
        "--url",
        &url,
        "--filter",
        "GAM",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    row(&text, "gamma");
    assert!(!text.lines().any(|l| l.starts_with("alpha")), "{text}");
    let out = top(&[
        "--once",
        "--interval-ms",
        "100",
        "--url",
        &url,
        "--sort",
        "backlog",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    let targets = text.split("TARGET").nth(1).unwrap();
    assert!(
        targets.find("down").unwrap() < targets.find("sink").unwrap(),
        "{text}"
    );

    // No broker there: a clear error, exit 1.
    let out = top(&[
        "--once",
        "--url",
        &format!("http://127.0.0.1:{}", closed_port()),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot read http://127.0.0.1:"), "{err}");
    assert!(err.contains("is the broker running"), "{err}");
    // Without --once and without a terminal: say so.
    let out = top(&["--url", &url]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("not a terminal"), "{err}");
    // Not http.
    let out = top(&["--once", "--url", &format!("https://{}", broker.metrics)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("only http://"), "{err}");
}

/// A tmux server of its own (`-L`), killed when the test ends.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn new() -> Tmux {
        let ok = Command::new("tmux")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            ok,
            "tmux not found: this test runs qbroker top in a real terminal; install the Debian \
             package `tmux` (apt-get install -y tmux; scripts/test does it)"
        );
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        Tmux {
            socket: format!("qbroker-top-{}-{nanos}", std::process::id()),
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .args(["-L", &self.socket, "-f", "/dev/null"])
            .args(args)
            .env("TERM", "xterm-256color")
            .output()
            .expect("tmux runs")
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

#[test]
fn top_runs_in_a_real_terminal_and_quits_on_q() {
    let sink = Sink::start();
    let dir = tempfile::tempdir().unwrap();
    let broker = start(&sink, dir.path());
    let _conns = traffic(&broker, &sink);
    let tmux = Tmux::new();
    let command = format!(
        "RUST_LOG=warn {QBROKER} top --interval-ms 200 --url http://{}",
        broker.metrics
    );
    let out = tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "120",
        "-y",
        "40",
        &command,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let deadline = Instant::now() + Duration::from_secs(20);
    let screen = loop {
        let out = tmux.run(&["capture-pane", "-p", "-t", "top"]);
        let screen = String::from_utf8_lossy(&out.stdout).to_string();
        // Two snapshots read: rates shown.
        if ["CLUSTER", "TARGET", "alpha", "gamma", "failing", "(over "]
            .iter()
            .all(|t| screen.contains(t))
        {
            break screen;
        }
        assert!(
            Instant::now() < deadline,
            "qbroker top did not draw:\n{screen}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        screen.contains("q quit  s sort  / filter  c clusters  t targets"),
        "{screen}"
    );
    assert!(screen.contains("Clusters (2)"), "{screen}");

    // `s` sorts the focused table; `q` quits and the terminal is given back.
    let out = tmux.run(&["send-keys", "-t", "top", "s"]);
    assert!(out.status.success());
    wait_for(Duration::from_secs(10), || {
        let out = tmux.run(&["capture-pane", "-p", "-t", "top"]);
        String::from_utf8_lossy(&out.stdout)
            .contains("sort: rate")
            .then_some(())
    });
    let out = tmux.run(&["send-keys", "-t", "top", "q"]);
    assert!(out.status.success());
    wait_for(Duration::from_secs(10), || {
        (!tmux.run(&["has-session", "-t", "top"]).status.success()).then_some(())
    });
}
