//! The outputs of the state machine: what the node must do, and the terminal records.

use serde::{Deserialize, Serialize};

use crate::agent::AgentState;
use crate::command::Party;
use crate::Millis;

/// Why an offer was withdrawn by the state machine itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RevokeReason {
    /// The agent did not answer within the queue's ring timeout.
    RingTimeout,
    /// The caller hung up, or the call was lost, while the agent's phone rang.
    CallerGone,
    /// The agent logged out while their phone rang.
    AgentGone,
}

/// How a call ended, for its terminal record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Disposition {
    Answered,
    Abandoned,
    Lost,
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
    /// The named cause, for lost calls.
    pub cause: Option<String>,
    /// How many offers were made.
    pub offers: u32,
    /// For abandoned calls: 1-based queue position when they left (1 while being offered).
    pub position_at_end: Option<u32>,
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
}
