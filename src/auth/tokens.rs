//! The gateway's own login tokens: short-lived JWTs it signs after a login with every
//! `tokens.login_factors` credential, and verifies on later requests in microseconds instead of
//! repeating an argon2 verification (and a one-time code) per request.
//!
//! A token names its caller (`sub`), the principals it was (`prn`) and the factors of the login
//! (`amr`); its roles are looked up in the current configuration on every request, so a role
//! removed since the login is gone at once. A login over a connection with a client
//! certificate binds the token to that certificate (RFC 8705 `cnf.x5t#S256`). Logout records
//! the token's `jti` as revoked until the token would have expired.
//!
//! Keys: ES256 (P-256) or EdDSA (Ed25519), from a PKCS#8 PEM file; the `kid` is the RFC 7638
//! thumbprint of the public key. When a reload brings a new key, the old public key keeps
//! verifying (and stays in the published JWKS) until the last token it signed has expired.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::AuthFailure;
use crate::config::TokenSettings;
use crate::identity::PeerCert;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// What a gateway token says.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenClaims {
    pub iss: String,
    pub aud: String,
    /// The caller's identity at login (a certificate DN or URI, a JWT `sub`, a principal).
    pub sub: String,
    pub exp: u64,
    pub iat: u64,
    /// Unique per token: what logout revokes.
    pub jti: String,
    /// The principals the caller was at login.
    pub prn: Vec<String>,
    /// The factors verified at login (never `token`).
    pub amr: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Confirmation>,
}

/// RFC 8705 §3.1: the SHA-256 thumbprint of the client certificate the token is bound to.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Confirmation {
    #[serde(rename = "x5t#S256")]
    pub x5t_s256: String,
}

/// A public key tokens are verified with, and its JWK.
struct PublicKey {
    kid: String,
    alg: Algorithm,
    decoding: DecodingKey,
    jwk: serde_json::Value,
}

/// The signing key of one configuration snapshot, and the public keys still verifying.
pub struct TokenIssuer {
    settings: TokenSettings,
    encoding: EncodingKey,
    current: PublicKey,
    /// Keys of earlier snapshots, each until the last token it may have signed expires
    /// (seconds since the epoch).
    previous: Vec<(PublicKey, u64)>,
    /// The JWKS document, rendered when the key set changes.
    jwks: bytes::Bytes,
}

impl std::fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenIssuer")
            .field("kid", &self.current.kid)
            .field("previous", &self.previous.len())
            .finish()
    }
}

/// Reads a signing key: PKCS#8 PEM holding a P-256 or an Ed25519 key.
///
/// # Errors
/// Unreadable, not PEM PKCS#8, or another kind of key.
fn load_key(pem: &[u8]) -> Result<(EncodingKey, PublicKey), String> {
    use aws_lc_rs::signature::{
        ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair,
    };
    use rustls_pki_types::PrivatePkcs8KeyDer;
    use rustls_pki_types::pem::PemObject;
    let der = PrivatePkcs8KeyDer::from_pem_slice(pem).map_err(|_| {
        "expected a PKCS#8 PEM private key (-----BEGIN PRIVATE KEY-----), e.g. from \
         `openssl genpkey -algorithm ed25519`"
            .to_owned()
    })?;
    let der = der.secret_pkcs8_der();
    if let Ok(pair) = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der) {
        // Uncompressed point: 0x04 || x || y.
        let point = pair.public_key().as_ref();
        let (x, y) = (B64.encode(&point[1..33]), B64.encode(&point[33..65]));
        let kid = thumbprint(&format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#
        ));
        let decoding = DecodingKey::from_ec_components(&x, &y).map_err(|e| e.to_string())?;
        let jwk = serde_json::json!({
            "kty": "EC", "crv": "P-256", "x": x, "y": y,
            "use": "sig", "alg": "ES256", "kid": kid,
        });
        return Ok((
            EncodingKey::from_ec_der(der),
            PublicKey {
                kid,
                alg: Algorithm::ES256,
                decoding,
                jwk,
            },
        ));
    }
    if let Ok(pair) = Ed25519KeyPair::from_pkcs8(der) {
        let x = B64.encode(pair.public_key().as_ref());
        let kid = thumbprint(&format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#));
        let decoding = DecodingKey::from_ed_components(&x).map_err(|e| e.to_string())?;
        let jwk = serde_json::json!({
            "kty": "OKP", "crv": "Ed25519", "x": x,
            "use": "sig", "alg": "EdDSA", "kid": kid,
        });
        return Ok((
            EncodingKey::from_ed_der(der),
            PublicKey {
                kid,
                alg: Algorithm::EdDSA,
                decoding,
                jwk,
            },
        ));
    }
    Err(
        "the key is neither P-256 (ES256) nor Ed25519 (EdDSA); RSA keys are not used for \
         login tokens"
            .to_owned(),
    )
}

/// RFC 7638: base64url(SHA-256(the required members, lexicographic, no whitespace)).
fn thumbprint(canonical: &str) -> String {
    B64.encode(Sha256::digest(canonical.as_bytes()))
}

/// Seconds since the epoch.
fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl TokenIssuer {
    /// An issuer for `settings` with the key in `pem`.
    ///
    /// # Errors
    /// The key cannot be used (see `load_key`).
    pub fn new(settings: &TokenSettings, pem: &[u8]) -> Result<TokenIssuer, String> {
        let (encoding, current) = load_key(pem)?;
        let mut issuer = TokenIssuer {
            settings: settings.clone(),
            encoding,
            current,
            previous: Vec::new(),
            jwks: bytes::Bytes::new(),
        };
        issuer.render_jwks();
        Ok(issuer)
    }

    /// Keeps the previous snapshot's keys verifying until their tokens expire (reload with a
    /// rotated key).
    pub fn carry_over(&mut self, old: &TokenIssuer) {
        let now = now_secs();
        let keep = |key: &PublicKey, until: u64, out: &mut Vec<(PublicKey, u64)>| {
            if until > now
                && key.kid != self.current.kid
                && !out.iter().any(|(k, _)| k.kid == key.kid)
            {
                out.push((
                    PublicKey {
                        kid: key.kid.clone(),
                        alg: key.alg,
                        decoding: key.decoding.clone(),
                        jwk: key.jwk.clone(),
                    },
                    until,
                ));
            }
        };
        let mut previous = Vec::new();
        // The old current key signed tokens up to now: they live for the old ttl.
        keep(
            &old.current,
            now + old.settings.ttl.as_secs(),
            &mut previous,
        );
        for (key, until) in &old.previous {
            keep(key, *until, &mut previous);
        }
        self.previous = previous;
        self.render_jwks();
    }

    fn render_jwks(&mut self) {
        let now = now_secs();
        let keys: Vec<&serde_json::Value> = std::iter::once(&self.current.jwk)
            .chain(
                self.previous
                    .iter()
                    .filter(|(_, until)| *until > now)
                    .map(|(k, _)| &k.jwk),
            )
            .collect();
        self.jwks = serde_json::to_vec(&serde_json::json!({ "keys": keys }))
            .unwrap_or_default()
            .into();
    }

    /// The settings this issuer was built from.
    pub fn settings(&self) -> &TokenSettings {
        &self.settings
    }

    /// The JWKS document served at `jwks_path`.
    pub fn jwks(&self) -> bytes::Bytes {
        self.jwks.clone()
    }

    /// The `kid` of the current signing key.
    pub fn kid(&self) -> &str {
        &self.current.kid
    }

    /// Signs a token for a login. Returns the token and its lifetime in seconds.
    ///
    /// # Errors
    /// Signing failed (no randomness for the `jti`, or the key was refused by the signer).
    pub fn issue(
        &self,
        sub: &str,
        principals: &[String],
        factors: &[&str],
        cert: Option<&PeerCert>,
    ) -> Result<(String, u64), String> {
        let mut jti = [0u8; 16];
        super::fill_random(&mut jti)?;
        let iat = now_secs();
        let ttl = self.settings.ttl.as_secs();
        let claims = TokenClaims {
            iss: self.settings.issuer.clone(),
            aud: self.settings.audience.clone(),
            sub: sub.to_owned(),
            exp: iat + ttl,
            iat,
            jti: B64.encode(jti),
            prn: principals.to_vec(),
            amr: factors.iter().map(|f| (*f).to_owned()).collect(),
            cnf: cert.map(|c| Confirmation {
                x5t_s256: B64.encode(c.fingerprint),
            }),
        };
        let mut header = Header::new(self.current.alg);
        header.kid = Some(self.current.kid.clone());
        header.typ = Some("JWT".to_owned());
        let token = jsonwebtoken::encode(&header, &claims, &self.encoding)
            .map_err(|e| format!("cannot sign the token: {e}"))?;
        Ok((token, ttl))
    }

    /// Whether a bearer token names one of this issuer's keys (it is then verified here and
    /// nowhere else).
    pub fn is_ours(&self, token: &str) -> bool {
        jsonwebtoken::decode_header(token)
            .ok()
            .and_then(|h| h.kid)
            .is_some_and(|kid| self.key(&kid).is_some())
    }

    fn key(&self, kid: &str) -> Option<&PublicKey> {
        if self.current.kid == kid {
            return Some(&self.current);
        }
        let now = now_secs();
        self.previous
            .iter()
            .find(|(k, until)| k.kid == kid && *until > now)
            .map(|(k, _)| k)
    }

    /// Verifies a token of this issuer: signature with the key its `kid` names, issuer,
    /// audience, expiry, and the certificate binding. Revocation is checked by the caller.
    ///
    /// # Errors
    /// Why the token is refused, for the log.
    pub fn verify(&self, token: &str, cert: Option<&PeerCert>) -> Result<TokenClaims, AuthFailure> {
        let bad = |why: &str| AuthFailure::BadToken(why.to_owned());
        let header = jsonwebtoken::decode_header(token).map_err(|_| bad("malformed token"))?;
        let key = header
            .kid
            .as_deref()
            .and_then(|kid| self.key(kid))
            .ok_or_else(|| bad("unknown gateway token key"))?;
        if header.alg != key.alg {
            return Err(bad("algorithm does not fit the key"));
        }
        let mut v = Validation::new(key.alg);
        v.leeway = 0;
        v.set_issuer(&[&self.settings.issuer]);
        v.set_audience(&[&self.settings.audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let claims = jsonwebtoken::decode::<TokenClaims>(token, &key.decoding, &v)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind as K;
                bad(match e.kind() {
                    K::ExpiredSignature => "expired",
                    K::InvalidIssuer => "wrong issuer",
                    K::InvalidAudience => "wrong audience",
                    K::InvalidSignature => "bad signature",
                    _ => "invalid token",
                })
            })?
            .claims;
        if let Some(cnf) = &claims.cnf {
            let cert =
                cert.ok_or_else(|| bad("certificate-bound token without a client certificate"))?;
            let want = B64.encode(cert.fingerprint);
            if !bool::from(subtle::ConstantTimeEq::ct_eq(
                want.as_bytes(),
                cnf.x5t_s256.as_bytes(),
            )) {
                return Err(bad("cnf.x5t#S256 does not match the client certificate"));
            }
        }
        Ok(claims)
    }
}

/// Revoked token ids and when each token would have expired anyway (seconds since the epoch).
///
/// Only a caller who logged in can add an entry, one per login; the table still has a ceiling,
/// swept of expired tokens when reached, and past it a logout is refused (503) rather than
/// forgetting an earlier revocation.
#[derive(Debug, Default)]
pub struct Revoked {
    until: Mutex<HashMap<String, u64>>,
}

/// Most revocations held in process.
pub const MAX_REVOKED: usize = 1_000_000;

impl Revoked {
    /// Records `jti` as revoked until `exp`; `false` when the table is full.
    pub fn revoke(&self, jti: &str, exp: u64) -> bool {
        let mut until = self.until.lock().unwrap_or_else(|p| p.into_inner());
        if until.len() >= MAX_REVOKED {
            let now = now_secs();
            until.retain(|_, exp| *exp > now);
            if until.len() >= MAX_REVOKED {
                return false;
            }
        }
        until.insert(jti.to_owned(), exp);
        true
    }

    /// Whether `jti` was revoked (and has not expired since).
    pub fn contains(&self, jti: &str) -> bool {
        let until = self.until.lock().unwrap_or_else(|p| p.into_inner());
        until.get(jti).is_some_and(|exp| *exp > now_secs())
    }
}

/// How long a revocation must be kept: until the token expires.
pub fn remaining(exp: u64) -> Duration {
    Duration::from_secs(exp.saturating_sub(now_secs()).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> TokenSettings {
        TokenSettings {
            signing_key: crate::config::FileRef {
                path: "unused".into(),
                pos: crate::config::Pos { line: 1, column: 1 },
                key: "tokens.signing_key".into(),
            },
            login_path: "/auth/login".into(),
            login_factors: vec![crate::policy::Factor::Basic],
            logout_path: "/auth/logout".into(),
            jwks_path: "/.well-known/jwks.json".into(),
            ttl: Duration::from_secs(900),
            audience: "portcullis".into(),
            issuer: "portcullis".into(),
        }
    }

    fn pem(alg: &'static rcgen::SignatureAlgorithm) -> String {
        rcgen::KeyPair::generate_for(alg).unwrap().serialize_pem()
    }

    #[test]
    fn tokens_of_both_key_types_verify_and_name_their_key() {
        for alg in [&rcgen::PKCS_ECDSA_P256_SHA256, &rcgen::PKCS_ED25519] {
            let issuer = TokenIssuer::new(&settings(), pem(alg).as_bytes()).unwrap();
            let (token, ttl) = issuer
                .issue("alice", &["alice".into()], &["basic", "totp"], None)
                .unwrap();
            assert_eq!(ttl, 900);
            assert!(issuer.is_ours(&token));
            let c = issuer.verify(&token, None).unwrap();
            assert_eq!((c.sub.as_str(), c.amr.len(), c.cnf), ("alice", 2, None));
            let jwks: serde_json::Value = serde_json::from_slice(&issuer.jwks()).unwrap();
            assert_eq!(jwks["keys"][0]["kid"], issuer.kid());
            // A token of another key with the same settings is not ours.
            let other = TokenIssuer::new(&settings(), pem(alg).as_bytes()).unwrap();
            let (foreign, _) = other.issue("alice", &[], &["basic"], None).unwrap();
            assert!(!issuer.is_ours(&foreign));
            assert!(issuer.verify(&foreign, None).is_err());
        }
    }

    #[test]
    fn the_kid_is_the_rfc7638_thumbprint() {
        // RFC 7638 §3.1's example is RSA; RFC 8037 Appendix A.3 gives one for Ed25519.
        assert_eq!(
            thumbprint(
                r#"{"crv":"Ed25519","kty":"OKP","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#
            ),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
    }

    #[test]
    fn a_rotated_key_keeps_verifying_its_tokens() {
        let old = TokenIssuer::new(&settings(), pem(&rcgen::PKCS_ED25519).as_bytes()).unwrap();
        let (token, _) = old.issue("alice", &[], &["basic"], None).unwrap();
        let mut new =
            TokenIssuer::new(&settings(), pem(&rcgen::PKCS_ECDSA_P256_SHA256).as_bytes()).unwrap();
        assert!(!new.is_ours(&token));
        new.carry_over(&old);
        assert!(new.is_ours(&token));
        assert_eq!(new.verify(&token, None).unwrap().sub, "alice");
        let jwks: serde_json::Value = serde_json::from_slice(&new.jwks()).unwrap();
        assert_eq!(jwks["keys"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn revocations_hold_until_expiry() {
        let r = Revoked::default();
        assert!(r.revoke("a", now_secs() + 60));
        assert!(r.contains("a"));
        assert!(!r.contains("b"));
        assert!(r.revoke("old", now_secs().saturating_sub(1)));
        assert!(!r.contains("old"), "an expired token needs no revocation");
    }
}
