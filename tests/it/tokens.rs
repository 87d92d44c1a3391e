//! The gateway's own login tokens: login with every login factor, the token standing in for
//! them, its claims checked against the published JWKS with a signature library of its own,
//! logout (across replicas through Redis), certificate binding, expiry, roles taken from the
//! current configuration, and key rotation.

use base64::Engine as _;
use serde_json::Value;

use crate::support::client::{basic, send_with as call};
use crate::support::gateway::yaml_with;
use crate::support::otp::{self, SECRET};
use crate::support::redis::RedisServer;
use crate::support::{Client, FakeUpstream, TestGateway, TestPki};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

fn write_key(pki: &TestPki, name: &str, alg: &'static rcgen::SignatureAlgorithm) {
    let pem = rcgen::KeyPair::generate_for(alg).unwrap().serialize_pem();
    std::fs::write(pki.file(name), pem).unwrap();
}

/// A signing key (`alg`) in token.key, alice's password "correct horse", an upstream, and the
/// full configuration for `policy(.., factors, extra)`.
async fn setup(
    pki: &TestPki,
    alg: &'static rcgen::SignatureAlgorithm,
    factors: &str,
    extra: &str,
) -> (FakeUpstream, String) {
    write_key(pki, "token.key", alg);
    let hash = portcullis::auth::hash_password("correct horse").unwrap();
    let up = FakeUpstream::start().await;
    let yaml = yaml_with(
        pki,
        up.addr,
        "client_auth: optional",
        &policy(&hash, factors, extra),
    );
    (up, yaml)
}

fn policy(hash: &str, factors: &str, extra: &str) -> String {
    format!(
        r#"
tokens:
  signing_key: token.key
  login_factors: {factors}
  ttl: 15m
{extra}
principals:
  - name: alice
    basic: {{ user: alice, argon2: "{hash}" }}
    totp: {{ secret: "{SECRET}" }}
    roles: [reader]
  - {{ name: readers, cert: {{ cn: "reader-*" }}, roles: [reader] }}
routes:
  - name: secure
    match: {{ prefix: /secure/ }}
    upstream: app
    allow: {{ roles: [reader], factors: [basic, totp] }}
  - {{ name: docs, match: {{ prefix: / }}, upstream: app, allow: {{ roles: [reader] }} }}
"#
    )
}

/// The token's header and claims, after checking its signature against the key the JWKS
/// publishes for its kid, with aws-lc-rs's primitives rather than the gateway's JWT library.
fn verify_with_jwks(token: &str, jwks: &Value) -> (Value, Value) {
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, ED25519, UnparsedPublicKey};
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "{token}");
    let header: Value = serde_json::from_slice(&B64.decode(parts[0]).unwrap()).unwrap();
    let claims: Value = serde_json::from_slice(&B64.decode(parts[1]).unwrap()).unwrap();
    let sig = B64.decode(parts[2]).unwrap();
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == header["kid"])
        .unwrap_or_else(|| panic!("kid {} not in {jwks}", header["kid"]));
    let x = B64.decode(jwk["x"].as_str().unwrap()).unwrap();
    let signed = format!("{}.{}", parts[0], parts[1]);
    let ok = match jwk["kty"].as_str().unwrap() {
        "OKP" => {
            assert_eq!(
                (header["alg"].as_str(), jwk["crv"].as_str()),
                (Some("EdDSA"), Some("Ed25519"))
            );
            UnparsedPublicKey::new(&ED25519, &x).verify(signed.as_bytes(), &sig)
        }
        "EC" => {
            assert_eq!(
                (header["alg"].as_str(), jwk["crv"].as_str()),
                (Some("ES256"), Some("P-256"))
            );
            let mut point = vec![4u8];
            point.extend(&x);
            point.extend(B64.decode(jwk["y"].as_str().unwrap()).unwrap());
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &point).verify(signed.as_bytes(), &sig)
        }
        other => panic!("unexpected key type {other}"),
    };
    assert!(ok.is_ok(), "the signature verifies with the published key");
    (header, claims)
}

fn es256_key(pem: &[u8]) -> jsonwebtoken::EncodingKey {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(pem).unwrap();
    jsonwebtoken::EncodingKey::from_ec_der(der.secret_pkcs8_der())
}

/// GET `path` with `token` as the bearer.
async fn get_with_token(c: &Client, path: &str, token: &str) -> crate::support::client::Reply {
    call(
        c,
        "GET",
        path,
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await
}

async fn jwks(c: &Client) -> Value {
    let r = call(c, "GET", "/.well-known/jwks.json", &[]).await;
    assert_eq!(r.status, 200);
    r.json()
}

#[tokio::test]
async fn a_login_with_password_and_code_gives_a_token_that_stands_in_for_both() {
    let pki = TestPki::new();
    let (up, yaml) = setup(&pki, &rcgen::PKCS_ED25519, "[basic, totp]", "").await;
    let gw = TestGateway::start(&pki, &yaml).await;
    let c = gw.client(None);
    let alice = basic("alice", "correct horse");

    let r = call(&c, "GET", "/auth/login", &[("authorization", &alice)]).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.headers["allow"], "POST");
    let r = call(&c, "POST", "/auth/login", &[]).await;
    assert_eq!(r.status, 401, "no credentials");
    let r = call(&c, "POST", "/auth/login", &[("authorization", &alice)]).await;
    assert_eq!(
        r.status, 403,
        "the password alone is not every login factor"
    );
    assert_eq!(r.json()["error"], "login needs more factors");

    let code = otp::code(SECRET, otp::now());
    let r = call(
        &c,
        "POST",
        "/auth/login",
        &[("authorization", &alice), ("x-otp", &code)],
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    assert_eq!(r.headers["cache-control"], "no-store");
    let body = r.json();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900);
    let token = body["access_token"].as_str().unwrap().to_owned();
    assert!(
        up.requests().is_empty(),
        "a login never reaches the upstream"
    );

    let (header, claims) = verify_with_jwks(&token, &jwks(&c).await);
    assert_eq!(header["typ"], "JWT");
    // HEAD gets the headers and no body, over HTTP/2 as well (a body there would be DATA).
    let h2 = Client::h2(gw.addr, &pki.ca_pem, None);
    for client in [&c, &h2] {
        let r = call(client, "HEAD", "/.well-known/jwks.json", &[]).await;
        assert_eq!(r.status, 200);
        assert!(r.body.is_empty());
        assert!(
            r.headers["content-length"]
                .to_str()
                .unwrap()
                .parse::<u64>()
                .unwrap()
                > 50
        );
    }
    assert_eq!(
        call(&c, "POST", "/.well-known/jwks.json", &[]).await.status,
        405
    );
    assert_eq!(claims["iss"], "portcullis");
    assert_eq!(claims["aud"], "portcullis");
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["prn"], serde_json::json!(["alice"]));
    assert_eq!(claims["amr"], serde_json::json!(["basic", "totp"]));
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        900
    );
    assert!(claims["jti"].as_str().is_some_and(|j| j.len() >= 16));
    assert!(claims.get("cnf").is_none(), "no certificate, no binding");

    // The token meets factors: [basic, totp] on its own; the upstream never sees it.
    let bearer = format!("Bearer {token}");
    let r = call(&c, "GET", "/secure/x", &[("authorization", &bearer)]).await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    let seen = up.last();
    assert_eq!(seen.headers["x-client-id"], "alice");
    assert_eq!(seen.headers["x-client-auth"], "basic,totp,token");
    assert!(!seen.headers.contains_key("authorization"));

    // A token cannot mint its successor.
    let r = call(&c, "POST", "/auth/login", &[("authorization", &bearer)]).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"], "log in with credentials, not a token");

    // Logout revokes it for the rest of its life.
    let r = call(&c, "POST", "/auth/logout", &[]).await;
    assert_eq!(r.status, 401, "logout needs the token");
    let r = call(&c, "POST", "/auth/logout", &[("authorization", &bearer)]).await;
    assert_eq!(r.status, 204);
    let r = call(&c, "GET", "/secure/x", &[("authorization", &bearer)]).await;
    assert_eq!(r.status, 401, "a logged-out token");
    let r = call(&c, "POST", "/auth/logout", &[("authorization", &bearer)]).await;
    assert_eq!(r.status, 401, "already logged out");
    let m = crate::support::admin_get(gw.admin.unwrap(), "/metrics").await;
    for want in [
        "portcullis_login_tokens_total{event=\"issued\"} 1",
        "portcullis_login_tokens_total{event=\"revoked\"} 1",
    ] {
        assert!(m.contains(want), "missing {want} in\n{m}");
    }
}

#[tokio::test]
async fn roles_come_from_the_current_config_and_expired_or_foreign_tokens_are_refused() {
    let pki = TestPki::new();
    let (_up, yaml) = setup(&pki, &rcgen::PKCS_ECDSA_P256_SHA256, "[basic]", "").await;
    let gw = TestGateway::start(&pki, &yaml).await;
    let c = gw.client(None);
    let r = call(
        &c,
        "POST",
        "/auth/login",
        &[("authorization", &basic("alice", "correct horse"))],
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    let token = r.json()["access_token"].as_str().unwrap().to_owned();
    let bearer = format!("Bearer {token}");
    let (header, claims) = verify_with_jwks(&token, &jwks(&c).await);
    assert_eq!(claims["amr"], serde_json::json!(["basic"]));
    let r = call(&c, "GET", "/docs", &[("authorization", &bearer)]).await;
    assert_eq!(r.status, 200);
    let r = call(&c, "GET", "/secure/x", &[("authorization", &bearer)]).await;
    assert_eq!(
        r.status, 403,
        "a login without the code does not meet [basic, totp]"
    );

    // The same claims with an expiry in the past, signed with the gateway's own key: refused.
    let key = std::fs::read(pki.file("token.key")).unwrap();
    let mut stale = claims.clone();
    stale["exp"] = Value::from(otp::now() - 60);
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    h.kid = header["kid"].as_str().map(str::to_owned);
    let expired = jsonwebtoken::encode(&h, &stale, &es256_key(&key)).unwrap();
    let r = get_with_token(&c, "/docs", &expired).await;
    assert_eq!(r.status, 401, "expired");
    // A token signed by another key under the same kid: refused.
    let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .unwrap()
        .serialize_pem();
    let forged = jsonwebtoken::encode(&h, &claims, &es256_key(other.as_bytes())).unwrap();
    let r = get_with_token(&c, "/docs", &forged).await;
    assert_eq!(r.status, 401, "bad signature");

    // alice loses her role: the token she holds loses it at once.
    std::fs::write(
        pki.file("gateway.yaml"),
        yaml.replace(
            "roles: [reader]\n  - { name: readers",
            "roles: []\n  - { name: readers",
        ),
    )
    .unwrap();
    portcullis::reload::reload(&gw.shared, &pki.file("gateway.yaml")).unwrap();
    let r = call(&c, "GET", "/docs", &[("authorization", &bearer)]).await;
    assert_eq!(r.status, 403, "roles come from the current config");
}

#[tokio::test]
async fn a_token_from_a_login_with_a_certificate_only_works_with_that_certificate() {
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    let carol = pki.client("reader-carol");
    let (_up, yaml) = setup(&pki, &rcgen::PKCS_ED25519, "[certificate]", "").await;
    let gw = TestGateway::start(&pki, &yaml).await;
    let r = call(&gw.client(Some(&bob)), "POST", "/auth/login", &[]).await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    let token = r.json()["access_token"].as_str().unwrap().to_owned();
    let (_, claims) = verify_with_jwks(&token, &jwks(&gw.client(None)).await);
    assert_eq!(claims["sub"], "O=Acme,CN=reader-bob");
    let fingerprint = B64.encode(<sha2::Sha256 as sha2::Digest>::digest(&bob.der));
    assert_eq!(claims["cnf"]["x5t#S256"], fingerprint.as_str());
    let bearer = format!("Bearer {token}");
    for (who, client, want) in [
        ("bob", gw.client(Some(&bob)), 200),
        ("carol", gw.client(Some(&carol)), 401),
        ("no certificate", gw.client(None), 401),
    ] {
        let r = call(&client, "GET", "/docs", &[("authorization", &bearer)]).await;
        assert_eq!(r.status, want, "{who}");
    }
}

#[tokio::test]
async fn logout_on_one_replica_is_honoured_by_the_other_through_redis() {
    let redis = RedisServer::start();
    let pki = TestPki::new();
    let extra = format!("rate_limits:\n  store: {}\n", redis.url());
    let (_up, yaml) = setup(&pki, &rcgen::PKCS_ED25519, "[basic]", &extra).await;
    let a = TestGateway::start(&pki, &yaml).await;
    let b = TestGateway::start(&pki, &yaml).await;
    let r = call(
        &a.client(None),
        "POST",
        "/auth/login",
        &[("authorization", &basic("alice", "correct horse"))],
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    let bearer = format!("Bearer {}", r.json()["access_token"].as_str().unwrap());
    let r = call(
        &b.client(None),
        "GET",
        "/docs",
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(
        r.status, 200,
        "a token one replica issued works on the other"
    );
    let r = call(
        &a.client(None),
        "POST",
        "/auth/logout",
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(r.status, 204);
    let r = call(
        &b.client(None),
        "GET",
        "/docs",
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(r.status, 401, "the other replica honours the logout");
    let keys = redis.keys();
    assert!(
        keys.iter().any(|k| k.starts_with("portcullis:rl:revoked:")),
        "{keys:?}"
    );
}

#[tokio::test]
async fn a_rotated_key_keeps_earlier_tokens_valid_and_published() {
    let pki = TestPki::new();
    let (_up, yaml) = setup(&pki, &rcgen::PKCS_ED25519, "[basic]", "").await;
    let gw = TestGateway::start(&pki, &yaml).await;
    let c = gw.client(None);
    let alice = basic("alice", "correct horse");
    let login = |c: &Client| {
        let c = c.clone();
        let alice = alice.clone();
        async move {
            let r = call(&c, "POST", "/auth/login", &[("authorization", &alice)]).await;
            assert_eq!(r.status, 200, "{:?}", r.json());
            r.json()["access_token"].as_str().unwrap().to_owned()
        }
    };
    let old = login(&c).await;
    write_key(&pki, "token.key", &rcgen::PKCS_ECDSA_P256_SHA256);
    portcullis::reload::reload(&gw.shared, &pki.file("gateway.yaml")).unwrap();
    let new = login(&c).await;
    let set = jwks(&c).await;
    assert_eq!(set["keys"].as_array().unwrap().len(), 2, "{set}");
    let (old_header, _) = verify_with_jwks(&old, &set);
    let (new_header, _) = verify_with_jwks(&new, &set);
    assert_ne!(old_header["kid"], new_header["kid"]);
    for token in [&old, &new] {
        let r = get_with_token(&c, "/docs", token).await;
        assert_eq!(r.status, 200);
    }
}
