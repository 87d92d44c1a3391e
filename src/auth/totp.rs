//! One-time codes (RFC 6238 TOTP) as a second factor bound to a principal.
//!
//! A code proves possession of the principal's secret only together with another credential
//! that identified the principal: the code alone identifies nobody. Each accepted code moves
//! the principal's last used step forward, and a code from that step or an earlier one is
//! refused, so a code is good once (RFC 6238 §5.2). The last used steps live in process
//! ([`UsedSteps`]) and, when the rate-limit store is Redis, in Redis too, so a code accepted
//! by one replica is refused by every other.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::TotpSettings;

/// The shortest secret accepted: RFC 4226 §4 asks for at least 128 bits.
pub const MIN_SECRET_BYTES: usize = 16;

/// The length of the secrets `portcullis totp new` makes: RFC 4226's recommended 160 bits,
/// what authenticator apps and pyotp's `random_base32()` use.
pub const NEW_SECRET_BYTES: usize = 20;

/// Decodes a base32 secret as people and tools write it: any case, with spaces or dashes
/// between groups, with or without `=` padding.
///
/// # Errors
/// Not base32, or shorter than 128 bits.
pub fn parse_secret(text: &str) -> Result<Vec<u8>, String> {
    let cleaned: String = text
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .map(|c| c.to_ascii_uppercase())
        .collect();
    let cleaned = cleaned.trim_end_matches('=');
    if cleaned.is_empty() {
        return Err("the secret is empty".into());
    }
    let bytes = totp_rs::Secret::try_from_base32(cleaned)
        .map_err(|_| "expected a base32 secret (letters A-Z and digits 2-7)".to_owned())?
        .as_bytes()
        .to_vec();
    if bytes.len() < MIN_SECRET_BYTES {
        return Err(format!(
            "the secret has {} bits; at least 128 are needed (`portcullis totp new` makes 160)",
            bytes.len() * 8
        ));
    }
    Ok(bytes)
}

/// A principal's code generator.
pub struct Totp {
    inner: totp_rs::Totp,
}

impl std::fmt::Debug for Totp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Totp(..)")
    }
}

impl Totp {
    /// A generator for `secret` under `settings` (digits, period and skew checked by the
    /// configuration: 6-8 digits, a period of at least a second).
    pub fn new(secret: &[u8], settings: &TotpSettings) -> Totp {
        Totp {
            inner: totp_rs::Builder::new()
                .with_algorithm(totp_rs::Algorithm::SHA1)
                .with_digits(settings.digits.clamp(6, 8))
                .with_step_duration(settings.period.max(1))
                .with_skew(u16::from(settings.skew))
                .with_secret(secret.to_vec())
                .build_noncompliant(),
        }
    }

    /// The step a presented code belongs to, if it is the code of a step within the skew of
    /// `now` (seconds since the epoch). The comparison of each candidate is constant-time.
    pub fn check(&self, code: &str, now: u64) -> Option<u64> {
        let code = code.trim();
        if code.is_empty() || code.len() > 10 || !code.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        self.inner.check(code, now)
    }

    /// The code for `now` (seconds since the epoch).
    pub fn code_at(&self, now: u64) -> String {
        self.inner.generate(now).to_string()
    }

    /// The step `now` lies in.
    pub fn step_of(&self, now: u64) -> u64 {
        now / self.inner.step()
    }
}

/// What `portcullis totp new` prints: a fresh 160-bit secret in base32, alone on the first
/// line; the otpauth:// URI authenticator apps and pyotp read; that URI as a QR code drawn
/// with Unicode blocks for a terminal; and the principals entry to paste, which takes the
/// secret from the environment so it stays out of gateway.yaml.
///
/// # Errors
/// No randomness, or a `:` in the id or issuer (the URI's label separator).
pub fn enrollment_text(id: &str, issuer: &str) -> Result<String, String> {
    let mut secret = [0u8; NEW_SECRET_BYTES];
    super::fill_random(&mut secret)?;
    let totp = totp_rs::Builder::new()
        .with_secret(secret.to_vec())
        .with_account_name(id)
        .with_issuer(Some(issuer))
        .build()
        .map_err(|e| format!("cannot make the enrollment URI: {e}"))?;
    let uri = totp
        .to_url()
        .map_err(|e| format!("cannot make the enrollment URI: {e}"))?;
    let qr = qrcode::QrCode::new(uri.as_bytes())
        .map_err(|e| format!("cannot draw the QR code: {e}"))?
        .render::<qrcode::render::unicode::Dense1x2>()
        // Light modules drawn as blocks: on a dark terminal the code reads the right way round.
        .dark_color(qrcode::render::unicode::Dense1x2::Light)
        .light_color(qrcode::render::unicode::Dense1x2::Dark)
        .build();
    let var: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .chain("_TOTP".chars())
        .collect();
    Ok(format!(
        "{b32}\n{uri}\n{qr}\n\
         # Scan the code with an authenticator app (or enter the secret on the first line), or\n\
         # compute codes with pyotp.TOTP(\"<secret>\").now(). It is shown once and stored nowhere.\n\
         # Run portcullis with {var}=<secret> in its environment, and add to the principal {id:?}\n\
         # in gateway.yaml (SHA-1, 6 digits, 30 s: the totp: section's defaults):\n\
         totp: {{ secret: \"${{{var}}}\" }}\n",
        b32 = totp.secret().to_base32(),
    ))
}

/// Seconds since the epoch (0 on a clock set before 1970, which no code would match).
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The last step each principal used a code of, in this process.
///
/// Keyed by principal name, so its size is bounded by the configuration, not by callers;
/// entries whose step is past every window are dropped as the table grows.
#[derive(Debug, Default)]
pub struct UsedSteps {
    last: Mutex<HashMap<String, u64>>,
}

/// Entries kept before the table is swept of steps that no code can reach any more.
const SWEEP_AT: usize = 1024;

impl UsedSteps {
    /// Records `step` for `principal` when it is later than the last one used; `false` when
    /// a code of this step or a later one was already accepted (a replay).
    pub fn advance(&self, principal: &str, step: u64, oldest_live: u64) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.get(principal).is_some_and(|&used| used >= step) {
            return false;
        }
        if last.len() >= SWEEP_AT {
            last.retain(|_, used| *used >= oldest_live);
        }
        last.insert(principal.to_owned(), step);
        true
    }
}

/// Wrong codes a principal may collect within [`WRONG_WINDOW`] before its codes are refused
/// unchecked for the rest of the window (RFC 4226 §7.3 throttling). Only a caller who already
/// proved the principal's other credential reaches the code check, so this stops a stolen
/// password from walking the code space from many addresses, which the per-client
/// `auth_failures` budget alone would not.
pub const MAX_WRONG: u32 = 10;

/// See [`MAX_WRONG`].
pub const WRONG_WINDOW: std::time::Duration = std::time::Duration::from_secs(600);

/// Wrong codes per principal, in this process (bounded by the configuration's principals).
#[derive(Debug, Default)]
pub struct WrongCodes {
    by: Mutex<HashMap<String, (u32, std::time::Instant)>>,
}

impl WrongCodes {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u32, std::time::Instant)>> {
        self.by.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `principal` has spent its wrong codes for the current window.
    pub fn locked(&self, principal: &str, now: std::time::Instant) -> bool {
        self.lock().get(principal).is_some_and(|(n, since)| {
            *n >= MAX_WRONG && now.saturating_duration_since(*since) < WRONG_WINDOW
        })
    }

    /// Counts a wrong code for `principal`.
    pub fn wrong(&self, principal: &str, now: std::time::Instant) {
        let mut by = self.lock();
        if by.len() >= SWEEP_AT {
            by.retain(|_, (_, since)| now.saturating_duration_since(*since) < WRONG_WINDOW);
        }
        let entry = by.entry(principal.to_owned()).or_insert((0, now));
        if now.saturating_duration_since(entry.1) >= WRONG_WINDOW {
            *entry = (0, now);
        }
        entry.0 += 1;
    }

    /// A right code starts the count over.
    pub fn right(&self, principal: &str) {
        self.lock().remove(principal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_codes_lock_a_principal_for_the_rest_of_the_window() {
        let w = WrongCodes::default();
        let t0 = std::time::Instant::now();
        for _ in 0..MAX_WRONG - 1 {
            w.wrong("alice", t0);
        }
        assert!(!w.locked("alice", t0));
        w.wrong("alice", t0);
        assert!(w.locked("alice", t0));
        assert!(!w.locked("bob", t0), "per principal");
        assert!(
            !w.locked("alice", t0 + WRONG_WINDOW),
            "until the window ends"
        );
        w.right("alice");
        assert!(!w.locked("alice", t0));
    }

    fn settings(digits: u8) -> TotpSettings {
        TotpSettings {
            header: http::HeaderName::from_static("x-otp"),
            digits,
            period: 30,
            skew: 1,
        }
    }

    #[test]
    fn rfc6238_test_vectors() {
        // RFC 6238 Appendix B, SHA-1, 8 digits, the secret "12345678901234567890".
        let t = Totp::new(b"12345678901234567890", &settings(8));
        for (time, code) in [
            (59, "94287082"),
            (1_111_111_109, "07081804"),
            (1_234_567_890, "89005924"),
            (2_000_000_000, "69279037"),
        ] {
            assert_eq!(t.code_at(time), code, "T={time}");
            assert_eq!(t.check(code, time), Some(time / 30));
        }
    }

    #[test]
    fn codes_within_the_skew_are_accepted_and_others_are_not() {
        let t = Totp::new(b"12345678901234567890", &settings(6));
        let now = 1_234_567_890;
        assert_eq!(t.check(&t.code_at(now - 30), now), Some(now / 30 - 1));
        assert_eq!(t.check(&t.code_at(now + 30), now), Some(now / 30 + 1));
        assert_eq!(t.check(&t.code_at(now - 60), now), None);
        assert_eq!(t.check("", now), None);
        assert_eq!(t.check("12345a", now), None);
        assert_eq!(t.check("１２３４５６", now), None);
    }

    #[test]
    fn secrets_parse_as_people_write_them() {
        let s = "JBSW Y3DP EHPK 3PXP JBSW Y3DP EHPK 3PXP\n";
        assert_eq!(parse_secret(s).unwrap().len(), 20);
        assert_eq!(
            parse_secret(&s.to_lowercase()).unwrap(),
            parse_secret(s).unwrap()
        );
        assert!(
            parse_secret("JBSWY3DPEHPK3PXP")
                .unwrap_err()
                .contains("80 bits")
        );
        assert!(parse_secret("not base32!").is_err());
        assert!(parse_secret("").is_err());
    }

    #[test]
    fn a_step_is_used_once_and_never_an_earlier_one() {
        let used = UsedSteps::default();
        assert!(used.advance("alice", 100, 0));
        assert!(!used.advance("alice", 100, 0), "replay");
        assert!(
            !used.advance("alice", 99, 0),
            "an older code after a newer one"
        );
        assert!(used.advance("bob", 100, 0), "per principal");
        assert!(used.advance("alice", 101, 0));
    }
}
