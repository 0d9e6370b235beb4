//! GET and POST on a node's HTTP API for the tests, through the chaos crate's small
//! HTTP/1.1 client (one client for both; its parser and its tests live there). Errors are
//! strings for assertion messages.

use std::net::SocketAddr;
use std::time::Duration;

use carillon_chaos::http::request;

/// `GET path`; returns (status, body).
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(u16, String), String> {
    request(addr, "GET", path, timeout.as_millis() as u64).map_err(|e| e.to_string())
}

/// `POST path` with an empty body; returns (status, body).
pub fn post(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(u16, String), String> {
    request(addr, "POST", path, timeout.as_millis() as u64).map_err(|e| e.to_string())
}
