//! fuzz: entry points for the fuzz targets under `fuzz/`, one per step of
//! [`convert`](super::convert), each with the invariants it must keep on any
//! input. A broken invariant panics, which is what the fuzzer reports.
//!
//! Built only with `--cfg fuzzing` (cargo fuzz sets it) and in tests, so the
//! private steps stay private to everything else.

use serde_json::Value;

use super::record::{Record, Val};
use super::{csv, event, filter, json, payload, syslog, Filter, FrameCtx, Outcome};

/// A receive time well inside the range every timestamp path handles.
const RECEIVED_MS: i64 = 1_769_523_200_000;

/// Every operation the mapper knows.
const MAPPABLE: [&str; 14] = [
    "fs_create_file",
    "fs_create",
    "fs_create_hard_link",
    "fs_create_symlink",
    "fs_create_stream",
    "fs_create_directory",
    "fs_create_directories",
    "fs_read_data",
    "fs_write_data",
    "fs_copy_chunk",
    "fs_delete",
    "fs_tree_delete",
    "fs_rename",
    "fs_write_metadata",
];

fn subslice(outer: &[u8], inner: &[u8]) -> bool {
    let (o, i) = (outer.as_ptr() as usize, inner.as_ptr() as usize);
    inner.is_empty() || (i >= o && i + inner.len() <= o + outer.len())
}

/// The syslog header: it splits borrowed pieces of the frame, and its timestamp
/// resolves (or fails) without panicking; the HOSTNAME helpers agree with it.
pub fn syslog_header(frame: &[u8]) {
    if let Ok(h) = syslog::parse_header(frame) {
        assert!(subslice(frame, h.host) && subslice(frame, h.app) && subslice(frame, h.msg));
        assert!(!h.host.is_empty(), "a header has a HOSTNAME");
        if let Ok(ms) = h.ts.resolve(RECEIVED_MS) {
            let mut out = Vec::new();
            super::time::write_rfc3339_ms(&mut out, ms);
            assert!(out.len() >= 24, "an RFC 3339 time with milliseconds");
        }
    }
    if let Some(host) = super::frame_hostname(frame) {
        let cluster = super::cluster_of_hostname(host);
        assert!(!cluster.is_empty() && host.starts_with(cluster));
    }
}

/// Every value of a record, written as the event writer writes it, must be a
/// JSON string or `null` when the payload was valid UTF-8.
fn check_record(msg: &[u8], rec: &Record<'_>) {
    let utf8 = std::str::from_utf8(msg).is_ok();
    let mut vals = vec![
        rec.user_sid,
        rec.user_auth_id,
        rec.user_name,
        rec.user_ip,
        rec.protocol,
        rec.operation,
        rec.status,
        rec.path,
        rec.file_id,
        rec.target,
    ];
    for o in [rec.owner_before, rec.owner_after].into_iter().flatten() {
        vals.push(o.sid);
        vals.push(o.auth_id);
    }
    for v in vals {
        if let Some(t) = v.text() {
            assert!(subslice(msg, t), "values borrow from the payload");
        }
        let mut out = Vec::new();
        v.write(&mut out);
        if utf8 {
            match serde_json::from_slice::<Value>(&out) {
                Ok(Value::String(_)) => {}
                Ok(Value::Null) => assert!(matches!(v, Val::Absent | Val::Null)),
                other => panic!(
                    "{v:?} written as {:?}: {other:?}",
                    String::from_utf8_lossy(&out)
                ),
            }
        }
    }
}

/// The JSON payload parser.
pub fn json_payload(msg: &[u8]) {
    if let Ok(rec) = json::parse(msg) {
        check_record(msg, &rec);
    }
    if let Ok(rec) = payload::parse_payload(msg, |_, _| false) {
        check_record(msg, &rec);
    }
}

/// The CSV payload parser.
pub fn csv_payload(msg: &[u8]) {
    if let Ok(rec) = csv::parse(msg) {
        check_record(msg, &rec);
    }
}

/// The mapper and the event writer, through [`convert`](super::convert): an
/// event is one JSON object of the schema; anything else leaves the output
/// as it was. Run with the reference filter and with one that keeps every
/// mappable operation and status.
pub fn convert(frame: &[u8]) {
    thread_local! {
        static FILTERS: [Filter; 2] = [
            Filter::reference_default(),
            Filter::new(
                &MAPPABLE.map(str::to_string),
                &[],
                &[],
                true,
                &[],
            )
            .expect("mappable operations"),
        ];
    }
    FILTERS.with(|filters| {
        for f in filters {
            let ctx = FrameCtx {
                seq: u64::MAX - 1,
                received_unix_ms: RECEIVED_MS,
                conn: None,
            };
            let mut out = b"prev,".to_vec();
            match super::convert(frame, &ctx, f, &mut out) {
                Ok(Outcome::Event(op)) => {
                    assert_eq!(&out[..5], b"prev,");
                    let v: Value = serde_json::from_slice(&out[5..]).unwrap_or_else(|e| {
                        panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out[5..]))
                    });
                    assert_eq!(v["operation"], op.as_str());
                    assert_eq!(v["seq"], u64::MAX - 1);
                    assert!(v["time"].is_string() && v["path"].is_string());
                    assert!(matches!(
                        v["object_type"].as_str(),
                        Some("file" | "directory")
                    ));
                }
                Ok(Outcome::Filtered(_)) | Err(_) => assert_eq!(out, b"prev,"),
            }
        }
    });
    // The mapper on its own, on whatever record the payload gives.
    if let Ok(h) = syslog::parse_header(frame) {
        if let Ok(rec) = payload::parse_payload(h.msg, |_, _| false) {
            for q in MAPPABLE
                .iter()
                .filter_map(|n| filter::QOp::from_name(n.as_bytes()))
            {
                let _ = event::map(filter::Kind::Mapped(q), &rec);
                let _ = event::map(filter::Kind::AccessDenied(Some(q)), &rec);
            }
            let _ = event::map(filter::Kind::AccessDenied(None), &rec);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every committed seed of the parse targets, through its entry point.
    #[test]
    fn the_entry_points_hold_on_the_seed_corpus() {
        let seeds = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
        type Entry = fn(&[u8]);
        let targets: [(&str, Entry); 4] = [
            ("syslog_header", syslog_header),
            ("json_payload", json_payload),
            ("csv_payload", csv_payload),
            ("convert", convert),
        ];
        let mut n = 0;
        for (dir, entry) in targets {
            for file in std::fs::read_dir(seeds.join(dir)).unwrap() {
                entry(&std::fs::read(file.unwrap().path()).unwrap());
                n += 1;
            }
        }
        assert!(n >= 30, "{n} seeds");
    }

    #[test]
    fn the_entry_points_hold_on_awkward_frames() {
        let frames: &[&[u8]] = &[
            br#"<14>1 2026-01-27T14:12:23.9558Z cs-fil-q-k144-1 qumulo - - - 10.220.151.129,"admin",smb2,fs_create_file,ok,140624751830626345080086044861,"/data/file.txt","""#,
            br#"<14>1 2026-01-27T14:12:23.9558Z q-1 qumulo - - - {"user_id":{"sid":"S-1-5-21-1","auth_id":"500","name":"AD\alice"},"user_ip":"10.0.0.1","protocol":"smb2","operation":"fs_write_metadata","status":"ok","details":{"file_id":"4","path":"/my_file","before":{"owner":{"sid":"S-1","auth_id":"500"}},"after":{"owner":{"sid":"S-2","auth_id":"501"}}}}"#,
            b"<14>Jan 27 14:12:23 q-2 qumulo[12]: 1.1.1.1,\"u\",nfs3,fs_rename,fs_access_denied_error,3,\"/a/\",\"/b/\"",
            b"\xff<14>1 - \xfe qumulo - - - {\"path\":\"\\ud800\"}",
        ];
        for f in frames {
            syslog_header(f);
            json_payload(f);
            csv_payload(f);
            convert(f);
            if let Ok(h) = syslog::parse_header(f) {
                json_payload(h.msg);
                csv_payload(h.msg);
            }
        }
    }
}
