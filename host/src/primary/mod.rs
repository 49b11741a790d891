//! The primary process: owns the listening socket, the worker table and the
//! balancer; never runs guest code.
//!
//! Strategy: before anything binds, the handler is compiled (or found in the
//! cache) by a child process. Then one task, this one, runs a loop over three
//! sources:
//! - the listener: each accepted connection goes to the dispatcher, which
//!   sends its fd to the next ready worker and holds it until acknowledged;
//! - worker events, from two tasks per worker (supervisor.rs): channel
//!   messages (Ready, Accepted, Failed) and the process's exit;
//! - signals (signal.rs): TERM/INT start the drain.
//!
//! Everything runs on one thread, so the worker table needs no locks.

mod balancer;
mod dispatch;
mod supervisor;

use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::mpsc;

use crate::config::{Config, WorkerInit};
use crate::ipc::ToPrimary;
use crate::runtime::artifact;
use crate::signal::{self, SignalEvent};
use dispatch::Dispatcher;
use supervisor::{Event, Supervisor};

/// Extra time, beyond --drain-timeout, before workers still alive are killed.
const KILL_GRACE: Duration = Duration::from_secs(5);

pub fn main(config: Config) -> Result<()> {
    // One thread: see Supervisor::spawn for why that matters.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run(config))
}

async fn run(config: Config) -> Result<()> {
    let artifact = artifact::prepare(
        &config.handler,
        &config.cache_dir,
        &config.engine,
        &config.compile,
    )
    .await?;
    tracing::info!(
        version = %artifact.version,
        compiled = artifact.compiled,
        ms = artifact.compile_time.as_millis() as u64,
        "handler `{}` ready",
        config.handler.display()
    );
    let listener = bind(config.addr)?;
    let addr = listener.local_addr()?;
    let mut signals = signal::listen()?;
    let (tx, mut events) = mpsc::unbounded_channel();
    let init = WorkerInit {
        index: 0,
        artifact: artifact.path.clone(),
        version: artifact.version.clone(),
        engine: config.engine.clone(),
        limits: config.limits.clone(),
        grants: config.grants.clone(),
        drain_timeout: config.drain_timeout,
    };
    let mut sup = Supervisor::new(config.workers, init, config.log_format, tx);
    for i in 0..sup.len() {
        sup.spawn(i)?;
    }

    // Start-up: every worker must load the handler before we announce.
    while !sup.all_ready() {
        tokio::select! {
            Some(ev) = events.recv() => match ev {
                Event::Message { index, generation, msg: ToPrimary::Ready } => { sup.mark_ready(index, generation); }
                Event::Message { index, msg: ToPrimary::Failed { error }, .. } => {
                    sup.kill_all();
                    bail!("worker {index} could not load the handler: {error}");
                }
                Event::ChannelClosed { index, .. } | Event::ProcessExited { index, .. } => {
                    sup.kill_all();
                    bail!("worker {index} exited during start-up");
                }
                _ => {}
            },
            Some(SignalEvent::Shutdown) = signals.recv() => {
                sup.kill_all();
                return Ok(());
            }
        }
    }
    println!(
        "wcluster: listening on http://{addr} ({} workers)",
        sup.len()
    );

    let mut dispatch = Dispatcher::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => match stream.into_std() {
                    Ok(stream) => dispatch.dispatch(&mut sup, stream),
                    Err(e) => tracing::warn!("cannot take an accepted connection: {e}"),
                },
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(ev) = events.recv() => on_event(ev, &mut sup, &mut dispatch)?,
            Some(SignalEvent::Shutdown) = signals.recv() => break,
        }
        if !dispatch.is_idle() {
            dispatch.flush(&mut sup);
        }
    }

    // Drain: stop accepting, let the workers finish, exit 0.
    drop(listener);
    tracing::info!(
        "shutting down: draining workers (up to {:?})",
        config.drain_timeout
    );
    sup.drain_all().await;
    let deadline = tokio::time::Instant::now() + config.drain_timeout + KILL_GRACE;
    while sup.any_alive() {
        tokio::select! {
            Some(ev) = events.recv() => on_event(ev, &mut sup, &mut dispatch)?,
            _ = tokio::time::sleep_until(deadline) => {
                tracing::warn!("workers still running after the drain timeout: killing them");
                sup.kill_all();
                break;
            }
        }
    }
    Ok(())
}

fn on_event(ev: Event, sup: &mut Supervisor, dispatch: &mut Dispatcher) -> Result<()> {
    match ev {
        Event::Message {
            msg: ToPrimary::Accepted { id },
            ..
        } => dispatch.accepted(id),
        Event::Message {
            index,
            generation,
            msg: ToPrimary::Ready,
        } => {
            sup.mark_ready(index, generation);
        }
        Event::Message {
            index,
            generation,
            msg: ToPrimary::Failed { error },
        } => {
            tracing::error!(worker = index, "worker could not load the handler: {error}");
            if sup.lost(index, generation, "load failed") {
                dispatch.reclaim(index);
            }
        }
        Event::ChannelClosed { index, generation } => {
            if sup.lost(index, generation, "channel closed") {
                dispatch.reclaim(index);
            }
        }
        Event::ProcessExited {
            index,
            generation,
            status,
        } => {
            if sup.lost(index, generation, &format!("exited: {status}")) {
                dispatch.reclaim(index);
            }
            sup.reaped(index, generation);
        }
        Event::Respawn { index } => {
            if !sup.shutting_down {
                sup.spawn(index)?;
            }
        }
    }
    Ok(())
}

fn bind(addr: std::net::SocketAddr) -> Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }?;
    // Lets a restarted wcluster bind while old connections sit in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket
        .bind(addr)
        .with_context(|| format!("cannot listen on {addr}"))?;
    socket
        .listen(1024)
        .with_context(|| format!("cannot listen on {addr}"))
}
