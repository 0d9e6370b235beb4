//! One call through the B2BUA: the caller's leg (a trunk INVITE we answer), its place in
//! the queue, the agent legs we place when the ACD offers it, the bridge, and the record.
//!
//! Each call runs as one task that owns both legs and the call's media, and reacts to
//! four inputs: routing events for the call, the caller dialog's state, the current agent
//! dialog's state, and the outcome of the agent INVITE in flight. Every path ends with the
//! routing state machine's terminal record, which the task stores as the CDR.
//!
//! A call that leaves its queue without an agent (closed, full, waited too long) gets its
//! record at once; the task then performs the exit action before storing it: a prompt and
//! hang-up, or a voicemail (greeting, beep, the caller recorded until they hang up or the
//! message reaches `voicemail.max_length_s`) stored through [`crate::voicemail`].
//!
//! With `[callback]` configured, a waiting caller may press the callback key and leave a
//! number ([`callback`]): the task hangs the caller up but lives on, holding the call's
//! place, and at its turn rings the agent and then dials the customer.
//!
//! Either side may put the other on hold by re-INVITE ([`hold`]): the agent's hold plays
//! the hold music to the caller until the agent resumes; the caller's is answered and
//! relayed to the agent leg as a re-INVITE with the caller's direction, so the phone (or
//! the inter-node leg) shows it, and the caller's resume likewise. A caller who holds
//! while still queued (or while the agent rings) is relayed the same way right after the
//! agent answers.

mod callback;
mod consult;
pub mod control;
pub mod hold;
mod ivr_io;
pub mod outbound;
pub mod registry;
pub mod supervise;

use std::sync::Arc;
use std::time::Duration;

use carillon_media::{CallMedia, Codec, MediaLeg, Prompt, Recorder, Recording, RecordingTarget};
use carillon_ops::records::Cdr;
use carillon_routing::{
    Arrival, CallRecord, Command, Disposition, Event, ExitAction, OfferFailure, Party,
};
use tokio::sync::mpsc;
use tracing::{debug, info, warn, Instrument};

use crate::clock::now_ms;
use crate::node::Shared;
use crate::routing_log::ProposeError;
use crate::sip::{
    self, rsip, DialogState, DialogStateReceiver, InviteDialog, InviteOption, TerminatedReason,
};
use crate::voicemail::{Mailboxes, Message};

/// How long a call task waits for its terminal record after its last command. The record
/// is produced by that very command, so only a bug would make this expire.
const RECORD_WAIT_MS: u64 = 5_000;
/// The beep before a voicemail recording: pitch, length, loudness (of full scale), and the
/// pause between greeting and beep.
const BEEP_HZ: f32 = 1_000.0;
const BEEP_MS: u32 = 400;
const BEEP_LEVEL: f32 = 0.3;
const BEEP_GAP_MS: u32 = 200;

/// What the edge learned from the caller's INVITE.
pub struct CallSetup {
    pub call_id: String,
    pub sip_call_id: String,
    pub caller: String,
    pub dialled: String,
    pub queue: String,
    pub codec: Codec,
    pub answer_sdp: String,
    pub caller_dialog: InviteDialog,
    pub caller_states: DialogStateReceiver,
    pub media: CallMedia,
    pub events: mpsc::Receiver<Event>,
    /// When the caller's INVITE reached the node (for the post-dial delay).
    pub received: std::time::Instant,
}

enum Phase {
    Waiting,
    /// A callback waiting for its turn: the caller has hung up, the call keeps its place.
    CallbackWait,
    Ringing {
        agent: String,
        attempt: u64,
        dialog: InviteDialog,
    },
    Connected {
        dialog: InviteDialog,
    },
    Ending,
}

/// The outcome of one agent INVITE.
struct LegOutcome {
    attempt: u64,
    agent: String,
    dialog: InviteDialog,
    result: Result<rsip::Response, String>,
    /// Agent-side media port, released unless the leg is bridged.
    port: Option<carillon_media::RtpPort>,
}

/// Runs the call until its record is stored. The active-call slot is released on return.
pub async fn run(shared: Arc<Shared>, setup: CallSetup) {
    let span = tracing::info_span!("call", call_id = %setup.call_id);
    Call::new(shared, setup).run().instrument(span).await;
}

struct Call {
    shared: Arc<Shared>,
    id: String,
    sip_call_id: String,
    caller: String,
    dialled: String,
    queue: String,
    codec: Codec,
    caller_dialog: InviteDialog,
    caller_states: DialogStateReceiver,
    media: CallMedia,
    events: mpsc::Receiver<Event>,
    phase: Phase,
    attempts: u64,
    agent_states: Option<DialogStateReceiver>,
    legs_tx: mpsc::Sender<LegOutcome>,
    legs_rx: mpsc::Receiver<LegOutcome>,
    record: Option<CallRecord>,
    received: std::time::Instant,
    post_dial_us: Option<u64>,
    /// The exit action routing chose when the call left its queue without an agent.
    exit: Option<ExitAction>,
    /// The caller's keys, while callback is on and the caller waits.
    dtmf: Option<mpsc::Receiver<carillon_media::DtmfDigit>>,
    callback: callback::CallbackState,
    /// Our side of the caller's session, for answering its re-INVITEs.
    caller_sdp: hold::LegSdp,
    /// The offer sent on the latest agent INVITE; becomes `agent_sdp` when answered.
    agent_offer: Option<String>,
    /// Our side of the connected agent's session.
    agent_sdp: Option<hold::LegSdp>,
    hold_clock: hold::HoldClock,
    /// Hold-music packets sent to the caller when the agent's hold began.
    agent_hold_prompt_base: Option<u64>,
    /// When the next place-in-line announcement is due, and when the one playing ends.
    announce_next: Option<tokio::time::Instant>,
    announce_end: Option<tokio::time::Instant>,
    /// Requests from the API ([`registry`]); the registration lasts as long as the task.
    control_rx: mpsc::Receiver<registry::Control>,
    _registration: registry::Registration,
    /// What API call control did to the call ([`control`]).
    control: control::ControlState,
    /// A supervisor listening in, whispering or barged in ([`supervise`]).
    supervisor: Option<supervise::Session>,
    /// The agent consulting a number, or in a conference with it ([`consult`]).
    consult: Option<consult::Consultation>,
    consult_attempts: u64,
}

impl Call {
    fn new(shared: Arc<Shared>, s: CallSetup) -> Self {
        // At most one agent INVITE is current; stale ones only need a slot to report into.
        let (legs_tx, legs_rx) = mpsc::channel(8);
        let (registration, control_rx) = shared.calls.register(&s.call_id);
        Self {
            shared,
            id: s.call_id,
            sip_call_id: s.sip_call_id,
            caller: s.caller,
            dialled: s.dialled,
            queue: s.queue,
            codec: s.codec,
            caller_dialog: s.caller_dialog,
            caller_states: s.caller_states,
            media: s.media,
            events: s.events,
            phase: Phase::Waiting,
            attempts: 0,
            agent_states: None,
            legs_tx,
            legs_rx,
            record: None,
            received: s.received,
            post_dial_us: None,
            exit: None,
            dtmf: None,
            callback: callback::CallbackState::new(),
            caller_sdp: hold::LegSdp::new(s.answer_sdp),
            agent_offer: None,
            agent_sdp: None,
            hold_clock: hold::HoldClock::default(),
            agent_hold_prompt_base: None,
            announce_next: None,
            announce_end: None,
            control_rx,
            _registration: registration,
            control: control::ControlState::new(),
            supervisor: None,
            consult: None,
            consult_attempts: 0,
        }
    }

    async fn run(mut self) {
        // A number with an IVR flow runs it first; the flow picks the queue or ends the call.
        let mut routed = None;
        if let Some(flow) = self.number_flow() {
            let Some(queued) = self.run_ivr(flow).await else {
                self.finish_without_record();
                return;
            };
            self.queue = queued.queue;
            routed = Some((queued.priority, queued.skills));
        }
        self.media.play_loop(self.shared.hold_music.clone());
        let (priority, skills) =
            routed.unwrap_or_else(|| self.shared.config.call_routing(&self.dialled, &self.queue));
        let enqueue = Command::Enqueue(Arrival {
            call: self.id.clone(),
            queue: self.queue.clone(),
            caller: self.caller.clone(),
            dialled: self.dialled.clone(),
            owner: self.shared.node_number,
            site: self.shared.config.node.site.clone(),
            at: now_ms(),
            priority,
            skills,
        });
        if let Err(e) = self.shared.routing.propose(enqueue).await {
            warn!(error = %e, "could not queue the call");
            self.caller_dialog.bye().await.ok();
            self.finish_without_record();
            return;
        }
        info!(caller = %self.caller, queue = %self.queue, priority, "call queued");
        if let Some(a) = &self.shared.announcer {
            self.announce_next = Some(
                tokio::time::Instant::from_std(crate::clock::instant())
                    + Duration::from_secs(a.settings.first_after_s),
            );
        }
        if self.shared.config.callback.is_some() && self.dtmf.is_none() {
            self.dtmf = self.media.take_dtmf();
        }

        while self.record.is_none() {
            tokio::select! {
                ev = self.events.recv() => match ev {
                    Some(ev) => self.on_routing_event(ev).await,
                    None => break,
                },
                st = self.caller_states.recv() => match st {
                    Some(st) => self.on_caller_state(st).await,
                    None => self.caller_gone().await,
                },
                st = recv_opt(&mut self.agent_states) => match st {
                    Some(st) => self.on_agent_state(st).await,
                    None => self.agent_states = None,
                },
                Some(leg) = self.legs_rx.recv() => self.on_leg(leg).await,
                Some(c) = self.control_rx.recv() => self.on_control(c).await,
                _ = callback::sleep_until_opt(self.announce_next) => self.announce(),
                _ = callback::sleep_until_opt(self.announce_end) => self.announcement_over(),
                Some(d) = self.control.dials_rx.recv() => self.on_transfer_dial(d).await,
                ev = supervise::next(&mut self.supervisor) => self.on_supervisor_event(ev).await,
                st = consult::next(&mut self.consult) => self.on_consult_state(st).await,
                d = recv_dtmf(&mut self.dtmf) => match d {
                    Some(d) => self.on_digit(d.digit).await,
                    None => self.dtmf = None,
                },
                _ = callback::sleep_until_opt(self.callback.entry_deadline()) => self.request_callback().await,
                ev = callback::recv_watch(&mut self.callback.watch) => self.on_watch(ev).await,
                Some(c) = self.callback.customers_rx.recv() => self.on_customer(c).await,
                _ = tokio::time::sleep(Duration::from_millis(RECORD_WAIT_MS)), if matches!(self.phase, Phase::Ending) => {
                    warn!("no terminal record arrived for the call");
                    break;
                }
            }
        }
        self.end_supervision(true).await;
        self.end_consult();
        if let Some(action) = self.exit_action() {
            self.take_exit(action).await;
        }
        self.follow_transfer().await;
        crate::recording::finish(&self.shared, &self.media).await;
        self.store_record().await;
        self.finish_without_record();
    }

    /// Plays the place-in-line announcement in place of the hold music, if the caller
    /// still waits in line and routing has something to say, and sets the next one.
    fn announce(&mut self) {
        let Some(a) = self.shared.announcer.clone() else {
            self.announce_next = None;
            return;
        };
        let now = tokio::time::Instant::from_std(crate::clock::instant());
        self.announce_next = Some(now + Duration::from_secs(a.settings.every_s));
        if !matches!(self.phase, Phase::Waiting) || self.announce_end.is_some() {
            return;
        }
        let estimate = self.shared.routing.read(|acd| acd.wait_estimate(&self.id));
        let Some((prompt, words)) = estimate.as_ref().and_then(|e| a.announcement(e)) else {
            return;
        };
        info!(words = %words.join(" "), "announcing place in line");
        metrics::counter!("carillon_announcements_total").increment(1);
        self.announce_end = Some(now + Duration::from_millis(prompt.duration_ms()));
        self.media.play_loop(Arc::new(prompt));
    }

    /// The announcement has played: back to the hold music, unless the call moved on
    /// (an agent answered, the caller left).
    fn announcement_over(&mut self) {
        self.announce_end = None;
        if matches!(self.phase, Phase::Waiting | Phase::Ringing { .. }) {
            self.media.play_loop(self.shared.hold_music.clone());
        }
    }

    async fn on_control(&mut self, control: registry::Control) {
        match control {
            registry::Control::Call(action, reply) => self.on_call_action(action, reply).await,
            registry::Control::Supervise(action, reply) => self.on_supervise(action, reply).await,
        }
    }

    async fn on_routing_event(&mut self, ev: Event) {
        match ev {
            Event::Offered {
                agent, agent_node, ..
            } => self.ring(agent, agent_node).await,
            Event::OfferRevoked { agent, reason, .. } => {
                if let Phase::Ringing {
                    agent: a, dialog, ..
                } = &self.phase
                {
                    if *a == agent {
                        info!(%agent, ?reason, "offer revoked, cancelling the agent leg");
                        let dialog = dialog.clone();
                        tokio::spawn(async move { dialog.cancel().await.ok() });
                        self.back_to_waiting();
                    }
                }
            }
            Event::CallFinished(record) => self.record = Some(record),
            Event::CallbackOffered {
                agent,
                agent_node,
                number,
                attempt,
                ..
            } => {
                self.callback_offered(agent, agent_node, number, attempt)
                    .await
            }
            Event::CallExited { action, reason, .. } => {
                info!(
                    ?action,
                    reason = reason.name(),
                    "call leaves its queue without an agent"
                );
                self.exit = Some(action);
            }
            Event::CallMoved {
                from, to, reason, ..
            } => {
                info!(%from, %to, reason = reason.name(), "call moved to another queue");
                metrics::counter!(
                    "carillon_calls_moved_total",
                    "from" => from,
                    "to" => to.clone(),
                    "reason" => reason.name()
                )
                .increment(1);
                self.queue = to;
            }
            other => debug!(event = ?other, "routing event"),
        }
    }

    /// Places the agent leg for an offer.
    async fn ring(&mut self, agent: String, agent_node: u64) {
        if matches!(self.phase, Phase::Ending) {
            // The offer crossed our hang-up: the Abandon/Ended already applied revoked it.
            debug!(%agent, "offer arrived after the caller left; ignoring");
            return;
        }
        if !matches!(self.phase, Phase::Waiting | Phase::CallbackWait) {
            warn!(%agent, "offered while not waiting; refusing the offer");
            self.offer_failed(&agent, OfferFailure::Rejected).await;
            return;
        }
        let target = match agent_target(&self.shared, &agent, agent_node) {
            Ok(t) => t,
            Err(why) => {
                info!(%agent, agent_node, %why, "offered agent cannot be reached");
                self.offer_failed(&agent, OfferFailure::Unreachable).await;
                return;
            }
        };
        let port = match self.shared.ports.allocate() {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "no RTP port for the agent leg");
                self.offer_failed(&agent, OfferFailure::Unreachable).await;
                return;
            }
        };
        let offer = carillon_media::sdp::offer(port.local_addr(), &[self.codec], now_ms());
        self.agent_offer = Some(offer.clone());
        let options = match agent_invite(
            &self.shared,
            &target.uri,
            target.addr,
            target.transport,
            &self.caller,
            offer,
        ) {
            Ok(o) => with_call_header(o, &self.id),
            Err(e) => {
                warn!(%agent, error = %e, "cannot build the agent INVITE");
                self.offer_failed(&agent, OfferFailure::Unreachable).await;
                return;
            }
        };
        let (state_tx, state_rx) = self.shared.sip.dialogs.new_dialog_state_channel();
        let (dialog, join) = match self.shared.sip.dialogs.do_invite_async(options, state_tx) {
            Ok(x) => x,
            Err(e) => {
                warn!(%agent, error = %e, "agent INVITE failed to start");
                self.offer_failed(&agent, OfferFailure::Unreachable).await;
                return;
            }
        };
        self.attempts += 1;
        let attempt = self.attempts;
        if self.post_dial_us.is_none() {
            self.post_dial_us = Some(self.received.elapsed().as_micros() as u64);
        }
        info!(%agent, target = %target.uri, "ringing agent");
        self.phase = Phase::Ringing {
            agent: agent.clone(),
            attempt,
            dialog: dialog.clone(),
        };
        self.agent_states = Some(state_rx);
        let legs = self.legs_tx.clone();
        tokio::spawn(async move {
            let result = match join.await {
                Ok(Ok((_, Some(resp)))) => Ok(resp),
                Ok(Ok((_, None))) => Err("no final response".to_string()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            let outcome = LegOutcome {
                attempt,
                agent,
                dialog,
                result,
                port: Some(port),
            };
            legs.send(outcome).await.ok();
        });
    }

    async fn on_leg(&mut self, mut leg: LegOutcome) {
        let current =
            matches!(&self.phase, Phase::Ringing { attempt, .. } if *attempt == leg.attempt);
        let answered = matches!(&leg.result, Ok(r) if r.status_code.kind() == rsip::StatusCodeKind::Successful);
        if !current {
            // An offer we already gave up on (ring timeout, caller gone). If the phone
            // answered anyway, hang that leg up: the call is elsewhere or over.
            if answered {
                debug!(agent = %leg.agent, "late answer on a revoked offer; hanging up");
                self.remove_dialog(&leg.dialog);
                leg.dialog.bye().await.ok();
            }
            return;
        }
        let response = match leg.result {
            Ok(r) if answered => r,
            Ok(r) => {
                let failure = match u16::from(r.status_code.clone()) {
                    408 | 480 | 487 => OfferFailure::NoAnswer,
                    _ => OfferFailure::Rejected,
                };
                info!(agent = %leg.agent, status = %r.status_code, "agent did not take the call");
                self.back_to_waiting();
                self.agent_states = None;
                self.offer_failed(&leg.agent, failure).await;
                return;
            }
            Err(e) => {
                info!(agent = %leg.agent, error = %e, "agent leg failed");
                self.back_to_waiting();
                self.agent_states = None;
                self.offer_failed(&leg.agent, OfferFailure::Unreachable)
                    .await;
                return;
            }
        };
        let (remote_addr, codec) = match answer_audio(&response) {
            Ok((addr, codec)) => (addr, codec),
            Err(e) => {
                warn!(agent = %leg.agent, error = %e, "agent answered with unusable SDP");
                self.remove_dialog(&leg.dialog);
                leg.dialog.bye().await.ok();
                self.back_to_waiting();
                self.agent_states = None;
                self.offer_failed(&leg.agent, OfferFailure::Rejected).await;
                return;
            }
        };
        let Some(port) = leg.port.take() else {
            return;
        };
        let agent_leg = MediaLeg::new(port, codec, Some(remote_addr));
        self.agent_sdp = self.agent_offer.take().map(hold::LegSdp::new);
        if self.callback.number.is_some() {
            // A callback: the agent waits in silence while the customer is dialled.
            self.callback.agent_leg = Some(agent_leg);
            self.callback.agent = Some(leg.agent.clone());
        } else {
            self.media.bridge(agent_leg);
        }
        let agent = leg.agent.clone();
        self.phase = Phase::Connected { dialog: leg.dialog };
        info!(%agent, "agent answered; legs bridged");
        let cmd = Command::Connected {
            call: self.id.clone(),
            agent: agent.clone(),
            at: now_ms(),
        };
        match self.shared.routing.propose(cmd).await {
            Ok(()) => {
                // A callback is recorded once the customer answers.
                if self.callback.number.is_none() {
                    let (id, queue, caller) = (&self.id, &self.queue, &self.caller);
                    crate::recording::start(&self.shared, &self.media, id, &agent, queue, caller);
                    // A hold the caller began while queued or while the agent rang: the
                    // agent's phone learns of it now, as of a hold during the call.
                    if self.caller_sdp.is_held() {
                        info!(%agent, "the caller holds since before the answer; relaying the hold");
                        self.relay_hold_to_agent(self.caller_sdp.offered());
                    }
                }
            }
            Err(ProposeError::Refused(e)) => {
                // The offer was withdrawn while the phone answered (the ring timed out, or
                // the agent's node was declared down): routing has the call back in line,
                // so this agent hangs up and the caller waits for the next offer. Should
                // routing have closed the call instead (this node declared down), its
                // CallFinished is on its way to this task and ends the call. (This node's
                // replica may not have applied that yet, so it is not asked here.)
                warn!(%agent, error = %e, "the offer was withdrawn as the agent answered; waiting again");
                if let Phase::Connected { dialog } =
                    std::mem::replace(&mut self.phase, Phase::Ending)
                {
                    self.remove_dialog(&dialog);
                    dialog.bye().await.ok();
                }
                self.callback.agent_leg = None;
                self.callback.agent = None;
                self.agent_states = None;
                self.back_to_waiting();
                return;
            }
            Err(e) => {
                warn!(%agent, error = %e, "routing refused the connection; ending the call");
                self.close_as_lost("connect-refused-by-routing").await;
                return;
            }
        }
        if self.callback.number.is_some() {
            self.dial_customer().await;
        }
    }

    /// After an offer that came to nothing: wait again (with hold music if the caller is
    /// still on the line).
    fn back_to_waiting(&mut self) {
        if self.callback.number.is_some() {
            self.phase = Phase::CallbackWait;
        } else {
            self.phase = Phase::Waiting;
            self.media.play_loop(self.shared.hold_music.clone());
        }
    }

    async fn on_caller_state(&mut self, st: DialogState) {
        match st {
            DialogState::Terminated(_, reason) => {
                debug!(?reason, "caller leg terminated");
                if !matches!(self.phase, Phase::Ending) {
                    self.caller_gone().await;
                }
            }
            DialogState::Updated(_, req, handle) => {
                if req.method != rsip::Method::Invite {
                    handle.respond(rsip::StatusCode::OK, None, None).await.ok();
                    return;
                }
                // A re-INVITE: a session refresh, or the caller holding or resuming.
                let body = String::from_utf8_lossy(&req.body);
                let reoffer = match self.caller_sdp.on_reoffer(&body) {
                    Ok(r) => r,
                    Err(e) => {
                        info!(error = %e, "refusing the caller's re-INVITE");
                        let status = rsip::StatusCode::NotAcceptableHere;
                        handle.respond(status, None, None).await.ok();
                        return;
                    }
                };
                let ct = rsip::Header::ContentType("application/sdp".into());
                let answer = reoffer.answer.into_bytes();
                handle
                    .respond(rsip::StatusCode::OK, Some(vec![ct]), Some(answer))
                    .await
                    .ok();
                if let Some(change) = reoffer.change {
                    self.on_hold_change("caller", change);
                    self.relay_hold_to_agent(reoffer.offered);
                }
            }
            _ => {}
        }
    }

    async fn on_agent_state(&mut self, st: DialogState) {
        match st {
            DialogState::Terminated(_, reason) => {
                if let Phase::Connected { .. } = self.phase {
                    if matches!(
                        reason,
                        TerminatedReason::UacBye
                            | TerminatedReason::UasBye
                            | TerminatedReason::Timeout
                    ) {
                        info!("agent hung up");
                        self.agent_states = None;
                        if self.consult.is_some() && self.agent_left_consult().await {
                            return;
                        }
                        self.hang_up_caller_after_agent().await;
                    }
                }
            }
            DialogState::Updated(_, req, handle) => {
                let sdp = self.agent_sdp.as_mut();
                let Some(sdp) = sdp.filter(|_| req.method == rsip::Method::Invite) else {
                    handle.respond(rsip::StatusCode::OK, None, None).await.ok();
                    return;
                };
                // A re-INVITE: a session refresh, or the agent holding or resuming.
                let body = String::from_utf8_lossy(&req.body);
                let reoffer = match sdp.on_reoffer(&body) {
                    Ok(r) => r,
                    Err(e) => {
                        info!(error = %e, "refusing the agent's re-INVITE");
                        let status = rsip::StatusCode::NotAcceptableHere;
                        handle.respond(status, None, None).await.ok();
                        return;
                    }
                };
                let ct = rsip::Header::ContentType("application/sdp".into());
                let answer = reoffer.answer.into_bytes();
                handle
                    .respond(rsip::StatusCode::OK, Some(vec![ct]), Some(answer))
                    .await
                    .ok();
                match reoffer.change {
                    Some(hold::Change::Held) => {
                        self.on_hold_change("agent", hold::Change::Held);
                        self.agent_hold_prompt_base =
                            Some(self.media.counters().prompt_packets_out);
                        self.media.play_loop(self.shared.hold_music.clone());
                    }
                    Some(hold::Change::Resumed) => {
                        self.on_hold_change("agent", hold::Change::Resumed);
                        // The music goes on while the API or a consultation holds the caller.
                        if !self.control.held
                            && !self.consult.as_ref().is_some_and(|c| c.holds_caller())
                        {
                            self.media.stop_playback();
                        }
                        let sent = self.media.counters().prompt_packets_out;
                        let base = self.agent_hold_prompt_base.take().unwrap_or(sent);
                        info!(
                            hold_music_packets = sent.saturating_sub(base),
                            "the caller heard hold music while the agent held"
                        );
                    }
                    None => {}
                }
            }
            _ => {}
        }
    }

    /// Counts and logs a hold or resume by `side`, and keeps the hold time.
    fn on_hold_change(&mut self, side: &'static str, change: hold::Change) {
        self.update_hold_clock();
        match change {
            hold::Change::Held => {
                metrics::counter!("carillon_holds_total", "side" => side).increment(1);
                info!(side, "call put on hold");
            }
            hold::Change::Resumed => info!(side, "call resumed from hold"),
        }
    }

    /// Keeps the hold time: the call counts as held while either phone holds, the API
    /// holds, or the caller waits through a consultation.
    fn update_hold_clock(&mut self) {
        let held = self.caller_sdp.is_held()
            || self.agent_sdp.as_ref().is_some_and(|s| s.is_held())
            || self.control.held
            || self.consult.as_ref().is_some_and(|c| c.holds_caller());
        self.hold_clock.update(held, now_ms());
    }

    /// Tells the agent leg that the caller holds or resumes: a re-INVITE offering the
    /// caller's direction (sendonly or inactive on hold, sendrecv on resume). Sent from its
    /// own task, so the call goes on reacting while the agent's phone answers.
    fn relay_hold_to_agent(&mut self, offered: carillon_media::sdp::Direction) {
        let (Phase::Connected { dialog }, Some(sdp)) = (&self.phase, self.agent_sdp.as_mut())
        else {
            return;
        };
        let body = sdp.reoffer(offered).into_bytes();
        let dialog = dialog.clone();
        let ct = rsip::Header::ContentType("application/sdp".into());
        tokio::spawn(
            async move {
                match dialog.reinvite(Some(vec![ct]), Some(body)).await {
                    Ok(Some(resp)) => {
                        debug!(status = %resp.status_code, "agent answered the hold re-INVITE")
                    }
                    Ok(None) => debug!("agent leg not confirmed; hold not relayed"),
                    Err(e) => warn!(error = %e, "could not relay the caller's hold to the agent"),
                }
            }
            .in_current_span(),
        );
    }

    /// The caller hung up (BYE or CANCEL) or its dialog vanished.
    async fn caller_gone(&mut self) {
        let phase = std::mem::replace(&mut self.phase, Phase::Ending);
        let cmd = match phase {
            Phase::Waiting | Phase::CallbackWait | Phase::Ending => Command::Abandon {
                call: self.id.clone(),
                at: now_ms(),
            },
            Phase::Ringing { dialog, .. } => {
                tokio::spawn(async move { dialog.cancel().await.ok() });
                Command::Abandon {
                    call: self.id.clone(),
                    at: now_ms(),
                }
            }
            Phase::Connected { dialog, .. } => {
                self.remove_dialog(&dialog);
                dialog.bye().await.ok();
                Command::Ended {
                    call: self.id.clone(),
                    by: Party::Caller,
                    at: now_ms(),
                }
            }
        };
        info!("caller hung up");
        if let Err(e) = self.shared.routing.propose(cmd).await {
            warn!(error = %e, "routing refused the hang-up");
        }
    }

    async fn hang_up_caller_after_agent(&mut self) {
        if let Phase::Connected { dialog, .. } = std::mem::replace(&mut self.phase, Phase::Ending) {
            self.remove_dialog(&dialog);
        }
        if let Some(customer) = self.callback.ringing.take() {
            tokio::spawn(async move { customer.cancel().await.ok() });
        }
        self.caller_dialog.bye().await.ok();
        let cmd = Command::Ended {
            call: self.id.clone(),
            by: Party::Agent,
            at: now_ms(),
        };
        if let Err(e) = self.shared.routing.propose(cmd).await {
            warn!(error = %e, "routing refused the hang-up");
        }
    }

    /// Hangs up both legs and closes the call as lost with `cause`.
    async fn close_as_lost(&mut self, cause: &str) {
        if let Phase::Connected { dialog, .. } | Phase::Ringing { dialog, .. } =
            std::mem::replace(&mut self.phase, Phase::Ending)
        {
            self.remove_dialog(&dialog);
            dialog.bye().await.ok();
        }
        self.caller_dialog.bye().await.ok();
        let cmd = Command::Lost {
            call: self.id.clone(),
            cause: cause.to_string(),
            at: now_ms(),
        };
        if let Err(e) = self.shared.routing.propose(cmd).await {
            warn!(error = %e, "routing refused to close the call");
        }
    }

    async fn offer_failed(&mut self, agent: &str, failure: OfferFailure) {
        let cmd = Command::OfferFailed {
            call: self.id.clone(),
            agent: agent.to_string(),
            failure,
            at: now_ms(),
        };
        if let Err(e) = self.shared.routing.propose(cmd).await {
            warn!(%agent, error = %e, "routing refused the failed offer");
        }
    }

    /// The exit action to perform, if the call left its queue without an agent while the
    /// caller is still here. Routing says which in `CallExited`; should that event not
    /// reach this task, the record's cause names the queue setting that applied.
    fn exit_action(&mut self) -> Option<ExitAction> {
        // Nobody left to hear it: the caller hung up, or left a number for a callback.
        if matches!(self.phase, Phase::Ending | Phase::CallbackWait) {
            return None;
        }
        let rec = self.record.as_ref()?;
        if !matches!(
            rec.disposition,
            Disposition::Voicemail | Disposition::Refused
        ) {
            return None;
        }
        if let Some(action) = self.exit.take() {
            return Some(action);
        }
        let queue = rec.queue.clone();
        let cause = rec.cause.clone().unwrap_or_default();
        let config = self
            .shared
            .routing
            .read(|acd| acd.queue_config(&queue).cloned());
        let action = match (config, cause.as_str()) {
            (Some(c), "after-hours") => c.after_hours_action,
            (Some(c), "max-wait") => c.max_wait_action,
            (Some(c), "queue-full") => c.queue_full_action,
            _ => ExitAction::default(),
        };
        Some(action)
    }

    /// Performs an exit action: the call is over for routing, the caller still on the line.
    async fn take_exit(&mut self, action: ExitAction) {
        self.phase = Phase::Ending;
        match action {
            ExitAction::Hangup { prompt } => {
                if !prompt.is_empty() {
                    match Prompt::load_wav(&prompt) {
                        Ok(p) => {
                            if !self.play_once(Arc::new(p)).await {
                                return;
                            }
                        }
                        Err(e) => warn!(%prompt, error = %e, "exit prompt unusable; hanging up"),
                    }
                }
                info!("hanging up on the caller (exit action)");
                self.caller_dialog.bye().await.ok();
            }
            ExitAction::Voicemail { mailbox } => self.take_voicemail(&mailbox).await,
            // A move keeps the call in routing; no record, so never here.
            ExitAction::Queue { .. } => {}
        }
    }

    /// Greeting, beep, then the caller's audio into `mailbox` until they hang up or the
    /// message reaches its longest; then the message is stored.
    async fn take_voicemail(&mut self, mailbox: &str) {
        let config = self.shared.config.voicemail.clone();
        let boxes = Mailboxes::new(&self.shared.config.data_dir());
        let limit_bytes = config.disk_limit_mb.saturating_mul(1 << 20);
        let mut samples = Vec::new();
        if let Some(path) = self.shared.config.voicemail_prompt_path() {
            match carillon_media::wav::read(&path) {
                Ok(greeting) => samples = greeting,
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "voicemail greeting unusable; beep only")
                }
            }
        }
        let full = boxes.check_space(limit_bytes);
        if config.beep && full.is_ok() {
            samples.extend(std::iter::repeat_n(0, (BEEP_GAP_MS * 8) as usize));
            samples.extend(carillon_media::tone::sine(BEEP_HZ, BEEP_MS, BEEP_LEVEL));
        }
        if !samples.is_empty() && !self.play_once(Arc::new(Prompt::from_pcm(samples))).await {
            info!(%mailbox, "caller hung up before the beep; no message");
            return;
        }
        if let Err(e) = full {
            warn!(%mailbox, error = %e, "voicemail refused: the store is full");
            self.caller_dialog.bye().await.ok();
            return;
        }
        let recorder = Recorder::new(Recording {
            dir: boxes.incoming_dir(),
            enabled: true,
            disk_watermark_bytes: limit_bytes,
            disk_limit_bytes: limit_bytes,
        });
        let start_ms = now_ms();
        let started = recorder.and_then(|recorder| {
            self.media.start_recording(RecordingTarget {
                recorder,
                call_id: self.id.clone(),
                agent: String::new(),
                queue: self.queue.clone(),
                caller: self.caller.clone(),
                start_unix_ms: start_ms,
            })
        });
        if let Err(e) = started {
            warn!(%mailbox, error = %e, "cannot record the voicemail; hanging up");
            self.caller_dialog.bye().await.ok();
            return;
        }
        info!(%mailbox, "recording voicemail");
        let longest = Duration::from_secs_f64(config.max_length_s);
        let still_there = self.wait_caller(longest).await;
        let meta = self.media.stop_recording().await;
        if still_there {
            info!(%mailbox, "voicemail reached its longest; hanging up");
            self.caller_dialog.bye().await.ok();
        }
        let Some(meta) = meta else {
            warn!(%mailbox, "the voicemail recording vanished");
            return;
        };
        let message = Message {
            call_id: self.id.clone(),
            mailbox: mailbox.to_string(),
            caller: self.caller.clone(),
            dialled: self.dialled.clone(),
            queue: self.queue.clone(),
            start_ms,
            duration_ms: 0,
            file: String::new(),
        };
        let stored =
            tokio::task::spawn_blocking(move || store_message(&boxes, message, &meta.path))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r);
        match stored {
            Ok((path, duration_ms)) => {
                metrics::counter!("carillon_voicemails_total", "mailbox" => mailbox.to_string())
                    .increment(1);
                info!(%mailbox, duration_ms, path = %path.display(), "voicemail stored");
            }
            Err(e) => warn!(%mailbox, error = %e, "could not store the voicemail"),
        }
    }

    /// Plays `prompt` once; false if the caller hung up meanwhile.
    async fn play_once(&mut self, prompt: Arc<Prompt>) -> bool {
        let length = Duration::from_millis(prompt.duration_ms());
        self.media.play_loop(prompt);
        let still_there = self.wait_caller(length).await;
        self.media.stop_playback();
        still_there
    }

    /// Waits `length` while answering the caller's in-dialog requests; false as soon as
    /// the caller hangs up.
    async fn wait_caller(&mut self, length: Duration) -> bool {
        let deadline = tokio::time::Instant::from_std(crate::clock::instant()) + length;
        loop {
            tokio::select! {
                st = self.caller_states.recv() => match st {
                    Some(DialogState::Terminated(..)) | None => return false,
                    Some(st @ DialogState::Updated(..)) => self.on_caller_state(st).await,
                    Some(_) => {}
                },
                _ = tokio::time::sleep_until(deadline) => return true,
            }
        }
    }

    fn remove_dialog(&self, dialog: &InviteDialog) {
        self.shared.sip.dialogs.remove_dialog(&dialog.id());
    }

    async fn store_record(&mut self) {
        let Some(rec) = self.record.take() else {
            return;
        };
        let counters = self.media.counters();
        let cdr = Cdr {
            call_id: rec.call.clone(),
            sip_call_id: self.sip_call_id.clone(),
            caller: rec.caller,
            dialled: rec.dialled,
            queue: rec.queue,
            agent: rec.agent,
            arrived_at_ms: rec.arrived_at,
            offered_at_ms: rec.offered_at,
            answered_at_ms: rec.answered_at,
            ended_at_ms: rec.ended_at,
            wait_ms: rec.wait_ms,
            disposition: rec.disposition.name().to_string(),
            hangup_by: match rec.hangup_by {
                Party::Caller => "caller",
                Party::Agent => "agent",
                Party::System => "system",
            }
            .to_string(),
            cause: rec.cause,
            offers: rec.offers,
            post_dial_us: self.post_dial_us,
            rtp_caller_to_agent: counters.caller_to_agent_packets,
            rtp_agent_to_caller: counters.agent_to_caller_packets,
            node: self.shared.node_id.clone(),
            hold_ms: self.hold_clock.held_ms(now_ms()),
            ended_by: self.control.ended_by.clone(),
            direction: "inbound".into(),
            transfer: self.control.transfer.clone(),
        };
        let held_ms = cdr.hold_ms;
        info!(disposition = %cdr.disposition, wait_ms = cdr.wait_ms, held_ms, "call record stored");
        self.shared.counters.record(&cdr);
        self.shared.record_writer.store(cdr).await;
    }

    fn finish_without_record(&mut self) {
        self.shared.routing.unsubscribe(&self.id, &mut self.events);
        self.shared
            .sip
            .dialogs
            .remove_dialog(&self.caller_dialog.id());
        self.media.stop();
    }
}

/// Where an agent leg goes: the agent's own phone when it is registered here, or the
/// node that holds its registration (an inter-node leg; that node anchors the agent's
/// media and rings the phone).
pub struct AgentTarget {
    pub uri: String,
    pub addr: std::net::SocketAddr,
    pub transport: crate::registrar::SipTransport,
}

fn agent_target(shared: &Shared, agent: &str, agent_node: u64) -> Result<AgentTarget, String> {
    if let Some(cluster) = shared.routing.cluster() {
        if agent_node != shared.node_number {
            let member = cluster
                .member(agent_node)
                .ok_or_else(|| format!("n{agent_node} is not a cluster member"))?;
            let addr: std::net::SocketAddr = member
                .sip_addr
                .parse()
                .map_err(|_| format!("n{agent_node} has no usable SIP address"))?;
            return Ok(AgentTarget {
                uri: format!("sip:{agent}@{addr}"),
                addr,
                transport: crate::registrar::SipTransport::Udp,
            });
        }
    }
    let binding = shared
        .registrar()
        .binding(agent)
        .cloned()
        .ok_or_else(|| "no registered phone".to_string())?;
    Ok(AgentTarget {
        uri: binding.contact.clone(),
        addr: binding.target(),
        transport: binding.transport,
    })
}

/// An INVITE from this node to `callee` (a phone's Contact or a peer node), showing the
/// caller's number.
pub fn agent_invite(
    shared: &Shared,
    callee: &str,
    addr: std::net::SocketAddr,
    transport: crate::registrar::SipTransport,
    caller_user: &str,
    offer: String,
) -> Result<InviteOption, String> {
    let callee: rsip::Uri = callee
        .try_into()
        .map_err(|e| format!("bad target {callee}: {e}"))?;
    let caller: rsip::Uri = shared
        .sip
        .contact_uri(Some(&sanitize_user(caller_user)))
        .as_str()
        .try_into()
        .map_err(|e| format!("bad caller uri: {e}"))?;
    let contact: rsip::Uri = shared
        .sip
        .contact_uri(None)
        .as_str()
        .try_into()
        .map_err(|e| format!("bad contact uri: {e}"))?;
    Ok(InviteOption {
        caller,
        callee,
        contact,
        destination: Some(sip::sip_addr(addr, transport)),
        content_type: Some("application/sdp".into()),
        offer: Some(offer.into_bytes()),
        ..Default::default()
    })
}

/// The header that carries Carillon's call id on an INVITE to an agent: a peer node's leg
/// names its logs by it and watches the call's fate in the routing state through it.
pub const CALL_HEADER: &str = "X-Carillon-Call";

/// `options` with [`CALL_HEADER`] set to `call`.
/// The audio address and codec of an answer's SDP body; why not, in words.
pub fn answer_audio(response: &rsip::Response) -> Result<(std::net::SocketAddr, Codec), String> {
    let body = String::from_utf8_lossy(&response.body);
    carillon_media::sdp::parse(&body)
        .map_err(|e| e.to_string())
        .and_then(|sd| carillon_media::sdp::remote_audio(&sd).map_err(|e| e.to_string()))
}

pub fn with_call_header(mut options: InviteOption, call: &str) -> InviteOption {
    options
        .headers
        .get_or_insert_with(Vec::new)
        .push(rsip::Header::Other(CALL_HEADER.into(), call.into()));
    options
}

/// Turns the recorder's stereo file (caller left, agent silent) into the mailbox's mono
/// message and its sidecar; removes the stereo file. Returns the WAV path and duration.
fn store_message(
    boxes: &Mailboxes,
    mut message: Message,
    recorded: &std::path::Path,
) -> Result<(std::path::PathBuf, u64), String> {
    let (caller, _) =
        carillon_media::recording::read_stereo(recorded).map_err(|e| e.to_string())?;
    message.duration_ms =
        caller.len() as u64 * 1000 / u64::from(carillon_media::codec::CLOCK_RATE_HZ);
    let path = boxes.write(&message, &caller).map_err(|e| e.to_string())?;
    if let Err(e) = std::fs::remove_file(recorded) {
        warn!(file = %recorded.display(), error = %e, "could not remove the raw voicemail recording");
    }
    Ok((path, message.duration_ms))
}

async fn recv_dtmf(
    rx: &mut Option<mpsc::Receiver<carillon_media::DtmfDigit>>,
) -> Option<carillon_media::DtmfDigit> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn recv_opt(rx: &mut Option<DialogStateReceiver>) -> Option<DialogState> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Keeps a caller id usable as a SIP URI user part.
fn sanitize_user(user: &str) -> String {
    let clean: String = user
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "+-_.!~*'()".contains(*c))
        .take(64)
        .collect();
    if clean.is_empty() {
        "anonymous".into()
    } else {
        clean
    }
}
