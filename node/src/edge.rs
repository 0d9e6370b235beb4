//! The SIP edge: every new server transaction lands here first.
//!
//! The dispatcher drains rsipstack's (unbounded) transaction channel at once and admits at
//! most `sip.pending_requests_max` requests into handling; past that a request is answered
//! 503 with Retry-After on the spot, so a flood costs a reply, not memory. Then: REGISTER
//! goes to the registrar, a new INVITE through the trunk checks into a call task, in-dialog
//! requests to their dialog, OPTIONS gets 200, anything else 405.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use carillon_media::{sdp, CallMedia, Codec, MediaLeg};
use carillon_routing::Command;
use rsipstack::transaction::transaction::Transaction;
use rsipstack::transaction::TransactionReceiver;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::call::{self, CallSetup};
use crate::clock::now_ms;
use crate::node::Shared;
use crate::registrar::{ContactSpec, RegisterOutcome, RegisterRequest};
use crate::sip::{self, rsip};
use rsip::prelude::{HasHeaders, HeadersExt};
use rsip::{Header, Method, StatusCode};

/// Seconds a refused caller is asked to wait before retrying.
const RETRY_AFTER_S: u32 = 5;

pub async fn dispatch(shared: Arc<Shared>, mut incoming: TransactionReceiver) {
    let permits = Arc::new(Semaphore::new(shared.config.sip.pending_requests_max));
    while let Some(mut tx) = incoming.recv().await {
        shared.counters.sip_requests.fetch_add(1, Ordering::Relaxed);
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            shared.counters.sip_shed.fetch_add(1, Ordering::Relaxed);
            if tx.original.method != Method::Ack {
                tokio::spawn(async move {
                    sip::reply(&mut tx, StatusCode::ServiceUnavailable, vec![retry_after()]).await;
                });
            }
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            handle(shared, tx).await;
            drop(permit);
        });
    }
}

fn retry_after() -> Header {
    Header::RetryAfter(RETRY_AFTER_S.to_string().into())
}

async fn handle(shared: Arc<Shared>, mut tx: Transaction) {
    if let Err(problem) = sip::check_request(&tx.original) {
        info!(method = %tx.original.method, %problem, "malformed request");
        shared
            .counters
            .sip_malformed
            .fetch_add(1, Ordering::Relaxed);
        if tx.original.method != Method::Ack {
            let warning =
                Header::Warning(format!("399 carillon \"{}\"", problem.replace('"', "'")).into());
            sip::reply(&mut tx, StatusCode::BadRequest, vec![warning]).await;
        }
        return;
    }
    let in_dialog = match sip::has_to_tag(&tx.original) {
        Ok(b) => b,
        Err(problem) => {
            sip::reply(&mut tx, StatusCode::BadRequest, vec![]).await;
            debug!(%problem, "bad To header");
            return;
        }
    };
    if in_dialog {
        match shared.sip.dialogs.match_dialog(&tx) {
            Some(rsipstack::dialog::dialog::Dialog::Invite(mut dialog)) => {
                if let Err(e) = dialog.handle(&mut tx).await {
                    debug!(error = %e, "in-dialog request failed");
                }
            }
            _ => {
                if tx.original.method != Method::Ack {
                    sip::reply(&mut tx, StatusCode::CallTransactionDoesNotExist, vec![]).await;
                }
            }
        }
        return;
    }
    match tx.original.method {
        Method::Register => register(&shared, &mut tx).await,
        Method::Invite => invite(shared, tx).await,
        Method::Options => sip::reply(&mut tx, StatusCode::OK, vec![]).await,
        Method::Ack => {}
        Method::Bye => sip::reply(&mut tx, StatusCode::CallTransactionDoesNotExist, vec![]).await,
        _ => {
            let allow = Header::Allow("INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER".into());
            sip::reply(&mut tx, StatusCode::MethodNotAllowed, vec![allow]).await
        }
    }
}

async fn register(shared: &Shared, tx: &mut Transaction) {
    let req = &tx.original;
    let Some((source, transport)) = sip::request_source(tx) else {
        sip::reply(tx, StatusCode::BadRequest, vec![]).await;
        return;
    };
    let agent = match sip::to_user(req) {
        Ok(a) => a,
        Err(_) => {
            sip::reply(tx, StatusCode::BadRequest, vec![]).await;
            return;
        }
    };
    let contact = if req.contact_headers().is_empty() {
        None
    } else if req
        .contact_headers()
        .iter()
        .any(|c| c.value().trim() == "*")
    {
        Some(ContactSpec::Wildcard)
    } else {
        match req
            .contact_header()
            .and_then(|c| rsip::typed::Contact::parse(c.value()))
            .map(|c| c.uri)
        {
            Ok(uri) => Some(ContactSpec::Uri(uri.to_string())),
            Err(_) => {
                sip::reply(tx, StatusCode::BadRequest, vec![]).await;
                return;
            }
        }
    };
    let contact_expires = req
        .contact_header()
        .ok()
        .and_then(|c| contact_expires_param(c.value()));
    let header_expires = req.headers().iter().find_map(|h| match h {
        Header::Expires(e) => e.value().trim().parse::<u32>().ok(),
        _ => None,
    });
    let authorization = req.headers().iter().find_map(|h| match h {
        Header::Authorization(a) => Some(a.value().to_string()),
        _ => None,
    });
    let request = RegisterRequest {
        agent,
        authorization,
        contact,
        expires_s: contact_expires.or(header_expires),
        source,
        transport,
    };
    let now = now_ms();
    let outcome = shared.registrar().register(&request, now);
    match outcome {
        RegisterOutcome::Challenge { www_authenticate } => {
            let h = Header::WwwAuthenticate(www_authenticate.into());
            sip::reply(tx, StatusCode::Unauthorized, vec![h]).await;
        }
        RegisterOutcome::Forbidden { reason } => {
            info!(agent = %request.agent, %source, reason, "registration refused");
            sip::reply(tx, StatusCode::Forbidden, vec![]).await;
        }
        RegisterOutcome::BadRequest { reason } => {
            info!(agent = %request.agent, %reason, "bad registration");
            sip::reply(tx, StatusCode::BadRequest, vec![]).await;
        }
        RegisterOutcome::Registered {
            agent,
            expires_s,
            contact,
            first,
        } => {
            if first && shared.config.is_supervisor(&agent) {
                info!(supervisor = %agent, %contact, "supervisor registered");
            } else if first {
                info!(%agent, %contact, "agent registered");
                let skills = shared
                    .registrar()
                    .account(&agent)
                    .map(|a| a.skills.clone())
                    .unwrap_or_default();
                let cmd = Command::AgentLogin {
                    agent: agent.clone(),
                    skills,
                    node: shared.node_number,
                    site: shared.config.node.site.clone(),
                    at: now,
                };
                if let Err(e) = shared.routing.propose(cmd).await {
                    warn!(%agent, error = %e, "routing refused the log-in");
                }
            }
            let c = Header::Contact(format!("<{contact}>;expires={expires_s}").into());
            let e = Header::Expires(expires_s.to_string().into());
            sip::reply(tx, StatusCode::OK, vec![c, e]).await;
        }
        RegisterOutcome::Unregistered { agent, had_binding } => {
            if had_binding {
                info!(%agent, "agent unregistered");
                logout(shared, &agent, now).await;
            }
            sip::reply(tx, StatusCode::OK, vec![]).await;
        }
        RegisterOutcome::Query { binding, .. } => {
            let headers = binding
                .map(|b| {
                    let left = b.expires_at_ms.saturating_sub(now) / 1000;
                    vec![Header::Contact(
                        format!("<{}>;expires={left}", b.contact).into(),
                    )]
                })
                .unwrap_or_default();
            sip::reply(tx, StatusCode::OK, headers).await;
        }
    }
}

pub async fn logout(shared: &Shared, agent: &str, now: u64) {
    // A supervisor's phone was never an ACD agent.
    if shared.config.is_supervisor(agent) {
        return;
    }
    // In a cluster the phone may since have registered at another node; that node owns
    // the agent now, and a lapse here must not log it out there.
    if shared.routing.cluster().is_some() {
        let home = shared.routing.read(|acd| acd.agent_node(agent));
        if home.is_some() && home != Some(shared.node_number) {
            debug!(%agent, ?home, "registration lapsed here but the agent is at another node");
            return;
        }
    }
    let cmd = Command::AgentLogout {
        agent: agent.to_string(),
        at: now,
    };
    if let Err(e) = shared.routing.propose(cmd).await {
        warn!(%agent, error = %e, "routing refused the log-out");
    }
}

fn contact_expires_param(value: &str) -> Option<u32> {
    // Parameters after the closing '>' (or the whole value when unbracketed).
    let params = value.rsplit_once('>').map(|(_, p)| p).unwrap_or(value);
    params.split(';').find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("expires")
            .then(|| v.trim().parse().ok())
            .flatten()
    })
}

/// Whether calls from `caller` are refused: a live change through the API (replicated
/// by routing, so the same on every node) wins over the node's configured `[blacklist]`.
fn is_blacklisted(shared: &Shared, caller: &str) -> bool {
    shared
        .routing
        .read(|acd| acd.blacklisted(caller))
        .unwrap_or_else(|| shared.config.blacklist.callers.iter().any(|c| c == caller))
}

/// The blacklist in effect: the configured callers not let in since, and the callers
/// blocked live, sorted.
pub fn blacklist(
    config: &crate::config::Config,
    acd: &carillon_routing::Acd,
) -> std::collections::BTreeSet<String> {
    let mut callers: std::collections::BTreeSet<String> = config
        .blacklist
        .callers
        .iter()
        .filter(|c| acd.blacklisted(c) != Some(false))
        .cloned()
        .collect();
    callers.extend(
        acd.blacklist()
            .iter()
            .filter(|(_, blocked)| **blocked)
            .map(|(c, _)| c.clone()),
    );
    callers
}

/// A new INVITE: trunk checks, admission, answer, then the call task.
async fn invite(shared: Arc<Shared>, mut tx: Transaction) {
    let received = crate::clock::instant();
    let Some((source, _)) = sip::request_source(&tx) else {
        sip::reply(&mut tx, StatusCode::BadRequest, vec![]).await;
        return;
    };
    if let Some(peer) = shared.routing.cluster().and_then(|c| c.peer_by_sip(source)) {
        crate::peer_leg::run(shared, tx, peer).await;
        return;
    }
    // A supervisor's phone dialling a feature code (`*81<agent>`): before the trunk
    // checks, since phones and trunks may share an address.
    if let Some(code) = crate::call::supervise::feature_code(&shared, &tx.original) {
        crate::call::supervise::feature_call(shared, tx, code).await;
        return;
    }
    let trunk = shared
        .trunks
        .iter()
        .find(|(_, nets)| nets.iter().any(|n| n.contains(source.ip())))
        .map(|(name, _)| name.clone());
    let Some(trunk) = trunk else {
        info!(%source, "INVITE from an address no trunk allows");
        sip::reply(&mut tx, StatusCode::Forbidden, vec![]).await;
        return;
    };
    let caller = sip::from_user(&tx.original).unwrap_or_default();
    if is_blacklisted(&shared, &caller) {
        info!(%caller, %trunk, "blacklisted caller refused");
        sip::reply(&mut tx, StatusCode::Forbidden, vec![]).await;
        return;
    }
    let dialled = sip::request_user(&tx.original).unwrap_or_default();
    let Some(queue) = shared
        .config
        .numbers
        .iter()
        .find(|n| n.number == dialled)
        .map(|n| n.queue.clone())
    else {
        info!(%caller, %dialled, "call to an unknown number");
        sip::reply(&mut tx, StatusCode::NotFound, vec![]).await;
        return;
    };
    let Some(slot) = shared.try_take_call_slot() else {
        info!(%caller, "at the concurrent call limit; refusing");
        sip::reply(&mut tx, StatusCode::ServiceUnavailable, vec![retry_after()]).await;
        return;
    };
    let offer_text = String::from_utf8_lossy(&tx.original.body).to_string();
    let offer = match sdp::parse(&offer_text) {
        Ok(o) => o,
        Err(e) => {
            info!(%caller, error = %e, "INVITE without a usable SDP offer");
            sip::reply(&mut tx, StatusCode::NotAcceptableHere, vec![]).await;
            return;
        }
    };
    let port = match shared.ports.allocate() {
        Ok(p) => p,
        Err(e) => {
            warn!(error = %e, "no RTP port for a new call");
            sip::reply(&mut tx, StatusCode::ServiceUnavailable, vec![retry_after()]).await;
            return;
        }
    };
    let (answer_sdp, codec) =
        match sdp::answer(&offer, port.local_addr(), &[Codec::Pcmu, Codec::Pcma]) {
            Ok(x) => x,
            Err(e) => {
                info!(%caller, error = %e, "no common codec");
                sip::reply(&mut tx, StatusCode::NotAcceptableHere, vec![]).await;
                return;
            }
        };
    let remote = offer.audio_addr();
    let sip_call_id = tx
        .original
        .call_id_header()
        .map(|c| c.value().to_string())
        .unwrap_or_default();
    let call_id = shared.next_call_id();
    let (mut dialog, state_rx) = match shared.sip.server_dialog(&tx) {
        Ok(x) => x,
        Err(e) => {
            warn!(error = %e, "cannot create the caller dialog");
            sip::reply(&mut tx, StatusCode::ServerInternalError, vec![]).await;
            return;
        }
    };
    let caller_dialog = dialog.clone();
    let mut events = shared.routing.subscribe(&call_id);
    let ct = Header::ContentType("application/sdp".into());
    if let Err(e) = caller_dialog.accept(Some(vec![ct]), Some(answer_sdp.clone().into_bytes())) {
        warn!(error = %e, "could not answer the caller");
        shared.routing.unsubscribe(&call_id, &mut events);
        return;
    }
    let media = CallMedia::start(MediaLeg::new(port, codec, remote));
    crate::metrics::sip_transaction("INVITE", 200);
    info!(%call_id, %caller, %dialled, %trunk, %source, "call answered");
    let setup = CallSetup {
        call_id,
        sip_call_id,
        caller,
        dialled,
        queue,
        codec,
        answer_sdp,
        caller_dialog,
        caller_states: state_rx,
        media,
        events,
        received,
    };
    let task_shared = shared.clone();
    tokio::spawn(async move {
        call::run(task_shared, setup).await;
        drop(slot);
    });
    // The INVITE transaction (ACK, CANCEL, retransmissions) runs here to its end.
    if let Err(e) = dialog.handle(&mut tx).await {
        debug!(error = %e, "caller INVITE transaction ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contact_expires_is_read_from_params_after_the_uri() {
        assert_eq!(
            contact_expires_param("<sip:1001@1.2.3.4;x=1>;expires=60"),
            Some(60)
        );
        assert_eq!(contact_expires_param("<sip:1001@1.2.3.4;expires=9>"), None);
        assert_eq!(contact_expires_param("sip:1001@1.2.3.4;expires=0"), Some(0));
        assert_eq!(contact_expires_param("<sip:1001@1.2.3.4>"), None);
    }
}
