//! Outbound HTTP from a handler: `wasi:http/outgoing-handler`.
//!
//! A handler often has to ask another service before it can answer. The
//! host makes the request (on wcluster only to the destinations
//! `--allow-outbound` lets through; anything else fails with
//! `HttpRequestDenied`), so the guest needs no sockets or TLS of its own.
//! [`fetch`] sends an [`http::Request`] whose URI is absolute and returns the
//! whole response; [`fetch_with`] also bounds how long each phase may take.
//!
//! ```no_run
//! use wcluster_guest::{Request, fetch};
//!
//! fn handle(_req: Request) -> Result<String, fetch::FetchError> {
//!     let req = wcluster_guest::http::Request::get("https://example.com/")
//!         .body(Vec::new())
//!         .expect("a valid request");
//!     let resp = fetch::fetch(req)?;
//!     Ok(format!("upstream said {}\n", resp.status()))
//! }
//! ```

use std::fmt;
use std::time::Duration;

use wasi::http::outgoing_handler;
use wasi::http::types::{
    ErrorCode, Fields, IncomingBody, Method, OutgoingBody, OutgoingRequest, RequestOptions, Scheme,
};
use wasi::io::streams::StreamError;

/// How long each phase of an outbound request may take; `None` leaves the
/// host's default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timeouts {
    /// Until the connection (and TLS handshake) is established.
    pub connect: Option<Duration>,
    /// Until the first byte of the response arrives.
    pub first_byte: Option<Duration>,
    /// Between two bytes of the response.
    pub between_bytes: Option<Duration>,
}

/// Why an outbound request failed: the WASI `error-code` the host gave, or
/// one that describes what the guest found wrong before sending (a relative
/// URI is `HttpRequestUriInvalid`).
///
/// It prints as the code's name, `HttpRequestDenied` or
/// `DnsError(DnsErrorPayload { .. })`, which [`FetchError::name`] also gives.
#[derive(Clone)]
pub struct FetchError {
    code: ErrorCode,
}

impl FetchError {
    /// The WASI error code.
    pub fn code(&self) -> &ErrorCode {
        &self.code
    }

    /// The code's name as written in Rust, without the `ErrorCode::` prefix:
    /// `HttpRequestDenied`, `ConnectionReadTimeout`, `DnsError(...)`.
    pub fn name(&self) -> String {
        let debug = format!("{:?}", self.code);
        match debug.strip_prefix("ErrorCode::") {
            Some(name) => name.to_string(),
            None => debug,
        }
    }

    fn internal(message: impl Into<String>) -> Self {
        ErrorCode::InternalError(Some(message.into())).into()
    }
}

impl From<ErrorCode> for FetchError {
    fn from(code: ErrorCode) -> Self {
        Self { code }
    }
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl fmt::Debug for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FetchError({})", self.name())
    }
}

impl std::error::Error for FetchError {}

/// Sends `req` (its URI must be absolute: `https://host/path?query`) and
/// returns the response with its whole body, with the host's default
/// timeouts.
pub fn fetch(req: http::Request<Vec<u8>>) -> Result<http::Response<Vec<u8>>, FetchError> {
    fetch_with(req, Timeouts::default())
}

/// [`fetch`] with timeouts for connecting, the first byte of the response
/// and the gaps between its bytes.
///
/// ```no_run
/// use std::time::Duration;
/// use wcluster_guest::fetch::{Timeouts, fetch_with};
///
/// let req = wcluster_guest::http::Request::post("http://api.internal:8080/jobs")
///     .header("content-type", "application/json")
///     .body(br#"{"job":1}"#.to_vec())
///     .expect("a valid request");
/// let timeouts = Timeouts {
///     connect: Some(Duration::from_secs(1)),
///     first_byte: Some(Duration::from_secs(5)),
///     between_bytes: None,
/// };
/// match fetch_with(req, timeouts) {
///     Ok(resp) => println!("{} bytes", resp.body().len()),
///     Err(e) => println!("failed: {e}"), // e.g. "ConnectionReadTimeout"
/// }
/// ```
pub fn fetch_with(
    req: http::Request<Vec<u8>>,
    timeouts: Timeouts,
) -> Result<http::Response<Vec<u8>>, FetchError> {
    let (parts, body) = req.into_parts();
    let uri = &parts.uri;
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return Err(ErrorCode::HttpRequestUriInvalid.into());
    };

    let headers = Fields::new();
    for (name, value) in &parts.headers {
        // Headers the host sets itself (`host`, `connection`, ...) are
        // forbidden to guests: leave them out rather than fail.
        let _ = headers.append(name.as_str(), value.as_bytes());
    }
    if !body.is_empty() && !parts.headers.contains_key(http::header::CONTENT_LENGTH) {
        // A known length spares the upstream chunked decoding.
        let _ = headers.append(
            http::header::CONTENT_LENGTH.as_str(),
            body.len().to_string().as_bytes(),
        );
    }

    let request = OutgoingRequest::new(headers);
    let method = match parts.method {
        http::Method::GET => Method::Get,
        http::Method::HEAD => Method::Head,
        http::Method::POST => Method::Post,
        http::Method::PUT => Method::Put,
        http::Method::DELETE => Method::Delete,
        http::Method::CONNECT => Method::Connect,
        http::Method::OPTIONS => Method::Options,
        http::Method::TRACE => Method::Trace,
        http::Method::PATCH => Method::Patch,
        ref other => Method::Other(other.as_str().to_string()),
    };
    let scheme = match scheme {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        other => Scheme::Other(other.to_string()),
    };
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    request
        .set_method(&method)
        .map_err(|()| ErrorCode::HttpRequestMethodInvalid)?;
    request
        .set_scheme(Some(&scheme))
        .map_err(|()| ErrorCode::HttpRequestUriInvalid)?;
    request
        .set_authority(Some(authority.as_str()))
        .map_err(|()| ErrorCode::HttpRequestUriInvalid)?;
    request
        .set_path_with_query(Some(path))
        .map_err(|()| ErrorCode::HttpRequestUriInvalid)?;

    let options = request_options(timeouts)?;
    // An empty body is left untaken: the host then sends none at all
    // (a streamed empty body could go out chunked).
    let outgoing_body = if body.is_empty() {
        None
    } else {
        Some(
            request
                .body()
                .map_err(|()| FetchError::internal("request body already taken"))?,
        )
    };

    // Send first, then write the body: the host reads it as it is written.
    let future = outgoing_handler::handle(request, options)?;
    if let Some(outgoing_body) = outgoing_body {
        write_body(&outgoing_body, &body)?;
        OutgoingBody::finish(outgoing_body, None)?;
    }

    future.subscribe().block();
    let incoming = future
        .get()
        .ok_or_else(|| FetchError::internal("response not ready after waiting"))?
        .map_err(|()| FetchError::internal("response already taken"))??;

    let mut builder = http::Response::builder().status(incoming.status());
    let response_headers = incoming.headers();
    for (name, value) in response_headers.entries() {
        builder = builder.header(name, value);
    }
    // A child of the response: it must go before the response does.
    drop(response_headers);

    let incoming_body = incoming
        .consume()
        .map_err(|()| FetchError::internal("response body already taken"))?;
    let bytes = read_body(&incoming_body)?;
    drop(IncomingBody::finish(incoming_body));
    drop(incoming);

    builder
        .body(bytes)
        .map_err(|e| FetchError::internal(format!("invalid response: {e}")))
}

fn request_options(timeouts: Timeouts) -> Result<Option<RequestOptions>, FetchError> {
    if timeouts == Timeouts::default() {
        return Ok(None);
    }
    // wasi:clocks durations are nanoseconds.
    let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    let options = RequestOptions::new();
    if let Some(d) = timeouts.connect {
        options
            .set_connect_timeout(Some(nanos(d)))
            .map_err(|()| FetchError::internal("the host refuses a connect timeout"))?;
    }
    if let Some(d) = timeouts.first_byte {
        options
            .set_first_byte_timeout(Some(nanos(d)))
            .map_err(|()| FetchError::internal("the host refuses a first-byte timeout"))?;
    }
    if let Some(d) = timeouts.between_bytes {
        options
            .set_between_bytes_timeout(Some(nanos(d)))
            .map_err(|()| FetchError::internal("the host refuses a between-bytes timeout"))?;
    }
    Ok(Some(options))
}

fn write_body(outgoing_body: &OutgoingBody, body: &[u8]) -> Result<(), FetchError> {
    let stream = outgoing_body
        .write()
        .map_err(|()| FetchError::internal("request body stream unavailable"))?;
    // blocking-write-and-flush takes at most 4096 bytes a call.
    for chunk in body.chunks(4096) {
        stream
            .blocking_write_and_flush(chunk)
            .map_err(stream_error)?;
    }
    Ok(())
}

fn read_body(incoming_body: &IncomingBody) -> Result<Vec<u8>, FetchError> {
    let stream = incoming_body
        .stream()
        .map_err(|()| FetchError::internal("response body stream unavailable"))?;
    let mut bytes = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => bytes.extend_from_slice(&chunk),
            Err(StreamError::Closed) => return Ok(bytes),
            Err(e) => return Err(stream_error(e)),
        }
    }
}

/// The HTTP error behind a failed body stream (a timeout, a reset), if the
/// host says which.
fn stream_error(e: StreamError) -> FetchError {
    match e {
        StreamError::Closed => FetchError::internal("stream closed"),
        StreamError::LastOperationFailed(err) => match wasi::http::types::http_error_code(&err) {
            Some(code) => code.into(),
            None => FetchError::internal(err.to_debug_string()),
        },
    }
}
