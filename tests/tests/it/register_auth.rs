//! Agent registration: digest challenge then 200, wrong password 403, `Expires: 0` logs the
//! agent out, and it can register again.

use std::time::Duration;

use crate::harness::{agents_csv, free_port, register, Node, NodeSpec, Sipp};

const STATE_TIMEOUT: Duration = Duration::from_secs(5);

#[test]
fn register_auth() {
    let node = Node::start(NodeSpec::for_test());
    // No call is placed, so the Contact need not answer: any port will do.
    let contact_port = free_port();
    let good = agents_csv(node.dir(), "agent-1001.csv", [1001], "pw");
    assert_eq!(
        node.agents_in("ready"),
        0,
        "no agent is ready before registering"
    );

    register(&node, &good, 1, contact_port, 3600, "register").assert_success("401 then 200");
    node.wait_until("agent 1001 ready", STATE_TIMEOUT, |n| {
        n.agents_in("ready") == 1
    });

    let bad = agents_csv(node.dir(), "agent-1002-bad.csv", [1002], "wrong");
    Sipp::uac(
        "register_forbidden.xml",
        node.sip,
        node.dir(),
        "register-bad",
    )
    .arg("-inf")
    .arg(bad.display().to_string())
    .key("contact_port", contact_port)
    .key("expires", 3600)
    .calls(1, 1)
    .run(Duration::from_secs(10))
    .assert_success("wrong password: 401 then 403");
    assert_eq!(
        node.agents_in("ready"),
        1,
        "a refused agent must not become ready"
    );

    register(&node, &good, 1, contact_port, 0, "unregister").assert_success("Expires: 0 -> 200");
    node.wait_until("agent 1001 logged out", STATE_TIMEOUT, |n| {
        n.agents_in("ready") == 0
    });
    let logged_out = node.agents_in("logged_out");
    assert!(
        logged_out >= 1,
        "1001 should count as logged_out, status: {}",
        node.status()
    );

    register(&node, &good, 1, contact_port, 3600, "reregister").assert_success("register again");
    node.wait_until("agent 1001 ready again", STATE_TIMEOUT, |n| {
        n.agents_in("ready") == 1
    });
}
