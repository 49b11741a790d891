//! A manifest's `[server]` table under the command line: its settings
//! become flags placed before the operator's own, for every flag the
//! command line did not set, and clap parses the whole again. So the table
//! takes exactly the flags' syntax and checks, and a flag always wins.

use std::ffi::OsString;

use anyhow::Result;
use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches};

use crate::cli::{Cli, Command, ServeArgs};

/// The `serve` arguments, with a manifest's `[server]` settings filled in;
/// and those settings as read.
pub fn serve_args(argv: Vec<OsString>) -> Result<(ServeArgs, Vec<(String, String)>)> {
    let (args, given) = parse(&argv)?;
    let is_manifest = args
        .handler
        .as_ref()
        .is_some_and(|h| h.extension().is_some_and(|e| e == "toml"));
    if !is_manifest {
        return Ok((args, Vec::new()));
    }
    // The manifest is read once here for its table, and again (with the
    // final defaults) when the application is built.
    let path = args.handler.clone().expect("checked above");
    let server = super::manifest::load_server(&path, args.caps.max_config_size.as_u64())?;
    let mut merged = vec![argv[0].clone()];
    let serve = argv
        .iter()
        .position(|a| a == "serve")
        .expect("parsed as serve");
    merged.extend(argv[1..=serve].iter().cloned());
    for (flag, value) in server.iter().cloned() {
        let id = flag.trim_start_matches('-').replace('-', "_");
        if given.contains(&id) {
            continue;
        }
        merged.push(if value.is_empty() {
            flag.into()
        } else {
            format!("{flag}={value}").into()
        });
    }
    merged.extend(argv[serve + 1..].iter().cloned());
    Ok((parse(&merged)?.0, server))
}

/// The serve arguments and the ids of the flags the command line set.
fn parse(argv: &[OsString]) -> Result<(ServeArgs, Vec<String>)> {
    let matches = Cli::command().try_get_matches_from(argv)?;
    let given = matches
        .subcommand_matches("serve")
        .map(|m| {
            m.ids()
                .filter(|id| {
                    matches!(
                        m.value_source(id.as_str()),
                        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
                    )
                })
                .map(|id| id.to_string())
                .collect()
        })
        .unwrap_or_default();
    match Cli::from_arg_matches(&matches)?.command {
        Command::Serve(args) => Ok((args, given)),
        _ => anyhow::bail!("not a serve command"),
    }
}
