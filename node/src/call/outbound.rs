//! Click-to-dial (`CallService.MakeCall`): the node rings the agent's registered phone
//! first, then, once the agent answers, dials `sip:<number>@<callback.gateway>` and bridges
//! the two. Routing holds the agent on the call from the click to the hang-up
//! (`StartOutbound`: not offered ACD calls meanwhile); the call ends with `Ended` (record
//! answered) or, when the agent or the number never answered, `Lost` with the cause, and a
//! CDR with direction `outbound`.
//!
//! The task registers in the call registry like an inbound call, so hang-up, hold and
//! resume work on it through the API; transfers do not.

use std::sync::Arc;
use std::time::Duration;

use carillon_media::{CallMedia, MediaLeg};
use carillon_ops::records::Cdr;
use carillon_routing::{Command, Event, Party};
use tokio::sync::mpsc;
use tracing::{info, warn, Instrument};

use super::control::{CallAction, NO_GATEWAY};
use super::registry::{Control, ControlError, Registration};
use super::{agent_invite, hold, sanitize_user, RECORD_WAIT_MS};
use crate::clock::now_ms;
use crate::node::{CallSlot, Shared};
use crate::registrar::{Binding, SipTransport};
use crate::routing_log::ProposeError;
use crate::sip::{rsip, DialogState, DialogStateReceiver, InviteDialog};

/// How long the agent's own phone may ring.
const AGENT_RING_MS: u64 = 30_000;
/// The longest an outbound call is followed (a lost BYE must not keep it for ever).
const OUTBOUND_CALL_MAX_MS: u64 = 4 * 3_600_000;

/// Why a click-to-dial could not start.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error("{NO_GATEWAY}")]
    NoGateway,
    #[error("agent {agent} has no phone registered at this node{}; ask the node that holds the registration", .node.map(|n| format!(" (routing places it at n{n})")).unwrap_or_default())]
    NotRegisteredHere { agent: String, node: Option<u64> },
    #[error("this node is at its concurrent call limit; try again later")]
    AtCapacity,
    #[error("routing refused the call: {0}")]
    Routing(#[from] ProposeError),
}

/// Starts a click-to-dial call from `agent` to `number`; returns its call id once routing
/// holds the agent. The rest runs in its own task.
pub async fn start(
    shared: &Arc<Shared>,
    agent: &str,
    number: &str,
) -> Result<String, OutboundError> {
    let (gateway, ring_s) = shared
        .config
        .callback
        .as_ref()
        .map(|c| (c.gateway, c.ring_timeout_s))
        .ok_or(OutboundError::NoGateway)?;
    let binding = shared.registrar().binding(agent).cloned();
    let Some(binding) = binding else {
        return Err(OutboundError::NotRegisteredHere {
            agent: agent.to_string(),
            node: shared.routing.read(|acd| acd.agent_node(agent)),
        });
    };
    let slot = shared
        .try_take_call_slot()
        .ok_or(OutboundError::AtCapacity)?;
    let id = shared.next_call_id();
    let mut events = shared.routing.subscribe(&id);
    let cmd = Command::StartOutbound {
        call: id.clone(),
        agent: agent.to_string(),
        number: number.to_string(),
        owner: shared.node_number,
        site: shared.config.node.site.clone(),
        at: now_ms(),
    };
    if let Err(e) = shared.routing.propose(cmd).await {
        shared.routing.unsubscribe(&id, &mut events);
        return Err(e.into());
    }
    let (registration, control_rx) = shared.calls.register(&id);
    let call = Outbound {
        shared: shared.clone(),
        id: id.clone(),
        agent: agent.to_string(),
        number: number.to_string(),
        events,
        control_rx,
        _registration: registration,
        _slot: slot,
        media: None,
        hold_clock: hold::HoldClock::default(),
        api_held: false,
        ended_by: None,
    };
    let span = tracing::info_span!("call", call_id = %id);
    let customer_ring = Duration::from_secs_f64(ring_s);
    tokio::spawn(call.run(binding, gateway, customer_ring).instrument(span));
    Ok(id)
}

struct Outbound {
    shared: Arc<Shared>,
    id: String,
    agent: String,
    number: String,
    events: mpsc::Receiver<Event>,
    control_rx: mpsc::Receiver<Control>,
    _registration: Registration,
    _slot: CallSlot,
    media: Option<CallMedia>,
    hold_clock: hold::HoldClock,
    api_held: bool,
    ended_by: Option<String>,
}

/// One leg being placed or up: its dialog, state channel and our SDP offer.
struct Leg {
    dialog: InviteDialog,
    states: DialogStateReceiver,
    sdp: hold::LegSdp,
}

impl Outbound {
    async fn run(mut self, binding: Binding, gateway: std::net::SocketAddr, ring: Duration) {
        let outcome = self.place(binding, gateway, ring).await;
        let at = now_ms();
        let cmd = match outcome {
            Ok(by) => Command::Ended {
                call: self.id.clone(),
                by,
                at,
            },
            Err(cause) => {
                info!(%cause, "click-to-dial call not connected");
                Command::Lost {
                    call: self.id.clone(),
                    cause,
                    at,
                }
            }
        };
        if let Err(e) = self.shared.routing.propose(cmd).await {
            warn!(error = %e, "routing refused the end of the outbound call");
        }
        let record = self.wait_record().await;
        if let Some(media) = &self.media {
            crate::recording::finish(&self.shared, media).await;
        }
        if let Some(rec) = record {
            self.store(rec).await;
        }
        if let Some(media) = self.media.as_mut() {
            media.stop();
        }
        self.shared.routing.unsubscribe(&self.id, &mut self.events);
    }

    /// Rings the agent, then the number, bridges them and follows the call to its end.
    /// Returns who hung up, or the cause for a call that never connected.
    async fn place(
        &mut self,
        binding: Binding,
        gateway: std::net::SocketAddr,
        ring: Duration,
    ) -> Result<Party, String> {
        info!(agent = %self.agent, number = %self.number, "click-to-dial: ringing the agent");
        let target = binding.target();
        let (mut agent, agent_port, agent_answer) = self
            .invite(
                &binding.contact,
                target,
                binding.transport,
                &self.number.clone(),
                Duration::from_millis(AGENT_RING_MS),
            )
            .await
            .map_err(|why| format!("outbound-agent-no-answer: {why}"))?;
        let (agent_remote, codec) = agent_answer;
        let uri = format!("sip:{}@{}", sanitize_user(&self.number), gateway);
        info!(%uri, "the agent answered; dialling the number");
        let dial = self
            .invite(&uri, gateway, SipTransport::Udp, &self.agent.clone(), ring)
            .await;
        let (mut customer, customer_port, (customer_remote, customer_codec)) = match dial {
            Ok(x) => x,
            Err(why) => {
                self.shared.sip.dialogs.remove_dialog(&agent.dialog.id());
                agent.dialog.bye().await.ok();
                return Err(format!("outbound-no-answer: {why}"));
            }
        };
        let media = CallMedia::start(MediaLeg::new(
            customer_port,
            customer_codec,
            Some(customer_remote),
        ));
        media.bridge(MediaLeg::new(agent_port, codec, Some(agent_remote)));
        crate::recording::start(
            &self.shared,
            &media,
            &self.id,
            &self.agent,
            "",
            &self.number,
        );
        self.media = Some(media);
        info!("the number answered; agent and number bridged");
        let by = self.follow(&mut agent, &mut customer).await;
        for leg in [&agent, &customer] {
            self.shared.sip.dialogs.remove_dialog(&leg.dialog.id());
        }
        Ok(by)
    }

    /// Sends an INVITE and waits for its answer (at most `ring`), answering API requests
    /// meanwhile. Returns the leg, its RTP port and the far end's media address and codec.
    async fn invite(
        &mut self,
        uri: &str,
        addr: std::net::SocketAddr,
        transport: SipTransport,
        from_user: &str,
        ring: Duration,
    ) -> Result<
        (
            Leg,
            carillon_media::RtpPort,
            (std::net::SocketAddr, carillon_media::Codec),
        ),
        String,
    > {
        let port = self
            .shared
            .ports
            .allocate()
            .map_err(|e| format!("no RTP port: {e}"))?;
        let offer = carillon_media::sdp::offer(
            port.local_addr(),
            &[carillon_media::Codec::Pcmu, carillon_media::Codec::Pcma],
            now_ms(),
        );
        let options = agent_invite(&self.shared, uri, addr, transport, from_user, offer.clone())?;
        let (tx, states) = self.shared.sip.dialogs.new_dialog_state_channel();
        let (dialog, join) = self
            .shared
            .sip
            .dialogs
            .do_invite_async(options, tx)
            .map_err(|e| format!("INVITE failed: {e}"))?;
        let deadline = tokio::time::sleep(ring);
        tokio::pin!(deadline);
        tokio::pin!(join);
        let response = loop {
            tokio::select! {
                r = &mut join => break match r {
                    Ok(Ok((_, Some(resp)))) => Ok(resp),
                    Ok(Ok((_, None))) => Err("no final response".to_string()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(e) => Err(e.to_string()),
                },
                _ = &mut deadline => {
                    dialog.cancel().await.ok();
                    break Err(format!("no answer within {} ms", ring.as_millis()));
                }
                Some(c) = self.control_rx.recv() => match c {
                    Control::Call(CallAction::Hangup { .. }, reply) => {
                        dialog.cancel().await.ok();
                        self.ended_by = Some("api".into());
                        reply.send(Ok("cancelled".into())).ok();
                        break Err("cancelled through the API".to_string());
                    }
                    Control::Call(_, reply) | Control::Supervise(_, reply) => {
                        let why = format!("call {} is still ringing {uri}; only hang-up applies", self.id);
                        reply.send(Err(ControlError::Refused(why))).ok();
                    }
                },
            }
        }?;
        let answered = response.status_code.kind() == rsip::StatusCodeKind::Successful;
        if !answered {
            return Err(format!("answered {}", response.status_code));
        }
        let remote = match super::answer_audio(&response) {
            Ok(r) => r,
            Err(e) => {
                self.shared.sip.dialogs.remove_dialog(&dialog.id());
                dialog.bye().await.ok();
                return Err(format!("unusable SDP answer: {e}"));
            }
        };
        let leg = Leg {
            dialog,
            states,
            sdp: hold::LegSdp::new(offer),
        };
        Ok((leg, port, remote))
    }

    /// Follows the bridged call until a side hangs up (the other gets BYE) or the API
    /// hangs it up. Returns who ended it.
    async fn follow(&mut self, agent: &mut Leg, customer: &mut Leg) -> Party {
        let longest = tokio::time::sleep(Duration::from_millis(OUTBOUND_CALL_MAX_MS));
        tokio::pin!(longest);
        loop {
            tokio::select! {
                st = agent.states.recv() => match st {
                    Some(DialogState::Terminated(..)) | None => {
                        info!("the agent hung up");
                        customer.dialog.bye().await.ok();
                        return Party::Agent;
                    }
                    Some(DialogState::Updated(_, req, handle)) => {
                        let change = answer_reinvite(&mut agent.sdp, &req, handle).await;
                        self.on_agent_hold(change);
                    }
                    Some(_) => {}
                },
                st = customer.states.recv() => match st {
                    Some(DialogState::Terminated(..)) | None => {
                        info!("the number hung up");
                        agent.dialog.bye().await.ok();
                        return Party::Caller;
                    }
                    Some(DialogState::Updated(_, req, handle)) => {
                        answer_reinvite(&mut customer.sdp, &req, handle).await;
                    }
                    Some(_) => {}
                },
                Some(c) = self.control_rx.recv() => match c {
                    Control::Call(action, reply) => {
                        let result = match action {
                            CallAction::Hangup { by } => {
                                agent.dialog.bye().await.ok();
                                customer.dialog.bye().await.ok();
                                self.ended_by = Some("api".into());
                                reply.send(Ok("hung up".into())).ok();
                                return by;
                            }
                            CallAction::Hold => self.api_hold(true),
                            CallAction::Resume => self.api_hold(false),
                            _ => Err(ControlError::Refused(format!(
                                "call {} is a click-to-dial call: it cannot be transferred",
                                self.id
                            ))),
                        };
                        reply.send(result).ok();
                    }
                    Control::Supervise(_, reply) => {
                        let why = format!("call {} is a click-to-dial call: supervision is for queue calls", self.id);
                        reply.send(Err(ControlError::Refused(why))).ok();
                    }
                },
                _ = &mut longest => {
                    warn!("the outbound call outlived its longest; hanging up both sides");
                    agent.dialog.bye().await.ok();
                    customer.dialog.bye().await.ok();
                    return Party::System;
                }
            }
        }
    }

    fn api_hold(&mut self, hold: bool) -> Result<String, ControlError> {
        if self.api_held == hold {
            let state = if hold { "on hold" } else { "not on hold" };
            return Err(ControlError::Refused(format!(
                "call {} is {state} already",
                self.id
            )));
        }
        self.api_held = hold;
        self.set_music(hold, "api");
        Ok(if hold { "held" } else { "resumed" }.into())
    }

    fn on_agent_hold(&mut self, change: Option<hold::Change>) {
        match change {
            Some(hold::Change::Held) => self.set_music(true, "agent"),
            Some(hold::Change::Resumed) if !self.api_held => self.set_music(false, "agent"),
            _ => {}
        }
    }

    /// Hold music to the number (the media's "caller" side) while held.
    fn set_music(&mut self, held: bool, side: &'static str) {
        self.hold_clock.update(held, now_ms());
        let Some(media) = &self.media else {
            return;
        };
        if held {
            metrics::counter!("carillon_holds_total", "side" => side).increment(1);
            media.play_loop(self.shared.hold_music.clone());
        } else {
            media.stop_playback();
        }
    }

    async fn wait_record(&mut self) -> Option<carillon_routing::CallRecord> {
        let wait = Duration::from_millis(RECORD_WAIT_MS);
        loop {
            match tokio::time::timeout(wait, self.events.recv()).await {
                Ok(Some(Event::CallFinished(rec))) => return Some(rec),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    warn!("no terminal record arrived for the outbound call");
                    return None;
                }
            }
        }
    }

    async fn store(&self, rec: carillon_routing::CallRecord) {
        let counters = self
            .media
            .as_ref()
            .map(CallMedia::counters)
            .unwrap_or_default();
        let cdr = Cdr {
            call_id: rec.call.clone(),
            sip_call_id: String::new(),
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
            post_dial_us: None,
            // The media's caller side is the number.
            rtp_caller_to_agent: counters.caller_to_agent_packets,
            rtp_agent_to_caller: counters.agent_to_caller_packets,
            node: self.shared.node_id.clone(),
            hold_ms: self.hold_clock.held_ms(now_ms()),
            ended_by: self.ended_by.clone(),
            direction: "outbound".into(),
            transfer: None,
        };
        info!(disposition = %cdr.disposition, "outbound call record stored");
        self.shared.counters.record(&cdr);
        self.shared.record_writer.store(cdr).await;
    }
}

/// Answers a re-INVITE on an outbound leg; returns the hold change it made.
async fn answer_reinvite(
    sdp: &mut hold::LegSdp,
    req: &rsip::Request,
    handle: rsipstack::dialog::dialog::TransactionHandle,
) -> Option<hold::Change> {
    if req.method != rsip::Method::Invite {
        handle.respond(rsip::StatusCode::OK, None, None).await.ok();
        return None;
    }
    let body = String::from_utf8_lossy(&req.body).to_string();
    match sdp.on_reoffer(&body) {
        Ok(r) => {
            let ct = rsip::Header::ContentType("application/sdp".into());
            handle
                .respond(
                    rsip::StatusCode::OK,
                    Some(vec![ct]),
                    Some(r.answer.into_bytes()),
                )
                .await
                .ok();
            r.change
        }
        Err(e) => {
            info!(error = %e, "refusing a re-INVITE");
            handle
                .respond(rsip::StatusCode::NotAcceptableHere, None, None)
                .await
                .ok();
            None
        }
    }
}
