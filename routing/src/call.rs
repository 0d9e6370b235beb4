//! A call from the moment it enters a queue until its terminal record.

use serde::{Deserialize, Serialize};

use crate::canon::{Canon, Fnv};
use crate::command::Party;
use crate::event::{CallRecord, Disposition};
use crate::Millis;

/// Where a live call stands. Finished calls leave the ACD (their record is the event).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum CallState {
    /// In its queue's line.
    Waiting,
    /// Ringing `agent`; revoked by Tick once `now >= ring_deadline`.
    Offered {
        agent: String,
        offered_at: Millis,
        ring_deadline: Millis,
    },
    Connected {
        agent: String,
        answered_at: Millis,
    },
}

impl CallState {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            CallState::Waiting => "waiting",
            CallState::Offered { .. } => "being offered",
            CallState::Connected { .. } => "connected",
        }
    }
}

/// A live call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Call {
    pub(crate) queue: String,
    pub(crate) caller: String,
    pub(crate) dialled: String,
    pub(crate) arrived_at: Millis,
    /// Arrival sequence number: the call's place in line for its whole life.
    pub(crate) seq: u64,
    pub(crate) state: CallState,
    pub(crate) first_offered_at: Option<Millis>,
    pub(crate) offers: u32,
    pub(crate) last_agent: Option<String>,
}

/// How a call leaves the ACD, for its record.
pub(crate) enum Ending {
    Answered { by: Party },
    Abandoned { position: Option<u32> },
    Lost { cause: String },
}

impl Call {
    /// The terminal record of this call, ending at `now`.
    pub(crate) fn record(&self, id: &str, ending: Ending, now: Millis) -> CallRecord {
        let answered_at = match &self.state {
            CallState::Connected { answered_at, .. } => Some(*answered_at),
            _ => None,
        };
        let wait_end = answered_at.unwrap_or(now);
        let (disposition, hangup_by, cause, position_at_end) = match ending {
            Ending::Answered { by } => (Disposition::Answered, by, None, None),
            Ending::Abandoned { position } => {
                (Disposition::Abandoned, Party::Caller, None, position)
            }
            Ending::Lost { cause } => (Disposition::Lost, Party::System, Some(cause), None),
        };
        CallRecord {
            call: id.to_owned(),
            caller: self.caller.clone(),
            dialled: self.dialled.clone(),
            queue: self.queue.clone(),
            agent: self.last_agent.clone(),
            arrived_at: self.arrived_at,
            offered_at: self.first_offered_at,
            answered_at,
            ended_at: now,
            wait_ms: wait_end.saturating_sub(self.arrived_at),
            disposition,
            hangup_by,
            cause,
            offers: self.offers,
            position_at_end,
        }
    }
}
impl Canon for CallState {
    fn canon(&self, h: &mut Fnv) {
        match self {
            CallState::Waiting => h.tag(0),
            CallState::Offered {
                agent,
                offered_at,
                ring_deadline,
            } => {
                h.tag(1);
                agent.canon(h);
                offered_at.canon(h);
                ring_deadline.canon(h);
            }
            CallState::Connected { agent, answered_at } => {
                h.tag(2);
                agent.canon(h);
                answered_at.canon(h);
            }
        }
    }
}

impl Canon for Call {
    fn canon(&self, h: &mut Fnv) {
        let Call {
            queue,
            caller,
            dialled,
            arrived_at,
            seq,
            state,
            first_offered_at,
            offers,
            last_agent,
        } = self;
        queue.canon(h);
        caller.canon(h);
        dialled.canon(h);
        arrived_at.canon(h);
        seq.canon(h);
        state.canon(h);
        first_offered_at.canon(h);
        offers.canon(h);
        last_agent.canon(h);
    }
}
