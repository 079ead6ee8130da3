//! client: a target's TLS settings and the connector of its lanes.
//!
//! Each egress lane owns one connection and reuses it for every batch (keep-alive)
//! until the target or an error closes it; the next batch then opens a new one
//! with the target's [`Connector`]. The TLS configuration is built once per
//! target, by [`crate::net`]: its CA file or registered certificate (as roots,
//! and as pins: see [`crate::net::verify`]) or else the system roots, an
//! optional client certificate, and ALPN `http/1.1` for HTTPS (none for AMQP).

use rustls::ClientConfig;

use crate::config::TargetConfig;
use crate::net::{Alpn, ClientTls, Identity, Pem, PemFile, TlsError, Trust};

pub use crate::net::{Conn, ConnectError, HttpsConnector as Connector};

/// A target's TLS settings could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("target {target}: {source}")]
pub struct TlsSetupError {
    pub target: String,
    #[source]
    pub source: TlsError,
}

impl TlsSetupError {
    fn of(target: &str) -> impl FnOnce(TlsError) -> TlsSetupError + '_ {
        move |source| TlsSetupError {
            target: target.to_string(),
            source,
        }
    }
}

/// A target's TLS material as PEM text: CA certificates to trust (none: the
/// system roots) and a client certificate chain with its key.
#[derive(Default, Clone, Copy)]
pub struct TlsMaterial<'a> {
    pub ca_pem: Option<&'a [u8]>,
    pub client: Option<(&'a [u8], &'a [u8])>,
}

/// What a target's transport names in ALPN.
fn alpn(cfg: &TargetConfig) -> Alpn {
    if cfg.amqp.is_some() {
        Alpn::None
    } else {
        Alpn::Http1
    }
}

fn client_tls<'a>(
    ca: Option<Pem<'a>>,
    identity: Option<Identity<'a>>,
    alpn: Alpn,
) -> ClientTls<'a> {
    ClientTls {
        trust: ca.map_or(Trust::System, Trust::RootsOrPinned),
        identity,
        alpn,
    }
}

/// The TLS client configuration of a configured target (its files).
pub fn tls_config(cfg: &TargetConfig) -> Result<ClientConfig, TlsSetupError> {
    let files = || -> Result<_, TlsError> {
        let ca = cfg.ca_file.as_deref().map(PemFile::read).transpose()?;
        let client = match &cfg.client_auth {
            Some((c, k)) => Some((PemFile::read(c)?, PemFile::read(k)?)),
            None => None,
        };
        Ok((ca, client))
    };
    let (ca, client) = files().map_err(TlsSetupError::of(&cfg.name))?;
    client_tls(
        ca.as_ref().map(PemFile::pem),
        client.as_ref().map(|(c, k)| Identity {
            chain: c.pem(),
            key: k.pem(),
        }),
        alpn(cfg),
    )
    .config()
    .map_err(TlsSetupError::of(&cfg.name))
}

/// The TLS client configuration of a target given as PEM text.
pub fn tls_config_from_pem(
    cfg: &TargetConfig,
    tls: &TlsMaterial<'_>,
) -> Result<ClientConfig, TlsSetupError> {
    client_tls(
        tls.ca_pem.map(|pem| Pem::new(pem, "ca_certificate")),
        tls.client.map(|(c, k)| Identity {
            chain: Pem::new(c, "client_certificate"),
            key: Pem::new(k, "client_key"),
        }),
        alpn(cfg),
    )
    .config()
    .map_err(TlsSetupError::of(&cfg.name))
}

/// The connector of an HTTP target, in TLS with `tls` (None for `http://`).
pub fn connector(
    cfg: &TargetConfig,
    tls: Option<ClientConfig>,
) -> Result<Connector, TlsSetupError> {
    Connector::new(
        &format!("target {}", cfg.name),
        &cfg.host,
        cfg.port,
        tls,
        cfg.connect_timeout,
    )
    .map_err(TlsSetupError::of(&cfg.name))
}
