//! `portcullis explain` and `portcullis test`: the policy dry-run tools.
//!
//! Both go through the same functions as the running gateway: credentials are verified by
//! `auth::Authenticator`, callers identified by `Policy::identify`, requests decided by
//! `Policy::decide`. explain verifies real credentials (API key, JWT against a JWKS file,
//! argon2 password) but does no network I/O; test cases take their credentials as verified
//! and check the decision the policy makes for that caller.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;

use http::{HeaderMap, Method};
use serde_json::{Map, Value};

use crate::auth::{self, Authenticator};
use crate::config::{Allow, Config, Expectation, JwksSource, PrincipalMatcher, TestCase};
use crate::identity::PeerCert;
use crate::policy::{
    Caller, Decision, Denial, Factor, Policy, RequestFacts, Verified, match_form, normalize_path,
};

/// One request to explain.
#[derive(Debug, Default)]
pub struct ExplainRequest {
    /// Method.
    pub method: String,
    /// Path (normalized here like a real request's).
    pub path: String,
    /// Host header.
    pub host: Option<String>,
    /// PEM file of the client certificate.
    pub cert: Option<PathBuf>,
    /// API key.
    pub api_key: Option<String>,
    /// Bearer token.
    pub bearer: Option<String>,
    /// `USER:PASS`.
    pub basic: Option<String>,
    /// A one-time code.
    pub otp: Option<String>,
    /// Client address.
    pub source_ip: Option<IpAddr>,
}

/// What explain found: the text to print and whether the request would be forwarded.
#[derive(Debug)]
pub struct Explanation {
    /// Human-readable report.
    pub text: String,
    /// True when the request would be forwarded.
    pub allowed: bool,
}

/// Dry-runs one request through the policy.
///
/// # Errors
/// Input that cannot be used (unreadable certificate, bad method, a JWKS URL).
pub fn explain(config: &Config, req: &ExplainRequest) -> anyhow::Result<Explanation> {
    use anyhow::Context;
    let method = Method::from_bytes(req.method.to_ascii_uppercase().as_bytes())
        .context("--method is not an HTTP method")?;
    let source_ip = req.source_ip.unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let mut out = String::new();
    // The gateway's own Host parsing: `[::1]:8443`, a trailing dot and letter case alike.
    let host = match req.host.as_deref() {
        Some(h) => match crate::gateway::parse_host(h) {
            Some(parsed) => Some(parsed.name),
            None => {
                let _ = writeln!(
                    out,
                    "host:       {h:?} is refused: invalid host\ndecision:   400 (bad request)"
                );
                return Ok(Explanation {
                    text: out,
                    allowed: false,
                });
            }
        },
        None => None,
    };
    let path = match normalize_path(req.path.split('?').next().unwrap_or("")) {
        Ok(p) => p,
        Err(e) => {
            let _ = writeln!(
                out,
                "path:       {:?} is refused: {e}\ndecision:   400 (bad request)",
                req.path
            );
            return Ok(Explanation {
                text: out,
                allowed: false,
            });
        }
    };
    let _ = writeln!(
        out,
        "request:    {method} {path}{}",
        host.as_deref()
            .map(|h| format!(" (host {h})"))
            .unwrap_or_default()
    );
    let _ = writeln!(out, "source ip:  {source_ip}");

    let cert = match &req.cert {
        Some(file) => {
            use rustls::pki_types::CertificateDer;
            use rustls::pki_types::pem::PemObject;
            let der = CertificateDer::from_pem_file(file).map_err(|e| {
                anyhow::anyhow!("--cert {}: not a PEM certificate ({e:?})", file.display())
            })?;
            Some(
                PeerCert::from_der(der.as_ref())
                    .with_context(|| format!("--cert {}", file.display()))?,
            )
        }
        None => None,
    };
    if let Some(j) = &config.jwt
        && req.bearer.is_some()
        && matches!(j.jwks, Some(JwksSource::Url(_)))
    {
        anyhow::bail!(
            "jwt.jwks is a URL and explain does no network I/O: save the JWKS to a file and point jwt.jwks at it to explain bearer tokens"
        );
    }
    let authn = Authenticator::new(config)?;
    if let Some(token) = &req.bearer
        && config.oauth.is_some()
        && !authn.tokens().is_some_and(|t| t.is_ours(token))
        && !authn.jwt_recognizes(token)
    {
        anyhow::bail!(
            "this bearer token would be introspected at oauth.introspection_url, and explain does no network I/O"
        );
    }
    let policy = Policy::new(config);
    let mut verified = Verified {
        cert: cert.as_ref(),
        ..Verified::default()
    };
    let mut presented = Vec::new();
    if cert.is_some() {
        presented
            .push("certificate (taken as verified: explain does not check the chain)".to_owned());
    }
    let refuse = |out: &mut String, what: &str, why: &dyn std::fmt::Display| {
        let _ = writeln!(
            out,
            "credential: {what} refused: {why}\ndecision:   401 (a presented credential is invalid)"
        );
    };
    if let Some(key) = &req.api_key {
        match authn.verify_api_key(key, time::OffsetDateTime::now_utc().date()) {
            Ok(i) => {
                verified.api_key = Some(i);
                presented.push(format!(
                    "api_key (principal {})",
                    policy.principals()[i].name
                ));
            }
            Err(e) => {
                refuse(&mut out, "api_key", &e);
                return Ok(Explanation {
                    text: out,
                    allowed: false,
                });
            }
        }
    }
    let gateway_token = match (&req.bearer, authn.tokens()) {
        (Some(token), Some(issuer)) if issuer.is_ours(token) => {
            match issuer.verify(token, cert.as_ref()) {
                Ok(c) => {
                    presented.push(format!(
                        "token (this gateway's, for {}, login factors {}; explain cannot see \
                         whether it was logged out)",
                        c.sub,
                        c.amr.join(", ")
                    ));
                    Some(c)
                }
                Err(e) => {
                    refuse(&mut out, "token", &e);
                    return Ok(Explanation {
                        text: out,
                        allowed: false,
                    });
                }
            }
        }
        _ => None,
    };
    let claims = match req.bearer.as_ref().filter(|_| gateway_token.is_none()) {
        Some(token) => match authn.verify_jwt(token, cert.as_ref()) {
            Ok(c) => {
                presented.push("jwt".to_owned());
                Some(c)
            }
            Err(e) => {
                refuse(&mut out, "jwt", &e);
                return Ok(Explanation {
                    text: out,
                    allowed: false,
                });
            }
        },
        None => None,
    };
    if let Some(basic) = &req.basic {
        let (user, pass) = basic.split_once(':').context("--basic takes USER:PASS")?;
        match authn.verify_basic(user, pass) {
            Ok(i) => {
                verified.basic = Some(i);
                presented.push(format!("basic (user {user})"));
            }
            Err(e) => {
                refuse(&mut out, "basic", &e);
                return Ok(Explanation {
                    text: out,
                    allowed: false,
                });
            }
        }
    }
    verified.jwt = claims.as_ref();
    verified.token = gateway_token.as_ref();
    let mut caller = policy.identify(&verified);
    if let Some(code) = &req.otp {
        // Checked like the gateway checks it, but not recorded: the code stays usable.
        match authn.verify_totp(&caller.principals, code, crate::auth::totp::now_secs()) {
            Ok((principal, _)) => {
                caller.factors.push(Factor::Totp);
                caller.factors.sort_unstable();
                presented.push(format!(
                    "totp (the current code of principal {principal}; explain does not use it up)"
                ));
            }
            Err(e) => {
                refuse(&mut out, "totp", &e);
                return Ok(Explanation {
                    text: out,
                    allowed: false,
                });
            }
        }
    }
    let headers = HeaderMap::new();
    let facts = RequestFacts {
        method: &method,
        host: host.as_deref(),
        path: &match_form(&path),
        source_ip,
        headers: &headers,
        cert: cert.as_ref(),
        claims: claims.as_ref(),
    };
    let decision = policy.decide(&facts, &caller);
    let _ = writeln!(
        out,
        "presented:  {}",
        if presented.is_empty() {
            "nothing".to_owned()
        } else {
            presented.join(", ")
        }
    );
    describe(&mut out, &caller, &decision);
    if let Some(route) = decision.route {
        let line = match &route.rate_limit {
            Some(spec) => format!(
                "{} per {:?}, burst {}, key {} = {:?} ({})",
                spec.rate,
                spec.per,
                spec.burst,
                spec.key.as_str(),
                crate::ratelimit::key_for(spec.key, &caller, source_ip),
                match &config.rate_limits.store {
                    crate::config::LimitStore::Local => "this process",
                    crate::config::LimitStore::Redis(_) => "shared through Redis",
                }
            ),
            None => "none on this route".to_owned(),
        };
        let _ = writeln!(out, "rate limit: {line}");
    }
    Ok(Explanation {
        text: out,
        allowed: decision.verdict.is_ok(),
    })
}

fn describe(out: &mut String, caller: &Caller, d: &Decision<'_>) {
    let list = |v: &[String]| {
        if v.is_empty() {
            "-".to_owned()
        } else {
            v.join(", ")
        }
    };
    let factors: Vec<String> = caller
        .factors
        .iter()
        .map(|f| f.as_str().to_owned())
        .collect();
    let _ = writeln!(
        out,
        "identity:   {}",
        caller.identity.as_deref().unwrap_or("- (anonymous)")
    );
    let _ = writeln!(out, "factors:    {}", list(&factors));
    let _ = writeln!(out, "principals: {}", list(&caller.principals));
    let _ = writeln!(out, "roles:      {}", list(&caller.roles));
    match d.route {
        Some(r) => {
            let allow = match &r.allow {
                Allow::Anyone => "anyone".to_owned(),
                Allow::Authenticated => "authenticated".to_owned(),
                Allow::Rules(rules) => {
                    let mut parts = Vec::new();
                    if !rules.roles.is_empty() {
                        parts.push(format!("roles: [{}]", rules.roles.join(", ")));
                    }
                    if !rules.factors.is_empty() {
                        let f: Vec<&str> = rules.factors.iter().map(|f| f.as_str()).collect();
                        parts.push(format!("factors: [{}]", f.join(", ")));
                    }
                    if !rules.when.is_empty() {
                        parts.push(format!("when: {} condition(s)", rules.when.len()));
                    }
                    format!("{{ {} }}", parts.join(", "))
                }
            };
            let _ = writeln!(out, "route:      {} (allow: {allow})", r.name);
        }
        None => {
            let _ = writeln!(out, "route:      none");
        }
    }
    let _ = writeln!(out, "rule:       {}", d.rule);
    let verdict = match d.verdict {
        Ok(()) => "allow (forwarded upstream)",
        Err(Denial::NoRoute) => "404 (no route matches)",
        Err(Denial::Unauthenticated) => "401 (a credential is needed)",
        Err(Denial::Forbidden) => "403 (the route does not allow this caller)",
    };
    let _ = writeln!(out, "decision:   {verdict}");
}

/// The outcome of one test case.
#[derive(Debug)]
pub struct TestOutcome {
    /// The case's name.
    pub name: String,
    /// None when it passed; else what went wrong.
    pub failure: Option<String>,
}

/// The `tests:` cases as a gate: `run` and reload serve no configuration whose own policy
/// tests fail, so an edit that opens (or closes) a route by mistake is refused like a syntax
/// error. Each failure is reported at its test's line.
///
/// # Errors
/// One problem per failed case.
pub fn enforce_tests(config: &Config) -> Result<(), crate::config::ConfigErrors> {
    let file = config.path.display().to_string();
    let errors: Vec<_> = run_tests(config)
        .into_iter()
        .zip(&config.tests)
        .enumerate()
        .filter_map(|(i, (outcome, case))| {
            outcome.failure.map(|why| crate::config::ConfigError {
                file: file.clone(),
                pos: case.pos,
                key: format!("tests[{i}]"),
                message: format!("policy test {:?} fails: {why}", case.name),
            })
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(crate::config::ConfigErrors { file, errors })
    }
}

/// Runs the `tests:` cases of a configuration.
pub fn run_tests(config: &Config) -> Vec<TestOutcome> {
    let policy = Policy::new(config);
    config
        .tests
        .iter()
        .map(|t| run_case(config, &policy, t))
        .collect()
}

fn run_case(config: &Config, policy: &Policy, t: &TestCase) -> TestOutcome {
    let r = &t.request;
    let index = |pred: &dyn Fn(&PrincipalMatcher, &str) -> bool, want: &Option<String>| {
        want.as_ref().and_then(|w| {
            config.principals.iter().position(|p| {
                pred(&p.matcher, &p.name)
                    && match &p.matcher {
                        PrincipalMatcher::Basic { user, .. } => user == w,
                        _ => p.name == *w,
                    }
            })
        })
    };
    let api_key = index(
        &|m, _| matches!(m, PrincipalMatcher::ApiKey { .. }),
        &r.api_key_id,
    );
    let basic = index(
        &|m, _| matches!(m, PrincipalMatcher::Basic { .. }),
        &r.basic_user,
    );
    let claims: Option<Map<String, Value>> = r.jwt.clone();
    let verified = Verified {
        cert: r.cert.as_ref(),
        api_key,
        jwt: claims.as_ref(),
        basic,
        token: r.token.as_ref(),
        oauth: r.oauth.as_ref(),
    };
    let mut caller = policy.identify(&verified);
    let name = t.name.clone();
    if r.totp {
        let bound = config
            .principals
            .iter()
            .any(|p| p.totp.is_some() && caller.principals.contains(&p.name));
        if !bound {
            return TestOutcome {
                name,
                failure: Some(
                    "totp: true, but no principal the request identifies has a totp secret \
                     (the gateway would answer 401)"
                        .to_owned(),
                ),
            };
        }
        caller.factors.push(Factor::Totp);
        caller.factors.sort_unstable();
    }
    let path = match normalize_path(&r.path) {
        Ok(p) => p,
        Err(e) => {
            return TestOutcome {
                name,
                failure: Some(format!("path {:?} is refused with 400: {e}", r.path)),
            };
        }
    };
    let facts = RequestFacts {
        method: &r.method,
        host: r.host.as_deref(),
        path: &match_form(&path),
        source_ip: r.source_ip,
        headers: &r.headers,
        cert: r.cert.as_ref(),
        claims: claims.as_ref(),
    };
    let d = policy.decide(&facts, &caller);
    let got = match d.verdict {
        Ok(()) => Expectation::Allow,
        Err(Denial::NoRoute) => Expectation::NoRoute,
        Err(Denial::Unauthenticated) => Expectation::Unauthenticated,
        Err(Denial::Forbidden) => Expectation::Forbidden,
    };
    let label = |e: Expectation| match e {
        Expectation::Allow => "allow",
        Expectation::Unauthenticated => "401",
        Expectation::Forbidden => "403",
        Expectation::NoRoute => "404",
    };
    let route = d.route.map(|r| &*r.name);
    let mut problems = Vec::new();
    if got != t.expect {
        problems.push(format!("expected {}, got {}", label(t.expect), label(got)));
    }
    if let Some(want) = &t.route
        && route != Some(want.as_str())
    {
        problems.push(format!(
            "expected route {want:?} to decide, got {}",
            route.map_or("no route".to_owned(), |r| format!("{r:?}"))
        ));
    }
    let failure = (!problems.is_empty()).then(|| {
        let mut why = String::new();
        describe(&mut why, &caller, &d);
        format!(
            "{}\n{}",
            problems.join("; "),
            why.lines()
                .map(|l| format!("      {l}"))
                .collect::<Vec<_>>()
                .join("\n")
        )
    });
    TestOutcome { name, failure }
}

/// `keys new`: prints the key alone on the first line, then the principals entry.
///
/// # Errors
/// When the secure random source fails.
pub fn new_key_text(id: &str) -> anyhow::Result<String> {
    let (key, entry) = auth::new_api_key(id).map_err(anyhow::Error::msg)?;
    Ok(format!(
        "{key}\n# Give the key above to the client once; it is not stored anywhere.\n# Add this to principals: in gateway.yaml (and list its roles):\n{entry}"
    ))
}
