//! One-time codes computed the way an authenticator app does (RFC 6238 over RFC 4226 with
//! HMAC-SHA-1), written out here rather than through the gateway's own TOTP code, so the
//! tests check the gateway against the RFC and not against itself.

use hmac::{Hmac, KeyInit, Mac};

/// Decodes RFC 4648 base32 (upper case, no padding), as `portcullis totp new` prints it.
pub fn base32_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u64, 0u32);
    for c in text.trim_end_matches('=').bytes() {
        let v = ALPHABET.iter().position(|&a| a == c).expect("base32") as u64;
        acc = (acc << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// The 6-digit, 30-second code of `secret` (base32) at `unix` seconds.
pub fn code(secret: &str, unix: u64) -> String {
    code_with(secret, unix, 30, 6)
}

/// The code of `secret` (base32) at `unix` seconds for `period` and `digits`.
pub fn code_with(secret: &str, unix: u64, period: u64, digits: u32) -> String {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(&base32_decode(secret)).expect("any key");
    mac.update(&(unix / period).to_be_bytes());
    let h = mac.finalize().into_bytes();
    let at = usize::from(h[h.len() - 1] & 0x0f);
    let n = u32::from_be_bytes([h[at] & 0x7f, h[at + 1], h[at + 2], h[at + 3]]);
    format!("{:0width$}", n % 10u32.pow(digits), width = digits as usize)
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A fixed 160-bit test secret (base32 of "12345678901234567890", RFC 6238's).
pub const SECRET: &str = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";
