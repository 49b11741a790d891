//! The `wcluster compile` child: a short-lived process that compiles one
//! staged handler file, checks that it is a handler wcluster can serve, and
//! writes the artifact, so that a hostile or huge module can only hurt this
//! process, never the primary.

use anyhow::{Context, Result};
use wasmtime::Module;
use wasmtime::component::Component;

use super::artifact::{Kind, kind};
use super::engine::{self, Allocation};
use super::{cgi, component};
use crate::cli::CompileArgs;
use crate::config::EngineSettings;

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
    // Errors name the handler the operator gave, not the staged copy.
    let name = args.name.display();
    let bytes = std::fs::read(&args.input).with_context(|| format!("cannot read `{name}`"))?;
    let serialized = match kind(&args.name, &bytes)? {
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
    // A new file (O_EXCL) renamed into place: a reader never sees half an
    // artifact, and nothing planted under the temporary name is followed.
    let dir = args
        .output
        .parent()
        .context("the artifact path has no directory")?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".artifact-")
        .tempfile_in(dir)
        .with_context(|| format!("cannot write an artifact in `{}`", dir.display()))?;
    std::io::Write::write_all(&mut tmp, &serialized)
        .with_context(|| format!("cannot write artifact `{}`", args.output.display()))?;
    tmp.persist(&args.output)
        .map_err(|e| e.error)
        .with_context(|| format!("cannot write artifact `{}`", args.output.display()))?;
    Ok(())
}
