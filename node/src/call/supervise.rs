//! A supervisor on a call: silent monitor, whisper, barge and take-over, from a
//! registered SIP phone, switched mid-call.
//!
//! A supervisor is a `[[supervisors]]` account whose phone registers like an agent's but
//! takes no queue calls. It joins a call in one of two ways, both ending in a
//! [`SuperviseAction::Join`] that the call task applies between its other inputs:
//! - the phone dials a feature code and the agent's id (`*81` monitor, `*82` whisper, `*83`
//!   barge by default, `[supervision]`): the edge finds the call that agent is on through
//!   the routing state and answers the phone ([`feature_call`]);
//! - the API asks for it ([`request`]): the node rings the supervisor's registered phone and
//!   joins it once answered; asked again on a call already supervised, it switches mode.
//!
//! On the call, the supervisor's phone is a third media leg ([`carillon_media::ThirdMode`]);
//! its keys switch mode: 1 monitor, 2 whisper, 3 barge, 4 take over. A take-over hangs up
//! the agent, commits `TakenOver` (the agent goes to wrap-up, the record names the
//! supervisor) and makes the supervisor's phone the call's agent leg.
//!
//! Mixing happens at the node that owns the caller leg, and only a supervisor phone
//! registered at that node can join: a request that would need another node is refused
//! with a message naming the owner.

use std::sync::Arc;
use std::time::Duration;

use carillon_media::{sdp, Codec, DtmfDigit, MediaLeg, ThirdMode};
use carillon_routing::{AgentState, Command};
use rsipstack::transaction::transaction::Transaction;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn, Instrument};

use super::registry::{ControlError, ControlResult};
use super::{hold, Call, Phase};
use crate::clock::now_ms;
use crate::node::Shared;
use crate::sip::{self, rsip, DialogState, DialogStateReceiver, InviteDialog};

/// What the supervisor does on the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Monitor,
    Whisper,
    Barge,
    TakeOver,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Monitor => "monitor",
            Mode::Whisper => "whisper",
            Mode::Barge => "barge",
            Mode::TakeOver => "take-over",
        }
    }

    /// The supervisor's keys during a session.
    pub fn from_key(key: char) -> Option<Mode> {
        match key {
            '1' => Some(Mode::Monitor),
            '2' => Some(Mode::Whisper),
            '3' => Some(Mode::Barge),
            '4' => Some(Mode::TakeOver),
            _ => None,
        }
    }

    fn third(self) -> ThirdMode {
        match self {
            Mode::Monitor => ThirdMode::Monitor,
            Mode::Whisper => ThirdMode::Whisper,
            Mode::Barge | Mode::TakeOver => ThirdMode::Barge,
        }
    }
}

/// A supervisor's phone, answered (or answering), ready to join a call.
pub struct SupervisorLeg {
    pub supervisor: String,
    pub dialog: InviteDialog,
    pub states: DialogStateReceiver,
    pub media: MediaLeg,
    /// Our side of the phone's session (offer or answer), for its re-INVITEs and, after a
    /// take-over, as the call's agent session.
    pub local_sdp: String,
}

impl std::fmt::Debug for SupervisorLeg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SupervisorLeg")
            .field("supervisor", &self.supervisor)
            .field("media", &self.media)
            .finish_non_exhaustive()
    }
}

/// A supervisor request for one call.
#[derive(Debug)]
pub enum SuperviseAction {
    /// The supervisor's phone joins in `mode` (take-over joins, then takes over).
    Join { leg: SupervisorLeg, mode: Mode },
    /// The supervisor already on the call switches to `mode`. `NotFound` when no
    /// supervisor is on the call (the API then rings one).
    Switch { supervisor: String, mode: Mode },
}

/// A supervisor on the call, as the call task holds it.
pub(super) struct Session {
    supervisor: String,
    mode: Mode,
    dialog: InviteDialog,
    states: DialogStateReceiver,
    dtmf: mpsc::Receiver<DtmfDigit>,
    local_sdp: String,
}

impl Session {
    /// The supervisor's id.
    pub(super) fn name(&self) -> &str {
        &self.supervisor
    }
}

/// What the supervisor's phone did.
pub(super) enum SessionEvent {
    Key(char),
    // Boxed: a dialog state is large and keys are the common case.
    State(Box<DialogState>),
    Gone,
}

/// The next thing from the supervisor's phone; never resolves without a session.
pub(super) async fn next(session: &mut Option<Session>) -> SessionEvent {
    let Some(s) = session.as_mut() else {
        return std::future::pending().await;
    };
    tokio::select! {
        d = s.dtmf.recv() => match d {
            Some(d) => SessionEvent::Key(d.digit),
            // The media task ended; the call ends through its own inputs.
            None => std::future::pending().await,
        },
        st = s.states.recv() => match st {
            Some(st) => SessionEvent::State(Box::new(st)),
            None => SessionEvent::Gone,
        },
    }
}

impl Call {
    pub(super) async fn on_supervise(
        &mut self,
        action: SuperviseAction,
        reply: oneshot::Sender<ControlResult>,
    ) {
        let result = match action {
            SuperviseAction::Join { leg, mode } => self.join(leg, mode).await,
            SuperviseAction::Switch { supervisor, mode } => match &self.supervisor {
                Some(s) if s.supervisor == supervisor => self.switch(mode).await,
                Some(s) => Err(ControlError::Refused(format!(
                    "call {} is supervised by {} already",
                    self.id, s.supervisor
                ))),
                None if self.consult.is_some() => Err(self.third_leg_busy()),
                None if self.connected_agent_dialog().is_none() => {
                    Err(ControlError::Refused(format!(
                        "call {} is not connected to an agent; nothing to supervise",
                        self.id
                    )))
                }
                None => Err(ControlError::NotFound(format!(
                    "no supervisor on call {}",
                    self.id
                ))),
            },
        };
        reply.send(result).ok();
    }

    /// Why a supervisor cannot join while the agent consults a number.
    fn third_leg_busy(&self) -> ControlError {
        let number = self.consult.as_ref().map_or("", |c| c.number());
        ControlError::Refused(format!(
            "call {}'s agent is consulting {number}: a call has one third leg, which the \
             consultation holds; supervise once it has ended",
            self.id
        ))
    }

    fn connected_agent_dialog(&self) -> Option<&InviteDialog> {
        match &self.phase {
            Phase::Connected { dialog } if self.callback.number.is_none() => Some(dialog),
            _ => None,
        }
    }

    async fn join(&mut self, leg: SupervisorLeg, mode: Mode) -> ControlResult {
        let refuse = |why: String, dialog: InviteDialog| {
            tokio::spawn(async move { dialog.bye().await.ok() });
            Err(ControlError::Refused(why))
        };
        if self.connected_agent_dialog().is_none() {
            let why = format!("call {} is not connected to an agent", self.id);
            return refuse(why, leg.dialog);
        }
        if let Some(s) = &self.supervisor {
            let why = format!("call {} is supervised by {} already", self.id, s.supervisor);
            return refuse(why, leg.dialog);
        }
        if self.consult.is_some() {
            let why = self.third_leg_busy().to_string();
            return refuse(why, leg.dialog);
        }
        let dtmf = match self.media.try_join_third(leg.media, mode.third()) {
            Ok(rx) => rx,
            Err(e) => return refuse(format!("call {}: {e}", self.id), leg.dialog),
        };
        info!(supervisor = %leg.supervisor, mode = mode.name(), "supervisor joined the call");
        count(mode);
        self.supervisor = Some(Session {
            supervisor: leg.supervisor,
            mode: Mode::Monitor,
            dialog: leg.dialog,
            states: leg.states,
            dtmf,
            local_sdp: leg.local_sdp,
        });
        if mode == Mode::TakeOver {
            return self.take_over().await;
        }
        if let Some(s) = self.supervisor.as_mut() {
            s.mode = mode;
        }
        Ok(mode.name().to_string())
    }

    async fn switch(&mut self, mode: Mode) -> ControlResult {
        let Some(session) = self.supervisor.as_mut() else {
            return Err(ControlError::NotFound(format!(
                "no supervisor on call {}",
                self.id
            )));
        };
        if mode == Mode::TakeOver {
            return self.take_over().await;
        }
        if session.mode == mode {
            return Ok(mode.name().to_string());
        }
        self.media
            .try_set_third_mode(mode.third())
            .map_err(|e| ControlError::Refused(format!("call {}: {e}", self.id)))?;
        info!(supervisor = %session.supervisor, from = session.mode.name(), to = mode.name(), "supervisor switched mode");
        session.mode = mode;
        count(mode);
        Ok(mode.name().to_string())
    }

    /// The agent is hung up and released; the supervisor's phone becomes the agent leg.
    async fn take_over(&mut self) -> ControlResult {
        let (Some(agent_dialog), Some(session)) = (
            self.connected_agent_dialog().cloned(),
            self.supervisor.take(),
        ) else {
            return Err(ControlError::Refused(format!(
                "call {} has no agent and supervisor to swap",
                self.id
            )));
        };
        let cmd = Command::TakenOver {
            call: self.id.clone(),
            supervisor: session.supervisor.clone(),
            at: now_ms(),
        };
        if let Err(e) = self.shared.routing.propose(cmd).await {
            warn!(error = %e, "routing refused the take-over");
            let why = format!("call {}: routing refused the take-over: {e}", self.id);
            self.supervisor = Some(session);
            return Err(ControlError::Refused(why));
        }
        if let Err(e) = self.media.try_promote_third() {
            // The call's media is gone; the call ends through its own inputs.
            warn!(error = %e, "could not move the supervisor into the agent's place");
        }
        self.remove_dialog(&agent_dialog);
        tokio::spawn(async move { agent_dialog.bye().await.ok() }.in_current_span());
        info!(supervisor = %session.supervisor, "supervisor took the call over; agent hung up");
        count(Mode::TakeOver);
        // From here the supervisor's phone is the call's agent leg: its hang-up ends the
        // call, its holds play music to the caller.
        self.phase = Phase::Connected {
            dialog: session.dialog,
        };
        self.agent_states = Some(session.states);
        self.agent_sdp = Some(hold::LegSdp::new(session.local_sdp));
        Ok(Mode::TakeOver.name().to_string())
    }

    pub(super) async fn on_supervisor_event(&mut self, ev: SessionEvent) {
        let state = match ev {
            SessionEvent::Key(key) => {
                match Mode::from_key(key) {
                    Some(mode) => {
                        if let Err(e) = self.switch(mode).await {
                            info!(%key, error = %e, "supervisor key not applied");
                        }
                    }
                    None => info!(%key, "supervisor key has no meaning"),
                }
                return;
            }
            SessionEvent::Gone => {
                self.end_supervision(false).await;
                return;
            }
            SessionEvent::State(state) => *state,
        };
        match state {
            DialogState::Terminated(..) => self.end_supervision(false).await,
            DialogState::Updated(_, req, handle) => {
                // A session refresh or INFO: answered; the mix does not change.
                let (headers, body) = match (&req.method, &self.supervisor) {
                    (rsip::Method::Invite, Some(s)) => (
                        Some(vec![rsip::Header::ContentType("application/sdp".into())]),
                        Some(s.local_sdp.clone().into_bytes()),
                    ),
                    _ => (None, None),
                };
                handle
                    .respond(rsip::StatusCode::OK, headers, body)
                    .await
                    .ok();
            }
            _ => {}
        }
    }

    /// The supervisor leaves (hung up, or the call is over): the third leg goes, and the
    /// phone is hung up unless it hung up itself.
    pub(super) async fn end_supervision(&mut self, hang_up: bool) {
        let Some(session) = self.supervisor.take() else {
            return;
        };
        self.media.try_drop_third().ok();
        self.remove_dialog(&session.dialog);
        info!(supervisor = %session.supervisor, "supervisor left the call");
        if hang_up {
            let dialog = session.dialog;
            tokio::spawn(async move { dialog.bye().await.ok() }.in_current_span());
        }
    }
}

fn count(mode: Mode) {
    metrics::counter!("carillon_supervisions_total", "mode" => mode.name()).increment(1);
}

/// A feature-code INVITE from a supervisor's phone.
pub struct FeatureCall {
    pub supervisor: String,
    pub agent: String,
    pub mode: Mode,
}

/// Whether an INVITE is a supervisor dialling a feature code: its From user is a
/// configured supervisor and its Request-URI user starts with a code.
pub fn feature_code(shared: &Shared, req: &rsip::Request) -> Option<FeatureCall> {
    let supervisor = sip::from_user(req).ok()?;
    if !shared.config.is_supervisor(&supervisor) {
        return None;
    }
    let dialled = sip::request_user(req)?;
    let codes = &shared.config.supervision;
    [
        (&codes.monitor_code, Mode::Monitor),
        (&codes.whisper_code, Mode::Whisper),
        (&codes.barge_code, Mode::Barge),
    ]
    .into_iter()
    .find_map(|(code, mode)| {
        dialled
            .strip_prefix(code.as_str())
            .map(|agent| FeatureCall {
                supervisor: supervisor.clone(),
                agent: agent.to_string(),
                mode,
            })
    })
}

/// Answers a supervisor's feature-code INVITE and joins the phone to the agent's call.
pub async fn feature_call(shared: Arc<Shared>, mut tx: Transaction, fc: FeatureCall) {
    let span = tracing::info_span!("supervise", supervisor = %fc.supervisor, agent = %fc.agent);
    async move {
        let call = match find_call(&shared, &fc, &tx) {
            Ok(call) => call,
            Err((status, why)) => {
                info!(%why, "supervisor request refused");
                let warning = rsip::Header::Warning(
                    format!("399 carillon \"{}\"", why.replace('"', "'")).into(),
                );
                sip::reply(&mut tx, status, vec![warning]).await;
                return;
            }
        };
        let offer_text = String::from_utf8_lossy(&tx.original.body).to_string();
        let offer = match sdp::parse(&offer_text) {
            Ok(o) => o,
            Err(e) => {
                info!(error = %e, "supervisor INVITE without a usable SDP offer");
                sip::reply(&mut tx, rsip::StatusCode::NotAcceptableHere, vec![]).await;
                return;
            }
        };
        let port = match shared.ports.allocate() {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "no RTP port for the supervisor");
                sip::reply(&mut tx, rsip::StatusCode::ServiceUnavailable, vec![]).await;
                return;
            }
        };
        let (answer, codec) =
            match sdp::answer(&offer, port.local_addr(), &[Codec::Pcmu, Codec::Pcma]) {
                Ok(x) => x,
                Err(e) => {
                    info!(error = %e, "no common codec with the supervisor's phone");
                    sip::reply(&mut tx, rsip::StatusCode::NotAcceptableHere, vec![]).await;
                    return;
                }
            };
        let media = MediaLeg::new(port, codec, offer.audio_addr())
            .with_telephone_event(offer.audio().and_then(|m| m.telephone_event()));
        let (mut dialog, states) = match shared.sip.server_dialog(&tx) {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "cannot create the supervisor dialog");
                sip::reply(&mut tx, rsip::StatusCode::ServerInternalError, vec![]).await;
                return;
            }
        };
        let ct = rsip::Header::ContentType("application/sdp".into());
        if let Err(e) = dialog.accept(Some(vec![ct]), Some(answer.clone().into_bytes())) {
            warn!(error = %e, "could not answer the supervisor");
            return;
        }
        crate::metrics::sip_transaction("INVITE", 200);
        let leg = SupervisorLeg {
            supervisor: fc.supervisor.clone(),
            dialog: dialog.clone(),
            states,
            media,
            local_sdp: answer,
        };
        let action = SuperviseAction::Join { leg, mode: fc.mode };
        let task_shared = shared.clone();
        let call_id = call.clone();
        tokio::spawn(
            async move {
                match task_shared.calls.supervise(&call_id, action).await {
                    Ok(outcome) => info!(call_id = %call_id, %outcome, "supervisor on the call"),
                    Err(e) => info!(call_id = %call_id, error = %e, "supervisor could not join"),
                }
            }
            .in_current_span(),
        );
        // The INVITE transaction (ACK, retransmissions) runs here to its end.
        if let Err(e) = dialog.handle(&mut tx).await {
            tracing::debug!(error = %e, "supervisor INVITE transaction ended with an error");
        }
    }
    .instrument(span)
    .await
}

/// The call `fc.agent` is on, if this node may join the supervisor to it; else the SIP
/// status and why.
fn find_call(
    shared: &Shared,
    fc: &FeatureCall,
    tx: &Transaction,
) -> Result<String, (rsip::StatusCode, String)> {
    // The INVITE must come from the phone the supervisor registered (the address it
    // registered from, or its Contact on that host): the registration was
    // digest-authenticated, the INVITE is not challenged again.
    let source = sip::request_source(tx).map(|(s, _)| s);
    let from_phone = shared
        .registrar()
        .binding(&fc.supervisor)
        .is_some_and(|b| Some(b.source) == source || Some(b.target()) == source);
    if !from_phone {
        return Err((
            rsip::StatusCode::Forbidden,
            format!(
                "supervisor {} has no registration from this address; register first",
                fc.supervisor
            ),
        ));
    }
    let (state, owner) = shared.routing.read(|acd| {
        let state = acd.agent_state(&fc.agent).cloned();
        let owner = match &state {
            Some(AgentState::OnCall { call }) => acd.call_owner(call),
            _ => None,
        };
        (state, owner)
    });
    let Some(AgentState::OnCall { call }) = state else {
        return Err((
            rsip::StatusCode::NotFound,
            format!("agent {} is not on a call", fc.agent),
        ));
    };
    check_owner(shared, &call, owner).map_err(|why| (rsip::StatusCode::Forbidden, why))?;
    if !shared.calls.contains(&call) {
        return Err((
            rsip::StatusCode::NotFound,
            format!("call {call} is not live on this node"),
        ));
    }
    Ok(call)
}

fn check_owner(shared: &Shared, call: &str, owner: Option<u64>) -> Result<(), String> {
    match owner {
        Some(owner) if owner != shared.node_number => Err(format!(
            "call {call} is owned by node n{owner}, where its media is mixed; supervise it \
             from a phone registered there"
        )),
        _ => Ok(()),
    }
}

/// An API request: switches the mode if `supervisor` is on the call already, otherwise
/// rings the supervisor's registered phone and joins it once answered.
pub async fn request(
    shared: Arc<Shared>,
    call: &str,
    supervisor: &str,
    mode: Mode,
) -> ControlResult {
    if !shared.config.is_supervisor(supervisor) {
        return Err(ControlError::NotFound(format!(
            "`{supervisor}` is not a supervisor under [[supervisors]]"
        )));
    }
    if !shared.calls.contains(call) {
        let owner = shared.routing.read(|acd| acd.call_owner(call));
        check_owner(&shared, call, owner).map_err(ControlError::Refused)?;
        return Err(ControlError::NoSuchCall(call.to_string()));
    }
    let switch = SuperviseAction::Switch {
        supervisor: supervisor.to_string(),
        mode,
    };
    match shared.calls.supervise(call, switch).await {
        Err(ControlError::NotFound(_)) => {}
        other => return other,
    }
    let leg = ring(&shared, call, supervisor).await?;
    shared
        .calls
        .supervise(call, SuperviseAction::Join { leg, mode })
        .await
}

/// Rings the supervisor's phone (registered here) and returns it answered.
async fn ring(
    shared: &Shared,
    call: &str,
    supervisor: &str,
) -> Result<SupervisorLeg, ControlError> {
    let binding = shared
        .registrar()
        .binding(supervisor)
        .cloned()
        .ok_or_else(|| {
            ControlError::NotFound(format!(
                "supervisor {supervisor} has no phone registered at this node"
            ))
        })?;
    let port = shared
        .ports
        .allocate()
        .map_err(|e| ControlError::Refused(format!("no RTP port for the supervisor: {e}")))?;
    let offer = sdp::offer(port.local_addr(), &[Codec::Pcmu, Codec::Pcma], now_ms());
    let options = super::agent_invite(
        shared,
        &binding.contact,
        binding.target(),
        binding.transport,
        &format!("supervise-{call}"),
        offer.clone(),
    )
    .map(|o| super::with_call_header(o, call))
    .map_err(ControlError::Refused)?;
    let (state_tx, states) = shared.sip.dialogs.new_dialog_state_channel();
    let (dialog, join) = shared
        .sip
        .dialogs
        .do_invite_async(options, state_tx)
        .map_err(|e| ControlError::Refused(format!("could not ring {supervisor}: {e}")))?;
    info!(call_id = %call, %supervisor, "ringing the supervisor's phone");
    let ring_for = Duration::from_secs_f64(shared.config.supervision.ring_timeout_s);
    let answer = match tokio::time::timeout(ring_for, join).await {
        Ok(Ok(Ok((_, Some(resp)))))
            if resp.status_code.kind() == rsip::StatusCodeKind::Successful =>
        {
            resp
        }
        Ok(Ok(Ok((_, resp)))) => {
            let status = resp.map(|r| r.status_code.to_string()).unwrap_or_default();
            return Err(ControlError::Refused(format!(
                "supervisor {supervisor} did not answer ({status})"
            )));
        }
        Ok(Ok(Err(e))) => {
            return Err(ControlError::Refused(format!(
                "supervisor {supervisor} could not be reached: {e}"
            )))
        }
        Ok(Err(e)) => return Err(ControlError::Refused(format!("ringing failed: {e}"))),
        Err(_) => {
            tokio::spawn(async move { dialog.cancel().await.ok() });
            return Err(ControlError::Refused(format!(
                "supervisor {supervisor} did not answer within {} s",
                ring_for.as_secs()
            )));
        }
    };
    let body = String::from_utf8_lossy(&answer.body).to_string();
    let parsed = sdp::parse(&body).map_err(|e| e.to_string());
    let remote = parsed
        .as_ref()
        .map_err(Clone::clone)
        .and_then(|sd| sdp::remote_audio(sd).map_err(|e| e.to_string()));
    let (addr, codec) = match remote {
        Ok(x) => x,
        Err(e) => {
            tokio::spawn(async move { dialog.bye().await.ok() });
            return Err(ControlError::Refused(format!(
                "supervisor {supervisor} answered with unusable SDP: {e}"
            )));
        }
    };
    let telephone_event = parsed
        .ok()
        .and_then(|sd| sd.audio().and_then(|m| m.telephone_event()));
    Ok(SupervisorLeg {
        supervisor: supervisor.to_string(),
        dialog,
        states,
        media: MediaLeg::new(port, codec, Some(addr)).with_telephone_event(telephone_event),
        local_sdp: offer,
    })
}
