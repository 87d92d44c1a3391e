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
