//! discard: a syslog TCP server that reads and throws away, counting bytes
//! and frames; what `send` measures its own rate against.
//!
//! Framing is detected per connection from the first byte, as RFC 6587
//! suggests (a digit: octet counting; otherwise newline-terminated).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::sync::watch;

#[derive(Default, Debug)]
pub struct DiscardStats {
    pub connections: AtomicU64,
    pub bytes: AtomicU64,
    pub frames: AtomicU64,
    /// connections closed because their framing broke
    pub framing_errors: AtomicU64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Start,
    Lf,
    /// octet counting: reading the length (value so far, digits so far)
    Len(usize, u8),
    /// octet counting: this many message bytes left
    Body(usize),
}

/// Counts frames in a byte stream fed in arbitrary pieces.
#[derive(Debug)]
pub struct Deframer {
    state: State,
}

impl Default for Deframer {
    fn default() -> Self {
        Deframer {
            state: State::Start,
        }
    }
}

impl Deframer {
    /// Complete frames in `buf` (and in what came before it).
    pub fn feed(&mut self, mut buf: &[u8]) -> anyhow::Result<u64> {
        let mut frames = 0;
        while !buf.is_empty() {
            match self.state {
                State::Start => {
                    self.state = if buf[0].is_ascii_digit() {
                        State::Len(0, 0)
                    } else {
                        State::Lf
                    };
                }
                State::Lf => {
                    frames += memchr::memchr_iter(b'\n', buf).count() as u64;
                    return Ok(frames);
                }
                State::Len(v, digits) => {
                    let b = buf[0];
                    buf = &buf[1..];
                    self.state = match b {
                        b'0'..=b'9' if digits < 9 => {
                            State::Len(v * 10 + (b - b'0') as usize, digits + 1)
                        }
                        b' ' if digits > 0 && v > 0 => State::Body(v),
                        _ => bail!("bad octet-counting length byte {b:#04x}"),
                    };
                }
                State::Body(left) => {
                    let n = left.min(buf.len());
                    buf = &buf[n..];
                    if n == left {
                        frames += 1;
                        self.state = State::Len(0, 0);
                    } else {
                        self.state = State::Body(left - n);
                    }
                }
            }
        }
        Ok(frames)
    }
}

/// Accepts and drains connections until `stop` turns true.
pub async fn run(listener: TcpListener, stats: Arc<DiscardStats>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((mut tcp, _)) => {
                    stats.connections.fetch_add(1, Ordering::Relaxed);
                    let stats = stats.clone();
                    let mut stop = stop.clone();
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 256 << 10];
                        let mut d = Deframer::default();
                        loop {
                            let n = tokio::select! {
                                r = tcp.read(&mut buf) => match r { Ok(0) | Err(_) => break, Ok(n) => n },
                                _ = stop.changed() => break,
                            };
                            stats.bytes.fetch_add(n as u64, Ordering::Relaxed);
                            match d.feed(&buf[..n]) {
                                Ok(f) => { stats.frames.fetch_add(f, Ordering::Relaxed); }
                                Err(e) => {
                                    tracing::warn!(error = %e, "closing connection");
                                    stats.framing_errors.fetch_add(1, Ordering::Relaxed);
                                    break;
                                }
                            }
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stop.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lf_frames_across_pieces() {
        let mut d = Deframer::default();
        assert_eq!(d.feed(b"<14>1 a\n<14>1 b").unwrap(), 1);
        assert_eq!(d.feed(b"\n<14>1 c\n").unwrap(), 2);
    }

    #[test]
    fn octet_frames_across_pieces() {
        let mut d = Deframer::default();
        let data = b"5 hello11 hello world3 abc";
        let mut n = 0;
        for piece in data.chunks(2) {
            n += d.feed(piece).unwrap();
        }
        assert_eq!(n, 3);
        assert!(Deframer::default().feed(b"5x").is_err());
    }
}
