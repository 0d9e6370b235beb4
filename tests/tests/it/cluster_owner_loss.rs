//! An agent at one node talks to a caller whose call another node owns (an inter-node
//! leg); the owner is SIGKILLed. Its BYE will never come, so the agent's node must learn
//! the call's fate from routing (NodeDown closes it as lost), hang the phone up and leave
//! the agent free for the next call.
// Real processes, waited on in wall-clock time.
#![allow(clippy::disallowed_methods)]

use std::time::Duration;

use crate::harness::{agents_csv, register, Sipp, TestCluster};

#[test]
fn an_agent_whose_callers_node_dies_is_hung_up_and_takes_the_next_call() {
    let mut cluster = TestCluster::start(&["hq", "hq", "branch"], |_, _| {});
    // One agent, at n3; its phone takes exactly two calls, then SIPp exits.
    let n3 = cluster.node(2);
    let sipp = Sipp::uas("agent_uas.xml", n3.dir(), "phone")
        .rtp_echo(n3.sipp_media_port())
        .args(["-m", "2"]);
    let phone_port = sipp.sip_port;
    let phone = sipp.spawn();
    let csv = agents_csv(n3.dir(), "agents.csv", 1001..1002, "pw");
    register(n3, &csv, 1, phone_port, 3600, "register").assert_success("registering 1001");
    for i in 0..3 {
        cluster
            .node(i)
            .wait_until("1001 ready everywhere", Duration::from_secs(10), |n| {
                n.agents_in("ready") == 1
            });
    }

    // A long call at n1: answered by 1001 across to n3.
    let n1 = cluster.node(0);
    let doomed = Sipp::uac("caller.xml", n1.sip, n1.dir(), "doomed")
        .media_port(n1.sipp_media_port())
        .args(["-s", "100", "-d", "60000"])
        .key("caller", "5551000")
        .calls(1, 1)
        .spawn();
    cluster
        .node(2)
        .wait_until("1001 on the call from n1", Duration::from_secs(10), |n| {
            n.agents_in("on_call") == 1
        });
    cluster.kill(0);
    drop(doomed);

    // Within the lease (3 s) and an election, n3 hangs the phone up...
    cluster
        .node(2)
        .wait_until("1001 off the lost call", Duration::from_secs(20), |n| {
            n.agents_in("on_call") == 0 && n.agents_in("ready") == 1
        });
    // ...and 1001 takes a call at n2 (crossing to n3 again) and its phone ends both.
    let n2 = cluster.node(1);
    let next = Sipp::uac("caller.xml", n2.sip, n2.dir(), "next")
        .media_port(n2.sipp_media_port())
        .args(["-s", "100", "-d", "1000"])
        .key("caller", "5552000")
        .calls(1, 1)
        .run(Duration::from_secs(40));
    next.assert_success("the next call, at n2");
    let phone = phone.wait(Duration::from_secs(20));
    phone.assert_success("the agent phone ended both calls");
    assert_eq!(
        phone.cumulative("Successful call"),
        Some(2),
        "the phone got a BYE for the lost call and took the next: {}",
        phone.describe()
    );
    let cdrs = cluster.node(1).wait_cdrs(1, Duration::from_secs(10));
    assert_eq!(cdrs[0]["agent"].as_str(), Some("1001"), "{}", cdrs[0]);
    assert_eq!(
        cdrs[0]["disposition"].as_str(),
        Some("answered"),
        "{}",
        cdrs[0]
    );
}
