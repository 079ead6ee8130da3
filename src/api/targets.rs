//! `/v1/targets`: qbroker's own registration API. One registration per cluster:
//! the target its events go to, HTTPS (URL, CA certificate, bearer token or
//! client certificate) or AMQP (`amqps://HOST:PORT/VHOST` URL, CA certificate,
//! `exchange`, `username` and `password`), its filer id, and its REST API
//! credentials for enrichment. Secrets are accepted, stored and used, and shown only as
//! `"********"`.

use http::StatusCode;
use serde::{Deserialize, Deserializer, Serialize};

use super::auth::Scope;
use super::{error, json, parse, store_error, Answer, Ctx, Request};
use crate::config::Secret;
use crate::store::{Registration, StoreError};
use crate::targets::{api_of, endpoint_of, registered_name};

pub const MASK: &str = "********";

/// `Some(None)` for an explicit `null`, `None` for a field left out.
fn some<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiIn {
    /// `https://HOST[:PORT]` of the cluster's REST API.
    url: String,
    username: Option<String>,
    password: Option<String>,
    access_token: Option<String>,
    ca_certificate: Option<String>,
    #[serde(default)]
    insecure_skip_verify: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetIn {
    cluster_name: String,
    url: String,
    ca_certificate: Option<String>,
    token: Option<String>,
    client_certificate: Option<String>,
    client_key: Option<String>,
    filer_id: Option<i64>,
    api: Option<ApiIn>,
    /// AMQP targets (`amqps://` URL): the exchange, and the RabbitMQ login.
    exchange: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetPatch {
    url: Option<String>,
    #[serde(default, deserialize_with = "some")]
    ca_certificate: Option<Option<String>>,
    #[serde(default, deserialize_with = "some")]
    token: Option<Option<String>>,
    #[serde(default, deserialize_with = "some")]
    client_certificate: Option<Option<String>>,
    #[serde(default, deserialize_with = "some")]
    client_key: Option<Option<String>>,
    #[serde(default, deserialize_with = "some")]
    filer_id: Option<Option<i64>>,
    #[serde(default, deserialize_with = "some")]
    api: Option<Option<ApiIn>>,
    exchange: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

#[derive(Serialize)]
struct ApiOut<'a> {
    url: &'a str,
    username: Option<&'a str>,
    password: Option<&'static str>,
    access_token: Option<&'static str>,
    ca_certificate: Option<&'a str>,
    insecure_skip_verify: bool,
}

#[derive(Serialize)]
struct RunningOut {
    name: String,
    running: bool,
    draining: bool,
    failing: bool,
    spool_batches: u64,
    spool_bytes: u64,
    /// `[store] target_in_flight` and `target_gzip` (0 and false while not running).
    in_flight: usize,
    gzip: bool,
}

#[derive(Serialize)]
struct TargetOut<'a> {
    cluster_name: &'a str,
    id: i64,
    filer_id: Option<i64>,
    url: String,
    ca_certificate: Option<&'a str>,
    auth: &'static str,
    token: Option<&'static str>,
    username: Option<&'a str>,
    password: Option<&'static str>,
    client_certificate: Option<&'a str>,
    client_key: Option<&'static str>,
    api: Option<ApiOut<'a>>,
    /// `targets` or `rmq`: which API registered it.
    registered_through: &'static str,
    revision: i64,
    created_unix_ms: i64,
    updated_unix_ms: i64,
    target: RunningOut,
}

fn mask(s: &Option<Secret>) -> Option<&'static str> {
    s.as_ref().map(|_| MASK)
}

/// The URL with its query, which may carry a key, masked.
pub fn shown_url(url: &str) -> String {
    match url.split_once('?') {
        Some((base, _)) => format!("{base}?{MASK}"),
        None => url.to_string(),
    }
}

fn out<'a>(ctx: &Ctx, r: &'a Registration) -> TargetOut<'a> {
    let name = registered_name(&r.cluster_name);
    let view = ctx.targets.views().into_iter().find(|v| v.name == name);
    TargetOut {
        cluster_name: &r.cluster_name,
        id: r.id,
        filer_id: r.filer_id,
        url: shown_url(&r.url),
        ca_certificate: r.ca_certificate.as_deref(),
        auth: match (&r.token, &r.basic_password, &r.client_key) {
            (Some(_), _, _) => "bearer",
            (None, Some(_), _) => "basic",
            (None, None, Some(_)) => "client_certificate",
            (None, None, None) => "none",
        },
        token: mask(&r.token),
        username: r.basic_username.as_deref(),
        password: mask(&r.basic_password),
        client_certificate: r.client_certificate.as_deref(),
        client_key: mask(&r.client_key),
        api: r.api_url.as_deref().map(|url| ApiOut {
            url,
            username: r.api_username.as_deref(),
            password: mask(&r.api_password),
            access_token: mask(&r.api_access_token),
            ca_certificate: r.api_ca_certificate.as_deref(),
            insecure_skip_verify: r.api_insecure_skip_verify,
        }),
        registered_through: if r.rmq_vhost.is_some() {
            "rmq"
        } else {
            "targets"
        },
        revision: r.revision,
        created_unix_ms: r.created_unix_ms,
        updated_unix_ms: r.updated_unix_ms,
        target: RunningOut {
            running: view.is_some(),
            draining: view.as_ref().is_some_and(|v| v.draining),
            failing: view.as_ref().is_some_and(|v| v.failing),
            spool_batches: view.as_ref().map_or(0, |v| v.spool.unacked_records),
            spool_bytes: view.as_ref().map_or(0, |v| v.spool.bytes),
            in_flight: view.as_ref().map_or(0, |v| v.in_flight),
            gzip: view.as_ref().is_some_and(|v| v.gzip),
            name,
        },
    }
}

/// A cluster name qbroker can route (the syslog HOSTNAME without `-<node>`).
pub fn check_cluster_name(name: &str) -> Result<(), Answer> {
    if name.is_empty() || name.len() > 255 || name.chars().any(char::is_control) {
        return Err(error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "cluster_name: must be 1 to 255 bytes without control characters",
        ));
    }
    Ok(())
}

/// Whether the registration can run: its URL, certificates, keys and
/// credentials, checked by building what will use them.
pub fn check(reg: &Registration) -> Result<(), Answer> {
    check_cluster_name(&reg.cluster_name)?;
    if reg.filer_id.is_some_and(|f| f < 0) {
        return Err(error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "filer_id: must not be negative",
        ));
    }
    if let Some(t) = &reg.token {
        if t.expose().is_empty() || t.expose().bytes().any(|b| !(0x21..0x7f).contains(&b)) {
            return Err(error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "token: must be non-empty printable ASCII without spaces",
            ));
        }
    }
    endpoint_of(reg).map_err(|e| error(StatusCode::UNPROCESSABLE_ENTITY, e.0))?;
    api_of(reg).map_err(|e| error(StatusCode::UNPROCESSABLE_ENTITY, e.0))?;
    Ok(())
}

fn apply_api(reg: &mut Registration, api: Option<ApiIn>) {
    reg.api_url = None;
    reg.api_username = None;
    reg.api_password = None;
    reg.api_access_token = None;
    reg.api_ca_certificate = None;
    reg.api_insecure_skip_verify = false;
    if let Some(a) = api {
        reg.api_url = Some(a.url);
        reg.api_username = a.username;
        reg.api_password = a.password.map(Secret::new);
        reg.api_access_token = a.access_token.map(Secret::new);
        reg.api_ca_certificate = a.ca_certificate;
        reg.api_insecure_skip_verify = a.insecure_skip_verify;
    }
}

/// The caller, refused unless it may touch `cluster` (`None`: any).
pub async fn caller(
    ctx: &Ctx,
    req: &Request,
    body: Option<&super::auth::Credentials>,
) -> Result<Scope, Answer> {
    ctx.authenticate(req.peer, &req.headers, body).await
}

/// 401 unless `scope` covers `cluster`.
pub fn allowed(scope: &Scope, cluster: &str) -> Result<(), Answer> {
    if scope.allows(cluster) {
        Ok(())
    } else {
        Err(super::unauthorized(
            "Authentication failure: these credentials are for another cluster",
        ))
    }
}

/// Write, then apply to the running pipeline.
pub async fn saved(
    ctx: &Ctx,
    written: Result<Registration, StoreError>,
) -> Result<Registration, Answer> {
    let reg = written.map_err(store_error)?;
    ctx.reload().await.map_err(store_error)?;
    Ok(reg)
}

/// Register `reg` if there is room (409 past `api.max_targets`), then apply it.
/// One registration at a time on this broker: the count and the insert are one
/// step, so concurrent requests never pass the limit (nor race for an id).
pub async fn insert(ctx: &Ctx, reg: &Registration) -> Result<Registration, Answer> {
    let one = ctx.registering.lock().await;
    room(ctx).await?;
    let written = ctx.store.insert(reg).await;
    drop(one);
    saved(ctx, written).await
}

/// 409 past `api.max_targets`.
async fn room(ctx: &Ctx) -> Result<(), Answer> {
    let n = ctx.store.list().await.map_err(store_error)?.len();
    if n >= ctx.api.max_targets {
        return Err(error(
            StatusCode::CONFLICT,
            format!("{n} targets are registered, the most api.max_targets allows"),
        ));
    }
    Ok(())
}

/// 409 when deleting would leave a connected cluster with nowhere to go.
pub fn deletable(ctx: &Ctx, cluster: &str) -> Result<(), Answer> {
    if ctx.targets.deletion_strands(cluster) {
        return Err(error(
            StatusCode::CONFLICT,
            format!("cluster {cluster:?} is connected and has no configured or default target: its events would have nowhere to go; register another target instead (PATCH)"),
        ));
    }
    Ok(())
}

macro_rules! tri {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(answer) => return answer,
        }
    };
}
pub(crate) use tri;

pub async fn list(ctx: &Ctx, req: &Request) -> Answer {
    let scope = tri!(caller(ctx, req, None).await);
    let all = tri!(ctx.store.list().await.map_err(store_error));
    let shown: Vec<TargetOut<'_>> = all
        .iter()
        .filter(|r| scope.allows(&r.cluster_name))
        .map(|r| out(ctx, r))
        .collect();
    json(StatusCode::OK, &shown)
}

pub async fn create(ctx: &Ctx, req: &Request) -> Answer {
    let scope = tri!(caller(ctx, req, None).await);
    let input: TargetIn = tri!(parse(&req.body));
    tri!(check_cluster_name(&input.cluster_name));
    tri!(allowed(&scope, &input.cluster_name));
    let mut reg = Registration::new(&input.cluster_name, &input.url);
    reg.ca_certificate = input.ca_certificate;
    reg.token = input.token.map(Secret::new);
    reg.client_certificate = input.client_certificate;
    reg.client_key = input.client_key.map(Secret::new);
    reg.filer_id = input.filer_id;
    if input.url.starts_with("amqp") {
        reg.rmq_exchange = input.exchange;
        reg.basic_username = input.username;
        reg.basic_password = input.password.map(Secret::new);
    } else if input.exchange.is_some() || input.username.is_some() || input.password.is_some() {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "exchange, username and password: for an amqps:// target only",
        );
    }
    apply_api(&mut reg, input.api);
    tri!(check(&reg));
    let reg = tri!(insert(ctx, &reg).await);
    json(StatusCode::CREATED, &out(ctx, &reg))
}

async fn found(ctx: &Ctx, cluster: &str) -> Result<Registration, Answer> {
    ctx.store
        .get(cluster)
        .await
        .map_err(store_error)?
        .ok_or_else(|| error(StatusCode::NOT_FOUND, "Object not found"))
}

pub async fn get(ctx: &Ctx, req: &Request, cluster: &str) -> Answer {
    let scope = tri!(caller(ctx, req, None).await);
    tri!(allowed(&scope, cluster));
    let reg = tri!(found(ctx, cluster).await);
    json(StatusCode::OK, &out(ctx, &reg))
}

pub async fn update(ctx: &Ctx, req: &Request, cluster: &str) -> Answer {
    let scope = tri!(caller(ctx, req, None).await);
    tri!(allowed(&scope, cluster));
    let patch: TargetPatch = tri!(parse(&req.body));
    let mut reg = tri!(found(ctx, cluster).await);
    if let Some(url) = patch.url {
        reg.url = url;
    }
    if let Some(v) = patch.ca_certificate {
        reg.ca_certificate = v;
    }
    if let Some(v) = patch.token {
        reg.token = v.map(Secret::new);
        if reg.token.is_some() {
            // One way to authenticate: a new token replaces Basic credentials.
            reg.basic_username = None;
            reg.basic_password = None;
        }
    }
    if let Some(v) = patch.client_certificate {
        reg.client_certificate = v;
    }
    if let Some(v) = patch.client_key {
        reg.client_key = v.map(Secret::new);
    }
    if let Some(v) = patch.filer_id {
        reg.filer_id = v;
    }
    if let Some(api) = patch.api {
        apply_api(&mut reg, api);
    }
    if let Some(v) = patch.exchange {
        reg.rmq_exchange = Some(v);
    }
    if let Some(v) = patch.username {
        reg.basic_username = Some(v);
    }
    if let Some(v) = patch.password {
        reg.basic_password = Some(Secret::new(v));
    }
    tri!(check(&reg));
    let reg = tri!(saved(ctx, ctx.store.update(&reg).await).await);
    json(StatusCode::OK, &out(ctx, &reg))
}

pub async fn delete(ctx: &Ctx, req: &Request, cluster: &str) -> Answer {
    let scope = tri!(caller(ctx, req, None).await);
    tri!(allowed(&scope, cluster));
    tri!(found(ctx, cluster).await);
    tri!(deletable(ctx, cluster));
    match ctx.store.delete(cluster).await {
        Ok(true) => {}
        Ok(false) => return error(StatusCode::NOT_FOUND, "Object not found"),
        Err(e) => return store_error(e),
    }
    tri!(ctx.reload().await.map_err(store_error));
    let name = registered_name(cluster);
    let left = ctx
        .targets
        .views()
        .into_iter()
        .find(|v| v.name == name)
        .map_or(0, |v| v.spool.unacked_records);
    json(
        StatusCode::OK,
        &serde_json::json!({
            "ok": true,
            "cluster_name": cluster,
            "spool_batches_left": left,
            "now_routed_to": ctx.targets.target_of(cluster),
        }),
    )
}
