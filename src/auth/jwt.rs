//! JWT bearer verification: an explicit algorithm allow-list, keys from a JWKS file or https
//! URL, `iss`/`aud`/`exp`/`nbf` with leeway, and optional RFC 8705 certificate binding.
//!
//! Key confusion is ruled out by construction: HS256/384/512 verify only with `hmac_secret`,
//! never with a JWKS key; symmetric keys in a JWKS are ignored; a JWK whose own `alg` differs
//! from the token's is not used; `none` cannot be configured. The key set is swapped
//! atomically: a file is re-read when it changes, a URL is refreshed on a timer, and the last
//! good set stays in use when a refresh fails.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use base64::Engine as _;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::AuthFailure;
use crate::config::{ConfigErrors, JwksSource, JwtSettings, Problems};
use crate::identity::PeerCert;

/// Largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 1 << 20;

/// One usable verification key.
struct Key {
    key: DecodingKey,
    family: Family,
    /// The JWK's own `alg`, when it states one.
    alg: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    Rsa,
    Ec,
    Okp,
}

fn family_of(alg: Algorithm) -> Option<Family> {
    use Algorithm::*;
    match alg {
        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => Some(Family::Rsa),
        ES256 | ES384 => Some(Family::Ec),
        EdDSA => Some(Family::Okp),
        _ => None,
    }
}

/// The current key set.
#[derive(Default)]
struct KeySet {
    by_kid: HashMap<String, Arc<Key>>,
    all: Vec<Arc<Key>>,
}

impl KeySet {
    fn from_jwks(set: &JwkSet) -> (KeySet, usize) {
        let mut ks = KeySet::default();
        let mut skipped = 0;
        for jwk in &set.keys {
            match usable(jwk) {
                Some(key) => {
                    let key = Arc::new(key);
                    if let Some(kid) = &jwk.common.key_id {
                        ks.by_kid.insert(kid.clone(), key.clone());
                    }
                    ks.all.push(key);
                }
                None => skipped += 1,
            }
        }
        (ks, skipped)
    }
}

fn usable(jwk: &Jwk) -> Option<Key> {
    let family = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Family::Rsa,
        AlgorithmParameters::EllipticCurve(_) => Family::Ec,
        AlgorithmParameters::OctetKeyPair(_) => Family::Okp,
        // Symmetric keys never come from a JWKS: HS* verifies only with hmac_secret.
        AlgorithmParameters::OctetKey(_) => return None,
        _ => return None,
    };
    let key = DecodingKey::from_jwk(jwk).ok()?;
    let alg = jwk.common.key_algorithm.map(|a| format!("{a:?}"));
    Some(Key { key, family, alg })
}

/// Verifies bearer tokens for one configuration snapshot.
pub struct JwtVerifier {
    settings: JwtSettings,
    keys: Arc<ArcSwap<KeySet>>,
    hmac: Option<DecodingKey>,
    /// True once the first attempt to get the keys finished (at once for a file), so
    /// readiness can wait for an https JWKS instead of answering 401 meanwhile.
    first_attempt: Arc<tokio::sync::watch::Sender<bool>>,
    /// The key set and its refresh task came from the previous snapshot.
    carried: bool,
}

impl JwtVerifier {
    /// Builds the verifier; a JWKS file is read now (an https JWKS is fetched by
    /// [`JwtVerifier::start_refresh`]).
    ///
    /// # Errors
    /// An unreadable or invalid JWKS file, reported at `jwt.jwks`.
    pub fn new(settings: &JwtSettings, config_path: &Path) -> Result<JwtVerifier, ConfigErrors> {
        let mut keys = KeySet::default();
        if let Some(JwksSource::File(f)) = &settings.jwks {
            match read_jwks_file(&f.path) {
                Ok(set) => keys = KeySet::from_jwks(&set).0,
                Err(e) => {
                    let mut p = Problems::new(config_path.display().to_string());
                    p.push(f.pos, &f.key, format!("{}: {e}", f.path.display()));
                    return Err(p
                        .into_result(())
                        .err()
                        .unwrap_or_else(|| unreachable_errors(config_path)));
                }
            }
        }
        let hmac = settings
            .hmac_secret
            .as_ref()
            .and_then(|s| DecodingKey::from_secret(&s.0).ok());
        let is_url = matches!(settings.jwks, Some(JwksSource::Url(_)));
        Ok(JwtVerifier {
            settings: settings.clone(),
            keys: Arc::new(ArcSwap::from_pointee(keys)),
            hmac,
            first_attempt: Arc::new(tokio::sync::watch::Sender::new(!is_url)),
            carried: false,
        })
    }

    /// Takes over the previous snapshot's key set and refresh task when the key source is
    /// the same, so a reload never starts without keys (even while the IdP is unreachable)
    /// and never runs two refresh tasks for one source.
    pub fn carry_over(&mut self, old: &JwtVerifier) {
        let same_source = match (&self.settings.jwks, &old.settings.jwks) {
            (Some(JwksSource::File(a)), Some(JwksSource::File(b))) => a.path == b.path,
            (Some(JwksSource::Url(a)), Some(JwksSource::Url(b))) => {
                a == b
                    && self.settings.jwks_refresh == old.settings.jwks_refresh
                    && self.settings.jwks_ca.as_ref().map(|f| &f.path)
                        == old.settings.jwks_ca.as_ref().map(|f| &f.path)
            }
            _ => false,
        };
        if same_source {
            self.keys = old.keys.clone();
            self.first_attempt = old.first_attempt.clone();
            self.carried = true;
        }
    }

    /// Whether the first attempt to get the keys has finished (always, for a file).
    pub fn first_attempt_done(&self) -> bool {
        *self.first_attempt.borrow()
    }

    /// Resolves once the first attempt to get the keys has finished, successful or not.
    pub async fn first_attempt(&self) {
        let mut rx = self.first_attempt.subscribe();
        let _ = rx.wait_for(|done| *done).await;
    }

    /// Starts keeping the key set fresh: polls a JWKS file for changes, or fetches an https
    /// JWKS now and every `jwks_refresh`. The task ends when this verifier is dropped.
    pub fn start_refresh(&self) {
        if self.carried {
            return;
        }
        let weak = Arc::downgrade(&self.keys);
        match self.settings.jwks.clone() {
            Some(JwksSource::File(f)) => {
                tokio::spawn(watch_file(weak, f.path));
            }
            Some(JwksSource::Url(url)) => {
                let ca = self.settings.jwks_ca.as_ref().map(|f| f.path.clone());
                let first = self.first_attempt.clone();
                tokio::spawn(refresh_url(
                    weak,
                    url,
                    ca,
                    self.settings.jwks_refresh,
                    first,
                ));
            }
            None => {}
        }
    }

    /// Verifies a token and returns its claims.
    ///
    /// # Errors
    /// [`AuthFailure::BadToken`] with the reason, for the log.
    /// Whether `token` is a JWT this verifier would check: its header parses, its algorithm
    /// is allowed, and a key for it is configured (the JWKS has its kid, or `hmac_secret`).
    pub fn recognizes(&self, token: &str) -> bool {
        let Ok(header) = jsonwebtoken::decode_header(token) else {
            return false;
        };
        if !self.settings.algorithms.contains(&header.alg) {
            return false;
        }
        match family_of(header.alg) {
            None => self.hmac.is_some(),
            Some(_) => {
                let keys = self.keys.load();
                match &header.kid {
                    Some(kid) => keys.by_kid.contains_key(kid),
                    None => !keys.all.is_empty(),
                }
            }
        }
    }

    pub fn verify(
        &self,
        token: &str,
        cert: Option<&PeerCert>,
    ) -> Result<Map<String, Value>, AuthFailure> {
        let bad = |why: &str| AuthFailure::BadToken(why.to_owned());
        let header = jsonwebtoken::decode_header(token).map_err(|_| bad("malformed token"))?;
        let alg = header.alg;
        if !self.settings.algorithms.contains(&alg) {
            return Err(AuthFailure::BadToken(format!(
                "algorithm {alg:?} is not allowed"
            )));
        }
        let keys = self.keys.load();
        let key: &DecodingKey = match family_of(alg) {
            None => self
                .hmac
                .as_ref()
                .ok_or_else(|| bad("HMAC tokens need hmac_secret"))?,
            Some(family) => {
                let fits = |k: &Key| {
                    k.family == family && k.alg.as_deref().is_none_or(|a| a == format!("{alg:?}"))
                };
                let found = match &header.kid {
                    Some(kid) => keys.by_kid.get(kid).filter(|k| fits(k)),
                    None => {
                        let mut candidates = keys.all.iter().filter(|k| fits(k));
                        match (candidates.next(), candidates.next()) {
                            (Some(only), None) => Some(only),
                            _ => None,
                        }
                    }
                };
                &found
                    .ok_or_else(|| bad("no JWKS key matches the token's kid and algorithm"))?
                    .key
            }
        };
        let mut v = Validation::new(alg);
        v.leeway = self.settings.leeway.as_secs();
        v.validate_nbf = true;
        let mut required = vec!["exp"];
        if let Some(iss) = &self.settings.issuer {
            v.set_issuer(&[iss]);
            required.push("iss");
        }
        if self.settings.audiences.is_empty() {
            v.validate_aud = false;
        } else {
            v.set_audience(&self.settings.audiences);
            required.push("aud");
        }
        v.set_required_spec_claims(&required);
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, key, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            AuthFailure::BadToken(
                match e.kind() {
                    K::ExpiredSignature => "expired",
                    K::ImmatureSignature => "not valid yet (nbf)",
                    K::InvalidIssuer => "wrong issuer",
                    K::InvalidAudience => "wrong audience",
                    K::InvalidSignature => "bad signature",
                    K::MissingRequiredClaim(_) => "a required claim (exp, iss or aud) is missing",
                    K::InvalidAlgorithm => "algorithm does not fit the key",
                    _ => "invalid token",
                }
                .to_owned(),
            )
        })?;
        let claims = data.claims;
        if self.settings.bind_to_certificate {
            let cert =
                cert.ok_or_else(|| bad("certificate-bound token without a client certificate"))?;
            let want = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(cert.fingerprint);
            let got = claims
                .get("cnf")
                .and_then(|c| c.get("x5t#S256"))
                .and_then(Value::as_str);
            if got != Some(want.as_str()) {
                return Err(bad("cnf.x5t#S256 does not match the client certificate"));
            }
        }
        Ok(claims)
    }
}

fn unreachable_errors(config_path: &Path) -> ConfigErrors {
    ConfigErrors {
        file: config_path.display().to_string(),
        errors: Vec::new(),
    }
}

fn parse_jwks(bytes: &[u8]) -> Result<JwkSet, String> {
    if bytes.len() > MAX_JWKS_BYTES {
        return Err("JWKS larger than 1 MiB".to_owned());
    }
    let set: JwkSet =
        serde_json::from_slice(bytes).map_err(|e| format!("not a JWKS document: {e}"))?;
    if set.keys.is_empty() {
        return Err("the JWKS has no keys".to_owned());
    }
    if KeySet::from_jwks(&set).0.all.is_empty() {
        return Err("the JWKS has no usable public key (RSA, EC or OKP)".to_owned());
    }
    Ok(set)
}

fn read_jwks_file(path: &Path) -> Result<JwkSet, String> {
    let bytes = std::fs::read(path).map_err(|e| crate::config::read_error(path, &e))?;
    parse_jwks(&bytes)
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Re-reads a JWKS file within a second of a change; a broken file keeps the old keys.
async fn watch_file(keys: Weak<ArcSwap<KeySet>>, path: std::path::PathBuf) {
    let mut seen = modified(&path);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Some(keys) = keys.upgrade() else { return };
        let now = modified(&path);
        if now == seen {
            continue;
        }
        seen = now;
        match read_jwks_file(&path) {
            Ok(set) => {
                let (ks, _) = KeySet::from_jwks(&set);
                tracing::info!(jwks = %path.display(), keys = ks.all.len(), "JWKS file reloaded");
                keys.store(Arc::new(ks));
            }
            Err(e) => {
                tracing::warn!(jwks = %path.display(), error = %e, "JWKS file change ignored; keeping the previous keys")
            }
        }
    }
}

/// Fetches an https JWKS now and every `every`; retries sooner after a failure, keeps the last
/// good set, and logs an outage once and its end once.
async fn refresh_url(
    keys: Weak<ArcSwap<KeySet>>,
    url: http::Uri,
    ca: Option<std::path::PathBuf>,
    every: Duration,
    first_attempt: Arc<tokio::sync::watch::Sender<bool>>,
) {
    let mut failing = false;
    let mut retry = Duration::from_secs(2);
    loop {
        if keys.strong_count() == 0 {
            return;
        }
        let result = fetch_jwks(&url, ca.as_deref()).await;
        let Some(store) = keys.upgrade() else { return };
        // Readiness waits for this first answer, good or bad (a failure is logged below).
        let first = !*first_attempt.borrow();
        let wait = match result {
            Ok(set) => {
                let (ks, _) = KeySet::from_jwks(&set);
                if failing {
                    tracing::info!(jwks = %url, keys = ks.all.len(), "JWKS fetch recovered");
                } else {
                    tracing::debug!(jwks = %url, keys = ks.all.len(), "JWKS fetched");
                }
                store.store(Arc::new(ks));
                first_attempt.send_replace(true);
                failing = false;
                retry = Duration::from_secs(2);
                every
            }
            Err(e) => {
                if first {
                    tracing::error!(jwks = %url, error = %e, "first JWKS fetch failed; reporting ready without keys (bearer tokens get 401) and retrying");
                    first_attempt.send_replace(true);
                } else if !failing {
                    tracing::warn!(jwks = %url, error = %e, "JWKS fetch failed; keeping the last good keys and retrying");
                }
                failing = true;
                let wait = retry;
                retry = (retry * 2).min(every);
                wait
            }
        };
        drop(store);
        tokio::time::sleep(wait).await;
    }
}

/// GET an https URL with a 5 s deadline for the whole exchange and a 1 MiB body limit.
async fn fetch_jwks(url: &http::Uri, ca: Option<&Path>) -> Result<JwkSet, String> {
    tokio::time::timeout(Duration::from_secs(5), fetch_jwks_inner(url, ca))
        .await
        .map_err(|_| "timed out after 5s".to_owned())?
}

async fn fetch_jwks_inner(url: &http::Uri, ca: Option<&Path>) -> Result<JwkSet, String> {
    use http_body_util::BodyExt;
    use rustls::pki_types::ServerName;

    let host = url
        .host()
        .ok_or("the URL has no host")?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = url.port_u16().unwrap_or(443);
    let config = crate::tls::https_client(ca).map_err(|e| format!("jwks_ca {e}"))?;
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let name = ServerName::try_from(host.clone()).map_err(|_| "bad host name".to_owned())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
    tokio::spawn(conn);
    let path = url.path_and_query().map_or("/", |p| p.as_str());
    let req = http::Request::get(path)
        .header(
            http::header::HOST,
            url.authority().map_or(host.as_str(), |a| a.as_str()),
        )
        .header(http::header::ACCEPT, "application/json")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("HTTP status {}", resp.status()));
    }
    let body = http_body_util::Limited::new(resp.into_body(), MAX_JWKS_BYTES)
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    parse_jwks(&body)
}
