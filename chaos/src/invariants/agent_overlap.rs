//! No agent is on two calls at once: the answered..ended intervals of one agent's calls,
//! from every node's records, never overlap.

use std::collections::BTreeMap;

use super::{examples, Verdict};
use crate::history::History;

pub fn check(h: &History) -> Verdict {
    let mut by_agent: BTreeMap<&str, Vec<(u64, u64, &str)>> = BTreeMap::new();
    for r in &h.records {
        if let (Some(start), false) = (r.answered_at_ms, r.agent.is_empty()) {
            by_agent.entry(r.agent.as_str()).or_default().push((
                start,
                r.ended_at_ms,
                r.call_id.as_str(),
            ));
        }
    }
    let mut bad = Vec::new();
    let mut calls = 0;
    for (agent, spans) in &mut by_agent {
        spans.sort();
        calls += spans.len();
        for w in spans.windows(2) {
            if w[1].0 < w[0].1 {
                bad.push(format!(
                    "agent {agent}: {} ({}..{}) and {} ({}..{})",
                    w[0].2, w[0].0, w[0].1, w[1].2, w[1].0, w[1].1
                ));
            }
        }
    }
    Verdict::new(
        "no_agent_on_two_calls",
        bad.is_empty(),
        if bad.is_empty() {
            format!("{calls} answered calls over {} agents", by_agent.len())
        } else {
            examples(&bad)
        },
    )
}
