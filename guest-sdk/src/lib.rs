//! Write HTTP handlers for wcluster in a few lines.
//!
//! A handler is a function from a [`Request`] to anything that implements
//! [`IntoResponse`]; [`serve!`] exports it as a `wasi:http/incoming-handler`,
//! so the same `.wasm` runs on wcluster, `wasmtime serve` and Spin.
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
/// A response with its whole body.
pub type Response = http::Response<Vec<u8>>;

/// What a handler may return.
pub trait IntoResponse {
    fn into_response(self) -> Response;
}

impl IntoResponse for Response {
    fn into_response(self) -> Response {
        self
    }
}

impl IntoResponse for String {
    fn into_response(self) -> Response {
        text(StatusCode::OK, self)
    }
}

impl IntoResponse for &'static str {
    fn into_response(self) -> Response {
        text(StatusCode::OK, self.to_string())
    }
}

impl<B: Into<Vec<u8>>> IntoResponse for (StatusCode, B) {
    fn into_response(self) -> Response {
        let mut resp = Response::new(self.1.into());
        *resp.status_mut() = self.0;
        resp
    }
}

/// An error becomes a 500 whose body is the error's message.
impl<T: IntoResponse, E: Display> IntoResponse for Result<T, E> {
    fn into_response(self) -> Response {
        match self {
            Ok(t) => t.into_response(),
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
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

/// The values of `name=value` pairs in a query string, undecoded.
pub fn query_param<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.uri()
        .query()?
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Exports `handler` (a `fn(Request) -> impl IntoResponse`) as the
/// component's `wasi:http/incoming-handler`.
#[macro_export]
macro_rules! serve {
    ($handler:path) => {
        struct __WclusterHandler;
        impl $crate::wasi::exports::http::incoming_handler::Guest for __WclusterHandler {
            fn handle(
                req: $crate::wasi::http::types::IncomingRequest,
                out: $crate::wasi::http::types::ResponseOutparam,
            ) {
                $crate::__run(req, out, |r| $crate::IntoResponse::into_response($handler(r)));
            }
        }
        $crate::wasi::http::proxy::export!(__WclusterHandler with_types_in $crate::wasi);
    };
}

#[doc(hidden)]
pub fn __run(
    req: IncomingRequest,
    out: ResponseOutparam,
    handler: impl FnOnce(Request) -> Response,
) {
    let resp = match read_request(req) {
        Ok(req) => handler(req),
        Err(e) => text(
            StatusCode::BAD_REQUEST,
            format!("cannot read the request: {e}\n"),
        ),
    };
    write_response(resp, out);
}

fn read_request(req: IncomingRequest) -> Result<Request, String> {
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
    let mut body = Vec::new();
    let incoming = req
        .consume()
        .map_err(|()| "body already taken".to_string())?;
    {
        let mut stream = incoming
            .stream()
            .map_err(|()| "body stream unavailable".to_string())?;
        stream.read_to_end(&mut body).map_err(|e| e.to_string())?;
    }
    builder.body(body).map_err(|e| e.to_string())
}

fn write_response(resp: Response, out: ResponseOutparam) {
    let (parts, body) = resp.into_parts();
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
        // `write_all` on the wasi stream respects its backpressure.
        if stream
            .write_all(&body)
            .and_then(|()| Write::flush(&mut stream))
            .is_err()
        {
            return;
        }
    }
    let _ = OutgoingBody::finish(out_body, None);
}
