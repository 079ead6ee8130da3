//! amqp: the AMQP side of the benchmark: a private RabbitMQ (testkit's:
//! Debian's rabbitmq-server run directly on loopback, with its own node name,
//! ports, data and log directory, and a TLS listener with a generated CA), and
//! the verifying sink as a consumer: a queue bound to the exchange qbroker
//! publishes to, every message's body checked by the same [`Verifier`] as
//! the HTTPS sink's requests (`message_id`, less a per-event message's
//! `-<index>`, as the idempotency key). A message delivered twice (the same
//! `message_id`) counts as a duplicate batch; the messages of one batch's
//! events do not.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};
pub use testkit::rabbitmq::RabbitMq;

use crate::verify::{BatchMeta, Verifier};

pub const USER: &str = "loadgen";
pub const PASSWORD: &str = "loadgen-rabbit";
pub const VHOST: &str = "varonis";
pub const EXCHANGE: &str = "qumulo";
const QUEUE: &str = "loadgen-sink";

/// Start a node of the benchmark's own under `dir` (kept: its log is there)
/// and wait (up to 90 s) until it takes a login.
pub async fn start(dir: &Path) -> anyhow::Result<RabbitMq> {
    let opts = testkit::rabbitmq::Options {
        dir: Some(dir.to_path_buf()),
        node_prefix: "loadgen".to_string(),
        user: USER.to_string(),
        password: PASSWORD.to_string(),
        vhost: VHOST.to_string(),
        tls: None,
    };
    Ok(RabbitMq::start(opts).await?)
}

/// The `[[targets]]` fields after `name`: qbroker publishes to the exchange
/// over amqps://.
pub fn target_config(r: &RabbitMq, password_file: &Path, message: &str) -> String {
    format!(
        "url = \"amqps://127.0.0.1:{}/{VHOST}\"\nca_file = {:?}\nexchange = \"{EXCHANGE}\"\n\
         username = \"{USER}\"\npassword_file = {:?}\nmessage = \"{message}\"\n",
        r.amqps_port,
        r.ca_file.display().to_string(),
        password_file.display().to_string(),
    )
}

async fn connect(url: &str) -> lapin::Result<Connection> {
    Connection::connect(url, ConnectionProperties::default()).await
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
