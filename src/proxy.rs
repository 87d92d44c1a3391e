//! Forwarding to upstreams: a pool of keep-alive HTTP/1.1 connections per upstream, the response
//! head under a deadline that starts once the request body is sent, response bodies under
//! `read_timeout`, one retry on a new connection for requests that can be replayed, bodies
//! streamed both ways, and WebSocket upgrades spliced through.
//!
//! This module does not decide who may pass (`policy`) nor which headers carry identity
//! (`proxy::headers` is called by `gateway`): it moves bytes and classifies upstream failures.

mod body;
pub mod headers;
mod pool;
pub mod tunnel;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery};
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version, header};
use http_body::Body as _;
use http_body_util::BodyExt;

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
#[derive(Clone)]
pub struct Upstream {
    /// The name under `upstreams:`, for logs and metrics.
    pub name: Arc<str>,
    pool: Arc<pool::Pool>,
    /// `Host` for a request that arrives without one (HTTP/1.1 requires it).
    host: HeaderValue,
    /// The URL's path without a trailing `/` ("" for none), prefixed to forwarded paths.
    base_path: String,
    timeout: Duration,
    read_timeout: Duration,
    body_timeout: Duration,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("host", &self.host)
            .field("base_path", &self.base_path)
            .finish_non_exhaustive()
    }
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

impl Replay {
    fn of<B>(req: &Request<B>) -> Replay {
        Replay {
            method: req.method().clone(),
            uri: req.uri().clone(),
            headers: req.headers().clone(),
        }
    }

    fn into_request(self) -> Request<LimitedBody> {
        let mut again = Request::new(LimitedBody::empty());
        *again.method_mut() = self.method;
        *again.uri_mut() = self.uri;
        *again.headers_mut() = self.headers;
        again
    }
}

/// Why one attempt failed.
enum Failure {
    Connect(pool::ConnectError),
    /// hyper's error, and whether the connection had served a request before.
    Send(hyper::Error, bool),
}

impl Upstream {
    /// Builds the client for one upstream. No connection is made until the first request.
    /// `body_timeout` is `limits.body_timeout`: a stalled upload gets 408.
    pub fn new(s: &UpstreamSettings, body_timeout: Duration) -> Upstream {
        let authority = s
            .url
            .authority()
            .cloned()
            .unwrap_or_else(|| Authority::from_static("127.0.0.1"));
        let pool = pool::Pool::new(
            authority.host(),
            authority.port_u16().unwrap_or(80),
            s.connect_timeout,
            s.pool_idle_timeout,
        );
        let host = HeaderValue::from_str(authority.as_str())
            .unwrap_or_else(|_| HeaderValue::from_static("localhost"));
        let base_path = s.url.path().trim_end_matches('/').to_owned();
        Upstream {
            name: Arc::from(s.name.as_str()),
            pool: Arc::new(pool),
            host,
            base_path,
            timeout: s.timeout,
            read_timeout: s.read_timeout,
            body_timeout,
        }
    }

    /// The request target (origin form) for a normalized path and the original target's query.
    pub fn uri(&self, path: &str, original: &Uri) -> Result<Uri, http::Error> {
        // The common case, a path forwarded as the client sent it: share its bytes.
        if self.base_path.is_empty()
            && path == original.path()
            && let Some(pq) = original.path_and_query()
        {
            return Ok(Uri::from(pq.clone()));
        }
        let query = original.query();
        let mut pq = String::with_capacity(
            self.base_path.len() + path.len() + query.map_or(0, |q| q.len() + 1),
        );
        pq.push_str(&self.base_path);
        pq.push_str(path);
        if let Some(q) = query {
            pq.push('?');
            pq.push_str(q);
        }
        let pq = PathAndQuery::from_maybe_shared(Bytes::from(pq))?;
        Ok(Uri::from(pq))
    }

    /// Sends a prepared request and returns the upstream's response with hop-by-hop headers
    /// removed and its body under `read_timeout`. When `upgrade` is asked for and the
    /// upstream answers `101 Switching Protocols`, the upstream's side of the upgrade comes
    /// back too, for a tunnel. A request that a pooled connection closed before taking is
    /// sent on another; a request without a body whose reused pooled connection breaks before
    /// a response head (the upstream had just closed it) is sent once more, on a new
    /// connection.
    ///
    /// # Errors
    /// A [`ForwardError`] mapping to 408, 413, 502 or 504.
    pub async fn send(
        &self,
        mut req: Request<LimitedBody>,
        upgrade: bool,
    ) -> Result<(Response<ResponseBody>, Option<hyper::upgrade::OnUpgrade>), ForwardError> {
        *req.version_mut() = Version::HTTP_11;
        if !req.headers().contains_key(header::HOST) {
            req.headers_mut().insert(header::HOST, self.host.clone());
        }
        let (mut resp, conn) = match req.body().upload() {
            // The usual request, without a body: the response deadline starts now. When a
            // pooled connection that had served requests breaks before a response head (the
            // upstream closed it as this request went out), the request is sent once more on
            // a new connection, under its own deadline; a new connection that breaks is the
            // upstream's answer.
            None => {
                let replay = Replay::of(&req);
                match tokio::time::timeout(self.timeout, self.attempt(req, true)).await {
                    Ok(Err(Failure::Send(e, true))) if is_reset(&e) => {
                        tracing::debug!(upstream = %self.name, error = %error_chain(&e), "retrying on a new connection");
                        let again = replay.into_request();
                        let second =
                            tokio::time::timeout(self.timeout, self.attempt(again, false)).await;
                        self.settle(second)?
                    }
                    first => self.settle(first)?,
                }
            }
            // A body to stream: the rarer path, boxed so that the common one's future (and
            // every future that awaits it) stays small.
            Some(upload) => Box::pin(self.exchange(req, upload)).await?,
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
        // An upgraded connection belongs to the tunnel; any other goes back to the pool once
        // its response has been read to the end.
        let conn = if upgraded {
            None
        } else if resp.body().is_end_stream() {
            conn.check_in();
            None
        } else {
            Some(conn)
        };
        let read_timeout = self.read_timeout;
        Ok((
            resp.map(|b| UpstreamBody::new(b, read_timeout, conn).boxed_unsync()),
            upstream_side,
        ))
    }

    /// One exchange: the request body is streamed, and the response deadline starts when it
    /// has been sent (a slow upload is not the upstream's fault); an upload that stalls for
    /// `body_timeout` is the client's (408).
    async fn exchange(
        &self,
        req: Request<LimitedBody>,
        up: Arc<Upload>,
    ) -> Result<(Response<hyper::body::Incoming>, pool::Checkout), ForwardError> {
        let response = self.attempt(req, true);
        tokio::pin!(response);
        let tick = (self.body_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        let sent = up.sent();
        tokio::pin!(sent);
        loop {
            tokio::select! {
                // An upstream may answer before reading the whole body (e.g. a 413).
                r = &mut response => return r.map_err(|f| self.failed(f)),
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
        let r = tokio::time::timeout(self.timeout, response).await;
        self.settle(r)
    }

    /// An attempt's outcome under the response deadline, as the client will see it.
    fn settle<T>(
        &self,
        r: Result<Result<T, Failure>, tokio::time::error::Elapsed>,
    ) -> Result<T, ForwardError> {
        match r {
            Ok(r) => r.map_err(|f| self.failed(f)),
            Err(_) => Err(ForwardError {
                error: GatewayError::UpstreamTimeout,
                kind: Some(UpstreamErrorKind::Timeout),
                detail: format!("no response head within {:?}", self.timeout),
            }),
        }
    }

    /// Sends on a pooled connection (when `pooled`) or a new one. A pooled connection that
    /// turns out closed before it took the request is passed over for the next; hyper hands
    /// the request back in that case, body and all, so nothing is sent twice.
    async fn attempt(
        &self,
        mut req: Request<LimitedBody>,
        pooled: bool,
    ) -> Result<(Response<hyper::body::Incoming>, pool::Checkout), Failure> {
        loop {
            let found = if pooled { self.pool.checkout() } else { None };
            let mut conn = match found {
                Some(c) => c,
                None => self.pool.connect().await.map_err(Failure::Connect)?,
            };
            if let Err(e) = conn.sender.ready().await {
                if conn.reused {
                    continue;
                }
                return Err(Failure::Send(e, false));
            }
            match conn.sender.try_send_request(req).await {
                Ok(resp) => return Ok((resp, conn)),
                Err(mut e) => match e.take_message() {
                    Some(back) if conn.reused => req = back,
                    _ => return Err(Failure::Send(e.into_error(), conn.reused)),
                },
            }
        }
    }

    fn failed(&self, f: Failure) -> ForwardError {
        match f {
            Failure::Connect(e) => ForwardError {
                error: GatewayError::UpstreamUnavailable,
                kind: Some(UpstreamErrorKind::Connect),
                detail: error_chain(&e),
            },
            Failure::Send(e, _) => classify(&e),
        }
    }
}

/// Whether a failed send is the connection's fault (and not the client body's).
fn is_reset(e: &hyper::Error) -> bool {
    !caused_by::<BodyTooLarge>(e) && !is_client_body_error(e)
}

fn classify(e: &hyper::Error) -> ForwardError {
    let detail = error_chain(e);
    if caused_by::<BodyTooLarge>(e) {
        return ForwardError {
            error: GatewayError::BodyTooLarge,
            kind: None,
            detail,
        };
    }
    if is_client_body_error(e) {
        return ForwardError {
            error: GatewayError::BadRequest {
                reason: "request body could not be read",
                close: true,
            },
            kind: None,
            detail,
        };
    }
    ForwardError {
        error: GatewayError::UpstreamUnavailable,
        kind: Some(UpstreamErrorKind::Reset),
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
