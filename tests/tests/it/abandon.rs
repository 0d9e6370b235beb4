//! A caller who hangs up while no agent is ready leaves an abandoned CDR with its wait.

use std::time::Duration;

use crate::harness::{cdr_str, cdr_u64, Node, NodeSpec, Sipp};

/// caller_abandon.xml waits 2000 ms after the node's 200; allow for timer granularity.
const WAIT_MS_MIN: u64 = 1_900;

#[test]
fn abandon() {
    let node = Node::start(NodeSpec::for_test());
    assert_eq!(node.agents_in("ready"), 0);
    Sipp::uac("caller_abandon.xml", node.sip, node.dir(), "abandoner")
        .media_port(node.sipp_media_port())
        .args(["-s", "100"])
        .key("caller", "5551001")
        .calls(1, 1)
        .run(Duration::from_secs(15))
        .assert_success("caller waits 2 s and hangs up");

    let cdrs = node.wait_cdrs(1, Duration::from_secs(5));
    assert_eq!(cdrs.len(), 1);
    let cdr = &cdrs[0];
    assert_eq!(cdr_str(cdr, "disposition"), "abandoned", "CDR: {cdr}");
    assert_eq!(cdr_str(cdr, "hangup_by"), "caller", "CDR: {cdr}");
    assert!(
        cdr["agent"].is_null(),
        "no agent for an abandoned call: {cdr}"
    );
    assert!(
        cdr_u64(cdr, "wait_ms") >= WAIT_MS_MIN,
        "wait_ms should be about 2000: {cdr}"
    );
    assert_eq!(cdr_str(cdr, "caller"), "5551001", "CDR: {cdr}");
    assert_eq!(node.active_calls(), 0);
}
