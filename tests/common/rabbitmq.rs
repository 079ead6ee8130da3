//! A private RabbitMQ for a test: Debian's rabbitmq-server (scripts/test
//! installs it), run directly (not through the package's wrapper, which
//! switches user and uses the system paths) with its own node name, ports,
//! data, log and cookie directory and epmd port, on loopback only: a plain
//! AMQP listener (what the tests' own clients use) and a TLS one with a
//! certificate of the test's PKI (what qbroker uses). Stopped on drop.
//!
//! Also a consumer: a queue bound to an exchange, every delivery kept.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties, ExchangeKind};

pub const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
pub const CTL: &str = "/usr/lib/rabbitmq/bin/rabbitmqctl";
pub const USER: &str = "varonis";
pub const PASSWORD: &str = "rabbit-S3cret-pw";
pub const VHOST: &str = "varonis";
/// How long a start may take on a loaded 2-core machine.
const START_TIMEOUT: Duration = Duration::from_secs(90);

static NEXT: AtomicU32 = AtomicU32::new(0);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The TLS material RabbitMQ serves: its certificate chain and key (PEM) and
/// the CA (PEM) it names.
pub struct ServerTls {
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
}

impl ServerTls {
    /// A CA and a leaf for 127.0.0.1 and localhost signed by it.
    pub fn with_ca() -> ServerTls {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "qbroker test RabbitMQ CA");
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let leaf_params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                .unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = leaf_params.signed_by(&leaf_key, &ca).unwrap();
        ServerTls {
            cert_pem: leaf.pem(),
            key_pem: leaf_key.serialize_pem(),
            ca_pem: ca.pem(),
        }
    }

    /// What `openssl req -x509` makes: one self-signed certificate, CA:TRUE,
    /// for the server itself; the "CA" to give qbroker is that certificate.
    pub fn self_signed_ca_true() -> ServerTls {
        let mut params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                .unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "rabbitmq.example");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        ServerTls {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            ca_pem: cert.pem(),
        }
    }
}

/// A running private RabbitMQ.
pub struct RabbitMq {
    dir: tempfile::TempDir,
    pub node: String,
    pub amqp_port: u16,
    pub amqps_port: u16,
    dist_port: u16,
    epmd_port: u16,
    /// The CA to trust for the TLS listener (PEM file).
    pub ca_file: PathBuf,
    child: Option<Child>,
}

impl RabbitMq {
    /// A RabbitMQ whose TLS certificate is signed by a test CA.
    pub fn start() -> RabbitMq {
        RabbitMq::start_with(ServerTls::with_ca())
    }

    pub fn start_with(tls: ServerTls) -> RabbitMq {
        assert!(
            Path::new(SERVER).exists(),
            "{SERVER} is missing: install Debian's rabbitmq-server (scripts/test does)"
        );
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("ca.pem"), &tls.ca_pem).unwrap();
        std::fs::write(d.join("server.pem"), &tls.cert_pem).unwrap();
        std::fs::write(d.join("server.key"), &tls.key_pem).unwrap();
        std::fs::write(d.join("plugins"), "[].\n").unwrap();
        let (amqp_port, amqps_port, dist_port, epmd_port) =
            (free_port(), free_port(), free_port(), free_port());
        std::fs::write(
            d.join("rabbitmq.conf"),
            format!(
                "listeners.tcp.default = 127.0.0.1:{amqp_port}
listeners.ssl.default = 127.0.0.1:{amqps_port}
ssl_options.cacertfile = {d}/ca.pem
ssl_options.certfile = {d}/server.pem
ssl_options.keyfile = {d}/server.key
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
default_user = {USER}
default_pass = {PASSWORD}
default_vhost = {VHOST}
default_user_tags.administrator = true
loopback_users = none
log.console = false
log.file.level = info
",
                d = d.display()
            ),
        )
        .unwrap();
        let node = format!(
            "qbt{}x{}@localhost",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut r = RabbitMq {
            ca_file: d.join("ca.pem"),
            dir,
            node,
            amqp_port,
            amqps_port,
            dist_port,
            epmd_port,
            child: None,
        };
        r.launch();
        r
    }

    fn env(&self, cmd: &mut Command) {
        let d = self.dir.path();
        cmd.env("HOME", d)
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq.conf"))
            .env("RABBITMQ_CONF_ENV_FILE", d.join("none"))
            .env("RABBITMQ_MNESIA_BASE", d.join("db"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_LOGS", d.join("rabbit.log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("plugins"))
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("ERL_EPMD_PORT", self.epmd_port.to_string())
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            // Makes the script exec the VM: the child is RabbitMQ itself, so
            // kill -9 of the child kills RabbitMQ.
            .env("RUNNING_UNDER_SYSTEMD", "true");
    }

    /// Start the node (again) and wait until it takes an AMQP login.
    pub fn launch(&mut self) {
        assert!(self.child.is_none());
        let mut cmd = Command::new(SERVER);
        self.env(&mut cmd);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.child = Some(cmd.spawn().expect("rabbitmq-server starts"));
        let deadline = Instant::now() + START_TIMEOUT;
        let rt = runtime();
        loop {
            let ok = rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(5), self.connect())
                    .await
                    .is_ok_and(|c| c.is_ok())
            });
            if ok {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "rabbitmq-server exited at start ({status}): {}",
                    self.log_tail()
                );
            }
            assert!(
                Instant::now() < deadline,
                "rabbitmq-server did not take a login within {START_TIMEOUT:?}: {}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("rabbit.log")).unwrap_or_default();
        log.lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// A plain AMQP connection as the administrator, to the test vhost.
    pub async fn connect(&self) -> lapin::Result<Connection> {
        Connection::connect(
            &format!(
                "amqp://{USER}:{PASSWORD}@127.0.0.1:{}/{VHOST}?heartbeat=10",
                self.amqp_port
            ),
            ConnectionProperties::default(),
        )
        .await
    }

    /// `rabbitmqctl -n NODE args...`; panics when it fails.
    pub fn ctl(&self, args: &[&str]) -> String {
        let mut cmd = Command::new(CTL);
        self.env(&mut cmd);
        let out = cmd
            .arg("-n")
            .arg(&self.node)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("rabbitmqctl runs");
        assert!(
            out.status.success(),
            "rabbitmqctl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// kill -9 of RabbitMQ (its data stays for the next launch).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // epmd keeps the dead node's name registered for a moment; a new
        // launch under the same name waits for it to go.
        std::thread::sleep(Duration::from_millis(500));
    }

    /// Stop RabbitMQ and its epmd.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let mut cmd = Command::new(CTL);
            self.env(&mut cmd);
            let stopped = cmd
                .args(["-n", &self.node, "stop"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .ok()
                .and_then(|mut c| {
                    let deadline = Instant::now() + Duration::from_secs(30);
                    loop {
                        if let Ok(Some(s)) = c.try_wait() {
                            return Some(s);
                        }
                        if Instant::now() > deadline {
                            let _ = c.kill();
                            let _ = c.wait();
                            return None;
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    }
                });
            if stopped.is_none() {
                let _ = child.kill();
            } else {
                let deadline = Instant::now() + Duration::from_secs(20);
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = child.try_wait() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        let _ = Command::new("epmd")
            .args(["-port", &self.epmd_port.to_string(), "-kill"])
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// Declare a durable direct exchange.
    pub fn declare_exchange(&self, name: &str) {
        runtime().block_on(async {
            let c = self.connect().await.unwrap();
            let ch = c.create_channel().await.unwrap();
            ch.exchange_declare(
                name.into(),
                ExchangeKind::Direct,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
            let _ = c.close(200, "ok".into()).await;
        });
    }
}

impl Drop for RabbitMq {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// One message as the consumer got it.
#[derive(Debug, Clone)]
pub struct Got {
    pub message_id: String,
    pub routing_key: String,
    pub content_type: String,
    pub kind: String,
    pub app_id: String,
    pub delivery_mode: u8,
    pub timestamp: u64,
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

/// A durable queue bound to an exchange, consumed in the background; every
/// delivery is kept (and acked once kept).
pub struct Consumer {
    got: Arc<Mutex<Vec<Got>>>,
    rt: tokio::runtime::Runtime,
}

impl Consumer {
    /// Declare `queue` (durable), bind it to `exchange` with `key`, consume.
    /// The consumer reconnects when RabbitMQ restarts.
    pub fn start(rmq: &RabbitMq, exchange: &str, queue: &str, key: &str) -> Consumer {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let url = format!(
            "amqp://{USER}:{PASSWORD}@127.0.0.1:{}/{VHOST}?heartbeat=5",
            rmq.amqp_port
        );
        let (exchange, queue, key) = (exchange.to_string(), queue.to_string(), key.to_string());
        // Bind before returning: messages published from now on are kept.
        rt.block_on(bind(&url, &exchange, &queue, &key)).unwrap();
        let got2 = got.clone();
        rt.spawn(async move {
            loop {
                let _ = consume(&url, &queue, &got2).await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        });
        Consumer { got, rt }
    }

    pub fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    /// Wait until `pred` holds for what was received, or panic after `timeout`.
    pub fn wait(&self, timeout: Duration, mut pred: impl FnMut(&[Got]) -> bool) -> Vec<Got> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.got();
            if pred(&got) {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "consumer condition not met within {timeout:?}: {} messages",
                got.len()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        // The runtime's tasks end with it.
        let _ = &self.rt;
    }
}

async fn bind(url: &str, exchange: &str, queue: &str, key: &str) -> lapin::Result<()> {
    let c = Connection::connect(url, ConnectionProperties::default()).await?;
    let ch = c.create_channel().await?;
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await?;
    ch.queue_bind(
        queue.into(),
        exchange.into(),
        key.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    let _ = c.close(200, "ok".into()).await;
    Ok(())
}

async fn consume(url: &str, queue: &str, got: &Arc<Mutex<Vec<Got>>>) -> lapin::Result<()> {
    let c = Connection::connect(url, ConnectionProperties::default()).await?;
    let ch = c.create_channel().await?;
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    while let Some(delivery) = consumer.next().await {
        let d = delivery?;
        let p = &d.properties;
        let s = |v: &Option<lapin::types::ShortString>| {
            v.as_ref().map(|s| s.to_string()).unwrap_or_default()
        };
        let mut headers = BTreeMap::new();
        if let Some(h) = p.headers() {
            for (k, v) in h.inner() {
                let text = match v {
                    AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
                    AMQPValue::LongLongInt(n) => n.to_string(),
                    AMQPValue::Void => "null".to_string(),
                    other => format!("{other:?}"),
                };
                headers.insert(k.to_string(), text);
            }
        }
        got.lock().unwrap().push(Got {
            message_id: s(p.message_id()),
            routing_key: d.routing_key.to_string(),
            content_type: s(p.content_type()),
            kind: s(p.kind()),
            app_id: s(p.app_id()),
            delivery_mode: (*p.delivery_mode()).unwrap_or(0),
            timestamp: (*p.timestamp()).unwrap_or(0),
            headers,
            body: d.data.clone(),
        });
        d.ack(BasicAckOptions::default()).await?;
    }
    Ok(())
}
