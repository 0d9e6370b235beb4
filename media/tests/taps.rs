//! Features riding on the relay, over real loopback sockets: transcoding between legs of
//! different G.711 laws, caller DTMF (RFC 4733 and in-band) delivered to the node once per key,
//! and recording a bridged call to a stereo file with the caller left and the agent right.
//!
//! Every wait is bounded; every test uses its own port range, so tests run in parallel.
#![allow(clippy::disallowed_methods)] // real sockets on a real clock: the waits are wall time

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use carillon_media::codec::{linear_to_alaw, linear_to_ulaw};
use carillon_media::recording::read_stereo;
use carillon_media::rfc4733;
use carillon_media::rtp::RtpHeader;
use carillon_media::{
    tone, CallMedia, Codec, DtmfDigit, DtmfSource, MediaLeg, PortPool, Recorder, Recording,
    RecordingTarget,
};
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

fn packet(pt: u8, ssrc: u32, sequence: u16, timestamp: u32, payload: &[u8]) -> Vec<u8> {
    let mut packet = vec![0u8; 12 + payload.len()];
    RtpHeader {
        marker: false,
        payload_type: pt,
        sequence,
        timestamp,
        ssrc,
    }
    .write(&mut packet);
    packet[12..].copy_from_slice(payload);
    packet
}

/// Receives until a packet with payload type `pt` arrives, or `WAIT` passes.
async fn recv_pt(socket: &UdpSocket, pt: u8) -> Option<(RtpHeader, Vec<u8>)> {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut buf = [0u8; 2048];
    loop {
        let (len, _) = tokio::time::timeout_at(deadline, socket.recv_from(&mut buf))
            .await
            .ok()?
            .ok()?;
        if let Some(header) = RtpHeader::parse(&buf[..len]) {
            if header.payload_type == pt {
                return Some((header, buf[12..len].to_vec()));
            }
        }
    }
}

struct Call {
    media: CallMedia,
    caller: UdpSocket,
    agent: UdpSocket,
    caller_node: SocketAddr,
    agent_node: SocketAddr,
}

async fn bridged_call(pool: &Arc<PortPool>, caller_codec: Codec, agent_codec: Codec) -> Call {
    let caller = phone().await;
    let agent = phone().await;
    let caller_port = pool.allocate().expect("caller pair");
    let caller_node = caller_port.local_addr();
    let media = CallMedia::start(MediaLeg::new(
        caller_port,
        caller_codec,
        Some(addr(&caller)),
    ));
    let agent_port = pool.allocate().expect("agent pair");
    let agent_node = agent_port.local_addr();
    media
        .try_bridge(MediaLeg::new(agent_port, agent_codec, Some(addr(&agent))))
        .expect("task running");
    Call {
        media,
        caller,
        agent,
        caller_node,
        agent_node,
    }
}

#[tokio::test]
async fn legs_of_different_laws_are_transcoded_both_ways() {
    let pool = PortPool::new(LOOPBACK, 43_000, 43_099).expect("valid range");
    let call = bridged_call(&pool, Codec::Pcmu, Codec::Pcma).await;
    let caller_voice = [linear_to_ulaw(1000); 160];
    let agent_voice = [linear_to_alaw(-3000); 160];
    let mut to_agent = None;
    for seq in 0..20u16 {
        call.caller
            .send_to(
                &packet(0, 1, seq, u32::from(seq) * 160, &caller_voice),
                call.caller_node,
            )
            .await
            .expect("send");
        if let Ok(got) = timeout(Duration::from_millis(100), recv_pt(&call.agent, 8)).await {
            to_agent = got;
            break;
        }
    }
    let (_, payload) = to_agent.expect("caller audio reaches the agent as PCMA");
    let expected = linear_to_alaw(Codec::Pcmu.decode(linear_to_ulaw(1000)));
    assert!(payload.iter().all(|b| *b == expected), "{payload:?}");

    let mut to_caller = None;
    for seq in 0..20u16 {
        call.agent
            .send_to(
                &packet(8, 2, seq, u32::from(seq) * 160, &agent_voice),
                call.agent_node,
            )
            .await
            .expect("send");
        if let Ok(got) = timeout(Duration::from_millis(100), recv_pt(&call.caller, 0)).await {
            to_caller = got;
            break;
        }
    }
    let (_, payload) = to_caller.expect("agent audio reaches the caller as PCMU");
    let expected = linear_to_ulaw(Codec::Pcma.decode(linear_to_alaw(-3000)));
    assert!(payload.iter().all(|b| *b == expected));
}

async fn next_digit(digits: &mut tokio::sync::mpsc::Receiver<DtmfDigit>) -> Option<DtmfDigit> {
    timeout(WAIT, digits.recv()).await.ok().flatten()
}

#[tokio::test]
async fn rfc4733_digits_come_once_per_key_and_are_relayed() {
    let pool = PortPool::new(LOOPBACK, 43_100, 43_199).expect("valid range");
    let call = bridged_call(&pool, Codec::Pcmu, Codec::Pcmu).await;
    let mut digits = call.media.take_dtmf().expect("first take");
    assert!(call.media.take_dtmf().is_none(), "only once");
    let mut seq = 0u16;
    for (i, key) in "5#5".chars().enumerate() {
        let start = 8000 * (i as u32 + 1);
        for p in rfc4733::events_for(key, start, 120, 20, 10).expect("a key") {
            let mut bytes = packet(101, 3, seq, p.timestamp, &p.payload);
            bytes[1] |= u8::from(p.marker) << 7;
            call.caller
                .send_to(&bytes, call.caller_node)
                .await
                .expect("send");
            seq = seq.wrapping_add(1);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut got = String::new();
    for _ in 0..3 {
        let digit = next_digit(&mut digits).await.expect("a digit");
        assert_eq!(digit.source, DtmfSource::Rfc4733);
        got.push(digit.digit);
    }
    assert_eq!(got, "5#5");
    assert!(
        timeout(Duration::from_millis(200), digits.recv())
            .await
            .is_err(),
        "repeated end packets gave no more digits"
    );
    // The events also reach the agent.
    let (_, payload) = recv_pt(&call.agent, 101).await.expect("events relayed");
    assert_eq!(payload.len(), 4);
    assert_eq!(call.media.counters().dtmf_digits, 3);
}

#[tokio::test]
async fn in_band_digits_are_detected_in_the_callers_audio_before_bridging() {
    let pool = PortPool::new(LOOPBACK, 43_200, 43_299).expect("valid range");
    let caller = phone().await;
    let caller_port = pool.allocate().expect("caller pair");
    let caller_node = caller_port.local_addr();
    let media = CallMedia::start(MediaLeg::new(caller_port, Codec::Pcma, Some(addr(&caller))));
    let mut digits = media.take_dtmf().expect("first take");
    let mut audio = Vec::new();
    for key in ['4', '2'] {
        audio.extend(std::iter::repeat_n(0i16, 800));
        audio.extend(tone::dtmf(key, 80, 0.2).expect("a key"));
    }
    audio.extend(std::iter::repeat_n(0i16, 1600));
    let mut interval = tokio::time::interval(Duration::from_millis(5));
    for (seq, frame) in audio.chunks(160).enumerate() {
        let mut payload = [0u8; 160];
        Codec::Pcma.encode_into(frame, &mut payload);
        interval.tick().await;
        caller
            .send_to(
                &packet(8, 9, seq as u16, seq as u32 * 160, &payload),
                caller_node,
            )
            .await
            .expect("send");
    }
    let mut got = String::new();
    for _ in 0..2 {
        let digit = next_digit(&mut digits).await.expect("a digit");
        assert_eq!(digit.source, DtmfSource::InBand);
        got.push(digit.digit);
    }
    assert_eq!(got, "42");
}

#[tokio::test]
async fn a_recorded_call_has_the_caller_left_and_the_agent_right() {
    let pool = PortPool::new(LOOPBACK, 43_300, 43_399).expect("valid range");
    let dir = tempfile::tempdir().expect("temp dir");
    let recorder = Recorder::new(Recording {
        dir: dir.path().to_path_buf(),
        enabled: true,
        disk_watermark_bytes: u64::MAX,
        disk_limit_bytes: u64::MAX,
    })
    .expect("recorder");
    let call = bridged_call(&pool, Codec::Pcmu, Codec::Pcma).await;
    call.media
        .start_recording(RecordingTarget {
            recorder: Arc::clone(&recorder),
            call_id: "call-42".into(),
            agent: "alice".into(),
            queue: "support".into(),
            caller: "+15550100".into(),
            start_unix_ms: 1_700_000_000_000,
        })
        .expect("recording starts");
    assert!(
        call.media
            .start_recording(RecordingTarget {
                recorder: Arc::clone(&recorder),
                call_id: "again".into(),
                agent: String::new(),
                queue: String::new(),
                caller: String::new(),
                start_unix_ms: 0,
            })
            .is_err(),
        "one recording per call"
    );
    let caller_voice = [linear_to_ulaw(2000); 160];
    let agent_voice = [linear_to_alaw(-5000); 160];
    let mut interval = tokio::time::interval(Duration::from_millis(20));
    for seq in 0..75u16 {
        interval.tick().await;
        let ts = u32::from(seq) * 160;
        call.caller
            .send_to(&packet(0, 1, seq, ts, &caller_voice), call.caller_node)
            .await
            .expect("send");
        call.agent
            .send_to(&packet(8, 2, seq, 777 + ts, &agent_voice), call.agent_node)
            .await
            .expect("send");
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let meta = call.media.stop_recording().await.expect("a recording");
    assert!(call.media.stop_recording().await.is_none());
    assert_eq!(meta.call_id, "call-42");
    assert!((1400..=1700).contains(&meta.duration_ms), "{meta:?}");
    let (left, right) = read_stereo(&meta.path).expect("a valid file");
    let caller_level = Codec::Pcmu.decode(linear_to_ulaw(2000));
    let agent_level = Codec::Pcma.decode(linear_to_alaw(-5000));
    let share = |channel: &[i16], level: i16| {
        channel.iter().filter(|s| **s == level).count() as f64 / channel.len() as f64
    };
    assert!(share(&left, caller_level) > 0.9, "left is the caller");
    assert!(share(&right, agent_level) > 0.9, "right is the agent");
    assert_eq!(left.iter().filter(|s| **s == agent_level).count(), 0);
    assert_eq!(right.iter().filter(|s| **s == caller_level).count(), 0);
    assert_eq!(call.media.counters().recording_frames_dropped, 0);
}
