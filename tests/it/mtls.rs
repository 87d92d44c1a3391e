//! TLS termination and certificate identity: what a caller's certificate gets it.

use crate::POLICY;
use crate::support::gateway::{yaml, yaml_with};
use crate::support::{Client, FakeUpstream, TestGateway, TestPki};

async fn metrics(gw: &TestGateway) -> String {
    crate::support::admin_get(gw.admin.expect("admin listener"), "/metrics").await
}

#[tokio::test]
async fn verified_client_is_forwarded_with_its_identity() {
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&pki, &yaml(&pki, up.addr, POLICY)).await;

    let reply = gw.client(Some(&bob)).get("/hello").await.unwrap();
    assert_eq!(reply.status, 200);
    let seen = up.last();
    assert_eq!(seen.uri, "/hello");
    assert_eq!(seen.headers["x-client-id"], "O=Acme,CN=reader-bob");
    assert_eq!(seen.headers["x-client-principals"], "readers");
    assert_eq!(seen.headers["x-client-roles"], "reader");
    assert_eq!(seen.headers["x-client-auth"], "certificate");
    let fp = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bob.der));
    let xfcc = seen.headers["x-forwarded-client-cert"].to_str().unwrap();
    assert!(
        xfcc.starts_with(&format!("Hash={fp};Subject=\"O=Acme,CN=reader-bob\"")),
        "{xfcc}"
    );
}

#[tokio::test]
async fn rejects_handshakes_without_a_valid_client_certificate() {
    let mut pki = TestPki::new();
    let untrusted = pki.client_from_other_ca("reader-mallory");
    let expired = pki.expired_client("reader-old");
    let no_eku = pki.add_client(
        "reader-noeku",
        portcullis::pki::ClientSpec {
            cn: "reader-noeku".into(),
            days: 30,
            without_client_auth_eku: true,
            ..Default::default()
        },
    );
    let revoked = pki.client("reader-revoked");
    pki.revoke(&revoked);
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&pki, &yaml(&pki, up.addr, POLICY)).await;

    for (name, cert) in [
        ("none", None),
        ("untrusted", Some(&untrusted)),
        ("expired", Some(&expired)),
        ("no client EKU", Some(&no_eku)),
        ("revoked", Some(&revoked)),
    ] {
        let result = gw.client(cert).get("/hello").await;
        let Err(e) = result else {
            panic!("{name}: expected the handshake to be refused, got {result:?}");
        };
        // The client reads the server's alert (not a reset that would swallow it), so its
        // user learns why: rustls says "received fatal alert: CertificateRequired" and so on.
        let e = format!("{e:#}");
        assert!(e.contains("received fatal alert"), "{name}: {e}");
    }
    assert!(up.requests().is_empty(), "the upstream must see nothing");
    let m = metrics(&gw).await;
    for reason in [
        "no_certificate",
        "unknown_ca",
        "expired",
        "revoked",
        "bad_purpose",
    ] {
        assert!(
            m.contains(&format!(
                "portcullis_tls_handshake_failures_total{{reason=\"{reason}\"}} 1"
            )),
            "{reason} not counted:\n{m}"
        );
    }
}

#[tokio::test]
async fn optional_client_auth_lets_anonymous_callers_reach_open_routes_only() {
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(
        &pki,
        &yaml_with(&pki, up.addr, "client_auth: optional", POLICY),
    )
    .await;

    let anon = gw.client(None);
    assert_eq!(anon.get("/health").await.unwrap().status, 200);
    let denied = anon.get("/hello").await.unwrap();
    assert_eq!(denied.status, 401);
    assert_eq!(denied.json()["error"], "authentication required");
    assert_eq!(
        gw.client(Some(&bob)).get("/hello").await.unwrap().status,
        200
    );
    // An anonymous request forwarded to an open route carries no identity.
    let health = &up.requests()[0];
    assert!(!health.headers.contains_key("x-client-id"));
}

#[tokio::test]
async fn client_auth_off_never_asks_for_a_certificate() {
    let pki = TestPki::new();
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&pki, &yaml_with(&pki, up.addr, "client_auth: off", POLICY)).await;
    let anon = gw.client(None);
    assert_eq!(anon.get("/health").await.unwrap().status, 200);
    assert_eq!(anon.get("/hello").await.unwrap().status, 401);
}

#[tokio::test]
async fn tls12_is_accepted_by_default_and_refused_with_min_version_13() {
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&pki, &yaml(&pki, up.addr, POLICY)).await;
    let c12 = Client::tls12(gw.addr, &gw.ca_pem, Some(&bob));
    assert_eq!(c12.get("/hello").await.unwrap().status, 200);

    let pki13 = TestPki::new();
    let gw13 = TestGateway::start(
        &pki13,
        &yaml_with(&pki13, up.addr, "min_version: \"1.3\"", POLICY),
    )
    .await;
    let mut pki13 = pki13;
    let bob13 = pki13.client("reader-bob");
    let c12 = Client::tls12(gw13.addr, &gw13.ca_pem, Some(&bob13));
    assert!(
        c12.connect().await.is_err(),
        "a TLS 1.2 handshake must fail"
    );
}

#[tokio::test]
async fn the_gateway_prefers_aes_128_gcm_and_serves_clients_that_offer_only_another_suite() {
    use rustls::crypto::aws_lc_rs::cipher_suite as suite;
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&pki, &yaml(&pki, up.addr, POLICY)).await;
    // OpenSSL's order: AES-256 first. The server's order wins (SHA-256 is the cheaper hash).
    for (offered, expected) in [
        (
            vec![
                suite::TLS13_AES_256_GCM_SHA384,
                suite::TLS13_AES_128_GCM_SHA256,
            ],
            suite::TLS13_AES_128_GCM_SHA256,
        ),
        (
            vec![suite::TLS13_AES_256_GCM_SHA384],
            suite::TLS13_AES_256_GCM_SHA384,
        ),
        (
            vec![suite::TLS13_CHACHA20_POLY1305_SHA256],
            suite::TLS13_CHACHA20_POLY1305_SHA256,
        ),
    ] {
        let c = Client::with_suites(gw.addr, &gw.ca_pem, Some(&bob), &offered);
        let tls = c.connect().await.unwrap();
        let negotiated = tls.get_ref().1.negotiated_cipher_suite().unwrap();
        assert_eq!(negotiated.suite(), expected.suite(), "offered {offered:?}");
        assert_eq!(c.get("/hello").await.unwrap().status, 200);
    }
}

#[tokio::test]
async fn configured_cipher_suites_are_the_only_ones_and_their_order_wins() {
    use rustls::crypto::aws_lc_rs::cipher_suite as suite;
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    let up = FakeUpstream::start().await;
    let suites = "cipher_suites: [TLS_AES_256_GCM_SHA384, TLS_AES_128_GCM_SHA256, TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384]";
    let gw = TestGateway::start(&pki, &yaml_with(&pki, up.addr, suites, POLICY)).await;
    let offered = [
        suite::TLS13_AES_128_GCM_SHA256,
        suite::TLS13_AES_256_GCM_SHA384,
    ];
    let c = Client::with_suites(gw.addr, &gw.ca_pem, Some(&bob), &offered);
    let tls = c.connect().await.unwrap();
    let negotiated = tls.get_ref().1.negotiated_cipher_suite().unwrap();
    assert_eq!(negotiated.suite(), suite::TLS13_AES_256_GCM_SHA384.suite());
    assert_eq!(c.get("/hello").await.unwrap().status, 200);
    // A suite left out of the list is refused.
    let chacha = [suite::TLS13_CHACHA20_POLY1305_SHA256];
    let c = Client::with_suites(gw.addr, &gw.ca_pem, Some(&bob), &chacha);
    assert!(c.connect().await.is_err(), "ChaCha20 is not configured");
}

#[tokio::test]
async fn http2_is_negotiated_by_alpn() {
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&pki, &yaml(&pki, up.addr, POLICY)).await;
    let c = Client::h2(gw.addr, &gw.ca_pem, Some(&bob));
    let tls = c.connect().await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let reply = c.get("/over-h2").await.unwrap();
    assert_eq!(reply.status, 200);
    let seen = up.last();
    assert_eq!(seen.uri, "/over-h2");
    assert_eq!(
        seen.headers["host"], "localhost",
        "the upstream gets a Host header from :authority"
    );
}

#[tokio::test]
async fn plain_http_on_the_tls_port_gets_a_readable_400() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = TestPki::new();
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&pki, &yaml(&pki, up.addr, POLICY)).await;

    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(b"GET /admin/x HTTP/1.1\r\nHost: localhost\r\nUser-Agent: curl\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await.unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer}"
    );
    assert!(
        answer.contains("content-type: application/json\r\n"),
        "{answer}"
    );
    let id = answer
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .expect("a request id");
    let body = answer.split("\r\n\r\n").nth(1).unwrap();
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(
        json["error"],
        "plain HTTP request sent to the HTTPS port: use https://"
    );
    assert_eq!(json["request_id"], id);
    assert!(up.requests().is_empty(), "nothing reaches the upstream");
    let m = metrics(&gw).await;
    assert!(
        m.contains("portcullis_tls_handshake_failures_total{reason=\"plain_http\"} 1"),
        "{m}"
    );
    // TLS clients are unaffected.
    let mut pki = pki;
    let bob = pki.client("reader-bob");
    assert_eq!(gw.client(Some(&bob)).get("/x").await.unwrap().status, 200);
}

#[tokio::test]
async fn a_client_that_sends_its_request_early_still_reads_why_it_was_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = TestPki::new();
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&pki, &yaml(&pki, up.addr, POLICY)).await;
    // A TLS 1.3 client is done with its side of the handshake before the server has checked
    // its (missing) certificate, and sends its request right away, as curl does. Were the
    // server to close over that unread request, the kernel's reset would fail the client's
    // writes with a broken pipe and the alert would never be read.
    let mut tls = gw
        .client(None)
        .connect()
        .await
        .expect("the client's side completes");
    let request = b"GET /hello HTTP/1.1\r\nHost: localhost\r\n\r\n";
    for _ in 0..2 {
        tls.write_all(request).await.expect("writes are not reset");
        tls.flush().await.expect("writes are not reset");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let mut buf = Vec::new();
    let e = tls.read_to_end(&mut buf).await.expect_err("refused");
    assert!(
        e.to_string()
            .contains("received fatal alert: CertificateRequired"),
        "{e}"
    );
}

#[tokio::test]
async fn a_refused_head_request_gets_headers_only_over_both_protocols() {
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&pki, &yaml(&pki, up.addr, POLICY)).await;
    for c in [
        Client::new(gw.addr, &pki.ca_pem, Some(&bob)),
        Client::h2(gw.addr, &pki.ca_pem, Some(&bob)),
    ] {
        // HTTP/2 has no framing that hides a body: sending the JSON error to a HEAD request
        // was a protocol error that clients reported instead of the 403.
        let reply = c
            .send(crate::support::client::request("HEAD", "/admin/x"))
            .await
            .unwrap();
        assert_eq!(reply.status, 403);
        assert!(reply.body.is_empty(), "{:?}", reply.body);
        assert_eq!(reply.headers["content-type"], "application/json");
        assert!(reply.headers.contains_key("x-request-id"));
    }
}
