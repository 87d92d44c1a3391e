//! Keep-alive HTTP/1.1 connections to one upstream: a stack of idle `hyper` senders.
//!
//! A connection is checked out for one exchange and checked back in when its response has
//! been read to the end (see [`Checkout::check_in`]), so a connection is only ever reused
//! once hyper has finished with the previous message. The most recently used connection goes
//! out first: under light load the same few stay warm and the rest age out after
//! `pool_idle_timeout`, which a small background task enforces.
//!
//! This replaces hyper-util's legacy client, which keys its pool by scheme and authority in
//! a map, wraps every checkout in several futures, and spawns a task per request to wait for
//! the connection to become ready again; an upstream here is one address, and the response
//! body's end is the moment a connection can be reused.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::LimitedBody;

/// Idle connections kept per upstream; more are closed as they come back.
const MAX_IDLE: usize = 256;

/// The idle connections of one upstream, and how to make new ones.
pub(crate) struct Pool {
    idle: Mutex<VecDeque<Idle>>,
    host: String,
    port: u16,
    connect_timeout: Duration,
    idle_timeout: Duration,
    reaper_started: std::sync::atomic::AtomicBool,
}

struct Idle {
    sender: SendRequest<LimitedBody>,
    since: Instant,
}

/// A connection out of the pool for one exchange.
pub(crate) struct Checkout {
    pub sender: SendRequest<LimitedBody>,
    /// It had served a request before: a failure to send on it says little about the upstream.
    pub reused: bool,
    pool: Weak<Pool>,
}

/// Why no connection could be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("cannot resolve {0}")]
    Resolve(String, #[source] std::io::Error),
    #[error("{0} resolves to no address")]
    NoAddress(String),
    #[error("connect to {0} timed out after {1:?}")]
    Timeout(std::net::SocketAddr, Duration),
    #[error("connect to {0}")]
    Io(std::net::SocketAddr, #[source] std::io::Error),
    #[error("HTTP/1.1 handshake")]
    Handshake(#[source] hyper::Error),
}

impl Pool {
    /// A pool for `host:port` (a name, an IPv4 address, or a bracketed IPv6 address).
    pub(crate) fn new(
        host: &str,
        port: u16,
        connect_timeout: Duration,
        idle_timeout: Duration,
    ) -> Pool {
        Pool {
            idle: Mutex::new(VecDeque::new()),
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port,
            connect_timeout,
            idle_timeout,
            reaper_started: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The most recently used idle connection that is still open, if any.
    pub(crate) fn checkout(self: &Arc<Self>) -> Option<Checkout> {
        let now = Instant::now();
        let mut stale = Vec::new();
        let found = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                match idle.pop_back() {
                    None => break None,
                    // The newest is too old, so all are: close them.
                    Some(i) if now.duration_since(i.since) >= self.idle_timeout => {
                        stale.push(i);
                        stale.extend(idle.drain(..));
                        break None;
                    }
                    Some(i) if i.sender.is_closed() => stale.push(i),
                    Some(i) => break Some(i.sender),
                }
            }
        };
        drop(stale);
        found.map(|sender| Checkout {
            sender,
            reused: true,
            pool: Arc::downgrade(self),
        })
    }

    /// A new connection. Names are resolved on each connect, so a changed DNS answer is
    /// followed; addresses are tried in order, each under `connect_timeout`.
    pub(crate) async fn connect(self: &Arc<Self>) -> Result<Checkout, ConnectError> {
        let addrs = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|e| ConnectError::Resolve(self.host.clone(), e))?;
        let mut last = None;
        for addr in addrs {
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => return self.handshake(stream).await,
                Ok(Err(e)) => last = Some(ConnectError::Io(addr, e)),
                Err(_) => last = Some(ConnectError::Timeout(addr, self.connect_timeout)),
            }
        }
        Err(last.unwrap_or_else(|| ConnectError::NoAddress(self.host.clone())))
    }

    async fn handshake(self: &Arc<Self>, stream: TcpStream) -> Result<Checkout, ConnectError> {
        // Request heads are small and latency-bound: do not wait to coalesce them.
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(ConnectError::Handshake)?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection closed with an error");
            }
        });
        Ok(Checkout {
            sender,
            reused: false,
            pool: Arc::downgrade(self),
        })
    }

    fn put(self: &Arc<Self>, sender: SendRequest<LimitedBody>) {
        if sender.is_closed() || self.idle_timeout.is_zero() {
            return;
        }
        let evicted = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            let evicted = if idle.len() >= MAX_IDLE {
                idle.pop_front()
            } else {
                None
            };
            idle.push_back(Idle {
                sender,
                since: Instant::now(),
            });
            evicted
        };
        drop(evicted);
        if !self
            .reaper_started
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tokio::spawn(reap(Arc::downgrade(self), self.idle_timeout));
        }
    }

    /// Closes the connections idle for `idle_timeout` or longer.
    fn reap(&self, now: Instant) {
        let mut stale = Vec::new();
        {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            while idle
                .front()
                .is_some_and(|i| now.duration_since(i.since) >= self.idle_timeout)
            {
                stale.extend(idle.pop_front());
            }
        }
        drop(stale);
    }

    #[cfg(test)]
    fn idle_len(&self) -> usize {
        self.idle.lock().map(|i| i.len()).unwrap_or(0)
    }
}

/// Runs while the pool lives (until a reload replaces its upstream and the last response
/// that used it has ended), closing connections past their idle timeout.
async fn reap(pool: Weak<Pool>, idle_timeout: Duration) {
    let every = (idle_timeout / 4).max(Duration::from_millis(100));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        pool.reap(Instant::now());
    }
}

impl Checkout {
    /// Gives the connection back for another request. Call it only once the response has
    /// been read to its end: hyper accepts the next request once it has finished this one,
    /// and [`Pool::checkout`] callers wait for that with `ready()`.
    pub(crate) fn check_in(self) {
        let Some(pool) = self.pool.upgrade() else {
            return;
        };
        if self.sender.is_ready() {
            pool.put(self.sender);
            return;
        }
        // hyper has not finished with the exchange yet: typically the upstream answered
        // before the request body was all sent (an early 413), and the rest is still on its
        // way. Pool it once it is done, so no request ever waits behind another's upload.
        let mut sender = self.sender;
        let weak = self.pool;
        let wait = pool.idle_timeout;
        drop(pool);
        tokio::spawn(async move {
            if let Ok(Ok(())) = tokio::time::timeout(wait, sender.ready()).await
                && let Some(pool) = weak.upgrade()
            {
                pool.put(sender);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn listener() -> (tokio::net::TcpListener, u16) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        (l, port)
    }

    #[tokio::test]
    async fn idle_connections_are_reused_newest_first_and_reaped() {
        let (l, port) = listener().await;
        let accept = tokio::spawn(async move {
            let mut held = Vec::new();
            for _ in 0..2 {
                held.push(l.accept().await.unwrap().0);
            }
            held
        });
        let pool = Arc::new(Pool::new(
            "127.0.0.1",
            port,
            Duration::from_secs(1),
            Duration::from_millis(300),
        ));
        assert!(pool.checkout().is_none());
        let mut a = pool.connect().await.unwrap();
        let mut b = pool.connect().await.unwrap();
        assert!(!a.reused);
        // As after an exchange: hyper is ready for the next request.
        a.sender.ready().await.unwrap();
        b.sender.ready().await.unwrap();
        a.check_in();
        b.check_in();
        assert_eq!(pool.idle_len(), 2);
        let again = pool.checkout().unwrap();
        assert!(again.reused);
        assert_eq!(pool.idle_len(), 1);
        again.check_in();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            pool.idle_len(),
            0,
            "the reaper closes connections past the idle timeout"
        );
        assert!(pool.checkout().is_none());
        drop(accept.await.unwrap());
    }

    #[tokio::test]
    async fn a_refused_connect_is_a_connect_error() {
        let (l, port) = listener().await;
        drop(l);
        let pool = Arc::new(Pool::new(
            "127.0.0.1",
            port,
            Duration::from_secs(1),
            Duration::from_secs(4),
        ));
        assert!(matches!(pool.connect().await, Err(ConnectError::Io(..))));
    }
}
