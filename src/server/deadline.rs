//! A deadline on reading a request's body (`server.body_read_timeout`): the whole body must have
//! arrived that long after the request's head did, however it trickles in.
//!
//! Why a total deadline and not an idle timeout between reads: a client sending one byte a second never
//! idles, yet holds its connection slot (and, at SIGTERM, the shutdown) for as long as it likes. With
//! `server.max_connections` such clients lock everyone out, `/metrics` included.
//!
//! The timer is armed only when the body is not already there: a body that arrived with its head (most
//! ingest requests) is read without touching the timer wheel.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

/// The error a body past its deadline ends with; [`crate::api`] answers it with a `408`.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
pub struct BodyTimeout(pub Duration);

pin_project! {
    /// `inner`, ending with [`BodyTimeout`] if it is not complete by `deadline`.
    pub struct DeadlineBody<B> {
        #[pin]
        inner: B,
        #[pin]
        timer: Option<Sleep>,
        deadline: Instant,
        timeout: Duration,
    }
}

impl<B> DeadlineBody<B> {
    /// `inner` must be complete within `timeout` of `start` (when the request's head was read).
    pub fn new(inner: B, start: Instant, timeout: Duration) -> DeadlineBody<B> {
        DeadlineBody { inner, timer: None, deadline: start + timeout, timeout }
    }
}

impl<B> Body for DeadlineBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let mut this = self.project();
        if let Poll::Ready(frame) = this.inner.poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if this.timer.is_none() {
            this.timer.set(Some(tokio::time::sleep_until(*this.deadline)));
        }
        if let Some(timer) = this.timer.as_pin_mut() {
            ready!(std::future::Future::poll(timer, cx));
            return Poll::Ready(Some(Err(Box::new(BodyTimeout(*this.timeout)))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
