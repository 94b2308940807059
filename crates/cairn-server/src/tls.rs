//! TLS for the accept loop ([`crate::serve_tls`]): rustls with the *ring* crypto
//! provider chosen explicitly (so aws-lc never enters the build), ALPN offering HTTP/2
//! and HTTP/1.1, and a certificate that can be replaced while serving
//! ([`TlsCertificates::reload`], on SIGHUP): connections already open keep the
//! certificate they were made with, new ones get the new one.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

/// Why a certificate and key could not be loaded. The message names the file and holds
/// the cause (which is therefore not a `source`), so one log line says everything.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the TLS certificate file {}: {cause}", .path.display())]
    ReadCertificate {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error(
        "the TLS certificate file {} holds no PEM certificate (-----BEGIN CERTIFICATE-----): {detail}",
        .path.display()
    )]
    BadCertificate { path: PathBuf, detail: String },
    #[error("cannot read the TLS key file {}: {cause}", .path.display())]
    ReadKey {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error(
        "the TLS key file {} holds no PEM private key (PKCS#8, PKCS#1 or SEC1): {detail}",
        .path.display()
    )]
    BadKey { path: PathBuf, detail: String },
    #[error(
        "the TLS certificate {} and key {} cannot be used together: {cause}",
        .certificate.display(),
        .key.display()
    )]
    Unusable {
        certificate: PathBuf,
        key: PathBuf,
        cause: rustls::Error,
    },
}

/// The server's certificate chain and key, read from two PEM files, re-readable while
/// serving.
#[derive(Debug)]
pub struct TlsCertificates {
    certificate_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<Arc<ServerConfig>>,
}

impl TlsCertificates {
    /// Reads the certificate chain (leaf first) from `certificate_path` and its private
    /// key from `key_path`, and checks that they belong together.
    pub fn load(certificate_path: &Path, key_path: &Path) -> Result<Self, TlsError> {
        let config = server_config(certificate_path, key_path)?;
        Ok(Self {
            certificate_path: certificate_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
            current: RwLock::new(config),
        })
    }

    /// Reads both files again. On success new connections get the new certificate; on
    /// failure the one in force stays and the error says why.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = server_config(&self.certificate_path, &self.key_path)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = config;
        Ok(())
    }

    /// The certificate file.
    pub fn certificate_path(&self) -> &Path {
        &self.certificate_path
    }

    /// The key file.
    pub fn key_path(&self) -> &Path {
        &self.key_path
    }

    /// An acceptor with the certificate in force, for one new connection.
    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let config = self.current.read().unwrap_or_else(PoisonError::into_inner);
        tokio_rustls::TlsAcceptor::from(Arc::clone(&config))
    }
}

/// The TLS client configuration an instance forwards consumer-group requests with, to
/// the other instances of its deployment, which serve the same kind of certificate. A
/// peer is trusted when its certificate is one of those in this instance's certificate
/// file (one certificate shared by every instance, self-signed or not), or when it
/// chains up to one of them (each instance's own certificate from one CA, with the
/// CA or an intermediate in each file, as in a `fullchain.pem`). The peer's name is
/// checked against its certificate either way, and its handshake signature always.
pub fn peer_client_config(certificate_path: &Path) -> Result<ClientConfig, TlsError> {
    let certificate_pem =
        std::fs::read(certificate_path).map_err(|cause| TlsError::ReadCertificate {
            path: certificate_path.to_path_buf(),
            cause,
        })?;
    let own = read_chain(certificate_path, &certificate_pem)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(own.iter().cloned());
    // No certificate usable as a trust anchor (a leaf alone): only the pinned ones pass.
    let chained =
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
            .build()
            .ok();
    let verifier = PeerVerifier {
        own,
        chained,
        provider: Arc::clone(&provider),
    };
    // ALPN is the connector's to set (`http/1.1`).
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|cause| TlsError::Unusable {
            certificate: certificate_path.to_path_buf(),
            key: certificate_path.to_path_buf(),
            cause,
        })?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(config)
}

/// Checks a peer instance's certificate (see [`peer_client_config`]).
#[derive(Debug)]
struct PeerVerifier {
    /// The certificates of this instance's own file, trusted as they are.
    own: Vec<CertificateDer<'static>>,
    /// The same certificates as trust anchors, when any can be one.
    chained: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self
            .own
            .iter()
            .any(|own| own.as_ref() == end_entity.as_ref())
        {
            // The very certificate this instance serves: its validity and names are
            // what this instance was started with. The handshake signature, checked
            // next, proves the peer holds its key.
            let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_name(&parsed, server_name)?;
            return Ok(ServerCertVerified::assertion());
        }
        match &self.chained {
            Some(chained) => chained.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            ),
            None => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The certificates of a PEM file, at least one.
fn read_chain(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::BadCertificate {
            path: path.to_path_buf(),
            detail: error.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::BadCertificate {
            path: path.to_path_buf(),
            detail: "no certificate found".into(),
        });
    }
    Ok(chain)
}

/// A rustls server configuration on the ring provider: TLS 1.2 and 1.3, no client
/// certificates, ALPN `h2` then `http/1.1`.
fn server_config(certificate_path: &Path, key_path: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let certificate_pem =
        std::fs::read(certificate_path).map_err(|cause| TlsError::ReadCertificate {
            path: certificate_path.to_path_buf(),
            cause,
        })?;
    let chain = read_chain(certificate_path, &certificate_pem)?;
    let key_pem = std::fs::read(key_path).map_err(|cause| TlsError::ReadKey {
        path: key_path.to_path_buf(),
        cause,
    })?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|error| TlsError::BadKey {
        path: key_path.to_path_buf(),
        detail: error.to_string(),
    })?;
    let unusable = |cause| TlsError::Unusable {
        certificate: certificate_path.to_path_buf(),
        key: key_path.to_path_buf(),
        cause,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(unusable)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(unusable)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
