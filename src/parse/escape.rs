//! escape: captured strings out as JSON string contents.
//!
//! A captured value comes from one of three sources, each with its own rule:
//! - [`plain`]: raw text (syslog HOSTNAME, unquoted CSV fields): escape `"`, `\`
//!   and control bytes.
//! - [`json_raw`]: the still-escaped content of a JSON string from the payload:
//!   copy valid escapes through, repair what would make the output invalid
//!   (`\a` becomes `\\a`, a lone surrogate escape becomes `\ufffd`, raw control
//!   bytes are escaped, a trailing lone backslash is doubled).
//! - [`csv_quoted`]: the content of a quoted CSV field: `""` is one quote, and a
//!   `\"` that the CSV scanner took as an escaped quote is one quote too (see
//!   `csv::quoted`); every other backslash is literal.
//!
//! The input is always valid UTF-8 (the caller checked the frame), and every
//! byte this module treats specially is ASCII, so copied runs stay valid UTF-8.

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

#[inline(always)]
fn special(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// Whether any byte of `w` is a control byte, `"` or `\`. May report a false
/// positive only where a byte is >= 0x80 next to a match; never a false negative.
#[inline(always)]
fn word_special(w: u64) -> bool {
    let ctl = w.wrapping_sub(LO * 0x20) & !w & HI;
    let q = w ^ (LO * b'"' as u64);
    let q = q.wrapping_sub(LO) & !q & HI;
    let bs = w ^ (LO * b'\\' as u64);
    let bs = bs.wrapping_sub(LO) & !bs & HI;
    (ctl | q | bs) != 0
}

/// Length of the longest prefix of `s` that needs no escaping.
#[inline]
fn clean_len(s: &[u8]) -> usize {
    let mut i = 0;
    for c in s.chunks_exact(8) {
        let mut a = [0u8; 8];
        a.copy_from_slice(c);
        if word_special(u64::from_le_bytes(a)) {
            break;
        }
        i += 8;
    }
    while let Some(&b) = s.get(i) {
        if special(b) {
            break;
        }
        i += 1;
    }
    i
}

/// Copy the clean prefix of `s` and split off the first special byte.
#[inline(always)]
fn next_special<'a>(out: &mut Vec<u8>, s: &'a [u8]) -> Option<(u8, &'a [u8])> {
    let (clean, rest) = s.split_at(clean_len(s));
    out.extend_from_slice(clean);
    rest.split_first().map(|(&b, t)| (b, t))
}

fn control(out: &mut Vec<u8>, b: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    match b {
        b'\n' => out.extend_from_slice(b"\\n"),
        b'\r' => out.extend_from_slice(b"\\r"),
        b'\t' => out.extend_from_slice(b"\\t"),
        0x08 => out.extend_from_slice(b"\\b"),
        0x0c => out.extend_from_slice(b"\\f"),
        _ => out.extend_from_slice(&[
            b'\\',
            b'u',
            b'0',
            b'0',
            HEX[usize::from(b >> 4)],
            HEX[usize::from(b & 15)],
        ]),
    }
}

/// Raw text: escape `"`, `\` and control bytes.
pub(crate) fn plain(out: &mut Vec<u8>, mut s: &[u8]) {
    while let Some((b, rest)) = next_special(out, s) {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            _ => control(out, b),
        }
        s = rest;
    }
}

/// The still-escaped content of a JSON string, repaired where needed.
pub(crate) fn json_raw(out: &mut Vec<u8>, mut s: &[u8]) {
    while let Some((b, rest)) = next_special(out, s) {
        s = match b {
            b'\\' => escape_seq(out, rest),
            b'"' => {
                out.extend_from_slice(b"\\\"");
                rest
            }
            _ => {
                control(out, b);
                rest
            }
        };
    }
}

fn hex4(s: Option<&[u8]>) -> Option<u32> {
    let s = s?;
    let mut v = 0u32;
    for &c in s {
        v = v * 16 + (c as char).to_digit(16)?;
    }
    Some(v)
}

/// `t` follows a backslash. Writes the escape (or its repair) and returns what follows it.
fn escape_seq<'a>(out: &mut Vec<u8>, t: &'a [u8]) -> &'a [u8] {
    match t.split_first() {
        Some((&c @ (b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't'), rest)) => {
            out.extend_from_slice(&[b'\\', c]);
            rest
        }
        Some((b'u', _)) => match hex4(t.get(1..5)) {
            Some(0xD800..=0xDBFF) => {
                // A high surrogate is valid only when a low surrogate escape follows.
                let pair = t.get(5..7) == Some(b"\\u")
                    && matches!(hex4(t.get(7..11)), Some(0xDC00..=0xDFFF));
                if pair {
                    out.push(b'\\');
                    out.extend_from_slice(&t[..11]);
                    &t[11..]
                } else {
                    out.extend_from_slice(b"\\ufffd");
                    &t[5..]
                }
            }
            Some(0xDC00..=0xDFFF) => {
                out.extend_from_slice(b"\\ufffd");
                &t[5..]
            }
            Some(_) => {
                out.push(b'\\');
                out.extend_from_slice(&t[..5]);
                &t[5..]
            }
            None => {
                out.extend_from_slice(b"\\\\");
                t
            }
        },
        // An invalid escape (`\a`) or a trailing lone backslash: the backslash is literal.
        _ => {
            out.extend_from_slice(b"\\\\");
            t
        }
    }
}

/// The content of a quoted CSV field (between its quotes).
pub(crate) fn csv_quoted(out: &mut Vec<u8>, mut s: &[u8]) {
    while let Some((b, rest)) = next_special(out, s) {
        s = match b {
            b'"' => {
                // The first quote of a doubled pair; the scanner guarantees the second.
                out.extend_from_slice(b"\\\"");
                rest.strip_prefix(b"\"").unwrap_or(rest)
            }
            b'\\' => match rest {
                // The scanner took `\"` as an escaped quote only where that quote
                // does not start a doubled pair.
                [b'"', b'"', ..] => {
                    out.extend_from_slice(b"\\\\");
                    rest
                }
                [b'"', tail @ ..] => {
                    out.extend_from_slice(b"\\\"");
                    tail
                }
                _ => {
                    out.extend_from_slice(b"\\\\");
                    rest
                }
            },
            _ => {
                control(out, b);
                rest
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(f: fn(&mut Vec<u8>, &[u8]), s: &[u8]) -> String {
        let mut out = b"\"".to_vec();
        f(&mut out, s);
        out.push(b'"');
        String::from_utf8(out).unwrap()
    }

    fn decoded(f: fn(&mut Vec<u8>, &[u8]), s: &[u8]) -> String {
        let lit = run(f, s);
        serde_json::from_str::<String>(&lit).unwrap_or_else(|e| panic!("{lit}: {e}"))
    }

    #[test]
    fn word_scan_finds_every_special_byte() {
        for pos in 0..16 {
            for b in [0u8, 0x1f, b'"', b'\\', b'\n'] {
                let mut s = vec![b'a'; 16];
                s[pos] = b;
                assert_eq!(clean_len(&s), pos);
            }
        }
        assert_eq!(clean_len("ééééé ok".as_bytes()), "ééééé ok".len());
    }

    #[test]
    fn plain_escapes() {
        assert_eq!(run(plain, br#"AD\alice"#), r#""AD\\alice""#);
        assert_eq!(run(plain, b"a\"b\n\x01\x7f"), "\"a\\\"b\\n\\u0001\x7f\"");
        assert_eq!(
            decoded(plain, "x\u{1f}é\t\"\\".as_bytes()),
            "x\u{1f}é\t\"\\"
        );
    }

    #[test]
    fn json_raw_passes_valid_escapes() {
        let s = br#"a\"b\\c\/d\b\f\n\r\t\u00e9\ud83d\ude00"#;
        assert_eq!(
            run(json_raw, s),
            format!("\"{}\"", std::str::from_utf8(s).unwrap())
        );
        assert_eq!(decoded(json_raw, s), "a\"b\\c/d\u{8}\u{c}\n\r\té😀");
    }

    #[test]
    fn json_raw_repairs() {
        assert_eq!(decoded(json_raw, br#"AD\alice"#), r#"AD\alice"#);
        assert_eq!(decoded(json_raw, br#"trail\"#), r#"trail\"#);
        assert_eq!(decoded(json_raw, br#"\u12"#), r#"\u12"#);
        assert_eq!(decoded(json_raw, br#"\uzzzz"#), r#"\uzzzz"#);
        assert_eq!(decoded(json_raw, br#"\ud800x"#), "\u{fffd}x");
        assert_eq!(decoded(json_raw, br#"\udc00"#), "\u{fffd}");
        assert_eq!(decoded(json_raw, br#"\ud800\u0041"#), "\u{fffd}A");
        assert_eq!(decoded(json_raw, b"tab\there\x00"), "tab\there\u{0}");
        assert_eq!(decoded(json_raw, b"q\"q"), "q\"q");
        assert_eq!(decoded(json_raw, "\\é".as_bytes()), "\\é");
    }

    #[test]
    fn csv_quoted_rules() {
        assert_eq!(decoded(csv_quoted, br#"say ""hi"""#), r#"say "hi""#);
        assert_eq!(decoded(csv_quoted, br#"AD\alice"#), r#"AD\alice"#);
        assert_eq!(decoded(csv_quoted, br#"a\""b"#), r#"a\"b"#);
        assert_eq!(decoded(csv_quoted, br#"a\"b"#), r#"a"b"#);
        assert_eq!(decoded(csv_quoted, br#"C:\"#), r#"C:\"#);
    }
}
