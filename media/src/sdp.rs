//! SDP (RFC 4566) for the B2BUA's audio: parse an offer or answer, answer an offer, make an
//! offer, and read where a peer's audio is.
//!
//! Only what an audio-only G.711 call needs is modelled: connection addresses at session and
//! media level (IPv4 and IPv6), `m=` lines with their payload lists, `a=rtpmap`, `a=fmtp`,
//! `a=ptime` and the direction attributes. Every other line is kept out of the model and
//! ignored. SDP comes from the network, so malformed input is an error, never a panic, and the
//! body size is bounded.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use crate::codec::Codec;
use crate::MediaError;

/// Largest SDP body we parse; real audio offers are well under 2 KiB.
pub const SDP_BYTES_MAX: usize = 16 * 1024;
/// Most payload types we keep from one `m=` line.
pub const PAYLOAD_TYPES_MAX: usize = 64;
/// Most `m=` sections we accept in one body.
pub const MEDIA_SECTIONS_MAX: usize = 16;
/// Packetisation time we send and ask for.
pub const PTIME_MS: u32 = 20;

/// The media direction attribute (RFC 3264 section 5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Direction {
    #[default]
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    /// The attribute name as it appears after `a=`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    /// The direction an answer gives to an offer with this direction.
    pub fn answer(self) -> Direction {
        match self {
            Direction::SendRecv => Direction::SendRecv,
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            Direction::Inactive => Direction::Inactive,
        }
    }

    fn parse(attribute: &str) -> Option<Direction> {
        match attribute {
            "sendrecv" => Some(Direction::SendRecv),
            "sendonly" => Some(Direction::SendOnly),
            "recvonly" => Some(Direction::RecvOnly),
            "inactive" => Some(Direction::Inactive),
            _ => None,
        }
    }
}

/// A parsed session description.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionDescription {
    /// The session id from `o=`, if present and numeric.
    pub session_id: Option<u64>,
    /// Session-level `c=` address.
    pub connection: Option<IpAddr>,
    /// Session-level direction attribute, if any.
    pub direction: Option<Direction>,
    /// The `m=` sections, in order.
    pub media: Vec<MediaDescription>,
}

/// One `m=` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MediaDescription {
    /// `audio`, `video`, ...
    pub kind: String,
    pub port: u16,
    /// `RTP/AVP`, `RTP/SAVP`, ...
    pub protocol: String,
    /// The format list as written; payload type numbers for RTP.
    pub formats: Vec<String>,
    /// Media-level `c=` address.
    pub connection: Option<IpAddr>,
    pub rtpmaps: Vec<RtpMap>,
    /// `a=fmtp:<pt> <params>` pairs.
    pub fmtps: Vec<(u8, String)>,
    pub ptime_ms: Option<u32>,
    /// Media-level direction attribute, if any.
    pub direction: Option<Direction>,
}

/// One `a=rtpmap:<pt> <name>/<rate>[/<channels>]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RtpMap {
    pub payload_type: u8,
    pub encoding: String,
    pub clock_rate_hz: u32,
}

impl MediaDescription {
    /// The format list as RTP payload types; formats that are not numbers are skipped.
    pub fn payload_types(&self) -> impl Iterator<Item = u8> + '_ {
        self.formats.iter().filter_map(|f| f.parse().ok())
    }

    /// Our codec for a payload type: the static numbers 0 and 8, unless an rtpmap says the
    /// number means something else. Dynamic numbers mapped to PCMU/PCMA are not accepted: we
    /// always send the static payload types.
    pub fn codec_for(&self, payload_type: u8) -> Option<Codec> {
        let codec = Codec::from_payload_type(payload_type)?;
        match self.rtpmap(payload_type) {
            Some(map) if Codec::from_rtpmap(&map.encoding, map.clock_rate_hz) != Some(codec) => {
                None
            }
            _ => Some(codec),
        }
    }

    /// The rtpmap line for a payload type.
    pub fn rtpmap(&self, payload_type: u8) -> Option<&RtpMap> {
        self.rtpmaps.iter().find(|m| m.payload_type == payload_type)
    }

    /// The payload type offered for RFC 4733 `telephone-event/8000`, if any.
    pub fn telephone_event(&self) -> Option<u8> {
        self.payload_types().find(|pt| {
            self.rtpmap(*pt).is_some_and(|m| {
                m.encoding.eq_ignore_ascii_case("telephone-event") && m.clock_rate_hz == 8000
            })
        })
    }

    fn fmtp(&self, payload_type: u8) -> Option<&str> {
        self.fmtps
            .iter()
            .find(|(pt, _)| *pt == payload_type)
            .map(|(_, p)| p.as_str())
    }

    fn is_usable_audio(&self) -> bool {
        self.kind == "audio"
            && self.port != 0
            && (self.protocol == "RTP/AVP" || self.protocol == "RTP/AVPF")
    }
}

impl SessionDescription {
    /// The first audio section we can use (non-zero port, plain RTP), if any.
    pub fn audio(&self) -> Option<&MediaDescription> {
        self.media.iter().find(|m| m.is_usable_audio())
    }

    /// The RTP address of the first usable audio stream, if it has a connection address.
    /// May be unspecified (`0.0.0.0`, old-style hold); [`crate::latch::Latch`] treats that as none.
    pub fn audio_addr(&self) -> Option<SocketAddr> {
        let audio = self.audio()?;
        let ip = audio.connection.or(self.connection)?;
        Some(SocketAddr::new(ip, audio.port))
    }

    fn direction_of(&self, media: &MediaDescription) -> Direction {
        media.direction.or(self.direction).unwrap_or_default()
    }
}

/// Parses an SDP body. Accepts CRLF or LF line ends and ignores lines it does not model.
pub fn parse(text: &str) -> Result<SessionDescription, MediaError> {
    if text.len() > SDP_BYTES_MAX {
        return Err(MediaError::SdpTooLarge {
            size_bytes: text.len(),
            limit_bytes: SDP_BYTES_MAX,
        });
    }
    let mut sdp = SessionDescription::default();
    for (index, raw) in text.lines().enumerate() {
        let line_number = index + 1;
        let err = |reason: String| MediaError::SdpSyntax {
            line: line_number,
            reason,
        };
        let line = raw.trim_end_matches('\r').trim();
        if line.is_empty() {
            continue;
        }
        let Some((kind, value)) = line.split_once('=') else {
            return Err(err(format!("expected <type>=<value>, got {line:?}")));
        };
        let media = sdp.media.last_mut();
        match kind {
            "o" => {
                sdp.session_id = value
                    .split_whitespace()
                    .nth(1)
                    .and_then(|id| id.parse().ok());
            }
            "c" => {
                let address = parse_connection(value).map_err(err)?;
                match media {
                    Some(m) => m.connection = Some(address),
                    None => sdp.connection = Some(address),
                }
            }
            "m" => {
                if sdp.media.len() >= MEDIA_SECTIONS_MAX {
                    return Err(err(format!("more than {MEDIA_SECTIONS_MAX} m= lines")));
                }
                sdp.media.push(parse_media(value).map_err(err)?);
            }
            "a" => {
                let (name, argument) = match value.split_once(':') {
                    Some((n, a)) => (n, Some(a.trim())),
                    None => (value, None),
                };
                if let Some(direction) = Direction::parse(name) {
                    match media {
                        Some(m) => m.direction = Some(direction),
                        None => sdp.direction = Some(direction),
                    }
                    continue;
                }
                let (Some(m), Some(argument)) = (media, argument) else {
                    continue;
                };
                match name {
                    "rtpmap" => m.rtpmaps.push(parse_rtpmap(argument).map_err(err)?),
                    "fmtp" => {
                        let (pt, params) = argument.split_once(' ').unwrap_or((argument, ""));
                        let pt = pt
                            .parse()
                            .map_err(|_| err(format!("bad fmtp payload type {pt:?}")))?;
                        m.fmtps.push((pt, params.trim().to_owned()));
                    }
                    "ptime" => {
                        m.ptime_ms = Some(
                            argument
                                .parse()
                                .map_err(|_| err(format!("bad ptime {argument:?}")))?,
                        );
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    Ok(sdp)
}

fn parse_connection(value: &str) -> Result<IpAddr, String> {
    let mut fields = value.split_whitespace();
    let (Some(net), Some(family), Some(address)) = (fields.next(), fields.next(), fields.next())
    else {
        return Err(format!(
            "c= needs <nettype> <addrtype> <address>, got {value:?}"
        ));
    };
    if net != "IN" {
        return Err(format!("c= network type {net:?} is not IN"));
    }
    // Multicast addresses carry /ttl and /count suffixes; the address is before them.
    let address = address.split('/').next().unwrap_or(address);
    let ip: IpAddr = address
        .parse()
        .map_err(|_| format!("c= address {address:?} is not an IP address"))?;
    match (family, ip) {
        ("IP4", IpAddr::V4(_)) | ("IP6", IpAddr::V6(_)) => Ok(ip),
        _ => Err(format!(
            "c= address {address:?} does not match address type {family:?}"
        )),
    }
}

fn parse_media(value: &str) -> Result<MediaDescription, String> {
    let mut fields = value.split_whitespace();
    let (Some(kind), Some(port), Some(protocol)) = (fields.next(), fields.next(), fields.next())
    else {
        return Err(format!(
            "m= needs <media> <port> <proto> <fmt>..., got {value:?}"
        ));
    };
    // A port may carry a /count suffix for layered streams; we use the first port.
    let port = port.split('/').next().unwrap_or(port);
    let port: u16 = port
        .parse()
        .map_err(|_| format!("m= port {port:?} is not a number 0-65535"))?;
    let formats: Vec<String> = fields.take(PAYLOAD_TYPES_MAX).map(str::to_owned).collect();
    if protocol.starts_with("RTP/") {
        if let Some(bad) = formats
            .iter()
            .find(|f| f.parse::<u8>().map_or(true, |pt| pt > 127))
        {
            return Err(format!("m= payload type {bad:?} is not a number 0-127"));
        }
    }
    Ok(MediaDescription {
        kind: kind.to_owned(),
        port,
        protocol: protocol.to_owned(),
        formats,
        connection: None,
        rtpmaps: Vec::new(),
        fmtps: Vec::new(),
        ptime_ms: None,
        direction: None,
    })
}

fn parse_rtpmap(argument: &str) -> Result<RtpMap, String> {
    let bad = || format!("a=rtpmap needs <pt> <name>/<rate>, got {argument:?}");
    let (pt, encoding) = argument.split_once(' ').ok_or_else(bad)?;
    let mut parts = encoding.trim().split('/');
    let name = parts.next().ok_or_else(bad)?;
    let rate = parts.next().ok_or_else(bad)?;
    Ok(RtpMap {
        payload_type: pt.parse().map_err(|_| bad())?,
        encoding: name.to_owned(),
        clock_rate_hz: rate.parse().map_err(|_| bad())?,
    })
}

/// What [`negotiate`] decided, with the SDP text to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SdpAnswer {
    /// The answer body (CRLF line ends).
    pub sdp: String,
    /// The codec both sides will use: the first in the offerer's order that we support.
    pub codec: Codec,
    /// The telephone-event payload type, echoed when offered.
    pub telephone_event: Option<u8>,
    /// Where the offerer wants its audio (may be unspecified, `0.0.0.0`, for old-style hold).
    pub remote: SocketAddr,
    /// The offer's direction, as seen from the offerer.
    pub direction: Direction,
}

/// Where a peer's audio goes and in which codec, from its offer or answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemoteAudio {
    pub addr: SocketAddr,
    /// The first payload type in the peer's list that we support.
    pub codec: Codec,
    pub telephone_event: Option<u8>,
    pub direction: Direction,
    pub ptime_ms: Option<u32>,
}

/// Where a peer's audio goes and the codec to use: [`audio_details`] reduced to the two things
/// the B2BUA needs to bridge a leg.
pub fn remote_audio(sdp: &SessionDescription) -> Result<(SocketAddr, Codec), MediaError> {
    audio_details(sdp).map(|audio| (audio.addr, audio.codec))
}

/// Reads the first usable audio stream of a description.
pub fn audio_details(sdp: &SessionDescription) -> Result<RemoteAudio, MediaError> {
    let audio = sdp.audio().ok_or(MediaError::NoAudio)?;
    let ip = audio
        .connection
        .or(sdp.connection)
        .ok_or(MediaError::NoConnectionAddress)?;
    let codec = audio
        .payload_types()
        .find_map(|pt| audio.codec_for(pt))
        .ok_or_else(|| no_common_codec(audio, &Codec::ALL))?;
    Ok(RemoteAudio {
        addr: SocketAddr::new(ip, audio.port),
        codec,
        telephone_event: audio.telephone_event(),
        direction: sdp.direction_of(audio),
        ptime_ms: audio.ptime_ms,
    })
}

/// Answers an offer: the answer body and the chosen codec. See [`negotiate`] for the rules and
/// for the other things decided.
pub fn answer(
    offer: &SessionDescription,
    local_rtp_addr: SocketAddr,
    supported: &[Codec],
) -> Result<(String, Codec), MediaError> {
    negotiate(offer, local_rtp_addr, supported).map(|answer| (answer.sdp, answer.codec))
}

/// Answers an offer: picks the first codec in the offerer's order that is in `supported`, echoes
/// telephone-event if offered, and rejects every other `m=` line with port 0 (RFC 3264 keeps
/// the answer's m-lines parallel to the offer's).
pub fn negotiate(
    offer: &SessionDescription,
    local_rtp_addr: SocketAddr,
    supported: &[Codec],
) -> Result<SdpAnswer, MediaError> {
    let audio_index = offer
        .media
        .iter()
        .position(MediaDescription::is_usable_audio)
        .ok_or(MediaError::NoAudio)?;
    let audio = &offer.media[audio_index];
    let codec = audio
        .payload_types()
        .filter_map(|pt| audio.codec_for(pt))
        .find(|c| supported.contains(c))
        .ok_or_else(|| no_common_codec(audio, supported))?;
    let remote_ip = audio
        .connection
        .or(offer.connection)
        .ok_or(MediaError::NoConnectionAddress)?;
    let telephone_event = audio.telephone_event();
    let direction = offer.direction_of(audio);

    // The answer's o= id echoes the offer's: deterministic, and unique per dialog in practice.
    let session_id = offer.session_id.unwrap_or(u64::from(local_rtp_addr.port()));
    let mut sdp = session_header(local_rtp_addr.ip(), session_id);
    for (index, media) in offer.media.iter().enumerate() {
        if index != audio_index {
            let first = media.formats.first().map_or("0", String::as_str);
            push_line(
                &mut sdp,
                format_args!("m={} 0 {} {first}", media.kind, media.protocol),
            );
            continue;
        }
        let pt = codec.payload_type();
        match telephone_event {
            Some(te) => push_line(
                &mut sdp,
                format_args!(
                    "m=audio {} {} {pt} {te}",
                    local_rtp_addr.port(),
                    media.protocol
                ),
            ),
            None => push_line(
                &mut sdp,
                format_args!("m=audio {} {} {pt}", local_rtp_addr.port(), media.protocol),
            ),
        }
        push_line(
            &mut sdp,
            format_args!("a=rtpmap:{pt} {}/8000", codec.rtpmap_name()),
        );
        if let Some(te) = telephone_event {
            let events = media.fmtp(te).unwrap_or("0-16");
            push_line(&mut sdp, format_args!("a=rtpmap:{te} telephone-event/8000"));
            push_line(&mut sdp, format_args!("a=fmtp:{te} {events}"));
        }
        push_line(&mut sdp, format_args!("a=ptime:{PTIME_MS}"));
        push_line(&mut sdp, format_args!("a={}", direction.answer().as_str()));
    }
    Ok(SdpAnswer {
        sdp,
        codec,
        telephone_event,
        remote: SocketAddr::new(remote_ip, audio.port),
        direction,
    })
}

/// Makes an audio offer of `codecs` (in that order of preference) at `local_addr`.
pub fn offer(local_addr: SocketAddr, codecs: &[Codec], session_id: u64) -> String {
    let mut sdp = session_header(local_addr.ip(), session_id);
    let mut m_line = format!("m=audio {} RTP/AVP", local_addr.port());
    for codec in codecs {
        let _ = write!(m_line, " {}", codec.payload_type());
    }
    push_line(&mut sdp, format_args!("{m_line}"));
    for codec in codecs {
        push_line(
            &mut sdp,
            format_args!(
                "a=rtpmap:{} {}/8000",
                codec.payload_type(),
                codec.rtpmap_name()
            ),
        );
    }
    push_line(&mut sdp, format_args!("a=ptime:{PTIME_MS}"));
    push_line(&mut sdp, format_args!("a=sendrecv"));
    sdp
}

fn session_header(ip: IpAddr, session_id: u64) -> String {
    let family = match ip {
        IpAddr::V4(_) => "IP4",
        IpAddr::V6(_) => "IP6",
    };
    let mut sdp = String::with_capacity(320);
    push_line(&mut sdp, format_args!("v=0"));
    push_line(
        &mut sdp,
        format_args!("o=carillon {session_id} 1 IN {family} {ip}"),
    );
    push_line(&mut sdp, format_args!("s=carillon"));
    push_line(&mut sdp, format_args!("c=IN {family} {ip}"));
    push_line(&mut sdp, format_args!("t=0 0"));
    sdp
}

fn push_line(sdp: &mut String, line: std::fmt::Arguments<'_>) {
    // Writing to a String cannot fail.
    let _ = sdp.write_fmt(line);
    sdp.push_str("\r\n");
}

fn no_common_codec(audio: &MediaDescription, supported: &[Codec]) -> MediaError {
    MediaError::NoCommonCodec {
        offered: audio.formats.join(" "),
        supported: supported
            .iter()
            .map(|c| format!("{} {c}", c.payload_type()))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

#[cfg(test)]
#[path = "sdp_test.rs"]
mod tests;
