//! Guest stdout/stderr: forwarded to wcluster's log line by line, each line
//! tagged with the worker and request it came from.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// A line longer than this is emitted in pieces rather than buffered forever.
const MAX_LINE: usize = 16 * 1024;
/// Lines one request may put in the log; the rest are counted and dropped,
/// so a guest printing in a loop cannot flood the log or slow the worker.
const MAX_LINES: u32 = 1000;
/// Bytes one request may put in the log (per stream), for output with few
/// or no newlines, which the line cap alone lets through 16 KiB at a time.
const MAX_BYTES: usize = 1024 * 1024;

#[derive(Clone)]
pub struct GuestLog {
    inner: Arc<Mutex<LineBuf>>,
}

struct LineBuf {
    stream: &'static str,
    request: Arc<str>,
    buf: Vec<u8>,
    lines: u32,
    bytes: usize,
    dropped: u64,
    dropped_bytes: u64,
}

impl GuestLog {
    pub fn new(stream: &'static str, request: Arc<str>) -> Self {
        Self {
            inner: Arc::new(Mutex::new(LineBuf {
                stream,
                request,
                buf: Vec::new(),
                lines: 0,
                bytes: 0,
                dropped: 0,
                dropped_bytes: 0,
            })),
        }
    }

    /// A reused instance starts serving another request: its lines carry
    /// that request's id from now on, under fresh per-request caps.
    pub fn serve(&self, request: Arc<str>) {
        let mut lb = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        lb.finish();
        lb.request = request;
        (lb.lines, lb.bytes) = (0, 0);
    }

    fn push(&self, bytes: &[u8]) {
        let mut lb = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if lb.bytes >= MAX_BYTES {
            lb.dropped_bytes += bytes.len() as u64;
            return;
        }
        lb.buf.extend_from_slice(bytes);
        while let Some(pos) = lb.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = lb.buf.drain(..=pos).collect();
            lb.emit(&line[..line.len() - 1]);
        }
        if lb.buf.len() >= MAX_LINE {
            let line = std::mem::take(&mut lb.buf);
            lb.emit(&line);
        }
    }
}

impl LineBuf {
    fn emit(&mut self, line: &[u8]) {
        if self.lines >= MAX_LINES {
            self.dropped += 1;
            return;
        }
        let room = MAX_BYTES.saturating_sub(self.bytes);
        if room == 0 {
            self.dropped_bytes += line.len() as u64;
            return;
        }
        let kept = line.len().min(room);
        self.dropped_bytes += (line.len() - kept) as u64;
        self.bytes += kept;
        self.lines += 1;
        let text = String::from_utf8_lossy(&line[..kept]);
        let text = printable(text.trim_end_matches('\r'));
        tracing::info!(target: "guest", request = %self.request, stream = self.stream, "{text}");
    }
}

/// The line with its control characters escaped (`\r`, `\u{1b}`, ...): a
/// bare carriage return or a terminal escape from a guest must not rewrite
/// the line's prefix, which says which request printed it. So are the line
/// and paragraph separators and the bidirectional overrides, which can
/// reorder what a terminal or an editor shows. Tabs stay.
fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    let hidden = |c: char| {
        (c.is_control() && c != '\t')
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !text.chars().any(hidden) {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if hidden(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out.into()
}

impl Drop for LineBuf {
    fn drop(&mut self) {
        self.finish();
    }
}

impl LineBuf {
    /// The end of a request's output: its last partial line, and what the
    /// caps dropped.
    fn finish(&mut self) {
        if !self.buf.is_empty() {
            let line = std::mem::take(&mut self.buf);
            self.emit(&line);
        }
        if self.dropped > 0 {
            tracing::warn!(
                target: "guest",
                request = %self.request,
                stream = self.stream,
                "{} more lines dropped (limit: {MAX_LINES} per request)",
                self.dropped
            );
        }
        if self.dropped_bytes > 0 {
            tracing::warn!(
                target: "guest",
                request = %self.request,
                stream = self.stream,
                "{} more bytes dropped (limit: {MAX_BYTES} bytes per request)",
                self.dropped_bytes
            );
        }
        (self.dropped, self.dropped_bytes) = (0, 0);
    }
}

impl IsTerminal for GuestLog {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestLog {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl OutputStream for GuestLog {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.push(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }
    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(MAX_LINE)
    }
}

#[async_trait::async_trait]
impl Pollable for GuestLog {
    async fn ready(&mut self) {}
}

impl AsyncWrite for GuestLog {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(log: &GuestLog) -> (u32, usize, u64, u64) {
        let lb = log.inner.lock().unwrap();
        (lb.lines, lb.bytes, lb.dropped, lb.dropped_bytes)
    }

    #[test]
    fn output_without_newlines_is_capped_in_bytes() {
        let log = GuestLog::new("stdout", "0-1".into());
        let chunk = vec![b'x'; 10_000];
        for _ in 0..500 {
            log.push(&chunk);
        }
        let (_, bytes, dropped, dropped_bytes) = counts(&log);
        assert_eq!(bytes, MAX_BYTES);
        assert_eq!(dropped, 0);
        // What was not logged is counted, except what still waits in the
        // buffer for its newline.
        let buffered = log.inner.lock().unwrap().buf.len() as u64;
        assert_eq!(dropped_bytes + buffered + MAX_BYTES as u64, 5_000_000);
    }

    #[test]
    fn control_characters_are_escaped_but_text_and_tabs_are_kept() {
        assert_eq!(
            printable("plain text, ünïcode\tand a tab"),
            "plain text, ünïcode\tand a tab"
        );
        assert_eq!(
            printable("evil\rrequest=0-1 fake"),
            "evil\\rrequest=0-1 fake"
        );
        assert_eq!(printable("\u{1b}[2Khidden"), "\\u{1b}[2Khidden");
        assert_eq!(printable("bell\u{7}\u{0}"), "bell\\u{7}\\u{0}");
    }

    #[test]
    fn the_line_cap_still_counts_lines() {
        let log = GuestLog::new("stdout", "0-1".into());
        for _ in 0..1500 {
            log.push(b"a short line\n");
        }
        let (lines, bytes, dropped, dropped_bytes) = counts(&log);
        assert_eq!((lines, dropped, dropped_bytes), (MAX_LINES, 500, 0));
        assert_eq!(bytes, 1000 * "a short line".len());
    }
}
