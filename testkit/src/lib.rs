//! testkit: the test infrastructure that qbroker's integration tests and
//! loadgen share. Each stand-in runs on loopback only and cleans up after
//! itself.
//!
//! # Layout
//!
//! - [`pki`]: a CA made for the run, a server certificate for loopback and a
//!   client certificate signed by it.
//! - [`https`]: the server side of the HTTPS stand-ins: connections served
//!   until a stop that waits for them to be gone.
//! - [`qumulo`]: a Qumulo REST API stand-in (login, ACLs, attributes, audit
//!   settings) over the files a test scripts or loadgen simulates.
//! - [`rabbitmq`]: a private RabbitMQ node (Debian's rabbitmq-server) with
//!   its own name, ports and directory; a consumer that keeps every delivery.
//! - [`process`]: the broker binary as a child (`run`, `stdin`), signals,
//!   bounded waits for an exit, log fields and metric samples.
//! - [`net`]: free loopback ports, a plain HTTP GET.
//! - [`wait`]: bounded waits for a condition instead of fixed sleeps.
//!
//! What loadgen runs at run time (the PKI, the Qumulo API, RabbitMQ) returns
//! errors; the helpers only tests use panic, as a test would.

#![forbid(unsafe_code)]

pub mod https;
pub mod net;
pub mod pki;
pub mod process;
pub mod qumulo;
pub mod rabbitmq;
pub mod wait;

pub use wait::{wait_for, wait_until};

/// A current-thread tokio runtime, for blocking code that needs to run one
/// future (an AMQP or HTTPS client call).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}
