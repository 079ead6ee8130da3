//! encode: the AMQP messages of one spooled batch.
//!
//! A spooled batch is the JSON of schema `qbroker.varonis.v1` (what HTTPS
//! targets get as is). An AMQP target sends it as one message (`message =
//! "batch"`) or one message per event (`"event"`: each body is a batch of that
//! one event, so a consumer reads every message the same way), encoded as that
//! JSON or as Protobuf (`proto/qbroker.proto`, the messages below, written by
//! hand with prost's derive so that the build needs no `protoc`).
//!
//! Message ids: the batch id, or `<batch id>-<index of the event>` per event;
//! a batch sent again (retry, reconnect, restart) gets the same ids, so a
//! consumer can drop copies.

use bytes::Bytes;
use prost::Message as _;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::config::{AmqpTarget, Encoding, MessageMode};
use crate::spool::Record;

/// `content_type` of each encoding.
pub const JSON: &str = "application/json";
pub const PROTOBUF: &str = "application/x-protobuf";

/// One message to publish.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub message_id: String,
    pub routing_key: String,
    pub body: Bytes,
    /// Events the message carries.
    pub events: u32,
}

/// What every message of one batch shares.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub cluster: String,
    pub filer_id: Option<u64>,
    pub content_type: &'static str,
    pub schema: String,
}

/// A batch that cannot be turned into messages: its record is damaged (the
/// spool's checksum passed, so this is a bug or a foreign record), and no
/// retry can help.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("the batch is not valid JSON of schema qbroker.varonis.v1: {0}")]
    Json(#[from] serde_json::Error),
    #[error("routing key {0:?} is longer than 255 bytes once filled in")]
    RoutingKey(String),
    #[error("the batch is not JSON of schema qbroker.varonis.v1: {0}")]
    Shape(&'static str),
}

#[derive(Deserialize)]
struct BatchHead<'a> {
    #[serde(borrow)]
    schema: Option<std::borrow::Cow<'a, str>>,
    filer_id: Option<u64>,
    #[serde(borrow, default)]
    events: Vec<&'a RawValue>,
}

/// The fields before `"events"` of a batch (what the batcher writes first:
/// schema, cluster, filer_id, batch_id), parsed without reading the events:
/// one message per batch in JSON sends the body as it is, so only its head is
/// needed, and scanning a whole batch of events for it cost as much as the
/// rest of the AMQP path together. The body must be an object whose last
/// member is the `"events"` array.
fn head_only(body: &[u8]) -> Result<BatchHead<'_>, EncodeError> {
    let at = events_key(body).ok_or(EncodeError::Shape("no \"events\" member"))?;
    let tail = body[at..].trim_ascii_end();
    if !tail.ends_with(b"]}") {
        return Err(EncodeError::Shape(
            "the events array is not the last member",
        ));
    }
    // `{"schema":…,"batch_id":"…",` + `}`: the members before events.
    let mut head = body[..at].trim_ascii_end().to_vec();
    if head.last() == Some(&b',') {
        head.pop();
    }
    head.push(b'}');
    let parsed: BatchHead<'_> = serde_json::from_slice(&head)?;
    Ok(BatchHead {
        schema: parsed
            .schema
            .map(|c| std::borrow::Cow::Owned(c.into_owned())),
        filer_id: parsed.filer_id,
        events: Vec::new(),
    })
}

/// Where the member `"events"` of the top-level object starts: the first
/// string at depth 1 spelled `"events"` and followed by a colon (strings and
/// their escapes are skipped, so a cluster name holding those letters does not
/// count).
fn events_key(body: &[u8]) -> Option<usize> {
    const KEY: &[u8] = b"\"events\"";
    let (mut depth, mut i) = (0u32, 0usize);
    while i < body.len() {
        match body[i] {
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.checked_sub(1)?,
            b'"' => {
                if depth == 1 && body[i..].starts_with(KEY) {
                    let after = body[i + KEY.len()..].trim_ascii_start();
                    if after.first() == Some(&b':') {
                        return Some(i);
                    }
                }
                // Skip the string.
                i += 1;
                while i < body.len() {
                    match body[i] {
                        b'\\' => i += 1,
                        b'"' => break,
                        _ => {}
                    }
                    i += 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// The messages of `record` for a target with settings `s`.
pub fn messages(record: &Record, s: &AmqpTarget) -> Result<(Envelope, Vec<Outgoing>), EncodeError> {
    let head: BatchHead<'_> = match (s.message, s.encoding) {
        (MessageMode::Batch, Encoding::Json) => head_only(&record.body)?,
        _ => serde_json::from_slice(&record.body)?,
    };
    let envelope = Envelope {
        cluster: record.cluster.clone(),
        filer_id: head.filer_id,
        content_type: match s.encoding {
            Encoding::Json => JSON,
            Encoding::Protobuf => PROTOBUF,
        },
        schema: head
            .schema
            .as_deref()
            .unwrap_or(crate::batch::SCHEMA)
            .to_string(),
    };
    let key = |node: Option<&str>| -> Result<String, EncodeError> {
        let k = routing_key(&s.routing_key, &record.cluster, head.filer_id, node);
        if k.len() > 255 {
            return Err(EncodeError::RoutingKey(k));
        }
        Ok(k)
    };
    let mut out = Vec::new();
    match s.message {
        MessageMode::Batch => {
            let body = match s.encoding {
                Encoding::Json => record.body.clone(),
                Encoding::Protobuf => Bytes::from(
                    to_proto(&envelope, &record.batch_id, &head.events)?.encode_to_vec(),
                ),
            };
            out.push(Outgoing {
                message_id: record.batch_id.clone(),
                routing_key: key(None)?,
                body,
                events: record.events,
            });
        }
        MessageMode::Event => {
            for (i, event) in head.events.iter().enumerate() {
                let node = node_of(event);
                let body = match s.encoding {
                    Encoding::Json => Bytes::from(json_of_one(&envelope, &record.batch_id, event)),
                    Encoding::Protobuf => Bytes::from(
                        to_proto(&envelope, &record.batch_id, std::slice::from_ref(event))?
                            .encode_to_vec(),
                    ),
                };
                out.push(Outgoing {
                    message_id: format!("{}-{i}", record.batch_id),
                    routing_key: key(node.as_deref())?,
                    body,
                    events: 1,
                });
            }
        }
    }
    Ok((envelope, out))
}

/// The routing key template filled in.
pub fn routing_key(
    template: &str,
    cluster: &str,
    filer_id: Option<u64>,
    node: Option<&str>,
) -> String {
    let mut k = template.replace("{cluster}", cluster);
    if k.contains("{filer_id}") {
        k = k.replace(
            "{filer_id}",
            &filer_id.map_or(String::new(), |f| f.to_string()),
        );
    }
    if k.contains("{node}") {
        k = k.replace("{node}", node.unwrap_or_default());
    }
    k
}

fn node_of(event: &RawValue) -> Option<String> {
    #[derive(Deserialize)]
    struct Node {
        node: Option<String>,
    }
    serde_json::from_str::<Node>(event.get()).ok()?.node
}

/// The batch JSON holding one event.
fn json_of_one(e: &Envelope, batch_id: &str, event: &RawValue) -> Vec<u8> {
    let mut out = Vec::with_capacity(event.get().len() + 160);
    out.extend_from_slice(b"{\"schema\":");
    serde_json::to_writer(&mut out, &e.schema).expect("a string serialises");
    out.extend_from_slice(b",\"cluster\":");
    serde_json::to_writer(&mut out, &e.cluster).expect("a string serialises");
    out.extend_from_slice(b",\"filer_id\":");
    serde_json::to_writer(&mut out, &e.filer_id).expect("a number serialises");
    out.extend_from_slice(b",\"batch_id\":");
    serde_json::to_writer(&mut out, batch_id).expect("a string serialises");
    out.extend_from_slice(b",\"events\":[");
    out.extend_from_slice(event.get().as_bytes());
    out.extend_from_slice(b"]}");
    out
}

// ---------------------------------------------------------------------------
// Protobuf: proto/qbroker.proto, package qbroker.varonis.v1. Keep the two in step.

#[derive(Clone, PartialEq, prost::Message)]
pub struct Batch {
    #[prost(string, tag = "1")]
    pub schema: String,
    #[prost(string, tag = "2")]
    pub batch_id: String,
    #[prost(string, tag = "3")]
    pub cluster: String,
    #[prost(uint64, optional, tag = "4")]
    pub filer_id: Option<u64>,
    #[prost(message, repeated, tag = "5")]
    pub events: Vec<Event>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    #[prost(string, tag = "2")]
    pub time: String,
    #[prost(string, optional, tag = "3")]
    pub node: Option<String>,
    #[prost(string, tag = "4")]
    pub operation: String,
    #[prost(string, tag = "5")]
    pub object_type: String,
    #[prost(string, optional, tag = "6")]
    pub path: Option<String>,
    #[prost(string, optional, tag = "7")]
    pub new_path: Option<String>,
    #[prost(string, optional, tag = "8")]
    pub file_id: Option<String>,
    #[prost(message, optional, tag = "9")]
    pub user: Option<User>,
    #[prost(string, optional, tag = "10")]
    pub client_ip: Option<String>,
    #[prost(string, optional, tag = "11")]
    pub protocol: Option<String>,
    #[prost(string, optional, tag = "12")]
    pub status: Option<String>,
    #[prost(bool, tag = "13")]
    pub success: bool,
    #[prost(message, optional, tag = "14")]
    pub owner: Option<OwnerChange>,
    #[prost(message, optional, tag = "15")]
    pub acl: Option<AclChange>,
    #[prost(string, optional, tag = "16")]
    pub qumulo_operation: Option<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct User {
    #[prost(string, optional, tag = "1")]
    pub sid: Option<String>,
    #[prost(string, optional, tag = "2")]
    pub auth_id: Option<String>,
    #[prost(string, optional, tag = "3")]
    pub name: Option<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Principal {
    #[prost(string, optional, tag = "1")]
    pub sid: Option<String>,
    #[prost(string, optional, tag = "2")]
    pub auth_id: Option<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct OwnerChange {
    #[prost(message, optional, tag = "1")]
    pub before: Option<Principal>,
    #[prost(message, optional, tag = "2")]
    pub after: Option<Principal>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct AclChange {
    #[prost(bool, optional, tag = "1")]
    pub protected: Option<bool>,
    #[prost(message, repeated, tag = "2")]
    pub added: Vec<Ace>,
    #[prost(message, repeated, tag = "3")]
    pub removed: Vec<Ace>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Ace {
    #[prost(string, tag = "1")]
    pub r#type: String,
    #[prost(message, optional, tag = "2")]
    pub trustee: Option<Trustee>,
    #[prost(string, repeated, tag = "3")]
    pub rights: Vec<String>,
    #[prost(string, repeated, tag = "4")]
    pub flags: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Trustee {
    #[prost(string, optional, tag = "1")]
    pub domain: Option<String>,
    #[prost(string, optional, tag = "2")]
    pub auth_id: Option<String>,
    #[prost(string, optional, tag = "3")]
    pub sid: Option<String>,
    #[prost(string, optional, tag = "4")]
    pub name: Option<String>,
    #[prost(int64, optional, tag = "5")]
    pub uid: Option<i64>,
    #[prost(int64, optional, tag = "6")]
    pub gid: Option<i64>,
}

/// A JSON scalar as Protobuf text: strings as they are, numbers and booleans
/// in their JSON form, null (or absent) as unset.
fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

fn principal(v: Option<&Value>) -> Option<Principal> {
    let v = v.filter(|v| v.is_object())?;
    Some(Principal {
        sid: text(v.get("sid")),
        auth_id: text(v.get("auth_id")),
    })
}

fn aces(v: Option<&Value>) -> Vec<Ace> {
    let Some(list) = v.and_then(Value::as_array) else {
        return Vec::new();
    };
    list.iter()
        .map(|a| Ace {
            r#type: text(a.get("type")).unwrap_or_default(),
            trustee: a.get("trustee").filter(|t| t.is_object()).map(|t| Trustee {
                domain: text(t.get("domain")),
                auth_id: text(t.get("auth_id")),
                sid: text(t.get("sid")),
                name: text(t.get("name")),
                uid: t.get("uid").and_then(Value::as_i64),
                gid: t.get("gid").and_then(Value::as_i64),
            }),
            rights: strings(a.get("rights")),
            flags: strings(a.get("flags")),
        })
        .collect()
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|l| l.iter().filter_map(|s| text(Some(s))).collect())
        .unwrap_or_default()
}

fn event_of(v: &Value) -> Event {
    Event {
        seq: v.get("seq").and_then(Value::as_u64).unwrap_or_default(),
        time: text(v.get("time")).unwrap_or_default(),
        node: text(v.get("node")),
        operation: text(v.get("operation")).unwrap_or_default(),
        object_type: text(v.get("object_type")).unwrap_or_default(),
        path: text(v.get("path")),
        new_path: text(v.get("new_path")),
        file_id: text(v.get("file_id")),
        user: v.get("user").filter(|u| u.is_object()).map(|u| User {
            sid: text(u.get("sid")),
            auth_id: text(u.get("auth_id")),
            name: text(u.get("name")),
        }),
        client_ip: text(v.get("client_ip")),
        protocol: text(v.get("protocol")),
        status: text(v.get("status")),
        success: v.get("success").and_then(Value::as_bool).unwrap_or(false),
        owner: v
            .get("owner")
            .filter(|o| o.is_object())
            .map(|o| OwnerChange {
                before: principal(o.get("before")),
                after: principal(o.get("after")),
            }),
        acl: v.get("acl").filter(|a| a.is_object()).map(|a| AclChange {
            protected: a.get("protected").and_then(Value::as_bool),
            added: aces(a.get("added")),
            removed: aces(a.get("removed")),
        }),
        qumulo_operation: text(v.get("qumulo_operation")),
    }
}

fn to_proto(e: &Envelope, batch_id: &str, events: &[&RawValue]) -> Result<Batch, EncodeError> {
    let events = events
        .iter()
        .map(|raw| serde_json::from_str::<Value>(raw.get()).map(|v| event_of(&v)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Batch {
        schema: e.schema.clone(),
        batch_id: batch_id.to_string(),
        cluster: e.cluster.clone(),
        filer_id: e.filer_id,
        events,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn settings(encoding: Encoding, message: MessageMode, key: &str) -> AmqpTarget {
        AmqpTarget {
            vhost: "/".to_string(),
            username: "u".to_string(),
            password: Secret::new("p"),
            exchange: "x".to_string(),
            routing_key: key.to_string(),
            encoding,
            message,
            heartbeat_secs: 30,
            max_unconfirmed: 10,
        }
    }

    const EVENT_A: &str = r#"{"seq":1,"time":"2024-01-02T03:04:05.006Z","node":"east-1","operation":"file.owner_change","object_type":"file","path":"/a","file_id":"123456789012345678901","user":{"sid":"S-1","auth_id":"500","name":null},"client_ip":"10.0.0.1","protocol":"nfs3","status":"ok","success":true,"owner":{"before":{"sid":"S-1","auth_id":"500"},"after":{"sid":"S-2","auth_id":"501"}},"qumulo_operation":"fs_write_metadata"}"#;
    const EVENT_B: &str = r#"{"seq":2,"time":"2024-01-02T03:04:05.007Z","node":"east-2","operation":"file.permissions_add","object_type":"file","path":"/b","file_id":null,"user":{"sid":"S-1","auth_id":"500","name":"bob"},"client_ip":"10.0.0.1","protocol":"smb2","status":"ok","success":true,"acl":{"added":[{"type":"ALLOWED","trustee":{"domain":"LOCAL","auth_id":"501","sid":"S-2","name":"x","uid":501},"rights":["READ"],"flags":[]}]},"qumulo_operation":"fs_write_metadata"}"#;

    fn record() -> Record {
        let body = format!(
            r#"{{"schema":"qbroker.varonis.v1","cluster":"east","filer_id":7,"batch_id":"b1","events":[{EVENT_A},{EVENT_B}]}}"#
        );
        Record {
            id: 1,
            batch_id: "b1".to_string(),
            cluster: "east".to_string(),
            events: 2,
            received: Vec::new(),
            body: Bytes::from(body),
            replayed: false,
        }
    }

    #[test]
    fn one_message_per_batch_keeps_the_json_as_is() {
        let r = record();
        let s = settings(Encoding::Json, MessageMode::Batch, "{cluster}.{filer_id}");
        let (env, msgs) = messages(&r, &s).unwrap();
        assert_eq!(env.filer_id, Some(7));
        assert_eq!(env.content_type, JSON);
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].body, r.body);
        assert_eq!(msgs[0].message_id, "b1");
        assert_eq!(msgs[0].routing_key, "east.7");
        assert_eq!(msgs[0].events, 2);
    }

    #[test]
    fn one_message_per_event_is_a_batch_of_one_with_an_indexed_id() {
        let r = record();
        let s = settings(Encoding::Json, MessageMode::Event, "{cluster}.{node}");
        let (_, msgs) = messages(&r, &s).unwrap();
        assert_eq!(msgs.len(), 2);
        let ids: Vec<&str> = msgs.iter().map(|m| m.message_id.as_str()).collect();
        assert_eq!(ids, ["b1-0", "b1-1"]);
        assert_eq!(msgs[1].routing_key, "east.east-2");
        let v: Value = serde_json::from_slice(&msgs[1].body).unwrap();
        assert_eq!(v["batch_id"], "b1");
        assert_eq!(v["filer_id"], 7);
        assert_eq!(
            v["events"][0],
            serde_json::from_str::<Value>(EVENT_B).unwrap()
        );
    }

    #[test]
    fn protobuf_carries_every_field() {
        let r = record();
        let s = settings(Encoding::Protobuf, MessageMode::Batch, "{cluster}");
        let (env, msgs) = messages(&r, &s).unwrap();
        assert_eq!(env.content_type, PROTOBUF);
        let b = Batch::decode(msgs[0].body.clone()).unwrap();
        assert_eq!(
            (b.batch_id.as_str(), b.cluster.as_str(), b.filer_id),
            ("b1", "east", Some(7))
        );
        let a = &b.events[0];
        assert_eq!(a.seq, 1);
        assert_eq!(a.file_id.as_deref(), Some("123456789012345678901"));
        assert_eq!(a.user.as_ref().unwrap().name, None);
        assert_eq!(
            a.owner
                .as_ref()
                .unwrap()
                .after
                .as_ref()
                .unwrap()
                .auth_id
                .as_deref(),
            Some("501")
        );
        let e = &b.events[1];
        assert_eq!(e.file_id, None);
        let ace = &e.acl.as_ref().unwrap().added[0];
        assert_eq!(ace.trustee.as_ref().unwrap().uid, Some(501));
        assert_eq!(ace.rights, ["READ"]);
    }

    #[test]
    fn the_head_is_read_without_the_events_and_strings_do_not_fool_it() {
        let s = settings(Encoding::Json, MessageMode::Batch, "{cluster}.{filer_id}");
        // A cluster name that spells the events key, escaped quotes and all.
        let cluster = r#"x\"events\":[{"#;
        let body = format!(
            r#"{{"schema":"qbroker.varonis.v1","cluster":"{cluster}","filer_id":null,"batch_id":"b\"2", "events" : [{EVENT_A}]}} "#
        );
        let mut r = record();
        r.body = Bytes::from(body);
        r.events = 1;
        let (env, msgs) = messages(&r, &s).unwrap();
        assert_eq!(env.filer_id, None);
        assert_eq!(env.schema, "qbroker.varonis.v1");
        assert_eq!((msgs[0].events, msgs[0].routing_key.as_str()), (1, "east."));
        assert_eq!(msgs[0].body, r.body);
        assert_eq!(events_key(b"{\"schema\":\"events\"}"), None);
        assert_eq!(events_key(br#"{"a":{"events":[]},"events":[]}"#), Some(19));
    }

    #[test]
    fn a_batch_cut_short_or_without_events_is_an_error_in_every_mode() {
        let s = settings(Encoding::Json, MessageMode::Batch, "{cluster}");
        let mut r = record();
        let cut = r.body.len() - 10;
        r.body = r.body.slice(..cut);
        assert!(matches!(messages(&r, &s), Err(EncodeError::Shape(_))));
        r.body = Bytes::from_static(br#"{"schema":"qbroker.varonis.v1","batch_id":"b1"}"#);
        assert!(matches!(messages(&r, &s), Err(EncodeError::Shape(_))));
        r.body = Bytes::from_static(br#"{"filer_id":"seven","events":[]}"#);
        assert!(matches!(messages(&r, &s), Err(EncodeError::Json(_))));
    }

    #[test]
    fn a_damaged_batch_is_an_error() {
        let mut r = record();
        r.body = Bytes::from_static(b"{\"events\": [");
        let s = settings(Encoding::Json, MessageMode::Batch, "{cluster}");
        assert!(messages(&r, &s).is_err());
    }
}
