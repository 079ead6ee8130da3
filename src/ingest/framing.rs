//! framing: RFC 6587 syslog-over-TCP framing, decoded in place.
//!
//! Each frame's framing is told from its first byte, as rsyslog's imtcp does: one
//! to ten digits followed by a space start an octet-counted frame (`LEN SP MSG`);
//! anything else starts a newline-delimited one, ended by LF (a CR before it is
//! dropped). Blank lines, stray CRs and NULs between frames are skipped. A
//! connection may therefore mix both framings; Qumulo's own syslog frames start
//! with `<` and an rsyslog relay's with `<` or a digit-led length.
//!
//! The decoder never copies: it reports byte ranges of the caller's buffer. A
//! frame longer than the cap is skipped, whatever its framing, and the next frame
//! is decoded intact: an octet-counted one by its length, a newline-delimited one
//! by discarding through the next LF. The discarded bytes at the tail of the
//! buffer are cut off as they arrive, so an endless frame holds no memory.
//!
//! Skipping has a limit too: a frame longer than the skip limit (a line with no
//! LF in sight, or an octet count declaring more) is no oversize syslog message
//! but broken framing, and the decoder says [`Next::Overrun`] from then on: the
//! caller closes the connection. [`BadFrames`] tells a hostile or broken stream
//! (garbage, one oversize frame after another) from a Qumulo stream with the odd
//! oversize frame, so that the reader can close the first and keep the second.

use bytes::BytesMut;

/// The longest octet count accepted (10 digits holds any `u32`).
const MAX_COUNT_DIGITS: usize = 10;

/// One step of decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// A complete frame at `buf[start..end]`.
    Frame { start: usize, end: usize },
    /// A frame over the cap was (or is being) skipped.
    Oversize,
    /// The buffer holds no further complete frame.
    Incomplete,
    /// A frame exceeded the skip limit: the stream cannot be framed any more.
    /// Sticky: every later call says the same.
    Overrun,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At a frame boundary.
    Start,
    /// Inside a newline-delimited frame that starts at `pos`; no LF before `scanned`.
    Line { scanned: usize },
    /// Inside an octet-counted frame of `len` bytes whose body starts at `pos`.
    Counted { len: usize },
    /// Discarding the rest of an oversize octet-counted frame.
    SkipBytes { remaining: usize },
    /// Discarding the rest of an oversize line, through its LF; `len` bytes of
    /// the line were seen so far.
    SkipLine { len: usize },
    /// A frame exceeded the skip limit.
    Overrun,
}

/// Per-connection decoder state. `pos` is the offset of the first byte not yet
/// consumed; bytes before it belong to frames already reported (or skipped).
#[derive(Debug, Clone)]
pub struct Decoder {
    max_frame: usize,
    max_skip: usize,
    pos: usize,
    state: State,
    /// Frames that ended so far, skipped ones included.
    ended: u64,
}

impl Decoder {
    /// A decoder that skips oversize frames of any length.
    pub fn new(max_frame: usize) -> Decoder {
        Decoder::with_skip_limit(max_frame, usize::MAX)
    }

    /// A decoder that skips frames over `max_frame` bytes, and gives up on the
    /// stream ([`Next::Overrun`]) at a frame over `max_skip` bytes.
    pub fn with_skip_limit(max_frame: usize, max_skip: usize) -> Decoder {
        Decoder {
            max_frame,
            max_skip: max_skip.max(max_frame),
            pos: 0,
            state: State::Start,
            ended: 0,
        }
    }

    /// How many frames ended so far, skipped ones included: a change tells the
    /// caller that the frame in progress, if any, is a new one.
    pub fn ended(&self) -> u64 {
        self.ended
    }

    /// Bytes at the front of the buffer that are consumed.
    pub fn consumed(&self) -> usize {
        self.pos
    }

    /// The caller removed the first `n` consumed bytes from the buffer.
    pub fn rebase(&mut self, n: usize) {
        debug_assert!(n <= self.pos);
        self.pos -= n;
        if let State::Line { scanned } = &mut self.state {
            *scanned -= n;
        }
    }

    /// Whether the decoder sits between frames (nothing partial is buffered).
    pub fn at_boundary(&self, buf: &BytesMut) -> bool {
        match self.state {
            State::Start => buf[self.pos..]
                .iter()
                .all(|b| matches!(b, b'\n' | b'\r' | 0)),
            State::SkipBytes { .. } | State::SkipLine { .. } | State::Overrun => true,
            _ => false,
        }
    }

    /// Whether a frame has begun and not ended: bytes of it are buffered or it is
    /// being skipped. What a per-frame deadline times.
    pub fn mid_frame(&self, buf: &BytesMut) -> bool {
        match self.state {
            State::Start => buf[self.pos.min(buf.len())..]
                .iter()
                .any(|b| !matches!(b, b'\n' | b'\r' | 0)),
            State::Overrun => false,
            _ => true,
        }
    }

    /// Decode the next frame from `buf`. May truncate `buf` (never below `consumed`)
    /// to drop the bytes of a frame being skipped.
    pub fn next(&mut self, buf: &mut BytesMut) -> Next {
        loop {
            match self.state {
                State::Start => {
                    while self.pos < buf.len() && matches!(buf[self.pos], b'\n' | b'\r' | 0) {
                        self.pos += 1;
                    }
                    let rest = &buf[self.pos..];
                    let Some(&first) = rest.first() else {
                        return Next::Incomplete;
                    };
                    if !first.is_ascii_digit() {
                        self.state = State::Line { scanned: self.pos };
                        continue;
                    }
                    let digits = rest
                        .iter()
                        .take(MAX_COUNT_DIGITS + 1)
                        .take_while(|b| b.is_ascii_digit())
                        .count();
                    if digits == rest.len() && digits <= MAX_COUNT_DIGITS {
                        return Next::Incomplete; // cannot tell yet
                    }
                    if digits > MAX_COUNT_DIGITS || rest[digits] != b' ' {
                        // Digits not followed by a space: a line that starts with a digit
                        // (such as an rsyslog-forwarded `2023-03-03T...` frame).
                        self.state = State::Line { scanned: self.pos };
                        continue;
                    }
                    let len = rest[..digits]
                        .iter()
                        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
                    self.pos += digits + 1;
                    if len > self.max_skip as u64 {
                        return self.overrun(buf);
                    }
                    if len > self.max_frame as u64 {
                        self.state = State::SkipBytes {
                            remaining: usize::try_from(len).unwrap_or(usize::MAX),
                        };
                        return Next::Oversize;
                    }
                    self.state = State::Counted { len: len as usize };
                }
                State::Counted { len } => {
                    if buf.len() - self.pos < len {
                        return Next::Incomplete;
                    }
                    let start = self.pos;
                    self.pos += len;
                    self.state = State::Start;
                    self.ended += 1;
                    if len > 0 {
                        return Next::Frame {
                            start,
                            end: start + len,
                        };
                    }
                }
                State::Line { scanned } => {
                    let start = self.pos;
                    match memchr::memchr(b'\n', &buf[scanned..]) {
                        Some(i) if scanned + i - start > self.max_skip => {
                            return self.overrun(buf);
                        }
                        Some(i) => {
                            let lf = scanned + i;
                            self.pos = lf + 1;
                            self.state = State::Start;
                            self.ended += 1;
                            let end = if lf > start && buf[lf - 1] == b'\r' {
                                lf - 1
                            } else {
                                lf
                            };
                            if end - start > self.max_frame {
                                return Next::Oversize;
                            }
                            return Next::Frame { start, end };
                        }
                        None if buf.len() - start > self.max_skip => {
                            return self.overrun(buf);
                        }
                        None if buf.len() - start > self.max_frame + 1 => {
                            // Over the cap with no end in sight: drop what we have and
                            // everything up to the next LF.
                            let len = buf.len() - start;
                            buf.truncate(start);
                            self.state = State::SkipLine { len };
                            return Next::Oversize;
                        }
                        None => {
                            self.state = State::Line { scanned: buf.len() };
                            return Next::Incomplete;
                        }
                    }
                }
                State::SkipBytes { remaining } => {
                    let available = buf.len() - self.pos;
                    if available >= remaining {
                        // The skipped bytes stay in the buffer, between frames, until
                        // the caller drops the consumed prefix.
                        self.pos += remaining;
                        self.state = State::Start;
                        self.ended += 1;
                    } else {
                        buf.truncate(self.pos);
                        self.state = State::SkipBytes {
                            remaining: remaining - available,
                        };
                        return Next::Incomplete;
                    }
                }
                State::SkipLine { len } => match memchr::memchr(b'\n', &buf[self.pos..]) {
                    Some(i) if len + i > self.max_skip => return self.overrun(buf),
                    Some(i) => {
                        self.pos += i + 1;
                        self.state = State::Start;
                        self.ended += 1;
                    }
                    None if len + (buf.len() - self.pos) > self.max_skip => {
                        return self.overrun(buf);
                    }
                    None => {
                        let len = len + (buf.len() - self.pos);
                        buf.truncate(self.pos);
                        self.state = State::SkipLine { len };
                        return Next::Incomplete;
                    }
                },
                State::Overrun => return self.overrun(buf),
            }
        }
    }

    /// Give up on the stream: drop everything not yet consumed.
    fn overrun(&mut self, buf: &mut BytesMut) -> Next {
        self.pos = self.pos.min(buf.len());
        buf.truncate(self.pos);
        self.state = State::Overrun;
        Next::Overrun
    }

    /// At end of stream: a newline-delimited frame without its final LF is still a
    /// frame (many senders do not end the last one). Anything else left is partial.
    pub fn finish(&mut self, buf: &mut BytesMut) -> Finish {
        match self.state {
            State::Line { .. } => {
                let start = self.pos;
                let mut end = buf.len();
                while end > start && matches!(buf[end - 1], b'\r' | 0) {
                    end -= 1;
                }
                self.pos = buf.len();
                self.state = State::Start;
                if end == start {
                    Finish::Clean
                } else if end - start > self.max_frame {
                    Finish::Oversize
                } else {
                    Finish::Frame { start, end }
                }
            }
            State::Start if self.at_boundary(buf) => Finish::Clean,
            State::Start | State::Counted { .. } => {
                self.pos = buf.len();
                self.state = State::Start;
                Finish::Partial
            }
            State::SkipBytes { .. } | State::SkipLine { .. } | State::Overrun => Finish::Clean,
        }
    }
}

/// Whether a frame can be a syslog message at all: the header parser takes only
/// frames that start (after blanks) with `<` (PRI), a digit (an RFC 3339
/// timestamp) or an upper-case letter (an RFC 3164 month). Anything else is
/// certain to fail parsing; one byte tells, so the reader checks every frame.
pub fn plausible(frame: &[u8]) -> bool {
    match frame.iter().find(|&&b| b != b' ' && b != b'\t') {
        Some(&b) => b == b'<' || b.is_ascii_digit() || b.is_ascii_uppercase(),
        None => false,
    }
}

/// Tells a stream to close from one to keep: each bad frame (oversize, or not
/// [`plausible`]) adds one to a score, each good frame takes one off (never
/// below zero), and the stream is bad once the score reaches the limit. A
/// Qumulo stream with an oversize frame now and then stays near zero; random
/// bytes (about one frame in seven starts plausibly) reach a limit of 16
/// after some 25 frames; a stream of nothing but oversize frames after `limit`.
#[derive(Debug, Clone)]
pub struct BadFrames {
    score: u32,
    limit: u32,
}

impl BadFrames {
    /// `limit` 0 never closes.
    pub fn new(limit: u32) -> BadFrames {
        BadFrames { score: 0, limit }
    }

    pub fn good(&mut self) {
        self.score = self.score.saturating_sub(1);
    }

    /// Count a bad frame; true once the stream should be closed.
    pub fn bad(&mut self) -> bool {
        self.score = self.score.saturating_add(1);
        self.limit > 0 && self.score >= self.limit
    }
}

/// What was left at end of stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    Clean,
    Frame {
        start: usize,
        end: usize,
    },
    /// An incomplete octet-counted frame (or count) was cut off.
    Partial,
    Oversize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Feed `input` in pieces of the given sizes; collect frames and oversize count
    /// the way the reader does (dropping the consumed prefix now and then).
    fn decode(input: &[u8], cuts: &[usize], max: usize) -> (Vec<Vec<u8>>, usize, Finish) {
        let mut dec = Decoder::new(max);
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        let mut oversize = 0;
        let mut fed = 0;
        let mut cut = cuts.iter().cycle();
        while fed < input.len() {
            let n = (*cut.next().unwrap_or(&1)).max(1).min(input.len() - fed);
            buf.extend_from_slice(&input[fed..fed + n]);
            fed += n;
            loop {
                match dec.next(&mut buf) {
                    Next::Frame { start, end } => frames.push(buf[start..end].to_vec()),
                    Next::Oversize => oversize += 1,
                    Next::Incomplete => break,
                    Next::Overrun => panic!("no skip limit here"),
                }
            }
            let consumed = dec.consumed();
            let _ = buf.split_to(consumed);
            dec.rebase(consumed);
        }
        let fin = dec.finish(&mut buf);
        if let Finish::Frame { start, end } = fin {
            frames.push(buf[start..end].to_vec());
        }
        (frames, oversize, fin)
    }

    #[test]
    fn lf_crlf_and_octet_counting() {
        let input = b"<14>1 a\n<14>1 b\r\n11 <14>1 c\nc\nd\n\n\r\n<14>1 e\n";
        let (frames, oversize, fin) = decode(input, &[1000], 1024);
        assert_eq!(
            frames,
            vec![
                b"<14>1 a".to_vec(),
                b"<14>1 b".to_vec(),
                b"<14>1 c\nc\nd".to_vec(),
                b"<14>1 e".to_vec()
            ]
        );
        assert_eq!((oversize, fin), (0, Finish::Clean));
    }

    #[test]
    fn a_line_starting_with_digits_is_not_a_count() {
        let input = b"2023-03-03T14:08:51.058379Z host qumulo {}\n12345678901 x\n";
        let (frames, _, _) = decode(input, &[3], 1024);
        assert_eq!(
            frames[0],
            b"2023-03-03T14:08:51.058379Z host qumulo {}".to_vec()
        );
        assert_eq!(frames[1], b"12345678901 x".to_vec());
    }

    #[test]
    fn oversize_frames_are_skipped_without_garbling_the_next() {
        let big = vec![b'x'; 5000];
        let mut input = Vec::new();
        input.extend_from_slice(b"<1>ok1\n");
        input.extend_from_slice(&big);
        input.extend_from_slice(b"\n<1>ok2\n5000 ");
        input.extend_from_slice(&big);
        input.extend_from_slice(b"6 <1>ok3<1>ok4\n");
        for cuts in [&[1usize][..], &[7, 300], &[100_000]] {
            let (frames, oversize, fin) = decode(&input, cuts, 1000);
            assert_eq!(
                frames,
                vec![
                    b"<1>ok1".to_vec(),
                    b"<1>ok2".to_vec(),
                    b"<1>ok3".to_vec(),
                    b"<1>ok4".to_vec()
                ],
                "cuts {cuts:?}"
            );
            assert_eq!(oversize, 2, "cuts {cuts:?}");
            assert_eq!(fin, Finish::Clean);
        }
    }

    #[test]
    fn an_endless_line_holds_no_memory() {
        let mut dec = Decoder::new(1000);
        let mut buf = BytesMut::new();
        let mut oversize = 0;
        for _ in 0..1000 {
            buf.extend_from_slice(&[b'y'; 4096]);
            while let n @ (Next::Frame { .. } | Next::Oversize) = dec.next(&mut buf) {
                assert_eq!(n, Next::Oversize);
                oversize += 1;
            }
            assert!(buf.len() <= 4096 + 1001, "{}", buf.len());
        }
        assert_eq!(oversize, 1);
        buf.extend_from_slice(b"tail\n<1>next\n");
        assert_eq!(dec.next(&mut buf), Next::Frame { start: 5, end: 12 });
    }

    #[test]
    fn end_of_stream() {
        assert_eq!(
            decode(b"<1>a\n<1>last", &[2], 100).0.last().unwrap(),
            b"<1>last"
        );
        assert_eq!(decode(b"<1>a\n20 <1>cut", &[100], 100).2, Finish::Partial);
        assert_eq!(decode(b"<1>a\n12", &[100], 100).2, Finish::Partial);
        assert_eq!(decode(b"<1>a\n\r\n", &[100], 100).2, Finish::Clean);
    }

    #[test]
    fn a_frame_past_the_skip_limit_is_an_overrun_whatever_the_split() {
        // A line of 3000 bytes, cap 1000, skip limit 2000: given up on, for good.
        let mut input = b"<1>ok\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 3000));
        input.extend_from_slice(b"\n<1>after\n");
        for cut in [1usize, 7, 999, 1001, 2001, 100_000] {
            let mut dec = Decoder::with_skip_limit(1000, 2000);
            let mut buf = BytesMut::new();
            let (mut frames, mut overrun) = (0, false);
            for piece in input.chunks(cut) {
                buf.extend_from_slice(piece);
                loop {
                    match dec.next(&mut buf) {
                        Next::Frame { .. } => frames += 1,
                        Next::Oversize => {}
                        Next::Incomplete => break,
                        Next::Overrun => {
                            overrun = true;
                            break;
                        }
                    }
                }
                assert!(buf.len() <= 2000 + cut, "cut {cut}: {}", buf.len());
            }
            assert_eq!((frames, overrun), (1, true), "cut {cut}");
            assert_eq!(dec.next(&mut buf), Next::Overrun, "sticky");
            assert!(!dec.mid_frame(&buf));
        }
        // Within the limit the oversize line is skipped and the stream goes on.
        let mut dec = Decoder::with_skip_limit(1000, 4000);
        let mut buf = BytesMut::from(&input[..]);
        let mut got = Vec::new();
        while let n @ (Next::Frame { .. } | Next::Oversize) = dec.next(&mut buf) {
            got.push(n);
        }
        assert_eq!(got.len(), 3);
        assert_eq!(got[1], Next::Oversize);
        // An octet count declaring more than the limit is an overrun at once.
        let mut dec = Decoder::with_skip_limit(1000, 2000);
        let mut buf = BytesMut::from(&b"2001 <1>x"[..]);
        assert_eq!(dec.next(&mut buf), Next::Overrun);
        let mut dec = Decoder::with_skip_limit(1000, 2000);
        let mut buf = BytesMut::from(&b"2000 <1>x"[..]);
        assert_eq!(dec.next(&mut buf), Next::Oversize);
    }

    #[test]
    fn mid_frame_is_true_from_the_first_byte_to_the_delimiter() {
        let mut dec = Decoder::new(100);
        let mut buf = BytesMut::from(&b"\r\n"[..]);
        assert_eq!(dec.next(&mut buf), Next::Incomplete);
        assert!(!dec.mid_frame(&buf));
        buf.extend_from_slice(b"<1");
        assert_eq!(dec.next(&mut buf), Next::Incomplete);
        assert!(dec.mid_frame(&buf));
        buf.extend_from_slice(b">a\n1");
        assert!(matches!(dec.next(&mut buf), Next::Frame { .. }));
        assert_eq!(dec.next(&mut buf), Next::Incomplete);
        assert!(dec.mid_frame(&buf), "an octet count begun");
        buf.extend_from_slice(b" x");
        assert!(matches!(dec.next(&mut buf), Next::Frame { .. }));
        assert!(!dec.mid_frame(&buf));
    }

    #[test]
    fn bad_frames_close_garbage_and_keep_the_odd_oversize_frame() {
        assert!(plausible(b"<14>1 2026-01-01T00:00:00Z h qumulo - - - {}"));
        assert!(plausible(b"2026-01-01T00:00:00Z h qumulo {}"));
        assert!(plausible(b" Jan  1 00:00:00 h qumulo: x"));
        assert!(!plausible(b"\x16\x03\x01\x02\x00"), "a TLS hello");
        assert!(
            plausible(b"GET / HTTP/1.1"),
            "upper case passes: the parser decides"
        );
        assert!(!plausible(b"hello"));
        assert!(!plausible(b" \t"));

        // One oversize frame in ten good ones: never closed.
        let mut b = BadFrames::new(16);
        for i in 0..10_000 {
            if i % 10 == 0 {
                assert!(!b.bad());
            } else {
                b.good();
            }
        }
        // Half oversize: a random walk around zero that never drifts up.
        let mut b = BadFrames::new(16);
        for i in 0..10_000 {
            if i % 2 == 0 {
                assert!(!b.bad());
            } else {
                b.good();
            }
        }
        // Nothing but bad frames: closed at the limit.
        let mut b = BadFrames::new(16);
        assert_eq!((1..=100).find(|_| b.bad()), Some(16));
        // Random bytes framed by their own LFs: closed within a few dozen frames.
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut bytes = Vec::new();
        for _ in 0..200_000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            bytes.push(rng as u8);
        }
        let mut b = BadFrames::new(16);
        let closed_after = bytes
            .split(|&c| c == b'\n')
            .filter(|f| !f.is_empty())
            .position(|f| {
                if plausible(f) {
                    b.good();
                    false
                } else {
                    b.bad()
                }
            })
            .expect("random bytes are closed");
        assert!(closed_after < 60, "{closed_after}");
        // Limit 0: never.
        let mut b = BadFrames::new(0);
        assert!((0..1000).all(|_| !b.bad()));
    }

    fn frame_strategy() -> impl Strategy<Value = Vec<u8>> {
        // Frames start with '<' as every syslog frame does; bodies may hold any
        // byte but LF (LF-framed frames could not carry it).
        (
            proptest::collection::vec(any::<u8>().prop_filter("no LF", |b| *b != b'\n'), 0..200),
            any::<bool>(),
        )
            .prop_map(|(mut body, long)| {
                if long {
                    body.extend(std::iter::repeat_n(b'z', 300));
                }
                let mut f = b"<14>".to_vec();
                f.extend(body);
                // A trailing CR would be taken for the CR of a CRLF.
                while f.last() == Some(&b'\r') {
                    f.pop();
                }
                f
            })
    }

    proptest! {
        #[test]
        fn any_split_of_mixed_framings_decodes_the_same(
            frames in proptest::collection::vec((frame_strategy(), 0u8..3), 0..30),
            cuts in proptest::collection::vec(1usize..64, 1..8),
        ) {
            let max = 256;
            let mut input = Vec::new();
            let mut expect = Vec::new();
            let mut expect_oversize = 0;
            for (frame, framing) in &frames {
                match framing {
                    0 => { input.extend_from_slice(frame); input.push(b'\n'); }
                    1 => { input.extend_from_slice(frame); input.extend_from_slice(b"\r\n"); }
                    _ => {
                        input.extend_from_slice(format!("{} ", frame.len()).as_bytes());
                        input.extend_from_slice(frame);
                    }
                }
                if frame.len() > max { expect_oversize += 1 } else { expect.push(frame.clone()) }
            }
            let (got, oversize, fin) = decode(&input, &cuts, max);
            prop_assert_eq!(got, expect);
            prop_assert_eq!(oversize, expect_oversize);
            prop_assert_eq!(fin, Finish::Clean);
        }

        #[test]
        fn garbage_never_panics_and_stays_bounded(
            input in proptest::collection::vec(any::<u8>(), 0..4000),
            cuts in proptest::collection::vec(1usize..512, 1..8),
        ) {
            let (frames, _, _) = decode(&input, &cuts, 128);
            for f in frames {
                prop_assert!(f.len() <= 128);
            }
        }
    }
}
