//! The per-call media task: the tokio adapter around the sans-IO [`Latch`] and
//! [`StreamRewriter`] cores.
//!
//! One task per call owns every socket of the call (caller RTP/RTCP, agent RTP/RTCP) and waits
//! on all of them, the prompt clock and the command channel in one `select!`. On RTP readiness it
//! reads every queued datagram with one `recvmmsg` into the thread's preallocated batch
//! ([`udp_batch`](crate::udp_batch)), rewrites (and, between legs of different G.711 laws,
//! transcodes) them in place and forwards them with one `sendmmsg`, so the hot path neither
//! allocates nor copies. Off that path, and never able to hold it up: caller DTMF (RFC 4733
//! events, and in-band tones in the decoded audio) goes to a bounded channel for the node, and a
//! recording tap copies payloads to a bounded channel for the recording's writer task.
#![allow(clippy::disallowed_methods)] // this adapter is where wall-clock time enters the cores

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::{Interval, MissedTickBehavior};

use crate::codec::{self, Codec};
use crate::dtmf::DtmfDetector;
use crate::latch::Latch;
use crate::mix::{Mixer, Party, ThirdMode};
use crate::pool::RtpPort;
use crate::prompt::{Prompt, FRAME_MS, FRAME_SAMPLES};
use crate::recording::{self, RecordedFrame, FRAME_PAYLOAD_BYTES_MAX};
use crate::rewrite::StreamRewriter;
use crate::rfc4733::EventDetector;
use crate::rtp::{self, RtpHeader, HEADER_LEN, PACKET_BYTES_MAX};
use crate::session::{DtmfDigit, DtmfSource, MediaLeg, SharedCounters};
use crate::udp_batch::{self, Batch, BATCH_PACKETS_MAX};

/// Datagrams read from one socket per wake-up before the other sockets get a turn.
const DRAIN_PACKETS_MAX: usize = 64;
/// Batches read from one RTP socket per wake-up before the other sockets get a turn.
const DRAIN_BATCHES_MAX: usize = 4;
/// The SSRC of the prompt player's internal stream; the rewriter maps it onto the caller's
/// outgoing SSRC like any other source.
const PROMPT_SSRC: u32 = 0x0C0F_FEE5;
/// The SSRC of the mixer's internal streams (one per listener, each through its own
/// rewriter).
const MIX_SSRC: u32 = 0x0000_AD1C;

/// What the node asks of a running call.
#[derive(Debug)]
pub(crate) enum Command {
    PlayLoop(Arc<Prompt>),
    StopPlayback,
    Bridge(MediaLeg),
    /// Start detecting the caller's DTMF and deliver digits here.
    Dtmf(mpsc::Sender<DtmfDigit>),
    StartRecording(RecordingTap),
    StopRecording,
    /// A third leg (a supervisor) joins in `mode`; its digits go to the sender.
    JoinThird(MediaLeg, ThirdMode, mpsc::Sender<DtmfDigit>),
    SetThirdMode(ThirdMode),
    DropThird,
    /// The third leg replaces the agent leg (take-over); the old agent leg closes.
    PromoteThird,
}

/// The relay's end of a recording: where frames go, and the count of those that could not.
#[derive(Debug)]
pub(crate) struct RecordingTap {
    pub(crate) frames: mpsc::Sender<RecordedFrame>,
    pub(crate) dropped: Arc<AtomicU64>,
    pub(crate) started: Instant,
}

/// Caller DTMF detection, on once the node has asked for digits.
struct DtmfTap {
    digits: mpsc::Sender<DtmfDigit>,
    events: EventDetector,
    in_band: DtmfDetector,
    /// Set by the first RFC 4733 event: a phone that signals out of band may also leave the
    /// tones in its audio, and each key must count once.
    rfc4733_seen: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Caller,
    Agent,
    Third,
}

impl Side {
    fn party(self) -> Party {
        match self {
            Side::Caller => Party::Caller,
            Side::Agent => Party::Agent,
            Side::Third => Party::Third,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Channel {
    Rtp,
    Rtcp,
}

enum Event {
    Command(Option<Command>),
    /// A mask of the [`SOURCES`] bits (and [`TICK`]) that are ready.
    Ready(u8),
    Failed(Side, Channel, io::Error),
}

/// The sockets a call task waits on, each with its bit in [`Event::Ready`].
const SOURCES: [(u8, Side, Channel); 4] = [
    (1, Side::Caller, Channel::Rtp),
    (2, Side::Agent, Channel::Rtp),
    (4, Side::Caller, Channel::Rtcp),
    (8, Side::Agent, Channel::Rtcp),
];
/// The prompt clock's bit in [`Event::Ready`].
const TICK: u8 = 16;
/// The third leg's RTP and RTCP sockets, and the mixer's clock.
const THIRD_RTP: u8 = 32;
const THIRD_RTCP: u8 = 64;
const MIX_TICK: u8 = 128;

struct Leg {
    rtp: UdpSocket,
    rtcp: UdpSocket,
    codec: Codec,
    telephone_event: Option<u8>,
    latch: Latch,
    /// Declared after the sockets so that they close before the port returns to the pool.
    _port: RtpPort,
}

impl Leg {
    fn open(mut leg: MediaLeg) -> io::Result<Leg> {
        let (rtp, rtcp) = leg
            .port
            .take_sockets()
            .ok_or_else(|| io::Error::other("RTP port handed to two media legs"))?;
        Ok(Leg {
            rtp: UdpSocket::from_std(rtp)?,
            rtcp: UdpSocket::from_std(rtcp)?,
            codec: leg.codec,
            telephone_event: leg.telephone_event,
            latch: Latch::new(leg.remote),
            _port: leg.port,
        })
    }
}

/// The looping prompt being played to the caller.
struct Playback {
    prompt: Arc<Prompt>,
    next_frame: usize,
    clock: Interval,
}

/// A third leg and the mixing it needs.
struct Third {
    leg: Leg,
    mode: ThirdMode,
    to_third: StreamRewriter,
    mixer: Box<Mixer>,
    clock: Interval,
    /// The mixer's own sequence and timestamp (the rewriters map them per listener).
    sequence: u16,
    timestamp: u32,
    dtmf: DtmfTap,
}

struct Relay {
    caller: Leg,
    agent: Option<Leg>,
    third: Option<Third>,
    to_caller: StreamRewriter,
    to_agent: StreamRewriter,
    playback: Option<Playback>,
    /// The prompt player's own sequence and timestamp, kept across prompts.
    prompt_sequence: u16,
    prompt_timestamp: u32,
    ssrc_seed: u64,
    streams_started: u64,
    counters: Arc<SharedCounters>,
    /// Payload maps between the legs' laws when they differ: caller to agent, agent to caller.
    transcode: Option<Box<[[u8; 256]; 2]>>,
    dtmf: Option<DtmfTap>,
    recording: Option<RecordingTap>,
    buf: Box<[u8; PACKET_BYTES_MAX + 1]>,
}

/// Runs a call's media until the handle is dropped (the command channel closes) or the task is
/// aborted.
pub(crate) async fn run(
    caller: MediaLeg,
    mut commands: mpsc::Receiver<Command>,
    counters: Arc<SharedCounters>,
    ssrc_seed: u64,
) {
    let local = caller.local_addr();
    let caller = match Leg::open(caller) {
        Ok(leg) => leg,
        Err(error) => {
            tracing::error!(%local, %error, "cannot start call media");
            return;
        }
    };
    let mut relay = Relay {
        caller,
        agent: None,
        third: None,
        to_caller: StreamRewriter::new(derive_ssrc(ssrc_seed, 0)),
        to_agent: StreamRewriter::new(derive_ssrc(ssrc_seed, 1)),
        playback: None,
        prompt_sequence: 0,
        prompt_timestamp: 0,
        ssrc_seed,
        streams_started: 2,
        counters,
        transcode: None,
        dtmf: None,
        recording: None,
        buf: Box::new([0; PACKET_BYTES_MAX + 1]),
    };
    tracing::debug!(%local, "call media started");
    relay.run(&mut commands).await;
    tracing::debug!(%local, "call media ended");
}

impl Relay {
    async fn run(&mut self, commands: &mut mpsc::Receiver<Command>) {
        loop {
            // Commands first: a bridge sent before a packet arrived applies to that packet.
            loop {
                match commands.try_recv() {
                    Ok(command) => self.on_command(command),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => return,
                }
            }
            // One poll over every source per wake-up: cheaper than `select!`, which would build
            // and register six futures per packet, and every ready socket is served in turn.
            let event = std::future::poll_fn(|cx| self.poll_event(cx, commands)).await;
            match event {
                Event::Command(None) => return,
                Event::Command(Some(command)) => self.on_command(command),
                Event::Ready(ready) => {
                    for (bit, side, channel) in SOURCES {
                        if ready & bit == 0 {
                            continue;
                        }
                        match channel {
                            Channel::Rtp => self.drain_rtp(side),
                            Channel::Rtcp => self.drain_rtcp(side),
                        }
                    }
                    if ready & THIRD_RTP != 0 {
                        self.drain_rtp(Side::Third);
                    }
                    if ready & THIRD_RTCP != 0 {
                        self.drain_rtcp(Side::Third);
                    }
                    if ready & TICK != 0 {
                        self.send_prompt_frame();
                    }
                    if ready & MIX_TICK != 0 {
                        self.send_mixed_frames();
                    }
                }
                Event::Failed(side, channel, error) => {
                    // Readiness errors mean the socket itself is broken; the call cannot go on.
                    tracing::error!(?side, ?channel, %error, "media socket failed");
                    return;
                }
            }
        }
    }

    fn poll_event(
        &mut self,
        cx: &mut std::task::Context<'_>,
        commands: &mut mpsc::Receiver<Command>,
    ) -> Poll<Event> {
        if let Poll::Ready(command) = commands.poll_recv(cx) {
            return Poll::Ready(Event::Command(command));
        }
        let mut ready = 0u8;
        for (bit, side, channel) in SOURCES {
            let leg = match side {
                Side::Caller => &self.caller,
                Side::Agent => match &self.agent {
                    Some(agent) => agent,
                    None => continue,
                },
                Side::Third => continue,
            };
            let socket = match channel {
                Channel::Rtp => &leg.rtp,
                Channel::Rtcp => &leg.rtcp,
            };
            match socket.poll_recv_ready(cx) {
                Poll::Ready(Ok(())) => ready |= bit,
                Poll::Ready(Err(error)) => return Poll::Ready(Event::Failed(side, channel, error)),
                Poll::Pending => {}
            }
        }
        if let Some(playback) = self.playback.as_mut() {
            if playback.clock.poll_tick(cx).is_ready() {
                ready |= TICK;
            }
        }
        if let Some(third) = self.third.as_mut() {
            for (bit, socket) in [(THIRD_RTP, &third.leg.rtp), (THIRD_RTCP, &third.leg.rtcp)] {
                match socket.poll_recv_ready(cx) {
                    Poll::Ready(Ok(())) => ready |= bit,
                    Poll::Ready(Err(error)) => {
                        return Poll::Ready(Event::Failed(Side::Third, Channel::Rtp, error))
                    }
                    Poll::Pending => {}
                }
            }
            if third.clock.poll_tick(cx).is_ready() {
                ready |= MIX_TICK;
            }
        }
        if ready == 0 {
            Poll::Pending
        } else {
            Poll::Ready(Event::Ready(ready))
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::PlayLoop(prompt) => {
                let mut clock = tokio::time::interval(Duration::from_millis(FRAME_MS));
                // After a stall, drop the missed frames rather than burst them at the phone.
                clock.set_missed_tick_behavior(MissedTickBehavior::Skip);
                self.playback = Some(Playback {
                    prompt,
                    next_frame: 0,
                    clock,
                });
            }
            Command::StopPlayback => self.playback = None,
            Command::Dtmf(digits) => {
                self.dtmf = Some(DtmfTap {
                    digits,
                    events: EventDetector::new(),
                    in_band: DtmfDetector::default(),
                    rfc4733_seen: false,
                });
            }
            Command::StartRecording(tap) => self.recording = Some(tap),
            // Dropping the sender lets the writer finish the file.
            Command::StopRecording => self.recording = None,
            Command::JoinThird(leg, mode, digits) => self.join_third(leg, mode, digits),
            Command::SetThirdMode(mode) => {
                if let Some(third) = self.third.as_mut() {
                    tracing::debug!(mode = mode.name(), "third leg mode");
                    third.mode = mode;
                }
            }
            Command::DropThird => {
                if self.third.take().is_some() {
                    tracing::debug!("third leg dropped");
                }
            }
            Command::PromoteThird => self.promote_third(),
            Command::Bridge(leg) => {
                let local = leg.local_addr();
                self.set_transcode(leg.codec);
                match Leg::open(leg) {
                    Ok(agent) => {
                        self.playback = None;
                        self.agent = Some(agent);
                        self.to_agent = StreamRewriter::new(self.next_ssrc());
                        tracing::debug!(%local, "agent leg bridged");
                    }
                    Err(error) => tracing::error!(%local, %error, "cannot open agent media leg"),
                }
            }
        }
    }

    fn set_transcode(&mut self, agent: Codec) {
        self.transcode = (agent != self.caller.codec).then(|| {
            tracing::debug!(
                caller = %self.caller.codec, %agent,
                "bridging legs with different codecs: transcoding"
            );
            Box::new([
                codec::transcode_table(self.caller.codec, agent),
                codec::transcode_table(agent, self.caller.codec),
            ])
        });
    }

    fn join_third(&mut self, leg: MediaLeg, mode: ThirdMode, digits: mpsc::Sender<DtmfDigit>) {
        let local = leg.local_addr();
        let leg = match Leg::open(leg) {
            Ok(leg) => leg,
            Err(error) => {
                tracing::error!(%local, %error, "cannot open the third media leg");
                return;
            }
        };
        let mut clock = tokio::time::interval(Duration::from_millis(FRAME_MS));
        clock.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let to_third = StreamRewriter::new(self.next_ssrc());
        // A second join replaces the first third leg (its ports go back to the pool).
        self.third = Some(Third {
            leg,
            mode,
            to_third,
            mixer: Box::new(Mixer::new()),
            clock,
            sequence: 0,
            timestamp: 0,
            dtmf: DtmfTap {
                digits,
                events: EventDetector::new(),
                in_band: DtmfDetector::default(),
                rfc4733_seen: false,
            },
        });
        tracing::debug!(%local, mode = mode.name(), "third leg joined");
    }

    /// Take-over: the third leg becomes the agent leg, keeping the stream it was hearing.
    fn promote_third(&mut self) {
        let Some(third) = self.third.take() else {
            tracing::debug!("no third leg to promote");
            return;
        };
        self.set_transcode(third.leg.codec);
        self.to_agent = third.to_third;
        // The old agent leg's sockets close here and its port goes back to the pool.
        self.agent = Some(third.leg);
        tracing::debug!("third leg promoted to agent leg");
    }

    /// Whether `listener` (caller or agent) hears a mix instead of the fast path now.
    fn is_mixed(&self, listener: Party) -> bool {
        self.third
            .as_ref()
            .is_some_and(|t| t.mode.is_mixed(listener))
    }

    /// One 20 ms frame to every listener whose direction is mixed.
    fn send_mixed_frames(&mut self) {
        let Some(third) = self.third.as_mut() else {
            return;
        };
        third.mixer.tick();
        let now = Instant::now();
        let mode = third.mode;
        let len = HEADER_LEN + FRAME_SAMPLES;
        for listener in Party::ALL {
            if !mode.is_mixed(listener) {
                continue;
            }
            let (leg, rewriter) = match listener {
                // Hold music (an agent's hold, a consultation) has the caller's ear.
                Party::Caller if self.playback.is_some() => continue,
                Party::Caller => (&self.caller, &mut self.to_caller),
                Party::Agent => match self.agent.as_ref() {
                    Some(agent) => (agent, &mut self.to_agent),
                    None => continue,
                },
                Party::Third => (&third.leg, &mut third.to_third),
            };
            let Some(target) = leg.latch.target() else {
                continue;
            };
            let packet = &mut self.buf[..len];
            let mut payload = [0u8; FRAME_SAMPLES];
            third
                .mixer
                .mix_into(mode.hears(listener), leg.codec, &mut payload);
            RtpHeader {
                marker: false,
                payload_type: leg.codec.payload_type(),
                sequence: third.sequence,
                timestamp: third.timestamp,
                ssrc: MIX_SSRC,
            }
            .write(packet);
            packet[HEADER_LEN..].copy_from_slice(&payload);
            if rewriter.rewrite(packet, now) {
                match leg.rtp.try_send_to(packet, target) {
                    Ok(_) => bump(&self.counters.mixed_packets_out),
                    Err(_) => bump(&self.counters.send_errors),
                }
            }
        }
        third.sequence = third.sequence.wrapping_add(1);
        third.timestamp = third.timestamp.wrapping_add(FRAME_SAMPLES as u32);
    }

    fn next_ssrc(&mut self) -> u32 {
        self.streams_started += 1;
        derive_ssrc(self.ssrc_seed, self.streams_started)
    }

    /// Reads the RTP queued on one leg in batches and forwards what passes.
    fn drain_rtp(&mut self, side: Side) {
        udp_batch::with_batch(|batch| {
            for _ in 0..DRAIN_BATCHES_MAX {
                let Some(leg) = self.leg(side) else {
                    return;
                };
                match batch.recv(&leg.rtp) {
                    Ok(count) => {
                        let now = Instant::now();
                        for i in 0..count {
                            let len = batch.lens[i];
                            let source = batch.sources[i];
                            let packet = &mut batch.slots[i][..len.min(PACKET_BYTES_MAX)];
                            batch.forward[i] = match source {
                                Some(source) if len <= PACKET_BYTES_MAX => {
                                    self.on_rtp(side, packet, source, now)
                                }
                                _ => {
                                    bump(&self.counters.invalid_packets_dropped);
                                    false
                                }
                            };
                        }
                        self.send_batch(side, batch);
                        if count < BATCH_PACKETS_MAX {
                            return;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                    Err(error) => {
                        // e.g. an ICMP error reported on some platforms; the socket still works.
                        tracing::debug!(?side, %error, "media receive error");
                        return;
                    }
                }
            }
        });
    }

    fn leg(&self, side: Side) -> Option<&Leg> {
        match side {
            Side::Caller => Some(&self.caller),
            Side::Agent => self.agent.as_ref(),
            Side::Third => self.third.as_ref().map(|t| &t.leg),
        }
    }

    /// Sends the batch's forwarded packets from the other leg to its target.
    fn send_batch(&self, from: Side, batch: &mut Batch) {
        let forwarded = batch.forward[..batch.count].iter().filter(|f| **f).count() as u64;
        if forwarded == 0 {
            return;
        }
        let (to, counter) = match from {
            Side::Caller => (self.agent.as_ref(), &self.counters.caller_to_agent_packets),
            Side::Agent => (Some(&self.caller), &self.counters.agent_to_caller_packets),
            // The third leg's audio only ever reaches others through the mixer.
            Side::Third => return,
        };
        let Some((to, target)) = to.and_then(|to| to.latch.target().map(|t| (to, t))) else {
            return;
        };
        let sent = batch.send_forwarded(&to.rtp, target) as u64;
        counter.fetch_add(sent, Ordering::Relaxed);
        if sent < forwarded {
            self.counters
                .send_errors
                .fetch_add(forwarded - sent, Ordering::Relaxed);
        }
    }

    fn drain_rtcp(&mut self, side: Side) {
        for _ in 0..DRAIN_PACKETS_MAX {
            let leg = match side {
                Side::Caller => &self.caller,
                Side::Agent => match &self.agent {
                    Some(agent) => agent,
                    None => return,
                },
                Side::Third => match &self.third {
                    Some(third) => &third.leg,
                    None => return,
                },
            };
            match leg.rtcp.try_recv_from(&mut self.buf[..]) {
                Ok((len, source)) => self.on_rtcp(side, len, source),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(error) => {
                    tracing::debug!(?side, %error, "media receive error");
                    return;
                }
            }
        }
    }

    /// Handles one RTP packet received on `side`, rewriting it in place. Returns whether to
    /// forward it to the other leg.
    fn on_rtp(&mut self, side: Side, packet: &mut [u8], source: SocketAddr, now: Instant) -> bool {
        let Some((header, payload)) = RtpHeader::parse_with_payload(packet) else {
            bump(&self.counters.invalid_packets_dropped);
            return false;
        };
        if side == Side::Third {
            self.on_third_rtp(&header, &packet[payload], source, now);
            return false;
        }
        // With a third leg, every party's audio feeds the mixer, and a direction that is
        // mixed is not relayed packet by packet.
        let mixed_out = match side {
            Side::Caller => self.is_mixed(Party::Agent),
            _ => self.is_mixed(Party::Caller),
        };
        let (from, to, rewriter, counter_in, table) = match side {
            Side::Third => return false,
            Side::Caller => (
                &mut self.caller,
                // While a prompt plays (hold), the caller's audio does not reach the agent
                // either: a hold silences both ways.
                self.agent.as_ref().filter(|_| self.playback.is_none()),
                &mut self.to_agent,
                &self.counters.caller_packets_in,
                self.transcode.as_ref().map(|t| &t[0]),
            ),
            Side::Agent => {
                let Some(agent) = self.agent.as_mut() else {
                    return false;
                };
                // While a prompt plays, the agent's audio is received but not forwarded.
                let to = if self.playback.is_none() {
                    Some(&self.caller)
                } else {
                    None
                };
                (
                    agent,
                    to,
                    &mut self.to_caller,
                    &self.counters.agent_packets_in,
                    self.transcode.as_ref().map(|t| &t[1]),
                )
            }
        };
        if !from.latch.accept(source, now) {
            bump(&self.counters.foreign_packets_dropped);
            return false;
        }
        bump(counter_in);
        let is_audio = header.payload_type == from.codec.payload_type();
        let is_event = from.telephone_event == Some(header.payload_type);
        if let Some(third) = self.third.as_mut().filter(|_| is_audio) {
            third
                .mixer
                .push(side.party(), from.codec, &packet[payload.clone()]);
        }
        if let Some(tap) = self.recording.as_ref().filter(|_| is_audio) {
            let channel = match side {
                Side::Caller => recording::Channel::Caller,
                Side::Agent | Side::Third => recording::Channel::Agent,
            };
            record(
                tap,
                channel,
                from.codec,
                &header,
                &packet[payload.clone()],
                now,
                &self.counters,
            );
        }
        if side == Side::Caller && (is_audio || is_event) {
            if let Some(tap) = self.dtmf.as_mut() {
                detect_dtmf(
                    tap,
                    from.codec,
                    is_event,
                    &header,
                    &packet[payload.clone()],
                    &self.counters,
                );
            }
        }
        let Some(to) = to.filter(|_| !mixed_out) else {
            return false;
        };
        if is_audio {
            if let Some(table) = table {
                for byte in &mut packet[payload] {
                    *byte = table[usize::from(*byte)];
                }
                set_payload_type(packet, to.codec.payload_type());
            }
        } else if is_event {
            if let Some(pt) = to.telephone_event.filter(|pt| *pt != header.payload_type) {
                set_payload_type(packet, pt);
            }
        }
        rewriter.rewrite(packet, now)
    }

    /// Audio and keys from the third leg: into the mixer and the third's DTMF detectors.
    fn on_third_rtp(
        &mut self,
        header: &RtpHeader,
        payload: &[u8],
        source: SocketAddr,
        now: Instant,
    ) {
        let Some(third) = self.third.as_mut() else {
            return;
        };
        if !third.leg.latch.accept(source, now) {
            bump(&self.counters.foreign_packets_dropped);
            return;
        }
        bump(&self.counters.third_packets_in);
        let codec = third.leg.codec;
        let is_audio = header.payload_type == codec.payload_type();
        let is_event = third.leg.telephone_event == Some(header.payload_type);
        if is_audio {
            third.mixer.push(Party::Third, codec, payload);
        }
        if is_audio || is_event {
            detect_dtmf(
                &mut third.dtmf,
                codec,
                is_event,
                header,
                payload,
                &self.counters,
            );
        }
    }

    fn on_rtcp(&mut self, side: Side, len: usize, source: SocketAddr) {
        let packet = &self.buf[..len];
        if len > PACKET_BYTES_MAX || !rtp::looks_like_rtcp(packet) {
            bump(&self.counters.invalid_packets_dropped);
            return;
        }
        let (from, to) = match side {
            Side::Caller => (&self.caller, self.agent.as_ref()),
            Side::Agent => match &self.agent {
                Some(agent) => (agent, Some(&self.caller)),
                None => return,
            },
            // The third leg's reports describe the mix, which nobody else sends: read and
            // dropped.
            Side::Third => return,
        };
        // RTCP is not latched on its own: it must come from the host the leg's RTP comes from.
        if from.latch.target().is_some_and(|t| t.ip() != source.ip()) {
            bump(&self.counters.foreign_packets_dropped);
            return;
        }
        let Some(to) = to else {
            return;
        };
        let Some(target) = to.latch.target() else {
            return;
        };
        let Some(rtcp_port) = target.port().checked_add(1) else {
            return;
        };
        match to
            .rtcp
            .try_send_to(packet, SocketAddr::new(target.ip(), rtcp_port))
        {
            Ok(_) => bump(&self.counters.rtcp_packets_relayed),
            Err(_) => bump(&self.counters.send_errors),
        }
    }

    fn send_prompt_frame(&mut self) {
        let Some(playback) = self.playback.as_mut() else {
            return;
        };
        let frames = playback.prompt.frames(self.caller.codec);
        let Some(frame) = frames.get(playback.next_frame) else {
            return;
        };
        playback.next_frame = (playback.next_frame + 1) % frames.len();
        let len = HEADER_LEN + FRAME_SAMPLES;
        let packet = &mut self.buf[..len];
        RtpHeader {
            marker: false,
            payload_type: self.caller.codec.payload_type(),
            sequence: self.prompt_sequence,
            timestamp: self.prompt_timestamp,
            ssrc: PROMPT_SSRC,
        }
        .write(packet);
        packet[HEADER_LEN..].copy_from_slice(frame);
        self.prompt_sequence = self.prompt_sequence.wrapping_add(1);
        self.prompt_timestamp = self.prompt_timestamp.wrapping_add(FRAME_SAMPLES as u32);
        let Some(target) = self.caller.latch.target() else {
            return;
        };
        if self.to_caller.rewrite(packet, Instant::now()) {
            match self.caller.rtp.try_send_to(packet, target) {
                Ok(_) => bump(&self.counters.prompt_packets_out),
                Err(_) => bump(&self.counters.send_errors),
            }
        }
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

fn set_payload_type(packet: &mut [u8], payload_type: u8) {
    packet[1] = (packet[1] & 0x80) | (payload_type & 0x7F);
}

/// Offers a copy of one payload to the recording's writer; a full queue costs the frame, never
/// the relay.
fn record(
    tap: &RecordingTap,
    channel: recording::Channel,
    codec: Codec,
    header: &RtpHeader,
    payload: &[u8],
    now: Instant,
    counters: &SharedCounters,
) {
    let len = payload.len().min(FRAME_PAYLOAD_BYTES_MAX);
    let mut frame = RecordedFrame {
        channel,
        codec,
        arrival_us: u64::try_from(now.saturating_duration_since(tap.started).as_micros())
            .unwrap_or(u64::MAX),
        ssrc: header.ssrc,
        timestamp: header.timestamp,
        // `len` is at most FRAME_PAYLOAD_BYTES_MAX, which fits a u16.
        len: len as u16,
        payload: [0; FRAME_PAYLOAD_BYTES_MAX],
    };
    frame.payload[..len].copy_from_slice(&payload[..len]);
    if tap.frames.try_send(frame).is_err() {
        tap.dropped.fetch_add(1, Ordering::Relaxed);
        bump(&counters.recording_frames_dropped);
    }
}

/// Runs the caller's packet through the RFC 4733 or the in-band detector.
fn detect_dtmf(
    tap: &mut DtmfTap,
    codec: Codec,
    is_event: bool,
    header: &RtpHeader,
    payload: &[u8],
    counters: &SharedCounters,
) {
    let found = if is_event {
        tap.rfc4733_seen = true;
        tap.events
            .push(header.timestamp, payload)
            .map(|digit| (digit, DtmfSource::Rfc4733))
    } else if tap.rfc4733_seen {
        None
    } else {
        let mut pcm = [0i16; FRAME_PAYLOAD_BYTES_MAX];
        let len = payload.len().min(FRAME_PAYLOAD_BYTES_MAX);
        codec.decode_into(&payload[..len], &mut pcm[..len]);
        tap.in_band
            .push(&pcm[..len])
            .map(|digit| (digit, DtmfSource::InBand))
    };
    if let Some((digit, source)) = found {
        bump(&counters.dtmf_digits);
        if tap.digits.try_send(DtmfDigit { digit, source }).is_err() {
            bump(&counters.dtmf_digits_dropped);
        }
    }
}

/// The wall clock of the media tasks (this module is where time enters).
pub(crate) fn now() -> Instant {
    Instant::now()
}

/// SplitMix64 of the seed and a stream number: distinct, well-spread SSRCs per call.
fn derive_ssrc(seed: u64, stream: u64) -> u32 {
    let mut z = seed.wrapping_add(stream.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    // The high half is as random as the whole.
    ((z ^ (z >> 31)) >> 32) as u32
}
