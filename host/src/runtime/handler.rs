//! A loaded handler, whichever ABI it speaks: a wasi:http component
//! (component.rs) or a CGI-style WASI command module (cgi.rs). Both get a
//! fresh instance per request, the same limits and the same capabilities.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use wasmtime::component::Component;
use wasmtime::{Engine, InstancePre, Module, Precompiled};
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};
use wasmtime_wasi_http::p2::bindings::{Proxy, ProxyPre};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::p3::bindings::ServicePre;

use super::capabilities::Capabilities;
use super::cgi::{self, CgiState};
use super::component::{self, GuestState, HttpPre};
use super::component_p3::{self, ServiceReuse};
use super::guest::{GuestError, RequestBody};
use super::guest_io::GuestLog;
use super::instance_pool::InstancePool;
use super::prefetch;

enum Guest {
    Component(ProxyPre<GuestState>, Option<Arc<InstancePool<Proxy>>>),
    Service(ServicePre<GuestState>, ServiceReuse),
    Cgi(InstancePre<CgiState>),
}

/// `--reuse-instances` and what bounds a reused WASI 0.3 instance.
#[derive(Debug, Clone, Copy)]
pub struct InstanceReuse {
    /// 0: a fresh instance per request.
    pub max_uses: u32,
    /// Requests one 0.3 instance serves at once.
    pub concurrency: u32,
    pub request_timeout: Duration,
}

pub struct Handler {
    guest: Guest,
    caps: Arc<Capabilities>,
    /// wasi:config values, read when this version was loaded.
    config: Arc<wasmtime_wasi_config::WasiConfigVariables>,
    /// Short content hash of the handler file.
    pub version: String,
}

impl Handler {
    /// Loads a compiled artifact of either kind and pre-instantiates it.
    pub fn load(
        engine: &Engine,
        path: &std::path::Path,
        caps: Arc<Capabilities>,
        reuse: InstanceReuse,
        version: String,
        digest: &str,
    ) -> Result<Self> {
        let name = path.display();
        let config = Arc::new(super::config_store::variables(&caps.grants.config)?);
        // Machine code is about to be mapped and run: it must be what the
        // compile child wrote.
        super::cache::verify_artifact(path, Some(digest))?;
        let guest = match Engine::detect_precompiled_file(path).map_err(anyhow::Error::from)? {
            Some(Precompiled::Component) => {
                // SAFETY: the file was written by our own compile child through
                // an atomic rename into the cache, and is named by the hash of
                // its source and of this engine's settings, so it is a wasmtime
                // artifact for this engine.
                let c = unsafe { Component::deserialize_file(engine, path) }
                    .map_err(anyhow::Error::from)
                    .with_context(|| format!("cannot load artifact `{name}`"))?;
                match component::pre_instantiate(engine, &c)? {
                    HttpPre::P2(pre) => {
                        let pool = (reuse.max_uses > 0).then(|| InstancePool::new(reuse.max_uses));
                        Guest::Component(pre, pool)
                    }
                    HttpPre::P3(pre) => {
                        let reuse = match reuse {
                            InstanceReuse { max_uses: 0, .. } => ServiceReuse::Fresh,
                            InstanceReuse {
                                max_uses,
                                concurrency: 1,
                                ..
                            } => ServiceReuse::Sequential(InstancePool::new(max_uses)),
                            _ => {
                                let (caps, config) = (caps.clone(), config.clone());
                                let make = move || {
                                    let ctx = wasi_builder(&caps, &"reused".into())
                                        .map(|(mut w, logs)| (w.build(), logs))
                                        .unwrap_or_else(|_| {
                                            (WasiCtxBuilder::new().build(), vec![])
                                        });
                                    GuestState::new(ctx, &caps, config.clone())
                                };
                                ServiceReuse::Concurrent(component_p3::Reuse::new(
                                    pre.clone(),
                                    Arc::new(make),
                                    reuse.max_uses,
                                    reuse.concurrency,
                                    reuse.request_timeout,
                                ))
                            }
                        };
                        Guest::Service(pre, reuse)
                    }
                }
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
            caps,
            config,
            version,
        })
    }

    fn wasi(&self, request_id: &Arc<str>) -> Result<(WasiCtxBuilder, Vec<GuestLog>)> {
        wasi_builder(&self.caps, request_id)
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
        // A reused instance keeps the context it was created with, so a
        // context is only built when an instance is.
        let make = || {
            let ctx = wasi()
                .map(|(mut w, logs)| (w.build(), logs))
                .unwrap_or_else(|_| (WasiCtxBuilder::new().build(), vec![]));
            GuestState::new(ctx, &self.caps, self.config.clone())
        };
        match &self.guest {
            Guest::Component(pre, Some(pool)) => {
                let reuse = Some((pool, request_id.clone()));
                component::handle(pre, reuse, make, req, body_limit, deadline, on_done).await
            }
            Guest::Component(pre, None) => {
                let (mut ctx, logs) = wasi()?;
                let make =
                    move || GuestState::new((ctx.build(), logs), &self.caps, self.config.clone());
                component::handle(pre, None, make, req, body_limit, deadline, on_done).await
            }
            Guest::Service(pre, reuse) => {
                let resp = match reuse {
                    ServiceReuse::Concurrent(reuse) => {
                        reuse.handle(req, body_limit, deadline, on_done).await?
                    }
                    ServiceReuse::Sequential(pool) => {
                        let reuse = Some((pool, request_id.clone()));
                        component_p3::handle(pre, reuse, make, req, body_limit, deadline, on_done)
                            .await?
                    }
                    ServiceReuse::Fresh => {
                        let (mut ctx, logs) = wasi()?;
                        let make = move || {
                            GuestState::new((ctx.build(), logs), &self.caps, self.config.clone())
                        };
                        component_p3::handle(pre, None, make, req, body_limit, deadline, on_done)
                            .await?
                    }
                };
                Ok(prefetch::prefetch(resp).await)
            }
            Guest::Cgi(pre) => {
                let (ctx, _) = wasi()?;
                cgi::handle(pre, ctx, req, body_limit, deadline, on_done).await
            }
        }
    }

    /// The deploy smoke check: `GET path` must produce a whole response
    /// (any status) without trapping or passing `timeout`. With instance
    /// reuse, twice, through the same instance: a handler that cannot
    /// serve a second request in one instance must not go live with reuse.
    pub async fn smoke_check(&self, path: &str, timeout: Duration) -> Result<u16> {
        let status = self.smoke_once(path, timeout).await?;
        let reused = matches!(
            self.guest,
            Guest::Component(_, Some(_))
                | Guest::Service(_, ServiceReuse::Sequential(_) | ServiceReuse::Concurrent(_))
        );
        if reused {
            self.smoke_once(path, timeout).await.map_err(|e| {
                anyhow::anyhow!(
                    "{e:#}, on the second request to one instance: this handler cannot serve \
                     more than one request per instance; run it without --reuse-instances"
                )
            })?;
            // Live traffic starts in instances the smoke requests left alone.
            match &self.guest {
                Guest::Component(_, Some(pool)) => pool.clear(),
                Guest::Service(_, ServiceReuse::Sequential(pool)) => pool.clear(),
                _ => {}
            }
        }
        Ok(status)
    }

    async fn smoke_once(&self, path: &str, timeout: Duration) -> Result<u16> {
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

/// The capabilities every instance gets: its output to the log (returned
/// too, so a reused instance can relabel it), and only the environment
/// variables and directories granted.
fn wasi_builder(
    caps: &Capabilities,
    request_id: &Arc<str>,
) -> Result<(WasiCtxBuilder, Vec<GuestLog>)> {
    let mut wasi = WasiCtxBuilder::new();
    let (stdout, stderr) = (
        GuestLog::new("stdout", request_id.clone()),
        GuestLog::new("stderr", request_id.clone()),
    );
    wasi.stdout(stdout.clone())
        .stderr(stderr.clone())
        .envs(&caps.grants.env);
    for d in &caps.grants.dirs {
        wasi.preopened_dir(&d.host, &d.guest, FsPerms::ReadOnly)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("cannot open granted directory `{}`", d.host.display()))?;
    }
    Ok((wasi, vec![stdout, stderr]))
}
