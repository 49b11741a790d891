//! Files and directories that only this user may write: the cache, state
//! and control-socket directories, and what wcluster writes into them.
//! Below both config/ and runtime/, which use it.

use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::Path;

use anyhow::{Context, Result, ensure};

/// Creates `dir` (mode 0700) if missing, and refuses one that another user
/// owns or that others may write to: whoever can write there can put code
/// under a handler's name. A symbolic link is refused, not followed: one
/// planted at a default path (in /tmp) would lead wcluster into a directory
/// of someone else's choosing.
pub fn private_dir(dir: &Path, what: &str, flag: &str) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {what} `{}`", dir.display()))?;
    let meta = std::fs::symlink_metadata(dir)
        .with_context(|| format!("cannot read {what} `{}`", dir.display()))?;
    ensure!(
        !meta.file_type().is_symlink(),
        "{what} `{}` is a symbolic link; refused. Remove it, or pass {flag} \
         with the directory itself",
        dir.display()
    );
    ensure!(
        meta.is_dir(),
        "{what} `{}` is not a directory; pass {flag} DIR",
        dir.display()
    );
    let me = nix::unistd::geteuid().as_raw();
    ensure!(
        meta.uid() == me,
        "{what} `{}` belongs to uid {}, not to this user (uid {me}); refused. \
         Remove it, or pass {flag} with a directory of your own",
        dir.display(),
        meta.uid()
    );
    ensure!(
        meta.mode() & 0o022 == 0,
        "{what} `{}` is writable by other users (mode {:o}); refused. \
         Run `chmod 700 {}`, or pass {flag} with a private directory",
        dir.display(),
        meta.mode() & 0o777,
        dir.display()
    );
    Ok(())
}

/// Writes `bytes` to `path` inside a private directory: a new file (O_EXCL,
/// so nothing planted under the temporary name is followed) renamed over
/// `path` (a rename replaces a symlink there instead of writing through it).
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().context("the path has no directory")?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .with_context(|| format!("cannot write in `{}`", dir.display()))?;
    std::io::Write::write_all(&mut tmp, bytes)
        .with_context(|| format!("cannot write `{}`", path.display()))?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("cannot write `{}`", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_world_writable_directory_is_refused_and_a_private_one_accepted() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("cache");
        private_dir(&dir, "cache directory", "--cache-dir").unwrap();
        let mode = std::fs::metadata(&dir).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = private_dir(&dir, "cache directory", "--cache-dir").unwrap_err();
        assert!(format!("{err:#}").contains("chmod 700"), "{err:#}");
    }

    #[test]
    fn a_symbolic_link_is_refused_even_to_a_private_directory() {
        let base = tempfile::tempdir().unwrap();
        let real = base.path().join("real");
        private_dir(&real, "cache directory", "--cache-dir").unwrap();
        let planted = base.path().join("planted");
        std::os::unix::fs::symlink(&real, &planted).unwrap();
        let err = private_dir(&planted, "control socket directory", "--control").unwrap_err();
        assert!(format!("{err:#}").contains("symbolic link"), "{err:#}");
    }
}
