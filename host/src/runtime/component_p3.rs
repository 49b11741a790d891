//! wasi:http/service@0.3.0 components (WASI 0.3): `handle` is an async
//! function, bodies are streams and trailers futures, all driven by the
//! store's concurrent event loop. The same `GuestState`, grants and limits as
//! the 0.2 components in component.rs.
//!
//! Isolation is the default: a fresh instance per request. With
//! `--reuse-instances N`, instances serve up to N requests each: one at a
//! time from a pool, as 0.2 instances do, or, with
//! `--max-instance-concurrency C` above 1, C at once through
//! wasmtime-wasi-http's `ProxyHandler` (what `wasmtime serve` uses).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use wasmtime::component::GuestTaskId;
use wasmtime::{Engine, Store, StoreContextMut};
use wasmtime_wasi_http::WasiBody;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::handler::{
    HandlerState, Instance, ProxyHandler, ProxyPre, ShouldAccept, WorkerExpiration, WorkerState,
    WorkerStatus,
};
use wasmtime_wasi_http::p3::bindings::{Service, ServicePre};

use super::component::{GuestState, LimitedBody};
use super::guest::{GuestError, RequestBody};
use super::instance_pool::{self, InstancePool};

/// The request as a 0.3 guest sees it: an absolute URI, as 0.2 guests get
/// their authority from `Host` (wasi-http strips `Host` itself).
fn absolute<B>(req: hyper::Request<B>) -> hyper::Request<B> {
    let scheme = if super::guest::is_tls(&req) {
        "https"
    } else {
        "http"
    };
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

/// How 0.3 instances are used, by `--reuse-instances N` and
/// `--max-instance-concurrency C`.
pub enum ServiceReuse {
    /// A fresh instance per request (N = 0, the default).
    Fresh,
    /// C = 1: an instance serves one request at a time, up to N in turn,
    /// from the same pool as 0.2 components.
    Sequential(Arc<InstancePool<Service>>),
    /// C > 1: wasmtime-wasi-http's `ProxyHandler` runs up to C requests at
    /// once in one instance.
    Concurrent(Reuse),
}

/// Runs one request in a fresh instance (or, with a pool, in one that
/// served earlier requests), until `deadline`. The store keeps running after
/// the response head, streaming the body and trailers, until the guest's
/// tasks have finished; `on_done` runs then, whatever the outcome, and a
/// pooled instance goes back only if they finished well.
pub async fn handle<B>(
    pre: &ServicePre<GuestState>,
    // With reuse: the pool, and the id of this request, which a reused
    // instance's output is labelled with.
    reuse: Option<(&Arc<InstancePool<Service>>, Arc<str>)>,
    state: impl FnOnce() -> GuestState,
    req: hyper::Request<B>,
    body_limit: u64,
    deadline: Instant,
    on_done: impl FnOnce() + Send + 'static,
) -> Result<hyper::Response<WasiBody>, GuestError>
where
    B: RequestBody,
{
    let (mut store, service, lease) = instance_pool::checkout(reuse, pre.engine(), state);
    let req = absolute(req)
        .map(|body| LimitedBody(http_body_util::Limited::new(body, body_limit as usize)));
    let (request, request_io) =
        wasmtime_wasi_http::p3::Request::from_http(store.data_mut().http().hooks, req);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (outcome_tx, outcome_rx) = tokio::sync::oneshot::channel();
    let pre = pre.clone();
    let deadline = tokio::time::Instant::from_std(deadline);
    let task = tokio::spawn(async move {
        let run = async {
            let service = match service {
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
        let result = match tokio::time::timeout_at(deadline, run).await {
            Ok(Ok(service)) => {
                if let Some(lease) = lease {
                    lease.give_back(store, service);
                }
                Ok(())
            }
            Ok(Err(e)) => Err(GuestError::Failed(e)),
            Err(_) => Err(GuestError::Timeout),
        };
        super::guest::settle(result, on_done, outcome_tx)
    });
    super::guest::response(deadline, rx, task, outcome_rx).await
}

/// Concurrent reuse: instances that serve up to `max_uses` requests,
/// `concurrency` at once, each request under its own deadline.
pub struct Reuse {
    handler: ProxyHandler<Instances>,
}

struct Instances {
    pre: ServicePre<GuestState>,
    engine: Engine,
    make: Arc<dyn Fn() -> GuestState + Send + Sync>,
    max_uses: usize,
    concurrency: usize,
    request_timeout: Duration,
}

impl Reuse {
    pub fn new(
        pre: ServicePre<GuestState>,
        make: Arc<dyn Fn() -> GuestState + Send + Sync>,
        max_uses: u32,
        concurrency: u32,
        request_timeout: Duration,
    ) -> Self {
        let engine = pre.engine().clone();
        Self {
            handler: ProxyHandler::new(Instances {
                pre,
                engine,
                make,
                max_uses: max_uses as usize,
                concurrency: concurrency.max(1) as usize,
                request_timeout,
            }),
        }
    }

    pub async fn handle<B>(
        &self,
        req: hyper::Request<B>,
        body_limit: u64,
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
            .handle(tokio::time::Instant::from_std(deadline), req);
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
    type RequestData = tokio::time::Instant;

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
        _store: StoreContextMut<'_, GuestState>,
        deadline: tokio::time::Instant,
        _task: GuestTaskId,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + Sync>> {
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

impl HandlerState for Instances {
    type StoreData = GuestState;
    type WorkerExpiration = Expiry;
    type WorkerState = Caps;

    async fn instantiate(&self) -> wasmtime::Result<Instance<GuestState, Expiry, Caps>> {
        let mut store = Store::new(&self.engine, (self.make)());
        super::guest::yield_at_every_tick(&mut store);
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
                max_uses: self.max_uses,
                concurrency: self.concurrency,
            },
        })
    }
}
