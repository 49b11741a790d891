//! Files and directories that only this user may write: the cache, state
//! and control-socket directories, and what wcluster writes into them; and
//! the one way small files named by flags are read (keys, tokens, config).
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

/// Reads a small file a flag names (`what`: the flag, for messages): opened
/// without blocking (a FIFO would block `open` forever), refused unless what
/// was opened is a regular file, and never more than `max` bytes (`limit`
/// names the flag or rule that sets it). `/dev/zero`, a FIFO or a huge file
/// is a clear error, not a hang or an allocation of everything.
pub fn read_small(path: &Path, what: &str, max: u64, limit: &str) -> Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let name = path.display();
    let cannot = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::NotFound => anyhow::anyhow!("{what} `{name}`: no such file"),
        _ => anyhow::anyhow!("{what} `{name}`: cannot read it: {e}"),
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(cannot)?;
    // fstat of what was opened: the path may change meanwhile.
    let meta = file.metadata().map_err(cannot)?;
    ensure!(
        meta.is_file(),
        "{what} `{name}`: not a regular file; refused"
    );
    ensure!(
        meta.len() <= max,
        "{what} `{name}`: {} bytes, over the limit of {max} ({limit})",
        meta.len()
    );
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes).map_err(cannot)?;
    ensure!(
        bytes.len() as u64 <= max,
        "{what} `{name}`: grew past the limit of {max} bytes while being read ({limit})"
    );
    Ok(bytes)
}

/// A warning when group or others may read a file that holds a secret.
pub fn secret_warning(path: &Path, what: &str) -> Option<String> {
    let mode = std::fs::metadata(path).ok()?.mode() & 0o7777;
    (mode & 0o044 != 0).then(|| {
        format!(
            "{what} `{}`: readable by other users (mode {mode:04o}): `chmod 600` it, \
             as ssh asks of its keys",
            path.display()
        )
    })
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
    fn small_files_are_regular_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "0123456789").unwrap();
        assert_eq!(
            read_small(&file, "--x", 10, "--max-x").unwrap(),
            b"0123456789"
        );
        let err = read_small(&file, "--x", 9, "--max-x")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("10 bytes, over the limit of 9 (--max-x)"),
            "{err}"
        );
        let err = read_small(Path::new("/dev/zero"), "--x", 9, "--max-x").unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let err = read_small(&fifo, "--x", 9, "--max-x").unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        let err = read_small(&dir.path().join("nope"), "--x", 9, "--max-x").unwrap_err();
        assert!(err.to_string().contains("no such file"), "{err}");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(secret_warning(&file, "--x"), None);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(
            secret_warning(&file, "--x")
                .unwrap()
                .contains("(mode 0640)")
        );
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
