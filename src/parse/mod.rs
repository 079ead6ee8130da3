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
//! SKELETON: the bodies below are placeholders to be replaced by the real parser.

use std::fmt;

/// What the caller knows about a frame besides its bytes.
#[derive(Debug, Clone, Copy)]
pub struct FrameCtx {
    /// Per-cluster sequence number of this frame (arrival order).
    pub seq: u64,
    /// When the frame was read, in milliseconds since the Unix epoch. Used when the
    /// header has no usable timestamp, and for the year of RFC 3164 timestamps.
    pub received_unix_ms: i64,
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
}

impl Operation {
    pub const ALL: [Operation; 13] = [
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
        }
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

/// The operator's choice of what to keep. Built once at start.
#[derive(Debug, Clone)]
pub struct Filter {
    _private: (),
}

/// A configured operation that qbroker cannot map to a Varonis event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsupportedOperation(pub String);

impl Filter {
    /// `operations`: Qumulo operations to keep (must be mappable);
    /// `protocols`/`statuses`: empty means all; `access_denied`: keep any operation whose
    /// status is `fs_access_denied_error`; `app_names`: accepted APP-NAME prefixes (empty: all).
    pub fn new(
        operations: &[String],
        protocols: &[String],
        statuses: &[String],
        access_denied: bool,
        app_names: &[String],
    ) -> Result<Filter, UnsupportedOperation> {
        let _ = (operations, protocols, statuses, access_denied, app_names);
        Ok(Filter { _private: () })
    }

    /// The reference broker's operations over every protocol.
    pub fn reference_default() -> Filter {
        Filter { _private: () }
    }
}

/// Parse `frame`, filter it, map it, and append the event JSON to `out`.
pub fn convert(
    frame: &[u8],
    ctx: &FrameCtx,
    filter: &Filter,
    out: &mut Vec<u8>,
) -> Result<Outcome, ParseError> {
    let _ = (frame, ctx, filter, out);
    Err(ParseError::Empty)
}

/// The syslog HOSTNAME of a frame, for telling which cluster a connection belongs to.
pub fn frame_hostname(frame: &[u8]) -> Option<&str> {
    let _ = frame;
    None
}

/// `<cluster>-<digits>` to `<cluster>`; a name without that suffix is returned whole.
pub fn cluster_of_hostname(host: &str) -> &str {
    host
}
