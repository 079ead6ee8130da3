//! Every metric docs/troubleshooting.md tells operators to watch is on a
//! running broker's /metrics page, under that name.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::*;

#[test]
fn every_metric_the_troubleshooting_guide_names_is_served() {
    let guide = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/troubleshooting.md"
    ))
    .unwrap();
    let mut names: Vec<&str> = guide
        .match_indices("qbroker_")
        .map(|(at, _)| {
            let rest = &guide[at..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect();
    // `qbroker_forward` is the rsyslog action of the deployment guide's
    // snippet, not a metric.
    names.retain(|n| *n != "qbroker_forward");
    names.sort();
    names.dedup();
    assert!(names.len() >= 20, "{names:?}");

    let sink = Sink::start();
    let dir = tempfile::tempdir().unwrap();
    let api = QumuloApi::start();
    let broker = Broker::start(&format!(
        "{}\n{}",
        config_text(&sink, dir.path(), ""),
        api.cluster_config("doc")
    ));
    let mut s = TcpStream::connect(broker.syslog).unwrap();
    s.write_all(&framed(
        &json_frame("doc-1", "fs_create_file", "/a", &file_id(1, 0)),
        false,
    ))
    .unwrap();
    // A frame whose header is not syslog: the parse error series appear.
    s.write_all(b"<14>1 2026-11-26T10:00:00Z doc-1 qumulo - - - not an audit record\n")
        .unwrap();
    wait_for(Duration::from_secs(20), || {
        (sink.events().len() == 1
            && broker
                .metric("qbroker_cluster_parse_errors_total{cluster=\"doc\",kind=\"payload\"}")?
                >= 1.0)
            .then_some(())
    });
    let text = broker.metrics_text();
    let missing: Vec<&&str> = names
        .iter()
        .filter(|n| {
            !text.lines().any(|l| {
                l.strip_prefix(**n)
                    .is_some_and(|r| r.starts_with(['{', ' ', '_']))
            })
        })
        .collect();
    assert!(
        missing.is_empty(),
        "named in the guide, not served: {missing:?}"
    );
    drop(s);
    broker.stop();
}
