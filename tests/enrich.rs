//! Enrichment end to end: syslog in, a Qumulo REST API stand-in over real TLS,
//! the HTTPS sink out. Metadata changes become permission, protection and owner
//! events; API trouble becomes generic `*.permissions_change`, never a loss.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const HOST: &str = "qa-1";

/// One node's connection, frames sent in order.
struct Node(TcpStream);

impl Node {
    fn connect(broker: &Broker) -> Node {
        let s = TcpStream::connect(broker.syslog).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        Node(s)
    }

    fn send(&mut self, frame: &str) {
        self.0.write_all(&framed(frame, false)).unwrap();
        self.0.flush().unwrap();
    }
}

/// Every accepted event in arrival order, each batch counted once.
fn arrived(sink: &Sink) -> Vec<Value> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for r in sink.accepted() {
        if seen.insert(r.idempotency_key.clone()) {
            out.extend(r.body["events"].as_array().unwrap().iter().cloned());
        }
    }
    out
}

fn wait_count(sink: &Sink, n: usize) -> Vec<Value> {
    wait_for(Duration::from_secs(20), || {
        let ev = arrived(sink);
        (ev.len() >= n).then_some(ev)
    })
}

fn ops(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["operation"].as_str().unwrap().to_string())
        .collect()
}

/// A broker whose cluster `qa` reads ACLs from `api`; the sink takes one
/// request at a time, so arrival order is spool order.
fn setup(api: &QumuloApi, extra: &str) -> (Sink, tempfile::TempDir, Broker) {
    let sink = Sink::start();
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(&sink, dir.path(), extra).replace("in_flight = 2", "in_flight = 1")
        + &api.cluster_config("qa");
    let broker = Broker::start(&text);
    (sink, dir, broker)
}

const R: &[&str] = &[
    "READ",
    "READ_ACL",
    "READ_ATTR",
    "READ_EA",
    "SYNCHRONIZE",
    "EXECUTE",
];
const RW: &[&str] = &[
    "READ",
    "MODIFY",
    "EXTEND",
    "WRITE_ATTR",
    "WRITE_EA",
    "DELETE",
];

#[test]
fn scripted_acl_changes_become_exactly_the_expected_events() {
    let api = QumuloApi::start();
    // Tokens expire after 3 requests: the broker logs in again on the 401.
    api.expire_tokens_after(3);
    let (sink, _dir, broker) = setup(&api, "");
    let mut node = Node::connect(&broker);
    let file = "140624751830626345080086044861";
    let dir_id = "2002";
    api.set_type(dir_id, true);

    let mut total = 0;
    let mut step = |node: &mut Node, frame: String, want: &[&str]| -> Vec<Value> {
        node.send(&frame);
        total += want.len();
        let all = wait_count(&sink, total);
        let new = all[total - want.len()..].to_vec();
        assert_eq!(ops(&new), want, "after {frame}");
        // and nothing more comes
        std::thread::sleep(Duration::from_millis(120));
        assert_eq!(
            arrived(&sink).len(),
            total,
            "unexpected events after {frame}"
        );
        new
    };
    let wm = |before: &str, after: &str| metadata_frame(HOST, file, "/docs/a.txt", before, after);

    step(
        &mut node,
        json_frame(HOST, "fs_create_file", "/docs/a.txt", file),
        &["file.create"],
    );
    // First sight: nothing to compare with.
    api.set_acl(
        file,
        acl_body(
            false,
            &[
                ("ALLOWED", "1104", RW, &[]),
                ("ALLOWED", "8589934592", R, &["INHERITED"]),
            ],
        ),
    );
    let e = step(&mut node, wm("1104", "1104"), &["file.permissions_change"]);
    assert!(e[0].get("acl").is_none());

    // chmod: an ACE added (inherited ones never count).
    api.set_acl(
        file,
        acl_body(
            false,
            &[
                ("ALLOWED", "1104", RW, &[]),
                ("ALLOWED", "1200", R, &[]),
                ("ALLOWED", "8589934592", R, &["INHERITED"]),
            ],
        ),
    );
    let e = step(&mut node, wm("1104", "1104"), &["file.permissions_add"]);
    assert_eq!(e[0]["object_type"], "file");
    assert_eq!(
        e[0]["acl"],
        json!({"added": [{"type": "ALLOWED",
            "trustee": {"domain": "ACTIVE_DIRECTORY", "auth_id": "1200", "sid": "S-1-5-21-1200", "name": "AD\\u1200"},
            "rights": ["EXECUTE", "READ", "READ_ACL", "READ_ATTR", "READ_EA", "SYNCHRONIZE"], "flags": []}]})
    );
    assert_eq!(e[0]["qumulo_operation"], "fs_write_metadata");
    assert_eq!(e[0]["user"]["name"], "AD\\alice");

    // chmod: an ACE removed.
    api.set_acl(file, acl_body(false, &[("ALLOWED", "1200", R, &[])]));
    let e = step(&mut node, wm("1104", "1104"), &["file.permissions_remove"]);
    assert_eq!(e[0]["acl"]["removed"][0]["trustee"]["auth_id"], "1104");
    assert_eq!(
        e[0]["acl"]["removed"][0]["rights"]
            .as_array()
            .unwrap()
            .len(),
        RW.len()
    );

    // protect (inheritance blocked)
    api.set_acl(file, acl_body(true, &[("ALLOWED", "1200", R, &[])]));
    let e = step(&mut node, wm("1104", "1104"), &["file.protection_add"]);
    assert_eq!(e[0]["acl"], json!({"protected": true}));

    // unprotect and chown in one write: two events, one seq.
    api.set_acl(file, acl_body(false, &[("ALLOWED", "1200", R, &[])]));
    let e = step(
        &mut node,
        wm("1104", "1300"),
        &["file.owner_change", "file.protection_remove"],
    );
    assert_eq!(e[0]["seq"], e[1]["seq"]);
    assert_eq!(e[0]["owner"]["before"]["auth_id"], "1104");
    assert_eq!(e[0]["owner"]["after"]["auth_id"], "1300");
    assert!(e[1].get("owner").is_none());
    assert_eq!(e[1]["acl"], json!({"protected": false}));

    // Reordered ACEs and a new inherited one: no change.
    api.set_acl(
        file,
        acl_body(
            false,
            &[
                ("ALLOWED", "9", R, &["INHERITED"]),
                (
                    "ALLOWED",
                    "1200",
                    &[
                        "READ_EA",
                        "READ",
                        "SYNCHRONIZE",
                        "READ_ATTR",
                        "EXECUTE",
                        "READ_ACL",
                    ],
                    &[],
                ),
            ],
        ),
    );
    step(&mut node, wm("1300", "1300"), &["file.permissions_change"]);

    // Rights changed and another trustee added: one removed, two added.
    api.set_acl(
        file,
        acl_body(
            false,
            &[
                ("ALLOWED", "1200", RW, &[]),
                ("DENIED", "1201", &["DELETE"], &[]),
            ],
        ),
    );
    let e = step(
        &mut node,
        wm("1300", "1300"),
        &["file.permissions_remove", "file.permissions_add"],
    );
    assert_eq!(e[0]["acl"]["removed"].as_array().unwrap().len(), 1);
    assert_eq!(e[1]["acl"]["added"].as_array().unwrap().len(), 2);

    // A directory without a trailing '/': its type comes from the attributes...
    api.set_acl(
        dir_id,
        acl_body(false, &[("ALLOWED", "1104", RW, &["CONTAINER_INHERIT"])]),
    );
    step(
        &mut node,
        metadata_frame(HOST, dir_id, "/docs/sub", "1104", "1104"),
        &["directory.permissions_change"],
    );
    api.set_acl(
        dir_id,
        acl_body(
            false,
            &[
                ("ALLOWED", "1104", RW, &["CONTAINER_INHERIT"]),
                ("ALLOWED", "1200", R, &[]),
            ],
        ),
    );
    step(
        &mut node,
        metadata_frame(HOST, dir_id, "/docs/sub", "1104", "1104"),
        &["directory.permissions_add"],
    );
    // ...and the type cache remembers it for the delete.
    step(
        &mut node,
        json_frame(HOST, "fs_delete", "/docs/sub", dir_id),
        &["directory.delete"],
    );
    // A directory created, then deleted without a trailing '/'.
    step(
        &mut node,
        json_frame(HOST, "fs_create_directory", "/docs/new", "3003"),
        &["directory.create"],
    );
    step(
        &mut node,
        json_frame(HOST, "fs_delete", "/docs/new", "3003"),
        &["directory.delete"],
    );

    let text = broker.metrics_text();
    let m = |s: &str| metric_value(&text, s).unwrap_or_else(|| panic!("{s} missing"));
    assert_eq!(m("qbroker_enrich_jobs_total"), 9.0);
    assert_eq!(m("qbroker_enrich_cache_hits_total"), 7.0);
    assert_eq!(m("qbroker_enrich_cache_misses_total"), 2.0);
    assert_eq!(
        m("qbroker_enrich_fallbacks_total{reason=\"no_baseline\"}"),
        2.0
    );
    assert_eq!(
        m("qbroker_enrich_fallbacks_total{reason=\"unchanged\"}"),
        1.0
    );
    assert_eq!(m("qbroker_enrich_requests_total{kind=\"attributes\"}"), 1.0);
    // 9 authorised requests at 3 per token, each 401 answered by a new login
    assert!(m("qbroker_enrich_token_renewals_total") >= 2.0, "{text}");
    assert_eq!(m("qbroker_enrich_logins_total"), api.logins() as f64);
    assert!(
        api.log().iter().any(|(_, _, ok)| !ok),
        "no token was ever refused"
    );
    assert_eq!(
        m("qbroker_cluster_events_total{cluster=\"qa\",operation=\"file.permissions_add\"}"),
        2.0
    );
    assert_eq!(m("qbroker_enrich_queue_events"), 0.0);
    check_batches(&sink);
    assert!(sink.problems().is_empty(), "{:?}", sink.problems());
    broker.stop();
}

#[test]
fn later_events_of_a_file_wait_for_its_enrichment_others_do_not() {
    let api = QumuloApi::start();
    let (sink, _dir, broker) = setup(&api, "");
    let mut node = Node::connect(&broker);
    let f = "5005";
    api.set_acl(f, acl_body(false, &[("ALLOWED", "1104", RW, &[])]));
    api.set_type(f, false);
    // Seed the cache.
    node.send(&metadata_frame(HOST, f, "/slow.txt", "1", "1"));
    wait_count(&sink, 1);
    api.set_acl(f, acl_body(true, &[("ALLOWED", "1104", RW, &[])]));
    api.set_mode(ApiMode::Delay(Duration::from_millis(700)));
    node.send(&metadata_frame(HOST, f, "/slow.txt", "1", "1"));
    node.send(&json_frame(HOST, "fs_write_data", "/slow.txt", f));
    node.send(&json_frame(HOST, "fs_read_data", "/other.txt", "6006"));
    node.send(&json_frame(HOST, "fs_rename", "/slow.txt", f).replace(
        r#""path":"/slow.txt""#,
        r#""path":"/slow.txt","target":"/slow2.txt""#,
    ));
    // The other file's read goes out while the lookup is slow.
    let first = wait_count(&sink, 2);
    assert_eq!(first[1]["operation"], "file.read", "{first:?}");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        arrived(&sink).len(),
        2,
        "events of the slow file went out early"
    );
    let all = wait_count(&sink, 5);
    assert_eq!(
        ops(&all),
        [
            "file.permissions_change",
            "file.read",
            "file.protection_add",
            "file.write",
            "file.rename"
        ]
    );
    // held events keep their own seq
    let seqs: Vec<u64> = all.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(
        seqs[1] > seqs[2] && seqs[2] < seqs[3] && seqs[3] < seqs[4],
        "{seqs:?}"
    );
    check_batches(&sink);
    broker.stop();
}

/// A file changed faster than its lookups come back: `timeout_ms` bounds how
/// long any of its events is held, counted from when it was read, not from
/// when its own lookup started (each change would otherwise wait for every
/// earlier one: here 5 lookups of 1 s each, in a row).
#[test]
fn a_file_changed_faster_than_the_api_answers_holds_no_event_past_the_timeout() {
    let api = QumuloApi::start();
    let extra = "[enrich]\nrequest_timeout_ms = 1000\ntimeout_ms = 1000\nin_flight = 1\n";
    let (sink, _dir, broker) = setup(&api, extra);
    let mut node = Node::connect(&broker);
    let f = "5105";
    api.set_acl(f, acl_body(false, &[("ALLOWED", "1104", RW, &[])]));
    api.set_type(f, false);
    // two requests per lookup (attributes, ACL), 500 ms each
    api.set_mode(ApiMode::Delay(Duration::from_millis(500)));
    let sent = std::time::Instant::now();
    for _ in 0..5 {
        node.send(&metadata_frame(HOST, f, "/hot.txt", "1", "1"));
    }
    node.send(&json_frame(HOST, "fs_write_data", "/hot.txt", f));
    let all = wait_count(&sink, 6);
    let took = sent.elapsed();
    assert_eq!(
        ops(&all),
        [
            "file.permissions_change",
            "file.permissions_change",
            "file.permissions_change",
            "file.permissions_change",
            "file.permissions_change",
            "file.write"
        ]
    );
    assert!(
        took < Duration::from_millis(3500),
        "the file's events were held {took:?}; the timeout is 1 s"
    );
    let timeouts = broker
        .metric("qbroker_enrich_fallbacks_total{reason=\"timeout\"}")
        .unwrap();
    assert!(timeouts >= 3.0, "timeout fallbacks {timeouts}");
    check_batches(&sink);
    broker.stop();
}

#[test]
fn api_down_slow_or_saturated_yields_permissions_change_never_a_loss() {
    let api = QumuloApi::start();
    let extra = "[enrich]\nrequest_timeout_ms = 300\ntimeout_ms = 400\nqueue_max_events = 3\nin_flight = 1\nshutdown_wait_ms = 100\n";
    let (sink, _dir, broker) = setup(&api, extra);
    let mut node = Node::connect(&broker);
    for id in ["7001", "7002", "7003"] {
        api.set_acl(id, acl_body(false, &[("ALLOWED", "1", R, &[])]));
        api.set_type(id, false);
    }
    // Down: 503.
    api.set_mode(ApiMode::Down);
    node.send(&metadata_frame(HOST, "7001", "/a", "1", "1"));
    node.send(&metadata_frame(HOST, "7002", "/b/", "1", "2"));
    let e = wait_count(&sink, 2);
    assert_eq!(
        ops(&e),
        ["file.permissions_change", "directory.owner_change"]
    );
    wait_for(Duration::from_secs(5), || {
        (broker.metric("qbroker_enrich_fallbacks_total{reason=\"api_error\"}")? == 2.0)
            .then_some(())
    });
    // Slow past the timeout.
    api.set_mode(ApiMode::Delay(Duration::from_secs(2)));
    node.send(&metadata_frame(HOST, "7003", "/c", "1", "1"));
    let e = wait_count(&sink, 3);
    assert_eq!(e[2]["operation"], "file.permissions_change");
    assert_eq!(
        broker.metric("qbroker_enrich_fallbacks_total{reason=\"timeout\"}"),
        Some(1.0)
    );
    // Saturated: a queue of 3 held events; the rest go out at once, generic.
    for i in 0..20 {
        node.send(&metadata_frame(HOST, &format!("80{i:02}"), "/q", "1", "1"));
    }
    node.send(&json_frame(HOST, "fs_write_data", "/w", "9999"));
    let e = wait_count(&sink, 3 + 21);
    assert!(
        ops(&e[3..])
            .iter()
            .filter(|o| *o == "file.permissions_change")
            .count()
            >= 17
    );
    let queue_full = broker
        .metric("qbroker_enrich_fallbacks_total{reason=\"queue_full\"}")
        .unwrap();
    assert!(queue_full >= 17.0, "queue_full {queue_full}");
    // Shutdown with a lookup still in flight: its generic event is flushed.
    let jobs = broker.metric("qbroker_enrich_jobs_total").unwrap();
    node.send(&metadata_frame(HOST, "7001", "/a", "1", "1"));
    wait_until(Duration::from_secs(10), "its lookup started", || {
        broker.metric("qbroker_enrich_jobs_total") > Some(jobs)
    });
    drop(node);
    broker.stop();
    let e = arrived(&sink);
    assert_eq!(e.len(), 3 + 21 + 1, "{:?}", ops(&e));
    assert_eq!(e.last().unwrap()["file_id"], "7001");
    assert!(sink.problems().is_empty(), "{:?}", sink.problems());
    check_batches(&sink);
}
