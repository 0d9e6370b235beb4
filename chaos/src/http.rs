//! A minimal blocking HTTP/1.1 client for the node's JSON API on loopback (GET, POST,
//! DELETE with `Connection: close`); the runner needs no HTTP client crate for that.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;

/// Largest response body accepted.
const RESPONSE_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// One request's connect, read and write timeout.
pub const REQUEST_TIMEOUT_MS: u64 = 3_000;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{method} http://{addr}{path}: {detail}")]
    Io {
        method: &'static str,
        addr: SocketAddr,
        path: String,
        detail: String,
    },
    #[error("{method} http://{addr}{path}: HTTP {status}: {body}")]
    Status {
        method: &'static str,
        addr: SocketAddr,
        path: String,
        status: u16,
        body: String,
    },
    #[error("http://{addr}{path}: the body is not JSON: {detail}")]
    NotJson {
        addr: SocketAddr,
        path: String,
        detail: String,
    },
}

/// `method path` with an empty body; (status, body).
pub fn request(
    addr: SocketAddr,
    method: &'static str,
    path: &str,
    timeout_ms: u64,
) -> Result<(u16, String), HttpError> {
    let io = |detail: String| HttpError::Io {
        method,
        addr,
        path: path.to_string(),
        detail,
    };
    let timeout = Duration::from_millis(timeout_ms);
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| io(e.to_string()))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| io(e.to_string()))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| io(e.to_string()))?;
    let mut raw = Vec::new();
    stream
        .take(RESPONSE_BYTES_MAX)
        .read_to_end(&mut raw)
        .map_err(|e| io(e.to_string()))?;
    parse_response(&raw).ok_or_else(|| io("unparsable response".into()))
}

/// GET `path` as JSON; any status but 200 is an error.
pub fn get_json(addr: SocketAddr, path: &str) -> Result<Value, HttpError> {
    let (status, body) = request(addr, "GET", path, REQUEST_TIMEOUT_MS)?;
    if status != 200 {
        return Err(HttpError::Status {
            method: "GET",
            addr,
            path: path.to_string(),
            status,
            body: body.chars().take(300).collect(),
        });
    }
    serde_json::from_str(&body).map_err(|e| HttpError::NotJson {
        addr,
        path: path.to_string(),
        detail: e.to_string(),
    })
}

/// POST or DELETE `path`; any status but 200 is an error.
pub fn send(addr: SocketAddr, method: &'static str, path: &str) -> Result<String, HttpError> {
    let (status, body) = request(addr, method, path, REQUEST_TIMEOUT_MS)?;
    if status != 200 {
        return Err(HttpError::Status {
            method,
            addr,
            path: path.to_string(),
            status,
            body: body.chars().take(300).collect(),
        });
    }
    Ok(body)
}

fn parse_response(raw: &[u8]) -> Option<(u16, String)> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let body = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = body.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&body[..eol]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        body = &body[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(body.get(..size)?);
        body = body.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked() {
        let plain = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        assert_eq!(parse_response(plain), Some((200, "ok".to_string())));
        let chunked =
            b"HTTP/1.1 409 Conflict\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n[1,\r\n2\r\n2]\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked), Some((409, "[1,2]".to_string())));
        assert_eq!(parse_response(b"garbage"), None);
    }
}
