//! Client certificates at the TLS layer. The one port serves the service API (no client
//! certificate), SAS devices (none) and X.509 devices (the certificate *is* the credential, as
//! in Azure DPS), so the handshake asks for a certificate without requiring one and takes one
//! from any issuer: which enrollment trusts it is decided later, by the device API
//! (`device_auth.rs`), against the enrollments. The handshake signature is still verified, so
//! a copy of a unit's certificate without its private key gets nowhere.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// Asks for a client certificate, accepts none, and accepts any well-formed one whose holder
/// proves its key in the handshake.
#[derive(Debug)]
pub struct AnyClientCert {
    algorithms: WebPkiSupportedAlgorithms,
}

impl AnyClientCert {
    /// With the signature algorithms of `provider`.
    #[must_use]
    pub fn new(provider: &rustls::crypto::CryptoProvider) -> Self {
        Self {
            algorithms: provider.signature_verification_algorithms,
        }
    }
}

impl ClientCertVerifier for AnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        x509_parser::parse_x509_certificate(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The certificate chain a connection's client presented, leaf first; empty when it
/// presented none. Every request of the connection carries it as an extension.
#[derive(Debug, Clone, Default)]
pub struct PeerCerts(pub Arc<Vec<CertificateDer<'static>>>);

impl PeerCerts {
    /// From an established server connection.
    #[must_use]
    pub fn of(conn: &rustls::ServerConnection) -> Self {
        Self(Arc::new(
            conn.peer_certificates()
                .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
                .unwrap_or_default(),
        ))
    }

    /// The leaf, when a certificate was presented.
    #[must_use]
    pub fn leaf(&self) -> Option<&CertificateDer<'static>> {
        self.0.first()
    }

    /// The certificates after the leaf.
    #[must_use]
    pub fn intermediates(&self) -> &[CertificateDer<'static>] {
        self.0.get(1..).unwrap_or(&[])
    }
}

/// Accepts TLS connections on `listener` until the task is aborted, handing each one, with
/// the certificates its client presented, to `serve` on a task of its own. One mechanism for
/// the HTTPS port and the MQTT port; `port` names which in the logs.
pub async fn accept_tls<F, Fut>(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    port: &'static str,
    serve: F,
) where
    F: Fn(tokio_rustls::server::TlsStream<tokio::net::TcpStream>, PeerCerts) -> Fut
        + Clone
        + Send
        + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // Out of file descriptors and the like: keep serving the others.
                tracing::warn!(port, error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let serve = serve.clone();
        tokio::spawn(async move {
            match acceptor.accept(tcp).await {
                Ok(tls) => {
                    let peer = PeerCerts::of(tls.get_ref().1);
                    serve(tls, peer).await;
                }
                Err(e) => tracing::debug!(port, error = %e, "TLS handshake failed"),
            }
        });
    }
}
