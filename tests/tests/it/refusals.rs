//! INVITEs the node refuses: unknown number 404, blacklisted caller 403, a source outside
//! every trunk's allow list 403.

use std::time::Duration;

use crate::harness::{Node, NodeSpec, Sipp};

fn invite(node: &Node, scenario: &str, number: &str, caller: &str) -> crate::harness::SippOutcome {
    Sipp::uac(
        scenario,
        node.sip,
        node.dir(),
        &format!("invite-{number}-from-{caller}"),
    )
    .media_port(node.sipp_media_port())
    .args(["-s", number])
    .key("caller", caller)
    .calls(1, 1)
    .run(Duration::from_secs(10))
}

#[test]
fn refusals_unknown_number_404() {
    let node = Node::start(NodeSpec::for_test());
    invite(&node, "invite_404.xml", "999", "5551003").assert_success("unknown number -> 404");
    assert_eq!(node.active_calls(), 0);
}

#[test]
fn refusals_blacklisted_caller_403() {
    let node = Node::start(NodeSpec::for_test());
    invite(&node, "invite_403.xml", "100", "666").assert_success("blacklisted caller -> 403");
    assert_eq!(node.active_calls(), 0);
    // The same number still serves other callers: the 403 was for 666 alone.
    invite(&node, "invite_404.xml", "999", "5551003").assert_success("node still routes");
}

#[test]
fn refusals_source_outside_trunk_allow_list_403() {
    let mut spec = NodeSpec::for_test();
    // SIPp sends from 127.0.0.1, which this trunk does not allow.
    spec.trunk_allow(&["127.0.0.9/32"]);
    let node = Node::start(spec);
    invite(&node, "invite_403.xml", "100", "5551004").assert_success("untrusted source -> 403");
    assert_eq!(node.active_calls(), 0);
}
