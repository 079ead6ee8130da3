//! Hostile connections over loopback: each test runs a well-behaved cluster at a
//! steady pace beside one or more connections that misbehave, and checks that
//! the misbehaving ones are closed or refused (and counted) while every event of
//! the well-behaved one arrives, in time, without its sender being held back.
//! docs/hardening.md quotes what these tests measure.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;

/// A connection from a chosen loopback address (127.0.0.2 and up are loopback
/// too on Linux), to tell sources apart.
fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let s = rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket
            .bind(SocketAddr::new(from.parse::<IpAddr>().unwrap(), 0))
            .unwrap();
        socket.connect(to).await.unwrap()
    });
    let s = s.into_std().unwrap();
    s.set_nonblocking(false).unwrap();
    s
}

/// Whether the broker closed `s` (a read sees the end, or a reset) within `timeout`.
fn closed_within(s: &mut TcpStream, timeout: Duration) -> bool {
    s.set_read_timeout(Some(timeout)).unwrap();
    let mut buf = [0u8; 64];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

/// What a paced sender did.
struct Paced {
    node: u32,
    sent: Vec<Instant>,
    /// The longest a single write took: a sender held back waits here.
    max_write: Duration,
}

/// A well-behaved node: `per_tick` frames every `tick`, `n` in all, each frame's
/// send time recorded.
fn paced(
    addr: SocketAddr,
    host: &str,
    node: u32,
    n: u64,
    per_tick: u64,
    tick: Duration,
) -> JoinHandle<Paced> {
    let host = host.to_string();
    std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut sent = Vec::with_capacity(n as usize);
        let mut max_write = Duration::ZERO;
        let start = Instant::now();
        let mut i = 0;
        let mut ticks = 0u32;
        while i < n {
            let mut burst = Vec::new();
            for _ in 0..per_tick.min(n - i) {
                burst.extend(framed(
                    &json_frame(&host, "fs_write_data", "/calm/file", &file_id(node, i)),
                    i % 2 == 1,
                ));
                i += 1;
            }
            let t = Instant::now();
            s.write_all(&burst).unwrap();
            max_write = max_write.max(t.elapsed());
            while sent.len() < i as usize {
                sent.push(t);
            }
            ticks += 1;
            let next = start + tick * ticks;
            if let Some(d) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
        }
        Paced {
            node,
            sent,
            max_write,
        }
    })
}

/// Wait until every frame of `p` arrived at `sink` once; the worst delay from
/// send to arrival.
fn all_delivered(sink: &Sink, p: &Paced, within: Duration) -> Duration {
    let n = p.sent.len();
    wait_for(within, || {
        let got = sink
            .events()
            .iter()
            .filter(|(_, e)| identity(e).0 == p.node)
            .count();
        (got >= n).then_some(())
    });
    let mut seen = vec![false; n];
    let mut worst = Duration::ZERO;
    for r in sink.accepted() {
        for e in r.body["events"].as_array().unwrap() {
            let (node, i) = identity(e);
            if node != p.node {
                continue;
            }
            let i = i as usize;
            assert!(!seen[i], "event {i} of node {node} twice");
            seen[i] = true;
            worst = worst.max(r.at.saturating_duration_since(p.sent[i]));
        }
    }
    assert!(seen.iter().all(|s| *s), "node {} lost events", p.node);
    worst
}

/// Random bytes (xorshift), as a misbehaving or hostile sender would send.
fn garbage(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 24) as u8
        })
        .collect()
}

/// Write `data` until the broker closes the connection; the bytes it took.
fn write_until_closed(s: &mut TcpStream, data: &[u8]) -> usize {
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut written = 0;
    for piece in data.chunks(16 * 1024) {
        match s.write(piece) {
            Ok(n) => written += n,
            Err(_) => return written,
        }
    }
    written
}

fn metric(b: &Broker, name: &str) -> f64 {
    b.metric(name).unwrap_or_else(|| panic!("no sample {name}"))
}

#[test]
fn garbage_and_endless_frames_are_closed_while_a_cluster_keeps_its_pace() {
    let sink = Sink::start();
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&format!(
        "{}\n[ingest]\nmax_frame_bytes = 65536\nmax_oversize_frame_bytes = 1048576\nmax_bad_frames = 16\n",
        config_text(&sink, dir.path(), "")
    ));
    let calm = paced(
        broker.syslog,
        "calm-1",
        1,
        600,
        20,
        Duration::from_millis(100),
    );

    let addr = broker.syslog;
    let attackers: Vec<JoinHandle<(usize, bool)>> = vec![
        // Binary garbage at full speed.
        std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            let n = write_until_closed(&mut s, &garbage(32 << 20, 7));
            (n, closed_within(&mut s, Duration::from_secs(10)))
        }),
        // A valid first frame, then a line that never ends.
        std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            let mut data = framed(
                &json_frame("endless-1", "fs_read_data", "/a", &file_id(9, 0)),
                false,
            );
            data.extend(std::iter::repeat_n(b'x', 32 << 20));
            let n = write_until_closed(&mut s, &data);
            (n, closed_within(&mut s, Duration::from_secs(10)))
        }),
        // An octet count declaring ten gigabytes.
        std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            let mut data = framed(
                &json_frame("counted-1", "fs_read_data", "/a", &file_id(8, 0)),
                true,
            );
            data.extend_from_slice(b"9999999999 ");
            data.extend(std::iter::repeat_n(b'y', 32 << 20));
            let n = write_until_closed(&mut s, &data);
            (n, closed_within(&mut s, Duration::from_secs(10)))
        }),
    ];
    let written: Vec<(usize, bool)> = attackers.into_iter().map(|a| a.join().unwrap()).collect();
    for (i, (n, closed)) in written.iter().enumerate() {
        assert!(*closed, "attacker {i} still connected after {n} bytes");
        assert!(*n < 32 << 20, "attacker {i} could write everything");
    }
    let calm = calm.join().unwrap();
    let worst = all_delivered(&sink, &calm, Duration::from_secs(15));
    eprintln!(
        "garbage/endless: attackers wrote {:?} bytes before the close; calm worst latency {worst:?}, longest write {:?}",
        written.iter().map(|w| w.0).collect::<Vec<_>>(),
        calm.max_write
    );
    assert!(
        worst < Duration::from_secs(3),
        "calm events waited {worst:?}"
    );
    assert!(
        calm.max_write < Duration::from_secs(1),
        "calm sender held back {:?}",
        calm.max_write
    );

    wait_for(Duration::from_secs(5), || {
        (broker.metric("qbroker_connections_closed_frame_overrun_total")? == 2.0).then_some(())
    });
    assert_eq!(
        metric(&broker, "qbroker_connections_closed_bad_frames_total"),
        1.0
    );
    // Garbage was closed after a few dozen frames, not after 32 MiB of them.
    let text = broker.metrics_text();
    let garbage_frames: f64 = text
        .lines()
        .filter(|l| l.starts_with("qbroker_cluster_parse_errors_total{cluster=\"unidentified\""))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert!(
        garbage_frames < 200.0,
        "{garbage_frames} garbage frames went to the pool"
    );
    assert_eq!(
        metric(&broker, "qbroker_cluster_connections{cluster=\"calm\"}"),
        0.0
    );
    broker.stop();
}

#[test]
fn slowloris_and_blank_trickles_are_timed_out_while_a_cluster_keeps_its_pace() {
    let sink = Sink::start();
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&format!(
        "{}\n[ingest]\nframe_timeout_secs = 2\nidle_timeout_secs = 3\nfirst_frame_timeout_secs = 2\n",
        config_text(&sink, dir.path(), "")
    ));
    let calm = paced(
        broker.syslog,
        "calm-1",
        1,
        400,
        10,
        Duration::from_millis(100),
    );
    let addr = broker.syslog;
    let first = framed(
        &json_frame("slow-1", "fs_read_data", "/a", &file_id(7, 0)),
        false,
    );
    // (name, what to send before trickling, what to trickle, pause between bytes)
    let patterns: Vec<(&str, Vec<u8>, Vec<u8>, Duration)> = vec![
        (
            "slowloris",
            first.clone(),
            framed(
                &json_frame("slow-1", "fs_read_data", "/b", &file_id(7, 1)),
                false,
            ),
            Duration::from_secs(1),
        ),
        (
            "blank trickle",
            first.clone(),
            vec![b'\n'; 64],
            Duration::from_millis(300),
        ),
        (
            "slow first frame",
            Vec::new(),
            first.clone(),
            Duration::from_secs(1),
        ),
    ];
    let trickles: Vec<JoinHandle<(&str, Duration)>> = patterns
        .into_iter()
        .map(|(name, head, trickle, pause)| {
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                s.write_all(&head).unwrap();
                let start = Instant::now();
                let closed = Arc::new(AtomicBool::new(false));
                let mut r = s.try_clone().unwrap();
                let watcher = {
                    let closed = closed.clone();
                    std::thread::spawn(move || {
                        let c = closed_within(&mut r, Duration::from_secs(15));
                        closed.store(c, Ordering::SeqCst);
                        start.elapsed()
                    })
                };
                for b in trickle {
                    if closed.load(Ordering::SeqCst) || s.write_all(&[b]).is_err() {
                        break;
                    }
                    std::thread::sleep(pause);
                }
                let took = watcher.join().unwrap();
                assert!(closed.load(Ordering::SeqCst), "{name}: never closed");
                (name, took)
            })
        })
        .collect();
    for t in trickles {
        let (name, took) = t.join().unwrap();
        eprintln!("{name}: closed after {took:?}");
        // Lower bounds: not before the deadline that should close it. Upper
        // bounds: what a loaded 2-CPU machine guarantees; which deadline closed
        // which connection is told by the counters below.
        let bound = match name {
            // the frame deadline (2 s)
            "slowloris" => 1.5..8.0,
            // the idle deadline (3 s)
            "blank trickle" => 2.5..10.0,
            // first_frame_timeout (2 s) with bytes read, then the frame deadline
            _ => 3.5..12.0,
        };
        assert!(
            bound.contains(&took.as_secs_f64()),
            "{name}: closed after {took:?}, expected {bound:?} s"
        );
    }
    let calm = calm.join().unwrap();
    let worst = all_delivered(&sink, &calm, Duration::from_secs(10));
    eprintln!(
        "trickles: calm worst latency {worst:?}, longest write {:?}",
        calm.max_write
    );
    assert!(
        worst < Duration::from_secs(5),
        "calm events waited {worst:?}"
    );
    assert_eq!(metric(&broker, "qbroker_frame_timeouts_total"), 2.0);
    assert_eq!(metric(&broker, "qbroker_idle_timeouts_total"), 1.0);
    broker.stop();
}

#[test]
fn a_qumulo_stream_with_the_odd_oversize_frame_is_kept_open() {
    let sink = Sink::start();
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&format!(
        "{}\n[ingest]\nmax_frame_bytes = 4096\nmax_bad_frames = 16\n",
        config_text(&sink, dir.path(), "")
    ));
    let long_path = format!("/{}", "p".repeat(6000));
    let mut threads = Vec::new();
    for (node, octet) in [(1u32, false), (2, true)] {
        let addr = broker.syslog;
        let long_path = long_path.clone();
        threads.push(std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            let host = format!("big-{node}");
            let mut data = Vec::new();
            // One frame in four over the cap, in runs of three.
            for i in 0..1000u64 {
                let path = if i % 12 >= 9 {
                    long_path.as_str()
                } else {
                    "/ok"
                };
                data.extend(framed(
                    &json_frame(&host, "fs_create_file", path, &file_id(node, i)),
                    octet,
                ));
            }
            s.write_all(&data).unwrap();
            // Still open: a write after a pause goes through and is delivered.
            std::thread::sleep(Duration::from_millis(300));
            s.write_all(&framed(
                &json_frame(&host, "fs_create_file", "/last", &file_id(node, 5000)),
                octet,
            ))
            .unwrap();
            s
        }));
    }
    let conns: Vec<TcpStream> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let oversize_per_node = (0..1000u64).filter(|i| i % 12 >= 9).count();
    let want = 2 * (1000 - oversize_per_node + 1);
    wait_for(Duration::from_secs(15), || {
        (sink.events().len() >= want).then_some(())
    });
    assert_eq!(sink.events().len(), want);
    assert_eq!(
        metric(&broker, "qbroker_frames_oversize_total"),
        2.0 * oversize_per_node as f64
    );
    assert_eq!(
        metric(&broker, "qbroker_connections_closed_bad_frames_total"),
        0.0
    );
    assert_eq!(
        metric(&broker, "qbroker_cluster_connections{cluster=\"big\"}"),
        2.0
    );
    drop(conns);
    broker.stop();
}

#[test]
fn connection_limits_per_source_and_in_all_and_the_allowlist() {
    let sink = Sink::start();
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&format!(
        "{}\n[ingest]\nallow_sources = [\"127.0.0.1\", \"127.0.0.2/32\"]\nmax_connections_per_source = 3\nmax_connections = 5\n",
        config_text(&sink, dir.path(), "")
    ));
    let open = |from: &str, node: u32| {
        let mut s = connect_from(from, broker.syslog);
        s.write_all(&framed(
            &json_frame(
                &format!("lim-{node}"),
                "fs_create_file",
                "/a",
                &file_id(node, 0),
            ),
            false,
        ))
        .unwrap();
        s
    };
    let active = |n: f64| {
        wait_for(Duration::from_secs(5), || {
            (broker.metric("qbroker_connections_active")? == n).then_some(())
        })
    };
    let mut held: Vec<TcpStream> = (1..=3).map(|n| open("127.0.0.1", n)).collect();
    active(3.0);
    // A fourth from the same source: refused, though the broker has room.
    let mut fourth = open("127.0.0.1", 4);
    assert!(closed_within(&mut fourth, Duration::from_secs(5)));
    assert_eq!(
        metric(&broker, "qbroker_connections_refused_source_limit_total"),
        1.0
    );
    // Another source still gets in, up to the global limit.
    held.push(open("127.0.0.2", 5));
    held.push(open("127.0.0.2", 6));
    active(5.0);
    let mut over = open("127.0.0.2", 7);
    assert!(closed_within(&mut over, Duration::from_secs(5)));
    assert_eq!(
        metric(&broker, "qbroker_connections_refused_limit_total"),
        1.0
    );
    // A source outside the allowlist: refused whatever the room.
    drop(held.pop());
    active(4.0);
    let mut stranger = open("127.0.0.3", 8);
    assert!(closed_within(&mut stranger, Duration::from_secs(5)));
    assert_eq!(
        metric(&broker, "qbroker_connections_refused_allowlist_total"),
        1.0
    );
    // A place given back is a place to take again.
    drop(held.remove(0));
    active(3.0);
    held.push(open("127.0.0.1", 9));
    active(4.0);
    // Every admitted connection's frame arrived; no refused one's did.
    wait_for(Duration::from_secs(10), || {
        (sink.events().len() == 6).then_some(())
    });
    let nodes: std::collections::BTreeSet<u32> =
        sink.events().iter().map(|(_, e)| identity(e).0).collect();
    assert_eq!(nodes, [1, 2, 3, 5, 6, 9].into_iter().collect());
    drop(held);
    broker.stop();
}

#[test]
fn a_flooding_cluster_is_throttled_and_another_keeps_its_pace() {
    let sink = Sink::start();
    let calm_sink = Sink::start();
    let dir = tempfile::tempdir().unwrap();
    // A small queue, so that the flood fills it; the calm cluster delivers to a
    // target of its own, so that what is measured is ingest, not the flood's
    // backlog at its target.
    let text = format!(
        "{}\n[[targets]]\nname = \"calm\"\nurl = \"{}\"\nca_file = \"{}\"\n\n[[clusters]]\nname = \"calm\"\ntarget = \"calm\"\n\n[queue]\nsize = 1024\nmax_bytes = 524288\nchunk_max_frames = 64\n",
        config_text(&sink, dir.path(), ""),
        calm_sink.url(),
        calm_sink.ca_file.display()
    );
    let broker = Broker::start(&text);
    let stop = Arc::new(AtomicBool::new(false));
    let floods: Vec<JoinHandle<usize>> = (1..=3)
        .map(|node| {
            let (addr, stop) = (broker.syslog, stop.clone());
            std::thread::spawn(move || {
                let mut data = Vec::new();
                for i in 0..2000u64 {
                    data.extend(framed(
                        &json_frame(
                            &format!("flood-{node}"),
                            "fs_read_data",
                            "/flood",
                            &file_id(10 + node, i),
                        ),
                        false,
                    ));
                }
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
                let mut sent = 0;
                while !stop.load(Ordering::SeqCst) {
                    s.write_all(&data).unwrap();
                    sent += 2000;
                }
                sent
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let calm: Vec<JoinHandle<Paced>> = (1..=2)
        .map(|node| {
            paced(
                broker.syslog,
                &format!("calm-{node}"),
                node,
                400,
                10,
                Duration::from_millis(50),
            )
        })
        .collect();
    let calm: Vec<Paced> = calm.into_iter().map(|c| c.join().unwrap()).collect();
    let paused = metric(&broker, "qbroker_reading_paused_total");
    let flood_frames = metric(&broker, "qbroker_cluster_frames_total{cluster=\"flood\"}");
    stop.store(true, Ordering::SeqCst);
    let offered: usize = floods.into_iter().map(|f| f.join().unwrap()).sum();
    let mut worst = Duration::ZERO;
    for c in &calm {
        worst = worst.max(all_delivered(&calm_sink, c, Duration::from_secs(15)));
    }
    let longest_write = calm.iter().map(|c| c.max_write).max().unwrap();
    eprintln!(
        "flood: {flood_frames} flood frames read ({offered} written) in ~4.5 s, reading paused {paused} times; calm worst latency {worst:?}, longest calm write {longest_write:?}"
    );
    assert!(
        paused >= 1.0,
        "the flood never filled the queue: the test shows nothing"
    );
    assert!(flood_frames > 0.0, "the flood is throttled, not starved");
    // Starved would be the flood's whole length and more (the queue is full
    // of flood frames all along); these bounds leave room for a loaded 2-CPU
    // machine.
    assert!(
        worst < Duration::from_secs(3),
        "calm events waited {worst:?}"
    );
    assert!(
        longest_write < Duration::from_secs(2),
        "calm sender held back {longest_write:?}"
    );
    broker.stop();
}

#[test]
fn node_names_from_the_network_are_bounded() {
    let sink = Sink::start();
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&format!(
        "{}\n[ingest]\nmax_nodes_per_cluster = 3\n",
        config_text(&sink, dir.path(), "")
    ));
    let long = format!("many-{}", "9".repeat(300));
    let mut hosts: Vec<String> = (1..=6).map(|n| format!("many-{n}")).collect();
    hosts.push(long);
    for (i, host) in hosts.iter().enumerate() {
        let mut s = TcpStream::connect(broker.syslog).unwrap();
        s.write_all(&framed(
            &json_frame(host, "fs_create_file", "/a", &file_id(i as u32, 0)),
            false,
        ))
        .unwrap();
    }
    wait_for(Duration::from_secs(10), || {
        (sink.events().len() == hosts.len()).then_some(())
    });
    let text = broker.metrics_text();
    let nodes: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("qbroker_node_frames_total{"))
        .collect();
    assert_eq!(nodes.len(), 4 + 1, "{nodes:?}"); // 3 named, ~other, and the address of the long one's cluster
    assert!(text.contains("node=\"~other\""));
    assert_eq!(metric(&broker, "qbroker_nodes_over_limit_total"), 3.0);
    assert_eq!(metric(&broker, "qbroker_invalid_hostnames_total"), 1.0);
    assert!(
        !text.contains(&"9".repeat(300)),
        "an invalid HOSTNAME became a label"
    );
    broker.stop();
}
