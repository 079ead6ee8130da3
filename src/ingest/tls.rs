//! tls: the server side of TLS syslog (RFC 5425), for sites that front their
//! Qumulo clusters with a TLS relay.
//!
//! Built once at start from `[syslog_tls]`: the broker's certificate chain and
//! key, and, unless `require_client_cert = false`, a verifier that accepts only
//! client certificates chaining to `client_ca_file`. Errors name the setting and
//! the file, never the file's content.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use crate::config::SyslogTlsConfig;

/// The TLS syslog settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsInputError {
    #[error("syslog_tls.{field}: cannot read {path}: {source}")]
    Read {
        field: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("syslog_tls.{field}: {path} holds no {what}")]
    Empty {
        field: &'static str,
        path: String,
        what: &'static str,
    },
    #[error("syslog_tls.{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

fn read_pem<T>(
    field: &'static str,
    path: &Path,
    what: &'static str,
    parse: impl FnOnce(&mut BufReader<File>) -> std::io::Result<Vec<T>>,
) -> Result<Vec<T>, TlsInputError> {
    let read_err = |source| TlsInputError::Read {
        field,
        path: path.display().to_string(),
        source,
    };
    let mut reader = BufReader::new(File::open(path).map_err(read_err)?);
    let items = parse(&mut reader).map_err(read_err)?;
    if items.is_empty() {
        return Err(TlsInputError::Empty {
            field,
            path: path.display().to_string(),
            what,
        });
    }
    Ok(items)
}

fn certs(field: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsInputError> {
    read_pem(field, path, "PEM certificate", |r| {
        rustls_pemfile::certs(r).collect()
    })
}

/// The rustls server configuration of the TLS syslog listener.
pub fn server_config(cfg: &SyslogTlsConfig) -> Result<Arc<ServerConfig>, TlsInputError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsInputError::Invalid {
            field: "listen",
            reason: e.to_string(),
        })?;
    let builder = match (&cfg.client_ca_file, cfg.require_client_cert) {
        (Some(ca), require) => {
            let mut roots = RootCertStore::empty();
            for cert in certs("client_ca_file", ca)? {
                roots.add(cert).map_err(|e| TlsInputError::Invalid {
                    field: "client_ca_file",
                    reason: format!("bad CA certificate in {}: {e}", ca.display()),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if require {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier.build().map_err(|e| TlsInputError::Invalid {
                field: "client_ca_file",
                reason: e.to_string(),
            })?;
            builder.with_client_cert_verifier(verifier)
        }
        (None, _) => builder.with_no_client_auth(),
    };
    let chain = certs("cert_file", &cfg.cert_file)?;
    let key: PrivateKeyDer<'static> = read_pem("key_file", &cfg.key_file, "private key", |r| {
        Ok(rustls_pemfile::private_key(r)?.into_iter().collect())
    })?
    .remove(0);
    let config = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsInputError::Invalid {
            field: "cert_file",
            reason: format!("certificate and key do not go together: {e}"),
        })?;
    Ok(Arc::new(config))
}
