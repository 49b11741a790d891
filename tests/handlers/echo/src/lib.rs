//! Streams the request body back, written against the plain `wasi` crate
//! (no SDK): the way wasmtime's own examples are written.

use std::io::{Read, Write};

use wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct Echo;

impl wasi::exports::http::incoming_handler::Guest for Echo {
    fn handle(req: IncomingRequest, out: ResponseOutparam) {
        let path = req.path_with_query().unwrap_or_default();
        if path == "/no-response" {
            // Returns without setting a response: the host must answer 500.
            return;
        }
        if path == "/forget" {
            // Returns without setting a response and keeps the outparam alive,
            // as a JavaScript runtime that swallowed an exception does: the
            // host must still answer 500 at once, and drop the instance.
            std::mem::forget(out);
            return;
        }
        if path == "/once" {
            // Serves one request per instance; after that behaves as /forget
            // (a handler that is not safe to reuse).
            static USED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
            if USED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                std::mem::forget(out);
                return;
            }
        }
        if path == "/count" || path == "/once" {
            // Requests this instance has served (tells a reused instance
            // from a fresh one).
            static SERVED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = SERVED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            let resp = OutgoingResponse::new(Fields::new());
            let body = resp.body().expect("outgoing body");
            ResponseOutparam::set(out, Ok(resp));
            {
                let mut output = body.write().expect("output stream");
                let _ = Write::write_all(&mut output, format!("{n}\n").as_bytes());
                let _ = Write::flush(&mut output);
            }
            OutgoingBody::finish(body, None).expect("finish body");
            return;
        }
        if path == "/huge" || path == "/panic-after-headers" {
            stream_then(&path, out);
            return;
        }
        let headers = Fields::new();
        for (name, value) in req.headers().entries() {
            if name.eq_ignore_ascii_case("content-type") {
                let _ = headers.append(&name, &value);
            }
        }
        let resp = OutgoingResponse::new(headers);
        let body = resp.body().expect("outgoing body");
        ResponseOutparam::set(out, Ok(resp));
        let incoming = req.consume().expect("incoming body");
        {
            let mut input = incoming.stream().expect("input stream");
            let mut output = body.write().expect("output stream");
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match Read::read(&mut input, &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if Write::write_all(&mut output, &buf[..n]).is_err() {
                    return;
                }
            }
            let _ = Write::flush(&mut output);
        }
        OutgoingBody::finish(body, None).expect("finish body");
    }
}

/// `/huge`: a 1 GiB body, written as fast as the client takes it.
/// `/panic-after-headers`: some body, then a panic mid-response.
fn stream_then(path: &str, out: ResponseOutparam) {
    let resp = OutgoingResponse::new(Fields::new());
    let body = resp.body().expect("outgoing body");
    ResponseOutparam::set(out, Ok(resp));
    let mut output = body.write().expect("output stream");
    let chunk = vec![b'z'; 64 * 1024];
    let chunks = if path == "/huge" { 16 * 1024 } else { 4 };
    for _ in 0..chunks {
        if Write::write_all(&mut output, &chunk).is_err() {
            return;
        }
    }
    if path == "/panic-after-headers" {
        panic!("echo: panic after the response started");
    }
    drop(output);
    OutgoingBody::finish(body, None).expect("finish body");
}

wasi::http::proxy::export!(Echo);
