//! wcluster: parse the command line, run the role (primary, worker or
//! compile child), print the error chain once, exit non-zero on failure.

mod cli;
mod config;
mod files;
mod ipc;
mod logging;
mod primary;
mod runtime;
mod signal;
mod worker;

use std::process::ExitCode;

/// Every request allocates (stores, resource tables, headers): mimalloc's
/// thread-local free lists make that a fraction of glibc malloc's cost.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;

use cli::{Cli, Command};
use primary::control::protocol::Request;

/// `wcluster serve`: the flags, under them a manifest's `[server]` table.
fn serve() -> anyhow::Result<()> {
    let (args, server) = config::server_table::serve_args(std::env::args_os().collect())?;
    let _log = logging::init(args.log_format);
    let mut config = config::Config::from_args(args)?;
    config.manifest_server = server;
    primary::main(config)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(_) => serve(),
        Command::Status(args) => primary::control_client(Request::Status, args),
        Command::Reload(args) => primary::control_client(
            Request::Reload {
                handler: args.handler,
            },
            args.control,
        ),
        Command::Rollback(args) => primary::control_client(
            Request::Rollback {
                handler: args.handler,
            },
            args.control,
        ),
        Command::Scale(args) => primary::control_client(
            Request::Scale {
                workers: args.workers,
            },
            args.control,
        ),
        Command::Worker(args) => {
            let _log = logging::init(args.log_format);
            worker::main(args)
        }
        // The compile child reports errors on stderr, as plain text, for
        // the primary to quote.
        Command::Compile(args) => runtime::artifact::compile::compile_main(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wcluster: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
