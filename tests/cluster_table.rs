//! The cluster table: clusters known only by their HOSTNAME come and go without
//! filling it for good, and a configured cluster is never refused for room.
//! Loopback only, bounded in time.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;

fn send_one(addr: std::net::SocketAddr, host: &str, i: u64) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(&framed(
        &json_frame(host, "fs_write_data", "/d/f", &file_id(1, i)),
        false,
    ))
    .unwrap();
    s
}

fn frames(broker: &Broker, cluster: &str) -> Option<f64> {
    broker.metric(&format!(
        "qbroker_cluster_frames_total{{cluster=\"{cluster}\"}}"
    ))
}

/// Whether the broker closed `s` (reads EOF or an error within the timeout).
fn closed_by_broker(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 16];
    !matches!(s.read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut)
}

#[test]
fn idle_clusters_make_room_and_a_configured_one_is_never_refused() {
    let sink = Sink::start();
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}\n[ingest]\nmax_clusters = 8\nforget_idle_cluster_secs = 2\n[[clusters]]\nname = \"fixed\"\ntarget = \"sink\"\n",
        config_text(&sink, dir.path(), "")
    );
    let broker = Broker::start(&text);

    // 20 short-lived clusters, one after the other: more than max_clusters, but
    // each one is idle by the time the next arrives.
    for i in 0..20u64 {
        let host = format!("short{i}-1");
        drop(send_one(broker.syslog, &host, i));
        wait_for(Duration::from_secs(10), || {
            (frames(&broker, &format!("short{i}"))? == 1.0).then_some(())
        });
    }
    // A real new cluster is still taken.
    let _real = send_one(broker.syslog, "real-1", 0);
    wait_for(Duration::from_secs(10), || {
        (frames(&broker, "real")? == 1.0).then_some(())
    });

    // Eight clusters holding connections fill the table (real is one of them):
    // a further unknown one is refused, a configured one is not.
    let busy: Vec<TcpStream> = (0..7u64)
        .map(|i| {
            let host = format!("busy{i}-1");
            let s = send_one(broker.syslog, &host, i);
            wait_for(Duration::from_secs(10), || {
                (frames(&broker, &format!("busy{i}"))? == 1.0).then_some(())
            });
            s
        })
        .collect();
    let mut extra = send_one(broker.syslog, "extra-1", 0);
    assert!(
        closed_by_broker(&mut extra),
        "a ninth busy cluster is refused"
    );
    assert_eq!(frames(&broker, "extra"), None);
    let _fixed = send_one(broker.syslog, "fixed-1", 0);
    wait_for(Duration::from_secs(10), || {
        (frames(&broker, "fixed")? == 1.0).then_some(())
    });

    // Once their connections end, the idle clusters' series leave /metrics
    // after forget_idle_cluster_secs; the configured one stays.
    drop(busy);
    wait_for(Duration::from_secs(20), || {
        let text = broker.metrics_text();
        (!text.contains("cluster=\"busy") && !text.contains("cluster=\"short")).then_some(())
    });
    assert_eq!(frames(&broker, "fixed"), Some(1.0));
    // Every frame that was taken was delivered.
    wait_for(Duration::from_secs(20), || {
        (sink.events().len() == 20 + 1 + 7 + 1).then_some(())
    });
    broker.stop();
}
