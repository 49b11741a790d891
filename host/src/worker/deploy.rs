//! A new version arriving at a running worker: load the artifact,
//! pre-instantiate it, smoke-check it, swap it in, report. Runs as its own
//! task so the worker keeps taking connections meanwhile.

use std::sync::Arc;

use anyhow::Result;

use super::service::WorkerCtx;
use crate::config::SmokeCheck;
use crate::config::Version;
use crate::ipc::{Channel, ToPrimary};
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

    pub fn spawn_load(self: &Arc<Self>, ctx: Arc<WorkerCtx>, chan: Arc<Channel>, version: Version) {
        let this = self.clone();
        tokio::spawn(async move {
            let msg = match this.prepare(&version).await {
                Ok(handler) => {
                    let version = version.id;
                    ctx.swap(handler);
                    tracing::info!(worker = ctx.index, %version, "now serving version {version}");
                    ToPrimary::Loaded { version }
                }
                Err(e) => {
                    let version = version.id;
                    let error = format!("{e:#}");
                    tracing::warn!(worker = ctx.index, %version, "refused version {version}: {error}");
                    ToPrimary::LoadFailed { version, error }
                }
            };
            chan.send(&msg, None).await.ok();
        });
    }
}
