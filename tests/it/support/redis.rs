//! A real redis-server on a free loopback port, started per test and stopped on drop.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// With TLS only: the folder holding server.crt, server.key and ca.crt (a TestPki's), and
    /// whether clients must show a certificate signed by that CA.
    tls: Option<(std::path::PathBuf, bool)>,
}

impl RedisServer {
    /// Starts redis-server; panics with a clear message when it is not installed (the README's
    /// test command installs it), so no test is skipped silently.
    pub fn start() -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut r = RedisServer {
            port,
            child: None,
            dir: tempfile::tempdir().unwrap(),
            tls: None,
        };
        r.spawn();
        r
    }

    /// Starts redis-server speaking only TLS, with the certificates in `pki_dir`; with
    /// `client_certs`, it refuses clients without a certificate from that CA.
    pub fn start_tls(pki_dir: &std::path::Path, client_certs: bool) -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut r = RedisServer {
            port,
            child: None,
            dir: tempfile::tempdir().unwrap(),
            tls: Some((pki_dir.to_path_buf(), client_certs)),
        };
        r.spawn();
        r
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}/0", self.port)
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new("redis-server");
        match &self.tls {
            None => cmd.args(["--port", &self.port.to_string()]),
            Some((pki, client_certs)) => cmd
                .args(["--port", "0", "--tls-port", &self.port.to_string()])
                .arg("--tls-cert-file")
                .arg(pki.join("server.crt"))
                .arg("--tls-key-file")
                .arg(pki.join("server.key"))
                .arg("--tls-ca-cert-file")
                .arg(pki.join("ca.crt"))
                .args([
                    "--tls-auth-clients",
                    if *client_certs { "yes" } else { "no" },
                ]),
        };
        let child = cmd
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server ({e}); scripts/test.sh installs it (apt-get install redis-server)"));
        self.child = Some(child);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if self.ping() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not answer PING on port {}", self.port);
    }

    fn ping(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        if self.tls.is_some() {
            // Listening is enough: the TLS port answers nothing in plain text.
            return true;
        }
        let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
        if s.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut buf = [0u8; 7];
        s.read(&mut buf)
            .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
    }

    /// How many times `command` (lower case, e.g. "evalsha") has run, from INFO commandstats.
    pub fn calls(&self, command: &str) -> u64 {
        use std::io::{Read, Write};
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.write_all(b"INFO commandstats\r\n").unwrap();
        let mut text = String::new();
        let mut buf = [0u8; 4096];
        // A bulk string: read until the section's last line has arrived.
        while !text.ends_with("\r\n\r\n") {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "redis closed the connection: {text}");
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        let prefix = format!("cmdstat_{command}:calls=");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |n| n.parse().unwrap())
    }

    /// Kills the server (an outage).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Every key in the server (plain-text servers only).
    pub fn keys(&self) -> Vec<String> {
        let client = redis::Client::open(self.url()).unwrap();
        let mut conn = client.get_connection().unwrap();
        redis::cmd("KEYS").arg("*").query(&mut conn).unwrap()
    }

    /// Starts it again on the same port (recovery).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
