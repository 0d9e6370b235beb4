//! The live calls of this node, by Carillon call id, each with a bounded control channel
//! into its call task. The gRPC call-control and supervisor services reach a call only
//! through here: the call task stays the one owner of its legs and media, and acts on a
//! request between its other inputs, so a request never races the call's own signalling.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::control::CallAction;
use super::supervise::SuperviseAction;

/// Requests queued per call; a caller beyond this is told the call is busy.
const CONTROL_QUEUE_MAX: usize = 8;
/// How long a request waits for the call task's answer (a consultation waits longer:
/// [`CallAction::reply_wait_ms`]).
pub const CONTROL_REPLY_MS: u64 = 10_000;

/// What a call task answers: a short outcome (`"held"`, `"transferring"`) or why not.
pub type ControlResult = Result<String, ControlError>;

/// One request for a call task, with where its answer goes.
#[derive(Debug)]
pub enum Control {
    Call(CallAction, oneshot::Sender<ControlResult>),
    Supervise(SuperviseAction, oneshot::Sender<ControlResult>),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ControlError {
    #[error("no call {0} on this node")]
    NoSuchCall(String),
    #[error("call {0} has {1} requests waiting; try again")]
    Busy(String, usize),
    #[error("call {0} ended before it answered")]
    Ended(String),
    #[error("call {0} did not answer within {1} ms")]
    Timeout(String, u64),
    /// The request does not fit the call's state (not connected, already held, ...).
    #[error("{0}")]
    Refused(String),
    /// A number dialled for the request did not answer (busy, no answer, refused); the
    /// call is as it was before.
    #[error("{0}")]
    Unanswered(String),
    /// The request is well formed but names something that does not exist.
    #[error("{0}")]
    NotFound(String),
}

/// Live calls by id. Cloned cheaply; every clone sees the same calls.
#[derive(Clone, Default)]
pub struct CallRegistry {
    calls: Arc<Mutex<HashMap<String, mpsc::Sender<Control>>>>,
}

/// Keeps a call in the registry until dropped (the call task holds it for its life).
pub struct Registration {
    registry: CallRegistry,
    call: String,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.call);
    }
}

impl CallRegistry {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, mpsc::Sender<Control>>> {
        // Map operations do not panic; a poisoned lock still holds a whole map.
        self.calls.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Enters a call; its task reads requests from the receiver.
    pub fn register(&self, call: &str) -> (Registration, mpsc::Receiver<Control>) {
        let (tx, rx) = mpsc::channel(CONTROL_QUEUE_MAX);
        self.lock().insert(call.to_string(), tx);
        let reg = Registration {
            registry: self.clone(),
            call: call.to_string(),
        };
        (reg, rx)
    }

    pub fn contains(&self, call: &str) -> bool {
        self.lock().contains_key(call)
    }

    /// Ids of the live calls, sorted.
    pub fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.lock().keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Sends a call-control request and waits for the call's answer.
    pub async fn call(&self, call: &str, action: CallAction) -> ControlResult {
        let wait_ms = action.reply_wait_ms();
        self.request(call, wait_ms, |reply| Control::Call(action, reply))
            .await
    }

    /// Sends a supervisor request and waits for the call's answer.
    pub async fn supervise(&self, call: &str, action: SuperviseAction) -> ControlResult {
        self.request(call, CONTROL_REPLY_MS, |reply| {
            Control::Supervise(action, reply)
        })
        .await
    }

    async fn request(
        &self,
        call: &str,
        wait_ms: u64,
        make: impl FnOnce(oneshot::Sender<ControlResult>) -> Control,
    ) -> ControlResult {
        let tx = self
            .lock()
            .get(call)
            .cloned()
            .ok_or_else(|| ControlError::NoSuchCall(call.to_string()))?;
        let (reply, answer) = oneshot::channel();
        tx.try_send(make(reply)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                ControlError::Busy(call.to_string(), CONTROL_QUEUE_MAX)
            }
            mpsc::error::TrySendError::Closed(_) => ControlError::Ended(call.to_string()),
        })?;
        match tokio::time::timeout(Duration::from_millis(wait_ms), answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ControlError::Ended(call.to_string())),
            Err(_) => Err(ControlError::Timeout(call.to_string(), wait_ms)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hangup() -> CallAction {
        CallAction::Hangup {
            by: carillon_routing::Party::System,
        }
    }

    #[tokio::test]
    async fn a_request_reaches_the_call_and_its_answer_comes_back() {
        let reg = CallRegistry::default();
        let (guard, mut rx) = reg.register("c1");
        let task = tokio::spawn(async move {
            let Some(Control::Call(CallAction::Hangup { .. }, reply)) = rx.recv().await else {
                panic!("expected a hang-up request");
            };
            reply.send(Ok("hanging up".into())).ok();
        });
        assert_eq!(reg.call("c1", hangup()).await, Ok("hanging up".into()));
        task.await.expect("call task");
        drop(guard);
        assert!(!reg.contains("c1"));
        assert_eq!(
            reg.call("c1", hangup()).await,
            Err(ControlError::NoSuchCall("c1".into()))
        );
    }

    #[test]
    fn a_consultation_waits_out_its_ring_time_other_requests_do_not() {
        let consult = CallAction::Consult {
            number: "5550100".into(),
        };
        assert!(consult.reply_wait_ms() > super::super::control::CONSULT_RING_MS);
        assert_eq!(hangup().reply_wait_ms(), CONTROL_REPLY_MS);
        assert_eq!(CallAction::Conference.reply_wait_ms(), CONTROL_REPLY_MS);
    }

    #[tokio::test]
    async fn a_dial_that_failed_comes_back_as_unanswered() {
        let reg = CallRegistry::default();
        let (_guard, mut rx) = reg.register("c3");
        let task = tokio::spawn(async move {
            let Some(Control::Call(CallAction::Consult { number }, reply)) = rx.recv().await else {
                panic!("expected a consultation");
            };
            let why = format!("{number} did not take the consultation (486 Busy Here)");
            reply.send(Err(ControlError::Unanswered(why))).ok();
        });
        let consult = CallAction::Consult {
            number: "5550100".into(),
        };
        let err = reg.call("c3", consult).await.expect_err("busy");
        assert!(
            matches!(&err, ControlError::Unanswered(w) if w.contains("486")),
            "{err}"
        );
        task.await.expect("call task");
    }

    #[tokio::test]
    async fn a_call_that_ends_without_answering_is_reported_ended() {
        let reg = CallRegistry::default();
        let (_guard, rx) = reg.register("c2");
        drop(rx);
        assert_eq!(
            reg.call("c2", hangup()).await,
            Err(ControlError::Ended("c2".into()))
        );
    }
}
