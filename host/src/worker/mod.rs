//! A worker process: the same binary re-executed by the primary with the
//! hidden `worker` subcommand. It never binds a socket: connections arrive as
//! fds over its channel (ipc/) and are served by hyper on a single-threaded
//! tokio runtime, each request in an instance of the handler (fresh, or reused
//! as runtime/guest chooses).
//!
//! Strategy: one task reads the channel (Init, then Conn/Load/Drain) and
//! spawns a task per connection (connection.rs); requests run in service.rs.
//! Load starts a deploy task (deploy.rs) that swaps the handler in place, so
//! connections stay where they are. A stats task reports counts each second.
//! Drain stops the channel loop and waits for the connections, bounded by
//! the drain timeout.

mod admission;
mod app;
mod connection;
mod deploy;
mod edge;
mod link;
mod metrics;
mod service;
mod tls;

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hyper_util::server::graceful::GracefulShutdown;
use nix::sys::signal::Signal;

use crate::cli::WorkerArgs;
use crate::config::WorkerInit;
use crate::ipc::{self, ToWorker};
use crate::runtime::artifact::engine::{Allocation, Engines};
use app::{LoadedApp, Smoke};
use deploy::Deployer;
use link::{Link, Next};
use service::WorkerCtx;

/// How often the engine's epoch advances: how long a busy guest runs before
/// it yields to the worker's other requests.
const EPOCH_TICK: Duration = Duration::from_millis(10);
const STATS_INTERVAL: Duration = Duration::from_secs(1);
/// On drain, how long keep-alive clients get to send one more request
/// (answered with `Connection: close`) before idle connections are closed
/// and HTTP/2 ones get GOAWAY.
const DRAIN_GRACE: Duration = Duration::from_secs(1);

pub fn main(args: WorkerArgs) -> Result<()> {
    // Die with the primary, and catch the race where it died before this line.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).context("cannot set PDEATHSIG")?;
    if nix::unistd::getppid().as_raw() != args.parent {
        bail!("the primary (pid {}) is gone", args.parent);
    }
    let fd = ipc::inherited(args.channel_fd)?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run(fd))
}

async fn run(fd: OwnedFd) -> Result<()> {
    let link = Arc::new(Link::new(fd)?);
    let init = link.init().await?;
    let started = match start(&init).await {
        Ok(started) => started,
        Err(e) => {
            link.failed(&e).await;
            return Err(e);
        }
    };
    let Started { ctx, deployer, tls } = started;
    let connections = admission::Connections::new(init.limits.max_connections, link.clone());
    admission::spawn_summary(init.index, ctx.requests.clone(), connections.clone());
    link.ready(&init.app.id).await?;
    spawn_stats(ctx.clone(), link.clone(), connections.clone());

    let graceful = GracefulShutdown::new();
    loop {
        match link.next().await? {
            Next::Conn { id, fd } => {
                connection::serve(&ctx, fd, &graceful, &connections, tls.as_ref());
                link.received(id).await?;
            }
            Next::Other(ToWorker::Load { app, smoke_all }) => {
                let smoke = if smoke_all { Smoke::All } else { Smoke::New };
                deployer.spawn_load(ctx.clone(), link.clone(), *app, smoke);
            }
            Next::Other(ToWorker::Report) => {
                let (requests, in_flight, counts) = ctx.stats(connections.open());
                link.stats(requests, in_flight, counts).await?;
            }
            Next::Other(ToWorker::Drain) => break,
            Next::Other(other) => {
                tracing::warn!("unexpected message from the primary: {other:?}")
            }
            // The primary is gone; PDEATHSIG ends us too, drain meanwhile.
            Next::Closed => break,
            Next::Bad(e) => tracing::warn!("bad message from the primary: {e}"),
        }
    }
    drain(&ctx, &connections, init.drain_timeout).await;
    if tokio::time::timeout(init.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            worker = init.index,
            "drain timeout passed with requests in flight"
        );
    }
    // The last counts, so the primary's totals include this worker's end.
    let (requests, in_flight, counts) = ctx.stats(0);
    link.stats(requests, in_flight, counts).await.ok();
    Ok(())
}

/// A worker that has loaded its first version and may take connections.
struct Started {
    ctx: Arc<WorkerCtx>,
    deployer: Arc<Deployer>,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

/// Loads the first version of the application (and the TLS pair) once
/// the epoch ticks (so a smoke check of a guest that loops cannot hang).
async fn start(init: &WorkerInit) -> Result<Started> {
    let engines = Arc::new(Engines::new(init.engine.clone(), Allocation::Pooling));
    let ticking = engines.clone();
    std::thread::Builder::new()
        .name("epoch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(EPOCH_TICK);
                ticking.increment_epoch();
            }
        })?;
    let app = LoadedApp::load(&engines, &init.app, None, Smoke::WhenReused).await?;
    let tls = match init.tls.clone() {
        Some((cert, key)) => Some(tls::acceptor(init.index, cert, key).await?),
        None => None,
    };
    Ok(Started {
        ctx: Arc::new(WorkerCtx::new(init.index, app, init.limits.clone())),
        deployer: Arc::new(Deployer { engines }),
        tls,
    })
}

/// The gentle part of a drain: responses say `Connection: close` from now
/// on; wait (up to DRAIN_GRACE) for the open connections to take that and
/// go. What is left is closed by the graceful shutdown after this.
async fn drain(ctx: &WorkerCtx, connections: &admission::Connections, drain_timeout: Duration) {
    ctx.start_draining();
    let grace = tokio::time::Instant::now() + DRAIN_GRACE.min(drain_timeout);
    // Connections received just before Drain count too: closing one before
    // hyper has read its request would reset it.
    while connections.busy() > 0 && tokio::time::Instant::now() < grace {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Reports the worker's counts to the primary every second, for `status`.
fn spawn_stats(
    ctx: Arc<service::WorkerCtx>,
    link: Arc<Link>,
    connections: Arc<admission::Connections>,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(STATS_INTERVAL);
        loop {
            tick.tick().await;
            let (requests, in_flight, counts) = ctx.stats(connections.open());
            if link.stats(requests, in_flight, counts).await.is_err() {
                return;
            }
        }
    });
}
