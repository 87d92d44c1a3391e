//! A PKI generated per test run with rcgen (through portcullis' own `pki` module): a CA, a
//! server leaf, named clients, and the bad cases. Keys live in a per-test temp folder.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use portcullis::pki::{Ca, ClientSpec};

/// A client's PEM files.
#[derive(Clone)]
pub struct ClientCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
    pub serial: Vec<u8>,
}

pub struct TestPki {
    pub dir: tempfile::TempDir,
    pub ca: Ca,
    pub ca_pem: String,
    clients: HashMap<String, ClientCert>,
    revoked: Vec<Vec<u8>>,
}

impl TestPki {
    /// CA, server certificate and an empty CRL, written to a temp folder.
    pub fn new() -> TestPki {
        portcullis::tls::install_provider();
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::generate("test CA").expect("ca");
        let server = ca.server(&[]).expect("server cert");
        std::fs::write(dir.path().join("ca.crt"), ca.cert_pem()).unwrap();
        std::fs::write(dir.path().join("server.crt"), &server.cert_pem).unwrap();
        std::fs::write(dir.path().join("server.key"), &server.key_pem).unwrap();
        let ca_pem = ca.cert_pem().to_owned();
        let pki = TestPki {
            dir,
            ca,
            ca_pem,
            clients: HashMap::new(),
            revoked: Vec::new(),
        };
        pki.write_crl();
        pki
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Issues (once) a client with the given spec under `name`.
    pub fn add_client(&mut self, name: &str, spec: ClientSpec) -> ClientCert {
        let issued = self.ca.client(&spec).expect("client cert");
        let c = ClientCert {
            cert_pem: issued.cert_pem,
            key_pem: issued.key_pem,
            der: issued.der,
            serial: issued.serial,
        };
        self.clients.insert(name.to_owned(), c.clone());
        c
    }

    /// A plain client: CN=name, O=Acme.
    pub fn client(&mut self, name: &str) -> ClientCert {
        if let Some(c) = self.clients.get(name) {
            return c.clone();
        }
        self.add_client(
            name,
            ClientSpec {
                cn: name.into(),
                o: Some("Acme".into()),
                days: 30,
                ..Default::default()
            },
        )
    }

    /// A client signed by a CA the gateway does not trust.
    pub fn client_from_other_ca(&self, name: &str) -> ClientCert {
        let other = Ca::generate("untrusted CA").unwrap();
        let i = other
            .client(&ClientSpec {
                cn: name.into(),
                o: Some("Acme".into()),
                days: 30,
                ..Default::default()
            })
            .unwrap();
        ClientCert {
            cert_pem: i.cert_pem,
            key_pem: i.key_pem,
            der: i.der,
            serial: i.serial,
        }
    }

    /// An expired client.
    pub fn expired_client(&mut self, name: &str) -> ClientCert {
        self.add_client(
            name,
            ClientSpec {
                cn: name.into(),
                days: 0,
                ..Default::default()
            },
        )
    }

    /// Adds a client's serial to the CRL file.
    pub fn revoke(&mut self, c: &ClientCert) {
        self.revoked.push(c.serial.clone());
        self.write_crl();
    }

    fn write_crl(&self) {
        let now = time::OffsetDateTime::now_utc();
        let list: Vec<_> = self.revoked.iter().map(|s| (s.clone(), now)).collect();
        let pem = self.ca.crl(&list, 1 + list.len() as u64).unwrap();
        std::fs::write(self.dir.path().join("ca.crl"), pem).unwrap();
    }
}

impl TestPki {
    /// A TLS server configuration with this PKI's server certificate, for test servers that
    /// the gateway calls over https (a JWKS URL, an introspection endpoint).
    pub fn server_tls(&self) -> std::sync::Arc<rustls::ServerConfig> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(self.file("server.crt"))
                .unwrap()
                .map(Result::unwrap)
                .collect();
        let key = PrivateKeyDer::from_pem_file(self.file("server.key")).unwrap();
        std::sync::Arc::new(
            rustls::ServerConfig::builder_with_provider(portcullis::tls::provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .unwrap(),
        )
    }
}
