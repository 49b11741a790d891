//! The `wcluster compile` child: a short-lived process that compiles one
//! staged handler file, checks that it is a handler wcluster can serve, and
//! writes the artifact, so that a hostile or huge module can only hurt this
//! process, never the primary.

use anyhow::{Context, Result};
use wasmtime::Module;
use wasmtime::component::Component;

use super::cache;
use super::engine::{self, Allocation, Concurrency};
use super::{Kind, kind};
use crate::cli::CompileArgs;
use crate::config::EngineSettings;
use crate::runtime::guest::{cgi, component};

/// The `wcluster compile` child: compile, check it is a handler, write the
/// artifact atomically. Errors go to stderr for the primary to report.
pub fn compile_main(args: CompileArgs) -> Result<()> {
    use nix::sys::resource::{Resource, setrlimit};
    // The limit is set by the child on itself, before reading anything, so a
    // compile bomb runs out of address space here and not in the primary.
    setrlimit(Resource::RLIMIT_AS, args.max_memory, args.max_memory)
        .context("cannot set the compile memory limit")?;
    let settings: EngineSettings = serde_json::from_str(&args.engine)?;
    // Errors name the handler the operator gave, not the staged copy.
    let name = args.name.display();
    let bytes = std::fs::read(&args.input).with_context(|| format!("cannot read `{name}`"))?;
    let serialized = match kind(&args.name, &bytes)? {
        Kind::Component => {
            // The engine without concurrency support first: it refuses a
            // WASI 0.3 component's async exports at validation, before
            // any code is compiled, and that one goes to the other engine.
            let plain = engine::build(&settings, Allocation::OnDemand, Concurrency::Off)?;
            let component = match Component::new(&plain, &bytes) {
                Ok(c) => c,
                Err(_) => {
                    let engine = engine::build(&settings, Allocation::OnDemand, Concurrency::On)?;
                    Component::new(&engine, &bytes)
                        .map_err(anyhow::Error::from)
                        .with_context(|| format!("`{name}` is not a valid WebAssembly component"))?
                }
            };
            component::pre_instantiate(&component)
                .with_context(|| format!("`{name}` is not a handler wcluster can serve"))?;
            component.serialize()?
        }
        Kind::CoreModule => {
            let engine = engine::build(&settings, Allocation::OnDemand, Concurrency::Off)?;
            let module = Module::new(&engine, &bytes)
                .map_err(anyhow::Error::from)
                .with_context(|| format!("`{name}` is not a valid WebAssembly module"))?;
            cgi::pre_instantiate(&engine, &module)
                .with_context(|| format!("`{name}` is not a handler wcluster can serve"))?;
            module.serialize()?
        }
    };
    // Written privately (O_EXCL, then renamed into place), with the digest
    // that the primary and the workers check before trusting it.
    crate::files::write_private(&args.output, &serialized)?;
    crate::files::write_private(
        &cache::digest_path(&args.output),
        cache::digest_bytes(&serialized).as_bytes(),
    )?;
    Ok(())
}
