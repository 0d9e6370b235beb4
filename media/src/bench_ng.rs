//! A client of rtpengine's ng control protocol, for `carillon bench media --rtpengine-ng`: the
//! benchmark's simulated phones then load rtpengine exactly as they load our relay, so the
//! yardstick the media issue names is measured on the same machine with the same traffic.
//!
//! The protocol is one UDP datagram each way: `COOKIE SP bencoded-dictionary`. We send `offer`
//! (the caller's SDP), `answer` (the agent's SDP) and `delete`, and read back each reply's
//! `result` and the SDP rtpengine rewrote, whose `c=` and `m=audio` lines say where the other
//! party must send. Replies are network input: anything malformed is an error, never a panic.

use std::fmt::Write as _;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::MediaError;

/// How long one request waits for its reply (rtpengine answers in well under a millisecond
/// when healthy).
const REPLY_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest reply we read.
const REPLY_BYTES_MAX: usize = 65_536;

/// A decoded reply: its keys and (string) values.
type Reply = Vec<(Vec<u8>, Vec<u8>)>;

/// Clients made by this process so far.
static CLIENTS: AtomicU64 = AtomicU64::new(0);

/// One ng control connection.
pub(crate) struct NgClient {
    socket: UdpSocket,
    server: SocketAddr,
    cookie: u64,
    reply: Vec<u8>,
}

impl NgClient {
    pub(crate) fn connect(server: SocketAddr) -> Result<NgClient, MediaError> {
        let io = |source| MediaError::Io {
            file: format!("ng control socket to {server}"),
            source,
        };
        let bind: SocketAddr = if server.is_ipv4() {
            (IpAddr::from([127, 0, 0, 1]), 0).into()
        } else {
            (IpAddr::from(std::net::Ipv6Addr::LOCALHOST), 0).into()
        };
        let socket = UdpSocket::bind(bind).map_err(io)?;
        socket.set_read_timeout(Some(REPLY_TIMEOUT)).map_err(io)?;
        let mut client = NgClient {
            socket,
            server,
            // rtpengine answers a cookie it has seen with its cached reply, so cookies must
            // never repeat, not even across the clients one run makes.
            cookie: u64::from(std::process::id()) << 32
                | (CLIENTS.fetch_add(1, Ordering::Relaxed) << 24),
            reply: vec![0; REPLY_BYTES_MAX],
        };
        client.request(&[("command", "ping")])?;
        Ok(client)
    }

    /// Sets up one call: `caller` and `agent` are where each phone receives. Returns where
    /// each must send: `(caller sends to, agent sends to)`.
    pub(crate) fn bridge(
        &mut self,
        call_id: &str,
        caller: SocketAddr,
        agent: SocketAddr,
    ) -> Result<(SocketAddr, SocketAddr), MediaError> {
        let offer = self.request(&[
            ("command", "offer"),
            ("call-id", call_id),
            ("from-tag", "caller"),
            ("sdp", &phone_sdp(caller)),
        ])?;
        // The offer's rewritten SDP goes to the agent: it names the port the agent sends to.
        let agent_sends_to = sdp_audio_address(&field(&offer, "sdp")?)?;
        let answer = self.request(&[
            ("command", "answer"),
            ("call-id", call_id),
            ("from-tag", "caller"),
            ("to-tag", "agent"),
            ("sdp", &phone_sdp(agent)),
        ])?;
        let caller_sends_to = sdp_audio_address(&field(&answer, "sdp")?)?;
        Ok((caller_sends_to, agent_sends_to))
    }

    pub(crate) fn delete(&mut self, call_id: &str) -> Result<(), MediaError> {
        self.request(&[("command", "delete"), ("call-id", call_id)])
            .map(|_| ())
    }

    /// Sends one request and returns the reply's dictionary (as key/value pairs) once its
    /// `result` is `ok` (`pong` for a ping).
    fn request(&mut self, fields: &[(&str, &str)]) -> Result<Reply, MediaError> {
        self.cookie += 1;
        let cookie = format!("{:x}", self.cookie);
        let mut sorted: Vec<_> = fields.to_vec();
        // Bencode dictionaries have their keys sorted.
        sorted.sort_by_key(|(k, _)| *k);
        let mut datagram = format!("{cookie} d");
        for (key, value) in sorted {
            // Writing to a String cannot fail.
            let _ = write!(datagram, "{}:{key}{}:{value}", key.len(), value.len());
        }
        datagram.push('e');
        let io = |source| MediaError::Io {
            file: format!("ng control at {}", self.server),
            source,
        };
        self.socket
            .send_to(datagram.as_bytes(), self.server)
            .map_err(io)?;
        loop {
            let (len, from) = match self.socket.recv_from(&mut self.reply) {
                Ok(got) => got,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(self.error(format!(
                        "no reply within {} ms (is rtpengine running with --listen-ng={}?)",
                        REPLY_TIMEOUT.as_millis(),
                        self.server
                    )))
                }
                Err(source) => return Err(io(source)),
            };
            let reply = &self.reply[..len];
            // A late reply to an earlier request that timed out: skip it.
            let Some(body) = reply
                .strip_prefix(cookie.as_bytes())
                .and_then(|rest| rest.strip_prefix(b" "))
            else {
                continue;
            };
            if from != self.server {
                continue;
            }
            let dict = decode_dict(body)
                .ok_or_else(|| self.error("reply is not a bencoded dictionary".into()))?;
            let result = field(&dict, "result")?;
            if result == "ok" || result == "pong" {
                return Ok(dict);
            }
            let reason = field(&dict, "error-reason").unwrap_or_default();
            return Err(self.error(format!("{result}: {reason}")));
        }
    }

    fn error(&self, reason: String) -> MediaError {
        MediaError::External {
            relay: format!("rtpengine ng at {}", self.server),
            reason,
        }
    }
}

/// A phone's SDP: PCMU at `at`.
fn phone_sdp(at: SocketAddr) -> String {
    let family = if at.is_ipv4() { "IP4" } else { "IP6" };
    let ip = at.ip();
    format!(
        "v=0\r\no=- 1 1 IN {family} {ip}\r\ns=-\r\nc=IN {family} {ip}\r\nt=0 0\r\n\
         m=audio {} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n",
        at.port()
    )
}

/// One string field of a reply.
fn field(dict: &Reply, key: &str) -> Result<String, MediaError> {
    dict.iter()
        .find(|(k, _)| k == key.as_bytes())
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .ok_or_else(|| MediaError::External {
            relay: "rtpengine".into(),
            reason: format!(
                "reply has no `{key}` (it has: {})",
                dict.iter()
                    .map(|(k, v)| format!(
                        "{}={}",
                        String::from_utf8_lossy(k),
                        String::from_utf8_lossy(v)
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })
}

/// The address an SDP's (first) audio stream receives on.
fn sdp_audio_address(sdp: &str) -> Result<SocketAddr, MediaError> {
    crate::sdp::parse(sdp)?
        .audio_addr()
        .ok_or(MediaError::NoConnectionAddress)
}

/// Decodes a bencoded dictionary whose values we need only as strings; integer, list and
/// dictionary values are kept as their raw encoding. `None` on anything malformed.
fn decode_dict(input: &[u8]) -> Option<Reply> {
    let rest = input.strip_prefix(b"d")?;
    let mut pos = 0;
    let mut out = Vec::new();
    while rest.get(pos)? != &b'e' {
        let (key, after_key) = decode_string(rest, pos)?;
        let (value, after_value) = match rest.get(after_key)? {
            b'0'..=b'9' => decode_string(rest, after_key)?,
            _ => {
                let end = skip_value(rest, after_key, 0)?;
                (&rest[after_key..end], end)
            }
        };
        out.push((key.to_vec(), value.to_vec()));
        pos = after_value;
    }
    Some(out)
}

/// `LEN:BYTES` at `pos`: the bytes and the position after them.
fn decode_string(input: &[u8], pos: usize) -> Option<(&[u8], usize)> {
    let colon = pos + input.get(pos..)?.iter().position(|b| *b == b':')?;
    let len: usize = std::str::from_utf8(&input[pos..colon]).ok()?.parse().ok()?;
    let start = colon + 1;
    let end = start.checked_add(len)?;
    Some((input.get(start..end)?, end))
}

/// The position after the value at `pos`. Nesting is bounded so hostile input cannot recurse
/// without end.
fn skip_value(input: &[u8], pos: usize, depth: usize) -> Option<usize> {
    if depth > 32 {
        return None;
    }
    match input.get(pos)? {
        b'i' => Some(pos + input.get(pos..)?.iter().position(|b| *b == b'e')? + 1),
        b'l' | b'd' => {
            let mut at = pos + 1;
            while input.get(at)? != &b'e' {
                at = skip_value(input, at, depth + 1)?;
            }
            Some(at + 1)
        }
        b'0'..=b'9' => decode_string(input, pos).map(|(_, end)| end),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_a_reply_with_nested_values() {
        let dict = decode_dict(b"d3:sdp5:v=0\r\n6:result2:ok4:listl1:ai3ee3:inti-7ee")
            .expect("a well-formed reply");
        assert_eq!(dict[0], (b"sdp".to_vec(), b"v=0\r\n".to_vec()));
        assert_eq!(dict[1], (b"result".to_vec(), b"ok".to_vec()));
        assert_eq!(dict[2], (b"list".to_vec(), b"l1:ai3ee".to_vec()));
        assert_eq!(dict[3], (b"int".to_vec(), b"i-7e".to_vec()));
    }

    #[test]
    fn malformed_replies_are_refused_not_panicked_on() {
        for bad in [
            &b""[..],
            b"d",
            b"d3:sdp",
            b"d3:sdp99:short",
            b"d3:sdpx",
            b"l1:ae",
            b"d1:ad1:ad1:ad1:ad1:ad1:ad1:ad1:ad1:ad1:ad1:ad1:ad1:ad1:ad1:ad1:ad1:ad1:ad1:ad1:ad1:ad1:ad1:ad1:ad1:ad1:ad1:ad1:ad1:ad1:ad1:ad1:ad1:ad1:a",
            b"d99999999999999999999999:a",
        ] {
            assert!(decode_dict(bad).is_none(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn reads_where_the_rewritten_sdp_receives() {
        let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
                   m=audio 30022 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=rtcp:30023\r\n";
        assert_eq!(
            sdp_audio_address(sdp).expect("an audio address"),
            SocketAddr::from(([127, 0, 0, 1], 30022))
        );
        let phone = SocketAddr::from(([127, 0, 0, 1], 5000));
        assert_eq!(
            sdp_audio_address(&phone_sdp(phone)).expect("an audio address"),
            phone
        );
    }
}
