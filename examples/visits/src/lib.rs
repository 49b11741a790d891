//! Counts visitors: a greeting from configuration, a counter in the
//! key-value store, and optionally a line from an upstream service.
//! `cargo build --target wasm32-wasip2 --release -p visits`

use wcluster_guest::{Request, StatusCode, config, fetch, http, kv};

fn handle(_req: Request) -> (StatusCode, String) {
    match visit() {
        Ok(page) => (StatusCode::OK, page),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}

wcluster_guest::serve!(handle);

fn visit() -> Result<String, String> {
    let greeting = config::get("greeting")
        .map_err(|e| format!("cannot read the configuration: {e}"))?
        .unwrap_or_else(|| "hello".to_string());

    // "" is the default bucket on wcluster and the only one `wasmtime serve`
    // knows, so the same component runs on both.
    let visits = kv::Bucket::open("")
        .and_then(|bucket| bucket.increment("visits", 1))
        .map_err(|e| format!("cannot count the visit: {e}"))?;
    let mut page = format!("{greeting}, visitor #{visits}\n");

    if let Some(url) =
        config::get("upstream").map_err(|e| format!("cannot read the configuration: {e}"))?
    {
        let req = http::Request::get(&url)
            .body(Vec::new())
            .map_err(|e| format!("invalid upstream {url}: {e}"))?;
        let resp = fetch::fetch(req).map_err(|e| format!("cannot reach {url}: {e}"))?;
        let body = String::from_utf8_lossy(resp.body());
        page += &format!("upstream: {}\n", body.lines().next().unwrap_or_default());
    }
    Ok(page)
}
