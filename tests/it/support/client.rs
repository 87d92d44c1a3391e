//! TLS clients that present a chosen certificate (or none) and speak HTTP/1.1 or HTTP/2.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::pki::ClientCert;

#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }
}

#[derive(Clone)]
pub struct Client {
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    connector: TlsConnector,
    h2: bool,
}

impl Client {
    /// A client trusting `ca_pem` and presenting `cert` (or no certificate).
    pub fn new(addr: SocketAddr, ca_pem: &str, cert: Option<&ClientCert>) -> Client {
        Self::build(addr, ca_pem, cert, false, None)
    }

    pub fn h2(addr: SocketAddr, ca_pem: &str, cert: Option<&ClientCert>) -> Client {
        Self::build(addr, ca_pem, cert, true, None)
    }

    /// A client offering exactly these ALPN protocols.
    pub fn with_alpn(
        addr: SocketAddr,
        ca_pem: &str,
        cert: Option<&ClientCert>,
        alpn: &[&[u8]],
    ) -> Client {
        let mut c = Self::build(addr, ca_pem, cert, false, None);
        let mut config = (*c.config).clone();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        c.config = Arc::new(config);
        c.connector = TlsConnector::from(c.config.clone());
        c
    }

    /// A TLS 1.2-only client.
    pub fn tls12(addr: SocketAddr, ca_pem: &str, cert: Option<&ClientCert>) -> Client {
        Self::build(addr, ca_pem, cert, false, Some(&rustls::version::TLS12))
    }

    /// A client offering exactly these cipher suites, in this order of preference.
    pub fn with_suites(
        addr: SocketAddr,
        ca_pem: &str,
        cert: Option<&ClientCert>,
        suites: &[rustls::SupportedCipherSuite],
    ) -> Client {
        let mut provider = rustls::crypto::aws_lc_rs::default_provider();
        provider.cipher_suites = suites.to_vec();
        Self::build_with(addr, ca_pem, cert, false, None, Arc::new(provider))
    }

    fn build(
        addr: SocketAddr,
        ca_pem: &str,
        cert: Option<&ClientCert>,
        h2: bool,
        only: Option<&'static rustls::SupportedProtocolVersion>,
    ) -> Client {
        Self::build_with(addr, ca_pem, cert, h2, only, portcullis::tls::provider())
    }

    fn build_with(
        addr: SocketAddr,
        ca_pem: &str,
        cert: Option<&ClientCert>,
        h2: bool,
        only: Option<&'static rustls::SupportedProtocolVersion>,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Client {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let versions: Vec<&'static rustls::SupportedProtocolVersion> = match only {
            Some(v) => vec![v],
            None => vec![&rustls::version::TLS13, &rustls::version::TLS12],
        };
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&versions)
            .unwrap()
            .with_root_certificates(roots);
        let mut config = match cert {
            Some(c) => {
                let chain = vec![CertificateDer::from_pem_slice(c.cert_pem.as_bytes()).unwrap()];
                let key = PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).unwrap();
                builder.with_client_auth_cert(chain, key).unwrap()
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = if h2 {
            vec![b"h2".to_vec()]
        } else {
            vec![b"http/1.1".to_vec()]
        };
        let config = Arc::new(config);
        Client {
            addr,
            connector: TlsConnector::from(config.clone()),
            config,
            h2,
        }
    }

    /// A TLS connection; the handshake error when it fails.
    pub async fn connect(&self) -> std::io::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(self.addr).await?;
        self.connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
    }

    /// Sends one request on a new connection. Errors are the handshake's or the exchange's.
    pub async fn send(&self, req: Request<Full<Bytes>>) -> Result<Reply, String> {
        let tls = self
            .connect()
            .await
            .map_err(|e| format!("connect: {}", portcullis::proxy::error_chain(&e)))?;
        let resp = if self.h2 {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                    .await
                    .map_err(|e| format!("h2 handshake: {}", portcullis::proxy::error_chain(&e)))?;
            tokio::spawn(conn);
            sender
                .send_request(req)
                .await
                .map_err(|e| format!("send: {}", portcullis::proxy::error_chain(&e)))?
        } else {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .map_err(|e| format!("handshake: {}", portcullis::proxy::error_chain(&e)))?;
            tokio::spawn(conn);
            sender
                .send_request(req)
                .await
                .map_err(|e| format!("send: {}", portcullis::proxy::error_chain(&e)))?
        };
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| format!("body: {}", portcullis::proxy::error_chain(&e)))?
            .to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// An HTTP/2 session on a new connection: the sender, and the task driving the connection
    /// (it ends when the connection closes).
    pub async fn h2_session(
        &self,
    ) -> (
        hyper::client::conn::http2::SendRequest<Full<Bytes>>,
        tokio::task::JoinHandle<hyper::Result<()>>,
    ) {
        let tls = self.connect().await.unwrap();
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        (sender, tokio::spawn(conn))
    }

    pub async fn get(&self, path: &str) -> Result<Reply, String> {
        self.send(request("GET", path)).await
    }
}

/// A request with a Host header (HTTP/1.1 needs one; HTTP/2 uses the URI's authority).
pub fn request(method: &str, path: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(format!("https://localhost{path}"))
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// Reads a response head byte by byte (leaving the rest of the stream unread).
pub async fn read_head<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> String {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let mut byte = [0u8; 1];
    let deadline = std::time::Duration::from_secs(5);
    while !out.ends_with(b"\r\n\r\n") {
        match tokio::time::timeout(deadline, s.read(&mut byte)).await {
            Ok(Ok(1)) => out.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads until EOF or error; true when the peer closed within `within`.
pub async fn closed_within<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    within: std::time::Duration,
) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// An `Authorization: Basic` value.
pub fn basic(user: &str, pass: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

/// `method path` with extra headers, through `c`; panics when the exchange itself fails.
pub async fn send_with(c: &Client, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = request(method, path);
    for (k, v) in headers {
        req.headers_mut().append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    c.send(req).await.unwrap()
}
