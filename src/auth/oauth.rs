//! OAuth 2.0 token introspection (RFC 7662): opaque bearer tokens that partners get from their
//! identity provider, checked by asking that provider.
//!
//! A token is sent as `token=...` to `oauth.introspection_url` with the gateway's own client
//! credentials (client_secret_basic), over rustls. Answers are cached by a SHA-256 of the
//! token (never the token itself): an active one for at most `oauth.cache` and never past its
//! `exp`, an inactive one for 10 s. Concurrent requests with the same uncached token wait for
//! one call. An unreachable provider is an error the gateway answers with 503, and nothing is
//! cached, so the next request asks again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::config::OauthSettings;

/// How long an inactive answer is kept.
const INACTIVE_FOR: Duration = Duration::from_secs(10);

/// Most answers kept; past it, new answers are not cached until old ones expire.
pub const MAX_CACHED: usize = 10_000;

/// Largest introspection response read.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// What the provider said about a token.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Introspection {
    pub active: bool,
    pub client_id: Option<String>,
    pub sub: Option<String>,
    pub scopes: Vec<String>,
    pub exp: Option<u64>,
}

/// The provider could not be asked (unreachable, slow, or an answer that is not RFC 7662).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable(pub String);

type Shared = Arc<tokio::sync::OnceCell<Result<Arc<Introspection>, Unavailable>>>;

/// Answers by token hash, each with the instant it stops being used.
type Cache = HashMap<[u8; 32], (Arc<Introspection>, Instant)>;

/// Introspects and caches, for one configuration snapshot (the cache is carried over reloads
/// that keep the same provider).
pub struct Introspector {
    settings: OauthSettings,
    tls: Option<Arc<rustls::ClientConfig>>,
    cache: Arc<Mutex<Cache>>,
    inflight: Arc<Mutex<HashMap<[u8; 32], Shared>>>,
    calls: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for Introspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Introspector")
            .field("url", &self.settings.introspection_url)
            .finish()
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Introspector {
    /// Builds the TLS client (system roots plus `oauth.ca`).
    ///
    /// # Errors
    /// An unreadable or invalid `oauth.ca`.
    pub fn new(settings: &OauthSettings) -> Result<Introspector, String> {
        let tls = if settings.introspection_url.scheme_str() == Some("https") {
            Some(Arc::new(crate::tls::https_client(
                settings.ca.as_ref().map(|f| f.path.as_path()),
            )?))
        } else {
            None
        };
        Ok(Introspector {
            settings: settings.clone(),
            tls,
            cache: Arc::default(),
            inflight: Arc::default(),
            calls: Arc::default(),
        })
    }

    /// Keeps the previous snapshot's cache when it asks the same provider as the same client.
    pub fn carry_over(&mut self, old: &Introspector) {
        let (a, b) = (&self.settings, &old.settings);
        if a.introspection_url == b.introspection_url
            && a.client_id == b.client_id
            && a.client_secret.0 == b.client_secret.0
        {
            self.cache = old.cache.clone();
            self.inflight = old.inflight.clone();
            self.calls = old.calls.clone();
        }
    }

    /// Introspection calls made so far (for tests and metrics).
    pub fn calls(&self) -> u64 {
        self.calls.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// What the provider says about `token`: from the cache, from a call already in flight
    /// for the same token, or from a new call.
    ///
    /// # Errors
    /// [`Unavailable`] when the provider cannot be asked; nothing is cached then.
    pub async fn introspect(&self, token: &str) -> Result<Arc<Introspection>, Unavailable> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = Instant::now();
        if let Some((answer, until)) = self.lock_cache().get(&key)
            && *until > now
        {
            return Ok(answer.clone());
        }
        let cell = self
            .inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key)
            .or_default()
            .clone();
        // Removes the entry when the call is over, and also when every request waiting for it
        // went away first (a client that disconnects mid-call), so the table holds only calls
        // someone still waits for.
        let _leave = Leave {
            inflight: &self.inflight,
            key,
            cell: cell.clone(),
        };
        cell.get_or_init(|| async {
            self.calls
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let r = self.call(token).await.map(Arc::new);
            if let Ok(answer) = &r {
                self.remember(key, answer.clone());
            }
            r
        })
        .await
        .clone()
    }

    #[cfg(test)]
    fn inflight_len(&self) -> usize {
        self.inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn remember(&self, key: [u8; 32], answer: Arc<Introspection>) {
        let keep = if answer.active {
            let left = answer.exp.map_or(self.settings.cache, |exp| {
                Duration::from_secs(exp.saturating_sub(now_secs()))
            });
            left.min(self.settings.cache)
        } else {
            INACTIVE_FOR
        };
        if keep.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut cache = self.lock_cache();
        if cache.len() >= MAX_CACHED {
            cache.retain(|_, (_, until)| *until > now);
            if cache.len() >= MAX_CACHED {
                return;
            }
        }
        cache.insert(key, (answer, now + keep));
    }

    /// One POST to the introspection endpoint, under `oauth.timeout`.
    async fn call(&self, token: &str) -> Result<Introspection, Unavailable> {
        tokio::time::timeout(self.settings.timeout, self.call_inner(token))
            .await
            .map_err(|_| Unavailable(format!("no answer within {:?}", self.settings.timeout)))?
    }

    async fn call_inner(&self, token: &str) -> Result<Introspection, Unavailable> {
        use http_body_util::BodyExt;
        let fail = |what: &str, e: &dyn std::fmt::Display| Unavailable(format!("{what}: {e}"));
        let url = &self.settings.introspection_url;
        let host = url
            .host()
            .ok_or_else(|| Unavailable("the URL has no host".into()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = url
            .port_u16()
            .unwrap_or(if self.tls.is_some() { 443 } else { 80 });
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| fail("connect", &e))?;
        let _ = tcp.set_nodelay(true);
        let body = form(&[("token", token), ("token_type_hint", "access_token")]);
        let credentials = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            form_encode(&self.settings.client_id),
            form_encode(&String::from_utf8_lossy(&self.settings.client_secret.0))
        ));
        let req = http::Request::post(url.path_and_query().map_or("/", |p| p.as_str()))
            .header(
                http::header::HOST,
                url.authority().map_or(host.as_str(), |a| a.as_str()),
            )
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::AUTHORIZATION, format!("Basic {credentials}"))
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .map_err(|e| fail("request", &e))?;
        let resp = match &self.tls {
            Some(config) => {
                let name = rustls::pki_types::ServerName::try_from(host.clone())
                    .map_err(|e| fail("host name", &e))?;
                let tls = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| fail("TLS", &e))?;
                send(hyper_util::rt::TokioIo::new(tls), req).await?
            }
            None => send(hyper_util::rt::TokioIo::new(tcp), req).await?,
        };
        if !resp.status().is_success() {
            return Err(Unavailable(format!("HTTP status {}", resp.status())));
        }
        let bytes = http_body_util::Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| fail("body", &e))?
            .to_bytes();
        parse(&bytes)
    }
}

/// A request's hold on an in-flight call; see [`Introspector::introspect`].
struct Leave<'a> {
    inflight: &'a Mutex<HashMap<[u8; 32], Shared>>,
    key: [u8; 32],
    cell: Shared,
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        let ours = inflight
            .get(&self.key)
            .is_some_and(|c| Arc::ptr_eq(c, &self.cell));
        // Done (the answer is cached, or the failure must be asked again), or nobody else
        // waits: the table's reference and this one are the last two.
        if ours && (self.cell.initialized() || Arc::strong_count(&self.cell) <= 3) {
            inflight.remove(&self.key);
        }
    }
}

async fn send<T>(
    io: T,
    req: http::Request<http_body_util::Full<bytes::Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, Unavailable>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| Unavailable(format!("HTTP: {e}")))?;
    tokio::spawn(conn);
    sender
        .send_request(req)
        .await
        .map_err(|e| Unavailable(format!("HTTP: {e}")))
}

/// Reads an RFC 7662 response: `active` is required; the rest is optional.
fn parse(bytes: &[u8]) -> Result<Introspection, Unavailable> {
    let v: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|_| Unavailable("the answer is not JSON".into()))?;
    let active = v
        .get("active")
        .and_then(serde_json::Value::as_bool)
        .ok_or_else(|| Unavailable("the answer has no boolean \"active\"".into()))?;
    if !active {
        return Ok(Introspection::default());
    }
    let text = |k: &str| {
        v.get(k)
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned)
    };
    Ok(Introspection {
        active,
        client_id: text("client_id"),
        sub: text("sub"),
        scopes: text("scope")
            .map(|s| s.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default(),
        exp: v.get("exp").and_then(serde_json::Value::as_u64),
    })
}

/// `application/x-www-form-urlencoded`.
fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", form_encode(k), form_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(char::from(b));
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse_as_rfc7662_says() {
        let a = parse(
            br#"{"active":true,"client_id":"partner-7","sub":"u1","scope":"orders:read orders:write","exp":2000000000}"#,
        )
        .unwrap();
        assert_eq!(a.client_id.as_deref(), Some("partner-7"));
        assert_eq!(a.scopes, ["orders:read", "orders:write"]);
        assert_eq!(a.exp, Some(2_000_000_000));
        assert!(
            !parse(br#"{"active":false,"sub":"ignored"}"#)
                .unwrap()
                .active
        );
        assert!(parse(br#"{"sub":"u1"}"#).is_err(), "active is required");
        assert!(parse(b"<html>").is_err());
    }

    #[tokio::test]
    async fn a_call_every_requester_abandoned_leaves_nothing_behind() {
        // A provider that accepts and never answers; the requests give up first.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/introspect", silent.local_addr().unwrap());
        let settings = OauthSettings {
            introspection_url: url.parse().unwrap(),
            client_id: "gw".into(),
            client_secret: crate::config::Secret(b"s".to_vec()),
            ca: None,
            cache: Duration::from_secs(60),
            timeout: Duration::from_secs(30),
        };
        let idp = Arc::new(Introspector::new(&settings).unwrap());
        let mut waiting = Vec::new();
        for i in 0..20 {
            let idp = idp.clone();
            // Two requests per token: the second waits on the first one's call.
            waiting.push(tokio::spawn(async move {
                idp.introspect(&format!("t{}", i / 2)).await
            }));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(idp.inflight_len(), 10);
        for w in &waiting {
            w.abort();
        }
        for w in waiting {
            let _ = w.await;
        }
        assert_eq!(idp.inflight_len(), 0, "abandoned calls are forgotten");
    }

    #[test]
    fn form_values_are_encoded() {
        assert_eq!(form(&[("token", "a+b/c=d e")]), "token=a%2Bb%2Fc%3Dd+e");
    }
}
