//! `qbroker doctor` (the binary) against real loopback servers: the Qumulo REST
//! API stand-in (legacy audit syslog settings and 7.9+ audit destinations), the
//! HTTPS sink, a port held by another program, a spool cap past the free disk.
//! Every check passes in one setup; in the other, each fails for its own reason.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{free_port, Mode, QumuloApi, Sink, API_PASSWORD, API_USER};
use serde_json::json;

/// The `(status, detail)` of a row of doctor's table.
fn row(out: &str, subject: &str, check: &str) -> (String, String) {
    for line in out.lines() {
        let Some(rest) = line.strip_prefix(subject) else {
            continue;
        };
        if !rest.starts_with("  ") {
            continue;
        }
        let Some(rest) = rest.trim_start().strip_prefix(check) else {
            continue;
        };
        if !rest.starts_with("  ") {
            continue;
        }
        let rest = rest.trim_start();
        let (status, detail) = rest.split_once(' ').unwrap_or((rest, ""));
        return (status.to_string(), detail.trim().to_string());
    }
    panic!("no row {subject:?} / {check:?} in:\n{out}");
}

fn doctor(config: &std::path::Path, extra: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_qbroker"))
        .args(["doctor", "--timeout-secs", "3", "--config"])
        .arg(config)
        .args(extra)
        .env("RUST_LOG", "error")
        .output()
        .expect("qbroker doctor runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{text}{}", String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

fn cluster(name: &str, api: &QumuloApi) -> String {
    api.cluster_config(name)
}

fn v1(api: &QumuloApi, enabled: bool, format: &str, address: &str, port: u16, status: &str) {
    api.set_audit_v1(
        json!({"enabled": enabled, "format": format, "local_enabled": false,
               "server_address": address, "server_port": port}),
        json!({"connection_status": status, "error_message": if status == "AUDIT_LOG_CONNECTED" {""} else {"connection refused"}, "error_details": ""}),
    );
}

fn v2(api: &QumuloApi, address: &str, port: u16, node_status: &[&str]) {
    api.set_audit_v2(
        json!({"destinations": [
            {"id": "1", "config": {"type": "CLOUDWATCH", "name": "cw", "enabled": true, "log_group_name": "g", "region": "r"}},
            {"id": "2", "config": {"type": "SYSLOG", "name": "varonis", "enabled": true, "server_address": address,
                                   "server_port": port, "format": "json", "local_enabled": false}},
        ]}),
        &[(
            "2",
            json!({"node_statuses": node_status.iter().enumerate().map(|(i, s)| json!({
                "node_id": i + 1,
                "status": {"connection_status": s, "error_message": if *s == "AUDIT_DESTINATION_CONNECTED" {""} else {"no route to host"},
                           "error_details": "", "error_timestamp": ""}
            })).collect::<Vec<_>>()}),
        )],
    );
}

fn base_config(dir: &std::path::Path, port: u16, spool_max_bytes: u64) -> String {
    format!(
        r#"listen = "127.0.0.1:{port}"
data_dir = "{data}"
default_target = "ok"
[spool]
segment_bytes = 65536
max_bytes = {spool_max_bytes}
"#,
        data = dir.join("data").display()
    )
}

fn target(name: &str, url: &str, ca: &std::path::Path, extra: &str) -> String {
    format!(
        "[[targets]]\nname = \"{name}\"\nurl = \"{url}\"\nca_file = \"{}\"\n{extra}\n",
        ca.display()
    )
}

#[test]
fn doctor_passes_when_everything_is_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start();
    let port = free_port().unwrap();
    let legacy = QumuloApi::start();
    v1(
        &legacy,
        true,
        "json",
        "127.0.0.1",
        port,
        "AUDIT_LOG_CONNECTED",
    );
    let modern = QumuloApi::start();
    v2(
        &modern,
        "localhost",
        port,
        &["AUDIT_DESTINATION_CONNECTED", "AUDIT_DESTINATION_CONNECTED"],
    );
    let text = format!(
        "{}{}{}{}[[clusters]]\nname = \"quiet\"\n",
        base_config(dir.path(), port, 4 << 20),
        target("ok", &sink.url(), &sink.ca_file, "token = \"t0k\""),
        cluster("legacy", &legacy),
        cluster("modern", &modern),
    );
    let config = dir.path().join("qbroker.toml");
    std::fs::write(&config, text).unwrap();

    // "This broker" from `listen` (127.0.0.1:port); the modern cluster names it
    // `localhost`, which resolves to it.
    let (code, out) = doctor(&config, &[]);
    assert_eq!(code, 0, "{out}");
    for (subject, check) in [
        ("host", &*format!("syslog port 127.0.0.1:{port}")),
        ("target ok", "dns"),
        ("target ok", "tcp"),
        ("target ok", "tls"),
        ("target ok", "post"),
        ("cluster legacy", "rest api"),
        ("cluster legacy", "audit enabled"),
        ("cluster legacy", "audit json"),
        ("cluster legacy", "audit destination"),
        ("cluster legacy", "audit connected"),
        ("cluster modern", "rest api"),
        ("cluster modern", "audit enabled"),
        ("cluster modern", "audit json"),
        ("cluster modern", "audit destination"),
        ("cluster modern", "audit connected"),
    ] {
        assert_eq!(
            row(&out, subject, check).0,
            "pass",
            "{subject} {check}:\n{out}"
        );
    }
    assert!(out.contains("spool disk"), "{out}");
    assert_eq!(row(&out, "cluster quiet", "audit settings").0, "skip");
    assert!(row(&out, "cluster modern", "audit connected")
        .1
        .contains("all 2 node(s)"));
    assert!(row(&out, "cluster legacy", "rest api")
        .1
        .contains("logged in as qbroker"));
    // The test POST reached the sink with the target's token and an empty batch.
    let posted = sink.requests();
    assert_eq!(posted.len(), 1);
    assert_eq!(posted[0].authorization.as_deref(), Some("Bearer t0k"));
    assert_eq!(posted[0].body["events"], json!([]));
    assert_eq!(posted[0].body["schema"], "qbroker.varonis.v1");
    assert!(sink.problems().is_empty(), "{:?}", sink.problems());

    // `--advertise` replaces `listen` as "this broker": another port fails
    // both clusters, the right one passes them.
    let (code, out) = doctor(&config, &["--advertise", "127.0.0.1:9", "--no-post"]);
    assert_eq!(code, 1, "{out}");
    let (status, detail) = row(&out, "cluster legacy", "audit destination");
    assert_eq!(status, "FAIL");
    assert!(
        detail.contains("qq audit_set_syslog_config --server-address 127.0.0.1 --server-port 9"),
        "{detail}"
    );
    let (status, detail) = row(&out, "cluster modern", "audit destination");
    assert_eq!(status, "FAIL");
    assert!(detail.contains("qq audit_create_destination"), "{detail}");
    assert_eq!(row(&out, "target ok", "post").0, "skip");
    let (code, out) = doctor(&config, &["--advertise", &format!("localhost:{port}")]);
    assert_eq!(code, 0, "{out}");

    // Behind rsyslog (omprog): another program holds the syslog port, and
    // that is expected.
    let rsyslog = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let (code, out) = doctor(&config, &["--no-post"]);
    assert_eq!(code, 1, "{out}");
    let (code, out) = doctor(&config, &["--no-post", "--behind-rsyslog"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        row(&out, "host", &format!("syslog port 127.0.0.1:{port}")).0,
        "skip"
    );
    drop(rsyslog);
}

#[test]
fn doctor_names_each_failure() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start();
    let refusing = Sink::start();
    refusing.set_mode(Mode::Fail(401, None));
    let erroring = Sink::start();
    erroring.set_mode(Mode::Fail(500, None));
    // A port another program holds.
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = squatter.local_addr().unwrap().port();
    let closed = free_port().unwrap();

    let apis: Vec<(&str, QumuloApi)> = [
        "disabled",
        "csv",
        "elsewhere",
        "disconnected",
        "v2node",
        "v2none",
    ]
    .into_iter()
    .map(|n| (n, QumuloApi::start()))
    .collect();
    let api = |name: &str| &apis.iter().find(|(n, _)| *n == name).unwrap().1;
    v1(
        api("disabled"),
        false,
        "json",
        "127.0.0.1",
        port,
        "AUDIT_LOG_DISABLED",
    );
    v1(
        api("csv"),
        true,
        "csv",
        "127.0.0.1",
        port,
        "AUDIT_LOG_CONNECTED",
    );
    v1(
        api("elsewhere"),
        true,
        "json",
        "192.0.2.1",
        port,
        "AUDIT_LOG_CONNECTED",
    );
    v1(
        api("disconnected"),
        true,
        "json",
        "127.0.0.1",
        port,
        "AUDIT_LOG_DISCONNECTED",
    );
    v2(
        api("v2node"),
        "127.0.0.1",
        port,
        &[
            "AUDIT_DESTINATION_CONNECTED",
            "AUDIT_DESTINATION_DISCONNECTED",
        ],
    );
    v2(
        api("v2none"),
        "192.0.2.1",
        514,
        &["AUDIT_DESTINATION_CONNECTED"],
    );

    let mut text = base_config(dir.path(), port, 1 << 50);
    text.push_str(&target("ok", &sink.url(), &sink.ca_file, ""));
    // Trusts another CA than the one that signed the sink's certificate.
    text.push_str(&target("badca", &sink.url(), &api("csv").ca_file, ""));
    text.push_str(&target(
        "closed",
        &format!("https://127.0.0.1:{closed}/events"),
        &sink.ca_file,
        "",
    ));
    text.push_str(&target(
        "nodns",
        "https://qbroker-doctor-test.invalid:8443/events",
        &sink.ca_file,
        "",
    ));
    text.push_str(&target(
        "refusing",
        &refusing.url(),
        &refusing.ca_file,
        "token = \"wrong\"",
    ));
    text.push_str(&target("erroring", &erroring.url(), &erroring.ca_file, ""));
    for (name, api) in &apis {
        text.push_str(&cluster(name, api));
    }
    let any = api("csv");
    text.push_str(&format!(
        "[[clusters]]\nname = \"badpass\"\napi_url = \"https://127.0.0.1:{}\"\nusername = \"{API_USER}\"\npassword = \"not {API_PASSWORD}\"\nca_file = \"{}\"\n",
        any.addr.port(),
        any.ca_file.display()
    ));
    text.push_str(&format!(
        "[[clusters]]\nname = \"down\"\napi_url = \"https://127.0.0.1:{closed}\"\nusername = \"u\"\npassword = \"p\"\n"
    ));
    text.push_str(&format!(
        "[[clusters]]\nname = \"untrusted\"\napi_url = \"https://127.0.0.1:{}\"\nusername = \"{API_USER}\"\npassword = \"{API_PASSWORD}\"\nca_file = \"{}\"\n",
        any.addr.port(),
        sink.ca_file.display()
    ));
    let config = dir.path().join("qbroker.toml");
    std::fs::write(&config, text).unwrap();

    let started = std::time::Instant::now();
    let (code, out) = doctor(&config, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "bounded by the timeouts"
    );
    let expect = |subject: &str, check: &str, status: &str, words: &str| {
        let (s, detail) = row(&out, subject, check);
        assert_eq!(s, status, "{subject} {check}: {detail}\n{out}");
        assert!(
            detail.contains(words),
            "{subject} {check}: {detail:?} lacks {words:?}"
        );
    };
    expect(
        "host",
        &format!("syslog port 127.0.0.1:{port}"),
        "FAIL",
        "in use by another program",
    );
    expect(
        "host",
        &format!("spool disk {}", dir.path().join("data/spool").display()),
        "warn",
        "would fill the disk",
    );
    for check in ["dns", "tcp", "tls", "post"] {
        expect("target ok", check, "pass", "");
    }
    expect("target badca", "tls", "FAIL", "invalid peer certificate");
    expect("target badca", "post", "skip", "needs tls");
    expect("target closed", "tcp", "FAIL", "refused");
    expect("target closed", "tls", "skip", "needs tcp");
    expect("target nodns", "dns", "FAIL", "qbroker-doctor-test.invalid");
    expect(
        "target refusing",
        "post",
        "FAIL",
        "HTTP 401: the target refused the credentials",
    );
    expect("target erroring", "post", "FAIL", "HTTP 500");
    expect(
        "cluster disabled",
        "audit enabled",
        "FAIL",
        "qq audit_set_syslog_config --enable",
    );
    expect("cluster disabled", "audit json", "pass", "");
    expect(
        "cluster csv",
        "audit json",
        "FAIL",
        "qq audit_set_syslog_config --json",
    );
    expect("cluster csv", "audit enabled", "pass", "");
    expect(
        "cluster elsewhere",
        "audit destination",
        "FAIL",
        "192.0.2.1",
    );
    expect(
        "cluster disconnected",
        "audit connected",
        "FAIL",
        "AUDIT_LOG_DISCONNECTED: connection refused",
    );
    expect("cluster disconnected", "audit destination", "pass", "");
    expect(
        "cluster v2node",
        "audit destination",
        "pass",
        "destination varonis (id 2)",
    );
    expect(
        "cluster v2node",
        "audit connected",
        "FAIL",
        "node 2: AUDIT_DESTINATION_DISCONNECTED: no route to host",
    );
    expect(
        "cluster v2none",
        "audit destination",
        "FAIL",
        "varonis (id 2) -> 192.0.2.1:514",
    );
    expect("cluster v2none", "audit connected", "skip", "");
    expect(
        "cluster badpass",
        "rest api",
        "FAIL",
        "refused the credentials",
    );
    expect(
        "cluster badpass",
        "audit enabled",
        "skip",
        "needs the REST API",
    );
    expect("cluster down", "rest api", "FAIL", "cannot connect");
    expect("cluster untrusted", "rest api", "FAIL", "ca_file");
    drop(squatter);
}

#[test]
fn doctor_reports_an_invalid_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("qbroker.toml");
    std::fs::write(
        &config,
        "workers = 0\n[[targets]]\nname = \"v\"\nurl = \"https://x/\"\n",
    )
    .unwrap();
    let (code, out) = doctor(&config, &[]);
    assert_eq!(code, 1);
    assert!(
        out.contains("FAIL workers: must be greater than 0"),
        "{out}"
    );
}

/// A self-signed API certificate for 127.0.0.1 valid until `not_after`
/// (year, month, day), and its key: the two file paths.
fn api_cert(
    dir: &std::path::Path,
    name: &str,
    not_after: (i32, u8, u8),
) -> (std::path::PathBuf, std::path::PathBuf) {
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (c, k) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

/// The civil date (UTC) `days` from now.
fn date_in(days: i64) -> (i32, u8, u8) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    // Howard Hinnant's days-to-civil.
    let z = now.div_euclid(86_400) + days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y as i32, m as u8, d as u8)
}

/// Targets registered through the API (in the registry `qbroker run`
/// reads) get the same rows as the file's, named as registered; a
/// registered target whose TLS handshake fails fails the run. The API's
/// certificate and port have their rows.
#[test]
fn doctor_checks_registered_targets_and_the_api() {
    use qbroker::config::Secret;
    use qbroker::store::Registration;

    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start();
    let stranger = testkit::pki::Pki::new("stranger").unwrap();
    let port = free_port().unwrap();
    let api_port = free_port().unwrap();
    let closed = free_port().unwrap();
    let (cert, key) = api_cert(dir.path(), "soon", date_in(10));
    let write_config = |cert: &std::path::Path, key: &std::path::Path| {
        let text = format!(
            "metrics_listen = \"127.0.0.1:0\"\n{}{}[api]\nenabled = true\nlisten = \"127.0.0.1:{api_port}\"\nadmin_token = \"an-admin-token-0123456789\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            base_config(dir.path(), port, 4 << 20),
            target("ok", &sink.url(), &sink.ca_file, ""),
            cert.display(),
            key.display()
        );
        let config = dir.path().join("qbroker.toml");
        std::fs::write(&config, text).unwrap();
        config
    };
    let config = write_config(&cert, &key);

    // Register as the API does: into the registry the configuration names.
    let cfg = qbroker::config::RawConfig::load(&config)
        .unwrap()
        .validate()
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = qbroker::store::Store::open(cfg.store.as_ref().unwrap())
            .await
            .unwrap();
        let mut east = Registration::new("east", &sink.url());
        east.ca_certificate = Some(std::fs::read_to_string(&sink.ca_file).unwrap());
        east.token = Some(Secret::new("reg-t0k"));
        let mut north = Registration::new("north", &sink.url());
        north.ca_certificate = east.ca_certificate.clone();
        north.basic_username = Some("varonis".to_string());
        north.basic_password = Some(Secret::new("pa55"));
        // Trusts a CA that did not sign the sink's certificate.
        let mut west = Registration::new("west", &sink.url());
        west.ca_certificate = Some(stranger.ca_pem.clone());
        let mut rmq = Registration::new("rmq", &format!("amqps://127.0.0.1:{closed}/v"));
        rmq.rmq_exchange = Some("qumulo".to_string());
        rmq.basic_username = Some("u".to_string());
        rmq.basic_password = Some(Secret::new("p"));
        for reg in [east, north, west, rmq] {
            store.insert(&reg).await.unwrap();
        }
        store.close().await;
    });

    let (code, out) = doctor(&config, &[]);
    assert_eq!(code, 1, "{out}");
    let expect = |subject: &str, check: &str, status: &str, words: &str| {
        expect_in(&out, subject, check, status, words)
    };
    expect("registry", "read", "pass", "4 target(s) registered");
    // Each registered target has a spool too.
    expect(
        "host",
        &format!("spool disk {}", dir.path().join("data/spool").display()),
        "pass",
        "x 5 target(s)",
    );
    for check in ["dns", "tcp", "tls", "post"] {
        expect("target ok", check, "pass", "");
        expect("target @east (registered)", check, "pass", "");
        expect("target @north (registered)", check, "pass", "");
    }
    expect(
        "target @east (registered)",
        "tls",
        "pass",
        "the registered ca_certificate",
    );
    expect(
        "target @west (registered)",
        "tls",
        "FAIL",
        "invalid peer certificate",
    );
    expect("target @west (registered)", "post", "skip", "needs tls");
    expect("target @rmq (registered)", "tcp", "FAIL", "refused");
    for check in ["tls", "amqp", "publish"] {
        expect("target @rmq (registered)", check, "skip", "needs tcp");
    }
    expect("api", "certificate", "warn", "in 9 day(s)");
    expect("api", &format!("port 127.0.0.1:{api_port}"), "pass", "free");
    // The test POSTs carried each registration's credentials.
    let mut auth: Vec<String> = sink
        .requests()
        .iter()
        .filter_map(|r| r.authorization.clone())
        .collect();
    auth.sort();
    assert_eq!(auth, ["Basic dmFyb25pczpwYTU1", "Bearer reg-t0k"], "{out}");

    // Another program on the API port; then the broker itself.
    let squatter = std::net::TcpListener::bind(("127.0.0.1", api_port)).unwrap();
    let (_, out) = doctor(&config, &["--no-post"]);
    let (status, detail) = row(&out, "api", &format!("port 127.0.0.1:{api_port}"));
    assert_eq!(status, "FAIL", "{out}");
    assert!(detail.contains("in use by another program"), "{detail}");
    drop(squatter);
    let broker = common::BrokerProcess::spawn(common::QBROKER, &config);
    common::wait_for(Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", api_port))
            .ok()
            .map(|_| ())
    });
    let (_, out) = doctor(&config, &["--no-post"]);
    let (status, detail) = row(&out, "api", &format!("port 127.0.0.1:{api_port}"));
    assert_eq!(status, "pass", "{out}");
    assert!(detail.contains("in use by qbroker"), "{detail}");
    drop(broker);

    // An expired certificate fails; so does one that cannot be read.
    let (old_cert, old_key) = api_cert(dir.path(), "old", (2021, 1, 1));
    let config = write_config(&old_cert, &old_key);
    let (code, out) = doctor(&config, &["--no-post"]);
    assert_eq!(code, 1, "{out}");
    expect_in(&out, "api", "certificate", "FAIL", "expired on");
    let config = write_config(&dir.path().join("missing.pem"), &old_key);
    let (code, out) = doctor(&config, &["--no-post"]);
    assert_eq!(code, 1, "{out}");
    expect_in(&out, "api", "certificate", "FAIL", "cannot read");
}

fn expect_in(out: &str, subject: &str, check: &str, status: &str, words: &str) {
    let (s, detail) = row(out, subject, check);
    assert_eq!(s, status, "{subject} {check}: {detail}\n{out}");
    assert!(
        detail.contains(words),
        "{subject} {check}: {detail:?} lacks {words:?}"
    );
}
