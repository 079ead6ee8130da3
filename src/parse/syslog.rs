//! syslog: the header of one frame, split into borrowed pieces.
//!
//! Accepted forms (the frame is already trimmed):
//! 1. RFC 5424: `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD [MSG]`
//! 2. RFC 3164: `<PRI>Mmm dd hh:mm:ss HOSTNAME TAG: MSG`
//! 3. PRI then an RFC 3339 timestamp (rsyslog forwarding): `<PRI>TIMESTAMP HOSTNAME TAG: MSG`
//! 4. the same without PRI: `TIMESTAMP HOSTNAME TAG MSG`
//!
//! (2) is also accepted without PRI. TAG is `name`, `name:`, `name[pid]` or
//! `name[pid]:`; the app name is `name`. The timestamp is only tokenised here;
//! [`Ts::resolve`] turns it into milliseconds, so `frame_hostname` does not pay for it.

use super::scan::find;
use super::time::{self, Bsd};
use super::ParseError;

/// The header's timestamp, not yet converted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ts<'a> {
    /// An RFC 3339 token.
    Iso(&'a [u8]),
    /// An RFC 3164 timestamp (no year).
    Bsd(Bsd),
    /// NILVALUE `-`.
    Nil,
}

impl Ts<'_> {
    /// Unix milliseconds, using `received_ms` where the header has no (full) time.
    pub(crate) fn resolve(self, received_ms: i64) -> Result<i64, ParseError> {
        match self {
            Ts::Iso(s) => time::parse_rfc3339(s),
            Ts::Bsd(b) => b.resolve(received_ms),
            Ts::Nil => time::received(received_ms),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header<'a> {
    pub ts: Ts<'a>,
    /// HOSTNAME as on the wire; `-` for NILVALUE.
    pub host: &'a [u8],
    /// APP-NAME / TAG without `[pid]` and `:`; empty for NILVALUE.
    pub app: &'a [u8],
    /// Everything after the header (may be empty).
    pub msg: &'a [u8],
}

const HDR: ParseError = ParseError::Header;

/// The token up to the next space, and what follows that space. The token must not be empty.
fn token(b: &[u8]) -> Result<(&[u8], &[u8]), ParseError> {
    let k = find(b, b' ').ok_or(HDR)?;
    match b.split_at(k) {
        ([], _) => Err(HDR),
        (tok, rest) => Ok((tok, &rest[1..])),
    }
}

pub(crate) fn parse_header(b: &[u8]) -> Result<Header<'_>, ParseError> {
    let rest = match b.split_first() {
        Some((b'<', rest)) => after_pri(rest)?,
        Some(_) => b,
        None => return Err(ParseError::Empty),
    };
    match rest {
        [b'1', b' ', tail @ ..] if b.first() == Some(&b'<') => rfc5424(tail),
        // Another RFC 5424 VERSION, or a lone digit.
        [c, b' ', ..] if c.is_ascii_digit() => Err(HDR),
        [c, ..] if c.is_ascii_digit() => iso_form(rest),
        [c, ..] if c.is_ascii_uppercase() => bsd_form(rest),
        _ => Err(HDR),
    }
}

/// `b` follows `<`: 1-3 digits, value at most 191, then `>`.
fn after_pri(b: &[u8]) -> Result<&[u8], ParseError> {
    let mut pri = 0u32;
    for (i, &c) in b.iter().enumerate().take(4) {
        match c {
            b'0'..=b'9' if i < 3 => pri = pri * 10 + u32::from(c - b'0'),
            b'>' if i > 0 && pri <= 191 => return Ok(&b[i + 1..]),
            _ => break,
        }
    }
    Err(HDR)
}

fn rfc5424(b: &[u8]) -> Result<Header<'_>, ParseError> {
    let (ts, b) = token(b)?;
    let (host, b) = token(b)?;
    let (app, b) = token(b)?;
    let (_procid, b) = token(b)?;
    let (_msgid, b) = token(b)?;
    let msg = match skip_sd(b)? {
        [] => &[][..],
        [b' ', msg @ ..] => msg,
        _ => return Err(HDR),
    };
    let ts = if ts == b"-" { Ts::Nil } else { Ts::Iso(ts) };
    let app = if app == b"-" { &[][..] } else { app };
    Ok(Header { ts, host, app, msg })
}

/// Skip STRUCTURED-DATA: `-` or one or more `[id name="value" ...]` elements, where a
/// value may hold `\"`, `\\` and `\]`.
fn skip_sd(b: &[u8]) -> Result<&[u8], ParseError> {
    match b.first() {
        Some(b'-') => Ok(&b[1..]),
        Some(b'[') => {
            let mut i = 0;
            while b.get(i) == Some(&b'[') {
                i += 1;
                let mut quoted = false;
                loop {
                    match b.get(i) {
                        None => return Err(HDR),
                        Some(b'\\') if quoted => i += 2,
                        Some(b'"') => {
                            quoted = !quoted;
                            i += 1;
                        }
                        Some(b']') if !quoted => {
                            i += 1;
                            break;
                        }
                        Some(_) => i += 1,
                    }
                }
            }
            b.get(i..).ok_or(HDR)
        }
        _ => Err(HDR),
    }
}

/// Forms 3 and 4: `TIMESTAMP HOSTNAME TAG MSG` with an RFC 3339 timestamp.
fn iso_form(b: &[u8]) -> Result<Header<'_>, ParseError> {
    let (ts, b) = token(b).map_err(|_| ParseError::Timestamp)?;
    if ts.len() < 20 || ts.get(4) != Some(&b'-') {
        return Err(ParseError::Timestamp);
    }
    let (host, b) = token(b)?;
    let (app, msg) = tag(b)?;
    Ok(Header {
        ts: Ts::Iso(ts),
        host,
        app,
        msg,
    })
}

/// Form 2: `Mmm dd hh:mm:ss HOSTNAME TAG MSG`; the day may be space-padded (`Jan  7`).
fn bsd_form(b: &[u8]) -> Result<Header<'_>, ParseError> {
    const TS: ParseError = ParseError::Timestamp;
    let mon = time::month(b.get(0..3).ok_or(TS)?).ok_or(TS)?;
    if b.get(3) != Some(&b' ') {
        return Err(TS);
    }
    let mut i = 4;
    if b.get(i) == Some(&b' ') {
        i += 1;
    }
    let mut day = 0u32;
    let start = i;
    while let Some(&c) = b.get(i).filter(|c| c.is_ascii_digit() && i - start < 2) {
        day = day * 10 + u32::from(c - b'0');
        i += 1;
    }
    if i == start || day == 0 || day > time::days_in_month(2000, mon) || b.get(i) != Some(&b' ') {
        return Err(TS);
    }
    let sod = time::clock(b.get(i + 1..i + 9).ok_or(TS)?).ok_or(TS)?;
    if b.get(i + 9) != Some(&b' ') {
        return Err(TS);
    }
    let (host, b) = token(&b[i + 10..])?;
    let (app, msg) = tag(b)?;
    Ok(Header {
        ts: Ts::Bsd(Bsd { mon, day, sod }),
        host,
        app,
        msg,
    })
}

/// `name`, `name:`, `name[pid]` or `name[pid]:`, then a space (or, after `:`, the MSG directly).
fn tag(b: &[u8]) -> Result<(&[u8], &[u8]), ParseError> {
    let end = b
        .iter()
        .position(|&c| matches!(c, b'[' | b':' | b' '))
        .unwrap_or(b.len());
    let (app, mut rest) = b.split_at(end);
    if app.is_empty() {
        return Err(HDR);
    }
    if rest.first() == Some(&b'[') {
        let close = find(rest, b']').ok_or(HDR)?;
        rest = &rest[close + 1..];
    }
    let colon = rest.first() == Some(&b':');
    if colon {
        rest = &rest[1..];
    }
    match rest {
        [] => Ok((app, rest)),
        [b' ', msg @ ..] => Ok((app, msg)),
        _ if colon => Ok((app, rest)),
        _ => Err(HDR),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Header<'_> {
        parse_header(s.as_bytes()).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn err(s: &str) -> ParseError {
        parse_header(s.as_bytes()).unwrap_err()
    }

    #[test]
    fn rfc5424_observed() {
        let x =
            h(r#"<14>1 2026-01-27T14:12:23.9558Z cs-fil-q-k144-1 qumulo - - - 10.1.2.3,"admin""#);
        assert_eq!(x.ts, Ts::Iso(b"2026-01-27T14:12:23.9558Z"));
        assert_eq!(x.host, b"cs-fil-q-k144-1");
        assert_eq!(x.app, b"qumulo");
        assert_eq!(x.msg, br#"10.1.2.3,"admin""#);
    }

    #[test]
    fn rfc5424_nil_and_tokens() {
        let x = h("<0>1 - - - 123 ID47 - {}");
        assert_eq!(
            (x.ts, x.host, x.app, x.msg),
            (Ts::Nil, &b"-"[..], &b""[..], &b"{}"[..])
        );
        let x = h("<191>1 2026-01-27T14:12:23Z host app 99 - -");
        assert_eq!(x.msg, b"");
        assert_eq!(err("<192>1 - h a - - - x"), ParseError::Header);
        assert_eq!(err("<1a>1 - h a - - - x"), ParseError::Header);
        assert_eq!(err("<>1 - h a - - - x"), ParseError::Header);
        assert_eq!(err("<1234>1 - h a - - - x"), ParseError::Header);
        assert_eq!(err("<14>1 - h a - -"), ParseError::Header);
        assert_eq!(err("<14>1 - h  a - - - x"), ParseError::Header);
        assert_eq!(err("<14>1 - h a - - -x"), ParseError::Header);
        assert_eq!(err("<14>2 - h a - - - x"), ParseError::Header);
        assert_eq!(err("<14"), ParseError::Header);
    }

    #[test]
    fn rfc5424_structured_data() {
        let x = h(r#"<14>1 - h qumulo - - [ex@1 a="x\"]y" b="\\"][other k="]"] MSG"#);
        assert_eq!(x.msg, b"MSG");
        let x = h(r#"<14>1 - h qumulo - - [a][b]"#);
        assert_eq!(x.msg, b"");
        assert_eq!(
            err(r#"<14>1 - h qumulo - - [a b="x] MSG"#),
            ParseError::Header
        );
        assert_eq!(err(r#"<14>1 - h qumulo - - [a b="\"#), ParseError::Header);
        assert_eq!(err(r#"<14>1 - h qumulo - - [a]x MSG"#), ParseError::Header);
        assert_eq!(err(r#"<14>1 - h qumulo - - x MSG"#), ParseError::Header);
    }

    #[test]
    fn rfc3164() {
        let x = h("<14>Jan 27 14:12:23 cs-fil-q-k144-1 qumulo: a,b");
        assert_eq!(
            x.ts,
            Ts::Bsd(Bsd {
                mon: 1,
                day: 27,
                sod: 51_143
            })
        );
        assert_eq!(
            (x.host, x.app, x.msg),
            (&b"cs-fil-q-k144-1"[..], &b"qumulo"[..], &b"a,b"[..])
        );
        let x = h("<14>Jan  7 04:02:03 node-2 qumulo[1234]: {}");
        assert_eq!(
            x.ts,
            Ts::Bsd(Bsd {
                mon: 1,
                day: 7,
                sod: 4 * 3600 + 2 * 60 + 3
            })
        );
        assert_eq!(
            (x.host, x.app, x.msg),
            (&b"node-2"[..], &b"qumulo"[..], &b"{}"[..])
        );
        let x = h("Feb 29 00:00:00 n qumulo:{}");
        assert_eq!((x.app, x.msg), (&b"qumulo"[..], &b"{}"[..]));
        let x = h("<14>Dec 07 23:59:60 n qumulo x");
        assert_eq!(
            x.ts,
            Ts::Bsd(Bsd {
                mon: 12,
                day: 7,
                sod: 86_400
            })
        );
        assert_eq!(x.msg, b"x");
        for bad in [
            "<14>Jam 27 14:12:23 h qumulo: x",
            "<14>Jan 32 14:12:23 h qumulo: x",
            "<14>Feb 30 14:12:23 h qumulo: x",
            "<14>Jan 0 14:12:23 h qumulo: x",
            "<14>Jan 123 14:12:23 h qumulo: x",
            "<14>Jan 27 14:12 h qumulo: x",
            "<14>Jan 27 25:12:23 h qumulo: x",
            "<14>Jan 27 14:12:23",
        ] {
            assert_eq!(err(bad), ParseError::Timestamp, "{bad}");
        }
        assert_eq!(err("<14>Jan 27 14:12:23 h"), ParseError::Header);
        assert_eq!(
            err("<14>Jan 27 14:12:23 h qumulo[12: x"),
            ParseError::Header
        );
        assert_eq!(err("<14>Jan 27 14:12:23 h qumulo[12]x"), ParseError::Header);
    }

    #[test]
    fn rsyslog_forms() {
        let x = h("<14>2023-03-03T14:08:51.058379+00:00 host qumulo: MSG");
        assert_eq!(x.ts, Ts::Iso(b"2023-03-03T14:08:51.058379+00:00"));
        assert_eq!(
            (x.host, x.app, x.msg),
            (&b"host"[..], &b"qumulo"[..], &b"MSG"[..])
        );
        let x = h(r#"2023-03-03T14:08:51.058379Z host qumulo {"a":1}"#);
        assert_eq!(
            (x.host, x.app, x.msg),
            (&b"host"[..], &b"qumulo"[..], &br#"{"a":1}"#[..])
        );
        let x = h("2023-03-03T14:08:51Z host qumulo[77]: MSG");
        assert_eq!((x.app, x.msg), (&b"qumulo"[..], &b"MSG"[..]));
        let x = h("2023-03-03T14:08:51Z host qumulo");
        assert_eq!((x.app, x.msg), (&b"qumulo"[..], &b""[..]));
        assert_eq!(err("2023 host qumulo x"), ParseError::Timestamp);
        assert_eq!(err("12345"), ParseError::Timestamp);
        assert_eq!(err("2023-03-03T14:08:51Z host"), ParseError::Header);
        assert_eq!(err("2023-03-03T14:08:51Z host :x"), ParseError::Header);
    }

    #[test]
    fn junk() {
        assert_eq!(err(""), ParseError::Empty);
        for bad in [
            "<",
            "<14>",
            "hello",
            "{\"a\":1}",
            "<14> 1 - h a - - - x",
            "\u{feff}<14>1",
        ] {
            assert!(parse_header(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn resolve_nil_uses_received() {
        assert_eq!(Ts::Nil.resolve(1234), Ok(1234));
        assert_eq!(Ts::Iso(b"1970-01-01T00:00:01Z").resolve(0), Ok(1000));
    }
}
