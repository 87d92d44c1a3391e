//! Logging and the access log.
//!
//! `init` installs the tracing subscriber (text on a terminal, JSON otherwise). [`RequestLog`]
//! gathers what one request did and is finished exactly once, when its response body ends or
//! is dropped: it writes the access log line and the request metrics. Secrets never reach it:
//! it holds no header values, and the path is logged without its query string.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use http::Method;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;
use crate::metrics::{Metrics, RouteStatus};

mod sink;

/// Every log line bound for stdout, access lines and the rest alike, in order.
static STDOUT: sink::Sink = sink::Sink::new();

/// JSON logs are on: access lines are rendered by [`RequestLog`] itself and appended to
/// [`STDOUT`] directly (tests and the text format go through `tracing`).
static ACCESS_JSON: AtomicBool = AtomicBool::new(false);

/// Keeps the log writer running; dropping it writes out every pending line and stops it.
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard {
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        if let Some(writer) = self.writer.take() {
            STDOUT.close();
            let _ = writer.join();
        }
    }
}

/// `tracing`'s writer: each event arrives as one `write_all` of whole lines.
struct StdoutLines;

impl std::io::Write for StdoutLines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        STDOUT.append(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the global subscriber. `RUST_LOG` overrides the default `info` level.
///
/// Lines are formatted on the thread that logs them and written to stdout by a dedicated
/// thread in batches (see `observability::sink`): under load many lines go out in one `write`,
/// instead of a system call and a thread wake-up per request. Nothing is dropped: when too
/// much is pending, loggers wait, and the returned guard writes out whatever is pending when
/// it is dropped, at the end of `run` (after the drain).
pub fn init(format: LogFormat) -> LogGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stdout().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| StdoutLines);
    let result = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init()
    } else {
        builder
            .with_ansi(std::io::stdout().is_terminal())
            .try_init()
    };
    // A subscriber is already installed when the gateway runs inside a test or the demo: its
    // writer is not ours, so start none.
    if result.is_err() {
        return LogGuard { writer: None };
    }
    ACCESS_JSON.store(json, Ordering::Relaxed);
    let writer = std::thread::Builder::new()
        .name("portcullis-log".into())
        .spawn(|| STDOUT.run(&mut std::io::stdout()));
    match writer {
        Ok(writer) => LogGuard {
            writer: Some(writer),
        },
        Err(e) => {
            // No writer thread: every line goes straight to stdout instead.
            STDOUT.close();
            eprintln!("warning: cannot start the log writer thread ({e}); writing logs directly");
            LogGuard { writer: None }
        }
    }
}

/// Per-connection activity, for the idle, header and send timeouts: requests in flight, the
/// last time one started or ended, since when a request head has been arriving, and since when
/// the client has taken none of what the gateway has to send.
#[derive(Debug)]
pub struct Activity {
    origin: Instant,
    in_flight: AtomicUsize,
    last_ms: AtomicU64,
    /// When the first byte of a not-yet-complete request head arrived (`NONE` when no head is
    /// pending). A new connection starts with one pending: its first request must arrive
    /// within `header_timeout` too.
    head_since_ms: AtomicU64,
    /// Since when a socket write has been blocked (the client's receive window is full).
    write_blocked_ms: AtomicU64,
    /// Response bodies that produced data and have not been asked for more since: HTTP/2
    /// stops asking when the client stops granting flow-control window.
    bodies_waiting: AtomicUsize,
    /// The last time any response body was asked for data.
    body_progress_ms: AtomicU64,
    /// The gateway is draining: a response cut off now was cut by `shutdown_timeout`.
    draining: AtomicBool,
}

const NONE: u64 = u64::MAX;

impl Default for Activity {
    fn default() -> Self {
        Activity {
            origin: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
            head_since_ms: AtomicU64::new(0),
            write_blocked_ms: AtomicU64::new(NONE),
            bodies_waiting: AtomicUsize::new(0),
            body_progress_ms: AtomicU64::new(0),
            draining: AtomicBool::new(false),
        }
    }
}

impl Activity {
    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    /// A request head was complete and the request started.
    pub fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.head_since_ms.store(NONE, Ordering::Relaxed);
        self.touch();
    }

    /// A request's response ended.
    pub fn end(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.touch();
    }

    /// Bytes arrived from the client: with no request in flight they start a new head.
    pub fn bytes_arrived(&self) {
        if self.in_flight.load(Ordering::Relaxed) == 0
            && self.head_since_ms.load(Ordering::Relaxed) == NONE
        {
            self.head_since_ms.store(self.now_ms(), Ordering::Relaxed);
        }
    }

    fn touch(&self) {
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// How long the connection has had no request in flight; `None` while one is.
    pub fn idle_for(&self) -> Option<std::time::Duration> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let last = self.last_ms.load(Ordering::Relaxed);
        Some(std::time::Duration::from_millis(
            self.now_ms().saturating_sub(last),
        ))
    }

    /// The gateway started draining this connection.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// A socket write could not proceed (`blocked`) or did.
    fn write_progress(&self, blocked: bool) {
        if blocked {
            if self.write_blocked_ms.load(Ordering::Relaxed) == NONE {
                self.write_blocked_ms
                    .store(self.now_ms(), Ordering::Relaxed);
            }
        } else if self.write_blocked_ms.load(Ordering::Relaxed) != NONE {
            self.write_blocked_ms.store(NONE, Ordering::Relaxed);
        }
    }

    /// A response body was asked for data; `had_waiting` when it had produced data before.
    pub fn body_polled(&self, had_waiting: bool) {
        if had_waiting {
            self.bodies_waiting.fetch_sub(1, Ordering::Relaxed);
        }
        self.body_progress_ms
            .store(self.now_ms(), Ordering::Relaxed);
    }

    /// A response body produced data and waits for the client to take it.
    pub fn body_yielded(&self) {
        self.bodies_waiting.fetch_add(1, Ordering::Relaxed);
    }

    /// A response body that had produced data is gone.
    pub fn body_dropped(&self) {
        self.bodies_waiting.fetch_sub(1, Ordering::Relaxed);
    }

    /// How long the client has taken nothing of what the gateway has to send: a blocked socket
    /// write, or response data that HTTP/2 flow control holds back; `None` when nothing waits.
    pub fn send_stalled_for(&self) -> Option<std::time::Duration> {
        let now = self.now_ms();
        let socket = match self.write_blocked_ms.load(Ordering::Relaxed) {
            NONE => None,
            since => Some(now.saturating_sub(since)),
        };
        let bodies = (self.bodies_waiting.load(Ordering::Relaxed) > 0)
            .then(|| now.saturating_sub(self.body_progress_ms.load(Ordering::Relaxed)));
        socket.max(bodies).map(std::time::Duration::from_millis)
    }

    /// How long an incomplete request head has been arriving, if one is.
    pub fn head_pending_for(&self) -> Option<std::time::Duration> {
        let since = self.head_since_ms.load(Ordering::Relaxed);
        if since == NONE || self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        Some(std::time::Duration::from_millis(
            self.now_ms().saturating_sub(since),
        ))
    }
}

pin_project_lite::pin_project! {
    /// Reports reads to an [`Activity`], so the header timeout can start at the first byte of
    /// a request head rather than run while a keep-alive connection waits.
    pub struct ActivityIo<T> {
        #[pin]
        inner: T,
        activity: Arc<Activity>,
    }
}

impl<T> ActivityIo<T> {
    /// Wraps a connection's stream.
    pub fn new(inner: T, activity: Arc<Activity>) -> Self {
        ActivityIo { inner, activity }
    }
}

impl<T: tokio::io::AsyncRead> tokio::io::AsyncRead for ActivityIo<T> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let poll = this.inner.poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.bytes_arrived();
        }
        poll
    }
}

impl<T: tokio::io::AsyncWrite> tokio::io::AsyncWrite for ActivityIo<T> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.project();
        let poll = this.inner.poll_write(cx, buf);
        this.activity.write_progress(poll.is_pending());
        poll
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.project();
        let poll = this.inner.poll_write_vectored(cx, bufs);
        this.activity.write_progress(poll.is_pending());
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.project();
        let poll = this.inner.poll_flush(cx);
        this.activity.write_progress(poll.is_pending());
        poll
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

/// What one request did; finished exactly once: when its response body ends, breaks or is
/// dropped, or (dropped itself) when the request was abandoned before a response.
#[derive(Debug)]
pub struct RequestLog {
    /// When the request head was received.
    pub start: Instant,
    /// The request id returned to the client.
    pub request_id: String,
    /// The client's address.
    pub client: SocketAddr,
    /// The caller's identity, if verified.
    pub identity: Option<Arc<str>>,
    /// Granted roles, comma-separated.
    pub roles: Arc<str>,
    /// Request method.
    pub method: Method,
    /// Normalized path, without the query (queries can carry secrets).
    pub path: String,
    /// The matched route.
    pub route: Option<Arc<str>>,
    /// The upstream the request went to, once forwarded.
    pub upstream: Option<Arc<str>>,
    /// Status of the exchange: as sent, or 499 (the client went away first), 502 (the
    /// upstream body broke off), 503 (cut off by the drain).
    pub status: u16,
    /// Status the upstream sent, when it answered.
    pub upstream_status: Option<u16>,
    /// `allow`, or why the request was stopped or did not complete.
    pub decision: &'static str,
    /// The upstream body broke mid-stream or went silent past `read_timeout`.
    pub upstream_aborted: bool,
    /// Whether to write the access log line.
    pub access_log: bool,
    /// Where request metrics go.
    pub metrics: Arc<Metrics>,
    /// The connection's activity tracker.
    pub activity: Arc<Activity>,
    /// Set once the line is written.
    pub finished: bool,
}

impl RequestLog {
    /// The upstream body failed mid-stream: counted in `portcullis_upstream_errors_total` and
    /// logged, and the exchange is logged as 502 (the client got a truncated response).
    pub fn upstream_broke(&mut self, e: &(dyn std::error::Error + 'static)) {
        self.upstream_aborted = true;
        self.decision = "upstream_aborted";
        self.status = 502;
        let kind = e
            .downcast_ref::<crate::proxy::UpstreamBodyError>()
            .map_or("body", crate::proxy::UpstreamBodyError::kind);
        let upstream = self.upstream.as_deref().unwrap_or("-");
        self.metrics
            .upstream_errors
            .get_or_create(&crate::metrics::UpstreamKind {
                upstream: upstream.to_owned(),
                kind: kind.to_owned(),
            })
            .inc();
        tracing::warn!(request_id = %self.request_id, upstream, kind, error = %e, "upstream response body failed; the client's response is cut short");
    }

    /// The response was dropped before its end: the client went away (499), or the drain's
    /// `shutdown_timeout` cut it off (503, logged as a warning).
    pub fn cut_short(&mut self) {
        if self.activity.draining.load(Ordering::Relaxed) {
            self.status = 503;
            self.decision = "shutdown";
            tracing::warn!(request_id = %self.request_id, "response cut off by shutdown_timeout");
        } else {
            self.status = 499;
            self.decision = "client_aborted";
        }
    }

    /// Writes the access log line and metrics, once.
    pub fn finish(&mut self, bytes: u64) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        let elapsed = self.start.elapsed();
        self.activity.end();
        let label = RouteStatus {
            route: self.route.clone().unwrap_or_else(no_route),
            status: u32::from(self.status),
        };
        self.metrics.requests.get_or_create(&label).inc();
        let route: &str = &label.route;
        self.metrics.request_duration.observe(elapsed.as_secs_f64());
        if !self.access_log {
            return;
        }
        // The JSON line is rendered here, by hand, into a reused buffer: the same fields the
        // generic formatter below writes, at a fraction of its cost (see `benches/stages.rs`).
        // `RUST_LOG` still decides whether access lines are written.
        if ACCESS_JSON.load(Ordering::Relaxed)
            && tracing::enabled!(target: "portcullis::access", tracing::Level::INFO)
        {
            LINE.with_borrow_mut(|line| {
                line.clear();
                self.render_json(line, route, elapsed, bytes);
                STDOUT.append(line.as_bytes());
            });
            return;
        }
        tracing::info!(
            target: "portcullis::access",
            request_id = %self.request_id,
            client = %self.client,
            identity = self.identity.as_deref().unwrap_or("-"),
            roles = %self.roles,
            method = %self.method,
            path = %self.path,
            route,
            status = self.status,
            upstream_status = self.upstream_status.unwrap_or(0),
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            bytes,
            decision = self.decision,
            upstream_aborted = self.upstream_aborted,
            "request"
        );
    }

    /// One access line as JSON, as the JSON formatter writes it (flattened fields), ending
    /// with a newline. Numbers and the timestamp are written digit by digit, not through
    /// `core::fmt`, which was half of this function's cost.
    pub fn render_json(&self, out: &mut String, route: &str, duration: Duration, bytes: u64) {
        out.push_str("{\"timestamp\":\"");
        push_timestamp(out, SystemTime::now());
        out.push_str("\",\"level\":\"INFO\",\"message\":\"request\",\"request_id\":");
        json_str(out, &self.request_id);
        out.push_str(",\"client\":\"");
        push_socket_addr(out, self.client);
        out.push_str("\",\"identity\":");
        json_str(out, self.identity.as_deref().unwrap_or("-"));
        out.push_str(",\"roles\":");
        json_str(out, &self.roles);
        out.push_str(",\"method\":");
        json_str(out, self.method.as_str());
        out.push_str(",\"path\":");
        json_str(out, &self.path);
        out.push_str(",\"route\":");
        json_str(out, route);
        out.push_str(",\"status\":");
        push_u64(out, u64::from(self.status));
        out.push_str(",\"upstream_status\":");
        push_u64(out, u64::from(self.upstream_status.unwrap_or(0)));
        // Milliseconds with microsecond resolution.
        out.push_str(",\"duration_ms\":");
        let micros = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
        push_u64(out, micros / 1000);
        out.push('.');
        push_padded(out, micros % 1000, 3);
        out.push_str(",\"bytes\":");
        push_u64(out, bytes);
        out.push_str(",\"decision\":");
        json_str(out, self.decision);
        out.push_str(if self.upstream_aborted {
            ",\"upstream_aborted\":true"
        } else {
            ",\"upstream_aborted\":false"
        });
        out.push_str(",\"target\":\"portcullis::access\"}\n");
    }
}

/// Appends `n` in decimal.
fn push_u64(out: &mut String, n: u64) {
    out.push_str(itoa::Buffer::new().format(n));
}

/// Appends `n` in decimal, zero-padded to `width` digits (`n` must fit).
fn push_padded(out: &mut String, n: u64, width: u32) {
    let mut scale = 10u64.pow(width.saturating_sub(1));
    while scale > 1 && n < scale {
        out.push('0');
        scale /= 10;
    }
    push_u64(out, n);
}

/// Appends an address as `Display` writes it (`a.b.c.d:port`, `[v6]:port`).
fn push_socket_addr(out: &mut String, addr: SocketAddr) {
    match addr {
        SocketAddr::V4(a) => {
            let [w, x, y, z] = a.ip().octets();
            for (i, octet) in [w, x, y, z].into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                push_u64(out, u64::from(octet));
            }
            out.push(':');
            push_u64(out, u64::from(a.port()));
        }
        SocketAddr::V6(_) => {
            use std::fmt::Write as _;
            let _ = write!(out, "{addr}");
        }
    }
}

/// Appends an RFC 3339 UTC timestamp with microseconds, `2026-12-04T21:19:05.123456Z`. The
/// date and time of day are rendered once per second and per thread.
fn push_timestamp(out: &mut String, now: SystemTime) {
    thread_local! {
        static SECOND: std::cell::RefCell<(u64, String)> =
            const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    let since = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs();
    SECOND.with_borrow_mut(|(second, text)| {
        if *second != secs {
            use std::fmt::Write as _;
            let t = i64::try_from(secs)
                .ok()
                .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
            text.clear();
            let _ = write!(
                text,
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            );
            *second = secs;
        }
        out.push_str(text);
    });
    out.push('.');
    push_padded(out, u64::from(since.subsec_micros()), 6);
    out.push('Z');
}

thread_local! {
    /// The buffer access lines are rendered into, reused by every request on this thread.
    static LINE: std::cell::RefCell<String> = std::cell::RefCell::new(String::with_capacity(512));
}

/// Appends `s` as a JSON string literal.
fn json_str(out: &mut String, s: &str) {
    out.push('"');
    if !s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        out.push_str(s);
    } else {
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if u32::from(c) < 0x20 => {
                    use std::fmt::Write as _;
                    let _ = write!(out, "\\u{:04x}", u32::from(c));
                }
                c => out.push(c),
            }
        }
    }
    out.push('"');
}

/// The `route` label of requests no route matched.
fn no_route() -> Arc<str> {
    static NONE: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
    NONE.get_or_init(|| Arc::from("none")).clone()
}

impl Drop for RequestLog {
    /// A request abandoned before its response existed (an HTTP/2 stream reset, an HTTP/1.1
    /// client that disconnected while the upstream was still thinking) still gets its line,
    /// and its connection's in-flight count goes down, so the idle timer runs again.
    fn drop(&mut self) {
        if !self.finished {
            self.cut_short();
            self.finish(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hand_rendered_access_line_is_json_with_every_field() {
        let mut log = RequestLog {
            start: Instant::now(),
            request_id: "req-1".into(),
            client: "[::1]:4000".parse().unwrap(),
            identity: Some(Arc::from("CN=a\"b\nc\\d\u{1}")),
            roles: Arc::from("reader,ops"),
            method: Method::DELETE,
            path: "/caf\u{e9}/x".into(),
            route: None,
            upstream: None,
            status: 200,
            upstream_status: Some(201),
            decision: "allow",
            upstream_aborted: false,
            access_log: false,
            metrics: Arc::new(Metrics::new()),
            activity: Arc::new(Activity::default()),
            finished: false,
        };
        let mut line = String::new();
        log.render_json(&mut line, "docs", Duration::from_micros(1250), 42);
        assert!(line.ends_with("}\n"), "{line}");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["message"], "request");
        assert_eq!(v["target"], "portcullis::access");
        assert_eq!(v["request_id"], "req-1");
        assert_eq!(v["client"], "[::1]:4000");
        assert_eq!(v["identity"], "CN=a\"b\nc\\d\u{1}");
        assert_eq!(v["roles"], "reader,ops");
        assert_eq!(v["method"], "DELETE");
        assert_eq!(v["path"], "/caf\u{e9}/x");
        assert_eq!(v["route"], "docs");
        assert_eq!(v["status"], 200);
        assert_eq!(v["upstream_status"], 201);
        assert_eq!(v["duration_ms"], 1.25);
        assert_eq!(v["bytes"], 42);
        assert_eq!(v["decision"], "allow");
        assert_eq!(v["upstream_aborted"], false);
        let ts = v["timestamp"].as_str().unwrap();
        assert!(
            ts.len() == 27 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
            "{ts}"
        );
        log.finished = true;
    }

    #[test]
    fn numbers_addresses_and_timestamps_render_as_fmt_would() {
        let mut out = String::new();
        for n in [0, 7, 10, 99, 100, 65535, u64::MAX] {
            out.clear();
            push_u64(&mut out, n);
            assert_eq!(out, n.to_string());
        }
        for (n, width) in [(0, 3), (5, 3), (42, 6), (999, 3), (123_456, 6)] {
            out.clear();
            push_padded(&mut out, n, width);
            assert_eq!(out, format!("{n:0w$}", w = width as usize));
        }
        for addr in ["10.0.0.1:443", "255.255.255.255:0", "[2001:db8::1]:8443"] {
            out.clear();
            push_socket_addr(&mut out, addr.parse().unwrap());
            assert_eq!(out, addr);
        }
        let at = SystemTime::UNIX_EPOCH + Duration::new(1_796_418_245, 7_000);
        out.clear();
        push_timestamp(&mut out, at);
        assert_eq!(out, "2026-12-04T21:04:05.000007Z");
        // The cached second is reused only for the same second.
        out.clear();
        push_timestamp(&mut out, at + Duration::from_secs(86_400));
        assert_eq!(out, "2026-12-05T21:04:05.000007Z");
    }

    #[test]
    fn durations_are_milliseconds_with_microseconds() {
        let log = RequestLog {
            start: Instant::now(),
            request_id: "r".into(),
            client: "192.0.2.1:5000".parse().unwrap(),
            identity: None,
            roles: Arc::from(""),
            method: Method::GET,
            path: "/".into(),
            route: None,
            upstream: None,
            status: 404,
            upstream_status: None,
            decision: "no_route",
            upstream_aborted: true,
            access_log: false,
            metrics: Arc::new(Metrics::new()),
            activity: Arc::new(Activity::default()),
            finished: true,
        };
        for (d, text) in [
            (Duration::from_nanos(999), "0.000"),
            (Duration::from_micros(5), "0.005"),
            (Duration::from_micros(1_250), "1.250"),
            (Duration::from_secs(61), "61000.000"),
        ] {
            let mut line = String::new();
            log.render_json(&mut line, "none", d, 0);
            assert!(line.contains(&format!("\"duration_ms\":{text},")), "{line}");
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert_eq!(v["client"], "192.0.2.1:5000");
            assert_eq!(v["upstream_aborted"], true);
            assert_eq!(v["upstream_status"], 0);
        }
    }
}
