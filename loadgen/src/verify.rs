//! verify: checks each batch the sink accepts against the
//! `qbroker.varonis.v1` schema and against the events the generator says
//! qbroker must deliver.
//!
//! Every delivered event's `file_id` names its (cluster, node, seq); the
//! verifier regenerates that event from the seed and compares it field by
//! field, then marks the seq received. Per node it keeps a watermark (every
//! seq below it arrived) and the ranges received above it, so memory grows
//! with the number of gaps, not with the number of events.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use hdrhistogram::Histogram;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::acl::{expected_ops, object_of, Model, ObjState, OBJECTS_PER_NODE};
use crate::gen::{days_from_civil, now_unix_us, Expected, GenCore, Identity};

pub const SCHEMA: &str = "qbroker.varonis.v1";
/// How many problem descriptions a summary keeps.
const MAX_PROBLEMS: usize = 20;

// ---------------------------------------------------------------- per node

/// Whether a seq was seen before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Receipt {
    New,
    Duplicate,
}

/// The seqs one node's events arrived with.
#[derive(Clone, Debug, Default)]
pub struct NodeTrack {
    /// every seq below has arrived
    watermark: u64,
    /// arrived ranges above the watermark, start -> end (exclusive);
    /// disjoint and never adjacent
    above: BTreeMap<u64, u64>,
    /// distinct seqs received
    pub received: u64,
    pub duplicates: u64,
    /// arrivals below the highest seq seen before them
    pub reordered: u64,
    max_seen: Option<u64>,
}

impl NodeTrack {
    pub fn record(&mut self, seq: u64) -> Receipt {
        if seq < self.watermark {
            self.duplicates += 1;
            return Receipt::Duplicate;
        }
        if let Some((_, &end)) = self.above.range(..=seq).next_back() {
            if seq < end {
                self.duplicates += 1;
                return Receipt::Duplicate;
            }
        }
        match self.max_seen {
            Some(m) if seq < m => self.reordered += 1,
            _ => self.max_seen = Some(seq),
        }
        self.received += 1;
        if seq == self.watermark {
            self.watermark += 1;
            if let Some(end) = self.above.remove(&self.watermark) {
                self.watermark = end;
            }
        } else {
            let (mut start, mut end) = (seq, seq + 1);
            if let Some((&s, &e)) = self.above.range(..seq).next_back() {
                if e == seq {
                    start = s;
                    self.above.remove(&s);
                }
            }
            if let Some(e) = self.above.remove(&end) {
                end = e;
            }
            self.above.insert(start, end);
        }
        Receipt::New
    }

    /// Distinct seqs received below `total`.
    pub fn received_below(&self, total: u64) -> u64 {
        let mut n = self.watermark.min(total);
        for (&s, &e) in self.above.range(..total) {
            n += e.min(total) - s;
        }
        n
    }

    /// Missing ranges below `total` (or below the highest seq seen), at most `limit`.
    pub fn gaps(&self, total: Option<u64>, limit: usize) -> Vec<(u64, u64)> {
        let total = total.unwrap_or(self.max_seen.map_or(0, |m| m + 1));
        let mut out = Vec::new();
        let mut at = self.watermark;
        for (&s, &e) in &self.above {
            if at >= total || out.len() >= limit {
                return out;
            }
            out.push((at, s.min(total)));
            at = e;
        }
        if at < total && out.len() < limit {
            out.push((at, total));
        }
        out
    }

    /// Number of `above` ranges (what the tracker's memory grows with).
    pub fn ranges(&self) -> usize {
        self.above.len()
    }

    pub fn highest(&self) -> Option<u64> {
        self.max_seen
    }
}

// ---------------------------------------------------------------- wire types

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope<'a> {
    #[serde(borrow)]
    schema: Cow<'a, str>,
    #[serde(borrow)]
    batch_id: Cow<'a, str>,
    #[serde(borrow)]
    cluster: Cow<'a, str>,
    #[serde(borrow)]
    filer_id: &'a RawValue,
    #[serde(borrow)]
    events: Vec<&'a RawValue>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct WireUser<'a> {
    #[serde(borrow)]
    sid: Option<Cow<'a, str>>,
    #[serde(borrow)]
    auth_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
}

#[derive(Deserialize, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
struct WireOwnerId<'a> {
    #[serde(borrow)]
    sid: Option<Cow<'a, str>>,
    #[serde(borrow)]
    auth_id: Option<Cow<'a, str>>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct WireOwner<'a> {
    #[serde(borrow)]
    before: WireOwnerId<'a>,
    #[serde(borrow)]
    after: WireOwnerId<'a>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct WireEvent<'a> {
    seq: u64,
    #[serde(borrow)]
    time: Cow<'a, str>,
    #[serde(borrow)]
    node: Cow<'a, str>,
    #[serde(borrow)]
    operation: Cow<'a, str>,
    #[serde(borrow)]
    object_type: Cow<'a, str>,
    #[serde(borrow)]
    path: Cow<'a, str>,
    #[serde(default, borrow)]
    new_path: Option<Cow<'a, str>>,
    #[serde(borrow)]
    file_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    user: WireUser<'a>,
    #[serde(borrow)]
    client_ip: Option<Cow<'a, str>>,
    #[serde(borrow)]
    protocol: Option<Cow<'a, str>>,
    #[serde(borrow)]
    status: Cow<'a, str>,
    success: bool,
    #[serde(default, borrow)]
    owner: Option<WireOwner<'a>>,
    #[serde(default, borrow)]
    acl: Option<&'a RawValue>,
    #[serde(borrow)]
    qumulo_operation: Cow<'a, str>,
}

fn add_counts(into: &mut AclCounts, n: AclCounts) {
    into.first += n.first;
    into.exact += n.exact;
    into.fallbacks += n.fallbacks;
    into.unverified += n.unverified;
    into.mismatches += n.mismatches;
}

/// A Qumulo audit record as a peer passes it on; only what is checked.
#[derive(Deserialize)]
struct PeerRecord<'a> {
    #[serde(default, borrow)]
    operation: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    status: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    details: Option<PeerDetails<'a>>,
}

#[derive(Deserialize, Default)]
struct PeerDetails<'a> {
    #[serde(default, borrow)]
    file_id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    path: Option<Cow<'a, str>>,
}

/// Only the file id, for events that fail the strict parse.
#[derive(Deserialize)]
struct LenientEvent {
    file_id: Option<String>,
}

/// `2026-01-27T14:12:23.955Z` to milliseconds since the epoch; exactly that shape.
pub fn parse_event_time_ms(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 24 {
        return None;
    }
    for (i, &c) in b.iter().enumerate() {
        let ok = match i {
            4 | 7 => c == b'-',
            10 => c == b'T',
            13 | 16 => c == b':',
            19 => c == b'.',
            23 => c == b'Z',
            _ => c.is_ascii_digit(),
        };
        if !ok {
            return None;
        }
    }
    let n = |r: std::ops::Range<usize>| -> u64 {
        b[r].iter().fold(0u64, |a, &c| a * 10 + (c - b'0') as u64)
    };
    let (y, mo, d) = (n(0..4), n(5..7), n(8..10));
    let (h, mi, sec, ms) = (n(11..13), n(14..16), n(17..19), n(20..23));
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let days = days_from_civil(y as i64, mo as u32, d as u32);
    if days < 0 {
        return None;
    }
    Some(((days as u64 * 86_400 + h * 3600 + mi * 60 + sec) * 1000) + ms)
}

// ---------------------------------------------------------------- the verifier

/// What the HTTP layer knows about a request.
pub struct BatchMeta<'a> {
    pub content_type: Option<&'a str>,
    pub content_encoding: Option<&'a str>,
    pub idempotency_key: Option<&'a str>,
    /// The id of what was delivered, when that is not the whole batch (an
    /// AMQP message per event: `<batch id>-<index>`). A second delivery of the
    /// same id is a redelivery; siblings of one batch are not. None: the
    /// batch id.
    pub delivery_id: Option<&'a str>,
}

/// Why a batch was refused (the sink answers with the status).
#[derive(Debug)]
pub struct Rejection {
    pub status: u16,
    pub reason: String,
}

/// Summary of latency, in milliseconds.
#[derive(Clone, Debug, Default, serde::Serialize, PartialEq)]
pub struct Latency {
    pub count: u64,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

/// Everything the sink saw, at one moment.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct SinkSummary {
    /// batches accepted (200), duplicates included
    pub batches: u64,
    /// accepted batches whose batch_id had been accepted before
    pub duplicate_batches: u64,
    /// events in accepted batches, duplicates included
    pub events_received: u64,
    /// distinct expected events received
    pub delivered: u64,
    /// expected events missing: below the sender's totals when known, else
    /// in the gaps below each node's highest seq
    pub lost: u64,
    /// expected events received more than once
    pub duplicated: u64,
    /// of which inside a re-delivered batch (same batch_id): a retry
    pub duplicated_in_redelivered_batches: u64,
    /// arrived after a higher seq of the same node (across batches: allowed)
    pub reordered: u64,
    /// a node's seq went down inside one batch
    pub order_violations: u64,
    /// events qbroker should have filtered out
    pub unexpected: u64,
    /// events whose file_id is not from this generator configuration
    pub foreign: u64,
    pub schema_errors: u64,
    /// events whose fields differ from the regenerated expectation
    pub mismatches: u64,
    /// (node, first missing seq, end) for the first gaps
    pub gaps: Vec<(String, u64, u64)>,
    /// namespace metadata changes (records) received
    pub acl_records: u64,
    /// of which an object's first, which qbroker cannot compare: generic event
    pub acl_first: u64,
    /// of which exactly the expected permission, protection or owner events
    pub acl_exact: u64,
    /// of which the generic event instead (API error, timeout, queue full)
    pub acl_fallbacks: u64,
    /// of which not checked: the record after a fallback may hold two changes
    pub acl_unverified: u64,
    /// records the senders wrote that never arrived (when the totals are known)
    pub acl_lost: u64,
    pub latency_ms: Latency,
    pub problems: Vec<String>,
}

impl SinkSummary {
    /// Nothing lost, invented, malformed or altered; duplicates only from retries.
    pub fn failures(&self) -> Vec<String> {
        let mut f = Vec::new();
        let mut check = |n: u64, what: &str| {
            if n > 0 {
                f.push(format!("{n} {what}"));
            }
        };
        check(self.lost, "events lost");
        check(self.acl_lost, "metadata changes lost");
        check(
            self.duplicated - self.duplicated_in_redelivered_batches.min(self.duplicated),
            "events duplicated outside a re-delivered batch",
        );
        check(self.order_violations, "order violations inside a batch");
        check(self.unexpected, "filtered-out events delivered");
        check(self.foreign, "events with a foreign file_id");
        check(self.schema_errors, "schema errors");
        check(self.mismatches, "events with wrong fields");
        f
    }
}

struct Checked {
    /// (identity, latency in us when known), for events that identify as ours
    ids: Vec<(Identity, Option<u64>)>,
    schema_errors: u64,
    mismatches: u64,
    order_violations: u64,
    unexpected: u64,
    foreign: u64,
    problems: Vec<String>,
    /// This delivery's id was seen before.
    redelivered: bool,
}

impl Checked {
    fn problem(&mut self, msg: impl FnOnce() -> String) {
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(msg());
        }
    }
}

struct State {
    nodes: HashMap<(u16, u16), NodeTrack>,
    batch_ids: HashSet<String>,
    batches: u64,
    duplicate_batches: u64,
    events_received: u64,
    dup_in_redelivered: u64,
    schema_errors: u64,
    mismatches: u64,
    order_violations: u64,
    unexpected: u64,
    foreign: u64,
    latency: Histogram<u64>,
    problems: Vec<String>,
}

/// Shared by all of the sink's connections.
pub struct Verifier {
    core: Arc<GenCore>,
    state: Mutex<State>,
    acl: Mutex<AclVerify>,
}

/// One object's records, as the sink sees them.
struct AclTrack {
    /// records received so far (the next is this version)
    records: u64,
    /// the state after the last record started
    state: ObjState,
    /// the broker seq of the record being received
    seq: Option<u64>,
    /// what the record being received should be, and the generic form
    want: Vec<(String, Option<serde_json::Value>)>,
    generic: Vec<String>,
    first: bool,
    got: Vec<(String, Option<serde_json::Value>)>,
    /// the record before was a fallback: this one may hold two changes
    unsure: bool,
}

#[derive(Default, Clone, Copy)]
struct AclCounts {
    first: u64,
    exact: u64,
    fallbacks: u64,
    unverified: u64,
    mismatches: u64,
}

impl AclTrack {
    /// Classify the finished record; `None` when it is a mismatch.
    fn classify(&self, n: &mut AclCounts, lenient: bool) -> bool {
        if self.got.is_empty() {
            return true;
        }
        let generic_form = self.got.len() == 1
            && self.got[0].1.is_none()
            && self.generic.iter().any(|g| {
                let strip = |s: &str| s.split_once('.').map(|(_, b)| b.to_string());
                strip(g) == strip(&self.got[0].0)
            });
        if self.got == self.want {
            if self.first {
                n.first += 1;
            } else {
                n.exact += 1;
            }
            true
        } else if generic_form {
            n.fallbacks += 1;
            true
        } else if self.unsure || lenient {
            n.unverified += 1;
            true
        } else {
            n.mismatches += 1;
            false
        }
    }
}

#[derive(Default)]
struct AclVerify {
    objects: HashMap<(u16, u16, u64), AclTrack>,
    /// records per node
    nodes: HashMap<(u16, u16), u64>,
    counts: AclCounts,
    sent: Option<HashMap<(u16, u16), u64>>,
    /// Only the form is checked: with a slow API qbroker reads an ACL well
    /// after the change, when later changes may already be in it.
    lenient: bool,
}

fn opt_eq(got: &Option<Cow<'_, str>>, want: &Option<String>) -> bool {
    got.as_deref() == want.as_deref()
}

impl Verifier {
    pub fn new(core: Arc<GenCore>) -> Self {
        Verifier {
            acl: Mutex::new(AclVerify::default()),
            core,
            state: Mutex::new(State {
                nodes: HashMap::new(),
                batch_ids: HashSet::new(),
                batches: 0,
                duplicate_batches: 0,
                events_received: 0,
                dup_in_redelivered: 0,
                schema_errors: 0,
                mismatches: 0,
                order_violations: 0,
                unexpected: 0,
                foreign: 0,
                latency: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("bounds"),
                problems: Vec::new(),
            }),
        }
    }

    pub fn core(&self) -> &Arc<GenCore> {
        &self.core
    }

    /// The senders' namespace metadata changes per node, for the loss count.
    pub fn set_acl_totals(&self, totals: HashMap<(u16, u16), u64>) {
        self.acl.lock().expect("acl lock").sent = Some(totals);
    }

    /// Check metadata change records for form only (see `AclVerify::lenient`).
    pub fn set_acl_lenient(&self, lenient: bool) {
        self.acl.lock().expect("acl lock").lenient = lenient;
    }

    /// Namespace metadata change records received so far.
    pub fn acl_records(&self) -> u64 {
        self.acl.lock().expect("acl lock").nodes.values().sum()
    }

    /// One event about a namespace object: part of the object's next record.
    fn check_acl_event(
        &self,
        env: &Envelope<'_>,
        ev: &WireEvent<'_>,
        id: Identity,
        object: u64,
        c: &mut Checked,
    ) {
        let model = Model::new(self.core.clone());
        let mut a = self.acl.lock().expect("acl lock");
        let key = (id.cluster, id.node, object);
        if object >= OBJECTS_PER_NODE {
            c.foreign += 1;
            return;
        }
        let a = &mut *a;
        let t = a.objects.entry(key).or_insert_with(|| AclTrack {
            records: 0,
            state: model.initial(id.cluster, id.node, object),
            seq: None,
            want: Vec::new(),
            generic: Vec::new(),
            first: true,
            got: Vec::new(),
            unsure: false,
        });
        if t.seq != Some(ev.seq) {
            // the record before is complete
            let mut n = AclCounts::default();
            if !t.classify(&mut n, a.lenient) {
                c.problem(|| {
                    format!(
                        "{} object {object} record {}: got {:?}, want {:?}",
                        self.core.hostname(id.cluster, id.node),
                        t.records - 1,
                        t.got,
                        t.want
                    )
                });
            }
            let was_fallback = n.fallbacks > 0 || n.unverified > 0;
            add_counts(&mut a.counts, n);
            let v = t.records;
            t.records += 1;
            *a.nodes.entry((id.cluster, id.node)).or_default() += 1;
            let change = model.change(id.cluster, id.node, object, v, &t.state);
            let before = t.state.clone();
            let dir = if crate::acl::is_dir(object) {
                "directory"
            } else {
                "file"
            };
            let chown = matches!(change, crate::acl::Change::Chown(_));
            let generic = if chown {
                "owner_change"
            } else {
                "permissions_change"
            };
            t.generic = vec![format!("file.{generic}"), format!("directory.{generic}")];
            t.want = if v == 0 {
                vec![(format!("{dir}.{generic}"), None)]
            } else {
                expected_ops(&model, object, change, &before)
            };
            t.first = v == 0;
            t.unsure = was_fallback;
            Model::apply(&mut t.state, change);
            t.seq = Some(ev.seq);
            t.got.clear();
            // the fields every event of the record shares
            let source = model.event(id.cluster, id.node, object, v, &before, change);
            let mut want = self.core.expected(&source);
            want.operation = ev.operation.to_string();
            want.object_type = if ev.operation.starts_with("directory.") {
                "directory"
            } else {
                "file"
            };
            if !ev.operation.ends_with(".owner_change") {
                want.owner = None;
            }
            if env.cluster != want.cluster {
                c.mismatches += 1;
            }
            if let Some(diff) = compare(ev, &want) {
                c.mismatches += 1;
                c.problem(|| format!("{} object {object} record {v}: {diff}", want.node));
            }
        }
        let acl = ev
            .acl
            .and_then(|raw| serde_json::from_str::<serde_json::Value>(raw.get()).ok());
        t.got.push((ev.operation.to_string(), acl));
    }

    /// Distinct expected events received so far (cheap; for progress).
    pub fn delivered(&self) -> u64 {
        let st = self.state.lock().expect("verifier lock");
        st.nodes.values().map(|n| n.received).sum()
    }

    /// Checks one request body; on success the batch is accepted and counted.
    /// A malformed envelope is refused with 400 (and counted as a schema
    /// error); problems inside events are counted, and the batch accepted.
    pub fn check_batch(&self, meta: &BatchMeta<'_>, body: &[u8]) -> Result<usize, Rejection> {
        let recv_us = now_unix_us();
        let reject = |status: u16, reason: String| {
            let mut st = self.state.lock().expect("verifier lock");
            st.schema_errors += 1;
            if st.problems.len() < MAX_PROBLEMS {
                st.problems
                    .push(format!("batch refused ({status}): {reason}"));
            }
            Err(Rejection { status, reason })
        };
        let ct_ok = meta.content_type.is_some_and(|ct| {
            ct.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("application/json")
        });
        if !ct_ok {
            return reject(
                415,
                format!(
                    "content-type {:?}, want application/json",
                    meta.content_type
                ),
            );
        }
        let decoded;
        let body = match meta.content_encoding.map(|e| e.trim().to_ascii_lowercase()) {
            None => body,
            Some(e) if e == "identity" => body,
            Some(e) if e == "gzip" => {
                use std::io::Read;
                let mut out = Vec::new();
                let limit = 512 << 20;
                match flate2::read::GzDecoder::new(body)
                    .take(limit)
                    .read_to_end(&mut out)
                {
                    Ok(_) => {
                        decoded = out;
                        &decoded[..]
                    }
                    Err(e) => return reject(400, format!("bad gzip body: {e}")),
                }
            }
            Some(e) => return reject(415, format!("content-encoding {e:?}")),
        };
        let env: Envelope<'_> = match serde_json::from_slice(body) {
            Ok(e) => e,
            Err(e) => return reject(400, format!("envelope: {e}")),
        };
        let mut c = Checked {
            ids: Vec::with_capacity(env.events.len()),
            schema_errors: 0,
            mismatches: 0,
            order_violations: 0,
            unexpected: 0,
            foreign: 0,
            problems: Vec::new(),
            redelivered: self.redelivered(meta.delivery_id.unwrap_or(&env.batch_id)),
        };
        if env.schema != SCHEMA {
            c.schema_errors += 1;
            c.problem(|| format!("schema {:?}, want {SCHEMA:?}", env.schema));
        }
        if env.batch_id.is_empty() {
            c.schema_errors += 1;
            c.problem(|| "empty batch_id".to_string());
        }
        if meta.idempotency_key != Some(&*env.batch_id) {
            c.schema_errors += 1;
            c.problem(|| {
                format!(
                    "Idempotency-Key {:?} != batch_id {:?}",
                    meta.idempotency_key, env.batch_id
                )
            });
        }
        let filer = env.filer_id.get();
        if filer != "null" && filer.parse::<i64>().is_err() {
            c.schema_errors += 1;
            c.problem(|| format!("filer_id {filer}: want an integer or null"));
        }
        if env.events.is_empty() {
            c.schema_errors += 1;
            c.problem(|| format!("batch {} has no events", env.batch_id));
        }
        let mut last_seq: Option<u64> = None;
        let mut last_node_seq: HashMap<(u16, u16), u64> = HashMap::new();
        for raw in &env.events {
            self.check_event(
                &env,
                raw.get(),
                recv_us,
                &mut last_seq,
                &mut last_node_seq,
                &mut c,
            );
        }
        let n = env.events.len();
        self.apply(meta.delivery_id.unwrap_or(&env.batch_id), n as u64, c);
        Ok(n)
    }

    /// Checks one body of a peer (`bench --versus`): a JSON array of Qumulo
    /// audit records as the peer passed them on. Each record's
    /// `details.file_id` names its (cluster, node, seq); the record must be
    /// one the filter keeps, and its `operation`, `status` and
    /// `details.path` those of the regenerated event. Counted as qbroker's
    /// events are (loss, duplicates, reordering per node); no latency (the
    /// records carry no time of their own). `n` numbers the batch.
    pub fn check_peer_batch(&self, n: u64, body: &[u8]) -> Result<usize, Rejection> {
        let records: Vec<&RawValue> = match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => {
                let reason = format!("a peer body is a JSON array of audit records: {e}");
                let mut st = self.state.lock().expect("verifier lock");
                st.schema_errors += 1;
                if st.problems.len() < MAX_PROBLEMS {
                    st.problems.push(format!("batch refused (400): {reason}"));
                }
                return Err(Rejection {
                    status: 400,
                    reason,
                });
            }
        };
        let mut c = Checked {
            ids: Vec::with_capacity(records.len()),
            schema_errors: 0,
            mismatches: 0,
            order_violations: 0,
            unexpected: 0,
            foreign: 0,
            problems: Vec::new(),
            redelivered: false,
        };
        if records.is_empty() {
            c.schema_errors += 1;
            c.problem(|| "an empty peer batch".to_string());
        }
        for raw in &records {
            self.check_peer_record(raw.get(), &mut c);
        }
        let id = format!("peer-{n}");
        self.apply(&id, records.len() as u64, c);
        Ok(records.len())
    }

    fn check_peer_record(&self, raw: &str, c: &mut Checked) {
        let rec: PeerRecord<'_> = match serde_json::from_str(raw) {
            Ok(r) => r,
            Err(e) => {
                c.schema_errors += 1;
                c.problem(|| format!("peer record does not parse ({e}): {}", truncate(raw, 300)));
                return;
            }
        };
        let details = rec.details.unwrap_or_default();
        let Some(id) = details.file_id.as_deref().and_then(Identity::parse) else {
            c.foreign += 1;
            c.problem(|| {
                format!(
                    "peer record without a loadgen file_id: {}",
                    truncate(raw, 300)
                )
            });
            return;
        };
        if id.tag != self.core.tag() {
            c.foreign += 1;
            return;
        }
        if id.filtered {
            c.unexpected += 1;
            c.problem(|| {
                format!(
                    "{} seq {}: {} with status {} should have been filtered out",
                    self.core.hostname(id.cluster, id.node),
                    id.seq,
                    rec.operation.as_deref().unwrap_or("?"),
                    rec.status.as_deref().unwrap_or("?")
                )
            });
            return;
        }
        let ev = self.core.expected_event(id.cluster, id.node, id.seq);
        let path = self.core.path_string(&ev.path);
        let got = (
            rec.operation.as_deref(),
            rec.status.as_deref(),
            details.path.as_deref(),
        );
        if got != (Some(ev.op().name), Some(ev.status), Some(path.as_str())) {
            c.mismatches += 1;
            c.problem(|| {
                format!(
                    "{} seq {}: got {got:?}, want {:?}",
                    self.core.hostname(id.cluster, id.node),
                    id.seq,
                    (ev.op().name, ev.status, &path)
                )
            });
        }
        c.ids.push((id, None));
    }

    fn check_event(
        &self,
        env: &Envelope<'_>,
        raw: &str,
        recv_us: u64,
        last_seq: &mut Option<u64>,
        last_node_seq: &mut HashMap<(u16, u16), u64>,
        c: &mut Checked,
    ) {
        let ev: WireEvent<'_> = match serde_json::from_str(raw) {
            Ok(ev) => ev,
            Err(e) => {
                c.schema_errors += 1;
                c.problem(|| format!("event does not parse ({e}): {}", truncate(raw, 300)));
                // still count it as arrived, if it says who it is
                let id = serde_json::from_str::<LenientEvent>(raw)
                    .ok()
                    .and_then(|l| l.file_id)
                    .and_then(|f| Identity::parse(&f));
                match id {
                    Some(id) if id.tag == self.core.tag() && !id.filtered => {
                        c.ids.push((id, Some(0)))
                    }
                    _ => c.foreign += 1,
                }
                return;
            }
        };
        let object = ev
            .file_id
            .as_deref()
            .and_then(Identity::parse)
            .filter(|id| id.tag == self.core.tag())
            .and_then(|id| object_of(&id).map(|o| (id, o)));
        if let Some((id, object)) = object {
            // Held behind its enrichment: not in seq order with the rest.
            if !c.redelivered {
                self.check_acl_event(env, &ev, id, object, c);
            }
            return;
        }
        // With enrichment, qbroker holds every metadata change of the cluster
        // while it reads the ACL: such events go out late, with their own seq.
        let held = self.core.config().acl_ppm > 0 && ev.qumulo_operation == "fs_write_metadata";
        if !held && last_seq.is_some_and(|l| ev.seq <= l) {
            c.schema_errors += 1;
            c.problem(|| {
                format!(
                    "batch {}: seq {} after {:?}",
                    env.batch_id, ev.seq, last_seq
                )
            });
        }
        if !held {
            *last_seq = Some(ev.seq);
        }
        let latency_us = match parse_event_time_ms(&ev.time) {
            Some(ms) if ms * 1000 <= recv_us + 1_000_000 => recv_us.saturating_sub(ms * 1000),
            Some(_) => {
                c.schema_errors += 1;
                c.problem(|| format!("event time {} is in the future", ev.time));
                0
            }
            None => {
                c.schema_errors += 1;
                c.problem(|| format!("time {:?}: want YYYY-MM-DDTHH:MM:SS.mmmZ", ev.time));
                0
            }
        };
        let Some(id) = ev.file_id.as_deref().and_then(Identity::parse) else {
            c.foreign += 1;
            c.problem(|| format!("file_id {:?} is not a loadgen id ({})", ev.file_id, ev.node));
            return;
        };
        if id.tag != self.core.tag() {
            c.foreign += 1;
            c.problem(|| {
                format!(
                    "file_id {} has run tag {:#06x}, want {:#06x}: sender and sink \
                     generator options differ",
                    id.to_decimal(),
                    id.tag,
                    self.core.tag()
                )
            });
            return;
        }
        if id.filtered {
            c.unexpected += 1;
            c.problem(|| {
                let ev = self.core.filtered_event(id.cluster, id.node, id.seq);
                format!(
                    "{} seq {}: {} with status {} should have been filtered out",
                    self.core.hostname(id.cluster, id.node),
                    id.seq,
                    ev.op().name,
                    ev.status
                )
            });
            return;
        }
        let key = (id.cluster, id.node);
        let prev = if held {
            None
        } else {
            last_node_seq.insert(key, id.seq)
        };
        if let Some(prev) = prev {
            if id.seq < prev {
                c.order_violations += 1;
                c.problem(|| {
                    format!(
                        "batch {}: {} seq {} after {prev}",
                        env.batch_id, ev.node, id.seq
                    )
                });
            }
        }
        let want = self
            .core
            .expected(&self.core.expected_event(id.cluster, id.node, id.seq));
        if env.cluster != want.cluster {
            c.mismatches += 1;
            c.problem(|| {
                format!(
                    "batch cluster {:?}, event is from {}",
                    env.cluster, want.node
                )
            });
        }
        if let Some(diff) = compare(&ev, &want) {
            c.mismatches += 1;
            c.problem(|| format!("{} seq {}: {diff}", want.node, id.seq));
        }
        c.ids.push((id, Some(latency_us)));
    }

    fn redelivered(&self, batch_id: &str) -> bool {
        self.state
            .lock()
            .expect("verifier lock")
            .batch_ids
            .contains(batch_id)
    }

    fn apply(&self, delivery_id: &str, n_events: u64, c: Checked) {
        let mut st = self.state.lock().expect("verifier lock");
        let redelivered = !st.batch_ids.insert(delivery_id.to_string());
        st.batches += 1;
        st.duplicate_batches += redelivered as u64;
        st.events_received += n_events;
        st.schema_errors += c.schema_errors;
        st.mismatches += c.mismatches;
        st.order_violations += c.order_violations;
        st.unexpected += c.unexpected;
        st.foreign += c.foreign;
        for (id, lat) in c.ids {
            let r = st
                .nodes
                .entry((id.cluster, id.node))
                .or_default()
                .record(id.seq);
            match r {
                Receipt::New => {
                    if let Some(lat) = lat {
                        let _ = st.latency.record(lat.clamp(1, 3_600_000_000));
                    }
                }
                Receipt::Duplicate if redelivered => st.dup_in_redelivered += 1,
                Receipt::Duplicate => {}
            }
        }
        for p in c.problems {
            if st.problems.len() < MAX_PROBLEMS {
                st.problems.push(p);
            }
        }
    }

    /// The report so far. `totals` maps (cluster, node) to the number of
    /// expected events the sender wrote; with it, losses at the tail count.
    pub fn summary(&self, totals: Option<&HashMap<(u16, u16), u64>>) -> SinkSummary {
        let st = self.state.lock().expect("verifier lock");
        let mut s = SinkSummary {
            batches: st.batches,
            duplicate_batches: st.duplicate_batches,
            events_received: st.events_received,
            duplicated_in_redelivered_batches: st.dup_in_redelivered,
            order_violations: st.order_violations,
            unexpected: st.unexpected,
            foreign: st.foreign,
            schema_errors: st.schema_errors,
            mismatches: st.mismatches,
            problems: st.problems.clone(),
            ..SinkSummary::default()
        };
        {
            let a = self.acl.lock().expect("acl lock");
            let mut n = a.counts;
            for t in a.objects.values() {
                t.classify(&mut n, a.lenient);
            }
            s.acl_records = a.nodes.values().sum();
            s.acl_first = n.first;
            s.acl_exact = n.exact;
            s.acl_fallbacks = n.fallbacks;
            s.acl_unverified = n.unverified;
            s.mismatches += n.mismatches;
            if let Some(sent) = &a.sent {
                for (k, &total) in sent {
                    let got = a.nodes.get(k).copied().unwrap_or(0);
                    s.acl_lost += total.saturating_sub(got);
                    s.unexpected += got.saturating_sub(total);
                }
            }
        }
        let empty = NodeTrack::default();
        let mut keys: Vec<(u16, u16)> = st.nodes.keys().copied().collect();
        if let Some(t) = totals {
            keys.extend(t.keys().copied());
        }
        keys.sort_unstable();
        keys.dedup();
        for k in keys {
            let tr = st.nodes.get(&k).unwrap_or(&empty);
            let total = totals.map(|t| t.get(&k).copied().unwrap_or(0));
            s.delivered += tr.received;
            s.duplicated += tr.duplicates;
            s.reordered += tr.reordered;
            let horizon = total.unwrap_or_else(|| tr.highest().map_or(0, |m| m + 1));
            s.lost += horizon - tr.received_below(horizon);
            if let Some(t) = total {
                // more distinct events than the sender wrote: invented
                s.unexpected += tr.received - tr.received_below(t);
            }
            for (a, b) in tr.gaps(total, 3) {
                if s.gaps.len() < MAX_PROBLEMS {
                    s.gaps.push((self.core.hostname(k.0, k.1), a, b));
                }
            }
        }
        let h = &st.latency;
        let ms = |us: u64| us as f64 / 1000.0;
        s.latency_ms = Latency {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.5)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        };
        s
    }
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// The first field that differs, described; `None` if all match.
fn compare(ev: &WireEvent<'_>, want: &Expected) -> Option<String> {
    fn field(name: &str, got: impl std::fmt::Debug, want: impl std::fmt::Debug) -> Option<String> {
        Some(format!("{name}: got {got:?}, want {want:?}"))
    }
    let denied = want.operation == "access_denied";
    if ev.operation != want.operation {
        return field("operation", &ev.operation, &want.operation);
    }
    if ev.qumulo_operation != want.qumulo_operation {
        return field(
            "qumulo_operation",
            &ev.qumulo_operation,
            want.qumulo_operation,
        );
    }
    if ev.node != want.node {
        return field("node", &ev.node, &want.node);
    }
    if ev.object_type != want.object_type {
        return field("object_type", &ev.object_type, want.object_type);
    }
    if ev.path != want.path {
        return field("path", &ev.path, &want.path);
    }
    // a denied rename may or may not carry its target; elsewhere exactly as expected
    let np_ok = match (&ev.new_path, &want.new_path) {
        (None, _) if denied => true,
        (got, want) => opt_eq(got, want),
    };
    if !np_ok {
        return field("new_path", &ev.new_path, &want.new_path);
    }
    if ev.file_id.as_deref() != Some(want.file_id.as_str()) {
        return field("file_id", &ev.file_id, &want.file_id);
    }
    let u = &ev.user;
    if !opt_eq(&u.sid, &want.user.sid)
        || !opt_eq(&u.auth_id, &want.user.auth_id)
        || !opt_eq(&u.name, &want.user.name)
    {
        return field("user", u, &want.user);
    }
    if ev.client_ip.as_deref() != Some(want.client_ip.as_str()) {
        return field("client_ip", &ev.client_ip, &want.client_ip);
    }
    if ev.protocol.as_deref() != Some(want.protocol.as_str()) {
        return field("protocol", &ev.protocol, &want.protocol);
    }
    if ev.status != want.status || ev.success != want.success {
        return field(
            "status/success",
            (&ev.status, ev.success),
            (want.status, want.success),
        );
    }
    let owner_ok = match (&ev.owner, &want.owner) {
        (None, None) => true,
        (Some(g), Some((b, a))) => {
            opt_eq(&g.before.sid, &b.sid)
                && opt_eq(&g.before.auth_id, &b.auth_id)
                && opt_eq(&g.after.sid, &a.sid)
                && opt_eq(&g.after.auth_id, &a.auth_id)
        }
        _ => false,
    };
    if !owner_ok {
        return field("owner", &ev.owner, &want.owner);
    }
    let acl_allowed =
        want.operation.contains("permissions") || want.operation.contains("protection");
    if ev.acl.is_some() && !acl_allowed {
        return Some(format!("acl present on {}", want.operation));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gen::{Format, GenConfig};

    #[test]
    fn node_track_in_order() {
        let mut t = NodeTrack::default();
        for s in 0..100 {
            assert_eq!(t.record(s), Receipt::New);
        }
        assert_eq!(t.received_below(100), 100);
        assert_eq!(t.ranges(), 0);
        assert!(t.gaps(Some(100), 10).is_empty());
        assert_eq!((t.duplicates, t.reordered), (0, 0));
    }

    #[test]
    fn node_track_loss_duplicate_reorder() {
        let mut t = NodeTrack::default();
        for s in [0, 1, 2, 5, 6, 4, 9, 6, 0] {
            t.record(s);
        }
        // 3, 7, 8 missing; 6 and 0 twice; 4 arrived after 6
        assert_eq!(t.received, 7);
        assert_eq!(t.duplicates, 2);
        assert_eq!(t.reordered, 1);
        assert_eq!(t.received_below(12), 7);
        assert_eq!(t.gaps(Some(12), 10), vec![(3, 4), (7, 9), (10, 12)]);
        assert_eq!(t.gaps(None, 10), vec![(3, 4), (7, 9)]);
        t.record(3);
        t.record(7);
        t.record(8);
        assert_eq!(t.gaps(None, 10), vec![]);
        assert_eq!(t.ranges(), 0, "ranges merge back into the watermark");
    }

    #[test]
    fn node_track_memory_grows_with_gaps_only() {
        let mut t = NodeTrack::default();
        t.record(1); // 0 lost for good
        for s in 2..100_000 {
            t.record(s);
        }
        assert_eq!(t.ranges(), 1);
        assert_eq!(t.received_below(100_000), 99_999);
    }

    #[test]
    fn event_time_parses() {
        assert_eq!(parse_event_time_ms("1970-01-01T00:00:01.005Z"), Some(1005));
        assert_eq!(
            parse_event_time_ms("2026-01-27T14:12:23.955Z"),
            Some(1_769_523_143_955)
        );
        assert_eq!(parse_event_time_ms("2026-01-27T14:12:23.9558Z"), None);
        assert_eq!(parse_event_time_ms("2026-01-27 14:12:23.955Z"), None);
        assert_eq!(parse_event_time_ms("2026-13-27T14:12:23.955Z"), None);
    }

    /// Renders what a correct broker would send for the expected events of
    /// node (0, 1), seqs `seqs`, as one batch body.
    pub(crate) fn batch_for(core: &GenCore, batch_id: &str, seqs: &[u64]) -> Vec<u8> {
        let mut events = Vec::new();
        let time = {
            let us = now_unix_us();
            let ts = crate::gen::syslog_ts(us);
            format!("{}Z", std::str::from_utf8(&ts[..23]).unwrap())
        };
        for (i, &s) in seqs.iter().enumerate() {
            let e = core.expected(&core.expected_event(0, 1, s));
            let mut v = serde_json::json!({
                "seq": 1000 + i as u64,
                "time": time,
                "node": e.node,
                "operation": e.operation,
                "object_type": e.object_type,
                "path": e.path,
                "file_id": e.file_id,
                "user": e.user,
                "client_ip": e.client_ip,
                "protocol": e.protocol,
                "status": e.status,
                "success": e.success,
                "qumulo_operation": e.qumulo_operation,
            });
            if let Some(np) = &e.new_path {
                v["new_path"] = np.clone().into();
            }
            if let Some((b, a)) = &e.owner {
                v["owner"] = serde_json::json!({"before": b, "after": a});
            }
            events.push(v);
        }
        serde_json::to_vec(&serde_json::json!({
            "schema": SCHEMA, "batch_id": batch_id, "cluster": core.cluster_name(0),
            "filer_id": null, "events": events,
        }))
        .unwrap()
    }

    fn meta(key: &str) -> BatchMeta<'_> {
        BatchMeta {
            content_type: Some("application/json"),
            content_encoding: None,
            idempotency_key: Some(key),
            delivery_id: None,
        }
    }

    fn verifier(format: Format) -> Verifier {
        let cfg = GenConfig {
            format,
            ..GenConfig::default()
        };
        Verifier::new(Arc::new(GenCore::new(cfg).unwrap()))
    }

    fn totals(n: u64) -> HashMap<(u16, u16), u64> {
        HashMap::from([((0, 1), n)])
    }

    /// A peer's body: the audit JSON of these events of node (0, 1).
    fn peer_body(core: &GenCore, events: &[crate::gen::Event]) -> Vec<u8> {
        let mut out = b"[".to_vec();
        for (i, ev) in events.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            core.render_msg(ev, &mut out);
        }
        out.push(b']');
        out
    }

    #[test]
    fn peer_bodies_are_counted_by_file_id() {
        let v = verifier(Format::Json);
        let core = v.core().clone();
        let ev = |s: u64| core.expected_event(0, 1, s);
        // 0..10 without 3, in two bodies, 7 twice; 10 out of order first
        v.check_peer_batch(0, &peer_body(&core, &[ev(10), ev(0), ev(1), ev(2)]))
            .unwrap();
        let n = v
            .check_peer_batch(
                1,
                &peer_body(&core, &[ev(4), ev(5), ev(6), ev(7), ev(7), ev(8)]),
            )
            .unwrap();
        assert_eq!(n, 6);
        let s = v.summary(Some(&totals(11)));
        assert_eq!((s.delivered, s.duplicated, s.batches), (9, 1, 2));
        assert_eq!(s.lost, 2, "3 and 9");
        assert_eq!(s.latency_ms.count, 0, "peers' records carry no time");
        assert_eq!(
            (s.schema_errors, s.mismatches, s.unexpected, s.foreign),
            (0, 0, 0, 0),
            "{:?}",
            s.problems
        );
        // everything, once: clean
        let v = verifier(Format::Json);
        let all: Vec<_> = (0..50).map(ev).collect();
        v.check_peer_batch(0, &peer_body(&core, &all)).unwrap();
        let s = v.summary(Some(&totals(50)));
        assert!(s.failures().is_empty(), "{:?}", s.failures());
        assert_eq!(s.delivered, 50);
    }

    #[test]
    fn peer_records_that_are_wrong() {
        let v = verifier(Format::Json);
        let core = v.core().clone();
        // an event the filter drops
        let filtered = core.filtered_event(0, 1, 0);
        // an altered status
        let mut body = peer_body(&core, &[core.expected_event(0, 1, 0)]);
        let text = String::from_utf8(body.clone()).unwrap();
        let want = format!("\"status\":\"{}\"", core.expected_event(0, 1, 0).status);
        assert!(text.contains(&want), "{text}");
        body = text.replace(&want, "\"status\":\"fs_other\"").into_bytes();
        v.check_peer_batch(0, &body).unwrap();
        v.check_peer_batch(1, &peer_body(&core, &[filtered]))
            .unwrap();
        v.check_peer_batch(
            2,
            br#"[{"operation":"fs_read_data"},"a line",{"details":{"file_id":"12"}}]"#,
        )
        .unwrap();
        let s = v.summary(None);
        assert_eq!(s.mismatches, 1, "{:?}", s.problems);
        assert_eq!(s.unexpected, 1, "{:?}", s.problems);
        assert_eq!(s.foreign, 2, "{:?}", s.problems);
        assert_eq!(s.schema_errors, 1, "{:?}", s.problems);
        // not an array: refused
        let e = v.check_peer_batch(3, br#"{"events":[]}"#).unwrap_err();
        assert_eq!(e.status, 400);
    }

    #[test]
    fn clean_run_passes() {
        for format in [Format::Json, Format::Csv] {
            let v = verifier(format);
            let seqs: Vec<u64> = (0..500).collect();
            for (i, chunk) in seqs.chunks(100).enumerate() {
                let id = format!("b{i}");
                v.check_batch(&meta(&id), &batch_for(v.core(), &id, chunk))
                    .unwrap();
            }
            let s = v.summary(Some(&totals(500)));
            assert!(
                s.failures().is_empty(),
                "{format:?}: {:?} {:?}",
                s.failures(),
                s.problems
            );
            assert_eq!(s.delivered, 500);
            assert_eq!(s.latency_ms.count, 500);
        }
    }

    #[test]
    fn catches_loss_duplicate_and_reorder() {
        let v = verifier(Format::Json);
        // batch b1 holds 0..10 without 4; b2 is 20..30; b0 (late) is 10..20;
        // event 25 comes again in b3; 30..40 never comes.
        let b1: Vec<u64> = (0..10).filter(|&s| s != 4).collect();
        let b2: Vec<u64> = (20..30).collect();
        let b0: Vec<u64> = (10..20).collect();
        for (id, seqs) in [
            ("b1", &b1[..]),
            ("b2", &b2[..]),
            ("b0", &b0[..]),
            ("b3", &[25][..]),
        ] {
            v.check_batch(&meta(id), &batch_for(v.core(), id, seqs))
                .unwrap();
        }
        let s = v.summary(Some(&totals(40)));
        assert_eq!(s.lost, 11, "seq 4 and 30..40");
        assert_eq!(s.duplicated, 1);
        assert_eq!(s.duplicated_in_redelivered_batches, 0);
        assert_eq!(s.reordered, 10, "b0 arrived after b2");
        assert_eq!(s.delivered, 29);
        let f = s.failures();
        assert!(f.iter().any(|m| m.contains("lost")), "{f:?}");
        assert!(f.iter().any(|m| m.contains("duplicated outside")), "{f:?}");
        assert_eq!(s.gaps[0], (v.core().hostname(0, 1), 4, 5));
        // without totals only the inner gap counts
        assert_eq!(v.summary(None).lost, 1);
    }

    #[test]
    fn messages_of_one_batch_are_not_duplicate_batches_but_a_message_again_is() {
        let v = verifier(Format::Json);
        for seq in 0..3u64 {
            let id = format!("b-{seq}");
            let m = BatchMeta {
                delivery_id: Some(&id),
                ..meta("b")
            };
            v.check_batch(&m, &batch_for(v.core(), "b", &[seq]))
                .unwrap();
        }
        assert_eq!(v.summary(None).duplicate_batches, 0);
        let m = BatchMeta {
            delivery_id: Some("b-1"),
            ..meta("b")
        };
        v.check_batch(&m, &batch_for(v.core(), "b", &[1])).unwrap();
        let s = v.summary(Some(&totals(3)));
        assert_eq!((s.duplicate_batches, s.duplicated), (1, 1));
        assert_eq!(s.duplicated_in_redelivered_batches, 1);
        assert!(s.failures().is_empty(), "{:?}", s.failures());
    }

    #[test]
    fn redelivered_batch_is_a_retry_not_a_failure() {
        let v = verifier(Format::Json);
        let body = batch_for(v.core(), "same", &[0, 1, 2]);
        v.check_batch(&meta("same"), &body).unwrap();
        v.check_batch(&meta("same"), &body).unwrap();
        let s = v.summary(Some(&totals(3)));
        assert_eq!(
            (
                s.duplicate_batches,
                s.duplicated,
                s.duplicated_in_redelivered_batches
            ),
            (1, 3, 3)
        );
        assert!(s.failures().is_empty(), "{:?}", s.failures());
    }

    #[test]
    fn order_violation_inside_a_batch() {
        let v = verifier(Format::Json);
        v.check_batch(&meta("x"), &batch_for(v.core(), "x", &[0, 2, 1]))
            .unwrap();
        let s = v.summary(Some(&totals(3)));
        assert_eq!(s.order_violations, 1);
        assert!(!s.failures().is_empty());
    }

    #[test]
    fn catches_altered_fields_and_filtered_events() {
        let v = verifier(Format::Json);
        let body = batch_for(v.core(), "x", &[0, 1]);
        let mut doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
        doc["events"][0]["path"] = "/somewhere/else".into();
        // a filtered event's id smuggled in
        let f = v.core().filtered_event(0, 1, 0);
        doc["events"][1]["file_id"] = f.id.to_decimal().into();
        v.check_batch(&meta("x"), &serde_json::to_vec(&doc).unwrap())
            .unwrap();
        let s = v.summary(Some(&totals(2)));
        assert_eq!((s.mismatches, s.unexpected), (1, 1), "{:?}", s.problems);
        assert!(
            s.problems.iter().any(|p| p.contains("path")),
            "{:?}",
            s.problems
        );
    }

    #[test]
    fn schema_violations() {
        let v = verifier(Format::Json);
        let body = batch_for(v.core(), "x", &[0]);
        // wrong header, bad content type, bad envelope, unknown event field
        v.check_batch(&meta("y"), &body).unwrap();
        let bad_ct = BatchMeta {
            content_type: Some("text/plain"),
            ..meta("x")
        };
        assert_eq!(v.check_batch(&bad_ct, &body).unwrap_err().status, 415);
        assert_eq!(
            v.check_batch(&meta("x"), b"{\"schema\":1}")
                .unwrap_err()
                .status,
            400
        );
        let mut doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
        doc["events"][0]["surprise"] = 1.into();
        doc["batch_id"] = "z".into();
        v.check_batch(&meta("z"), &serde_json::to_vec(&doc).unwrap())
            .unwrap();
        let s = v.summary(Some(&totals(1)));
        assert_eq!(s.schema_errors, 4, "{:?}", s.problems);
        assert_eq!(
            s.delivered, 1,
            "the malformed event still counts as arrived"
        );
    }

    #[test]
    fn gzip_bodies() {
        use std::io::Write;
        let v = verifier(Format::Csv);
        let body = batch_for(v.core(), "g", &[0, 1, 2]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&body).unwrap();
        let m = BatchMeta {
            content_encoding: Some("gzip"),
            ..meta("g")
        };
        assert_eq!(v.check_batch(&m, &gz.finish().unwrap()).unwrap(), 3);
        assert!(v.summary(Some(&totals(3))).failures().is_empty());
    }
}
