//! config: the TOML file, the command-line overrides, and their validation.
//!
//! The file is deserialised into `Raw*` structs that mirror it one to one (unknown
//! fields are rejected, every field has a doc comment and its unit in its name),
//! then [`RawConfig::validate`] turns it into the typed [`Config`] the broker runs
//! with, failing at start with an error that names the field.
//!
//! Owns: the file's sections and their validation (the spool's [`Fsync`]
//! included). Names only [`crate::parse`] (the filter): every stage reads its
//! section from here, and config imports no stage.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::parse;

/// A configuration that could not be read or is not valid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

// ---------------------------------------------------------------------------
// The file, as written.

/// The configuration file. Every section is optional.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Address of the syslog TCP listener (`HOST:PORT`). Default `0.0.0.0:514`.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Parse worker threads, like rsyslog's `queue.workerThreads`. Default: the CPU count.
    pub workers: Option<usize>,
    /// Threads that run the per-cluster supervisors and their socket readers.
    /// Default: a quarter of the CPUs, at least 1 and at most 4.
    pub io_threads: Option<usize>,
    /// Address of the plain-HTTP metrics endpoint (`/metrics`, `/healthz`). Off when unset.
    pub metrics_listen: Option<String>,
    /// Directory for the spool and the dead-letter files. Default `/var/lib/qbroker`.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Name of the target that clusters without a `[[clusters]]` entry (or without a
    /// `target` in it) deliver to. Default: the only target, when there is exactly one.
    pub default_target: Option<String>,
    /// Ceiling on the broker's memory, in bytes. When set, the budgets that bound
    /// memory (queue, connections and their buffers, open batches, egress) must
    /// fit under it, or the configuration is refused at start with the budget to
    /// lower. Default: unset (no check). See `qbroker check-config`.
    pub max_memory_bytes: Option<u64>,
    #[serde(default)]
    pub ingest: RawIngest,
    /// TLS syslog input (RFC 5425), for sites that front Qumulo with a TLS relay.
    #[serde(default)]
    pub syslog_tls: RawSyslogTls,
    #[serde(default)]
    pub queue: RawQueue,
    #[serde(default)]
    pub filter: RawFilter,
    #[serde(default)]
    pub batch: RawBatch,
    #[serde(default)]
    pub spool: RawSpool,
    #[serde(default)]
    pub dead_letter: RawDeadLetter,
    #[serde(default)]
    pub shutdown: RawShutdown,
    #[serde(default)]
    pub enrich: RawEnrich,
    /// The HTTPS control plane: targets registered at run time, health, stats.
    #[serde(default)]
    pub api: RawApi,
    /// Where registered targets are kept.
    #[serde(default)]
    pub store: RawStore,
    /// Where events go: one entry per Varonis endpoint.
    #[serde(default)]
    pub targets: Vec<RawTarget>,
    /// Known clusters: how to recognise them and where their events go.
    #[serde(default)]
    pub clusters: Vec<RawCluster>,
}

/// `[ingest]`: the syslog TCP listener and its connections.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawIngest {
    /// Largest frame accepted, in bytes; a larger one is counted and skipped. Default 65536.
    pub max_frame_bytes: usize,
    /// Connections held at once; further ones are closed at once and counted. Default 4096.
    pub max_connections: usize,
    /// A connection that sends nothing for this long is closed (the node reconnects).
    /// 0 disables. Default 3600.
    pub idle_timeout_secs: u64,
    /// When not empty, only sources inside these CIDRs (or addresses) may connect;
    /// others are closed at once and counted.
    pub allow_sources: Vec<String>,
    /// Bytes read from a socket at a time. Default 65536.
    pub read_buffer_bytes: usize,
    /// How long a new connection may take to send its first complete frame, which
    /// tells its cluster. Default 60.
    pub first_frame_timeout_secs: u64,
    /// Clusters known only by their HOSTNAME (not in `[[clusters]]`, not
    /// registered) held at once; a connection of a further one is closed and
    /// counted unless an idle one can be forgotten to make room. Configured and
    /// registered clusters never count and are never refused. Default 1000.
    pub max_clusters: usize,
    /// A cluster known only by its HOSTNAME with no connection, nothing in the
    /// queue and nothing in an open batch for this long is forgotten: its
    /// supervisor, batcher and metric series go (its spooled batches stay and
    /// are delivered). If it connects again it starts afresh (`seq` from 0).
    /// Default 600.
    pub forget_idle_cluster_secs: u64,
    /// Connections held at once from one source address (IPv6: one /64); further
    /// ones are closed at once and counted. A Qumulo node holds one; a relay one
    /// per node it forwards. Default 128.
    pub max_connections_per_source: usize,
    /// A frame, once its first byte arrived, must be complete within this time, or
    /// the connection is closed and counted (a sender trickling bytes, slowloris).
    /// Time the broker itself spends with reading paused (full queue) does not
    /// count. Default 30.
    pub frame_timeout_secs: u64,
    /// Oversize frames (over `max_frame_bytes`) are skipped while no longer than
    /// this; a longer one, or an octet count declaring more, is broken framing:
    /// the connection is closed and counted. Default 1048576.
    pub max_oversize_frame_bytes: usize,
    /// A connection is closed (and counted) when its bad frames (oversize, or not
    /// starting like a syslog header) outnumber its good ones by this many: each
    /// bad frame adds one, each good one takes one off. Keeps a Qumulo stream with
    /// the odd oversize frame; closes garbage within a few dozen frames. 0 never
    /// closes. Default 16.
    pub max_bad_frames: u32,
    /// Node names (first-frame HOSTNAMEs) with their own metrics per cluster; the
    /// connections of further nodes are counted under `node="~other"`. Default 256.
    pub max_nodes_per_cluster: usize,
}

impl Default for RawIngest {
    fn default() -> Self {
        RawIngest {
            max_frame_bytes: 64 * 1024,
            max_connections: 4096,
            idle_timeout_secs: 3600,
            allow_sources: Vec::new(),
            read_buffer_bytes: 64 * 1024,
            first_frame_timeout_secs: 60,
            max_clusters: 1000,
            forget_idle_cluster_secs: 600,
            max_connections_per_source: 128,
            frame_timeout_secs: 30,
            max_oversize_frame_bytes: 1024 * 1024,
            max_bad_frames: 16,
            max_nodes_per_cluster: 256,
        }
    }
}

/// `[syslog_tls]`: the TLS syslog listener (RFC 5425). Off unless `listen` is set.
/// Connections are told their cluster and treated as on the plain listener
/// (allowlist, connection limits, timeouts, frame policy).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSyslogTls {
    /// Address of the TLS listener (`HOST:PORT`; the RFC 5425 port is 6514). Off when unset.
    pub listen: Option<String>,
    /// PEM certificate chain the broker presents.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`. Should be readable by the broker's user only.
    pub key_file: Option<PathBuf>,
    /// PEM CA certificate(s) that client certificates must chain to.
    pub client_ca_file: Option<PathBuf>,
    /// Refuse clients without a valid certificate of `client_ca_file`. Default true;
    /// false (no client authentication) must be set explicitly.
    pub require_client_cert: bool,
    /// A TLS handshake must finish within this time. Default 10.
    pub handshake_timeout_secs: u64,
}

impl Default for RawSyslogTls {
    fn default() -> Self {
        RawSyslogTls {
            listen: None,
            cert_file: None,
            key_file: None,
            client_ca_file: None,
            require_client_cert: true,
            handshake_timeout_secs: 10,
        }
    }
}

/// `[queue]`: the work queue between the supervisors and the parse pool. When it
/// is full the supervisors stop reading their sockets (TCP pushes back to the
/// nodes); nothing is dropped.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawQueue {
    /// Capacity in messages (frames), like rsyslog's `queue.size`. Default 100000.
    pub size: usize,
    /// Capacity in bytes of frames held. Default 268435456 (256 MiB).
    pub max_bytes: usize,
    /// Frames handed to the pool at a time, at most. Default 256.
    pub chunk_max_frames: usize,
    /// Bytes handed to the pool at a time, at most (a single frame may exceed it). Default 262144.
    pub chunk_max_bytes: usize,
}

impl Default for RawQueue {
    fn default() -> Self {
        RawQueue {
            size: 100_000,
            max_bytes: 256 * 1024 * 1024,
            chunk_max_frames: 256,
            chunk_max_bytes: 256 * 1024,
        }
    }
}

/// `[filter]`: which audit records become events.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawFilter {
    /// Qumulo operations to keep. Default: the reference broker's set.
    pub operations: Vec<String>,
    /// Protocols to keep (`smb2`, `nfs3`, ...). Empty keeps all. The reference kept only `smb2`.
    pub protocols: Vec<String>,
    /// Statuses to keep (`ok`, ...). Empty keeps all.
    pub statuses: Vec<String>,
    /// Keep any operation whose status is `fs_access_denied_error`. Default true.
    pub access_denied: bool,
    /// Accepted syslog APP-NAME prefixes. Empty accepts all. Default `["qumulo"]`.
    pub app_names: Vec<String>,
}

impl Default for RawFilter {
    fn default() -> Self {
        RawFilter {
            operations: parse::REFERENCE_OPERATIONS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            protocols: Vec::new(),
            statuses: Vec::new(),
            access_denied: true,
            app_names: vec!["qumulo".to_string()],
        }
    }
}

/// `[batch]`: when an open batch is sealed. Whichever limit comes first.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawBatch {
    /// Events per batch, at most. Default 1000.
    pub max_events: usize,
    /// Bytes of body per batch, at most (a single event may exceed it). Default 1048576.
    pub max_bytes: usize,
    /// Age of a batch's first event at which it is sealed, in milliseconds. Default 200.
    pub max_age_ms: u64,
    /// Age at which a batch is sealed early when its target has a request slot
    /// free (fewer unacknowledged batches than `in_flight`), in milliseconds:
    /// batches fill up while the target is busy and leave at once while it is
    /// not, which keeps latency low below full load. 0 disables. Default 20.
    pub idle_seal_ms: u64,
    /// Events a batch must hold to be sealed early (`idle_seal_ms`); a batch
    /// with fewer waits for `max_events`, `max_bytes` or `max_age_ms`. Bounds
    /// the request rate at light load: each cluster then sends at most one
    /// request per `max_age_ms` (5 per second with the defaults), where with 1
    /// it sent one per event. At most `max_events`. Default 100 (or
    /// `max_events` when that is smaller).
    pub idle_seal_min_events: Option<usize>,
}

/// `batch.idle_seal_min_events` when not set (or `max_events` if smaller).
pub const DEFAULT_IDLE_SEAL_MIN_EVENTS: usize = 100;

impl Default for RawBatch {
    fn default() -> Self {
        RawBatch {
            max_events: 1000,
            max_bytes: 1024 * 1024,
            max_age_ms: 200,
            idle_seal_ms: 20,
            idle_seal_min_events: None,
        }
    }
}

/// `[spool]`: the durable log of sealed batches, one per target, under `dir`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSpool {
    /// Directory of the spools. Default `<data_dir>/spool`.
    pub dir: Option<PathBuf>,
    /// Cap on each target's spool, in bytes; at the cap intake pauses. Default 53687091200 (50 GiB).
    pub max_bytes: u64,
    /// Size at which a segment file is sealed, in bytes. Default 67108864 (64 MiB).
    pub segment_bytes: u64,
    /// `always` (fsync before a batch counts as spooled), `interval` (every
    /// `fsync_interval_ms`) or `never` (left to the OS). Default `interval`.
    pub fsync: String,
    /// Interval of the `interval` policy, in milliseconds. Default 100.
    pub fsync_interval_ms: u64,
}

impl Default for RawSpool {
    fn default() -> Self {
        RawSpool {
            dir: None,
            max_bytes: 50 * 1024 * 1024 * 1024,
            segment_bytes: 64 * 1024 * 1024,
            fsync: "interval".to_string(),
            fsync_interval_ms: 100,
        }
    }
}

/// `[dead_letter]`: frames that could not be parsed and batches a target refused
/// for good are kept here for a person to look at.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawDeadLetter {
    /// Directory. Default `<data_dir>/dead-letter`.
    pub dir: Option<PathBuf>,
    /// Size at which the bad-frame file is rotated (one old file kept), in bytes. Default 104857600.
    pub max_file_bytes: u64,
    /// Bytes of refused batches kept under `batches/`, at most. Past it a
    /// target that refuses another batch is paused (the batch stays in its
    /// spool and is retried) rather than anything dropped; `qbroker replay`
    /// or removing files makes room. Default 1073741824.
    pub max_batch_bytes: u64,
}

impl Default for RawDeadLetter {
    fn default() -> Self {
        RawDeadLetter {
            dir: None,
            max_file_bytes: 100 * 1024 * 1024,
            max_batch_bytes: 1 << 30,
        }
    }
}

/// `[shutdown]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawShutdown {
    /// How long egress may keep delivering spooled batches after SIGTERM, in seconds.
    /// What is not delivered stays in the spool for the next start. Default 30.
    pub grace_secs: u64,
}

impl Default for RawShutdown {
    fn default() -> Self {
        RawShutdown { grace_secs: 30 }
    }
}

/// `[[targets]]`: one HTTPS endpoint that receives batches.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    /// Name used by `default_target` and `[[clusters]].target`, and in metrics.
    pub name: String,
    /// URL the batches are POSTed to (`https://host:port/path`).
    pub url: String,
    /// PEM file of the CA certificate(s) to trust for this target. Default: the system roots.
    pub ca_file: Option<PathBuf>,
    /// Bearer token sent as `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// File holding the bearer token (instead of `token`, to keep it out of the config).
    pub token_file: Option<PathBuf>,
    /// PEM certificate chain for client authentication (with `client_key_file`).
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key for client authentication.
    pub client_key_file: Option<PathBuf>,
    /// Requests in flight at once. Default 4.
    #[serde(default = "default_in_flight")]
    pub in_flight: usize,
    /// Compress bodies with gzip (`Content-Encoding: gzip`). Default false.
    #[serde(default)]
    pub gzip: bool,
    /// Timeout of one request, connect to response body, in seconds. Default 30.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// Timeout of TCP connect plus TLS handshake, in seconds. Default 10.
    #[serde(default = "default_connect_timeout_secs")]
    pub connect_timeout_secs: u64,
    /// First retry delay, in milliseconds; doubles per attempt, with jitter. Default 100.
    #[serde(default = "default_retry_initial_ms")]
    pub retry_initial_ms: u64,
    /// Cap of the retry delay, in milliseconds. Default 30000.
    #[serde(default = "default_retry_max_ms")]
    pub retry_max_ms: u64,
    /// Cap on a `Retry-After` the target asks for, in seconds. Default 600.
    #[serde(default = "default_retry_after_max_secs")]
    pub retry_after_max_secs: u64,
    /// AMQP targets (`amqps://host:5671/vhost`): the exchange messages are
    /// published to. Required for AMQP.
    pub exchange: Option<String>,
    /// AMQP: the routing key, a template: `{cluster}`, `{filer_id}`, and `{node}`
    /// (with `message = "event"` only). Default `{cluster}`.
    pub routing_key: Option<String>,
    /// AMQP: the RabbitMQ user qbroker logs in as. Required for AMQP.
    pub username: Option<String>,
    /// AMQP: file holding that user's password (trailing newline ignored).
    pub password_file: Option<PathBuf>,
    /// AMQP: message body encoding, `json` (schema qbroker.varonis.v1) or
    /// `protobuf` (proto/qbroker.proto). Default `json`.
    pub encoding: Option<String>,
    /// AMQP: `batch` (one message per batch) or `event` (one message per event).
    /// Default `batch`.
    pub message: Option<String>,
    /// AMQP: heartbeat interval asked of RabbitMQ, in seconds (0: none). Default 30.
    pub heartbeat_secs: Option<u64>,
    /// AMQP: messages published and not yet confirmed by RabbitMQ, at most, over
    /// all the target's lanes; a lane waits for confirms beyond it. Default 1024.
    pub max_unconfirmed: Option<usize>,
    /// Accept credentials over a link without TLS: a `token` or `token_file`
    /// with an `http://` URL, a RabbitMQ password with an `amqp://` one. They
    /// travel in clear: only for a lab, or a link encrypted by other means.
    /// Default false: such a target is refused, naming the credential.
    #[serde(default)]
    pub plaintext_credentials: bool,
}

/// `[[clusters]]`: a Qumulo cluster known in advance.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    /// The cluster name (the syslog HOSTNAME without its `-<node>` suffix).
    pub name: String,
    /// Source addresses or CIDRs of its nodes. A connection from one of them belongs
    /// to this cluster whatever its HOSTNAME says.
    #[serde(default)]
    pub sources: Vec<String>,
    /// Target of its events. Default: `default_target`.
    pub target: Option<String>,
    /// Varonis filer id written into each batch. Default: none (`null`).
    pub filer_id: Option<u64>,
    /// Base URL of the cluster's REST API (`https://HOST[:PORT]`, port 8000 by
    /// default), used to read ACLs for permission and protection events. Set this
    /// or `api_host`; without either the cluster's metadata changes stay generic
    /// `*.permissions_change` events.
    pub api_url: Option<String>,
    /// Host name or address of the cluster's REST API (port 8000); instead of `api_url`.
    pub api_host: Option<String>,
    /// REST user for `POST /v1/session/login` (with `password` or `password_file`).
    pub username: Option<String>,
    /// Password of `username`. Prefer `password_file`.
    pub password: Option<String>,
    /// File holding the password of `username` (trailing newline ignored).
    pub password_file: Option<PathBuf>,
    /// A long-lived access token (`qq auth_create_access_token`), instead of a login.
    pub access_token: Option<String>,
    /// File holding the access token.
    pub access_token_file: Option<PathBuf>,
    /// PEM file of the CA certificate(s) that signed the cluster's certificate.
    /// Default: the system roots.
    pub ca_file: Option<PathBuf>,
    /// Accept any certificate from the cluster (self-signed clusters without a CA
    /// file). Default false: only for a trusted network.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// `[enrich]`: reading ACLs from the clusters' REST APIs to tell permission and
/// protection changes apart. Applies to clusters whose `[[clusters]]` entry has
/// API credentials; others get generic `*.permissions_change` events.
///
/// The work waits in a queue bounded by `queue_max_events` and `queue_max_bytes`
/// per cluster (metadata changes waiting for the API, and the later events of the
/// same files, which keep their order behind them). When it is full the event is
/// emitted at once as the generic `*.permissions_change`, and counted; the parse
/// pool never waits on the API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawEnrich {
    /// Turn enrichment off for every cluster. Default true.
    pub enabled: bool,
    /// Events held per cluster while their file's ACL is being read, at most. Default 10000.
    pub queue_max_events: usize,
    /// Bytes of events held per cluster, at most. Default 16777216 (16 MiB).
    pub queue_max_bytes: usize,
    /// REST requests in flight per cluster, at most. Default 8.
    pub in_flight: usize,
    /// Last ACL seen, per cluster: how many files are remembered (least recently
    /// used first out). Default 100000.
    pub acl_cache_entries: usize,
    /// File-or-directory of objects seen in creates and attributes, per cluster
    /// (for deletes without a trailing `/`). Default 100000.
    pub type_cache_entries: usize,
    /// Timeout of one REST request, connect included, in milliseconds. Default 5000.
    pub request_timeout_ms: u64,
    /// Timeout of the whole enrichment of one event (login, ACL, attributes), in
    /// milliseconds, counted from when the event was read, so that a file
    /// changed faster than its lookups come back holds none of its events
    /// longer; past it the generic event is emitted. Default 15000.
    pub timeout_ms: u64,
    /// A login token is renewed when it is this old, in seconds (Qumulo's expire
    /// after 10 hours). Default 32400 (9 hours).
    pub token_renew_secs: u64,
    /// How long shutdown waits for enrichments in flight before emitting the
    /// generic events, in milliseconds. Default 5000.
    pub shutdown_wait_ms: u64,
}

impl Default for RawEnrich {
    fn default() -> Self {
        RawEnrich {
            enabled: true,
            queue_max_events: 10_000,
            queue_max_bytes: 16 * 1024 * 1024,
            in_flight: 8,
            acl_cache_entries: 100_000,
            type_cache_entries: 100_000,
            request_timeout_ms: 5_000,
            timeout_ms: 15_000,
            token_renew_secs: 9 * 3600,
            shutdown_wait_ms: 5_000,
        }
    }
}

/// `[api]`: the HTTPS control plane (hyper + rustls). Varonis registers, per
/// cluster, where its events go (`/v1/targets`, and the reference broker's
/// `/v1/rmq/objects`); operators read health, per-cluster stats and metrics.
/// Callers authenticate with Qumulo credentials, which qbroker checks by logging
/// in to the cluster, or with the admin token. Off unless `enabled`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawApi {
    /// Serve the API. Default false.
    pub enabled: bool,
    /// Address of the HTTPS listener (`HOST:PORT`). Default `0.0.0.0:443`.
    pub listen: String,
    /// PEM certificate chain the API presents (with `key_file`). Default: a
    /// self-signed pair generated on first start under `<data_dir>/api/` and
    /// reused after.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`. Should be readable by the broker's user only.
    pub key_file: Option<PathBuf>,
    /// Token of operators (`Authorization: Bearer <token>`): every route, every
    /// cluster. Prefer `admin_token_file`. Off when neither is set.
    pub admin_token: Option<String>,
    /// File holding the admin token (trailing newline ignored).
    pub admin_token_file: Option<PathBuf>,
    /// Largest request body, in bytes; a larger one is answered 413. Default 262144.
    pub max_body_bytes: usize,
    /// A request must arrive and be answered within this time, in seconds (the
    /// TLS handshake and the request head have 10 s of it at most). Default 30.
    pub request_timeout_secs: u64,
    /// Connections held at once; further ones are closed at once. Default 256.
    pub max_connections: usize,
    /// How long a successful Qumulo credential check is remembered, in seconds
    /// (0: check every request). Default 60.
    pub auth_cache_secs: u64,
    /// Failed authentications allowed per source address within
    /// `auth_failures_window_secs`; past it the source is answered 429, without a
    /// login attempt, until the window ends. Default 10.
    pub auth_failures_max: u32,
    /// The window of `auth_failures_max`, in seconds. Default 60.
    pub auth_failures_window_secs: u64,
    /// Hosts the Qumulo credential check may log in to (names, addresses or
    /// CIDRs), besides the clusters whose REST API is known (`[[clusters]]`
    /// `api_url`/`api_host`, or registered). The caller names the cluster; a
    /// cluster outside this list is refused rather than asked, so that nobody can
    /// point the check at a server of their own. Default empty.
    pub qumulo_hosts: Vec<String>,
    /// Port of the REST API of a `qumulo_hosts` cluster when the caller names
    /// none (`cluster = "HOST"`, not `"HOST:PORT"`). Default 8000.
    pub qumulo_port: u16,
    /// PEM CA certificate(s) of the `qumulo_hosts` clusters. Default: the system roots.
    pub qumulo_ca_file: Option<PathBuf>,
    /// Accept any certificate from a `qumulo_hosts` cluster (the reference broker
    /// did). Default false.
    pub qumulo_insecure_skip_verify: bool,
    /// Qumulo credentials see and change only the registration of their own
    /// cluster (the name its `/v1/cluster/settings` answers). The reference let
    /// any cluster's credentials change every cluster's. Default true.
    pub restrict_to_own_cluster: bool,
    /// URL of a target registered through `/v1/rmq/objects`: `{server}`, `{port}`,
    /// `{vhost}` and `{exchange}` are replaced by the object's fields
    /// (percent-encoded). Must start with `https://`. Default
    /// `https://{server}:{port}/events`.
    pub rmq_url_template: String,
    /// How the `username` and `password` of an `/v1/rmq/objects` registration
    /// authenticate to its target: `basic` (HTTP Basic) or `bearer` (the password
    /// as a bearer token). Default `basic`.
    pub rmq_auth: String,
    /// What an `/v1/rmq/objects` registration becomes: `amqp` (publish to the
    /// object's RabbitMQ exchange over amqps://, as the reference broker did) or
    /// `https` (POST to `rmq_url_template`, for a site that fronts Varonis with
    /// an HTTPS receiver). Default `amqp`.
    pub rmq_transport: String,
    /// Body encoding of the AMQP targets `/v1/rmq/objects` registers: `json` or
    /// `protobuf`. Applies to registrations made from then on. Default `json`.
    pub rmq_encoding: String,
    /// `batch` or `event`: what one message of an `/v1/rmq/objects` AMQP target
    /// carries. Applies to registrations made from then on. Default `batch`.
    pub rmq_message: String,
    /// Registered targets at most (each has its spool, egress lanes and, with
    /// REST credentials, an enrichment queue). Default 64.
    pub max_targets: usize,
}

impl Default for RawApi {
    fn default() -> Self {
        RawApi {
            enabled: false,
            listen: "0.0.0.0:443".to_string(),
            cert_file: None,
            key_file: None,
            admin_token: None,
            admin_token_file: None,
            max_body_bytes: 256 * 1024,
            request_timeout_secs: 30,
            max_connections: 256,
            auth_cache_secs: 60,
            auth_failures_max: 10,
            auth_failures_window_secs: 60,
            qumulo_hosts: Vec::new(),
            qumulo_port: 8000,
            qumulo_ca_file: None,
            qumulo_insecure_skip_verify: false,
            restrict_to_own_cluster: true,
            rmq_url_template: "https://{server}:{port}/events".to_string(),
            rmq_auth: "basic".to_string(),
            rmq_transport: "amqp".to_string(),
            rmq_encoding: "json".to_string(),
            rmq_message: "batch".to_string(),
            max_targets: 64,
        }
    }
}

/// `[store]`: the registry of targets registered through the API. An embedded
/// SQLite file by default; MariaDB or MySQL when several brokers share one
/// registry. Used when `[api]` is enabled or `url` is set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawStore {
    /// `sqlite://PATH`, or `mysql://USER:PASSWORD@HOST:PORT/DATABASE` for MariaDB
    /// or MySQL (add `?ssl-mode=verify_identity&ssl-ca=/path/ca.pem` for TLS).
    /// Default: `sqlite://<data_dir>/registry.sqlite3`. Prefer `url_file` when
    /// the URL carries a password.
    pub url: Option<String>,
    /// File holding the URL (trailing newline ignored).
    pub url_file: Option<PathBuf>,
    /// How often the registry is read again for changes made by other brokers
    /// sharing it, in seconds. Changes made through this broker's API apply at once.
    /// Default 10.
    pub poll_secs: u64,
    /// Requests in flight of each registered target, 1 to 256 (`in_flight` of a
    /// `[[targets]]` entry). Default 4; raise it for a distant Varonis.
    pub target_in_flight: usize,
    /// Gzip the batches of registered targets (`gzip` of a `[[targets]]` entry).
    /// Default false.
    pub target_gzip: bool,
}

impl Default for RawStore {
    fn default() -> Self {
        RawStore {
            url: None,
            url_file: None,
            poll_secs: 10,
            target_in_flight: REGISTRY_IN_FLIGHT,
            target_gzip: false,
        }
    }
}

fn default_listen() -> String {
    "0.0.0.0:514".to_string()
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/qbroker")
}
fn default_in_flight() -> usize {
    4
}
fn default_timeout_secs() -> u64 {
    30
}
fn default_connect_timeout_secs() -> u64 {
    10
}
fn default_retry_initial_ms() -> u64 {
    100
}
fn default_retry_max_ms() -> u64 {
    30_000
}
fn default_retry_after_max_secs() -> u64 {
    600
}

impl Default for RawConfig {
    fn default() -> Self {
        // An empty document is a valid configuration of all defaults.
        toml::from_str("").expect("the empty configuration deserialises")
    }
}

/// Command-line values that override the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub target_url: Option<String>,
    pub target_ca: Option<PathBuf>,
    pub target_token: Option<String>,
    pub workers: Option<usize>,
    pub metrics_listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub spool_dir: Option<PathBuf>,
    pub spool_fsync: Option<String>,
}

impl RawConfig {
    /// Read and deserialise a file.
    pub fn load(path: &Path) -> Result<RawConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        RawConfig::parse(&text).map_err(|message| ConfigError::Syntax {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Deserialise a document.
    ///
    /// The error names the place (line and column) and the problem, but never
    /// quotes the document: the line at fault could hold a token.
    pub fn parse(text: &str) -> Result<RawConfig, String> {
        toml::from_str(text).map_err(|err: toml::de::Error| {
            let message = err.message().trim_end();
            match err.span() {
                Some(span) => {
                    let before = &text.as_bytes()[..span.start.min(text.len())];
                    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
                    let column = before.len()
                        - before
                            .iter()
                            .rposition(|&b| b == b'\n')
                            .map_or(0, |i| i + 1)
                        + 1;
                    format!("line {line}, column {column}: {message}")
                }
                None => message.to_string(),
            }
        })
    }

    /// Apply command-line overrides. `--target` sets the URL of the default target,
    /// creating a target named `default` when the file has none.
    pub fn apply(&mut self, o: Overrides) {
        if let Some(v) = o.listen {
            self.listen = v;
        }
        if let Some(v) = o.workers {
            self.workers = Some(v);
        }
        if let Some(v) = o.metrics_listen {
            self.metrics_listen = Some(v);
        }
        if let Some(v) = o.data_dir {
            self.data_dir = v;
        }
        if let Some(v) = o.spool_dir {
            self.spool.dir = Some(v);
        }
        if let Some(v) = o.spool_fsync {
            self.spool.fsync = v;
        }
        if o.target_url.is_none() && o.target_ca.is_none() && o.target_token.is_none() {
            return;
        }
        let index = match self.default_target_index() {
            Some(i) => i,
            None => {
                self.targets.push(RawTarget {
                    name: "default".to_string(),
                    url: String::new(),
                    ca_file: None,
                    token: None,
                    token_file: None,
                    client_cert_file: None,
                    client_key_file: None,
                    in_flight: default_in_flight(),
                    gzip: false,
                    timeout_secs: default_timeout_secs(),
                    connect_timeout_secs: default_connect_timeout_secs(),
                    retry_initial_ms: default_retry_initial_ms(),
                    retry_max_ms: default_retry_max_ms(),
                    retry_after_max_secs: default_retry_after_max_secs(),
                    exchange: None,
                    routing_key: None,
                    username: None,
                    password_file: None,
                    encoding: None,
                    message: None,
                    heartbeat_secs: None,
                    max_unconfirmed: None,
                    plaintext_credentials: false,
                });
                self.default_target = Some("default".to_string());
                self.targets.len() - 1
            }
        };
        let target = &mut self.targets[index];
        if let Some(v) = o.target_url {
            target.url = v;
        }
        if let Some(v) = o.target_ca {
            target.ca_file = Some(v);
        }
        if let Some(v) = o.target_token {
            target.token = Some(v);
            target.token_file = None;
        }
    }

    /// Files holding a credential that users other than the owner may read: the
    /// configuration file itself when a token is written in it, token files,
    /// client keys, the TLS syslog key.
    pub fn exposed_secret_files(&self, file: Option<&Path>) -> Vec<PathBuf> {
        let mut secret: Vec<&Path> = Vec::new();
        if let Some(f) = file {
            if self.targets.iter().any(|t| t.token.is_some())
                || self.api.admin_token.is_some()
                || self.store.url.as_ref().is_some_and(|u| u.contains('@'))
            {
                secret.push(f);
            }
        }
        for t in &self.targets {
            secret.extend(t.token_file.as_deref());
            secret.extend(t.client_key_file.as_deref());
        }
        secret.extend(self.syslog_tls.key_file.as_deref());
        secret.extend(self.api.key_file.as_deref());
        secret.extend(self.api.admin_token_file.as_deref());
        secret.extend(self.store.url_file.as_deref());
        secret
            .into_iter()
            .filter(|p| readable_by_others(p))
            .map(Path::to_path_buf)
            .collect()
    }

    fn default_target_index(&self) -> Option<usize> {
        match &self.default_target {
            Some(name) => self.targets.iter().position(|t| &t.name == name),
            None if self.targets.len() == 1 => Some(0),
            None => None,
        }
    }

    /// Check every field and build the typed configuration.
    pub fn validate(&self) -> Result<Config, ConfigError> {
        let listen = parse_addr("listen", &self.listen)?;
        let cpus = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
        let workers = positive("workers", self.workers.unwrap_or(cpus))?;
        let io_threads = positive(
            "io_threads",
            self.io_threads.unwrap_or((cpus / 4).clamp(1, 4)),
        )?;
        let metrics_listen = self
            .metrics_listen
            .as_deref()
            .map(|v| parse_addr("metrics_listen", v))
            .transpose()?;

        let ingest = &self.ingest;
        if ingest.max_frame_bytes < 256 {
            return Err(invalid("ingest.max_frame_bytes", "must be at least 256"));
        }
        if ingest.max_frame_bytes > 16 * 1024 * 1024 {
            return Err(invalid(
                "ingest.max_frame_bytes",
                "must be at most 16777216",
            ));
        }
        positive("ingest.max_connections", ingest.max_connections)?;
        positive("ingest.max_clusters", ingest.max_clusters)?;
        if ingest.read_buffer_bytes < 4096 {
            return Err(invalid("ingest.read_buffer_bytes", "must be at least 4096"));
        }
        let allow_sources = ingest
            .allow_sources
            .iter()
            .enumerate()
            .map(|(i, s)| parse_net(&format!("ingest.allow_sources[{i}]"), s))
            .collect::<Result<Vec<_>, _>>()?;
        positive(
            "ingest.max_connections_per_source",
            ingest.max_connections_per_source,
        )?;
        positive("ingest.max_nodes_per_cluster", ingest.max_nodes_per_cluster)?;
        if ingest.max_oversize_frame_bytes < ingest.max_frame_bytes {
            return Err(invalid(
                "ingest.max_oversize_frame_bytes",
                "must be at least ingest.max_frame_bytes",
            ));
        }
        let ingest = IngestConfig {
            max_connections_per_source: ingest.max_connections_per_source,
            frame_timeout: Duration::from_secs(positive_u64(
                "ingest.frame_timeout_secs",
                ingest.frame_timeout_secs,
            )?),
            max_oversize_frame_bytes: ingest.max_oversize_frame_bytes,
            max_bad_frames: ingest.max_bad_frames,
            max_nodes_per_cluster: ingest.max_nodes_per_cluster,
            max_frame_bytes: ingest.max_frame_bytes,
            max_connections: ingest.max_connections,
            idle_timeout: (ingest.idle_timeout_secs > 0)
                .then(|| Duration::from_secs(ingest.idle_timeout_secs)),
            allow_sources,
            read_buffer_bytes: ingest.read_buffer_bytes,
            first_frame_timeout: Duration::from_secs(positive_u64(
                "ingest.first_frame_timeout_secs",
                ingest.first_frame_timeout_secs,
            )?),
            max_clusters: ingest.max_clusters,
            forget_idle_cluster: Duration::from_secs(positive_u64(
                "ingest.forget_idle_cluster_secs",
                ingest.forget_idle_cluster_secs,
            )?),
        };

        let syslog_tls = validate_syslog_tls(&self.syslog_tls)?;

        let q = &self.queue;
        positive("queue.size", q.size)?;
        positive("queue.chunk_max_frames", q.chunk_max_frames)?;
        if q.chunk_max_frames > q.size {
            return Err(invalid(
                "queue.chunk_max_frames",
                "must not exceed queue.size",
            ));
        }
        if q.max_bytes < ingest.max_frame_bytes.max(q.chunk_max_bytes) {
            return Err(invalid(
                "queue.max_bytes",
                "must be at least ingest.max_frame_bytes and queue.chunk_max_bytes",
            ));
        }
        positive("queue.chunk_max_bytes", q.chunk_max_bytes)?;
        let queue = QueueConfig {
            size: q.size,
            max_bytes: q.max_bytes,
            chunk_max_frames: q.chunk_max_frames,
            chunk_max_bytes: q.chunk_max_bytes,
        };

        let f = &self.filter;
        let filter = parse::Filter::new(
            &f.operations,
            &f.protocols,
            &f.statuses,
            f.access_denied,
            &f.app_names,
        )
        .map_err(|e| {
            invalid(
                "filter.operations",
                format!("qbroker cannot map operation {:?} to a Varonis event", e.0),
            )
        })?;

        let b = &self.batch;
        positive("batch.max_events", b.max_events)?;
        if b.max_bytes < 4096 || b.max_bytes > 64 * 1024 * 1024 {
            return Err(invalid("batch.max_bytes", "must be 4096 to 67108864"));
        }
        let idle_seal_min_events = match b.idle_seal_min_events {
            None => DEFAULT_IDLE_SEAL_MIN_EVENTS.min(b.max_events),
            Some(n) if n == 0 || n > b.max_events => {
                return Err(invalid(
                    "batch.idle_seal_min_events",
                    "must be 1 to batch.max_events",
                ))
            }
            Some(n) => n,
        };
        let batch = BatchConfig {
            idle_seal_min_events: idle_seal_min_events.min(u32::MAX as usize) as u32,
            max_events: b.max_events,
            max_bytes: b.max_bytes,
            max_age: Duration::from_millis(positive_u64("batch.max_age_ms", b.max_age_ms)?),
            idle_seal: (b.idle_seal_ms > 0 && b.idle_seal_ms < b.max_age_ms)
                .then(|| Duration::from_millis(b.idle_seal_ms)),
        };

        let s = &self.spool;
        let fsync = match s.fsync.as_str() {
            "always" => Fsync::Always,
            "never" => Fsync::Never,
            "interval" => Fsync::Interval(Duration::from_millis(positive_u64(
                "spool.fsync_interval_ms",
                s.fsync_interval_ms,
            )?)),
            other => {
                return Err(invalid(
                    "spool.fsync",
                    format!("{other:?} is not one of always, interval, never"),
                ))
            }
        };
        if s.segment_bytes < 64 * 1024 {
            return Err(invalid("spool.segment_bytes", "must be at least 65536"));
        }
        if s.max_bytes < 2 * s.segment_bytes.max(b.max_bytes as u64) {
            return Err(invalid(
                "spool.max_bytes",
                "must be at least twice spool.segment_bytes and batch.max_bytes",
            ));
        }
        let spool = SpoolConfig {
            dir: s.dir.clone().unwrap_or_else(|| self.data_dir.join("spool")),
            max_bytes: s.max_bytes,
            segment_bytes: s.segment_bytes,
            fsync,
        };
        let dead_letter = DeadLetterConfig {
            dir: self
                .dead_letter
                .dir
                .clone()
                .unwrap_or_else(|| self.data_dir.join("dead-letter")),
            max_file_bytes: self.dead_letter.max_file_bytes.max(4096),
            max_batch_bytes: self.dead_letter.max_batch_bytes,
        };

        let mut targets = Vec::with_capacity(self.targets.len());
        for (i, t) in self.targets.iter().enumerate() {
            let target = validate_target(i, t)?;
            if targets.iter().any(|o: &TargetConfig| o.name == target.name) {
                return Err(invalid(
                    format!("targets[{i}].name"),
                    format!("{:?} is used twice", target.name),
                ));
            }
            targets.push(target);
        }
        let find_target = |field: &str, name: &str| {
            targets
                .iter()
                .position(|t| t.name == name)
                .ok_or_else(|| invalid(field, format!("no target is named {name:?}")))
        };
        let default_target = match &self.default_target {
            Some(name) => Some(find_target("default_target", name)?),
            None if targets.len() == 1 => Some(0),
            None => None,
        };

        let mut clusters: Vec<ClusterConfig> = Vec::with_capacity(self.clusters.len());
        for (i, c) in self.clusters.iter().enumerate() {
            let field = |name: &str| format!("clusters[{i}].{name}");
            if c.name.is_empty() || c.name.len() > 255 {
                return Err(invalid(field("name"), "must be 1 to 255 bytes"));
            }
            if clusters.iter().any(|o| o.name == c.name) {
                return Err(invalid(
                    field("name"),
                    format!("{:?} is used twice", c.name),
                ));
            }
            let sources = c
                .sources
                .iter()
                .enumerate()
                .map(|(j, s)| parse_net(&format!("clusters[{i}].sources[{j}]"), s))
                .collect::<Result<Vec<_>, _>>()?;
            let target = match &c.target {
                Some(name) => find_target(&field("target"), name)?,
                None => default_target.ok_or_else(|| {
                    invalid(field("target"), "not set and there is no default_target")
                })?,
            };
            let api = validate_cluster_api(i, c)?;
            clusters.push(ClusterConfig {
                name: c.name.clone(),
                sources,
                target,
                filer_id: c.filer_id,
                api,
            });
        }
        let api = validate_api(&self.api)?;
        let store = validate_store(&self.store, &self.data_dir, api.is_some())?;
        // With a registry, targets can also come from the API at run time.
        if targets.is_empty() && store.is_none() {
            return Err(invalid(
                "targets",
                "no target configured: add a [[targets]] entry, pass --target URL, or enable [api]",
            ));
        }
        if default_target.is_none() && self.clusters.is_empty() && store.is_none() {
            return Err(invalid(
                "default_target",
                "several targets and no default_target: events of unknown clusters would have nowhere to go",
            ));
        }

        let enrich = validate_enrich(&self.enrich)?;

        let cfg = Config {
            listen,
            workers,
            io_threads,
            metrics_listen,
            data_dir: self.data_dir.clone(),
            max_memory_bytes: self.max_memory_bytes,
            syslog_tls,
            ingest,
            queue,
            filter,
            batch,
            spool,
            dead_letter,
            shutdown_grace: Duration::from_secs(self.shutdown.grace_secs),
            enrich,
            targets,
            default_target,
            clusters,
            api,
            store,
        };
        if let Some(ceiling) = cfg.max_memory_bytes {
            let budget = cfg.memory_budget();
            if budget.total() > ceiling {
                let (field, bytes) = budget.largest();
                return Err(invalid(
                    "max_memory_bytes",
                    format!(
                        "the configured budgets need up to {} bytes, over the ceiling of {ceiling}: \
                         lower {field} (it accounts for {bytes} bytes) or raise the ceiling",
                        budget.total()
                    ),
                ));
            }
        }
        Ok(cfg)
    }
}

fn validate_syslog_tls(t: &RawSyslogTls) -> Result<Option<SyslogTlsConfig>, ConfigError> {
    let Some(listen) = &t.listen else {
        return Ok(None);
    };
    let listen = parse_addr("syslog_tls.listen", listen)?;
    let cert_file = t
        .cert_file
        .clone()
        .ok_or_else(|| invalid("syslog_tls.cert_file", "required with syslog_tls.listen"))?;
    let key_file = t
        .key_file
        .clone()
        .ok_or_else(|| invalid("syslog_tls.key_file", "required with syslog_tls.listen"))?;
    if t.require_client_cert && t.client_ca_file.is_none() {
        return Err(invalid(
            "syslog_tls.client_ca_file",
            "required while syslog_tls.require_client_cert is true (the default)",
        ));
    }
    Ok(Some(SyslogTlsConfig {
        listen,
        cert_file,
        key_file,
        client_ca_file: t.client_ca_file.clone(),
        require_client_cert: t.require_client_cert,
        handshake_timeout: Duration::from_secs(positive_u64(
            "syslog_tls.handshake_timeout_secs",
            t.handshake_timeout_secs,
        )?),
    }))
}

fn validate_target(i: usize, t: &RawTarget) -> Result<TargetConfig, ConfigError> {
    validate_target_with(i, t, None)
}

/// `password`: an AMQP target's password when it does not come from its
/// `password_file` (a registered target's).
fn validate_target_with(
    i: usize,
    t: &RawTarget,
    password: Option<Secret>,
) -> Result<TargetConfig, ConfigError> {
    let field = |name: &str| format!("targets[{i}].{name}");
    if t.name.is_empty()
        || !t
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(invalid(
            field("name"),
            "must be non-empty and use only letters, digits, '-', '_' and '.'",
        ));
    }
    // The URL is not echoed in these errors: it could carry a credential.
    let url: http::Uri = t
        .url
        .parse()
        .map_err(|e| invalid(field("url"), format!("not a URL: {e}")))?;
    let (tls, is_amqp) = match url.scheme_str() {
        Some("https") => (true, false),
        Some("http") => (false, false),
        Some("amqps") => (true, true),
        Some("amqp") => (false, true),
        _ => {
            return Err(invalid(
                field("url"),
                "must start with https:// or amqps:// (or http://, amqp://)",
            ))
        }
    };
    if url.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(invalid(
            field("url"),
            if is_amqp {
                "must not carry credentials (user:password@): use username and password_file"
            } else {
                "must not carry credentials (user:password@): use token_file"
            },
        ));
    }
    let host = url
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| invalid(field("url"), format!("{:?} has no host", t.url)))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = url.port_u16().unwrap_or(match (is_amqp, tls) {
        (true, true) => 5671,
        (true, false) => 5672,
        (false, true) => 443,
        (false, false) => 80,
    });
    let path = url
        .path_and_query()
        .map_or("/".to_string(), |p| p.as_str().to_string());
    if t.token.is_some() && t.token_file.is_some() {
        return Err(invalid(
            field("token_file"),
            "set token or token_file, not both",
        ));
    }
    let token = match (&t.token, &t.token_file) {
        (Some(tok), _) => Some(Secret(tok.clone())),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                invalid(
                    field("token_file"),
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            Some(Secret(text.trim().to_string()))
        }
        (None, None) => None,
    };
    if let Some(tok) = &token {
        if tok.0.is_empty() || tok.0.bytes().any(|b| !(0x21..0x7f).contains(&b)) {
            return Err(invalid(
                field("token"),
                "must be non-empty printable ASCII without spaces",
            ));
        }
    }
    let amqp = if is_amqp {
        if token.is_some() {
            return Err(invalid(
                field("token"),
                "an AMQP target logs in with username and password_file, not a token",
            ));
        }
        if t.gzip {
            return Err(invalid(field("gzip"), "applies to HTTPS targets only"));
        }
        Some(match password {
            Some(p) => validate_amqp_with(&field, t, &url, p)?,
            None => validate_amqp(&field, t, &url)?,
        })
    } else {
        for (name, set) in [
            ("exchange", t.exchange.is_some()),
            ("routing_key", t.routing_key.is_some()),
            ("username", t.username.is_some()),
            ("password_file", t.password_file.is_some()),
            ("encoding", t.encoding.is_some()),
            ("message", t.message.is_some()),
            ("heartbeat_secs", t.heartbeat_secs.is_some()),
            ("max_unconfirmed", t.max_unconfirmed.is_some()),
        ] {
            if set {
                return Err(invalid(
                    field(name),
                    "applies to AMQP targets (amqps:// URL) only",
                ));
            }
        }
        None
    };
    if !tls && !is_amqp && t.client_cert_file.is_some() {
        return Err(invalid(
            field("client_cert_file"),
            "a client certificate needs TLS: use https://",
        ));
    }
    if !tls && token.is_some() && !t.plaintext_credentials {
        return Err(invalid(
            field(if t.token.is_some() { "token" } else { "token_file" }),
            "the token would travel in clear over http://: use https:// (or, for a lab, plaintext_credentials = true)",
        ));
    }
    if !tls && is_amqp && !t.plaintext_credentials {
        return Err(invalid(
            field("password_file"),
            "the RabbitMQ password would travel in clear over amqp://: use amqps:// (or, for a lab, plaintext_credentials = true)",
        ));
    }
    if tls && t.plaintext_credentials {
        return Err(invalid(
            field("plaintext_credentials"),
            "applies to http:// and amqp:// URLs only",
        ));
    }
    if !tls && is_amqp && (t.client_cert_file.is_some() || t.ca_file.is_some()) {
        return Err(invalid(
            field("url"),
            "ca_file and client certificates need TLS: use amqps://",
        ));
    }
    let client_auth = match (&t.client_cert_file, &t.client_key_file) {
        (Some(c), Some(k)) => Some((c.clone(), k.clone())),
        (None, None) => None,
        _ => {
            return Err(invalid(
                field("client_cert_file"),
                "client_cert_file and client_key_file go together",
            ))
        }
    };
    if t.in_flight == 0 || t.in_flight > 256 {
        return Err(invalid(field("in_flight"), "must be 1 to 256"));
    }
    let retry_initial = Duration::from_millis(positive_u64(
        &field("retry_initial_ms"),
        t.retry_initial_ms,
    )?);
    let retry_max = Duration::from_millis(t.retry_max_ms);
    if retry_max < retry_initial {
        return Err(invalid(
            field("retry_max_ms"),
            "must be at least retry_initial_ms",
        ));
    }
    Ok(TargetConfig {
        name: t.name.clone(),
        url: t.url.clone(),
        tls,
        host,
        port,
        path,
        ca_file: t.ca_file.clone(),
        token,
        client_auth,
        in_flight: t.in_flight,
        gzip: t.gzip,
        timeout: Duration::from_secs(positive_u64(&field("timeout_secs"), t.timeout_secs)?),
        connect_timeout: Duration::from_secs(positive_u64(
            &field("connect_timeout_secs"),
            t.connect_timeout_secs,
        )?),
        retry_initial,
        retry_max,
        retry_after_max: Duration::from_secs(t.retry_after_max_secs),
        amqp,
    })
}

/// The AMQP settings of a `[[targets]]` entry whose URL is `amqps://` or `amqp://`.
fn validate_amqp(
    field: &dyn Fn(&str) -> String,
    t: &RawTarget,
    url: &http::Uri,
) -> Result<AmqpTarget, ConfigError> {
    if url.query().is_some() {
        return Err(invalid(
            field("url"),
            "an AMQP URL takes no query: use the target's fields",
        ));
    }
    if t.exchange.is_none() {
        return Err(invalid(field("exchange"), "required for an AMQP target"));
    }
    if t.username.as_deref().is_none_or(str::is_empty) {
        return Err(invalid(field("username"), "required for an AMQP target"));
    }
    let path = t
        .password_file
        .as_ref()
        .ok_or_else(|| invalid(field("password_file"), "required for an AMQP target"))?;
    let password = std::fs::read_to_string(path).map_err(|e| {
        invalid(
            field("password_file"),
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    let password = password.trim_end_matches(['\r', '\n']).to_string();
    if password.is_empty() {
        return Err(invalid(
            field("password_file"),
            format!("{} is empty", path.display()),
        ));
    }
    validate_amqp_with(field, t, url, Secret(password))
}

/// The AMQP settings of `t`, its password given.
fn validate_amqp_with(
    field: &dyn Fn(&str) -> String,
    t: &RawTarget,
    url: &http::Uri,
    password: Secret,
) -> Result<AmqpTarget, ConfigError> {
    let vhost = amqp_vhost(url.path()).map_err(|reason| invalid(field("url"), reason))?;
    let exchange = t
        .exchange
        .clone()
        .ok_or_else(|| invalid(field("exchange"), "required for an AMQP target"))?;
    check_short_string(&exchange).map_err(|reason| invalid(field("exchange"), reason))?;
    let username = t
        .username
        .clone()
        .filter(|u| !u.is_empty())
        .ok_or_else(|| invalid(field("username"), "required for an AMQP target"))?;
    let encoding = match t.encoding.as_deref() {
        None | Some("json") => Encoding::Json,
        Some("protobuf") => Encoding::Protobuf,
        Some(other) => {
            return Err(invalid(
                field("encoding"),
                format!("{other:?} is not one of json, protobuf"),
            ))
        }
    };
    let message = match t.message.as_deref() {
        None | Some("batch") => MessageMode::Batch,
        Some("event") => MessageMode::Event,
        Some(other) => {
            return Err(invalid(
                field("message"),
                format!("{other:?} is not one of batch, event"),
            ))
        }
    };
    let routing_key = t
        .routing_key
        .clone()
        .unwrap_or_else(|| DEFAULT_ROUTING_KEY.to_string());
    check_routing_key(&routing_key, message)
        .map_err(|reason| invalid(field("routing_key"), reason))?;
    let heartbeat_secs = t.heartbeat_secs.unwrap_or(30);
    let heartbeat_secs = u16::try_from(heartbeat_secs)
        .map_err(|_| invalid(field("heartbeat_secs"), "must be 0 to 65535"))?;
    let max_unconfirmed = t.max_unconfirmed.unwrap_or(DEFAULT_MAX_UNCONFIRMED);
    if max_unconfirmed == 0 || max_unconfirmed > 1_000_000 {
        return Err(invalid(field("max_unconfirmed"), "must be 1 to 1000000"));
    }
    Ok(AmqpTarget {
        vhost,
        username,
        password,
        exchange,
        routing_key,
        encoding,
        message,
        heartbeat_secs,
        max_unconfirmed,
    })
}

/// The routing key when none is configured: the cluster name.
pub const DEFAULT_ROUTING_KEY: &str = "{cluster}";
/// `max_unconfirmed` when not configured.
pub const DEFAULT_MAX_UNCONFIRMED: usize = 1024;

/// The vhost an AMQP URL's path names: percent-decoded, `/` when the path is
/// empty or `/` alone (the RabbitMQ default; `%2f` names it too).
pub fn amqp_vhost(path: &str) -> Result<String, String> {
    let raw = path.strip_prefix('/').unwrap_or(path);
    if raw.is_empty() {
        return Ok("/".to_string());
    }
    if raw.contains('/') {
        return Err("the path is the vhost: write a '/' inside it as %2f".to_string());
    }
    let vhost = percent_decode(raw)?;
    check_short_string(&vhost)?;
    Ok(vhost)
}

/// `%XX` escapes decoded; the result must be UTF-8.
pub fn percent_decode(raw: &str) -> Result<String, String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("has a bad percent escape")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "not UTF-8 once decoded".to_string())
}

/// An AMQP short string: at most 255 bytes.
fn check_short_string(s: &str) -> Result<(), String> {
    if s.len() > 255 {
        return Err("must be at most 255 bytes".to_string());
    }
    Ok(())
}

/// A routing key template: only `{cluster}`, `{filer_id}` and (per-event
/// messages) `{node}`.
pub fn check_routing_key(template: &str, message: MessageMode) -> Result<(), String> {
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let close = rest[open..].find('}').ok_or("has a '{' without its '}'")?;
        match &rest[open..open + close + 1] {
            "{cluster}" | "{filer_id}" => {}
            "{node}" if message == MessageMode::Event => {}
            "{node}" => {
                return Err(
                    "{node} needs message = \"event\" (a batch holds the events of several nodes)"
                        .to_string(),
                )
            }
            other => {
                return Err(format!(
                    "{other} is not one of {{cluster}}, {{filer_id}}, {{node}}"
                ))
            }
        }
        rest = &rest[open + close + 1..];
    }
    if rest.contains('}') {
        return Err("has a '}' without its '{'".to_string());
    }
    check_short_string(template)
}

#[cfg(test)]
mod amqp_tests {
    use super::*;

    fn target(url: &str, extra: &str) -> Result<Config, String> {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "s3cret\n").unwrap();
        let text = format!(
            "[[targets]]\nname = \"r\"\nurl = \"{url}\"\nexchange = \"x\"\nusername = \"u\"\npassword_file = \"{}\"\n{extra}",
            pw.display()
        );
        RawConfig::parse(&text)?
            .validate()
            .map_err(|e| e.to_string())
    }

    #[test]
    fn amqp_urls_give_host_port_and_vhost() {
        let cfg = target("amqps://rmq.example:5671/varonis", "").unwrap();
        let t = &cfg.targets[0];
        let a = t.amqp.as_ref().unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.tls),
            ("rmq.example", 5671, true)
        );
        assert_eq!(a.vhost, "varonis");
        assert_eq!(a.password.expose(), "s3cret");
        assert_eq!(a.routing_key, "{cluster}");
        assert_eq!(
            (a.encoding, a.message),
            (Encoding::Json, MessageMode::Batch)
        );
        let t = &target("amqps://h/%2f", "").unwrap().targets[0];
        assert_eq!(
            (t.port, t.amqp.as_ref().unwrap().vhost.as_str()),
            (5671, "/")
        );
        let t = &target("amqp://h", "plaintext_credentials = true")
            .unwrap()
            .targets[0];
        assert_eq!(
            (t.port, t.tls, t.amqp.as_ref().unwrap().vhost.as_str()),
            (5672, false, "/")
        );
        let t = &target(
            "amqps://h/a%20b",
            "encoding = \"protobuf\"\nmessage = \"event\"\nrouting_key = \"q.{cluster}.{node}\"",
        )
        .unwrap()
        .targets[0];
        let a = t.amqp.as_ref().unwrap();
        assert_eq!(
            (a.vhost.as_str(), a.encoding, a.message),
            ("a b", Encoding::Protobuf, MessageMode::Event)
        );
    }

    #[test]
    fn credentials_over_a_link_without_tls_need_the_opt_in() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "hunter2\n").unwrap();
        let http = |extra: &str| {
            RawConfig::parse(&format!(
                "[[targets]]\nname = \"v\"\nurl = \"http://h/x\"\n{extra}\n"
            ))
            .unwrap()
            .validate()
            .map_err(|e| e.to_string())
        };
        let err = http(&format!("token_file = \"{}\"", token.display())).unwrap_err();
        assert!(
            err.starts_with("targets[0].token_file:") && err.contains("in clear"),
            "{err}"
        );
        assert!(!err.contains("hunter2"), "{err}");
        let err = http("client_cert_file = \"/c.pem\"\nclient_key_file = \"/k.pem\"").unwrap_err();
        assert!(err.starts_with("targets[0].client_cert_file:"), "{err}");
        // Said explicitly: accepted.
        let cfg = http("token = \"t0k\"\nplaintext_credentials = true").unwrap();
        assert!(!cfg.targets[0].tls && cfg.targets[0].token.is_some());
        // The RabbitMQ password over amqp://.
        let err = target("amqp://h/v", "").unwrap_err();
        assert!(
            err.starts_with("targets[0].password_file:") && err.contains("in clear"),
            "{err}"
        );
        assert!(target("amqp://h/v", "plaintext_credentials = true").is_ok());
        // Meaningless with TLS: refused rather than ignored.
        let err = target("amqps://h/v", "plaintext_credentials = true").unwrap_err();
        assert!(
            err.starts_with("targets[0].plaintext_credentials:"),
            "{err}"
        );
    }

    #[test]
    fn amqp_errors_name_the_field() {
        let err = |url: &str, extra: &str| target(url, extra).unwrap_err();
        assert!(err("amqps://h/v", "encoding = \"xml\"").starts_with("targets[0].encoding:"));
        let e = err("amqps://h/v", "message = \"all\"");
        assert!(e.starts_with("targets[0].message:"), "{e}");
        assert!(err("amqps://h/v", "routing_key = \"{node}\"")
            .starts_with("targets[0].routing_key: {node} needs message"));
        assert!(
            err("amqps://h/v", "routing_key = \"{host}\"").starts_with("targets[0].routing_key:")
        );
        assert!(err("amqps://h/v", "token = \"t\"").starts_with("targets[0].token:"));
        assert!(err("amqps://h/v", "gzip = true").starts_with("targets[0].gzip:"));
        assert!(err("amqps://h/a/b", "").starts_with("targets[0].url:"));
        assert!(err("amqps://u:p@h/v", "").contains("username and password_file"));
        assert!(err("amqp://h/v", "ca_file = \"/x.pem\"").contains("use amqps://"));
        let no_exchange = RawConfig::parse("[[targets]]\nname = \"r\"\nurl = \"amqps://h/v\"\n")
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            no_exchange.starts_with("targets[0].exchange:"),
            "{no_exchange}"
        );
        let https_with_exchange = RawConfig::parse(
            "[[targets]]\nname = \"r\"\nurl = \"https://h/v\"\nexchange = \"x\"\n",
        )
        .unwrap()
        .validate()
        .unwrap_err()
        .to_string();
        assert!(https_with_exchange.starts_with("targets[0].exchange: applies to AMQP"));
    }

    #[test]
    fn registered_amqp_targets_take_their_login_and_query() {
        let pw = Secret::new("p");
        let login = || RegisteredAmqp {
            exchange: "x",
            username: "u",
            password: &pw,
        };
        let cfg = registered_amqp_target(
            "@c",
            "amqps://10.0.0.1:5671/%2F?encoding=protobuf&message=event",
            login(),
        )
        .unwrap();
        let a = cfg.amqp.unwrap();
        assert_eq!(
            (a.vhost.as_str(), a.encoding, a.message),
            ("/", Encoding::Protobuf, MessageMode::Event)
        );
        assert_eq!(cfg.name, "@c");
        assert!(registered_amqp_target("@c", "amqp://10.0.0.1/v", login())
            .unwrap_err()
            .contains("amqps://"));
        assert!(registered_amqp_target("@c", "amqps://10.0.0.1/v?colour=red", login()).is_err());
    }
}

fn validate_api(a: &RawApi) -> Result<Option<ApiServerConfig>, ConfigError> {
    if !a.enabled {
        return Ok(None);
    }
    let listen = parse_addr("api.listen", &a.listen)?;
    let cert = match (&a.cert_file, &a.key_file) {
        (Some(c), Some(k)) => Some((c.clone(), k.clone())),
        (None, None) => None,
        (Some(_), None) => return Err(invalid("api.key_file", "required with api.cert_file")),
        (None, Some(_)) => return Err(invalid("api.cert_file", "required with api.key_file")),
    };
    let admin_token = read_secret(
        "api.admin_token",
        &a.admin_token,
        "api.admin_token_file",
        &a.admin_token_file,
    )?;
    if let Some(t) = &admin_token {
        if t.0.len() < 16 || t.0.bytes().any(|b| !(0x21..0x7f).contains(&b)) {
            return Err(invalid(
                "api.admin_token",
                "must be at least 16 printable ASCII characters without spaces",
            ));
        }
    }
    if a.max_body_bytes < 4096 || a.max_body_bytes > 16 * 1024 * 1024 {
        return Err(invalid("api.max_body_bytes", "must be 4096 to 16777216"));
    }
    let request_timeout = Duration::from_secs(positive_u64(
        "api.request_timeout_secs",
        a.request_timeout_secs,
    )?);
    positive("api.max_connections", a.max_connections)?;
    let qumulo_hosts = a
        .qumulo_hosts
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let field = format!("api.qumulo_hosts[{i}]");
            if let Ok(net) = parse_net(&field, h) {
                return Ok(HostRule::Net(net));
            }
            if h.is_empty() || h.len() > 253 || h.contains(['/', ' ', ':', '@']) {
                return Err(invalid(
                    field,
                    format!("{h:?} is not a host name, address or CIDR"),
                ));
            }
            Ok(HostRule::Name(h.to_ascii_lowercase()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if a.qumulo_port == 0 {
        return Err(invalid("api.qumulo_port", "must be greater than 0"));
    }
    if a.qumulo_ca_file.is_some() && a.qumulo_insecure_skip_verify {
        return Err(invalid(
            "api.qumulo_insecure_skip_verify",
            "set api.qumulo_ca_file or api.qumulo_insecure_skip_verify, not both",
        ));
    }
    if !a.rmq_url_template.starts_with("https://") || !a.rmq_url_template.contains("{server}") {
        return Err(invalid(
            "api.rmq_url_template",
            "must start with https:// and contain {server}",
        ));
    }
    let rmq_auth = match a.rmq_auth.as_str() {
        "basic" => RmqAuth::Basic,
        "bearer" => RmqAuth::Bearer,
        other => {
            return Err(invalid(
                "api.rmq_auth",
                format!("{other:?} is not one of basic, bearer"),
            ))
        }
    };
    let rmq_amqp = match a.rmq_transport.as_str() {
        "amqp" => true,
        "https" => false,
        other => {
            return Err(invalid(
                "api.rmq_transport",
                format!("{other:?} is not one of amqp, https"),
            ))
        }
    };
    if !matches!(a.rmq_encoding.as_str(), "json" | "protobuf") {
        return Err(invalid(
            "api.rmq_encoding",
            format!("{:?} is not one of json, protobuf", a.rmq_encoding),
        ));
    }
    if !matches!(a.rmq_message.as_str(), "batch" | "event") {
        return Err(invalid(
            "api.rmq_message",
            format!("{:?} is not one of batch, event", a.rmq_message),
        ));
    }
    if a.max_targets == 0 || a.max_targets > 10_000 {
        return Err(invalid("api.max_targets", "must be 1 to 10000"));
    }
    Ok(Some(ApiServerConfig {
        listen,
        cert,
        admin_token,
        max_body_bytes: a.max_body_bytes,
        request_timeout,
        max_connections: a.max_connections,
        auth_cache: Duration::from_secs(a.auth_cache_secs),
        auth_failures_max: a.auth_failures_max,
        auth_failures_window: Duration::from_secs(positive_u64(
            "api.auth_failures_window_secs",
            a.auth_failures_window_secs,
        )?),
        qumulo_hosts,
        qumulo_port: a.qumulo_port,
        qumulo_ca_file: a.qumulo_ca_file.clone(),
        qumulo_insecure_skip_verify: a.qumulo_insecure_skip_verify,
        restrict_to_own_cluster: a.restrict_to_own_cluster,
        rmq_url_template: a.rmq_url_template.clone(),
        rmq_auth,
        rmq_amqp,
        rmq_query: format!("encoding={}&message={}", a.rmq_encoding, a.rmq_message),
        max_targets: a.max_targets,
    }))
}

fn validate_store(
    s: &RawStore,
    data_dir: &Path,
    api: bool,
) -> Result<Option<StoreConfig>, ConfigError> {
    let url = read_secret("store.url", &s.url, "store.url_file", &s.url_file)?;
    if url.is_none() && !api {
        return Ok(None);
    }
    let url = url.unwrap_or_else(|| {
        Secret(format!(
            "sqlite://{}",
            data_dir.join("registry.sqlite3").display()
        ))
    });
    // The URL is not echoed: it may carry a password.
    let scheme = url.0.split("://").next().unwrap_or_default();
    if !matches!(scheme, "sqlite" | "mysql" | "mariadb") || !url.0.contains("://") {
        return Err(invalid(
            "store.url",
            "must start with sqlite://, mysql:// or mariadb://",
        ));
    }
    if s.target_in_flight == 0 || s.target_in_flight > 256 {
        return Err(invalid("store.target_in_flight", "must be 1 to 256"));
    }
    Ok(Some(StoreConfig {
        url,
        poll: Duration::from_secs(positive_u64("store.poll_secs", s.poll_secs)?),
        target_in_flight: s.target_in_flight,
        target_gzip: s.target_gzip,
    }))
}

fn validate_enrich(e: &RawEnrich) -> Result<EnrichConfig, ConfigError> {
    positive("enrich.queue_max_events", e.queue_max_events)?;
    if e.queue_max_bytes < 64 * 1024 {
        return Err(invalid("enrich.queue_max_bytes", "must be at least 65536"));
    }
    if e.in_flight == 0 || e.in_flight > 256 {
        return Err(invalid("enrich.in_flight", "must be 1 to 256"));
    }
    positive("enrich.acl_cache_entries", e.acl_cache_entries)?;
    positive("enrich.type_cache_entries", e.type_cache_entries)?;
    let request_timeout = Duration::from_millis(positive_u64(
        "enrich.request_timeout_ms",
        e.request_timeout_ms,
    )?);
    let timeout = Duration::from_millis(positive_u64("enrich.timeout_ms", e.timeout_ms)?);
    if timeout < request_timeout {
        return Err(invalid(
            "enrich.timeout_ms",
            "must be at least enrich.request_timeout_ms",
        ));
    }
    let token_renew =
        Duration::from_secs(positive_u64("enrich.token_renew_secs", e.token_renew_secs)?);
    if token_renew >= Duration::from_secs(10 * 3600) {
        return Err(invalid(
            "enrich.token_renew_secs",
            "must be below 36000: Qumulo's login tokens expire after 10 hours",
        ));
    }
    Ok(EnrichConfig {
        enabled: e.enabled,
        queue_max_events: e.queue_max_events,
        queue_max_bytes: e.queue_max_bytes,
        in_flight: e.in_flight,
        acl_cache_entries: e.acl_cache_entries,
        type_cache_entries: e.type_cache_entries,
        request_timeout,
        timeout,
        token_renew,
        shutdown_wait: Duration::from_millis(e.shutdown_wait_ms),
    })
}

/// A secret given inline or in a file (not both); trimmed, non-empty.
fn read_secret(
    field: &str,
    inline: &Option<String>,
    file_field: &str,
    file: &Option<PathBuf>,
) -> Result<Option<Secret>, ConfigError> {
    let value = match (inline, file) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                file_field,
                format!("set {field} or {file_field}, not both"),
            ))
        }
        (Some(v), None) => v.clone(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| invalid(file_field, format!("cannot read {}: {e}", path.display())))?
            .trim_end_matches(['\r', '\n'])
            .to_string(),
        (None, None) => return Ok(None),
    };
    if value.is_empty() {
        return Err(match file {
            Some(path) => invalid(file_field, format!("{} is empty", path.display())),
            None => invalid(field, "must not be empty"),
        });
    }
    Ok(Some(Secret(value)))
}

/// Host and port of a cluster's REST API URL (`https://HOST[:PORT]`, port 8000
/// by default).
pub fn api_url(url: &str) -> Result<(String, u16), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    if uri.scheme_str() != Some("https") {
        return Err(format!("{url:?} must start with https://"));
    }
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return Err(format!("{url:?}: give only https://HOST[:PORT]"));
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err("must not carry credentials (user:password@)".to_string());
    }
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| format!("{url:?} has no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    Ok((host, uri.port_u16().unwrap_or(8000)))
}

/// The configuration of a target registered through the API: `url` (https
/// only, no credentials in it) and the defaults of a `[[targets]]` entry, with
/// [`REGISTRY_IN_FLIGHT`] requests in flight (the running target set then applies
/// `[store] target_in_flight` and `target_gzip`). The error says what is wrong
/// with the URL without quoting it.
pub fn registered_target(name: &str, url: &str) -> Result<TargetConfig, String> {
    let raw = registered_raw(url);
    let mut cfg = validate_target(0, &raw).map_err(|e| match e {
        ConfigError::Invalid { reason, .. } => reason,
        other => other.to_string(),
    })?;
    if !cfg.tls {
        return Err(
            "must start with https://: the target's credentials would travel in clear".to_string(),
        );
    }
    cfg.name = name.to_string();
    Ok(cfg)
}

/// The login of a registered AMQP target, and its exchange.
pub struct RegisteredAmqp<'a> {
    pub exchange: &'a str,
    pub username: &'a str,
    pub password: &'a Secret,
}

/// The configuration of an AMQP target registered through the API:
/// `amqps://HOST[:PORT]/VHOST` with, optionally, the query
/// `?encoding=json|protobuf&message=batch|event&routing_key=TEMPLATE` (what
/// `api.rmq_encoding` and `api.rmq_message` put there), and the defaults of a
/// `[[targets]]` entry. Plain `amqp://` is refused: the password would travel
/// in clear. The error does not quote the URL.
pub fn registered_amqp_target(
    name: &str,
    url: &str,
    login: RegisteredAmqp<'_>,
) -> Result<TargetConfig, String> {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    if !base.starts_with("amqps://") {
        return Err(
            "url: must start with amqps://: the RabbitMQ password would travel in clear"
                .to_string(),
        );
    }
    let mut raw = registered_raw(base);
    raw.exchange = Some(login.exchange.to_string());
    raw.username = Some(login.username.to_string());
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v).map_err(|e| format!("url: {k}: {e}"))?;
        match k {
            "encoding" => raw.encoding = Some(v),
            "message" => raw.message = Some(v),
            "routing_key" => raw.routing_key = Some(v),
            other => {
                return Err(format!(
                    "url: the query has {other:?}: only encoding, message and routing_key"
                ))
            }
        }
    }
    if login.exchange.is_empty() {
        return Err("exchange: required (the RabbitMQ exchange to publish to)".to_string());
    }
    if login.username.is_empty() || login.password.expose().is_empty() {
        return Err("username and password: RabbitMQ needs both".to_string());
    }
    let mut cfg =
        validate_target_with(0, &raw, Some(login.password.clone())).map_err(|e| match e {
            ConfigError::Invalid { field, reason } => {
                format!("{}: {reason}", field.trim_start_matches("targets[0]."))
            }
            other => other.to_string(),
        })?;
    cfg.name = name.to_string();
    cfg.url = url.to_string();
    Ok(cfg)
}

/// A `[[targets]]` entry with `url` and every other field at its default, for
/// registered targets.
fn registered_raw(url: &str) -> RawTarget {
    RawTarget {
        // Registered names (`@<cluster>`) are outside the `[[targets]]` alphabet.
        name: "registered".to_string(),
        url: url.to_string(),
        ca_file: None,
        token: None,
        token_file: None,
        client_cert_file: None,
        client_key_file: None,
        in_flight: REGISTRY_IN_FLIGHT,
        gzip: false,
        timeout_secs: default_timeout_secs(),
        connect_timeout_secs: default_connect_timeout_secs(),
        retry_initial_ms: default_retry_initial_ms(),
        retry_max_ms: default_retry_max_ms(),
        retry_after_max_secs: default_retry_after_max_secs(),
        exchange: None,
        routing_key: None,
        username: None,
        password_file: None,
        encoding: None,
        message: None,
        heartbeat_secs: None,
        max_unconfirmed: None,
        plaintext_credentials: false,
    }
}

fn validate_cluster_api(i: usize, c: &RawCluster) -> Result<Option<ApiConfig>, ConfigError> {
    let field = |name: &str| format!("clusters[{i}].{name}");
    let password = read_secret(
        &field("password"),
        &c.password,
        &field("password_file"),
        &c.password_file,
    )?;
    let token = read_secret(
        &field("access_token"),
        &c.access_token,
        &field("access_token_file"),
        &c.access_token_file,
    )?;
    if let Some(tok) = &token {
        if tok.0.bytes().any(|b| !(0x21..0x7f).contains(&b)) {
            return Err(invalid(
                field("access_token"),
                "must be printable ASCII without spaces",
            ));
        }
    }
    let (host, port) = match (&c.api_url, &c.api_host) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                field("api_host"),
                "set api_url or api_host, not both",
            ))
        }
        (Some(url), None) => api_url(url).map_err(|reason| invalid(field("api_url"), reason))?,
        (None, Some(host)) => {
            if host.is_empty() || host.contains(['/', ' ']) {
                return Err(invalid(
                    field("api_host"),
                    format!("{host:?} is not a host"),
                ));
            }
            (
                host.trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string(),
                8000,
            )
        }
        (None, None) => {
            let stray = [
                ("username", c.username.is_some()),
                ("password", password.is_some()),
                ("access_token", token.is_some()),
                ("ca_file", c.ca_file.is_some()),
                ("insecure_skip_verify", c.insecure_skip_verify),
            ];
            if let Some((name, _)) = stray.iter().find(|(_, set)| *set) {
                return Err(invalid(
                    field(name),
                    "needs api_url or api_host: the REST API to use it with",
                ));
            }
            return Ok(None);
        }
    };
    let auth = match (&c.username, password, token) {
        (None, None, Some(token)) => ApiAuth::AccessToken(token),
        (None, Some(_), Some(_)) => {
            return Err(invalid(
                field("password"),
                "needs username (or drop it for access_token)",
            ))
        }
        (Some(_), _, Some(_)) => {
            return Err(invalid(
                field("access_token"),
                "set username and password, or access_token, not both",
            ))
        }
        (Some(user), Some(_), None) if user.is_empty() => {
            return Err(invalid(field("username"), "must not be empty"))
        }
        (Some(user), Some(password), None) => ApiAuth::Login {
            username: user.clone(),
            password,
        },
        (Some(_), None, None) => {
            return Err(invalid(
                field("password"),
                "username needs password or password_file",
            ))
        }
        (None, _, None) => {
            return Err(invalid(
                field("username"),
                "the REST API needs username and password, or access_token",
            ))
        }
    };
    if c.ca_file.is_some() && c.insecure_skip_verify {
        return Err(invalid(
            field("insecure_skip_verify"),
            "set ca_file or insecure_skip_verify, not both",
        ));
    }
    Ok(Some(ApiConfig {
        host,
        port,
        auth,
        ca_file: c.ca_file.clone(),
        insecure_skip_verify: c.insecure_skip_verify,
    }))
}

/// Whether group or others have any permission on `path` (false if it cannot be read).
fn readable_by_others(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        false
    }
}

fn parse_addr(field: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        // Say what is wrong when the address is fine and the port is not.
        let port = value.rsplit_once(':').and_then(|(host, port)| {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            host.parse::<std::net::IpAddr>().ok()?;
            Some(port)
        });
        match port {
            Some(p) if p.parse::<u64>().is_ok_and(|n| n > 65535) => invalid(
                field,
                format!("{value:?}: port {p} is out of range (0 to 65535)"),
            ),
            Some(p) if p.parse::<u16>().is_err() => {
                invalid(field, format!("{value:?}: {p:?} is not a port number"))
            }
            _ => invalid(
                field,
                format!("{value:?} is not an IP:PORT address (IPv6 as [::1]:514)"),
            ),
        }
    })
}

fn parse_net(field: &str, value: &str) -> Result<IpNet, ConfigError> {
    if let Ok(net) = value.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    value
        .parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| invalid(field, format!("{value:?} is not an address or CIDR")))
}

fn positive(field: &str, value: usize) -> Result<NonZeroUsize, ConfigError> {
    NonZeroUsize::new(value).ok_or_else(|| invalid(field, "must be greater than 0"))
}

fn positive_u64(field: &str, value: u64) -> Result<u64, ConfigError> {
    if value == 0 {
        Err(invalid(field, "must be greater than 0"))
    } else {
        Ok(value)
    }
}

// ---------------------------------------------------------------------------
// The validated configuration.

/// The configuration the broker runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub workers: NonZeroUsize,
    pub io_threads: NonZeroUsize,
    pub metrics_listen: Option<SocketAddr>,
    pub data_dir: PathBuf,
    pub max_memory_bytes: Option<u64>,
    pub syslog_tls: Option<SyslogTlsConfig>,
    pub ingest: IngestConfig,
    pub queue: QueueConfig,
    pub filter: parse::Filter,
    pub batch: BatchConfig,
    pub spool: SpoolConfig,
    pub dead_letter: DeadLetterConfig,
    pub shutdown_grace: Duration,
    pub enrich: EnrichConfig,
    pub targets: Vec<TargetConfig>,
    /// Index into `targets`.
    pub default_target: Option<usize>,
    pub clusters: Vec<ClusterConfig>,
    /// The HTTPS control plane, when `[api]` is enabled.
    pub api: Option<ApiServerConfig>,
    /// The registry of targets, when `[api]` is enabled or `[store] url` is set.
    pub store: Option<StoreConfig>,
}

impl Config {
    /// The configured cluster a source address belongs to, if any.
    pub fn cluster_of_source(&self, addr: IpAddr) -> Option<&ClusterConfig> {
        let addr = canonical_ip(addr);
        self.clusters
            .iter()
            .find(|c| c.sources.iter().any(|net| net.contains(&addr)))
    }

    /// The configured cluster of this name, if any.
    pub fn cluster_named(&self, name: &str) -> Option<&ClusterConfig> {
        self.clusters.iter().find(|c| c.name == name)
    }

    /// Whether the allowlist (if any) admits this source.
    pub fn source_allowed(&self, addr: IpAddr) -> bool {
        let addr = canonical_ip(addr);
        self.ingest.allow_sources.is_empty()
            || self
                .ingest
                .allow_sources
                .iter()
                .any(|net| net.contains(&addr))
    }
}

/// An IPv4 peer reaching a dual-stack socket shows up as `::ffff:a.b.c.d`; match it
/// against IPv4 rules as the address it is.
pub fn canonical_ip(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

/// The memory the configured budgets allow, by budget, in bytes: an upper bound
/// of what any input can make the broker hold (measured peaks: docs/hardening.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryBudget {
    /// (the setting to lower, bytes it accounts for)
    pub parts: Vec<(&'static str, u64)>,
}

impl MemoryBudget {
    pub fn total(&self) -> u64 {
        self.parts.iter().map(|(_, b)| b).sum()
    }

    /// The part that weighs most.
    pub fn largest(&self) -> (&'static str, u64) {
        self.parts
            .iter()
            .copied()
            .max_by_key(|(_, b)| *b)
            .unwrap_or(("max_memory_bytes", 0))
    }
}

/// Read cache of a registered target's spool, in bytes (a configured target's
/// has [`SPOOL_CACHE_BYTES`]): registered targets are many.
pub const REGISTRY_SPOOL_CACHE_BYTES: usize = 4 << 20;
/// Requests in flight per registered target.
pub const REGISTRY_IN_FLIGHT: usize = 4;

/// Threads, runtime, code and tables that do not grow with input.
const FIXED_MEMORY_BYTES: u64 = 64 << 20;
/// rustls buffers of one TLS connection, about.
const TLS_CONNECTION_BYTES: u64 = 64 << 10;

impl Config {
    /// Per cluster with REST API access: its enrichment queue and its caches
    /// (an ACL entry is a few hundred bytes, a type entry a few dozen).
    fn enrich_budget(&self) -> u64 {
        if !self.enrich.enabled {
            return 0;
        }
        let e = &self.enrich;
        let per_cluster = e.queue_max_bytes as u64
            + e.acl_cache_entries as u64 * 512
            + e.type_cache_entries as u64 * 64;
        self.clusters.iter().filter(|c| c.api.is_some()).count() as u64 * per_cluster
    }

    /// Per registered target (at most `api.max_targets`): its spool's read cache,
    /// its egress bodies, and an enrichment queue and caches.
    fn registry_budget(&self) -> u64 {
        let Some(api) = &self.api else {
            return 0;
        };
        let e = &self.enrich;
        let enrich = if e.enabled {
            e.queue_max_bytes as u64
                + e.acl_cache_entries as u64 * 512
                + e.type_cache_entries as u64 * 64
        } else {
            0
        };
        let in_flight = self
            .store
            .as_ref()
            .map_or(REGISTRY_IN_FLIGHT, |s| s.target_in_flight);
        let egress =
            REGISTRY_SPOOL_CACHE_BYTES as u64 + in_flight as u64 * 2 * self.batch.max_bytes as u64;
        api.max_targets as u64 * (egress + enrich)
    }

    /// What the budgets allow the broker to hold in memory at worst.
    ///
    /// - queue: frames admitted to the work queue (`queue.max_bytes`, plus the
    ///   unused tail of the read buffers they lie in, at most a third more), the
    ///   events made of them waiting for their turn in the batcher (buffers of
    ///   one and a half times their chunk), and per-frame bookkeeping;
    /// - connections: per connection, a read buffer and one frame in progress,
    ///   twice over while the first frame is looked for; rustls buffers for TLS;
    /// - open batches: one per cluster, up to `batch.max_bytes` (sealed there);
    /// - workers: each worker's output buffer for one chunk;
    /// - egress: per target, the spool's read cache and `in_flight` bodies (and
    ///   their gzip copies);
    /// - enrich: per configured cluster with REST API access;
    /// - registered targets: up to `api.max_targets`, each with egress and enrichment.
    pub fn memory_budget(&self) -> MemoryBudget {
        let i = &self.ingest;
        let q = &self.queue;
        let per_conn = 2 * (i.max_frame_bytes as u64 + i.read_buffer_bytes as u64)
            + if self.syslog_tls.is_some() {
                TLS_CONNECTION_BYTES
            } else {
                0
            };
        let egress: u64 = self
            .targets
            .iter()
            .map(|t| {
                SPOOL_CACHE_BYTES as u64 + t.in_flight as u64 * 2 * self.batch.max_bytes as u64
            })
            .sum();
        MemoryBudget {
            parts: vec![
                (
                    "queue.max_bytes",
                    q.max_bytes as u64 / 6 * 17 + q.size as u64 * 64,
                ),
                (
                    "ingest.max_connections",
                    i.max_connections as u64 * per_conn,
                ),
                (
                    "ingest.max_clusters",
                    i.max_clusters as u64 * self.batch.max_bytes as u64,
                ),
                (
                    "workers",
                    self.workers.get() as u64 * 4 * q.chunk_max_bytes as u64,
                ),
                ("targets", egress),
                ("enrich", self.enrich_budget()),
                ("api.max_targets", self.registry_budget()),
                ("fixed", FIXED_MEMORY_BYTES),
            ],
        }
    }
}

/// `[api]`, validated (see [`RawApi`]).
#[derive(Debug, Clone)]
pub struct ApiServerConfig {
    pub listen: SocketAddr,
    /// (certificate chain, key) files; `None`: self-signed under `<data_dir>/api/`.
    pub cert: Option<(PathBuf, PathBuf)>,
    pub admin_token: Option<Secret>,
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    pub max_connections: usize,
    pub auth_cache: Duration,
    pub auth_failures_max: u32,
    pub auth_failures_window: Duration,
    pub qumulo_hosts: Vec<HostRule>,
    pub qumulo_port: u16,
    pub qumulo_ca_file: Option<PathBuf>,
    pub qumulo_insecure_skip_verify: bool,
    pub restrict_to_own_cluster: bool,
    pub rmq_url_template: String,
    pub rmq_auth: RmqAuth,
    /// `rmq_transport = "amqp"`.
    pub rmq_amqp: bool,
    /// The query of a registered AMQP target's URL: `rmq_encoding`, `rmq_message`.
    pub rmq_query: String,
    pub max_targets: usize,
}

/// A host the Qumulo credential check may log in to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostRule {
    /// A host name, lowercase.
    Name(String),
    Net(IpNet),
}

impl HostRule {
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostRule::Name(n) => n.eq_ignore_ascii_case(host),
            HostRule::Net(net) => host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .is_ok_and(|ip| net.contains(&canonical_ip(ip))),
        }
    }
}

/// How an `/v1/rmq/objects` registration's username and password reach its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RmqAuth {
    Basic,
    Bearer,
}

/// `[store]`, validated.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// `sqlite://…` or `mysql://…`; may carry a password.
    pub url: Secret,
    pub poll: Duration,
    /// `in_flight` and `gzip` of every registered target.
    pub target_in_flight: usize,
    pub target_gzip: bool,
}

/// `[syslog_tls]`, validated.
#[derive(Debug, Clone)]
pub struct SyslogTlsConfig {
    pub listen: SocketAddr,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_ca_file: Option<PathBuf>,
    pub require_client_cert: bool,
    pub handshake_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct IngestConfig {
    pub max_connections_per_source: usize,
    pub frame_timeout: Duration,
    pub max_oversize_frame_bytes: usize,
    pub max_bad_frames: u32,
    pub max_nodes_per_cluster: usize,
    pub max_frame_bytes: usize,
    pub max_connections: usize,
    pub idle_timeout: Option<Duration>,
    pub allow_sources: Vec<IpNet>,
    pub read_buffer_bytes: usize,
    pub first_frame_timeout: Duration,
    pub max_clusters: usize,
    pub forget_idle_cluster: Duration,
}

#[derive(Debug, Clone)]
pub struct QueueConfig {
    pub size: usize,
    pub max_bytes: usize,
    pub chunk_max_frames: usize,
    pub chunk_max_bytes: usize,
}

#[derive(Debug, Clone)]
pub struct BatchConfig {
    pub max_events: usize,
    pub max_bytes: usize,
    pub max_age: Duration,
    /// Seal at this age when the target has a free request slot...
    pub idle_seal: Option<Duration>,
    /// ...and the batch holds at least this many events.
    pub idle_seal_min_events: u32,
}

/// `[spool]`: the spool's section, which [`crate::spool`] reads (the spool
/// takes its types from here, not the other way round).
#[derive(Debug, Clone)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    pub max_bytes: u64,
    pub segment_bytes: u64,
    pub fsync: Fsync,
}

/// Default budget of a spool's in-memory cache of recently appended records
/// (`crate::spool::DEFAULT_CACHE_BYTES`).
pub const SPOOL_CACHE_BYTES: usize = 32 << 20;

/// When appended records are forced to disk (`spool.fsync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// Every append returns only after its record is on disk (group commit).
    Always,
    /// A background flusher syncs at this interval.
    Interval(Duration),
    /// Left to the operating system.
    Never,
}

#[derive(Debug, Clone)]
pub struct DeadLetterConfig {
    pub dir: PathBuf,
    pub max_file_bytes: u64,
    pub max_batch_bytes: u64,
}

#[derive(Debug, Clone)]
pub struct TargetConfig {
    pub name: String,
    pub url: String,
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path and query of the URL.
    pub path: String,
    pub ca_file: Option<PathBuf>,
    pub token: Option<Secret>,
    pub client_auth: Option<(PathBuf, PathBuf)>,
    pub in_flight: usize,
    pub gzip: bool,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    pub retry_after_max: Duration,
    /// Set for an AMQP target (`amqps://` or `amqp://` URL); `path`, `token` and
    /// `gzip` do not apply to it.
    pub amqp: Option<AmqpTarget>,
}

/// An AMQP target's settings, validated.
#[derive(Debug, Clone)]
pub struct AmqpTarget {
    pub vhost: String,
    pub username: String,
    pub password: Secret,
    pub exchange: String,
    /// The template (see [`check_routing_key`]).
    pub routing_key: String,
    pub encoding: Encoding,
    pub message: MessageMode,
    pub heartbeat_secs: u16,
    pub max_unconfirmed: usize,
}

/// How an AMQP message body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// The batch JSON of schema `qbroker.varonis.v1`, as HTTPS targets get it.
    Json,
    /// `proto/qbroker.proto`.
    Protobuf,
}

/// What one AMQP message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageMode {
    Batch,
    Event,
}

impl Encoding {
    /// As the configuration spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Json => "json",
            Encoding::Protobuf => "protobuf",
        }
    }
}

impl MessageMode {
    /// As the configuration spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageMode::Batch => "batch",
            MessageMode::Event => "event",
        }
    }
}

impl TargetConfig {
    /// The URL without its query string, for logs and `check-config`: a query
    /// can carry an API key (credentials before the host are refused outright).
    pub fn url_for_logs(&self) -> &str {
        self.url.split(['?', '#']).next().unwrap_or_default()
    }
}

#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub name: String,
    pub sources: Vec<IpNet>,
    /// Index into `Config::targets`.
    pub target: usize,
    pub filer_id: Option<u64>,
    /// The cluster's REST API, when configured (enrichment).
    pub api: Option<ApiConfig>,
}

/// `[enrich]`, validated (see [`RawEnrich`]).
#[derive(Debug, Clone)]
pub struct EnrichConfig {
    pub enabled: bool,
    pub queue_max_events: usize,
    pub queue_max_bytes: usize,
    pub in_flight: usize,
    pub acl_cache_entries: usize,
    pub type_cache_entries: usize,
    pub request_timeout: Duration,
    pub timeout: Duration,
    pub token_renew: Duration,
    pub shutdown_wait: Duration,
}

impl Default for EnrichConfig {
    fn default() -> Self {
        validate_enrich(&RawEnrich::default()).expect("the defaults are valid")
    }
}

/// A cluster's REST API (HTTPS).
#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub host: String,
    pub port: u16,
    pub auth: ApiAuth,
    pub ca_file: Option<PathBuf>,
    pub insecure_skip_verify: bool,
}

/// How qbroker authenticates to a cluster's REST API.
#[derive(Debug, Clone)]
pub enum ApiAuth {
    /// `POST /v1/session/login`; the bearer token is renewed before it expires and on 401.
    Login { username: String, password: Secret },
    /// A long-lived access token, sent as is.
    AccessToken(Secret),
}

/// A credential: printed as `<redacted>` by `Debug` and `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_target(extra: &str) -> String {
        format!("[[targets]]\nname = \"v\"\nurl = \"https://127.0.0.1:8443/events\"\n{extra}")
    }

    fn error_of(text: &str) -> String {
        match RawConfig::parse(text) {
            Err(message) => message,
            Ok(raw) => raw.validate().expect_err("should be invalid").to_string(),
        }
    }

    #[test]
    fn addresses_and_secret_files_say_what_is_wrong() {
        let e = error_of(&format!(
            "listen = \"127.0.0.1:99999\"\n{}",
            with_target("")
        ));
        assert!(
            e.contains("listen") && e.contains("port 99999 is out of range"),
            "{e}"
        );
        let e = error_of(&format!("listen = \"127.0.0.1:http\"\n{}", with_target("")));
        assert!(e.contains("not a port number"), "{e}");
        let e = error_of(&format!("listen = \"host:514\"\n{}", with_target("")));
        assert!(e.contains("not an IP:PORT address"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("token");
        std::fs::write(&empty, "\n").unwrap();
        let e = error_of(&format!(
            "{}[api]\nenabled = true\nadmin_token_file = \"{}\"\n",
            with_target(""),
            empty.display()
        ));
        assert!(
            e.contains("api.admin_token_file") && e.contains("is empty"),
            "{e}"
        );
    }

    #[test]
    fn defaults_follow_the_reference() {
        let raw = RawConfig::parse(&with_target("")).unwrap();
        let cfg = raw.validate().unwrap();
        assert_eq!(cfg.listen, "0.0.0.0:514".parse().unwrap());
        assert_eq!(cfg.queue.size, 100_000);
        assert_eq!(
            cfg.workers.get(),
            std::thread::available_parallelism().unwrap().get()
        );
        assert_eq!(cfg.batch.max_events, 1000);
        assert_eq!(cfg.batch.max_bytes, 1024 * 1024);
        assert_eq!(cfg.batch.max_age, Duration::from_millis(200));
        assert_eq!(cfg.ingest.max_frame_bytes, 65536);
        assert_eq!(cfg.default_target, Some(0));
        assert_eq!(cfg.targets[0].port, 8443);
        assert_eq!(cfg.targets[0].path, "/events");
        assert!(cfg.targets[0].tls);
        assert_eq!(cfg.spool.dir, PathBuf::from("/var/lib/qbroker/spool"));
    }

    #[test]
    fn unknown_fields_are_rejected_with_their_name() {
        let err = error_of(&format!("listn = \"1.2.3.4:5\"\n{}", with_target("")));
        assert!(err.contains("listn"), "{err}");
        let err = error_of("[batch]\nmax_event = 3\n");
        assert!(err.contains("max_event"), "{err}");
    }

    #[test]
    fn invalid_values_name_their_field() {
        let cases = [
            (
                format!("listen = \"nowhere\"\n{}", with_target("")),
                "listen",
            ),
            (format!("workers = 0\n{}", with_target("")), "workers"),
            (
                format!("[spool]\nfsync = \"sometimes\"\n{}", with_target("")),
                "spool.fsync",
            ),
            (
                format!(
                    "[ingest]\nallow_sources = [\"10.0.0.0/33\"]\n{}",
                    with_target("")
                ),
                "ingest.allow_sources[0]",
            ),
            (
                format!(
                    "[filter]\noperations = [\"fs_list_directory\"]\n{}",
                    with_target("")
                ),
                "filter.operations",
            ),
            (with_target("in_flight = 0"), "targets[0].in_flight"),
            (
                "[[targets]]\nname = \"v\"\nurl = \"ftp://x/\"\n".to_string(),
                "targets[0].url",
            ),
            (
                with_target("client_cert_file = \"/c.pem\""),
                "targets[0].client_cert_file",
            ),
            (
                format!(
                    "{}\n[[clusters]]\nname = \"c\"\ntarget = \"w\"\n",
                    with_target("")
                ),
                "clusters[0].target",
            ),
            ("".to_string(), "targets"),
        ];
        for (text, field) in cases {
            let err = error_of(&text);
            assert!(err.starts_with(field), "{field}: {err}");
        }
    }

    #[test]
    fn overrides_create_and_patch_the_default_target() {
        let mut raw = RawConfig::default();
        raw.apply(Overrides {
            target_url: Some("https://[::1]:9000/in".to_string()),
            target_token: Some("tok".to_string()),
            listen: Some("127.0.0.1:0".to_string()),
            workers: Some(3),
            ..Overrides::default()
        });
        let cfg = raw.validate().unwrap();
        assert_eq!(cfg.targets.len(), 1);
        assert_eq!(cfg.targets[0].host, "::1");
        assert_eq!(cfg.targets[0].port, 9000);
        assert_eq!(cfg.targets[0].token.as_ref().unwrap().expose(), "tok");
        assert_eq!(format!("{:?}", cfg.targets[0].token), "Some(<redacted>)");
        assert_eq!(cfg.workers.get(), 3);
        assert_eq!(cfg.listen.port(), 0);

        let mut raw = RawConfig::parse(&with_target("")).unwrap();
        raw.apply(Overrides {
            target_url: Some("https://127.0.0.1:1/x".to_string()),
            ..Overrides::default()
        });
        assert_eq!(raw.targets.len(), 1);
        assert_eq!(raw.targets[0].url, "https://127.0.0.1:1/x");
    }

    #[test]
    fn the_example_configuration_is_valid() {
        let raw = RawConfig::parse(include_str!("../deploy/qbroker.toml")).unwrap();
        let cfg = raw.validate().unwrap();
        assert_eq!(cfg.targets[0].name, "varonis");
        assert_eq!(cfg.queue.size, 100_000);
        // Its [api] section, switched on, is valid as written.
        let text =
            include_str!("../deploy/qbroker.toml").replacen("enabled = false", "enabled = true", 1);
        let cfg = RawConfig::parse(&text).unwrap().validate().unwrap();
        assert_eq!(cfg.api.unwrap().listen.port(), 443);
        assert_eq!(cfg.store.unwrap().poll, Duration::from_secs(10));
    }

    #[test]
    fn cluster_api_fields() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "s3cret\n").unwrap();
        let cluster = |extra: &str| {
            format!(
                "{}\n[[clusters]]\nname = \"east\"\n{extra}\n",
                with_target("")
            )
        };
        let cfg = RawConfig::parse(&cluster(&format!(
            "api_host = \"q.example\"\nusername = \"svc\"\npassword_file = \"{}\"",
            pw.display()
        )))
        .unwrap()
        .validate()
        .unwrap();
        let api = cfg.clusters[0].api.as_ref().unwrap();
        assert_eq!((api.host.as_str(), api.port), ("q.example", 8000));
        match &api.auth {
            ApiAuth::Login { username, password } => {
                assert_eq!((username.as_str(), password.expose()), ("svc", "s3cret"));
            }
            other => panic!("{other:?}"),
        }
        assert!(!format!("{cfg:?}").contains("s3cret"));
        let cfg = RawConfig::parse(&cluster(
            "api_url = \"https://[::1]:9000\"\naccess_token = \"tok\"\ninsecure_skip_verify = true",
        ))
        .unwrap()
        .validate()
        .unwrap();
        let api = cfg.clusters[0].api.as_ref().unwrap();
        assert_eq!((api.host.as_str(), api.port), ("::1", 9000));
        assert!(matches!(&api.auth, ApiAuth::AccessToken(t) if t.expose() == "tok"));
        assert!(api.insecure_skip_verify);
        assert!(RawConfig::parse(&cluster(""))
            .unwrap()
            .validate()
            .unwrap()
            .clusters[0]
            .api
            .is_none());
        assert_eq!(cfg.enrich.in_flight, 8);

        let cases = [
            (cluster("username = \"u\""), "clusters[0].username"),
            (cluster("api_host = \"h\""), "clusters[0].username"),
            (cluster("api_host = \"h\"\nusername = \"u\""), "clusters[0].password"),
            (
                cluster("api_url = \"http://h\"\naccess_token = \"t\""),
                "clusters[0].api_url",
            ),
            (
                cluster("api_url = \"https://h/x\"\naccess_token = \"t\""),
                "clusters[0].api_url",
            ),
            (
                cluster("api_url = \"https://h\"\napi_host = \"h\"\naccess_token = \"t\""),
                "clusters[0].api_host",
            ),
            (
                cluster("api_host = \"h\"\naccess_token = \"t\"\naccess_token_file = \"/x\""),
                "clusters[0].access_token_file",
            ),
            (
                cluster("api_host = \"h\"\nusername = \"u\"\npassword = \"p\"\naccess_token = \"t\""),
                "clusters[0].access_token",
            ),
            (
                cluster("api_host = \"h\"\naccess_token = \"t\"\nca_file = \"/ca\"\ninsecure_skip_verify = true"),
                "clusters[0].insecure_skip_verify",
            ),
            (
                format!("[enrich]\nin_flight = 0\n{}", with_target("")),
                "enrich.in_flight",
            ),
            (
                format!("[enrich]\ntoken_renew_secs = 36000\n{}", with_target("")),
                "enrich.token_renew_secs",
            ),
            (
                format!("[enrich]\ntimeout_ms = 10\n{}", with_target("")),
                "enrich.timeout_ms",
            ),
        ];
        for (text, field) in cases {
            let err = error_of(&text);
            assert!(err.starts_with(field), "{field}: {err}");
        }
    }

    #[test]
    fn credentials_are_kept_out_of_urls_clear_text_and_errors() {
        let err = error_of("[[targets]]\nname = \"v\"\nurl = \"https://u:hunter2@h/x\"\n");
        assert!(
            err.starts_with("targets[0].url") && !err.contains("hunter2"),
            "{err}"
        );
        let err =
            error_of("[[targets]]\nname = \"v\"\nurl = \"http://h/x\"\ntoken = \"hunter2\"\n");
        assert!(
            err.starts_with("targets[0].token:")
                && err.contains("in clear")
                && !err.contains("hunter2"),
            "{err}"
        );
        let err = error_of("[[targets]]\nname = \"v\"\nurl = \"ht tps://hunter2\"\n");
        assert!(!err.contains("hunter2"), "{err}");
        // A syntax error on the token's line names the place, not the line.
        let err = RawConfig::parse("[[targets]]\nname = \"v\"\ntoken = \"hunter2\n").unwrap_err();
        assert!(
            err.starts_with("line 3") && !err.contains("hunter2"),
            "{err}"
        );
        // A plain-HTTP target without credentials stays possible (a lab sink).
        assert!(
            RawConfig::parse("[[targets]]\nname = \"v\"\nurl = \"http://h/x\"\n")
                .unwrap()
                .validate()
                .is_ok()
        );
        let cfg = RawConfig::parse(&with_target("").replace("/events", "/events?key=hunter2"))
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!(
            cfg.targets[0].url_for_logs(),
            "https://127.0.0.1:8443/events"
        );
    }

    #[test]
    fn hostile_input_settings_are_checked() {
        let cfg = RawConfig::parse(&with_target(""))
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!(cfg.ingest.max_connections_per_source, 128);
        assert_eq!(cfg.ingest.frame_timeout, Duration::from_secs(30));
        assert_eq!(cfg.ingest.max_oversize_frame_bytes, 1 << 20);
        assert_eq!(cfg.ingest.max_bad_frames, 16);
        assert_eq!(cfg.ingest.max_nodes_per_cluster, 256);
        assert!(cfg.syslog_tls.is_none());
        for (text, field) in [
            (
                "[ingest]\nmax_oversize_frame_bytes = 1000\n",
                "ingest.max_oversize_frame_bytes",
            ),
            (
                "[ingest]\nframe_timeout_secs = 0\n",
                "ingest.frame_timeout_secs",
            ),
            (
                "[ingest]\nmax_connections_per_source = 0\n",
                "ingest.max_connections_per_source",
            ),
            (
                "[syslog_tls]\nlisten = \"0.0.0.0:6514\"\n",
                "syslog_tls.cert_file",
            ),
            (
                "[syslog_tls]\nlisten = \"0.0.0.0:6514\"\ncert_file = \"c\"\nkey_file = \"k\"\n",
                "syslog_tls.client_ca_file",
            ),
            ("[syslog_tls]\nlisten = \"nowhere\"\n", "syslog_tls.listen"),
        ] {
            let err = error_of(&format!("{}\n{text}", with_target("")));
            assert!(err.starts_with(field), "{field}: {err}");
        }
        let cfg = RawConfig::parse(&format!(
            "{}\n[syslog_tls]\nlisten = \"127.0.0.1:6514\"\ncert_file = \"c\"\nkey_file = \"k\"\nrequire_client_cert = false\n",
            with_target("")
        ))
        .unwrap()
        .validate()
        .unwrap();
        let tls = cfg.syslog_tls.unwrap();
        assert!(!tls.require_client_cert && tls.client_ca_file.is_none());
        assert_eq!(tls.handshake_timeout, Duration::from_secs(10));
    }

    #[test]
    fn a_memory_ceiling_the_budgets_cannot_fit_is_refused_naming_the_largest() {
        let cfg = RawConfig::parse(&with_target(""))
            .unwrap()
            .validate()
            .unwrap();
        let budget = cfg.memory_budget();
        // The defaults: 4096 connections of 256 KiB, as much as 1000 open batches.
        let (field, bytes) = budget.largest();
        assert_eq!(bytes, 1 << 30);
        assert!(budget.parts.iter().all(|(_, b)| *b <= bytes));
        assert!(cfg.max_memory_bytes.is_none());
        let text = format!(
            "max_memory_bytes = {}\n{}",
            budget.total() - 1,
            with_target("")
        );
        let err = error_of(&text);
        assert!(
            err.starts_with("max_memory_bytes") && err.contains(&format!("lower {field}")),
            "{err}"
        );
        let text = format!("max_memory_bytes = {}\n{}", budget.total(), with_target(""));
        assert!(RawConfig::parse(&text).unwrap().validate().is_ok());
        // Lowering the largest budgets makes a smaller ceiling fit.
        let text = format!(
            "max_memory_bytes = {}\n{}\n[ingest]\nmax_connections = 256\nmax_clusters = 64\n",
            budget.total() / 2,
            with_target("")
        );
        assert!(RawConfig::parse(&text).unwrap().validate().is_ok());
    }

    #[test]
    fn api_and_store_fields() {
        let cfg = RawConfig::parse(&with_target(""))
            .unwrap()
            .validate()
            .unwrap();
        assert!(cfg.api.is_none() && cfg.store.is_none());
        let text = format!(
            "{}\n[api]\nenabled = true\nadmin_token = \"0123456789abcdef\"\nqumulo_hosts = [\"10.0.0.0/8\", \"Q1.example\"]\n",
            with_target("")
        );
        let cfg = RawConfig::parse(&text).unwrap().validate().unwrap();
        let api = cfg.api.as_ref().unwrap();
        assert_eq!(api.listen, "0.0.0.0:443".parse().unwrap());
        assert_eq!(api.max_body_bytes, 256 * 1024);
        assert!(api.restrict_to_own_cluster && api.cert.is_none());
        assert!(
            api.qumulo_hosts[0].matches("10.1.2.3") && !api.qumulo_hosts[0].matches("11.0.0.1")
        );
        assert!(
            api.qumulo_hosts[1].matches("q1.example") && !api.qumulo_hosts[1].matches("q2.example")
        );
        assert_eq!(api.rmq_auth, RmqAuth::Basic);
        assert!(!format!("{cfg:?}").contains("0123456789abcdef"));
        // The API enables the registry, in an SQLite file under data_dir.
        let store = cfg.store.as_ref().unwrap();
        assert_eq!(
            store.url.expose(),
            "sqlite:///var/lib/qbroker/registry.sqlite3"
        );
        assert!(cfg
            .memory_budget()
            .parts
            .iter()
            .any(|(p, b)| *p == "api.max_targets" && *b > 0));
        // With a registry, no static target is needed.
        let cfg = RawConfig::parse("[api]\nenabled = true\n")
            .unwrap()
            .validate()
            .unwrap();
        assert!(cfg.targets.is_empty() && cfg.default_target.is_none());
        let cfg = RawConfig::parse("[store]\nurl = \"mysql://u:p@db/q\"\n")
            .unwrap()
            .validate()
            .unwrap();
        assert!(cfg.api.is_none() && cfg.store.is_some());
        for (text, field) in [
            ("[api]\nenabled = true\nlisten = \"x\"\n", "api.listen"),
            ("[api]\nenabled = true\ncert_file = \"c\"\n", "api.key_file"),
            ("[api]\nenabled = true\nadmin_token = \"short\"\n", "api.admin_token"),
            ("[api]\nenabled = true\nmax_body_bytes = 10\n", "api.max_body_bytes"),
            ("[api]\nenabled = true\nqumulo_hosts = [\"a/b c\"]\n", "api.qumulo_hosts[0]"),
            ("[api]\nenabled = true\nrmq_auth = \"digest\"\n", "api.rmq_auth"),
            ("[api]\nenabled = true\nrmq_url_template = \"http://{server}/\"\n", "api.rmq_url_template"),
            ("[api]\nenabled = true\nmax_targets = 0\n", "api.max_targets"),
            ("[api]\nenabled = true\nqumulo_ca_file = \"c\"\nqumulo_insecure_skip_verify = true\n", "api.qumulo_insecure_skip_verify"),
            ("[api]\nenabled = true\nlistn = \"x\"\n", "line"),
            ("[store]\nurl = \"postgres://x\"\n", "store.url"),
            ("[store]\nurl = \"sqlite://x\"\npoll_secs = 0\n", "store.poll_secs"),
        ] {
            let err = error_of(text);
            assert!(err.starts_with(field), "{field}: {err}");
        }
        // The store URL's password is not echoed.
        let err = error_of("[store]\nurl = \"pg://u:hunter2@h/d\"\n");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn registered_targets_take_https_urls_only() {
        let t = registered_target("@east", "https://[::1]:9000/in?k=v").unwrap();
        assert_eq!(
            (t.name.as_str(), t.host.as_str(), t.port),
            ("@east", "::1", 9000)
        );
        assert_eq!(t.in_flight, REGISTRY_IN_FLIGHT);
        assert!(registered_target("@e", "http://h/x")
            .unwrap_err()
            .contains("https"));
        assert!(!registered_target("@e", "https://u:s3cret@h/x")
            .unwrap_err()
            .contains("s3cret"));
        assert_eq!(api_url("https://q").unwrap(), ("q".to_string(), 8000));
        assert!(api_url("https://q/x").is_err());
    }

    #[test]
    fn sources_map_clusters_and_mapped_v4_matches() {
        let text = format!(
            "{}\n[[clusters]]\nname = \"east\"\nsources = [\"10.1.0.0/16\", \"192.0.2.7\"]\nfiler_id = 7\n[ingest]\nallow_sources = [\"10.0.0.0/8\"]\n",
            with_target("")
        );
        let cfg = RawConfig::parse(&text).unwrap().validate().unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(cfg.cluster_of_source(ip("10.1.2.3")).unwrap().name, "east");
        assert_eq!(
            cfg.cluster_of_source(ip("::ffff:192.0.2.7"))
                .unwrap()
                .filer_id,
            Some(7)
        );
        assert!(cfg.cluster_of_source(ip("10.2.0.1")).is_none());
        assert!(cfg.source_allowed(ip("10.200.0.1")));
        assert!(!cfg.source_allowed(ip("192.0.2.7")));
    }
}
