//! gen: synthetic Qumulo audit events, the syslog frames that carry them, and
//! the Varonis events qbroker must turn them into.
//!
//! Every event is a pure function of `(seed, cluster, node, class, seq)`, so
//! the sender never keeps events in memory and the sink regenerates, from the
//! identity packed into an event's `file_id`, exactly the event it expects.
//!
//! # Identity
//!
//! `file_id` is a decimal u128 (always 32 digits, above 2^64, like the ids
//! Qumulo prints) laid out as
//!
//! ```text
//! bits 100..=107  magic 0x4C ("L"), so foreign ids are recognised
//! bits  84..=99   run tag: a hash of the generator configuration
//! bits  68..=83   cluster index
//! bits  52..=67   node number (1-based, as in the HOSTNAME)
//! bit   51        1 = filtered out (qbroker must never deliver it)
//! bits   0..=50   seq: per node, counted separately for expected and
//!                 filtered events, so expected seqs are dense: a gap is a
//!                 loss, a repeat a duplicate, a decrease a reorder
//! ```
//!
//! # Streams
//!
//! Per node, slot `i` of the stream is expected or filtered (a function of
//! `i`); the k-th expected event is `expected_event(c, n, k)` and the j-th
//! filtered one `filtered_event(c, n, j)`. With the weights of [`Mix`] the
//! marginal distribution over slots is exactly the configured mix.

use anyhow::{bail, Context};

/// The status qbroker turns into `access_denied`, whatever the operation.
pub const DENIED: &str = "fs_access_denied_error";

// ---------------------------------------------------------------- identity

const ID_MAGIC: u128 = 0x4C;
const MAGIC_SHIFT: u32 = 100;
const TAG_SHIFT: u32 = 84;
const CLUSTER_SHIFT: u32 = 68;
const NODE_SHIFT: u32 = 52;
const FILTERED_SHIFT: u32 = 51;
/// Largest per-node sequence number an identity can carry.
pub const MAX_SEQ: u64 = (1 << FILTERED_SHIFT) - 1;

/// What the `file_id` of a generated event says about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    pub tag: u16,
    pub cluster: u16,
    pub node: u16,
    pub filtered: bool,
    pub seq: u64,
}

impl Identity {
    pub fn encode(self) -> u128 {
        debug_assert!(self.seq <= MAX_SEQ);
        (ID_MAGIC << MAGIC_SHIFT)
            | (self.tag as u128) << TAG_SHIFT
            | (self.cluster as u128) << CLUSTER_SHIFT
            | (self.node as u128) << NODE_SHIFT
            | (self.filtered as u128) << FILTERED_SHIFT
            | (self.seq & MAX_SEQ) as u128
    }

    pub fn decode(v: u128) -> Option<Self> {
        if v >> MAGIC_SHIFT != ID_MAGIC {
            return None;
        }
        Some(Identity {
            tag: (v >> TAG_SHIFT) as u16,
            cluster: (v >> CLUSTER_SHIFT) as u16,
            node: (v >> NODE_SHIFT) as u16,
            filtered: (v >> FILTERED_SHIFT) & 1 == 1,
            seq: (v as u64) & MAX_SEQ,
        })
    }

    /// Parses a decimal `file_id`; `None` if it is not one of ours.
    pub fn parse(s: &str) -> Option<Self> {
        if s.is_empty() || s.len() > 39 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse::<u128>().ok().and_then(Self::decode)
    }

    pub fn to_decimal(self) -> String {
        let mut v = Vec::with_capacity(40);
        push_u128(&mut v, self.encode());
        String::from_utf8(v).expect("digits")
    }
}

// ---------------------------------------------------------------- numbers

const DIGITS2: &[u8; 200] = b"0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";

pub fn push_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    while v >= 100 {
        let d = (v % 100) as usize * 2;
        v /= 100;
        i -= 2;
        buf[i..i + 2].copy_from_slice(&DIGITS2[d..d + 2]);
    }
    if v >= 10 {
        let d = v as usize * 2;
        i -= 2;
        buf[i..i + 2].copy_from_slice(&DIGITS2[d..d + 2]);
    } else {
        i -= 1;
        buf[i] = b'0' + v as u8;
    }
    out.extend_from_slice(&buf[i..]);
}

fn push_u64_padded(out: &mut Vec<u8>, v: u64, width: usize) {
    let digits = v.checked_ilog10().map_or(1, |d| d as usize + 1);
    for _ in digits..width {
        out.push(b'0');
    }
    push_u64(out, v);
}

pub fn push_u128(out: &mut Vec<u8>, v: u128) {
    const E19: u128 = 10_000_000_000_000_000_000;
    if v <= u64::MAX as u128 {
        push_u64(out, v as u64);
    } else {
        push_u128(out, v / E19);
        push_u64_padded(out, (v % E19) as u64, 19);
    }
}

fn push_hex(out: &mut Vec<u8>, v: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 16];
    let mut i = buf.len();
    let mut v = v;
    loop {
        i -= 1;
        buf[i] = HEX[(v & 15) as usize];
        v >>= 4;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

// ---------------------------------------------------------------- time

/// Length of the syslog timestamp the sender writes and later patches:
/// `2026-01-27T14:12:23.955812Z` (microseconds, as Qumulo writes it).
pub const TS_LEN: usize = 27;
/// Offset of the timestamp inside a frame's syslog message (`<14>1 `).
pub const TS_OFFSET: usize = 6;

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// (year, month, day) to days since 1970-01-01.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn push_date_time(out: &mut Vec<u8>, secs: u64) {
    let (y, mo, d) = civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    push_u64_padded(out, y as u64, 4);
    out.push(b'-');
    push_u64_padded(out, mo as u64, 2);
    out.push(b'-');
    push_u64_padded(out, d as u64, 2);
    out.push(b'T');
    push_u64_padded(out, s / 3600, 2);
    out.push(b':');
    push_u64_padded(out, s / 60 % 60, 2);
    out.push(b':');
    push_u64_padded(out, s % 60, 2);
}

/// The syslog timestamp for `unix_us` microseconds since the epoch.
pub fn syslog_ts(unix_us: u64) -> [u8; TS_LEN] {
    let mut v = Vec::with_capacity(TS_LEN);
    push_date_time(&mut v, unix_us / 1_000_000);
    v.push(b'.');
    push_u64_padded(&mut v, unix_us % 1_000_000, 6);
    v.push(b'Z');
    v.try_into().expect("timestamp is 27 bytes until year 9999")
}

fn push_ns_time(out: &mut Vec<u8>, unix_ns: u64) {
    push_date_time(out, unix_ns / 1_000_000_000);
    out.push(b'.');
    push_u64_padded(out, unix_ns % 1_000_000_000, 9);
    out.push(b'Z');
}

/// Microseconds since the epoch, now.
pub fn now_unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

// ---------------------------------------------------------------- rng

/// splitmix64's finaliser.
pub fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

pub fn key(parts: &[u64]) -> u64 {
    let mut h = 0x9e37_79b9_7f4a_7c15u64;
    for &p in parts {
        h = mix64(h ^ p).rotate_left(17).wrapping_add(p);
    }
    mix64(h)
}

/// wyrand: small, fast, and fixed here so that sender and sink agree forever.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(mix64(seed))
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0xa076_1d64_78bd_642f);
        let t = (self.0 as u128).wrapping_mul((self.0 ^ 0xe703_7ed1_a0b4_28db) as u128);
        ((t >> 64) as u64) ^ (t as u64)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
    /// True with probability `ppm` per million.
    pub fn ppm(&mut self, ppm: u32) -> bool {
        self.below(1_000_000) < ppm as u64
    }
    pub fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
}

// ---------------------------------------------------------------- operations

/// How an operation's details look and what qbroker makes of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    CreateFile,
    CreateDir,
    ReadData,
    WriteData,
    Delete,
    Rename,
    WriteMeta,
    /// filtered fs op on a file (path + file_id)
    FsFile,
    /// filtered fs op on a directory
    FsDir,
    /// filtered fs op on a file or a directory
    FsAny,
    /// connectivity op: no file
    Connect,
    /// REST management op: file id and path reused for other data
    Mgmt,
}

impl Kind {
    /// Kept by qbroker's default filter whatever the status.
    pub fn kept(self) -> bool {
        matches!(
            self,
            Kind::CreateFile
                | Kind::CreateDir
                | Kind::ReadData
                | Kind::WriteData
                | Kind::Delete
                | Kind::Rename
                | Kind::WriteMeta
        )
    }
    /// Generated with `fs_access_denied_error` (which qbroker keeps): only
    /// operations whose details carry a file id, so the identity survives.
    fn deniable(self) -> bool {
        !matches!(self, Kind::Connect | Kind::Mgmt)
    }
}

pub struct OpDef {
    pub name: &'static str,
    pub kind: Kind,
    /// default weight, per mille of all events, roughly
    pub weight: u32,
    /// error statuses (other than access denied) this op may carry
    pub errors: &'static [&'static str],
}

const E_EXISTS: &str = "fs_entry_exists_error";
const E_NOENT: &str = "fs_no_such_entry_error";
const E_SHARE: &str = "fs_sharing_violation_error";
const E_QUOTA: &str = "fs_quota_no_space_error";

/// Operations Qumulo emits that the generator knows how to shape.
pub const OPS: &[OpDef] = &[
    // kept by qbroker
    OpDef {
        name: "fs_read_data",
        kind: Kind::ReadData,
        weight: 120,
        errors: &[E_SHARE, E_NOENT],
    },
    OpDef {
        name: "fs_write_data",
        kind: Kind::WriteData,
        weight: 100,
        errors: &[E_QUOTA, E_SHARE, "fs_read_only_error"],
    },
    OpDef {
        name: "fs_create_file",
        kind: Kind::CreateFile,
        weight: 40,
        errors: &[E_EXISTS, "fs_no_such_path_error", E_QUOTA],
    },
    OpDef {
        name: "fs_create_directory",
        kind: Kind::CreateDir,
        weight: 8,
        errors: &[E_EXISTS],
    },
    OpDef {
        name: "fs_delete",
        kind: Kind::Delete,
        weight: 25,
        errors: &[E_NOENT, E_SHARE, "fs_directory_not_empty_error"],
    },
    OpDef {
        name: "fs_rename",
        kind: Kind::Rename,
        weight: 15,
        errors: &[E_EXISTS, E_NOENT],
    },
    // JSON says nothing about a failed metadata write; only ok or denied
    OpDef {
        name: "fs_write_metadata",
        kind: Kind::WriteMeta,
        weight: 25,
        errors: &[],
    },
    // filtered out by qbroker unless denied
    OpDef {
        name: "fs_read_metadata",
        kind: Kind::FsAny,
        weight: 300,
        errors: &[E_NOENT],
    },
    OpDef {
        name: "fs_open",
        kind: Kind::FsFile,
        weight: 140,
        errors: &[E_NOENT, E_SHARE],
    },
    OpDef {
        name: "fs_list_directory",
        kind: Kind::FsDir,
        weight: 80,
        errors: &["fs_not_a_directory_error"],
    },
    OpDef {
        name: "fs_fsstat",
        kind: Kind::FsDir,
        weight: 10,
        errors: &[],
    },
    OpDef {
        name: "fs_write_file_lock",
        kind: Kind::FsFile,
        weight: 10,
        errors: &[E_SHARE],
    },
    OpDef {
        name: "fs_read_user_metadata",
        kind: Kind::FsFile,
        weight: 5,
        errors: &["fs_user_metadata_key_not_found"],
    },
    OpDef {
        name: "fs_write_user_metadata",
        kind: Kind::FsFile,
        weight: 3,
        errors: &[],
    },
    OpDef {
        name: "fs_copy_chunk",
        kind: Kind::FsFile,
        weight: 5,
        errors: &[E_QUOTA],
    },
    OpDef {
        name: "fs_read_link",
        kind: Kind::FsFile,
        weight: 4,
        errors: &["fs_not_a_symlink_error"],
    },
    OpDef {
        name: "fs_create_symlink",
        kind: Kind::FsFile,
        weight: 3,
        errors: &[E_EXISTS],
    },
    OpDef {
        name: "fs_create_hard_link",
        kind: Kind::FsFile,
        weight: 2,
        errors: &[E_EXISTS],
    },
    OpDef {
        name: "smb_close_handle",
        kind: Kind::Connect,
        weight: 40,
        errors: &[],
    },
    OpDef {
        name: "smb_login",
        kind: Kind::Connect,
        weight: 20,
        errors: &["cred_invalid_local_user_error"],
    },
    OpDef {
        name: "share_connect",
        kind: Kind::Connect,
        weight: 10,
        errors: &[],
    },
    OpDef {
        name: "rest_login",
        kind: Kind::Connect,
        weight: 3,
        errors: &["http_unauthorized_error"],
    },
    OpDef {
        name: "nfs_mount",
        kind: Kind::Connect,
        weight: 2,
        errors: &[],
    },
    OpDef {
        name: "snapshot_create_snapshot",
        kind: Kind::Mgmt,
        weight: 2,
        errors: &["api_permission_denied_error"],
    },
    OpDef {
        name: "nfs_modify_export",
        kind: Kind::Mgmt,
        weight: 1,
        errors: &["api_permission_denied_error"],
    },
    OpDef {
        name: "smb_modify_share",
        kind: Kind::Mgmt,
        weight: 1,
        errors: &[],
    },
];

pub fn op_index(name: &str) -> Option<usize> {
    OPS.iter().position(|o| o.name == name)
}

// ---------------------------------------------------------------- configuration

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Json,
    Csv,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Framing {
    /// newline-terminated (RFC 6587 non-transparent framing)
    Lf,
    /// `LEN SP MSG` (RFC 6587 octet counting)
    Octet,
}

/// The event mix, in weights.
#[derive(Clone, Debug, PartialEq)]
pub struct Mix {
    /// one weight per entry of [`OPS`]
    pub weights: Vec<u32>,
    /// share of fs operations that fail with `fs_access_denied_error`, per million
    pub denied_ppm: u32,
    /// share of operations that fail with another error, per million
    pub error_ppm: u32,
    /// share of clients with an IPv6 address, per million
    pub ipv6_ppm: u32,
    /// protocol names and weights
    pub protocols: Vec<(String, u32)>,
}

impl Default for Mix {
    fn default() -> Self {
        Mix {
            weights: OPS.iter().map(|o| o.weight).collect(),
            denied_ppm: 20_000,
            error_ppm: 20_000,
            ipv6_ppm: 150_000,
            protocols: [("smb2", 60), ("nfs3", 20), ("nfs4", 10), ("api", 10)]
                .into_iter()
                .map(|(p, w)| (p.to_string(), w))
                .collect(),
        }
    }
}

fn parse_weight_list(spec: &str) -> anyhow::Result<Vec<(String, u32)>> {
    let mut out = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, w) = item
            .split_once('=')
            .with_context(|| format!("`{item}`: expected NAME=WEIGHT"))?;
        let w: u32 = w
            .trim()
            .parse()
            .with_context(|| format!("`{item}`: weight is not a whole number"))?;
        out.push((name.trim().to_string(), w));
    }
    Ok(out)
}

impl Mix {
    /// Overrides op weights from `op=weight,op=weight`; ops not named keep
    /// their default weight (name one with weight 0 to drop it).
    pub fn set_op_weights(&mut self, spec: &str) -> anyhow::Result<()> {
        for (name, w) in parse_weight_list(spec)? {
            let Some(i) = op_index(&name) else {
                let known: Vec<_> = OPS.iter().map(|o| o.name).collect();
                bail!("unknown operation `{name}`; known: {}", known.join(", "));
            };
            self.weights[i] = w;
        }
        Ok(())
    }

    /// Replaces the protocol weights from `smb2=60,nfs3=20,...`.
    pub fn set_protocols(&mut self, spec: &str) -> anyhow::Result<()> {
        let list = parse_weight_list(spec)?;
        if list.iter().all(|(_, w)| *w == 0) {
            bail!("protocols: at least one weight must be positive");
        }
        for (p, _) in &list {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.') {
                bail!("protocol `{p}`: use letters, digits and dots");
            }
        }
        self.protocols = list;
        Ok(())
    }
}

/// Everything that decides event content (the sink needs the same).
#[derive(Clone, Debug, PartialEq)]
pub struct GenConfig {
    pub seed: u64,
    pub format: Format,
    pub mix: Mix,
    /// cluster 0, node 1 runs the ransomware-like burst profile instead of the mix
    pub burst: bool,
    /// cluster names are `<prefix><index:03>`
    pub cluster_prefix: String,
    /// share of slots that are metadata changes on the namespace objects of
    /// [`crate::acl`] (ACL, protection, owner), per million; JSON only
    pub acl_ppm: u32,
}

impl Default for GenConfig {
    fn default() -> Self {
        GenConfig {
            seed: 1,
            format: Format::Json,
            mix: Mix::default(),
            burst: false,
            cluster_prefix: "qlg-c".to_string(),
            acl_ppm: 0,
        }
    }
}

/// The node that runs the burst profile when [`GenConfig::burst`] is set.
pub const BURST_NODE: (u16, u16) = (0, 1);

// ---------------------------------------------------------------- events

/// A path, as seeds: the generator and the sink render the same string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathSpec {
    pub dir: u64,
    pub leaf: u64,
    pub is_dir: bool,
    pub suffix: Option<&'static str>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    pub before_owner: u16,
    pub after_owner: u16,
    pub ctime_before_ns: u64,
    pub ctime_after_ns: u64,
    pub mtime_ns: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Io {
    pub offset: u64,
    pub size: u64,
    pub file_size: u64,
}

/// One generated Qumulo audit event, in source form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pub id: Identity,
    /// index into [`OPS`]
    pub op: u8,
    pub status: &'static str,
    /// index into the user table
    pub user: u16,
    pub client: u32,
    pub ipv6: bool,
    /// index into the mix's protocols
    pub proto: u8,
    pub path: PathSpec,
    pub target: Option<PathSpec>,
    pub meta: Option<Meta>,
    pub io: Option<Io>,
    /// JSON key order variant (Qumulo's key order varies)
    pub layout: u8,
}

impl Event {
    pub fn op(&self) -> &'static OpDef {
        &OPS[self.op as usize]
    }
    /// qbroker's default filter keeps it.
    pub fn delivered(&self) -> bool {
        self.op().kind.kept() || self.status == DENIED
    }
}

/// A user as Qumulo names it.
#[derive(Clone, Debug, PartialEq, Eq, Default, serde::Serialize)]
pub struct ExpUser {
    pub sid: Option<String>,
    pub auth_id: Option<String>,
    pub name: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ExpOwner {
    pub sid: Option<String>,
    pub auth_id: Option<String>,
}

/// The Varonis event qbroker must deliver for an [`Event`] (all but `seq`
/// and `time`, which only the broker and the clock know).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Expected {
    pub cluster: String,
    pub node: String,
    pub operation: String,
    pub object_type: &'static str,
    pub path: String,
    pub new_path: Option<String>,
    pub file_id: String,
    pub user: ExpUser,
    pub client_ip: String,
    pub protocol: String,
    pub status: &'static str,
    pub success: bool,
    pub owner: Option<(ExpOwner, ExpOwner)>,
    pub qumulo_operation: &'static str,
}

// ---------------------------------------------------------------- encoders

/// Where rendered text goes: a JSON string body, a CSV quoted field body, or
/// a plain `String` (what the sink compares against).
trait Out {
    /// bytes that need no escaping in any encoding
    fn raw(&mut self, s: &str);
    fn text(&mut self, s: &str);
    fn num(&mut self, n: u64);
}

struct JsonOut<'a>(&'a mut Vec<u8>);
struct CsvOut<'a>(&'a mut Vec<u8>);
struct StrOut<'a>(&'a mut String);

fn json_escape(out: &mut Vec<u8>, s: &str) {
    let b = s.as_bytes();
    let mut start = 0;
    for (i, &c) in b.iter().enumerate() {
        let esc: &[u8] = match c {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0..=0x1f => {
                out.extend_from_slice(&b[start..i]);
                out.extend_from_slice(b"\\u00");
                out.push(b"0123456789abcdef"[(c >> 4) as usize]);
                out.push(b"0123456789abcdef"[(c & 15) as usize]);
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&b[start..i]);
        out.extend_from_slice(esc);
        start = i + 1;
    }
    out.extend_from_slice(&b[start..]);
}

fn json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    json_escape(out, s);
    out.push(b'"');
}

fn json_opt(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => json_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

impl Out for JsonOut<'_> {
    fn raw(&mut self, s: &str) {
        self.0.extend_from_slice(s.as_bytes());
    }
    fn text(&mut self, s: &str) {
        json_escape(self.0, s);
    }
    fn num(&mut self, n: u64) {
        push_u64(self.0, n);
    }
}

impl CsvOut<'_> {
    fn quoted(&mut self, s: &str) {
        self.0.push(b'"');
        self.text(s);
        self.0.push(b'"');
    }
}

impl Out for CsvOut<'_> {
    fn raw(&mut self, s: &str) {
        self.0.extend_from_slice(s.as_bytes());
    }
    /// Qumulo strips CR/LF; an embedded quote is doubled (RFC 4180).
    fn text(&mut self, s: &str) {
        for (i, part) in s.split('"').enumerate() {
            if i > 0 {
                self.0.extend_from_slice(b"\"\"");
            }
            self.0.extend_from_slice(part.as_bytes());
        }
    }
    fn num(&mut self, n: u64) {
        push_u64(self.0, n);
    }
}

impl Out for StrOut<'_> {
    fn raw(&mut self, s: &str) {
        self.0.push_str(s);
    }
    fn text(&mut self, s: &str) {
        self.0.push_str(s);
    }
    fn num(&mut self, n: u64) {
        use std::fmt::Write;
        let _ = write!(self.0, "{n}");
    }
}

// ---------------------------------------------------------------- vocabulary

const SHARES: &[&str] = &[
    "finance",
    "engineering",
    "hr",
    "legal",
    "marketing",
    "sales",
    "research",
    "Entwicklung",
    "ventes",
    "営業部",
    "media",
    "home",
];
const DIRS: &[&str] = &[
    "projects",
    "2023",
    "2024",
    "2025",
    "Q1",
    "Q2",
    "Q3",
    "Q4",
    "archive",
    "reports",
    "drafts",
    "Überblick",
    "données",
    "Проекты",
    "资料",
    "client files",
    "shared, common",
    "Jürgen's stuff",
    "temp",
    "backup",
    "src",
    "assets",
    "contracts",
    "年度報告",
    "ñandú",
    "photos 📷",
    "old",
    "v2",
    "final",
    "FINAL (2)",
    "a rather long directory name that somebody typed out in full",
    "résumés",
    "Ελληνικά",
    "מסמכים",
    "tmp.d",
];
const STEMS: &[&str] = &[
    "budget",
    "report",
    "invoice",
    "notes",
    "Übersicht",
    "présentation",
    "договор",
    "見積書",
    "meeting notes",
    "plan, draft",
    "IMG_2041",
    "data",
    "README",
    "contract 2024-03",
    "résumé José",
    "Quarterly Business Review - final version for the board",
    "報告書",
    "naïve café menu",
    "emoji 🎉 party",
    "~$budget",
];
const EXTS: &[&str] = &[
    ".docx", ".xlsx", ".pdf", ".txt", ".pptx", ".jpg", ".csv", ".zip", ".psd", ".mp4", ".log", "",
];
/// depth of the directory chain below the share, weighted towards 3..6
const DEPTHS: &[u64] = &[1, 2, 2, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 6, 6, 7, 8, 9, 10, 12];

fn render_path<O: Out>(p: &PathSpec, out: &mut O) {
    let mut r = Rng::new(p.dir);
    out.raw("/");
    out.text(r.pick(SHARES));
    for _ in 0..r.pick(DEPTHS) {
        out.raw("/");
        out.text(r.pick(DIRS));
        if r.below(4) == 0 {
            out.raw(" ");
            out.num(r.below(100));
        }
    }
    out.raw("/");
    let mut l = Rng::new(p.leaf);
    if p.is_dir {
        out.text(l.pick(DIRS));
        out.raw(" ");
        out.num(l.below(1000));
        if let Some(s) = p.suffix {
            out.text(s);
        }
        out.raw("/");
    } else {
        if l.below(64) == 0 {
            // an embedded quote: Qumulo quotes the field; escaping is undocumented
            out.text("\"quoted\" name");
        } else {
            out.text(l.pick(STEMS));
        }
        if l.below(2) == 0 {
            out.raw("_");
            out.num(l.below(10_000));
        }
        out.text(l.pick(EXTS));
        if let Some(s) = p.suffix {
            out.text(s);
        }
    }
}

// ---------------------------------------------------------------- users

struct User {
    /// the JSON `user_id` object
    json: Vec<u8>,
    /// the CSV user field, quoted
    csv: Vec<u8>,
    json_exp: ExpUser,
    csv_exp: ExpUser,
    /// `{"sid":...,"auth_id":...}` for users that can own files
    owner_json: Option<Vec<u8>>,
    owner_exp: Option<ExpOwner>,
}

const N_USERS: u64 = 512;
const RANSOM_USER: u16 = 3;
const FIRST: &[&str] = &[
    "alice",
    "bob",
    "carol",
    "dave",
    "erin",
    "frank",
    "józef",
    "zoë",
    "søren",
    "émilie",
    "yuki",
    "олег",
    "anne-marie",
    "o'brien",
    "ßtefan",
    "李",
];
const LAST: &[&str] = &[
    "smith",
    "müller",
    "nguyen",
    "garcía",
    "rossi",
    "kowalski",
    "tanaka",
    "dubois",
    "иванов",
    "o'neil",
    "van der berg",
    "jørgensen",
    "王",
    "lópez",
    "schmidt",
    "hughes",
];
const DOMAINS: &[&str] = &["CORP", "EMEA", "ad.example.com"];

fn build_users() -> Vec<User> {
    (0..N_USERS as usize)
        .map(|i| {
            let first = FIRST[i % FIRST.len()];
            let last = LAST[(i / FIRST.len()) % LAST.len()];
            let (sid, auth_id, name): (Option<String>, Option<String>, Option<String>) =
                match i % 16 {
                    11 | 12 => {
                        let uid = 1000 + i as u64;
                        (
                            Some(format!("S-1-5-88-1-{uid}")),
                            Some(((3u64 << 32) + uid).to_string()),
                            Some(uid.to_string()),
                        )
                    }
                    13 => (
                        Some("S-1-5-21-2906410434-1219826218-1470373424-500".to_string()),
                        Some("500".to_string()),
                        Some("admin".to_string()),
                    ),
                    // an identity Qumulo could not resolve to a name
                    14 => (
                        Some(format!(
                            "S-1-5-21-1004336348-1177238915-682003330-{}",
                            5000 + i
                        )),
                        Some((0x6_0000_0000u64 + i as u64).to_string()),
                        None,
                    ),
                    _ => (
                        Some(format!(
                            "S-1-5-21-3623811015-3361044348-30300820-{}",
                            1100 + i
                        )),
                        Some((0x5_0000_0000u64 + 1100 + i as u64).to_string()),
                        Some(format!("{}\\{first}.{last}", DOMAINS[i % DOMAINS.len()])),
                    ),
                };
            let mut json = Vec::new();
            json.extend_from_slice(b"{\"sid\":");
            json_opt(&mut json, sid.as_deref());
            json.extend_from_slice(b",\"auth_id\":");
            json_opt(&mut json, auth_id.as_deref());
            json.extend_from_slice(b",\"name\":");
            json_opt(&mut json, name.as_deref());
            json.push(b'}');
            // CSV carries one string: the name, else the SID
            let csv_str = name.clone().or(sid.clone()).unwrap_or_default();
            let mut csv = Vec::new();
            CsvOut(&mut csv).quoted(&csv_str);
            let csv_exp = if csv_str.starts_with("S-1-") {
                ExpUser {
                    sid: Some(csv_str),
                    ..ExpUser::default()
                }
            } else {
                ExpUser {
                    name: Some(csv_str),
                    ..ExpUser::default()
                }
            };
            let mut owner_json = Vec::new();
            owner_json.extend_from_slice(b"{\"sid\":");
            json_opt(&mut owner_json, sid.as_deref());
            owner_json.extend_from_slice(b",\"auth_id\":");
            json_opt(&mut owner_json, auth_id.as_deref());
            owner_json.push(b'}');
            let owns = sid.is_some() && auth_id.is_some() && name.is_some();
            User {
                json,
                csv,
                csv_exp,
                owner_exp: owns.then(|| ExpOwner {
                    sid: sid.clone(),
                    auth_id: auth_id.clone(),
                }),
                owner_json: owns.then_some(owner_json),
                json_exp: ExpUser { sid, auth_id, name },
            }
        })
        .collect()
}

// ---------------------------------------------------------------- the generator

/// The generator's configuration, compiled: shared by all senders and the sink.
pub struct GenCore {
    cfg: GenConfig,
    tag: u16,
    /// slot decision: `below(all_total) < exp_total` means expected
    all_total: u64,
    exp_total: u64,
    /// (cumulative weight, op, status forced to access denied)
    exp_choices: Vec<(u64, u8, bool)>,
    filt_choices: Vec<(u64, u8)>,
    proto_cum: Vec<(u64, u8)>,
    users: Vec<User>,
    op_open: u8,
    op_read: u8,
    op_write: u8,
    op_rename: u8,
    proto_smb: u8,
}

const PPM: u64 = 1_000_000;
const PLACEHOLDER_TS: &[u8; TS_LEN] = b"2026-01-27T14:12:23.955812Z";

fn pick_cum<T: Copy>(cum: &[(u64, T)], u: u64) -> T {
    cum.iter()
        .find(|(c, _)| u < *c)
        .map(|(_, v)| *v)
        .unwrap_or(cum[cum.len() - 1].1)
}

fn config_tag(cfg: &GenConfig) -> u16 {
    let m = &cfg.mix;
    let mut h = key(&[
        cfg.seed,
        cfg.format as u64,
        cfg.burst as u64,
        m.denied_ppm as u64,
        m.error_ppm as u64,
        m.ipv6_ppm as u64,
    ]);
    for &w in &m.weights {
        h = mix64(h ^ w as u64);
    }
    for (p, w) in &m.protocols {
        for b in p.bytes() {
            h = mix64(h ^ b as u64);
        }
        h = mix64(h ^ (*w as u64) << 8);
    }
    for b in cfg.cluster_prefix.bytes() {
        h = mix64(h ^ b as u64);
    }
    if cfg.acl_ppm > 0 {
        h = mix64(h ^ 0xAC1 ^ (cfg.acl_ppm as u64) << 16);
    }
    (h >> 48) as u16
}

impl GenCore {
    pub fn new(cfg: GenConfig) -> anyhow::Result<Self> {
        let m = &cfg.mix;
        if m.weights.len() != OPS.len() {
            bail!(
                "mix has {} weights for {} operations",
                m.weights.len(),
                OPS.len()
            );
        }
        for (name, ppm) in [
            ("denied", m.denied_ppm),
            ("error", m.error_ppm),
            ("ipv6", m.ipv6_ppm),
        ] {
            if ppm as u64 > PPM {
                bail!("{name} share above 100%");
            }
        }
        if m.denied_ppm as u64 + m.error_ppm as u64 > PPM {
            bail!("denied + error shares above 100%");
        }
        if cfg.acl_ppm as u64 > PPM / 2 {
            bail!("acl share above 50%");
        }
        if cfg.acl_ppm > 0 && cfg.format != Format::Json {
            bail!("metadata changes on the namespace need the JSON format (CSV has no owners)");
        }
        if m.protocols.is_empty() || m.protocols.len() > 255 || m.protocols.iter().all(|p| p.1 == 0)
        {
            bail!("protocols: between 1 and 255, with a positive weight");
        }
        let p = &cfg.cluster_prefix;
        if p.is_empty()
            || p.ends_with('-')
            || !p
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            bail!("cluster prefix `{p}`: letters, digits, `-`, `_`, not ending in `-`");
        }
        let (mut exp_choices, mut filt_choices) = (Vec::new(), Vec::new());
        let (mut exp_total, mut filt_total) = (0u64, 0u64);
        for (i, (op, &w)) in OPS.iter().zip(&m.weights).enumerate() {
            let w = w as u64;
            if op.kind.kept() {
                exp_total += w * PPM;
                exp_choices.push((exp_total, i as u8, false));
            } else if op.kind.deniable() {
                exp_total += w * m.denied_ppm as u64;
                exp_choices.push((exp_total, i as u8, true));
                filt_total += w * (PPM - m.denied_ppm as u64);
                filt_choices.push((filt_total, i as u8));
            } else {
                filt_total += w * PPM;
                filt_choices.push((filt_total, i as u8));
            }
        }
        if exp_total + filt_total == 0 {
            bail!("every operation weight is zero");
        }
        let mut proto_cum = Vec::new();
        let mut pt = 0;
        for (i, (_, w)) in m.protocols.iter().enumerate() {
            pt += *w as u64;
            proto_cum.push((pt, i as u8));
        }
        let idx = |n: &str| op_index(n).expect("known op") as u8;
        Ok(GenCore {
            tag: config_tag(&cfg),
            all_total: exp_total + filt_total,
            exp_total,
            exp_choices,
            filt_choices,
            proto_cum,
            users: build_users(),
            op_open: idx("fs_open"),
            op_read: idx("fs_read_data"),
            op_write: idx("fs_write_data"),
            op_rename: idx("fs_rename"),
            proto_smb: m.protocols.iter().position(|p| p.0 == "smb2").unwrap_or(0) as u8,
            cfg,
        })
    }

    pub fn config(&self) -> &GenConfig {
        &self.cfg
    }

    /// The run tag carried in every identity.
    pub fn tag(&self) -> u16 {
        self.tag
    }

    pub fn cluster_name(&self, cluster: u16) -> String {
        format!("{}{:03}", self.cfg.cluster_prefix, cluster)
    }

    /// The syslog HOSTNAME of a node (`<cluster>-<node>`, node from 1).
    pub fn hostname(&self, cluster: u16, node: u16) -> String {
        format!("{}-{}", self.cluster_name(cluster), node)
    }

    fn is_burst(&self, cluster: u16, node: u16) -> bool {
        self.cfg.burst && (cluster, node) == BURST_NODE
    }

    /// Expected share of a node's events (what qbroker should deliver).
    pub fn expected_share(&self, cluster: u16, node: u16) -> f64 {
        if self.is_burst(cluster, node) {
            0.75
        } else {
            self.exp_total as f64 / self.all_total as f64
        }
    }

    /// Whether slot `slot` of a node's stream is a namespace metadata change.
    pub fn slot_is_acl(&self, cluster: u16, node: u16, slot: u64) -> bool {
        self.cfg.acl_ppm > 0
            && !self.is_burst(cluster, node)
            && Rng::new(key(&[
                self.cfg.seed,
                0xAC0,
                cluster as u64,
                node as u64,
                slot,
            ]))
            .ppm(self.cfg.acl_ppm)
    }

    /// Whether slot `slot` of a node's stream is an expected event.
    pub fn slot_is_expected(&self, cluster: u16, node: u16, slot: u64) -> bool {
        if self.is_burst(cluster, node) {
            return !slot.is_multiple_of(4);
        }
        let mut r = Rng::new(key(&[
            self.cfg.seed,
            0x510,
            cluster as u64,
            node as u64,
            slot,
        ]));
        r.below(self.all_total) < self.exp_total
    }

    fn id(&self, cluster: u16, node: u16, filtered: bool, seq: u64) -> Identity {
        Identity {
            tag: self.tag,
            cluster,
            node,
            filtered,
            seq,
        }
    }

    /// The `seq`-th expected event of a node.
    pub fn expected_event(&self, cluster: u16, node: u16, seq: u64) -> Event {
        let id = self.id(cluster, node, false, seq);
        if self.is_burst(cluster, node) {
            return self.burst_event(id, seq);
        }
        let mut r = Rng::new(key(&[
            self.cfg.seed,
            0xE4,
            cluster as u64,
            node as u64,
            seq,
        ]));
        let u = r.below(self.exp_total.max(1));
        let (op, forced) = {
            let c = self
                .exp_choices
                .iter()
                .find(|c| u < c.0)
                .unwrap_or(&self.exp_choices[0]);
            (c.1, c.2)
        };
        let m = &self.cfg.mix;
        let errors = OPS[op as usize].errors;
        let status = if forced || r.ppm(m.denied_ppm) {
            DENIED
        } else if !errors.is_empty() && r.ppm(m.error_ppm) {
            r.pick(errors)
        } else {
            "ok"
        };
        self.shape(&mut r, id, op, status)
    }

    /// The `seq`-th filtered-out event of a node.
    pub fn filtered_event(&self, cluster: u16, node: u16, seq: u64) -> Event {
        let id = self.id(cluster, node, true, seq);
        if self.is_burst(cluster, node) {
            let mut ev = self.burst_event(id, seq * 3);
            ev.op = self.op_open;
            ev.io = None;
            return ev;
        }
        let mut r = Rng::new(key(&[
            self.cfg.seed,
            0xF1,
            cluster as u64,
            node as u64,
            seq,
        ]));
        let op = pick_cum(&self.filt_choices, r.below(self.all_total - self.exp_total));
        let errors = OPS[op as usize].errors;
        let status = if !errors.is_empty() && r.ppm(self.cfg.mix.error_ppm) {
            r.pick(errors)
        } else {
            "ok"
        };
        self.shape(&mut r, id, op, status)
    }

    /// Ransomware-like: one user reads, overwrites and renames file after file.
    fn burst_event(&self, id: Identity, k: u64) -> Event {
        let (c, n, seed) = (id.cluster as u64, id.node as u64, self.cfg.seed);
        let file = k / 3;
        let path = PathSpec {
            dir: key(&[seed, 0xB0, c, n, file / 200]),
            leaf: key(&[seed, 0xB1, c, n, file]),
            is_dir: false,
            suffix: None,
        };
        let size = 4096 + mix64(path.leaf) % (8 << 20);
        let (op, target, io) = match k % 3 {
            0 => (
                self.op_read,
                None,
                Some(Io {
                    offset: 0,
                    size,
                    file_size: size,
                }),
            ),
            1 => (
                self.op_write,
                None,
                Some(Io {
                    offset: 0,
                    size,
                    file_size: size,
                }),
            ),
            _ => (
                self.op_rename,
                Some(PathSpec {
                    suffix: Some(".locked"),
                    ..path
                }),
                None,
            ),
        };
        Event {
            id,
            op,
            status: "ok",
            user: RANSOM_USER,
            client: 7,
            ipv6: false,
            proto: self.proto_smb,
            path,
            target,
            meta: None,
            io,
            layout: 0,
        }
    }

    /// The users that can own files and be ACL trustees (sid, auth_id and name known).
    pub fn owner_users(&self) -> Vec<u16> {
        (0..self.users.len() as u16)
            .filter(|&u| self.users[u as usize].owner_exp.is_some())
            .collect()
    }

    /// A user as the JSON format names it.
    pub fn user_json(&self, user: u16) -> &ExpUser {
        &self.users[user as usize].json_exp
    }

    fn owner_user(&self, r: &mut Rng) -> u16 {
        loop {
            let u = r.below(N_USERS) as u16;
            if self.users[u as usize].owner_exp.is_some() {
                return u;
            }
        }
    }

    fn shape(&self, r: &mut Rng, id: Identity, op: u8, status: &'static str) -> Event {
        let kind = OPS[op as usize].kind;
        let (seed, c) = (self.cfg.seed, id.cluster as u64);
        let user = r.below(N_USERS) as u16;
        let client = r.below(4096) as u32;
        let ipv6 = r.ppm(self.cfg.mix.ipv6_ppm);
        let proto_total = self.proto_cum[self.proto_cum.len() - 1].0;
        let proto = pick_cum(&self.proto_cum, r.below(proto_total));
        let is_dir = match kind {
            Kind::CreateDir | Kind::FsDir => true,
            Kind::Delete | Kind::Rename | Kind::WriteMeta | Kind::FsAny => r.below(5) == 0,
            _ => false,
        };
        let dir = key(&[seed, 0xD1, c, r.below(2000)]);
        let path = PathSpec {
            dir,
            leaf: key(&[seed, 0x1E, c, r.below(50_000)]),
            is_dir,
            suffix: None,
        };
        let target = (kind == Kind::Rename).then(|| {
            let dir = if r.below(10) == 0 {
                key(&[seed, 0xD1, c, r.below(2000)])
            } else {
                dir
            };
            PathSpec {
                dir,
                leaf: r.next_u64(),
                is_dir,
                suffix: None,
            }
        });
        let meta = (kind == Kind::WriteMeta && status == "ok").then(|| {
            let before_owner = self.owner_user(r);
            let mut after_owner = before_owner;
            if r.below(10) < 3 {
                while self.users[after_owner as usize].owner_exp
                    == self.users[before_owner as usize].owner_exp
                {
                    after_owner = self.owner_user(r);
                }
            }
            // 2025-01-01T00:00:00Z plus up to a year
            let t = 1_735_689_600_000_000_000 + r.below(365 * 86_400 * 1_000_000_000);
            Meta {
                before_owner,
                after_owner,
                ctime_before_ns: t,
                ctime_after_ns: t + 1 + r.below(10_000_000_000),
                mtime_ns: t - r.below(t / 1000),
            }
        });
        let io = matches!(kind, Kind::ReadData | Kind::WriteData).then(|| {
            let file_size = r.below(100 << 20);
            let size = 1 + r.below(1 << 20);
            Io {
                offset: r.below(file_size.max(1)),
                size,
                file_size: file_size.max(size),
            }
        });
        Event {
            id,
            op,
            status,
            user,
            client,
            ipv6,
            proto,
            path,
            target,
            meta,
            io,
            layout: r.below(2) as u8,
        }
    }

    // ------------------------------------------------------------ rendering

    fn push_ip(&self, ev: &Event, out: &mut Vec<u8>) {
        let c = ev.id.cluster as u64;
        if ev.ipv6 {
            out.extend_from_slice(b"fd00:");
            push_hex(out, c);
            out.extend_from_slice(b"::");
            push_hex(out, ev.client as u64 + 1);
        } else {
            out.extend_from_slice(b"10.");
            push_u64(out, c % 256);
            out.push(b'.');
            push_u64(out, ev.client as u64 / 254);
            out.push(b'.');
            push_u64(out, ev.client as u64 % 254 + 1);
        }
    }

    fn protocol(&self, ev: &Event) -> &str {
        &self.cfg.mix.protocols[ev.proto as usize].0
    }

    /// The syslog MSG (the audit record) of an event.
    pub fn render_msg(&self, ev: &Event, out: &mut Vec<u8>) {
        match self.cfg.format {
            Format::Json => self.render_json(ev, out),
            Format::Csv => self.render_csv(ev, out),
        }
    }

    fn render_json(&self, ev: &Event, out: &mut Vec<u8>) {
        out.push(b'{');
        if ev.layout == 0 {
            self.json_who(ev, out);
            out.push(b',');
            self.json_what(ev, out);
        } else {
            self.json_what(ev, out);
            out.push(b',');
            self.json_who(ev, out);
        }
        out.push(b'}');
    }

    fn json_who(&self, ev: &Event, out: &mut Vec<u8>) {
        out.extend_from_slice(b"\"user_id\":");
        out.extend_from_slice(&self.users[ev.user as usize].json);
        out.extend_from_slice(b",\"user_ip\":\"");
        self.push_ip(ev, out);
        out.extend_from_slice(b"\",\"protocol\":");
        json_str(out, self.protocol(ev));
    }

    fn json_what(&self, ev: &Event, out: &mut Vec<u8>) {
        let def = ev.op();
        out.extend_from_slice(b"\"operation\":\"");
        out.extend_from_slice(def.name.as_bytes());
        out.extend_from_slice(b"\",\"status\":\"");
        out.extend_from_slice(ev.status.as_bytes());
        out.extend_from_slice(b"\",\"details\":{");
        let id = |out: &mut Vec<u8>| {
            out.extend_from_slice(b"\"file_id\":\"");
            push_u128(out, ev.id.encode());
            out.push(b'"');
        };
        let path = |out: &mut Vec<u8>, p: &PathSpec| {
            out.push(b'"');
            render_path(p, &mut JsonOut(out));
            out.push(b'"');
        };
        match def.kind {
            Kind::Connect => {
                out.extend_from_slice(b"\"extra_name\":\"\",\"second_extra_name\":\"\"")
            }
            Kind::Mgmt => {
                out.extend_from_slice(b"\"extra_name\":\"/export");
                push_u64(out, ev.client as u64 % 16);
                out.extend_from_slice(b"\",\"second_extra_name\":\"\"");
            }
            Kind::WriteMeta if ev.meta.is_some() => {
                let m = ev.meta.expect("checked");
                id(out);
                out.extend_from_slice(b",\"path\":");
                path(out, &ev.path);
                for (name, owner, ctime) in [
                    ("after", m.after_owner, m.ctime_after_ns),
                    ("before", m.before_owner, m.ctime_before_ns),
                ] {
                    out.extend_from_slice(b",\"");
                    out.extend_from_slice(name.as_bytes());
                    out.extend_from_slice(b"\":{\"ctime\":\"");
                    push_ns_time(out, ctime);
                    out.extend_from_slice(b"\",\"mtime\":\"");
                    push_ns_time(out, m.mtime_ns);
                    out.extend_from_slice(b"\",\"owner\":");
                    let u = &self.users[owner as usize];
                    out.extend_from_slice(u.owner_json.as_deref().unwrap_or(b"null"));
                    out.push(b'}');
                }
            }
            _ => {
                out.extend_from_slice(b"\"path\":");
                path(out, &ev.path);
                if let Some(t) = &ev.target {
                    out.extend_from_slice(b",\"target\":");
                    path(out, t);
                }
                out.push(b',');
                id(out);
                if let Some(io) = ev.io {
                    out.extend_from_slice(b",\"offset\":");
                    push_u64(out, io.offset);
                    out.extend_from_slice(b",\"size\":");
                    push_u64(out, io.size);
                    out.extend_from_slice(b",\"file_size\":");
                    push_u64(out, io.file_size);
                }
            }
        }
        out.push(b'}');
    }

    fn render_csv(&self, ev: &Event, out: &mut Vec<u8>) {
        let def = ev.op();
        self.push_ip(ev, out);
        out.push(b',');
        out.extend_from_slice(&self.users[ev.user as usize].csv);
        out.push(b',');
        out.extend_from_slice(self.protocol(ev).as_bytes());
        out.push(b',');
        out.extend_from_slice(def.name.as_bytes());
        out.push(b',');
        out.extend_from_slice(ev.status.as_bytes());
        out.push(b',');
        match def.kind {
            Kind::Connect => out.extend_from_slice(b",\"\",\"\""),
            Kind::Mgmt => {
                let n = ev.client as u64 % 16;
                push_u64(out, n + 2);
                out.extend_from_slice(b",\"/export");
                push_u64(out, n);
                out.extend_from_slice(b"\",\"\"");
            }
            _ => {
                push_u128(out, ev.id.encode());
                out.extend_from_slice(b",\"");
                render_path(&ev.path, &mut CsvOut(out));
                out.extend_from_slice(b"\",\"");
                if let Some(t) = &ev.target {
                    render_path(t, &mut CsvOut(out));
                }
                out.push(b'"');
            }
        }
    }

    /// Appends one complete frame; returns the offset of its timestamp.
    pub fn render_frame(
        &self,
        ev: &Event,
        host: &[u8],
        framing: Framing,
        out: &mut Vec<u8>,
        scratch: &mut Vec<u8>,
    ) -> usize {
        let header = |o: &mut Vec<u8>| {
            o.extend_from_slice(b"<14>1 ");
            o.extend_from_slice(PLACEHOLDER_TS);
            o.push(b' ');
            o.extend_from_slice(host);
            o.extend_from_slice(b" qumulo - - - ");
        };
        match framing {
            Framing::Lf => {
                let ts = out.len() + TS_OFFSET;
                header(out);
                self.render_msg(ev, out);
                out.push(b'\n');
                ts
            }
            Framing::Octet => {
                scratch.clear();
                header(scratch);
                self.render_msg(ev, scratch);
                push_u64(out, scratch.len() as u64);
                out.push(b' ');
                let ts = out.len() + TS_OFFSET;
                out.extend_from_slice(scratch);
                ts
            }
        }
    }

    pub fn path_string(&self, p: &PathSpec) -> String {
        let mut s = String::new();
        render_path(p, &mut StrOut(&mut s));
        s
    }

    /// What qbroker must deliver for `ev` (meaningful when `ev.delivered()`).
    pub fn expected(&self, ev: &Event) -> Expected {
        let def = ev.op();
        let dir =
            def.kind == Kind::CreateDir || ev.path.is_dir || ev.target.is_some_and(|t| t.is_dir);
        let user = &self.users[ev.user as usize];
        let owner = match (self.cfg.format, ev.meta) {
            (Format::Json, Some(m)) => {
                let b = self.users[m.before_owner as usize].owner_exp.clone();
                let a = self.users[m.after_owner as usize].owner_exp.clone();
                match (b, a) {
                    (Some(b), Some(a)) if a != b => Some((b, a)),
                    _ => None,
                }
            }
            _ => None,
        };
        let operation = if ev.status == DENIED {
            "access_denied"
        } else {
            match (def.kind, dir) {
                (Kind::CreateFile, _) => "file.create",
                (Kind::CreateDir, _) => "directory.create",
                (Kind::ReadData, _) => "file.read",
                (Kind::WriteData, _) => "file.write",
                (Kind::Delete, false) => "file.delete",
                (Kind::Delete, true) => "directory.delete",
                (Kind::Rename, false) => "file.rename",
                (Kind::Rename, true) => "directory.rename",
                (Kind::WriteMeta, false) if owner.is_some() => "file.owner_change",
                (Kind::WriteMeta, true) if owner.is_some() => "directory.owner_change",
                (Kind::WriteMeta, false) => "file.permissions_change",
                (Kind::WriteMeta, true) => "directory.permissions_change",
                _ => "(filtered out)",
            }
        };
        let mut ip = Vec::new();
        self.push_ip(ev, &mut ip);
        Expected {
            cluster: self.cluster_name(ev.id.cluster),
            node: self.hostname(ev.id.cluster, ev.id.node),
            operation: operation.to_string(),
            object_type: if dir { "directory" } else { "file" },
            path: self.path_string(&ev.path),
            new_path: ev.target.map(|t| self.path_string(&t)),
            file_id: ev.id.to_decimal(),
            user: match self.cfg.format {
                Format::Json => user.json_exp.clone(),
                Format::Csv => user.csv_exp.clone(),
            },
            client_ip: String::from_utf8(ip).expect("ascii"),
            protocol: self.protocol(ev).to_string(),
            status: ev.status,
            success: ev.status == "ok",
            owner,
            qumulo_operation: def.name,
        }
    }
}

// ---------------------------------------------------------------- per-node streams

/// A buffer of whole frames, ready to write, with the offsets of their
/// timestamps so they can be set just before the write.
#[derive(Default)]
pub struct Chunk {
    pub buf: Vec<u8>,
    ts: Vec<usize>,
    /// frames in the chunk
    pub events: u64,
    /// of which qbroker should deliver
    pub expected: u64,
    /// namespace metadata changes (delivered too, verified apart)
    pub acl: u64,
}

impl Chunk {
    pub fn clear(&mut self) {
        self.buf.clear();
        self.ts.clear();
        self.events = 0;
        self.expected = 0;
        self.acl = 0;
    }

    /// Stamps every frame with `ts` (the send time).
    pub fn patch_time(&mut self, ts: &[u8; TS_LEN]) {
        for &o in &self.ts {
            self.buf[o..o + TS_LEN].copy_from_slice(ts);
        }
    }
}

/// One node's event stream.
pub struct NodeGen {
    core: std::sync::Arc<GenCore>,
    pub cluster: u16,
    pub node: u16,
    framing: Framing,
    host: Vec<u8>,
    slot: u64,
    next_expected: u64,
    next_filtered: u64,
    next_acl: u64,
    namespace: Option<std::sync::Arc<crate::acl::Namespace>>,
    scratch: Vec<u8>,
}

impl NodeGen {
    /// Make the namespace metadata changes on `ns` (when the config asks for them).
    pub fn with_namespace(mut self, ns: std::sync::Arc<crate::acl::Namespace>) -> Self {
        self.namespace = Some(ns);
        self
    }

    /// Namespace metadata changes generated so far.
    pub fn acl_count(&self) -> u64 {
        self.next_acl
    }

    pub fn new(core: std::sync::Arc<GenCore>, cluster: u16, node: u16, framing: Framing) -> Self {
        let host = core.hostname(cluster, node).into_bytes();
        NodeGen {
            core,
            cluster,
            node,
            framing,
            host,
            slot: 0,
            next_expected: 0,
            next_filtered: 0,
            next_acl: 0,
            namespace: None,
            scratch: Vec::with_capacity(1024),
        }
    }

    pub fn next_event(&mut self) -> Event {
        let slot = self.slot;
        self.slot += 1;
        if let Some(ns) = &self.namespace {
            if self.core.slot_is_acl(self.cluster, self.node, slot) {
                self.next_acl += 1;
                return ns.next_event(self.cluster, self.node, self.next_acl - 1);
            }
        }
        if self.core.slot_is_expected(self.cluster, self.node, slot) {
            self.next_expected += 1;
            self.core
                .expected_event(self.cluster, self.node, self.next_expected - 1)
        } else {
            self.next_filtered += 1;
            self.core
                .filtered_event(self.cluster, self.node, self.next_filtered - 1)
        }
    }

    /// Appends `n` frames to `chunk`.
    pub fn fill(&mut self, chunk: &mut Chunk, n: u64) {
        for _ in 0..n {
            let ev = self.next_event();
            let ts = self.core.render_frame(
                &ev,
                &self.host,
                self.framing,
                &mut chunk.buf,
                &mut self.scratch,
            );
            chunk.ts.push(ts);
            chunk.events += 1;
            let acl = crate::acl::object_of(&ev.id).is_some();
            chunk.expected += (!ev.id.filtered && !acl) as u64;
            chunk.acl += acl as u64;
        }
    }

    /// Expected events generated so far (the next expected seq).
    pub fn expected_count(&self) -> u64 {
        self.next_expected
    }

    pub fn filtered_count(&self) -> u64 {
        self.next_filtered
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn core(format: Format) -> Arc<GenCore> {
        Arc::new(
            GenCore::new(GenConfig {
                format,
                ..GenConfig::default()
            })
            .unwrap(),
        )
    }

    /// Splits a chunk into syslog messages (either framing).
    fn frames(buf: &[u8], framing: Framing) -> Vec<&[u8]> {
        let mut out = Vec::new();
        let mut rest = buf;
        while !rest.is_empty() {
            match framing {
                Framing::Lf => {
                    let i = rest.iter().position(|&b| b == b'\n').expect("terminated");
                    out.push(&rest[..i]);
                    rest = &rest[i + 1..];
                }
                Framing::Octet => {
                    let sp = rest.iter().position(|&b| b == b' ').unwrap();
                    let len: usize = std::str::from_utf8(&rest[..sp]).unwrap().parse().unwrap();
                    out.push(&rest[sp + 1..sp + 1 + len]);
                    rest = &rest[sp + 1 + len..];
                }
            }
        }
        out
    }

    /// (hostname, msg) of a syslog message, checking the header as Qumulo writes it.
    fn split_header(m: &[u8]) -> (&str, &str) {
        let s = std::str::from_utf8(m).unwrap();
        assert!(s.starts_with("<14>1 "), "{s}");
        let ts = &s[TS_OFFSET..TS_OFFSET + TS_LEN];
        assert!(ts.ends_with('Z') && ts.as_bytes()[10] == b'T', "{ts}");
        let rest = &s[TS_OFFSET + TS_LEN + 1..];
        let (host, rest) = rest.split_once(' ').unwrap();
        let msg = rest.strip_prefix("qumulo - - - ").unwrap();
        (host, msg)
    }

    /// RFC 4180 fields, quotes doubled inside quoted fields.
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

    #[test]
    fn identity_round_trip_and_width() {
        for id in [
            Identity {
                tag: 0,
                cluster: 0,
                node: 0,
                filtered: false,
                seq: 0,
            },
            Identity {
                tag: 0xffff,
                cluster: 0xffff,
                node: 0xffff,
                filtered: true,
                seq: MAX_SEQ,
            },
            Identity {
                tag: 0x1234,
                cluster: 49,
                node: 4,
                filtered: false,
                seq: 123_456_789,
            },
        ] {
            let d = id.to_decimal();
            assert_eq!(d.len(), 32, "{d}");
            assert!(d.parse::<u128>().unwrap() > u64::MAX as u128);
            assert_eq!(d, id.encode().to_string());
            assert_eq!(Identity::parse(&d), Some(id));
        }
        assert_eq!(
            Identity::parse("140624751830626345080086044861"),
            None,
            "Qumulo's own id"
        );
        assert_eq!(Identity::parse("12x"), None);
        assert_eq!(Identity::parse(""), None);
    }

    #[test]
    fn numbers_and_time() {
        for v in [
            0u128,
            9,
            10,
            99,
            100,
            u64::MAX as u128,
            u64::MAX as u128 + 1,
            u128::MAX,
        ] {
            let mut b = Vec::new();
            push_u128(&mut b, v);
            assert_eq!(String::from_utf8(b).unwrap(), v.to_string());
        }
        assert_eq!(
            &syslog_ts(1_769_523_143_955_812),
            b"2026-01-27T14:12:23.955812Z"
        );
        assert_eq!(&syslog_ts(0), b"1970-01-01T00:00:00.000000Z");
        for d in [-1000i64, 0, 59, 60, 365, 11_016, 20_480, 2_932_896] {
            let (y, m, dd) = civil_from_days(d);
            assert_eq!(days_from_civil(y, m, dd), d);
        }
        let mut b = Vec::new();
        push_ns_time(&mut b, 1_718_117_758_187_394_089);
        assert_eq!(
            String::from_utf8(b).unwrap(),
            "2024-06-11T14:55:58.187394089Z"
        );
    }

    #[test]
    fn json_frames_are_valid_and_carry_identity() {
        let core = core(Format::Json);
        let mut g = NodeGen::new(core.clone(), 3, 2, Framing::Lf);
        let mut chunk = Chunk::default();
        g.fill(&mut chunk, 2000);
        assert_eq!(chunk.events, 2000);
        let (mut exp, mut filt) = (0, 0);
        for f in frames(&chunk.buf, Framing::Lf) {
            let (host, msg) = split_header(f);
            assert_eq!(host, "qlg-c003-2");
            let v: serde_json::Value =
                serde_json::from_str(msg).unwrap_or_else(|e| panic!("{e}: {msg}"));
            for k in [
                "user_id",
                "user_ip",
                "protocol",
                "operation",
                "status",
                "details",
            ] {
                assert!(v.get(k).is_some(), "{k} missing: {msg}");
            }
            let op = v["operation"].as_str().unwrap();
            let def = &OPS[op_index(op).unwrap()];
            if let Some(fid) = v["details"]["file_id"].as_str() {
                let id = Identity::parse(fid).expect("ours");
                assert_eq!((id.cluster, id.node, id.tag), (3, 2, core.tag()));
                let delivered = def.kind.kept() || v["status"] == DENIED;
                assert_eq!(delivered, !id.filtered, "{msg}");
                if id.filtered {
                    filt += 1;
                } else {
                    assert_eq!(id.seq, exp);
                    exp += 1;
                }
                let path = v["details"]["path"].as_str().unwrap();
                assert!(path.starts_with('/') && !path.contains('\n'));
            } else {
                assert!(matches!(def.kind, Kind::Connect | Kind::Mgmt), "{msg}");
                assert_ne!(v["status"], DENIED);
                filt += 1;
            }
        }
        assert_eq!((exp, filt), (g.expected_count(), g.filtered_count()));
        assert_eq!(chunk.expected, exp);
    }

    #[test]
    fn csv_frames_have_eight_fields() {
        let core = core(Format::Csv);
        let mut g = NodeGen::new(core.clone(), 0, 1, Framing::Octet);
        let mut chunk = Chunk::default();
        g.fill(&mut chunk, 2000);
        let mut quoted_names = 0;
        for f in frames(&chunk.buf, Framing::Octet) {
            let (_, msg) = split_header(f);
            let fields = csv_fields(msg);
            assert_eq!(fields.len(), 8, "{msg}");
            assert!(
                msg.split(',').nth(1).unwrap().starts_with('"'),
                "user is quoted: {msg}"
            );
            quoted_names += fields[6].contains('"') as u32;
            if let Some(id) = Identity::parse(&fields[5]) {
                let ev = if id.filtered {
                    core.filtered_event(0, 1, id.seq)
                } else {
                    core.expected_event(0, 1, id.seq)
                };
                let e = core.expected(&ev);
                assert_eq!(fields[6], e.path);
                assert_eq!(fields[3], ev.op().name);
                if let Some(t) = e.new_path {
                    assert_eq!(fields[7], t);
                }
            }
        }
        assert!(quoted_names > 0, "some paths carry a double quote");
    }

    #[test]
    fn stream_matches_random_access() {
        let core = core(Format::Json);
        let mut g = NodeGen::new(core.clone(), 1, 3, Framing::Lf);
        for _ in 0..5000 {
            let ev = g.next_event();
            let again = if ev.id.filtered {
                core.filtered_event(1, 3, ev.id.seq)
            } else {
                core.expected_event(1, 3, ev.id.seq)
            };
            assert_eq!(ev, again);
            assert_eq!(ev.delivered(), !ev.id.filtered);
        }
    }

    #[test]
    fn mix_follows_weights() {
        let core = core(Format::Json);
        let mut g = NodeGen::new(core.clone(), 0, 1, Framing::Lf);
        let n = 200_000;
        let mut count = vec![0u32; OPS.len()];
        let (mut denied, mut v6, mut exp) = (0, 0, 0);
        let mut ops_denied = std::collections::HashSet::new();
        for _ in 0..n {
            let ev = g.next_event();
            count[ev.op as usize] += 1;
            denied += (ev.status == DENIED) as u32;
            v6 += ev.ipv6 as u32;
            exp += !ev.id.filtered as u32;
            if ev.status == DENIED {
                ops_denied.insert(ev.op().name);
            }
        }
        let total_w: u32 = OPS.iter().map(|o| o.weight).sum();
        for (i, op) in OPS.iter().enumerate() {
            let want = n as f64 * op.weight as f64 / total_w as f64;
            assert!(
                (count[i] as f64 - want).abs() < 5.0 * want.sqrt() + 5.0,
                "{}: {} vs {want}",
                op.name,
                count[i]
            );
        }
        let fs_share = OPS
            .iter()
            .filter(|o| o.kind.deniable())
            .map(|o| o.weight)
            .sum::<u32>() as f64
            / total_w as f64;
        let want_denied = n as f64 * fs_share * 0.02;
        assert!(
            (denied as f64 - want_denied).abs() < 5.0 * want_denied.sqrt(),
            "{denied} vs {want_denied}"
        );
        assert!((v6 as f64 / n as f64 - 0.15).abs() < 0.01);
        assert!((exp as f64 / n as f64 - core.expected_share(0, 1)).abs() < 0.01);
        assert!(
            ops_denied.contains("fs_read_metadata") && ops_denied.contains("fs_list_directory")
        );
    }

    #[test]
    fn expected_varonis_operations() {
        for format in [Format::Json, Format::Csv] {
            let core = core(format);
            let mut seen = std::collections::HashMap::<String, u32>::new();
            for seq in 0..20_000 {
                let ev = core.expected_event(0, 1, seq);
                let e = core.expected(&ev);
                *seen.entry(e.operation.clone()).or_default() += 1;
                let dir = e.object_type == "directory";
                match e.operation.as_str() {
                    "access_denied" => assert_eq!(e.status, DENIED),
                    "file.rename" | "directory.rename" => {
                        let t = e.new_path.as_deref().unwrap();
                        assert_eq!(dir, e.path.ends_with('/') || t.ends_with('/'));
                    }
                    "directory.create" => assert!(e.path.ends_with('/')),
                    op if op.ends_with("owner_change") => {
                        let (b, a) = e.owner.as_ref().unwrap();
                        assert_ne!(b, a);
                        assert_eq!(format, Format::Json);
                    }
                    op => {
                        assert!(e.new_path.is_none() && e.owner.is_none(), "{op}");
                        assert_eq!(dir, e.path.ends_with('/'), "{op} {}", e.path);
                    }
                }
                assert_eq!(e.success, e.status == "ok");
                assert_eq!(e.qumulo_operation, ev.op().name);
                if format == Format::Csv {
                    let u = &e.user;
                    assert!(
                        u.auth_id.is_none() && (u.sid.is_some() != u.name.is_some()),
                        "{u:?}"
                    );
                }
            }
            let want: &[&str] = match format {
                Format::Json => &[
                    "file.owner_change",
                    "directory.owner_change",
                    "file.permissions_change",
                ],
                Format::Csv => &["file.permissions_change", "directory.permissions_change"],
            };
            for op in want.iter().chain(&[
                "file.create",
                "directory.create",
                "file.read",
                "file.write",
                "file.delete",
                "directory.delete",
                "file.rename",
                "directory.rename",
                "access_denied",
            ]) {
                assert!(seen.contains_key(*op), "{format:?}: no {op} in {seen:?}");
            }
            if format == Format::Csv {
                assert!(!seen.keys().any(|k| k.contains("owner")));
            }
        }
    }

    #[test]
    fn realistic_paths_and_users() {
        let core = core(Format::Json);
        let (mut non_ascii, mut deep, mut backslash) = (0, 0, 0);
        for seq in 0..2000 {
            let e = core.expected(&core.expected_event(0, 1, seq));
            non_ascii += !e.path.is_ascii() as u32;
            deep += (e.path.matches('/').count() >= 6) as u32;
            backslash += e.user.name.as_deref().is_some_and(|n| n.contains('\\')) as u32;
            assert!(e.path.len() < 1024);
        }
        assert!(
            non_ascii > 200 && deep > 200 && backslash > 200,
            "{non_ascii} {deep} {backslash}"
        );
    }

    #[test]
    fn burst_profile_reads_writes_renames() {
        let cfg = GenConfig {
            burst: true,
            ..GenConfig::default()
        };
        let core = Arc::new(GenCore::new(cfg).unwrap());
        let mut g = NodeGen::new(core.clone(), 0, 1, Framing::Lf);
        let ops: Vec<&str> = (0..8).map(|_| g.next_event().op().name).collect();
        assert_eq!(
            ops,
            [
                "fs_open",
                "fs_read_data",
                "fs_write_data",
                "fs_rename",
                "fs_open",
                "fs_read_data",
                "fs_write_data",
                "fs_rename"
            ]
        );
        let e = core.expected(&core.expected_event(0, 1, 2));
        assert_eq!(e.operation, "file.rename");
        assert_eq!(e.new_path.unwrap(), format!("{}.locked", e.path));
        // every other node keeps the mix
        assert!(!core.is_burst(0, 2) && !core.is_burst(1, 1));
    }

    #[test]
    fn octet_framing_and_time_patching() {
        let core = core(Format::Json);
        let mut g = NodeGen::new(core, 0, 1, Framing::Octet);
        let mut chunk = Chunk::default();
        g.fill(&mut chunk, 50);
        let ts = syslog_ts(1_800_000_000_123_456);
        chunk.patch_time(&ts);
        let fs = frames(&chunk.buf, Framing::Octet);
        assert_eq!(fs.len(), 50);
        for f in fs {
            assert_eq!(&f[TS_OFFSET..TS_OFFSET + TS_LEN], &ts);
        }
    }

    #[test]
    fn config_tag_and_validation() {
        let a = GenCore::new(GenConfig::default()).unwrap();
        let b = GenCore::new(GenConfig {
            seed: 2,
            ..GenConfig::default()
        })
        .unwrap();
        let c = GenCore::new(GenConfig {
            format: Format::Csv,
            ..GenConfig::default()
        })
        .unwrap();
        assert!(a.tag() != b.tag() && a.tag() != c.tag());
        let mut m = Mix::default();
        assert!(m.set_op_weights("fs_open=0,nope=3").is_err());
        m.set_op_weights("fs_open=0, fs_read_data=7").unwrap();
        assert_eq!(m.weights[op_index("fs_read_data").unwrap()], 7);
        assert!(m.set_protocols("smb2=0").is_err());
        assert!(GenCore::new(GenConfig {
            cluster_prefix: "x-".into(),
            ..GenConfig::default()
        })
        .is_err());
        let zero = Mix {
            weights: vec![0; OPS.len()],
            ..Mix::default()
        };
        assert!(GenCore::new(GenConfig {
            mix: zero,
            ..GenConfig::default()
        })
        .is_err());
    }
}
