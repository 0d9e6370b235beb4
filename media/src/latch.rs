//! Symmetric latching (comedia): where to send a leg's media.
//!
//! Phones behind NAT, and some that simply bind another interface, send RTP from an address
//! other than the one in their SDP. The node sends to the SDP address until the leg's first
//! valid RTP arrives, then to wherever that packet came from. While the latched source keeps
//! talking, packets from any other source are dropped (so a stranger cannot hijack the stream);
//! once it has been silent for [`RELATCH_SILENCE_MS`], the next source to send takes over
//! (the phone moved, or its NAT binding changed).
//!
//! Sans-IO: [`Latch::accept`] takes the packet's source and `now`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long a latched source must be silent before another may take its place.
pub const RELATCH_SILENCE_MS: u64 = 2000;

/// The send target of one leg.
#[derive(Debug, Clone)]
pub struct Latch {
    signalled: Option<SocketAddr>,
    latched: Option<SocketAddr>,
    last_heard: Option<Instant>,
    relatch_silence: Duration,
}

impl Latch {
    /// A latch that sends to `signalled` (the SDP address) until media arrives. An unspecified
    /// address (`0.0.0.0`, the old way to put a call on hold) counts as none.
    pub fn new(signalled: Option<SocketAddr>) -> Latch {
        Latch {
            signalled: signalled.filter(|a| !a.ip().is_unspecified() && a.port() != 0),
            latched: None,
            last_heard: None,
            relatch_silence: Duration::from_millis(RELATCH_SILENCE_MS),
        }
    }

    /// Records a valid RTP packet from `source` at `now`. Returns whether it is from the leg's
    /// (possibly newly) latched source; the caller drops the packet if not.
    pub fn accept(&mut self, source: SocketAddr, now: Instant) -> bool {
        let take = match (self.latched, self.last_heard) {
            (Some(latched), _) if latched == source => true,
            (Some(_), Some(heard)) => now.saturating_duration_since(heard) >= self.relatch_silence,
            _ => true,
        };
        if take {
            if self.latched != Some(source) {
                tracing::debug!(%source, previous = ?self.latched, "RTP latched");
            }
            self.latched = Some(source);
            self.last_heard = Some(now);
        }
        take
    }

    /// Where to send: the latched source, else the signalled address, else nowhere yet.
    pub fn target(&self) -> Option<SocketAddr> {
        self.latched.or(self.signalled)
    }

    /// The latched source, if any packet has arrived.
    pub fn latched(&self) -> Option<SocketAddr> {
        self.latched
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::disallowed_methods)] // tests need one real base instant; all else is offsets
    fn t0() -> Instant {
        Instant::now()
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("test addresses are valid")
    }

    #[test]
    fn sends_to_sdp_until_media_arrives_then_to_source() {
        let base = t0();
        let mut latch = Latch::new(Some(addr("192.0.2.1:4000")));
        assert_eq!(latch.target(), Some(addr("192.0.2.1:4000")));
        assert!(latch.accept(addr("198.51.100.7:31000"), base));
        assert_eq!(latch.target(), Some(addr("198.51.100.7:31000")));
    }

    #[test]
    fn strangers_are_dropped_while_latched_source_talks() {
        let base = t0();
        let mut latch = Latch::new(None);
        assert_eq!(latch.target(), None);
        assert!(latch.accept(addr("10.0.0.1:5000"), base));
        let later = base + Duration::from_millis(1500);
        assert!(latch.accept(addr("10.0.0.1:5000"), later));
        assert!(!latch.accept(addr("10.0.0.9:5000"), later + Duration::from_millis(1999)));
        assert_eq!(latch.target(), Some(addr("10.0.0.1:5000")));
    }

    #[test]
    fn relatches_after_two_seconds_of_silence() {
        let base = t0();
        let mut latch = Latch::new(None);
        assert!(latch.accept(addr("10.0.0.1:5000"), base));
        let later = base + Duration::from_millis(RELATCH_SILENCE_MS);
        assert!(latch.accept(addr("10.0.0.2:6000"), later));
        assert_eq!(latch.latched(), Some(addr("10.0.0.2:6000")));
        assert!(!latch.accept(addr("10.0.0.1:5000"), later + Duration::from_millis(10)));
    }

    #[test]
    fn unspecified_sdp_address_is_no_target() {
        assert_eq!(Latch::new(Some(addr("0.0.0.0:4000"))).target(), None);
        assert_eq!(Latch::new(Some(addr("[::]:4000"))).target(), None);
    }
}
