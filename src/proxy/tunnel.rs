//! WebSocket tunnels: after a `101 Switching Protocols`, bytes are copied both ways between the
//! client's connection and the upstream's until either side closes, the tunnel has been silent
//! both ways for `websocket_idle_timeout`, the gateway drains, or the caller's certificate is
//! no longer trusted. The caller keeps its connection slot for the tunnel's whole life (the
//! `keep` value passed in), so tunnels count toward `max_connections` and
//! `portcullis_open_connections`.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;

use crate::metrics::Metrics;

/// What a tunnel is bounded by.
pub struct TunnelGuards<K, F> {
    /// No bytes either way for this long closes the tunnel.
    pub idle: Duration,
    /// True once the gateway drains.
    pub stop: watch::Receiver<bool>,
    /// Checked every tick: false closes the tunnel (the caller's certificate was revoked).
    pub still_allowed: F,
    /// Held until the tunnel ends (the connection's slot).
    pub keep: K,
    /// Where closes are counted.
    pub metrics: Arc<Metrics>,
}

/// Splices the client's upgraded connection to the upstream's.
pub async fn run<K, F>(client: OnUpgrade, upstream: OnUpgrade, mut g: TunnelGuards<K, F>)
where
    F: Fn() -> bool,
{
    let (client, upstream) = match tokio::join!(client, upstream) {
        (Ok(c), Ok(u)) => (c, u),
        (Err(e), _) | (_, Err(e)) => {
            tracing::debug!(error = %e, "websocket upgrade failed");
            return;
        }
    };
    let origin = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let mut client = Touch {
        inner: TokioIo::new(client),
        last: last.clone(),
        origin,
    };
    let mut upstream = Touch {
        inner: TokioIo::new(upstream),
        last: last.clone(),
        origin,
    };
    let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
    tokio::pin!(copy);
    let tick = (g.idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut draining = *g.stop.borrow();
    while !draining {
        tokio::select! {
            r = &mut copy => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "websocket connection ended with an error");
                }
                return;
            }
            changed = g.stop.changed() => {
                draining = changed.is_err() || *g.stop.borrow();
            }
            () = tokio::time::sleep(tick) => {
                let silent = origin.elapsed().saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
                if silent >= g.idle {
                    tracing::debug!("closing idle websocket tunnel");
                    g.metrics.connection_closed("websocket_idle_timeout");
                    return;
                }
                if !(g.still_allowed)() {
                    tracing::info!("closing websocket tunnel: the caller's certificate is no longer trusted");
                    g.metrics.connection_closed("revoked");
                    return;
                }
            }
        }
    }
    tracing::debug!("closing websocket tunnel for the drain");
    drop(g.keep);
}

pin_project_lite::pin_project! {
    /// Records the time of every read that brought bytes, for the idle check.
    struct Touch<T> {
        #[pin]
        inner: T,
        last: Arc<AtomicU64>,
        origin: Instant,
    }
}

impl<T: AsyncRead> AsyncRead for Touch<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let poll = this.inner.poll_read(cx, buf);
        if buf.filled().len() > before {
            this.last
                .store(this.origin.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
        poll
    }
}

impl<T: AsyncWrite> AsyncWrite for Touch<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}
