//! The HTTPS API over real TLS on loopback: targets registered, changed and
//! deleted while events flow; Qumulo-credential checks against a REST API
//! stand-in; the reference broker's `/v1/rmq/objects` flow; bad requests.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};

const ADMIN: &str = "admin-token-0123456789";

/// An HTTPS client of the broker's API, trusting its self-signed certificate.
struct Api {
    addr: SocketAddr,
    runtime: tokio::runtime::Runtime,
    tls: tokio_rustls::TlsConnector,
}

struct Reply {
    status: u16,
    body: Value,
    headers: http::HeaderMap,
}

impl Api {
    fn new(broker: &Broker) -> Api {
        Api::at(broker.api.expect("api enabled"), &broker.data_dir)
    }

    fn at(addr: SocketAddr, data_dir: &std::path::Path) -> Api {
        // The broker writes its self-signed pair as it starts the API.
        let path = data_dir.join("api/cert.pem");
        let certs = wait_for(Duration::from_secs(20), || {
            let pem = std::fs::read(&path).ok()?;
            let certs: Vec<_> = rustls_pemfile::certs(&mut &pem[..])
                .collect::<Result<_, _>>()
                .ok()?;
            (!certs.is_empty()).then_some(certs)
        });
        let mut roots = rustls::RootCertStore::empty();
        for cert in certs {
            roots.add(cert).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Api {
            addr,
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
        }
    }

    fn call(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Reply {
        self.raw(
            method,
            path,
            headers,
            body.map(|b| b.to_string().into_bytes()),
        )
    }

    fn admin(&self, method: &str, path: &str, body: Option<&Value>) -> Reply {
        let auth = format!("Bearer {ADMIN}");
        self.call(method, path, &[("authorization", &auth)], body)
    }

    fn raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Reply {
        self.runtime.block_on(async {
            let tcp = tokio::net::TcpStream::connect(self.addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
            let tls = self.tls.connect(name, tcp).await.expect("TLS to the API");
            let (mut send, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            let mut req = http::Request::builder()
                .method(method)
                .uri(path)
                .header("host", "127.0.0.1");
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            if body.is_some() {
                req = req.header("content-type", "application/json");
            }
            let req = req
                .body(Full::new(Bytes::from(body.unwrap_or_default())))
                .unwrap();
            let resp = tokio::time::timeout(Duration::from_secs(30), send.send_request(req))
                .await
                .expect("API answers in time")
                .unwrap();
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let bytes = resp.into_body().collect().await.unwrap().to_bytes();
            let body = if headers
                .get("content-type")
                .is_some_and(|v| v.to_str().unwrap().starts_with("application/json"))
            {
                serde_json::from_slice(&bytes).expect("JSON answer")
            } else {
                Value::String(String::from_utf8_lossy(&bytes).into_owned())
            };
            Reply {
                status,
                body,
                headers,
            }
        })
    }
}

fn send_frames(addr: SocketAddr, host: &str, node: u32, range: std::ops::Range<u64>) {
    try_send_frames(addr, host, node, range).unwrap();
}

/// Writes the frames; an error comes back (a broker that closed the
/// connection, an unroutable cluster's, breaks the pipe of the later writes).
fn try_send_frames(
    addr: SocketAddr,
    host: &str,
    node: u32,
    range: std::ops::Range<u64>,
) -> std::io::Result<()> {
    let mut s = TcpStream::connect(addr)?;
    for i in range {
        let frame = json_frame(host, "fs_create_file", &format!("/f{i}"), &file_id(node, i));
        s.write_all(&framed(&frame, false))?;
    }
    s.flush()
}

/// Events of accepted batches, each batch once, with the batch body.
fn delivered(sink: &Sink) -> Vec<(Value, Value)> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for r in sink.accepted() {
        if seen.insert(r.idempotency_key.clone()) {
            for e in r.body["events"].as_array().unwrap() {
                out.push((r.body.clone(), e.clone()));
            }
        }
    }
    out
}

fn indexes(sink: &Sink) -> BTreeSet<u64> {
    delivered(sink).iter().map(|(_, e)| identity(e).1).collect()
}

fn api_config(extra: &str) -> String {
    format!("\n[api]\nenabled = true\nlisten = \"127.0.0.1:0\"\nadmin_token = \"{ADMIN}\"\n{extra}\n[store]\npoll_secs = 1\n")
}

/// The whole life of a registered target while events flow: its batches (and
/// its filer id, its token) go where it points; a new URL takes the next
/// requests, the batches stuck in its spool included; a deletion sends the
/// cluster back to the default target, and the deleted target's spool is still
/// delivered to it, then removed.
#[test]
fn register_update_and_delete_a_target_while_events_flow() {
    let default = Sink::start();
    let first = Sink::start();
    let second = Sink::start();
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&config_text(&default, dir.path(), &api_config("")));
    let api = Api::new(&broker);
    let ca = |s: &Sink| std::fs::read_to_string(&s.ca_file).unwrap();

    let created = api.admin(
        "POST",
        "/v1/targets",
        Some(
            &json!({"cluster_name": "east", "url": first.url(), "ca_certificate": ca(&first),
                     "token": "tok-first", "filer_id": 11}),
        ),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(created.body["token"], "********");
    assert_eq!(created.body["target"]["name"], "@east");
    assert!(created.body["target"]["running"].as_bool().unwrap());
    assert!(!created.body.to_string().contains("tok-first"));

    send_frames(broker.syslog, "east-1", 1, 0..100);
    wait_for(Duration::from_secs(20), || {
        (indexes(&first).len() == 100).then_some(())
    });
    for (batch, _) in delivered(&first) {
        assert_eq!(batch["filer_id"], 11);
        assert_eq!(batch["cluster"], "east");
    }
    assert!(first
        .accepted()
        .iter()
        .all(|r| r.authorization.as_deref() == Some("Bearer tok-first")));
    assert!(
        default.accepted().is_empty(),
        "nothing to the default target"
    );

    // The first target fails: batches wait in the spool, retried.
    first.set_mode(Mode::Fail(503, None));
    send_frames(broker.syslog, "east-1", 1, 100..200);
    wait_for(Duration::from_secs(20), || {
        let m = broker.metric("qbroker_spool_unacked_batches{target=\"@east\"}")?;
        (m > 0.0 && first.request_count() > 2).then_some(())
    });
    // A new URL, CA and token: the spooled batches go there, and the next ones.
    let changed = api.admin(
        "PATCH",
        "/v1/targets/east",
        Some(&json!({"url": second.url(), "ca_certificate": ca(&second), "token": "tok-second"})),
    );
    assert_eq!(changed.status, 200, "{}", changed.body);
    assert_eq!(changed.body["revision"], 2);
    send_frames(broker.syslog, "east-1", 1, 200..300);
    wait_for(Duration::from_secs(30), || {
        (indexes(&second) == (100..300).collect()).then_some(())
    });
    assert!(second
        .accepted()
        .iter()
        .all(|r| r.authorization.as_deref() == Some("Bearer tok-second")));
    for (batch, _) in delivered(&second) {
        assert_eq!(batch["filer_id"], 11);
    }
    assert_eq!(indexes(&first), (0..100).collect());

    // The second one fails too; then the registration is deleted: the cluster's
    // next batches go to the default target, and what waits in @east's spool is
    // still delivered to the second target when it comes back.
    second.set_mode(Mode::Fail(503, None));
    send_frames(broker.syslog, "east-1", 1, 300..350);
    wait_for(Duration::from_secs(20), || {
        let m = broker.metric("qbroker_spool_unacked_batches{target=\"@east\"}")?;
        (m > 0.0).then_some(())
    });
    let deleted = api.admin("DELETE", "/v1/targets/east", None);
    assert_eq!(deleted.status, 200, "{}", deleted.body);
    assert_eq!(deleted.body["now_routed_to"], "sink");
    assert!(deleted.body["spool_batches_left"].as_u64().unwrap() > 0);
    send_frames(broker.syslog, "east-1", 1, 350..400);
    wait_for(Duration::from_secs(20), || {
        (indexes(&default) == (350..400).collect()).then_some(())
    });
    for (batch, _) in delivered(&default) {
        assert_eq!(batch["filer_id"], Value::Null);
    }
    assert_eq!(api.admin("GET", "/v1/targets/east", None).status, 404);
    second.set_mode(Mode::Accept);
    wait_for(Duration::from_secs(30), || {
        (indexes(&second) == (100..350).collect()).then_some(())
    });
    // Drained: stopped and its spool directory removed.
    wait_for(Duration::from_secs(20), || {
        (!broker.data_dir.join("spool/@east").exists()).then_some(())
    });
    // ... and its series are gone from /metrics.
    wait_for(Duration::from_secs(20), || {
        (!broker.metrics_text().contains("target=\"@east\"")).then_some(())
    });
    // Every event once, across the three targets.
    let mut all: Vec<u64> = [&first, &second, &default]
        .iter()
        .flat_map(|s| indexes(s))
        .collect();
    all.sort_unstable();
    assert_eq!(all, (0..400).collect::<Vec<_>>());
    for s in [&first, &second, &default] {
        assert!(s.problems().is_empty(), "{:?}", s.problems());
    }

    // The cluster's stats.
    let clusters = api.admin("GET", "/v1/clusters", None);
    assert_eq!(clusters.status, 200);
    let east = clusters
        .body
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["cluster"] == "east")
        .unwrap()
        .clone();
    assert_eq!(east["events_total"], 400);
    assert_eq!(east["target"]["name"], "sink");
    assert_eq!(east["target"]["origin"], "config");
    assert!(east["last_event_time"].as_str().unwrap().ends_with('Z'));
    assert_eq!(east["nodes"][0]["name"], "east-1");
    broker.stop();
}

fn qumulo_config(api: &QumuloApi, extra: &str) -> String {
    api_config(&format!(
        "qumulo_hosts = [\"127.0.0.1\"]\nqumulo_ca_file = \"{}\"\nauth_failures_max = 4\n{extra}",
        api.ca_file.display()
    ))
}

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// Qumulo credentials are checked by logging in to the cluster (remembered
/// briefly), give access to that cluster's registration only, and are refused
/// with a 401 when wrong; a cluster address qbroker does not know is not even
/// asked; repeated failures from one address get a 429 without a login.
#[test]
fn qumulo_credentials_are_checked_against_the_cluster() {
    let sink = Sink::start();
    let qumulo = QumuloApi::start();
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&config_text(&sink, dir.path(), &qumulo_config(&qumulo, "")));
    let api = Api::new(&broker);
    let cluster = format!("127.0.0.1:{}", qumulo.addr.port());
    let good = basic(API_USER, API_PASSWORD);
    let as_qa = [
        ("authorization", good.as_str()),
        ("x-qumulo-cluster", cluster.as_str()),
    ];
    let target = json!({"cluster_name": "qa", "url": sink.url(),
                        "ca_certificate": std::fs::read_to_string(&sink.ca_file).unwrap()});

    let r = api.call("POST", "/v1/targets", &as_qa, Some(&target));
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(qumulo.logins(), 1);
    let paths: Vec<String> = qumulo.log().iter().map(|(_, p, _)| p.clone()).collect();
    assert_eq!(paths, ["/v1/session/login", "/v1/cluster/settings"]);
    // Remembered: no second login.
    let r = api.call("GET", "/v1/targets", &as_qa, None);
    assert_eq!(r.status, 200);
    assert_eq!(r.body.as_array().unwrap().len(), 1);
    assert_eq!(qumulo.logins(), 1);
    // Another cluster's registration: refused.
    let mut other = target.clone();
    other["cluster_name"] = json!("east");
    let r = api.call("POST", "/v1/targets", &as_qa, Some(&other));
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.body["detail"]
        .as_str()
        .unwrap()
        .contains("another cluster"));
    // The admin registers it; qa's credentials do not see it.
    assert_eq!(api.admin("POST", "/v1/targets", Some(&other)).status, 201);
    let r = api.call("GET", "/v1/targets", &as_qa, None);
    assert_eq!(r.body.as_array().unwrap().len(), 1);
    assert_eq!(
        api.call("GET", "/v1/targets/east", &as_qa, None).status,
        401
    );
    let r = api.call("GET", "/v1/clusters", &as_qa, None);
    assert_eq!(r.status, 200);

    // Wrong password: 401 with a JSON detail, from the cluster's refusal.
    let wrong = basic(API_USER, "nope");
    let r = api.call(
        "GET",
        "/v1/targets",
        &[("authorization", &wrong), ("x-qumulo-cluster", &cluster)],
        None,
    );
    assert_eq!(r.status, 401);
    assert_eq!(r.body["detail"], "Authentication failure");
    assert!(r.headers.contains_key("www-authenticate"));
    assert_eq!(qumulo.logins(), 1, "a refused login is not counted as one");
    // A cluster address qbroker does not know: refused without asking it.
    let asked = qumulo.log().len();
    let r = api.call(
        "GET",
        "/v1/targets",
        &[
            ("authorization", &good),
            ("x-qumulo-cluster", "127.0.0.2:1"),
        ],
        None,
    );
    assert_eq!(r.status, 401);
    assert_eq!(qumulo.log().len(), asked);
    // No credentials at all.
    assert_eq!(api.call("GET", "/v1/targets", &[], None).status, 401);
    // A wrong admin token.
    let r = api.call(
        "GET",
        "/v1/targets",
        &[("authorization", "Bearer wrong-token-xxxxxxxx")],
        None,
    );
    assert_eq!(r.status, 401);
    // Past api.auth_failures_max (4) failures: 429, and the cluster is not asked.
    let asked = qumulo.log().len();
    let r = api.call("GET", "/v1/targets", &as_qa, None);
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(r.headers.contains_key("retry-after"));
    let r = api.call(
        "GET",
        "/v1/targets",
        &[("authorization", &wrong), ("x-qumulo-cluster", &cluster)],
        None,
    );
    assert_eq!(r.status, 429);
    assert_eq!(qumulo.log().len(), asked);
    // The health endpoints need no credentials.
    assert_eq!(api.call("GET", "/healthz", &[], None).status, 200);
    broker.stop();
}

/// The reference broker's API: the same paths, bodies and errors, with the
/// credentials in the body; the RabbitMQ fields become an HTTPS target.
#[test]
fn rmq_objects_flow_end_to_end() {
    let sink = Sink::start();
    let qumulo = QumuloApi::start();
    let dir = tempfile::tempdir().unwrap();
    // The HTTPS mapping (a site that fronts Varonis with an HTTPS receiver);
    // the AMQP one, the default, is tested in tests/amqp.rs.
    let broker = Broker::start(&config_text(
        &sink,
        dir.path(),
        &qumulo_config(&qumulo, "rmq_transport = \"https\""),
    ));
    let api = Api::new(&broker);
    let credentials = json!({"username": API_USER, "password": API_PASSWORD,
                             "cluster": format!("127.0.0.1:{}", qumulo.addr.port())});
    let certificate =
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(&sink.ca_file).unwrap());
    let obj = json!({"cluster_name": "qa", "certificate": certificate, "filer_id": 5,
                     "server": "127.0.0.1", "port": sink.addr.port(), "vhost": "/varonis",
                     "exchange": "qumulo", "username": "varonis", "password": "rmq-s3cret"});

    let r = api.call(
        "POST",
        "/v1/rmq/objects/",
        &[],
        Some(&json!({"credentials": credentials, "obj": obj})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["password"], "********");
    assert_eq!(r.body["id"], 1);
    for field in [
        "cluster_name",
        "certificate",
        "filer_id",
        "server",
        "port",
        "vhost",
        "exchange",
        "username",
    ] {
        assert_eq!(r.body[field], obj[field], "{field}");
    }
    // The same again: the cluster is taken.
    let r = api.call(
        "POST",
        "/v1/rmq/objects/",
        &[],
        Some(&json!({"credentials": credentials, "obj": obj})),
    );
    assert_eq!(r.status, 409, "{}", r.body);
    // List and get, the credentials as the body.
    let r = api.call("GET", "/v1/rmq/objects/", &[], Some(&credentials));
    assert_eq!(r.status, 200);
    assert_eq!(r.body.as_array().unwrap().len(), 1);
    let r = api.call("GET", "/v1/rmq/objects/qa", &[], Some(&credentials));
    assert_eq!(r.status, 200);
    assert_eq!(r.body["vhost"], "/varonis");
    assert!(!r.body.to_string().contains("rmq-s3cret"));

    // Events go to the object's server and port, with Basic credentials.
    send_frames(broker.syslog, "qa-1", 1, 0..50);
    wait_for(Duration::from_secs(20), || {
        (indexes(&sink).len() == 50).then_some(())
    });
    let expected = basic("varonis", "rmq-s3cret");
    for r in sink.accepted() {
        assert_eq!(r.authorization.as_deref(), Some(expected.as_str()));
        assert_eq!(r.body["filer_id"], 5);
    }
    // PATCH: a new filer id for the next batches.
    let r = api.call(
        "PATCH",
        "/v1/rmq/objects/qa",
        &[],
        Some(&json!({"credentials": credentials, "obj": {"filer_id": 6}})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["filer_id"], 6);
    assert_eq!(r.body["server"], "127.0.0.1");
    send_frames(broker.syslog, "qa-1", 1, 50..80);
    wait_for(Duration::from_secs(20), || {
        (indexes(&sink).len() == 80).then_some(())
    });
    for (batch, e) in delivered(&sink) {
        let want = if identity(&e).1 < 50 { 5 } else { 6 };
        assert_eq!(batch["filer_id"], want);
    }
    // Wrong credentials: the reference's 401.
    let mut wrong = credentials.clone();
    wrong["password"] = json!("nope");
    let r = api.call("GET", "/v1/rmq/objects/qa", &[], Some(&wrong));
    assert_eq!(r.status, 401);
    assert_eq!(r.body, json!({"detail": "Authentication failure"}));
    // Delete: {"ok": true}, then 404 with the reference's detail.
    let r = api.call("DELETE", "/v1/rmq/objects/qa", &[], Some(&credentials));
    assert_eq!((r.status, r.body.clone()), (200, json!({"ok": true})));
    let r = api.call("GET", "/v1/rmq/objects/qa", &[], Some(&credentials));
    assert_eq!(
        (r.status, r.body),
        (404, json!({"detail": "Object not found"}))
    );
    assert!(sink.problems().is_empty(), "{:?}", sink.problems());
    broker.stop();
}

/// Malformed JSON, unknown fields, oversize bodies, bad certificates, plain
/// HTTP, unknown routes: a 4xx with a clear JSON message, and the API goes on.
#[test]
fn bad_requests_get_clear_4xx_answers() {
    let sink = Sink::start();
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&config_text(
        &sink,
        dir.path(),
        &api_config("max_body_bytes = 4096"),
    ));
    let api = Api::new(&broker);
    let auth = format!("Bearer {ADMIN}");
    let post = |body: Vec<u8>| {
        api.raw(
            "POST",
            "/v1/targets",
            &[("authorization", &auth)],
            Some(body),
        )
    };

    let r = post(b"{\"cluster_name\": ".to_vec());
    assert_eq!(r.status, 400);
    assert!(
        r.body["detail"].as_str().unwrap().contains("invalid JSON"),
        "{}",
        r.body
    );
    let r = post(br#"{"cluster_name": "a", "url": "https://h/x", "colour": 1}"#.to_vec());
    assert_eq!(r.status, 422);
    assert!(
        r.body["detail"].as_str().unwrap().contains("colour"),
        "{}",
        r.body
    );
    let r = post(br#"{"url": "https://h/x"}"#.to_vec());
    assert_eq!(r.status, 422);
    assert!(
        r.body["detail"].as_str().unwrap().contains("cluster_name"),
        "{}",
        r.body
    );
    let r = post(vec![b' '; 10_000]);
    assert_eq!(r.status, 413, "{}", r.body);
    let r = post(br#"{"cluster_name": "a", "url": "http://h/x"}"#.to_vec());
    assert_eq!(r.status, 422);
    assert!(
        r.body["detail"].as_str().unwrap().contains("https"),
        "{}",
        r.body
    );
    // Credentials over plain HTTP or AMQP: refused, naming the field, never
    // echoing the credential; there is no opt-in through the API.
    for body in [
        br#"{"cluster_name": "a", "url": "http://h/x", "token": "hunter2"}"#.to_vec(),
        br#"{"cluster_name": "a", "url": "amqp://h/v", "exchange": "x", "username": "u", "password": "hunter2"}"#.to_vec(),
    ] {
        let r = post(body);
        assert_eq!(r.status, 422, "{}", r.body);
        let detail = r.body["detail"].as_str().unwrap();
        assert!(
            detail.starts_with("url") && detail.contains("in clear") && !detail.contains("hunter2"),
            "{detail}"
        );
    }
    let r = post(
        br#"{"cluster_name": "a", "url": "https://h/x", "ca_certificate": "not a pem"}"#.to_vec(),
    );
    assert_eq!(r.status, 422, "{}", r.body);
    let r =
        post(br#"{"cluster_name": "a", "url": "https://h/x", "client_certificate": "x"}"#.to_vec());
    assert_eq!(r.status, 422, "{}", r.body);
    let r = post(
        br#"{"cluster_name": "a", "url": "https://h/x", "api": {"url": "https://q"}}"#.to_vec(),
    );
    assert_eq!(r.status, 422, "{}", r.body);
    let r = api.raw(
        "PATCH",
        "/v1/targets/none",
        &[("authorization", &auth)],
        Some(b"{}".to_vec()),
    );
    assert_eq!(r.status, 404);
    assert_eq!(api.admin("GET", "/v2/anything", None).status, 404);
    let r = api.admin("PUT", "/v1/targets", None);
    assert_eq!(r.status, 405);
    assert_eq!(r.headers["allow"], "GET, POST");
    let r = api.raw(
        "POST",
        "/v1/rmq/objects/",
        &[("authorization", &auth)],
        Some(br#"{"obj": {"cluster_name": "a"}}"#.to_vec()),
    );
    assert_eq!(r.status, 422, "{}", r.body);

    // Plain HTTP on the HTTPS port: told so, in clear.
    let mut s = TcpStream::connect(broker.api.unwrap()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 400") && answer.contains("HTTPS only"),
        "{answer}"
    );

    // Still serving; the OpenAPI document is there; nothing was registered.
    assert_eq!(api.call("GET", "/healthz", &[], None).status, 200);
    let doc = api.call("GET", "/openapi.json", &[], None);
    assert!(doc.body["paths"]["/v1/targets"]["post"].is_object());
    assert_eq!(api.admin("GET", "/v1/targets", None).body, json!([]));
    let ready = api.call("GET", "/readyz", &[], None);
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert_eq!(ready.body["spool"]["writable"], true);
    // /metrics: the admin's.
    let m = api.admin("GET", "/metrics", None);
    assert_eq!(m.status, 200);
    assert!(m
        .body
        .as_str()
        .unwrap()
        .contains("qbroker_connections_accepted_total"));
    broker.stop();
}

/// Registrations live in the SQLite file and survive a restart, as does the
/// self-signed certificate; a target that fails makes /readyz say so.
#[test]
fn registrations_and_the_certificate_survive_a_restart() {
    let default = Sink::start();
    let registered = Sink::start();
    let dir = tempfile::tempdir().unwrap();
    let config = config_text(&default, dir.path(), &api_config(""));
    let broker = Broker::start(&config);
    let api = Api::new(&broker);
    let r = api.admin(
        "POST",
        "/v1/targets",
        Some(&json!({"cluster_name": "west", "url": registered.url(),
                     "ca_certificate": std::fs::read_to_string(&registered.ca_file).unwrap(),
                     "filer_id": 3, "api": {"url": "https://127.0.0.1:9", "username": "u", "password": "api-s3cret"}})),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["api"]["password"], "********");
    let cert = std::fs::read(dir.path().join("api/cert.pem")).unwrap();
    broker.stop();

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for f in ["registry.sqlite3", "api/key.pem"] {
            let mode = std::fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "{f} is owner-only");
        }
    }
    let stored = std::fs::read(dir.path().join("registry.sqlite3")).unwrap();
    assert!(!stored.is_empty());

    let broker = Broker::start(&config);
    assert_eq!(
        std::fs::read(dir.path().join("api/cert.pem")).unwrap(),
        cert
    );
    let api = Api::new(&broker);
    let r = api.admin("GET", "/v1/targets/west", None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["filer_id"], 3);
    send_frames(broker.syslog, "west-1", 2, 0..20);
    wait_for(Duration::from_secs(20), || {
        (indexes(&registered).len() == 20).then_some(())
    });
    assert!(default.accepted().is_empty());

    registered.set_mode(Mode::Fail(503, None));
    send_frames(broker.syslog, "west-1", 2, 20..30);
    // The failing target is detail; the broker stays ready for the others.
    wait_for(Duration::from_secs(20), || {
        let r = api.call("GET", "/healthz", &[], None);
        (r.status == 200 && r.body["targets"]["failing"] == json!(["@west"])).then_some(())
    });
    let r = api.call("GET", "/readyz", &[], None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["targets"]["failing"], json!(["@west"]));
    registered.set_mode(Mode::Accept);
    wait_for(Duration::from_secs(20), || {
        (indexes(&registered).len() == 30).then_some(())
    });
    broker.stop();
}

/// Registered targets take their requests in flight and gzip from `[store]`.
#[test]
fn registered_targets_take_in_flight_and_gzip_from_the_store_settings() {
    let default = Sink::start();
    let registered = Sink::start();
    let dir = tempfile::tempdir().unwrap();
    let store = api_config("") + "target_in_flight = 2\ntarget_gzip = true\n";
    let broker = Broker::start(&config_text(&default, dir.path(), &store));
    let api = Api::new(&broker);
    let r = api.admin(
        "POST",
        "/v1/targets",
        Some(&json!({"cluster_name": "gz", "url": registered.url(),
                     "ca_certificate": std::fs::read_to_string(&registered.ca_file).unwrap()})),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["target"]["in_flight"], 2, "{}", r.body);
    assert_eq!(r.body["target"]["gzip"], true, "{}", r.body);
    send_frames(broker.syslog, "gz-1", 1, 0..20);
    wait_for(Duration::from_secs(20), || {
        (indexes(&registered) == (0..20).collect()).then_some(())
    });
    assert!(registered.accepted().iter().all(|r| r.gzip));
    assert!(default.accepted().is_empty());
    let got = api.admin("GET", "/v1/targets/gz", None);
    assert_eq!(got.body["target"]["in_flight"], 2, "{}", got.body);
    broker.stop();
}

/// A deletion that would leave a connected cluster with nowhere to go is refused.
#[test]
fn deleting_the_only_target_of_a_connected_cluster_is_refused() {
    let sink = Sink::start();
    let dir = tempfile::tempdir().unwrap();
    // No default target: clusters go only where they are registered.
    let config = format!(
        "listen = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\nworkers = 2\nio_threads = 2\ndata_dir = \"{}\"\n[batch]\nmax_events = 50\nmax_age_ms = 50\n[shutdown]\ngrace_secs = 5\n{}",
        dir.path().display(),
        api_config("")
    );
    let broker = Broker::start(&config);
    let api = Api::new(&broker);
    // Not registered: its connection is refused (the node keeps its log); the
    // later writes may find the connection closed already.
    let _ = try_send_frames(broker.syslog, "solo-1", 1, 0..5);
    wait_for(Duration::from_secs(10), || {
        (broker.metric("qbroker_connections_unroutable_total")? >= 1.0).then_some(())
    });
    let r = api.admin(
        "POST",
        "/v1/targets",
        Some(&json!({"cluster_name": "solo", "url": sink.url(),
                     "ca_certificate": std::fs::read_to_string(&sink.ca_file).unwrap()})),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    // A node stays connected.
    let mut node = TcpStream::connect(broker.syslog).unwrap();
    for i in 5..10 {
        let frame = json_frame(
            "solo-1",
            "fs_create_file",
            &format!("/f{i}"),
            &file_id(1, i),
        );
        node.write_all(&framed(&frame, false)).unwrap();
    }
    wait_for(Duration::from_secs(20), || {
        (indexes(&sink) == (5..10).collect()).then_some(())
    });
    let r = api.admin("DELETE", "/v1/targets/solo", None);
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body["detail"].as_str().unwrap().contains("nowhere"));
    assert_eq!(api.admin("GET", "/v1/targets/solo", None).status, 200);

    // Once no node is connected, the registration can go (as the reference
    // broker allowed): the deleted target is delivered and removed, and the
    // cluster's next connection is refused like any cluster without a target.
    drop(node);
    wait_for(Duration::from_secs(10), || {
        (broker.metric("qbroker_cluster_connections{cluster=\"solo\"}")? == 0.0).then_some(())
    });
    let r = api.admin("DELETE", "/v1/targets/solo", None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(api.admin("GET", "/v1/targets/solo", None).status, 404);
    wait_for(Duration::from_secs(30), || {
        (!broker.data_dir.join("spool/@solo").exists()).then_some(())
    });
    let refused = broker
        .metric("qbroker_connections_unroutable_total")
        .unwrap();
    let _ = try_send_frames(broker.syslog, "solo-1", 1, 10..15);
    wait_for(Duration::from_secs(10), || {
        (broker.metric("qbroker_connections_unroutable_total")? > refused).then_some(())
    });
    assert_eq!(indexes(&sink), (5..10).collect());
    broker.stop();
}

/// The broker binary, at the most verbose log level: the secrets given to the
/// API (target token, Basic and REST passwords, client key, the admin token,
/// a wrong Qumulo password) appear in no answer, no log line and no file but
/// the registry.
#[test]
fn api_secrets_stay_out_of_answers_logs_and_files() {
    let sink = Sink::start();
    let qumulo = QumuloApi::start();
    let dir = tempfile::tempdir().unwrap();
    let admin_file = dir.path().join("admin.token");
    std::fs::write(&admin_file, ADMIN).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&admin_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let config = config_text(&sink, &dir.path().join("data"), "").replace(
        "[[targets]]",
        &format!(
            "[api]\nenabled = true\nlisten = \"127.0.0.1:0\"\nadmin_token_file = \"{}\"\nqumulo_hosts = [\"127.0.0.1\"]\nqumulo_ca_file = \"{}\"\nrmq_transport = \"https\"\n[[targets]]",
            admin_file.display(),
            qumulo.ca_file.display()
        ),
    );
    let config_file = dir.path().join("qbroker.toml");
    std::fs::write(&config_file, config).unwrap();
    let mut broker = BrokerProcess::spawn_with_log(QBROKER, &config_file, "trace");
    let addr: SocketAddr = wait_for(Duration::from_secs(20), || {
        broker.log().iter().find_map(|l| {
            if !l.contains("serving the API") {
                return None;
            }
            l.split("listen=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
    });
    let api = Api::at(addr, &dir.path().join("data"));
    let secrets = [
        "tok-S3CRET-target",
        "rmq-S3CRET-pass",
        "api-S3CRET-pass",
        "wrong-S3CRET-pass",
        ADMIN,
    ];
    let key = std::fs::read_to_string(&sink.client_key_file).unwrap();
    let ca = std::fs::read_to_string(&sink.ca_file).unwrap();
    let mut answers = Vec::new();
    let r = api.admin("POST", "/v1/targets", Some(&json!({
        "cluster_name": "one", "url": sink.url(), "ca_certificate": ca, "token": secrets[0],
        "client_certificate": std::fs::read_to_string(&sink.client_cert_file).unwrap(), "client_key": key,
        "api": {"url": format!("https://127.0.0.1:{}", qumulo.addr.port()), "username": API_USER, "password": secrets[2]}})));
    assert_eq!(r.status, 201, "{}", r.body);
    answers.push(r.body.to_string());
    let r = api.admin("POST", "/v1/rmq/objects/", Some(&json!({"obj": {
        "cluster_name": "two", "certificate": ca, "filer_id": 1, "server": "127.0.0.1", "port": sink.addr.port(),
        "vhost": "/", "exchange": "x", "username": "u", "password": secrets[1]}})));
    assert_eq!(r.status, 200, "{}", r.body);
    answers.push(r.body.to_string());
    answers.push(api.admin("GET", "/v1/targets", None).body.to_string());
    answers.push(api.admin("GET", "/v1/rmq/objects/", None).body.to_string());
    let wrong = basic(API_USER, secrets[3]);
    let cluster = format!("127.0.0.1:{}", qumulo.addr.port());
    let r = api.call(
        "GET",
        "/v1/targets",
        &[("authorization", &wrong), ("x-qumulo-cluster", &cluster)],
        None,
    );
    assert_eq!(r.status, 401);
    answers.push(r.body.to_string());
    send_frames(broker.syslog, "one-1", 1, 0..10);
    wait_for(Duration::from_secs(20), || {
        (indexes(&sink).len() == 10).then_some(())
    });
    assert!(broker.signal_and_wait("TERM").success());

    let log = broker.log().join("\n");
    assert!(
        log.contains("registered target started"),
        "the log was taken"
    );
    let key_body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
    for secret in secrets.iter().copied().chain([key_body.as_str()]) {
        assert!(!log.contains(secret), "a secret in the log");
        for a in &answers {
            assert!(!a.contains(secret), "a secret in an answer: {a}");
        }
    }
    // On disk only in the registry (and SQLite's journal beside it).
    let mut files = Vec::new();
    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            if e.path().is_dir() {
                walk(&e.path(), out);
            } else {
                out.push(e.path());
            }
        }
    }
    walk(&dir.path().join("data"), &mut files);
    for f in files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("registry.sqlite3") {
            continue;
        }
        let bytes = std::fs::read(&f).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        for secret in &secrets[..4] {
            assert!(!text.contains(secret), "a secret in {}", f.display());
        }
    }
}

/// REST credentials registered through the API feed enrichment, for a cluster
/// already connected without any: its next metadata changes are looked up.
#[test]
fn registered_rest_credentials_enrich_a_connected_cluster() {
    let qumulo = QumuloApi::start();
    let sink = Sink::start();
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&config_text(&sink, dir.path(), &api_config("")));
    let api = Api::new(&broker);
    let file = "4242";
    let rw: &[&str] = &["READ", "MODIFY"];
    let mut node = TcpStream::connect(broker.syslog).unwrap();
    let mut send = |frame: String| {
        node.write_all(&framed(&frame, false)).unwrap();
        node.flush().unwrap();
    };
    let operations = || -> Vec<String> {
        delivered(&sink)
            .iter()
            .map(|(_, e)| e["operation"].as_str().unwrap().to_string())
            .collect()
    };
    qumulo.set_acl(file, acl_body(false, &[("ALLOWED", "1104", rw, &[])]));
    qumulo.set_type(file, false);
    send(metadata_frame("qa-1", file, "/a.txt", "1104", "1104"));
    wait_for(Duration::from_secs(20), || {
        (operations().len() == 1).then_some(())
    });
    assert!(qumulo.log().is_empty(), "no credentials, no lookup");

    let r = api.admin(
        "POST",
        "/v1/targets",
        Some(&json!({"cluster_name": "qa", "url": sink.url(),
                     "ca_certificate": std::fs::read_to_string(&sink.ca_file).unwrap(),
                     "api": {"url": format!("https://127.0.0.1:{}", qumulo.addr.port()),
                             "username": API_USER, "password": API_PASSWORD,
                             "ca_certificate": std::fs::read_to_string(&qumulo.ca_file).unwrap()}})),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    // First lookup: the baseline (generic event); then an ACE added.
    send(metadata_frame("qa-1", file, "/a.txt", "1104", "1104"));
    wait_for(Duration::from_secs(20), || {
        (operations().len() == 2).then_some(())
    });
    qumulo.set_acl(
        file,
        acl_body(
            false,
            &[("ALLOWED", "1104", rw, &[]), ("ALLOWED", "1200", rw, &[])],
        ),
    );
    send(metadata_frame("qa-1", file, "/a.txt", "1104", "1104"));
    wait_for(Duration::from_secs(20), || {
        (operations().len() == 3).then_some(())
    });
    assert_eq!(
        operations(),
        [
            "file.permissions_change",
            "file.permissions_change",
            "file.permissions_add"
        ]
    );
    assert!(qumulo.logins() >= 1);
    broker.stop();
}

/// Registrations sent all at once never pass `api.max_targets`, and none is
/// refused for a reason other than the limit (no 503 from the id allocator).
#[test]
fn concurrent_registrations_stop_at_max_targets() {
    let sink = Sink::start();
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&config_text(
        &sink,
        dir.path(),
        &api_config("max_targets = 4"),
    ));
    let (addr, data_dir) = (broker.api.unwrap(), broker.data_dir.clone());
    let ca = std::fs::read_to_string(&sink.ca_file).unwrap();
    let url = sink.url();
    let threads: Vec<_> = (0..12)
        .map(|i| {
            let (data_dir, ca, url) = (data_dir.clone(), ca.clone(), url.clone());
            std::thread::spawn(move || {
                let api = Api::at(addr, &data_dir);
                api.admin(
                    "POST",
                    "/v1/targets",
                    Some(
                        &json!({"cluster_name": format!("c{i}"), "url": url, "ca_certificate": ca}),
                    ),
                )
                .status
            })
        })
        .collect();
    let mut statuses: Vec<u16> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    statuses.sort();
    assert_eq!(statuses, [[201; 4].as_slice(), &[409; 8]].concat());
    let api = Api::new(&broker);
    let listed = api.admin("GET", "/v1/targets", None);
    assert_eq!(listed.body.as_array().unwrap().len(), 4);
    broker.stop();
}

/// The OpenAPI document and the router agree, asked of the running server:
/// every documented path and method is served (neither 404 nor 405), and
/// every other method on those paths is 405 with an `Allow` header that lists
/// exactly the documented ones.
#[test]
fn the_router_serves_exactly_what_openapi_documents() {
    let sink = Sink::start();
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&config_text(&sink, dir.path(), &api_config("")));
    let api = Api::new(&broker);
    let doc = api.call("GET", "/openapi.json", &[], None).body;
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 9, "{paths:?}");
    let all = ["GET", "POST", "PATCH", "DELETE", "PUT"];
    for (path, ops) in paths {
        let concrete = path.replace("{cluster_name}", "nosuch");
        let mut documented: Vec<String> = ops
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.to_uppercase())
            .filter(|k| all.contains(&k.as_str()))
            .collect();
        documented.sort();
        for method in all {
            let body = (method == "POST" || method == "PATCH").then(|| json!({}));
            let r = api.admin(method, &concrete, body.as_ref());
            if documented.iter().any(|m| m == method) {
                assert!(
                    r.status != 404 || r.body["detail"] != "Not Found",
                    "{method} {path}: not routed ({})",
                    r.body
                );
                assert_ne!(r.status, 405, "{method} {path}: {}", r.body);
            } else {
                assert_eq!(
                    r.status, 405,
                    "{method} {path} is served but not documented"
                );
                let allow = r.headers[http::header::ALLOW].to_str().unwrap();
                let mut allowed: Vec<String> = allow.split(", ").map(str::to_string).collect();
                allowed.sort();
                assert_eq!(allowed, documented, "Allow of {path}");
            }
        }
    }
    assert_eq!(api.admin("GET", "/v1/nothing-here", None).status, 404);
    // Every answer is counted by route pattern, method and status; refused
    // credentials separately.
    let wrong = api.call(
        "GET",
        "/v1/targets",
        &[("authorization", "Bearer not-the-token")],
        None,
    );
    assert_eq!(wrong.status, 401);
    let text = api.admin("GET", "/metrics", None).body;
    let text = text.as_str().unwrap();
    assert!(
        text.contains(
            "qbroker_api_requests_total{route=\"/healthz\",method=\"GET\",code=\"200\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains("route=\"other\",method=\"GET\",code=\"404\"} 1"),
        "{text}"
    );
    assert!(
        metric_value(text, "qbroker_api_auth_failures_total").unwrap() >= 1.0,
        "{text}"
    );
    broker.stop();
}

/// A deleted registration whose spool still held batches when the broker
/// stopped: at the next start they are delivered to the cluster's default
/// target, and the spool directory is removed.
#[test]
fn a_deleted_targets_spool_is_delivered_after_a_restart() {
    let default = Sink::start();
    let mut gone = Sink::start();
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(&default, dir.path(), &api_config(""))
        .replace("grace_secs = 5", "grace_secs = 1");
    let broker = Broker::start(&text);
    let api = Api::new(&broker);
    let r = api.admin(
        "POST",
        "/v1/targets",
        Some(&json!({"cluster_name": "west", "url": gone.url(),
                     "ca_certificate": std::fs::read_to_string(&gone.ca_file).unwrap()})),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    gone.go_away();
    send_frames(broker.syslog, "west-1", 1, 0..50);
    wait_for(Duration::from_secs(20), || {
        (broker.metric("qbroker_spool_unacked_batches{target=\"@west\"}")? >= 1.0).then_some(())
    });
    let r = api.admin("DELETE", "/v1/targets/west", None);
    assert_eq!(r.status, 200, "{}", r.body);
    broker.stop();
    let spool = dir.path().join("spool/@west");
    assert!(spool.is_dir(), "the undelivered batches stay on disk");

    let broker = Broker::start(&text);
    wait_for(Duration::from_secs(30), || {
        (indexes(&default) == (0..50).collect()).then_some(())
    });
    wait_for(Duration::from_secs(20), || (!spool.exists()).then_some(()));
    assert!(gone.accepted().is_empty());
    broker.stop();
}
