//! The control socket: `wcluster status|reload|rollback|scale` talk to a
//! running primary over a Unix socket, one JSON line each way, in the typed
//! messages of protocol.rs. The server side forwards each request to the
//! primary's loop; client.rs is the command-line side.

mod client;
pub mod protocol;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc, oneshot};

pub use client::client;
use protocol::{Refusal, Reply};

pub type Request = (protocol::Request, oneshot::Sender<Reply>);

/// A request line longer than this is refused.
const MAX_LINE: u64 = 4096;
/// A client must send its request within this.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Control connections served at once; more wait to be accepted.
const MAX_CLIENTS: usize = 32;

/// Where the control socket of the server on `port` lives by default: in a
/// directory of this user's alone ($XDG_RUNTIME_DIR/wcluster, or
/// $TMPDIR/wcluster-UID), so nobody else can squat or spoof the path.
pub fn default_path(port: u16) -> PathBuf {
    let dir = match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) => PathBuf::from(d).join("wcluster"),
        None => std::env::temp_dir().join(format!("wcluster-{}", nix::unistd::geteuid())),
    };
    dir.join(format!("wcluster-{port}.sock"))
}

/// Binds the socket and forwards each request to the primary's loop (`tx`).
/// `private_parent`: the path is the default one, whose directory is
/// created private (and refused if it is not).
pub fn serve(path: &Path, private_parent: bool, tx: mpsc::UnboundedSender<Request>) -> Result<()> {
    if private_parent && let Some(dir) = path.parent() {
        crate::files::private_dir(dir, "control socket directory", "--control")?;
    }
    clear_stale(path)?;
    let listener = UnixListener::bind(path)
        .with_context(|| format!("cannot create control socket `{}`", path.display()))?;
    // Not the umask's choice: connecting needs write permission, and only
    // this user may have it. `answer` checks the peer as well, for a path
    // in a directory others can reach between bind and chmod.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot make control socket `{}` private", path.display()))?;
    }
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    tokio::spawn(async move {
        loop {
            // At the cap, stop accepting: new clients wait in the listen
            // backlog until an idle one times out, instead of being closed.
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            match listener.accept().await {
                Ok((stream, _)) => {
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        if let Err(e) = answer(stream, tx).await {
                            tracing::debug!("control connection: {e:#}");
                        }
                        drop(permit);
                    });
                }
                // EMFILE and friends pass; one failure must not end the socket.
                Err(e) => {
                    tracing::warn!("control socket accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok(())
}

/// Removes a socket left behind by a server of ours that was killed; refuses
/// to touch anything else at the path.
fn clear_stale(path: &Path) -> Result<()> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot check `{}`", path.display())),
    };
    let name = path.display();
    if !meta.file_type().is_socket() {
        bail!(
            "`{name}` exists and is not a socket; refusing to replace it (pass another --control PATH)"
        );
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        bail!(
            "control socket `{name}` belongs to uid {}, not to this user (uid {me}); refused (pass another --control PATH)",
            meta.uid()
        );
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        bail!("control socket `{name}` is in use by another wcluster; pass --control PATH");
    }
    std::fs::remove_file(path).with_context(|| format!("cannot remove stale `{name}`"))
}

/// Whether a client running as `peer` may control a server running as
/// `server`: the same user, or root.
fn permitted(peer: u32, server: u32) -> bool {
    peer == server || peer == 0
}

async fn answer(stream: UnixStream, tx: mpsc::UnboundedSender<Request>) -> Result<()> {
    let peer = stream
        .peer_cred()
        .context("cannot tell who connected")?
        .uid();
    let server = nix::unistd::geteuid().as_raw();
    let (read, mut write) = stream.into_split();
    // Read first, whoever asks: a refusal sent before the client has
    // written its request would break its write (EPIPE) and hide the reason.
    let line = read_request(read).await?;
    let reply = if permitted(peer, server) {
        ask(&line, tx).await
    } else {
        tracing::warn!("control connection from uid {peer} refused: not this server's user");
        Reply::Refused {
            reason: Refusal::NotPermitted { uid: peer, server },
        }
    };
    let mut out = serde_json::to_vec(&reply)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    Ok(())
}

/// One request line, within READ_TIMEOUT and MAX_LINE.
async fn read_request(read: tokio::net::unix::OwnedReadHalf) -> Result<String> {
    let mut line = String::new();
    tokio::time::timeout(
        READ_TIMEOUT,
        BufReader::new(read).take(MAX_LINE).read_line(&mut line),
    )
    .await
    .context("no request in time")??;
    Ok(line)
}

/// Has the primary's loop answer the request in `line`.
async fn ask(line: &str, tx: mpsc::UnboundedSender<Request>) -> Reply {
    match serde_json::from_str::<protocol::Request>(line.trim()) {
        Ok(request) => {
            let (reply_tx, reply_rx) = oneshot::channel();
            tx.send((request, reply_tx)).ok();
            reply_rx.await.unwrap_or(Reply::Refused {
                reason: Refusal::ShuttingDown,
            })
        }
        Err(e) => Reply::Refused {
            reason: Refusal::BadRequest {
                error: e.to_string(),
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_servers_user_and_root_may_control_it() {
        assert!(permitted(1000, 1000));
        assert!(permitted(0, 1000));
        assert!(permitted(0, 0));
        assert!(!permitted(1001, 1000));
        assert!(!permitted(1000, 0));
    }
}
