//! What wasi:http components of both ABIs share: the store's data (WASI,
//! wasi-http, the capabilities), the linker, telling a 0.2 proxy from a 0.3
//! service by its exports, and the request body under its size limit.

use std::sync::Arc;

use anyhow::{Context, Result};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Engine, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_config::{WasiConfig, WasiConfigVariables};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p3::bindings::ServicePre;
use wasmtime_wasi_http::{WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use super::call::RequestBody;
use super::log::GuestLog;
use crate::runtime::capabilities::Capabilities;
use crate::runtime::capabilities::keyvalue::{self, KeyValue, KvView};
use crate::runtime::capabilities::outbound::{Outbound, Sent};

pub struct GuestState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: Hooks,
    config: Arc<WasiConfigVariables>,
    keyvalue: Arc<KeyValue>,
    /// The guest's stdout and stderr, to label a reused instance's output
    /// with the request it serves.
    logs: Vec<GuestLog>,
    limits: StoreLimits,
}

impl GuestState {
    /// A store's data: its WASI context, and the worker's outbound client,
    /// the version's configuration and the worker's key-value store.
    pub fn new(
        (wasi, logs): (WasiCtx, Vec<GuestLog>),
        caps: &Capabilities,
        config: Arc<WasiConfigVariables>,
    ) -> Self {
        Self {
            wasi,
            logs,
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            hooks: Hooks {
                outbound: caps.outbound.clone(),
            },
            config,
            keyvalue: caps.keyvalue.clone(),
            limits: StoreLimits::default(),
        }
    }

    /// Memory may grow to `bytes` and no further (call::limit_store).
    pub fn with_memory(mut self, bytes: usize) -> Self {
        self.limits = StoreLimitsBuilder::new().memory_size(bytes).build();
        self
    }

    /// A reused instance's output is `request_id`'s from now on.
    pub fn serve(&self, request_id: &Arc<str>) {
        for log in &self.logs {
            log.serve(request_id.clone());
        }
    }
}

impl super::call::Limited for GuestState {
    fn limits(&mut self) -> &mut StoreLimits {
        &mut self.limits
    }
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for GuestState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// Outbound requests go to the worker's client, which applies the
/// allow-list (runtime/outbound/).
struct Hooks {
    outbound: Arc<Outbound>,
}

impl WasiHttpHooks for Hooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> Box<dyn Future<Output = wasmtime_wasi_http::Result<Sent>> + Send> {
        Box::new(self.outbound.clone().send(request, options))
    }
}

/// The host side of the proxy world, plus `wasi:cli` and the rest of WASI 0.2
/// as `wasmtime serve -S cli` links them (real components from Rust std,
/// Python and JavaScript import them), and wasi:config and wasi:keyvalue as
/// `-S config,keyvalue` do. What they can reach is decided per
/// store by the `WasiCtx`, which grants nothing by default.
pub fn linker(engine: &Engine) -> Result<Linker<GuestState>> {
    let mut linker = Linker::new(engine);
    // WASI 0.2 and 0.3 side by side, as `wasmtime serve -Sp3 -Scli` links
    // them: a 0.3 component built with Rust std still imports 0.2's
    // wasi:cli and wasi:io.
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    // Only the engine with concurrency support runs 0.3 components (engine.rs).
    if engine.get_concurrency_support() {
        wasmtime_wasi::p3::add_to_linker(&mut linker)?;
        wasmtime_wasi_http::p3::add_to_linker(&mut linker)?;
    }
    wasmtime_wasi_config::add_to_linker(&mut linker, |s: &mut GuestState| {
        WasiConfig::from(&*s.config)
    })?;
    keyvalue::add_to_linker(&mut linker, |s: &mut GuestState| KvView {
        table: &mut s.table,
        kv: &s.keyvalue,
    })?;
    Ok(linker)
}

/// A component this host can serve, by what it exports.
pub enum HttpPre {
    /// WASI 0.2: exports `wasi:http/incoming-handler@0.2.x`.
    P2(ProxyPre<GuestState>),
    /// WASI 0.3: exports `wasi:http/handler@0.3.x`.
    P3(ServicePre<GuestState>),
}

/// Tells a 0.3 service from a 0.2 proxy by its exports (checked before
/// its imports, so a component of the wrong shape hears what it exports),
/// then checks that every import is satisfied.
pub fn pre_instantiate(component: &Component) -> Result<HttpPre> {
    let engine = component.engine();
    let exports: Vec<String> = component
        .component_type()
        .exports(engine)
        .map(|(name, _)| name.to_string())
        .collect();
    let is = |prefix: &str| {
        exports
            .iter()
            .any(|n| n.starts_with(prefix) && !n.contains("-rc"))
    };
    let (p2, p3) = (
        is("wasi:http/incoming-handler@0.2."),
        is("wasi:http/handler@0.3."),
    );
    if !p2 && !p3 {
        let rc = exports.iter().any(|n| n.contains("-rc"));
        anyhow::bail!(
            "the component exports {}; expected `wasi:http/incoming-handler@0.2.x` (a WASI 0.2 \
             wasi:http/proxy handler) or `wasi:http/handler@0.3.x` (a WASI 0.3 \
             wasi:http/service handler){}",
            if exports.is_empty() {
                "nothing".to_string()
            } else {
                exports.join(", ")
            },
            if rc {
                "; it was built against a WASI 0.3 release candidate: rebuild it for \
                 wasi:http@0.3.0 (e.g. the wasip3 crate 0.7 or later)"
            } else {
                ""
            }
        );
    }
    let pre = linker(engine)?
        .instantiate_pre(component)
        .map_err(anyhow::Error::from)
        .context("the component imports something wcluster does not provide")?;
    Ok(if p3 {
        HttpPre::P3(ServicePre::new(pre).map_err(anyhow::Error::from)?)
    } else {
        HttpPre::P2(ProxyPre::new(pre).map_err(anyhow::Error::from)?)
    })
}

/// The request body with the size limit applied, its errors in the type
/// wasi-http expects.
pub struct LimitedBody<B>(pub http_body_util::Limited<B>);

impl<B> hyper::body::Body for LimitedBody<B>
where
    B: RequestBody,
{
    type Data = bytes::Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        let inner = std::pin::Pin::new(&mut self.get_mut().0);
        inner.poll_frame(cx).map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                return wasmtime_wasi_http::Error::HttpRequestBodySize(None);
            }
            match e.downcast::<hyper::Error>() {
                Ok(h) => wasmtime_wasi_http::Error::Hyper(*h),
                Err(e) => wasmtime_wasi_http::Error::InternalError(Some(e.to_string())),
            }
        })
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.0.size_hint()
    }
}
