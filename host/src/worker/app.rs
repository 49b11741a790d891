//! The application a worker serves: its handlers, loaded, and the routing
//! table to them. A deploy builds a new one beside it and the service swaps
//! it whole (service.rs), so a request sees one table or the other, never a
//! mix. Handlers whose version and settings did not change are carried
//! over as they are (same instances, same capabilities): a roll of one
//! handler leaves the others untouched.

use std::sync::Arc;

use anyhow::{Context, Result};

use crate::config::app::{App, HandlerLimits, HandlerSpec};
use crate::config::routes::{Match, Router};
use crate::runtime::artifact::engine::Engines;
use crate::runtime::capabilities::Capabilities;
use crate::runtime::guest::{Handler, InstancePolicy, Strategy};

/// One handler of the application, loaded.
pub struct Mounted {
    pub name: Arc<str>,
    pub handler: Arc<Handler>,
    pub limits: HandlerLimits,
    /// What it was loaded from: an equal spec in the next app reuses it.
    spec: HandlerSpec,
}

pub struct LoadedApp {
    pub id: String,
    /// Guests are told where they were mounted (a manifest's app).
    pub manifest: bool,
    router: Router,
    handlers: Vec<Mounted>,
}

/// Which handlers must pass their smoke check before the app is swapped in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Smoke {
    /// A deploy: every handler new to this worker.
    New,
    /// The canary of a changed manifest, checked as a whole: every handler,
    /// those it keeps too.
    All,
    /// The worker's first app, which the compile child checked: only
    /// handlers that reuse instances (they must serve a second request in
    /// one instance before they take traffic).
    WhenReused,
}

impl LoadedApp {
    /// Loads `app`, taking handlers `current` already has. Blocking work
    /// (reading and mapping artifacts) runs off the event loop.
    pub async fn load(
        engines: &Arc<Engines>,
        app: &App,
        current: Option<&LoadedApp>,
        smoke: Smoke,
    ) -> Result<LoadedApp> {
        let mut handlers = Vec::with_capacity(app.handlers.len());
        let mut routes = Vec::new();
        for (i, spec) in app.handlers.iter().enumerate() {
            // Routes are the table's, not the handler's: a handler whose
            // version and settings stayed is kept whatever its routes.
            let kept = current.and_then(|c| {
                c.handlers.iter().find(|m| {
                    m.spec.version == spec.version && m.spec.plan.settings == spec.plan.settings
                })
            });
            let handler = match kept {
                Some(m) if smoke == Smoke::All => {
                    let limits = &spec.plan.settings.limits;
                    m.handler
                        .smoke_check(&limits.smoke.path, limits.smoke.timeout)
                        .await
                        .with_context(|| format!("handler `{}`", spec.name()))?;
                    m.handler.clone()
                }
                Some(m) => m.handler.clone(),
                None => load_one(engines, spec, smoke)
                    .await
                    .with_context(|| format!("handler `{}`", spec.name()))?,
            };
            routes.extend(spec.plan.routes.iter().map(|r| (r.clone(), i)));
            handlers.push(Mounted {
                name: spec.name().into(),
                handler,
                limits: spec.plan.settings.limits.clone(),
                spec: spec.clone(),
            });
        }
        let names: Vec<&str> = app.handlers.iter().map(|h| h.name()).collect();
        let router = Router::build(&routes, &names).map_err(anyhow::Error::msg)?;
        Ok(LoadedApp {
            id: app.id.clone(),
            manifest: app.manifest,
            router,
            handlers,
        })
    }

    /// The handler a request reaches, and where it is mounted.
    pub fn route(&self, host: Option<&str>, path: &str) -> Option<(&Mounted, Match<'_>)> {
        let m = self.router.lookup(host, path)?;
        Some((&self.handlers[m.handler], m))
    }
}

async fn load_one(
    engines: &Arc<Engines>,
    spec: &HandlerSpec,
    smoke: Smoke,
) -> Result<Arc<Handler>> {
    let settings = &spec.plan.settings;
    let caps = Arc::new(Capabilities::new(settings.grants.clone())?);
    let limits = &settings.limits;
    let policy = InstancePolicy {
        reuse: limits.reuse,
        concurrency: limits.max_instance_concurrency,
        request_timeout: limits.timeout,
        max_memory: limits.max_memory,
    };
    let handler = if smoke == Smoke::WhenReused {
        // Start-up: nothing is served yet, so the load may block this
        // thread; a thread of its own would keep its allocator's memory.
        Handler::load(engines, &spec.version, caps, policy)?
    } else {
        // A deploy: reading and mapping the artifact stays off the event
        // loop that serves requests meanwhile.
        let (engines, version) = (engines.clone(), spec.version.clone());
        tokio::task::spawn_blocking(move || Handler::load(&engines, &version, caps, policy))
            .await??
    };
    if smoke != Smoke::WhenReused || handler.strategy() != Strategy::Fresh {
        handler
            .smoke_check(&limits.smoke.path, limits.smoke.timeout)
            .await?;
    }
    Ok(Arc::new(handler))
}
