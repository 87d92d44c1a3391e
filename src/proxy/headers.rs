//! Header hygiene between client and upstream: hop-by-hop removal, identity headers that the
//! client cannot forge, and X-Forwarded-*.
//!
//! Inbound copies of every identity header are removed before the verified values are set,
//! whatever their case (header names are case-insensitive, and `http` lower-cases them).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::config::{CertFormat, ForwardSettings};
use crate::identity::PeerCert;
use crate::policy::Caller;

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1), plus the names a
/// `Connection` header lists.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Removes hop-by-hop headers. `Upgrade` is removed too unless `keep_upgrade`, in which case
/// `Connection: upgrade` is restored for the next hop.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        if !(keep_upgrade && name == header::UPGRADE) {
            headers.remove(&name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// Removes every client-sent copy of the identity headers, whatever the configured format.
pub fn strip_identity(headers: &mut HeaderMap, f: &ForwardSettings) {
    for name in [
        &f.identity,
        &f.principals,
        &f.roles,
        &f.factors,
        &f.client_cert,
    ] {
        headers.remove(name);
    }
    // Both certificate encodings are removed, so switching the format cannot leave a forged
    // header of the other kind behind.
    headers.remove("x-forwarded-client-cert");
    headers.remove("client-cert");
}

/// The verified identity headers for a caller, encoded once (per connection and configuration
/// snapshot) and inserted into each forwarded request after `strip_identity`.
pub fn identity_headers(
    caller: &Caller,
    cert: Option<&PeerCert>,
    f: &ForwardSettings,
) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = Vec::with_capacity(5);
    if let Some(id) = &caller.identity {
        out.push((f.identity.clone(), header_value(id)));
    }
    if !caller.principals.is_empty() {
        out.push((
            f.principals.clone(),
            header_value(&caller.principals.join(",")),
        ));
    }
    if !caller.roles.is_empty() {
        out.push((f.roles.clone(), header_value(&caller.roles.join(","))));
    }
    if !caller.factors.is_empty() {
        let names: Vec<&str> = caller.factors.iter().map(|f| f.as_str()).collect();
        out.push((f.factors.clone(), header_value(&names.join(","))));
    }
    if let Some(cert) = cert {
        let v = match f.client_cert_format {
            CertFormat::Xfcc => &cert.forwarded_xfcc,
            CertFormat::Rfc9440 => &cert.forwarded_rfc9440,
        };
        out.push((f.client_cert.clone(), header_value(v)));
    }
    out
}

/// A header value from text that came from a certificate: control characters (which a header
/// cannot carry) are percent-encoded rather than dropped, so two identities never collide.
pub fn header_value(text: &str) -> HeaderValue {
    if let Ok(v) = HeaderValue::from_str(text) {
        return v;
    }
    let mut out = String::with_capacity(text.len() + 8);
    for b in text.bytes() {
        if b == b'\t' || (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    HeaderValue::from_str(&out).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// Appends the client IP to X-Forwarded-For and sets X-Forwarded-Proto and -Host.
pub fn set_forwarded(headers: &mut HeaderMap, client_ip: std::net::IpAddr, host: Option<&str>) {
    let ip = client_ip.to_string();
    let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => format!("{prev}, {ip}"),
        _ => ip,
    };
    headers.insert("x-forwarded-for", header_value(&xff));
    headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
    match host {
        Some(h) => {
            headers.insert("x-forwarded-host", header_value(h));
        }
        None => {
            headers.remove("x-forwarded-host");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_listed_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(header_value("CN=a\nb").to_str().unwrap(), "CN=a%0Ab");
        assert_eq!(header_value("plain").to_str().unwrap(), "plain");
    }
}
