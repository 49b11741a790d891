//! A loaded version of the handler, whichever ABI it speaks, and how its
//! requests run. The ABI (a WASI 0.2 or 0.3 component, or a CGI module) and
//! the instance strategy (fresh, reused one request at a time, reused
//! concurrently) are chosen once, when the version loads (`Strategy`); every
//! request then runs the same skeleton (call.rs), with only the call itself
//! built by its ABI (p2.rs, p3.rs, cgi.rs).

pub mod call;
pub mod cgi;
pub mod cgi_head;
pub mod component;
pub mod log;
pub mod p2;
pub mod p3;
pub mod pool;
pub mod prefetch;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use wasmtime::component::Component;
use wasmtime::{Engine, InstancePre, Module, Precompiled};
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};
use wasmtime_wasi_http::p2::bindings::{Proxy, ProxyPre};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::p3::bindings::{Service, ServicePre};

pub use call::{BodyError, ConnInfo, GuestError, MOUNT_HEADER, PATH_INFO_HEADER, RequestBody};

use super::artifact::cache;
use super::artifact::engine::{Concurrency, Engines};
use super::capabilities::{Capabilities, config_store};
use crate::config::{Reuse, Version};
use cgi::CgiState;
use component::{GuestState, HttpPre};
use log::GuestLog;
use pool::Instances;

/// The ABI a version speaks, from its artifact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abi {
    /// A wasi:http/proxy component (WASI 0.2).
    P2,
    /// A wasi:http/service component (WASI 0.3).
    P3,
    /// A CGI-style WASI command module.
    Cgi,
}

/// The operator's instance flags, and what bounds a request.
#[derive(Debug, Clone, Copy)]
pub struct InstancePolicy {
    pub reuse: Reuse,
    /// Requests one reused 0.3 instance serves at once.
    pub concurrency: u32,
    pub request_timeout: Duration,
    /// Linear memory one instance may grow to (a manifest's handler may
    /// have less than the engine's --max-memory).
    pub max_memory: u64,
}

/// Where a version's requests get their instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// A fresh instance for every request.
    Fresh,
    /// Reused instances, each serving one request at a time and a number
    /// of requests drawn in `lifetime`.
    OneAtATime { lifetime: (u32, u32) },
    /// Reused WASI 0.3 instances, each serving up to `concurrency` requests
    /// at once and a number drawn in `lifetime`.
    Concurrent {
        lifetime: (u32, u32),
        concurrency: u32,
    },
}

impl InstancePolicy {
    /// The strategy for a version of `abi`. CGI modules run `_start` once,
    /// so they are always fresh; 0.2 components are fresh unless reuse was
    /// asked for; 0.3 components are reused unless it was refused.
    pub fn strategy(&self, abi: Abi) -> Strategy {
        let lifetime = match (abi, self.reuse) {
            // A lifetime of one request is a fresh instance: no smoke
            // check for reuse, no pool bookkeeping.
            (Abi::Cgi, _)
            | (_, Reuse::Never)
            | (Abi::P2, Reuse::Default)
            | (_, Reuse::Lifetime { max: 1, .. }) => {
                return Strategy::Fresh;
            }
            (Abi::P3, Reuse::Default) => Reuse::DEFAULT_LIFETIME,
            (_, Reuse::Lifetime { min, max }) => (min, max),
        };
        match abi {
            Abi::P3 if self.concurrency > 1 => Strategy::Concurrent {
                lifetime,
                concurrency: self.concurrency,
            },
            _ => Strategy::OneAtATime { lifetime },
        }
    }
}

enum Guest {
    P2(ProxyPre<GuestState>, Arc<Instances<Proxy>>),
    P3(ServicePre<GuestState>, Arc<Instances<Service>>),
    P3Concurrent(p3::Shared),
    Cgi(InstancePre<CgiState>),
}

pub struct Handler {
    guest: Guest,
    strategy: Strategy,
    caps: Arc<Capabilities>,
    max_memory: usize,
    /// wasi:config values, read when this version was loaded.
    config: Arc<wasmtime_wasi_config::WasiConfigVariables>,
    /// Short content hash of the handler file.
    pub version: String,
}

impl Handler {
    /// Loads a compiled artifact of any ABI, pre-instantiates it and
    /// chooses where its requests get their instances.
    pub fn load(
        engines: &Engines,
        version: &Version,
        caps: Arc<Capabilities>,
        policy: InstancePolicy,
    ) -> Result<Self> {
        let path = version.artifact.as_path();
        let name = path.display();
        let config = Arc::new(config_store::variables(&caps.grants.config)?);
        // Machine code is about to be mapped and run: it must be what the
        // compile child wrote.
        cache::verify_artifact(path, Some(&version.digest))?;
        let (guest, strategy) = match Engine::detect_precompiled_file(path)
            .map_err(anyhow::Error::from)?
        {
            Some(Precompiled::Component) => {
                let load = |c| -> Result<Component> {
                    let engine = engines.get(c)?;
                    // SAFETY: the file was written by our own compile child
                    // through an atomic rename into the cache, its digest was
                    // checked above, and it is named by the hash of its source
                    // and of both engines' settings, so it is a wasmtime
                    // artifact for one of them; the other refuses it by its
                    // header (the compile child tried the plain engine first).
                    Ok(unsafe { Component::deserialize_file(engine, path) }?)
                };
                let c = load(Concurrency::Off)
                    .or_else(|_| load(Concurrency::On))
                    .with_context(|| format!("cannot load artifact `{name}`"))?;
                match component::pre_instantiate(&c)? {
                    HttpPre::P2(pre) => {
                        let strategy = policy.strategy(Abi::P2);
                        (Guest::P2(pre, one_at_a_time(strategy)), strategy)
                    }
                    HttpPre::P3(pre) => {
                        let strategy = policy.strategy(Abi::P3);
                        let guest = match strategy {
                            Strategy::Concurrent {
                                lifetime,
                                concurrency,
                            } => {
                                let (caps, config) = (caps.clone(), config.clone());
                                let memory = policy.max_memory as usize;
                                let make = move || state(&caps, &config, memory, &"reused".into());
                                Guest::P3Concurrent(p3::Shared::new(
                                    pre,
                                    Arc::new(make),
                                    lifetime,
                                    concurrency,
                                    policy.request_timeout,
                                ))
                            }
                            _ => Guest::P3(pre, one_at_a_time(strategy)),
                        };
                        (guest, strategy)
                    }
                }
            }
            Some(Precompiled::Module) => {
                let engine = engines.get(Concurrency::Off)?;
                // SAFETY: as above; the artifact is ours and for this engine.
                let m = unsafe { Module::deserialize_file(engine, path) }
                    .map_err(anyhow::Error::from)
                    .with_context(|| format!("cannot load artifact `{name}`"))?;
                (
                    Guest::Cgi(cgi::pre_instantiate(engine, &m)?),
                    policy.strategy(Abi::Cgi),
                )
            }
            None => bail!("`{name}` is not a compiled wcluster artifact"),
        };
        Ok(Self {
            guest,
            strategy,
            caps,
            max_memory: policy.max_memory as usize,
            config,
            version: version.id.clone(),
        })
    }

    /// Where this version's requests get their instances.
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// Runs one request within `deadline`; `on_done` runs when the guest has
    /// finished, whatever the outcome.
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
        // A store's data is built only when an instance is: a reused one
        // keeps the context it was created with.
        let state = || state(&self.caps, &self.config, self.max_memory, &request_id);
        match &self.guest {
            Guest::P2(pre, instances) => {
                p2::handle(
                    pre,
                    instances,
                    state,
                    &request_id,
                    req,
                    body_limit,
                    deadline,
                    on_done,
                )
                .await
            }
            Guest::P3(pre, instances) => {
                let resp = p3::handle(
                    pre,
                    instances,
                    state,
                    &request_id,
                    req,
                    body_limit,
                    deadline,
                    on_done,
                )
                .await?;
                Ok(prefetch::prefetch(resp).await)
            }
            Guest::P3Concurrent(shared) => {
                let resp = shared
                    .handle(req, body_limit, request_id.clone(), deadline, on_done)
                    .await?;
                Ok(prefetch::prefetch(resp).await)
            }
            Guest::Cgi(pre) => {
                let (ctx, _) = wasi_builder(&self.caps, &request_id).map_err(failed)?;
                let memory = self.max_memory;
                cgi::handle(pre, ctx, memory, req, body_limit, deadline, on_done).await
            }
        }
    }

    /// The deploy smoke check: `GET path` must produce a whole response
    /// (any status) without trapping or passing `timeout`. With instance
    /// reuse, twice, through the same instance: a handler that cannot
    /// serve a second request in one instance must not go live with reuse.
    pub async fn smoke_check(&self, path: &str, timeout: Duration) -> Result<u16> {
        let status = self.smoke_once(path, timeout).await?;
        if self.strategy != Strategy::Fresh {
            self.smoke_once(path, timeout).await.map_err(|e| {
                anyhow::anyhow!(
                    "{e:#}, on the second request to one instance: this handler cannot serve \
                     more than one request per instance; run it with --reuse-instances 0 (a \
                     fresh instance per request)"
                )
            })?;
            // Live traffic starts in instances the smoke requests left alone.
            match &self.guest {
                Guest::P2(_, instances) => instances.clear(),
                Guest::P3(_, instances) => instances.clear(),
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
            Err(e) => bail!("smoke check GET {path} failed: {}", e.reason()),
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

/// The instance source of a strategy that runs one request at a time.
fn one_at_a_time<I>(strategy: Strategy) -> Arc<Instances<I>> {
    match strategy {
        Strategy::OneAtATime {
            lifetime: (min, max),
        } => Instances::reused(min, max),
        _ => Instances::fresh(),
    }
}

fn failed(e: anyhow::Error) -> GuestError {
    GuestError::Failed(wasmtime::Error::from_anyhow(e))
}

/// A component's store data for a new instance, its output labelled with
/// `request_id`. A context that cannot be built (a granted directory gone)
/// fails the request, whatever the strategy.
fn state(
    caps: &Capabilities,
    config: &Arc<wasmtime_wasi_config::WasiConfigVariables>,
    max_memory: usize,
    request_id: &Arc<str>,
) -> Result<GuestState, GuestError> {
    let (mut wasi, logs) = wasi_builder(caps, request_id).map_err(failed)?;
    let state = GuestState::new((wasi.build(), logs), caps, config.clone());
    Ok(state.with_memory(max_memory))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(reuse: Reuse, concurrency: u32) -> InstancePolicy {
        InstancePolicy {
            reuse,
            concurrency,
            request_timeout: Duration::from_secs(30),
            max_memory: 1 << 30,
        }
    }

    #[test]
    fn by_default_0_3_instances_are_reused_and_0_2_and_cgi_ones_are_fresh() {
        let p = policy(Reuse::Default, 1);
        assert_eq!(p.strategy(Abi::P2), Strategy::Fresh);
        assert_eq!(p.strategy(Abi::Cgi), Strategy::Fresh);
        assert_eq!(
            p.strategy(Abi::P3),
            Strategy::OneAtATime {
                lifetime: Reuse::DEFAULT_LIFETIME
            }
        );
    }

    #[test]
    fn reuse_0_makes_every_abi_fresh() {
        let p = policy(Reuse::Never, 16);
        for abi in [Abi::P2, Abi::P3, Abi::Cgi] {
            assert_eq!(p.strategy(abi), Strategy::Fresh, "{abi:?}");
        }
    }

    #[test]
    fn a_range_reuses_components_and_concurrency_applies_to_0_3_only() {
        let p = policy(Reuse::Lifetime { min: 10, max: 20 }, 8);
        assert_eq!(
            p.strategy(Abi::P2),
            Strategy::OneAtATime { lifetime: (10, 20) }
        );
        assert_eq!(
            p.strategy(Abi::P3),
            Strategy::Concurrent {
                lifetime: (10, 20),
                concurrency: 8
            }
        );
        assert_eq!(p.strategy(Abi::Cgi), Strategy::Fresh);
    }

    #[test]
    fn a_lifetime_of_one_request_is_fresh() {
        let p = policy(Reuse::Lifetime { min: 1, max: 1 }, 16);
        for abi in [Abi::P2, Abi::P3, Abi::Cgi] {
            assert_eq!(p.strategy(abi), Strategy::Fresh, "{abi:?}");
        }
    }
}
