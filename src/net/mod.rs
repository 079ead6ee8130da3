//! net: TLS and HTTP/1.1 connections, made one way for every part of the broker.
//!
//! Every outgoing TLS connection (HTTPS and AMQP targets, the clusters' REST
//! APIs, `qbroker doctor`) takes its rustls configuration from [`ClientTls`],
//! and every TLS listener (TLS syslog, the control API) from [`ServerTls`]:
//! rustls on ring, its safe default protocol versions, and the ALPN name the
//! protocol has ([`Alpn`]). A client trusts one of [`Trust`]: the system
//! roots; PEM roots; PEM roots that also pin an operator's self-signed server
//! certificate ([`verify`]); or, when asked in so many words, any certificate.
//! Every HTTP/1.1 client connection is opened by an [`HttpsConnector`]: TCP,
//! then TLS unless the URL said `http://`, then the hyper handshake, within the
//! connect timeout.
//!
//! Errors ([`TlsError`]) name the file or field a setting came from, never its
//! content; each caller says whose setting it is ("target x", "cluster y",
//! "syslog_tls.cert_file").

pub mod https;
pub mod tls;
pub mod verify;

pub use https::{Conn, ConnectError, HttpsConnector};
pub use tls::{
    server_name, Alpn, ClientCa, ClientTls, Identity, Pem, PemFile, ServerTls, TlsError, Trust,
};
pub use verify::{describe, describe_rustls};
