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

/// A gateway on `config` (a file in the PKI folder, or a symlink into it) with the file
/// watcher running, as `portcullis run` has it.
async fn watched_gateway(
    config: &std::path::Path,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<portcullis::gateway::Shared>,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let loaded = portcullis::config::load(config).unwrap();
    let gw = portcullis::Gateway::bind(loaded).await.unwrap();
    let addr = gw.local_addr();
    let shared = gw.shared();
    let watch = tokio::spawn(portcullis::reload::watch(
        shared.clone(),
        config.to_path_buf(),
    ));
    let serve = tokio::spawn(gw.run(std::future::pending()));
    (addr, shared, vec![watch, serve])
}

/// Polls `cond` every 50 ms until it holds, for up to 5 s.
async fn eventually(cond: impl Fn() -> bool, what: &str) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(start.elapsed() < Duration::from_secs(5), "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls until `get(path)` answers `want`, for up to 5 s; returns how long it took.
async fn until_status(c: &crate::support::Client, path: &str, want: u16) -> Duration {
    let start = std::time::Instant::now();
    loop {
        let status = c.get(path).await.map(|r| r.status.as_u16()).ok();
        if status == Some(want) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{path} still answers {status:?}, not {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn reloads(shared: &portcullis::gateway::Shared, result: &str) -> String {
    let text = shared.metrics.encode();
    text.lines()
        .find(|l| {
            l.starts_with(&format!(
                "portcullis_config_reloads_total{{result=\"{result}\"}}"
            ))
        })
        .unwrap_or("none")
        .to_owned()
}

#[tokio::test]
async fn changes_on_disk_reload_without_a_signal_in_place_by_rename_and_by_symlink_swap() {
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    let up = FakeUpstream::start().await;
    let admin_only = yaml(&pki, up.addr, POLICY);
    let widened = admin_only.replace(
        "allow: { roles: [admin] }",
        "allow: { roles: [admin, reader] }",
    );
    // Kubernetes' layout: gateway.yaml -> ..data/gateway.yaml, ..data -> ..v1.
    let dir = pki.path();
    std::fs::create_dir(dir.join("..v1")).unwrap();
    std::fs::write(dir.join("..v1/gateway.yaml"), &admin_only).unwrap();
    std::os::unix::fs::symlink("..v1", dir.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/gateway.yaml", dir.join("k8s.yaml")).unwrap();
    let plain = dir.join("plain.yaml");
    std::fs::write(&plain, &admin_only).unwrap();

    // In place, then by rename, on a plain file.
    let (addr, shared, tasks) = watched_gateway(&plain).await;
    let c = crate::support::Client::new(addr, &pki.ca_pem, Some(&bob));
    assert_eq!(c.get("/admin/x").await.unwrap().status, 403);
    std::fs::write(&plain, &widened).unwrap();
    let took = until_status(&c, "/admin/x", 200).await;
    eprintln!("in-place write applied after {took:?}");
    let tmp = dir.join("plain.yaml.tmp");
    std::fs::write(&tmp, &admin_only).unwrap();
    std::fs::rename(&tmp, &plain).unwrap();
    let took = until_status(&c, "/admin/x", 403).await;
    eprintln!("rename applied after {took:?}");
    // A broken file keeps the last good configuration, is counted, and heals when fixed.
    std::fs::write(&plain, widened.replace("upstream: app", "upstream: nope")).unwrap();
    eventually(
        || reloads(&shared, "error") != "none",
        "the broken file was not tried",
    )
    .await;
    assert_eq!(
        c.get("/admin/x").await.unwrap().status,
        403,
        "the last good one serves"
    );
    std::fs::write(&plain, &widened).unwrap();
    until_status(&c, "/admin/x", 200).await;
    for t in tasks {
        t.abort();
    }

    // A symlink swap: the watched path itself never changes.
    let (addr, _shared, tasks) = watched_gateway(&dir.join("k8s.yaml")).await;
    let c = crate::support::Client::new(addr, &pki.ca_pem, Some(&bob));
    assert_eq!(c.get("/admin/x").await.unwrap().status, 403);
    std::fs::create_dir(dir.join("..v2")).unwrap();
    std::fs::write(dir.join("..v2/gateway.yaml"), &widened).unwrap();
    std::os::unix::fs::symlink("..v2", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    let took = until_status(&c, "/admin/x", 200).await;
    eprintln!("symlink swap applied after {took:?}");
    // And the next swap, after Kubernetes removed the folder the first one left behind.
    std::fs::remove_dir_all(dir.join("..v1")).unwrap();
    std::fs::create_dir(dir.join("..v3")).unwrap();
    std::fs::write(dir.join("..v3/gateway.yaml"), &admin_only).unwrap();
    std::os::unix::fs::symlink("..v3", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    std::fs::remove_dir_all(dir.join("..v2")).unwrap();
    until_status(&c, "/admin/x", 403).await;
    for t in tasks {
        t.abort();
    }
}

#[tokio::test]
async fn no_request_fails_while_the_config_changes_breaks_and_the_certificate_rotates() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    let up = FakeUpstream::start().await;
    let config = pki.file("gateway.yaml");
    let base = yaml(&pki, up.addr, POLICY);
    std::fs::write(&config, &base).unwrap();
    let (addr, shared, tasks) = watched_gateway(&config).await;

    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let served = std::sync::Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let c = crate::support::Client::new(addr, &pki.ca_pem, Some(&bob));
        let (stop, served) = (stop.clone(), served.clone());
        clients.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            // Bounded: at most 2,000 requests per client.
            for _ in 0..2000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match c.get("/hello").await {
                    Ok(r) if r.status == 200 => {
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                    other => failures.push(format!("{:?}", other.map(|r| r.status))),
                }
            }
            failures
        }));
    }
    let pause = || tokio::time::sleep(Duration::from_millis(600));
    // Three policy changes that keep /hello open to readers.
    for i in 0..3 {
        let changed = base.replace("name: health", &format!("name: health{i}"));
        std::fs::write(&config, changed).unwrap();
        pause().await;
    }
    // An invalid config: the last good one keeps serving.
    std::fs::write(&config, base.replace("upstream: app", "upstream: nope")).unwrap();
    pause().await;
    std::fs::write(&config, &base).unwrap();
    pause().await;
    // The server certificate rotates: certificate and key written a few ms apart.
    let old_cert = std::fs::read(pki.file("server.crt")).unwrap();
    let next = pki.ca.server(&[]).unwrap();
    std::fs::write(pki.file("server.crt"), &next.cert_pem).unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    std::fs::write(pki.file("server.key"), &next.key_pem).unwrap();
    pause().await;
    pause().await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let failures = c.await.unwrap();
        assert!(
            failures.is_empty(),
            "requests failed during reloads: {failures:?}"
        );
    }
    assert!(
        served.load(Ordering::Relaxed) > 20,
        "the clients kept going"
    );
    let ok = reloads(&shared, "success");
    assert!(ok != "none" && !ok.ends_with(" 0"), "{ok}");
    assert_ne!(
        reloads(&shared, "error"),
        "none",
        "the invalid config was tried"
    );
    // New connections get the new certificate.
    let c = crate::support::Client::new(addr, &pki.ca_pem, Some(&bob));
    let tls = c.connect().await.unwrap();
    let presented = tls.get_ref().1.peer_certificates().unwrap()[0]
        .as_ref()
        .to_vec();
    assert_eq!(presented, next.der, "the rotated certificate is served");
    assert_ne!(old_cert, std::fs::read(pki.file("server.crt")).unwrap());
    for t in tasks {
        t.abort();
    }
}

#[tokio::test]
async fn a_stale_crl_refuses_its_clients_and_readiness_until_a_fresh_one_arrives() {
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    let up = FakeUpstream::start().await;
    let config = pki.file("gateway.yaml");
    let reject = yaml(&pki, up.addr, POLICY);
    std::fs::write(&config, &reject).unwrap();
    let (addr, shared, tasks) = watched_gateway(&config).await;
    let c = crate::support::Client::new(addr, &pki.ca_pem, Some(&bob));
    assert_eq!(c.get("/hello").await.unwrap().status, 200);
    // What /readyz answers (503 with this text when not ready).
    let readyz = || std::future::ready(portcullis::gateway::readiness(&shared));
    assert_eq!(readyz().await, Ok(()));

    // The CRL's nextUpdate passes (written stale here): its clients are refused.
    let crl = pki.file("ca.crl");
    let fresh = std::fs::read(&crl).unwrap();
    let an_hour_ago = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    std::fs::write(&crl, pki.ca.crl_until(&[], 2, an_hour_ago).unwrap()).unwrap();
    eventually(
        || portcullis::gateway::readiness(&shared).is_err(),
        "the stale CRL was not loaded",
    )
    .await;
    let why = readyz().await.unwrap_err();
    assert!(
        why.starts_with("CRL past its nextUpdate, its clients are refused: ")
            && why.ends_with("ca.crl"),
        "{why}"
    );
    let e = c.get("/hello").await.expect_err("refused");
    assert!(e.contains("received fatal alert"), "{e}");
    let m = shared.metrics.encode();
    assert!(
        m.contains("portcullis_tls_handshake_failures_total{reason=\"crl_expired\"} 1"),
        "{m}"
    );
    assert!(
        (-3700..=-3500).contains(&crl_gauge(&shared)),
        "{}",
        crl_gauge(&shared)
    );

    // crl_expired: ignore keeps using it.
    std::fs::write(
        &config,
        reject.replace(
            "  crl: [ca.crl]\n",
            "  crl: [ca.crl]\n  crl_expired: ignore\n",
        ),
    )
    .unwrap();
    until_status(&c, "/hello", 200).await;
    assert_eq!(readyz().await, Ok(()));

    // Back to reject, and a fresh CRL heals it without a restart.
    std::fs::write(&config, &reject).unwrap();
    eventually(
        || portcullis::gateway::readiness(&shared).is_err(),
        "reject was not restored",
    )
    .await;
    std::fs::write(&crl, &fresh).unwrap();
    until_status(&c, "/hello", 200).await;
    assert_eq!(readyz().await, Ok(()));
    assert!(crl_gauge(&shared) > 300 * 86400, "{}", crl_gauge(&shared));
    for t in tasks {
        t.abort();
    }
}

/// `portcullis_crl_next_update_seconds` as a scrape of /metrics sees it (which refreshes the
/// seconds-until gauges first); exactly one CRL series must be there.
fn crl_gauge(shared: &portcullis::gateway::Shared) -> i64 {
    shared.metrics.set_expiries(&shared.state.load().expiries);
    let text = shared.metrics.encode();
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("portcullis_crl_next_update_seconds{"))
        .collect();
    assert_eq!(series.len(), 1, "{text}");
    series[0].rsplit(' ').next().unwrap().parse().unwrap()
}
