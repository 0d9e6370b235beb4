//! At-most-once application of proposals. A proposer that loses the answer to a proposal
//! (its forward timed out, the leader died mid-call) cannot know whether it committed, so
//! it proposes again under the same [`ProposalId`]; every replica remembers the recent ids
//! of each proposing node and answers a repeat with the first outcome instead of applying
//! the command twice (a second `Enqueue` of one call would otherwise be refused and the
//! call dropped).
//!
//! The window is a count per node, not a time, so every replica forgets the same ids at
//! the same entry and the state stays deterministic. It travels in snapshots.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::types::{NodeId, ProposalId};

/// Ids remembered per proposing node. A proposer retries within seconds; at a few hundred
/// proposals a second per node this covers well over ten seconds of retries.
pub const RECENT_PER_NODE_MAX: usize = 8192;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dedup {
    nodes: BTreeMap<NodeId, Recent>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Recent {
    /// Oldest first, for eviction.
    order: VecDeque<(u64, u64)>,
    /// (run, seq) -> the refusal the first application gave (None: it was accepted).
    outcome: BTreeMap<(u64, u64), Option<String>>,
}

impl Dedup {
    /// The first outcome of `id`, if it was applied within the window.
    pub fn seen(&self, id: &ProposalId) -> Option<&Option<String>> {
        self.nodes.get(&id.node)?.outcome.get(&(id.run, id.seq))
    }

    /// Remembers `id`'s outcome, forgetting that node's oldest id beyond the window.
    pub fn record(&mut self, id: ProposalId, refused: Option<String>) {
        let recent = self.nodes.entry(id.node).or_default();
        let key = (id.run, id.seq);
        if recent.outcome.insert(key, refused).is_none() {
            recent.order.push_back(key);
        }
        while recent.order.len() > RECENT_PER_NODE_MAX {
            if let Some(old) = recent.order.pop_front() {
                recent.outcome.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(seq: u64) -> ProposalId {
        ProposalId {
            node: 2,
            run: 7,
            seq,
        }
    }

    #[test]
    fn a_repeat_gets_the_first_outcome() {
        let mut d = Dedup::default();
        assert!(d.seen(&id(1)).is_none());
        d.record(id(1), None);
        d.record(id(2), Some("unknown queue".into()));
        assert_eq!(d.seen(&id(1)), Some(&None));
        assert_eq!(d.seen(&id(2)), Some(&Some("unknown queue".into())));
        // Another run of the same node is another proposal.
        let other_run = ProposalId { run: 8, ..id(1) };
        assert!(d.seen(&other_run).is_none());
    }

    #[test]
    fn the_window_is_a_count_per_node() {
        let mut d = Dedup::default();
        for seq in 0..(RECENT_PER_NODE_MAX as u64 + 10) {
            d.record(id(seq), None);
        }
        assert!(d.seen(&id(9)).is_none(), "the oldest are forgotten");
        assert!(d.seen(&id(10)).is_some());
        let other = ProposalId { node: 3, ..id(0) };
        d.record(other, None);
        assert!(d.seen(&other).is_some(), "nodes have their own windows");
    }
}
