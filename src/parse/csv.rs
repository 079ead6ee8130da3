//! csv: the default Qumulo payload, eight comma-separated fields:
//! `user_ip,"user_id",protocol,operation,status,file_id,"path","target"`.
//!
//! Any field may be quoted. Inside quotes `""` is a literal quote (RFC 4180) and a
//! backslash is a literal character (`"AD\alice"`). Qumulo does not document how it
//! escapes a quote, so `\"` is also taken as a literal quote, but only where the
//! RFC 4180 reading fails (the quote is followed by neither `"`, `,` nor the end);
//! `"C:\"` is therefore the field `C:\`. Fewer than eight fields is an error;
//! anything after the eighth is ignored.

use super::record::{Record, Val};
use super::scan::find;
use super::ParseError;

const BAD: ParseError = ParseError::Payload;

pub(crate) fn parse(msg: &[u8]) -> Result<Record<'_>, ParseError> {
    let mut f = [Val::Absent; 8];
    let mut i = 0;
    for (n, slot) in f.iter_mut().enumerate() {
        let (v, next) = field(msg, i)?;
        *slot = v;
        match msg.get(next) {
            Some(b',') => i = next + 1,
            None if n == 7 => break,
            _ => return Err(BAD),
        }
    }
    let [user_ip, user, protocol, operation, status, file_id, path, target] = f;
    let (user_sid, user_name) = match user.text() {
        Some(s) if s.starts_with(b"S-1-") => (user, Val::Absent),
        _ => (Val::Absent, user),
    };
    Ok(Record {
        user_sid,
        user_auth_id: Val::Absent,
        user_name,
        user_ip,
        protocol,
        operation,
        status,
        path,
        file_id,
        target,
        owner_before: None,
        owner_after: None,
    })
}

/// The field starting at `i` and the index just after it (a `,` or the end).
fn field(b: &[u8], i: usize) -> Result<(Val<'_>, usize), ParseError> {
    let rest = b.get(i..).ok_or(BAD)?;
    if rest.first() != Some(&b'"') {
        let end = find(rest, b',').unwrap_or(rest.len());
        return Ok((Val::Csv(&rest[..end]), i + end));
    }
    let mut j = 1;
    loop {
        let k = j + find(rest.get(j..).ok_or(BAD)?, b'"').ok_or(BAD)?;
        match rest.get(k + 1) {
            Some(b'"') => j = k + 2,
            None | Some(b',') => return Ok((Val::CsvQuoted(&rest[1..k]), i + k + 1)),
            Some(_) if k > 1 && rest[k - 1] == b'\\' => j = k + 1,
            Some(_) => return Err(BAD),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Record<'_> {
        parse(s.as_bytes()).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn observed_line() {
        let r = p(
            r#"10.220.151.129,"admin",smb2,fs_create_file,ok,140624751830626345080086044861,"/data/file.txt","""#,
        );
        assert_eq!(r.user_ip, Val::Csv(b"10.220.151.129"));
        assert_eq!(r.user_name, Val::CsvQuoted(b"admin"));
        assert_eq!(r.user_sid, Val::Absent);
        assert_eq!(r.protocol, Val::Csv(b"smb2"));
        assert_eq!(r.operation, Val::Csv(b"fs_create_file"));
        assert_eq!(r.status, Val::Csv(b"ok"));
        assert_eq!(r.file_id, Val::Csv(b"140624751830626345080086044861"));
        assert_eq!(r.path, Val::CsvQuoted(b"/data/file.txt"));
        assert_eq!(r.target, Val::CsvQuoted(b""));
    }

    #[test]
    fn quoting() {
        let r = p(r#"::1,"AD\alice",api,fs_rename,ok,,"/a, ""b"".txt","/c,d""""#);
        assert_eq!(r.user_ip, Val::Csv(b"::1"));
        assert_eq!(r.user_name, Val::CsvQuoted(br"AD\alice"));
        assert_eq!(r.file_id, Val::Csv(b""));
        assert_eq!(r.path, Val::CsvQuoted(br#"/a, ""b"".txt"#));
        assert_eq!(r.target, Val::CsvQuoted(br#"/c,d"""#));
        // backslash-escaped quote where RFC 4180 would fail
        let r = p(r#"1.1.1.1,"u",smb2,fs_open,ok,1,"/say \"hi\" now","""#);
        assert_eq!(r.path, Val::CsvQuoted(br#"/say \"hi\" now"#));
        // a trailing backslash closes normally
        let r = p(r#"1.1.1.1,"u",smb2,fs_open,ok,1,"C:\","""#);
        assert_eq!(r.path, Val::CsvQuoted(br"C:\"));
    }

    #[test]
    fn sid_user_and_extra_fields() {
        let r = p(r#"1.1.1.1,"S-1-5-21-1-2-3-500",smb2,fs_open,ok,1,"/","",extra,"x""#);
        assert_eq!(r.user_sid, Val::CsvQuoted(b"S-1-5-21-1-2-3-500"));
        assert_eq!(r.user_name, Val::Absent);
        assert_eq!(r.target, Val::CsvQuoted(b""));
        let r = p(r#"1.1.1.1,"1000",nfs3,fs_list_directory,ok,6,"/Demo/","","#);
        assert_eq!(r.user_name, Val::CsvQuoted(b"1000"));
        let r = p(r#"1.1.1.1,u,nfs3,fs_list_directory,ok,6,/Demo/,"#);
        assert_eq!(r.path, Val::Csv(b"/Demo/"));
        assert_eq!(r.target, Val::Csv(b""));
    }

    #[test]
    fn malformed() {
        for bad in [
            "",
            "1.1.1.1",
            r#"1.1.1.1,"u",smb2,fs_open,ok,1,"/""#,
            r#"1.1.1.1,"u,smb2,fs_open,ok,1,"/","""#,
            r#"1.1.1.1,"u"x,smb2,fs_open,ok,1,"/","""#,
            r#"1.1.1.1,"u",smb2,fs_open,ok,1,"/","" "#,
            r#"1.1.1.1,"u",smb2,fs_open,ok,1,"/","\"#,
            r#"1.1.1.1,"",smb2,fs_open,ok,1,"/","x"y"#,
            "\"",
        ] {
            assert_eq!(parse(bad.as_bytes()), Err(ParseError::Payload), "{bad}");
        }
    }
}
