//! wasi:http/proxy components (WASI 0.2), the world `wasmtime serve` and
//! Spin run: the call. `handle` is a synchronous export that sets its
//! response through an outparam, then may keep running to stream the body.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::{Proxy, ProxyPre};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use super::call::{self, GuestError, RequestBody};
use super::component::{GuestState, LimitedBody};
use super::pool::{Checkout, Instances};

/// Runs one request in an instance from `instances`. The guest keeps
/// running after it has set the response, to stream the body, until
/// `deadline`; `on_done` runs when it has finished, whatever the outcome.
#[allow(clippy::too_many_arguments)]
pub async fn handle<B>(
    pre: &ProxyPre<GuestState>,
    instances: &Arc<Instances<Proxy>>,
    state: impl FnOnce() -> Result<GuestState, GuestError>,
    request_id: &Arc<str>,
    req: hyper::Request<B>,
    body_limit: u64,
    deadline: Instant,
    on_done: impl FnOnce() + Send + 'static,
) -> Result<hyper::Response<HyperOutgoingBody>, GuestError>
where
    B: RequestBody,
{
    let Checkout {
        mut store,
        instance,
        lease,
    } = instances.checkout(pre.engine(), request_id, state)?;
    let scheme = if call::is_tls(&req) {
        Scheme::Https
    } else {
        Scheme::Http
    };
    let req = req.map(|body| LimitedBody(http_body_util::Limited::new(body, body_limit as usize)));
    let (tx, rx) = tokio::sync::oneshot::channel();
    // Whether the guest set its response: one that returned without doing
    // so (an exception its runtime swallowed) has failed, at once.
    let answered = Arc::new(AtomicBool::new(false));
    let (req, out) = {
        let mut http = store.data_mut().http();
        let req = http
            .new_incoming_request(scheme, req)
            .map_err(GuestError::Failed)?;
        let flag = answered.clone();
        let out = http
            .new_response_outparam_from_callback(move |resp| {
                flag.store(true, Ordering::Relaxed);
                tx.send(resp).ok();
            })
            .map_err(GuestError::Failed)?;
        (req, out)
    };
    let pre = pre.clone();
    let guest = async move {
        let run = async {
            let proxy = match instance {
                Some(p) => p,
                None => pre.instantiate_async(&mut store).await?,
            };
            proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, req, out)
                .await?;
            Ok(proxy)
        };
        let proxy = run.await.map_err(GuestError::Failed)?;
        if !answered.load(Ordering::Relaxed) {
            // Dropping the store drops the unset outparam: the caller hears
            // at once, and the instance is not reused.
            drop(store);
            return Err(GuestError::NoResponse);
        }
        lease.give_back(store, proxy);
        Ok(())
    };
    let deadline = tokio::time::Instant::from_std(deadline);
    let (task, outcome) = call::spawn(deadline, guest, on_done);
    call::response(deadline, rx, task, outcome).await
}
