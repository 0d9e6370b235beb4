//! Each check against small hand-made histories: one that holds, one that breaks it.

use std::collections::BTreeMap;

use serde_json::json;

use super::*;
use crate::history::{Placed, Record};

fn rec(caller: &str, node: &str, agent: &str, arrived: u64, offered: u64, ended: u64) -> Record {
    Record {
        call_id: format!("c-{caller}"),
        sip_call_id: format!("s-{caller}"),
        caller: caller.into(),
        queue: "support".into(),
        agent: agent.into(),
        arrived_at_ms: arrived,
        offered_at_ms: Some(offered),
        answered_at_ms: Some(offered + 10),
        ended_at_ms: ended,
        disposition: "answered".into(),
        cause: String::new(),
        node: node.into(),
        read_from: 1,
    }
}

fn placed(node: u64, prefix: &str, count: u64, after_heal: bool) -> Placed {
    Placed {
        node,
        prefix: prefix.into(),
        count,
        sipp_ok: count,
        sipp_failed: 0,
        after_heal,
    }
}

fn good() -> History {
    let mut h = History::default();
    h.placed.push(placed(1, "911", 2, false));
    h.placed.push(placed(2, "929", 1, true));
    h.open_calls_after = Some((0, String::new()));
    h.records = vec![
        rec("9111", "n1", "1001", 1_000, 1_100, 3_000),
        rec("9112", "n1", "1001", 5_000, 5_100, 7_000),
        rec("9291", "n2", "1002", 9_000, 9_100, 9_900),
    ];
    h
}

fn verdict(h: &History, name: &str) -> Verdict {
    check_all(h)
        .into_iter()
        .find(|v| v.name == name)
        .expect("every check runs")
}

#[test]
fn a_clean_history_passes_the_call_checks() {
    let h = good();
    for name in [
        "no_lost_calls",
        "one_terminal_record",
        "no_agent_on_two_calls",
        "arrival_order",
        "routing_resumed",
        "calls_closed",
    ] {
        let v = verdict(&h, name);
        assert!(v.passed, "{name}: {}", v.detail);
    }
}

#[test]
fn missing_record_is_lost_unless_its_node_was_faulted() {
    let mut h = good();
    h.records.remove(1);
    assert!(!verdict(&h, "no_lost_calls").passed);
    h.faulted.insert(1);
    assert!(verdict(&h, "no_lost_calls").passed);
    let mut lost = rec("9113", "n2", "", 100, 200, 300);
    lost.disposition = "lost".into();
    h.records.push(lost);
    // Lost at a healthy node, and without a cause.
    assert!(!verdict(&h, "no_lost_calls").passed);
}

#[test]
fn two_records_for_one_call_are_caught() {
    let mut h = good();
    let mut dup = h.records[0].clone();
    dup.read_from = 2;
    h.records.push(dup);
    assert!(!verdict(&h, "one_terminal_record").passed);
}

#[test]
fn overlapping_agent_calls_are_caught() {
    let mut h = good();
    h.records[1].answered_at_ms = Some(2_000);
    assert!(!verdict(&h, "no_agent_on_two_calls").passed);
}

#[test]
fn out_of_order_offers_are_caught_outside_the_fault_window() {
    let mut h = good();
    h.records[1].offered_at_ms = Some(1_050);
    assert!(!verdict(&h, "arrival_order").passed);
    h.fault_window_ms = Some((0, 100));
    assert!(verdict(&h, "arrival_order").passed);
}

#[test]
fn replicas_compare_at_common_indexes() {
    let mut h = good();
    let a = json!({"totals": {"answered": 3}});
    let b = json!({"totals": {"answered": 4}});
    h.replica_samples
        .insert(1, BTreeMap::from([(10, a.clone()), (11, b.clone())]));
    h.replica_samples
        .insert(2, BTreeMap::from([(10, a.clone())]));
    assert!(verdict(&h, "replicas_agree").passed);
    h.replica_samples.insert(3, BTreeMap::from([(10, b)]));
    assert!(!verdict(&h, "replicas_agree").passed);
    h.replica_samples.clear();
    assert!(!verdict(&h, "replicas_agree").passed);
}

#[test]
fn unanswered_calls_after_healing_fail_resumption() {
    let mut h = good();
    h.records[2].disposition = "abandoned".into();
    assert!(!verdict(&h, "routing_resumed").passed);
}

#[test]
fn a_sample_one_entry_ahead_is_lag_not_divergence() {
    let mut h = good();
    let a = json!({"now": 1});
    let b = json!({"now": 2});
    h.replica_samples
        .insert(1, BTreeMap::from([(10, a.clone()), (11, b.clone())]));
    // Node 2's sample labelled 10 already shows entry 11's state.
    h.replica_samples
        .insert(2, BTreeMap::from([(10, b.clone()), (11, b.clone())]));
    let v = verdict(&h, "replicas_agree");
    assert!(v.passed, "{}", v.detail);
    assert!(v.detail.contains("1 more one entry apart"), "{}", v.detail);
}

#[test]
fn calls_left_in_the_routing_state_fail() {
    let mut h = good();
    h.open_calls_after = Some((9, "{\"support\":{\"connected\":9}}".into()));
    assert!(!verdict(&h, "calls_closed").passed);
    h.open_calls_after = None;
    assert!(!verdict(&h, "calls_closed").passed);
}
