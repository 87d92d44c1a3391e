//! Whole HTTP/1.1 requests, as bytes, through a real gateway in this process (TLS with a
//! client certificate, the policy, header hygiene, a real upstream on loopback): whatever a
//! client sends, the gateway answers with a well-formed status line or closes, never panics,
//! never hangs past its timeouts, and forwards nothing that carries a client's identity header.
#![no_main]

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Rig {
    runtime: tokio::runtime::Runtime,
    gateway: SocketAddr,
    connector: tokio_rustls::TlsConnector,
    /// Request heads the upstream received, for the header checks.
    seen: Arc<std::sync::Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

fn rig() -> &'static Rig {
    static RIG: OnceLock<Rig> = OnceLock::new();
    RIG.get_or_init(|| {
        portcullis::tls::install_provider();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = portcullis::pki::Ca::generate("fuzz CA").expect("ca");
        let server = ca.server(&[]).expect("server");
        let client = ca
            .client(&portcullis::pki::ClientSpec {
                cn: "reader-fuzz".into(),
                days: 30,
                ..Default::default()
            })
            .expect("client");
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).expect("write");
        write("ca.crt", ca.cert_pem());
        write("server.crt", &server.cert_pem);
        write("server.key", &server.key_pem);
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let gateway = runtime.block_on(async {
            let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let up_addr = upstream.local_addr().expect("addr");
            let seen = seen.clone();
            tokio::spawn(async move {
                while let Ok((mut s, _)) = upstream.accept().await {
                    let seen = seen.clone();
                    tokio::spawn(async move {
                        // The whole head (the gateway's heads stay under 64 KiB).
                        let mut head = Vec::new();
                        let mut buf = vec![0u8; 65536];
                        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
                            match s.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => head.extend_from_slice(&buf[..n]),
                            }
                        }
                        seen.lock().unwrap().push(String::from_utf8_lossy(&head).into_owned());
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                            .await;
                    });
                }
            });
            let yaml = format!(
                "listen: \"127.0.0.1:0\"\ntls: {{ cert: server.crt, key: server.key, client_ca: ca.crt }}\n\
                 upstreams:\n  app: {{ url: \"http://{up_addr}\", timeout: 1s }}\n\
                 principals:\n  - {{ name: readers, cert: {{ cn: \"reader-*\" }}, roles: [reader] }}\n\
                 routes:\n  - {{ name: admin, match: {{ prefix: /admin/ }}, upstream: app, allow: {{ roles: [admin] }} }}\n  - {{ name: all, match: {{ prefix: / }}, upstream: app, allow: {{ roles: [reader] }} }}\n\
                 limits: {{ header_timeout: 1s, idle_timeout: 1s, body_timeout: 1s }}\n\
                 logging: {{ access_log: false }}\n"
            );
            let path = dir.path().join("gateway.yaml");
            std::fs::write(&path, yaml).expect("config");
            let config = portcullis::config::load(&path).expect("config loads");
            let gw = portcullis::Gateway::bind(config).await.expect("bind");
            let addr = gw.local_addr();
            tokio::spawn(gw.run(std::future::pending()));
            addr
        });
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).expect("ca pem"))
            .expect("root");
        let chain = vec![CertificateDer::from(client.der.clone())];
        let key = PrivateKeyDer::from_pem_slice(client.key_pem.as_bytes()).expect("key");
        let mut tls = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .expect("client config");
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Rig {
            runtime,
            gateway,
            connector: tokio_rustls::TlsConnector::from(Arc::new(tls)),
            seen,
            _dir: dir,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let rig = rig();
    rig.seen.lock().unwrap().clear();
    let answer = rig.runtime.block_on(async {
        let tcp = tokio::net::TcpStream::connect(rig.gateway).await.ok()?;
        let name = rustls::pki_types::ServerName::try_from("localhost").ok()?;
        let mut tls = rig.connector.connect(name, tcp).await.ok()?;
        let _ = tls.write_all(data).await;
        // End of input: the gateway answers what it has and closes, without waiting for
        // header_timeout on an unfinished head.
        let _ = tls.shutdown().await;
        let mut out = Vec::new();
        // Every phase has a 1 s timeout: the gateway answers or closes well before 5 s.
        match tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut out)).await {
            Ok(_) => Some(out),
            Err(_) => panic!("the gateway neither answered nor closed within 5 s"),
        }
    });
    if let Some(out) = answer
        && !out.is_empty()
    {
        // HTTP/1.0 requests are answered in HTTP/1.0.
        assert!(
            out.starts_with(b"HTTP/1.1 ") || out.starts_with(b"HTTP/1.0 "),
            "not a status line: {:?}",
            String::from_utf8_lossy(&out[..out.len().min(80)])
        );
    }
    for head in rig.seen.lock().unwrap().iter() {
        let lower = head.to_ascii_lowercase();
        for forged in ["x-client-id: ", "x-client-roles: ", "x-client-principals: "] {
            let count = lower.matches(&format!("\r\n{forged}")).count();
            assert!(count <= 1, "{forged} appears {count} times upstream:\n{head}");
        }
        assert!(
            lower.contains("\r\nx-client-id: cn=reader-fuzz\r\n"),
            "the upstream got a request without the verified identity:\n{head}"
        );
    }
});
