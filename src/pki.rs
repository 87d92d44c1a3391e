//! The operator's development PKI (`portcullis certs init | issue | revoke`), built on rcgen.
//!
//! Everything is ECDSA P-256. Private keys are written with mode 0600 and never printed.
//! Existing files are never overwritten: `init` refuses a folder that already holds a CA, and
//! `issue` refuses a client name that exists. This is for development and small deployments;
//! production PKIs keep the CA key offline.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, RevokedCertParams, SanType,
    SerialNumber,
};
use time::{Duration, OffsetDateTime};

/// A PKI operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file could not be read or written.
    #[error("{path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// rcgen refused the parameters or input.
    #[error("{context}")]
    Rcgen {
        /// What was being done.
        context: String,
        /// rcgen's error.
        source: rcgen::Error,
    },
    /// Bad input from the operator.
    #[error("{0}")]
    Invalid(String),
}

/// A certificate authority that can issue certificates and CRLs.
pub struct Ca {
    cert_pem: String,
    key: KeyPair,
    issuer: Issuer<'static, KeyPair>,
}

/// A freshly issued certificate and its key.
pub struct Issued {
    /// PEM certificate.
    pub cert_pem: String,
    /// PEM (PKCS#8) private key.
    pub key_pem: String,
    /// DER certificate.
    pub der: Vec<u8>,
    /// Serial number bytes (big-endian).
    pub serial: Vec<u8>,
}

/// What a client certificate says about its holder.
#[derive(Clone, Debug, Default)]
pub struct ClientSpec {
    /// Subject CN.
    pub cn: String,
    /// Subject O.
    pub o: Option<String>,
    /// Subject OU.
    pub ou: Option<String>,
    /// URI SANs (e.g. SPIFFE IDs).
    pub san_uri: Vec<String>,
    /// DNS SANs.
    pub san_dns: Vec<String>,
    /// E-mail SANs.
    pub san_email: Vec<String>,
    /// Validity from now, in days (0 means already expired: for tests of expiry handling).
    pub days: u32,
    /// Issue for ServerAuth only, not ClientAuth (for tests of purpose checking).
    pub without_client_auth_eku: bool,
}

fn rc<T>(context: &str, r: Result<T, rcgen::Error>) -> Result<T, PkiError> {
    r.map_err(|source| PkiError::Rcgen {
        context: context.to_owned(),
        source,
    })
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    for b in &mut bytes {
        *b = fastrand::u8(..);
    }
    // Positive and without a leading zero octet.
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    SerialNumber::from_slice(&bytes)
}

impl Ca {
    /// A new self-signed CA valid for ten years.
    ///
    /// # Errors
    /// When key generation or signing fails.
    pub fn generate(cn: &str) -> Result<Ca, PkiError> {
        let key = rc("generating the CA key", KeyPair::generate())?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial());
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(3650);
        let cert = rc("signing the CA certificate", params.self_signed(&key))?;
        let issuer_key = rc(
            "copying the CA key",
            KeyPair::from_pem(&key.serialize_pem()),
        )?;
        Ok(Ca {
            cert_pem: cert.pem(),
            key,
            issuer: Issuer::new(params, issuer_key),
        })
    }

    /// Loads `DIR/ca.crt` and `DIR/ca.key`.
    ///
    /// # Errors
    /// Missing or unparsable files.
    pub fn load(dir: &Path) -> Result<Ca, PkiError> {
        let cert_pem = read(&dir.join("ca.crt"))?;
        let key_pem = read(&dir.join("ca.key"))?;
        let key = rc("reading ca.key", KeyPair::from_pem(&key_pem))?;
        let issuer_key = rc("reading ca.key", KeyPair::from_pem(&key_pem))?;
        let issuer = rc(
            "reading ca.crt",
            Issuer::from_ca_cert_pem(&cert_pem, issuer_key),
        )?;
        Ok(Ca {
            cert_pem,
            key,
            issuer,
        })
    }

    /// The CA certificate (PEM).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA key (PEM).
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// A server certificate for `localhost`, `127.0.0.1`, `::1` and `hosts`.
    ///
    /// # Errors
    /// An invalid host name, or a signing failure.
    pub fn server(&self, hosts: &[String]) -> Result<Issued, PkiError> {
        let mut names = vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ];
        names.extend(hosts.iter().cloned());
        let mut params = rc("server names", CertificateParams::new(names))?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "portcullis server");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        self.sign(params, 825)
    }

    /// A client certificate.
    ///
    /// # Errors
    /// An invalid SAN, or a signing failure.
    pub fn client(&self, spec: &ClientSpec) -> Result<Issued, PkiError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, spec.cn.as_str());
        if let Some(o) = &spec.o {
            params
                .distinguished_name
                .push(DnType::OrganizationName, o.as_str());
        }
        if let Some(ou) = &spec.ou {
            params
                .distinguished_name
                .push(DnType::OrganizationalUnitName, ou.as_str());
        }
        for uri in &spec.san_uri {
            let v = rc("--san-uri", uri.clone().try_into())?;
            params.subject_alt_names.push(SanType::URI(v));
        }
        for dns in &spec.san_dns {
            params
                .subject_alt_names
                .push(SanType::DnsName(rc("--san-dns", dns.clone().try_into())?));
        }
        for email in &spec.san_email {
            params.subject_alt_names.push(SanType::Rfc822Name(rc(
                "--san-email",
                email.clone().try_into(),
            )?));
        }
        params.extended_key_usages = if spec.without_client_auth_eku {
            vec![ExtendedKeyUsagePurpose::ServerAuth]
        } else {
            vec![ExtendedKeyUsagePurpose::ClientAuth]
        };
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        self.sign(params, spec.days)
    }

    fn sign(&self, mut params: CertificateParams, days: u32) -> Result<Issued, PkiError> {
        let key = rc("generating a key", KeyPair::generate())?;
        let serial = random_serial();
        params.serial_number = Some(serial.clone());
        let now = OffsetDateTime::now_utc();
        if days == 0 {
            params.not_before = now - Duration::days(30);
            params.not_after = now - Duration::days(1);
        } else {
            params.not_before = now - Duration::hours(1);
            params.not_after = now + Duration::days(i64::from(days));
        }
        params.use_authority_key_identifier_extension = true;
        let cert = rc(
            "signing the certificate",
            params.signed_by(&key, &self.issuer),
        )?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
            serial: serial.to_bytes(),
        })
    }

    /// A CRL (PEM) listing `revoked` serials, valid for a year.
    ///
    /// # Errors
    /// A signing failure.
    pub fn crl(
        &self,
        revoked: &[(Vec<u8>, OffsetDateTime)],
        number: u64,
    ) -> Result<String, PkiError> {
        let next_update = OffsetDateTime::now_utc() + Duration::days(365);
        self.crl_until(revoked, number, next_update)
    }

    /// A CRL like [`crl`](Ca::crl) whose nextUpdate is `next_update` (in the past, for tests
    /// of stale revocation lists).
    ///
    /// # Errors
    /// rcgen refused to sign.
    pub fn crl_until(
        &self,
        revoked: &[(Vec<u8>, OffsetDateTime)],
        number: u64,
        next_update: OffsetDateTime,
    ) -> Result<String, PkiError> {
        let now = OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: (now - Duration::minutes(5)).min(next_update - Duration::days(1)),
            next_update,
            crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|(serial, at)| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(serial),
                    revocation_time: *at,
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        let crl = rc("signing the CRL", params.signed_by(&self.issuer))?;
        rc("encoding the CRL", crl.pem())
    }
}

fn read(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn write(path: &Path, contents: &str, private: bool) -> Result<(), PkiError> {
    let io = |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(io)?;
    }
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let _ = private;
    let mut f = opts.open(path).map_err(io)?;
    f.write_all(contents.as_bytes()).map_err(io)
}

/// Parses `NAME[:OU]` from `--client`.
pub fn parse_client_arg(arg: &str) -> ClientSpec {
    let (cn, ou) = match arg.split_once(':') {
        Some((cn, ou)) if !ou.is_empty() => (cn, Some(ou.to_owned())),
        Some((cn, _)) => (cn, None),
        None => (arg, None),
    };
    ClientSpec {
        cn: cn.to_owned(),
        ou,
        days: 365,
        ..ClientSpec::default()
    }
}

fn check_client_name(name: &str) -> Result<(), PkiError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(PkiError::Invalid(format!(
            "client name {name:?} must be 1-64 characters of A-Z a-z 0-9 - _ . (it becomes a file name)"
        )))
    }
}

/// `certs init`: a CA, a server certificate, the named clients and an empty CRL in `dir`.
/// Returns the files written.
///
/// # Errors
/// When `dir` already holds a CA (nothing is overwritten), or on any write failure.
pub fn init(
    dir: &Path,
    clients: &[ClientSpec],
    hosts: &[String],
) -> Result<Vec<PathBuf>, PkiError> {
    if dir.join("ca.key").exists() || dir.join("ca.crt").exists() {
        return Err(PkiError::Invalid(format!(
            "{} already holds a CA (ca.crt/ca.key); nothing was changed. Use `certs issue` to add clients, or remove the folder to start over",
            dir.display()
        )));
    }
    for c in clients {
        check_client_name(&c.cn)?;
    }
    let ca = Ca::generate("portcullis development CA")?;
    let server = ca.server(hosts)?;
    let crl = ca.crl(&[], 1)?;
    let mut written = Vec::new();
    let mut put = |name: &str, text: &str, private: bool| -> Result<(), PkiError> {
        let p = dir.join(name);
        write(&p, text, private)?;
        written.push(p);
        Ok(())
    };
    put("ca.key", &ca.key_pem(), true)?;
    put("ca.crt", ca.cert_pem(), false)?;
    put("server.key", &server.key_pem, true)?;
    put("server.crt", &server.cert_pem, false)?;
    put("ca.crl", &crl, false)?;
    for c in clients {
        let issued = ca.client(c)?;
        put(&format!("clients/{}.key", c.cn), &issued.key_pem, true)?;
        put(&format!("clients/{}.crt", c.cn), &issued.cert_pem, false)?;
    }
    Ok(written)
}

/// `certs issue`: a client certificate signed by `DIR/ca.key`. Returns (cert, key) paths.
///
/// # Errors
/// A missing CA, an existing client of that name, or a write failure.
pub fn issue(dir: &Path, spec: &ClientSpec) -> Result<(PathBuf, PathBuf), PkiError> {
    check_client_name(&spec.cn)?;
    let cert_path = dir.join("clients").join(format!("{}.crt", spec.cn));
    let key_path = dir.join("clients").join(format!("{}.key", spec.cn));
    if cert_path.exists() || key_path.exists() {
        return Err(PkiError::Invalid(format!(
            "{} already exists; nothing was changed (revoke it, then remove it, to reissue)",
            cert_path.display()
        )));
    }
    let ca = Ca::load(dir)?;
    let issued = ca.client(spec)?;
    write(&key_path, &issued.key_pem, true)?;
    write(&cert_path, &issued.cert_pem, false)?;
    Ok((cert_path, key_path))
}

/// Reads the serial number of a PEM certificate file.
///
/// # Errors
/// An unreadable or unparsable file.
pub fn serial_of(cert_file: &Path) -> Result<Vec<u8>, PkiError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    use x509_parser::prelude::FromDer;
    let der = CertificateDer::from_pem_file(cert_file).map_err(|e| {
        PkiError::Invalid(format!(
            "{}: not a PEM certificate ({e:?})",
            cert_file.display()
        ))
    })?;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der.as_ref())
        .map_err(|e| PkiError::Invalid(format!("{}: {e}", cert_file.display())))?;
    Ok(cert.raw_serial().to_vec())
}

/// Whether the CA in `dir` issued the certificate in `cert_file`: its issuer is the CA's
/// subject and its signature verifies with the CA's key. Revoking a serial from another CA's
/// certificate would revoke nothing it meant to, and maybe a certificate of this CA that
/// happens to share the number.
///
/// # Errors
/// Unreadable or unparsable files, or a certificate this CA did not issue.
pub fn check_issued_by_ca(dir: &Path, cert_file: &Path) -> Result<(), PkiError> {
    use x509_parser::prelude::FromDer;
    let ca_der = pem_cert(&dir.join("ca.crt"))?;
    let der = pem_cert(cert_file)?;
    fn parse<'a>(
        der: &'a [u8],
        path: &Path,
    ) -> Result<x509_parser::certificate::X509Certificate<'a>, PkiError> {
        x509_parser::certificate::X509Certificate::from_der(der)
            .map(|(_, c)| c)
            .map_err(|e| PkiError::Invalid(format!("{}: {e}", path.display())))
    }
    let ca = parse(&ca_der, &dir.join("ca.crt"))?;
    let cert = parse(&der, cert_file)?;
    if cert.issuer() != ca.subject() || cert.verify_signature(Some(ca.public_key())).is_err() {
        return Err(PkiError::Invalid(format!(
            "{} was not issued by the CA in {} (it names {} as its issuer; this CA is {}); revoking its serial here would not revoke it. --force revokes the serial anyway",
            cert_file.display(),
            dir.display(),
            cert.issuer(),
            ca.subject()
        )));
    }
    Ok(())
}

/// Finds the certificate with `serial` among those `certs init` and `certs issue` wrote in
/// `dir` (server.crt and clients/*.crt), so that a mistyped `--serial` is caught before it
/// is published.
///
/// # Errors
/// No issued certificate has that serial.
pub fn check_serial_issued(dir: &Path, serial: &[u8]) -> Result<PathBuf, PkiError> {
    let mut files = vec![dir.join("server.crt")];
    if let Ok(entries) = fs::read_dir(dir.join("clients")) {
        let mut clients: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "crt"))
            .collect();
        clients.sort();
        files.extend(clients);
    }
    let wanted = strip_leading_zeros(serial);
    for f in &files {
        if let Ok(s) = serial_of(f)
            && strip_leading_zeros(&s) == wanted
        {
            return Ok(f.clone());
        }
    }
    Err(PkiError::Invalid(format!(
        "no certificate in {} (server.crt, clients/*.crt) has serial {}; check the number, or give --force to revoke a certificate whose file is gone",
        dir.display(),
        hex::encode(serial)
    )))
}

fn pem_cert(path: &Path) -> Result<Vec<u8>, PkiError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_file(path)
        .map(|d| d.as_ref().to_vec())
        .map_err(|e| match e {
            rustls::pki_types::pem::Error::Io(source) => PkiError::Io {
                path: path.to_path_buf(),
                source,
            },
            other => PkiError::Invalid(format!(
                "{}: not a PEM certificate ({other:?})",
                path.display()
            )),
        })
}

/// Parses `--serial` hex (colons allowed).
///
/// # Errors
/// Not hex.
pub fn parse_serial(hex_text: &str) -> Result<Vec<u8>, PkiError> {
    let clean: String = hex_text.chars().filter(|c| *c != ':').collect();
    let clean = if clean.len() % 2 == 1 {
        format!("0{clean}")
    } else {
        clean
    };
    hex::decode(&clean)
        .ok()
        .filter(|b| !b.is_empty())
        .ok_or_else(|| {
            PkiError::Invalid(format!("--serial {hex_text:?} is not a hex serial number"))
        })
}

/// `certs revoke`: adds `serial` to `DIR/ca.crl` (keeping earlier entries) and re-signs it with
/// the next CRL number. Returns how many serials the CRL now lists.
///
/// # Errors
/// A missing CA or CRL, or a write failure.
pub fn revoke(dir: &Path, serial: &[u8]) -> Result<usize, PkiError> {
    use rustls::pki_types::CertificateRevocationListDer;
    use rustls::pki_types::pem::PemObject;
    use x509_parser::prelude::FromDer;

    let ca = Ca::load(dir)?;
    let crl_path = dir.join("ca.crl");
    let mut revoked: Vec<(Vec<u8>, OffsetDateTime)> = Vec::new();
    let mut number = 1u64;
    if crl_path.exists() {
        let der = CertificateRevocationListDer::from_pem_file(&crl_path).map_err(|e| {
            PkiError::Invalid(format!("{}: not a PEM CRL ({e:?})", crl_path.display()))
        })?;
        let (_, crl) =
            x509_parser::revocation_list::CertificateRevocationList::from_der(der.as_ref())
                .map_err(|e| PkiError::Invalid(format!("{}: {e}", crl_path.display())))?;
        for entry in crl.iter_revoked_certificates() {
            let at = OffsetDateTime::from_unix_timestamp(entry.revocation_date.timestamp())
                .unwrap_or_else(|_| OffsetDateTime::now_utc());
            revoked.push((entry.raw_serial().to_vec(), at));
        }
        if let Some(n) = crl.crl_number() {
            number = u64::try_from(n).unwrap_or(u64::MAX - 1).saturating_add(1);
        }
    }
    let normalized = strip_leading_zeros(serial);
    if !revoked
        .iter()
        .any(|(s, _)| strip_leading_zeros(s) == normalized)
    {
        revoked.push((normalized.to_vec(), OffsetDateTime::now_utc()));
    }
    let pem = ca.crl(&revoked, number)?;
    write(&crl_path, &pem, false)?;
    Ok(revoked.len())
}

fn strip_leading_zeros(b: &[u8]) -> &[u8] {
    let i = b
        .iter()
        .position(|x| *x != 0)
        .unwrap_or(b.len().saturating_sub(1));
    &b[i..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_issue_revoke_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let clients = [
            parse_client_arg("ops-alice:Platform"),
            parse_client_arg("bob"),
        ];
        let files = init(dir.path(), &clients, &["gw.example".to_owned()]).unwrap();
        assert!(files.iter().any(|f| f.ends_with("clients/ops-alice.crt")));
        assert!(
            init(dir.path(), &clients, &[]).is_err(),
            "init must not overwrite a CA"
        );

        let spec = ClientSpec {
            cn: "carol".into(),
            days: 30,
            ..Default::default()
        };
        let (crt, _) = issue(dir.path(), &spec).unwrap();
        assert!(
            issue(dir.path(), &spec).is_err(),
            "issue must not overwrite a client"
        );

        let serial = serial_of(&crt).unwrap();
        assert_eq!(revoke(dir.path(), &serial).unwrap(), 1);
        assert_eq!(
            revoke(dir.path(), &serial).unwrap(),
            1,
            "revoking twice lists once"
        );
        let other = serial_of(&dir.path().join("clients/bob.crt")).unwrap();
        assert_eq!(revoke(dir.path(), &other).unwrap(), 2);
    }

    #[test]
    fn client_names_become_safe_file_names() {
        assert!(check_client_name("../etc/passwd").is_err());
        assert!(check_client_name("ops-alice").is_ok());
    }
}
