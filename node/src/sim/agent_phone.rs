//! A simulated agent phone: registers with digest auth, rings, answers with
//! G.711, talks for a while, hangs up or takes the node's BYE.
//!
//! Call order: [`AgentPhone::start`], optionally [`AgentPhone::wait_registered`],
//! read [`AgentPhone::stats`] at any time, then [`AgentPhone::stop`] (which
//! unregisters). Dropping the phone without `stop` tears it down without the
//! `Expires: 0`, as a phone that lost power would.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rsipstack::dialog::authenticate::Credential;
use rsipstack::dialog::dialog::{DialogState, DialogStateReceiver, TerminatedReason};
use rsipstack::dialog::registration::{RefreshOutcome, Registration};
use rsipstack::sip::{Header, StatusCode};
use rsipstack::transaction::transaction::Transaction;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::rng::SimRng;
use super::rtp::{Audio, RtpCounters, RtpSocket};
use super::sdp;
use super::ua::{uri, Ua};
use super::SimError;

/// INVITEs waiting for the phone's call task; past it the dispatcher answers 486.
const INVITE_QUEUE_DEPTH_MAX: usize = 4;
/// How long a BYE or the final unregister may take before we stop waiting.
const SIGNALLING_WAIT_MS: u64 = 3_000;

/// How one simulated agent phone behaves.
#[derive(Debug, Clone)]
pub struct AgentPhoneConfig {
    /// Agent id, used as the SIP user and digest username.
    pub agent_id: String,
    pub password: String,
    /// Where to REGISTER; `None` for a phone that only takes direct calls.
    pub registrar: Option<SocketAddr>,
    /// Expiry asked for in REGISTER; the phone refreshes at 75% of what is granted.
    pub register_expires_s: u32,
    /// Ring time before answering, drawn uniformly from this range.
    pub ring_delay_ms: (u64, u64),
    /// Talk time before the agent hangs up, drawn uniformly from this range.
    pub talk_time_ms: (u64, u64),
    pub audio: Audio,
    /// Calls this phone carries at once; further INVITEs get 486 Busy Here.
    pub lines_max: u64,
    pub seed: u64,
}

impl AgentPhoneConfig {
    /// Sensible defaults for agent `agent_id` with `password`.
    pub fn new(agent_id: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            agent_id: agent_id.into(),
            password: password.into(),
            registrar: None,
            register_expires_s: 300,
            ring_delay_ms: (300, 1_500),
            talk_time_ms: (5_000, 15_000),
            audio: Audio::Tone { hz: 440 },
            lines_max: 1,
            seed: 1,
        }
    }
}

/// A snapshot of what the phone has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AgentPhoneStats {
    pub registered: bool,
    pub registrations_ok: u64,
    pub registrations_failed: u64,
    /// Status of the last refused REGISTER, 0 when none was refused.
    pub last_refusal_status: u16,
    pub calls_offered: u64,
    pub calls_answered: u64,
    pub calls_active: u64,
    pub hangups_by_agent: u64,
    pub hangups_by_remote: u64,
    pub rtp_sent: u64,
    pub rtp_received: u64,
}

#[derive(Debug, Default)]
struct Shared {
    registered: AtomicBool,
    registrations_ok: AtomicU64,
    registrations_failed: AtomicU64,
    last_refusal_status: AtomicU64,
    calls_offered: AtomicU64,
    calls_answered: AtomicU64,
    calls_active: AtomicU64,
    hangups_by_agent: AtomicU64,
    hangups_by_remote: AtomicU64,
    rtp: Arc<RtpCounters>,
}

/// A running simulated agent phone.
pub struct AgentPhone {
    agent_id: String,
    ua: Arc<Ua>,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    registration_stop: CancellationToken,
    registration: Option<JoinHandle<()>>,
}

impl AgentPhone {
    /// Binds the phone's SIP port, starts answering and, if a registrar is
    /// configured, starts registering. Everything stops when `parent` is cancelled.
    pub async fn start(
        config: AgentPhoneConfig,
        parent: &CancellationToken,
    ) -> Result<AgentPhone, SimError> {
        let cancel = parent.child_token();
        let (invite_tx, invite_rx) = mpsc::channel(INVITE_QUEUE_DEPTH_MAX);
        let ua = Arc::new(Ua::bind("carillon-sim-agent", Some(invite_tx), &cancel).await?);
        let shared = Arc::new(Shared::default());
        let mut rng = SimRng::new(config.seed);

        tokio::spawn(answer_loop(
            ua.clone(),
            invite_rx,
            config.clone(),
            rng.fork(1),
            shared.clone(),
            cancel.clone(),
        ));

        let registration_stop = cancel.child_token();
        let registration = config.registrar.map(|registrar| {
            tokio::spawn(register_loop(
                ua.clone(),
                registrar,
                config.clone(),
                shared.clone(),
                registration_stop.clone(),
                cancel.clone(),
            ))
        });
        Ok(AgentPhone {
            agent_id: config.agent_id,
            ua,
            shared,
            cancel,
            registration_stop,
            registration,
        })
    }

    pub fn agent_id(&self) -> &str {
        &self.agent_id
    }

    /// The phone's SIP address (UDP on 127.0.0.1).
    pub fn sip_addr(&self) -> SocketAddr {
        self.ua.addr
    }

    /// `sip:<agent>@127.0.0.1:<port>`, for calling the phone directly.
    pub fn uri(&self) -> String {
        format!("sip:{}@{}", self.agent_id, self.ua.addr)
    }

    pub fn stats(&self) -> AgentPhoneStats {
        let s = &self.shared;
        AgentPhoneStats {
            registered: s.registered.load(Ordering::Relaxed),
            registrations_ok: s.registrations_ok.load(Ordering::Relaxed),
            registrations_failed: s.registrations_failed.load(Ordering::Relaxed),
            last_refusal_status: s.last_refusal_status.load(Ordering::Relaxed) as u16,
            calls_offered: s.calls_offered.load(Ordering::Relaxed),
            calls_answered: s.calls_answered.load(Ordering::Relaxed),
            calls_active: s.calls_active.load(Ordering::Relaxed),
            hangups_by_agent: s.hangups_by_agent.load(Ordering::Relaxed),
            hangups_by_remote: s.hangups_by_remote.load(Ordering::Relaxed),
            rtp_sent: s.rtp.sent.load(Ordering::Relaxed),
            rtp_received: s.rtp.received.load(Ordering::Relaxed),
        }
    }

    /// Waits until the first REGISTER succeeded. A refusal (403 for a wrong
    /// password) returns at once with an error naming the status.
    pub async fn wait_registered(&self, timeout: Duration) -> Result<(), SimError> {
        let poll = async {
            // Bounded by the timeout below and by cancellation.
            loop {
                if self.shared.registered.load(Ordering::Relaxed) {
                    return Ok(());
                }
                let refused = self.shared.last_refusal_status.load(Ordering::Relaxed) as u16;
                if refused != 0 {
                    return Err(SimError::RegisterRefused {
                        user: self.agent_id.clone(),
                        status: refused,
                    });
                }
                if self.cancel.is_cancelled() {
                    return Err(SimError::Cancelled);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(timeout, poll)
            .await
            .map_err(|_| SimError::Timeout("REGISTER to succeed"))?
    }

    /// Unregisters (`Expires: 0`) if registered, then stops the phone. Calls in
    /// progress are ended with BYE.
    pub async fn stop(mut self) {
        self.registration_stop.cancel();
        if let Some(task) = self.registration.take() {
            let wait = Duration::from_millis(SIGNALLING_WAIT_MS * 2);
            if tokio::time::timeout(wait, task).await.is_err() {
                debug!(agent = %self.agent_id, "unregister did not finish in time");
            }
        }
        self.cancel.cancel();
    }
}

impl Drop for AgentPhone {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Keeps the registration fresh until `stop`, then sends `Expires: 0` unless the
/// whole phone is being torn down.
async fn register_loop(
    ua: Arc<Ua>,
    registrar: SocketAddr,
    config: AgentPhoneConfig,
    shared: Arc<Shared>,
    stop: CancellationToken,
    phone: CancellationToken,
) {
    let credential = Credential {
        username: config.agent_id.clone(),
        password: config.password.clone(),
        realm: None,
        auth_username: None,
    };
    let server = match uri(&format!("sip:{registrar}")) {
        Ok(u) => u,
        Err(e) => {
            info!(error = %e, "registrar address unusable");
            return;
        }
    };
    let mut registration = Registration::new(ua.endpoint.clone(), Some(credential));
    let on_result = |outcome: RefreshOutcome<'_>| match outcome {
        RefreshOutcome::Registered(_) => {
            shared.registrations_ok.fetch_add(1, Ordering::Relaxed);
            shared.registered.store(true, Ordering::Relaxed);
        }
        RefreshOutcome::Rejected(resp) => {
            shared.registrations_failed.fetch_add(1, Ordering::Relaxed);
            shared.registered.store(false, Ordering::Relaxed);
            shared.last_refusal_status.store(
                u64::from(u16::from(resp.status_code.clone())),
                Ordering::Relaxed,
            );
        }
        RefreshOutcome::Failed(e) => {
            debug!(agent = %config.agent_id, error = %e, "REGISTER failed");
            shared.registrations_failed.fetch_add(1, Ordering::Relaxed);
            shared.registered.store(false, Ordering::Relaxed);
        }
    };
    registration
        .keep_alive(server.clone(), config.register_expires_s, stop, on_result)
        .await;
    if phone.is_cancelled() || !shared.registered.load(Ordering::Relaxed) {
        return;
    }
    let wait = Duration::from_millis(SIGNALLING_WAIT_MS);
    match tokio::time::timeout(wait, registration.register(server, Some(0))).await {
        Ok(Ok(_)) => shared.registered.store(false, Ordering::Relaxed),
        Ok(Err(e)) => debug!(agent = %config.agent_id, error = %e, "unregister failed"),
        Err(_) => debug!(agent = %config.agent_id, "unregister timed out"),
    }
}

/// Takes INVITEs off the dispatcher's queue and runs each call on its own task.
async fn answer_loop(
    ua: Arc<Ua>,
    mut invites: mpsc::Receiver<Transaction>,
    config: AgentPhoneConfig,
    mut rng: SimRng,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    let mut call_no: u64 = 0;
    loop {
        let mut tx = tokio::select! {
            _ = cancel.cancelled() => return,
            tx = invites.recv() => match tx {
                Some(tx) => tx,
                None => return,
            },
        };
        shared.calls_offered.fetch_add(1, Ordering::Relaxed);
        if shared.calls_active.load(Ordering::Relaxed) >= config.lines_max {
            tx.reply(StatusCode::BusyHere).await.ok();
            continue;
        }
        call_no += 1;
        shared.calls_active.fetch_add(1, Ordering::Relaxed);
        let call = AnsweredCall {
            ua: ua.clone(),
            config: config.clone(),
            rng: rng.fork(call_no),
            shared: shared.clone(),
            cancel: cancel.child_token(),
        };
        tokio::spawn(async move {
            let shared = call.shared.clone();
            if let Err(e) = call.run(tx).await {
                debug!(error = %e, "agent call ended with an error");
            }
            shared.calls_active.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

struct AnsweredCall {
    ua: Arc<Ua>,
    config: AgentPhoneConfig,
    rng: SimRng,
    shared: Arc<Shared>,
    cancel: CancellationToken,
}

impl AnsweredCall {
    async fn run(mut self, mut tx: Transaction) -> Result<(), SimError> {
        let dialogs = self.ua.dialogs.clone();
        let (state_tx, mut states) = dialogs.new_dialog_state_channel();
        let contact = self.ua.contact(&self.config.agent_id)?;
        let dialog = match dialogs.get_or_create_server_invite(&tx, state_tx, None, Some(contact)) {
            Ok(d) => d,
            Err(e) => {
                tx.reply(StatusCode::CallTransactionDoesNotExist).await.ok();
                return Err(SimError::sip(e));
            }
        };
        let id = dialog.id();
        let offer = sdp::parse(&tx.original.body);
        let mut server_side = dialog.clone();
        // Drives the INVITE server transaction (provisional, 2xx, ACK or CANCEL);
        // it ends with the transaction's own timers.
        tokio::spawn(async move {
            if let Err(e) = server_side.handle(&mut tx).await {
                debug!(error = %e, "INVITE transaction ended with an error");
            }
        });

        let result = self.converse(&dialog, offer, &mut states).await;
        dialogs.remove_dialog(&id);
        result
    }

    async fn converse(
        &mut self,
        dialog: &rsipstack::dialog::invite_dialog::InviteDialog,
        offer: Result<sdp::AudioDescription, sdp::SdpError>,
        states: &mut DialogStateReceiver,
    ) -> Result<(), SimError> {
        let (remote, codec) = match offer.map(|d| (d.preferred_g711(), d.addr)) {
            Ok((Some(codec), addr)) => (addr, codec),
            Ok((None, _)) => {
                dialog
                    .reject(Some(StatusCode::NotAcceptableHere), None)
                    .ok();
                return Ok(());
            }
            Err(e) => {
                dialog
                    .reject(Some(StatusCode::NotAcceptableHere), None)
                    .ok();
                return Err(e.into());
            }
        };
        dialog.ringing(None, None).ok();
        let ring = Duration::from_millis(
            self.rng
                .range_u64(self.config.ring_delay_ms.0, self.config.ring_delay_ms.1),
        );
        tokio::select! {
            _ = tokio::time::sleep(ring) => {}
            // CANCEL from the node (ring timeout or caller gone) ends the call here.
            _ = wait_terminated(states) => return Ok(()),
            _ = self.cancel.cancelled() => {
                dialog.reject(Some(StatusCode::TemporarilyUnavailable), None).ok();
                return Ok(());
            }
        }

        let rtp = RtpSocket::bind_loopback().await?;
        let answer = sdp::answer(rtp.local_addr(), self.rng.next_u64() >> 1, codec);
        dialog
            .accept(
                Some(vec![Header::ContentType("application/sdp".into())]),
                Some(answer.into_bytes()),
            )
            .map_err(SimError::sip)?;
        self.shared.calls_answered.fetch_add(1, Ordering::Relaxed);

        let media_stop = self.cancel.child_token();
        let media = tokio::spawn(rtp.run(
            remote,
            codec,
            self.config.audio,
            self.rng.next_u64() as u32,
            self.shared.rtp.clone(),
            media_stop.clone(),
        ));
        let talk = Duration::from_millis(
            self.rng
                .range_u64(self.config.talk_time_ms.0, self.config.talk_time_ms.1),
        );
        let agent_hangs_up = tokio::select! {
            _ = tokio::time::sleep(talk) => true,
            _ = wait_terminated(states) => false,
            _ = self.cancel.cancelled() => true,
        };
        media_stop.cancel();
        if agent_hangs_up {
            self.shared.hangups_by_agent.fetch_add(1, Ordering::Relaxed);
            let wait = Duration::from_millis(SIGNALLING_WAIT_MS);
            if let Ok(Err(e)) = tokio::time::timeout(wait, dialog.bye()).await {
                debug!(error = %e, "BYE failed");
            }
        } else {
            self.shared
                .hangups_by_remote
                .fetch_add(1, Ordering::Relaxed);
        }
        media.await.ok();
        Ok(())
    }
}

/// Resolves when the dialog reports `Terminated` (or its state channel closes).
pub(crate) async fn wait_terminated(states: &mut DialogStateReceiver) -> Option<TerminatedReason> {
    // Each dialog emits a handful of states, then Terminated; the sender side
    // closes when the dialog is dropped, so this ends.
    while let Some(state) = states.recv().await {
        if let DialogState::Terminated(_, reason) = state {
            return Some(reason);
        }
    }
    None
}
