//! Routing and authorization: matchers, path normalization, default deny.

use bytes::Bytes;
use http_body_util::Full;
use portcullis::pki::ClientSpec;

use crate::POLICY;
use crate::support::client::request;
use crate::support::gateway::yaml;
use crate::support::{FakeUpstream, TestGateway, TestPki};

#[tokio::test]
async fn each_certificate_matcher_selects_its_principals() {
    let mut pki = TestPki::new();
    let spec = |cn: &str| ClientSpec {
        cn: cn.into(),
        days: 30,
        ..Default::default()
    };
    let clients = [
        ("svc-a", ClientSpec { ..spec("svc-a") }, "by-cn"),
        (
            "globex-x",
            ClientSpec {
                o: Some("Globex".into()),
                ..spec("x")
            },
            "by-o",
        ),
        (
            "svc-c",
            ClientSpec {
                o: Some("Globex".into()),
                ..spec("svc-c")
            },
            "by-cn,by-cn-and-o,by-o",
        ),
        (
            "payments",
            ClientSpec {
                ou: Some("Payments".into()),
                ..spec("y")
            },
            "by-ou",
        ),
        (
            "dns",
            ClientSpec {
                san_dns: vec!["API.billing.internal".into()],
                ..spec("z")
            },
            "by-dns",
        ),
        (
            "uri",
            ClientSpec {
                san_uri: vec!["spiffe://acme.internal/ns/prod/sa/x".into()],
                ..spec("w")
            },
            "by-uri",
        ),
        (
            "email",
            ClientSpec {
                san_email: vec!["bob@acme.example".into()],
                ..spec("v")
            },
            "by-email",
        ),
        ("fp", spec("fp"), "by-fp"),
        ("nobody", spec("nobody"), ""),
    ];
    let mut issued = Vec::new();
    for (name, spec, want) in clients {
        issued.push((name, pki.add_client(name, spec), want));
    }
    let fp_der = &issued.iter().find(|(n, _, _)| *n == "fp").unwrap().1.der;
    let fp = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(fp_der)).to_uppercase();
    let fp_colons: Vec<String> = fp
        .as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8(c.to_vec()).unwrap())
        .collect();
    let policy = format!(
        r#"
principals:
  - {{ name: by-cn, cert: {{ cn: "svc-*" }}, roles: [by-cn] }}
  - {{ name: by-o, cert: {{ o: Globex }}, roles: [by-o] }}
  - {{ name: by-cn-and-o, cert: {{ cn: "svc-*", o: Globex }}, roles: [both] }}
  - {{ name: by-ou, cert: {{ ou: Payments }}, roles: [by-ou] }}
  - {{ name: by-dns, cert: {{ san_dns: "*.billing.internal" }}, roles: [by-dns] }}
  - {{ name: by-uri, cert: {{ san_uri: "spiffe://acme.internal/ns/prod/*" }}, roles: [by-uri] }}
  - {{ name: by-email, cert: {{ san_email: "*@acme.example" }}, roles: [by-email] }}
  - {{ name: by-fp, cert: {{ fingerprint_sha256: "{}" }}, roles: [by-fp] }}
routes:
  - name: uri-only
    match: {{ prefix: /uri-only/ }}
    upstream: app
    allow: {{ roles: [by-uri] }}
  - name: any
    match: {{ prefix: / }}
    upstream: app
    allow: authenticated
"#,
        fp_colons.join(":")
    );
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&pki, &yaml(&pki, up.addr, &policy)).await;
    for (name, cert, want) in &issued {
        let reply = gw.client(Some(cert)).get("/whoami").await.unwrap();
        assert_eq!(reply.status, 200, "{name}");
        let seen = up.last();
        let got = seen
            .headers
            .get("x-client-principals")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        assert_eq!(&got, want, "principals of {name}");
        let uri_only = gw.client(Some(cert)).get("/uri-only/x").await.unwrap();
        assert_eq!(
            uri_only.status,
            if *name == "uri" { 200 } else { 403 },
            "{name} on a by-uri route"
        );
    }
    let uri = issued.iter().find(|(n, _, _)| *n == "uri").unwrap();
    gw.client(Some(&uri.1)).get("/x").await.unwrap();
    assert_eq!(
        up.last().headers["x-client-id"],
        "spiffe://acme.internal/ns/prod/sa/x",
        "a URI SAN is the identity"
    );
}

#[tokio::test]
async fn path_tricks_cannot_slip_past_a_rule() {
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    let alice = pki.client("ops-alice");
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&pki, &yaml(&pki, up.addr, POLICY)).await;
    let reader = gw.client(Some(&bob));

    // Dot segments are resolved before matching: this is the reader route, and the upstream
    // sees the same resolved path.
    let r = reader.get("/admin/../x").await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(up.last().uri, "/x");
    for sneaky in [
        "//admin/users",
        "/%61dmin/users",
        "/admin/./users",
        "/public/../admin/users",
        "/admin",
    ] {
        let r = reader.get(sneaky).await.unwrap();
        assert_eq!(r.status, 403, "{sneaky} must hit the admin rule");
    }
    for bad in ["/admin%2f..", "/admin%2F../x", "/a%5cb", "/bad%zzescape"] {
        let r = reader.get(bad).await.unwrap();
        assert_eq!(r.status, 400, "{bad}");
        assert!(r.json()["request_id"].is_string());
    }
    let n = up.requests().len();
    let r = gw
        .client(Some(&alice))
        .get("//admin//users/%7e7?x=1")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(up.requests().len(), n + 1);
    assert_eq!(
        up.last().uri,
        "/admin/users/~7?x=1",
        "the upstream sees the normalized path and the query"
    );
}

#[tokio::test]
async fn unmatched_requests_get_404_and_methods_and_hosts_narrow_routes() {
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    let policy = r#"
principals:
  - { name: readers, cert: { cn: "reader-*" }, roles: [reader] }
routes:
  - name: read-only
    match: { prefix: /api/, methods: [GET, HEAD] }
    upstream: app
    allow: { roles: [reader] }
  - name: by-host
    match: { host: "*.example.com", exact: /hosted }
    upstream: app
    allow: { roles: [reader] }
    strip_prefix: /hosted
"#;
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&pki, &yaml(&pki, up.addr, policy)).await;
    let c = gw.client(Some(&bob));

    let r = c.get("/nowhere").await.unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"], "no route");
    assert_eq!(r.headers["content-type"], "application/json");
    assert_eq!(c.get("/api/items").await.unwrap().status, 200);
    assert_eq!(
        c.send(request("POST", "/api/items")).await.unwrap().status,
        404,
        "POST matches no route"
    );
    assert_eq!(
        c.get("/hosted").await.unwrap().status,
        404,
        "Host localhost does not match *.example.com"
    );
    let mut req = request("GET", "/hosted");
    req.headers_mut()
        .insert("host", "API.Example.com:8443".parse().unwrap());
    *req.uri_mut() = "/hosted".parse().unwrap();
    let r = c.send(req).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(up.last().uri, "/", "strip_prefix removed /hosted");
    assert_eq!(up.last().headers["x-forwarded-host"], "api.example.com");
    let _ = Full::new(Bytes::new());
}
