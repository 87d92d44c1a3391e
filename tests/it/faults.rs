//! Upstreams that misbehave on purpose and clients that give up: every client gets its
//! documented answer, and every request its access-log line and counts.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::POLICY;
use crate::support::client::{closed_within, read_head as head, request};
use crate::support::gateway::{yaml, yaml_with};
use crate::support::jwt::{JwksServer, Signer, jwks, now};
use crate::support::rogue::{RogueUpstream, read_request};
use crate::support::upstream::Mode;
use crate::support::{Client, FakeUpstream, TestGateway, TestPki, admin_get, metric};

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

/// A gateway in front of `upstream` with extra upstream keys and the test policy.
async fn gateway(
    pki: &TestPki,
    upstream: std::net::SocketAddr,
    upstream_keys: &str,
    rest: &str,
) -> TestGateway {
    let text = yaml(pki, upstream, &format!("{POLICY}\n{rest}")).replace(
        "    timeout: 2s\n",
        &format!("    timeout: 2s\n{upstream_keys}"),
    );
    TestGateway::start(pki, &text).await
}

#[tokio::test]
async fn a_request_on_a_pooled_connection_the_upstream_closed_is_retried_once() {
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    // Answers the first request of each connection, then closes it when the next arrives:
    // what Node and gunicorn do to kept-alive connections past their own idle timeout.
    let up = RogueUpstream::start(|mut s, _| async move {
        if read_request(&mut s).await.is_some() {
            let _ = s.write_all(OK).await;
            let _ = read_request(&mut s).await;
        }
    })
    .await;
    let gw = gateway(&pki, up.addr, "", "").await;
    let c = gw.client(Some(&bob));
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(c.get("/x").await.unwrap().status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 200]);
    // A request with a body is not replayed: on a kept-alive connection the upstream then
    // closes, it gets the 502.
    assert_eq!(c.get("/x").await.unwrap().status, 200);
    let mut post = request("POST", "/x");
    *post.body_mut() = http_body_util::Full::new(Bytes::from_static(b"payload"));
    let r = c.send(post).await.unwrap();
    assert_eq!(
        r.status, 502,
        "a request with a body must not be sent twice"
    );
}

#[tokio::test]
async fn a_new_connection_that_breaks_is_the_upstreams_answer() {
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    // Every connection takes its request and closes without an answer.
    let up = RogueUpstream::start(|mut s, _| async move {
        let _ = read_request(&mut s).await;
    })
    .await;
    let gw = gateway(&pki, up.addr, "", "").await;
    let c = gw.client(Some(&bob));
    assert_eq!(c.get("/x").await.unwrap().status, 502);
    // Only a pooled connection that had served requests is worth a second try.
    assert_eq!(up.connections(), 1, "the request was sent twice");
}

#[tokio::test]
async fn a_retried_request_is_still_under_the_response_deadline() {
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    // The first connection answers one request and closes when the next arrives; every later
    // connection takes its request and never answers.
    let up = RogueUpstream::start(|mut s, n| async move {
        if n == 0 {
            if read_request(&mut s).await.is_some() {
                let _ = s.write_all(OK).await;
                let _ = read_request(&mut s).await;
            }
            return;
        }
        let _ = read_request(&mut s).await;
        tokio::time::sleep(Duration::from_secs(60)).await;
    })
    .await;
    let gw = gateway(&pki, up.addr, "", "").await;
    let c = gw.client(Some(&bob));
    assert_eq!(c.get("/x").await.unwrap().status, 200);
    // The retry goes to a silent connection: the upstream's `timeout` (2s) answers it, where
    // the retry used to wait as long as the upstream held the connection open.
    let r = tokio::time::timeout(Duration::from_secs(30), c.get("/x"))
        .await
        .expect("the retried request hangs")
        .unwrap();
    assert_eq!(r.status, 504);
    let timeouts = "portcullis_upstream_errors_total{upstream=\"app\",kind=\"timeout\"}";
    assert_eq!(metric(&gw, timeouts).await, 1.0);
}

#[tokio::test]
async fn pooled_connections_are_closed_after_pool_idle_timeout() {
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    let up = RogueUpstream::start(|mut s, _| async move {
        while read_request(&mut s).await.is_some() {
            if s.write_all(OK).await.is_err() {
                return;
            }
        }
    })
    .await;
    let gw = gateway(&pki, up.addr, "    pool_idle_timeout: 300ms\n", "").await;
    let c = gw.client(Some(&bob));
    assert_eq!(c.get("/x").await.unwrap().status, 200);
    assert_eq!(c.get("/x").await.unwrap().status, 200);
    assert_eq!(up.connections(), 1, "a busy pooled connection is reused");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(c.get("/x").await.unwrap().status, 200);
    assert_eq!(
        up.connections(),
        2,
        "an idle pooled connection is closed after 300ms"
    );
}

/// Sends a POST of `total` bytes in `chunk`s, pausing `pause` between them; the response head.
#[tokio::test]
async fn a_connection_still_taking_an_upload_is_not_lent_to_the_next_request() {
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    // The first connection answers 413 as soon as it has the head and then keeps reading
    // whatever arrives, answering nothing more; every later one answers 200.
    let up = RogueUpstream::start(|mut s, n| async move {
        if n == 0 {
            if read_request(&mut s).await.is_some() {
                let _ = s
                    .write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n")
                    .await;
                let mut sink = [0u8; 4096];
                while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
            }
            return;
        }
        while read_request(&mut s).await.is_some() {
            if s.write_all(OK).await.is_err() {
                return;
            }
        }
    })
    .await;
    let gw = gateway(&pki, up.addr, "", "").await;
    let c = gw.client(Some(&bob));

    // An upload that declares 100 kB, sends 10 bytes and stalls: the upstream's early 413
    // reaches the client while the upstream connection still waits for the rest.
    let mut upload = c.connect().await.unwrap();
    upload
        .write_all(
            b"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000\r\n\r\n0123456789",
        )
        .await
        .unwrap();
    let answer = head(&mut upload).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    // The next request must not be queued behind that upload on the same connection (it
    // would wait there for the upstream timeout, 2 s, and get 504): a new connection serves it.
    let r = c.get("/x").await.unwrap();
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(up.connections(), 2);
    drop(upload);
}

async fn slow_upload(c: &Client, total: usize, chunk: usize, pause: Duration) -> String {
    let mut tls = c.connect().await.unwrap();
    tls.write_all(
        format!("POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: {total}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut sent = 0;
    while sent < total {
        let n = chunk.min(total - sent);
        if tls.write_all(&vec![b'u'; n]).await.is_err() {
            break;
        }
        sent += n;
        tokio::time::sleep(pause).await;
    }
    head(&mut tls).await
}

#[tokio::test]
async fn the_response_deadline_starts_when_the_upload_is_done_and_a_stalled_upload_is_408() {
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    let up = FakeUpstream::start().await;
    // The upstream's timeout is 2s; the upload takes about 2.5 s at 120 KB/s.
    let gw = gateway(&pki, up.addr, "", "limits:\n  body_timeout: 1s\n").await;
    let c = gw.client(Some(&bob));
    let h = slow_upload(&c, 300_000, 12_000, Duration::from_millis(100)).await;
    assert!(
        h.starts_with("HTTP/1.1 200"),
        "a slow upload to a healthy upstream: {h}"
    );
    assert_eq!(up.last().body.len(), 300_000);

    // A client that stops mid-upload: 408, its fault, not the upstream's (no 504, no count).
    let mut tls = c.connect().await.unwrap();
    tls.write_all(b"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\n\r\nabc")
        .await
        .unwrap();
    let h = head(&mut tls).await;
    assert!(h.starts_with("HTTP/1.1 408"), "{h}");
    assert_eq!(metric(&gw, "portcullis_upstream_errors_total").await, 0.0);
}

#[tokio::test]
async fn a_stalled_or_broken_upstream_body_is_aborted_counted_and_logged() {
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    // /stall: a head promising 100000 bytes, 1000 of them, then silence.
    // /break: the same, then the connection closes.
    // /reset: the same, then the connection is reset (RST, not FIN).
    let up = RogueUpstream::start(|mut s, _| async move {
        let Some(req) = read_request(&mut s).await else {
            return;
        };
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
            .await;
        let _ = s.write_all(&[b'x'; 1000]).await;
        if req.contains("/stall") {
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        if req.contains("/reset") {
            let _ = s.set_zero_linger();
        }
    })
    .await;
    let gw = gateway(&pki, up.addr, "    read_timeout: 1s\n", "").await;
    let c = gw.client(Some(&bob));
    for (path, kind, count) in [
        ("/stall", "read_timeout", 1.0),
        ("/break", "body", 1.0),
        ("/reset", "body", 2.0),
    ] {
        let mut tls = c.connect().await.unwrap();
        tls.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let h = head(&mut tls).await;
        assert!(h.starts_with("HTTP/1.1 200"), "{h}");
        let started = Instant::now();
        let mut got = 0;
        let mut buf = [0u8; 4096];
        loop {
            match tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => got += n,
                Err(_) => panic!("{path}: the client was left hanging"),
            }
        }
        assert!(
            got < 100_000,
            "{path}: the connection closes short of its length"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        let label = format!("portcullis_upstream_errors_total{{upstream=\"app\",kind=\"{kind}\"}}");
        assert_eq!(metric(&gw, &label).await, count, "{path}");
    }
    assert_eq!(
        metric(
            &gw,
            "portcullis_requests_total{route=\"reader\",status=\"502\"}"
        )
        .await,
        3.0,
        "a response cut short by the upstream is not logged as 200"
    );

    // HTTP/2: the stream is reset, the client sees an error, not a short success.
    let (mut sender, _conn) = Client::h2(gw.addr, &pki.ca_pem, Some(&bob))
        .h2_session()
        .await;
    let resp = sender.send_request(request("GET", "/stall")).await.unwrap();
    let body = tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect())
        .await
        .expect("the stalled h2 stream must end");
    assert!(
        body.is_err(),
        "an aborted h2 response must not look complete"
    );
}

#[tokio::test]
async fn a_cancelled_request_is_logged_as_499_and_frees_its_connection() {
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    let up = FakeUpstream::with_mode(Mode::Delay(Duration::from_secs(3))).await;
    let gw = gateway(&pki, up.addr, "", "limits:\n  idle_timeout: 1s\n").await;
    // HTTP/2: reset the stream before the upstream answers, then stay idle.
    let (mut sender, conn) = Client::h2(gw.addr, &pki.ca_pem, Some(&bob))
        .h2_session()
        .await;
    let pending = tokio::spawn(async move {
        let r = sender.send_request(request("GET", "/slow")).await;
        drop(r);
        sender
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    pending.abort();
    assert!(
        tokio::time::timeout(Duration::from_secs(6), conn)
            .await
            .is_ok(),
        "the connection must reach idle_timeout once its only stream is cancelled"
    );
    // HTTP/1.1: a client that disconnects while the upstream thinks.
    let mut tls = gw.client(Some(&bob)).connect().await.unwrap();
    tls.write_all(b"GET /slow HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(tls);
    let mut seen = 0.0;
    for _ in 0..50 {
        seen = metric(
            &gw,
            "portcullis_requests_total{route=\"reader\",status=\"499\"}",
        )
        .await;
        if seen >= 2.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen, 2.0, "both abandoned requests are logged as 499");
    assert_eq!(metric(&gw, "portcullis_open_connections").await, 0.0);
}

#[tokio::test]
async fn contradictory_framing_and_unsolicited_101_never_reach_the_client() {
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    let up = RogueUpstream::start(|mut s, _| async move {
        let Some(req) = read_request(&mut s).await else {
            return;
        };
        let answer: &[u8] = if req.contains("/switch") {
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
        };
        let _ = s.write_all(answer).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    })
    .await;
    let gw = gateway(&pki, up.addr, "", "").await;
    for client in [
        gw.client(Some(&bob)),
        Client::h2(gw.addr, &pki.ca_pem, Some(&bob)),
    ] {
        let r = client.get("/framing").await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, "ok");
        assert!(
            r.headers.get("content-length").is_none_or(|v| v == "2"),
            "{:?}",
            r.headers
        );
        let r = client.get("/switch").await.unwrap();
        assert_eq!(r.status, 502, "an unsolicited 101 is a bad gateway");
        assert_eq!(r.json()["error"], "upstream unavailable");
    }
    assert_eq!(
        metric(
            &gw,
            "portcullis_upstream_errors_total{upstream=\"app\",kind=\"protocol\"}"
        )
        .await,
        2.0
    );
}

#[tokio::test]
async fn the_admin_listener_answers_503_and_metrics_during_the_drain() {
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    let up = FakeUpstream::with_mode(Mode::Delay(Duration::from_millis(1500))).await;
    let mut gw = gateway(&pki, up.addr, "", "limits:\n  shutdown_timeout: 10s\n").await;
    let admin = gw.admin.unwrap();
    let c = gw.client(Some(&bob));
    let in_flight = tokio::spawn(async move { c.get("/slow").await });
    up.wait_for_request().await;
    let done = gw.begin_shutdown();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ready = admin_get(admin, "/readyz").await;
    assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
    let metrics = admin_get(admin, "/metrics").await;
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert_eq!(in_flight.await.unwrap().unwrap().status, 200);
    tokio::time::timeout(Duration::from_secs(5), done)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn an_https_jwks_is_there_before_ready_and_survives_a_reload_while_the_idp_is_down() {
    let pki = TestPki::new();
    let signer = Signer::es256("k1");
    let idp = JwksServer::start(&pki, jwks(&[&signer])).await;
    let policy = format!(
        r#"
jwt:
  jwks: https://localhost:{}/jwks.json
  jwks_ca: ca.crt
  algorithms: [ES256]
principals:
  - {{ name: engineers, jwt: {{ claim: groups, contains: engineering }}, roles: [reader] }}
routes:
  - {{ name: docs, match: {{ prefix: / }}, upstream: app, allow: {{ roles: [reader] }} }}
"#,
        idp.addr.port()
    );
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(
        &pki,
        &yaml_with(&pki, up.addr, "client_auth: optional", &policy),
    )
    .await;
    let token = signer.token(&json!({"sub": "u-1", "groups": ["engineering"], "exp": now() + 300}));
    let bearer = || {
        let mut req = request("GET", "/doc");
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        req
    };
    let admin = gw.admin.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !admin_get(admin, "/readyz")
        .await
        .starts_with("HTTP/1.1 200")
    {
        assert!(Instant::now() < deadline, "never became ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Ready means the keys are in: the very first bearer request passes.
    assert_eq!(gw.client(None).send(bearer()).await.unwrap().status, 200);

    // The IdP goes away; a reload with the same JWKS source keeps the keys.
    drop(idp);
    portcullis::reload::reload(&gw.shared, &pki.file("gateway.yaml")).unwrap();
    assert_eq!(
        gw.client(None).send(bearer()).await.unwrap().status,
        200,
        "a reload while the IdP is down must not drop the keys"
    );
}

#[tokio::test]
async fn a_redis_store_that_is_down_is_not_tried_by_every_request() {
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    let up = FakeUpstream::start().await;
    // A "Redis" that accepts and hangs up at once, counting the attempts.
    let broken = RogueUpstream::start(|s, _| async move { drop(s) }).await;
    let rest = format!(
        "{POLICY}\nrate_limits:\n  store: redis://{}/0\n  store_timeout: 1s\n  on_store_error: allow\n  default: {{ key: identity, rate: 100/s, burst: 100 }}\n",
        broken.addr
    );
    let gw = TestGateway::start(&pki, &yaml(&pki, up.addr, &rest)).await;
    let c = gw.client(Some(&bob));
    // The first decision finds the store down (on_store_error: allow)...
    assert_eq!(c.get("/x").await.unwrap().status, 200);
    let after_first = broken.connections();
    assert!(after_first >= 1);
    // ...and the next ones fail at once instead of each trying Redis again: only the
    // background probe (every 500 ms) still connects.
    let started = Instant::now();
    for _ in 0..20 {
        assert_eq!(c.get("/x").await.unwrap().status, 200);
    }
    let tried = broken.connections() - after_first;
    let probes = 2 + started.elapsed().as_millis() as usize / 500;
    assert!(
        tried <= probes && tried < 20,
        "20 decisions against a known-down store made {tried} connection attempts \
         (the probe accounts for {probes})"
    );
    assert!(metric(&gw, "portcullis_ratelimit_store_errors_total").await >= 21.0);
}

#[tokio::test]
async fn a_client_offering_only_http_1_0_is_served() {
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&pki, &yaml(&pki, up.addr, POLICY)).await;
    let mut tls = Client::with_alpn(gw.addr, &pki.ca_pem, Some(&bob), &[b"http/1.0"])
        .connect()
        .await
        .expect("the handshake succeeds");
    tls.write_all(b"GET /x HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let h = head(&mut tls).await;
    assert!(
        h.starts_with("HTTP/1.0 200") || h.starts_with("HTTP/1.1 200"),
        "{h}"
    );
    assert!(closed_within(&mut tls, Duration::from_secs(5)).await);
}

#[test]
fn explain_parses_hosts_as_the_gateway_does() {
    let text = "tls: { cert: s.crt, key: s.key, client_auth: off }\nupstreams: { app: { url: \"http://127.0.0.1:1\" } }\nroutes:\n  - { name: v6, match: { prefix: /, host: \"[::1]\" }, upstream: app, allow: anyone }\n";
    let config = portcullis::config::from_str(text, std::path::Path::new("gw.yaml")).unwrap();
    let req = portcullis::explain::ExplainRequest {
        method: "GET".into(),
        path: "/x".into(),
        host: Some("[::1]:8443".into()),
        ..Default::default()
    };
    let e = portcullis::explain::explain(&config, &req).unwrap();
    assert!(e.allowed, "{}", e.text);
    assert!(e.text.contains("v6"), "{}", e.text);
}
