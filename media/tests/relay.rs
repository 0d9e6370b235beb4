//! The call media task over real loopback sockets: hold music pacing and codec, bridging both
//! ways, symmetric latching, one continuous stream across the hold -> bridge switch, RTCP relay,
//! hostile input, and ports going back to the pool.
//!
//! Every wait is bounded; every test uses its own port range, so tests run in parallel.
#![allow(clippy::disallowed_methods)] // real sockets on a real clock: the waits are wall time

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use carillon_media::rtp::RtpHeader;
use carillon_media::{tone, CallMedia, Codec, MediaError, MediaLeg, PortPool, Prompt};
use tokio::net::UdpSocket;
use tokio::time::timeout;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const WAIT: Duration = Duration::from_secs(2);

async fn phone() -> UdpSocket {
    UdpSocket::bind((LOOPBACK, 0))
        .await
        .expect("bind a loopback socket")
}

fn addr(socket: &UdpSocket) -> SocketAddr {
    socket.local_addr().expect("bound socket has an address")
}

fn rtp(ssrc: u32, sequence: u16, payload: &[u8]) -> Vec<u8> {
    let mut packet = vec![0u8; 12 + payload.len()];
    RtpHeader {
        marker: false,
        payload_type: 0,
        sequence,
        timestamp: u32::from(sequence) * 160,
        ssrc,
    }
    .write(&mut packet);
    packet[12..].copy_from_slice(payload);
    packet
}

/// The next RTP packet on `socket` within `WAIT`: header, payload and source.
async fn recv_rtp(socket: &UdpSocket) -> Option<(RtpHeader, Vec<u8>, SocketAddr)> {
    let mut buf = [0u8; 2048];
    let (len, source) = timeout(WAIT, socket.recv_from(&mut buf)).await.ok()?.ok()?;
    let header = RtpHeader::parse(&buf[..len])?;
    Some((header, buf[12..len].to_vec(), source))
}

/// Receives until a packet whose payload is `payload` arrives (prompt packets may be queued
/// ahead of it), or gives up after `WAIT`.
async fn recv_payload(socket: &UdpSocket, payload: &[u8]) -> Option<(RtpHeader, SocketAddr)> {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut buf = [0u8; 2048];
    loop {
        let (len, source) = tokio::time::timeout_at(deadline, socket.recv_from(&mut buf))
            .await
            .ok()?
            .ok()?;
        if let Some(header) = RtpHeader::parse(&buf[..len]) {
            if &buf[12..len] == payload {
                return Some((header, source));
            }
        }
    }
}

fn music() -> Arc<Prompt> {
    Arc::new(Prompt::from_pcm(tone::hold_music(1)))
}

#[tokio::test]
async fn hold_music_reaches_the_caller_at_fifty_packets_per_second() {
    let pool = PortPool::new(LOOPBACK, 42_000, 42_099).expect("valid range");
    let caller = phone().await;
    let port = pool.allocate().expect("a free pair");
    let mut media = CallMedia::start(MediaLeg::new(port, Codec::Pcmu, Some(addr(&caller))));
    let prompt = music();
    media
        .try_play_loop(Arc::clone(&prompt))
        .expect("task running");

    let first = recv_rtp(&caller).await.expect("hold music arrives");
    let started = tokio::time::Instant::now();
    let mut count = 1u32;
    let mut last = first.0;
    let expected_frames = prompt.frames(Codec::Pcmu);
    while started.elapsed() < Duration::from_millis(1000) {
        let Some((header, payload, _)) = recv_rtp(&caller).await else {
            break;
        };
        assert_eq!(header.payload_type, 0, "PCMU");
        assert_eq!(payload.len(), 160, "20 ms of G.711");
        assert!(
            expected_frames.iter().any(|f| f[..] == payload[..]),
            "a frame of the prompt"
        );
        assert_eq!(header.ssrc, first.0.ssrc);
        assert_eq!(header.sequence, last.sequence.wrapping_add(1));
        assert_eq!(header.timestamp, last.timestamp.wrapping_add(160));
        last = header;
        count += 1;
    }
    // ~50 per second; generous bounds for a loaded two-core machine.
    assert!((35..=60).contains(&count), "{count} packets in one second");
    assert!(media.counters().prompt_packets_out >= u64::from(count));
    media.shutdown().await;
    assert_eq!(pool.in_use(), 0, "ports back in the pool");
}

#[tokio::test]
async fn pcma_leg_gets_pcma_music() {
    let pool = PortPool::new(LOOPBACK, 42_100, 42_199).expect("valid range");
    let caller = phone().await;
    let port = pool.allocate().expect("a free pair");
    let media = CallMedia::start(MediaLeg::new(port, Codec::Pcma, Some(addr(&caller))));
    let prompt = music();
    media
        .try_play_loop(Arc::clone(&prompt))
        .expect("task running");
    let (header, payload, _) = recv_rtp(&caller).await.expect("hold music arrives");
    assert_eq!(header.payload_type, 8);
    assert_eq!(payload[..], prompt.frames(Codec::Pcma)[0][..]);
}

#[tokio::test]
async fn bridge_relays_both_ways_latches_and_keeps_one_stream() {
    let pool = PortPool::new(LOOPBACK, 42_200, 42_299).expect("valid range");
    // Each phone's SDP names one socket, but it really sends from another (as behind NAT).
    let caller_sdp = phone().await;
    let caller_real = phone().await;
    let agent_sdp = phone().await;
    let agent_real = phone().await;

    let caller_port = pool.allocate().expect("caller pair");
    let caller_node = caller_port.local_addr();
    let mut media = CallMedia::start(MediaLeg::new(
        caller_port,
        Codec::Pcmu,
        Some(addr(&caller_sdp)),
    ));
    media.try_play_loop(music()).expect("task running");

    // Before the caller sends, music goes to the SDP address.
    let (hold, _, from) = recv_rtp(&caller_sdp)
        .await
        .expect("music to the SDP address");
    assert_eq!(
        from, caller_node,
        "sent from the port in our SDP (symmetric RTP)"
    );
    let caller_ssrc = hold.ssrc;

    // The caller's first packet latches the leg to where it really is.
    caller_real
        .send_to(&rtp(1111, 500, &[0xAA; 160]), caller_node)
        .await
        .expect("send");
    let (music_after_latch, _, _) = recv_rtp(&caller_real)
        .await
        .expect("music follows the latch");
    assert_eq!(music_after_latch.ssrc, caller_ssrc);

    // The agent answers; bridging stops the music.
    let agent_port = pool.allocate().expect("agent pair");
    let agent_node = agent_port.local_addr();
    media
        .try_bridge(MediaLeg::new(
            agent_port,
            Codec::Pcmu,
            Some(addr(&agent_sdp)),
        ))
        .expect("task running");

    // Caller -> agent: to the agent's SDP address until the agent sends.
    let caller_voice = [0x11u8; 160];
    let mut delivered = None;
    for seq in 501..520u16 {
        caller_real
            .send_to(&rtp(1111, seq, &caller_voice), caller_node)
            .await
            .expect("send");
        if let Ok(Some(got)) = timeout(
            Duration::from_millis(100),
            recv_payload(&agent_sdp, &caller_voice),
        )
        .await
        {
            delivered = Some(got);
            break;
        }
    }
    let (to_agent, from) = delivered.expect("caller audio reaches the agent's SDP address");
    assert_eq!(from, agent_node);
    assert_ne!(to_agent.ssrc, 1111, "the node's own SSRC towards the agent");

    // Agent -> caller, from the agent's real address; the caller sees the hold stream go on.
    let agent_voice = [0x22u8; 160];
    let mut agent_seq = 9000u16;
    agent_real
        .send_to(&rtp(2222, agent_seq, &agent_voice), agent_node)
        .await
        .expect("send");
    let (relayed, from) = recv_payload(&caller_real, &agent_voice)
        .await
        .expect("agent audio reaches the caller's latched address");
    assert_eq!(from, caller_node);
    assert_eq!(relayed.ssrc, caller_ssrc, "one SSRC across hold -> bridge");
    assert!(
        relayed.sequence.wrapping_sub(music_after_latch.sequence) < 1000,
        "sequence continues from the music: {} after {}",
        relayed.sequence,
        music_after_latch.sequence
    );
    let mut last_seq = relayed.sequence;
    for _ in 0..5 {
        agent_seq += 1;
        agent_real
            .send_to(&rtp(2222, agent_seq, &agent_voice), agent_node)
            .await
            .expect("send");
        let (next, _) = recv_payload(&caller_real, &agent_voice)
            .await
            .expect("relayed");
        assert_eq!(next.ssrc, caller_ssrc);
        assert_eq!(next.sequence, last_seq.wrapping_add(1));
        last_seq = next.sequence;
    }

    // Now the agent leg is latched too: caller audio goes to the agent's real address.
    caller_real
        .send_to(&rtp(1111, 600, &caller_voice), caller_node)
        .await
        .expect("send");
    let (latched, _) = recv_payload(&agent_real, &caller_voice)
        .await
        .expect("caller audio follows the agent's latch");
    assert_eq!(latched.ssrc, to_agent.ssrc);

    let counters = media.counters();
    assert!(counters.caller_to_agent_packets >= 2, "{counters:?}");
    assert_eq!(counters.agent_to_caller_packets, 6, "{counters:?}");
    assert_eq!(counters.agent_packets_in, 6, "{counters:?}");
    assert!(counters.caller_packets_in >= 3, "{counters:?}");
    media.shutdown().await;
    assert_eq!(pool.in_use(), 0, "both legs' ports back in the pool");
}

#[tokio::test]
async fn hostile_and_foreign_packets_are_dropped() {
    let pool = PortPool::new(LOOPBACK, 42_300, 42_399).expect("valid range");
    let caller = phone().await;
    let stranger = phone().await;
    let agent = phone().await;
    let caller_port = pool.allocate().expect("caller pair");
    let caller_node = caller_port.local_addr();
    let media = CallMedia::start(MediaLeg::new(caller_port, Codec::Pcmu, Some(addr(&caller))));
    let agent_port = pool.allocate().expect("agent pair");
    media
        .try_bridge(MediaLeg::new(agent_port, Codec::Pcmu, Some(addr(&agent))))
        .expect("task running");

    caller
        .send_to(&[0x80, 0, 1], caller_node)
        .await
        .expect("send"); // too short
    caller
        .send_to(&[0x40; 40], caller_node)
        .await
        .expect("send"); // RTP version 1
    caller
        .send_to(&rtp(1, 1, &[0x33; 160]), caller_node)
        .await
        .expect("send"); // latches
    stranger
        .send_to(&rtp(2, 1, &[0x44; 160]), caller_node)
        .await
        .expect("send"); // foreign

    let (_, from) = recv_payload(&agent, &[0x33; 160])
        .await
        .expect("the real caller is relayed");
    assert_eq!(from.ip(), LOOPBACK);
    // Give the stranger's packet time to be (not) relayed, then check what the agent got.
    let mut buf = [0u8; 2048];
    let extra = timeout(Duration::from_millis(200), agent.recv_from(&mut buf)).await;
    assert!(extra.is_err(), "nothing else reaches the agent");
    let counters = media.counters();
    assert_eq!(counters.invalid_packets_dropped, 2, "{counters:?}");
    assert_eq!(counters.foreign_packets_dropped, 1, "{counters:?}");
    assert_eq!(counters.caller_to_agent_packets, 1, "{counters:?}");
}

/// Binds an RTP/RTCP-style pair of adjacent loopback ports for a fake phone.
async fn phone_pair(from: u16, to: u16) -> (UdpSocket, UdpSocket) {
    for port in (from..to).step_by(2) {
        let Ok(rtp) = UdpSocket::bind((LOOPBACK, port)).await else {
            continue;
        };
        if let Ok(rtcp) = UdpSocket::bind((LOOPBACK, port + 1)).await {
            return (rtp, rtcp);
        }
    }
    panic!("no free port pair in {from}-{to}");
}

#[tokio::test]
async fn rtcp_goes_to_the_other_legs_port_plus_one() {
    let pool = PortPool::new(LOOPBACK, 42_400, 42_499).expect("valid range");
    let (caller_rtp, caller_rtcp) = phone_pair(42_500, 42_600).await;
    let (agent_rtp, agent_rtcp) = phone_pair(42_600, 42_700).await;
    let caller_port = pool.allocate().expect("caller pair");
    let caller_node_rtcp = caller_port.rtcp_addr();
    let media = CallMedia::start(MediaLeg::new(
        caller_port,
        Codec::Pcmu,
        Some(addr(&caller_rtp)),
    ));
    let agent_port = pool.allocate().expect("agent pair");
    let agent_node_rtcp = agent_port.rtcp_addr();
    media
        .try_bridge(MediaLeg::new(
            agent_port,
            Codec::Pcmu,
            Some(addr(&agent_rtp)),
        ))
        .expect("task running");

    let receiver_report = [0x80, 201, 0, 1, 0, 0, 0x11, 0x11];
    let mut got = None;
    // The bridge command may not have been applied yet when the first report arrives.
    for _ in 0..20 {
        caller_rtcp
            .send_to(&receiver_report, caller_node_rtcp)
            .await
            .expect("send");
        let mut buf = [0u8; 64];
        if let Ok(Ok((len, from))) =
            timeout(Duration::from_millis(100), agent_rtcp.recv_from(&mut buf)).await
        {
            got = Some((buf[..len].to_vec(), from));
            break;
        }
    }
    let (packet, from) = got.expect("RTCP relayed to the agent's RTP port + 1");
    assert_eq!(packet, receiver_report);
    assert_eq!(from, agent_node_rtcp);

    agent_rtcp
        .send_to(&receiver_report, agent_node_rtcp)
        .await
        .expect("send");
    let mut buf = [0u8; 64];
    let (len, from) = timeout(WAIT, caller_rtcp.recv_from(&mut buf))
        .await
        .expect("RTCP relayed to the caller")
        .expect("receive");
    assert_eq!(
        (&buf[..len], from),
        (&receiver_report[..], caller_node_rtcp)
    );
    assert!(media.counters().rtcp_packets_relayed >= 2);
}

#[tokio::test]
async fn ports_are_reused_and_stopped_sessions_say_so() {
    let pool = PortPool::new(LOOPBACK, 42_700, 42_703).expect("two pairs");
    let mut seen = HashSet::new();
    for _ in 0..6 {
        let port = pool.allocate().expect("pairs come back after each call");
        seen.insert(port.local_addr().port());
        let mut media = CallMedia::start(MediaLeg::new(port, Codec::Pcmu, None));
        assert!(media.try_play_loop(music()).is_ok());
        media.shutdown().await;
        assert_eq!(pool.in_use(), 0);
    }
    assert!(!seen.is_empty() && seen.len() <= 2);

    let port = pool.allocate().expect("a pair");
    let mut media = CallMedia::start(MediaLeg::new(port, Codec::Pcmu, None));
    // stop() frees the ports asynchronously, and later requests say the session ended.
    media.stop();
    assert!(!media.is_running());
    let err = media.try_play_loop(music()).expect_err("stopped");
    assert!(matches!(err, MediaError::SessionEnded), "{err}");
    media.play_loop(music()); // logged, not a panic
    let deadline = tokio::time::Instant::now() + WAIT;
    while pool.in_use() != 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(pool.in_use(), 0);
}
