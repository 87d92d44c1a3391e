//! The review's attacks, each against a real gateway over real TLS: what an outsider, or the
//! holder of one credential, tries, and what the gateway must answer.

use std::time::Duration;

use http_body_util::BodyExt;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::POLICY;
use crate::support::client::{basic, closed_within, read_head as head, request};
use crate::support::gateway::{yaml, yaml_with};
use crate::support::jwt::{Signer, jwks, now};
use crate::support::upstream::Mode;
use crate::support::{Client, FakeUpstream, TestGateway, TestPki, metric};

/// One raw HTTP/1.1 exchange on a new connection: the response head.
async fn raw(c: &Client, head_text: &str) -> String {
    let mut tls = c.connect().await.unwrap();
    tls.write_all(head_text.as_bytes()).await.unwrap();
    head(&mut tls).await
}

// 1. The brute-force guard and concurrency.

#[tokio::test]
async fn concurrent_wrong_passwords_cannot_outrun_the_failure_budget() {
    let pki = TestPki::new();
    let hash = portcullis::auth::hash_password("correct horse").unwrap();
    let policy = format!(
        r#"
rate_limits:
  auth_failures: {{ key: ip, rate: 5/min, burst: 5 }}
principals:
  - {{ name: alice, basic: {{ user: alice, argon2: "{hash}" }}, roles: [reader] }}
routes:
  - {{ name: docs, match: {{ prefix: / }}, upstream: app, allow: {{ roles: [reader] }} }}
"#
    );
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(
        &pki,
        &yaml_with(&pki, up.addr, "client_auth: optional", &policy),
    )
    .await;
    let c = gw.client(None);
    let send = |pass: &'static str| {
        let c = c.clone();
        tokio::spawn(async move {
            let mut req = request("GET", "/doc");
            req.headers_mut()
                .insert("authorization", basic("alice", pass).parse().unwrap());
            c.send(req).await.unwrap().status.as_u16()
        })
    };
    // 29 wrong guesses at once, each on its own connection, then the right one 20 ms later,
    // while the guesses are still being verified.
    let guesses: Vec<_> = (0..29).map(|_| send("wrong")).collect();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let right = send("correct horse");
    let mut statuses = Vec::new();
    for g in guesses {
        statuses.push(g.await.unwrap());
    }
    let right = right.await.unwrap();
    let unauthorized = statuses.iter().filter(|s| **s == 401).count();
    assert!(
        unauthorized <= 5,
        "at most burst=5 guesses may be verified: {statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 401 || *s == 429),
        "{statuses:?}"
    );
    assert_eq!(
        right, 429,
        "the right password arrives after the budget is spent: {statuses:?}"
    );
    assert!(up.requests().is_empty());
}

// 2. ALPN h2 and the slow-loris guard.

#[tokio::test]
async fn a_connection_is_served_only_as_its_alpn_protocol_and_h2_heads_time_out() {
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    let up = FakeUpstream::start().await;
    let rest = format!("{POLICY}\nlimits:\n  header_timeout: 1s\n  idle_timeout: 60s\n");
    let gw = TestGateway::start(&pki, &yaml(&pki, up.addr, &rest)).await;
    let h2 = Client::h2(gw.addr, &pki.ca_pem, Some(&bob));

    // ALPN said h2; the bytes are an HTTP/1.1 head, trickled. Not served, and closed quickly.
    let mut tls = h2.connect().await.unwrap();
    tls.write_all(b"GET /x HTTP/1.1\r\n").await.unwrap();
    let started = std::time::Instant::now();
    let mut closed = false;
    for _ in 0..20 {
        if tls.write_all(b"X-Slow: 1\r\n").await.is_err() {
            closed = true;
            break;
        }
        if closed_within(&mut tls, Duration::from_millis(250)).await {
            closed = true;
            break;
        }
    }
    assert!(
        closed,
        "an HTTP/1.1 head on an h2 connection must not hold it open"
    );
    assert!(started.elapsed() < Duration::from_secs(4));

    // An HTTP/2 client that opens the connection and never sends a request: GOAWAY, and the
    // connection is closed outright when the client does not finish it either.
    let mut tls = h2.connect().await.unwrap();
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    assert!(
        closed_within(&mut tls, Duration::from_secs(6)).await,
        "an h2 connection without a request must be closed"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "closed too early: {:?}",
        started.elapsed()
    );
    assert!(up.requests().is_empty());
    assert!(
        metric(
            &gw,
            "portcullis_connections_closed_total{reason=\"header_timeout\"}"
        )
        .await
            >= 1.0
    );

    // And h2 still works for real requests.
    assert_eq!(h2.get("/x").await.unwrap().status, 200);
}

// 3. The Host the policy sees is the Host the upstream gets.

const HOST_POLICY: &str = r#"
principals:
  - { name: ops, cert: { cn: "ops-*" }, roles: [admin, reader] }
  - { name: readers, cert: { cn: "reader-*" }, roles: [reader] }
routes:
  - name: admin
    match: { prefix: /, host: admin.internal }
    upstream: app
    allow: { roles: [admin] }
  - name: reader
    match: { prefix: / }
    upstream: app
    allow: { roles: [reader] }
"#;

#[tokio::test]
async fn host_tricks_are_refused_and_the_upstream_gets_the_matched_host() {
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&pki, &yaml(&pki, up.addr, HOST_POLICY)).await;
    let c = gw.client(Some(&bob));

    let cases = [
        ("Host: admin.internal.\r\n", "403"),
        ("Host: ADMIN.Internal\r\n", "403"),
        ("Host: admin.internal:8443\r\n", "403"),
        ("Host: x y\r\nHost: admin.internal\r\n", "400"),
        ("Host: a\r\nHost: b\r\n", "400"),
        ("Host: admin.internal@x\r\n", "400"),
        ("Host: x@admin.internal\r\n", "400"),
        ("", "400"),
    ];
    for (hosts, want) in cases {
        let h = raw(&c, &format!("GET /x HTTP/1.1\r\n{hosts}\r\n")).await;
        assert!(h.starts_with(&format!("HTTP/1.1 {want}")), "{hosts:?}: {h}");
    }
    assert!(
        up.requests().is_empty(),
        "none of these may reach the upstream"
    );
    // An absolute-form target must agree with Host.
    let h = raw(
        &c,
        "GET https://admin.internal/x HTTP/1.1\r\nHost: www.example\r\n\r\n",
    )
    .await;
    assert!(h.starts_with("HTTP/1.1 400"), "{h}");

    // The upstream gets the host the policy matched, canonical.
    let h = raw(&c, "GET /x HTTP/1.1\r\nHost: WWW.Example.COM.:8443\r\n\r\n").await;
    assert!(h.starts_with("HTTP/1.1 200"), "{h}");
    let seen = up.last();
    assert_eq!(seen.headers["host"], "www.example.com:8443");
    assert_eq!(seen.headers["x-forwarded-host"], "www.example.com");

    // HTTP/2: a Host header that disagrees with :authority.
    let h2 = Client::h2(gw.addr, &pki.ca_pem, Some(&bob));
    let mut req = request("GET", "/x");
    req.headers_mut()
        .insert("host", "admin.internal".parse().unwrap());
    let r = h2.send(req).await.unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["error"],
        "host does not match the request authority"
    );
}

// 4. Slow readers.

#[tokio::test]
async fn readers_that_stop_reading_are_cut_off_by_send_timeout() {
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    let up = FakeUpstream::with_mode(Mode::Big(32 * 1024 * 1024)).await;
    let rest = format!("{POLICY}\nlimits:\n  max_connections: 2\n  send_timeout: 1s\n");
    let gw = TestGateway::start(&pki, &yaml(&pki, up.addr, &rest)).await;
    let c = gw.client(Some(&bob));

    // HTTP/1.1: two clients ask for 32 MiB and read nothing.
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let mut tls = c.connect().await.unwrap();
        tls.write_all(b"GET /big HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        stalled.push(tls);
    }
    // A third caller is served once send_timeout has cut them off.
    let third = tokio::time::timeout(
        Duration::from_secs(10),
        raw(&c, "GET /big HTTP/1.1\r\nHost: localhost\r\n\r\n"),
    )
    .await
    .expect("stalled readers must not hold their slots for good");
    assert!(third.starts_with("HTTP/1.1 200"), "{third}");
    for mut s in stalled {
        assert!(closed_within(&mut s, Duration::from_secs(5)).await);
    }

    // HTTP/2: a client that takes the response head and never reads the body (so never
    // grants flow-control window).
    let (mut sender, conn) = Client::h2(gw.addr, &pki.ca_pem, Some(&bob))
        .h2_session()
        .await;
    let resp = sender.send_request(request("GET", "/big")).await.unwrap();
    assert_eq!(resp.status(), 200);
    let ended = tokio::time::timeout(Duration::from_secs(10), conn).await;
    assert!(
        ended.is_ok(),
        "an h2 connection that stops reading must be closed"
    );
    drop(resp);
    assert!(
        metric(
            &gw,
            "portcullis_connections_closed_total{reason=\"send_timeout\"}"
        )
        .await
            >= 3.0
    );
}

// 5. WebSocket tunnels.

const WS_POLICY: &str = r#"
principals:
  - { name: readers, cert: { cn: "reader-*" }, roles: [reader] }
routes:
  - { name: ws, match: { prefix: /ws }, upstream: app, allow: { roles: [reader] }, websocket: true }
"#;

const UPGRADE: &str = "GET /ws HTTP/1.1\r\nHost: localhost\r\nConnection: upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

#[tokio::test]
async fn websocket_tunnels_count_toward_max_connections_and_idle_out() {
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    let up = FakeUpstream::start().await;
    let rest =
        format!("{WS_POLICY}\nlimits:\n  max_connections: 4\n  websocket_idle_timeout: 1500ms\n");
    let gw = TestGateway::start(&pki, &yaml(&pki, up.addr, &rest)).await;
    let c = gw.client(Some(&bob));

    let mut tunnels = Vec::new();
    for _ in 0..4 {
        let mut tls = c.connect().await.unwrap();
        tls.write_all(UPGRADE.as_bytes()).await.unwrap();
        let h = head(&mut tls).await;
        assert!(h.starts_with("HTTP/1.1 101"), "{h}");
        tunnels.push(tls);
    }
    // Traffic flows through a tunnel (the upstream echoes).
    tunnels[0].write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    tunnels[0].read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"ping");
    assert_eq!(
        metric(&gw, "portcullis_open_connections").await,
        4.0,
        "open tunnels are open connections"
    );

    // A fifth and sixth upgrade wait: the tunnels hold every slot.
    let mut waiting = Vec::new();
    for _ in 0..2 {
        let mut tls = c.connect().await.unwrap();
        tls.write_all(UPGRADE.as_bytes()).await.unwrap();
        waiting.push(tls);
    }
    let mut byte = [0u8; 1];
    assert!(
        tokio::time::timeout(Duration::from_millis(500), waiting[0].read(&mut byte))
            .await
            .is_err(),
        "no slot may be free while four tunnels are open"
    );

    // Silent tunnels are closed after websocket_idle_timeout; the waiting upgrades proceed.
    for t in &mut tunnels {
        assert!(
            closed_within(t, Duration::from_secs(5)).await,
            "an idle tunnel must be closed"
        );
    }
    for w in &mut waiting {
        let h = head(w).await;
        assert!(h.starts_with("HTTP/1.1 101"), "{h}");
    }
    assert!(
        metric(
            &gw,
            "portcullis_connections_closed_total{reason=\"websocket_idle_timeout\"}"
        )
        .await
            >= 4.0
    );
}

#[tokio::test]
async fn the_drain_closes_websocket_tunnels() {
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    let up = FakeUpstream::start().await;
    let mut gw = TestGateway::start(&pki, &yaml(&pki, up.addr, WS_POLICY)).await;
    let mut tls = gw.client(Some(&bob)).connect().await.unwrap();
    tls.write_all(UPGRADE.as_bytes()).await.unwrap();
    assert!(head(&mut tls).await.starts_with("HTTP/1.1 101"));
    let drained = gw.begin_shutdown();
    assert!(
        closed_within(&mut tls, Duration::from_secs(5)).await,
        "a tunnel is closed by the drain"
    );
    tokio::time::timeout(Duration::from_secs(5), drained)
        .await
        .expect("the drain ends without waiting for shutdown_timeout (30s)")
        .unwrap();
}

// 6. Revocation reaches open connections.

#[tokio::test]
async fn a_reloaded_crl_closes_open_connections_and_tunnels_of_revoked_certificates() {
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    let carol = pki.client("reader-carol");
    let up = FakeUpstream::start().await;
    let policy = format!(
        "{POLICY}  - name: ws\n    match: {{ prefix: /ws }}\n    upstream: app\n    allow: {{ roles: [reader] }}\n    websocket: true\n"
    )
    .replace("  - name: reader\n    match: { prefix: / }", "  - name: reader\n    match: { prefix: /r }");
    let gw = TestGateway::start(&pki, &yaml(&pki, up.addr, &policy)).await;

    // A keep-alive HTTP/1.1 connection, an HTTP/2 connection and a tunnel, all as bob; and a
    // keep-alive connection as carol, who is not revoked.
    let mut h1 = gw.client(Some(&bob)).connect().await.unwrap();
    h1.write_all(b"GET /r HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    assert!(head(&mut h1).await.starts_with("HTTP/1.1 200"));
    let mut body = [0u8; 11];
    h1.read_exact(&mut body).await.unwrap();

    let (mut h2, h2_conn) = Client::h2(gw.addr, &pki.ca_pem, Some(&bob))
        .h2_session()
        .await;
    let r = h2.send_request(request("GET", "/r")).await.unwrap();
    assert_eq!(r.status(), 200);
    drop(r.into_body().collect().await);

    let mut tunnel = gw.client(Some(&bob)).connect().await.unwrap();
    tunnel.write_all(UPGRADE.as_bytes()).await.unwrap();
    assert!(head(&mut tunnel).await.starts_with("HTTP/1.1 101"));

    let mut other = gw.client(Some(&carol)).connect().await.unwrap();

    pki.revoke(&bob);
    portcullis::reload::reload(&gw.shared, &pki.file("gateway.yaml")).unwrap();

    // The next request on bob's HTTP/1.1 connection gets no response.
    let _ = h1
        .write_all(b"GET /r HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await;
    let h = head(&mut h1).await;
    assert!(!h.contains("200"), "a revoked connection was served: {h}");
    assert!(closed_within(&mut h1, Duration::from_secs(3)).await);
    // HTTP/2: refused, and the connection closes.
    let r = h2.send_request(request("GET", "/r")).await;
    assert!(
        r.is_err() || r.unwrap().status() != 200,
        "a revoked h2 connection was served"
    );
    assert!(
        tokio::time::timeout(Duration::from_secs(3), h2_conn)
            .await
            .is_ok(),
        "the h2 connection must close"
    );
    assert!(
        closed_within(&mut tunnel, Duration::from_secs(3)).await,
        "the tunnel must close"
    );
    // Carol's connection is unaffected.
    other
        .write_all(b"GET /r HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    assert!(head(&mut other).await.starts_with("HTTP/1.1 200"));
    // And new handshakes as bob are refused, as before.
    assert!(gw.client(Some(&bob)).get("/r").await.is_err());
}

// 7 and 8. Forwarding headers and `_` twins.

#[tokio::test]
async fn forwarding_headers_and_underscore_twins_never_reach_the_upstream() {
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&pki, &yaml(&pki, up.addr, POLICY)).await;
    let c = gw.client(Some(&bob));
    let forged = [
        ("forwarded", "for=10.0.0.1;host=admin.internal"),
        ("x-real-ip", "10.0.0.1"),
        ("x-forwarded-port", "80"),
        ("x-forwarded-prefix", "/admin"),
        ("x-forwarded-server", "evil"),
        ("x-original-url", "/admin/users"),
        ("x-original-uri", "/admin/users"),
        ("x-rewrite-url", "/admin/users"),
        ("x-http-method-override", "DELETE"),
        ("x-http-method", "DELETE"),
        ("x-method-override", "DELETE"),
        ("true-client-ip", "10.0.0.1"),
        ("x-client-id", "CN=ops-alice"),
        ("x_client_id", "evil"),
        ("x_client_roles", "admin"),
        ("x_client_principals", "ops"),
        ("x_forwarded_for", "10.0.0.1"),
        ("x_forwarded_client_cert", "Hash=0"),
        ("x_real_ip", "10.0.0.1"),
        ("x_api_key", "k"),
        ("x_request_id", "forged"),
        ("x_original_url", "/admin/users"),
        ("x_http_method_override", "DELETE"),
        ("x-forwarded-for", "203.0.113.9"),
        ("x-forwarded-host", "admin.internal"),
        ("x-forwarded-proto", "http"),
    ];
    let mut req = request("GET", "/x");
    for (k, v) in forged {
        req.headers_mut().append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    req.headers_mut()
        .insert("x_tenant", "acme".parse().unwrap());
    let r = c.send(req).await.unwrap();
    assert_eq!(r.status, 200);
    let seen = up.last();
    for (k, _) in forged {
        let own = matches!(
            k,
            "x-client-id" | "x-forwarded-for" | "x-forwarded-host" | "x-forwarded-proto"
        );
        if own {
            continue;
        }
        assert!(!seen.headers.contains_key(k), "{k} reached the upstream");
    }
    assert_eq!(seen.headers["x-client-id"], "O=Acme,CN=reader-bob");
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-host"], "localhost");
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    assert_eq!(
        seen.headers["x_tenant"], "acme",
        "other underscore headers pass with underscore_headers: allow (the default)"
    );
    assert_eq!(seen.headers.get_all("x-client-id").iter().count(), 1);
}

#[tokio::test]
async fn x_forwarded_off_removes_client_copies_and_trusted_headers_are_an_opt_in() {
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    let up = FakeUpstream::start().await;
    let off = format!("{POLICY}\nforward:\n  x_forwarded: false\n  underscore_headers: drop\n");
    let gw = TestGateway::start(&pki, &yaml(&pki, up.addr, &off)).await;
    let mut req = request("GET", "/x");
    for (k, v) in [
        ("x-forwarded-for", "203.0.113.9"),
        ("x-forwarded-host", "admin.internal"),
        ("x-forwarded-proto", "http"),
        ("x_tenant", "acme"),
    ] {
        req.headers_mut().insert(k, v.parse().unwrap());
    }
    assert_eq!(gw.client(Some(&bob)).send(req).await.unwrap().status, 200);
    let seen = up.last();
    for k in [
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x_tenant",
    ] {
        assert!(!seen.headers.contains_key(k), "{k} reached the upstream");
    }
    drop(gw);

    let trusting = format!(
        "{POLICY}\nforward:\n  trusted_client_headers: [x-forwarded-for, x-real-ip]\n  underscore_headers: reject\n"
    );
    let gw = TestGateway::start(&pki, &yaml(&pki, up.addr, &trusting)).await;
    let mut req = request("GET", "/x");
    req.headers_mut()
        .insert("x-forwarded-for", "203.0.113.9".parse().unwrap());
    req.headers_mut()
        .insert("x-real-ip", "203.0.113.9".parse().unwrap());
    req.headers_mut()
        .insert("forwarded", "for=203.0.113.9".parse().unwrap());
    let c = gw.client(Some(&bob));
    assert_eq!(c.send(req).await.unwrap().status, 200);
    let seen = up.last();
    assert_eq!(seen.headers["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(seen.headers["x-real-ip"], "203.0.113.9");
    assert!(!seen.headers.contains_key("forwarded"));
    // underscore_headers: reject answers 400 with the JSON body.
    let before = up.requests().len();
    let mut req = request("GET", "/x");
    req.headers_mut()
        .insert("x_tenant", "acme".parse().unwrap());
    let r = c.send(req).await.unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "header name with underscore");
    assert_eq!(up.requests().len(), before);
}

// 9. Path parameters.

#[tokio::test]
async fn path_parameters_cannot_slip_past_prefix_rules() {
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    let up = FakeUpstream::start().await;
    let policy = POLICY.replace(
        "  - name: reader\n    match: { prefix: / }",
        "  - name: public\n    match: { prefix: /public/ }\n    upstream: app\n    allow: anyone\n  - name: reader\n    match: { prefix: / }",
    );
    let gw = TestGateway::start(&pki, &yaml(&pki, up.addr, &policy)).await;
    let c = gw.client(Some(&bob));
    for path in [
        "/public/..;/admin/x",
        "/public/%2e%2e;/admin/x",
        "/public/%2E%2E%3B/admin/x",
        "/public/.;x/../admin/x",
    ] {
        let r = c.get(path).await.unwrap();
        assert_eq!(r.status, 400, "{path}");
        assert_eq!(r.json()["error"], "dot segment with parameters in path");
    }
    // Parameters on an ordinary segment: matched as Tomcat resolves them.
    let r = c.get("/admin;jsessionid=1/users").await.unwrap();
    assert_eq!(r.status, 403, "the admin rule decides /admin;x/users");
    assert!(up.requests().is_empty());
    // And the upstream gets them as sent (legacy apps keep session ids there).
    let r = c.get("/docs;jsessionid=abc/x").await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(up.last().uri, "/docs;jsessionid=abc/x");
    drop(gw);

    let strict = format!("{policy}\nlimits:\n  path_parameters: reject\n");
    let gw = TestGateway::start(&pki, &yaml(&pki, up.addr, &strict)).await;
    let r = gw
        .client(Some(&bob))
        .get("/docs;jsessionid=abc/x")
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "semicolon in path");
}

/// Routes compare paths byte for byte by default, as nginx and Envoy do; an upstream that
/// resolves `/ADMIN` as `/admin` needs `limits.path_case: insensitive`, and then every case of
/// a protected path meets its rule.
#[tokio::test]
async fn path_case_insensitive_keeps_every_spelling_of_a_path_under_its_rule() {
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&pki, &yaml(&pki, up.addr, POLICY)).await;
    let r = gw.client(Some(&bob)).get("/ADMIN/users").await.unwrap();
    assert_eq!(
        r.status, 200,
        "case-sensitive by default: the reader route decides"
    );
    drop(gw);

    let folded = format!("{POLICY}\nlimits:\n  path_case: insensitive\n");
    let gw = TestGateway::start(&pki, &yaml(&pki, up.addr, &folded)).await;
    let c = gw.client(Some(&bob));
    let before = up.requests().len();
    for path in ["/ADMIN/users", "/Admin/users", "/%41dmin/users", "/aDmIn"] {
        let r = c.get(path).await.unwrap();
        assert_eq!(r.status, 403, "{path} meets the admin rule");
    }
    assert_eq!(up.requests().len(), before, "nothing reached the upstream");
    let r = c.get("/HEALTH").await.unwrap();
    assert_eq!(r.status, 200, "exact routes fold case too");
    assert_eq!(
        up.last().uri,
        "/HEALTH",
        "the upstream gets the path as sent"
    );
}

// 10. Different callers, same identity.

#[tokio::test]
async fn distinct_callers_get_distinct_identities_and_budgets() {
    let mut pki = TestPki::new();
    let newline = pki.add_client(
        "nl",
        portcullis::pki::ClientSpec {
            cn: "reader-a\nb".into(),
            days: 30,
            ..Default::default()
        },
    );
    let escaped = pki.add_client(
        "esc",
        portcullis::pki::ClientSpec {
            cn: "reader-a%0Ab".into(),
            days: 30,
            ..Default::default()
        },
    );
    let bob = pki.client("reader-bob");
    let signer = Signer::es256("k1");
    std::fs::write(pki.file("jwks.json"), jwks(&[&signer])).unwrap();
    let policy = r#"
jwt: { jwks: jwks.json, algorithms: [ES256] }
principals:
  - { name: readers, cert: { cn: "reader-*" }, roles: [reader] }
  - { name: tokens, jwt: { claim: scope, contains: read }, roles: [reader] }
routes:
  - name: docs
    match: { prefix: / }
    upstream: app
    allow: { roles: [reader] }
    rate_limit: { key: identity, rate: 1/min, burst: 1 }
"#;
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(
        &pki,
        &yaml_with(&pki, up.addr, "client_auth: optional", policy),
    )
    .await;

    assert_eq!(
        gw.client(Some(&newline)).get("/a").await.unwrap().status,
        200
    );
    let first = up.last().headers["x-client-id"].clone();
    assert_eq!(
        gw.client(Some(&escaped)).get("/a").await.unwrap().status,
        200
    );
    let second = up.last().headers["x-client-id"].clone();
    assert_ne!(first, second, "two certificates rendered as one identity");
    assert_eq!(second, "CN=reader-a%250Ab");

    // Bob spends his budget; a token whose sub spells bob's DN has a budget of its own.
    assert_eq!(gw.client(Some(&bob)).get("/a").await.unwrap().status, 200);
    assert_eq!(gw.client(Some(&bob)).get("/a").await.unwrap().status, 429);
    let dn = up.last().headers["x-client-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let token = signer.token(&json!({"sub": dn, "scope": ["read"], "exp": now() + 300}));
    let mut req = request("GET", "/a");
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let r = gw.client(None).send(req).await.unwrap();
    assert_eq!(
        r.status, 200,
        "the token must not share the certificate's bucket"
    );
    assert_eq!(up.last().headers["x-client-auth"], "jwt");
}

// 11. Dual-stack listeners.

#[tokio::test]
async fn ipv4_callers_of_a_dual_stack_listener_are_ipv4() {
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    let up = FakeUpstream::start().await;
    let policy = r#"
principals:
  - { name: readers, cert: { cn: "reader-*" }, roles: [reader] }
routes:
  - name: local
    match: { prefix: / }
    upstream: app
    allow: { roles: [reader], when: { source_ip: [127.0.0.0/8] } }
"#;
    let text = yaml(&pki, up.addr, policy).replace("listen: \"127.0.0.1:0\"", "listen: \"[::]:0\"");
    let gw = TestGateway::start(&pki, &text).await;
    let v4 = std::net::SocketAddr::from(([127, 0, 0, 1], gw.addr.port()));
    let c = Client::new(v4, &pki.ca_pem, Some(&bob));
    let r = c.get("/x").await.unwrap();
    assert_eq!(
        r.status, 200,
        "127.0.0.1 must match 127.0.0.0/8 on a [::] listener"
    );
    assert_eq!(up.last().headers["x-forwarded-for"], "127.0.0.1");
}

// Also: handshakes hold no connection slot; conditions cannot read forged headers.

#[tokio::test]
async fn clients_stuck_in_the_handshake_do_not_take_connection_slots() {
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    let up = FakeUpstream::start().await;
    let rest = format!("{POLICY}\nlimits:\n  max_connections: 2\n  handshake_timeout: 20s\n");
    let gw = TestGateway::start(&pki, &yaml(&pki, up.addr, &rest)).await;
    let mut silent = Vec::new();
    for _ in 0..6 {
        silent.push(tokio::net::TcpStream::connect(gw.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = tokio::time::timeout(Duration::from_secs(5), gw.client(Some(&bob)).get("/x"))
        .await
        .expect("a client with a certificate is served while others stall their handshakes")
        .unwrap();
    assert_eq!(r.status, 200);
    drop(silent);
}

#[test]
fn conditions_on_identity_credential_or_forwarding_headers_are_config_errors() {
    for name in [
        "x-client-roles",
        "X-Client-Id",
        "x-api-key",
        "authorization",
        "x-forwarded-for",
        "forwarded",
        "x-real-ip",
    ] {
        let text = format!(
            "tls: {{ cert: s.crt, key: s.key, client_ca: ca.crt }}\nupstreams: {{ app: {{ url: \"http://127.0.0.1:1\" }} }}\nroutes:\n  - name: r\n    match: {{ prefix: / }}\n    upstream: app\n    allow:\n      when: {{ headers: {{ {name}: admin }} }}\n"
        );
        let err = portcullis::config::from_str(&text, std::path::Path::new("gw.yaml"))
            .expect_err(name)
            .to_string();
        assert!(err.contains("gw.yaml:8:"), "{err}");
        assert!(err.contains("set or removed by the gateway"), "{err}");
    }
}
