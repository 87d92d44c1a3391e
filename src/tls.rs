//! TLS termination: the rustls server configuration (client verifier, CRLs, versions, ALPN)
//! and the classification of failed handshakes for logs and metrics.
//!
//! Problems with certificate files are configuration problems: they are reported against the
//! line of the key that named the file. The handshake itself runs in `server`, under a deadline.

use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, RootCertStore, ServerConfig};

use crate::config::{ClientAuth, Config, ConfigErrors, CrlExpired, FileRef, Problems, TlsVersion};

/// Seconds-until-expiry facts gathered while loading, for `check` and the metrics.
#[derive(Clone, Debug, Default)]
pub struct Expiries {
    /// (file, not-after as Unix seconds) of each certificate file's leaf.
    pub certificates: Vec<(String, i64)>,
    /// (file, next-update as Unix seconds) of each CRL.
    pub crls: Vec<(String, i64)>,
}

/// The process-wide crypto provider: aws-lc-rs, installed once so that every rustls and
/// rcgen user in the process agrees.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The listener's provider: the configured suites (`tls.cipher_suites`), in that order.
///
/// The default puts AES-128-GCM with SHA-256 first, as BoringSSL (and so Envoy) and Go do: it
/// is as safe for this use, and SHA-256 runs on the CPU's SHA extensions where SHA-384 does
/// not, which makes a full handshake about 7 % cheaper. The server's order wins over the
/// client's (`ignore_client_order`), so OpenSSL clients, which list AES-256 first, get it too.
fn listener_provider(names: &[&str]) -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::crypto::aws_lc_rs::cipher_suite as suite;
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites = names
        .iter()
        .filter_map(|name| {
            Some(match *name {
                "TLS_AES_128_GCM_SHA256" => suite::TLS13_AES_128_GCM_SHA256,
                "TLS_AES_256_GCM_SHA384" => suite::TLS13_AES_256_GCM_SHA384,
                "TLS_CHACHA20_POLY1305_SHA256" => suite::TLS13_CHACHA20_POLY1305_SHA256,
                "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256" => {
                    suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                }
                "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384" => {
                    suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
                }
                "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256" => {
                    suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
                }
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256" => {
                    suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
                }
                "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384" => {
                    suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
                }
                "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256" => {
                    suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
                }
                // Configuration resolution accepts only the names above.
                _ => return None,
            })
        })
        .collect();
    Arc::new(provider)
}

/// Installs the default provider; harmless when already installed.
pub fn install_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// The client-certificate verifier of one snapshot, kept so that connections opened under an
/// older snapshot can be checked again when CRLs or the CA bundle change.
pub type ClientVerifier = Arc<dyn rustls::server::danger::ClientCertVerifier>;

/// The listener's TLS setup, built from one configuration.
pub struct Listener {
    /// The rustls configuration.
    pub server: Arc<ServerConfig>,
    /// Certificate and CRL expiry facts.
    pub expiries: Expiries,
    /// The client verifier (none with `client_auth: off`).
    pub verifier: Option<ClientVerifier>,
    /// What works but is likely not what was meant, for `check` and the startup log.
    pub warnings: Vec<String>,
}

/// Builds the listener's rustls configuration, and its client verifier (none with
/// `client_auth: off`). Besides reading the files, it refuses what would make every handshake
/// fail: a server certificate whose extended key usage excludes serverAuth, a `client_ca`
/// with no certificate that can issue, a CRL not issued by (or not signed by) a `client_ca`
/// certificate.
///
/// # Errors
/// Every unreadable, empty, invalid or unusable file, each reported at the key that named it.
pub fn server_config(config: &Config) -> Result<Listener, ConfigErrors> {
    let mut p = Problems::new(config.path.display().to_string());
    let mut expiries = Expiries::default();
    let mut warnings = Vec::new();
    let t = &config.tls;

    let chain = read_certs(&t.cert, &mut p);
    if let Some(leaf) = chain.as_ref().and_then(|c| c.first()) {
        check_server_usage(&t.cert, leaf, &mut p);
    }
    if let Some(na) = chain.as_ref().and_then(|c| c.first()).and_then(not_after) {
        expiries
            .certificates
            .push((t.cert.path.display().to_string(), na));
    }
    let key = match PrivateKeyDer::from_pem_file(&t.key.path) {
        Ok(k) => Some(k),
        Err(e) => {
            push_file(
                &mut p,
                &t.key,
                &pem_error(
                    &t.key.path,
                    &e,
                    "a PEM private key (PKCS#8, PKCS#1 or SEC1)",
                ),
            );
            None
        }
    };

    let verifier = match t.client_auth {
        ClientAuth::Off => None,
        mode => {
            let mut roots = RootCertStore::empty();
            let cas = match &t.client_ca {
                Some(ca) => read_certs(ca, &mut p).unwrap_or_default(),
                None => Vec::new(),
            };
            if let Some(ca) = &t.client_ca
                && !cas.is_empty()
            {
                check_client_ca(ca, &cas, &mut p, &mut warnings);
            }
            if let Some(ca) = &t.client_ca {
                for cert in cas.iter().cloned() {
                    if let Some(na) = not_after(&cert) {
                        expiries
                            .certificates
                            .push((ca.path.display().to_string(), na));
                    }
                    if let Err(e) = roots.add(cert) {
                        push_file(&mut p, ca, &format!("not a usable CA certificate: {e}"));
                    }
                }
            }
            let mut crls = Vec::new();
            for f in &t.crls {
                if let Some(list) = read_crls(f, &mut p) {
                    for crl in list {
                        if let Some(next) = next_update(&crl) {
                            expiries.crls.push((f.path.display().to_string(), next));
                        }
                        if !cas.is_empty() {
                            check_crl_issuer(f, &crl, &cas, &mut p);
                        }
                        crls.push(crl);
                    }
                }
            }
            if !p.is_empty() {
                None
            } else {
                let mut b =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                        .with_crls(crls)
                        // Like nginx's ssl_crl: revocation is checked for the client's own
                        // certificate, against the CRL of the CA that issued it.
                        .only_check_end_entity_revocation();
                if t.crl_expired == CrlExpired::Reject {
                    // A CRL past its nextUpdate no longer says who is revoked: like OpenSSL
                    // (nginx, HAProxy), refuse the certificates it covers.
                    b = b.enforce_revocation_expiration();
                }
                if mode == ClientAuth::Optional {
                    b = b.allow_unauthenticated();
                }
                match b.build() {
                    Ok(v) => Some(v),
                    Err(e) => {
                        if let Some(ca) = &t.client_ca {
                            push_file(
                                &mut p,
                                ca,
                                &format!("cannot build the client verifier: {e}"),
                            );
                        }
                        None
                    }
                }
            }
        }
    };

    let (Some(chain), Some(key)) = (chain, key) else {
        return Err(fail(p));
    };
    if !p.is_empty() {
        return Err(fail(p));
    }
    let versions: &[&rustls::SupportedProtocolVersion] = match t.min_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let builder = match ServerConfig::builder_with_provider(listener_provider(&t.cipher_suites))
        .with_protocol_versions(versions)
    {
        Ok(b) => b,
        Err(e) => {
            push_file(&mut p, &t.cert, &format!("unsupported TLS versions: {e}"));
            return Err(fail(p));
        }
    };
    let builder = match &verifier {
        Some(v) => builder.with_client_cert_verifier(v.clone()),
        None => builder.with_no_client_auth(),
    };
    let mut server = match builder.with_single_cert(chain, key) {
        Ok(s) => s,
        Err(e) => {
            let msg = match e {
                rustls::Error::InconsistentKeys(_) => format!(
                    "the key in {} does not match this certificate",
                    t.key.path.display()
                ),
                other => format!("cannot use this certificate and key: {other}"),
            };
            push_file(&mut p, &t.cert, &msg);
            return Err(fail(p));
        }
    };
    server.ignore_client_order = true;
    // http/1.0 too: a client that offers only that is served HTTP/1.x, not refused.
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), b"http/1.0".to_vec()];
    Ok(Listener {
        server: Arc::new(server),
        expiries,
        verifier,
        warnings,
    })
}

/// A server certificate is refused by every client when its extended key usage, if it has
/// one, does not include serverAuth (RFC 5280 §4.2.1.12; browsers, curl and rustls agree).
fn check_server_usage(f: &FileRef, leaf: &CertificateDer<'_>, p: &mut Problems) {
    use x509_parser::prelude::FromDer;
    let Ok((_, cert)) = x509_parser::certificate::X509Certificate::from_der(leaf.as_ref()) else {
        return; // rustls reports an unparsable certificate itself
    };
    if let Ok(Some(eku)) = cert.extended_key_usage()
        && !eku.value.server_auth
        && !eku.value.any
    {
        push_file(
            p,
            f,
            &format!(
                "the certificate for {} has an extendedKeyUsage without serverAuth, so clients refuse it as a server certificate; issue one with serverAuth (portcullis certs init does)",
                cert.subject()
            ),
        );
    }
}

/// Whether a certificate may issue others: CA:TRUE in its basic constraints.
fn is_ca(cert: &x509_parser::certificate::X509Certificate<'_>) -> bool {
    matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca)
}

/// `client_ca` must hold a certificate that can issue client certificates. A certificate
/// issued by someone else without CA:TRUE (a leaf copied by mistake) issues nothing, so a
/// bundle of only such certificates refuses every client; one among CAs is only noise. A
/// self-signed certificate without CA:TRUE is accepted with a warning: pinning one client's
/// own certificate is a setup some use.
fn check_client_ca(
    f: &FileRef,
    cas: &[CertificateDer<'_>],
    p: &mut Problems,
    warnings: &mut Vec<String>,
) {
    use x509_parser::prelude::FromDer;
    let mut leaves = Vec::new();
    let mut issuers = 0;
    for (i, der) in cas.iter().enumerate() {
        let Ok((_, cert)) = x509_parser::certificate::X509Certificate::from_der(der.as_ref())
        else {
            continue; // reported when the roots are built
        };
        if is_ca(&cert) {
            issuers += 1;
        } else if cert.subject() == cert.issuer() {
            issuers += 1;
            warnings.push(format!(
                "{}: certificate {} ({}) is self-signed without CA:TRUE; it can verify only certificates signed with its own key",
                f.path.display(),
                i + 1,
                cert.subject()
            ));
        } else {
            leaves.push(format!(
                "certificate {} ({}, issued by {})",
                i + 1,
                cert.subject(),
                cert.issuer()
            ));
        }
    }
    if leaves.is_empty() {
        return;
    }
    if issuers == 0 {
        push_file(
            p,
            f,
            &format!(
                "{} is not a CA certificate (no basicConstraints CA:TRUE), so no client certificate can chain to it; point client_ca at the CA that issued the clients' certificates",
                leaves.join(", ")
            ),
        );
    } else {
        warnings.push(format!(
            "{}: {} is not a CA certificate and verifies no client; remove it from the bundle",
            f.path.display(),
            leaves.join(", ")
        ));
    }
}

/// Revocation is checked against the CRL of the CA that issued the client's certificate; with
/// CRLs configured, a client whose issuer has none is refused (status unknown). So each CRL
/// must come from a `client_ca` certificate, by name and by signature: a CRL from another CA
/// refuses every client, and one that fails its signature check makes every handshake fail.
fn check_crl_issuer(
    f: &FileRef,
    crl: &CertificateRevocationListDer<'_>,
    cas: &[CertificateDer<'_>],
    p: &mut Problems,
) {
    use x509_parser::prelude::FromDer;
    let Ok((_, list)) =
        x509_parser::revocation_list::CertificateRevocationList::from_der(crl.as_ref())
    else {
        push_file(p, f, "not a valid X.509 CRL");
        return;
    };
    let issuers: Vec<_> = cas
        .iter()
        .filter_map(|der| {
            x509_parser::certificate::X509Certificate::from_der(der.as_ref())
                .ok()
                .map(|(_, c)| c)
        })
        .filter(|c| c.subject() == list.issuer())
        .collect();
    if issuers.is_empty() {
        push_file(
            p,
            f,
            &format!(
                "the CRL is issued by {}, which is not a certificate in tls.client_ca, so every client would be refused (revocation status unknown); use the CRL of the CA that issues the clients' certificates, or add its issuer (an intermediate) to client_ca",
                list.issuer()
            ),
        );
        return;
    }
    if !issuers
        .iter()
        .any(|ca| list.verify_signature(ca.public_key()).is_ok())
    {
        push_file(
            p,
            f,
            &format!(
                "the CRL names {} as its issuer but is not signed by that certificate's key in tls.client_ca; every handshake would fail",
                list.issuer()
            ),
        );
    }
}

fn fail(p: Problems) -> ConfigErrors {
    match p.into_result(()) {
        Err(e) => e,
        Ok(()) => ConfigErrors {
            file: String::new(),
            errors: Vec::new(),
        },
    }
}

fn push_file(p: &mut Problems, f: &FileRef, message: &str) {
    p.push(f.pos, &f.key, format!("{}: {message}", f.path.display()));
}

fn pem_error(path: &Path, e: &rustls::pki_types::pem::Error, expected: &str) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(io) => crate::config::read_error(path, io),
        rustls::pki_types::pem::Error::NoItemsFound => {
            format!("no PEM item found; expected {expected}")
        }
        other => format!("invalid PEM ({other:?}); expected {expected}"),
    }
}

/// Reads a PEM certificate bundle; empty or unparsable is an error.
fn read_certs(f: &FileRef, p: &mut Problems) -> Option<Vec<CertificateDer<'static>>> {
    let certs: Result<Vec<_>, _> = match CertificateDer::pem_file_iter(&f.path) {
        Ok(it) => it.collect(),
        Err(e) => Err(e),
    };
    match certs {
        Ok(c) if c.is_empty() => {
            push_file(
                p,
                f,
                "no PEM certificate found (expected -----BEGIN CERTIFICATE-----)",
            );
            None
        }
        Ok(c) => Some(c),
        Err(e) => {
            push_file(p, f, &pem_error(&f.path, &e, "PEM certificates"));
            None
        }
    }
}

/// Reads CRLs in PEM, or one CRL in DER.
fn read_crls(f: &FileRef, p: &mut Problems) -> Option<Vec<CertificateRevocationListDer<'static>>> {
    let bytes = match std::fs::read(&f.path) {
        Ok(b) => b,
        Err(e) => {
            push_file(p, f, &crate::config::read_error(&f.path, &e));
            return None;
        }
    };
    if bytes.first() == Some(&0x30) {
        return Some(vec![CertificateRevocationListDer::from(bytes)]);
    }
    let crls: Result<Vec<_>, _> = CertificateRevocationListDer::pem_slice_iter(&bytes).collect();
    match crls {
        Ok(c) if c.is_empty() => {
            push_file(
                p,
                f,
                "no CRL found (expected PEM -----BEGIN X509 CRL----- or DER)",
            );
            None
        }
        Ok(c) => Some(c),
        Err(e) => {
            push_file(p, f, &pem_error(&f.path, &e, "a CRL in PEM or DER"));
            None
        }
    }
}

fn not_after(cert: &CertificateDer<'_>) -> Option<i64> {
    use x509_parser::prelude::FromDer;
    let (_, c) = x509_parser::certificate::X509Certificate::from_der(cert.as_ref()).ok()?;
    Some(c.validity().not_after.timestamp())
}

fn next_update(crl: &CertificateRevocationListDer<'_>) -> Option<i64> {
    use x509_parser::prelude::FromDer;
    let (_, c) =
        x509_parser::revocation_list::CertificateRevocationList::from_der(crl.as_ref()).ok()?;
    c.next_update().map(|t| t.timestamp())
}

/// Seconds from now until `unix` (negative when past).
pub fn seconds_until(unix: i64) -> i64 {
    let now = UnixTime::now().as_secs() as i64;
    unix - now
}

/// Reads the leaf certificate's not-after of a PEM file (for `check`).
pub fn file_not_after(path: &Path) -> Option<i64> {
    let first = CertificateDer::pem_file_iter(path).ok()?.next()?.ok()?;
    not_after(&first)
}

/// A short, stable reason for a failed handshake, for logs and the
/// `portcullis_tls_handshake_failures_total{reason}` metric.
pub fn failure_reason(e: &io::Error) -> &'static str {
    if e.kind() == io::ErrorKind::TimedOut {
        return "timeout";
    }
    let Some(tls) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return match e.kind() {
            io::ErrorKind::UnexpectedEof => "eof",
            io::ErrorKind::ConnectionReset => "reset",
            _ => "io",
        };
    };
    match tls {
        rustls::Error::NoCertificatesPresented => "no_certificate",
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "not_yet_valid"
            }
            CertificateError::Revoked => "revoked",
            CertificateError::UnknownIssuer => "unknown_ca",
            CertificateError::BadSignature => "bad_signature",
            CertificateError::UnknownRevocationStatus => "unknown_revocation_status",
            CertificateError::ExpiredRevocationList
            | CertificateError::ExpiredRevocationListContext { .. } => "crl_expired",
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                "bad_purpose"
            }
            _ => "bad_certificate",
        },
        rustls::Error::PeerIncompatible(_) => "incompatible",
        rustls::Error::NoApplicationProtocol => "no_alpn",
        rustls::Error::AlertReceived(_) => "alert_received",
        rustls::Error::InappropriateMessage { .. }
        | rustls::Error::InappropriateHandshakeMessage { .. }
        | rustls::Error::InvalidMessage(_)
        | rustls::Error::PeerMisbehaved(_) => "protocol",
        _ => "other",
    }
}

/// A TLS client configuration for calls the gateway makes itself (a JWKS URL, an OAuth
/// introspection endpoint): the system roots plus the certificates in `ca`, HTTP/1.1 by ALPN,
/// the process's crypto provider.
///
/// # Errors
/// `ca` unreadable, not PEM, or holding no certificate (the message starts with its path).
pub fn https_client(ca: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(ca) = ca {
        let bad = |e: &dyn std::fmt::Debug| format!("{}: {e:?}", ca.display());
        let mut any = false;
        for c in CertificateDer::pem_file_iter(ca).map_err(|e| bad(&e))? {
            roots
                .add(c.map_err(|e| bad(&e))?)
                .map_err(|e| format!("{}: {e}", ca.display()))?;
            any = true;
        }
        if !any {
            return Err(format!("{}: no PEM certificate in the file", ca.display()));
        }
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
