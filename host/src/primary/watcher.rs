//! Watches the handler file. Directories are watched, not the file, so a
//! rename over it (`mv`, most editors) is seen as well as writes in place.
//!
//! The directory the operator named is watched, not only where symlinks
//! lead: a Kubernetes ConfigMap or Secret volume reaches the file through
//! `..data`, a symlink that the kubelet swaps atomically to a new directory
//! on every update (and then deletes the old one), so only the named
//! directory sees every update. When the handler is a symlink, the
//! directory it resolves to is watched too, for edits made there in place.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// Starts watching; a unit arrives for each change to the file (not
/// debounced: the primary's loop does that). Keep the watcher alive.
pub fn watch(handler: &Path) -> Result<(RecommendedWatcher, mpsc::UnboundedReceiver<()>)> {
    let named = std::path::absolute(handler)
        .with_context(|| format!("cannot resolve `{}`", handler.display()))?;
    let resolved = handler
        .canonicalize()
        .with_context(|| format!("cannot resolve `{}`", handler.display()))?;
    // (directory, file name) pairs whose events count.
    let mut watched: BTreeSet<(PathBuf, OsString)> = BTreeSet::new();
    for path in [&named, &resolved] {
        let dir = path.parent().context("the handler has no directory")?;
        let name = path.file_name().context("the handler has no file name")?;
        watched.insert((dir.to_path_buf(), name.to_os_string()));
    }
    let names: Vec<OsString> = watched.iter().map(|(_, n)| n.clone()).collect();
    let (tx, rx) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(event) = res else { return };
        if matches!(event.kind, EventKind::Access(_)) {
            return;
        }
        let relevant = event.paths.iter().any(|p| {
            p.file_name().is_some_and(|f| {
                // The handler itself, or a volume's atomic writer
                // (`..data`, `..data_tmp`, `..2026_11_26_...`).
                names.iter().any(|n| n == f) || f.to_string_lossy().starts_with("..")
            })
        });
        if relevant {
            tx.send(()).ok();
        }
    })
    .context("cannot start the file watcher")?;
    let dirs: BTreeSet<&PathBuf> = watched.iter().map(|(d, _)| d).collect();
    for dir in dirs {
        watcher
            .watch(dir, RecursiveMode::NonRecursive)
            .with_context(|| format!("cannot watch `{}`", dir.display()))?;
    }
    Ok((watcher, rx))
}
