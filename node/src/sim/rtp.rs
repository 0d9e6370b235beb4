//! RTP for simulated phones: audio frames, packet framing and a paced media loop.
//!
//! G.711 and the RTP header layout come from carillon-media; this module only
//! decides what a phone sends and when.
//!
//! A phone sends one 20 ms frame (160 samples at 8 kHz) per tick from the same
//! socket it receives on, so a relay that latches onto the source address finds
//! it. Received packets are only counted; a phone never echoes what it hears.
//! Audio quality is not the point: the counts prove the relay carried packets.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use carillon_media::codec::CLOCK_RATE_HZ;
use carillon_media::rtp::{RtpHeader, HEADER_LEN};
use carillon_media::Codec;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

/// Samples per second for G.711.
pub const SAMPLE_RATE_HZ: u32 = CLOCK_RATE_HZ;
/// One packet carries 20 ms of audio.
pub const PTIME_MS: u64 = 20;
/// 160 samples = 160 G.711 bytes per packet.
pub const SAMPLES_PER_PACKET: usize = (SAMPLE_RATE_HZ as usize) * (PTIME_MS as usize) / 1000;
/// Largest datagram we read; anything longer is truncated and still counted.
const RECV_BUF_BYTES: usize = 2048;

/// What a phone plays into the call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Audio {
    /// A steady sine tone at this frequency.
    Tone { hz: u32 },
    /// Digital silence (still sent, as a phone without VAD would).
    Silence,
}

/// One second of encoded audio, cut into 20 ms frames in a loop. A whole second
/// holds an integer number of cycles for any integer frequency, so the tone has
/// no click at the wrap.
#[derive(Debug, Clone)]
pub struct AudioSource {
    encoded: Vec<u8>,
    pos: usize,
}

impl AudioSource {
    pub fn new(audio: Audio, codec: Codec) -> Self {
        let n = SAMPLE_RATE_HZ as usize;
        let pcm: Vec<i16> = match audio {
            Audio::Silence => vec![0; n],
            Audio::Tone { hz } => (0..n)
                .map(|i| {
                    let t = i as f64 / f64::from(SAMPLE_RATE_HZ);
                    // About -10 dBFS: loud enough to see, far from clipping.
                    ((2.0 * std::f64::consts::PI * f64::from(hz) * t).sin() * 10_000.0) as i16
                })
                .collect(),
        };
        let mut encoded = vec![0u8; n];
        codec.encode_into(&pcm, &mut encoded);
        Self { encoded, pos: 0 }
    }

    /// The next 20 ms of encoded audio.
    pub fn next_frame(&mut self) -> &[u8] {
        if self.pos + SAMPLES_PER_PACKET > self.encoded.len() {
            self.pos = 0;
        }
        let start = self.pos;
        self.pos += SAMPLES_PER_PACKET;
        &self.encoded[start..start + SAMPLES_PER_PACKET]
    }
}

/// Writes a plain RTP header (no CSRC, extension or padding) followed by `payload`.
///
/// The header itself comes from carillon-media; this only frames it into a fresh datagram.
pub fn write_rtp(out: &mut Vec<u8>, header: &RtpHeader, payload: &[u8]) {
    out.clear();
    // Exactly HEADER_LEN bytes, which is all `write` needs to not panic.
    out.resize(HEADER_LEN, 0);
    header.write(out);
    out.extend_from_slice(payload);
}

/// Packet counters shared between a phone's calls and whoever watches them.
#[derive(Debug, Default)]
pub struct RtpCounters {
    pub sent: AtomicU64,
    pub received: AtomicU64,
}

/// Per-call packet totals returned when a media loop ends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MediaTotals {
    pub sent: u64,
    pub received: u64,
}

/// A bound RTP socket on loopback, ready to be described in SDP before media starts.
#[derive(Debug)]
pub struct RtpSocket {
    socket: UdpSocket,
    local: SocketAddr,
}

impl RtpSocket {
    /// Binds an OS-chosen port on 127.0.0.1.
    pub async fn bind_loopback() -> std::io::Result<Self> {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let local = socket.local_addr()?;
        Ok(Self { socket, local })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Sends 20 ms frames to `remote` and counts what arrives, until `cancel`.
    ///
    /// Only datagrams that parse as RTP count as received. Both directions run
    /// on this one task; a send error (e.g. ICMP port unreachable surfacing on
    /// loopback) is counted as not sent and the loop goes on.
    pub async fn run(
        self,
        remote: SocketAddr,
        codec: Codec,
        audio: Audio,
        ssrc: u32,
        shared: Arc<RtpCounters>,
        cancel: CancellationToken,
    ) -> MediaTotals {
        let mut source = AudioSource::new(audio, codec);
        let mut interval = tokio::time::interval(Duration::from_millis(PTIME_MS));
        // A late tick sends one packet, not a burst: a real phone does not catch up.
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut totals = MediaTotals::default();
        let mut sequence: u16 = (ssrc >> 16) as u16;
        let mut timestamp: u32 = ssrc.rotate_left(7);
        let mut out = Vec::with_capacity(HEADER_LEN + SAMPLES_PER_PACKET);
        let mut buf = vec![0u8; RECV_BUF_BYTES];
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = interval.tick() => {
                    let header = RtpHeader {
                        marker: totals.sent == 0,
                        payload_type: codec.payload_type(),
                        sequence,
                        timestamp,
                        ssrc,
                    };
                    write_rtp(&mut out, &header, source.next_frame());
                    if self.socket.send_to(&out, remote).await.is_ok() {
                        totals.sent += 1;
                        shared.sent.fetch_add(1, Ordering::Relaxed);
                    }
                    sequence = sequence.wrapping_add(1);
                    timestamp = timestamp.wrapping_add(SAMPLES_PER_PACKET as u32);
                }
                r = self.socket.recv_from(&mut buf) => {
                    if let Ok((n, _from)) = r {
                        if RtpHeader::parse(&buf[..n]).is_some() {
                            totals.received += 1;
                            shared.received.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }
        totals
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_packet_parses_with_payload_after_header() {
        let header = RtpHeader {
            marker: true,
            payload_type: Codec::Pcmu.payload_type(),
            sequence: 65_535,
            timestamp: 0xDEAD_BEEF,
            ssrc: 42,
        };
        let mut out = vec![0xAA; 3];
        write_rtp(&mut out, &header, &[0xFF; SAMPLES_PER_PACKET]);
        assert_eq!(out.len(), HEADER_LEN + SAMPLES_PER_PACKET);
        assert_eq!(RtpHeader::parse(&out), Some(header));
        assert!(out[HEADER_LEN..].iter().all(|&b| b == 0xFF));
    }

    #[test]
    fn audio_frames_wrap_around() {
        let mut src = AudioSource::new(Audio::Tone { hz: 440 }, Codec::Pcmu);
        let first = src.next_frame().to_vec();
        for _ in 0..49 {
            assert_eq!(src.next_frame().len(), SAMPLES_PER_PACKET);
        }
        assert_eq!(src.next_frame(), &first[..]);
        let mut silent = AudioSource::new(Audio::Silence, Codec::Pcma);
        assert!(silent.next_frame().iter().all(|&b| b == 0xD5));
    }

    #[tokio::test]
    async fn two_sockets_exchange_packets() {
        let a = RtpSocket::bind_loopback().await.expect("bind a");
        let b = RtpSocket::bind_loopback().await.expect("bind b");
        let (a_addr, b_addr) = (a.local_addr(), b.local_addr());
        let counters = Arc::new(RtpCounters::default());
        let cancel = CancellationToken::new();
        let ta = tokio::spawn(a.run(
            b_addr,
            Codec::Pcmu,
            Audio::Tone { hz: 440 },
            1,
            counters.clone(),
            cancel.clone(),
        ));
        let tb = tokio::spawn(b.run(
            a_addr,
            Codec::Pcmu,
            Audio::Silence,
            2,
            counters.clone(),
            cancel.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(300)).await;
        cancel.cancel();
        let (ta, tb) = (ta.await.expect("task a"), tb.await.expect("task b"));
        assert!(ta.sent >= 5 && tb.sent >= 5, "{ta:?} {tb:?}");
        assert!(ta.received >= 3 && tb.received >= 3, "{ta:?} {tb:?}");
        assert_eq!(counters.sent.load(Ordering::Relaxed), ta.sent + tb.sent);
    }
}
