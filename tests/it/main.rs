//! Integration tests: real TLS to a real in-process gateway over loopback, a PKI generated
//! per test, and a real upstream server. One binary, so the harness is compiled once.

mod support;

mod attacks;
mod auth;
mod check;
mod cli;
mod deploy;
mod faults;
mod http2;
mod lifecycle;
mod limits;
mod mtls;
mod oauth;
mod policy;
mod proxy;
mod python;
mod ratelimit;
mod tokens;
mod totp;

/// The policy most tests use: ops (admin + reader), readers, an open health route.
pub const POLICY: &str = r#"
principals:
  - name: ops
    cert: { cn: "ops-*", o: Acme }
    roles: [admin, reader]
  - name: readers
    cert: { cn: "reader-*" }
    roles: [reader]
routes:
  - name: admin
    match: { prefix: /admin/ }
    upstream: app
    allow: { roles: [admin] }
  - name: health
    match: { exact: /health }
    upstream: app
    allow: anyone
  - name: reader
    match: { prefix: / }
    upstream: app
    allow: { roles: [reader] }
"#;
