//! CGI-style WASI command modules (the WAGI convention): the request's
//! metadata in CGI/1.1 environment variables, its body on stdin; the module
//! prints CGI headers, a blank line and the body to stdout, which is streamed
//! to the client as it is written. This opens wcluster to every language
//! that targets wasm32-wasi (preview 1): C, Zig, AssemblyScript, TinyGo, ...

use std::pin::Pin;
use std::task::{Context as TaskContext, Poll, ready};
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use bytes::{Bytes, BytesMut};
use http::header;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use wasmtime::{Engine, ExternType, InstancePre, Linker, Module, Store};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::cli::{AsyncStdinStream, AsyncStdoutStream};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use super::call::{self, BodyError, ConnInfo, GuardedBody, GuestError, MOUNT_HEADER, RequestBody};
use super::cgi_head::{head_end, parse_head};

/// The CGI header block may not be larger than this.
const MAX_HEAD: usize = 64 * 1024;
/// How much of stdin/stdout is buffered between the guest and the socket.
const PIPE: usize = 64 * 1024;

pub struct CgiState {
    wasi: WasiP1Ctx,
    limits: wasmtime::StoreLimits,
}

impl call::Limited for CgiState {
    fn limits(&mut self) -> &mut wasmtime::StoreLimits {
        &mut self.limits
    }
}

pub fn linker(engine: &Engine) -> Result<Linker<CgiState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p1::add_to_linker_async(&mut linker, |s: &mut CgiState| &mut s.wasi)?;
    Ok(linker)
}

/// Checks that `module` is a CGI handler this host can run: a WASI command
/// (exports `_start`) whose imports are all WASI preview 1.
pub fn pre_instantiate(engine: &Engine, module: &Module) -> Result<InstancePre<CgiState>> {
    ensure!(
        matches!(module.get_export("_start"), Some(ExternType::Func(_))),
        "the module does not export `_start` (expected a WASI command module, CGI style, \
         or a wasi:http/proxy component)"
    );
    linker(engine)?
        .instantiate_pre(module)
        .map_err(anyhow::Error::from)
        .context("the module imports something wcluster does not provide (only WASI preview 1)")
}

/// The CGI/1.1 meta-variables for a request (RFC 3875 section 4.1).
pub fn cgi_env(parts: &http::request::Parts, conn: Option<ConnInfo>) -> Vec<(String, String)> {
    let path = parts.uri.path();
    let script = parts
        .headers
        .get(MOUNT_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let info = path
        .strip_prefix(script.as_str())
        .unwrap_or(path)
        .to_string();
    let mut env = vec![
        ("GATEWAY_INTERFACE".into(), "CGI/1.1".into()),
        (
            "SERVER_SOFTWARE".into(),
            concat!("wcluster/", env!("CARGO_PKG_VERSION")).into(),
        ),
        ("REQUEST_METHOD".into(), parts.method.to_string()),
        ("SCRIPT_NAME".into(), script),
        ("PATH_INFO".into(), info),
        (
            "QUERY_STRING".into(),
            parts.uri.query().unwrap_or("").to_string(),
        ),
        ("SERVER_PROTOCOL".into(), format!("{:?}", parts.version)),
    ];
    // The request's authority, from the same source a component's comes
    // from: an absolute-form target's (or HTTP/2's :authority), else Host.
    let authority = parts.uri.authority().cloned().or_else(|| {
        let host = parts.headers.get(header::HOST)?.to_str().ok()?;
        host.parse::<http::uri::Authority>().ok()
    });
    let server_name = authority.as_ref().map_or("localhost", |a| a.host());
    env.push(("SERVER_NAME".into(), server_name.to_string()));
    if let Some(local) = conn.and_then(|c| c.local) {
        env.push(("SERVER_PORT".into(), local.port().to_string()));
    }
    if let Some(peer) = conn.and_then(|c| c.peer) {
        env.push(("REMOTE_ADDR".into(), peer.ip().to_string()));
        env.push(("REMOTE_PORT".into(), peer.port().to_string()));
    }
    let tls = conn.is_some_and(|c| c.tls);
    if tls {
        env.push(("HTTPS".into(), "on".into()));
    }
    env.push((
        "REQUEST_SCHEME".into(),
        if tls { "https" } else { "http" }.into(),
    ));
    for (name, value) in &parts.headers {
        // `X_Remote_User` would become the same HTTP_X_REMOTE_USER as
        // `X-Remote-User`, which proxies in front strip or set: names with
        // `_` are dropped, as Apache and nginx do.
        if name.as_str().contains('_') {
            continue;
        }
        let Ok(value) = value.to_str() else { continue };
        let var = match *name {
            header::CONTENT_TYPE => "CONTENT_TYPE".to_string(),
            header::CONTENT_LENGTH => "CONTENT_LENGTH".to_string(),
            _ => format!(
                "HTTP_{}",
                name.as_str().to_ascii_uppercase().replace('-', "_")
            ),
        };
        // Repeated headers join with ", " as one variable, as in HTTP.
        match env.iter_mut().find(|(k, _)| *k == var) {
            Some((_, v)) => {
                v.push_str(", ");
                v.push_str(value);
            }
            None => env.push((var, value.to_string())),
        }
    }
    env
}

/// Runs one request: the module's `_start` with the request in its
/// environment and stdin, its stdout parsed as a CGI response.
pub async fn handle<B>(
    pre: &InstancePre<CgiState>,
    mut wasi: WasiCtxBuilder,
    max_memory: usize,
    req: hyper::Request<B>,
    body_limit: u64,
    deadline: Instant,
    on_done: impl FnOnce() + Send + 'static,
) -> Result<hyper::Response<HyperOutgoingBody>, GuestError>
where
    B: RequestBody,
{
    let (parts, body) = req.into_parts();
    let conn = parts.extensions.get::<ConnInfo>().copied();
    let (stdin_host, stdin_guest) = tokio::io::duplex(PIPE);
    let (stdout_guest, mut stdout_host) = tokio::io::duplex(PIPE);
    wasi.envs(&cgi_env(&parts, conn))
        .args(&["handler.wasm"])
        .stdin(AsyncStdinStream::new(stdin_guest))
        .stdout(AsyncStdoutStream::new(PIPE, stdout_guest));
    let mut store = Store::new(
        pre.module().engine(),
        CgiState {
            wasi: wasi.build_p1(),
            limits: wasmtime::StoreLimitsBuilder::new()
                .memory_size(max_memory)
                .build(),
        },
    );
    call::prepare_store(&mut store);
    let (body_failed_tx, body_failed) = tokio::sync::oneshot::channel();
    tokio::spawn(pump_body(body, body_limit, stdin_host, body_failed_tx));

    let deadline = tokio::time::Instant::from_std(deadline);
    let pre = pre.clone();
    let guest = async move {
        let run = async {
            let instance = pre.instantiate_async(&mut store).await?;
            let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
            start.call_async(&mut store, ()).await
        };
        let run = tokio::select! {
            run = run => run,
            // The guest is stopped, and only then is its stdin closed.
            Ok((why, _stdin)) = body_failed => {
                drop(store);
                return Err(GuestError::RequestBody(why));
            }
        };
        let result = match run {
            Ok(()) => Ok(()),
            Err(e) => match e.downcast_ref::<wasmtime_wasi::I32Exit>() {
                Some(wasmtime_wasi::I32Exit(0)) => Ok(()),
                Some(wasmtime_wasi::I32Exit(code)) => Err(GuestError::Failed(
                    wasmtime::format_err!("exited with status {code}"),
                )),
                None => Err(GuestError::Failed(wasmtime::format_err!(
                    "trapped: {}",
                    e.root_cause()
                ))),
            },
        };
        // Closing stdout ends the response body.
        drop(store);
        result
    };
    let (mut task, outcome) = call::spawn(deadline, guest, on_done);

    let mut head = BytesMut::new();
    let read_head = async {
        loop {
            if let Some(end) = head_end(&head) {
                return Ok(end);
            }
            if head.len() > MAX_HEAD {
                return Err(format!("CGI header block larger than {MAX_HEAD} bytes"));
            }
            match stdout_host.read_buf(&mut head).await {
                Ok(0) => {
                    return Err(
                        "output ended before the blank line that ends the CGI headers".to_string(),
                    );
                }
                Ok(_) => {}
                Err(e) => return Err(format!("reading output: {e}")),
            }
        }
    };
    let end = match tokio::time::timeout_at(deadline, read_head).await {
        Ok(Ok(end)) => end,
        Ok(Err(why)) => {
            // The guest's own end (an exit status, a body it was not given
            // whole) says more than "no headers".
            let ended = tokio::time::timeout_at(deadline, &mut task).await;
            task.abort();
            return Err(match ended {
                Ok(Ok(Err(e @ GuestError::RequestBody(_)))) => e,
                Ok(Ok(Err(e))) => GuestError::BadGateway(e.reason()),
                _ => GuestError::BadGateway(why),
            });
        }
        Err(_) => {
            task.abort();
            return Err(GuestError::Timeout);
        }
    };
    let rest = head.split_off(end);
    let (status, headers) = match parse_head(&head[..end]) {
        Ok(h) => h,
        Err(why) => {
            task.abort();
            return Err(GuestError::BadGateway(why));
        }
    };
    let body = StdoutBody {
        first: (!rest.is_empty()).then(|| rest.freeze()),
        reader: stdout_host,
        buf: BytesMut::new(),
    };
    let body = GuardedBody::new(body.boxed_unsync(), outcome);
    let mut resp = hyper::Response::new(body.boxed_unsync());
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    Ok(resp)
}

/// Copies the request body to the guest's stdin, up to the size limit. A
/// body that goes past it (chunked: the declared-length case was refused
/// with a 413) or breaks off is reported on `failed` with stdin still open,
/// so the guest is stopped before it could read the end of a truncated body.
async fn pump_body<B>(
    body: B,
    limit: u64,
    mut stdin: DuplexStream,
    failed: tokio::sync::oneshot::Sender<(BodyError, DuplexStream)>,
) where
    B: RequestBody,
{
    let mut body = http_body_util::Limited::new(body, limit as usize);
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => {
                let why = if e.is::<http_body_util::LengthLimitError>() {
                    BodyError::TooLarge
                } else {
                    BodyError::Malformed
                };
                failed.send((why, stdin)).ok();
                return;
            }
        };
        if let Ok(data) = frame.into_data()
            && stdin.write_all(&data).await.is_err()
        {
            return; // the guest closed stdin: it has read what it wants
        }
    }
}

/// The response body: the guest's stdout after the headers, as it is
/// written. It is guarded like every guest's body (call.rs): a guest that
/// fails after its headers ends it with an error, so the client sees a
/// truncated response, not a complete one.
struct StdoutBody {
    first: Option<Bytes>,
    reader: DuplexStream,
    buf: BytesMut,
}

impl Body for StdoutBody {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Some(first) = this.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        if this.buf.capacity() < 16 * 1024 {
            this.buf.reserve(16 * 1024);
        }
        let n = match ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut this.reader),
            cx,
            &mut this.buf
        )) {
            Ok(n) => n,
            Err(e) => {
                return Poll::Ready(Some(Err(wasmtime_wasi_http::Error::InternalError(Some(
                    e.to_string(),
                )))));
            }
        };
        if n > 0 {
            return Poll::Ready(Some(Ok(Frame::data(this.buf.split().freeze()))));
        }
        Poll::Ready(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_follows_cgi() {
        let req = http::Request::post("/a/b?x=1&y=2")
            .header("host", "example.com:8080")
            .header("content-type", "text/plain")
            .header("content-length", "5")
            .header("x-thing", "one")
            .header("x-thing", "two")
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        let conn = ConnInfo {
            peer: Some("10.1.2.3:4444".parse().unwrap()),
            local: Some("127.0.0.1:8080".parse().unwrap()),
            tls: true,
        };
        let env: std::collections::HashMap<_, _> =
            cgi_env(&parts, Some(conn)).into_iter().collect();
        assert_eq!(env["REQUEST_METHOD"], "POST");
        assert_eq!(
            (env["HTTPS"].as_str(), env["REQUEST_SCHEME"].as_str()),
            ("on", "https")
        );
        assert_eq!(env["PATH_INFO"], "/a/b");
        assert_eq!(env["QUERY_STRING"], "x=1&y=2");
        assert_eq!(env["CONTENT_TYPE"], "text/plain");
        assert_eq!(env["CONTENT_LENGTH"], "5");
        assert_eq!(env["SERVER_NAME"], "example.com");
        assert_eq!(env["SERVER_PORT"], "8080");
        assert_eq!(env["REMOTE_ADDR"], "10.1.2.3");
        assert_eq!(env["HTTP_X_THING"], "one, two");
        assert_eq!(env["GATEWAY_INTERFACE"], "CGI/1.1");
        assert_eq!(env["SERVER_PROTOCOL"], "HTTP/1.1");
        assert!(!env.contains_key("HTTP_CONTENT_TYPE"));
    }

    fn env_of(req: http::Request<()>) -> std::collections::HashMap<String, String> {
        cgi_env(&req.into_parts().0, None).into_iter().collect()
    }

    #[test]
    fn a_mounted_handler_gets_its_mount_as_script_name() {
        let req = |mount: Option<&str>| {
            let mut b = http::Request::get("/api/users/1").header("host", "x");
            if let Some(m) = mount {
                b = b.header(MOUNT_HEADER, m);
            }
            env_of(b.body(()).unwrap())
        };
        let env = req(Some("/api"));
        assert_eq!(
            (env["SCRIPT_NAME"].as_str(), env["PATH_INFO"].as_str()),
            ("/api", "/users/1")
        );
        let env = req(None);
        assert_eq!(
            (env["SCRIPT_NAME"].as_str(), env["PATH_INFO"].as_str()),
            ("", "/api/users/1")
        );
    }

    #[test]
    fn header_names_with_underscores_are_dropped() {
        let env = env_of(
            http::Request::get("/")
                .header("host", "x")
                .header("x-forwarded-for", "10.0.0.1")
                .header("x_forwarded_for", "6.6.6.6")
                .header("x_remote_user", "admin")
                .body(())
                .unwrap(),
        );
        assert_eq!(env["HTTP_X_FORWARDED_FOR"], "10.0.0.1");
        assert!(!env.contains_key("HTTP_X_REMOTE_USER"));
    }

    #[test]
    fn server_name_comes_from_the_target_authority_then_host() {
        let named =
            |req: http::request::Builder| env_of(req.body(()).unwrap())["SERVER_NAME"].clone();
        let absolute = http::Request::get("http://example.org:9999/p").header("host", "other.test");
        assert_eq!(named(absolute), "example.org");
        assert_eq!(
            named(http::Request::get("/").header("host", "a.test:81")),
            "a.test"
        );
        assert_eq!(
            named(http::Request::get("/").header("host", "[::1]:8080")),
            "[::1]"
        );
        assert_eq!(
            named(http::Request::get("/").header("host", "[::1]")),
            "[::1]"
        );
    }
}
