//! RTP for simulated phones: G.711 encoding, packet framing and a paced media loop.
//!
//! A phone sends one 20 ms frame (160 samples at 8 kHz) per tick from the same
//! socket it receives on, so a relay that latches onto the source address finds
//! it. Received packets are only counted; a phone never echoes what it hears.
//! Audio quality is not the point: the counts prove the relay carried packets.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

/// Samples per second for G.711.
pub const SAMPLE_RATE_HZ: u32 = 8_000;
/// One packet carries 20 ms of audio.
pub const PTIME_MS: u64 = 20;
/// 160 samples = 160 G.711 bytes per packet.
pub const SAMPLES_PER_PACKET: usize = (SAMPLE_RATE_HZ as usize) * (PTIME_MS as usize) / 1000;
/// Fixed RTP header without CSRCs or extensions.
pub const RTP_HEADER_LEN: usize = 12;
/// Largest datagram we read; anything longer is truncated and still counted.
const RECV_BUF_BYTES: usize = 2048;

/// The two G.711 codecs and their static RTP payload types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Pcmu,
    Pcma,
}

impl Codec {
    pub fn payload_type(self) -> u8 {
        match self {
            Codec::Pcmu => 0,
            Codec::Pcma => 8,
        }
    }

    pub fn from_payload_type(pt: u8) -> Option<Codec> {
        match pt {
            0 => Some(Codec::Pcmu),
            8 => Some(Codec::Pcma),
            _ => None,
        }
    }

    pub fn encoding_name(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
        }
    }

    pub fn encode(self, sample: i16) -> u8 {
        match self {
            Codec::Pcmu => linear_to_ulaw(sample),
            Codec::Pcma => linear_to_alaw(sample),
        }
    }
}

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
        let encoded = match audio {
            Audio::Silence => vec![codec.encode(0); n],
            Audio::Tone { hz } => (0..n)
                .map(|i| {
                    let t = i as f64 / f64::from(SAMPLE_RATE_HZ);
                    // About -10 dBFS: loud enough to see, far from clipping.
                    let v = (2.0 * std::f64::consts::PI * f64::from(hz) * t).sin() * 10_000.0;
                    codec.encode(v as i16)
                })
                .collect(),
        };
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

/// G.711 mu-law encoder (ITU-T G.711, as in the classic Sun reference).
pub fn linear_to_ulaw(sample: i16) -> u8 {
    const BIAS: i32 = 0x84;
    const CLIP: i32 = 32_635;
    let mut s = i32::from(sample);
    let sign = if s < 0 {
        s = -s;
        0x80
    } else {
        0
    };
    s = s.min(CLIP) + BIAS;
    // s is in 0x84..=0x7FFF, so its top bit sits between bit 7 and bit 14.
    let top_bit = 31 - s.leading_zeros() as i32;
    let exponent = (top_bit - 7).clamp(0, 7);
    let mantissa = (s >> (exponent + 3)) & 0x0F;
    !((sign | (exponent << 4) | mantissa) as u8)
}

/// G.711 mu-law decoder, the inverse of [`linear_to_ulaw`] up to quantisation.
pub fn ulaw_to_linear(code: u8) -> i16 {
    const BIAS: i32 = 0x84;
    let u = !code;
    let exponent = i32::from((u >> 4) & 0x07);
    let mantissa = i32::from(u & 0x0F);
    let magnitude = (((mantissa << 3) + BIAS) << exponent) - BIAS;
    // magnitude <= 32124, inside i16.
    if u & 0x80 != 0 {
        -magnitude as i16
    } else {
        magnitude as i16
    }
}

/// G.711 A-law encoder (13-bit magnitude, segment search, even-bit inversion).
pub fn linear_to_alaw(sample: i16) -> u8 {
    const SEG_END: [i32; 8] = [0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF];
    let mut pcm = i32::from(sample) >> 3;
    let mask: u8 = if pcm >= 0 {
        0xD5
    } else {
        pcm = -pcm - 1;
        0x55
    };
    let seg = SEG_END.iter().position(|&end| pcm <= end);
    let code = match seg {
        None => 0x7F,
        Some(seg) => {
            let shift = if seg < 2 { 1 } else { seg };
            ((seg as i32) << 4 | ((pcm >> shift) & 0x0F)) as u8
        }
    };
    code ^ mask
}

/// G.711 A-law decoder.
pub fn alaw_to_linear(code: u8) -> i16 {
    let a = code ^ 0x55;
    let mut t = i32::from(a & 0x0F) << 4;
    let seg = (a & 0x70) >> 4;
    match seg {
        0 => t += 8,
        1 => t += 0x108,
        _ => {
            t += 0x108;
            t <<= seg - 1;
        }
    }
    // t <= 0x7E00 + ..., inside i16.
    if a & 0x80 != 0 {
        t as i16
    } else {
        -t as i16
    }
}

/// The fields of a received RTP packet that the simulator looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpHeader {
    pub payload_type: u8,
    pub marker: bool,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    /// Offset of the payload inside the datagram.
    pub payload_offset: usize,
}

/// Why a datagram is not an RTP packet we accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RtpParseError {
    #[error("datagram of {0} bytes is shorter than an RTP header")]
    TooShort(usize),
    #[error("RTP version {0} is not 2")]
    BadVersion(u8),
    #[error("CSRC list or header extension runs past the end of the datagram")]
    Truncated,
}

/// Parses an RTP header; never panics on hostile input.
pub fn parse_rtp(buf: &[u8]) -> Result<RtpHeader, RtpParseError> {
    if buf.len() < RTP_HEADER_LEN {
        return Err(RtpParseError::TooShort(buf.len()));
    }
    let version = buf[0] >> 6;
    if version != 2 {
        return Err(RtpParseError::BadVersion(version));
    }
    let csrc_count = usize::from(buf[0] & 0x0F);
    let has_extension = buf[0] & 0x10 != 0;
    let mut offset = RTP_HEADER_LEN + 4 * csrc_count;
    if has_extension {
        let words = buf
            .get(offset + 2..offset + 4)
            .ok_or(RtpParseError::Truncated)?;
        offset += 4 + 4 * usize::from(u16::from_be_bytes([words[0], words[1]]));
    }
    if offset > buf.len() {
        return Err(RtpParseError::Truncated);
    }
    Ok(RtpHeader {
        payload_type: buf[1] & 0x7F,
        marker: buf[1] & 0x80 != 0,
        sequence: u16::from_be_bytes([buf[2], buf[3]]),
        timestamp: u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]),
        ssrc: u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]),
        payload_offset: offset,
    })
}

/// Writes a minimal RTP header (no CSRC, no extension) followed by `payload`.
pub fn write_rtp(
    out: &mut Vec<u8>,
    payload_type: u8,
    marker: bool,
    sequence: u16,
    timestamp: u32,
    ssrc: u32,
    payload: &[u8],
) {
    out.clear();
    out.push(0x80);
    out.push((payload_type & 0x7F) | if marker { 0x80 } else { 0 });
    out.extend_from_slice(&sequence.to_be_bytes());
    out.extend_from_slice(&timestamp.to_be_bytes());
    out.extend_from_slice(&ssrc.to_be_bytes());
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
        let mut out = Vec::with_capacity(RTP_HEADER_LEN + SAMPLES_PER_PACKET);
        let mut buf = vec![0u8; RECV_BUF_BYTES];
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = interval.tick() => {
                    write_rtp(&mut out, codec.payload_type(), totals.sent == 0, sequence, timestamp, ssrc, source.next_frame());
                    if self.socket.send_to(&out, remote).await.is_ok() {
                        totals.sent += 1;
                        shared.sent.fetch_add(1, Ordering::Relaxed);
                    }
                    sequence = sequence.wrapping_add(1);
                    timestamp = timestamp.wrapping_add(SAMPLES_PER_PACKET as u32);
                }
                r = self.socket.recv_from(&mut buf) => {
                    if let Ok((n, _from)) = r {
                        if parse_rtp(&buf[..n]).is_ok() {
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
    fn ulaw_round_trip_is_close() {
        assert_eq!(linear_to_ulaw(0), 0xFF);
        for s in (-32_000i32..32_000).step_by(97) {
            let s = s as i16;
            let back = ulaw_to_linear(linear_to_ulaw(s));
            let err = (i32::from(back) - i32::from(s)).abs();
            // mu-law steps grow with magnitude: at most 1/16 of the value plus the bias.
            assert!(err <= i32::from(s).abs() / 16 + 16, "{s} -> {back}");
        }
    }

    #[test]
    fn alaw_round_trip_is_close() {
        assert_eq!(linear_to_alaw(0), 0xD5);
        for s in (-32_000i32..32_000).step_by(97) {
            let s = s as i16;
            let back = alaw_to_linear(linear_to_alaw(s));
            let err = (i32::from(back) - i32::from(s)).abs();
            assert!(err <= i32::from(s).abs() / 16 + 16, "{s} -> {back}");
        }
    }

    #[test]
    fn extremes_do_not_overflow() {
        for s in [i16::MIN, i16::MIN + 1, -1, 1, i16::MAX] {
            let _ = ulaw_to_linear(linear_to_ulaw(s));
            let _ = alaw_to_linear(linear_to_alaw(s));
        }
    }

    #[test]
    fn rtp_write_then_parse() {
        let mut out = Vec::new();
        write_rtp(&mut out, 0, true, 65_535, 0xDEAD_BEEF, 42, &[0xFF; 160]);
        assert_eq!(out.len(), RTP_HEADER_LEN + 160);
        let h = parse_rtp(&out).expect("well-formed packet");
        assert_eq!(h.payload_type, 0);
        assert!(h.marker);
        assert_eq!(h.sequence, 65_535);
        assert_eq!(h.timestamp, 0xDEAD_BEEF);
        assert_eq!(h.ssrc, 42);
        assert_eq!(h.payload_offset, RTP_HEADER_LEN);
    }

    #[test]
    fn rtp_parse_rejects_garbage() {
        assert_eq!(parse_rtp(&[0x80; 5]), Err(RtpParseError::TooShort(5)));
        assert_eq!(parse_rtp(&[0x00; 12]), Err(RtpParseError::BadVersion(0)));
        // Claims 15 CSRCs in a 12-byte packet.
        assert_eq!(parse_rtp(&[0x8F; 12]), Err(RtpParseError::Truncated));
        // Extension flag with no room for the extension header.
        assert_eq!(parse_rtp(&[0x90; 12]), Err(RtpParseError::Truncated));
        let mut ext = vec![
            0x90, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xBE, 0xDE, 0xFF, 0xFF,
        ];
        assert_eq!(parse_rtp(&ext), Err(RtpParseError::Truncated));
        ext[14] = 0;
        ext[15] = 0;
        assert_eq!(parse_rtp(&ext).map(|h| h.payload_offset), Ok(16));
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
