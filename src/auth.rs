//! Credentials beyond the certificate: API keys, JWT bearer tokens and HTTP Basic.
//!
//! This module reads what a request presents ([`Presented`]) and verifies it
//! ([`Authenticator`]); it decides nothing about routes (`policy` does). Every presented
//! credential must verify: an invalid one is a 401 even beside a valid certificate, so a bad
//! credential is never silently ignored. Failed attempts are counted per client IP by
//! [`guard::AuthGuard`]; argon2 verifications are capped by a semaphore (one per core) so a
//! flood of Basic attempts cannot take every core, and to one at a time per client network, so
//! one client cannot take them all from everyone else.

pub mod guard;
pub mod jwt;
pub mod oauth;
pub mod tokens;
pub mod totp;

use std::sync::Arc;

use base64::Engine as _;
use http::{HeaderMap, HeaderName, header};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{Config, ConfigErrors, PrincipalMatcher, TotpSource};
use crate::identity::PeerCert;

/// The credentials a request presents (not yet verified).
#[derive(Debug, Default)]
pub struct Presented {
    /// The API key header's value.
    pub api_key: Option<String>,
    /// `Authorization: Bearer <token>`.
    pub bearer: Option<String>,
    /// `Authorization: Basic base64(user:password)`.
    pub basic: Option<(String, String)>,
    /// The one-time code header's value (`totp.header`), when a principal has a secret.
    pub otp: Option<String>,
}

impl Presented {
    /// Whether anything besides the certificate was presented.
    pub fn any(&self) -> bool {
        self.api_key.is_some()
            || self.bearer.is_some()
            || self.basic.is_some()
            || self.otp.is_some()
    }

    /// Reads the one-time code from `header`.
    ///
    /// # Errors
    /// More than one code header, or one that is not visible ASCII.
    pub fn read_otp(
        &mut self,
        headers: &HeaderMap,
        header: &HeaderName,
    ) -> Result<(), AuthFailure> {
        self.otp = single_header(
            headers,
            header,
            "more than one one-time code header",
            "one-time code is not visible ASCII",
        )?
        .map(|code| code.trim().to_owned());
        Ok(())
    }
}

/// The value of a header that may appear at most once, as visible ASCII.
fn single_header<'h>(
    headers: &'h HeaderMap,
    name: &HeaderName,
    repeated: &'static str,
    not_ascii: &'static str,
) -> Result<Option<&'h str>, AuthFailure> {
    let mut all = headers.get_all(name).iter();
    let Some(v) = all.next() else {
        return Ok(None);
    };
    if all.next().is_some() {
        return Err(AuthFailure::Malformed(repeated));
    }
    v.to_str()
        .map(Some)
        .map_err(|_| AuthFailure::Malformed(not_ascii))
}

/// Why a presented credential was refused. The variant is logged; the client only sees 401.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthFailure {
    /// The Authorization header is malformed or uses an unsupported scheme.
    Malformed(&'static str),
    /// No principal holds this API key.
    UnknownApiKey,
    /// The API key's principal has expired.
    ExpiredApiKey,
    /// The bearer token failed verification; the reason is for the log.
    BadToken(String),
    /// Unknown Basic user or wrong password.
    BadPassword,
    /// Basic or bearer credentials are presented but not configured.
    NotConfigured(&'static str),
    /// A one-time code, but no principal the request identified has a TOTP secret.
    NoTotpPrincipal,
    /// A one-time code that is not the current one of the identified principal.
    BadCode,
    /// The current code, but one already accepted for this principal (a replay).
    ReplayedCode,
    /// The principal collected too many wrong codes lately; codes are refused unchecked.
    CodesLocked,
}

impl std::fmt::Display for AuthFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthFailure::Malformed(why) => write!(f, "malformed credentials: {why}"),
            AuthFailure::UnknownApiKey => f.write_str("unknown API key"),
            AuthFailure::ExpiredApiKey => f.write_str("expired API key"),
            AuthFailure::BadToken(why) => write!(f, "invalid bearer token: {why}"),
            AuthFailure::BadPassword => f.write_str("unknown user or wrong password"),
            AuthFailure::NotConfigured(what) => write!(f, "{what} credentials are not configured"),
            AuthFailure::NoTotpPrincipal => {
                f.write_str("one-time code, but no identified principal has a TOTP secret")
            }
            AuthFailure::BadCode => f.write_str("wrong one-time code"),
            AuthFailure::ReplayedCode => f.write_str("one-time code already used"),
            AuthFailure::CodesLocked => f.write_str(
                "too many wrong one-time codes for this principal lately; refused unchecked",
            ),
        }
    }
}

/// Reads the presented credentials from request headers.
///
/// # Errors
/// A malformed `Authorization` header (unknown scheme, bad base64, no `:`).
pub fn presented(
    headers: &HeaderMap,
    api_key_header: &HeaderName,
) -> Result<Presented, AuthFailure> {
    let api_key = single_header(
        headers,
        api_key_header,
        "more than one API key header",
        "API key is not visible ASCII",
    )?
    .map(|key| key.trim().to_owned());
    let mut p = Presented {
        api_key,
        ..Presented::default()
    };
    if let Some(v) = single_header(
        headers,
        &header::AUTHORIZATION,
        "more than one Authorization header",
        "Authorization is not visible ASCII",
    )? {
        let (scheme, rest) = v
            .trim()
            .split_once(' ')
            .ok_or(AuthFailure::Malformed("Authorization has no scheme"))?;
        let rest = rest.trim();
        if scheme.eq_ignore_ascii_case("bearer") {
            p.bearer = Some(rest.to_owned());
        } else if scheme.eq_ignore_ascii_case("basic") {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(rest)
                .map_err(|_| AuthFailure::Malformed("Basic credentials are not base64"))?;
            let text = String::from_utf8(raw)
                .map_err(|_| AuthFailure::Malformed("Basic credentials are not UTF-8"))?;
            let (user, pass) = text
                .split_once(':')
                .ok_or(AuthFailure::Malformed("Basic credentials have no ':'"))?;
            p.basic = Some((user.to_owned(), pass.to_owned()));
        } else {
            return Err(AuthFailure::Malformed("unsupported Authorization scheme"));
        }
    }
    Ok(p)
}

struct ApiKeyEntry {
    sha256: [u8; 32],
    principal: usize,
    expires: Option<time::Date>,
}

struct BasicEntry {
    user: String,
    principal: usize,
    hash: String,
}

/// Verifies API keys, JWTs and Basic credentials against one configuration snapshot.
pub struct Authenticator {
    api_keys: Vec<ApiKeyEntry>,
    basic: Vec<BasicEntry>,
    /// The argon2 parameters of the configured hashes: an unknown user is verified against a
    /// dummy hash with these, so a wrong user costs as much as a wrong password.
    dummy_params: argon2::Params,
    jwt: Option<jwt::JwtVerifier>,
    /// TOTP generators by principal name, and where codes arrive.
    totp: std::collections::HashMap<String, totp::Totp>,
    totp_header: Option<HeaderName>,
    tokens: Option<tokens::TokenIssuer>,
    oauth: Option<oauth::Introspector>,
    argon2_slots: Arc<tokio::sync::Semaphore>,
    client_slots: ClientSlots,
    challenges: Vec<http::HeaderValue>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("api_keys", &self.api_keys.len())
            .field("basic_users", &self.basic.len())
            .field("jwt", &self.jwt.is_some())
            .finish()
    }
}

impl Authenticator {
    /// Builds the verifiers; a JWKS file is read here.
    ///
    /// # Errors
    /// An unreadable or invalid JWKS file, reported at `jwt.jwks`.
    pub fn new(config: &Config) -> Result<Authenticator, ConfigErrors> {
        let mut api_keys = Vec::new();
        let mut basic = Vec::new();
        for (i, p) in config.principals.iter().enumerate() {
            match &p.matcher {
                PrincipalMatcher::ApiKey { sha256, expires } => {
                    api_keys.push(ApiKeyEntry {
                        sha256: *sha256,
                        principal: i,
                        expires: *expires,
                    });
                }
                PrincipalMatcher::Basic { user, argon2 } => {
                    basic.push(BasicEntry {
                        user: user.clone(),
                        principal: i,
                        hash: argon2.clone(),
                    });
                }
                _ => {}
            }
        }
        let jwt = match &config.jwt {
            Some(j) => Some(jwt::JwtVerifier::new(j, &config.path)?),
            None => None,
        };
        let mut totps = std::collections::HashMap::new();
        let mut problems = crate::config::Problems::new(config.path.display().to_string());
        for p in &config.principals {
            let secret = match &p.totp {
                None => continue,
                Some(TotpSource::Inline(s)) => s.0.clone(),
                Some(TotpSource::File(f)) => {
                    match load_file(&mut problems, f, |bytes| {
                        totp::parse_secret(&String::from_utf8_lossy(&bytes))
                    }) {
                        Some(s) => s,
                        None => continue,
                    }
                }
            };
            totps.insert(p.name.clone(), totp::Totp::new(&secret, &config.totp));
        }
        let issuer = config.tokens.as_ref().and_then(|t| {
            load_file(&mut problems, &t.signing_key, |pem| {
                tokens::TokenIssuer::new(t, &pem)
            })
        });
        let introspector = match &config.oauth {
            Some(o) => match oauth::Introspector::new(o) {
                Ok(i) => Some(i),
                Err(m) => {
                    // Only oauth.ca can make it fail (the message names the file).
                    let pos =
                        o.ca.as_ref()
                            .map_or(crate::config::Pos { line: 1, column: 1 }, |f| f.pos);
                    problems.push(pos, "oauth.ca", m);
                    None
                }
            },
            None => None,
        };
        problems.into_result(())?;
        let mut challenges = Vec::new();
        if jwt.is_some() || config.tokens.is_some() || config.oauth.is_some() {
            challenges.push(http::HeaderValue::from_static(
                "Bearer realm=\"portcullis\"",
            ));
        }
        if !basic.is_empty() {
            let realm = config.basic.realm.replace(['"', '\\'], "");
            if let Ok(v) =
                http::HeaderValue::from_str(&format!("Basic realm=\"{realm}\", charset=\"UTF-8\""))
            {
                challenges.push(v);
            }
        }
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Ok(Authenticator {
            api_keys,
            dummy_params: basic
                .first()
                .and_then(|b| argon2::PasswordHash::new(&b.hash).ok())
                .and_then(|h| argon2::Params::try_from(&h).ok())
                .unwrap_or_default(),
            basic,
            jwt,
            totp_header: (!totps.is_empty()).then(|| config.totp.header.clone()),
            totp: totps,
            tokens: issuer,
            oauth: introspector,
            argon2_slots: Arc::new(tokio::sync::Semaphore::new(cores)),
            client_slots: ClientSlots::default(),
            challenges,
        })
    }

    /// `WWW-Authenticate` values for a 401, one per configured scheme.
    pub fn challenges(&self) -> &[http::HeaderValue] {
        &self.challenges
    }

    /// The JWT verifier, when `jwt:` is configured.
    pub fn jwt(&self) -> Option<&jwt::JwtVerifier> {
        self.jwt.as_ref()
    }

    /// Takes over what the previous snapshot learned at run time: the JWT key set and its
    /// refresh task, when the key source is unchanged.
    pub fn carry_over(&mut self, old: &Authenticator) {
        if let (Some(new), Some(old)) = (self.jwt.as_mut(), old.jwt.as_ref()) {
            new.carry_over(old);
        }
        if let (Some(new), Some(old)) = (self.tokens.as_mut(), old.tokens.as_ref()) {
            new.carry_over(old);
        }
        if let (Some(new), Some(old)) = (self.oauth.as_mut(), old.oauth.as_ref()) {
            new.carry_over(old);
        }
    }

    /// The introspection client, when `oauth:` is configured.
    pub fn oauth(&self) -> Option<&oauth::Introspector> {
        self.oauth.as_ref()
    }

    /// Whether a bearer token is for the JWT verifier: a JWT whose algorithm is allowed and
    /// whose key it has. Any other bearer token goes to introspection when that is set up.
    pub fn jwt_recognizes(&self, token: &str) -> bool {
        self.jwt.as_ref().is_some_and(|j| j.recognizes(token))
    }

    /// The login token issuer, when `tokens:` is configured.
    pub fn tokens(&self) -> Option<&tokens::TokenIssuer> {
        self.tokens.as_ref()
    }

    /// The header one-time codes arrive in, when any principal has a TOTP secret.
    pub fn totp_header(&self) -> Option<&HeaderName> {
        self.totp_header.as_ref()
    }

    /// Of `principals`, those with a TOTP secret.
    pub fn totp_principals<'p>(&self, principals: &'p [String]) -> impl Iterator<Item = &'p str> {
        principals
            .iter()
            .filter(|p| self.totp.contains_key(*p))
            .map(String::as_str)
    }

    /// Checks a one-time code against the secrets of the principals a request identified.
    /// Returns the principal whose code it is and the code's step (for the replay check).
    ///
    /// # Errors
    /// No identified principal has a secret, or the code is none of theirs within the skew.
    pub fn verify_totp<'p>(
        &self,
        principals: &'p [String],
        code: &str,
        now: u64,
    ) -> Result<(&'p str, u64), AuthFailure> {
        let mut any = false;
        for name in principals {
            if let Some(t) = self.totp.get(name) {
                any = true;
                if let Some(step) = t.check(code, now) {
                    return Ok((name, step));
                }
            }
        }
        Err(if any {
            AuthFailure::BadCode
        } else {
            AuthFailure::NoTotpPrincipal
        })
    }

    /// Whether any Basic users are configured.
    pub fn has_basic(&self) -> bool {
        !self.basic.is_empty()
    }

    /// Finds the principal holding `key`. Every stored hash is compared, in constant time, so
    /// neither the position of a match nor a near miss shows in the timing.
    ///
    /// # Errors
    /// Unknown or expired keys.
    pub fn verify_api_key(&self, key: &str, today: time::Date) -> Result<usize, AuthFailure> {
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let mut found: Option<&ApiKeyEntry> = None;
        for e in &self.api_keys {
            if bool::from(e.sha256.ct_eq(&digest)) {
                found = Some(e);
            }
        }
        let e = found.ok_or(AuthFailure::UnknownApiKey)?;
        if e.expires.is_some_and(|last| today > last) {
            return Err(AuthFailure::ExpiredApiKey);
        }
        Ok(e.principal)
    }

    /// Verifies Basic credentials with argon2id. Costly by design: call it off the async
    /// threads (see [`Authenticator::verify_basic_async`]).
    ///
    /// # Errors
    /// Unknown user or wrong password (indistinguishable, also in timing).
    pub fn verify_basic(&self, user: &str, password: &str) -> Result<usize, AuthFailure> {
        use argon2::PasswordVerifier;
        let entry = self
            .basic
            .iter()
            .find(|b| b.user.as_bytes().ct_eq(user.as_bytes()).into());
        let dummy;
        let hash_text = match entry {
            Some(e) => e.hash.as_str(),
            None => {
                dummy = dummy_hash(&self.dummy_params);
                &*dummy
            }
        };
        let ok = argon2::PasswordHash::new(hash_text).is_ok_and(|h| {
            argon2::Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        });
        match entry {
            Some(e) if ok => Ok(e.principal),
            _ => Err(AuthFailure::BadPassword),
        }
    }

    /// [`Authenticator::verify_basic`] on the blocking pool: at most one verification per core
    /// at a time, and one per client network (see [`crate::ratelimit::client_net`]); further
    /// attempts wait their turn.
    ///
    /// # Errors
    /// As `verify_basic`.
    pub async fn verify_basic_async(
        self: &Arc<Self>,
        client: std::net::IpAddr,
        user: String,
        password: String,
    ) -> Result<usize, AuthFailure> {
        let mut mine = self.client_slots.slot(crate::ratelimit::client_net(client));
        if !mine.acquire().await {
            return Err(AuthFailure::BadPassword);
        }
        let Ok(_permit) = self.argon2_slots.clone().acquire_owned().await else {
            return Err(AuthFailure::BadPassword);
        };
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.verify_basic(&user, &password))
            .await
            .unwrap_or(Err(AuthFailure::BadPassword))
    }

    /// Verifies a bearer token, and its certificate binding when configured.
    ///
    /// # Errors
    /// Why the token is not acceptable.
    pub fn verify_jwt(
        &self,
        token: &str,
        cert: Option<&PeerCert>,
    ) -> Result<serde_json::Map<String, serde_json::Value>, AuthFailure> {
        let Some(v) = &self.jwt else {
            return Err(AuthFailure::NotConfigured("bearer"));
        };
        v.verify(token, cert)
    }
}

/// Reads a file the configuration names and makes something of its bytes; a failure of
/// either is recorded at the key that named the file, with the file's path.
fn load_file<T>(
    problems: &mut crate::config::Problems,
    f: &crate::config::FileRef,
    make: impl FnOnce(Vec<u8>) -> Result<T, String>,
) -> Option<T> {
    let made = std::fs::read(&f.path)
        .map_err(|e| crate::config::read_error(&f.path, &e))
        .and_then(make);
    match made {
        Ok(t) => Some(t),
        Err(m) => {
            problems.push(f.pos, &f.key, format!("{}: {m}", f.path.display()));
            None
        }
    }
}

/// One argon2 verification at a time per client network. Entries live only while a
/// verification from that client runs or waits, so the table is as small as the work in flight.
#[derive(Default)]
struct ClientSlots(
    std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, Arc<tokio::sync::Semaphore>>>,
);

impl ClientSlots {
    fn slot(&self, net: std::net::IpAddr) -> ClientSlot<'_> {
        let sem = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(net)
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(1)))
            .clone();
        ClientSlot {
            slots: self,
            net,
            sem,
            permit: None,
        }
    }
}

/// A client's turn: waits for it, holds it, and on drop (also when the request is cancelled
/// while waiting) removes the table entry once nobody else holds or waits for it.
struct ClientSlot<'a> {
    slots: &'a ClientSlots,
    net: std::net::IpAddr,
    sem: Arc<tokio::sync::Semaphore>,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl ClientSlot<'_> {
    async fn acquire(&mut self) -> bool {
        self.permit = self.sem.clone().acquire_owned().await.ok();
        self.permit.is_some()
    }
}

impl Drop for ClientSlot<'_> {
    fn drop(&mut self) {
        self.permit = None;
        let mut map = self.slots.0.lock().unwrap_or_else(|p| p.into_inner());
        // Ours and the table's: nobody else holds or waits.
        if Arc::strong_count(&self.sem) == 2 {
            map.remove(&self.net);
        }
    }
}

/// A hash of a random password with the given parameters, for unknown users. Made on first
/// use (on the blocking pool, where Basic verification runs) and kept per parameter set for
/// the life of the process: reloads neither recompute it nor block an async worker for it,
/// and a configuration without Basic users never makes one.
fn dummy_hash(params: &argon2::Params) -> Arc<str> {
    use argon2::password_hash::PasswordHasher;
    type Key = (u32, u32, u32, Option<usize>);
    static CACHE: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<Key, Arc<str>>>> =
        std::sync::OnceLock::new();
    let key = (
        params.m_cost(),
        params.t_cost(),
        params.p_cost(),
        params.output_len(),
    );
    let cache = CACHE.get_or_init(Default::default);
    if let Some(h) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return h.clone();
    }
    let argon = argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        params.clone(),
    );
    let mut salt = [0u8; 16];
    let mut secret = [0u8; 16];
    if fill_random(&mut salt).is_err() || fill_random(&mut secret).is_err() {
        return Arc::from("");
    }
    let hash: Arc<str> = argon
        .hash_password_with_salt(&secret, &salt)
        .map(|h| Arc::from(h.to_string()))
        .unwrap_or_else(|_| Arc::from(""));
    cache
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key, hash.clone());
    hash
}

/// Fills `buf` from the OS's secure random source (through aws-lc).
///
/// # Errors
/// When the source fails; callers never fall back to weaker bytes.
pub fn fill_random(buf: &mut [u8]) -> Result<(), String> {
    rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(buf)
        .map_err(|_| "the operating system's secure random source failed".to_owned())
}

/// `portcullis keys new`: a fresh random key and the principals entry holding its hash.
///
/// # Errors
/// When the secure random source fails.
pub fn new_api_key(id: &str) -> Result<(String, String), String> {
    let mut raw = [0u8; 32];
    fill_random(&mut raw)?;
    let key = format!(
        "pk_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    );
    let digest = hex::encode(Sha256::digest(key.as_bytes()));
    let entry = format!("  - name: {id}\n    api_key: {{ sha256: \"{digest}\" }}\n    roles: []\n");
    Ok((key, entry))
}

/// `portcullis passwd`: the argon2id hash of a password, with a fresh random salt.
///
/// # Errors
/// An empty password.
pub fn hash_password(password: &str) -> Result<String, String> {
    use argon2::password_hash::PasswordHasher;
    if password.is_empty() {
        return Err("the password is empty".to_owned());
    }
    let mut salt = [0u8; 16];
    fill_random(&mut salt)?;
    argon2::Argon2::default()
        .hash_password_with_salt(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dummy_hash_is_made_once_per_parameter_set() {
        let small = argon2::Params::new(1024, 1, 1, None).unwrap();
        let first = dummy_hash(&small);
        assert!(
            first.starts_with("$argon2id$v=19$m=1024,t=1,p=1$"),
            "{first}"
        );
        assert!(
            Arc::ptr_eq(&first, &dummy_hash(&small)),
            "computed again for the same parameters"
        );
        let other = argon2::Params::new(2048, 1, 1, None).unwrap();
        assert!(!Arc::ptr_eq(&first, &dummy_hash(&other)));
    }
}
