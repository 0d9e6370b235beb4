//! The simulator's invariants, one per file: each watches what the run shows it (leaders,
//! applied entries, state hashes, then the committed history in log order) and names the
//! first thing that breaks it. The process-level checks live in `crate::invariants`.

mod agent_overlap;
mod arrival_order;
mod log_matching;
mod one_leader;
mod one_terminal;
mod routing_resumed;
mod state_hash;

use carillon_consensus::state_machine::AppliedEntry;
use carillon_consensus::types::{NodeId, Proposal};

/// Something the run showed, in the order it happened.
#[derive(Debug)]
pub enum Observation<'a> {
    /// `node` saw itself leader of `term`.
    Leader { node: NodeId, term: u64 },
    /// `node` applied a routing entry at `index`.
    Applied {
        node: NodeId,
        index: u64,
        proposal: &'a Proposal,
    },
    /// `node` had applied up to `index` and its ACD hashed to `hash`.
    Hash { node: NodeId, index: u64, hash: u64 },
    /// The committed history, entry by entry in log order, fed as each entry commits
    /// (the first replica to apply an index commits it for the run).
    Committed(&'a AppliedEntry),
}

/// What the run knows at its end.
#[derive(Debug, Default)]
pub struct End {
    /// Calls placed after healing: each must have been answered.
    pub post_heal_calls: Vec<String>,
}

/// One invariant.
pub trait Invariant {
    fn name(&self) -> &'static str;
    /// Checks one observation; `Err` says what broke.
    fn observe(&mut self, obs: &Observation<'_>) -> Result<(), String>;
    /// Checks what only the whole run can show.
    fn finish(&mut self, _end: &End) -> Result<(), String> {
        Ok(())
    }
}

/// A broken invariant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub invariant: &'static str,
    pub at_ms: u64,
    pub detail: String,
}

/// Every invariant of the simulator.
pub struct Checks {
    list: Vec<Box<dyn Invariant + Send>>,
    pub violations: Vec<Violation>,
}

/// At most this many violations kept per run (the first one is the one that matters).
const VIOLATIONS_MAX: usize = 20;

impl Default for Checks {
    fn default() -> Self {
        Checks {
            list: vec![
                Box::new(one_leader::OneLeader::default()),
                Box::new(log_matching::LogMatching::default()),
                Box::new(state_hash::StateHash::default()),
                Box::new(agent_overlap::AgentOverlap::default()),
                Box::new(one_terminal::OneTerminal::default()),
                Box::new(arrival_order::ArrivalOrder::default()),
                Box::new(routing_resumed::RoutingResumed::default()),
            ],
            violations: Vec::new(),
        }
    }
}

impl Checks {
    pub fn observe(&mut self, at_ms: u64, obs: &Observation<'_>) {
        for inv in &mut self.list {
            if let Err(detail) = inv.observe(obs) {
                if self.violations.len() < VIOLATIONS_MAX {
                    self.violations.push(Violation {
                        invariant: inv.name(),
                        at_ms,
                        detail,
                    });
                }
            }
        }
    }

    pub fn finish(&mut self, at_ms: u64, end: &End) {
        for inv in &mut self.list {
            if let Err(detail) = inv.finish(end) {
                if self.violations.len() < VIOLATIONS_MAX {
                    self.violations.push(Violation {
                        invariant: inv.name(),
                        at_ms,
                        detail,
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
