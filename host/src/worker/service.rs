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
use super::app::{LoadedApp, Mounted};
use super::metrics::Counters;
use crate::config::RequestLimits;
use crate::config::routes::Match;
use crate::ipc::WorkerCounts;
use crate::ipc::counts::FailureKind;
use crate::runtime::guest::{BodyError, GuestError, MOUNT_HEADER, PATH_INFO_HEADER};

const MOUNT: header::HeaderName = header::HeaderName::from_static(MOUNT_HEADER);
const PATH_INFO: header::HeaderName = header::HeaderName::from_static(PATH_INFO_HEADER);

pub struct WorkerCtx {
    pub index: usize,
    pid: u32,
    pub limits: RequestLimits,
    /// Swapped whole by a deploy; a request clones the Arc it started with,
    /// so requests in flight finish on the version (and the routing table)
    /// they began on.
    app: RwLock<Arc<LoadedApp>>,
    pub requests: Arc<Requests>,
    pub counters: Counters,
    next_request: AtomicU64,
    /// Set when the worker drains: HTTP/1 responses carry `Connection:
    /// close`, so keep-alive clients move to another worker cleanly.
    draining: AtomicBool,
}

impl WorkerCtx {
    pub fn new(index: usize, app: LoadedApp, limits: RequestLimits) -> Self {
        Self {
            index,
            pid: std::process::id(),
            app: RwLock::new(Arc::new(app)),
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

    pub fn app(&self) -> Arc<LoadedApp> {
        self.app.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn swap(&self, app: LoadedApp) {
        *self.app.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(app);
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
    let app = ctx.app();
    let (mut resp, handler) = respond(&ctx, &app, req, start, &request_id).await;
    if http1 && ctx.draining.load(Ordering::Relaxed) {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let name = handler.map(|m| &*m.name);
    ctx.counters
        .request(name, &method, resp.status().as_u16(), start.elapsed());
    tracing::info!(
        target: "access",
        worker = ctx.index,
        pid = ctx.pid,
        version = %handler.map_or(app.id.as_str(), |m| m.handler.version.as_str()),
        handler = name.unwrap_or("-"),
        request = %request_id,
        method = %method,
        path = %path,
        status = resp.status().as_u16(),
        // A number, as log pipelines expect; microsecond precision.
        duration_ms = (start.elapsed().as_micros() as f64) / 1000.0,
    );
    Ok(resp)
}

/// The response, and the handler the request reached (None: it was
/// refused before one was chosen).
async fn respond<'a>(
    ctx: &WorkerCtx,
    app: &'a LoadedApp,
    mut req: hyper::Request<Incoming>,
    start: Instant,
    request_id: &Arc<str>,
) -> (hyper::Response<HyperOutgoingBody>, Option<&'a Mounted>) {
    // One final `chunked` is the only transfer coding a request may carry
    // here: anything else (duplicated, not final, unknown) is how request
    // smuggling starts, so it is refused and the connection closed.
    if let Some(te) = transfer_coding_problem(req.headers()) {
        let mut resp = error(StatusCode::BAD_REQUEST, format!("{te}\n"));
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return (resp, None);
    }
    // Host missing, repeated or invalid: refused before any guest runs.
    if let Some((status, why)) = super::edge::host_problem(&req) {
        return (error(status, format!("{why}\n")), None);
    }
    let Some((mounted, m)) = app.route(super::edge::request_host(&req), req.uri().path()) else {
        return (
            error(
                StatusCode::NOT_FOUND,
                "no route matches this request\n".into(),
            ),
            None,
        );
    };
    mount(&mut req, &m, app.manifest);
    (
        run(ctx, mounted, req, start, request_id).await,
        Some(mounted),
    )
}

/// Tells a manifest's handler where it was mounted; without a manifest
/// there is no mount. Either way, what a client sent in these headers never
/// reaches the guest (`insert` replaces every value it sent).
fn mount<B>(req: &mut hyper::Request<B>, m: &Match<'_>, manifest: bool) {
    if !manifest {
        let headers = req.headers_mut();
        headers.remove(MOUNT);
        headers.remove(PATH_INFO);
        return;
    }
    let path = req.uri().path();
    // Both come from a path hyper accepted, so they are valid values.
    let values = (
        HeaderValue::from_str(m.mount),
        HeaderValue::from_str(m.path_info(path)),
    );
    let headers = req.headers_mut();
    match values {
        (Ok(mount), Ok(info)) => {
            headers.insert(MOUNT, mount);
            headers.insert(PATH_INFO, info);
        }
        _ => {
            headers.remove(MOUNT);
            headers.remove(PATH_INFO);
        }
    }
}

async fn run(
    ctx: &WorkerCtx,
    mounted: &Mounted,
    req: hyper::Request<Incoming>,
    start: Instant,
    request_id: &Arc<str>,
) -> hyper::Response<HyperOutgoingBody> {
    let (limits, handler) = (&mounted.limits, &mounted.handler);
    let server = &ctx.limits;
    // The wait for a turn counts toward the deadline (`start` is before it).
    let permit = match ctx.requests.admit(start + limits.timeout).await {
        Ok(permit) => permit,
        Err(why) => {
            let why = match why {
                Refused::QueueFull => format!("{} requests already waiting", server.max_queued),
                Refused::Waited => format!("no turn within {:?}", server.queue_timeout),
            };
            let mut resp = error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "worker busy: {} requests in flight, {why}\n",
                    server.max_concurrent
                ),
            );
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return resp;
        }
    };
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
    let failure = |kind| ctx.counters.guest_failure(&mounted.name, kind);
    match result {
        Ok(resp) => resp,
        Err(GuestError::Timeout) => {
            failure(FailureKind::Deadline);
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
            failure(FailureKind::BadGateway);
            tracing::warn!(request = %request_id, "CGI handler gave no valid response: {why}");
            error(
                StatusCode::BAD_GATEWAY,
                "handler gave no valid response\n".to_string(),
            )
        }
        Err(GuestError::NoResponse) => {
            failure(FailureKind::NoResponse);
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
            failure(FailureKind::Trap);
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
