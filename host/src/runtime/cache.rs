//! What wcluster trusts on disk: the artifact cache runs native code (a
//! wasmtime artifact is machine code), so the cache directory must be ours
//! and private, every artifact in it ours and unwritable by others, and its
//! content must match the digest recorded when it was written.

use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use sha2::{Digest, Sha256};

/// Creates `dir` (mode 0700) if missing, and refuses one that another user
/// owns or that others may write to: whoever can write there can put code
/// under a handler's name.
pub fn private_dir(dir: &Path, what: &str, flag: &str) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {what} `{}`", dir.display()))?;
    let meta = std::fs::metadata(dir)
        .with_context(|| format!("cannot read {what} `{}`", dir.display()))?;
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

/// Refuses an artifact that is not a regular file of ours, unwritable by
/// others (a symlink, or a file planted by another user).
pub fn check_artifact_file(path: &Path) -> Result<()> {
    let meta = std::fs::symlink_metadata(path)
        .with_context(|| format!("cannot read artifact `{}`", path.display()))?;
    let me = nix::unistd::geteuid().as_raw();
    if !meta.file_type().is_file() || meta.uid() != me || meta.mode() & 0o022 != 0 {
        bail!(
            "cached artifact `{}` is not a private file of this user (uid {}, mode {:o}); \
             refused. Remove it (or the whole cache directory) and start again",
            path.display(),
            meta.uid(),
            meta.permissions().mode() & 0o777
        );
    }
    Ok(())
}

/// Where the digest of `artifact` is recorded.
pub fn digest_path(artifact: &Path) -> PathBuf {
    let mut name = artifact.as_os_str().to_owned();
    name.push(".sha256");
    PathBuf::from(name)
}

/// SHA-256 of a file, streamed.
pub fn digest_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path)
        .with_context(|| format!("cannot read artifact `{}`", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("cannot read artifact `{}`", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("{:x}", hasher.finalize()))
}

pub fn digest_bytes(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// Checks that the artifact holds what was written: its recorded digest,
/// when `expected` is None, or `expected`. Returns the digest.
pub fn verify_artifact(path: &Path, expected: Option<&str>) -> Result<String> {
    check_artifact_file(path)?;
    let recorded;
    let expected = match expected {
        Some(e) => e,
        None => {
            let sidecar = digest_path(path);
            check_artifact_file(&sidecar)?;
            recorded = std::fs::read_to_string(&sidecar)
                .with_context(|| format!("cannot read `{}`", sidecar.display()))?;
            recorded.trim()
        }
    };
    let actual = digest_file(path)?;
    ensure!(
        actual == expected,
        "cached artifact `{}` does not match the digest recorded when it was written \
         (corrupted or replaced); refused",
        path.display()
    );
    Ok(actual)
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
    fn an_artifact_must_match_its_digest() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("x.cwasm");
        write_private(&a, b"artifact").unwrap();
        write_private(&digest_path(&a), digest_bytes(b"artifact").as_bytes()).unwrap();
        verify_artifact(&a, None).unwrap();
        write_private(&a, b"artifacT").unwrap();
        let err = verify_artifact(&a, None).unwrap_err();
        assert!(format!("{err:#}").contains("does not match"), "{err:#}");
        let link = dir.path().join("link.cwasm");
        std::os::unix::fs::symlink(&a, &link).unwrap();
        assert!(check_artifact_file(&link).is_err());
    }
}
