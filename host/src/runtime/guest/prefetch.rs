//! A WASI 0.3 guest's response head reaches the worker before its body: the
//! guest writes the body to a stream, and ends it, after `handle` returns.
//! Passed to hyper at once, the head and the first bytes go out in one write
//! and the end of the (chunked) body in a second one: two TCP segments and
//! two wake-ups of the client for a small response. So the body is read first
//! for as long as the guest keeps producing it without waiting, up to
//! `PREFETCH_LIMIT` bytes: a small response then leaves whole, with a
//! Content-Length, in one write; a larger or slower one streams as before.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use wasmtime_wasi_http::WasiBody;

/// Bytes, and frames (a guest may write empty ones), read ahead at most;
/// past either the response streams.
const PREFETCH_LIMIT: usize = 64 * 1024;
const PREFETCH_FRAMES: usize = 64;

/// How many times in a row the body may have nothing new before the head is
/// sent anyway. Each round lets every other ready task run once (the store
/// that produces the body among them), so this waits on the guest only while
/// it is making progress, never on a timer or the network.
const IDLE_ROUNDS: u32 = 1;

type Error = wasmtime_wasi_http::Error;

/// Reads the start of `resp`'s body as described above.
pub async fn prefetch(resp: hyper::Response<WasiBody>) -> hyper::Response<WasiBody> {
    let (parts, mut body) = resp.into_parts();
    let mut frames = VecDeque::new();
    let mut bytes = 0;
    let mut idle = 0;
    let ended = std::future::poll_fn(|cx| {
        loop {
            match Pin::new(&mut body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    idle = 0;
                    bytes += frame.data_ref().map_or(0, Bytes::len);
                    frames.push_back(Ok(frame));
                    if bytes >= PREFETCH_LIMIT || frames.len() >= PREFETCH_FRAMES {
                        return Poll::Ready(false);
                    }
                }
                // The error goes to hyper as it would have; nothing follows it.
                Poll::Ready(Some(Err(e))) => {
                    frames.push_back(Err(e));
                    return Poll::Ready(true);
                }
                Poll::Ready(None) => return Poll::Ready(true),
                Poll::Pending if idle >= IDLE_ROUNDS => return Poll::Ready(false),
                Poll::Pending => {
                    idle += 1;
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
            }
        }
    })
    .await;
    let body = Prefetched {
        frames,
        rest: (!ended).then_some(body),
    };
    hyper::Response::from_parts(parts, body.boxed_unsync())
}

/// The frames read ahead, then the rest of the body (if it had not ended).
struct Prefetched {
    frames: VecDeque<Result<Frame<Bytes>, Error>>,
    rest: Option<WasiBody>,
}

impl Body for Prefetched {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        if let Some(frame) = self.frames.pop_front() {
            return Poll::Ready(Some(frame));
        }
        match self.rest.as_mut() {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty() && self.rest.is_none()
    }

    /// Exact once the whole body is here and is only data: hyper then sends
    /// a Content-Length instead of chunks.
    fn size_hint(&self) -> SizeHint {
        let data_only = self
            .frames
            .iter()
            .all(|f| f.as_ref().is_ok_and(Frame::is_data));
        let buffered: u64 = self
            .frames
            .iter()
            .filter_map(|f| f.as_ref().ok()?.data_ref())
            .map(|d| d.len() as u64)
            .sum();
        match &self.rest {
            None if data_only => SizeHint::with_exact(buffered),
            None => SizeHint::new(),
            Some(rest) => {
                let mut hint = SizeHint::new();
                hint.set_lower(buffered + rest.size_hint().lower());
                hint
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    /// A body fed through a channel: frames sent so far, then the end once
    /// the sender is dropped.
    struct Channel(mpsc::UnboundedReceiver<Result<Frame<Bytes>, Error>>);

    impl Body for Channel {
        type Data = Bytes;
        type Error = Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
            self.0.poll_recv(cx)
        }
    }

    fn response(
        frames: impl IntoIterator<Item = Frame<Bytes>>,
    ) -> (
        hyper::Response<WasiBody>,
        mpsc::UnboundedSender<Result<Frame<Bytes>, Error>>,
    ) {
        let (tx, rx) = mpsc::unbounded_channel();
        for frame in frames {
            tx.send(Ok(frame)).unwrap();
        }
        (hyper::Response::new(Channel(rx).boxed_unsync()), tx)
    }

    fn data(bytes: &'static [u8]) -> Frame<Bytes> {
        Frame::data(Bytes::from_static(bytes))
    }

    #[tokio::test]
    async fn a_small_finished_body_gets_an_exact_length() {
        let (resp, tx) = response([data(b"hel"), data(b"lo")]);
        drop(tx);
        let body = prefetch(resp).await.into_body();
        assert_eq!(body.size_hint().exact(), Some(5));
        assert_eq!(body.collect().await.unwrap().to_bytes(), "hello");
    }

    #[tokio::test]
    async fn trailers_keep_the_body_chunked() {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-sum", "1".parse().unwrap());
        let (resp, tx) = response([data(b"a"), Frame::trailers(trailers)]);
        drop(tx);
        let body = prefetch(resp).await.into_body();
        assert_eq!(body.size_hint().exact(), None);
        let all = body.collect().await.unwrap();
        assert_eq!(all.trailers().unwrap()["x-sum"], "1");
        assert_eq!(all.to_bytes(), "a");
    }

    #[tokio::test]
    async fn a_body_still_being_written_arrives_whole_if_its_writer_keeps_going() {
        let (resp, tx) = response([data(b"first ")]);
        // Another task finishes the body while the head waits.
        tokio::spawn(async move {
            tx.send(Ok(data(b"second"))).unwrap();
        });
        let body = prefetch(resp).await.into_body();
        assert_eq!(body.size_hint().exact(), Some(12));
        assert_eq!(body.collect().await.unwrap().to_bytes(), "first second");
    }

    #[tokio::test]
    async fn a_body_that_waits_streams_what_came_so_far_and_the_rest_later() {
        let (resp, tx) = response([data(b"first ")]);
        // Returns although the body has not ended: nothing is producing it.
        let body = prefetch(resp).await.into_body();
        assert_eq!(body.size_hint().exact(), None);
        assert!(!body.is_end_stream());
        tx.send(Ok(data(b"second"))).unwrap();
        drop(tx);
        assert_eq!(body.collect().await.unwrap().to_bytes(), "first second");
    }

    #[tokio::test]
    async fn a_large_body_stops_being_read_ahead_at_the_limit() {
        let chunk = Bytes::from(vec![7u8; 16 * 1024]);
        let (resp, tx) = response((0..100).map(|_| Frame::data(chunk.clone())));
        drop(tx);
        let body = prefetch(resp).await.into_body();
        assert!(!body.is_end_stream());
        assert_eq!(body.size_hint().lower(), PREFETCH_LIMIT as u64);
        assert_eq!(
            body.collect().await.unwrap().to_bytes().len(),
            100 * 16 * 1024
        );
    }
}
