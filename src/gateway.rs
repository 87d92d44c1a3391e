//! The request path: one function, [`GatewayService::handle`], whose stages run in request
//! order, reading the configuration from one atomically swapped snapshot.
//!
//! Stages (outermost first):
//! 1. snapshot + request id + access-log record (every outcome is logged once);
//! 2. framing checks: CL+TE conflicts, duplicate Content-Length, head size (400/431);
//! 3. path normalization (400): matching and forwarding see the same path;
//! 4. identity: the connection's verified certificate → principals and roles;
//! 5. policy: route (404) and authorization (401/403), default deny;
//! 6. rate limit: the slot where per-identity limits plug in;
//! 7. forward: strip spoofable and hop-by-hop headers, set identity and X-Forwarded-*,
//!    stream to the pooled upstream under its deadline (502/504, 413 mid-stream).
//!
//! Plain async stages rather than tower layers: each stage needs the snapshot, the caller
//! and the route that earlier stages produced, and one function keeps that flow visible
//! without boxing a service per layer. Errors from every stage meet in one mapping
//! (`error::GatewayError::into_response`).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use arc_swap::{ArcSwap, ArcSwapOption};
use http::{HeaderName, HeaderValue, Request, Response, header};
use hyper::body::Incoming;

use crate::auth::guard::AuthGuard;
use crate::auth::{self, AuthFailure, Authenticator};
use crate::config::{Config, ConfigErrors, OnStoreError};
use crate::error::GatewayError;
use crate::identity::PeerCert;
use crate::metrics::{Metrics, RouteLabel, RouteReason, UpstreamKind};
use crate::observability::{Activity, RequestLog};
use crate::policy::{Caller, Policy, RequestFacts, Verified, normalize_path};
use crate::proxy::headers;
use crate::proxy::{LimitedBody, TrackedBody, Upstream};
use crate::ratelimit::{RateLimits, key_for};
use crate::tls::Expiries;

/// Everything derived from one configuration: swapped whole on reload, never mutated.
pub struct State {
    /// The resolved configuration.
    pub config: Config,
    /// The compiled policy.
    pub policy: Policy,
    /// The listener's TLS configuration.
    pub tls: Arc<rustls::ServerConfig>,
    /// Upstream clients, indexed like `config.upstreams`.
    pub upstreams: Vec<Upstream>,
    /// Certificate and CRL expiry facts.
    pub expiries: Expiries,
    /// API key, JWT and Basic verification.
    pub auth: Arc<Authenticator>,
    /// Rate-limit budgets.
    pub ratelimits: RateLimits,
    /// Distinguishes snapshots, so per-connection caches know when to recompute.
    generation: u64,
}

/// Snapshot generations; never reused, unlike addresses, so a cache cannot be fooled by a
/// new snapshot allocated where an old one was.
static GENERATION: AtomicU64 = AtomicU64::new(1);

impl State {
    /// Builds a complete snapshot: TLS files are read and checked here.
    ///
    /// # Errors
    /// Every problem with the certificate, key, CA and CRL files.
    pub fn build(config: Config) -> Result<State, ConfigErrors> {
        let (tls, expiries) = crate::tls::server_config(&config)?;
        let policy = Policy::new(&config);
        let upstreams = config.upstreams.iter().map(Upstream::new).collect();
        let auth = Arc::new(Authenticator::new(&config)?);
        let ratelimits = RateLimits::new(&config);
        let generation = GENERATION.fetch_add(1, Ordering::Relaxed);
        Ok(State {
            config,
            policy,
            tls,
            upstreams,
            expiries,
            auth,
            ratelimits,
            generation,
        })
    }
}

/// Process-wide state shared by every connection.
pub struct Shared {
    /// The live snapshot; a request keeps the `Arc` it started with.
    pub state: ArcSwap<State>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// False once draining has begun (`/readyz` answers 503).
    pub ready: AtomicBool,
    /// Failed authentications per client IP; kept across reloads while its limit is unchanged.
    pub auth_guard: ArcSwap<AuthGuard>,
}

impl Shared {
    /// Wraps a first snapshot.
    pub fn new(state: State) -> Arc<Shared> {
        let metrics = Arc::new(Metrics::new());
        metrics.set_expiries(&state.expiries);
        let guard = AuthGuard::new(state.config.auth_failures);
        Arc::new(Shared {
            state: ArcSwap::from_pointee(state),
            metrics,
            ready: AtomicBool::new(false),
            auth_guard: ArcSwap::from_pointee(guard),
        })
    }

    /// Installs a new snapshot (reload): background key refresh starts for it, and the
    /// failure guard is replaced only when its limit changed.
    pub fn install(&self, mut state: State) {
        state.ratelimits.carry_over(&self.state.load().ratelimits);
        let old = self.state.load().config.auth_failures;
        let new = state.config.auth_failures;
        if (old.rate, old.per, old.burst) != (new.rate, new.per, new.burst) {
            self.auth_guard.store(Arc::new(AuthGuard::new(new)));
        }
        if let Some(j) = state.auth.jwt() {
            j.start_refresh();
        }
        self.metrics.set_expiries(&state.expiries);
        self.state.store(Arc::new(state));
    }
}

/// What a connection knows about its peer, computed once after the handshake.
#[derive(Debug)]
pub struct Connection {
    /// The client's address.
    pub remote: SocketAddr,
    /// The verified client certificate, when one was presented.
    pub cert: Option<PeerCert>,
    /// In-flight requests and last activity, for the idle timeout.
    pub activity: Arc<Activity>,
    /// The caller as the current snapshot sees this connection's certificate.
    caller: ArcSwapOption<CallerView>,
}

/// A connection's caller under one snapshot, with what each request needs precomputed: the
/// certificate does not change during a connection, so principals, roles and the encoded
/// identity headers are worked out once per connection and configuration, not per request.
#[derive(Debug)]
pub struct CallerView {
    generation: u64,
    /// The decision input.
    pub caller: Caller,
    /// For the access log.
    identity: Option<Arc<str>>,
    roles: Arc<str>,
    /// Identity headers to set on every forwarded request.
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl Connection {
    /// A connection's facts, read once after the handshake.
    pub fn new(remote: SocketAddr, cert: Option<PeerCert>, activity: Arc<Activity>) -> Connection {
        Connection {
            remote,
            cert,
            activity,
            caller: ArcSwapOption::empty(),
        }
    }

    /// The caller under `state`, computed on the first request after a (re)load.
    fn caller_view(&self, state: &State) -> Arc<CallerView> {
        if let Some(v) = self.caller.load_full()
            && v.generation == state.generation
        {
            return v;
        }
        let caller = state.policy.identify(&Verified {
            cert: self.cert.as_ref(),
            ..Verified::default()
        });
        let view = Arc::new(CallerView {
            generation: state.generation,
            identity: caller.identity.as_deref().map(Arc::from),
            roles: Arc::from(caller.roles.join(",")),
            headers: headers::identity_headers(&caller, self.cert.as_ref(), &state.config.forward),
            caller,
        });
        self.caller.store(Some(view.clone()));
        view
    }
}

/// The hyper service for one client connection.
#[derive(Clone)]
pub struct GatewayService {
    shared: Arc<Shared>,
    conn: Arc<Connection>,
}

impl GatewayService {
    /// A service for one connection.
    pub fn new(shared: Arc<Shared>, conn: Arc<Connection>) -> GatewayService {
        GatewayService { shared, conn }
    }

    async fn handle(self, req: Request<Incoming>) -> Response<TrackedBody> {
        // 1. Snapshot, request id, log record.
        let state = self.shared.state.load_full();
        let forward = &state.config.forward;
        let request_id = request_id(req.headers().get(&forward.request_id));
        self.conn.activity.begin();
        let mut log = RequestLog {
            start: Instant::now(),
            request_id,
            client: self.conn.remote,
            identity: None,
            roles: Arc::from(""),
            method: req.method().clone(),
            path: String::new(),
            route: None,
            status: 0,
            upstream_status: None,
            decision: "allow",
            upstream_aborted: false,
            access_log: state.config.logging.access_log,
            metrics: self.shared.metrics.clone(),
            activity: self.conn.activity.clone(),
        };
        let result = self.process(&state, req, &mut log).await;
        let mut resp = match result {
            Ok(resp) => resp,
            Err(e) => {
                if log.decision == "allow" {
                    log.decision = e.reason();
                }
                let mut resp = e.into_response(&log.request_id);
                if resp.status() == http::StatusCode::UNAUTHORIZED {
                    for challenge in state.auth.challenges() {
                        resp.headers_mut()
                            .append(header::WWW_AUTHENTICATE, challenge.clone());
                    }
                }
                resp
            }
        };
        log.status = resp.status().as_u16();
        if let Ok(v) = HeaderValue::from_str(&log.request_id) {
            resp.headers_mut().insert(forward.request_id.clone(), v);
        }
        resp.map(|body| TrackedBody::new(body, log))
    }

    async fn process(
        &self,
        state: &State,
        req: Request<Incoming>,
        log: &mut RequestLog,
    ) -> Result<Response<crate::proxy::ResponseBody>, GatewayError> {
        let config = &state.config;

        // 2. Framing and size checks hyper leaves to us.
        check_framing(&req)?;
        if head_size(&req) > config.limits.max_header_bytes {
            return Err(GatewayError::HeadersTooLarge);
        }
        if let Some(len) = content_length(&req)
            && len > config.limits.max_body_bytes
        {
            return Err(GatewayError::BodyTooLarge);
        }

        // 3. One canonical path for matching and forwarding.
        let path = normalize_path(req.uri().path()).map_err(GatewayError::BadPath)?;
        log.path.clone_from(&path);
        let host = request_host(&req);

        // 4. Credentials. The certificate's part is cached per connection; every other
        //    presented credential must verify, or the request is refused (401), and failures
        //    spend the client IP's auth_failures budget (429 once spent).
        let view = self.conn.caller_view(state);
        log.identity.clone_from(&view.identity);
        log.roles = view.roles.clone();
        let presented = match auth::presented(req.headers(), &config.api_keys.header) {
            Ok(p) => p,
            Err(failure) => return Err(self.auth_failed(failure, log)),
        };
        let mut claims = None;
        let per_request: Option<(Caller, Vec<(HeaderName, HeaderValue)>)> = if presented.any() {
            let (caller, c) = self.authenticate(state, presented, log).await?;
            claims = c;
            let headers =
                headers::identity_headers(&caller, self.conn.cert.as_ref(), &config.forward);
            Some((caller, headers))
        } else {
            None
        };
        let (caller, identity_headers): (&Caller, &[(HeaderName, HeaderValue)]) = match &per_request
        {
            Some((c, h)) => (c, h),
            None => (&view.caller, &view.headers),
        };
        if let Some((c, _)) = &per_request {
            log.identity = c.identity.as_deref().map(Arc::from);
            log.roles = Arc::from(c.roles.join(","));
        }

        // 5. Route and authorization.
        let facts = RequestFacts {
            method: req.method(),
            host: host.as_deref(),
            path: &path,
            source_ip: self.conn.remote.ip(),
            headers: req.headers(),
            cert: self.conn.cert.as_ref(),
            claims: claims.as_ref(),
        };
        let decision = state.policy.decide(&facts, caller);
        log.route = decision.route.map(|r| r.name.clone());
        if let Err(denial) = decision.verdict {
            log.decision = denial.as_str();
            let route = log.route.clone().unwrap_or_else(|| "none".to_owned());
            self.shared
                .metrics
                .authz_denied
                .get_or_create(&RouteReason {
                    route,
                    reason: denial.as_str().to_owned(),
                })
                .inc();
            tracing::debug!(request_id = %log.request_id, rule = decision.rule, "request denied");
            return Err(GatewayError::Denied(denial));
        }
        let Some(route) = decision.route else {
            return Err(GatewayError::Denied(crate::policy::Denial::NoRoute));
        };

        // 6. Rate limit, after authorization, so denied callers neither spend quota nor
        //    create limiter keys.
        let mut rate_info = None;
        if let Some(spec) = &route.rate_limit {
            let key = key_for(spec.key, caller, self.conn.remote.ip());
            match state.ratelimits.check(&route.name, spec, &key).await {
                Ok(o) if o.allowed => rate_info = Some(o),
                Ok(o) => {
                    log.decision = "rate_limited";
                    self.shared
                        .metrics
                        .ratelimited
                        .get_or_create(&RouteLabel {
                            route: route.name.clone(),
                        })
                        .inc();
                    return Err(GatewayError::RateLimited(o));
                }
                Err(_) => {
                    self.shared.metrics.ratelimit_store_errors.inc();
                    if state.ratelimits.on_store_error() == OnStoreError::Deny {
                        log.decision = "rate_limit_store_unavailable";
                        return Err(GatewayError::RateLimitStoreUnavailable);
                    }
                }
            }
        }

        // 7. Forward.
        // Routes hold indices into the same snapshot's upstreams, checked when it was built.
        let upstream = state
            .upstreams
            .get(route.upstream)
            .ok_or(GatewayError::UpstreamUnavailable)?;
        let forwarded_path = match &route.strip_prefix {
            Some(prefix) => strip_prefix(&path, prefix),
            None => path.as_str(),
        };
        let uri = upstream
            .uri(forwarded_path, req.uri().query())
            .map_err(|_| GatewayError::BadRequest {
                reason: "bad request target",
                close: false,
            })?;
        let websocket = route.websocket && crate::proxy::wants_websocket(&req);
        let (mut parts, body) = req.into_parts();
        let client_upgrade = if websocket {
            parts.extensions.remove::<hyper::upgrade::OnUpgrade>()
        } else {
            None
        };

        let h = &mut parts.headers;
        headers::strip_hop_by_hop(h, websocket);
        headers::strip_identity(h, &config.forward);
        if !config.forward.credentials {
            h.remove(header::AUTHORIZATION);
        }
        if let Some(host) = &host
            && let Ok(v) = HeaderValue::from_str(
                host_with_port(&parts.uri, parts.headers.get(header::HOST), host).as_str(),
            )
        {
            parts.headers.insert(header::HOST, v);
        }
        if !config.forward.credentials {
            parts.headers.remove(&config.api_keys.header);
        }
        let h = &mut parts.headers;
        for (name, value) in identity_headers {
            h.insert(name.clone(), value.clone());
        }
        if config.forward.x_forwarded {
            headers::set_forwarded(h, self.conn.remote.ip(), host.as_deref());
        }
        if let Ok(v) = HeaderValue::from_str(&log.request_id) {
            h.insert(config.forward.request_id.clone(), v);
        }
        parts.uri = uri;
        let upstream_req =
            Request::from_parts(parts, LimitedBody::new(body, config.limits.max_body_bytes));

        match upstream.send(upstream_req, client_upgrade).await {
            Ok(mut resp) => {
                log.upstream_status = Some(resp.status().as_u16());
                if let Some(o) = rate_info {
                    o.write_headers(resp.headers_mut());
                }
                Ok(resp)
            }
            Err(fe) => {
                if let Some(kind) = fe.kind {
                    self.shared
                        .metrics
                        .upstream_errors
                        .get_or_create(&UpstreamKind {
                            upstream: upstream.name.clone(),
                            kind: kind.as_str().to_owned(),
                        })
                        .inc();
                    tracing::warn!(
                        request_id = %log.request_id,
                        upstream = %upstream.name,
                        kind = kind.as_str(),
                        error = %fe.detail,
                        "upstream request failed"
                    );
                } else {
                    tracing::debug!(request_id = %log.request_id, error = %fe.detail, "request body rejected");
                }
                Err(fe.error)
            }
        }
    }
}

impl GatewayService {
    /// Verifies every presented credential, under the client IP's failure budget.
    async fn authenticate(
        &self,
        state: &State,
        presented: auth::Presented,
        log: &mut RequestLog,
    ) -> Result<(Caller, Option<serde_json::Map<String, serde_json::Value>>), GatewayError> {
        let ip = self.conn.remote.ip();
        if let Some(wait) = self.shared.auth_guard.load().blocked(ip, Instant::now()) {
            log.decision = "auth_failures";
            return Err(GatewayError::TooManyAuthFailures(wait));
        }
        let cert = self.conn.cert.as_ref();
        let mut verified = Verified {
            cert,
            ..Verified::default()
        };
        if let Some(key) = &presented.api_key {
            let today = time::OffsetDateTime::now_utc().date();
            match state.auth.verify_api_key(key, today) {
                Ok(i) => verified.api_key = Some(i),
                Err(f) => return Err(self.auth_failed(f, log)),
            }
        }
        let mut claims = None;
        if let Some(token) = &presented.bearer {
            match state.auth.verify_jwt(token, cert) {
                Ok(c) => claims = Some(c),
                Err(f) => return Err(self.auth_failed(f, log)),
            }
        }
        if let Some((user, password)) = presented.basic {
            if !state.auth.has_basic() {
                return Err(self.auth_failed(AuthFailure::NotConfigured("basic"), log));
            }
            match state.auth.verify_basic_async(user, password).await {
                Ok(i) => verified.basic = Some(i),
                Err(f) => return Err(self.auth_failed(f, log)),
            }
        }
        verified.jwt = claims.as_ref();
        let caller = state.policy.identify(&verified);
        Ok((caller, claims))
    }

    /// A refused credential: logged with its reason, counted against the client IP.
    fn auth_failed(&self, failure: AuthFailure, log: &mut RequestLog) -> GatewayError {
        let ip = self.conn.remote.ip();
        tracing::info!(request_id = %log.request_id, client = %self.conn.remote, reason = %failure, "credential refused");
        self.shared
            .metrics
            .authz_denied
            .get_or_create(&RouteReason {
                route: "none".to_owned(),
                reason: "bad_credential".to_owned(),
            })
            .inc();
        if let Some(wait) = self
            .shared
            .auth_guard
            .load()
            .record_failure(ip, Instant::now())
        {
            log.decision = "auth_failures";
            return GatewayError::TooManyAuthFailures(wait);
        }
        log.decision = "bad_credential";
        GatewayError::Denied(crate::policy::Denial::Unauthenticated)
    }
}

impl hyper::service::Service<Request<Incoming>> for GatewayService {
    type Response = Response<TrackedBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.handle(req).await) })
    }
}

/// The caller's request id when it is 1-128 characters of `A-Za-z0-9._:-`, else a new one.
fn request_id(given: Option<&HeaderValue>) -> String {
    if let Some(v) = given {
        let b = v.as_bytes();
        let valid = (1..=128).contains(&b.len())
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b':' | b'-'));
        if valid {
            // Checked above: ASCII only.
            return String::from_utf8_lossy(b).into_owned();
        }
    }
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

/// Rejects ambiguous framing (request smuggling): Content-Length beside Transfer-Encoding, or
/// more than one Content-Length. The connection is closed because its framing is in doubt.
fn check_framing<B>(req: &Request<B>) -> Result<(), GatewayError> {
    let h = req.headers();
    let cl = h.get_all(header::CONTENT_LENGTH).iter().count();
    if cl > 1 {
        return Err(GatewayError::BadRequest {
            reason: "duplicate content-length",
            close: true,
        });
    }
    if cl == 1 && h.contains_key(header::TRANSFER_ENCODING) {
        return Err(GatewayError::BadRequest {
            reason: "content-length with transfer-encoding",
            close: true,
        });
    }
    Ok(())
}

fn content_length<B>(req: &Request<B>) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Approximate size of the request head as sent: request line plus `name: value\r\n` lines.
fn head_size<B>(req: &Request<B>) -> usize {
    let uri = req.uri();
    let target = uri.path_and_query().map_or(1, |pq| pq.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len());
    let line = req.method().as_str().len() + target + 12;
    line + req
        .headers()
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum::<usize>()
}

/// The request's host without port, lower-cased: `:authority` for HTTP/2, `Host` for HTTP/1.
fn request_host<B>(req: &Request<B>) -> Option<String> {
    let raw = match req.uri().authority() {
        Some(a) => a.host().to_owned(),
        None => {
            let v = req.headers().get(header::HOST)?.to_str().ok()?;
            let a: http::uri::Authority = v.parse().ok()?;
            a.host().to_owned()
        }
    };
    Some(raw.to_ascii_lowercase())
}

/// The Host header for the upstream: the client's, with its port when it had one.
fn host_with_port(uri: &http::Uri, host_header: Option<&HeaderValue>, host: &str) -> String {
    if let Some(a) = uri.authority() {
        return a.as_str().to_owned();
    }
    host_header
        .and_then(|v| v.to_str().ok())
        .map_or_else(|| host.to_owned(), str::to_owned)
}

/// Removes a prefix at a segment boundary; what remains always starts with `/`.
fn strip_prefix<'a>(path: &'a str, prefix: &str) -> &'a str {
    match path.strip_prefix(prefix) {
        Some("") => "/",
        Some(rest) if rest.starts_with('/') => rest,
        _ => path,
    }
}

/// Readiness for `/readyz`.
pub fn is_ready(shared: &Shared) -> bool {
    shared.ready.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids() {
        let ok = HeaderValue::from_static("abc-123_x.y:z");
        assert_eq!(request_id(Some(&ok)), "abc-123_x.y:z");
        let bad = HeaderValue::from_static("has space");
        assert_ne!(request_id(Some(&bad)), "has space");
        assert_eq!(request_id(None).len(), 32);
    }

    #[test]
    fn prefixes_strip_at_segment_boundaries() {
        assert_eq!(strip_prefix("/admin/users", "/admin"), "/users");
        assert_eq!(strip_prefix("/admin", "/admin"), "/");
        assert_eq!(strip_prefix("/administrator", "/admin"), "/administrator");
    }
}
