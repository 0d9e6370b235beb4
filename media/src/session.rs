//! A call's media: the handle the node holds for one call, driving one tokio task that anchors
//! the caller leg, plays prompts to it, and relays to the agent leg once bridged.
//!
//! Call order: [`PortPool::allocate`](crate::PortPool::allocate) for the caller, then
//! [`CallMedia::start`] (inside a tokio runtime), then any number of [`CallMedia::play_loop`],
//! [`CallMedia::bridge`], [`CallMedia::stop_playback`], [`CallMedia::take_dtmf`] (once),
//! [`CallMedia::start_recording`] and [`CallMedia::stop_recording`], and with a supervisor
//! [`CallMedia::try_join_third`], [`CallMedia::try_set_third_mode`],
//! [`CallMedia::try_drop_third`] and [`CallMedia::try_promote_third`], then
//! [`CallMedia::stop`] or drop. Ports go back to the pool when the task ends.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::codec::Codec;
use crate::mix::ThirdMode;
use crate::pool::RtpPort;
use crate::prompt::Prompt;
use crate::recording::{RecordingMeta, RecordingTarget, FRAME_QUEUE_DEPTH_MAX};
use crate::relay::{self, Command, RecordingTap};
use crate::MediaError;

/// Commands that may wait for the media task; the node sends a handful per call.
pub const COMMAND_QUEUE_DEPTH_MAX: usize = 16;
/// Detected digits that may wait for the node; more are counted and dropped.
pub const DTMF_QUEUE_DEPTH_MAX: usize = 32;
/// The payload type taken for telephone-events when the node does not say (the one nearly every
/// phone uses).
pub const TELEPHONE_EVENT_PT_DEFAULT: u8 = 101;

/// How a digit reached us.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DtmfSource {
    /// An RFC 4733 telephone-event packet.
    Rfc4733,
    /// Tones in the caller's audio.
    InBand,
}

/// A key the caller pressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DtmfDigit {
    /// `0`-`9`, `*`, `#`, `A`-`D`.
    pub digit: char,
    pub source: DtmfSource,
}

/// One side of a call as the media task sees it: our local port, the codec negotiated on that
/// side, and the address its SDP gave (sent to until the phone's own packets arrive).
#[derive(Debug)]
pub struct MediaLeg {
    pub(crate) port: RtpPort,
    pub(crate) codec: Codec,
    pub(crate) remote: Option<SocketAddr>,
    pub(crate) telephone_event: Option<u8>,
}

impl MediaLeg {
    /// A leg whose telephone-events, if any, use payload type
    /// [`TELEPHONE_EVENT_PT_DEFAULT`]; see [`MediaLeg::with_telephone_event`].
    pub fn new(port: RtpPort, codec: Codec, remote: Option<SocketAddr>) -> MediaLeg {
        MediaLeg {
            port,
            codec,
            remote,
            telephone_event: Some(TELEPHONE_EVENT_PT_DEFAULT),
        }
    }

    /// Sets the negotiated telephone-event payload type (`sdp` gives it), or `None` if the leg
    /// negotiated none.
    pub fn with_telephone_event(mut self, payload_type: Option<u8>) -> MediaLeg {
        self.telephone_event = payload_type;
        self
    }

    /// Our RTP address on this leg.
    pub fn local_addr(&self) -> SocketAddr {
        self.port.local_addr()
    }

    pub fn codec(&self) -> Codec {
        self.codec
    }
}

/// A snapshot of a call's packet counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayCounters {
    /// Caller RTP forwarded to the agent.
    pub caller_to_agent_packets: u64,
    /// Agent RTP forwarded to the caller.
    pub agent_to_caller_packets: u64,
    /// Valid RTP accepted from the caller's latched source.
    pub caller_packets_in: u64,
    /// Valid RTP accepted from the agent's latched source.
    pub agent_packets_in: u64,
    /// Prompt (hold music) packets sent to the caller.
    pub prompt_packets_out: u64,
    /// RTCP packets relayed, both directions.
    pub rtcp_packets_relayed: u64,
    /// Datagrams dropped for not being RTP v2 (or RTCP on the RTCP port), or too short.
    pub invalid_packets_dropped: u64,
    /// Valid packets dropped for coming from a source other than the latched one.
    pub foreign_packets_dropped: u64,
    /// Sends the OS refused (buffer full, unreachable); the packet is lost, the call goes on.
    pub send_errors: u64,
    /// Recording frames dropped because the writer was behind (the relay never waits).
    pub recording_frames_dropped: u64,
    /// Caller digits detected (both kinds).
    pub dtmf_digits: u64,
    /// Digits dropped because the node did not read them.
    pub dtmf_digits_dropped: u64,
    /// Valid RTP accepted from the third leg (a supervisor).
    pub third_packets_in: u64,
    /// Mixed frames sent (to any leg) while a third leg was on the call.
    pub mixed_packets_out: u64,
}

/// The counters as the media task updates them.
#[derive(Debug, Default)]
pub(crate) struct SharedCounters {
    pub(crate) caller_to_agent_packets: AtomicU64,
    pub(crate) agent_to_caller_packets: AtomicU64,
    pub(crate) caller_packets_in: AtomicU64,
    pub(crate) agent_packets_in: AtomicU64,
    pub(crate) prompt_packets_out: AtomicU64,
    pub(crate) rtcp_packets_relayed: AtomicU64,
    pub(crate) invalid_packets_dropped: AtomicU64,
    pub(crate) foreign_packets_dropped: AtomicU64,
    pub(crate) send_errors: AtomicU64,
    pub(crate) recording_frames_dropped: AtomicU64,
    pub(crate) dtmf_digits: AtomicU64,
    pub(crate) dtmf_digits_dropped: AtomicU64,
    pub(crate) third_packets_in: AtomicU64,
    pub(crate) mixed_packets_out: AtomicU64,
}

impl SharedCounters {
    fn snapshot(&self) -> RelayCounters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RelayCounters {
            caller_to_agent_packets: get(&self.caller_to_agent_packets),
            agent_to_caller_packets: get(&self.agent_to_caller_packets),
            caller_packets_in: get(&self.caller_packets_in),
            agent_packets_in: get(&self.agent_packets_in),
            prompt_packets_out: get(&self.prompt_packets_out),
            rtcp_packets_relayed: get(&self.rtcp_packets_relayed),
            invalid_packets_dropped: get(&self.invalid_packets_dropped),
            foreign_packets_dropped: get(&self.foreign_packets_dropped),
            send_errors: get(&self.send_errors),
            recording_frames_dropped: get(&self.recording_frames_dropped),
            dtmf_digits: get(&self.dtmf_digits),
            dtmf_digits_dropped: get(&self.dtmf_digits_dropped),
            third_packets_in: get(&self.third_packets_in),
            mixed_packets_out: get(&self.mixed_packets_out),
        }
    }
}

/// The node's handle on one call's media task. Dropping it stops the task.
#[derive(Debug)]
pub struct CallMedia {
    commands: mpsc::Sender<Command>,
    counters: Arc<SharedCounters>,
    task: Option<JoinHandle<()>>,
    caller_addr: SocketAddr,
    dtmf_taken: Mutex<bool>,
    recording: Mutex<Option<JoinHandle<RecordingMeta>>>,
}

impl CallMedia {
    /// Spawns the call's media task on the current tokio runtime, anchoring the caller leg.
    /// SSRCs come from a per-process random seed; use [`CallMedia::start_seeded`] to choose.
    ///
    /// # Panics
    /// Outside a tokio runtime, like `tokio::spawn`.
    pub fn start(caller: MediaLeg) -> CallMedia {
        let seed = RandomState::new().hash_one(caller.local_addr());
        CallMedia::start_seeded(caller, seed)
    }

    /// As [`CallMedia::start`], with the seed from which the outgoing SSRCs are derived.
    pub fn start_seeded(caller: MediaLeg, ssrc_seed: u64) -> CallMedia {
        let (commands, receiver) = mpsc::channel(COMMAND_QUEUE_DEPTH_MAX);
        let counters = Arc::new(SharedCounters::default());
        let caller_addr = caller.local_addr();
        let task = tokio::spawn(relay::run(
            caller,
            receiver,
            Arc::clone(&counters),
            ssrc_seed,
        ));
        CallMedia {
            commands,
            counters,
            task: Some(task),
            caller_addr,
            dtmf_taken: Mutex::new(false),
            recording: Mutex::new(None),
        }
    }

    /// Plays `prompt` to the caller in a loop, in the caller leg's codec, one packet per 20 ms.
    /// Replaces whatever the caller was hearing (another prompt, or the bridged agent) until
    /// [`CallMedia::bridge`] or [`CallMedia::stop_playback`]. If the task has ended the request
    /// is logged and dropped; [`CallMedia::try_play_loop`] reports it instead.
    pub fn play_loop(&self, prompt: Arc<Prompt>) {
        self.log_failure("play_loop", self.try_play_loop(prompt));
    }

    /// As [`CallMedia::play_loop`], saying whether the task took the request.
    pub fn try_play_loop(&self, prompt: Arc<Prompt>) -> Result<(), MediaError> {
        self.send(Command::PlayLoop(prompt))
    }

    /// Stops the prompt: the caller hears the agent if bridged, else silence.
    pub fn stop_playback(&self) {
        self.log_failure("stop_playback", self.send(Command::StopPlayback));
    }

    /// Bridges the agent leg: stops any prompt and relays RTP and RTCP both ways. The agent leg
    /// must use the caller's codec (no transcoding yet). Bridging again replaces the agent leg
    /// (a transfer) and frees the old leg's ports. Failures are logged; see
    /// [`CallMedia::try_bridge`].
    pub fn bridge(&self, agent: MediaLeg) {
        self.log_failure("bridge", self.try_bridge(agent));
    }

    /// As [`CallMedia::bridge`], saying whether the task took the request. On error the leg
    /// (and its ports) is dropped.
    pub fn try_bridge(&self, agent: MediaLeg) -> Result<(), MediaError> {
        self.send(Command::Bridge(agent))
    }

    /// The caller's DTMF, once: digits from RFC 4733 telephone-events and from tones in the
    /// caller's audio (the latter ignored once the phone has sent an event, so a key counts
    /// once). Detection runs from this call on; `None` if already taken or the task has ended.
    /// Digits the receiver leaves unread beyond [`DTMF_QUEUE_DEPTH_MAX`] are dropped.
    pub fn take_dtmf(&self) -> Option<mpsc::Receiver<DtmfDigit>> {
        // A poisoned flag only means another thread panicked while holding it; the bool is
        // still meaningful.
        let mut taken = self.dtmf_taken.lock().unwrap_or_else(|e| e.into_inner());
        if *taken {
            return None;
        }
        let (sender, receiver) = mpsc::channel(DTMF_QUEUE_DEPTH_MAX);
        self.send(Command::Dtmf(sender)).ok()?;
        *taken = true;
        Some(receiver)
    }

    /// Starts recording the call into a new stereo WAV file (caller left, agent right) named
    /// after the target's start and call id. Refused if recording is disabled, paused at the
    /// disk limit, already running, or the file cannot be created; the call is unaffected.
    /// Must be called inside a tokio runtime (it spawns the writer task).
    pub fn start_recording(&self, target: RecordingTarget) -> Result<(), MediaError> {
        let mut slot = self.recording.lock().unwrap_or_else(|e| e.into_inner());
        if slot.as_ref().is_some_and(|writer| !writer.is_finished()) {
            return Err(MediaError::RecordingActive);
        }
        if self.task.is_none() {
            return Err(MediaError::SessionEnded);
        }
        let recorder = Arc::clone(&target.recorder);
        let writer = recorder.prepare(target)?;
        let (frames, receiver) = mpsc::channel(FRAME_QUEUE_DEPTH_MAX);
        let dropped = Arc::new(AtomicU64::new(0));
        let tap = RecordingTap {
            frames,
            dropped: Arc::clone(&dropped),
            started: relay::now(),
        };
        // If the command cannot be queued the tap (and so the sender) is dropped with it, and
        // the writer closes an empty file at once.
        let handle = tokio::spawn(writer.run(receiver, dropped));
        let sent = self.send(Command::StartRecording(tap));
        *slot = Some(handle);
        sent
    }

    /// Stops the recording and waits for its file to be complete; returns what to index.
    /// `None` if nothing was being recorded.
    pub async fn stop_recording(&self) -> Option<RecordingMeta> {
        let handle = self
            .recording
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()?;
        // If the task has ended its tap is gone already and the writer finishes by itself.
        let _ = self.send(Command::StopRecording);
        handle.await.ok()
    }

    /// Adds a third leg (a supervisor's phone) in `mode`; see [`ThirdMode`] for who hears
    /// whom. Directions that need mixing are mixed on a 20 ms clock; the others stay on the
    /// packet fast path. Joining again replaces the third leg. Returns the third leg's keys
    /// (RFC 4733 events, and in-band tones until the first event), at most
    /// [`DTMF_QUEUE_DEPTH_MAX`] unread. On error the leg (and its ports) is dropped.
    pub fn try_join_third(
        &self,
        leg: MediaLeg,
        mode: ThirdMode,
    ) -> Result<mpsc::Receiver<DtmfDigit>, MediaError> {
        let (sender, receiver) = mpsc::channel(DTMF_QUEUE_DEPTH_MAX);
        self.send(Command::JoinThird(leg, mode, sender))?;
        Ok(receiver)
    }

    /// Switches the third leg's mode; a no-op without a third leg.
    pub fn try_set_third_mode(&self, mode: ThirdMode) -> Result<(), MediaError> {
        self.send(Command::SetThirdMode(mode))
    }

    /// Removes the third leg and frees its ports; caller and agent go on as before.
    pub fn try_drop_third(&self) -> Result<(), MediaError> {
        self.send(Command::DropThird)
    }

    /// Take-over: the third leg replaces the agent leg (whose ports are freed) and the call
    /// goes on between caller and third on the fast path. The outgoing stream to the third
    /// leg continues unbroken.
    pub fn try_promote_third(&self) -> Result<(), MediaError> {
        self.send(Command::PromoteThird)
    }

    /// A snapshot of the packet counters.
    pub fn counters(&self) -> RelayCounters {
        self.counters.snapshot()
    }

    /// Our RTP address on the caller leg.
    pub fn caller_local_addr(&self) -> SocketAddr {
        self.caller_addr
    }

    /// False once the task has ended (stopped, or failed to start: see the log).
    pub fn is_running(&self) -> bool {
        self.task.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Ends the task. Its ports return to the pool as soon as the runtime drops the task, which
    /// is asynchronous; use [`CallMedia::shutdown`] to wait for it. Later requests are dropped
    /// (and the `try_` forms say [`MediaError::SessionEnded`]).
    pub fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    /// Ends the task and waits until it is gone and its ports are back in the pool.
    pub async fn shutdown(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            // The task either finished or was cancelled; both leave nothing to report.
            let _ = task.await;
        }
    }

    fn log_failure(&self, request: &str, result: Result<(), MediaError>) {
        if let Err(error) = result {
            tracing::warn!(caller = %self.caller_addr, request, %error, "media request not taken");
        }
    }

    fn send(&self, command: Command) -> Result<(), MediaError> {
        if self.task.is_none() {
            return Err(MediaError::SessionEnded);
        }
        self.commands.try_send(command).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => MediaError::CommandQueueFull {
                depth_max: COMMAND_QUEUE_DEPTH_MAX,
            },
            mpsc::error::TrySendError::Closed(_) => MediaError::SessionEnded,
        })
    }
}

impl Drop for CallMedia {
    fn drop(&mut self) {
        self.stop();
    }
}
