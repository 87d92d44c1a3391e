//! Per-request errors and the one place they become HTTP responses.
//!
//! The client gets a status and a terse JSON body with the request id; never a file path, an
//! upstream address or an internal error chain. The operator gets the detail in the access
//! log and the warn-level log line written where the error is produced.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::policy::{Denial, PathError};
use crate::proxy::ResponseBody;

/// Everything that can stop a request before the upstream answers.
#[derive(Debug)]
pub enum GatewayError {
    /// Malformed request; `close` when the framing is in doubt.
    BadRequest { reason: &'static str, close: bool },
    /// The path cannot be normalized safely.
    BadPath(PathError),
    /// The policy said no.
    Denied(Denial),
    /// The request head is larger than `limits.max_header_bytes`.
    HeadersTooLarge,
    /// The body is larger than `limits.max_body_bytes`.
    BodyTooLarge,
    /// The upstream refused, reset or could not be reached.
    UpstreamUnavailable,
    /// The upstream did not send a response head in time.
    UpstreamTimeout,
    /// The client stopped sending its request body for `body_timeout`.
    ClientTimeout,
    /// The client IP spent its failed-authentication budget; retry after this long.
    TooManyAuthFailures(std::time::Duration),
    /// The caller spent the route's rate limit.
    RateLimited(crate::ratelimit::Outcome),
    /// The shared rate-limit store is down and `on_store_error: deny`.
    RateLimitStoreUnavailable,
    /// A gateway endpoint (login, logout, JWKS) asked with another method; `Allow` lists these.
    MethodNotAllowed(&'static str),
    /// A login whose verified factors do not include every `tokens.login_factors` one.
    LoginFactorsMissing,
    /// A login token presented to log in again: a login needs credentials.
    LoginWithToken,
    /// Logout needs a token of this gateway.
    LogoutWithoutToken,
    /// The in-process revocation table is full.
    RevocationsFull,
    /// The token could not be signed.
    TokenNotIssued,
    /// The identity provider could not be asked about a bearer token.
    IdpUnavailable,
}

impl GatewayError {
    /// The status for this error: the single mapping of SPEC.md's table.
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::BadRequest { .. } | GatewayError::BadPath(_) => StatusCode::BAD_REQUEST,
            GatewayError::Denied(Denial::NoRoute) => StatusCode::NOT_FOUND,
            GatewayError::Denied(Denial::Unauthenticated) => StatusCode::UNAUTHORIZED,
            GatewayError::Denied(Denial::Forbidden) => StatusCode::FORBIDDEN,
            GatewayError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            GatewayError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::UpstreamUnavailable => StatusCode::BAD_GATEWAY,
            GatewayError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::ClientTimeout => StatusCode::REQUEST_TIMEOUT,
            GatewayError::TooManyAuthFailures(_) | GatewayError::RateLimited(_) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            GatewayError::RateLimitStoreUnavailable
            | GatewayError::RevocationsFull
            | GatewayError::IdpUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            GatewayError::LoginFactorsMissing | GatewayError::LoginWithToken => {
                StatusCode::FORBIDDEN
            }
            GatewayError::LogoutWithoutToken => StatusCode::UNAUTHORIZED,
            GatewayError::TokenNotIssued => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The short reason in the JSON body and the access log.
    pub fn reason(&self) -> &'static str {
        match self {
            GatewayError::BadRequest { reason, .. } => reason,
            GatewayError::BadPath(PathError::NotAbsolute) => "bad path",
            GatewayError::BadPath(PathError::BadPercentEncoding) => "bad percent-encoding in path",
            GatewayError::BadPath(PathError::EncodedSeparator) => "encoded separator in path",
            GatewayError::BadPath(PathError::Backslash) => "backslash in path",
            GatewayError::BadPath(PathError::DotSegmentParameters) => {
                "dot segment with parameters in path"
            }
            GatewayError::BadPath(PathError::Semicolon) => "semicolon in path",
            GatewayError::Denied(Denial::NoRoute) => "no route",
            GatewayError::Denied(Denial::Unauthenticated) => "authentication required",
            GatewayError::Denied(Denial::Forbidden) => "forbidden",
            GatewayError::HeadersTooLarge => "request headers too large",
            GatewayError::BodyTooLarge => "request body too large",
            GatewayError::UpstreamUnavailable => "upstream unavailable",
            GatewayError::UpstreamTimeout => "upstream timeout",
            GatewayError::ClientTimeout => "request body timeout",
            GatewayError::TooManyAuthFailures(_) => "too many failed authentications",
            GatewayError::RateLimited(_) => "rate limited",
            GatewayError::RateLimitStoreUnavailable => "rate limit store unavailable",
            GatewayError::MethodNotAllowed(_) => "method not allowed",
            GatewayError::LoginFactorsMissing => "login needs more factors",
            GatewayError::LoginWithToken => "log in with credentials, not a token",
            GatewayError::LogoutWithoutToken => "logout needs a gateway token",
            GatewayError::RevocationsFull => "too many revoked tokens",
            GatewayError::TokenNotIssued => "token not issued",
            GatewayError::IdpUnavailable => "identity provider unavailable",
        }
    }

    /// Whether the connection must be closed after this response (framing in doubt, or a body
    /// that was not read to its end).
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            GatewayError::BadRequest { close: true, .. }
                | GatewayError::BodyTooLarge
                | GatewayError::ClientTimeout
        )
    }

    /// Builds the response; `request_id` is already validated header-safe.
    pub fn into_response(self, request_id: &str) -> Response<ResponseBody> {
        let mut resp = error_response(
            self.status(),
            self.reason(),
            request_id,
            self.closes_connection(),
        );
        if let GatewayError::RateLimited(o) = &self {
            o.write_headers(resp.headers_mut());
        }
        if let GatewayError::MethodNotAllowed(allow) = &self {
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        if let GatewayError::TooManyAuthFailures(wait) = self {
            // Whole seconds, rounded up: a client retrying sooner is refused again.
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        resp
    }
}

/// A JSON error response: `{"error": "...", "request_id": "..."}`.
pub fn error_response(
    status: StatusCode,
    reason: &str,
    request_id: &str,
    close: bool,
) -> Response<ResponseBody> {
    let body = serde_json::json!({ "error": reason, "request_id": request_id }).to_string();
    let mut resp = Response::new(crate::proxy::full_body(Bytes::from(body)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if close {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_spec_table() {
        let table = [
            (GatewayError::BadPath(PathError::EncodedSeparator), 400),
            (
                GatewayError::BadRequest {
                    reason: "x",
                    close: true,
                },
                400,
            ),
            (GatewayError::Denied(Denial::NoRoute), 404),
            (GatewayError::Denied(Denial::Unauthenticated), 401),
            (GatewayError::Denied(Denial::Forbidden), 403),
            (GatewayError::HeadersTooLarge, 431),
            (GatewayError::BodyTooLarge, 413),
            (GatewayError::UpstreamUnavailable, 502),
            (GatewayError::UpstreamTimeout, 504),
            (GatewayError::ClientTimeout, 408),
            (GatewayError::RateLimitStoreUnavailable, 503),
            (GatewayError::MethodNotAllowed("POST"), 405),
            (GatewayError::LoginFactorsMissing, 403),
            (GatewayError::LogoutWithoutToken, 401),
            (
                GatewayError::TooManyAuthFailures(std::time::Duration::from_millis(1500)),
                429,
            ),
        ];
        for (e, status) in table {
            assert_eq!(e.status().as_u16(), status, "{e:?}");
        }
    }
}
