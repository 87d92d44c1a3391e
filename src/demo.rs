//! `portcullis demo`: the first thing a new user runs.
//!
//! Creates ./certs when missing (CA, server, clients `ops-alice` in OU Platform and
//! `reader-bob`), starts a built-in echo upstream on every upstream address of the
//! configuration, starts the gateway, and prints curl commands that work when pasted.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, bail};
use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::pki;

/// The example policy, written when the configuration file is missing.
pub const EXAMPLE_CONFIG: &str = include_str!("../gateway.yaml");

/// The development credentials beside the development PKI, as the example policy names them.
#[derive(Debug)]
pub struct DemoCredentials {
    /// The API key of the `reporting-job` principal.
    pub api_key: String,
    /// alice's password.
    pub password: String,
    /// alice's TOTP secret (base32).
    pub totp_file: std::path::PathBuf,
}

/// Creates, when missing, the development credentials the example policy uses beside the
/// development PKI in `certs`: an API key for `reporting-job` (the key and its SHA-256), a
/// password for `alice` (it and its argon2id hash), her TOTP secret, and the login-token
/// signing key. Existing files are kept, so the demo prints the same credentials every run.
/// Private files are mode 0600; none of this is for production.
///
/// # Errors
/// A file that cannot be read or written.
pub fn credentials(certs: &Path) -> anyhow::Result<DemoCredentials> {
    let demo = certs.join("demo");
    let private =
        |name: &str, make: &dyn Fn() -> anyhow::Result<String>| -> anyhow::Result<String> {
            let path = demo.join(name);
            if let Ok(text) = std::fs::read_to_string(&path) {
                return Ok(text.trim().to_owned());
            }
            let text = make()?;
            write_private(&path, &format!("{text}\n"))?;
            Ok(text)
        };
    let api_key = private("reporting-job.key", &|| {
        Ok(crate::auth::new_api_key("reporting-job")
            .map_err(anyhow::Error::msg)?
            .0)
    })?;
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(api_key.as_bytes()));
    write_private(&demo.join("reporting-job.sha256"), &format!("{digest}\n"))?;
    let password = private("alice.password", &|| {
        let mut bytes = [0u8; 12];
        crate::auth::fill_random(&mut bytes).map_err(anyhow::Error::msg)?;
        Ok(hex::encode(bytes))
    })?;
    let hash_file = demo.join("alice.argon2");
    let current = std::fs::read_to_string(&hash_file).ok().and_then(|h| {
        use argon2::PasswordVerifier;
        let parsed = argon2::PasswordHash::new(h.trim()).ok()?;
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .ok()
    });
    if current.is_none() {
        let hash = crate::auth::hash_password(&password).map_err(anyhow::Error::msg)?;
        write_private(&hash_file, &format!("{hash}\n"))?;
    }
    private("alice.totp", &|| {
        let mut secret = [0u8; crate::auth::totp::NEW_SECRET_BYTES];
        crate::auth::fill_random(&mut secret).map_err(anyhow::Error::msg)?;
        Ok(totp_rs::Secret::from(secret.to_vec()).to_base32())
    })?;
    let signing = certs.join("token-signing.key");
    if !signing.exists() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
            .context("cannot make the token signing key")?;
        write_private(&signing, &key.serialize_pem())?;
    }
    Ok(DemoCredentials {
        api_key,
        password,
        totp_file: demo.join("alice.totp"),
    })
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Runs the demo until Ctrl-C.
///
/// # Errors
/// An invalid configuration, a PKI failure, or a port already in use.
pub async fn run(config_path: &Path) -> anyhow::Result<()> {
    let _log = crate::observability::init(crate::config::LogFormat::Text);
    if !config_path.exists() {
        std::fs::write(config_path, EXAMPLE_CONFIG).with_context(|| {
            format!(
                "cannot write the example configuration to {}",
                config_path.display()
            )
        })?;
        println!(
            "wrote the example configuration to {}",
            config_path.display()
        );
    }
    let base = config_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let certs = base.join("certs");
    if !certs.join("ca.crt").exists() {
        let clients = [
            pki::parse_client_arg("ops-alice:Platform"),
            pki::parse_client_arg("reader-bob"),
        ];
        pki::init(&certs, &clients, &[]).context("cannot create the demo PKI")?;
        println!("created a development PKI in {}", certs.display());
    }
    let creds = credentials(&certs)?;
    let config = crate::config::load(config_path)?;

    let mut seen = Vec::new();
    for u in &config.upstreams {
        let Some(auth) = u.url.authority() else {
            continue;
        };
        let addr: SocketAddr = auth.as_str().parse().with_context(|| {
            format!(
                "upstream {:?}: the demo echo server needs an IP:port URL",
                u.name
            )
        })?;
        if seen.contains(&addr) {
            continue;
        }
        seen.push(addr);
        let listener = TcpListener::bind(addr).await.with_context(|| {
            format!(
                "cannot start the demo echo upstream on {addr} (is something else listening there?)"
            )
        })?;
        tokio::spawn(echo_upstream(listener));
    }

    let gateway = crate::Gateway::bind(config).await?;
    let addr = gateway.local_addr();
    // Edits to gateway.yaml during the tour apply as they would under `run`.
    tokio::spawn(crate::reload::watch(
        gateway.shared(),
        config_path.to_path_buf(),
    ));
    print_tour(&certs, addr, &creds)?;
    gateway.run(crate::server::shutdown_signal()).await;
    Ok(())
}

fn print_tour(certs: &Path, addr: SocketAddr, creds: &DemoCredentials) -> anyhow::Result<()> {
    let host = if addr.ip().is_loopback() || addr.ip().is_unspecified() {
        "localhost".to_owned()
    } else {
        addr.ip().to_string()
    };
    let url = format!("https://{host}:{}", addr.port());
    let c = certs.display().to_string();
    let c = c.strip_prefix("./").unwrap_or(&c);
    for f in ["ca.crt", "clients/reader-bob.crt", "clients/ops-alice.crt"] {
        if !certs.join(f).exists() {
            bail!("{c}/{f} is missing: remove {c} and run the demo again to recreate the demo PKI");
        }
    }
    let bob = format!("--cert {c}/clients/reader-bob.crt --key {c}/clients/reader-bob.key");
    let alice = format!("--cert {c}/clients/ops-alice.crt --key {c}/clients/ops-alice.key");
    // This binary, as a path to paste: relative when it lies below the current folder.
    let exe = std::env::current_exe().unwrap_or_else(|_| "portcullis".into());
    let exe = std::env::current_dir()
        .ok()
        .and_then(|d| exe.strip_prefix(d).ok().map(Path::to_path_buf))
        .unwrap_or(exe);
    let exe = exe.display();
    let key = &creds.api_key;
    let password = &creds.password;
    let totp = creds.totp_file.display().to_string();
    let totp = totp.strip_prefix("./").unwrap_or(&totp);
    println!(
        "\nportcullis is listening on {url} in front of a demo echo upstream. Try, from this folder:\n\n\
         # allowed (200): reader-bob's certificate gives him the reader role\n\
         curl --cacert {c}/ca.crt {bob} {url}/hello\n\n\
         # forbidden (403): /admin/ needs the admin role\n\
         curl --cacert {c}/ca.crt {bob} {url}/admin/users\n\n\
         # allowed (200): ops-alice is in OU Platform, so she has the admin role\n\
         curl --cacert {c}/ca.crt {alice} {url}/admin/users\n\n\
         # unauthorized (401): no certificate and no other credential\n\
         curl --cacert {c}/ca.crt {url}/hello\n\n\
         # allowed (200): the batch job reporting-job uses its API key instead of a certificate\n\
         curl --cacert {c}/ca.crt -H 'x-api-key: {key}' {url}/reports/daily\n\n\
         # rate limited (429): /reports/ takes 3 requests at once, then 5 a minute; the last ones\n\
         # get 429 with Retry-After (add -i to see it and the RateLimit-* headers)\n\
         for i in 1 2 3 4; do curl -s -o /dev/null -w '%{{http_code}} ' --cacert {c}/ca.crt -H 'x-api-key: {key}' {url}/reports/daily; done; echo\n\n\
         # logged in (200): alice's password and the current code of her authenticator app (here\n\
         # computed from {totp}) get a 15-minute token; a code works once, so wait for the next to log in again\n\
         TOKEN=$(curl -s --cacert {c}/ca.crt -u 'alice:{password}' -H \"x-otp: $({exe} totp code --secret-file {totp})\" -X POST {url}/auth/login | sed -E 's/.*\"access_token\":\"([^\"]+)\".*/\\1/')\n\n\
         # allowed (200): the token stands in for the password and the code\n\
         curl --cacert {c}/ca.crt -H \"Authorization: Bearer $TOKEN\" {url}/hello\n\n\
         Press Ctrl-C to stop.\n"
    );
    Ok(())
}

/// A tiny upstream that answers every request with a JSON echo of what it received, so the
/// identity headers the gateway adds are visible.
pub async fn echo_upstream(listener: TcpListener) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let svc = service_fn(|req: Request<Incoming>| async move {
                let method = req.method().to_string();
                let uri = req.uri().to_string();
                let headers: serde_json::Map<String, serde_json::Value> = req
                    .headers()
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.to_string(),
                            String::from_utf8_lossy(v.as_bytes()).into_owned().into(),
                        )
                    })
                    .collect();
                let body = req
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let echo = serde_json::json!({
                    "method": method,
                    "uri": uri,
                    "headers": headers,
                    "body_bytes": body.len(),
                });
                let mut resp = Response::new(Full::new(Bytes::from(format!("{echo:#}\n"))));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                Ok::<_, std::convert::Infallible>(resp)
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}
