//! Forwarding to upstreams: one pooled keep-alive HTTP/1.1 client per upstream, the response
//! head under a deadline, bodies streamed both ways, and WebSocket upgrades spliced through.
//!
//! This module does not decide who may pass (`policy`) nor which headers carry identity
//! (`proxy::headers` is called by `gateway`): it moves bytes and classifies upstream failures.

mod body;
pub mod headers;
pub mod tunnel;

use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{Request, Response, StatusCode, Uri, Version, header};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

pub use body::{BodyTooLarge, BoxError, LimitedBody, ResponseBody, TrackedBody};

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
    pub name: String,
    client: Client<HttpConnector, LimitedBody>,
    authority: Authority,
    /// The URL's path without a trailing `/` ("" for none), prefixed to forwarded paths.
    base_path: String,
    timeout: Duration,
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
}

impl UpstreamErrorKind {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamErrorKind::Connect => "connect",
            UpstreamErrorKind::Timeout => "timeout",
            UpstreamErrorKind::Reset => "reset",
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

impl Upstream {
    /// Builds the client for one upstream. No connection is made until the first request.
    pub fn new(s: &UpstreamSettings) -> Upstream {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(s.connect_timeout));
        connector.set_nodelay(true);
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            .build(connector);
        let authority = s
            .url
            .authority()
            .cloned()
            .unwrap_or_else(|| Authority::from_static("127.0.0.1"));
        let base_path = s.url.path().trim_end_matches('/').to_owned();
        Upstream {
            name: s.name.clone(),
            client,
            authority,
            base_path,
            timeout: s.timeout,
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
    /// removed. When `upgrade` is asked for and the upstream answers `101 Switching
    /// Protocols`, the upstream's side of the upgrade comes back too, for a tunnel.
    ///
    /// # Errors
    /// A [`ForwardError`] mapping to 413, 502 or 504.
    pub async fn send(
        &self,
        mut req: Request<LimitedBody>,
        upgrade: bool,
    ) -> Result<(Response<ResponseBody>, Option<hyper::upgrade::OnUpgrade>), ForwardError> {
        *req.version_mut() = Version::HTTP_11;
        let result = tokio::time::timeout(self.timeout, self.client.request(req)).await;
        let mut resp = match result {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => return Err(classify(&e)),
            Err(_) => {
                return Err(ForwardError {
                    error: GatewayError::UpstreamTimeout,
                    kind: Some(UpstreamErrorKind::Timeout),
                    detail: format!("no response head within {:?}", self.timeout),
                });
            }
        };
        let upgraded = upgrade && resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        let upstream_side = upgraded.then(|| hyper::upgrade::on(&mut resp));
        headers::strip_hop_by_hop(resp.headers_mut(), upgraded);
        Ok((
            resp.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed_unsync()),
            upstream_side,
        ))
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
