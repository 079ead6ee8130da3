//! net: loopback ports and a plain HTTP GET.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

/// A loopback address nothing listened on a moment ago: bound to port 0 and
/// released, for a server that must be told its port (RabbitMQ, a broker's
/// configuration). Another process may take it meanwhile; the kernel hands
/// out ports in turn, so that is rare.
pub fn free_addr() -> std::io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// The port of [`free_addr`].
pub fn free_port() -> std::io::Result<u16> {
    Ok(free_addr()?.port())
}

/// A plain HTTP/1.0 GET on loopback: the body (empty when the answer has none).
/// Panics when the server cannot be reached or does not answer within 5 s.
pub fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connecting {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("a read timeout");
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").expect("sending a GET");
    let mut out = String::new();
    s.read_to_string(&mut out)
        .unwrap_or_else(|e| panic!("reading GET {path} from {addr}: {e}"));
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}
