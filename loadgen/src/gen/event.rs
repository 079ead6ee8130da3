//! events: one generated audit event as seeds, and the Varonis event that
//! qbroker must make of it.

use super::*;

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
