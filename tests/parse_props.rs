//! Property tests for `qbroker::parse::convert`: no input panics or leaves a partial
//! event behind, and generated well-formed records come out as valid JSON carrying
//! exactly the strings that went in.

use proptest::prelude::*;
use qbroker::parse::{convert, Filter, FrameCtx, Outcome};
use serde_json::Value;

const CTX: FrameCtx<'static> = FrameCtx {
    seq: 7,
    received_unix_ms: 1_769_523_200_000,
    conn: None,
};

fn filter() -> Filter {
    let ops = [
        "fs_create_file",
        "fs_create_directory",
        "fs_read_data",
        "fs_write_data",
        "fs_write_metadata",
        "fs_rename",
        "fs_delete",
    ];
    Filter::new(&ops.map(String::from), &[], &[], true, &[]).unwrap()
}

/// Run convert; check the buffer contract; return the parsed event if there is one.
fn check(frame: &[u8], filter: &Filter) -> Option<Value> {
    let mut out = b"[prefix]".to_vec();
    let r = convert(frame, &CTX, filter, &mut out);
    match r {
        Ok(Outcome::Event(_)) => {
            let body = &out[8..];
            assert_eq!(&out[..8], b"[prefix]");
            let v: Value = serde_json::from_slice(body).unwrap_or_else(|e| {
                panic!("invalid JSON {e}: {}", String::from_utf8_lossy(body));
            });
            assert!(v.is_object());
            Some(v)
        }
        _ => {
            assert_eq!(out, b"[prefix]", "output left behind: {r:?}");
            None
        }
    }
}

/// Characters that stress escaping and splitting.
fn nasty_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => any::<char>(),
        2 => prop::sample::select(vec!['"', '\\', ',', '/', ' ', '{', '}', '[', ']', ':']),
        1 => prop::sample::select(vec!['\u{0}', '\u{1}', '\t', '\n', '\r', '\u{1f}', '\u{7f}']),
        1 => prop::sample::select(vec!['é', 'ß', '中', '😀', '\u{feff}', '\u{2028}', '\u{fffd}']),
        3 => prop::char::range('a', 'z'),
    ]
}

fn nasty_string(min: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(nasty_char(), min..40).prop_map(|v| v.into_iter().collect())
}

/// A JSON string literal for `s`, choosing per character among the valid spellings.
fn json_lit(s: &str, choices: &[u8]) -> String {
    let mut out = String::from("\"");
    for (i, c) in s.chars().enumerate() {
        let pick = choices.get(i % choices.len().max(1)).copied().unwrap_or(0) % 4;
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            '/' if pick == 1 => out.push_str("\\/"),
            c if pick == 2 => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04X}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A CSV quoted field for `s` (RFC 4180 doubling).
fn csv_lit(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

#[derive(Debug, Clone)]
struct Rec {
    op: &'static str,
    status: &'static str,
    protocol: &'static str,
    ip: &'static str,
    user: String,
    sid: String,
    auth_id: String,
    path: String,
    target: String,
    file_id: String,
}

fn rec() -> impl Strategy<Value = Rec> {
    (
        prop::sample::select(vec![
            "fs_create_file",
            "fs_read_data",
            "fs_write_data",
            "fs_delete",
            "fs_rename",
            "fs_write_metadata",
        ]),
        prop::sample::select(vec![
            "ok",
            "fs_access_denied_error",
            "fs_no_such_entry_error",
        ]),
        prop::sample::select(vec!["smb2", "nfs3", "api"]),
        prop::sample::select(vec!["10.1.2.3", "::1", "fe80::1%eth0", "2001:db8::7"]),
        nasty_string(0),
        nasty_string(0),
        "[0-9]{1,12}",
        nasty_string(1),
        nasty_string(1),
        "[0-9]{0,40}",
    )
        .prop_map(
            |(op, status, protocol, ip, user, sid, auth_id, path, target, file_id)| Rec {
                op,
                status,
                protocol,
                ip,
                user,
                sid,
                auth_id,
                path,
                target,
                file_id,
            },
        )
}

fn header() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "<14>1 2026-01-27T14:12:23.9558Z node-1 qumulo - - - ",
        "<14>Jan 27 14:12:23 node-1 qumulo[12]: ",
        "<14>2023-03-03T14:08:51.058379+00:00 node-1 qumulo: ",
        "2023-03-03T14:08:51.058379Z node-1 qumulo ",
    ])
}

fn opt(v: &Value) -> Option<&str> {
    v.as_str()
}

fn check_common(v: &Value, r: &Rec) {
    assert_eq!(v["seq"], 7);
    assert_eq!(v["node"], "node-1");
    assert_eq!(v["path"], r.path.as_str());
    assert_eq!(v["client_ip"], r.ip);
    assert_eq!(v["protocol"], r.protocol);
    assert_eq!(v["status"], r.status);
    assert_eq!(v["success"], r.status == "ok");
    assert_eq!(v["qumulo_operation"], r.op);
    assert_eq!(
        opt(&v["file_id"]),
        Some(r.file_id.as_str()).filter(|s| !s.is_empty())
    );
    let renamed = r.op == "fs_rename" && r.status != "fs_access_denied_error";
    if renamed {
        assert_eq!(v["new_path"], r.target.as_str());
    } else {
        assert!(v.get("new_path").is_none());
    }
    let t = v["time"].as_str().unwrap();
    assert_eq!(t.len(), 24);
    assert!(t.ends_with('Z'));
}

/// Arbitrary JSON values, nested.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        nasty_string(0).prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((nasty_string(0), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(frame in prop::collection::vec(any::<u8>(), 0..300)) {
        check(&frame, &filter());
        check(&frame, &Filter::reference_default());
    }

    #[test]
    fn arbitrary_payloads_never_panic(
        h in header(),
        body in prop::collection::vec(prop_oneof![
            any::<u8>(),
            prop::sample::select(b"{}[]\",:\\ nultrefas0123456789-.eE".to_vec()),
        ], 0..200),
    ) {
        let mut frame = h.as_bytes().to_vec();
        frame.extend_from_slice(&body);
        check(&frame, &filter());
        let mut json = h.as_bytes().to_vec();
        json.push(b'{');
        json.extend_from_slice(&body);
        check(&json, &filter());
    }

    #[test]
    fn mutated_frames_never_panic(
        base in prop::sample::select(vec![
            r#"<14>1 2026-01-27T14:12:23.9558Z n-1 qumulo - - - {"user_id":{"sid":"S-1","auth_id":"500","name":"AD\\a"},"user_ip":"1.2.3.4","protocol":"smb2","operation":"fs_write_metadata","status":"ok","details":{"path":"/a","file_id":"4","before":{"owner":{"sid":"S-1","auth_id":"500"}},"after":{"owner":{"sid":"S-2","auth_id":"501"}}}}"#,
            r#"<14>1 - n-1 qumulo - - - 10.220.151.129,"AD\alice",smb2,fs_rename,ok,1406,"/data/a, ""b"".txt","/data/c/""#,
        ]),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6),
    ) {
        let mut frame = base.as_bytes().to_vec();
        for (at, byte, kind) in edits {
            let i = at.index(frame.len() + 1);
            match kind {
                0 => frame.insert(i, byte),
                1 if i < frame.len() => { frame.remove(i); }
                _ if i < frame.len() => frame[i] = byte,
                _ => {}
            }
        }
        check(&frame, &filter());
    }

    #[test]
    fn json_records_round_trip(
        r in rec(),
        h in header(),
        choices in prop::collection::vec(any::<u8>(), 1..16),
        order in Just(vec![0usize, 1, 2, 3, 4, 5]).prop_shuffle(),
        numeric_ids in any::<bool>(),
        owner_changed in any::<bool>(),
    ) {
        let j = |s: &str| json_lit(s, &choices);
        let auth = if numeric_ids { r.auth_id.clone() } else { j(&r.auth_id) };
        let fid = if numeric_ids && !r.file_id.is_empty() { r.file_id.clone() } else { j(&r.file_id) };
        let after_auth = if owner_changed { format!("\"{}9\"", r.auth_id) } else { auth.clone() };
        let details = format!(
            r#"{{"size":1,"path":{},"file_id":{},"target":{},"before":{{"ctime":"x","owner":{{"sid":{},"auth_id":{}}}}},"after":{{"owner":{{"auth_id":{},"sid":{}}}}}}}"#,
            j(&r.path), fid, j(&r.target), j(&r.sid), auth, after_auth, j(&r.sid),
        );
        let parts = [
            format!(r#""user_id":{{"name":{},"sid":{},"auth_id":{}}}"#, j(&r.user), j(&r.sid), auth),
            format!(r#""user_ip":{}"#, j(r.ip)),
            format!(r#""protocol":{}"#, j(r.protocol)),
            format!(r#""operation":"{}""#, r.op),
            format!(r#""status":"{}""#, r.status),
            format!(r#""details":{details}"#),
        ];
        let body: Vec<&str> = order.iter().map(|&i| parts[i].as_str()).collect();
        let frame = format!("{h}{{{}}}", body.join(","));
        let v = check(frame.as_bytes(), &filter()).expect("kept");
        check_common(&v, &r);
        assert_eq!(v["user"]["name"], r.user.as_str());
        assert_eq!(v["user"]["sid"], r.sid.as_str());
        assert_eq!(v["user"]["auth_id"], r.auth_id.as_str());
        let is_meta = r.op == "fs_write_metadata" && r.status != "fs_access_denied_error";
        assert_eq!(v.get("owner").is_some(), is_meta && owner_changed);
        if is_meta && owner_changed {
            assert_eq!(v["owner"]["before"]["auth_id"], r.auth_id.as_str());
            assert_eq!(v["owner"]["after"]["auth_id"], format!("{}9", r.auth_id));
            assert_eq!(v["owner"]["after"]["sid"], r.sid.as_str());
        }
    }

    #[test]
    fn csv_records_round_trip(r in rec(), h in header()) {
        let frame = format!(
            "{h}{},{},{},{},{},{},{},{}",
            r.ip, csv_lit(&r.user), r.protocol, r.op, r.status, r.file_id, csv_lit(&r.path), csv_lit(&r.target),
        );
        let v = check(frame.as_bytes(), &filter()).expect("kept");
        check_common(&v, &r);
        let (sid, name) = if r.user.starts_with("S-1-") {
            (Some(r.user.as_str()), None)
        } else {
            (None, Some(r.user.as_str()))
        };
        assert_eq!(opt(&v["user"]["sid"]), sid);
        assert_eq!(opt(&v["user"]["name"]), name);
        assert_eq!(v["user"]["auth_id"], Value::Null);
        assert!(v.get("owner").is_none());
    }

    #[test]
    fn csv_backslash_quotes_are_read_as_quotes(a in "[a-z/ ]{1,10}", b in "[a-z/ ]{1,10}") {
        // `\"` followed by something other than `"` or `,` can only be an escaped quote.
        let frame = format!(r#"<14>1 - n qumulo - - - 1.1.1.1,"u",smb2,fs_read_data,ok,1,"{a}\"{b}","""#);
        let v = check(frame.as_bytes(), &filter()).expect("kept");
        assert_eq!(v["path"], format!("{a}\"{b}"));
    }
}

proptest! {
    // Nested values are slow to generate; fewer cases.
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn unknown_values_are_skipped(extra in any_json(), extra2 in any_json(), path in nasty_string(1)) {
        let payload = serde_json::json!({
            "zzz": extra,
            "operation": "fs_read_data",
            "status": "ok",
            "details": {"other": extra2, "path": path, "offset": 0},
            "user_id": {"name": "n", "groups": [1, 2]},
        });
        let frame = format!("<14>1 - n qumulo - - - {payload}");
        let v = check(frame.as_bytes(), &filter()).expect("kept");
        assert_eq!(v["path"], path.as_str());
        assert_eq!(v["user"]["name"], "n");
    }
}
