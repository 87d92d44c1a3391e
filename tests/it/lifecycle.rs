//! Admin endpoints, graceful drain and reload.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::POLICY;
use crate::support::gateway::yaml;
use crate::support::upstream::Mode;
use crate::support::{FakeUpstream, TestGateway, TestPki, admin_get};

#[tokio::test]
async fn admin_endpoints_report_health_readiness_and_metrics() {
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&pki, &yaml(&pki, up.addr, POLICY)).await;
    let admin = gw.admin.unwrap();
    assert!(
        admin_get(admin, "/healthz")
            .await
            .starts_with("HTTP/1.1 200")
    );
    assert!(
        admin_get(admin, "/readyz")
            .await
            .starts_with("HTTP/1.1 200")
    );
    gw.client(Some(&bob)).get("/hello").await.unwrap();
    gw.client(Some(&bob)).get("/admin/x").await.unwrap();
    // The access log line (and metrics) are written when the response body ends.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let m = admin_get(admin, "/metrics").await;
    for want in [
        "portcullis_requests_total{route=\"reader\",status=\"200\"} 1",
        "portcullis_requests_total{route=\"admin\",status=\"403\"} 1",
        "portcullis_authz_denied_total{route=\"admin\",reason=\"forbidden\"} 1",
        "portcullis_request_duration_seconds_count 2",
        "portcullis_open_connections",
        "portcullis_certificate_expiry_seconds{file=",
        "portcullis_crl_next_update_seconds{file=",
    ] {
        assert!(m.contains(want), "missing {want} in\n{m}");
    }
}

#[tokio::test]
async fn drain_finishes_in_flight_requests_and_refuses_new_connections() {
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    let up = FakeUpstream::with_mode(Mode::Delay(Duration::from_millis(1500))).await;
    let rest = format!("{POLICY}\nlimits:\n  shutdown_timeout: 10s\n");
    let mut gw = TestGateway::start(&pki, &yaml(&pki, up.addr, &rest)).await;
    let client = gw.client(Some(&bob));
    let admin = gw.admin.unwrap();

    let in_flight = tokio::spawn({
        let c = client.clone();
        async move { c.get("/slow").await }
    });
    // Let the request reach the upstream before draining.
    up.wait_for_request().await;
    let done = gw.begin_shutdown();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        client.get("/new").await.is_err(),
        "new connections are refused while draining"
    );
    // A draining gateway is alive but not ready: a readiness probe takes it out of the
    // Service, a liveness probe must not restart it mid-drain.
    let health = |live: bool| {
        let mut args = vec!["health".to_owned(), "--admin".to_owned(), admin.to_string()];
        if live {
            args.push("--live".to_owned());
        }
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(crate::cli::BIN)
                .args(&args)
                .output()
                .unwrap()
        })
    };
    let (ready, alive) = (health(false).await.unwrap(), health(true).await.unwrap());
    assert_eq!(ready.status.code(), Some(1), "health while draining");
    assert!(
        String::from_utf8_lossy(&ready.stderr).contains("not ready: HTTP/1.1 503"),
        "{ready:?}"
    );
    assert!(
        alive.status.success(),
        "health --live while draining: {alive:?}"
    );
    assert_eq!(String::from_utf8_lossy(&alive.stdout), "alive\n");
    let reply = in_flight
        .await
        .unwrap()
        .expect("the in-flight request completes");
    assert_eq!(reply.status, 200);
    tokio::time::timeout(Duration::from_secs(5), done)
        .await
        .expect("drain ends")
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(admin).await.is_err()
            || admin_get(admin, "/readyz").await.contains("503")
    );
}

#[tokio::test]
async fn reload_swaps_policy_and_a_broken_config_keeps_the_old_one() {
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    let up = FakeUpstream::start().await;
    let config = portcullis::config::load(&{
        let p = pki.file("gateway.yaml");
        std::fs::write(&p, yaml(&pki, up.addr, POLICY)).unwrap();
        p
    })
    .unwrap();
    let path = config.path.clone();
    let gw = portcullis::Gateway::bind(config).await.unwrap();
    let addr = gw.local_addr();
    let shared = gw.shared();
    let task = tokio::spawn(gw.run(std::future::pending()));
    let c = crate::support::Client::new(addr, &pki.ca_pem, Some(&bob));
    assert_eq!(c.get("/admin/x").await.unwrap().status, 403);
    // A keep-alive connection that outlives the reload must see the new policy too.
    let mut kept = c.connect().await.unwrap();
    assert!(
        keep_alive_get(&mut kept, "/admin/x")
            .await
            .starts_with("HTTP/1.1 403")
    );

    // Grant readers the admin route.
    let widened = POLICY.replace(
        "allow: { roles: [admin] }",
        "allow: { roles: [admin, reader] }",
    );
    std::fs::write(&path, yaml(&pki, up.addr, &widened)).unwrap();
    portcullis::reload::reload(&shared, &path).unwrap();
    assert_eq!(c.get("/admin/x").await.unwrap().status, 200);
    let again = keep_alive_get(&mut kept, "/admin/x").await;
    assert!(
        again.starts_with("HTTP/1.1 200"),
        "the connection kept its old roles: {again}"
    );

    // A broken file is reported and the previous policy stays.
    std::fs::write(
        &path,
        yaml(
            &pki,
            up.addr,
            &widened.replace("upstream: app", "upstream: nope"),
        ),
    )
    .unwrap();
    let err = portcullis::reload::reload(&shared, &path)
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown upstream \"nope\""), "{err}");
    assert_eq!(c.get("/admin/x").await.unwrap().status, 200);

    // A config whose own policy tests fail is not served: here the edit opens /admin/ to
    // anyone while a test says callers without a role are refused there.
    let opened = format!(
        "{}\ntests:\n  - name: strangers stay out of admin\n    request: {{ path: /admin/x, cert: {{ cn: stranger }} }}\n    expect: \"403\"\n",
        POLICY.replace("allow: { roles: [admin] }", "allow: authenticated")
    );
    std::fs::write(&path, yaml(&pki, up.addr, &opened)).unwrap();
    let err = portcullis::reload::reload(&shared, &path)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(": tests[0]: policy test \"strangers stay out of admin\" fails"),
        "{err}"
    );
    let stranger = pki.client("stranger");
    let s = crate::support::Client::new(addr, &pki.ca_pem, Some(&stranger));
    assert_eq!(
        s.get("/admin/x").await.unwrap().status,
        403,
        "the previous policy still decides"
    );
    // With the test passing (the route fixed), the reload goes through.
    std::fs::write(
        &path,
        yaml(
            &pki,
            up.addr,
            &opened.replace("allow: authenticated", "allow: { roles: [admin] }"),
        ),
    )
    .unwrap();
    portcullis::reload::reload(&shared, &path).unwrap();
    assert_eq!(
        c.get("/admin/x").await.unwrap().status,
        403,
        "readers lost admin again"
    );
    task.abort();
}

/// One keep-alive GET on an open connection; returns the head and consumes the body.
async fn keep_alive_get<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    s: &mut S,
    path: &str,
) -> String {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let head = crate::support::client::read_head(s).await;
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.unwrap();
    head
}
