//! Hold and resume, without I/O: what a re-INVITE's SDP asks for, the answer to send, and
//! what it means for the other leg of the B2BUA.
//!
//! A side holds by re-offering `a=sendonly` or `a=inactive` (or, the old RFC 2543 way, by
//! setting its connection address to `0.0.0.0`), and resumes with `a=sendrecv`. Each leg of
//! a call keeps one [`LegSdp`]: our own description on that leg (the answer we gave, or the
//! offer we made) and the direction the far end last asked for. The call task feeds it
//! each re-INVITE body with [`LegSdp::on_reoffer`] and sends back the answer it returns;
//! when that reports a [`Change`], the task acts on the other leg: hold music to the
//! caller when the agent holds, a re-INVITE built with [`LegSdp::reoffer`] when the
//! caller holds (so the agent's phone, or the inter-node leg, learns of it too).
//!
//! [`HoldClock`] adds up how long a call spent held by either side, for the log.

use std::net::IpAddr;

use carillon_media::sdp::{self, Direction};

/// A re-INVITE body we cannot answer.
#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    #[error("re-INVITE SDP is unusable: {0}")]
    Sdp(#[from] carillon_media::MediaError),
    #[error("re-INVITE SDP has no usable audio stream")]
    NoAudio,
}

/// What a re-offer did to the far end's hold state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// The far end went on hold: it no longer wants our audio.
    Held,
    /// The far end came back from hold.
    Resumed,
}

/// The outcome of one re-offer from the far end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reoffer {
    /// The SDP answer to send in the 200.
    pub answer: String,
    /// The direction the far end offered, from its point of view (old-style hold folded in).
    pub offered: Direction,
    /// Whether this re-offer put the far end on hold or took it off; `None` if neither.
    pub change: Option<Change>,
}

/// One leg's session description as we keep it across re-INVITEs.
#[derive(Clone, Debug)]
pub struct LegSdp {
    /// Our description on this leg (its `a=` direction is rewritten on each exchange).
    local: String,
    /// Our `o=` version: RFC 3264 section 8 wants it one higher in each new description.
    version: u64,
    /// What the far end last offered.
    remote: Direction,
}

impl LegSdp {
    /// A leg whose session was set up with our description `local` and is not held.
    pub fn new(local: String) -> LegSdp {
        LegSdp {
            local,
            version: 1,
            remote: Direction::SendRecv,
        }
    }

    /// True while the far end holds (it asked us not to send).
    pub fn is_held(&self) -> bool {
        is_hold(self.remote)
    }

    /// The direction the far end last offered (sendrecv until it re-offers).
    pub fn offered(&self) -> Direction {
        self.remote
    }

    /// Answers a re-INVITE from the far end. An empty body (a re-INVITE without an offer)
    /// gets our description as it stands, and changes nothing.
    pub fn on_reoffer(&mut self, body: &str) -> Result<Reoffer, HoldError> {
        if body.trim().is_empty() {
            let answer = self.describe(self.remote.answer());
            return Ok(Reoffer {
                answer,
                offered: self.remote,
                change: None,
            });
        }
        let offer = sdp::parse(body)?;
        let offered = offered_direction(&offer).ok_or(HoldError::NoAudio)?;
        let change = match (is_hold(self.remote), is_hold(offered)) {
            (false, true) => Some(Change::Held),
            (true, false) => Some(Change::Resumed),
            _ => None,
        };
        self.remote = offered;
        let answer = self.describe(offered.answer());
        Ok(Reoffer {
            answer,
            offered,
            change,
        })
    }

    /// Our own re-offer on this leg with `direction` (relaying the other side's hold).
    pub fn reoffer(&mut self, direction: Direction) -> String {
        self.describe(direction)
    }

    /// Our description with `direction` and the next version.
    fn describe(&mut self, direction: Direction) -> String {
        self.version += 1;
        with_direction(&self.local, direction, self.version)
    }
}

/// Adds up the time a call spends held, by either side or both at once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HoldClock {
    since_ms: Option<u64>,
    held_ms: u64,
}

impl HoldClock {
    /// Call after each change with whether any side now holds, and the time.
    pub fn update(&mut self, held: bool, now_ms: u64) {
        match (self.since_ms, held) {
            (None, true) => self.since_ms = Some(now_ms),
            (Some(since), false) => {
                self.held_ms += now_ms.saturating_sub(since);
                self.since_ms = None;
            }
            _ => {}
        }
    }

    /// Total time held up to `now_ms`, counting a hold still under way.
    pub fn held_ms(&self, now_ms: u64) -> u64 {
        self.held_ms + self.since_ms.map_or(0, |s| now_ms.saturating_sub(s))
    }
}

/// True for a direction by which the offerer asks not to be sent audio.
pub fn is_hold(direction: Direction) -> bool {
    matches!(direction, Direction::SendOnly | Direction::Inactive)
}

/// The direction an offer asks for, its first usable audio stream's, with the old-style hold
/// (connection address `0.0.0.0`: "do not send to me") folded in. `None` without audio.
pub fn offered_direction(offer: &sdp::SessionDescription) -> Option<Direction> {
    let audio = sdp::audio_details(offer).ok()?;
    let unspecified = match audio.addr.ip() {
        IpAddr::V4(ip) => ip.is_unspecified(),
        IpAddr::V6(ip) => ip.is_unspecified(),
    };
    Some(match (unspecified, audio.direction) {
        (true, Direction::SendRecv) => Direction::SendOnly,
        (true, Direction::RecvOnly) => Direction::Inactive,
        (_, d) => d,
    })
}

/// `text` with every direction attribute replaced by `direction` (one is added after the
/// last line if there was none) and the `o=` version set to `version`. Lines keep CRLF ends.
pub fn with_direction(text: &str, direction: Direction, version: u64) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    let mut written = false;
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            continue;
        }
        if let Some(attribute) = line.strip_prefix("a=") {
            if matches!(attribute, "sendrecv" | "sendonly" | "recvonly" | "inactive") {
                if !written {
                    out.push_str("a=");
                    out.push_str(direction.as_str());
                    out.push_str("\r\n");
                    written = true;
                }
                continue;
            }
        }
        if let Some(origin) = line.strip_prefix("o=") {
            out.push_str("o=");
            out.push_str(&with_version(origin, version));
            out.push_str("\r\n");
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    if !written {
        out.push_str("a=");
        out.push_str(direction.as_str());
        out.push_str("\r\n");
    }
    out
}

/// An `o=` value (`user id version net type addr`) with its version replaced; left as it
/// is when it does not have six fields.
fn with_version(origin: &str, version: u64) -> String {
    let fields: Vec<&str> = origin.split_whitespace().collect();
    if fields.len() != 6 {
        return origin.to_string();
    }
    let version = version.to_string();
    let mut fields = fields;
    fields[2] = &version;
    fields.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: &str = "v=0\r\no=carillon 42 1 IN IP4 127.0.0.1\r\ns=carillon\r\n\
        c=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 20000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n\
        a=ptime:20\r\na=sendrecv\r\n";

    fn offer(connection: &str, direction: Option<&str>) -> String {
        let mut s = format!(
            "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 {connection}\r\nt=0 0\r\n\
             m=audio 16000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
        );
        if let Some(d) = direction {
            s.push_str(&format!("a={d}\r\n"));
        }
        s
    }

    fn direction_of(text: &str) -> Direction {
        let parsed = sdp::parse(text).expect("our own SDP parses");
        sdp::audio_details(&parsed)
            .expect("our SDP has audio")
            .direction
    }

    #[test]
    fn sendonly_is_held_and_answered_recvonly() {
        let mut leg = LegSdp::new(OURS.into());
        let r = leg
            .on_reoffer(&offer("127.0.0.1", Some("sendonly")))
            .expect("valid offer");
        assert_eq!(r.offered, Direction::SendOnly);
        assert_eq!(r.change, Some(Change::Held));
        assert_eq!(direction_of(&r.answer), Direction::RecvOnly);
        assert!(leg.is_held());
        assert!(r.answer.contains("o=carillon 42 2 IN IP4 127.0.0.1\r\n"));
        assert_eq!(r.answer.matches("a=recvonly").count(), 1);
        assert!(!r.answer.contains("sendrecv"));
    }

    #[test]
    fn inactive_holds_and_sendrecv_resumes() {
        let mut leg = LegSdp::new(OURS.into());
        let held = leg
            .on_reoffer(&offer("127.0.0.1", Some("inactive")))
            .expect("valid offer");
        assert_eq!(held.change, Some(Change::Held));
        assert_eq!(direction_of(&held.answer), Direction::Inactive);
        // Going from inactive to sendonly is still on hold: no change.
        let still = leg
            .on_reoffer(&offer("127.0.0.1", Some("sendonly")))
            .expect("valid offer");
        assert_eq!(still.change, None);
        let back = leg
            .on_reoffer(&offer("127.0.0.1", Some("sendrecv")))
            .expect("valid offer");
        assert_eq!(back.change, Some(Change::Resumed));
        assert_eq!(direction_of(&back.answer), Direction::SendRecv);
        assert!(back.answer.contains("o=carillon 42 4 "));
        assert!(!leg.is_held());
    }

    #[test]
    fn old_style_hold_by_zero_address() {
        let mut leg = LegSdp::new(OURS.into());
        let r = leg
            .on_reoffer(&offer("0.0.0.0", None))
            .expect("valid offer");
        assert_eq!(r.offered, Direction::SendOnly);
        assert_eq!(r.change, Some(Change::Held));
        assert_eq!(direction_of(&r.answer), Direction::RecvOnly);
        let r = leg
            .on_reoffer(&offer("0.0.0.0", Some("recvonly")))
            .expect("valid offer");
        assert_eq!(r.offered, Direction::Inactive);
        assert_eq!(r.change, None);
    }

    #[test]
    fn a_refresh_changes_nothing() {
        let mut leg = LegSdp::new(OURS.into());
        let r = leg
            .on_reoffer(&offer("127.0.0.1", Some("sendrecv")))
            .expect("valid offer");
        assert_eq!(r.change, None);
        let r = leg.on_reoffer("").expect("an offerless re-INVITE");
        assert_eq!(r.change, None);
        assert_eq!(direction_of(&r.answer), Direction::SendRecv);
    }

    #[test]
    fn hostile_bodies_are_errors() {
        let mut leg = LegSdp::new(OURS.into());
        assert!(leg.on_reoffer("garbage without equals").is_err());
        assert!(leg.on_reoffer("v=0\r\ns=-\r\n").is_err());
        assert!(!leg.is_held());
    }

    #[test]
    fn reoffer_relays_the_direction() {
        let mut leg = LegSdp::new(OURS.into());
        let text = leg.reoffer(Direction::SendOnly);
        assert_eq!(direction_of(&text), Direction::SendOnly);
        assert!(text.contains("o=carillon 42 2 "));
        // A description without a direction attribute gets one.
        let bare = OURS.replace("a=sendrecv\r\n", "");
        let text = with_direction(&bare, Direction::Inactive, 7);
        assert_eq!(direction_of(&text), Direction::Inactive);
    }

    #[test]
    fn clock_adds_up_holds() {
        let mut clock = HoldClock::default();
        clock.update(true, 1_000);
        clock.update(true, 1_500);
        assert_eq!(clock.held_ms(2_000), 1_000);
        clock.update(false, 3_000);
        clock.update(false, 4_000);
        clock.update(true, 5_000);
        assert_eq!(clock.held_ms(5_250), 2_250);
    }
}
