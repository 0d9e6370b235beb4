//! A third leg (a supervisor) on a bridged call, over real loopback sockets: three phones
//! each send their own tone, and a Goertzel measure of what each receives shows who hears
//! whom in monitor, whisper and barge, after a take-over, and after the third leaves. The
//! third leg's RFC 4733 keys reach the node.
#![allow(clippy::disallowed_methods)] // real sockets on a real clock: the waits are wall time

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use carillon_media::mix::goertzel_power;
use carillon_media::rfc4733;
use carillon_media::rtp::RtpHeader;
use carillon_media::{tone, CallMedia, Codec, MediaLeg, PortPool, ThirdMode};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tokio::time::timeout;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const CALLER_HZ: f64 = 440.0;
const AGENT_HZ: f64 = 1000.0;
const THIRD_HZ: f64 = 1700.0;
/// Goertzel power (normalised) above which a tone counts as heard, and below which as
/// absent. A 0.3 full-scale tone measures about 2e7.
const HEARD_MIN: f64 = 1e5;
const ABSENT_MAX: f64 = 1e4;
/// How long each measurement listens: long enough that a loaded machine (the whole suite in parallel) still delivers well over
/// the 1,600 samples `expect` asks for.
const LISTEN_MS: u64 = 900;

/// A phone: sends its tone every 20 ms (while `talking`) and keeps what it hears.
struct Phone {
    socket: Arc<UdpSocket>,
    heard: Arc<Mutex<Vec<i16>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Phone {
    async fn new() -> Phone {
        let socket = UdpSocket::bind((LOOPBACK, 0)).await.expect("bind loopback");
        Phone {
            socket: Arc::new(socket),
            heard: Arc::new(Mutex::new(Vec::new())),
            tasks: Vec::new(),
        }
    }

    fn addr(&self) -> SocketAddr {
        self.socket.local_addr().expect("bound")
    }

    /// Starts sending `hz` to `node` (PCMU) and recording what arrives.
    fn talk(&mut self, node: SocketAddr, hz: f64, ssrc: u32) {
        let socket = Arc::clone(&self.socket);
        self.tasks.push(tokio::spawn(async move {
            let tone = tone::sine(hz as f32, 1000, 0.3);
            let mut clock = tokio::time::interval(Duration::from_millis(20));
            for n in 0u32..1500 {
                clock.tick().await;
                let at = (n as usize * 160) % tone.len();
                let mut packet = vec![0u8; 12 + 160];
                RtpHeader {
                    marker: false,
                    payload_type: 0,
                    sequence: n as u16,
                    timestamp: n * 160,
                    ssrc,
                }
                .write(&mut packet);
                for (i, out) in packet[12..].iter_mut().enumerate() {
                    *out = Codec::Pcmu.encode(tone[(at + i) % tone.len()]);
                }
                socket.send_to(&packet, node).await.ok();
            }
        }));
        let socket = Arc::clone(&self.socket);
        let heard = Arc::clone(&self.heard);
        self.tasks.push(tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            while let Ok((len, _)) = socket.recv_from(&mut buf).await {
                let Some(header) = RtpHeader::parse(&buf[..len]) else {
                    continue;
                };
                if header.payload_type != 0 || len <= 12 {
                    continue;
                }
                let mut heard = heard.lock().expect("not poisoned");
                heard.extend(buf[12..len].iter().map(|b| Codec::Pcmu.decode(*b)));
            }
        }));
    }

    /// Listens afresh for [`LISTEN_MS`]; returns the power of each tone heard.
    async fn listen(&self) -> Hearing {
        self.heard.lock().expect("not poisoned").clear();
        tokio::time::sleep(Duration::from_millis(LISTEN_MS)).await;
        let samples = std::mem::take(&mut *self.heard.lock().expect("not poisoned"));
        // Skip the first 100 ms: what was in flight from before the change.
        let samples = samples.get(800..).unwrap_or(&[]);
        Hearing {
            caller: goertzel_power(samples, CALLER_HZ),
            agent: goertzel_power(samples, AGENT_HZ),
            third: goertzel_power(samples, THIRD_HZ),
            samples: samples.len(),
        }
    }
}

impl Drop for Phone {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

#[derive(Debug)]
struct Hearing {
    caller: f64,
    agent: f64,
    third: f64,
    samples: usize,
}

impl Hearing {
    /// Asserts exactly `heard` (a subset of "cat": caller, agent, third) was heard.
    fn expect(&self, who: &str, heard: &str) {
        assert!(self.samples > 1600, "{who} heard almost nothing: {self:?}");
        for (key, power) in [('c', self.caller), ('a', self.agent), ('t', self.third)] {
            if heard.contains(key) {
                assert!(power > HEARD_MIN, "{who} should hear {key}: {self:?}");
            } else {
                assert!(power < ABSENT_MAX, "{who} should not hear {key}: {self:?}");
            }
        }
    }
}

#[tokio::test]
async fn a_third_leg_hears_and_is_heard_as_its_mode_says() {
    let pool = PortPool::new(LOOPBACK, 43_300, 43_399).expect("valid range");
    let (mut caller, mut agent, mut third) =
        (Phone::new().await, Phone::new().await, Phone::new().await);
    let caller_port = pool.allocate().expect("caller pair");
    let caller_node = caller_port.local_addr();
    let media = CallMedia::start(MediaLeg::new(caller_port, Codec::Pcmu, Some(caller.addr())));
    let agent_port = pool.allocate().expect("agent pair");
    let agent_node = agent_port.local_addr();
    media
        .try_bridge(MediaLeg::new(agent_port, Codec::Pcmu, Some(agent.addr())))
        .expect("running");
    caller.talk(caller_node, CALLER_HZ, 1);
    agent.talk(agent_node, AGENT_HZ, 2);
    caller.listen().await.expect("caller", "a");

    let third_port = pool.allocate().expect("third pair");
    let third_node = third_port.local_addr();
    let mut digits = media
        .try_join_third(
            MediaLeg::new(third_port, Codec::Pcmu, Some(third.addr())),
            ThirdMode::Monitor,
        )
        .expect("running");
    third.talk(third_node, THIRD_HZ, 3);
    tokio::time::sleep(Duration::from_millis(100)).await;

    let (c, a, t) = tokio::join!(caller.listen(), agent.listen(), third.listen());
    c.expect("caller in monitor", "a");
    a.expect("agent in monitor", "c");
    t.expect("third in monitor", "ca");

    media
        .try_set_third_mode(ThirdMode::Whisper)
        .expect("running");
    let (c, a, t) = tokio::join!(caller.listen(), agent.listen(), third.listen());
    c.expect("caller in whisper", "a");
    a.expect("agent in whisper", "ct");
    t.expect("third in whisper", "ca");

    media.try_set_third_mode(ThirdMode::Barge).expect("running");
    let (c, a, t) = tokio::join!(caller.listen(), agent.listen(), third.listen());
    c.expect("caller in barge", "at");
    a.expect("agent in barge", "ct");
    t.expect("third in barge", "ca");

    // The third's keys reach the node.
    for p in rfc4733::events_for('4', 500_000, 120, 20, 10).expect("a key") {
        let mut bytes = vec![0u8; 12 + p.payload.len()];
        RtpHeader {
            marker: p.marker,
            payload_type: 101,
            sequence: 40_000,
            timestamp: p.timestamp,
            ssrc: 3,
        }
        .write(&mut bytes);
        bytes[12..].copy_from_slice(&p.payload);
        third
            .socket
            .send_to(&bytes, third_node)
            .await
            .expect("send");
    }
    let digit = timeout(Duration::from_secs(2), digits.recv())
        .await
        .expect("a key in time")
        .expect("a key");
    assert_eq!(digit.digit, '4');

    media.try_promote_third().expect("running");
    let (c, t) = tokio::join!(caller.listen(), third.listen());
    c.expect("caller after take-over", "t");
    t.expect("third after take-over", "c");
    let counters = media.counters();
    assert!(counters.third_packets_in > 50, "{counters:?}");
    assert!(counters.mixed_packets_out > 50, "{counters:?}");
}

#[tokio::test]
async fn a_third_leg_that_leaves_leaves_the_call_as_it_was() {
    let pool = PortPool::new(LOOPBACK, 43_400, 43_499).expect("valid range");
    let (mut caller, mut agent, mut third) =
        (Phone::new().await, Phone::new().await, Phone::new().await);
    let caller_port = pool.allocate().expect("caller pair");
    let caller_node = caller_port.local_addr();
    let media = CallMedia::start(MediaLeg::new(caller_port, Codec::Pcmu, Some(caller.addr())));
    let agent_port = pool.allocate().expect("agent pair");
    let agent_node = agent_port.local_addr();
    media
        .try_bridge(MediaLeg::new(agent_port, Codec::Pcmu, Some(agent.addr())))
        .expect("running");
    caller.talk(caller_node, CALLER_HZ, 1);
    agent.talk(agent_node, AGENT_HZ, 2);
    let third_port = pool.allocate().expect("third pair");
    let third_node = third_port.local_addr();
    let _digits = media
        .try_join_third(
            MediaLeg::new(third_port, Codec::Pcmu, Some(third.addr())),
            ThirdMode::Barge,
        )
        .expect("running");
    third.talk(third_node, THIRD_HZ, 3);
    tokio::time::sleep(Duration::from_millis(100)).await;
    caller.listen().await.expect("caller in barge", "at");
    media.try_drop_third().expect("running");
    let (c, t) = tokio::join!(caller.listen(), third.listen());
    c.expect("caller after the third left", "a");
    assert_eq!(t.samples, 0, "the third hears nothing once gone: {t:?}");
}
