//! Raw YAML structs → typed [`Config`], reporting every problem with its position.
//!
//! Order of work: `${ENV}` interpolation and unit parsing happen per value, so a bad value is
//! reported at its own line and column; cross references (route → upstream, route → role) are
//! checked once every section is read.

use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderName, Method, Uri};

use super::raw::{self, RawAllow, RawConfig, Sp};
use super::units::{parse_duration, parse_rate, parse_size};
use super::{
    AdminSettings, Allow, AllowRules, ApiKeySettings, AuthFailureLimit, BasicSettings, CertField,
    CertFormat, CertMatcher, ClaimTest, ClientAuth, Condition, Config, ConfigErrors, CrlExpired,
    Expectation, FileRef, ForwardSettings, Glob, JwksSource, JwtSettings, LimitKey, LimitSpec,
    LimitStore, Limits, LogFormat, LoggingSettings, OauthSettings, OnStoreError, PathCase,
    PathParameters, Pos, Principal, PrincipalMatcher, Problems, RateLimitSettings, RedisTls,
    RouteMatch, RouteSettings, Secret, TestCase, TestRequest, TlsSettings, TlsVersion,
    TokenSettings, TotpSettings, TotpSource, UnderscoreHeaders, UpstreamSettings,
};
use crate::policy::Factor;

const DEFAULT_LISTEN: &str = "0.0.0.0:8443";

pub(super) fn resolve(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
    let file = path.display().to_string();
    let raw = match parse(text) {
        Ok(raw) => raw,
        Err((pos, key, message)) => {
            let error = super::ConfigError {
                file: file.clone(),
                pos,
                key,
                message,
            };
            return Err(ConfigErrors {
                file,
                errors: vec![error],
            });
        }
    };
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut r = Resolver {
        p: Problems::new(&file),
        base,
        file: file.clone(),
        warnings: Vec::new(),
        world_readable: {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o004 != 0)
        },
        protected_headers: Vec::new(),
    };
    let config = r.config(raw, path).map(|mut c| {
        c.warnings = std::mem::take(&mut r.warnings);
        c
    });
    match (r.p.into_result(()), config) {
        (Err(e), _) => Err(e),
        (Ok(()), Some(c)) => Ok(c),
        // `config` gives up only after recording a problem; should that ever not hold, the
        // operator still gets a sentence rather than a crash.
        (Ok(()), None) => Err(ConfigErrors {
            file: file.clone(),
            errors: vec![super::ConfigError {
                file,
                pos: Pos::default(),
                key: String::new(),
                message: "the configuration is incomplete".to_owned(),
            }],
        }),
    }
}

/// Deserializes the YAML, keeping the key path and position of the first syntax or type error.
fn parse(text: &str) -> Result<RawConfig, (Pos, String, String)> {
    let mut key_path = String::new();
    let result = serde_saphyr::with_deserializer_from_str(text, |de| {
        serde_path_to_error::deserialize::<_, RawConfig>(de).map_err(|e| {
            key_path = display_path(e.path());
            e.into_inner()
        })
    });
    result.map_err(|e| {
        let inner = e.without_snippet();
        let pos = inner
            .location()
            .map(|l| Pos {
                line: l.line() as u32,
                column: l.column() as u32,
            })
            .unwrap_or_default();
        let mut message = clean_message(&inner.to_string());
        if let Some(hint) = indentation_hint(text, pos.line as usize, &message) {
            message.push_str("; ");
            message.push_str(&hint);
        }
        (pos, key_path, message)
    })
}

/// When a syntax error or an unknown key is most likely a line indented one level too far or
/// not far enough, says which line and how far: the error's line or the next one, moved (with
/// the lines nested under it) to an indentation that an earlier line uses, makes the whole file
/// parse. A type error (a string where a number belongs) is left alone.
fn indentation_hint(text: &str, error_line: usize, message: &str) -> Option<String> {
    let type_error = [
        "invalid type",
        "invalid value",
        "missing field",
        "invalid length",
    ]
    .iter()
    .any(|t| message.starts_with(t));
    if type_error || error_line == 0 {
        return None;
    }
    let lines: Vec<&str> = text.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start_matches(' ').len();
    let content = |l: &str| {
        let t = l.trim();
        !t.is_empty() && !t.starts_with('#')
    };
    // The error's line and the next line with content (a key left without its nested value
    // is reported at the key; the slip is the line below).
    let mut candidates = vec![error_line - 1];
    if let Some(next) = (error_line..lines.len()).find(|&i| content(lines[i])) {
        candidates.push(next);
    }
    for at in candidates {
        let Some(line) = lines.get(at) else { continue };
        if !content(line) {
            continue;
        }
        let from = indent(line);
        // Indentations in use above: each line's own, and inside a list item its keys'.
        let mut levels: Vec<usize> = lines[..at]
            .iter()
            .filter(|l| content(l))
            .flat_map(|l| {
                let i = indent(l);
                let item = l[i..].starts_with("- ").then_some(i + 2);
                std::iter::once(i).chain(item)
            })
            .collect();
        // One level below the line above: the value of a key left without one.
        if let Some(above) = lines[..at].iter().rev().find(|l| content(l)) {
            let i = indent(above);
            let item = if above[i..].starts_with("- ") {
                i + 2
            } else {
                i
            };
            levels.push(item + 2);
        }
        levels.retain(|&i| i != from);
        levels.sort_unstable();
        levels.dedup();
        // The nearest levels first: a slip is usually one level.
        levels.sort_by_key(|&i| i.abs_diff(from));
        for to in levels {
            let mut moved: Vec<String> = lines.iter().map(|l| (*l).to_owned()).collect();
            let shift = |l: &str| {
                if to > from {
                    format!("{}{l}", " ".repeat(to - from))
                } else {
                    l[from - to..].to_owned()
                }
            };
            // The line and the lines nested under it move together.
            moved[at] = shift(lines[at]);
            for (j, l) in lines.iter().enumerate().skip(at + 1) {
                if !content(l) {
                    continue;
                }
                if indent(l) <= from {
                    break;
                }
                moved[j] = shift(l);
            }
            let attempt = moved.join("\n");
            let parses = serde_saphyr::with_deserializer_from_str(&attempt, |de| {
                <RawConfig as serde::Deserialize>::deserialize(de)
            })
            .is_ok();
            if parses {
                let parent = lines[..at]
                    .iter()
                    .enumerate()
                    .rev()
                    .find(|(_, l)| content(l) && indent(l) < to)
                    .map(|(i, l)| format!(", under `{}` on line {}", l.trim(), i + 1))
                    .unwrap_or_default();
                return Some(format!(
                    "hint: line {} is indented {from} spaces; indented {to}{parent}, the file parses",
                    at + 1
                ));
            }
        }
    }
    None
}

/// serde_path_to_error prints `a.b[0].c`; an empty path prints as `.`.
fn display_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for seg in path.iter() {
        match seg {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            // `Spanned` wrappers add a `value` level that is not in the file.
            Segment::Map { key } | Segment::Enum { variant: key } if key == "value" => {}
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => {}
        }
    }
    out
}

/// What the file declares, whether or not it resolved: a reference to something that has
/// problems of its own was already reported there, and must not add an "unknown" error.
struct Declared<'a> {
    routes: Vec<&'a str>,
    api_keys: Vec<&'a str>,
    basic_users: Vec<&'a str>,
}

impl<'a> Declared<'a> {
    fn of(raw: &'a raw::RawConfig) -> Declared<'a> {
        let routes = raw
            .routes
            .as_ref()
            .map(|list| {
                list.value
                    .iter()
                    .filter_map(|r| r.value.name.as_ref().map(|n| n.value.as_str()))
                    .collect()
            })
            .unwrap_or_default();
        let principals = raw.principals.as_deref().unwrap_or_default();
        let api_keys = principals
            .iter()
            .filter(|p| p.value.api_key.is_some())
            .filter_map(|p| p.value.name.as_ref().map(|n| n.value.as_str()))
            .collect();
        let basic_users = principals
            .iter()
            .filter_map(|p| p.value.basic.as_ref()?.value.user.as_ref())
            .map(|u| u.value.as_str())
            .collect();
        Declared {
            routes,
            api_keys,
            basic_users,
        }
    }
}

/// `known: a, b` or `none are defined`, for "unknown X" messages.
fn known<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    let list: Vec<&str> = names.into_iter().collect();
    if list.is_empty() {
        "none are defined".to_owned()
    } else {
        format!("known: {}", list.join(", "))
    }
}

/// Keeps the first line of a serde-saphyr message and drops its own "at line N column M" suffix,
/// since the position is printed in front.
fn clean_message(message: &str) -> String {
    let first = message.lines().next().unwrap_or(message).trim();
    let first = match first.find(" at line ") {
        Some(i) => &first[..i],
        None => first,
    };
    first.trim_start_matches("error: ").to_owned()
}

fn pos<T>(sp: &Sp<T>) -> Pos {
    Pos {
        line: sp.referenced.line() as u32,
        column: sp.referenced.column() as u32,
    }
}

struct Resolver {
    p: Problems,
    base: PathBuf,
    file: String,
    warnings: Vec<String>,
    /// Whether users other than the owner can read the file (literal secrets then warn).
    world_readable: bool,
    /// Headers the gateway sets or consumes (identity, credential): `when.headers` may not
    /// name them, since a condition would otherwise read a client's forged copy.
    protected_headers: Vec<HeaderName>,
}

impl Resolver {
    /// Something valid but probably unintended, shown by `check` and logged by `run`.
    fn warn(&mut self, at: Pos, key: impl Into<String>, message: impl Into<String>) {
        let e = super::ConfigError {
            file: self.file.clone(),
            pos: at,
            key: key.into(),
            message: message.into(),
        };
        self.warnings.push(e.to_string());
    }

    fn config(&mut self, raw: RawConfig, path: &Path) -> Option<Config> {
        let listen = match &raw.listen {
            Some(v) => self.addr(v, "listen"),
            None => DEFAULT_LISTEN.parse().ok(),
        };
        let tls = match &raw.tls {
            Some(t) => self.tls(t),
            None => {
                self.p.push(
                    Pos { line: 1, column: 1 },
                    "tls",
                    "missing: the gateway needs tls.cert and tls.key",
                );
                None
            }
        };
        let admin = raw.admin.as_ref().and_then(|a| {
            let listen = a.value.listen.as_ref()?;
            Some(AdminSettings {
                listen: self.addr(listen, "admin.listen")?,
            })
        });
        let upstreams = self.upstreams(raw.upstreams.as_ref());
        let upstream_names: Vec<&str> = raw
            .upstreams
            .as_ref()
            .map(|m| m.value.keys().map(String::as_str).collect())
            .unwrap_or_default();
        let principals = self.principals(raw.principals.as_deref().unwrap_or_default());
        let default_limit = raw
            .rate_limits
            .as_ref()
            .and_then(|r| r.value.default.as_ref())
            .and_then(|d| self.limit_spec(d, "rate_limits.default"));
        // Forward and credential headers first: route conditions are checked against them.
        let forward = self.forward(raw.forward.as_ref());
        let api_key_header = self.header_name(
            raw.api_keys.as_ref().and_then(|a| a.value.header.as_ref()),
            "api_keys.header",
            "x-api-key",
        );
        let totp = self.totp_settings(raw.totp.as_ref());
        if let Some(f) = &forward {
            self.protected_headers = crate::proxy::headers::identity_header_names(f)
                .into_iter()
                .chain([http::header::AUTHORIZATION])
                .chain(api_key_header.clone())
                .chain(totp.as_ref().map(|t| t.header.clone()))
                .collect();
        }
        let routes = self.routes(
            raw.routes.as_ref(),
            &upstreams,
            &upstream_names,
            &principals,
            default_limit,
        );
        let limits = self.limits(raw.limits.as_ref());
        let mut routes = routes;
        if limits
            .as_ref()
            .is_some_and(|l| l.path_case == PathCase::Insensitive)
        {
            for r in &mut routes {
                r.matcher.case_insensitive = true;
            }
        }
        let logging = self.logging(raw.logging.as_ref());
        let api_keys = ApiKeySettings {
            header: api_key_header?,
        };
        let jwt = match &raw.jwt {
            Some(j) => Some(self.jwt(j)?),
            None => None,
        };
        self.check_credential_sections(&principals, jwt.is_some(), raw.jwt.as_ref().map(pos));
        let basic = BasicSettings {
            realm: match raw.basic.as_ref().and_then(|b| b.value.realm.as_ref()) {
                Some(r) => self.string(r, "basic.realm")?,
                None => "portcullis".to_owned(),
            },
        };
        let oauth = match &raw.oauth {
            Some(o) => Some(self.oauth(o)?),
            None => None,
        };
        if oauth.is_none()
            && let Some(p) = principals
                .iter()
                .find(|p| matches!(p.matcher, PrincipalMatcher::Oauth { .. }))
        {
            self.p.push(
                Pos { line: 1, column: 1 },
                "oauth",
                format!("principal {:?} matches introspected OAuth tokens, but there is no oauth: section with an introspection_url", p.name),
            );
        }
        let tokens = match &raw.tokens {
            Some(t) => Some(self.tokens(t, &principals)?),
            None => None,
        };
        let auth_failures = self.auth_failures(raw.rate_limits.as_ref())?;
        let rate_limits = self.rate_limit_settings(raw.rate_limits.as_ref())?;
        let tests = match &raw.tests {
            Some(list) => self.tests(list, &principals, &routes, &Declared::of(&raw)),
            None => Vec::new(),
        };
        Some(Config {
            path: path.to_path_buf(),
            listen: listen?,
            tls: tls?,
            admin,
            upstreams,
            principals,
            routes,
            api_keys,
            jwt,
            basic,
            totp: totp?,
            tokens,
            oauth,
            auth_failures,
            rate_limits,
            warnings: Vec::new(),
            forward: forward?,
            limits: limits?,
            logging: logging?,
            tests,
        })
    }

    /// JWT principals need a `jwt:` section.
    fn check_credential_sections(
        &mut self,
        principals: &[Principal],
        has_jwt: bool,
        _at: Option<Pos>,
    ) {
        if has_jwt {
            return;
        }
        if let Some(p) = principals
            .iter()
            .find(|p| matches!(p.matcher, PrincipalMatcher::Jwt { .. }))
        {
            self.p.push(
                Pos { line: 1, column: 1 },
                "jwt",
                format!("principal {:?} matches JWT claims, but there is no jwt: section to verify tokens", p.name),
            );
        }
    }

    fn jwt(&mut self, sp: &Sp<raw::RawJwt>) -> Option<JwtSettings> {
        use jsonwebtoken::Algorithm;
        let j = &sp.value;
        let issuer = match &j.issuer {
            Some(v) => Some(self.string(v, "jwt.issuer")?),
            None => None,
        };
        let audiences = match &j.audiences {
            Some(list) => self
                .strings(list, "jwt.audiences")
                .into_iter()
                .map(|(s, _)| s)
                .collect(),
            None => Vec::new(),
        };
        let mut algorithms = Vec::new();
        match &j.algorithms {
            Some(list) => {
                for (name, p) in self.strings(list, "jwt.algorithms") {
                    let alg = match name.as_str() {
                        "RS256" => Algorithm::RS256,
                        "RS384" => Algorithm::RS384,
                        "RS512" => Algorithm::RS512,
                        "PS256" => Algorithm::PS256,
                        "PS384" => Algorithm::PS384,
                        "PS512" => Algorithm::PS512,
                        "ES256" => Algorithm::ES256,
                        "ES384" => Algorithm::ES384,
                        "EdDSA" => Algorithm::EdDSA,
                        "HS256" => Algorithm::HS256,
                        "HS384" => Algorithm::HS384,
                        "HS512" => Algorithm::HS512,
                        n if n.eq_ignore_ascii_case("none") => {
                            self.p.push(
                                p,
                                "jwt.algorithms",
                                "\"none\" is never accepted: unsigned tokens prove nothing",
                            );
                            continue;
                        }
                        other => {
                            self.p.push(p, "jwt.algorithms", format!("unknown algorithm {other:?} (RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA, HS256, HS384, HS512)"));
                            continue;
                        }
                    };
                    if !algorithms.contains(&alg) {
                        algorithms.push(alg);
                    }
                }
            }
            None => self.p.push(
                pos(sp),
                "jwt.algorithms",
                "missing: list the accepted algorithms explicitly, e.g. [RS256, ES256]",
            ),
        }
        let hmac =
            |a: &Algorithm| matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512);
        let hmac_secret = match &j.hmac_secret {
            Some(v) => {
                let secret = self.string(v, "jwt.hmac_secret")?;
                if secret.len() < 32 {
                    self.p.push(
                        pos(v),
                        "jwt.hmac_secret",
                        "must be at least 32 bytes (use ${JWT_SECRET} from the environment)",
                    );
                }
                Some(Secret(secret.into_bytes()))
            }
            None => None,
        };
        if algorithms.iter().any(hmac) && hmac_secret.is_none() {
            self.p.push(
                pos(sp),
                "jwt.hmac_secret",
                "HS256/384/512 need hmac_secret (and never use keys from the JWKS)",
            );
        }
        if hmac_secret.is_some() && !algorithms.iter().any(hmac) {
            self.p.push(
                pos(sp),
                "jwt.hmac_secret",
                "is set but no HS256/384/512 algorithm is listed",
            );
        }
        let jwks = match &j.jwks {
            Some(v) => {
                let text = self.string(v, "jwt.jwks")?;
                if text.starts_with("https://") {
                    match text.parse::<Uri>() {
                        Ok(u) if u.host().is_some() => Some(JwksSource::Url(u)),
                        _ => {
                            self.p.push(
                                pos(v),
                                "jwt.jwks",
                                format!("{text:?} is not a valid https URL"),
                            );
                            None
                        }
                    }
                } else if text.contains("://") {
                    self.p.push(pos(v), "jwt.jwks", "a JWKS URL must use https");
                    None
                } else {
                    self.file(v, "jwt.jwks").map(JwksSource::File)
                }
            }
            None => None,
        };
        if jwks.is_none() && j.jwks.is_none() && algorithms.iter().any(|a| !hmac(a)) {
            self.p.push(
                pos(sp),
                "jwt.jwks",
                "missing: public-key algorithms need a JWKS file or https URL",
            );
        }
        let jwks_ca = match &j.jwks_ca {
            Some(v) => Some(self.file(v, "jwt.jwks_ca")?),
            None => None,
        };
        let jwks_refresh = self.duration(
            j.jwks_refresh.as_ref(),
            "jwt.jwks_refresh",
            Duration::from_secs(300),
        )?;
        let leeway = match &j.leeway {
            Some(v) => {
                let text = self.string(v, "jwt.leeway")?;
                if text.trim() == "0" || text.trim() == "0s" {
                    Duration::ZERO
                } else {
                    match parse_duration(&text) {
                        Ok(d) => d,
                        Err(m) => {
                            self.p.push(pos(v), "jwt.leeway", m);
                            return None;
                        }
                    }
                }
            }
            None => Duration::from_secs(30),
        };
        Some(JwtSettings {
            issuer,
            audiences,
            jwks,
            jwks_ca,
            jwks_refresh,
            algorithms,
            leeway,
            bind_to_certificate: j.bind_to_certificate.as_ref().is_some_and(|b| b.value),
            hmac_secret,
        })
    }

    fn limit_spec(&mut self, sp: &Sp<raw::RawLimit>, key: &str) -> Option<LimitSpec> {
        let l = &sp.value;
        let kind = self.keyword(
            l.key.as_ref(),
            &format!("{key}.key"),
            &[
                ("identity", LimitKey::Identity),
                ("principal", LimitKey::Principal),
                ("ip", LimitKey::Ip),
                ("route", LimitKey::Route),
            ],
            LimitKey::Identity,
        );
        let (rate, per) = match &l.rate {
            Some(v) => {
                let text = self.string(v, &format!("{key}.rate"))?;
                match parse_rate(&text) {
                    Ok(r) => r,
                    Err(m) => {
                        self.p.push(pos(v), format!("{key}.rate"), m);
                        return None;
                    }
                }
            }
            None => {
                self.p.push(
                    pos(sp),
                    format!("{key}.rate"),
                    "missing: e.g. 10/s or 600/min",
                );
                return None;
            }
        };
        let burst = match &l.burst {
            Some(b) if b.value == 0 || b.value > 10_000_000 => {
                self.p.push(
                    pos(b),
                    format!("{key}.burst"),
                    format!("must be between 1 and 10000000, got {}", b.value),
                );
                return None;
            }
            Some(b) => b.value as u32,
            None => rate,
        };
        Some(LimitSpec {
            key: kind?,
            rate,
            per,
            burst,
        })
    }

    fn rate_limit_settings(
        &mut self,
        raw: Option<&Sp<raw::RawRateLimits>>,
    ) -> Option<RateLimitSettings> {
        let r = raw.map(|r| &r.value);
        let store = match r.and_then(|r| r.store.as_ref()) {
            Some(v) => {
                let text = self.string(v, "rate_limits.store")?;
                if text == "local" {
                    LimitStore::Local
                } else if text.starts_with("redis://") || text.starts_with("rediss://") {
                    if redis::Client::open(text.as_str()).is_err() {
                        self.p.push(
                            pos(v),
                            "rate_limits.store",
                            "not a valid Redis URL (redis://host:6379/0, or rediss:// for TLS)",
                        );
                        return None;
                    }
                    LimitStore::Redis(text)
                } else {
                    self.p.push(
                        pos(v),
                        "rate_limits.store",
                        format!(
                            "expected local, redis://host:port/db or rediss://host:port/db, got {text:?}"
                        ),
                    );
                    return None;
                }
            }
            None => LimitStore::Local,
        };
        let on_store_error = self.keyword(
            r.and_then(|r| r.on_store_error.as_ref()),
            "rate_limits.on_store_error",
            &[("allow", OnStoreError::Allow), ("deny", OnStoreError::Deny)],
            OnStoreError::Allow,
        )?;
        let key_prefix = match r.and_then(|r| r.key_prefix.as_ref()) {
            Some(v) => self.string(v, "rate_limits.key_prefix")?,
            None => "portcullis:rl:".to_owned(),
        };
        let max_keys = match r.and_then(|r| r.max_keys.as_ref()) {
            Some(v) if v.value == 0 || v.value > 100_000_000 => {
                self.p.push(
                    pos(v),
                    "rate_limits.max_keys",
                    "must be between 1 and 100000000",
                );
                return None;
            }
            Some(v) => v.value as usize,
            None => 100_000,
        };
        let store_timeout = self.duration(
            r.and_then(|r| r.store_timeout.as_ref()),
            "rate_limits.store_timeout",
            Duration::from_millis(100),
        )?;
        let redis_tls = self.redis_tls(r.and_then(|r| r.redis_tls.as_ref()), &store)?;
        Some(RateLimitSettings {
            store,
            on_store_error,
            key_prefix,
            max_keys,
            store_timeout,
            redis_tls,
        })
    }

    /// `rate_limits.redis_tls`: only beside a `rediss://` store; `cert` and `key` together.
    fn redis_tls(
        &mut self,
        raw: Option<&Sp<raw::RawRedisTls>>,
        store: &LimitStore,
    ) -> Option<RedisTls> {
        let Some(t) = raw else {
            return Some(RedisTls::default());
        };
        let key = "rate_limits.redis_tls";
        if !matches!(store, LimitStore::Redis(url) if url.starts_with("rediss://")) {
            self.p.push(
                pos(t),
                key,
                "only for a rediss:// store (rate_limits.store: rediss://host:port/db)",
            );
            return None;
        }
        let v = &t.value;
        let ca =
            v.ca.as_ref()
                .and_then(|f| self.file(f, &format!("{key}.ca")));
        let cert = v
            .cert
            .as_ref()
            .and_then(|f| self.file(f, &format!("{key}.cert")));
        let client_key = v
            .key
            .as_ref()
            .and_then(|f| self.file(f, &format!("{key}.key")));
        if v.cert.is_some() != v.key.is_some() {
            self.p.push(
                pos(t),
                key,
                "cert and key go together: the client certificate and its private key",
            );
            return None;
        }
        Some(RedisTls {
            ca,
            cert,
            key: client_key,
        })
    }

    fn auth_failures(&mut self, raw: Option<&Sp<raw::RawRateLimits>>) -> Option<AuthFailureLimit> {
        let default = AuthFailureLimit {
            rate: 10,
            per: Duration::from_secs(60),
            burst: 10,
        };
        let Some(l) = raw.and_then(|r| r.value.auth_failures.as_ref()) else {
            return Some(default);
        };
        let key = "rate_limits.auth_failures";
        if let Some(k) = &l.value.key {
            let k = self.string(k, &format!("{key}.key"))?;
            if k != "ip" {
                self.p.push(
                    pos(l),
                    format!("{key}.key"),
                    "failed authentications are counted per client ip: key must be ip",
                );
            }
        }
        let (rate, per) = match &l.value.rate {
            Some(v) => {
                let text = self.string(v, &format!("{key}.rate"))?;
                match parse_rate(&text) {
                    Ok(r) => r,
                    Err(m) => {
                        self.p.push(pos(v), format!("{key}.rate"), m);
                        return None;
                    }
                }
            }
            None => (default.rate, default.per),
        };
        let burst = match &l.value.burst {
            Some(b) if b.value == 0 || b.value > 1_000_000 => {
                self.p.push(
                    pos(b),
                    format!("{key}.burst"),
                    format!("must be between 1 and 1000000, got {}", b.value),
                );
                return None;
            }
            Some(b) => b.value as u32,
            None => rate.max(1),
        };
        Some(AuthFailureLimit { rate, per, burst })
    }

    fn tests(
        &mut self,
        list: &[Sp<raw::RawTest>],
        principals: &[Principal],
        routes: &[RouteSettings],
        declared: &Declared<'_>,
    ) -> Vec<TestCase> {
        let mut out = Vec::new();
        for (i, sp) in list.iter().enumerate() {
            let key = format!("tests[{i}]");
            let t = &sp.value;
            let name = match &t.name {
                Some(n) => self.string(n, &format!("{key}.name")),
                None => Some(format!("test {}", i + 1)),
            };
            let expect = match &t.expect {
                Some(e) => self.keyword(
                    Some(e),
                    &format!("{key}.expect"),
                    &[
                        ("allow", Expectation::Allow),
                        ("401", Expectation::Unauthenticated),
                        ("403", Expectation::Forbidden),
                        ("404", Expectation::NoRoute),
                    ],
                    Expectation::Allow,
                ),
                None => {
                    self.p.push(
                        pos(sp),
                        format!("{key}.expect"),
                        "missing: allow, 401, 403 or 404",
                    );
                    None
                }
            };
            let route = match &t.route {
                Some(r) => {
                    let name = self.string(r, &format!("{key}.route"));
                    if let Some(n) = &name
                        && !routes.iter().any(|rt| *rt.name == **n)
                        && !declared.routes.contains(&n.as_str())
                    {
                        self.p.push(
                            pos(r),
                            format!("{key}.route"),
                            format!(
                                "unknown route {n:?} ({})",
                                known(declared.routes.iter().copied())
                            ),
                        );
                    }
                    name
                }
                None => None,
            };
            let request = match &t.request {
                Some(r) => self.test_request(r, &format!("{key}.request"), principals, declared),
                None => {
                    self.p.push(
                        pos(sp),
                        format!("{key}.request"),
                        "missing: e.g. { method: GET, path: /, cert: { cn: ops-alice } }",
                    );
                    None
                }
            };
            if let (Some(name), Some(expect), Some(request)) = (name, expect, request) {
                out.push(TestCase {
                    name,
                    pos: pos(sp),
                    request,
                    expect,
                    route,
                });
            }
        }
        out
    }

    fn test_request(
        &mut self,
        sp: &Sp<raw::RawTestRequest>,
        key: &str,
        principals: &[Principal],
        declared: &Declared<'_>,
    ) -> Option<TestRequest> {
        let r = &sp.value;
        let method = match &r.method {
            Some(m) => {
                let text = self.string(m, &format!("{key}.method"))?;
                match Method::from_bytes(text.as_bytes()) {
                    Ok(m) => m,
                    Err(_) => {
                        self.p.push(
                            pos(m),
                            format!("{key}.method"),
                            format!("not an HTTP method: {text:?}"),
                        );
                        return None;
                    }
                }
            }
            None => Method::GET,
        };
        let Some(path) = &r.path else {
            self.p
                .push(pos(sp), format!("{key}.path"), "missing: the request path");
            return None;
        };
        let path = self.string(path, &format!("{key}.path"))?;
        let host = match &r.host {
            Some(h) => {
                let text = self.string(h, &format!("{key}.host"))?;
                match crate::gateway::parse_host(&text) {
                    Some(parsed) => Some(parsed.name),
                    None => {
                        self.p.push(
                            pos(h),
                            format!("{key}.host"),
                            format!(
                                "{text:?} is not a valid host (the gateway answers it with 400)"
                            ),
                        );
                        return None;
                    }
                }
            }
            None => None,
        };
        let cert = r.cert.as_ref().map(|c| {
            let v = |o: &Option<String>| o.iter().cloned().collect::<Vec<_>>();
            let c = &c.value;
            let mut pc = crate::identity::PeerCert {
                cn: v(&c.cn),
                o: v(&c.o),
                ou: v(&c.ou),
                san_dns: v(&c.san_dns),
                san_uri: v(&c.san_uri),
                san_email: v(&c.san_email),
                ..Default::default()
            };
            let mut parts = Vec::new();
            for (k, vals) in [("OU", &pc.ou), ("O", &pc.o), ("CN", &pc.cn)] {
                for val in vals.iter() {
                    parts.push(format!("{k}={val}"));
                }
            }
            pc.subject = parts.join(",");
            pc
        });
        let api_key_id = match &r.api_key_id {
            Some(id) => {
                let id_text = self.string(id, &format!("{key}.api_key_id"))?;
                let ok = principals.iter().any(|p| {
                    p.name == id_text && matches!(p.matcher, PrincipalMatcher::ApiKey { .. })
                });
                // One with problems of its own was reported there.
                if !ok && !declared.api_keys.contains(&id_text.as_str()) {
                    self.p.push(
                        pos(id),
                        format!("{key}.api_key_id"),
                        format!("no api_key principal is named {id_text:?}"),
                    );
                    return None;
                }
                Some(id_text)
            }
            None => None,
        };
        let basic_user = match &r.basic_user {
            Some(u) => {
                let user = self.string(u, &format!("{key}.basic_user"))?;
                let ok = principals.iter().any(|p| matches!(&p.matcher, PrincipalMatcher::Basic { user: pu, .. } if *pu == user));
                if !ok && !declared.basic_users.contains(&user.as_str()) {
                    self.p.push(
                        pos(u),
                        format!("{key}.basic_user"),
                        format!("no basic principal has user {user:?}"),
                    );
                    return None;
                }
                Some(user)
            }
            None => None,
        };
        let jwt = r
            .jwt
            .as_ref()
            .map(|c| c.value.clone().into_iter().collect());
        let source_ip = match &r.source_ip {
            Some(ip) => {
                let text = self.string(ip, &format!("{key}.source_ip"))?;
                match text.parse() {
                    Ok(a) => a,
                    Err(_) => {
                        self.p.push(
                            pos(ip),
                            format!("{key}.source_ip"),
                            format!("not an IP address: {text:?}"),
                        );
                        return None;
                    }
                }
            }
            None => std::net::IpAddr::from([127, 0, 0, 1]),
        };
        let mut headers = http::HeaderMap::new();
        if let Some(h) = &r.headers {
            for (name, value) in &h.value {
                match (
                    HeaderName::try_from(name.to_ascii_lowercase()),
                    http::HeaderValue::try_from(value.as_str()),
                ) {
                    (Ok(n), Ok(v)) => {
                        headers.append(n, v);
                    }
                    _ => self.p.push(
                        pos(h),
                        format!("{key}.headers"),
                        format!("invalid header {name:?}"),
                    ),
                }
            }
        }
        Some(TestRequest {
            method,
            path,
            host,
            cert,
            api_key_id,
            jwt,
            basic_user,
            totp: r.totp.as_ref().is_some_and(|t| t.value),
            oauth: match &r.oauth {
                Some(o) => {
                    let k = format!("{key}.oauth");
                    let mut text = |v: &Option<Sp<String>>, f: &str| match v {
                        Some(v) => self.string(v, &format!("{k}.{f}")).map(Some),
                        None => Some(None),
                    };
                    let client_id = text(&o.value.client_id, "client_id")?;
                    let sub = text(&o.value.sub, "sub")?;
                    let scope = text(&o.value.scope, "scope")?;
                    Some(crate::auth::oauth::Introspection {
                        active: true,
                        client_id,
                        sub,
                        scopes: scope
                            .map(|s| s.split_whitespace().map(str::to_owned).collect())
                            .unwrap_or_default(),
                        exp: None,
                    })
                }
                None => None,
            },
            token: match &r.token {
                Some(t) => Some(self.test_token(t, &format!("{key}.token"), principals)?),
                None => None,
            },
            source_ip,
            headers,
        })
    }

    /// `tests[].request.token`: a login token's claims, as the gateway would have issued them.
    fn test_token(
        &mut self,
        sp: &Sp<raw::RawTestToken>,
        key: &str,
        principals: &[Principal],
    ) -> Option<crate::auth::tokens::TokenClaims> {
        let t = &sp.value;
        let prn: Vec<String> = match &t.principals {
            Some(list) => self
                .strings(list, &format!("{key}.principals"))
                .into_iter()
                .map(|(name, p)| {
                    if !principals.iter().any(|q| q.name == name) {
                        self.p.push(
                            p,
                            format!("{key}.principals"),
                            format!("no principal is named {name:?}"),
                        );
                    }
                    name
                })
                .collect(),
            None => Vec::new(),
        };
        let mut amr = Vec::new();
        if let Some(list) = &t.amr {
            for (name, p) in self.strings(list, &format!("{key}.amr")) {
                match Factor::from_name(&name) {
                    Some(f) if f != Factor::Token => amr.push(name),
                    _ => self.p.push(
                        p,
                        format!("{key}.amr"),
                        format!("expected login factors such as basic or totp, got {name:?}"),
                    ),
                }
            }
        }
        let sub = match &t.sub {
            Some(s) => self.string(s, &format!("{key}.sub"))?,
            None => prn.first().cloned().unwrap_or_default(),
        };
        Some(crate::auth::tokens::TokenClaims {
            iss: String::new(),
            aud: String::new(),
            sub,
            exp: 0,
            iat: 0,
            jti: String::new(),
            prn,
            amr,
            cnf: None,
        })
    }

    // --- values ---

    /// Interpolates `${NAME}` from the environment; an unset variable is an error.
    fn string(&mut self, v: &Sp<String>, key: &str) -> Option<String> {
        let text = &v.value;
        if !text.contains("${") {
            return Some(text.clone());
        }
        let mut out = String::with_capacity(text.len());
        let mut rest = text.as_str();
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let Some(end) = after.find('}') else {
                self.p
                    .push(pos(v), key, "unterminated ${ in value (expected ${NAME})");
                return None;
            };
            let name = &after[..end];
            let valid = !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                self.p.push(
                    pos(v),
                    key,
                    format!("invalid environment variable name {name:?} in ${{...}}"),
                );
                return None;
            }
            match std::env::var(name) {
                Ok(value) => out.push_str(&value),
                Err(_) => {
                    self.p.push(
                        pos(v),
                        key,
                        format!("environment variable {name} is not set"),
                    );
                    return None;
                }
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Some(out)
    }

    fn addr(&mut self, v: &Sp<String>, key: &str) -> Option<SocketAddr> {
        let s = self.string(v, key)?;
        match s.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.p.push(
                    pos(v),
                    key,
                    format!("expected an address such as 0.0.0.0:8443 or [::1]:8443, got {s:?}"),
                );
                None
            }
        }
    }

    fn duration(
        &mut self,
        v: Option<&Sp<String>>,
        key: &str,
        default: Duration,
    ) -> Option<Duration> {
        let Some(v) = v else { return Some(default) };
        let s = self.string(v, key)?;
        match parse_duration(&s) {
            Ok(d) if d.is_zero() => {
                self.p.push(pos(v), key, "must be greater than zero");
                None
            }
            Ok(d) => Some(d),
            Err(m) => {
                self.p.push(pos(v), key, m);
                None
            }
        }
    }

    fn size(&mut self, v: Option<&Sp<String>>, key: &str, default: u64) -> Option<u64> {
        let Some(v) = v else { return Some(default) };
        let s = self.string(v, key)?;
        match parse_size(&s) {
            Ok(0) => {
                self.p.push(pos(v), key, "must be greater than zero");
                None
            }
            Ok(n) => Some(n),
            Err(m) => {
                self.p.push(pos(v), key, m);
                None
            }
        }
    }

    fn file(&mut self, v: &Sp<String>, key: &str) -> Option<FileRef> {
        let s = self.string(v, key)?;
        if s.is_empty() {
            self.p
                .push(pos(v), key, "expected a file path, got an empty string");
            return None;
        }
        let path = Path::new(&s);
        let path = if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base.join(path)
        };
        Some(FileRef {
            path,
            pos: pos(v),
            key: key.to_owned(),
        })
    }

    fn header_name(
        &mut self,
        v: Option<&Sp<String>>,
        key: &str,
        default: &'static str,
    ) -> Option<HeaderName> {
        let Some(v) = v else {
            return Some(HeaderName::from_static(default));
        };
        let s = self.string(v, key)?;
        match HeaderName::try_from(s.to_ascii_lowercase()) {
            Ok(h) => Some(h),
            Err(_) => {
                self.p.push(
                    pos(v),
                    key,
                    format!("{s:?} is not a valid HTTP header name"),
                );
                None
            }
        }
    }

    fn keyword<T: Copy>(
        &mut self,
        v: Option<&Sp<String>>,
        key: &str,
        choices: &[(&str, T)],
        default: T,
    ) -> Option<T> {
        let Some(v) = v else { return Some(default) };
        let s = self.string(v, key)?;
        if let Some((_, t)) = choices.iter().find(|(name, _)| *name == s) {
            return Some(*t);
        }
        let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
        self.p.push(
            pos(v),
            key,
            format!("expected one of {}, got {s:?}", names.join(", ")),
        );
        None
    }

    fn strings(&mut self, v: &Sp<Vec<Sp<String>>>, key: &str) -> Vec<(String, Pos)> {
        v.value
            .iter()
            .enumerate()
            .filter_map(|(i, item)| Some((self.string(item, &format!("{key}[{i}]"))?, pos(item))))
            .collect()
    }

    // --- sections ---

    /// A required, unique `name` of a principal or route.
    fn unique_name(
        &mut self,
        v: Option<&Sp<String>>,
        parent: Pos,
        key: &str,
        seen: &mut HashSet<String>,
        what: &str,
    ) -> Option<String> {
        let Some(v) = v else {
            self.p.push(
                parent,
                format!("{key}.name"),
                format!("missing: every {what} needs a name"),
            );
            return None;
        };
        let name = self.string(v, &format!("{key}.name"))?;
        if !seen.insert(name.clone()) {
            self.p.push(
                pos(v),
                format!("{key}.name"),
                format!("duplicate {what} name {name:?}"),
            );
        }
        Some(name)
    }

    fn tls(&mut self, t: &Sp<raw::RawTls>) -> Option<TlsSettings> {
        let raw = &t.value;
        let cert = self.required_file(raw.cert.as_ref(), "tls.cert", pos(t));
        let key = self.required_file(raw.key.as_ref(), "tls.key", pos(t));
        let client_auth = self.keyword(
            raw.client_auth.as_ref(),
            "tls.client_auth",
            &[
                ("required", ClientAuth::Required),
                ("optional", ClientAuth::Optional),
                ("off", ClientAuth::Off),
            ],
            ClientAuth::Required,
        );
        let client_ca = raw
            .client_ca
            .as_ref()
            .and_then(|v| self.file(v, "tls.client_ca"));
        if raw.client_ca.is_none() && client_auth != Some(ClientAuth::Off) {
            self.p.push(
                pos(t),
                "tls.client_ca",
                "missing: client certificates are verified against this bundle (or set client_auth: off)",
            );
        }
        let crls = match &raw.crl {
            Some(list) => list
                .value
                .iter()
                .enumerate()
                .filter_map(|(i, v)| self.file(v, &format!("tls.crl[{i}]")))
                .collect(),
            None => Vec::new(),
        };
        let crl_expired = self.keyword(
            raw.crl_expired.as_ref(),
            "tls.crl_expired",
            &[
                ("reject", CrlExpired::Reject),
                ("ignore", CrlExpired::Ignore),
            ],
            CrlExpired::Reject,
        );
        let min_version = self.keyword(
            raw.min_version.as_ref(),
            "tls.min_version",
            &[("1.2", TlsVersion::Tls12), ("1.3", TlsVersion::Tls13)],
            TlsVersion::Tls12,
        );
        let cipher_suites = self.cipher_suites(raw.cipher_suites.as_ref(), min_version);
        Some(TlsSettings {
            cert: cert?,
            key: key?,
            client_ca,
            client_auth: client_auth?,
            crls,
            crl_expired: crl_expired?,
            min_version: min_version?,
            cipher_suites: cipher_suites?,
        })
    }

    /// `tls.cipher_suites`: known IANA names, each once, at least one for TLS 1.3 (always on)
    /// and one for TLS 1.2 when it is accepted.
    fn cipher_suites(
        &mut self,
        v: Option<&Sp<Vec<Sp<String>>>>,
        min_version: Option<TlsVersion>,
    ) -> Option<Vec<&'static str>> {
        let Some(list) = v else {
            return Some(crate::config::CIPHER_SUITES.to_vec());
        };
        let key = "tls.cipher_suites";
        let mut chosen: Vec<&'static str> = Vec::new();
        let mut ok = true;
        for (name, at) in self.strings(list, key) {
            match crate::config::CIPHER_SUITES.iter().find(|s| **s == name) {
                Some(known) if chosen.contains(known) => {
                    self.p.push(at, key, format!("{name} is listed twice"));
                    ok = false;
                }
                Some(known) => chosen.push(known),
                None => {
                    self.p.push(
                        at,
                        key,
                        format!(
                            "unknown cipher suite {name:?} (known: {})",
                            crate::config::CIPHER_SUITES.join(", ")
                        ),
                    );
                    ok = false;
                }
            }
        }
        if !ok {
            return None;
        }
        let tls13 = chosen.iter().any(|s| crate::config::is_tls13_suite(s));
        let tls12 = chosen.iter().any(|s| !crate::config::is_tls13_suite(s));
        if !tls13 {
            self.p.push(
                pos(list),
                key,
                "no TLS 1.3 suite: TLS 1.3 is always accepted and needs one of TLS_AES_128_GCM_SHA256, TLS_AES_256_GCM_SHA384, TLS_CHACHA20_POLY1305_SHA256",
            );
            return None;
        }
        if !tls12 && min_version == Some(TlsVersion::Tls12) {
            self.p.push(
                pos(list),
                key,
                "no TLS 1.2 suite, so TLS 1.2 clients could not connect: add a TLS_ECDHE_* suite or set tls.min_version: \"1.3\"",
            );
            return None;
        }
        Some(chosen)
    }

    fn required_file(&mut self, v: Option<&Sp<String>>, key: &str, parent: Pos) -> Option<FileRef> {
        match v {
            Some(v) => self.file(v, key),
            None => {
                self.p
                    .push(parent, key, "missing: expected a PEM file path");
                None
            }
        }
    }

    fn upstreams(
        &mut self,
        raw: Option<&Sp<std::collections::BTreeMap<String, Sp<raw::RawUpstream>>>>,
    ) -> Vec<UpstreamSettings> {
        let Some(map) = raw else { return Vec::new() };
        let mut out = Vec::new();
        for (name, u) in &map.value {
            let key = format!("upstreams.{name}");
            let url = match &u.value.url {
                Some(v) => self.upstream_url(v, &format!("{key}.url")),
                None => {
                    self.p.push(
                        pos(u),
                        format!("{key}.url"),
                        "missing: expected http://host:port",
                    );
                    None
                }
            };
            let connect_timeout = self.duration(
                u.value.connect_timeout.as_ref(),
                &format!("{key}.connect_timeout"),
                Duration::from_secs(2),
            );
            let timeout = self.duration(
                u.value.timeout.as_ref(),
                &format!("{key}.timeout"),
                Duration::from_secs(30),
            );
            let read_timeout = self.duration(
                u.value.read_timeout.as_ref(),
                &format!("{key}.read_timeout"),
                Duration::from_secs(60),
            );
            let pool_idle_timeout = self.duration(
                u.value.pool_idle_timeout.as_ref(),
                &format!("{key}.pool_idle_timeout"),
                Duration::from_secs(4),
            );
            if let (
                Some(url),
                Some(connect_timeout),
                Some(timeout),
                Some(read_timeout),
                Some(pool_idle_timeout),
            ) = (
                url,
                connect_timeout,
                timeout,
                read_timeout,
                pool_idle_timeout,
            ) {
                out.push(UpstreamSettings {
                    name: name.clone(),
                    url,
                    connect_timeout,
                    timeout,
                    read_timeout,
                    pool_idle_timeout,
                });
            }
        }
        out
    }

    fn upstream_url(&mut self, v: &Sp<String>, key: &str) -> Option<Uri> {
        let s = self.string(v, key)?;
        let uri: Uri = match s.parse() {
            Ok(u) => u,
            Err(_) => {
                self.p.push(
                    pos(v),
                    key,
                    format!("expected a URL such as http://127.0.0.1:8080, got {s:?}"),
                );
                return None;
            }
        };
        if uri.scheme_str() != Some("http") || uri.authority().is_none() {
            self.p.push(
                pos(v),
                key,
                format!("expected a plaintext http://host:port URL, got {s:?}"),
            );
            return None;
        }
        if uri.query().is_some() {
            self.p
                .push(pos(v), key, "an upstream URL cannot have a query string");
            return None;
        }
        Some(uri)
    }

    fn principals(&mut self, raw: &[Sp<raw::RawPrincipal>]) -> Vec<Principal> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        let mut api_keys = HashSet::new();
        let mut users = HashSet::new();
        for (i, sp) in raw.iter().enumerate() {
            let key = format!("principals[{i}]");
            let p = &sp.value;
            let name = self.unique_name(p.name.as_ref(), pos(sp), &key, &mut seen, "principal");
            let matcher = self.principal_matcher(sp, &key, &mut api_keys, &mut users);
            let roles = match &p.roles {
                Some(r) => self
                    .strings(r, &format!("{key}.roles"))
                    .into_iter()
                    .map(|(s, _)| s)
                    .collect(),
                None => Vec::new(),
            };
            let totp = match &p.totp {
                Some(t) => match self.principal_totp(t, &format!("{key}.totp")) {
                    Some(t) => Some(t),
                    None => continue,
                },
                None => None,
            };
            if let (Some(name), Some(matcher)) = (name, matcher) {
                out.push(Principal {
                    name,
                    matcher,
                    roles,
                    totp,
                });
            }
        }
        out
    }

    /// `principals[].totp`: exactly one of `secret` (base32, usually `${ENV}`) and
    /// `secret_file`. A literal secret in a file others can read is a warning.
    fn principal_totp(&mut self, sp: &Sp<raw::RawPrincipalTotp>, key: &str) -> Option<TotpSource> {
        let t = &sp.value;
        match (&t.secret, &t.secret_file) {
            (Some(s), None) => {
                let k = format!("{key}.secret");
                let text = self.string(s, &k)?;
                let secret = match crate::auth::totp::parse_secret(&text) {
                    Ok(b) => b,
                    Err(m) => {
                        self.p.push(pos(s), &k, m);
                        return None;
                    }
                };
                if !s.value.contains("${") && self.world_readable {
                    self.warn(
                        pos(s),
                        &k,
                        "a literal TOTP secret in a configuration file every user can read; \
                         use secret: \"${ENV_VAR}\" or secret_file:, or chmod o-r the file",
                    );
                }
                Some(TotpSource::Inline(Secret(secret)))
            }
            (None, Some(f)) => Some(TotpSource::File(
                self.file(f, &format!("{key}.secret_file"))?,
            )),
            (Some(_), Some(_)) => {
                self.p
                    .push(pos(sp), key, "give secret or secret_file, not both");
                None
            }
            (None, None) => {
                self.p.push(
                    pos(sp),
                    key,
                    "missing: secret (base32, e.g. \"${ALICE_TOTP}\") or secret_file; \
                     `portcullis totp new` makes one",
                );
                None
            }
        }
    }

    /// `oauth:`: where and as whom the gateway introspects tokens.
    fn oauth(&mut self, sp: &Sp<raw::RawOauth>) -> Option<OauthSettings> {
        let o = &sp.value;
        let url = match &o.introspection_url {
            Some(v) => {
                let text = self.string(v, "oauth.introspection_url")?;
                let parsed = text.parse::<Uri>().ok().filter(|u| u.host().is_some());
                let loopback = |u: &Uri| {
                    u.host().is_some_and(|h| {
                        h == "localhost"
                            || h.trim_matches(['[', ']'])
                                .parse::<std::net::IpAddr>()
                                .is_ok_and(|ip| ip.is_loopback())
                    })
                };
                match parsed {
                    Some(u) if u.scheme_str() == Some("https") => Some(u),
                    Some(u) if u.scheme_str() == Some("http") && loopback(&u) => Some(u),
                    Some(_) => {
                        self.p.push(pos(v), "oauth.introspection_url", "must use https (http only on a loopback address): the client secret and tokens travel in it");
                        None
                    }
                    None => {
                        self.p.push(
                            pos(v),
                            "oauth.introspection_url",
                            format!("{text:?} is not a valid URL"),
                        );
                        None
                    }
                }
            }
            None => {
                self.p.push(
                    pos(sp),
                    "oauth.introspection_url",
                    "missing: the identity provider's RFC 7662 endpoint",
                );
                None
            }
        };
        let client_id = match &o.client_id {
            Some(v) => self.string(v, "oauth.client_id"),
            None => {
                self.p.push(
                    pos(sp),
                    "oauth.client_id",
                    "missing: the gateway's client id at the identity provider",
                );
                None
            }
        };
        let client_secret = match &o.client_secret {
            Some(v) => self
                .string(v, "oauth.client_secret")
                .map(|s| Secret(s.into_bytes())),
            None => {
                self.p.push(
                    pos(sp),
                    "oauth.client_secret",
                    "missing: write it as \"${INTROSPECTION_SECRET}\"",
                );
                None
            }
        };
        let ca = match &o.ca {
            Some(v) => Some(self.file(v, "oauth.ca")?),
            None => None,
        };
        let cache = self.duration(o.cache.as_ref(), "oauth.cache", Duration::from_secs(60));
        let timeout = self.duration(o.timeout.as_ref(), "oauth.timeout", Duration::from_secs(2));
        Some(OauthSettings {
            introspection_url: url?,
            client_id: client_id?,
            client_secret: client_secret?,
            ca,
            cache: cache?,
            timeout: timeout?,
        })
    }

    /// A value given inline (`key`) or as a file holding it (`key_file`), trimmed; exactly one.
    /// Returns it with the position errors about it should name.
    fn value_or_file<T>(
        &mut self,
        parent: &Sp<T>,
        inline: Option<&Sp<String>>,
        file: Option<&Sp<String>>,
        key: &str,
        missing: &str,
    ) -> Option<(String, Pos)> {
        match (inline, file) {
            (Some(v), None) => Some((self.string(v, key)?, pos(v))),
            (None, Some(f)) => {
                let fkey = format!("{key}_file");
                let f = self.file(f, &fkey)?;
                match std::fs::read_to_string(&f.path) {
                    Ok(text) => Some((text.trim().to_owned(), f.pos)),
                    Err(e) => {
                        let why = crate::config::read_error(&f.path, &e);
                        self.p
                            .push(f.pos, &fkey, format!("{}: {why}", f.path.display()));
                        None
                    }
                }
            }
            (Some(_), Some(_)) => {
                self.p.push(
                    pos(parent),
                    key,
                    format!("give {key} or {key}_file, not both"),
                );
                None
            }
            (None, None) => {
                self.p.push(pos(parent), key, missing);
                None
            }
        }
    }

    /// `tokens:`: the login, logout and JWKS paths, the key, and what a login must prove.
    fn tokens(
        &mut self,
        sp: &Sp<raw::RawTokens>,
        principals: &[Principal],
    ) -> Option<TokenSettings> {
        let t = &sp.value;
        let signing_key = match &t.signing_key {
            Some(k) => self.file(k, "tokens.signing_key"),
            None => {
                self.p.push(
                    pos(sp),
                    "tokens.signing_key",
                    "missing: a PKCS#8 PEM key, P-256 or Ed25519 (openssl genpkey -algorithm ed25519 -out token-signing.key)",
                );
                None
            }
        };
        let mut path = |v: Option<&Sp<String>>, key: &str, default: &str| -> Option<String> {
            let Some(v) = v else {
                return Some(default.to_owned());
            };
            let s = self.string(v, key)?;
            match crate::policy::normalize_path(&s) {
                Ok(n) if n == s => Some(s),
                _ => {
                    self.p.push(
                        pos(v),
                        key,
                        format!("{s:?} is not a normalized absolute path such as /auth/login"),
                    );
                    None
                }
            }
        };
        let login_path = path(t.login_path.as_ref(), "tokens.login_path", "/auth/login");
        let logout_path = path(t.logout_path.as_ref(), "tokens.logout_path", "/auth/logout");
        let jwks_path = path(
            t.jwks_path.as_ref(),
            "tokens.jwks_path",
            "/.well-known/jwks.json",
        );
        if let (Some(a), Some(b), Some(c)) = (&login_path, &logout_path, &jwks_path)
            && (a == b || a == c || b == c)
        {
            self.p.push(
                pos(sp),
                "tokens",
                "login_path, logout_path and jwks_path must differ",
            );
        }
        let mut login_factors = Vec::new();
        match &t.login_factors {
            Some(list) => {
                for (name, p) in self.strings(list, "tokens.login_factors") {
                    match Factor::from_name(&name) {
                        Some(Factor::Token) => self.p.push(
                            p,
                            "tokens.login_factors",
                            "a login proves credentials, not a token (a token minting tokens would never expire)",
                        ),
                        Some(f) if !login_factors.contains(&f) => login_factors.push(f),
                        Some(_) => {}
                        None => self.p.push(
                            p,
                            "tokens.login_factors",
                            format!("expected certificate, api_key, jwt, basic or totp, got {name:?}"),
                        ),
                    }
                }
                if login_factors.is_empty() {
                    self.p.push(
                        pos(list),
                        "tokens.login_factors",
                        "name at least one factor, e.g. [basic, totp]",
                    );
                }
            }
            None => self.p.push(
                pos(sp),
                "tokens.login_factors",
                "missing: the factors a login must prove, e.g. [basic, totp]",
            ),
        }
        if login_factors.contains(&Factor::Totp) && !principals.iter().any(|p| p.totp.is_some()) {
            self.warn(
                pos(sp),
                "tokens.login_factors",
                "totp is required to log in, but no principal has a totp secret: nobody can log in",
            );
        }
        let ttl = self.duration(t.ttl.as_ref(), "tokens.ttl", Duration::from_secs(15 * 60));
        let ttl = match (ttl, &t.ttl) {
            (Some(d), Some(v))
                if d > Duration::from_secs(24 * 3600) || d < Duration::from_secs(10) =>
            {
                self.p.push(
                    pos(v),
                    "tokens.ttl",
                    "expected 10s to 24h (a login token is short-lived; 15m is usual)",
                );
                None
            }
            (d, _) => d,
        };
        let audience = match &t.audience {
            Some(v) => self.string(v, "tokens.audience"),
            None => Some("portcullis".to_owned()),
        };
        let issuer = match &t.issuer {
            Some(v) => self.string(v, "tokens.issuer"),
            None => Some("portcullis".to_owned()),
        };
        Some(TokenSettings {
            signing_key: signing_key?,
            login_path: login_path?,
            login_factors,
            logout_path: logout_path?,
            jwks_path: jwks_path?,
            ttl: ttl?,
            audience: audience?,
            issuer: issuer?,
        })
    }

    /// `totp:`: the header codes arrive in and how they are computed.
    fn totp_settings(&mut self, sp: Option<&Sp<raw::RawTotp>>) -> Option<TotpSettings> {
        let t = sp.map(|s| &s.value);
        let header = self.header_name(t.and_then(|t| t.header.as_ref()), "totp.header", "x-otp");
        let digits = match t.and_then(|t| t.digits.as_ref()) {
            Some(d) if !(6..=8).contains(&d.value) => {
                self.p
                    .push(pos(d), "totp.digits", "expected 6, 7 or 8 (RFC 4226)");
                None
            }
            Some(d) => u8::try_from(d.value).ok(),
            None => Some(6),
        };
        let period = self.duration(
            t.and_then(|t| t.period.as_ref()),
            "totp.period",
            Duration::from_secs(30),
        );
        let period = match (period, t.and_then(|t| t.period.as_ref())) {
            (Some(d), Some(at)) if d.subsec_nanos() != 0 || d.as_secs() > 600 => {
                self.p.push(
                    pos(at),
                    "totp.period",
                    "expected whole seconds, at most 10m (authenticator apps use 30s)",
                );
                None
            }
            (d, _) => d.map(|d| d.as_secs()),
        };
        let skew = match t.and_then(|t| t.skew.as_ref()) {
            Some(s) if s.value > 3 => {
                self.p.push(
                    pos(s),
                    "totp.skew",
                    "expected 0 to 3 steps (RFC 6238 recommends 1)",
                );
                None
            }
            Some(s) => u8::try_from(s.value).ok(),
            None => Some(1),
        };
        Some(TotpSettings {
            header: header?,
            digits: digits?,
            period: period?,
            skew: skew?,
        })
    }

    /// Exactly one of cert, api_key, jwt, basic.
    fn principal_matcher(
        &mut self,
        sp: &Sp<raw::RawPrincipal>,
        key: &str,
        api_keys: &mut HashSet<[u8; 32]>,
        users: &mut HashSet<String>,
    ) -> Option<PrincipalMatcher> {
        let p = &sp.value;
        let given = [
            p.cert.is_some(),
            p.api_key.is_some(),
            p.jwt.is_some(),
            p.basic.is_some(),
            p.oauth.is_some(),
        ];
        match given.iter().filter(|g| **g).count() {
            1 => {}
            0 => {
                self.p.push(
                    pos(sp),
                    key,
                    "expected one credential matcher: cert, api_key, jwt, basic or oauth",
                );
                return None;
            }
            _ => {
                self.p.push(
                    pos(sp),
                    key,
                    "one principal takes one credential matcher (cert, api_key, jwt, basic or oauth); \
                     to demand several credentials at once use allow.factors on the route",
                );
                return None;
            }
        }
        if let Some(c) = &p.cert {
            return self
                .cert_matcher(c, &format!("{key}.cert"))
                .map(|m| PrincipalMatcher::Cert(Box::new(m)));
        }
        if let Some(a) = &p.api_key {
            let k = format!("{key}.api_key");
            let (text, h) = self.value_or_file(
                a,
                a.value.sha256.as_ref(),
                a.value.sha256_file.as_ref(),
                &format!("{k}.sha256"),
                "missing: the hex SHA-256 of the key (`portcullis keys new` prints it), or sha256_file",
            )?;
            let Some(sha256) = hex::decode(text.trim())
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
            else {
                self.p.push(
                    h,
                    format!("{k}.sha256"),
                    "expected 64 hex digits: the SHA-256 of the key, never the key itself",
                );
                return None;
            };
            if !api_keys.insert(sha256) {
                self.p.push(
                    h,
                    format!("{k}.sha256"),
                    "the same key hash is given to another principal",
                );
            }
            let expires = match &a.value.expires {
                Some(e) => {
                    let text = self.string(e, &format!("{k}.expires"))?;
                    let format = time::macros::format_description!("[year]-[month]-[day]");
                    match time::Date::parse(text.trim(), &format) {
                        Ok(d) => Some(d),
                        Err(_) => {
                            self.p.push(
                                pos(e),
                                format!("{k}.expires"),
                                format!("expected a date such as 2027-06-30, got {text:?}"),
                            );
                            return None;
                        }
                    }
                }
                None => None,
            };
            return Some(PrincipalMatcher::ApiKey { sha256, expires });
        }
        if let Some(o) = &p.oauth {
            let k = format!("{key}.oauth");
            let o_ = &o.value;
            let client_id = match &o_.client_id {
                Some(v) => Some(Glob::new(
                    &self.string(v, &format!("{k}.client_id"))?,
                    false,
                )),
                None => None,
            };
            let sub = match &o_.sub {
                Some(v) => Some(Glob::new(&self.string(v, &format!("{k}.sub"))?, false)),
                None => None,
            };
            let scopes: Vec<String> = match &o_.scope {
                Some(v) => self
                    .string(v, &format!("{k}.scope"))?
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect(),
                None => Vec::new(),
            };
            if client_id.is_none() && sub.is_none() && scopes.is_empty() {
                self.p.push(
                    pos(o),
                    &k,
                    "expected client_id, sub or scope: an empty matcher would take every active token",
                );
                return None;
            }
            return Some(PrincipalMatcher::Oauth {
                client_id,
                sub,
                scopes,
            });
        }
        if let Some(j) = &p.jwt {
            let k = format!("{key}.jwt");
            let Some(claim) = &j.value.claim else {
                self.p.push(
                    pos(j),
                    format!("{k}.claim"),
                    "missing: the claim to test, e.g. groups or sub",
                );
                return None;
            };
            let claim = self.string(claim, &format!("{k}.claim"))?;
            let test = match (&j.value.contains, &j.value.equals) {
                (Some(c), None) => ClaimTest::Contains(self.string(c, &format!("{k}.contains"))?),
                (None, Some(e)) => {
                    ClaimTest::Equals(Glob::new(&self.string(e, &format!("{k}.equals"))?, false))
                }
                _ => {
                    self.p.push(
                        pos(j),
                        &k,
                        "expected exactly one of contains (array member) or equals (glob)",
                    );
                    return None;
                }
            };
            return Some(PrincipalMatcher::Jwt { claim, test });
        }
        if let Some(b) = &p.basic {
            let k = format!("{key}.basic");
            let Some(user) = &b.value.user else {
                self.p.push(
                    pos(b),
                    &k,
                    "expected user and argon2 (`portcullis passwd` prints the hash)",
                );
                return None;
            };
            let user_name = self.string(user, &format!("{k}.user"))?;
            if user_name.is_empty() || user_name.contains(':') {
                self.p.push(
                    pos(user),
                    format!("{k}.user"),
                    "a Basic user name is non-empty and has no ':'",
                );
                return None;
            }
            if !users.insert(user_name.clone()) {
                self.p.push(
                    pos(user),
                    format!("{k}.user"),
                    format!("duplicate Basic user {user_name:?}"),
                );
            }
            let (phc, hash_pos) = self.value_or_file(
                b,
                b.value.argon2.as_ref(),
                b.value.argon2_file.as_ref(),
                &format!("{k}.argon2"),
                "missing: argon2 (`portcullis passwd` prints the hash) or argon2_file",
            )?;
            match argon2::PasswordHash::new(&phc) {
                Ok(h) if h.algorithm.as_str() == "argon2id" => {}
                _ => {
                    self.p.push(hash_pos, format!("{k}.argon2"), "expected an argon2id hash ($argon2id$v=19$...) as `portcullis passwd` prints");
                    return None;
                }
            }
            return Some(PrincipalMatcher::Basic {
                user: user_name,
                argon2: phc,
            });
        }
        None
    }

    fn cert_matcher(&mut self, sp: &Sp<raw::RawCertMatch>, key: &str) -> Option<CertMatcher> {
        let c = &sp.value;
        let mut glob = |v: &Option<Sp<String>>, field: &str, ci: bool| -> Option<Glob> {
            let v = v.as_ref()?;
            let s = self.string(v, &format!("{key}.{field}"))?;
            if s.is_empty() {
                self.p.push(
                    pos(v),
                    format!("{key}.{field}"),
                    "an empty pattern matches nothing; use \"*\" for any",
                );
                return None;
            }
            Some(Glob::new(&s, ci))
        };
        let m = CertMatcher {
            cn: glob(&c.cn, "cn", false),
            o: glob(&c.o, "o", false),
            ou: glob(&c.ou, "ou", false),
            san_dns: glob(&c.san_dns, "san_dns", true),
            san_uri: glob(&c.san_uri, "san_uri", false),
            san_email: glob(&c.san_email, "san_email", true),
            fingerprint_sha256: None,
        };
        let fingerprint_sha256 = match &c.fingerprint_sha256 {
            Some(v) => {
                let s = self.string(v, &format!("{key}.fingerprint_sha256"))?;
                let hexed: String = s.chars().filter(|c| *c != ':').collect();
                match hex::decode(&hexed)
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                {
                    Some(fp) => Some(fp),
                    None => {
                        self.p.push(
                            pos(v),
                            format!("{key}.fingerprint_sha256"),
                            "expected 64 hex digits (colons allowed), as `openssl x509 -fingerprint -sha256` prints",
                        );
                        return None;
                    }
                }
            }
            None => None,
        };
        let m = CertMatcher {
            fingerprint_sha256,
            ..m
        };
        let any = m.cn.is_some()
            || m.o.is_some()
            || m.ou.is_some()
            || m.san_dns.is_some()
            || m.san_uri.is_some()
            || m.san_email.is_some()
            || m.fingerprint_sha256.is_some();
        if !any {
            self.p.push(
                pos(sp),
                key,
                "expected at least one of cn, o, ou, san_dns, san_uri, san_email, fingerprint_sha256",
            );
            return None;
        }
        Some(m)
    }

    fn routes(
        &mut self,
        raw: Option<&Sp<Vec<Sp<raw::RawRoute>>>>,
        upstreams: &[UpstreamSettings],
        upstream_names: &[&str],
        principals: &[Principal],
        default_limit: Option<LimitSpec>,
    ) -> Vec<RouteSettings> {
        let Some(list) = raw else {
            self.p.push(
                Pos { line: 1, column: 1 },
                "routes",
                "missing: without routes every request is 404",
            );
            return Vec::new();
        };
        let known_roles: BTreeSet<&str> = principals
            .iter()
            .flat_map(|p| p.roles.iter().map(String::as_str))
            .collect();
        let mut names = HashSet::new();
        let mut out = Vec::new();
        for (i, sp) in list.value.iter().enumerate() {
            let key = format!("routes[{i}]");
            let r = &sp.value;
            let name = self.unique_name(r.name.as_ref(), pos(sp), &key, &mut names, "route");
            let matcher = match &r.match_ {
                Some(m) => self.route_match(m, &format!("{key}.match")),
                None => {
                    self.p.push(
                        pos(sp),
                        format!("{key}.match"),
                        "missing: expected e.g. { prefix: /api/ }",
                    );
                    None
                }
            };
            let upstream = match &r.upstream {
                Some(u) => {
                    self.upstream_ref(u, &format!("{key}.upstream"), upstreams, upstream_names)
                }
                None => {
                    self.p.push(
                        pos(sp),
                        format!("{key}.upstream"),
                        "missing: the name of an entry under upstreams",
                    );
                    None
                }
            };
            let allow = match &r.allow {
                Some(a) => self.allow(a, &format!("{key}.allow"), &known_roles),
                None => {
                    self.p.push(
                        pos(sp),
                        format!("{key}.allow"),
                        "missing: expected anyone, authenticated or { roles: [...] } (routes deny by default)",
                    );
                    None
                }
            };
            let strip_prefix = match &r.strip_prefix {
                Some(v) => {
                    let s = self.string(v, &format!("{key}.strip_prefix"));
                    match s {
                        Some(s) if s.starts_with('/') => Some(s.trim_end_matches('/').to_owned()),
                        Some(s) => {
                            self.p.push(
                                pos(v),
                                format!("{key}.strip_prefix"),
                                format!("must start with /, got {s:?}"),
                            );
                            None
                        }
                        None => None,
                    }
                }
                None => None,
            };
            let websocket = r.websocket.as_ref().is_some_and(|w| w.value);
            let rate_limit = match &r.rate_limit {
                Some(l) => match self.limit_spec(l, &format!("{key}.rate_limit")) {
                    Some(spec) => Some(spec),
                    None => continue,
                },
                None => default_limit,
            };
            if let (Some(name), Some(matcher), Some(upstream), Some(allow)) =
                (name, matcher, upstream, allow)
            {
                out.push(RouteSettings {
                    name: name.into(),
                    matcher,
                    upstream,
                    allow,
                    strip_prefix,
                    websocket,
                    rate_limit,
                });
            }
        }
        out
    }

    fn route_match(&mut self, sp: &Sp<raw::RawMatch>, key: &str) -> Option<RouteMatch> {
        let m = &sp.value;
        let mut path = |v: &Option<Sp<String>>, field: &str| -> Option<Option<String>> {
            let Some(v) = v else { return Some(None) };
            let s = self.string(v, &format!("{key}.{field}"))?;
            if !s.starts_with('/') {
                self.p.push(
                    pos(v),
                    format!("{key}.{field}"),
                    format!("must start with /, got {s:?}"),
                );
                return None;
            }
            match crate::policy::normalize_path(&s) {
                Ok(n)
                    if n == s
                        || (field == "prefix" && n == s.trim_end_matches('/'))
                        || n == "/" =>
                {
                    Some(Some(s))
                }
                _ => {
                    self.p.push(
                        pos(v),
                        format!("{key}.{field}"),
                        format!("{s:?} is not a normalized path (no dot segments, //, %-escapes or \\); requests are matched after normalization"),
                    );
                    None
                }
            }
        };
        let exact = path(&m.exact, "exact");
        let prefix = path(&m.prefix, "prefix");
        if let (Some(Some(_)), Some(Some(_))) = (&exact, &prefix) {
            self.p
                .push(pos(sp), key, "exact and prefix cannot both be set");
            return None;
        }
        let host = match &m.host {
            Some(h) => Some(Glob::new(&self.string(h, &format!("{key}.host"))?, true)),
            None => None,
        };
        let methods = match &m.methods {
            Some(list) => {
                let mut out = Vec::new();
                for (s, p) in self.strings(list, &format!("{key}.methods")) {
                    let valid = !s.is_empty() && s.bytes().all(|b| b.is_ascii_uppercase());
                    match Method::from_bytes(s.as_bytes()) {
                        Ok(m) if valid => out.push(m),
                        _ => self.p.push(
                            p,
                            format!("{key}.methods"),
                            format!("expected an upper-case HTTP method such as GET, got {s:?}"),
                        ),
                    }
                }
                Some(out)
            }
            None => None,
        };
        let prefix = prefix?.map(|p| {
            if p == "/" {
                p
            } else {
                p.trim_end_matches('/').to_owned()
            }
        });
        Some(RouteMatch {
            exact: exact?,
            prefix,
            host,
            methods,
            // Set from limits.path_case once limits are resolved.
            case_insensitive: false,
        })
    }

    fn upstream_ref(
        &mut self,
        v: &Sp<String>,
        key: &str,
        upstreams: &[UpstreamSettings],
        names: &[&str],
    ) -> Option<usize> {
        let s = self.string(v, key)?;
        if let Some(i) = upstreams.iter().position(|u| u.name == s) {
            return Some(i);
        }
        // A defined upstream with problems of its own was already reported there.
        if !names.contains(&s.as_str()) {
            self.p.push(
                pos(v),
                key,
                format!("unknown upstream {s:?} ({})", known(names.iter().copied())),
            );
        }
        None
    }

    fn allow(
        &mut self,
        sp: &Sp<RawAllow>,
        key: &str,
        known_roles: &BTreeSet<&str>,
    ) -> Option<Allow> {
        match &sp.value {
            RawAllow::Keyword(k) if k == "anyone" => Some(Allow::Anyone),
            RawAllow::Keyword(k) if k == "authenticated" => Some(Allow::Authenticated),
            RawAllow::Keyword(k) => {
                self.p.push(
                    pos(sp),
                    key,
                    format!("expected anyone, authenticated or {{ roles: [...] }}, got {k:?}"),
                );
                None
            }
            RawAllow::Rules(rules) => {
                let roles = match &rules.roles {
                    Some(list) => {
                        let roles = self.strings(list, &format!("{key}.roles"));
                        for (role, p) in &roles {
                            if !known_roles.contains(role.as_str()) {
                                // A warning, not an error: a deliberately closed route, or a
                                // role whose principals are not written yet, is valid.
                                let known = known(known_roles.iter().copied());
                                self.warn(
                                    *p,
                                    format!("{key}.roles"),
                                    format!("no principal grants role {role:?}, so nobody holds it ({known})"),
                                );
                            }
                        }
                        if roles.is_empty() {
                            self.p.push(
                                pos(list),
                                format!("{key}.roles"),
                                "an empty role list allows nobody; list roles or leave the key out",
                            );
                            return None;
                        }
                        roles.into_iter().map(|(s, _)| s).collect()
                    }
                    None => Vec::new(),
                };
                let mut factors = Vec::new();
                if let Some(list) = &rules.factors {
                    for (name, p) in self.strings(list, &format!("{key}.factors")) {
                        match Factor::from_name(&name) {
                            Some(f) if !factors.contains(&f) => factors.push(f),
                            Some(_) => {}
                            None => self.p.push(
                                p,
                                format!("{key}.factors"),
                                format!(
                                    "expected certificate, api_key, jwt, basic, totp or token, got {name:?}"
                                ),
                            ),
                        }
                    }
                }
                let when = match &rules.when {
                    Some(w) => self.when(w, &format!("{key}.when"))?,
                    None => Vec::new(),
                };
                if roles.is_empty() && factors.is_empty() && when.is_empty() {
                    self.p.push(
                        pos(sp),
                        key,
                        "an empty rule: give roles, factors or when (or use anyone/authenticated)",
                    );
                    return None;
                }
                Some(Allow::Rules(AllowRules {
                    roles,
                    factors,
                    when,
                }))
            }
        }
    }

    fn when(&mut self, sp: &Sp<raw::RawWhen>, key: &str) -> Option<Vec<Condition>> {
        let w = &sp.value;
        let mut out = Vec::new();
        let mut ok = true;
        if let Some(ips) = &w.source_ip {
            let mut nets = Vec::new();
            for text in &ips.value.0 {
                let parsed = text
                    .parse::<ipnet::IpNet>()
                    .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
                match parsed {
                    Ok(n) => nets.push(n.trunc()),
                    Err(_) => {
                        self.p.push(
                            pos(ips),
                            format!("{key}.source_ip"),
                            format!(
                                "expected a CIDR such as 10.0.0.0/8 or an address, got {text:?}"
                            ),
                        );
                        ok = false;
                    }
                }
            }
            out.push(Condition::SourceIp(nets));
        }
        if let Some(cert) = &w.cert {
            let mut fields = Vec::new();
            for (name, globs) in &cert.value {
                let field = match name.as_str() {
                    "cn" => CertField::Cn,
                    "o" => CertField::O,
                    "ou" => CertField::Ou,
                    "san_dns" => CertField::SanDns,
                    "san_uri" => CertField::SanUri,
                    "san_email" => CertField::SanEmail,
                    other => {
                        self.p.push(
                            pos(cert),
                            format!("{key}.cert.{other}"),
                            "expected one of cn, o, ou, san_dns, san_uri, san_email",
                        );
                        ok = false;
                        continue;
                    }
                };
                let ci = matches!(field, CertField::SanDns | CertField::SanEmail);
                fields.push((field, globs.0.iter().map(|g| Glob::new(g, ci)).collect()));
            }
            out.push(Condition::Cert(fields));
        }
        if let Some(claims) = &w.claims {
            let list = claims
                .value
                .iter()
                .map(|(k, g)| (k.clone(), g.0.iter().map(|g| Glob::new(g, false)).collect()))
                .collect();
            out.push(Condition::Claims(list));
        }
        if let Some(headers) = &w.headers {
            let mut list = Vec::new();
            for (name, globs) in &headers.value {
                match HeaderName::try_from(name.to_ascii_lowercase()) {
                    Ok(h)
                        if self.protected_headers.contains(&h)
                            || crate::proxy::headers::is_forwarding(h.as_str()) =>
                    {
                        self.p.push(
                            pos(headers),
                            format!("{key}.headers.{name}"),
                            format!(
                                "{name:?} is set or removed by the gateway (identity, credential or \
                                 forwarding header), so a condition on it would read what the \
                                 client sent; use allow.roles, when.cert or when.claims instead"
                            ),
                        );
                        ok = false;
                    }
                    Ok(h) => list.push((h, globs.0.iter().map(|g| Glob::new(g, false)).collect())),
                    Err(_) => {
                        self.p.push(
                            pos(headers),
                            format!("{key}.headers"),
                            format!("{name:?} is not a valid header name"),
                        );
                        ok = false;
                    }
                }
            }
            out.push(Condition::Headers(list));
        }
        ok.then_some(out)
    }

    fn forward(&mut self, raw: Option<&Sp<raw::RawForward>>) -> Option<ForwardSettings> {
        let f = raw.map(|f| &f.value);
        let h = f.and_then(|f| f.headers.as_ref()).map(|h| &h.value);
        let get = |pick: fn(&raw::RawForwardHeaders) -> &Option<Sp<String>>| {
            h.and_then(|h| pick(h).as_ref())
        };
        let client_cert_format = self.keyword(
            get(|h| &h.client_cert_format),
            "forward.headers.client_cert_format",
            &[("xfcc", CertFormat::Xfcc), ("rfc9440", CertFormat::Rfc9440)],
            CertFormat::Xfcc,
        );
        let underscore_headers = self.keyword(
            f.and_then(|f| f.underscore_headers.as_ref()),
            "forward.underscore_headers",
            &[
                ("allow", UnderscoreHeaders::Allow),
                ("drop", UnderscoreHeaders::Drop),
                ("reject", UnderscoreHeaders::Reject),
            ],
            UnderscoreHeaders::Allow,
        );
        let trusted_client_headers =
            self.trusted_client_headers(f.and_then(|f| f.trusted_client_headers.as_ref()));
        let default_cert_header = match client_cert_format {
            Some(CertFormat::Rfc9440) => "client-cert",
            _ => "x-forwarded-client-cert",
        };
        Some(ForwardSettings {
            identity: self.header_name(
                get(|h| &h.identity),
                "forward.headers.identity",
                "x-client-id",
            )?,
            principals: self.header_name(
                get(|h| &h.principals),
                "forward.headers.principals",
                "x-client-principals",
            )?,
            roles: self.header_name(
                get(|h| &h.roles),
                "forward.headers.roles",
                "x-client-roles",
            )?,
            factors: self.header_name(
                get(|h| &h.factors),
                "forward.headers.factors",
                "x-client-auth",
            )?,
            client_cert: self.header_name(
                get(|h| &h.client_cert),
                "forward.headers.client_cert",
                default_cert_header,
            )?,
            client_cert_format: client_cert_format?,
            request_id: self.header_name(
                get(|h| &h.request_id),
                "forward.headers.request_id",
                "x-request-id",
            )?,
            x_forwarded: f
                .and_then(|f| f.x_forwarded.as_ref())
                .is_none_or(|v| v.value),
            credentials: f
                .and_then(|f| f.credentials.as_ref())
                .is_some_and(|v| v.value),
            underscore_headers: underscore_headers?,
            trusted_client_headers: trusted_client_headers?,
        })
    }

    fn trusted_client_headers(
        &mut self,
        list: Option<&Sp<Vec<Sp<String>>>>,
    ) -> Option<Vec<HeaderName>> {
        let Some(list) = list else {
            return Some(Vec::new());
        };
        let mut out = Vec::new();
        let mut ok = true;
        for (i, (name, at)) in self
            .strings(list, "forward.trusted_client_headers")
            .into_iter()
            .enumerate()
        {
            let key = format!("forward.trusted_client_headers[{i}]");
            match HeaderName::try_from(name.to_ascii_lowercase()) {
                Ok(h) if crate::proxy::headers::is_forwarding(h.as_str()) => out.push(h),
                _ => {
                    self.p.push(
                        at,
                        key,
                        format!(
                            "{name:?} is not a forwarding header; expected one of forwarded, \
                             x-forwarded-*, x-real-ip, x-original-url, x-original-uri, \
                             x-rewrite-url, x-http-method-override, x-http-method, \
                             x-method-override, x-client-ip, true-client-ip, client-ip, \
                             x-cluster-client-ip"
                        ),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    fn limits(&mut self, raw: Option<&Sp<raw::RawLimits>>) -> Option<Limits> {
        let l = raw.map(|l| &l.value);
        let max_header_bytes = self.size(
            l.and_then(|l| l.max_header_bytes.as_ref()),
            "limits.max_header_bytes",
            16 * 1024,
        );
        let max_body_bytes = self.size(
            l.and_then(|l| l.max_body_bytes.as_ref()),
            "limits.max_body_bytes",
            10 * 1024 * 1024,
        );
        let header_timeout = self.duration(
            l.and_then(|l| l.header_timeout.as_ref()),
            "limits.header_timeout",
            Duration::from_secs(10),
        );
        let handshake_timeout = self.duration(
            l.and_then(|l| l.handshake_timeout.as_ref()),
            "limits.handshake_timeout",
            Duration::from_secs(10),
        );
        let idle_timeout = self.duration(
            l.and_then(|l| l.idle_timeout.as_ref()),
            "limits.idle_timeout",
            Duration::from_secs(60),
        );
        let body_timeout = self.duration(
            l.and_then(|l| l.body_timeout.as_ref()),
            "limits.body_timeout",
            Duration::from_secs(60),
        );
        let send_timeout = self.duration(
            l.and_then(|l| l.send_timeout.as_ref()),
            "limits.send_timeout",
            Duration::from_secs(60),
        );
        let websocket_idle_timeout = match l.and_then(|l| l.websocket_idle_timeout.as_ref()) {
            Some(v) => self.duration(Some(v), "limits.websocket_idle_timeout", Duration::ZERO),
            None => idle_timeout,
        };
        let path_case = self.keyword(
            l.and_then(|l| l.path_case.as_ref()),
            "limits.path_case",
            &[
                ("sensitive", PathCase::Sensitive),
                ("insensitive", PathCase::Insensitive),
            ],
            PathCase::Sensitive,
        );
        let path_parameters = self.keyword(
            l.and_then(|l| l.path_parameters.as_ref()),
            "limits.path_parameters",
            &[
                ("allow", PathParameters::Allow),
                ("reject", PathParameters::Reject),
            ],
            PathParameters::Allow,
        );
        let max_handshakes = match l.and_then(|l| l.max_handshakes.as_ref()) {
            Some(v) if v.value == 0 || v.value > 100_000 => {
                self.p.push(
                    pos(v),
                    "limits.max_handshakes",
                    format!("must be between 1 and 100000, got {}", v.value),
                );
                None
            }
            Some(v) => Some(v.value as usize),
            None => Some(1024),
        };
        let shutdown_timeout = self.duration(
            l.and_then(|l| l.shutdown_timeout.as_ref()),
            "limits.shutdown_timeout",
            Duration::from_secs(30),
        );
        let max_connections = match l.and_then(|l| l.max_connections.as_ref()) {
            Some(v) if v.value == 0 || v.value > 1_000_000 => {
                self.p.push(
                    pos(v),
                    "limits.max_connections",
                    format!("must be between 1 and 1000000, got {}", v.value),
                );
                None
            }
            Some(v) => Some(v.value as usize),
            None => Some(10_000),
        };
        let max_header_bytes = match max_header_bytes {
            Some(n) if !(1024..=1024 * 1024).contains(&n) => {
                let at = l
                    .and_then(|l| l.max_header_bytes.as_ref())
                    .map(pos)
                    .unwrap_or_default();
                self.p.push(
                    at,
                    "limits.max_header_bytes",
                    "must be between 1KiB and 1MiB",
                );
                None
            }
            other => other.map(|n| n as usize),
        };
        Some(Limits {
            max_header_bytes: max_header_bytes?,
            max_body_bytes: max_body_bytes?,
            header_timeout: header_timeout?,
            handshake_timeout: handshake_timeout?,
            idle_timeout: idle_timeout?,
            send_timeout: send_timeout?,
            body_timeout: body_timeout?,
            websocket_idle_timeout: websocket_idle_timeout?,
            max_connections: max_connections?,
            max_handshakes: max_handshakes?,
            path_parameters: path_parameters?,
            path_case: path_case?,
            shutdown_timeout: shutdown_timeout?,
        })
    }

    fn logging(&mut self, raw: Option<&Sp<raw::RawLogging>>) -> Option<LoggingSettings> {
        let l = raw.map(|l| &l.value);
        let format = self.keyword(
            l.and_then(|l| l.format.as_ref()),
            "logging.format",
            &[
                ("auto", LogFormat::Auto),
                ("json", LogFormat::Json),
                ("text", LogFormat::Text),
            ],
            LogFormat::Auto,
        );
        Some(LoggingSettings {
            format: format?,
            access_log: l
                .and_then(|l| l.access_log.as_ref())
                .is_none_or(|v| v.value),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use crate::config::{Allow, ClientAuth, from_str};

    const MIN: &str = "tls:\n  cert: s.crt\n  key: s.key\n  client_ca: ca.crt\nupstreams:\n  app: { url: \"http://127.0.0.1:8080/base/\" }\nroutes:\n  - { name: all, match: { prefix: /api/ }, upstream: app, allow: anyone }\n";

    fn errors(text: &str) -> Vec<String> {
        match from_str(text, Path::new("/etc/p/gw.yaml")) {
            Ok(_) => panic!("expected errors"),
            Err(e) => e.errors.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn minimal_config_gets_the_documented_defaults() {
        let c = from_str(MIN, Path::new("/etc/p/gw.yaml")).unwrap();
        assert_eq!(c.listen.to_string(), "0.0.0.0:8443");
        assert_eq!(
            c.tls.cert.path,
            Path::new("/etc/p/s.crt"),
            "relative to the config's folder"
        );
        assert_eq!(c.tls.client_auth, ClientAuth::Required);
        assert_eq!(c.limits.max_header_bytes, 16 * 1024);
        assert_eq!(c.limits.max_body_bytes, 10 * 1024 * 1024);
        assert_eq!(c.limits.header_timeout, Duration::from_secs(10));
        assert_eq!(c.limits.idle_timeout, Duration::from_secs(60));
        assert_eq!(c.limits.max_connections, 10_000);
        assert_eq!(c.upstreams[0].timeout, Duration::from_secs(30));
        assert_eq!(c.upstreams[0].connect_timeout, Duration::from_secs(2));
        assert_eq!(c.forward.identity.as_str(), "x-client-id");
        assert_eq!(c.forward.client_cert.as_str(), "x-forwarded-client-cert");
        assert!(c.forward.x_forwarded && !c.forward.credentials);
        assert!(matches!(c.routes[0].allow, Allow::Anyone));
        assert_eq!(c.routes[0].matcher.prefix.as_deref(), Some("/api"));
        assert!(c.routes[0].matcher.matches_path("/api"));
        assert!(c.routes[0].matcher.matches_path("/api/x"));
        assert!(!c.routes[0].matcher.matches_path("/apix"));
        assert!(c.admin.is_none());
    }

    #[test]
    fn rfc9440_defaults_its_header_name() {
        let text = format!("{MIN}forward:\n  headers:\n    client_cert_format: rfc9440\n");
        let c = from_str(&text, Path::new("gw.yaml")).unwrap();
        assert_eq!(c.forward.client_cert.as_str(), "client-cert");
    }

    #[test]
    fn environment_variables_are_interpolated() {
        // SAFETY of the test: a variable name no other test uses.
        unsafe { std::env::set_var("PORTCULLIS_UNIT_CERT", "from-env.crt") };
        let text = MIN.replace("cert: s.crt", "cert: \"${PORTCULLIS_UNIT_CERT}\"");
        let c = from_str(&text, Path::new("gw.yaml")).unwrap();
        assert!(c.tls.cert.path.ends_with("from-env.crt"));
        let e = errors(&MIN.replace("key: s.key", "key: \"${PORTCULLIS_UNIT_UNSET}\""));
        assert_eq!(
            e,
            ["/etc/p/gw.yaml:3:8: tls.key: environment variable PORTCULLIS_UNIT_UNSET is not set"]
        );
    }

    #[test]
    fn syntax_and_unknown_keys_point_at_their_place() {
        let e = errors(&MIN.replace("  key: s.key", "  kee: s.key"));
        assert_eq!(e.len(), 1);
        assert!(
            e[0].starts_with("/etc/p/gw.yaml:3:3: tls.kee: unknown field `kee`"),
            "{e:?}"
        );
        let e = errors("tls: [unclosed\n");
        assert!(e[0].starts_with("/etc/p/gw.yaml:"), "{e:?}");
    }

    #[test]
    fn semantic_problems_are_all_reported_in_file_order() {
        let text = "listen: nowhere\ntls:\n  cert: s.crt\n  key: s.key\n  client_auth: sometimes\nupstreams:\n  app: { url: \"https://x\" }\nroutes:\n  - { name: a, match: { exact: /x, prefix: /y }, upstream: app, allow: anyone }\n  - { name: a, match: { prefix: \"/p/../q\" }, upstream: app, allow: everyone }\nlimits:\n  max_body_bytes: 10XB\n";
        let e = errors(text);
        let want = [
            "1:9: listen: expected an address",
            "3:3: tls.client_ca: missing",
            "5:16: tls.client_auth: expected one of required, optional, off",
            "7:15: upstreams.app.url: expected a plaintext http://host:port URL",
            "9:23: routes[0].match: exact and prefix cannot both be set",
            "10:13: routes[1].name: duplicate route name",
            "10:33: routes[1].match.prefix: \"/p/../q\" is not a normalized path",
            "10:68: routes[1].allow: expected anyone, authenticated",
            "12:19: limits.max_body_bytes: expected a size",
        ];
        assert_eq!(e.len(), want.len(), "{e:#?}");
        for (got, want) in e.iter().zip(want) {
            assert!(
                got.starts_with(&format!("/etc/p/gw.yaml:{want}")),
                "{got} does not start with {want}"
            );
        }
    }

    #[test]
    fn client_ca_is_required_unless_client_auth_is_off() {
        let no_ca = MIN.replace("  client_ca: ca.crt\n", "");
        let e = errors(&no_ca);
        assert!(e[0].contains("tls.client_ca: missing"), "{e:?}");
        let off = no_ca.replace("  key: s.key\n", "  key: s.key\n  client_auth: off\n");
        assert!(from_str(&off, Path::new("gw.yaml")).is_ok());
    }
}

#[cfg(test)]
mod indentation_tests {
    use std::path::Path;

    use crate::config::from_str;

    const HEAD: &str = "listen: \"127.0.0.1:0\"\ntls:\n  cert: s.crt\n  key: s.key\n";

    fn error(text: &str) -> String {
        match from_str(text, Path::new("gateway.yaml")) {
            Ok(_) => panic!("parsed:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_key_indented_one_space_too_far_is_pointed_at() {
        let e = error(&format!("{HEAD}   client_ca: ca.crt\n"));
        assert!(e.starts_with("gateway.yaml:5:13: tls: "), "{e}");
        assert!(
            e.ends_with("hint: line 5 is indented 3 spaces; indented 2, under `tls:` on line 2, the file parses"),
            "{e}"
        );
    }

    #[test]
    fn a_key_that_belongs_one_level_down_is_pointed_at() {
        let e = error(&format!("{HEAD}client_ca: ca.crt\n"));
        assert!(
            e.contains("gateway.yaml:5:1: client_ca: unknown field `client_ca`"),
            "{e}"
        );
        assert!(e.ends_with("hint: line 5 is indented 0 spaces; indented 2, under `tls:` on line 2, the file parses"), "{e}");
    }

    #[test]
    fn a_value_not_nested_under_its_key_is_pointed_at() {
        let e = error(&format!(
            "{HEAD}upstreams:\n  app:\n  url: http://127.0.0.1:9\n"
        ));
        assert!(e.ends_with("hint: line 7 is indented 2 spaces; indented 4, under `app:` on line 6, the file parses"), "{e}");
    }

    #[test]
    fn a_list_items_key_one_level_up_is_pointed_at() {
        let e = error(&format!(
            "{HEAD}routes:\n  - name: a\n    match: {{ prefix: / }}\n  allow: anyone\n"
        ));
        assert!(e.ends_with("hint: line 8 is indented 2 spaces; indented 4, under `- name: a` on line 6, the file parses"), "{e}");
    }

    #[test]
    fn an_unknown_key_or_a_bad_value_gets_no_indentation_hint() {
        let e = error(&format!("{HEAD}  bogus: 1\n"));
        assert!(
            e.contains("unknown field `bogus`") && !e.contains("hint"),
            "{e}"
        );
        let e = error(&format!("{HEAD}  client_ca: [1, 2]\n"));
        assert!(!e.contains("hint"), "{e}");
    }
}

#[cfg(test)]
mod one_error_tests {
    use std::path::Path;

    use crate::config::from_str;

    fn problems(text: &str) -> Vec<String> {
        match from_str(text, Path::new("gateway.yaml")) {
            Ok(_) => panic!("resolved:\n{text}"),
            Err(e) => e.errors.iter().map(|e| e.to_string()).collect(),
        }
    }

    const BASE: &str = "tls:\n  cert: s.crt\n  key: s.key\n  client_ca: ca.crt\nupstreams:\n  app:\n    url: htp://127.0.0.1:9\n";

    #[test]
    fn references_to_a_route_or_principal_with_problems_add_no_errors() {
        let text = format!(
            "{BASE}routes:\n  - name: admin\n    match: {{ prefix: admin }}\n    upstream: app\n    allow: {{ roles: [admin] }}\nprincipals:\n  - name: key1\n    api_key: {{ sha256: zz }}\n    roles: [admin]\n  - name: alice\n    basic: {{ user: alice, argon2: nope }}\n    roles: [admin]\ntests:\n  - name: t\n    request: {{ path: /admin/x, api_key_id: key1 }}\n    expect: allow\n    route: admin\n  - name: u\n    request: {{ path: /admin/x, basic_user: alice }}\n    expect: allow\n"
        );
        let p = problems(&text);
        let keys: Vec<&str> = p.iter().map(|e| e.split(": ").nth(1).unwrap()).collect();
        assert_eq!(
            keys,
            [
                "upstreams.app.url",
                "routes[0].match.prefix",
                "principals[0].api_key.sha256",
                "principals[1].basic.argon2"
            ],
            "{p:#?}"
        );
    }

    #[test]
    fn a_reference_to_nothing_declared_is_still_an_error() {
        let text = format!(
            "{BASE}routes:\n  - name: all\n    match: {{ prefix: / }}\n    upstream: app\n    allow: anyone\ntests:\n  - name: t\n    request: {{ path: /x, api_key_id: ghost }}\n    expect: allow\n    route: admin\n"
        );
        let p = problems(&text).join("\n");
        assert!(
            p.contains("tests[0].route: unknown route \"admin\" (known: all)"),
            "{p}"
        );
        assert!(
            p.contains("tests[0].request.api_key_id: no api_key principal is named \"ghost\""),
            "{p}"
        );
    }
}
