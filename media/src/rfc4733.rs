//! RFC 4733 telephone-events: DTMF carried as RTP packets beside the audio.
//!
//! A phone sends one event as a series of packets that share the RTP timestamp of the event's
//! start, each carrying the duration so far; the last has the end bit set and is usually sent
//! three times. [`EventDetector`] turns such a series into one digit, however many packets
//! arrive, repeat or come late. [`events_for`] builds the series, for tests and simulated
//! phones.
//!
//! Sans-IO: packets in, digits out.

/// A telephone-event payload is exactly this long (RFC 4733 section 2.3).
pub const PAYLOAD_LEN: usize = 4;
/// Event starts remembered to recognise retransmissions and late packets of past events.
const RECENT_EVENTS_MAX: usize = 4;

/// The event codes 0-15 as characters (RFC 4733 section 3.2); 16 is flash.
const EVENT_CHARS: [char; 16] = [
    '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', '*', '#', 'A', 'B', 'C', 'D',
];

/// One telephone-event payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TelephoneEvent {
    /// The event code: 0-9, 10 `*`, 11 `#`, 12-15 A-D, 16 flash; others are not DTMF.
    pub event: u8,
    /// The end bit: this packet closes the event.
    pub end: bool,
    /// Power level in -dBm0 (0..=63).
    pub volume: u8,
    /// Duration so far, in RTP timestamp units.
    pub duration: u16,
}

/// Why a payload is not a telephone-event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("telephone-event payload of {len} bytes, expected at least {PAYLOAD_LEN}")]
    TooShort { len: usize },
}

impl TelephoneEvent {
    /// Parses the first event of a payload (redundant events after it are ignored).
    pub fn parse(payload: &[u8]) -> Result<TelephoneEvent, EventError> {
        let Some(bytes) = payload.get(..PAYLOAD_LEN) else {
            return Err(EventError::TooShort { len: payload.len() });
        };
        Ok(TelephoneEvent {
            event: bytes[0],
            end: bytes[1] & 0x80 != 0,
            volume: bytes[1] & 0x3F,
            duration: u16::from_be_bytes([bytes[2], bytes[3]]),
        })
    }

    /// The four payload bytes.
    pub fn encode(&self) -> [u8; PAYLOAD_LEN] {
        let duration = self.duration.to_be_bytes();
        [
            self.event,
            (u8::from(self.end) << 7) | (self.volume & 0x3F),
            duration[0],
            duration[1],
        ]
    }

    /// The DTMF key, if the event is one.
    pub fn digit(&self) -> Option<char> {
        EVENT_CHARS.get(usize::from(self.event)).copied()
    }
}

/// The event code of a DTMF key.
pub fn event_code(digit: char) -> Option<u8> {
    let digit = digit.to_ascii_uppercase();
    EVENT_CHARS
        .iter()
        .position(|c| *c == digit)
        .and_then(|i| u8::try_from(i).ok())
}

/// Turns telephone-event packets into digits, one per event.
///
/// An event is identified by its RTP timestamp (its start): the first packet seen of a new
/// event gives the digit at once (an IVR need not wait for the key's release), and every later
/// packet of it (updates, the repeated end packets, late arrivals) is ignored. A packet whose
/// timestamp is new but whose end bit is set still counts: the phone's earlier packets were lost.
#[derive(Clone, Debug, Default)]
pub struct EventDetector {
    recent: [Option<(u32, u8)>; RECENT_EVENTS_MAX],
    next: usize,
}

impl EventDetector {
    pub fn new() -> EventDetector {
        EventDetector::default()
    }

    /// Feeds one telephone-event packet: its RTP timestamp and payload. Returns the digit if
    /// this packet starts a DTMF event not seen before.
    pub fn push(&mut self, rtp_timestamp: u32, payload: &[u8]) -> Option<char> {
        let event = TelephoneEvent::parse(payload).ok()?;
        let key = (rtp_timestamp, event.event);
        if self.recent.contains(&Some(key)) {
            return None;
        }
        self.recent[self.next] = Some(key);
        self.next = (self.next + 1) % RECENT_EVENTS_MAX;
        event.digit()
    }
}

/// One packet of a generated event: the RTP marker, timestamp and payload to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventPacket {
    pub marker: bool,
    pub timestamp: u32,
    pub payload: [u8; PAYLOAD_LEN],
}

/// The packets a phone sends for `digit` pressed for `duration_ms`, starting at RTP timestamp
/// `timestamp`: one every `packet_ms` with the running duration (the first with the marker),
/// then the end packet three times. `None` for a character that is not a key.
pub fn events_for(
    digit: char,
    timestamp: u32,
    duration_ms: u32,
    packet_ms: u32,
    volume: u8,
) -> Option<Vec<EventPacket>> {
    let event = event_code(digit)?;
    let units_per_ms = crate::codec::CLOCK_RATE_HZ / 1000;
    let total = duration_ms
        .saturating_mul(units_per_ms)
        .min(u32::from(u16::MAX));
    let step = packet_ms.max(1).saturating_mul(units_per_ms);
    let mut packets = Vec::new();
    let mut elapsed = step.min(total);
    loop {
        let end = elapsed >= total;
        let payload = TelephoneEvent {
            event,
            end,
            volume,
            // `total` is capped at u16::MAX above.
            duration: u16::try_from(elapsed).unwrap_or(u16::MAX),
        }
        .encode();
        let copies = if end { 3 } else { 1 };
        for _ in 0..copies {
            packets.push(EventPacket {
                marker: packets.is_empty(),
                timestamp,
                payload,
            });
        }
        if end {
            return Some(packets);
        }
        elapsed = (elapsed + step).min(total);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_encode_round_trip() {
        let event = TelephoneEvent {
            event: 11,
            end: true,
            volume: 10,
            duration: 800,
        };
        let bytes = event.encode();
        assert_eq!(bytes, [11, 0x8A, 0x03, 0x20]);
        assert_eq!(TelephoneEvent::parse(&bytes), Ok(event));
        assert_eq!(event.digit(), Some('#'));
        assert_eq!(
            TelephoneEvent::parse(&[1, 2, 3]),
            Err(EventError::TooShort { len: 3 })
        );
    }

    #[test]
    fn codes_map_to_keys() {
        assert_eq!(event_code('0'), Some(0));
        assert_eq!(event_code('*'), Some(10));
        assert_eq!(event_code('d'), Some(15));
        assert_eq!(event_code('x'), None);
        let flash = TelephoneEvent {
            event: 16,
            end: false,
            volume: 0,
            duration: 0,
        };
        assert_eq!(flash.digit(), None);
    }

    #[test]
    fn one_digit_per_event_despite_updates_and_repeated_ends() {
        let mut detector = EventDetector::new();
        let packets = events_for('5', 16_000, 200, 50, 10).expect("a key");
        // Four updates (50..200 ms) with the last as the end, sent three times.
        assert_eq!(packets.len(), 3 + 3);
        assert!(packets[0].marker && !packets[1].marker);
        let digits: String = packets
            .iter()
            .filter_map(|p| detector.push(p.timestamp, &p.payload))
            .collect();
        assert_eq!(digits, "5");
    }

    #[test]
    fn the_same_key_again_is_a_new_event_by_its_timestamp() {
        let mut detector = EventDetector::new();
        let mut digits = String::new();
        for (i, digit) in "1123".chars().enumerate() {
            let start = 1000 + 8000 * i as u32;
            for p in events_for(digit, start, 100, 20, 10).expect("a key") {
                digits.extend(detector.push(p.timestamp, &p.payload));
            }
        }
        assert_eq!(digits, "1123");
    }

    #[test]
    fn lost_start_late_and_reordered_packets() {
        let mut detector = EventDetector::new();
        let a = events_for('7', 500, 100, 20, 10).expect("a key");
        let b = events_for('8', 2000, 100, 20, 10).expect("a key");
        // Only the end packets of 7 arrive; then 8 starts; then a late update of 7.
        let end_of_a = a.last().expect("has packets");
        assert_eq!(
            detector.push(end_of_a.timestamp, &end_of_a.payload),
            Some('7')
        );
        assert_eq!(detector.push(b[0].timestamp, &b[0].payload), Some('8'));
        assert_eq!(detector.push(a[1].timestamp, &a[1].payload), None);
        assert_eq!(detector.push(b[2].timestamp, &b[2].payload), None);
        // Garbage is ignored.
        assert_eq!(detector.push(9999, &[1]), None);
    }

    #[test]
    fn short_press_is_one_end_packet_thrice() {
        let packets = events_for('9', 0, 10, 50, 10).expect("a key");
        assert_eq!(packets.len(), 3);
        assert!(packets
            .iter()
            .all(|p| TelephoneEvent::parse(&p.payload).is_ok_and(|e| e.end && e.duration == 80)));
    }
}
