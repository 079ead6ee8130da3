//! record: the on-disk encoding of one spooled batch.
//!
//! ```text
//! header  (12 bytes, little endian)
//!   magic      u32   "QSR1"
//!   len        u32   payload bytes
//!   crc        u32   crc32c of the payload
//! payload (len bytes)
//!   id         u64   record id, dense and increasing
//!   sealed_ms  u64   Unix milliseconds when the record was appended
//!   events     u32
//!   batch_id   u32 length + UTF-8 bytes
//!   cluster    u32 length + UTF-8 bytes
//!   received   u32 count + count * (u64 receive time in Unix us, u32 events)
//!   body       the rest of the payload
//! ```
//!
//! The id comes first so the appender can checksum everything after it before it
//! takes the append lock, and combine that with the id's checksum under the lock
//! ([`Shift`]: one 32-step product there, the rest done before the lock).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use bytes::Bytes;

use super::NewBatch;

pub(crate) const MAGIC: [u8; 4] = *b"QSR1";
pub(crate) const HEADER_LEN: u64 = 12;
/// id + sealed + events + three length fields.
pub(crate) const MIN_PAYLOAD: u32 = 8 + 8 + 4 + 4 + 4 + 4;
/// Larger payloads are refused on append and read as corrupt lengths at recovery.
pub(crate) const MAX_PAYLOAD: u32 = 256 << 20;

/// A record encoded except for its id, ready to be sealed under the append lock.
pub(crate) struct Encoded {
    buf: Vec<u8>,
    /// crc32c of the payload after the id.
    tail_crc: u32,
    /// Moves the id's crc past the bytes after it.
    shift: Shift,
    pub(crate) sealed_ms: u64,
}

/// CRC-32C (Castagnoli), reflected.
const POLY: u32 = 0x82F6_3B78;

/// `a * b mod P` over GF(2), reflected (bit 31 is x^0), as zlib computes it.
const fn multmodp(a: u32, mut b: u32) -> u32 {
    let mut m = 1u32 << 31;
    let mut p = 0;
    loop {
        if a & m != 0 {
            p ^= b;
            if a & (m - 1) == 0 {
                break;
            }
        }
        m >>= 1;
        b = if b & 1 != 0 { (b >> 1) ^ POLY } else { b >> 1 };
    }
    p
}

/// `x^(2^k) mod P` for k in 0..32.
const X2N: [u32; 32] = {
    let mut t = [0u32; 32];
    let mut p = 1u32 << 30; // x^1
    let mut k = 0;
    while k < 32 {
        t[k] = p;
        p = multmodp(p, p);
        k += 1;
    }
    t
};

/// The operator "followed by `n` bytes": with it, the crc32c of `a ++ b` is
/// `shift.apply(crc(a)) ^ crc(b)` for any `b` of `n` bytes. What
/// `crc32c::crc32c_combine` computes by squaring 32x32 matrices on every call
/// (it took more time than checksumming the batch), here `x^(8n) mod P` built
/// from a table in O(log n) products, once per record and before the lock.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shift(u32);

impl Shift {
    pub(crate) fn bytes(n: usize) -> Shift {
        let (mut p, mut n, mut k) = (1u32 << 31, n as u64, 3usize);
        while n != 0 {
            if n & 1 != 0 {
                p = multmodp(X2N[k & 31], p);
            }
            n >>= 1;
            k += 1;
        }
        Shift(p)
    }

    pub(crate) fn apply(self, crc: u32) -> u32 {
        multmodp(self.0, crc)
    }
}

impl Encoded {
    /// Encodes `batch` into `buf` (emptied first); `None` when the payload would
    /// exceed [`MAX_PAYLOAD`].
    pub(crate) fn new(batch: &NewBatch<'_>, sealed_ms: u64, mut buf: Vec<u8>) -> Option<Encoded> {
        let payload = MIN_PAYLOAD as usize
            + batch.batch_id.len()
            + batch.cluster.len()
            + batch.received.len() * 12
            + batch.body.len();
        if payload > MAX_PAYLOAD as usize {
            return None;
        }
        buf.clear();
        buf.reserve(HEADER_LEN as usize + payload);
        buf.extend_from_slice(&MAGIC);
        buf.extend_from_slice(&(payload as u32).to_le_bytes());
        buf.extend_from_slice(&[0; 4]); // crc, set by `seal`
        buf.extend_from_slice(&[0; 8]); // id, set by `seal`
        buf.extend_from_slice(&sealed_ms.to_le_bytes());
        buf.extend_from_slice(&batch.events.to_le_bytes());
        buf.extend_from_slice(&(batch.batch_id.len() as u32).to_le_bytes());
        buf.extend_from_slice(batch.batch_id.as_bytes());
        buf.extend_from_slice(&(batch.cluster.len() as u32).to_le_bytes());
        buf.extend_from_slice(batch.cluster.as_bytes());
        buf.extend_from_slice(&(batch.received.len() as u32).to_le_bytes());
        for &(us, n) in batch.received {
            buf.extend_from_slice(&us.to_le_bytes());
            buf.extend_from_slice(&n.to_le_bytes());
        }
        buf.extend_from_slice(batch.body);
        debug_assert_eq!(buf.len(), HEADER_LEN as usize + payload);
        let tail = &buf[HEADER_LEN as usize + 8..];
        let (tail_crc, shift) = (crc32c::crc32c(tail), Shift::bytes(tail.len()));
        Some(Encoded {
            buf,
            tail_crc,
            shift,
            sealed_ms,
        })
    }

    /// Total bytes on disk.
    pub(crate) fn len(&self) -> u64 {
        self.buf.len() as u64
    }

    /// Stamps the id and the checksum.
    pub(crate) fn seal(&mut self, id: u64) -> &[u8] {
        let id_bytes = id.to_le_bytes();
        let h = HEADER_LEN as usize;
        self.buf[h..h + 8].copy_from_slice(&id_bytes);
        let crc = self.shift.apply(crc32c::crc32c(&id_bytes)) ^ self.tail_crc;
        self.buf[8..12].copy_from_slice(&crc.to_le_bytes());
        &self.buf
    }

    /// The encoded record, its buffer going back to `home` once dropped.
    pub(crate) fn into_bytes(self, home: &std::sync::Arc<crate::model::Recycler>) -> Bytes {
        home.freeze(self.buf)
    }
}

/// The fields of a verified payload, borrowed from it.
#[derive(Debug)]
pub(crate) struct Parsed<'a> {
    pub(crate) id: u64,
    pub(crate) sealed_ms: u64,
    pub(crate) events: u32,
    pub(crate) batch_id: &'a str,
    pub(crate) cluster: &'a str,
    received: &'a [u8],
    /// Offset of the body within the payload.
    body_at: usize,
}

impl Parsed<'_> {
    pub(crate) fn received(&self) -> Vec<(u64, u32)> {
        self.received
            .chunks_exact(12)
            .map(|c| {
                let us = u64::from_le_bytes(c[..8].try_into().expect("8 bytes"));
                let n = u32::from_le_bytes(c[8..].try_into().expect("4 bytes"));
                (us, n)
            })
            .collect()
    }
}

/// A decoded record, owning its fields; `body` shares the read buffer.
#[derive(Debug)]
pub(crate) struct Decoded {
    pub(crate) id: u64,
    pub(crate) sealed_ms: u64,
    pub(crate) events: u32,
    pub(crate) batch_id: String,
    pub(crate) cluster: String,
    pub(crate) received: Vec<(u64, u32)>,
    pub(crate) body: Bytes,
}

struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let s = self.b.get(self.at..end)?;
        self.at = end;
        Some(s)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn str(&mut self) -> Option<&'a str> {
        let n = self.u32()? as usize;
        std::str::from_utf8(self.take(n)?).ok()
    }
}

/// Parses a payload whose checksum already matched; `None` when its structure is
/// inconsistent.
pub(crate) fn parse(payload: &[u8]) -> Option<Parsed<'_>> {
    let mut c = Cursor { b: payload, at: 0 };
    let id = c.u64()?;
    let sealed_ms = c.u64()?;
    let events = c.u32()?;
    let batch_id = c.str()?;
    let cluster = c.str()?;
    let n = c.u32()? as usize;
    let received = c.take(n.checked_mul(12)?)?;
    Some(Parsed {
        id,
        sealed_ms,
        events,
        batch_id,
        cluster,
        received,
        body_at: c.at,
    })
}

/// Decodes a verified payload held in `payload`.
pub(crate) fn decode(payload: Bytes) -> Option<Decoded> {
    let p = parse(&payload)?;
    Some(Decoded {
        id: p.id,
        sealed_ms: p.sealed_ms,
        events: p.events,
        batch_id: p.batch_id.to_owned(),
        cluster: p.cluster.to_owned(),
        received: p.received(),
        body: payload.slice(p.body_at..),
    })
}

/// What a header says, before the payload is looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Header {
    /// Plausible: the payload is `len` bytes with checksum `crc`.
    Ok { len: u32, crc: u32 },
    /// Wrong magic, or a length no record can have.
    Bad,
}

pub(crate) fn parse_header(h: &[u8; HEADER_LEN as usize]) -> Header {
    if h[..4] != MAGIC {
        return Header::Bad;
    }
    let len = u32::from_le_bytes(h[4..8].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes"));
    if !(MIN_PAYLOAD..=MAX_PAYLOAD).contains(&len) {
        return Header::Bad;
    }
    Header::Ok { len, crc }
}

/// Why a record could not be read.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The bytes are not a valid record (bad header, checksum or structure, or
    /// running past `limit`).
    Corrupt(&'static str),
    Io(io::Error),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Io(e)
    }
}

/// Reads and verifies the record at `off`, which must end at or before `limit`.
/// Returns its total length on disk and its payload.
pub(crate) fn read_payload_at(
    file: &File,
    off: u64,
    limit: u64,
) -> Result<(u64, Bytes), ReadError> {
    if limit.saturating_sub(off) < HEADER_LEN {
        return Err(ReadError::Corrupt("truncated header"));
    }
    let mut h = [0u8; HEADER_LEN as usize];
    file.read_exact_at(&mut h, off)?;
    let Header::Ok { len, crc } = parse_header(&h) else {
        return Err(ReadError::Corrupt("bad header"));
    };
    let total = HEADER_LEN + u64::from(len);
    if limit - off < total {
        return Err(ReadError::Corrupt("record runs past the end"));
    }
    let mut payload = vec![0u8; len as usize];
    file.read_exact_at(&mut payload, off + HEADER_LEN)?;
    if crc32c::crc32c(&payload) != crc {
        return Err(ReadError::Corrupt("checksum mismatch"));
    }
    Ok((total, Bytes::from(payload)))
}

/// Reads, verifies and decodes the record at `off`.
pub(crate) fn read_at(file: &File, off: u64, limit: u64) -> Result<(u64, Decoded), ReadError> {
    let (total, payload) = read_payload_at(file, off, limit)?;
    let d = decode(payload).ok_or(ReadError::Corrupt("inconsistent payload"))?;
    Ok((total, d))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch<'a>(body: &'a [u8], received: &'a [(u64, u32)]) -> NewBatch<'a> {
        NewBatch {
            batch_id: "b-1",
            cluster: "qumulo-a",
            events: 7,
            received,
            body,
        }
    }

    #[test]
    fn the_shift_combines_as_checksumming_the_whole_does() {
        let data: Vec<u8> = (0..70_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for (cut, end) in [
            (0, 0),
            (8, 8),
            (8, 9),
            (8, 100),
            (3, 4_097),
            (8, 65_544),
            (1, 70_000),
        ] {
            let (a, b) = (&data[..cut], &data[cut..end]);
            let whole = crc32c::crc32c(&data[..end]);
            let combined = Shift::bytes(b.len()).apply(crc32c::crc32c(a)) ^ crc32c::crc32c(b);
            assert_eq!(combined, whole, "{cut}..{end}");
            assert_eq!(
                combined,
                crc32c::crc32c_combine(crc32c::crc32c(a), crc32c::crc32c(b), b.len())
            );
        }
    }

    #[test]
    fn encode_seal_decode_round_trip() {
        let recv = [(1_700_000_000_000_000u64, 3u32), (1_700_000_000_000_001, 4)];
        let mut e = Encoded::new(&batch(b"{\"events\":[]}", &recv), 42, Vec::new()).unwrap();
        let len = e.len();
        let bytes = e.seal(99).to_vec();
        assert_eq!(bytes.len() as u64, len);
        let h: [u8; 12] = bytes[..12].try_into().unwrap();
        let Header::Ok { len: plen, crc } = parse_header(&h) else {
            panic!("bad header")
        };
        assert_eq!(u64::from(plen) + HEADER_LEN, len);
        // The combined checksum equals a checksum of the whole payload.
        assert_eq!(crc, crc32c::crc32c(&bytes[12..]));
        let d = decode(Bytes::copy_from_slice(&bytes[12..])).unwrap();
        assert_eq!(d.id, 99);
        assert_eq!(d.sealed_ms, 42);
        assert_eq!(d.events, 7);
        assert_eq!(d.batch_id, "b-1");
        assert_eq!(d.cluster, "qumulo-a");
        assert_eq!(d.received, recv.to_vec());
        assert_eq!(&d.body[..], b"{\"events\":[]}");
    }

    #[test]
    fn resealing_changes_only_id_and_crc() {
        let mut e = Encoded::new(&batch(b"x", &[]), 1, Vec::new()).unwrap();
        let a = e.seal(1).to_vec();
        let b = e.seal(2).to_vec();
        assert_ne!(a[8..20], b[8..20]);
        assert_eq!(a[20..], b[20..]);
        assert_eq!(
            u32::from_le_bytes(b[8..12].try_into().unwrap()),
            crc32c::crc32c(&b[12..])
        );
    }

    #[test]
    fn bad_headers_are_rejected() {
        let mut h = [0u8; 12];
        assert_eq!(parse_header(&h), Header::Bad);
        h[..4].copy_from_slice(&MAGIC);
        h[4..8].copy_from_slice(&(MIN_PAYLOAD - 1).to_le_bytes());
        assert_eq!(parse_header(&h), Header::Bad);
        h[4..8].copy_from_slice(&(MAX_PAYLOAD + 1).to_le_bytes());
        assert_eq!(parse_header(&h), Header::Bad);
        h[4..8].copy_from_slice(&MIN_PAYLOAD.to_le_bytes());
        assert!(matches!(parse_header(&h), Header::Ok { .. }));
    }

    #[test]
    fn parse_never_panics_on_short_or_lying_payloads() {
        let mut e = Encoded::new(&batch(b"body", &[(1, 1)]), 5, Vec::new()).unwrap();
        let full = e.seal(3)[12..].to_vec();
        for cut in 0..full.len() {
            let _ = parse(&full[..cut]);
        }
        // A huge received count must not overflow or allocate.
        let mut lying = full.clone();
        let at = 8 + 8 + 4 + 4 + 3 + 4 + 8;
        lying[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse(&lying).is_none());
    }
}
