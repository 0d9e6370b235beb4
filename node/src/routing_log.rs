//! The node's path to the routing state machine: propose a command, and the events it
//! produces reach the tasks that own the calls they name.
//!
//! Single-site today: commands apply in-process, in the order proposed, under one lock, so
//! the order of application is the log. The replicated log of the `consensus` crate
//! (issue 3) will sit behind the same `propose` and per-call subscription, and only the
//! node that owns a call will act on its events, exactly as here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use carillon_routing::{Acd, AcdStats, AgentState, Command, Event, RoutingError};
use tokio::sync::mpsc;

/// Events a call task can fall behind on before the log reports it; a call sees a handful
/// of events in its life, so this is far from any real backlog.
pub const CALL_EVENTS_MAX: usize = 64;

#[derive(Clone)]
pub struct RoutingLog {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    acd: Acd,
    calls: HashMap<String, mpsc::Sender<Event>>,
    applied: u64,
}

impl Default for RoutingLog {
    fn default() -> Self {
        Self::new()
    }
}

impl RoutingLog {
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                acd: Acd::new(),
                calls: HashMap::new(),
                applied: 0,
            })),
        }
    }

    /// Registers the owner of `call` before it is enqueued; its events arrive on the
    /// returned receiver.
    pub fn subscribe(&self, call: &str) -> mpsc::Receiver<Event> {
        let (tx, rx) = mpsc::channel(CALL_EVENTS_MAX);
        self.lock().calls.insert(call.to_string(), tx);
        rx
    }

    pub fn unsubscribe(&self, call: &str) {
        self.lock().calls.remove(call);
    }

    /// Applies one command. The events it produced have been handed to their calls' owners
    /// when this returns.
    pub async fn propose(&self, cmd: Command) -> Result<(), RoutingError> {
        let mut inner = self.lock();
        let events = inner.acd.apply(cmd)?;
        inner.applied += 1;
        for event in events {
            let call = match &event {
                Event::Offered { call, .. }
                | Event::OfferRevoked { call, .. }
                | Event::Connected { call, .. } => call.clone(),
                Event::CallFinished(record) => record.call.clone(),
                Event::AgentStateChanged { agent, state } => {
                    tracing::debug!(%agent, ?state, "agent state");
                    continue;
                }
            };
            match inner.calls.get(&call) {
                Some(owner) => {
                    if let Err(e) = owner.try_send(event) {
                        tracing::error!(call_id = %call, error = %e, "call task is not taking routing events");
                    }
                }
                None => {
                    tracing::debug!(call_id = %call, "routing event for a call this node does not own")
                }
            }
        }
        Ok(())
    }

    pub fn stats(&self) -> AcdStats {
        self.lock().acd.stats()
    }

    pub fn agent_state(&self, agent: &str) -> Option<AgentState> {
        self.lock().acd.agent_state(agent).cloned()
    }

    pub fn applied(&self) -> u64 {
        self.lock().applied
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock would be a bug in the state machine; the state
        // it leaves is still the last fully applied one, so carry on with it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}
