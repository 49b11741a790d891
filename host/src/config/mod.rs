//! The checked configuration: flags turned into values that cannot be wrong
//! later. Everything a worker needs travels to it inside `WorkerInit`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};

use crate::cli::{CapabilityArgs, LimitArgs, LogFormat, ServeArgs};
use app::{HandlerLimits, HandlerSettings};

pub mod admin;
pub mod app;
pub mod manifest;
pub mod routes;
pub mod server_table;
pub mod tls;
pub mod worker;

pub use worker::{
    ConfigGrant, DirGrant, EngineSettings, Grants, KeyValueBackend, KeyValueGrant, OutboundGrant,
    RequestLimits, Reuse, SmokeCheck, Version, WorkerInit,
};

#[derive(Debug, Clone)]
pub struct CompileLimits {
    pub timeout: Duration,
    pub max_memory: u64,
    pub max_module_size: u64,
}

/// What `wcluster serve` was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// One handler file (.wasm, .wat): every path reaches it.
    Handler(PathBuf),
    /// An application manifest (.toml): several handlers and their routes.
    Manifest(PathBuf),
}

impl Source {
    pub fn path(&self) -> &Path {
        match self {
            Source::Handler(p) | Source::Manifest(p) => p,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub source: Source,
    /// The flags' grants and limits: the one handler's, and the defaults
    /// of a manifest's handlers.
    pub defaults: HandlerSettings,
    /// --max-config-size bounds the manifest too.
    pub max_manifest_size: u64,
    /// The manifest's `[server]` table as it was at start-up: its settings
    /// take effect then only.
    pub manifest_server: Vec<(String, String)>,
    pub addr: SocketAddr,
    pub workers: usize,
    pub max_workers: usize,
    pub backlog: u32,
    pub cache_dir: PathBuf,
    pub engine: EngineSettings,
    pub limits: RequestLimits,
    pub compile: CompileLimits,
    pub drain_timeout: Duration,
    pub drain_delay: Duration,
    pub admin: Option<admin::Admin>,
    pub log_format: LogFormat,
    /// --smoke-timeout (each handler has its own smoke path).
    pub smoke_timeout: Duration,
    pub control: Option<PathBuf>,
    pub watch: bool,
    pub liveness_timeout: Duration,
    /// --tls-cert and --tls-key (absolute), checked: serve HTTPS.
    pub tls: Option<(PathBuf, PathBuf)>,
}

impl Config {
    pub fn from_args(args: ServeArgs) -> Result<Self> {
        let cache_dir = match args.cache_dir {
            Some(dir) => dir,
            None => default_cache_dir()?,
        };
        let builtin = args.handler.is_none();
        let handler = match args.handler {
            Some(h) => h,
            None => write_builtin_handler(&cache_dir)?,
        };
        ensure!(
            handler.is_file(),
            "handler `{}` does not exist or is not a file",
            handler.display()
        );
        // The manifest names files relative to itself, and the watcher
        // needs its directory: absolute from here on.
        let handler = std::path::absolute(&handler)
            .with_context(|| format!("cannot resolve `{}`", handler.display()))?;
        let source = if handler.extension().is_some_and(|e| e == "toml") {
            Source::Manifest(handler)
        } else {
            Source::Handler(handler)
        };
        ensure!(
            (1..=1024).contains(&args.max_workers),
            "--max-workers must be between 1 and 1024, got {}",
            args.max_workers
        );
        let workers = args
            .workers
            .unwrap_or_else(|| num_cpus::get().min(args.max_workers));
        ensure!(
            (1..=args.max_workers).contains(&workers),
            "--workers must be between 1 and --max-workers ({}), got {workers}",
            args.max_workers
        );
        let tls = tls::check(args.tls_cert, args.tls_key)?;
        let l = args.limits;
        check_limits(&l)?;
        ensure!(
            args.liveness_timeout >= std::time::Duration::from_secs(2),
            "--liveness-timeout must be at least 2s (workers report every second)"
        );
        ensure!(
            args.smoke_path.starts_with('/'),
            "--smoke-path must start with `/`, got `{}`",
            args.smoke_path
        );
        ensure!(
            (1..=1024).contains(&args.max_instance_concurrency),
            "--max-instance-concurrency must be between 1 and 1024"
        );
        let grants = grants(&args.caps, &args.env, &args.dir, &cache_dir)?;
        let defaults = HandlerSettings {
            grants,
            limits: HandlerLimits {
                timeout: l.request_timeout,
                max_body: l.max_body.as_u64(),
                max_memory: l.max_memory.as_u64(),
                reuse: args.reuse_instances.unwrap_or(Reuse::Default),
                max_instance_concurrency: args.max_instance_concurrency,
                smoke: SmokeCheck {
                    path: args.smoke_path,
                    timeout: args.smoke_timeout,
                },
            },
        };
        Ok(Self {
            source,
            defaults,
            max_manifest_size: args.caps.max_config_size.as_u64(),
            manifest_server: Vec::new(),
            addr: args.addr,
            workers,
            max_workers: args.max_workers,
            backlog: l.backlog,
            cache_dir,
            engine: EngineSettings {
                max_memory: l.max_memory.as_u64(),
                max_concurrent: l.max_concurrent,
            },
            limits: RequestLimits {
                header_timeout: l.header_timeout,
                idle_timeout: l.idle_timeout,
                send_timeout: l.send_timeout,
                h2_keepalive_interval: l.h2_keepalive_interval,
                h2_keepalive_timeout: l.h2_keepalive_timeout,
                max_connections: l.max_connections,
                max_concurrent: l.max_concurrent,
                max_queued: l.max_queued,
                queue_timeout: l.queue_timeout,
            },
            compile: CompileLimits {
                timeout: l.compile_timeout,
                max_memory: l.compile_max_memory.as_u64(),
                max_module_size: l.max_module_size.as_u64(),
            },
            drain_timeout: args.drain_timeout,
            drain_delay: args.drain_delay,
            admin: admin::check(
                args.admin,
                args.admin_token_file.as_deref(),
                args.admin_max_connections,
            )?,
            log_format: args.log_format,
            smoke_timeout: args.smoke_timeout,
            control: args.control,
            watch: !args.no_watch && !builtin,
            liveness_timeout: args.liveness_timeout,
            tls,
        })
    }
}

/// The limits, each within its range.
fn check_limits(l: &LimitArgs) -> Result<()> {
    ensure!(
        !l.request_timeout.is_zero(),
        "--request-timeout must be more than 0"
    );
    ensure!(
        !l.header_timeout.is_zero(),
        "--header-timeout must be more than 0"
    );
    for (flag, value) in [
        ("--idle-timeout", l.idle_timeout),
        ("--send-timeout", l.send_timeout),
        ("--h2-keepalive-interval", l.h2_keepalive_interval),
        ("--h2-keepalive-timeout", l.h2_keepalive_timeout),
    ] {
        ensure!(!value.is_zero(), "{flag} must be more than 0");
    }
    ensure!(
        l.max_connections > 0,
        "--max-connections must be more than 0"
    );
    ensure!(
        !l.queue_timeout.is_zero(),
        "--queue-timeout must be more than 0"
    );
    ensure!(
        (1..=1_000_000).contains(&l.max_queued),
        "--max-queued must be between 1 and 1000000"
    );
    ensure!(
        (1..=65_535).contains(&l.backlog),
        "--backlog must be between 1 and 65535"
    );
    ensure!(
        (1..=10_000).contains(&l.max_concurrent),
        "--max-concurrent must be between 1 and 10000"
    );
    ensure!(
        l.max_memory.as_u64() >= 64 * 1024,
        "--max-memory must be at least one wasm page (64KiB)"
    );
    Ok(())
}

/// What guests may reach, from the capability flags.
fn grants(
    caps: &CapabilityArgs,
    env: &[String],
    dir: &[String],
    cache_dir: &Path,
) -> Result<Grants> {
    Ok(Grants {
        env: env
            .iter()
            .map(|e| parse_env(e))
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .flatten()
            .collect(),
        dirs: dir.iter().map(|d| parse_dir(d)).collect::<Result<_>>()?,
        outbound: outbound_grant(caps)?,
        config: ConfigGrant {
            vars: caps
                .config
                .iter()
                .map(|c| parse_config_flag(c))
                .collect::<Result<_>>()?,
            file: caps.config_file.clone(),
            max_file_size: caps.max_config_size.as_u64(),
        },
        keyvalue: keyvalue_grant(caps, cache_dir)?,
    })
}

/// The handler `wcluster serve` runs when given none: examples/wat/hello.wat.
const BUILTIN_HANDLER: &str = include_str!("../../../examples/wat/hello.wat");

fn write_builtin_handler(cache_dir: &Path) -> Result<PathBuf> {
    crate::files::private_dir(cache_dir, "cache directory", "--cache-dir")?;
    let path = cache_dir.join("builtin-hello.wat");
    crate::files::write_private(&path, BUILTIN_HANDLER.as_bytes())?;
    Ok(path)
}

/// A `--config KEY=VALUE` flag.
fn parse_config_flag(spec: &str) -> Result<(String, String)> {
    let Some((key, value)) = spec.split_once('=') else {
        bail!("--config `{spec}`: expected KEY=VALUE");
    };
    check_config_key(key).with_context(|| format!("--config `{spec}`"))?;
    Ok((key.to_string(), value.to_string()))
}

/// A wasi:config key, from a flag or the file (runtime/capabilities/config_store.rs).
pub fn check_config_key(key: &str) -> Result<()> {
    ensure!(!key.is_empty(), "the key is empty");
    ensure!(
        key.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')),
        "key `{key}` may hold only letters, digits, `_`, `-` and `.`"
    );
    Ok(())
}

/// $XDG_CACHE_HOME/wcluster or ~/.cache/wcluster. Never a shared directory
/// such as /tmp, where another user could prepare it.
fn default_cache_dir() -> Result<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .context(
            "neither XDG_CACHE_HOME nor HOME is set: pass --cache-dir DIR (a private directory)",
        )?;
    Ok(base.join("wcluster"))
}

/// `--env KEY=VALUE`, or `--env KEY` for the host's value; a KEY the host
/// does not have is skipped with a warning (as `wasmtime serve` and
/// container runtimes do), so a unit file can pass optional variables.
/// Where `--keyvalue` may come from instead of the flag (cli.rs).
const KEYVALUE_URL_ENV: &str = "WCLUSTER_KEYVALUE_URL";

fn parse_env(spec: &str) -> Result<Option<(String, String)>> {
    let name = spec.split_once('=').map_or(spec, |(k, _)| k);
    ensure!(
        name != KEYVALUE_URL_ENV,
        "--env `{name}`: that variable holds wcluster's key-value URL (and its password); \
         it is never passed to guests"
    );
    match spec.split_once('=') {
        Some(("", _)) => bail!("--env `{spec}`: the variable name is empty"),
        Some((k, v)) => Ok(Some((k.to_string(), v.to_string()))),
        None => match std::env::var(spec) {
            Ok(v) => Ok(Some((spec.to_string(), v))),
            Err(_) => {
                tracing::warn!("--env {spec}: the host has no such variable; not passed to guests");
                Ok(None)
            }
        },
    }
}

fn outbound_grant(caps: &CapabilityArgs) -> Result<OutboundGrant> {
    for (flag, value) in [
        ("--outbound-connect-timeout", caps.outbound_connect_timeout),
        (
            "--outbound-first-byte-timeout",
            caps.outbound_first_byte_timeout,
        ),
        (
            "--outbound-between-bytes-timeout",
            caps.outbound_between_bytes_timeout,
        ),
        ("--keyvalue-timeout", caps.keyvalue_timeout),
    ] {
        ensure!(!value.is_zero(), "{flag} must be more than 0");
    }
    ensure!(
        (1..=100_000).contains(&caps.max_outbound),
        "--max-outbound must be between 1 and 100000"
    );
    let grant = OutboundGrant {
        allow: caps.allow_outbound.clone(),
        ca: caps.outbound_ca.clone(),
        connect_timeout: caps.outbound_connect_timeout,
        first_byte_timeout: caps.outbound_first_byte_timeout,
        between_bytes_timeout: caps.outbound_between_bytes_timeout,
        max_in_flight: caps.max_outbound,
    };
    Ok(grant)
}

fn keyvalue_grant(caps: &CapabilityArgs, cache_dir: &Path) -> Result<KeyValueGrant> {
    let spec = match caps.keyvalue.as_deref() {
        Some(spec) => match spec.strip_prefix("redis-url-file:") {
            Some(file) => read_url_file(Path::new(file))?,
            None => spec.to_string(),
        },
        None => String::new(),
    };
    let backend = if caps.keyvalue.is_none() {
        KeyValueBackend::Off
    } else if spec == "sqlite" {
        let dir = match &caps.state_dir {
            Some(d) => d.clone(),
            None => {
                let name = cache_dir
                    .file_name()
                    .map_or_else(|| "wcluster".into(), |n| n.to_string_lossy().into_owned());
                cache_dir.with_file_name(format!("{name}-state"))
            }
        };
        // Other users must not read or forge the handlers' state.
        crate::files::private_dir(&dir, "state directory", "--state-dir")?;
        let file = dir.canonicalize()?.join("keyvalue.sqlite3");
        KeyValueBackend::Sqlite(file)
    } else if spec.starts_with("redis://") || spec.starts_with("rediss://") {
        redis::Client::open(spec.as_str())
            .with_context(|| format!("--keyvalue `{}`", worker::redact_url(&spec)))?;
        KeyValueBackend::Redis(spec)
    } else {
        bail!(
            "--keyvalue `{}`: expected `sqlite`, redis://HOST:PORT[/DB] or redis-url-file:PATH",
            worker::redact_url(&spec)
        );
    };
    for (flag, size) in [
        ("--keyvalue-max-key", caps.keyvalue_max_key),
        ("--keyvalue-max-value", caps.keyvalue_max_value),
        ("--keyvalue-max-batch-bytes", caps.keyvalue_max_batch_bytes),
    ] {
        ensure!(
            (1..=512 << 20).contains(&size.as_u64()),
            "{flag} must be between 1B and 512MiB"
        );
    }
    ensure!(
        (1..=1_000_000).contains(&caps.keyvalue_max_batch),
        "--keyvalue-max-batch must be between 1 and 1000000"
    );
    ensure!(
        caps.keyvalue_max_bytes.as_u64() >= 64 << 10,
        "--keyvalue-max-bytes must be at least 64KiB"
    );
    Ok(KeyValueGrant {
        backend,
        max_key: caps.keyvalue_max_key.as_u64() as usize,
        max_value: caps.keyvalue_max_value.as_u64() as usize,
        timeout: caps.keyvalue_timeout,
        max_batch: caps.keyvalue_max_batch,
        max_batch_bytes: caps.keyvalue_max_batch_bytes.as_u64(),
        max_bytes: caps.keyvalue_max_bytes.as_u64(),
        buckets: None,
    })
}

/// `--keyvalue redis-url-file:PATH`: the URL is the file's first line, so
/// its password is in no process's arguments. Never echoed.
fn read_url_file(path: &Path) -> Result<String> {
    let what = || format!("--keyvalue redis-url-file:{}", path.display());
    let bytes = crate::files::read_small(path, "--keyvalue redis-url-file:", 64 << 10, "64KiB")?;
    if let Some(warning) = crate::files::secret_warning(path, "--keyvalue redis-url-file:") {
        tracing::warn!("{warning}");
    }
    let text = String::from_utf8_lossy(&bytes);
    let url = text.lines().map(str::trim).find(|l| !l.is_empty());
    match url {
        Some(url) if url.starts_with("redis://") || url.starts_with("rediss://") => {
            Ok(url.to_string())
        }
        _ => bail!(
            "{}: expected a redis:// or rediss:// URL on its first line",
            what()
        ),
    }
}

fn parse_dir(spec: &str) -> Result<DirGrant> {
    let (host, guest) = spec.split_once("::").unwrap_or((spec, spec));
    let host = PathBuf::from(host);
    ensure!(
        host.is_dir(),
        "--dir `{spec}`: `{}` is not a directory",
        host.display()
    );
    let host = host
        .canonicalize()
        .with_context(|| format!("--dir `{spec}`: cannot resolve `{}`", host.display()))?;
    Ok(DirGrant {
        host,
        guest: guest.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_flags() {
        assert_eq!(
            parse_config_flag("greeting=hello=you").unwrap(),
            ("greeting".into(), "hello=you".into())
        );
        assert!(parse_config_flag("novalue").is_err());
        let err = format!("{:#}", parse_config_flag("bad key=1").unwrap_err());
        assert!(err.contains("bad key"), "{err}");
    }

    #[test]
    fn env_specs() {
        assert_eq!(
            parse_env("A=b=c").unwrap(),
            Some(("A".into(), "b=c".into()))
        );
        assert!(parse_env("=x").is_err());
        assert_eq!(parse_env("WCLUSTER_SURELY_UNSET_VAR").unwrap(), None);
    }

    #[test]
    fn dir_specs() {
        let tmp = std::env::temp_dir();
        let g = parse_dir(&format!("{}::/data", tmp.display())).unwrap();
        assert_eq!(g.guest, "/data");
        assert!(parse_dir("/surely/not/here").is_err());
    }

    #[test]
    fn the_key_value_url_variable_is_never_granted_to_guests() {
        let err = parse_env("WCLUSTER_KEYVALUE_URL").unwrap_err().to_string();
        assert!(err.contains("never passed to guests"), "{err}");
        assert!(parse_env("WCLUSTER_KEYVALUE_URL=x").is_err());
        assert!(parse_env("GREETING=hi").unwrap().is_some());
    }
}
