//! Tests of the generator: identities, encodings, the mix and the streams.

use super::*;
use std::sync::Arc;

fn core(format: Format) -> Arc<GenCore> {
    Arc::new(
        GenCore::new(GenConfig {
            format,
            ..GenConfig::default()
        })
        .unwrap(),
    )
}

/// Splits a chunk into syslog messages (either framing).
fn frames(buf: &[u8], framing: Framing) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = buf;
    while !rest.is_empty() {
        match framing {
            Framing::Lf => {
                let i = rest.iter().position(|&b| b == b'\n').expect("terminated");
                out.push(&rest[..i]);
                rest = &rest[i + 1..];
            }
            Framing::Octet => {
                let sp = rest.iter().position(|&b| b == b' ').unwrap();
                let len: usize = std::str::from_utf8(&rest[..sp]).unwrap().parse().unwrap();
                out.push(&rest[sp + 1..sp + 1 + len]);
                rest = &rest[sp + 1 + len..];
            }
        }
    }
    out
}

/// (hostname, msg) of a syslog message, checking the header as Qumulo writes it.
fn split_header(m: &[u8]) -> (&str, &str) {
    let s = std::str::from_utf8(m).unwrap();
    assert!(s.starts_with("<14>1 "), "{s}");
    let ts = &s[TS_OFFSET..TS_OFFSET + TS_LEN];
    assert!(ts.ends_with('Z') && ts.as_bytes()[10] == b'T', "{ts}");
    let rest = &s[TS_OFFSET + TS_LEN + 1..];
    let (host, rest) = rest.split_once(' ').unwrap();
    let msg = rest.strip_prefix("qumulo - - - ").unwrap();
    (host, msg)
}

/// RFC 4180 fields, quotes doubled inside quoted fields.
fn csv_fields(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                out.last_mut().unwrap().push('"');
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(String::new()),
            (c, _) => out.last_mut().unwrap().push(c),
        }
    }
    out
}

#[test]
fn identity_round_trip_and_width() {
    for id in [
        Identity {
            tag: 0,
            cluster: 0,
            node: 0,
            filtered: false,
            seq: 0,
        },
        Identity {
            tag: 0xffff,
            cluster: 0xffff,
            node: 0xffff,
            filtered: true,
            seq: MAX_SEQ,
        },
        Identity {
            tag: 0x1234,
            cluster: 49,
            node: 4,
            filtered: false,
            seq: 123_456_789,
        },
    ] {
        let d = id.to_decimal();
        assert_eq!(d.len(), 32, "{d}");
        assert!(d.parse::<u128>().unwrap() > u64::MAX as u128);
        assert_eq!(d, id.encode().to_string());
        assert_eq!(Identity::parse(&d), Some(id));
    }
    assert_eq!(
        Identity::parse("140624751830626345080086044861"),
        None,
        "Qumulo's own id"
    );
    assert_eq!(Identity::parse("12x"), None);
    assert_eq!(Identity::parse(""), None);
}

#[test]
fn numbers_and_time() {
    for v in [
        0u128,
        9,
        10,
        99,
        100,
        u64::MAX as u128,
        u64::MAX as u128 + 1,
        u128::MAX,
    ] {
        let mut b = Vec::new();
        push_u128(&mut b, v);
        assert_eq!(String::from_utf8(b).unwrap(), v.to_string());
    }
    assert_eq!(
        &syslog_ts(1_769_523_143_955_812),
        b"2026-01-27T14:12:23.955812Z"
    );
    assert_eq!(&syslog_ts(0), b"1970-01-01T00:00:00.000000Z");
    for d in [-1000i64, 0, 59, 60, 365, 11_016, 20_480, 2_932_896] {
        let (y, m, dd) = civil_from_days(d);
        assert_eq!(days_from_civil(y, m, dd), d);
    }
    let mut b = Vec::new();
    push_ns_time(&mut b, 1_718_117_758_187_394_089);
    assert_eq!(
        String::from_utf8(b).unwrap(),
        "2024-06-11T14:55:58.187394089Z"
    );
}

#[test]
fn json_frames_are_valid_and_carry_identity() {
    let core = core(Format::Json);
    let mut g = NodeGen::new(core.clone(), 3, 2, Framing::Lf);
    let mut chunk = Chunk::default();
    g.fill(&mut chunk, 2000);
    assert_eq!(chunk.events, 2000);
    let (mut exp, mut filt) = (0, 0);
    for f in frames(&chunk.buf, Framing::Lf) {
        let (host, msg) = split_header(f);
        assert_eq!(host, "qlg-c003-2");
        let v: serde_json::Value =
            serde_json::from_str(msg).unwrap_or_else(|e| panic!("{e}: {msg}"));
        for k in [
            "user_id",
            "user_ip",
            "protocol",
            "operation",
            "status",
            "details",
        ] {
            assert!(v.get(k).is_some(), "{k} missing: {msg}");
        }
        let op = v["operation"].as_str().unwrap();
        let def = &OPS[op_index(op).unwrap()];
        if let Some(fid) = v["details"]["file_id"].as_str() {
            let id = Identity::parse(fid).expect("ours");
            assert_eq!((id.cluster, id.node, id.tag), (3, 2, core.tag()));
            let delivered = def.kind.kept() || v["status"] == DENIED;
            assert_eq!(delivered, !id.filtered, "{msg}");
            if id.filtered {
                filt += 1;
            } else {
                assert_eq!(id.seq, exp);
                exp += 1;
            }
            let path = v["details"]["path"].as_str().unwrap();
            assert!(path.starts_with('/') && !path.contains('\n'));
        } else {
            assert!(matches!(def.kind, Kind::Connect | Kind::Mgmt), "{msg}");
            assert_ne!(v["status"], DENIED);
            filt += 1;
        }
    }
    assert_eq!((exp, filt), (g.expected_count(), g.filtered_count()));
    assert_eq!(chunk.expected, exp);
}

#[test]
fn csv_frames_have_eight_fields() {
    let core = core(Format::Csv);
    let mut g = NodeGen::new(core.clone(), 0, 1, Framing::Octet);
    let mut chunk = Chunk::default();
    g.fill(&mut chunk, 2000);
    let mut quoted_names = 0;
    for f in frames(&chunk.buf, Framing::Octet) {
        let (_, msg) = split_header(f);
        let fields = csv_fields(msg);
        assert_eq!(fields.len(), 8, "{msg}");
        assert!(
            msg.split(',').nth(1).unwrap().starts_with('"'),
            "user is quoted: {msg}"
        );
        quoted_names += fields[6].contains('"') as u32;
        if let Some(id) = Identity::parse(&fields[5]) {
            let ev = if id.filtered {
                core.filtered_event(0, 1, id.seq)
            } else {
                core.expected_event(0, 1, id.seq)
            };
            let e = core.expected(&ev);
            assert_eq!(fields[6], e.path);
            assert_eq!(fields[3], ev.op().name);
            if let Some(t) = e.new_path {
                assert_eq!(fields[7], t);
            }
        }
    }
    assert!(quoted_names > 0, "some paths carry a double quote");
}

#[test]
fn stream_matches_random_access() {
    let core = core(Format::Json);
    let mut g = NodeGen::new(core.clone(), 1, 3, Framing::Lf);
    for _ in 0..5000 {
        let ev = g.next_event();
        let again = if ev.id.filtered {
            core.filtered_event(1, 3, ev.id.seq)
        } else {
            core.expected_event(1, 3, ev.id.seq)
        };
        assert_eq!(ev, again);
        assert_eq!(ev.delivered(), !ev.id.filtered);
    }
}

#[test]
fn mix_follows_weights() {
    let core = core(Format::Json);
    let mut g = NodeGen::new(core.clone(), 0, 1, Framing::Lf);
    let n = 200_000;
    let mut count = vec![0u32; OPS.len()];
    let (mut denied, mut v6, mut exp) = (0, 0, 0);
    let mut ops_denied = std::collections::HashSet::new();
    for _ in 0..n {
        let ev = g.next_event();
        count[ev.op as usize] += 1;
        denied += (ev.status == DENIED) as u32;
        v6 += ev.ipv6 as u32;
        exp += !ev.id.filtered as u32;
        if ev.status == DENIED {
            ops_denied.insert(ev.op().name);
        }
    }
    let total_w: u32 = OPS.iter().map(|o| o.weight).sum();
    for (i, op) in OPS.iter().enumerate() {
        let want = n as f64 * op.weight as f64 / total_w as f64;
        assert!(
            (count[i] as f64 - want).abs() < 5.0 * want.sqrt() + 5.0,
            "{}: {} vs {want}",
            op.name,
            count[i]
        );
    }
    let fs_share = OPS
        .iter()
        .filter(|o| o.kind.deniable())
        .map(|o| o.weight)
        .sum::<u32>() as f64
        / total_w as f64;
    let want_denied = n as f64 * fs_share * 0.02;
    assert!(
        (denied as f64 - want_denied).abs() < 5.0 * want_denied.sqrt(),
        "{denied} vs {want_denied}"
    );
    assert!((v6 as f64 / n as f64 - 0.15).abs() < 0.01);
    assert!((exp as f64 / n as f64 - core.expected_share(0, 1)).abs() < 0.01);
    assert!(ops_denied.contains("fs_read_metadata") && ops_denied.contains("fs_list_directory"));
}

#[test]
fn expected_varonis_operations() {
    for format in [Format::Json, Format::Csv] {
        let core = core(format);
        let mut seen = std::collections::HashMap::<String, u32>::new();
        for seq in 0..20_000 {
            let ev = core.expected_event(0, 1, seq);
            let e = core.expected(&ev);
            *seen.entry(e.operation.clone()).or_default() += 1;
            let dir = e.object_type == "directory";
            match e.operation.as_str() {
                "access_denied" => assert_eq!(e.status, DENIED),
                "file.rename" | "directory.rename" => {
                    let t = e.new_path.as_deref().unwrap();
                    assert_eq!(dir, e.path.ends_with('/') || t.ends_with('/'));
                }
                "directory.create" => assert!(e.path.ends_with('/')),
                op if op.ends_with("owner_change") => {
                    let (b, a) = e.owner.as_ref().unwrap();
                    assert_ne!(b, a);
                    assert_eq!(format, Format::Json);
                }
                op => {
                    assert!(e.new_path.is_none() && e.owner.is_none(), "{op}");
                    assert_eq!(dir, e.path.ends_with('/'), "{op} {}", e.path);
                }
            }
            assert_eq!(e.success, e.status == "ok");
            assert_eq!(e.qumulo_operation, ev.op().name);
            if format == Format::Csv {
                let u = &e.user;
                assert!(
                    u.auth_id.is_none() && (u.sid.is_some() != u.name.is_some()),
                    "{u:?}"
                );
            }
        }
        let want: &[&str] = match format {
            Format::Json => &[
                "file.owner_change",
                "directory.owner_change",
                "file.permissions_change",
            ],
            Format::Csv => &["file.permissions_change", "directory.permissions_change"],
        };
        for op in want.iter().chain(&[
            "file.create",
            "directory.create",
            "file.read",
            "file.write",
            "file.delete",
            "directory.delete",
            "file.rename",
            "directory.rename",
            "access_denied",
        ]) {
            assert!(seen.contains_key(*op), "{format:?}: no {op} in {seen:?}");
        }
        if format == Format::Csv {
            assert!(!seen.keys().any(|k| k.contains("owner")));
        }
    }
}

#[test]
fn realistic_paths_and_users() {
    let core = core(Format::Json);
    let (mut non_ascii, mut deep, mut backslash) = (0, 0, 0);
    for seq in 0..2000 {
        let e = core.expected(&core.expected_event(0, 1, seq));
        non_ascii += !e.path.is_ascii() as u32;
        deep += (e.path.matches('/').count() >= 6) as u32;
        backslash += e.user.name.as_deref().is_some_and(|n| n.contains('\\')) as u32;
        assert!(e.path.len() < 1024);
    }
    assert!(
        non_ascii > 200 && deep > 200 && backslash > 200,
        "{non_ascii} {deep} {backslash}"
    );
}

#[test]
fn burst_profile_reads_writes_renames() {
    let cfg = GenConfig {
        burst: true,
        ..GenConfig::default()
    };
    let core = Arc::new(GenCore::new(cfg).unwrap());
    let mut g = NodeGen::new(core.clone(), 0, 1, Framing::Lf);
    let ops: Vec<&str> = (0..8).map(|_| g.next_event().op().name).collect();
    assert_eq!(
        ops,
        [
            "fs_open",
            "fs_read_data",
            "fs_write_data",
            "fs_rename",
            "fs_open",
            "fs_read_data",
            "fs_write_data",
            "fs_rename"
        ]
    );
    let e = core.expected(&core.expected_event(0, 1, 2));
    assert_eq!(e.operation, "file.rename");
    assert_eq!(e.new_path.unwrap(), format!("{}.locked", e.path));
    // every other node keeps the mix
    assert!(!core.is_burst(0, 2) && !core.is_burst(1, 1));
}

#[test]
fn octet_framing_and_time_patching() {
    let core = core(Format::Json);
    let mut g = NodeGen::new(core, 0, 1, Framing::Octet);
    let mut chunk = Chunk::default();
    g.fill(&mut chunk, 50);
    let ts = syslog_ts(1_800_000_000_123_456);
    chunk.patch_time(&ts);
    let fs = frames(&chunk.buf, Framing::Octet);
    assert_eq!(fs.len(), 50);
    for f in fs {
        assert_eq!(&f[TS_OFFSET..TS_OFFSET + TS_LEN], &ts);
    }
}

#[test]
fn config_tag_and_validation() {
    let a = GenCore::new(GenConfig::default()).unwrap();
    let b = GenCore::new(GenConfig {
        seed: 2,
        ..GenConfig::default()
    })
    .unwrap();
    let c = GenCore::new(GenConfig {
        format: Format::Csv,
        ..GenConfig::default()
    })
    .unwrap();
    assert!(a.tag() != b.tag() && a.tag() != c.tag());
    let mut m = Mix::default();
    assert!(m.set_op_weights("fs_open=0,nope=3").is_err());
    m.set_op_weights("fs_open=0, fs_read_data=7").unwrap();
    assert_eq!(m.weights[op_index("fs_read_data").unwrap()], 7);
    assert!(m.set_protocols("smb2=0").is_err());
    assert!(GenCore::new(GenConfig {
        cluster_prefix: "x-".into(),
        ..GenConfig::default()
    })
    .is_err());
    let zero = Mix {
        weights: vec![0; OPS.len()],
        ..Mix::default()
    };
    assert!(GenCore::new(GenConfig {
        mix: zero,
        ..GenConfig::default()
    })
    .is_err());
}
