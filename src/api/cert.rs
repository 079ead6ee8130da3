//! cert: the API's TLS server configuration: the configured certificate and key,
//! or a self-signed pair generated on first start, kept owner-only under
//! `<data_dir>/api/` and reused after, so that a client pinning it keeps working.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use tracing::{info, warn};

use crate::config::ApiServerConfig;
use crate::net::{Alpn, Pem, ServerTls};

/// The certificate could not be read, made or used.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("api: cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("api: cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("api: {0}")]
    Invalid(String),
}

/// The server configuration, and where its certificate came from.
pub fn server_config(
    api: &ApiServerConfig,
    data_dir: &Path,
) -> Result<Arc<ServerConfig>, CertError> {
    let (cert_path, key_path) = match &api.cert {
        Some((c, k)) => (c.clone(), k.clone()),
        None => self_signed(&data_dir.join("api"))?,
    };
    let (config, chain) = load(&cert_path, &key_path)?;
    if let Some(leaf) = chain.first() {
        info!(cert = %cert_path.display(), sha256 = %fingerprint(leaf), "api certificate");
    }
    Ok(config)
}

/// The certificate and key files the API uses: `api.cert_file` and
/// `api.key_file`, else the self-signed pair under `<data_dir>/api/` (which
/// may not exist yet: it is made at the first start). `true` for the latter.
pub fn paths(api: &ApiServerConfig, data_dir: &Path) -> (PathBuf, PathBuf, bool) {
    match &api.cert {
        Some((c, k)) => (c.clone(), k.clone(), false),
        None => {
            let dir = data_dir.join("api");
            (dir.join("cert.pem"), dir.join("key.pem"), true)
        }
    }
}

/// The server configuration of a certificate chain and key, and the chain.
pub fn load(
    cert_path: &Path,
    key_path: &Path,
) -> Result<
    (
        Arc<ServerConfig>,
        Vec<rustls::pki_types::CertificateDer<'static>>,
    ),
    CertError,
> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| CertError::Read {
            path: p.to_path_buf(),
            source,
        })
    };
    let (cert_pem, key_pem) = (read(cert_path)?, read(key_path)?);
    let (cert_origin, key_origin) = (
        cert_path.display().to_string(),
        key_path.display().to_string(),
    );
    let invalid = |e: crate::net::TlsError| CertError::Invalid(e.to_string());
    let chain = Pem::new(&cert_pem, &cert_origin).certs().map_err(invalid)?;
    let key = Pem::new(&key_pem, &key_origin).key().map_err(invalid)?;
    let config = ServerTls {
        chain: chain.clone(),
        key,
        client_ca: None,
        alpn: Alpn::Http1,
    }
    .config()
    .map_err(invalid)?;
    Ok((Arc::new(config), chain))
}

/// SHA-256 of a DER certificate, as colon-separated hex (what browsers show).
pub fn fingerprint(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// `<dir>/cert.pem` and `<dir>/key.pem`, generated when missing.
fn self_signed(dir: &Path) -> Result<(PathBuf, PathBuf), CertError> {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    if cert.exists() && key.exists() {
        info!(cert = %cert.display(), "api: no cert_file configured; using the self-signed certificate generated earlier");
        return Ok((cert, key));
    }
    let write_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CertError::Write { path, source }
    };
    crate::deadletter::create_private_dir(dir).map_err(write_err(dir))?;
    let mut names = vec!["localhost".to_string()];
    if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let host = host.trim();
        if !host.is_empty() && host != "localhost" {
            names.insert(0, host.to_string());
        }
    }
    names.push("127.0.0.1".to_string());
    names.push("::1".to_string());
    let mut params = rcgen::CertificateParams::new(names.clone())
        .map_err(|e| CertError::Invalid(format!("self-signed certificate: {e}")))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, names[0].clone());
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2044, 1, 1);
    let pair = rcgen::KeyPair::generate()
        .map_err(|e| CertError::Invalid(format!("self-signed key: {e}")))?;
    let signed = params
        .self_signed(&pair)
        .map_err(|e| CertError::Invalid(format!("self-signed certificate: {e}")))?;
    write_private(&key, pair.serialize_pem().as_bytes()).map_err(write_err(&key))?;
    write_private(&cert, signed.pem().as_bytes()).map_err(write_err(&cert))?;
    warn!(cert = %cert.display(), names = ?names, sha256 = %fingerprint(signed.der()), "api: no cert_file configured: generated a self-signed certificate (set api.cert_file and api.key_file for one your clients trust)");
    Ok((cert, key))
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.create(true).write(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}
