//! record: the audit fields of one message, borrowed from the frame.
//!
//! Both payload formats ([`super::json`], [`super::csv`]) fill the same
//! [`Record`]; [`super::payload`] picks the format. This module names neither
//! format, so both can name it. A value remembers where it came from ([`Val`]) because each
//! source needs its own rule to become a JSON string (see [`super::escape`]).

use super::escape;

/// One captured value, still in its wire form.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum Val<'a> {
    /// The key or field was not there.
    #[default]
    Absent,
    /// JSON `null`.
    Null,
    /// The content of a JSON string, escapes not yet decoded.
    Json(&'a [u8]),
    /// A JSON number or `true`/`false`, kept as text.
    Lit(&'a [u8]),
    /// An unquoted CSV field.
    Csv(&'a [u8]),
    /// The content of a quoted CSV field (`""` not yet collapsed).
    CsvQuoted(&'a [u8]),
}

impl<'a> Val<'a> {
    /// The wire text; `None` for absent or null.
    pub(crate) fn text(self) -> Option<&'a [u8]> {
        match self {
            Val::Absent | Val::Null => None,
            Val::Json(s) | Val::Lit(s) | Val::Csv(s) | Val::CsvQuoted(s) => Some(s),
        }
    }

    /// The wire text if it is present and not empty.
    pub(crate) fn non_empty(self) -> Option<&'a [u8]> {
        self.text().filter(|s| !s.is_empty())
    }

    /// Write as a JSON string, or `null` when absent or null.
    pub(crate) fn write(self, out: &mut Vec<u8>) {
        out.push(b'"');
        match self {
            Val::Absent | Val::Null => {
                out.pop();
                return out.extend_from_slice(b"null");
            }
            Val::Json(s) => escape::json_raw(out, s),
            // Numbers and literals hold only `[-+.0-9a-zA-Z]`; plain() is a cheap copy.
            Val::Lit(s) | Val::Csv(s) => escape::plain(out, s),
            Val::CsvQuoted(s) => escape::csv_quoted(out, s),
        }
        out.push(b'"');
    }

    /// Like [`Val::write`], but an empty string is written as `null`.
    pub(crate) fn write_or_null(self, out: &mut Vec<u8>) {
        match self.non_empty() {
            Some(_) => self.write(out),
            None => out.extend_from_slice(b"null"),
        }
    }
}

/// `details.before.owner` / `details.after.owner`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Owner<'a> {
    pub sid: Val<'a>,
    pub auth_id: Val<'a>,
}

impl Owner<'_> {
    /// Same identity: equal wire text of sid and auth_id (absent and null are equal).
    pub(crate) fn same(&self, other: &Owner<'_>) -> bool {
        self.sid.text() == other.sid.text() && self.auth_id.text() == other.auth_id.text()
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Record<'a> {
    pub user_sid: Val<'a>,
    pub user_auth_id: Val<'a>,
    pub user_name: Val<'a>,
    pub user_ip: Val<'a>,
    pub protocol: Val<'a>,
    pub operation: Val<'a>,
    pub status: Val<'a>,
    pub path: Val<'a>,
    pub file_id: Val<'a>,
    pub target: Val<'a>,
    pub owner_before: Option<Owner<'a>>,
    pub owner_after: Option<Owner<'a>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(v: Val<'_>) -> String {
        let mut out = Vec::new();
        v.write(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn writes_by_source() {
        assert_eq!(w(Val::Absent), "null");
        assert_eq!(w(Val::Null), "null");
        assert_eq!(w(Val::Json(br#"AD\\alice"#)), r#""AD\\alice""#);
        assert_eq!(w(Val::Json(br#"AD\alice"#)), r#""AD\\alice""#);
        assert_eq!(w(Val::Lit(b"500")), r#""500""#);
        assert_eq!(w(Val::Csv(b"::1")), r#""::1""#);
        assert_eq!(w(Val::CsvQuoted(br#"a""b\c"#)), r#""a\"b\\c""#);
        let mut out = Vec::new();
        Val::Csv(b"").write_or_null(&mut out);
        Val::Json(b"7").write_or_null(&mut out);
        assert_eq!(out, br#"null"7""#);
    }

    #[test]
    fn owner_identity() {
        let a = Owner {
            sid: Val::Json(b"S-1"),
            auth_id: Val::Json(b"500"),
        };
        let b = Owner {
            sid: Val::Json(b"S-1"),
            auth_id: Val::Lit(b"500"),
        };
        let c = Owner {
            sid: Val::Json(b"S-1"),
            auth_id: Val::Json(b"501"),
        };
        let n = Owner {
            sid: Val::Null,
            auth_id: Val::Absent,
        };
        assert!(a.same(&b));
        assert!(!a.same(&c));
        assert!(n.same(&Owner::default()));
    }
}
