//! Call control asked for through the API (`CallService`): hang-up, hold and resume, and
//! blind transfers to a queue, an agent or a number. The call task runs these between its
//! other inputs, so a request never races the call's own signalling.
//!
//! - Hang-up sends BYE to both legs and ends the call in routing (`Ended`); the record
//!   says `ended_by: api`.
//! - Hold is the node's, not the phone's: the caller hears the hold music and neither
//!   side hears the other (the media relay forwards nothing while a prompt plays) until
//!   resume; it counts in `carillon_holds_total{side="api"}` and the record's `hold_ms`.
//!   The agent's phone is not re-INVITEd, so any phone (or none) works.
//! - A transfer to a queue or an agent is routing's (`TransferToQueue`, `TransferToAgent`):
//!   once committed the agent's leg is hung up and the caller waits again with hold music
//!   for the next offer, at its original place in line. An agent who is not ready is
//!   waited for [`TRANSFER_AGENT_WAIT_MS`]; then anyone in the call's queue may take it.
//! - A transfer to a number dials `sip:<number>@<callback.gateway>` while the caller hears
//!   hold music; on an answer the caller is bridged to it and the agent's leg hung up
//!   (routing sees the call end there, `Ended` by the agent, so the agent wraps up), and the
//!   task follows the two remaining legs until either hangs up; the record's end is then.
//!   If the number does not answer, the caller is back with the agent.
//! - Consultation, consulted transfer and conference dial the same way and live in
//!   [`super::consult`]; a consulted transfer ends the agent's part as a transfer to a
//!   number does ([`Call::hand_over`]).
//!
//! Pick-up needs no call task: it is a routing command (`Pickup`) whose revoke and offer
//! events the call acts on as on any others.

use std::time::Duration;

use carillon_media::{MediaLeg, RtpPort};
use carillon_routing::{Command, Event, Party};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn, Instrument};

use super::registry::{Control, ControlError, ControlResult};
use super::{agent_invite, hold, sanitize_user, Call, Phase, RECORD_WAIT_MS};
use crate::clock::now_ms;
use crate::registrar::SipTransport;
use crate::routing_log::ProposeError;
use crate::sip::{rsip, DialogState, DialogStateReceiver, InviteDialog};

/// How long a call transferred to an agent who is not ready waits for that agent alone.
pub const TRANSFER_AGENT_WAIT_MS: u64 = 30_000;
/// How long a number a call is transferred to may ring.
pub const TRANSFER_RING_MS: u64 = 30_000;
/// How long a consulted number may ring while the agent waits and the caller hears hold
/// music (the Consult request waits for it, within `carillon ctl`'s 30 s).
pub const CONSULT_RING_MS: u64 = 20_000;
/// The longest a call transferred to a number is followed (a lost BYE must not keep the
/// task, its ports and its call slot for ever).
const TRANSFERRED_CALL_MAX_MS: u64 = 4 * 3_600_000;
/// Transfer-dial outcomes that may wait for the task (one dial is current at a time).
const DIALS_MAX: usize = 2;

/// Why transfers to a number and click-to-dial cannot work without a gateway.
pub const NO_GATEWAY: &str = "no gateway to dial numbers through: set [callback] gateway \
     in the node's config (transfers to a number, consultations and click-to-dial use it)";

/// A call-control request for one call.
#[derive(Debug)]
pub enum CallAction {
    /// End the call; `by` is recorded as the party who hung up.
    Hangup {
        by: Party,
    },
    Hold,
    Resume,
    TransferToQueue {
        queue: String,
    },
    TransferToAgent {
        agent: String,
    },
    TransferToNumber {
        number: String,
    },
    /// Consult `number` with the caller on hold ([`super::consult`]); answered once the
    /// dial's outcome is known.
    Consult {
        number: String,
    },
    /// Hand the call to the consulted party (consulted transfer).
    CompleteConsult,
    /// Make the consultation a three-way conference.
    Conference,
    /// Hang up the consulted party; the caller is back with the agent.
    CancelConsult,
}

impl CallAction {
    /// How long the API waits for the call task's answer: a consultation answers once the
    /// number has answered or failed, which may take its whole ring time.
    pub fn reply_wait_ms(&self) -> u64 {
        match self {
            CallAction::Consult { .. } => CONSULT_RING_MS + 5_000,
            _ => super::registry::CONTROL_REPLY_MS,
        }
    }
}

/// What API call control did to one call.
pub(super) struct ControlState {
    /// The node holds the call on the agent's behalf.
    pub(super) held: bool,
    /// Hold-music packets sent when that hold began.
    hold_prompt_base: Option<u64>,
    /// `api` once CallService.Hangup ended the call.
    pub(super) ended_by: Option<String>,
    /// The last transfer, as the record names it.
    pub(super) transfer: Option<String>,
    /// The number being dialled for a transfer.
    dialling: Option<String>,
    /// The transfer leg: its dialog states, our side of its session, and (once answered)
    /// its dialog.
    pub(super) states: Option<DialogStateReceiver>,
    pub(super) sdp: Option<hold::LegSdp>,
    pub(super) external: Option<InviteDialog>,
    dials_tx: mpsc::Sender<TransferDial>,
    pub(super) dials_rx: mpsc::Receiver<TransferDial>,
}

impl ControlState {
    pub(super) fn new() -> Self {
        let (dials_tx, dials_rx) = mpsc::channel(DIALS_MAX);
        ControlState {
            held: false,
            hold_prompt_base: None,
            ended_by: None,
            transfer: None,
            dialling: None,
            states: None,
            sdp: None,
            external: None,
            dials_tx,
            dials_rx,
        }
    }
}

/// What a number is dialled through the gateway for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum DialPurpose {
    /// A blind transfer: on an answer the caller goes to the number.
    Transfer,
    /// A consultation; `attempt` tells a current dial from one given up on.
    Consult { attempt: u64 },
}

/// How the INVITE to a number dialled through the gateway ended.
pub(super) struct TransferDial {
    pub(super) purpose: DialPurpose,
    pub(super) number: String,
    pub(super) dialog: InviteDialog,
    pub(super) result: Result<rsip::Response, String>,
    pub(super) port: RtpPort,
}

impl TransferDial {
    /// Whether the number answered (2xx).
    pub(super) fn answered(&self) -> bool {
        matches!(&self.result, Ok(r) if r.status_code.kind() == rsip::StatusCodeKind::Successful)
    }

    /// The answer's audio address and codec, or why the dial failed, in words.
    pub(super) fn remote_audio(
        &self,
    ) -> Result<(std::net::SocketAddr, carillon_media::Codec), String> {
        match &self.result {
            Ok(r) if self.answered() => super::answer_audio(r),
            Ok(r) => Err(format!("answered {}", r.status_code)),
            Err(e) => Err(e.clone()),
        }
    }
}

/// A number being dialled through the gateway: its dialog (to cancel or hang up), its
/// dialog states, and our side of its session.
pub(super) struct GatewayDial {
    pub(super) dialog: InviteDialog,
    pub(super) states: DialogStateReceiver,
    pub(super) sdp: hold::LegSdp,
}

fn phase_name(phase: &Phase) -> &'static str {
    match phase {
        Phase::Waiting => "waiting in its queue",
        Phase::CallbackWait => "a callback waiting for its turn",
        Phase::Ringing { .. } => "ringing an agent",
        Phase::Connected { .. } => "connected",
        Phase::Ending => "ending",
    }
}

impl Call {
    pub(super) async fn on_call_action(
        &mut self,
        action: CallAction,
        reply: oneshot::Sender<ControlResult>,
    ) {
        info!(?action, "call control from the API");
        let result = match action {
            CallAction::Hangup { by } => self.api_hangup(by).await,
            CallAction::Hold => self.api_hold(),
            CallAction::Resume => self.api_resume(),
            CallAction::TransferToQueue { queue } => {
                let cmd = Command::TransferToQueue {
                    call: self.id.clone(),
                    queue: queue.clone(),
                    at: now_ms(),
                };
                self.transfer_within(cmd, format!("queue:{queue}")).await
            }
            CallAction::TransferToAgent { agent } => {
                let cmd = Command::TransferToAgent {
                    call: self.id.clone(),
                    agent: agent.clone(),
                    wait_ms: TRANSFER_AGENT_WAIT_MS,
                    at: now_ms(),
                };
                self.transfer_within(cmd, format!("agent:{agent}")).await
            }
            CallAction::TransferToNumber { number } => self.transfer_to_number(number),
            CallAction::Consult { number } => match self.consult(number) {
                // Answered from `on_consult_dial` once the number answers or fails.
                Ok(()) => {
                    self.await_consult_dial(reply);
                    return;
                }
                Err(e) => Err(e),
            },
            CallAction::CompleteConsult => self.complete_consult().await,
            CallAction::Conference => self.conference(),
            CallAction::CancelConsult => self.cancel_consult(),
        };
        if let Err(e) = &result {
            info!(error = %e, "call control refused");
        }
        reply.send(result).ok();
    }

    /// The call must be connected to an agent and not in the middle of something else.
    pub(super) fn require_connected(&self, what: &str) -> Result<(), ControlError> {
        if !matches!(self.phase, Phase::Connected { .. }) {
            return Err(ControlError::Refused(format!(
                "call {} is {}: {what} needs a connected call",
                self.id,
                phase_name(&self.phase)
            )));
        }
        if self.callback.agent_leg.is_some() || self.callback.ringing.is_some() {
            return Err(ControlError::Refused(format!(
                "call {} is a callback whose customer is still being dialled; try again once they answer",
                self.id
            )));
        }
        if let Some(number) = &self.control.dialling {
            return Err(ControlError::Refused(format!(
                "call {} is being transferred to {number}; wait for that to answer or fail",
                self.id
            )));
        }
        Ok(())
    }

    async fn api_hangup(&mut self, by: Party) -> ControlResult {
        self.require_connected("hang-up")?;
        if let Phase::Connected { dialog } = std::mem::replace(&mut self.phase, Phase::Ending) {
            self.remove_dialog(&dialog);
            tokio::spawn(async move { dialog.bye().await.ok() }.in_current_span());
        }
        self.agent_states = None;
        let caller = self.caller_dialog.clone();
        tokio::spawn(async move { caller.bye().await.ok() }.in_current_span());
        self.control.ended_by = Some("api".into());
        let cmd = Command::Ended {
            call: self.id.clone(),
            by,
            at: now_ms(),
        };
        if let Err(e) = self.shared.routing.propose(cmd).await {
            warn!(error = %e, "routing refused the API hang-up");
        }
        Ok("hung up".into())
    }

    fn api_hold(&mut self) -> ControlResult {
        self.require_connected("hold")?;
        self.require_no_consult("hold")?;
        if self.control.held {
            return Err(ControlError::Refused(format!(
                "call {} is on hold already",
                self.id
            )));
        }
        if self.agent_sdp.as_ref().is_some_and(|s| s.is_held()) {
            return Err(ControlError::Refused(format!(
                "call {} is on hold at the agent's phone already",
                self.id
            )));
        }
        self.control.held = true;
        self.on_hold_change("api", hold::Change::Held);
        self.control.hold_prompt_base = Some(self.media.counters().prompt_packets_out);
        self.media.play_loop(self.shared.hold_music.clone());
        Ok("held".into())
    }

    fn api_resume(&mut self) -> ControlResult {
        self.require_connected("resume")?;
        if let Some(c) = &self.consult {
            return Err(ControlError::Refused(format!(
                "call {} is in a consultation with {}, not on hold: CancelConsult brings the \
                 caller back to the agent",
                self.id,
                c.number()
            )));
        }
        if !self.control.held {
            return Err(ControlError::Refused(format!(
                "call {} is not on hold through the API",
                self.id
            )));
        }
        self.end_api_hold();
        Ok("resumed".into())
    }

    /// Ends the API hold, if any: the music stops and the parties hear each other again.
    pub(super) fn end_api_hold(&mut self) {
        if !self.control.held {
            return;
        }
        self.control.held = false;
        self.on_hold_change("api", hold::Change::Resumed);
        self.media.stop_playback();
        let sent = self.media.counters().prompt_packets_out;
        let base = self.control.hold_prompt_base.take().unwrap_or(sent);
        info!(
            hold_music_packets = sent.saturating_sub(base),
            "the caller heard hold music while the API held the call"
        );
    }

    /// A transfer routing performs (to a queue or an agent): once committed, the agent's
    /// leg goes and the caller waits for the next offer.
    async fn transfer_within(&mut self, cmd: Command, label: String) -> ControlResult {
        self.require_connected("a transfer")?;
        self.require_no_consult("a blind transfer")?;
        match self.shared.routing.propose(cmd.clone()).await {
            Ok(()) => {}
            Err(ProposeError::Refused(why)) => return Err(ControlError::Refused(why)),
            Err(e) => {
                return Err(ControlError::Refused(format!(
                    "routing cannot take the transfer now ({e}); try again"
                )))
            }
        }
        self.end_api_hold();
        if let Phase::Connected { dialog } = std::mem::replace(&mut self.phase, Phase::Waiting) {
            self.remove_dialog(&dialog);
            tokio::spawn(async move { dialog.bye().await.ok() }.in_current_span());
        }
        self.agent_states = None;
        self.agent_sdp = None;
        let held = self.caller_sdp.is_held();
        self.hold_clock.update(held, now_ms());
        if let Command::TransferToQueue { queue, .. } = cmd {
            self.queue = queue;
        }
        info!(transfer = %label, "call transferred; the caller waits for the next offer");
        metrics::counter!("carillon_transfers_total", "to" => label.split(':').next().unwrap_or("").to_string())
            .increment(1);
        self.control.transfer = Some(label.clone());
        self.back_to_waiting();
        Ok(format!("transferred to {label}"))
    }

    /// Starts dialling `number` for a blind transfer; the outcome comes back through
    /// `control.dials_rx` to [`Call::on_transfer_dial`].
    fn transfer_to_number(&mut self, number: String) -> ControlResult {
        self.require_connected("a transfer")?;
        self.require_no_consult("a blind transfer")?;
        let dial = self.dial_gateway(&number, DialPurpose::Transfer, TRANSFER_RING_MS)?;
        info!(%number, "transfer: dialling the number; the caller hears hold music");
        self.control.dialling = Some(number.clone());
        self.control.states = Some(dial.states);
        self.control.sdp = Some(dial.sdp);
        self.media.play_loop(self.shared.hold_music.clone());
        Ok(format!("dialling {number}"))
    }

    /// Dials `sip:<number>@<callback.gateway>` showing the caller's number; the outcome
    /// (answer, refusal, or no answer within `ring_ms`, then cancelled) comes back
    /// through `control.dials_rx` tagged with `purpose`.
    pub(super) fn dial_gateway(
        &mut self,
        number: &str,
        purpose: DialPurpose,
        ring_ms: u64,
    ) -> Result<GatewayDial, ControlError> {
        let gateway = self
            .shared
            .config
            .callback
            .as_ref()
            .map(|c| c.gateway)
            .ok_or_else(|| ControlError::Refused(NO_GATEWAY.into()))?;
        self.dial_via(gateway, number, purpose, ring_ms)
    }

    /// As [`Call::dial_gateway`], through `gateway` (an IVR transfer step may name its own).
    pub(super) fn dial_via(
        &mut self,
        gateway: std::net::SocketAddr,
        number: &str,
        purpose: DialPurpose,
        ring_ms: u64,
    ) -> Result<GatewayDial, ControlError> {
        let port = self.shared.ports.allocate().map_err(|e| {
            ControlError::Refused(format!("no RTP port for a leg to {number}: {e}"))
        })?;
        let offer = carillon_media::sdp::offer(port.local_addr(), &[self.codec], now_ms());
        let uri = format!("sip:{}@{}", sanitize_user(number), gateway);
        let options = agent_invite(
            &self.shared,
            &uri,
            gateway,
            SipTransport::Udp,
            &self.caller,
            offer.clone(),
        )
        .map_err(ControlError::Refused)?;
        let (tx, states) = self.shared.sip.dialogs.new_dialog_state_channel();
        let (dialog, join) = self
            .shared
            .sip
            .dialogs
            .do_invite_async(options, tx)
            .map_err(|e| ControlError::Refused(format!("the INVITE to {number} failed: {e}")))?;
        debug!(%uri, ?purpose, "dialling through the gateway");
        let outcomes = self.control.dials_tx.clone();
        let dialled = number.to_string();
        let ringing = dialog.clone();
        tokio::spawn(
            async move {
                let ring = Duration::from_millis(ring_ms);
                let result = match tokio::time::timeout(ring, join).await {
                    Ok(Ok(Ok((_, Some(resp))))) => Ok(resp),
                    Ok(Ok(Ok((_, None)))) => Err("no final response".to_string()),
                    Ok(Ok(Err(e))) => Err(e.to_string()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => {
                        ringing.cancel().await.ok();
                        Err(format!("no answer within {ring_ms} ms"))
                    }
                };
                let outcome = TransferDial {
                    purpose,
                    number: dialled,
                    dialog: ringing,
                    result,
                    port,
                };
                outcomes.send(outcome).await.ok();
            }
            .in_current_span(),
        );
        Ok(GatewayDial {
            dialog,
            states,
            sdp: hold::LegSdp::new(offer),
        })
    }

    /// The transfer's number answered (bridge the caller to it, the agent leaves) or not
    /// (the caller is back with the agent).
    pub(super) async fn on_transfer_dial(&mut self, d: TransferDial) {
        if let DialPurpose::Consult { .. } = d.purpose {
            return self.on_consult_dial(d).await;
        }
        self.control.dialling = None;
        let answered = d.answered();
        if !matches!(self.phase, Phase::Connected { .. }) {
            // A party hung up while the number rang: the call is over.
            if answered {
                self.remove_dialog(&d.dialog);
                d.dialog.bye().await.ok();
            }
            self.control.states = None;
            return;
        }
        let (remote, codec) = match d.remote_audio() {
            Ok(x) => x,
            Err(why) => {
                info!(number = %d.number, %why, "transfer to the number failed; the caller is back with the agent");
                if answered {
                    self.remove_dialog(&d.dialog);
                    d.dialog.bye().await.ok();
                }
                self.control.states = None;
                if !self.control.held {
                    self.media.stop_playback();
                }
                metrics::counter!("carillon_transfers_failed_total", "to" => "number").increment(1);
                return;
            }
        };
        self.media
            .bridge(MediaLeg::new(d.port, codec, Some(remote)));
        info!(number = %d.number, "the number answered; caller bridged to it, agent released");
        metrics::counter!("carillon_transfers_total", "to" => "number").increment(1);
        self.hand_over(d.dialog, format!("number:{}", d.number))
            .await;
    }

    /// The caller now talks to `external` (the media already carries it; its dialog
    /// states and our side of its session are in `control`): the agent's leg is hung up,
    /// routing ends the agent's part (`Ended` by the agent, so the agent wraps up and the
    /// record closes), and once the record is here the task's main loop ends and
    /// [`Call::follow_transfer`] follows caller and `external` until either hangs up.
    pub(super) async fn hand_over(&mut self, external: InviteDialog, label: String) {
        self.end_api_hold();
        if let Phase::Connected { dialog } = std::mem::replace(&mut self.phase, Phase::Ending) {
            self.remove_dialog(&dialog);
            tokio::spawn(async move { dialog.bye().await.ok() }.in_current_span());
        }
        self.agent_states = None;
        self.agent_sdp = None;
        self.control.external = Some(external);
        info!(transfer = %label, "caller handed over; agent released");
        self.control.transfer = Some(label);
        let cmd = Command::Ended {
            call: self.id.clone(),
            by: Party::Agent,
            at: now_ms(),
        };
        if let Err(e) = self.shared.routing.propose(cmd).await {
            warn!(error = %e, "routing refused the end of the agent's part");
            return;
        }
        // Take the record now, so the caller's dialog states stay unread for
        // `follow_transfer`, which runs once the task's main loop sees the record.
        let wait = Duration::from_millis(RECORD_WAIT_MS);
        while self.record.is_none() {
            match tokio::time::timeout(wait, self.events.recv()).await {
                Ok(Some(Event::CallFinished(rec))) => self.record = Some(rec),
                Ok(Some(other)) => debug!(event = ?other, "routing event"),
                Ok(None) | Err(_) => {
                    warn!("no terminal record arrived for the transferred call");
                    return;
                }
            }
        }
    }

    /// After a transfer to a number: relays nothing (the media task bridges caller and
    /// number), answers re-INVITEs, and hangs up one side when the other does. Returns who
    /// ended it; `None` when there was no transfer to follow.
    pub(super) async fn follow_transfer(&mut self) -> Option<TransferEnd> {
        let external = self.control.external.take()?;
        let Some(mut states) = self.control.states.take() else {
            self.remove_dialog(&external);
            external.bye().await.ok();
            return Some(TransferEnd::Node);
        };
        let mut end = TransferEnd::Node;
        let longest = tokio::time::sleep(Duration::from_millis(TRANSFERRED_CALL_MAX_MS));
        tokio::pin!(longest);
        loop {
            tokio::select! {
                st = self.caller_states.recv() => match st {
                    Some(DialogState::Terminated(..)) | None => {
                        info!("the caller hung up on the transferred call");
                        self.remove_dialog(&external);
                        external.bye().await.ok();
                        end = TransferEnd::Caller;
                        break;
                    }
                    Some(st @ DialogState::Updated(..)) => self.on_caller_state(st).await,
                    Some(_) => {}
                },
                st = states.recv() => match st {
                    Some(DialogState::Terminated(..)) | None => {
                        info!("the number hung up on the transferred call");
                        self.remove_dialog(&external);
                        self.caller_dialog.bye().await.ok();
                        end = TransferEnd::Number;
                        break;
                    }
                    Some(DialogState::Updated(_, req, handle)) => {
                        answer_in_dialog(self.control.sdp.as_mut(), &req, handle).await;
                    }
                    Some(_) => {}
                },
                Some(c) = self.control_rx.recv() => match c {
                    Control::Call(CallAction::Hangup { .. }, reply) => {
                        self.remove_dialog(&external);
                        let ext = external.clone();
                        tokio::spawn(async move { ext.bye().await.ok() }.in_current_span());
                        self.caller_dialog.bye().await.ok();
                        self.control.ended_by = Some("api".into());
                        reply.send(Ok("hung up".into())).ok();
                        break;
                    }
                    Control::Call(_, reply) | Control::Supervise(_, reply) => {
                        let to = self.control.transfer.as_deref().unwrap_or("a number");
                        let why = format!("call {} was transferred ({to}); only hang-up applies now", self.id);
                        reply.send(Err(ControlError::Refused(why))).ok();
                    }
                },
                _ = &mut longest => {
                    warn!("the transferred call outlived its longest; hanging up both sides");
                    self.remove_dialog(&external);
                    external.bye().await.ok();
                    self.caller_dialog.bye().await.ok();
                    break;
                }
            }
        }
        if let Some(rec) = self.record.as_mut() {
            rec.ended_at = now_ms();
        }
        Some(end)
    }
}

/// Who ended a call after its transfer to a number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum TransferEnd {
    Caller,
    Number,
    /// The API's hang-up, the longest a transferred call is followed, or a lost leg.
    Node,
}

/// Answers an in-dialog request on a leg the node holds alone (a transferred-to or
/// consulted number): a re-INVITE gets our session back (a refresh or its hold; the media
/// does not change), anything else a plain 200.
pub(super) async fn answer_in_dialog(
    sdp: Option<&mut hold::LegSdp>,
    req: &rsip::Request,
    handle: rsipstack::dialog::dialog::TransactionHandle,
) {
    let body = String::from_utf8_lossy(&req.body).to_string();
    let answer = sdp.and_then(|s| s.on_reoffer(&body).ok());
    match answer {
        Some(r) if req.method == rsip::Method::Invite => {
            let ct = rsip::Header::ContentType("application/sdp".into());
            let body = Some(r.answer.into_bytes());
            handle
                .respond(rsip::StatusCode::OK, Some(vec![ct]), body)
                .await
                .ok();
        }
        _ => {
            handle.respond(rsip::StatusCode::OK, None, None).await.ok();
        }
    }
}
