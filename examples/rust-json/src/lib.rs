//! A small JSON API with the guest SDK: routes on the path (below where a
//! manifest mounted it: examples/app serves it under `/api/...`), reads the
//! body, answers JSON. `cargo build --target wasm32-wasip2 --release -p rust-json`

use serde::{Deserialize, Serialize};
use wcluster_guest::{Request, Response, StatusCode, http};

#[derive(Deserialize)]
struct Greet {
    name: String,
    #[serde(default = "one")]
    times: usize,
}

fn one() -> usize {
    1
}

#[derive(Serialize)]
struct Greeting {
    message: String,
    length: usize,
}

fn json(status: StatusCode, value: impl Serialize) -> Response {
    http::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&value).expect("serializable"))
        .expect("valid response")
}

fn handle(req: Request) -> Response {
    match (req.method().as_str(), wcluster_guest::route_path(&req)) {
        ("GET", "/") => json(
            StatusCode::OK,
            serde_json::json!({"service": "rust-json", "routes": ["/", "POST /greet"]}),
        ),
        ("POST", "/greet") => match serde_json::from_slice::<Greet>(req.body()) {
            Ok(g) => {
                let message = vec![format!("Hello, {}!", g.name); g.times.min(100)].join(" ");
                json(
                    StatusCode::OK,
                    Greeting {
                        length: message.len(),
                        message,
                    },
                )
            }
            Err(e) => json(
                StatusCode::BAD_REQUEST,
                serde_json::json!({"error": e.to_string()}),
            ),
        },
        _ => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "no such route"}),
        ),
    }
}

wcluster_guest::serve!(handle);
