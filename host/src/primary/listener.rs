//! The listening socket: the one systemd passed (socket activation,
//! LISTEN_FDS/LISTEN_PID naming this process), or one bound to --addr.
//!
//! Accepted connections are never registered with the primary's event loop:
//! the primary only holds them until a worker has them, so registering
//! (and deregistering, to hand them off) would cost two epoll_ctl calls a
//! connection for nothing.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::net::TcpSocket;

/// The listening socket, readable-driven by tokio.
pub struct Listener(AsyncFd<std::net::TcpListener>);

impl Listener {
    /// The next connection, CLOEXEC and blocking (std's accept4): the
    /// worker that receives it makes it non-blocking.
    pub async fn accept(&self) -> std::io::Result<std::net::TcpStream> {
        self.0
            .async_io(Interest::READABLE, |l| l.accept().map(|(s, _)| s))
            .await
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.0.get_ref().local_addr()
    }
}

pub fn listen(addr: SocketAddr, backlog: u32) -> Result<Listener> {
    let std = open(addr, backlog)?;
    std.set_nonblocking(true)?;
    // SAFETY: the listener owns its fd and keeps its number for as long as
    // it lives, and the AsyncFd owns the listener for its whole life.
    let fd = unsafe { AsyncFd::register(std) }.map_err(|e| e.into_parts().1)?;
    Ok(Listener(fd))
}

fn open(addr: SocketAddr, backlog: u32) -> Result<std::net::TcpListener> {
    let mut fds = listenfd::ListenFd::from_env();
    if fds.len() > 0 {
        let inherited = fds
            .take_tcp_listener(0)
            .context("the socket systemd passed (LISTEN_FDS) is not a TCP listener")?;
        if let Some(listener) = inherited {
            // Inherited without CLOEXEC: no worker may inherit it in turn.
            fcntl(&listener, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
            tracing::info!(
                "listening on the socket systemd passed (LISTEN_FDS); --addr is not used"
            );
            return Ok(listener);
        }
    }
    bind(addr, backlog)
}

fn bind(addr: SocketAddr, backlog: u32) -> Result<std::net::TcpListener> {
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
    let listener = socket
        .listen(backlog)
        .with_context(|| format!("cannot listen on {addr}"))?;
    Ok(listener.into_std()?)
}
