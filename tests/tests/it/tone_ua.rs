//! A small SIP/RTP user agent for tests that check who hears whom: UDP SIP, one G.711
//! stream, its own tone sent every 20 ms, and a Goertzel measure of what it receives
//! ([`Ua::listen`]). Each party of a test plays a distinct tone (caller 440 Hz, agent
//! 1 kHz, the third party 1.7 kHz: a supervisor, or a consulted number behind the gateway).
//! It answers INVITEs (200 with its SDP, or a status set by [`Ua::answer_with`]), BYEs and
//! OPTIONS, and places INVITEs.

// These helpers wait on real processes in wall-clock time.
#![allow(clippy::disallowed_methods)]

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use carillon_media::mix::goertzel_power;
use carillon_media::rfc4733;
use carillon_media::rtp::RtpHeader;
use carillon_media::{tone, Codec};

use crate::harness::{register, Node};

pub const CALLER_HZ: f64 = 440.0;
pub const AGENT_HZ: f64 = 1000.0;
/// The third party's tone: a supervisor, or a consulted number.
pub const THIRD_HZ: f64 = 1700.0;
/// A 0.3 full-scale tone measures about 2e7; silence and other tones' leakage far less.
const HEARD_MIN: f64 = 1e5;
const ABSENT_MAX: f64 = 1e4;
const LISTEN_MS: u64 = 700;

/// A SIP user agent over UDP with one G.711 stream: answers INVITEs, BYEs and OPTIONS,
/// places INVITEs, sends its tone every 20 ms once it knows where, keeps what it hears.
pub struct Ua {
    sip: Arc<UdpSocket>,
    rtp: Arc<UdpSocket>,
    user: String,
    remote_rtp: Arc<Mutex<Option<SocketAddr>>>,
    heard: Arc<Mutex<Vec<i16>>>,
    responses: mpsc::Receiver<String>,
    pub got_bye: Arc<AtomicBool>,
    /// The status line it answers INVITEs with (`200 OK` unless [`Ua::answer_with`]).
    answer: Arc<Mutex<String>>,
    /// INVITEs it answered (retransmissions included).
    pub invites: Arc<AtomicU32>,
    /// The last INVITE it answered with 200, and where from (to hang that call up).
    answered: Arc<Mutex<Option<(String, SocketAddr)>>>,
    /// The X-Carillon-Call header of the last INVITE answered.
    pub call_header: Arc<Mutex<String>>,
    stop: Arc<AtomicBool>,
    seq: AtomicU32,
    dialog: Mutex<Option<Dialog>>,
}

/// What an outgoing call needs for ACK and BYE.
#[derive(Clone)]
struct Dialog {
    call_id: String,
    from: String,
    to: String,
    target: String,
}

impl Ua {
    pub fn new(user: &str, hz: f64) -> Ua {
        let sip = Arc::new(UdpSocket::bind("127.0.0.1:0").expect("bind SIP"));
        let rtp = Arc::new(UdpSocket::bind("127.0.0.1:0").expect("bind RTP"));
        let (tx, responses) = mpsc::channel();
        let ua = Ua {
            sip,
            rtp,
            user: user.to_string(),
            remote_rtp: Arc::new(Mutex::new(None)),
            heard: Arc::new(Mutex::new(Vec::new())),
            responses,
            got_bye: Arc::new(AtomicBool::new(false)),
            answer: Arc::new(Mutex::new("200 OK".into())),
            invites: Arc::new(AtomicU32::new(0)),
            answered: Arc::new(Mutex::new(None)),
            call_header: Arc::new(Mutex::new(String::new())),
            stop: Arc::new(AtomicBool::new(false)),
            seq: AtomicU32::new(0),
            dialog: Mutex::new(None),
        };
        ua.spawn_sip(tx);
        ua.spawn_rtp(hz);
        ua
    }

    /// Answers the next INVITEs with `status` (`486 Busy Here`...) instead of 200.
    pub fn answer_with(&self, status: &str) {
        *self.answer.lock().expect("lock") = status.to_string();
    }

    pub fn sip_port(&self) -> u16 {
        self.sip.local_addr().expect("bound").port()
    }

    fn sdp(&self) -> String {
        let port = self.rtp.local_addr().expect("bound").port();
        format!(
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
             m=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n\
             a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=sendrecv\r\n"
        )
    }

    fn spawn_sip(&self, responses: mpsc::Sender<String>) {
        let sip = Arc::clone(&self.sip);
        let stop = Arc::clone(&self.stop);
        let remote_rtp = Arc::clone(&self.remote_rtp);
        let got_bye = Arc::clone(&self.got_bye);
        let call_header = Arc::clone(&self.call_header);
        let answer = Arc::clone(&self.answer);
        let invites = Arc::clone(&self.invites);
        let answered = Arc::clone(&self.answered);
        let sdp = self.sdp();
        let user = self.user.clone();
        sip.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while !stop.load(Ordering::Relaxed) {
                let Ok((len, from)) = sip.recv_from(&mut buf) else {
                    continue;
                };
                let text = String::from_utf8_lossy(&buf[..len]).to_string();
                if text.starts_with("SIP/2.0") {
                    responses.send(text).ok();
                    continue;
                }
                let method = text.split(' ').next().unwrap_or_default().to_string();
                let me = sip.local_addr().expect("bound");
                let reply = match method.as_str() {
                    "INVITE" => {
                        invites.fetch_add(1, Ordering::Relaxed);
                        if let Some(h) = header(&text, "X-Carillon-Call") {
                            *call_header.lock().expect("lock") = h;
                        }
                        let status = answer.lock().expect("lock").clone();
                        if !status.starts_with("200") {
                            let reply = response(&text, &status, "", "", true);
                            sip.send_to(reply.as_bytes(), from).ok();
                            continue;
                        }
                        if let Some(addr) = sdp_addr(body(&text)) {
                            *remote_rtp.lock().expect("lock") = Some(addr);
                        }
                        *answered.lock().expect("lock") = Some((text.clone(), from));
                        let extra = format!(
                            "Contact: <sip:{user}@{me}>\r\nContent-Type: application/sdp\r\n"
                        );
                        response(&text, "200 OK", &extra, &sdp, true)
                    }
                    "BYE" => {
                        got_bye.store(true, Ordering::Relaxed);
                        response(&text, "200 OK", "", "", false)
                    }
                    "ACK" => continue,
                    _ => response(&text, "200 OK", "", "", false),
                };
                sip.send_to(reply.as_bytes(), from).ok();
            }
        });
    }

    fn spawn_rtp(&self, hz: f64) {
        let rtp = Arc::clone(&self.rtp);
        let stop = Arc::clone(&self.stop);
        let remote = Arc::clone(&self.remote_rtp);
        thread::spawn(move || {
            let tone = tone::sine(hz as f32, 1000, 0.3);
            let start = Instant::now();
            // Bounded: 60 s of 20 ms frames at most.
            for n in 0u32..3000 {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let due = start + Duration::from_millis(20 * u64::from(n));
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    thread::sleep(wait);
                }
                let Some(to) = *remote.lock().expect("lock") else {
                    continue;
                };
                let mut packet = vec![0u8; 12 + 160];
                RtpHeader {
                    marker: n == 0,
                    payload_type: 0,
                    sequence: n as u16,
                    timestamp: n * 160,
                    ssrc: 0x5e5e_0000 ^ hz as u32,
                }
                .write(&mut packet);
                let at = (n as usize * 160) % tone.len();
                for (i, out) in packet[12..].iter_mut().enumerate() {
                    *out = Codec::Pcmu.encode(tone[(at + i) % tone.len()]);
                }
                rtp.send_to(&packet, to).ok();
            }
        });
        let rtp = Arc::clone(&self.rtp);
        let stop = Arc::clone(&self.stop);
        let heard = Arc::clone(&self.heard);
        rtp.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                let Ok((len, _)) = rtp.recv_from(&mut buf) else {
                    continue;
                };
                match RtpHeader::parse(&buf[..len]) {
                    Some(h) if h.payload_type == 0 && len > 12 => {
                        let mut heard = heard.lock().expect("lock");
                        heard.extend(buf[12..len].iter().map(|b| Codec::Pcmu.decode(*b)));
                    }
                    _ => {}
                }
            }
        });
    }

    /// Calls `user@node` and waits for the 200 (then ACKs). Returns the final status line.
    pub fn invite(&self, node: SocketAddr, user: &str) -> String {
        let me = self.sip.local_addr().expect("bound");
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let call_id = format!("sup-test-{}-{n}@127.0.0.1", self.user);
        let from = format!("<sip:{}@127.0.0.1>;tag=t{}{n}", self.user, self.sip_port());
        let to = format!("<sip:{user}@{node}>");
        let sdp = self.sdp();
        let invite = format!(
            "INVITE sip:{user}@{node} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKi{n}{}\r\n\
             Max-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\n\
             CSeq: 1 INVITE\r\nContact: <sip:{}@{me}>\r\nContent-Type: application/sdp\r\n\
             Content-Length: {}\r\n\r\n{sdp}",
            self.sip_port(),
            self.user,
            sdp.len()
        );
        self.sip
            .send_to(invite.as_bytes(), node)
            .expect("send INVITE");
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Ok(resp) = self.responses.recv_timeout(left) else {
                break;
            };
            let status: u16 = resp
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            if status < 200 {
                continue;
            }
            let to_tagged = header(&resp, "To").unwrap_or_default();
            let target = header(&resp, "Contact")
                .and_then(|c| {
                    let start = c.find('<')? + 1;
                    let end = c[start..].find('>')? + start;
                    Some(c[start..end].to_string())
                })
                .unwrap_or_else(|| format!("sip:{node}"));
            let dialog = Dialog {
                call_id: call_id.clone(),
                from: from.clone(),
                to: to_tagged,
                target,
            };
            self.send_in_dialog(&dialog, "ACK", 1, node);
            if status < 300 {
                if let Some(addr) = sdp_addr(body(&resp)) {
                    *self.remote_rtp.lock().expect("lock") = Some(addr);
                }
                *self.dialog.lock().expect("lock") = Some(dialog);
            }
            return resp.lines().next().unwrap_or_default().to_string();
        }
        panic!("no final answer to the INVITE to {user}");
    }

    fn send_in_dialog(&self, d: &Dialog, method: &str, cseq: u32, node: SocketAddr) {
        let me = self.sip.local_addr().expect("bound");
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let msg = format!(
            "{method} {} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKd{n}{}\r\n\
             Max-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {cseq} {method}\r\n\
             Content-Length: 0\r\n\r\n",
            d.target,
            self.sip_port(),
            d.from,
            d.to,
            d.call_id
        );
        self.sip.send_to(msg.as_bytes(), node).expect("send");
    }

    /// Hangs up the call this UA placed.
    pub fn bye(&self, node: SocketAddr) {
        let d = self.dialog.lock().expect("lock").clone();
        if let Some(d) = d {
            self.send_in_dialog(&d, "BYE", 2, node);
        }
    }

    /// Hangs up the last call this UA answered (as the called party: From and To swap).
    pub fn bye_answered(&self) {
        let Some((invite, from)) = self.answered.lock().expect("lock").clone() else {
            panic!("{} answered no call to hang up", self.user);
        };
        let target = header(&invite, "Contact")
            .and_then(|c| {
                let start = c.find('<')? + 1;
                let end = c[start..].find('>')? + start;
                Some(c[start..end].to_string())
            })
            .unwrap_or_else(|| format!("sip:{from}"));
        let to = header(&invite, "To").unwrap_or_default();
        let to = if to.contains("tag=") {
            to
        } else {
            format!("{to};tag=uas1")
        };
        let dialog = Dialog {
            call_id: header(&invite, "Call-ID").unwrap_or_default(),
            from: to,
            to: header(&invite, "From").unwrap_or_default(),
            target,
        };
        self.send_in_dialog(&dialog, "BYE", 1, from);
    }

    /// Sends one key as RFC 4733 events on the call's stream.
    pub fn key(&self, digit: char) {
        let to = self.remote_rtp.lock().expect("lock").expect("in a call");
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let start = 1_000_000 + n * 8000;
        for (i, p) in rfc4733::events_for(digit, start, 120, 20, 10)
            .expect("a key")
            .into_iter()
            .enumerate()
        {
            let mut bytes = vec![0u8; 12 + p.payload.len()];
            RtpHeader {
                marker: p.marker,
                payload_type: 101,
                sequence: 50_000u16.wrapping_add((n * 16) as u16 + i as u16),
                timestamp: p.timestamp,
                ssrc: 0xd7_d7d7,
            }
            .write(&mut bytes);
            bytes[12..].copy_from_slice(&p.payload);
            self.rtp.send_to(&bytes, to).ok();
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Listens afresh; the powers of the three tones in what arrived.
    pub fn listen(&self) -> Hearing {
        self.heard.lock().expect("lock").clear();
        thread::sleep(Duration::from_millis(LISTEN_MS));
        let samples = std::mem::take(&mut *self.heard.lock().expect("lock"));
        // The first 200 ms may still be what was in flight before a change.
        let samples = samples.get(1600..).unwrap_or(&[]);
        Hearing {
            caller: goertzel_power(samples, CALLER_HZ),
            agent: goertzel_power(samples, AGENT_HZ),
            third: goertzel_power(samples, THIRD_HZ),
            samples: samples.len(),
        }
    }
}

impl Drop for Ua {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[derive(Debug)]
pub struct Hearing {
    pub caller: f64,
    pub agent: f64,
    pub third: f64,
    pub samples: usize,
}

impl Hearing {
    /// Asserts that exactly the parties in `heard` were heard: 'c' caller, 'a' agent,
    /// 's' the third party (supervisor or consulted number).
    /// Asserts that audio arrived (hold music, say) but none of the parties in `absent`
    /// ('c', 'a', 's') is in it.
    pub fn expect_none_of(&self, who: &str, absent: &str, node: &Node) {
        assert!(
            self.samples > 2000,
            "{who} heard almost nothing: {self:?}\n{}",
            node.log_tail()
        );
        for (key, power) in [('c', self.caller), ('a', self.agent), ('s', self.third)] {
            if absent.contains(key) {
                assert!(power < ABSENT_MAX, "{who} should not hear {key}: {self:?}");
            }
        }
    }

    pub fn expect(&self, who: &str, heard: &str, node: &Node) {
        assert!(
            self.samples > 2000,
            "{who} heard almost nothing: {self:?}\n{}",
            node.log_tail()
        );
        for (key, power) in [('c', self.caller), ('a', self.agent), ('s', self.third)] {
            if heard.contains(key) {
                assert!(power > HEARD_MIN, "{who} should hear {key}: {self:?}");
            } else {
                assert!(power < ABSENT_MAX, "{who} should not hear {key}: {self:?}");
            }
        }
    }
}

/// The first `name:` header's value.
fn header(msg: &str, name: &str) -> Option<String> {
    msg.lines().take_while(|l| !l.is_empty()).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

fn body(msg: &str) -> &str {
    msg.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// The audio address an SDP body gives.
fn sdp_addr(sdp: &str) -> Option<SocketAddr> {
    let ip = sdp
        .lines()
        .find_map(|l| l.strip_prefix("c=IN IP4 "))?
        .trim();
    let port = sdp
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))?
        .split(' ')
        .next()?;
    format!("{ip}:{port}").parse().ok()
}

/// A response to `request`, copying its Via, From, To (tagged when `tag`), Call-ID, CSeq.
fn response(request: &str, status: &str, extra: &str, body: &str, tag: bool) -> String {
    let mut out = format!("SIP/2.0 {status}\r\n");
    for line in request.lines().take_while(|l| !l.is_empty()) {
        let name = line.split(':').next().unwrap_or_default().trim();
        let lower = name.to_ascii_lowercase();
        match lower.as_str() {
            "via" | "v" | "from" | "f" | "call-id" | "i" | "cseq" => {
                out.push_str(line);
                out.push_str("\r\n");
            }
            "to" | "t" => {
                out.push_str(line);
                if tag && !line.contains("tag=") {
                    out.push_str(";tag=uas1");
                }
                out.push_str("\r\n");
            }
            _ => {}
        }
    }
    out.push_str(extra);
    out.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    out
}

/// Registers `id` (password `pw`) with its Contact at `ua`'s port.
pub fn register_ua(node: &Node, ua: &Ua, id: &str, pw: &str) {
    let csv = node.dir().join(format!("reg-{id}.csv"));
    std::fs::write(&csv, format!("SEQUENTIAL\n{id};{pw};\n")).expect("csv");
    register(
        node,
        &csv,
        1,
        ua.sip_port(),
        3600,
        &format!("register-{id}"),
    )
    .assert_success(id);
}

/// The body of GET /metrics (HTTP/1.0, so the node closes the connection when done).
pub fn get_metrics(node: &Node) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&node.http, Duration::from_secs(5))
        .expect("connect to the node's HTTP address");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .expect("GET /metrics");
    let mut text = String::new();
    stream.read_to_string(&mut text).ok();
    text
}
