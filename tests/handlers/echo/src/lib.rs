//! Streams the request body back, written against the plain `wasi` crate
//! (no SDK): the way wasmtime's own examples are written.

use std::io::{Read, Write};

use wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct Echo;

impl wasi::exports::http::incoming_handler::Guest for Echo {
    fn handle(req: IncomingRequest, out: ResponseOutparam) {
        if req.path_with_query().as_deref() == Some("/no-response") {
            // Returns without setting a response: the host must answer 500.
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

wasi::http::proxy::export!(Echo);
