//! Test helpers: an HTTPS client for the sink, and a reference conversion of
//! syslog frames to Varonis events written from the contract (not from
//! `gen::expected`), so generator and verifier are checked against a third,
//! independent reading of the rules. Not a broker: it has no queues, no
//! spool, no retries; it only proves loadgen's own consistency.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

pub async fn post(
    addr: SocketAddr,
    trust_pem: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> anyhow::Result<(u16, http::HeaderMap)> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut trust_pem.as_bytes()) {
        roots.add(c?)?;
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?.to_owned();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    let mut req = http::Request::post("/events").header("host", "127.0.0.1");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body)))?;
    let resp = tokio::time::timeout(Duration::from_secs(20), sender.send_request(req)).await??;
    Ok((resp.status().as_u16(), resp.headers().clone()))
}

/// Splits LF or octet-counted syslog frames.
pub fn split_frames(buf: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = buf;
    while !rest.is_empty() {
        if rest[0].is_ascii_digit() {
            let sp = rest.iter().position(|&b| b == b' ').unwrap();
            let len: usize = std::str::from_utf8(&rest[..sp]).unwrap().parse().unwrap();
            out.push(String::from_utf8(rest[sp + 1..sp + 1 + len].to_vec()).unwrap());
            rest = &rest[sp + 1 + len..];
        } else {
            let i = rest.iter().position(|&b| b == b'\n').unwrap();
            out.push(String::from_utf8(rest[..i].to_vec()).unwrap());
            rest = &rest[i + 1..];
        }
    }
    out
}

fn csv_fields(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                out.last_mut().unwrap().push('"');
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(String::new()),
            (c, _) => out.last_mut().unwrap().push(c),
        }
    }
    out
}

const KEPT: &[&str] = &[
    "fs_create_file",
    "fs_create_directory",
    "fs_read_data",
    "fs_write_data",
    "fs_write_metadata",
    "fs_rename",
    "fs_delete",
];

/// (cluster, event without seq) for a frame qbroker keeps; None otherwise.
pub fn convert(frame: &str) -> Option<(String, Value)> {
    let mut p = frame.splitn(8, ' ');
    let (_pri, ts, host, app) = (p.next()?, p.next()?, p.next()?, p.next()?);
    let (_, _, _, msg) = (p.next()?, p.next()?, p.next()?, p.next()?);
    if !app.starts_with("qumulo") {
        return None;
    }
    let time = format!("{}Z", &ts[..23]);
    let cluster = host.rsplit_once('-').map(|(c, n)| {
        assert!(n.bytes().all(|b| b.is_ascii_digit()));
        c.to_string()
    })?;
    let (user, ip, proto, op, status, file_id, path, target, owner);
    if msg.starts_with('{') {
        let v: Value = serde_json::from_str(msg).unwrap();
        let d = &v["details"];
        user = json!({"sid": v["user_id"]["sid"], "auth_id": v["user_id"]["auth_id"], "name": v["user_id"]["name"]});
        ip = v["user_ip"].clone();
        proto = v["protocol"].clone();
        op = v["operation"].as_str()?.to_string();
        status = v["status"].as_str()?.to_string();
        file_id = d["file_id"].clone();
        path = d["path"].as_str().unwrap_or("").to_string();
        target = d["target"].as_str().map(str::to_string);
        owner = match (
            d["before"]["owner"].as_object(),
            d["after"]["owner"].as_object(),
        ) {
            (Some(b), Some(a)) if b != a => Some(json!({"before": b, "after": a})),
            _ => None,
        };
    } else {
        let f = csv_fields(msg);
        assert_eq!(f.len(), 8, "{msg}");
        user = if f[1].starts_with("S-1-") {
            json!({"sid": f[1], "auth_id": null, "name": null})
        } else {
            json!({"sid": null, "auth_id": null, "name": f[1]})
        };
        ip = json!(f[0]);
        proto = json!(f[2]);
        op = f[3].clone();
        status = f[4].clone();
        file_id = if f[5].is_empty() {
            Value::Null
        } else {
            json!(f[5])
        };
        path = f[6].clone();
        target = (!f[7].is_empty()).then(|| f[7].clone());
        owner = None;
    }
    let denied = status == "fs_access_denied_error";
    if !KEPT.contains(&op.as_str()) && !denied {
        return None;
    }
    let dir = op == "fs_create_directory"
        || path.ends_with('/')
        || target.as_deref().is_some_and(|t| t.ends_with('/'));
    let kind = if dir { "directory" } else { "file" };
    let operation = if denied {
        "access_denied".to_string()
    } else {
        match op.as_str() {
            "fs_create_file" => "file.create".into(),
            "fs_create_directory" => "directory.create".into(),
            "fs_read_data" => "file.read".into(),
            "fs_write_data" => "file.write".into(),
            "fs_delete" => format!("{kind}.delete"),
            "fs_rename" => format!("{kind}.rename"),
            "fs_write_metadata" if owner.is_some() => format!("{kind}.owner_change"),
            "fs_write_metadata" => format!("{kind}.permissions_change"),
            _ => unreachable!(),
        }
    };
    let mut ev = json!({
        "time": time, "node": host, "operation": operation, "object_type": kind, "path": path,
        "file_id": file_id, "user": user, "client_ip": ip, "protocol": proto, "status": status,
        "success": status == "ok", "qumulo_operation": op,
    });
    if op == "fs_rename" {
        ev["new_path"] = json!(target);
    }
    if let (Some(o), false) = (owner, denied) {
        ev["owner"] = o;
    }
    Some((cluster, ev))
}

/// A batch body for `cluster` holding `events`, numbered from `first_seq`.
pub fn batch(cluster: &str, batch_id: &str, first_seq: u64, events: &[Value]) -> Vec<u8> {
    let events: Vec<Value> = events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let mut e = e.clone();
            e["seq"] = json!(first_seq + i as u64);
            e
        })
        .collect();
    serde_json::to_vec(&json!({
        "schema": "qbroker.varonis.v1", "batch_id": batch_id, "cluster": cluster,
        "filer_id": 7, "events": events,
    }))
    .unwrap()
}
