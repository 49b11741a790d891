//! Compile once, load fast: the primary's side. It copies the handler into
//! the cache directory while hashing it and looks for a cached artifact; on
//! a miss a short-lived `wcluster compile` child (compile.rs) compiles that
//! copy, and the workers memory-map the result.

pub mod cache;
pub mod compile;
pub mod engine;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use sha2::{Digest, Sha256};

use crate::config::{CompileLimits, EngineSettings, Version};

/// A compiled handler ready for the workers.
#[derive(Debug, Clone, PartialEq)]
pub struct Artifact {
    pub path: PathBuf,
    /// Short content hash of the handler file: its version id.
    pub version: String,
    /// SHA-256 of the artifact file, checked by workers before loading it.
    pub digest: String,
    /// Whether this call compiled it (false: it came from the cache).
    pub compiled: bool,
    pub compile_time: Duration,
}

impl Artifact {
    /// The version as workers load it.
    pub fn version(&self) -> Version {
        Version {
            artifact: self.path.clone(),
            id: self.version.clone(),
            digest: self.digest.clone(),
        }
    }
}

/// What kind of file a handler is, read from its first bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Kind {
    Component,
    CoreModule,
}

pub fn kind(path: &Path, bytes: &[u8]) -> Result<Kind> {
    let name = path.display();
    if bytes.starts_with(b"\0asm") {
        return match bytes.get(4..8) {
            Some([_, _, 0, 0]) => Ok(Kind::CoreModule),
            Some([_, _, 1, 0]) => Ok(Kind::Component),
            _ => bail!("`{name}` has an unknown WebAssembly version/layer"),
        };
    }
    let text = std::str::from_utf8(&bytes[..bytes.len().min(64 * 1024)]).unwrap_or("");
    let text = skip_wat_comments(text);
    if text.starts_with("(component") {
        Ok(Kind::Component)
    } else if text.starts_with("(module") {
        Ok(Kind::CoreModule)
    } else {
        bail!(
            "`{name}` is not a WebAssembly file (expected a wasi:http component, WASI 0.2 or \
             0.3, or a WASI command module, in binary or text form: `\\0asm`, `(component` \
             or `(module`)"
        )
    }
}

/// The text after leading white space and `;;` line comments.
fn skip_wat_comments(mut text: &str) -> &str {
    loop {
        text = text.trim_start();
        match text.strip_prefix(";;") {
            Some(rest) => text = rest.split_once('\n').map_or("", |(_, after)| after),
            None => return text,
        }
    }
}

/// A private copy of the handler file, made while hashing it, so the
/// compile child compiles exactly the bytes that name the version: a write
/// or rename of the handler meanwhile cannot put other code under this name.
struct Staged {
    copy: tempfile::TempPath,
    /// The first 64 KiB, enough to tell the file's kind.
    head: Vec<u8>,
    hash: String,
}

/// Opens the handler without blocking (a FIFO would block `open`), refuses
/// anything but a regular file, and copies at most `max` bytes of it into
/// the cache directory while hashing them. Blocking I/O: run it off the
/// primary's event loop.
fn stage(handler: &Path, cache_dir: &Path, max: u64) -> Result<Staged> {
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let name = handler.display();
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(handler)
        .with_context(|| format!("cannot read handler `{name}`"))?;
    // fstat of what was opened, not stat of the path: the path may change.
    let meta = file
        .metadata()
        .with_context(|| format!("cannot read handler `{name}`"))?;
    ensure!(
        meta.file_type().is_file(),
        "handler `{name}` is not a regular file (it is a {}); refused",
        describe(&meta.file_type())
    );
    ensure!(
        meta.len() <= max,
        "handler `{name}` is {} bytes, over the limit of {max} (--max-module-size)",
        meta.len()
    );
    let mut copy = tempfile::Builder::new()
        .prefix(".staging-")
        .suffix(".wasm")
        .tempfile_in(cache_dir)
        .with_context(|| format!("cannot stage handler in `{}`", cache_dir.display()))?;
    let mut hasher = Sha256::new();
    let mut head = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("cannot read handler `{name}`"))?;
        if n == 0 {
            break;
        }
        total += n as u64;
        // The file may grow after the fstat: the limit holds for what is read.
        ensure!(
            total <= max,
            "handler `{name}` grew past the limit of {max} bytes (--max-module-size) while being read"
        );
        if head.is_empty() {
            head.extend_from_slice(&buf[..n]);
        }
        hasher.update(&buf[..n]);
        copy.write_all(&buf[..n])
            .with_context(|| format!("cannot stage handler in `{}`", cache_dir.display()))?;
    }
    Ok(Staged {
        copy: copy.into_temp_path(),
        head,
        hash: format!("{:x}", hasher.finalize()),
    })
}

fn describe(t: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_dir() {
        "directory"
    } else if t.is_fifo() {
        "FIFO"
    } else if t.is_char_device() {
        "character device"
    } else if t.is_block_device() {
        "block device"
    } else if t.is_socket() {
        "socket"
    } else {
        "special file"
    }
}

/// Reads and hashes the handler, then returns its cached artifact, compiling
/// it in a child process on a miss.
pub async fn prepare(
    handler: &Path,
    cache_dir: &Path,
    settings: &EngineSettings,
    limits: &CompileLimits,
) -> Result<Artifact> {
    let start = Instant::now();
    crate::files::private_dir(cache_dir, "cache directory", "--cache-dir")?;
    let staged = {
        let (handler, cache_dir, max) = (
            handler.to_path_buf(),
            cache_dir.to_path_buf(),
            limits.max_module_size,
        );
        tokio::task::spawn_blocking(move || stage(&handler, &cache_dir, max))
            .await
            .context("staging the handler failed")??
    };
    kind(handler, &staged.head)?;
    let version = staged.hash[..12].to_string();
    // The primary builds the engines only to learn their compatibility hash;
    // it never compiles or runs guest code itself.
    let path = cache_dir.join(format!(
        "{}-{}.cwasm",
        staged.hash,
        engine::compatibility_key(settings)?
    ));
    if std::fs::symlink_metadata(&path).is_ok() {
        // Planted (not ours, or writable by others): refuse outright.
        cache::check_artifact_file(&path)?;
        match verify(&path).await {
            Ok(digest) => {
                return Ok(Artifact {
                    path,
                    version,
                    digest,
                    compiled: false,
                    compile_time: start.elapsed(),
                });
            }
            // Damaged or half-written: compiling it again replaces it.
            Err(e) => tracing::warn!("{e:#}; compiling it again"),
        }
    }
    compile_in_child(handler, &staged.copy, &path, settings, limits).await?;
    let digest = verify(&path).await?;
    Ok(Artifact {
        path,
        version,
        digest,
        compiled: true,
        compile_time: start.elapsed(),
    })
}

/// The artifact against its recorded digest, off the event loop.
async fn verify(path: &Path) -> Result<String> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || cache::verify_artifact(&path, None))
        .await
        .context("checking the artifact failed")?
}

/// Compiles `staged` (the private copy of `handler`) into `output`.
async fn compile_in_child(
    handler: &Path,
    staged: &Path,
    output: &Path,
    settings: &EngineSettings,
    limits: &CompileLimits,
) -> Result<()> {
    let exe = std::env::current_exe().context("cannot find the wcluster executable")?;
    let child = tokio::process::Command::new(exe)
        .arg("compile")
        .arg("--input")
        .arg(staged)
        .arg("--name")
        .arg(handler)
        .arg("--output")
        .arg(output)
        .arg("--engine")
        .arg(serde_json::to_string(settings)?)
        .arg("--max-memory")
        .arg(limits.max_memory.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start the compile child")?;
    let name = handler.display();
    let out = match tokio::time::timeout(limits.timeout, child.wait_with_output()).await {
        Ok(out) => out.context("the compile child failed")?,
        Err(_) => bail!(
            "compiling `{name}` took longer than {:?} (--compile-timeout); refused",
            limits.timeout
        ),
    };
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The child's own error line, without its `wcluster: error:` prefix.
    let reason = stderr.trim().trim_start_matches("wcluster: error: ");
    if reason.is_empty() {
        bail!(
            "compiling `{name}` failed ({}); it may have hit --compile-max-memory ({} bytes)",
            out.status,
            limits.max_memory
        );
    }
    bail!("{reason}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        let p = Path::new("x.wasm");
        assert_eq!(kind(p, b"\0asm\x01\0\0\0").unwrap(), Kind::CoreModule);
        assert_eq!(kind(p, b"\0asm\x0d\0\x01\0").unwrap(), Kind::Component);
        assert_eq!(kind(p, b"  (component)").unwrap(), Kind::Component);
        assert_eq!(
            kind(p, b";; hi\n  ;; there\n(module)").unwrap(),
            Kind::CoreModule
        );
        let err = kind(p, b"hello").unwrap_err().to_string();
        assert!(
            err.contains("x.wasm") && err.contains("not a WebAssembly file"),
            "{err}"
        );
    }
}
