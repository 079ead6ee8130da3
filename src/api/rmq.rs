//! `/v1/rmq/objects`: the reference broker's registration API, kept so that a
//! Varonis side that speaks it keeps working: the same paths, the same JSON
//! (FastAPI's forms: the credentials alone as the body of GET and DELETE,
//! `{"credentials": {...}, "obj": {...}}` for POST and PATCH), the same
//! `{"detail": "..."}` errors and the same Qumulo-credential check. The admin
//! token works too (then `credentials` may be left out).
//!
//! The reference registered RabbitMQ targets, and so does qbroker: by default
//! (`api.rmq_transport = "amqp"`) an object becomes an AMQP target, published
//! to over `amqps://{server}:{port}/{vhost}` (TLS with `certificate` as the CA,
//! pins accepted), to `exchange`, logged in as `username` with `password`,
//! with `filer_id` in every batch; `api.rmq_encoding` and `api.rmq_message`
//! choose the body and what a message carries.
//!
//! With `api.rmq_transport = "https"` (a site that fronts Varonis with an HTTPS
//! receiver) an object becomes an HTTPS registration this way
//! (`api.rmq_url_template`, `api.rmq_auth`):
//!
//! | object field | becomes |
//! |---|---|
//! | `server`, `port` (and `vhost`, `exchange` if the template uses them) | the target URL, default `https://{server}:{port}/events` |
//! | `certificate` (base64 of PEM, or PEM) | the CA certificate trusted for the target (`""`: the system roots) |
//! | `username`, `password` | HTTP Basic credentials (or, with `rmq_auth = "bearer"`, the password as a bearer token) |
//! | `filer_id` | the batches' `filer_id` (unique, as in the reference) |
//! | `vhost`, `exchange` | kept as sent and returned |
//!
//! Differences, all on the safe side: the password is returned as `"********"`;
//! unknown fields are refused (422); a duplicate cluster or filer id is a 409
//! (the reference failed with a 500); renaming a cluster through PATCH is
//! refused (delete and create instead).

use base64::Engine as _;
use http::StatusCode;
use serde::{Deserialize, Serialize};

use super::auth::Credentials;
use super::targets::{allowed, caller, check, deletable, insert, saved, tri, MASK};
use super::{error, json, parse, store_error, Answer, Ctx, Request};
use crate::config::{RmqAuth, Secret};
use crate::store::Registration;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ObjectIn {
    cluster_name: String,
    certificate: String,
    filer_id: i64,
    server: String,
    port: i64,
    vhost: String,
    exchange: String,
    username: String,
    password: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ObjectPatch {
    cluster_name: Option<String>,
    certificate: Option<String>,
    filer_id: Option<i64>,
    server: Option<String>,
    port: Option<i64>,
    vhost: Option<String>,
    exchange: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope<T> {
    credentials: Option<Credentials>,
    obj: T,
}

#[derive(Serialize)]
struct ObjectOut {
    id: i64,
    cluster_name: String,
    certificate: String,
    filer_id: Option<i64>,
    server: String,
    port: i64,
    vhost: String,
    exchange: String,
    username: String,
    password: &'static str,
}

/// The object's fields as they stand, from a registration (made here or
/// through `/v1/targets`).
struct Fields {
    certificate: String,
    server: String,
    port: i64,
    vhost: String,
    exchange: String,
    username: String,
}

fn fields(r: &Registration) -> Fields {
    let (server, port) = match r.url.parse::<http::Uri>() {
        Ok(u) => (
            u.host()
                .unwrap_or_default()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            i64::from(u.port_u16().unwrap_or(if u.scheme_str() == Some("amqps") {
                5671
            } else {
                443
            })),
        ),
        Err(_) => (String::new(), 0),
    };
    Fields {
        certificate: r
            .ca_certificate
            .as_deref()
            .map(|pem| base64::engine::general_purpose::STANDARD.encode(pem))
            .unwrap_or_default(),
        server,
        port,
        vhost: r.rmq_vhost.clone().unwrap_or_default(),
        exchange: r.rmq_exchange.clone().unwrap_or_default(),
        username: r.basic_username.clone().unwrap_or_default(),
    }
}

fn out(r: &Registration) -> ObjectOut {
    let f = fields(r);
    ObjectOut {
        id: r.id,
        cluster_name: r.cluster_name.clone(),
        certificate: f.certificate,
        filer_id: r.filer_id,
        server: f.server,
        port: f.port,
        vhost: f.vhost,
        exchange: f.exchange,
        username: f.username,
        password: MASK,
    }
}

/// PEM text from what `certificate` holds: PEM, or base64 of PEM.
fn pem_of(certificate: &str) -> Result<Option<String>, Answer> {
    let c = certificate.trim();
    if c.is_empty() {
        return Ok(None);
    }
    if c.starts_with("-----BEGIN") {
        return Ok(Some(c.to_string()));
    }
    let compact: String = c.chars().filter(|ch| !ch.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .filter(|pem| pem.contains("-----BEGIN"))
        .map(Some)
        .ok_or_else(|| {
            error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "certificate: expected a PEM certificate, or base64 of one",
            )
        })
}

/// Percent-encode a template value (the URL must stay one URL).
fn enc(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

/// Fill `reg`'s target from the object's fields.
#[allow(clippy::too_many_arguments)]
fn fill(
    ctx: &Ctx,
    reg: &mut Registration,
    certificate: &str,
    server: &str,
    port: i64,
    vhost: &str,
    exchange: &str,
    username: &str,
    password: Option<&str>,
) -> Result<(), Answer> {
    if !(1..=65535).contains(&port) {
        return Err(error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "port: must be 1 to 65535",
        ));
    }
    let host = server.trim();
    if host.is_empty() || host.contains(['/', '@', ' ', '?', '#']) {
        return Err(error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "server: must be a host name or address",
        ));
    }
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    reg.ca_certificate = pem_of(certificate)?;
    reg.rmq_vhost = Some(vhost.to_string());
    reg.rmq_exchange = Some(exchange.to_string());
    if ctx.api.rmq_amqp {
        // The reference broker's way: publish to the object's exchange. The
        // vhost is the path ("/" as %2F), the encoding and message mode the
        // query, as `api.rmq_encoding` and `api.rmq_message` say now.
        reg.url = format!("amqps://{host}:{port}/{}?{}", enc(vhost), ctx.api.rmq_query);
        reg.token = None;
        reg.basic_username = Some(username.to_string());
        if let Some(password) = password {
            reg.basic_password = Some(Secret::new(password));
        }
        if username.is_empty()
            || reg
                .basic_password
                .as_ref()
                .is_none_or(|p| p.expose().is_empty())
        {
            return Err(error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "username and password: RabbitMQ needs both",
            ));
        }
        return Ok(());
    }
    reg.url = ctx
        .api
        .rmq_url_template
        .replace("{server}", &host)
        .replace("{port}", &port.to_string())
        .replace("{vhost}", &enc(vhost))
        .replace("{exchange}", &enc(exchange));
    if let Some(password) = password {
        let (user, pass) = (
            (!username.is_empty()).then(|| username.to_string()),
            (!password.is_empty()).then(|| Secret::new(password)),
        );
        match ctx.api.rmq_auth {
            RmqAuth::Basic => {
                reg.token = None;
                reg.basic_username = user;
                reg.basic_password = pass;
                if reg.basic_username.is_some() != reg.basic_password.is_some() {
                    return Err(error(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "username and password: give both or neither",
                    ));
                }
            }
            RmqAuth::Bearer => {
                reg.basic_password = None;
                reg.basic_username = user;
                reg.token = pass;
            }
        }
    } else {
        reg.basic_username = (!username.is_empty()).then(|| username.to_string());
    }
    Ok(())
}

/// The credentials of a GET or DELETE body (empty with the admin token).
fn body_credentials(req: &Request) -> Result<Option<Credentials>, Answer> {
    if req.body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    parse::<Credentials>(&req.body).map(Some)
}

pub async fn list(ctx: &Ctx, req: &Request) -> Answer {
    let creds = tri!(body_credentials(req));
    let scope = tri!(caller(ctx, req, creds.as_ref()).await);
    let all = tri!(ctx.store.list().await.map_err(store_error));
    let shown: Vec<ObjectOut> = all
        .iter()
        .filter(|r| scope.allows(&r.cluster_name))
        .map(out)
        .collect();
    json(StatusCode::OK, &shown)
}

pub async fn create(ctx: &Ctx, req: &Request) -> Answer {
    let envelope: Envelope<ObjectIn> = tri!(parse(&req.body));
    let scope = tri!(caller(ctx, req, envelope.credentials.as_ref()).await);
    let o = envelope.obj;
    tri!(super::targets::check_cluster_name(&o.cluster_name));
    tri!(allowed(&scope, &o.cluster_name));
    let mut reg = Registration::new(&o.cluster_name, "");
    reg.filer_id = Some(o.filer_id);
    tri!(fill(
        ctx,
        &mut reg,
        &o.certificate,
        &o.server,
        o.port,
        &o.vhost,
        &o.exchange,
        &o.username,
        Some(&o.password),
    ));
    tri!(check(&reg));
    let reg = tri!(insert(ctx, &reg).await);
    json(StatusCode::OK, &out(&reg))
}

async fn found(ctx: &Ctx, cluster: &str) -> Result<Registration, Answer> {
    ctx.store
        .get(cluster)
        .await
        .map_err(store_error)?
        .ok_or_else(|| error(StatusCode::NOT_FOUND, "Object not found"))
}

pub async fn get(ctx: &Ctx, req: &Request, cluster: &str) -> Answer {
    let creds = tri!(body_credentials(req));
    let scope = tri!(caller(ctx, req, creds.as_ref()).await);
    tri!(allowed(&scope, cluster));
    let reg = tri!(found(ctx, cluster).await);
    json(StatusCode::OK, &out(&reg))
}

pub async fn update(ctx: &Ctx, req: &Request, cluster: &str) -> Answer {
    let envelope: Envelope<ObjectPatch> = tri!(parse(&req.body));
    let scope = tri!(caller(ctx, req, envelope.credentials.as_ref()).await);
    tri!(allowed(&scope, cluster));
    let p = envelope.obj;
    if p.cluster_name.as_deref().is_some_and(|n| n != cluster) {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "cluster_name: a registration cannot be renamed; delete it and create the new one",
        );
    }
    let mut reg = tri!(found(ctx, cluster).await);
    let now = fields(&reg);
    if let Some(f) = p.filer_id {
        reg.filer_id = Some(f);
    }
    let certificate = p.certificate.unwrap_or(now.certificate);
    tri!(fill(
        ctx,
        &mut reg,
        &certificate,
        p.server.as_deref().unwrap_or(&now.server),
        p.port.unwrap_or(now.port),
        p.vhost.as_deref().unwrap_or(&now.vhost),
        p.exchange.as_deref().unwrap_or(&now.exchange),
        p.username.as_deref().unwrap_or(&now.username),
        p.password.as_deref(),
    ));
    tri!(check(&reg));
    let reg = tri!(saved(ctx, ctx.store.update(&reg).await).await);
    json(StatusCode::OK, &out(&reg))
}

pub async fn delete(ctx: &Ctx, req: &Request, cluster: &str) -> Answer {
    let creds = tri!(body_credentials(req));
    let scope = tri!(caller(ctx, req, creds.as_ref()).await);
    tri!(allowed(&scope, cluster));
    tri!(found(ctx, cluster).await);
    tri!(deletable(ctx, cluster));
    match ctx.store.delete(cluster).await {
        Ok(true) => {}
        Ok(false) => return error(StatusCode::NOT_FOUND, "Object not found"),
        Err(e) => return store_error(e),
    }
    tri!(ctx.reload().await.map_err(store_error));
    json(StatusCode::OK, &serde_json::json!({ "ok": true }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_come_as_pem_or_base64_of_pem() {
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let b64 = base64::engine::general_purpose::STANDARD.encode(pem);
        assert_eq!(pem_of(pem).unwrap().unwrap(), pem.trim());
        assert_eq!(pem_of(&b64).unwrap().unwrap(), pem);
        assert!(pem_of("").unwrap().is_none());
        assert!(pem_of("not base64 !").is_err());
        assert_eq!(enc("/a b"), "%2Fa%20b");
    }
}
