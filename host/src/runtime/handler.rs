//! A loaded handler, whichever ABI it speaks: a wasi:http component
//! (component.rs) or a CGI-style WASI command module (cgi.rs). Both get a
//! fresh instance per request, the same limits and the same capabilities.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use wasmtime::component::Component;
use wasmtime::{Engine, InstancePre, Module, Precompiled, Store, UpdateDeadline};
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use super::cgi::{self, CgiState};
use super::component::{self, GuestState};
use super::guest_io::GuestLog;
use crate::config::Grants;

/// Why a request produced no guest response.
#[derive(Debug)]
pub enum GuestError {
    /// The deadline passed before the guest set a response.
    Timeout,
    /// The guest trapped, or returned without setting a response.
    Failed(wasmtime::Error),
    /// A CGI module's output was not a valid response (502).
    BadGateway(String),
}

enum Guest {
    Component(ProxyPre<GuestState>, Option<Arc<component::InstancePool>>),
    Cgi(InstancePre<CgiState>),
}

pub struct Handler {
    guest: Guest,
    grants: Arc<Grants>,
    /// Short content hash of the handler file.
    pub version: String,
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

/// Where a request came from and arrived at, for CGI's REMOTE_ADDR etc.
#[derive(Clone, Copy, Debug)]
pub struct ConnInfo {
    pub peer: Option<std::net::SocketAddr>,
    pub local: Option<std::net::SocketAddr>,
}

impl Handler {
    /// Loads a compiled artifact of either kind and pre-instantiates it.
    pub fn load(
        engine: &Engine,
        path: &std::path::Path,
        grants: Arc<Grants>,
        reuse: u32,
        version: String,
    ) -> Result<Self> {
        let name = path.display();
        let guest = match Engine::detect_precompiled_file(path).map_err(anyhow::Error::from)? {
            Some(Precompiled::Component) => {
                // SAFETY: the file was written by our own compile child through
                // an atomic rename into the cache, and is named by the hash of
                // its source and of this engine's settings, so it is a wasmtime
                // artifact for this engine.
                let c = unsafe { Component::deserialize_file(engine, path) }
                    .map_err(anyhow::Error::from)
                    .with_context(|| format!("cannot load artifact `{name}`"))?;
                // Idle instances kept: enough for a busy worker's concurrency.
                let pool = (reuse > 0).then(|| Arc::new(component::InstancePool::new(reuse, 64)));
                Guest::Component(component::pre_instantiate(engine, &c)?, pool)
            }
            Some(Precompiled::Module) => {
                // SAFETY: as above; the artifact is ours and for this engine.
                let m = unsafe { Module::deserialize_file(engine, path) }
                    .map_err(anyhow::Error::from)
                    .with_context(|| format!("cannot load artifact `{name}`"))?;
                Guest::Cgi(cgi::pre_instantiate(engine, &m)?)
            }
            None => bail!("`{name}` is not a compiled wcluster artifact"),
        };
        Ok(Self {
            guest,
            grants,
            version,
        })
    }

    /// The capabilities every instance gets: its output to the log, and
    /// only the environment variables and directories granted.
    fn wasi(&self, request_id: &Arc<str>) -> Result<WasiCtxBuilder> {
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdout(GuestLog::new("stdout", request_id.clone()))
            .stderr(GuestLog::new("stderr", request_id.clone()))
            .envs(&self.grants.env);
        for d in &self.grants.dirs {
            wasi.preopened_dir(&d.host, &d.guest, FsPerms::ReadOnly)
                .map_err(anyhow::Error::from)
                .with_context(|| format!("cannot open granted directory `{}`", d.host.display()))?;
        }
        Ok(wasi)
    }

    /// Runs one request in a fresh instance, within `deadline`; `on_done`
    /// runs when the guest has finished, whatever the outcome.
    pub async fn handle<B>(
        &self,
        req: hyper::Request<B>,
        body_limit: u64,
        request_id: Arc<str>,
        deadline: Instant,
        on_done: impl FnOnce() + Send + 'static,
    ) -> Result<hyper::Response<HyperOutgoingBody>, GuestError>
    where
        B: RequestBody,
    {
        let wasi = || {
            self.wasi(&request_id)
                .map_err(|e| GuestError::Failed(wasmtime::Error::from_anyhow(e)))
        };
        match &self.guest {
            // A reused instance keeps the context it was created with, so a
            // context is only built when an instance is.
            Guest::Component(pre, Some(pool)) => {
                let make = || {
                    wasi()
                        .map(|mut w| w.build())
                        .unwrap_or_else(|_| WasiCtxBuilder::new().build())
                };
                component::handle(pre, Some(pool), make, req, body_limit, deadline, on_done).await
            }
            Guest::Component(pre, None) => {
                let mut ctx = wasi()?;
                let make = move || ctx.build();
                component::handle(pre, None, make, req, body_limit, deadline, on_done).await
            }
            Guest::Cgi(pre) => cgi::handle(pre, wasi()?, req, body_limit, deadline, on_done).await,
        }
    }

    /// The deploy smoke check: `GET path` must produce a whole response
    /// (any status) without trapping or passing `timeout`.
    pub async fn smoke_check(&self, path: &str, timeout: Duration) -> Result<u16> {
        use http_body_util::BodyExt;
        let req = hyper::Request::get(path)
            .header(http::header::HOST, "localhost")
            .body(http_body_util::Empty::<bytes::Bytes>::new())?;
        let deadline = Instant::now() + timeout;
        let resp = match self.handle(req, 0, "smoke".into(), deadline, || {}).await {
            Ok(resp) => resp,
            Err(GuestError::Timeout) => {
                bail!("smoke check GET {path}: no response within {timeout:?}")
            }
            Err(GuestError::Failed(e)) => {
                bail!("smoke check GET {path} failed: {}", e.root_cause())
            }
            Err(GuestError::BadGateway(why)) => bail!("smoke check GET {path} failed: {why}"),
        };
        let status = resp.status().as_u16();
        let body = tokio::time::timeout_at(
            tokio::time::Instant::from_std(deadline),
            resp.into_body().collect(),
        );
        match body.await {
            Ok(Ok(_)) => Ok(status),
            Ok(Err(e)) => bail!("smoke check GET {path}: the response body failed: {e}"),
            Err(_) => bail!("smoke check GET {path}: body not finished within {timeout:?}"),
        }
    }
}

/// A guest's response body, ended with an error instead of cleanly when the
/// guest failed after sending its headers (a trap mid-body, the deadline):
/// the client must see a truncated response, never a complete-looking one.
pub struct GuardedBody {
    inner: HyperOutgoingBody,
    outcome: Option<tokio::sync::oneshot::Receiver<Result<(), String>>>,
}

impl GuardedBody {
    pub fn new(
        inner: HyperOutgoingBody,
        outcome: tokio::sync::oneshot::Receiver<Result<(), String>>,
    ) -> Self {
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

/// Makes a busy guest yield to the worker's other requests at every epoch
/// tick; the deadline itself is a tokio timeout around the whole call.
/// tokio's `yield_now` (not a plain wake) lets the I/O driver run first, so
/// a guest in `loop {}` cannot starve the worker's sockets.
pub fn yield_at_every_tick<T>(store: &mut Store<T>) {
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|_| {
        Ok(UpdateDeadline::YieldCustom(
            1,
            Box::pin(tokio::task::yield_now()),
        ))
    });
}
