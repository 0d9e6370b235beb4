//! The agent hangs up first: the node ends the caller's leg with BYE and the CDR says so.

use std::time::Duration;

use crate::harness::{agents_csv, cdr_str, cdr_u64, register, Node, NodeSpec, Sipp};

#[test]
fn agent_hangup() {
    let node = Node::start(NodeSpec::for_test());
    // This phone sends its own BYE when the node has not hung up within 1.5 s.
    let phone = Sipp::uas("agent_uas.xml", node.dir(), "phone")
        .rtp_echo(node.sipp_media_port())
        .args(["-recv_timeout", "1500"]);
    let phone_port = phone.sip_port;
    let _phone = phone.spawn();
    let csv = agents_csv(node.dir(), "agent-1001.csv", [1001], "pw");
    register(&node, &csv, 1, phone_port, 3600, "register").assert_success("1001");
    node.wait_until("1001 ready", Duration::from_secs(5), |n| {
        n.agents_in("ready") == 1
    });

    Sipp::uac("caller_until_bye.xml", node.sip, node.dir(), "caller")
        .media_port(node.sipp_media_port())
        .args(["-s", "100"])
        .key("caller", "5551010")
        .calls(1, 1)
        .run(Duration::from_secs(15))
        .assert_success("the node relays the agent's hang-up to the caller");

    let cdrs = node.wait_cdrs(1, Duration::from_secs(5));
    let cdr = &cdrs[0];
    assert_eq!(cdr_str(cdr, "disposition"), "answered", "CDR: {cdr}");
    assert_eq!(cdr_str(cdr, "hangup_by"), "agent", "CDR: {cdr}");
    assert_eq!(cdr_str(cdr, "agent"), "1001", "CDR: {cdr}");
    assert!(cdr_u64(cdr, "rtp_agent_to_caller") > 0, "CDR: {cdr}");
}
