//! RTP fixed header (RFC 3550 section 5.1): validation and in-place field access.
//!
//! The relay rewrites SSRC, sequence number and timestamp in the receive buffer itself, so these
//! helpers read and write fields of a byte slice rather than building packets.

/// Length of the fixed header without CSRCs or extension.
pub const HEADER_LEN: usize = 12;
/// Largest RTP packet we receive; anything bigger is truncated by the socket and dropped.
pub const PACKET_BYTES_MAX: usize = 1500;

/// The fields of a fixed RTP header the relay cares about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtpHeader {
    pub marker: bool,
    pub payload_type: u8,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
}

impl RtpHeader {
    /// Parses and validates an RTP packet: version 2, and the CSRC list, header extension and
    /// padding all fit in `packet`. Returns `None` for anything else (hostile input is dropped,
    /// never trusted).
    pub fn parse(packet: &[u8]) -> Option<RtpHeader> {
        payload_range(packet).map(|_| RtpHeader::read_fixed(packet))
    }

    /// The fixed header fields of a packet already checked by [`payload_range`].
    fn read_fixed(packet: &[u8]) -> RtpHeader {
        RtpHeader {
            marker: packet[1] & 0x80 != 0,
            payload_type: packet[1] & 0x7F,
            sequence: u16::from_be_bytes([packet[2], packet[3]]),
            timestamp: u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]),
            ssrc: u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]),
        }
    }

    /// As [`RtpHeader::parse`], also giving where the payload lies in `packet` (after CSRCs and
    /// extension, before padding).
    pub fn parse_with_payload(packet: &[u8]) -> Option<(RtpHeader, std::ops::Range<usize>)> {
        payload_range(packet).map(|range| (RtpHeader::read_fixed(packet), range))
    }

    /// Writes this header as a plain fixed header (no CSRC, extension or padding) into the
    /// first [`HEADER_LEN`] bytes of `buf`.
    ///
    /// # Panics
    /// If `buf` is shorter than [`HEADER_LEN`]; callers pass their own preallocated buffers.
    pub fn write(&self, buf: &mut [u8]) {
        buf[0] = 0x80;
        buf[1] = (u8::from(self.marker) << 7) | (self.payload_type & 0x7F);
        buf[2..4].copy_from_slice(&self.sequence.to_be_bytes());
        buf[4..8].copy_from_slice(&self.timestamp.to_be_bytes());
        buf[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
    }
}

/// Validates an RTP packet (version 2; CSRC list, header extension and padding all fit) and
/// returns the byte range of its payload.
pub fn payload_range(packet: &[u8]) -> Option<std::ops::Range<usize>> {
    if packet.len() < HEADER_LEN || packet[0] >> 6 != 2 {
        return None;
    }
    let csrc_count = usize::from(packet[0] & 0x0F);
    let mut header_len = HEADER_LEN + 4 * csrc_count;
    if packet.len() < header_len {
        return None;
    }
    if packet[0] & 0x10 != 0 {
        let ext = packet.get(header_len..header_len + 4)?;
        header_len += 4 + 4 * usize::from(u16::from_be_bytes([ext[2], ext[3]]));
        if packet.len() < header_len {
            return None;
        }
    }
    let mut padding = 0;
    if packet[0] & 0x20 != 0 {
        // The last byte counts the padding, itself included.
        padding = usize::from(packet[packet.len() - 1]);
        if padding == 0 || header_len + padding > packet.len() {
            return None;
        }
    }
    Some(header_len..packet.len() - padding)
}

/// Overwrites marker, sequence, timestamp and SSRC of a packet already validated by
/// [`RtpHeader::parse`], leaving everything else untouched.
pub(crate) fn set_stream_fields(
    packet: &mut [u8],
    marker: bool,
    sequence: u16,
    timestamp: u32,
    ssrc: u32,
) {
    packet[1] = (packet[1] & 0x7F) | (u8::from(marker) << 7);
    packet[2..4].copy_from_slice(&sequence.to_be_bytes());
    packet[4..8].copy_from_slice(&timestamp.to_be_bytes());
    packet[8..12].copy_from_slice(&ssrc.to_be_bytes());
}

/// True for something that looks like RTCP (RFC 3550 section 6.4): version 2 and at least the
/// common header. RTCP is relayed untouched, so this is only a sanity filter.
pub fn looks_like_rtcp(packet: &[u8]) -> bool {
    packet.len() >= 8 && packet[0] >> 6 == 2 && (192..=223).contains(&packet[1])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> RtpHeader {
        RtpHeader {
            marker: true,
            payload_type: 8,
            sequence: 0xBEEF,
            timestamp: 0xDEAD_BEEF,
            ssrc: 0x1234_5678,
        }
    }

    #[test]
    fn write_then_parse() {
        let mut buf = [0u8; 20];
        header().write(&mut buf);
        assert_eq!(RtpHeader::parse(&buf), Some(header()));
    }

    #[test]
    fn rejects_short_wrong_version_and_overlong_fields() {
        let mut buf = [0u8; 20];
        header().write(&mut buf);
        assert_eq!(RtpHeader::parse(&buf[..11]), None);
        let mut v1 = buf;
        v1[0] = 0x40;
        assert_eq!(RtpHeader::parse(&v1), None);
        let mut csrc = buf;
        csrc[0] |= 0x03; // three CSRCs need 24 bytes
        assert_eq!(RtpHeader::parse(&csrc), None);
        let mut ext = buf;
        ext[0] |= 0x10;
        ext[14..16].copy_from_slice(&10u16.to_be_bytes()); // 40 extension bytes
        assert_eq!(RtpHeader::parse(&ext), None);
        let mut pad = buf;
        pad[0] |= 0x20;
        pad[19] = 30;
        assert_eq!(RtpHeader::parse(&pad), None);
        pad[19] = 8;
        assert!(RtpHeader::parse(&pad).is_some());
    }

    #[test]
    fn set_stream_fields_keeps_payload_type() {
        let mut buf = [0u8; 20];
        header().write(&mut buf);
        set_stream_fields(&mut buf, false, 7, 9, 11);
        let h = RtpHeader::parse(&buf).expect("still valid RTP after rewriting");
        assert_eq!(
            (h.marker, h.payload_type, h.sequence, h.timestamp, h.ssrc),
            (false, 8, 7, 9, 11)
        );
    }

    #[test]
    fn payload_range_skips_csrcs_extension_and_padding() {
        let mut buf = [0u8; 40];
        header().write(&mut buf);
        assert_eq!(payload_range(&buf), Some(12..40));
        buf[0] |= 0x01 | 0x10 | 0x20; // one CSRC, an extension, padding
        buf[18..20].copy_from_slice(&1u16.to_be_bytes()); // one extension word
        buf[39] = 4;
        assert_eq!(payload_range(&buf), Some(24..36));
        let (h, range) = RtpHeader::parse_with_payload(&buf).expect("valid");
        assert_eq!((h.sequence, range), (0xBEEF, 24..36));
    }

    #[test]
    fn rtcp_filter() {
        assert!(looks_like_rtcp(&[0x80, 200, 0, 6, 1, 2, 3, 4]));
        assert!(!looks_like_rtcp(&[0x80, 0, 0, 6, 1, 2, 3, 4]));
        assert!(!looks_like_rtcp(&[0x80, 200, 0]));
    }
}
