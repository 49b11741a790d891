//! Logs on stderr: human-readable by default, JSON on request. The filter
//! comes from WCLUSTER_LOG (tracing's env-filter syntax), `info` by default.
//!
//! Lines go through a buffer that a background thread writes out, so the
//! access log costs a request a copy into memory, not a write(2) of its own.
//! The buffer blocks rather than drops when full: no log line is lost. The
//! thread writes whatever lines are waiting in one write(2), and flushes
//! whenever none are left, so a quiet server's lines still appear at once.

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// Keep the guard until the process ends: dropping it flushes the buffer.
pub fn init(format: LogFormat) -> WorkerGuard {
    // wasmtime-wasi wraps every guest syscall in a span: noise at info.
    let filter = EnvFilter::try_from_env("WCLUSTER_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,wasmtime_wasi=warn,wasmtime_wasi_http=warn"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stderr(),
        ));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    guard
}
