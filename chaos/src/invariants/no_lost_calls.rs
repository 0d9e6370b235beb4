//! No call is lost except one owned by a node a fault took out, and each of those has a
//! cause: every call placed has a record, or its node was faulted; every `lost` record
//! names its cause and belongs to a faulted node.

use super::{examples, Verdict};
use crate::history::History;

pub fn check(h: &History) -> Verdict {
    let by_caller = h.by_caller();
    let mut bad = Vec::new();
    let mut excused = 0u64;
    let mut placed = 0u64;
    for p in &h.placed {
        for caller in p.callers() {
            placed += 1;
            if by_caller.contains_key(caller.as_str()) {
                continue;
            }
            if h.faulted.contains(&p.node) {
                excused += 1;
            } else {
                bad.push(format!("call {caller} to n{} has no record", p.node));
            }
        }
    }
    for r in h.records.iter().filter(|r| r.disposition == "lost") {
        let owner = History::node_num(&r.node);
        if r.cause.is_empty() {
            bad.push(format!("call {} lost without a cause", r.call_id));
        } else if !owner.is_some_and(|n| h.faulted.contains(&n)) {
            bad.push(format!(
                "call {} ({}) lost at healthy {}: {}",
                r.call_id, r.caller, r.node, r.cause
            ));
        } else {
            excused += 1;
        }
    }
    Verdict::new(
        "no_lost_calls",
        bad.is_empty(),
        if bad.is_empty() {
            format!("{placed} calls placed; {excused} lost at faulted nodes, each accounted for")
        } else {
            format!("{} violations: {}", bad.len(), examples(&bad))
        },
    )
}
