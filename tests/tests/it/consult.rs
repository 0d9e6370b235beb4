//! Consultation, consulted transfer and three-way conference through a real node, driven
//! by `carillon ctl call ...`. Caller, agent and the consulted party are tone UAs
//! ([`crate::tone_ua`]): the consulted party stands behind `[callback] gateway`, answering
//! the node's INVITE, so what each one hears shows who is connected to whom.
//!
//! - consult: agent and third hear each other, the caller neither (hold music only);
//!   conference: everyone hears both others; the agent leaving a conference leaves caller
//!   and third talking (`transfer: conference:<number>`);
//! - complete: caller and third hear each other, the agent's leg gets BYE and the agent is
//!   free again, the record says `consulted:<number>`;
//! - cancel, a busy number and the third hanging up bring caller and agent back together;
//! - refusals: no gateway, a call not connected, another agent's token, a second
//!   consultation, a supervisor asking for the call's one third leg.

// These tests wait on real processes in wall-clock time.
#![allow(clippy::disallowed_methods)]

use std::sync::atomic::Ordering;
use std::time::Duration;

use toml::{Table, Value as Toml};

use crate::harness::{cdr_str, ctl, Grant, Node, NodeSpec};
use crate::tone_ua::{get_metrics, register_ua, Ua, AGENT_HZ, CALLER_HZ, THIRD_HZ};

const NUMBER: &str = "5550100";
const AGENT_TOKEN: &str = "consult-agent-1001";
const OTHER_AGENT_TOKEN: &str = "consult-agent-1002";
const SUPERVISOR_TOKEN: &str = "consult-supervisor";
const ADMIN_TOKEN: &str = "consult-admin";
const SUPERVISOR: &str = "9001";

/// The test cast, supervisor 9001, API tokens, and the gateway at `gateway_port` if any.
fn spec(gateway_port: Option<u16>) -> NodeSpec {
    let mut spec = NodeSpec::for_test();
    let mut sup = Table::new();
    sup.insert("id".into(), SUPERVISOR.into());
    sup.insert("password".into(), "sup9001".into());
    spec.insert("supervisors", Toml::Array(vec![Toml::Table(sup)]));
    spec.set_tokens([
        Grant::new(AGENT_TOKEN, "agent").agent("1001"),
        Grant::new(OTHER_AGENT_TOKEN, "agent").agent("1002"),
        Grant::new(SUPERVISOR_TOKEN, "supervisor"),
        Grant::new(ADMIN_TOKEN, "admin"),
    ]);
    if let Some(port) = gateway_port {
        spec.set("callback", "gateway", format!("127.0.0.1:{port}"));
    }
    spec
}

/// A caller on the line with agent 1001 (each sending its tone); returns them and the
/// call id.
fn connected_call(node: &Node) -> (Ua, Ua, String) {
    let agent = Ua::new("1001", AGENT_HZ);
    register_ua(node, &agent, "1001", "pw1001");
    node.wait_until("1001 ready", Duration::from_secs(10), |n| {
        n.agents_in("ready") == 1
    });
    let caller = Ua::new("5551234", CALLER_HZ);
    let status = caller.invite(node.sip, "100");
    assert!(status.contains("200"), "caller: {status}");
    node.wait_until("1001 on the call", Duration::from_secs(10), |n| {
        n.agents_in("on_call") == 1
    });
    let call = agent.call_header.lock().expect("lock").clone();
    assert!(!call.is_empty(), "the agent's INVITE named the call");
    caller.listen().expect("caller before", "a", node);
    (caller, agent, call)
}

/// `carillon ctl call ACTION CALL [--agent 1001] [extra]` with `token`.
fn call_ctl(
    node: &Node,
    token: &str,
    action: &str,
    call: &str,
    extra: &[&str],
) -> (bool, String, String) {
    let mut args = vec!["call", action, call, "--agent", "1001"];
    args.extend_from_slice(extra);
    ctl(node.grpc_addr(), Some(token), &args)
}

fn consult(node: &Node, call: &str) -> (bool, String, String) {
    call_ctl(node, AGENT_TOKEN, "consult", call, &["--number", NUMBER])
}

/// The `carillon_consults_total` sample for `outcome`.
fn consults(node: &Node, outcome: &str) -> u64 {
    let wanted = format!("carillon_consults_total{{outcome=\"{outcome}\"}}");
    get_metrics(node)
        .lines()
        .find_map(|l| l.strip_prefix(&wanted))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

#[test]
fn consultation_then_conference_and_the_agent_leaves_the_others_talking() {
    let third = Ua::new(NUMBER, THIRD_HZ);
    let node = Node::start(spec(Some(third.sip_port())));
    let (caller, agent, call) = connected_call(&node);

    let (ok, out, err) = consult(&node, &call);
    assert!(ok && out.contains("consulting"), "consult: {out} {err}");
    agent.listen().expect("agent consulting", "s", &node);
    third.listen().expect("third consulted", "a", &node);
    caller
        .listen()
        .expect_none_of("caller on hold", "as", &node);

    // One consultation at a time, and one third leg: a supervisor cannot have it now.
    let (ok, _, err) = consult(&node, &call);
    assert!(
        !ok && err.contains("FailedPrecondition") && err.contains("already"),
        "second consult: {err}"
    );
    let (ok, _, err) = ctl(
        node.grpc_addr(),
        Some(SUPERVISOR_TOKEN),
        &[
            "supervise",
            "monitor",
            "--call",
            &call,
            "--supervisor",
            SUPERVISOR,
        ],
    );
    assert!(
        !ok && err.contains("one third leg"),
        "supervisor during a consultation: {err}"
    );

    let (ok, out, err) = call_ctl(&node, AGENT_TOKEN, "conference", &call, &[]);
    assert!(ok && out.contains("conference"), "conference: {out} {err}");
    caller.listen().expect("caller in conference", "as", &node);
    agent.listen().expect("agent in conference", "cs", &node);
    third.listen().expect("third in conference", "ca", &node);

    // The agent leaves: caller and third talk on, the agent is free.
    agent.bye_answered();
    node.wait_until("1001 free again", Duration::from_secs(5), |n| {
        n.agents_in("ready") == 1
    });
    caller
        .listen()
        .expect("caller after the agent left", "s", &node);
    third
        .listen()
        .expect("third after the agent left", "c", &node);
    assert_eq!(node.active_calls(), 1, "the call goes on");

    third.bye_answered();
    node.wait_until(
        "the caller hung up by the node",
        Duration::from_secs(5),
        |_| caller.got_bye.load(Ordering::Relaxed),
    );
    let cdrs = node.wait_cdrs(1, Duration::from_secs(5));
    let cdr = &cdrs[0];
    assert_eq!(cdr_str(cdr, "disposition"), "answered", "CDR: {cdr}");
    assert_eq!(cdr_str(cdr, "agent"), "1001", "CDR: {cdr}");
    assert_eq!(
        cdr_str(cdr, "transfer"),
        format!("conference:{NUMBER}"),
        "CDR: {cdr}"
    );
    for outcome in ["answered", "conference", "completed"] {
        assert_eq!(consults(&node, outcome), 1, "consults {outcome}");
    }
}

#[test]
fn consulted_transfer_hands_the_caller_to_the_third() {
    let third = Ua::new(NUMBER, THIRD_HZ);
    let node = Node::start(spec(Some(third.sip_port())));
    let (caller, agent, call) = connected_call(&node);

    let (ok, out, err) = consult(&node, &call);
    assert!(ok && out.contains("consulting"), "consult: {out} {err}");
    agent.listen().expect("agent consulting", "s", &node);

    let (ok, out, err) = call_ctl(&node, AGENT_TOKEN, "complete", &call, &[]);
    assert!(ok && out.contains("transferred"), "complete: {out} {err}");
    node.wait_until("the agent's phone hung up", Duration::from_secs(5), |_| {
        agent.got_bye.load(Ordering::Relaxed)
    });
    // Wrap-up is 0 s in the test cast: the agent is ready at once.
    node.wait_until("1001 free again", Duration::from_secs(5), |n| {
        n.agents_in("ready") == 1
    });
    caller
        .listen()
        .expect("caller after the transfer", "s", &node);
    third
        .listen()
        .expect("third after the transfer", "c", &node);
    assert_eq!(node.active_calls(), 1, "the call goes on");

    caller.bye(node.sip);
    node.wait_until(
        "the third hung up by the node",
        Duration::from_secs(5),
        |_| third.got_bye.load(Ordering::Relaxed),
    );
    let cdrs = node.wait_cdrs(1, Duration::from_secs(5));
    let cdr = &cdrs[0];
    assert_eq!(cdr_str(cdr, "disposition"), "answered", "CDR: {cdr}");
    assert_eq!(
        cdr_str(cdr, "transfer"),
        format!("consulted:{NUMBER}"),
        "CDR: {cdr}"
    );
    assert_eq!(consults(&node, "completed"), 1);
}

#[test]
fn cancel_a_busy_number_and_the_third_hanging_up_bring_the_caller_back() {
    let third = Ua::new(NUMBER, THIRD_HZ);
    let node = Node::start(spec(Some(third.sip_port())));
    let (caller, agent, call) = connected_call(&node);

    let (ok, out, err) = consult(&node, &call);
    assert!(ok, "consult: {out} {err}");
    let (ok, out, err) = call_ctl(&node, AGENT_TOKEN, "cancel-consult", &call, &[]);
    assert!(
        ok && out.contains("back with the agent"),
        "cancel: {out} {err}"
    );
    node.wait_until("the third got BYE", Duration::from_secs(5), |_| {
        third.got_bye.load(Ordering::Relaxed)
    });
    caller.listen().expect("caller after cancel", "a", &node);
    agent.listen().expect("agent after cancel", "c", &node);

    // Busy: the reply says so and nothing changes.
    third.answer_with("486 Busy Here");
    let (ok, _, err) = consult(&node, &call);
    assert!(
        !ok && err.contains("Aborted") && err.contains("486"),
        "busy: {err}"
    );
    caller.listen().expect("caller after busy", "a", &node);
    agent.listen().expect("agent after busy", "c", &node);

    // The consulted party hangs up: caller and agent are together again.
    third.answer_with("200 OK");
    let (ok, out, err) = consult(&node, &call);
    assert!(ok, "consult again: {out} {err}");
    agent.listen().expect("agent consulting again", "s", &node);
    third.bye_answered();
    std::thread::sleep(Duration::from_millis(200));
    caller
        .listen()
        .expect("caller after the third left", "a", &node);
    agent
        .listen()
        .expect("agent after the third left", "c", &node);
    assert_eq!(node.active_calls(), 1, "the call goes on");

    caller.bye(node.sip);
    let cdrs = node.wait_cdrs(1, Duration::from_secs(5));
    assert!(
        cdrs[0].get("transfer").is_none_or(|t| t.is_null()),
        "{}",
        cdrs[0]
    );
    for outcome in ["cancelled", "unanswered", "third-hung-up"] {
        assert_eq!(consults(&node, outcome), 1, "consults {outcome}");
    }
}

#[test]
fn consult_refusals_say_why() {
    // No gateway on this node.
    let node = Node::start(spec(None));
    let (_caller, _agent, call) = connected_call(&node);
    let (ok, _, err) = consult(&node, &call);
    assert!(
        !ok && err.contains("FailedPrecondition") && err.contains("[callback] gateway"),
        "no gateway: {err}"
    );
    // Another agent's token on 1001's call.
    let (ok, _, err) = ctl(
        node.grpc_addr(),
        Some(OTHER_AGENT_TOKEN),
        &[
            "call", "consult", &call, "--agent", "1001", "--number", NUMBER,
        ],
    );
    assert!(
        !ok && err.contains("PermissionDenied"),
        "other agent: {err}"
    );

    // A call still ringing its agent is not connected.
    let ringing = Ua::new("1002", AGENT_HZ);
    ringing.answer_with("180 Ringing");
    register_ua(&node, &ringing, "1002", "pw1002");
    let caller2 = Ua::new("5559876", CALLER_HZ);
    let status = caller2.invite(node.sip, "100");
    assert!(status.contains("200"), "second caller: {status}");
    node.wait_until("1002 rung", Duration::from_secs(10), |_| {
        !ringing.call_header.lock().expect("lock").is_empty()
    });
    let call2 = ringing.call_header.lock().expect("lock").clone();
    let (ok, _, err) = ctl(
        node.grpc_addr(),
        Some(ADMIN_TOKEN),
        &["call", "consult", &call2, "--number", NUMBER],
    );
    assert!(
        !ok && err.contains("FailedPrecondition") && err.contains("connected call"),
        "ringing call: {err}"
    );

    let (ok, out, _) = ctl(
        node.grpc_addr(),
        Some(ADMIN_TOKEN),
        &["audit", "list", "--json"],
    );
    assert!(ok, "audit list");
    assert!(
        out.contains("CallService.Consult") && out.contains("refused"),
        "refusals are audited: {out}"
    );
}
