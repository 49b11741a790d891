//! Test handler for the capabilities beyond wasi:http/proxy: outbound HTTP,
//! configuration and key-value storage, each behind a route that reports
//! the outcome (or the error) as plain text.

use std::time::Duration;

use wcluster_guest::fetch::{self, Timeouts};
use wcluster_guest::kv::Bucket;
use wcluster_guest::{Request, Response, StatusCode, config, http};

fn handle(req: Request) -> Response {
    let q = Query::of(&req);
    match (req.method().as_str(), req.uri().path()) {
        ("GET", "/fetch") => do_fetch(&q),
        ("GET", "/config") => config_get(&q),
        ("GET", "/config-all") => config_all(),
        (method, path) if kv_route(method, path) => {
            match Bucket::open(q.get("bucket").unwrap_or("default")) {
                Ok(bucket) => kv(&bucket, path, &q, req.body()),
                Err(e) => error(e),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

wcluster_guest::serve!(handle);

fn kv_route(method: &str, path: &str) -> bool {
    matches!(
        (method, path),
        (
            "GET",
            "/incr" | "/get" | "/delete" | "/exists" | "/keys" | "/get-many" | "/delete-many"
        ) | ("POST", "/set" | "/set-many")
    )
}

fn do_fetch(q: &Query) -> Response {
    let Some(url) = q.get("url") else {
        return text(StatusCode::BAD_REQUEST, "url missing\n");
    };
    // An unparsable URL fails as the host would fail it.
    let Ok(req) = http::Request::get(url).body(Vec::new()) else {
        return text(StatusCode::BAD_GATEWAY, "error HttpRequestUriInvalid\n");
    };
    let ms = |name| {
        q.get(name)
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis)
    };
    let timeouts = Timeouts {
        connect: ms("connect_ms"),
        first_byte: ms("first_byte_ms"),
        between_bytes: ms("between_ms"),
    };
    match fetch::fetch_with(req, timeouts) {
        Ok(resp) => {
            let mut body = format!("upstream {} ", resp.status().as_u16()).into_bytes();
            body.extend_from_slice(resp.body());
            bytes(StatusCode::OK, body)
        }
        Err(e) => text(StatusCode::BAD_GATEWAY, format!("error {}\n", e.name())),
    }
}

fn config_get(q: &Query) -> Response {
    let key = q.get("key").unwrap_or_default();
    match config::get(key) {
        Ok(Some(value)) => text(StatusCode::OK, format!("{value}\n")),
        Ok(None) => text(StatusCode::NOT_FOUND, format!("missing {key}\n")),
        Err(e) => error(e),
    }
}

fn config_all() -> Response {
    match config::get_all() {
        Ok(mut pairs) => {
            pairs.sort();
            let lines: String = pairs.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
            text(StatusCode::OK, lines)
        }
        Err(e) => error(e),
    }
}

fn kv(bucket: &Bucket, path: &str, q: &Query, body: &[u8]) -> Response {
    let key = q.get("key").unwrap_or_default();
    let list = || -> Vec<&str> {
        q.get("keys")
            .unwrap_or_default()
            .split(',')
            .filter(|k| !k.is_empty())
            .collect()
    };
    let ok = |r: Result<(), _>| r.map_or_else(error, |()| text(StatusCode::OK, "ok\n"));
    match path {
        "/incr" => {
            let by = q.get("by").and_then(|v| v.parse().ok()).unwrap_or(1);
            bucket
                .increment(key, by)
                .map_or_else(error, |n| text(StatusCode::OK, format!("{n}\n")))
        }
        "/get" => match bucket.get(key) {
            Ok(Some(value)) => bytes(StatusCode::OK, value),
            Ok(None) => text(StatusCode::NOT_FOUND, "missing\n"),
            Err(e) => error(e),
        },
        "/set" => ok(bucket.set(key, body)),
        "/delete" => ok(bucket.delete(key)),
        "/exists" => bucket
            .exists(key)
            .map_or_else(error, |b| text(StatusCode::OK, format!("{b}\n"))),
        "/keys" => bucket.keys().map_or_else(error, |mut keys| {
            keys.sort();
            let lines: String = keys.iter().map(|k| format!("{k}\n")).collect();
            text(StatusCode::OK, lines)
        }),
        "/set-many" => {
            let body = String::from_utf8_lossy(body);
            let pairs: Vec<(&str, &str)> = body
                .lines()
                .filter_map(|line| line.split_once('='))
                .collect();
            let pairs: Vec<(&str, &[u8])> = pairs.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
            ok(bucket.set_many(&pairs))
        }
        "/get-many" => bucket.get_many(&list()).map_or_else(error, |found| {
            let lines: String = list()
                .iter()
                .zip(found)
                .map(|(k, v)| match v {
                    Some(v) => format!("{k}={}\n", String::from_utf8_lossy(&v)),
                    None => format!("{k} missing\n"),
                })
                .collect();
            text(StatusCode::OK, lines)
        }),
        "/delete-many" => ok(bucket.delete_many(&list())),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// The query string's `name=value` pairs, values percent-decoded.
struct Query(Vec<(String, String)>);

impl Query {
    fn of(req: &Request) -> Self {
        let pairs = req
            .uri()
            .query()
            .unwrap_or_default()
            .split('&')
            .filter(|kv| !kv.is_empty())
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (decode(k), decode(v))
            })
            .collect();
        Self(pairs)
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Decodes `%XX` escapes (a `%` not followed by two hex digits stays).
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let hex = |i: usize| bytes.get(i).and_then(|&b| (b as char).to_digit(16));
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(high), Some(low)) = (hex(i + 1), hex(i + 2))
        {
            out.push((high * 16 + low) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    let mut resp = bytes(status, body.into().into_bytes());
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn bytes(status: StatusCode, body: Vec<u8>) -> Response {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp
}

fn error(e: impl std::fmt::Display) -> Response {
    text(StatusCode::INTERNAL_SERVER_ERROR, format!("error {e}\n"))
}
