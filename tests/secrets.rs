//! Credentials stay secret: the broker binary runs with tokens (inline and in a
//! file) and a client key, at the most verbose log level, against a target that
//! refuses and echoes the Authorization header back; then its log, metrics,
//! health page, every file it wrote, `check-config` and its configuration
//! errors are searched for the secrets. Files it creates are owner-only.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use common::*;

const TOKEN_INLINE: &str = "tok-INLINE-5ecret-0a1b2c";
const TOKEN_FILE: &str = "tok-FILE-5ecret-9z8y7x";

fn write_private(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}

/// Every file under `dir`, with its mode.
fn walk(dir: &Path, out: &mut Vec<(std::path::PathBuf, u32, bool)>) {
    use std::os::unix::fs::PermissionsExt;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let meta = e.metadata().unwrap();
        let mode = meta.permissions().mode() & 0o777;
        out.push((e.path(), mode, meta.is_dir()));
        if meta.is_dir() {
            walk(&e.path(), out);
        }
    }
}

fn qbroker(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_qbroker"))
        .args(args)
        .env("RUST_LOG", "trace")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn credentials_never_reach_logs_metrics_errors_or_files() {
    let sink = Sink::start();
    let strict = Sink::start_mtls();
    strict.set_mode(Mode::FailEcho(401));
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let token_file = dir.path().join("strict.token");
    write_private(&token_file, &format!("{TOKEN_FILE}\n"));
    let key_pem = std::fs::read_to_string(&strict.client_key_file).unwrap();
    // A line from the middle of the key: what a leak of the key would show.
    let key_line = key_pem.lines().nth(1).unwrap().to_string();
    // The client key as the test sink wrote it: readable by others, which the
    // broker must point out (by path).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            &strict.client_key_file,
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
    }
    let config = format!(
        r#"
listen = "127.0.0.1:0"
metrics_listen = "127.0.0.1:0"
workers = 2
io_threads = 1
data_dir = "{data}"
default_target = "sink"
[batch]
max_events = 10
max_age_ms = 50
[shutdown]
grace_secs = 3
[[targets]]
name = "sink"
url = "{sink_url}?api_key=ignored-but-not-logged"
ca_file = "{sink_ca}"
token = "{TOKEN_INLINE}"
retry_initial_ms = 20
retry_max_ms = 100
[[targets]]
name = "strict"
url = "{strict_url}"
ca_file = "{strict_ca}"
token_file = "{token_file}"
client_cert_file = "{cert}"
client_key_file = "{key}"
[[clusters]]
name = "strict"
target = "strict"
"#,
        data = data.display(),
        sink_url = sink.url(),
        sink_ca = sink.ca_file.display(),
        strict_url = strict.url(),
        strict_ca = strict.ca_file.display(),
        token_file = token_file.display(),
        cert = strict.client_cert_file.display(),
        key = strict.client_key_file.display(),
    );
    let config_file = dir.path().join("qbroker.toml");
    write_private(&config_file, &config);

    let mut broker = BrokerProcess::spawn_with_log(QBROKER, &config_file, "trace");
    // A connection's cluster is its first frame's: one connection per cluster.
    for host in ["plain-1", "strict-1"] {
        let mut s = TcpStream::connect(broker.syslog).unwrap();
        for i in 0..10 {
            s.write_all(&framed(
                &json_frame(host, "fs_create_file", "/a", &file_id(1, i)),
                false,
            ))
            .unwrap();
        }
        s.write_all(b"<14>1 this is not an audit record\n").unwrap();
    }
    wait_for(Duration::from_secs(20), || {
        (sink.events().len() == 10).then_some(())
    });
    let dead = data.join("dead-letter/batches/strict");
    let meta = wait_for(Duration::from_secs(20), || {
        std::fs::read_dir(&dead)
            .ok()?
            .flatten()
            .find(|e| e.file_name().to_string_lossy().ends_with(".meta.json"))
            .map(|e| std::fs::read_to_string(e.path()).unwrap())
    });
    // The target did echo the token; what was kept says so, redacted.
    assert!(meta.contains("<redacted>"), "{meta}");
    assert_eq!(
        strict.requests()[0].authorization.as_deref(),
        Some(format!("Bearer {TOKEN_FILE}").as_str()),
        "the token did go out"
    );
    assert_eq!(
        sink.requests()[0].authorization.as_deref(),
        Some(format!("Bearer {TOKEN_INLINE}").as_str())
    );
    let metrics = http_get(broker.metrics, "/metrics");
    let health = http_get(broker.metrics, "/healthz");
    let status = broker.signal_and_wait("TERM");
    assert!(status.success());
    let log = broker.log().join("\n");
    assert!(log.len() > 10_000, "a trace log: {} bytes", log.len());

    let (ok, check) = qbroker(&["check-config", config_file.to_str().unwrap()]);
    assert!(ok, "{check}");
    assert!(check.contains("memory budget"), "{check}");

    let mut files = Vec::new();
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&data).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "data_dir has mode {mode:o}");
    }
    walk(&data, &mut files);
    assert!(files.len() >= 6, "{files:?}");
    let mut haystacks: Vec<(String, String)> = vec![
        ("log".into(), log.clone()),
        ("metrics".into(), metrics),
        ("healthz".into(), health),
        ("check-config".into(), check),
    ];
    for (path, mode, is_dir) in &files {
        let want = if *is_dir { 0o700 } else { 0o600 };
        assert_eq!(*mode, want, "{} has mode {mode:o}", path.display());
        if !is_dir {
            let bytes = std::fs::read(path).unwrap();
            haystacks.push((
                path.display().to_string(),
                String::from_utf8_lossy(&bytes).into_owned(),
            ));
        }
    }
    // Configuration errors that touch a credential name the field, not the value.
    let bad = [
        (
            "url = \"https://admin:PASSW0RD-in-url@127.0.0.1:1/x\"".to_string(),
            "targets[0].url",
        ),
        (
            format!("url = \"http://127.0.0.1:1/x\"\ntoken = \"{TOKEN_INLINE}\""),
            "targets[0].token",
        ),
        (
            format!("url = \"https://127.0.0.1:1/x\"\ntoken = \"{TOKEN_INLINE}"),
            "line 4",
        ),
        (
            format!("url = \"https://127.0.0.1:1/x\"\ntoken = \"{TOKEN_INLINE} x\""),
            "targets[0].token",
        ),
    ];
    for (i, (target, field)) in bad.iter().enumerate() {
        let file = dir.path().join(format!("bad{i}.toml"));
        write_private(&file, &format!("[[targets]]\nname = \"v\"\n{target}\n"));
        let (ok, text) = qbroker(&["check-config", file.to_str().unwrap()]);
        assert!(!ok, "bad config {i} accepted");
        assert!(text.contains(field), "bad config {i}: {text}");
        haystacks.push((format!("config error {i}"), text));
    }
    for (name, text) in &haystacks {
        for secret in [
            TOKEN_INLINE,
            TOKEN_FILE,
            key_line.as_str(),
            "PASSW0RD",
            "ignored-but-not-logged",
        ] {
            assert!(!text.contains(secret), "{secret:?} found in {name}");
        }
    }
    // The key file others may read is pointed out, by path only; the private
    // configuration file is not.
    let key_path = strict.client_key_file.display().to_string();
    assert!(
        log.lines()
            .any(|l| l.contains("others may read it") && l.contains(&key_path)),
        "no warning about {key_path}"
    );
    assert!(!log
        .lines()
        .any(|l| l.contains("others may read it") && l.contains("qbroker.toml")));
}
