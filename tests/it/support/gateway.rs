//! TestGateway: the real gateway, in process, on 127.0.0.1:0, with a generated PKI.

use std::net::SocketAddr;

use portcullis::Gateway;
use tokio::sync::oneshot;

use super::client::Client;
use super::pki::{ClientCert, TestPki};

pub struct TestGateway {
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub ca_pem: String,
    pub shared: std::sync::Arc<portcullis::gateway::Shared>,
    stop: Option<oneshot::Sender<()>>,
    pub task: Option<tokio::task::JoinHandle<()>>,
}

/// A configuration with the test PKI and one upstream named `app`; `rest` adds principals,
/// routes and anything else (it must not repeat `listen`, `tls`, `admin` or `upstreams`).
pub fn yaml(pki: &TestPki, upstream: SocketAddr, rest: &str) -> String {
    yaml_with(pki, upstream, "client_auth: required", rest)
}

pub fn yaml_with(pki: &TestPki, upstream: SocketAddr, tls_extra: &str, rest: &str) -> String {
    format!(
        "listen: \"127.0.0.1:0\"\n\
         tls:\n  cert: server.crt\n  key: server.key\n  client_ca: ca.crt\n  crl: [ca.crl]\n  {tls_extra}\n\
         admin:\n  listen: \"127.0.0.1:0\"\n\
         upstreams:\n  app:\n    url: http://{upstream}\n    connect_timeout: 1s\n    timeout: 2s\n\
         logging:\n  access_log: true\n\
         {rest}\n",
    )
    .replace("{PKI}", &pki.path().display().to_string())
}

impl TestGateway {
    /// Writes `yaml` beside the PKI files, loads it as `portcullis run` would, binds and serves.
    pub async fn start(pki: &TestPki, yaml: &str) -> TestGateway {
        let config_path = pki.file("gateway.yaml");
        std::fs::write(&config_path, yaml).unwrap();
        let config = portcullis::config::load(&config_path)
            .unwrap_or_else(|e| panic!("test config invalid:\n{e}"));
        let gw = Gateway::bind(config)
            .await
            .unwrap_or_else(|e| panic!("gateway failed to start: {e}"));
        let addr = gw.local_addr();
        let admin = gw.admin_addr();
        let shared = gw.shared();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(gw.run(async move {
            let _ = rx.await;
        }));
        TestGateway {
            addr,
            admin,
            ca_pem: pki.ca_pem.clone(),
            shared,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub fn client(&self, cert: Option<&ClientCert>) -> Client {
        Client::new(self.addr, &self.ca_pem, cert)
    }

    /// Starts the drain (like SIGTERM) and returns the task that ends when it finishes.
    pub fn begin_shutdown(&mut self) -> tokio::task::JoinHandle<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task.take().expect("already shut down")
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}
