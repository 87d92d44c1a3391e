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
    pub forward: Option<Sp<RawForward>>,
    pub limits: Option<Sp<RawLimits>>,
    pub logging: Option<Sp<RawLogging>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: Option<Sp<String>>,
    pub key: Option<Sp<String>>,
    pub client_ca: Option<Sp<String>>,
    pub client_auth: Option<Sp<String>>,
    pub crl: Option<Sp<Vec<Sp<String>>>>,
    pub min_version: Option<Sp<String>>,
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
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrincipal {
    pub name: Option<Sp<String>>,
    pub cert: Option<Sp<RawCertMatch>>,
    pub roles: Option<Sp<Vec<Sp<String>>>>,
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
    Rules(RawAllowRules),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAllowRules {
    pub roles: Option<Sp<Vec<Sp<String>>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawForward {
    pub headers: Option<Sp<RawForwardHeaders>>,
    pub x_forwarded: Option<Sp<bool>>,
    pub credentials: Option<Sp<bool>>,
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
    pub max_connections: Option<Sp<u64>>,
    pub shutdown_timeout: Option<Sp<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLogging {
    pub format: Option<Sp<String>>,
    pub access_log: Option<Sp<bool>>,
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
                Ok(RawAllow::Rules(rules))
            }
        }

        deserializer.deserialize_any(AllowVisitor)
    }
}
