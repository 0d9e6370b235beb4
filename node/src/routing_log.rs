//! The node's path to the routing state machine: propose a command, and the events it
//! produces reach the tasks that own the calls they name.
//!
//! Two backends sit behind one API. A standalone node (no `[cluster]` in its config)
//! applies commands in-process, in the order proposed, under one lock. A cluster member
//! proposes through Raft ([`crate::cluster`]): every member applies every committed entry,
//! and each hands the resulting events to the call tasks it runs, so only the node that
//! owns a call acts on them. Either way, a call task subscribes before it proposes its
//! `Enqueue`, so no event about it can be missed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use carillon_routing::{Acd, AcdStats, AgentState, Command, Event};
use tokio::sync::{broadcast, mpsc};

use crate::cluster::Cluster;

/// Events a call task can fall behind on before the log reports it; a call sees a handful
/// of events in its life, so this is far from any real backlog.
pub const CALL_EVENTS_MAX: usize = 64;

/// Events the API's event streams may fall behind on before they are told how many they
/// missed (a burst of a few hundred calls ending at once fits).
pub const WATCH_EVENTS_MAX: usize = 4096;

/// Why a proposal did not take effect.
#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    /// The state machine refused the command (the same way on every replica).
    #[error("refused by routing: {0}")]
    Refused(String),
    /// The command could not be committed (no leader, or the leader unreachable).
    #[error("routing log unavailable: {0}")]
    Unavailable(String),
}

#[derive(Clone)]
pub struct RoutingLog {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Backend,
    /// Per call, whoever on this node follows it: the owner's call task, or inter-node
    /// legs ringing agents here for another node's call (ring-all may run two at once).
    calls: Mutex<HashMap<String, Vec<mpsc::Sender<Event>>>>,
    /// Every applied event, for the API's event streams (bounded; slow readers lag).
    watchers: broadcast::Sender<Event>,
}

enum Backend {
    /// Boxed: the whole ACD lives inline in `Local`, while `Raft` is a handle.
    Local(Box<Mutex<Local>>),
    Raft(Cluster),
}

struct Local {
    acd: Acd,
    applied: u64,
}

impl RoutingLog {
    /// A standalone node's log: applied in-process.
    pub fn local() -> Self {
        Self::with_backend(Backend::Local(Box::new(Mutex::new(Local {
            acd: Acd::new(),
            applied: 0,
        }))))
    }

    /// A cluster member's log. The caller feeds committed events to [`Self::deliver`].
    pub fn raft(cluster: Cluster) -> Self {
        Self::with_backend(Backend::Raft(cluster))
    }

    fn with_backend(backend: Backend) -> Self {
        Self {
            inner: Arc::new(Inner {
                backend,
                calls: Mutex::new(HashMap::new()),
                watchers: broadcast::channel(WATCH_EVENTS_MAX).0,
            }),
        }
    }

    pub fn cluster(&self) -> Option<&Cluster> {
        match &self.inner.backend {
            Backend::Raft(c) => Some(c),
            Backend::Local(_) => None,
        }
    }

    /// Follows `call` (the owner registers before it enqueues): its events arrive on the
    /// returned receiver until [`RoutingLog::unsubscribe`].
    pub fn subscribe(&self, call: &str) -> mpsc::Receiver<Event> {
        let (tx, rx) = mpsc::channel(CALL_EVENTS_MAX);
        lock(&self.inner.calls)
            .entry(call.to_string())
            .or_default()
            .push(tx);
        rx
    }

    /// Stops following `call` through `events` (closed here); other followers stay.
    pub fn unsubscribe(&self, call: &str, events: &mut mpsc::Receiver<Event>) {
        events.close();
        let mut calls = lock(&self.inner.calls);
        if let Some(followers) = calls.get_mut(call) {
            followers.retain(|tx| !tx.is_closed());
            if followers.is_empty() {
                calls.remove(call);
            }
        }
    }

    /// Applies one command. On a standalone node the events it produced have been handed
    /// to their calls' owners when this returns; in a cluster they arrive as the entry is
    /// applied here, which is before `client_write` returns on the leader and soon after
    /// on a follower.
    pub async fn propose(&self, cmd: Command) -> Result<(), ProposeError> {
        let _timer = crate::metrics::ProposeTimer::start();
        match &self.inner.backend {
            Backend::Local(local) => {
                let events = {
                    let mut l = lock(local);
                    let events = l
                        .acd
                        .apply(cmd)
                        .map_err(|e| ProposeError::Refused(e.to_string()))?;
                    l.applied += 1;
                    events
                };
                self.deliver(events);
                Ok(())
            }
            Backend::Raft(cluster) => cluster.propose(cmd).await,
        }
    }

    /// Hands committed events to the call tasks this node runs.
    pub fn deliver(&self, events: Vec<Event>) {
        if self.inner.watchers.receiver_count() > 0 {
            for event in &events {
                // Err only means no receiver is left; nothing to do then.
                let _ = self.inner.watchers.send(event.clone());
            }
        }
        let calls = lock(&self.inner.calls);
        for event in events {
            let call = match &event {
                Event::AgentStateChanged { agent, state } => {
                    tracing::debug!(%agent, ?state, "agent state");
                    continue;
                }
                other => match event_call(other) {
                    Some(c) => c,
                    None => {
                        tracing::debug!(event = ?other, "routing event");
                        continue;
                    }
                },
            };
            match calls.get(call) {
                Some(followers) => {
                    for follower in followers {
                        if let Err(e) = follower.try_send(event.clone()) {
                            tracing::error!(call_id = %call, error = %e, "a call's task is not taking routing events");
                        }
                    }
                }
                None => {
                    tracing::trace!(call_id = %call, "routing event for a call this node does not own")
                }
            }
        }
    }

    /// Every event applied on this node from now on (the API's event streams).
    pub fn watch(&self) -> broadcast::Receiver<Event> {
        self.inner.watchers.subscribe()
    }

    /// Reads the local replica (current as of the last entry applied here).
    pub fn read<T>(&self, f: impl FnOnce(&Acd) -> T) -> T {
        match &self.inner.backend {
            Backend::Local(local) => f(&lock(local).acd),
            Backend::Raft(cluster) => cluster.read(f),
        }
    }

    pub fn stats(&self) -> AcdStats {
        self.read(|acd| acd.stats())
    }

    pub fn agent_state(&self, agent: &str) -> Option<AgentState> {
        self.read(|acd| acd.agent_state(agent).cloned())
    }

    /// Entries applied on this node.
    pub fn applied(&self) -> u64 {
        match &self.inner.backend {
            Backend::Local(local) => lock(local).applied,
            Backend::Raft(cluster) => cluster.last_applied(),
        }
    }
}

/// The call an event is about, if any.
fn event_call(event: &Event) -> Option<&str> {
    match event {
        Event::Offered { call, .. }
        | Event::OfferRevoked { call, .. }
        | Event::Connected { call, .. }
        | Event::CallExited { call, .. }
        | Event::CallMoved { call, .. }
        | Event::CallbackOffered { call, .. } => Some(call),
        Event::CallFinished(record) => Some(&record.call),
        _ => None,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these locks would be a bug in the state machine or a
    // map insert; the state left is still the last whole one, so carry on with it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}
