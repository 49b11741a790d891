//! The skeleton every guest call runs in, whatever its ABI (p2.rs, p3.rs,
//! cgi.rs): a task of its own under the request deadline (`spawn`), its end
//! (`settle`: `on_done`, and the outcome for the body's guard), waiting for
//! the response head (`response`), the guarded body, and the epoch yield.
//! Also the request and error types a call shares with the worker. Each
//! ABI only builds its call; this module depends on none of them.

use wasmtime::{Store, UpdateDeadline};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

/// Why a request produced no guest response.
#[derive(Debug)]
pub enum GuestError {
    /// The deadline passed before the guest set a response.
    Timeout,
    /// The guest trapped, or could not be run.
    Failed(wasmtime::Error),
    /// The guest returned without setting a response.
    NoResponse,
    /// A CGI module's output was not a valid response (502).
    BadGateway(String),
    /// The request body could not be given whole (413 or 400): the guest
    /// was stopped rather than shown a truncated body as complete.
    RequestBody(BodyError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// Longer than --max-body (a chunked body; a declared length over it
    /// never reaches a guest).
    TooLarge,
    /// The client broke the framing (a bad chunk) or went away mid-body.
    Malformed,
}

impl GuestError {
    /// One line saying why, for the log and a response body's guard.
    pub fn reason(&self) -> String {
        match self {
            GuestError::Timeout => "ran past the request deadline".to_string(),
            GuestError::Failed(e) => e.root_cause().to_string(),
            GuestError::BadGateway(why) => why.clone(),
            GuestError::NoResponse => "the handler returned without setting a response".to_string(),
            GuestError::RequestBody(BodyError::TooLarge) => {
                "the request body went over --max-body".to_string()
            }
            GuestError::RequestBody(BodyError::Malformed) => {
                "the request body was malformed or cut short".to_string()
            }
        }
    }
}

/// What a request body must be for a guest to read it (hyper's `Incoming`,
/// or an empty body for the smoke check).
pub trait RequestBody:
    hyper::body::Body<Data = bytes::Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
    + Send
    + Unpin
    + 'static
{
}

impl<B> RequestBody for B
where
    B: hyper::body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
}

/// Where a request came from and arrived at, for CGI's REMOTE_ADDR etc.,
/// and whether it came over TLS (the scheme guests see: `https`, HTTPS=on).
#[derive(Clone, Copy, Debug)]
pub struct ConnInfo {
    pub peer: Option<std::net::SocketAddr>,
    pub local: Option<std::net::SocketAddr>,
    pub tls: bool,
}

/// Where a manifest mounted the handler a request reached (`/api` for
/// `route = "/api/..."`), and the rest of the path: request headers the
/// worker sets (and drops when a client sent them), which CGI modules get
/// as SCRIPT_NAME and PATH_INFO too.
pub const MOUNT_HEADER: &str = "x-wcluster-mount";
pub const PATH_INFO_HEADER: &str = "x-wcluster-path-info";

/// Whether the request arrived over TLS.
pub fn is_tls<B>(req: &hyper::Request<B>) -> bool {
    req.extensions().get::<ConnInfo>().is_some_and(|c| c.tls)
}

/// A guest's response body, ended with an error instead of cleanly when the
/// guest failed after sending its headers (a trap mid-body, the deadline):
/// the client must see a truncated response, never a complete-looking one.
pub struct GuardedBody {
    inner: HyperOutgoingBody,
    outcome: Option<Outcome>,
}

impl GuardedBody {
    pub fn new(inner: HyperOutgoingBody, outcome: Outcome) -> Self {
        Self {
            inner,
            outcome: Some(outcome),
        }
    }
}

impl hyper::body::Body for GuardedBody {
    type Data = bytes::Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        use std::task::{Poll, ready};
        let this = self.get_mut();
        match ready!(std::pin::Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(frame) => Poll::Ready(Some(frame)),
            None => {
                let Some(outcome) = this.outcome.as_mut() else {
                    return Poll::Ready(None);
                };
                let result = ready!(std::pin::Pin::new(outcome).poll(cx));
                this.outcome = None;
                match result {
                    Ok(Err(why)) => {
                        tracing::warn!("handler failed after its response started: {why}");
                        Poll::Ready(Some(Err(wasmtime_wasi_http::Error::InternalError(Some(
                            why,
                        )))))
                    }
                    _ => Poll::Ready(None),
                }
            }
        }
    }
}

/// A guest call's task.
pub type GuestTask = tokio::task::JoinHandle<Result<(), GuestError>>;
/// How a guest call ended, for its response body's guard: `Err(why)` if it
/// failed after its response started.
pub type Outcome = tokio::sync::oneshot::Receiver<Result<(), String>>;

/// Runs `guest`, the ABI's part of a call, on a task of its own until
/// `deadline`; then runs `on_done` and tells the response body's guard how
/// it ended (the returned receiver).
pub fn spawn(
    deadline: tokio::time::Instant,
    guest: impl Future<Output = Result<(), GuestError>> + Send + 'static,
    on_done: impl FnOnce() + Send + 'static,
) -> (GuestTask, Outcome) {
    let (outcome_tx, outcome_rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let result = match tokio::time::timeout_at(deadline, guest).await {
            Ok(result) => result,
            Err(_) => Err(GuestError::Timeout),
        };
        settle(result, on_done, outcome_tx)
    });
    (task, outcome_rx)
}

/// The end of a guest's request task: `on_done`, and the outcome its
/// response body's guard waits for.
fn settle(
    result: Result<(), GuestError>,
    on_done: impl FnOnce(),
    outcome: tokio::sync::oneshot::Sender<Result<(), String>>,
) -> Result<(), GuestError> {
    on_done();
    outcome
        .send(result.as_ref().map_err(GuestError::reason).copied())
        .ok();
    result
}

/// Waits until `deadline` for the response a guest's task sends on `rx`
/// (or the error code it answered with); when none comes, the task's
/// result says why. The body is guarded by the task's outcome.
pub async fn response<E: std::fmt::Debug>(
    deadline: tokio::time::Instant,
    rx: tokio::sync::oneshot::Receiver<Result<hyper::Response<HyperOutgoingBody>, E>>,
    task: GuestTask,
    outcome: Outcome,
) -> Result<hyper::Response<HyperOutgoingBody>, GuestError> {
    use http_body_util::BodyExt;
    match tokio::time::timeout_at(deadline, rx).await {
        Ok(Ok(Ok(resp))) => Ok(resp.map(|body| GuardedBody::new(body, outcome).boxed_unsync())),
        Ok(Ok(Err(code))) => Err(GuestError::Failed(wasmtime::format_err!(
            "guest answered with error {code:?}"
        ))),
        Ok(Err(_)) => match task.await {
            Ok(Err(e)) => Err(e),
            Ok(Ok(())) => Err(GuestError::NoResponse),
            Err(e) => Err(GuestError::Failed(wasmtime::format_err!(
                "the request task failed: {e}"
            ))),
        },
        Err(_) => {
            task.abort();
            Err(GuestError::Timeout)
        }
    }
}

/// Makes a busy guest yield to the worker's other requests at every epoch
/// tick; the deadline itself is a tokio timeout around the whole call.
/// tokio's `yield_now` (not a plain wake) lets the I/O driver run first, so
/// a guest in `loop {}` cannot starve the worker's sockets.
/// Store data with memory limits of its own (a handler's `max_memory`).
pub trait Limited {
    fn limits(&mut self) -> &mut wasmtime::StoreLimits;
}

/// A new store of a handler: memory bounded by the handler's limit, and
/// yielding at every epoch tick.
pub fn prepare_store<T: Limited + 'static>(store: &mut Store<T>) {
    store.limiter(|s| s.limits());
    yield_at_every_tick(store);
}

fn yield_at_every_tick<T>(store: &mut Store<T>) {
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|_| {
        Ok(UpdateDeadline::YieldCustom(
            1,
            Box::pin(tokio::task::yield_now()),
        ))
    });
}
