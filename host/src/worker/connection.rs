//! One client connection, received as an fd: HTTP/1.1 with keep-alive, or
//! HTTP/2 (h2c), served by hyper-util; with --tls-cert, the same over TLS
//! (the handshake is done here, with tls.rs's acceptor).
//!
//! Every state a connection can wait in has a deadline, so clients that
//! connect and stall cannot hold the --max-connections slots:
//! - its first bytes, up to the whole HTTP/2 preface: --header-timeout
//!   (hyper-util reads them to pick the protocol, before any of hyper's
//!   timeouts apply; `Guarded` below bounds them); with TLS, one deadline
//!   bounds the handshake and those bytes together;
//! - HTTP/1 request headers, also while waiting between keep-alive
//!   requests: --header-timeout (hyper);
//! - HTTP/2: a PING when the client has been silent for
//!   --h2-keepalive-interval, and the connection closed when the answer
//!   takes longer than --h2-keepalive-timeout (hyper);
//! - no request in flight for --idle-timeout: the connection is closed
//!   (`Guarded`; this is what ends an HTTP/2 client that answers PINGs but
//!   sends no requests).

use std::convert::Infallible;
use std::io;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use super::admission::{Connections, Slot};
use super::service::{self, WorkerCtx};
use crate::runtime::guest::ConnInfo;

/// What an HTTP/2 client sends first (RFC 9113 section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serves the connection once it has a slot under --max-connections (at
/// once, or when another closes: it is never refused); over TLS when
/// `tls` is given.
pub fn serve(
    ctx: &Arc<WorkerCtx>,
    fd: OwnedFd,
    graceful: &GracefulShutdown,
    connections: &Arc<Connections>,
    tls: Option<&TlsAcceptor>,
) {
    ctx.counters.connection();
    connections.arriving();
    let (ctx, watcher, connections) = (ctx.clone(), graceful.watcher(), connections.clone());
    let tls = tls.cloned();
    tokio::spawn(async move {
        let slot = connections.admit().await;
        start(&ctx, fd, watcher, slot, tls).await;
    });
}

async fn start(
    ctx: &Arc<WorkerCtx>,
    fd: OwnedFd,
    watcher: Watcher,
    permit: Slot,
    tls: Option<TlsAcceptor>,
) {
    let stream = std::net::TcpStream::from(fd);
    let stream = match stream
        .set_nonblocking(true)
        .and_then(|()| tokio::net::TcpStream::from_std(stream))
    {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot adopt a connection: {e}");
            return;
        }
    };
    // Small responses must not wait for Nagle's algorithm.
    stream.set_nodelay(true).ok();
    // The TLS handshake, if any, and the first bytes of HTTP: one deadline.
    let first_bytes = Instant::now() + ctx.limits.header_timeout;
    let info = ConnInfo {
        peer: stream.peer_addr().ok(),
        local: stream.local_addr().ok(),
        tls: tls.is_some(),
    };
    let Some(acceptor) = tls else {
        return run(ctx, stream, first_bytes, info, watcher, permit);
    };
    match tokio::time::timeout_at(first_bytes, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => run(ctx, stream, first_bytes, info, watcher, permit),
        Ok(Err(e)) => tracing::debug!("TLS handshake failed: {e}"),
        Err(_) => tracing::debug!("no TLS handshake within --header-timeout"),
    }
}

/// Serves HTTP on `io` (the socket, or the TLS stream over it) in a task of
/// its own; `first_bytes` is when the protocol must be known.
fn run<S>(
    ctx: &Arc<WorkerCtx>,
    io: S,
    first_bytes: Instant,
    info: ConnInfo,
    watcher: Watcher,
    permit: Slot,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = &ctx.limits;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.h2_keepalive_interval)
        .keep_alive_timeout(limits.h2_keepalive_timeout);
    let svc_ctx = ctx.clone();
    let activity = Arc::new(Activity {
        in_flight: AtomicUsize::new(0),
        idle_since: Mutex::new(Instant::now()),
    });
    let io = Guarded {
        io,
        phase: Phase::Opening(0),
        timer: Box::pin(tokio::time::sleep_until(first_bytes)),
        activity: activity.clone(),
        idle_timeout: limits.idle_timeout,
    };
    let conn = builder
        .serve_connection(
            TokioIo::new(io),
            service_fn(move |mut req| {
                req.extensions_mut().insert(info);
                // Only HTTP/2 needs it: HTTP/1's wait between requests is
                // bounded by hyper's header timeout (cheaper hot path).
                let busy = (req.version() == hyper::Version::HTTP_2).then(|| Busy::new(&activity));
                let resp = service::handle(svc_ctx.clone(), req);
                async move {
                    let resp = resp.await?;
                    Ok::<_, Infallible>(resp.map(|body| Tracked { body, _busy: busy }))
                }
            }),
        )
        .into_owned();
    let conn = watcher.watch(conn);
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("connection ended with an error: {e}");
        }
        drop(permit);
    });
}

/// Requests in flight on one connection, and since when it has had none.
struct Activity {
    in_flight: AtomicUsize,
    idle_since: Mutex<Instant>,
}

impl Activity {
    /// When the connection will have been idle for `timeout`; None while a
    /// request is in flight.
    fn idle_deadline(&self, timeout: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        Some(*self.idle_since.lock().unwrap_or_else(|e| e.into_inner()) + timeout)
    }
}

/// One request in flight, from the service call until hyper drops the
/// response body (sent, or the stream reset).
struct Busy(Arc<Activity>);

impl Busy {
    fn new(activity: &Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(activity.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        *self.0.idle_since.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its connection busy until it is done.
struct Tracked {
    body: HyperOutgoingBody,
    _busy: Option<Busy>,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

enum Phase {
    /// Protocol not known yet: this many bytes of the HTTP/2 preface seen.
    Opening(usize),
    /// HTTP/1: hyper's header timeout bounds the wait between requests, so
    /// reads pass straight through (no timer on the hot path).
    Http1,
    /// HTTP/2: the --idle-timeout timer bounds a connection with no streams.
    Http2,
}

/// The client's socket (or TLS stream), with the deadlines hyper has none
/// for. While the protocol is not known, `timer` is the --header-timeout
/// deadline and a read past it fails; after that it is the --idle-timeout
/// deadline, and a read that would wait past it with no request in flight
/// ends the stream, so hyper closes the connection (HTTP/2 without GOAWAY,
/// as hyper does on a PING timeout).
struct Guarded<S> {
    io: S,
    phase: Phase,
    timer: Pin<Box<Sleep>>,
    activity: Arc<Activity>,
    idle_timeout: Duration,
}

impl<S> Guarded<S> {
    /// Moves the phase on with the bytes just read.
    fn saw(&mut self, new: &[u8]) {
        let Phase::Opening(seen) = self.phase else {
            return;
        };
        let rest = &H2_PREFACE[seen..];
        let n = new.len().min(rest.len());
        let total = seen + new.len();
        if new.is_empty() || new[..n] != rest[..n] {
            self.phase = Phase::Http1;
        } else if total >= H2_PREFACE.len() {
            self.phase = Phase::Http2;
            let deadline = Instant::now() + self.idle_timeout;
            self.timer.as_mut().reset(deadline);
        } else {
            self.phase = Phase::Opening(total);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                this.saw(&buf.filled()[before..]);
                return Poll::Ready(Ok(()));
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending if matches!(this.phase, Phase::Http1) => return Poll::Pending,
            Poll::Pending => {}
        }
        // Nothing to read: the wait is bounded by the timer.
        loop {
            if this.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if let Phase::Opening(_) = this.phase {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no request within --header-timeout",
                )));
            }
            let now = Instant::now();
            match this.activity.idle_deadline(this.idle_timeout) {
                // Idle long enough: end of stream, hyper closes.
                Some(deadline) if deadline <= now => return Poll::Ready(Ok(())),
                Some(deadline) => this.timer.as_mut().reset(deadline),
                None => this.timer.as_mut().reset(now + this.idle_timeout),
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpStream;

    use super::*;

    fn guarded(io: TcpStream) -> Guarded<TcpStream> {
        Guarded {
            io,
            phase: Phase::Opening(0),
            timer: Box::pin(tokio::time::sleep(Duration::from_secs(10))),
            activity: Arc::new(Activity {
                in_flight: AtomicUsize::new(0),
                idle_since: Mutex::new(Instant::now()),
            }),
            idle_timeout: Duration::from_secs(60),
        }
    }

    async fn socket() -> TcpStream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).await;
        listener.accept().await.unwrap().0
    }

    #[tokio::test]
    async fn the_preface_keeps_the_protocol_open_until_it_is_whole_or_broken() {
        let mut g = guarded(socket().await);
        g.saw(b"PRI * HTTP/2.0\r\n");
        assert!(matches!(g.phase, Phase::Opening(16)));
        g.saw(b"\r\nSM\r\n\r\n");
        assert!(matches!(g.phase, Phase::Http2));

        let mut g = guarded(socket().await);
        g.saw(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04");
        assert!(matches!(g.phase, Phase::Http2));

        let mut g = guarded(socket().await);
        g.saw(b"P");
        g.saw(b"OST / HTTP/1.1\r\n");
        assert!(matches!(g.phase, Phase::Http1));

        let mut g = guarded(socket().await);
        g.saw(b"GET / HTTP/1.1\r\n");
        assert!(matches!(g.phase, Phase::Http1));
    }

    #[test]
    fn a_request_in_flight_is_not_idle() {
        let activity = Arc::new(Activity {
            in_flight: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
        });
        let timeout = Duration::from_secs(5);
        assert!(activity.idle_deadline(timeout).is_some());
        let busy = Busy::new(&activity);
        assert_eq!(activity.idle_deadline(timeout), None);
        drop(busy);
        let deadline = activity.idle_deadline(timeout).unwrap();
        assert!(deadline > Instant::now() + Duration::from_secs(4));
    }
}
