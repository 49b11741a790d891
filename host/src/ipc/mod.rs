//! The primary <-> worker channel: one SOCK_SEQPACKET socketpair per worker,
//! small JSON messages, and connection fds riding along as SCM_RIGHTS.
//!
//! This module holds wcluster's fd-handling `unsafe`: the places where a raw
//! fd number becomes an `OwnedFd`. The messages themselves are in
//! messages.rs, free of syscalls, so they can be fuzzed on their own.

pub mod counts;
pub mod messages;

pub use counts::WorkerCounts;
pub use messages::{ToPrimary, ToWorker};

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg,
    sendmsg, socketpair,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// Upper bound of one message; `Init` is the largest and stays far below it.
const MAX_MESSAGE: usize = 256 * 1024;

/// Creates the socketpair for one worker: (primary's end, worker's end).
///
/// SEQPACKET, not STREAM, so each sendmsg arrives as one message together with
/// its fd and no framing is needed. CLOEXEC on both ends so no other child
/// inherits them; the worker's end is made inheritable just for its own spawn.
pub fn pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let (a, b) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    Ok((a, b))
}

/// Lets `fd` survive the next exec; called on the worker's end right before
/// the spawn, from the primary's only thread, so no other child can race to
/// inherit it.
pub fn make_inheritable(fd: BorrowedFd<'_>) -> io::Result<()> {
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty()))?;
    Ok(())
}

/// Takes ownership of the channel fd a worker inherited from the primary.
pub fn inherited(fd: RawFd) -> io::Result<OwnedFd> {
    // Refuse numbers that are not open sockets rather than adopt a random fd.
    nix::sys::socket::getsockopt(
        // SAFETY: only borrowed for this one check; validity is what it checks.
        &unsafe { BorrowedFd::borrow_raw(fd) },
        nix::sys::socket::sockopt::SockType,
    )
    .map_err(|e| io::Error::other(format!("fd {fd} is not the primary's channel: {e}")))?;
    // SAFETY: the primary passed this fd to us alone, and nothing else in the
    // worker knows its number, so the OwnedFd is its single owner.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    fcntl(&owned, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    Ok(owned)
}

fn send_raw(sock: BorrowedFd<'_>, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let cmsgs = if fds.is_empty() {
        vec![]
    } else {
        vec![ControlMessage::ScmRights(fds)]
    };
    // MSG_NOSIGNAL: a dead peer must be an EPIPE we handle, not a SIGPIPE.
    sendmsg::<()>(
        sock.as_raw_fd(),
        &[IoSlice::new(bytes)],
        &cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    Ok(())
}

/// One end of a channel, driven by tokio.
pub struct Channel {
    fd: AsyncFd<OwnedFd>,
    /// Where messages are received: allocated once, because zeroing
    /// MAX_MESSAGE bytes per message was a measurable share of a hand-off.
    buf: std::sync::Mutex<Box<[u8]>>,
}

impl Channel {
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        let flags = OFlag::from_bits_truncate(fcntl(&fd, FcntlArg::F_GETFL)?);
        fcntl(&fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
        // SAFETY: an OwnedFd is open and keeps its one fd number for as long
        // as it lives, and the AsyncFd owns it for its whole life.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)?;
        Ok(Self {
            fd,
            buf: std::sync::Mutex::new(vec![0u8; MAX_MESSAGE].into_boxed_slice()),
        })
    }

    /// Sends one message without waiting: `WouldBlock` when the peer's
    /// queue is full, so one stuck worker cannot stall the primary's loop.
    pub fn try_send<M: Serialize>(&self, msg: &M, fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
        let bytes = serde_json::to_vec(msg).map_err(io::Error::other)?;
        let fds: Vec<RawFd> = fd.iter().map(|f| f.as_raw_fd()).collect();
        send_raw(self.fd.get_ref().as_fd(), &bytes, &fds)
    }

    /// Sends one message, with `fd` attached if given.
    pub async fn send<M: Serialize>(&self, msg: &M, fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
        let bytes = serde_json::to_vec(msg).map_err(io::Error::other)?;
        let fds: Vec<RawFd> = fd.iter().map(|f| f.as_raw_fd()).collect();
        self.fd
            .async_io(Interest::WRITABLE, |sock| {
                send_raw(sock.as_fd(), &bytes, &fds)
            })
            .await?;
        Ok(())
    }

    /// Receives one message and the fd that came with it, or `None` once the
    /// other end is gone.
    pub async fn recv<M: DeserializeOwned>(&self) -> io::Result<Option<(M, Option<OwnedFd>)>> {
        self.fd
            .async_io(Interest::READABLE, |sock| self.recv_now(sock.as_fd()))
            .await
    }

    /// `recv` without waiting: `WouldBlock` when no message is queued.
    pub fn try_recv<M: DeserializeOwned>(&self) -> io::Result<Option<(M, Option<OwnedFd>)>> {
        self.fd
            .try_io(Interest::READABLE, |sock| self.recv_now(sock.as_fd()))
    }

    fn recv_now<M: DeserializeOwned>(
        &self,
        sock: BorrowedFd<'_>,
    ) -> io::Result<Option<(M, Option<OwnedFd>)>> {
        // Held only inside this call, never across an await.
        let mut buf = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        let mut cmsg = nix::cmsg_space!([RawFd; 1]);
        let mut iov = [IoSliceMut::new(&mut buf)];
        // MSG_CMSG_CLOEXEC: a received connection must never leak into a
        // child process (the compile child, a replacement worker).
        let msg = recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(io::Error::from)?;
        let mut fd = None;
        for c in msg.cmsgs().map_err(io::Error::from)? {
            if let ControlMessageOwned::ScmRights(fds) = c {
                for raw in fds {
                    // SAFETY: the kernel just installed this fd in our table
                    // for us; nobody else has its number.
                    let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                    // Only one fd per message is expected; extra ones are
                    // closed by dropping them.
                    fd.get_or_insert(owned);
                }
            }
        }
        if msg.flags.contains(MsgFlags::MSG_TRUNC) {
            return Err(io::Error::other("channel message larger than the limit"));
        }
        let len = msg.bytes;
        if len == 0 && fd.is_none() {
            return Ok(None);
        }
        let msg = messages::decode(&buf[..len])?;
        Ok(Some((msg, fd)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    #[tokio::test]
    async fn message_and_fd_cross_a_socketpair() {
        let (a, b) = pair().unwrap();
        let (a, b) = (Channel::new(a).unwrap(), Channel::new(b).unwrap());
        let (mut left, right) = UnixStream::pair().unwrap();
        a.send(&ToWorker::Conn { id: 7 }, Some(right.as_fd()))
            .await
            .unwrap();
        drop(right);
        let (msg, fd) = b.recv::<ToWorker>().await.unwrap().unwrap();
        assert!(matches!(msg, ToWorker::Conn { id: 7 }));
        let mut got = UnixStream::from(fd.expect("fd rides along"));
        left.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        got.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
    }

    #[tokio::test]
    async fn try_recv_takes_what_is_queued_and_never_waits() {
        let (a, b) = pair().unwrap();
        let (a, b) = (Channel::new(a).unwrap(), Channel::new(b).unwrap());
        let empty = b.try_recv::<ToWorker>().unwrap_err();
        assert_eq!(empty.kind(), io::ErrorKind::WouldBlock);
        for id in 1..=2 {
            a.send(&ToWorker::Conn { id }, None).await.unwrap();
        }
        let first = b.recv::<ToWorker>().await.unwrap().unwrap().0;
        assert!(matches!(first, ToWorker::Conn { id: 1 }));
        let second = b.try_recv::<ToWorker>().unwrap().unwrap().0;
        assert!(matches!(second, ToWorker::Conn { id: 2 }));
        let drained = b.try_recv::<ToWorker>().unwrap_err();
        assert_eq!(drained.kind(), io::ErrorKind::WouldBlock);
    }

    #[tokio::test]
    async fn closed_peer_reads_as_none() {
        let (a, b) = pair().unwrap();
        let b = Channel::new(b).unwrap();
        drop(a);
        assert!(b.recv::<ToPrimary>().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn garbage_is_an_error_not_a_panic() {
        let (a, b) = pair().unwrap();
        let b = Channel::new(b).unwrap();
        nix::unistd::write(&a, b"{not json").unwrap();
        let err = b.recv::<ToPrimary>().await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
