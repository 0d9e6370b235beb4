//! Loopback ports for one test, from the chaos crate's allocator (one allocator, one lock
//! directory, so the suite and a chaos run never hand out the same RTP block). Single
//! ports come from the OS; RTP ranges are blocks reserved across processes with lock
//! files (nextest runs every test in its own process, cargo test in threads). Failures
//! panic, as a test's setup should.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use carillon_chaos::ports;

/// A UDP+TCP port on 127.0.0.1 that was free a moment ago (the node listens on both for SIP).
pub fn free_port() -> u16 {
    ports::free_port().unwrap_or_else(|e| panic!("{e}: is the machine out of ports?"))
}

/// A reserved block of consecutive loopback ports; released (lock removed) on drop.
pub struct PortBlock {
    // A test's threads share the node's block: the SIPp slot counter needs the lock.
    inner: Mutex<ports::PortBlock>,
}

impl PortBlock {
    /// Reserves a block no other test process holds and whose ports are all free now.
    pub fn reserve() -> PortBlock {
        static CALLS: AtomicUsize = AtomicUsize::new(0);
        // Spread processes over the span so that they rarely contend for one lock.
        let start = std::process::id() as usize * 7 + CALLS.fetch_add(1, Ordering::Relaxed);
        let block = ports::PortBlock::reserve(start)
            .unwrap_or_else(|e| panic!("{e} (too many tests at once?)"));
        PortBlock {
            inner: Mutex::new(block),
        }
    }

    fn block(&self) -> std::sync::MutexGuard<'_, ports::PortBlock> {
        // A panic while holding it leaves a valid counter.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The node's RTP range, inclusive, as `(port_min, port_max)`.
    pub fn rtp_range(&self) -> (u16, u16) {
        self.block().rtp_range()
    }

    /// A fresh media port (-mp) for one SIPp instance.
    pub fn sipp_media_port(&self) -> u16 {
        self.block()
            .sipp_media_port()
            .unwrap_or_else(|e| panic!("{e}"))
    }
}
