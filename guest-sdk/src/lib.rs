//! Write HTTP handlers for wcluster in a few lines.
//!
//! A handler is a function from a [`Request`] to anything that implements
//! [`IntoResponse`]; [`serve!`] exports it as a `wasi:http/incoming-handler`,
//! so the same `.wasm` runs on wcluster, `wasmtime serve` and Spin.
//!
//! Bodies can be whole or streamed: a [`Request`] has its body read in full,
//! `serve!(stream handler)` hands the handler a [`StreamRequest`] whose body
//! is an [`std::io::Read`] instead, and a [`Streaming`] response writes its
//! body as it is produced.
//!
//! ```no_run
//! use wcluster_guest::{Request, Response};
//!
//! fn handle(req: Request) -> Response {
//!     Response::new(format!("hello from {}\n", req.uri().path()).into())
//! }
//!
//! wcluster_guest::serve!(handle);
//! ```
//!
//! Build it with `cargo build --target wasm32-wasip2 --release` from a crate
//! with `crate-type = ["cdylib"]`.
//!
//! Beyond answering requests, a handler can reach out through the host:
//!
//! - [`fetch`]: outbound HTTP (`wasi:http/outgoing-handler`), to the
//!   destinations wcluster's `--allow-outbound` permits;
//! - [`config`]: configuration values (`wasi:config/store`), from
//!   `--config` and `--config-file`;
//! - [`kv`]: key-value buckets shared by every instance
//!   (`wasi:keyvalue/{store,atomics,batch}`), backed by `--keyvalue`.
//!
//! They are the interfaces `wasmtime serve -S http,config,keyvalue` binds, so
//! a component using them runs there too. A component imports only what its
//! code calls: one that uses none of them stays a plain `wasi:http/proxy`.

mod bindings;
pub mod config;
pub mod fetch;
pub mod kv;

use std::fmt::Display;
use std::io::{Read, Write};

pub use http;
pub use http::StatusCode;
#[doc(hidden)]
pub use wasi;

use wasi::http::types::{
    Fields, IncomingRequest, Method as WasiMethod, OutgoingBody, OutgoingResponse,
    ResponseOutparam, Scheme,
};

/// A request with its whole body read.
pub type Request = http::Request<Vec<u8>>;
/// A request whose body is read as it arrives.
pub type StreamRequest = http::Request<BodyReader>;
/// A response with its whole body.
pub type Response = http::Response<Vec<u8>>;

/// The request body as a stream (`std::io::Read`).
pub struct BodyReader {
    // Declared before `_body`: the stream must be dropped first.
    stream: wasi::io::streams::InputStream,
    _body: wasi::http::types::IncomingBody,
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        Read::read(&mut self.stream, buf)
    }
}

/// The function that writes a streamed body.
type WriteBody = Box<dyn FnOnce(&mut dyn Write) -> std::io::Result<()>>;

/// A response whose body is written as it is produced (server-sent events,
/// large exports): `Streaming::new(|out| writeln!(out, "line"))`.
pub struct Streaming {
    parts: http::response::Parts,
    write: WriteBody,
}

impl Streaming {
    /// A 200 response whose body `write` produces.
    pub fn new(write: impl FnOnce(&mut dyn Write) -> std::io::Result<()> + 'static) -> Self {
        let (parts, ()) = http::Response::new(()).into_parts();
        Self {
            parts,
            write: Box::new(write),
        }
    }

    /// Sets the status.
    pub fn status(mut self, status: StatusCode) -> Self {
        self.parts.status = status;
        self
    }

    /// Adds a header.
    pub fn header(mut self, name: http::HeaderName, value: http::HeaderValue) -> Self {
        self.parts.headers.append(name, value);
        self
    }
}

/// What a handler's return value becomes: a whole response or a stream.
pub enum Reply {
    Full(Response),
    Stream(Streaming),
}

/// What a handler may return.
pub trait IntoResponse {
    fn into_reply(self) -> Reply;
}

impl IntoResponse for Response {
    fn into_reply(self) -> Reply {
        Reply::Full(self)
    }
}

impl IntoResponse for Streaming {
    fn into_reply(self) -> Reply {
        Reply::Stream(self)
    }
}

impl IntoResponse for String {
    fn into_reply(self) -> Reply {
        Reply::Full(text(StatusCode::OK, self))
    }
}

impl IntoResponse for &'static str {
    fn into_reply(self) -> Reply {
        Reply::Full(text(StatusCode::OK, self.to_string()))
    }
}

impl<B: Into<Vec<u8>>> IntoResponse for (StatusCode, B) {
    fn into_reply(self) -> Reply {
        let mut resp = Response::new(self.1.into());
        *resp.status_mut() = self.0;
        Reply::Full(resp)
    }
}

/// An error becomes a 500 whose body is the error's message.
impl<T: IntoResponse, E: Display> IntoResponse for Result<T, E> {
    fn into_reply(self) -> Reply {
        match self {
            Ok(t) => t.into_reply(),
            Err(e) => Reply::Full(text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n"))),
        }
    }
}

fn text(status: StatusCode, body: String) -> Response {
    http::Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(body.into_bytes())
        .expect("static parts are valid")
}

/// The path below where a wcluster manifest mounted this handler: `/users/1`
/// for `GET /api/users/1` under `route = "/api/..."` (wcluster's
/// `x-wcluster-path-info` header). Without a manifest, or on another host,
/// the whole path.
pub fn route_path<B>(req: &http::Request<B>) -> &str {
    req.headers()
        .get("x-wcluster-path-info")
        .and_then(|v| v.to_str().ok())
        .map(|p| if p.is_empty() { "/" } else { p })
        .unwrap_or_else(|| req.uri().path())
}

/// The values of `name=value` pairs in a query string, undecoded.
pub fn query_param<'a, B>(req: &'a http::Request<B>, name: &str) -> Option<&'a str> {
    req.uri()
        .query()?
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Exports `handler` (a `fn(Request) -> impl IntoResponse`) as the
/// component's `wasi:http/incoming-handler`; `serve!(stream handler)` takes
/// a `fn(StreamRequest) -> impl IntoResponse` instead.
#[macro_export]
macro_rules! serve {
    (stream $handler:path) => {
        $crate::serve!(@export __run_stream, $handler);
    };
    ($handler:path) => {
        $crate::serve!(@export __run, $handler);
    };
    (@export $run:ident, $handler:path) => {
        struct __WclusterHandler;
        impl $crate::wasi::exports::http::incoming_handler::Guest for __WclusterHandler {
            fn handle(
                req: $crate::wasi::http::types::IncomingRequest,
                out: $crate::wasi::http::types::ResponseOutparam,
            ) {
                $crate::$run(req, out, |r| $crate::IntoResponse::into_reply($handler(r)));
            }
        }
        $crate::wasi::http::proxy::export!(__WclusterHandler with_types_in $crate::wasi);
    };
}

#[doc(hidden)]
pub fn __run(req: IncomingRequest, out: ResponseOutparam, handler: impl FnOnce(Request) -> Reply) {
    let whole = request_head(req).and_then(|(builder, mut reader)| {
        let mut body = Vec::new();
        reader.read_to_end(&mut body).map_err(|e| e.to_string())?;
        builder.body(body).map_err(|e| e.to_string())
    });
    write_reply(whole.map(handler), out);
}

#[doc(hidden)]
pub fn __run_stream(
    req: IncomingRequest,
    out: ResponseOutparam,
    handler: impl FnOnce(StreamRequest) -> Reply,
) {
    let streaming = request_head(req)
        .and_then(|(builder, reader)| builder.body(reader).map_err(|e| e.to_string()));
    write_reply(streaming.map(handler), out);
}

fn request_head(req: IncomingRequest) -> Result<(http::request::Builder, BodyReader), String> {
    let method = match req.method() {
        WasiMethod::Get => http::Method::GET,
        WasiMethod::Head => http::Method::HEAD,
        WasiMethod::Post => http::Method::POST,
        WasiMethod::Put => http::Method::PUT,
        WasiMethod::Delete => http::Method::DELETE,
        WasiMethod::Connect => http::Method::CONNECT,
        WasiMethod::Options => http::Method::OPTIONS,
        WasiMethod::Trace => http::Method::TRACE,
        WasiMethod::Patch => http::Method::PATCH,
        WasiMethod::Other(m) => {
            http::Method::from_bytes(m.as_bytes()).map_err(|e| e.to_string())?
        }
    };
    let scheme = match req.scheme() {
        Some(Scheme::Https) => "https",
        _ => "http",
    };
    let authority = req.authority().unwrap_or_else(|| "localhost".to_string());
    let path = req.path_with_query().unwrap_or_else(|| "/".to_string());
    let mut builder = http::Request::builder()
        .method(method)
        .uri(format!("{scheme}://{authority}{path}"));
    for (name, value) in req.headers().entries() {
        builder = builder.header(name, value);
    }
    let incoming = req
        .consume()
        .map_err(|()| "body already taken".to_string())?;
    let stream = incoming
        .stream()
        .map_err(|()| "body stream unavailable".to_string())?;
    Ok((
        builder,
        BodyReader {
            stream,
            _body: incoming,
        },
    ))
}

fn write_reply(reply: Result<Reply, String>, out: ResponseOutparam) {
    let reply = reply.unwrap_or_else(|e| {
        Reply::Full(text(
            StatusCode::BAD_REQUEST,
            format!("cannot read the request: {e}\n"),
        ))
    });
    let (parts, write): (_, WriteBody) = match reply {
        Reply::Full(resp) => {
            let (mut parts, body) = resp.into_parts();
            // A known length spares the client chunked decoding, and the
            // server a chunk header per write.
            if !parts.headers.contains_key(http::header::CONTENT_LENGTH) {
                parts.headers.insert(
                    http::header::CONTENT_LENGTH,
                    http::HeaderValue::from(body.len()),
                );
            }
            (parts, Box::new(move |w: &mut dyn Write| w.write_all(&body)))
        }
        Reply::Stream(s) => (s.parts, s.write),
    };
    let headers = Fields::new();
    for (name, value) in &parts.headers {
        // A header the host refuses (e.g. `connection`) is left out rather
        // than failing the whole response.
        let _ = headers.append(name.as_str(), value.as_bytes());
    }
    let outgoing = OutgoingResponse::new(headers);
    let _ = outgoing.set_status_code(parts.status.as_u16());
    let Ok(out_body) = outgoing.body() else {
        return;
    };
    ResponseOutparam::set(out, Ok(outgoing));
    if let Ok(mut stream) = out_body.write() {
        // Writes on the wasi stream respect its backpressure.
        if write(&mut stream)
            .and_then(|()| Write::flush(&mut stream))
            .is_err()
        {
            return;
        }
    }
    let _ = OutgoingBody::finish(out_body, None);
}
