//! End to end over loopback: real syslog TCP in, real HTTPS out.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn send_all(addr: std::net::SocketAddr, frames: &[Vec<u8>]) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    for f in frames {
        s.write_all(f).unwrap();
    }
    s.flush().unwrap();
}

/// Accepted events, each batch counted once (a batch re-sent with the same
/// Idempotency-Key is the at-least-once contract, not a duplicate event).
fn events_once(sink: &Sink) -> Vec<Value> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for r in sink.accepted() {
        if seen.insert(r.idempotency_key.clone()) {
            out.extend(r.body["events"].as_array().unwrap().iter().cloned());
        }
    }
    out
}

fn assert_exactly(events: &[Value], expected: &BTreeSet<(u32, u64)>) {
    let mut got = BTreeSet::new();
    for e in events {
        assert!(got.insert(identity(e)), "duplicate event {e}");
    }
    let missing: Vec<_> = expected.difference(&got).take(5).collect();
    let extra: Vec<_> = got.difference(expected).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, unexpected {extra:?}"
    );
}

#[test]
fn two_clusters_every_event_once_in_order_in_the_schema() {
    let sink = Sink::start();
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&config_text(&sink, dir.path(), ""));

    // alpha-1: JSON, LF; alpha-2: CSV, CRLF; beta-1: JSON, octet counting;
    // beta-2: CSV, octet counting. Each: kept events, filtered ones, bad frames.
    let nodes = [
        ("alpha-1", 1u32),
        ("alpha-2", 2),
        ("beta-1", 3),
        ("beta-2", 4),
    ];
    let per_node = 400u64;
    let mut expected = BTreeSet::new();
    let mut threads = Vec::new();
    for (host, node) in nodes {
        let mut frames = Vec::new();
        for i in 0..per_node {
            let id = file_id(node, i);
            let op = [
                "fs_create_file",
                "fs_write_data",
                "fs_read_data",
                "fs_delete",
            ][i as usize % 4];
            let path = format!("/share/dépt {node}/file \"{i}\".txt");
            let msg = if node % 2 == 1 {
                json_frame(host, op, &path.replace('"', "\\\""), &id)
            } else {
                csv_frame(host, op, &path.replace('"', "\"\""), &id)
            };
            let octet = node >= 3;
            let mut f = framed(&msg, octet);
            if node == 2 {
                f.pop();
                f.extend_from_slice(b"\r\n");
            }
            frames.push(f);
            expected.insert((node, i));
            if i % 10 == 0 {
                let skip = json_frame(
                    host,
                    "fs_read_metadata",
                    "/share/x",
                    &file_id(node, 900_000 + i),
                );
                frames.push(framed(&skip, octet));
            }
            if i % 100 == 0 {
                frames.push(framed("<14>1 this is not an audit record", octet));
            }
        }
        let addr = broker.syslog;
        threads.push(std::thread::spawn(move || send_all(addr, &frames)));
    }
    for t in threads {
        t.join().unwrap();
    }
    let total = expected.len();
    wait_for(Duration::from_secs(30), || {
        (events_once(&sink).len() >= total).then_some(())
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(sink.problems().is_empty(), "{:?}", sink.problems());

    let events = events_once(&sink);
    assert_exactly(&events, &expected);
    let per_cluster = check_batches(&sink);
    assert_eq!(per_cluster.keys().collect::<Vec<_>>(), ["alpha", "beta"]);

    // Arrival order: within a cluster, seq follows each node's sending order.
    for events in per_cluster.values() {
        let mut by_seq: Vec<&Value> = events.iter().collect();
        by_seq.sort_by_key(|e| e["seq"].as_u64().unwrap());
        let mut last: BTreeMap<u32, u64> = BTreeMap::new();
        for e in by_seq {
            let (node, i) = identity(e);
            if let Some(prev) = last.insert(node, i) {
                assert!(prev < i, "node {node}: {i} after {prev}");
            }
        }
    }

    // The mapping, on one event of each node.
    for e in &events {
        let (node, i) = identity(e);
        if i != 5 {
            continue;
        }
        assert_eq!(e["operation"], "file.write");
        assert_eq!(e["object_type"], "file");
        assert_eq!(e["qumulo_operation"], "fs_write_data");
        assert_eq!(e["status"], "ok");
        assert_eq!(e["success"], true);
        assert_eq!(e["path"], format!("/share/dépt {node}/file \"5\".txt"));
        assert_eq!(
            e["time"].as_str().unwrap().len(),
            "2026-11-26T10:00:00.123Z".len()
        );
        if node % 2 == 1 {
            assert_eq!(e["user"]["name"], "AD\\alice");
            assert_eq!(e["user"]["sid"], "S-1-5-21-1-2-3-1104");
            assert_eq!(e["protocol"], "smb2");
            assert_eq!(e["time"], "2026-11-26T10:00:00.123Z");
        } else {
            assert_eq!(e["user"]["name"], "AD\\bob");
            assert_eq!(e["protocol"], "nfs3");
            assert_eq!(e["client_ip"], "10.1.2.4");
            assert_eq!(e["time"], "2026-11-26T10:00:00.900Z");
        }
    }

    // Filtered and bad frames are counted; bad frames are kept aside.
    let text = broker.metrics_text();
    let filtered: f64 = ["alpha", "beta"]
        .iter()
        .map(|c| {
            metric_value(
                &text,
                &format!("qbroker_cluster_filtered_total{{cluster=\"{c}\",reason=\"operation\"}}"),
            )
            .unwrap()
        })
        .sum();
    assert_eq!(filtered, 4.0 * 40.0);
    let errors: f64 = text
        .lines()
        .filter(|l| l.starts_with("qbroker_cluster_parse_errors_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(errors, 4.0 * 4.0);
    assert_eq!(
        metric_value(
            &text,
            "qbroker_node_connected{cluster=\"beta\",node=\"beta-2\"}"
        ),
        Some(0.0)
    );
    assert_eq!(
        metric_value(
            &text,
            "qbroker_target_events_delivered_total{target=\"sink\"}"
        ),
        Some(total as f64)
    );
    assert!(metric_value(&text, "qbroker_event_latency_seconds_count").unwrap() >= total as f64);
    let dead = std::fs::read_to_string(dir.path().join("dead-letter/frames.jsonl")).unwrap();
    assert_eq!(dead.lines().count(), 16);
    assert!(dead.contains("this is not an audit record"));
    broker.stop();
}

#[test]
fn the_target_away_then_back_loses_nothing() {
    let mut sink = Sink::start();
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&config_text(&sink, dir.path(), ""));
    sink.go_away();
    let frames: Vec<Vec<u8>> = (0..300)
        .map(|i| {
            framed(
                &json_frame("gamma-1", "fs_create_file", "/a", &file_id(1, i)),
                false,
            )
        })
        .collect();
    send_all(broker.syslog, &frames);
    // Let egress fail and back off a few times.
    wait_for(Duration::from_secs(10), || {
        (broker.metric("qbroker_target_failures_total{target=\"sink\",kind=\"connect\"}")? >= 3.0)
            .then_some(())
    });
    assert_eq!(
        broker.metric("qbroker_target_failing{target=\"sink\"}"),
        Some(1.0)
    );
    sink.come_back();
    wait_for(Duration::from_secs(20), || {
        (events_once(&sink).len() >= 300).then_some(())
    });
    assert_exactly(&events_once(&sink), &(0..300).map(|i| (1, i)).collect());
    assert_eq!(
        broker.metric("qbroker_target_failing{target=\"sink\"}"),
        Some(0.0)
    );
    broker.stop();
}

#[test]
fn a_slow_target_pushes_back_on_the_sender_with_memory_bounded() {
    let sink = Sink::start();
    sink.set_mode(Mode::Delay(Duration::from_millis(500)));
    let dir = tempfile::tempdir().unwrap();
    let extra = r#"
[queue]
size = 2000
max_bytes = 1048576
chunk_max_bytes = 65536
[spool]
max_bytes = 262144
segment_bytes = 65536
"#;
    let mut text = config_text(&sink, dir.path(), "");
    text = text
        .replace("in_flight = 2", "in_flight = 1")
        .replace("max_events = 50", "max_events = 50\nmax_bytes = 65536");
    text.push_str(extra);
    let broker = Broker::start(&text);

    // 30k frames of ~2 KiB: 60 MiB, far more than the queue, the spool and the
    // kernel's socket buffers hold together.
    let pad = "p".repeat(1900);
    let n = 30_000u64;
    let addr = broker.syslog;
    let (progress_tx, progress_rx) = std::sync::mpsc::channel::<u64>();
    let writer = std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut written = 0u64;
        for i in 0..n {
            let f = framed(
                &json_frame(
                    "slow-1",
                    "fs_write_data",
                    &format!("/{pad}"),
                    &file_id(1, i),
                ),
                false,
            );
            s.write_all(&f).unwrap();
            written += f.len() as u64;
            if i % 100 == 0 {
                let _ = progress_tx.send(written);
            }
        }
        let _ = progress_tx.send(written);
        written
    });

    std::thread::sleep(Duration::from_secs(4));
    let written = progress_rx.try_iter().last().unwrap_or(0);
    let total = n * 2000;
    assert!(
        written < total / 3,
        "the sender was not held back: {written} of {total} bytes written"
    );
    let text = broker.metrics_text();
    let queue_bytes = metric_value(&text, "qbroker_queue_bytes").unwrap();
    let queue_msgs = metric_value(&text, "qbroker_queue_messages").unwrap();
    let spool_bytes = metric_value(&text, "qbroker_spool_bytes{target=\"sink\"}").unwrap();
    assert!(
        queue_bytes <= 1048576.0 + 65536.0,
        "queue holds {queue_bytes} bytes"
    );
    assert!(queue_msgs <= 2000.0, "queue holds {queue_msgs} frames");
    assert!(
        spool_bytes <= 262144.0 + 1048576.0,
        "spool holds {spool_bytes} bytes"
    );
    assert!(metric_value(&text, "qbroker_reading_paused_total").unwrap() >= 1.0);

    // The target speeds up: everything arrives.
    sink.set_mode(Mode::Accept);
    writer.join().unwrap();
    wait_for(Duration::from_secs(60), || {
        (events_once(&sink).len() as u64 >= n).then_some(())
    });
    assert_exactly(&events_once(&sink), &(0..n).map(|i| (1, i)).collect());
    broker.stop();
}

#[test]
fn a_batch_refused_for_good_is_dead_lettered_and_delivery_goes_on() {
    let sink = Sink::start();
    sink.set_mode(Mode::Fail(400, None));
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&config_text(&sink, dir.path(), ""));
    let frames: Vec<Vec<u8>> = (0..10)
        .map(|i| {
            framed(
                &json_frame("delta-1", "fs_create_file", "/a", &file_id(1, i)),
                false,
            )
        })
        .collect();
    send_all(broker.syslog, &frames);
    let batches = dir.path().join("dead-letter/batches/sink");
    let kept = wait_for(Duration::from_secs(10), || {
        let entries: Vec<_> = std::fs::read_dir(&batches).ok()?.flatten().collect();
        entries
            .iter()
            .find(|e| e.file_name().to_string_lossy().ends_with(".meta.json"))
            .map(|e| std::fs::read_to_string(e.path()).unwrap())
    });
    let meta: Value = serde_json::from_str(&kept).unwrap();
    assert_eq!(meta["status"], 400);
    assert_eq!(meta["cluster"], "delta");
    sink.set_mode(Mode::Accept);
    let frames: Vec<Vec<u8>> = (10..20)
        .map(|i| {
            framed(
                &json_frame("delta-1", "fs_create_file", "/a", &file_id(1, i)),
                false,
            )
        })
        .collect();
    send_all(broker.syslog, &frames);
    let delivered = wait_for(Duration::from_secs(10), || {
        let delivered: BTreeSet<u64> = events_once(&sink).iter().map(|e| identity(e).1).collect();
        (delivered.len() >= 10).then_some(delivered)
    });
    assert_eq!(delivered, (10..20).collect());
    // Every refused event is in a dead-lettered body.
    let mut dead_events = 0;
    for e in std::fs::read_dir(&batches).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.ends_with(".json") && !name.ends_with(".meta.json") {
            let body: Value = serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap();
            dead_events += body["events"].as_array().unwrap().len();
        }
    }
    assert_eq!(dead_events, 10);
    assert_eq!(
        broker.metric("qbroker_target_events_dead_lettered_total{target=\"sink\"}"),
        Some(10.0)
    );
    broker.stop();
}

#[test]
fn throttling_is_honoured_with_retry_after() {
    let sink = Sink::start();
    sink.set_mode(Mode::Fail(429, Some(1)));
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&config_text(&sink, dir.path(), ""));
    send_all(
        broker.syslog,
        &[framed(
            &json_frame("eps-1", "fs_create_file", "/a", &file_id(1, 0)),
            false,
        )],
    );
    wait_for(Duration::from_secs(10), || {
        (sink.request_count() >= 1).then_some(())
    });
    sink.set_mode(Mode::Accept);
    wait_for(Duration::from_secs(10), || {
        (!sink.accepted().is_empty()).then_some(())
    });
    let reqs = sink.requests();
    let gap = reqs[1].at.duration_since(reqs[0].at);
    assert!(
        gap >= Duration::from_millis(900),
        "retried after {gap:?}, before Retry-After"
    );
    assert_eq!(
        reqs[0].idempotency_key, reqs[1].idempotency_key,
        "a retry keeps the batch id"
    );
    assert_eq!(
        broker.metric("qbroker_target_throttled_total{target=\"sink\"}"),
        Some(1.0)
    );
    broker.stop();
}

#[test]
fn token_and_gzip_reach_the_target() {
    let sink = Sink::start();
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&config_text(
        &sink,
        dir.path(),
        "token = \"s3cret-token\"\ngzip = true",
    ));
    send_all(
        broker.syslog,
        &[framed(
            &csv_frame_to("zeta-7", "fs_rename", "/a/old", "/a/new", &file_id(7, 0)),
            true,
        )],
    );
    wait_for(Duration::from_secs(10), || {
        (!sink.accepted().is_empty()).then_some(())
    });
    let r = &sink.accepted()[0];
    assert!(r.gzip);
    assert_eq!(r.authorization.as_deref(), Some("Bearer s3cret-token"));
    assert_eq!(r.body["cluster"], "zeta");
    assert_eq!(r.body["events"][0]["operation"], "file.rename");
    assert_eq!(r.body["events"][0]["new_path"], "/a/new");
    // The token is nowhere on the metrics page.
    assert!(!broker.metrics_text().contains("s3cret"));
    broker.stop();
}

#[test]
fn a_source_outside_the_allowlist_is_closed_and_counted() {
    let sink = Sink::start();
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&format!(
        "{}\n[ingest]\nallow_sources = [\"10.0.0.0/8\"]\n",
        config_text(&sink, dir.path(), "")
    ));
    let mut s = TcpStream::connect(broker.syslog).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(&framed(
        &json_frame("eta-1", "fs_create_file", "/a", &file_id(1, 0)),
        false,
    ));
    let mut buf = [0u8; 16];
    let closed = matches!(s.read(&mut buf), Ok(0) | Err(_));
    assert!(closed, "the connection should be closed");
    wait_for(Duration::from_secs(5), || {
        (broker.metric("qbroker_connections_refused_allowlist_total")? == 1.0).then_some(())
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(sink.request_count(), 0);
    broker.stop();
}

#[test]
fn shutdown_delivers_what_was_read() {
    let sink = Sink::start();
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(
        &config_text(&sink, dir.path(), "")
            .replace("max_age_ms = 50", "max_age_ms = 60000\nidle_seal_ms = 0"),
    );
    let frames: Vec<Vec<u8>> = (0..120)
        .map(|i| {
            framed(
                &json_frame("theta-1", "fs_write_data", "/a", &file_id(1, i)),
                false,
            )
        })
        .collect();
    send_all(broker.syslog, &frames);
    wait_for(Duration::from_secs(10), || {
        (broker.metric("qbroker_cluster_frames_total{cluster=\"theta\"}")? == 120.0).then_some(())
    });
    // 100 of them went out in two full batches; the last 20 wait in an open
    // batch for an age they would not reach for a minute. Shutdown seals it.
    let started = Instant::now();
    broker.stop();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_exactly(&events_once(&sink), &(0..120).map(|i| (1, i)).collect());
}

#[test]
fn clusters_go_to_their_own_targets_with_their_filer_id() {
    let sink = Sink::start();
    let second = Sink::start();
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}\n[[targets]]\nname = \"second\"\nurl = \"{}\"\nca_file = \"{}\"\n\n[[clusters]]\nname = \"alpha\"\ntarget = \"second\"\nfiler_id = 42\n",
        config_text(&sink, dir.path(), ""),
        second.url(),
        second.ca_file.display()
    );
    let broker = Broker::start(&text);
    assert!(http_get(broker.metrics, "/healthz").contains("\"ok\""));
    send_all(
        broker.syslog,
        &[framed(
            &json_frame("alpha-1", "fs_create_file", "/a", &file_id(1, 0)),
            false,
        )],
    );
    send_all(
        broker.syslog,
        &[framed(
            &json_frame("beta-1", "fs_create_file", "/b", &file_id(2, 0)),
            false,
        )],
    );
    wait_for(Duration::from_secs(10), || {
        (!sink.accepted().is_empty() && !second.accepted().is_empty()).then_some(())
    });
    let a = &second.accepted()[0].body;
    assert_eq!(
        (a["cluster"].as_str(), a["filer_id"].as_u64()),
        (Some("alpha"), Some(42))
    );
    let b = &sink.accepted()[0].body;
    assert_eq!(
        (b["cluster"].as_str(), b["filer_id"].is_null()),
        (Some("beta"), true)
    );
    assert_eq!(sink.accepted().len() + second.accepted().len(), 2);
    broker.stop();
}

#[test]
fn a_source_mapped_to_a_cluster_names_it_whatever_the_hostname() {
    let sink = Sink::start();
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}\n[[clusters]]\nname = \"lab\"\nsources = [\"127.0.0.0/8\", \"::1\"]\n",
        config_text(&sink, dir.path(), "")
    );
    let broker = Broker::start(&text);
    send_all(
        broker.syslog,
        &[framed(
            &json_frame("qumulo-7", "fs_create_file", "/a", &file_id(7, 0)),
            false,
        )],
    );
    wait_for(Duration::from_secs(10), || {
        (!sink.accepted().is_empty()).then_some(())
    });
    let body = &sink.accepted()[0].body;
    assert_eq!(body["cluster"], "lab");
    assert_eq!(body["events"][0]["node"], "qumulo-7");
    broker.stop();
}

#[test]
fn client_certificates_authenticate_the_broker() {
    let sink = Sink::start_mtls();
    let dir = tempfile::tempdir().unwrap();
    // Without a client certificate the handshake fails and nothing is accepted.
    let broker = Broker::start(&config_text(&sink, dir.path(), ""));
    send_all(
        broker.syslog,
        &[framed(
            &json_frame("iota-1", "fs_create_file", "/a", &file_id(1, 0)),
            false,
        )],
    );
    wait_for(Duration::from_secs(10), || {
        (broker.metric("qbroker_target_failures_total{target=\"sink\",kind=\"connect\"}")? >= 2.0)
            .then_some(())
    });
    assert_eq!(sink.request_count(), 0);
    broker.stop();
    // With one, the spooled batch and a new one go through.
    let extra = format!(
        "client_cert_file = \"{}\"\nclient_key_file = \"{}\"",
        sink.client_cert_file.display(),
        sink.client_key_file.display()
    );
    let broker = Broker::start(&config_text(&sink, dir.path(), &extra));
    send_all(
        broker.syslog,
        &[framed(
            &json_frame("iota-1", "fs_create_file", "/a", &file_id(1, 1)),
            false,
        )],
    );
    wait_for(Duration::from_secs(10), || {
        (events_once(&sink).len() == 2).then_some(())
    });
    assert_exactly(&events_once(&sink), &[(1, 0), (1, 1)].into_iter().collect());
    broker.stop();
}

#[test]
fn a_request_that_times_out_is_sent_again_with_the_same_batch_id() {
    let sink = Sink::start();
    sink.set_mode(Mode::Delay(Duration::from_millis(2500)));
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&config_text(&sink, dir.path(), "timeout_secs = 1"));
    send_all(
        broker.syslog,
        &[framed(
            &json_frame("kappa-1", "fs_create_file", "/a", &file_id(1, 0)),
            false,
        )],
    );
    wait_for(Duration::from_secs(10), || {
        (sink.request_count() >= 1).then_some(())
    });
    sink.set_mode(Mode::Accept);
    wait_for(Duration::from_secs(10), || {
        (!sink.accepted().is_empty()).then_some(())
    });
    let keys = sink.started_keys();
    assert!(keys.len() >= 2, "{keys:?}");
    assert_eq!(
        keys[0], keys[1],
        "the copy carries the same Idempotency-Key"
    );
    assert_eq!(sink.accepted()[0].idempotency_key, keys[0]);
    assert!(
        broker
            .metric("qbroker_target_failures_total{target=\"sink\",kind=\"timeout\"}")
            .unwrap()
            >= 1.0
    );
    broker.stop();
}

#[test]
fn idle_connections_are_closed_after_the_idle_timeout() {
    let sink = Sink::start();
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&format!(
        "{}\n[ingest]\nidle_timeout_secs = 1\n",
        config_text(&sink, dir.path(), "")
    ));
    let mut s = TcpStream::connect(broker.syslog).unwrap();
    s.write_all(&framed(
        &json_frame("lambda-1", "fs_create_file", "/a", &file_id(1, 0)),
        false,
    ))
    .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 1];
    assert!(matches!(s.read(&mut buf), Ok(0)), "closed by the broker");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
    wait_for(Duration::from_secs(5), || {
        (events_once(&sink).len() == 1).then_some(())
    });
    assert_eq!(broker.metric("qbroker_idle_timeouts_total"), Some(1.0));
    broker.stop();
}

#[test]
fn connections_over_the_limit_are_refused_and_counted() {
    let sink = Sink::start();
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&format!(
        "{}\n[ingest]\nmax_connections = 2\n",
        config_text(&sink, dir.path(), "")
    ));
    let mut held = Vec::new();
    for node in 1..=2 {
        let mut s = TcpStream::connect(broker.syslog).unwrap();
        s.write_all(&framed(
            &json_frame(
                &format!("mu-{node}"),
                "fs_create_file",
                "/a",
                &file_id(node, 0),
            ),
            false,
        ))
        .unwrap();
        held.push(s);
    }
    wait_for(Duration::from_secs(5), || {
        (broker.metric("qbroker_connections_active")? == 2.0).then_some(())
    });
    let mut third = TcpStream::connect(broker.syslog).unwrap();
    third
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 1];
    assert!(
        matches!(third.read(&mut buf), Ok(0) | Err(_)),
        "the third is closed"
    );
    assert_eq!(
        broker.metric("qbroker_connections_refused_limit_total"),
        Some(1.0)
    );
    wait_for(Duration::from_secs(5), || {
        (events_once(&sink).len() == 2).then_some(())
    });
    drop(held);
    broker.stop();
}

/// A target whose certificate the broker does not trust fails every attempt
/// at the TLS handshake: counted as `kind="tls"`, not as a connect failure,
/// over HTTPS and over AMQP alike; nothing is delivered, nothing lost.
#[test]
fn an_untrusted_target_certificate_counts_as_a_tls_failure() {
    let sink = Sink::start();
    let dir = tempfile::tempdir().unwrap();
    let stranger = testkit::pki::Pki::new("stranger").unwrap();
    let stranger_ca = dir.path().join("stranger-ca.pem");
    std::fs::write(&stranger_ca, &stranger.ca_pem).unwrap();
    let password = dir.path().join("rmq.password");
    std::fs::write(&password, "p\n").unwrap();
    let text = format!(
        "{}\n[[targets]]\nname = \"untrusted\"\nurl = \"{}\"\nca_file = \"{}\"\nretry_initial_ms = 20\nretry_max_ms = 100\n\n\
         [[targets]]\nname = \"rmq\"\nurl = \"amqps://{}/v\"\nca_file = \"{}\"\nexchange = \"x\"\nusername = \"u\"\npassword_file = \"{}\"\nretry_initial_ms = 20\nretry_max_ms = 100\n\n\
         [[clusters]]\nname = \"alpha\"\ntarget = \"untrusted\"\n\n[[clusters]]\nname = \"beta\"\ntarget = \"rmq\"\n",
        config_text(&sink, dir.path(), ""),
        sink.url(),
        stranger_ca.display(),
        sink.addr,
        stranger_ca.display(),
        password.display()
    );
    let broker = Broker::start(&text);
    for (host, node) in [("alpha-1", 1), ("beta-1", 2)] {
        send_all(
            broker.syslog,
            &[framed(
                &json_frame(host, "fs_create_file", "/a", &file_id(node, 0)),
                false,
            )],
        );
    }
    let metric = |target: &str, kind: &str| {
        broker
            .metric(&format!(
                "qbroker_target_failures_total{{target=\"{target}\",kind=\"{kind}\"}}"
            ))
            .unwrap_or(0.0)
    };
    wait_for(Duration::from_secs(20), || {
        (metric("untrusted", "tls") >= 2.0 && metric("rmq", "tls") >= 2.0).then_some(())
    });
    assert_eq!(metric("untrusted", "connect"), 0.0);
    assert_eq!(metric("rmq", "connect"), 0.0);
    assert_eq!(metric("sink", "tls"), 0.0);
    assert!(sink.accepted().is_empty(), "{:?}", sink.accepted());
    // /stats counts them among the target's failures.
    let stats: Value = serde_json::from_str(&http_get(broker.metrics, "/stats")).unwrap();
    let untrusted = stats["targets"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["name"] == "untrusted"))
        .unwrap();
    assert!(
        untrusted["failures"].as_u64().unwrap() >= 2,
        "{untrusted:#}"
    );
    assert!(
        untrusted["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("tls handshake")),
        "{untrusted:#}"
    );
    broker.stop();
}
