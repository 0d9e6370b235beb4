//! The checks run on a scenario's [`History`] afterwards, one per file, each returning
//! its verdict with the figures behind it.

mod agent_overlap;
mod arrival_order;
mod calls_closed;
mod no_lost_calls;
mod one_terminal;
mod replicas_agree;
mod routing_resumed;

use serde::Serialize;

use crate::history::History;

/// One invariant's result.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    pub name: &'static str,
    pub passed: bool,
    /// The figures, or what broke.
    pub detail: String,
}

impl Verdict {
    fn new(name: &'static str, passed: bool, detail: String) -> Verdict {
        Verdict {
            name,
            passed,
            detail,
        }
    }
}

/// Every check, in report order.
pub fn check_all(h: &History) -> Vec<Verdict> {
    vec![
        no_lost_calls::check(h),
        one_terminal::check(h),
        agent_overlap::check(h),
        arrival_order::check(h),
        replicas_agree::check(h),
        routing_resumed::check(h),
        calls_closed::check(h),
    ]
}

/// At most this many examples in a verdict's detail.
const EXAMPLES_MAX: usize = 5;

fn examples(items: &[String]) -> String {
    let mut s = items
        .iter()
        .take(EXAMPLES_MAX)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if items.len() > EXAMPLES_MAX {
        s.push_str(&format!("; and {} more", items.len() - EXAMPLES_MAX));
    }
    s
}

#[cfg(test)]
mod tests;
