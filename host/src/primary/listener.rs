//! The listening socket: the one systemd passed (socket activation,
//! LISTEN_FDS/LISTEN_PID naming this process), or one bound to --addr.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use tokio::net::{TcpListener, TcpSocket};

pub fn listen(addr: SocketAddr, backlog: u32) -> Result<TcpListener> {
    let mut fds = listenfd::ListenFd::from_env();
    if fds.len() > 0 {
        let inherited = fds
            .take_tcp_listener(0)
            .context("the socket systemd passed (LISTEN_FDS) is not a TCP listener")?;
        if let Some(listener) = inherited {
            // Inherited without CLOEXEC: no worker may inherit it in turn.
            fcntl(&listener, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
            listener.set_nonblocking(true)?;
            tracing::info!(
                "listening on the socket systemd passed (LISTEN_FDS); --addr is not used"
            );
            return Ok(TcpListener::from_std(listener)?);
        }
    }
    bind(addr, backlog)
}

fn bind(addr: SocketAddr, backlog: u32) -> Result<TcpListener> {
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
        .listen(backlog)
        .with_context(|| format!("cannot listen on {addr}"))
}
