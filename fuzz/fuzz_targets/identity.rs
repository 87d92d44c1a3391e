//! Identity headers from certificates with arbitrary subject and SAN text: the XFCC element
//! parses back into exactly the certificate's fields (a crafted CN cannot add a field or a
//! second element), the RFC 9440 value decodes to the certificate, and every header value
//! percent-decodes back to the text it carries.
#![no_main]

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use portcullis::identity::{PeerCert, rfc9440};
use portcullis::proxy::headers::header_value;
use rcgen::{CertificateParams, DnType, KeyPair, SanType};

#[derive(Arbitrary, Debug)]
struct Names {
    cn: String,
    o: Option<String>,
    ou: Option<String>,
    uris: Vec<String>,
    dns: Vec<String>,
    emails: Vec<String>,
}

fn key() -> &'static KeyPair {
    static KEY: OnceLock<KeyPair> = OnceLock::new();
    KEY.get_or_init(|| KeyPair::generate().expect("key"))
}

fuzz_target!(|n: Names| {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name.push(DnType::CommonName, n.cn.as_str());
    if let Some(o) = &n.o {
        params.distinguished_name.push(DnType::OrganizationName, o.as_str());
    }
    if let Some(ou) = &n.ou {
        params.distinguished_name.push(DnType::OrganizationalUnitName, ou.as_str());
    }
    // SANs are IA5 (ASCII) strings; rcgen refuses others, and so would any CA.
    let ia5 = |s: &String| s.clone().try_into().ok();
    params.subject_alt_names.extend(n.uris.iter().take(4).filter_map(ia5).map(SanType::URI));
    params.subject_alt_names.extend(n.dns.iter().take(4).filter_map(ia5).map(SanType::DnsName));
    params.subject_alt_names.extend(n.emails.iter().take(4).filter_map(ia5).map(SanType::Rfc822Name));
    let Ok(cert) = params.self_signed(key()) else {
        return;
    };
    let der = cert.der().to_vec();
    let Ok(peer) = PeerCert::from_der(&der) else {
        return;
    };

    // XFCC: one element, fields `Key=value` split on `;` outside quotes.
    let xfcc = peer.xfcc();
    let fields = split_fields(&xfcc).expect("balanced quotes");
    assert!(fields[0].0 == "Hash" && fields[0].1.len() == 64, "{xfcc}");
    assert_eq!(fields[1], ("Subject".to_owned(), peer.subject.clone()), "{xfcc}");
    let uris: Vec<&String> = fields.iter().filter(|f| f.0 == "URI").map(|f| &f.1).collect();
    let dns: Vec<&String> = fields.iter().filter(|f| f.0 == "DNS").map(|f| &f.1).collect();
    assert_eq!(uris, peer.san_uri.iter().collect::<Vec<_>>(), "{xfcc}");
    assert_eq!(dns, peer.san_dns.iter().collect::<Vec<_>>(), "{xfcc}");
    assert_eq!(fields.len(), 2 + uris.len() + dns.len(), "no extra field: {xfcc}");

    // RFC 9440: `:base64:` of exactly this certificate.
    let b64 = rfc9440(&der);
    let inner = b64.strip_prefix(':').and_then(|s| s.strip_suffix(':')).expect("colons");
    use base64::Engine;
    assert_eq!(base64::engine::general_purpose::STANDARD.decode(inner).unwrap(), der);

    // Every header value carries its text injectively.
    for text in [xfcc.as_str(), peer.identity(), b64.as_str()] {
        let v = header_value(text);
        assert_eq!(percent_decode(v.as_bytes()), text.as_bytes(), "{text:?}");
    }
});

/// `Key=value;Key="quoted \" value"` -> pairs; None when a quote is left open. A top-level
/// `,` would start a second element: refused.
fn split_fields(s: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut rest = s;
    loop {
        let eq = rest.find('=')?;
        let key = rest[..eq].to_owned();
        assert!(!key.contains([',', ';', '"']), "field name {key:?} in {s}");
        let after = &rest[eq + 1..];
        let (value, tail) = if let Some(q) = after.strip_prefix('"') {
            let mut v = String::new();
            let mut chars = q.char_indices();
            let end = loop {
                let (i, c) = chars.next()?;
                match c {
                    '\\' => v.push(chars.next()?.1),
                    '"' => break i + 1,
                    c => v.push(c),
                }
            };
            (v, &q[end..])
        } else {
            let end = after.find(';').unwrap_or(after.len());
            let v = &after[..end];
            assert!(!v.contains([',', '"']), "unquoted value {v:?} in {s}");
            (v.to_owned(), &after[end..])
        };
        out.push((key, value));
        match tail.strip_prefix(';') {
            Some(t) => rest = t,
            None if tail.is_empty() => return Some(out),
            None => panic!("junk after a field in {s}: {tail:?}"),
        }
    }
}

fn percent_decode(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).expect("ascii");
            out.push(u8::from_str_radix(hex, 16).expect("hex"));
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}
