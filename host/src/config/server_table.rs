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

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn the_table_fills_what_the_command_line_left_and_a_flag_wins() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = dir.path().join("app.toml");
        std::fs::write(
            &manifest,
            "[server]\nworkers = 3\naddr = \"127.0.0.1:9999\"\nno_watch = true\n\
             tls_cert = \"c.pem\"\n",
        )
        .unwrap();
        let path = manifest.to_str().unwrap();
        let (args, server) =
            serve_args(argv(&["wcluster", "serve", path, "--workers", "2"])).unwrap();
        assert_eq!(args.workers, Some(2), "the flag wins");
        assert_eq!(args.addr.to_string(), "127.0.0.1:9999");
        assert!(args.no_watch);
        assert_eq!(
            args.tls_cert,
            Some(dir.path().join("c.pem")),
            "relative to the manifest"
        );
        assert_eq!(server.len(), 4);
        // A bad value is the flag's own error.
        std::fs::write(&manifest, "[server]\nworkers = \"many\"\n").unwrap();
        let e = serve_args(argv(&["wcluster", "serve", path])).unwrap_err();
        assert!(format!("{e:#}").contains("many"), "{e:#}");
    }

    #[test]
    fn a_handler_file_has_no_table() {
        let (args, server) =
            serve_args(argv(&["wcluster", "serve", "h.wasm", "--workers", "2"])).unwrap();
        assert_eq!(args.workers, Some(2));
        assert!(server.is_empty());
    }
}
