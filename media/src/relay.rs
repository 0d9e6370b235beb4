//! The per-call media task: the tokio adapter around the sans-IO [`Latch`] and
//! [`StreamRewriter`] cores.
//!
//! One task per call owns every socket of the call (caller RTP/RTCP, agent RTP/RTCP) and waits
//! on all of them, the prompt clock and the command channel in one `select!`. On readiness it
//! drains a bounded number of datagrams through one preallocated buffer and rewrites packets in
//! place, so the hot path neither allocates nor copies.
#![allow(clippy::disallowed_methods)] // this adapter is where wall-clock time enters the cores

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::{Interval, MissedTickBehavior};

use crate::codec::Codec;
use crate::latch::Latch;
use crate::pool::RtpPort;
use crate::prompt::{Prompt, FRAME_MS, FRAME_SAMPLES};
use crate::rewrite::StreamRewriter;
use crate::rtp::{self, RtpHeader, HEADER_LEN, PACKET_BYTES_MAX};
use crate::session::{MediaLeg, SharedCounters};

/// Datagrams read from one socket per wake-up before the other sockets get a turn.
const DRAIN_PACKETS_MAX: usize = 64;
/// The SSRC of the prompt player's internal stream; the rewriter maps it onto the caller's
/// outgoing SSRC like any other source.
const PROMPT_SSRC: u32 = 0x0C0F_FEE5;

/// What the node asks of a running call.
#[derive(Debug)]
pub(crate) enum Command {
    PlayLoop(Arc<Prompt>),
    StopPlayback,
    Bridge(MediaLeg),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Caller,
    Agent,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Channel {
    Rtp,
    Rtcp,
}

enum Event {
    Command(Option<Command>),
    Readable(Side, Channel, io::Result<()>),
    Tick,
}

struct Leg {
    rtp: UdpSocket,
    rtcp: UdpSocket,
    codec: Codec,
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
            latch: Latch::new(leg.remote),
            _port: leg.port,
        })
    }

    fn socket(&self, channel: Channel) -> &UdpSocket {
        match channel {
            Channel::Rtp => &self.rtp,
            Channel::Rtcp => &self.rtcp,
        }
    }
}

/// The looping prompt being played to the caller.
struct Playback {
    prompt: Arc<Prompt>,
    next_frame: usize,
    clock: Interval,
}

struct Relay {
    caller: Leg,
    agent: Option<Leg>,
    to_caller: StreamRewriter,
    to_agent: StreamRewriter,
    playback: Option<Playback>,
    /// The prompt player's own sequence and timestamp, kept across prompts.
    prompt_sequence: u16,
    prompt_timestamp: u32,
    ssrc_seed: u64,
    streams_started: u64,
    counters: Arc<SharedCounters>,
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
        to_caller: StreamRewriter::new(derive_ssrc(ssrc_seed, 0)),
        to_agent: StreamRewriter::new(derive_ssrc(ssrc_seed, 1)),
        playback: None,
        prompt_sequence: 0,
        prompt_timestamp: 0,
        ssrc_seed,
        streams_started: 2,
        counters,
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
            let agent = self.agent.as_ref();
            let event = tokio::select! {
                command = commands.recv() => Event::Command(command),
                ready = self.caller.rtp.readable() => Event::Readable(Side::Caller, Channel::Rtp, ready),
                ready = self.caller.rtcp.readable() => Event::Readable(Side::Caller, Channel::Rtcp, ready),
                ready = readable(agent.map(|a| &a.rtp)) => Event::Readable(Side::Agent, Channel::Rtp, ready),
                ready = readable(agent.map(|a| &a.rtcp)) => Event::Readable(Side::Agent, Channel::Rtcp, ready),
                () = tick(self.playback.as_mut().map(|p| &mut p.clock)) => Event::Tick,
            };
            match event {
                Event::Command(None) => return,
                Event::Command(Some(command)) => self.on_command(command),
                Event::Readable(side, channel, Ok(())) => self.drain(side, channel),
                Event::Readable(side, channel, Err(error)) => {
                    // Readiness errors mean the socket itself is broken; the call cannot go on.
                    tracing::error!(?side, ?channel, %error, "media socket failed");
                    return;
                }
                Event::Tick => self.send_prompt_frame(),
            }
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
            Command::Bridge(leg) => {
                let local = leg.local_addr();
                if leg.codec != self.caller.codec {
                    tracing::warn!(
                        caller = %self.caller.codec, agent = %leg.codec,
                        "bridging legs with different codecs; audio is relayed untranscoded"
                    );
                }
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

    fn next_ssrc(&mut self) -> u32 {
        self.streams_started += 1;
        derive_ssrc(self.ssrc_seed, self.streams_started)
    }

    fn drain(&mut self, side: Side, channel: Channel) {
        for _ in 0..DRAIN_PACKETS_MAX {
            let leg = match side {
                Side::Caller => &self.caller,
                Side::Agent => match &self.agent {
                    Some(agent) => agent,
                    None => return,
                },
            };
            let received = leg.socket(channel).try_recv_from(&mut self.buf[..]);
            match received {
                Ok((len, source)) => {
                    let now = Instant::now();
                    match channel {
                        Channel::Rtp => self.on_rtp(side, len, source, now),
                        Channel::Rtcp => self.on_rtcp(side, len, source),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(error) => {
                    // e.g. an ICMP error reported on some platforms; the socket still works.
                    tracing::debug!(?side, ?channel, %error, "media receive error");
                    return;
                }
            }
        }
    }

    fn on_rtp(&mut self, side: Side, len: usize, source: SocketAddr, now: Instant) {
        // A datagram that filled the spare byte was truncated: too big to be ours.
        if len > PACKET_BYTES_MAX || RtpHeader::parse(&self.buf[..len]).is_none() {
            bump(&self.counters.invalid_packets_dropped);
            return;
        }
        let (from, to, rewriter, counter_in, counter_out) = match side {
            Side::Caller => (
                &mut self.caller,
                self.agent.as_ref(),
                &mut self.to_agent,
                &self.counters.caller_packets_in,
                &self.counters.caller_to_agent_packets,
            ),
            Side::Agent => {
                let Some(agent) = self.agent.as_mut() else {
                    return;
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
                    &self.counters.agent_to_caller_packets,
                )
            }
        };
        if !from.latch.accept(source, now) {
            bump(&self.counters.foreign_packets_dropped);
            return;
        }
        bump(counter_in);
        let Some(to) = to else {
            return;
        };
        let Some(target) = to.latch.target() else {
            return;
        };
        let packet = &mut self.buf[..len];
        if rewriter.rewrite(packet, now) {
            match to.rtp.try_send_to(packet, target) {
                Ok(_) => bump(counter_out),
                Err(_) => bump(&self.counters.send_errors),
            }
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

/// Waits for a socket that may not exist yet; pends forever for `None`, so a `select!` branch
/// on an absent agent leg simply never fires.
async fn readable(socket: Option<&UdpSocket>) -> io::Result<()> {
    match socket {
        Some(socket) => socket.readable().await,
        None => std::future::pending().await,
    }
}

/// The prompt clock, pending forever when nothing plays.
async fn tick(clock: Option<&mut Interval>) {
    match clock {
        Some(clock) => {
            clock.tick().await;
        }
        None => std::future::pending().await,
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// SplitMix64 of the seed and a stream number: distinct, well-spread SSRCs per call.
fn derive_ssrc(seed: u64, stream: u64) -> u32 {
    let mut z = seed.wrapping_add(stream.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    // The high half is as random as the whole.
    ((z ^ (z >> 31)) >> 32) as u32
}
