//! An upstream's response body as the guest reads it: cut when the upstream
//! stalls longer than the between-bytes timeout, and holding the request's
//! in-flight permit until it ends or the guest drops it.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};
use wasmtime_wasi_http::Error;

pub struct TimedBody {
    inner: Incoming,
    between: Duration,
    stall: Pin<Box<Sleep>>,
    _permit: OwnedSemaphorePermit,
}

impl TimedBody {
    pub fn new(inner: Incoming, between: Duration, permit: OwnedSemaphorePermit) -> Self {
        Self {
            inner,
            between,
            stall: Box::pin(tokio::time::sleep(between)),
            _permit: permit,
        }
    }
}

impl Body for TimedBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                let next = Instant::now() + self.between;
                self.stall.as_mut().reset(next);
                Poll::Ready(frame.map(|f| f.map_err(Error::Hyper)))
            }
            Poll::Pending => match self.stall.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Error::ConnectionReadTimeout))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}
