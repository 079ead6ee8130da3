//! schema: the registry's tables and their migrations, applied at open.
//!
//! `qbroker_migrations` lists the versions applied. Each migration is a list of
//! statements, the same for SQLite and MariaDB/MySQL but for the collation of
//! the cluster name (MySQL compares text case-insensitively unless told, and
//! `East` and `east` are two clusters). Statements are idempotent
//! (`IF NOT EXISTS`), so brokers sharing a registry may start together: the
//! second to record a version finds it recorded. A registry at a version newer
//! than this qbroker knows is refused rather than guessed at.

use sqlx::{AnyPool, Row};

use super::{db, Kind, StoreError};
use crate::metrics::unix_ms;

/// `{name}` in a statement: the cluster name's column type.
const CLUSTER_NAME_SQLITE: &str = "VARCHAR(255)";
const CLUSTER_NAME_MYSQL: &str = "VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin";

/// (version, description, statements)
const MIGRATIONS: &[(i64, &str, &[&str])] = &[(
    1,
    "targets",
    &["CREATE TABLE IF NOT EXISTS qbroker_targets (
        cluster_name {name} NOT NULL PRIMARY KEY,
        id BIGINT NOT NULL UNIQUE,
        filer_id BIGINT NULL UNIQUE,
        url TEXT NOT NULL,
        ca_certificate TEXT NULL,
        token TEXT NULL,
        basic_username TEXT NULL,
        basic_password TEXT NULL,
        client_certificate TEXT NULL,
        client_key TEXT NULL,
        api_url TEXT NULL,
        api_username TEXT NULL,
        api_password TEXT NULL,
        api_access_token TEXT NULL,
        api_ca_certificate TEXT NULL,
        api_insecure_skip_verify BIGINT NOT NULL DEFAULT 0,
        rmq_vhost TEXT NULL,
        rmq_exchange TEXT NULL,
        revision BIGINT NOT NULL,
        created_unix_ms BIGINT NOT NULL,
        updated_unix_ms BIGINT NOT NULL
    )"],
)];

/// The newest schema version this qbroker knows.
pub const VERSION: i64 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// Apply the migrations not applied yet; the version the registry is at.
pub async fn migrate(pool: &AnyPool, kind: Kind) -> Result<i64, StoreError> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS qbroker_migrations (
            version BIGINT NOT NULL PRIMARY KEY,
            description TEXT NOT NULL,
            applied_unix_ms BIGINT NOT NULL
        )",
    )
    .execute(pool)
    .await
    .map_err(db)?;
    let applied = applied(pool).await?;
    if let Some(&newest) = applied.iter().max() {
        if newest > VERSION {
            return Err(StoreError::Open(format!(
                "the registry's schema is at version {newest}, newer than this qbroker's {VERSION}: upgrade qbroker"
            )));
        }
    }
    let name = match kind {
        Kind::Sqlite => CLUSTER_NAME_SQLITE,
        Kind::MySql => CLUSTER_NAME_MYSQL,
    };
    for (version, description, statements) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        for statement in *statements {
            sqlx::query(&statement.replace("{name}", name))
                .execute(pool)
                .await
                .map_err(db)?;
        }
        let recorded = sqlx::query(
            "INSERT INTO qbroker_migrations (version, description, applied_unix_ms) VALUES (?, ?, ?)",
        )
        .bind(*version)
        .bind(description.to_string())
        .bind(unix_ms())
        .execute(pool)
        .await;
        match recorded {
            Ok(_) => {}
            // Another broker recorded it first.
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {}
            Err(e) => return Err(db(e)),
        }
    }
    Ok(VERSION)
}

async fn applied(pool: &AnyPool) -> Result<Vec<i64>, StoreError> {
    let rows = sqlx::query("SELECT version FROM qbroker_migrations")
        .fetch_all(pool)
        .await
        .map_err(db)?;
    rows.iter()
        .map(|r| r.try_get::<i64, _>("version").map_err(db))
        .collect()
}
