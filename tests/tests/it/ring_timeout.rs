//! An agent who lets the phone ring past ring_timeout_s goes not-ready and the call goes
//! back to the queue; the next ready agent gets it.

use std::time::Duration;

use crate::harness::{agent_phone, agents_csv, cdr_str, cdr_u64, register, Node, NodeSpec, Sipp};

const RING_TIMEOUT_S: i64 = 2;

#[test]
fn ring_timeout() {
    let mut spec = NodeSpec::for_test();
    spec.set_queues("ring_timeout_s", RING_TIMEOUT_S);
    let node = Node::start(spec);

    let silent = Sipp::uas("agent_noanswer.xml", node.dir(), "silent-phone");
    let silent_port = silent.sip_port;
    let _silent = silent.spawn();
    let (_answering, answering_port) = agent_phone(&node, "answering-phone");

    let first = agents_csv(node.dir(), "agent-1001.csv", [1001], "pw");
    register(&node, &first, 1, silent_port, 3600, "register-1001").assert_success("1001");
    node.wait_until("1001 ready", Duration::from_secs(5), |n| {
        n.agents_in("ready") == 1
    });

    // The caller stays 10 s: long enough for the ring timeout and the second offer.
    let caller = Sipp::uac("caller.xml", node.sip, node.dir(), "caller")
        .media_port(node.sipp_media_port())
        .args([
            "-s",
            "100",
            "-d",
            "10000",
            "-timeout",
            "30s",
            "-timeout_error",
        ])
        .key("caller", "5551002")
        .calls(1, 1)
        .spawn();

    node.wait_until("1001 reserved (ringing)", Duration::from_secs(5), |n| {
        n.agents_in("reserved") == 1
    });
    node.wait_until(
        "1001 not ready after the ring timeout",
        Duration::from_secs(6),
        |n| n.agents_in("not_ready") == 1,
    );
    assert_eq!(node.agents_in("ready"), 0, "status: {}", node.status());
    node.wait_until("the call back in the queue", Duration::from_secs(3), |n| {
        n.status()["acd"]["queues"]["support"]["waiting"].as_u64() == Some(1)
    });

    let second = agents_csv(node.dir(), "agent-1002.csv", [1002], "pw");
    register(&node, &second, 1, answering_port, 3600, "register-1002").assert_success("1002");
    node.wait_until("1002 on the call", Duration::from_secs(5), |n| {
        n.agents_in("on_call") == 1
    });

    caller
        .wait(Duration::from_secs(30))
        .assert_success("caller answered by the second agent");
    let cdrs = node.wait_cdrs(1, Duration::from_secs(5));
    let cdr = &cdrs[0];
    assert_eq!(cdr_str(cdr, "disposition"), "answered", "CDR: {cdr}");
    assert_eq!(cdr_str(cdr, "agent"), "1002", "CDR: {cdr}");
    assert!(
        cdr_u64(cdr, "offers") >= 2,
        "offered to 1001, then 1002: {cdr}"
    );
    assert!(cdr_u64(cdr, "rtp_agent_to_caller") > 0, "CDR: {cdr}");
}
