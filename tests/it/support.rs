//! Shared harness: a test PKI, a recording upstream, an in-process gateway and TLS clients.

pub mod client;
pub mod gateway;
pub mod idp;
pub mod jwt;
pub mod otp;
pub mod pki;
pub mod redis;
pub mod rogue;
pub mod upstream;

pub use client::Client;
pub use gateway::TestGateway;
pub use pki::TestPki;
pub use upstream::FakeUpstream;

/// GET a path on the plaintext admin listener; the whole response as text.
pub async fn admin_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// The value of the first `/metrics` line starting with `line_prefix` (0 when absent).
pub async fn metric(gw: &TestGateway, line_prefix: &str) -> f64 {
    let text = admin_get(
        gw.admin.expect("the test gateway has an admin listener"),
        "/metrics",
    )
    .await;
    text.lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}
