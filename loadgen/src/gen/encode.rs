//! encoders: where rendered text goes (a JSON string, a quoted CSV field, or
//! a plain `String` for the sink's comparisons), with its escaping.

use super::*;

/// Where rendered text goes: a JSON string body, a CSV quoted field body, or
/// a plain `String` (what the sink compares against).
pub(super) trait Out {
    /// bytes that need no escaping in any encoding
    fn raw(&mut self, s: &str);
    fn text(&mut self, s: &str);
    fn num(&mut self, n: u64);
}

pub(super) struct JsonOut<'a>(pub(super) &'a mut Vec<u8>);
pub(super) struct CsvOut<'a>(pub(super) &'a mut Vec<u8>);
pub(super) struct StrOut<'a>(pub(super) &'a mut String);

pub(super) fn json_escape(out: &mut Vec<u8>, s: &str) {
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

pub(super) fn json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    json_escape(out, s);
    out.push(b'"');
}

pub(super) fn json_opt(out: &mut Vec<u8>, s: Option<&str>) {
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
    pub(super) fn quoted(&mut self, s: &str) {
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
