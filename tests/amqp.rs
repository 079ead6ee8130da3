//! AMQP egress against a real RabbitMQ (Debian's rabbitmq-server, started by
//! the tests on loopback: testkit's rabbitmq module): a real qbroker publishes
//! over amqps:// with publisher confirms; a consumer on a queue bound to the
//! exchange checks that every event arrives. Faults: missing exchange, wrong
//! password, unroutable messages, RabbitMQ killed and restarted, a memory
//! alarm; registration through /v1/rmq/objects; Protobuf bodies decoded by
//! protoc; a pinned self-signed certificate.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use common::{file_id, framed, identity, json_frame, wait_for, Broker, BrokerProcess, QBROKER};
use serde_json::Value;
use testkit::rabbitmq::{Consumer, Got, Options, RabbitMq, ServerTls, PASSWORD, USER, VHOST};

/// A RabbitMQ of the test's own, serving `tls` (None: a certificate of a test CA).
fn start_rabbitmq(tls: Option<ServerTls>) -> RabbitMq {
    RabbitMq::start_blocking(Options {
        tls,
        ..Options::default()
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

/// One RabbitMQ for the tests that do not stop it or raise its alarms; each
/// uses its own exchange, queue and cluster names. Stopped when the last
/// test using it is done.
fn shared() -> Arc<RabbitMq> {
    static SHARED: Mutex<Weak<RabbitMq>> = Mutex::new(Weak::new());
    let mut g = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(r) = g.upgrade() {
        return r;
    }
    let r = Arc::new(start_rabbitmq(None));
    *g = Arc::downgrade(&r);
    r
}

/// Tests with a RabbitMQ of their own run one at a time (2-core CI machines).
fn private() -> std::sync::MutexGuard<'static, ()> {
    static ONE: Mutex<()> = Mutex::new(());
    ONE.lock().unwrap_or_else(|e| e.into_inner())
}

fn send_frames(addr: SocketAddr, host: &str, node: u32, range: std::ops::Range<u64>) {
    let mut s = TcpStream::connect(addr).unwrap();
    for i in range {
        let frame = json_frame(host, "fs_create_file", &format!("/f{i}"), &file_id(node, i));
        s.write_all(&framed(&frame, false)).unwrap();
    }
    s.flush().unwrap();
}

/// A broker configuration whose target `rmq` is the RabbitMQ's exchange.
fn config(rmq: &RabbitMq, dir: &Path, exchange: &str, password: &str, extra: &str) -> String {
    let pw = dir.join("rabbit.password");
    std::fs::write(&pw, format!("{password}\n")).unwrap();
    format!(
        r#"
listen = "127.0.0.1:0"
metrics_listen = "127.0.0.1:0"
workers = 2
io_threads = 2
data_dir = "{data}"
default_target = "rmq"
[batch]
max_events = 50
max_age_ms = 50
[shutdown]
grace_secs = 5
[[targets]]
name = "rmq"
url = "amqps://127.0.0.1:{port}/{VHOST}"
ca_file = "{ca}"
exchange = "{exchange}"
username = "{USER}"
password_file = "{pw}"
in_flight = 2
timeout_secs = 10
connect_timeout_secs = 10
retry_initial_ms = 50
retry_max_ms = 1000
{extra}
"#,
        data = dir.join("data").display(),
        port = rmq.amqps_port,
        ca = rmq.ca_file.display(),
        pw = pw.display(),
    )
}

/// Every event of the messages, by identity, each message id once.
fn events_of(got: &[Got]) -> BTreeMap<(u32, u64), Value> {
    let mut seen = BTreeSet::new();
    let mut out = BTreeMap::new();
    for g in got {
        if !seen.insert(g.message_id.clone()) {
            continue;
        }
        let body: Value = serde_json::from_slice(&g.body).expect("a JSON body");
        for e in body["events"].as_array().unwrap() {
            out.insert(identity(e), e.clone());
        }
    }
    out
}

fn all_arrived(got: &[Got], node: u32, n: u64) -> bool {
    let events = events_of(got);
    (0..n).all(|i| events.contains_key(&(node, i)))
}

#[test]
fn every_event_arrives_over_amqps_in_both_message_modes() {
    let rmq = shared();
    rmq.declare_exchange("modes");
    let per_batch = Consumer::start(&rmq, "modes", "modes-batch", "mbatch");
    let per_event = Consumer::start(&rmq, "modes", "modes-event", "mevent.mevent-1");
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("rabbit.password");
    let extra = format!(
        r#"
[[targets]]
name = "per-event"
url = "amqps://127.0.0.1:{port}/{VHOST}"
ca_file = "{ca}"
exchange = "modes"
username = "{USER}"
password_file = "{pw}"
message = "event"
routing_key = "{{cluster}}.{{node}}"
[[clusters]]
name = "mbatch"
filer_id = 11
[[clusters]]
name = "mevent"
target = "per-event"
filer_id = 12
"#,
        port = rmq.amqps_port,
        ca = rmq.ca_file.display(),
        pw = pw.display(),
    );
    let broker = Broker::start(&config(&rmq, dir.path(), "modes", PASSWORD, &extra));
    send_frames(broker.syslog, "mbatch-1", 1, 0..300);
    send_frames(broker.syslog, "mevent-1", 1, 0..120);
    let batches = per_batch.wait(Duration::from_secs(60), |g| all_arrived(g, 1, 300));
    let events = per_event.wait(Duration::from_secs(60), |g| all_arrived(g, 1, 120));
    assert_eq!(events_of(&batches).len(), 300);
    assert_eq!(events_of(&events).len(), 120);
    for g in &batches {
        assert_eq!(g.delivery_mode, 2, "persistent");
        assert_eq!(g.content_type, "application/json");
        assert_eq!(g.kind, "qbroker.varonis.v1");
        assert_eq!(g.app_id, "qbroker");
        assert!(g.timestamp > 1_700_000_000);
        assert_eq!(g.routing_key, "mbatch");
        let body: Value = serde_json::from_slice(&g.body).unwrap();
        assert_eq!(g.message_id, body["batch_id"].as_str().unwrap());
        assert_eq!(g.headers["cluster"], "mbatch");
        assert_eq!(g.headers["filer_id"], "11");
        assert_eq!(
            g.headers["events"],
            body["events"].as_array().unwrap().len().to_string()
        );
        assert_eq!(body["filer_id"], 11);
    }
    for g in &events {
        let body: Value = serde_json::from_slice(&g.body).unwrap();
        let batch_id = body["batch_id"].as_str().unwrap();
        let index = g
            .message_id
            .strip_prefix(&format!("{batch_id}-"))
            .expect("message id: <batch id>-<index>");
        assert!(index.parse::<u32>().is_ok(), "{}", g.message_id);
        assert_eq!(body["events"].as_array().unwrap().len(), 1);
        assert_eq!(g.headers["events"], "1");
        assert_eq!(g.headers["filer_id"], "12");
        assert_eq!(g.routing_key, "mevent.mevent-1");
    }
    assert_eq!(
        broker.metric("qbroker_target_failing{target=\"rmq\"}"),
        Some(0.0)
    );
    broker.stop();
}

#[test]
fn a_missing_exchange_is_named_and_delivery_follows_its_creation() {
    let rmq = shared();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("qbroker.toml");
    std::fs::write(&file, config(&rmq, dir.path(), "late", PASSWORD, "")).unwrap();
    let broker = BrokerProcess::spawn(QBROKER, &file);
    send_frames(broker.syslog, "late-1", 1, 0..100);
    wait_for(Duration::from_secs(30), || {
        broker
            .log()
            .iter()
            .any(|l| {
                l.contains("target=rmq")
                    && l.contains("exchange \"late\" does not exist in vhost \"varonis\"")
                    && l.contains("create it")
            })
            .then_some(())
    });
    assert_eq!(
        broker.metric("qbroker_target_events_dead_lettered_total{target=\"rmq\"}"),
        Some(0.0)
    );
    rmq.declare_exchange("late");
    let consumer = Consumer::start(&rmq, "late", "late-q", "late");
    consumer.wait(Duration::from_secs(60), |g| all_arrived(g, 1, 100));
    assert!(!broker.log().iter().any(|l| l.contains(PASSWORD)));
}

#[test]
fn a_wrong_password_is_named_kept_in_the_spool_and_delivered_once_fixed() {
    let rmq = shared();
    rmq.declare_exchange("pw");
    let consumer = Consumer::start(&rmq, "pw", "pw-q", "pw");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("qbroker.toml");
    let wrong = "Wr0ng-S3cret-pw";
    std::fs::write(&file, config(&rmq, dir.path(), "pw", wrong, "")).unwrap();
    let mut broker = BrokerProcess::spawn(QBROKER, &file);
    send_frames(broker.syslog, "pw-1", 1, 0..80);
    wait_for(Duration::from_secs(30), || {
        broker
            .log()
            .iter()
            .any(|l| {
                l.contains("target=rmq") && l.contains("refused the login of user \"varonis\"")
            })
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    assert!(consumer.got().is_empty());
    assert_eq!(
        broker.metric("qbroker_target_failing{target=\"rmq\"}"),
        Some(1.0)
    );
    assert!(broker.signal_and_wait("TERM").success());
    assert!(
        !broker.log().iter().any(|l| l.contains(wrong)),
        "the password is never logged"
    );
    // The batches waited in the spool: the right password delivers them.
    std::fs::write(&file, config(&rmq, dir.path(), "pw", PASSWORD, "")).unwrap();
    let _broker = BrokerProcess::spawn(QBROKER, &file);
    consumer.wait(Duration::from_secs(60), |g| all_arrived(g, 1, 80));
}

#[test]
fn unroutable_batches_stay_until_a_queue_is_bound() {
    let rmq = shared();
    rmq.declare_exchange("nobody");
    let dir = tempfile::tempdir().unwrap();
    let admin = "admin-T0ken-unroutable";
    let broker = Broker::start(
        &(config(&rmq, dir.path(), "nobody", PASSWORD, "")
            + &format!(
                "[api]\nenabled = true\nlisten = \"127.0.0.1:0\"\nadmin_token = \"{admin}\"\n"
            )),
    );
    send_frames(broker.syslog, "unbound-1", 1, 0..100);
    // Returned messages: the batch is retried, not acknowledged.
    wait_for(Duration::from_secs(30), || {
        (broker.metric("qbroker_target_retries_total{target=\"rmq\"}")? >= 3.0).then_some(())
    });
    assert_eq!(
        broker.metric("qbroker_target_batches_delivered_total{target=\"rmq\"}"),
        Some(0.0)
    );
    assert_eq!(
        broker.metric("qbroker_target_failing{target=\"rmq\"}"),
        Some(1.0)
    );
    // The operator's view says why, in words, and since when.
    let (status, clusters) = api_call(&broker, admin, "GET", "/v1/clusters", &Value::Null);
    assert_eq!(status, 200, "{clusters}");
    let target = &clusters[0]["target"];
    assert_eq!(target["state"], "failing", "{clusters}");
    let error = target["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("unroutable") && error.contains("no queue is bound to exchange \"nobody\""),
        "{clusters}"
    );
    assert!(target["last_error_time"].as_str().is_some(), "{clusters}");
    let consumer = Consumer::start(&rmq, "nobody", "nobody-q", "unbound");
    consumer.wait(Duration::from_secs(60), |g| all_arrived(g, 1, 100));
    wait_for(Duration::from_secs(10), || {
        (broker.metric("qbroker_target_failing{target=\"rmq\"}")? == 0.0).then_some(())
    });
    broker.stop();
}

#[test]
fn rabbitmq_killed_and_restarted_mid_stream_loses_nothing() {
    let _one = private();
    let mut rmq = start_rabbitmq(None);
    rmq.declare_exchange("restart");
    let consumer = Consumer::start(&rmq, "restart", "restart-q", "restart");
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&config(&rmq, dir.path(), "restart", PASSWORD, ""));
    let syslog = broker.syslog;
    let sender = std::thread::spawn(move || {
        for chunk in 0..20u64 {
            send_frames(syslog, "restart-1", 1, chunk * 100..(chunk + 1) * 100);
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    consumer.wait(Duration::from_secs(60), |g| !g.is_empty());
    rmq.kill();
    std::thread::sleep(Duration::from_secs(1));
    rmq.launch_blocking().unwrap_or_else(|e| panic!("{e}"));
    sender.join().unwrap();
    let got = consumer.wait(Duration::from_secs(120), |g| all_arrived(g, 1, 2000));
    assert_eq!(events_of(&got).len(), 2000);
    // Copies, if any, carry the id of the message they copy.
    let mut ids = BTreeMap::new();
    for g in &got {
        ids.entry(g.message_id.clone())
            .or_insert_with(|| g.body.clone());
        assert_eq!(ids[&g.message_id], g.body, "a copy has the same body");
    }
    broker.stop();
}

#[test]
fn a_memory_alarm_pauses_publishing_and_nothing_is_lost() {
    let _one = private();
    let rmq = start_rabbitmq(None);
    rmq.declare_exchange("alarm");
    let consumer = Consumer::start(&rmq, "alarm", "alarm-q", "alarm");
    let dir = tempfile::tempdir().unwrap();
    let admin = "admin-T0ken-alarm";
    let broker = Broker::start(
        &(config(&rmq, dir.path(), "alarm", PASSWORD, "")
            + &format!(
                "[api]\nenabled = true\nlisten = \"127.0.0.1:0\"\nadmin_token = \"{admin}\"\n"
            )),
    );
    send_frames(broker.syslog, "alarm-1", 1, 0..100);
    consumer.wait(Duration::from_secs(60), |g| all_arrived(g, 1, 100));
    rmq.ctl(&["set_vm_memory_high_watermark", "0"])
        .unwrap_or_else(|e| panic!("{e}"));
    send_frames(broker.syslog, "alarm-1", 1, 100..400);
    wait_for(Duration::from_secs(30), || {
        (broker.metric("qbroker_target_blocked{target=\"rmq\"}")? == 1.0).then_some(())
    });
    let (_, clusters) = api_call(&broker, admin, "GET", "/v1/clusters", &Value::Null);
    assert_eq!(clusters[0]["target"]["state"], "blocked", "{clusters}");
    let during = events_of(&consumer.got()).len();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        events_of(&consumer.got()).len() < 400,
        "publishing paused while blocked ({during} events at the alarm)"
    );
    rmq.ctl(&["set_vm_memory_high_watermark", "0.4"])
        .unwrap_or_else(|e| panic!("{e}"));
    consumer.wait(Duration::from_secs(90), |g| all_arrived(g, 1, 400));
    wait_for(Duration::from_secs(30), || {
        (broker.metric("qbroker_target_blocked{target=\"rmq\"}")? == 0.0).then_some(())
    });
    broker.stop();
}

#[test]
fn a_pinned_self_signed_certificate_is_accepted_and_another_is_not() {
    let _one = private();
    let rmq = start_rabbitmq(Some(ServerTls::self_signed_ca_true().unwrap()));
    rmq.declare_exchange("pinned");
    let consumer = Consumer::start(&rmq, "pinned", "pinned-q", "pinned");
    let dir = tempfile::tempdir().unwrap();
    // The "CA" is the server's own CA:TRUE self-signed certificate.
    let broker = Broker::start(&config(&rmq, dir.path(), "pinned", PASSWORD, ""));
    send_frames(broker.syslog, "pinned-1", 1, 0..60);
    consumer.wait(Duration::from_secs(60), |g| all_arrived(g, 1, 60));
    broker.stop();

    // Another self-signed certificate as the CA: refused, in words.
    let other = dir.path().join("other.pem");
    std::fs::write(&other, ServerTls::self_signed_ca_true().unwrap().cert_pem).unwrap();
    let dir2 = tempfile::tempdir().unwrap();
    let text = config(&rmq, dir2.path(), "pinned", PASSWORD, "").replace(
        &rmq.ca_file.display().to_string(),
        &other.display().to_string(),
    );
    let file = dir2.path().join("qbroker.toml");
    std::fs::write(&file, text).unwrap();
    let broker = BrokerProcess::spawn(QBROKER, &file);
    send_frames(broker.syslog, "pinned-1", 1, 60..70);
    wait_for(Duration::from_secs(30), || {
        broker
            .log()
            .iter()
            .any(|l| l.contains("tls handshake") && l.contains("certificate"))
            .then_some(())
    });
}

/// A Protobuf text-format message as protoc prints it: every field a list
/// (repeated fields have several entries), scalars as their text.
#[derive(Debug, Clone)]
enum Text {
    Scalar(String),
    Message(BTreeMap<String, Vec<Text>>),
}

fn parse_text(input: &str) -> BTreeMap<String, Vec<Text>> {
    fn unescape(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'\\' {
                i += 1;
                match b[i] {
                    b'n' => out.push(b'\n'),
                    b't' => out.push(b'\t'),
                    b'r' => out.push(b'\r'),
                    d if d.is_ascii_digit() => {
                        let oct = std::str::from_utf8(&b[i..i + 3]).unwrap();
                        out.push(u8::from_str_radix(oct, 8).unwrap());
                        i += 2;
                    }
                    other => out.push(other),
                }
            } else {
                out.push(b[i]);
            }
            i += 1;
        }
        String::from_utf8(out).unwrap()
    }
    fn parse(lines: &mut std::iter::Peekable<std::str::Lines<'_>>) -> BTreeMap<String, Vec<Text>> {
        let mut out: BTreeMap<String, Vec<Text>> = BTreeMap::new();
        while let Some(line) = lines.next() {
            let line = line.trim();
            if line == "}" {
                break;
            }
            if let Some(name) = line.strip_suffix(" {") {
                let inner = parse(lines);
                out.entry(name.to_string())
                    .or_default()
                    .push(Text::Message(inner));
            } else if let Some((name, value)) = line.split_once(": ") {
                let value = match value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
                    Some(s) => unescape(s),
                    None => value.to_string(),
                };
                out.entry(name.to_string())
                    .or_default()
                    .push(Text::Scalar(value));
            } else {
                assert!(line.is_empty(), "unexpected protoc output: {line}");
            }
        }
        out
    }
    parse(&mut input.lines().peekable())
}

/// `json` (the JSON form of a field) and what protoc decoded for it agree.
fn same(path: &str, json: &Value, pb: Option<&Vec<Text>>) {
    let scalar = |pb: Option<&Vec<Text>>| -> Option<String> {
        let v = pb?;
        assert_eq!(v.len(), 1, "{path}: one value");
        match &v[0] {
            Text::Scalar(s) => Some(s.clone()),
            Text::Message(_) => panic!("{path}: a message where JSON has a scalar"),
        }
    };
    match json {
        Value::Null => assert!(pb.is_none(), "{path}: null in JSON, {pb:?} in Protobuf"),
        // proto3 leaves a non-optional field at its default out.
        Value::Bool(false) => assert!(
            matches!(scalar(pb).as_deref(), None | Some("false")),
            "{path}"
        ),
        Value::Number(n) if n.as_u64() == Some(0) => {
            assert!(matches!(scalar(pb).as_deref(), None | Some("0")), "{path}")
        }
        Value::Bool(b) => assert_eq!(scalar(pb), Some(b.to_string()), "{path}"),
        Value::Number(n) => assert_eq!(scalar(pb), Some(n.to_string()), "{path}"),
        Value::String(s) => assert_eq!(scalar(pb).as_deref(), Some(s.as_str()), "{path}"),
        Value::Array(items) => {
            let got = pb.cloned().unwrap_or_default();
            assert_eq!(got.len(), items.len(), "{path}: entries");
            for (i, (j, p)) in items.iter().zip(got.iter()).enumerate() {
                same(&format!("{path}[{i}]"), j, Some(&vec![p.clone()]));
            }
        }
        Value::Object(map) => {
            let v = pb.unwrap_or_else(|| panic!("{path}: missing in Protobuf"));
            assert_eq!(v.len(), 1, "{path}");
            let Text::Message(fields) = &v[0] else {
                panic!("{path}: a scalar where JSON has an object");
            };
            for (k, j) in map {
                same(&format!("{path}.{k}"), j, fields.get(k));
            }
            for k in fields.keys() {
                assert!(map.contains_key(k), "{path}.{k}: in Protobuf, not in JSON");
            }
        }
    }
}

#[test]
fn protobuf_bodies_decode_with_protoc_to_every_field_of_the_json() {
    let protoc = std::process::Command::new("protoc")
        .arg("--version")
        .output();
    assert!(
        protoc.is_ok_and(|o| o.status.success()),
        "protoc is missing: install Debian's protobuf-compiler (scripts/test does)"
    );
    let rmq = shared();
    rmq.declare_exchange("pbx");
    let json_side = Consumer::start(&rmq, "pbx", "pbx-json", "pbj");
    let proto_side = Consumer::start(&rmq, "pbx", "pbx-proto", "pbp");
    let proto_events = Consumer::start(&rmq, "pbx", "pbx-proto-events", "pbe");
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("rabbit.password");
    let extra = format!(
        r#"
[[targets]]
name = "proto"
url = "amqps://127.0.0.1:{port}/{VHOST}"
ca_file = "{ca}"
exchange = "pbx"
username = "{USER}"
password_file = "{pw}"
encoding = "protobuf"
[[targets]]
name = "proto-events"
url = "amqps://127.0.0.1:{port}/{VHOST}"
ca_file = "{ca}"
exchange = "pbx"
username = "{USER}"
password_file = "{pw}"
encoding = "protobuf"
message = "event"
[[clusters]]
name = "pbj"
filer_id = 21
[[clusters]]
name = "pbp"
target = "proto"
filer_id = 21
[[clusters]]
name = "pbe"
target = "proto-events"
filer_id = 21
"#,
        port = rmq.amqps_port,
        ca = rmq.ca_file.display(),
        pw = pw.display(),
    );
    let broker = Broker::start(&config(&rmq, dir.path(), "pbx", PASSWORD, &extra));
    // Creates, renames (new_path) and owner changes (owner), CSV and JSON.
    for host in ["pbj-1", "pbp-1", "pbe-1"] {
        let mut s = TcpStream::connect(broker.syslog).unwrap();
        for i in 0..90u64 {
            let id = file_id(1, i);
            let frame = match i % 3 {
                0 => json_frame(host, "fs_create_file", &format!("/f{i}"), &id),
                1 => common::csv_frame_to(
                    host,
                    "fs_rename",
                    &format!("/f{i}"),
                    &format!("/g{i}"),
                    &id,
                ),
                _ => common::metadata_frame(host, &id, &format!("/f{i}"), "500", "501"),
            };
            s.write_all(&framed(&frame, false)).unwrap();
        }
        s.flush().unwrap();
    }
    let json_got = json_side.wait(Duration::from_secs(60), |g| all_arrived(g, 1, 90));
    let want = events_of(&json_got);
    // Per batch and per event: every message decoded by protoc, every field
    // compared with the JSON form of the same event.
    for (side, cluster, per_event) in [(&proto_side, "pbp", false), (&proto_events, "pbe", true)] {
        let got = side.wait(Duration::from_secs(60), |g| {
            g.iter()
                .map(|m| m.headers["events"].parse::<usize>().unwrap())
                .sum::<usize>()
                >= 90
        });
        let mut seen = BTreeSet::new();
        for m in &got {
            assert_eq!(m.content_type, "application/x-protobuf");
            let path = dir.path().join("body.bin");
            std::fs::write(&path, &m.body).unwrap();
            let out = std::process::Command::new("protoc")
                .args([
                    "--proto_path=proto",
                    "--decode=qbroker.varonis.v1.Batch",
                    "proto/qbroker.proto",
                ])
                .stdin(std::fs::File::open(&path).unwrap())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let batch = parse_text(&String::from_utf8(out.stdout).unwrap());
            let batch_id = if per_event {
                m.message_id.rsplit_once('-').unwrap().0.to_string()
            } else {
                m.message_id.clone()
            };
            let envelope: Value = serde_json::json!({
                "schema": "qbroker.varonis.v1", "batch_id": batch_id, "cluster": cluster, "filer_id": 21,
            });
            for (k, v) in envelope.as_object().unwrap() {
                same(k, v, batch.get(k));
            }
            let events = batch.get("events").unwrap();
            if per_event {
                assert_eq!(events.len(), 1, "one event per message");
            }
            for e in events {
                let Text::Message(fields) = e else { panic!() };
                let Some(Text::Scalar(fid)) = fields.get("file_id").map(|v| &v[0]) else {
                    panic!("file_id")
                };
                let key = identity(&serde_json::json!({ "file_id": fid }));
                seen.insert(key);
                // The JSON form of the same event, from the JSON cluster.
                let mut json = want[&key].clone();
                json["node"] = Value::String(format!("{cluster}-1"));
                same("event", &json, Some(&vec![e.clone()]));
            }
        }
        assert_eq!(seen.len(), 90, "{cluster}: every event, decoded");
    }
    broker.stop();
}

#[test]
fn an_rmq_object_registration_publishes_to_its_rabbitmq() {
    use base64::Engine as _;
    let rmq = shared();
    rmq.declare_exchange("registered");
    let consumer = Consumer::start(&rmq, "registered", "registered-q", "reg");
    let dir = tempfile::tempdir().unwrap();
    let admin = "admin-T0ken-for-rmq";
    // No default target: the cluster's only target is the registered one.
    let text = config(&rmq, dir.path(), "registered", PASSWORD, "")
        .replace("default_target = \"rmq\"\n", "")
        + &format!(
            "[api]\nenabled = true\nlisten = \"127.0.0.1:0\"\nadmin_token = \"{admin}\"\n[store]\npoll_secs = 1\n"
        );
    let broker = Broker::start(&text);
    let certificate =
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(&rmq.ca_file).unwrap());
    let obj = serde_json::json!({"obj": {
        "cluster_name": "reg", "certificate": certificate, "filer_id": 31,
        "server": "127.0.0.1", "port": rmq.amqps_port, "vhost": VHOST,
        "exchange": "registered", "username": USER, "password": PASSWORD}});
    let (status, body) = api_call(&broker, admin, "POST", "/v1/rmq/objects/", &obj);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["password"], "********");
    send_frames(broker.syslog, "reg-1", 1, 0..150);
    let got = consumer.wait(Duration::from_secs(60), |g| all_arrived(g, 1, 150));
    for g in &got {
        assert_eq!(g.headers["filer_id"], "31");
        assert_eq!(g.headers["cluster"], "reg");
    }
    let (status, targets) = api_call(&broker, admin, "GET", "/v1/targets", &Value::Null);
    assert_eq!(status, 200);
    assert!(
        targets[0]["url"]
            .as_str()
            .unwrap()
            .starts_with("amqps://127.0.0.1:"),
        "{targets}"
    );
    assert!(!targets.to_string().contains(PASSWORD));

    // /v1/targets takes an AMQP target too.
    let consumer2 = Consumer::start(&rmq, "registered", "registered-q2", "reg2");
    let target = serde_json::json!({
        "cluster_name": "reg2", "url": format!("amqps://127.0.0.1:{}/{VHOST}", rmq.amqps_port),
        "ca_certificate": std::fs::read_to_string(&rmq.ca_file).unwrap(), "filer_id": 32,
        "exchange": "registered", "username": USER, "password": PASSWORD});
    let (status, body) = api_call(&broker, admin, "POST", "/v1/targets", &target);
    assert_eq!(status, 201, "{body}");
    send_frames(broker.syslog, "reg2-1", 1, 0..40);
    let got = consumer2.wait(Duration::from_secs(60), |g| all_arrived(g, 1, 40));
    assert!(got.iter().all(|g| g.headers["filer_id"] == "32"));
    // Without the exchange: refused, the field named.
    let mut bad = target.clone();
    bad["cluster_name"] = Value::String("reg3".to_string());
    bad["filer_id"] = Value::from(33);
    bad.as_object_mut().unwrap().remove("exchange");
    let (status, body) = api_call(&broker, admin, "POST", "/v1/targets", &bad);
    assert_eq!(status, 422, "{body}");
    assert!(body.to_string().contains("exchange"), "{body}");
    broker.stop();
}

/// One HTTPS request to the broker's API (its self-signed certificate trusted).
fn api_call(broker: &Broker, admin: &str, method: &str, path: &str, body: &Value) -> (u16, Value) {
    use http_body_util::{BodyExt, Full};
    let pem_path = broker.data_dir.join("api/cert.pem");
    let pem = wait_for(Duration::from_secs(20), || std::fs::read(&pem_path).ok());
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &pem[..]) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let addr = broker.api.expect("the API is enabled");
    testkit::runtime().block_on(async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(
                rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap(),
                tcp,
            )
            .await
            .unwrap();
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        let body = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "127.0.0.1")
            .header("authorization", format!("Bearer {admin}"))
            .header("content-type", "application/json")
            .body(Full::new(bytes::Bytes::from(body)))
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(30), send.send_request(req))
            .await
            .expect("the API answers in time")
            .unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    })
}

/// The same pinning for an HTTPS target: a server whose certificate is its
/// own CA:TRUE self-signed one, given as the target's ca_file.
#[test]
fn https_targets_accept_the_pinned_self_signed_certificate_too() {
    use rustls::pki_types::pem::PemObject;
    let tls = ServerTls::self_signed_ca_true().unwrap();
    let cert = rustls::pki_types::CertificateDer::from_pem_slice(tls.cert_pem.as_bytes()).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(tls.key_pem.as_bytes()).unwrap();
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let dir = tempfile::tempdir().unwrap();
    let pinned = dir.path().join("pinned.pem");
    std::fs::write(&pinned, &tls.cert_pem).unwrap();
    let other = dir.path().join("other.pem");
    std::fs::write(&other, ServerTls::self_signed_ca_true().unwrap().cert_pem).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    rt.spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                break;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(stream) = acceptor.accept(tcp).await {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    drop(stream);
                }
            });
        }
    });
    let connect = |ca: &Path| {
        let text = format!(
            "[[targets]]\nname = \"v\"\nurl = \"https://127.0.0.1:{port}/events\"\nca_file = \"{}\"\n",
            ca.display()
        );
        let cfg = qbroker::config::RawConfig::parse(&text)
            .unwrap()
            .validate()
            .unwrap();
        let target = &cfg.targets[0];
        let tls = qbroker::egress::client::tls_config(target).unwrap();
        let connector = qbroker::egress::client::connector(target, Some(tls)).unwrap();
        rt.block_on(connector.connect()).map(|_| ())
    };
    connect(&pinned).expect("the pinned certificate is accepted");
    let err = connect(&other)
        .expect_err("another certificate is refused")
        .to_string();
    // Without the pin, webpki refuses a CA certificate used by a server.
    assert!(
        err.starts_with("tls handshake: the server presents a CA certificate as its own"),
        "{err}"
    );
}

/// kill -9 of qbroker while it publishes, with `fsync = "always"`: after a
/// restart every event arrives; copies only with the message id (and body) of
/// what they copy.
#[test]
fn qbroker_killed_mid_stream_loses_nothing_and_copies_keep_their_ids() {
    let rmq = shared();
    rmq.declare_exchange("crash");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("qbroker.toml");
    std::fs::write(
        &file,
        config(
            &rmq,
            dir.path(),
            "crash",
            PASSWORD,
            "[spool]\nfsync = \"always\"\n",
        ),
    )
    .unwrap();
    let mut broker = BrokerProcess::spawn(QBROKER, &file);
    // Nothing is bound yet: every batch is returned and stays in the spool.
    send_frames(broker.syslog, "crash-1", 1, 0..2000);
    wait_for(Duration::from_secs(60), || {
        let n = broker
            .metric("qbroker_cluster_events_total{cluster=\"crash\",operation=\"file.create\"}")?;
        (n == 2000.0).then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    let consumer = Consumer::start(&rmq, "crash", "crash-q", "crash");
    consumer.wait(Duration::from_secs(60), |g| !g.is_empty());
    broker.signal_and_wait("KILL");
    let before = events_of(&consumer.got()).len();
    let _broker = BrokerProcess::spawn(QBROKER, &file);
    let got = consumer.wait(Duration::from_secs(90), |g| all_arrived(g, 1, 2000));
    assert_eq!(
        events_of(&got).len(),
        2000,
        "{before} events before the kill"
    );
    let mut bodies = BTreeMap::new();
    for g in &got {
        let first = bodies
            .entry(g.message_id.clone())
            .or_insert_with(|| g.body.clone());
        assert_eq!(
            *first, g.body,
            "a copy has the id and body of what it copies"
        );
    }
}

/// `qbroker doctor` rows of an AMQP target: login, vhost and exchange
/// (`amqp`), and a test publish that warns while nothing is bound.
#[test]
fn doctor_checks_an_amqp_target_and_warns_when_nothing_is_bound() {
    let rmq = shared();
    rmq.declare_exchange("doc");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("qbroker.toml");
    let cluster = "[[clusters]]\nname = \"docs\"\ntarget = \"rmq\"\n";
    std::fs::write(&file, config(&rmq, dir.path(), "doc", PASSWORD, cluster)).unwrap();
    let doctor = |file: &Path| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_qbroker"))
            .args(["doctor", "--timeout-secs", "10", "--config"])
            .arg(file)
            .env("RUST_LOG", "error")
            .output()
            .expect("qbroker doctor runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let find = |out: &str, check: &str| -> String {
        out.lines()
            .find(|l| l.starts_with("target rmq") && l.split_whitespace().nth(2) == Some(check))
            .unwrap_or_else(|| panic!("no {check} row: {out}"))
            .to_string()
    };
    let out = doctor(&file);
    assert!(find(&out, "tls").contains("pass"), "{out}");
    assert!(find(&out, "amqp").contains("pass"), "{out}");
    let publish = find(&out, "publish");
    assert!(
        publish.contains("warn") && publish.contains("unroutable"),
        "{out}"
    );
    let _consumer = Consumer::start(&rmq, "doc", "doc-q", "docs");
    let out = doctor(&file);
    assert!(find(&out, "publish").contains("pass"), "{out}");
    // A missing exchange and a wrong password fail the amqp row, in words.
    std::fs::write(
        &file,
        config(&rmq, dir.path(), "nowhere", PASSWORD, cluster),
    )
    .unwrap();
    let out = doctor(&file);
    let amqp = find(&out, "amqp");
    assert!(
        amqp.contains("FAIL") && amqp.contains("exchange \"nowhere\" does not exist"),
        "{out}"
    );
    std::fs::write(&file, config(&rmq, dir.path(), "doc", "Wr0ng", cluster)).unwrap();
    let out = doctor(&file);
    assert!(find(&out, "amqp").contains("refused the login"), "{out}");
    assert!(!out.contains("Wr0ng"));
}
