//! Hold and resume through a real node, from either side. An agent phone that holds gets
//! `a=recvonly` back and its resume `a=sendrecv` (the SIPp scenario fails otherwise); the
//! caller hears hold music meanwhile (the node counts the packets) and the agent again
//! after. A caller that holds gets the same answers, and the node relays its hold and
//! resume to the agent's phone as re-INVITEs (that scenario fails unless both come), also
//! when the caller held while still queued, before any agent answered.
//! Both again in a two-node cluster, the caller at n1 and the agent's phone at n2, so the
//! hold crosses the inter-node leg both ways.

// These tests wait on real processes in wall-clock time.
#![allow(clippy::disallowed_methods)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::harness::{
    agents_csv, cdr_str, cdr_u64, register, Node, NodeSpec, Sipp, SippProcess, TestCluster,
};

/// How long each side stays on hold (the scenarios' `-d` pause).
const HOLD_MS: &str = "1500";
/// How long a caller who holds while queued stays on hold: the agent registers and answers
/// meanwhile.
const EARLY_HOLD_MS: &str = "6000";
/// Hold music packets (20 ms each) the caller must at least get in a hold of [`HOLD_MS`].
const HOLD_MUSIC_PACKETS_MIN: u64 = 25;

/// Registers agent 1001 on a phone running `scenario` (RTP echo) and waits until ready.
fn agent_phone(node: &Node, scenario: &str) -> SippProcess {
    let phone = Sipp::uas(scenario, node.dir(), "phone")
        .rtp_echo(node.sipp_media_port())
        .args(["-d", HOLD_MS, "-m", "1"]);
    let port = phone.sip_port;
    let phone = phone.spawn();
    let csv = agents_csv(node.dir(), "agent-1001.csv", [1001], "pw");
    register(node, &csv, 1, port, 3600, "register").assert_success("1001");
    phone
}

/// Waits until agent 1001 is ready as `node` sees it.
fn wait_ready(node: &Node) {
    node.wait_until("1001 ready", Duration::from_secs(10), |n| {
        n.agents_in("ready") == 1
    });
}

/// The value of `key=` on the first log line that has it.
fn logged_u64(log: &str, key: &str) -> Option<u64> {
    let at = log.find(&format!("{key}="))? + key.len() + 1;
    let digits: String = log[at..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The body of GET /metrics (HTTP/1.0, so the node closes the connection when done).
fn get_metrics(node: &Node) -> String {
    let mut stream = TcpStream::connect_timeout(&node.http, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connecting to {}: {e}", node.http));
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap_or_else(|e| panic!("read timeout: {e}"));
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .unwrap_or_else(|e| panic!("GET /metrics: {e}"));
    let mut text = String::new();
    stream
        .read_to_string(&mut text)
        .unwrap_or_else(|e| panic!("reading /metrics: {e}"));
    text
}

/// The `carillon_holds_total` sample for `side` in /metrics.
fn holds_total(node: &Node, side: &str) -> u64 {
    let text = get_metrics(node);
    let wanted = format!("carillon_holds_total{{side=\"{side}\"}}");
    text.lines()
        .find_map(|l| l.strip_prefix(&wanted))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

#[test]
fn agent_holds_and_resumes() {
    let node = Node::start(NodeSpec::for_test());
    let phone = agent_phone(&node, "agent_hold.xml");
    wait_ready(&node);

    Sipp::uac("caller_until_bye.xml", node.sip, node.dir(), "caller")
        .media_port(node.sipp_media_port())
        .args(["-s", "100"])
        .key("caller", "5551020")
        .calls(1, 1)
        .run(Duration::from_secs(20))
        .assert_success("the caller stays through the agent's hold until the agent hangs up");
    phone
        .wait(Duration::from_secs(10))
        .assert_success("both re-INVITEs answered with the matching direction");

    let cdrs = node.wait_cdrs(1, Duration::from_secs(5));
    let cdr = &cdrs[0];
    assert_eq!(cdr_str(cdr, "disposition"), "answered", "CDR: {cdr}");
    assert_eq!(cdr_str(cdr, "hangup_by"), "agent", "CDR: {cdr}");
    assert!(cdr_u64(cdr, "rtp_agent_to_caller") > 0, "CDR: {cdr}");
    let log = node.log_plain();
    let music = logged_u64(&log, "hold_music_packets")
        .unwrap_or_else(|| panic!("no hold music count in the log:\n{}", node.log_tail()));
    assert!(
        music >= HOLD_MUSIC_PACKETS_MIN,
        "the caller got {music} hold music packets during a {HOLD_MS} ms hold"
    );
    assert_eq!(holds_total(&node, "agent"), 1);
}

#[test]
fn caller_holds_and_resumes() {
    let node = Node::start(NodeSpec::for_test());
    let phone = agent_phone(&node, "agent_held.xml");
    wait_ready(&node);

    Sipp::uac("caller_hold.xml", node.sip, node.dir(), "caller")
        .media_port(node.sipp_media_port())
        .args(["-s", "100", "-d", HOLD_MS])
        .key("caller", "5551021")
        .calls(1, 1)
        .run(Duration::from_secs(20))
        .assert_success("both re-INVITEs answered with the matching direction");
    phone
        .wait(Duration::from_secs(10))
        .assert_success("the node relays the caller's hold and resume to the agent");

    let cdrs = node.wait_cdrs(1, Duration::from_secs(5));
    let cdr = &cdrs[0];
    assert_eq!(cdr_str(cdr, "disposition"), "answered", "CDR: {cdr}");
    assert_eq!(cdr_str(cdr, "hangup_by"), "caller", "CDR: {cdr}");
    assert!(cdr_u64(cdr, "rtp_caller_to_agent") > 0, "CDR: {cdr}");
    let log = node.log_plain();
    let held = logged_u64(&log, "held_ms").unwrap_or(0);
    assert!(held >= 1000, "held {held} ms; log:\n{}", node.log_tail());
    assert_eq!(holds_total(&node, "caller"), 1);
}

/// A caller at `node` who waits in the queue (no agent yet), holds a second after the node
/// answers and stays on hold for [`EARLY_HOLD_MS`], long enough for an agent to register
/// and answer; returned once the node has seen the hold.
fn caller_holding_in_queue(node: &Node, number: &str) -> SippProcess {
    let caller = Sipp::uac("caller_hold.xml", node.sip, node.dir(), "caller")
        .media_port(node.sipp_media_port())
        .args(["-s", "100", "-d", EARLY_HOLD_MS])
        .key("caller", number)
        .calls(1, 1)
        .spawn();
    node.wait_until("the queued caller holds", Duration::from_secs(10), |n| {
        n.log_plain().contains("call put on hold")
    });
    caller
}

#[test]
fn caller_hold_while_queued_is_relayed_when_the_agent_answers() {
    let node = Node::start(NodeSpec::for_test());
    let caller = caller_holding_in_queue(&node, "5551024");
    let phone = agent_phone(&node, "agent_held.xml");
    caller
        .wait(Duration::from_secs(30))
        .assert_success("the node answers the queued caller's hold and resume");
    phone.wait(Duration::from_secs(10)).assert_success(
        "the agent's phone, answering after the caller held, gets the hold (a=sendonly), then the resume",
    );

    let cdrs = node.wait_cdrs(1, Duration::from_secs(5));
    let cdr = &cdrs[0];
    assert_eq!(cdr_str(cdr, "disposition"), "answered", "CDR: {cdr}");
    assert_eq!(cdr_str(cdr, "hangup_by"), "caller", "CDR: {cdr}");
    assert!(cdr_u64(cdr, "rtp_caller_to_agent") > 0, "CDR: {cdr}");
    let log = node.log_plain();
    assert!(
        log.contains("the caller holds since before the answer"),
        "the hold was relayed at the answer:\n{}",
        node.log_tail()
    );
    assert_eq!(holds_total(&node, "caller"), 1);
}

/// A two-node cluster with agent 1001's phone (running `scenario`) registered at n2.
fn cluster_with_phone_at_n2(scenario: &str) -> (TestCluster, SippProcess) {
    let cluster = TestCluster::start(&["hq", "branch"], |_, _| {});
    let phone = agent_phone(cluster.node(1), scenario);
    wait_ready(cluster.node(0));
    (cluster, phone)
}

#[test]
fn cluster_agent_holds_across_nodes() {
    let (cluster, phone) = cluster_with_phone_at_n2("agent_hold.xml");
    let n1 = cluster.node(0);
    Sipp::uac("caller_until_bye.xml", n1.sip, n1.dir(), "caller")
        .media_port(n1.sipp_media_port())
        .args(["-s", "100"])
        .key("caller", "5551022")
        .calls(1, 1)
        .run(Duration::from_secs(30))
        .assert_success("the caller at n1 stays through the hold of the agent at n2");
    phone
        .wait(Duration::from_secs(10))
        .assert_success("n2 answers both re-INVITEs with the matching direction");
    let cdrs = n1.wait_cdrs(1, Duration::from_secs(10));
    assert_eq!(
        cdr_str(&cdrs[0], "disposition"),
        "answered",
        "CDR: {}",
        cdrs[0]
    );
    // n2 relayed the hold to n1, which played the music to the caller.
    let music = logged_u64(&n1.log_plain(), "hold_music_packets")
        .unwrap_or_else(|| panic!("no hold music count in n1's log:\n{}", n1.log_tail()));
    assert!(
        music >= HOLD_MUSIC_PACKETS_MIN,
        "the caller got {music} hold music packets during a {HOLD_MS} ms hold"
    );
    assert_eq!(holds_total(n1, "agent"), 1);
}

#[test]
fn cluster_caller_holds_across_nodes() {
    let (cluster, phone) = cluster_with_phone_at_n2("agent_held.xml");
    let n1 = cluster.node(0);
    Sipp::uac("caller_hold.xml", n1.sip, n1.dir(), "caller")
        .media_port(n1.sipp_media_port())
        .args(["-s", "100", "-d", HOLD_MS])
        .key("caller", "5551023")
        .calls(1, 1)
        .run(Duration::from_secs(30))
        .assert_success("n1 answers both re-INVITEs with the matching direction");
    phone
        .wait(Duration::from_secs(10))
        .assert_success("n1 and n2 relay the caller's hold and resume to the agent's phone");
    let cdrs = n1.wait_cdrs(1, Duration::from_secs(10));
    assert_eq!(
        cdr_str(&cdrs[0], "disposition"),
        "answered",
        "CDR: {}",
        cdrs[0]
    );
    assert_eq!(holds_total(n1, "caller"), 1);
}

#[test]
fn cluster_caller_hold_while_queued_reaches_the_agent_at_another_node() {
    let cluster = TestCluster::start(&["hq", "branch"], |_, _| {});
    let n1 = cluster.node(0);
    let caller = caller_holding_in_queue(n1, "5551025");
    let phone = agent_phone(cluster.node(1), "agent_held.xml");
    caller
        .wait(Duration::from_secs(30))
        .assert_success("n1 answers the queued caller's hold and resume");
    phone.wait(Duration::from_secs(10)).assert_success(
        "the hold from before the answer crosses to the phone at n2, then the resume",
    );
    let cdrs = n1.wait_cdrs(1, Duration::from_secs(10));
    assert_eq!(
        cdr_str(&cdrs[0], "disposition"),
        "answered",
        "CDR: {}",
        cdrs[0]
    );
}
