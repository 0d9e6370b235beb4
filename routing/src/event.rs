//! The outputs of the state machine: what the node must do, and the terminal records.

use serde::{Deserialize, Serialize};

use crate::agent::AgentState;
use crate::command::Party;
use crate::queue::ExitAction;
use crate::{Millis, NodeId};

/// Why an offer was withdrawn by the state machine itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RevokeReason {
    /// The agent did not answer within the queue's ring timeout.
    RingTimeout,
    /// The caller hung up, or the call was lost, while the agent's phone rang.
    CallerGone,
    /// The agent logged out while their phone rang.
    AgentGone,
    /// The node holding the agent's registration went down while their phone rang.
    AgentNodeDown,
    /// Ring-all: another agent answered first.
    AnsweredElsewhere,
    /// A supervisor forced the agent's state.
    Supervisor,
    /// Another agent picked the call up.
    PickedUp,
}

/// How a call ended, for its terminal record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Disposition {
    Answered,
    Abandoned,
    Lost,
    /// Left through a voicemail exit action.
    Voicemail,
    /// Left through a hang-up exit action (closed, full, waited too long...).
    Refused,
    /// A callback whose customer never answered.
    CallbackUnanswered,
}

impl Disposition {
    /// A stable snake_case name for reports.
    pub fn name(&self) -> &'static str {
        match self {
            Disposition::Answered => "answered",
            Disposition::Abandoned => "abandoned",
            Disposition::Lost => "lost",
            Disposition::Voicemail => "voicemail",
            Disposition::Refused => "refused",
            Disposition::CallbackUnanswered => "callback_unanswered",
        }
    }
}

/// Why a call left its queue without an agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitReason {
    AfterHours,
    MaxWait,
    QueueFull,
    /// No logged-in agent could ever take it.
    NoAgents,
    /// Waited the queue's overflow threshold.
    OverflowWait,
    /// Moved too many times (an overflow loop), or to an unknown queue.
    BadOverflow,
}

impl ExitReason {
    /// A stable kebab-case name, used as the record's cause.
    pub fn name(self) -> &'static str {
        match self {
            ExitReason::AfterHours => "after-hours",
            ExitReason::MaxWait => "max-wait",
            ExitReason::QueueFull => "queue-full",
            ExitReason::NoAgents => "no-agents",
            ExitReason::OverflowWait => "overflow-wait",
            ExitReason::BadOverflow => "bad-overflow",
        }
    }
}

/// The terminal record of a call: exactly one per call that entered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallRecord {
    pub call: String,
    pub caller: String,
    pub dialled: String,
    pub queue: String,
    /// The agent who answered (or last offered, for abandoned and lost calls).
    pub agent: Option<String>,
    pub arrived_at: Millis,
    /// First offer.
    pub offered_at: Option<Millis>,
    pub answered_at: Option<Millis>,
    pub ended_at: Millis,
    /// Arrival to answer, or to abandon/loss when unanswered.
    pub wait_ms: u64,
    pub disposition: Disposition,
    /// Caller for abandon, System for lost.
    pub hangup_by: Party,
    /// The named cause, for lost calls and exits (an [`ExitReason`] name).
    pub cause: Option<String>,
    /// How many offers were made.
    pub offers: u32,
    /// For abandoned calls: 1-based queue position when they left (1 while being offered).
    pub position_at_end: Option<u32>,
    /// The priority the call ended with.
    pub priority: u32,
    /// The queue the call entered, when it was moved (overflow) to `queue`.
    pub first_queue: Option<String>,
    /// The number left for a callback, and the attempts made to reach it.
    pub callback_number: Option<String>,
    pub callback_attempts: u32,
}

/// One thing the node must act on, in the order returned by [`crate::Acd::apply`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// Node must ring `agent` for `call` (ring timeout is enforced by Tick, the value is
    /// informative).
    Offered {
        call: String,
        agent: String,
        ring_timeout_ms: u64,
        /// The node holding the caller leg: the one that acts on this offer.
        owner: NodeId,
        /// The node holding the agent's registration (ring through it when it differs).
        agent_node: NodeId,
    },
    /// Node must cancel the agent leg of this offer (if still ringing).
    OfferRevoked {
        call: String,
        agent: String,
        reason: RevokeReason,
    },
    /// The agent answered: the node bridges the legs.
    Connected { call: String, agent: String },
    /// An agent's state changed (for wallboards and the agent desktop).
    AgentStateChanged { agent: String, state: AgentState },
    /// Terminal record: exactly one per call. Node stores it as the CDR.
    CallFinished(CallRecord),
    /// A node's lease lapsed: its calls were closed as lost (their records follow) and its
    /// agents are unreachable until they register elsewhere.
    NodeDown { node: NodeId },
    /// A node registered, or came back after being down.
    NodeUp { node: NodeId },
    /// A callback's turn: `agent` is reserved; the owner dials the agent (answer =
    /// `Connected`), then `number` (no answer = `CallbackNoAnswer`).
    CallbackOffered {
        call: String,
        agent: String,
        number: String,
        owner: NodeId,
        agent_node: NodeId,
        /// 1 for the first attempt.
        attempt: u32,
    },
    /// The call leaves its queue without an agent: the owner performs `action` (voicemail
    /// or prompt and hang-up; a `Queue` action means it moved, see `CallMoved`).
    CallExited {
        call: String,
        owner: NodeId,
        action: ExitAction,
        reason: ExitReason,
    },
    /// The call moved to another queue (overflow), keeping its arrival time and priority.
    CallMoved {
        call: String,
        from: String,
        to: String,
        reason: ExitReason,
    },
}
