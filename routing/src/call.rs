//! A call from the moment it enters a queue until its terminal record.

use serde::{Deserialize, Serialize};

use crate::canon::{Canon, Fnv};
use crate::command::Party;
use crate::event::{CallRecord, Disposition};
use crate::skill::Need;
use crate::{Millis, NodeId};

/// Where a live call stands. Finished calls leave the ACD (their record is the event).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum CallState {
    /// In its queue's line.
    Waiting,
    /// Ringing `agents` (more than one only for ring-all); revoked by Tick once
    /// `now >= ring_deadline`.
    Offered {
        agents: Vec<String>,
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
    /// The node holding the caller leg, and its site.
    pub(crate) owner: NodeId,
    pub(crate) site: String,
    pub(crate) priority: u32,
    /// Skills this call needs instead of its queue's (empty = the queue's).
    pub(crate) needs: Vec<Need>,
    /// When the call entered its current queue (escalation, overflow and max wait count
    /// from here; `arrived_at` is kept across moves).
    pub(crate) queued_at: Millis,
    /// The first queue, once the call has moved.
    pub(crate) first_queue: Option<String>,
    pub(crate) moves: u32,
    /// VIP or last-agent affinity: only this agent until `until`, then the call's
    /// priority becomes `then_priority` (VIP) if higher.
    pub(crate) preferred: Option<Preferred>,
    pub(crate) callback: Option<Callback>,
    /// The supervisor who took the call over from its agent.
    #[serde(default)]
    pub(crate) taken_over_by: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Preferred {
    pub(crate) agent: String,
    pub(crate) until: Millis,
    pub(crate) then_priority: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Callback {
    pub(crate) number: String,
    /// Attempts made (customer not reached).
    pub(crate) attempts: u32,
    /// No new attempt before this time.
    pub(crate) not_before: Millis,
}

impl Call {
    /// The line key of this call (see `Waiting::key`).
    pub(crate) fn key(&self) -> (u32, u64) {
        (u32::MAX - self.priority, self.seq)
    }

    /// The call waits only for its preferred agent at `now`.
    pub(crate) fn preferred_agent(&self, now: Millis) -> Option<&str> {
        self.preferred
            .as_ref()
            .filter(|p| now < p.until)
            .map(|p| p.agent.as_str())
    }
}

/// How a call leaves the ACD, for its record.
pub(crate) enum Ending {
    Answered {
        by: Party,
    },
    Abandoned {
        position: Option<u32>,
    },
    Lost {
        cause: String,
    },
    /// An exit action (voicemail or hang-up) or a callback given up.
    Exit {
        disposition: Disposition,
        cause: String,
    },
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
            Ending::Answered { by } => {
                let cause = self
                    .taken_over_by
                    .as_ref()
                    .map(|s| format!("taken-over-by:{s}"));
                (Disposition::Answered, by, cause, None)
            }
            Ending::Abandoned { position } => {
                (Disposition::Abandoned, Party::Caller, None, position)
            }
            Ending::Lost { cause } => (Disposition::Lost, Party::System, Some(cause), None),
            Ending::Exit { disposition, cause } => (disposition, Party::System, Some(cause), None),
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
            priority: self.priority,
            first_queue: self.first_queue.clone(),
            callback_number: self.callback.as_ref().map(|c| c.number.clone()),
            callback_attempts: self.callback.as_ref().map_or(0, |c| c.attempts),
        }
    }
}
impl Canon for CallState {
    fn canon(&self, h: &mut Fnv) {
        match self {
            CallState::Waiting => h.tag(0),
            CallState::Offered {
                agents,
                offered_at,
                ring_deadline,
            } => {
                h.tag(1);
                agents.canon(h);
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
            owner,
            site,
            priority,
            needs,
            queued_at,
            first_queue,
            moves,
            preferred,
            callback,
            taken_over_by,
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
        owner.canon(h);
        site.canon(h);
        priority.canon(h);
        needs.canon(h);
        queued_at.canon(h);
        first_queue.canon(h);
        moves.canon(h);
        preferred.canon(h);
        callback.canon(h);
        taken_over_by.canon(h);
    }
}

impl Canon for Preferred {
    fn canon(&self, h: &mut Fnv) {
        let Preferred {
            agent,
            until,
            then_priority,
        } = self;
        agent.canon(h);
        until.canon(h);
        then_priority.canon(h);
    }
}

impl Canon for Callback {
    fn canon(&self, h: &mut Fnv) {
        let Callback {
            number,
            attempts,
            not_before,
        } = self;
        number.canon(h);
        attempts.canon(h);
        not_before.canon(h);
    }
}
