//! A new version arriving at a running worker: load the artifact,
//! pre-instantiate it, smoke-check it, swap it in, report. Runs as its own
//! task so the worker keeps taking connections meanwhile.

use std::path::Path;
use std::sync::Arc;

use anyhow::Result;
use wasmtime::Engine;

use super::service::WorkerCtx;
use crate::config::SmokeCheck;
use crate::ipc::{Channel, ToPrimary};
use crate::runtime::capabilities::Capabilities;
use crate::runtime::handler::{Handler, InstanceReuse};

pub struct Deployer {
    pub engine: Engine,
    pub caps: Arc<Capabilities>,
    pub smoke: SmokeCheck,
    pub reuse: InstanceReuse,
}

impl Deployer {
    /// Loads and checks a handler without putting it in service.
    pub async fn prepare(&self, artifact: &Path, version: &str, digest: &str) -> Result<Handler> {
        let handler = Handler::load(
            &self.engine,
            artifact,
            self.caps.clone(),
            self.reuse,
            version.to_string(),
            digest,
        )?;
        handler
            .smoke_check(&self.smoke.path, self.smoke.timeout)
            .await?;
        Ok(handler)
    }

    pub fn spawn_load(
        self: &Arc<Self>,
        ctx: Arc<WorkerCtx>,
        chan: Arc<Channel>,
        artifact: std::path::PathBuf,
        version: String,
        digest: String,
    ) {
        let this = self.clone();
        tokio::spawn(async move {
            let msg = match this.prepare(&artifact, &version, &digest).await {
                Ok(handler) => {
                    ctx.swap(handler);
                    tracing::info!(worker = ctx.index, %version, "now serving version {version}");
                    ToPrimary::Loaded { version }
                }
                Err(e) => {
                    let error = format!("{e:#}");
                    tracing::warn!(worker = ctx.index, %version, "refused version {version}: {error}");
                    ToPrimary::LoadFailed { version, error }
                }
            };
            chan.send(&msg, None).await.ok();
        });
    }
}
