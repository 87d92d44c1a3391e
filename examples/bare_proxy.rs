//! A calibration point for the peer benchmark, not a product: the least an mTLS-terminating
//! HTTP/1.1 proxy on hyper + rustls can do. No policy, no logging, no metrics, no header
//! hygiene, no timeouts; one upstream connection per client connection, made on its first
//! request. Its figure in `../shared/bench/peers.sh` is the ceiling this stack reaches on the
//! machine at hand, against which portcullis's own per-request work is measured (see
//! docs/benchmarks.md).
//!
//! ```text
//! ../shared/bench/peers.sh --proxies "" --proxy-name bare \
//!   --proxy 'exec target/release/examples/bare_proxy' --skip "h2 ka16k hs idle"
//! ```
//!
//! It reads the harness's BENCH_CA, BENCH_SERVER_CERT, BENCH_SERVER_KEY, BENCH_LISTEN and
//! BENCH_UPSTREAM.

use std::sync::Arc;

use anyhow::Context;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

type Body = http_body_util::combinators::BoxBody<bytes::Bytes, hyper::Error>;

fn env(name: &str) -> anyhow::Result<String> {
    std::env::var(name).with_context(|| format!("{name} is not set"))
}

fn main() -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(serve())
}

async fn serve() -> anyhow::Result<()> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(env("BENCH_CA")?)? {
        roots.add(ca?)?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()?;
    let certs =
        CertificateDer::pem_file_iter(env("BENCH_SERVER_CERT")?)?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(env("BENCH_SERVER_KEY")?)?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let upstream: Arc<str> = env("BENCH_UPSTREAM")?.into();
    let listener = TcpListener::bind(env("BENCH_LISTEN")?).await?;
    loop {
        let (tcp, _) = listener.accept().await?;
        let acceptor = acceptor.clone();
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let sender: Arc<Mutex<Option<SendRequest<Incoming>>>> = Arc::default();
            let service = hyper::service::service_fn(move |req| {
                let sender = sender.clone();
                let upstream = upstream.clone();
                async move { forward(req, &sender, &upstream).await }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}

async fn forward(
    req: Request<Incoming>,
    sender: &Mutex<Option<SendRequest<Incoming>>>,
    upstream: &str,
) -> anyhow::Result<Response<Body>> {
    let mut slot = sender.lock().await;
    if slot.as_ref().is_none_or(|s| s.is_closed()) {
        let tcp = TcpStream::connect(upstream).await?;
        let _ = tcp.set_nodelay(true);
        let (s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        *slot = Some(s);
    }
    let Some(s) = slot.as_mut() else {
        anyhow::bail!("no upstream connection");
    };
    s.ready().await?;
    let resp = s.send_request(req).await?;
    Ok(resp.map(|b| b.boxed()))
}
