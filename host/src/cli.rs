//! Command-line flags. Everything here is turned into a checked `Config`
//! (config/) before anything binds or spawns.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::Reuse;

#[derive(Parser, Debug)]
#[command(
    name = "wcluster",
    version,
    about = "A WebAssembly application server: one worker per core, zero-downtime redeploys"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process; boxing the large variant buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve a wasi:http handler on every core.
    Serve(ServeArgs),
    /// Show the workers, their versions and the last deploy.
    Status(ControlArgs),
    /// Deploy now (as when a file changes on disk): the handler file, or the
    /// manifest and every handler it names; with NAME, that handler's file alone.
    Reload(HandlerCommandArgs),
    /// Roll back to the previous good version; with NAME, of that handler alone.
    Rollback(HandlerCommandArgs),
    /// Change the number of workers while serving (draining the removed ones).
    Scale(ScaleArgs),
    /// Internal: a worker process, spawned by the primary.
    #[command(hide = true)]
    Worker(WorkerArgs),
    /// Internal: compile a module into a cached artifact, in a child process.
    #[command(hide = true)]
    Compile(CompileArgs),
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The handler: a wasi:http/proxy component or a CGI-style WASI command
    /// module (.wasm, or .wat text). Without it, a built-in hello handler.
    pub handler: Option<PathBuf>,

    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:8080", help_heading = "Listening")]
    pub addr: SocketAddr,

    /// Worker processes (default: one per CPU core).
    #[arg(long, help_heading = "Listening")]
    pub workers: Option<usize>,

    /// The most workers `wcluster scale`, SIGTTIN or --workers may ask for.
    #[arg(long, default_value_t = 64, help_heading = "Listening")]
    pub max_workers: usize,

    /// Where compiled artifacts are cached (default: $XDG_CACHE_HOME/wcluster or ~/.cache/wcluster).
    #[arg(long, help_heading = "Deploys")]
    pub cache_dir: Option<PathBuf>,

    #[command(flatten)]
    pub limits: LimitArgs,

    #[command(flatten)]
    pub caps: CapabilityArgs,

    /// Grant the guest an environment variable: KEY=VALUE, or KEY to pass
    /// the host's value (skipped, with a warning, when the host has none).
    #[arg(
        long = "env",
        value_name = "KEY[=VALUE]",
        help_heading = "Capabilities"
    )]
    pub env: Vec<String>,

    /// Grant the guest a directory, read-only: HOST[::GUEST] (GUEST defaults to HOST).
    #[arg(
        long = "dir",
        value_name = "HOST[::GUEST]",
        help_heading = "Capabilities"
    )]
    pub dir: Vec<String>,

    /// Serve /healthz, /readyz, /metrics and /status here (e.g.
    /// 127.0.0.1:9000 on a host, 0.0.0.0:9000 in a container). Off unless given.
    #[arg(long, value_name = "ADDR", help_heading = "Operating")]
    pub admin: Option<SocketAddr>,

    /// A file whose first line is the bearer token that /status asks for
    /// (`Authorization: Bearer TOKEN`): it shows pids and paths. Without
    /// it /status is not served; /healthz, /readyz and /metrics stay open.
    #[arg(long, value_name = "PATH", help_heading = "Operating")]
    pub admin_token_file: Option<PathBuf>,

    /// Admin connections held at once; at the cap a new client is served
    /// and the oldest idle one closed, so the admin port can neither use up
    /// the process's descriptors nor be held shut by idle clients.
    #[arg(long, default_value_t = 32, help_heading = "Operating")]
    pub admin_max_connections: usize,

    /// After SIGTERM, how long /readyz says 503 while wcluster still accepts
    /// and serves, before the drain begins (time for load balancers to notice).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration, help_heading = "Operating")]
    pub drain_delay: Duration,

    /// How long SIGTERM waits for requests in flight before exiting anyway.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration, help_heading = "Operating")]
    pub drain_timeout: Duration,

    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Human, help_heading = "Operating")]
    pub log_format: LogFormat,

    /// Path every new version must answer (GET, without trap or timeout) before it goes live.
    #[arg(long, default_value = "/", help_heading = "Deploys")]
    pub smoke_path: String,

    /// How long the smoke check may take.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, help_heading = "Deploys")]
    pub smoke_timeout: Duration,

    /// Control socket for `wcluster status|reload|rollback|scale` (default: wcluster-PORT.sock in $XDG_RUNTIME_DIR/wcluster/ or $TMPDIR/wcluster-UID/).
    #[arg(long, help_heading = "Operating")]
    pub control: Option<PathBuf>,

    /// How many requests one component instance serves before it is
    /// dropped: N, or MIN-MAX to draw a number at random in that range for
    /// every instance, so that no guest can count on its lifetime. Without
    /// this flag WASI 0.3 instances are reused (64-128), as `wasmtime
    /// serve -Sp3` and Spin do, and WASI 0.2 instances serve one request
    /// each. 0: a fresh instance per request for every handler (strict
    /// isolation, slower). Reuse means a request can see state that earlier
    /// ones left in the instance: every version must serve two requests in
    /// one instance before it goes live.
    #[arg(long, value_name = "N|MIN-MAX", value_parser = Reuse::parse, help_heading = "Instances")]
    pub reuse_instances: Option<Reuse>,

    /// How many requests one reused WASI 0.3 instance may serve at once. 1
    /// is fastest for handlers that compute; more saves instances (memory)
    /// when handlers mostly wait.
    #[arg(
        long,
        default_value_t = 1,
        value_name = "N",
        help_heading = "Instances"
    )]
    pub max_instance_concurrency: u32,

    /// A worker silent this long (hung, or stopped) is killed and replaced.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, help_heading = "Operating")]
    pub liveness_timeout: Duration,

    /// Do not watch the handler file for changes (reload with SIGHUP or `wcluster reload`).
    #[arg(long, help_heading = "Deploys")]
    pub no_watch: bool,

    /// Serve HTTPS with this certificate chain (PEM, leaf first); needs
    /// --tls-key. A new pair written over the files is picked up for new
    /// connections without a restart.
    #[arg(long, value_name = "FILE", help_heading = "TLS")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1, unencrypted).
    #[arg(long, value_name = "FILE", help_heading = "TLS")]
    pub tls_key: Option<PathBuf>,
}

/// What handlers may reach beyond their request: upstreams, configuration
/// and key-value state. Outbound HTTP is denied unless granted.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Capabilities")]
pub struct CapabilityArgs {
    /// Let guests call this upstream (repeatable): SCHEME://HOST[:PORT], e.g.
    /// https://api.example.com, https://*.example.com, http://10.1.2.3:8080,
    /// http://10.0.0.0/8:*. A name that resolves to a loopback, private or
    /// link-local address also needs that address or range granted.
    #[arg(long = "allow-outbound", value_name = "PATTERN")]
    pub allow_outbound: Vec<String>,

    /// Trust this CA (PEM) for outbound TLS, beside the system's roots.
    #[arg(long, value_name = "FILE")]
    pub outbound_ca: Option<PathBuf>,

    /// Longest time an outbound connection may take to open (the guest may ask for less).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub outbound_connect_timeout: Duration,

    /// Longest wait for an upstream's response headers, counted from the
    /// start of the request, connecting included (the guest may ask for less).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub outbound_first_byte_timeout: Duration,

    /// Longest silence inside an upstream's response body (the guest may ask for less).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub outbound_between_bytes_timeout: Duration,

    /// Outbound requests in flight per worker; more wait up to the connect timeout.
    #[arg(long, default_value_t = 256)]
    pub max_outbound: usize,

    /// A configuration value guests read through wasi:config (repeatable).
    #[arg(long = "config", value_name = "KEY=VALUE")]
    pub config: Vec<String>,

    /// Configuration values from a TOML file (tables flatten to dotted keys);
    /// read again at every deploy. --config values win.
    #[arg(long, value_name = "FILE")]
    pub config_file: Option<PathBuf>,

    /// Largest --config-file accepted; a larger one refuses the deploy.
    #[arg(long, default_value = "1MiB")]
    pub max_config_size: ByteSize,

    /// Grant guests wasi:keyvalue (off unless given), kept in `sqlite` (the
    /// embedded backend: a database in --state-dir, shared by every worker)
    /// or in Redis, redis://[:PASSWORD@]HOST:PORT[/DB] (shared by every
    /// node). A password on the command line is visible in `ps`: pass a
    /// secret URL as `redis-url-file:PATH` (the URL is the file's first
    /// line; keep the file 0600) or in the environment variable
    /// WCLUSTER_KEYVALUE_URL instead of this flag. Messages and logs show
    /// the URL with its credentials replaced by `***`.
    #[arg(
        long,
        env = "WCLUSTER_KEYVALUE_URL",
        hide_env_values = true,
        value_name = "sqlite|redis://HOST:PORT[/DB]|redis-url-file:PATH"
    )]
    pub keyvalue: Option<String>,

    /// Where the SQLite key-value database lives (default: beside the cache
    /// directory, named after it with `-state`).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// Longest key-value key.
    #[arg(long, default_value = "1KiB")]
    pub keyvalue_max_key: ByteSize,

    /// Largest key-value value.
    #[arg(long, default_value = "1MiB")]
    pub keyvalue_max_value: ByteSize,

    /// Longest time one key-value operation may take before the guest gets
    /// an error. An operation past it is cancelled (SQLite: its statement is
    /// interrupted and its transaction rolled back), or never started.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub keyvalue_timeout: Duration,

    /// Most keys one get-many, set-many or delete-many may carry.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub keyvalue_max_batch: usize,

    /// Most bytes (keys and values) one get-many, set-many or delete-many may
    /// carry, the values get-many returns included.
    #[arg(long, default_value = "4MiB")]
    pub keyvalue_max_batch_bytes: ByteSize,

    /// Size of the whole store (SQLite: the database; Redis: the keys and
    /// values wcluster wrote); a write beyond it is refused.
    #[arg(long, default_value = "256MiB")]
    pub keyvalue_max_bytes: ByteSize,
}

#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Limits")]
pub struct LimitArgs {
    /// Longest time one request may run, guest code included.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,

    /// Linear memory one instance may grow to.
    #[arg(long, default_value = "256MiB")]
    pub max_memory: ByteSize,

    /// Largest request body accepted (413 beyond).
    #[arg(long, default_value = "16MiB")]
    pub max_body: ByteSize,

    /// Time a client has to send the request headers; on a new connection,
    /// also the time it has to send its first bytes (or HTTP/2 preface).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_timeout: Duration,

    /// A connection with no request in flight for this long is closed.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,

    /// A response the client takes nothing of for this long (a reader that
    /// stopped, or an HTTP/2 stream it gives no flow-control window) is
    /// abandoned and its connection closed.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub send_timeout: Duration,

    /// How often an HTTP/2 connection that has been silent is sent a PING.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub h2_keepalive_interval: Duration,

    /// How long the answer to an HTTP/2 PING may take before the connection is closed.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub h2_keepalive_timeout: Duration,

    /// Open client connections per worker. A worker at the limit gets no
    /// more; when all are, new clients wait in the listen backlog.
    #[arg(long, default_value_t = 1024)]
    pub max_connections: usize,

    /// Connections the kernel holds for wcluster to accept (listen backlog).
    #[arg(long, default_value_t = 1024)]
    pub backlog: u32,

    /// Requests running at once per worker; more wait for a turn.
    #[arg(long, default_value_t = 32)]
    pub max_concurrent: u32,

    /// Requests waiting for a turn per worker; more get 503 with Retry-After.
    #[arg(long, default_value_t = 1024)]
    pub max_queued: usize,

    /// How long a request waits for a turn before a 503 with Retry-After
    /// (it counts toward --request-timeout).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub queue_timeout: Duration,

    /// Longest time compiling a module may take.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub compile_timeout: Duration,

    /// Address space the compile child may use.
    #[arg(long, default_value = "4GiB")]
    pub compile_max_memory: ByteSize,

    /// Largest handler file accepted.
    #[arg(long, default_value = "256MiB")]
    pub max_module_size: ByteSize,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Args, Debug)]
pub struct ControlArgs {
    /// The server's port, to find its control socket.
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// The control socket itself (overrides --port).
    #[arg(long)]
    pub control: Option<PathBuf>,
    /// Print the server's reply as JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct HandlerCommandArgs {
    /// A handler of the manifest (`wcluster status` lists them).
    #[arg(value_name = "NAME")]
    pub handler: Option<String>,
    #[command(flatten)]
    pub control: ControlArgs,
}

#[derive(Args, Debug)]
pub struct ScaleArgs {
    /// The number of workers to run.
    pub workers: usize,
    #[command(flatten)]
    pub control: ControlArgs,
}

#[derive(Args, Debug)]
pub struct WorkerArgs {
    /// The inherited end of the primary's socketpair.
    #[arg(long)]
    pub channel_fd: i32,
    /// The primary's pid: the worker exits if it is not its parent.
    #[arg(long)]
    pub parent: i32,
    #[arg(long, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
}

#[derive(Args, Debug)]
pub struct CompileArgs {
    /// The bytes to compile: the primary's private copy of the handler.
    #[arg(long)]
    pub input: PathBuf,
    /// The handler's own path, for messages.
    #[arg(long)]
    pub name: PathBuf,
    #[arg(long)]
    pub output: PathBuf,
    /// The engine settings, as JSON, exactly as the workers will use them.
    #[arg(long)]
    pub engine: String,
    #[arg(long)]
    pub max_memory: u64,
}
