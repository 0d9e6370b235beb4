//! After healing, replicas that applied the same log index hold the same state. The node
//! exposes no state hash, so the runner samples each node's ACD summary (`/api/status`
//! `acd`: the state machine's time, every queue, agents by state, totals) bracketed by two
//! reads of its `last_applied` that agree; indexes sampled on every node are compared.
//! openraft publishes `last_applied` a moment after the state machine applied the entry,
//! so a sample may show the state one entry ahead: a difference that a neighbouring
//! index's sample explains is counted as lag, not divergence. A real divergence persists
//! and is not explained that way. (An endpoint giving the state hash with the index it
//! was taken at, under one lock, would make this exact.)

use super::Verdict;
use crate::history::History;

pub fn check(h: &History) -> Verdict {
    let Some((first, rest)) = h
        .replica_samples
        .values()
        .collect::<Vec<_>>()
        .split_first()
        .map(|(f, r)| (*f, r.to_vec()))
    else {
        return Verdict::new("replicas_agree", false, "no replica was sampled".into());
    };
    let mut agree = 0u64;
    let mut lagged = 0u64;
    let mut differ = Vec::new();
    let samples: Vec<_> = h.replica_samples.values().collect();
    let near = |m: &std::collections::BTreeMap<u64, serde_json::Value>,
                index: u64,
                v: &serde_json::Value| {
        [index.wrapping_sub(1), index + 1]
            .iter()
            .any(|k| m.get(k) == Some(v))
    };
    for (index, state) in first {
        let others: Vec<_> = rest.iter().filter_map(|m| m.get(index)).collect();
        if others.len() != rest.len() {
            continue;
        }
        if others.iter().all(|s| *s == state) {
            agree += 1;
            continue;
        }
        // Every pair that differs must be explained by one side being one entry off.
        let explained = samples.iter().all(|a| {
            samples.iter().all(|b| {
                let (Some(va), Some(vb)) = (a.get(index), b.get(index)) else {
                    return true;
                };
                va == vb || near(b, *index, va) || near(a, *index, vb)
            })
        });
        if explained {
            lagged += 1;
        } else {
            differ.push((*index, differing_keys(state, others[0])));
        }
    }
    let nodes = h.replica_samples.len();
    let passed = agree > 0 && differ.is_empty() && nodes >= 2;
    Verdict::new(
        "replicas_agree",
        passed,
        if passed {
            format!(
                "{nodes} replicas identical at {agree} common applied indexes \
                 ({lagged} more one entry apart while sampling)"
            )
        } else if differ.is_empty() {
            format!("{nodes} replicas sampled but never at one common applied index")
        } else {
            format!(
                "replicas differ at applied indexes {:?} (agree at {agree})",
                &differ[..differ.len().min(3)]
            )
        },
    )
}

/// The dotted paths at which two JSON values differ (at most a few), for the report.
fn differing_keys(a: &serde_json::Value, b: &serde_json::Value) -> Vec<String> {
    fn walk(a: &serde_json::Value, b: &serde_json::Value, path: String, out: &mut Vec<String>) {
        if out.len() >= 5 || a == b {
            return;
        }
        match (a.as_object(), b.as_object()) {
            (Some(x), Some(y)) => {
                for (k, va) in x {
                    let vb = y.get(k).unwrap_or(&serde_json::Value::Null);
                    walk(va, vb, format!("{path}.{k}"), out);
                }
            }
            _ => out.push(format!("{path}: {a} vs {b}")),
        }
    }
    let mut out = Vec::new();
    walk(a, b, String::new(), &mut out);
    out
}
