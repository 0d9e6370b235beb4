//! Callback in queue, the call task's side: the caller presses `callback.key`, may type a
//! number ended by `#` (else their own number is kept once `callback.digit_timeout_s`
//! passes), hears a beep and is hung up on; routing keeps the call's place
//! (`RequestCallback`). At its turn (`CallbackOffered`) the agent is rung as for any offer;
//! once the agent answers, the customer is dialled at `sip:<number>@<callback.gateway>` on a
//! fresh RTP port, and the legs are bridged when the customer answers. An unanswered
//! customer releases the agent (`CallbackNoAnswer`); routing retries after the queue's gap
//! or closes the call as `callback_unanswered`.
//!
//! `CallbackOffered` reaches the task through the routing log's per-call events when the
//! log routes it there, and otherwise through the log's event stream, which the task
//! watches only while its callback waits; attempts already handled are ignored, so either
//! path (or both) works.

use std::sync::Arc;
use std::time::Duration;

use carillon_media::{CallMedia, MediaLeg, Prompt, RtpPort};
use carillon_routing::{Command, Event, OfferFailure};
use tokio::sync::{broadcast, mpsc};
use tracing::{info, warn};

use super::{agent_invite, sanitize_user, Call, Phase, BEEP_HZ, BEEP_LEVEL, BEEP_MS};
use crate::clock::now_ms;
use crate::registrar::SipTransport;
use crate::sip::{rsip, InviteDialog};

/// Customer INVITE outcomes that may wait for the task (one attempt is current at a time).
const CUSTOMER_OUTCOMES_MAX: usize = 4;

/// A callback's progress within its call task.
pub(super) struct CallbackState {
    /// Digits typed after the key, and when the entry closes by itself.
    entry: Option<(String, tokio::time::Instant)>,
    /// The number to call, once routing took the request.
    pub(super) number: Option<String>,
    /// The highest `CallbackOffered` attempt acted on.
    attempt: u32,
    /// The answered agent's media, bridged when the customer answers, and who they are.
    pub(super) agent_leg: Option<MediaLeg>,
    pub(super) agent: Option<String>,
    /// The customer INVITE in flight.
    pub(super) ringing: Option<InviteDialog>,
    /// Routing's event stream, while the callback waits for its turn.
    pub(super) watch: Option<broadcast::Receiver<Event>>,
    /// Keeps the channel the customer dialog will report into open (the caller's dialog
    /// reported into the one it replaced).
    states_tx: Option<rsipstack::dialog::dialog::DialogStateSender>,
    customers_tx: mpsc::Sender<CustomerOutcome>,
    pub(super) customers_rx: mpsc::Receiver<CustomerOutcome>,
}

impl CallbackState {
    pub(super) fn new() -> Self {
        let (customers_tx, customers_rx) = mpsc::channel(CUSTOMER_OUTCOMES_MAX);
        CallbackState {
            entry: None,
            number: None,
            attempt: 0,
            agent_leg: None,
            agent: None,
            ringing: None,
            watch: None,
            states_tx: None,
            customers_tx,
            customers_rx,
        }
    }
}

/// How one customer INVITE ended.
pub(super) struct CustomerOutcome {
    dialog: InviteDialog,
    result: Result<rsip::Response, String>,
    port: RtpPort,
}

impl CallbackState {
    /// When the open number entry closes by itself.
    pub(super) fn entry_deadline(&self) -> Option<tokio::time::Instant> {
        self.entry.as_ref().map(|(_, deadline)| *deadline)
    }
}

/// Resolves at `deadline` (never without one).
pub(super) async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The next event from routing's stream while the callback watches it.
pub(super) async fn recv_watch(
    watch: &mut Option<broadcast::Receiver<Event>>,
) -> Result<Event, broadcast::error::RecvError> {
    match watch.as_mut() {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

impl Call {
    /// A key from the waiting caller: the callback key opens the number entry; digits
    /// extend it; `#` closes it.
    pub(super) async fn on_digit(&mut self, digit: char) {
        let Some(config) = self.shared.config.callback.clone() else {
            return;
        };
        if !matches!(self.phase, Phase::Waiting) {
            return;
        }
        let timeout = Duration::from_secs_f64(config.digit_timeout_s);
        let deadline = tokio::time::Instant::from_std(crate::clock::instant()) + timeout;
        if digit == '#' && self.callback.entry.is_some() {
            self.request_callback().await;
            return;
        }
        match &mut self.callback.entry {
            None if digit == config.key_char() => {
                info!("caller pressed the callback key");
                self.callback.entry = Some((String::new(), deadline));
            }
            None => {}
            Some((digits, until)) => {
                if digit.is_ascii_digit() && digits.len() < config.number_digits_max {
                    digits.push(digit);
                }
                *until = deadline;
            }
        }
    }

    /// Closes the number entry and asks routing to keep the call's place as a callback.
    pub(super) async fn request_callback(&mut self) {
        let Some((digits, _)) = self.callback.entry.take() else {
            return;
        };
        if !matches!(self.phase, Phase::Waiting) {
            return;
        }
        let number = if digits.is_empty() {
            sanitize_user(&self.caller)
        } else {
            digits
        };
        if number == "anonymous" {
            info!("callback asked without a number to call; the caller keeps waiting");
            return;
        }
        // Watch before proposing: the turn may come at once.
        self.callback.watch = Some(self.shared.routing.watch());
        let cmd = Command::RequestCallback {
            call: self.id.clone(),
            number: number.clone(),
            at: now_ms(),
        };
        if let Err(e) = self.shared.routing.propose(cmd).await {
            warn!(error = %e, "routing refused the callback; the caller keeps waiting");
            self.callback.watch = None;
            return;
        }
        info!(%number, "callback requested; hanging up on the caller, keeping the place");
        metrics::counter!("carillon_callbacks_requested_total").increment(1);
        self.callback.number = Some(number);
        self.phase = Phase::CallbackWait;
        self.dtmf = None;
        let beep = Prompt::from_pcm(carillon_media::tone::sine(BEEP_HZ, BEEP_MS, BEEP_LEVEL));
        if self.play_once(Arc::new(beep)).await {
            self.caller_dialog.bye().await.ok();
        }
        self.remove_dialog(&self.caller_dialog.clone());
        // From now on the caller's state channel is the customer's: a fresh one, held open.
        let (tx, rx) = self.shared.sip.dialogs.new_dialog_state_channel();
        self.caller_states = rx;
        self.callback.states_tx = Some(tx);
        self.media.stop();
    }

    /// An event from routing's stream: only this call's callback offers matter.
    pub(super) async fn on_watch(&mut self, ev: Result<Event, broadcast::error::RecvError>) {
        match ev {
            Ok(ev @ Event::CallbackOffered { .. }) => {
                if matches!(&ev, Event::CallbackOffered { call, .. } if *call == self.id) {
                    self.on_routing_event(ev).await;
                }
            }
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(n)) => {
                warn!(
                    missed = n,
                    "callback fell behind routing's events; a ring timeout will retry its turn"
                );
            }
            Err(broadcast::error::RecvError::Closed) => self.callback.watch = None,
        }
    }

    /// The callback's turn: ring the reserved agent.
    pub(super) async fn callback_offered(
        &mut self,
        agent: String,
        agent_node: u64,
        number: String,
        attempt: u32,
    ) {
        if attempt <= self.callback.attempt {
            return;
        }
        self.callback.attempt = attempt;
        if !matches!(self.phase, Phase::CallbackWait) {
            warn!(%agent, "callback offered while not waiting for one; refusing");
            self.offer_failed(&agent, OfferFailure::Rejected).await;
            return;
        }
        info!(%agent, %number, attempt, "callback's turn: ringing the agent");
        self.callback.number = Some(number);
        self.ring(agent, agent_node).await;
    }

    /// The agent answered a callback: dial the customer through the gateway.
    pub(super) async fn dial_customer(&mut self) {
        let (Some(config), Some(number)) = (
            self.shared.config.callback.clone(),
            self.callback.number.clone(),
        ) else {
            return;
        };
        let port = match self.shared.ports.allocate() {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "no RTP port for the customer leg");
                self.customer_failed().await;
                return;
            }
        };
        let offer = carillon_media::sdp::offer(port.local_addr(), &[self.codec], now_ms());
        let uri = format!("sip:{}@{}", sanitize_user(&number), config.gateway);
        let options = match agent_invite(
            &self.shared,
            &uri,
            config.gateway,
            SipTransport::Udp,
            &self.dialled,
            offer,
        ) {
            Ok(o) => o,
            Err(e) => {
                warn!(error = %e, "cannot build the customer INVITE");
                self.customer_failed().await;
                return;
            }
        };
        let tx = match self.callback.states_tx.take() {
            Some(tx) => tx,
            None => {
                let (tx, rx) = self.shared.sip.dialogs.new_dialog_state_channel();
                self.caller_states = rx;
                tx
            }
        };
        let (dialog, join) = match self.shared.sip.dialogs.do_invite_async(options, tx) {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "customer INVITE failed to start");
                self.customer_failed().await;
                return;
            }
        };
        info!(%uri, "dialling the callback customer");
        self.callback.ringing = Some(dialog.clone());
        let outcomes = self.callback.customers_tx.clone();
        let ring = Duration::from_secs_f64(config.ring_timeout_s);
        tokio::spawn(async move {
            let result = match tokio::time::timeout(ring, join).await {
                Ok(Ok(Ok((_, Some(resp))))) => Ok(resp),
                Ok(Ok(Ok((_, None)))) => Err("no final response".to_string()),
                Ok(Ok(Err(e))) => Err(e.to_string()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => {
                    dialog.cancel().await.ok();
                    Err("no answer within callback.ring_timeout_s".to_string())
                }
            };
            let outcome = CustomerOutcome {
                dialog,
                result,
                port,
            };
            outcomes.send(outcome).await.ok();
        });
    }

    /// The customer INVITE ended: bridge on an answer, else give the agent back.
    pub(super) async fn on_customer(&mut self, outcome: CustomerOutcome) {
        self.callback.ringing = None;
        let answered = matches!(&outcome.result, Ok(r) if r.status_code.kind() == rsip::StatusCodeKind::Successful);
        if !matches!(self.phase, Phase::Connected { .. }) {
            // The agent hung up meanwhile; the call is over.
            if answered {
                self.remove_dialog(&outcome.dialog);
                outcome.dialog.bye().await.ok();
            }
            return;
        }
        let remote = match &outcome.result {
            Ok(r) if answered => super::answer_audio(r),
            Ok(r) => Err(format!("answered {}", r.status_code)),
            Err(e) => Err(e.clone()),
        };
        let (remote, codec) = match remote {
            Ok(x) => x,
            Err(why) => {
                info!(%why, "the callback customer did not answer");
                if answered {
                    self.remove_dialog(&outcome.dialog);
                    outcome.dialog.bye().await.ok();
                }
                self.customer_failed().await;
                return;
            }
        };
        let Some(agent_leg) = self.callback.agent_leg.take() else {
            warn!("customer answered but the agent's media is gone");
            self.close_as_lost("callback-media").await;
            return;
        };
        let media = CallMedia::start(MediaLeg::new(outcome.port, codec, Some(remote)));
        media.bridge(agent_leg);
        let mut old = std::mem::replace(&mut self.media, media);
        old.stop();
        self.caller_dialog = outcome.dialog;
        info!("callback customer answered; legs bridged");
        let agent = self.callback.agent.clone().unwrap_or_default();
        let customer = self.callback.number.clone().unwrap_or_default();
        crate::recording::start(
            &self.shared,
            &self.media,
            &self.id,
            &agent,
            &self.queue,
            &customer,
        );
        metrics::counter!("carillon_callbacks_connected_total").increment(1);
    }

    /// The customer was not reached: hang up the agent and let routing retry or give up.
    async fn customer_failed(&mut self) {
        if let Phase::Connected { dialog } = std::mem::replace(&mut self.phase, Phase::CallbackWait)
        {
            self.remove_dialog(&dialog);
            dialog.bye().await.ok();
        }
        self.agent_states = None;
        self.callback.agent_leg = None;
        self.callback.agent = None;
        // The next attempt's customer dialog reports into a fresh channel.
        let (tx, rx) = self.shared.sip.dialogs.new_dialog_state_channel();
        self.caller_states = rx;
        self.callback.states_tx = Some(tx);
        let cmd = Command::CallbackNoAnswer {
            call: self.id.clone(),
            at: now_ms(),
        };
        if let Err(e) = self.shared.routing.propose(cmd).await {
            warn!(error = %e, "routing refused the unanswered callback");
        }
    }
}
