//! rabbitmq: a private RabbitMQ node: Debian's rabbitmq-server (scripts/test
//! installs it), run directly (not through the package's wrapper, which
//! switches user and uses the system paths) with its own node name, ports,
//! data, log and cookie directory and epmd port, on loopback only: a plain
//! AMQP listener (what a test's or loadgen's own clients use) and a TLS one
//! with a certificate of a generated CA (what qbroker uses). Stopped on drop.
//!
//! Also a consumer for tests: a queue bound to an exchange, every delivery
//! kept.

use std::collections::BTreeMap;
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
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::pki::Pki;

pub const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
pub const CTL: &str = "/usr/lib/rabbitmq/bin/rabbitmqctl";
/// The administrator, password and vhost of [`Options::default`].
pub const USER: &str = "varonis";
pub const PASSWORD: &str = "rabbit-S3cret-pw";
pub const VHOST: &str = "varonis";
/// How long a start may take on a loaded 2-core machine.
pub const START_TIMEOUT: Duration = Duration::from_secs(90);
/// How long `rabbitmqctl stop` may take before it is killed.
const CTL_STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the node may take to exit after `rabbitmqctl stop` before it is killed.
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long epmd may keep a killed node's name before a launch goes ahead.
const EPMD_FORGET_TIMEOUT: Duration = Duration::from_secs(10);

static NEXT: AtomicU32 = AtomicU32::new(0);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{SERVER} is missing: install Debian's rabbitmq-server (scripts/test does)")]
    Missing,
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("making the RabbitMQ certificate: {0}")]
    Pki(#[from] crate::pki::Error),
    #[error("rabbitmq-server exited at start ({status}); {log}")]
    Exited {
        status: std::process::ExitStatus,
        log: String,
    },
    #[error("rabbitmq-server took no login within {within:?}; {log}")]
    NoLogin { within: Duration, log: String },
    #[error("rabbitmqctl {args:?}: {output}")]
    Ctl { args: Vec<String>, output: String },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// The TLS material RabbitMQ serves: its certificate and key (PEM) and the CA
/// (PEM) that a client trusts.
pub struct ServerTls {
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
}

impl ServerTls {
    /// A CA and a server certificate for loopback signed by it.
    pub fn with_ca() -> Result<ServerTls, Error> {
        let pki = Pki::new("test RabbitMQ")?;
        Ok(ServerTls {
            cert_pem: pki.cert_pem,
            key_pem: pki.key_pem,
            ca_pem: pki.ca_pem,
        })
    }

    /// What `openssl req -x509` makes: one self-signed certificate, CA:TRUE,
    /// for the server itself; the "CA" to give qbroker is that certificate.
    pub fn self_signed_ca_true() -> Result<ServerTls, Error> {
        let mut params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                .map_err(crate::pki::Error::from)?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "rabbitmq.example");
        let key = rcgen::KeyPair::generate().map_err(crate::pki::Error::from)?;
        let cert = params.self_signed(&key).map_err(crate::pki::Error::from)?;
        Ok(ServerTls {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            ca_pem: cert.pem(),
        })
    }
}

/// What a node is started with.
pub struct Options {
    /// Where its configuration, TLS files, data and log go; None: a new
    /// temporary directory, removed with the node.
    pub dir: Option<PathBuf>,
    /// The node is `<prefix><pid>x<n>@localhost`, n counting the nodes this
    /// process started: two nodes of one process never share a name.
    pub node_prefix: String,
    /// The administrator, created at the first start, and its vhost.
    pub user: String,
    pub password: String,
    pub vhost: String,
    /// None: [`ServerTls::with_ca`].
    pub tls: Option<ServerTls>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            dir: None,
            node_prefix: "qbt".to_string(),
            user: USER.to_string(),
            password: PASSWORD.to_string(),
            vhost: VHOST.to_string(),
            tls: None,
        }
    }
}

enum Dir {
    Temporary(tempfile::TempDir),
    Kept(PathBuf),
}

impl Dir {
    fn path(&self) -> &Path {
        match self {
            Dir::Temporary(t) => t.path(),
            Dir::Kept(p) => p,
        }
    }
}

/// A running private RabbitMQ.
pub struct RabbitMq {
    dir: Dir,
    pub node: String,
    pub user: String,
    pub password: String,
    pub vhost: String,
    pub amqp_port: u16,
    pub amqps_port: u16,
    dist_port: u16,
    epmd_port: u16,
    /// The CA to trust for the TLS listener (PEM file).
    pub ca_file: PathBuf,
    child: Option<Child>,
}

impl RabbitMq {
    /// Write the node's configuration, start it, and wait (up to
    /// [`START_TIMEOUT`]) until it takes an AMQP login.
    pub async fn start(opts: Options) -> Result<RabbitMq, Error> {
        if !Path::new(SERVER).exists() {
            return Err(Error::Missing);
        }
        let dir = match opts.dir {
            Some(d) => {
                std::fs::create_dir_all(&d).map_err(io(format!("creating {}", d.display())))?;
                Dir::Kept(d)
            }
            None => Dir::Temporary(tempfile::tempdir().map_err(io("a temporary directory"))?),
        };
        let tls = match opts.tls {
            Some(t) => t,
            None => ServerTls::with_ca()?,
        };
        let d = dir.path();
        let write = |name: &str, text: &str| {
            let path = d.join(name);
            std::fs::write(&path, text).map_err(io(format!("writing {}", path.display())))
        };
        write("ca.pem", &tls.ca_pem)?;
        write("server.pem", &tls.cert_pem)?;
        write("server.key", &tls.key_pem)?;
        write("plugins", "[].\n")?;
        let port = || crate::net::free_port().map_err(io("finding a free port"));
        let (amqp_port, amqps_port, dist_port, epmd_port) = (port()?, port()?, port()?, port()?);
        write(
            "rabbitmq.conf",
            &format!(
                "listeners.tcp.default = 127.0.0.1:{amqp_port}
listeners.ssl.default = 127.0.0.1:{amqps_port}
ssl_options.cacertfile = {d}/ca.pem
ssl_options.certfile = {d}/server.pem
ssl_options.keyfile = {d}/server.key
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
default_user = {user}
default_pass = {password}
default_vhost = {vhost}
default_user_tags.administrator = true
loopback_users = none
log.console = false
log.file.level = info
",
                d = d.display(),
                user = opts.user,
                password = opts.password,
                vhost = opts.vhost,
            ),
        )?;
        let node = format!(
            "{}{}x{}@localhost",
            opts.node_prefix,
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut r = RabbitMq {
            ca_file: d.join("ca.pem"),
            dir,
            node,
            user: opts.user,
            password: opts.password,
            vhost: opts.vhost,
            amqp_port,
            amqps_port,
            dist_port,
            epmd_port,
            child: None,
        };
        r.launch().await?;
        Ok(r)
    }

    /// [`start`](Self::start) on a runtime of its own, for code that has none.
    pub fn start_blocking(opts: Options) -> Result<RabbitMq, Error> {
        crate::runtime().block_on(RabbitMq::start(opts))
    }

    /// The node's directory: configuration, data and `rabbit.log`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
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

    /// Start the node (again, after [`kill`](Self::kill): same name, data and
    /// ports) and wait (up to [`START_TIMEOUT`]) until it takes an AMQP login.
    pub async fn launch(&mut self) -> Result<(), Error> {
        assert!(self.child.is_none(), "the node is running");
        // epmd keeps a killed node's name for a moment; a node started under
        // the same name meanwhile would give up at once.
        let short = self.node.split('@').next().unwrap_or_default().to_string();
        let deadline = Instant::now() + EPMD_FORGET_TIMEOUT;
        while epmd_knows(self.epmd_port, &short).await && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut cmd = Command::new(SERVER);
        self.env(&mut cmd);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.child = Some(cmd.spawn().map_err(io("starting rabbitmq-server"))?);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Ok(c)) = tokio::time::timeout(Duration::from_secs(5), self.connect()).await {
                let _ = c.close(200, "ready".into()).await;
                return Ok(());
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                self.child = None;
                return Err(Error::Exited {
                    status,
                    log: self.log_tail(),
                });
            }
            if Instant::now() > deadline {
                return Err(Error::NoLogin {
                    within: START_TIMEOUT,
                    log: self.log_tail(),
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// [`launch`](Self::launch) on a runtime of its own, for code that has none.
    pub fn launch_blocking(&mut self) -> Result<(), Error> {
        crate::runtime().block_on(self.launch())
    }

    /// Where the log is, and its last lines.
    fn log_tail(&self) -> String {
        let path = self.dir.path().join("rabbit.log");
        let log = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        format!(
            "the end of {}:\n{}",
            path.display(),
            lines[lines.len().saturating_sub(30)..].join("\n")
        )
    }

    /// Plain AMQP to the vhost, as its administrator.
    pub fn url(&self) -> String {
        self.url_with_heartbeat(10)
    }

    fn url_with_heartbeat(&self, secs: u32) -> String {
        format!(
            "amqp://{}:{}@127.0.0.1:{}/{}?heartbeat={secs}",
            self.user, self.password, self.amqp_port, self.vhost
        )
    }

    /// A plain AMQP connection as the administrator, to the vhost.
    pub async fn connect(&self) -> lapin::Result<Connection> {
        Connection::connect(&self.url(), ConnectionProperties::default()).await
    }

    /// `rabbitmqctl -n NODE args...`: its output.
    pub fn ctl(&self, args: &[&str]) -> Result<String, Error> {
        let mut cmd = Command::new(CTL);
        self.env(&mut cmd);
        let out = cmd
            .arg("-n")
            .arg(&self.node)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(io("running rabbitmqctl"))?;
        if !out.status.success() {
            return Err(Error::Ctl {
                args: args.iter().map(|a| a.to_string()).collect(),
                output: format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// kill -9 of the node; its data stays for [`launch`](Self::launch).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stop the node (`rabbitmqctl stop`; whichever of it and the node takes
    /// too long is killed) and its epmd.
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
                .and_then(|mut ctl| {
                    let status = crate::process::wait_exit(&mut ctl, CTL_STOP_TIMEOUT);
                    if status.is_none() {
                        let _ = ctl.kill();
                        let _ = ctl.wait();
                    }
                    status
                });
            if stopped.is_some() {
                crate::process::wait_exit(&mut child, EXIT_TIMEOUT);
            }
            let _ = child.kill();
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

    /// Declare a durable direct exchange; panics when it cannot.
    pub fn declare_exchange(&self, name: &str) {
        crate::runtime().block_on(async {
            let c = self.connect().await.expect("an AMQP connection");
            let ch = c.create_channel().await.expect("a channel");
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
            .unwrap_or_else(|e| panic!("declaring exchange {name}: {e}"));
            let _ = c.close(200, "ok".into()).await;
        });
    }
}

impl Drop for RabbitMq {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether the epmd on `port` has a node named `short` (the name before `@`)
/// registered: its NAMES request. No epmd there: no.
async fn epmd_knows(port: u16, short: &str) -> bool {
    let ask = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        // length 1, NAMES_REQ
        s.write_all(&[0, 1, 110]).await?;
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    match tokio::time::timeout(Duration::from_secs(2), ask).await {
        // the epmd's own port (4 bytes), then "name N at port P" lines
        Ok(Ok(answer)) => String::from_utf8_lossy(answer.get(4..).unwrap_or_default())
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some(short)),
        Ok(Err(_)) => false,
        // an epmd that does not answer: assume the worst
        Err(_) => true,
    }
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
/// delivery is kept (and acked once kept). Panics where a test would.
pub struct Consumer {
    got: Arc<Mutex<Vec<Got>>>,
    _rt: tokio::runtime::Runtime,
}

impl Consumer {
    /// Declare `queue` (durable), bind it to `exchange` with `key`, consume.
    /// The consumer reconnects when RabbitMQ restarts.
    pub fn start(rmq: &RabbitMq, exchange: &str, queue: &str, key: &str) -> Consumer {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        let got = Arc::new(Mutex::new(Vec::new()));
        let url = rmq.url_with_heartbeat(5);
        let (exchange, queue, key) = (exchange.to_string(), queue.to_string(), key.to_string());
        // Bind before returning: messages published from now on are kept.
        rt.block_on(bind(&url, &exchange, &queue, &key))
            .unwrap_or_else(|e| panic!("binding {queue} to {exchange}: {e}"));
        let got2 = got.clone();
        rt.spawn(async move {
            loop {
                let _ = consume(&url, &queue, &got2).await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        });
        Consumer { got, _rt: rt }
    }

    pub fn got(&self) -> Vec<Got> {
        self.got.lock().expect("consumer").clone()
    }

    /// Wait until `pred` holds for what was received, or panic after `timeout`.
    pub fn wait(&self, timeout: Duration, mut pred: impl FnMut(&[Got]) -> bool) -> Vec<Got> {
        let got = crate::wait::poll(timeout, || {
            let got = self.got();
            pred(&got).then_some(got)
        });
        got.unwrap_or_else(|| {
            panic!(
                "consumer condition not met within {timeout:?}: {} messages",
                self.got().len()
            )
        })
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
        got.lock().expect("consumer").push(Got {
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
