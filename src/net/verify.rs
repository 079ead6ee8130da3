//! verify: server certificate checks, as operators make certificates.
//!
//! A target's CA file (or registered `certificate`) is often not a CA but the
//! server's own self-signed certificate, made with `openssl req -x509` (which
//! marks it CA:TRUE). OpenSSL-based clients accept a server that presents
//! exactly that certificate; webpki alone refuses it (a CA used as an end
//! entity). [`PinningVerifier`] accepts a server whose certificate is, byte
//! for byte, one of the configured ones (a pin: the handshake signature is
//! still checked against its key), and otherwise verifies the chain with
//! webpki against the same certificates as roots. HTTPS and AMQP targets use
//! it alike. [`AnyCertificate`] is `insecure_skip_verify`, for the clusters'
//! REST APIs when an operator asks for it.
//!
//! [`describe`] turns a failed handshake into words an operator can act on.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::TlsError;

/// Exact certificates accepted as they are; webpki for everything else.
#[derive(Debug)]
pub struct PinningVerifier {
    pinned: Vec<CertificateDer<'static>>,
    webpki: Arc<WebPkiServerVerifier>,
}

impl PinningVerifier {
    /// `certs`: the configured CA file's certificates: roots for webpki, and
    /// pins.
    pub fn new(
        certs: Vec<CertificateDer<'static>>,
        roots: RootCertStore,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<PinningVerifier, TlsError> {
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| TlsError::Roots(e.to_string()))?;
        Ok(PinningVerifier {
            pinned: certs,
            webpki,
        })
    }
}

impl ServerCertVerifier for PinningVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self
            .pinned
            .iter()
            .any(|c| c.as_ref() == end_entity.as_ref())
        {
            return Ok(ServerCertVerified::assertion());
        }
        self.webpki
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// Accepts any server certificate (`insecure_skip_verify`), still checking
/// that the handshake is signed by the key of the certificate presented.
#[derive(Debug)]
pub struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl AnyCertificate {
    pub fn new(provider: Arc<rustls::crypto::CryptoProvider>) -> AnyCertificate {
        AnyCertificate(provider)
    }
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// What went wrong in a TLS handshake, for an operator: the rustls error
/// inside `err` in words, else `err` as it is.
pub fn describe(err: &std::io::Error) -> String {
    let Some(tls) = find_rustls(err) else {
        return err.to_string();
    };
    describe_rustls(tls)
}

fn find_rustls<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(t) = e.downcast_ref::<rustls::Error>() {
            return Some(t);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(inner) = io.get_ref() {
                if let Some(t) = inner.downcast_ref::<rustls::Error>() {
                    return Some(t);
                }
            }
        }
        cur = e.source();
    }
    None
}

/// A rustls error in words an operator can act on.
pub fn describe_rustls(err: &rustls::Error) -> String {
    use CertificateError as C;
    match err {
        rustls::Error::InvalidCertificate(c) => match c {
            C::UnknownIssuer => "the server's certificate is not signed by the CA this target trusts: give the CA that signed it (or the server's own certificate, to pin it) as ca_file / certificate".to_string(),
            C::NotValidForName | C::NotValidForNameContext { .. } => "the server's certificate does not hold the name the target connects to: use a host name the certificate holds, or have the certificate reissued".to_string(),
            C::Expired | C::ExpiredContext { .. } => "the server's certificate has expired: have it renewed".to_string(),
            C::NotValidYet | C::NotValidYetContext { .. } => "the server's certificate is not valid yet: check the clocks of both machines".to_string(),
            C::BadEncoding => "the server's certificate cannot be parsed".to_string(),
            C::InvalidPurpose | C::InvalidPurposeContext { .. } => "the server's certificate is not made for a TLS server (extended key usage)".to_string(),
            C::Other(o) if o.to_string().contains("CaUsedAsEndEntity") => "the server presents a CA certificate as its own and it is not the configured one: give exactly the server's certificate as ca_file / certificate to pin it".to_string(),
            other => format!("the server's certificate was refused: {other}"),
        },
        rustls::Error::AlertReceived(alert) => format!(
            "the server ended the handshake ({alert:?}): it may want a client certificate, or support no common TLS version or cipher"
        ),
        rustls::Error::NoCertificatesPresented => "the server presented no certificate".to_string(),
        other => format!("tls: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rustls_errors_are_found_inside_io_errors() {
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        );
        assert!(describe(&io).contains("not signed by the CA"));
        let plain = std::io::Error::other("connection reset");
        assert_eq!(describe(&plain), "connection reset");
    }
}
