//! The control socket: `wcluster status`, `reload` and `rollback` talk to a
//! running primary over a Unix socket, one JSON line each way.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use crate::cli::ControlArgs;

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Command {
    Status,
    Reload,
    Rollback,
}

pub type Request = (Command, oneshot::Sender<Value>);

/// A request line longer than this is refused.
const MAX_LINE: u64 = 4096;

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
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                if let Err(e) = answer(stream, tx).await {
                    tracing::debug!("control connection: {e:#}");
                }
            });
        }
    });
    Ok(rx)
}

async fn answer(stream: UnixStream, tx: mpsc::UnboundedSender<Request>) -> Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read)
        .take(MAX_LINE)
        .read_line(&mut line)
        .await?;
    let reply = match serde_json::from_str::<Command>(line.trim()) {
        Ok(cmd) => {
            let (reply_tx, reply_rx) = oneshot::channel();
            tx.send((cmd, reply_tx)).ok();
            reply_rx.await.unwrap_or_else(
                |_| serde_json::json!({"ok": false, "error": "the server is shutting down"}),
            )
        }
        Err(e) => serde_json::json!({"ok": false, "error": format!("bad request: {e}")}),
    };
    let mut out = serde_json::to_vec(&reply)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    Ok(())
}

/// The client side: `wcluster status|reload|rollback`. Prints the answer;
/// fails if the server says the command failed.
pub fn client(cmd: Command, args: ControlArgs) -> Result<()> {
    use std::io::{BufRead, Write};
    let path = args.control.unwrap_or_else(|| default_path(args.port));
    let mut stream = std::os::unix::net::UnixStream::connect(&path).with_context(|| {
        format!(
            "cannot reach a wcluster at `{}` (is it running? pass --port or --control)",
            path.display()
        )
    })?;
    let mut line = serde_json::to_vec(&cmd)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut reply = String::new();
    std::io::BufReader::new(stream).read_line(&mut reply)?;
    let reply: Value = serde_json::from_str(&reply).context("the server's answer is not JSON")?;
    println!("{}", serde_json::to_string_pretty(&reply)?);
    if reply["ok"] != true {
        bail!(
            "{}",
            reply["error"]
                .as_str()
                .unwrap_or("the server reported a failure")
        );
    }
    Ok(())
}
