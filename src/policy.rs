//! The policy: who a caller is, which route a request takes, and whether it may pass.
//!
//! Pure functions over the resolved [`Config`]: no I/O, no tower, no clocks. The running
//! gateway calls [`Policy::decide`]; tools that dry-run a request call the same function, so
//! they cannot disagree. Path normalization lives in `policy::path` because matching and
//! forwarding must see the same path.

mod path;

use std::collections::BTreeSet;

use http::Method;

pub use path::{PathError, normalize_path};

use crate::config::{Allow, CertMatcher, Config, Principal, RouteSettings};
use crate::identity::PeerCert;

/// A verified credential kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Factor {
    /// A client certificate verified during the handshake.
    Certificate,
}

impl Factor {
    /// The name used in headers, config and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Factor::Certificate => "certificate",
        }
    }
}

/// Who the caller is, as far as its verified credentials say.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Caller {
    /// The identity forwarded upstream; `None` for an anonymous caller.
    pub identity: Option<String>,
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

/// Why a request may not pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Denial {
    /// No route matches (404).
    NoRoute,
    /// The route needs a credential and none was presented (401).
    Unauthenticated,
    /// The caller is known but lacks a role the route requires (403).
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
    /// Which rule decided, in words, for logs and tools.
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

    /// Identifies a caller from its verified certificate.
    pub fn identify(&self, cert: Option<&PeerCert>) -> Caller {
        let Some(cert) = cert else {
            return Caller::default();
        };
        let mut principals = BTreeSet::new();
        let mut roles = BTreeSet::new();
        for p in &self.principals {
            if p.cert.as_ref().is_some_and(|m| cert_matches(m, cert)) {
                principals.insert(p.name.clone());
                roles.extend(p.roles.iter().cloned());
            }
        }
        Caller {
            identity: Some(cert.identity().to_owned()),
            principals: principals.into_iter().collect(),
            roles: roles.into_iter().collect(),
            factors: vec![Factor::Certificate],
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
    pub fn decide<'a>(
        &'a self,
        method: &Method,
        host: Option<&str>,
        path: &str,
        caller: &Caller,
    ) -> Decision<'a> {
        let Some(route) = self.route(method, host, path) else {
            return Decision {
                route: None,
                verdict: Err(Denial::NoRoute),
                rule: "no route matches",
            };
        };
        let (verdict, rule) = match &route.allow {
            Allow::Anyone => (Ok(()), "allow: anyone"),
            Allow::Authenticated if caller.is_authenticated() => (Ok(()), "allow: authenticated"),
            Allow::Authenticated => (
                Err(Denial::Unauthenticated),
                "allow: authenticated, no credential",
            ),
            Allow::Roles(_) if !caller.is_authenticated() => {
                (Err(Denial::Unauthenticated), "allow.roles, no credential")
            }
            Allow::Roles(wanted)
                if wanted.iter().any(|w| caller.roles.binary_search(w).is_ok()) =>
            {
                (Ok(()), "allow.roles")
            }
            Allow::Roles(_) => (
                Err(Denial::Forbidden),
                "allow.roles, caller has none of them",
            ),
        };
        Decision {
            route: Some(route),
            verdict,
            rule,
        }
    }
}

fn any_match(glob: &Option<crate::config::Glob>, values: &[String]) -> bool {
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
principals:
  - { name: ops, cert: { cn: "ops-*" }, roles: [admin, reader] }
  - { name: readers, cert: { cn: "reader-*" }, roles: [reader] }
  - { name: platform, cert: { ou: Platform }, roles: [reader] }
routes:
  - { name: admin, match: { prefix: /admin/, methods: [GET, DELETE] }, upstream: app, allow: { roles: [admin] } }
  - { name: health, match: { exact: /health }, upstream: app, allow: anyone }
  - { name: me, match: { exact: /me }, upstream: app, allow: authenticated }
  - { name: api, match: { prefix: /api, host: "api.*" }, upstream: app, allow: { roles: [reader] } }
"#;

    fn cert(cn: &str, ou: Option<&str>) -> PeerCert {
        PeerCert {
            cn: vec![cn.to_owned()],
            ou: ou.map(|o| vec![o.to_owned()]).unwrap_or_default(),
            subject: format!("CN={cn}"),
            ..PeerCert::default()
        }
    }

    #[test]
    fn identify_unions_roles_of_every_matching_principal() {
        let config = crate::config::from_str(YAML, Path::new("gw.yaml")).unwrap();
        let policy = Policy::new(&config);
        let c = policy.identify(Some(&cert("ops-alice", Some("Platform"))));
        assert_eq!(c.principals, ["ops", "platform"]);
        assert_eq!(c.roles, ["admin", "reader"]);
        assert_eq!(c.identity.as_deref(), Some("CN=ops-alice"));
        assert_eq!(policy.identify(None), Caller::default());
        let nobody = policy.identify(Some(&cert("nobody", None)));
        assert!(nobody.is_authenticated() && nobody.roles.is_empty());
    }

    #[test]
    fn decision_table() {
        let config = crate::config::from_str(YAML, Path::new("gw.yaml")).unwrap();
        let policy = Policy::new(&config);
        let ops = policy.identify(Some(&cert("ops-alice", None)));
        let bob = policy.identify(Some(&cert("reader-bob", None)));
        let nobody = policy.identify(Some(&cert("nobody", None)));
        let anon = Caller::default();
        let get = Method::GET;
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
            let d = policy.decide(method, *host, path, caller);
            assert_eq!(d.verdict, *want, "{method} {host:?} {path} {caller:?}");
            assert_eq!(
                d.route.map(|r| r.name.as_str()),
                *route,
                "{method} {host:?} {path}"
            );
        }
    }
}
