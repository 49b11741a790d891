//! A worker process: the same binary re-executed by the primary with the
//! hidden `worker` subcommand. It never binds a socket: connections arrive as
//! fds over its channel (ipc/) and are served by hyper on a single-threaded
//! tokio runtime, each request in a fresh WASM instance.
//!
//! Strategy: one task reads the channel (Init, then Conn/Load/Drain) and
//! spawns a task per connection (connection.rs); requests run in service.rs.
//! Load starts a deploy task (deploy.rs) that swaps the handler in place, so
//! connections stay where they are. A stats task reports counts each second.
//! Drain stops the channel loop and waits for the connections, bounded by
//! the drain timeout.

mod admission;
mod connection;
mod deploy;
mod edge;
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
use crate::ipc::{self, Channel, ToPrimary, ToWorker};
use crate::runtime::artifact::cache::DamagedArtifact;
use crate::runtime::artifact::engine::{Allocation, Engines};
use crate::runtime::capabilities::Capabilities;
use crate::runtime::guest::{Handler, InstancePolicy, Strategy};
use deploy::Deployer;
use service::WorkerCtx;

/// How often the engine's epoch advances: how long a busy guest runs before
/// it yields to the worker's other requests.
const EPOCH_TICK: Duration = Duration::from_millis(10);
const STATS_INTERVAL: Duration = Duration::from_secs(1);
/// On drain, how long keep-alive clients get to send one more request
/// (answered with `Connection: close`) before idle connections are closed
/// and HTTP/2 ones get GOAWAY.
const DRAIN_GRACE: Duration = Duration::from_secs(1);

/// Connections one acknowledgement names at most, so that a long burst is
/// still acknowledged as it goes and the message stays small.
const MAX_ACK_BATCH: usize = 64;

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
    let chan = Arc::new(Channel::new(fd)?);
    let init = match chan.recv::<ToWorker>().await? {
        Some((ToWorker::Init(init), _)) => init,
        Some((other, _)) => bail!("expected Init from the primary, got {other:?}"),
        None => bail!("the primary closed the channel before Init"),
    };
    let engines = Arc::new(Engines::new(init.engine.clone(), Allocation::Pooling));
    let deployer = Arc::new(Deployer {
        engines: engines.clone(),
        caps: Arc::new(Capabilities::new(init.grants.clone())?),
        smoke: init.smoke.clone(),
        policy: InstancePolicy {
            reuse: init.reuse_instances,
            concurrency: init.max_instance_concurrency,
            request_timeout: init.limits.timeout,
        },
    });
    // The first version was checked by the compile child; it only needs
    // loading (the primary smoke-checks versions that arrive later).
    let first = Handler::load(
        &engines,
        &init.version,
        deployer.caps.clone(),
        deployer.policy,
    );
    let handler = match first {
        Ok(h) => h,
        Err(e) => {
            let error = format!("{e:#}");
            let msg = if e.chain().any(|c| c.is::<DamagedArtifact>()) {
                ToPrimary::ArtifactDamaged { error }
            } else {
                ToPrimary::Failed { error }
            };
            chan.send(&msg, None).await.ok();
            return Err(e);
        }
    };
    let tls = match init.tls.clone() {
        Some((cert, key)) => match tls::acceptor(init.index, cert, key).await {
            Ok(acceptor) => Some(acceptor),
            Err(e) => {
                let error = format!("{e:#}");
                chan.send(&ToPrimary::Failed { error }, None).await.ok();
                return Err(e);
            }
        },
        None => None,
    };
    std::thread::Builder::new()
        .name("epoch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(EPOCH_TICK);
                engines.increment_epoch();
            }
        })?;
    // With reuse, the first version too must show it can serve a second
    // request in one instance before it takes traffic (the epoch ticks by
    // now, so a guest that loops cannot hang this).
    if handler.strategy() != Strategy::Fresh
        && let Err(e) = handler
            .smoke_check(&deployer.smoke.path, deployer.smoke.timeout)
            .await
    {
        let error = format!("{e:#}");
        chan.send(&ToPrimary::Failed { error }, None).await.ok();
        return Err(e);
    }
    let ctx = Arc::new(WorkerCtx::new(init.index, handler, init.limits.clone()));
    let connections = admission::Connections::new(init.limits.max_connections, chan.clone());
    admission::spawn_summary(init.index, ctx.requests.clone(), connections.clone());
    let graceful = GracefulShutdown::new();
    chan.send(
        &ToPrimary::Ready {
            version: init.version.id.clone(),
        },
        None,
    )
    .await?;
    spawn_stats(ctx.clone(), chan.clone(), connections.clone());

    // Connections received back to back are acknowledged in one message,
    // sent before any of them is first polled (as one ack each was) and
    // before any other message is handled.
    let mut received = Vec::new();
    loop {
        let next = match chan.try_recv::<ToWorker>() {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                acknowledge(&chan, &mut received).await?;
                chan.recv::<ToWorker>().await
            }
            other => other,
        };
        if !matches!(next, Ok(Some((ToWorker::Conn { .. }, Some(_))))) {
            acknowledge(&chan, &mut received).await?;
        }
        match next {
            Ok(Some((ToWorker::Conn { id }, Some(fd)))) => {
                connection::serve(&ctx, fd, &graceful, &connections, tls.as_ref());
                received.push(id);
                if received.len() >= MAX_ACK_BATCH {
                    acknowledge(&chan, &mut received).await?;
                }
            }
            Ok(Some((ToWorker::Load(version), _))) => {
                deployer.spawn_load(ctx.clone(), chan.clone(), version);
            }
            Ok(Some((ToWorker::Report, _))) => {
                chan.send(&ctx.stats(connections.open()), None).await?;
            }
            Ok(Some((ToWorker::Drain, _))) => break,
            Ok(Some((other, _))) => {
                tracing::warn!("unexpected message from the primary: {other:?}")
            }
            // The primary is gone; PDEATHSIG ends us too, drain meanwhile.
            Ok(None) => break,
            Err(e) => tracing::warn!("bad message from the primary: {e}"),
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
    chan.send(&ctx.stats(0), None).await.ok();
    Ok(())
}

/// Tells the primary it may close its copies of the `received` connections.
async fn acknowledge(chan: &Channel, received: &mut Vec<u64>) -> std::io::Result<()> {
    if received.is_empty() {
        return Ok(());
    }
    let ids = std::mem::take(received);
    chan.send(&ToPrimary::Accepted { ids }, None).await
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
    chan: Arc<Channel>,
    connections: Arc<admission::Connections>,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(STATS_INTERVAL);
        loop {
            tick.tick().await;
            let stats = ctx.stats(connections.open());
            if chan.send(&stats, None).await.is_err() {
                return;
            }
        }
    });
}
