//! Connection-level defences: smuggling, slow clients, idle connections.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::POLICY;
use crate::support::client::{closed_within, read_head as head};
use crate::support::gateway::yaml;
use crate::support::{FakeUpstream, TestGateway, TestPki};

#[tokio::test]
async fn smuggling_attempts_never_reach_the_upstream_and_close_the_connection() {
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&pki, &yaml(&pki, up.addr, POLICY)).await;

    // Conflicting Content-Length values: 400, and the connection is closed.
    let mut tls = gw.client(Some(&bob)).connect().await.unwrap();
    tls.write_all(b"POST /x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\nabcd")
        .await
        .unwrap();
    let h = head(&mut tls).await;
    assert!(h.starts_with("HTTP/1.1 400"), "{h}");
    assert!(
        closed_within(&mut tls, Duration::from_secs(5)).await,
        "the connection must close"
    );

    // CL+TE: the body is framed by Transfer-Encoding alone, Content-Length is dropped, and the
    // connection closes after one response, so the request hidden in the body is never read.
    let mut tls = gw.client(Some(&bob)).connect().await.unwrap();
    tls.write_all(
        b"POST /x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n\
          0\r\n\r\nGET /admin/users HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .await
    .unwrap();
    let h = head(&mut tls).await;
    assert!(h.starts_with("HTTP/1.1 "), "{h}");
    assert!(h.to_ascii_lowercase().contains("connection: close"), "{h}");
    assert!(
        closed_within(&mut tls, Duration::from_secs(5)).await,
        "the connection must close"
    );
    let seen = up.requests();
    assert!(
        seen.iter().all(|r| !r.uri.contains("admin")),
        "a smuggled request reached the upstream: {seen:?}"
    );
    for r in &seen {
        assert!(
            !(r.headers.contains_key("content-length")
                && r.headers.contains_key("transfer-encoding")),
            "the upstream got conflicting framing: {:?}",
            r.headers
        );
    }
}

#[tokio::test]
async fn slow_headers_are_cut_off_by_header_timeout() {
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    let up = FakeUpstream::start().await;
    let rest = format!("{POLICY}\nlimits:\n  header_timeout: 1s\n");
    let gw = TestGateway::start(&pki, &yaml(&pki, up.addr, &rest)).await;
    let mut tls = gw.client(Some(&bob)).connect().await.unwrap();
    tls.write_all(b"GET /x HTTP/1.1\r\nHost: localhost\r\nX-Slow: 1\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    assert!(
        closed_within(&mut tls, Duration::from_secs(6)).await,
        "a slow client must be disconnected"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "closed too early: {:?}",
        started.elapsed()
    );
    assert!(up.requests().is_empty());
}

#[tokio::test]
async fn slow_handshakes_are_cut_off_by_handshake_timeout() {
    let pki = TestPki::new();
    let up = FakeUpstream::start().await;
    let rest = format!("{POLICY}\nlimits:\n  handshake_timeout: 500ms\n");
    let gw = TestGateway::start(&pki, &yaml(&pki, up.addr, &rest)).await;
    // A TCP connection that never starts TLS.
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    assert!(closed_within(&mut tcp, Duration::from_secs(5)).await);
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    let up = FakeUpstream::start().await;
    let rest = format!("{POLICY}\nlimits:\n  idle_timeout: 1s\n");
    let gw = TestGateway::start(&pki, &yaml(&pki, up.addr, &rest)).await;
    let mut tls = gw.client(Some(&bob)).connect().await.unwrap();
    tls.write_all(b"GET /x HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let h = head(&mut tls).await;
    assert!(h.starts_with("HTTP/1.1 200"), "{h}");
    let started = std::time::Instant::now();
    assert!(
        closed_within(&mut tls, Duration::from_secs(6)).await,
        "an idle connection must be closed"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "closed too early: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn keep_alive_connections_outlive_header_timeout_between_requests() {
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    let up = FakeUpstream::start().await;
    let rest = format!("{POLICY}\nlimits:\n  header_timeout: 1s\n  idle_timeout: 30s\n");
    let gw = TestGateway::start(&pki, &yaml(&pki, up.addr, &rest)).await;
    let mut tls = gw.client(Some(&bob)).connect().await.unwrap();
    tls.write_all(b"GET /one HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let h = head(&mut tls).await;
    assert!(h.starts_with("HTTP/1.1 200"), "{h}");
    let mut body = [0u8; 11];
    tls.read_exact(&mut body).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1800)).await;
    tls.write_all(b"GET /two HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let h = head(&mut tls).await;
    assert!(
        h.starts_with("HTTP/1.1 200"),
        "an idle keep-alive connection is governed by idle_timeout: {h:?}"
    );
}

#[tokio::test]
async fn max_connections_holds_new_connections_until_one_closes() {
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    let up = FakeUpstream::start().await;
    let rest = format!("{POLICY}\nlimits:\n  max_connections: 1\n");
    let gw = TestGateway::start(&pki, &yaml(&pki, up.addr, &rest)).await;
    let client = gw.client(Some(&bob));
    let first = client.connect().await.unwrap();

    // The second connection finishes its handshake (handshakes have their own ceiling) but
    // is not served until the first one closes.
    let mut second = client.connect().await.unwrap();
    second
        .write_all(b"GET /x HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut byte = [0u8; 1];
    assert!(
        tokio::time::timeout(Duration::from_millis(400), second.read(&mut byte))
            .await
            .is_err(),
        "a second connection must wait while the first is open"
    );
    drop(first);
    let h = head(&mut second).await;
    assert!(
        h.starts_with("HTTP/1.1 200"),
        "the second connection is served once the first closes: {h:?}"
    );
}
