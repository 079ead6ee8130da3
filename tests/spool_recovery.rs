//! Opening damaged spool directories: torn tails, corrupt records in the middle,
//! garbage, leftovers of interrupted operations.
//!
//! The tests edit segment files by hand, so they know the record header: magic
//! `QSR1`, payload length u32 LE, crc32c u32 LE, then the payload.

use std::path::{Path, PathBuf};
use std::time::Duration;

use qbroker::spool::{Fsync, NewBatch, Options, Record, Spool};

const T: Duration = Duration::from_secs(10);

fn opts(segment_bytes: u64) -> Options {
    Options {
        max_bytes: 1 << 30,
        segment_bytes,
        fsync: Fsync::Never,
    }
}

fn body(i: u64) -> Vec<u8> {
    format!(
        "{{\"n\":{i},\"pad\":\"{}\"}}",
        "y".repeat(20 + (i % 13) as usize)
    )
    .into_bytes()
}

/// A spool in `dir` holding records 1..=n (body(id)), none acknowledged.
fn build(dir: &Path, n: u64, segment_bytes: u64) {
    let s = Spool::open(dir, opts(segment_bytes)).unwrap();
    for id in 1..=n {
        let b = body(id);
        let got = s
            .append(
                &NewBatch {
                    batch_id: &format!("b{id}"),
                    cluster: "c",
                    events: 1,
                    received: &[(id, 1)],
                    body: &b,
                },
                T,
            )
            .unwrap();
        assert_eq!(got, id);
    }
    s.sync().unwrap();
}

/// Opens, closes, and returns every record handed out.
fn drain(s: &Spool) -> Vec<Record> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    s.close();
    let mut out = Vec::new();
    while let Some(r) = rt.block_on(async {
        tokio::time::timeout(T, s.next())
            .await
            .expect("next timed out")
    }) {
        out.push(r);
    }
    out
}

fn ids(rs: &[Record]) -> Vec<u64> {
    rs.iter().map(|r| r.id).collect()
}

fn assert_intact(rs: &[Record]) {
    for r in rs {
        assert_eq!(r.batch_id, format!("b{}", r.id));
        assert_eq!(&r.body[..], &body(r.id)[..], "record {}", r.id);
        assert!(r.replayed);
    }
}

fn files(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_str().unwrap().ends_with(suffix))
        .collect();
    v.sort();
    v
}

/// (offset, total length) of each record of a segment file, by walking the headers.
fn layout(path: &Path) -> Vec<(usize, usize)> {
    let b = std::fs::read(path).unwrap();
    let mut out = Vec::new();
    let mut off = 0;
    while off + 12 <= b.len() {
        assert_eq!(&b[off..off + 4], b"QSR1");
        let len = u32::from_le_bytes(b[off + 4..off + 8].try_into().unwrap()) as usize;
        out.push((off, 12 + len));
        off += 12 + len;
    }
    assert_eq!(off, b.len());
    out
}

/// The record ids in a segment file.
fn ids_in(path: &Path) -> Vec<u64> {
    let b = std::fs::read(path).unwrap();
    layout(path)
        .into_iter()
        .map(|(off, _)| u64::from_le_bytes(b[off + 12..off + 20].try_into().unwrap()))
        .collect()
}

fn edit(path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
    let mut b = std::fs::read(path).unwrap();
    f(&mut b);
    std::fs::write(path, b).unwrap();
}

fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn torn_tail_is_truncated_without_a_side_file() {
    for cut in [1usize, 5, 11, 12, 20] {
        let dir = tempfile::tempdir().unwrap();
        build(dir.path(), 5, 1 << 20);
        let seg = &files(dir.path(), ".seg")[0];
        let lay = layout(seg);
        let (last_off, last_len) = lay[4];
        edit(seg, |b| {
            b.truncate(last_off + last_len - cut.min(last_len - 1))
        });
        let s = Spool::open(dir.path(), opts(1 << 20)).unwrap();
        assert_eq!(s.stats().corrupt_records, 0);
        assert_eq!(std::fs::metadata(seg).unwrap().len() as usize, last_off);
        assert!(files(dir.path(), ".corrupt").is_empty());
        let rs = drain(&s);
        assert_eq!(ids(&rs), vec![1, 2, 3, 4], "cut {cut}");
        assert_intact(&rs);
    }
}

#[test]
fn torn_tail_then_appends_continue() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), 3, 1 << 20);
    let seg = &files(dir.path(), ".seg")[0];
    edit(seg, |b| {
        let n = b.len();
        b.truncate(n - 3)
    });
    let s = Spool::open(dir.path(), opts(1 << 20)).unwrap();
    let b = body(3);
    let id = s
        .append(
            &NewBatch {
                batch_id: "b3",
                cluster: "c",
                events: 1,
                received: &[(3, 1)],
                body: &b,
            },
            T,
        )
        .unwrap();
    assert_eq!(id, 3, "the torn record's id was never acknowledged");
    let rs = drain(&s);
    assert_eq!(ids(&rs), vec![1, 2, 3]);
    assert_eq!(&rs[2].body[..], &b[..]);
}

#[test]
fn bit_flip_in_the_middle_is_set_aside_and_the_rest_delivered() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), 5, 1 << 20);
    let seg = files(dir.path(), ".seg")[0].clone();
    let lay = layout(&seg);
    let original = std::fs::read(&seg).unwrap();
    let (off3, len3) = lay[2];
    edit(&seg, |b| b[off3 + len3 - 3] ^= 0x10);
    let damaged = std::fs::read(&seg).unwrap();

    let s = Spool::open(dir.path(), opts(1 << 20)).unwrap();
    assert_eq!(s.stats().corrupt_records, 1);
    assert_eq!(
        s.stats().unacked_records,
        4,
        "the lost id is not waited for"
    );
    let side = files(dir.path(), ".corrupt");
    assert_eq!(side.len(), 1);
    assert_eq!(side[0], PathBuf::from(format!("{}.corrupt", seg.display())));
    assert_eq!(std::fs::read(&side[0]).unwrap(), damaged[off3..off3 + len3]);
    // The segment now holds only the good records.
    let mut repaired = original[..off3].to_vec();
    repaired.extend_from_slice(&original[off3 + len3..]);
    assert_eq!(std::fs::read(&seg).unwrap(), repaired);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut rs = Vec::new();
    for _ in 0..4 {
        rs.push(rt.block_on(s.next()).unwrap());
    }
    assert_eq!(ids(&rs), vec![1, 2, 4, 5]);
    assert_intact(&rs);
    // The lost id does not hold the watermark back.
    for r in &rs {
        s.ack(r.id);
    }
    assert_eq!(s.stats().watermark, 6);
    assert_eq!(s.stats().unacked_records, 0);
    drop(s);

    // Nothing is found twice.
    let s = Spool::open(dir.path(), opts(1 << 20)).unwrap();
    assert_eq!(s.stats().corrupt_records, 0);
    assert!(drain(&s).is_empty());
    assert_eq!(std::fs::read(&side[0]).unwrap().len(), len3);
}

#[test]
fn damaged_headers_resynchronise() {
    // (what to damage in record 2's header, expected corrupt count)
    type Damage = fn(&mut [u8], usize);
    let cases: [(&str, Damage); 5] = [
        ("magic", |b, o| b[o] = b'X'),
        ("crc", |b, o| b[o + 9] ^= 1),
        ("length a little longer", |b, o| {
            let l = u32::from_le_bytes(b[o + 4..o + 8].try_into().unwrap());
            b[o + 4..o + 8].copy_from_slice(&(l + 5).to_le_bytes());
        }),
        ("length shorter", |b, o| {
            let l = u32::from_le_bytes(b[o + 4..o + 8].try_into().unwrap());
            b[o + 4..o + 8].copy_from_slice(&(l - 9).to_le_bytes());
        }),
        ("absurd length", |b, o| {
            b[o + 4..o + 8].copy_from_slice(&u32::MAX.to_le_bytes())
        }),
    ];
    for (what, damage) in cases {
        let dir = tempfile::tempdir().unwrap();
        build(dir.path(), 5, 1 << 20);
        let seg = &files(dir.path(), ".seg")[0];
        let (off2, _) = layout(seg)[1];
        edit(seg, |b| damage(b, off2));
        let s = Spool::open(dir.path(), opts(1 << 20)).unwrap();
        assert_eq!(s.stats().corrupt_records, 1, "{what}");
        let rs = drain(&s);
        assert_eq!(ids(&rs), vec![1, 3, 4, 5], "{what}");
        assert_intact(&rs);
    }
}

#[test]
fn garbage_segment_is_set_aside_whole() {
    let dir = tempfile::tempdir().unwrap();
    let seg = dir.path().join("000000000000000001.seg");
    let junk = noise(70_000, 7);
    std::fs::write(&seg, &junk).unwrap();
    let s = Spool::open(dir.path(), opts(1 << 20)).unwrap();
    assert_eq!(s.stats().corrupt_records, 1);
    assert_eq!(
        std::fs::read(dir.path().join("000000000000000001.seg.corrupt")).unwrap(),
        junk
    );
    let b = body(1);
    let id = s
        .append(
            &NewBatch {
                batch_id: "b1",
                cluster: "c",
                events: 1,
                received: &[(1, 1)],
                body: &b,
            },
            T,
        )
        .unwrap();
    assert_eq!(id, 1);
    let rs = drain(&s);
    assert_eq!(ids(&rs), vec![1]);
    assert!(!rs[0].replayed);
}

#[test]
fn garbage_segment_between_good_ones() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), 12, 200);
    let segs = files(dir.path(), ".seg");
    assert!(segs.len() >= 4, "{segs:?}");
    let victim = &segs[1];
    let lost = layout(victim).len();
    let len = std::fs::metadata(victim).unwrap().len() as usize;
    std::fs::write(victim, noise(len, 3)).unwrap();
    let s = Spool::open(dir.path(), opts(200)).unwrap();
    assert_eq!(s.stats().corrupt_records, 1);
    assert!(!victim.exists(), "its bytes are in the side file");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut rs = Vec::new();
    for _ in 0..12 - lost {
        rs.push(rt.block_on(s.next()).unwrap());
    }
    assert_intact(&rs);
    let got = ids(&rs);
    assert!(got.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(got.len(), 12 - lost);
    for r in &rs {
        s.ack(r.id);
    }
    assert_eq!(s.stats().watermark, 13);
    s.sync().unwrap();
    assert_eq!(s.stats().segments, 1);
}

#[test]
fn garbage_after_the_last_record_is_set_aside() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), 3, 1 << 20);
    let seg = files(dir.path(), ".seg")[0].clone();
    let good_len = std::fs::metadata(&seg).unwrap().len();
    let mut junk = noise(100, 9);
    junk[0] = 0; // not a magic
    edit(&seg, |b| b.extend_from_slice(&junk));
    let s = Spool::open(dir.path(), opts(1 << 20)).unwrap();
    assert_eq!(s.stats().corrupt_records, 1);
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), good_len);
    assert_eq!(
        std::fs::read(format!("{}.corrupt", seg.display())).unwrap(),
        junk
    );
    assert_eq!(ids(&drain(&s)), vec![1, 2, 3]);
}

#[test]
fn a_repeated_record_is_set_aside() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), 3, 1 << 20);
    let seg = files(dir.path(), ".seg")[0].clone();
    let (off, len) = layout(&seg)[0];
    edit(&seg, |b| {
        let first = b[off..off + len].to_vec();
        b.extend_from_slice(&first);
    });
    let s = Spool::open(dir.path(), opts(1 << 20)).unwrap();
    assert_eq!(s.stats().corrupt_records, 1);
    assert_eq!(ids(&drain(&s)), vec![1, 2, 3]);
}

#[test]
fn unreadable_watermark_replays_everything() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), 4, 1 << 20);
    {
        let s = Spool::open(dir.path(), opts(1 << 20)).unwrap();
        for _ in 0..2 {
            let r = rt.block_on(s.next()).unwrap();
            s.ack(r.id);
        }
        s.sync().unwrap();
    }
    assert_eq!(
        std::fs::read(dir.path().join("watermark")).unwrap().len(),
        16
    );
    std::fs::write(dir.path().join("watermark"), b"nonsense").unwrap();
    let s = Spool::open(dir.path(), opts(1 << 20)).unwrap();
    assert!(dir.path().join("watermark.corrupt").exists());
    let rs = drain(&s);
    assert_eq!(
        ids(&rs),
        vec![1, 2, 3, 4],
        "at-least-once: resend when unsure"
    );
    assert_intact(&rs);
}

#[test]
fn acknowledged_segments_left_by_a_crash_are_deleted_at_open() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), 10, 200);
    let saved: Vec<(PathBuf, Vec<u8>)> = files(dir.path(), ".seg")
        .into_iter()
        .map(|p| {
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect();
    {
        let s = Spool::open(dir.path(), opts(200)).unwrap();
        for _ in 0..7 {
            let r = rt.block_on(s.next()).unwrap();
            s.ack(r.id);
        }
        s.sync().unwrap();
    }
    // As if the crash came after the watermark was persisted, before the deletes.
    for (p, b) in &saved {
        std::fs::write(p, b).unwrap();
    }
    let s = Spool::open(dir.path(), opts(200)).unwrap();
    let rs = drain(&s);
    assert_eq!(
        ids(&rs),
        vec![8, 9, 10],
        "never below the persisted watermark"
    );
    for p in files(dir.path(), ".seg") {
        let ids = ids_in(&p);
        assert!(
            ids.is_empty() || ids.iter().any(|&id| id >= 8),
            "{} holds only acknowledged records {ids:?}",
            p.display()
        );
    }
}

#[test]
fn leftovers_and_strangers_do_not_stop_open() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), 2, 1 << 20);
    std::fs::write(dir.path().join("watermark.tmp"), b"half").unwrap();
    std::fs::write(dir.path().join("000000000000000001.seg.tmp"), b"half").unwrap();
    std::fs::write(dir.path().join("README"), b"hello").unwrap();
    std::fs::create_dir(dir.path().join("000000000000000100.seg")).unwrap();
    std::fs::write(dir.path().join("000000000000000050.seg"), b"").unwrap();
    let s = Spool::open(dir.path(), opts(1 << 20)).unwrap();
    assert!(!dir.path().join("watermark.tmp").exists());
    assert!(!dir.path().join("000000000000000001.seg.tmp").exists());
    assert!(dir.path().join("README").exists());
    assert!(
        !dir.path().join("000000000000000050.seg").exists(),
        "empty segment removed"
    );
    assert_eq!(s.stats().corrupt_records, 0);
    assert_eq!(ids(&drain(&s)), vec![1, 2]);
}

#[test]
fn corruption_found_while_reading_is_skipped() {
    // A record damaged on disk after open (not in the cache) is set aside at read.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), 4, 1 << 20);
    let s = Spool::open(dir.path(), opts(1 << 20)).unwrap();
    let seg = files(dir.path(), ".seg")[0].clone();
    let (off2, len2) = layout(&seg)[1];
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
        f.write_all_at(&[0xAA; 4], (off2 + len2 - 4) as u64)
            .unwrap();
    }
    let mut rs = Vec::new();
    for _ in 0..3 {
        rs.push(rt.block_on(s.next()).unwrap());
    }
    assert_eq!(ids(&rs), vec![1, 3, 4]);
    assert_eq!(s.stats().corrupt_records, 1);
    assert!(PathBuf::from(format!("{}.corrupt", seg.display())).exists());
    for r in &rs {
        s.ack(r.id);
    }
    assert_eq!(s.stats().watermark, 5, "the skipped id is acknowledged");
}
