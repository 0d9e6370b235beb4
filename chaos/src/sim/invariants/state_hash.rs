//! Replicas that applied the same log index hold the same state: equal ACD state hashes.

use std::collections::BTreeMap;

use carillon_consensus::types::NodeId;

use super::{Invariant, Observation};

#[derive(Default)]
pub struct StateHash {
    first: BTreeMap<u64, (NodeId, u64)>,
}

impl Invariant for StateHash {
    fn name(&self) -> &'static str {
        "replicas_agree"
    }

    fn observe(&mut self, obs: &Observation<'_>) -> Result<(), String> {
        if let Observation::Hash { node, index, hash } = obs {
            let (by, h) = *self.first.entry(*index).or_insert((*node, *hash));
            if h != *hash {
                return Err(format!(
                    "after index {index}: n{by} hashes {h:016x} but n{node} hashes {hash:016x}"
                ));
            }
        }
        Ok(())
    }
}
