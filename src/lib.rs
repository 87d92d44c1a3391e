//! portcullis: a mutual-TLS reverse proxy and API gateway.
//!
//! Module map, in the order a request meets them:
//! - [`server`]: listeners, accept loop, TLS handshake under a deadline, drain;
//! - [`tls`]: rustls server configuration, client verification, CRLs;
//! - [`identity`]: the verified client certificate, read once per connection;
//! - [`gateway`]: the per-request stages in order, over one swappable [`gateway::State`];
//! - [`auth`]: API keys, JWT and Basic credentials, and the brute-force guard;
//! - [`policy`]: path normalization, routes, principals and the allow/deny decision;
//! - [`ratelimit`]: per-route GCRA budgets, in process or shared through Redis;
//! - [`proxy`]: header hygiene and forwarding to pooled upstreams;
//! - [`error`]: the single error → status mapping;
//! - [`observability`], [`metrics`], [`admin`]: logs, the access log, Prometheus, health.
//!
//! Around them: [`config`] (gateway.yaml), [`reload`] and [`access`] (who gains or loses
//! access on a change), [`pki`] (`certs` commands),
//! [`explain`] (`explain` and `test`), [`demo`] and [`cli`].

pub mod access;
pub mod admin;
pub mod auth;
pub mod cli;
pub mod commands;
pub mod config;
pub mod demo;
pub mod error;
pub mod explain;
pub mod gateway;
pub mod identity;
pub mod metrics;
pub mod observability;
pub mod pki;
pub mod policy;
pub mod proxy;
pub mod ratelimit;
pub mod reload;
pub mod server;
pub mod tls;

pub use server::{Gateway, StartError};
