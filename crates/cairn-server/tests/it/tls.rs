//! HTTPS on Cairn's own accept loop: HTTP/2 and HTTP/1.1 by ALPN, a handshake bounded
//! by the header read timeout, plain HTTP on the TLS port refused, and a certificate
//! replaced while serving (new connections see the new one; a bad pair keeps the old).

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_server::limits::RequestLimits;
use cairn_server::tls::{TlsCertificates, TlsError};
use cairn_server::{AppState, Limits};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::temporary_store;

/// A private CA and a server certificate it signed for `localhost` and 127.0.0.1.
struct Pki {
    ca: CertificateDer<'static>,
    ca_pem: String,
    leaf: CertificateDer<'static>,
    leaf_pem: String,
    key_pem: String,
}

fn pki(name: &str) -> Pki {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("{name} CA"));
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let mut leaf_params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    leaf_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("{name} server"));
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = leaf_params.signed_by(&leaf_key, &ca).unwrap();
    Pki {
        ca: ca.der().clone(),
        ca_pem: ca.pem(),
        leaf: leaf.der().clone(),
        leaf_pem: leaf.pem(),
        key_pem: leaf_key.serialize_pem(),
    }
}

/// Writes `pki`'s certificate and key where the server reads them.
fn install(pki: &Pki, certificate: &Path, key: &Path) {
    std::fs::write(certificate, &pki.leaf_pem).unwrap();
    std::fs::write(key, &pki.key_pem).unwrap();
}

struct TlsServer {
    address: SocketAddr,
    tls: Arc<TlsCertificates>,
    certificate: PathBuf,
    key: PathBuf,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

impl TlsServer {
    async fn start(pki: &Pki, header_read_timeout: Duration) -> Self {
        let files = tempfile::tempdir().unwrap();
        let certificate = files.path().join("cert.pem");
        let key = files.path().join("key.pem");
        install(pki, &certificate, &key);
        let tls = Arc::new(TlsCertificates::load(&certificate, &key).unwrap());
        let (store, store_dir) = temporary_store();
        let state = AppState::open(store, Limits::default(), Duration::from_secs(30))
            .await
            .unwrap()
            .with_request_limits(RequestLimits {
                header_read_timeout,
                ..RequestLimits::default()
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(cairn_server::serve_tls(
            listener,
            state,
            Some(Arc::clone(&tls)),
            async move {
                let _ = stopped.await;
            },
        ));
        Self {
            address,
            tls,
            certificate,
            key,
            shutdown: Some(shutdown),
            _dirs: (files, store_dir),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.address.port())
    }

    /// A reqwest client that trusts only `ca` and resolves `localhost` to the server.
    fn client(&self, ca: &str, http1_only: bool) -> reqwest::Client {
        let mut builder = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
            .resolve("localhost", self.address)
            .timeout(Duration::from_secs(10));
        if http1_only {
            builder = builder.http1_only();
        }
        builder.build().unwrap()
    }

    /// Opens a new TLS connection trusting `cas` and returns the certificate the
    /// server presented.
    async fn peer_certificate(
        &self,
        cas: &[&CertificateDer<'static>],
    ) -> std::io::Result<CertificateDer<'static>> {
        let mut roots = rustls::RootCertStore::empty();
        for ca in cas {
            roots.add((*ca).clone()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(self.address).await?;
        let stream = connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await?;
        let (_, connection) = stream.get_ref();
        Ok(connection.peer_certificates().unwrap()[0].clone())
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

#[tokio::test]
async fn https_serves_http2_and_http1_by_alpn() {
    let pki = pki("alpn");
    let server = TlsServer::start(&pki, Duration::from_secs(10)).await;

    let h2 = server.client(&pki.ca_pem, false);
    let appended = h2
        .post(server.url("/v1/streams/tls-1/events"))
        .json(&serde_json::json!({"events": [{"type": "Secured", "data": {"n": 1}}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(appended.status(), 201);
    assert_eq!(appended.version(), reqwest::Version::HTTP_2);

    let h1 = server.client(&pki.ca_pem, true);
    let read = h1
        .get(server.url("/v1/streams/tls-1/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    assert_eq!(read.version(), reqwest::Version::HTTP_11);
    let body: serde_json::Value = read.json().await.unwrap();
    assert_eq!(body["events"][0]["type"], "Secured");
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_certificate_is_refused() {
    let server = TlsServer::start(&pki("trusted"), Duration::from_secs(10)).await;
    let stranger = pki("stranger");
    let error = server
        .client(&stranger.ca_pem, false)
        .get(server.url("/health/live"))
        .send()
        .await
        .unwrap_err();
    assert!(error.is_connect(), "{error:?}");
    assert!(format!("{error:?}").contains("UnknownIssuer"), "{error:?}");
}

#[tokio::test]
async fn plain_http_on_the_tls_port_is_closed_without_an_answer() {
    let pki = pki("plain");
    let server = TlsServer::start(&pki, Duration::from_secs(10)).await;
    let mut tcp = tokio::net::TcpStream::connect(server.address)
        .await
        .unwrap();
    tcp.write_all(b"GET /health/live HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer))
        .await
        .expect("the server closes the connection at once");
    // Closed (possibly after a TLS alert record), never an HTTP answer.
    match read {
        Ok(_) => assert!(!answer.starts_with(b"HTTP/"), "{answer:?}"),
        Err(error) => assert_eq!(error.kind(), ErrorKind::ConnectionReset, "{error}"),
    }
    // The server goes on serving HTTPS.
    let live = server
        .client(&pki.ca_pem, false)
        .get(server.url("/health/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
}

#[tokio::test]
async fn a_stalled_handshake_is_cut_off_after_the_header_read_timeout() {
    let pki = pki("slow");
    let server = TlsServer::start(&pki, Duration::from_millis(300)).await;
    // The first bytes of a TLS record (handshake, TLS 1.0 record version, 512 bytes to
    // come), then nothing.
    let mut tcp = tokio::net::TcpStream::connect(server.address)
        .await
        .unwrap();
    tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00])
        .await
        .unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer))
        .await
        .expect("the server gives up on the handshake");
    assert!(
        read.is_ok()
            || read
                .as_ref()
                .is_err_and(|e| e.kind() == ErrorKind::ConnectionReset),
        "{read:?}"
    );
    assert!(answer.is_empty(), "{answer:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "closed before the timeout: {:?}",
        started.elapsed()
    );
    // One that never sends a byte is cut off too.
    let mut silent = tokio::net::TcpStream::connect(server.address)
        .await
        .unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut [0; 16])).await;
    assert!(closed.is_ok(), "a silent client kept its connection");
}

#[tokio::test]
async fn reloading_changes_the_certificate_of_new_connections_and_a_bad_pair_keeps_the_old() {
    let first = pki("first");
    let second = pki("second");
    let server = TlsServer::start(&first, Duration::from_secs(10)).await;
    let both = [&first.ca, &second.ca];
    assert_eq!(server.peer_certificate(&both).await.unwrap(), first.leaf);

    install(&second, &server.certificate, &server.key);
    server.tls.reload().unwrap();
    assert_eq!(server.peer_certificate(&both).await.unwrap(), second.leaf);
    assert!(server.peer_certificate(&[&first.ca]).await.is_err());

    // A certificate file without a certificate: refused, the second one stays.
    std::fs::write(&server.certificate, "not a certificate\n").unwrap();
    let error = server.tls.reload().unwrap_err();
    assert!(matches!(error, TlsError::BadCertificate { .. }), "{error}");
    assert!(error.to_string().contains("cert.pem"), "{error}");
    assert_eq!(server.peer_certificate(&both).await.unwrap(), second.leaf);

    // A certificate with another certificate's key: refused too.
    std::fs::write(&server.certificate, &first.leaf_pem).unwrap();
    let error = server.tls.reload().unwrap_err();
    assert!(matches!(error, TlsError::Unusable { .. }), "{error}");
    assert_eq!(server.peer_certificate(&both).await.unwrap(), second.leaf);
}

#[test]
fn loading_names_the_file_that_is_missing_or_wrong() {
    let pki = pki("load");
    let dir = tempfile::tempdir().unwrap();
    let certificate = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");

    let missing = TlsCertificates::load(&certificate, &key).unwrap_err();
    assert!(
        matches!(missing, TlsError::ReadCertificate { .. }),
        "{missing}"
    );
    assert!(missing.to_string().contains("cert.pem"), "{missing}");

    std::fs::write(&certificate, &pki.leaf_pem).unwrap();
    let missing_key = TlsCertificates::load(&certificate, &key).unwrap_err();
    assert!(
        matches!(missing_key, TlsError::ReadKey { .. }),
        "{missing_key}"
    );

    // The certificate where the key should be.
    std::fs::write(&key, &pki.leaf_pem).unwrap();
    let no_key = TlsCertificates::load(&certificate, &key).unwrap_err();
    assert!(matches!(no_key, TlsError::BadKey { .. }), "{no_key}");
    assert!(no_key.to_string().contains("key.pem"), "{no_key}");

    std::fs::write(&key, &pki.key_pem).unwrap();
    let loaded = TlsCertificates::load(&certificate, &key).unwrap();
    assert_eq!(loaded.certificate_path(), certificate);
}

#[test]
fn the_peer_configuration_needs_a_readable_certificate_file() {
    let pki = pki("peers");
    let dir = tempfile::tempdir().unwrap();
    let certificate = dir.path().join("cert.pem");
    let missing = cairn_server::tls::peer_client_config(&certificate).unwrap_err();
    assert!(
        matches!(missing, TlsError::ReadCertificate { .. }),
        "{missing}"
    );
    std::fs::write(&certificate, "not a certificate\n").unwrap();
    let empty = cairn_server::tls::peer_client_config(&certificate).unwrap_err();
    assert!(matches!(empty, TlsError::BadCertificate { .. }), "{empty}");
    assert!(empty.to_string().contains("cert.pem"), "{empty}");
    std::fs::write(&certificate, &pki.leaf_pem).unwrap();
    assert!(cairn_server::tls::peer_client_config(&certificate).is_ok());
}
