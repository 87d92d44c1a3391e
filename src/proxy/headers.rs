//! Header hygiene between client and upstream: hop-by-hop removal, identity headers that the
//! client cannot forge, and X-Forwarded-*.
//!
//! Inbound copies of every identity header are removed before the verified values are set,
//! whatever their case (header names are case-insensitive, and `http` lower-cases them).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::config::{ForwardSettings, UnderscoreHeaders};
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

/// Where a name is in [`HOP_BY_HOP`], or `UPGRADE` for `Upgrade` (names are lower-case in
/// `http`, so a string match finds them whatever case the client sent).
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    match name.as_str() {
        "connection" => Some(0),
        "keep-alive" => Some(1),
        "proxy-connection" => Some(2),
        "proxy-authenticate" => Some(3),
        "proxy-authorization" => Some(4),
        "te" => Some(5),
        "trailer" => Some(6),
        "transfer-encoding" => Some(7),
        "upgrade" => Some(UPGRADE),
        _ => None,
    }
}

/// `Upgrade`'s place in the set of names [`strip_hop_by_hop`] looks for, after HOP_BY_HOP's.
const UPGRADE: usize = 8;

/// Removes hop-by-hop headers. `Upgrade` is removed too unless `keep_upgrade`, in which case
/// `Connection: upgrade` is restored for the next hop.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One pass over the names the message carries finds the hop-by-hop ones among them (most
    // carry none, or only `Connection: keep-alive`), so only those are looked up to be
    // removed. `close` and `keep-alive`, the usual tokens of `Connection`, name nothing beyond
    // HOP_BY_HOP: skipping them keeps the common case free of allocations.
    let mut present = 0u16;
    let mut listed: Vec<HeaderName> = Vec::new();
    for (name, value) in headers.iter() {
        let Some(i) = hop_by_hop_index(name) else {
            continue;
        };
        present |= 1 << i;
        if i == 0 {
            let tokens = value.to_str().unwrap_or_default().split(',').map(str::trim);
            listed.extend(
                tokens
                    .filter(|t| !t.eq_ignore_ascii_case("close"))
                    .filter(|t| !t.eq_ignore_ascii_case("keep-alive"))
                    .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok()),
            );
        }
    }
    for name in listed {
        if !(keep_upgrade && name == header::UPGRADE) {
            headers.remove(&name);
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else if present & (1 << UPGRADE) != 0 {
        headers.remove(header::UPGRADE);
    }
}

/// Client-sent headers through which frameworks learn the client's address, the original URL
/// or the "real" method. The gateway removes every client copy (unless listed in
/// `forward.trusted_client_headers`) and sets its own `X-Forwarded-*` when `x_forwarded` is on.
const FORWARDING: [&str; 12] = [
    "forwarded",
    "x-real-ip",
    "x-original-url",
    "x-original-uri",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-client-ip",
    "true-client-ip",
    "client-ip",
    "x-cluster-client-ip",
];

/// Whether a (lower-case, `-`-separated) header name is a forwarding header.
pub fn is_forwarding(name: &str) -> bool {
    name.starts_with("x-forwarded-") || FORWARDING.contains(&name)
}

/// The identity headers the gateway sets, plus both certificate encodings, so switching the
/// format cannot leave a forged header of the other kind behind.
pub fn identity_header_names(f: &ForwardSettings) -> Vec<HeaderName> {
    vec![
        f.identity.clone(),
        f.principals.clone(),
        f.roles.clone(),
        f.factors.clone(),
        f.client_cert.clone(),
        HeaderName::from_static("x-forwarded-client-cert"),
        HeaderName::from_static("client-cert"),
    ]
}

/// A request refused by `forward.underscore_headers: reject`.
#[derive(Debug, PartialEq, Eq)]
pub struct UnderscoreRejected;

/// Removes what a client may not send upstream, before anything reads the headers:
/// - copies of the identity headers, whatever their case;
/// - forwarding headers (`Forwarded`, `X-Forwarded-*`, `X-Real-IP`, `X-Original-URL`, method
///   overrides, ...) not listed in `forward.trusted_client_headers`;
/// - `_` twins (`x_client_id`) of every identity, credential, request-id and forwarding
///   header, whatever `underscore_headers` says: CGI, WSGI, PHP and Rack fold `_` and `-`
///   into one variable, so a twin could shadow the verified header;
/// - with `underscore_headers: drop`, every other name with `_` too.
///
/// # Errors
/// With `underscore_headers: reject`, a header whose name has `_`.
pub fn sanitize(
    headers: &mut HeaderMap,
    f: &ForwardSettings,
    api_key_header: &HeaderName,
) -> Result<(), UnderscoreRejected> {
    // Most requests have nothing to remove: look first, allocate only when something goes.
    let mut doomed: Vec<HeaderName> = Vec::new();
    for name in headers.keys() {
        let n = name.as_str();
        let remove = if n.contains('_') {
            match f.underscore_headers {
                UnderscoreHeaders::Reject => return Err(UnderscoreRejected),
                UnderscoreHeaders::Drop => true,
                UnderscoreHeaders::Allow => {
                    let dashed = n.replace('_', "-");
                    is_forwarding(&dashed)
                        || is_identity(&dashed, f)
                        || dashed == api_key_header.as_str()
                        || dashed == f.request_id.as_str()
                }
            }
        } else {
            is_identity(n, f)
                || (is_forwarding(n) && !f.trusted_client_headers.iter().any(|t| t == name))
        };
        if remove {
            doomed.push(name.clone());
        }
    }
    for name in &doomed {
        headers.remove(name);
    }
    Ok(())
}

fn is_identity(n: &str, f: &ForwardSettings) -> bool {
    n == f.identity.as_str()
        || n == f.principals.as_str()
        || n == f.roles.as_str()
        || n == f.factors.as_str()
        || n == f.client_cert.as_str()
        || n == "x-forwarded-client-cert"
        || n == "client-cert"
}

/// The verified identity headers for a caller, encoded once (per connection and configuration
/// snapshot) and inserted into each forwarded request after `strip_identity`.
pub fn identity_headers(
    caller: &Caller,
    cert: Option<HeaderValue>,
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
        out.push((f.client_cert.clone(), cert));
    }
    out
}

/// A header value from text that came from a certificate or a token, rendered injectively:
/// `%`, control characters, non-ASCII bytes, and spaces at either end (which parsers trim) are
/// percent-encoded, so two different identities never produce the same header, and one
/// percent-decoding gives the original text back. Text needing none of that is sent as is.
pub fn header_value(text: &str) -> HeaderValue {
    let b = text.as_bytes();
    let needs = |i: usize, c: u8| {
        c == b'%' || !(0x20..0x7f).contains(&c) || (c == b' ' && (i == 0 || i + 1 == b.len()))
    };
    if !b.iter().enumerate().any(|(i, &c)| needs(i, c))
        && let Ok(v) = HeaderValue::from_str(text)
    {
        return v;
    }
    let mut out = String::with_capacity(text.len() + 8);
    for (i, &c) in b.iter().enumerate() {
        if needs(i, c) {
            out.push('%');
            out.push(char::from(HEX[usize::from(c >> 4)]));
            out.push(char::from(HEX[usize::from(c & 15)]));
        } else {
            out.push(char::from(c));
        }
    }
    HeaderValue::from_str(&out).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Appends the client IP (`client`, from [`Connection::forwarded_for`]) to X-Forwarded-For
/// and sets X-Forwarded-Proto and -Host.
///
/// [`Connection::forwarded_for`]: crate::gateway::Connection::forwarded_for
pub fn set_forwarded(headers: &mut HeaderMap, client: &HeaderValue, host: Option<&str>) {
    // A client's own X-Forwarded-For only arrives here when trusted_client_headers keeps it.
    let xff = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => {
            header_value(&format!("{prev}, {}", client.to_str().unwrap_or_default()))
        }
        _ => client.clone(),
    };
    headers.insert(X_FORWARDED_FOR, xff);
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
    match host {
        Some(h) => {
            headers.insert(X_FORWARDED_HOST, header_value(h));
        }
        None => {
            headers.remove(X_FORWARDED_HOST);
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

        // The usual tokens, in any case, are skipped without losing what they name.
        for token in ["Keep-Alive", "close", " CLOSE , keep-alive "] {
            let mut h = HeaderMap::new();
            h.insert(header::CONNECTION, HeaderValue::from_static(token));
            h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
            h.insert("x-kept", HeaderValue::from_static("1"));
            strip_hop_by_hop(&mut h, false);
            assert_eq!(h.len(), 1, "{token}: {h:?}");
            assert!(h.contains_key("x-kept"));
        }

        // Each hop-by-hop name alone is found by the one pass, in any case the client sent.
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name), Some(i));
        }
        assert_eq!(UPGRADE, HOP_BY_HOP.len());
        assert_eq!(hop_by_hop_index(&header::UPGRADE), Some(UPGRADE));
        for name in HOP_BY_HOP.iter().chain([&header::UPGRADE]) {
            let mut h = HeaderMap::new();
            let spelled = HeaderName::from_bytes(name.as_str().to_uppercase().as_bytes()).unwrap();
            h.insert(spelled, HeaderValue::from_static("x"));
            h.insert("x-kept", HeaderValue::from_static("1"));
            strip_hop_by_hop(&mut h, false);
            assert_eq!(h.len(), 1, "{name}: {h:?}");
        }

        // Every Connection header counts, not only the first.
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, HeaderValue::from_static("close"));
        h.append(header::CONNECTION, HeaderValue::from_static("x-a"));
        h.insert("x-a", HeaderValue::from_static("1"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");

        // Nothing to strip: nothing changes, and an upgrade still gets its Connection.
        let mut h = HeaderMap::new();
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get(header::CONNECTION).unwrap(), "upgrade");
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn identity_rendering_is_injective() {
        let render = |s: &str| header_value(s).to_str().unwrap().to_owned();
        assert_eq!(render("CN=a\nb"), "CN=a%0Ab");
        assert_eq!(render("CN=a%0Ab"), "CN=a%250Ab");
        assert_ne!(render("CN=a\nb"), render("CN=a%0Ab"));
        assert_eq!(render("plain value"), "plain value");
        assert_eq!(render(" x "), "%20x%20");
        assert_ne!(render(" x"), render("x"));
        assert_eq!(render("CN=Zo\u{eb}"), "CN=Zo%C3%AB");
        assert_eq!(render("a\tb"), "a%09b");
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::header_value;

    fn percent_decode(b: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' && i + 2 < b.len() {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        out
    }

    proptest! {
        /// One percent-decoding gives the text back, so two identities never share a header
        /// value, whatever a certificate or token puts in them.
        #[test]
        fn identity_header_values_decode_to_their_text(text in any::<String>()) {
            let v = header_value(&text);
            prop_assert_eq!(percent_decode(v.as_bytes()), text.as_bytes());
            prop_assert!(v.as_bytes().iter().all(|c| (0x20..0x7f).contains(c)));
        }
    }
}
