//! The spool through its public API: append, next, ack, reopen, the cap, close,
//! concurrency and write errors.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use qbroker::spool::{AppendError, Fsync, NewBatch, Options, Record, Spool};

const T: Duration = Duration::from_secs(10);

fn opts(max_bytes: u64, segment_bytes: u64, fsync: Fsync) -> Options {
    Options {
        max_bytes,
        segment_bytes,
        fsync,
    }
}

fn big() -> Options {
    opts(1 << 30, 1 << 20, Fsync::Never)
}

struct Owned {
    batch_id: String,
    cluster: String,
    events: u32,
    received: Vec<(u64, u32)>,
    body: Vec<u8>,
}

fn owned(i: u64) -> Owned {
    Owned {
        batch_id: format!("batch-{i}"),
        cluster: "qumulo-a".into(),
        events: (i % 7) as u32 + 1,
        received: vec![
            (1_700_000_000_000_000 + i, 1),
            (1_700_000_000_000_100 + i, 2),
        ],
        body: format!(
            "{{\"n\":{i},\"pad\":\"{}\"}}",
            "x".repeat((i % 50) as usize)
        )
        .into_bytes(),
    }
}

fn nb(o: &Owned) -> NewBatch<'_> {
    NewBatch {
        batch_id: &o.batch_id,
        cluster: &o.cluster,
        events: o.events,
        received: &o.received,
        body: &o.body,
    }
}

fn append(s: &Spool, i: u64) -> u64 {
    s.append(&nb(&owned(i)), T).expect("append")
}

fn check(r: &Record, i: u64) {
    let o = owned(i);
    assert_eq!(r.batch_id, o.batch_id);
    assert_eq!(r.cluster, o.cluster);
    assert_eq!(r.events, o.events);
    assert_eq!(r.received, o.received);
    assert_eq!(&r.body[..], &o.body[..]);
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The next record, or a panic after `T`.
fn next(rt: &tokio::runtime::Runtime, s: &Spool) -> Option<Record> {
    rt.block_on(async {
        tokio::time::timeout(T, s.next())
            .await
            .expect("next timed out")
    })
}

/// Whether a record is ready within a short wait.
fn next_soon(rt: &tokio::runtime::Runtime, s: &Spool) -> Option<Option<Record>> {
    rt.block_on(async {
        tokio::time::timeout(Duration::from_millis(100), s.next())
            .await
            .ok()
    })
}

fn seg_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".seg"))
        .collect();
    v.sort();
    v
}

#[test]
fn append_next_ack_round_trip() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let s = Spool::open(dir.path(), big()).unwrap();
    for i in 0..5 {
        assert_eq!(append(&s, i), i + 1, "ids start at 1 and are dense");
    }
    for i in 0..5 {
        let r = next(&rt, &s).unwrap();
        assert_eq!(r.id, i + 1);
        assert!(!r.replayed);
        check(&r, i);
    }
    assert!(next_soon(&rt, &s).is_none(), "nothing more to hand out");
    let st = s.stats();
    assert_eq!(st.appended_records, 5);
    assert_eq!(st.unacked_records, 5);
    for id in 1..=5 {
        s.ack(id);
    }
    let st = s.stats();
    assert_eq!(st.acked_records, 5);
    assert_eq!(st.unacked_records, 0);
    assert_eq!(st.watermark, 6);
    assert_eq!(st.oldest_unacked_age_ms, 0);
}

#[test]
fn next_waits_for_an_append() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(Spool::open(dir.path(), big()).unwrap());
    let s2 = s.clone();
    let waiter = rt.spawn(async move { tokio::time::timeout(T, s2.next()).await });
    std::thread::sleep(Duration::from_millis(50));
    assert!(!waiter.is_finished());
    append(&s, 0);
    let r = rt.block_on(waiter).unwrap().expect("woken").unwrap();
    assert_eq!(r.id, 1);
}

#[test]
fn ids_are_dense_and_continue_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Spool::open(dir.path(), big()).unwrap();
        for i in 0..3 {
            assert_eq!(append(&s, i), i + 1);
        }
    }
    {
        let s = Spool::open(dir.path(), big()).unwrap();
        assert_eq!(append(&s, 3), 4);
    }
    let s = Spool::open(dir.path(), big()).unwrap();
    assert_eq!(append(&s, 4), 5);
}

#[test]
fn reopen_replays_exactly_the_unacked_records_in_order() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Spool::open(dir.path(), opts(1 << 30, 300, Fsync::Always)).unwrap();
        for i in 0..10 {
            append(&s, i);
        }
        for _ in 0..10 {
            next(&rt, &s).unwrap();
        }
        // 1..=4 acknowledged (out of order), and 6 and 8; the watermark is 5.
        for id in [3, 1, 4, 2, 6, 8] {
            s.ack(id);
        }
        s.sync().unwrap();
        assert_eq!(s.stats().watermark, 5);
    }
    let s = Spool::open(dir.path(), big()).unwrap();
    assert_eq!(s.stats().unacked_records, 6);
    let mut got = Vec::new();
    for _ in 0..6 {
        let r = next(&rt, &s).unwrap();
        assert!(r.replayed);
        check(&r, r.id - 1);
        got.push(r.id);
    }
    assert_eq!(
        got,
        vec![5, 6, 7, 8, 9, 10],
        "at-least-once above the watermark"
    );
    assert_eq!(s.stats().replayed_records, 6);
    assert_eq!(append(&s, 10), 11);
    let r = next(&rt, &s).unwrap();
    assert_eq!((r.id, r.replayed), (11, false));
}

#[test]
fn drop_persists_the_watermark() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Spool::open(dir.path(), big()).unwrap();
        for i in 0..4 {
            append(&s, i);
        }
        for _ in 0..4 {
            next(&rt, &s).unwrap();
        }
        s.ack(1);
        s.ack(2);
    }
    let s = Spool::open(dir.path(), big()).unwrap();
    assert_eq!(next(&rt, &s).unwrap().id, 3);
}

#[test]
fn segments_are_deleted_once_fully_acked() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let s = Spool::open(dir.path(), opts(1 << 30, 200, Fsync::Never)).unwrap();
    for i in 0..20 {
        append(&s, i);
    }
    let segs = s.stats().segments;
    assert!(segs >= 5, "small segments roll: {segs}");
    assert_eq!(seg_files(dir.path()).len() as u64, segs);
    for _ in 0..10 {
        let r = next(&rt, &s).unwrap();
        s.ack(r.id);
    }
    s.sync().unwrap();
    let mid = s.stats().segments;
    assert!(mid < segs && mid > 1, "{mid} of {segs}");
    for _ in 0..10 {
        let r = next(&rt, &s).unwrap();
        s.ack(r.id);
    }
    s.sync().unwrap();
    let st = s.stats();
    assert_eq!(st.segments, 1, "only the active segment is left");
    assert_eq!(seg_files(dir.path()).len(), 1);
    assert_eq!(st.unacked_records, 0);
    let seg_len: u64 = seg_files(dir.path())
        .iter()
        .map(|n| std::fs::metadata(dir.path().join(n)).unwrap().len())
        .sum();
    assert_eq!(st.bytes, seg_len);
}

#[test]
fn deletion_happens_in_the_background_too() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let s = Spool::open(dir.path(), opts(1 << 30, 100, Fsync::Never)).unwrap();
    for i in 0..6 {
        append(&s, i);
    }
    for _ in 0..6 {
        let r = next(&rt, &s).unwrap();
        s.ack(r.id);
    }
    let deadline = Instant::now() + T;
    while s.stats().segments > 1 {
        assert!(Instant::now() < deadline, "housekeeper never deleted");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn full_spool_waits_then_says_full_and_resumes_after_acks() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(Spool::open(dir.path(), opts(2_000, 300, Fsync::Never)).unwrap());
    let mut n = 0;
    loop {
        match s.append(&nb(&owned(n)), Duration::ZERO) {
            Ok(_) => n += 1,
            Err(AppendError::Full) => break,
            Err(e) => panic!("{e}"),
        }
        assert!(n < 1000);
    }
    assert!(s.stats().bytes >= 2_000);
    let t0 = Instant::now();
    assert!(matches!(
        s.append(&nb(&owned(n)), Duration::from_millis(100)),
        Err(AppendError::Full)
    ));
    assert!(t0.elapsed() >= Duration::from_millis(100), "it waited");
    assert!(s.stats().full_waits >= 2);

    // A blocked appender proceeds once acknowledgements free space.
    let s2 = s.clone();
    let blocked = std::thread::spawn(move || s2.append(&nb(&owned(n)), T));
    std::thread::sleep(Duration::from_millis(50));
    assert!(!blocked.is_finished());
    for _ in 0..n {
        let r = next(&rt, &s).unwrap();
        s.ack(r.id);
    }
    let id = blocked.join().unwrap().expect("resumed");
    assert_eq!(id, n + 1);
    assert!(s.stats().bytes < 2_000);
}

#[test]
fn full_with_one_huge_active_segment_still_frees_space() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    // Segments larger than the cap: the active segment must be sealed to free space.
    let s = Arc::new(Spool::open(dir.path(), opts(1_000, 1 << 20, Fsync::Never)).unwrap());
    let mut n = 0;
    while s.append(&nb(&owned(n)), Duration::ZERO).is_ok() {
        n += 1;
    }
    let s2 = s.clone();
    let blocked = std::thread::spawn(move || s2.append(&nb(&owned(n)), T));
    for _ in 0..n {
        let r = next(&rt, &s).unwrap();
        s.ack(r.id);
    }
    assert_eq!(blocked.join().unwrap().expect("resumed"), n + 1);
}

#[test]
fn concurrent_appenders_with_fsync_always_are_all_durable() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let threads = 8u64;
    let per = 40u64;
    {
        let s = Arc::new(Spool::open(dir.path(), opts(1 << 30, 4096, Fsync::Always)).unwrap());
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                let s = s.clone();
                std::thread::spawn(move || {
                    (0..per)
                        .map(|k| (s.append(&nb(&owned(t * per + k)), T).unwrap(), t * per + k))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut pairs: Vec<(u64, u64)> = hs.into_iter().flat_map(|h| h.join().unwrap()).collect();
        pairs.sort();
        let ids: Vec<u64> = pairs.iter().map(|p| p.0).collect();
        assert_eq!(
            ids,
            (1..=threads * per).collect::<Vec<_>>(),
            "dense, unique"
        );
        // Simulate a crash: copy the files as they are, without drop or sync.
        let copy = tempfile::tempdir().unwrap();
        for e in std::fs::read_dir(dir.path()).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), copy.path().join(e.file_name())).unwrap();
        }
        let c = Spool::open(copy.path(), big()).unwrap();
        c.close();
        for &(id, i) in &pairs {
            let r = next(&rt, &c).unwrap();
            assert_eq!(r.id, id);
            assert!(r.replayed);
            check(&r, i);
        }
        assert!(next(&rt, &c).is_none());
    }
}

#[test]
fn interval_fsync_appends_without_waiting() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let s = Spool::open(
        dir.path(),
        opts(1 << 30, 1000, Fsync::Interval(Duration::from_millis(5))),
    )
    .unwrap();
    for i in 0..50 {
        append(&s, i);
    }
    std::thread::sleep(Duration::from_millis(30));
    for i in 0..50 {
        check(&next(&rt, &s).unwrap(), i);
    }
    s.sync().unwrap();
}

#[test]
fn concurrent_readers_get_each_record_once() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(Spool::open(dir.path(), opts(1 << 30, 2000, Fsync::Never)).unwrap());
    let total = 300u64;
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let s = s.clone();
            rt.spawn(async move {
                let mut got = Vec::new();
                while let Ok(Some(r)) = tokio::time::timeout(T, s.next()).await {
                    check(&r, r.id - 1);
                    s.ack(r.id);
                    got.push(r.id);
                }
                got
            })
        })
        .collect();
    let writer = {
        let s = s.clone();
        std::thread::spawn(move || {
            for i in 0..total {
                append(&s, i);
            }
            s.close();
        })
    };
    writer.join().unwrap();
    let mut all = Vec::new();
    for r in readers {
        let got = rt.block_on(r).unwrap();
        assert!(
            got.windows(2).all(|w| w[0] < w[1]),
            "each reader sees increasing ids"
        );
        all.extend(got);
    }
    all.sort();
    assert_eq!(all, (1..=total).collect::<Vec<_>>());
    s.sync().unwrap();
    assert_eq!(s.stats().unacked_records, 0);
    assert_eq!(s.stats().segments, 1);
}

#[test]
fn without_the_cache_records_are_read_from_disk() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let s = Spool::open(dir.path(), opts(1 << 30, 700, Fsync::Never)).unwrap();
    s.set_cache_bytes(300);
    for i in 0..40 {
        append(&s, i);
    }
    assert!(s.stats().cache_bytes <= 300);
    for i in 0..40 {
        let r = next(&rt, &s).unwrap();
        assert_eq!(r.id, i + 1);
        check(&r, i);
    }
    assert_eq!(s.stats().cache_bytes, 0);
    // Without a runtime too (the read happens inline).
    append(&s, 40);
    s.set_cache_bytes(0);
    append(&s, 41);
    let r = futures_lite_block_on(s.next()).unwrap();
    check(&r, 40);
    let r = futures_lite_block_on(s.next()).unwrap();
    check(&r, 41);
}

/// A minimal executor, to call `next` outside any tokio runtime.
fn futures_lite_block_on<F: std::future::Future>(f: F) -> F::Output {
    use std::task::{Context, Poll, Wake, Waker};
    struct Thread(std::thread::Thread);
    impl Wake for Thread {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Thread(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    let deadline = Instant::now() + T;
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        assert!(Instant::now() < deadline, "future never finished");
        std::thread::park_timeout(Duration::from_millis(10));
    }
}

#[test]
fn oldest_unacked_age_follows_the_watermark() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let s = Spool::open(dir.path(), big()).unwrap();
    append(&s, 0);
    std::thread::sleep(Duration::from_millis(400));
    append(&s, 1);
    let t1 = Instant::now();
    let age = s.stats().oldest_unacked_age_ms;
    assert!((400..60_000).contains(&age), "{age}");
    let r = next(&rt, &s).unwrap();
    assert!(s.stats().oldest_unacked_age_ms >= 400);
    s.ack(r.id);
    // Now the oldest is record 2, appended at t1.
    let age = s.stats().oldest_unacked_age_ms;
    assert!(u128::from(age) <= t1.elapsed().as_millis() + 1, "{age}");
    s.set_cache_bytes(0);
    append(&s, 2);
    let r2 = next(&rt, &s).unwrap();
    s.ack(r2.id);
    // The oldest is record 3, not cached: its time is read from the segment.
    std::thread::sleep(Duration::from_millis(50));
    assert!((50..60_000).contains(&s.stats().oldest_unacked_age_ms));
    assert_eq!(s.stats().unacked_records, 1);
}

#[test]
fn acks_of_records_never_handed_out_are_ignored() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let s = Spool::open(dir.path(), big()).unwrap();
    append(&s, 0);
    append(&s, 1);
    s.ack(1);
    s.ack(99);
    assert_eq!(s.stats().watermark, 1);
    let r = next(&rt, &s).unwrap();
    s.ack(r.id);
    s.ack(r.id);
    assert_eq!(s.stats().watermark, 2);
    assert_eq!(s.stats().unacked_records, 1);
}

#[test]
fn close_ends_appends_and_drains_readers() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(Spool::open(dir.path(), opts(1_000, 1 << 20, Fsync::Never)).unwrap());
    append(&s, 0);
    append(&s, 1);
    // A reader that took everything waits; close wakes it with None.
    let r1 = next(&rt, &s).unwrap();
    let r2 = next(&rt, &s).unwrap();
    assert_eq!((r1.id, r2.id), (1, 2));
    let s2 = s.clone();
    let waiting = rt.spawn(async move { tokio::time::timeout(T, s2.next()).await });
    std::thread::sleep(Duration::from_millis(30));
    // An appender waiting for space gets Closed.
    while s.append(&nb(&owned(9)), Duration::ZERO).is_ok() {}
    let s3 = s.clone();
    let full = std::thread::spawn(move || s3.append(&nb(&owned(9)), T));
    std::thread::sleep(Duration::from_millis(30));
    s.close();
    let r = rt.block_on(waiting).unwrap().expect("woken by close");
    assert!(
        r.is_some(),
        "records appended before close are still handed out"
    );
    assert!(matches!(full.join().unwrap(), Err(AppendError::Closed)));
    assert!(matches!(
        s.append(&nb(&owned(0)), T),
        Err(AppendError::Closed)
    ));
    while next(&rt, &s).is_some() {}
    assert!(next(&rt, &s).is_none());
    // Acks after close still count and persist.
    s.ack(1);
    s.ack(2);
    s.sync().unwrap();
    assert_eq!(s.stats().watermark, 3);
}

#[test]
fn a_failed_write_leaves_the_spool_usable() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    // Every record passes segment_bytes: each append starts a segment.
    let s = Spool::open(dir.path(), opts(1 << 30, 10, Fsync::Always)).unwrap();
    let a = append(&s, 0);
    assert_eq!(a, 1);
    // The segment the next append starts is /dev/full: its write fails with ENOSPC.
    let next_seg = dir.path().join(format!("{:018}.seg", 2));
    std::os::unix::fs::symlink("/dev/full", &next_seg).unwrap();
    match s.append(&nb(&owned(1)), T) {
        Err(AppendError::Io(e)) => assert_eq!(e.raw_os_error(), Some(28), "{e}"),
        other => panic!("expected ENOSPC, got {other:?}"),
    }
    assert_eq!(s.stats().io_errors, 1);
    // The caller retries with the same batch and it goes through, with the same id.
    assert_eq!(s.append(&nb(&owned(1)), T).unwrap(), 2);
    assert!(!std::fs::symlink_metadata(&next_seg)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(append(&s, 2), 3);
    for i in 0..3 {
        let r = next(&rt, &s).unwrap();
        assert_eq!(r.id, i + 1);
        check(&r, i);
    }
    drop(s);
    let s = Spool::open(dir.path(), big()).unwrap();
    assert_eq!(s.stats().corrupt_records, 0);
    s.close();
    let ids: Vec<u64> = std::iter::from_fn(|| next(&rt, &s)).map(|r| r.id).collect();
    assert_eq!(ids, vec![1, 2, 3]);
}

#[test]
fn too_large_batches_are_refused_up_front() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let s = Spool::open(dir.path(), opts(1 << 30, 1 << 20, Fsync::Never)).unwrap();
    append(&s, 0);
    // Too large for the spool: refused before anything is written.
    let huge = vec![0u8; 257 << 20];
    let o = owned(1);
    let b = NewBatch {
        body: &huge,
        ..nb(&o)
    };
    assert!(matches!(s.append(&b, T), Err(AppendError::TooLarge { .. })));
    assert_eq!(append(&s, 1), 2);
    let ids: HashSet<u64> = (0..2).map(|_| next(&rt, &s).unwrap().id).collect();
    assert_eq!(ids, HashSet::from([1, 2]));
}

#[test]
fn directory_and_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("target-a");
    let s = Spool::open(&dir, big()).unwrap();
    append(&s, 0);
    s.sync().unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        assert_eq!(mode(&p), 0o600, "{}", p.display());
    }
}

#[test]
fn spool_is_send_and_sync() {
    fn is<T: Send + Sync + 'static>() {}
    is::<Spool>();
    is::<Arc<Spool>>();
}

#[test]
fn unacked_bytes_count_what_is_left_to_deliver() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let s = Spool::open(dir.path(), big()).unwrap();
    assert_eq!(s.stats().unacked_bytes, 0);
    for i in 0..3 {
        append(&s, i);
    }
    let all = s.stats().bytes;
    assert!(all > 0);
    assert_eq!(s.stats().unacked_bytes, all);
    let r1 = next(&rt, &s).unwrap();
    let r2 = next(&rt, &s).unwrap();
    // Handed out is not delivered; acknowledged out of order does not move
    // the oldest unacknowledged record either.
    assert_eq!(s.stats().unacked_bytes, all);
    s.ack(r2.id);
    assert_eq!(s.stats().unacked_bytes, all);
    s.ack(r1.id);
    let left = s.stats().unacked_bytes;
    assert!(0 < left && left < all, "{left} of {all}");
    let r3 = next(&rt, &s).unwrap();
    assert_eq!(s.stats().unacked_bytes, left);
    s.ack(r3.id);
    // Delivered: nothing left, while the segment file still holds the records.
    let stats = s.stats();
    assert_eq!((stats.unacked_bytes, stats.bytes), (0, all));
    append(&s, 3);
    let one = s.stats().unacked_bytes;
    assert_eq!(one, s.stats().bytes - all);
    drop(s);
    // After a restart: what the spool sends again.
    let s = Spool::open(dir.path(), big()).unwrap();
    assert_eq!(s.stats().unacked_bytes, one);
    assert!(one < s.stats().bytes);
}

/// Threads of this process whose name starts with `prefix` (as `/proc` keeps
/// it: the first 15 bytes).
fn threads_named(prefix: &str) -> usize {
    let prefix = &prefix[..prefix.len().min(15)];
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim_end().starts_with(prefix))
        .count()
}

#[test]
fn many_spools_share_a_few_housekeeping_threads_and_each_is_kept() {
    let rt = rt();
    let dirs: Vec<_> = (0..60).map(|_| tempfile::tempdir().unwrap()).collect();
    let spools: Vec<Spool> = dirs
        .iter()
        .map(|d| {
            Spool::open(
                d.path(),
                opts(1 << 30, 100, Fsync::Interval(Duration::from_millis(10))),
            )
            .unwrap()
        })
        .collect();
    for s in &spools {
        for i in 0..6 {
            append(s, i);
        }
        for _ in 0..6 {
            let r = next(&rt, s).unwrap();
            s.ack(r.id);
        }
    }
    // Every spool is kept: acknowledged segments deleted (which needs the
    // watermark persisted first), on however few threads.
    let deadline = Instant::now() + T;
    for (s, d) in spools.iter().zip(&dirs) {
        while s.stats().segments > 1 || !d.path().join("watermark").exists() {
            assert!(Instant::now() < deadline, "a spool was never kept");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let threads = threads_named(qbroker::spool::HOUSEKEEPING_THREAD);
    assert!(
        (1..=qbroker::spool::HOUSEKEEPING_THREADS).contains(&threads),
        "{threads} housekeeping threads for {} spools",
        spools.len()
    );
    // A spool closed and opened again finds its watermark: nothing replayed.
    drop(spools);
    for d in &dirs {
        let s = Spool::open(d.path(), big()).unwrap();
        assert_eq!(s.stats().unacked_records, 0);
    }
}
