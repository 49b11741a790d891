//! The control socket: `wcluster status|reload|rollback|scale` talk to a
//! running primary over a Unix socket, one JSON line each way, in the typed
//! messages of protocol.rs. The server side forwards each request to the
//! primary's loop; client.rs is the command-line side.

mod client;
pub mod protocol;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

pub use client::client;
use protocol::{Refusal, Reply};

pub type Request = (protocol::Request, oneshot::Sender<Reply>);

/// A request line longer than this is refused.
const MAX_LINE: u64 = 4096;
/// A client must send its request within this.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the control socket of the server on `port` lives by default.
pub fn default_path(port: u16) -> PathBuf {
    let dir = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    dir.join(format!("wcluster-{port}.sock"))
}

/// Binds the socket and forwards each request to the primary's loop.
pub fn serve(path: &Path) -> Result<mpsc::UnboundedReceiver<Request>> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "control socket `{}` is in use by another wcluster; pass --control PATH",
                path.display()
            );
        }
        // Left behind by a server that was killed.
        std::fs::remove_file(path).ok();
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("cannot create control socket `{}`", path.display()))?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        if let Err(e) = answer(stream, tx).await {
                            tracing::debug!("control connection: {e:#}");
                        }
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
    Ok(rx)
}

async fn answer(stream: UnixStream, tx: mpsc::UnboundedSender<Request>) -> Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    tokio::time::timeout(
        READ_TIMEOUT,
        BufReader::new(read).take(MAX_LINE).read_line(&mut line),
    )
    .await
    .context("no request in time")??;
    let reply = match serde_json::from_str::<protocol::Request>(line.trim()) {
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
    };
    let mut out = serde_json::to_vec(&reply)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    Ok(())
}
