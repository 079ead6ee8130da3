//! numbers and timestamps: decimal, hex and date-time text written straight
//! into byte buffers (the sender patches syslog timestamps in place).

pub(super) const DIGITS2: &[u8; 200] = b"0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";

pub fn push_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    while v >= 100 {
        let d = (v % 100) as usize * 2;
        v /= 100;
        i -= 2;
        buf[i..i + 2].copy_from_slice(&DIGITS2[d..d + 2]);
    }
    if v >= 10 {
        let d = v as usize * 2;
        i -= 2;
        buf[i..i + 2].copy_from_slice(&DIGITS2[d..d + 2]);
    } else {
        i -= 1;
        buf[i] = b'0' + v as u8;
    }
    out.extend_from_slice(&buf[i..]);
}

pub(super) fn push_u64_padded(out: &mut Vec<u8>, v: u64, width: usize) {
    let digits = v.checked_ilog10().map_or(1, |d| d as usize + 1);
    for _ in digits..width {
        out.push(b'0');
    }
    push_u64(out, v);
}

pub fn push_u128(out: &mut Vec<u8>, v: u128) {
    const E19: u128 = 10_000_000_000_000_000_000;
    if v <= u64::MAX as u128 {
        push_u64(out, v as u64);
    } else {
        push_u128(out, v / E19);
        push_u64_padded(out, (v % E19) as u64, 19);
    }
}

pub(super) fn push_hex(out: &mut Vec<u8>, v: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 16];
    let mut i = buf.len();
    let mut v = v;
    loop {
        i -= 1;
        buf[i] = HEX[(v & 15) as usize];
        v >>= 4;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// Length of the syslog timestamp the sender writes and later patches:
/// `2026-01-27T14:12:23.955812Z` (microseconds, as Qumulo writes it).
pub const TS_LEN: usize = 27;
/// Offset of the timestamp inside a frame's syslog message (`<14>1 `).
pub const TS_OFFSET: usize = 6;

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// (year, month, day) to days since 1970-01-01.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

pub(super) fn push_date_time(out: &mut Vec<u8>, secs: u64) {
    let (y, mo, d) = civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    push_u64_padded(out, y as u64, 4);
    out.push(b'-');
    push_u64_padded(out, mo as u64, 2);
    out.push(b'-');
    push_u64_padded(out, d as u64, 2);
    out.push(b'T');
    push_u64_padded(out, s / 3600, 2);
    out.push(b':');
    push_u64_padded(out, s / 60 % 60, 2);
    out.push(b':');
    push_u64_padded(out, s % 60, 2);
}

/// The syslog timestamp for `unix_us` microseconds since the epoch.
pub fn syslog_ts(unix_us: u64) -> [u8; TS_LEN] {
    let mut v = Vec::with_capacity(TS_LEN);
    push_date_time(&mut v, unix_us / 1_000_000);
    v.push(b'.');
    push_u64_padded(&mut v, unix_us % 1_000_000, 6);
    v.push(b'Z');
    v.try_into().expect("timestamp is 27 bytes until year 9999")
}

pub(super) fn push_ns_time(out: &mut Vec<u8>, unix_ns: u64) {
    push_date_time(out, unix_ns / 1_000_000_000);
    out.push(b'.');
    push_u64_padded(out, unix_ns % 1_000_000_000, 9);
    out.push(b'Z');
}

/// Microseconds since the epoch, now.
pub fn now_unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}
