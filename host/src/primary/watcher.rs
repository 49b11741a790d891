//! Watches the handler file. The directory is watched, not the file, so a
//! rename over it (`mv`, most editors) is seen as well as writes in place.

use std::ffi::OsString;
use std::path::Path;

use anyhow::{Context, Result};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// Starts watching; a unit arrives for each change to the file (not
/// debounced: the primary's loop does that). Keep the watcher alive.
pub fn watch(handler: &Path) -> Result<(RecommendedWatcher, mpsc::UnboundedReceiver<()>)> {
    let handler = handler
        .canonicalize()
        .with_context(|| format!("cannot resolve `{}`", handler.display()))?;
    let dir = handler
        .parent()
        .context("the handler has no directory")?
        .to_path_buf();
    let name: OsString = handler
        .file_name()
        .context("the handler has no file name")?
        .into();
    let (tx, rx) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(event) = res else { return };
        if matches!(event.kind, EventKind::Access(_)) {
            return;
        }
        if event
            .paths
            .iter()
            .any(|p| p.file_name() == Some(name.as_os_str()))
        {
            tx.send(()).ok();
        }
    })
    .context("cannot start the file watcher")?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .with_context(|| format!("cannot watch `{}`", dir.display()))?;
    Ok((watcher, rx))
}
