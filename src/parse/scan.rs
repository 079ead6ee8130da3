//! scan: byte searches tuned for the short fields of an audit record.
//!
//! Most searches end within a few bytes (header tokens, CSV fields, JSON keys),
//! where `memchr`'s dispatch costs more than the search itself, and even paths are
//! short. These look at eight bytes per step (SWAR), inline, with no set-up.
//! (`memchr` stays the reference in the tests.)

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// High bit set in every byte of `w` that is zero, and possibly in bytes above (more
/// significant than) a zero byte; so the lowest set bit marks exactly the first zero byte.
#[inline(always)]
fn zero_bytes(w: u64) -> u64 {
    w.wrapping_sub(LO) & !w & HI
}

#[inline(always)]
fn word(c: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(c);
    u64::from_le_bytes(a)
}

#[inline(always)]
fn first(mask: u64) -> usize {
    (mask.trailing_zeros() / 8) as usize
}

/// The first index of `c` in `hay`.
#[inline]
pub(crate) fn find(hay: &[u8], c: u8) -> Option<usize> {
    let pat = LO * u64::from(c);
    let mut chunks = hay.chunks_exact(8);
    let mut i = 0;
    for w in &mut chunks {
        let m = zero_bytes(word(w) ^ pat);
        if m != 0 {
            return Some(i + first(m));
        }
        i += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| b == c)
        .map(|k| i + k)
}

/// The first index of `a` or `b` in `hay`.
#[inline]
pub(crate) fn find2(hay: &[u8], a: u8, b: u8) -> Option<usize> {
    let (pa, pb) = (LO * u64::from(a), LO * u64::from(b));
    let mut chunks = hay.chunks_exact(8);
    let mut i = 0;
    for w in &mut chunks {
        let w = word(w);
        let m = zero_bytes(w ^ pa) | zero_bytes(w ^ pb);
        if m != 0 {
            return Some(i + first(m));
        }
        i += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&x| x == a || x == b)
        .map(|k| i + k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agrees_with_memchr() {
        for len in 0..150 {
            for at in 0..=len {
                let mut hay = vec![b'x'; len];
                if at < len {
                    hay[at] = b',';
                }
                let want = (at < len).then_some(at);
                assert_eq!(find(&hay, b','), want);
                assert_eq!(find2(&hay, b'"', b','), want);
                assert_eq!(find2(&hay, b',', b'"'), want);
                // a second match later, and bytes that differ from the needle by one bit
                if at + 1 < len {
                    hay[at + 1] = b'"';
                    assert_eq!(find2(&hay, b'"', b','), want);
                }
            }
        }
        // false positives of the zero-byte trick must not move the first match
        for (hay, want) in [
            (&[0x01u8, 0x2c, 0x2c, 0xff, 0, 0, 0, 0x2d][..], Some(1)),
            (&[0x2d, 0x2b, 0xac, 0x2c, 1, 2, 3, 4, 5][..], Some(3)),
            (&[0x80, 0x81, 0x2d, 0xfe, 0x2c][..], Some(4)),
        ] {
            assert_eq!(find(hay, 0x2c), want);
            assert_eq!(find(hay, 0x2c), memchr::memchr(0x2c, hay));
        }
    }

    proptest::proptest! {
        #[test]
        fn matches_memchr(hay in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200), a: u8, b: u8) {
            proptest::prop_assert_eq!(find(&hay, a), memchr::memchr(a, &hay));
            proptest::prop_assert_eq!(find2(&hay, a, b), memchr::memchr2(a, b, &hay));
        }

        #[test]
        fn matches_memchr_sparse(hay in proptest::collection::vec(proptest::sample::select(vec![0u8, 1, 0x22, 0x23, 0x5c, 0x5d, 0x80, 0xff, b'a']), 0..120)) {
            proptest::prop_assert_eq!(find(&hay, 0x22), memchr::memchr(0x22, &hay));
            proptest::prop_assert_eq!(find2(&hay, 0x22, 0x5c), memchr::memchr2(0x22, 0x5c, &hay));
        }
    }
}
