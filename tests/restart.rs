//! The broker as a process: SIGTERM mid-stream, then a restart on the same spool.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

fn write_config(dir: &std::path::Path, sink: &Sink, fsync: &str) -> std::path::PathBuf {
    let text = config_text(sink, dir, &format!("\n[spool]\nfsync = \"{fsync}\"\n"))
        .replace("grace_secs = 5", "grace_secs = 1");
    let path = dir.join("qbroker.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Send numbered frames to `addr` until told to stop or the connection breaks.
fn stream_frames(
    addr: std::net::SocketAddr,
    host: &'static str,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let f = framed(
                &json_frame(host, "fs_write_data", "/data/f", &file_id(1, i)),
                false,
            );
            if s.write_all(&f).is_err() {
                break;
            }
            i += 1;
            if i.is_multiple_of(50) {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        i
    })
}

#[test]
fn sigterm_mid_stream_keeps_every_frame_read_through_a_restart() {
    let sink = Sink::start();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &sink, "interval");
    let mut broker = BrokerProcess::spawn(QBROKER, &config);
    let stop = Arc::new(AtomicBool::new(false));
    let sender = stream_frames(broker.syslog, "kappa-1", stop.clone());
    wait_for(Duration::from_secs(20), || {
        (sink.accepted().len() >= 5).then_some(())
    });
    // The target fails from now on: what is read but not delivered must survive
    // the shutdown in the spool.
    sink.set_mode(Mode::Fail(503, None));
    std::thread::sleep(Duration::from_millis(300));
    let status = broker.signal_and_wait("TERM");
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
    stop.store(true, Ordering::Relaxed);
    let sent = sender.join().unwrap();
    let log = broker.log();
    let read = log_field(&log, "cluster totals", "frames").expect("totals logged");
    assert!(read > 0 && read <= sent, "read {read} of {sent}");
    assert!(
        log.iter()
            .any(|l| l.contains("undelivered batches stay in the spool")),
        "{log:#?}"
    );

    sink.set_mode(Mode::Accept);
    let _again = BrokerProcess::spawn(QBROKER, &config);
    wait_for(Duration::from_secs(30), || {
        let n = unique_identities(&sink).len() as u64;
        (n >= read).then_some(())
    });
    std::thread::sleep(Duration::from_millis(300));
    // Every frame read arrived, once per batch id, and nothing else: TCP delivers
    // in order, so what was read is exactly the first `read` frames.
    let got = unique_identities(&sink);
    assert_eq!(got, (0..read).map(|i| (1, i)).collect::<BTreeSet<_>>());
}

fn unique_identities(sink: &Sink) -> BTreeSet<(u32, u64)> {
    let mut seen = BTreeSet::new();
    let mut ids = BTreeSet::new();
    for r in sink.accepted() {
        if seen.insert(r.idempotency_key.clone()) {
            for e in r.body["events"].as_array().unwrap() {
                assert!(
                    ids.insert(identity(e)),
                    "event twice in different batches: {e}"
                );
            }
        }
    }
    ids
}
