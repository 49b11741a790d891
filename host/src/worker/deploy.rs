//! A new version arriving at a running worker: load the artifact,
//! pre-instantiate it, smoke-check it, swap it in, report. Runs as its own
//! task so the worker keeps taking connections meanwhile.

use std::sync::Arc;

use anyhow::Result;

use super::link::Link;
use super::service::WorkerCtx;
use crate::config::SmokeCheck;
use crate::config::Version;
use crate::runtime::artifact::engine::Engines;
use crate::runtime::capabilities::Capabilities;
use crate::runtime::guest::{Handler, InstancePolicy};

pub struct Deployer {
    pub engines: Arc<Engines>,
    pub caps: Arc<Capabilities>,
    pub smoke: SmokeCheck,
    pub policy: InstancePolicy,
}

impl Deployer {
    /// Loads and checks a handler without putting it in service.
    pub async fn prepare(&self, version: &Version) -> Result<Handler> {
        // Loading reads files (the config file, the whole artifact for its
        // digest) and maps code: off the event loop that serves requests.
        let (engines, caps, policy) = (self.engines.clone(), self.caps.clone(), self.policy);
        let owned = version.clone();
        let handler =
            tokio::task::spawn_blocking(move || Handler::load(&engines, &owned, caps, policy))
                .await??;
        handler
            .smoke_check(&self.smoke.path, self.smoke.timeout)
            .await?;
        Ok(handler)
    }

    pub fn spawn_load(self: &Arc<Self>, ctx: Arc<WorkerCtx>, link: Arc<Link>, version: Version) {
        let this = self.clone();
        tokio::spawn(async move {
            let outcome = match this.prepare(&version).await {
                Ok(handler) => {
                    ctx.swap(handler);
                    tracing::info!(worker = ctx.index, version = %version.id, "now serving version {}", version.id);
                    Ok(())
                }
                Err(e) => {
                    tracing::warn!(worker = ctx.index, version = %version.id, "refused version {}: {e:#}", version.id);
                    Err(e)
                }
            };
            link.loaded(version.id, &outcome).await;
        });
    }
}
