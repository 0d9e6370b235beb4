//! Within a queue, callers are offered in arrival order, where that is checkable: two
//! calls whose arrivals are more than [`MARGIN_MS`] apart (enqueues from different nodes
//! reach the log in either order within that), both offered, neither owned by a faulted
//! node, neither waiting (arrival to first offer) across the fault window widened by a
//! lease (a proposal may wait out a failover there).

use super::{examples, Verdict};
use crate::cluster::LEASE_MS;
use crate::history::{History, Record};

/// Arrivals closer than this may commit in either order.
pub const MARGIN_MS: u64 = 1_000;

pub fn check(h: &History) -> Verdict {
    let in_window = |r: &Record| {
        let offered = r.offered_at_ms.unwrap_or(r.ended_at_ms);
        h.fault_window_ms.is_some_and(|(from, to)| {
            offered + MARGIN_MS >= from && r.arrived_at_ms <= to + LEASE_MS as u64 + MARGIN_MS
        })
    };
    let faulted = |r: &Record| History::node_num(&r.node).is_some_and(|n| h.faulted.contains(&n));
    let calls: Vec<&Record> = h
        .records
        .iter()
        .filter(|r| r.offered_at_ms.is_some() && !in_window(r) && !faulted(r))
        .collect();
    let mut pairs = 0u64;
    let mut bad = Vec::new();
    for a in &calls {
        for b in &calls {
            if a.queue != b.queue || a.arrived_at_ms + MARGIN_MS >= b.arrived_at_ms {
                continue;
            }
            pairs += 1;
            if let (Some(oa), Some(ob)) = (a.offered_at_ms, b.offered_at_ms) {
                if ob < oa {
                    bad.push(format!(
                        "{} arrived {} ms before {} but was offered {} ms after it",
                        a.caller,
                        b.arrived_at_ms - a.arrived_at_ms,
                        b.caller,
                        oa - ob
                    ));
                }
            }
        }
    }
    Verdict::new(
        "arrival_order",
        bad.is_empty(),
        if bad.is_empty() {
            format!(
                "{pairs} pairs checked ({} calls outside the fault window)",
                calls.len()
            )
        } else {
            format!(
                "{} of {pairs} pairs out of order: {}",
                bad.len(),
                examples(&bad)
            )
        },
    )
}
