//! FakeUpstream: a real HTTP/1.1 server on 127.0.0.1:0 that records what it received and
//! answers as scripted.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// One request as the upstream saw it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: Method,
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

#[derive(Clone, Copy, Debug)]
pub enum Mode {
    /// 200 with a small JSON body, or the request body echoed back for POST/PUT.
    Echo,
    /// Waits this long before answering.
    Delay(Duration),
    /// Answers GETs with this many bytes.
    Big(usize),
}

pub struct FakeUpstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Recorded>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeUpstream {
    pub async fn start() -> FakeUpstream {
        Self::with_mode(Mode::Echo).await
    }

    pub async fn with_mode(mode: Mode) -> FakeUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let rec = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let rec = rec.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(req, rec.clone(), mode));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        FakeUpstream { addr, seen, task }
    }

    /// An address where nothing listens (connections are refused).
    pub async fn refused_addr() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    }

    /// Waits (up to a second) until a request has reached the upstream.
    pub async fn wait_for_request(&self) {
        for _ in 0..100 {
            if !self.seen.lock().unwrap().is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.seen.lock().unwrap().clone()
    }

    pub fn last(&self) -> Recorded {
        self.requests()
            .last()
            .cloned()
            .expect("the upstream saw no request")
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(
    mut req: Request<Incoming>,
    rec: Arc<Mutex<Vec<Recorded>>>,
    mode: Mode,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if let Mode::Delay(d) = mode {
        tokio::time::sleep(d).await;
    }
    let is_ws = req
        .headers()
        .get("upgrade")
        .is_some_and(|v| v == "websocket");
    let upgrade = if is_ws {
        Some(hyper::upgrade::on(&mut req))
    } else {
        None
    };
    let method = req.method().clone();
    let uri = req.uri().to_string();
    let headers = req.headers().clone();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    rec.lock().unwrap().push(Recorded {
        method: method.clone(),
        uri,
        headers,
        body: body.clone(),
    });
    if let Some(on_upgrade) = upgrade {
        tokio::spawn(async move {
            if let Ok(up) = on_upgrade.await {
                let mut io = TokioIo::new(up);
                let mut buf = [0u8; 1024];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        resp.headers_mut()
            .insert("upgrade", "websocket".parse().unwrap());
        resp.headers_mut()
            .insert("connection", "upgrade".parse().unwrap());
        resp.headers_mut()
            .insert("sec-websocket-accept", "test".parse().unwrap());
        return Ok(resp);
    }
    let out = if method == Method::POST || method == Method::PUT {
        body
    } else if let Mode::Big(n) = mode {
        Bytes::from(vec![b'x'; n])
    } else {
        Bytes::from_static(b"{\"ok\":true}")
    };
    let mut resp = Response::new(Full::new(out));
    resp.headers_mut()
        .insert("x-upstream", "fake".parse().unwrap());
    resp.headers_mut()
        .insert("connection", "keep-alive, x-hop".parse().unwrap());
    resp.headers_mut()
        .insert("x-hop", "must-be-removed".parse().unwrap());
    Ok(resp)
}
