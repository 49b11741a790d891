//! One request: admission (a turn under --max-concurrent, admission.rs;
//! body size), the guest call with its deadline, error responses, and the
//! access log line.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use super::admission::{Refused, Requests};
use super::metrics::Counters;
use crate::config::RequestLimits;
use crate::ipc::WorkerCounts;
use crate::ipc::counts::FailureKind;
use crate::runtime::guest::{BodyError, GuestError, Handler};

pub struct WorkerCtx {
    pub index: usize,
    pid: u32,
    pub limits: RequestLimits,
    /// Swapped whole by a deploy; a request clones the Arc it started with,
    /// so requests in flight finish on the version they began on.
    handler: RwLock<Arc<Handler>>,
    pub requests: Arc<Requests>,
    pub counters: Counters,
    next_request: AtomicU64,
    /// Set when the worker drains: HTTP/1 responses carry `Connection:
    /// close`, so keep-alive clients move to another worker cleanly.
    draining: AtomicBool,
}

impl WorkerCtx {
    pub fn new(index: usize, handler: Handler, limits: RequestLimits) -> Self {
        Self {
            index,
            pid: std::process::id(),
            handler: RwLock::new(Arc::new(handler)),
            requests: Arc::new(Requests::new(&limits)),
            counters: Counters::default(),
            limits,
            next_request: AtomicU64::new(1),
            draining: AtomicBool::new(false),
        }
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub fn handler(&self) -> Arc<Handler> {
        self.handler
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn swap(&self, handler: Handler) {
        *self.handler.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(handler);
    }

    /// What `Stats` reports: requests started, in flight, and the counters.
    pub fn stats(&self, open_connections: usize) -> (u64, u32, WorkerCounts) {
        (
            self.next_request.load(Ordering::Relaxed) - 1,
            self.requests.in_flight() as u32,
            self.counters
                .snapshot(open_connections, self.requests.rejected()),
        )
    }
}

pub async fn handle(
    ctx: Arc<WorkerCtx>,
    req: hyper::Request<Incoming>,
) -> Result<hyper::Response<HyperOutgoingBody>, Infallible> {
    let start = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let http1 = req.version() < http::Version::HTTP_2;
    let n = ctx.next_request.fetch_add(1, Ordering::Relaxed);
    let request_id: Arc<str> = format!("{}-{n}", ctx.index).into();
    let handler = ctx.handler();
    let mut resp = respond(&ctx, &handler, req, start, &request_id).await;
    if http1 && ctx.draining.load(Ordering::Relaxed) {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    ctx.counters
        .request(&method, resp.status().as_u16(), start.elapsed());
    tracing::info!(
        target: "access",
        worker = ctx.index,
        pid = ctx.pid,
        version = %handler.version,
        request = %request_id,
        method = %method,
        path = %path,
        status = resp.status().as_u16(),
        // A number, as log pipelines expect; microsecond precision.
        duration_ms = (start.elapsed().as_micros() as f64) / 1000.0,
    );
    Ok(resp)
}

async fn respond(
    ctx: &WorkerCtx,
    handler: &Handler,
    req: hyper::Request<Incoming>,
    start: Instant,
    request_id: &Arc<str>,
) -> hyper::Response<HyperOutgoingBody> {
    let limits = &ctx.limits;
    // The wait for a turn counts toward the deadline (`start` is before it).
    let permit = match ctx.requests.admit(start + limits.timeout).await {
        Ok(permit) => permit,
        Err(why) => {
            let why = match why {
                Refused::QueueFull => format!("{} requests already waiting", limits.max_queued),
                Refused::Waited => format!("no turn within {:?}", limits.queue_timeout),
            };
            let mut resp = error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "worker busy: {} requests in flight, {why}\n",
                    limits.max_concurrent
                ),
            );
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return resp;
        }
    };
    // One final `chunked` is the only transfer coding a request may carry
    // here: anything else (duplicated, not final, unknown) is how request
    // smuggling starts, so it is refused and the connection closed.
    if let Some(te) = transfer_coding_problem(req.headers()) {
        let mut resp = error(StatusCode::BAD_REQUEST, format!("{te}\n"));
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return resp;
    }
    // Host missing, repeated or invalid: refused before any guest runs.
    if let Some((status, why)) = super::edge::host_problem(&req) {
        return error(status, format!("{why}\n"));
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limits.max_body) {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body over the limit of {} bytes\n", limits.max_body),
        );
    }
    let deadline = start + limits.timeout;
    let result = handler
        .handle(
            req,
            limits.max_body,
            request_id.clone(),
            deadline,
            move || drop(permit),
        )
        .await;
    match result {
        Ok(resp) => resp,
        Err(GuestError::Timeout) => {
            ctx.counters.guest_failure(FailureKind::Deadline);
            tracing::warn!(request = %request_id, "handler exceeded the request deadline of {:?}", limits.timeout);
            error(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "handler exceeded the request deadline of {:?}\n",
                    limits.timeout
                ),
            )
        }
        Err(GuestError::RequestBody(why)) => {
            tracing::info!(request = %request_id, "request refused: {}", GuestError::RequestBody(why).reason());
            match why {
                BodyError::TooLarge => error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("request body over the limit of {} bytes\n", limits.max_body),
                ),
                BodyError::Malformed => error(
                    StatusCode::BAD_REQUEST,
                    "malformed request body\n".to_string(),
                ),
            }
        }
        Err(GuestError::BadGateway(why)) => {
            ctx.counters.guest_failure(FailureKind::BadGateway);
            tracing::warn!(request = %request_id, "CGI handler gave no valid response: {why}");
            error(
                StatusCode::BAD_GATEWAY,
                "handler gave no valid response\n".to_string(),
            )
        }
        Err(GuestError::NoResponse) => {
            ctx.counters.guest_failure(FailureKind::NoResponse);
            tracing::warn!(request = %request_id, "handler failed: {}", GuestError::NoResponse.reason());
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "handler failed\n".to_string(),
            )
        }
        Err(GuestError::Failed(e)) => {
            // One line per failure; the guest's backtrace only at debug level.
            let cause = e.root_cause().to_string();
            let cause = cause.lines().next().unwrap_or_default();
            ctx.counters.guest_failure(FailureKind::Trap);
            tracing::warn!(request = %request_id, "handler failed: {cause}");
            tracing::debug!(request = %request_id, "handler failure in full: {e:?}");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "handler failed\n".to_string(),
            )
        }
    }
}

fn transfer_coding_problem(headers: &http::HeaderMap) -> Option<String> {
    let mut codings = Vec::new();
    for value in headers.get_all(header::TRANSFER_ENCODING) {
        let Ok(v) = value.to_str() else {
            return Some("unreadable Transfer-Encoding".into());
        };
        codings.extend(v.split(',').map(|c| c.trim().to_ascii_lowercase()));
    }
    match codings.as_slice() {
        [] => None,
        [only] if only == "chunked" => None,
        _ => Some(format!(
            "unsupported Transfer-Encoding: {}",
            codings.join(", ")
        )),
    }
}

fn error(status: StatusCode, msg: String) -> hyper::Response<HyperOutgoingBody> {
    let body = Full::new(Bytes::from(msg))
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut resp = hyper::Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
