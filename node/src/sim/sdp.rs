//! Just enough SDP for a G.711 phone: write an offer or answer, read the peer's
//! audio address and payload types.
//!
//! The body comes off the network, so parsing returns errors and never panics;
//! anything beyond `c=`, `m=audio` and `a=rtpmap` is ignored.
//!
//! Not shared with the node's SDP code: a test peer sharing it could hide a bug common to both.

use std::net::{IpAddr, SocketAddr};

use carillon_media::Codec;

/// The remote end of an audio stream as described by SDP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioDescription {
    pub addr: SocketAddr,
    /// Payload types in the peer's order of preference.
    pub payload_types: Vec<u8>,
}

impl AudioDescription {
    /// The first G.711 codec the peer listed, the one an answerer should pick.
    pub fn preferred_g711(&self) -> Option<Codec> {
        self.payload_types
            .iter()
            .find_map(|&pt| Codec::from_payload_type(pt))
    }
}

/// Why an SDP body was unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    #[error("SDP body is not UTF-8")]
    NotUtf8,
    #[error("SDP has no m=audio line")]
    NoAudio,
    #[error("SDP has no usable c= address for audio")]
    NoAddress,
    #[error("SDP line is malformed: {0}")]
    Malformed(String),
}

/// An offer listing `codecs` in preference order, media on `local`.
pub fn offer(local: SocketAddr, session_id: u64, codecs: &[Codec]) -> String {
    describe(local, session_id, codecs)
}

/// An answer that accepts exactly `codec`, media on `local`.
pub fn answer(local: SocketAddr, session_id: u64, codec: Codec) -> String {
    describe(local, session_id, &[codec])
}

fn describe(local: SocketAddr, session_id: u64, codecs: &[Codec]) -> String {
    let family = if local.is_ipv4() { "IP4" } else { "IP6" };
    let ip = local.ip();
    let pts: Vec<String> = codecs
        .iter()
        .map(|c| c.payload_type().to_string())
        .collect();
    let mut s = format!(
        "v=0\r\no=carillon-sim {session_id} {session_id} IN {family} {ip}\r\ns=carillon-sim\r\n\
         c=IN {family} {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP {pts}\r\n",
        port = local.port(),
        pts = pts.join(" "),
    );
    for c in codecs {
        s.push_str(&format!(
            "a=rtpmap:{} {}/8000\r\n",
            c.payload_type(),
            c.rtpmap_name()
        ));
    }
    s.push_str("a=ptime:20\r\na=sendrecv\r\n");
    s
}

/// Reads the first audio stream: its address (media-level `c=` wins over
/// session-level) and payload types.
pub fn parse(body: &[u8]) -> Result<AudioDescription, SdpError> {
    let text = std::str::from_utf8(body).map_err(|_| SdpError::NotUtf8)?;
    #[derive(PartialEq)]
    enum Section {
        Session,
        Audio,
        Other,
    }
    let mut section = Section::Session;
    let mut session_ip: Option<IpAddr> = None;
    let mut media_ip: Option<IpAddr> = None;
    let mut audio: Option<(u16, Vec<u8>)> = None;
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(rest) = line.strip_prefix("m=") {
            if audio.is_some() {
                // Only the first audio stream matters; stop at the next m= line.
                break;
            }
            let mut parts = rest.split_whitespace();
            if parts.next() != Some("audio") {
                section = Section::Other;
                continue;
            }
            section = Section::Audio;
            let port = parts
                .next()
                .and_then(|p| p.split('/').next())
                .and_then(|p| p.parse::<u16>().ok())
                .ok_or_else(|| SdpError::Malformed(line.to_string()))?;
            let _proto = parts.next();
            let pts = parts.filter_map(|p| p.parse::<u8>().ok()).collect();
            audio = Some((port, pts));
        } else if let Some(rest) = line.strip_prefix("c=") {
            if section == Section::Other {
                continue;
            }
            let ip = parse_connection(rest).ok_or_else(|| SdpError::Malformed(line.to_string()))?;
            match section {
                Section::Session => session_ip = Some(ip),
                _ => media_ip = Some(ip),
            }
        }
    }
    let (port, payload_types) = audio.ok_or(SdpError::NoAudio)?;
    let ip = media_ip.or(session_ip).ok_or(SdpError::NoAddress)?;
    Ok(AudioDescription {
        addr: SocketAddr::new(ip, port),
        payload_types,
    })
}

/// `IN IP4 127.0.0.1` (a TTL or count suffix `/n` is dropped).
fn parse_connection(rest: &str) -> Option<IpAddr> {
    let mut parts = rest.split_whitespace();
    if parts.next()? != "IN" {
        return None;
    }
    let _family = parts.next()?;
    parts.next()?.split('/').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offer_round_trips() {
        let local: SocketAddr = "127.0.0.1:40000".parse().expect("literal address");
        let body = offer(local, 7, &[Codec::Pcmu, Codec::Pcma]);
        let d = parse(body.as_bytes()).expect("our own offer parses");
        assert_eq!(d.addr, local);
        assert_eq!(d.payload_types, vec![0, 8]);
        assert_eq!(d.preferred_g711(), Some(Codec::Pcmu));
        let a = parse(answer(local, 7, Codec::Pcma).as_bytes()).expect("answer parses");
        assert_eq!(a.preferred_g711(), Some(Codec::Pcma));
    }

    #[test]
    fn media_level_connection_wins() {
        let body =
            "v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 5004 RTP/AVP 101 8\r\nc=IN IP4 127.0.0.2\r\n\
                    m=audio 6000 RTP/AVP 0\r\nc=IN IP4 127.0.0.3\r\n";
        let d = parse(body.as_bytes()).expect("valid sdp");
        assert_eq!(d.addr, "127.0.0.2:5004".parse().expect("literal address"));
        assert_eq!(d.preferred_g711(), Some(Codec::Pcma));
    }

    #[test]
    fn session_level_connection_is_the_fallback() {
        let body = "v=0\nc=IN IP4 127.0.0.9/127\nm=video 1 RTP/AVP 96\nm=audio 7000/2 RTP/AVP 0\n";
        let d = parse(body.as_bytes()).expect("valid sdp");
        assert_eq!(d.addr, "127.0.0.9:7000".parse().expect("literal address"));
    }

    #[test]
    fn bad_bodies_are_errors() {
        assert_eq!(parse(&[0xFF, 0xFE]), Err(SdpError::NotUtf8));
        assert_eq!(parse(b""), Err(SdpError::NoAudio));
        assert_eq!(
            parse(b"m=audio 4000 RTP/AVP 0\r\n"),
            Err(SdpError::NoAddress)
        );
        assert!(matches!(
            parse(b"m=audio x RTP/AVP 0\r\n"),
            Err(SdpError::Malformed(_))
        ));
        assert!(matches!(
            parse(b"c=IN IP4 nope\r\n"),
            Err(SdpError::Malformed(_))
        ));
        let no_g711 =
            parse(b"c=IN IP4 127.0.0.1\r\nm=audio 4000 RTP/AVP 9 18\r\n").expect("parses");
        assert_eq!(no_g711.preferred_g711(), None);
    }
}
