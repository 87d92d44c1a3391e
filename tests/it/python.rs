//! examples/python/portcullis_client.py against a real gateway: a client certificate, an API
//! key, and the login flow with a code pyotp computes, the token checked with PyJWT against
//! the gateway's JWKS, then logout. The test command installs requests, pyotp and PyJWT.

use crate::support::gateway::yaml_with;
use crate::support::otp::SECRET;
use crate::support::{FakeUpstream, TestGateway, TestPki};

#[tokio::test]
async fn the_python_example_uses_a_certificate_an_api_key_and_the_login_flow() {
    let mut pki = TestPki::new();
    let bob = pki.client("reader-bob");
    std::fs::write(pki.file("bob.crt"), &bob.cert_pem).unwrap();
    std::fs::write(pki.file("bob.key"), &bob.key_pem).unwrap();
    let pem = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
        .unwrap()
        .serialize_pem();
    std::fs::write(pki.file("token.key"), pem).unwrap();
    let (key, _) = portcullis::auth::new_api_key("batch").unwrap();
    let hash = portcullis::auth::hash_password("correct horse").unwrap();
    let policy = format!(
        r#"
tokens: {{ signing_key: token.key, login_factors: [basic, totp] }}
principals:
  - {{ name: readers, cert: {{ cn: "reader-*" }}, roles: [reader] }}
  - {{ name: batch, api_key: {{ sha256: "{}" }}, roles: [reader] }}
  - name: alice
    basic: {{ user: alice, argon2: "{hash}" }}
    totp: {{ secret: "{SECRET}" }}
    roles: [reader]
routes:
  - {{ name: docs, match: {{ prefix: / }}, upstream: app, allow: {{ roles: [reader] }} }}
"#,
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(key.as_bytes()))
    );
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(
        &pki,
        &yaml_with(&pki, up.addr, "client_auth: optional", &policy),
    )
    .await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/python/portcullis_client.py"
    );
    let url = format!("https://127.0.0.1:{}", gw.addr.port());
    let ca = pki.file("ca.crt");
    let (crt, k) = (pki.file("bob.crt"), pki.file("bob.key"));
    let args: Vec<String> = [
        script,
        "--url",
        &url,
        "--ca",
        ca.to_str().unwrap(),
        "--path",
        "/docs",
        "--cert",
        crt.to_str().unwrap(),
        "--key",
        k.to_str().unwrap(),
        "--api-key",
        &key,
        "--user",
        "alice",
        "--password",
        "correct horse",
        "--totp-secret",
        SECRET,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3").args(&args).output()
    })
    .await
    .unwrap()
    .expect("python3 runs (the test command installs requests, pyotp and PyJWT)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the example failed (missing modules? the test command installs requests, pyotp, PyJWT):\n{stdout}{stderr}"
    );
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [
            "certificate: 200",
            "api key: 200",
            "login: Bearer token for 900 s",
            "token: sub=alice amr=basic,totp",
            "with the token: 200",
            "after logout: 401",
        ],
        "{stderr}"
    );
    let who: Vec<String> = up
        .requests()
        .iter()
        .map(|r| r.headers["x-client-auth"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(who, ["certificate", "api_key", "basic,totp,token"]);
}
