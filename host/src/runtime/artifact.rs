//! Compile once, load fast. The primary hashes the handler and looks for a
//! cached artifact; on a miss a short-lived `wcluster compile` child compiles
//! and checks it (so a hostile or huge module cannot hurt the primary), and
//! the workers memory-map the result.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use sha2::{Digest, Sha256};
use wasmtime::Module;
use wasmtime::component::Component;

use super::engine::{self, Allocation};
use super::{cgi, component};
use crate::cli::CompileArgs;
use crate::config::{CompileLimits, EngineSettings};

/// A compiled handler ready for the workers.
#[derive(Debug, Clone)]
pub struct Artifact {
    pub path: PathBuf,
    /// Short content hash of the handler file: its version id.
    pub version: String,
    /// Whether this call compiled it (false: it came from the cache).
    pub compiled: bool,
    pub compile_time: Duration,
}

/// What kind of file a handler is, read from its first bytes.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    Component,
    CoreModule,
}

fn kind(path: &Path, bytes: &[u8]) -> Result<Kind> {
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
            "`{name}` is not a WebAssembly file (expected a wasi:http/proxy component or a WASI \
             command module, in binary or text form: `\\0asm`, `(component` or `(module`)"
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

/// The file's first 64 KiB (enough to tell its kind) and its SHA-256.
fn hash_file(path: &Path) -> std::io::Result<(Vec<u8>, String)> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut head = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if head.is_empty() {
            head.extend_from_slice(&buf[..n]);
        }
        hasher.update(&buf[..n]);
    }
    Ok((head, format!("{:x}", hasher.finalize())))
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
    let name = handler.display();
    let size = std::fs::metadata(handler)
        .with_context(|| format!("cannot read handler `{name}`"))?
        .len();
    ensure!(
        size <= limits.max_module_size,
        "handler `{name}` is {size} bytes, over the limit of {} (--max-module-size)",
        limits.max_module_size
    );
    // Streamed: the primary never holds a whole (possibly huge) module.
    let (head, hash) =
        hash_file(handler).with_context(|| format!("cannot read handler `{name}`"))?;
    kind(handler, &head)?;
    let version = hash[..12].to_string();
    // The primary builds an engine only to learn its compatibility hash;
    // it never compiles or runs guest code itself.
    let engine = engine::build(settings, Allocation::OnDemand)?;
    std::fs::create_dir_all(cache_dir)
        .with_context(|| format!("cannot create cache directory `{}`", cache_dir.display()))?;
    let path = cache_dir.join(format!(
        "{hash}-{}.cwasm",
        engine::compatibility_key(&engine)
    ));
    if path.is_file() {
        return Ok(Artifact {
            path,
            version,
            compiled: false,
            compile_time: start.elapsed(),
        });
    }
    compile_in_child(handler, &path, settings, limits).await?;
    Ok(Artifact {
        path,
        version,
        compiled: true,
        compile_time: start.elapsed(),
    })
}

async fn compile_in_child(
    handler: &Path,
    output: &Path,
    settings: &EngineSettings,
    limits: &CompileLimits,
) -> Result<()> {
    let exe = std::env::current_exe().context("cannot find the wcluster executable")?;
    let child = tokio::process::Command::new(exe)
        .arg("compile")
        .arg("--input")
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

/// The `wcluster compile` child: compile, check it is a handler, write the
/// artifact atomically. Errors go to stderr for the primary to report.
pub fn compile_main(args: CompileArgs) -> Result<()> {
    use nix::sys::resource::{Resource, setrlimit};
    // The limit is set by the child on itself, before reading anything, so a
    // compile bomb runs out of address space here and not in the primary.
    setrlimit(Resource::RLIMIT_AS, args.max_memory, args.max_memory)
        .context("cannot set the compile memory limit")?;
    let settings: EngineSettings = serde_json::from_str(&args.engine)?;
    let engine = engine::build(&settings, Allocation::OnDemand)?;
    let name = args.input.display();
    let bytes = std::fs::read(&args.input).with_context(|| format!("cannot read `{name}`"))?;
    let serialized = match kind(&args.input, &bytes)? {
        Kind::Component => {
            let component = Component::new(&engine, &bytes)
                .map_err(anyhow::Error::from)
                .with_context(|| format!("`{name}` is not a valid WebAssembly component"))?;
            component::pre_instantiate(&engine, &component)
                .with_context(|| format!("`{name}` is not a handler wcluster can serve"))?;
            component.serialize()?
        }
        Kind::CoreModule => {
            let module = Module::new(&engine, &bytes)
                .map_err(anyhow::Error::from)
                .with_context(|| format!("`{name}` is not a valid WebAssembly module"))?;
            cgi::pre_instantiate(&engine, &module)
                .with_context(|| format!("`{name}` is not a handler wcluster can serve"))?;
            module.serialize()?
        }
    };
    let tmp = args
        .output
        .with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, serialized)
        .with_context(|| format!("cannot write artifact `{}`", tmp.display()))?;
    std::fs::rename(&tmp, &args.output)
        .with_context(|| format!("cannot write artifact `{}`", args.output.display()))?;
    Ok(())
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
