//! Costs on the request path that do not need a network: path normalization, the policy
//! decision, and verifying each kind of credential.
//!
//!     cargo bench --bench policy
//!
//! The figures land in docs/benchmarks.md with the machine they came from.

use std::hint::black_box;

use base64::Engine as _;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, Method};
use portcullis::auth::Authenticator;
use portcullis::identity::PeerCert;
use portcullis::policy::{Policy, RequestFacts, Verified, normalize_path};

fn setup() -> (
    tempfile::TempDir,
    portcullis::config::Config,
    String,
    String,
) {
    portcullis::tls::install_provider();
    let dir = tempfile::tempdir().unwrap();
    let kp = rcgen::KeyPair::generate().unwrap();
    let raw = kp.public_key_raw();
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let jwks = serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "x": b64(&raw[1..33]), "y": b64(&raw[33..65]), "kid": "k1", "alg": "ES256"}]});
    std::fs::write(dir.path().join("jwks.json"), jwks.to_string()).unwrap();
    let (key, _) = portcullis::auth::new_api_key("batch").unwrap();
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(key.as_bytes()));
    let hash = portcullis::auth::hash_password("correct horse battery staple").unwrap();
    let signing = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    std::fs::write(dir.path().join("token.key"), signing.serialize_pem()).unwrap();
    let yaml = format!(
        r#"
tls: {{ cert: s.crt, key: s.key, client_ca: ca.crt }}
tokens: {{ signing_key: token.key, login_factors: [basic] }}
upstreams: {{ app: {{ url: "http://127.0.0.1:1" }} }}
jwt: {{ issuer: https://idp, audiences: [gw], jwks: jwks.json, algorithms: [ES256] }}
principals:
  - {{ name: ops, cert: {{ cn: "ops-*", o: Acme }}, roles: [admin, reader] }}
  - {{ name: readers, cert: {{ cn: "reader-*" }}, roles: [reader] }}
  - {{ name: svc, cert: {{ san_uri: "spiffe://acme/ns/prod/*" }}, roles: [reader] }}
  - {{ name: batch, api_key: {{ sha256: "{digest}" }}, roles: [batch] }}
  - {{ name: alice, basic: {{ user: alice, argon2: "{hash}" }}, roles: [reader] }}
  - {{ name: eng, jwt: {{ claim: groups, contains: engineering }}, roles: [reader] }}
routes:
  - {{ name: admin, match: {{ prefix: /admin/ }}, upstream: app, allow: {{ roles: [admin], factors: [certificate] }} }}
  - {{ name: health, match: {{ exact: /health }}, upstream: app, allow: anyone }}
  - {{ name: batch, match: {{ prefix: /jobs/ }}, upstream: app, allow: {{ roles: [batch] }} }}
  - {{ name: reader, match: {{ prefix: / }}, upstream: app, allow: {{ roles: [reader], when: {{ source_ip: [10.0.0.0/8, 127.0.0.0/8] }} }} }}
"#
    );
    let path = dir.path().join("gw.yaml");
    let config = portcullis::config::from_str(&yaml, &path).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("k1".into());
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let claims = serde_json::json!({"iss": "https://idp", "aud": "gw", "sub": "u1", "exp": exp, "groups": ["engineering"]});
    let token = jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_ec_der(&kp.serialize_der()),
    )
    .unwrap();
    (dir, config, key, token)
}

fn bench(c: &mut Criterion) {
    let (_dir, config, key, token) = setup();
    let policy = Policy::new(&config);
    let auth = Authenticator::new(&config).unwrap();
    let cert = PeerCert {
        cn: vec!["reader-bob".into()],
        o: vec!["Acme".into()],
        subject: "O=Acme,CN=reader-bob".into(),
        ..PeerCert::default()
    };
    let headers = HeaderMap::new();
    let today = time::OffsetDateTime::now_utc().date();

    c.bench_function("normalize_path/clean", |b| {
        b.iter(|| normalize_path(black_box("/api/v1/items/42")))
    });
    c.bench_function("normalize_path/dirty", |b| {
        b.iter(|| normalize_path(black_box("//api/./v1/../v1/%69tems/42")))
    });
    c.bench_function("identify/certificate", |b| {
        b.iter(|| {
            policy.identify(black_box(&Verified {
                cert: Some(&cert),
                ..Verified::default()
            }))
        })
    });
    let caller = policy.identify(&Verified {
        cert: Some(&cert),
        ..Verified::default()
    });
    c.bench_function("decide/reader_route_with_when", |b| {
        b.iter(|| {
            let facts = RequestFacts {
                method: &Method::GET,
                host: Some("localhost"),
                path: black_box("/docs/page"),
                source_ip: [127, 0, 0, 1].into(),
                headers: &headers,
                cert: Some(&cert),
                claims: None,
            };
            policy.decide(&facts, &caller).verdict
        })
    });
    c.bench_function("verify/api_key", |b| {
        b.iter(|| auth.verify_api_key(black_box(&key), today))
    });
    c.bench_function("verify/jwt_es256", |b| {
        b.iter(|| auth.verify_jwt(black_box(&token), None))
    });
    // A login token of the gateway (EdDSA): what a request pays instead of argon2 once the
    // caller has logged in. The revocation lookup (a hash set, or one Redis EXISTS) is apart.
    let issuer = auth.tokens().unwrap();
    let (login_token, _) = issuer
        .issue("alice", &["alice".to_owned()], &["basic"], None)
        .unwrap();
    c.bench_function("verify/login_token_eddsa", |b| {
        b.iter(|| {
            let t = black_box(login_token.as_str());
            assert!(issuer.is_ours(t));
            issuer.verify(t, None)
        })
    });
    let totp_secret = b"12345678901234567890";
    let totp = portcullis::auth::totp::Totp::new(totp_secret, &config.totp);
    let now = portcullis::auth::totp::now_secs();
    let code = totp.code_at(now);
    c.bench_function("verify/totp_code", |b| {
        b.iter(|| totp.check(black_box(&code), now))
    });
    let mut slow = c.benchmark_group("verify_slow");
    slow.sample_size(10);
    slow.bench_function("basic_argon2id_default_params", |b| {
        b.iter(|| {
            auth.verify_basic(
                black_box("alice"),
                black_box("correct horse battery staple"),
            )
        })
    });
    slow.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
