//! The end-to-end tests' WASI 0.3 handler (`wasi:http/service@0.3.0`): one
//! route per behaviour, the 0.3 counterparts of testkit's and echo's.
//!
//!   GET  /                 hello (and a line on stdout)
//!   POST /echo             the request body streamed back chunk by chunk
//!   GET  /trap             traps
//!   GET  /loop             never returns
//!   GET  /hog              grows memory until the limit stops it
//!   GET  /slow?ms=N        waits N ms (asynchronously) before answering
//!   GET  /concurrent?ms=N  waits N ms and reports how many requests this
//!                          instance was serving at once, at most
//!   GET  /count            how many requests this instance has been given
//!   GET  /trailers         a body, then trailers (announced in `trailer`)
//!   GET  /env?name=X       the environment variable X, if granted
//!   GET  /scheme           the request's scheme as the host gave it

use std::sync::atomic::{AtomicUsize, Ordering};

use wasip3::clocks::monotonic_clock;
use wasip3::http::types::{ErrorCode, Fields, Request, Response, Trailers};
use wasip3::{wit_future, wit_stream};

wasip3::http::service::export!(P3Kit);

struct P3Kit;

static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
static MOST: AtomicUsize = AtomicUsize::new(0);
static SERVED: AtomicUsize = AtomicUsize::new(0);

fn fields(pairs: &[(&str, &str)]) -> Fields {
    let list: Vec<_> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect();
    Fields::from_list(&list).expect("valid fields")
}

/// A response whose body a spawned task writes after `handle` returned,
/// then `trailers`, if any.
fn respond(status: u16, body: Vec<u8>, trailers: Option<Trailers>) -> Response {
    let (mut body_tx, body_rx) = wit_stream::new();
    let (trailers_tx, trailers_rx) = wit_future::new(|| Ok(None));
    let names = trailers.as_ref().map(|t| {
        t.copy_all()
            .into_iter()
            .map(|(k, _)| k)
            .collect::<Vec<_>>()
            .join(", ")
    });
    let mut headers = vec![("content-type", "text/plain")];
    if let Some(names) = names.as_deref() {
        headers.push(("trailer", names));
    }
    let (response, _sent) = Response::new(fields(&headers), Some(body_rx), trailers_rx);
    response.set_status_code(status).expect("valid status");
    wasip3::spawn(async move {
        body_tx.write_all(body).await;
        drop(body_tx);
        let _ = trailers_tx.write(Ok(trailers)).await;
    });
    response
}

fn text(body: String) -> Result<Response, ErrorCode> {
    Ok(respond(200, body.into_bytes(), None))
}

fn param(path: &str, name: &str) -> Option<String> {
    let query = path.split_once('?')?.1;
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| v.to_string())
    })
}

async fn sleep_ms(ms: u64) {
    monotonic_clock::wait_for(ms * 1_000_000).await;
}

impl wasip3::exports::http::handler::Guest for P3Kit {
    async fn handle(request: Request) -> Result<Response, ErrorCode> {
        let path = request
            .get_path_with_query()
            .unwrap_or_else(|| "/".to_string());
        let route = path.split('?').next().unwrap_or("/").to_string();
        let ms = || {
            param(&path, "ms")
                .and_then(|v| v.parse().ok())
                .unwrap_or(1000)
        };
        match route.as_str() {
            "/" => {
                println!("p3kit: hello");
                text("hello from WASI 0.3\n".to_string())
            }
            "/echo" => {
                let (done_tx, done_rx) = wit_future::new(|| Ok(()));
                drop(done_tx);
                let (mut body, trailers) = Request::consume_body(request, done_rx);
                let (mut out, out_rx) = wit_stream::new();
                let (out_trailers, out_trailers_rx) = wit_future::new(|| Ok(None));
                let (response, _sent) = Response::new(
                    fields(&[("content-type", "application/octet-stream")]),
                    Some(out_rx),
                    out_trailers_rx,
                );
                wasip3::spawn(async move {
                    loop {
                        let (status, chunk) = body.read(Vec::with_capacity(64 * 1024)).await;
                        if !chunk.is_empty() && !out.write_all(chunk).await.is_empty() {
                            return; // the client went away
                        }
                        if let wasip3::wit_bindgen::StreamResult::Dropped = status {
                            break;
                        }
                    }
                    drop(out);
                    let _ = out_trailers.write(trailers.await).await;
                });
                Ok(response)
            }
            "/trap" => panic!("p3kit: trap requested"),
            "/loop" =>
            {
                #[allow(clippy::empty_loop)]
                loop {}
            }
            "/hog" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "/slow" => {
                let ms = ms();
                println!("slow request started");
                sleep_ms(ms).await;
                text(format!("slept {ms} ms\n"))
            }
            "/concurrent" => {
                let now = IN_FLIGHT.fetch_add(1, Ordering::SeqCst) + 1;
                MOST.fetch_max(now, Ordering::SeqCst);
                sleep_ms(ms()).await;
                IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
                text(format!("most at once: {}\n", MOST.load(Ordering::SeqCst)))
            }
            // Serves the first request of its instance and traps on the
            // second: a handler that must not be reused.
            "/trap-second" => {
                if SERVED.fetch_add(1, Ordering::SeqCst) > 0 {
                    panic!("p3kit: a second request in one instance");
                }
                text("first request in this instance\n".to_string())
            }
            "/count" => text(format!(
                "request {} in this instance\n",
                SERVED.fetch_add(1, Ordering::SeqCst) + 1
            )),
            "/trailers" => Ok(respond(
                200,
                b"body before trailers\n".to_vec(),
                Some(fields(&[("x-checksum", "abc123")])),
            )),
            "/scheme" => text(match request.get_scheme() {
                Some(wasip3::http::types::Scheme::Https) => "https\n".to_string(),
                Some(wasip3::http::types::Scheme::Http) => "http\n".to_string(),
                other => format!("{other:?}\n"),
            }),
            "/env" => {
                let name = param(&path, "name").unwrap_or_default();
                text(format!("{}\n", std::env::var(&name).unwrap_or_default()))
            }
            _ => Ok(respond(404, b"not found\n".to_vec(), None)),
        }
    }
}
