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

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use rustls::pki_types::UnixTime;
use tokio::sync::watch;

use arc_swap::{ArcSwap, ArcSwapOption};
use http::{HeaderName, HeaderValue, Request, Response, header};
use hyper::body::Incoming;

use crate::auth::guard::AuthGuard;
use crate::auth::{self, AuthFailure, Authenticator};
use crate::config::{CertFormat, Config, ConfigErrors, OnStoreError, PathParameters};
use crate::error::GatewayError;
use crate::identity::{PeerCache, PeerCert, PeerIdentity};
use crate::metrics::{Metrics, RouteLabel, RouteReason, UpstreamKind};
use crate::observability::{Activity, RequestLog};
use crate::policy::{
    Caller, PathError, Policy, RequestFacts, Verified, match_form, normalize_path,
};
use crate::proxy::headers;
use crate::proxy::{LimitedBody, TrackedBody, Upstream};
use crate::ratelimit::{CallerKeys, RateLimits, key_for};
use crate::tls::{ClientVerifier, Expiries};

/// Everything derived from one configuration: swapped whole on reload, never mutated.
pub struct State {
    /// The resolved configuration.
    pub config: Config,
    /// The compiled policy.
    pub policy: Policy,
    /// The listener's TLS configuration.
    pub tls: Arc<rustls::ServerConfig>,
    /// Its client verifier, to check open connections again after a reload.
    pub verifier: Option<ClientVerifier>,
    /// Upstream clients, indexed like `config.upstreams`.
    pub upstreams: Vec<Upstream>,
    /// Certificate and CRL expiry facts.
    pub expiries: Expiries,
    /// Warnings about the TLS files, for `check` and the log.
    pub warnings: Vec<String>,
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
        let crate::tls::Listener {
            server: tls,
            expiries,
            verifier,
            warnings,
        } = crate::tls::server_config(&config)?;
        let policy = Policy::new(&config);
        let upstreams = config
            .upstreams
            .iter()
            .map(|u| Upstream::new(u, config.limits.body_timeout))
            .collect();
        let auth = Arc::new(Authenticator::new(&config)?);
        let ratelimits = RateLimits::new(&config)?;
        let generation = GENERATION.fetch_add(1, Ordering::Relaxed);
        Ok(State {
            config,
            policy,
            tls,
            verifier,
            upstreams,
            expiries,
            warnings,
            auth,
            ratelimits,
            generation,
        })
    }

    /// This snapshot's generation: never reused.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

impl State {
    /// Takes over, from the snapshot this one replaces, the state that was learned while
    /// serving and that the configuration did not change: rate-limit budgets of unchanged
    /// routes and stores, and the JWT key set (with its refresh task) of an unchanged source.
    /// (The failure guard lives beside the snapshots, in [`Shared`], for the same reason.)
    pub fn carry_over(&mut self, old: &State) {
        self.ratelimits.carry_over(&old.ratelimits);
        if let Some(auth) = Arc::get_mut(&mut self.auth) {
            auth.carry_over(&old.auth);
        }
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
    /// Client certificates parsed once and shared by their connections.
    pub peers: PeerCache,
    /// The last one-time-code step each principal used (kept across reloads).
    pub used_totp: crate::auth::totp::UsedSteps,
    /// Login tokens logged out, until they expire (kept across reloads).
    pub revoked_tokens: crate::auth::tokens::Revoked,
    /// Wrong one-time codes per principal (kept across reloads).
    pub wrong_totp: crate::auth::totp::WrongCodes,
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
            peers: PeerCache::default(),
            used_totp: crate::auth::totp::UsedSteps::default(),
            revoked_tokens: crate::auth::tokens::Revoked::default(),
            wrong_totp: crate::auth::totp::WrongCodes::default(),
        })
    }

    /// Installs a new snapshot (reload): what the old one learned at run time is carried
    /// over ([`State::carry_over`]), background key refresh starts for what is new, and the
    /// failure guard is replaced only when its limit changed.
    pub fn install(&self, mut state: State) {
        state.carry_over(&self.state.load());
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
    /// The client's address (IPv4-mapped IPv6 addresses already turned into IPv4).
    pub remote: SocketAddr,
    /// The verified client certificate and its chain, when one was presented (shared with
    /// the client's other connections).
    peer: Option<Arc<PeerIdentity>>,
    /// The snapshot whose TLS configuration verified the chain during the handshake: under
    /// it there is nothing to verify again.
    verified_under: u64,
    /// In-flight requests and last activity, for the idle timeout.
    pub activity: Arc<Activity>,
    /// The caller as the current snapshot sees this connection's certificate.
    caller: ArcSwapOption<CallerView>,
    /// The connection's place under `max_connections`, held by the connection and any
    /// WebSocket tunnel it became.
    _slot: Option<ConnectionSlot>,
    /// True once the gateway drains.
    pub stop: watch::Receiver<bool>,
    /// Set when a reload no longer trusts the certificate; the connection task closes.
    revoked: AtomicBool,
    /// Wakes the connection task to close at once.
    pub close: tokio::sync::Notify,
    /// `remote`'s address as an `X-Forwarded-For` value, made on the first forward.
    forwarded_for: std::sync::OnceLock<HeaderValue>,
}

/// One connection's place under `limits.max_connections`, and its count in
/// `portcullis_open_connections`: both end when the last holder (the connection, or the
/// WebSocket tunnel it became) lets go.
#[derive(Debug)]
pub struct ConnectionSlot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl ConnectionSlot {
    /// Takes a slot for a connection that has finished its handshake.
    pub fn new(permit: tokio::sync::OwnedSemaphorePermit, metrics: Arc<Metrics>) -> Self {
        metrics.open_connections.inc();
        ConnectionSlot {
            _permit: permit,
            metrics,
        }
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.metrics.open_connections.dec();
    }
}

/// A connection's caller under one snapshot, with what each request needs precomputed: the
/// certificate does not change during a connection, so principals, roles and the encoded
/// identity headers are worked out once per connection and configuration, not per request.
#[derive(Debug)]
pub struct CallerView {
    generation: u64,
    /// Whether this snapshot's CA bundle and CRLs still accept the connection's certificate.
    pub trusted: bool,
    /// The decision input.
    pub caller: Caller,
    /// For the access log.
    identity: Option<Arc<str>>,
    roles: Arc<str>,
    /// Identity headers to set on every forwarded request.
    headers: Vec<(HeaderName, HeaderValue)>,
    /// Rate-limit keys for every kind of limit.
    keys: CallerKeys,
}

impl Connection {
    /// A connection's facts, read once after the handshake.
    pub fn new(
        remote: SocketAddr,
        peer: Option<Arc<PeerIdentity>>,
        verified_under: u64,
        activity: Arc<Activity>,
        slot: Option<ConnectionSlot>,
        stop: watch::Receiver<bool>,
    ) -> Connection {
        Connection {
            remote: SocketAddr::new(remote.ip().to_canonical(), remote.port()),
            peer,
            verified_under,
            activity,
            caller: ArcSwapOption::empty(),
            _slot: slot,
            stop,
            revoked: AtomicBool::new(false),
            close: tokio::sync::Notify::new(),
            forwarded_for: std::sync::OnceLock::new(),
        }
    }

    /// The verified client certificate, when one was presented.
    pub fn cert(&self) -> Option<&PeerCert> {
        self.peer.as_deref().map(|p| &p.cert)
    }

    /// The client certificate as its identity header carries it, when there is one (rendered
    /// once per certificate, whichever connection forwards it first).
    pub fn cert_header(&self, format: CertFormat) -> Option<HeaderValue> {
        let peer = self.peer.as_deref()?;
        let value = match format {
            CertFormat::Xfcc => peer
                .xfcc
                .get_or_init(|| headers::header_value(&peer.cert.xfcc())),
            CertFormat::Rfc9440 => {
                let der = peer.chain.first()?;
                peer.rfc9440
                    .get_or_init(|| headers::header_value(&crate::identity::rfc9440(der)))
            }
        };
        Some(value.clone())
    }

    /// The client's address as a header value (made once per connection).
    pub fn forwarded_for(&self) -> &HeaderValue {
        self.forwarded_for
            .get_or_init(|| headers::header_value(&self.remote.ip().to_string()))
    }

    /// The caller under `state`, computed on the first request after a (re)load.
    pub fn caller_view(&self, state: &State) -> Arc<CallerView> {
        if let Some(v) = self.caller.load_full()
            && v.generation == state.generation
        {
            return v;
        }
        let caller = state.policy.identify(&Verified {
            cert: self.cert(),
            ..Verified::default()
        });
        let view = Arc::new(CallerView {
            generation: state.generation,
            trusted: self.trusted_under(state),
            identity: caller.identity.as_deref().map(Arc::from),
            roles: Arc::from(caller.roles.join(",")),
            headers: headers::identity_headers(
                &caller,
                self.cert_header(state.config.forward.client_cert_format),
                &state.config.forward,
            ),
            keys: CallerKeys::new(&caller, self.remote.ip()),
            caller,
        });
        self.caller.store(Some(view.clone()));
        view
    }

    /// Whether `state` still accepts this connection's certificate: the handshake checked it
    /// against the snapshot of its day; a reload may since have revoked it, dropped its CA, or
    /// turned client certificates off.
    fn trusted_under(&self, state: &State) -> bool {
        let Some(peer) = &self.peer else { return true };
        if state.generation == self.verified_under {
            return true;
        }
        let (Some(verifier), Some((leaf, rest))) = (&state.verifier, peer.chain.split_first())
        else {
            return false;
        };
        verifier
            .verify_client_cert(leaf, rest, UnixTime::now())
            .is_ok()
    }

    /// Whether the connection may still be served under the live snapshot; marks it revoked
    /// (and wakes its task to close) when not.
    pub fn still_trusted(&self, shared: &Shared) -> bool {
        if self.revoked.load(Ordering::Relaxed) {
            return false;
        }
        if self.caller_view(&shared.state.load()).trusted {
            return true;
        }
        self.revoke();
        false
    }

    fn revoke(&self) {
        if !self.revoked.swap(true, Ordering::Relaxed) {
            tracing::info!(peer = %self.remote, "closing connection: its client certificate is no longer trusted");
        }
        self.close.notify_one();
    }

    /// Whether a reload revoked the connection's certificate.
    pub fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::Relaxed)
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

    async fn handle(self, req: Request<Incoming>) -> Result<Response<TrackedBody>, Revoked> {
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
            upstream: None,
            status: 0,
            upstream_status: None,
            decision: "allow",
            upstream_aborted: false,
            access_log: state.config.logging.access_log,
            metrics: self.shared.metrics.clone(),
            activity: self.conn.activity.clone(),
            finished: false,
        };
        // A reload revoked the certificate this connection was opened with: no further
        // response (HTTP/1.1 closes; the connection task closes HTTP/2 too). Logged as nginx
        // logs a connection closed without a response.
        let view = self.conn.caller_view(&state);
        if !view.trusted || self.conn.is_revoked() {
            self.conn.revoke();
            log.decision = "certificate_revoked";
            log.status = 444;
            log.finish(0);
            return Err(Revoked);
        }
        let result = self.process(&state, &view, req, &mut log).await;
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
                if log.method == http::Method::HEAD {
                    // The headers a GET would get, and no body: hyper leaves a HEAD response's
                    // body out over HTTP/1.1, but over HTTP/2 it would send it as DATA, which
                    // clients reject as a protocol error.
                    let len = http_body::Body::size_hint(resp.body()).exact().unwrap_or(0);
                    resp.headers_mut()
                        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
                    *resp.body_mut() = crate::proxy::full_body(bytes::Bytes::new());
                }
                resp
            }
        };
        log.status = resp.status().as_u16();
        if let Ok(mut v) = HeaderValue::from_str(&log.request_id) {
            // Unique to this response: over HTTP/2 it goes as a literal that never enters the
            // connection's header table (HPACK "never indexed"), so it does not push out the
            // headers that repeat. HTTP/1 ignores the flag.
            v.set_sensitive(true);
            resp.headers_mut().insert(forward.request_id.clone(), v);
        }
        Ok(resp.map(|body| TrackedBody::new(body, log)))
    }

    async fn process(
        &self,
        state: &State,
        view: &CallerView,
        mut req: Request<Incoming>,
        log: &mut RequestLog,
    ) -> Result<Response<crate::proxy::ResponseBody>, GatewayError> {
        let config = &state.config;

        // 2. Framing and size checks hyper leaves to us, then the headers a client may not
        //    send: forged identity, forwarding headers, `_` twins. Everything after this
        //    (credentials, conditions, the upstream) sees the cleaned headers.
        check_framing(&req)?;
        if head_size(&req) > config.limits.max_header_bytes {
            return Err(GatewayError::HeadersTooLarge);
        }
        if let Some(len) = content_length(&req)
            && len > config.limits.max_body_bytes
        {
            return Err(GatewayError::BodyTooLarge);
        }
        headers::sanitize(req.headers_mut(), &config.forward, &config.api_keys.header).map_err(
            |_| GatewayError::BadRequest {
                reason: "header name with underscore",
                close: false,
            },
        )?;
        let host = request_host(&req)?;

        // 3. One canonical path for matching and forwarding; routes see it as Tomcat and
        //    Spring would resolve its `;` parameters.
        let path = normalize_path(req.uri().path()).map_err(GatewayError::BadPath)?;
        if config.limits.path_parameters == PathParameters::Reject
            && (path.contains(';') || path.contains("%3B"))
        {
            return Err(GatewayError::BadPath(PathError::Semicolon));
        }
        log.path.clone_from(&path);
        // Login, logout and the JWKS are answered here and never reach an upstream.
        if let Some(answer) = self.token_endpoint(state, &req, &path, log).await {
            return answer;
        }
        let match_path = match_form(&path);
        // The route the request is for, known before any credential is checked, so that a
        // refused credential or the auth_failures guard is counted and logged against it.
        let target = state.policy.route(
            req.method(),
            host.as_ref().map(|h| h.name.as_str()),
            &match_path,
        );
        log.route = target.map(|r| r.name.clone());

        // 4. Credentials. The certificate's part is cached per connection; every other
        //    presented credential must verify, or the request is refused (401), and failures
        //    spend the client's auth_failures budget (429 once spent).
        log.identity.clone_from(&view.identity);
        log.roles = view.roles.clone();
        let presented =
            match auth::presented(req.headers(), &config.api_keys.header).and_then(|mut p| {
                match state.auth.totp_header() {
                    Some(h) => p.read_otp(req.headers(), h).map(|()| p),
                    None => Ok(p),
                }
            }) {
                Ok(p) => p,
                Err(failure) => {
                    if let Err(wait) = self.reserve_attempt() {
                        return Err(self.guard_refused(wait, log));
                    }
                    return Err(self.auth_failed(failure, log));
                }
            };
        let mut claims = None;
        let per_request: Option<(Caller, Vec<(HeaderName, HeaderValue)>)> = if presented.any() {
            let Authenticated {
                caller, claims: c, ..
            } = self.authenticate(state, presented, log).await?;
            claims = c;
            let cert = self.conn.cert_header(config.forward.client_cert_format);
            let headers = headers::identity_headers(&caller, cert, &config.forward);
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
            host: host.as_ref().map(|h| h.name.as_str()),
            path: &match_path,
            source_ip: self.conn.remote.ip(),
            headers: req.headers(),
            cert: self.conn.cert(),
            claims: claims.as_ref(),
        };
        let decision = state.policy.decide_on(target, &facts, caller);
        if let Err(denial) = decision.verdict {
            log.decision = denial.as_str();
            let route = log.route.as_deref().unwrap_or("none").to_owned();
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
            let key = match &per_request {
                Some((c, _)) => key_for(spec.key, c, self.conn.remote.ip()),
                None => view.keys.get(spec.key),
            };
            match state.ratelimits.check(&route.name, spec, &key).await {
                Ok(o) if o.allowed => rate_info = Some(o),
                Ok(o) => {
                    log.decision = "rate_limited";
                    self.shared
                        .metrics
                        .ratelimited
                        .get_or_create(&RouteLabel {
                            route: route.name.to_string(),
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
        let uri =
            upstream
                .uri(forwarded_path, req.uri())
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
        // Room for what is added below, so the map grows once rather than entry by entry.
        h.reserve(identity_headers.len() + 5);
        headers::strip_hop_by_hop(h, websocket);
        if !config.forward.credentials {
            h.remove(header::AUTHORIZATION);
            h.remove(&config.api_keys.header);
        }
        // A one-time code is never forwarded: it is of no use upstream and still live.
        if let Some(otp) = state.auth.totp_header() {
            h.remove(otp);
        }
        // The upstream gets the host the policy matched, in one canonical spelling. A Host
        // header already spelled that way (the usual case) is kept as it is.
        let canonical = match (&host, h.get(header::HOST)) {
            (Some(host), Some(v)) => host.is_spelled(v.as_bytes()),
            _ => false,
        };
        if !canonical {
            h.remove(header::HOST);
            if let Some(host) = &host
                && let Ok(v) = HeaderValue::from_str(&host.header_value())
            {
                h.insert(header::HOST, v);
            }
        }
        for (name, value) in identity_headers {
            h.insert(name.clone(), value.clone());
        }
        if config.forward.x_forwarded {
            headers::set_forwarded(
                h,
                self.conn.forwarded_for(),
                host.as_ref().map(|h| h.name.as_str()),
            );
        }
        if let Ok(v) = HeaderValue::from_str(&log.request_id) {
            h.insert(config.forward.request_id.clone(), v);
        }
        parts.uri = uri;
        let upstream_req =
            Request::from_parts(parts, LimitedBody::new(body, config.limits.max_body_bytes));

        log.upstream = Some(upstream.name.clone());
        match upstream.send(upstream_req, client_upgrade.is_some()).await {
            Ok((mut resp, upstream_upgrade)) => {
                log.upstream_status = Some(resp.status().as_u16());
                if let (Some(client), Some(upstream)) = (client_upgrade, upstream_upgrade) {
                    self.spawn_tunnel(client, upstream, config.limits.websocket_idle_timeout);
                }
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
                            upstream: upstream.name.to_string(),
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

    /// Runs a WebSocket tunnel that keeps this connection's slot, idles out, drains, and
    /// closes when a reload stops trusting the caller's certificate.
    fn spawn_tunnel(
        &self,
        client: hyper::upgrade::OnUpgrade,
        upstream: hyper::upgrade::OnUpgrade,
        idle: std::time::Duration,
    ) {
        let conn = self.conn.clone();
        let shared = self.shared.clone();
        let guards = crate::proxy::tunnel::TunnelGuards {
            idle,
            stop: conn.stop.clone(),
            metrics: shared.metrics.clone(),
            keep: conn.clone(),
            still_allowed: move || conn.still_trusted(&shared),
        };
        tokio::spawn(crate::proxy::tunnel::run(client, upstream, guards));
    }
}

impl GatewayService {
    /// Reserves one failed authentication for this client before a credential is verified.
    fn reserve_attempt(&self) -> Result<(), std::time::Duration> {
        self.shared
            .auth_guard
            .load()
            .reserve(self.conn.remote.ip(), Instant::now())
    }

    /// Verifies every presented credential, under the client's failure budget: one failure is
    /// reserved before anything is verified and given back only when everything verified, so
    /// concurrent guesses cannot outrun the budget.
    async fn authenticate(
        &self,
        state: &State,
        presented: auth::Presented,
        log: &mut RequestLog,
    ) -> Result<Authenticated, GatewayError> {
        let ip = self.conn.remote.ip();
        if let Err(wait) = self.reserve_attempt() {
            return Err(self.guard_refused(wait, log));
        }
        let cert = self.conn.cert();
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
        let mut token_claims = None;
        let mut introspected = None;
        if let Some(token) = &presented.bearer {
            // A token naming one of this gateway's keys is its own login token; any other
            // bearer token is the identity provider's.
            match state.auth.tokens().filter(|t| t.is_ours(token)) {
                Some(issuer) => {
                    let c = issuer
                        .verify(token, cert)
                        .map_err(|f| self.auth_failed(f, log))?;
                    if self.token_revoked(state, &c.jti, log).await? {
                        return Err(self.auth_failed(
                            AuthFailure::BadToken("revoked (logged out)".to_owned()),
                            log,
                        ));
                    }
                    token_claims = Some(c);
                }
                None => match state.auth.oauth() {
                    // Not a JWT the gateway can check itself: the identity provider decides.
                    Some(idp) if !state.auth.jwt_recognizes(token) => {
                        let answer = idp.introspect(token).await;
                        self.shared.metrics.introspection(match &answer {
                            Ok(a) if a.active => "active",
                            Ok(_) => "inactive",
                            Err(_) => "unavailable",
                        });
                        match answer {
                            Ok(answer) if answer.active => introspected = Some(answer),
                            Ok(_) => {
                                return Err(self.auth_failed(
                                    AuthFailure::BadToken("inactive (introspection)".to_owned()),
                                    log,
                                ));
                            }
                            Err(e) => {
                                // Not the caller's failure: the reserved attempt goes back.
                                self.shared.auth_guard.load().refund(ip, Instant::now());
                                tracing::warn!(request_id = %log.request_id, error = %e.0, "token introspection failed");
                                log.decision = "idp_unavailable";
                                return Err(GatewayError::IdpUnavailable);
                            }
                        }
                    }
                    _ => match state.auth.verify_jwt(token, cert) {
                        Ok(c) => claims = Some(c),
                        Err(f) => return Err(self.auth_failed(f, log)),
                    },
                },
            }
        }
        if let Some((user, password)) = presented.basic {
            if !state.auth.has_basic() {
                return Err(self.auth_failed(AuthFailure::NotConfigured("basic"), log));
            }
            match state.auth.verify_basic_async(ip, user, password).await {
                Ok(i) => verified.basic = Some(i),
                Err(f) => return Err(self.auth_failed(f, log)),
            }
        }
        verified.jwt = claims.as_ref();
        verified.token = token_claims.as_ref();
        verified.oauth = introspected.as_deref();
        let mut caller = state.policy.identify(&verified);
        if let Some(code) = &presented.otp {
            self.verify_otp(state, &mut caller, code, log).await?;
        }
        // Everything verified: the reserved failure goes back.
        self.shared.auth_guard.load().refund(ip, Instant::now());
        Ok(Authenticated {
            caller,
            claims,
            token: token_claims,
        })
    }

    /// Whether a login token was logged out: in this process, or (with a Redis store) on
    /// any replica.
    async fn token_revoked(
        &self,
        state: &State,
        jti: &str,
        log: &mut RequestLog,
    ) -> Result<bool, GatewayError> {
        if self.shared.revoked_tokens.contains(jti) {
            return Ok(true);
        }
        match state.ratelimits.marked_shared("revoked", jti).await {
            None => Ok(false),
            Some(Ok(revoked)) => Ok(revoked),
            Some(Err(_)) => {
                self.shared.metrics.ratelimit_store_errors.inc();
                if state.ratelimits.on_store_error() == OnStoreError::Deny {
                    log.decision = "rate_limit_store_unavailable";
                    return Err(GatewayError::RateLimitStoreUnavailable);
                }
                Ok(false)
            }
        }
    }

    /// The gateway's own endpoints under `tokens:`; `None` when the path is none of them.
    async fn token_endpoint(
        &self,
        state: &State,
        req: &Request<Incoming>,
        path: &str,
        log: &mut RequestLog,
    ) -> Option<Result<Response<crate::proxy::ResponseBody>, GatewayError>> {
        let issuer = state.auth.tokens()?;
        let s = issuer.settings();
        let json = |status: http::StatusCode, body: bytes::Bytes| {
            let mut resp = Response::new(crate::proxy::full_body(body));
            *resp.status_mut() = status;
            let h = resp.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp
        };
        if path == s.jwks_path {
            log.decision = "jwks";
            if req.method() != http::Method::GET && req.method() != http::Method::HEAD {
                return Some(Err(GatewayError::MethodNotAllowed("GET, HEAD")));
            }
            let jwks = issuer.jwks();
            let len = jwks.len();
            // HEAD: the headers a GET gets and no body (over HTTP/2 a body would go out as DATA).
            let body = if req.method() == http::Method::HEAD {
                bytes::Bytes::new()
            } else {
                jwks
            };
            let mut resp = json(http::StatusCode::OK, body);
            let h = resp.headers_mut();
            h.insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("max-age=60"),
            );
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            return Some(Ok(resp));
        }
        let login = path == s.login_path;
        if !login && path != s.logout_path {
            return None;
        }
        log.decision = if login { "login" } else { "logout" };
        if req.method() != http::Method::POST {
            return Some(Err(GatewayError::MethodNotAllowed("POST")));
        }
        let presented = match auth::presented(req.headers(), &state.config.api_keys.header)
            .and_then(|mut p| match state.auth.totp_header() {
                Some(h) => p.read_otp(req.headers(), h).map(|()| p),
                None => Ok(p),
            }) {
            Ok(p) => p,
            Err(failure) => {
                if let Err(wait) = self.reserve_attempt() {
                    return Some(Err(self.guard_refused(wait, log)));
                }
                return Some(Err(self.auth_failed(failure, log)));
            }
        };
        let (caller, token) = if presented.any() {
            match self.authenticate(state, presented, log).await {
                Ok(a) => (a.caller, a.token),
                Err(e) => return Some(Err(e)),
            }
        } else {
            (self.conn.caller_view(state).caller.clone(), None)
        };
        log.identity = caller.identity.as_deref().map(Arc::from);
        log.roles = Arc::from(caller.roles.join(","));
        if !login {
            let Some(t) = token else {
                return Some(Err(GatewayError::LogoutWithoutToken));
            };
            if !self.shared.revoked_tokens.revoke(&t.jti, t.exp) {
                tracing::error!(request_id = %log.request_id, "logout refused: the in-process revocation table is full");
                return Some(Err(GatewayError::RevocationsFull));
            }
            let ttl = crate::auth::tokens::remaining(t.exp);
            if let Some(Err(_)) = state.ratelimits.mark_shared("revoked", &t.jti, ttl).await {
                self.shared.metrics.ratelimit_store_errors.inc();
                // This replica refuses the token from now on; others learn of it only through
                // the store, so the caller hears that the logout is not complete.
                log.decision = "rate_limit_store_unavailable";
                return Some(Err(GatewayError::RateLimitStoreUnavailable));
            }
            self.shared.metrics.login_token("revoked");
            tracing::info!(request_id = %log.request_id, identity = ?caller.identity, "logged out");
            let mut resp = Response::new(crate::proxy::full_body(bytes::Bytes::new()));
            *resp.status_mut() = http::StatusCode::NO_CONTENT;
            return Some(Ok(resp));
        }
        if token.is_some() {
            return Some(Err(GatewayError::LoginWithToken));
        }
        let Some(identity) = caller.identity.as_deref() else {
            return Some(Err(GatewayError::Denied(
                crate::policy::Denial::Unauthenticated,
            )));
        };
        if !s.login_factors.iter().all(|f| caller.factors.contains(f)) {
            self.count_denial(log, "login_factors");
            return Some(Err(GatewayError::LoginFactorsMissing));
        }
        let factors: Vec<&str> = caller.factors.iter().map(|f| f.as_str()).collect();
        let (token, expires_in) = match issuer.issue(
            identity,
            &caller.principals,
            &factors,
            self.conn.cert(),
        ) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(request_id = %log.request_id, error = %e, "login token not issued");
                return Some(Err(GatewayError::TokenNotIssued));
            }
        };
        self.shared.metrics.login_token("issued");
        tracing::info!(request_id = %log.request_id, identity = %identity, factors = %factors.join(","), "logged in");
        let body = serde_json::json!({
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": expires_in,
        });
        let mut resp = json(http::StatusCode::OK, bytes::Bytes::from(body.to_string()));
        // RFC 6749 §5.1: token responses are never cached.
        let h = resp.headers_mut();
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        Some(Ok(resp))
    }

    /// The `totp` factor: the code must be the current one of a principal the other
    /// credentials identified, and newer than the last code that principal used, here and
    /// (with a Redis store) on every replica.
    async fn verify_otp(
        &self,
        state: &State,
        caller: &mut Caller,
        code: &str,
        log: &mut RequestLog,
    ) -> Result<(), GatewayError> {
        let now = crate::auth::totp::now_secs();
        let instant = Instant::now();
        let wrong = &self.shared.wrong_totp;
        if state
            .auth
            .totp_principals(&caller.principals)
            .any(|p| wrong.locked(p, instant))
        {
            return Err(self.auth_failed(AuthFailure::CodesLocked, log));
        }
        let (principal, step) = match state.auth.verify_totp(&caller.principals, code, now) {
            Ok(found) => found,
            Err(f) => {
                if f == AuthFailure::BadCode {
                    for p in state.auth.totp_principals(&caller.principals) {
                        wrong.wrong(p, instant);
                    }
                }
                return Err(self.auth_failed(f, log));
            }
        };
        wrong.right(principal);
        let t = &state.config.totp;
        // A code is accepted until `skew` steps after its own; the step it matched lies at
        // most `skew` steps ahead of now, so its record must outlive 2 x skew + 1 steps.
        let live_for = std::time::Duration::from_secs(t.period * (2 * u64::from(t.skew) + 2));
        let oldest_live = (now / t.period.max(1)).saturating_sub(u64::from(t.skew));
        if !self.shared.used_totp.advance(principal, step, oldest_live) {
            return Err(self.auth_failed(AuthFailure::ReplayedCode, log));
        }
        match state
            .ratelimits
            .advance_shared("totp", principal, step, live_for)
            .await
        {
            None | Some(Ok(true)) => {}
            Some(Ok(false)) => return Err(self.auth_failed(AuthFailure::ReplayedCode, log)),
            Some(Err(_)) => {
                self.shared.metrics.ratelimit_store_errors.inc();
                if state.ratelimits.on_store_error() == OnStoreError::Deny {
                    log.decision = "rate_limit_store_unavailable";
                    return Err(GatewayError::RateLimitStoreUnavailable);
                }
                // on_store_error: allow: this replica's own record still refuses replays here.
            }
        }
        caller.factors.push(crate::policy::Factor::Totp);
        caller.factors.sort_unstable();
        Ok(())
    }

    /// A refused credential: logged with its reason; the failure reserved for it stays spent.
    fn auth_failed(&self, failure: AuthFailure, log: &mut RequestLog) -> GatewayError {
        tracing::info!(request_id = %log.request_id, client = %self.conn.remote, reason = %failure, "credential refused");
        self.count_denial(log, "bad_credential");
        GatewayError::Denied(crate::policy::Denial::Unauthenticated)
    }

    /// The auth_failures guard refused to verify anything more from this client: a 429 of its
    /// own, counted and logged as `auth_failures` against the route the request was for.
    fn guard_refused(&self, wait: std::time::Duration, log: &mut RequestLog) -> GatewayError {
        tracing::info!(request_id = %log.request_id, client = %self.conn.remote, "too many failed authentications from this client");
        self.count_denial(log, "auth_failures");
        GatewayError::TooManyAuthFailures(wait)
    }

    fn count_denial(&self, log: &mut RequestLog, reason: &'static str) {
        self.shared
            .metrics
            .authz_denied
            .get_or_create(&RouteReason {
                route: log.route.as_deref().unwrap_or("none").to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
        log.decision = reason;
    }
}

/// What a request's presented credentials proved.
struct Authenticated {
    caller: Caller,
    /// Claims of an identity provider's JWT.
    claims: Option<serde_json::Map<String, serde_json::Value>>,
    /// Claims of this gateway's own login token.
    token: Option<crate::auth::tokens::TokenClaims>,
}

/// The service's error: the connection's certificate is no longer trusted, so the request
/// gets no response and hyper closes the connection (HTTP/1.1) or resets the stream (HTTP/2,
/// whose connection the connection task then closes).
#[derive(Debug)]
pub struct Revoked;

impl std::fmt::Display for Revoked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the client certificate is no longer trusted")
    }
}

impl std::error::Error for Revoked {}

impl hyper::service::Service<Request<Incoming>> for GatewayService {
    type Response = Response<TrackedBody>;
    type Error = Revoked;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Revoked>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let this = self.clone();
        Box::pin(this.handle(req))
    }
}

/// The caller's request id when it is 1-128 characters of `A-Za-z0-9._:-`, else a new one.
pub(crate) fn request_id(given: Option<&HeaderValue>) -> String {
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
    // 128 random bits as 32 hex digits (written by hand: `format!` costs ten times more).
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = String::with_capacity(32);
    for word in [fastrand::u64(..), fastrand::u64(..)] {
        for shift in (0..16).rev() {
            id.push(char::from(HEX[(word >> (shift * 4)) as usize & 0xf]));
        }
    }
    id
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

/// The host a request is for, as the policy matches it and the upstream receives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    /// Lower-case, without a trailing dot; an IPv6 literal keeps its brackets.
    pub name: String,
    /// The port, when one was given.
    pub port: Option<u16>,
}

impl Host {
    /// `name` or `name:port`.
    pub fn header_value(&self) -> String {
        match self.port {
            Some(p) => format!("{}:{p}", self.name),
            None => self.name.clone(),
        }
    }

    /// Whether `text` is exactly [`Host::header_value`], checked without building it.
    pub fn is_spelled(&self, text: &[u8]) -> bool {
        let Some(rest) = text.strip_prefix(self.name.as_bytes()) else {
            return false;
        };
        match (self.port, rest) {
            (None, []) => true,
            (Some(p), [b':', digits @ ..]) => {
                digits.first().is_some_and(|d| *d != b'0')
                    && std::str::from_utf8(digits)
                        .ok()
                        .and_then(|d| d.parse().ok())
                        == Some(p)
            }
            _ => false,
        }
    }
}

/// Parses a Host header or `:authority`: a DNS name, an IPv4 address or a bracketed IPv6
/// literal, then an optional port. Refused: userinfo (`a@b`), spaces, anything else a
/// registered name cannot hold, and an empty name.
pub fn parse_host(raw: &str) -> Option<Host> {
    let (name, port) = if let Some(rest) = raw.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        inside.parse::<std::net::Ipv6Addr>().ok()?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        (format!("[{}]", inside.to_ascii_lowercase()), port)
    } else {
        let (name, port) = match raw.split_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (raw, None),
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        // Labels of letters, digits, `-` and `_`, separated by single dots: one pass.
        let mut previous = b'.';
        let valid = !name.is_empty()
            && name.bytes().all(|b| {
                let ok = b.is_ascii_alphanumeric()
                    || matches!(b, b'-' | b'_')
                    || (b == b'.' && previous != b'.');
                previous = b;
                ok
            });
        if !valid {
            return None;
        }
        (name.to_ascii_lowercase(), port)
    };
    let port = match port {
        None | Some("") => None,
        Some(p) if p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
            Some(p.parse::<u16>().ok()?)
        }
        Some(_) => return None,
    };
    Some(Host { name, port })
}

/// The request's host: `Host`, or `:authority` (HTTP/2, or an absolute-form HTTP/1.1 target).
/// Refused with 400: more than one Host, an invalid one, one that disagrees with the
/// authority, and none at all on HTTP/1.1 (RFC 9112 §3.2).
fn request_host<B>(req: &Request<B>) -> Result<Option<Host>, GatewayError> {
    let bad = |reason| GatewayError::BadRequest {
        reason,
        close: false,
    };
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let from_header = match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => return Err(bad("more than one host header")),
        (Some(v), None) => {
            let text = v.to_str().map_err(|_| bad("invalid host"))?;
            Some(parse_host(text).ok_or(bad("invalid host"))?)
        }
        (None, _) => None,
    };
    let from_authority = match req.uri().authority() {
        Some(a) => Some(parse_host(a.as_str()).ok_or(bad("invalid host"))?),
        None => None,
    };
    match (from_header, from_authority) {
        (Some(h), Some(a)) if h != a => Err(bad("host does not match the request authority")),
        (Some(h), _) | (None, Some(h)) => Ok(Some(h)),
        (None, None) if req.version() == http::Version::HTTP_11 => Err(bad("missing host")),
        (None, None) => Ok(None),
    }
}

/// Removes a prefix at a segment boundary; what remains always starts with `/`.
fn strip_prefix<'a>(path: &'a str, prefix: &str) -> &'a str {
    match path.strip_prefix(prefix) {
        Some("") => "/",
        Some(rest) if rest.starts_with('/') => rest,
        _ => path,
    }
}

/// Whether the gateway is ready to serve, or why not, for `/readyz`: draining, or (with
/// `tls.crl_expired: reject`) a CRL past its nextUpdate, whose clients are being refused.
pub fn readiness(shared: &Shared) -> Result<(), String> {
    if !shared.ready.load(Ordering::Relaxed) {
        return Err("draining".to_owned());
    }
    let state = shared.state.load();
    if state.config.tls.crl_expired == crate::config::CrlExpired::Reject {
        let expired: Vec<&str> = state
            .expiries
            .crls
            .iter()
            .filter(|(_, next)| crate::tls::seconds_until(*next) <= 0)
            .map(|(file, _)| file.as_str())
            .collect();
        if !expired.is_empty() {
            return Err(format!(
                "CRL past its nextUpdate, its clients are refused: {}",
                expired.join(", ")
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_parse_strictly_and_canonically() {
        let h = |s: &str| parse_host(s).map(|h| h.header_value());
        assert_eq!(h("Admin.Internal."), Some("admin.internal".into()));
        assert_eq!(h("admin.internal:8443"), Some("admin.internal:8443".into()));
        assert_eq!(h("[::1]:8443"), Some("[::1]:8443".into()));
        assert_eq!(h("127.0.0.1"), Some("127.0.0.1".into()));
        let spelled = |raw: &str, text: &str| parse_host(raw).unwrap().is_spelled(text.as_bytes());
        assert!(spelled("localhost:8443", "localhost:8443"));
        assert!(spelled("localhost", "localhost"));
        assert!(
            !spelled("Localhost:8443", "Localhost:8443"),
            "upper case is rewritten"
        );
        assert!(
            !spelled("localhost.", "localhost."),
            "a trailing dot is rewritten"
        );
        assert!(!spelled("localhost:08443", "localhost:08443"));
        assert!(!spelled("localhost:8443", "localhost"));
        for bad in [
            "admin.internal@x",
            "x y",
            "",
            ".",
            "a..b",
            ".a",
            "..",
            "a:b",
            "a:99999",
            "[zz]",
            "[::1]x",
            "a/b",
        ] {
            assert_eq!(parse_host(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn request_ids() {
        let ok = HeaderValue::from_static("abc-123_x.y:z");
        assert_eq!(request_id(Some(&ok)), "abc-123_x.y:z");
        let bad = HeaderValue::from_static("has space");
        assert_ne!(request_id(Some(&bad)), "has space");
        let made = request_id(None);
        assert_eq!(made.len(), 32);
        assert!(
            made.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')),
            "{made}"
        );
        assert_ne!(made, request_id(None));
        // Every digit position takes more than one value (no stuck nibble from the shifts).
        let ids: Vec<String> = (0..64).map(|_| request_id(None)).collect();
        for i in 0..32 {
            let first = ids[0].as_bytes()[i];
            assert!(
                ids.iter().any(|id| id.as_bytes()[i] != first),
                "position {i}"
            );
        }
    }

    #[test]
    fn prefixes_strip_at_segment_boundaries() {
        assert_eq!(strip_prefix("/admin/users", "/admin"), "/users");
        assert_eq!(strip_prefix("/admin", "/admin"), "/");
        assert_eq!(strip_prefix("/administrator", "/admin"), "/administrator");
    }
}
