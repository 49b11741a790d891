//! A WASI 0.3 handler (`wasi:http/service@0.3.0`): `handle` is an async
//! function, and the body is a stream the handler writes after returning
//! the response head. Built with the `wasip3` crate:
//! `cargo build --target wasm32-wasip2 --release -p p3-hello`, then
//! `wcluster serve target/wasm32-wasip2/release/p3_hello.wasm` (or
//! `wasmtime serve -Sp3 -Scli` on the same file).

use wasip3::http::types::{ErrorCode, Fields, Request, Response};
use wasip3::{wit_future, wit_stream};

wasip3::http::service::export!(Hello);

struct Hello;

impl wasip3::exports::http::handler::Guest for Hello {
    async fn handle(request: Request) -> Result<Response, ErrorCode> {
        let path = request.get_path_with_query().unwrap_or_else(|| "/".into());
        let name = path
            .split_once("name=")
            .map_or("world", |(_, rest)| {
                rest.split('&').next().unwrap_or("world")
            })
            .to_string();
        let headers = Fields::from_list(&[(
            "content-type".to_string(),
            b"text/plain; charset=utf-8".to_vec(),
        )])
        .expect("valid headers");
        let (mut body, body_rx) = wit_stream::new();
        let (trailers, trailers_rx) = wit_future::new(|| Ok(None));
        let (response, _sent) = Response::new(headers, Some(body_rx), trailers_rx);
        wasip3::spawn(async move {
            body.write_all(format!("Hello, {name}, from WASI 0.3!\n").into_bytes())
                .await;
            drop(body);
            let _ = trailers.write(Ok(None)).await;
        });
        Ok(response)
    }
}
