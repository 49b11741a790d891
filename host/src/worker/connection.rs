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
//!   sends no requests);
//! - a response the client takes nothing of for --send-timeout: the
//!   connection is closed. A write to the socket that cannot go on (a reader
//!   that stopped) is bounded by `Guarded`'s send timer; an HTTP/2 stream
//!   held back by flow control never reaches the socket, so each stream's
//!   wait for the client is clocked in `Activity` and checked by the read
//!   timer, which HTTP/2 always has armed.

use std::convert::Infallible;
use std::io;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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
    let activity = Arc::new(Activity::default());
    let io = Guarded {
        io,
        phase: Phase::Opening(0),
        timer: Box::pin(tokio::time::sleep_until(first_bytes)),
        activity: activity.clone(),
        idle_timeout: limits.idle_timeout,
        send_timeout: limits.send_timeout,
        send_timer: None,
        write_waits: false,
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
                    if let Some(busy) = &busy {
                        // The head is out: the client's turn to take it.
                        busy.waits_for_client(true);
                    }
                    Ok::<_, Infallible>(resp.map(|body| Tracked { body, busy }))
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

/// Requests in flight on one connection, since when it has had none, and
/// (HTTP/2) since when each response has waited for the client.
struct Activity {
    in_flight: AtomicUsize,
    idle_since: Mutex<Instant>,
    /// One clock per HTTP/2 response in flight, registered once per stream;
    /// each frame only stores into its own clock.
    clocks: Mutex<Vec<Arc<StreamClock>>>,
    /// What the clocks count from.
    epoch: Instant,
}

/// Nanoseconds after `Activity::epoch` plus one at which the response
/// started to wait for the client; 0 while it waits for its guest.
struct StreamClock(AtomicU64);

impl Default for Activity {
    fn default() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
            clocks: Mutex::new(Vec::new()),
            epoch: Instant::now(),
        }
    }
}

/// What the read timer finds when it fires.
#[derive(Debug, PartialEq)]
enum Check {
    /// No request in flight for --idle-timeout.
    Idle,
    /// A response has waited for the client for --send-timeout.
    Stalled,
    /// Nothing yet: look again then.
    At(Instant),
}

impl Activity {
    /// Never further than --send-timeout away, so a stream that starts to
    /// wait between two checks is found when its time is up.
    fn check(&self, now: Instant, idle_timeout: Duration, send_timeout: Duration) -> Check {
        let next = now + send_timeout;
        if self.in_flight.load(Ordering::Relaxed) == 0 {
            let deadline =
                *self.idle_since.lock().unwrap_or_else(|e| e.into_inner()) + idle_timeout;
            return if deadline <= now {
                Check::Idle
            } else {
                Check::At(deadline.min(next))
            };
        }
        let clocks = self.clocks.lock().unwrap_or_else(|e| e.into_inner());
        let oldest = clocks
            .iter()
            .map(|c| c.0.load(Ordering::Relaxed))
            .filter(|&t| t > 0)
            .min();
        match oldest.map(|t| self.epoch + Duration::from_nanos(t - 1) + send_timeout) {
            Some(deadline) if deadline <= now => Check::Stalled,
            Some(deadline) => Check::At(deadline),
            None => Check::At(next),
        }
    }
}

/// One request in flight, from the service call until hyper drops the
/// response body (sent, or the stream reset).
struct Busy {
    activity: Arc<Activity>,
    clock: Arc<StreamClock>,
}

impl Busy {
    fn new(activity: &Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        let clock = Arc::new(StreamClock(AtomicU64::new(0)));
        activity
            .clocks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(clock.clone());
        Self {
            activity: activity.clone(),
            clock,
        }
    }

    /// `true`: the response has something the client must take now;
    /// `false`: it waits for the guest, or is done.
    fn waits_for_client(&self, yes: bool) {
        let since = match yes {
            true => self.activity.epoch.elapsed().as_nanos() as u64 + 1,
            false => 0,
        };
        self.clock.0.store(since, Ordering::Relaxed);
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let activity = &self.activity;
        activity
            .clocks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|c| !Arc::ptr_eq(c, &self.clock));
        *activity
            .idle_since
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Instant::now();
        activity.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its connection busy until it is done.
struct Tracked {
    body: HyperOutgoingBody,
    busy: Option<Busy>,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Some(busy) = &self.busy {
            // hyper asks for the next frame only once the client has room
            // for it: until then, the wait is the client's.
            busy.waits_for_client(matches!(polled, Poll::Ready(Some(Ok(_)))));
        }
        polled
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
    send_timeout: Duration,
    /// Made on the first write that has to wait, so a connection whose
    /// writes all go through (the common case) never pays for a timer.
    send_timer: Option<Pin<Box<Sleep>>>,
    /// The last write waited: `send_timer` runs.
    write_waits: bool,
}

impl<S> Guarded<S> {
    /// A write that made progress (`done`), or has to wait: then it fails
    /// once writes have waited for --send-timeout without any going through.
    fn wrote<T>(&mut self, cx: &mut Context<'_>, done: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if done.is_ready() {
            self.write_waits = false;
            return done;
        }
        let timeout = self.send_timeout;
        let timer = self
            .send_timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if !self.write_waits {
            self.write_waits = true;
            timer.as_mut().reset(Instant::now() + timeout);
        }
        if timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client took nothing of the response within --send-timeout",
            )));
        }
        Poll::Pending
    }

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
            let deadline = Instant::now() + self.idle_timeout.min(self.send_timeout);
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
        // Nothing to read: the wait is bounded by the timer (HTTP/2: also
        // the check for stalled streams).
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
            match this
                .activity
                .check(now, this.idle_timeout, this.send_timeout)
            {
                // Idle long enough: end of stream, hyper closes.
                Check::Idle => return Poll::Ready(Ok(())),
                Check::Stalled => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "a response waited for the client's flow-control window for --send-timeout",
                    )));
                }
                Check::At(deadline) => this.timer.as_mut().reset(deadline),
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
        let this = self.get_mut();
        let done = Pin::new(&mut this.io).poll_write(cx, buf);
        this.wrote(cx, done)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let done = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.wrote(cx, done)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let done = Pin::new(&mut this.io).poll_flush(cx);
        this.wrote(cx, done)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let done = Pin::new(&mut this.io).poll_shutdown(cx);
        this.wrote(cx, done)
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
            activity: Arc::new(Activity::default()),
            idle_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(30),
            send_timer: None,
            write_waits: false,
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
        let activity = Arc::new(Activity::default());
        let (idle, send) = (Duration::from_secs(5), Duration::from_secs(3));
        let now = Instant::now();
        assert!(matches!(activity.check(now, idle, send), Check::At(_)));
        assert_eq!(activity.check(now + idle, idle, send), Check::Idle);
        let busy = Busy::new(&activity);
        assert_eq!(
            activity.check(now + idle, idle, send),
            Check::At(now + idle + send)
        );
        drop(busy);
        let later = Instant::now();
        let Check::At(deadline) = activity.check(later, idle, send) else {
            panic!("idle right after a request");
        };
        assert_eq!(deadline, later + send);
        let Check::At(deadline) = activity.check(later, idle, idle * 2) else {
            panic!("idle right after a request");
        };
        assert!(deadline > later + Duration::from_secs(4));
    }

    #[test]
    fn a_response_stalls_only_while_it_waits_for_the_client() {
        let activity = Arc::new(Activity::default());
        let (idle, send) = (Duration::from_secs(60), Duration::from_secs(3));
        // A response that waited for the client, then for its guest again,
        // never stalls the connection.
        let guest_slow = Busy::new(&activity);
        guest_slow.waits_for_client(true);
        guest_slow.waits_for_client(false);
        let start = Instant::now();
        assert!(matches!(
            activity.check(start + send * 2, idle, send),
            Check::At(_)
        ));
        // One the client takes nothing of does, after --send-timeout.
        let client_slow = Busy::new(&activity);
        client_slow.waits_for_client(true);
        let waited = Instant::now();
        assert!(matches!(activity.check(waited, idle, send), Check::At(d) if d <= waited + send));
        assert_eq!(activity.check(waited + send, idle, send), Check::Stalled);
        // Taking a frame starts its clock again; being done stops it.
        std::thread::sleep(Duration::from_millis(2));
        client_slow.waits_for_client(true);
        let now = Instant::now();
        assert!(matches!(
            activity.check(now + send / 2, idle, send),
            Check::At(_)
        ));
        drop(client_slow);
        let later = start + send * 10;
        assert_eq!(activity.check(later, idle, send), Check::At(later + send));
    }
}
