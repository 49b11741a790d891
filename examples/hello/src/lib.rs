//! The smallest useful handler: `wcluster serve` runs it out of the box.

use wcluster_guest::{Request, query_param};

fn handle(req: Request) -> String {
    let name = query_param(&req, "name").unwrap_or("world");
    format!("Hello, {name}!\n")
}

wcluster_guest::serve!(handle);
