//! G.711 (ITU-T G.711) mu-law and A-law: the codecs every SIP phone and trunk speaks.
//!
//! Both compand a 16-bit linear sample into 8 bits with eight logarithmic segments of sixteen
//! steps. The functions are branch-light and allocation-free so that prompt frames can be
//! encoded once and the relay never has to touch samples.

use std::fmt;

/// Samples per second of every codec here.
pub const CLOCK_RATE_HZ: u32 = 8000;

/// An audio codec we can send and receive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Codec {
    /// G.711 mu-law (North America, Japan), static payload type 0.
    Pcmu,
    /// G.711 A-law (rest of the world), static payload type 8.
    Pcma,
}

impl Codec {
    /// Every codec we support, in our order of preference.
    pub const ALL: [Codec; 2] = [Codec::Pcmu, Codec::Pcma];

    /// The static RTP payload type (RFC 3551).
    pub fn payload_type(self) -> u8 {
        match self {
            Codec::Pcmu => 0,
            Codec::Pcma => 8,
        }
    }

    /// The encoding name used in `a=rtpmap`.
    pub fn rtpmap_name(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
        }
    }

    /// The sampling clock rate, also the RTP timestamp rate.
    pub fn clock_rate_hz(self) -> u32 {
        CLOCK_RATE_HZ
    }

    /// The codec for a static payload type, if we support it.
    pub fn from_payload_type(pt: u8) -> Option<Codec> {
        match pt {
            0 => Some(Codec::Pcmu),
            8 => Some(Codec::Pcma),
            _ => None,
        }
    }

    /// The codec for an rtpmap encoding name (case-insensitive) at 8000 Hz.
    pub fn from_rtpmap(name: &str, clock_rate_hz: u32) -> Option<Codec> {
        if clock_rate_hz != CLOCK_RATE_HZ {
            return None;
        }
        Codec::ALL
            .into_iter()
            .find(|c| c.rtpmap_name().eq_ignore_ascii_case(name))
    }

    /// Encodes one linear sample.
    pub fn encode(self, sample: i16) -> u8 {
        match self {
            Codec::Pcmu => linear_to_ulaw(sample),
            Codec::Pcma => linear_to_alaw(sample),
        }
    }

    /// Decodes one companded byte.
    pub fn decode(self, byte: u8) -> i16 {
        match self {
            Codec::Pcmu => ulaw_to_linear(byte),
            Codec::Pcma => alaw_to_linear(byte),
        }
    }

    /// Encodes `pcm` into `out`, sample for byte, up to the shorter of the two.
    pub fn encode_into(self, pcm: &[i16], out: &mut [u8]) {
        for (o, s) in out.iter_mut().zip(pcm) {
            *o = self.encode(*s);
        }
    }

    /// Decodes `bytes` into `out`, byte for sample, up to the shorter of the two.
    pub fn decode_into(self, bytes: &[u8], out: &mut [i16]) {
        for (o, b) in out.iter_mut().zip(bytes) {
            *o = self.decode(*b);
        }
    }

    /// The byte that decodes to silence; used to pad a prompt's last frame.
    pub fn silence(self) -> u8 {
        self.encode(0)
    }
}

/// A byte-for-byte map from one G.711 law to the other through linear, so that the relay can
/// transcode a payload in place with one table look-up per sample.
pub fn transcode_table(from: Codec, to: Codec) -> [u8; 256] {
    let mut table = [0u8; 256];
    for (byte, out) in table.iter_mut().enumerate() {
        // `byte` indexes a 256-entry table, so it fits a u8.
        *out = to.encode(from.decode(byte as u8));
    }
    table
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.rtpmap_name())
    }
}

/// Added before mu-law segment search so that segment 0 starts at a power of two.
const ULAW_BIAS: i32 = 0x84;
/// Largest magnitude that still fits the top segment once the bias is added.
const ULAW_CLIP: i32 = 32635;

/// Linear 16-bit to mu-law.
pub fn linear_to_ulaw(sample: i16) -> u8 {
    let mut magnitude = i32::from(sample);
    let sign: u8 = if magnitude < 0 {
        magnitude = -magnitude;
        0x80
    } else {
        0
    };
    magnitude = magnitude.min(ULAW_CLIP) + ULAW_BIAS;
    // magnitude is in 132..=32767, so magnitude >> 7 is in 1..=255 and fits a u8 with its top
    // set bit giving the segment number 0..=7.
    let top = (magnitude >> 7) as u8;
    let segment = 7 - top.leading_zeros() as u8;
    let mantissa = ((magnitude >> (segment + 3)) & 0x0F) as u8;
    !(sign | (segment << 4) | mantissa)
}

/// Mu-law to linear 16-bit.
pub fn ulaw_to_linear(byte: u8) -> i16 {
    let u = !byte;
    let segment = (u >> 4) & 0x07;
    let mantissa = i32::from(u & 0x0F);
    let magnitude = (((mantissa << 3) + ULAW_BIAS) << segment) - ULAW_BIAS;
    // magnitude is at most ((15 << 3) + 132) << 7 - 132 = 32124, so it fits an i16.
    if u & 0x80 != 0 {
        -magnitude as i16
    } else {
        magnitude as i16
    }
}

/// Upper bounds of the A-law segments on the 13-bit magnitude.
const ALAW_SEGMENT_END: [i32; 8] = [0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF];

/// Linear 16-bit to A-law.
pub fn linear_to_alaw(sample: i16) -> u8 {
    // A-law works on 13 bits; even bits are inverted on the wire (the 0x55 mask).
    let mut pcm = i32::from(sample) >> 3;
    let mask: u8 = if pcm >= 0 {
        0xD5
    } else {
        pcm = -pcm - 1;
        0x55
    };
    let segment = ALAW_SEGMENT_END
        .iter()
        .position(|end| pcm <= *end)
        .unwrap_or(8);
    if segment >= 8 {
        return 0x7F ^ mask;
    }
    let shift = if segment < 2 { 1 } else { segment };
    let value = ((segment as i32) << 4) | ((pcm >> shift) & 0x0F);
    // value is at most (7 << 4) | 15 = 127.
    (value as u8) ^ mask
}

/// A-law to linear 16-bit.
pub fn alaw_to_linear(byte: u8) -> i16 {
    let a = byte ^ 0x55;
    let mut t = i32::from(a & 0x0F) << 4;
    let segment = (a & 0x70) >> 4;
    match segment {
        0 => t += 8,
        1 => t += 0x108,
        _ => {
            t += 0x108;
            t <<= segment - 1;
        }
    }
    // t is at most (0xF0 + 0x108) << 6 = 32256, so it fits an i16.
    if a & 0x80 != 0 {
        t as i16
    } else {
        -t as i16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulaw_known_values() {
        assert_eq!(linear_to_ulaw(0), 0xFF);
        assert_eq!(linear_to_ulaw(-1), 0x7F);
        assert_eq!(linear_to_ulaw(i16::MAX), 0x80);
        assert_eq!(linear_to_ulaw(i16::MIN), 0x00);
        assert_eq!(linear_to_ulaw(1000), 0xCE);
        assert_eq!(linear_to_ulaw(-1000), 0x4E);
        assert_eq!(ulaw_to_linear(0xFF), 0);
        assert_eq!(ulaw_to_linear(0x7F), 0);
        assert_eq!(ulaw_to_linear(0x80), 32124);
        assert_eq!(ulaw_to_linear(0x00), -32124);
        assert_eq!(ulaw_to_linear(0xCE), 988);
    }

    #[test]
    fn alaw_known_values() {
        assert_eq!(linear_to_alaw(0), 0xD5);
        assert_eq!(linear_to_alaw(-1), 0x55);
        assert_eq!(linear_to_alaw(i16::MAX), 0xAA);
        assert_eq!(linear_to_alaw(i16::MIN), 0x2A);
        assert_eq!(linear_to_alaw(1000), 0xFA);
        assert_eq!(alaw_to_linear(0xD5), 8);
        assert_eq!(alaw_to_linear(0x55), -8);
        assert_eq!(alaw_to_linear(0xAA), 32256);
        assert_eq!(alaw_to_linear(0x2A), -32256);
        assert_eq!(alaw_to_linear(0xFA), 1008);
    }

    #[test]
    fn every_code_round_trips() {
        for byte in 0..=255u8 {
            assert_eq!(
                linear_to_alaw(alaw_to_linear(byte)),
                byte,
                "A-law {byte:#04x}"
            );
            // mu-law has two codes for zero; 0x7F (negative zero) comes back as 0xFF.
            let expected = if byte == 0x7F { 0xFF } else { byte };
            assert_eq!(
                linear_to_ulaw(ulaw_to_linear(byte)),
                expected,
                "mu-law {byte:#04x}"
            );
        }
    }

    #[test]
    fn linear_round_trip_error_stays_within_one_step() {
        for codec in Codec::ALL {
            for sample in (i16::MIN..=i16::MAX).step_by(7) {
                let back = i32::from(codec.decode(codec.encode(sample)));
                let s = i32::from(sample);
                // Companding keeps the error relative: about half a segment step, and a
                // segment's step is at most 1/16 of the magnitude it covers.
                let step = (s.abs() / 16).max(16);
                assert!((back - s).abs() <= step, "{codec} {sample} -> {back}");
            }
        }
    }

    #[test]
    fn decode_is_monotonic_in_magnitude() {
        for codec in Codec::ALL {
            let mut values: Vec<i16> = (0..=255u8).map(|b| codec.decode(b)).collect();
            values.sort_unstable();
            values.dedup();
            assert!(
                values.len() >= 255,
                "{codec}: {} distinct levels",
                values.len()
            );
        }
    }

    #[test]
    fn transcode_tables_keep_the_level() {
        let ulaw_to_alaw = transcode_table(Codec::Pcmu, Codec::Pcma);
        let alaw_to_ulaw = transcode_table(Codec::Pcma, Codec::Pcmu);
        assert_eq!(ulaw_to_alaw[0xFF], 0xD5, "silence stays silence");
        // A-law has no exact zero: its smallest step (8) comes out as mu-law's smallest.
        assert_eq!(ulaw_to_linear(alaw_to_ulaw[0xD5]), 8);
        for byte in 0..=255u8 {
            let linear = i32::from(ulaw_to_linear(byte));
            let there = i32::from(alaw_to_linear(ulaw_to_alaw[usize::from(byte)]));
            assert!(
                (linear - there).abs() <= (linear.abs() / 16).max(16),
                "{byte:#04x}"
            );
            let back = i32::from(ulaw_to_linear(
                alaw_to_ulaw[usize::from(ulaw_to_alaw[usize::from(byte)])],
            ));
            assert!(
                (linear - back).abs() <= (linear.abs() / 8).max(32),
                "{byte:#04x}"
            );
        }
        assert_eq!(transcode_table(Codec::Pcma, Codec::Pcma)[0x12], 0x12);
    }

    #[test]
    fn payload_types_and_names() {
        assert_eq!(Codec::Pcmu.payload_type(), 0);
        assert_eq!(Codec::Pcma.payload_type(), 8);
        assert_eq!(Codec::from_rtpmap("pcma", 8000), Some(Codec::Pcma));
        assert_eq!(Codec::from_rtpmap("PCMU", 16000), None);
        assert_eq!(Codec::from_payload_type(8), Some(Codec::Pcma));
        assert_eq!(Codec::from_payload_type(18), None);
        assert_eq!(Codec::Pcmu.silence(), 0xFF);
        assert_eq!(Codec::Pcma.silence(), 0xD5);
    }
}
