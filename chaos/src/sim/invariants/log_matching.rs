//! Committed entries never change: every replica that applies index `i` applies the same
//! proposal there (log matching), before and after any leader change, crash or restart.

use std::collections::BTreeMap;

use carillon_consensus::types::{NodeId, Proposal};

use super::{Invariant, Observation};

#[derive(Default)]
pub struct LogMatching {
    first: BTreeMap<u64, (NodeId, Proposal)>,
}

impl Invariant for LogMatching {
    fn name(&self) -> &'static str {
        "committed_entries_never_change"
    }

    fn observe(&mut self, obs: &Observation<'_>) -> Result<(), String> {
        if let Observation::Applied {
            node,
            index,
            proposal,
        } = obs
        {
            match self.first.get(index) {
                None => {
                    self.first.insert(*index, (*node, (*proposal).clone()));
                }
                Some((by, p)) if p != *proposal => {
                    return Err(format!(
                        "index {index}: n{by} applied {p} but n{node} applied {proposal}"
                    ));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}
