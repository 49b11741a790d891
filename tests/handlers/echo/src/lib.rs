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
