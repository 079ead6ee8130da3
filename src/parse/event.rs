//! event: a kept record to a Varonis operation, then to one JSON object.
//!
//! Mapping rules (ARCHITECTURE.md, event model):
//! - object type: `directory` for fs_create_directory(ies) and fs_tree_delete; for
//!   every other operation `directory` if the path (for renames: path or target)
//!   ends with `/`, else `file`.
//! - fs_write_metadata: `*.owner_change` when JSON `details.before.owner` and
//!   `details.after.owner` are both present and differ, else `*.permissions_change`.
//! - status `fs_access_denied_error` (when the filter keeps it): `access_denied`.
//!
//! The writer emits the keys in a fixed order with no spaces; numbers and times are
//! formatted by hand (no `format!` per event).

use super::filter::{Kind, QOp};
use super::record::{Record, Val};
use super::{escape, time, Hint, Operation, ParseError};

/// Where parts of a written event lie, as offsets in the output buffer.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Spans {
    pub op: (usize, usize),
    pub owner: (usize, usize),
    pub file_id: (usize, usize),
}

/// What the event tells or asks the type cache and the enricher.
pub(crate) fn hint(kind: Kind, m: &Mapped, rec: &Record<'_>) -> Hint {
    let ok = rec.status.text() == Some(b"ok");
    match kind {
        Kind::AccessDenied(_) => Hint::None,
        Kind::Mapped(q) => match q {
            QOp::CreateFile
            | QOp::Create
            | QOp::CreateHardLink
            | QOp::CreateSymlink
            | QOp::CreateStream
            | QOp::CreateDirectory
            | QOp::CreateDirectories
                if ok =>
            {
                Hint::Created {
                    directory: m.directory,
                }
            }
            QOp::Delete | QOp::Rename if !m.directory => Hint::Untyped,
            QOp::WriteMetadata if ok => Hint::WriteMetadata {
                typed: m.directory,
                owner_changed: m.owner,
            },
            _ => Hint::None,
        },
    }
}

/// What the writer needs beyond the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mapped {
    pub op: Operation,
    pub directory: bool,
    /// Write `new_path` (renames).
    pub new_path: bool,
    /// Write `owner` (owner changes).
    pub owner: bool,
}

fn ends_with_slash(v: Val<'_>) -> bool {
    v.text().is_some_and(|s| s.ends_with(b"/"))
}

pub(crate) fn map(kind: Kind, rec: &Record<'_>) -> Result<Mapped, ParseError> {
    if rec.path.non_empty().is_none() {
        return Err(ParseError::MissingField("path"));
    }
    let slash = ends_with_slash(rec.path);
    let mut m = Mapped {
        op: Operation::AccessDenied,
        directory: slash,
        new_path: false,
        owner: false,
    };
    let q = match kind {
        Kind::AccessDenied(q) => {
            m.directory = match q {
                Some(q) if q.is_directory_op() => true,
                Some(QOp::Rename) => slash || ends_with_slash(rec.target),
                _ => slash,
            };
            return Ok(m);
        }
        Kind::Mapped(q) => q,
    };
    let pick = |directory: bool, file: Operation, dir: Operation| {
        (if directory { dir } else { file }, directory)
    };
    (m.op, m.directory) = match q {
        QOp::CreateFile
        | QOp::Create
        | QOp::CreateHardLink
        | QOp::CreateSymlink
        | QOp::CreateStream => (Operation::FileCreate, false),
        QOp::CreateDirectory | QOp::CreateDirectories => (Operation::DirectoryCreate, true),
        QOp::ReadData => (Operation::FileRead, false),
        QOp::WriteData | QOp::CopyChunk => (Operation::FileWrite, false),
        QOp::Delete => pick(slash, Operation::FileDelete, Operation::DirectoryDelete),
        QOp::TreeDelete => (Operation::DirectoryDelete, true),
        QOp::Rename => {
            if rec.target.non_empty().is_none() {
                return Err(ParseError::MissingField("target"));
            }
            m.new_path = true;
            let directory = slash || ends_with_slash(rec.target);
            pick(directory, Operation::FileRename, Operation::DirectoryRename)
        }
        QOp::WriteMetadata => {
            m.owner = match (&rec.owner_before, &rec.owner_after) {
                (Some(b), Some(a)) => !b.same(a),
                _ => false,
            };
            if m.owner {
                pick(
                    slash,
                    Operation::FileOwnerChange,
                    Operation::DirectoryOwnerChange,
                )
            } else {
                pick(
                    slash,
                    Operation::FilePermissionsChange,
                    Operation::DirectoryPermissionsChange,
                )
            }
        }
    };
    Ok(m)
}

/// Decimal `n`, without allocation.
pub(crate) fn write_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// Append the event. `time_ms` must be in range (see `time::write_rfc3339_ms`).
pub(crate) fn write(
    out: &mut Vec<u8>,
    seq: u64,
    time_ms: i64,
    host: &[u8],
    m: &Mapped,
    rec: &Record<'_>,
) -> Spans {
    let mut spans = Spans::default();
    out.extend_from_slice(b"{\"seq\":");
    write_u64(out, seq);
    out.extend_from_slice(b",\"time\":\"");
    time::write_rfc3339_ms(out, time_ms);
    out.extend_from_slice(b"\",\"node\":");
    if host == b"-" {
        out.extend_from_slice(b"null");
    } else {
        out.push(b'"');
        escape::plain(out, host);
        out.push(b'"');
    }
    out.push(b',');
    spans.op.0 = out.len();
    out.extend_from_slice(b"\"operation\":\"");
    out.extend_from_slice(m.op.as_str().as_bytes());
    out.extend_from_slice(if m.directory {
        b"\",\"object_type\":\"directory\""
    } else {
        b"\",\"object_type\":\"file\""
    });
    spans.op.1 = out.len();
    out.extend_from_slice(b",\"path\":");
    rec.path.write(out);
    if m.new_path {
        out.extend_from_slice(b",\"new_path\":");
        rec.target.write(out);
    }
    out.extend_from_slice(b",\"file_id\":");
    let id_at = out.len();
    rec.file_id.write_or_null(out);
    spans.file_id = (id_at, id_at);
    if out[id_at] == b'"' {
        spans.file_id = (id_at + 1, out.len() - 1);
    }
    out.extend_from_slice(b",\"user\":{\"sid\":");
    rec.user_sid.write(out);
    out.extend_from_slice(b",\"auth_id\":");
    rec.user_auth_id.write(out);
    out.extend_from_slice(b",\"name\":");
    rec.user_name.write(out);
    out.extend_from_slice(b"},\"client_ip\":");
    rec.user_ip.write(out);
    out.extend_from_slice(b",\"protocol\":");
    rec.protocol.write(out);
    out.extend_from_slice(b",\"status\":");
    rec.status.write(out);
    out.extend_from_slice(if rec.status.text() == Some(b"ok") {
        b",\"success\":true"
    } else {
        b",\"success\":false"
    });
    spans.owner.0 = out.len();
    if m.owner {
        if let (Some(b), Some(a)) = (&rec.owner_before, &rec.owner_after) {
            out.extend_from_slice(b",\"owner\":{\"before\":{\"sid\":");
            b.sid.write(out);
            out.extend_from_slice(b",\"auth_id\":");
            b.auth_id.write(out);
            out.extend_from_slice(b"},\"after\":{\"sid\":");
            a.sid.write(out);
            out.extend_from_slice(b",\"auth_id\":");
            a.auth_id.write(out);
            out.extend_from_slice(b"}}");
        }
    }
    spans.owner.1 = out.len();
    out.extend_from_slice(b",\"qumulo_operation\":");
    rec.operation.write(out);
    out.push(b'}');
    spans
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::record::Owner;

    fn rec(path: &'static str) -> Record<'static> {
        Record {
            path: Val::Json(path.as_bytes()),
            operation: Val::Json(b"op"),
            status: Val::Json(b"ok"),
            ..Record::default()
        }
    }

    fn op(kind: Kind, r: &Record<'_>) -> (Operation, bool) {
        let m = map(kind, r).unwrap();
        (m.op, m.directory)
    }

    use Operation as O;

    #[test]
    fn fixed_type_operations() {
        let f = rec("/a");
        let d = rec("/a/");
        for (q, want) in [
            (QOp::CreateFile, O::FileCreate),
            (QOp::Create, O::FileCreate),
            (QOp::CreateHardLink, O::FileCreate),
            (QOp::CreateSymlink, O::FileCreate),
            (QOp::CreateStream, O::FileCreate),
            (QOp::ReadData, O::FileRead),
            (QOp::WriteData, O::FileWrite),
            (QOp::CopyChunk, O::FileWrite),
        ] {
            assert_eq!(op(Kind::Mapped(q), &f), (want, false), "{q:?}");
            assert_eq!(op(Kind::Mapped(q), &d), (want, false), "{q:?}");
        }
        for q in [QOp::CreateDirectory, QOp::CreateDirectories] {
            assert_eq!(op(Kind::Mapped(q), &f), (O::DirectoryCreate, true));
        }
        assert_eq!(
            op(Kind::Mapped(QOp::TreeDelete), &f),
            (O::DirectoryDelete, true)
        );
    }

    #[test]
    fn trailing_slash_operations() {
        let f = rec("/a");
        let d = rec("/a/");
        assert_eq!(op(Kind::Mapped(QOp::Delete), &f), (O::FileDelete, false));
        assert_eq!(
            op(Kind::Mapped(QOp::Delete), &d),
            (O::DirectoryDelete, true)
        );
        assert_eq!(
            op(Kind::Mapped(QOp::WriteMetadata), &f),
            (O::FilePermissionsChange, false)
        );
        assert_eq!(
            op(Kind::Mapped(QOp::WriteMetadata), &d),
            (O::DirectoryPermissionsChange, true)
        );
    }

    #[test]
    fn renames() {
        let mut r = rec("/a");
        assert_eq!(
            map(Kind::Mapped(QOp::Rename), &r),
            Err(ParseError::MissingField("target"))
        );
        r.target = Val::CsvQuoted(b"");
        assert_eq!(
            map(Kind::Mapped(QOp::Rename), &r),
            Err(ParseError::MissingField("target"))
        );
        r.target = Val::Json(b"/b");
        let m = map(Kind::Mapped(QOp::Rename), &r).unwrap();
        assert_eq!(
            (m.op, m.directory, m.new_path),
            (O::FileRename, false, true)
        );
        r.target = Val::Json(b"/b/");
        assert_eq!(
            op(Kind::Mapped(QOp::Rename), &r),
            (O::DirectoryRename, true)
        );
        let mut r = rec("/a/");
        r.target = Val::Json(b"/b");
        assert_eq!(
            op(Kind::Mapped(QOp::Rename), &r),
            (O::DirectoryRename, true)
        );
    }

    #[test]
    fn owner_change_needs_both_sides_and_a_difference() {
        let mut r = rec("/f");
        let a = Owner {
            sid: Val::Json(b"S-1"),
            auth_id: Val::Json(b"500"),
        };
        let b = Owner {
            sid: Val::Json(b"S-2"),
            auth_id: Val::Json(b"501"),
        };
        r.owner_before = Some(a);
        assert_eq!(
            op(Kind::Mapped(QOp::WriteMetadata), &r),
            (O::FilePermissionsChange, false)
        );
        r.owner_after = Some(a);
        assert_eq!(
            op(Kind::Mapped(QOp::WriteMetadata), &r),
            (O::FilePermissionsChange, false)
        );
        r.owner_after = Some(b);
        let m = map(Kind::Mapped(QOp::WriteMetadata), &r).unwrap();
        assert_eq!((m.op, m.owner), (O::FileOwnerChange, true));
        r.path = Val::Json(b"/d/");
        assert_eq!(
            op(Kind::Mapped(QOp::WriteMetadata), &r),
            (O::DirectoryOwnerChange, true)
        );
        r.owner_after = Some(Owner {
            auth_id: Val::Lit(b"500"),
            ..a
        });
        assert_eq!(
            op(Kind::Mapped(QOp::WriteMetadata), &r),
            (O::DirectoryPermissionsChange, true)
        );
    }

    #[test]
    fn access_denied_types() {
        let f = rec("/a");
        let d = rec("/a/");
        assert_eq!(op(Kind::AccessDenied(None), &f), (O::AccessDenied, false));
        assert_eq!(op(Kind::AccessDenied(None), &d), (O::AccessDenied, true));
        assert_eq!(
            op(Kind::AccessDenied(Some(QOp::CreateDirectory)), &f),
            (O::AccessDenied, true)
        );
        assert_eq!(
            op(Kind::AccessDenied(Some(QOp::TreeDelete)), &f),
            (O::AccessDenied, true)
        );
        assert_eq!(
            op(Kind::AccessDenied(Some(QOp::CreateFile)), &d),
            (O::AccessDenied, true)
        );
        let mut r = rec("/a");
        r.target = Val::Json(b"/b/");
        assert_eq!(
            op(Kind::AccessDenied(Some(QOp::Rename)), &r),
            (O::AccessDenied, true)
        );
        assert_eq!(op(Kind::AccessDenied(None), &r), (O::AccessDenied, false));
        let m = map(Kind::AccessDenied(Some(QOp::Rename)), &r).unwrap();
        assert!(!m.new_path && !m.owner);
    }

    #[test]
    fn path_is_required() {
        let mut r = rec("");
        assert_eq!(
            map(Kind::Mapped(QOp::ReadData), &r),
            Err(ParseError::MissingField("path"))
        );
        r.path = Val::Null;
        assert_eq!(
            map(Kind::AccessDenied(None), &r),
            Err(ParseError::MissingField("path"))
        );
    }

    #[test]
    fn u64_writer() {
        for n in [0u64, 7, 10, 99, 100, 12_345, u64::MAX] {
            let mut out = Vec::new();
            write_u64(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
    }
}
