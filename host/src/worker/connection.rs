//! One client connection, received as an fd: HTTP/1.1 with keep-alive, or
//! HTTP/2 (h2c), served by hyper-util with the header read timeout.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::sync::Semaphore;

use super::service::{self, WorkerCtx};
use crate::runtime::guest::ConnInfo;

pub fn serve(
    ctx: &Arc<WorkerCtx>,
    fd: OwnedFd,
    graceful: &GracefulShutdown,
    slots: &Arc<Semaphore>,
) {
    let Ok(permit) = slots.clone().try_acquire_owned() else {
        tracing::warn!(
            worker = ctx.index,
            "connection refused: {} connections open (--max-connections)",
            ctx.limits.max_connections
        );
        return; // dropping the fd closes the connection
    };
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
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(ctx.limits.header_timeout)
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    let svc_ctx = ctx.clone();
    let info = ConnInfo {
        peer: stream.peer_addr().ok(),
        local: stream.local_addr().ok(),
    };
    let conn = builder
        .serve_connection(
            TokioIo::new(stream),
            service_fn(move |mut req| {
                req.extensions_mut().insert(info);
                service::handle(svc_ctx.clone(), req)
            }),
        )
        .into_owned();
    let conn = graceful.watch(conn);
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("connection ended with an error: {e}");
        }
        drop(permit);
    });
}
