//! Loopback ports for one test. Single ports (SIP, HTTP, gRPC, a SIPp's signalling port)
//! come from the OS; RTP needs a contiguous range, which the OS cannot hand out, so ranges
//! are carved from a fixed span below the ephemeral range and reserved across processes
//! with lock files (nextest runs every test in its own process, cargo test in threads).

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::{TcpListener, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};

/// The span RTP blocks come from: below Linux's ephemeral range (32768+), so ports the OS
/// hands out for `free_port` never land in a block, and clear of 20000-29999, which
/// examples/single-node.toml uses as written.
const SPAN_FIRST_PORT: u16 = 10_000;
const SPAN_LEN_PORTS: u16 = 10_000;
/// Ports per block: the node's RTP range, then SIPp media slots at the top.
const BLOCK_LEN_PORTS: u16 = 200;
/// The top of each block is kept for SIPp media ports, 4 per instance (SIPp binds the
/// media port and media port + 2, and we keep the odd ones free for RTCP-minded peers).
const SIPP_SLOTS_PORTS: u16 = 48;
const SIPP_SLOT_LEN_PORTS: u16 = 4;

/// A UDP+TCP port on 127.0.0.1 that was free a moment ago (the node listens on both for SIP).
pub fn free_port() -> u16 {
    for _ in 0..50 {
        let tcp = match TcpListener::bind("127.0.0.1:0") {
            Ok(l) => l,
            Err(_) => continue,
        };
        let port = match tcp.local_addr() {
            Ok(a) => a.port(),
            Err(_) => continue,
        };
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port after 50 tries: is the machine out of ports?");
}

/// A reserved block of consecutive loopback ports; released (lock removed) on drop.
pub struct PortBlock {
    first: u16,
    lock: PathBuf,
    next_sipp_slot: AtomicU16,
}

impl PortBlock {
    /// Reserves a block no other test process holds and whose ports are all free now.
    pub fn reserve() -> PortBlock {
        static CALLS: AtomicUsize = AtomicUsize::new(0);
        let blocks = usize::from(SPAN_LEN_PORTS / BLOCK_LEN_PORTS);
        let lock_dir = std::env::temp_dir().join("carillon-test-ports");
        if let Err(e) = fs::create_dir_all(&lock_dir) {
            panic!("cannot create {}: {e}", lock_dir.display());
        }
        // Spread processes over the span so that they rarely contend for one lock.
        let start = std::process::id() as usize * 7 + CALLS.fetch_add(1, Ordering::Relaxed);
        for i in 0..blocks {
            let index = (start + i) % blocks;
            // `index` < blocks = SPAN_LEN_PORTS / BLOCK_LEN_PORTS, so this fits in u16.
            let first = SPAN_FIRST_PORT + u16::try_from(index).unwrap_or(0) * BLOCK_LEN_PORTS;
            let lock = lock_dir.join(format!("block-{first}.lock"));
            if !take_lock(&lock) {
                continue;
            }
            if (first..first + BLOCK_LEN_PORTS).all(|p| UdpSocket::bind(("127.0.0.1", p)).is_ok()) {
                return PortBlock {
                    first,
                    lock,
                    next_sipp_slot: AtomicU16::new(0),
                };
            }
            let _ = fs::remove_file(&lock);
        }
        panic!(
            "no free block of {BLOCK_LEN_PORTS} ports in {SPAN_FIRST_PORT}-{}: too many tests \
             at once, or stale locks in {} (remove them)",
            SPAN_FIRST_PORT + SPAN_LEN_PORTS - 1,
            lock_dir.display()
        );
    }

    /// The node's RTP range, inclusive, as `(port_min, port_max)`.
    pub fn rtp_range(&self) -> (u16, u16) {
        (
            self.first,
            self.first + BLOCK_LEN_PORTS - SIPP_SLOTS_PORTS - 1,
        )
    }

    /// A fresh media port (-mp) for one SIPp instance.
    pub fn sipp_media_port(&self) -> u16 {
        let slot = self.next_sipp_slot.fetch_add(1, Ordering::Relaxed);
        assert!(
            slot < SIPP_SLOTS_PORTS / SIPP_SLOT_LEN_PORTS,
            "a test asked for more than {} SIPp media ports",
            SIPP_SLOTS_PORTS / SIPP_SLOT_LEN_PORTS
        );
        self.first + BLOCK_LEN_PORTS - SIPP_SLOTS_PORTS + slot * SIPP_SLOT_LEN_PORTS
    }
}

impl Drop for PortBlock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.lock);
    }
}

/// Creates `lock` holding our pid; takes over a lock whose owner process is gone.
fn take_lock(lock: &PathBuf) -> bool {
    for _ in 0..2 {
        match OpenOptions::new().write(true).create_new(true).open(lock) {
            Ok(mut f) => {
                let _ = write!(f, "{}", std::process::id());
                return true;
            }
            Err(_) => {
                let owner = fs::read_to_string(lock).unwrap_or_default();
                let alive = owner
                    .trim()
                    .parse::<u32>()
                    .map(|pid| PathBuf::from(format!("/proc/{pid}")).exists())
                    // An empty or half-written lock is being created right now: leave it.
                    .unwrap_or(true);
                if alive {
                    return false;
                }
                let _ = fs::remove_file(lock);
            }
        }
    }
    false
}
