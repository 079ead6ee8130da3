//! json: the Qumulo `format=json` payload, scanned without allocation.
//!
//! Walks the top-level object and the few nested ones we need (`user_id`,
//! `details`, `details.before/after.owner`), capturing values as raw slices of
//! the frame; everything else is skipped. Key order does not matter; a repeated
//! key keeps its last value. Lenient where Qumulo's own documentation is not
//! valid JSON: any backslash sequence is accepted inside a string (`"AD\alice"`),
//! and the content of skipped containers is only checked for balanced brackets
//! and well-formed strings. Nesting deeper than [`MAX_DEPTH`] is an error.

use super::record::{Owner, Record, Val};
use super::scan::find2;
use super::ParseError;

const BAD: ParseError = ParseError::Payload;
type Res<T> = Result<T, ParseError>;

/// Deepest nesting a skipped value may have.
pub(crate) const MAX_DEPTH: u32 = 128;

struct Cur<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Cur<'a> {
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> Res<()> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(BAD)
        }
    }

    /// At `"`: the string's content (escapes kept), leaving the cursor after the closing quote.
    #[inline]
    fn string(&mut self) -> Res<&'a [u8]> {
        if self.peek() != Some(b'"') {
            return Err(BAD);
        }
        let start = self.i + 1;
        let mut j = start;
        while let Some(rest) = self.b.get(j..) {
            let k = j + find2(rest, b'"', b'\\').ok_or(BAD)?;
            if self.b.get(k) == Some(&b'"') {
                self.i = k + 1;
                return Ok(&self.b[start..k]);
            }
            // Any escape, valid or not: skip the backslash and the byte after it.
            j = k + 2;
        }
        Err(BAD)
    }

    /// A value: strings, numbers, literals and null are captured; objects and arrays
    /// are skipped and read as absent.
    fn value(&mut self) -> Res<Val<'a>> {
        match self.peek().ok_or(BAD)? {
            b'"' => self.string().map(Val::Json),
            b'{' | b'[' => self.skip_container().map(|()| Val::Absent),
            b'n' => self.literal(b"null").map(|_| Val::Null),
            b't' => self.literal(b"true").map(Val::Lit),
            b'f' => self.literal(b"false").map(Val::Lit),
            b'-' | b'0'..=b'9' => Ok(Val::Lit(self.number())),
            _ => Err(BAD),
        }
    }

    fn skip(&mut self) -> Res<()> {
        self.value().map(drop)
    }

    fn literal(&mut self, word: &'static [u8]) -> Res<&'a [u8]> {
        let end = self.i + word.len();
        match self.b.get(self.i..end) {
            Some(s) if s == word => {
                self.i = end;
                Ok(s)
            }
            _ => Err(BAD),
        }
    }

    /// Lenient: the longest run of number characters (the first is `-` or a digit).
    fn number(&mut self) -> &'a [u8] {
        let start = self.i;
        while let Some(b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E') = self.peek() {
            self.i += 1;
        }
        &self.b[start..self.i]
    }

    /// At `{` or `[`: skip to the matching bracket. A bit stack records the bracket kinds.
    fn skip_container(&mut self) -> Res<()> {
        let mut stack: u128 = 0;
        let mut depth = 0u32;
        loop {
            match self.peek().ok_or(BAD)? {
                c @ (b'{' | b'[') => {
                    if depth == MAX_DEPTH {
                        return Err(BAD);
                    }
                    stack = stack << 1 | u128::from(c == b'{');
                    depth += 1;
                    self.i += 1;
                }
                c @ (b'}' | b']') => {
                    if depth == 0 || (stack & 1 == 1) != (c == b'}') {
                        return Err(BAD);
                    }
                    stack >>= 1;
                    depth -= 1;
                    self.i += 1;
                    if depth == 0 {
                        return Ok(());
                    }
                }
                b'"' => {
                    self.string()?;
                }
                _ => self.i += 1,
            }
        }
    }

    /// At `{`: call `f` for each key with the cursor on its value; `f` must consume it.
    fn object(&mut self, mut f: impl FnMut(&mut Self, &'a [u8]) -> Res<()>) -> Res<()> {
        self.eat(b'{')?;
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(());
        }
        loop {
            self.ws();
            let key = self.string()?;
            self.ws();
            self.eat(b':')?;
            self.ws();
            f(self, key)?;
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(BAD),
            }
        }
    }

    /// An object value that we walk, or anything else (null included) skipped.
    fn if_object(&mut self, f: impl FnMut(&mut Self, &'a [u8]) -> Res<()>) -> Res<bool> {
        if self.peek() == Some(b'{') {
            self.object(f).map(|()| true)
        } else {
            self.skip().map(|()| false)
        }
    }
}

/// The payload must be exactly one object (trailing whitespace allowed).
#[cfg(any(test, fuzzing))]
pub(crate) fn parse(msg: &[u8]) -> Res<Record<'_>> {
    parse_unless(msg, |_, _| false)
}

/// Like [`parse`], but stops as soon as `operation` and `status` are known and
/// `drop(operation, status)` says the record is not wanted: most of what Qumulo
/// sends is dropped by the filter, and `details` (the largest part) usually
/// comes last. The record returned then holds only what was read so far, and
/// the rest of the payload is not checked.
pub(crate) fn parse_unless(msg: &[u8], drop: impl Fn(&[u8], &[u8]) -> bool) -> Res<Record<'_>> {
    let mut r = Record::default();
    let mut c = Cur { b: msg, i: 0 };
    let mut dropped = false;
    c.ws();
    let parsed = c.object(|c, key| {
        match key {
            b"user_id" => {
                if c.peek() == Some(b'"') {
                    // Not documented; a bare string can only be a name.
                    r.user_name = c.value()?;
                } else {
                    c.if_object(|c, k| {
                        match k {
                            b"sid" => r.user_sid = c.value()?,
                            b"auth_id" => r.user_auth_id = c.value()?,
                            b"name" => r.user_name = c.value()?,
                            _ => c.skip()?,
                        }
                        Ok(())
                    })?;
                }
            }
            b"user_ip" => r.user_ip = c.value()?,
            b"protocol" => r.protocol = c.value()?,
            b"operation" => r.operation = c.value()?,
            b"status" => r.status = c.value()?,
            b"details" => {
                c.if_object(|c, k| {
                    match k {
                        b"path" => r.path = c.value()?,
                        b"file_id" => r.file_id = c.value()?,
                        b"target" => r.target = c.value()?,
                        b"before" => r.owner_before = owner_of(c)?,
                        b"after" => r.owner_after = owner_of(c)?,
                        _ => c.skip()?,
                    }
                    Ok(())
                })?;
            }
            _ => c.skip()?,
        }
        if matches!(key, b"operation" | b"status") {
            if let (Some(op), Some(status)) = (r.operation.non_empty(), r.status.non_empty()) {
                if drop(op, status) {
                    dropped = true;
                    return Err(BAD); // ends the walk; see `dropped`
                }
            }
        }
        Ok(())
    });
    if dropped {
        return Ok(r);
    }
    parsed?;
    c.ws();
    if c.i == msg.len() {
        Ok(r)
    } else {
        Err(BAD)
    }
}

/// `{"ctime": ..., "mtime": ..., "owner": {"sid": ..., "auth_id": ...}}`: the owner, if
/// `owner` is an object.
fn owner_of<'a>(c: &mut Cur<'a>) -> Res<Option<Owner<'a>>> {
    let mut owner = None;
    c.if_object(|c, k| {
        if k != b"owner" {
            return c.skip();
        }
        let mut o = Owner::default();
        let is_obj = c.if_object(|c, k| {
            match k {
                b"sid" => o.sid = c.value()?,
                b"auth_id" => o.auth_id = c.value()?,
                _ => c.skip()?,
            }
            Ok(())
        })?;
        owner = is_obj.then_some(o);
        Ok(())
    })?;
    Ok(owner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_record_stops_the_walk_before_details() {
        let msg = br#"{"protocol":"smb2","operation":"fs_read_metadata","status":"ok","details":{"path":"/x" BROKEN"#;
        assert_eq!(parse(msg), Err(BAD));
        let r = parse_unless(msg, |op, _| op == b"fs_read_metadata").unwrap();
        assert_eq!(r.operation, Val::Json(b"fs_read_metadata"));
        assert_eq!(r.path, Val::Absent);
        // A record that is kept is read whole, and checked whole.
        assert_eq!(parse_unless(msg, |_, _| false), Err(BAD));
    }

    fn p(s: &str) -> Record<'_> {
        parse(s.as_bytes()).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn documented_smb_example() {
        let r = p(
            r#"{"user_id":{"sid":"S-1-5-21-1","auth_id":"500","name":"admin"},"user_ip":"10.0.0.1","protocol":"smb2","operation":"fs_create_file","status":"ok","details":{"file_id":"1000003","path":"/my-file.txt"}}"#,
        );
        assert_eq!(r.user_sid, Val::Json(b"S-1-5-21-1"));
        assert_eq!(r.user_auth_id, Val::Json(b"500"));
        assert_eq!(r.user_name, Val::Json(b"admin"));
        assert_eq!(r.user_ip, Val::Json(b"10.0.0.1"));
        assert_eq!(r.protocol, Val::Json(b"smb2"));
        assert_eq!(r.operation, Val::Json(b"fs_create_file"));
        assert_eq!(r.status, Val::Json(b"ok"));
        assert_eq!(r.file_id, Val::Json(b"1000003"));
        assert_eq!(r.path, Val::Json(b"/my-file.txt"));
        assert_eq!(r.target, Val::Absent);
        assert_eq!((r.owner_before, r.owner_after), (None, None));
    }

    #[test]
    fn key_order_and_whitespace_do_not_matter() {
        let a = p(
            r#"{"details":{"path":"/a","file_id":"4"},"status":"ok","operation":"fs_delete","protocol":"nfs3","user_ip":"::1","user_id":{"name":"n","auth_id":"1","sid":"s"}}"#,
        );
        let b = p(
            " { \"user_id\" : { \"sid\" : \"s\" ,\n\"auth_id\":\"1\",\t\"name\":\"n\" } , \"user_ip\":\"::1\",\"protocol\":\"nfs3\",\r\n\"operation\":\"fs_delete\",\"status\":\"ok\",\"details\":{\"file_id\":\"4\",\"path\":\"/a\"} } ",
        );
        assert_eq!(a, b);
    }

    #[test]
    fn write_metadata_owners_and_nested_skipping() {
        let r = p(
            r#"{"user_id": {"name": "AD\alice", "sid": "S-1-5-21-9", "auth_id": "500"}, "user_ip": "10.1.1.1", "protocol": "api",
 "operation": "fs_write_metadata", "status": "ok",
 "details": {"file_id": "4", "path": "/my_file", "extra": [1, {"x": [true, null, "]}"]}, -2.5e3],
   "after":  {"ctime": "2024-06-11T14:55:58.187394089Z", "mtime": "2024-06-11T14:55:58.187394089Z", "owner": {"sid": "S-1-5-21-2", "auth_id": 501}},
   "before": {"ctime": "2024-06-11T14:55:43.616292461Z", "owner": {"sid": "S-1-5-21-9", "auth_id": "500", "more": {}}, "mtime": "x"}}}"#,
        );
        assert_eq!(r.user_name, Val::Json(br"AD\alice"));
        let before = r.owner_before.unwrap();
        let after = r.owner_after.unwrap();
        assert_eq!(before.sid, Val::Json(b"S-1-5-21-9"));
        assert_eq!(before.auth_id, Val::Json(b"500"));
        assert_eq!(after.auth_id, Val::Lit(b"501"));
        assert_eq!(r.path, Val::Json(b"/my_file"));
    }

    #[test]
    fn nulls_numbers_and_unknown_keys() {
        let r = p(
            r#"{"user_id":null,"user_ip":null,"protocol":"internal","operation":"fs_read_data","status":"ok","unknown":{"a":[[]]},"flag":false,"details":{"path":"/x","file_id":140624751830626345080086044861,"offset":0,"size":261456,"file_size":261456,"target":null}}"#,
        );
        assert_eq!(r.user_name, Val::Absent);
        assert_eq!(r.user_ip, Val::Null);
        assert_eq!(r.file_id, Val::Lit(b"140624751830626345080086044861"));
        assert_eq!(r.target, Val::Null);
        let r = p(r#"{"user_id":{"auth_id":500,"sid":null},"details":null,"operation":"x"}"#);
        assert_eq!(r.user_auth_id, Val::Lit(b"500"));
        assert_eq!(r.user_sid, Val::Null);
        assert_eq!(r.path, Val::Absent);
        let r = p(r#"{"user_id":"AD\\bob","details":{"before":{"owner":null},"after":{}}}"#);
        assert_eq!(r.user_name, Val::Json(br"AD\\bob"));
        assert_eq!((r.owner_before, r.owner_after), (None, None));
    }

    #[test]
    fn escapes_are_kept_raw() {
        let r = p(r#"{"details":{"path":"/a\"b\\c\u00e9\q","target":"\/x"}}"#);
        assert_eq!(r.path, Val::Json(br#"/a\"b\\c\u00e9\q"#));
        assert_eq!(r.target, Val::Json(br#"\/x"#));
        let r = p(r#"{"a\"b":1,"details":{"path":"p"}}"#);
        assert_eq!(r.path, Val::Json(b"p"));
        let r = p(r#"{"details":{"path":"a"},"details":{"path":"b"}}"#);
        assert_eq!(r.path, Val::Json(b"b"));
        assert_eq!(p("{}"), Record::default());
    }

    #[test]
    fn syntax_errors() {
        for bad in [
            "{",
            "{\"a\"",
            "{\"a\":",
            "{\"a\":1",
            "{\"a\":1,}",
            "{\"a\" 1}",
            "{a:1}",
            "{\"a\":1}}",
            "{\"a\":1} x",
            "{\"a\":\"unterminated}",
            "{\"a\":\"ends in backslash\\",
            "{\"a\":[1,2}",
            "{\"a\":{\"b\":]}",
            "{\"a\":nul}",
            "{\"a\":tru}",
            "{\"a\":+1}",
            "{\"a\":'x'}",
            "{\"a\":[\"]\"}",
            "{\"details\":{\"path\":\"x\",}}",
            "{\"user_id\":{\"sid\" \"x\"}}",
        ] {
            assert_eq!(parse(bad.as_bytes()), Err(ParseError::Payload), "{bad}");
        }
    }

    #[test]
    fn depth_limit() {
        let ok = format!("{{\"a\":{}{}}}", "[".repeat(128), "]".repeat(128));
        assert!(parse(ok.as_bytes()).is_ok());
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(129), "]".repeat(129));
        assert_eq!(parse(deep.as_bytes()), Err(ParseError::Payload));
        let huge = format!("{{\"a\":{}", "[".repeat(100_000));
        assert_eq!(parse(huge.as_bytes()), Err(ParseError::Payload));
    }
}
