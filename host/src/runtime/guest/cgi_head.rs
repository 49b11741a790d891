//! The CGI response head a module prints: where it ends, and what status
//! and headers it means. Pure functions of the bytes, fuzzed by
//! fuzz/fuzz_targets/cgi_head.rs.

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};

/// Finds the end of the CGI header block: the index after the blank line.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    let mut start = 0;
    while let Some(nl) = buf[start..].iter().position(|&b| b == b'\n') {
        let line = &buf[start..start + nl];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return Some(start + nl + 1);
        }
        start += nl + 1;
    }
    None
}

/// Turns a CGI header block (without the blank line) into a status and
/// response headers: `Status:` sets the status, `Location:` without it
/// makes a 302, other valid headers pass through.
pub fn parse_head(block: &[u8]) -> Result<(StatusCode, HeaderMap), String> {
    let text = std::str::from_utf8(block).map_err(|_| "CGI headers are not UTF-8".to_string())?;
    let mut status = None;
    let mut headers = HeaderMap::new();
    for line in text.lines() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("malformed CGI header line {line:?} (no colon)"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split_whitespace().next().unwrap_or("");
            let code = code
                .parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .filter(|c| (200..=599).contains(&c.as_u16()))
                .ok_or_else(|| format!("bad CGI Status {value:?}"))?;
            status = Some(code);
            continue;
        }
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("bad CGI header name {name:?}"))?;
        let value =
            HeaderValue::from_str(value).map_err(|_| format!("bad value for CGI header {name}"))?;
        // Framing is the server's business, not the script's.
        if matches!(
            name,
            header::CONNECTION
                | header::TRANSFER_ENCODING
                | header::CONTENT_LENGTH
                | header::UPGRADE
        ) || name == "keep-alive"
        {
            continue;
        }
        headers.append(name, value);
    }
    let status = match status {
        Some(s) => s,
        None if headers.contains_key(header::LOCATION) => StatusCode::FOUND,
        None => StatusCode::OK,
    };
    Ok((status, headers))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_ends_at_the_first_blank_line() {
        assert_eq!(head_end(b"A: b\n\nbody"), Some(6));
        assert_eq!(head_end(b"A: b\r\n\r\nbody"), Some(8));
        assert_eq!(head_end(b"\nbody"), Some(1));
        assert_eq!(head_end(b"A: b\n"), None);
    }

    #[test]
    fn status_location_and_headers() {
        let (s, h) =
            parse_head(b"Status: 404 Not Found\nContent-Type: text/plain\nX-A: 1\n").unwrap();
        assert_eq!(s, 404);
        assert_eq!(h["content-type"], "text/plain");
        assert_eq!(h["x-a"], "1");
        let (s, h) = parse_head(b"Location: /elsewhere\r\n").unwrap();
        assert_eq!(
            (s, &h["location"]),
            (StatusCode::FOUND, &HeaderValue::from_static("/elsewhere"))
        );
        let (s, _) = parse_head(b"Location: /x\nStatus: 301\n").unwrap();
        assert_eq!(s, 301);
        let (s, h) = parse_head(b"Content-Length: 5\nTransfer-Encoding: chunked\n").unwrap();
        assert_eq!(s, 200);
        assert!(h.is_empty(), "framing headers are the server's");
    }

    #[test]
    fn malformed_heads_are_refused() {
        assert!(
            parse_head(b"no colon here\n")
                .unwrap_err()
                .contains("no colon")
        );
        assert!(parse_head(b"Status: abc\n").is_err());
        assert!(parse_head(b"Status: 99\n").is_err());
        assert!(parse_head(b"Bad Name: x\n").is_err());
        assert!(parse_head(b"X: \x01\n").is_err());
        assert!(parse_head(b"\xff\xfe: x\n").is_err());
    }
}
