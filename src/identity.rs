//! The verified client certificate of a connection, read once per certificate: connections
//! that present the same chain share its parsed fields ([`PeerCache`]).
//!
//! rustls has already verified the chain, validity and revocation when this runs; this module
//! only extracts the fields that principals match on and that are forwarded upstream. It does
//! not decide anything: `policy` does.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, OnceLock};

use base64::Engine as _;
use http::HeaderValue;
use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::x509::X509Name;

/// The fields of a verified client leaf certificate.
#[derive(Clone, Debug, Default)]
pub struct PeerCert {
    /// SHA-256 of the DER.
    pub fingerprint: [u8; 32],
    /// Subject distinguished name in RFC 4514 form (most specific RDN first).
    pub subject: String,
    /// Subject common names.
    pub cn: Vec<String>,
    /// Subject organizations.
    pub o: Vec<String>,
    /// Subject organizational units.
    pub ou: Vec<String>,
    /// DNS subject alternative names.
    pub san_dns: Vec<String>,
    /// URI subject alternative names (SPIFFE IDs live here).
    pub san_uri: Vec<String>,
    /// E-mail subject alternative names.
    pub san_email: Vec<String>,
}

/// A client's verified certificate chain and its parsed leaf, shared by every connection
/// that presents the same chain: a client with many connections holds one copy.
#[derive(Debug)]
pub struct PeerIdentity {
    /// The leaf's fields.
    pub cert: PeerCert,
    /// The chain as presented (leaf first), to verify again when a reload changes the CA
    /// bundle or the CRLs.
    pub chain: Box<[CertificateDer<'static>]>,
    /// The certificate as its identity header carries it, in each format, made when first
    /// needed.
    pub(crate) xfcc: OnceLock<HeaderValue>,
    pub(crate) rfc9440: OnceLock<HeaderValue>,
}

/// Parsed client certificates by the SHA-256 of their leaf, so that a client's connections
/// after the first skip the X.509 parse and share one [`PeerIdentity`]. Holds at most
/// [`PeerCache::CAPACITY`] certificates and starts over when full. Trust is not cached: the
/// handshake verified the chain, and each connection checks it again after a reload.
#[derive(Debug, Default)]
pub struct PeerCache {
    map: Mutex<HashMap<[u8; 32], Arc<PeerIdentity>>>,
}

impl PeerCache {
    /// Most certificates remembered.
    pub const CAPACITY: usize = 1024;

    /// The identity of a verified chain (leaf first, not empty).
    ///
    /// # Errors
    /// When the leaf does not parse as X.509.
    pub fn identify(
        &self,
        chain: &[CertificateDer<'_>],
    ) -> Result<Arc<PeerIdentity>, CertParseError> {
        let Some(leaf) = chain.first() else {
            return Err(CertParseError("no certificate".to_owned()));
        };
        let key: [u8; 32] = Sha256::digest(leaf.as_ref()).into();
        if let Some(known) = self.lock().get(&key)
            && known.chain.len() == chain.len()
            && known
                .chain
                .iter()
                .zip(chain)
                .all(|(a, b)| a.as_ref() == b.as_ref())
        {
            return Ok(known.clone());
        }
        let peer = Arc::new(PeerIdentity {
            cert: PeerCert::from_der(leaf)?,
            chain: chain.iter().map(|c| c.clone().into_owned()).collect(),
            xfcc: OnceLock::new(),
            rfc9440: OnceLock::new(),
        });
        let mut map = self.lock();
        if map.len() >= Self::CAPACITY {
            map.clear();
        }
        map.insert(key, peer.clone());
        Ok(peer)
    }

    /// Certificates remembered now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Arc<PeerIdentity>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Why a certificate could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot parse the client certificate: {0}")]
pub struct CertParseError(String);

impl PeerCert {
    /// Reads a DER certificate.
    ///
    /// # Errors
    /// When the DER does not parse as X.509 (rustls accepted it, so this is rare).
    pub fn from_der(der: &[u8]) -> Result<PeerCert, CertParseError> {
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|e| CertParseError(e.to_string()))?;
        let subject_name = cert.subject();
        let mut pc = PeerCert {
            fingerprint: Sha256::digest(der).into(),
            subject: rfc4514(subject_name),
            cn: attr_strings(subject_name.iter_common_name()),
            o: attr_strings(subject_name.iter_organization()),
            ou: attr_strings(subject_name.iter_organizational_unit()),
            ..PeerCert::default()
        };
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(s) => pc.san_dns.push((*s).to_owned()),
                    GeneralName::URI(s) => pc.san_uri.push((*s).to_owned()),
                    GeneralName::RFC822Name(s) => pc.san_email.push((*s).to_owned()),
                    _ => {}
                }
            }
        }
        Ok(pc)
    }

    /// The caller's identity: the first URI SAN (e.g. a SPIFFE ID), else the subject DN.
    pub fn identity(&self) -> &str {
        self.san_uri
            .first()
            .map_or(self.subject.as_str(), String::as_str)
    }

    /// Envoy's XFCC element: `Hash=..;Subject="..";URI=..;DNS=..`.
    pub fn xfcc(&self) -> String {
        let mut out = format!("Hash={}", hex::encode(self.fingerprint));
        let _ = write!(
            out,
            ";Subject=\"{}\"",
            self.subject.replace('\\', "\\\\").replace('"', "\\\"")
        );
        for uri in &self.san_uri {
            let _ = write!(out, ";URI={}", xfcc_value(uri));
        }
        for dns in &self.san_dns {
            let _ = write!(out, ";DNS={}", xfcc_value(dns));
        }
        out
    }
}

/// RFC 9440's `Client-Cert` value for a certificate: `:base64(DER):`.
pub fn rfc9440(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut out = String::with_capacity(base64::encoded_len(der.len(), true).unwrap_or(0) + 2);
    out.push(':');
    b64.encode_string(der, &mut out);
    out.push(':');
    out
}

/// XFCC values containing `,`, `;`, `=` or `"` are quoted, with `"` escaped.
fn xfcc_value(v: &str) -> String {
    if v.contains([',', ';', '=', '"']) {
        format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        v.to_owned()
    }
}

fn attr_strings<'a>(
    it: impl Iterator<Item = &'a x509_parser::x509::AttributeTypeAndValue<'a>>,
) -> Vec<String> {
    it.filter_map(|a| a.as_str().ok().map(str::to_owned))
        .collect()
}

/// RFC 4514: RDNs in reverse order of the encoding, joined by `,`, with special characters
/// escaped.
fn rfc4514(name: &X509Name<'_>) -> String {
    let mut parts = Vec::new();
    for rdn in name.iter_rdn() {
        let mut attrs = Vec::new();
        for atv in rdn.iter() {
            let oid = atv.attr_type();
            let short = x509_parser::objects::oid2abbrev(oid, x509_parser::objects::oid_registry())
                .map(str::to_owned)
                .unwrap_or_else(|_| oid.to_id_string());
            let value = match atv.as_str() {
                Ok(s) => escape_dn_value(s),
                Err(_) => format!("#{}", hex::encode(atv.as_slice())),
            };
            attrs.push(format!("{short}={value}"));
        }
        parts.push(attrs.join("+"));
    }
    parts.reverse();
    parts.join(",")
}

fn escape_dn_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let last = s.chars().count().saturating_sub(1);
    for (i, c) in s.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=')
            || (i == 0 && matches!(c, ' ' | '#'))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(cn: &str, sans: &[rcgen::SanType]) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().expect("keygen");
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Acme, Inc");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationalUnitName, "Platform");
        params.subject_alt_names = sans.to_vec();
        params.self_signed(&key).expect("sign").der().to_vec()
    }

    #[test]
    fn a_chain_is_parsed_once_and_shared_and_the_cache_stays_bounded() {
        let cache = PeerCache::default();
        let leaf = CertificateDer::from(cert("reader-bob", &[]));
        let other_ca = CertificateDer::from(cert("intermediate", &[]));
        let first = cache.identify(std::slice::from_ref(&leaf)).unwrap();
        let again = cache.identify(std::slice::from_ref(&leaf)).unwrap();
        assert!(
            Arc::ptr_eq(&first, &again),
            "the same chain shares one identity"
        );
        assert_eq!(first.cert.cn, ["reader-bob"]);
        // The same leaf with another chain is another identity (its own chain is verified
        // again after a reload).
        let longer = cache.identify(&[leaf.clone(), other_ca]).unwrap();
        assert!(!Arc::ptr_eq(&first, &longer));
        assert_eq!(longer.chain.len(), 2);
        assert!(cache.identify(&[]).is_err());

        // One key signs every filler certificate: only their names differ.
        let key = rcgen::KeyPair::generate().unwrap();
        for i in 0..=PeerCache::CAPACITY {
            let mut params = rcgen::CertificateParams::default();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, format!("client-{i}"));
            let der = CertificateDer::from(params.self_signed(&key).unwrap().der().to_vec());
            cache.identify(&[der]).unwrap();
            assert!(cache.len() <= PeerCache::CAPACITY);
        }
    }

    #[test]
    fn reads_subject_and_sans() {
        let der = cert(
            "ops-alice",
            &[
                rcgen::SanType::URI(
                    "spiffe://acme.internal/ns/prod/sa/billing"
                        .try_into()
                        .unwrap(),
                ),
                rcgen::SanType::DnsName("billing.acme.internal".try_into().unwrap()),
                rcgen::SanType::Rfc822Name("alice@acme.example".try_into().unwrap()),
            ],
        );
        let pc = PeerCert::from_der(&der).unwrap();
        assert_eq!(pc.cn, ["ops-alice"]);
        assert_eq!(pc.o, ["Acme, Inc"]);
        assert_eq!(pc.ou, ["Platform"]);
        assert_eq!(pc.san_dns, ["billing.acme.internal"]);
        assert_eq!(pc.san_email, ["alice@acme.example"]);
        assert_eq!(pc.identity(), "spiffe://acme.internal/ns/prod/sa/billing");
        assert!(pc.subject.contains("CN=ops-alice"), "{}", pc.subject);
        assert!(pc.subject.contains("O=Acme\\, Inc"), "{}", pc.subject);
        let xfcc = pc.xfcc();
        assert!(xfcc.starts_with("Hash="), "{xfcc}");
        assert!(
            xfcc.contains("URI=spiffe://acme.internal/ns/prod/sa/billing"),
            "{xfcc}"
        );
        let der = cert("ops-alice", &[]);
        let value = rfc9440(&der);
        let b64 = base64::engine::general_purpose::STANDARD;
        assert_eq!(value, format!(":{}:", b64.encode(&der)));
    }

    #[test]
    fn identity_falls_back_to_subject() {
        let pc = PeerCert::from_der(&cert("reader-bob", &[])).unwrap();
        assert_eq!(pc.identity(), pc.subject);
        assert!(pc.subject.ends_with(",CN=reader-bob"), "{}", pc.subject);
    }
}
