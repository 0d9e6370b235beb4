//! Loopback ports for one chaos cluster. Single ports come from the OS; each node's RTP
//! range is a block reserved with a lock file, in the same span and lock directory the
//! integration tests use, so a chaos run and the test suite never hand out the same block.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::{TcpListener, UdpSocket};
use std::path::PathBuf;

use anyhow::bail;

/// Below Linux's ephemeral range (32768+) and clear of the examples' 20000-29999.
const SPAN_FIRST_PORT: u16 = 10_000;
const SPAN_LEN_PORTS: u16 = 10_000;
const BLOCK_LEN_PORTS: u16 = 200;
/// The top of each block is for SIPp media ports, 4 per SIPp instance.
const SIPP_SLOTS_PORTS: u16 = 48;
const SIPP_SLOT_LEN_PORTS: u16 = 4;

/// A UDP+TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    for _ in 0..50 {
        let Ok(tcp) = TcpListener::bind("127.0.0.1:0") else {
            continue;
        };
        let Ok(addr) = tcp.local_addr() else { continue };
        if UdpSocket::bind(("127.0.0.1", addr.port())).is_ok() {
            return Ok(addr.port());
        }
    }
    bail!("no free loopback port after 50 tries")
}

/// A reserved block of loopback ports; released on drop.
pub struct PortBlock {
    first: u16,
    lock: PathBuf,
    next_sipp_slot: u16,
}

impl PortBlock {
    /// Reserves a block that no other process holds and whose ports are free now;
    /// `start` spreads concurrent reservers over the span.
    pub fn reserve(start: usize) -> anyhow::Result<PortBlock> {
        let blocks = usize::from(SPAN_LEN_PORTS / BLOCK_LEN_PORTS);
        let lock_dir = std::env::temp_dir().join("carillon-test-ports");
        fs::create_dir_all(&lock_dir)?;
        for i in 0..blocks {
            let index = (start + i) % blocks;
            // index < blocks = 50, so it fits in u16.
            let first = SPAN_FIRST_PORT + u16::try_from(index).unwrap_or(0) * BLOCK_LEN_PORTS;
            let lock = lock_dir.join(format!("block-{first}.lock"));
            if !take_lock(&lock) {
                continue;
            }
            if (first..first + BLOCK_LEN_PORTS).all(|p| UdpSocket::bind(("127.0.0.1", p)).is_ok()) {
                return Ok(PortBlock {
                    first,
                    lock,
                    next_sipp_slot: 0,
                });
            }
            let _ = fs::remove_file(&lock);
        }
        bail!(
            "no free block of {BLOCK_LEN_PORTS} ports in {SPAN_FIRST_PORT}-{}; stale locks in {}?",
            SPAN_FIRST_PORT + SPAN_LEN_PORTS - 1,
            lock_dir.display()
        )
    }

    /// The node's RTP range, inclusive.
    pub fn rtp_range(&self) -> (u16, u16) {
        (
            self.first,
            self.first + BLOCK_LEN_PORTS - SIPP_SLOTS_PORTS - 1,
        )
    }

    /// A media port for one more SIPp instance.
    pub fn sipp_media_port(&mut self) -> anyhow::Result<u16> {
        if self.next_sipp_slot >= SIPP_SLOTS_PORTS / SIPP_SLOT_LEN_PORTS {
            bail!("more SIPp instances on one node than media slots");
        }
        let port = self.first + BLOCK_LEN_PORTS - SIPP_SLOTS_PORTS
            + self.next_sipp_slot * SIPP_SLOT_LEN_PORTS;
        self.next_sipp_slot += 1;
        Ok(port)
    }
}

impl Drop for PortBlock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.lock);
    }
}

/// Creates `lock` holding our pid; takes over a lock whose owner is gone.
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
                    // Empty: being written right now; leave it.
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
