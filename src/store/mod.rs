//! store: the registry of targets registered through the API.
//!
//! One row per cluster: where its events go (URL, CA certificate, credentials,
//! filer id), the cluster's REST API credentials for enrichment, and the
//! RabbitMQ-era fields a `/v1/rmq/objects` caller sent. An embedded SQLite file
//! by default (`<data_dir>/registry.sqlite3`, owner-only); MariaDB or MySQL
//! (`mysql://…`) when several brokers share one registry. Both through sqlx's
//! `Any` driver, with the same statements; the schema is created and migrated
//! at open ([`schema`]).
//!
//! Secrets at rest (target tokens and passwords, client keys, REST passwords and
//! access tokens) are stored as given: what protects them is the SQLite file's
//! owner-only permissions in the owner-only data directory, or the database's
//! own access control (and TLS to it, `ssl-mode=verify_identity`). They never
//! leave the store except to be used: [`Registration`]'s `Debug` redacts them.

mod schema;

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};
use tracing::info;

use crate::config::{Secret, StoreConfig};
use crate::metrics::unix_ms;

/// What the store can be asked to do and failed at.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the registry: {0}")]
    Open(String),
    #[error("registry: {0}")]
    Db(String),
    /// A unique field is taken (the cluster, or the filer id).
    #[error("{0}")]
    Conflict(String),
    /// The row changed since it was read (another writer came first).
    #[error("the registration of {0} changed meanwhile; read it again")]
    Stale(String),
}

fn db(err: sqlx::Error) -> StoreError {
    // A database error's text names the statement's problem, never bound values.
    StoreError::Db(err.to_string())
}

/// The database behind the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    MySql,
}

/// One cluster's registration.
#[derive(Clone, PartialEq)]
pub struct Registration {
    pub cluster_name: String,
    /// Small number given at creation (the reference's `id`).
    pub id: i64,
    /// Varonis filer id written into each batch; unique among registrations.
    pub filer_id: Option<i64>,
    /// `https://HOST[:PORT]/PATH` the batches are POSTed to.
    pub url: String,
    /// PEM CA certificate(s) to trust for the target (none: the system roots).
    pub ca_certificate: Option<String>,
    /// Bearer token.
    pub token: Option<Secret>,
    /// HTTP Basic credentials (what `/v1/rmq/objects` maps username/password to).
    pub basic_username: Option<String>,
    pub basic_password: Option<Secret>,
    /// PEM client certificate chain and key.
    pub client_certificate: Option<String>,
    pub client_key: Option<Secret>,
    /// The cluster's REST API for enrichment: `https://HOST[:PORT]`.
    pub api_url: Option<String>,
    pub api_username: Option<String>,
    pub api_password: Option<Secret>,
    pub api_access_token: Option<Secret>,
    pub api_ca_certificate: Option<String>,
    pub api_insecure_skip_verify: bool,
    /// Set when registered through `/v1/rmq/objects`: the fields that have no
    /// place in an HTTPS target, kept as sent.
    pub rmq_vhost: Option<String>,
    pub rmq_exchange: Option<String>,
    /// Bumped by every update.
    pub revision: i64,
    pub created_unix_ms: i64,
    pub updated_unix_ms: i64,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secret's Debug redacts; the certificates are public but long.
        f.debug_struct("Registration")
            .field("cluster_name", &self.cluster_name)
            .field("id", &self.id)
            .field("filer_id", &self.filer_id)
            .field("url", &self.url.split(['?', '#']).next())
            .field("token", &self.token)
            .field("basic_username", &self.basic_username)
            .field("basic_password", &self.basic_password)
            .field("client_key", &self.client_key)
            .field("api_url", &self.api_url)
            .field("api_username", &self.api_username)
            .field("api_password", &self.api_password)
            .field("api_access_token", &self.api_access_token)
            .field("revision", &self.revision)
            .finish_non_exhaustive()
    }
}

impl Registration {
    /// A registration with only its cluster and URL set.
    pub fn new(cluster_name: &str, url: &str) -> Registration {
        Registration {
            cluster_name: cluster_name.to_string(),
            id: 0,
            filer_id: None,
            url: url.to_string(),
            ca_certificate: None,
            token: None,
            basic_username: None,
            basic_password: None,
            client_certificate: None,
            client_key: None,
            api_url: None,
            api_username: None,
            api_password: None,
            api_access_token: None,
            api_ca_certificate: None,
            api_insecure_skip_verify: false,
            rmq_vhost: None,
            rmq_exchange: None,
            revision: 0,
            created_unix_ms: 0,
            updated_unix_ms: 0,
        }
    }

    /// Whether the target side (URL, TLS, credentials) differs from `other`'s.
    pub fn same_target(&self, other: &Registration) -> bool {
        self.url == other.url
            && self.ca_certificate == other.ca_certificate
            && self.token == other.token
            && self.basic_username == other.basic_username
            && self.basic_password == other.basic_password
            && self.client_certificate == other.client_certificate
            && self.client_key == other.client_key
            && self.rmq_exchange == other.rmq_exchange
    }

    /// Whether the REST API side differs from `other`'s.
    pub fn same_api(&self, other: &Registration) -> bool {
        self.api_url == other.api_url
            && self.api_username == other.api_username
            && self.api_password == other.api_password
            && self.api_access_token == other.api_access_token
            && self.api_ca_certificate == other.api_ca_certificate
            && self.api_insecure_skip_verify == other.api_insecure_skip_verify
    }
}

const COLUMNS: &str = "cluster_name, id, filer_id, url, ca_certificate, token, basic_username, \
    basic_password, client_certificate, client_key, api_url, api_username, api_password, \
    api_access_token, api_ca_certificate, api_insecure_skip_verify, rmq_vhost, rmq_exchange, \
    revision, created_unix_ms, updated_unix_ms";

/// The file of a SQLite registry; `None` for a MariaDB or MySQL one.
pub fn sqlite_path(cfg: &StoreConfig) -> Option<std::path::PathBuf> {
    let url = cfg.url.expose();
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    Some(std::path::PathBuf::from(
        path.split('?').next().unwrap_or_default(),
    ))
}

/// The registry.
pub struct Store {
    pool: AnyPool,
}

impl Store {
    /// Connect (creating a SQLite file, owner-only, when missing) and bring the
    /// schema up to date.
    pub async fn open(cfg: &StoreConfig) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let url = cfg.url.expose();
        let kind = if url.starts_with("sqlite:") {
            Kind::Sqlite
        } else {
            Kind::MySql
        };
        let url = match kind {
            Kind::Sqlite => {
                let path = sqlite_path(cfg).unwrap_or_default();
                prepare_sqlite_file(&path)?;
                format!("sqlite://{}?mode=rw", path.display())
            }
            Kind::MySql => url.replacen("mariadb://", "mysql://", 1),
        };
        let options = AnyConnectOptions::from_str(&url)
            .map_err(|e| StoreError::Open(scrub(&e.to_string(), cfg.url.expose())))?;
        let pool = AnyPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(|e| StoreError::Open(scrub(&e.to_string(), cfg.url.expose())))?;
        let store = Store { pool };
        let version = schema::migrate(&store.pool, kind).await?;
        info!(kind = ?kind, schema_version = version, "registry open");
        Ok(store)
    }

    /// Every registration, by cluster name.
    pub async fn list(&self) -> Result<Vec<Registration>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM qbroker_targets ORDER BY cluster_name"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter().map(from_row).collect()
    }

    pub async fn get(&self, cluster_name: &str) -> Result<Option<Registration>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM qbroker_targets WHERE cluster_name = ?"
        ))
        .bind(cluster_name)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        row.as_ref().map(from_row).transpose()
    }

    /// Add a registration: its id, revision and times are given here.
    pub async fn insert(&self, reg: &Registration) -> Result<Registration, StoreError> {
        self.check_filer_id(reg).await?;
        if self.get(&reg.cluster_name).await?.is_some() {
            return Err(StoreError::Conflict(format!(
                "cluster {:?} is already registered",
                reg.cluster_name
            )));
        }
        let now = unix_ms();
        // Another broker may take the same id at once: the unique index refuses
        // the second, which tries the next.
        for _ in 0..5 {
            let next: i64 =
                sqlx::query("SELECT COALESCE(MAX(id), 0) + 1 AS next FROM qbroker_targets")
                    .fetch_one(&self.pool)
                    .await
                    .map_err(db)?
                    .try_get("next")
                    .map_err(db)?;
            let mut row = reg.clone();
            row.id = next;
            row.revision = 1;
            row.created_unix_ms = now;
            row.updated_unix_ms = now;
            let placeholders = vec!["?"; 21].join(", ");
            let q = format!("INSERT INTO qbroker_targets ({COLUMNS}) VALUES ({placeholders})");
            match bind_all(sqlx::query(&q), &row).execute(&self.pool).await {
                Ok(_) => return Ok(row),
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                    if self.get(&reg.cluster_name).await?.is_some() {
                        return Err(StoreError::Conflict(format!(
                            "cluster {:?} is already registered",
                            reg.cluster_name
                        )));
                    }
                    self.check_filer_id(reg).await?;
                }
                Err(e) => return Err(db(e)),
            }
        }
        Err(StoreError::Db(
            "could not give the registration an id".to_string(),
        ))
    }

    /// Replace a registration read at revision `reg.revision`; the stored one
    /// must still be at that revision.
    pub async fn update(&self, reg: &Registration) -> Result<Registration, StoreError> {
        self.check_filer_id(reg).await?;
        let mut row = reg.clone();
        row.revision = reg.revision + 1;
        row.updated_unix_ms = unix_ms();
        let sets = COLUMNS
            .split(", ")
            .skip(2)
            .map(|c| format!("{c} = ?"))
            .collect::<Vec<_>>()
            .join(", ");
        let q =
            format!("UPDATE qbroker_targets SET {sets} WHERE cluster_name = ? AND revision = ?");
        let done = bind_values(sqlx::query(&q), &row)
            .bind(reg.cluster_name.clone())
            .bind(reg.revision)
            .execute(&self.pool)
            .await;
        match done {
            Ok(r) if r.rows_affected() == 1 => Ok(row),
            Ok(_) => Err(StoreError::Stale(reg.cluster_name.clone())),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                self.check_filer_id(reg).await?;
                Err(StoreError::Stale(reg.cluster_name.clone()))
            }
            Err(e) => Err(db(e)),
        }
    }

    /// Remove a registration; false when there was none.
    pub async fn delete(&self, cluster_name: &str) -> Result<bool, StoreError> {
        let r = sqlx::query("DELETE FROM qbroker_targets WHERE cluster_name = ?")
            .bind(cluster_name)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(r.rows_affected() > 0)
    }

    async fn check_filer_id(&self, reg: &Registration) -> Result<(), StoreError> {
        let Some(filer_id) = reg.filer_id else {
            return Ok(());
        };
        let holder = sqlx::query(
            "SELECT cluster_name FROM qbroker_targets WHERE filer_id = ? AND cluster_name <> ?",
        )
        .bind(filer_id)
        .bind(reg.cluster_name.clone())
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        match holder {
            Some(row) => {
                let other = text(&row, "cluster_name")?.unwrap_or_default();
                Err(StoreError::Conflict(format!(
                    "filer_id {filer_id} is already the filer id of cluster {other:?}"
                )))
            }
            None => Ok(()),
        }
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// `text` without `secret` (a URL whose password an error may quote).
fn scrub(text: &str, url: &str) -> String {
    let mut out = text.replace(url, "<store url>");
    if let Some(password) = url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .map(|(_, p)| p)
        .filter(|p| !p.is_empty())
    {
        out = out.replace(password, "<redacted>");
    }
    out
}

/// Create the SQLite file owner-only (and its directory) before sqlx opens it,
/// and make an existing one owner-only.
fn prepare_sqlite_file(path: &std::path::Path) -> Result<(), StoreError> {
    let fail = |e: std::io::Error| StoreError::Open(format!("{}: {e}", path.display()));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::deadletter::create_private_dir(dir).map_err(fail)?;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(fail)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(fail)?;
    }
    #[cfg(not(unix))]
    {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(fail)?;
    }
    Ok(())
}

type Query<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

fn secret(s: &Option<Secret>) -> Option<String> {
    s.as_ref().map(|s| s.expose().to_string())
}

fn bind_all<'q>(q: Query<'q>, r: &Registration) -> Query<'q> {
    bind_values(q.bind(r.cluster_name.clone()).bind(r.id), r)
}

/// Every column after `cluster_name` and `id`, in [`COLUMNS`] order.
fn bind_values<'q>(q: Query<'q>, r: &Registration) -> Query<'q> {
    q.bind(r.filer_id)
        .bind(r.url.clone())
        .bind(r.ca_certificate.clone())
        .bind(secret(&r.token))
        .bind(r.basic_username.clone())
        .bind(secret(&r.basic_password))
        .bind(r.client_certificate.clone())
        .bind(secret(&r.client_key))
        .bind(r.api_url.clone())
        .bind(r.api_username.clone())
        .bind(secret(&r.api_password))
        .bind(secret(&r.api_access_token))
        .bind(r.api_ca_certificate.clone())
        .bind(i64::from(r.api_insecure_skip_verify))
        .bind(r.rmq_vhost.clone())
        .bind(r.rmq_exchange.clone())
        .bind(r.revision)
        .bind(r.created_unix_ms)
        .bind(r.updated_unix_ms)
}

/// A text column: MySQL's `TEXT` reaches the `Any` driver as a `BLOB`, so
/// bytes are taken too (and must be UTF-8).
fn text(row: &AnyRow, column: &str) -> Result<Option<String>, StoreError> {
    match row.try_get::<Option<String>, _>(column) {
        Ok(v) => Ok(v),
        Err(_) => row
            .try_get::<Option<Vec<u8>>, _>(column)
            .map_err(db)?
            .map(|b| {
                String::from_utf8(b)
                    .map_err(|_| StoreError::Db(format!("column {column} is not UTF-8")))
            })
            .transpose(),
    }
}

fn from_row(row: &AnyRow) -> Result<Registration, StoreError> {
    let text = |c: &str| text(row, c);
    let secret = |c: &str| Ok::<_, StoreError>(text(c)?.map(Secret::new));
    let required = |c: &str| text(c)?.ok_or_else(|| StoreError::Db(format!("column {c} is NULL")));
    Ok(Registration {
        cluster_name: required("cluster_name")?,
        id: row.try_get("id").map_err(db)?,
        filer_id: row.try_get("filer_id").map_err(db)?,
        url: required("url")?,
        ca_certificate: text("ca_certificate")?,
        token: secret("token")?,
        basic_username: text("basic_username")?,
        basic_password: secret("basic_password")?,
        client_certificate: text("client_certificate")?,
        client_key: secret("client_key")?,
        api_url: text("api_url")?,
        api_username: text("api_username")?,
        api_password: secret("api_password")?,
        api_access_token: secret("api_access_token")?,
        api_ca_certificate: text("api_ca_certificate")?,
        api_insecure_skip_verify: row
            .try_get::<i64, _>("api_insecure_skip_verify")
            .map_err(db)?
            != 0,
        rmq_vhost: text("rmq_vhost")?,
        rmq_exchange: text("rmq_exchange")?,
        revision: row.try_get("revision").map_err(db)?,
        created_unix_ms: row.try_get("created_unix_ms").map_err(db)?,
        updated_unix_ms: row.try_get("updated_unix_ms").map_err(db)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_do_not_quote_the_password() {
        let url = "mysql://qb:hunter2@db:3306/qbroker";
        let text = scrub(
            "error connecting to mysql://qb:hunter2@db:3306/qbroker: hunter2 refused",
            url,
        );
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn debug_redacts_secrets() {
        let mut r = Registration::new("east", "https://v/x?key=k3y");
        r.token = Some(Secret::new("t0ken"));
        r.api_password = Some(Secret::new("pa55"));
        let text = format!("{r:?}");
        assert!(
            !text.contains("t0ken") && !text.contains("pa55") && !text.contains("k3y"),
            "{text}"
        );
    }
}
