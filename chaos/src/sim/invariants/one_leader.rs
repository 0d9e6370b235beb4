//! At most one leader per term (Raft's election safety).

use std::collections::BTreeMap;

use carillon_consensus::types::NodeId;

use super::{Invariant, Observation};

#[derive(Default)]
pub struct OneLeader {
    leaders: BTreeMap<u64, NodeId>,
}

impl Invariant for OneLeader {
    fn name(&self) -> &'static str {
        "one_leader_per_term"
    }

    fn observe(&mut self, obs: &Observation<'_>) -> Result<(), String> {
        if let Observation::Leader { node, term } = obs {
            let first = *self.leaders.entry(*term).or_insert(*node);
            if first != *node {
                return Err(format!("term {term} has two leaders: n{first} and n{node}"));
            }
        }
        Ok(())
    }
}
