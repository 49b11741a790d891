//! A new version of the application arriving at a running worker: load
//! the handlers it does not have yet, smoke-check them, swap the whole app
//! in, report. Runs as its own task so the worker keeps taking connections
//! meanwhile.

use std::sync::Arc;

use super::app::{LoadedApp, Smoke};
use super::link::Link;
use super::service::WorkerCtx;
use crate::config::app::App;
use crate::runtime::artifact::engine::Engines;

pub struct Deployer {
    pub engines: Arc<Engines>,
}

impl Deployer {
    pub fn spawn_load(
        self: &Arc<Self>,
        ctx: Arc<WorkerCtx>,
        link: Arc<Link>,
        app: App,
        smoke: Smoke,
    ) {
        let this = self.clone();
        tokio::spawn(async move {
            let current = ctx.app();
            let outcome = match LoadedApp::load(&this.engines, &app, Some(&current), smoke).await {
                Ok(loaded) => {
                    ctx.swap(loaded);
                    tracing::info!(worker = ctx.index, version = %app.id, "now serving version {}", app.id);
                    Ok(())
                }
                Err(e) => {
                    tracing::warn!(worker = ctx.index, version = %app.id, "refused version {}: {e:#}", app.id);
                    Err(e)
                }
            };
            link.loaded(app.id, &outcome).await;
        });
    }
}
