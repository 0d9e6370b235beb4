//! A point-in-time summary of the ACD for wallboards and `/api/status` (serde, JSON-ready).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::canon::{Canon, Fnv};
use crate::Millis;

/// Calls in one queue right now.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStats {
    /// In line, not being offered.
    pub waiting: usize,
    /// Ringing an agent.
    pub offering: usize,
    pub connected: usize,
    /// The longest current wait among unanswered calls (waiting or being offered).
    pub longest_wait_ms: u64,
}

/// Counts since the ACD started (they are replicated state, like everything else).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub entered: u64,
    pub answered: u64,
    pub abandoned: u64,
    pub lost: u64,
    /// Left through an exit action (voicemail, refused) or an unanswered callback.
    pub exited: u64,
}

impl Canon for Totals {
    fn canon(&self, h: &mut Fnv) {
        let Totals {
            entered,
            answered,
            abandoned,
            lost,
            exited,
        } = self;
        entered.canon(h);
        answered.canon(h);
        abandoned.canon(h);
        lost.canon(h);
        exited.canon(h);
    }
}

/// The whole ACD at a glance.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcdStats {
    /// The state machine's time when the summary was taken.
    pub now: Millis,
    pub queues: BTreeMap<String, QueueStats>,
    /// Agents by state name (every name in [`crate::AgentState::NAMES`] is present).
    pub agents: BTreeMap<String, u64>,
    pub totals: Totals,
}
