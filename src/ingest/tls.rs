//! tls: the server side of TLS syslog (RFC 5425), for sites that front their
//! Qumulo clusters with a TLS relay.
//!
//! Built once at start from `[syslog_tls]`, by [`crate::net`]: the broker's
//! certificate chain and key, and, unless `require_client_cert = false`, a
//! verifier that accepts only client certificates chaining to
//! `client_ca_file`. No ALPN: syslog has no name there. Errors name the setting
//! and the file, never the file's content.

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;

use crate::config::SyslogTlsConfig;
use crate::net::{Alpn, ClientCa, PemFile, ServerTls, TlsError};

/// The TLS syslog settings could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("syslog_tls.{field}: {source}")]
pub struct TlsInputError {
    pub field: &'static str,
    #[source]
    pub source: TlsError,
}

fn read(field: &'static str, path: &Path) -> Result<PemFile, TlsInputError> {
    PemFile::read(path).map_err(|source| TlsInputError { field, source })
}

/// The rustls server configuration of the TLS syslog listener.
pub fn server_config(cfg: &SyslogTlsConfig) -> Result<Arc<ServerConfig>, TlsInputError> {
    let in_field = |field| move |source| TlsInputError { field, source };
    let ca_origin = cfg.client_ca_file.as_ref().map(|p| p.display().to_string());
    let client_ca = match &cfg.client_ca_file {
        Some(path) => Some(
            read("client_ca_file", path)?
                .pem()
                .certs()
                .map_err(in_field("client_ca_file"))?,
        ),
        None => None,
    };
    let chain = read("cert_file", &cfg.cert_file)?
        .pem()
        .certs()
        .map_err(in_field("cert_file"))?;
    let key = read("key_file", &cfg.key_file)?
        .pem()
        .key()
        .map_err(in_field("key_file"))?;
    let config = ServerTls {
        chain,
        key,
        client_ca: client_ca.map(|certs| ClientCa {
            certs,
            origin: ca_origin.as_deref().unwrap_or_default(),
            required: cfg.require_client_cert,
        }),
        alpn: Alpn::None,
    }
    .config()
    .map_err(|source| {
        let field = match &source {
            TlsError::BadCa { .. } | TlsError::ClientCa { .. } => "client_ca_file",
            TlsError::CertKey(_) => "cert_file",
            _ => "listen",
        };
        TlsInputError { field, source }
    })?;
    Ok(Arc::new(config))
}
