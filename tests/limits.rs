//! Resource limits of the broker process: its peak memory (VmHWM) under a
//! garbage flood and a max-rate flood stays under `max_memory_bytes`, and its
//! file descriptors stay bounded by `ingest.max_connections` under a connection
//! storm. The broker runs as its own process so that /proc tells its figures
//! alone. docs/hardening.md quotes what this test prints.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const CEILING: u64 = 192 << 20;

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

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

/// Connect, write `data` over and over until told to stop; reconnect when the
/// broker closes the connection. Returns the connections made.
fn hammer(
    addr: SocketAddr,
    data: Arc<Vec<u8>>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut connections = 0;
        while !stop.load(Ordering::SeqCst) {
            let Ok(mut s) = TcpStream::connect(addr) else {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            };
            connections += 1;
            s.set_write_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            while !stop.load(Ordering::SeqCst) {
                if s.write_all(&data).is_err() {
                    break;
                }
            }
        }
        connections
    })
}

#[test]
fn memory_and_descriptors_stay_bounded_under_floods() {
    // As deploy/qbroker.service runs it: mimalloc without transparent huge pages,
    // which would count its arena in RSS 2 MiB at a time (docs/hardening.md).
    // (The only test of this binary: no other thread reads the environment.)
    std::env::set_var("MIMALLOC_ALLOW_THP", "0");
    let sink = Sink::start();
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "max_memory_bytes = {CEILING}\n{}\n[ingest]\nmax_connections = 64\nmax_connections_per_source = 64\nmax_clusters = 8\nmax_frame_bytes = 65536\nread_buffer_bytes = 65536\n[queue]\nsize = 20000\nmax_bytes = 8388608\n",
        config_text(&sink, dir.path(), "")
    );
    let cfg = qbroker::config::RawConfig::parse(&text)
        .unwrap()
        .validate()
        .expect("the budgets fit the ceiling");
    let budget = cfg.memory_budget();
    assert!(budget.total() <= CEILING);
    let file = dir.path().join("qbroker.toml");
    std::fs::write(&file, &text).unwrap();
    let broker = BrokerProcess::spawn(QBROKER, &file);
    let pid = broker.pid();
    let (rss0, fds0) = (status_kib(pid, "VmRSS:"), open_fds(pid));

    // Phase 1, 5 s: four max-rate floods of valid frames, eight garbage floods and
    // four endless lines, each reconnecting whenever the broker closes it.
    let stop = Arc::new(AtomicBool::new(false));
    let mut valid = Vec::new();
    for i in 0..2000u64 {
        valid.extend(framed(
            &json_frame("rate-1", "fs_write_data", "/flood/file", &file_id(1, i)),
            i % 2 == 0,
        ));
    }
    let valid = Arc::new(valid);
    let mut endless = framed(
        &json_frame("endless-1", "fs_read_data", "/a", &file_id(2, 0)),
        false,
    );
    endless.extend(std::iter::repeat_n(b'x', 4 << 20));
    let endless = Arc::new(endless);
    let mut threads = Vec::new();
    for i in 0..4 {
        threads.push(hammer(broker.syslog, valid.clone(), stop.clone()));
        threads.push(hammer(broker.syslog, endless.clone(), stop.clone()));
        for j in 0..2 {
            threads.push(hammer(
                broker.syslog,
                Arc::new(garbage(1 << 20, 7 + i * 2 + j)),
                stop.clone(),
            ));
        }
    }
    let started = Instant::now();
    let mut peak_fds = fds0;
    let mut rss_each_second = Vec::new();
    for tick in 1..=50 {
        peak_fds = peak_fds.max(open_fds(pid));
        if tick % 10 == 0 {
            rss_each_second.push(status_kib(pid, "VmRSS:") >> 10);
        }
        let next = started + Duration::from_millis(100 * tick);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    let frames = broker
        .metric("qbroker_cluster_frames_total{cluster=\"rate\"}")
        .unwrap_or(0.0);
    let garbage_closed = broker
        .metric("qbroker_connections_closed_bad_frames_total")
        .unwrap();
    let overruns = broker
        .metric("qbroker_connections_closed_frame_overrun_total")
        .unwrap();
    stop.store(true, Ordering::SeqCst);
    let connections: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    let hwm1 = status_kib(pid, "VmHWM:");

    // Phase 2: a storm of 300 idle connections against max_connections = 64,
    // once the floods' connections are gone.
    wait_for(Duration::from_secs(10), || {
        (broker.metric("qbroker_connections_active")? == 0.0).then_some(())
    });
    let refused0 = broker
        .metric("qbroker_connections_refused_limit_total")
        .unwrap();
    let mut idle = Vec::new();
    for _ in 0..300 {
        if let Ok(s) = TcpStream::connect(broker.syslog) {
            idle.push(s);
        }
    }
    let storm = idle.len() as f64;
    // Wait until the broker has taken or refused every one of them.
    let (active, refused) = wait_for(Duration::from_secs(30), || {
        let active = broker.metric("qbroker_connections_active")?;
        let refused = broker.metric("qbroker_connections_refused_limit_total")? - refused0;
        (active + refused >= storm).then_some((active, refused))
    });
    let storm_fds = open_fds(pid);
    // The broker still serves: a well-behaved node gets through once the storm ends.
    drop(idle);
    wait_for(Duration::from_secs(10), || {
        (broker.metric("qbroker_connections_active")? == 0.0).then_some(())
    });
    let mut s = TcpStream::connect(broker.syslog).unwrap();
    s.write_all(&framed(
        &json_frame("after-1", "fs_create_file", "/after", &file_id(3, 0)),
        false,
    ))
    .unwrap();
    // (Read, that is: delivery waits its turn behind the flood's batches.)
    wait_for(Duration::from_secs(10), || {
        (broker.metric("qbroker_cluster_frames_total{cluster=\"after\"}")? == 1.0).then_some(())
    });
    drop(s);
    let hwm = status_kib(pid, "VmHWM:");
    let limit_fds = qbroker::open_files_limit().unwrap_or(0);
    eprintln!(
        "limits: budget {} MiB (ceiling {} MiB); RSS at start {} MiB, each second of the floods {rss_each_second:?} MiB; peak RSS {} MiB after the floods \
         ({frames} valid frames read, {connections} connections, {garbage_closed} garbage and \
         {overruns} endless ones closed), {} MiB in all; fds at start {fds0}, peak {peak_fds} in the \
         floods, {storm_fds} in a storm of 300 ({active} active, {refused} refused); nofile limit {limit_fds}",
        budget.total() >> 20,
        CEILING >> 20,
        rss0 >> 10,
        hwm1 >> 10,
        hwm >> 10,
    );
    assert!(frames > 0.0 && garbage_closed > 0.0 && overruns > 0.0);
    assert!(
        hwm << 10 < budget.total(),
        "peak RSS {} MiB over the budget of {} MiB",
        hwm >> 10,
        budget.total() >> 20
    );
    assert_eq!(active, 64.0, "the storm filled max_connections");
    assert_eq!(refused, storm - 64.0);
    assert!(
        storm_fds <= fds0 + 64 + 16,
        "{storm_fds} fds open with 64 connections (started with {fds0})"
    );
}
