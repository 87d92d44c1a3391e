//! Prometheus metrics, served as text on the admin listener's `/metrics`.
//!
//! Families are created once per process and shared by reference; label values are the
//! bounded sets of route names, status codes, upstream names and reasons, never anything a
//! client chooses (no paths, no identities).

use std::sync::atomic::AtomicI64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// `{route, status}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteStatus {
    /// Route name, or `none`; shared with the route, so a lookup allocates nothing.
    pub route: std::sync::Arc<str>,
    /// HTTP status code.
    pub status: u32,
}

/// `{route, reason}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteReason {
    /// Route name, or `none`.
    pub route: String,
    /// Why the request was denied.
    pub reason: String,
}

/// `{route}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    /// Route name.
    pub route: String,
}

/// `{reason}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Failure reason.
    pub reason: String,
}

/// `{upstream, kind}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamKind {
    /// Upstream name.
    pub upstream: String,
    /// connect, timeout or reset.
    pub kind: String,
}

/// `{result}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// success or failure.
    pub result: String,
}

/// `{file}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FileLabel {
    /// The file's path as configured.
    pub file: String,
}

/// Every metric the gateway exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// `portcullis_requests_total{route,status}`.
    pub requests: Family<RouteStatus, Counter>,
    /// `portcullis_request_duration_seconds`.
    pub request_duration: Histogram,
    /// `portcullis_tls_handshake_failures_total{reason}`.
    pub handshake_failures: Family<ReasonLabel, Counter>,
    /// `portcullis_authz_denied_total{route,reason}`.
    pub authz_denied: Family<RouteReason, Counter>,
    /// `portcullis_ratelimited_total{route}`.
    pub ratelimited: Family<RouteLabel, Counter>,
    /// `portcullis_ratelimit_store_errors_total`.
    pub ratelimit_store_errors: Counter,
    /// `portcullis_upstream_errors_total{upstream,kind}`.
    pub upstream_errors: Family<UpstreamKind, Counter>,
    /// `portcullis_open_connections` (WebSocket tunnels included).
    pub open_connections: Gauge,
    /// `portcullis_connections_closed_total{reason}`: connections the gateway closed on a
    /// timer or a policy change (header_timeout, idle_timeout, send_timeout,
    /// websocket_idle_timeout, revoked).
    pub connections_closed: Family<ReasonLabel, Counter>,
    /// `portcullis_config_reloads_total{result}`.
    pub config_reloads: Family<ResultLabel, Counter>,
    /// `portcullis_certificate_expiry_seconds{file}`.
    pub certificate_expiry: Family<FileLabel, Gauge<i64, AtomicI64>>,
    /// `portcullis_crl_next_update_seconds{file}`.
    pub crl_next_update: Family<FileLabel, Gauge<i64, AtomicI64>>,
    /// `portcullis_login_tokens_total{event}`: tokens issued and revoked (logout).
    pub login_tokens: Family<EventLabel, Counter>,
    /// `portcullis_introspections_total{result}`: bearer tokens decided by introspection
    /// (cache hits included): active, inactive, unavailable.
    pub introspections: Family<ResultLabel, Counter>,
}

/// `{event}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabel {
    /// What happened.
    pub event: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Counts a connection the gateway closed, by why.
    pub fn connection_closed(&self, reason: &'static str) {
        self.connections_closed
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Registers every family.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("portcullis");
        let requests = Family::<RouteStatus, Counter>::default();
        let request_duration = Histogram::new([
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]);
        let handshake_failures = Family::<ReasonLabel, Counter>::default();
        let authz_denied = Family::<RouteReason, Counter>::default();
        let ratelimited = Family::<RouteLabel, Counter>::default();
        let upstream_errors = Family::<UpstreamKind, Counter>::default();
        let ratelimit_store_errors = Counter::default();
        let open_connections = Gauge::default();
        let connections_closed = Family::<ReasonLabel, Counter>::default();
        let config_reloads = Family::<ResultLabel, Counter>::default();
        let certificate_expiry = Family::<FileLabel, Gauge<i64, AtomicI64>>::default();
        let crl_next_update = Family::<FileLabel, Gauge<i64, AtomicI64>>::default();
        let login_tokens = Family::<EventLabel, Counter>::default();
        let introspections = Family::<ResultLabel, Counter>::default();
        // Every label value known up front, at zero: a rate or an alert sees the first event.
        for event in ["issued", "revoked"] {
            let _ = login_tokens.get_or_create(&EventLabel {
                event: event.to_owned(),
            });
        }
        for result in ["active", "inactive", "unavailable"] {
            let _ = introspections.get_or_create(&ResultLabel {
                result: result.to_owned(),
            });
        }
        registry.register(
            "login_tokens",
            "Login tokens issued and revoked (logout), by event",
            login_tokens.clone(),
        );
        registry.register(
            "introspections",
            "Bearer tokens decided by OAuth introspection (cache hits included), by result",
            introspections.clone(),
        );
        registry.register(
            "requests",
            "Requests answered, by route and status",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request head to the end of the response body",
            request_duration.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "Failed TLS handshakes, by reason",
            handshake_failures.clone(),
        );
        registry.register(
            "connections_closed",
            "Client connections the gateway closed on a timeout or revocation, by reason",
            connections_closed.clone(),
        );
        registry.register(
            "authz_denied",
            "Requests denied by policy, by route and reason",
            authz_denied.clone(),
        );
        registry.register(
            "ratelimited",
            "Requests rejected by a rate limit, by route",
            ratelimited.clone(),
        );
        registry.register(
            "ratelimit_store_errors",
            "Rate-limit decisions the shared store could not make in time",
            ratelimit_store_errors.clone(),
        );
        registry.register(
            "upstream_errors",
            "Failed forwards, by upstream and kind",
            upstream_errors.clone(),
        );
        registry.register(
            "open_connections",
            "Client connections currently open",
            open_connections.clone(),
        );
        registry.register(
            "config_reloads",
            "Configuration reloads, by result",
            config_reloads.clone(),
        );
        registry.register(
            "certificate_expiry_seconds",
            "Seconds until the certificate in each configured file expires",
            certificate_expiry.clone(),
        );
        registry.register(
            "crl_next_update_seconds",
            "Seconds until each configured CRL's next update",
            crl_next_update.clone(),
        );
        Metrics {
            registry,
            requests,
            request_duration,
            handshake_failures,
            authz_denied,
            ratelimited,
            upstream_errors,
            ratelimit_store_errors,
            open_connections,
            connections_closed,
            config_reloads,
            certificate_expiry,
            crl_next_update,
            login_tokens,
            introspections,
        }
    }

    /// Counts a login token issued or revoked.
    pub fn login_token(&self, event: &'static str) {
        self.login_tokens
            .get_or_create(&EventLabel {
                event: event.to_owned(),
            })
            .inc();
    }

    /// Counts a bearer token decided by introspection.
    pub fn introspection(&self, result: &'static str) {
        self.introspections
            .get_or_create(&ResultLabel {
                result: result.to_owned(),
            })
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// Sets the certificate and CRL expiry gauges to the files of `e` only (a file the
    /// configuration no longer names loses its series), counted from now.
    pub fn set_expiries(&self, e: &crate::tls::Expiries) {
        self.certificate_expiry.clear();
        self.crl_next_update.clear();
        for (file, at) in &e.certificates {
            self.certificate_expiry
                .get_or_create(&FileLabel { file: file.clone() })
                .set(crate::tls::seconds_until(*at));
        }
        for (file, at) in &e.crls {
            self.crl_next_update
                .get_or_create(&FileLabel { file: file.clone() })
                .set(crate::tls::seconds_until(*at));
        }
    }
}
