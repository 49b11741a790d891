//! wasi:http/service@0.3.0 components (WASI 0.3): `handle` is an async
//! function, bodies are streams and trailers futures, all driven by the
//! store's concurrent event loop. The same `GuestState`, grants and limits as
//! the 0.2 components in component.rs.
//!
//! Instances are reused by default, as `wasmtime serve -Sp3` and Spin do:
//! one request at a time from the same pool as 0.2 instances (`handle`),
//! or, with `--max-instance-concurrency` above 1, several at once through
//! wasmtime-wasi-http's `ProxyHandler`, what `wasmtime serve` uses
//! (`Shared`). `--reuse-instances 0` gives a fresh instance per request.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use wasmtime::component::TaskGroupId;
use wasmtime::{Engine, Store, StoreContextMut};
use wasmtime_wasi_http::WasiBody;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::handler::{
    HandlerState, Instance, ProxyHandler, ProxyPre, ShouldAccept, WorkerExpiration, WorkerState,
    WorkerStatus,
};
use wasmtime_wasi_http::p3::bindings::{Service, ServicePre};

use super::call::{self, GuestError, RequestBody};
use super::component::{GuestState, LimitedBody};
use super::pool::{Checkout, Instances};

/// The request as a 0.3 guest sees it: an absolute URI, as 0.2 guests get
/// their authority from `Host` (wasi-http strips `Host` itself).
fn absolute<B>(req: hyper::Request<B>) -> hyper::Request<B> {
    let scheme = if call::is_tls(&req) { "https" } else { "http" };
    let (mut parts, body) = req.into_parts();
    if parts.uri.authority().is_none() {
        let host = parts
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string);
        if let Some(host) = host {
            let path = parts
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string();
            if let Ok(uri) = format!("{scheme}://{host}{path}").parse() {
                parts.uri = uri;
            }
        }
    }
    hyper::Request::from_parts(parts, body)
}

/// Runs one request in an instance from `instances`, until `deadline`.
/// The store keeps running after the response head, streaming the body and
/// trailers, until the guest's tasks have finished; `on_done` runs then,
/// whatever the outcome, and a reused instance goes back only if they
/// finished well.
#[allow(clippy::too_many_arguments)]
pub async fn handle<B>(
    pre: &ServicePre<GuestState>,
    instances: &Arc<Instances<Service>>,
    state: impl FnOnce() -> Result<GuestState, GuestError>,
    request_id: &Arc<str>,
    req: hyper::Request<B>,
    body_limit: u64,
    deadline: Instant,
    on_done: impl FnOnce() + Send + 'static,
) -> Result<hyper::Response<WasiBody>, GuestError>
where
    B: RequestBody,
{
    let Checkout {
        mut store,
        instance,
        lease,
    } = instances.checkout(pre.engine(), request_id, state)?;
    let req = absolute(req)
        .map(|body| LimitedBody(http_body_util::Limited::new(body, body_limit as usize)));
    let (request, request_io) =
        wasmtime_wasi_http::p3::Request::from_http(store.data_mut().http().hooks, req);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let pre = pre.clone();
    let guest = async move {
        let run = async {
            let service = match instance {
                Some(s) => s,
                None => pre.instantiate_async(&mut store).await?,
            };
            let guest = &service;
            store
                .run_concurrent(async move |acc| {
                    let answer = match guest.handle(acc, request).await? {
                        Ok(resp) => Ok(acc.with(|s| resp.into_http(s, request_io))?),
                        Err(code) => Err(code),
                    };
                    tx.send(answer).ok();
                    // The body and trailers are pumped by this event loop.
                    std::future::poll_fn(|cx| acc.poll_no_interesting_tasks(cx)).await;
                    Ok::<_, wasmtime::Error>(())
                })
                .await??;
            Ok::<_, wasmtime::Error>(service)
        };
        let service = run.await.map_err(GuestError::Failed)?;
        lease.give_back(store, service);
        Ok(())
    };
    let deadline = tokio::time::Instant::from_std(deadline);
    let (task, outcome) = call::spawn(deadline, guest, on_done);
    call::response(deadline, rx, task, outcome).await
}

/// Concurrent reuse: instances that serve a number of requests drawn in
/// `lifetime`, `concurrency` at once, each request under its own deadline.
pub struct Shared {
    handler: ProxyHandler<SharedInstances>,
}

struct SharedInstances {
    pre: ServicePre<GuestState>,
    engine: Engine,
    make: Arc<dyn Fn() -> Result<GuestState, GuestError> + Send + Sync>,
    lifetime: (u32, u32),
    concurrency: usize,
    request_timeout: Duration,
}

impl Shared {
    pub fn new(
        pre: ServicePre<GuestState>,
        make: Arc<dyn Fn() -> Result<GuestState, GuestError> + Send + Sync>,
        lifetime: (u32, u32),
        concurrency: u32,
        request_timeout: Duration,
    ) -> Self {
        let engine = pre.engine().clone();
        Self {
            handler: ProxyHandler::new(SharedInstances {
                pre,
                engine,
                make,
                lifetime,
                concurrency: concurrency.max(1) as usize,
                request_timeout,
            }),
        }
    }

    pub async fn handle<B>(
        &self,
        req: hyper::Request<B>,
        body_limit: u64,
        request_id: Arc<str>,
        deadline: Instant,
        on_done: impl FnOnce() + Send + 'static,
    ) -> Result<hyper::Response<WasiBody>, GuestError>
    where
        B: RequestBody,
    {
        let req = absolute(req).map(|body| {
            LimitedBody(http_body_util::Limited::new(body, body_limit as usize)).boxed_unsync()
        });
        let call = self
            .handler
            .handle((tokio::time::Instant::from_std(deadline), request_id), req);
        let result =
            match tokio::time::timeout_at(tokio::time::Instant::from_std(deadline), call).await {
                Ok(Ok(resp)) => Ok(resp),
                // Expired, or the instance was dropped because a request ran
                // past its deadline (a loop keeps the inner timer from firing).
                Ok(Err(e))
                    if e.is::<wasmtime_wasi_http::handler::ExpirationError>()
                        || Instant::now() + Duration::from_millis(50) >= deadline =>
                {
                    Err(GuestError::Timeout)
                }
                Ok(Err(e)) => Err(GuestError::Failed(e)),
                Err(_) => Err(GuestError::Timeout),
            };
        on_done();
        result
    }
}

/// Each instance stops taking requests at `max_uses`, or when a request
/// ran past its deadline (then it is dropped once the others finish).
struct Caps {
    max_uses: usize,
    concurrency: usize,
}

impl WorkerState for Caps {
    type StoreData = GuestState;
    /// The request's deadline, and its id for the instance's output.
    type RequestData = (tokio::time::Instant, Arc<str>);

    fn should_accept_request(&self, concurrent: usize, total: usize) -> ShouldAccept {
        if total >= self.max_uses {
            ShouldAccept::Never
        } else if concurrent >= self.concurrency {
            ShouldAccept::No
        } else {
            ShouldAccept::Yes
        }
    }

    fn on_request_start(
        &self,
        store: StoreContextMut<'_, GuestState>,
        (deadline, request_id): (tokio::time::Instant, Arc<str>),
        _task: TaskGroupId,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + Sync>> {
        // The instance's output is this request's from now on: exact while
        // requests do not overlap; with several at once, a line is labelled
        // with the one that started last.
        store.data().serve(&request_id);
        Box::pin(tokio::time::sleep_until(deadline))
    }

    fn drop(&self, store: Store<GuestState>, result: Result<(), wasmtime::Error>) {
        if let Err(e) = result {
            tracing::warn!("a reused WASI 0.3 instance was dropped: {e:#}");
        }
        drop(store);
    }
}

/// The second line of defence the handler asks for: a request can keep the
/// store busy (a loop) so that the per-request timer inside is not polled;
/// this one is polled from outside. Idle instances go after a second.
struct Expiry {
    request_timeout: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl WorkerExpiration for Expiry {
    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        status: WorkerStatus,
        start: Instant,
    ) -> Poll<()> {
        let limit = match status {
            WorkerStatus::Idle => Duration::from_secs(1),
            WorkerStatus::Requests | WorkerStatus::PostReturn => self.request_timeout,
        };
        let at = tokio::time::Instant::from_std(start + limit);
        if self.sleep.deadline() != at {
            self.sleep.as_mut().reset(at);
        }
        self.sleep.as_mut().poll(cx)
    }
}

impl HandlerState for SharedInstances {
    type StoreData = GuestState;
    type WorkerExpiration = Expiry;
    type WorkerState = Caps;

    async fn instantiate(&self) -> wasmtime::Result<Instance<GuestState, Expiry, Caps>> {
        let state = (self.make)().map_err(|e| match e {
            GuestError::Failed(e) => e,
            other => wasmtime::format_err!("{}", other.reason()),
        })?;
        let mut store = Store::new(&self.engine, state);
        call::prepare_store(&mut store);
        let proxy = ProxyPre::P3(self.pre.clone())
            .instantiate_async(&mut store)
            .await?;
        Ok(Instance {
            store,
            proxy,
            view: |s: &mut GuestState| s.http(),
            expiration: Expiry {
                request_timeout: self.request_timeout,
                sleep: Box::pin(tokio::time::sleep(self.request_timeout)),
            },
            state: Caps {
                max_uses: fastrand::u32(self.lifetime.0..=self.lifetime.1.max(self.lifetime.0))
                    as usize,
                concurrency: self.concurrency,
            },
        })
    }
}
