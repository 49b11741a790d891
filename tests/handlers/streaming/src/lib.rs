//! The guest SDK's streaming side: the request body read as a stream, and a
//! response body written as it is produced.

use std::io::Read;

use wcluster_guest::{StreamRequest, Streaming, query_param};

fn handle(mut req: StreamRequest) -> Streaming {
    if req.method() == "POST" {
        // Count the body in chunks without ever holding all of it.
        let mut buf = vec![0u8; 64 * 1024];
        let (mut total, mut sum) = (0u64, 0u64);
        let outcome = loop {
            match req.body_mut().read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    total += n as u64;
                    sum = buf[..n].iter().fold(sum, |s, &b| s.wrapping_add(b as u64));
                }
                Err(e) => break Err(e),
            }
        };
        return Streaming::new(move |out| {
            outcome?;
            writeln!(out, "bytes={total} sum={sum}")
        });
    }
    let n: u32 = query_param(&req, "n")
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    // `pause=MS`: that long between lines (an upstream that stalls mid-body).
    let pause: u64 = query_param(&req, "pause")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Streaming::new(move |out| {
        for i in 1..=n {
            if i > 1 && pause > 0 {
                std::thread::sleep(std::time::Duration::from_millis(pause));
            }
            writeln!(out, "line {i}")?;
            out.flush()?;
        }
        Ok(())
    })
}

wcluster_guest::serve!(stream handle);
