//! filter: which records become events, decided on byte slices.
//!
//! Built once from the configuration; per event it compares a few short slices
//! (a `match` on the operation name, a bit test, linear scans of the usually empty
//! protocol and status lists). The sorted list of every documented Qumulo operation
//! is searched only on the filtered path, to tell `Operation` from `UnknownOperation`.

use std::sync::OnceLock;

use super::FilterReason;

/// The Qumulo operations qbroker can map to a Varonis event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QOp {
    CreateFile,
    Create,
    CreateHardLink,
    CreateSymlink,
    CreateStream,
    CreateDirectory,
    CreateDirectories,
    ReadData,
    WriteData,
    CopyChunk,
    Delete,
    TreeDelete,
    Rename,
    WriteMetadata,
}

impl QOp {
    pub(crate) fn from_name(name: &[u8]) -> Option<QOp> {
        Some(match name {
            b"fs_create_file" => QOp::CreateFile,
            b"fs_create" => QOp::Create,
            b"fs_create_hard_link" => QOp::CreateHardLink,
            b"fs_create_symlink" => QOp::CreateSymlink,
            b"fs_create_stream" => QOp::CreateStream,
            b"fs_create_directory" => QOp::CreateDirectory,
            b"fs_create_directories" => QOp::CreateDirectories,
            b"fs_read_data" => QOp::ReadData,
            b"fs_write_data" => QOp::WriteData,
            b"fs_copy_chunk" => QOp::CopyChunk,
            b"fs_delete" => QOp::Delete,
            b"fs_tree_delete" => QOp::TreeDelete,
            b"fs_rename" => QOp::Rename,
            b"fs_write_metadata" => QOp::WriteMetadata,
            _ => return None,
        })
    }

    fn bit(self) -> u32 {
        1 << self as u32
    }

    /// Operations that act on a directory whatever the path looks like.
    pub(crate) fn is_directory_op(self) -> bool {
        matches!(
            self,
            QOp::CreateDirectory | QOp::CreateDirectories | QOp::TreeDelete
        )
    }
}

/// What to do with a record that passed the filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A kept, mappable operation.
    Mapped(QOp),
    /// `fs_access_denied_error` on any operation (`Some` if it is a mappable one).
    AccessDenied(Option<QOp>),
}

pub(crate) const ACCESS_DENIED: &[u8] = b"fs_access_denied_error";

/// The operator's choice of what to keep. Built once at start.
#[derive(Debug, Clone)]
pub struct Filter {
    /// Bit `QOp as u32` set: keep that operation.
    ops: u32,
    protocols: Box<[Box<[u8]>]>,
    statuses: Box<[Box<[u8]>]>,
    access_denied: bool,
    app_names: Box<[Box<[u8]>]>,
}

/// A configured operation that qbroker cannot map to a Varonis event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsupportedOperation(pub String);

impl std::fmt::Display for UnsupportedOperation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "operation {:?} cannot be mapped to a Varonis event",
            self.0
        )
    }
}

impl std::error::Error for UnsupportedOperation {}

fn byte_list(v: &[String]) -> Box<[Box<[u8]>]> {
    v.iter().map(|s| s.as_bytes().into()).collect()
}

/// The operations the reference broker forwarded (its rsyslog filter), the
/// default of `filter.operations`.
pub const REFERENCE_OPERATIONS: [&str; 7] = [
    "fs_create_file",
    "fs_create_directory",
    "fs_read_data",
    "fs_write_data",
    "fs_write_metadata",
    "fs_rename",
    "fs_delete",
];

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
        let mut ops = 0;
        for name in operations {
            let op = QOp::from_name(name.as_bytes())
                .ok_or_else(|| UnsupportedOperation(name.clone()))?;
            ops |= op.bit();
        }
        Ok(Filter {
            ops,
            protocols: byte_list(protocols),
            statuses: byte_list(statuses),
            access_denied,
            app_names: byte_list(app_names),
        })
    }

    /// The reference broker's operations ([`REFERENCE_OPERATIONS`]) over every
    /// protocol, plus access denied, for APP-NAME `qumulo*`.
    pub fn reference_default() -> Filter {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Filter::new(&s(&REFERENCE_OPERATIONS), &[], &[], true, &s(&["qumulo"]))
            .unwrap_or_else(|e| unreachable!("reference operations are mappable: {e}"))
    }

    /// Whether APP-NAME starts with one of the accepted prefixes.
    pub(crate) fn app_ok(&self, app: &[u8]) -> bool {
        self.app_names.is_empty() || self.app_names.iter().any(|p| app.starts_with(p))
    }

    /// The filter proper, after the app name: access denied, operation, protocol, status.
    /// Whether `decide` drops a record of this operation and status whatever its
    /// protocol: an operation the filter does not keep, unless access-denied
    /// records are kept and this is one.
    pub(crate) fn drops(&self, op: &[u8], status: &[u8]) -> bool {
        let kept = QOp::from_name(op).is_some_and(|q| self.ops & q.bit() != 0);
        let denied_kept = self.access_denied && status == ACCESS_DENIED;
        !(kept || denied_kept)
    }

    pub(crate) fn decide(
        &self,
        op: &[u8],
        status: &[u8],
        protocol: Option<&[u8]>,
    ) -> Result<Kind, FilterReason> {
        let qop = QOp::from_name(op);
        let kind = if self.access_denied && status == ACCESS_DENIED {
            Kind::AccessDenied(qop)
        } else {
            match qop {
                Some(q) if self.ops & q.bit() != 0 => Kind::Mapped(q),
                _ if is_known_operation(op) => return Err(FilterReason::Operation),
                _ => return Err(FilterReason::UnknownOperation),
            }
        };
        if !self.protocols.is_empty()
            && !protocol.is_some_and(|p| self.protocols.iter().any(|x| **x == *p))
        {
            return Err(FilterReason::Protocol);
        }
        if matches!(kind, Kind::Mapped(_))
            && !self.statuses.is_empty()
            && !self.statuses.iter().any(|x| **x == *status)
        {
            return Err(FilterReason::Status);
        }
        Ok(kind)
    }
}

/// Whether Qumulo's documentation lists `op` (reference §5, with older names).
///
/// On the hot path (most frames are fs_read_metadata, fs_open, ... that the filter
/// drops), so it searches sorted 64-bit hashes and compares bytes once, rather than
/// running a byte-slice binary search (a `memcmp` per step).
pub(crate) fn is_known_operation(op: &[u8]) -> bool {
    let index = KNOWN_INDEX.get_or_init(|| {
        let mut v: Vec<(u64, u16)> = KNOWN_OPERATIONS
            .iter()
            .enumerate()
            .map(|(i, s)| (fnv1a(s), i as u16))
            .collect();
        v.sort_unstable();
        v.into_boxed_slice()
    });
    let h = fnv1a(op);
    let i = index.partition_point(|&(x, _)| x < h);
    index[i..]
        .iter()
        .take_while(|&&(x, _)| x == h)
        .any(|&(_, k)| KNOWN_OPERATIONS[usize::from(k)] == op)
}

fn fnv1a(s: &[u8]) -> u64 {
    s.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

static KNOWN_INDEX: OnceLock<Box<[(u64, u16)]>> = OnceLock::new();

/// Every documented Qumulo audit operation, sorted bytewise.
#[rustfmt::skip]
static KNOWN_OPERATIONS: [&[u8]; 174] = [
    b"ad_cancel_operation",
    b"ad_dismiss_error",
    b"ad_join",
    b"ad_kerberos_renew_ticket",
    b"ad_leave",
    b"ad_modify_settings",
    b"ad_reconfigure",
    b"audit_modify_cloudwatch_config",
    b"audit_modify_syslog_config",
    b"auth_add_group",
    b"auth_add_member_to_group",
    b"auth_assign_role",
    b"auth_create_access_token",
    b"auth_create_role",
    b"auth_create_user",
    b"auth_delete_access_token",
    b"auth_delete_group",
    b"auth_delete_identity_attributes",
    b"auth_delete_role",
    b"auth_delete_user",
    b"auth_get_access_token",
    b"auth_get_access_tokens",
    b"auth_modify_access_token",
    b"auth_modify_group",
    b"auth_modify_identity_attributes",
    b"auth_modify_role",
    b"auth_modify_user",
    b"auth_modify_user_password",
    b"auth_remove_member_from_group",
    b"auth_set_user_defined_mappings",
    b"auth_unassign_role",
    b"begin_audit_modify_syslog_config",
    b"cluster_add_nodes",
    b"cluster_calculate_node_add_capacity",
    b"cluster_generate_vpn_private_key",
    b"cluster_initiate_node_replacement_plan",
    b"cluster_install_vpn_keys",
    b"cluster_locate_disk_slot",
    b"cluster_modify_config",
    b"cluster_modify_monitoring_config",
    b"cluster_modify_nodes",
    b"cluster_modify_nodes_dry_run",
    b"cluster_modify_upgrade_config",
    b"cluster_nodes_resolve_indeterminate_modification",
    b"cluster_restart",
    b"dns_create",
    b"dns_delete",
    b"dns_modify",
    b"dns_set_lookup_overrides",
    b"encryption_create_key",
    b"encryption_rotate_keys",
    b"encryption_update_config",
    b"fs_copy_chunk",
    b"fs_create",
    b"fs_create_directories",
    b"fs_create_directory",
    b"fs_create_file",
    b"fs_create_hard_link",
    b"fs_create_public_key",
    b"fs_create_stream",
    b"fs_create_symlink",
    b"fs_delete",
    b"fs_delete_public_key",
    b"fs_fsstat",
    b"fs_list_directory",
    b"fs_modify_atime_settings",
    b"fs_modify_notify_settings",
    b"fs_modify_permissions_settings",
    b"fs_modify_public_key",
    b"fs_open",
    b"fs_read_data",
    b"fs_read_link",
    b"fs_read_metadata",
    b"fs_read_user_metadata",
    b"fs_release_nlm_locks_by_client",
    b"fs_release_nlm_locks_by_file",
    b"fs_rename",
    b"fs_replace_public_key",
    b"fs_sample",
    b"fs_set_quota",
    b"fs_tree_delete",
    b"fs_write_data",
    b"fs_write_file_lock",
    b"fs_write_metadata",
    b"fs_write_user_metadata",
    b"ftp_login",
    b"ftp_modify_settings",
    b"identity_create",
    b"identity_delete",
    b"identity_modify",
    b"kerberos_delete_keytab",
    b"kerberos_modify_settings",
    b"kerberos_set_keytab",
    b"ldap_modify_settings",
    b"network_create_config",
    b"network_delete_config",
    b"network_modify_config",
    b"network_modify_interface",
    b"nfs_create_export",
    b"nfs_delete_export",
    b"nfs_delete_settings",
    b"nfs_modify_export",
    b"nfs_modify_settings",
    b"nfs_mount",
    b"node_halt",
    b"node_restart",
    b"node_set_identify_light",
    b"reboot_pause",
    b"reboot_resume",
    b"reboot_start",
    b"remote_syslog_shutdown",
    b"remote_syslog_startup",
    b"replication_abort",
    b"replication_abort_object_relationship",
    b"replication_authorize_target_relationship",
    b"replication_create_object_relationship",
    b"replication_create_source_relationship",
    b"replication_delete_object_relationship",
    b"replication_delete_source_relationship",
    b"replication_delete_target_relationship",
    b"replication_dismiss_source_relationship_error",
    b"replication_dismiss_target_relationship_error",
    b"replication_make_target_writable",
    b"replication_modify_source_relationship",
    b"replication_reconnect_target_relationship",
    b"replication_release_queued_snapshot",
    b"replication_replicate_object_relationship",
    b"replication_reverse_target_relationship",
    b"replication_start",
    b"replication_target_relationship_lock",
    b"rest_login",
    b"s3_abort_upload",
    b"s3_add_bucket",
    b"s3_bucket_policy_explain_access",
    b"s3_create_key",
    b"s3_delete_bucket",
    b"s3_delete_key",
    b"s3_get_bucket_policy",
    b"s3_modify_bucket",
    b"s3_modify_settings",
    b"s3_put_bucket_policy",
    b"saml_modify_settings",
    b"session_change_password",
    b"share_connect",
    b"shutdown_halt",
    b"smb2_notify_req",
    b"smb_close_handle",
    b"smb_close_session",
    b"smb_create_share",
    b"smb_delete_settings",
    b"smb_delete_share",
    b"smb_login",
    b"smb_modify_settings",
    b"smb_modify_share",
    b"snapshot_create_policy",
    b"snapshot_create_snapshot",
    b"snapshot_delete_policy",
    b"snapshot_delete_snapshot",
    b"snapshot_lock_snapshot",
    b"snapshot_modify_policy",
    b"snapshot_modify_snapshot",
    b"snapshot_unlock_snapshot",
    b"snapshot_unlock_snapshot_challege",
    b"snapshot_unlock_snapshot_challenge",
    b"ssl_delete_ca_certificate",
    b"ssl_modify_ca_certificate",
    b"ssl_modify_certificate",
    b"tenant_create",
    b"tenant_delete",
    b"tenant_modify",
    b"time_modify_config",
    b"tree_delete_cancel",
    b"tree_delete_start",
    b"web_ui_modify_settings",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn known_operations_sorted_and_unique() {
        assert!(KNOWN_OPERATIONS.windows(2).all(|w| w[0] < w[1]));
        for op in KNOWN_OPERATIONS {
            assert!(is_known_operation(op));
            let mut longer = op.to_vec();
            longer.push(b'x');
            assert!(!is_known_operation(&longer));
        }
        for op in [
            "fs_read_metadata",
            "cluster_restart",
            "rest_login",
            "web_ui_modify_settings",
            "ad_cancel_operation",
            "smb2_notify_req",
            "fs_create_file",
        ] {
            assert!(is_known_operation(op.as_bytes()), "{op}");
        }
        for op in ["fs_teleport", "", "FS_READ_DATA", "fs_read_dat"] {
            assert!(!is_known_operation(op.as_bytes()), "{op}");
        }
    }

    #[test]
    fn every_mappable_operation_is_known() {
        let all = [
            "fs_create_file",
            "fs_create",
            "fs_create_hard_link",
            "fs_create_symlink",
            "fs_create_stream",
            "fs_create_directory",
            "fs_create_directories",
            "fs_read_data",
            "fs_write_data",
            "fs_copy_chunk",
            "fs_delete",
            "fs_tree_delete",
            "fs_rename",
            "fs_write_metadata",
        ];
        let f = Filter::new(&strings(&all), &[], &[], false, &[]).unwrap();
        assert_eq!(f.ops.count_ones(), 14);
        for op in all {
            assert!(is_known_operation(op.as_bytes()), "{op}");
            assert!(
                matches!(f.decide(op.as_bytes(), b"ok", None), Ok(Kind::Mapped(_))),
                "{op}"
            );
        }
    }

    #[test]
    fn unsupported_operations_are_refused() {
        for op in ["fs_read_metadata", "fs_open", "rest_login", "nonsense"] {
            let e = Filter::new(&strings(&["fs_delete", op]), &[], &[], true, &[]).unwrap_err();
            assert_eq!(e, UnsupportedOperation(op.to_string()));
        }
    }

    #[test]
    fn reference_default() {
        let f = Filter::reference_default();
        assert!(f.app_ok(b"qumulo"));
        assert!(f.app_ok(b"qumulo-audit"));
        assert!(!f.app_ok(b"sshd"));
        assert!(!f.app_ok(b""));
        assert_eq!(
            f.decide(b"fs_create_file", b"ok", Some(b"smb2")),
            Ok(Kind::Mapped(QOp::CreateFile))
        );
        assert_eq!(
            f.decide(b"fs_delete", b"fs_no_such_entry_error", Some(b"nfs3")),
            Ok(Kind::Mapped(QOp::Delete))
        );
        assert_eq!(
            f.decide(b"fs_read_metadata", b"ok", None),
            Err(FilterReason::Operation)
        );
        assert_eq!(
            f.decide(b"fs_create_symlink", b"ok", None),
            Err(FilterReason::Operation)
        );
        assert_eq!(
            f.decide(b"fs_new_thing", b"ok", None),
            Err(FilterReason::UnknownOperation)
        );
        assert_eq!(
            f.decide(b"fs_open", ACCESS_DENIED, None),
            Ok(Kind::AccessDenied(None))
        );
        assert_eq!(
            f.decide(b"fs_rename", ACCESS_DENIED, None),
            Ok(Kind::AccessDenied(Some(QOp::Rename)))
        );
    }

    #[test]
    fn protocols_statuses_access_denied() {
        let f = Filter::new(
            &strings(&["fs_write_data"]),
            &strings(&["smb2", "nfs3"]),
            &strings(&["ok"]),
            true,
            &[],
        )
        .unwrap();
        assert!(f.app_ok(b""));
        assert_eq!(
            f.decide(b"fs_write_data", b"ok", Some(b"smb2")),
            Ok(Kind::Mapped(QOp::WriteData))
        );
        assert_eq!(
            f.decide(b"fs_write_data", b"ok", Some(b"smb3")),
            Err(FilterReason::Protocol)
        );
        assert_eq!(
            f.decide(b"fs_write_data", b"ok", Some(b"smb")),
            Err(FilterReason::Protocol)
        );
        assert_eq!(
            f.decide(b"fs_write_data", b"ok", None),
            Err(FilterReason::Protocol)
        );
        assert_eq!(
            f.decide(b"fs_write_data", b"fs_read_only_error", Some(b"nfs3")),
            Err(FilterReason::Status)
        );
        // access denied bypasses the operation and status sets, not the protocol set
        assert_eq!(
            f.decide(b"fs_open", ACCESS_DENIED, Some(b"nfs3")),
            Ok(Kind::AccessDenied(None))
        );
        assert_eq!(
            f.decide(b"fs_open", ACCESS_DENIED, Some(b"api")),
            Err(FilterReason::Protocol)
        );
        // operation is checked before protocol
        assert_eq!(
            f.decide(b"fs_open", b"ok", Some(b"api")),
            Err(FilterReason::Operation)
        );

        let off = Filter::new(&strings(&["fs_write_data"]), &[], &[], false, &[]).unwrap();
        assert_eq!(
            off.decide(b"fs_open", ACCESS_DENIED, None),
            Err(FilterReason::Operation)
        );
        assert_eq!(
            off.decide(b"fs_write_data", ACCESS_DENIED, None),
            Ok(Kind::Mapped(QOp::WriteData))
        );
        let only_denied = Filter::new(
            &[],
            &[],
            &strings(&["ok"]),
            true,
            &strings(&["qumulo", "qq"]),
        )
        .unwrap();
        assert!(only_denied.app_ok(b"qq1"));
        assert_eq!(
            only_denied.decide(b"fs_write_data", b"ok", None),
            Err(FilterReason::Operation)
        );
        assert_eq!(
            only_denied.decide(b"fs_write_data", ACCESS_DENIED, None),
            Ok(Kind::AccessDenied(Some(QOp::WriteData)))
        );
    }
}
