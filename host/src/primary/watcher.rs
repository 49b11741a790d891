//! Watches the files whose changes deploy: the handler file, or the
//! manifest and every handler file it names. Directories are watched, not
//! the files, so a rename over one (`mv`, most editors) is seen as well as
//! writes in place.
//!
//! The directory the operator named is watched, not only where symlinks
//! lead: a Kubernetes ConfigMap or Secret volume reaches the file through
//! `..data`, a symlink that the kubelet swaps atomically to a new directory
//! on every update (and then deletes the old one), so only the named
//! directory sees every update, and such a swap may change every file in
//! it at once. When a file is a symlink, the directory it resolves to is
//! watched too, for edits made there in place.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

use super::release::Scope;

/// (directory, file name, what a change there reads again).
type Watched = Vec<(PathBuf, OsString, Scope)>;

pub struct Watcher {
    inner: RecommendedWatcher,
    files: Arc<Mutex<Watched>>,
    dirs: BTreeSet<PathBuf>,
}

impl Watcher {
    /// Starts a watcher; what each change calls for arrives on the channel
    /// (not debounced: the primary's core does that). Nothing is watched
    /// until `set`.
    pub fn new() -> Result<(Watcher, mpsc::UnboundedReceiver<Scope>)> {
        let files: Arc<Mutex<Watched>> = Arc::default();
        let shared = files.clone();
        let (tx, rx) = mpsc::unbounded_channel();
        let inner = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let Ok(event) = res else { return };
            if matches!(event.kind, EventKind::Access(_)) {
                return;
            }
            let files = shared.lock().unwrap_or_else(|e| e.into_inner());
            for (dir, name, scope) in files.iter() {
                let hit = event.paths.iter().any(|p| {
                    p.parent() == Some(dir.as_path())
                        && p.file_name().is_some_and(|f| {
                            // The file itself, or a volume's atomic writer
                            // (`..data`, `..data_tmp`, `..2026_11_26_...`).
                            f == name || f.to_string_lossy().starts_with("..")
                        })
                });
                if hit {
                    tx.send(scope.clone()).ok();
                }
            }
        })
        .context("cannot start the file watcher")?;
        Ok((
            Watcher {
                inner,
                files,
                dirs: BTreeSet::new(),
            },
            rx,
        ))
    }

    /// Watches these files from now on (a new manifest may name others).
    /// Directories no longer needed stay watched: their events match no
    /// file. A file that does not exist yet is watched for in its
    /// directory; one whose directory cannot be watched is skipped, with
    /// the reason (the others are watched all the same).
    pub fn set(&mut self, files: &[(PathBuf, Scope)]) -> Vec<String> {
        let mut watched = Watched::new();
        let mut problems = Vec::new();
        for (file, scope) in files {
            let places = match places(file) {
                Ok(places) => places,
                Err(e) => {
                    problems.push(format!("{e:#}"));
                    continue;
                }
            };
            for (dir, name) in places {
                if !self.dirs.contains(&dir) {
                    if let Err(e) = self.inner.watch(&dir, RecursiveMode::NonRecursive) {
                        problems.push(format!("cannot watch `{}`: {e}", dir.display()));
                        continue;
                    }
                    self.dirs.insert(dir.clone());
                }
                watched.push((dir, name, scope.clone()));
            }
        }
        *self.files.lock().unwrap_or_else(|e| e.into_inner()) = watched;
        problems
    }
}

/// The (directory, name) pairs a file is reached by: as named, and where
/// its symlinks lead (when it exists).
fn places(file: &Path) -> Result<BTreeSet<(PathBuf, OsString)>> {
    let named = std::path::absolute(file)
        .with_context(|| format!("cannot resolve `{}`", file.display()))?;
    let resolved = file.canonicalize().ok();
    let mut out = BTreeSet::new();
    for path in std::iter::once(&named).chain(resolved.as_ref()) {
        let dir = path.parent().context("the file has no directory")?;
        let name = path.file_name().context("the file has no name")?;
        out.insert((dir.to_path_buf(), name.to_os_string()));
    }
    Ok(out)
}
