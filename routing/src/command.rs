//! The inputs of the state machine: one [`Command`] per replicated log entry.

use serde::{Deserialize, Serialize};

use crate::queue::QueueConfig;
use crate::Millis;

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
pub enum Command {
    /// Create or replace a queue's config (live change: calls in it keep their place).
    ConfigureQueue { queue: QueueConfig, at: Millis },
    /// An agent's phone registered: the agent is logged in and ready (idle since `at`).
    /// If already logged in, update skills only (no state change).
    AgentLogin {
        agent: String,
        skills: Vec<String>,
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
    /// Enqueue is an error. Unknown queue -> error.
    Enqueue {
        call: String,
        queue: String,
        caller: String,
        dialled: String,
        at: Millis,
    },
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
            | Command::Enqueue { at, .. }
            | Command::Abandon { at, .. }
            | Command::Connected { at, .. }
            | Command::OfferFailed { at, .. }
            | Command::Ended { at, .. }
            | Command::Lost { at, .. }
            | Command::Tick { at } => *at,
        }
    }
}
