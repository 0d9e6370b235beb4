//! The far end of an inter-node call leg: another cluster member owns a call and the
//! agent it was offered is registered here. This node rings the agent's phone, answers
//! the owner only when the phone answers (so ringing, refusals and timeouts pass through
//! as SIP), and anchors the agent side's media, so the agent's audio stays on its own
//! site's network.
//!
//! The owner node stays in charge of routing: it proposes `Connected`, `OfferFailed` and
//! `Ended` from what this leg tells it in SIP, exactly as for a phone of its own. The one
//! thing SIP cannot tell this leg is that the owner died: its BYE never comes. So the leg
//! also watches the call in the routing state (the owner names it in `X-Carillon-Call`) and
//! hangs the phone up when routing closes the call as lost.
//!
//! Hold passes through both ways: a re-INVITE from the owner (the caller holds) is answered
//! and re-offered to the phone with the same direction, and one from the phone (the agent
//! holds) is answered and re-offered to the owner, whose call task then plays hold music.

use std::sync::Arc;

use carillon_media::{sdp, CallMedia, Codec, MediaLeg};
use rsipstack::transaction::transaction::Transaction;
use tracing::{debug, info, warn, Instrument};

use carillon_routing::{Disposition, Event};
use tokio::sync::mpsc;

use crate::call::hold::{LegSdp, Reoffer};
use crate::call::{agent_invite, CALL_HEADER};
use crate::clock::now_ms;
use crate::node::Shared;
use crate::sip::{self, rsip, DialogState, DialogStateReceiver, InviteDialog, TerminatedReason};
use rsip::prelude::HeadersExt;
use rsip::{Header, StatusCode};

/// Handles an INVITE from cluster member `peer` for an agent registered here.
pub async fn run(shared: Arc<Shared>, mut tx: Transaction, peer: u64) {
    let agent = sip::request_user(&tx.original).unwrap_or_default();
    let caller = sip::from_user(&tx.original).unwrap_or_default();
    let sip_call_id = tx
        .original
        .call_id_header()
        .map(|c| c.value().to_string())
        .unwrap_or_default();
    let call = carillon_call(&tx.original);
    let span = match &call {
        Some(call) => tracing::info_span!("peer_leg", call_id = %call, %sip_call_id, %agent, peer),
        None => tracing::info_span!("peer_leg", call_id = %sip_call_id, %agent, peer),
    };
    async move {
        let Some(binding) = shared.registrar().binding(&agent).cloned() else {
            info!("no phone registered here for the agent");
            sip::reply(&mut tx, StatusCode::TemporarilyUnavailable, vec![]).await;
            return;
        };
        let offer_text = String::from_utf8_lossy(&tx.original.body).to_string();
        let Ok(offer) = sdp::parse(&offer_text) else {
            sip::reply(&mut tx, StatusCode::NotAcceptableHere, vec![]).await;
            return;
        };
        let (owner_port, phone_port) = match (shared.ports.allocate(), shared.ports.allocate()) {
            (Ok(a), Ok(b)) => (a, b),
            _ => {
                warn!("no RTP ports for an inter-node leg");
                sip::reply(&mut tx, StatusCode::ServiceUnavailable, vec![]).await;
                return;
            }
        };
        let Ok((answer_sdp, codec)) =
            sdp::answer(&offer, owner_port.local_addr(), &[Codec::Pcmu, Codec::Pcma])
        else {
            sip::reply(&mut tx, StatusCode::NotAcceptableHere, vec![]).await;
            return;
        };
        let owner_media = offer.audio_addr();
        let (mut server, owner_states) = match shared.sip.server_dialog(&tx) {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "cannot create the inter-node dialog");
                sip::reply(&mut tx, StatusCode::ServerInternalError, vec![]).await;
                return;
            }
        };
        let owner_dialog: InviteDialog = server.clone();
        let offer_to_phone = sdp::offer(phone_port.local_addr(), &[codec], now_ms());
        let phone_sdp = LegSdp::new(offer_to_phone.clone());
        let options = match agent_invite(
            &shared,
            &binding.contact,
            binding.target(),
            binding.transport,
            &caller,
            offer_to_phone,
        ) {
            Ok(o) => o,
            Err(e) => {
                warn!(error = %e, "cannot build the agent INVITE");
                owner_dialog
                    .reject(Some(StatusCode::TemporarilyUnavailable), None)
                    .ok();
                return;
            }
        };
        let fate = call.as_ref().map(|c| CallFate {
            routing: shared.routing.clone(),
            call: c.clone(),
            events: shared.routing.subscribe(c),
        });
        let leg = Leg {
            fate,
            shared: shared.clone(),
            owner: owner_dialog,
            owner_states,
            owner_sdp: LegSdp::new(answer_sdp.clone()),
            phone_sdp,
            answer_sdp,
            codec,
            owner_media,
            owner_port: Some(owner_port),
            phone_port: Some(phone_port),
        };
        tokio::spawn(leg.run(options).in_current_span());
        // The owner's INVITE transaction (CANCEL, ACK, retransmissions) runs here.
        if let Err(e) = server.handle(&mut tx).await {
            debug!(error = %e, "inter-node INVITE transaction ended with an error");
        }
    }
    .instrument(span)
    .await
}

/// The owner's call as the routing state sees it, from this node.
struct CallFate {
    routing: crate::routing_log::RoutingLog,
    call: String,
    events: mpsc::Receiver<Event>,
}

impl CallFate {
    /// Resolves when routing closes the call as lost (its owner died or restarted).
    async fn lost(&mut self) -> String {
        while let Some(event) = self.events.recv().await {
            if let Event::CallFinished(record) = event {
                if record.disposition == Disposition::Lost {
                    return record.cause.unwrap_or_else(|| "lost".into());
                }
            }
        }
        std::future::pending().await
    }
}

impl Drop for CallFate {
    fn drop(&mut self) {
        self.routing.unsubscribe(&self.call, &mut self.events);
    }
}

/// Resolves when `fate` says the call was lost; never without one.
async fn lost(fate: &mut Option<CallFate>) -> String {
    match fate {
        Some(f) => f.lost().await,
        None => std::future::pending().await,
    }
}

/// Carillon's call id, as the owner node put it on its INVITE.
fn carillon_call(req: &rsip::Request) -> Option<String> {
    req.headers.iter().find_map(|h| match h {
        Header::Other(name, value) if name.eq_ignore_ascii_case(CALL_HEADER) => {
            Some(value.trim().to_string()).filter(|v| !v.is_empty())
        }
        _ => None,
    })
}

struct Leg {
    fate: Option<CallFate>,
    shared: Arc<Shared>,
    owner: InviteDialog,
    owner_states: DialogStateReceiver,
    answer_sdp: String,
    /// Our sides of the two sessions, for hold and resume in either direction.
    owner_sdp: LegSdp,
    phone_sdp: LegSdp,
    codec: Codec,
    owner_media: Option<std::net::SocketAddr>,
    owner_port: Option<carillon_media::RtpPort>,
    phone_port: Option<carillon_media::RtpPort>,
}

impl Leg {
    async fn run(mut self, options: crate::sip::InviteOption) {
        let dialogs = self.shared.sip.dialogs.clone();
        let (phone_tx, mut phone_states) = dialogs.new_dialog_state_channel();
        let (phone, join) = match dialogs.do_invite_async(options, phone_tx) {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "agent INVITE failed to start");
                self.owner
                    .reject(Some(StatusCode::TemporarilyUnavailable), None)
                    .ok();
                return;
            }
        };
        self.owner.ringing(None, None).ok();
        let mut join = std::pin::pin!(join);
        // Ringing: the phone's answer, or the owner giving up (CANCEL).
        let response = loop {
            tokio::select! {
                r = &mut join => break r,
                cause = lost(&mut self.fate) => {
                    info!(%cause, "the call was lost while the phone rang; cancelling it");
                    phone.cancel().await.ok();
                    dialogs.remove_dialog(&phone.id());
                    self.owner.reject(Some(StatusCode::RequestTerminated), None).ok();
                    return;
                }
                st = self.owner_states.recv() => match st {
                    Some(DialogState::Terminated(_, reason)) => {
                        info!(?reason, "owner withdrew the offer; cancelling the phone");
                        phone.cancel().await.ok();
                        dialogs.remove_dialog(&phone.id());
                        return;
                    }
                    Some(_) => {}
                    None => {
                        phone.cancel().await.ok();
                        return;
                    }
                }
            }
        };
        let response = match response {
            Ok(Ok((_, Some(resp)))) => resp,
            other => {
                let why = match other {
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => e.to_string(),
                    _ => "no final response".into(),
                };
                info!(%why, "agent phone leg failed");
                self.owner
                    .reject(Some(StatusCode::TemporarilyUnavailable), None)
                    .ok();
                return;
            }
        };
        if response.status_code.kind() != rsip::StatusCodeKind::Successful {
            info!(status = %response.status_code, "agent phone did not take the call");
            self.owner
                .reject(Some(response.status_code.clone()), None)
                .ok();
            return;
        }
        let (phone_addr, phone_codec) = match crate::call::answer_audio(&response) {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "agent phone answered with unusable SDP");
                phone.bye().await.ok();
                dialogs.remove_dialog(&phone.id());
                self.owner
                    .reject(Some(StatusCode::NotAcceptableHere), None)
                    .ok();
                return;
            }
        };
        let (Some(owner_port), Some(phone_port)) = (self.owner_port.take(), self.phone_port.take())
        else {
            return;
        };
        let mut media = CallMedia::start(MediaLeg::new(owner_port, self.codec, self.owner_media));
        media.bridge(MediaLeg::new(phone_port, phone_codec, Some(phone_addr)));
        let ct = Header::ContentType("application/sdp".into());
        if let Err(e) = self
            .owner
            .accept(Some(vec![ct]), Some(self.answer_sdp.clone().into_bytes()))
        {
            warn!(error = %e, "could not answer the owner node");
            phone.bye().await.ok();
            dialogs.remove_dialog(&phone.id());
            media.stop();
            return;
        }
        info!("agent answered; inter-node leg bridged");
        // Connected: whichever side hangs up first, hang up the other.
        loop {
            tokio::select! {
                cause = lost(&mut self.fate) => {
                    info!(%cause, "the call was lost (its owner is gone); hanging up the agent");
                    phone.bye().await.ok();
                    self.owner.bye().await.ok();
                    break;
                }
                st = self.owner_states.recv() => match st {
                    Some(DialogState::Terminated(..)) | None => {
                        debug!("owner ended the leg");
                        phone.bye().await.ok();
                        break;
                    }
                    Some(DialogState::Updated(_, req, handle)) => {
                        // The caller holds or resumes (or the owner refreshes the session).
                        if let Some(r) = answer_reoffer(&mut self.owner_sdp, &req, handle).await {
                            if r.change.is_some() {
                                relay(&phone, self.phone_sdp.reoffer(r.offered), "phone");
                            }
                        }
                    }
                    Some(_) => {}
                },
                st = phone_states.recv() => match st {
                    Some(DialogState::Terminated(_, reason)) => {
                        if matches!(reason, TerminatedReason::UacBye | TerminatedReason::UasBye | TerminatedReason::Timeout) {
                            debug!("agent hung up");
                            self.owner.bye().await.ok();
                            break;
                        }
                    }
                    Some(DialogState::Updated(_, req, handle)) => {
                        // The agent holds or resumes: the owner plays hold music meanwhile.
                        if let Some(r) = answer_reoffer(&mut self.phone_sdp, &req, handle).await {
                            if r.change.is_some() {
                                relay(&self.owner, self.owner_sdp.reoffer(r.offered), "owner");
                            }
                        }
                    }
                    Some(_) => {}
                    None => {
                        self.owner.bye().await.ok();
                        break;
                    }
                }
            }
        }
        dialogs.remove_dialog(&phone.id());
        dialogs.remove_dialog(&self.owner.id());
        media.stop();
    }
}

/// Answers an in-dialog request on one side: a re-INVITE gets `sdp`'s answer (or 488 if its
/// SDP is unusable), anything else a plain 200. Returns the re-INVITE's outcome.
async fn answer_reoffer(
    sdp: &mut LegSdp,
    req: &rsip::Request,
    handle: rsipstack::dialog::dialog::TransactionHandle,
) -> Option<Reoffer> {
    if req.method != rsip::Method::Invite {
        handle.respond(StatusCode::OK, None, None).await.ok();
        return None;
    }
    match sdp.on_reoffer(&String::from_utf8_lossy(&req.body)) {
        Ok(r) => {
            let ct = Header::ContentType("application/sdp".into());
            let answer = r.answer.clone().into_bytes();
            handle
                .respond(StatusCode::OK, Some(vec![ct]), Some(answer))
                .await
                .ok();
            Some(r)
        }
        Err(e) => {
            info!(error = %e, "refusing a re-INVITE on the inter-node leg");
            handle
                .respond(StatusCode::NotAcceptableHere, None, None)
                .await
                .ok();
            None
        }
    }
}

/// Re-offers `body` to `dialog` from its own task, so the leg goes on relaying meanwhile.
fn relay(dialog: &InviteDialog, body: String, to: &'static str) {
    let dialog = dialog.clone();
    let ct = Header::ContentType("application/sdp".into());
    tokio::spawn(
        async move {
            match dialog
                .reinvite(Some(vec![ct]), Some(body.into_bytes()))
                .await
            {
                Ok(Some(resp)) => debug!(to, status = %resp.status_code, "hold re-INVITE answered"),
                Ok(None) => debug!(to, "dialog not confirmed; hold not relayed"),
                Err(e) => warn!(to, error = %e, "could not relay a hold"),
            }
        }
        .in_current_span(),
    );
}
