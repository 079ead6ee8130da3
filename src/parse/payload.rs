//! payload: which format the MSG part of a frame is in, and the record it holds.
//!
//! The dispatch between [`super::json`] and [`super::csv`] lives here, above
//! both formats and [`super::record`], so that `record` names neither format
//! and the formats name only `record` (no import cycle inside `parse`).

use super::record::Record;
use super::{csv, json, ParseError};

/// MSG to a record: JSON if it starts with `{` (after spaces and a UTF-8 BOM), else CSV.
pub(crate) fn parse_payload<'a>(
    msg: &'a [u8],
    drop: impl Fn(&[u8], &[u8]) -> bool,
) -> Result<Record<'a>, ParseError> {
    let msg = trim_start(msg);
    let msg = msg
        .strip_prefix("\u{feff}".as_bytes())
        .map_or(msg, trim_start);
    match msg.first() {
        None => Err(ParseError::Payload),
        Some(b'{') => json::parse_unless(msg, drop),
        Some(_) => csv::parse(msg),
    }
}

fn trim_start(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|&&c| c == b' ' || c == b'\t').count();
    &s[n..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::record::Val;

    #[test]
    fn payload_dispatch() {
        assert_eq!(parse_payload(b"", |_, _| false), Err(ParseError::Payload));
        assert_eq!(
            parse_payload(b"   ", |_, _| false),
            Err(ParseError::Payload)
        );
        let r = parse_payload("\u{feff} {\"operation\":\"x\"}".as_bytes(), |_, _| false).unwrap();
        assert_eq!(r.operation, Val::Json(b"x"));
        let r = parse_payload(b"  1.2.3.4,\"u\",smb2,fs_open,ok,1,\"/\",\"\"", |_, _| {
            false
        })
        .unwrap();
        assert_eq!(r.operation, Val::Csv(b"fs_open"));
    }
}
