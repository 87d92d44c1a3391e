//! Forwarding: header hygiene, bodies, upgrades, upstream failures.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::POLICY;
use crate::support::client::{read_head, request};
use crate::support::gateway::yaml;
use crate::support::upstream::Mode;
use crate::support::{Client, FakeUpstream, TestGateway, TestPki};

#[tokio::test]
async fn spoofed_identity_headers_are_replaced_whatever_their_case() {
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&pki, &yaml(&pki, up.addr, POLICY)).await;
    for c in [
        gw.client(Some(&bob)),
        Client::h2(gw.addr, &gw.ca_pem, Some(&bob)),
    ] {
        let mut req = request("GET", "/x");
        let h = req.headers_mut();
        h.insert("X-Client-Id", "CN=root".parse().unwrap());
        h.append("x-client-id", "CN=root2".parse().unwrap());
        h.insert("X-CLIENT-ROLES", "admin".parse().unwrap());
        h.insert("x-client-principals", "ops".parse().unwrap());
        h.insert("x-client-auth", "certificate,api_key".parse().unwrap());
        h.insert("x-forwarded-client-cert", "Hash=forged".parse().unwrap());
        h.insert("client-cert", ":Zm9yZ2Vk:".parse().unwrap());
        assert_eq!(c.send(req).await.unwrap().status, 200);
        let seen = up.last();
        let all = |n: &str| {
            seen.headers
                .get_all(n)
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(all("x-client-id"), ["O=Acme,CN=reader-bob"]);
        assert_eq!(all("x-client-roles"), ["reader"]);
        assert_eq!(all("x-client-principals"), ["readers"]);
        assert_eq!(all("x-client-auth"), ["certificate"]);
        assert_eq!(all("x-forwarded-client-cert").len(), 1);
        assert!(!all("x-forwarded-client-cert")[0].contains("forged"));
        assert!(
            all("client-cert").is_empty(),
            "the other certificate header is removed too"
        );
    }
}

#[tokio::test]
async fn forwarded_headers_request_id_and_hop_by_hop() {
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&pki, &yaml(&pki, up.addr, POLICY)).await;
    let c = gw.client(Some(&bob));

    let mut req = request("GET", "/x");
    let h = req.headers_mut();
    h.insert("x-forwarded-for", "203.0.113.7".parse().unwrap());
    h.insert("x-forwarded-proto", "http".parse().unwrap());
    h.insert("x-request-id", "trace-123:abc".parse().unwrap());
    h.insert("connection", "x-private-hop".parse().unwrap());
    h.insert("x-private-hop", "1".parse().unwrap());
    h.insert("te", "trailers".parse().unwrap());
    h.insert("proxy-authorization", "Basic Zm9vOmJhcg==".parse().unwrap());
    let r = c.send(req).await.unwrap();
    assert_eq!(r.headers["x-request-id"], "trace-123:abc");
    assert!(
        !r.headers.contains_key("x-hop"),
        "hop-by-hop headers named by the upstream's Connection are removed"
    );
    assert_eq!(r.headers["x-upstream"], "fake");
    let seen = up.last();
    assert_eq!(
        seen.headers["x-forwarded-for"], "127.0.0.1",
        "a client's own X-Forwarded-For is not trusted"
    );
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    assert_eq!(seen.headers["x-forwarded-host"], "localhost");
    assert_eq!(seen.headers["x-request-id"], "trace-123:abc");
    for hop in ["x-private-hop", "te", "proxy-authorization"] {
        assert!(
            !seen.headers.contains_key(hop),
            "{hop} must not be forwarded"
        );
    }

    let mut req = request("GET", "/x");
    req.headers_mut()
        .insert("x-request-id", "bad id with spaces".parse().unwrap());
    let r = c.send(req).await.unwrap();
    let id = r.headers["x-request-id"].to_str().unwrap().to_owned();
    assert_ne!(id, "bad id with spaces");
    assert_eq!(
        up.last().headers["x-request-id"].to_str().unwrap(),
        id,
        "client and upstream see the same new id"
    );
}

#[tokio::test]
async fn bodies_stream_intact_both_ways_over_h1_and_h2() {
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&pki, &yaml(&pki, up.addr, POLICY)).await;
    let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    for c in [
        gw.client(Some(&bob)),
        Client::h2(gw.addr, &gw.ca_pem, Some(&bob)),
    ] {
        let req = Request::post("https://localhost/upload")
            .header("host", "localhost")
            .body(Full::new(Bytes::from(payload.clone())))
            .unwrap();
        let r = c.send(req).await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), payload.len());
        assert!(r.body == payload, "echoed body differs");
        assert_eq!(up.last().body.len(), payload.len());
    }
}

#[tokio::test]
async fn oversized_bodies_get_413_up_front_and_mid_stream() {
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    let up = FakeUpstream::start().await;
    let rest = format!("{POLICY}\nlimits:\n  max_body_bytes: 64KiB\n");
    let gw = TestGateway::start(&pki, &yaml(&pki, up.addr, &rest)).await;
    let big = Bytes::from(vec![b'x'; 100 * 1024]);

    // Declared length over the limit: refused before anything is forwarded.
    let req = Request::post("https://localhost/up")
        .header("host", "localhost")
        .body(Full::new(big.clone()))
        .unwrap();
    let r = gw.client(Some(&bob)).send(req).await.unwrap();
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"], "request body too large");
    assert!(up.requests().is_empty());

    // HTTP/2 without content-length: the excess is found while streaming.
    let stream = http_body_util::StreamBody::new(futures_stream(big));
    let req = Request::post("https://localhost/up").body(stream).unwrap();
    let tls = Client::h2(gw.addr, &gw.ca_pem, Some(&bob))
        .connect()
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 413);
    assert!(
        up.requests().iter().all(|r| r.body.len() < 100 * 1024),
        "the upstream never got the whole body"
    );
}

/// A body of 16 KiB frames without a declared length.
fn futures_stream(
    data: Bytes,
) -> impl futures_core::Stream<Item = Result<hyper::body::Frame<Bytes>, std::convert::Infallible>>
+ Send
+ 'static {
    let chunks: Vec<Bytes> = data.chunks(16 * 1024).map(Bytes::copy_from_slice).collect();
    ChunkStream(chunks.into_iter())
}

struct ChunkStream(std::vec::IntoIter<Bytes>);

impl futures_core::Stream for ChunkStream {
    type Item = Result<hyper::body::Frame<Bytes>, std::convert::Infallible>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        std::task::Poll::Ready(self.0.next().map(|b| Ok(hyper::body::Frame::data(b))))
    }
}

#[tokio::test]
async fn oversized_headers_get_431() {
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    let up = FakeUpstream::start().await;
    let rest = format!("{POLICY}\nlimits:\n  max_header_bytes: 4KiB\n");
    let gw = TestGateway::start(&pki, &yaml(&pki, up.addr, &rest)).await;
    for c in [
        gw.client(Some(&bob)),
        Client::h2(gw.addr, &gw.ca_pem, Some(&bob)),
    ] {
        let mut req = request("GET", "/x");
        req.headers_mut()
            .insert("x-big", "a".repeat(5000).parse().unwrap());
        match c.send(req).await {
            Ok(r) => assert_eq!(r.status, 431),
            // HTTP/2 may refuse a header block over the advertised limit before any response.
            Err(e) => assert!(e.contains("send"), "{e}"),
        }
    }
    assert!(up.requests().is_empty());
}

#[tokio::test]
async fn upstream_down_is_502_and_slow_upstream_is_504_without_leaking_addresses() {
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    let dead = FakeUpstream::refused_addr().await;
    let gw = TestGateway::start(&pki, &yaml(&pki, dead, POLICY)).await;
    let r = gw.client(Some(&bob)).get("/x").await.unwrap();
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["error"], "upstream unavailable");
    let body = String::from_utf8_lossy(&r.body).into_owned();
    assert!(
        !body.contains("127.0.0.1") && !body.contains(&dead.port().to_string()),
        "{body}"
    );

    let slow = FakeUpstream::with_mode(Mode::Delay(std::time::Duration::from_secs(4))).await;
    let pki2 = TestPki::new();
    let mut pki2 = pki2;
    let bob2 = pki2.client("reader-bob");
    let gw2 = TestGateway::start(&pki2, &yaml(&pki2, slow.addr, POLICY)).await;
    let started = std::time::Instant::now();
    let r = gw2.client(Some(&bob2)).get("/x").await.unwrap();
    assert_eq!(r.status, 504);
    assert_eq!(r.json()["error"], "upstream timeout");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(4),
        "the 2s upstream timeout applied"
    );
}

#[tokio::test]
async fn websocket_upgrades_pass_only_where_the_route_allows_them() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    let policy = r#"
principals:
  - { name: readers, cert: { cn: "reader-*" }, roles: [reader] }
routes:
  - { name: ws, match: { prefix: /ws/ }, upstream: app, allow: { roles: [reader] }, websocket: true }
  - { name: plain, match: { prefix: / }, upstream: app, allow: { roles: [reader] } }
"#;
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&pki, &yaml(&pki, up.addr, policy)).await;
    let c = gw.client(Some(&bob));

    let mut tls = c.connect().await.unwrap();
    tls.write_all(
        b"GET /ws/chat HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let head = read_head(&mut tls).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    tls.write_all(b"ping through the tunnel").await.unwrap();
    let mut buf = [0u8; 23];
    tokio::time::timeout(std::time::Duration::from_secs(5), tls.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"ping through the tunnel");

    let mut tls = c.connect().await.unwrap();
    tls.write_all(b"GET /other HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut tls).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        !up.last().headers.contains_key("upgrade"),
        "the upgrade is not forwarded on a plain route"
    );
}

#[tokio::test]
async fn gateway_is_transparent_apart_from_documented_headers() {
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&pki, &yaml(&pki, up.addr, POLICY)).await;
    let build = || {
        Request::post("/items?q=1&r=two")
            .header("host", "localhost")
            .header("content-type", "application/json")
            .header("x-custom", "v1")
            .header("accept", "*/*")
            .body(Full::new(Bytes::from_static(b"{\"a\":1}")))
            .unwrap()
    };
    // Direct to the upstream, in plaintext.
    let tcp = tokio::net::TcpStream::connect(up.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let direct_resp = sender.send_request(build()).await.unwrap();
    let direct = up.last();
    // Through the gateway.
    let mut req = build();
    *req.uri_mut() = "https://localhost/items?q=1&r=two".parse().unwrap();
    let via_resp = gw.client(Some(&bob)).send(req).await.unwrap();
    let via = up.last();

    assert_eq!(direct.method, via.method);
    assert_eq!(direct.uri, via.uri);
    assert_eq!(direct.body, via.body);
    let added = [
        "x-client-id",
        "x-client-principals",
        "x-client-roles",
        "x-client-auth",
        "x-forwarded-client-cert",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-request-id",
    ];
    for (name, value) in &direct.headers {
        assert_eq!(via.headers.get(name), Some(value), "{name} changed");
    }
    for name in via.headers.keys() {
        assert!(
            direct.headers.contains_key(name) || added.contains(&name.as_str()),
            "unexpected header {name}"
        );
    }
    assert_eq!(direct_resp.status(), via_resp.status);
    assert_eq!(
        direct_resp.headers()["x-upstream"],
        via_resp.headers["x-upstream"]
    );
}

#[tokio::test]
async fn rfc9440_client_cert_header_carries_the_der() {
    use base64::Engine as _;
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    let up = FakeUpstream::start().await;
    let rest = format!("{POLICY}\nforward:\n  headers:\n    client_cert_format: rfc9440\n");
    let gw = TestGateway::start(&pki, &yaml(&pki, up.addr, &rest)).await;
    let mut req = request("GET", "/x");
    req.headers_mut()
        .insert("x-forwarded-client-cert", "Hash=forged".parse().unwrap());
    assert_eq!(gw.client(Some(&bob)).send(req).await.unwrap().status, 200);
    let seen = up.last();
    let want = format!(
        ":{}:",
        base64::engine::general_purpose::STANDARD.encode(&bob.der)
    );
    assert_eq!(seen.headers["client-cert"], want.as_str());
    assert!(
        !seen.headers.contains_key("x-forwarded-client-cert"),
        "the other format's header is removed"
    );
}
