//! parse: `convert()` (header + payload + filter + map + serialise) over a realistic
//! mix of Qumulo frames, on one core. Throughput is reported per event and per byte.
//!
//! The mix: half JSON, half CSV; mostly kept operations, plus the high-volume ones the
//! reference filter drops (fs_read_metadata, fs_list_directory, fs_open); renames,
//! write_metadata (owner changes and not), access denied; paths of 40-120 characters,
//! some non-ASCII; AD users with backslashes.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use qbroker::parse::{convert, Filter, FrameCtx};

/// xorshift64*, so the mix is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> usize {
        (self.next() % n) as usize
    }
    fn pick<'a>(&mut self, v: &[&'a str]) -> &'a str {
        v[self.below(v.len() as u64)]
    }
}

const DIRS: &[&str] = &[
    "projects",
    "finance",
    "Q3-reports",
    "render",
    "home",
    "Ärzte",
    "données",
    "shared",
    "archive",
    "大阪",
    "media",
    "build-artifacts",
    "users",
];
const NAMES: &[&str] = &[
    "budget_2026.xlsx",
    "frame_000123.exr",
    "notes.txt",
    "résumé final.docx",
    "model.bin",
    "IMG_4512.JPG",
    "会议记录.pdf",
    "data.parquet",
    "index.html",
    "Übersicht.pptx",
];
const USERS: &[&str] = &["alice", "bob", "svc_render", "j.doe", "admin"];

fn path(r: &mut Rng, dir: bool) -> String {
    let want = 40 + r.below(81);
    let mut p = String::new();
    while p.chars().count() < want - 20 {
        p.push('/');
        p.push_str(r.pick(DIRS));
    }
    if dir {
        p.push('/');
    } else {
        p.push('/');
        p.push_str(r.pick(NAMES));
    }
    p
}

fn mix(n: usize) -> Vec<Vec<u8>> {
    let mut r = Rng(0x9E37_79B9_7F4A_7C15);
    // (operation, weight)
    let ops: &[(&str, u64)] = &[
        ("fs_read_metadata", 15),
        ("fs_list_directory", 8),
        ("fs_open", 10),
        ("fs_read_data", 15),
        ("fs_write_data", 15),
        ("fs_create_file", 8),
        ("fs_create_directory", 3),
        ("fs_delete", 6),
        ("fs_rename", 6),
        ("fs_write_metadata", 8),
        ("denied", 6),
    ];
    let total: u64 = ops.iter().map(|o| o.1).sum();
    (0..n)
        .map(|i| {
            let mut k = r.next() % total;
            let mut op = ops[0].0;
            for &(name, w) in ops {
                if k < w {
                    op = name;
                    break;
                }
                k -= w;
            }
            let (op, status) = match op {
                "denied" => (r.pick(&["fs_read_data", "fs_open", "fs_delete", "fs_write_data"]), "fs_access_denied_error"),
                op => (op, "ok"),
            };
            let dir = matches!(op, "fs_list_directory" | "fs_create_directory") || (op == "fs_delete" && r.below(4) == 0);
            let p = path(&mut r, dir);
            let target = if op == "fs_rename" { path(&mut r, dir) } else { String::new() };
            let user = r.pick(USERS);
            let ip = format!("10.{}.{}.{}", r.below(256), r.below(256), r.below(256));
            let proto = r.pick(&["smb2", "smb2", "nfs3", "api"]);
            let fid = format!("{}", 1_000_000 + r.next() % 1_000_000_000_000);
            let node = 1 + r.below(6);
            let ms = r.below(1000);
            let frame = if i % 2 == 0 {
                let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
                let mut details = format!(r#""path":"{}","file_id":"{fid}""#, esc(&p));
                match op {
                    "fs_rename" => details.push_str(&format!(r#","target":"{}""#, esc(&target))),
                    "fs_read_data" | "fs_write_data" => details.push_str(r#","offset":0,"size":261456,"file_size":261456"#),
                    "fs_write_metadata" => {
                        let after = if r.below(2) == 0 { "500" } else { "1104" };
                        details.push_str(&format!(
                            r#","after":{{"ctime":"2024-06-11T14:55:58.187394089Z","mtime":"2024-06-11T14:55:58.187394089Z","owner":{{"sid":"S-1-5-21-1004336348-1177238915-682003330-{after}","auth_id":"{after}"}}}},"before":{{"ctime":"2024-06-11T14:55:43.616292461Z","mtime":"2024-06-11T14:55:43.616292461Z","owner":{{"sid":"S-1-5-21-1004336348-1177238915-682003330-500","auth_id":"500"}}}}"#
                        ));
                    }
                    _ => {}
                }
                format!(
                    r#"<14>1 2026-01-27T14:12:23.{ms:03}8Z cs-fil-q-k144-{node} qumulo - - - {{"user_id":{{"sid":"S-1-5-21-1004336348-1177238915-682003330-1104","auth_id":"12884902992","name":"AD\\{user}"}},"user_ip":"{ip}","protocol":"{proto}","operation":"{op}","status":"{status}","details":{{{details}}}}}"#
                )
            } else {
                let q = |s: &str| s.replace('"', "\"\"");
                format!(
                    r#"<14>1 2026-01-27T14:12:23.{ms:03}812Z cs-fil-q-k144-{node} qumulo - - - {ip},"AD\{user}",{proto},{op},{status},{fid},"{}","{}""#,
                    q(&p),
                    q(&target)
                )
            };
            frame.into_bytes()
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let filter = Filter::reference_default();
    let frames = mix(1000);
    let bytes: usize = frames.iter().map(Vec::len).sum();
    let mut out = Vec::with_capacity(1 << 20);
    let mut kept = 0;
    for (i, f) in frames.iter().enumerate() {
        let ctx = FrameCtx {
            seq: i as u64,
            received_unix_ms: 1_769_523_200_000,
            conn: None,
        };
        if let Ok(qbroker::parse::Outcome::Event(_)) = convert(f, &ctx, &filter, &mut out) {
            kept += 1;
        }
    }
    eprintln!(
        "mix: {} frames, {} bytes in ({} avg), {} events out, {} bytes out",
        frames.len(),
        bytes,
        bytes / frames.len(),
        kept,
        out.len()
    );

    let run = |out: &mut Vec<u8>, frames: &[Vec<u8>]| {
        out.clear();
        for (i, f) in frames.iter().enumerate() {
            let ctx = FrameCtx {
                seq: i as u64,
                received_unix_ms: 1_769_523_200_000,
                conn: None,
            };
            let _ = black_box(convert(black_box(f), &ctx, &filter, out));
        }
    };

    // Wall-clock numbers suffer on a shared machine; this thread's CPU time does not
    // (much). Linux only.
    if let Some(t0) = thread_cpu_ns() {
        let rounds: usize = std::env::var("PARSE_BENCH_CPU_ROUNDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(2000);
        for _ in 0..rounds {
            run(&mut out, &frames);
        }
        if let Some(t1) = thread_cpu_ns() {
            let per = (t1 - t0) as f64 / (rounds * frames.len()) as f64;
            eprintln!("mix: {per:.0} ns CPU per frame");
        }
    }

    let mut g = c.benchmark_group("convert");
    g.throughput(Throughput::Elements(frames.len() as u64));
    g.bench_function("mix/events", |b| b.iter(|| run(&mut out, &frames)));
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("mix/bytes", |b| b.iter(|| run(&mut out, &frames)));

    // Single frame kinds, per event.
    let picks: &[(&str, &str)] = &[
        ("json", "fs_write_data"),
        ("csv", "fs_write_data"),
        ("json", "fs_write_metadata"),
        ("json", "fs_read_metadata"),
        ("csv", "fs_read_metadata"),
    ];
    for &(fmt, op) in picks {
        let frame = frames.iter().find(|f| {
            let s = String::from_utf8_lossy(f);
            s.contains(op) && (s.contains("- - - {") == (fmt == "json"))
        });
        let Some(frame) = frame else { continue };
        g.throughput(Throughput::Elements(1));
        g.bench_with_input(BenchmarkId::new(fmt, op), frame, |b, f| {
            let ctx = FrameCtx {
                seq: 1,
                received_unix_ms: 1_769_523_200_000,
                conn: None,
            };
            b.iter(|| {
                out.clear();
                black_box(convert(black_box(f), &ctx, &filter, &mut out))
            })
        });
    }
    g.finish();
}

/// CPU time of this thread, from `/proc/thread-self/schedstat` (first field, ns).
fn thread_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

criterion_group!(benches, bench);
criterion_main!(benches);
