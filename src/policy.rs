//! The policy: who a caller is, which route a request takes, and whether it may pass.
//!
//! Pure functions over the resolved [`Config`]: no I/O, no tower, no clocks. Credentials are
//! verified elsewhere (`auth`); this module takes what was verified, works out principals and
//! roles ([`Policy::identify`]) and decides ([`Policy::decide`]). The running gateway, `explain`
//! and `test` all call these two functions, so they cannot disagree. Path normalization lives
//! in `policy::path` because matching and forwarding must see the same path.

mod path;

use std::collections::BTreeSet;
use std::net::IpAddr;

use http::{HeaderMap, Method};
use serde_json::{Map, Value};

pub use path::{PathError, match_form, normalize_path};

use crate::config::{
    Allow, CertMatcher, ClaimTest, Condition, Config, Glob, Principal, PrincipalMatcher,
    RouteSettings,
};
use crate::identity::PeerCert;

/// A verified credential kind, in the canonical order used in headers and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Factor {
    /// A client certificate verified during the handshake.
    Certificate,
    /// An API key matching a principal's hash.
    ApiKey,
    /// A JWT bearer token with a valid signature and claims.
    Jwt,
    /// HTTP Basic credentials matching an argon2id hash.
    Basic,
    /// The current one-time code (RFC 6238) of a principal another credential identified.
    Totp,
    /// A login token this gateway issued (its `amr` factors come with it).
    Token,
    /// An opaque OAuth 2.0 token the identity provider called active (introspection).
    Oauth,
}

impl Factor {
    /// The name used in headers, config and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Factor::Certificate => "certificate",
            Factor::ApiKey => "api_key",
            Factor::Jwt => "jwt",
            Factor::Basic => "basic",
            Factor::Totp => "totp",
            Factor::Token => "token",
            Factor::Oauth => "oauth",
        }
    }

    /// Parses a factor name from the configuration.
    pub fn from_name(name: &str) -> Option<Factor> {
        Some(match name {
            "certificate" => Factor::Certificate,
            "api_key" => Factor::ApiKey,
            "jwt" => Factor::Jwt,
            "basic" => Factor::Basic,
            "totp" => Factor::Totp,
            "token" => Factor::Token,
            "oauth" => Factor::Oauth,
            _ => return None,
        })
    }
}

/// The credentials of one request that were verified.
#[derive(Clone, Copy, Debug, Default)]
pub struct Verified<'a> {
    /// The connection's client certificate.
    pub cert: Option<&'a PeerCert>,
    /// Index of the principal whose API key was presented.
    pub api_key: Option<usize>,
    /// Claims of a verified JWT.
    pub jwt: Option<&'a Map<String, Value>>,
    /// Index of the principal whose Basic credentials were presented.
    pub basic: Option<usize>,
    /// Claims of a verified login token of this gateway.
    pub token: Option<&'a crate::auth::tokens::TokenClaims>,
    /// An active introspected OAuth token.
    pub oauth: Option<&'a crate::auth::oauth::Introspection>,
}

/// Who the caller is, as far as its verified credentials say.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Caller {
    /// The identity forwarded upstream; `None` for an anonymous caller.
    pub identity: Option<String>,
    /// The credential the identity came from: identities from different credential types
    /// never share a rate-limit budget, even when they spell the same text.
    pub identity_factor: Option<Factor>,
    /// Names of the matched principals, sorted.
    pub principals: Vec<String>,
    /// The union of the matched principals' roles, sorted.
    pub roles: Vec<String>,
    /// Verified factors, in the canonical order.
    pub factors: Vec<Factor>,
}

impl Caller {
    /// Whether any credential was verified.
    pub fn is_authenticated(&self) -> bool {
        !self.factors.is_empty()
    }
}

/// What a decision may look at besides the caller: the request's attributes.
#[derive(Clone, Copy, Debug)]
pub struct RequestFacts<'a> {
    /// Method.
    pub method: &'a Method,
    /// Host without port, lower-case.
    pub host: Option<&'a str>,
    /// Normalized path.
    pub path: &'a str,
    /// Client address.
    pub source_ip: IpAddr,
    /// Request headers.
    pub headers: &'a HeaderMap,
    /// The verified certificate, for `when.cert`.
    pub cert: Option<&'a PeerCert>,
    /// Verified JWT claims, for `when.claims`.
    pub claims: Option<&'a Map<String, Value>>,
}

/// Why a request may not pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Denial {
    /// No route matches (404).
    NoRoute,
    /// The route needs a credential and none was presented (401).
    Unauthenticated,
    /// The caller is known but the route's rules do not allow it (403).
    Forbidden,
}

impl Denial {
    /// A short label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Denial::NoRoute => "no_route",
            Denial::Unauthenticated => "unauthenticated",
            Denial::Forbidden => "forbidden",
        }
    }
}

/// The outcome of [`Policy::decide`].
#[derive(Debug)]
pub struct Decision<'a> {
    /// The route that matched, if any.
    pub route: Option<&'a RouteSettings>,
    /// `Ok` to forward, or why not.
    pub verdict: Result<(), Denial>,
    /// Which rule decided, for logs and tools.
    pub rule: &'static str,
}

/// The compiled policy of one configuration snapshot.
#[derive(Debug)]
pub struct Policy {
    routes: Vec<RouteSettings>,
    principals: Vec<Principal>,
}

impl Policy {
    /// Compiles the routes and principals of a configuration.
    pub fn new(config: &Config) -> Policy {
        Policy {
            routes: config.routes.clone(),
            principals: config.principals.clone(),
        }
    }

    /// The principals, in file order (indices match [`Verified::api_key`] and `basic`).
    pub fn principals(&self) -> &[Principal] {
        &self.principals
    }

    /// Works out principals, roles, factors and identity from verified credentials.
    ///
    /// The identity is the first verified factor's, in the order certificate (URI SAN, else
    /// subject DN), jwt (`sub`), api_key or basic (the principal's name).
    pub fn identify(&self, v: &Verified<'_>) -> Caller {
        let mut principals = BTreeSet::new();
        let mut roles = BTreeSet::new();
        let mut factors = Vec::new();
        let mut grant = |p: &Principal| {
            principals.insert(p.name.clone());
            roles.extend(p.roles.iter().cloned());
        };
        if let Some(cert) = v.cert {
            factors.push(Factor::Certificate);
            for p in &self.principals {
                if let PrincipalMatcher::Cert(m) = &p.matcher
                    && cert_matches(m, cert)
                {
                    grant(p);
                }
            }
        }
        if let Some(p) = v.api_key.and_then(|i| self.principals.get(i)) {
            factors.push(Factor::ApiKey);
            grant(p);
        }
        if let Some(claims) = v.jwt {
            factors.push(Factor::Jwt);
            for p in &self.principals {
                if let PrincipalMatcher::Jwt { claim, test } = &p.matcher
                    && claims
                        .get(claim)
                        .is_some_and(|value| claim_matches(test, value))
                {
                    grant(p);
                }
            }
        }
        if let Some(p) = v.basic.and_then(|i| self.principals.get(i)) {
            factors.push(Factor::Basic);
            grant(p);
        }
        if let Some(o) = v.oauth {
            factors.push(Factor::Oauth);
            for p in &self.principals {
                if let PrincipalMatcher::Oauth {
                    client_id,
                    sub,
                    scopes,
                } = &p.matcher
                {
                    let glob = |g: &Option<Glob>, v: &Option<String>| {
                        g.as_ref()
                            .is_none_or(|g| v.as_deref().is_some_and(|v| g.is_match(v)))
                    };
                    if glob(client_id, &o.client_id)
                        && glob(sub, &o.sub)
                        && scopes.iter().all(|s| o.scopes.contains(s))
                    {
                        grant(p);
                    }
                }
            }
            factors.sort_unstable();
        }
        if let Some(t) = v.token {
            // The principals the caller was at login, as the current configuration has them:
            // a principal or role removed since is gone at once.
            factors.push(Factor::Token);
            for p in &self.principals {
                if t.prn.contains(&p.name) {
                    grant(p);
                }
            }
            factors.extend(
                t.amr
                    .iter()
                    .filter_map(|f| Factor::from_name(f))
                    .filter(|f| *f != Factor::Token),
            );
            factors.sort_unstable();
            factors.dedup();
        }
        let identity = v
            .cert
            .map(|c| (c.identity().to_owned(), Factor::Certificate))
            .or_else(|| {
                // The identity keeps the kind of credential it came from at login, so a
                // caller's rate-limit budget is the same with the token as without it.
                v.token.map(|t| {
                    let origin = [
                        Factor::Certificate,
                        Factor::Oauth,
                        Factor::Jwt,
                        Factor::ApiKey,
                        Factor::Basic,
                    ]
                    .into_iter()
                    .find(|f| t.amr.iter().any(|a| a == f.as_str()))
                    .unwrap_or(Factor::Token);
                    (t.sub.clone(), origin)
                })
            })
            .or_else(|| {
                v.oauth.and_then(|o| {
                    o.sub
                        .clone()
                        .or_else(|| o.client_id.clone())
                        .map(|s| (s, Factor::Oauth))
                })
            })
            .or_else(|| {
                v.jwt
                    .and_then(|c| c.get("sub"))
                    .and_then(Value::as_str)
                    .map(|s| (s.to_owned(), Factor::Jwt))
            })
            .or_else(|| {
                v.api_key
                    .and_then(|i| self.principals.get(i))
                    .map(|p| (p.name.clone(), Factor::ApiKey))
            })
            .or_else(|| {
                v.basic
                    .and_then(|i| self.principals.get(i))
                    .map(|p| (p.name.clone(), Factor::Basic))
            });
        let (identity, identity_factor) = match identity {
            Some((i, f)) => (Some(i), Some(f)),
            None => (None, None),
        };
        Caller {
            identity,
            identity_factor,
            principals: principals.into_iter().collect(),
            roles: roles.into_iter().collect(),
            factors,
        }
    }

    /// The first route matching host, normalized path and method.
    pub fn route(&self, method: &Method, host: Option<&str>, path: &str) -> Option<&RouteSettings> {
        self.routes.iter().find(|r| {
            let m = &r.matcher;
            m.matches_path(path)
                && m.methods.as_ref().is_none_or(|ms| ms.contains(method))
                && m.host
                    .as_ref()
                    .is_none_or(|h| host.is_some_and(|host| h.is_match(host)))
        })
    }

    /// Decides one request: route, then authorization. Default deny.
    pub fn decide<'a>(&'a self, req: &RequestFacts<'_>, caller: &Caller) -> Decision<'a> {
        let route = self.route(req.method, req.host, req.path);
        self.decide_on(route, req, caller)
    }

    /// [`decide`](Policy::decide) for a route already looked up with [`route`](Policy::route)
    /// (the gateway finds it before credentials are verified, to label their failures).
    pub fn decide_on<'a>(
        &'a self,
        route: Option<&'a RouteSettings>,
        req: &RequestFacts<'_>,
        caller: &Caller,
    ) -> Decision<'a> {
        let Some(route) = route else {
            return Decision {
                route: None,
                verdict: Err(Denial::NoRoute),
                rule: "no route matches",
            };
        };
        let (verdict, rule) = authorize(&route.allow, req, caller);
        Decision {
            route: Some(route),
            verdict,
            rule,
        }
    }
}

fn authorize(
    allow: &Allow,
    req: &RequestFacts<'_>,
    caller: &Caller,
) -> (Result<(), Denial>, &'static str) {
    let rules = match allow {
        Allow::Anyone => return (Ok(()), "allow: anyone"),
        Allow::Authenticated if caller.is_authenticated() => {
            return (Ok(()), "allow: authenticated");
        }
        Allow::Authenticated => {
            return (
                Err(Denial::Unauthenticated),
                "allow: authenticated (no credential)",
            );
        }
        Allow::Rules(r) => r,
    };
    if rules.needs_credential() && !caller.is_authenticated() {
        return (
            Err(Denial::Unauthenticated),
            "allow rules need a credential, none presented",
        );
    }
    if !rules.roles.is_empty()
        && !rules
            .roles
            .iter()
            .any(|w| caller.roles.binary_search(w).is_ok())
    {
        return (
            Err(Denial::Forbidden),
            "allow.roles: the caller has none of them",
        );
    }
    if !rules.factors.iter().all(|f| caller.factors.contains(f)) {
        return (
            Err(Denial::Forbidden),
            "allow.factors: a required credential is missing",
        );
    }
    for c in &rules.when {
        let (holds, name) = match c {
            Condition::SourceIp(nets) => (
                nets.iter().any(|n| n.contains(&req.source_ip)),
                "allow.when.source_ip",
            ),
            Condition::Cert(fields) => (
                req.cert.is_some_and(|cert| {
                    fields.iter().all(|(f, globs)| {
                        f.values(cert)
                            .iter()
                            .any(|v| globs.iter().any(|g| g.is_match(v)))
                    })
                }),
                "allow.when.cert",
            ),
            Condition::Claims(claims) => (
                req.claims.is_some_and(|map| {
                    claims.iter().all(|(name, globs)| {
                        map.get(name).is_some_and(|v| value_matches_any(v, globs))
                    })
                }),
                "allow.when.claims",
            ),
            Condition::Headers(headers) => (
                headers.iter().all(|(name, globs)| {
                    req.headers.get_all(name).iter().any(|v| {
                        v.to_str()
                            .is_ok_and(|v| globs.iter().any(|g| g.is_match(v)))
                    })
                }),
                "allow.when.headers",
            ),
        };
        if !holds {
            return (Err(Denial::Forbidden), name);
        }
    }
    (Ok(()), "allow rules")
}

/// A claim value as strings: a string, each string of an array, or a number or bool printed.
fn claim_strings(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items.iter().flat_map(claim_strings).collect(),
        Value::Number(n) => vec![n.to_string()],
        Value::Bool(b) => vec![b.to_string()],
        _ => Vec::new(),
    }
}

fn value_matches_any(v: &Value, globs: &[Glob]) -> bool {
    claim_strings(v)
        .iter()
        .any(|s| globs.iter().any(|g| g.is_match(s)))
}

fn claim_matches(test: &ClaimTest, v: &Value) -> bool {
    match test {
        ClaimTest::Contains(want) => claim_strings(v).iter().any(|s| s == want),
        ClaimTest::Equals(glob) => value_matches_any(v, std::slice::from_ref(glob)),
    }
}

fn any_match(glob: &Option<Glob>, values: &[String]) -> bool {
    glob.as_ref()
        .is_none_or(|g| values.iter().any(|v| g.is_match(v)))
}

fn cert_matches(m: &CertMatcher, c: &PeerCert) -> bool {
    any_match(&m.cn, &c.cn)
        && any_match(&m.o, &c.o)
        && any_match(&m.ou, &c.ou)
        && any_match(&m.san_dns, &c.san_dns)
        && any_match(&m.san_uri, &c.san_uri)
        && any_match(&m.san_email, &c.san_email)
        && m.fingerprint_sha256.is_none_or(|fp| {
            // Not a secret, but compared in constant time anyway: it costs nothing.
            subtle::ConstantTimeEq::ct_eq(&fp[..], &c.fingerprint[..]).into()
        })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const YAML: &str = r#"
tls: { cert: s.crt, key: s.key, client_ca: ca.crt }
upstreams: { app: { url: "http://127.0.0.1:1" } }
jwt: { jwks: jwks.json, algorithms: [ES256] }
principals:
  - { name: ops, cert: { cn: "ops-*" }, roles: [admin, reader] }
  - { name: readers, cert: { cn: "reader-*" }, roles: [reader] }
  - { name: platform, cert: { ou: Platform }, roles: [reader] }
  - { name: batch, api_key: { sha256: "0000000000000000000000000000000000000000000000000000000000000001" }, roles: [batch] }
  - { name: engineers, jwt: { claim: groups, contains: engineering }, roles: [reader] }
routes:
  - { name: admin, match: { prefix: /admin/, methods: [GET, DELETE] }, upstream: app, allow: { roles: [admin] } }
  - { name: health, match: { exact: /health }, upstream: app, allow: anyone }
  - { name: me, match: { exact: /me }, upstream: app, allow: authenticated }
  - { name: api, match: { prefix: /api, host: "api.*" }, upstream: app, allow: { roles: [reader] } }
  - name: two-factor
    match: { prefix: /2fa/ }
    upstream: app
    allow: { roles: [batch], factors: [certificate, api_key] }
  - name: conditional
    match: { prefix: /cond/ }
    upstream: app
    allow:
      roles: [reader]
      when: { source_ip: [10.0.0.0/8], cert: { ou: Platform }, headers: { x-tenant: "acme-*" } }
  - name: claims
    match: { prefix: /claims/ }
    upstream: app
    allow: { roles: [reader], when: { claims: { department: [eng, ops] } } }
"#;

    fn policy() -> Policy {
        Policy::new(&crate::config::from_str(YAML, Path::new("gw.yaml")).unwrap())
    }

    fn cert(cn: &str, ou: Option<&str>) -> PeerCert {
        PeerCert {
            cn: vec![cn.to_owned()],
            ou: ou.map(|o| vec![o.to_owned()]).unwrap_or_default(),
            subject: format!("CN={cn}"),
            ..PeerCert::default()
        }
    }

    fn with_cert(c: &PeerCert) -> Verified<'_> {
        Verified {
            cert: Some(c),
            ..Verified::default()
        }
    }

    fn facts<'a>(
        method: &'a Method,
        host: Option<&'a str>,
        path: &'a str,
        headers: &'a HeaderMap,
    ) -> RequestFacts<'a> {
        RequestFacts {
            method,
            host,
            path,
            source_ip: [127, 0, 0, 1].into(),
            headers,
            cert: None,
            claims: None,
        }
    }

    #[test]
    fn identify_unions_roles_of_every_matching_principal() {
        let policy = policy();
        let alice = cert("ops-alice", Some("Platform"));
        let c = policy.identify(&with_cert(&alice));
        assert_eq!(c.principals, ["ops", "platform"]);
        assert_eq!(c.roles, ["admin", "reader"]);
        assert_eq!(c.identity.as_deref(), Some("CN=ops-alice"));
        assert_eq!(policy.identify(&Verified::default()), Caller::default());
        let nobody_cert = cert("nobody", None);
        let nobody = policy.identify(&with_cert(&nobody_cert));
        assert!(nobody.is_authenticated() && nobody.roles.is_empty());

        // Certificate plus API key: both factors, union of roles, identity from the certificate.
        let both = policy.identify(&Verified {
            cert: Some(&nobody_cert),
            api_key: Some(3),
            ..Verified::default()
        });
        assert_eq!(both.factors, [Factor::Certificate, Factor::ApiKey]);
        assert_eq!(both.principals, ["batch"]);
        assert_eq!(both.identity.as_deref(), Some("CN=nobody"));
        let key_only = policy.identify(&Verified {
            api_key: Some(3),
            ..Verified::default()
        });
        assert_eq!(
            key_only.identity.as_deref(),
            Some("batch"),
            "an API key's identity is its principal"
        );

        let claims: Map<String, Value> =
            serde_json::from_str(r#"{"sub":"u-42","groups":["staff","engineering"]}"#).unwrap();
        let jwt = policy.identify(&Verified {
            jwt: Some(&claims),
            ..Verified::default()
        });
        assert_eq!(jwt.identity.as_deref(), Some("u-42"));
        assert_eq!(jwt.principals, ["engineers"]);
        assert_eq!(jwt.factors, [Factor::Jwt]);
    }

    #[test]
    fn decision_table() {
        let policy = policy();
        let (a, b, n) = (
            cert("ops-alice", None),
            cert("reader-bob", None),
            cert("nobody", None),
        );
        let ops = policy.identify(&with_cert(&a));
        let bob = policy.identify(&with_cert(&b));
        let nobody = policy.identify(&with_cert(&n));
        let anon = Caller::default();
        let get = Method::GET;
        let h = HeaderMap::new();
        type Row<'a> = (
            &'a Method,
            Option<&'a str>,
            &'a str,
            &'a Caller,
            Result<(), Denial>,
            Option<&'a str>,
        );
        let table: &[Row<'_>] = &[
            (&get, None, "/admin/x", &ops, Ok(()), Some("admin")),
            (
                &get,
                None,
                "/admin/x",
                &bob,
                Err(Denial::Forbidden),
                Some("admin"),
            ),
            (
                &get,
                None,
                "/admin/x",
                &anon,
                Err(Denial::Unauthenticated),
                Some("admin"),
            ),
            (
                &Method::POST,
                None,
                "/admin/x",
                &ops,
                Err(Denial::NoRoute),
                None,
            ),
            (&get, None, "/health", &anon, Ok(()), Some("health")),
            (&get, None, "/me", &nobody, Ok(()), Some("me")),
            (
                &get,
                None,
                "/me",
                &anon,
                Err(Denial::Unauthenticated),
                Some("me"),
            ),
            (
                &get,
                Some("api.example.com"),
                "/api/v1",
                &bob,
                Ok(()),
                Some("api"),
            ),
            (
                &get,
                Some("web.example.com"),
                "/api/v1",
                &bob,
                Err(Denial::NoRoute),
                None,
            ),
            (&get, None, "/api/v1", &bob, Err(Denial::NoRoute), None),
            (
                &get,
                Some("api.x"),
                "/api/v1",
                &nobody,
                Err(Denial::Forbidden),
                Some("api"),
            ),
        ];
        for (method, host, path, caller, want, route) in table {
            let d = policy.decide(&facts(method, *host, path, &h), caller);
            assert_eq!(d.verdict, *want, "{method} {host:?} {path} {caller:?}");
            assert_eq!(
                d.route.map(|r| &*r.name),
                *route,
                "{method} {host:?} {path}"
            );
        }
    }

    #[test]
    fn a_login_token_keeps_the_identity_kind_of_its_login() {
        let policy = policy();
        let claims = crate::auth::tokens::TokenClaims {
            iss: String::new(),
            aud: String::new(),
            sub: "alice".into(),
            exp: 0,
            iat: 0,
            jti: String::new(),
            prn: vec!["alice".into()],
            amr: vec!["basic".into(), "totp".into()],
            cnf: None,
        };
        let c = policy.identify(&Verified {
            token: Some(&claims),
            ..Verified::default()
        });
        assert_eq!(c.identity.as_deref(), Some("alice"));
        assert_eq!(
            c.identity_factor,
            Some(Factor::Basic),
            "the same rate-limit budget as the password's"
        );
        assert_eq!(c.factors, [Factor::Basic, Factor::Totp, Factor::Token]);
    }

    #[test]
    fn factors_demand_every_listed_credential() {
        let policy = policy();
        let n = cert("nobody", None);
        let get = Method::GET;
        let h = HeaderMap::new();
        let f = facts(&get, None, "/2fa/x", &h);
        let cert_and_key = policy.identify(&Verified {
            cert: Some(&n),
            api_key: Some(3),
            ..Verified::default()
        });
        assert_eq!(policy.decide(&f, &cert_and_key).verdict, Ok(()));
        let key_only = policy.identify(&Verified {
            api_key: Some(3),
            ..Verified::default()
        });
        let d = policy.decide(&f, &key_only);
        assert_eq!(d.verdict, Err(Denial::Forbidden));
        assert_eq!(d.rule, "allow.factors: a required credential is missing");
    }

    #[test]
    fn when_conditions_must_all_hold() {
        let policy = policy();
        let platform = cert("reader-p", Some("Platform"));
        let other = cert("reader-q", Some("Sales"));
        let get = Method::GET;
        let mut h = HeaderMap::new();
        h.insert("x-tenant", "acme-eu".parse().unwrap());
        let caller = policy.identify(&with_cert(&platform));
        let mut f = facts(&get, None, "/cond/x", &h);
        f.cert = Some(&platform);
        f.source_ip = [10, 1, 2, 3].into();
        assert_eq!(policy.decide(&f, &caller).verdict, Ok(()));

        let mut wrong_ip = f;
        wrong_ip.source_ip = [192, 0, 2, 1].into();
        assert_eq!(
            policy.decide(&wrong_ip, &caller).rule,
            "allow.when.source_ip"
        );

        let other_caller = policy.identify(&with_cert(&other));
        let mut wrong_ou = f;
        wrong_ou.cert = Some(&other);
        assert_eq!(
            policy.decide(&wrong_ou, &other_caller).rule,
            "allow.when.cert"
        );

        let empty = HeaderMap::new();
        let mut no_header = f;
        no_header.headers = &empty;
        assert_eq!(
            policy.decide(&no_header, &caller).rule,
            "allow.when.headers"
        );

        let claims: Map<String, Value> = serde_json::from_str(r#"{"department":"ops"}"#).unwrap();
        let mut with_claims = facts(&get, None, "/claims/x", &h);
        with_claims.claims = Some(&claims);
        assert_eq!(policy.decide(&with_claims, &caller).verdict, Ok(()));
        let sales: Map<String, Value> = serde_json::from_str(r#"{"department":"sales"}"#).unwrap();
        with_claims.claims = Some(&sales);
        assert_eq!(
            policy.decide(&with_claims, &caller).rule,
            "allow.when.claims"
        );
    }
}
