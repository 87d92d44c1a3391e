//! Listeners, the accept loop, per-connection tasks and the graceful drain.
//!
//! A connection takes a handshake permit (`max_handshakes`) before it is accepted, finishes its
//! TLS handshake under `handshake_timeout`, then trades that permit for a connection slot
//! (`max_connections`): clients that never finish a handshake cannot hold the slots of
//! connections that did. It reads its peer certificate once and is served as exactly the
//! protocol ALPN chose (HTTP/2 for `h2`, HTTP/1.x otherwise), so the header timer cannot be
//! dodged by speaking another protocol than the one negotiated. A watchdog per connection
//! enforces the header, idle and send timeouts and closes it when a reload stops trusting its
//! certificate. On shutdown the listener closes, `/readyz` turns 503, every connection is asked
//! to finish its in-flight requests, and the drain waits for them up to `shutdown_timeout`.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use crate::config::{Config, ConfigErrors, Limits};
use crate::gateway::{Connection, ConnectionSlot, GatewayService, Shared, State};
use crate::metrics::ReasonLabel;
use crate::observability::{Activity, ActivityIo};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration or a file it names is invalid.
    #[error(transparent)]
    Config(#[from] ConfigErrors),
    /// A listener could not bind.
    #[error("cannot listen on {addr} ({key})")]
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
        let slots = Slots {
            handshakes: Arc::new(Semaphore::new(limits.max_handshakes)),
            connections: Arc::new(Semaphore::new(limits.max_connections)),
        };

        // The admin listener outlives the drain: load balancers keep getting /readyz's 503,
        // and /metrics keeps answering, until the process exits.
        let (admin_stop_tx, admin_stop_rx) = watch::channel(false);
        if let Some(admin) = admin {
            tokio::spawn(crate::admin::serve(admin, shared.clone(), admin_stop_rx));
        }
        // Forget IPs and callers whose budgets have refilled, so the tables stay small; and say
        // when a CRL is about to go stale, or has.
        let pruner = {
            let shared = shared.clone();
            tokio::spawn(async move {
                let mut crls = CrlWatch::default();
                loop {
                    crls.check(&shared.state.load());
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    shared.auth_guard.load().prune(std::time::Instant::now());
                    shared.state.load().ratelimits.prune();
                }
            })
        };
        // Ready once the first JWT key set is in (bounded by the fetch's own deadline), so
        // the first bearer requests after start are not refused for want of keys.
        let keys_pending = shared
            .state
            .load()
            .auth
            .jwt()
            .is_some_and(|j| !j.first_attempt_done());
        if !keys_pending {
            shared.ready.store(true, Ordering::Relaxed);
        }
        let readiness = {
            let shared = shared.clone();
            let stop = stop_rx.clone();
            tokio::spawn(async move {
                let state = shared.state.load_full();
                if let Some(j) = state.auth.jwt() {
                    let _ = tokio::time::timeout(Duration::from_secs(10), j.first_attempt()).await;
                }
                if !*stop.borrow() {
                    shared.ready.store(true, Ordering::Relaxed);
                }
            })
        };
        tracing::info!(listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "portcullis is serving");

        tokio::select! {
            () = accept_loop(&listener, &shared, &slots, &stop_rx) => {}
            () = shutdown => {}
        }

        // Drain: stop accepting, fail readiness, ask connections to finish, wait for them.
        pruner.abort();
        readiness.abort();
        drop(listener);
        shared.ready.store(false, Ordering::Relaxed);
        let _ = stop_tx.send(true);
        let open = limits.max_connections - slots.connections.available_permits();
        tracing::info!(open_connections = open, timeout = ?limits.shutdown_timeout, "draining");
        let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
        match tokio::time::timeout(limits.shutdown_timeout, slots.connections.acquire_many(all))
            .await
        {
            Ok(_) => tracing::info!("drained; exiting"),
            Err(_) => {
                tracing::warn!("shutdown_timeout reached with connections still open; exiting")
            }
        }
        let _ = admin_stop_tx.send(true);
    }
}

/// The two ceilings: TLS handshakes in progress, and established connections.
#[derive(Clone)]
struct Slots {
    handshakes: Arc<Semaphore>,
    connections: Arc<Semaphore>,
}

async fn accept_loop(
    listener: &TcpListener,
    shared: &Arc<Shared>,
    slots: &Slots,
    stop: &watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(5);
    loop {
        // Take the handshake permit first: at the ceiling, new connections wait in the kernel
        // backlog.
        let Ok(handshake) = slots.handshakes.clone().acquire_owned().await else {
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
        tokio::spawn(serve_connection(
            shared.clone(),
            tcp,
            remote,
            handshake,
            slots.connections.clone(),
            stop.clone(),
        ));
    }
}

/// A connection's task, from accept to close.
///
/// What idle connections hold is most of the gateway's memory, so this task stays small: an
/// `async fn` reserves room for everything any of its awaits keeps alive (and a value again
/// wherever it is moved), so the handshake runs in a box freed when it ends, and the TLS stream
/// and the HTTP connection live in boxes of exactly their own size.
async fn serve_connection(
    shared: Arc<Shared>,
    tcp: TcpStream,
    remote: SocketAddr,
    handshake: OwnedSemaphorePermit,
    connections: Arc<Semaphore>,
    stop: watch::Receiver<bool>,
) {
    let accepted = Box::pin(accept(&shared, tcp, remote, handshake, connections, stop)).await;
    let Some(Accepted {
        tls,
        conn,
        limits,
        h2,
        stop,
    }) = accepted
    else {
        return;
    };
    let service = GatewayService::new(shared.clone(), conn.clone());
    let io = TokioIo::new(ActivityIo::new(tls, conn.activity.clone()));
    let watch = Watchdog {
        shared: &shared,
        conn: &conn,
        limits: &limits,
        h2,
        stop,
    };
    if h2 {
        let connection = http2_settings(&limits).serve_connection(io, service);
        watch.drive(Box::pin(connection)).await;
    } else {
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            // hyper's own header timer also runs while a keep-alive connection waits for its
            // next request, which would make header_timeout cap idle_timeout; the watchdog
            // starts the header clock at the first byte of a head instead.
            .header_read_timeout(None)
            // hyper answers 431 itself past this; smaller heads over the limit get our JSON 431.
            .max_buf_size((limits.max_header_bytes + 4096).max(8192))
            .serve_connection(io, service)
            .with_upgrades();
        watch.drive(Box::pin(connection)).await;
    }
}

/// Every HTTP/2 setting the gateway serves with, each stated rather than left to hyper's and
/// h2's defaults, with why it has its value. Together with `header_timeout` (a new connection's
/// first request), `idle_timeout` and `send_timeout` (the watchdog), they bound what one
/// connection can make the gateway hold or do.
fn http2_settings(limits: &Limits) -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        // Streams in flight per connection: each is a task and an upstream request; more are
        // refused with REFUSED_STREAM. Matches nginx's http2_max_concurrent_streams.
        .max_concurrent_streams(128)
        // A header block (HEADERS plus any CONTINUATION frames, decoded) larger than this is
        // refused as it arrives: a CONTINUATION flood is cut at the limit, not buffered.
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        // HPACK's dynamic table, at the RFC 9113 default: the most a client can make the
        // gateway remember across requests.
        .header_table_size(4096)
        // Rapid reset (CVE-2023-44487): streams a client opens and resets before the gateway
        // has taken them count here; past 20 the connection gets GOAWAY ENHANCE_YOUR_CALM.
        .max_pending_accept_reset_streams(20)
        // Streams the gateway itself has to reset because the client misbehaved (bad headers,
        // flow-control errors): past 1,024 on one connection, GOAWAY.
        .max_local_error_reset_streams(1024)
        // The frame size the gateway accepts, at the protocol minimum: a larger frame is a
        // protocol error, so no single frame is larger than this to buffer.
        .max_frame_size(16 * 1024)
        // Receive windows: how much request body a client may send ahead of the upstream's
        // reading, per stream and per connection. Fixed (no adaptive growth) so the bound holds.
        .initial_stream_window_size(1024 * 1024)
        .initial_connection_window_size(1024 * 1024)
        .adaptive_window(false)
        // Response bytes buffered per stream for a client that reads slowly: past this the
        // upstream is not read further (backpressure), and send_timeout ends a client that
        // reads nothing at all.
        .max_send_buf_size(400 * 1024)
        // No protocol-level keep-alive pings: idle connections are closed by idle_timeout.
        .keep_alive_interval(None);
    b
}

/// A connection past its handshake, holding a connection slot.
struct Accepted {
    tls: Box<tokio_rustls::server::TlsStream<TcpStream>>,
    conn: Arc<Connection>,
    limits: Limits,
    h2: bool,
    stop: watch::Receiver<bool>,
}

/// The TLS handshake under `handshake_timeout`, the peer certificate read once, and the wait
/// for a connection slot (with the handshake permit still held, so waiting connections stay
/// bounded too). `None` when the connection ends here; failures are logged and counted.
async fn accept(
    shared: &Arc<Shared>,
    tcp: TcpStream,
    remote: SocketAddr,
    handshake: OwnedSemaphorePermit,
    connections: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) -> Option<Accepted> {
    let _ = tcp.set_nodelay(true);
    // A dual-stack listener sees IPv4 callers as ::ffff:a.b.c.d; they are IPv4 everywhere.
    let remote = SocketAddr::new(remote.ip().to_canonical(), remote.port());
    let state = shared.state.load_full();
    let limits: Limits = state.config.limits.clone();
    let acceptor = TlsAcceptor::from(state.tls.clone());
    let verified_under = state.generation();
    drop(state);

    let deadline = tokio::time::Instant::now() + limits.handshake_timeout;
    if let Ok(true) = tokio::time::timeout_at(deadline, speaks_plain_http(&tcp)).await {
        let detail = "a plain HTTP request on the TLS port; answered 400";
        handshake_failed(shared, remote, "plain_http", detail);
        answer_plain_http(tcp, deadline).await;
        return None;
    }
    let tls = match tokio::time::timeout_at(deadline, acceptor.accept(tcp).into_fallible()).await {
        Ok(Ok(s)) => Box::new(s),
        Ok(Err((e, tcp))) => {
            let reason = crate::tls::failure_reason(&e);
            handshake_failed(shared, remote, reason, &e.to_string());
            close_gracefully(tcp, deadline).await;
            return None;
        }
        Err(_) => {
            let detail = "handshake not finished within handshake_timeout";
            handshake_failed(shared, remote, "timeout", detail);
            return None;
        }
    };
    let session = tls.get_ref().1;
    let peer = match session.peer_certificates() {
        Some(chain) if !chain.is_empty() => match shared.peers.identify(chain) {
            Ok(p) => Some(p),
            Err(e) => {
                handshake_failed(shared, remote, "bad_certificate", &e.to_string());
                return None;
            }
        },
        _ => None,
    };
    let h2 = session.alpn_protocol() == Some(b"h2");

    let permit = tokio::select! {
        p = connections.acquire_owned() => p.ok()?,
        _ = stop.wait_for(|draining| *draining) => return None,
    };
    drop(handshake);
    if *stop.borrow() {
        return None;
    }
    let slot = ConnectionSlot::new(permit, shared.metrics.clone());
    let conn = Arc::new(Connection::new(
        remote,
        peer,
        verified_under,
        Arc::new(Activity::default()),
        Some(slot),
        stop.clone(),
    ));
    Some(Accepted {
        tls,
        conn,
        limits,
        h2,
        stop,
    })
}

/// A served connection that can be asked to finish gracefully.
trait Graceful: Future<Output = Result<(), hyper::Error>> {
    fn graceful(self: std::pin::Pin<&mut Self>);
}

impl<I, S> Graceful for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::ResBody: http_body::Body + 'static,
    <S::ResBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, E> Graceful for hyper::server::conn::http2::Connection<I, S, E>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::ResBody: http_body::Body + 'static,
    <S::ResBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, S::ResBody>,
{
    fn graceful(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// One connection's timers and its reaction to drains and reloads.
struct Watchdog<'a> {
    shared: &'a Arc<Shared>,
    conn: &'a Arc<Connection>,
    limits: &'a Limits,
    h2: bool,
    stop: watch::Receiver<bool>,
}

impl Watchdog<'_> {
    async fn drive(mut self, mut connection: Pin<Box<impl Graceful>>) {
        let remote = self.conn.remote;
        let limits = self.limits;
        let activity = &self.conn.activity;
        let metrics = &self.shared.metrics;
        let tick = (limits
            .idle_timeout
            .min(limits.header_timeout)
            .min(limits.send_timeout)
            / 4)
        .clamp(Duration::from_millis(50), Duration::from_secs(1));
        let mut draining = *self.stop.borrow();
        if draining {
            activity.set_draining();
        }
        // When a connection asked to finish for a timeout (not for the drain, which has its
        // own deadline) is closed outright if it has not finished: a client may never take
        // the last bytes, or never acknowledge an HTTP/2 GOAWAY's PING.
        let mut closing: Option<Instant> = None;
        if draining {
            connection.as_mut().graceful();
        }
        loop {
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(peer = %remote, error = %e, "connection ended with an error");
                    }
                    return;
                }
                changed = self.stop.changed(), if !draining => {
                    if changed.is_err() || *self.stop.borrow() {
                        draining = true;
                        activity.set_draining();
                        connection.as_mut().graceful();
                    }
                }
                () = self.conn.close.notified() => {
                    metrics.connection_closed("revoked");
                    return;
                }
                () = tokio::time::sleep(tick) => {
                    // A reload revoked the certificate, or no longer trusts its CA.
                    if !self.conn.still_trusted(self.shared) {
                        metrics.connection_closed("revoked");
                        return;
                    }
                    // Slow-loris guard: a request head (HTTP/1) or a first request (either
                    // protocol) not complete in time. HTTP/1 has no request to answer yet, so
                    // the connection closes outright; HTTP/2 gets a GOAWAY.
                    if closing.is_none()
                        && activity.head_pending_for().is_some_and(|d| d >= limits.header_timeout)
                    {
                        tracing::debug!(peer = %remote, "request head not received within header_timeout");
                        metrics.connection_closed("header_timeout");
                        if !self.h2 {
                            return;
                        }
                        closing = Some(Instant::now() + limits.header_timeout);
                        connection.as_mut().graceful();
                    }
                    // A client that stopped reading what it asked for.
                    if activity.send_stalled_for().is_some_and(|d| d >= limits.send_timeout) {
                        tracing::debug!(peer = %remote, "client took no response bytes within send_timeout");
                        metrics.connection_closed("send_timeout");
                        return;
                    }
                    if !draining
                        && closing.is_none()
                        && activity.idle_for().is_some_and(|idle| idle >= limits.idle_timeout)
                    {
                        tracing::debug!(peer = %remote, "closing idle connection");
                        metrics.connection_closed("idle_timeout");
                        closing = Some(Instant::now() + limits.send_timeout);
                        connection.as_mut().graceful();
                    }
                    // A graceful close whose last bytes the client never takes (HTTP/2 can
                    // hold them back in flow control, out of the gateway's sight).
                    if closing.is_some_and(|deadline| Instant::now() >= deadline) {
                        tracing::debug!(peer = %remote, "graceful close did not finish in time");
                        return;
                    }
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

/// How long before a CRL's nextUpdate a warning is logged.
const CRL_WARNING: i64 = 24 * 3600;

/// Logs, once per CRL and nextUpdate, that a CRL will go stale within a day, and that it has
/// (with `crl_expired: reject` its clients are then refused and `/readyz` says so). A fresh
/// CRL, with a later nextUpdate, starts over.
#[derive(Default)]
struct CrlWatch {
    warned: std::collections::HashSet<(String, i64, bool)>,
}

impl CrlWatch {
    fn check(&mut self, state: &crate::gateway::State) {
        let reject = state.config.tls.crl_expired == crate::config::CrlExpired::Reject;
        for (file, next) in &state.expiries.crls {
            let left = crate::tls::seconds_until(*next);
            let expired = left <= 0;
            if left > CRL_WARNING || !self.warned.insert((file.clone(), *next, expired)) {
                continue;
            }
            if expired && reject {
                tracing::error!(crl = %file, "the CRL is past its nextUpdate: the client certificates it covers are refused (tls.crl_expired: reject) until a fresh CRL is written");
            } else if expired {
                tracing::warn!(crl = %file, "the CRL is past its nextUpdate and still used (tls.crl_expired: ignore)");
            } else {
                tracing::warn!(crl = %file, hours_left = left / 3600, "the CRL reaches its nextUpdate within a day; publish a fresh one");
            }
        }
    }
}

/// Closes a connection whose handshake failed without a reset, so that the client reads the
/// alert rustls sent (`certificate required`, `unknown ca`, ...) rather than a broken pipe. A
/// TLS 1.3 client considers its side done and may already have sent a request; closing over
/// that unread data would make the kernel answer with a reset, and the client would lose the
/// alert with it. So: end the writing side, then read and drop what the client still sends
/// until it closes, for at most a second (and never past the handshake deadline).
async fn close_gracefully(mut tcp: TcpStream, deadline: tokio::time::Instant) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let linger = deadline.min(tokio::time::Instant::now() + Duration::from_secs(1));
    let drain = async {
        tcp.shutdown().await?;
        let mut buf = [0u8; 1024];
        while tcp.read(&mut buf).await? > 0 {}
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout_at(linger, drain).await;
}

/// Whether a new connection opens with plain HTTP rather than a TLS record. A TLS
/// connection's first byte is a record type (0x16 for the ClientHello); an HTTP request line
/// starts with an upper-case method name. Peeking leaves the byte for the handshake.
async fn speaks_plain_http(tcp: &TcpStream) -> bool {
    let mut first = [0u8; 1];
    matches!(tcp.peek(&mut first).await, Ok(1) if first[0].is_ascii_uppercase())
}

/// Answers plain HTTP on the TLS port the way nginx does, with a 400 a person can read (and
/// SPEC.md's JSON error body), instead of a TLS alert that clients report as a garbled
/// protocol error. The request head is read first and the connection closed gracefully, so
/// the answer is not lost to a reset for unread data. All of it before `deadline`.
async fn answer_plain_http(mut tcp: TcpStream, deadline: tokio::time::Instant) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut head = Vec::with_capacity(1024);
        let mut buf = [0u8; 1024];
        while head.len() < 16 * 1024 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let id = crate::gateway::request_id(None);
        let body = format!(
            "{{\"error\":\"plain HTTP request sent to the HTTPS port: use https://\",\"request_id\":\"{id}\"}}\n"
        );
        let response = format!(
            "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-request-id: {id}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        tcp.write_all(response.as_bytes()).await?;
        tcp.shutdown().await?;
        // Let the client read the answer before the socket goes: wait for its close.
        while tcp.read(&mut buf).await? > 0 {}
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout_at(deadline, exchange).await;
}

/// Runs the gateway until SIGTERM or SIGINT; SIGHUP reloads the configuration.
///
/// # Errors
/// When the gateway cannot start.
pub async fn run(config: Config) -> Result<(), StartError> {
    let path = config.path.clone();
    crate::explain::enforce_tests(&config)?;
    for w in &config.warnings {
        tracing::warn!(warning = %w, "configuration warning");
    }
    let gateway = Gateway::bind(config).await?;
    for w in &gateway.shared().state.load().warnings {
        tracing::warn!(warning = %w, "configuration warning");
    }
    let shutdown = shutdown_signal();
    tokio::spawn(crate::reload::watch(gateway.shared(), path));
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
