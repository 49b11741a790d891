//! The admin endpoint (--admin ADDR), served by the primary without
//! touching guest code: /healthz, /readyz, /metrics and /status.
//!
//! /healthz and /readyz read a watch the shell updates after every input,
//! so they answer even while the shell is busy, and /readyz turns 503 the
//! moment SIGTERM is handled. /metrics and /status go through the core like
//! `wcluster status`, which asks every worker for fresh counts first.
//!
//! It may face a network (a pod's probes come from the node), so it answers
//! GET and HEAD only, /status (pids, paths) only to the --admin-token-file
//! token, and holds at most --admin-max-connections at once, each with short
//! timeouts: idle admin clients cannot use up the descriptors the main port
//! needs. At the cap a new client is taken and the oldest idle one closed,
//! so idle clients cannot keep a load balancer's probe out either.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{Method, Response, StatusCode, header};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};

use super::control::Request as ControlRequest;
use super::control::protocol::{Reply, Request};
use super::metrics;
use crate::config::admin::{Admin, token_matches};

/// Time a client has to send a request's headers, also between requests.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest an admin connection stays open, whatever it does.
const CONNECTION_TIME: Duration = Duration::from_secs(60);

/// What the load balancer's probes read: (ready, healthy).
pub type Health = watch::Receiver<(bool, bool)>;

/// Binds the admin address (before any worker starts, so a taken port is a
/// start-up error) and serves it.
pub fn serve(
    admin: &Admin,
    health: Health,
    requests: mpsc::UnboundedSender<ControlRequest>,
) -> Result<SocketAddr> {
    let addr = admin.addr;
    let std = std::net::TcpListener::bind(addr)
        .with_context(|| format!("cannot listen on {addr} (--admin)"))?;
    std.set_nonblocking(true)?;
    let listener = TcpListener::from_std(std)?;
    let bound = listener.local_addr()?;
    let max = admin.max_connections;
    let token: Option<Arc<str>> = admin.token.as_deref().map(Into::into);
    tokio::spawn(async move {
        let mut open: VecDeque<Open> = VecDeque::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            open.retain(|c| !c.task.is_finished());
            if open.len() >= max {
                // The oldest connection not serving a request makes room:
                // idle clients must not keep a probe out.
                match open.iter().position(|c| !c.busy.load(Ordering::Relaxed)) {
                    Some(i) => open.remove(i).expect("found above").task.abort(),
                    None => continue, // all busy: the newcomer is closed
                }
            }
            let busy = Arc::new(AtomicBool::new(false));
            let task = tokio::spawn(connection(
                stream,
                busy.clone(),
                token.clone(),
                health.clone(),
                requests.clone(),
            ));
            open.push_back(Open {
                busy,
                task: task.abort_handle(),
            });
        }
    });
    Ok(bound)
}

/// An admin connection being served.
struct Open {
    /// A request is being answered (it is not closed to make room).
    busy: Arc<AtomicBool>,
    task: tokio::task::AbortHandle,
}

async fn connection(
    stream: tokio::net::TcpStream,
    busy: Arc<AtomicBool>,
    token: Option<Arc<str>>,
    health: Health,
    requests: mpsc::UnboundedSender<ControlRequest>,
) {
    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let (health, requests, token, busy) = (
            health.clone(),
            requests.clone(),
            token.clone(),
            busy.clone(),
        );
        async move {
            busy.store(true, Ordering::Relaxed);
            let resp = route(&req, token.as_deref(), &health, &requests).await;
            busy.store(false, Ordering::Relaxed);
            Ok::<_, Infallible>(resp)
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), svc);
    tokio::time::timeout(CONNECTION_TIME, conn).await.ok();
}

async fn route<B>(
    req: &hyper::Request<B>,
    token: Option<&str>,
    health: &Health,
    requests: &mpsc::UnboundedSender<ControlRequest>,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "the admin endpoint answers GET and HEAD only\n".into(),
        );
        resp.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    let (ready, healthy) = *health.borrow();
    match req.uri().path() {
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
        "/status" => {
            if let Some(refused) = authorize(req, token) {
                return refused;
            }
            match ask(requests, Request::Status).await {
                Some(reply @ Reply::Status(_)) => respond(
                    StatusCode::OK,
                    "application/json",
                    serde_json::to_string(&reply).unwrap_or_default(),
                ),
                _ => unavailable(),
            }
        }
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// None when the request carries the token; else the refusal to send.
fn authorize<B>(req: &hyper::Request<B>, token: Option<&str>) -> Option<Response<Full<Bytes>>> {
    let Some(token) = token else {
        return Some(respond(
            StatusCode::FORBIDDEN,
            "text/plain",
            "/status is served only with --admin-token-file (it shows pids and paths)\n".into(),
        ));
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if token_matches(token, given.trim()) {
        return None;
    }
    let mut resp = respond(
        StatusCode::UNAUTHORIZED,
        "text/plain",
        "/status needs `Authorization: Bearer TOKEN` (the --admin-token-file token)\n".into(),
    );
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    Some(resp)
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
