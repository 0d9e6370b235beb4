//! Every call ends with exactly one terminal record: no call id, SIP Call-ID or caller
//! number (one per placed call) appears in two records, across all nodes.

use std::collections::BTreeMap;

use super::{examples, Verdict};
use crate::history::History;

pub fn check(h: &History) -> Verdict {
    let mut bad = Vec::new();
    let mut count = |what: &str, keys: Vec<&str>| {
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        for k in keys.into_iter().filter(|k| !k.is_empty()) {
            *seen.entry(k).or_default() += 1;
        }
        for (k, n) in seen.into_iter().filter(|(_, n)| *n > 1) {
            bad.push(format!("{what} {k} has {n} records"));
        }
    };
    count(
        "call",
        h.records.iter().map(|r| r.call_id.as_str()).collect(),
    );
    count(
        "SIP Call-ID",
        h.records.iter().map(|r| r.sip_call_id.as_str()).collect(),
    );
    count(
        "caller",
        h.records.iter().map(|r| r.caller.as_str()).collect(),
    );
    Verdict::new(
        "one_terminal_record",
        bad.is_empty(),
        if bad.is_empty() {
            format!("{} records, one per call", h.records.len())
        } else {
            examples(&bad)
        },
    )
}
