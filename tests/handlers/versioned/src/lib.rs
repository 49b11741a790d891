//! Names its version in every response, for the redeploy tests. The tests
//! build it several times with VERSIONED_TAG set (v1, v2, trap).

use std::time::Duration;

use wcluster_guest::{Request, query_param};

const VERSION: &str = match option_env!("VERSIONED_TAG") {
    Some(v) => v,
    None => "v0",
};

fn handle(req: Request) -> String {
    if VERSION == "trap" {
        panic!("this version traps on every request, the smoke check included");
    }
    if req.uri().path() == "/slow" {
        let ms = query_param(&req, "ms")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000);
        println!("slow request started on {VERSION}");
        std::thread::sleep(Duration::from_millis(ms));
    }
    if req.method() == "POST" {
        return format!("{VERSION} {}\n", req.body().len());
    }
    format!("{VERSION}\n")
}

wcluster_guest::serve!(handle);
