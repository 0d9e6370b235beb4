//! The inputs of the state machine: one [`Command`] per replicated log entry.

use serde::{Deserialize, Serialize};

use crate::queue::QueueConfig;
use crate::{Millis, NodeId};

/// Who ended a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Party {
    Caller,
    Agent,
    System,
}

/// Why an offer to an agent did not turn into a connected call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OfferFailure {
    NoAnswer,
    Rejected,
    Unreachable,
}

impl OfferFailure {
    /// The not-ready reason code the agent is given after this failure.
    pub fn reason_code(self) -> &'static str {
        match self {
            OfferFailure::NoAnswer => "no-answer",
            OfferFailure::Rejected => "rejected",
            OfferFailure::Unreachable => "unreachable",
        }
    }
}

/// One input to [`crate::Acd::apply`]. Every variant carries the proposer's timestamp
/// `at`; the machine clamps it so its own `now` never goes backwards.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
// ConfigureQueue is large, but commands are short-lived values, and boxing it would only
// make every caller write `Box::new`.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Create or replace a queue's config (live change: calls in it keep their place).
    ConfigureQueue { queue: QueueConfig, at: Millis },
    /// An agent's phone registered at `node` (at `site`): the agent is logged in and ready
    /// (idle since `at`). If already logged in, update skills, node and site only (no state
    /// change): a login at another node moves the registration. Refused from a node that
    /// is marked down (its lease must be renewed first).
    AgentLogin {
        agent: String,
        skills: Vec<String>,
        node: NodeId,
        site: String,
        at: Millis,
    },
    /// Phone unregistered / registration expired. If the agent is reserved (ringing) the
    /// offer is revoked and the call goes back to the head of its queue; if on a call the
    /// agent is marked to log out when the call ends.
    AgentLogout { agent: String, at: Millis },
    /// The agent is available again (from not-ready, or ending wrap-up early).
    AgentReady { agent: String, at: Millis },
    /// The agent stops taking calls for a reason code (from ready, not-ready or wrap-up).
    AgentNotReady {
        agent: String,
        reason: String,
        at: Millis,
    },
    /// A caller is waiting (answered, hearing hold music). `call` is unique; a duplicate
    /// Enqueue is an error. Unknown queue -> error. Refused when the owner node is down.
    Enqueue(Arrival),
    /// The caller hung up (or cancelled) before being connected: terminal record `abandoned`.
    /// If the call was being offered, the agent returns to ready (idle since `at`) and an
    /// `OfferRevoked{reason: CallerGone}` event tells the node to cancel the agent leg.
    Abandon { call: String, at: Millis },
    /// The agent answered the offer: call connected.
    Connected {
        call: String,
        agent: String,
        at: Millis,
    },
    /// A supervisor took the connected call over: the agent leaves it (wrap-up, or a
    /// pending log-out or state, as after any call) and the call goes on with
    /// `supervisor`, who is not an ACD agent. The record keeps the agent and gets the
    /// cause `taken-over-by:<supervisor>`. Only a connected call not yet taken over.
    TakenOver {
        call: String,
        supervisor: String,
        at: Millis,
    },
    /// The offer failed: the call goes back to the HEAD of its queue (keeps arrival order
    /// position), the agent goes not-ready with reason "no-answer" (NoAnswer) /
    /// "rejected" / "unreachable".
    OfferFailed {
        call: String,
        agent: String,
        failure: OfferFailure,
        at: Millis,
    },
    /// A connected call ended; `by` says who hung up. Agent enters wrap-up for the queue's
    /// wrapup_ms (0 => straight to ready, idle since `at`).
    Ended { call: String, by: Party, at: Millis },
    /// A call owned by this node is lost for a named cause (e.g. "media-failure"),
    /// whatever state it is in. Terminal record `lost` with that cause.
    Lost {
        call: String,
        cause: String,
        at: Millis,
    },
    /// Advances time: fires ring timeouts (offer older than ring_timeout_ms: revoke with
    /// reason RingTimeout, call back to head of queue, agent not-ready "no-answer") and
    /// wrap-up ends (agent -> ready, idle since the wrap-up end time).
    Tick { at: Millis },
    /// `node` (at `site`) is alive. The first lease registers the node (only registered
    /// nodes are watched); a lease from a node marked down brings it back up (its old
    /// calls are already gone).
    NodeLease {
        node: NodeId,
        site: String,
        at: Millis,
    },
    /// The leader's Raft layer heard from each of `nodes` within the last second (an
    /// acknowledged append or heartbeat): each one that is up has its lease renewed at
    /// `at`, as if it had proposed `NodeLease`. A member busy with calls keeps answering
    /// Raft while its own lease proposals may queue behind its calls; this keeps such a
    /// node from being declared down. A node already down is not brought back: that takes
    /// its own lease. At most `nodes_max` nodes.
    LeasesHeard { nodes: Vec<NodeId>, at: Millis },
    /// `node`'s process started at `started_at` (the first lease of each run). Whatever an
    /// earlier run of it held is gone with that process: its calls that arrived before
    /// `started_at` are closed as lost (`node-restarted: n<id>`), agents they held are
    /// freed, and calls it was ringing agents for go back to the head of their line. Then
    /// it counts as a lease. A node back within the lease would otherwise leave those calls
    /// connected forever, since no NodeDown is ever committed for it.
    NodeStarted {
        node: NodeId,
        site: String,
        started_at: Millis,
        at: Millis,
    },
    /// Cluster-wide liveness settings: a node whose last lease is older than `lease_ms` is
    /// marked down on the next Tick (default 3,000 ms until configured).
    ConfigureCluster { lease_ms: u64, at: Millis },
    /// Cluster-wide routing rules (missed offers, fairness, last-agent affinity).
    ConfigureRouting {
        settings: RoutingSettings,
        at: Millis,
    },
    /// A supervisor changes an agent's skills (`name` or `name:level`) without a new login.
    SetAgentSkills {
        agent: String,
        skills: Vec<String>,
        at: Millis,
    },
    /// A supervisor forces an agent's state. A ringing offer is revoked (call back to the
    /// head of its line); an agent on a call gets the state when the call ends.
    ForceAgentState {
        agent: String,
        state: ForcedState,
        at: Millis,
    },
    /// Adds, replaces (`Some`) or removes (`None`) a VIP caller number.
    SetVip {
        caller: String,
        vip: Option<Vip>,
        at: Millis,
    },
    /// A waiting caller left a number and hung up: the call keeps its place as a virtual
    /// call; at its turn an agent is reserved and [`crate::Event::CallbackOffered`] tells
    /// the owner to dial the agent, then the customer.
    RequestCallback {
        call: String,
        number: String,
        at: Millis,
    },
    /// The customer of a callback did not answer (the agent had answered, `Connected`):
    /// the agent is free again; the callback retries after the queue's gap, or gives up
    /// after `callback_attempts_max` attempts (record `CallbackUnanswered`).
    CallbackNoAnswer { call: String, at: Millis },
    /// API blind transfer of a connected call to `queue`: the agent is released as after
    /// `Ended` (wrap-up; talk time counted), and the call waits in `queue` keeping its
    /// arrival (time and place in line), so it is served ahead of callers who called
    /// after it; escalation, overflow and maximum wait count from the transfer. The
    /// queue's entry rules apply (closed, full). Refused unless the call is connected.
    TransferToQueue {
        call: String,
        queue: String,
        at: Millis,
    },
    /// API blind transfer of a connected call to `agent` (not the one on it), who is
    /// offered it at once when ready (skills are not checked: the transfer names them).
    /// Otherwise the call waits at its place in its queue for that agent only, up to
    /// `wait_ms` (then any agent of the queue may take it; the agent must then have the
    /// queue's skills, as for a VIP's agent). The releasing agent wraps up.
    TransferToAgent {
        call: String,
        agent: String,
        wait_ms: u64,
        at: Millis,
    },
    /// `agent` picks up a call that is ringing other agents or waiting in line: those
    /// offers are revoked (`RevokeReason::PickedUp`, the agents back to ready) and the
    /// call is offered to `agent` alone. The agent must be logged in and not tied to a
    /// call (ready, not ready or wrapping up).
    Pickup {
        call: String,
        agent: String,
        at: Millis,
    },
    /// Click-to-dial: `agent` places a call to `number` through the node `owner`. The
    /// call is connected to the agent at once (on a call, offered nothing else) and
    /// belongs to no queue; it ends with `Ended` (record answered) or, when either party
    /// never answered, `Lost` with the cause. The agent must be ready or not ready.
    StartOutbound {
        call: String,
        agent: String,
        number: String,
        owner: NodeId,
        site: String,
        at: Millis,
    },
    /// Live blacklist: `blocked` true refuses calls from `caller` on every node, false
    /// lets them in (also overriding a node's configured blacklist).
    SetBlacklist {
        caller: String,
        blocked: bool,
        at: Millis,
    },
}

/// A state a supervisor may force on an agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ForcedState {
    Ready,
    NotReady { reason: String },
    LoggedOut,
}

/// A VIP caller: waits up to `wait_ms` for their dedicated `agent`, then joins the line at
/// `priority` (if higher than the call's own).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vip {
    pub agent: String,
    pub wait_ms: u64,
    pub priority: u32,
}

/// Cluster-wide routing rules. `Default` keeps the single-offer behaviour: one missed
/// offer sends the agent not ready, no fairness weighting, no affinity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutingSettings {
    /// Consecutive missed offers (no answer) before an agent goes not ready `no-answer`;
    /// 0 means 1. Below it, a missed agent goes back to ready (at the back of idle order).
    pub missed_offers_max: u32,
    /// Across queues, serve the call with the longest wait times its queue's weight first
    /// (within a priority) instead of the earliest arrival.
    pub fairness: bool,
    /// Last-agent affinity: a caller served within this many days is offered first to that
    /// agent for `affinity_wait_ms`; 0 days = off.
    pub affinity_days: u32,
    pub affinity_wait_ms: u64,
    /// Callers remembered at most (oldest forgotten first).
    pub affinity_callers_max: usize,
}

impl Default for RoutingSettings {
    fn default() -> Self {
        RoutingSettings {
            missed_offers_max: 1,
            fairness: false,
            affinity_days: 0,
            affinity_wait_ms: 0,
            affinity_callers_max: 100_000,
        }
    }
}

/// A caller entering a queue, with everything routing needs to know about the call.
/// Build it with `..Default::default()` so new per-call fields do not break callers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Arrival {
    pub call: String,
    pub queue: String,
    pub caller: String,
    pub dialled: String,
    /// The node holding the caller leg; it acts on this call's events.
    pub owner: NodeId,
    /// The owner node's site: agents at this site are preferred.
    pub site: String,
    pub at: Millis,
    /// Higher is served first; arrival order within a priority. Default 0.
    pub priority: u32,
    /// Replaces the queue's required skills for this call (`name` or `name:min_level`);
    /// empty = the queue's. The queue's escalation steps still widen the levels.
    pub skills: Vec<String>,
}

impl Command {
    /// The proposer's timestamp carried by this command.
    pub fn at(&self) -> Millis {
        match self {
            Command::ConfigureQueue { at, .. }
            | Command::AgentLogin { at, .. }
            | Command::AgentLogout { at, .. }
            | Command::AgentReady { at, .. }
            | Command::AgentNotReady { at, .. }
            | Command::NodeLease { at, .. }
            | Command::LeasesHeard { at, .. }
            | Command::NodeStarted { at, .. }
            | Command::ConfigureCluster { at, .. }
            | Command::ConfigureRouting { at, .. }
            | Command::SetAgentSkills { at, .. }
            | Command::ForceAgentState { at, .. }
            | Command::SetVip { at, .. }
            | Command::RequestCallback { at, .. }
            | Command::CallbackNoAnswer { at, .. }
            | Command::TransferToQueue { at, .. }
            | Command::TransferToAgent { at, .. }
            | Command::Pickup { at, .. }
            | Command::StartOutbound { at, .. }
            | Command::SetBlacklist { at, .. }
            | Command::Abandon { at, .. }
            | Command::Connected { at, .. }
            | Command::TakenOver { at, .. }
            | Command::OfferFailed { at, .. }
            | Command::Ended { at, .. }
            | Command::Lost { at, .. }
            | Command::Tick { at } => *at,
            Command::Enqueue(arrival) => arrival.at,
        }
    }
}
