//! TLS syslog input (RFC 5425) over loopback: relays with a client certificate
//! deliver like plain TCP nodes (same cluster rules, same sequence), and clients
//! without a valid certificate, plain text, silence and garbage are refused,
//! closed and counted.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// A CA with a server certificate for loopback and a client certificate, as PEM
/// files in `dir`.
struct Ca {
    ca_der: CertificateDer<'static>,
    ca_file: PathBuf,
    cert_file: PathBuf,
    key_file: PathBuf,
    client_chain: Vec<CertificateDer<'static>>,
    client_key: PrivateKeyDer<'static>,
}

fn ca(dir: &Path, name: &str) -> Ca {
    let pki = testkit::pki::Pki::new(name).unwrap();
    let write = |file: &str, text: &str| {
        let path = dir.join(format!("{name}-{file}"));
        std::fs::write(&path, text).unwrap();
        path
    };
    Ca {
        ca_der: pki.ca_der.clone(),
        ca_file: write("ca.pem", &pki.ca_pem),
        cert_file: write("server.pem", &pki.cert_pem),
        key_file: write("server.key", &pki.key_pem),
        client_chain: vec![pki.client_cert_der.clone()],
        client_key: pki.client_key(),
    }
}

fn tls_config_text(sink: &Sink, dir: &Path, ca: &Ca) -> String {
    format!(
        "{}\n[syslog_tls]\nlisten = \"127.0.0.1:0\"\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\nhandshake_timeout_secs = 1\n",
        config_text(sink, dir, ""),
        ca.cert_file.display(),
        ca.key_file.display(),
        ca.ca_file.display()
    )
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A TLS client that trusts `server_ca`, presenting `client` (chain, key) if given.
fn tls_connect(
    addr: SocketAddr,
    server_ca: &CertificateDer<'static>,
    client: Option<(&[CertificateDer<'static>], &PrivateKeyDer<'static>)>,
) -> Tls {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(server_ca.clone()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain.to_vec(), key.clone_key())
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let conn =
        rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("127.0.0.1").unwrap())
            .unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tcp.set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

/// Whether the server ended the session (alert, close or reset) within `timeout`.
fn refused_within(tls: &mut Tls, timeout: Duration) -> bool {
    tls.sock.set_read_timeout(Some(timeout)).unwrap();
    let mut buf = [0u8; 16];
    match tls.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

fn frames(host: &str, node: u32, n: u64, octet: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..n {
        let msg = if i % 2 == 0 {
            json_frame(host, "fs_write_data", "/tls/a", &file_id(node, i))
        } else {
            csv_frame(host, "fs_read_data", "/tls/b", &file_id(node, i))
        };
        out.extend(framed(&msg, octet));
    }
    out
}

#[test]
fn relays_with_client_certificates_deliver_like_plain_tcp_nodes() {
    let sink = Sink::start();
    let dir = tempfile::tempdir().unwrap();
    let pki = ca(dir.path(), "site");
    let broker = Broker::start(&tls_config_text(&sink, dir.path(), &pki));
    let tls_addr = broker.syslog_tls.expect("a TLS listener");
    let client = (&pki.client_chain[..], &pki.client_key);
    let n = 300u64;

    // sec-1: newline framing, ends with close_notify. sec-2: octet counting,
    // ends with a bare TCP close (a relay that does not say goodbye). sec-3:
    // plain TCP, same cluster: all three share one sequence across threads.
    let mut a = tls_connect(tls_addr, &pki.ca_der, Some(client));
    let mut b = tls_connect(tls_addr, &pki.ca_der, Some(client));
    let plain = broker.syslog;
    let t = std::thread::spawn(move || {
        let mut s = TcpStream::connect(plain).unwrap();
        s.write_all(&frames("sec-3", 3, n, false)).unwrap();
    });
    let (fa, fb) = (frames("sec-1", 1, n, false), frames("sec-2", 2, n, true));
    // Interleaved, in pieces that cut frames anywhere.
    let (mut pa, mut pb) = (fa.chunks(997), fb.chunks(1009));
    loop {
        let (x, y) = (pa.next(), pb.next());
        if x.is_none() && y.is_none() {
            break;
        }
        if let Some(x) = x {
            a.write_all(x).unwrap();
        }
        if let Some(y) = y {
            b.write_all(y).unwrap();
        }
    }
    a.flush().unwrap();
    b.flush().unwrap();
    // A graceful end: close_notify, then wait for the broker's close. (Dropping
    // the socket at once, with the session tickets the server sent still unread,
    // would make the kernel reset the connection and throw away what the broker
    // had not read yet.)
    a.conn.send_close_notify();
    a.flush().unwrap();
    let mut rest = Vec::new();
    let _ = a.read_to_end(&mut rest);
    drop(a);
    // A bare TCP close: FIN after everything, no close_notify.
    b.sock.shutdown(std::net::Shutdown::Write).unwrap();
    let _ = b.sock.read_to_end(&mut rest);
    drop(b);
    t.join().unwrap();

    wait_for(Duration::from_secs(20), || {
        (sink.events().len() as u64 >= 3 * n).then_some(())
    });
    std::thread::sleep(Duration::from_millis(200));
    let events = sink.events();
    assert_eq!(events.len() as u64, 3 * n, "every event once");
    let per_cluster = check_batches(&sink);
    assert_eq!(per_cluster.keys().collect::<Vec<_>>(), ["sec"]);
    // Per node, seq follows sending order; across nodes, seq is unique.
    let mut by_seq: Vec<&serde_json::Value> = per_cluster["sec"].iter().collect();
    by_seq.sort_by_key(|e| e["seq"].as_u64().unwrap());
    let mut last: BTreeMap<u32, u64> = BTreeMap::new();
    for e in by_seq {
        let (node, i) = identity(e);
        if let Some(prev) = last.insert(node, i) {
            assert!(prev < i, "node {node}: {i} after {prev}");
        }
    }
    assert_eq!(last.len(), 3);
    let text = broker.metrics_text();
    for node in ["sec-1", "sec-2", "sec-3"] {
        assert_eq!(
            metric_value(
                &text,
                &format!("qbroker_node_frames_total{{cluster=\"sec\",node=\"{node}\"}}")
            ),
            Some(n as f64),
            "{node}"
        );
    }
    assert_eq!(
        metric_value(&text, "qbroker_tls_handshake_failures_total"),
        Some(0.0)
    );
    assert_eq!(metric_value(&text, "qbroker_read_errors_total"), Some(0.0));
    assert_eq!(
        metric_value(&text, "qbroker_frames_partial_total"),
        Some(0.0)
    );
    broker.stop();
}

#[test]
fn clients_without_a_valid_certificate_and_hostile_ones_are_refused() {
    let sink = Sink::start();
    let dir = tempfile::tempdir().unwrap();
    let pki = ca(dir.path(), "site");
    let rogue = ca(dir.path(), "rogue");
    let broker = Broker::start(&format!(
        "{}\n[ingest]\nmax_bad_frames = 16\n",
        tls_config_text(&sink, dir.path(), &pki)
    ));
    let addr = broker.syslog_tls.unwrap();
    let frame = framed(
        &json_frame("bad-1", "fs_create_file", "/x", &file_id(1, 0)),
        false,
    );

    // No certificate; a certificate of another CA. With TLS 1.3 the client may
    // think the handshake done: the server's refusal shows on the first read.
    for client in [None, Some((&rogue.client_chain[..], &rogue.client_key))] {
        let mut tls = tls_connect(addr, &pki.ca_der, client);
        let _ = tls.write_all(&frame);
        assert!(refused_within(&mut tls, Duration::from_secs(5)));
    }
    // Plain syslog to the TLS port.
    let mut plain = TcpStream::connect(addr).unwrap();
    plain.write_all(&frame).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 256];
    let mut closed = false;
    for _ in 0..4 {
        match plain.read(&mut buf) {
            Ok(0) | Err(_) => {
                closed = true;
                break;
            }
            Ok(_) => {} // a TLS alert, then the close
        }
    }
    assert!(closed, "plain text on the TLS port is closed");
    // Silence: the handshake deadline (1 s) closes it.
    let mut silent = TcpStream::connect(addr).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let started = Instant::now();
    assert!(matches!(silent.read(&mut buf), Ok(0) | Err(_)));
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_secs(3),
        "silent TLS client closed after {waited:?}"
    );
    wait_for(Duration::from_secs(5), || {
        (broker.metric("qbroker_tls_handshake_failures_total")? == 4.0).then_some(())
    });

    // A valid relay that sends garbage: the frame policy applies over TLS too.
    let mut tls = tls_connect(
        addr,
        &pki.ca_der,
        Some((&pki.client_chain[..], &pki.client_key)),
    );
    tls.write_all(&frame).unwrap();
    let mut seed = 99u64;
    let junk: Vec<u8> = (0..256 * 1024)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 24) as u8
        })
        .collect();
    for piece in junk.chunks(4096) {
        if tls.write_all(piece).is_err() {
            break;
        }
    }
    let _ = tls.flush();
    assert!(refused_within(&mut tls, Duration::from_secs(5)));
    wait_for(Duration::from_secs(5), || {
        (broker.metric("qbroker_connections_closed_bad_frames_total")? == 1.0).then_some(())
    });
    // Only the relay's one good frame became an event.
    wait_for(Duration::from_secs(5), || {
        (sink.events().len() == 1).then_some(())
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(sink.events().len(), 1);
    broker.stop();
}
