//! One continuous outgoing RTP stream, whatever feeds it.
//!
//! A phone on the far side of the node must see a single SSRC with sequence numbers and
//! timestamps that keep going when the node switches what it sends (hold music, then the agent's
//! relayed audio, then music again) or when the sending phone restarts its stream. A
//! [`StreamRewriter`] maps each input source onto the output stream with a sequence and a
//! timestamp offset, chosen at the switch so that the output continues from where it was:
//! sequence + 1, and the timestamp advanced by the wall-clock time since the last packet.
//!
//! Within one source, packets are forwarded at once with the same offsets: loss and reordering
//! in the input pass through as loss and reordering in the output and never hold anything back.
//!
//! Sans-IO: the caller hands in packets and `now`; nothing here reads a clock or a socket.
//! Call order: [`StreamRewriter::new`] once per outgoing stream, then
//! [`StreamRewriter::rewrite`] for each packet about to be sent, in send order.

use std::time::{Duration, Instant};

use crate::codec::CLOCK_RATE_HZ;
use crate::rtp::{self, RtpHeader};

/// A sequence jump larger than this within one SSRC is treated as a restarted source rather
/// than loss or reordering (RFC 3550 appendix A.1 uses the same bound).
pub const SEQUENCE_DROPOUT_MAX: u16 = 3000;

/// The output side of one direction of a call.
#[derive(Debug)]
pub struct StreamRewriter {
    out_ssrc: u32,
    source: Option<SourceMapping>,
    /// The newest packet sent so far, from which a switch continues.
    last: Option<LastSent>,
}

#[derive(Debug, Clone, Copy)]
struct SourceMapping {
    in_ssrc: u32,
    sequence_offset: u16,
    timestamp_offset: u32,
    highest_in_sequence: u16,
}

#[derive(Debug, Clone, Copy)]
struct LastSent {
    sequence: u16,
    timestamp: u32,
    at: Instant,
}

impl StreamRewriter {
    /// A stream that will carry `out_ssrc`; the caller chooses it (randomness is an input).
    pub fn new(out_ssrc: u32) -> StreamRewriter {
        StreamRewriter {
            out_ssrc,
            source: None,
            last: None,
        }
    }

    /// The SSRC the far side sees.
    pub fn out_ssrc(&self) -> u32 {
        self.out_ssrc
    }

    /// Rewrites `packet` in place into the output stream. Returns `false`, leaving the packet
    /// untouched, if it is not valid RTP (the caller drops it).
    pub fn rewrite(&mut self, packet: &mut [u8], now: Instant) -> bool {
        let Some(header) = RtpHeader::parse(packet) else {
            return false;
        };
        let mut marker = header.marker;
        let mapping = match self.source {
            Some(m)
                if m.in_ssrc == header.ssrc
                    && !is_dropout(m.highest_in_sequence, header.sequence) =>
            {
                m
            }
            _ => {
                // A new source: continue the output from the newest packet sent, and mark the
                // discontinuity so the far jitter buffer resynchronises at once.
                marker = true;
                self.start_source(&header, now)
            }
        };
        let sequence = header.sequence.wrapping_add(mapping.sequence_offset);
        let timestamp = header.timestamp.wrapping_add(mapping.timestamp_offset);
        let newest = self
            .last
            .is_none_or(|last| is_newer(sequence, last.sequence));
        if newest {
            self.last = Some(LastSent {
                sequence,
                timestamp,
                at: now,
            });
            if let Some(source) = self.source.as_mut() {
                source.highest_in_sequence = header.sequence;
            }
        }
        rtp::set_stream_fields(packet, marker, sequence, timestamp, self.out_ssrc);
        true
    }

    fn start_source(&mut self, header: &RtpHeader, now: Instant) -> SourceMapping {
        let (next_sequence, next_timestamp) = match self.last {
            None => (header.sequence, header.timestamp),
            Some(last) => (
                last.sequence.wrapping_add(1),
                last.timestamp
                    .wrapping_add(samples_between(last.at, now).max(1)),
            ),
        };
        let mapping = SourceMapping {
            in_ssrc: header.ssrc,
            sequence_offset: next_sequence.wrapping_sub(header.sequence),
            timestamp_offset: next_timestamp.wrapping_sub(header.timestamp),
            highest_in_sequence: header.sequence,
        };
        self.source = Some(mapping);
        mapping
    }
}

/// RTP timestamp units (8 kHz samples) elapsed between two instants, wrapping like RTP does.
fn samples_between(earlier: Instant, later: Instant) -> u32 {
    let elapsed = later.saturating_duration_since(earlier);
    let samples =
        elapsed.as_micros() * u128::from(CLOCK_RATE_HZ) / Duration::from_secs(1).as_micros();
    // Truncation is the RTP wrap-around itself.
    samples as u32
}

/// Serial-number comparison (RFC 1982) on 16-bit sequence numbers.
fn is_newer(candidate: u16, reference: u16) -> bool {
    let delta = candidate.wrapping_sub(reference);
    delta != 0 && delta < 0x8000
}

fn is_dropout(highest: u16, sequence: u16) -> bool {
    let ahead = sequence.wrapping_sub(highest);
    let behind = highest.wrapping_sub(sequence);
    ahead.min(behind) > SEQUENCE_DROPOUT_MAX
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::disallowed_methods)] // tests need one real base instant; all else is offsets
    fn t0() -> Instant {
        Instant::now()
    }

    fn packet(ssrc: u32, sequence: u16, timestamp: u32) -> [u8; 20] {
        let mut buf = [0u8; 20];
        RtpHeader {
            marker: false,
            payload_type: 0,
            sequence,
            timestamp,
            ssrc,
        }
        .write(&mut buf);
        buf
    }

    fn out(rw: &mut StreamRewriter, ssrc: u32, seq: u16, ts: u32, now: Instant) -> RtpHeader {
        let mut p = packet(ssrc, seq, ts);
        assert!(rw.rewrite(&mut p, now));
        RtpHeader::parse(&p).expect("rewritten packet stays valid")
    }

    #[test]
    fn first_source_passes_through_with_new_ssrc() {
        let base = t0();
        let mut rw = StreamRewriter::new(77);
        let h = out(&mut rw, 1, 100, 1000, base);
        assert_eq!(
            (h.ssrc, h.sequence, h.timestamp, h.marker),
            (77, 100, 1000, true)
        );
        let h = out(&mut rw, 1, 101, 1160, base + Duration::from_millis(20));
        assert_eq!(
            (h.ssrc, h.sequence, h.timestamp, h.marker),
            (77, 101, 1160, false)
        );
    }

    #[test]
    fn switch_continues_sequence_and_timestamp() {
        let base = t0();
        let mut rw = StreamRewriter::new(9);
        for i in 0..5u16 {
            out(
                &mut rw,
                1,
                10 + i,
                160 * u32::from(i),
                base + Duration::from_millis(20 * u64::from(i)),
            );
        }
        // Last out: seq 14, ts 640 at 80 ms. New source 60 ms later with wild values.
        let h = out(
            &mut rw,
            2,
            50_000,
            3_000_000_000,
            base + Duration::from_millis(140),
        );
        assert_eq!(
            (h.ssrc, h.sequence, h.timestamp, h.marker),
            (9, 15, 640 + 480, true)
        );
        let h = out(
            &mut rw,
            2,
            50_001,
            3_000_000_160,
            base + Duration::from_millis(160),
        );
        assert_eq!((h.sequence, h.timestamp, h.marker), (16, 1280, false));
        // And back to the first source: still continuous.
        let h = out(&mut rw, 1, 15, 800, base + Duration::from_millis(180));
        assert_eq!((h.sequence, h.timestamp), (17, 1280 + 160));
    }

    #[test]
    fn loss_and_reordering_forward_without_stalling() {
        let base = t0();
        let mut rw = StreamRewriter::new(5);
        let at = |ms: u64| base + Duration::from_millis(ms);
        assert_eq!(out(&mut rw, 1, 1, 0, at(0)).sequence, 1);
        assert_eq!(out(&mut rw, 1, 4, 480, at(60)).sequence, 4); // 2 and 3 lost
        assert_eq!(out(&mut rw, 1, 3, 320, at(61)).sequence, 3); // 3 late: forwarded
        assert_eq!(out(&mut rw, 1, 5, 640, at(80)).sequence, 5);
        // The late packet did not move the continuation point backwards.
        let h = out(&mut rw, 2, 900, 0, at(100));
        assert_eq!((h.sequence, h.timestamp), (6, 640 + 160));
    }

    #[test]
    fn sequence_wraps_and_big_jumps_resync() {
        let base = t0();
        let mut rw = StreamRewriter::new(5);
        out(&mut rw, 1, 65_535, 0, base);
        let h = out(&mut rw, 1, 0, 160, base + Duration::from_millis(20));
        assert_eq!((h.sequence, h.marker), (0, false));
        // Same SSRC restarting far away in sequence space is a new source.
        let h = out(&mut rw, 1, 30_000, 99, base + Duration::from_millis(40));
        assert_eq!((h.sequence, h.timestamp, h.marker), (1, 320, true));
    }

    #[test]
    fn simultaneous_switch_still_advances_timestamp() {
        let base = t0();
        let mut rw = StreamRewriter::new(5);
        out(&mut rw, 1, 1, 100, base);
        let h = out(&mut rw, 2, 7, 7, base);
        assert_eq!((h.sequence, h.timestamp), (2, 101));
    }

    #[test]
    fn rejects_non_rtp() {
        let mut rw = StreamRewriter::new(5);
        let mut junk = [0u8; 20];
        assert!(!rw.rewrite(&mut junk, t0()));
        assert_eq!(junk, [0u8; 20]);
    }
}
