//! SIP over TCP: an agent registers (digest challenge then 200) over a TCP connection to
//! the node's SIP address, the same address UDP uses.

use std::time::Duration;

use crate::harness::{agents_csv, free_port, Node, NodeSpec, Sipp};

#[test]
fn register_tcp() {
    let node = Node::start(NodeSpec::for_test());
    let good = agents_csv(node.dir(), "agent-1003.csv", [1003], "pw");
    Sipp::uac("register.xml", node.sip, node.dir(), "register-tcp")
        .arg("-t")
        .arg("t1")
        .arg("-inf")
        .arg(good.display().to_string())
        .key("contact_port", free_port())
        .key("expires", 3600)
        .calls(1, 1)
        .run(Duration::from_secs(10))
        .assert_success("401 then 200 over TCP");
    node.wait_until("agent 1003 ready", Duration::from_secs(5), |n| {
        n.agents_in("ready") == 1
    });
}
