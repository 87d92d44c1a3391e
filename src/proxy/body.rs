//! Body wrappers: the request body with its size limit enforced while streaming and its
//! progress reported (for `timeout`, which starts once it is sent, and `body_timeout`); the
//! upstream's response body under `read_timeout`; and the response body that reports its byte
//! count and end to the access log.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::watch;

use super::pool::Checkout;
use crate::observability::{Activity, RequestLog};

/// The boxed error type of bodies crossing the gateway.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every response the gateway writes.
pub type ResponseBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// The request body exceeded `limits.max_body_bytes`; found in an upstream error's source
/// chain, it turns a failed forward into a 413.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the configured limit")]
pub struct BodyTooLarge;

/// How an upload is going, shared between the body (which reports) and the forward (which
/// starts the response deadline once the body is sent, and answers 408 when it stalls).
#[derive(Debug)]
pub struct Upload {
    origin: Instant,
    last_ms: AtomicU64,
    done: watch::Sender<bool>,
}

impl Upload {
    fn touch(&self) {
        self.last_ms
            .store(self.origin.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn finish(&self) {
        self.done.send_replace(true);
    }

    /// Resolves once the whole body has been read from the client.
    pub async fn sent(&self) {
        let mut rx = self.done.subscribe();
        let _ = rx.wait_for(|done| *done).await;
    }

    /// How long no body bytes have arrived.
    pub fn stalled_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.origin.elapsed().saturating_sub(last)
    }
}

/// A client request body that fails once more than `remaining` bytes arrive, so an oversized
/// body is cut off mid-stream instead of being forwarded; it reports its progress to an
/// [`Upload`]. `None` is an empty body (a request rebuilt for a retry).
pub struct LimitedBody {
    inner: Option<Incoming>,
    remaining: u64,
    upload: Option<Arc<Upload>>,
}

impl LimitedBody {
    /// Wraps a client body with a byte budget. A body that is not already empty gets an
    /// [`Upload`] to report to.
    pub fn new(inner: Incoming, limit: u64) -> LimitedBody {
        let upload = (!inner.is_end_stream()).then(|| {
            Arc::new(Upload {
                origin: Instant::now(),
                last_ms: AtomicU64::new(0),
                done: watch::Sender::new(false),
            })
        });
        LimitedBody {
            inner: Some(inner),
            remaining: limit,
            upload,
        }
    }

    /// An empty body.
    pub fn empty() -> LimitedBody {
        LimitedBody {
            inner: None,
            remaining: 0,
            upload: None,
        }
    }

    /// The upload's progress, when there is a body to send.
    pub fn upload(&self) -> Option<Arc<Upload>> {
        self.upload.clone()
    }
}

impl Body for LimitedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let poll = Pin::new(inner).poll_frame(cx);
        match poll {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if len > this.remaining {
                        this.remaining = 0;
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                    }
                    this.remaining -= len;
                }
                if let Some(u) = &this.upload {
                    u.touch();
                    if this.inner.as_ref().is_some_and(Body::is_end_stream) {
                        u.finish();
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => {
                if let Some(u) = &this.upload {
                    u.finish();
                }
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

/// Why an upstream response body ended early, for the access log and
/// `portcullis_upstream_errors_total{kind}`.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamBodyError {
    /// No body bytes for `read_timeout`.
    #[error("no response body bytes within read_timeout ({0:?})")]
    ReadTimeout(Duration),
    /// The upstream connection broke mid-body.
    #[error("the upstream response body broke off: {0}")]
    Broken(String),
}

impl UpstreamBodyError {
    /// The `kind` label.
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamBodyError::ReadTimeout(_) => "read_timeout",
            UpstreamBodyError::Broken(_) => "body",
        }
    }
}

/// The upstream's response body, aborted when it stays silent for `read_timeout`. The timer
/// is armed only when the body actually waits (most responses never do), so a fast response
/// costs no timer registration.
pub struct UpstreamBody {
    inner: Incoming,
    silence: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Data arrived since the timer was armed: re-arm before waiting again.
    progressed: bool,
    read_timeout: Duration,
    /// The connection it arrives on, back to the pool once the body has been read to its end.
    conn: Option<Checkout>,
}

impl UpstreamBody {
    /// Wraps a response body; `conn` is checked in when the body ends.
    pub(crate) fn new(
        inner: Incoming,
        read_timeout: Duration,
        conn: Option<Checkout>,
    ) -> UpstreamBody {
        UpstreamBody {
            inner,
            silence: None,
            progressed: true,
            read_timeout,
            conn,
        }
    }

    fn ended(&mut self) {
        if let Some(conn) = self.conn.take() {
            conn.check_in();
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.progressed = true;
                if this.inner.is_end_stream() {
                    this.ended();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                // A broken connection is not reused.
                this.conn = None;
                Poll::Ready(Some(Err(Box::new(UpstreamBodyError::Broken(
                    crate::proxy::error_chain(&e),
                )))))
            }
            Poll::Ready(None) => {
                this.ended();
                Poll::Ready(None)
            }
            Poll::Pending => {
                if std::mem::take(&mut this.progressed) {
                    let deadline = tokio::time::Instant::now() + this.read_timeout;
                    match this.silence.as_mut() {
                        Some(s) => s.as_mut().reset(deadline),
                        None => this.silence = Some(Box::pin(tokio::time::sleep_until(deadline))),
                    }
                }
                match this.silence.as_mut().map(|s| s.as_mut().poll(cx)) {
                    Some(Poll::Ready(())) => Poll::Ready(Some(Err(Box::new(
                        UpstreamBodyError::ReadTimeout(this.read_timeout),
                    )))),
                    _ => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that counts the bytes sent and finishes the access log line when the body
/// ends, breaks, or is dropped early (the client went away, or the drain cut it off), so the
/// log has the real outcome, byte count and duration. It also tells the connection's
/// [`Activity`] when data waits for the client, for `send_timeout`.
pub struct TrackedBody {
    inner: ResponseBody,
    bytes: u64,
    log: Option<RequestLog>,
    activity: Arc<Activity>,
    /// The last poll produced data that the client has not asked to follow yet.
    waiting: bool,
}

impl TrackedBody {
    /// Wraps a response body; `log` is finished exactly once.
    pub fn new(inner: ResponseBody, log: RequestLog) -> TrackedBody {
        TrackedBody {
            inner,
            bytes: 0,
            activity: log.activity.clone(),
            log: Some(log),
            waiting: false,
        }
    }
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let had_waiting = std::mem::take(&mut self.waiting);
        self.activity.body_polled(had_waiting);
        let poll = Pin::new(&mut self.inner).poll_frame(cx);
        match &poll {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    self.bytes += d.len() as u64;
                    self.waiting = true;
                    self.activity.body_yielded();
                }
            }
            Poll::Ready(None) => self.finish(),
            Poll::Ready(Some(Err(e))) => {
                let bytes = self.bytes;
                if let Some(mut log) = self.log.take() {
                    log.upstream_broke(e.as_ref());
                    log.finish(bytes);
                }
            }
            Poll::Pending => {}
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl TrackedBody {
    fn finish(&mut self) {
        if let Some(mut log) = self.log.take() {
            log.finish(self.bytes);
        }
    }
}

impl Drop for TrackedBody {
    fn drop(&mut self) {
        if self.waiting {
            self.activity.body_dropped();
        }
        // Dropped before its end: hyper stopped sending it (client gone, or the connection
        // was cut). A body that is at its end was sent whole, even if never polled to `None`.
        if !self.inner.is_end_stream()
            && let Some(log) = self.log.as_mut()
        {
            log.cut_short();
        }
        self.finish();
    }
}
