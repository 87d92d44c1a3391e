//! Listeners, the accept loop, per-connection tasks and the graceful drain.
//!
//! A connection takes a permit (the `max_connections` ceiling) before it is accepted, finishes
//! its TLS handshake under `handshake_timeout`, reads its peer certificate once, and is then
//! served by hyper-util's auto builder (HTTP/1.1 or HTTP/2 by ALPN). On shutdown the listener
//! closes, `/readyz` turns 503, every connection is asked to finish its in-flight requests, and
//! the drain waits for them up to `shutdown_timeout`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use crate::config::{Config, ConfigErrors, Limits};
use crate::gateway::{Connection, GatewayService, Shared, State};
use crate::identity::PeerCert;
use crate::metrics::ReasonLabel;
use crate::observability::{Activity, ActivityIo};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration or a file it names is invalid.
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    /// A listener could not bind.
    #[error("cannot listen on {addr} ({key}): {source}")]
    Bind {
        /// `listen` or `admin.listen`.
        key: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A gateway whose listeners are bound, ready to [`run`](Gateway::run).
pub struct Gateway {
    shared: Arc<Shared>,
    listener: TcpListener,
    admin: Option<TcpListener>,
}

impl Gateway {
    /// Builds the first snapshot and binds the listeners (port 0 picks a free port).
    ///
    /// # Errors
    /// Invalid TLS files, or an address that cannot be bound.
    pub async fn bind(config: Config) -> Result<Gateway, StartError> {
        let state = State::build(config)?;
        let listen = state.config.listen;
        let admin_addr = state.config.admin.as_ref().map(|a| a.listen);
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| StartError::Bind {
                key: "listen",
                addr: listen,
                source,
            })?;
        let admin = match admin_addr {
            Some(addr) => {
                Some(
                    TcpListener::bind(addr)
                        .await
                        .map_err(|source| StartError::Bind {
                            key: "admin.listen",
                            addr,
                            source,
                        })?,
                )
            }
            None => None,
        };
        let shared = Shared::new(state);
        if let Some(j) = shared.state.load().auth.jwt() {
            j.start_refresh();
        }
        Ok(Gateway {
            shared,
            listener,
            admin,
        })
    }

    /// The bound mTLS address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| self.shared.state.load().config.listen)
    }

    /// The bound admin address, when enabled.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The shared state (for reload and tests).
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Serves until `shutdown` resolves, then drains.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Gateway {
            shared,
            listener,
            admin,
        } = self;
        let limits = shared.state.load().config.limits.clone();
        let (stop_tx, stop_rx) = watch::channel(false);
        let permits = Arc::new(Semaphore::new(limits.max_connections));

        if let Some(admin) = admin {
            tokio::spawn(crate::admin::serve(admin, shared.clone(), stop_rx.clone()));
        }
        // Forget IPs and callers whose budgets have refilled, so the tables stay small.
        let pruner = {
            let shared = shared.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    shared.auth_guard.load().prune(std::time::Instant::now());
                    shared.state.load().ratelimits.prune();
                }
            })
        };
        shared.ready.store(true, Ordering::Relaxed);
        tracing::info!(listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "portcullis is serving");

        tokio::select! {
            () = accept_loop(&listener, &shared, &permits, &stop_rx) => {}
            () = shutdown => {}
        }

        // Drain: stop accepting, fail readiness, ask connections to finish, wait for them.
        pruner.abort();
        drop(listener);
        shared.ready.store(false, Ordering::Relaxed);
        let _ = stop_tx.send(true);
        let open = limits.max_connections - permits.available_permits();
        tracing::info!(open_connections = open, timeout = ?limits.shutdown_timeout, "draining");
        let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
        match tokio::time::timeout(limits.shutdown_timeout, permits.acquire_many(all)).await {
            Ok(_) => tracing::info!("drained; exiting"),
            Err(_) => {
                tracing::warn!("shutdown_timeout reached with connections still open; exiting")
            }
        }
    }
}

async fn accept_loop(
    listener: &TcpListener,
    shared: &Arc<Shared>,
    permits: &Arc<Semaphore>,
    stop: &watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(5);
    loop {
        // Take the permit first: at the ceiling, new connections wait in the kernel backlog.
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (tcp, remote) = match listener.accept().await {
            Ok(a) => {
                backoff = Duration::from_millis(5);
                a
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let shared = shared.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            shared.metrics.open_connections.inc();
            serve_connection(&shared, tcp, remote, stop).await;
            shared.metrics.open_connections.dec();
            drop(permit);
        });
    }
}

async fn serve_connection(
    shared: &Arc<Shared>,
    tcp: TcpStream,
    remote: SocketAddr,
    mut stop: watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    let state = shared.state.load_full();
    let limits: Limits = state.config.limits.clone();
    let acceptor = TlsAcceptor::from(state.tls.clone());
    drop(state);

    let tls = match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return handshake_failed(
                shared,
                remote,
                crate::tls::failure_reason(&e),
                &e.to_string(),
            );
        }
        Err(_) => {
            return handshake_failed(
                shared,
                remote,
                "timeout",
                "handshake not finished within handshake_timeout",
            );
        }
    };
    let cert = match tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
        Some(der) => match PeerCert::from_der(der) {
            Ok(c) => Some(c),
            Err(e) => return handshake_failed(shared, remote, "bad_certificate", &e.to_string()),
        },
        None => None,
    };
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let activity = Arc::new(Activity::default());
    let conn = Arc::new(Connection::new(remote, cert, activity.clone()));
    let service = GatewayService::new(shared.clone(), conn);

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // hyper's own header timer also runs while a keep-alive connection waits for its next
        // request, which would make header_timeout cap idle_timeout; the watchdog below
        // starts the header clock at the first byte of a head instead.
        .header_read_timeout(None)
        // hyper answers 431 itself past this; smaller heads over the limit get our JSON 431.
        .max_buf_size((limits.max_header_bytes + 4096).max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(128);
    let io = TokioIo::new(ActivityIo::new(tls, activity.clone()));
    let connection = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(connection);

    let check_every = (limits.idle_timeout.min(limits.header_timeout) / 4)
        .clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut draining = *stop.borrow();
    if draining {
        connection.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(peer = %remote, error = %e, "connection ended with an error");
                }
                return;
            }
            changed = stop.changed(), if !draining => {
                if changed.is_err() || *stop.borrow() {
                    draining = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
            () = tokio::time::sleep(check_every) => {
                // Slow-loris guard (HTTP/1): a head that is not complete in time closes the
                // connection outright; there is no request to answer yet.
                if !h2 && activity.head_pending_for().is_some_and(|d| d >= limits.header_timeout) {
                    tracing::debug!(peer = %remote, "request head not received within header_timeout");
                    return;
                }
                if !draining && activity.idle_for().is_some_and(|idle| idle >= limits.idle_timeout) {
                    tracing::debug!(peer = %remote, "closing idle connection");
                    draining = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

fn handshake_failed(shared: &Shared, remote: SocketAddr, reason: &'static str, detail: &str) {
    shared
        .metrics
        .handshake_failures
        .get_or_create(&ReasonLabel {
            reason: reason.to_owned(),
        })
        .inc();
    tracing::info!(peer = %remote, reason, error = %detail, "tls handshake failed");
}

/// Runs the gateway until SIGTERM or SIGINT; SIGHUP reloads the configuration.
///
/// # Errors
/// When the gateway cannot start.
pub async fn run(config: Config) -> Result<(), StartError> {
    let path = config.path.clone();
    for w in &config.warnings {
        tracing::warn!(warning = %w, "configuration warning");
    }
    let gateway = Gateway::bind(config).await?;
    let shutdown = shutdown_signal();
    tokio::spawn(crate::reload::on_sighup(gateway.shared(), path));
    gateway.run(shutdown).await;
    Ok(())
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is called, not when
/// the future is first polled, so a signal sent right after startup is never missed.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send {
    #[cfg(unix)]
    let (term, int) = {
        use tokio::signal::unix::{SignalKind, signal};
        (
            signal(SignalKind::terminate()).ok(),
            signal(SignalKind::interrupt()).ok(),
        )
    };
    async move {
        #[cfg(unix)]
        if let (Some(mut term), Some(mut int)) = (term, int) {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}
