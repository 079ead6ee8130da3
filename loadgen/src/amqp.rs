//! amqp: the AMQP side of the benchmark: a private RabbitMQ (Debian's
//! rabbitmq-server run directly on loopback, with its own node name, ports,
//! data and log directory, and a TLS listener with a generated CA), and the
//! verifying sink as a consumer: a queue bound to the exchange qbroker
//! publishes to, every message's body checked by the same [`Verifier`] as
//! the HTTPS sink's requests (`message_id`, less a per-event message's
//! `-<index>`, as the idempotency key). A message delivered twice (the same
//! `message_id`) counts as a duplicate batch; the messages of one batch's
//! events do not.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};

use crate::verify::{BatchMeta, Verifier};

pub const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
const CTL: &str = "/usr/lib/rabbitmq/bin/rabbitmqctl";
pub const USER: &str = "loadgen";
pub const PASSWORD: &str = "loadgen-rabbit";
pub const VHOST: &str = "varonis";
pub const EXCHANGE: &str = "qumulo";
const QUEUE: &str = "loadgen-sink";

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A RabbitMQ node of the benchmark's own.
pub struct RabbitMq {
    dir: PathBuf,
    node: String,
    pub amqp_port: u16,
    pub amqps_port: u16,
    dist_port: u16,
    epmd_port: u16,
    /// The CA of its TLS listener (PEM file), for qbroker's `ca_file`.
    pub ca_file: PathBuf,
    child: Option<Child>,
}

impl RabbitMq {
    /// Start a node under `dir` and wait (up to 90 s) until it takes a login.
    pub async fn start(dir: &Path) -> anyhow::Result<RabbitMq> {
        if !Path::new(SERVER).exists() {
            bail!("{SERVER} is missing: install Debian's rabbitmq-server");
        }
        std::fs::create_dir_all(dir)?;
        let (ca_pem, cert_pem, key_pem) = tls_material()?;
        std::fs::write(dir.join("ca.pem"), ca_pem)?;
        std::fs::write(dir.join("server.pem"), cert_pem)?;
        std::fs::write(dir.join("server.key"), key_pem)?;
        std::fs::write(dir.join("plugins"), "[].\n")?;
        let (amqp_port, amqps_port, dist_port, epmd_port) =
            (free_port()?, free_port()?, free_port()?, free_port()?);
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!(
                "listeners.tcp.default = 127.0.0.1:{amqp_port}\n\
                 listeners.ssl.default = 127.0.0.1:{amqps_port}\n\
                 ssl_options.cacertfile = {d}/ca.pem\n\
                 ssl_options.certfile = {d}/server.pem\n\
                 ssl_options.keyfile = {d}/server.key\n\
                 ssl_options.verify = verify_none\n\
                 ssl_options.fail_if_no_peer_cert = false\n\
                 default_user = {USER}\ndefault_pass = {PASSWORD}\ndefault_vhost = {VHOST}\n\
                 default_user_tags.administrator = true\nloopback_users = none\n\
                 log.console = false\n",
                d = dir.display()
            ),
        )?;
        let mut r = RabbitMq {
            ca_file: dir.join("ca.pem"),
            dir: dir.to_path_buf(),
            node: format!("loadgen{}@localhost", std::process::id()),
            amqp_port,
            amqps_port,
            dist_port,
            epmd_port,
            child: None,
        };
        r.launch().await?;
        Ok(r)
    }

    /// Start the node (again, after [`kill`](Self::kill): same name, data
    /// and ports) and wait (up to 90 s) until it takes a login.
    pub async fn launch(&mut self) -> anyhow::Result<()> {
        let mut cmd = Command::new(SERVER);
        self.env(&mut cmd);
        self.child = Some(
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting rabbitmq-server")?,
        );
        let log = self.dir.join("rabbit.log");
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Ok(Ok(c)) =
                tokio::time::timeout(Duration::from_secs(5), connect(&self.url())).await
            {
                let _ = c.close(200, "ready".into()).await;
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "rabbitmq-server exited at start ({status}); see {}",
                    log.display()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "rabbitmq-server took no login within 90 s; see {}",
                    log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// kill -9 of the node; its data stays for [`launch`](Self::launch).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `rabbitmqctl -n NODE args...`.
    pub fn ctl(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut cmd = Command::new(CTL);
        self.env(&mut cmd);
        let out = cmd
            .arg("-n")
            .arg(&self.node)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("running rabbitmqctl")?;
        if !out.status.success() {
            bail!(
                "rabbitmqctl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    fn env(&self, cmd: &mut Command) {
        let d = &self.dir;
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
            .env("RUNNING_UNDER_SYSTEMD", "true");
    }

    /// Plain AMQP to the benchmark's vhost, as its administrator.
    pub fn url(&self) -> String {
        format!(
            "amqp://{USER}:{PASSWORD}@127.0.0.1:{}/{VHOST}?heartbeat=10",
            self.amqp_port
        )
    }

    /// The `[[targets]]` fields after `name`: qbroker publishes to the
    /// exchange over amqps://.
    pub fn target_config(&self, password_file: &Path, message: &str) -> String {
        format!(
            "url = \"amqps://127.0.0.1:{}/{VHOST}\"\nca_file = {:?}\nexchange = \"{EXCHANGE}\"\n\
             username = \"{USER}\"\npassword_file = {:?}\nmessage = \"{message}\"\n",
            self.amqps_port,
            self.ca_file.display().to_string(),
            password_file.display().to_string(),
        )
    }

    /// Stop the node and its epmd.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let mut cmd = Command::new(CTL);
            self.env(&mut cmd);
            let _ = cmd
                .args(["-n", &self.node, "stop"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("epmd")
            .args(["-port", &self.epmd_port.to_string(), "-kill"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for RabbitMq {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn connect(url: &str) -> lapin::Result<Connection> {
    Connection::connect(url, ConnectionProperties::default()).await
}

/// A CA, and a leaf for 127.0.0.1 and localhost signed by it (PEM).
fn tls_material() -> anyhow::Result<(String, String, String)> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "loadgen RabbitMQ CA");
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;
    let key = KeyPair::generate()?;
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])?
        .signed_by(&key, &ca)?;
    Ok((ca.pem(), leaf.pem(), key.serialize_pem()))
}

/// Declare the exchange (fanout: every cluster's routing key reaches the
/// sink) and a durable queue bound to it, then consume in the background:
/// each message goes to the verifier. Reconnects when RabbitMQ restarts (the
/// queue and its persistent messages survive it).
pub async fn consume(
    url: &str,
    verifier: Arc<Verifier>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let first = subscribe(url).await?;
    let url = url.to_string();
    Ok(tokio::spawn(async move {
        let mut next = Some(first);
        loop {
            if let Some((conn, consumer)) = next.take() {
                drain(conn, consumer, &verifier).await;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            next = subscribe(&url).await.ok();
        }
    }))
}

async fn subscribe(url: &str) -> anyhow::Result<(Connection, lapin::Consumer)> {
    let conn = connect(url).await.context("connecting the AMQP sink")?;
    let ch = conn.create_channel().await?;
    ch.exchange_declare(
        EXCHANGE.into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await?;
    ch.queue_declare(
        QUEUE.into(),
        QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await?;
    ch.queue_bind(
        QUEUE.into(),
        EXCHANGE.into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    let consumer = ch
        .basic_consume(
            QUEUE.into(),
            "loadgen-sink".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok((conn, consumer))
}

async fn drain(_conn: Connection, mut consumer: lapin::Consumer, verifier: &Verifier) {
    {
        while let Some(Ok(d)) = consumer.next().await {
            let p = &d.properties;
            let content_type = p.content_type().as_ref().map(|s| s.as_str());
            // Per-event messages: `<batch id>-<index>` (a batch id is a UUID,
            // five dash-separated groups); the verifier wants the batch id.
            let message_id = p.message_id().as_ref().map(|s| s.as_str());
            let id = p.message_id().as_ref().map(|s| {
                let s = s.as_str();
                match s.rsplit_once('-') {
                    Some((batch, index))
                        if s.matches('-').count() == 5
                            && index.bytes().all(|b| b.is_ascii_digit()) =>
                    {
                        batch
                    }
                    _ => s,
                }
            });
            let _ = verifier.check_batch(
                &BatchMeta {
                    content_type,
                    content_encoding: None,
                    idempotency_key: id,
                    delivery_id: message_id,
                },
                &d.data,
            );
        }
    }
}
