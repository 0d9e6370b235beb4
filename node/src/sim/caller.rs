//! A simulated caller: a trunk-side SIP peer that dials numbers with an SDP
//! offer, streams G.711 once answered and hangs up when its time is up.
//!
//! One [`Caller`] is one SIP endpoint (one UDP port on 127.0.0.1), like a trunk,
//! and may carry many calls at once. A call is described by a [`CallPlan`]: the
//! caller stays on the line `hold_for_ms` from the moment it dials, whether it
//! hears hold music or an agent; a short plan models an abandon. The node
//! answers trunk calls at once (hold music), so the caller cannot tell waiting
//! from talking by signalling alone and does not try to.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use carillon_media::Codec;
use rsipstack::dialog::invitation::InviteOption;
use rsipstack::sip::StatusCodeKind;
use rsipstack::transport::SipAddr;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::agent_phone::wait_terminated;
use super::rng::SimRng;
use super::rtp::{Audio, RtpCounters, RtpSocket};
use super::sdp;
use super::ua::{uri, Ua};
use super::SimError;

/// How long a BYE or CANCEL may take before we stop waiting.
const SIGNALLING_WAIT_MS: u64 = 3_000;

/// Who ended a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HangupBy {
    /// The caller's time ran out (or it was cancelled) and it sent BYE or CANCEL.
    Caller,
    /// The far end sent BYE.
    Remote,
    /// The call never connected (refused, timed out, or cancelled before 2xx).
    NotConnected,
}

/// The caller side of one SIP peer.
#[derive(Debug, Clone)]
pub struct CallerConfig {
    /// Where calls go (the node's SIP address, or a phone for direct tests).
    pub target: SocketAddr,
    /// Caller's user part in From, e.g. a calling number.
    pub from_user: String,
    /// Codecs offered, in preference order.
    pub codecs: Vec<Codec>,
    pub audio: Audio,
    /// Give up on a call that has no final answer after this long (sends CANCEL).
    pub answer_timeout_ms: u64,
    pub seed: u64,
}

impl CallerConfig {
    pub fn new(target: SocketAddr) -> Self {
        Self {
            target,
            from_user: "5550100".to_string(),
            codecs: vec![Codec::Pcmu, Codec::Pcma],
            audio: Audio::Tone { hz: 350 },
            answer_timeout_ms: 30_000,
            seed: 1,
        }
    }
}

/// One call to place.
#[derive(Debug, Clone)]
pub struct CallPlan {
    /// Request-URI user: the dialled number, or an agent id for direct calls.
    pub number: String,
    /// Calling number for From; `None` uses the caller's `from_user`.
    pub from_user: Option<String>,
    /// Total time on the line from dialling until the caller hangs up.
    pub hold_for_ms: u64,
}

/// What happened on one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallOutcome {
    /// Final status of the INVITE (200, 404, 403, 503...), `None` without one.
    pub final_status: Option<u16>,
    pub connected: bool,
    pub hangup_by: HangupBy,
    /// Time from dialling to the final response.
    pub setup_ms: u64,
    /// Time from the final response to the end of the call.
    pub connected_ms: u64,
    pub rtp_sent: u64,
    pub rtp_received: u64,
}

/// Running totals across every call of one caller.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallerStats {
    pub calls_placed: u64,
    pub calls_connected: u64,
    pub calls_refused: u64,
    pub calls_active: u64,
    pub hangups_by_caller: u64,
    pub hangups_by_remote: u64,
    pub rtp_sent: u64,
    pub rtp_received: u64,
}

#[derive(Debug, Default)]
struct Shared {
    placed: AtomicU64,
    connected: AtomicU64,
    refused: AtomicU64,
    active: AtomicU64,
    by_caller: AtomicU64,
    by_remote: AtomicU64,
    rtp: Arc<RtpCounters>,
}

/// A running simulated caller (one SIP endpoint).
pub struct Caller {
    config: CallerConfig,
    ua: Ua,
    shared: Arc<Shared>,
    rng: std::sync::Mutex<SimRng>,
    cancel: CancellationToken,
}

impl Caller {
    /// Binds the caller's SIP port. All its calls end when `parent` is cancelled.
    pub async fn start(
        config: CallerConfig,
        parent: &CancellationToken,
    ) -> Result<Caller, SimError> {
        let cancel = parent.child_token();
        let ua = Ua::bind("carillon-sim-caller", None, &cancel).await?;
        Ok(Caller {
            rng: std::sync::Mutex::new(SimRng::new(config.seed)),
            config,
            ua,
            shared: Arc::new(Shared::default()),
            cancel,
        })
    }

    pub fn sip_addr(&self) -> SocketAddr {
        self.ua.addr
    }

    pub fn stats(&self) -> CallerStats {
        let s = &self.shared;
        CallerStats {
            calls_placed: s.placed.load(Ordering::Relaxed),
            calls_connected: s.connected.load(Ordering::Relaxed),
            calls_refused: s.refused.load(Ordering::Relaxed),
            calls_active: s.active.load(Ordering::Relaxed),
            hangups_by_caller: s.by_caller.load(Ordering::Relaxed),
            hangups_by_remote: s.by_remote.load(Ordering::Relaxed),
            rtp_sent: s.rtp.sent.load(Ordering::Relaxed),
            rtp_received: s.rtp.received.load(Ordering::Relaxed),
        }
    }

    /// Stops every call in progress (BYE or CANCEL is attempted) and the endpoint.
    pub fn stop(&self) {
        self.cancel.cancel();
    }

    /// Places one call and returns when it is over. Safe to run many at once.
    pub async fn call(&self, plan: &CallPlan) -> Result<CallOutcome, SimError> {
        let (session_id, ssrc) = {
            // A poisoned lock only means another call panicked mid-draw; the
            // generator state is still a valid u64.
            let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
            (rng.next_u64() >> 1, rng.next_u64() as u32)
        };
        self.shared.placed.fetch_add(1, Ordering::Relaxed);
        self.shared.active.fetch_add(1, Ordering::Relaxed);
        let result = self.place(plan, session_id, ssrc).await;
        self.shared.active.fetch_sub(1, Ordering::Relaxed);
        match &result {
            Ok(o) if o.connected => {
                self.shared.connected.fetch_add(1, Ordering::Relaxed);
                let counter = match o.hangup_by {
                    HangupBy::Remote => &self.shared.by_remote,
                    _ => &self.shared.by_caller,
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                self.shared.refused.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }

    async fn place(
        &self,
        plan: &CallPlan,
        session_id: u64,
        ssrc: u32,
    ) -> Result<CallOutcome, SimError> {
        let started = now();
        let hang_up_at = started + Duration::from_millis(plan.hold_for_ms);
        let rtp = RtpSocket::bind_loopback().await?;
        let offer = sdp::offer(rtp.local_addr(), session_id, &self.config.codecs);
        let from_user = plan.from_user.as_deref().unwrap_or(&self.config.from_user);
        let option = InviteOption {
            caller: uri(&format!("sip:{from_user}@{}", self.ua.addr))?,
            callee: uri(&format!("sip:{}@{}", plan.number, self.config.target))?,
            destination: Some(SipAddr::from(self.config.target)),
            content_type: Some("application/sdp".to_string()),
            offer: Some(offer.into_bytes()),
            contact: self.ua.contact(from_user)?,
            ..Default::default()
        };
        let (state_tx, mut states) = self.ua.dialogs.new_dialog_state_channel();
        let (dialog, invite) = self
            .ua
            .dialogs
            .do_invite_async(option, state_tx)
            .map_err(SimError::sip)?;
        let answer_by = started + Duration::from_millis(self.config.answer_timeout_ms);
        let mut outcome = CallOutcome {
            final_status: None,
            connected: false,
            hangup_by: HangupBy::NotConnected,
            setup_ms: 0,
            connected_ms: 0,
            rtp_sent: 0,
            rtp_received: 0,
        };

        let mut invite = invite;
        let answered = tokio::select! {
            r = &mut invite => Some(r),
            _ = tokio::time::sleep_until(hang_up_at.min(answer_by)) => None,
            _ = self.cancel.cancelled() => None,
        };
        let response = match answered {
            Some(Ok(Ok((_, response)))) => response,
            Some(Ok(Err(e))) => {
                debug!(error = %e, "INVITE failed");
                None
            }
            Some(Err(join)) => return Err(SimError::sip(join)),
            None => {
                // Caller gave up before a final answer: CANCEL, and let the
                // INVITE task finish (a racing 2xx is ended with BYE by the stack).
                let wait = Duration::from_millis(SIGNALLING_WAIT_MS);
                tokio::time::timeout(wait, dialog.cancel()).await.ok();
                tokio::time::timeout(wait, &mut invite).await.ok();
                outcome.setup_ms = elapsed_ms(started);
                outcome.hangup_by = HangupBy::Caller;
                return Ok(outcome);
            }
        };
        outcome.setup_ms = elapsed_ms(started);
        let Some(response) = response else {
            return Ok(outcome);
        };
        outcome.final_status = Some(u16::from(response.status_code.clone()));
        if response.status_code.kind() != StatusCodeKind::Successful {
            return Ok(outcome);
        }
        outcome.connected = true;
        let id = dialog.id();
        let remote = match sdp::parse(&response.body) {
            Ok(desc) => desc,
            Err(e) => {
                // Connected but unusable media: hang up rather than sit in silence.
                let wait = Duration::from_millis(SIGNALLING_WAIT_MS);
                tokio::time::timeout(wait, dialog.bye()).await.ok();
                self.ua.dialogs.remove_dialog(&id);
                return Err(e.into());
            }
        };
        let codec = remote
            .preferred_g711()
            .or_else(|| self.config.codecs.first().copied())
            .unwrap_or(Codec::Pcmu);
        let connected_at = now();
        let media_stop = self.cancel.child_token();
        let media = tokio::spawn(rtp.run(
            remote.addr,
            codec,
            self.config.audio,
            ssrc,
            self.shared.rtp.clone(),
            media_stop.clone(),
        ));
        let caller_hangs_up = tokio::select! {
            _ = tokio::time::sleep_until(hang_up_at) => true,
            _ = wait_terminated(&mut states) => false,
            _ = self.cancel.cancelled() => true,
        };
        media_stop.cancel();
        if caller_hangs_up {
            outcome.hangup_by = HangupBy::Caller;
            let wait = Duration::from_millis(SIGNALLING_WAIT_MS);
            if let Ok(Err(e)) = tokio::time::timeout(wait, dialog.bye()).await {
                debug!(error = %e, "BYE failed");
            }
        } else {
            outcome.hangup_by = HangupBy::Remote;
        }
        outcome.connected_ms = elapsed_ms(connected_at);
        self.ua.dialogs.remove_dialog(&id);
        if let Ok(totals) = media.await {
            outcome.rtp_sent = totals.sent;
            outcome.rtp_received = totals.received;
        }
        Ok(outcome)
    }
}

impl Drop for Caller {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// The simulator is an adapter: its calls happen in wall-clock time.
#[allow(clippy::disallowed_methods)]
fn now() -> tokio::time::Instant {
    tokio::time::Instant::now()
}

fn elapsed_ms(since: tokio::time::Instant) -> u64 {
    now().saturating_duration_since(since).as_millis() as u64
}
