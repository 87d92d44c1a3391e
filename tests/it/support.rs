//! Shared harness: a test PKI, a recording upstream, an in-process gateway and TLS clients.

pub mod client;
pub mod gateway;
pub mod jwt;
pub mod pki;
pub mod redis;
pub mod upstream;

pub use client::Client;
pub use gateway::TestGateway;
pub use pki::TestPki;
pub use upstream::FakeUpstream;
