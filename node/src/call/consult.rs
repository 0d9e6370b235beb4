//! Consultation on a connected call, from the API: the agent consults a number while the
//! caller waits, then hands the call over (consulted transfer), makes it a three-way
//! conference, or goes back to the caller.
//!
//! - `Consult` dials `sip:<number>@<callback.gateway>` ([`Call::dial_gateway`], as a blind
//!   transfer to a number does) while the caller hears the hold music. Once it answers, the
//!   number is the call's third media leg in [`ThirdMode::Consult`]: agent and number talk,
//!   the caller hears only the music. The request is answered when the dial's outcome is
//!   known; busy, refused or no answer within [`CONSULT_RING_MS`] answers
//!   [`ControlError::Unanswered`] (gRPC ABORTED) with the caller back with the agent.
//! - `ConsultedTransfer` promotes the third leg to the agent's place (as a supervisor's
//!   take-over does), hangs the agent's leg up, and ends the agent's part in routing with
//!   `Ended` by the agent, as a blind transfer to a number does: the agent wraps up and the
//!   record closes with `transfer: consulted:<number>`, while the task follows caller and
//!   number until either hangs up ([`Call::hand_over`]). `TakenOver` is not used: it names a
//!   supervisor, who in routing's books stays on the call, and a number is nobody routing
//!   knows.
//! - `Conference` switches the third leg to [`ThirdMode::Barge`] and stops the music: all
//!   three hear each other. The agent hanging up then leaves caller and number talking,
//!   as a conference host who leaves usually does (`transfer: conference:<number>`); the
//!   agent hanging up during the consultation likewise hands the caller to the number
//!   (an attended transfer completed by hanging up, as PBXs do), rather than leaving the
//!   caller on hold with nobody.
//! - `CancelConsult` (or the number hanging up) drops the third leg: the caller is back
//!   with the agent. `Resume` does not end a consultation; it is refused with a pointer here.
//!
//! A call has one third leg: a consultation is refused while a supervisor is on the call,
//! and a supervisor while a consultation runs. Outcomes count in
//! `carillon_consults_total{outcome}`.

use carillon_media::{DtmfDigit, MediaLeg, ThirdMode};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn, Instrument};

use super::control::{answer_in_dialog, DialPurpose, TransferDial, CONSULT_RING_MS};
use super::registry::{ControlError, ControlResult};
use super::{hold, Call, Phase};
use crate::sip::{DialogState, DialogStateReceiver, InviteDialog};

/// A consultation on the call, as the call task holds it.
pub(super) struct Consultation {
    number: String,
    /// Tells this consultation's dial outcome from a cancelled one's.
    attempt: u64,
    dialog: InviteDialog,
    states: DialogStateReceiver,
    sdp: hold::LegSdp,
    /// The Consult request, answered once the number answers or fails.
    reply: Option<oneshot::Sender<ControlResult>>,
    stage: Stage,
}

#[derive(Debug)]
enum Stage {
    Dialling,
    /// The number answered and is the third leg; its keys are not used (the receiver is
    /// kept so the media task's detector has somewhere to put them).
    Talking {
        conference: bool,
        _keys: mpsc::Receiver<DtmfDigit>,
    },
}

impl Consultation {
    /// Whether the caller is kept on hold music (dialling, or agent and number talking).
    pub(super) fn holds_caller(&self) -> bool {
        !matches!(
            self.stage,
            Stage::Talking {
                conference: true,
                ..
            }
        )
    }

    pub(super) fn number(&self) -> &str {
        &self.number
    }
}

/// The next dialog state of an answered consulted leg; never resolves otherwise.
pub(super) async fn next(consult: &mut Option<Consultation>) -> Option<DialogState> {
    match consult {
        Some(c) if matches!(c.stage, Stage::Talking { .. }) => c.states.recv().await,
        _ => std::future::pending().await,
    }
}

fn count(outcome: &'static str) {
    metrics::counter!("carillon_consults_total", "outcome" => outcome).increment(1);
}

impl Call {
    /// Refuses `what` while a consultation runs.
    pub(super) fn require_no_consult(&self, what: &str) -> Result<(), ControlError> {
        match &self.consult {
            Some(c) => Err(ControlError::Refused(format!(
                "call {} is in a consultation with {}: {what} waits until it ends \
                 (ConsultedTransfer completes it, CancelConsult cancels it)",
                self.id, c.number
            ))),
            None => Ok(()),
        }
    }

    /// Starts a consultation: the caller on hold music, `number` dialling. The request's
    /// answer waits for the dial ([`Call::await_consult_dial`]).
    pub(super) fn consult(&mut self, number: String) -> Result<(), ControlError> {
        self.require_connected("a consultation")?;
        if let Some(c) = &self.consult {
            return Err(ControlError::Refused(format!(
                "call {} is in a consultation with {} already; complete, conference or \
                 cancel it first",
                self.id, c.number
            )));
        }
        if let Some(s) = &self.supervisor {
            return Err(ControlError::Refused(format!(
                "supervisor {} is on call {}: a call has one third leg, which the \
                 supervisor holds; consult once the supervisor has left",
                s.name(),
                self.id
            )));
        }
        if self.callback.number.is_some() {
            return Err(ControlError::Refused(format!(
                "call {} is a callback; consultation works on inbound calls",
                self.id
            )));
        }
        if self.agent_sdp.as_ref().is_some_and(|s| s.is_held()) {
            return Err(ControlError::Refused(format!(
                "the agent's phone holds call {}; resume at the phone first (the agent \
                 talks to {number} on it)",
                self.id
            )));
        }
        self.consult_attempts += 1;
        let attempt = self.consult_attempts;
        let purpose = DialPurpose::Consult { attempt };
        let dial = self.dial_gateway(&number, purpose, CONSULT_RING_MS)?;
        // The consultation's music replaces an API hold.
        self.end_api_hold();
        info!(%number, "consultation: dialling; the caller hears hold music");
        self.consult = Some(Consultation {
            number,
            attempt,
            dialog: dial.dialog,
            states: dial.states,
            sdp: dial.sdp,
            reply: None,
            stage: Stage::Dialling,
        });
        self.media.play_loop(self.shared.hold_music.clone());
        self.update_hold_clock();
        Ok(())
    }

    /// Keeps the Consult request's reply until the dial's outcome.
    pub(super) fn await_consult_dial(&mut self, reply: oneshot::Sender<ControlResult>) {
        match self.consult.as_mut() {
            Some(c) => c.reply = Some(reply),
            None => {
                let why = format!("call {}: the consultation ended at once", self.id);
                reply.send(Err(ControlError::Refused(why))).ok();
            }
        }
    }

    /// The consulted number answered (it joins as the third leg) or not (the caller is
    /// back with the agent); either way the Consult request gets its answer.
    pub(super) async fn on_consult_dial(&mut self, d: TransferDial) {
        let DialPurpose::Consult { attempt } = d.purpose else {
            return;
        };
        let current = self
            .consult
            .as_ref()
            .is_some_and(|c| c.attempt == attempt && matches!(c.stage, Stage::Dialling));
        if !current {
            // Cancelled while it rang; hang up an answer that crossed the CANCEL.
            if d.answered() {
                self.remove_dialog(&d.dialog);
                let dialog = d.dialog;
                tokio::spawn(async move { dialog.bye().await.ok() }.in_current_span());
            }
            return;
        }
        let answered = d.answered();
        let joined = match d.remote_audio() {
            Ok((remote, codec)) if matches!(self.phase, Phase::Connected { .. }) => self
                .media
                .try_join_third(
                    MediaLeg::new(d.port, codec, Some(remote)),
                    ThirdMode::Consult,
                )
                .map_err(|e| format!("the media could not take the leg: {e}")),
            Ok(_) => Err("the call is ending".to_string()),
            Err(why) => Err(why),
        };
        let Some(mut c) = self.consult.take() else {
            return;
        };
        let reply = c.reply.take();
        match joined {
            Ok(keys) => {
                info!(number = %c.number, "consulted number answered; agent and number talk");
                count("answered");
                let outcome = format!(
                    "consulting {}: the agent and {} talk, the caller hears hold music",
                    c.number, c.number
                );
                c.stage = Stage::Talking {
                    conference: false,
                    _keys: keys,
                };
                self.consult = Some(c);
                if let Some(reply) = reply {
                    reply.send(Ok(outcome)).ok();
                }
            }
            Err(why) => {
                info!(number = %c.number, %why, "consultation failed; the caller is back with the agent");
                count("unanswered");
                if answered {
                    self.remove_dialog(&d.dialog);
                    let dialog = d.dialog;
                    tokio::spawn(async move { dialog.bye().await.ok() }.in_current_span());
                }
                self.caller_back_with_agent();
                let err = ControlError::Unanswered(format!(
                    "{} did not take the consultation ({why}); the caller is back with the agent",
                    c.number
                ));
                if let Some(reply) = reply {
                    reply.send(Err(err)).ok();
                }
            }
        }
    }

    /// After a consultation that ended without a hand-over: the music stops (unless the
    /// agent's phone holds) and the hold clock follows.
    fn caller_back_with_agent(&mut self) {
        if matches!(self.phase, Phase::Connected { .. })
            && !self.agent_sdp.as_ref().is_some_and(|s| s.is_held())
        {
            self.media.stop_playback();
        }
        self.update_hold_clock();
    }

    /// The answered consultation, or why the request `what` cannot act on it.
    fn talking(&self, what: &str) -> Result<(&Consultation, bool), ControlError> {
        match &self.consult {
            None => Err(ControlError::Refused(format!(
                "call {} has no consultation: start one with Consult before {what}",
                self.id
            ))),
            Some(c) => match &c.stage {
                Stage::Dialling => Err(ControlError::Refused(format!(
                    "the consulted party {} has not answered yet: {what} needs them on the line \
                     (CancelConsult stops the dialling)",
                    c.number
                ))),
                Stage::Talking { conference, .. } => Ok((c, *conference)),
            },
        }
    }

    pub(super) fn conference(&mut self) -> ControlResult {
        let (c, conference) = self.talking("a conference")?;
        if conference {
            return Err(ControlError::Refused(format!(
                "call {} is a conference with {} already",
                self.id, c.number
            )));
        }
        let number = c.number.clone();
        self.media
            .try_set_third_mode(ThirdMode::Barge)
            .map_err(|e| ControlError::Refused(format!("call {}: {e}", self.id)))?;
        if let Some(Consultation {
            stage: Stage::Talking { conference, .. },
            ..
        }) = self.consult.as_mut()
        {
            *conference = true;
        }
        self.caller_back_with_agent();
        info!(%number, "consultation became a conference");
        count("conference");
        Ok(format!(
            "conference: the caller, the agent and {number} hear each other"
        ))
    }

    /// Consulted transfer: the consulted number takes the agent's place with the caller.
    pub(super) async fn complete_consult(&mut self) -> ControlResult {
        let (c, conference) = self.talking("a consulted transfer")?;
        let label = if conference {
            format!("conference:{}", c.number)
        } else {
            format!("consulted:{}", c.number)
        };
        let number = c.number.clone();
        self.hand_over_consult(label).await;
        count("completed");
        Ok(format!(
            "transferred to {number}; the agent's leg is hung up"
        ))
    }

    /// The number becomes the agent leg of the media; [`Call::hand_over`] releases the
    /// agent and follows the call on.
    async fn hand_over_consult(&mut self, label: String) {
        let Some(c) = self.consult.take() else {
            return;
        };
        if let Err(e) = self.media.try_promote_third() {
            // The call's media is gone; the call ends through its own inputs.
            warn!(error = %e, "could not move the consulted number into the agent's place");
        }
        self.media.stop_playback();
        self.control.states = Some(c.states);
        self.control.sdp = Some(c.sdp);
        self.hand_over(c.dialog, label).await;
        self.update_hold_clock();
    }

    pub(super) fn cancel_consult(&mut self) -> ControlResult {
        let Some(mut c) = self.consult.take() else {
            return Err(ControlError::Refused(format!(
                "call {} has no consultation to cancel",
                self.id
            )));
        };
        let outcome = self.drop_consult(&mut c, true);
        self.caller_back_with_agent();
        count("cancelled");
        info!(number = %c.number, "consultation cancelled");
        Ok(outcome)
    }

    /// Hangs up (or stops dialling) the consulted leg and takes it out of the media;
    /// answers a Consult request still waiting. Returns what happened, in words.
    fn drop_consult(&mut self, c: &mut Consultation, hang_up: bool) -> String {
        if let Some(reply) = c.reply.take() {
            let why = format!("the consultation with {} was cancelled", c.number);
            reply.send(Err(ControlError::Refused(why))).ok();
        }
        let dialog = c.dialog.clone();
        match c.stage {
            Stage::Dialling => {
                if hang_up {
                    tokio::spawn(async move { dialog.cancel().await.ok() }.in_current_span());
                }
                format!(
                    "stopped dialling {}; the caller is back with the agent",
                    c.number
                )
            }
            Stage::Talking { .. } => {
                self.media.try_drop_third().ok();
                self.remove_dialog(&dialog);
                if hang_up {
                    tokio::spawn(async move { dialog.bye().await.ok() }.in_current_span());
                }
                format!("{} hung up; the caller is back with the agent", c.number)
            }
        }
    }

    /// Something from the consulted number's dialog: a hang-up (the caller is back with
    /// the agent; a conference goes on between caller and agent) or a re-INVITE.
    pub(super) async fn on_consult_state(&mut self, st: Option<DialogState>) {
        match st {
            Some(DialogState::Terminated(..)) | None => {
                let Some(mut c) = self.consult.take() else {
                    return;
                };
                self.drop_consult(&mut c, false);
                self.caller_back_with_agent();
                count("third-hung-up");
                info!(number = %c.number, "the consulted number hung up; the caller is back with the agent");
            }
            Some(DialogState::Updated(_, req, handle)) => {
                let sdp = self.consult.as_mut().map(|c| &mut c.sdp);
                answer_in_dialog(sdp, &req, handle).await;
            }
            Some(_) => {}
        }
    }

    /// The agent hung up during an answered consultation or conference: the caller goes
    /// on with the number. True if so; false when there was no one to hand over to (a
    /// consultation still dialling is cancelled).
    pub(super) async fn agent_left_consult(&mut self) -> bool {
        let label = match self.talking("") {
            Ok((c, true)) => format!("conference:{}", c.number),
            Ok((c, false)) => format!("consulted:{}", c.number),
            Err(_) => {
                self.end_consult();
                return false;
            }
        };
        info!(transfer = %label, "the agent hung up during the consultation; the caller goes on with the number");
        self.hand_over_consult(label).await;
        count("completed");
        true
    }

    /// The call is over: the consulted leg goes too.
    pub(super) fn end_consult(&mut self) {
        let Some(mut c) = self.consult.take() else {
            return;
        };
        if let Some(reply) = c.reply.take() {
            let why = format!("call {} ended during the consultation", self.id);
            reply.send(Err(ControlError::Refused(why))).ok();
        }
        info!(number = %c.number, "the call ended; hanging up the consulted number");
        self.drop_consult(&mut c, true);
    }
}
