//! What wcluster trusts in the artifact cache: it runs native code (a
//! wasmtime artifact is machine code), so the cache directory must be ours
//! and private (crate::files), every artifact in it ours and unwritable by
//! others, and its content must match the digest recorded when it was
//! written.

use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

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
    if actual != expected {
        return Err(DamagedArtifact(path.to_path_buf()).into());
    }
    Ok(actual)
}

/// An artifact whose bytes are not the ones its version was compiled to:
/// typed, so a worker can ask the primary to compile it again.
#[derive(Debug)]
pub struct DamagedArtifact(pub PathBuf);

impl std::fmt::Display for DamagedArtifact {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cached artifact `{}` does not match the digest recorded when it was written \
             (corrupted or replaced); refused",
            self.0.display()
        )
    }
}

impl std::error::Error for DamagedArtifact {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::write_private;

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
