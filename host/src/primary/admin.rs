//! The admin endpoint (--admin ADDR), served by the primary without
//! touching guest code: /healthz, /readyz, /metrics and /status.
//!
//! /healthz and /readyz read a watch the shell updates after every input,
//! so they answer even while the shell is busy, and /readyz turns 503 the
//! moment SIGTERM is handled. /metrics and /status go through the core like
//! `wcluster status`, which asks every worker for fresh counts first.

use std::convert::Infallible;
use std::net::SocketAddr;

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};

use super::control::Request as ControlRequest;
use super::control::protocol::{Reply, Request};
use super::metrics;

/// What the load balancer's probes read: (ready, healthy).
pub type Health = watch::Receiver<(bool, bool)>;

/// Binds the admin address (before any worker starts, so a taken port is a
/// start-up error) and serves it.
pub fn serve(
    addr: SocketAddr,
    health: Health,
    requests: mpsc::UnboundedSender<ControlRequest>,
) -> Result<SocketAddr> {
    let std = std::net::TcpListener::bind(addr)
        .with_context(|| format!("cannot listen on {addr} (--admin)"))?;
    std.set_nonblocking(true)?;
    let listener = TcpListener::from_std(std)?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            };
            let (health, requests) = (health.clone(), requests.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (health, requests) = (health.clone(), requests.clone());
                    async move { Ok::<_, Infallible>(route(req.uri().path(), &health, &requests).await) }
                });
                hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(std::time::Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), svc)
                    .await
                    .ok();
            });
        }
    });
    Ok(bound)
}

async fn route(
    path: &str,
    health: &Health,
    requests: &mpsc::UnboundedSender<ControlRequest>,
) -> Response<Full<Bytes>> {
    let (ready, healthy) = *health.borrow();
    match path {
        "/healthz" => probe(healthy),
        "/readyz" => probe(ready),
        "/metrics" => match ask(requests, Request::Metrics).await {
            Some(Reply::Metrics(m)) => respond(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                metrics::render(&m),
            ),
            _ => unavailable(),
        },
        "/status" => match ask(requests, Request::Status).await {
            Some(reply @ Reply::Status(_)) => respond(
                StatusCode::OK,
                "application/json",
                serde_json::to_string(&reply).unwrap_or_default(),
            ),
            _ => unavailable(),
        },
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

async fn ask(requests: &mpsc::UnboundedSender<ControlRequest>, request: Request) -> Option<Reply> {
    let (tx, rx) = oneshot::channel();
    requests.send((request, tx)).ok()?;
    rx.await.ok()
}

fn probe(ok: bool) -> Response<Full<Bytes>> {
    if ok {
        respond(StatusCode::OK, "text/plain", "ok\n".into())
    } else {
        unavailable()
    }
}

fn unavailable() -> Response<Full<Bytes>> {
    respond(
        StatusCode::SERVICE_UNAVAILABLE,
        "text/plain",
        "not ready\n".into(),
    )
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    resp
}
