//! Past max_concurrent_calls the node answers new INVITEs 503 with Retry-After, and takes
//! calls again once load falls.

use std::time::Duration;

use crate::harness::{Node, NodeSpec, Sipp};

#[test]
fn overload() {
    let mut spec = NodeSpec::for_test();
    spec.set("node", "max_concurrent_calls", 2);
    let node = Node::start(spec);

    // No agent is registered: the node answers both holders and keeps them queued for 4 s.
    let holders = Sipp::uac("caller.xml", node.sip, node.dir(), "holders")
        .media_port(node.sipp_media_port())
        .args([
            "-s",
            "100",
            "-d",
            "4000",
            "-timeout",
            "20s",
            "-timeout_error",
        ])
        .key("caller", "5551005")
        .calls(2, 10)
        .spawn();
    node.wait_until("2 active calls", Duration::from_secs(5), |n| {
        n.active_calls() == 2
    });

    Sipp::uac("invite_503.xml", node.sip, node.dir(), "third")
        .media_port(node.sipp_media_port())
        .args(["-s", "100"])
        .key("caller", "5551006")
        .calls(1, 1)
        .run(Duration::from_secs(10))
        .assert_success("third concurrent INVITE -> 503 with Retry-After");

    holders
        .wait(Duration::from_secs(25))
        .assert_success("the two admitted calls end normally");
    node.wait_until("no active call", Duration::from_secs(5), |n| {
        n.active_calls() == 0
    });

    Sipp::uac("caller_abandon.xml", node.sip, node.dir(), "after")
        .media_port(node.sipp_media_port())
        .args(["-s", "100"])
        .key("caller", "5551007")
        .calls(1, 1)
        .run(Duration::from_secs(15))
        .assert_success("a call is admitted again once load falls");
}
