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
    print_tour(&certs, addr)?;
    gateway.run(crate::server::shutdown_signal()).await;
    Ok(())
}

fn print_tour(certs: &Path, addr: SocketAddr) -> anyhow::Result<()> {
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
    println!(
        "\nportcullis is listening on {url} in front of a demo echo upstream. Try, from this folder:\n\n\
         # allowed (200): reader-bob has the reader role\n\
         curl --cacert {c}/ca.crt {bob} {url}/hello\n\n\
         # forbidden (403): /admin/ needs the admin role\n\
         curl --cacert {c}/ca.crt {bob} {url}/admin/users\n\n\
         # allowed (200): ops-alice is in OU Platform, so she has the admin role\n\
         curl --cacert {c}/ca.crt {alice} {url}/admin/users\n\n\
         # rejected: no client certificate, so the TLS handshake is refused\n\
         curl --cacert {c}/ca.crt {url}/hello\n\n\
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
