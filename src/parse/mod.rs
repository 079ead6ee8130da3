//! parse: one syslog frame in, at most one serialised Varonis event out.
//!
//! Stage: called by the parse pool's worker threads for every frame of a chunk.
//! Receives the raw bytes of one frame (without its RFC 6587 framing); emits the
//! event as one JSON object of the `qbroker.varonis.v1` schema appended to the
//! caller's buffer, or says why the frame was filtered out or could not be parsed.
//! Guarantees: never panics on any input, never allocates per field (strings are
//! borrowed from the frame and escaped straight into the output), leaves the
//! output buffer untouched unless it returns [`Outcome::Event`].
//!
//! The steps, one submodule each: `syslog` splits the header, `payload` picks
//! the payload format (`json` or `csv`), which captures the audit fields into
//! a `record`, `filter` decides, `event` maps and serialises, with `escape`, `scan` and
//! `time` doing the byte-level work. A frame that is not valid UTF-8 is
//! converted lossily (U+FFFD) first; that rare path allocates.

use std::fmt;

mod csv;
mod escape;
mod event;
mod filter;
#[cfg(any(fuzzing, test))]
pub mod fuzz;
mod json;
mod payload;
mod record;
mod scan;
mod syslog;
mod time;
pub(crate) use time::parse_rfc3339;
pub(crate) use time::write_rfc3339_ms;

pub use filter::{Filter, UnsupportedOperation, REFERENCE_OPERATIONS};

/// What the caller knows about a frame besides its bytes.
#[derive(Debug, Clone, Copy)]
pub struct FrameCtx<'a> {
    /// Per-cluster sequence number of this frame (arrival order).
    pub seq: u64,
    /// When the frame was read, in milliseconds since the Unix epoch. Used when the
    /// header has no usable timestamp, and for the year of RFC 3164 timestamps.
    pub received_unix_ms: i64,
    /// The connection the frame came on, when there is one: a frame's HOSTNAME
    /// becomes the event's `node` only when it passes [`ConnNode::accepts`];
    /// otherwise the connection's node does.
    pub conn: Option<&'a ConnNode<'a>>,
}

/// What a connection was told by its first frame: its node and its cluster.
#[derive(Debug, Clone, Copy)]
pub struct ConnNode<'a> {
    /// The connection's node: its first frame's HOSTNAME, or the peer address.
    pub node: &'a str,
    /// The connection's cluster.
    pub cluster: &'a str,
}

impl ConnNode<'_> {
    /// Whether a later frame's HOSTNAME may name the event's node: the same
    /// rules as the first frame's (1 to 255 printable ASCII characters, RFC
    /// 5424), and, when the connection's cluster was told by its HOSTNAME, a
    /// node of that cluster. A frame naming another cluster's node is not
    /// moved to that cluster: its event keeps the connection's node.
    pub fn accepts(&self, host: &[u8]) -> bool {
        // The common case: the connection's own node (checked at its first frame).
        if host == self.node.as_bytes() {
            return true;
        }
        if host.is_empty() || host.len() > 255 || !host.iter().all(|b| (0x21..=0x7e).contains(b)) {
            return false;
        }
        let by_hostname = cluster_of_hostname(self.node) == self.cluster;
        // ASCII checked above.
        let host = std::str::from_utf8(host).unwrap_or_default();
        !by_hostname || cluster_of_hostname(host) == self.cluster
    }
}

/// The Varonis operation an event was mapped to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    FileCreate,
    DirectoryCreate,
    FileRead,
    FileWrite,
    FileDelete,
    DirectoryDelete,
    FileRename,
    DirectoryRename,
    FileOwnerChange,
    DirectoryOwnerChange,
    FilePermissionsChange,
    DirectoryPermissionsChange,
    AccessDenied,
    // The next eight are made by `enrich` from a metadata change and its ACL diff.
    FilePermissionsAdd,
    DirectoryPermissionsAdd,
    FilePermissionsRemove,
    DirectoryPermissionsRemove,
    FileProtectionAdd,
    DirectoryProtectionAdd,
    FileProtectionRemove,
    DirectoryProtectionRemove,
}

impl Operation {
    pub const ALL: [Operation; 21] = [
        Operation::FileCreate,
        Operation::DirectoryCreate,
        Operation::FileRead,
        Operation::FileWrite,
        Operation::FileDelete,
        Operation::DirectoryDelete,
        Operation::FileRename,
        Operation::DirectoryRename,
        Operation::FileOwnerChange,
        Operation::DirectoryOwnerChange,
        Operation::FilePermissionsChange,
        Operation::DirectoryPermissionsChange,
        Operation::AccessDenied,
        Operation::FilePermissionsAdd,
        Operation::DirectoryPermissionsAdd,
        Operation::FilePermissionsRemove,
        Operation::DirectoryPermissionsRemove,
        Operation::FileProtectionAdd,
        Operation::DirectoryProtectionAdd,
        Operation::FileProtectionRemove,
        Operation::DirectoryProtectionRemove,
    ];

    /// The name on the wire (`file.create`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::FileCreate => "file.create",
            Operation::DirectoryCreate => "directory.create",
            Operation::FileRead => "file.read",
            Operation::FileWrite => "file.write",
            Operation::FileDelete => "file.delete",
            Operation::DirectoryDelete => "directory.delete",
            Operation::FileRename => "file.rename",
            Operation::DirectoryRename => "directory.rename",
            Operation::FileOwnerChange => "file.owner_change",
            Operation::DirectoryOwnerChange => "directory.owner_change",
            Operation::FilePermissionsChange => "file.permissions_change",
            Operation::DirectoryPermissionsChange => "directory.permissions_change",
            Operation::AccessDenied => "access_denied",
            Operation::FilePermissionsAdd => "file.permissions_add",
            Operation::DirectoryPermissionsAdd => "directory.permissions_add",
            Operation::FilePermissionsRemove => "file.permissions_remove",
            Operation::DirectoryPermissionsRemove => "directory.permissions_remove",
            Operation::FileProtectionAdd => "file.protection_add",
            Operation::DirectoryProtectionAdd => "directory.protection_add",
            Operation::FileProtectionRemove => "file.protection_remove",
            Operation::DirectoryProtectionRemove => "directory.protection_remove",
        }
    }

    /// The same operation on a file (`false`) or a directory (`true`); operations
    /// that have no such pair (`file.read`, `access_denied`, ...) are returned as they are.
    pub fn on(self, directory: bool) -> Operation {
        use Operation as O;
        let (file, dir) = match self {
            O::FileCreate | O::DirectoryCreate => (O::FileCreate, O::DirectoryCreate),
            O::FileDelete | O::DirectoryDelete => (O::FileDelete, O::DirectoryDelete),
            O::FileRename | O::DirectoryRename => (O::FileRename, O::DirectoryRename),
            O::FileOwnerChange | O::DirectoryOwnerChange => {
                (O::FileOwnerChange, O::DirectoryOwnerChange)
            }
            O::FilePermissionsChange | O::DirectoryPermissionsChange => {
                (O::FilePermissionsChange, O::DirectoryPermissionsChange)
            }
            O::FilePermissionsAdd | O::DirectoryPermissionsAdd => {
                (O::FilePermissionsAdd, O::DirectoryPermissionsAdd)
            }
            O::FilePermissionsRemove | O::DirectoryPermissionsRemove => {
                (O::FilePermissionsRemove, O::DirectoryPermissionsRemove)
            }
            O::FileProtectionAdd | O::DirectoryProtectionAdd => {
                (O::FileProtectionAdd, O::DirectoryProtectionAdd)
            }
            O::FileProtectionRemove | O::DirectoryProtectionRemove => {
                (O::FileProtectionRemove, O::DirectoryProtectionRemove)
            }
            other => return other,
        };
        if directory {
            dir
        } else {
            file
        }
    }

    /// Whether this is a directory operation.
    pub fn is_directory(self) -> bool {
        self.as_str().starts_with("directory.")
    }

    /// Dense index, for per-operation counters.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Why a well-formed frame produced no event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FilterReason {
    /// APP-NAME is not one of the accepted prefixes (default `qumulo`).
    AppName,
    /// A known Qumulo operation that the filter does not keep.
    Operation,
    /// An operation name Qumulo's documentation does not list (new release?).
    UnknownOperation,
    /// Protocol not in the configured set.
    Protocol,
    /// Status not in the configured set.
    Status,
}

impl FilterReason {
    pub const ALL: [FilterReason; 5] = [
        FilterReason::AppName,
        FilterReason::Operation,
        FilterReason::UnknownOperation,
        FilterReason::Protocol,
        FilterReason::Status,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FilterReason::AppName => "app_name",
            FilterReason::Operation => "operation",
            FilterReason::UnknownOperation => "unknown_operation",
            FilterReason::Protocol => "protocol",
            FilterReason::Status => "status",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// The outcome of converting one well-formed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// One event was appended to the output buffer.
    Event(Operation),
    /// Nothing was appended.
    Filtered(FilterReason),
}

/// What the later stages need to know of an event beside its bytes: which file
/// it is about (per-file order behind an enrichment), what it may teach or ask
/// the type cache, and where its parts lie (so that an enrichment can rewrite the
/// operation and add `acl` without parsing the event again).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventInfo {
    /// A hash of the event's file id, never 0; 0 when the event has no file id.
    pub file_key: u64,
    pub hint: Hint,
    /// `"operation":"…","object_type":"…"` in the event, from its first byte.
    pub op_span: (u32, u32),
    /// `,"owner":{…}`; empty (start == end) when the event has none. It ends where
    /// `,"qumulo_operation":` starts.
    pub owner_span: (u32, u32),
    /// The file id's characters inside their quotes; empty when it is `null`.
    pub file_id_span: (u32, u32),
}

/// What an event says about its object's type, or asks of it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Hint {
    #[default]
    None,
    /// A successful create: the object is a directory or a file.
    Created { directory: bool },
    /// A delete or rename whose paths have no trailing `/`: `file.*` unless the
    /// type cache knows a directory.
    Untyped,
    /// A successful fs_write_metadata (not access denied); `typed` when a
    /// trailing `/` said directory.
    WriteMetadata { typed: bool, owner_changed: bool },
}

/// Why a frame could not be parsed. Small and `Copy`: it is counted per kind and
/// the frame itself goes to the dead-letter file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParseError {
    Empty,
    Header,
    Timestamp,
    Payload,
    MissingField(&'static str),
}

impl ParseError {
    /// A stable label for metrics (`header`, `timestamp`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            ParseError::Empty => "empty",
            ParseError::Header => "header",
            ParseError::Timestamp => "timestamp",
            ParseError::Payload => "payload",
            ParseError::MissingField(_) => "missing_field",
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::MissingField(name) => write!(f, "missing field {name}"),
            other => f.write_str(other.kind()),
        }
    }
}

impl std::error::Error for ParseError {}

/// Parse `frame`, filter it, map it, and append the event JSON to `out`.
///
/// `frame` may carry stray `\r`, `\n`, NUL, space or tab bytes at either end; they are
/// trimmed. On `Ok(Outcome::Filtered(_))` and on `Err(_)` `out` is left as it was.
pub fn convert(
    frame: &[u8],
    ctx: &FrameCtx,
    filter: &Filter,
    out: &mut Vec<u8>,
) -> Result<Outcome, ParseError> {
    convert_with_info(frame, ctx, filter, out, &mut EventInfo::default())
}

/// [`convert`], and describe the event in `info` (left as it was unless an event
/// was written).
pub fn convert_with_info(
    frame: &[u8],
    ctx: &FrameCtx,
    filter: &Filter,
    out: &mut Vec<u8>,
    info: &mut EventInfo,
) -> Result<Outcome, ParseError> {
    let frame = trim(frame);
    if frame.is_empty() {
        return Err(ParseError::Empty);
    }
    let start = out.len();
    let result = match convert_bytes(frame, ctx, filter, out, info) {
        Err(Step::NotUtf8) => {
            // Rare: replace invalid sequences with U+FFFD and start over. Only bytes
            // >= 0x80 change, so the header and payload split the same way.
            let lossy = String::from_utf8_lossy(frame);
            convert_bytes(lossy.as_bytes(), ctx, filter, out, info).map_err(|step| match step {
                Step::Failed(e) => e,
                // Cannot happen (the lossy copy is valid UTF-8); still, no panics here.
                Step::NotUtf8 => ParseError::Payload,
            })
        }
        Err(Step::Failed(e)) => Err(e),
        Ok(outcome) => Ok(outcome),
    };
    if !matches!(result, Ok(Outcome::Event(_))) {
        out.truncate(start);
    }
    result
}

/// Why [`convert_bytes`] stopped short of an outcome.
enum Step {
    Failed(ParseError),
    /// The frame must be made valid UTF-8 before anything is written.
    NotUtf8,
}

impl From<ParseError> for Step {
    fn from(e: ParseError) -> Step {
        Step::Failed(e)
    }
}

/// [`convert`] on a trimmed frame. The parsers look only at ASCII delimiters, so they
/// work on any bytes; UTF-8 is checked only once the frame is kept (most frames are
/// filtered out). Every slice copied into `out` lies between ASCII delimiters of a
/// valid UTF-8 frame, so the output is valid UTF-8 too.
fn convert_bytes(
    frame: &[u8],
    ctx: &FrameCtx,
    filter: &Filter,
    out: &mut Vec<u8>,
    info: &mut EventInfo,
) -> Result<Outcome, Step> {
    let h = syslog::parse_header(frame)?;
    if !filter.app_ok(h.app) {
        return Ok(Outcome::Filtered(FilterReason::AppName));
    }
    let rec = payload::parse_payload(h.msg, |op, status| filter.drops(op, status))?;
    let op = rec
        .operation
        .non_empty()
        .ok_or(ParseError::MissingField("operation"))?;
    let status = rec
        .status
        .non_empty()
        .ok_or(ParseError::MissingField("status"))?;
    let kind = match filter.decide(op, status, rec.protocol.text()) {
        Ok(kind) => kind,
        Err(reason) => return Ok(Outcome::Filtered(reason)),
    };
    let time_ms = h.ts.resolve(ctx.received_unix_ms)?;
    // SIMD validation (simdutf8): std's took 3 % of the broker's CPU at 50k
    // frames/s, for frames that are almost all ASCII.
    if simdutf8::basic::from_utf8(frame).is_err() {
        return Err(Step::NotUtf8);
    }
    let m = event::map(kind, &rec)?;
    out.reserve(frame.len() + 256);
    let start = out.len();
    let host = match ctx.conn {
        Some(c) if h.host != b"-" && !c.accepts(h.host) => c.node.as_bytes(),
        _ => h.host,
    };
    let spans = event::write(out, ctx.seq, time_ms, host, &m, &rec);
    let rel = |(a, b): (usize, usize)| ((a - start) as u32, (b - start) as u32);
    *info = EventInfo {
        file_key: rec.file_id.non_empty().map_or(0, file_key),
        hint: event::hint(kind, &m, &rec),
        op_span: rel(spans.op),
        owner_span: rel(spans.owner),
        file_id_span: rel(spans.file_id),
    };
    Ok(Outcome::Event(m.op))
}

/// The per-file key of a file id's wire text (FNV-1a, never 0). Collisions only
/// make unrelated events wait behind each other's enrichment, in order.
pub fn file_key(id: &[u8]) -> u64 {
    let h = id.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    h.max(1)
}

fn trim(frame: &[u8]) -> &[u8] {
    let stray = |c: &u8| matches!(c, b'\r' | b'\n' | 0 | b' ' | b'\t');
    let start = frame.iter().position(|c| !stray(c)).unwrap_or(frame.len());
    let end = frame
        .iter()
        .rposition(|c| !stray(c))
        .map_or(start, |i| i + 1);
    &frame[start..end]
}

/// The syslog HOSTNAME of a frame, for telling which cluster a connection belongs to.
/// `None` if the header cannot be split, the HOSTNAME is `-`, or it is not UTF-8.
pub fn frame_hostname(frame: &[u8]) -> Option<&str> {
    let h = syslog::parse_header(trim(frame)).ok()?;
    match h.host {
        b"-" => None,
        host => std::str::from_utf8(host).ok(),
    }
}

/// The syslog APP-NAME (or RFC 3164 TAG without `[pid]` and `:`) of a frame, for
/// explaining a filtered frame (`qbroker stdin --once`). `None` if the header
/// cannot be split or the name is not UTF-8.
pub fn frame_app_name(frame: &[u8]) -> Option<&str> {
    let h = syslog::parse_header(trim(frame)).ok()?;
    std::str::from_utf8(h.app).ok()
}

/// `<cluster>-<digits>` to `<cluster>`; a name without that suffix is returned whole.
pub fn cluster_of_hostname(host: &str) -> &str {
    match host.rsplit_once('-') {
        Some((cluster, node))
            if !cluster.is_empty()
                && !node.is_empty()
                && node.bytes().all(|c| c.is_ascii_digit()) =>
        {
            cluster
        }
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    const CTX: FrameCtx<'static> = FrameCtx {
        seq: 42,
        received_unix_ms: 1_769_523_200_000,
        conn: None,
    }; // 2026-01-27T14:13:20Z

    fn run(frame: &str, filter: &Filter) -> (Result<Outcome, ParseError>, Vec<u8>) {
        let mut out = b"prev".to_vec();
        let r = convert(frame.as_bytes(), &CTX, filter, &mut out);
        (r, out)
    }

    /// Convert with the reference filter and return the event.
    fn ev(frame: &str) -> Value {
        let (r, out) = run(frame, &Filter::reference_default());
        assert!(matches!(r, Ok(Outcome::Event(_))), "{frame}: {r:?}");
        let body = out.strip_prefix(b"prev").unwrap();
        serde_json::from_slice(body)
            .unwrap_or_else(|e| panic!("{}: {e}", String::from_utf8_lossy(body)))
    }

    fn outcome(frame: &str) -> Result<Outcome, ParseError> {
        let (r, out) = run(frame, &Filter::reference_default());
        if !matches!(r, Ok(Outcome::Event(_))) {
            assert_eq!(out, b"prev", "{frame}: output left behind");
        }
        r
    }

    const CSV: &str = r#"10.220.151.129,"admin",smb2,fs_create_file,ok,140624751830626345080086044861,"/data/file.txt","""#;

    /// Convert with the reference filter; the event's raw text.
    fn raw(frame: &str) -> String {
        let mut out = Vec::new();
        let r = convert(
            frame.as_bytes(),
            &CTX,
            &Filter::reference_default(),
            &mut out,
        );
        assert!(matches!(r, Ok(Outcome::Event(_))), "{frame}: {r:?}");
        String::from_utf8(out).unwrap()
    }

    /// The top-level keys are exactly `want`, in that order.
    fn assert_key_order(raw: &str, want: &[&str]) {
        let v: Value = serde_json::from_str(raw).unwrap();
        assert_eq!(v.as_object().unwrap().len(), want.len(), "{raw}");
        let pos: Vec<usize> = want
            .iter()
            .map(|k| {
                raw.find(&format!("\"{k}\":"))
                    .unwrap_or_else(|| panic!("{k} missing in {raw}"))
            })
            .collect();
        assert!(pos.windows(2).all(|w| w[0] < w[1]), "{raw}");
    }

    #[test]
    fn observed_csv_frame_exact_output() {
        let frame = format!("<14>1 2026-01-27T14:12:23.9558Z cs-fil-q-k144-1 qumulo - - - {CSV}\n");
        let (r, out) = run(&frame, &Filter::reference_default());
        assert_eq!(r, Ok(Outcome::Event(Operation::FileCreate)));
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            concat!(
                "prev{\"seq\":42,\"time\":\"2026-01-27T14:12:23.955Z\",\"node\":\"cs-fil-q-k144-1\",",
                "\"operation\":\"file.create\",\"object_type\":\"file\",\"path\":\"/data/file.txt\",",
                "\"file_id\":\"140624751830626345080086044861\",",
                "\"user\":{\"sid\":null,\"auth_id\":null,\"name\":\"admin\"},\"client_ip\":\"10.220.151.129\",",
                "\"protocol\":\"smb2\",\"status\":\"ok\",\"success\":true,\"qumulo_operation\":\"fs_create_file\"}"
            )
        );
    }

    #[test]
    fn every_header_form() {
        let forms = [
            (format!("<14>1 2026-01-27T14:12:23.9558Z cs-fil-q-k144-1 qumulo - - - {CSV}"), "2026-01-27T14:12:23.955Z"),
            (format!("<14>1 2026-01-27T15:12:23+01:00 cs-fil-q-k144-1 qumulo 123 MSGID [x a=\"]\"] {CSV}"), "2026-01-27T14:12:23.000Z"),
            (format!("<14>1 - cs-fil-q-k144-1 qumulo - - - \u{feff}{CSV}"), "2026-01-27T14:13:20.000Z"),
            (format!("<14>Jan 27 14:12:23 cs-fil-q-k144-1 qumulo: {CSV}"), "2026-01-27T14:12:23.000Z"),
            (format!("<14>Jan  7 14:12:23 cs-fil-q-k144-1 qumulo[1234]: {CSV}"), "2026-01-07T14:12:23.000Z"),
            (format!("<14>Dec 31 23:59:59 cs-fil-q-k144-1 qumulo: {CSV}"), "2025-12-31T23:59:59.000Z"),
            (format!("<14>2023-03-03T14:08:51.058379+00:00 cs-fil-q-k144-1 qumulo: {CSV}"), "2023-03-03T14:08:51.058Z"),
            (format!("2023-03-03T14:08:51.058379Z cs-fil-q-k144-1 qumulo {CSV}"), "2023-03-03T14:08:51.058Z"),
            (format!("2023-03-03T14:08:51Z cs-fil-q-k144-1 qumulo[9]: {CSV}\r\n\0"), "2023-03-03T14:08:51.000Z"),
        ];
        for (frame, time) in forms {
            let v = ev(&frame);
            assert_eq!(v["time"], time, "{frame}");
            assert_eq!(v["node"], "cs-fil-q-k144-1", "{frame}");
            assert_eq!(v["path"], "/data/file.txt", "{frame}");
            assert_eq!(
                frame_hostname(frame.as_bytes()),
                Some("cs-fil-q-k144-1"),
                "{frame}"
            );
        }
    }

    #[test]
    fn json_write_metadata_owner_change() {
        let frame = concat!(
            r#"<14>1 2024-06-11T14:55:58.187394089Z q-2 qumulo - - - {"user_id": {"name": "AD\alice", "sid": "S-1-5-21-9", "auth_id": "500"}, "user_ip": "10.1.1.1", "protocol": "api","#,
            r#" "operation": "fs_write_metadata", "status": "ok", "details": {"file_id": "4", "path": "/my_file","#,
            r#" "after": {"ctime": "2024-06-11T14:55:58.187394089Z", "mtime": "2024-06-11T14:55:58.187394089Z", "owner": {"sid": "S-1-5-21-2", "auth_id": 501}},"#,
            r#" "before": {"ctime": "2024-06-11T14:55:43.616292461Z", "mtime": "2024-06-11T14:55:43.616292461Z", "owner": {"sid": "S-1-5-21-9", "auth_id": "500"}}}}"#
        );
        let v = ev(frame);
        assert_key_order(
            &raw(frame),
            &[
                "seq",
                "time",
                "node",
                "operation",
                "object_type",
                "path",
                "file_id",
                "user",
                "client_ip",
                "protocol",
                "status",
                "success",
                "owner",
                "qumulo_operation",
            ],
        );
        assert_eq!(v["operation"], "file.owner_change");
        assert_eq!(
            v["user"],
            json!({"sid": "S-1-5-21-9", "auth_id": "500", "name": "AD\\alice"})
        );
        assert_eq!(
            v["owner"],
            json!({"before": {"sid": "S-1-5-21-9", "auth_id": "500"}, "after": {"sid": "S-1-5-21-2", "auth_id": "501"}})
        );
        assert_eq!(v["time"], "2024-06-11T14:55:58.187Z");
        // Same owner on both sides: a permissions change, no owner key.
        let same = frame.replace(
            r#""S-1-5-21-2", "auth_id": 501"#,
            r#""S-1-5-21-9", "auth_id": 500"#,
        );
        let v = ev(&same);
        assert_eq!(v["operation"], "file.permissions_change");
        assert!(v.get("owner").is_none());
        let dir = frame.replace("/my_file", "/my_dir/");
        assert_eq!(ev(&dir)["operation"], "directory.owner_change");
        assert_eq!(ev(&dir)["object_type"], "directory");
    }

    #[test]
    fn csv_write_metadata_is_permissions_change() {
        let v =
            ev(r#"<14>1 - h-1 qumulo - - - 1.2.3.4,"AD\bob",smb2,fs_write_metadata,ok,7,"/d/","""#);
        assert_eq!(v["operation"], "directory.permissions_change");
        assert_eq!(v["user"]["name"], "AD\\bob");
    }

    #[test]
    fn renames() {
        let frame = r#"<14>1 - h-1 qumulo - - - ::1,"AD\alice",api,fs_rename,ok,3,"/my_file","/another_file""#;
        let v = ev(frame);
        assert_key_order(
            &raw(frame),
            &[
                "seq",
                "time",
                "node",
                "operation",
                "object_type",
                "path",
                "new_path",
                "file_id",
                "user",
                "client_ip",
                "protocol",
                "status",
                "success",
                "qumulo_operation",
            ],
        );
        assert_eq!(
            (&v["operation"], &v["new_path"], &v["client_ip"]),
            (
                &json!("file.rename"),
                &json!("/another_file"),
                &json!("::1")
            )
        );
        let v = ev(
            r#"<14>1 - h-1 qumulo - - - {"operation":"fs_rename","status":"ok","details":{"path":"/a","target":"/b/","file_id":9}}"#,
        );
        assert_eq!(
            (&v["operation"], &v["object_type"], &v["file_id"]),
            (&json!("directory.rename"), &json!("directory"), &json!("9"))
        );
        assert_eq!(
            outcome(
                r#"<14>1 - h-1 qumulo - - - {"operation":"fs_rename","status":"ok","details":{"path":"/a"}}"#
            ),
            Err(ParseError::MissingField("target"))
        );
    }

    #[test]
    fn deletes_and_creates() {
        let line = |op: &str, path: &str| {
            format!(r#"<14>1 - h-1 qumulo - - - 1.1.1.1,"u",nfs3,{op},ok,,"{path}","""#)
        };
        assert_eq!(ev(&line("fs_delete", "/a"))["operation"], "file.delete");
        assert_eq!(
            ev(&line("fs_delete", "/a/"))["operation"],
            "directory.delete"
        );
        assert_eq!(
            ev(&line("fs_create_directory", "/a"))["operation"],
            "directory.create"
        );
        assert_eq!(ev(&line("fs_read_data", "/a"))["operation"], "file.read");
        assert_eq!(ev(&line("fs_write_data", "/a"))["operation"], "file.write");
        let v = ev(&line("fs_create_file", "/a"));
        assert_eq!(v["file_id"], Value::Null);
        let all = [
            "fs_create",
            "fs_create_hard_link",
            "fs_create_symlink",
            "fs_create_stream",
            "fs_create_directories",
            "fs_copy_chunk",
            "fs_tree_delete",
        ];
        let f = Filter::new(&all.map(String::from), &[], &[], false, &[]).unwrap();
        for (op, want) in all.iter().zip([
            "file.create",
            "file.create",
            "file.create",
            "file.create",
            "directory.create",
            "file.write",
            "directory.delete",
        ]) {
            let (r, out) = run(&line(op, "/x"), &f);
            assert!(matches!(r, Ok(Outcome::Event(_))), "{op}");
            let v: Value = serde_json::from_slice(&out[4..]).unwrap();
            assert_eq!(v["operation"], want, "{op}");
        }
    }

    #[test]
    fn access_denied() {
        let v = ev(
            r#"<14>1 - h-1 qumulo - - - 1.1.1.1,"u",smb2,fs_open,fs_access_denied_error,5,"/secret/","""#,
        );
        assert_eq!(
            (&v["operation"], &v["object_type"]),
            (&json!("access_denied"), &json!("directory"))
        );
        assert_eq!(
            (&v["success"], &v["qumulo_operation"]),
            (&json!(false), &json!("fs_open"))
        );
        let v = ev(
            r#"<14>1 - h-1 qumulo - - - 1.1.1.1,"u",smb2,fs_create_directory,fs_access_denied_error,5,"/x","""#,
        );
        assert_eq!(
            (&v["operation"], &v["object_type"]),
            (&json!("access_denied"), &json!("directory"))
        );
        let v = ev(
            r#"<14>1 - h-1 qumulo - - - 1.1.1.1,"u",smb2,fs_read_data,fs_access_denied_error,5,"/x","""#,
        );
        assert_eq!(
            (&v["operation"], &v["object_type"]),
            (&json!("access_denied"), &json!("file"))
        );
        // a failed, kept operation that is not access denied
        let v = ev(
            r#"<14>1 - h-1 qumulo - - - 1.1.1.1,"u",smb2,fs_delete,fs_no_such_entry_error,5,"/x","""#,
        );
        assert_eq!(
            (&v["operation"], &v["success"]),
            (&json!("file.delete"), &json!(false))
        );
    }

    #[test]
    fn filter_reasons() {
        let line = |app: &str, op: &str| {
            format!(r#"<14>1 - h-1 {app} - - - 1.1.1.1,"u",smb2,{op},ok,5,"/x","""#)
        };
        assert_eq!(
            outcome(&line("sshd", "fs_read_data")),
            Ok(Outcome::Filtered(FilterReason::AppName))
        );
        assert_eq!(
            outcome(&line("-", "fs_read_data")),
            Ok(Outcome::Filtered(FilterReason::AppName))
        );
        assert_eq!(
            outcome(&line("qumulo", "fs_read_metadata")),
            Ok(Outcome::Filtered(FilterReason::Operation))
        );
        assert_eq!(
            outcome(&line("qumulo", "cluster_restart")),
            Ok(Outcome::Filtered(FilterReason::Operation))
        );
        assert_eq!(
            outcome(&line("qumulo", "fs_warp")),
            Ok(Outcome::Filtered(FilterReason::UnknownOperation))
        );
        // App name is checked before the payload is even parsed.
        assert_eq!(
            outcome("<14>1 - h-1 sshd - - - garbage"),
            Ok(Outcome::Filtered(FilterReason::AppName))
        );
        let strict = Filter::new(
            &["fs_read_data".into()],
            &["nfs3".into()],
            &["ok".into()],
            false,
            &[],
        )
        .unwrap();
        assert_eq!(
            run(&line("x", "fs_read_data"), &strict).0,
            Ok(Outcome::Filtered(FilterReason::Protocol))
        );
        let line2 = r#"<14>1 - h-1 x - - - 1.1.1.1,"u",nfs3,fs_read_data,fs_error,5,"/x","""#;
        assert_eq!(
            run(line2, &strict).0,
            Ok(Outcome::Filtered(FilterReason::Status))
        );
        let null_proto = r#"<14>1 - h-1 x - - - {"protocol":null,"operation":"fs_read_data","status":"ok","details":{"path":"/x"}}"#;
        assert_eq!(
            run(null_proto, &strict).0,
            Ok(Outcome::Filtered(FilterReason::Protocol))
        );
    }

    #[test]
    fn json_values() {
        let v = ev(concat!(
            r#"<14>1 - - qumulo - - - {"details":{"file_id":140624751830626345080086044861,"path":"/p\u00e9\"q\\r\/s\a"},"#,
            r#""status":"ok","operation":"fs_read_data","protocol":"smb2","user_ip":null,"#,
            r#""user_id":{"sid":null,"auth_id":500,"name":"AD\\carol"},"x":[{"y":"}"}]}"#
        ));
        assert_eq!(v["node"], Value::Null);
        assert_eq!(v["file_id"], "140624751830626345080086044861");
        assert_eq!(v["path"], "/pé\"q\\r/s\\a");
        assert_eq!(v["client_ip"], Value::Null);
        assert_eq!(
            v["user"],
            json!({"sid": null, "auth_id": "500", "name": "AD\\carol"})
        );
        let v = ev(
            r#"<14>1 - h qumulo - - - {"operation":"fs_read_data","status":"ok","details":{"path":"/x","file_id":""}}"#,
        );
        assert_eq!(v["file_id"], Value::Null);
        assert_eq!(
            v["user"],
            json!({"sid": null, "auth_id": null, "name": null})
        );
        assert_eq!(v["protocol"], Value::Null);
    }

    #[test]
    fn csv_values() {
        let v = ev(
            r#"<14>1 - h qumulo - - - fe80::1%eth0,"S-1-5-21-1-2-3-1104",smb2,fs_write_data,ok,12,"/a, ""quoted"" \dir\f.txt","""#,
        );
        assert_eq!(v["client_ip"], "fe80::1%eth0");
        assert_eq!(
            v["user"],
            json!({"sid": "S-1-5-21-1-2-3-1104", "auth_id": null, "name": null})
        );
        assert_eq!(v["path"], "/a, \"quoted\" \\dir\\f.txt");
        let v = ev("<14>1 - h qumulo - - - 1.1.1.1,\"tab\tuser\",smb2,fs_write_data,ok,12,\"/ctl\u{1}\u{7f}é😀\",\"\"");
        assert_eq!(v["user"]["name"], "tab\tuser");
        assert_eq!(v["path"], "/ctl\u{1}\u{7f}é😀");
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        let mut frame =
            br#"<14>1 - h qumulo - - - 1.1.1.1,"u",smb2,fs_read_data,ok,1,"/bad"#.to_vec();
        frame.extend_from_slice(b"\xff\xfe\",\"\"");
        let mut out = Vec::new();
        let r = convert(&frame, &CTX, &Filter::reference_default(), &mut out);
        assert_eq!(r, Ok(Outcome::Event(Operation::FileRead)));
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["path"], "/bad\u{fffd}\u{fffd}");
    }

    #[test]
    fn errors_leave_output_untouched() {
        let cases: &[(&str, ParseError)] = &[
            ("", ParseError::Empty),
            ("\r\n\0", ParseError::Empty),
            ("hello", ParseError::Header),
            (
                // The timestamp is read once the record is known to be kept.
                "<14>1 2026-13-01T00:00:00Z h qumulo - - - 1.1.1.1,\"u\",smb2,fs_read_data,ok,1,\"/a\",\"\"",
                ParseError::Timestamp,
            ),
            ("<14>1 - h qumulo - - -", ParseError::Payload),
            (
                "<14>1 - h qumulo - - - {\"operation\":",
                ParseError::Payload,
            ),
            (
                "<14>1 - h qumulo - - - 1.1.1.1,\"u\",smb2",
                ParseError::Payload,
            ),
            (
                "<14>1 - h qumulo - - - {\"status\":\"ok\"}",
                ParseError::MissingField("operation"),
            ),
            (
                "<14>1 - h qumulo - - - {\"operation\":\"fs_read_data\",\"status\":null}",
                ParseError::MissingField("status"),
            ),
            (
                "<14>1 - h qumulo - - - 1.1.1.1,\"u\",smb2,,ok,1,\"/\",\"\"",
                ParseError::MissingField("operation"),
            ),
            (
                "<14>1 - h qumulo - - - {\"operation\":\"fs_read_data\",\"status\":\"ok\"}",
                ParseError::MissingField("path"),
            ),
            (
                "<14>1 - h qumulo - - - 1.1.1.1,\"u\",smb2,fs_read_data,ok,1,\"\",\"\"",
                ParseError::MissingField("path"),
            ),
        ];
        for (frame, want) in cases {
            assert_eq!(outcome(frame), Err(*want), "{frame}");
        }
        let (r, out) = run("<14>1 - h qumulo - - - x", &Filter::reference_default());
        assert!(r.is_err());
        assert_eq!(out, b"prev");
    }

    #[test]
    fn hostnames() {
        assert_eq!(frame_hostname(b"<14>1 - - qumulo - - - x"), None);
        assert_eq!(frame_hostname(b"garbage"), None);
        assert_eq!(
            frame_hostname(b"<14>1 - groot-1 qumulo - - - x"),
            Some("groot-1")
        );
        assert_eq!(
            frame_hostname(b"<14>Jan  7 04:02:03 Blog-1 qumulo[1]: x"),
            Some("Blog-1")
        );
        assert_eq!(
            frame_hostname(b"<14>1 2026-99-99T00:00:00Z groot-1 qumulo - - - x"),
            Some("groot-1")
        );
        assert_eq!(frame_hostname(b"<14>1 - gr\xffoot-1 qumulo - - - x"), None);
        assert_eq!(cluster_of_hostname("cs-fil-q-k144-1"), "cs-fil-q-k144");
        assert_eq!(cluster_of_hostname("groot-12"), "groot");
        assert_eq!(cluster_of_hostname("groot"), "groot");
        assert_eq!(cluster_of_hostname("groot-"), "groot-");
        assert_eq!(cluster_of_hostname("-1"), "-1");
        assert_eq!(cluster_of_hostname("groot-1a"), "groot-1a");
        assert_eq!(cluster_of_hostname("a--1"), "a-");
        assert_eq!(cluster_of_hostname(""), "");
    }

    #[test]
    fn later_hostnames_follow_the_first_frames_rules() {
        let by_name = ConnNode {
            node: "qc-1",
            cluster: "qc",
        };
        assert!(by_name.accepts(b"qc-1"));
        assert!(by_name.accepts(b"qc-2"), "another node of the same cluster");
        assert!(!by_name.accepts(b"other-1"), "another cluster's node");
        assert!(!by_name.accepts(b"qc-\x01"), "a control character");
        assert!(!by_name.accepts(&[b'q'; 256]), "too long");
        // A cluster told by the source address: any valid HOSTNAME names the node.
        let by_source = ConnNode {
            node: "10.0.0.7",
            cluster: "prod",
        };
        assert!(by_source.accepts(b"qumulo-a"));
        assert!(!by_source.accepts(b"bad host"));

        let frame =
            |host: &str| format!("<14>1 2026-01-27T14:12:23.955Z {host} qumulo - - - {CSV}");
        let ctx = FrameCtx {
            conn: Some(&by_name),
            ..CTX
        };
        let node_of = |host: &str| {
            let mut out = Vec::new();
            convert(
                frame(host).as_bytes(),
                &ctx,
                &Filter::reference_default(),
                &mut out,
            )
            .unwrap();
            serde_json::from_slice::<Value>(&out).unwrap()["node"].clone()
        };
        assert_eq!(node_of("qc-2"), "qc-2");
        assert_eq!(node_of("other-3"), "qc-1");
        assert_eq!(node_of("qc\u{7f}"), "qc-1");
    }

    #[test]
    fn seq_and_success() {
        let mut out = Vec::new();
        let ctx = FrameCtx {
            seq: u64::MAX,
            received_unix_ms: 0,
            conn: None,
        };
        let frame = format!("<14>1 - h qumulo - - - {CSV}");
        convert(
            frame.as_bytes(),
            &ctx,
            &Filter::reference_default(),
            &mut out,
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["seq"], u64::MAX);
        assert_eq!(v["time"], "1970-01-01T00:00:00.000Z");
        assert_eq!(v["success"], true);
    }
}
