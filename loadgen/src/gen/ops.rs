//! operations: the Qumulo operations generated, with their kinds, error
//! statuses and what qbroker is expected to make of each.

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
    pub(super) fn deniable(self) -> bool {
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

pub(super) const E_EXISTS: &str = "fs_entry_exists_error";
pub(super) const E_NOENT: &str = "fs_no_such_entry_error";
pub(super) const E_SHARE: &str = "fs_sharing_violation_error";
pub(super) const E_QUOTA: &str = "fs_quota_no_space_error";

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
