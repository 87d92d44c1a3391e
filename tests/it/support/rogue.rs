//! RogueUpstream: a raw TCP upstream on 127.0.0.1:0 that misbehaves on purpose, scripted per
//! connection, for the fault tests (closing kept-alive connections, stalling, bad framing).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

pub struct RogueUpstream {
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl RogueUpstream {
    /// Runs `script` for every accepted connection, with the connection's number (0-based).
    pub async fn start<F, Fut>(script: F) -> RogueUpstream
    where
        F: Fn(TcpStream, usize) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        let script = Arc::new(script);
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let n = count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(script(tcp, n));
            }
        });
        RogueUpstream {
            addr,
            connections,
            task,
        }
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for RogueUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one request head (up to the blank line); `None` when the peer closed first. Bodies
/// are not read: the fault tests send requests without one.
pub async fn read_request(s: &mut TcpStream) -> Option<String> {
    let mut out = Vec::new();
    let mut byte = [0u8; 1];
    while !out.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte).await {
            Ok(1) => out.push(byte[0]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}
