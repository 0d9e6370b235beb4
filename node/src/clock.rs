//! The node's one reading of the wall clock. Core crates take time as data; the node, an
//! adapter, reads it here and passes it in.
#![allow(clippy::disallowed_methods)] // this module is where time enters the system

/// Unix epoch milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A monotonic instant, for measuring durations in adapters and benchmarks.
pub fn instant() -> std::time::Instant {
    std::time::Instant::now()
}
