//! Body wrappers: the request body with its size limit enforced while streaming, and the
//! response body that reports its byte count and end to the access log.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

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

pin_project_lite::pin_project! {
    /// A client request body that fails once more than `remaining` bytes arrive, so an
    /// oversized body is cut off mid-stream instead of being forwarded.
    pub struct LimitedBody {
        #[pin]
        inner: Incoming,
        remaining: u64,
    }
}

impl LimitedBody {
    /// Wraps a client body with a byte budget.
    pub fn new(inner: Incoming, limit: u64) -> LimitedBody {
        LimitedBody {
            inner,
            remaining: limit,
        }
    }
}

impl Body for LimitedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if len > *this.remaining {
                        *this.remaining = 0;
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                    }
                    *this.remaining -= len;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that counts the bytes sent and writes the access log line when the body
/// ends or is dropped (client gone), so the log has the real byte count and duration. It also
/// tells the connection's [`Activity`] when data waits for the client, for `send_timeout`.
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
            Poll::Ready(Some(Err(_))) => {
                if let Some(log) = self.log.as_mut() {
                    log.upstream_aborted = true;
                }
                self.finish();
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
        if let Some(log) = self.log.take() {
            log.finish(self.bytes);
        }
    }
}

impl Drop for TrackedBody {
    fn drop(&mut self) {
        if self.waiting {
            self.activity.body_dropped();
        }
        self.finish();
    }
}
