//! Logs on stderr: human-readable by default, JSON on request. The filter
//! comes from WCLUSTER_LOG (tracing's env-filter syntax), `info` by default.

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

pub fn init(format: LogFormat) {
    // wasmtime-wasi wraps every guest syscall in a span: noise at info.
    let filter = EnvFilter::try_from_env("WCLUSTER_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,wasmtime_wasi=warn,wasmtime_wasi_http=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
