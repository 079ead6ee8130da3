//! Fuzz target: RFC 6587 framing over a byte stream split at arbitrary points.
//!
//! Input: byte 0 picks the frame cap, byte 1 the skip limit, bytes 2..10 the
//! sizes of the pieces the stream arrives in (cycled); the rest is the stream,
//! also fed whole and, when short, byte by byte.
//! The decoder is driven as the reader drives it (decode, drop the consumed
//! prefix, read more) and must:
//! - give the same frames, the same overrun and the same end however the stream
//!   is split (oversize counts may differ by one once an overrun cuts a skip
//!   short: a split stream sees the frame pass the cap before the limit);
//! - never report a frame over the cap, and never hold more than a frame's
//!   worth of bytes between reads (no unbounded buffer, whatever the input);
//! - stay overrun once overrun.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use qbroker::ingest::framing::{plausible, BadFrames, Decoder, Finish, Next};

#[derive(Debug, PartialEq, Eq)]
struct Decoded {
    frames: Vec<Vec<u8>>,
    oversize: usize,
    overrun: bool,
    finish: Option<Finish>,
}

fn decode(input: &[u8], cuts: &[usize], max: usize, skip: usize) -> Decoded {
    let mut dec = Decoder::with_skip_limit(max, skip);
    let mut buf = BytesMut::new();
    let mut out = Decoded {
        frames: Vec::new(),
        oversize: 0,
        overrun: false,
        finish: None,
    };
    let mut fed = 0;
    let mut cut = cuts.iter().cycle();
    let mut bad = BadFrames::new(16);
    while fed < input.len() {
        let n = (*cut.next().unwrap_or(&1)).clamp(1, input.len() - fed);
        buf.extend_from_slice(&input[fed..fed + n]);
        fed += n;
        loop {
            match dec.next(&mut buf) {
                Next::Frame { start, end } => {
                    assert!(start <= end && end <= buf.len());
                    let frame = &buf[start..end];
                    assert!(
                        frame.len() <= max,
                        "frame of {} over the cap {max}",
                        frame.len()
                    );
                    if plausible(frame) {
                        bad.good();
                    } else {
                        let _ = bad.bad();
                    }
                    out.frames.push(frame.to_vec());
                }
                Next::Oversize => {
                    out.oversize += 1;
                    let _ = bad.bad();
                }
                Next::Incomplete => break,
                Next::Overrun => {
                    out.overrun = true;
                    assert_eq!(dec.next(&mut buf), Next::Overrun, "overrun is sticky");
                    assert!(!dec.mid_frame(&buf));
                    return out;
                }
            }
        }
        let consumed = dec.consumed();
        let _ = buf.split_to(consumed);
        dec.rebase(consumed);
        // Between reads: at most one frame in progress (its count, its body, or
        // a line up to the cap and a CR).
        assert!(
            buf.len() <= max + 12,
            "{} bytes held between reads, cap {max}",
            buf.len()
        );
    }
    let fin = dec.finish(&mut buf);
    if let Finish::Frame { start, end } = fin {
        assert!(end - start <= max);
        out.frames.push(buf[start..end].to_vec());
    }
    out.finish = Some(fin);
    out
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 10 {
        return;
    }
    let max = 8 + usize::from(data[0] % 64) * 4;
    let skip = max + usize::from(data[1] % 8) * max / 2;
    let cuts: Vec<usize> = data[2..10]
        .iter()
        .map(|&b| usize::from(b % 64) + 1)
        .collect();
    let input = &data[10..];
    let whole = decode(input, &[input.len().max(1)], max, skip);
    let split = decode(input, &cuts, max, skip);
    // Byte by byte is the harshest split, and the slowest: short inputs only.
    let bytewise = (input.len() <= 512).then(|| decode(input, &[1], max, skip));
    for other in std::iter::once(&split).chain(bytewise.as_ref()) {
        assert_eq!(whole.frames, other.frames, "frames differ by split");
        assert_eq!(whole.overrun, other.overrun, "overrun differs by split");
        if whole.overrun {
            assert!(whole.oversize.abs_diff(other.oversize) <= 1);
        } else {
            assert_eq!(
                whole.oversize, other.oversize,
                "oversize count differs by split"
            );
            assert_eq!(whole.finish, other.finish, "end of stream differs by split");
        }
    }
});
