//! Recovery never fails, never panics and never delivers a damaged record, whatever
//! happened to the files: random truncations, bit flips, overwritten runs, inserted
//! bytes and removed files of a valid spool directory.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use proptest::prelude::*;
use qbroker::spool::{Fsync, NewBatch, Options, Record, Spool};

const T: Duration = Duration::from_secs(10);
const RECORDS: u64 = 30;
/// Records 1..=ACKED are acknowledged in the template.
const ACKED: u64 = 4;

fn opts() -> Options {
    Options {
        max_bytes: 1 << 30,
        segment_bytes: 700,
        fsync: Fsync::Never,
    }
}

fn body(id: u64) -> Vec<u8> {
    format!(
        "{{\"id\":{id},\"pad\":\"{}\"}}",
        "z".repeat((id * 7 % 40) as usize)
    )
    .into_bytes()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The files of a valid spool: (name, content), sorted by name.
fn template() -> &'static [(String, Vec<u8>)] {
    static T: OnceLock<Vec<(String, Vec<u8>)>> = OnceLock::new();
    T.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let rt = rt();
        {
            let s = Spool::open(dir.path(), opts()).unwrap();
            for id in 1..=RECORDS {
                let b = body(id);
                let got = s
                    .append(
                        &NewBatch {
                            batch_id: &format!("batch-{id}"),
                            cluster: "qumulo",
                            events: id as u32,
                            received: &[(id * 1000, 1), (id * 1000 + 1, 2)],
                            body: &b,
                        },
                        Duration::from_secs(1),
                    )
                    .unwrap();
                assert_eq!(got, id);
            }
            for _ in 1..=ACKED {
                let r = rt.block_on(s.next()).unwrap();
                s.ack(r.id);
            }
            s.sync().unwrap();
        }
        let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().into_string().unwrap(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        files.sort();
        assert!(
            files.len() >= 5,
            "several segments and a watermark: {}",
            files.len()
        );
        files
    })
}

#[derive(Debug, Clone)]
enum Damage {
    Truncate { at: usize },
    Flip { at: usize, bit: u8 },
    Overwrite { at: usize, len: usize, byte: u8 },
    Insert { at: usize, bytes: Vec<u8> },
    Remove,
}

fn damage() -> impl Strategy<Value = (usize, Damage)> {
    let d = prop_oneof![
        3 => any::<usize>().prop_map(|at| Damage::Truncate { at }),
        5 => (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Damage::Flip { at, bit }),
        2 => (any::<usize>(), 1usize..24, any::<u8>()).prop_map(|(at, len, byte)| Damage::Overwrite { at, len, byte }),
        2 => (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..40)).prop_map(|(at, bytes)| Damage::Insert { at, bytes }),
        1 => Just(Damage::Remove),
    ];
    (any::<usize>(), d)
}

fn apply(dir: &Path, files: &mut [(String, Vec<u8>, bool)], (which, d): &(usize, Damage)) {
    let (name, content, alive) = &mut files[which % files.len()];
    if !*alive {
        return;
    }
    let n = content.len().max(1);
    match d {
        Damage::Truncate { at } => content.truncate(at % n),
        Damage::Flip { at, bit } => {
            if !content.is_empty() {
                content[at % n] ^= 1 << bit;
            }
        }
        Damage::Overwrite { at, len, byte } => {
            let from = at % n;
            let to = (from + len).min(content.len());
            for b in content.get_mut(from..to).unwrap_or_default() {
                *b = *byte;
            }
        }
        Damage::Insert { at, bytes } => {
            let at = at % (content.len() + 1);
            content.splice(at..at, bytes.iter().copied());
        }
        Damage::Remove => {
            *alive = false;
            std::fs::remove_file(dir.join(&*name)).unwrap();
            return;
        }
    }
    std::fs::write(dir.join(&*name), &*content).unwrap();
}

fn drain(rt: &tokio::runtime::Runtime, s: &Spool) -> Vec<Record> {
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

fn check_delivery(rs: &[Record], watermark_intact: bool) {
    let mut last = 0;
    for r in rs {
        assert!(r.id > last, "ids increase: {} after {last}", r.id);
        last = r.id;
        assert!(
            (1..=RECORDS).contains(&r.id),
            "id {} was never written",
            r.id
        );
        if watermark_intact {
            assert!(
                r.id > ACKED,
                "record {} is below the persisted watermark",
                r.id
            );
        }
        assert!(r.replayed);
        assert_eq!(r.batch_id, format!("batch-{}", r.id));
        assert_eq!(r.cluster, "qumulo");
        assert_eq!(r.events, r.id as u32);
        assert_eq!(r.received, vec![(r.id * 1000, 1), (r.id * 1000 + 1, 2)]);
        assert_eq!(&r.body[..], &body(r.id)[..]);
    }
}

#[test]
fn undamaged_template_replays_every_unacked_record() {
    let dir = tempfile::tempdir().unwrap();
    for (name, content) in template() {
        std::fs::write(dir.path().join(name), content).unwrap();
    }
    let s = Spool::open(dir.path(), opts()).unwrap();
    let rs = drain(&rt(), &s);
    check_delivery(&rs, true);
    assert_eq!(rs.len() as u64, RECORDS - ACKED);
    assert_eq!(s.stats().corrupt_records, 0);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn recovery_survives_any_damage(damages in proptest::collection::vec(damage(), 1..6)) {
        let dir = tempfile::tempdir().unwrap();
        let mut files: Vec<(String, Vec<u8>, bool)> = template()
            .iter()
            .map(|(n, c)| (n.clone(), c.clone(), true))
            .collect();
        for (name, content, _) in &files {
            std::fs::write(dir.path().join(name), content).unwrap();
        }
        for d in &damages {
            apply(dir.path(), &mut files, d);
        }
        let watermark_intact = files
            .iter()
            .zip(template())
            .any(|((n, c, alive), (_, orig))| n == "watermark" && *alive && c == orig);
        let rt = rt();

        let s = Spool::open(dir.path(), opts()).expect("open never fails on content");
        let first = drain(&rt, &s);
        check_delivery(&first, watermark_intact);
        drop(s);

        // Recovery repaired the directory: a second open finds nothing wrong and
        // delivers the same records.
        let s = Spool::open(dir.path(), opts()).expect("second open");
        prop_assert_eq!(s.stats().corrupt_records, 0);
        let second = drain(&rt, &s);
        let ids = |rs: &[Record]| rs.iter().map(|r| r.id).collect::<Vec<_>>();
        prop_assert_eq!(ids(&first), ids(&second));
    }
}
