//! The configuration: `gateway.yaml` read, checked and resolved into typed settings.
//!
//! `load` reads a file; `from_str` takes text plus the path it came from, so tests and tools
//! need no files. This module owns parsing and validation only. It opens no certificate files:
//! `tls` does, and reports problems against the positions kept in [`FileRef`].

mod error;
mod raw;
mod resolve;
pub mod units;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderName, Method, Uri};

pub(crate) use error::Problems;
pub use error::{ConfigError, ConfigErrors, Pos};

/// A fully resolved configuration. Cheap to share behind an `Arc`; never mutated.
#[derive(Debug)]
pub struct Config {
    /// The file this came from, as given.
    pub path: PathBuf,
    /// The mTLS listener address.
    pub listen: SocketAddr,
    /// TLS termination settings.
    pub tls: TlsSettings,
    /// The plaintext admin listener, when enabled.
    pub admin: Option<AdminSettings>,
    /// Upstreams, referenced by index from routes.
    pub upstreams: Vec<UpstreamSettings>,
    /// Who is who, in file order.
    pub principals: Vec<Principal>,
    /// Routes, in file order: the first match wins.
    pub routes: Vec<RouteSettings>,
    /// API key credentials.
    pub api_keys: ApiKeySettings,
    /// JWT bearer credentials, when configured.
    pub jwt: Option<JwtSettings>,
    /// HTTP Basic credentials.
    pub basic: BasicSettings,
    /// One-time codes (RFC 6238) for principals with a `totp:` secret.
    pub totp: TotpSettings,
    /// The gateway's own login tokens, when configured.
    pub tokens: Option<TokenSettings>,
    /// OAuth 2.0 token introspection (RFC 7662), when configured.
    pub oauth: Option<OauthSettings>,
    /// The brute-force guard on failed authentications.
    pub auth_failures: AuthFailureLimit,
    /// Where rate-limit state lives and what happens when it cannot be reached.
    pub rate_limits: RateLimitSettings,
    /// What is sent upstream about the caller.
    pub forward: ForwardSettings,
    /// Size limits, timeouts and the connection ceiling.
    pub limits: Limits,
    /// Log format and the access log switch.
    pub logging: LoggingSettings,
    /// Policy test cases, run by `portcullis test` and `check`.
    pub tests: Vec<TestCase>,
    /// Valid but probably unintended settings, each with file:line:col and key.
    pub warnings: Vec<String>,
}

/// A file named in the configuration, with where it was named (for error messages).
#[derive(Clone, Debug)]
pub struct FileRef {
    /// Resolved against the configuration file's folder.
    pub path: PathBuf,
    /// Position of the value in the configuration file.
    pub pos: Pos,
    /// Key path, e.g. `tls.cert`.
    pub key: String,
}

/// `tls:` settings.
#[derive(Clone, Debug)]
pub struct TlsSettings {
    /// Server certificate chain (PEM).
    pub cert: FileRef,
    /// Server private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: FileRef,
    /// Trust bundle for client certificates; required unless `client_auth: off`.
    pub client_ca: Option<FileRef>,
    /// Whether a client certificate is required, optional or not asked for.
    pub client_auth: ClientAuth,
    /// Certificate revocation lists (PEM or DER).
    pub crls: Vec<FileRef>,
    /// What a CRL past its nextUpdate means.
    pub crl_expired: CrlExpired,
    /// Lowest TLS version accepted.
    pub min_version: TlsVersion,
    /// Cipher suites by IANA name, in the gateway's order of preference (which wins over the
    /// client's).
    pub cipher_suites: Vec<&'static str>,
}

/// `tls.crl_expired`: what a CRL past its nextUpdate means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrlExpired {
    /// Refuse the client certificates it covers (nginx and HAProxy through OpenSSL), and
    /// report not ready.
    Reject,
    /// Keep using it as it is.
    Ignore,
}

/// The cipher suites `tls.cipher_suites` may name, by IANA name, in the default order of
/// preference; the TLS 1.3 ones first.
pub const CIPHER_SUITES: [&str; 9] = [
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
];

/// Whether a suite of [`CIPHER_SUITES`] is a TLS 1.3 one (TLS 1.2 names carry the key exchange).
pub fn is_tls13_suite(name: &str) -> bool {
    !name.starts_with("TLS_ECDHE_")
}

/// `tls.client_auth`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// Handshakes without a valid client certificate fail.
    Required,
    /// A certificate is asked for and verified when sent; its absence is allowed.
    Optional,
    /// No certificate is asked for.
    Off,
}

/// `tls.min_version`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3.
    Tls12,
    /// TLS 1.3 only.
    Tls13,
}

/// `admin:` settings.
#[derive(Clone, Debug)]
pub struct AdminSettings {
    /// Plaintext listener for /healthz, /readyz and /metrics.
    pub listen: SocketAddr,
}

/// One entry of `upstreams:`.
#[derive(Clone, Debug)]
pub struct UpstreamSettings {
    /// The key under `upstreams:`.
    pub name: String,
    /// `http://host:port` (a path, if any, is prefixed to every forwarded path).
    pub url: Uri,
    /// Deadline for the TCP connect.
    pub connect_timeout: Duration,
    /// Deadline for the response head, counted from the end of the request body.
    pub timeout: Duration,
    /// A response body silent for this long is aborted.
    pub read_timeout: Duration,
    /// Pooled keep-alive connections unused this long are closed.
    pub pool_idle_timeout: Duration,
}

/// One entry of `principals:`.
#[derive(Clone, Debug)]
pub struct Principal {
    /// Its name, forwarded in `x-client-principals`.
    pub name: String,
    /// The credential that identifies it.
    pub matcher: PrincipalMatcher,
    /// Roles granted to callers matching this principal.
    pub roles: Vec<String>,
    /// The principal's one-time-code secret, when it has one (the `totp` factor).
    pub totp: Option<TotpSource>,
}

/// `oauth:`: opaque bearer tokens checked at the identity provider (RFC 7662).
#[derive(Clone, Debug)]
pub struct OauthSettings {
    /// The introspection endpoint: https, or http on a loopback address.
    pub introspection_url: Uri,
    /// The gateway's client id at the identity provider (client_secret_basic).
    pub client_id: String,
    /// Its secret.
    pub client_secret: Secret,
    /// Trust anchors for the identity provider, beside the system roots.
    pub ca: Option<FileRef>,
    /// Active results are kept at most this long (and never past their `exp`).
    pub cache: Duration,
    /// Deadline for one introspection call.
    pub timeout: Duration,
}

/// `tokens:`: the gateway as the issuer of short-lived login tokens.
#[derive(Clone, Debug)]
pub struct TokenSettings {
    /// PKCS#8 PEM key, P-256 (ES256) or Ed25519 (EdDSA).
    pub signing_key: FileRef,
    /// POST here with every `login_factors` credential: a token.
    pub login_path: String,
    /// Factors a login must have verified, all of them.
    pub login_factors: Vec<crate::policy::Factor>,
    /// POST here with a token: it is revoked until it expires.
    pub logout_path: String,
    /// GET here: the public keys, as a JWKS.
    pub jwks_path: String,
    /// Lifetime of a token.
    pub ttl: Duration,
    /// `aud` of the tokens.
    pub audience: String,
    /// `iss` of the tokens.
    pub issuer: String,
}

/// Where a principal's TOTP secret comes from.
#[derive(Clone, Debug)]
pub enum TotpSource {
    /// `secret:` (usually `${ENV}`), already base32-decoded.
    Inline(Secret),
    /// `secret_file:`, a file holding the base32 secret, read with the other files.
    File(FileRef),
}

/// `totp:` settings: how codes are sent and computed (the defaults are pyotp's and every
/// authenticator app's).
#[derive(Clone, Debug)]
pub struct TotpSettings {
    /// The request header carrying the current code; removed before forwarding.
    pub header: HeaderName,
    /// Digits per code (6 to 8).
    pub digits: u8,
    /// Seconds per step.
    pub period: u64,
    /// Steps accepted either side of now.
    pub skew: u8,
}

/// What a principal is recognised by: exactly one credential kind.
#[derive(Clone, Debug)]
pub enum PrincipalMatcher {
    /// A verified client certificate's fields.
    Cert(Box<CertMatcher>),
    /// An API key, held only as its SHA-256.
    ApiKey {
        /// SHA-256 of the key.
        sha256: [u8; 32],
        /// Last valid day (UTC), inclusive.
        expires: Option<time::Date>,
    },
    /// A claim of a verified JWT.
    Jwt {
        /// The claim's name.
        claim: String,
        /// How its value is tested.
        test: ClaimTest,
    },
    /// An HTTP Basic user with an argon2id hash.
    Basic {
        /// The user name.
        user: String,
        /// PHC string `$argon2id$v=19$...`.
        argon2: String,
    },
    /// An active OAuth 2.0 token, as introspection describes it.
    Oauth {
        /// Glob on the token's `client_id`.
        client_id: Option<Glob>,
        /// Glob on the token's `sub`.
        sub: Option<Glob>,
        /// Scopes the token must all have.
        scopes: Vec<String>,
    },
}

/// How a JWT principal tests its claim.
#[derive(Clone, Debug)]
pub enum ClaimTest {
    /// The claim is this string, or an array containing it.
    Contains(String),
    /// The claim (a string, or any element of an array) matches this glob.
    Equals(Glob),
}

/// `api_keys:` settings.
#[derive(Clone, Debug)]
pub struct ApiKeySettings {
    /// The request header carrying the key.
    pub header: HeaderName,
}

/// `jwt:` settings.
#[derive(Clone, Debug)]
pub struct JwtSettings {
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Accepted `aud` values; empty means `aud` is not checked.
    pub audiences: Vec<String>,
    /// Where the verification keys come from.
    pub jwks: Option<JwksSource>,
    /// Extra trust anchors for an https JWKS URL (a private IdP).
    pub jwks_ca: Option<FileRef>,
    /// How often an https JWKS is fetched again.
    pub jwks_refresh: Duration,
    /// Accepted signature algorithms; never `none`.
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    /// Clock skew allowed for `exp` and `nbf`.
    pub leeway: Duration,
    /// Require RFC 8705 `cnf.x5t#S256` to match the client certificate.
    pub bind_to_certificate: bool,
    /// Shared secret for HS256/384/512.
    pub hmac_secret: Option<Secret>,
}

/// A JWKS file (re-read when it changes) or an https URL (fetched, cached, refreshed).
#[derive(Clone, Debug)]
pub enum JwksSource {
    /// A local JWKS file.
    File(FileRef),
    /// An https URL.
    Url(Uri),
}

/// A secret value: never printed, not even by `Debug`.
#[derive(Clone)]
pub struct Secret(pub Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// `basic:` settings.
#[derive(Clone, Debug)]
pub struct BasicSettings {
    /// The realm in `WWW-Authenticate: Basic realm=...`.
    pub realm: String,
}

/// `rate_limits.auth_failures`: failed authentications allowed per client IP.
#[derive(Clone, Copy, Debug)]
pub struct AuthFailureLimit {
    /// Failures replenished per `per`.
    pub rate: u32,
    /// The replenishment period.
    pub per: Duration,
    /// Failures allowed at once.
    pub burst: u32,
}

/// One entry of `tests:`.
#[derive(Clone, Debug)]
pub struct TestCase {
    /// Its name.
    pub name: String,
    /// Line of the entry, for failure messages.
    pub pos: Pos,
    /// The simulated request.
    pub request: TestRequest,
    /// The expected outcome.
    pub expect: Expectation,
    /// The route that must decide, when given.
    pub route: Option<String>,
}

/// A simulated request: its credentials are taken as verified.
#[derive(Clone, Debug)]
pub struct TestRequest {
    /// Method.
    pub method: Method,
    /// Path, normalized like a real request's.
    pub path: String,
    /// Host, when given.
    pub host: Option<String>,
    /// Certificate fields, when the caller presents a certificate.
    pub cert: Option<crate::identity::PeerCert>,
    /// The principal whose API key the caller presents.
    pub api_key_id: Option<String>,
    /// Claims of a verified JWT.
    pub jwt: Option<serde_json::Map<String, serde_json::Value>>,
    /// The Basic user the caller logs in as (password taken as right).
    pub basic_user: Option<String>,
    /// The caller also sends its principal's current one-time code.
    pub totp: bool,
    /// The caller presents a login token of this gateway with these claims.
    pub token: Option<crate::auth::tokens::TokenClaims>,
    /// The caller presents an OAuth token the identity provider calls active with these.
    pub oauth: Option<crate::auth::oauth::Introspection>,
    /// Source address (default 127.0.0.1).
    pub source_ip: std::net::IpAddr,
    /// Request headers.
    pub headers: http::HeaderMap,
}

/// `tests[].expect`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expectation {
    /// Forwarded.
    Allow,
    /// 401.
    Unauthenticated,
    /// 403.
    Forbidden,
    /// 404.
    NoRoute,
}

/// Globs on the fields of a verified client certificate; every given field must match.
#[derive(Clone, Debug, Default)]
pub struct CertMatcher {
    /// Any subject common name.
    pub cn: Option<Glob>,
    /// Any subject organization.
    pub o: Option<Glob>,
    /// Any subject organizational unit.
    pub ou: Option<Glob>,
    /// Any DNS subject alternative name (case-insensitive).
    pub san_dns: Option<Glob>,
    /// Any URI subject alternative name.
    pub san_uri: Option<Glob>,
    /// Any e-mail subject alternative name.
    pub san_email: Option<Glob>,
    /// SHA-256 of the certificate's DER.
    pub fingerprint_sha256: Option<[u8; 32]>,
}

/// A glob with `*` (any run of characters) and `?` (one character).
#[derive(Clone, Debug)]
pub struct Glob {
    pattern: String,
    matcher: wildmatch::WildMatch,
    case_insensitive: bool,
}

/// One entry of `routes:`.
#[derive(Clone, Debug)]
pub struct RouteSettings {
    /// Its name, used in logs, metrics and tests (shared, so a request names its route
    /// without an allocation).
    pub name: std::sync::Arc<str>,
    /// How requests are matched.
    pub matcher: RouteMatch,
    /// Index into [`Config::upstreams`].
    pub upstream: usize,
    /// Who may pass.
    pub allow: Allow,
    /// Removed from the front of the path before forwarding.
    pub strip_prefix: Option<String>,
    /// Whether `Upgrade: websocket` passes through.
    pub websocket: bool,
    /// The route's limit (its own `rate_limit`, else `rate_limits.default`), if any.
    pub rate_limit: Option<LimitSpec>,
}

/// A rate limit: `burst` requests at once, refilled at `rate` per `per`, per key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LimitSpec {
    /// What the budget is kept per.
    pub key: LimitKey,
    /// Requests replenished per `per`.
    pub rate: u32,
    /// The replenishment period.
    pub per: Duration,
    /// Requests allowed at once.
    pub burst: u32,
}

impl LimitSpec {
    /// Time for one request to be replenished.
    pub fn interval(&self) -> Duration {
        self.per / self.rate.max(1)
    }
}

/// `rate_limit.key`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LimitKey {
    /// The caller's identity (the client IP for anonymous callers).
    Identity,
    /// The caller's matched principals (the identity when none match).
    Principal,
    /// The client IP.
    Ip,
    /// One budget for the whole route.
    Route,
}

impl LimitKey {
    /// The configuration name.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKey::Identity => "identity",
            LimitKey::Principal => "principal",
            LimitKey::Ip => "ip",
            LimitKey::Route => "route",
        }
    }
}

/// `rate_limits:` store settings.
#[derive(Clone, Debug)]
pub struct RateLimitSettings {
    /// In-process, or shared through Redis.
    pub store: LimitStore,
    /// What to do when the Redis store cannot answer in time.
    pub on_store_error: OnStoreError,
    /// Prefix of every Redis key.
    pub key_prefix: String,
    /// Most keys per route kept in process (local store).
    pub max_keys: usize,
    /// Deadline for one Redis decision.
    pub store_timeout: Duration,
    /// How a `rediss://` store is verified, and the client certificate shown to it.
    pub redis_tls: RedisTls,
}

/// `rate_limits.redis_tls`, for a `rediss://` store. Without `ca`, the server's certificate
/// is verified against the system's roots; `cert` and `key` go together.
#[derive(Clone, Debug, Default)]
pub struct RedisTls {
    /// PEM bundle trusted to sign the Redis server's certificate.
    pub ca: Option<FileRef>,
    /// A client certificate (PEM) for Redis servers that ask for one (`tls-auth-clients`).
    pub cert: Option<FileRef>,
    /// Its private key (PEM).
    pub key: Option<FileRef>,
}

/// `rate_limits.store`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LimitStore {
    /// Per process (per replica).
    Local,
    /// A `redis://` URL shared by every replica.
    Redis(String),
}

/// `rate_limits.on_store_error`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnStoreError {
    /// Let requests through unlimited while the store is down.
    Allow,
    /// Answer 503 while the store is down.
    Deny,
}

/// `routes[].match`.
#[derive(Clone, Debug)]
pub struct RouteMatch {
    /// The normalized path must equal this.
    pub exact: Option<String>,
    /// The normalized path must be this or lie below it (segment-aware, no trailing `/`).
    pub prefix: Option<String>,
    /// The request host (without port) must match this glob.
    pub host: Option<Glob>,
    /// The method must be one of these; `None` means any.
    pub methods: Option<Vec<Method>>,
    /// `exact`/`prefix` compare without ASCII case (`limits.path_case: insensitive`).
    pub case_insensitive: bool,
}

/// `routes[].allow`.
#[derive(Clone, Debug)]
pub enum Allow {
    /// Everyone, even without any credential.
    Anyone,
    /// Any verified credential, even one that matches no principal.
    Authenticated,
    /// Roles, factors and conditions.
    Rules(AllowRules),
}

/// `allow: { roles, factors, when }`: every part given must hold.
#[derive(Clone, Debug, Default)]
pub struct AllowRules {
    /// The caller must hold any of these roles (empty: no role needed).
    pub roles: Vec<String>,
    /// The caller must have verified all of these credentials.
    pub factors: Vec<crate::policy::Factor>,
    /// Every condition must hold.
    pub when: Vec<Condition>,
}

impl AllowRules {
    /// Whether a caller with no credential at all could pass (only `when` conditions).
    pub fn needs_credential(&self) -> bool {
        !self.roles.is_empty() || !self.factors.is_empty()
    }
}

/// One `allow.when` condition; lists mean any of.
#[derive(Clone, Debug)]
pub enum Condition {
    /// The client address lies in any of these networks.
    SourceIp(Vec<ipnet::IpNet>),
    /// Each named certificate field matches any of its globs.
    Cert(Vec<(CertField, Vec<Glob>)>),
    /// Each named JWT claim matches any of its globs.
    Claims(Vec<(String, Vec<Glob>)>),
    /// Each named request header matches any of its globs.
    Headers(Vec<(HeaderName, Vec<Glob>)>),
}

/// A certificate field named in `when.cert`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertField {
    /// Subject CN.
    Cn,
    /// Subject O.
    O,
    /// Subject OU.
    Ou,
    /// DNS SANs.
    SanDns,
    /// URI SANs.
    SanUri,
    /// E-mail SANs.
    SanEmail,
}

impl CertField {
    /// The values of this field in a certificate.
    pub fn values(self, c: &crate::identity::PeerCert) -> &[String] {
        match self {
            CertField::Cn => &c.cn,
            CertField::O => &c.o,
            CertField::Ou => &c.ou,
            CertField::SanDns => &c.san_dns,
            CertField::SanUri => &c.san_uri,
            CertField::SanEmail => &c.san_email,
        }
    }
}

/// `forward:` settings.
#[derive(Clone, Debug)]
pub struct ForwardSettings {
    /// Header carrying the caller's identity.
    pub identity: HeaderName,
    /// Header carrying the matched principal names.
    pub principals: HeaderName,
    /// Header carrying the caller's roles.
    pub roles: HeaderName,
    /// Header carrying the verified factors.
    pub factors: HeaderName,
    /// Header carrying the client certificate.
    pub client_cert: HeaderName,
    /// How the client certificate is encoded.
    pub client_cert_format: CertFormat,
    /// Header carrying the request id (also on responses).
    pub request_id: HeaderName,
    /// Whether X-Forwarded-For/-Proto/-Host are set.
    pub x_forwarded: bool,
    /// Whether consumed credentials are forwarded upstream.
    pub credentials: bool,
    /// What to do with request headers whose name has `_`.
    pub underscore_headers: UnderscoreHeaders,
    /// Forwarding headers (`Forwarded`, `X-Forwarded-*`, ...) passed through from clients
    /// instead of removed; empty unless every client is a trusted proxy.
    pub trusted_client_headers: Vec<HeaderName>,
}

/// `forward.underscore_headers`: headers whose name has `_`. Whatever this says, a `_` twin of
/// an identity, credential or forwarding header is always removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnderscoreHeaders {
    /// Forwarded as sent.
    Allow,
    /// Removed (nginx's `underscores_in_headers off`).
    Drop,
    /// The request is refused with 400.
    Reject,
}

/// `limits.path_parameters`: `;` parameters in path segments (Tomcat and Spring strip them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathParameters {
    /// Allowed; routes match the path as such servers resolve it (parameters removed), the
    /// upstream gets them as sent, and a dot segment with parameters (`..;x`) is refused.
    Allow,
    /// Any `;` in the path is refused with 400.
    Reject,
}

/// `limits.path_case`: how route paths compare with request paths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathCase {
    /// Byte for byte, as nginx locations and Envoy routes do by default.
    Sensitive,
    /// ASCII letters compare without case, for upstreams that resolve `/ADMIN` as `/admin`
    /// (IIS, ASP.NET, case-insensitive file systems): otherwise such a path slips past a rule.
    Insensitive,
}

/// `forward.headers.client_cert_format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertFormat {
    /// Envoy's `x-forwarded-client-cert` format.
    Xfcc,
    /// RFC 9440 `Client-Cert: :base64(DER):`.
    Rfc9440,
}

/// `limits:` settings.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest request head accepted (431 above).
    pub max_header_bytes: usize,
    /// Largest request body accepted (413 above), enforced while streaming.
    pub max_body_bytes: u64,
    /// Deadline for a request head to arrive completely (slow-loris guard).
    pub header_timeout: Duration,
    /// Deadline for the TLS handshake.
    pub handshake_timeout: Duration,
    /// A connection with no request in flight is closed after this long.
    pub idle_timeout: Duration,
    /// A response the client takes no bytes of for this long is abandoned.
    pub send_timeout: Duration,
    /// A request body that brings no bytes for this long is answered with 408.
    pub body_timeout: Duration,
    /// A WebSocket tunnel with no bytes either way for this long is closed.
    pub websocket_idle_timeout: Duration,
    /// Most client connections open at once.
    pub max_connections: usize,
    /// Most TLS handshakes in progress at once (they hold no connection slot).
    pub max_handshakes: usize,
    /// How `;` parameters in path segments are treated.
    pub path_parameters: PathParameters,
    /// Whether route paths match without regard to ASCII case.
    pub path_case: PathCase,
    /// How long a drain waits for in-flight requests.
    pub shutdown_timeout: Duration,
}

/// `logging:` settings.
#[derive(Clone, Debug)]
pub struct LoggingSettings {
    /// Text, JSON, or chosen by whether stdout is a terminal.
    pub format: LogFormat,
    /// Whether one line per request is logged.
    pub access_log: bool,
}

/// `logging.format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Text on a terminal, JSON otherwise.
    Auto,
    /// One JSON object per line.
    Json,
    /// Human-readable text.
    Text,
}

/// Reads and resolves a configuration file.
///
/// # Errors
/// Every problem found, each with file, line, column and key path; an unreadable file is
/// reported as a single problem.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    match std::fs::read_to_string(path) {
        Ok(text) => from_str(&text, path),
        Err(e) => {
            let file = path.display().to_string();
            let error = ConfigError {
                file: file.clone(),
                pos: Pos::default(),
                key: String::new(),
                message: format!("cannot read the configuration: {}", read_error(path, &e)),
            };
            Err(ConfigErrors {
                file,
                errors: vec![error],
            })
        }
    }
}

/// Why a file could not be read, for an operator. A permission error names the user the
/// gateway runs as and the file's owner and mode: the two facts needed to fix it, since the
/// uid inside a container rarely matches the one that wrote the file.
pub fn read_error(path: &Path, e: &std::io::Error) -> String {
    if e.kind() != std::io::ErrorKind::PermissionDenied {
        return e.to_string();
    }
    use std::os::unix::fs::MetadataExt;
    let us = match process_ids() {
        Some((uid, gid, groups)) if groups.is_empty() => format!("uid {uid} gid {gid}"),
        Some((uid, gid, groups)) => format!("uid {uid} gid {gid} (groups {})", groups.join(",")),
        None => "a user".to_owned(),
    };
    let owner = match std::fs::metadata(path) {
        Ok(m) => format!(
            "the file is owned by uid {} gid {} with mode {:04o}",
            m.uid(),
            m.gid(),
            m.mode() & 0o7777
        ),
        Err(_) => "its folder cannot be searched".to_owned(),
    };
    format!(
        "permission denied: portcullis runs as {us} and {owner}; make it readable by that \
         user or one of its groups (docs/deployment.md, \"Keys and file permissions\")"
    )
}

/// The effective uid and gid and the supplementary groups, from /proc (Linux).
fn process_ids() -> Option<(String, String, Vec<String>)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|rest| {
                rest.split_whitespace()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
    };
    // "Uid:" and "Gid:" list real, effective, saved and filesystem ids.
    let uid = field("Uid:")?.get(1)?.clone();
    let gid = field("Gid:")?.get(1)?.clone();
    let groups = field("Groups:").unwrap_or_default();
    let groups = groups.into_iter().filter(|g| *g != gid).collect();
    Some((uid, gid, groups))
}

/// Resolves configuration text; `path` is where it came from (relative file paths inside are
/// resolved against its folder).
///
/// # Errors
/// Every problem found, each with file, line, column and key path.
pub fn from_str(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
    resolve::resolve(text, path)
}

// === impl Glob ===

impl Glob {
    /// Compiles a glob; `case_insensitive` for DNS names and hosts.
    pub fn new(pattern: &str, case_insensitive: bool) -> Glob {
        let p = if case_insensitive {
            pattern.to_ascii_lowercase()
        } else {
            pattern.to_owned()
        };
        Glob {
            matcher: wildmatch::WildMatch::new(&p),
            pattern: p,
            case_insensitive,
        }
    }

    /// Whether `text` matches.
    pub fn is_match(&self, text: &str) -> bool {
        if self.case_insensitive && text.bytes().any(|b| b.is_ascii_uppercase()) {
            self.matcher.matches(&text.to_ascii_lowercase())
        } else {
            self.matcher.matches(text)
        }
    }

    /// The pattern as written (lowercased when case-insensitive).
    pub fn pattern(&self) -> &str {
        &self.pattern
    }
}

impl RouteMatch {
    /// Whether a normalized path matches `exact`/`prefix` (both absent: every path).
    pub fn matches_path(&self, path: &str) -> bool {
        let same = |a: &[u8], b: &[u8]| {
            if self.case_insensitive {
                a.eq_ignore_ascii_case(b)
            } else {
                a == b
            }
        };
        let path = path.as_bytes();
        if let Some(exact) = &self.exact {
            return same(path, exact.as_bytes());
        }
        match &self.prefix {
            None => true,
            Some(p) if p == "/" => true,
            Some(p) => {
                path.get(..p.len())
                    .is_some_and(|head| same(head, p.as_bytes()))
                    && matches!(path.get(p.len()), None | Some(b'/'))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_permission_error_names_the_process_and_the_files_owner() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("server.key");
        std::fs::write(&key, "not read").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        // Root reads any file, so the error is made rather than provoked.
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let msg = read_error(&key, &denied);
        let (uid, gid, _) = process_ids().unwrap();
        assert!(
            msg.starts_with(&format!(
                "permission denied: portcullis runs as uid {uid} gid {gid}"
            )),
            "{msg}"
        );
        assert!(msg.contains("with mode 0600"), "{msg}");
        assert!(msg.contains("Keys and file permissions"), "{msg}");
        let other = std::io::Error::from(std::io::ErrorKind::NotFound);
        assert_eq!(read_error(&key, &other), other.to_string());
    }
}
