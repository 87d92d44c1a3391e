//! A local OAuth 2.0 authorization server's introspection endpoint (RFC 7662) over TLS, with
//! the test PKI's server certificate: it checks the gateway's client credentials
//! (client_secret_basic), answers from a table of tokens, counts calls, and can be slowed down.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use super::pki::TestPki;

pub const CLIENT_ID: &str = "portcullis";
pub const CLIENT_SECRET: &str = "s3cret&=+";

pub struct Idp {
    pub addr: SocketAddr,
    /// token -> the JSON answer (tokens not listed are inactive).
    pub tokens: Arc<Mutex<HashMap<String, serde_json::Value>>>,
    pub calls: Arc<AtomicU64>,
    pub delay: Arc<Mutex<Duration>>,
    task: tokio::task::JoinHandle<()>,
}

impl Idp {
    pub async fn start(pki: &TestPki) -> Idp {
        Self::start_on(pki, "127.0.0.1:0".parse().unwrap()).await
    }

    /// On a given address (to come back where a stopped one was).
    pub async fn start_on(pki: &TestPki, at: SocketAddr) -> Idp {
        let acceptor = tokio_rustls::TlsAcceptor::from(pki.server_tls());
        let listener = tokio::net::TcpListener::bind(at).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tokens: Arc<Mutex<HashMap<String, serde_json::Value>>> = Arc::default();
        let calls: Arc<AtomicU64> = Arc::default();
        let delay: Arc<Mutex<Duration>> = Arc::default();
        let (t, c, d) = (tokens.clone(), calls.clone(), delay.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let (tokens, calls, delay) = (t.clone(), c.clone(), d.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (tokens, calls, delay) = (tokens.clone(), calls.clone(), delay.clone());
                        async move {
                            calls.fetch_add(1, Ordering::SeqCst);
                            let wait = *delay.lock().unwrap();
                            tokio::time::sleep(wait).await;
                            let want = format!(
                                "Basic {}",
                                base64::engine::general_purpose::STANDARD
                                    .encode(format!("{CLIENT_ID}:s3cret%26%3D%2B"))
                            );
                            let authorized = req
                                .headers()
                                .get("authorization")
                                .is_some_and(|v| v.as_bytes() == want.as_bytes());
                            let form = req.into_body().collect().await.unwrap().to_bytes();
                            let form = String::from_utf8_lossy(&form).into_owned();
                            let token = form
                                .split('&')
                                .find_map(|kv| kv.strip_prefix("token="))
                                .unwrap_or("")
                                .replace("%2B", "+")
                                .replace("%2F", "/")
                                .replace("%3D", "=");
                            let (status, body) = if !authorized {
                                (401, serde_json::json!({"error": "invalid_client"}))
                            } else {
                                let answer = tokens.lock().unwrap().get(&token).cloned();
                                (200, answer.unwrap_or(serde_json::json!({"active": false})))
                            };
                            let mut resp =
                                hyper::Response::new(Full::new(Bytes::from(body.to_string())));
                            *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Idp {
            addr,
            tokens,
            calls,
            delay,
            task,
        }
    }

    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    pub fn set(&self, token: &str, answer: serde_json::Value) {
        self.tokens.lock().unwrap().insert(token.to_owned(), answer);
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.task.abort();
    }
}
