//! After healing, routing resumes: every call placed in the check wave after the heal is
//! answered.

use super::{examples, Verdict};
use crate::history::History;

pub fn check(h: &History) -> Verdict {
    let by_caller = h.by_caller();
    let mut placed = 0;
    let mut bad = Vec::new();
    for p in h.placed.iter().filter(|p| p.after_heal) {
        for caller in p.callers() {
            placed += 1;
            match by_caller.get(caller.as_str()) {
                Some(rs) if rs.iter().any(|r| r.disposition == "answered") => {}
                Some(rs) => bad.push(format!("{caller} at n{}: {}", p.node, rs[0].disposition)),
                None => bad.push(format!("{caller} at n{}: no record", p.node)),
            }
        }
    }
    Verdict::new(
        "routing_resumed",
        placed > 0 && bad.is_empty(),
        if bad.is_empty() {
            format!("{placed} calls after healing, all answered")
        } else {
            format!("{} of {placed} not answered: {}", bad.len(), examples(&bad))
        },
    )
}
