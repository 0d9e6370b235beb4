//! The RTP port pool: even RTP ports from a configured range on one IP, each with its RTCP
//! port (+1) reserved beside it, handed out as owned [`RtpPort`]s that go back on drop.
//!
//! A port the OS refuses (another program holds it) is skipped, and the number of failed binds
//! per allocation is bounded so that a range taken over by someone else fails fast with an error
//! that says so.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::MediaError;

/// Failed binds one [`PortPool::allocate`] tolerates before giving up.
pub const BIND_ATTEMPTS_MAX: usize = 64;

/// A pool of RTP/RTCP port pairs.
#[derive(Debug)]
pub struct PortPool {
    ip: IpAddr,
    min: u16,
    max: u16,
    /// The first even port of the range; slot `i` is port `first + 2 * i`.
    first: u16,
    state: Mutex<PoolState>,
}

#[derive(Debug)]
struct PoolState {
    used: Vec<bool>,
    in_use: usize,
    /// Where the next search starts: rotating through the range delays the reuse of a port, so
    /// late packets of an ended call rarely reach the next one.
    cursor: usize,
}

impl PortPool {
    /// A pool of the even ports in `min..=max` whose odd neighbour is also in range, bound on
    /// `ip`.
    pub fn new(ip: IpAddr, min: u16, max: u16) -> Result<Arc<PortPool>, MediaError> {
        let range_err = |reason| MediaError::PortRange { min, max, reason };
        if min == 0 {
            return Err(range_err(
                "port 0 is not a real port; start the range at 1024 or above",
            ));
        }
        if min > max {
            return Err(range_err("the minimum is above the maximum"));
        }
        let first = min + (min & 1);
        if first >= max {
            return Err(range_err(
                "the range holds no even port with its odd neighbour (RTP and RTCP)",
            ));
        }
        let pairs = usize::from((max - first - 1) / 2 + 1);
        Ok(Arc::new(PortPool {
            ip,
            min,
            max,
            first,
            state: Mutex::new(PoolState {
                used: vec![false; pairs],
                in_use: 0,
                cursor: 0,
            }),
        }))
    }

    /// Takes a free pair and binds both sockets (non-blocking, ready for tokio).
    pub fn allocate(self: &Arc<Self>) -> Result<RtpPort, MediaError> {
        let mut state = self.lock();
        let pairs = state.used.len();
        let mut failures = 0;
        let mut last_error = None;
        for offset in 0..pairs {
            let slot = (state.cursor + offset) % pairs;
            if state.used[slot] {
                continue;
            }
            // slot < pairs, so the port is at most `max - 1` and fits a u16.
            let port = self.first + 2 * slot as u16;
            match bind_pair(self.ip, port) {
                Ok((rtp, rtcp)) => {
                    state.used[slot] = true;
                    state.in_use += 1;
                    state.cursor = (slot + 1) % pairs;
                    return Ok(RtpPort {
                        rtp: Some(rtp),
                        rtcp: Some(rtcp),
                        addr: SocketAddr::new(self.ip, port),
                        slot,
                        pool: Arc::clone(self),
                    });
                }
                Err(e) => {
                    tracing::debug!(port, error = %e, "RTP port pair unavailable, skipping");
                    failures += 1;
                    last_error = Some(e);
                    if failures >= BIND_ATTEMPTS_MAX {
                        break;
                    }
                }
            }
        }
        match last_error {
            Some(source) => Err(MediaError::Bind {
                ip: self.ip,
                min: self.min,
                max: self.max,
                attempts: failures,
                source,
            }),
            None => Err(MediaError::PoolExhausted {
                ip: self.ip,
                min: self.min,
                max: self.max,
                pairs,
            }),
        }
    }

    /// Port pairs currently handed out.
    pub fn in_use(&self) -> usize {
        self.lock().in_use
    }

    /// Port pairs the range holds.
    pub fn capacity(&self) -> usize {
        self.lock().used.len()
    }

    /// The IP every port is bound on.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    fn release(&self, slot: usize) {
        let mut state = self.lock();
        if let Some(used) = state.used.get_mut(slot) {
            if *used {
                *used = false;
                state.in_use -= 1;
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        // The state is a few counters updated without panicking code in between, so a poisoned
        // lock still holds consistent data.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn bind_pair(ip: IpAddr, port: u16) -> std::io::Result<(UdpSocket, UdpSocket)> {
    let rtp = UdpSocket::bind(SocketAddr::new(ip, port))?;
    let rtcp = UdpSocket::bind(SocketAddr::new(ip, port + 1))?;
    rtp.set_nonblocking(true)?;
    rtcp.set_nonblocking(true)?;
    Ok((rtp, rtcp))
}

/// An allocated RTP port and its RTCP neighbour. Dropping it closes any sockets still held and
/// returns the pair to the pool.
#[derive(Debug)]
pub struct RtpPort {
    rtp: Option<UdpSocket>,
    rtcp: Option<UdpSocket>,
    addr: SocketAddr,
    slot: usize,
    pool: Arc<PortPool>,
}

impl RtpPort {
    /// The local RTP address to put in SDP.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The local RTCP address (RTP port + 1).
    pub fn rtcp_addr(&self) -> SocketAddr {
        SocketAddr::new(self.addr.ip(), self.addr.port() + 1)
    }

    /// Takes the bound sockets out (RTP, RTCP) for the media task. The port stays reserved
    /// until this `RtpPort` is dropped, so the task keeps it beside the sockets.
    pub(crate) fn take_sockets(&mut self) -> Option<(UdpSocket, UdpSocket)> {
        Some((self.rtp.take()?, self.rtcp.take()?))
    }
}

impl Drop for RtpPort {
    fn drop(&mut self) {
        // Close before releasing, so the next holder of the slot can bind at once.
        self.rtp = None;
        self.rtcp = None;
        self.pool.release(self.slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    #[test]
    fn rejects_ranges_without_a_pair() {
        assert!(PortPool::new(LOOPBACK, 0, 10).is_err());
        assert!(PortPool::new(LOOPBACK, 20_001, 20_000).is_err());
        assert!(PortPool::new(LOOPBACK, 20_001, 20_002).is_err());
        let pool = PortPool::new(LOOPBACK, 20_001, 20_005).expect("20002/3 and 20004/5");
        assert_eq!(pool.capacity(), 2);
        assert_eq!(
            PortPool::new(LOOPBACK, 20_000, 20_001)
                .expect("one pair")
                .capacity(),
            1
        );
    }

    #[test]
    fn allocates_even_ports_exhausts_and_returns_on_drop() {
        let pool = PortPool::new(LOOPBACK, 41_000, 41_007).expect("valid range");
        let a = pool.allocate().expect("first pair");
        let b = pool.allocate().expect("second pair");
        assert_eq!(a.local_addr().port() % 2, 0);
        assert_ne!(a.local_addr(), b.local_addr());
        assert_eq!(a.rtcp_addr().port(), a.local_addr().port() + 1);
        let mut held = vec![a, b];
        while let Ok(p) = pool.allocate() {
            held.push(p);
        }
        // Another test binary may hold some ports of the range; the pool skips those.
        assert!(held.len() >= 2 && held.len() <= 4);
        assert_eq!(pool.in_use(), held.len());
        let err = pool.allocate().expect_err("exhausted");
        assert!(
            matches!(
                err,
                MediaError::PoolExhausted { .. } | MediaError::Bind { .. }
            ),
            "{err}"
        );
        held.clear();
        assert_eq!(pool.in_use(), 0);
        assert!(pool.allocate().is_ok());
    }

    #[test]
    fn skips_ports_held_by_others() {
        let pool = PortPool::new(LOOPBACK, 41_100, 41_103).expect("valid range");
        let squatter = UdpSocket::bind((LOOPBACK, 41_101));
        let port = pool.allocate().expect("the second pair is free");
        if squatter.is_ok() {
            assert_eq!(port.local_addr().port(), 41_102);
            drop(port);
            let err = pool.allocate();
            // Only 41100/41101 remains untried on this round, and 41101 is held.
            assert!(err.is_ok_and(|p| p.local_addr().port() == 41_102));
        }
    }
}
