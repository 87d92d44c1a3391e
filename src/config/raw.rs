//! Serde structs mirroring `gateway.yaml` one to one, with the position of every value.
//!
//! No logic lives here: `resolve` turns these into typed settings and reports every semantic
//! problem. Unknown keys are rejected by `deny_unknown_fields`; every key is optional here so
//! that a missing one is reported by `resolve` with a precise message instead of a serde one.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};
use serde_saphyr::Spanned;

/// A value with the position it came from.
pub type Sp<T> = Spanned<T>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listen: Option<Sp<String>>,
    pub tls: Option<Sp<RawTls>>,
    pub admin: Option<Sp<RawAdmin>>,
    pub upstreams: Option<Sp<BTreeMap<String, Sp<RawUpstream>>>>,
    pub principals: Option<Vec<Sp<RawPrincipal>>>,
    pub routes: Option<Sp<Vec<Sp<RawRoute>>>>,
    pub api_keys: Option<Sp<RawApiKeys>>,
    pub jwt: Option<Sp<RawJwt>>,
    pub basic: Option<Sp<RawBasic>>,
    pub totp: Option<Sp<RawTotp>>,
    pub tokens: Option<Sp<RawTokens>>,
    pub oauth: Option<Sp<RawOauth>>,
    pub rate_limits: Option<Sp<RawRateLimits>>,
    pub forward: Option<Sp<RawForward>>,
    pub limits: Option<Sp<RawLimits>>,
    pub logging: Option<Sp<RawLogging>>,
    pub tests: Option<Vec<Sp<RawTest>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApiKeys {
    pub header: Option<Sp<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJwt {
    pub issuer: Option<Sp<String>>,
    pub audiences: Option<Sp<Vec<Sp<String>>>>,
    pub jwks: Option<Sp<String>>,
    pub jwks_ca: Option<Sp<String>>,
    pub jwks_refresh: Option<Sp<String>>,
    pub algorithms: Option<Sp<Vec<Sp<String>>>>,
    pub leeway: Option<Sp<String>>,
    pub bind_to_certificate: Option<Sp<bool>>,
    pub hmac_secret: Option<Sp<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBasic {
    pub realm: Option<Sp<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimits {
    pub store: Option<Sp<String>>,
    pub on_store_error: Option<Sp<String>>,
    pub default: Option<Sp<RawLimit>>,
    pub auth_failures: Option<Sp<RawLimit>>,
    pub key_prefix: Option<Sp<String>>,
    pub max_keys: Option<Sp<u64>>,
    pub store_timeout: Option<Sp<String>>,
    pub redis_tls: Option<Sp<RawRedisTls>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedisTls {
    pub ca: Option<Sp<String>>,
    pub cert: Option<Sp<String>>,
    pub key: Option<Sp<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimit {
    pub key: Option<Sp<String>>,
    pub rate: Option<Sp<String>>,
    pub burst: Option<Sp<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTest {
    pub name: Option<Sp<String>>,
    pub request: Option<Sp<RawTestRequest>>,
    pub expect: Option<Sp<String>>,
    pub route: Option<Sp<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTestRequest {
    pub method: Option<Sp<String>>,
    pub path: Option<Sp<String>>,
    pub host: Option<Sp<String>>,
    pub cert: Option<Sp<RawTestCert>>,
    pub api_key_id: Option<Sp<String>>,
    pub jwt: Option<Sp<BTreeMap<String, serde_json::Value>>>,
    pub basic_user: Option<Sp<String>>,
    pub totp: Option<Sp<bool>>,
    pub token: Option<Sp<RawTestToken>>,
    pub oauth: Option<Sp<RawTestOauth>>,
    pub source_ip: Option<Sp<String>>,
    pub headers: Option<Sp<BTreeMap<String, String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTestOauth {
    pub client_id: Option<Sp<String>>,
    pub sub: Option<Sp<String>>,
    pub scope: Option<Sp<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTestToken {
    pub sub: Option<Sp<String>>,
    pub principals: Option<Sp<Vec<Sp<String>>>>,
    pub amr: Option<Sp<Vec<Sp<String>>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTestCert {
    pub cn: Option<String>,
    pub o: Option<String>,
    pub ou: Option<String>,
    pub san_dns: Option<String>,
    pub san_uri: Option<String>,
    pub san_email: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: Option<Sp<String>>,
    pub key: Option<Sp<String>>,
    pub client_ca: Option<Sp<String>>,
    pub client_auth: Option<Sp<String>>,
    pub crl: Option<Sp<Vec<Sp<String>>>>,
    pub crl_expired: Option<Sp<String>>,
    pub min_version: Option<Sp<String>>,
    pub cipher_suites: Option<Sp<Vec<Sp<String>>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<Sp<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub url: Option<Sp<String>>,
    pub connect_timeout: Option<Sp<String>>,
    pub timeout: Option<Sp<String>>,
    pub read_timeout: Option<Sp<String>>,
    pub pool_idle_timeout: Option<Sp<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrincipal {
    pub name: Option<Sp<String>>,
    pub cert: Option<Sp<RawCertMatch>>,
    pub api_key: Option<Sp<RawApiKeyMatch>>,
    pub jwt: Option<Sp<RawJwtMatch>>,
    pub basic: Option<Sp<RawBasicMatch>>,
    pub roles: Option<Sp<Vec<Sp<String>>>>,
    pub totp: Option<Sp<RawPrincipalTotp>>,
    pub oauth: Option<Sp<RawOauthMatch>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOauthMatch {
    pub client_id: Option<Sp<String>>,
    pub sub: Option<Sp<String>>,
    pub scope: Option<Sp<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOauth {
    pub introspection_url: Option<Sp<String>>,
    pub client_id: Option<Sp<String>>,
    pub client_secret: Option<Sp<String>>,
    pub ca: Option<Sp<String>>,
    pub cache: Option<Sp<String>>,
    pub timeout: Option<Sp<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrincipalTotp {
    pub secret: Option<Sp<String>>,
    pub secret_file: Option<Sp<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTokens {
    pub signing_key: Option<Sp<String>>,
    pub login_path: Option<Sp<String>>,
    pub login_factors: Option<Sp<Vec<Sp<String>>>>,
    pub logout_path: Option<Sp<String>>,
    pub jwks_path: Option<Sp<String>>,
    pub ttl: Option<Sp<String>>,
    pub audience: Option<Sp<String>>,
    pub issuer: Option<Sp<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTotp {
    pub header: Option<Sp<String>>,
    pub digits: Option<Sp<u64>>,
    pub period: Option<Sp<String>>,
    pub skew: Option<Sp<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApiKeyMatch {
    pub sha256: Option<Sp<String>>,
    pub sha256_file: Option<Sp<String>>,
    pub expires: Option<Sp<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJwtMatch {
    pub claim: Option<Sp<String>>,
    pub contains: Option<Sp<String>>,
    pub equals: Option<Sp<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBasicMatch {
    pub user: Option<Sp<String>>,
    pub argon2: Option<Sp<String>>,
    pub argon2_file: Option<Sp<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertMatch {
    pub cn: Option<Sp<String>>,
    pub o: Option<Sp<String>>,
    pub ou: Option<Sp<String>>,
    pub san_dns: Option<Sp<String>>,
    pub san_uri: Option<Sp<String>>,
    pub san_email: Option<Sp<String>>,
    pub fingerprint_sha256: Option<Sp<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: Option<Sp<String>>,
    #[serde(rename = "match")]
    pub match_: Option<Sp<RawMatch>>,
    pub upstream: Option<Sp<String>>,
    pub allow: Option<Sp<RawAllow>>,
    pub strip_prefix: Option<Sp<String>>,
    pub websocket: Option<Sp<bool>>,
    pub rate_limit: Option<Sp<RawLimit>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    pub exact: Option<Sp<String>>,
    pub prefix: Option<Sp<String>>,
    pub host: Option<Sp<String>>,
    pub methods: Option<Sp<Vec<Sp<String>>>>,
}

/// `allow:` is either a keyword (`anyone`, `authenticated`) or a rule map.
#[derive(Debug)]
pub enum RawAllow {
    Keyword(String),
    Rules(Box<RawAllowRules>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAllowRules {
    pub roles: Option<Sp<Vec<Sp<String>>>>,
    pub factors: Option<Sp<Vec<Sp<String>>>>,
    pub when: Option<Sp<RawWhen>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWhen {
    pub source_ip: Option<Sp<OneOrMany>>,
    pub cert: Option<Sp<BTreeMap<String, OneOrMany>>>,
    pub claims: Option<Sp<BTreeMap<String, OneOrMany>>>,
    pub headers: Option<Sp<BTreeMap<String, OneOrMany>>>,
}

/// A string or a list of strings (a list means any of).
#[derive(Debug)]
pub struct OneOrMany(pub Vec<String>);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawForward {
    pub headers: Option<Sp<RawForwardHeaders>>,
    pub x_forwarded: Option<Sp<bool>>,
    pub credentials: Option<Sp<bool>>,
    pub underscore_headers: Option<Sp<String>>,
    pub trusted_client_headers: Option<Sp<Vec<Sp<String>>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawForwardHeaders {
    pub identity: Option<Sp<String>>,
    pub principals: Option<Sp<String>>,
    pub roles: Option<Sp<String>>,
    pub factors: Option<Sp<String>>,
    pub client_cert: Option<Sp<String>>,
    pub client_cert_format: Option<Sp<String>>,
    pub request_id: Option<Sp<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_header_bytes: Option<Sp<String>>,
    pub max_body_bytes: Option<Sp<String>>,
    pub header_timeout: Option<Sp<String>>,
    pub handshake_timeout: Option<Sp<String>>,
    pub idle_timeout: Option<Sp<String>>,
    pub send_timeout: Option<Sp<String>>,
    pub body_timeout: Option<Sp<String>>,
    pub websocket_idle_timeout: Option<Sp<String>>,
    pub max_connections: Option<Sp<u64>>,
    pub max_handshakes: Option<Sp<u64>>,
    pub path_parameters: Option<Sp<String>>,
    pub path_case: Option<Sp<String>>,
    pub shutdown_timeout: Option<Sp<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLogging {
    pub format: Option<Sp<String>>,
    pub access_log: Option<Sp<bool>>,
}

// === impl OneOrMany ===

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;

        impl<'de> Visitor<'de> for V {
            type Value = OneOrMany;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a list of strings")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany(vec![v.to_owned()]))
            }

            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrMany, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(s);
                }
                Ok(OneOrMany(out))
            }
        }

        deserializer.deserialize_any(V)
    }
}

// === impl RawAllow ===

impl<'de> Deserialize<'de> for RawAllow {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AllowVisitor;

        impl<'de> Visitor<'de> for AllowVisitor {
            type Value = RawAllow;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`anyone`, `authenticated`, or a map such as { roles: [admin] }")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawAllow, E> {
                Ok(RawAllow::Keyword(v.to_owned()))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawAllow, A::Error> {
                let rules = RawAllowRules::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(RawAllow::Rules(Box::new(rules)))
            }
        }

        deserializer.deserialize_any(AllowVisitor)
    }
}
