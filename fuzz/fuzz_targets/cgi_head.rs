//! Any bytes a CGI module prints: finding the head and parsing it never
//! panics, and a parsed head only holds what HTTP allows.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../host/src/runtime/guest/cgi_head.rs"]
mod cgi_head;

fuzz_target!(|data: &[u8]| {
    let end = cgi_head::head_end(data);
    if let Some(end) = end {
        assert!(end <= data.len());
    }
    let block = &data[..end.unwrap_or(data.len())];
    if let Ok((status, headers)) = cgi_head::parse_head(block) {
        assert!((200..=599).contains(&status.as_u16()));
        assert!(!headers.contains_key(http::header::TRANSFER_ENCODING));
        assert!(!headers.contains_key(http::header::CONTENT_LENGTH));
    }
});
