//! The registry store on SQLite and on MariaDB: the same suite on both. The
//! MariaDB server is a private one the test starts from the Debian package
//! `mariadb-server` (in a temporary directory, on a loopback port, with a user
//! and a password), so the test needs nothing running beforehand; without the
//! package it fails and says so. Then a broker on that MariaDB applies a
//! registration another broker wrote (the shared-registry mode).

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use qbroker::config::{Secret, StoreConfig};
use qbroker::store::{Registration, Store, StoreError};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn store_config(url: &str) -> StoreConfig {
    StoreConfig {
        url: Secret::new(url),
        poll: Duration::from_secs(1),
        target_in_flight: 4,
        target_gzip: false,
    }
}

fn registration(cluster: &str, filer_id: Option<i64>) -> Registration {
    let mut r = Registration::new(cluster, "https://varonis.example:8443/events");
    r.filer_id = filer_id;
    r.token = Some(Secret::new("t0ken"));
    r.ca_certificate =
        Some("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".to_string());
    r.api_url = Some("https://q:8000".to_string());
    r.api_username = Some("svc".to_string());
    r.api_password = Some(Secret::new("pa55 wörd"));
    r.api_insecure_skip_verify = true;
    r.rmq_vhost = Some("/".to_string());
    r.rmq_exchange = Some("x".to_string());
    r
}

/// Everything the API asks of the store, on one database.
async fn suite(url: &str) {
    let store = Store::open(&store_config(url)).await.expect("store opens");
    assert!(store.list().await.unwrap().is_empty());

    let east = store.insert(&registration("east", Some(7))).await.unwrap();
    assert_eq!((east.id, east.revision), (1, 1));
    assert!(east.created_unix_ms > 0);
    let got = store.get("east").await.unwrap().unwrap();
    assert_eq!(
        got, east,
        "every field round-trips, secrets and unicode included"
    );
    assert_eq!(got.api_password.as_ref().unwrap().expose(), "pa55 wörd");
    assert!(got.api_insecure_skip_verify);
    assert!(store.get("west").await.unwrap().is_none());

    // Names differ by case: two clusters (MariaDB compares text without case
    // unless told).
    let big = store.insert(&registration("East", None)).await.unwrap();
    assert_eq!(big.id, 2);
    // Taken: the cluster, or the filer id.
    assert!(matches!(
        store.insert(&registration("east", None)).await,
        Err(StoreError::Conflict(m)) if m.contains("already registered")
    ));
    assert!(matches!(
        store.insert(&registration("west", Some(7))).await,
        Err(StoreError::Conflict(m)) if m.contains("filer_id 7")
    ));
    // Several without a filer id are fine.
    store.insert(&registration("north", None)).await.unwrap();

    // Updates go by revision: a writer that read an older one is told so.
    let mut changed = got.clone();
    changed.url = "https://elsewhere:443/in".to_string();
    changed.token = None;
    changed.filer_id = Some(8);
    let changed = store.update(&changed).await.unwrap();
    assert_eq!(changed.revision, 2);
    let again = store.get("east").await.unwrap().unwrap();
    assert_eq!(again.url, "https://elsewhere:443/in");
    assert!(again.token.is_none());
    assert!(matches!(
        store.update(&got).await,
        Err(StoreError::Stale(_))
    ));
    let mut clash = big.clone();
    clash.filer_id = Some(8);
    assert!(matches!(
        store.update(&clash).await,
        Err(StoreError::Conflict(_))
    ));

    let names: Vec<String> = store
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.cluster_name)
        .collect();
    assert_eq!(names, ["East", "east", "north"]);
    assert!(store.delete("north").await.unwrap());
    assert!(!store.delete("north").await.unwrap());
    store.close().await;

    // Opening again migrates nothing twice and keeps the rows.
    let store = Store::open(&store_config(url))
        .await
        .expect("store opens again");
    assert_eq!(store.list().await.unwrap().len(), 2);
    let next = store.insert(&registration("south", None)).await.unwrap();
    assert_eq!(next.id, 3, "ids are not reused below the highest");
    store.close().await;
}

#[test]
fn sqlite_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/registry.sqlite3");
    runtime().block_on(suite(&format!("sqlite://{}", path.display())));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o077, 0);
    }
}

/// A private MariaDB server: `mariadb-install-db` into a temporary directory,
/// then `mariadbd` on a loopback port, with database `qbroker` and user
/// `qbroker` (password `qb pass`). Killed when dropped.
struct MariaDb {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

fn find(binary: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"].map(PathBuf::from))
        .map(|d| d.join(binary))
        .find(|p| p.is_file())
}

impl MariaDb {
    fn start() -> MariaDb {
        let missing = "the MariaDB tests need the server binaries (mariadbd, mariadb-install-db) \
                       of the Debian package mariadb-server: apt-get install mariadb-server \
                       (CI's .ci/run installs it)";
        let install = find("mariadb-install-db").expect(missing);
        let server = find("mariadbd").expect(missing);
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        let user = if root {
            vec!["--user=root".to_string()]
        } else {
            vec![]
        };
        let out = Command::new(&install)
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .args(&user)
            .args([
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--skip-name-resolve",
            ])
            .output()
            .expect("mariadb-install-db runs");
        assert!(
            out.status.success(),
            "mariadb-install-db failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let init = dir.path().join("init.sql");
        std::fs::write(
            &init,
            "CREATE DATABASE IF NOT EXISTS qbroker;\n\
             CREATE USER IF NOT EXISTS 'qbroker'@'127.0.0.1' IDENTIFIED BY 'qb pass';\n\
             GRANT ALL ON qbroker.* TO 'qbroker'@'127.0.0.1';\n",
        )
        .unwrap();
        let port = free_port().unwrap();
        let child = Command::new(&server)
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", dir.path().join("sock").display()))
            .arg(format!("--pid-file={}", dir.path().join("pid").display()))
            .arg(format!(
                "--log-error={}",
                dir.path().join("error.log").display()
            ))
            .arg(format!("--tmpdir={}", dir.path().display()))
            .arg(format!("--init-file={}", init.display()))
            .arg(format!("--port={port}"))
            .args(&user)
            .args([
                "--bind-address=127.0.0.1",
                "--skip-name-resolve",
                "--innodb-buffer-pool-size=16M",
                "--innodb-log-file-size=8M",
                "--performance-schema=OFF",
                "--max-connections=32",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mariadbd starts");
        let db = MariaDb { child, port, dir };
        db.wait_ready();
        db
    }

    fn url(&self) -> String {
        format!("mysql://qbroker:qb%20pass@127.0.0.1:{}/qbroker", self.port)
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if Instant::now() > deadline {
                let log =
                    std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default();
                panic!("mariadbd did not listen within 60 s:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // The init file runs before the port opens; one connection proves it.
        runtime().block_on(async {
            let cfg = store_config(&self.url());
            loop {
                match Store::open(&cfg).await {
                    Ok(s) => {
                        s.close().await;
                        break;
                    }
                    Err(e) if Instant::now() > deadline => panic!("cannot reach mariadbd: {e}"),
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        // Start every test from an empty registry.
        runtime().block_on(async {
            use sqlx::Connection;
            let mut c = sqlx::MySqlConnection::connect(&self.url()).await.unwrap();
            sqlx::query("DROP TABLE IF EXISTS qbroker_targets, qbroker_migrations")
                .execute(&mut c)
                .await
                .unwrap();
        });
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The store suite, then two brokers sharing the registry: a registration
/// written by one (here: straight into the store) is applied by the other
/// within `store.poll_secs`, and its events go there.
#[test]
fn mariadb_store_and_a_shared_registry() {
    let db = MariaDb::start();
    let rt = runtime();
    rt.block_on(suite(&db.url()));
    assert!(db.path().join("data").is_dir());
    // Errors never quote the password.
    let err = rt
        .block_on(Store::open(&store_config(&format!(
            "mysql://qbroker:wrong-s3cret@127.0.0.1:{}/qbroker",
            db.port
        ))))
        .err()
        .expect("a wrong password is refused");
    assert!(!err.to_string().contains("wrong-s3cret"), "{err}");

    let default = Sink::start();
    let shared = Sink::start();
    let dir = tempfile::tempdir().unwrap();
    let url_file = dir.path().join("store-url");
    std::fs::write(&url_file, db.url()).unwrap();
    let broker = Broker::start(&config_text(
        &default,
        dir.path(),
        &format!(
            "\n[store]\nurl_file = \"{}\"\npoll_secs = 1\n",
            url_file.display()
        ),
    ));
    assert!(
        broker.api.is_none(),
        "a broker can share the registry without serving the API"
    );
    let mut reg = Registration::new("shared", &shared.url());
    reg.ca_certificate = Some(std::fs::read_to_string(&shared.ca_file).unwrap());
    reg.filer_id = Some(99);
    rt.block_on(async {
        let other = Store::open(&store_config(&db.url())).await.unwrap();
        other.insert(&reg).await.unwrap();
        other.close().await;
    });
    // Applied within a poll: the cluster's first connection goes to it.
    wait_for(Duration::from_secs(20), || {
        broker
            .metric("qbroker_spool_unacked_batches{target=\"@shared\"}")
            .map(|_| ())
    });
    let mut s = TcpStream::connect(broker.syslog).unwrap();
    for i in 0..10 {
        let frame = json_frame(
            "shared-1",
            "fs_create_file",
            &format!("/f{i}"),
            &file_id(1, i),
        );
        s.write_all(&framed(&frame, false)).unwrap();
    }
    drop(s);
    wait_for(Duration::from_secs(20), || {
        let n: usize = shared
            .accepted()
            .iter()
            .map(|r| r.body["events"].as_array().unwrap().len())
            .sum();
        (n >= 10).then_some(())
    });
    assert!(shared.accepted().iter().all(|r| r.body["filer_id"] == 99));
    assert!(default.accepted().is_empty());

    // Another broker changes the registration: a new URL and filer id. This
    // broker follows within a poll, while the node stays connected.
    let moved = Sink::start();
    let events_at = |sink: &Sink| -> usize {
        sink.accepted()
            .iter()
            .map(|r| r.body["events"].as_array().unwrap().len())
            .sum()
    };
    rt.block_on(async {
        let other = Store::open(&store_config(&db.url())).await.unwrap();
        let mut current = other.get("shared").await.unwrap().unwrap();
        current.url = moved.url();
        current.ca_certificate = Some(std::fs::read_to_string(&moved.ca_file).unwrap());
        current.filer_id = Some(100);
        other.update(&current).await.unwrap();
        other.close().await;
    });
    let mut s = TcpStream::connect(broker.syslog).unwrap();
    let mut next = 10u64;
    wait_for(Duration::from_secs(20), || {
        let frame = json_frame("shared-1", "fs_create_file", "/g", &file_id(1, next));
        s.write_all(&framed(&frame, false)).unwrap();
        next += 1;
        std::thread::sleep(Duration::from_millis(200));
        // Batches sealed before the change keep filer id 99 (and may go to
        // the new URL); the next ones carry 100.
        moved
            .accepted()
            .iter()
            .any(|r| r.body["filer_id"] == 100)
            .then_some(())
    });

    // Another broker deletes it: this broker sends the cluster to the default
    // target, delivers what the deleted target's spool held, and removes it.
    rt.block_on(async {
        let other = Store::open(&store_config(&db.url())).await.unwrap();
        assert!(other.delete("shared").await.unwrap());
        other.close().await;
    });
    wait_for(Duration::from_secs(20), || {
        let frame = json_frame("shared-1", "fs_create_file", "/h", &file_id(1, next));
        s.write_all(&framed(&frame, false)).unwrap();
        next += 1;
        std::thread::sleep(Duration::from_millis(200));
        (events_at(&default) > 0).then_some(())
    });
    drop(s);
    wait_for(Duration::from_secs(20), || {
        (!dir.path().join("spool/@shared").exists()).then_some(())
    });
    // Every event sent arrived at one of the three.
    let unique = || -> std::collections::BTreeSet<(u32, u64)> {
        [&shared, &moved, &default]
            .iter()
            .flat_map(|sink| sink.events())
            .map(|(_, e)| identity(&e))
            .collect()
    };
    wait_for(Duration::from_secs(20), || {
        (unique().len() as u64 == next).then_some(())
    });
    assert_eq!(unique(), (0..next).map(|i| (1, i)).collect());
    broker.stop();
}
