//! Forwarding to upstreams: one pooled keep-alive HTTP/1.1 client per upstream, the response
//! head under a deadline that starts once the request body is sent, response bodies under
//! `read_timeout`, one retry on a new connection for requests that can be replayed, bodies
//! streamed both ways, and WebSocket upgrades spliced through.
//!
//! This module does not decide who may pass (`policy`) nor which headers carry identity
//! (`proxy::headers` is called by `gateway`): it moves bytes and classifies upstream failures.

mod body;
pub mod headers;
pub mod tunnel;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{Request, Response, StatusCode, Uri, Version, header};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

pub use body::{
    BodyTooLarge, BoxError, LimitedBody, ResponseBody, TrackedBody, Upload, UpstreamBody,
    UpstreamBodyError,
};

use crate::config::UpstreamSettings;
use crate::error::GatewayError;

/// A complete body from bytes, boxed as a [`ResponseBody`].
pub fn full_body(bytes: Bytes) -> ResponseBody {
    http_body_util::Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An upstream and its connection pool.
#[derive(Clone, Debug)]
pub struct Upstream {
    /// The name under `upstreams:`, for logs and metrics.
    pub name: Arc<str>,
    client: Client<HttpConnector, LimitedBody>,
    /// No pool: a retry always gets a new connection.
    fresh: Client<HttpConnector, LimitedBody>,
    authority: Authority,
    /// The URL's path without a trailing `/` ("" for none), prefixed to forwarded paths.
    base_path: String,
    timeout: Duration,
    read_timeout: Duration,
    body_timeout: Duration,
}

/// How a forward failed, for `portcullis_upstream_errors_total{upstream,kind}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    /// TCP connect refused, unreachable or timed out.
    Connect,
    /// No response head within `timeout`.
    Timeout,
    /// The connection broke before a response head arrived.
    Reset,
    /// The upstream answered something the gateway cannot pass on (an unsolicited 101).
    Protocol,
}

impl UpstreamErrorKind {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamErrorKind::Connect => "connect",
            UpstreamErrorKind::Timeout => "timeout",
            UpstreamErrorKind::Reset => "reset",
            UpstreamErrorKind::Protocol => "protocol",
        }
    }
}

/// A failed forward: what the client gets, and what the operator is told.
#[derive(Debug)]
pub struct ForwardError {
    /// The response to send.
    pub error: GatewayError,
    /// Set for upstream failures (not for a client body over the limit).
    pub kind: Option<UpstreamErrorKind>,
    /// The underlying error, for the log.
    pub detail: String,
}

/// What is needed to send a request again: only requests without a body are replayed.
struct Replay {
    method: http::Method,
    uri: Uri,
    headers: http::HeaderMap,
}

impl Upstream {
    /// Builds the client for one upstream. No connection is made until the first request.
    /// `body_timeout` is `limits.body_timeout`: a stalled upload gets 408.
    pub fn new(s: &UpstreamSettings, body_timeout: Duration) -> Upstream {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(s.connect_timeout));
        connector.set_nodelay(true);
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(s.pool_idle_timeout)
            .pool_max_idle_per_host(256)
            .build(connector.clone());
        let fresh = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(connector);
        let authority = s
            .url
            .authority()
            .cloned()
            .unwrap_or_else(|| Authority::from_static("127.0.0.1"));
        let base_path = s.url.path().trim_end_matches('/').to_owned();
        Upstream {
            name: Arc::from(s.name.as_str()),
            client,
            fresh,
            authority,
            base_path,
            timeout: s.timeout,
            read_timeout: s.read_timeout,
            body_timeout,
        }
    }

    /// The absolute URI for a normalized path and the original query.
    pub fn uri(&self, path: &str, query: Option<&str>) -> Result<Uri, http::Error> {
        let mut pq = String::with_capacity(
            self.base_path.len() + path.len() + query.map_or(0, |q| q.len() + 1),
        );
        pq.push_str(&self.base_path);
        pq.push_str(path);
        if let Some(q) = query {
            pq.push('?');
            pq.push_str(q);
        }
        Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(self.authority.clone())
            .path_and_query(pq)
            .build()
    }

    /// Sends a prepared request and returns the upstream's response with hop-by-hop headers
    /// removed and its body under `read_timeout`. When `upgrade` is asked for and the
    /// upstream answers `101 Switching Protocols`, the upstream's side of the upgrade comes
    /// back too, for a tunnel. A request without a body whose connection breaks before a
    /// response head (typically a pooled connection the upstream had just closed) is sent
    /// once more, on a new connection.
    ///
    /// # Errors
    /// A [`ForwardError`] mapping to 408, 413, 502 or 504.
    pub async fn send(
        &self,
        mut req: Request<LimitedBody>,
        upgrade: bool,
    ) -> Result<(Response<ResponseBody>, Option<hyper::upgrade::OnUpgrade>), ForwardError> {
        *req.version_mut() = Version::HTTP_11;
        let upload = req.body().upload();
        let replay = upload.is_none().then(|| Replay {
            method: req.method().clone(),
            uri: req.uri().clone(),
            headers: req.headers().clone(),
        });
        let mut resp = match self.exchange(&self.client, req, upload).await {
            Err(fe) if fe.kind == Some(UpstreamErrorKind::Reset) && replay.is_some() => {
                let Some(r) = replay else { return Err(fe) };
                tracing::debug!(upstream = %self.name, error = %fe.detail, "retrying on a new connection");
                let mut again = Request::new(LimitedBody::empty());
                *again.method_mut() = r.method;
                *again.uri_mut() = r.uri;
                *again.headers_mut() = r.headers;
                self.exchange(&self.fresh, again, None).await?
            }
            other => other?,
        };
        let status = resp.status();
        if status == StatusCode::SWITCHING_PROTOCOLS && !upgrade {
            return Err(ForwardError {
                error: GatewayError::UpstreamUnavailable,
                kind: Some(UpstreamErrorKind::Protocol),
                detail: "101 Switching Protocols to a request that asked for no upgrade".into(),
            });
        }
        let upgraded = upgrade && status == StatusCode::SWITCHING_PROTOCOLS;
        let upstream_side = upgraded.then(|| hyper::upgrade::on(&mut resp));
        // Framed by Transfer-Encoding: a Content-Length beside it is stale (RFC 9112 §6.3),
        // and the client's framing is the gateway's own.
        if resp.headers().contains_key(header::TRANSFER_ENCODING) {
            resp.headers_mut().remove(header::CONTENT_LENGTH);
        }
        headers::strip_hop_by_hop(resp.headers_mut(), upgraded);
        let read_timeout = self.read_timeout;
        Ok((
            resp.map(|b| UpstreamBody::new(b, read_timeout).boxed_unsync()),
            upstream_side,
        ))
    }

    /// One exchange: the request body is streamed, and the response deadline starts when it
    /// has been sent (a slow upload is not the upstream's fault); an upload that stalls for
    /// `body_timeout` is the client's (408).
    async fn exchange(
        &self,
        client: &Client<HttpConnector, LimitedBody>,
        req: Request<LimitedBody>,
        upload: Option<Arc<Upload>>,
    ) -> Result<Response<hyper::body::Incoming>, ForwardError> {
        let response = client.request(req);
        tokio::pin!(response);
        if let Some(up) = upload {
            let tick =
                (self.body_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
            let sent = up.sent();
            tokio::pin!(sent);
            loop {
                tokio::select! {
                    // An upstream may answer before reading the whole body (e.g. a 413).
                    r = &mut response => return r.map_err(|e| classify(&e)),
                    () = &mut sent => break,
                    () = tokio::time::sleep(tick) => {
                        if up.stalled_for() >= self.body_timeout {
                            return Err(ForwardError {
                                error: GatewayError::ClientTimeout,
                                kind: None,
                                detail: format!("no request body bytes within body_timeout ({:?})", self.body_timeout),
                            });
                        }
                    }
                }
            }
        }
        match tokio::time::timeout(self.timeout, response).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(classify(&e)),
            Err(_) => Err(ForwardError {
                error: GatewayError::UpstreamTimeout,
                kind: Some(UpstreamErrorKind::Timeout),
                detail: format!("no response head within {:?}", self.timeout),
            }),
        }
    }
}

fn classify(e: &hyper_util::client::legacy::Error) -> ForwardError {
    let detail = error_chain(e);
    if caused_by::<BodyTooLarge>(e) {
        return ForwardError {
            error: GatewayError::BodyTooLarge,
            kind: None,
            detail,
        };
    }
    if caused_by::<hyper::Error>(e) && is_client_body_error(e) {
        return ForwardError {
            error: GatewayError::BadRequest {
                reason: "request body could not be read",
                close: true,
            },
            kind: None,
            detail,
        };
    }
    let kind = if e.is_connect() {
        UpstreamErrorKind::Connect
    } else {
        UpstreamErrorKind::Reset
    };
    ForwardError {
        error: GatewayError::UpstreamUnavailable,
        kind: Some(kind),
        detail,
    }
}

/// Whether the failure came from reading the client's body (it aborted mid-upload).
fn is_client_body_error(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(h) = err.downcast_ref::<hyper::Error>()
            && h.is_user()
        {
            return true;
        }
        cur = err.source();
    }
    false
}

fn caused_by<T: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<T>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// `a: b: c` for the log.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        out.push_str(": ");
        out.push_str(&err.to_string());
        cur = err.source();
    }
    out
}

/// Whether a request asks for a WebSocket upgrade (HTTP/1.1 `Connection: upgrade` +
/// `Upgrade: websocket`).
pub fn wants_websocket<B>(req: &Request<B>) -> bool {
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let connection = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    upgrade && connection && req.version() == Version::HTTP_11
}
