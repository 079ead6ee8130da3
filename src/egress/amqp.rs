//! amqp: the AMQP 0-9-1 transport, to Varonis's RabbitMQ, with publisher confirms.
//!
//! The lane of [`super`] reads the spool, retries with back-off and
//! acknowledges; this transport carries one batch: it publishes the batch's
//! messages ([`super::encode`]) to the target's exchange and answers only once
//! RabbitMQ confirmed every one. A batch counts as delivered when every
//! message was acked and none was returned. A nack, a `basic.return` (the
//! message was unroutable: `mandatory` is set), a closed channel or
//! connection, or no confirm within the target's `timeout_secs`: the batch is
//! kept and sent again later, with the same message ids (RabbitMQ does not
//! deduplicate; consumers can, by `message_id`).
//!
//! One connection and one confirm channel per target, shared by its lanes, with
//! a bounded window of unconfirmed messages (`max_unconfirmed`). The connection
//! is opened from fields (host, port, vhost, user, password; never a URI string
//! that could end up in a log), over rustls with the target's CA (pins
//! accepted, see [`crate::net::verify`]) for `amqps://`, in clear only for an explicit
//! `amqp://`; with a heartbeat. At connect the exchange is declared passively:
//! a missing exchange, a refused login or vhost is an error that says what to
//! fix, retried with the capped back-off of [`super::retry`] (its own reconnect
//! loop: lanes that fail meanwhile get the last error without a new attempt).
//! Nothing is ever dead-lettered for these: the batches wait in the spool.
//!
//! `connection.blocked` (a RabbitMQ memory or disk alarm): no new message is
//! published on the connection until it is unblocked; attempts fail as
//! "blocked" and are retried, so batches wait in the spool and, at its cap,
//! intake pauses (backpressure, as during an HTTPS outage). Nothing is dropped.
//!
//! Client crate: lapin rather than amqprs. lapin resolves each publish to an
//! ack, a nack, or an ack carrying the returned message, so a batch's confirms
//! are plain futures; it advertises and reports `connection.blocked`; and it
//! takes a caller-made TLS stream, so the rustls configuration (and pinning)
//! is the same as the HTTPS transport's. amqprs reports confirms only through
//! callbacks with delivery tags to track by hand and does not advertise
//! `connection.blocked`. lapin's automatic recovery is not used: reconnecting
//! is this module's, with the broker's back-off.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::tcp::{AsyncTcpStream, RustlsConnector};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo};
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, ConnectionStatus, Event,
    ExchangeKind,
};
use tokio::sync::{oneshot, Mutex, Semaphore};
use tokio::time::Instant;
use tracing::{error, info, warn};

use super::encode;
use super::retry;
use crate::config::{AmqpTarget, TargetConfig};
use crate::metrics::unix_ms;
use crate::spool::Record;

/// The configuration of a registered AMQP target (`/v1/rmq/objects`, or
/// `/v1/targets` with an `amqps://` URL): its URL, exchange, and RabbitMQ
/// username and password. The error names the field.
pub fn registered(name: &str, reg: &crate::store::Registration) -> Result<TargetConfig, String> {
    let password = reg
        .basic_password
        .clone()
        .unwrap_or_else(|| crate::config::Secret::new(""));
    crate::config::registered_amqp_target(
        name,
        &reg.url,
        crate::config::RegisteredAmqp {
            exchange: reg.rmq_exchange.as_deref().unwrap_or_default(),
            username: reg.basic_username.as_deref().unwrap_or_default(),
            password: &password,
        },
    )
}

/// Why a batch was not delivered. Every variant but [`AmqpError::Damaged`] is
/// retried.
#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    #[error("cannot resolve {host}: {reason}")]
    Resolve { host: String, reason: String },
    #[error("cannot connect to RabbitMQ at {addr}: {reason}")]
    Connect { addr: String, reason: String },
    /// The TLS handshake failed (the certificate, its name, its CA).
    #[error("cannot connect to RabbitMQ at {addr}: {reason}")]
    Tls { addr: String, reason: String },
    #[error("connecting to RabbitMQ at {addr} timed out after {secs} s (TCP, TLS and AMQP login): check the address, port and firewall (5671 outbound)")]
    ConnectTimeout { addr: String, secs: u64 },
    #[error("RabbitMQ at {addr} refused the login of user {user:?}: check the username and password (the RMQ object's, or username and password_file)")]
    Login { addr: String, user: String },
    #[error("user {user:?} may not use vhost {vhost:?} on RabbitMQ at {addr}: check the vhost, or grant the user access to it (rabbitmqctl set_permissions -p VHOST USER ...)")]
    Vhost {
        addr: String,
        user: String,
        vhost: String,
    },
    #[error("exchange {exchange:?} does not exist in vhost {vhost:?} on RabbitMQ at {addr}: create it there, or fix the target's exchange")]
    NoExchange {
        addr: String,
        exchange: String,
        vhost: String,
    },
    #[error("user {user:?} may not publish to exchange {exchange:?} in vhost {vhost:?}: grant it write permission there")]
    Denied {
        user: String,
        exchange: String,
        vhost: String,
    },
    #[error("RabbitMQ at {addr}: {reason}")]
    Protocol { addr: String, reason: String },
    #[error("RabbitMQ has blocked publishing on this connection ({reason}): a memory or disk alarm on its side; batches wait in the spool until it lifts")]
    Blocked { reason: String },
    #[error("RabbitMQ refused message {message_id} (nack): an internal error on its side")]
    Nack { message_id: String },
    #[error("message {message_id} was unroutable and returned ({code} {text}): no queue is bound to exchange {exchange:?} with routing key {routing_key:?}; bind one, or fix the target's routing_key")]
    Returned {
        message_id: String,
        exchange: String,
        routing_key: String,
        code: u16,
        text: String,
    },
    #[error("the connection to RabbitMQ was lost: {0}")]
    Lost(String),
    /// A connect attempt failed a moment ago: its error, until the back-off passes.
    /// `tls`: the last attempt failed at the TLS handshake.
    #[error("{last} (connecting again after the back-off)")]
    Waiting { last: String, tls: bool },
    #[error("the batch cannot be published: {0}")]
    Damaged(#[from] encode::EncodeError),
}

impl AmqpError {
    /// No retry can help (a damaged record).
    pub fn is_permanent(&self) -> bool {
        matches!(self, AmqpError::Damaged(_))
    }

    /// The TLS handshake failed (this attempt, or the last one while
    /// waiting for the back-off).
    pub fn is_tls(&self) -> bool {
        matches!(
            self,
            AmqpError::Tls { .. } | AmqpError::Waiting { tls: true, .. }
        )
    }

    /// Raised before the connection was usable.
    pub fn is_connect(&self) -> bool {
        matches!(
            self,
            AmqpError::Resolve { .. }
                | AmqpError::Connect { .. }
                | AmqpError::Tls { .. }
                | AmqpError::ConnectTimeout { .. }
                | AmqpError::Login { .. }
                | AmqpError::Vhost { .. }
                | AmqpError::NoExchange { .. }
                | AmqpError::Denied { .. }
                | AmqpError::Lost(_)
                | AmqpError::Waiting { .. }
        )
    }
}

/// An open connection, its confirm channel, and its events task.
struct Live {
    connection: Connection,
    channel: Channel,
    /// Dropped with the connection: stops its events task.
    _events: oneshot::Sender<()>,
}

impl Live {
    fn usable(&self) -> bool {
        self.connection.status().connected() && self.channel.status().connected()
    }
}

#[derive(Default)]
struct Link {
    live: Option<Live>,
    /// Connect attempts failed in a row.
    failures: u32,
    /// No new attempt before this; the last error until then, and whether it
    /// was the TLS handshake.
    retry_at: Option<(Instant, String, bool)>,
}

/// An AMQP target's publisher: its connection and settings.
pub struct Publisher {
    target: String,
    host: String,
    port: u16,
    /// `host:port`, for messages.
    addr: String,
    tls: Option<Arc<RustlsConnector>>,
    s: AmqpTarget,
    connect_timeout: Duration,
    retry_initial: Duration,
    retry_max: Duration,
    window: Arc<Semaphore>,
    link: Mutex<Link>,
    blocked: Arc<AtomicBool>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("target", &self.target)
            .field("addr", &self.addr)
            .field("vhost", &self.s.vhost)
            .field("exchange", &self.s.exchange)
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// A publisher for `cfg` (an AMQP target), with `tls` the client
    /// configuration for `amqps://` (None for `amqp://`), as
    /// [`super::client::tls_config`] makes it for an AMQP target (no ALPN: AMQP
    /// has no name there). Connects on first use.
    pub fn new(cfg: &TargetConfig, tls: Option<rustls::ClientConfig>) -> Publisher {
        let s = cfg.amqp.clone().expect("an AMQP target");
        let tls = tls.map(|c| Arc::new(RustlsConnector::from(c)));
        let addr = if cfg.host.contains(':') {
            format!("[{}]:{}", cfg.host, cfg.port)
        } else {
            format!("{}:{}", cfg.host, cfg.port)
        };
        Publisher {
            target: cfg.name.clone(),
            host: cfg.host.clone(),
            port: cfg.port,
            addr,
            tls,
            window: Arc::new(Semaphore::new(s.max_unconfirmed)),
            s,
            connect_timeout: cfg.connect_timeout,
            retry_initial: cfg.retry_initial,
            retry_max: cfg.retry_max,
            link: Mutex::new(Link::default()),
            blocked: Arc::new(AtomicBool::new(false)),
        }
    }

    /// RabbitMQ has blocked the connection (memory or disk alarm).
    pub fn blocked(&self) -> bool {
        self.blocked.load(Ordering::Relaxed)
    }

    /// Publish `record`'s messages and wait for every confirm. Ok only when all
    /// were acked and none returned.
    pub async fn publish(&self, record: &Record) -> Result<(), AmqpError> {
        let (envelope, messages) = encode::messages(record, &self.s)?;
        let (connection, channel) = self.channel().await?;
        let timestamp = (unix_ms() / 1000) as u64;
        let mut pending = FuturesUnordered::new();
        for m in messages {
            // A message enters the window only when the previous ones of this
            // lane are confirmed or other lanes' confirms free room.
            let permit = loop {
                tokio::select! {
                    biased;
                    Some(done) = pending.next() => done?,
                    p = self.window.clone().acquire_owned() => break p.expect("the window is never closed"),
                }
            };
            if connection.blocked() || self.blocked() {
                return Err(AmqpError::Blocked {
                    reason: "memory or disk alarm".to_string(),
                });
            }
            let mut headers = FieldTable::default();
            headers.insert(
                "cluster".into(),
                AMQPValue::LongString(LongString::from(envelope.cluster.as_str())),
            );
            headers.insert(
                "filer_id".into(),
                envelope
                    .filer_id
                    .map_or(AMQPValue::Void, |f| AMQPValue::LongLongInt(f as i64)),
            );
            headers.insert("events".into(), AMQPValue::LongLongInt(i64::from(m.events)));
            let properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type(envelope.content_type.into())
                .with_message_id(ShortString::from(m.message_id.as_str()))
                .with_timestamp(timestamp)
                .with_app_id("qbroker".into())
                .with_type(ShortString::from(envelope.schema.as_str()))
                .with_headers(headers);
            let routing_key = ShortString::try_new(m.routing_key.clone())
                .map_err(|_| encode::EncodeError::RoutingKey(m.routing_key.clone()))?;
            let confirm = channel
                .basic_publish(
                    ShortString::from(self.s.exchange.as_str()),
                    routing_key,
                    BasicPublishOptions {
                        mandatory: true,
                        immediate: false,
                    },
                    &m.body,
                    properties,
                )
                .await
                .map_err(|e| self.failed(&e))?;
            let (message_id, routing_key) = (m.message_id, m.routing_key);
            let exchange = self.s.exchange.clone();
            let failed = |e: lapin::Error| self.failed(&e);
            pending.push(async move {
                let confirmation = confirm.await;
                drop(permit);
                let confirmation = confirmation.map_err(failed)?;
                if confirmation.is_nack() {
                    return Err(AmqpError::Nack { message_id });
                }
                if let Some(returned) = confirmation.take_message() {
                    return Err(AmqpError::Returned {
                        message_id,
                        exchange,
                        routing_key,
                        code: returned.reply_code,
                        text: returned.reply_text.to_string(),
                    });
                }
                Ok(())
            });
        }
        while let Some(done) = pending.next().await {
            done?;
        }
        Ok(())
    }

    /// A lapin error on an open connection, in words.
    fn failed(&self, e: &lapin::Error) -> AmqpError {
        match classify(self, e) {
            Some(err) => err,
            None => AmqpError::Lost(plain(e)),
        }
    }

    /// The open confirm channel, connecting first when there is none.
    async fn channel(&self) -> Result<(ConnectionStatus, Channel), AmqpError> {
        let mut link = self.link.lock().await;
        if let Some(live) = &link.live {
            if live.usable() {
                return Ok((live.connection.status().clone(), live.channel.clone()));
            }
            warn!(target = %self.target, addr = %self.addr, "rabbitmq connection or channel closed; reconnecting");
        }
        if let Some(old) = link.live.take() {
            close_later(old);
        }
        if let Some((at, last, tls)) = &link.retry_at {
            if Instant::now() < *at {
                return Err(AmqpError::Waiting {
                    last: last.clone(),
                    tls: *tls,
                });
            }
        }
        self.blocked.store(false, Ordering::Relaxed);
        match tokio::time::timeout(self.connect_timeout, self.open()).await {
            Ok(Ok(live)) => {
                info!(target = %self.target, addr = %self.addr, vhost = %self.s.vhost, exchange = %self.s.exchange, "connected to rabbitmq");
                link.failures = 0;
                link.retry_at = None;
                let pair = (live.connection.status().clone(), live.channel.clone());
                link.live = Some(live);
                Ok(pair)
            }
            outcome => {
                let err = match outcome {
                    Ok(Err(e)) => e,
                    _ => AmqpError::ConnectTimeout {
                        addr: self.addr.clone(),
                        secs: self.connect_timeout.as_secs(),
                    },
                };
                link.failures = link.failures.saturating_add(1);
                let wait = retry::backoff(link.failures, self.retry_initial, self.retry_max);
                link.retry_at = Some((Instant::now() + wait, err.to_string(), err.is_tls()));
                error!(
                    target = %self.target,
                    attempt = link.failures,
                    retry_in_ms = wait.as_millis() as u64,
                    error = %err,
                    "cannot publish to rabbitmq"
                );
                Err(err)
            }
        }
    }

    async fn open(&self) -> Result<Live, AmqpError> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|e| AmqpError::Resolve {
                host: self.host.clone(),
                reason: e.to_string(),
            })?
            .collect();
        let uri = AMQPUri {
            scheme: if self.tls.is_some() {
                AMQPScheme::AMQPS
            } else {
                AMQPScheme::AMQP
            },
            authority: AMQPAuthority {
                userinfo: AMQPUserInfo {
                    username: self.s.username.clone(),
                    password: self.s.password.expose().to_string(),
                },
                host: self.host.clone(),
                port: self.port,
            },
            vhost: self.s.vhost.clone(),
            query: AMQPQueryString {
                heartbeat: Some(self.s.heartbeat_secs),
                connection_timeout: Some(self.connect_timeout.as_millis() as u64),
                ..AMQPQueryString::default()
            },
        };
        let tls = self.tls.clone();
        let server_name = self.host.clone();
        let addr_words = self.addr.clone();
        let runtime = lapin::runtime::default_runtime().map_err(|e| AmqpError::Connect {
            addr: self.addr.clone(),
            reason: plain(&e),
        })?;
        let properties = ConnectionProperties::default()
            .with_connection_name(format!("qbroker {}", self.target).into());
        let connection = Connection::connector(
            uri,
            runtime,
            async move |_uri, runtime| {
                let stream = AsyncTcpStream::connect(&runtime, addrs.clone())
                    .await
                    .map_err(|e| {
                        std::io::Error::new(e.kind(), format!("tcp connect to {addr_words}: {e}"))
                    })?;
                Ok(match &tls {
                    Some(connector) => {
                        stream
                            .into_rustls(connector, &server_name)
                            .await
                            .map_err(|e| {
                                std::io::Error::other(TlsHandshake(format!(
                                    "tls handshake with {addr_words}: {}",
                                    crate::net::describe(&e)
                                )))
                            })?
                    }
                    None => stream,
                })
            },
            properties,
        )
        .await
        .map_err(|e| self.at_connect(&e))?;
        let events = connection.events_listener();
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| self.at_connect(&e))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| self.at_connect(&e))?;
        if !self.s.exchange.is_empty() {
            // Passive: the exchange must exist; it is Varonis's to create.
            channel
                .exchange_declare(
                    ShortString::from(self.s.exchange.as_str()),
                    ExchangeKind::Direct,
                    ExchangeDeclareOptions {
                        passive: true,
                        ..ExchangeDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map_err(|e| self.at_connect(&e))?;
        }
        let (stop, stopped) = oneshot::channel();
        tokio::spawn(watch_events(
            self.target.clone(),
            events,
            self.blocked.clone(),
            stopped,
        ));
        Ok(Live {
            connection,
            channel,
            _events: stop,
        })
    }

    /// A lapin error while connecting, in words.
    fn at_connect(&self, e: &lapin::Error) -> AmqpError {
        if let lapin::ErrorKind::IOError(io) = e.kind() {
            if let Some(tls) = io.get_ref().and_then(|i| i.downcast_ref::<TlsHandshake>()) {
                return AmqpError::Tls {
                    addr: self.addr.clone(),
                    reason: tls.0.clone(),
                };
            }
        }
        classify(self, e).unwrap_or_else(|| AmqpError::Connect {
            addr: self.addr.clone(),
            reason: plain(e),
        })
    }
}

/// A failed TLS handshake, inside the `io::Error` the connector returns, so
/// that it can be told from a TCP failure once lapin hands it back.
#[derive(Debug)]
struct TlsHandshake(String);

impl std::fmt::Display for TlsHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsHandshake {}

/// One `qbroker doctor` row's result.
#[derive(Debug)]
pub enum Probe {
    Pass(String),
    Warn(String),
    Fail(String),
    Skip(String),
}

/// `qbroker doctor`'s checks of an AMQP target: `amqp` (login, vhost, passive
/// exchange declare) and `publish` (with `publish` = the cluster for the
/// routing key: one `mandatory` message, an empty batch with `message_id`
/// `doctor-<uuid>`, that tells whether a queue is bound to receive).
pub async fn probe(
    cfg: &TargetConfig,
    tls: Option<rustls::ClientConfig>,
    publish: Option<String>,
    timeout: Duration,
) -> Vec<(&'static str, Probe)> {
    let p = Publisher::new(cfg, tls);
    let live = match tokio::time::timeout(timeout, p.open()).await {
        Ok(Ok(live)) => live,
        Ok(Err(e)) => {
            return vec![
                ("amqp", Probe::Fail(e.to_string())),
                ("publish", Probe::Skip("needs amqp".to_string())),
            ]
        }
        Err(_) => {
            return vec![
                ("amqp", Probe::Fail(format!("no login within {timeout:?}"))),
                ("publish", Probe::Skip("needs amqp".to_string())),
            ]
        }
    };
    let mut out = vec![(
        "amqp",
        Probe::Pass(format!(
            "logged in as {:?}, vhost {:?}, exchange {:?} exists",
            p.s.username, p.s.vhost, p.s.exchange
        )),
    )];
    let Some(cluster) = publish else {
        out.push(("publish", Probe::Skip("--no-post".to_string())));
        return out;
    };
    let key = encode::routing_key(&p.s.routing_key, &cluster, None, None);
    let id = format!("doctor-{}", uuid::Uuid::now_v7());
    let body = serde_json::json!({
        "schema": crate::batch::SCHEMA, "cluster": cluster, "filer_id": null,
        "batch_id": id, "events": [],
    })
    .to_string();
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(encode::JSON.into())
        .with_message_id(ShortString::from(id.as_str()))
        .with_app_id("qbroker".into())
        .with_type(crate::batch::SCHEMA.into());
    let sent = async {
        live.channel
            .basic_publish(
                ShortString::from(p.s.exchange.as_str()),
                ShortString::from(key.as_str()),
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                body.as_bytes(),
                properties,
            )
            .await?
            .await
    };
    let result = match tokio::time::timeout(timeout, sent).await {
        Err(_) => Probe::Fail(format!("no confirm within {timeout:?}")),
        Ok(Err(e)) => Probe::Fail(p.failed(&e).to_string()),
        Ok(Ok(c)) if c.is_nack() => Probe::Fail("RabbitMQ refused the test message (nack)".to_string()),
        Ok(Ok(c)) => match c.take_message() {
            Some(_) => Probe::Warn(format!(
                "unroutable: no queue is bound to exchange {:?} for routing key {key:?}: batches would wait in the spool; bind one, or fix routing_key",
                p.s.exchange
            )),
            None => Probe::Pass(format!(
                "an empty test batch ({id}) was confirmed and routed with routing key {key:?}"
            )),
        },
    };
    out.push(("publish", result));
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        live.connection.close(200, "doctor done".into()),
    )
    .await;
    out
}

/// The AMQP errors that have a remedy to name.
fn classify(p: &Publisher, e: &lapin::Error) -> Option<AmqpError> {
    let lapin::ErrorKind::ProtocolError(amqp) = e.kind() else {
        return None;
    };
    let text = amqp.get_message().to_string();
    Some(match amqp.kind() {
        AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) if text.contains("Login was refused") => {
            AmqpError::Login {
                addr: p.addr.clone(),
                user: p.s.username.clone(),
            }
        }
        AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) if text.contains("exchange") => {
            AmqpError::Denied {
                user: p.s.username.clone(),
                exchange: p.s.exchange.clone(),
                vhost: p.s.vhost.clone(),
            }
        }
        AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) => AmqpError::Login {
            addr: p.addr.clone(),
            user: p.s.username.clone(),
        },
        AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED) => AmqpError::Vhost {
            addr: p.addr.clone(),
            user: p.s.username.clone(),
            vhost: p.s.vhost.clone(),
        },
        AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND) if text.contains("exchange") => {
            AmqpError::NoExchange {
                addr: p.addr.clone(),
                exchange: p.s.exchange.clone(),
                vhost: p.s.vhost.clone(),
            }
        }
        _ => AmqpError::Protocol {
            addr: p.addr.clone(),
            reason: text,
        },
    })
}

/// A lapin error without Rust debug syntax where possible.
fn plain(e: &lapin::Error) -> String {
    match e.kind() {
        lapin::ErrorKind::IOError(io) => io.to_string(),
        lapin::ErrorKind::ProtocolError(amqp) => amqp.get_message().to_string(),
        lapin::ErrorKind::MissingHeartbeatError => {
            "no heartbeat from RabbitMQ in time: the network or the server stalled".to_string()
        }
        lapin::ErrorKind::InvalidConnectionState(_) | lapin::ErrorKind::InvalidChannelState(..) => {
            "the connection or channel was closed".to_string()
        }
        _ => e.to_string(),
    }
}

/// Close a connection that is no longer used without waiting for it.
fn close_later(old: Live) {
    tokio::spawn(async move {
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            old.connection.close(200, "reconnecting".into()),
        )
        .await;
    });
}

/// Follow a connection's blocked and unblocked notices until it is dropped.
async fn watch_events(
    target: String,
    events: impl futures_util::Stream<Item = Event> + Send + 'static,
    blocked: Arc<AtomicBool>,
    mut stopped: oneshot::Receiver<()>,
) {
    let mut events = std::pin::pin!(events);
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            event = events.next() => match event {
                Some(Event::ConnectionBlocked(reason)) => {
                    blocked.store(true, Ordering::Relaxed);
                    warn!(target = %target, reason = %reason, "rabbitmq blocked publishing (memory or disk alarm): batches wait in the spool");
                }
                Some(Event::ConnectionUnblocked) => {
                    blocked.store(false, Ordering::Relaxed);
                    info!(target = %target, "rabbitmq unblocked publishing");
                }
                Some(_) => {}
                None => break,
            },
        }
    }
    blocked.store(false, Ordering::Relaxed);
}
